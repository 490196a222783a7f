"""A tiny synchronous PostgreSQL client: connect, run one simple query, return the rows.

Enough for a "test connection" button: protocol 3.0 over TCP, optional TLS with
a client certificate (``sslmode=verify-full`` semantics), no password
authentication (Jumpgate's database access authenticates with certificates),
the simple query protocol, text results. Built on the sans-io message helpers
of :mod:`jumpgate.core.db.engines.postgres.protocol`.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass

from jumpgate.core.client.snippets import ConnParams
from jumpgate.core.db.engines.postgres.protocol import (
    parse_error_fields,
    ssl_request,
    startup_message,
)
from jumpgate.core.errors import AccessDenied, BadParameter, ConnectionProblem, JumpgateError

_INT32 = struct.Struct("!i")


@dataclass(frozen=True)
class QueryResult:
    """Column names and text values of the rows."""

    columns: list[str]
    rows: list[list[str | None]]
    #: ``server_version`` from the server's ParameterStatus messages
    server_version: str = ""


class _Conn:
    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionProblem("the server closed the connection")
            self.buf += chunk

    def message(self) -> tuple[bytes, bytes]:
        self._fill(5)
        kind, length = self.buf[:1], _INT32.unpack(self.buf[1:5])[0]
        if length < 4:
            raise ConnectionProblem("malformed message from the server")
        self._fill(1 + length)
        body = self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return kind, body


def _server_error(body: bytes) -> JumpgateError:
    fields = parse_error_fields(body)
    msg = fields.get("M", "unknown error")
    hint = fields.get("H")
    if fields.get("C", "").startswith("28"):
        return AccessDenied(msg, hint=hint)
    return ConnectionProblem(msg, hint=hint)


def _tls_context(p: ConnParams) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=p.sslrootcert)
        ctx.load_cert_chain(p.sslcert, p.sslkey)
    except (OSError, ssl.SSLError) as exc:
        raise BadParameter(
            f"cannot load the TLS files ({p.sslrootcert}, {p.sslcert}, {p.sslkey}): {exc}",
            hint="has tbot (or tsh db login) written the certificate yet?",
        ) from None
    return ctx


def _open(p: ConnParams, timeout: float) -> _Conn:
    try:
        raw = socket.create_connection((p.host, p.port), timeout=timeout)
    except OSError as exc:
        raise ConnectionProblem(
            f"cannot connect to {p.host}:{p.port}: {exc.strerror or exc}",
            hint="is the local proxy running on this port?",
        ) from None
    if p.tunnel:
        return _Conn(raw)
    try:
        raw.sendall(ssl_request())
        answer = raw.recv(1)
        if answer != b"S":
            raise ConnectionProblem(f"the server at {p.host}:{p.port} does not offer TLS")
        return _Conn(_tls_context(p).wrap_socket(raw, server_hostname=p.host))
    except ssl.SSLError as exc:
        raw.close()
        raise ConnectionProblem(
            f"TLS with {p.host}:{p.port} failed: {exc.reason or exc}",
            hint="check sslrootcert, sslcert and sslkey",
        ) from None
    except BaseException:
        raw.close()
        raise


def run_query(p: ConnParams, sql: str, *, timeout: float = 15.0) -> QueryResult:
    """Connect with ``p``, run ``sql`` (one statement), return its rows; then disconnect."""
    conn = _open(p, timeout)
    try:
        conn.send(
            startup_message(
                {"user": p.user, "database": p.database, "application_name": "jumpgate"}
            )
        )
        version = ""
        while True:
            kind, body = conn.message()
            if kind == b"R":
                code = _INT32.unpack(body[:4])[0]
                if code != 0:
                    raise AccessDenied(
                        "the server asks for a password; Jumpgate connects with certificates",
                        hint="connect through a Jumpgate local proxy",
                    )
            elif kind == b"E":
                raise _server_error(body)
            elif kind == b"S":
                name, _, rest = body.partition(b"\0")
                if name == b"server_version":
                    version = rest.split(b"\0", 1)[0].decode(errors="replace")
            elif kind == b"Z":
                break
        conn.send(b"Q" + _INT32.pack(len(sql.encode()) + 5) + sql.encode() + b"\0")
        columns: list[str] = []
        rows: list[list[str | None]] = []
        error: JumpgateError | None = None
        while True:
            kind, body = conn.message()
            if kind == b"T":
                columns = _row_description(body)
            elif kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"E":
                error = _server_error(body)
            elif kind == b"Z":
                break
        if error is not None:
            raise error
        conn.send(b"X" + _INT32.pack(4))
        return QueryResult(columns, rows, version)
    except TimeoutError:
        raise ConnectionProblem(
            f"no answer from {p.host}:{p.port} within {timeout:g}s",
            hint="is the database reachable through the proxy?",
        ) from None
    except OSError as exc:
        raise ConnectionProblem(f"connection to {p.host}:{p.port} failed: {exc}") from None
    finally:
        conn.sock.close()


def _row_description(body: bytes) -> list[str]:
    count = struct.unpack("!h", body[:2])[0]
    pos, out = 2, []
    for _ in range(count):
        nul = body.index(b"\0", pos)
        out.append(body[pos:nul].decode(errors="replace"))
        pos = nul + 1 + 18  # table oid, column, type oid, size, modifier, format
    return out


def _data_row(body: bytes) -> list[str | None]:
    count = struct.unpack("!h", body[:2])[0]
    pos, out = 2, list[str | None]()
    for _ in range(count):
        n = _INT32.unpack(body[pos : pos + 4])[0]
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + n].decode(errors="replace"))
            pos += n
    return out
