"""Seed guides 000, 001 and 002, "Machine ID with Database Access", replayed against Jumpgate.

The guides' files appear here as they are printed (role.yaml, /etc/tbot.yaml, the
systemd units); only host names, ports and paths are substituted:

* the proxy (``example.teleport.sh:443``, ``proxy.example.com:3080``) is the test
  cluster's ``localhost:<free port>``; the Database Service ``example-server`` runs
  in the cluster's process in front of a real PostgreSQL (``hostssl … cert`` only)
  with the role ``alice`` and the databases ``example`` and ``example-db``;
* ``/etc``, ``/opt/machine-id`` and ``/var/lib/teleport/bot`` live in a private
  directory; the Linux users ``teleport`` and ``app`` get unique names;
* the local proxy's port ``12345`` and the client's ``port=1234`` are one free port.

Units run their ``ExecStart`` as their ``User=`` (see ``machine_id.Unit``); the
application connects with the guides' libpq options through ``psql`` and psycopg,
as the ``app`` user. If a command of a guide stops working as shown, the test fails:
do not change the command here to make it pass, fix Jumpgate.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.machine_id import (
    TBOT,
    Unit,
    bot_status,
    bots_add_token,
    linux_users,
    port_open,
    psql_as,
    public_root,
    require_root_tools,
    run_as,
    wait_for,
)
from tests.integration.conftest import TCTL, Cluster, make_cluster, parse_status, run
from tests.pg_fixture import PgServer, start_postgres

pytestmark = pytest.mark.postgres

SEED_000_ROLE = """\
kind: role
version: v5
metadata:
  name: machine-id-db
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
"""

# seeds 001 and 002 print the same role
SEED_001_ROLE = """\
kind: role
version: v6
metadata:
  name: example-role
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example-db]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
"""

SEED_000_TBOT_YAML = """\
version: v2
auth_server: "{proxy}"
onboarding:
  join_method: "token"
  token: "{token}"
  ca_pins:
  - "{pin}"
storage:
  type: directory
  path: {root}/var/lib/teleport/bot
outputs:
  - type: database
    destination:
      type: directory
      path: {root}/opt/machine-id
    # Specify the details of the database you wish to connect to.
    service: example-server
    username: alice
    database: example
    # Specify a format to use for the output credentials. For most databases,
    # this configuration field can be omitted. See the table below for the
    # databases that require a value to be specified here.
    # format: mongo
"""

SEED_000_UNIT = """\
[Unit]
Description=Teleport Machine ID Service
After=network.target

[Service]
Type=simple
User={teleport}
Group={teleport}
Restart=on-failure
Environment="TELEPORT_ANONYMOUS_TELEMETRY=1"
ExecStart=/usr/local/bin/tbot start -c {root}/etc/tbot.yaml
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/machine-id.pid
LimitNOFILE=524288

[Install]
WantedBy=multi-user.target
"""

SEED_000_PROXY_UNIT = """\
[Unit]
Description=Teleport Machine ID Proxy Service
After=network.target
Requires=machine-id.service

[Service]
Type=simple
User={teleport}
Group={teleport}
Restart=on-failure
ExecStart=/usr/local/bin/tbot -c {root}/etc/tbot.yaml proxy --proxy={proxy} \
--destination-dir={root}/opt/machine-id db --port={port} example-server{tunnel}
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/machine-id-proxy.pid
LimitNOFILE=8192

[Install]
WantedBy=multi-user.target
"""

# the deployment guide's tbot.yaml that seeds 001/002 start from (identity output only)
DEPLOYED_TBOT_YAML = """\
version: v2
proxy_server: {proxy}
onboarding:
  join_method: token
  token: {token}
  ca_pins:
  - "{pin}"
storage:
  type: directory
  path: {root}/var/lib/teleport/bot
"""

SEED_001_SERVICES = """\
services:
- type: database
  destination:
    type: directory
    path: {root}/opt/machine-id
  # Specify the details of the database you wish to connect to.
  service: example-server
  database: example-db
  username: alice
  # Specify a format to use for the output credentials. For most databases,
  # this configuration field can be omitted.
  # format: mongo
"""

SEED_002_OUTPUTS = """\
outputs:
- type: database
  destination:
    type: directory
    path: {root}/opt/machine-id
  # Specify the details of the database you wish to connect to.
  service: example-server
  database: example
  username: alice
  # Specify a format to use for the output credentials. For most databases,
  # this configuration field can be omitted.
  # format: mongo
"""

SEED_001_PROXY_UNIT = """\
[Unit]
Description=Teleport Machine & Workload Identity Proxy Service
After=network.target
# If you have followed a previous guide and configured tbot itself as a systemd
# service, uncomment the following line to create a dependency between the two
# services.
# Requires=tbot.service

[Service]
Type=simple
# Ensure that the teleport user/group exists and has read access to the
# destination directory.
User={teleport}
Group={teleport}
Restart=always
RestartSec=5
# Adjust `12345` to any port of your choosing that is free on the local loopback
# interface. Adjust `example-server` to the name of the Database Service in
# teleport.
ExecStart=/usr/local/bin/tbot -c {root}/etc/tbot.yaml proxy {proxy_flag}\
--destination-dir={root}/opt/machine-id db --port={port} example-server{tunnel}
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/tbot-db-proxy.pid
LimitNOFILE=8192

[Install]
WantedBy=multi-user.target
"""


def conninfo(port: int, dbname: str, dest: Path) -> str:
    """The Go sample's options: verify-full against the host CA, the bot's key and cert."""
    return (
        f"host=localhost port={port} dbname={dbname} user=alice sslmode=verify-full "
        f"sslrootcert={dest}/teleport-host-ca.crt sslkey={dest}/key sslcert={dest}/tlscert"
    )


def libpq_conninfo(port: int, dbname: str, dest: Path, scratch: Path) -> str:
    """:func:`conninfo` for libpq clients (psql, psycopg), which refuse a key file whose mode
    has group bits unless root owns it — and a POSIX ACL shows its mask there. The
    Go sample's pgx does not check; libpq users copy the key (see the guide's note).
    The key and the certificate are copied as a matching pair (a renewal may land
    between two reads)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from jumpgate.core.tlsca import load_private_key

    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for _ in range(50):
        key_pem, cert_pem = (dest / "key").read_bytes(), (dest / "tlscert").read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        if load_private_key(key_pem).public_key().public_bytes(*spki) == (
            cert.public_key().public_bytes(*spki)
        ):
            break
    else:
        pytest.fail(f"{dest}: key and tlscert never matched", pytrace=False)
    scratch.mkdir(exist_ok=True)
    key, crt = scratch / "key", scratch / "tlscert"
    key.write_bytes(key_pem)
    key.chmod(0o600)
    crt.write_bytes(cert_pem)
    return (
        conninfo(port, dbname, dest)
        .replace(f"sslkey={dest}/key", f"sslkey={key}")
        .replace(f"sslcert={dest}/tlscert", f"sslcert={crt}")
    )


def tls_probe_as(user: str, port: int, dest: Path) -> str:
    """What the application can do with the files as ``user``: a verify-full TLS handshake
    with its client certificate, through PostgreSQL's SSLRequest (``openssl s_client``)."""
    proc = run_as(
        user,
        [
            "openssl",
            "s_client",
            "-connect",
            f"localhost:{port}",
            "-starttls",
            "postgres",
            "-CAfile",
            f"{dest}/teleport-host-ca.crt",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-cert",
            f"{dest}/tlscert",
            "-key",
            f"{dest}/key",
            "-brief",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def tunnel_conninfo(port: int, dbname: str) -> str:
    """ "The next four options should be omitted" in authenticated tunnel mode."""
    return f"host=localhost port={port} dbname={dbname} user=alice"


# --------------------------------------------------------------------------- fixtures
class World:
    """The cluster (with example-server in front of PostgreSQL) and the two Linux users."""

    def __init__(self, cluster: Cluster, pg: PgServer, users: dict[str, pwd.struct_passwd]):
        self.cluster = cluster
        self.pg = pg
        self.teleport = users["teleport"].pw_name
        self.app = users["app"].pw_name
        self.proxy = cluster.public_addr
        self.pin = parse_status(cluster.tctl("status").stdout)["CA pin"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root_tools()
    root = tmp_path_factory.mktemp("mid-cluster")
    pg_port = free_port()
    cluster = make_cluster(root / "cluster")
    doc = cluster.read_config()
    doc["db_service"] = {
        "enabled": True,
        "databases": [
            {
                "name": "example-server",
                "description": "Example PostgreSQL",
                "protocol": "postgres",
                "uri": f"localhost:{pg_port}",
                "static_labels": {"env": "dev"},
            }
        ],
    }
    cluster.write_config(doc)
    cluster.start()
    try:
        certs = root / "pgcerts"
        certs.mkdir()
        cluster.tctl("auth", "sign", "--format=db", "--host=localhost", f"--out={certs}/server")
        pg = start_postgres(
            root,
            server_cert_pem=(certs / "server.crt").read_bytes(),
            server_key_pem=(certs / "server.key").read_bytes(),
            ca_pem=(certs / "server.cas").read_bytes(),
            port=pg_port,
        )
        try:
            with linux_users("teleport", "app") as users:
                yield World(cluster, pg, users)
        finally:
            pg.stop()
    except BaseException:
        cluster.kill()
        raise
    cluster.stop(timeout=60)


@pytest.fixture
def host(world: World) -> Iterator[Path]:
    """The guide's machine: /etc, /opt/machine-id, /var/lib/teleport/bot under one root."""
    with public_root() as root:
        (root / "etc").mkdir()
        yield root


def prepare_bot_dirs(root: Path, teleport: str) -> None:
    """The guide's ``sudo mkdir -p``, ``chown`` and ``chmod +x`` on /var/lib/teleport/bot."""
    bot = root / "var/lib/teleport/bot"
    bot.mkdir(parents=True)
    shutil.chown(bot, teleport, teleport)
    for d in (root / "var/lib/teleport", bot):
        d.chmod(d.stat().st_mode | 0o111)


def psycopg_as(user: str, info: str, sql: str) -> str:
    """The application as a Python program (psycopg), run as ``user``."""
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    print(c.execute(sys.argv[2]).fetchone()[0])\n"
    )
    proc = run_as(user, [sys.executable, "-c", code, info, sql], python=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# --------------------------------------------------------------------------- seed 000
def test_seed_000_machine_id_with_database_access(world: World, host: Path) -> None:
    c, root = world.cluster, host
    dest = root / "opt/machine-id"
    # Prerequisites: the tools answer
    assert "Teleport 16" in run([TCTL, "version"]).stdout
    assert "Teleport 16" in run([str(Path(sys.executable).parent / "tsh"), "version"]).stdout

    # Step 1/3: the role, then the bot
    (root / "role.yaml").write_text(SEED_000_ROLE)
    c.tctl("create", "-f", str(root / "role.yaml"))
    token = bots_add_token(c.tctl("bots", "add", "app", "--roles=machine-id-db").stdout)

    # Step 2/3: /etc/tbot.yaml, tbot init, the bot directory, the units
    tbot_yaml = root / "etc/tbot.yaml"
    tbot_yaml.write_text(
        SEED_000_TBOT_YAML.format(proxy=world.proxy, token=token, pin=world.pin, root=root)
    )
    init = run(
        [
            TBOT,
            "init",
            "-c",
            tbot_yaml,
            f"--init-dir={dest}",
            f"--bot-user={world.teleport}",
            f"--owner={world.teleport}:{world.teleport}",
            f"--reader-user={world.app}",
        ]
    )
    assert "with ACLs" in init.stderr, init.stderr
    prepare_bot_dirs(root, world.teleport)
    port = free_port()
    fmt = {"teleport": world.teleport, "root": root, "proxy": world.proxy, "port": port}
    machine_id = Unit.write(root / "machine-id.service", SEED_000_UNIT.format(**fmt))
    proxy_unit = Unit.write(
        root / "machine-id-proxy.service", SEED_000_PROXY_UNIT.format(**fmt, tunnel="")
    )
    machine_id.start()
    try:
        wait_for(
            "tbot writes the database output",
            lambda: b"CERTIFICATE" in (dest / "tlscert").read_bytes() or not machine_id.alive(),
        )
        assert machine_id.alive(), machine_id.context()
        owner = pwd.getpwuid((dest / "tlscert").stat().st_uid).pw_name
        assert owner == world.teleport  # written by the teleport user, read by app via ACLs
        proxy_unit.start()
        try:
            wait_for("the local proxy listens", lambda: port_open(port) or not proxy_unit.alive())
            assert proxy_unit.alive(), proxy_unit.context()
            # Step 3/3: the application, as the app user, with the Go sample's files
            assert "Verification: OK" in tls_probe_as(world.app, port, dest)
            info = libpq_conninfo(port, "example", dest, root / "libpq")
            assert psql_as("root", info, "select current_user || '@' || current_database()") == (
                "alice@example"
            )
            assert psycopg_as("root", info, "select 6 * 7") == "42"
            # nobody but the bot user and the reader can use the bot's key
            assert (dest / "key").stat().st_mode & 0o007 == 0
            # systemctl reload of the tbot unit renews at once; the proxy keeps serving
            before = bot_status(c, "app")["generation"]
            machine_id.reload()
            wait_for(
                "SIGHUP renews the bot identity",
                lambda: bot_status(c, "app")["generation"] != before,
            )
            assert psql_as(
                "root", libpq_conninfo(port, "example", dest, root / "libpq"), "select 1"
            )
        finally:
            proxy_unit.stop()

        # the guide's TLS note: --tunnel attaches the credentials itself
        tunnel_unit = Unit.write(
            root / "machine-id-proxy.service", SEED_000_PROXY_UNIT.format(**fmt, tunnel=" --tunnel")
        )
        tunnel_unit.start()
        try:
            wait_for("the tunnel listens", lambda: port_open(port) or not tunnel_unit.alive())
            info = tunnel_conninfo(port, "example")
            assert psql_as(world.app, info, "select current_database()") == "example"
            assert psql_as(world.app, info + " sslmode=disable", "select 2") == "2"
            assert psycopg_as(world.app, info, "select current_user") == "alice"
            # the role does not allow example-db: a PostgreSQL error saying so
            refused = run_as(world.app, ["psql", tunnel_conninfo(port, "example-db"), "-c", ""])
            assert refused.returncode != 0 and "example-db" in refused.stderr, refused.stderr
        finally:
            tunnel_unit.stop()
    finally:
        machine_id.stop()
    assert bot_status(c, "app").get("locked") in (False, None)


# --------------------------------------------------------------------------- seeds 001, 002
def _deployed_bot(world: World, root: Path, name: str) -> Path:
    """What the deployment guide leaves behind: bot ``name`` (no roles yet) joined once."""
    c = world.cluster
    out = c.tctl("bots", "add", name)
    assert "No roles specified" in out.stderr + out.stdout
    token = bots_add_token(out.stdout)
    prepare_bot_dirs(root, world.teleport)
    cfg = root / "etc/tbot.yaml"
    cfg.write_text(
        DEPLOYED_TBOT_YAML.format(proxy=world.proxy, token=token, pin=world.pin, root=root)
    )
    cfg.chmod(0o644)
    joined = run_as(world.teleport, [TBOT, "start", "-c", str(cfg), "--oneshot"], python=True)
    assert joined.returncode == 0, joined.stderr
    return cfg


def _init_destination(world: World, cfg: Path, dest: Path) -> None:
    run(
        [
            TBOT,
            "init",
            "-c",
            cfg,
            f"--init-dir={dest}",
            f"--bot-user={world.teleport}",
            f"--owner={world.teleport}:{world.teleport}",
            f"--reader-user={world.app}",
        ]
    )


@pytest.mark.parametrize("seed", ["001", "002"])
def test_seeds_001_002_database_output_and_local_proxy(world: World, host: Path, seed: str) -> None:
    c, root = world.cluster, host
    dest = root / "opt/machine-id"
    bot = f"example{seed}"  # the guides' bot "example", one per replay
    cfg = _deployed_bot(world, root, bot)
    role = SEED_001_ROLE.replace("example-role", f"example-role{seed}")

    # Step 1/4: RBAC — the role, then tctl bots update --add-roles
    (root / "role.yaml").write_text(role)
    c.tctl("create", "-f", "./role.yaml", cwd=root)
    out = c.tctl("bots", "update", bot, "--add-roles", f"example-role{seed}")
    assert f"example-role{seed}" in out.stdout + out.stderr
    roles = json.loads(c.tctl("get", f"bot/{bot}", "--format=json").stdout)[0]["spec"]["roles"]
    assert f"example-role{seed}" in roles

    # Step 2/4: the database output — 001 writes `services:`, 002 writes `outputs:`
    block = SEED_001_SERVICES if seed == "001" else SEED_002_OUTPUTS
    cfg.write_text(cfg.read_text() + block.format(root=root))
    _init_destination(world, cfg, dest)
    oneshot = run_as(world.teleport, [TBOT, "start", "-c", str(cfg), "--oneshot"], python=True)
    assert oneshot.returncode == 0, oneshot.stderr
    assert (dest / "tlscert").exists() and (dest / "teleport-database-ca.crt").exists()

    # Step 3/4: the local proxy unit (002's ExecStart has no --proxy: the config's is used)
    port = free_port()
    fmt = {
        "teleport": world.teleport,
        "root": root,
        "port": port,
        "proxy_flag": f"--proxy={world.proxy} " if seed == "001" else "",
    }
    unit = Unit.write(root / "tbot-db-proxy.service", SEED_001_PROXY_UNIT.format(**fmt, tunnel=""))
    unit.start()
    dbname = "example-db" if seed == "001" else "example"
    try:
        wait_for("the local proxy listens", lambda: port_open(port) or not unit.alive())
        assert unit.alive(), unit.context()
        # Step 4/4: the client with the sample's options (see libpq_conninfo)
        assert "Verification: OK" in tls_probe_as(world.app, port, dest)
        info = libpq_conninfo(port, dbname, dest, root / "libpq")
        if seed == "002":
            # seed 002 prints db_names [example-db] but its output names "example": the
            # refusal says exactly which rule failed ...
            refused = run_as("root", ["psql", info, "-Atc", "select 1"])
            assert refused.returncode != 0
            assert '"example"' in refused.stderr or "'example'" in refused.stderr, refused.stderr
            assert "database name" in refused.stderr, refused.stderr
            # ... and, following "replace example-db with the name of the database", it works
            (root / "role.yaml").write_text(role.replace("[example-db]", "[example]"))
            c.tctl("create", "-f", "./role.yaml", "--force", cwd=root)
        assert psql_as("root", info, "select current_database()") == dbname
        assert psycopg_as("root", info, "select current_user") == "alice"
        # a renewal (tbot started again in one-shot mode) does not disturb the proxy
        again = run_as(world.teleport, [TBOT, "start", "-c", str(cfg), "--oneshot"], python=True)
        assert again.returncode == 0, again.stderr
        info = libpq_conninfo(port, dbname, dest, root / "libpq")  # the renewed key
        assert psql_as("root", info, "select 3") == "3"
    finally:
        unit.stop()

    # Authenticated tunnel: --tunnel added to ExecStart, no TLS options in the client
    unit = Unit.write(
        root / "tbot-db-proxy.service", SEED_001_PROXY_UNIT.format(**fmt, tunnel=" --tunnel")
    )
    unit.start()
    try:
        wait_for("the tunnel listens", lambda: port_open(port) or not unit.alive())
        assert psql_as(world.app, tunnel_conninfo(port, dbname), "select current_user") == "alice"
        assert psycopg_as(world.app, tunnel_conninfo(port, dbname), "select 5") == "5"
    finally:
        unit.stop()
    status = bot_status(c, bot)
    assert not status.get("locked") and int(str(status["generation"])) >= 3, status


def test_unit_files_match_what_tbot_install_systemd_writes(world: World, host: Path) -> None:
    """The guides' hand-written unit and ``tbot install systemd`` agree on what matters."""
    cfg = host / "etc/tbot.yaml"
    cfg.write_text("version: v2\nproxy_server: localhost:3080\n")
    units = host / "units"
    units.mkdir()
    run(
        [
            TBOT,
            "install",
            "systemd",
            "-c",
            cfg,
            f"--systemd-directory={units}",
            "--name=machine-id",
            f"--user={world.teleport}",
            f"--group={world.teleport}",
        ]
    )
    text = (units / "machine-id.service").read_text()
    for line in (
        "Type=simple",
        f"User={world.teleport}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=524288",
    ):
        assert f"\n{line}\n" in text, text
    assert os.stat(units / "machine-id.service").st_mode & 0o777 == 0o644


SHORT_TTL_ROLE = SEED_000_ROLE.replace("machine-id-db", "short-ttl-db")


def test_short_ttls_long_session_and_new_connections(world: World, tmp_path: Path) -> None:
    """certificate_ttl 30s, renewal_interval 10s: a session outlives the certificate it
    started with, and new connections keep working with the renewed ones."""
    import psycopg
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    c = world.cluster
    c.tctl("create", "-f", "/dev/stdin", input=SHORT_TTL_ROLE)
    token = bots_add_token(c.tctl("bots", "add", "short", "--roles=short-ttl-db").stdout)
    dest = tmp_path / "out"
    cfg = tmp_path / "tbot.yaml"
    cfg.write_text(
        SEED_000_TBOT_YAML.format(
            proxy=world.proxy, token=token, pin=world.pin, root=tmp_path
        ).replace(f"{tmp_path}/opt/machine-id", str(dest))
        + "certificate_ttl: 30s\nrenewal_interval: 10s\n"
    )
    port = free_port()
    bot = Unit.write(
        tmp_path / "tbot.service",
        SEED_000_UNIT.format(teleport="root", root=tmp_path).replace(
            f"{tmp_path}/etc/tbot.yaml", str(cfg)
        ),
    )
    proxy = Unit.write(
        tmp_path / "proxy.service",
        SEED_000_PROXY_UNIT.format(
            teleport="root", root=tmp_path, proxy=world.proxy, port=port, tunnel=""
        )
        .replace(f"{tmp_path}/etc/tbot.yaml", str(cfg))
        .replace(f"{tmp_path}/opt/machine-id", str(dest)),
    )
    bot.start()
    try:
        wait_for(
            "the first output",
            lambda: (dest / "tlscert").exists() and b"CERT" in (dest / "tlscert").read_bytes(),
        )
        proxy.start()
        try:
            wait_for("the local proxy listens", lambda: port_open(port) or not proxy.alive())
            first = x509.load_pem_x509_certificate((dest / "tlscert").read_bytes())
            expiry = first.not_valid_after_utc.timestamp()
            session = psycopg.connect(libpq_conninfo(port, "example", dest, tmp_path / "k0"))
            session.autocommit = True
            pid = session.execute("select pg_backend_pid()").fetchone()
            seen: set[bytes] = {first.fingerprint(hashes.SHA256())}
            n = 0

            def past_expiry() -> bool:
                nonlocal n
                # the session keeps working; each new connection uses the latest files
                assert session.execute("select pg_backend_pid()").fetchone() == pid
                n += 1
                info = libpq_conninfo(port, "example", dest, tmp_path / f"k{n}")
                with psycopg.connect(info) as fresh:
                    assert fresh.execute("select 1").fetchone() == (1,)
                cert = x509.load_pem_x509_certificate((dest / "tlscert").read_bytes())
                seen.add(cert.fingerprint(hashes.SHA256()))
                return time.time() > expiry + 2

            wait_for("the first certificate to expire", past_expiry, timeout=90)
            assert session.execute("select 'still here'").fetchone() == ("still here",)
            session.close()
            assert len(seen) >= 3, "tbot renewed the output every 10s"
            assert bot_status(c, "short")["generation"] >= 3
        finally:
            proxy.stop()
    finally:
        bot.stop()
