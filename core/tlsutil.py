"""Small helpers for :mod:`ssl` contexts built from in-memory PEM.

:meth:`ssl.SSLContext.load_cert_chain` only reads files. Keys held in memory
(issued for a session, or loaded from the backend) are handed to it through an
anonymous memory file (``memfd_create``, never on disk) where the platform has
one, else through a private temporary file that is removed at once.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jumpgate.core.errors import BadParameter


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path that reads back ``data``, readable only by this process, gone afterwards."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and Path("/proc/self/fd").is_dir():
        try:
            fd = memfd_create("jg-pem", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                os.write(fd, data)
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
    fd, path = tempfile.mkstemp(prefix="jg-pem-", suffix=".pem")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def load_cert_chain_from_memory(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a PEM certificate (chain) and its PEM private key into ``ctx``.

    Raises :class:`BadParameter` when they are not PEM or do not belong together.
    """
    if b"-----BEGIN" not in cert_pem or b"-----BEGIN" not in key_pem:
        raise BadParameter(
            "the certificate or key is not in PEM format",
            hint="pass the PEM files jumpgate wrote (they start with '-----BEGIN')",
        )
    with _private_file(key_pem.rstrip(b"\n") + b"\n" + cert_pem) as path:
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise BadParameter(
                f"cannot use the certificate and key: {exc.reason or exc}",
                hint="check that the key belongs to the certificate",
            ) from None
