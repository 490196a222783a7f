"""Protected resources: ``db``, ``db_server``, ``app``, ``app_server`` (all v3)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jumpgate.core.resources.base import DNSLabelMetadata, Resource, register
from jumpgate.core.resources.fields import GoDuration, StringList

#: Database protocols Teleport knows (``defaults.DatabaseProtocols``).
DATABASE_PROTOCOLS = (
    "postgres",
    "mysql",
    "mongodb",
    "redis",
    "cockroachdb",
    "sqlserver",
    "snowflake",
    "cassandra",
    "elasticsearch",
    "opensearch",
    "dynamodb",
    "oracle",
    "clickhouse",
    "clickhouse-http",
    "spanner",
)
#: ``tls.mode`` values.
TLS_MODES = ("verify-full", "verify-ca", "insecure")
#: Headers an app rewrite may not set (Teleport's ``ReservedHeaders``).
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "teleport-jwt-assertion",
        "cf-access-token",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Server",
        "X-Forwarded-Ssl",
        "X-Forwarded-Port",
    )
)


class DynamicLabel(BaseModel):
    """A label whose value comes from running ``command`` every ``period``."""

    model_config = ConfigDict(extra="allow")

    command: StringList = []
    period: GoDuration | None = None
    result: str = ""


def _combined_labels(static: dict[str, str], dynamic: dict[str, DynamicLabel]) -> dict[str, str]:
    out = dict(static)
    for key, label in dynamic.items():
        out[key] = label.result
    return out


# --- db ----------------------------------------------------------------------------------


class DatabaseTLS(BaseModel):
    """``spec.tls`` of a database: how the agent verifies the database's certificate."""

    model_config = ConfigDict(extra="forbid")

    mode: str = "verify-full"
    ca_cert: str = ""
    server_name: str = ""
    trust_system_cert_pool: bool = False

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        value = value or "verify-full"
        if value not in TLS_MODES:
            raise ValueError(f"unknown TLS mode {value!r} (use one of: {', '.join(TLS_MODES)})")
        return value


class DatabaseAdminUser(BaseModel):
    """``spec.admin_user`` (auto-user provisioning)."""

    model_config = ConfigDict(extra="allow")

    name: str = ""
    default_database: str = ""


class DatabaseSpec(BaseModel):
    """``spec:`` of a database. Cloud-specific keys (``aws``, ``gcp``, ``ad``...) round-trip."""

    model_config = ConfigDict(extra="allow")

    protocol: str
    uri: str
    ca_cert: str = ""
    tls: DatabaseTLS = Field(default_factory=DatabaseTLS)
    admin_user: DatabaseAdminUser | None = None
    dynamic_labels: dict[str, DynamicLabel] = {}

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if value not in DATABASE_PROTOCOLS:
            raise ValueError(
                f"unsupported database protocol {value!r} "
                f"(supported: {', '.join(DATABASE_PROTOCOLS)})"
            )
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("missing database URI")
        return value

    @model_validator(mode="after")
    def _move_ca_cert(self) -> DatabaseSpec:
        # Teleport moves the deprecated spec.ca_cert into spec.tls.ca_cert.
        if self.ca_cert:
            if not self.tls.ca_cert:
                self.tls.ca_cert = self.ca_cert
            self.ca_cert = ""
        return self


@register("database", "databases", "dbs")
class Database(Resource):
    """A database users can reach through a Database Service."""

    KIND: ClassVar[str] = "db"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v3",)

    metadata: DNSLabelMetadata
    spec: DatabaseSpec

    @property
    def protocol(self) -> str:
        """``spec.protocol``."""
        return self.spec.protocol

    def all_labels(self) -> dict[str, str]:
        """Static labels plus the current results of dynamic labels (what RBAC matches)."""
        return _combined_labels(self.metadata.labels, self.spec.dynamic_labels)


class DatabaseServerSpec(BaseModel):
    """``spec:`` of a db_server heartbeat."""

    model_config = ConfigDict(extra="allow")

    host_id: str = ""
    hostname: str = ""
    database: Database
    version: str = ""
    proxy_ids: StringList = []


@register("db_servers")
class DatabaseServer(Resource):
    """A Database Service's heartbeat for one database; ``metadata.expires`` is its TTL."""

    KIND: ClassVar[str] = "db_server"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v3",)

    spec: DatabaseServerSpec

    @property
    def database(self) -> Database:
        """The database this server proxies."""
        return self.spec.database


# --- app ---------------------------------------------------------------------------------


class Header(BaseModel):
    """A header the App Service sets on requests to the application."""

    model_config = ConfigDict(extra="forbid")

    name: str
    value: str = ""


def _to_header(value: Any) -> Any:
    # The teleport.yaml form is "Name: value"; resources use {name, value}.
    if isinstance(value, str):
        name, sep, rest = value.partition(":")
        if not sep:
            raise ValueError(f"header {value!r} must look like 'Name: value'")
        return {"name": name.strip(), "value": rest.strip()}
    return value


class Rewrite(BaseModel):
    """``spec.rewrite``: Location rewriting, extra headers, JWT claims."""

    model_config = ConfigDict(extra="allow")

    redirect: StringList = []
    headers: list[Header] = []
    jwt_claims: str = ""

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_to_header(v) for v in value]
        return value

    @field_validator("headers")
    @classmethod
    def _not_reserved(cls, value: list[Header]) -> list[Header]:
        for h in value:
            if h.name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {h.name!r} is reserved and can't be rewritten")
        return value


class AppSpec(BaseModel):
    """``spec:`` of an application."""

    model_config = ConfigDict(extra="allow")

    uri: str = ""
    public_addr: str = ""
    insecure_skip_verify: bool = False
    rewrite: Rewrite | None = None
    dynamic_labels: dict[str, DynamicLabel] = {}

    @model_validator(mode="after")
    def _uri(self) -> AppSpec:
        extra = self.model_extra or {}
        if not self.uri.strip() and not extra.get("cloud"):
            raise ValueError("missing application URI")
        return self


@register("apps", "application", "applications")
class App(Resource):
    """A web (or TCP) application reachable through an App Service."""

    KIND: ClassVar[str] = "app"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v3",)

    metadata: DNSLabelMetadata
    spec: AppSpec

    def all_labels(self) -> dict[str, str]:
        """Static labels plus the current results of dynamic labels (what RBAC matches)."""
        return _combined_labels(self.metadata.labels, self.spec.dynamic_labels)


class AppServerSpec(BaseModel):
    """``spec:`` of an app_server heartbeat."""

    model_config = ConfigDict(extra="allow")

    host_id: str = ""
    hostname: str = ""
    app: App
    version: str = ""
    proxy_ids: StringList = []


@register("app_servers")
class AppServer(Resource):
    """An App Service's heartbeat for one application; ``metadata.expires`` is its TTL."""

    KIND: ClassVar[str] = "app_server"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v3",)

    spec: AppServerSpec

    @property
    def app(self) -> App:
        """The application this server proxies."""
        return self.spec.app


__all__ = [
    "DATABASE_PROTOCOLS",
    "App",
    "AppServer",
    "AppServerSpec",
    "AppSpec",
    "Database",
    "DatabaseAdminUser",
    "DatabaseServer",
    "DatabaseServerSpec",
    "DatabaseSpec",
    "DatabaseTLS",
    "DynamicLabel",
    "Header",
    "Rewrite",
]
