"""Certificate authorities: generate, load, issue leaf certificates, pin and verify.

A cluster has five CAs (:class:`CAType`); each is a self-signed ECDSA P-256
certificate whose subject is ``CN=<cluster>, O=<cluster>, OU=<ca type>`` so the
five stay distinguishable when bundled together. Leaf certificates are
backdated by one minute (as Teleport does) and never outlive their CA.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.tlsca.der import (
    LeafTemplate,
    RandomPool,
    der_name,
    der_to_pem,
    extension_der,
    p256_ski,
    p256_spki_from_pem,
    raw_extension,
)
from jumpgate.core.tlsca.identity import (
    IDENTITY_EXTENSION_OID,
    MAX_COMMON_NAME_BYTES,
    Identity,
    encode_extension,
    identity_subject,
)
from jumpgate.core.tlsca.keys import (
    PublicKey,
    cert_to_pem,
    generate_private_key,
    load_certificate,
    load_private_key,
    load_public_key,
    private_key_to_pem,
)

#: Returns the current time as an aware UTC datetime; injectable for tests.
Clock = Callable[[], datetime]

#: Teleport backdates NotBefore by this much to absorb clock skew.
BACKDATE = timedelta(minutes=1)

_RENEW_HINT = "log in again (tsh login) or renew the bot's certificates"


class CAType(StrEnum):
    """The certificate authorities a cluster keeps."""

    HOST = "host"
    USER = "user"
    DB = "db"
    DB_CLIENT = "db_client"
    JWT = "jwt"


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _aware(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise BadParameter(
            f"{what} {t.isoformat()} has no time zone",
            hint="pass an aware datetime, e.g. datetime.now(UTC)",
        )
    return t


_SERIAL_RANDOM = RandomPool()


def _random_serial() -> int:
    """A random, non-zero, positive 128-bit serial number."""
    while True:
        serial = int.from_bytes(_SERIAL_RANDOM.take(16), "big")
        if serial:
            return serial


def ca_subject(ca_type: CAType, cluster_name: str) -> x509.Name:
    """Subject (and issuer) name of a cluster CA: ``CN=cluster, O=cluster, OU=type``."""
    if not cluster_name:
        raise BadParameter(
            "a certificate authority needs a cluster name",
            hint="set cluster_name in the auth service configuration",
        )
    if len(cluster_name.encode("utf-8")) > MAX_COMMON_NAME_BYTES:
        raise BadParameter(
            f"cluster name {cluster_name!r} is longer than {MAX_COMMON_NAME_BYTES} bytes, "
            "the X.509 limit for a certificate common name",
            hint=f"choose a cluster name of at most {MAX_COMMON_NAME_BYTES} bytes",
        )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(ca_type)),
        ]
    )


def ca_pin(cert: x509.Certificate) -> str:
    """Teleport's CA pin: ``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def check_pins(cert: x509.Certificate, pins: Sequence[str]) -> None:
    """Raise :class:`AccessDenied` unless ``cert``'s pin is one of ``pins``.

    The comparison ignores case and surrounding whitespace.
    """
    if isinstance(pins, str):
        pins = [pins]
    actual = ca_pin(cert)
    wanted = [p.strip() for p in pins if p.strip()]
    if not wanted:
        raise BadParameter(
            "no CA pin was given to check the cluster's CA against",
            hint="pass the pin 'tctl status' prints (sha256:...) with --ca-pin",
        )
    if any(p.lower() == actual for p in wanted):
        return
    raise AccessDenied(
        f"the cluster's CA pin {actual} does not match any of the expected pins "
        f"({', '.join(wanted)})",
        hint="check the pin against 'tctl status' on the cluster; if the CA was rotated, "
        "update ca_pins / --ca-pin, otherwise you may be talking to the wrong server",
    )


def _ca_label(trusted: Sequence[x509.Certificate]) -> str:
    for ca in trusted:
        ous = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if ous and isinstance(ous[0].value, str):
            return f"this cluster's {ous[0].value} CA"
    return "this cluster's CA"


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "server auth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client auth",
}

_PURPOSES = {
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH, "client authentication"),
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, "server authentication"),
}


def verify_certificate(
    cert: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    *,
    now: datetime,
    purpose: str = "client",
) -> None:
    """Check ``cert`` was issued by one of ``trusted``, is valid at ``now``, fits ``purpose``.

    ``purpose`` is ``"client"`` or ``"server"``; a certificate without an extended
    key usage extension is valid for both (RFC 5280). Raises
    :class:`AccessDenied` with a message in the user's terms.
    """
    if purpose not in _PURPOSES:
        raise BadParameter(
            f"unknown certificate purpose {purpose!r}", hint="use 'client' or 'server'"
        )
    _aware(now, "verification time")
    for ca in trusted:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        break
    else:
        raise AccessDenied(
            f"certificate was not issued by {_ca_label(trusted)} "
            f"(issuer: {cert.issuer.rfc4514_string()})",
            hint="the certificate belongs to another cluster or to a CA that was rotated "
            f"out; {_RENEW_HINT}",
        )
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    if now > not_after:
        raise AccessDenied(
            f"certificate expired at {_fmt(not_after)} (now {_fmt(now)})", hint=_RENEW_HINT
        )
    if now < not_before:
        raise AccessDenied(
            f"certificate is not valid before {_fmt(not_before)} (now {_fmt(now)})",
            hint="check that this machine's clock and the cluster's agree (NTP)",
        )
    eku_oid, eku_text = _PURPOSES[purpose]
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if eku_oid in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        return
    have = ", ".join(_EKU_NAMES.get(u, u.dotted_string) for u in eku) or "none"
    raise AccessDenied(
        f"certificate is not valid for {eku_text} (its extended key usage: {have})",
        hint=f"use a {purpose} certificate here: "
        + ("a user or bot certificate" if purpose == "client" else "the service's own"),
    )


class CertAuthority:
    """One cluster CA: its certificate, optionally its private key, and issuance.

    Without a key the authority can only be trusted (verification, pinning),
    not issue. The issuer name and authority key identifier are computed once
    here, so :meth:`issue` does no per-call parsing of CA material.
    """

    def __init__(
        self,
        ca_type: CAType,
        cluster_name: str,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey | None,
        *,
        clock: Clock = utcnow,
        additional_trusted: Sequence[x509.Certificate] = (),
    ) -> None:
        self.ca_type = CAType(ca_type)
        self.cluster_name = cluster_name
        self.cert = cert
        self.key = key
        self.clock = clock
        self._additional = tuple(additional_trusted)
        self._trusted_pem: bytes | None = None
        if key is not None and key.public_key() != cert.public_key():
            raise BadParameter(
                f"the {self.ca_type} CA private key of cluster {cluster_name!r} does not "
                "match its certificate",
                hint="load the key file that belongs to this CA certificate",
            )
        self._issuer = cert.subject
        self._not_after = cert.not_valid_after_utc
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            ca_pub = cert.public_key()
            if not isinstance(ca_pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                raise BadParameter(
                    f"the {self.ca_type} CA certificate has an unsupported key type",
                    hint="use an ECDSA P-256 CA",
                ) from None
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_pub)
        else:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self._cert_pem: bytes = cert_to_pem(cert)
        self._template: LeafTemplate | None = None
        if key is not None:
            self._template = LeafTemplate(
                key,
                issuer=self._issuer,
                aki=self._aki,
                basic_constraints=_LEAF_BASIC_CONSTRAINTS,
                key_usage=_LEAF_KEY_USAGE,
            )

    def __repr__(self) -> str:
        return (
            f"CertAuthority({self.ca_type.value!r}, {self.cluster_name!r}, "
            f"pin={self.pin()!r}, has_key={self.key is not None})"
        )

    @classmethod
    def generate(
        cls,
        ca_type: CAType,
        cluster_name: str,
        *,
        clock: Clock = utcnow,
        ttl: timedelta = timedelta(days=3650),
    ) -> CertAuthority:
        """Create a new self-signed CA with a fresh P-256 key (the JWT CA too)."""
        ca_type = CAType(ca_type)
        name = ca_subject(ca_type, cluster_name)
        key = generate_private_key()
        now = _aware(clock(), "clock time")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(ca_type, cluster_name, cert, key, clock=clock)

    @classmethod
    def from_pem(
        cls,
        ca_type: CAType,
        cluster_name: str,
        cert_pem: bytes,
        key_pem: bytes | None,
        *,
        clock: Clock = utcnow,
    ) -> CertAuthority:
        """Load a CA from its PEM certificate and (optional) PEM private key."""
        cert = load_certificate(cert_pem)
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise BadParameter(
                f"the {CAType(ca_type)} CA certificate of cluster {cluster_name!r} is not a "
                "CA certificate (BasicConstraints CA:TRUE is missing)",
                hint="load the cluster's CA certificate, not a leaf certificate",
            )
        key = load_private_key(key_pem) if key_pem is not None else None
        return cls(ca_type, cluster_name, cert, key, clock=clock)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        """The CA private key as PKCS#8 PEM; raises :class:`NotFound` if this copy has none."""
        pem: bytes = private_key_to_pem(self._require_key())
        return pem

    @property
    def trusted_certs(self) -> list[x509.Certificate]:
        """Certificates to trust for this CA: the active one first, then any additional."""
        return [self.cert, *self._additional]

    @property
    def trusted_pem(self) -> bytes:
        """PEM of :attr:`trusted_certs`, in that order (computed once: both are fixed)."""
        pem = self._trusted_pem
        if pem is None:
            pem = self._trusted_pem = b"".join(
                [self._cert_pem, *(cert_to_pem(c) for c in self._additional)]
            )
        return pem

    def pin(self) -> str:
        """This CA's pin (see :func:`ca_pin`)."""
        return ca_pin(self.cert)

    def _require_key(self) -> ec.EllipticCurvePrivateKey:
        if self.key is None:
            raise NotFound(
                f"the {self.ca_type} CA of cluster {self.cluster_name!r} has no private key "
                "here, only its certificate",
                hint="issue certificates on the auth service, which holds the CA keys",
            )
        return self.key

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | bytes,
        *,
        not_after: datetime,
        identity: Identity | None = None,
        subject: x509.Name | None = None,
        dns_names: Sequence[str] = (),
        server: bool = False,
        client: bool = True,
        builder: bool = False,
    ) -> x509.Certificate:
        """Sign a leaf certificate for ``public_key`` (an object or PEM bytes).

        Give exactly one of ``identity`` (subject from it, plus the identity
        extension) or ``subject``. NotBefore is ``clock() - 1 minute``; NotAfter
        is capped at the CA's own NotAfter. ``dns_names`` become the SAN (IP
        addresses as IPAddress entries). ``server``/``client`` select the
        extended key usages.

        The certificate is encoded from this CA's precomputed
        :class:`~jumpgate.core.tlsca.der.LeafTemplate`; ``builder=True`` takes the
        reference path through :class:`x509.CertificateBuilder` instead, which
        yields the same TBSCertificate bytes for the same serial and times.
        """
        key = self._require_key()
        if (identity is None) == (subject is None):
            raise BadParameter(
                "issue() needs exactly one of identity= or subject=",
                hint="pass identity= for user/bot/host certificates, subject= for others",
            )
        if not (server or client):
            raise BadParameter(
                "a certificate must be usable for server or client authentication",
                hint="pass server=True and/or client=True",
            )
        if builder:
            pub: PublicKey
            if isinstance(public_key, bytes | bytearray):
                pub = load_public_key(bytes(public_key))
            else:
                pub = public_key
        else:
            spki, ski = _leaf_public_key(public_key)
        now = _aware(self.clock(), "clock time")
        _aware(not_after, "not_after")
        if not_after <= now:
            raise BadParameter(
                f"the requested expiry {_fmt(not_after)} is not in the future (now {_fmt(now)})",
                hint="request a positive TTL",
            )
        if now >= self._not_after:
            raise BadParameter(
                f"the {self.ca_type} CA of cluster {self.cluster_name!r} expired at "
                f"{_fmt(self._not_after)}",
                hint="rotate the certificate authority (tctl auth rotate)",
            )
        not_after = min(not_after, self._not_after)
        serial = _random_serial()
        if builder:
            return self._build(
                key,
                pub,
                serial=serial,
                not_before=now - BACKDATE,
                not_after=not_after,
                identity=identity,
                subject=subject,
                dns_names=dns_names,
                server=server,
                client=client,
            )
        assert self._template is not None
        if identity is not None:
            subject_der = der_name(identity.username, identity.groups)
        else:
            assert subject is not None
            subject_der = subject.public_bytes()
        extensions = []
        if dns_names:
            extensions.append(
                extension_der(x509.SubjectAlternativeName(_san_entries(dns_names)), critical=False)
            )
        if identity is not None:
            extensions.append(raw_extension(IDENTITY_EXTENSION_OID, encode_extension(identity)))
        tbs = self._template.tbs(
            serial=serial,
            not_before=now - BACKDATE,
            not_after=not_after,
            subject_der=subject_der,
            spki_der=spki,
            ski=ski,
            extensions=extensions,
            server=server,
            client=client,
        )
        der = self._template.sign(tbs)
        cert = x509.load_der_x509_certificate(der)
        global _last_issued
        _last_issued = (cert, der)
        return cert

    def _build(
        self,
        key: ec.EllipticCurvePrivateKey,
        pub: PublicKey,
        *,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        identity: Identity | None,
        subject: x509.Name | None,
        dns_names: Sequence[str],
        server: bool,
        client: bool,
    ) -> x509.Certificate:
        """The reference path: the same leaf through :class:`x509.CertificateBuilder`."""
        name = identity_subject(identity) if identity is not None else subject
        assert name is not None
        eku = []
        if server:
            eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self._issuer)
            .public_key(pub)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san_entries(dns_names)), critical=False
            )
        if identity is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, encode_extension(identity)),
                critical=False,
            )
        return builder.sign(key, hashes.SHA256())


def _leaf_public_key(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | bytes,
) -> tuple[bytes, bytes]:
    """(DER SubjectPublicKeyInfo, subject key identifier) of a leaf's public key.

    A canonical P-256 PEM is read directly (point checked to be on the curve);
    any other PEM goes through :func:`load_public_key` (BadParameter if it is not
    an ECDSA/RSA public key). The identifier is what
    :meth:`x509.SubjectKeyIdentifier.from_public_key` computes.
    """
    pub: PublicKey
    if isinstance(public_key, bytes | bytearray):
        pem = bytes(public_key)
        spki = p256_spki_from_pem(pem)
        if spki is not None:
            return spki, p256_ski(spki)
        pub = load_public_key(pem)
    else:
        pub = public_key
    spki = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki, x509.SubjectKeyIdentifier.from_public_key(pub).digest


_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)

#: (certificate, its DER) of the leaf this process issued last: re-serialising a
#: parsed certificate costs more than the rest of PEM encoding, and the caller of
#: ``issue()`` nearly always wants the PEM of what it just got.
_last_issued: tuple[x509.Certificate, bytes] | None = None


def certificate_pem(cert: x509.Certificate) -> bytes:
    """``cert`` as PEM, like :func:`cert_to_pem`; cheap for the leaf issued last."""
    last = _last_issued
    if last is not None and last[0] is cert:
        return der_to_pem(last[1], "CERTIFICATE")
    return cert_to_pem(cert)


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(names, str):
        names = [names]
    out: list[x509.GeneralName] = []
    for raw in names:
        name = raw.strip()
        if not name:
            raise BadParameter(
                "an empty name was given for the certificate's subject alternative names",
                hint="remove the empty entry from the list of DNS names / addresses",
            )
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            try:
                out.append(x509.DNSName(name))
            except ValueError as exc:
                raise BadParameter(
                    f"{name!r} is neither an IP address nor a DNS name ({exc})",
                    hint="use names such as db.example.com, *.example.com or 10.0.0.5",
                ) from None
    return out
