"""The PostgreSQL test server, and the engine pieces (upstream mTLS, relay, cancel) against it.

The second half runs a tiny gateway in a background event loop: it accepts a
plain client (psycopg with ``sslmode=disable``), reads its ``StartupMessage``,
connects to PostgreSQL with a ``db_client`` certificate (``connect_upstream``),
watches the start-up answer for the backend key, relays both ways, and forwards
``CancelRequest``s with ``send_cancel`` — the Database Service's job in small.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import uvloop

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from jumpgate.core.aio import spawn  # noqa: E402
from jumpgate.core.db.engines.postgres.protocol import (  # noqa: E402
    BackendStartupScanner,
    CancelRequest,
    FrontendScanner,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    error_response,
    parse_startup_packet,
    parse_statement,
    query_text,
    startup_message,
)
from jumpgate.core.db.engines.postgres.upstream import (  # noqa: E402
    client_tls_context,
    connect_upstream,
    send_cancel,
)
from jumpgate.core.errors import ConnectionProblem  # noqa: E402
from jumpgate.core.relay import Handshake, Relay  # noqa: E402
from jumpgate.core.tlsca import CAType, CertAuthority  # noqa: E402
from tests import pg_fixture  # noqa: E402
from tests.pg_fixture import DbCerts, PgServer  # noqa: E402

# The fixtures, until a conftest imports them (then delete these two lines).

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

T = TypeVar("T")


def connect(pg: PgServer, files: dict[str, str], **kw: Any) -> psycopg.Connection[Any]:
    params: dict[str, Any] = {
        "host": "localhost",
        "hostaddr": "127.0.0.1",
        "port": pg.port,
        "user": "alice",
        "dbname": "example",
        "sslmode": "verify-full",
        "gssencmode": "disable",
        "connect_timeout": 10,
        **files,
        **kw,
    }
    return psycopg.connect(**params)


# --------------------------------------------------------------------------- the fixture itself


def test_verify_full_with_a_db_client_certificate(
    postgres: PgServer, pg_certs: DbCerts, tmp_path: Path
) -> None:
    files = pg_certs.write_client_files(tmp_path, "alice")
    with connect(postgres, files) as conn:
        row = conn.execute(
            "select current_user, current_database(), ssl from pg_stat_ssl "
            "where pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("alice", "example", True)


def test_other_database_name(postgres: PgServer, pg_certs: DbCerts, tmp_path: Path) -> None:
    files = pg_certs.write_client_files(tmp_path, "alice")
    with connect(postgres, files, dbname="example-db") as conn:
        assert conn.execute("select current_database()").fetchone() == ("example-db",)


def test_certificate_from_another_ca_is_refused(
    postgres: PgServer, pg_certs: DbCerts, tmp_path: Path
) -> None:
    stranger = CertAuthority.generate(CAType.DB_CLIENT, "elsewhere.example.com")
    files = pg_certs.write_client_files(tmp_path, "alice", ca=stranger)
    with pytest.raises(psycopg.OperationalError):
        connect(postgres, files)


def test_certificate_for_another_user_is_refused(
    postgres: PgServer, pg_certs: DbCerts, tmp_path: Path
) -> None:
    files = pg_certs.write_client_files(tmp_path, "mallory")
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        connect(postgres, files)


def test_plain_connection_without_password_is_refused(postgres: PgServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(
            host="127.0.0.1",
            port=postgres.port,
            user="alice",
            dbname="example",
            sslmode="disable",
            gssencmode="disable",
            connect_timeout=10,
        )


def test_psql_helper(postgres: PgServer) -> None:
    assert postgres.psql("select 40 + 2") == "42"
    roles = postgres.psql("select rolname from pg_roles where rolname in ('alice', 'postgres')")
    assert sorted(roles.split()) == ["alice", "postgres"]


# --------------------------------------------------------------------------- engine pieces


def alice_context(certs: DbCerts, *, user: str = "alice") -> ssl.SSLContext:
    cert, key = certs.client_cert(user)
    return client_tls_context(
        mode="verify-full",
        ca_pem=certs.db_ca.cert_pem,
        trust_system=False,
        cert_pem=cert,
        key_pem=key,
    )


class LoopThread:
    """An event loop (asyncio or uvloop) running in a background thread."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class TinyGateway:
    """Plain PostgreSQL in front, mutual TLS to the real server behind."""

    def __init__(self, pg: PgServer, ctx: ssl.SSLContext) -> None:
        self.pg = pg
        self.ctx = ctx
        self.keys: set[tuple[int, int]] = set()
        self.statements: list[str] = []
        self.relays: list[Relay] = []
        self.cancels = 0
        self.errors: list[BaseException] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for relay in self.relays:
            relay.abort()
            await asyncio.wait_for(relay.wait(), 5)

    def _factory(self) -> Handshake:
        hs = Handshake()
        spawn(self._serve(hs), name="tiny-gateway")
        return hs

    async def _serve(self, hs: Handshake) -> None:
        try:
            await self._session(hs)
        except BaseException as exc:
            self.errors.append(exc)
            if hs.transport is not None:
                hs.transport.abort()
            raise

    async def _session(self, hs: Handshake) -> None:
        packet = await hs.read_until_packet(parse_startup_packet)
        while isinstance(packet, SSLRequest | GSSENCRequest):
            hs.write(b"N")
            packet = await hs.read_until_packet(parse_startup_packet)
        assert hs.transport is not None
        if isinstance(packet, CancelRequest):
            if (packet.pid, packet.secret) in self.keys:
                await send_cancel(
                    self.pg.host,
                    self.pg.port,
                    ssl_context=self.ctx,
                    server_hostname="localhost",
                    pid=packet.pid,
                    secret=packet.secret,
                )
                self.cancels += 1
            hs.transport.close()
            return
        assert isinstance(packet, StartupMessage)
        try:
            _, up_hs, data = await connect_upstream(
                self.pg.host,
                self.pg.port,
                ssl_context=self.ctx,
                server_hostname="localhost",
                startup=packet.raw,
            )
        except ConnectionProblem as exc:
            hs.write(error_response(exc.message, code="08006"))
            hs.transport.close()
            return
        scanner = BackendStartupScanner()
        while True:  # forward the start-up answer as it comes, watching for the key
            if data:
                hs.write(data)
                if scanner.feed(data):
                    break
            data = await up_hs.read_some()
            if not data:
                break
        if scanner.backend_key is not None:
            self.keys.add(scanner.backend_key)
        frames = FrontendScanner(b"QP")

        def audit(chunk: bytes) -> None:
            for kind, payload in frames.feed(chunk):
                text = query_text(payload) if kind == b"Q" else parse_statement(payload)[1]
                self.statements.append(text)

        relay = Relay.between(hs, up_hs, on_a_data=audit)
        self.relays.append(relay)
        await relay.wait()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop
    lt = LoopThread(factory)
    try:
        yield lt
    finally:
        lt.close()


def test_connect_upstream_speaks_to_postgres(postgres: PgServer, pg_certs: DbCerts) -> None:
    async def main() -> BackendStartupScanner:
        transport, hs, data = await connect_upstream(
            postgres.host,
            postgres.port,
            ssl_context=alice_context(pg_certs),
            server_hostname="localhost",
            startup=startup_message({"user": "alice", "database": "example"}),
        )
        scanner = BackendStartupScanner()
        while not scanner.feed(data):
            data = await asyncio.wait_for(hs.read_some(), 10)
            assert data, "the server closed during start-up"
        transport.write(b"X\0\0\0\x04")  # Terminate
        transport.close()
        return scanner

    scanner = asyncio.run(main())
    assert scanner.authenticated and scanner.error is None
    assert scanner.backend_key is not None
    assert scanner.parameters["session_authorization"] == "alice"
    assert scanner.status == b"I"


def test_connect_upstream_reports_the_servers_refusal(
    postgres: PgServer, pg_certs: DbCerts
) -> None:
    async def main() -> BackendStartupScanner:
        transport, hs, data = await connect_upstream(
            postgres.host,
            postgres.port,
            ssl_context=alice_context(pg_certs),
            server_hostname="localhost",
            startup=startup_message({"user": "bob", "database": "example"}),
        )
        scanner = BackendStartupScanner()
        while not scanner.feed(data):
            data = await asyncio.wait_for(hs.read_some(), 10)
            assert data
        transport.close()
        return scanner

    scanner = asyncio.run(main())
    assert scanner.error is not None
    assert 'certificate authentication failed for user "bob"' in scanner.error["M"]


def test_connect_upstream_wrong_ca(postgres: PgServer, pg_certs: DbCerts) -> None:
    cert, key = pg_certs.client_cert("alice")
    ctx = client_tls_context(
        mode="verify-full",
        ca_pem=pg_certs.db_client_ca.cert_pem,  # not the CA that signed the server
        trust_system=False,
        cert_pem=cert,
        key_pem=key,
    )

    async def main() -> None:
        await connect_upstream(
            postgres.host,
            postgres.port,
            ssl_context=ctx,
            server_hostname="localhost",
            startup=startup_message({"user": "alice"}),
        )

    with pytest.raises(ConnectionProblem, match="does not verify") as info:
        asyncio.run(main())
    assert info.value.hint


def test_connect_upstream_nobody_listening(pg_certs: DbCerts) -> None:
    port = pg_fixture._free_port()

    async def main() -> None:
        await connect_upstream(
            "127.0.0.1",
            port,
            ssl_context=alice_context(pg_certs),
            server_hostname="localhost",
            startup=startup_message({"user": "alice"}),
            timeout=5,
        )

    with pytest.raises(ConnectionProblem, match=f"127.0.0.1:{port}"):
        asyncio.run(main())


def test_relay_queries_and_cancel(
    postgres: PgServer, pg_certs: DbCerts, loop_thread: LoopThread
) -> None:
    gateway = TinyGateway(postgres, alice_context(pg_certs))
    port = loop_thread.run(gateway.start())
    try:
        conn = psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="alice",
            dbname="example",
            sslmode="disable",
            gssencmode="disable",
            connect_timeout=10,
            autocommit=True,
        )
        with conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("select current_user").fetchone() == ("alice",)
            big = conn.execute("select repeat('x', 5000000)").fetchone()
            assert big is not None and len(big[0]) == 5_000_000

            outcome: dict[str, Any] = {}

            def sleeper() -> None:
                try:
                    conn.execute("select pg_sleep(10)")
                    outcome["result"] = "finished"
                except psycopg.errors.QueryCanceled as exc:
                    outcome["result"] = exc
                outcome["at"] = time.monotonic()

            thread = threading.Thread(target=sleeper)
            thread.start()
            time.sleep(0.5)
            started = time.monotonic()
            conn.cancel_safe(timeout=5)
            thread.join(15)
            assert isinstance(outcome.get("result"), psycopg.errors.QueryCanceled), outcome
            assert outcome["at"] - started < 1.0, f"cancel took {outcome['at'] - started:.2f}s"
            # the session is still usable after the cancel
            assert conn.execute("select 2").fetchone() == (2,)
        assert gateway.cancels == 1
        assert "select 1" in gateway.statements
        assert "select pg_sleep(10)" in gateway.statements
        assert not gateway.errors, gateway.errors
    finally:
        loop_thread.run(gateway.stop())


def test_files_belong_to_the_server_user(postgres: PgServer) -> None:
    key = (postgres.base / "server.key").stat()
    assert key.st_mode & 0o777 == 0o600
    if postgres.run_as is not None:  # running as root: the server runs unprivileged
        assert key.st_uid == postgres.run_as.pw_uid
        assert postgres.data_dir.stat().st_uid == postgres.run_as.pw_uid
        owner = postgres.psql("select pg_catalog.current_setting('data_directory')")
        assert owner == str(postgres.data_dir)
