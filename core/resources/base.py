"""Metadata, the Resource base class, the kind registry and kind aliases."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from jumpgate.core.errors import BadParameter
from jumpgate.core.resources.fields import Labels, Timestamp


class Metadata(BaseModel):
    """``metadata`` of every resource. Unknown Teleport keys (``namespace``, ``id``) are kept."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str = ""
    labels: Labels = {}
    expires: Timestamp | None = None
    revision: str = ""

    @field_validator("name", mode="before")
    @classmethod
    def _name_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        return value

    @field_validator("name")
    @classmethod
    def _name_present(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("missing resource name")
        return value


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class DNSLabelMetadata(Metadata):
    """Metadata whose name must be a DNS-1035 label (databases and applications)."""

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1035.match(value):
            raise ValueError(
                f"invalid name {value!r}: must be a valid DNS-1035 label "
                "(lowercase letters, digits and '-', starting with a letter, at most 63 characters)"
            )
        return value


class Resource(BaseModel):
    """Base of every resource: ``kind``, ``sub_kind``, ``version``, ``metadata`` (+ spec, status).

    Subclasses set :attr:`KIND`, :attr:`VERSIONS` (accepted versions, the first is the
    default) and declare ``spec``/``status`` fields.
    """

    model_config = ConfigDict(extra="ignore", validate_default=True)

    #: Canonical kind name written into YAML.
    KIND: ClassVar[str] = ""
    #: Accepted versions; the first is used when ``version`` is absent.
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    #: Name used when a singleton resource (cluster_name, ...) omits metadata.name.
    DEFAULT_NAME: ClassVar[str] = ""

    kind: str = ""
    sub_kind: str = ""
    version: str = ""
    metadata: Metadata

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if not data.get("kind"):
            data["kind"] = cls.KIND
        if not data.get("version"):
            data["version"] = cls.VERSIONS[0]
        if cls.DEFAULT_NAME:
            meta = data.get("metadata")
            if meta is None:
                data["metadata"] = {"name": cls.DEFAULT_NAME}
            elif isinstance(meta, dict) and not meta.get("name"):
                data["metadata"] = {**meta, "name": cls.DEFAULT_NAME}
        return data

    @field_validator("kind")
    @classmethod
    def _kind_matches(cls, value: str) -> str:
        if cls.KIND and canonical_kind(value, strict=False) != cls.KIND:
            raise ValueError(f"expected kind {cls.KIND!r}, got {value!r}")
        return cls.KIND or value

    @field_validator("version")
    @classmethod
    def _version_known(cls, value: str) -> str:
        if value not in cls.VERSIONS:
            raise ValueError(
                f"unsupported {cls.KIND} version {value!r} (supported: {', '.join(cls.VERSIONS)})"
            )
        return value

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def labels(self) -> dict[str, str]:
        """``metadata.labels`` (static labels)."""
        return self.metadata.labels

    def is_expired(self, now: datetime | None = None) -> bool:
        """True when ``metadata.expires`` is set and not after ``now`` (default: current time)."""
        exp = self.metadata.expires
        if exp is None:
            return False
        return exp <= (now or datetime.now(UTC))


# --- registry ---------------------------------------------------------------------------

_REGISTRY: dict[str, type[Resource]] = {}
_ALIASES: dict[str, str] = {}

R = TypeVar("R", bound=type[Resource])


def register(*aliases: str) -> Callable[[R], R]:
    """Class decorator: make a Resource subclass parseable under its KIND and ``aliases``."""

    def deco(cls: R) -> R:
        _REGISTRY[cls.KIND] = cls
        for alias in (cls.KIND, *aliases):
            _ALIASES[alias] = cls.KIND
        return cls

    return deco


def supported_kinds() -> list[str]:
    """Canonical kinds that :func:`parse_resource` accepts, sorted."""
    return sorted(_REGISTRY)


def canonical_kind(name: str, *, strict: bool = True) -> str:
    """Map a kind or alias (``roles``, ``database``, ``cas``, ``cap``) to its canonical kind.

    Unknown names raise :class:`BadParameter` listing the supported kinds, unless
    ``strict=False``, in which case the lower-cased name is returned unchanged.
    """
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if not strict:
        return key
    raise BadParameter(
        f"unsupported resource kind {name!r}; supported kinds: {', '.join(supported_kinds())}",
        hint="check the kind: field (or the KIND argument), e.g. role, user, bot, token, db, app",
    )


def resource_class(kind: str) -> type[Resource]:
    """The model class for a kind or alias (raises BadParameter when unknown)."""
    return _REGISTRY[canonical_kind(kind)]
