"""Web endpoints agents use before they have credentials: ``POST /webapi/host/credentials``."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from jumpgate.core.auth.methods_bot import register_bot_join_routes
from jumpgate.core.errors import JumpgateError

log = logging.getLogger(__name__)


def register_agent_routes(app: web.Application, auth: Any) -> None:
    """Add the join endpoint (the auth service runs in this process)."""

    async def host_credentials(request: web.Request) -> web.Response:
        from jumpgate.core.auth.hosts import join_host

        peer = request.transport.get_extra_info("peername") if request.transport else None
        addr = f"{peer[0]}:{peer[1]}" if peer else ""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response(
                {"error": {"message": "request body must be JSON"}}, status=400
            )
        if not isinstance(body, dict):
            return web.json_response(
                {"error": {"message": "request body must be an object"}}, status=400
            )
        try:
            result = await join_host(
                auth,
                token=str(body.get("token", "")),
                host_id=str(body.get("host_id", "")),
                node_name=str(body.get("node_name", "")),
                role=str(body.get("role", "")),
                public_key=str(body.get("public_key", "")).encode(),
                client_addr=addr,
            )
        except JumpgateError as exc:
            status = 403 if exc.kind == "access_denied" else 400
            log.warning("join refused for %s: %s", addr, exc.message)
            return web.Response(
                status=status,
                text=json.dumps({"error": exc.to_dict()}),
                content_type="application/json",
            )
        return web.json_response(result)

    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/webapi/host/credentials", host_credentials)
    register_bot_join_routes(app, auth)
