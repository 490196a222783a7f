"""The little of HTTP/1.1 the application path parses (sans-io: bytes in, values out).

The forwarder reads only message *heads* (request and status lines, header
fields) and tracks body framing (``Content-Length``, ``chunked``, or until the
connection closes) so it knows where one message ends and the next begins on
a keep-alive connection. Body bytes themselves are never copied or inspected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: The largest message head accepted (request line plus header fields).
MAX_HEAD = 64 * 1024
#: The longest chunk-size or trailer line accepted.
MAX_CHUNK_LINE = 4096

_TOKEN_BYTES = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


#: Bytes a request head may not contain: control characters other than HTAB, and CR or
#: LF outside a CRLF pair. Servers that end lines at a bare LF (Go's net/http, Python's
#: http.server) would otherwise see header fields the forwarder never saw (APP-SEC-1).
_BAD_HEAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


class HTTPError(Exception):
    """A malformed or unsupported message; ``status`` is what to answer the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the ``\\r\\n\\r\\n`` ending a head in ``buf``, or ``-1``."""
    i = buf.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if i < 0 else i + 4


@dataclass
class Head:
    """A parsed message head. Names are kept as sent; ``get`` looks up case-insensitively."""

    first: bytes
    headers: list[tuple[bytes, bytes]]
    raw: bytes
    #: request: method, target, version; response: version, status, reason
    method: str = ""
    target: str = ""
    version: str = "HTTP/1.1"
    status: int = 0
    _index: dict[bytes, list[bytes]] = field(default_factory=dict, repr=False)

    def get(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (lower-case bytes), or None."""
        vals = self._index.get(name)
        return vals[-1] if vals else None

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case bytes), in order."""
        return self._index.get(name, [])

    def tokens(self, name: bytes) -> set[bytes]:
        """Comma-separated, lower-cased tokens of every ``name`` header (``Connection``)."""
        out: set[bytes] = set()
        for v in self.get_all(name):
            out.update(t.strip().lower() for t in v.split(b","))
        out.discard(b"")
        return out


def _parse_fields(lines: list[bytes]) -> tuple[list[tuple[bytes, bytes]], dict[bytes, list[bytes]]]:
    headers: list[tuple[bytes, bytes]] = []
    index: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TOKEN_BYTES.issuperset(name):
            # also refuses obsolete line folding (a line starting with whitespace)
            raise HTTPError(400, f"malformed header line {line[:60]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        index.setdefault(name.lower(), []).append(value)
    return headers, index


def _refuse_control_bytes(raw: bytes, bad: re.Match[bytes]) -> HTTPError:
    """A 400 naming the line of ``raw`` that holds the control byte ``bad`` found."""
    start = raw.rfind(b"\n", 0, bad.start()) + 1
    line = raw[start : bad.start()]
    where = line.partition(b":")[0][:40] if start and b":" in line else b"the request line"
    return HTTPError(
        400,
        f"control character 0x{raw[bad.start()]:02x} in {where.decode('latin-1')!r}: "
        "header values and the request target may not contain CR, LF, NUL or other "
        "control characters (only CRLF ends a line)",
    )


def parse_request_head(raw: bytes) -> Head:
    """Parse ``raw`` (a head ending with an empty line) as a request.

    Refused (400): control characters (except HTAB in field values), a CR or LF
    that is not part of a CRLF line end, a request target with whitespace.
    """
    bad = _BAD_HEAD_BYTES.search(raw)
    if bad is not None:
        raise _refuse_control_bytes(raw, bad)
    lines = raw[:-4].split(b"\r\n")
    # tolerate empty lines before the request line (RFC 9112 §2.2)
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise HTTPError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HTTPError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if b"\t" in target:
        raise HTTPError(400, "malformed request target (it contains a tab)")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HTTPError(505, f"HTTP version {version[:16]!r} is not supported")
    if not _TOKEN_BYTES.issuperset(method):
        raise HTTPError(400, "malformed request method")
    headers, index = _parse_fields(lines[1:])
    return Head(
        first=lines[0],
        headers=headers,
        raw=raw,
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        version=version.decode("ascii"),
        _index=index,
    )


def parse_response_head(raw: bytes) -> Head:
    """Parse ``raw`` (a head ending with an empty line) as a response."""
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, _reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HTTPError(502, f"the application sent a malformed status line {lines[0][:80]!r}")
    headers, index = _parse_fields(lines[1:])
    return Head(
        first=lines[0],
        headers=headers,
        raw=raw,
        version=version.decode("ascii"),
        status=int(code),
        _index=index,
    )


# ---------------------------------------------------------------------- framing
NONE = 0  # no body
LENGTH = 1  # Content-Length bytes
CHUNKED = 2  # chunked transfer coding
UNTIL_CLOSE = 3  # everything until the connection closes (responses only)


def _content_length(head: Head) -> int | None:
    values = head.get_all(b"content-length")
    if not values:
        return None
    parts = {p.strip() for v in values for p in v.split(b",")}
    if len(parts) != 1:
        raise HTTPError(400, "conflicting Content-Length headers")
    (value,) = parts
    if not value.isdigit():
        raise HTTPError(400, f"malformed Content-Length {value[:20]!r}")
    return int(value)


def _is_chunked(head: Head) -> bool:
    codings = [
        c.strip(b" \t").lower() for v in head.get_all(b"transfer-encoding") for c in v.split(b",")
    ]
    codings = [c for c in codings if c]
    if not codings:
        return False
    if codings[-1] != b"chunked":
        raise HTTPError(501, "only the chunked transfer coding is supported as the last coding")
    return True


def request_framing(head: Head) -> tuple[int, int]:
    """``(kind, length)`` of a request body (RFC 9112 §6.3; both headers → refused)."""
    chunked = _is_chunked(head)
    length = _content_length(head)
    if chunked and length is not None:
        raise HTTPError(400, "a request may not carry both Transfer-Encoding and Content-Length")
    if chunked:
        return CHUNKED, 0
    if length:
        return LENGTH, length
    return NONE, 0


def response_framing(head: Head, request_method: str) -> tuple[int, int]:
    """``(kind, length)`` of a response body to a ``request_method`` request."""
    status = head.status
    if request_method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return NONE, 0
    if request_method == "CONNECT" and 200 <= status < 300:
        return UNTIL_CLOSE, 0
    if _is_chunked(head):
        return CHUNKED, 0
    length = _content_length(head)
    if length is not None:
        return (LENGTH, length) if length else (NONE, 0)
    return UNTIL_CLOSE, 0


#: A chunk-size line (without its CRLF): 1-16 hex digits, then optional extensions.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?\Z")
#: A trailer field line: a token name, a colon, a value without control characters.
_TRAILER_FIELD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\Z")


class ChunkedScanner:
    """Finds where a chunked body ends, across any split of its bytes, without copying data.

    Strict, so that no server behind the forwarder can frame the body differently:
    sizes are 1-16 hex digits (no sign, ``0x``, ``_`` or whitespace before the
    extensions), and every size line, chunk's data and trailer line ends with
    exactly CRLF; anything else is an :class:`HTTPError` (400).
    """

    _SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)

    def __init__(self) -> None:
        self.state = self._SIZE
        self.remaining = 0
        self._line = bytearray()

    @property
    def done(self) -> bool:
        """The last chunk and the trailer section have been seen."""
        return self.state == self._DONE

    def feed(self, data: bytes | bytearray | memoryview, pos: int = 0) -> int:
        """Scan ``data[pos:]``; the index just past the body's end, or ``-1`` if it goes on."""
        n = len(data)
        while pos < n:
            st = self.state
            if st == self._DATA:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state, self.remaining = self._CRLF, 2
            elif st == self._CRLF:  # exactly CRLF after the chunk data, however split
                want = b"\r\n"[2 - self.remaining :]
                got = bytes(data[pos : pos + len(want)])
                if not want.startswith(got):
                    raise HTTPError(400, "chunk data is not followed by CRLF")
                pos += len(got)
                self.remaining -= len(got)
                if not self.remaining:
                    self.state = self._SIZE
            elif st == self._DONE:
                return pos
            else:
                nl = bytes(data[pos : min(n, pos + MAX_CHUNK_LINE + 1)]).find(b"\n")
                if nl < 0:
                    self._line += data[pos:n]
                    if len(self._line) > MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk line too long")
                    return -1
                self._line += data[pos : pos + nl]
                pos += nl + 1
                line = bytes(self._line)
                self._line.clear()
                if not line.endswith(b"\r"):
                    raise HTTPError(400, "a chunk line must end with CRLF, not a bare LF")
                line = line[:-1]
                if st == self._SIZE:
                    m = _CHUNK_SIZE.match(line)
                    if m is None:
                        raise HTTPError(400, f"malformed chunk size line {line[:40]!r}")
                    size = int(m.group(1), 16)
                    if size:
                        self.state, self.remaining = self._DATA, size
                    else:
                        self.state = self._TRAILER
                elif not line:  # the empty line after the trailer fields
                    self.state = self._DONE
                    return pos
                elif _TRAILER_FIELD.match(line) is None:
                    raise HTTPError(400, f"malformed trailer field {line[:40]!r}")
        return pos if self.state == self._DONE else -1


def status_reason(status: int) -> str:
    """The standard reason phrase for ``status``."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def simple_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
    close: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response with a ``Content-Length`` body."""
    lines = [
        f"HTTP/1.1 {status} {status_reason(status)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
