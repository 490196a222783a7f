"""core.relay over real loopback sockets, on the default event loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.x509.oid import NameOID

from jumpgate.core.aio import spawn
from jumpgate.core.db.engines.postgres.protocol import (
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
    ssl_request,
    startup_message,
)
from jumpgate.core.errors import ConnectionProblem, LimitExceeded
from jumpgate.core.relay import (
    Handshake,
    Relay,
    start_tls_client,
    start_tls_server,
)
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    cert_to_pem,
    generate_private_key,
    private_key_to_pem,
    utcnow,
)
from jumpgate.core.tlsutil import load_cert_chain_from_memory

pytestmark = pytest.mark.timeout(60)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to completion on the parametrized event loop."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(coro)

    return runner


# --------------------------------------------------------------------------- helpers


class Echo(asyncio.Protocol):
    """Echoes bytes; answers EOF with EOF, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop transports are not asyncio.Transport instances

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.transport.write_eof()  # type: ignore[attr-defined]
        return False


class Counter(asyncio.Protocol):
    """Counts bytes until EOF, then answers ``<count>\\n`` and closes (needs a half-close)."""

    def __init__(self) -> None:
        self.n = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.n += len(data)

    def eof_received(self) -> bool:
        self.transport.write(f"{self.n}\n".encode())  # type: ignore[attr-defined]
        self.transport.close()
        return True


async def serve(factory: Callable[[], asyncio.BaseProtocol]) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class RelayFront:
    """A listener that relays each connection to ``127.0.0.1:upstream``.

    The upstream connection is made after the client connected, so the client
    side is attached first and its first bytes wait for the peer.
    """

    def __init__(
        self, upstream: int, tap: Callable[[Relay], Callable[[bytes], None]] | None = None
    ):
        self.upstream = upstream
        self.tap = tap
        self.relays: list[Relay] = []

    def __call__(self) -> asyncio.Protocol:
        sampler: list[Callable[[bytes], None]] = []
        relay = Relay(on_a_data=(lambda data: sampler[0](data)) if self.tap else None)
        if self.tap is not None:
            sampler.append(self.tap(relay))
        self.relays.append(relay)

        async def dial() -> None:
            await asyncio.sleep(0.01)  # let the client's first bytes arrive before the peer
            await asyncio.get_running_loop().create_connection(
                lambda: relay.b, "127.0.0.1", self.upstream
            )

        spawn(dial(), name="relay-dial")
        return relay.a


async def stop(*servers: asyncio.Server) -> None:
    for server in servers:
        server.close()
        await server.wait_closed()


async def wait_done(front: RelayFront) -> None:
    for relay in front.relays:
        await asyncio.wait_for(relay.wait(), 5)


# --------------------------------------------------------------------------- relay


def test_echo_through_relay(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> None:
        echo, echo_port = await serve(Echo)
        front = RelayFront(echo_port)
        relay_srv, port = await serve(front)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello before the peer is there\n")
        assert await reader.readline() == b"hello before the peer is there\n"
        for i in range(100):
            line = f"line {i}\n".encode() * (i + 1)
            writer.write(line)
            assert await reader.readexactly(len(line)) == line
        writer.close()
        await writer.wait_closed()
        await wait_done(front)
        (relay,) = front.relays
        assert relay.bytes_a_to_b == relay.bytes_b_to_a > 0
        assert relay.error is None
        await stop(relay_srv, echo)

    run(main())


def test_tap_sees_exactly_the_client_bytes(run: Callable[[Awaitable[Any]], Any]) -> None:
    seen = bytearray()
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> None:
        counter, counter_port = await serve(Counter)
        front = RelayFront(counter_port, tap=lambda relay: seen.extend)
        relay_srv, port = await serve(front)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        view = memoryview(payload)
        step = 1
        while view:
            writer.write(view[:step])
            view = view[step:]
            step = step * 3 % 100_000 + 1
            await writer.drain()
        writer.write_eof()
        assert await reader.read() == f"{len(payload)}\n".encode()
        writer.close()
        await wait_done(front)
        await stop(relay_srv, counter)

    run(main())
    assert bytes(seen) == payload


def test_half_close(run: Callable[[Awaitable[Any]], Any]) -> None:
    """The client's EOF reaches the server as EOF; the server's answer still comes back."""

    async def main() -> None:
        counter, counter_port = await serve(Counter)
        front = RelayFront(counter_port)
        relay_srv, port = await serve(front)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"100000\n"
        writer.close()
        await wait_done(front)
        await stop(relay_srv, counter)

    run(main())


def test_backpressure_bounds_memory(run: Callable[[Awaitable[Any]], Any]) -> None:
    """50 MB to a slow reader: the relay's write buffer stays small, reading is paused."""
    total = 50 * 1024 * 1024
    stats = {"max_buffer": 0, "paused": 0}

    def tap(relay: Relay) -> Callable[[bytes], None]:
        def sample(data: bytes) -> None:
            b, a = relay.b.transport, relay.a.transport
            assert b is not None and a is not None
            stats["max_buffer"] = max(stats["max_buffer"], b.get_write_buffer_size())
            if not a.is_reading():
                stats["paused"] += 1

        return sample

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        received = 0

        async def slow_sink() -> None:
            nonlocal received
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            while True:
                data = await loop.sock_recv(conn, 256 * 1024)
                if not data:
                    break
                received += len(data)
                await asyncio.sleep(0.002)
            conn.close()

        sink = spawn(slow_sink(), name="sink")
        front = RelayFront(listener.getsockname()[1], tap=tap)
        relay_srv, port = await serve(front)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        chunk = b"\xab" * (1024 * 1024)
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.close()
        await asyncio.wait_for(sink, 60)
        await wait_done(front)
        assert received == total
        await stop(relay_srv)
        listener.close()

    run(main())
    assert stats["paused"] > 0, "the relay never paused reading: no backpressure exercised"
    assert stats["max_buffer"] < 2 * 1024 * 1024, stats


def test_connection_refused_upstream_closes_client(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        relay_holder: list[Relay] = []

        def factory() -> asyncio.Protocol:
            relay = Relay()
            relay_holder.append(relay)
            # the upstream never comes: give up, the client must see EOF
            loop.call_later(0.05, relay.close)
            return relay.a

        srv, port = await serve(factory)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"anyone?")
        # closing a socket with unread input sends a reset rather than a FIN: either is fine
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.wait_for(relay_holder[0].wait(), 5)
        await stop(srv)

    run(main())


# --------------------------------------------------------------------------- handshake


def test_handshake_reads(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[Handshake] = loop.create_future()

        def factory() -> Handshake:
            hs = Handshake(max_buffer=16)
            if not got.done():
                got.set_result(hs)
            return hs

        srv, port = await serve(factory)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"type":"hello"}\nAB' + ssl_request() + b"x" * 100)
        hs = await got
        assert await hs.read_line(100) == b'{"type":"hello"}\n'
        assert await hs.read_exact(2) == b"AB"
        assert await hs.read_until_packet(parse_startup_packet) == SSLRequest()
        assert await hs.read_exact(100) == b"x" * 100  # beyond max_buffer: still works
        writer.write(b"y" * 50)
        with pytest.raises(LimitExceeded):
            await hs.read_line(20)
        writer.write_eof()
        rest = await hs.read_some()
        assert set(rest) == {ord("y")}
        while await hs.read_some():
            pass
        assert hs.at_eof
        with pytest.raises(ConnectionProblem, match="closed the connection"):
            await hs.read_exact(1)
        assert hs.transport is not None
        hs.transport.close()
        writer.close()
        await stop(srv)

    run(main())


# --------------------------------------------------------------------------- TLS upgrades


def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``localhost`` and a client context that trusts it."""
    ca = CertAuthority.generate(CAType.HOST, "example.com")
    key = generate_private_key()
    cert = ca.issue(
        key.public_key(),
        not_after=utcnow() + timedelta(hours=1),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
        dns_names=["localhost", "127.0.0.1"],
        server=True,
        client=False,
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_cert_chain_from_memory(server, cert_to_pem(cert), private_key_to_pem(key))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=ca.cert_pem.decode())
    return server, client


class PgLikeServer:
    """Answers SSLRequest with S, upgrades, reads a StartupMessage, greets, then relays
    the TLS connection to an echo server (with the bytes read after the StartupMessage)."""

    def __init__(self, ctx: ssl.SSLContext, echo_port: int) -> None:
        self.ctx = ctx
        self.echo_port = echo_port
        self.leftover_after_request: list[int] = []
        self.relays: list[Relay] = []
        self.errors: list[BaseException] = []

    def __call__(self) -> Handshake:
        hs = Handshake()
        spawn(self.handle(hs), name="pg-like")
        return hs

    async def handle(self, hs: Handshake) -> None:
        try:
            packet = await hs.read_until_packet(parse_startup_packet)
            assert packet == SSLRequest()
            self.leftover_after_request.append(hs.buffered)
            hs.write(b"S")
            assert hs.transport is not None
            await start_tls_server(hs.transport, hs, self.ctx)
            startup = await hs.read_until_packet(parse_startup_packet)
            assert isinstance(startup, StartupMessage)
            hs.write(f"hello {startup.user}\n".encode())
            relay = Relay()
            self.relays.append(relay)
            relay.a.attach_handshake(hs)
            await asyncio.get_running_loop().create_connection(
                lambda: relay.b, "127.0.0.1", self.echo_port
            )
        except BaseException as exc:
            self.errors.append(exc)
            raise


def memory_bio_client(port: int, ctx: ssl.SSLContext, extra: bytes) -> bytes:
    """SSLRequest and the ClientHello in ONE send; the client's Finished, the StartupMessage
    and ``extra`` in one more. Returns everything the server sent back until EOF."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ssl_request() + hello)
        assert sock.recv(1) == b"S"
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "server closed during the TLS handshake"
                incoming.write(data)
        obj.write(startup_message({"user": "alice", "database": "example"}) + extra)
        sock.sendall(outgoing.read())
        obj.write(b"after hand-off")
        sock.sendall(outgoing.read())
        # close_notify: the server side relays EOF (TLS cannot half-close: both close)
        received = bytearray()
        expect = len(b"hello alice\n") + len(extra) + len(b"after hand-off")
        while len(received) < expect:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            while True:
                try:
                    chunk = obj.read(65536)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    break
                received += chunk
        with pytest.raises(ssl.SSLWantReadError):
            obj.unwrap()
        sock.sendall(outgoing.read())
        return bytes(received)


def test_ssl_request_and_client_hello_in_one_segment(run: Callable[[Awaitable[Any]], Any]) -> None:
    server_ctx, client_ctx = tls_pair()

    async def main() -> None:
        echo, echo_port = await serve(Echo)
        app = PgLikeServer(server_ctx, echo_port)
        srv, port = await serve(app)
        result: dict[str, bytes] = {}

        def client() -> None:
            result["data"] = memory_bio_client(port, client_ctx, b"Q-in-the-same-record")

        thread = threading.Thread(target=client)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        thread.join()
        assert not app.errors, app.errors
        assert result["data"] == b"hello alice\nQ-in-the-same-recordafter hand-off"
        # the test is only meaningful if the ClientHello really sat behind the SSLRequest
        assert app.leftover_after_request[0] > 0
        for relay in app.relays:
            await asyncio.wait_for(relay.wait(), 5)
        await stop(srv, echo)

    run(main())


def test_start_tls_client_and_relay_over_tls(run: Callable[[Awaitable[Any]], Any]) -> None:
    server_ctx, client_ctx = tls_pair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        echo, echo_port = await serve(Echo)
        app = PgLikeServer(server_ctx, echo_port)
        srv, port = await serve(app)
        transport, hs = await loop.create_connection(Handshake, "127.0.0.1", port)
        transport.write(ssl_request())
        assert await hs.read_exact(1) == b"S"
        tls = await start_tls_client(transport, hs, client_ctx, "localhost")
        assert tls.get_extra_info("peercert") is not None
        tls.write(startup_message({"user": "bob"}))
        assert await hs.read_line(100) == b"hello bob\n"
        big = os.urandom(2 * 1024 * 1024)
        tls.write(big)
        assert await hs.read_exact(len(big)) == big
        tls.close()
        for relay in app.relays:
            await asyncio.wait_for(relay.wait(), 5)
            assert relay.bytes_a_to_b == relay.bytes_b_to_a == len(big)
        assert not app.errors
        await stop(srv, echo)

    run(main())
