"""Local users: invite links, passwords (argon2id), TOTP second factor and login.

Functions here work over an :class:`~jumpgate.core.auth.server.AuthServer`:

* :func:`invite_info` / :func:`complete_invite` back the ``/web/invite/<token>``
  page: the invite token (stored by ``AuthServer.create_invite`` at
  ``/usertokens/<token>``) lets its user choose a password and, when the cluster
  requires it, enroll a TOTP authenticator. The token is single-use.
* :func:`authenticate` checks a password (and TOTP code) with failure rate limits,
  TOTP replay protection, lock checks and an audit event for every attempt.
* :func:`login` is ``POST /webapi/ssh/certs``: authenticate, then issue a user
  certificate.

Password records live at ``/web/users/<name>/pwd`` as JSON
``{"hash", "otp_secret", "otp_last_counter", "updated"}``. Nothing in this module
logs or reprs a password, an OTP secret or an invite token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import json
import re
import secrets
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend import Item
from jumpgate.core.errors import AccessDenied, BadParameter, CompareFailed, LimitExceeded, NotFound
from jumpgate.core.resources import User
from jumpgate.core.tlsca import CAType, Identity, cert_to_pem, load_public_key

#: Password length rules (characters).
MIN_PASSWORD_LEN = 12
MAX_PASSWORD_LEN = 128
#: Failed logins allowed per user name / per client IP within :data:`FAILURE_WINDOW`.
MAX_USER_FAILURES = 5
MAX_IP_FAILURES = 20
FAILURE_WINDOW = timedelta(minutes=10)
#: The message every credential failure gets: it must not tell which part was wrong.
GENERIC_LOGIN_ERROR = "invalid username, password or second factor"
#: ``POST /webapi/ssh/certs`` without a TTL (Teleport: apidefaults.CertDuration).
DEFAULT_LOGIN_TTL = timedelta(hours=12)
_MAX_TTL = timedelta(days=365)
#: Token kinds an invite page accepts (``tctl users add`` and ``tctl users reset``).
_INVITE_KINDS = ("invite", "reset")
_TOKEN_RE = re.compile(r"[0-9A-Za-z_-]{16,128}")

_INVALID_INVITE = "this invite link is invalid or has expired"
_hasher = PasswordHasher()
_dummy_hash: str | None = None


def invalid_invite() -> NotFound:
    """The one error every unusable invite link gets (unknown, used or expired)."""
    return NotFound(
        _INVALID_INVITE, hint="ask an administrator for a new one: tctl users reset NAME"
    )


class InviteFormError(BadParameter):
    """A validation failure on the invite form; ``field`` names the form field at fault."""

    def __init__(self, message: str, *, field: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


@dataclass(frozen=True)
class Invite:
    """What the invite page shows. ``otp_secret`` is set only when OTP enrollment is required."""

    user: str
    expires: datetime
    otp_required: bool
    issuer: str
    otp_secret: str | None = field(default=None, repr=False)

    def otp_uri(self) -> str:
        """The ``otpauth://totp/...`` URI authenticator apps scan ("" without OTP)."""
        if not self.otp_secret:
            return ""
        return pyotp.TOTP(self.otp_secret).provisioning_uri(name=self.user, issuer_name=self.issuer)


def pwd_key(user: str) -> str:
    """Backend key of a user's password record."""
    return f"/web/users/{user}/pwd"


def _token_key(token: str) -> str:
    if not _TOKEN_RE.fullmatch(token):
        raise invalid_invite()
    return f"/usertokens/{token}"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _parse_time(s: Any) -> datetime | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def otp_required(auth: AuthServer) -> bool:
    """Whether the cluster requires a TOTP second factor for local users."""
    return auth.second_factor in ("otp", "on")


# ---------------------------------------------------------------------- invites
async def _load_invite(auth: AuthServer, token: str) -> tuple[Item, dict[str, Any]]:
    key = _token_key(token)
    try:
        item = await auth.backend.get(key)
        data = json.loads(item.value)
    except (NotFound, ValueError):
        raise invalid_invite() from None
    if not isinstance(data, dict) or data.get("kind") not in _INVITE_KINDS or data.get("used"):
        raise invalid_invite()
    expires = _parse_time(data.get("expires"))
    if expires is None or expires <= auth.clock() or not data.get("user"):
        raise invalid_invite()
    return item, data


async def invite_info(auth: AuthServer, token: str) -> Invite:
    """What the invite page for ``token`` shows; generates the TOTP secret on first view.

    The secret is stored in the token record (compare-and-swap, so two first views
    agree) so that the QR code shown and the code checked on submit match.
    """
    for _ in range(5):
        item, data = await _load_invite(auth, token)
        required = otp_required(auth)
        secret = data.get("otp_secret") if required else None
        if required and not secret:
            secret = pyotp.random_base32()
            new = Item(
                key=item.key,
                value=json.dumps({**data, "otp_secret": secret}).encode(),
                expires=item.expires,
            )
            try:
                await auth.backend.compare_and_swap(item, new)
            except CompareFailed:
                continue  # someone else generated it first: read theirs
            except NotFound:
                raise invalid_invite() from None
        expires = _parse_time(data.get("expires"))
        assert expires is not None
        return Invite(
            user=str(data["user"]),
            expires=expires,
            otp_required=required,
            issuer=auth.cluster_name,
            otp_secret=str(secret) if secret else None,
        )
    raise invalid_invite()


def _otp_counter(secret: str, code: str, now: datetime, window: int = 1) -> int | None:
    """The TOTP time step ``code`` is valid for (±``window`` steps around ``now``), or None."""
    code = code.replace(" ", "").strip()
    if not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    found: int | None = None
    for step in range(current - window, current + window + 1):
        # compare every candidate (no early exit) so timing says nothing about which matched
        if hmac.compare_digest(code.encode(), totp.generate_otp(step).encode()):
            found = step
    return found


def check_password_rules(password: str, password_confirm: str) -> None:
    """Raise :class:`InviteFormError` when a new password breaks a rule."""
    if len(password) < MIN_PASSWORD_LEN:
        raise InviteFormError(
            f"the password must be at least {MIN_PASSWORD_LEN} characters long "
            f"(it has {len(password)})",
            field="password",
        )
    if len(password) > MAX_PASSWORD_LEN:
        raise InviteFormError(
            f"the password must be at most {MAX_PASSWORD_LEN} characters long", field="password"
        )
    if not hmac.compare_digest(password.encode(), password_confirm.encode()):
        raise InviteFormError(
            "the two passwords do not match",
            field="password_confirm",
            hint="type the same password in both fields",
        )


async def complete_invite(
    auth: AuthServer, token: str, *, password: str, password_confirm: str, otp_code: str = ""
) -> str:
    """Set the password (and TOTP secret) of the invite's user; returns the user name.

    The token is consumed with a compare-and-swap, so of two concurrent submits only
    one succeeds. A validation failure leaves the token valid for a retry.
    """
    item, data = await _load_invite(auth, token)
    user = str(data["user"])
    check_password_rules(password, password_confirm)
    secret: str | None = None
    counter = -1
    if otp_required(auth):
        secret = data.get("otp_secret")
        if not secret:
            raise InviteFormError(
                "the authenticator app has not been set up for this link yet",
                field="otp_code",
                hint="reload the page and scan the QR code it shows",
            )
        if not otp_code.strip():
            raise InviteFormError(
                "enter the 6-digit code from your authenticator app", field="otp_code"
            )
        found = _otp_counter(secret, otp_code, auth.clock())
        if found is None:
            raise InviteFormError(
                "the authenticator code is not valid",
                field="otp_code",
                hint="check that the device's clock is right and enter the current code",
            )
        counter = found
    try:
        await auth.store.get_as(User, user)
    except NotFound:
        raise invalid_invite() from None
    pw_hash = await asyncio.to_thread(_hasher.hash, password)
    used = {k: v for k, v in data.items() if k != "otp_secret"} | {"used": _iso(auth.clock())}
    try:
        await auth.backend.compare_and_swap(
            item, Item(key=item.key, value=json.dumps(used).encode(), expires=item.expires)
        )
    except (CompareFailed, NotFound):
        raise invalid_invite() from None
    record = {
        "hash": pw_hash,
        "otp_secret": secret,
        "otp_last_counter": counter,
        "updated": _iso(auth.clock()),
    }
    try:
        await auth.store.put_raw(pwd_key(user), record)
    except BaseException:
        with contextlib.suppress(Exception):  # give the link back so the user can retry
            await auth.backend.put(item)
        raise
    with contextlib.suppress(NotFound):
        await auth.backend.delete(item.key)
    auth.audit.emit("user.password_change", user=user, otp_enrolled=secret is not None)
    return user


# ---------------------------------------------------------------------- rate limits
Failures = dict[str, collections.deque[datetime]]


class _FailureLimiter:
    """Sliding-window failure counters per user name and per client IP (in memory)."""

    def __init__(self) -> None:
        self.by_user: Failures = {}
        self.by_ip: Failures = {}

    def _tables(self, user: str, ip: str) -> list[tuple[Failures, str, int, str]]:
        out = [(self.by_user, user, MAX_USER_FAILURES, "for this user")]
        if ip:  # an unknown address must not share one bucket with every other
            out.append((self.by_ip, ip, MAX_IP_FAILURES, "from this address"))
        return out

    @staticmethod
    def _recent(table: Failures, key: str, now: datetime) -> collections.deque[datetime]:
        q = table.get(key, collections.deque())
        while q and q[0] <= now - FAILURE_WINDOW:
            q.popleft()
        if not q:
            table.pop(key, None)
        return q

    def check(self, user: str, ip: str, now: datetime) -> None:
        """Raise :class:`LimitExceeded` when the user or the IP failed too often lately."""
        for table, key, limit, what in self._tables(user, ip):
            q = self._recent(table, key, now)
            if len(q) >= limit:
                minutes = max(1, int((q[0] + FAILURE_WINDOW - now).total_seconds() + 59) // 60)
                raise LimitExceeded(
                    f"too many failed login attempts {what}; try again in {minutes} minute(s)",
                    hint="an administrator can issue a new password link: tctl users reset NAME",
                )

    def failed(self, user: str, ip: str, now: datetime) -> None:
        """Count one failure (memory stays bounded under a spray of names)."""
        for table, key, _, _ in self._tables(user, ip):
            if len(table) > 10_000:
                for k in list(table)[:1_000]:  # the oldest keys first (insertion order)
                    table.pop(k, None)
            table.setdefault(key, collections.deque()).append(now)

    def succeeded(self, user: str) -> None:
        """Forget the user's failures."""
        self.by_user.pop(user, None)


_limiters: weakref.WeakKeyDictionary[AuthServer, _FailureLimiter] = weakref.WeakKeyDictionary()


def _limiter(auth: AuthServer) -> _FailureLimiter:
    lim = _limiters.get(auth)
    if lim is None:
        lim = _limiters[auth] = _FailureLimiter()
    return lim


# ---------------------------------------------------------------------- authenticate
async def _verify(pw_hash: str, password: str) -> bool:
    def run() -> bool:
        try:
            return _hasher.verify(pw_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(run)


async def _dummy_verify(password: str) -> None:
    """Spend the time a real verify takes, so unknown users cannot be told apart."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = await asyncio.to_thread(_hasher.hash, secrets.token_urlsafe(24))
    await _verify(_dummy_hash, password)


async def _load_pwd(auth: AuthServer, user: str) -> tuple[Item, dict[str, Any]] | None:
    try:
        item = await auth.backend.get(pwd_key(user))
        data = json.loads(item.value)
    except (NotFound, ValueError, BadParameter):
        return None
    return (item, data) if isinstance(data, dict) and data.get("hash") else None


async def _record_success(
    auth: AuthServer, user: str, item: Item, data: dict[str, Any], password: str, counter: int
) -> bool:
    """Store the used TOTP step (and a fresh hash if the parameters changed).

    Returns False when the TOTP step was used meanwhile by a concurrent login.
    """
    for _ in range(3):
        update: dict[str, Any] = {}
        if counter >= 0:
            if counter <= int(data.get("otp_last_counter", -1)):
                return False
            update["otp_last_counter"] = counter
        if _hasher.check_needs_rehash(str(data["hash"])):
            update["hash"] = await asyncio.to_thread(_hasher.hash, password)
        if not update:
            return True
        new = Item(
            key=item.key, value=json.dumps({**data, **update}).encode(), expires=item.expires
        )
        try:
            await auth.backend.compare_and_swap(item, new)
            return True
        except CompareFailed:
            loaded = await _load_pwd(auth, user)
            if loaded is None:
                return False
            item, data = loaded
        except NotFound:
            return False
    return False


async def authenticate(
    auth: AuthServer, *, user: str, password: str, otp_token: str = "", client_ip: str = ""
) -> User:
    """Check a local user's password and second factor; returns the user.

    Every credential failure raises :class:`AccessDenied` with the same generic
    message (the audit event keeps the real reason); too many recent failures
    raise :class:`LimitExceeded`; a locked user gets :class:`AccessDenied` naming
    the lock (only after the credentials were right).
    """
    limiter = _limiter(auth)
    name = user[:256]

    def audit(error: str | None, **extra: Any) -> None:
        extra["addr.remote"] = client_ip or None
        auth.audit.emit(
            "user.login", success=error is None, user=name, method="local", error=error, **extra
        )

    def fail(reason: str) -> AccessDenied:
        limiter.failed(name, client_ip, auth.clock())
        audit(reason)
        return AccessDenied(GENERIC_LOGIN_ERROR)

    try:
        limiter.check(name, client_ip, auth.clock())
    except LimitExceeded:
        audit("rate limited")
        raise
    res: User | None = None
    with contextlib.suppress(NotFound, BadParameter):
        res = await auth.store.get_as(User, user) if user else None
    loaded = await _load_pwd(auth, user) if res is not None else None
    if res is None or loaded is None:
        await _dummy_verify(password)
        raise fail("unknown user or no password set")
    item, data = loaded
    if not await _verify(str(data["hash"]), password):
        raise fail("wrong password")
    secret = data.get("otp_secret")
    counter = -1
    if secret or otp_required(auth):
        if not secret:
            raise fail("second factor required but the user has no OTP device")
        found = _otp_counter(str(secret), otp_token, auth.clock())
        if found is None:
            raise fail("invalid OTP code")
        counter = found
    if not await _record_success(auth, user, item, data, password, counter):
        raise fail("OTP code already used")
    lock = auth.find_lock(Identity(username=user, groups=tuple(res.spec.roles)))
    if lock is not None:
        audit(f"user is locked (lock {lock.metadata.name})")
        raise AccessDenied(
            f'{user} is locked: "{lock.spec.message or "no message"}"',
            hint="ask an administrator to lift the lock",
        )
    limiter.succeeded(name)
    audit(None, mfa_device={"mfa_device_type": "TOTP"} if counter >= 0 else None)
    return res


# ---------------------------------------------------------------------- login
def decode_public_key(value: str | bytes) -> bytes:
    """A PEM public key given as PEM text or as base64 of the PEM (Go ``[]byte`` JSON)."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if not raw.lstrip().startswith(b"-----BEGIN"):
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadParameter(
                "tls_pub_key must be a PEM public key", hint="send the PEM text of the key"
            ) from None
    load_public_key(raw)
    return raw


def ttl_from_ns(ttl_ns: int) -> timedelta:
    """A requested TTL in nanoseconds as a timedelta (0 or less: the default 12h)."""
    if ttl_ns <= 0:
        return DEFAULT_LOGIN_TTL
    max_ns = int(_MAX_TTL.total_seconds()) * 1_000_000_000
    return timedelta(microseconds=max(1, min(ttl_ns, max_ns) // 1000))


async def login(
    auth: AuthServer,
    *,
    user: str,
    password: str,
    otp_token: str = "",
    tls_pub_key: bytes,
    ttl_ns: int = 0,
    client_ip: str = "",
) -> dict[str, Any]:
    """``POST /webapi/ssh/certs``: authenticate, then issue a user TLS certificate.

    The TTL is capped by the roles' ``max_session_ttl``. Certificates in the answer
    are PEM text.
    """
    public_key = decode_public_key(tls_pub_key)
    await authenticate(auth, user=user, password=password, otp_token=otp_token, client_ip=client_ip)
    issued = await auth.generate_user_cert(
        public_key=public_key, username=user, ttl=ttl_from_ns(ttl_ns), login_ip=client_ip
    )
    host_certs = [{"cert": cert_to_pem(c).decode()} for c in auth.cas[CAType.HOST].trusted_certs]
    return {
        "username": user,
        "tls_cert": issued.cert_pem.decode(),
        "host_signers": [
            {
                "kind": "cert_authority",
                "version": "v2",
                "metadata": {"name": auth.cluster_name},
                "spec": {
                    "type": "host",
                    "cluster_name": auth.cluster_name,
                    "active_keys": {"tls": host_certs},
                },
            }
        ],
        "cluster_name": auth.cluster_name,
    }
