"""The local proxy against a real loopback TLS "proxy" (an echo server signed by a throwaway CA)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from jumpgate.core.client import localproxy
from jumpgate.core.client.localproxy import LocalProxy, ThreadedLocalProxy, pg_error_response
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    Identity,
    RouteToDatabase,
    cert_to_pem,
    generate_private_key,
    private_key_to_pem,
)
from tests.conftest import free_port

CLUSTER = "example.com"


@dataclass
class PKI:
    host: CertAuthority
    user: CertAuthority
    other: CertAuthority

    def server_files(self, ca: CertAuthority, tmp: Path) -> tuple[Path, Path]:
        key = generate_private_key()
        cert = ca.issue(
            key.public_key(),
            identity=Identity(username="proxy", groups=("Proxy",), system_role="Proxy"),
            not_after=datetime.now(UTC) + timedelta(hours=1),
            dns_names=["localhost", "127.0.0.1"],
            server=True,
        )
        c, k = tmp / f"{ca.pin()[7:15]}.crt", tmp / f"{ca.pin()[7:15]}.key"
        c.write_bytes(cert_to_pem(cert))
        k.write_bytes(private_key_to_pem(key))
        return c, k

    def db_cert(self, user: str = "alice", *, expired: bool = False) -> tuple[bytes, bytes]:
        key = generate_private_key()
        now = datetime.now(UTC)
        ca = self.user
        if expired:
            ca = CertAuthority(
                CAType.USER, CLUSTER, ca.cert, ca.key, clock=lambda: now - timedelta(hours=2)
            )
        cert = ca.issue(
            key.public_key(),
            identity=Identity(
                username=user,
                groups=("access",),
                route_to_database=RouteToDatabase("pg", "postgres", "alice", "db"),
            ),
            not_after=now - timedelta(hours=1) if expired else now + timedelta(hours=1),
        )
        return cert_to_pem(cert), private_key_to_pem(key)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI(
        host=CertAuthority.generate(CAType.HOST, CLUSTER),
        user=CertAuthority.generate(CAType.USER, CLUSTER),
        other=CertAuthority.generate(CAType.HOST, "evil.example"),
    )


@dataclass
class EchoProxy:
    """A TLS echo server standing in for the proxy's web port; records what each client offered."""

    sni: list[str | None] = field(default_factory=list)
    alpn: list[str | None] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    port: int = 0


async def start_echo(
    pki: PKI, tmp: Path, *, require_cert: bool, ca: CertAuthority | None = None
) -> tuple[asyncio.AbstractServer, EchoProxy]:
    rec = EchoProxy()
    cert, key = pki.server_files(ca or pki.host, tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["teleport-postgres"])
    ctx.load_verify_locations(cadata=pki.user.cert_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED if require_cert else ssl.CERT_OPTIONAL

    def on_sni(obj: ssl.SSLObject, name: str | None, c: ssl.SSLContext) -> None:
        rec.sni.append(name)

    ctx.sni_callback = on_sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        obj = writer.get_extra_info("ssl_object")
        rec.alpn.append(obj.selected_alpn_protocol())
        der = obj.getpeercert(binary_form=True)
        if der:
            cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME
            )
            rec.peers.append(str(cn[0].value))
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    rec.port = server.sockets[0].getsockname()[1]
    return server, rec


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


async def read_until_closed(port: int, first: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


def parse_error_response(data: bytes) -> dict[str, str]:
    # after an SSLRequest the local proxy first answers "N" (no TLS), so that libpq goes on
    # and prints the error itself instead of "error during SSL exchange"
    data = data.removeprefix(b"N")
    assert data[:1] == b"E", data
    (length,) = struct.unpack("!I", data[1:5])
    assert len(data) == length + 1
    fields = {}
    for part in data[5:-2].split(b"\0"):
        fields[chr(part[0])] = part[1:].decode()
    assert data.endswith(b"\0\0")
    return fields


SSL_REQUEST = struct.pack("!II", 8, 80877103)


# ---------------------------------------------------------------------- relay
def test_tls_mode_relays_bytes_both_ways(pki: PKI, tmp_path: Path) -> None:
    async def main() -> None:
        server, rec = await start_echo(pki, tmp_path, require_cert=False)
        lp = LocalProxy(
            proxy_addr=f"127.0.0.1:{rec.port}",
            sni="localhost",
            ca_pem=pki.host.cert_pem,
            target="pg",
        )
        host, port = await lp.start()
        assert host == "127.0.0.1" and port > 0
        assert lp.mode == "tls"
        assert await roundtrip(port, b"hello") == b"hello"
        big = os.urandom(3 * 1024 * 1024)  # more than every buffer: flow control both ways
        assert await roundtrip(port, big) == big
        await asyncio.sleep(0.05)
        assert rec.sni == ["localhost", "localhost"]
        assert rec.alpn == ["teleport-postgres", "teleport-postgres"]
        assert rec.peers == []  # no client certificate in TLS mode
        assert lp.stats.connections_total == 2
        assert lp.stats.connections_live == 0
        assert lp.stats.bytes_out == lp.stats.bytes_in == 5 + len(big)
        assert lp.stats.errors == 0
        await lp.close()
        server.close()
        await server.wait_closed()

    run(main)


def test_tunnel_mode_presents_fresh_cert_per_connection(pki: PKI, tmp_path: Path) -> None:
    certs = [pki.db_cert("alice"), pki.db_cert("bob")]
    calls: list[int] = []

    def provider() -> tuple[bytes, bytes]:
        calls.append(1)
        return certs[min(len(calls), 2) - 1]

    async def main() -> None:
        server, rec = await start_echo(pki, tmp_path, require_cert=True)
        lp = LocalProxy(
            proxy_addr=f"127.0.0.1:{rec.port}",
            sni="localhost",
            ca_pem=pki.host.cert_pem,
            client_cert_provider=provider,
            target="pg",
        )
        _, port = await lp.start()
        assert lp.mode == "tunnel"
        # a live connection opened with the first certificate...
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"one")
        assert await reader.readexactly(3) == b"one"
        # ...survives a renewal picked up by the next connection
        assert await roundtrip(port, b"two") == b"two"
        writer.write(b"still")
        assert await reader.readexactly(5) == b"still"
        writer.close()
        await writer.wait_closed()
        assert len(calls) == 2
        assert rec.peers == ["alice", "bob"]
        await lp.close()
        server.close()
        await server.wait_closed()

    run(main)


# ---------------------------------------------------------------------- failures
def test_expired_cert_gets_postgres_error_response(pki: PKI, tmp_path: Path) -> None:
    async def main() -> None:
        server, rec = await start_echo(pki, tmp_path, require_cert=True)
        lp = LocalProxy(
            proxy_addr=f"127.0.0.1:{rec.port}",
            sni="localhost",
            ca_pem=pki.host.cert_pem,
            client_cert_provider=lambda: pki.db_cert(expired=True),
        )
        _, port = await lp.start()
        data = await read_until_closed(port, SSL_REQUEST)
        assert data[:1] == b"N", data  # "no TLS" first, then the error in clear
        fields = parse_error_response(data)
        assert fields["S"] == "FATAL" and fields["V"] == "FATAL" and fields["C"] == "08006"
        assert "your database certificate expired at" in fields["M"]
        assert "run tsh db login" in fields["M"]
        assert rec.alpn == []  # never dialled the proxy
        assert lp.stats.errors == 1 and "expired" in lp.stats.last_error
        await lp.close()
        server.close()
        await server.wait_closed()

    run(main)


def test_unreachable_proxy_gets_postgres_error_response() -> None:
    dead = free_port()

    async def main() -> None:
        lp = LocalProxy(proxy_addr=f"127.0.0.1:{dead}", sni="localhost", ca_pem=None)
        _, port = await lp.start()
        fields = parse_error_response(await read_until_closed(port, SSL_REQUEST))
        assert fields["M"].startswith(f"cannot reach the Jumpgate proxy at 127.0.0.1:{dead}")
        assert lp.stats.connections_live == 0 or lp.stats.connections_total == 1
        await lp.close()

    run(main)


def test_error_sent_after_waiting_for_silent_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localproxy, "_FAIL_WAIT", 0.1)
    dead = free_port()

    async def main() -> None:
        lp = LocalProxy(proxy_addr=f"127.0.0.1:{dead}", sni="localhost", ca_pem=None)
        _, port = await lp.start()
        fields = parse_error_response(await read_until_closed(port))
        assert "cannot reach" in fields["M"]
        # a CancelRequest on a failed connection is just closed, as PostgreSQL does
        cancel = struct.pack("!IIII", 16, 80877102, 1, 2)
        assert await read_until_closed(port, cancel) == b""
        await lp.close()

    run(main)


def test_untrusted_proxy_is_refused(pki: PKI, tmp_path: Path) -> None:
    async def main() -> None:
        server, rec = await start_echo(pki, tmp_path, require_cert=False, ca=pki.other)
        lp = LocalProxy(
            proxy_addr=f"127.0.0.1:{rec.port}", sni="localhost", ca_pem=pki.host.cert_pem
        )
        _, port = await lp.start()
        fields = parse_error_response(await read_until_closed(port, SSL_REQUEST))
        assert "is not trusted" in fields["M"]
        await lp.close()
        server.close()
        await server.wait_closed()

    run(main)


def test_error_response_bytes() -> None:
    msg = pg_error_response("boom")
    assert msg == b"E" + struct.pack("!I", 32) + b"SFATAL\0VFATAL\0C08006\0Mboom\0\0"


# ---------------------------------------------------------------------- status
def test_status_file_written_and_removed(pki: PKI, tmp_path: Path) -> None:
    status_dir = tmp_path / "proxies"

    async def main() -> None:
        server, rec = await start_echo(pki, tmp_path, require_cert=False)
        lp = LocalProxy(
            proxy_addr=f"127.0.0.1:{rec.port}",
            sni="localhost",
            ca_pem=pki.host.cert_pem,
            target="pg",
            status_dir=status_dir,
        )
        _, port = await lp.start()
        path = status_dir / f"{os.getpid()}-{port}.json"
        assert lp.status_path == path
        assert path.exists()
        assert await roundtrip(port, b"abc") == b"abc"
        await asyncio.sleep(1.3)  # one rewrite
        doc: dict[str, Any] = json.loads(path.read_text())
        assert doc["pid"] == os.getpid()
        assert doc["listen"] == f"127.0.0.1:{port}"
        assert doc["mode"] == "tls"
        assert doc["protocol"] == "postgres"
        assert doc["target"] == "pg"
        assert doc["proxy"] == f"127.0.0.1:{rec.port}"
        assert doc["started"].endswith("Z")
        assert doc["connections_total"] == 1 and doc["connections_live"] == 0
        assert doc["bytes_in"] == 3 and doc["bytes_out"] == 3
        assert doc["errors"] == 0 and doc["last_error"] == ""
        assert (path.stat().st_mode & 0o777) == 0o600
        await lp.close()
        assert not path.exists()
        server.close()
        await server.wait_closed()

    run(main)


def test_threaded_local_proxy(pki: PKI) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        server, rec = loop.run_until_complete(start_echo(pki, Path(tmp), require_cert=False))
        import threading

        t = threading.Thread(target=loop.run_forever, daemon=True)
        t.start()
        try:
            runner = ThreadedLocalProxy(
                LocalProxy(
                    proxy_addr=f"127.0.0.1:{rec.port}",
                    sni="localhost",
                    ca_pem=pki.host.cert_pem,
                )
            )
            _, port = runner.start()
            assert asyncio.run(roundtrip(port, b"threaded")) == b"threaded"
            runner.stop()
        finally:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            t.join(5)
            loop.close()
