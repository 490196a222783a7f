"""Machine ID bots: a bot owns user ``bot-NAME`` and role ``bot-NAME``.

The bot's role may impersonate the roles it was given; its certificates are
issued for those roles. Joining and renewal live beside this module (tbot issue).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jumpgate.core.auth.server import (
    BOT_GENERATION_LABEL,
    BOT_LABEL,
    DEFAULT_BOT_TOKEN_TTL,
    AuthServer,
)
from jumpgate.core.errors import AlreadyExists, BadParameter, NotFound
from jumpgate.core.resources import Resource, Token, bot_role, parse_resource, resource_to_dict


def bot_user_name(name: str) -> str:
    """``bot-NAME``: the user (and role) a bot owns."""
    return f"bot-{name}"


@dataclass(frozen=True)
class BotCreated:
    """What ``tctl bots add`` prints."""

    user_name: str
    role_name: str
    token_id: str
    token_ttl: timedelta


async def _token_for_bot(
    auth: AuthServer, name: str, token: str, ttl: timedelta | None
) -> tuple[str, timedelta]:
    if token:
        try:
            tok = await auth.store.get_as(Token, token)
        except NotFound:
            raise NotFound(
                f'token "{token}" not found', hint="create one with: tctl tokens add --type=bot"
            ) from None
        if "Bot" not in tok.spec.roles:
            raise BadParameter(
                f'token "{token}" is not a bot token (roles: {", ".join(tok.spec.roles)})'
            )
        if tok.spec.bot_name and tok.spec.bot_name != name:
            raise BadParameter(
                f'token "{token}" is valid for bot with name "{tok.spec.bot_name}", not "{name}"'
            )
        exp = tok.metadata.expires
        return token, (exp - auth.clock()) if exp else timedelta(0)
    ttl = ttl or DEFAULT_BOT_TOKEN_TTL
    res = await auth.create_token(roles=["bot"], ttl=ttl, bot_name=name)
    return res.metadata.name, ttl


async def create_bot(
    auth: AuthServer,
    *,
    name: str,
    roles: Sequence[str],
    logins: Sequence[str] = (),
    token: str = "",
    ttl: timedelta | None = None,
    max_session_ttl: timedelta | None = None,
    creator: str = "",
) -> BotCreated:
    """Create the bot resource, its user and role, and a single-use join token."""
    if not name or "/" in name:
        raise BadParameter(f"invalid bot name {name!r}")
    await auth._check_roles_exist(roles)
    user_name = bot_user_name(name)
    if await auth.store.exists("bot", name) or await auth.store.exists("user", user_name):
        raise AlreadyExists(
            f'bot "{name}" already exists',
            hint=f"change its roles with: tctl bots update {name} --add-roles ..., or remove it: tctl bots rm {name}",
        )
    spec: dict[str, Any] = {
        "roles": list(roles),
        "traits": [{"name": "logins", "values": list(logins)}] if logins else [],
    }
    if max_session_ttl:
        spec["max_session_ttl"] = f"{int(max_session_ttl.total_seconds())}s"
    bot = parse_resource(
        {
            "kind": "bot",
            "version": "v1",
            "metadata": {"name": name},
            "spec": spec,
            "status": {"user_name": user_name, "role_name": user_name},
        }
    )
    role = bot_role(name, list(roles))
    user = parse_resource(
        {
            "kind": "user",
            "version": "v2",
            "metadata": {"name": user_name, "labels": {BOT_LABEL: name, BOT_GENERATION_LABEL: "0"}},
            "spec": {"roles": [user_name], "traits": {"logins": list(logins)} if logins else {}},
        }
    )
    await auth.store.put(role)
    await auth.store.put(user, create=True)
    await auth.store.put(bot, create=True)
    token_id, token_ttl = await _token_for_bot(auth, name, token, ttl)
    auth.audit.emit("bot.create", user=creator or None, name=name, roles=list(roles))
    return BotCreated(
        user_name=user_name, role_name=user_name, token_id=token_id, token_ttl=token_ttl
    )


async def update_bot(
    auth: AuthServer,
    name: str,
    *,
    set_roles: Sequence[str] | None = None,
    add_roles: Sequence[str] = (),
    set_logins: Sequence[str] | None = None,
    add_logins: Sequence[str] = (),
    updater: str = "",
) -> Resource:
    """Change a bot's roles and logins; they take effect at its next renewal."""
    bot = await auth.store.get("bot", name)
    data = resource_to_dict(bot, with_secrets=True)
    roles = list(data["spec"].get("roles", []))
    if set_roles is not None:
        roles = list(dict.fromkeys(set_roles))
    roles = list(dict.fromkeys([*roles, *add_roles]))
    await auth._check_roles_exist(roles)
    traits = {t["name"]: list(t.get("values", [])) for t in data["spec"].get("traits", [])}
    logins = traits.get("logins", [])
    if set_logins is not None:
        logins = list(dict.fromkeys(set_logins))
    logins = list(dict.fromkeys([*logins, *add_logins]))
    traits["logins"] = logins
    data["spec"]["roles"] = roles
    data["spec"]["traits"] = [{"name": k, "values": v} for k, v in traits.items() if v]
    bot = parse_resource(data)
    await auth.store.put(bot)
    await auth.store.put(bot_role(name, roles))
    new_traits = {k: v for k, v in traits.items() if v}

    def set_traits(udata: dict[str, Any]) -> dict[str, Any]:
        # only the traits change: the generation labels stay whatever they are now
        udata["spec"]["traits"] = new_traits
        return udata

    await auth.store.mutate("user", bot_user_name(name), set_traits)
    auth.audit.emit("bot.update", user=updater or None, name=name, roles=roles)
    return bot


async def delete_bot(auth: AuthServer, name: str, *, deleter: str = "") -> None:
    """Remove a bot, its user, its role and its unused join tokens."""
    await auth.store.get("bot", name)
    user_name = bot_user_name(name)
    for kind, key in (("bot", name), ("user", user_name), ("role", user_name)):
        with contextlib.suppress(NotFound):
            await auth.store.delete(kind, key)
    for tok in await auth.store.list_as(Token):
        if tok.spec.bot_name == name:
            await auth.store.delete("token", tok.metadata.name)
    auth.audit.emit("bot.delete", user=deleter or None, name=name)
