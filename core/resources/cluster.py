"""Cluster-wide resources: ``lock``, ``cert_authority``, ``cluster_name``,
``cluster_auth_preference`` (all v2)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jumpgate.core.resources.base import Resource, register
from jumpgate.core.resources.fields import PemBytes, Timestamp, secret_field

# --- lock --------------------------------------------------------------------------------


class LockTarget(BaseModel):
    """What a lock blocks. Other Teleport targets (``mfa_device``, ``device``...) round-trip."""

    model_config = ConfigDict(extra="allow")

    user: str = ""
    role: str = ""
    login: str = ""
    bot_instance_id: str = ""
    join_token: str = ""
    server_id: str = ""

    @model_validator(mode="after")
    def _not_empty(self) -> LockTarget:
        fields = [self.user, self.role, self.login, self.bot_instance_id]
        fields += [self.join_token, self.server_id]
        if not any(fields) and not any(v for v in (self.model_extra or {}).values()):
            raise ValueError(
                "at least one target field must be set "
                "(user, role, login, bot_instance_id, join_token or server_id)"
            )
        return self

    def set_fields(self) -> dict[str, str]:
        """The target fields that are set, e.g. ``{"user": "bot-app"}``."""
        out = {k: v for k, v in self.model_dump().items() if v}
        return {k: str(v) for k, v in out.items()}


class LockSpec(BaseModel):
    """``spec:`` of a lock."""

    model_config = ConfigDict(extra="allow")

    target: LockTarget
    message: str = ""
    expires: Timestamp | None = None
    created_by: str = ""
    created_at: Timestamp | None = None


@register("locks")
class Lock(Resource):
    """A lock: while in force, matching users/roles/tokens get no certificates or sessions."""

    KIND: ClassVar[str] = "lock"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)

    spec: LockSpec

    def is_expired(self, now: datetime | None = None) -> bool:
        """Expired when ``spec.expires`` (or ``metadata.expires``) is not after ``now``."""
        when = now or datetime.now(UTC)
        if self.spec.expires is not None and self.spec.expires <= when:
            return True
        return super().is_expired(when)

    def in_force(self, now: datetime | None = None) -> bool:
        """The opposite of :meth:`is_expired`."""
        return not self.is_expired(now)


# --- cert_authority ----------------------------------------------------------------------

#: ``types.CertAuthType`` values.
CA_TYPES = (
    "host",
    "user",
    "db",
    "db_client",
    "jwt",
    "openssh",
    "saml_idp",
    "oidc_idp",
    "spiffe",
    "okta",
)


class TLSKeyPair(BaseModel):
    """A CA certificate and (secret) private key, PEM."""

    model_config = ConfigDict(extra="allow")

    cert: PemBytes = b""
    key: PemBytes = secret_field()
    key_type: str = ""


class JWTKeyPair(BaseModel):
    """A JWT signing key pair, PEM; the private half is secret."""

    model_config = ConfigDict(extra="allow")

    public_key: PemBytes = b""
    private_key: PemBytes = secret_field()
    private_key_type: str = ""


class SSHKeyPair(BaseModel):
    """An SSH CA key pair; the private half is secret."""

    model_config = ConfigDict(extra="allow")

    public_key: PemBytes = b""
    private_key: PemBytes = secret_field()
    private_key_type: str = ""


class CAKeySet(BaseModel):
    """``active_keys`` / ``additional_trusted_keys``."""

    model_config = ConfigDict(extra="allow")

    ssh: list[SSHKeyPair] = []
    tls: list[TLSKeyPair] = []
    jwt: list[JWTKeyPair] = []


class CertAuthoritySpec(BaseModel):
    """``spec:`` of a certificate authority."""

    model_config = ConfigDict(extra="allow")

    type: str
    cluster_name: str
    active_keys: CAKeySet = Field(default_factory=CAKeySet)
    additional_trusted_keys: CAKeySet = Field(default_factory=CAKeySet)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in CA_TYPES:
            raise ValueError(f"unknown CA type {value!r} (known: {', '.join(CA_TYPES)})")
        return value


@register("cert_authorities", "cas", "ca", "cert_authority")
class CertAuthority(Resource):
    """A cluster CA of one type; private keys are secret."""

    KIND: ClassVar[str] = "cert_authority"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)

    spec: CertAuthoritySpec

    @model_validator(mode="before")
    @classmethod
    def _sub_kind(cls, data: Any) -> Any:
        # Teleport sets sub_kind to the CA type.
        if isinstance(data, dict) and not data.get("sub_kind"):
            spec = data.get("spec")
            if isinstance(spec, dict) and isinstance(spec.get("type"), str):
                data = {**data, "sub_kind": spec["type"]}
        return data

    @property
    def ca_type(self) -> str:
        """``spec.type`` (host, user, db, db_client, jwt, ...)."""
        return self.spec.type


# --- cluster_name / cluster_auth_preference ----------------------------------------------


class ClusterNameSpec(BaseModel):
    """``spec:`` of cluster_name."""

    model_config = ConfigDict(extra="allow")

    cluster_name: str
    cluster_id: str = ""


@register()
class ClusterName(Resource):
    """The cluster's name (immutable after first start) and id."""

    KIND: ClassVar[str] = "cluster_name"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)
    DEFAULT_NAME: ClassVar[str] = "cluster-name"

    spec: ClusterNameSpec


#: ``second_factor`` values.
SECOND_FACTORS = ("off", "otp", "webauthn", "on", "optional")
#: ``type`` values of cluster_auth_preference.
AUTH_TYPES = ("local", "github", "oidc", "saml")


class AuthPreferenceSpec(BaseModel):
    """``spec:`` of cluster_auth_preference."""

    model_config = ConfigDict(extra="allow")

    type: str = "local"
    second_factor: str = "off"

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in AUTH_TYPES:
            raise ValueError(
                f"unknown authentication type {value!r} (known: {', '.join(AUTH_TYPES)})"
            )
        return value

    @field_validator("second_factor", mode="before")
    @classmethod
    def _yaml_bool(cls, value: Any) -> Any:
        # Unquoted `off`/`on` arrive from YAML 1.1 as booleans.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @field_validator("second_factor")
    @classmethod
    def _second_factor(cls, value: str) -> str:
        if value not in SECOND_FACTORS:
            raise ValueError(
                f"unknown second_factor {value!r} (known: {', '.join(SECOND_FACTORS)})"
            )
        return value


@register("cap", "cluster_auth_preferences")
class ClusterAuthPreference(Resource):
    """How users authenticate: local passwords and which second factor."""

    KIND: ClassVar[str] = "cluster_auth_preference"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v2",)
    DEFAULT_NAME: ClassVar[str] = "cluster-auth-preference"

    spec: AuthPreferenceSpec = Field(default_factory=AuthPreferenceSpec)
