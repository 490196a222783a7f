"""``tsh`` against a real ``teleport start``: login (password from stdin), status, db, logout, version.

Each test runs the installed ``tsh`` console script with its own ``TELEPORT_HOME``
and ``PGSERVICEFILE``, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpgate.core.auth.identityfile import read_identity_file
from jumpgate.core.client.profile import ProfileStore
from tests.conftest import free_port
from tests.integration.conftest import CLUSTER_NAME, Cluster, make_cluster
from tests.integration.dbhelpers import (
    TSH,
    invite_user,
    login,
    start_proxy,
    stop_proxy,
    tsh,
    tsh_env,
)


def status_rows(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"[> ] (\S[^:]*):\s*(.*)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "tsh"


@pytest.fixture(scope="module")
def host_ca(cluster: Cluster) -> str:
    return cluster.tctl("auth", "export", "--type=tls-host").stdout


def complete_invite(cluster: Cluster, host_ca: str, user: str) -> None:
    """``tctl users add`` then the invite form post, as the user's browser would."""
    invite_user(
        cluster, host_ca, user, "--roles=access", "--db-users=alice,bob", "--db-names=example"
    )


@pytest.fixture(scope="module")
def carol(cluster: Cluster, host_ca: str) -> str:
    """A local user with a password, ready for ``tsh login``."""
    complete_invite(cluster, host_ca, "carol")
    return "carol"


def sign_alice(cluster: Cluster, out: Path) -> Path:
    """``tctl auth sign --user=alice`` (alice may use any database user and name)."""
    if "alice" not in cluster.tctl("users", "ls").stdout:
        cluster.tctl("users", "add", "alice", "--roles=access", "--db-users=*", "--db-names=*")
    cluster.tctl("auth", "sign", "--user=alice", f"--out={out}", "--overwrite")
    return out


def saved_profile(cluster: Cluster, home: Path, tmp_path: Path) -> ProfileStore:
    """A profile built from ``tctl auth sign --user=alice`` (no password login needed)."""
    ident = read_identity_file(sign_alice(cluster, tmp_path / "alice.id"))
    store = ProfileStore(home)
    store.save(
        proxy_addr=cluster.public_addr,
        user="alice",
        cluster=ident.cluster_name,
        key_pem=ident.key_pem,
        cert_pem=ident.cert_pem,
        ca_pem=ident.ca_pems[0],
    )
    return store


# ---------------------------------------------------------------------- version / status
def test_version_without_profile_is_offline_and_light(home: Path) -> None:
    out = tsh(home, "version").stdout
    assert re.fullmatch(r"Jumpgate tsh v\S+ \(Teleport \S+ compatible\) python\S+\n", out), out
    # nothing heavy is imported on this path (no crypto, no YAML, no TLS, no HTTP)
    probe = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            "import sys; sys.argv = ['tsh', 'version']; from jumpgate.cli.tsh import main; main()",
        ],
        capture_output=True,
        text=True,
        env=tsh_env(home),
        timeout=30,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines()}
    for heavy in ("cryptography", "yaml", "ssl", "http.client", "prompt_toolkit", "rich"):
        assert heavy not in imported, f"tsh version imported {heavy}"


def test_status_when_not_logged_in(home: Path) -> None:
    proc = tsh(home, "status")
    assert proc.stdout == "Not logged in.\n"


def test_login_to_unreachable_proxy_names_the_address(home: Path) -> None:
    port = free_port()
    proc = tsh(home, "login", f"--proxy=127.0.0.1:{port}", "--user=x", input="pw\n", check=False)
    assert proc.returncode == 7, proc.stderr
    assert f"cannot reach the proxy at 127.0.0.1:{port}" in proc.stderr


# ---------------------------------------------------------------------- password login
def test_login_status_logout_with_password_from_stdin(
    cluster: Cluster, carol: str, home: Path
) -> None:
    proc = login(cluster, home, carol)
    rows = status_rows(proc.stdout)
    assert proc.stdout.startswith(f"> Profile URL:        https://{cluster.public_addr}\n")
    assert rows["Logged in as"] == carol
    assert rows["Cluster"] == CLUSTER_NAME
    assert rows["Roles"] == "access"
    assert rows["Kubernetes"] == "disabled"
    assert re.fullmatch(
        r"\S+ \S+ [+-]\d{4} \S+ \[valid for (11h59m|12h0m)0s\]", rows["Valid until"]
    )

    # the Teleport layout, private modes
    host = "localhost"
    assert (home / "current-profile").read_text() == f"{host}\n"
    for rel in (f"{host}.yaml", f"keys/{host}/{carol}.key", f"keys/{host}/{carol}.crt"):
        assert stat.S_IMODE((home / rel).stat().st_mode) == 0o600, rel
    assert (home / f"keys/{host}/cas/{CLUSTER_NAME}.pem").exists()
    assert stat.S_IMODE((home / "keys" / host).stat().st_mode) == 0o700

    again = tsh(home, "status")
    assert status_rows(again.stdout)["Logged in as"] == carol
    doc = json.loads(tsh(home, "status", "--format=json").stdout)
    assert doc["active"]["username"] == carol
    assert doc["active"]["traits"]["db_users"] == ["alice", "bob"]
    assert doc["profiles"] == []

    version = tsh(home, "version").stdout.splitlines()
    assert version[1].startswith("Proxy version: ")

    out = tsh(home, "logout").stdout
    assert out == "Logged out all users from all proxies.\n"
    assert not (home / "keys" / host).exists()
    assert not (home / "current-profile").exists()
    assert tsh(home, "status").stdout == "Not logged in.\n"
    assert tsh(home, "logout").stdout == "You are not logged in.\n"


def test_wrong_password_is_refused(cluster: Cluster, carol: str, home: Path) -> None:
    proc = login(cluster, home, carol, password="not the password", check=False)
    assert proc.returncode == 6, proc.stderr
    assert "invalid username, password or second factor" in proc.stderr
    assert not (home / "current-profile").exists()


def test_global_flags_after_the_subcommand_and_ttl(
    cluster: Cluster, carol: str, home: Path
) -> None:
    proc = login(cluster, home, carol, "--ttl=90")  # --proxy comes after the subcommand's flags
    assert re.search(r"\[valid for 1h(29|30)m0s\]", proc.stdout), proc.stdout


def test_identity_file_mode(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    ident = sign_alice(cluster, tmp_path / "id")
    out = tsh(home, "-i", str(ident), "status", f"--proxy={cluster.public_addr}").stdout
    assert status_rows(out)["Logged in as"] == "alice"
    assert not home.exists()  # nothing written to the real profile directory


def test_db_commands_need_a_login(home: Path) -> None:
    proc = tsh(home, "db", "ls", check=False)
    assert proc.returncode == 6
    assert "not logged in" in proc.stderr and "tsh login" in proc.stderr


# ---------------------------------------------------------------------- databases
@pytest.fixture(scope="module")
def pg_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def db_cluster(tmp_path_factory: pytest.TempPathFactory, pg_port: int) -> Iterator[Cluster]:
    """A cluster whose own process also runs the Database Service with database "pg".

    "pg" points at ``localhost:<pg_port>``, where :func:`postgres` starts a real
    PostgreSQL for the end-to-end tests (the listing and login tests need none).
    """
    c = make_cluster(tmp_path_factory.mktemp("db-cluster"))
    doc = c.read_config()
    doc["db_service"] = {
        "enabled": True,
        "databases": [
            {
                "name": "pg",
                "description": "Example PostgreSQL",
                "protocol": "postgres",
                "uri": f"localhost:{pg_port}",
                "static_labels": {"env": "dev"},
            }
        ],
    }
    c.write_config(doc)
    c.start()
    try:
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


def test_db_ls(db_cluster: Cluster, home: Path, tmp_path: Path) -> None:
    saved_profile(db_cluster, home, tmp_path)
    out = tsh(home, "db", "ls").stdout.splitlines()
    assert re.split(r"\s+", out[0]) == [
        "Name",
        "Description",
        "Allowed",
        "Users",
        "Labels",
        "Connect",
    ]
    assert re.fullmatch(r"pg\s+Example PostgreSQL\s+\[\*\]\s+\S*env=dev\S*", out[2]), out
    assert tsh(home, "db", "ls", "env=prod").stdout.count("\n") == 2  # header only
    docs = json.loads(tsh(home, "db", "ls", "--format=json").stdout)
    assert [d["name"] for d in docs] == ["pg"] and docs[0]["protocol"] == "postgres"
    tsh(home, "db", "login", "--db-user=alice", "--db-name=example", "pg")
    active = tsh(home, "db", "ls", "env=dev").stdout.splitlines()[2]
    assert active.startswith("> pg (user: alice, db: example)")
    assert active.endswith("tsh db connect pg")


def test_db_login_env_config_logout(db_cluster: Cluster, home: Path, tmp_path: Path) -> None:
    saved_profile(db_cluster, home, tmp_path)
    missing = tsh(home, "db", "login", "--db-user=alice", "--db-name=x", "nope", check=False)
    assert missing.returncode == 3 and 'database "nope" not found' in missing.stderr
    no_user = tsh(home, "db", "login", "pg", check=False)
    assert no_user.returncode == 2 and "--db-user" in no_user.stderr
    proc = tsh(home, "db", "login", "--db-user=alice", "--db-name=example", "pg")
    assert 'Connection information for database "pg" has been saved.' in proc.stdout
    assert "  tsh db connect pg\n" in proc.stdout
    cert = home / "keys/localhost/alice-db" / CLUSTER_NAME / "pg.crt"
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600
    svc = (tmp_path / "pg_service.conf").read_text()
    assert f"[{CLUSTER_NAME}-pg]\n" in svc and "sslmode=verify-full" in svc
    assert "user=alice" in svc and "dbname=example" in svc

    assert status_rows(tsh(home, "status").stdout)["Databases"] == "pg"
    env = tsh(home, "db", "env").stdout
    assert "export PGUSER=alice\n" in env and "export PGDATABASE=example\n" in env
    assert f"export PGSSLCERT={cert}\n" in env
    config = tsh(home, "db", "config", "pg").stdout
    assert re.search(r"^User:\s+alice$", config, re.M)
    assert tsh(home, "db", "config", "--format=cmd", "pg").stdout == (
        f"psql service={CLUSTER_NAME}-pg\n"
    )

    assert tsh(home, "db", "logout", "pg").stdout == 'Logged out of database "pg".\n'
    assert not cert.exists()
    assert f"[{CLUSTER_NAME}-pg]" not in (tmp_path / "pg_service.conf").read_text()


# ---------------------------------------------------------------------- end to end (PostgreSQL)
def _pg_bin(name: str) -> str | None:
    import shutil

    return shutil.which(name) or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")), None
    )


@pytest.fixture(scope="module")
def postgres(db_cluster: Cluster, pg_port: int) -> Iterator[Path]:
    """A real PostgreSQL on ``pg_port`` trusting the cluster's db_client CA (``hostssl … cert``)."""
    import shutil
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl or not shutil.which("psql"):
        pytest.skip("needs the PostgreSQL server and psql binaries")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="jg-pg-"))
    root.chmod(0o755)
    db_cluster.tctl(
        "auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={root}/server"
    )
    data, sock = root / "data", root / "sock"
    data.mkdir(mode=0o700)
    sock.mkdir()
    if as_user:
        shutil.chown(root, "postgres")
        for p in [data, sock, *root.glob("server.*")]:
            shutil.chown(p, "postgres")

    def pg(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=60)

    pg(initdb, "-D", str(data), "-U", "postgres", "--auth=trust")
    with (data / "postgresql.conf").open("a") as fh:
        fh.write(
            f"port = {pg_port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sock}'\nssl = on\n"
            f"ssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n"
            f"ssl_ca_file = '{root}/server.cas'\n"
        )
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 cert\n")
    pg(pg_ctl, "-D", str(data), "-l", str(data / "log"), "-w", "start")
    try:
        for sql in ("create role alice login", "create database example owner alice"):
            pg("psql", "-h", str(sock), "-p", str(pg_port), "-U", "postgres", "-c", sql)
        yield root
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_db_connect_runs_psql_through_a_local_proxy(
    db_cluster: Cluster, postgres: Path, home: Path, tmp_path: Path
) -> None:
    saved_profile(db_cluster, home, tmp_path)
    proc = tsh(
        home,
        "db",
        "connect",
        "--db-user=alice",
        "--db-name=example",
        "pg",
        input="select current_user || '@' || current_database() as who;\n",
        timeout=60,
    )
    assert "alice@example" in proc.stdout, proc.stderr
    # psql's exit code comes back: a database the role may not use fails at start-up
    denied = tsh(home, "db", "connect", "--db-name=nope", "pg", input="", check=False)
    assert denied.returncode == 2, denied.stderr


def test_proxy_db_tunnel_mode(
    db_cluster: Cluster, postgres: Path, home: Path, tmp_path: Path
) -> None:
    saved_profile(db_cluster, home, tmp_path)
    port = free_port()
    proc, out = start_proxy(
        home, "--tunnel", "--db-user=alice", "--db-name=example", f"--port={port}", "pg"
    )
    try:
        assert out.startswith(
            f'Started authenticated tunnel for the PostgreSQL database "pg" in cluster '
            f'"{CLUSTER_NAME}" on 127.0.0.1:{port}.\n'
        )
        assert "port randomization" not in out
        assert f"  $ psql postgres://alice@localhost:{port}/example\n" in out
        (status,) = (home / "proxies").glob(f"*-{port}.json")
        assert json.loads(status.read_text())["mode"] == "tunnel"
        psql = subprocess.run(
            [
                "psql",
                f"postgres://alice@127.0.0.1:{port}/example?sslmode=disable",
                "-Atc",
                "select 42",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert psql.stdout.strip() == "42", psql.stderr
    finally:
        stop_proxy(proc)
    assert not status.exists()


def test_proxy_db_tls_mode(db_cluster: Cluster, postgres: Path, home: Path, tmp_path: Path) -> None:
    store = saved_profile(db_cluster, home, tmp_path)
    prof = store.require_current()
    proc, out = start_proxy(home, "--db-user=alice", "--db-name=example", "pg")
    try:
        m = re.match(r"Started DB proxy on 127\.0\.0\.1:(\d+)\n", out)
        assert m, out
        assert "To avoid port randomization" in out
        assert f"  ca_file={prof.ca_path}\n" in out
        assert f"  cert_file={prof.db_cert_path('pg')}\n" in out
        assert f"  key_file={prof.key_path}\n" in out
        assert 'Your database user is "alice". The target database name is "example".' in out
        conninfo = (
            f"host=localhost hostaddr=127.0.0.1 port={m.group(1)} user=alice dbname=example "
            f"sslmode=verify-full sslrootcert={prof.ca_path} "
            f"sslcert={prof.db_cert_path('pg')} sslkey={prof.key_path}"
        )
        psql = subprocess.run(
            ["psql", conninfo, "-Atc", "select 7"], capture_output=True, text=True, timeout=60
        )
        assert psql.stdout.strip() == "7", psql.stderr
    finally:
        stop_proxy(proc)


def test_ctrl_c_cancels_the_query_not_tsh(
    db_cluster: Cluster, postgres: Path, home: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches the whole foreground process group: psql cancels, tsh keeps its proxy."""
    import signal
    import time

    saved_profile(db_cluster, home, tmp_path)
    script = tmp_path / "script.sql"
    script.write_text("select pg_sleep(30);\n")
    stdin = script.open()
    proc = subprocess.Popen(
        [TSH, "db", "connect", "--db-user=alice", "--db-name=example", "pg"],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tsh_env(home),
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    stdin.close()
    time.sleep(3)  # logged in, proxy up, query running
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=25)
    assert time.monotonic() - start < 20
    # the CancelRequest went through the local proxy and the proxy to PostgreSQL
    assert "Cancel request sent" in err and "canceling statement due to user request" in err, err
    # psql stops a script on Ctrl-C with its EXIT_USER (3); tsh survived and passed it on
    assert proc.returncode == 3, (out, err)
