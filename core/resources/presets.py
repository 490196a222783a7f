"""Teleport's built-in roles (``access``, ``editor``, ``auditor``) and per-bot roles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from jumpgate.core.resources.role import DEFAULT_MAX_SESSION_TTL, Role, make_role
from jumpgate.core.resources.user import bot_resource_name

#: Label Teleport puts on preset roles.
PRESET_LABEL = "teleport.internal/resource-type"
#: Label on the user and role behind a bot.
BOT_LABEL = "teleport.internal/bot"
#: ``defaults.DefaultBotMaxSessionTTL``: cert lifetime cap of a bot's own role.
DEFAULT_BOT_MAX_SESSION_TTL = timedelta(hours=12)

_RO = ["list", "read"]
_RW = ["*"]
#: Kinds the editor preset administers.
EDITOR_KINDS = [
    "user",
    "role",
    "bot",
    "token",
    "lock",
    "db",
    "app",
    "cluster_auth_preference",
    "cluster_name",
    "db_server",
    "app_server",
]
#: Kinds a bot reads to follow CA rotation and find its targets.
BOT_READ_KINDS = [
    "cert_authority",
    "cluster_name",
    "cluster_auth_preference",
    "db_server",
    "db",
    "app_server",
    "app",
]


def access_role() -> Role:
    """``access``: reach every database/app/node with the user's own traits."""
    return make_role(
        "access",
        description="Access cluster resources",
        labels={PRESET_LABEL: "preset"},
        max_session_ttl=DEFAULT_MAX_SESSION_TTL,
        options={"cert_format": "standard", "forward_agent": True, "port_forwarding": True},
        allow={
            "logins": ["{{internal.logins}}"],
            "node_labels": {"*": "*"},
            "app_labels": {"*": "*"},
            "db_labels": {"*": "*"},
            "db_names": ["{{internal.db_names}}"],
            "db_users": ["{{internal.db_users}}"],
            "db_roles": ["{{internal.db_roles}}"],
            "rules": [
                {"resources": ["event"], "verbs": _RO},
                {
                    "resources": ["session"],
                    "verbs": ["read", "list"],
                    "where": "contains(session.participants, user.metadata.name)",
                },
            ],
        },
    )


def editor_role() -> Role:
    """``editor``: administer cluster configuration; no access to resources themselves."""
    return make_role(
        "editor",
        description="Edit cluster configuration",
        labels={PRESET_LABEL: "preset"},
        max_session_ttl=DEFAULT_MAX_SESSION_TTL,
        allow={
            "rules": [
                *({"resources": [k], "verbs": _RW} for k in EDITOR_KINDS),
                {"resources": ["cert_authority"], "verbs": _RO},
                {"resources": ["event"], "verbs": _RO},
                {"resources": ["session"], "verbs": _RO},
            ]
        },
    )


def auditor_role() -> Role:
    """``auditor``: read the audit log and session recordings."""
    return make_role(
        "auditor",
        description="Review cluster events and replay sessions",
        labels={PRESET_LABEL: "preset"},
        max_session_ttl=DEFAULT_MAX_SESSION_TTL,
        allow={
            "rules": [
                {"resources": ["session"], "verbs": _RO},
                {"resources": ["event"], "verbs": _RO},
            ]
        },
    )


def requester_role() -> Role:
    """``requester``: may request the ``access`` role (Teleport's preset; seed 004 uses it).

    Access requests are not implemented yet, so holding this role grants nothing
    beyond what the user's other roles grant.
    """
    return make_role(
        "requester",
        description="Request all resources",
        labels={PRESET_LABEL: "preset"},
        max_session_ttl=DEFAULT_MAX_SESSION_TTL,
        allow={"request": {"search_as_roles": ["access"]}},
    )


def preset_roles() -> list[Role]:
    """The roles a fresh cluster starts with: access, editor, auditor, requester."""
    return [access_role(), editor_role(), auditor_role(), requester_role()]


def bot_role(
    bot_name: str,
    roles: Sequence[str],
    *,
    max_session_ttl: timedelta | None = None,
) -> Role:
    """Role ``bot-NAME``: impersonate ``roles`` and read what a bot needs (CAs, targets)."""
    return make_role(
        bot_resource_name(bot_name),
        description=f"Automatically generated role for bot {bot_name}",
        labels={BOT_LABEL: bot_name},
        max_session_ttl=max_session_ttl or DEFAULT_BOT_MAX_SESSION_TTL,
        allow={
            "impersonate": {"users": [], "roles": list(roles)},
            "rules": [{"resources": [k], "verbs": ["read", "list"]} for k in BOT_READ_KINDS],
        },
    )
