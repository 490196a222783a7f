"""Identities: ``user`` (v2), ``bot`` (v1) and join ``token`` (v2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jumpgate.core.resources.base import Resource, register
from jumpgate.core.resources.fields import GoDuration, StringList, _to_string_list

# --- user --------------------------------------------------------------------------------


def _to_traits(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): _to_string_list(v) for k, v in value.items()}
    return value


class UserSpec(BaseModel):
    """``spec:`` of a user: roles, traits (``logins``, ``db_users``, ...), who created it."""

    model_config = ConfigDict(extra="allow")

    roles: StringList = []
    traits: dict[str, list[str]] = {}
    created_by: dict[str, Any] | None = None

    @field_validator("traits", mode="before")
    @classmethod
    def _traits(cls, value: Any) -> Any:
        return _to_traits(value)

    @field_validator("created_by", mode="before")
    @classmethod
    def _created_by(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"user": {"name": value}} if value else None
        return value


class UserStatus(BaseModel):
    """``status:`` of a user (lock state)."""

    model_config = ConfigDict(extra="allow")

    is_locked: bool = False


@register("users")
class User(Resource):
    """A Teleport user (local, or the ``bot-NAME`` user behind a bot)."""

    KIND: ClassVar[str] = "user"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)

    spec: UserSpec = Field(default_factory=UserSpec)
    status: UserStatus = Field(default_factory=UserStatus)

    @property
    def roles(self) -> list[str]:
        """``spec.roles``."""
        return self.spec.roles

    @property
    def traits(self) -> dict[str, list[str]]:
        """``spec.traits``."""
        return self.spec.traits


# --- bot ---------------------------------------------------------------------------------


class BotTrait(BaseModel):
    """One ``{name, values}`` entry of ``bot.spec.traits``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    values: StringList = []


class BotSpec(BaseModel):
    """``spec:`` of a bot."""

    model_config = ConfigDict(extra="allow")

    roles: StringList = []
    traits: list[BotTrait] = []
    max_session_ttl: GoDuration | None = None


class BotStatus(BaseModel):
    """``status:`` of a bot: the user and role created for it."""

    model_config = ConfigDict(extra="allow")

    user_name: str = ""
    role_name: str = ""


@register("bots")
class Bot(Resource):
    """A Machine ID bot; backed by user ``bot-NAME`` holding role ``bot-NAME``."""

    KIND: ClassVar[str] = "bot"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)

    spec: BotSpec = Field(default_factory=BotSpec)
    status: BotStatus = Field(default_factory=BotStatus)

    def trait_map(self) -> dict[str, list[str]]:
        """Traits as a user's ``{name: [values]}`` map (empty traits dropped, like Teleport)."""
        out: dict[str, list[str]] = {}
        for t in self.spec.traits:
            if t.values:
                out.setdefault(t.name, []).extend(t.values)
        return out


def bot_resource_name(bot_name: str) -> str:
    """Name of the user and role behind a bot: ``bot-NAME``."""
    return f"bot-{bot_name}"


# --- token -------------------------------------------------------------------------------

#: Teleport's ``types.SystemRole`` spellings, keyed by lower case.
SYSTEM_ROLES = {
    r.lower(): r
    for r in (
        "Auth",
        "Node",
        "Proxy",
        "Admin",
        "ProvisionToken",
        "Trusted_cluster",
        "Signup",
        "Nop",
        "RemoteProxy",
        "Kube",
        "App",
        "Db",
        "WindowsDesktop",
        "Bot",
        "Instance",
        "Discovery",
        "Okta",
        "MDM",
        "OpenSSH",
    )
}
SYSTEM_ROLES.update(
    {"trustedcluster": "Trusted_cluster", "windows_desktop": "WindowsDesktop", "database": "Db"}
)

#: Join methods Teleport knows (``types.JoinMethod``).
JOIN_METHODS = (
    "token",
    "ec2",
    "iam",
    "github",
    "circleci",
    "kubernetes",
    "gitlab",
    "gcp",
    "azure",
    "azure_devops",
    "spacelift",
    "tpm",
    "terraform_cloud",
    "bitbucket",
    "oracle",
    "bound_keypair",
    "env0",
)


def system_role(name: str) -> str:
    """Teleport spelling of a system role (``db`` → ``Db``); ValueError when unknown."""
    key = name.strip().lower()
    if key not in SYSTEM_ROLES:
        known = sorted(set(SYSTEM_ROLES.values()))
        raise ValueError(f"{name!r} is not a valid system role (known: {', '.join(known)})")
    return SYSTEM_ROLES[key]


class TokenSpec(BaseModel):
    """``spec:`` of a provision token: which system roles it lets a joiner take."""

    model_config = ConfigDict(extra="allow")

    roles: list[str]
    join_method: str = "token"
    bot_name: str = ""

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        items = _to_string_list(value)
        if isinstance(items, list):
            if not items:
                raise ValueError("a token needs at least one role")
            return list(dict.fromkeys(system_role(str(v)) for v in items))
        return items

    @field_validator("join_method")
    @classmethod
    def _join_method(cls, value: str) -> str:
        value = value or "token"
        if value not in JOIN_METHODS:
            raise ValueError(f"unknown join method {value!r} (known: {', '.join(JOIN_METHODS)})")
        return value

    @model_validator(mode="after")
    def _bot_name(self) -> TokenSpec:
        if "Bot" in self.roles and not self.bot_name:
            raise ValueError('token with "Bot" role must set bot_name')
        if self.bot_name and "Bot" not in self.roles:
            raise ValueError('can only set bot_name on token with "Bot" role')
        return self


@register("tokens")
class Token(Resource):
    """A join token; ``metadata.name`` is the secret value, ``metadata.expires`` its end."""

    KIND: ClassVar[str] = "token"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)

    spec: TokenSpec

    @property
    def roles(self) -> list[str]:
        """``spec.roles`` in Teleport spelling (``Db``, ``App``, ``Bot``...)."""
        return self.spec.roles

    def ttl_left(self, now: datetime | None = None) -> timedelta | None:
        """Time until ``metadata.expires`` (None when the token never expires)."""
        exp = self.metadata.expires
        if exp is None:
            return None
        return exp - (now or datetime.now(UTC))
