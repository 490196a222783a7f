"""The auth API's methods. Each one names the RBAC rule it needs."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from jumpgate.core.auth import bots
from jumpgate.core.auth.api import ApiContext, rpc, version
from jumpgate.core.auth.server import BOT_GENERATION_LABEL, BOT_LABEL
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.resources import (
    Bot,
    Lock,
    User,
    canonical_kind,
    parse_resource,
    resource_to_dict,
)
from jumpgate.core.tlsca import CAType, RouteToApp, RouteToDatabase

#: Kinds that ``tctl create`` may write directly.
CREATABLE = {"role", "user", "token", "db", "app", "lock", "bot"}
#: Kinds never written through ``tctl create``.
READ_ONLY = {"cert_authority", "cluster_name", "db_server", "app_server", "cluster_auth_preference"}


def _ttl(params: dict[str, Any], key: str = "ttl") -> timedelta | None:
    v = params.get(key)
    if v in (None, "", 0):
        return None
    return timedelta(seconds=float(v))


def _strs(params: dict[str, Any], key: str) -> list[str]:
    v = params.get(key) or []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadParameter(f"{key} must be a list of strings")
    return v


@rpc("status")
async def status(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """Cluster name, version, CA summary and the CA pin."""
    auth = ctx.auth
    cas = []
    for ca_type in CAType:
        ca = auth.cas[ca_type]
        cas.append(
            {
                "type": ca_type.value,
                "not_after": ca.cert.not_valid_after_utc,
                "keys": len(ca.trusted_certs),
                "rotation": "never updated",
            }
        )
    return {
        "cluster_name": auth.cluster_name,
        "version": version(),
        "cas": cas,
        "ca_pin": auth.ca_pin(),
        "caller": {"user": ctx.identity.username, "roles": list(ctx.identity.groups)},
    }


# ---------------------------------------------------------------- resources
def _visible(ctx: ApiContext, kind: str) -> None:
    ctx.require(kind, "list")


@rpc("resources.get")
async def get_resources(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``tctl get KIND[/NAME]``: resources in Teleport's shape."""
    kind = canonical_kind(str(params.get("kind", "")))
    name = params.get("name") or ""
    with_secrets = bool(params.get("with_secrets"))
    ctx.require(kind, "read" if name else "list")
    if with_secrets and not ctx.is_admin:
        raise AccessDenied(
            "--with-secrets needs the local admin identity (run tctl on the auth host)"
        )
    if name:
        items = [await ctx.auth.store.get(kind, name)]
    else:
        items = await ctx.auth.store.list(kind)
    return [resource_to_dict(r, with_secrets=with_secrets) for r in items]


@rpc("resources.create")
async def create_resources(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, str]]:
    """``tctl create [-f]``: several documents, each created or (with force) updated."""
    docs = params.get("resources")
    force = bool(params.get("force"))
    if not isinstance(docs, list):
        raise BadParameter("resources must be a list")
    parsed = [parse_resource(d) for d in docs]
    for res in parsed:
        if res.kind in READ_ONLY:
            raise BadParameter(f"resources of kind {res.kind!r} cannot be created with tctl create")
        ctx.require(res.kind, "update" if force else "create")
    out = []
    for res in parsed:
        existed = await ctx.auth.store.exists(res.kind, res.metadata.name)
        if existed and not force:
            from jumpgate.core.errors import AlreadyExists

            raise AlreadyExists(
                f'{res.kind} "{res.metadata.name}" already exists',
                hint="use tctl create -f to overwrite it",
            )
        if isinstance(res, Bot) and not existed:
            spec = res.spec
            created = await bots.create_bot(
                ctx.auth,
                name=res.metadata.name,
                roles=list(spec.roles),
                logins=[v for t in spec.traits if t.name == "logins" for v in t.values],
                creator=ctx.caller,
            )
            out.append(
                {
                    "kind": "bot",
                    "name": res.metadata.name,
                    "action": "created",
                    "token": created.token_id,
                }
            )
            continue
        if isinstance(res, User):
            await ctx.auth._check_roles_exist(list(res.spec.roles))
        await ctx.auth.store.put(res)
        action = "updated" if existed else "created"
        event = {"role": "role.", "user": "user."}.get(res.kind)
        if event:
            ctx.auth.audit.emit(
                f"{event}{'updated' if res.kind == 'role' else 'update'}"
                if existed
                else f"{event}{'created' if res.kind == 'role' else 'create'}",
                user=ctx.caller,
                name=res.metadata.name,
            )
        else:
            ctx.auth.audit.emit(
                f"resource.{'update' if existed else 'create'}",
                user=ctx.caller,
                kind=res.kind,
                name=res.metadata.name,
            )
        out.append({"kind": res.kind, "name": res.metadata.name, "action": action})
    return out


@rpc("resources.delete")
async def delete_resource(ctx: ApiContext, params: dict[str, Any]) -> dict[str, str]:
    """``tctl rm KIND/NAME``."""
    kind = canonical_kind(str(params.get("kind", "")))
    name = str(params.get("name") or "")
    if not name:
        raise BadParameter("rm needs KIND/NAME", hint="for example: tctl rm role/devs")
    ctx.require(kind, "delete")
    if kind in ("cert_authority", "cluster_name", "cluster_auth_preference"):
        raise BadParameter(f"{kind} cannot be deleted")
    if kind == "user":
        await ctx.auth.delete_user(name, deleter=ctx.caller)
    elif kind == "bot":
        await bots.delete_bot(ctx.auth, name, deleter=ctx.caller)
    elif kind == "role":
        users = [
            u.metadata.name for u in await ctx.auth.store.list_as(User) if name in u.spec.roles
        ]
        if users:
            raise BadParameter(
                f'role "{name}" is still assigned to: {", ".join(users)}',
                hint="remove it from those users first (tctl users update NAME --set-roles ...)",
            )
        await ctx.auth.store.delete(kind, name)
        ctx.auth.audit.emit("role.deleted", user=ctx.caller, name=name)
    else:
        await ctx.auth.store.delete(kind, name)
        event = (
            "lock.deleted"
            if kind == "lock"
            else "join_token.delete"
            if kind == "token"
            else "resource.delete"
        )
        ctx.auth.audit.emit(event, user=ctx.caller, kind=kind, name=name)
    return {"kind": kind, "name": name}


# ---------------------------------------------------------------- users
def _user_traits(params: dict[str, Any]) -> dict[str, list[str]]:
    traits: dict[str, list[str]] = {}
    for key in (
        "logins",
        "db_users",
        "db_names",
        "db_roles",
        "windows_logins",
        "kubernetes_users",
        "kubernetes_groups",
    ):
        if params.get(key) is not None:
            traits[key] = _strs(params, key)
    return traits


@rpc("users.add", kind="user", verb="create")
async def users_add(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl users add``: the user and its invite URL."""
    name = str(params.get("name", ""))
    roles = _strs(params, "roles")
    if not roles:
        raise BadParameter("at least one role is required", hint="pass --roles=access")
    user, token = await ctx.auth.create_user(
        name=name,
        roles=roles,
        traits={k: v for k, v in _user_traits(params).items() if v},
        invite_ttl=_ttl(params),
        creator=ctx.caller,
    )
    return {
        "user": resource_to_dict(user),
        "token": token,
        "url": ctx.auth.invite_url(token),
        "ttl": (_ttl(params) or timedelta(hours=1)).total_seconds(),
    }


@rpc("users.update", kind="user", verb="update")
async def users_update(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl users update NAME --set-…``."""
    name = str(params.get("name", ""))
    roles = _strs(params, "roles") if params.get("roles") is not None else None
    user = await ctx.auth.update_user(
        name, roles=roles, traits=_user_traits(params), updater=ctx.caller
    )
    return resource_to_dict(user)


@rpc("users.reset", kind="user", verb="update")
async def users_reset(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl users reset NAME``: a new invite link; the old password stops working."""
    name = str(params.get("name", ""))
    await ctx.auth.store.get("user", name)
    with contextlib.suppress(NotFound):
        await ctx.auth.backend.delete(f"/web/users/{name}/pwd")
    ttl = _ttl(params) or timedelta(hours=8)
    await ctx.auth.revoke_user_tokens(name)  # earlier links stop working
    token = await ctx.auth.create_invite(name, ttl=ttl)
    ctx.auth.audit.emit("user.update", user=ctx.caller, name=name, action="reset")
    return {"token": token, "url": ctx.auth.invite_url(token), "ttl": ttl.total_seconds()}


# ---------------------------------------------------------------- bots
@rpc("bots.add", kind="bot", verb="create")
async def bots_add(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl bots add``."""
    created = await bots.create_bot(
        ctx.auth,
        name=str(params.get("name", "")),
        roles=_strs(params, "roles"),
        logins=_strs(params, "logins"),
        token=str(params.get("token") or ""),
        ttl=_ttl(params),
        creator=ctx.caller,
    )
    return {
        "user_name": created.user_name,
        "role_name": created.role_name,
        "token_id": created.token_id,
        "token_ttl": int(created.token_ttl.total_seconds() * 1e9),
        "ca_pins": [ctx.auth.ca_pin()],
        "proxy_addr": ctx.auth.proxy_public_addr,
    }


@rpc("bots.update", kind="bot", verb="update")
async def bots_update(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl bots update``."""
    bot = await bots.update_bot(
        ctx.auth,
        str(params.get("name", "")),
        set_roles=_strs(params, "set_roles") if params.get("set_roles") is not None else None,
        add_roles=_strs(params, "add_roles"),
        set_logins=_strs(params, "set_logins") if params.get("set_logins") is not None else None,
        add_logins=_strs(params, "add_logins"),
        updater=ctx.caller,
    )
    return resource_to_dict(bot)


@rpc("bots.list", kind="bot", verb="list")
async def bots_list(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``tctl bots ls``: each bot with its user's generation and lock state."""
    out = []
    users = ctx.auth.store.cached("user")
    for bot in await ctx.auth.store.list("bot"):
        data = resource_to_dict(bot)
        user = users.get(bots.bot_user_name(bot.metadata.name))
        labels = user.metadata.labels if user else {}
        probe_user = bots.bot_user_name(bot.metadata.name)
        lock = next(
            (
                lk
                for lk in ctx.auth.store.cached_as(Lock).values()
                if not lk.is_expired(ctx.auth.clock()) and lk.spec.target.user == probe_user
            ),
            None,
        )
        data["status"] = {
            **data.get("status", {}),
            "generation": int(labels.get(BOT_GENERATION_LABEL, "0") or 0),
            "last_renewal": labels.get("teleport.internal/bot-last-renewal", ""),
            "locked": lock is not None,
            "lock": lock.metadata.name if lock else "",
            "is_bot": bool(labels.get(BOT_LABEL)),
        }
        out.append(data)
    return out


@rpc("bots.delete", kind="bot", verb="delete")
async def bots_delete(ctx: ApiContext, params: dict[str, Any]) -> dict[str, str]:
    """``tctl bots rm``."""
    name = str(params.get("name", ""))
    await bots.delete_bot(ctx.auth, name, deleter=ctx.caller)
    return {"name": name}


# ---------------------------------------------------------------- tokens
@rpc("tokens.add", kind="token", verb="create")
async def tokens_add(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl tokens add``."""
    res = await ctx.auth.create_token(
        roles=_strs(params, "roles"),
        ttl=_ttl(params),
        value=str(params.get("value") or ""),
        labels=params.get("labels") or {},
        bot_name=str(params.get("bot_name") or ""),
        creator=ctx.caller,
    )
    return {
        "token": resource_to_dict(res),
        "ca_pins": [ctx.auth.ca_pin()],
        "proxy_addr": ctx.auth.proxy_public_addr,
    }


# ---------------------------------------------------------------- certificates
@rpc("certs.user")
async def certs_user(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """A user certificate: for oneself, or for another user with the rights to impersonate."""
    username = str(params.get("username") or ctx.identity.username)
    if ctx.identity.renewable or ctx.identity.bot_name:
        raise AccessDenied(
            "bots get certificates through their renewal and outputs, not certs.user",
            hint="configure a tbot output instead",
        )
    if ctx.identity.disallow_reissue:
        raise AccessDenied("this certificate may not be used to request more certificates")
    if not ctx.is_admin and username != ctx.identity.username:
        decision = ctx.auth.checker_for_identity(ctx.identity).check_impersonate(
            user=username, roles=_strs(params, "roles")
        )
        if not decision.allowed:
            raise AccessDenied(
                f"{ctx.identity.username} may not impersonate {username}: {decision.reason}"
            )
    db = params.get("route_to_database")
    app = params.get("route_to_app")
    issued = await ctx.auth.generate_user_cert(
        public_key=str(params.get("public_key", "")).encode(),
        username=username,
        ttl=_ttl(params),
        route_to_database=RouteToDatabase(**db) if db else None,
        route_to_app=RouteToApp(**app) if app else None,
        roles=_strs(params, "roles") or None,
        requester=ctx.identity,
        login_ip=ctx.client_addr.rsplit(":", 1)[0],
        strict_ttl=bool(params.get("strict_ttl")),
    )
    wire = issued.to_wire()
    if params.get("cas") is False:  # the caller already holds the cluster's CAs
        return {"cert": wire["cert"]}
    return wire


@rpc("certs.db_server")
async def certs_db_server(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl auth sign --format=db``: a server certificate from the db CA."""
    if not ctx.is_admin:
        decision = ctx.auth.checker_for_identity(ctx.identity).check_impersonate(
            user="Db", roles=["Db"]
        )
        if not decision.allowed:
            raise AccessDenied(
                "generating database certificates needs permission to impersonate the system role Db",
                hint='add to one of your roles: allow: {impersonate: {users: ["Db"], roles: ["Db"]}}',
            )
    ttl = _ttl(params) or timedelta(hours=12)
    issued = ctx.auth.generate_database_server_cert(
        public_key=str(params.get("public_key", "")).encode(),
        hosts=_strs(params, "hosts"),
        ttl=ttl,
        requester=ctx.caller,
    )
    return issued.to_wire()


@rpc("cas.export")
async def cas_export(ctx: ApiContext, params: dict[str, Any]) -> dict[str, str]:
    """Public CA certificates of one type (``tctl auth export``)."""
    ca_type = str(params.get("type", "host")).replace("-", "_")
    try:
        t = CAType(ca_type)
    except ValueError:
        raise BadParameter(f"unknown CA type {params.get('type')!r}") from None
    return {
        "type": t.value,
        "pem": ctx.auth.ca_pem(t).decode(),
        "pin": ctx.auth.ca_pin(),
        "cluster_name": ctx.auth.cluster_name,
    }


# ---------------------------------------------------------------- locks
@rpc("locks.create", kind="lock", verb="create")
async def locks_create(ctx: ApiContext, params: dict[str, Any]) -> dict[str, Any]:
    """``tctl lock``."""
    expires = params.get("expires")
    exp = datetime.fromisoformat(str(expires).replace("Z", "+00:00")) if expires else None
    res = await ctx.auth.create_lock(
        target=params.get("target") or {},
        message=str(params.get("message") or ""),
        expires=exp,
        creator=ctx.caller,
    )
    return resource_to_dict(res)


# ---------------------------------------------------------------- audit
@rpc("events.search", kind="event", verb="list")
async def events_search(ctx: ApiContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Recent audit events, oldest first."""

    def when(key: str) -> datetime | None:
        v = params.get(key)
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")) if v else None

    return await ctx.auth.audit.search(
        since=when("since"),
        until=when("until"),
        types=_strs(params, "types"),
        limit=int(params.get("limit") or 500),
        filters={str(k): str(v) for k, v in (params.get("filters") or {}).items()},
    )


_ = parse_resource  # re-exported for method modules added later
