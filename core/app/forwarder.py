"""The Application Service's HTTP/1.1 forwarder: one client connection to one application.

A lean relay (docs/design/app-access.md): it parses only message heads, keeps
track of body framing (``Content-Length``, ``chunked``, until-close) to find
where each message ends on a keep-alive connection, and copies body bytes as
they arrive. Memory stays bounded whatever the body size: each side stops
reading while the other side's write buffer is full.

Per request it rewrites the head: reserved headers the client sent
(``Teleport-Jwt-Assertion``, ``X-Forwarded-*``…) are dropped, and ``Host``, the
``X-Forwarded-For/-Proto/-Host/-Server`` headers, the signed JWT and the app's
``rewrite.headers`` are added. Responses pass through untouched except for
``Location`` headers pointing at the application itself (or a
``rewrite.redirect`` host), which are rewritten to the public address. A
``101 Switching Protocols`` answer (websockets) turns the connection into a
plain byte relay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from jumpgate.core.aio import spawn
from jumpgate.core.app.http1 import (
    CHUNKED,
    LENGTH,
    MAX_HEAD,
    NONE,
    UNTIL_CLOSE,
    ChunkedScanner,
    Head,
    HTTPError,
    head_end,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    simple_response,
)

log = logging.getLogger(__name__)

#: Request headers a client may not set: the forwarder sets them itself.
STRIPPED_REQUEST_HEADERS = frozenset(
    {
        b"host",
        b"teleport-jwt-assertion",
        b"cf-access-token",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-forwarded-server",
        b"x-forwarded-port",
        b"x-forwarded-ssl",
        b"forwarded",
    }
)

#: Cookies of the proxy's browser sessions (``__Host-grv_app_session``, ...): never forwarded.
PROXY_COOKIE_PREFIX = b"__Host-grv_app_"
#: Paths the proxy answers itself on an app host (browser sign-in and sign-out).
RESERVED_PATHS = (b"/x-teleport-auth", b"/x-teleport-logout")


def strip_proxy_cookies(value: bytes) -> bytes:
    """A ``Cookie`` header value without the proxy's own cookies."""
    kept = [
        c.strip()
        for c in value.split(b";")
        if c.strip() and not c.strip().startswith(PROXY_COOKIE_PREFIX)
    ]
    return b"; ".join(kept)


def is_reserved(target: str) -> bool:
    """Whether a request target is one the proxy handles (sign-in/out), not the app."""
    path = target.split("?", 1)[0].encode("latin-1", "replace")
    return path in RESERVED_PATHS


_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _RAW, _UPGRADING, _CLOSED = range(7)

#: ``(method, target, status)`` after each response.
RequestCallback = Callable[[str, str, int], None]


@dataclass
class Upstream:
    """Where the application listens and how to reach it."""

    scheme: str
    host: str
    port: int
    insecure_skip_verify: bool = False
    #: host names whose absolute ``Location`` headers are rewritten to the public address
    redirect_hosts: frozenset[str] = frozenset()
    _ctx: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_uri(
        cls, uri: str, *, insecure_skip_verify: bool = False, redirect: list[str] | None = None
    ) -> Upstream:
        """Parse an app ``uri`` (``http://host:port`` or ``https://…``)."""
        parts = urlsplit(uri if "://" in uri else f"http://{uri}")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"application uri {uri!r} must be http://HOST[:PORT] or https://…")
        port = parts.port or (443 if scheme == "https" else 80)
        hosts = {parts.hostname.lower(), *(h.lower() for h in redirect or [])}
        return cls(scheme, parts.hostname, port, insecure_skip_verify, frozenset(hosts))

    @property
    def host_header(self) -> str:
        """``Host`` for upstream requests (the port only when it is not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for ``https`` apps: verified with the system's CAs unless insecure_skip_verify."""
        if self.scheme != "https":
            return None
        if self._ctx is None:
            ctx = ssl.create_default_context()
            if self.insecure_skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._ctx = ctx
        return self._ctx


def request_suffix(headers: list[tuple[str, str]]) -> bytes:
    """The header lines appended to every request head, plus the empty line ending it."""
    out = bytearray()
    for name, value in headers:
        value = value.replace("\r", " ").replace("\n", " ")
        out += f"{name}: {value}\r\n".encode("latin-1", "replace")
    return bytes(out) + b"\r\n"


class AppSession:
    """Forwards the HTTP traffic of one client connection (the tunnel) to the application."""

    #: A keep-alive connection with no request for this long is closed (seconds).
    IDLE_TIMEOUT = 120.0
    #: A request head still incomplete this long after its first byte gets 408 (seconds).
    HEAD_TIMEOUT = 30.0

    def __init__(
        self,
        upstream: Upstream,
        *,
        suffix: bytes,
        strip: frozenset[bytes] = STRIPPED_REQUEST_HEADERS,
        public_origin: str = "",
        on_request: RequestCallback | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.upstream = upstream
        self.suffix = suffix
        self.strip = strip
        self.public_origin = public_origin
        self.on_request = on_request
        self.connect_timeout = connect_timeout
        self.down = _Down(self)
        self.up: _Up | None = None
        #: (method, target, close) of requests whose responses have not completed;
        #: close: the client asked to end the connection after this one (APP-SEC-8)
        self.pending: collections.deque[tuple[str, str, bool]] = collections.deque()
        self._queue: list[bytes] = []  # request bytes waiting for the upstream connection
        self._connecting = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.requests = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.close_reason = ""
        loop = asyncio.get_running_loop()
        #: last client activity and when the head being buffered started (loop time)
        self.last_activity = loop.time()
        self.head_started = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ set-up
    def start(self, transport: asyncio.BaseTransport, initial: bytes = b"") -> None:
        """Serve ``transport`` (the client side); ``initial`` holds bytes already read."""
        transport.set_protocol(self.down)
        self.down.connection_made(transport)
        if initial:
            self.down.data_received(initial)
        self.down.update_reading()
        self._arm_watchdog()

    # ------------------------------------------------------------------ timeouts
    def _arm_watchdog(self) -> None:
        if self.done.done():
            return
        period = max(0.05, min(self.IDLE_TIMEOUT, self.HEAD_TIMEOUT) / 4)
        self._watchdog = asyncio.get_running_loop().call_later(period, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """Slow or idle clients: a head that never completes gets 408, an idle keep-alive
        connection is closed. A response in progress, an upgrade or a websocket is left
        alone (the application sets their pace)."""
        down = self.down
        if self.done.done() or down.lost:
            return
        now = asyncio.get_running_loop().time()
        if down.state == _HEAD and not self.pending:
            if down.buf and now - self.head_started > self.HEAD_TIMEOUT:
                self.close_reason = self.close_reason or "the request head timed out"
                down.send_error(408, "the request head was not completed in time")
                return
            if not down.buf and now - self.last_activity > self.IDLE_TIMEOUT:
                self.close_reason = self.close_reason or "idle"
                down.close()
                return
        self._arm_watchdog()

    async def wait(self) -> None:
        """Until both connections are closed."""
        await asyncio.shield(self.done)

    def close(self, reason: str = "") -> None:
        """End the session (locks, expiry, shutdown): close both connections."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if reason and not self.close_reason:
            self.close_reason = reason
        self.down.close()
        if self.up is not None:
            self.up.close()
        self._check_done()

    def _check_done(self) -> None:
        if self.down.lost and (self.up is None or self.up.lost) and not self.done.done():
            self.done.set_result(None)

    # ------------------------------------------------------------------ requests
    def rewrite_request(self, head: Head) -> bytes:
        """The head sent upstream: client headers minus the stripped ones, plus ours."""
        strip = self.strip
        parts = [head.first, b"\r\n"]
        for name, value in head.headers:
            lname = name.lower()
            if lname in strip:
                continue
            if lname == b"cookie" and PROXY_COOKIE_PREFIX in value:
                value = strip_proxy_cookies(value)
                if not value:
                    continue
            parts += (name, b": ", value, b"\r\n")
        parts.append(self.suffix)
        return b"".join(parts)

    def write_up(self, data: bytes | memoryview) -> None:
        """Send request bytes upstream (connecting first if needed)."""
        if not data:
            return
        self.bytes_up += len(data)
        up = self.up
        if up is not None and up.transport is not None and not up.lost:
            up.transport.write(data)
            return
        self._queue.append(bytes(data))
        if not self._connecting:
            self._connecting = True
            self.down.update_reading()
            spawn(self._connect(), name="app-upstream-connect")

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        u = self.upstream
        up = _Up(self)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: up,
                    u.host,
                    u.port,
                    ssl=u.ssl_context(),
                    server_hostname=u.host if u.scheme == "https" else None,
                ),
                timeout=self.connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._connecting = False
            self._queue.clear()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            log.info("app: cannot reach %s://%s:%d: %s", u.scheme, u.host, u.port, detail)
            self.down.send_error(
                502, f"the application at {u.scheme}://{u.host_header} is not reachable: {detail}"
            )
            return
        self.up = up
        self._connecting = False
        assert up.transport is not None
        queued, self._queue = self._queue, []
        for chunk in queued:
            up.transport.write(chunk)
        self.down.update_reading()

    def upstream_gone(self, up: _Up, response_started: bool) -> None:
        """The application closed its connection."""
        if self.up is up:
            self.up = None
        if self.down.state == _RAW or up.state == _RAW:
            self.down.close()
        elif self.pending:
            if response_started:
                self.down.close()
            else:
                self.down.send_error(502, "the application closed the connection")
        self._check_done()

    def response_done(self, status: int, close_after: bool) -> None:
        """One response finished: account for it; close when the exchange ends the connection."""
        method, target, close = self.pending.popleft() if self.pending else ("", "", False)
        self.requests += 1
        self.last_activity = asyncio.get_running_loop().time()
        if self.on_request is not None:
            self.on_request(method, target, status)
        down = self.down
        if close or (down.state == _UPGRADING and not self.pending):
            close_after = True  # the client's Connection: close, or a refused upgrade
        if down.final is not None and not self.pending:
            # the answer to a bad (or reserved) request, after everything before it
            t = down.transport
            if t is not None and not t.is_closing():
                t.write(down.final)
            close_after = True
        if close_after or (down.at_eof and not self.pending):
            down.close()

    def rewrite_location(self, head: Head) -> bytes:
        """``head`` with absolute Locations to the app (or redirect hosts) made public."""
        if not self.public_origin:
            return head.raw
        changed = False
        out = [head.first, b"\r\n"]
        for name, value in head.headers:
            if name.lower() == b"location":
                new = self._public_location(value.decode("latin-1"))
                if new is not None:
                    value = new.encode("latin-1")
                    changed = True
            out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        return b"".join(out) if changed else head.raw

    def _public_location(self, loc: str) -> str | None:
        parts = urlsplit(loc)
        if not parts.scheme or not parts.hostname:
            return None
        if parts.hostname.lower() not in self.upstream.redirect_hosts:
            return None
        pub = urlsplit(self.public_origin)
        return urlunsplit((pub.scheme, pub.netloc, parts.path, parts.query, parts.fragment))


def _error_response(status: int, message: str) -> bytes:
    """A JSON error response that closes the connection."""
    import json

    body = json.dumps({"error": {"message": message}}).encode() + b"\n"
    return simple_response(status, body, content_type="application/json")


class _Side(asyncio.Protocol):
    """What the two protocols share: a transport, flow control, and teardown."""

    def __init__(self, session: AppSession) -> None:
        self.s = session
        self.transport: asyncio.Transport | None = None
        self.state = _HEAD
        self.buf = b""
        self.remaining = 0
        self.scanner: ChunkedScanner | None = None
        self.lost = False
        self.at_eof = False
        self.peer_full = False  # the other side's write buffer is full

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
        elif t is None:
            self.lost = True

    def update_reading(self) -> None:
        t = self.transport
        if t is None or self.lost or t.is_closing():
            return
        want = not self.peer_full and not self._held()
        if want != t.is_reading():
            if want:
                t.resume_reading()
            else:
                t.pause_reading()

    def _held(self) -> bool:
        return False

    def _body(self, data: bytes, pos: int, write: Callable[[bytes | memoryview], None]) -> int:
        """Forward body bytes from ``data[pos:]``; returns where the body ended (or len)."""
        n = len(data)
        if self.state == _LENGTH:
            take = min(self.remaining, n - pos)
            write(data if pos == 0 and take == n else memoryview(data)[pos : pos + take])
            self.remaining -= take
            if not self.remaining:
                self.state = _HEAD
            return pos + take
        assert self.scanner is not None
        end = self.scanner.feed(data, pos)
        stop = n if end < 0 else end
        write(data if pos == 0 and stop == n else memoryview(data)[pos:stop])
        if end >= 0:
            self.state = _HEAD
            self.scanner = None
        return stop


class _Down(_Side):
    """The client side (the reverse tunnel): parses requests, writes responses."""

    #: what to answer once the pending responses are done (then close), see finish_with
    final: bytes | None = None
    #: the last request had Connection: close; nothing after it is parsed
    last_request = False

    def _held(self) -> bool:
        return self.s._connecting or self.state in (_UPGRADING, _CLOSED)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        s = self.s
        if self.state == _RAW:
            s.write_up(data)
            return
        s.last_activity = now = asyncio.get_running_loop().time()
        if not self.buf:
            s.head_started = now
        if self.state == _UPGRADING:
            self.buf += data
            self.update_reading()
            return
        if self.buf:
            data, self.buf = self.buf + data, b""
        try:
            self._process(data)
        except HTTPError as exc:
            if self.state == _HEAD:  # a bad head: answer it after the earlier requests
                self.finish_with(_error_response(exc.status, exc.message))
            else:  # a bad body of a forwarded request: it cannot complete
                self.send_error(exc.status, exc.message)

    def _process(self, data: bytes) -> None:
        s = self.s
        pos, n = 0, len(data)
        while pos < n and self.state != _CLOSED:
            if self.state == _HEAD:
                if self.last_request:  # after Connection: close, nothing more is read
                    self.state = _CLOSED
                    self.update_reading()
                    return
                end = head_end(data, pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        raise HTTPError(431, "the request head is too large")
                    self.buf = data[pos:]
                    return
                head = parse_request_head(data[pos:end])
                pos = end
                if is_reserved(head.target):
                    self.reconnect(head.target)
                    return
                kind, length = request_framing(head)
                conn = head.tokens(b"connection")
                close = b"close" in conn or (
                    head.version == "HTTP/1.0" and b"keep-alive" not in conn
                )
                s.pending.append((head.method, head.target, close))
                s.write_up(s.rewrite_request(head))
                self.last_request = close
                if b"upgrade" in conn and head.get(b"upgrade"):
                    # wait for the answer: 101 → raw relay; anything else ends the connection
                    self.state = _UPGRADING
                    self.buf = data[pos:]
                    self.update_reading()
                    return
                if kind == LENGTH:
                    self.state, self.remaining = _LENGTH, length
                elif kind == CHUNKED:
                    self.state, self.scanner = _CHUNKED, ChunkedScanner()
            elif self.state == _RAW:
                s.write_up(memoryview(data)[pos:])
                return
            else:
                pos = self._body(data, pos, s.write_up)

    def upgraded(self) -> None:
        """The application switched protocols: relay raw bytes from now on."""
        held, self.buf = self.buf, b""
        self.state = _RAW
        if held:
            self.s.write_up(held)
        self.update_reading()

    def reconnect(self, target: str) -> None:
        """Send the client to ``target`` again on a new connection (a reserved path arrived
        on a forwarded keep-alive connection: only a first request reaches the proxy's handler)."""
        location = target.replace("\r", "").replace("\n", "")
        self.finish_with(simple_response(307, b"", headers=[("Location", location)]))

    def finish_with(self, data: bytes) -> None:
        """Parse no more requests; write ``data`` once the pending responses are done
        (at once when none is), then close (APP-SEC-7)."""
        self.state = _CLOSED
        self.buf = b""
        t = self.transport
        if t is None or t.is_closing():
            return
        self.update_reading()
        if self.s.pending:
            self.final = data
        else:
            t.write(data)
            t.close()

    def send_error(self, status: int, message: str) -> None:
        """Answer the client with a JSON error (when no response is under way) and close."""
        t = self.transport
        self.state = _CLOSED
        if t is None or t.is_closing():
            return
        up = self.s.up
        if up is None or not up.started:
            t.write(_error_response(status, message))
        t.close()

    def eof_received(self) -> bool:
        self.at_eof = True
        t = self.transport
        if self.state == _RAW and self.s.up is not None and self.s.up.transport is not None:
            ut = self.s.up.transport
            if ut.can_write_eof():
                ut.write_eof()
                return bool(t is not None and t.can_write_eof())
        # answer what was asked, then close
        return bool(self.s.pending and t is not None and t.can_write_eof())

    def pause_writing(self) -> None:
        up = self.s.up
        if up is not None:
            up.peer_full = True
            up.update_reading()

    def resume_writing(self) -> None:
        up = self.s.up
        if up is not None:
            up.peer_full = False
            up.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.state = _CLOSED
        up = self.s.up
        if up is not None:
            up.close()
        self.s._check_done()


class _Up(_Side):
    """The application side: parses responses, writes requests."""

    def __init__(self, session: AppSession) -> None:
        super().__init__(session)
        self.started = False  # bytes of the current response went to the client
        self.close_after = False
        self.status = 0
        #: response bytes of one read, sent to the client together (one TLS record, one
        #: write) instead of a record for the head and another for the body
        self._out: list[bytes | memoryview] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer_full = False
        self.update_reading()

    def _write_down(self, data: bytes | memoryview) -> None:
        t = self.s.down.transport
        if t is not None and not t.is_closing():
            self.s.bytes_down += len(data)
            t.write(data)

    def _flush(self) -> None:
        out = self._out
        if out:
            self._write_down(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def data_received(self, data: bytes) -> None:
        if self.state == _RAW:
            self._write_down(data)
            return
        if self.buf:
            data, self.buf = self.buf + data, b""
        try:
            self._process(data)
        except HTTPError as exc:
            self._flush()
            log.info("app: bad response from the application: %s", exc.message)
            self.s.down.send_error(502, exc.message)
            self.close()
            return
        self._flush()

    def _process(self, data: bytes) -> None:
        s = self.s
        emit = self._out.append  # flushed by data_received (and _finish)
        pos, n = 0, len(data)
        while pos < n:
            if self.state == _HEAD:
                end = head_end(data, pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        raise HTTPError(
                            502, "the application sent a response head that is too large"
                        )
                    self.buf = data[pos:]
                    return
                head = parse_response_head(data[pos:end])
                pos = end
                self.started = True
                emit(s.rewrite_location(head) if s.public_origin else head.raw)
                if head.status == 101:
                    self.state = _RAW
                    s.pending.clear()
                    s.requests += 1
                    s.down.upgraded()
                    emit(memoryview(data)[pos:])
                    return
                if head.status < 200:
                    continue  # 100 Continue and friends: the final answer follows
                method = s.pending[0][0] if s.pending else "GET"
                kind, length = response_framing(head, method)
                self.status = head.status
                self.close_after = b"close" in head.tokens(b"connection") or (
                    head.version == "HTTP/1.0" and b"keep-alive" not in head.tokens(b"connection")
                )
                if kind == NONE:
                    self._finish()
                elif kind == LENGTH:
                    self.state, self.remaining = _LENGTH, length
                elif kind == CHUNKED:
                    self.state, self.scanner = _CHUNKED, ChunkedScanner()
                elif kind == UNTIL_CLOSE:
                    self.state = _UNTIL_CLOSE
            elif self.state == _UNTIL_CLOSE:
                emit(data if pos == 0 else memoryview(data)[pos:])
                return
            else:
                pos = self._body(data, pos, emit)
                if self.state == _HEAD:
                    self._finish()

    def _finish(self) -> None:
        self._flush()  # the response's last bytes go before whatever ending it triggers
        self.state = _HEAD
        self.started = False
        close = self.close_after
        self.s.response_done(self.status, close)
        if close:
            self.close()

    def eof_received(self) -> bool:
        self.at_eof = True
        if self.state == _UNTIL_CLOSE:
            self.s.response_done(self.status, True)
        elif self.state == _RAW:
            dt = self.s.down.transport
            if dt is not None and dt.can_write_eof() and not dt.is_closing():
                dt.write_eof()
                return bool(self.transport is not None and self.transport.can_write_eof())
            self.s.down.close()
        return False

    def pause_writing(self) -> None:
        self.s.down.peer_full = True
        self.s.down.update_reading()

    def resume_writing(self) -> None:
        self.s.down.peer_full = False
        self.s.down.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        started = self.started or self.state not in (_HEAD,)
        if self.state == _UNTIL_CLOSE:
            started = True
        self.s.upstream_gone(self, started)
