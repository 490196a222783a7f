"""Auth API methods for application access (``app.*`` for agents, ``apps.list`` for clients).

Importing this module registers the methods (``teleport start`` does it next
to the other method modules).
"""

from __future__ import annotations

from typing import Any

from jumpgate.core.app import auth as appauth
from jumpgate.core.auth.api import ApiContext, rpc
from jumpgate.core.errors import AccessDenied, BadParameter


def _require_app_service(ctx: ApiContext) -> None:
    if ctx.identity.system_role != "App":
        raise AccessDenied(f"only the App Service may call this (caller: {ctx.identity.username})")


@rpc("apps.list")
async def apps_list(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Apps the caller may open (``tsh apps ls``); a host identity needs ``list`` on app_server."""
    if ctx.identity.system_role:
        ctx.require("app_server", "list")
        return await appauth.list_apps(ctx.auth, None)
    return await appauth.list_apps(ctx.auth, ctx.identity)


@rpc("app.heartbeat")
async def app_heartbeat(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """An App Service agent announces the apps it serves."""
    _require_app_service(ctx)
    apps = params.get("apps")
    if not isinstance(apps, list) or not all(isinstance(a, dict) for a in apps):
        raise BadParameter("apps must be a list of app resources")
    refused = await appauth.heartbeat_apps(
        ctx.auth,
        host_id=ctx.identity.username,
        hostname=str(params.get("hostname") or ""),
        apps=apps,
        ttl=float(params.get("ttl") or 90),
    )
    return {"refused": refused}


@rpc("app.session_start")
async def app_session_start(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Authorise an app session (certificate, RBAC, locks), audit it, sign its JWT."""
    _require_app_service(ctx)
    return await appauth.start_app_session(
        ctx.auth,
        agent=ctx.identity,
        identity_cert=str(params.get("identity_cert", "")).encode(),
        app=str(params.get("app", "")),
        client_addr=str(params.get("client_addr", "")),
        session_id=str(params.get("session_id", "")),
    )


@rpc("app.resources")
async def app_resources(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Dynamic ``app`` resources (``tctl create``) for App Service agents to match."""
    _require_app_service(ctx)
    from jumpgate.core.resources import App, resource_to_dict

    return [resource_to_dict(a) for a in await ctx.auth.store.list_as(App)]
