"""The bot's own (renewable) identity in its storage destination.

Files (TELEPORT-REFERENCE §1.3, docs/design/machine-id.md): ``key``,
``tlscert``, ``tlscacerts`` (host and user CA PEMs), ``generation`` and
``tokenhash`` (SHA-256 of the join token that produced this identity), each
written atomically with mode 0600. A single ``identity`` file (key,
certificate, CAs) is written FIRST and is the commit point: a crash between
the per-piece files can never pair a new key with an old certificate, because
loading prefers ``identity`` and falls back to the pieces only when they
match. A ``lock`` file (``flock``) keeps two tbot processes from renewing the
same identity (which would lock the bot on the server).

``joinkey`` holds the key of a join in flight (with the hash of its token), saved
before the join is sent: if the answer is lost, the next start retries the join
with the same token and key, which the cluster answers again (the token is spent
for everyone else).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from jumpgate.core.auth.identityfile import IdentityFile, parse_identity_file
from jumpgate.core.bot.destinations import DirectoryDestination, MemoryDestination
from jumpgate.core.errors import BadParameter, JumpgateError
from jumpgate.core.failpoint import failpoint
from jumpgate.core.tlsca import Identity, identity_from_certificate, load_private_key

log = logging.getLogger(__name__)

IDENTITY = "identity"
KEY = "key"
TLS_CERT = "tlscert"
TLS_CAS = "tlscacerts"
GENERATION = "generation"
TOKEN_HASH = "tokenhash"
LOCK = "lock"
JOIN_KEY = "joinkey"


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a join token: stored instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def _ca_type(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if ous else ""


def _split_pems(blob: bytes) -> list[bytes]:
    return [
        c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(blob)
    ]


@dataclass(frozen=True)
class BotIdentity:
    """The bot's renewable certificate, its key and the cluster's host and user CAs."""

    key_pem: bytes
    cert_pem: bytes
    host_ca: bytes
    user_ca: bytes

    @property
    def cert(self) -> x509.Certificate:
        """The renewable certificate."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def identity(self) -> Identity:
        """What the certificate asserts (bot name, generation, renewable)."""
        return identity_from_certificate(self.cert)

    @property
    def expires(self) -> datetime:
        """NotAfter of the certificate."""
        return self.cert.not_valid_after_utc

    @property
    def generation(self) -> int:
        """The generation counter in the certificate."""
        return self.identity.generation

    @property
    def cluster_name(self) -> str:
        """The issuing cluster (issuer O)."""
        return self.ident_file().cluster_name

    def valid(self, now: datetime | None = None) -> bool:
        """Whether the certificate is still valid at ``now``."""
        return self.expires > (now or datetime.now(UTC))

    def ident_file(self) -> IdentityFile:
        """As an identity file trusting the host CA (for API clients)."""
        return IdentityFile(self.key_pem, self.cert_pem, tuple(_split_pems(self.host_ca)))

    def bundle(self) -> bytes:
        """The ``identity`` file: key, certificate, host CA(s), user CA(s)."""
        return self.key_pem + self.cert_pem + self.host_ca + self.user_ca

    def check(self) -> None:
        """Refuse a certificate that is not a renewable bot certificate for this key."""
        ident = self.identity
        if not ident.renewable or not ident.bot_name:
            raise BadParameter(
                f"the stored certificate for {ident.username} is not a renewable bot certificate"
            )
        pub = load_private_key(self.key_pem).public_key()
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if pub.public_bytes(*fmt) != self.cert.public_key().public_bytes(*fmt):
            raise BadParameter("the stored key does not belong to the stored certificate")


def from_bundle(data: bytes, source: str) -> BotIdentity:
    """Parse an ``identity`` bundle, sorting its CAs into host and user by their OU."""
    f = parse_identity_file(data, source=source)
    host = b"".join(p for p in f.ca_pems if _ca_type(p) == "host")
    user = b"".join(p for p in f.ca_pems if _ca_type(p) == "user")
    if not host:
        raise BadParameter(f"{source} holds no host CA")
    return BotIdentity(key_pem=f.key_pem, cert_pem=f.cert_pem, host_ca=host, user_ca=user)


class BotStorage:
    """Load and save the bot identity in a directory or memory destination."""

    def __init__(self, dest: DirectoryDestination | MemoryDestination) -> None:
        self.dest = dest
        self._lock_fd: int | None = None

    def describe(self) -> str:
        """Where the storage is."""
        return self.dest.describe()

    def init(self) -> None:
        """Create the storage directory (0700)."""
        self.dest.init()

    def lock(self) -> None:
        """Take ``<storage>/lock`` exclusively (directory storage), or explain who holds it."""
        if not isinstance(self.dest, DirectoryDestination) or self._lock_fd is not None:
            return
        self.dest.init()
        path = self.dest.path / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JumpgateError(
                f"another tbot process is using the storage {self.dest.path}",
                hint="stop it first: two processes renewing one bot identity get the bot locked",
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the storage lock."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> BotIdentity | None:
        """The stored identity (None when there is none or it is unusable, with a warning).

        A destination that cannot be read safely (a planted symlink, no
        permission) raises instead: that needs the operator, not a new join.
        """
        bundle = self.dest.read(IDENTITY)
        pieces = (
            (None, None, None)
            if bundle is not None
            else tuple(self.dest.read(n) for n in (KEY, TLS_CERT, TLS_CAS))
        )
        try:
            if bundle is not None:
                ident = from_bundle(bundle, f"{self.describe()}/{IDENTITY}")
            else:
                key, cert, cas = pieces
                if not (key and cert and cas):
                    return None
                pems = _split_pems(cas)
                ident = BotIdentity(
                    key_pem=key,
                    cert_pem=cert,
                    host_ca=b"".join(p for p in pems if _ca_type(p) == "host"),
                    user_ca=b"".join(p for p in pems if _ca_type(p) == "user"),
                )
            ident.check()
        except (JumpgateError, ValueError) as exc:
            log.warning("ignoring the unusable bot identity in %s: %s", self.describe(), exc)
            return None
        return ident

    def save(self, ident: BotIdentity, *, token: str | None = None) -> None:
        """Write the identity (commit point first), then its pieces and the token hash."""
        ident.check()
        self.dest.write(IDENTITY, ident.bundle())
        failpoint("bot.storage.after_identity")
        self.dest.write(KEY, ident.key_pem)
        self.dest.write(TLS_CERT, ident.cert_pem)
        self.dest.write(TLS_CAS, ident.host_ca + ident.user_ca)
        self.dest.write(GENERATION, f"{ident.generation}\n".encode())
        if token is not None:
            self.dest.write(TOKEN_HASH, f"{token_hash(token)}\n".encode())

    def pending_join_key(self, token: str) -> bytes | None:
        """The key saved for a join with ``token`` whose answer never arrived, if any."""
        raw = self.dest.read(JOIN_KEY)
        if not raw:
            return None
        first, _, key = raw.partition(b"\n")
        if first.decode(errors="replace").strip() != token_hash(token):
            return None  # a join with another token: that key is of no use
        try:
            load_private_key(key)
        except (ValueError, JumpgateError):
            return None
        return key

    def save_join_key(self, token: str, key_pem: bytes) -> None:
        """Remember the key of a join about to be sent (see the module docstring)."""
        self.dest.write(JOIN_KEY, f"{token_hash(token)}\n".encode() + key_pem)

    def clear_join_key(self) -> None:
        """Forget the join key once the joined identity is saved."""
        if self.dest.read(JOIN_KEY):
            self.dest.write(JOIN_KEY, b"")

    def stored_token_hash(self) -> str:
        """The hash of the token that produced the stored identity ("" when unknown)."""
        raw = self.dest.read(TOKEN_HASH)
        return raw.decode(errors="replace").strip() if raw else ""
