"""The app forwarder's slow-client defences, over real loopback sockets: an idle keep-alive
connection is closed, a request head that never completes gets 408, a slow application
is not cut off."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from jumpgate.core.app.forwarder import AppSession, Upstream


async def _app(delay: float = 0.0) -> tuple[asyncio.Server, int]:
    """A tiny HTTP/1.1 application: every request gets ``ok`` (after ``delay``)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _session(port: int, **timeouts: float) -> tuple[AppSession, socket.socket]:
    """An AppSession serving one end of a socketpair; the test holds the other end."""
    client, served = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=served)
    session = AppSession(Upstream.from_uri(f"http://127.0.0.1:{port}"), suffix=b"\r\n")
    for name, value in timeouts.items():
        setattr(session, name, value)
    session.start(transport)
    client.setblocking(False)
    return session, client


async def _read_until_closed(client: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(client, 65536):
            data += chunk
    return data


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def main() -> None:
        server, port = await _app()
        session, client = await _session(port, IDLE_TIMEOUT=0.3, HEAD_TIMEOUT=5.0)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        got = await _read_until_closed(client, timeout=5)
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok")
        assert session.close_reason == "idle"
        client.close()
        server.close()

    _run(main())


def test_a_head_that_never_completes_gets_408() -> None:
    async def main() -> None:
        server, port = await _app()
        session, client = await _session(port, IDLE_TIMEOUT=5.0, HEAD_TIMEOUT=0.3)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        got = await _read_until_closed(client, timeout=5)
        assert got.startswith(b"HTTP/1.1 408"), got
        assert "timed out" in session.close_reason
        client.close()
        server.close()

    _run(main())


def test_a_slow_application_is_not_cut_off() -> None:
    async def main() -> None:
        server, port = await _app(delay=0.8)  # longer than both timeouts
        session, client = await _session(port, IDLE_TIMEOUT=0.3, HEAD_TIMEOUT=0.3)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        got = await _read_until_closed(client, timeout=5)
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok"), got
        assert session.close_reason == ""  # closed because the client asked, not cut off
        client.close()
        server.close()

    _run(main())
