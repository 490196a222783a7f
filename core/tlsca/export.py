"""CA export forms shared by ``tctl auth export`` and ``/webapi/auth/export``."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jumpgate.core.errors import BadParameter
from jumpgate.core.tlsca.ca import CAType

#: ``--type`` / ``?type=`` values → (CA, form). ``tls`` is an alias of ``tls-host``.
EXPORT_TYPES: dict[str, tuple[CAType, str]] = {
    "tls": (CAType.HOST, "pem"),
    "tls-host": (CAType.HOST, "pem"),
    "tls-user": (CAType.USER, "pem"),
    "tls-user-der": (CAType.USER, "der"),
    "db": (CAType.DB, "pem"),
    "db-der": (CAType.DB, "der"),
    "db-client": (CAType.DB_CLIENT, "pem"),
    "db-client-der": (CAType.DB_CLIENT, "der"),
    "host": (CAType.HOST, "ssh-host"),
    "user": (CAType.USER, "ssh-user"),
    "jwt": (CAType.JWT, "pem"),
}


def export_ca_type(export_type: str) -> CAType:
    """The CA behind an export type; BadParameter listing the valid ones."""
    if export_type not in EXPORT_TYPES:
        raise BadParameter(
            f"unknown CA type {export_type!r}", hint="use one of: " + ", ".join(EXPORT_TYPES)
        )
    return EXPORT_TYPES[export_type][0]


def render_export(cluster_name: str, certs: Sequence[x509.Certificate], export_type: str) -> bytes:
    """The CA's public material as ``tctl auth export --type=…`` prints it.

    PEM for the TLS types, DER for ``*-der``; ``host``/``user`` give the CA's public
    key as OpenSSH ``@cert-authority`` / ``cert-authority`` lines (Jumpgate has no
    separate SSH CAs; these let OpenSSH-style tooling pin the same keys).
    """
    export_ca_type(export_type)
    form = EXPORT_TYPES[export_type][1]
    if form == "pem":
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if form == "der":
        return certs[0].public_bytes(serialization.Encoding.DER)
    lines = []
    for c in certs:
        key = c.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        if form == "ssh-host":
            lines.append(
                f"@cert-authority {cluster_name},*.{cluster_name} {key.decode()} type=host"
            )
        else:
            lines.append(f"cert-authority {key.decode()} clustername={cluster_name}&type=user")
    return ("\n".join(lines) + "\n").encode()
