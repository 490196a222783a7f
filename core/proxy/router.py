"""TLS routing on the proxy's one web port.

Each accepted connection is *peeked* (never consumed) until its ClientHello is
complete; the router then picks a route by ALPN (in the client's order) and
SNI:

* ``tls`` routes terminate TLS here with a context whose ALPN list holds only the
  chosen protocol, then hand the decrypted stream to an asyncio protocol (the web
  API and app access, database protocols in later modules);
* ``raw`` routes receive the untouched socket (the auth API pass-through: the
  client's mutual TLS goes end to end to the auth service).

A ClientHello that asks only for protocols nobody serves gets a clean fatal
``no_application_protocol`` alert and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from jumpgate.core.aio import spawn
from jumpgate.core.proxy.clienthello import (
    ALERT_NO_APPLICATION_PROTOCOL,
    MAX_HELLO,
    ClientHello,
    NotTLS,
    parse_client_hello,
)

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
RawHandler = Callable[[socket.socket, ClientHello], Awaitable[None]]

#: How long a client has to send its ClientHello and finish the handshake.
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class Route:
    """One way to serve a negotiated protocol."""

    protocol: str
    #: ``True`` when the protocol name is a prefix (e.g. ``teleport-auth@``)
    prefix: bool = False
    factory: ProtocolFactory | None = None
    raw: RawHandler | None = None
    #: picks another factory for some ClientHellos (app hosts by SNI); None keeps ``factory``
    choose: Callable[[ClientHello], ProtocolFactory | None] | None = None

    def matches(self, proto: str) -> bool:
        """Whether this route serves ``proto``."""
        return proto.startswith(self.protocol) if self.prefix else proto == self.protocol


@dataclass
class RouterStats:
    """Counters for the dashboard and logs."""

    accepted: int = 0
    rejected_alpn: int = 0
    not_tls: int = 0
    by_protocol: dict[str, int] = field(default_factory=dict)


class TLSRouter:
    """Accept loop for the web port. Register routes, then ``await start(host, port)``."""

    def __init__(
        self,
        make_context: Callable[[str, str], ssl.SSLContext],
        *,
        default_protocol: str = "http/1.1",
        prepare: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._make_context = make_context
        #: awaited with (protocol, SNI) before ``make_context`` for TLS routes
        self._prepare = prepare
        self.default_protocol = default_protocol
        self.routes: list[Route] = []
        self.stats = RouterStats()
        self._servers: list[socket.socket] = []
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.addresses: list[tuple[str, int]] = []

    def add_tls_route(
        self, protocol: str, factory: ProtocolFactory, *, prefix: bool = False
    ) -> None:
        """Terminate TLS and serve ``protocol`` with protocols from ``factory``."""
        self.routes.append(Route(protocol, prefix=prefix, factory=factory))

    def add_raw_route(self, protocol: str, handler: RawHandler, *, prefix: bool = False) -> None:
        """Hand the untouched socket (ClientHello still unread) to ``handler``."""
        self.routes.append(Route(protocol, prefix=prefix, raw=handler))

    def supported(self) -> list[str]:
        """Protocol names advertised (prefix routes shown with their prefix)."""
        return [r.protocol for r in self.routes]

    def select(self, hello: ClientHello) -> tuple[Route, str] | None:
        """The route and protocol for a ClientHello (client's preference order)."""
        offered = hello.alpn or (self.default_protocol,)
        for proto in offered:
            for route in self.routes:
                if route.matches(proto):
                    return route, proto
        return None

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on ``host:port`` (port 0 = any free port). Returns the bound addresses."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        for family, _, _, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(512)
            sock.setblocking(False)
            self._servers.append(sock)
            bound = sock.getsockname()
            self.addresses.append((bound[0], bound[1]))
            self._accept_tasks.append(
                spawn(self._accept_loop(sock), name=f"router-accept-{bound[1]}")
            )
            if port == 0:
                port = bound[1]
        return self.addresses

    async def close(self) -> None:
        """Stop accepting and cancel handshakes in progress."""
        for task in self._accept_tasks:
            task.cancel()
        for sock in self._servers:
            sock.close()
        for task in list(self._conn_tasks):
            task.cancel()
        self._servers.clear()

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stats.accepted += 1
            task = spawn(self._route(conn), name="router-conn")
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    async def _peek_hello(self, sock: socket.socket) -> ClientHello:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        delay = 0.0
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
            finally:
                loop.remove_reader(sock.fileno())
            data = sock.recv(MAX_HELLO, socket.MSG_PEEK)
            if not data:
                raise ConnectionError("closed before ClientHello")
            hello = parse_client_hello(data)
            if hello is not None:
                return hello
            if time.monotonic() > deadline:
                raise TimeoutError("ClientHello timed out")
            # the rest of the hello has not arrived: data stays readable, so back off
            delay = min(0.05, delay * 2 or 0.002)
            await asyncio.sleep(delay)

    async def _route(self, sock: socket.socket) -> None:
        peer = _peer(sock)
        try:
            hello = await self._peek_hello(sock)
        except NotTLS as exc:
            self.stats.not_tls += 1
            log.info("connection from %s is not TLS (%s); closing", peer, exc)
            sock.close()
            return
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("connection from %s dropped before its ClientHello: %s", peer, exc)
            sock.close()
            return
        picked = self.select(hello)
        if picked is None:
            self.stats.rejected_alpn += 1
            log.warning(
                "refused TLS connection from %s: no route for ALPN %s (SNI %r); serving %s",
                peer,
                list(hello.alpn),
                hello.server_name,
                self.supported(),
            )
            with contextlib.suppress(OSError):
                sock.send(ALERT_NO_APPLICATION_PROTOCOL)
            sock.close()
            return
        route, proto = picked
        self.stats.by_protocol[proto] = self.stats.by_protocol.get(proto, 0) + 1
        if route.raw is not None:
            await route.raw(sock, hello)
            return
        if self._prepare is not None:
            # before the route's choice and the context: both read what it refreshes
            try:
                await self._prepare(proto, hello.server_name)
            except Exception as exc:  # go on with what is known
                log.warning("preparing for %s (SNI %r) failed: %s", proto, hello.server_name, exc)
        factory = route.factory
        if route.choose is not None:
            factory = route.choose(hello) or factory
        assert factory is not None
        try:
            ctx = self._make_context(proto, hello.server_name)
        except Exception as exc:
            log.error("no TLS context for %s (SNI %r): %s", proto, hello.server_name, exc)
            sock.close()
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                factory, sock, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            log.info("TLS handshake with %s (%s) failed: %s", peer, proto, exc)
            sock.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def relay_raw(sock: socket.socket, host: str, port: int) -> None:
    """Splice a client socket to ``host:port`` byte for byte (auth pass-through)."""
    try:
        up_r, up_w = await asyncio.open_connection(host, port)
    except OSError as exc:
        log.warning("pass-through to %s:%d failed: %s", host, port, exc)
        sock.close()
        return
    down_r, down_w = await asyncio.open_connection(sock=sock)

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass  # RuntimeError: uvloop's "the handler is closed" (the other side went first)
        finally:
            # half-close towards the peer, unless that side is already closed
            if not w.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    if w.can_write_eof():
                        w.write_eof()

    try:
        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))
    finally:
        up_w.close()
        down_w.close()
