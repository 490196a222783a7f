"""Local users over a real (in-memory) AuthServer: invites, passwords, TOTP, limits, login."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from argon2 import PasswordHasher
from cryptography import x509

from jumpgate.core.auth import local
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend.memory import MemoryBackend
from jumpgate.core.errors import AccessDenied, BadParameter, LimitExceeded, NotFound
from jumpgate.core.tlsca import generate_private_key, public_key_to_pem
from jumpgate.core.tlsca.identity import identity_from_certificate

PASSWORD = "correct horse battery"


class FakeClock:
    """A clock tests move by hand (aware UTC)."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


Body = Callable[[AuthServer, FakeClock], Awaitable[None]]


def with_auth(body: Body, *, second_factor: str = "off") -> None:
    """Run ``body`` against a started AuthServer on a MemoryBackend with a fake clock."""

    async def main() -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        await backend.start()
        auth = AuthServer(backend, cluster_name="example.com", second_factor=second_factor)
        await auth.start()
        try:
            await body(auth, clock)
        finally:
            await auth.close()
            await backend.close()

    asyncio.run(main())


async def new_user(auth: AuthServer, name: str = "alice", **kw: Any) -> str:
    _, token = await auth.create_user(
        name=name, roles=["access"], traits={"db_users": ["reader"], "logins": ["alice"]}, **kw
    )
    return token


async def enroll(auth: AuthServer, clock: FakeClock, name: str = "alice") -> str | None:
    """Create a user and complete its invite; returns the OTP secret (None without OTP)."""
    token = await new_user(auth, name)
    invite = await local.invite_info(auth, token)
    code = pyotp.TOTP(invite.otp_secret).at(clock()) if invite.otp_secret else ""
    await local.complete_invite(
        auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=code
    )
    return invite.otp_secret


async def events(auth: AuthServer, kind: str) -> list[dict[str, Any]]:
    """Audit events of one type in emission order (the fake clock gives them one timestamp)."""
    return sorted(await auth.audit.search(types=[kind]), key=lambda e: int(e["ei"]))


# ---------------------------------------------------------------------- invites
def test_invite_complete_then_authenticate() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        invite = await local.invite_info(auth, token)
        assert invite.user == "alice"
        assert not invite.otp_required and invite.otp_secret is None and invite.otp_uri() == ""
        assert invite.expires == clock() + timedelta(hours=1)
        user = await local.complete_invite(
            auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=""
        )
        assert user == "alice"
        record = await auth.store.get_raw("/web/users/alice/pwd")
        assert record["hash"].startswith("$argon2id$")
        assert PASSWORD not in json.dumps(record)
        assert record["otp_secret"] is None and record["updated"]
        res = await local.authenticate(
            auth, user="alice", password=PASSWORD, otp_token="", client_ip="10.1.2.3"
        )
        assert res.metadata.name == "alice" and res.spec.roles == ["access"]
        (changed,) = await events(auth, "user.password_change")
        assert changed["user"] == "alice" and changed["code"] == "T1005I"
        (ok,) = await events(auth, "user.login")
        assert ok["success"] is True and ok["user"] == "alice" and ok["method"] == "local"
        assert ok["addr.remote"] == "10.1.2.3"

    with_auth(body)


def test_invite_is_single_use() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        await local.complete_invite(
            auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=""
        )
        with pytest.raises(NotFound, match="invalid or has expired") as err:
            await local.complete_invite(
                auth, token, password="another password!", password_confirm="another password!"
            )
        assert err.value.hint and "tctl users reset" in err.value.hint
        with pytest.raises(NotFound):
            await local.invite_info(auth, token)
        # the first password still stands
        await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="1.1.1.1")

    with_auth(body)


def test_concurrent_submits_only_one_wins() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        pw = ["first password!!", "second password!"]
        results = await asyncio.gather(
            *(
                local.complete_invite(auth, token, password=p, password_confirm=p, otp_code="")
                for p in pw
            ),
            return_exceptions=True,
        )
        wins = [r for r in results if r == "alice"]
        losses = [r for r in results if isinstance(r, NotFound)]
        assert len(wins) == 1 and len(losses) == 1, results
        winner = pw[results.index("alice")]
        await local.authenticate(auth, user="alice", password=winner, client_ip="1.1.1.1")
        assert len(await events(auth, "user.password_change")) == 1

    with_auth(body)


def test_invite_expires_with_the_clock() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth, invite_ttl=timedelta(minutes=30))
        clock.advance(minutes=29)
        await local.invite_info(auth, token)
        clock.advance(minutes=2)
        with pytest.raises(NotFound, match="invalid or has expired"):
            await local.invite_info(auth, token)
        with pytest.raises(NotFound):
            await local.complete_invite(
                auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=""
            )

    with_auth(body)


@pytest.mark.parametrize("token", ["", "nope", "../../users/alice", "a" * 300, "0" * 32])
def test_unknown_or_malformed_tokens_are_not_found(token: str) -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        with pytest.raises(NotFound, match="invalid or has expired"):
            await local.invite_info(auth, token)

    with_auth(body)


@pytest.mark.parametrize(
    ("password", "confirm", "field", "message"),
    [
        ("short", "short", "password", r"at least 12 characters long \(it has 5\)"),
        ("x" * 129, "x" * 129, "password", "at most 128 characters"),
        (PASSWORD, PASSWORD + "!", "password_confirm", "do not match"),
    ],
)
def test_password_rules_keep_the_token(
    password: str, confirm: str, field: str, message: str
) -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        with pytest.raises(local.InviteFormError, match=message) as err:
            await local.complete_invite(
                auth, token, password=password, password_confirm=confirm, otp_code=""
            )
        assert err.value.field == field and isinstance(err.value, BadParameter)
        assert password not in str(err.value)
        # still usable for a retry
        await local.complete_invite(
            auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=""
        )

    with_auth(body)


# ---------------------------------------------------------------------- TOTP
def test_otp_enrollment_and_login() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        invite = await local.invite_info(auth, token)
        assert invite.otp_required and invite.otp_secret
        assert invite.otp_secret not in repr(invite)
        assert (await local.invite_info(auth, token)).otp_secret == invite.otp_secret
        uri = invite.otp_uri()
        assert uri.startswith("otpauth://totp/example.com:alice?") and "issuer=example.com" in uri
        totp = pyotp.TOTP(invite.otp_secret)
        for bad, msg in (("", "6-digit code"), ("12345x", "not valid"), ("000000", "not valid")):
            if bad == "000000" and totp.at(clock()) == bad:
                continue
            with pytest.raises(local.InviteFormError, match=msg) as err:
                await local.complete_invite(
                    auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code=bad
                )
            assert err.value.field == "otp_code"
        # a code one step old is still accepted (valid_window=1)
        await local.complete_invite(
            auth,
            token,
            password=PASSWORD,
            password_confirm=PASSWORD,
            otp_code=totp.at(clock() - timedelta(seconds=30)),
        )
        record = await auth.store.get_raw("/web/users/alice/pwd")
        assert record["otp_secret"] == invite.otp_secret
        # without a code, or with a wrong one: refused
        for code in ("", "123"):
            with pytest.raises(AccessDenied, match=local.GENERIC_LOGIN_ERROR):
                await local.authenticate(auth, user="alice", password=PASSWORD, otp_token=code)
        # the enrollment code cannot be replayed at login
        with pytest.raises(AccessDenied):
            await local.authenticate(
                auth,
                user="alice",
                password=PASSWORD,
                otp_token=totp.at(clock() - timedelta(seconds=30)),
            )
        code = totp.at(clock())
        await local.authenticate(auth, user="alice", password=PASSWORD, otp_token=code)
        with pytest.raises(AccessDenied):  # same code, same window: reuse
            await local.authenticate(auth, user="alice", password=PASSWORD, otp_token=code)
        clock.advance(seconds=30)
        await local.authenticate(auth, user="alice", password=PASSWORD, otp_token=totp.at(clock()))
        fails = [e for e in await events(auth, "user.login") if not e["success"]]
        reasons = [e["error"] for e in fails]
        assert "invalid OTP code" in reasons and "OTP code already used" in reasons
        assert all(e["code"] == "T1000W" for e in fails)
        ok = [e for e in await events(auth, "user.login") if e["success"]]
        assert ok[-1]["mfa_device"] == {"mfa_device_type": "TOTP"}

    with_auth(body, second_factor="otp")


def test_otp_page_needed_before_submit() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_user(auth)
        with pytest.raises(local.InviteFormError, match="has not been set up"):
            await local.complete_invite(
                auth, token, password=PASSWORD, password_confirm=PASSWORD, otp_code="123456"
            )

    with_auth(body, second_factor="otp")


def test_user_with_otp_secret_needs_code_even_when_cluster_says_off() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        secret = await enroll(auth, clock)
        assert secret
        auth.second_factor = "off"
        with pytest.raises(AccessDenied):
            await local.authenticate(auth, user="alice", password=PASSWORD)
        clock.advance(seconds=30)
        await local.authenticate(
            auth, user="alice", password=PASSWORD, otp_token=pyotp.TOTP(secret).at(clock())
        )

    with_auth(body, second_factor="otp")


# ---------------------------------------------------------------------- failures
def test_wrong_password_is_generic_and_audited() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        with pytest.raises(AccessDenied) as err:
            await local.authenticate(
                auth, user="alice", password="wrong password!", client_ip="9.9.9.9"
            )
        assert err.value.message == local.GENERIC_LOGIN_ERROR
        with pytest.raises(AccessDenied) as err2:
            await local.authenticate(auth, user="nobody", password=PASSWORD, client_ip="9.9.9.9")
        assert err2.value.message == err.value.message
        fails = await events(auth, "user.login")
        assert [(e["user"], e["success"], e["error"]) for e in fails] == [
            ("alice", False, "wrong password"),
            ("nobody", False, "unknown user or no password set"),
        ]
        assert all("wrong password!" not in json.dumps(e) for e in fails)

    with_auth(body)


def test_unknown_user_still_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = local._verify

    async def counting(pw_hash: str, password: str) -> bool:
        calls.append(pw_hash[:9])
        return await real(pw_hash, password)

    monkeypatch.setattr(local, "_verify", counting)

    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await new_user(auth, "bob")  # exists, but never set a password
        for name in ("ghost", "bob", ""):
            with pytest.raises(AccessDenied):
                await local.authenticate(auth, user=name, password=PASSWORD)
        assert calls == ["$argon2id"] * 3

    with_auth(body)


@pytest.fixture
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Light argon2id parameters for tests that make dozens of attempts (same code paths)."""
    monkeypatch.setattr(
        local, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    monkeypatch.setattr(local, "_dummy_hash", None)


@pytest.mark.usefixtures("cheap_hashing")
def test_rate_limit_per_user_and_per_ip() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        for i in range(local.MAX_USER_FAILURES):
            with pytest.raises(AccessDenied):
                await local.authenticate(
                    auth, user="alice", password="nope", client_ip=f"10.0.0.{i}"
                )
        with pytest.raises(LimitExceeded, match="too many failed login attempts") as err:
            await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="10.0.1.1")
        assert err.value.hint and "tctl users reset" in err.value.hint
        (limited,) = [e for e in await events(auth, "user.login") if e["error"] == "rate limited"]
        assert limited["success"] is False
        clock.advance(minutes=10, seconds=1)
        await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="10.0.1.1")

        # one address spraying many names is stopped too, for every name
        for i in range(local.MAX_IP_FAILURES):
            with pytest.raises(AccessDenied):
                await local.authenticate(auth, user=f"user{i}", password="x", client_ip="6.6.6.6")
        with pytest.raises(LimitExceeded, match="from this address"):
            await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="6.6.6.6")
        await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="7.7.7.7")

    with_auth(body)


@pytest.mark.usefixtures("cheap_hashing")
def test_success_clears_the_user_failures() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        for _ in range(2):
            for _ in range(local.MAX_USER_FAILURES - 1):
                with pytest.raises(AccessDenied):
                    await local.authenticate(auth, user="alice", password="nope", client_ip="")
            await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="")

    with_auth(body)


def test_locked_user_is_refused() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        lock = await auth.create_lock(target={"user": "alice"}, message="incident 42")
        with pytest.raises(AccessDenied, match="incident 42"):
            await local.authenticate(auth, user="alice", password=PASSWORD, client_ip="1.2.3.4")
        # wrong password on a locked user: still the generic message
        with pytest.raises(AccessDenied, match=local.GENERIC_LOGIN_ERROR):
            await local.authenticate(auth, user="alice", password="nope", client_ip="1.2.3.4")
        fails = [e for e in await events(auth, "user.login") if not e["success"]]
        assert fails[0]["error"] == f"user is locked (lock {lock.metadata.name})"
        await auth.store.delete("lock", lock.metadata.name)
        await auth.create_lock(target={"role": "access"}, message="role locked")
        with pytest.raises(AccessDenied, match="role locked"):
            await local.authenticate(auth, user="alice", password=PASSWORD)

    with_auth(body)


def test_old_hash_parameters_are_upgraded() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
        record = await auth.store.get_raw("/web/users/alice/pwd")
        await auth.store.put_raw("/web/users/alice/pwd", {**record, "hash": weak})
        await local.authenticate(auth, user="alice", password=PASSWORD)
        upgraded = (await auth.store.get_raw("/web/users/alice/pwd"))["hash"]
        assert upgraded != weak and not PasswordHasher().check_needs_rehash(upgraded)
        await local.authenticate(auth, user="alice", password=PASSWORD)

    with_auth(body)


# ---------------------------------------------------------------------- login
def _pub() -> bytes:
    return public_key_to_pem(generate_private_key().public_key())


def test_login_issues_a_user_certificate() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        out = await local.login(
            auth,
            user="alice",
            password=PASSWORD,
            otp_token="",
            tls_pub_key=_pub(),
            ttl_ns=0,
            client_ip="127.0.0.1",
        )
        assert out["username"] == "alice" and out["cluster_name"] == "example.com"
        cert = x509.load_pem_x509_certificate(out["tls_cert"].encode())
        ident = identity_from_certificate(cert)
        assert ident.username == "alice" and list(ident.groups) == ["access"]
        assert ident.traits["db_users"] == ("reader",)
        assert cert.not_valid_after_utc - clock() == timedelta(hours=12)
        (signer,) = out["host_signers"]
        assert signer["kind"] == "cert_authority" and signer["spec"]["type"] == "host"
        (tls,) = signer["spec"]["active_keys"]["tls"]
        host_ca = x509.load_pem_x509_certificate(tls["cert"].encode())
        assert host_ca.subject.rfc4514_string().find("example.com") >= 0
        assert (await events(auth, "cert.create"))[-1]["user"] == "alice"

        # a long TTL is capped by the role (access: 30h); a base64 key is accepted too
        out = await local.login(
            auth,
            user="alice",
            password=PASSWORD,
            otp_token="",
            tls_pub_key=base64.b64encode(_pub()),
            ttl_ns=10**20,
            client_ip="127.0.0.1",
        )
        cert = x509.load_pem_x509_certificate(out["tls_cert"].encode())
        assert cert.not_valid_after_utc - clock() == timedelta(hours=30)
        out = await local.login(
            auth, user="alice", password=PASSWORD, tls_pub_key=_pub(), ttl_ns=3600 * 10**9
        )
        cert = x509.load_pem_x509_certificate(out["tls_cert"].encode())
        assert cert.not_valid_after_utc - clock() == timedelta(hours=1)

    with_auth(body)


def test_login_rejects_bad_keys_and_credentials() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await enroll(auth, clock)
        with pytest.raises(BadParameter, match="PEM public key"):
            await local.login(auth, user="alice", password=PASSWORD, tls_pub_key=b"garbage!")
        with pytest.raises(AccessDenied, match=local.GENERIC_LOGIN_ERROR):
            await local.login(auth, user="alice", password="wrong", tls_pub_key=_pub())
        assert await events(auth, "cert.create") == []

    with_auth(body)
