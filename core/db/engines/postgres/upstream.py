"""Connecting the Database Service to PostgreSQL with mutual TLS.

``connect_upstream`` dials the database, asks for TLS (``SSLRequest``), upgrades
with the session's ``db_client`` certificate, sends the client's start-up
message, and returns the TLS transport with the :class:`Handshake` protocol that
holds any bytes the server already sent. ``send_cancel`` delivers a
``CancelRequest`` the way libpq does, over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from jumpgate.core.db.engines.postgres.protocol import (
    cancel_request,
    parse_error_fields,
    ssl_request,
)
from jumpgate.core.errors import ConnectionProblem
from jumpgate.core.relay import Handshake, start_tls_client
from jumpgate.core.tlsutil import load_cert_chain_from_memory


def client_tls_context(
    *,
    mode: str,
    ca_pem: bytes | None,
    trust_system: bool,
    cert_pem: bytes | None,
    key_pem: bytes | None,
) -> ssl.SSLContext:
    """The TLS client context for a database, per ``tls.mode`` (Teleport's GetTLSConfig).

    ``verify-full``: chain and host name; ``verify-ca``: chain only; ``insecure``:
    nothing. ``ca_pem`` is the db CA or ``tls.ca_cert_file``; ``trust_system``
    adds the system roots.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == "insecure":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if trust_system:
            ctx.load_default_certs()
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_pem and key_pem:
        load_cert_chain_from_memory(ctx, cert_pem, key_pem)
    return ctx


async def _tls_connect(
    host: str, port: int, ssl_context: ssl.SSLContext, server_hostname: str | None, timeout: float
) -> tuple[asyncio.Transport, Handshake]:
    loop = asyncio.get_running_loop()
    try:
        transport, hs = await asyncio.wait_for(
            loop.create_connection(Handshake, host, port), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise ConnectionProblem(
            f"cannot reach the database at {host}:{port}: {getattr(exc, 'strerror', None) or exc or 'timed out'}",
            hint="check the database uri and that the database is running",
        ) from None
    hs.write(ssl_request())
    answer = await asyncio.wait_for(hs.read_exact(1), timeout)
    if answer == b"N":
        transport.close()
        raise ConnectionProblem(
            f"the database at {host}:{port} does not accept TLS",
            hint="turn on ssl in postgresql.conf (ssl = on, with the files from tctl auth sign --format=db)",
        )
    if answer == b"E":
        rest = hs.take_buffer()
        transport.close()
        fields = parse_error_fields(rest[4:]) if len(rest) > 4 else {}
        raise ConnectionProblem(
            f"the database at {host}:{port} refused: {fields.get('M', 'error')}"
        )
    if answer != b"S":
        transport.close()
        raise ConnectionProblem(f"{host}:{port} does not speak the PostgreSQL protocol")
    try:
        tls = await start_tls_client(transport, hs, ssl_context, server_hostname, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectionProblem(
            f"the database's certificate is not trusted: {exc.verify_message}",
            hint="sign it with tctl auth sign --format=db, or set tls.ca_cert_file / tls.mode",
        ) from None
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        raise ConnectionProblem(f"TLS with the database at {host}:{port} failed: {exc}") from None
    return tls, hs


async def connect_upstream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    startup: bytes,
    timeout: float = 10.0,
) -> tuple[asyncio.Transport, Handshake, bytes]:
    """Connect, upgrade to TLS, send ``startup``; return (transport, handshake, bytes read)."""
    transport, hs = await _tls_connect(host, port, ssl_context, server_hostname, timeout)
    hs.write(startup)
    return transport, hs, hs.take_buffer()


async def send_cancel(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    pid: int,
    secret: int,
    timeout: float = 5.0,
) -> None:
    """Deliver a ``CancelRequest`` for ``pid``/``secret`` over TLS, then close."""
    transport, hs = await _tls_connect(host, port, ssl_context, server_hostname, timeout)
    hs.write(cancel_request(pid, secret))
    # PostgreSQL closes the connection after reading a cancel request
    with contextlib.suppress(ConnectionProblem, OSError, TimeoutError):
        await asyncio.wait_for(hs.read_some(), timeout)
    transport.close()
