"""tbot config: destinations (``directory``/``memory``) and outputs (``identity``, ``database``, ``application``).

The YAML shapes follow Teleport's v2 config (TELEPORT-REFERENCE §1.2, §1.4)::

    destination: {type: directory, path: /opt/machine-id, symlinks: try-secure,
                  acls: try, readers: [{user: app}, {group: 1234}]}
    destination: {type: memory}
    destination: {directory: /opt/machine-id}          # shorthand (also at output level)

Outputs (in ``outputs:`` or ``services:``) are polymorphic on ``type:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jumpgate.core.bot._parse import Section
from jumpgate.core.errors import ConfigError

#: ``symlinks:`` modes of a directory destination.
SYMLINK_MODES = ("insecure", "try-secure", "secure")
#: ``acls:`` modes of a directory destination.
ACL_MODES = ("off", "try", "required")
#: ``format:`` values of a database output ("" = the default files only).
DB_FORMATS = ("", "tls", "mongo", "cockroach")

#: Output/service types Jumpgate's tbot produces.
SUPPORTED_OUTPUT_TYPES = ("identity", "database", "application")
#: Types Teleport's tbot knows that Jumpgate does not implement (clear error, not "unknown").
TELEPORT_ONLY_TYPES = (
    "kubernetes",
    "kubernetes/v2",
    "ssh_host",
    "spiffe-svid",
    "database-tunnel",
    "application-tunnel",
    "ssh-multiplexer",
    "spiffe-workload-api",
    "workload-identity-x509",
    "workload-identity-jwt",
    "workload-identity-api",
    "workload-identity-aws-roles-anywhere",
    "example",
)


@dataclass(frozen=True)
class Reader:
    """One ACL reader of a directory destination: a user or a group, by name or numeric id."""

    user: str = ""
    group: str = ""


@dataclass
class DirectoryConfig:
    """``type: directory``."""

    path: str
    symlinks: str = "try-secure"
    acls: str = "try"
    readers: list[Reader] = field(default_factory=list)

    type: str = "directory"

    def describe(self) -> str:
        """``directory /opt/machine-id``."""
        return f"directory {self.path}"


@dataclass
class MemoryConfig:
    """``type: memory``: credentials kept in the process only."""

    type: str = "memory"

    def describe(self) -> str:
        """``memory``."""
        return "memory"


DestinationConfig = DirectoryConfig | MemoryConfig


@dataclass
class OutputConfig:
    """What every output has: where it goes and which roles its certificate carries."""

    destination: DestinationConfig
    roles: list[str] = field(default_factory=list)
    name: str = ""

    type: str = ""

    def label(self) -> str:
        """A short name for logs and ``/readyz``."""
        return self.name or f"{self.type} ({self.destination.describe()})"


@dataclass
class IdentityOutputConfig(OutputConfig):
    """``type: identity``: an identity file for ``tctl -i`` / ``tsh -i`` plus the PEM pieces."""

    cluster: str = ""
    type: str = "identity"


@dataclass
class DatabaseOutputConfig(OutputConfig):
    """``type: database``: a certificate routed to one database."""

    service: str = ""
    database: str = ""
    username: str = ""
    format: str = ""
    type: str = "database"


@dataclass
class ApplicationOutputConfig(OutputConfig):
    """``type: application``: a certificate routed to one web application."""

    app_name: str = ""
    specific_tls_naming: bool = False
    type: str = "application"


AnyOutput = IdentityOutputConfig | DatabaseOutputConfig | ApplicationOutputConfig


def output_labels(outputs: list[AnyOutput]) -> list[str]:
    """The name of each output in ``/readyz`` and ``/metrics`` (a repeated label gets `` #N``)."""
    labels: list[str] = []
    for i, o in enumerate(outputs, 1):
        labels.append(o.label() if o.label() not in labels else f"{o.label()} #{i}")
    return labels


_DESTINATION_KEYS = ("type", "path", "symlinks", "acls", "readers")


def _directory(sec: Section, path_key: str = "path") -> DirectoryConfig:
    path = sec.text(path_key, required=True)
    readers: list[Reader] = []
    for r in sec.sections("readers"):
        r.check_keys(("user", "group"))
        user, group = r.text("user"), r.text("group")
        if bool(user) == bool(group):
            raise r.error(None, "a reader names exactly one of user or group", "e.g. - user: app")
        readers.append(Reader(user=user, group=group))
    return DirectoryConfig(
        path=path,
        symlinks=sec.choice("symlinks", SYMLINK_MODES, "try-secure"),
        acls=sec.choice("acls", ACL_MODES, "try"),
        readers=readers,
    )


def parse_destination(parent: Section, key: str) -> DestinationConfig:
    """The destination under ``parent[key]`` in any of its accepted forms."""
    value = parent.data.get(key)
    if value is None:
        raise parent.error(
            key, "is required", "add destination: {type: directory, path: /opt/machine-id}"
        )
    if isinstance(value, str):  # a bare path or URI
        try:
            return destination_from_uri(value)
        except ConfigError as exc:
            raise parent.error(key, exc.message, exc.hint) from None
    sec = parent.section(key)
    assert sec is not None
    if (
        "type" not in sec.data
        and len(sec.data) == 1
        and next(iter(sec.data)) in ("directory", "memory")
    ):
        # shorthand: {directory: /path} / {directory: {path: ...}} / {memory: {}}
        kind = next(iter(sec.data))
        if kind == "memory":
            return MemoryConfig()
        inner = sec.data["directory"]
        if isinstance(inner, str):
            return DirectoryConfig(path=sec.text("directory", required=True))
        sub = sec.section("directory")
        if sub is None:
            raise sec.error("directory", "needs a path", "directory: /opt/machine-id")
        sub.check_keys(_DESTINATION_KEYS[1:])
        return _directory(sub)
    kind = sec.text("type", "directory" if "path" in sec.data else "")
    if kind == "memory":
        sec.check_keys(("type",))
        return MemoryConfig()
    if kind == "directory":
        sec.check_keys(_DESTINATION_KEYS)
        return _directory(sec)
    if kind == "kubernetes_secret":
        raise sec.error(
            "type",
            "kubernetes_secret destinations are not supported by Jumpgate",
            "use type: directory or type: memory",
        )
    if not kind:
        raise sec.error("type", "is required", "type: directory (with path:) or type: memory")
    raise sec.error("type", f"unknown destination type {kind!r}", "use directory or memory")


def destination_from_uri(value: str) -> DestinationConfig:
    """``file:///abs/path``, a bare path, or ``memory://`` (Teleport's DestinationFromURI)."""
    text = value.strip()
    if text in ("memory://", "memory"):
        return MemoryConfig()
    if text.startswith("file://"):
        text = text[len("file://") :]
        if not text.startswith("/"):
            raise ConfigError(f"file URI {value!r} must be absolute", hint="use file:///path")
    elif "://" in text:
        raise ConfigError(
            f"unsupported destination URI {value!r}", hint="use a path, file:///path or memory://"
        )
    if not text:
        raise ConfigError("the destination path is empty", hint="give a directory path")
    return DirectoryConfig(path=text)


_COMMON = ("type", "destination", "directory", "roles", "name")


def _destination_of(sec: Section) -> DestinationConfig:
    if "directory" in sec.data and "destination" not in sec.data:
        value = sec.data["directory"]
        if isinstance(value, str):
            return DirectoryConfig(path=sec.text("directory", required=True))
        return parse_destination(
            Section({"destination": {"directory": value}}, sec.path, sec.loc), "destination"
        )
    if "directory" in sec.data:
        raise sec.error("directory", "give either destination or directory, not both")
    return parse_destination(sec, "destination")


def parse_output(sec: Section) -> AnyOutput:
    """One entry of ``outputs:``/``services:``."""
    kind = sec.text("type")
    if not kind:
        raise sec.error("type", "is required", "type: identity, database or application")
    if kind in TELEPORT_ONLY_TYPES:
        raise sec.error(
            "type",
            f"output type {kind!r} is not supported by Jumpgate's tbot",
            "supported types: " + ", ".join(SUPPORTED_OUTPUT_TYPES),
        )
    if kind not in SUPPORTED_OUTPUT_TYPES:
        raise sec.error(
            "type",
            f"unknown output type {kind!r}",
            "valid types: " + ", ".join(SUPPORTED_OUTPUT_TYPES),
        )
    if kind == "identity":
        sec.check_keys((*_COMMON, "cluster"))
        out: AnyOutput = IdentityOutputConfig(
            destination=_destination_of(sec), cluster=sec.text("cluster")
        )
    elif kind == "database":
        sec.check_keys((*_COMMON, "service", "database", "username", "format", "subtype"))
        if sec.has("format") and sec.has("subtype"):
            raise sec.error("subtype", "give either format or its old name subtype, not both")
        fmt_key = "subtype" if sec.has("subtype") else "format"
        out = DatabaseOutputConfig(
            destination=_destination_of(sec),
            service=sec.text("service"),
            database=sec.text("database"),
            username=sec.text("username"),
            format=sec.choice(fmt_key, DB_FORMATS, ""),
        )
        if not out.service:
            raise sec.error(
                "service",
                "service must not be empty",
                "name the database as tctl get db / tsh db ls shows it",
            )
    else:
        sec.check_keys((*_COMMON, "app_name", "specific_tls_naming"))
        out = ApplicationOutputConfig(
            destination=_destination_of(sec),
            app_name=sec.text("app_name"),
            specific_tls_naming=sec.flag("specific_tls_naming"),
        )
        if not out.app_name:
            raise sec.error(
                "app_name",
                "app_name must not be empty",
                "name the application as tsh apps ls shows it",
            )
    out.roles = sec.strings("roles")
    out.name = sec.text("name")
    return out


def output_to_dict(out: AnyOutput) -> dict[str, Any]:
    """The YAML form of an output (``tbot configure``-style, for messages and tests)."""
    dest: dict[str, Any]
    if isinstance(out.destination, DirectoryConfig):
        dest = {"type": "directory", "path": out.destination.path}
    else:
        dest = {"type": "memory"}
    data: dict[str, Any] = {"type": out.type, "destination": dest}
    if out.roles:
        data["roles"] = list(out.roles)
    if isinstance(out, DatabaseOutputConfig):
        data.update({"service": out.service, "database": out.database, "username": out.username})
        if out.format:
            data["format"] = out.format
    elif isinstance(out, ApplicationOutputConfig):
        data["app_name"] = out.app_name
        if out.specific_tls_naming:
            data["specific_tls_naming"] = True
    return data
