"""``teleport.yaml`` (config versions v1, v2 and v3): models and loading.

:func:`load_config` reads a file, :func:`parse_config` a string. Both return a
:class:`TeleportConfig` or raise one :class:`ConfigError` that names the file,
the line and the key path, with a hint (``did you mean "web_listen_addr"?``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from jumpgate.core.errors import BadParameter, ConfigError
from jumpgate.core.yamlutil import Locator, format_path, load_one

from ._common import (
    Invalid,
    Open,
    Strict,
    StrList,
    join_hostport,
    parse_hostport,
    try_read_value_as_file,
)
from ._errors import validation_error
from .services import (
    AppService,
    AuthService,
    DbService,
    OpenService,
    ProxyService,
)

DEFAULT_CONFIG_PATH = "/etc/teleport.yaml"
DEFAULT_DATA_DIR = "/var/lib/teleport"
AUTH_PORT = 3025
WEB_PORT = 3080

_JOIN_METHODS = (
    "token",
    "ec2",
    "iam",
    "github",
    "circleci",
    "kubernetes",
    "azure",
    "gitlab",
    "gcp",
    "spacelift",
    "tpm",
    "terraform_cloud",
    "bitbucket",
    "oracle",
    "azure_devops",
    "bound_keypair",
)
_ADDRESS_KEYS: dict[str, tuple[str, ...]] = {
    "teleport": ("auth_server", "proxy_server", "auth_servers", "diag_addr"),
    "auth_service": ("listen_addr", "public_addr"),
    "proxy_service": (
        "web_listen_addr",
        "public_addr",
        "listen_addr",
        "tunnel_listen_addr",
        "kube_listen_addr",
        "mysql_listen_addr",
        "postgres_listen_addr",
        "postgres_public_addr",
        "mongo_listen_addr",
    ),
}


class JoinParams(Strict):
    """``teleport.join_params`` — how this agent joins the cluster."""

    token_name: str = ""
    method: str = "token"
    azure: dict[str, Any] | None = None

    @field_validator("method")
    @classmethod
    def _check_method(cls, v: str) -> str:
        if v not in _JOIN_METHODS:
            raise Invalid(
                f"unknown join method {v!r}", hint=f"use one of: {', '.join(_JOIN_METHODS)}"
            )
        return v


class LogFormat(Strict):
    """``teleport.log.format``."""

    output: Literal["text", "json"] = "text"
    extra_fields: list[str] = Field(default_factory=list)


class Log(Strict):
    """``teleport.log`` — where and how much the process logs."""

    output: str = "stderr"
    severity: str = "INFO"
    format: LogFormat = Field(default_factory=LogFormat)

    @field_validator("severity")
    @classmethod
    def _check_severity(cls, v: str) -> str:
        up = v.strip().upper()
        if up not in ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "ERR"):
            raise Invalid(f"unknown log severity {v!r}", hint="use DEBUG, INFO, WARN or ERROR")
        return {"WARNING": "WARN", "ERR": "ERROR"}.get(up, up)


class Storage(Open):
    """``teleport.storage`` — the cluster state backend; backend-specific keys pass through."""

    type: Literal["sqlite", "dir", "postgresql", "etcd", "dynamodb", "firestore"] = "sqlite"
    path: str | None = None
    audit_events_uri: StrList = Field(default_factory=list)
    audit_sessions_uri: str | None = None
    conn_string: str | None = None


class Global(Strict):
    """The ``teleport:`` section (settings shared by every service of the process)."""

    nodename: str = Field(default_factory=socket.gethostname)
    data_dir: str = DEFAULT_DATA_DIR
    pid_file: str | None = None
    join_params: JoinParams | None = None
    auth_token: str | None = None
    auth_server: str | None = None
    proxy_server: str | None = None
    auth_servers: StrList | None = None
    ca_pin: StrList = Field(default_factory=list)
    log: Log = Field(default_factory=Log)
    storage: Storage = Field(default_factory=Storage)
    diag_addr: str | None = None
    advertise_ip: str | None = None
    connection_limits: dict[str, Any] | None = None
    cache: dict[str, Any] | None = None
    ciphersuites: list[str] | None = None
    ciphers: list[str] | None = None
    kex_algos: list[str] | None = None
    mac_algos: list[str] | None = None
    ca_signature_algo: str | None = None


class TeleportConfig(Strict):
    """A whole ``teleport.yaml``. Services: auth/ssh/proxy are on unless ``enabled: no``;
    db, app and the others are off unless ``enabled: yes``.
    """

    version: Literal["v1", "v2", "v3"] = "v1"
    teleport: Global = Field(default_factory=Global)
    auth_service: AuthService = Field(default_factory=AuthService)
    ssh_service: OpenService = Field(default_factory=OpenService)
    proxy_service: ProxyService = Field(default_factory=ProxyService)
    kubernetes_service: OpenService = Field(default_factory=OpenService)
    app_service: AppService = Field(default_factory=AppService)
    db_service: DbService = Field(default_factory=DbService)
    metrics_service: OpenService = Field(default_factory=OpenService)
    windows_desktop_service: OpenService = Field(default_factory=OpenService)
    discovery_service: OpenService = Field(default_factory=OpenService)
    tracing_service: OpenService = Field(default_factory=OpenService)
    debug_service: OpenService = Field(default_factory=OpenService)

    _source: Path | None = PrivateAttr(default=None)
    _locator: Locator | None = PrivateAttr(default=None)

    # ------------------------------------------------------------ convenience

    @property
    def source(self) -> Path | None:
        """The file this configuration was loaded from (None for :func:`parse_config`)."""
        return self._source

    @property
    def data_dir(self) -> Path:
        """``teleport.data_dir`` as a path."""
        return Path(self.teleport.data_dir)

    @property
    def auth_enabled(self) -> bool:
        """Whether this process runs the Auth Service (on unless ``enabled: no``)."""
        return self.auth_service.enabled is not False

    @property
    def proxy_enabled(self) -> bool:
        """Whether this process runs the Proxy Service (on unless ``enabled: no``)."""
        return self.proxy_service.enabled is not False

    @property
    def ssh_enabled(self) -> bool:
        """Whether ``ssh_service`` is on (accepted, but Jumpgate runs no SSH service)."""
        return self.ssh_service.enabled is not False

    @property
    def db_enabled(self) -> bool:
        """Whether this process runs the Database Service (off unless ``enabled: yes``)."""
        return self.db_service.enabled is True

    @property
    def app_enabled(self) -> bool:
        """Whether this process runs the Application Service (off unless ``enabled: yes``)."""
        return self.app_service.enabled is True

    @property
    def proxy_public_addr(self) -> str:
        """First proxy ``public_addr`` (port 3080 when none is given), else the web
        listen address with a wildcard host replaced by ``localhost``."""
        addrs = self.proxy_service.public_addr
        if addrs:
            return join_hostport(*parse_hostport(addrs[0], WEB_PORT))
        host, port = parse_hostport(self.proxy_service.web_listen_addr, WEB_PORT)
        if host in ("0.0.0.0", "::", ""):
            host = "localhost"
        return join_hostport(host, port)

    @property
    def backend_path(self) -> Path:
        """The sqlite backend file: ``<data_dir>/backend/sqlite.db`` unless ``storage.path``
        names another directory (relative paths are under ``data_dir``) or a ``.db`` file."""
        p = self.teleport.storage.path
        if not p:
            return self.data_dir / "backend" / "sqlite.db"
        path = Path(p) if Path(p).is_absolute() else self.data_dir / p
        return path if path.suffix == ".db" else path / "sqlite.db"

    def join_token(self) -> str | None:
        """The join token (``join_params.token_name``, else legacy ``auth_token``).

        A value that is an absolute path is read from that file (``utils.TryReadValueAsFile``).
        """
        jp = self.teleport.join_params
        value = (jp.token_name if jp else "") or self.teleport.auth_token or ""
        return try_read_value_as_file(value.strip()) if value.strip() else None

    def upstream(self) -> tuple[Literal["auth", "proxy"], str] | None:
        """Where an agent dials to join: ``("auth"|"proxy", "host:port")``, or None.

        v3: ``auth_server`` (port 3025) or ``proxy_server`` (port 3080); v1/v2: the first
        ``auth_servers`` entry (port 3025).
        """
        t = self.teleport
        if t.proxy_server:
            return "proxy", join_hostport(*parse_hostport(t.proxy_server, WEB_PORT))
        server = t.auth_server or (t.auth_servers[0] if t.auth_servers else None)
        if server:
            return "auth", join_hostport(*parse_hostport(server, AUTH_PORT))
        return None

    def validate_supported(self) -> None:
        """Raise :class:`ConfigError` for settings that load but Jumpgate cannot run yet."""
        storage = self.teleport.storage
        if storage.type != "sqlite":
            raise ConfigError(
                f"{self._where(('teleport', 'storage', 'type'))}: "
                f"storage type {storage.type} is not supported yet",
                hint='use "type: sqlite" (the default) or remove the storage section',
            )

    def _where(self, path: tuple[str | int, ...]) -> str:
        if self._locator is not None:
            return f"{self._locator.where(path)}: {format_path(path)}"
        key: str = format_path(path)
        return key


def parse_config(text: str, source: str = "teleport.yaml") -> TeleportConfig:
    """Parse ``teleport.yaml`` text; ``source`` names it in error messages."""
    data, loc = load_one(text, source)
    for key, value in list(data.items()):
        if value is None:  # ``db_service:`` with nothing under it
            data[key] = {}
    try:
        cfg = TeleportConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data, loc, TeleportConfig) from None
    cfg._locator = loc
    _check_versions(cfg, data, loc)
    _check_addresses(data, loc)
    _check_unique(cfg, loc)
    return cfg


def load_config(path: Path | str) -> TeleportConfig:
    """Read and parse a ``teleport.yaml`` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found",
            hint=f"create one with: teleport configure -o file://{DEFAULT_CONFIG_PATH}",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(
            f"{p}: permission denied", hint="run as a user that can read it (or with sudo)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    cfg = parse_config(text, str(p))
    cfg._source = p
    return cfg


def _check_versions(cfg: TeleportConfig, data: dict[str, Any], loc: Locator) -> None:
    t = cfg.teleport
    raw = data.get("teleport") or {}

    def where(key: str) -> str:
        return f"{loc.where(('teleport', key))}: teleport.{key}"

    if cfg.version == "v3":
        if "auth_servers" in raw:
            raise ConfigError(
                f"{where('auth_servers')}: not supported in config version v3",
                hint='use "auth_server: host:3025" to join through the Auth Service '
                'or "proxy_server: host:3080" to join through the Proxy Service',
            )
        if t.auth_server and t.proxy_server:
            raise ConfigError(
                f"{where('proxy_server')}: auth_server and proxy_server cannot both be set",
                hint="keep only one: auth_server (Auth Service address) "
                "or proxy_server (Proxy Service address)",
            )
    else:
        for key in ("auth_server", "proxy_server"):
            if key in raw:
                raise ConfigError(
                    f"{where(key)}: needs config version v3 (this file is {cfg.version})",
                    hint='add "version: v3" at the top (and drop auth_servers)',
                )


def _check_addresses(data: dict[str, Any], loc: Locator) -> None:
    """Every address written in the file must parse as ``host[:port]``."""
    for section, keys in _ADDRESS_KEYS.items():
        raw = data.get(section)
        if not isinstance(raw, dict):
            continue
        for key in keys:
            value = raw.get(key)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if not isinstance(item, str) or not item:
                    continue
                path: tuple[str | int, ...] = (section, key)
                if isinstance(value, list):
                    path = (*path, i)
                try:
                    parse_hostport(item, WEB_PORT)
                except BadParameter as exc:
                    raise ConfigError(
                        f"{loc.where(path)}: {format_path(path)}: {exc.message}", hint=exc.hint
                    ) from None


def _check_unique(cfg: TeleportConfig, loc: Locator) -> None:
    for section, items in (
        ("db_service", [d.name for d in cfg.db_service.databases]),
        ("app_service", [a.name for a in cfg.app_service.apps]),
    ):
        key = "databases" if section == "db_service" else "apps"
        seen: dict[str, int] = {}
        for i, name in enumerate(items):
            if name in seen:
                path = (section, key, i, "name")
                first = loc.line((section, key, seen[name], "name"))
                raise ConfigError(
                    f"{loc.where(path)}: {format_path(path)}: duplicate name {name!r}"
                    + (f" (first on line {first})" if first else ""),
                    hint="every entry needs its own name",
                )
            seen[name] = i
