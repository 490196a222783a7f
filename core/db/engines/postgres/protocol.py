"""The PostgreSQL wire protocol (version 3.0), sans-io: bytes in, values out.

Only what a relay needs: the start-up packets (``SSLRequest``, ``GSSENCRequest``,
``CancelRequest``, ``StartupMessage``), the few backend messages a server sends
while a session starts (``BackendKeyData``, ``ErrorResponse``, ``ParameterStatus``,
``ReadyForQuery``), builders for the packets we send ourselves, and
:class:`FrontendScanner`, which frames client messages on the side of a relay so
queries can be audited without copying anything else.

Nothing here does I/O; the asyncio drivers feed bytes in. Wire layout:
https://www.postgresql.org/docs/current/protocol-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from jumpgate.core.errors import ConnectionProblem

#: ``SSLRequest`` code (length 8): the client asks to switch to TLS.
SSL_REQUEST_CODE = 80877103
#: ``GSSENCRequest`` code (length 8): the client asks for GSSAPI encryption.
GSSENC_REQUEST_CODE = 80877104
#: ``CancelRequest`` code (length 16): cancel the query of another session.
CANCEL_REQUEST_CODE = 80877102
#: Protocol version 3.0 (``3 << 16``), the only one we speak.
PROTOCOL_3_0 = 196608

#: PostgreSQL's own limit on a start-up packet (``MAX_STARTUP_PACKET_LENGTH``).
MAX_STARTUP_PACKET_LENGTH = 10000
#: Smallest start-up packet: length and code.
MIN_STARTUP_PACKET_LENGTH = 8
#: Largest payload :class:`FrontendScanner` materialises; longer ones are truncated.
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
#: Largest single message accepted from a server during start-up.
MAX_STARTUP_MESSAGE = 1024 * 1024

_INT32 = struct.Struct("!I")
_TWO_INT32 = struct.Struct("!II")
_HEADER = struct.Struct("!BI")  # message type, length (which counts itself, not the type)
#: One shared single-byte ``bytes`` per message type, so framing allocates nothing for it.
_TYPE_BYTES = tuple(bytes([i]) for i in range(256))

_PROTOCOL_HINT = "use a PostgreSQL client and server that speak protocol 3.0 (PostgreSQL 7.4+)"


class ProtocolError(ConnectionProblem):
    """The peer sent bytes that are not valid PostgreSQL protocol."""


# --------------------------------------------------------------------------- start-up packets


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to upgrade the connection to TLS (answer ``S`` or ``N``)."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption (we always answer ``N``)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the running query of the session with this backend key."""

    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """A protocol 3.0 start-up message: its parameters and its exact bytes.

    ``raw`` is the packet as received, so it can be forwarded untouched.
    """

    params: dict[str, str] = field(hash=False)
    raw: bytes = field(repr=False)

    @property
    def user(self) -> str:
        """The ``user`` parameter (empty when missing, which PostgreSQL rejects)."""
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        """The ``database`` parameter; PostgreSQL defaults it to the user name."""
        return self.params.get("database") or self.user


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def _cstrings(payload: bytes, what: str) -> list[str]:
    """Split NUL-terminated UTF-8 strings; ``payload`` must end with a NUL."""
    if not payload.endswith(b"\x00"):
        raise ProtocolError(f"malformed {what}: a string is not NUL-terminated")
    try:
        return payload[:-1].decode("utf-8").split("\x00")
    except UnicodeDecodeError:
        raise ProtocolError(f"malformed {what}: not valid UTF-8") from None


def _startup_params(payload: bytes) -> dict[str, str]:
    # key\0value\0 ... key\0value\0 \0   (at least the final NUL)
    if payload == b"\x00":
        return {}
    if not payload.endswith(b"\x00\x00"):
        raise ProtocolError("malformed startup message: the parameter list is not terminated")
    items = _cstrings(payload[:-1], "startup message")
    if len(items) % 2:
        raise ProtocolError("malformed startup message: a parameter has no value")
    params: dict[str, str] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not key:
            raise ProtocolError("malformed startup message: empty parameter name")
        params[key] = value
    return params


def parse_startup_packet(data: bytes | bytearray | memoryview) -> tuple[StartupPacket | None, int]:
    """Parse the first packet a client sends (no type byte: length, code, body).

    Returns ``(None, 0)`` when ``data`` does not hold a whole packet yet, else the
    packet and how many bytes of ``data`` it used. Raises :class:`ProtocolError`
    for a bad length, an unknown code or a protocol version other than 3.0.
    """
    if len(data) < 4:
        return None, 0
    (length,) = _INT32.unpack_from(data, 0)
    if not MIN_STARTUP_PACKET_LENGTH <= length <= MAX_STARTUP_PACKET_LENGTH:
        raise ProtocolError(
            f"invalid startup packet length {length} (must be "
            f"{MIN_STARTUP_PACKET_LENGTH} to {MAX_STARTUP_PACKET_LENGTH} bytes)",
            hint=_PROTOCOL_HINT,
        )
    if len(data) < length:
        return None, 0
    (code,) = _INT32.unpack_from(data, 4)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if length != 8:
            raise ProtocolError(f"invalid SSLRequest/GSSENCRequest length {length} (must be 8)")
        return (SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()), 8
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise ProtocolError(f"invalid CancelRequest length {length} (must be 16)")
        pid, secret = _TWO_INT32.unpack_from(data, 8)
        return CancelRequest(pid, secret), 16
    if code != PROTOCOL_3_0:
        major, minor = code >> 16, code & 0xFFFF
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: only protocol 3.0 is supported",
            hint=_PROTOCOL_HINT,
        )
    raw = bytes(data[:length])
    return StartupMessage(_startup_params(raw[8:]), raw), length


# --------------------------------------------------------------------------- builders


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} {value} does not fit in 32 bits")
    return value


def ssl_request() -> bytes:
    """The 8-byte ``SSLRequest``."""
    return _TWO_INT32.pack(8, SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: int) -> bytes:
    """The 16-byte ``CancelRequest`` for a backend key."""
    return _TWO_INT32.pack(16, CANCEL_REQUEST_CODE) + _TWO_INT32.pack(
        _u32(pid, "pid"), _u32(secret, "secret")
    )


def _cstr(value: str) -> bytes:
    # a NUL inside would end the string early and desynchronise the peer
    return value.replace("\x00", "").encode("utf-8") + b"\x00"


def startup_message(params: dict[str, str]) -> bytes:
    """A protocol 3.0 ``StartupMessage`` with ``params`` (e.g. ``user``, ``database``)."""
    body = b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\x00"
    return _TWO_INT32.pack(len(body) + 8, PROTOCOL_3_0) + body


def error_response(
    message: str,
    *,
    code: str = "28000",
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ``ErrorResponse`` (``E``) with severity (S, V), SQLSTATE (C), message and extras.

    The default SQLSTATE 28000 is ``invalid_authorization_specification``.
    """
    fields = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(code)]
    fields.append(b"M" + _cstr(message))
    if detail:
        fields.append(b"D" + _cstr(detail))
    if hint:
        fields.append(b"H" + _cstr(hint))
    return _message(b"E", b"".join(fields) + b"\x00")


def authentication_ok() -> bytes:
    """``AuthenticationOk``."""
    return _message(b"R", _INT32.pack(0))


def backend_key_data(pid: int, secret: int) -> bytes:
    """``BackendKeyData`` (``K``)."""
    return _message(b"K", _TWO_INT32.pack(_u32(pid, "pid"), _u32(secret, "secret")))


def parameter_status(name: str, value: str) -> bytes:
    """``ParameterStatus`` (``S``)."""
    return _message(b"S", _cstr(name) + _cstr(value))


def ready_for_query(status: bytes = b"I") -> bytes:
    """``ReadyForQuery`` with a transaction status: ``I`` idle, ``T`` in a transaction, ``E`` failed."""
    if len(status) != 1:
        raise ValueError("the transaction status is one byte: b'I', b'T' or b'E'")
    return _message(b"Z", status)


# --------------------------------------------------------------------------- message bodies


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ``ErrorResponse``/``NoticeResponse`` body, by field code (``M``, ``C``…)."""
    out: dict[str, str] = {}
    pos, end = 0, len(payload)
    while pos < end and payload[pos] != 0:
        code = chr(payload[pos])
        nul = payload.find(b"\x00", pos + 1)
        if nul < 0:
            raise ProtocolError("malformed error response: a field is not NUL-terminated")
        out[code] = payload[pos + 1 : nul].decode("utf-8", errors="replace")
        pos = nul + 1
    return out


def query_text(payload: bytes) -> str:
    """The SQL of a ``Query`` (``Q``) body (tolerates a body truncated by the scanner)."""
    nul = payload.find(b"\x00")
    return (payload if nul < 0 else payload[:nul]).decode("utf-8", errors="replace")


def parse_statement(payload: bytes) -> tuple[str, str]:
    """``(statement_name, query)`` of a ``Parse`` (``P``) body (tolerates truncation)."""
    nul = payload.find(b"\x00")
    if nul < 0:
        return payload.decode("utf-8", errors="replace"), ""
    return payload[:nul].decode("utf-8", errors="replace"), query_text(payload[nul + 1 :])


# --------------------------------------------------------------------------- scanners


class FrontendScanner:
    """Incremental framing of client messages (type byte + int32 length + payload).

    :meth:`feed` takes the chunks a relay forwards and returns the complete
    messages whose type is *interesting* (by default ``Q`` Query, ``P`` Parse and
    ``X`` Terminate) as ``(type, payload)``. Every other message is skipped by its
    length without being copied, so a 100 MB COPY costs a few operations per
    ``CopyData`` message and no memory. Interesting payloads longer than
    ``max_payload`` are returned truncated to that size.
    """

    __slots__ = ("_body", "_body_need", "_body_type", "_hdr", "_max", "_rest", "_skip", "_wanted")

    def __init__(
        self, interesting: bytes = b"QPX", *, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self._wanted = frozenset(interesting)
        self._max = max_payload
        self._skip = 0  # bytes of the current skipped message still to come
        self._hdr = b""  # the first bytes of a header split across chunks (< 5)
        self._body: bytearray | None = None  # an interesting payload being collected
        self._body_type = 0
        self._body_need = 0  # bytes of it still to come
        self._rest = 0  # bytes to skip after it (when truncated)

    @property
    def buffered(self) -> int:
        """Bytes held between calls (a partial header or interesting payload)."""
        return len(self._hdr) + (len(self._body) if self._body is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]:
        """Consume the next chunk of the client stream; return the interesting messages."""
        out: list[tuple[bytes, bytes]] = []
        n = len(data)
        pos = 0
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return out
            pos, self._skip = self._skip, 0
        elif self._body is not None:
            pos = self._continue_body(data, n, out)
            if pos >= n:
                return out
        elif self._hdr:
            need = 5 - len(self._hdr)
            if n < need:
                self._hdr += bytes(data)
                return out
            kind, length = _HEADER.unpack(self._hdr + bytes(data[:need]))
            self._hdr = b""
            pos = self._start(kind, length, need, data, n, out)
        wanted, unpack, limit = self._wanted, _HEADER.unpack_from, self._max + 4
        while pos < n:
            if n - pos < 5:
                self._hdr = bytes(data[pos:])
                return out
            kind, length = unpack(data, pos)
            if kind not in wanted and length >= 4:
                pos += 1 + length
            elif 4 <= length <= limit and pos + 1 + length <= n:  # whole, interesting
                end = pos + 1 + length
                out.append((_TYPE_BYTES[kind], bytes(data[pos + 5 : end])))
                pos = end
            else:
                pos = self._start(kind, length, pos + 5, data, n, out)
        if pos > n:
            self._skip = pos - n
        return out

    def _start(
        self,
        kind: int,
        length: int,
        body: int,
        data: bytes | bytearray | memoryview,
        n: int,
        out: list[tuple[bytes, bytes]],
    ) -> int:
        """Handle a header whose payload starts at ``body``; return the next position."""
        if length < 4:
            raise ProtocolError(f"invalid message length {length} for message type {kind!r}")
        size = length - 4
        end = body + size
        if kind not in self._wanted:
            if end > n:
                self._skip = end - n
            return end
        keep = min(size, self._max)
        if body + keep <= n:
            out.append((_TYPE_BYTES[kind], bytes(data[body : body + keep])))
            if end > n:
                self._skip = end - n
            return end
        self._body = bytearray(data[body:n])
        self._body_type = kind
        self._body_need = keep - (n - body)
        self._rest = size - keep
        return n

    def _continue_body(
        self, data: bytes | bytearray | memoryview, n: int, out: list[tuple[bytes, bytes]]
    ) -> int:
        body = self._body
        assert body is not None
        take = min(self._body_need, n)
        body += data[:take]
        self._body_need -= take
        if self._body_need:
            return n
        out.append((_TYPE_BYTES[self._body_type], bytes(body)))
        self._body = None
        end = take + self._rest
        self._rest = 0
        if end > n:
            self._skip = end - n
        return end


class BackendStartupScanner:
    """Watches server bytes while a session starts, until ``ReadyForQuery``.

    It only observes (the bytes are forwarded as they are): it records the
    ``BackendKeyData`` (for cancels), the ``ParameterStatus`` values, whether
    authentication succeeded, and an ``ErrorResponse`` if the server refused.
    ``done`` turns true at ``ReadyForQuery`` or at an error (the server closes
    the connection after a start-up error); bytes fed after that are ignored.
    """

    def __init__(self, *, max_message: int = MAX_STARTUP_MESSAGE) -> None:
        self.done = False
        self.backend_key: tuple[int, int] | None = None
        self.parameters: dict[str, str] = {}
        self.error: dict[str, str] | None = None
        #: True once ``AuthenticationOk`` was seen.
        self.authenticated = False
        #: Other authentication requests (3 = cleartext password, 10 = SASL, …).
        self.auth_requests: list[int] = []
        #: Transaction status of the ``ReadyForQuery`` that ended start-up.
        self.status = b""
        self._max = max_message
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Observe the next server bytes; return :attr:`done`."""
        if self.done:
            return True
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 5:
            kind, length = _HEADER.unpack_from(buf, pos)
            if not 4 <= length <= self._max:
                raise ProtocolError(
                    f"invalid message length {length} for server message type {kind!r} "
                    "during session start-up"
                )
            end = pos + 1 + length
            if end > len(buf):
                break
            self._message(kind, bytes(buf[pos + 5 : end]))
            pos = end
            if self.done:
                buf.clear()
                return True
        del buf[:pos]
        return False

    def _message(self, kind: int, payload: bytes) -> None:
        if kind == 0x52 and len(payload) >= 4:  # R Authentication*
            (code,) = _INT32.unpack_from(payload, 0)
            if code == 0:
                self.authenticated = True
            else:
                self.auth_requests.append(code)
        elif kind == 0x4B and len(payload) == 8:  # K BackendKeyData
            self.backend_key = _TWO_INT32.unpack(payload)
        elif kind == 0x53:  # S ParameterStatus
            items = _cstrings(payload, "parameter status")
            if len(items) == 2:
                self.parameters[items[0]] = items[1]
        elif kind == 0x45:  # E ErrorResponse
            self.error = parse_error_fields(payload)
            self.done = True
        elif kind == 0x5A:  # Z ReadyForQuery
            self.status = payload[:1]
            self.done = True
