"""Identity files: one PEM file with a private key, a certificate and the trusted CAs.

The same layout as Teleport's ``tctl auth sign --user --out=FILE`` / ``tbot``
``identity`` output, minus the SSH parts: the private key, then the TLS
certificate, then every trusted TLS CA certificate. Loadable directly by
OpenSSL-based clients (``curl --cert FILE``, Python ``load_cert_chain``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from jumpgate.core.errors import BadParameter, NotFound
from jumpgate.core.fsutil import atomic_write
from jumpgate.core.tlsca import Identity, identity_from_certificate

_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)


@dataclass(frozen=True)
class IdentityFile:
    """The parts of an identity file."""

    key_pem: bytes
    cert_pem: bytes
    ca_pems: tuple[bytes, ...]

    @property
    def cert(self) -> x509.Certificate:
        """The TLS certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def identity(self) -> Identity:
        """Who this file authenticates as."""
        return identity_from_certificate(self.cert)

    @property
    def cluster_name(self) -> str:
        """The cluster that issued the certificate (issuer O)."""
        orgs = self.cert.issuer.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        return str(orgs[0].value) if orgs else ""

    @property
    def ca_bundle(self) -> bytes:
        """Every trusted CA certificate, concatenated."""
        return b"".join(self.ca_pems)

    def to_bytes(self) -> bytes:
        """The file content."""
        return self.key_pem + self.cert_pem + b"".join(self.ca_pems)

    def write(self, path: str | Path) -> None:
        """Write atomically with mode 0600."""
        atomic_write(path, self.to_bytes(), mode=0o600)


def parse_identity_file(data: bytes, *, source: str = "identity file") -> IdentityFile:
    """Split an identity file into key, certificate and CAs."""
    key = b""
    certs: list[bytes] = []
    for m in _PEM.finditer(data):
        block = m.group(0)
        if not block.endswith(b"\n"):
            block += b"\n"
        kind = m.group(1)
        if kind.endswith(b"PRIVATE KEY"):
            key = key or block
        elif kind == b"CERTIFICATE":
            certs.append(block)
    if not key or not certs:
        raise BadParameter(
            f"{source} is not an identity file (it needs a private key and a certificate)",
            hint="create one with: tctl auth sign --user=NAME --out=FILE",
        )
    return IdentityFile(key_pem=key, cert_pem=certs[0], ca_pems=tuple(certs[1:]))


def read_identity_file(path: str | Path) -> IdentityFile:
    """Read and parse an identity file from disk."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"identity file {p} does not exist") from None
    except PermissionError:
        raise BadParameter(f"cannot read identity file {p}: permission denied") from None
    return parse_identity_file(data, source=str(p))
