"""Service sections of ``teleport.yaml``: auth, proxy, database, application and the rest.

Field sets follow ``lib/config/fileconf.go``. Sections we accept but do not run
(``ssh_service``, ``kubernetes_service``...) are :class:`OpenService`: ``enabled``
plus any other key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ._common import (
    DB_PROTOCOLS,
    RESERVED_HEADERS,
    Duration,
    Invalid,
    LabelMatch,
    Labels,
    Open,
    Strict,
    StrList,
    Word,
    YesNo,
    dns_label_error,
    try_read_value_as_file,
)

#: Roles a static ``auth_service.tokens`` entry may grant (types.SystemRole, lower case).
SYSTEM_ROLES: frozenset[str] = frozenset(
    {
        "auth",
        "node",
        "proxy",
        "app",
        "db",
        "kube",
        "windows_desktop",
        "windowsdesktop",
        "discovery",
        "bot",
        "instance",
        "trusted_cluster",
        "trustedcluster",
        "remoteproxy",
        "signup",
        "nop",
        "okta",
        "mdm",
    }
)


def _suggest(word: str, choices: tuple[str, ...] | frozenset[str]) -> str | None:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f'did you mean "{close[0]}"?' if close else None


class OpenService(Open):
    """A section we accept for compatibility but do not interpret: ``enabled`` + any key."""

    enabled: YesNo | None = None


class CommandLabel(Strict):
    """A dynamic label: run ``command`` every ``period`` and use its output as the value."""

    name: str
    command: list[str] = Field(min_length=1)
    period: Duration | None = None


class ResourceMatcher(Strict):
    """``resources: [{labels: {...}}]``: which dynamic resources this agent serves."""

    labels: LabelMatch = Field(default_factory=dict)
    aws: dict[str, Any] | None = None


# --------------------------------------------------------------------------- auth


class Authentication(Open):
    """``auth_service.authentication``; keys beyond these are kept as-is."""

    type: str = "local"
    second_factor: Word = "off"
    webauthn: dict[str, Any] | None = None
    local_auth: YesNo | None = None
    locking_mode: Literal["best_effort", "strict"] | None = None

    @field_validator("second_factor")
    @classmethod
    def _check_second_factor(cls, v: str) -> str:
        allowed = ("off", "otp", "webauthn", "on", "optional")
        if v not in allowed:
            raise Invalid(
                f"second_factor must be one of {', '.join(allowed)}, got {v!r}",
                hint=_suggest(v, allowed) or 'use "otp", "webauthn", "on" or "optional"',
            )
        return v


@dataclass(frozen=True)
class StaticToken:
    """One ``auth_service.tokens`` entry: the roles it grants and its (possibly file) value."""

    roles: tuple[str, ...]
    value: str

    def token(self) -> str:
        """The token itself; a value that is an absolute path is read from that file."""
        return try_read_value_as_file(self.value)


def _check_token(item: str) -> str:
    _split_token(item)
    return item


class AuthService(Strict):
    """``auth_service:`` — the certificate authority and cluster state."""

    enabled: YesNo | None = None
    listen_addr: str = "0.0.0.0:3025"
    public_addr: StrList = Field(default_factory=list)
    cluster_name: str | None = None
    proxy_listener_mode: Literal["multiplex", "separate"] | None = None
    tokens: list[Annotated[str, AfterValidator(_check_token)]] = Field(default_factory=list)
    authentication: Authentication = Field(default_factory=Authentication)
    session_recording: Word | None = None
    proxy_protocol: Word | None = None
    message_of_the_day: str | None = None
    client_idle_timeout: Duration | None = None
    web_idle_timeout: Duration | None = None
    idle_timeout_message: str | None = None
    disconnect_expired_cert: YesNo | None = None
    keep_alive_interval: Duration | None = None
    keep_alive_count_max: int | None = None
    license_file: str | None = None
    routing_strategy: Literal["unambiguous_match", "most_recent"] | None = None
    proxy_ping_interval: Duration | None = None
    case_insensitive_routing: YesNo | None = None
    #: Jumpgate: processes serving the auth API (1 = the daemon alone; N > 1 adds
    #: N - 1 worker processes on the same socket and backend)
    workers: int | Literal["auto"] = 1

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, v: int | str) -> int | str:
        from jumpgate.core.auth.worker import MAX_WORKERS

        if v != "auto" and not (isinstance(v, int) and 1 <= v <= MAX_WORKERS):
            raise Invalid(
                f"auth_service.workers must be a number from 1 to {MAX_WORKERS} or auto, got {v!r}",
                hint="1 (the default) serves the auth API from the daemon alone; "
                "2 or more adds processes that share its port and backend",
            )
        return v

    def worker_count(self) -> int:
        """How many processes serve the auth API (``auto``: one per CPU, at most 8)."""
        if self.workers == "auto":
            import os

            return max(1, min(os.cpu_count() or 1, 8))
        return int(self.workers)

    @field_validator("session_recording")
    @classmethod
    def _check_recording(cls, v: str | None) -> str | None:
        allowed = ("node", "proxy", "node-sync", "proxy-sync", "off")
        if v is not None and v not in allowed:
            raise Invalid(f"session_recording must be one of {', '.join(allowed)}, got {v!r}")
        return v

    def static_tokens(self) -> list[StaticToken]:
        """The parsed ``tokens:`` list (values not read yet; see :meth:`StaticToken.token`)."""
        return [_split_token(t) for t in self.tokens]


def _redact(item: str) -> str:
    """``roles:secret`` with the secret hidden (error messages must not leak it)."""
    roles_s, sep, _ = item.partition(":")
    return f"{roles_s}:********" if sep else "********"


def _split_token(item: str) -> StaticToken:
    roles_s, sep, value = item.partition(":")
    hint = 'write "<roles>:<token>", for example "proxy,node:abc123" or "db:/path/to/file"'
    if not sep or not roles_s.strip() or not value.strip():
        raise Invalid(f"static token {_redact(item)!r} is not in the form roles:token", hint=hint)
    roles = tuple(r.strip().lower() for r in roles_s.split(","))
    for r in roles:
        if r not in SYSTEM_ROLES:
            raise Invalid(
                f"static token {_redact(item)!r}: unknown role {r!r}",
                hint=_suggest(r, SYSTEM_ROLES) or f"roles are: {', '.join(sorted(SYSTEM_ROLES))}",
            )
    return StaticToken(roles, value.strip())


# -------------------------------------------------------------------------- proxy


class KeyPair(Strict):
    """One ``https_keypairs`` entry."""

    key_file: str
    cert_file: str


class Acme(Strict):
    """``proxy_service.acme`` — Let's Encrypt certificates (TLS-ALPN-01)."""

    enabled: YesNo | None = None
    email: str | None = None
    uri: str | None = None


class ProxyService(Strict):
    """``proxy_service:`` — the web/TLS front door every client and agent dials."""

    enabled: YesNo | None = None
    web_listen_addr: str = "0.0.0.0:3080"
    public_addr: StrList = Field(default_factory=list)
    listen_addr: str | None = None
    ssh_public_addr: StrList = Field(default_factory=list)
    tunnel_listen_addr: str | None = None
    tunnel_public_addr: StrList = Field(default_factory=list)
    peer_listen_addr: str | None = None
    kube_listen_addr: str | None = None
    kube_public_addr: StrList = Field(default_factory=list)
    mysql_listen_addr: str | None = None
    mysql_public_addr: StrList = Field(default_factory=list)
    mysql_server_version: str | None = None
    postgres_listen_addr: str | None = None
    postgres_public_addr: StrList = Field(default_factory=list)
    mongo_listen_addr: str | None = None
    mongo_public_addr: StrList = Field(default_factory=list)
    https_keypairs: list[KeyPair] = Field(default_factory=list)
    https_keypairs_reload_interval: Duration | None = None
    acme: Acme = Field(default_factory=Acme)
    trust_x_forwarded_for: YesNo | None = None
    proxy_protocol: Word | None = None
    ui: dict[str, Any] | None = None


# ----------------------------------------------------------------------- database


class DatabaseTLS(Strict):
    """``databases[].tls`` — how the agent verifies the database's certificate."""

    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_cert_file: str | None = None
    server_name: str | None = None
    trust_system_cert_pool: YesNo = False


class Database(Strict):
    """One static ``db_service.databases`` entry."""

    name: str
    description: str = ""
    protocol: str
    uri: str
    ca_cert_file: str | None = None
    tls: DatabaseTLS = Field(default_factory=DatabaseTLS)
    static_labels: Labels = Field(default_factory=dict)
    dynamic_labels: list[CommandLabel] = Field(default_factory=list)
    admin_user: dict[str, Any] | None = None
    aws: dict[str, Any] | None = None
    gcp: dict[str, Any] | None = None
    azure: dict[str, Any] | None = None
    ad: dict[str, Any] | None = None
    mysql: dict[str, Any] | None = None
    oracle: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        err = dns_label_error(v)
        if err:
            raise Invalid(f"database {err}", hint='for example "example-postgres"')
        return v

    @field_validator("protocol")
    @classmethod
    def _check_protocol(cls, v: str) -> str:
        if v not in DB_PROTOCOLS:
            raise Invalid(
                f"unknown database protocol {v!r}",
                hint=_suggest(v, DB_PROTOCOLS) or f"use one of: {', '.join(DB_PROTOCOLS)}",
            )
        return v

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, v: str) -> str:
        if not v.strip():
            raise Invalid("uri is empty", hint="give host:port, for example localhost:5432")
        return v

    @model_validator(mode="after")
    def _deprecated_ca(self) -> Database:
        # ``ca_cert_file`` at the top of the entry is the old spelling of tls.ca_cert_file.
        if self.ca_cert_file:
            if self.tls.ca_cert_file and self.tls.ca_cert_file != self.ca_cert_file:
                raise Invalid(
                    "ca_cert_file and tls.ca_cert_file are both set and differ",
                    hint="keep only tls.ca_cert_file (ca_cert_file is deprecated)",
                )
            self.tls.ca_cert_file = self.ca_cert_file
        return self


class DbService(Strict):
    """``db_service:`` — proxies database connections to the databases it serves."""

    enabled: YesNo | None = None
    resources: list[ResourceMatcher] = Field(default_factory=list)
    databases: list[Database] = Field(default_factory=list)
    aws: list[dict[str, Any]] = Field(default_factory=list)
    azure: list[dict[str, Any]] = Field(default_factory=list)
    gcp: list[dict[str, Any]] = Field(default_factory=list)


# ---------------------------------------------------------------------------- app


def split_header(item: str) -> tuple[str, str]:
    """``"Name: value"`` → ``("Name", "value")``; raise :class:`Invalid` when it is wrong."""
    name, sep, value = item.partition(":")
    name = name.strip()
    if not sep or not name:
        raise Invalid(
            f"header {item!r} is not in the form 'Name: value'",
            hint='write headers as "X-Custom-Header: value"',
        )
    if any(c.isspace() or not c.isprintable() for c in name):
        raise Invalid(f"header name {name!r} contains spaces or control characters")
    if name.lower() in RESERVED_HEADERS:
        raise Invalid(
            f"header {name!r} is reserved by Teleport and cannot be rewritten",
            hint="choose another header name",
        )
    return name, value.strip()


def _check_header(item: str) -> str:
    split_header(item)
    return item


class Rewrite(Strict):
    """``apps[].rewrite`` — redirect hosts, extra request headers, JWT claims."""

    redirect: list[str] = Field(default_factory=list)
    headers: list[Annotated[str, AfterValidator(_check_header)]] = Field(default_factory=list)
    jwt_claims: Literal["roles-and-traits", "roles", "traits", "none"] | None = None

    def parsed_headers(self) -> list[tuple[str, str]]:
        """The headers as ``(name, value)`` pairs, in file order."""
        return [split_header(h) for h in self.headers]


class App(Strict):
    """One static ``app_service.apps`` entry."""

    name: str
    description: str = ""
    uri: str = ""
    public_addr: str | None = None
    insecure_skip_verify: YesNo = False
    labels: Labels = Field(default_factory=dict)
    commands: list[CommandLabel] = Field(default_factory=list)
    rewrite: Rewrite | None = None
    cloud: str | None = None
    use_any_proxy_public_addr: YesNo | None = None
    tcp_ports: list[dict[str, Any]] = Field(default_factory=list)
    cors: dict[str, Any] | None = None
    required_apps: list[str] = Field(default_factory=list)
    aws: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        err = dns_label_error(v)
        if err:
            raise Invalid(f"application {err}", hint='for example "grafana"')
        return v

    @model_validator(mode="after")
    def _need_uri(self) -> App:
        if not self.uri.strip() and not self.cloud:
            raise Invalid(
                f"application {self.name!r} has no uri",
                hint="set uri, for example http://localhost:3000",
            )
        return self


class AppService(Strict):
    """``app_service:`` — proxies HTTP and TCP applications."""

    enabled: YesNo | None = None
    debug_app: YesNo = False
    resources: list[ResourceMatcher] = Field(default_factory=list)
    apps: list[App] = Field(default_factory=list)
