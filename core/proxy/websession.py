"""Browser sessions for application access: proxy web sessions, launch tokens, app sessions.

Three records, all in the auth service's backend with a TTL, all keyed by the
SHA-256 of their secret (the backend never holds a usable cookie or token):

* a **web session** (``/web/sessions/<hash>``) after a password login on
  ``/web/login``; its secret is the ``__Host-session`` cookie of the proxy host.
  It lives 12 hours, or less when the user's roles set ``max_session_ttl``.
* a **launch token** (``/web/launch/<hash>``), minted by ``/web/launch`` for one
  app: it carries a fresh app certificate for the user (``route_to_app``, TTL at
  most the web session's remaining life), the path to open, and the hash of the
  ``state`` nonce the app host set in the browser. It is single-use and valid for
  60 seconds; the record is kept a little longer so that a late use can be told
  "expired" rather than "unknown".
* an **app session** (``/web/appsessions/<hash>``), created when the app host
  consumes a launch token; its secret is the host-only ``__Host-grv_app_session``
  cookie of the app host. It holds the certificate, so a request with the cookie
  is served exactly like a request with that client certificate. An index key
  ``/web/sessions/<web hash>/apps/<app hash>`` lets a logout delete every app
  session of the web session.

No private key is stored: the proxy never authenticates with the app
certificate, it passes the certificate to the App Service as the session's
assertion (as it does for a client certificate), after checking the cookie.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend import Item, prefix_end
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.resources import User
from jumpgate.core.tlsca import RouteToApp, generate_private_key, public_key_to_pem

#: The proxy host's session cookie (Teleport's name).
WEB_COOKIE = "__Host-session"
#: The app host's session cookie (Teleport's name).
APP_COOKIE = "__Host-grv_app_session"
#: The app host's launch nonce (double-submit: the launch token must carry its hash).
STATE_COOKIE = "__Host-grv_app_state"
#: A web session without ``max_session_ttl`` in the user's roles.
DEFAULT_SESSION_TTL = timedelta(hours=12)
#: How long a launch token may be used.
LAUNCH_TTL = timedelta(seconds=60)
#: How long the app host's state cookie lives.
STATE_TTL = timedelta(minutes=5)
#: Launching needs at least this much web session left.
MIN_APP_TTL = timedelta(seconds=5)

_WEB = "/web/sessions/"
_APPS = "/web/appsessions/"
_LAUNCH = "/web/launch/"
_SECRET_RE = re.compile(r"[0-9A-Za-z_-]{32,128}")


def new_secret() -> str:
    """A fresh 256-bit secret, URL- and cookie-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The backend key part for ``secret`` (hex SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def well_formed(secret: str) -> bool:
    """Whether ``secret`` could be one of ours (cheap check before a backend read)."""
    return bool(_SECRET_RE.fullmatch(secret))


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _time(s: Any) -> datetime | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


async def _load(auth: AuthServer, key: str) -> tuple[Item, dict[str, Any]] | None:
    try:
        item = await auth.backend.get(key)
        data = json.loads(item.value)
    except (NotFound, ValueError):
        return None
    return (item, data) if isinstance(data, dict) else None


# ---------------------------------------------------------------------- web sessions
@dataclass(frozen=True)
class WebSession:
    """A signed-in browser on the proxy host."""

    key: str  #: digest of the cookie value
    user: str
    created: datetime
    expires: datetime
    login_ip: str = ""

    def remaining(self, now: datetime) -> timedelta:
        """Time left."""
        return self.expires - now


async def session_ttl(auth: AuthServer, user: User) -> timedelta:
    """12 hours, capped by the ``max_session_ttl`` of the user's roles."""
    traits = {k: list(v) for k, v in (user.spec.traits or {}).items()}
    max_ttl = auth.checker_for(list(user.spec.roles), traits).max_session_ttl()
    if max_ttl > timedelta(0):
        return min(DEFAULT_SESSION_TTL, max_ttl)
    return DEFAULT_SESSION_TTL


async def create_web_session(
    auth: AuthServer, user: User, *, client_ip: str = ""
) -> tuple[str, WebSession]:
    """Store a new web session for ``user`` (already authenticated); returns (cookie, session)."""
    secret = new_secret()
    now = auth.clock()
    ws = WebSession(
        key=digest(secret),
        user=user.metadata.name,
        created=now,
        expires=now + await session_ttl(auth, user),
        login_ip=client_ip,
    )
    record = {
        "user": ws.user,
        "created": _iso(ws.created),
        "expires": _iso(ws.expires),
        "login_ip": client_ip,
    }
    await auth.backend.put(
        Item(key=_WEB + ws.key, value=json.dumps(record).encode(), expires=ws.expires)
    )
    return secret, ws


async def get_web_session(auth: AuthServer, secret: str) -> WebSession | None:
    """The live web session for a cookie value, or None."""
    if not well_formed(secret):
        return None
    key = digest(secret)
    loaded = await _load(auth, _WEB + key)
    if loaded is None:
        return None
    _, data = loaded
    created, expires = _time(data.get("created")), _time(data.get("expires"))
    if created is None or expires is None or expires <= auth.clock() or not data.get("user"):
        return None
    return WebSession(
        key=key,
        user=str(data["user"]),
        created=created,
        expires=expires,
        login_ip=str(data.get("login_ip") or ""),
    )


async def delete_web_session(auth: AuthServer, secret: str) -> tuple[str, list[str]]:
    """Sign out: delete the web session and its app sessions.

    Returns the user ("" when there was no session) and the public ids of the
    deleted app sessions (their live connections should be closed).
    """
    if not well_formed(secret):
        return "", []
    key = digest(secret)
    loaded = await _load(auth, _WEB + key)
    user = str(loaded[1].get("user") or "") if loaded else ""
    prefix = f"{_WEB}{key}/apps/"
    closed: list[str] = []
    for item in await auth.backend.get_range(prefix, prefix_end(prefix)):
        app_key = item.key[len(prefix) :]
        rec = await _load(auth, _APPS + app_key)
        if rec is not None:
            closed.append(str(rec[1].get("session_id") or ""))
        with contextlib.suppress(NotFound):
            await auth.backend.delete(_APPS + app_key)
    await auth.backend.delete_range(prefix, prefix_end(prefix))
    with contextlib.suppress(NotFound):
        await auth.backend.delete(_WEB + key)
    return user, [c for c in closed if c]


# ---------------------------------------------------------------------- launch tokens
@dataclass(frozen=True)
class LaunchGrant:
    """What consuming a launch token yields: the app cookie and where to go."""

    cookie: str
    session: BrowserAppSession
    path: str


class LaunchRefused(AccessDenied):
    """A launch token that cannot be used (unknown, used, expired, foreign)."""


async def create_launch_token(
    auth: AuthServer,
    ws: WebSession,
    *,
    app: str,
    public_addr: str,
    path: str,
    state: str,
    client_ip: str = "",
) -> str:
    """Mint the app certificate and a single-use launch token bound to ``state``."""
    if not well_formed(state):
        raise BadParameter("the launch state is missing or malformed")
    now = auth.clock()
    left = ws.remaining(now)
    if left < MIN_APP_TTL:
        raise AccessDenied("your sign-in has expired", hint="sign in again")
    session_id = str(uuid.uuid4())
    key = generate_private_key()
    issued = await auth.generate_user_cert(
        public_key=public_key_to_pem(key.public_key()),
        username=ws.user,
        ttl=left,
        route_to_app=RouteToApp(
            name=app,
            public_addr=public_addr,
            cluster_name=auth.cluster_name,
            session_id=session_id,
        ),
        login_ip=client_ip,
    )
    token = new_secret()
    expires = min(now + LAUNCH_TTL, ws.expires)
    record = {
        "user": ws.user,
        "app": app,
        "session_id": session_id,
        "cert": issued.cert_pem.decode(),
        "path": path,
        "state": digest(state),
        "web_session": ws.key,
        "expires": _iso(expires),
    }
    await auth.backend.put(
        Item(
            key=_LAUNCH + digest(token),
            value=json.dumps(record).encode(),
            expires=expires + timedelta(minutes=5),  # a late use is told "expired"
        )
    )
    return token


async def consume_launch_token(
    auth: AuthServer, token: str, *, app: str, state: str
) -> LaunchGrant:
    """Use a launch token once: checks expiry, app and state; creates the app session."""
    if not well_formed(token):
        raise LaunchRefused("the sign-in link is malformed")
    key = _LAUNCH + digest(token)
    loaded = await _load(auth, key)
    if loaded is None:
        raise LaunchRefused("the sign-in link is unknown or was already used")
    try:
        await auth.backend.delete(key)  # single use: of two concurrent uses one deletes it
    except NotFound:
        raise LaunchRefused("the sign-in link was already used") from None
    _, data = loaded
    now = auth.clock()
    expires = _time(data.get("expires"))
    if expires is None or expires <= now:
        raise LaunchRefused("the sign-in link expired (it is valid for 60 seconds)")
    if data.get("app") != app:
        raise LaunchRefused(f'the sign-in link is for application "{data.get("app")}", not "{app}"')
    if not state or not hmac.compare_digest(digest(state), str(data.get("state", ""))):
        raise LaunchRefused(
            "the sign-in link was not started in this browser (state mismatch)",
        )
    ws_key = str(data.get("web_session", ""))
    if await _load(auth, _WEB + ws_key) is None:
        raise LaunchRefused("the sign-in that created this link has ended")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(str(data["cert"]).encode())
    cert_expires = cert.not_valid_after_utc
    secret = new_secret()
    session = BrowserAppSession(
        key=digest(secret),
        session_id=str(data.get("session_id", "")),
        user=str(data.get("user", "")),
        app=app,
        cert_pem=str(data["cert"]),
        expires=cert_expires,
        web_session=ws_key,
    )
    value = json.dumps(
        {
            "session_id": session.session_id,
            "user": session.user,
            "app": app,
            "cert": session.cert_pem,
            "expires": _iso(cert_expires),
            "web_session": ws_key,
        }
    ).encode()
    await auth.backend.put_many(
        [
            Item(key=_APPS + session.key, value=value, expires=cert_expires),
            Item(key=f"{_WEB}{ws_key}/apps/{session.key}", value=b"{}", expires=cert_expires),
        ]
    )
    return LaunchGrant(cookie=secret, session=session, path=str(data.get("path") or "/"))


# ---------------------------------------------------------------------- app sessions
@dataclass(frozen=True)
class BrowserAppSession:
    """An app host's browser session: the certificate its cookie stands for."""

    key: str
    session_id: str
    user: str
    app: str
    cert_pem: str
    expires: datetime
    web_session: str


async def get_app_session(auth: AuthServer, secret: str) -> BrowserAppSession | None:
    """The live app session for a cookie value, or None."""
    if not well_formed(secret):
        return None
    key = digest(secret)
    loaded = await _load(auth, _APPS + key)
    if loaded is None:
        return None
    _, data = loaded
    expires = _time(data.get("expires"))
    if expires is None or expires <= auth.clock() or not data.get("cert"):
        return None
    return BrowserAppSession(
        key=key,
        session_id=str(data.get("session_id", "")),
        user=str(data.get("user", "")),
        app=str(data.get("app", "")),
        cert_pem=str(data["cert"]),
        expires=expires,
        web_session=str(data.get("web_session", "")),
    )


async def delete_app_session(auth: AuthServer, secret: str) -> BrowserAppSession | None:
    """Sign out of one app; returns the deleted session (None when there was none)."""
    session = await get_app_session(auth, secret)
    if session is None:
        return None
    for key in (_APPS + session.key, f"{_WEB}{session.web_session}/apps/{session.key}"):
        with contextlib.suppress(NotFound):
            await auth.backend.delete(key)
    return session


def parse_cookies(header: str) -> dict[str, str]:
    """``name=value`` pairs of a ``Cookie`` header (the first of a repeated name wins)."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip().strip('"')
    return out


def set_cookie(name: str, value: str, *, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value for a ``__Host-`` cookie: Secure, HttpOnly, SameSite=Lax, Path=/."""
    parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def clear_cookie(name: str) -> str:
    """A ``Set-Cookie`` value that removes ``name``."""
    return set_cookie(name, "", max_age=0)
