"""The identity codec: who a certificate speaks for, and how that is written into X.509.

An :class:`Identity` travels inside every certificate the cluster issues:

* the subject carries ``CN=<username>`` and one ``O=<role>`` attribute per role,
  in order;
* everything else lives in ONE non-critical extension under
  :data:`IDENTITY_EXTENSION_OID`, whose ``extnValue`` is a DER ``UTF8String``
  holding canonical JSON (sorted keys, no spaces, UTF-8) with a ``"v": 1``
  version key and only the fields that differ from their defaults.

The JSON key names are short and stable (changing one is a format break):

=====  ==================  =====  ==================
key    field               key    field
=====  ==================  =====  ==================
v      format version (1)  bn     bot_name
t      traits              bi     bot_instance_id
u      usage               gen    generation
l      logins              rn     renewable
c      cluster_name        nr     disallow_reissue
rc     route_to_cluster    imp    impersonator
db     route_to_database   ip     login_ip
app    route_to_app        sr     system_role
=====  ==================  =====  ==================

``db`` is an object with ``s`` (service_name), ``p`` (protocol), ``u`` (username),
``d`` (database); ``app`` an object with ``n`` (name), ``a`` (public_addr),
``c`` (cluster_name), ``s`` (session_id); again only non-empty members.

Encoding is deterministic: the same identity always yields the same bytes,
whatever order its traits were given in.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from jumpgate.core.errors import AccessDenied, BadParameter
from jumpgate.core.tlsca.der import der_length

#: Private OID of the identity extension (non-critical).
IDENTITY_EXTENSION_OID: x509.ObjectIdentifier = x509.ObjectIdentifier("1.3.9999.7.1")

#: Version written into (and required from) the extension's JSON.
IDENTITY_FORMAT_VERSION = 1

#: X.509 upper bound on a common name (ub-common-name), in UTF-8 bytes.
MAX_COMMON_NAME_BYTES = 64

_UTF8STRING_TAG = 0x0C


def _str_tuple(value: Iterable[str] | str, what: str) -> tuple[str, ...]:
    """Normalise a list of strings to a tuple, refusing a bare string or non-strings."""
    if isinstance(value, str):
        raise BadParameter(
            f"{what} must be a list of strings, got the single string {value!r}",
            hint=f"wrap it in a list: [{value!r}]",
        )
    out = tuple(value)
    for item in out:
        if not isinstance(item, str):
            raise BadParameter(
                f"{what} must contain only strings, got {item!r}",
                hint=f"quote every entry of {what}",
            )
    return out


@dataclass(frozen=True)
class RouteToDatabase:
    """Which database (and as whom) a database-access certificate is for."""

    service_name: str
    protocol: str
    username: str = ""
    database: str = ""


@dataclass(frozen=True)
class RouteToApp:
    """Which web application an app-access certificate is for."""

    name: str
    public_addr: str = ""
    cluster_name: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class Identity:
    """Everything a cluster certificate asserts about its holder.

    Lists are normalised to tuples and traits to ``{name: tuple(values)}`` on
    construction, so identities built from lists compare equal to decoded ones.
    ``expires`` comes from the certificate's NotAfter and is never encoded nor
    compared.
    """

    username: str
    groups: tuple[str, ...] = ()
    traits: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    usage: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()
    cluster_name: str = ""
    route_to_cluster: str = ""
    route_to_database: RouteToDatabase | None = None
    route_to_app: RouteToApp | None = None
    bot_name: str = ""
    bot_instance_id: str = ""
    generation: int = 0
    renewable: bool = False
    disallow_reissue: bool = False
    impersonator: str = ""
    login_ip: str = ""
    system_role: str = ""
    expires: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise BadParameter(
                "an identity needs a non-empty user name (the certificate's common name)",
                hint="set the user, bot or host name the certificate is issued to",
            )
        if len(self.username.encode("utf-8")) > MAX_COMMON_NAME_BYTES:
            raise BadParameter(
                f"user name {self.username!r} is longer than {MAX_COMMON_NAME_BYTES} bytes, "
                "the X.509 limit for a certificate common name",
                hint=f"use a user name of at most {MAX_COMMON_NAME_BYTES} bytes (UTF-8)",
            )
        groups = _str_tuple(self.groups, "roles")
        for role in groups:
            if not role:
                raise BadParameter(
                    "an identity lists an empty role name",
                    hint="remove the empty entry from the user's roles",
                )
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "usage", _str_tuple(self.usage, "usage"))
        object.__setattr__(self, "logins", _str_tuple(self.logins, "logins"))
        traits: dict[str, tuple[str, ...]] = {}
        for key, values in self.traits.items():
            if not isinstance(key, str):
                raise BadParameter(
                    f"trait names must be strings, got {key!r}",
                    hint="quote the trait name",
                )
            traits[key] = _str_tuple(values, f"trait {key!r}")
        object.__setattr__(self, "traits", traits)
        if (
            isinstance(self.generation, bool)
            or not isinstance(self.generation, int)
            or self.generation < 0
        ):
            raise BadParameter(
                f"bot certificate generation must be a non-negative integer, "
                f"got {self.generation!r}",
                hint="start at 0 and count up on each renewal",
            )

    @property
    def is_bot(self) -> bool:
        """True when this identity belongs to a machine bot (tbot)."""
        return bool(self.bot_name)

    def traits_dict(self) -> dict[str, list[str]]:
        """Traits as a plain, key-sorted ``{name: [values]}`` dict (e.g. for templates)."""
        return {k: list(self.traits[k]) for k in sorted(self.traits)}

    def with_(self, **changes: Any) -> Identity:
        """Return a copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- DER


def _malformed(why: str) -> AccessDenied:
    return AccessDenied(
        f"the certificate's identity extension is malformed: {why}",
        hint="the certificate was not issued by a compatible cluster; log in again "
        "(tsh login) or renew the bot's certificates",
    )


def _der_utf8string_content(der: bytes) -> bytes:
    """Return the content octets of one DER UTF8String occupying all of ``der``."""
    if len(der) < 2:
        raise _malformed("it is shorter than a DER header")
    if der[0] != _UTF8STRING_TAG:
        raise _malformed(f"expected a DER UTF8String (tag 0x0c), found tag 0x{der[0]:02x}")
    first = der[1]
    if first < 0x80:
        length, start = first, 2
    else:
        nbytes = first & 0x7F
        if nbytes == 0:
            raise _malformed("indefinite length is not allowed in DER")
        if nbytes > 4:
            raise _malformed(f"a {nbytes}-byte length field is too long")
        if len(der) < 2 + nbytes:
            raise _malformed("the length field is truncated")
        body = der[2 : 2 + nbytes]
        if body[0] == 0:
            raise _malformed("the length field has a leading zero byte (not DER)")
        length, start = int.from_bytes(body, "big"), 2 + nbytes
        if length < 0x80:
            raise _malformed("the long-form length encodes a short length (not DER)")
    if len(der) - start != length:
        raise _malformed(
            f"the header announces {length} content bytes but {len(der) - start} follow"
        )
    return der[start:]


# --------------------------------------------------------------------------- encode


def _compact(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Keep only the non-default (truthy) members."""
    return {k: v for k, v in pairs if v}


def _to_json_obj(identity: Identity) -> dict[str, Any]:
    obj = _compact(
        [
            ("t", {k: list(v) for k, v in identity.traits.items()}),
            ("u", list(identity.usage)),
            ("l", list(identity.logins)),
            ("c", identity.cluster_name),
            ("rc", identity.route_to_cluster),
            ("bn", identity.bot_name),
            ("bi", identity.bot_instance_id),
            ("gen", identity.generation),
            ("rn", identity.renewable),
            ("nr", identity.disallow_reissue),
            ("imp", identity.impersonator),
            ("ip", identity.login_ip),
            ("sr", identity.system_role),
        ]
    )
    db = identity.route_to_database
    if db is not None:
        obj["db"] = _compact(
            [("s", db.service_name), ("p", db.protocol), ("u", db.username), ("d", db.database)]
        )
    app = identity.route_to_app
    if app is not None:
        obj["app"] = _compact(
            [
                ("n", app.name),
                ("a", app.public_addr),
                ("c", app.cluster_name),
                ("s", app.session_id),
            ]
        )
    obj["v"] = IDENTITY_FORMAT_VERSION
    return obj


def encode_extension(identity: Identity) -> bytes:
    """Encode ``identity`` (minus subject fields) as the extension's DER ``extnValue``."""
    text = json.dumps(
        _to_json_obj(identity), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    content = text.encode("utf-8")
    return bytes([_UTF8STRING_TAG]) + der_length(len(content)) + content


def identity_subject(identity: Identity) -> x509.Name:
    """Subject name for ``identity``: ``CN=username`` then one ``O=`` per role, in order."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, identity.username)]
    attrs.extend(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in identity.groups)
    return x509.Name(attrs)


# --------------------------------------------------------------------------- decode


def decode_extension(der: bytes) -> dict[str, Any]:
    """Decode an extension ``extnValue`` to its JSON object, checking the version.

    Raises :class:`AccessDenied` when the bytes are not a DER UTF8String holding a
    JSON object with ``"v": 1``.
    """
    content = _der_utf8string_content(bytes(der))
    try:
        obj = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"its content is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _malformed(f"expected a JSON object, found {type(obj).__name__}")
    version = obj.get("v")
    if isinstance(version, bool) or version != IDENTITY_FORMAT_VERSION:
        raise AccessDenied(
            f"the certificate's identity extension has format version {version!r}; "
            f"this program understands only version {IDENTITY_FORMAT_VERSION}",
            hint="upgrade jumpgate to the cluster's version, or log in again to get a "
            "certificate this version understands",
        )
    return obj


def _get(obj: Mapping[str, Any], key: str, check: Callable[[Any], bool], default: Any) -> Any:
    if key not in obj:
        return default
    value = obj[key]
    if not check(value):
        raise _malformed(f"field {key!r} has the wrong type ({value!r})")
    return value


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_traits(v: Any) -> bool:
    return isinstance(v, dict) and all(_is_str_list(x) for x in v.values())


def _is_obj(v: Any) -> bool:
    return isinstance(v, dict)


_TOP_KEYS = frozenset(
    {"v", "t", "u", "l", "c", "rc", "db", "app", "bn", "bi", "gen", "rn", "nr", "imp", "ip", "sr"}
)
_DB_KEYS = ("s", "p", "u", "d")
_APP_KEYS = ("n", "a", "c", "s")


def _route_fields(obj: Mapping[str, Any], key: str, names: tuple[str, ...]) -> list[str] | None:
    sub = _get(obj, key, _is_obj, None)
    if sub is None:
        return None
    unknown = set(sub) - set(names)
    if unknown:
        raise _malformed(f"unknown field(s) {sorted(unknown)} in {key!r}")
    return [_get(sub, n, _is_str, "") for n in names]


def _identity_from_fields(
    username: str, groups: tuple[str, ...], obj: Mapping[str, Any], expires: datetime | None
) -> Identity:
    unknown = set(obj) - _TOP_KEYS
    if unknown:
        raise _malformed(f"unknown field(s) {sorted(unknown)} for version 1")
    db = _route_fields(obj, "db", _DB_KEYS)
    app = _route_fields(obj, "app", _APP_KEYS)
    traits = _get(obj, "t", _is_traits, {})
    try:
        return Identity(
            username=username,
            groups=groups,
            traits={k: tuple(v) for k, v in traits.items()},
            usage=tuple(_get(obj, "u", _is_str_list, [])),
            logins=tuple(_get(obj, "l", _is_str_list, [])),
            cluster_name=_get(obj, "c", _is_str, ""),
            route_to_cluster=_get(obj, "rc", _is_str, ""),
            route_to_database=RouteToDatabase(*db) if db is not None else None,
            route_to_app=RouteToApp(*app) if app is not None else None,
            bot_name=_get(obj, "bn", _is_str, ""),
            bot_instance_id=_get(obj, "bi", _is_str, ""),
            generation=_get(obj, "gen", _is_nat, 0),
            renewable=_get(obj, "rn", _is_bool, False),
            disallow_reissue=_get(obj, "nr", _is_bool, False),
            impersonator=_get(obj, "imp", _is_str, ""),
            login_ip=_get(obj, "ip", _is_str, ""),
            system_role=_get(obj, "sr", _is_str, ""),
            expires=expires,
        )
    except BadParameter as exc:
        raise AccessDenied(
            f"the certificate carries an invalid identity: {exc.message}",
            hint="present a certificate issued by the cluster (tsh login or tbot)",
        ) from None


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """Read the :class:`Identity` a cluster certificate asserts.

    The subject gives ``username`` (CN) and ``groups`` (each O, in order); the
    identity extension, if present, gives the rest; ``expires`` is the
    certificate's NotAfter. A certificate without the extension (a database
    server's, say) yields an identity with just the name and groups.

    Raises :class:`AccessDenied` if the CN is missing or the extension is
    malformed or of an unknown version.
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or not isinstance(cns[0].value, str) or not cns[0].value:
        raise AccessDenied(
            f"the certificate (subject {cert.subject.rfc4514_string()!r}) names no user: "
            "its subject has no common name",
            hint="present a certificate issued by the cluster (tsh login or tbot)",
        )
    username = cns[0].value
    groups = tuple(
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    )
    expires = cert.not_valid_after_utc
    try:
        ext = cert.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    except x509.ExtensionNotFound:
        obj: Mapping[str, Any] = {}
    else:
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
            raise _malformed("it was parsed as a known extension type")
        obj = decode_extension(value.value)
    return _identity_from_fields(username, groups, obj, expires)
