"""Auth API methods for agents and database access."""

from __future__ import annotations

from typing import Any

from jumpgate.core.auth import hosts
from jumpgate.core.auth.api import ApiContext, rpc
from jumpgate.core.errors import AccessDenied, BadParameter

#: Event types an agent may write into the audit log.
AGENT_EVENTS = ("db.session.", "app.session.")


def _require_system(ctx: ApiContext, *roles: str) -> None:
    if ctx.identity.system_role not in roles:
        raise AccessDenied(
            f"only the {'/'.join(roles)} service may call this (caller: {ctx.identity.username})"
        )


@rpc("db.list")
async def db_list(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Databases the caller may see, with the database users and names it may use."""
    if ctx.identity.system_role:
        ctx.require("db_server", "list")
    return await hosts.list_databases(ctx.auth, ctx.identity)


@rpc("db.heartbeat")
async def db_heartbeat(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """A Database Service agent announces the databases it serves."""
    _require_system(ctx, "Db")
    dbs = params.get("databases")
    if not isinstance(dbs, list):
        raise BadParameter("databases must be a list of db resources")
    await hosts.heartbeat_databases(
        ctx.auth,
        host_id=ctx.identity.username,
        hostname=str(params.get("hostname") or ""),
        databases=dbs,
        ttl=float(params.get("ttl") or 90),
    )
    return {}


@rpc("db.session_start")
async def db_session_start(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Authorise a database session (RBAC, locks, certificate checks) and audit the decision."""
    _require_system(ctx, "Db")
    return await hosts.start_db_session(
        ctx.auth,
        agent=ctx.identity,
        identity_cert=str(params.get("identity_cert", "")).encode(),
        db=str(params.get("db", "")),
        db_user=str(params.get("db_user", "")),
        db_name=str(params.get("db_name", "")),
        client_addr=str(params.get("client_addr", "")),
        session_id=str(params.get("session_id", "")),
        public_key=str(params.get("public_key", "")).encode(),
    )


@rpc("db.resources")
async def db_resources(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Dynamic ``db`` resources (``tctl create``) for Database Service agents to match."""
    _require_system(ctx, "Db")
    from jumpgate.core.resources import Database, resource_to_dict

    return [resource_to_dict(d) for d in await ctx.auth.store.list_as(Database)]


@rpc("audit.emit")
async def audit_emit(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Agents and proxies record session events."""
    _require_system(ctx, "Db", "App", "Proxy")
    events = params.get("events")
    if not isinstance(events, list):
        raise BadParameter("events must be a list")
    for ev in events:
        if not isinstance(ev, dict) or not str(ev.get("event", "")).startswith(AGENT_EVENTS):
            raise BadParameter(f"agents may only record session events, not {ev!r:.80}")
        fields = {
            k: v
            for k, v in ev.items()
            if k not in ("event", "success", "code", "time", "uid", "cluster_name", "ei")
        }
        fields["server_id"] = ctx.identity.username
        ctx.auth.audit.emit(str(ev["event"]), success=bool(ev.get("success", True)), **fields)
    return {}


@rpc("locks.watch")
async def locks_watch(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """The locks in force; waits up to ``timeout`` seconds for a change past ``generation``."""
    if not ctx.identity.system_role:
        ctx.require("lock", "list")
    generation = int(params.get("generation", -1))
    timeout = min(float(params.get("timeout", 25)), 55.0)
    gen = await ctx.auth.wait_lock_change(generation, timeout)
    return {"generation": gen, "locks": hosts.lock_snapshot(ctx.auth)}
