"""The auth service's side of application access: heartbeats, listings, session decisions.

Every app session is decided here, with the one access checker: the App
Service sends the user's certificate and the app it asked for, and gets back a
decision and, when allowed, the session's signed JWT and the user's traits
(for ``rewrite.headers`` templates). The decision is audited as
``app.session.start``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from jumpgate.core.app.jwt import app_claims, sign_es256
from jumpgate.core.auth.hosts import verified_user_identity
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import AccessDenied, JumpgateError
from jumpgate.core.resources import AppServer, parse_resource
from jumpgate.core.tlsca import CAType, Identity

log = logging.getLogger(__name__)


def proxy_public_host(auth: AuthServer) -> str:
    """The host part of the proxy's public address (apps live on its subdomains)."""
    addr = auth.proxy_public_addr or ""
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr


def default_public_addr(auth: AuthServer, name: str, public_addr: str = "") -> str:
    """``public_addr`` when set, else ``<name>.<proxy public host>``."""
    if public_addr:
        return public_addr
    host = proxy_public_host(auth)
    return f"{name}.{host}" if host else name


def addr_host(addr: str) -> str:
    """The lower-case host part of ``host[:port]`` (brackets of IPv6 literals removed)."""
    addr = addr.strip().lower()
    if addr.startswith("["):
        return addr[1:].split("]", 1)[0]
    return (addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr).rstrip(".")


def public_addr_conflict(name: str, addr: str, proxy_host: str, claimed: dict[str, str]) -> str:
    """Why app ``name`` may not use ``addr`` as its public address ("" when it may).

    Refused: the proxy's own host, ``<other app>.<proxy host>`` (those names belong to
    the apps so called) and a host another app already claims (``claimed``: host → app).
    """
    host = addr_host(addr)
    proxy_host = proxy_host.lower()
    if not host:
        return ""
    if proxy_host and host == proxy_host:
        return f"{host} is the proxy's own address"
    label = host[: -len(proxy_host) - 1] if proxy_host and host.endswith("." + proxy_host) else ""
    if label and "." not in label and label != name.lower():
        return f'{host} is the address of the app "{label}"'
    owner = claimed.get(host)
    if owner and owner != name:
        return f'{host} is already the public address of the app "{owner}"'
    return ""


async def heartbeat_apps(
    auth: AuthServer, *, host_id: str, hostname: str, apps: list[dict[str, Any]], ttl: float
) -> list[str]:
    """Record the apps an agent serves as ``app_server`` resources that expire with the TTL.

    A ``public_addr`` that would take over another app's host (or the proxy's own) is
    replaced by the default ``<name>.<proxy host>``; returns why, one line per app.
    """
    expires = auth.clock() + timedelta(seconds=max(5.0, min(ttl, 3600.0)))
    proxy_host = proxy_public_host(auth)
    claimed: dict[str, str] = {}
    for srv in await app_servers(auth):
        claimed.setdefault(addr_host(srv.spec.app.spec.public_addr), srv.spec.app.metadata.name)
    refused: list[str] = []
    for app in apps:
        meta = app.get("metadata") or {}
        spec = dict(app.get("spec") or {})
        name = str(meta.get("name", ""))
        wanted = str(spec.get("public_addr") or "")
        why = public_addr_conflict(name, wanted, proxy_host, claimed) if wanted else ""
        if why:
            refused.append(f"app {name}: public_addr {wanted} refused: {why}")
            log.warning("app: %s (agent %s); using the default address", refused[-1], host_id)
            wanted = ""
        spec["public_addr"] = default_public_addr(auth, name, wanted)
        claimed.setdefault(addr_host(spec["public_addr"]), name)
        res = parse_resource(
            {
                "kind": "app_server",
                "version": "v3",
                "metadata": {
                    "name": meta.get("name", ""),
                    "labels": meta.get("labels", {}),
                    "expires": expires.isoformat(),
                },
                "spec": {
                    "host_id": host_id,
                    "hostname": hostname,
                    "app": {**app, "spec": spec},
                    "version": _version(),
                },
            }
        )
        await auth.store.put(res, host_id=host_id)
    return refused


def _version() -> str:
    from jumpgate.core.version import VERSION

    return VERSION


async def app_servers(auth: AuthServer) -> list[AppServer]:
    """Live ``app_server`` heartbeats."""
    return await auth.store.list_as(AppServer)


def app_entry(srv: AppServer) -> dict[str, Any]:
    """What listings show of one served app."""
    app = srv.spec.app
    return {
        "name": app.metadata.name,
        "description": app.metadata.description,
        "uri": app.spec.uri,
        "public_addr": app.spec.public_addr,
        "labels": app.all_labels(),
        "insecure_skip_verify": app.spec.insecure_skip_verify,
        "hostnames": [srv.spec.hostname],
        "host_ids": [srv.spec.host_id],
    }


async def list_apps(auth: AuthServer, identity: Identity | None) -> list[dict[str, Any]]:
    """Apps ``identity`` may open (every app for ``None``), one entry per name."""
    checker = auth.checker_for_identity(identity) if identity is not None else None
    seen: dict[str, dict[str, Any]] = {}
    for srv in await app_servers(auth):
        app = srv.spec.app
        name = app.metadata.name
        if name in seen:
            seen[name]["hostnames"].append(srv.spec.hostname)
            seen[name]["host_ids"].append(srv.spec.host_id)
            continue
        if (
            checker is not None
            and not checker.check_app(name=name, labels=app.all_labels()).allowed
        ):
            continue
        seen[name] = app_entry(srv)
    return sorted(seen.values(), key=lambda a: a["name"])


async def start_app_session(
    auth: AuthServer,
    *,
    agent: Identity,
    identity_cert: bytes,
    app: str,
    client_addr: str,
    session_id: str,
) -> dict[str, Any]:
    """Decide whether an app session may start; audit it; sign its JWT."""
    base: dict[str, Any] = {
        "sid": session_id,
        "app_name": app,
        "addr": client_addr,
        "server_id": agent.username,
    }
    identity: Identity | None = None
    try:
        identity = verified_user_identity(auth, identity_cert)
        base["user"] = identity.username
        base["roles"] = list(identity.groups)
        if identity.bot_name:
            base["bot_name"] = identity.bot_name
        route = identity.route_to_app
        if route is None:
            raise AccessDenied(
                "the certificate is not for application access",
                hint=f"get an application certificate first: tsh apps login {app}",
            )
        if route.name != app:
            raise AccessDenied(
                f'the certificate is for application "{route.name}", not "{app}"',
                hint=f"tsh apps login {app}",
            )
        auth.check_lock(identity)
        # only the calling agent's own record: another agent announcing the same
        # name (with other labels or another uri) must not decide this session
        servers = [
            s
            for s in await app_servers(auth)
            if s.spec.app.metadata.name == app and s.spec.host_id == agent.username
        ]
        if not servers:
            raise AccessDenied(
                f'application "{app}" is not registered by this App Service ({agent.username})',
                hint="the App Service announces its apps every 20 s; check that it is running",
            )
        res = servers[0].spec.app
        base["app_uri"] = res.spec.uri
        base["app_public_addr"] = res.spec.public_addr
        decision = auth.checker_for_identity(identity).check_app(name=app, labels=res.all_labels())
        if not decision.allowed:
            raise AccessDenied(f"access to app {app} denied: {decision.reason}")
    except JumpgateError as exc:
        message = exc.message
        if not isinstance(exc, AccessDenied):
            message = f"the certificate was refused: {message}"
        auth.audit.emit("app.session.start", success=False, error=message, **base)
        return {"allowed": False, "reason": message, "hint": exc.hint or ""}
    except ValueError as exc:
        auth.audit.emit("app.session.start", success=False, error=str(exc), **base)
        return {"allowed": False, "reason": f"unusable certificate: {exc}", "hint": ""}
    assert identity is not None and identity.expires is not None
    rewrite = res.spec.rewrite
    key = auth.cas[CAType.JWT].key
    assert key is not None
    traits = {k: list(v) for k, v in identity.traits.items()}
    token = sign_es256(
        app_claims(
            username=identity.username,
            roles=identity.groups,
            traits=traits,
            issuer=auth.cluster_name,
            audience=res.spec.uri,
            now=auth.clock(),
            expires=identity.expires,
            jwt_claims=(rewrite.jwt_claims if rewrite else "") or "roles-and-traits",
        ),
        key,
    )
    auth.audit.emit("app.session.start", success=True, **base)
    return {
        "allowed": True,
        "reason": "",
        "jwt": token,
        "user": identity.username,
        "roles": list(identity.groups),
        "traits": traits,
        "expires": identity.expires.isoformat(),
    }
