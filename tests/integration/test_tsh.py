"""``tsh`` against a real ``teleport start``: login (password from stdin), status, db, logout, version.

Each test runs the installed ``tsh`` console script with its own ``TELEPORT_HOME``
and ``PGSERVICEFILE``, as a user would.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpgate.core.auth.identityfile import read_identity_file
from jumpgate.core.client.profile import ProfileStore
from tests.conftest import free_port
from tests.integration.conftest import (
    CLUSTER_NAME,
    Cluster,
    assert_clean_stderr,
    cli_env,
    running_cluster,
)

TSH = str(Path(sys.executable).parent / "tsh")
PASSWORD = "a long enough passphrase"


def tsh(
    home: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``tsh`` with ``TELEPORT_HOME=home``; with ``check`` require exit 0."""
    env = cli_env()
    env["TELEPORT_HOME"] = str(home)
    env["PGSERVICEFILE"] = str(home.parent / "pg_service.conf")
    proc = subprocess.run(
        [TSH, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert_clean_stderr(proc)
    if check and proc.returncode != 0:
        pytest.fail(
            f"tsh {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


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
    out = cluster.tctl(
        "users", "add", user, "--roles=access", "--db-users=alice,bob", "--db-names=example"
    ).stdout
    (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
    ctx = ssl.create_default_context(cadata=host_ca)
    conn = http.client.HTTPSConnection("localhost", cluster.web_port, context=ctx, timeout=30)
    try:
        conn.request(
            "POST",
            urllib.parse.urlsplit(url).path,
            body=urllib.parse.urlencode({"password": PASSWORD, "password_confirm": PASSWORD}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if resp.status == 404 and "invite" not in body.lower():
        pytest.skip("needs the invite endpoint (POST /web/invite/<token>)")
    assert resp.status == 200, body


@pytest.fixture(scope="module")
def carol(cluster: Cluster, host_ca: str) -> str:
    """A local user with a password, ready for ``tsh login``."""
    complete_invite(cluster, host_ca, "carol")
    return "carol"


def saved_profile(cluster: Cluster, home: Path, tmp_path: Path) -> ProfileStore:
    """A profile built from ``tctl auth sign --user=alice`` (no password login needed)."""
    ident_path = tmp_path / "alice.id"
    if "alice" not in cluster.tctl("users", "ls").stdout:
        cluster.tctl("users", "add", "alice", "--roles=access", "--db-users=*", "--db-names=*")
    cluster.tctl("auth", "sign", "--user=alice", f"--out={ident_path}", "--overwrite")
    ident = read_identity_file(ident_path)
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
    env = cli_env()
    env["TELEPORT_HOME"] = str(home)
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
        env=env,
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
    proc = tsh(
        home, "login", f"--proxy={cluster.public_addr}", f"--user={carol}", input=PASSWORD + "\n"
    )
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
    proc = tsh(
        home,
        "login",
        f"--proxy={cluster.public_addr}",
        f"--user={carol}",
        input="not the password\n",
        check=False,
    )
    assert proc.returncode == 6, proc.stderr
    assert "invalid username, password or second factor" in proc.stderr
    assert not (home / "current-profile").exists()


def test_global_flags_after_the_subcommand_and_ttl(
    cluster: Cluster, carol: str, home: Path
) -> None:
    proc = tsh(
        home,
        "login",
        f"--user={carol}",
        "--ttl=90",
        f"--proxy={cluster.public_addr}",
        input=PASSWORD + "\n",
    )
    assert re.search(r"\[valid for 1h(29|30)m0s\]", proc.stdout), proc.stdout


def test_identity_file_mode(cluster: Cluster, home: Path, tmp_path: Path) -> None:
    ident = tmp_path / "id"
    if "alice" not in cluster.tctl("users", "ls").stdout:
        cluster.tctl("users", "add", "alice", "--roles=access", "--db-users=*", "--db-names=*")
    cluster.tctl("auth", "sign", "--user=alice", f"--out={ident}")
    out = tsh(home, "-i", str(ident), "status", f"--proxy={cluster.public_addr}").stdout
    assert status_rows(out)["Logged in as"] == "alice"
    assert not home.exists()  # nothing written to the real profile directory


def test_db_commands_need_a_login(home: Path) -> None:
    proc = tsh(home, "db", "ls", check=False)
    assert proc.returncode == 6
    assert "not logged in" in proc.stderr and "tsh login" in proc.stderr


# ---------------------------------------------------------------------- databases
PG_RESOURCE = {
    "kind": "db",
    "version": "v3",
    "metadata": {"name": "pg", "description": "Example PostgreSQL", "labels": {"env": "dev"}},
    "spec": {"protocol": "postgres", "uri": "localhost:5432"},
}


@pytest.fixture(scope="module")
def db_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A second cluster for the database tests (agent joins write to its log)."""
    with running_cluster(tmp_path_factory.mktemp("db-cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def registered_pg(db_cluster: Cluster) -> str:
    """Database "pg" announced the way a Database Service agent does (join, then db.heartbeat).

    No PostgreSQL behind it: enough for db ls / login / env / config / logout.
    """
    cluster = db_cluster
    import asyncio

    from jumpgate.core.auth.client import AuthClient
    from jumpgate.core.errors import JumpgateError

    out = cluster.tctl("tokens", "add", "--type=db", "--format=text").stdout.strip()
    token = out.split()[-1]
    try:
        from jumpgate.core.join import join_cluster

        ident = asyncio.run(
            join_cluster(
                cluster.public_addr,
                token=token,
                ca_pins=[],
                host_id="test-db-agent",
                node_name="test-db-agent",
                role="Db",
            )
        )
        client = AuthClient(cluster.public_addr, ident)
        client.call("db.heartbeat", hostname="test-db-agent", databases=[PG_RESOURCE], ttl=3600)
        client.close()
    except (ImportError, JumpgateError) as exc:
        pytest.skip(f"needs agent join and db.heartbeat: {exc}")
    return "pg"


def test_db_ls(db_cluster: Cluster, registered_pg: str, home: Path, tmp_path: Path) -> None:
    saved_profile(db_cluster, home, tmp_path)
    out = tsh(home, "db", "ls").stdout.splitlines()
    assert re.split(r"\s{1,}", out[0]) == [
        "Name",
        "Description",
        "Allowed",
        "Users",
        "Labels",
        "Connect",
    ]
    assert re.fullmatch(r"pg\s+Example PostgreSQL\s+\[\*\]\s+env=dev", out[2]), out
    assert tsh(home, "db", "ls", "env=prod").stdout.count("\n") == 2  # header only
    docs = json.loads(tsh(home, "db", "ls", "--format=json").stdout)
    assert [d["name"] for d in docs] == ["pg"] and docs[0]["protocol"] == "postgres"
    tsh(home, "db", "login", "--db-user=alice", "--db-name=example", "pg")
    active = tsh(home, "db", "ls", "env=dev").stdout.splitlines()[2]
    assert active.startswith("> pg (user: alice, db: example)")
    assert active.endswith("tsh db connect pg")


def test_db_login_env_config_logout(
    db_cluster: Cluster, registered_pg: str, home: Path, tmp_path: Path
) -> None:
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
