"""Seed guide 004, "Database Access with Self-Hosted PostgreSQL", replayed against Jumpgate.

Every command runs through the installed console scripts (``teleport``, ``tctl``,
``tsh``, plus ``curl``, ``psql`` and PostgreSQL's own binaries), with the flags the
guide shows; only host names, ports and paths differ:

* the cluster's proxy is ``localhost:<free port>`` (the guide's teleport.example.com);
* files the guide puts in ``/tmp/token``, ``/etc/teleport.yaml`` and
  ``/etc/systemd/system/teleport.service`` go to the test's ``tmp_path``;
* PostgreSQL runs unprivileged (``tests/pg_fixture.py``) on a free loopback port
  and its files live in a short private directory it can read.

If a command of the guide stops working as shown, the test fails: do not change
the command here to make it pass, fix Jumpgate.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from cryptography import x509

from jumpgate.core.config import load_config
from tests.conftest import free_port
from tests.integration.conftest import (
    CLUSTER_NAME,
    TCTL,
    TELEPORT,
    Cluster,
    assert_clean_stderr,
    cli_env,
    make_cluster,
    parse_status,
    run,
    tail,
)
from tests.integration.dbhelpers import tsh, tsh_env  # the shared tsh runners
from tests.pg_fixture import PgServer, _chown_tree, ensure_pg_user, require_pg_bin

pytestmark = pytest.mark.postgres

T = TypeVar("T")
TSH = str(Path(sys.executable).parent / "tsh")
PASSWORD = "correct horse battery staple"
DB = "example-postgres"
#: The cluster usually stops in ~2 s; once, after serving a Database Service agent, it
#: paused ~20 s at "closing the auth API", and a loaded CI machine is slower still.
STOP_TIMEOUT = 60.0


# --------------------------------------------------------------------------- helpers
def invite_url(out: str) -> str:
    urls = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
    assert len(urls) == 1, out
    return str(urls[0])


def complete_invite(cluster: Cluster, host_ca: str, url: str) -> None:
    """What the invited user's browser does: post the password form to the invite URL."""
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == cluster.public_addr, url
    ctx = ssl.create_default_context(cadata=host_ca)
    conn = http.client.HTTPSConnection("localhost", cluster.web_port, context=ctx, timeout=30)
    try:
        conn.request(
            "POST",
            parts.path,
            body=urllib.parse.urlencode({"password": PASSWORD, "password_confirm": PASSWORD}),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": f"https://{cluster.public_addr}",
            },
        )
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    finally:
        conn.close()
    assert resp.status == 200, (resp.status, body)


def table(out: str) -> tuple[list[str], list[str]]:
    """A ``tsh``/``tctl`` text table: (column names, data rows)."""
    lines = out.splitlines()
    assert len(lines) >= 2 and set(lines[1].replace(" ", "")) == {"-"}, out
    # column boundaries from the dashes line
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    header = [
        lines[0][a : b + 1].strip() if i < len(spans) - 1 else lines[0][a:].strip()
        for i, (a, b) in enumerate(spans)
    ]
    return header, lines[2:]


@dataclass
class Agent:
    """``teleport start -c db.yaml``: the Database Service in its own process."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def context(self) -> str:
        rc = self.proc.poll()
        state = "running" if rc is None else f"exited with {rc}"
        return f"\n--- Database Service ({state}), log tail:\n{tail(self.log())}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextmanager
def db_agent(config: Path, cwd: Path) -> Iterator[Agent]:
    log_path = cwd / "db-agent.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [TELEPORT, "start", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=cwd,
        )
    agent = Agent(proc, log_path)
    try:
        yield agent
    finally:
        agent.stop()


@contextmanager
def seed_postgres(tmp_path: Path, certs_dir: Path) -> Iterator[PgServer]:
    """Step 3: PostgreSQL with the guide's postgresql.conf and pg_hba.conf lines.

    ``tests.pg_fixture.start_postgres`` writes its own TLS files and pg_hba.conf, so
    the guide's lines are written here; the fixture's helpers run it unprivileged.
    """
    bin_dir = require_pg_bin()  # fails (never skips) in CI
    run_as = ensure_pg_user()
    base = Path(tempfile.mkdtemp(prefix="jgpg-"))  # short: the Unix socket lives here
    server = PgServer(
        base=base, bin_dir=bin_dir, port=free_port(), run_as=run_as, keep_log=tmp_path / "pg.log"
    )
    try:
        data = base / "data"
        data.mkdir(mode=0o700)
        # "the paths where you placed the server.crt, server.key, and server.cas files"
        for name in ("server.crt", "server.key", "server.cas"):
            shutil.copyfile(certs_dir / name, base / name)
        (base / "server.key").chmod(0o600)
        if run_as is not None:
            _chown_tree(base, run_as)
        server._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--username=postgres",  # the superuser the guide connects as
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                # test plumbing: loopback only, the set-up socket in our directory
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\n"
                "fsync = off\n"
                # the guide's lines
                "ssl = on\n"
                f"ssl_cert_file = '{base / 'server.crt'}'\n"
                f"ssl_key_file = '{base / 'server.key'}'\n"
                f"ssl_ca_file = '{base / 'server.cas'}'\n"
            )
        (data / "pg_hba.conf").write_text(
            # set-up only: the Unix socket (matches no TCP connection, so it does not
            # take priority over the guide's rules)
            "local all all trust\n"
            # the guide's entries, exactly
            "hostssl all all ::/0 cert\n"
            "hostssl all all 0.0.0.0/0 cert\n"
        )
        if run_as is not None:
            _chown_tree(base, run_as)
        server.start()  # "Restart the PostgreSQL instance to enable this configuration."
        yield server
    finally:
        server.stop()


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = 15.0,
    context: Callable[[], str] = str,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s{context()}", pytrace=False)
        time.sleep(0.2)


def start_local_proxy(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``tsh proxy db ...`` in the background; returns once it printed how to connect."""
    proc = subprocess.Popen(
        [TSH, "proxy", "db", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=tsh_env(home),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"tsh proxy db exited early ({proc.wait()}): {''.join(lines)}{err}")
        lines.append(line)
        if line.startswith("  $ psql") or line.startswith("Your database user is"):
            return proc, "".join(lines)


def stop_local_proxy(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Traceback" not in err, err


class SleepingQuery:
    """``select pg_sleep(30)`` running on ``conn`` in a thread; remembers how it ended."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.execute("select pg_sleep(30)")
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 15.0) -> float:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the query was not cancelled"
        return time.monotonic() - self.started


def active_sleep_pid(watcher: psycopg.Connection) -> int | None:
    row = watcher.execute(
        "select pid from pg_stat_activity where state = 'active' and query like 'select pg_sleep%'"
    ).fetchone()
    return int(row[0]) if row else None


# --------------------------------------------------------------------------- the guide
def test_seed_004_self_hosted_postgres(tmp_path: Path) -> None:
    ws = tmp_path / "workstation"  # where the guide's tctl commands write their files
    ws.mkdir()
    home = tmp_path / "tsh"  # alice's ~/.tsh
    cluster = make_cluster(tmp_path / "cluster")
    cluster.start()
    try:
        _replay_guide(cluster, tmp_path, ws, home)
    except BaseException:
        cluster.kill()
        raise
    cluster.stop(timeout=STOP_TIMEOUT)


def _replay_guide(cluster: Cluster, tmp_path: Path, ws: Path, home: Path) -> None:
    web = cluster.public_addr  # localhost:<web port>: the guide's teleport.example.com
    host_ca = cluster.tctl("auth", "export", "--type=tls-host").stdout
    (tmp_path / "host-ca.pem").write_text(host_ca)

    # ---- Prerequisites: the proxy answers; tctl status on the auth host
    ping = run(
        ["curl", "-sS", "--cacert", tmp_path / "host-ca.pem", f"https://{web}/v1/webapi/ping"]
    ).stdout
    server_version = json.loads(ping)["server_version"]
    if shutil.which("jq"):  # the guide's pipeline, when jq is installed
        piped = run(
            [
                "bash",
                "-o",
                "pipefail",
                "-c",
                f"curl -sS --cacert {tmp_path / 'host-ca.pem'} https://{web}/v1/webapi/ping"
                " | jq -r '.server_version'",
            ]
        ).stdout
        assert piped == f"{server_version}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", server_version), server_version
    status = parse_status(cluster.tctl("status").stdout)
    assert status["Cluster"] == CLUSTER_NAME
    assert status["Version"] == server_version
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", status["CA pin"]), status

    # ---- Step 1/5: a join token and users
    proc = cluster.tctl("tokens", "add", "--type=db", "--format=text")
    token = proc.stdout.strip()
    assert proc.stdout == f"{token}\n" and re.fullmatch(r"[0-9a-f]{32}", token), proc.stdout
    token_file = tmp_path / "token"  # the guide's /tmp/token
    token_file.write_text(proc.stdout)
    listed = cluster.tctl("tokens", "ls").stdout  # tokens are shown masked but the end
    assert re.search(rf"^\*+{token[-4:]}\s+Db\s", listed, re.M), listed

    out = cluster.tctl(
        "users", "add", "--roles=access", "--db-users=*", "--db-names=*", "alice"
    ).stdout
    assert 'User "alice" has been created but requires a password.' in out, out
    alice_invite = invite_url(out)
    out = cluster.tctl(
        "users", "add", "--roles=access,requester", "--db-users=*", "--db-names=*", "bob"
    ).stdout
    assert 'User "bob" has been created but requires a password.' in out, out
    users = json.loads(cluster.tctl("users", "ls", "--format=json").stdout)
    by_name = {u["metadata"]["name"]: u for u in users}
    assert by_name["alice"]["spec"]["roles"] == ["access"]
    assert by_name["bob"]["spec"]["roles"] == ["access", "requester"]
    for name in ("alice", "bob"):
        traits = by_name[name]["spec"]["traits"]
        assert traits["db_users"] == ["*"] and traits["db_names"] == ["*"], traits
    complete_invite(cluster, host_ca, alice_invite)

    # ---- Step 2/5: the database's certificate/key pair and the db_client CA
    out = cluster.tctl(
        "auth", "sign", "--format=db", "--host=localhost", "--out=server", "--ttl=2190h", cwd=ws
    ).stdout
    assert "server.key, server.crt, server.cas" in out, out
    assert sorted(p.name for p in ws.iterdir()) == ["server.cas", "server.crt", "server.key"]
    crt = x509.load_pem_x509_certificate((ws / "server.crt").read_bytes())
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    lifetime = crt.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=2189) < lifetime <= timedelta(hours=2190, minutes=1), lifetime
    db_ca = x509.load_pem_x509_certificate(
        cluster.tctl("auth", "export", "--type=db").stdout.encode()
    )
    crt.verify_directly_issued_by(db_ca)  # PostgreSQL presents a cert of the cluster's db CA
    # the guide's alternative: export only the db_client CA, through the proxy
    cas = cluster.tctl(
        "auth", "export", "--type=db-client", f"--auth-server={web}", local=False, cwd=ws
    ).stdout
    (ws / "db-client.cas").write_text(cas)
    assert (ws / "db-client.cas").read_bytes() == (ws / "server.cas").read_bytes()
    _tctl_from_a_workstation_needs_db_impersonation(cluster, tmp_path)

    # ---- Step 3/5: PostgreSQL with TLS and client certificates
    with seed_postgres(tmp_path, ws) as pg:
        assert pg.psql("select rolsuper from pg_roles where rolname = 'postgres'") == "t"
        pg.psql("CREATE ROLE alice LOGIN")
        # cert is the only way in over TCP: no client certificate, no connection
        with pytest.raises(psycopg.OperationalError, match="certificate"):
            psycopg.connect(
                host="127.0.0.1",
                port=pg.port,
                user="postgres",
                dbname="postgres",
                sslmode="require",
                connect_timeout=10,
            )
        _steps_4_and_5(cluster, tmp_path, home, token_file, pg)


def _tctl_from_a_workstation_needs_db_impersonation(cluster: Cluster, tmp_path: Path) -> None:
    """Step 2's note: tctl on a workstation may sign db certificates only with the
    ``impersonate: {users: ["Db"], roles: ["Db"]}`` allow rule."""
    role = tmp_path / "db-impersonator.yaml"
    role.write_text(
        "kind: role\nversion: v7\nmetadata:\n  name: db-impersonator\nspec:\n"
        '  allow:\n    impersonate:\n      users: ["Db"]\n      roles: ["Db"]\n'
    )
    cluster.tctl("create", "-f", role)
    cluster.tctl("users", "add", "--roles=db-impersonator", "dbadmin")
    remote = tmp_path / "remote"
    remote.mkdir()
    for user in ("dbadmin", "alice"):
        cluster.tctl("auth", "sign", f"--user={user}", f"--out={tmp_path / user}.pem")
    argv = [f"--auth-server={cluster.public_addr}"]
    sign = ["auth", "sign", "--format=db", "--host=localhost", "--out=server", "--ttl=2190h"]
    cluster.tctl(*argv, "-i", f"{tmp_path / 'dbadmin'}.pem", *sign, local=False, cwd=remote)
    assert sorted(p.name for p in remote.iterdir()) == ["server.cas", "server.crt", "server.key"]
    other = tmp_path / "remote-alice"
    other.mkdir()
    denied = cluster.tctl(
        *argv, "-i", f"{tmp_path / 'alice'}.pem", *sign, local=False, cwd=other, check=False
    )
    assert denied.returncode != 0
    assert "impersonate" in denied.stderr and "Db" in denied.stderr, denied.stderr
    assert not list(other.iterdir())


def _steps_4_and_5(
    cluster: Cluster, tmp_path: Path, home: Path, token_file: Path, pg: PgServer
) -> None:
    web = cluster.public_addr

    # ---- Step 4/5: configure and start the Database Service
    db_yaml = tmp_path / "db.yaml"  # the guide's /etc/teleport.yaml
    out = run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "-o",
            f"file://{db_yaml}",
            f"--token={token_file}",
            f"--proxy={web}",
            f"--name={DB}",
            "--protocol=postgres",
            f"--uri=localhost:{pg.port}",
            "--labels=env=dev",
            # only because the agent shares this machine with the cluster (and other
            # tests): the default /var/lib/teleport would be the cluster's or another's
            f"--data-dir={tmp_path / 'db-data'}",
        ]
    )
    assert f"Wrote config to file '{db_yaml}'" in out.stdout + out.stderr, out
    cfg = load_config(db_yaml)
    assert cfg.db_enabled and not cfg.auth_service.enabled and not cfg.proxy_service.enabled
    assert cfg.upstream() == ("proxy", web)
    assert cfg.join_token() == token_file.read_text().strip()  # read from the token file
    (db,) = cfg.db_service.databases
    assert (db.name, db.protocol, db.uri) == (DB, "postgres", f"localhost:{pg.port}")
    assert db.static_labels == {"env": "dev"}

    unit = tmp_path / "teleport.service"  # the guide's /etc/systemd/system/teleport.service
    proc = run([TELEPORT, "install", "systemd", "-o", unit])
    assert f"Wrote systemd unit file: {unit}" in proc.stdout + proc.stderr, proc
    text = unit.read_text()
    assert "[Unit]" in text and "[Service]" in text and "WantedBy=multi-user.target" in text
    assert re.search(r"^ExecStart=\S*teleport start --config /etc/teleport.yaml", text, re.M)

    with db_agent(db_yaml, tmp_path) as agent:
        wait_for(
            "the Database Service did not join",
            lambda: f"joined the cluster {CLUSTER_NAME} as a Db agent" in agent.log(),
            context=agent.context,
        )
        try:
            _step_5(cluster, tmp_path, home, pg, agent)
        except BaseException as exc:
            exc.add_note(agent.context())
            exc.add_note(f"--- PostgreSQL log tail:\n{tail(pg.log())}")
            exc.add_note(cluster.log_context())
            raise


def _step_5(cluster: Cluster, tmp_path: Path, home: Path, pg: PgServer, agent: Agent) -> None:
    web = cluster.public_addr

    # ---- Step 5/5: connect
    out = tsh(home, "login", f"--proxy={web}", "--user=alice", input=PASSWORD + "\n").stdout
    assert f"> Profile URL:        https://{web}\n" in out, out
    assert re.search(r"^  Logged in as:\s+alice$", out, re.M), out

    def listed() -> list[str] | None:
        header, rows = table(tsh(home, "db", "ls").stdout)
        assert header[:2] == ["Name", "Description"] and "Labels" in header, header
        return [r for r in rows if r.split()[:1] == [DB]] or None

    header, _ = table(tsh(home, "db", "ls").stdout)
    assert header == ["Name", "Description", "Allowed Users", "Labels", "Connect"], header
    (row,) = wait_for("example-postgres was not listed by tsh db ls", listed)
    assert re.fullmatch(rf"{DB}\s+\[\*\]\s+env=dev\s*", row), row

    connect = ["db", "connect", "--db-user=postgres", "--db-name=postgres", DB]
    proc = tsh(home, *connect, input="select 1;\n", timeout=60)
    assert re.search(r"^\s*1\s*$", proc.stdout, re.M) and "(1 row)" in proc.stdout, proc

    db_cert = home / "keys" / "localhost" / "alice-db" / CLUSTER_NAME / f"{DB}.crt"
    assert db_cert.exists()
    assert tsh(home, "db", "logout", DB).stdout == f'Logged out of database "{DB}".\n'
    assert not db_cert.exists()
    assert (home / "keys" / "localhost" / "alice.crt").exists()  # still logged in
    tsh(home, "db", "login", "--db-user=postgres", "--db-name=postgres", DB)
    assert db_cert.exists()
    assert tsh(home, "db", "logout").stdout == f"Logged out of databases: {DB}.\n"
    assert not db_cert.exists()
    assert not list((home / "keys" / "localhost").glob("alice-db/*/*.crt"))
    assert (home / "keys" / "localhost" / "alice.crt").exists()

    _troubleshooting(home, pg)
    _audit(cluster)


def _troubleshooting(home: Path, pg: PgServer) -> None:
    """Cancelling a query: through a tsh local proxy, and with pg_cancel_backend()."""
    port = free_port()
    proxy, out = start_local_proxy(
        home, "--tunnel", "--db-user=postgres", "--db-name=postgres", f"--port={port}", DB
    )
    try:
        assert f"on 127.0.0.1:{port}" in out, out
        dsn = (
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
            " sslmode=disable connect_timeout=10"
        )
        with psycopg.connect(dsn, autocommit=True) as watcher:
            # Ctrl-C in a client: libpq's CancelRequest on a new connection to the local proxy
            with psycopg.connect(dsn, autocommit=True) as conn:
                query = SleepingQuery(conn)
                wait_for("pg_sleep(30) did not start", lambda: active_sleep_pid(watcher))
                conn.cancel()
                elapsed = query.join()
                assert isinstance(query.error, psycopg.errors.QueryCanceled), query.error
                assert elapsed < 10, elapsed
                assert conn.execute("select 2").fetchone() == (2,)  # the session lives on

            # the manual route: find the PID from another session, then pg_cancel_backend
            with psycopg.connect(dsn, autocommit=True) as conn:
                query = SleepingQuery(conn)
                wait_for("pg_sleep(30) did not start", lambda: active_sleep_pid(watcher))
                connect = ["db", "connect", "--db-user=postgres", "--db-name=postgres", DB]
                listing = tsh(
                    home,
                    *connect,
                    input="SELECT pid,usename,backend_start,query FROM pg_stat_activity "
                    "WHERE state = 'active';\n",
                    timeout=60,
                ).stdout
                m = re.search(
                    r"^\s*(\d+)\s*\|\s*postgres\s*\|.*\|\s*select pg_sleep", listing, re.M
                )
                assert m, listing
                pid = int(m.group(1))
                cancelled = tsh(
                    home, *connect, input=f"SELECT pg_cancel_backend({pid});\n", timeout=60
                ).stdout
                assert re.search(r"^\s*t\s*$", cancelled, re.M), cancelled
                query.join()
                assert isinstance(query.error, psycopg.errors.QueryCanceled), query.error

            # and, when a graceful cancel is not enough, pg_terminate_backend
            with psycopg.connect(dsn, autocommit=True) as conn:
                query = SleepingQuery(conn)
                pid = wait_for("pg_sleep(30) did not start", lambda: active_sleep_pid(watcher))
                row = watcher.execute(f"SELECT pg_terminate_backend({pid})").fetchone()
                assert row == (True,)
                query.join()
                assert isinstance(query.error, psycopg.OperationalError), query.error
    finally:
        stop_local_proxy(proxy)
    assert "canceling statement due to user request" in pg.log()


def _audit(cluster: Cluster) -> None:
    def alice_db_events() -> dict[str, list[dict[str, object]]] | None:
        events = json.loads(cluster.tctl("audit", "ls", "--format", "json").stdout)
        found: dict[str, list[dict[str, object]]] = {}
        for ev in events:
            if ev.get("user") == "alice" and str(ev.get("event", "")).startswith("db.session."):
                found.setdefault(str(ev["event"]), []).append(ev)
        wanted = {"db.session.start", "db.session.query", "db.session.end"}
        return found if wanted <= found.keys() else None

    found = wait_for("db.session.start/query/end for alice not audited", alice_db_events)
    starts = found["db.session.start"]
    assert all(e["db_service"] == DB and e["success"] is True for e in starts), starts
    assert any(e.get("db_user") == "postgres" and e.get("db_name") == "postgres" for e in starts)
    queries = [str(e.get("db_query")) for e in found["db.session.query"]]
    assert "select 1;" in queries, queries
    assert "select pg_sleep(30)" in queries, queries


# --------------------------------------------------------------------------- variants
def test_seed_004_db_configure_variants(tmp_path: Path) -> None:
    """Step 4's other forms: a custom database CA, the system CA pool, stdout."""
    token = tmp_path / "token"
    token.write_text("abcd123-insecure-do-not-use-this\n")
    ca = tmp_path / "db.ca"  # the guide's /var/lib/teleport/db.ca
    ca.write_text("placeholder: the agent reads it when it connects\n")
    common = [
        f"--token={token}",
        "--proxy=teleport.example.com:443",
        f"--name={DB}",
        "--protocol=postgres",
        "--uri=postgres.example.com:5432",
    ]

    custom = tmp_path / "custom-ca.yaml"
    run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "-o",
            f"file://{custom}",
            *common,
            f"--ca-cert-file={ca}",
            "--labels=env=dev",
        ]
    )
    (db,) = load_config(custom).db_service.databases
    assert db.tls.ca_cert_file == str(ca) and db.static_labels == {"env": "dev"}

    system = tmp_path / "system-pool.yaml"
    run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "-o",
            f"file://{system}",
            *common,
            "--trust_system_cert_pool",
            "--labels=env=dev",
        ]
    )
    cfg = load_config(system)
    (db,) = cfg.db_service.databases
    assert db.tls.trust_system_cert_pool is True
    assert cfg.upstream() == ("proxy", "teleport.example.com:443")
    dashed = run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "--output=stdout",
            *common,
            "--trust-system-cert-pool",
            "--labels=env=dev",
        ]
    ).stdout
    assert dashed == system.read_text()
    # the guide's first form names the proxy without a port
    plain = run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "--output=stdout",
            f"--token={token}",
            "--proxy=teleport.example.com",
            f"--name={DB}",
            "--protocol=postgres",
            "--uri=postgres.example.com:5432",
            "--labels=env=dev",
        ]
    ).stdout
    assert "proxy_server: teleport.example.com" in plain
    # agents may pin the cluster's CA (Jumpgate flag, as `teleport node configure`)
    pin = "sha256:" + "ab" * 32
    pinned = run(
        [TELEPORT, "db", "configure", "create", "--output=stdout", *common, f"--ca-pin={pin}"]
    ).stdout
    assert pin in pinned


# --------------------------------------------------------------------------- prerequisites
def test_seed_004_tctl_status_with_tsh_login_credentials(tmp_path: Path) -> None:
    """Prerequisites: "sign in with tsh login, then verify that you can run tctl
    commands using your current credentials" (tctl status on a workstation)."""
    cluster = make_cluster(tmp_path / "cluster")
    cluster.start()
    try:
        host_ca = cluster.tctl("auth", "export", "--type=tls-host").stdout
        out = cluster.tctl("users", "add", "--roles=editor,access", "admin").stdout
        complete_invite(cluster, host_ca, invite_url(out))
        home = tmp_path / "tsh"
        tsh(home, "login", f"--proxy={cluster.public_addr}", "--user=admin", input=PASSWORD + "\n")
        # a workstation: no /etc/teleport.yaml, only the tsh profile
        proc = subprocess.run(
            [TCTL, "status"],
            capture_output=True,
            text=True,
            env=tsh_env(home),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        assert_clean_stderr(proc)
        assert proc.returncode == 0, f"tctl status exited {proc.returncode}: {proc.stderr}"
        status = parse_status(proc.stdout)
        assert status["Cluster"] == CLUSTER_NAME
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", status["CA pin"]), status
    except BaseException:
        cluster.kill()
        raise
    cluster.stop()
