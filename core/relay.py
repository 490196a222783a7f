"""Byte relays between asyncio transports, and the handshake reader that precedes them.

The data path of database and app access is: a short request/response
handshake on a raw transport (:class:`Handshake`), perhaps a TLS upgrade in the
middle of it (:func:`start_tls_server` / :func:`start_tls_client`, which keep the
bytes already read), then a :class:`Relay` that copies bytes both ways.

The relay is built for throughput (ARCHITECTURE.md §3): ``asyncio.Protocol``
objects whose ``data_received`` hands the chunk straight to the peer
transport's ``write``; flow control through ``pause_writing``/``resume_writing``
(when a peer's write buffer is full, the other side stops reading); EOF passed
on as ``write_eof`` where both transports can half-close. No per-message work.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TypeVar, cast

from jumpgate.core.errors import ConnectionProblem, LimitExceeded

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes a :class:`Handshake` buffers before it stops reading from the socket.
HANDSHAKE_BUFFER = 64 * 1024


def _drop(data: bytes) -> None:
    """Sink for bytes whose destination is gone."""


class RelayEndpoint(asyncio.Protocol):
    """One side of a :class:`Relay`: the protocol of one transport.

    Bytes it receives are written to the peer endpoint's transport. Use it as a
    ``protocol_factory`` result (``loop.create_connection(lambda: relay.b, …)``)
    or install it on a connected transport with :meth:`attach`.
    """

    def __init__(self, relay: Relay, *, tap: Callable[[bytes], None] | None = None) -> None:
        self.relay = relay
        self.peer: RelayEndpoint = self  # set by Relay
        self.transport: asyncio.Transport | None = None
        #: Bytes read from this side's transport (and passed to the peer).
        self.bytes_received = 0
        self._tap = tap
        self._write: Callable[[bytes], None] | None = None  # the peer transport's write
        self._pending: list[bytes] = []  # read before the peer was attached
        self._eof = False  # this side sent EOF
        self._lost = False
        self._throttled = False  # the peer's write buffer is full

    # ------------------------------------------------------------------ set-up
    def attach(
        self, transport: asyncio.BaseTransport, initial: bytes = b"", *, eof: bool = False
    ) -> None:
        """Take over an already connected ``transport``.

        ``initial`` holds bytes the previous protocol read and did not consume
        (they are relayed first); ``eof`` says that protocol already saw EOF.
        """
        transport.set_protocol(self)
        self.connection_made(transport)
        self.feed(initial)
        if eof and not self.eof_received() and not transport.is_closing():
            transport.close()

    def attach_handshake(self, handshake: Handshake) -> None:
        """Take over the transport of ``handshake`` with the bytes it buffered."""
        transport = handshake.transport
        if transport is None:
            raise ConnectionProblem("the handshake has no connection to relay")
        self.attach(transport, handshake.take_buffer(), eof=handshake.at_eof)
        if handshake.lost:
            self.connection_lost(handshake.exception)

    def feed(self, initial: bytes) -> None:
        """Relay bytes read before this endpoint took over its transport."""
        if initial:
            self.data_received(initial)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Store the transport; start relaying once the peer has one too (or is gone)."""
        self.transport = cast(asyncio.Transport, transport)
        peer = self.peer
        if peer.transport is not None or peer._lost:
            self.relay._link()
        else:
            self._update_reading()

    # ------------------------------------------------------------------ hot path
    def data_received(self, data: bytes) -> None:
        """Forward ``data`` to the peer (or hold it until the peer is attached)."""
        self.bytes_received += len(data)
        write = self._write
        if write is None:
            self._pending.append(data)
            # uvloop starts reading after connection_made whatever it did: pause here
            self._update_reading()
            return
        write(data)
        if self._tap is not None:
            self._tap(data)

    def pause_writing(self) -> None:
        """This transport's write buffer is full: stop reading from the peer."""
        self.peer._throttle(True)

    def resume_writing(self) -> None:
        """This transport's write buffer drained: read from the peer again."""
        self.peer._throttle(False)

    # ------------------------------------------------------------------ end of stream
    def eof_received(self) -> bool:
        """This side is done sending: half-close the peer, or close both."""
        self._eof = True
        if self._write is None:  # not linked yet: pass it on at link time
            return self._can_half_close()
        return self._pass_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        """This side is gone: flush and close the peer."""
        if self._lost:
            return
        self._lost = True
        relay = self.relay
        if exc is not None and relay.error is None:
            relay.error = exc
        peer = self.peer
        if peer._write is not None:  # linked: its bytes have nowhere to go now
            peer._write = _drop
        peer_transport = peer.transport
        if peer_transport is not None and not peer._lost:
            peer_transport.close()
        relay._check_done()

    # ------------------------------------------------------------------ internals
    def _can_half_close(self) -> bool:
        t = self.transport
        return t is not None and t.can_write_eof()

    def _pass_eof(self) -> bool:
        """Deliver this side's EOF to the peer; return whether to keep our transport open."""
        peer = self.peer
        pt = peer.transport
        if pt is None or peer._lost:
            self.relay.close()
            return False
        if self._can_half_close() and pt.can_write_eof():
            if not pt.is_closing():
                pt.write_eof()
            if peer._eof:
                self.relay.close()
                return False
            return True
        # TLS (or a transport that cannot half-close): flush and close both
        self.relay.close()
        return False

    def _link(self, write: Callable[[bytes], None]) -> None:
        """The peer is attached (or gone): flush held bytes, pass a held EOF, start reading."""
        self._write = write
        pending, self._pending = self._pending, []
        for data in pending:
            write(data)
            if self._tap is not None:
                self._tap(data)
        t = self.transport
        if self._eof:
            if not self._pass_eof() and t is not None and not t.is_closing():
                t.close()
        elif self.peer._lost and t is not None and not t.is_closing():
            t.close()
        self._update_reading()

    def _throttle(self, on: bool) -> None:
        self._throttled = on
        self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self._lost or t.is_closing():
            return
        want = self._write is not None and not self._throttled and not self._eof
        if want != t.is_reading():
            if want:
                t.resume_reading()
            else:
                t.pause_reading()


class Relay:
    """Copies bytes between two transports, ``a`` (the client side) and ``b``.

    ``on_a_data`` sees every chunk going from ``a`` to ``b``, after it was
    queued for writing (query audit); it must be cheap. ``done`` resolves once
    both transports are closed; ``error`` holds the first connection error.
    """

    def __init__(self, *, on_a_data: Callable[[bytes], None] | None = None) -> None:
        self.a = RelayEndpoint(self, tap=on_a_data)
        self.b = RelayEndpoint(self)
        self.a.peer, self.b.peer = self.b, self.a
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: BaseException | None = None

    @classmethod
    def between(
        cls,
        a: Handshake,
        b: Handshake,
        *,
        on_a_data: Callable[[bytes], None] | None = None,
    ) -> Relay:
        """Relay between the transports of two finished handshakes (keeping their bytes)."""
        relay = cls(on_a_data=on_a_data)
        relay.a.attach_handshake(a)
        relay.b.attach_handshake(b)
        return relay

    @property
    def bytes_a_to_b(self) -> int:
        """Bytes read from ``a`` and written to ``b``."""
        return self.a.bytes_received

    @property
    def bytes_b_to_a(self) -> int:
        """Bytes read from ``b`` and written to ``a``."""
        return self.b.bytes_received

    def close(self) -> None:
        """Close both transports (each flushes what it still has to write)."""
        for end in (self.a, self.b):
            if end.transport is None:
                end._lost = True
            elif not end.transport.is_closing():
                end.transport.close()
        self._check_done()

    def abort(self) -> None:
        """Drop both connections at once, discarding unsent bytes."""
        for end in (self.a, self.b):
            if end.transport is None:
                end._lost = True
            else:
                end.transport.abort()
        self._check_done()

    async def wait(self) -> None:
        """Wait until both sides are closed (cancelling the wait leaves the relay running)."""
        await asyncio.shield(self.done)

    def _link(self) -> None:
        # a side that is already gone first, so its held bytes reach the live side
        # before the live side is closed
        ends = sorted((self.a, self.b), key=lambda end: not end._lost)
        for end in ends:
            if end._write is not None:
                continue
            peer = end.peer
            pt = peer.transport
            end._link(pt.write if pt is not None and not peer._lost else _drop)

    def _check_done(self) -> None:
        if self.a._lost and self.b._lost and not self.done.done():
            self.done.set_result(None)


class Handshake(asyncio.Protocol):
    """Collects bytes for a request/response handshake before the relay takes over.

    ``data_received`` may run before ``connection_made`` (data can reach a new
    protocol before ``start_tls`` returns), so it only appends to the buffer.
    Reading stops while more than ``max_buffer`` bytes wait to be consumed. After
    the handshake, give the transport and :meth:`take_buffer` to :class:`Relay`.
    """

    def __init__(self, *, max_buffer: int = HANDSHAKE_BUFFER) -> None:
        self.transport: asyncio.Transport | None = None
        self.exception: Exception | None = None
        self._buf = bytearray()
        self._max = max_buffer
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._paused = False

    # ------------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Store the transport (a new one after a TLS upgrade)."""
        self.transport = cast(asyncio.Transport, transport)
        self._paused = False
        self._flow()

    def data_received(self, data: bytes) -> None:
        """Buffer ``data`` and wake the reader."""
        self._buf += data
        self._flow()
        self._wake()

    def eof_received(self) -> bool:
        """Note EOF; keep a TCP transport open so an error can still be written."""
        self._eof = True
        self._wake()
        t = self.transport
        return t is not None and t.can_write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        """Note the loss and wake the reader."""
        self._lost = True
        self._eof = True
        self.exception = exc
        self._wake()

    # ------------------------------------------------------------------ state
    @property
    def at_eof(self) -> bool:
        """The peer sent EOF (or the connection is gone)."""
        return self._eof

    @property
    def lost(self) -> bool:
        """The connection is closed."""
        return self._lost

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._buf)

    def take_buffer(self) -> bytes:
        """Return and forget every buffered byte (to hand over to the next protocol)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def write(self, data: bytes) -> None:
        """Write to the transport."""
        if self.transport is None:
            raise ConnectionProblem("the connection is not established")
        self.transport.write(data)

    # ------------------------------------------------------------------ reading
    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`ConnectionProblem` if the peer stops sooner."""
        while len(self._buf) < n:
            await self._more(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._flow()
        return data

    async def read_some(self) -> bytes:
        """Whatever is buffered (waiting for at least one byte); ``b""`` at EOF."""
        while not self._buf:
            if self._eof:
                return b""
            await self._more(1)
        data = self.take_buffer()
        self._flow()
        return data

    async def read_until_packet(self, parser: Callable[[bytes], tuple[T | None, int]]) -> T:
        """Feed the buffer to ``parser`` until it returns a packet; consume its bytes.

        ``parser(data)`` returns ``(None, 0)`` while it needs more bytes, else
        ``(packet, bytes used)``, and raises on malformed input (as
        :func:`~jumpgate.core.db.engines.postgres.protocol.parse_startup_packet`).
        """
        while True:
            packet, used = parser(bytes(self._buf))
            if packet is not None:
                del self._buf[:used]
                self._flow()
                return packet
            await self._more(len(self._buf) + 1)

    async def read_line(self, limit: int) -> bytes:
        """One line, ending with ``\\n`` (included); :class:`LimitExceeded` past ``limit`` bytes."""
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                if nl + 1 > limit:
                    break
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                self._flow()
                return line
            if len(self._buf) > limit:
                break
            start = len(self._buf)
            await self._more(len(self._buf) + 1)
        raise LimitExceeded(f"the peer sent a line longer than {limit} bytes")

    async def _more(self, want: int) -> None:
        """Wait for more bytes (``want`` in total) or raise at EOF."""
        if self._eof:
            raise ConnectionProblem(
                "the peer closed the connection during the handshake"
                + (f": {self.exception}" if self.exception else "")
            )
        if self._waiter is not None:
            raise RuntimeError("two coroutines are reading one handshake")
        self._want = want
        self._flow()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
            self._want = 0

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _flow(self) -> None:
        t = self.transport
        if t is None or self._lost or t.is_closing():
            return
        full = len(self._buf) >= max(self._max, self._want)
        if full and not self._paused:
            self._paused = True
            t.pause_reading()
        elif not full and self._paused:
            self._paused = False
            t.resume_reading()


# --------------------------------------------------------------------------- TLS upgrades


def _feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as if its transport had just read it."""
    if isinstance(protocol, asyncio.BufferedProtocol) or hasattr(protocol, "buffer_updated"):
        proto = cast(asyncio.BufferedProtocol, protocol)
        view = memoryview(data)
        while view:
            buf = memoryview(proto.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)


async def _start_tls(
    transport: asyncio.BaseTransport,
    protocol: Handshake,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None,
    timeout: float,
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    raw = cast(asyncio.Transport, transport)
    # Stop reading so nothing new lands in the handshake buffer, then take what is there:
    # bytes after the request (the ClientHello in the same TCP segment) belong to TLS.
    raw.pause_reading()
    leftover = protocol.take_buffer()
    handle: asyncio.Handle | None = None
    if leftover:
        # loop.start_tls swaps in its TLS protocol synchronously, before its first await,
        # then schedules connection_made and resume_reading. This callback is queued
        # before those, so it runs once the TLS protocol is in place and before any new
        # socket data: the TLS layer buffers the bytes until its handshake starts.
        def feed() -> None:
            tls = raw.get_protocol()
            if tls is not protocol:
                _feed_protocol(tls, leftover)

        handle = loop.call_soon(feed)
    try:
        new = await loop.start_tls(
            raw,
            protocol,
            ctx,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=timeout,
        )
    except BaseException:
        if handle is not None:
            handle.cancel()
        raw.abort()
        raise
    if new is None:
        raise ConnectionProblem("the TLS upgrade failed: the connection is closed")
    # the protocol keeps reading through the TLS transport from now on
    protocol.transport = new
    return new


async def start_tls_server(
    transport: asyncio.BaseTransport,
    protocol: Handshake,
    ctx: ssl.SSLContext,
    *,
    timeout: float = 10.0,
) -> asyncio.Transport:
    """Upgrade ``transport`` to TLS as the server; ``protocol`` receives the decrypted bytes.

    Bytes ``protocol`` has buffered but not consumed (a ClientHello that came in
    the same segment as the ``SSLRequest``) are fed to the TLS layer. ``ctx`` is
    the server context. Raises :class:`ssl.SSLError`,
    :class:`ConnectionError` or :class:`TimeoutError` when the handshake fails.
    """
    return await _start_tls(
        transport, protocol, ctx, server_side=True, server_hostname=None, timeout=timeout
    )


async def start_tls_client(
    transport: asyncio.BaseTransport,
    protocol: Handshake,
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    *,
    timeout: float = 10.0,
) -> asyncio.Transport:
    """Upgrade ``transport`` to TLS as the client (see :func:`start_tls_server`)."""
    return await _start_tls(
        transport,
        protocol,
        ctx,
        server_side=False,
        server_hostname=server_hostname,
        timeout=timeout,
    )
