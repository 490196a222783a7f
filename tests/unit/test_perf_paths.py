"""The issuance fast paths behave exactly like the reference paths they replace.

* leaf certificates from the DER template (``CertAuthority.issue``) against
  ``x509.CertificateBuilder`` (``issue(builder=True)``): identical TBSCertificate
  bytes for the same serial and times, valid signatures, openssl's approval;
* client keys read without a key object (canonical P-256 PEM) against
  ``load_public_key``, invalid keys refused alike;
* cached CA PEM bundles and leaf PEM;
* the audit log's cheaper ``emit`` and its SQLite writer thread (durability,
  ``search`` after ``emit``, ``close``, failures);
* the auth API's own HTTP/1.1 server against the aiohttp front end.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import re
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jumpgate.core.auth.methods  # noqa: F401 - registers the API methods
import jumpgate.core.tlsca.ca as ca_mod
from jumpgate.core import audit as audit_mod
from jumpgate.core.audit import AuditLog
from jumpgate.core.auth import api as api_mod
from jumpgate.core.auth.api import AuthAPI, server_ssl_context, start_api_server
from jumpgate.core.auth.client import API_DOMAIN, AuthClient, client_ssl_context
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend import Item
from jumpgate.core.backend.memory import MemoryBackend
from jumpgate.core.backend.sqlite import SQLiteBackend
from jumpgate.core.errors import BadParameter
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    Identity,
    RouteToApp,
    RouteToDatabase,
    cert_to_pem,
    generate_private_key,
    identity_from_certificate,
    private_key_to_pem,
    public_key_to_pem,
)
from jumpgate.core.tlsca.ca import certificate_pem
from jumpgate.core.tlsca.der import der_time, der_to_pem, p256_spki_from_pem

T0 = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def long_ca() -> CertAuthority:
    """A user CA valid from 1960 to 2160, so leaves may use UTCTime and GeneralizedTime."""
    return CertAuthority.generate(
        CAType.USER,
        "example.com",
        clock=lambda: datetime(1960, 1, 1, tzinfo=UTC),
        ttl=timedelta(days=200 * 365),
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


def _at(ca: CertAuthority, now: datetime) -> CertAuthority:
    """The same CA material behind a fixed clock."""
    return CertAuthority(ca.ca_type, ca.cluster_name, ca.cert, ca.key, clock=FakeClock(now))


def _both(
    ca: CertAuthority, now: datetime, serial: int, public_key: Any, **kw: Any
) -> tuple[x509.Certificate, x509.Certificate]:
    """The template's and the builder's certificate for the same inputs."""
    fixed = _at(ca, now)
    with mock.patch.object(ca_mod, "_random_serial", lambda: serial):
        fast = fixed.issue(public_key, **kw)
        ref = fixed.issue(public_key, builder=True, **kw)
    return fast, ref


def _assert_same(fast: x509.Certificate, ref: x509.Certificate, ca: CertAuthority) -> None:
    assert fast.tbs_certificate_bytes == ref.tbs_certificate_bytes
    assert [(e.oid, e.critical, e.value) for e in fast.extensions] == [
        (e.oid, e.critical, e.value) for e in ref.extensions
    ]
    assert fast.signature_algorithm_oid == ref.signature_algorithm_oid
    assert fast.version == x509.Version.v3
    fast.verify_directly_issued_by(ca.cert)
    der = fast.public_bytes(serialization.Encoding.DER)
    assert x509.load_der_x509_certificate(der) == fast


def _p256_pem() -> bytes:
    return public_key_to_pem(generate_private_key().public_key())


# --------------------------------------------------------------------------- template vs builder

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
_username = _text.filter(lambda s: len(s.encode()) <= 64)
_strs = st.lists(_text, max_size=4)
_db = st.none() | st.builds(RouteToDatabase, _text, _text, st.text(max_size=8), st.text(max_size=8))
_app = st.none() | st.builds(RouteToApp, _text, st.text(max_size=8), st.text(max_size=8))
_identities = st.builds(
    Identity,
    username=_username,
    groups=_strs,
    traits=st.dictionaries(_text, _strs, max_size=3),
    usage=_strs,
    logins=_strs,
    cluster_name=st.text(max_size=10),
    route_to_cluster=st.text(max_size=10),
    route_to_database=_db,
    route_to_app=_app,
    bot_name=st.text(max_size=8),
    bot_instance_id=st.text(max_size=8),
    generation=st.integers(0, 2**40),
    renewable=st.booleans(),
    disallow_reissue=st.booleans(),
    impersonator=st.text(max_size=8),
    login_ip=st.sampled_from(["", "127.0.0.1", "::1"]),
    system_role=st.sampled_from(["", "Admin", "Db"]),
)
_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2140, 1, 1), timezones=st.just(UTC)
)
_serials = st.integers(1, 2**159 - 1) | st.sampled_from([1, 127, 128, 255, 256, 2**127, 2**128 - 1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    identity=_identities,
    now=_times,
    ttl=st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=40000)),
    serial=_serials,
    usage=st.sampled_from([(False, True), (True, False), (True, True)]),
)
def test_template_equals_builder_for_identities(
    long_ca: CertAuthority,
    identity: Identity,
    now: datetime,
    ttl: timedelta,
    serial: int,
    usage: tuple[bool, bool],
) -> None:
    pem = _p256_pem()
    server, client = usage
    fast, ref = _both(
        long_ca,
        now,
        serial,
        pem,
        identity=identity,
        not_after=now + ttl,
        server=server,
        client=client,
    )
    _assert_same(fast, ref, long_ca)
    assert identity_from_certificate(fast) == identity


@settings(max_examples=60, deadline=None)
@given(
    cn=_username,
    org=st.lists(_text, max_size=3),
    names=st.lists(
        st.sampled_from(
            ["db.example.com", "*.example.com", "localhost", "10.0.0.5", "::1", "fe80::1", "a-b.c"]
        ),
        min_size=1,
        max_size=4,
    ),
    serial=_serials,
)
def test_template_equals_builder_for_subjects_and_sans(
    long_ca: CertAuthority, cn: str, org: list[str], names: list[str], serial: int
) -> None:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in org]
    fast, ref = _both(
        long_ca,
        T0,
        serial,
        _p256_pem(),
        subject=x509.Name(attrs),
        not_after=T0 + timedelta(days=1),
        dns_names=names,
        server=True,
    )
    _assert_same(fast, ref, long_ca)


@pytest.mark.parametrize(
    "now",
    [
        datetime(2049, 12, 31, 23, 58, 30, tzinfo=UTC),  # NotBefore UTCTime, NotAfter 2050
        datetime(2050, 1, 1, 0, 0, 30, tzinfo=UTC),  # NotBefore 2049 (backdated), NotAfter 2050
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2000, 1, 1, 0, 0, 0, tzinfo=UTC),
    ],
)
def test_validity_time_encodings(long_ca: CertAuthority, now: datetime) -> None:
    fast, ref = _both(
        long_ca, now, 42, _p256_pem(), identity=Identity("a"), not_after=now + timedelta(hours=1)
    )
    _assert_same(fast, ref, long_ca)
    assert fast.not_valid_before_utc == (now - timedelta(minutes=1)).replace(microsecond=0)


def test_der_time_rules() -> None:
    assert der_time(datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)) == b"\x17\x0d491231235959Z"
    assert der_time(datetime(2050, 1, 1, tzinfo=UTC)) == b"\x18\x0f20500101000000Z"
    assert der_time(datetime(1950, 1, 1, tzinfo=UTC)) == b"\x17\x0d500101000000Z"
    # other zones are converted to UTC; naive times are UTC already
    cest = datetime(2026, 1, 1, 2, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert der_time(cest) == b"\x17\x0d260101020000Z"
    assert der_time(datetime(2026, 1, 1, 2, 0)) == b"\x17\x0d260101020000Z"
    with pytest.raises(ValueError):
        der_time(datetime(1949, 12, 31, tzinfo=UTC))


def test_leaf_passes_openssl_and_verify(
    long_ca: CertAuthority, tmp_path: Path, rsa_key: rsa.RSAPublicKey
) -> None:
    ca = CertAuthority.generate(CAType.DB, "example.com")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    leaves = [
        ca.issue(_p256_pem(), identity=Identity("alice", groups=("access",)), not_after=_soon()),
        ca.issue(
            generate_private_key().public_key(),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.example.com")]),
            dns_names=["db.example.com", "10.1.2.3"],
            not_after=_soon(),
            server=True,
        ),
        ca.issue(rsa_key, identity=Identity("rsa-user"), not_after=_soon()),
    ]
    for i, leaf in enumerate(leaves):
        leaf_file = tmp_path / f"leaf{i}.pem"
        leaf_file.write_bytes(cert_to_pem(leaf))
        out = subprocess.run(
            ["openssl", "verify", "-x509_strict", "-CAfile", str(ca_file), str(leaf_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        leaf.verify_directly_issued_by(ca.cert)


def _soon() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


# --------------------------------------------------------------------------- client keys


def _pem_of(der: bytes) -> bytes:
    b64 = binascii.b2a_base64(der, newline=False)
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN PUBLIC KEY-----\n" + lines + b"\n-----END PUBLIC KEY-----\n"


def test_p256_fast_read_matches_cryptography() -> None:
    for _ in range(20):
        pub = generate_private_key().public_key()
        pem = public_key_to_pem(pub)
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert p256_spki_from_pem(pem) == der
        assert p256_spki_from_pem(pem.rstrip(b"\n")) == der
        # anything not byte-exact goes the general way
        assert p256_spki_from_pem(pem.replace(b"\n", b"\r\n")) is None
        assert p256_spki_from_pem(b"\n" + pem) is None
        assert p256_spki_from_pem(pem + b"\n") is None
        assert p256_spki_from_pem(pem.replace(b"PUBLIC KEY", b"PUBLIC KEZ")) is None


def _off_curve_pem() -> bytes:
    der = bytearray(
        generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    der[-1] ^= 1
    return _pem_of(bytes(der))


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage",
        b"",
        _pem_of(b"\x30\x03\x02\x01\x01"),
        b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
    ],
)
def test_invalid_keys_are_refused_on_both_paths(bad: bytes) -> None:
    ca = CertAuthority.generate(CAType.USER, "example.com")
    for builder in (False, True):
        with pytest.raises(BadParameter):
            ca.issue(bad, identity=Identity("a"), not_after=_soon(), builder=builder)


def test_off_curve_point_is_refused() -> None:
    ca = CertAuthority.generate(CAType.USER, "example.com")
    pem = _off_curve_pem()
    assert p256_spki_from_pem(pem) is None
    for builder in (False, True):
        with pytest.raises(BadParameter):
            ca.issue(pem, identity=Identity("a"), not_after=_soon(), builder=builder)


def test_non_canonical_base64_padding_bits_take_the_general_path() -> None:
    der = (
        generate_private_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    pem = _pem_of(der)
    b64 = binascii.b2a_base64(der, newline=False)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(b64[-3])
    tweaked = pem.replace(b64[-4:], b64[-4:-3] + alphabet[last ^ 1 : (last ^ 1) + 1] + b"==")
    assert tweaked != pem
    assert p256_spki_from_pem(tweaked) is None


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 177), byte=st.integers(0, 255))
def test_mutated_pems_behave_alike_on_both_paths(pos: int, byte: int) -> None:
    pem = bytearray(_PEM)
    pem[pos % len(pem)] = byte
    results = []
    for builder in (False, True):
        with mock.patch.object(ca_mod, "_random_serial", lambda: 7):
            try:
                cert = _MUT_CA.issue(
                    bytes(pem), identity=Identity("a"), not_after=T0 + timedelta(1), builder=builder
                )
            except BadParameter:
                results.append(None)
            else:
                results.append(cert.tbs_certificate_bytes)
    assert results[0] == results[1]


_PEM = _p256_pem()
_MUT_CA = _at(CertAuthority.generate(CAType.USER, "example.com", clock=lambda: T0), T0)


@pytest.mark.parametrize(
    "kind", ["rsa-object", "rsa-pem", "p384-pem", "compressed-pem", "crlf-pem"]
)
def test_other_keys_take_the_general_path(
    long_ca: CertAuthority, rsa_key: rsa.RSAPublicKey, kind: str
) -> None:
    key: Any
    if kind == "rsa-object":
        key = rsa_key
    elif kind == "rsa-pem":
        key = public_key_to_pem(rsa_key)
    elif kind == "p384-pem":
        key = public_key_to_pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    elif kind == "compressed-pem":
        pub = generate_private_key().public_key()
        point = pub.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )
        prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
        key = _pem_of(prefix + point)
    else:
        key = _p256_pem().replace(b"\n", b"\r\n")
    fast, ref = _both(long_ca, T0, 99, key, identity=Identity("k"), not_after=T0 + timedelta(1))
    _assert_same(fast, ref, long_ca)


def test_argument_errors_unchanged(long_ca: CertAuthority) -> None:
    ca = _at(long_ca, T0)
    pem = _p256_pem()
    with pytest.raises(BadParameter, match="exactly one"):
        ca.issue(pem, not_after=T0 + timedelta(1))
    with pytest.raises(BadParameter, match="no time zone"):
        ca.issue(pem, identity=Identity("a"), not_after=datetime(2030, 1, 1))
    with pytest.raises(BadParameter, match="not in the future"):
        ca.issue(pem, identity=Identity("a"), not_after=T0)
    with pytest.raises(BadParameter, match="neither an IP address nor a DNS name"):
        ca.issue(
            pem, identity=Identity("a"), not_after=T0 + timedelta(1), dns_names=["bücher.example"]
        )
    public_only = CertAuthority(ca.ca_type, ca.cluster_name, ca.cert, None)
    with pytest.raises(Exception, match="no private key"):
        public_only.issue(pem, identity=Identity("a"), not_after=T0 + timedelta(1))


# --------------------------------------------------------------------------- PEM caches


def test_pem_helpers_match_cryptography(long_ca: CertAuthority) -> None:
    ca = _at(long_ca, T0)
    older = ca.issue(_p256_pem(), identity=Identity("first"), not_after=T0 + timedelta(1))
    for i in range(30):
        leaf = ca.issue(
            _p256_pem(),
            identity=Identity("u" * (i + 1), groups=("g",) * i),
            not_after=T0 + timedelta(1),
        )
        assert certificate_pem(leaf) == cert_to_pem(leaf)
        der = leaf.public_bytes(serialization.Encoding.DER)
        assert der_to_pem(der, "CERTIFICATE") == cert_to_pem(leaf)
    assert certificate_pem(older) == cert_to_pem(older)  # not the last one: the slow way
    assert certificate_pem(ca.cert) == ca.cert_pem


def test_trusted_pem_and_auth_ca_pem(long_ca: CertAuthority) -> None:
    other = CertAuthority.generate(CAType.USER, "example.com")
    ca = CertAuthority(
        CAType.USER, "example.com", long_ca.cert, long_ca.key, additional_trusted=[other.cert]
    )
    assert ca.trusted_pem == b"".join(cert_to_pem(c) for c in ca.trusted_certs)
    assert ca.trusted_pem is ca.trusted_pem

    async def main() -> None:
        auth = AuthServer(MemoryBackend(), cluster_name="example.com")
        await auth.start()
        try:
            for t in CAType:
                assert auth.ca_pem(t) == b"".join(cert_to_pem(c) for c in auth.cas[t].trusted_certs)
            auth.cas[CAType.USER] = ca  # a replaced CA is picked up at once
            assert auth.ca_pem(CAType.USER) == ca.trusted_pem
            issued = auth.generate_host_cert(public_key=_p256_pem(), host_id="h", role="Node")
            assert issued.user_ca_pem == ca.trusted_pem
            assert issued.cert_pem == cert_to_pem(x509.load_pem_x509_certificate(issued.cert_pem))
        finally:
            await auth.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- audit


def test_emit_record_shape() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        clock = FakeClock(datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC))
        log = AuditLog(backend, "example.com", clock=clock)
        rec = log.emit("cert.create", user="alice", roles=["a"], skipped=None, code=None)
        assert rec["time"] == "2026-03-04T05:06:07.890123Z"
        assert uuid.UUID(rec["uid"]).version == 4
        assert str(uuid.UUID(rec["uid"])) == rec["uid"]
        assert rec["code"] == "TC000I" and rec["ei"] == 1 and "skipped" not in rec
        assert "success" not in rec
        clock.now = datetime(2026, 3, 4, 5, 6, 8, tzinfo=UTC)
        rec2 = log.emit("user.login", success=False, code="X1")
        assert rec2["time"] == "2026-03-04T05:06:08Z"
        assert rec2["success"] is False and rec2["code"] == "X1"
        await log.flush()
        items = await backend.get_range("/events/", "/events0")
        keys = [i.key for i in items]
        assert keys == [
            f"/events/2026-03-04T05:06:07.890123/{rec['uid']}",
            f"/events/2026-03-04T05:06:08.000000/{rec2['uid']}",
        ]
        assert [json.loads(i.value) for i in items] == [rec, rec2]
        assert items[1].expires == clock.now + timedelta(days=365)
        found = await log.search(since=datetime(2026, 3, 4, 5, 6, 8, tzinfo=UTC))
        assert found == [rec2]

    asyncio.run(main())


def test_sqlite_writer_thread_durability(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"

    async def main() -> None:
        backend = SQLiteBackend(path)
        log = AuditLog(backend, "example.com")
        assert log._threaded
        for i in range(300):
            log.emit("cert.create", n=i)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the writer take partial batches
        found = await log.search(types=["cert.create"], limit=0)  # no explicit flush
        assert [e["n"] for e in sorted(found, key=lambda e: e["ei"])] == list(range(300))
        for i in range(100):
            log.emit("user.create", n=i)
        await log.close()
        await backend.close()
        again = SQLiteBackend(path)
        try:
            items = await again.get_range("/events/", "/events0")
            assert len(items) == 400
        finally:
            await again.close()

    asyncio.run(main())


def test_sqlite_writer_thread_failure_keeps_events(tmp_path: Path) -> None:
    async def main() -> None:
        backend = SQLiteBackend(tmp_path / "db.sqlite")
        log = AuditLog(backend, "example.com")
        real = backend.put_many

        def broken(items: Any) -> Any:
            raise RuntimeError("disk on fire")

        backend.put_many = broken  # type: ignore[method-assign]
        log.emit("cert.create", n=1)
        with pytest.raises(RuntimeError, match="disk on fire"):
            await log.flush()
        backend.put_many = real  # type: ignore[method-assign]
        log.emit("cert.create", n=2)
        found = await log.search(types=["cert.create"])
        assert sorted(e["n"] for e in found) == [1, 2]
        await log.close()
        await backend.close()

    asyncio.run(main())


def test_only_plain_sqlite_backends_write_in_a_thread(tmp_path: Path) -> None:
    class Custom(SQLiteBackend):
        async def put_many(self, items: Any) -> list[Item]:
            await asyncio.sleep(0)
            return await super().put_many(items)

    async def main() -> None:
        for backend, threaded in (
            (MemoryBackend(), False),
            (SQLiteBackend(tmp_path / "a.sqlite"), True),
            (Custom(tmp_path / "b.sqlite"), False),
        ):
            log = AuditLog(backend, "c")
            assert log._threaded is threaded
            log.emit("cert.create")
            assert len(await log.search()) == 1
            await log.close()
            await backend.close()

    asyncio.run(main())


def test_emit_without_loop_then_flush(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "db.sqlite")
    log = AuditLog(backend, "c")
    log.emit("cert.create", n=1)

    async def main() -> list[dict[str, Any]]:
        try:
            return await log.search()
        finally:
            await log.close()
            await backend.close()

    assert [e["n"] for e in asyncio.run(main())] == [1]


def test_run_to_completion_refuses_suspending_coroutines() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="suspended"):
        audit_mod._run_to_completion(suspends())


# --------------------------------------------------------------------------- HTTP server


class Served:
    """An AuthServer behind both front ends: ``fast`` (own server) and ``slow`` (aiohttp)."""

    def __init__(self, auth: AuthServer, ident: IdentityFile, fast: Any, slow: Any, ctx: Any):
        self.auth = auth
        self.ident = ident
        self.fast = fast
        self.slow = slow
        self.client_ctx: ssl.SSLContext = ctx

    @property
    def fast_addr(self) -> tuple[str, int]:
        host, port = self.fast.addresses[0][:2]
        return host, port

    @property
    def slow_addr(self) -> tuple[str, int]:
        host, port = self.slow.addresses[0][:2]
        return host, port


@contextlib.asynccontextmanager
async def serve(tmp_path: Path) -> AsyncIterator[Served]:
    from aiohttp import web

    auth = AuthServer(MemoryBackend(), cluster_name="example.com")
    await auth.start()
    key = generate_private_key()
    issued = auth.generate_host_cert(
        public_key=public_key_to_pem(key.public_key()),
        host_id="auth-host",
        role="Auth",
        dns_names=["localhost", "127.0.0.1"],
    )
    (tmp_path / "auth.crt").write_bytes(issued.cert_pem)
    (tmp_path / "auth.key").write_bytes(private_key_to_pem(key))
    ctx = server_ssl_context(
        cert_file=str(tmp_path / "auth.crt"),
        key_file=str(tmp_path / "auth.key"),
        client_ca_pem=auth.ca_pem(CAType.HOST) + auth.ca_pem(CAType.USER),
        alpn=["http/1.1", "teleport-auth@example.com"],
    )
    admin_key = generate_private_key()
    admin = auth.generate_host_cert(
        public_key=public_key_to_pem(admin_key.public_key()),
        host_id="admin.example.com",
        role="Admin",
    )
    ident = IdentityFile(
        key_pem=private_key_to_pem(admin_key), cert_pem=admin.cert_pem, ca_pems=(admin.host_ca_pem,)
    )
    api = AuthAPI(auth)
    fast = await start_api_server(api, "127.0.0.1", 0, ssl_context=ctx)
    runner = web.AppRunner(api.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield Served(auth, ident, fast, runner, client_ssl_context(ident, alpn=["http/1.1"]))
    finally:
        await fast.cleanup()
        await runner.cleanup()
        await auth.close()


def run_served(tmp_path: Path, body: Callable[[Served], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serve(tmp_path) as s:
            await asyncio.wait_for(body(s), 60)

    asyncio.run(main())


async def _open(
    s: Served, addr: tuple[str, int]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        addr[0], addr[1], ssl=s.client_ctx, server_hostname=API_DOMAIN
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    return status, headers, body


async def _exchange(
    s: Served, addr: tuple[str, int], raw: bytes, responses: int = 1
) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await _open(s, addr)
    try:
        writer.write(raw)
        return [await _read_response(reader) for _ in range(responses)]
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _post(method: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /v1/rpc/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


_PARITY = {
    "status": _post("status", b"{}"),
    "unknown method": _post("no.such", b"{}"),
    "bad json": _post("status", b"{nope"),
    "not an object": _post("status", b"[1]"),
    "empty body": _post("status", b""),
    "cas.export": _post("cas.export", b'{"type": "db"}'),
    "bad ca type": _post("cas.export", b'{"type": "nope"}'),
    "ping": b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n",
    "get rpc": b"GET /v1/rpc/status HTTP/1.1\r\nHost: x\r\n\r\n",
    "post ping": b"POST /v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "unknown path": b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    "query string": _post("status?x=1", b"{}"),
    "quoted name": _post("st%61tus", b"{}"),
}


def test_http_parity_with_aiohttp(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        for name, raw in _PARITY.items():
            ((fs, fh, fb),) = await _exchange(s, s.fast_addr, raw)
            ((ss, sh, sb),) = await _exchange(s, s.slow_addr, raw)
            assert fs == ss, name
            assert fh["content-type"] == sh["content-type"], name
            if name in ("status",):  # contains a timestamp-free but server-specific payload
                assert json.loads(fb).keys() == json.loads(sb).keys()
            else:
                assert fb == sb, (name, fb, sb)
            if fs == 405:
                assert set(fh["allow"].split(",")) <= set(sh["allow"].replace(" ", "").split(","))

    run_served(tmp_path, body)


def test_http_clients_and_issuance(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        host, port = s.fast_addr
        await s.auth.create_user(name="bob", roles=["access"], traits={"db_users": ["alice"]})
        sync = AuthClient(f"{host}:{port}", s.ident)
        try:
            status = await asyncio.to_thread(sync.call, "status")
            assert status
            pem = _p256_pem().decode()
            wire = await asyncio.to_thread(
                sync.call,
                "certs.user",
                username="bob",
                public_key=pem,
                ttl=3600,
                route_to_database={"service_name": "db", "protocol": "postgres"},
            )
            cert = x509.load_pem_x509_certificate(wire["cert"].encode())
            assert identity_from_certificate(cert).route_to_database == RouteToDatabase(
                "db", "postgres"
            )
            cert.verify_directly_issued_by(s.auth.cas[CAType.USER].cert)
            assert wire["user_ca"] == s.auth.ca_pem(CAType.USER).decode()
            with pytest.raises(BadParameter):
                await asyncio.to_thread(
                    sync.call, "certs.user", username="bob", public_key="nope", ttl=3600
                )
        finally:
            sync.close()
        from jumpgate.core.auth.aclient import AsyncAuthClient

        aclient = AsyncAuthClient(f"{host}:{port}", s.ident)
        try:
            for _ in range(3):
                assert await aclient.call("status")
            events = await aclient.call("events.search", types=["cert.create"])
            assert len(events) == 1
        finally:
            await aclient.close()

    run_served(tmp_path, body)


def test_http_keep_alive_pipelining_and_chunked(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        chunked = (
            b"POST /v1/rpc/cas.export HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5;ext=1\r\n{"typ\r\n'
            b'b\r\ne": "user"}\r\n'
            b"0\r\nTrailer: x\r\n\r\n"
        )
        raw = b"\r\n" + _post("status", b"{}") + chunked + _PARITY["ping"]
        got = await _exchange(s, s.fast_addr, raw, responses=3)
        assert [g[0] for g in got] == [200, 200, 200]
        assert json.loads(got[1][2])["result"]["type"] == "user"
        assert "connection" not in got[0][1]
        # Expect: 100-continue gets an interim response before the body is sent
        reader, writer = await _open(s, s.fast_addr)
        try:
            writer.write(
                b"POST /v1/rpc/status HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 2\r\n\r\n"
            )
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"{}")
            status, _, _ = await _read_response(reader)
            assert status == 200
            # the connection stays usable
            writer.write(_PARITY["ping"])
            assert (await _read_response(reader))[0] == 200
        finally:
            writer.close()

    run_served(tmp_path, body)


def test_http_connection_close_and_http10(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        for raw, expect_header in (
            (_post("status", b"{}", "Connection: close\r\n"), "close"),
            (b"GET /v1/ping HTTP/1.0\r\n\r\n", "close"),
        ):
            reader, writer = await _open(s, s.fast_addr)
            writer.write(raw)
            status, headers, _ = await _read_response(reader)
            assert status == 200 and headers["connection"] == expect_header
            assert await reader.read() == b""  # closed by the server
            writer.close()
        reader, writer = await _open(s, s.fast_addr)
        writer.write(b"GET /v1/ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        for _ in range(2):
            status, headers, _ = await _read_response(reader)
            assert status == 200 and headers["connection"] == "keep-alive"
        writer.close()
        # HEAD: the headers of GET, no body; the connection stays in step
        reader, writer = await _open(s, s.fast_addr)
        writer.write(b"HEAD /v1/ping HTTP/1.1\r\n\r\n" + _PARITY["ping"])
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        status, _, b = await _read_response(reader)
        assert status == 200 and len(b) == length > 0
        writer.close()

    run_served(tmp_path, body)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"get /v1/ping HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/ping HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /v1/ping HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET /v1/p\xffng HTTP/1.1\r\n\r\n", 400),
        (b"GET /v1/ping HTTP/1.1\r\nX\x00: y\r\n\r\n", 400),
        (b"GET /v1/ping HTTP/1.1\r\nno-colon\r\n\r\n", 400),
        (b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (
            b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST /v1/rpc/status HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /v1/rpc/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /v1/rpc/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 400),
        (b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    ],
)
def test_http_bad_requests(tmp_path: Path, raw: bytes, status: int) -> None:
    async def body(s: Served) -> None:
        reader, writer = await _open(s, s.fast_addr)
        writer.write(raw)
        got, headers, _ = await _read_response(reader)
        assert got == status
        assert headers["connection"] == "close"
        assert await reader.read() == b""
        writer.close()

    run_served(tmp_path, body)


def test_http_chunked_body_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_mod, "MAX_BODY", 10)
    monkeypatch.setattr(api_mod, "MAX_CHUNKS", 3)

    async def body(s: Served) -> None:
        head = b"POST /v1/rpc/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        for chunks, status in ((b"6\r\nabcdef\r\n6\r\nabcdef\r\n", 413), (b"1\r\na\r\n" * 4, 400)):
            ((got, _, _),) = await _exchange(s, s.fast_addr, head + chunks)
            assert got == status

    run_served(tmp_path, body)


def test_http_timeouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_mod, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(api_mod, "REQUEST_TIMEOUT", 0.3)

    async def body(s: Served) -> None:
        # idle keep-alive connection: closed silently
        reader, writer = await _open(s, s.fast_addr)
        writer.write(_PARITY["ping"])
        assert (await _read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # a request that never completes: 408, then closed
        reader, writer = await _open(s, s.fast_addr)
        writer.write(b"POST /v1/rpc/status HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        status, _, _ = await asyncio.wait_for(_read_response(reader), 5)
        assert status == 408
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    run_served(tmp_path, body)


def test_http_slow_handler_is_not_timed_out_and_cleanup_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_mod, "REQUEST_TIMEOUT", 0.2)
    monkeypatch.setattr(api_mod, "IDLE_TIMEOUT", 0.2)

    async def slow(ctx: Any, params: dict[str, Any]) -> str:
        await asyncio.sleep(float(params["t"]))
        return "done"

    monkeypatch.setitem(api_mod.METHODS, "test.slow", api_mod.Method("test.slow", slow))

    async def body(s: Served) -> None:
        ((status, _, b),) = await _exchange(s, s.fast_addr, _post("test.slow", b'{"t": 0.6}'))
        assert status == 200 and json.loads(b) == {"result": "done"}
        # cleanup lets a request in progress finish, then closes the connection
        reader, writer = await _open(s, s.fast_addr)
        writer.write(_post("test.slow", b'{"t": 0.3}'))
        await asyncio.sleep(0.1)
        await s.fast.cleanup()
        status, headers, b = await _read_response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await reader.read() == b""
        writer.close()
        assert not s.fast.connections

    run_served(tmp_path, body)


def test_http_access_denied_is_audited(tmp_path: Path) -> None:
    async def body(s: Served) -> None:
        user_key = generate_private_key()
        await s.auth.create_user(name="carol", roles=["access"], traits={})
        issued = await s.auth.generate_user_cert(
            public_key=public_key_to_pem(user_key.public_key()), username="carol"
        )
        ident = IdentityFile(
            key_pem=private_key_to_pem(user_key),
            cert_pem=issued.cert_pem,
            ca_pems=(issued.host_ca_pem,),
        )
        ctx = client_ssl_context(ident, alpn=["http/1.1"])
        host, port = s.fast_addr
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=API_DOMAIN
        )
        writer.write(_post("users.add", b'{"name": "x", "roles": []}'))
        status, _, b = await _read_response(reader)
        writer.close()
        assert status == 403 and json.loads(b)["error"]["kind"]
        events = await s.auth.audit.search(types=["access.denied"])
        assert events[-1]["user"] == "carol" and events[-1]["method"] == "users.add"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", events[-1]["addr"])

    run_served(tmp_path, body)


def test_random_pools() -> None:
    from jumpgate.core.tlsca.der import RandomPool

    pool = RandomPool(chunk=64)
    seen = {pool.take(16) for _ in range(100)}
    assert len(seen) == 100 and all(len(b) == 16 for b in seen)
    pool._reset()  # what a forked child does: nothing of the parent's bytes is reused
    assert pool.take(16) not in seen
    serials = {ca_mod._random_serial() for _ in range(1000)}
    assert len(serials) == 1000 and all(0 < s < 2**128 for s in serials)
    uids = {audit_mod._uuid4() for _ in range(1000)}
    assert len(uids) == 1000 and all(uuid.UUID(u).version == 4 for u in uids)


class _FakeTransport:
    """Enough of a TLS transport for driving _ApiProtocol by hand."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.out: list[bytes] = []
        self.reading = True
        self.closed = False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        ssl_obj = mock.Mock()
        ssl_obj.getpeercert.return_value = self.der
        return {"ssl_object": ssl_obj, "peername": ("127.0.0.1", 4242)}.get(key, default)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def test_http_flow_control(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_mod, "MAX_HEAD", 64)
    monkeypatch.setattr(api_mod, "MAX_BODY", 64)

    async def main() -> None:
        auth = AuthServer(MemoryBackend(), cluster_name="example.com")
        await auth.start()
        admin = auth.generate_host_cert(public_key=_p256_pem(), host_id="admin.x", role="Admin")
        der = x509.load_pem_x509_certificate(admin.cert_pem).public_bytes(
            serialization.Encoding.DER
        )
        server = api_mod.ApiServer(AuthAPI(auth), asyncio.get_running_loop())
        proto = api_mod._ApiProtocol(server)
        transport = _FakeTransport(der)
        proto.connection_made(transport)  # type: ignore[arg-type]
        ping = _PARITY["ping"]
        # the peer stops reading our responses: we stop parsing and, past a
        # request's worth of buffered bytes, stop reading
        proto.pause_writing()
        for _ in range(10):
            proto.data_received(ping)
        assert transport.out == [] and not transport.reading
        proto.resume_writing()  # answers the first request, then one by one the rest
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(transport.out) == 10 and transport.reading
        assert all(o.startswith(b"HTTP/1.1 200 OK\r\n") for o in transport.out)
        proto.connection_lost(None)
        await auth.close()

    asyncio.run(main())
