"""The files each tbot output writes (TELEPORT-REFERENCE §1.2 and the Machine ID guides).

Every output writes the identity artifacts: ``identity`` (an identity file:
key, certificate, host CA; loadable by ``tctl -i`` and ``tsh -i``), ``key``,
``tlscert`` and the three CA files ``teleport-host-ca.crt``,
``teleport-user-ca.crt``, ``teleport-database-ca.crt``. Then, per type:

=========================  ==================================================
database ``format: tls``   ``tls.crt``, ``tls.key``, ``tls.cas`` (host CA)
database ``format: mongo`` ``mongo.crt`` (certificate + key), ``mongo.cas`` (database CA)
database ``cockroach``     ``cockroach/node.crt``, ``cockroach/node.key``, ``cockroach/ca.crt`` (database CA)
application, specific_tls  ``tls.crt``, ``tls.key``, ``tls.cas`` (host CA)
=========================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.bot.config_outputs import (
    AnyOutput,
    ApplicationOutputConfig,
    DatabaseOutputConfig,
)

IDENTITY_FILE = "identity"
KEY = "key"
TLS_CERT = "tlscert"
HOST_CA = "teleport-host-ca.crt"
USER_CA = "teleport-user-ca.crt"
DB_CA = "teleport-database-ca.crt"
#: Files every output writes.
BASE_FILES = (IDENTITY_FILE, KEY, TLS_CERT, HOST_CA, USER_CA, DB_CA)
COCKROACH_DIR = "cockroach"


@dataclass(frozen=True)
class Credentials:
    """A private key, its certificate and the cluster's CAs (PEM)."""

    key_pem: bytes
    cert_pem: bytes
    host_ca: bytes
    user_ca: bytes
    db_ca: bytes
    expires: datetime


def _nl(pem: bytes) -> bytes:
    return pem if not pem or pem.endswith(b"\n") else pem + b"\n"


def _tls_files(creds: Credentials, ca: bytes) -> dict[str, bytes]:
    return {"tls.crt": _nl(creds.cert_pem), "tls.key": _nl(creds.key_pem), "tls.cas": _nl(ca)}


def render(out: AnyOutput, creds: Credentials) -> dict[str, bytes]:
    """``{file name: content}`` for ``out`` (names may contain ``cockroach/``)."""
    key, cert = _nl(creds.key_pem), _nl(creds.cert_pem)
    files = {
        IDENTITY_FILE: IdentityFile(key, cert, (_nl(creds.host_ca),)).to_bytes(),
        KEY: key,
        TLS_CERT: cert,
        HOST_CA: _nl(creds.host_ca),
        USER_CA: _nl(creds.user_ca),
        DB_CA: _nl(creds.db_ca),
    }
    if isinstance(out, DatabaseOutputConfig):
        if out.format == "tls":
            files.update(_tls_files(creds, creds.host_ca))
        elif out.format == "mongo":
            files["mongo.crt"] = cert + key
            files["mongo.cas"] = _nl(creds.db_ca)
        elif out.format == "cockroach":
            files[f"{COCKROACH_DIR}/node.crt"] = cert
            files[f"{COCKROACH_DIR}/node.key"] = key
            files[f"{COCKROACH_DIR}/ca.crt"] = _nl(creds.db_ca)
    elif isinstance(out, ApplicationOutputConfig) and out.specific_tls_naming:
        files.update(_tls_files(creds, creds.host_ca))
    return files


def describe(out: AnyOutput) -> list[tuple[str, bool]]:
    """``(name, is_directory)`` of everything ``out`` writes, for ``tbot init``."""
    names = [(n, False) for n in BASE_FILES]
    if isinstance(out, DatabaseOutputConfig):
        if out.format == "tls":
            names += [("tls.crt", False), ("tls.key", False), ("tls.cas", False)]
        elif out.format == "mongo":
            names += [("mongo.crt", False), ("mongo.cas", False)]
        elif out.format == "cockroach":
            names += [(COCKROACH_DIR, True)] + [
                (f"{COCKROACH_DIR}/{n}", False) for n in ("node.crt", "node.key", "ca.crt")
            ]
    elif isinstance(out, ApplicationOutputConfig) and out.specific_tls_naming:
        names += [("tls.crt", False), ("tls.key", False), ("tls.cas", False)]
    return names


def subdirs(out: AnyOutput) -> tuple[str, ...]:
    """Directories ``out`` needs inside its destination."""
    return tuple(n for n, is_dir in describe(out) if is_dir)
