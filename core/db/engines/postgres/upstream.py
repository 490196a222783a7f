"""Connecting to PostgreSQL with mutual TLS, as the Database Service does.

:func:`connect_upstream` opens TCP, negotiates TLS with an ``SSLRequest`` (no
plain-text fallback), sends the client's ``StartupMessage`` and hands back the
transport so the engine can watch the start-up answer and then relay bytes.
:func:`send_cancel` delivers a ``CancelRequest`` the same way.
:func:`client_tls_context` builds the context per the database's ``tls.mode``,
like Teleport's ``common.Auth.GetTLSConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Literal

from jumpgate.core.db.engines.postgres.protocol import (
    cancel_request,
    parse_error_fields,
    ssl_request,
)
from jumpgate.core.errors import BadParameter, ConnectionProblem
from jumpgate.core.relay import Handshake, start_tls_client
from jumpgate.core.tlsutil import load_cert_chain_from_memory

#: How long :func:`send_cancel` waits for the server to close after the request.
CANCEL_LINGER = 2.0

TLSMode = Literal["verify-full", "verify-ca", "insecure"]
TLS_MODES: tuple[str, ...] = ("verify-full", "verify-ca", "insecure")

_NO_TLS_HINT = (
    "enable TLS on the database (ssl = on in postgresql.conf, with the server certificate "
    "from `tctl auth sign --format=db`) and allow certificate logins (hostssl … cert in "
    "pg_hba.conf)"
)
_VERIFY_HINT = (
    "check the database's CA (tls.ca_cert_file, or the cluster's db CA) and, with "
    "tls.mode verify-full, that the server certificate names the host in the database URI "
    "(or set tls.server_name)"
)


def client_tls_context(
    *,
    mode: str,
    ca_pem: bytes | None,
    trust_system: bool,
    cert_pem: bytes | None,
    key_pem: bytes | None,
) -> ssl.SSLContext:
    """The TLS client context for a database, presenting ``cert_pem``/``key_pem``.

    ``verify-full`` checks the chain and the host name, ``verify-ca`` the chain
    only, ``insecure`` nothing. The chain is checked against ``ca_pem`` and,
    with ``trust_system``, the system's CAs. Without ``cert_pem``/``key_pem``
    no client certificate is presented (enough for a ``CancelRequest``).
    """
    if mode not in TLS_MODES:
        raise BadParameter(
            f"unknown database TLS mode {mode!r}",
            hint=f"use one of {', '.join(TLS_MODES)}",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == "insecure":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if trust_system:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if ca_pem:
            try:
                ctx.load_verify_locations(cadata=ca_pem.decode("ascii", errors="replace"))
            except ssl.SSLError as exc:
                raise BadParameter(
                    f"the database CA is not a valid PEM certificate: {exc.reason or exc}",
                    hint="set tls.ca_cert_file to the PEM file of the CA that signed the "
                    "database's certificate",
                ) from None
        elif not trust_system:
            raise BadParameter(
                "no CA to verify the database's certificate with",
                hint="set tls.ca_cert_file, enable tls.trust_system_cert_pool, or "
                "(for testing only) tls.mode: insecure",
            )
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode == "verify-full"
    if cert_pem is not None or key_pem is not None:
        if not (cert_pem and key_pem):
            raise BadParameter(
                "a client certificate needs both the certificate and its key",
                hint="pass both cert_pem and key_pem, or neither",
            )
        load_cert_chain_from_memory(ctx, cert_pem, key_pem)
    return ctx


def _describe_tls_error(exc: BaseException, where: str) -> ConnectionProblem:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionProblem(
            f"the database at {where} presented a certificate that does not verify: "
            f"{exc.verify_message or exc.reason or exc}",
            hint=_VERIFY_HINT,
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionProblem(
            f"TLS handshake with the database at {where} failed: {exc.reason or exc}",
            hint="check that the database trusts the cluster's db_client CA (ssl_ca_file = "
            "server.cas from `tctl auth sign --format=db`)",
        )
    if isinstance(exc, TimeoutError):
        return ConnectionProblem(
            f"timed out connecting to the database at {where}",
            hint="check that the database is up and reachable from the Database Service",
        )
    return ConnectionProblem(
        f"cannot connect to the database at {where}: {getattr(exc, 'strerror', None) or exc}",
        hint="check the database URI and that the database is up and reachable",
    )


async def _read_error_response(hs: Handshake) -> str:
    """The message of an ``ErrorResponse`` whose type byte was already read."""
    header = await hs.read_exact(4)
    length = int.from_bytes(header, "big")
    if not 4 <= length <= 64 * 1024:
        return "the server sent a malformed error"
    fields = parse_error_fields(await hs.read_exact(length - 4))
    return fields.get("M", "the server refused the connection")


async def _open_tls(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
) -> tuple[asyncio.Transport, Handshake]:
    """TCP, ``SSLRequest``, ``S``, TLS handshake (raises on anything else)."""
    loop = asyncio.get_running_loop()
    where = f"{host}:{port}"
    transport, hs = await loop.create_connection(Handshake, host, port)
    try:
        transport.write(ssl_request())
        answer = await hs.read_exact(1)
        if answer == b"N":
            raise ConnectionProblem(
                f"the database at {where} does not accept TLS", hint=_NO_TLS_HINT
            )
        if answer == b"E":
            message = await _read_error_response(hs)
            raise ConnectionProblem(
                f"the database at {where} refused the TLS request: {message}",
                hint=_NO_TLS_HINT,
            )
        if answer != b"S":
            raise ConnectionProblem(
                f"the server at {where} does not speak the PostgreSQL protocol "
                f"(it answered {answer!r} to SSLRequest)",
                hint="check the database URI's port",
            )
        if hs.buffered:
            # bytes after 'S' before our ClientHello: a man-in-the-middle injection attempt
            # (CVE-2021-23222); never let them reach the TLS layer
            raise ConnectionProblem(
                f"the server at {where} sent unexpected data after accepting TLS",
                hint="check for a proxy between the Database Service and the database",
            )
        tls = await start_tls_client(transport, hs, ssl_context, server_hostname)
    except BaseException:
        transport.abort()
        raise
    return tls, hs


async def connect_upstream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    startup: bytes,
    timeout: float = 10,
) -> tuple[asyncio.Transport, Handshake, bytes]:
    """Connect to PostgreSQL over TLS and send the raw ``startup`` message.

    Returns the TLS transport, its :class:`Handshake` protocol (which keeps
    buffering what the server sends until a relay takes over) and the bytes
    already received. ``server_hostname`` defaults to ``host``. Every failure is
    a :class:`ConnectionProblem` with a hint.
    """
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            tls, hs = await _open_tls(host, port, ssl_context, server_hostname or host)
    except ConnectionProblem:
        raise
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise _describe_tls_error(exc, where) from exc
    tls.write(startup)
    return tls, hs, hs.take_buffer()


async def send_cancel(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    pid: int,
    secret: int,
    timeout: float = 10,
) -> None:
    """Deliver a ``CancelRequest`` for backend key ``(pid, secret)`` over TLS.

    Waits (briefly) for the server to close the connection, which it does
    once it has handled the request. Raises :class:`ConnectionProblem`.
    """
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            tls, hs = await _open_tls(host, port, ssl_context, server_hostname or host)
    except ConnectionProblem:
        raise
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise _describe_tls_error(exc, where) from exc
    tls.write(cancel_request(pid, secret))
    with contextlib.suppress(ConnectionProblem, TimeoutError, OSError, ssl.SSLError):
        async with asyncio.timeout(CANCEL_LINGER):
            while await hs.read_some():
                pass
    tls.close()
