"""The proxy's raw pass-through (``relay_raw``, the auth API on the web port) on uvloop,
the loop ``teleport start`` runs."""

from __future__ import annotations

import asyncio
import socket
import struct

import uvloop

from jumpgate.core.proxy.router import relay_raw


def test_relay_raw_survives_a_client_that_resets_before_the_answer() -> None:
    """The client resets its connection; the upstream answers and closes afterwards. The
    relay must end quietly: the half-close towards a client that is gone once raised
    uvloop's RuntimeError ("the handler is closed") out of the connection task, logged
    as an ERROR by the daemon."""

    async def main() -> None:
        got = bytearray()

        async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while chunk := await r.read(65536):  # until the relay's half-close (EOF)
                got.extend(chunk)
            w.write(b"a late answer")
            await w.drain()
            w.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            with socket.create_server(("127.0.0.1", 0)) as lsock:
                client = socket.create_connection(lsock.getsockname())
                accepted, _ = lsock.accept()
            accepted.setblocking(False)
            relay = asyncio.ensure_future(relay_raw(accepted, "127.0.0.1", port))
            client.sendall(b"hello")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset, not a FIN
            await asyncio.wait_for(relay, 10)  # no exception
            assert bytes(got) in (b"", b"hello")
        finally:
            server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()  # the upstream's handler, if the relay failed

    uvloop.run(main())
