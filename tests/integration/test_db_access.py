"""Database access security end to end: real daemons, a real PostgreSQL, real clients.

Set-up (per module, per xdist worker): a cluster (``teleport start``); a PostgreSQL
started with the files ``tctl auth sign --format=db`` writes (so it trusts the
cluster's ``db_client`` CA and presents a certificate from its ``db`` CA); a
separate Database Service agent process (``teleport db configure create`` +
``teleport start``) that joins through the proxy with a ``db`` token; users made
with ``tctl users add``, their invites completed over HTTP, logged in with
``tsh login``.

Every refusal is checked twice: the message the client shows (psql's stderr, the
psycopg error) and the ``db.session.start`` audit event with ``success: false``
and the reason (``tctl audit ls``).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from jumpgate.core.client.localproxy import LocalProxy, ThreadedLocalProxy
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    Identity,
    RouteToDatabase,
    cert_to_pem,
    generate_private_key,
    private_key_to_pem,
    utcnow,
)
from tests.integration.conftest import (
    CLUSTER_NAME,
    TELEPORT,
    Cluster,
    cli_env,
    run,
    tail,
)
from tests.integration.dbhelpers import invite_user, login, start_proxy, stop_proxy, tsh
from tests.pg_fixture import PgServer, start_postgres

DB = "example-postgres"
ROLES = """\
kind: role
version: v7
metadata:
  name: db-alice
spec:
  allow:
    db_labels:
      '*': '*'
    db_users: [alice]
    db_names: [example]
---
kind: role
version: v7
metadata:
  name: db-prod
spec:
  allow:
    db_labels:
      env: prod
    db_users: ['*']
    db_names: ['*']
---
kind: role
version: v7
metadata:
  name: db-any
spec:
  allow:
    db_labels:
      '*': '*'
    db_users: ['*']
    db_names: ['*']
---
kind: role
version: v7
metadata:
  name: no-postgres
spec:
  deny:
    db_users: [postgres]
"""
#: user -> roles
USERS = {"alice": "db-alice", "pat": "db-prod", "mallory": "db-any,no-postgres"}


# ---------------------------------------------------------------------- the agent
@dataclass
class Agent:
    """A ``teleport start`` running only the Database Service (its own data dir and log)."""

    root: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.root / "db.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def context(self) -> str:
        state = "not started"
        if self.proc is not None:
            rc = self.proc.poll()
            state = "running" if rc is None else f"exited with {rc}"
        return f"\n--- agent ({state}), log tail {self.log_path}:\n{tail(self.log())}"

    def configure(self, cluster: Cluster, token_file: Path, uri: str, *extra: str) -> None:
        """``teleport db configure create`` as the docs show it."""
        run(
            [
                TELEPORT,
                "db",
                "configure",
                "create",
                "-o",
                f"file://{self.config}",
                f"--token={token_file}",
                f"--proxy=localhost:{cluster.web_port}",
                f"--name={DB}",
                "--protocol=postgres",
                f"--uri={uri}",
                "--labels=env=dev",
                f"--data-dir={self.root / 'data'}",
                *extra,
            ]
        )

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [TELEPORT, "start", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
                cwd=self.root,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def assert_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            pytest.fail(f"the Database Service agent is not running{self.context()}", pytrace=False)


def new_agent(root: Path, cluster: Cluster, token: str, uri: str, *extra: str) -> Agent:
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token_file.write_text(token + "\n")
    agent = Agent(root)
    agent.configure(cluster, token_file, uri, *extra)
    return agent


def db_token(cluster: Cluster, *flags: str) -> str:
    return cluster.tctl("tokens", "add", "--type=db", "--format=text", *flags).stdout.strip()


# ---------------------------------------------------------------------- audit
def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))


def now() -> datetime:
    """A mark for :func:`audit_since` (the daemons share this machine's clock)."""
    return datetime.now(UTC) - timedelta(milliseconds=5)


def audit_since(cluster: Cluster, since: datetime) -> list[dict[str, Any]]:
    """``tctl audit ls --format json``: every event recorded at or after ``since``."""
    out = cluster.tctl("audit", "ls", "--format=json", "--since=1h", "--limit=5000").stdout
    events = json.loads(out)
    assert isinstance(events, list)
    return [e for e in events if _time(e) >= since]


def pick(events: list[dict[str, Any]], event: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        e for e in events if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
    ]


def wait_for_audit(
    cluster: Cluster,
    since: datetime,
    *wanted: tuple[str, dict[str, Any]],
    at_least: int = 1,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Poll until, for each ``(event, fields)`` in ``wanted``, ``at_least`` matching events
    were recorded (agents ship their events asynchronously); return every event since
    ``since``."""
    deadline = time.monotonic() + timeout
    while True:
        events = audit_since(cluster, since)
        missing = [(ev, f) for ev, f in wanted if len(pick(events, ev, **f)) < at_least]
        if not missing:
            return events
        if time.monotonic() > deadline:
            pytest.fail(
                f"no audit event {missing} within {timeout}s; recorded since the test "
                f"began:\n{json.dumps(events, indent=1)}",
                pytrace=False,
            )
        time.sleep(0.3)


def only(events: list[dict[str, Any]], event: str, **fields: Any) -> dict[str, Any]:
    """The one event of this kind with these fields."""
    found = pick(events, event, **fields)
    assert len(found) == 1, (event, fields, found)
    return found[0]


# ---------------------------------------------------------------------- clients
@dataclass
class TlsProxy:
    """A running ``tsh proxy db`` in TLS-carried-through mode and the files it printed."""

    proc: subprocess.Popen[str]
    port: int
    ca_file: str
    cert_file: str
    key_file: str

    def conninfo(self, **overrides: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "host": "localhost",
            "hostaddr": "127.0.0.1",
            "port": self.port,
            "user": "alice",
            "dbname": "example",
            "sslmode": "verify-full",
            "sslrootcert": self.ca_file,
            "sslcert": self.cert_file,
            "sslkey": self.key_file,
            "connect_timeout": 15,
        }
        kw.update(overrides)
        return kw


def start_tls_proxy(home: Path) -> TlsProxy:
    proc, out = start_proxy(home, "--db-user=alice", "--db-name=example", DB)
    m = re.match(r"Started DB proxy on 127\.0\.0\.1:(\d+)\n", out)
    files = dict(re.findall(r"^  (ca_file|cert_file|key_file)=(\S+)$", out, re.M))
    assert m and len(files) == 3, out
    return TlsProxy(proc, int(m.group(1)), files["ca_file"], files["cert_file"], files["key_file"])


def start_tunnel_proxy(home: Path) -> tuple[subprocess.Popen[str], str]:
    """``tsh proxy db --tunnel``; returns it and a libpq URL (sslmode=disable)."""
    proc, out = start_proxy(home, "--tunnel", "--db-user=alice", "--db-name=example", DB)
    m = re.search(r"on 127\.0\.0\.1:(\d+)\.", out)
    assert m, out
    return proc, f"postgresql://alice@127.0.0.1:{m.group(1)}/example?sslmode=disable"


def connect_error(**kw: Any) -> str:
    """Connect with psycopg; the connection must fail; its message."""
    try:
        conn = psycopg.connect(**kw)
    except psycopg.OperationalError as exc:
        return str(exc)
    conn.close()
    pytest.fail(f"psycopg connected with {kw}", pytrace=False)


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


def outer_tls_attempt(cluster: Cluster, host_ca: str, cert: Path, key: Path) -> bytes:
    """Authenticated-tunnel style: present ``cert`` in the outer TLS (ALPN
    teleport-postgres), send a StartupMessage, return every byte the proxy sends back."""
    ctx = ssl.create_default_context(cadata=host_ca)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["teleport-postgres"])
    data = b""
    with socket.create_connection(("127.0.0.1", cluster.web_port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(startup_message("alice", "example"))
                while chunk := conn.recv(4096):
                    data += chunk
        except (ssl.SSLError, ConnectionError):
            pass
    return data


def pg_connections(pg: PgServer) -> int:
    """Connections PostgreSQL has received so far (log_connections is on)."""
    return pg.log().count("connection received:")


def running(pg: PgServer, query: str, timeout: float = 10.0) -> None:
    """Wait until PostgreSQL shows ``query`` running."""
    sql = f"select count(*) from pg_stat_activity where state = 'active' and query = '{query}'"
    deadline = time.monotonic() + timeout
    while pg.psql(sql) == "0":
        if time.monotonic() > deadline:
            pytest.fail(f"{query!r} did not start within {timeout}s", pytrace=False)
        time.sleep(0.05)


# ---------------------------------------------------------------------- set-up
@dataclass
class Setup:
    host_ca: str
    pg: PgServer
    agent: Agent
    #: TELEPORT_HOME per user (and "alice-proxy": a copy of alice's, for local proxies)
    homes: dict[str, Path]


def _start_database(
    cluster: Cluster, tmp: pytest.TempPathFactory, stack: contextlib.ExitStack, token: Future[str]
) -> tuple[PgServer, Agent]:
    """PostgreSQL with the files of ``tctl auth sign --format=db``, then the agent for it."""
    creds = tmp.mktemp("db-creds")
    cluster.tctl(
        "auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={creds / 'server'}"
    )
    pg = start_postgres(
        tmp.mktemp("pg"),
        server_cert_pem=(creds / "server.crt").read_bytes(),
        server_key_pem=(creds / "server.key").read_bytes(),
        ca_pem=(creds / "server.cas").read_bytes(),  # the cluster's db_client CA
        users=("alice", "bob"),
    )
    stack.callback(pg.stop)
    agent = new_agent(tmp.mktemp("db-agent"), cluster, token.result(), f"localhost:{pg.port}")
    agent.start()
    stack.callback(agent.stop)
    deadline = time.monotonic() + 30
    while "teleport: started" not in agent.log():
        agent.assert_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"the agent did not start within 30s{agent.context()}", pytrace=False)
        time.sleep(0.1)
    while cluster.tctl("get", f"db_server/{DB}", check=False).returncode != 0:
        agent.assert_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{DB} was not registered within 30s{agent.context()}", pytrace=False)
        time.sleep(0.2)
    return pg, agent


def _user(cluster: Cluster, host_ca: str, root: Path, user: str, roles: str) -> Path:
    """``tctl users add``, the invite completed over HTTP, ``tsh login``; the TELEPORT_HOME."""
    invite_user(cluster, host_ca, user, f"--roles={roles}")
    (root / user).mkdir()
    home = root / user / "tsh"
    login(cluster, home, user)
    return home


@pytest.fixture(scope="module")
def setup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The database side and the users, made side by side (each step is a real CLI run)."""
    root = tmp_path_factory.mktemp("users")
    (root / "roles.yaml").write_text(ROLES)
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(5) as pool:
            token = pool.submit(db_token, cluster)
            database = pool.submit(_start_database, cluster, tmp_path_factory, stack, token)
            host_ca = cluster.tctl("auth", "export", "--type=tls-host").stdout
            cluster.tctl("create", root / "roles.yaml")
            users = {u: pool.submit(_user, cluster, host_ca, root, u, r) for u, r in USERS.items()}
            homes = {u: f.result() for u, f in users.items()}
            pg, agent = database.result()
        # alice on a second terminal: the local proxies of the tests run from this copy
        homes["alice-proxy"] = root / "alice-proxy" / "tsh"
        shutil.copytree(homes["alice"], homes["alice-proxy"])
        yield Setup(host_ca, pg, agent, homes)
        agent.assert_alive()
    # the agent stopped on SIGTERM (the stack's callbacks ran), cleanly
    assert agent.proc is not None and agent.proc.returncode == 0, agent.context()
    assert "Traceback" not in agent.log(), agent.context()


@pytest.fixture(scope="module")
def host_ca(setup: Setup) -> str:
    return setup.host_ca


@pytest.fixture(scope="module")
def pg(setup: Setup) -> PgServer:
    return setup.pg


@pytest.fixture(scope="module")
def agent(setup: Setup) -> Agent:
    return setup.agent


@pytest.fixture(scope="module")
def homes(setup: Setup) -> dict[str, Path]:
    return setup.homes


@pytest.fixture(scope="module")
def tls_proxy(homes: dict[str, Path]) -> Iterator[TlsProxy]:
    """alice's ``tsh proxy db`` (TLS carried through): the client brings its own certificate."""
    proxy = start_tls_proxy(homes["alice-proxy"])
    try:
        yield proxy
    finally:
        stop_proxy(proxy.proc)


def db_connect(
    home: Path, *flags: str, sql: str = "select current_user;\n"
) -> subprocess.CompletedProcess[str]:
    """``tsh db connect … example-postgres`` with ``sql`` on psql's stdin."""
    return tsh(home, "db", "connect", *flags, DB, input=sql, check=False, timeout=60)


def denied(event: dict[str, Any], reason: str) -> None:
    assert event["success"] is False and reason in event["error"], (reason, event)


# ---------------------------------------------------------------------- 1. allowed
def test_allowed_session_runs_and_is_audited(cluster: Cluster, homes: dict[str, Path]) -> None:
    since = now()
    proc = db_connect(homes["alice"], "--db-user=alice", "--db-name=example")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s*alice\s*$", proc.stdout, re.M), proc.stdout

    events = wait_for_audit(cluster, since, ("db.session.end", {"user": "alice"}))
    start = only(events, "db.session.start", user="alice")
    assert start["success"] is True
    assert (start["db_service"], start["db_user"], start["db_name"]) == (DB, "alice", "example")
    assert start["roles"] == ["db-alice"]
    query = only(events, "db.session.query", sid=start["sid"])
    assert query["db_query"].strip().rstrip(";") == "select current_user"
    assert query["user"] == "alice"
    end = only(events, "db.session.end", sid=start["sid"])
    assert end["bytes_in"] > 0 and end["bytes_out"] > 0
    assert not end.get("reason")


# ---------------------------------------------------------------------- 2-5. RBAC refusals
def test_wrong_database_user_is_refused(
    cluster: Cluster, homes: dict[str, Path], tls_proxy: TlsProxy
) -> None:
    reason = 'database user "bob" is not allowed (allowed: alice)'
    since = now()
    proc = db_connect(homes["alice"], "--db-user=bob", "--db-name=example")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert reason in proc.stderr
    # the user in the client's StartupMessage counts, not only the certificate's route:
    # alice's certificate routes her to database user alice, and the client asks for bob
    msg = connect_error(**tls_proxy.conninfo(user="bob"))
    assert reason in msg, msg

    events = wait_for_audit(
        cluster, since, ("db.session.start", {"user": "alice", "db_user": "bob"}), at_least=2
    )
    refusals = pick(events, "db.session.start", user="alice", db_user="bob")
    assert len(refusals) == 2, refusals
    for event in refusals:
        denied(event, reason)


def test_wrong_database_name_is_refused(
    cluster: Cluster, homes: dict[str, Path], tls_proxy: TlsProxy
) -> None:
    reason = 'database name "example-db" is not allowed (allowed: example)'
    since = now()
    proc = db_connect(homes["alice"], "--db-user=alice", "--db-name=example-db")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert reason in proc.stderr
    msg = connect_error(**tls_proxy.conninfo(dbname="example-db"))
    assert reason in msg, msg

    events = wait_for_audit(
        cluster, since, ("db.session.start", {"db_name": "example-db"}), at_least=2
    )
    refusals = pick(events, "db.session.start", user="alice", db_name="example-db")
    assert len(refusals) == 2, refusals
    for event in refusals:
        denied(event, reason)


def test_label_mismatch_is_refused(
    cluster: Cluster, homes: dict[str, Path], tls_proxy: TlsProxy, tmp_path: Path
) -> None:
    # pat's role covers env=prod databases only: tsh does not even show this env=dev one
    assert json.loads(tsh(homes["pat"], "db", "ls", "--format=json").stdout) == []
    proc = db_connect(homes["pat"], "--db-user=alice", "--db-name=example")
    assert proc.returncode != 0
    assert f'database "{DB}" not found' in proc.stderr

    # a certificate routed to it anyway (an administrator signed it) is refused where
    # the session starts: the Database Service checks the labels
    cluster.tctl(
        "auth",
        "sign",
        "--user=pat",
        "--format=tls",
        f"--db-service={DB}",
        "--db-user=alice",
        "--db-name=example",
        f"--out={tmp_path / 'pat'}",
    )
    since = now()
    msg = connect_error(
        **tls_proxy.conninfo(sslcert=str(tmp_path / "pat.crt"), sslkey=str(tmp_path / "pat.key"))
    )
    reason = 'database labels do not match: label "env" is "dev", role allows ["prod"]'
    assert reason in msg, msg
    events = wait_for_audit(cluster, since, ("db.session.start", {"user": "pat"}))
    denied(only(events, "db.session.start", user="pat"), reason)


def test_deny_rule_beats_allow_wildcard(cluster: Cluster, homes: dict[str, Path]) -> None:
    since = now()
    proc = db_connect(homes["mallory"], "--db-user=postgres", "--db-name=example")
    reason = 'role "no-postgres" denies database user "postgres"'
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert reason in proc.stderr
    # the wildcard still allows every other database user
    ok = db_connect(homes["mallory"], "--db-user=alice", "--db-name=example")
    assert ok.returncode == 0 and re.search(r"^\s*alice\s*$", ok.stdout, re.M), ok.stderr

    events = wait_for_audit(cluster, since, ("db.session.end", {"user": "mallory"}))
    denied(only(events, "db.session.start", user="mallory", db_user="postgres"), reason)
    assert only(events, "db.session.start", user="mallory", db_user="alice")["success"] is True


# ---------------------------------------------------------------------- 6-7. bad certificates
def test_expired_certificate_is_refused(
    cluster: Cluster, host_ca: str, pg: PgServer, tls_proxy: TlsProxy, tmp_path: Path
) -> None:
    cluster.tctl(
        "auth",
        "sign",
        "--user=alice",
        "--ttl=2s",
        "--format=tls",
        f"--db-service={DB}",
        "--db-user=alice",
        "--db-name=example",
        f"--out={tmp_path / 'short'}",
    )
    cert, key = tmp_path / "short.crt", tmp_path / "short.key"
    expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
    assert expires - datetime.now(UTC) < timedelta(seconds=5)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 1.0)
    since, seen_by_pg, log_at = now(), pg_connections(pg), len(cluster.log())

    # TLS carried through: the client presents the expired certificate to the proxy
    msg = connect_error(**tls_proxy.conninfo(sslcert=str(cert), sslkey=str(key)))
    # authenticated tunnel through the product's local proxy: refused before dialling
    proxy = ThreadedLocalProxy(
        LocalProxy(
            proxy_addr=cluster.public_addr,
            sni="localhost",
            ca_pem=host_ca.encode(),
            client_cert_provider=lambda: (cert.read_bytes(), key.read_bytes()),
            target=DB,
        )
    )
    _, port = proxy.start()
    try:
        tunnel_msg = connect_error(
            host="127.0.0.1", port=port, user="alice", dbname="example", sslmode="disable"
        )
    finally:
        proxy.stop()
    assert "your database certificate expired at" in tunnel_msg, tunnel_msg
    # authenticated tunnel, a client that does not check: the proxy answers in PostgreSQL's
    # language (an ErrorResponse naming the expiry), not with a dropped connection
    answer = outer_tls_attempt(cluster, host_ca, cert, key)
    assert answer[:1] == b"E" and b"certificate expired at" in answer, answer

    # nothing reached the Database Service nor PostgreSQL; the proxy refused and audited it
    time.sleep(0.5)
    refused = pick(audit_since(cluster, since), "db.session.start")
    assert len(refused) >= 2, refused
    assert all(ev["success"] is False and "expired" in ev["error"] for ev in refused), refused
    assert pg_connections(pg) == seen_by_pg
    assert cluster.log()[log_at:].count("certificate expired at") >= 2, cluster.log_context()
    # and the client is told why (psql prints the proxy's FATAL message), not
    # "SSL error: unexpected eof while reading"
    assert "certificate expired at" in msg, msg


def forged_db_cert(tmp_path: Path) -> tuple[Path, Path]:
    """alice's database certificate from the user CA of another "example.com" cluster."""
    ca = CertAuthority.generate(CAType.USER, CLUSTER_NAME)
    key = generate_private_key()
    cert = ca.issue(
        key.public_key(),
        not_after=utcnow() + timedelta(hours=1),
        identity=Identity(
            username="alice",
            groups=("db-any",),
            usage=("usage:db",),
            cluster_name=CLUSTER_NAME,
            route_to_database=RouteToDatabase(
                service_name=DB, protocol="postgres", username="alice", database="example"
            ),
        ),
    )
    cert_path, key_path = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert_path.write_bytes(cert_to_pem(cert))
    key_path.touch(mode=0o600)
    key_path.write_bytes(private_key_to_pem(key))
    return cert_path, key_path


def test_certificate_from_another_ca_is_refused(
    cluster: Cluster, host_ca: str, pg: PgServer, tls_proxy: TlsProxy, tmp_path: Path
) -> None:
    cert, key = forged_db_cert(tmp_path)
    since, seen_by_pg, log_at = now(), pg_connections(pg), len(cluster.log())
    msg = connect_error(**tls_proxy.conninfo(sslcert=str(cert), sslkey=str(key)))
    assert outer_tls_attempt(cluster, host_ca, cert, key) == b""
    time.sleep(0.5)
    assert pick(audit_since(cluster, since), "db.session.start") == []
    assert pg_connections(pg) == seen_by_pg
    assert cluster.log()[log_at:].count("certificate verify failed") >= 2, cluster.log_context()
    # refused at TLS. PostgreSQL itself would send the TLS alert "unknown ca"; asyncio's
    # and uvloop's TLS layers close without flushing the alert OpenSSL produced, so the
    # client sees an SSL error or an unexpected close (documented limitation).
    assert re.search(r"SSL|closed the connection|unknown ca|eof", msg), msg


# ---------------------------------------------------------------------- 8. locks
def test_lock_cuts_the_live_session_and_refuses_new_ones(
    cluster: Cluster, homes: dict[str, Path], pg: PgServer
) -> None:
    proc, url = start_tunnel_proxy(homes["alice-proxy"])
    lock_id = ""
    try:
        result: dict[str, Any] = {}
        conn = psycopg.connect(url, connect_timeout=15, autocommit=True)
        assert conn.execute("select 1").fetchone() == (1,)

        def long_query() -> None:
            try:
                conn.execute("select pg_sleep(20)")
                result["outcome"] = "finished"
            except psycopg.Error as exc:
                result["outcome"] = exc
            result["at"] = time.monotonic()

        worker = threading.Thread(target=long_query, daemon=True)
        worker.start()
        running(pg, "select pg_sleep(20)")
        since = now()
        out = cluster.tctl("lock", "--user=alice", "--message=compromised").stdout
        locked_at = time.monotonic()
        m = re.search(r'lock with name "([^"]+)"', out)
        assert m, out
        lock_id = m.group(1)
        worker.join(10)
        conn.close()
        assert isinstance(result.get("outcome"), psycopg.OperationalError), result
        assert result["at"] - locked_at < 5, "the live session outlived the lock by > 5s"

        msg = connect_error(conninfo=url)
        assert "locked" in msg and "compromised" in msg, msg
        assert f"tctl rm lock/{lock_id}" in msg  # the hint

        events = wait_for_audit(
            cluster,
            since,
            ("db.session.end", {"user": "alice"}),
            ("db.session.start", {"user": "alice", "success": False}),
        )
        end = only(events, "db.session.end", user="alice")
        assert "locked" in end["reason"] and "compromised" in end["reason"], end
        denied(only(events, "db.session.start", user="alice"), "locked")

        cluster.tctl("rm", f"lock/{lock_id}")
        lock_id = ""
        deadline = time.monotonic() + 5
        while True:
            try:
                with psycopg.connect(url, connect_timeout=15) as again:
                    assert again.execute("select current_user").fetchone() == ("alice",)
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"alice is still refused 5s after the lock was removed: {exc}")
                time.sleep(0.2)
    finally:
        if lock_id:
            cluster.tctl("rm", f"lock/{lock_id}", check=False)
        stop_proxy(proc)


# ---------------------------------------------------------------------- 9. cancel
@pytest.mark.parametrize("mode", ["tls", "tunnel"])
def test_cancel_through_the_local_proxy(homes: dict[str, Path], pg: PgServer, mode: str) -> None:
    if mode == "tls":
        tls = start_tls_proxy(homes["alice-proxy"])
        proc, conninfo = tls.proc, tls.conninfo()
    else:
        proc, url = start_tunnel_proxy(homes["alice-proxy"])
        conninfo = {"conninfo": url, "connect_timeout": 15}
    try:
        for method in ("cancel", "cancel_safe"):  # libpq's PQcancel, and its newer cancel API
            with psycopg.connect(**conninfo, autocommit=True) as conn:
                outcome: dict[str, Any] = {}

                def sleep(
                    conn: psycopg.Connection[Any] = conn, out: dict[str, Any] = outcome
                ) -> None:
                    try:
                        conn.execute("select pg_sleep(30)")
                        out["error"] = None
                    except psycopg.Error as exc:
                        out["error"] = exc
                    out["at"] = time.monotonic()

                worker = threading.Thread(target=sleep, daemon=True)
                worker.start()
                running(pg, "select pg_sleep(30)")
                asked = time.monotonic()
                getattr(conn, method)()
                worker.join(5)
                assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled), (
                    method,
                    outcome,
                )
                assert outcome["at"] - asked < 1.0, (method, outcome["at"] - asked)
                # the session goes on after the cancel
                assert conn.execute("select 1").fetchone() == (1,)
    finally:
        stop_proxy(proc)


# ---------------------------------------------------------------------- 11. joining
def test_agents_with_a_wrong_pin_or_token_cannot_join(
    cluster: Cluster, agent: Agent, pg: PgServer, tmp_path: Path
) -> None:
    good_token = (agent.root / "token").read_text().strip()
    expired = db_token(cluster, "--ttl=1s")
    node_token = cluster.tctl("tokens", "add", "--type=node", "--format=text").stdout.strip()
    time.sleep(1.0)
    since = now()
    uri = f"localhost:{pg.port}"
    zeros = f"sha256:{'0' * 64}"
    cases = {
        "pin": new_agent(tmp_path / "pin", cluster, good_token, uri, f"--ca-pin={zeros}"),
        "garbage": new_agent(tmp_path / "garbage", cluster, "not-a-token-" + "x" * 20, uri),
        "expired": new_agent(tmp_path / "expired", cluster, expired, uri),
        "node": new_agent(tmp_path / "node", cluster, node_token, uri),
    }
    for a in cases.values():
        a.start()
    try:
        for name, a in cases.items():
            assert a.proc is not None
            try:
                rc = a.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: the agent kept running{a.context()}", pytrace=False)
            assert rc != 0, f"{name}: exit 0{a.context()}"
            assert "Traceback" not in a.log(), a.context()
            assert not (a.root / "data" / "proc" / "db.pem").exists(), name
    finally:
        for a in cases.values():
            a.stop()

    pin_log = cases["pin"].log()
    assert f"does not match any of the expected pins ({zeros})" in pin_log, pin_log
    actual_pin = re.search(r"CA pin\s+(sha256:\S+)", cluster.tctl("status").stdout)
    assert actual_pin and actual_pin.group(1) in pin_log
    for name in ("garbage", "expired"):
        assert "the join token is unknown or has expired" in cases[name].log(), cases[
            name
        ].context()
    assert "does not allow role Db" in cases["node"].log(), cases["node"].context()

    failures = pick(audit_since(cluster, since), "instance.join", success=False)
    errors = sorted(e.get("error", "") for e in failures)
    assert len(failures) == 3, failures  # the pin check fails before the token is ever sent
    assert sum("unknown or has expired" in e for e in errors) == 2, errors
    assert sum("does not allow role Db" in e for e in errors) == 1, errors
    assert all(e.get("role") == "Db" for e in failures), failures
    agent.assert_alive()  # the working agent is not disturbed


# ---------------------------------------------------------------------- 10. proxy restart
def test_agent_reconnects_after_a_cluster_restart(
    cluster: Cluster, agent: Agent, homes: dict[str, Path]
) -> None:
    assert db_connect(homes["alice"], "--db-user=alice", "--db-name=example").returncode == 0
    web_port = cluster.web_port
    cluster.stop()
    cluster.start()
    restarted = time.monotonic()
    assert cluster.web_port == web_port
    last = db_connect(homes["alice"], "--db-user=alice", "--db-name=example")
    while last.returncode != 0 and time.monotonic() - restarted < 10:
        time.sleep(0.3)
        last = db_connect(homes["alice"], "--db-user=alice", "--db-name=example")
    assert last.returncode == 0, (
        f"tsh db connect still fails {time.monotonic() - restarted:.1f}s after the restart:\n"
        f"{last.stderr}{agent.context()}"
    )
    assert re.search(r"^\s*alice\s*$", last.stdout, re.M), last.stdout
    agent.assert_alive()  # the same agent process, never restarted
