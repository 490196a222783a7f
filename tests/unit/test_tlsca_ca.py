"""Certificate authorities: generation, issuance, pins and verification, checked with openssl."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.tlsca import (
    IDENTITY_EXTENSION_OID,
    CAType,
    CertAuthority,
    Identity,
    ca_pin,
    cert_to_pem,
    check_pins,
    generate_private_key,
    identity_from_certificate,
    load_certificate,
    load_certificates,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
    verify_certificate,
)

T0 = datetime(2026, 1, 1, 9, 0, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate(CAType.USER, "example.com")


@pytest.fixture(scope="module")
def foreign_ca() -> CertAuthority:
    """Another cluster's user CA that happens to share the cluster name."""
    return CertAuthority.generate(CAType.USER, "example.com")


@pytest.fixture(scope="module")
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return generate_private_key()


@pytest.fixture
def clocked(user_ca: CertAuthority) -> tuple[CertAuthority, FakeClock]:
    """The module CA's material behind a fake clock (cheap: no key generation)."""
    clock = FakeClock(T0)
    return CertAuthority(
        user_ca.ca_type, "example.com", user_ca.cert, user_ca.key, clock=clock
    ), clock


def _soon() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _openssl_verify(tmp_path: Path, ca_pem: bytes, leaf: x509.Certificate, *extra: str):
    ca_file = _write(tmp_path / "ca.pem", ca_pem)
    leaf_file = _write(tmp_path / "leaf.pem", cert_to_pem(leaf))
    return subprocess.run(
        ["openssl", "verify", *extra, "-CAfile", ca_file, leaf_file],
        capture_output=True,
        text=True,
        check=False,
    )


# --------------------------------------------------------------------------- pins


def test_ca_pin_matches_openssl(user_ca: CertAuthority, tmp_path: Path) -> None:
    ca_file = _write(tmp_path / "ca.pem", user_ca.cert_pem)
    pubkey = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout", "-in", ca_file], capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=pubkey,
        capture_output=True,
        check=True,
    ).stdout
    digest = subprocess.run(
        ["sha256sum"], input=der, capture_output=True, check=True
    ).stdout.split()[0]
    expected = "sha256:" + digest.decode()
    assert ca_pin(user_ca.cert) == expected
    assert user_ca.pin() == expected
    assert expected == "sha256:" + hashlib.sha256(der).hexdigest()


def test_check_pins(user_ca: CertAuthority, foreign_ca: CertAuthority) -> None:
    pin = user_ca.pin()
    check_pins(user_ca.cert, [pin])
    check_pins(user_ca.cert, [foreign_ca.pin(), f"  {pin.upper()}\n"])
    with pytest.raises(AccessDenied) as info:
        check_pins(user_ca.cert, [foreign_ca.pin()])
    assert info.value.message.startswith(f"the cluster's CA pin {pin} does not match any")
    assert foreign_ca.pin() in info.value.message
    assert info.value.hint
    with pytest.raises(BadParameter):
        check_pins(user_ca.cert, [" "])


# --------------------------------------------------------------------------- CA certificates


def test_five_ca_types_generate_distinct_subjects() -> None:
    clock = FakeClock(T0)
    cas = [CertAuthority.generate(t, "example.com", clock=clock) for t in CAType]
    assert len(cas) == 5
    assert len({ca.cert.subject.rfc4514_string() for ca in cas}) == 5
    assert len({ca.pin() for ca in cas}) == 5
    for ca in cas:
        cert = ca.cert
        assert cert.subject == cert.issuer
        assert (
            cert.subject.rfc4514_string() == f"OU={ca.ca_type.value},O=example.com,CN=example.com"
        )
        cert.verify_directly_issued_by(cert)
        assert cert.not_valid_before_utc == T0 - timedelta(minutes=1)
        assert cert.not_valid_after_utc == T0 + timedelta(days=3650)
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length is None
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical
        assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
        assert not ku.value.key_encipherment
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
        assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
        assert ca.key.curve.name == "secp256r1"
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"


def test_from_pem_round_trip(user_ca: CertAuthority, leaf_key) -> None:
    loaded = CertAuthority.from_pem(CAType.USER, "example.com", user_ca.cert_pem, user_ca.key_pem)
    assert loaded.pin() == user_ca.pin()
    cert = loaded.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("alice"))
    verify_certificate(cert, user_ca.trusted_certs, now=datetime.now(UTC))

    public_only = CertAuthority.from_pem(CAType.USER, "example.com", user_ca.cert_pem, None)
    assert public_only.key is None
    with pytest.raises(NotFound, match="no private key"):
        _ = public_only.key_pem
    with pytest.raises(NotFound):
        public_only.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("a"))


def test_from_pem_rejects_mismatched_key_and_leaf(user_ca: CertAuthority, leaf_key) -> None:
    with pytest.raises(BadParameter, match="does not match its certificate"):
        CertAuthority.from_pem(
            CAType.USER, "example.com", user_ca.cert_pem, private_key_to_pem(leaf_key)
        )
    leaf = user_ca.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("a"))
    with pytest.raises(BadParameter, match="not a CA certificate"):
        CertAuthority.from_pem(CAType.USER, "example.com", cert_to_pem(leaf), None)


def test_bad_cluster_names() -> None:
    with pytest.raises(BadParameter, match="needs a cluster name"):
        CertAuthority.generate(CAType.HOST, "")
    with pytest.raises(BadParameter, match="longer than 64"):
        CertAuthority.generate(CAType.HOST, "c" * 65)


# --------------------------------------------------------------------------- issuance


def test_client_cert_verifies_with_openssl(
    user_ca: CertAuthority, foreign_ca: CertAuthority, leaf_key, tmp_path: Path
) -> None:
    cert = user_ca.issue(
        leaf_key.public_key(), not_after=_soon(), identity=Identity("alice", ("access",))
    )
    res = _openssl_verify(tmp_path, user_ca.cert_pem, cert, "-purpose", "sslclient")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(": OK")
    # ... and openssl would notice a certificate from another CA
    res = _openssl_verify(tmp_path, foreign_ca.cert_pem, cert)
    assert res.returncode != 0
    # ... or a client certificate used as a server's
    res = _openssl_verify(tmp_path, user_ca.cert_pem, cert, "-purpose", "sslserver")
    assert res.returncode != 0


def test_server_cert_with_sans(user_ca: CertAuthority, leaf_key, tmp_path: Path) -> None:
    names = ["db.example.com", "*.example.com", "10.0.0.5", "::1", "localhost"]
    cert = user_ca.issue(
        leaf_key.public_key(),
        not_after=_soon(),
        identity=Identity("host-uuid", ("Db",), system_role="Db"),
        dns_names=names,
        server=True,
    )
    res = _openssl_verify(tmp_path, user_ca.cert_pem, cert, "-purpose", "sslserver")
    assert res.returncode == 0, res.stderr
    res = _openssl_verify(tmp_path, user_ca.cert_pem, cert, "-purpose", "sslclient")
    assert res.returncode == 0, res.stderr

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == [
        "db.example.com",
        "*.example.com",
        "localhost",
    ]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identity_from_certificate(cert).system_role == "Db"


def test_leaf_extensions(user_ca: CertAuthority, leaf_key) -> None:
    cert = user_ca.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("alice"))
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ca_ski = user_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == ca_ski.value.digest
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
    ident = ext.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    assert not ident.critical
    with pytest.raises(x509.ExtensionNotFound):
        ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.issuer == user_ca.cert.subject
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert 0 < cert.serial_number < 2**128
    other = user_ca.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("alice"))
    assert other.serial_number != cert.serial_number


def test_issue_with_subject_and_pem_keys(user_ca: CertAuthority, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postgres")])
    cert = user_ca.issue(
        public_key_to_pem(rsa_key.public_key()), not_after=_soon(), subject=subject
    )
    assert cert.subject == subject
    assert cert.public_key() == rsa_key.public_key()
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    assert _openssl_verify(tmp_path, user_ca.cert_pem, cert).returncode == 0


def test_issue_argument_errors(user_ca: CertAuthority, leaf_key) -> None:
    pub = leaf_key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    with pytest.raises(BadParameter, match="exactly one"):
        user_ca.issue(pub, not_after=_soon())
    with pytest.raises(BadParameter, match="exactly one"):
        user_ca.issue(pub, not_after=_soon(), identity=Identity("a"), subject=subject)
    with pytest.raises(BadParameter, match="server or client"):
        user_ca.issue(pub, not_after=_soon(), subject=subject, client=False)
    with pytest.raises(BadParameter, match="not a PEM public key"):
        user_ca.issue(b"garbage", not_after=_soon(), subject=subject)
    with pytest.raises(BadParameter, match="no time zone"):
        user_ca.issue(pub, not_after=datetime(2030, 1, 1), subject=subject)
    with pytest.raises(BadParameter, match="neither an IP address nor a DNS name"):
        user_ca.issue(pub, not_after=_soon(), subject=subject, dns_names=["bücher.example"])
    with pytest.raises(BadParameter, match="empty name"):
        user_ca.issue(pub, not_after=_soon(), subject=subject, dns_names=[""])


# --------------------------------------------------------------------------- injected clock


def test_not_before_is_backdated_one_minute(clocked, leaf_key) -> None:
    ca, clock = clocked
    cert = ca.issue(
        leaf_key.public_key(), not_after=T0 + timedelta(hours=1), identity=Identity("a")
    )
    assert cert.not_valid_before_utc == T0 - timedelta(minutes=1)
    assert cert.not_valid_after_utc == T0 + timedelta(hours=1)
    clock.now = T0 + timedelta(seconds=42, microseconds=999_999)
    cert = ca.issue(
        leaf_key.public_key(), not_after=T0 + timedelta(hours=1), identity=Identity("a")
    )
    assert cert.not_valid_before_utc == T0 - timedelta(minutes=1) + timedelta(seconds=42)


def test_expiry_is_capped_at_ca_expiry(leaf_key) -> None:
    clock = FakeClock(T0)
    ca = CertAuthority.generate(CAType.DB, "example.com", clock=clock, ttl=timedelta(days=1))
    cert = ca.issue(
        leaf_key.public_key(), not_after=T0 + timedelta(days=30), identity=Identity("a")
    )
    assert cert.not_valid_after_utc == ca.cert.not_valid_after_utc == T0 + timedelta(days=1)
    clock.now = T0 + timedelta(days=2)
    with pytest.raises(BadParameter, match=r"CA of cluster 'example\.com' expired"):
        ca.issue(leaf_key.public_key(), not_after=T0 + timedelta(days=30), identity=Identity("a"))


def test_not_after_in_the_past_is_refused(clocked, leaf_key) -> None:
    ca, _ = clocked
    for not_after in (T0, T0 - timedelta(seconds=1)):
        with pytest.raises(BadParameter, match="not in the future"):
            ca.issue(leaf_key.public_key(), not_after=not_after, identity=Identity("a"))


def test_verify_certificate(
    clocked, user_ca: CertAuthority, foreign_ca: CertAuthority, leaf_key
) -> None:
    ca, _ = clocked
    not_after = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    cert = ca.issue(leaf_key.public_key(), not_after=not_after, identity=Identity("alice"))
    trusted = user_ca.trusted_certs
    verify_certificate(cert, trusted, now=T0)
    verify_certificate(cert, trusted, now=not_after)

    with pytest.raises(AccessDenied) as info:
        verify_certificate(cert, trusted, now=not_after + timedelta(seconds=1))
    assert info.value.message == (
        "certificate expired at 2026-01-01 10:00:00 UTC (now 2026-01-01 10:00:01 UTC)"
    )
    assert "tsh login" in (info.value.hint or "")

    with pytest.raises(
        AccessDenied, match=r"^certificate is not valid before 2026-01-01 08:59:00 UTC"
    ):
        verify_certificate(cert, trusted, now=T0 - timedelta(minutes=2))

    with pytest.raises(AccessDenied) as info:
        verify_certificate(cert, foreign_ca.trusted_certs, now=T0)
    assert info.value.message == (
        "certificate was not issued by this cluster's user CA "
        "(issuer: OU=user,O=example.com,CN=example.com)"
    )
    assert info.value.hint

    with pytest.raises(AccessDenied, match="not valid for server authentication"):
        verify_certificate(cert, trusted, now=T0, purpose="server")
    with pytest.raises(BadParameter):
        verify_certificate(cert, trusted, now=T0, purpose="email")


def test_additional_trusted_certs(
    user_ca: CertAuthority, foreign_ca: CertAuthority, leaf_key
) -> None:
    both = CertAuthority(
        CAType.USER,
        "example.com",
        user_ca.cert,
        user_ca.key,
        additional_trusted=[foreign_ca.cert],
    )
    assert both.trusted_certs == [user_ca.cert, foreign_ca.cert]
    old = foreign_ca.issue(leaf_key.public_key(), not_after=_soon(), identity=Identity("a"))
    verify_certificate(old, both.trusted_certs, now=datetime.now(UTC))
    with pytest.raises(AccessDenied):
        verify_certificate(old, user_ca.trusted_certs, now=datetime.now(UTC))


# --------------------------------------------------------------------------- keys


def test_key_and_cert_pem_helpers(user_ca: CertAuthority, foreign_ca: CertAuthority) -> None:
    key = generate_private_key()
    assert load_private_key(private_key_to_pem(key)).private_numbers() == key.private_numbers()
    assert private_key_to_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_public_key(public_key_to_pem(key.public_key())) == key.public_key()
    bundle = user_ca.cert_pem + foreign_ca.cert_pem
    assert load_certificates(bundle) == [user_ca.cert, foreign_ca.cert]
    assert load_certificate(bundle) == user_ca.cert


def test_key_loaders_reject_garbage() -> None:
    for loader in (load_private_key, load_public_key, load_certificates, load_certificate):
        with pytest.raises(BadParameter) as info:
            loader(b"not a pem")
        assert info.value.hint
    key = generate_private_key()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(BadParameter, match="passphrase"):
        load_private_key(encrypted)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(BadParameter, match="expected an ECDSA private key"):
        load_private_key(rsa_pem)
