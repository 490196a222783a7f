"""The ``role`` resource (versions v3 to v8), shaped like Teleport's ``RoleV6``.

Only the fields Jumpgate enforces are typed (logins, db/app/node labels, db names
and users, rules, impersonation, max_session_ttl); every other Teleport key
(``kubernetes_labels``, ``request``, ``windows_desktop_logins``, ...) is accepted
and written back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jumpgate.core.resources.base import Metadata, Resource, register
from jumpgate.core.resources.fields import GoDuration, LabelSelector, StringList, _to_string_list

#: Teleport's ``defaults.MaxCertDuration``: the max_session_ttl of a role that sets none.
DEFAULT_MAX_SESSION_TTL = timedelta(hours=30)
#: Role versions Teleport accepts.
ROLE_VERSIONS = ("v7", "v3", "v4", "v5", "v6", "v8")
#: ``{'*': ['*']}``: the selector that matches every resource, labelled or not.
WILDCARD_SELECTOR: dict[str, list[str]] = {"*": ["*"]}

#: Condition fields that hold a label selector (typed ones).
LABEL_FIELDS = ("node_labels", "app_labels", "db_labels")
#: Condition fields that hold templatable string lists (typed ones).
LIST_FIELDS = ("logins", "db_names", "db_users")


class _Absent:
    """Default of a field Teleport requires, so the validator can say "field required"."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


def _required_list(value: Any, teleport_message: str) -> list[str]:
    if value is _ABSENT:
        raise ValueError(f"field required ({teleport_message})")
    out = _to_string_list(value)
    if not isinstance(out, list):
        raise ValueError("expected a list of strings")
    if not out:
        raise ValueError(teleport_message)
    return out


class Rule(BaseModel):
    """One ``rules:`` entry: ``verbs`` allowed on ``resources`` (kinds), optionally ``where``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    resources: list[str] = Field(default_factory=lambda: _ABSENT)
    verbs: list[str] = Field(default_factory=lambda: _ABSENT)
    where: str = ""
    actions: StringList = []

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, value: Any) -> list[str]:
        return _required_list(value, "missing resources to match")

    @field_validator("verbs", mode="before")
    @classmethod
    def _verbs(cls, value: Any) -> list[str]:
        return _required_list(value, "missing verbs")

    def has_resource(self, kind: str) -> bool:
        """True when the rule names ``kind`` or ``*``."""
        return "*" in self.resources or kind in self.resources

    def has_verb(self, verb: str) -> bool:
        """True when the rule grants ``verb``; ``readnosecrets`` is satisfied by ``read``."""
        if "*" in self.verbs or verb in self.verbs:
            return True
        return verb == "readnosecrets" and "read" in self.verbs


class ImpersonateConditions(BaseModel):
    """``impersonate: {users, roles, where}``."""

    model_config = ConfigDict(extra="forbid")

    users: StringList = []
    roles: StringList = []
    where: str = ""


class RoleConditions(BaseModel):
    """``allow:`` or ``deny:`` of a role. Unknown Teleport keys are kept as-is."""

    model_config = ConfigDict(extra="allow")

    logins: StringList = []
    node_labels: LabelSelector = {}
    app_labels: LabelSelector = {}
    db_labels: LabelSelector = {}
    db_names: StringList = []
    db_users: StringList = []
    rules: list[Rule] = []
    impersonate: ImpersonateConditions | None = None

    @field_validator("logins")
    @classmethod
    def _no_wildcard_logins(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("wildcard matcher is not allowed in logins")
        return value

    @field_validator("logins", "db_names", "db_users")
    @classmethod
    def _templates_parse(cls, value: list[str]) -> list[str]:
        for item in value:
            _check_template(item)
        return value

    @field_validator("node_labels", "app_labels", "db_labels")
    @classmethod
    def _label_templates_parse(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, items in value.items():
            _check_template(key)
            for item in items:
                _check_template(item)
        return value


def _check_template(value: str) -> None:
    if "{{" not in value and "}}" not in value:
        return
    # Imported lazily: rbac imports this module.
    from jumpgate.core.errors import BadParameter
    from jumpgate.core.rbac.traits import parse_template

    try:
        parse_template(value)
    except BadParameter as exc:
        raise ValueError(exc.message) from None


class RoleOptions(BaseModel):
    """``options:``; only ``max_session_ttl`` is typed, the rest round-trips."""

    model_config = ConfigDict(extra="allow", validate_default=True)

    max_session_ttl: GoDuration = DEFAULT_MAX_SESSION_TTL

    @field_validator("max_session_ttl")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        return value if value > timedelta(0) else DEFAULT_MAX_SESSION_TTL


class RoleSpec(BaseModel):
    """``spec:`` of a role: ``options``, ``allow``, ``deny``."""

    model_config = ConfigDict(extra="forbid")

    options: RoleOptions = Field(default_factory=RoleOptions)
    allow: RoleConditions = Field(default_factory=RoleConditions)
    deny: RoleConditions = Field(default_factory=RoleConditions)

    @model_validator(mode="after")
    def _impersonation(self) -> RoleSpec:
        for cond in (self.allow, self.deny):
            imp = cond.impersonate
            if imp is not None and imp.users and not imp.roles:
                raise ValueError(
                    "please set both impersonate.users and impersonate.roles for user impersonation"
                )
        if self.deny.impersonate is not None and self.deny.impersonate.where:
            raise ValueError("deny.impersonate.where is not supported")
        return self


@register("roles")
class Role(Resource):
    """A role: what its holders may do (``allow``) and never do (``deny``)."""

    KIND: ClassVar[str] = "role"
    VERSIONS: ClassVar[tuple[str, ...]] = ROLE_VERSIONS

    spec: RoleSpec = Field(default_factory=RoleSpec)

    @field_validator("version")
    @classmethod
    def _version_known(cls, value: str) -> str:
        if value not in ROLE_VERSIONS:
            raise ValueError(f"unrecognized role version: {value}")
        return value

    @model_validator(mode="after")
    def _version_defaults(self) -> Role:
        if self.version == "v3":
            for fld in LABEL_FIELDS:
                if not getattr(self.spec.allow, fld):
                    setattr(self.spec.allow, fld, {"*": ["*"]})
        return self

    @property
    def allow(self) -> RoleConditions:
        """``spec.allow``."""
        return self.spec.allow

    @property
    def deny(self) -> RoleConditions:
        """``spec.deny``."""
        return self.spec.deny

    @property
    def max_session_ttl(self) -> timedelta:
        """``spec.options.max_session_ttl`` (30h when unset)."""
        return self.spec.options.max_session_ttl


def make_role(
    name: str,
    *,
    allow: RoleConditions | Mapping[str, Any] | None = None,
    deny: RoleConditions | Mapping[str, Any] | None = None,
    max_session_ttl: timedelta | str | None = None,
    options: Mapping[str, Any] | None = None,
    version: str = "v7",
    labels: Mapping[str, str] | None = None,
    description: str = "",
) -> Role:
    """Build a validated :class:`Role` from Python values (dicts are validated like YAML)."""
    opts: dict[str, Any] = dict(options or {})
    if max_session_ttl is not None:
        opts["max_session_ttl"] = max_session_ttl

    def cond(value: RoleConditions | Mapping[str, Any] | None) -> Any:
        if isinstance(value, RoleConditions):
            return value.model_dump(exclude_unset=False)
        return dict(value or {})

    return Role.model_validate(
        {
            "kind": "role",
            "version": version,
            "metadata": Metadata(
                name=name, description=description, labels=dict(labels or {})
            ).model_dump(),
            "spec": {"options": opts, "allow": cond(allow), "deny": cond(deny)},
        }
    )


def rule(resources: Sequence[str], verbs: Sequence[str], where: str = "") -> Rule:
    """Shorthand for ``Rule(resources=..., verbs=..., where=...)``."""
    return Rule(resources=list(resources), verbs=list(verbs), where=where)
