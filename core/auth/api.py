"""The auth API: JSON remote procedure calls over mutual TLS.

``POST /v1/rpc/<method>`` with a JSON object of parameters returns
``{"result": ...}`` or ``{"error": {"kind", "message", "hint"}}``. The caller is
whoever its client certificate says (host CA or user CA); every method checks
RBAC (or the ``Admin`` system role) and every denial is audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509

from jumpgate.core.aio import spawn
from jumpgate.core.auth.server import ADMIN_ROLE, AuthServer
from jumpgate.core.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    JumpgateError,
    NotFound,
)
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)

Handler = Callable[["ApiContext", dict[str, Any]], Awaitable[Any]]

#: Largest request body accepted (bytes).
MAX_BODY = 16 * 1024 * 1024

_STATUS: dict[type[JumpgateError], int] = {
    BadParameter: 400,
    AccessDenied: 403,
    NotFound: 404,
    AlreadyExists: 409,
    CompareFailed: 412,
}


@dataclass(frozen=True)
class Method:
    """One API method and the permission it needs (``None`` = any authenticated caller)."""

    name: str
    fn: Handler
    kind: str | None = None
    verb: str | None = None


METHODS: dict[str, Method] = {}


def rpc(
    name: str, *, kind: str | None = None, verb: str | None = None
) -> Callable[[Handler], Handler]:
    """Register an API method. ``kind``/``verb`` name the RBAC rule it requires."""

    def deco(fn: Handler) -> Handler:
        METHODS[name] = Method(name, fn, kind, verb)
        return fn

    return deco


@dataclass
class ApiContext:
    """What a method gets: the auth server and the authenticated caller."""

    auth: AuthServer
    identity: Identity
    client_addr: str
    peer_der: bytes = b""  # the caller's certificate (DER), e.g. for bot renewal

    @property
    def is_admin(self) -> bool:
        """The local admin identity (``tctl`` on the auth host) may do everything."""
        return self.identity.system_role == ADMIN_ROLE

    def require(self, kind: str, verb: str) -> None:
        """Raise AccessDenied unless the caller's roles allow ``verb`` on ``kind``."""
        if self.is_admin:
            return
        self.auth.checker_for_identity(self.identity).require_rule(kind, verb)

    @property
    def caller(self) -> str:
        """The caller's user name for audit records."""
        return self.identity.username


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, bytes):
        return obj.decode()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """JSON for API responses (what ``json.dumps(obj, default=..., separators=(",", ":"))``
    returns, without building an encoder per call)."""
    return _ENCODER.encode(obj)


_JSON = "application/json"


class AuthAPI:
    """Serves :data:`METHODS` for one :class:`AuthServer`.

    :meth:`call` is the transport-independent core (identity, lock and RBAC
    checks, dispatch, error mapping, audit of denials). Two HTTP front ends use
    it: :attr:`app`, an aiohttp application, and :func:`start_api_server`, a
    small HTTP/1.1 server of this module built for the issuance hot path.
    """

    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        self._identities: OrderedDict[bytes, Identity] = OrderedDict()
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post("/v1/rpc/{method}", self.handle)
        self.app.router.add_get("/v1/ping", self.ping)

    def _identity_from_der(self, der: bytes | None) -> Identity:
        if not der:
            raise AccessDenied(
                "a client certificate is required", hint="use an identity file (-i) or log in"
            )
        ident = self._identities.get(der)
        if ident is None:
            ident = identity_from_certificate(x509.load_der_x509_certificate(der))
            self._identities[der] = ident
            if len(self._identities) > 4096:
                self._identities.popitem(last=False)
        if ident.expires is not None and ident.expires <= self.auth.clock():
            raise AccessDenied(f"certificate expired at {ident.expires}", hint="log in again")
        return ident

    def _identity(self, request: web.Request) -> Identity:
        return self._identity_from_der(_peer_der(request.transport))

    def ping_body(self) -> bytes:
        """The JSON of ``GET /v1/ping``: unauthenticated liveness and cluster name."""
        return json.dumps(
            {"cluster_name": self.auth.cluster_name, "server_version": version()}
        ).encode()

    async def ping(self, request: web.Request) -> web.Response:
        """Unauthenticated liveness and cluster name."""
        return web.Response(body=self.ping_body(), content_type=_JSON, charset="utf-8")

    async def handle(self, request: web.Request) -> web.Response:
        """Dispatch one RPC (aiohttp front end)."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        status, body = await self.call(
            request.match_info["method"],
            _peer_der(request.transport),
            f"{peer[0]}:{peer[1]}" if peer else "",
            request.read,
        )
        return web.Response(status=status, body=body, content_type=_JSON, charset="utf-8")

    async def call(
        self,
        name: str,
        peer_der: bytes | None,
        client_addr: str,
        read_body: Callable[[], Awaitable[bytes]],
    ) -> tuple[int, bytes]:
        """Run method ``name`` for the client whose DER certificate is ``peer_der``.

        ``read_body`` returns the request body; it is awaited only after the
        caller passed the identity, lock and RBAC checks. Returns the HTTP status
        and the JSON response (``{"result": ...}`` or ``{"error": ...}``).
        """
        identity: Identity | None = None
        try:
            identity = self._identity_from_der(peer_der)
            method = METHODS.get(name)
            if method is None:
                raise NotFound(
                    f"unknown API method {name!r}", hint="client and server versions may differ"
                )
            if identity.system_role != ADMIN_ROLE:
                self.auth.check_lock(identity)
            ctx = ApiContext(self.auth, identity, client_addr, peer_der or b"")
            if method.kind and method.verb:
                ctx.require(method.kind, method.verb)
            body = await read_body()
            try:
                params = _loads(body) if body else {}
            except ValueError:
                raise BadParameter("request body is not JSON") from None
            if not isinstance(params, dict):
                raise BadParameter("request body must be a JSON object")
            result = await method.fn(ctx, params)
            return 200, _RESULT_HEAD + dumps(result).encode() + b"}"
        except JumpgateError as exc:
            status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
            if isinstance(exc, AccessDenied):
                self.auth.audit.emit(
                    "access.denied",
                    success=False,
                    user=identity.username if identity else None,
                    method=name,
                    error=exc.message,
                    addr=client_addr,
                )
            return status, dumps({"error": exc.to_dict()}).encode()
        except Exception as exc:
            log.exception("API method %s failed", name)
            err = {"kind": "error", "message": f"internal error in {name}: {exc}"}
            return 500, dumps({"error": err}).encode()


_RESULT_HEAD = b'{"result":'


def _loads(body: bytes) -> Any:
    """``json.loads(body)``, minus the encoding sniffing for the usual UTF-8 object."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        # what json.detect_encoding decides for such a body; json.loads decodes so too
        return json.loads(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


def _peer_der(transport: asyncio.BaseTransport | None) -> bytes | None:
    ssl_obj = transport.get_extra_info("ssl_object") if transport else None
    der: bytes | None = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    return der


# ----------------------------------------------------------------------------- HTTP/1.1 server
#
# aiohttp's request/response machinery costs about as much CPU per call as issuing
# the certificate itself. The API needs little of it: POST /v1/rpc/<method> with a
# JSON body, GET /v1/ping, keep-alive. _ApiProtocol speaks just that much HTTP/1.1
# (Content-Length and chunked request bodies, pipelining answered in order,
# Expect: 100-continue, HTTP/1.0) with hard limits on the request head and body
# and timeouts for idle connections and slow requests.

#: Largest request line plus headers (bytes), the most header fields, the most chunks.
MAX_HEAD = 32 * 1024
MAX_HEADERS = 128
MAX_CHUNKS = 65536
#: A keep-alive connection without a request in progress is closed after this long.
IDLE_TIMEOUT = 75.0
#: A request must arrive completely (head and body) within this long of its first byte.
REQUEST_TIMEOUT = 60.0
#: On shutdown, requests in progress get this long to finish before they are cancelled.
SHUTDOWN_GRACE = 2.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
_RPC_PREFIX = "/v1/rpc/"
_JSON_TYPE = b"application/json; charset=utf-8"
_TEXT_TYPE = b"text/plain; charset=utf-8"


class _HttpError(Exception):
    """A request the server answers with ``status`` and then closes the connection."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail or _REASONS.get(status, ""))
        self.status = status


@dataclass
class _Request:
    method: str
    path: str
    keep_alive: bool
    http10: bool
    body: bytes


@dataclass
class _Head:
    """A parsed request head whose body is still arriving."""

    method: str
    target: str
    http10: bool
    keep_alive: bool
    expect_continue: bool
    body_start: int
    length: int  # -1: chunked
    chunk_pos: int = -1
    chunks: list[bytes] = field(default_factory=list)
    total: int = 0
    chunks_done: bool = False


_HEX_DIGITS = b"0123456789abcdefABCDEF"


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    http10: bool = False,
    content_type: bytes = _JSON_TYPE,
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    conn = (
        b""
        if keep_alive and not http10
        else b"Connection: keep-alive\r\n"
        if keep_alive
        else b"Connection: close\r\n"
    )
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode("ascii")),
            b"Content-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
            % (content_type, len(body), _http_date()),
            conn,
            extra,
            b"\r\n",
            b"" if head_only else body,
        )
    )


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_head(head: bytes) -> tuple[str, str, bool, dict[str, str]]:
    """(method, target, HTTP/1.0?, headers with lower-case names) of a request head."""
    text = head.decode("latin-1")  # field values may carry obs-text (RFC 9110 5.5)
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not lines[0].isascii() or not lines[0].isprintable():
        raise _HttpError(400, "malformed request line")
    method, target, proto = parts
    if proto == "HTTP/1.1":
        http10 = False
    elif proto == "HTTP/1.0":
        http10 = True
    elif proto.startswith("HTTP/"):
        raise _HttpError(505)
    else:
        raise _HttpError(400, "malformed request line")
    if not method.isalpha() or not method.isupper() or not target:
        raise _HttpError(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise _HttpError(431, "too many header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise _HttpError(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key in ("content-length", "host", "transfer-encoding") and headers[key] != value:
                raise _HttpError(400, f"conflicting {name} header fields")
            if key != "content-length":
                headers[key] = f"{headers[key]}, {value}"
        else:
            headers[key] = value
    return method, target, http10, headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


class _ApiProtocol(asyncio.Protocol):
    """One client connection of :class:`ApiServer`: requests in, responses out, in order."""

    def __init__(self, server: ApiServer) -> None:
        self._server = server
        self._api = server.api
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._client_addr = ""
        self._busy = False  # a request is being handled
        self._write_paused = False
        self._read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = ""
        self._deadline = 0.0
        self._head: _Head | None = None
        self._closed = False
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.task: asyncio.Task[None] | None = None

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TLS transport implements asyncio.Transport without subclassing it)
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self._client_addr = f"{peer[0]}:{peer[1]}"
        self._server.connections.add(self)
        self._arm("idle")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._transport = None
        self._cancel_timer()
        self._server.connections.discard(self)
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy or self._write_paused:
            # not parsing now: stop reading once a whole request's worth is buffered
            if len(self._buf) > MAX_HEAD + MAX_BODY and not self._read_paused:
                assert self._transport is not None
                self._transport.pause_reading()
                self._read_paused = True
            return
        self._next()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy:
            self._resume_reading()
            self._next()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        if not self._busy:
            self.close()
        return None

    # -- timers
    # One lazily re-scheduled timer per connection: arming only moves a deadline, so a
    # busy keep-alive connection does not create and cancel a timer per request.
    def _arm(self, kind: str) -> None:
        if self._timer_kind == kind:
            return  # a request keeps the deadline of its first byte
        self._timer_kind = kind
        self._deadline = self._loop.time() + (IDLE_TIMEOUT if kind == "idle" else REQUEST_TIMEOUT)
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(self._deadline, self._timed_out)

    def _disarm(self) -> None:
        self._timer_kind = ""

    def _cancel_timer(self) -> None:
        self._timer_kind = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if not kind or self._transport is None or self._busy:
            return  # disarmed: the next _arm schedules again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._timed_out)
            return
        self._timer_kind = ""
        if kind == "request":
            self._send(
                _response(408, b"408: Request Timeout", keep_alive=False, content_type=_TEXT_TYPE)
            )
        self.close()

    def close(self) -> None:
        """Close the connection (after pending writes)."""
        self._closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closed = True
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _fail(self, err: _HttpError) -> None:
        body = f"{err.status}: {err}".encode()
        self._send(_response(err.status, body, keep_alive=False, content_type=_TEXT_TYPE))
        self._buf.clear()
        self._head = None
        self.close()

    # -- requests
    def _next(self) -> None:
        """Start the next complete request in the buffer, if any."""
        if self._busy or self._closed or self._transport is None or self._write_paused:
            return
        if not self._buf:
            self._arm("idle")
            return
        try:
            req = self._parse()
        except _HttpError as err:
            self._fail(err)
            return
        if req is None:
            self._arm("request" if self._buf else "idle")
            return
        self._disarm()
        self._busy = True
        self.task = spawn(self._run(req), name="auth-api-request")

    def _parse(self) -> _Request | None:
        """The next complete request in the buffer (consumed), None if incomplete."""
        buf = self._buf
        head = self._head
        if head is None:
            # RFC 9112 2.2: ignore empty lines before a request line
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise _HttpError(431, "the request head is too large")
                return None
            method, target, http10, headers = _parse_head(bytes(buf[:end]))
            te = headers.get("transfer-encoding")
            length = -1
            if te is not None:
                if "content-length" in headers:
                    raise _HttpError(400, "both Transfer-Encoding and Content-Length")
                if te.lower() != "chunked":
                    raise _HttpError(501, f"transfer coding {te!r} is not supported")
            else:
                cl = headers.get("content-length", "0")
                if not cl.isascii() or not cl.isdigit():
                    raise _HttpError(400, "malformed Content-Length")
                length = int(cl)
                if length > MAX_BODY:
                    raise _HttpError(413, f"the request body is larger than {MAX_BODY} bytes")
            conn = headers.get("connection")
            tokens = _tokens(conn) if conn else set()
            keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
            expect = not http10 and headers.get("expect", "").lower() == "100-continue"
            head = self._head = _Head(method, target, http10, keep_alive, expect, end + 4, length)
        if head.length >= 0:
            done = head.body_start + head.length
            if len(buf) < done:
                self._maybe_continue(head)
                return None
            body = bytes(buf[head.body_start : done])
        else:
            if not self._chunked(head):
                self._maybe_continue(head)
                return None
            body = b"".join(head.chunks)
            done = head.chunk_pos
        del buf[:done]
        self._head = None
        return _Request(head.method, head.target, head.keep_alive, head.http10, body)

    def _maybe_continue(self, head: _Head) -> None:
        if head.expect_continue:
            head.expect_continue = False
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _chunked(self, head: _Head) -> bool:
        """Advance the chunked body of ``head`` over the buffer; True once it is complete."""
        buf = self._buf
        if head.chunk_pos < 0:
            head.chunk_pos = head.body_start
        pos = head.chunk_pos
        while not head.chunks_done:
            eol = buf.find(b"\r\n", pos, pos + 1024)
            if eol < 0:
                if len(buf) - pos >= 1024:
                    raise _HttpError(400, "malformed chunk size line")
                return False
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip(b" \t")
            if not size_text or len(size_text) > 8 or size_text.strip(_HEX_DIGITS):
                raise _HttpError(400, "malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                head.chunks_done = True
                pos = head.chunk_pos = eol + 2
                break
            if head.total + size > MAX_BODY:
                raise _HttpError(413, f"the request body is larger than {MAX_BODY} bytes")
            if len(head.chunks) >= MAX_CHUNKS:
                raise _HttpError(400, f"more than {MAX_CHUNKS} chunks")
            start = eol + 2
            if len(buf) < start + size + 2:
                return False
            if buf[start + size : start + size + 2] != b"\r\n":
                raise _HttpError(400, "malformed chunk")
            head.chunks.append(bytes(buf[start : start + size]))
            head.total += size
            pos = head.chunk_pos = start + size + 2
        # trailer fields (ignored), then an empty line
        while True:
            eol = buf.find(b"\r\n", pos, pos + 8192)
            if eol < 0:
                if len(buf) - pos >= 8192:
                    raise _HttpError(431, "trailer field too large")
                return False
            if eol == pos:
                head.chunk_pos = pos + 2
                return True
            pos = head.chunk_pos = eol + 2

    async def _run(self, req: _Request) -> None:
        failed = False
        try:
            status, body, content_type, extra = await self._respond(req)
        except Exception:  # pragma: no cover - AuthAPI.call maps every error
            log.exception("auth API: request failed")
            status, body, content_type, extra = _plain(500)
            failed = True
        finally:
            self._busy = False
        keep_alive = req.keep_alive and not failed and not self._server.closing
        self._send(
            _response(
                status,
                body,
                keep_alive=keep_alive,
                http10=req.http10,
                content_type=content_type,
                extra=extra,
                head_only=req.method == "HEAD",
            )
        )
        if self._transport is None:
            return
        if not keep_alive:
            self.close()
            return
        if not self._write_paused:
            self._resume_reading()
        self._next()

    async def _respond(self, req: _Request) -> tuple[int, bytes, bytes, bytes]:
        """(status, body, content type, extra header lines) for one request."""
        path = req.path.partition("?")[0]
        if path.startswith(_RPC_PREFIX):
            name = unquote(path[len(_RPC_PREFIX) :])
            if not name or "/" in name:
                return _plain(404)
            if req.method != "POST":
                return _not_allowed("POST")
            body = req.body

            async def read_body() -> bytes:
                return body

            status, payload = await self._api.call(
                name, _peer_der(self._transport), self._client_addr, read_body
            )
            return status, payload, _JSON_TYPE, b""
        if path == "/v1/ping":
            if req.method not in ("GET", "HEAD"):
                return _not_allowed("GET,HEAD")
            return 200, self._api.ping_body(), _JSON_TYPE, b""
        return _plain(404)


def _plain(status: int) -> tuple[int, bytes, bytes, bytes]:
    return status, f"{status}: {_REASONS[status]}".encode(), _TEXT_TYPE, b""


def _not_allowed(allow: str) -> tuple[int, bytes, bytes, bytes]:
    return 405, b"405: Method Not Allowed", _TEXT_TYPE, f"Allow: {allow}\r\n".encode("ascii")


class ApiServer:
    """A listening :class:`AuthAPI` (see :func:`start_api_server`).

    ``addresses`` lists the bound socket addresses; :meth:`cleanup` stops
    listening, lets requests in progress finish (up to ``shutdown_timeout``
    seconds, then cancels them) and closes every connection. The interface matches what the
    daemon uses of an ``aiohttp.web.AppRunner``.
    """

    def __init__(
        self,
        api: AuthAPI,
        loop: asyncio.AbstractEventLoop,
        *,
        shutdown_timeout: float = SHUTDOWN_GRACE,
    ) -> None:
        self.api = api
        self.loop = loop
        self.shutdown_timeout = shutdown_timeout
        self.connections: set[_ApiProtocol] = set()
        self.closing = False
        self._server: asyncio.Server | None = None

    @property
    def addresses(self) -> list[Any]:
        """The bound addresses (``(host, port, ...)`` tuples)."""
        if self._server is None:
            return []
        return [sock.getsockname() for sock in self._server.sockets]

    async def cleanup(self) -> None:
        """Stop serving; idempotent."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        busy: list[asyncio.Task[None]] = []
        for conn in list(self.connections):
            if conn.task is not None and not conn.task.done():
                busy.append(conn.task)
            else:
                conn.close()
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        conns = list(self.connections)
        for conn in conns:
            conn.close()
        if conns:
            _gone, stuck = await asyncio.wait([c.lost for c in conns], timeout=2.0)
            for conn in conns:
                if not conn.lost.done():
                    conn.abort()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def start_api_server(
    api: AuthAPI,
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    reuse_address: bool = True,
    reuse_port: bool = False,
    shutdown_timeout: float = SHUTDOWN_GRACE,
) -> ApiServer:
    """Listen on ``host:port`` (TLS with ``ssl_context``) and serve ``api``.

    ``host`` None or ``""`` listens on every interface. Raises OSError when the
    address cannot be bound. ``shutdown_timeout`` is how long
    :meth:`ApiServer.cleanup` lets requests in progress finish.
    """
    loop = asyncio.get_running_loop()
    server = ApiServer(api, loop, shutdown_timeout=shutdown_timeout)
    server._server = await loop.create_server(
        lambda: _ApiProtocol(server),
        host or None,
        port,
        ssl=ssl_context,
        reuse_address=reuse_address,
        reuse_port=reuse_port or None,
    )
    return server


def version() -> str:
    """The Jumpgate version string."""
    from jumpgate.core.version import VERSION

    return VERSION


def server_ssl_context(
    *, cert_file: str, key_file: str, client_ca_pem: bytes, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate from one of the given CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cadata=client_ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def serving(auth: Any, *, cert_file: str, key_file: str) -> tuple[AuthAPI, ssl.SSLContext]:
    """What serves ``auth`` on the auth port (the daemon's and each auth worker's): the
    :class:`AuthAPI` with every RPC method registered, and its mutual-TLS context
    (clients from the host and user CAs; ALPN ``http/1.1`` and ``teleport-auth@<cluster>``)."""
    import jumpgate.core.app.rpc
    import jumpgate.core.auth.methods  # registers the API methods
    import jumpgate.core.auth.methods_bot
    import jumpgate.core.auth.methods_db  # noqa: F401
    from jumpgate.core.tlsca import CAType

    ctx = server_ssl_context(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_pem=auth.ca_pem(CAType.HOST) + auth.ca_pem(CAType.USER),
        alpn=["http/1.1", f"teleport-auth@{auth.cluster_name}"],
    )
    return AuthAPI(auth), ctx
