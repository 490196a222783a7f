"""Network front ends of Machine ID: the auth API methods and the proxy's join route.

``bots.renew`` and ``bots.output_cert`` are called with the bot's renewable
certificate as the TLS client certificate (directly on the auth port, or
through the proxy's web port with ALPN ``teleport-auth@<cluster>``);
``POST /webapi/bots/join`` is served by the proxy when the auth service runs in
the same process. The rules live in :mod:`.botjoin`.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import timedelta
from typing import Any

from aiohttp import web

from jumpgate.core.auth import botjoin
from jumpgate.core.auth.api import ApiContext, rpc
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import BadParameter, JumpgateError
from jumpgate.core.tlsca import RouteToApp, RouteToDatabase

log = logging.getLogger(__name__)

_DB_KEYS = ("service_name", "protocol", "username", "database")
_APP_KEYS = ("name", "public_addr", "cluster_name")


def _public_key(params: dict[str, Any]) -> bytes:
    key = params.get("public_key")
    if not isinstance(key, str) or not key:
        raise BadParameter("public_key (PEM SubjectPublicKeyInfo) is required")
    return key.encode()


def _ttl(params: dict[str, Any]) -> timedelta | None:
    v = params.get("ttl")
    if v in (None, "", 0):
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise BadParameter("ttl must be a positive number of seconds")
    return timedelta(seconds=min(v, 10 * 365 * 86400))


def _route(params: dict[str, Any], key: str, allowed: tuple[str, ...]) -> dict[str, str] | None:
    v = params.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise BadParameter(f"{key} must be an object or null")
    unknown = sorted(set(v) - set(allowed))
    if unknown:
        raise BadParameter(
            f"{key} has unknown field(s) {', '.join(unknown)}",
            hint=f"allowed: {', '.join(allowed)}",
        )
    if not all(isinstance(x, str) for x in v.values()):
        raise BadParameter(f"the fields of {key} must be strings")
    return {k: str(x) for k, x in v.items()}


@rpc("bots.renew")
async def bots_renew(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Trade the caller's renewable bot certificate for the next generation."""
    return await botjoin.renew_bot(
        ctx.auth,
        identity=ctx.identity,
        presented_cert_der=ctx.peer_der,
        public_key=_public_key(params),
        ttl=_ttl(params),
    )


@rpc("bots.output_cert")
async def bots_output_cert(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """A non-renewable certificate impersonating the caller bot's roles (or a subset)."""
    roles = params.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise BadParameter("roles must be a list of role names")
    db = _route(params, "route_to_database", _DB_KEYS)
    app = _route(params, "route_to_app", _APP_KEYS)
    route_db = None
    if db is not None:
        route_db = RouteToDatabase(
            service_name=db.get("service_name", ""),
            protocol=db.get("protocol", ""),
            username=db.get("username", ""),
            database=db.get("database", ""),
        )
    route_app = None
    if app is not None:
        route_app = RouteToApp(
            name=app.get("name", ""),
            public_addr=app.get("public_addr", ""),
            cluster_name=app.get("cluster_name", ""),
        )
    return await botjoin.issue_output_cert(
        ctx.auth,
        identity=ctx.identity,
        public_key=_public_key(params),
        ttl=_ttl(params),
        roles=roles,
        route_to_database=route_db,
        route_to_app=route_app,
    )


# ----------------------------------------------------------------------------- proxy route
def _error(status: int, exc: JumpgateError | str) -> web.Response:
    err = exc.to_dict() if isinstance(exc, JumpgateError) else {"message": exc}
    return web.Response(
        status=status, text=json.dumps({"error": err}), content_type="application/json"
    )


def register_bot_join_routes(app: web.Application, auth: AuthServer) -> None:
    """``POST /webapi/bots/join`` (and ``/v1/…``) on the proxy's web app (auth in-process)."""

    async def bots_join(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = f"{peer[0]}:{peer[1]}" if peer else ""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "request body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        method = body.get("join_method") or "token"
        if method != "token":
            return _error(400, f"join method {method!r} is not supported (use token)")
        if not isinstance(body.get("token"), str):
            return _error(400, "token is required (a string)")
        try:
            result = await botjoin.join_bot(
                auth,
                token=body["token"],
                public_key=_public_key(body),
                ttl=_ttl(body),
                client_addr=addr,
            )
        except JumpgateError as exc:
            status = {"access_denied": 403, "bad_parameter": 400}.get(exc.kind, 500)
            log.warning("bot join refused for %s: %s", addr, exc.message)
            return _error(status, exc)
        return web.json_response(result)

    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/webapi/bots/join", bots_join)
