"""tbot against a real cluster: join, outputs, renewal, diagnostics, init with ACLs, proxies.

Every command runs through the installed console scripts, with the seeds' configs
(storage and destinations in temporary directories). The tests run as root: ``tbot
init`` creates real Linux users (useradd) to check ownership and POSIX ACLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from jumpgate.core.tlsca import identity_from_certificate
from tests.conftest import free_port
from tests.e2e.machine_id import linux_users
from tests.integration import test_tsh as _tsh
from tests.integration.conftest import BIN, Cluster, cli_env, parse_status, run, running_cluster

# the database-access fixtures (a cluster running the Database Service for "pg", a real
# PostgreSQL behind it) are shared with the tsh tests
db_cluster = _tsh.db_cluster
pg_port = _tsh.pg_port
postgres = _tsh.postgres

TBOT = str(BIN / "tbot")

DB_ROLE = """\
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

APP_ROLE = """\
kind: role
metadata:
  name: machine-id-app-role
version: v5
spec:
  allow:
    app_labels:
      '*': '*'
"""

BASE_FILES = {
    "identity",
    "key",
    "tlscert",
    "teleport-host-ca.crt",
    "teleport-user-ca.crt",
    "teleport-database-ca.crt",
}


# ---------------------------------------------------------------------- helpers
def tbot(
    *args: str | Path, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tbot``; with ``check`` require exit 0."""
    return run([TBOT, *args], check=check, timeout=timeout)


@pytest.fixture(scope="module")
def roles(cluster: Cluster) -> None:
    cluster.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)
    cluster.tctl("create", "-f", "/dev/stdin", input=APP_ROLE)


@pytest.fixture(scope="module")
def pin(cluster: Cluster) -> str:
    return parse_status(cluster.tctl("status").stdout)["CA pin"]


def add_bot(cluster: Cluster, roles: str = "machine-id-db", name: str = "") -> tuple[str, str]:
    """``tctl bots add NAME --roles=... --format=json``: (name, token)."""
    name = name or f"bot{uuid.uuid4().hex[:8]}"
    out = json.loads(cluster.tctl("bots", "add", name, f"--roles={roles}", "--format=json").stdout)
    assert out["user_name"] == f"bot-{name}"
    return name, str(out["token_id"])


def seed_config(
    path: Path, *, addr: str, token: str, pin: str, storage: Path, outputs: str, extra: str = ""
) -> Path:
    """A config shaped like seed 000 (auth_server naming the proxy, ca_pins, directory storage)."""
    path.write_text(
        f"""version: v2
auth_server: "{addr}"
onboarding:
  join_method: "token"
  token: "{token}"
  ca_pins:
  - "{pin}"
storage:
  type: directory
  path: {storage}
{outputs}{extra}"""
    )
    return path


def db_output(dest: Path, fmt: str = "", service: str = "example-server") -> str:
    return f"""outputs:
  - type: database
    destination:
      type: directory
      path: {dest}
    # Specify the details of the database you wish to connect to.
    service: {service}
    username: alice
    database: example
{f"    format: {fmt}" if fmt else "    # format: mongo"}
"""


def cert_identity(path: Path):  # type: ignore[no-untyped-def]
    return identity_from_certificate(x509.load_pem_x509_certificate(path.read_bytes()))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def bot_generation(cluster: Cluster, name: str) -> int:
    bots = json.loads(cluster.tctl("bots", "ls", "--format=json").stdout)
    (bot,) = [b for b in bots if b["metadata"]["name"] == name]
    return int(bot["status"]["generation"])


# ---------------------------------------------------------------------- join and outputs
def test_oneshot_database_output_and_identity_for_tctl(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    name, token = add_bot(cluster)
    dest, ident_dir, storage = tmp_path / "machine-id", tmp_path / "ident", tmp_path / "bot"
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=storage,
        outputs=db_output(dest)
        + f"  - type: identity\n    destination:\n      type: directory\n      path: {ident_dir}\n",
    )
    proc = tbot("start", "-c", cfg, "--oneshot")
    assert "CLI parameters are overriding configuration" in proc.stderr
    assert f"joined the cluster example.com as bot {name}" in proc.stderr
    assert 'Generated identity for database {"example-server"}' in proc.stderr

    assert {p.name for p in dest.iterdir()} == BASE_FILES
    assert mode(dest) == 0o700 and all(mode(p) == 0o600 for p in dest.iterdir())
    ident = cert_identity(dest / "tlscert")
    assert ident.username == f"bot-{name}" and ident.groups == ("machine-id-db",)
    assert ident.impersonator == f"bot-{name}" and ident.disallow_reissue
    route = ident.route_to_database
    assert route is not None
    assert (route.service_name, route.username, route.database) == (
        "example-server",
        "alice",
        "example",
    )

    # the bot's own identity: saved atomically, private, generation 1
    assert {"identity", "key", "tlscert", "tlscacerts", "generation", "tokenhash"} <= {
        p.name for p in storage.iterdir()
    }
    assert mode(storage) == 0o700 and mode(storage / "key") == 0o600
    assert (storage / "generation").read_text() == "1\n"
    assert token not in (storage / "tokenhash").read_text()
    assert cert_identity(storage / "tlscert").renewable

    # the identity output works with tctl -i (through the proxy's web port)
    status = cluster.tctl(
        "-i", ident_dir / "identity", f"--auth-server={cluster.web_addr}", "status", local=False
    )
    assert parse_status(status.stdout)["CA pin"] == pin
    tsh = run(
        [BIN / "tsh", "-i", ident_dir / "identity", f"--proxy={cluster.public_addr}", "status"]
    )
    assert f"Logged in as:       bot-{name}" in tsh.stdout and "machine-id-db" in tsh.stdout

    # a restart reuses the stored identity: no join, one renewal
    again = tbot("start", "-c", cfg, "--oneshot")
    assert "joined the cluster" not in again.stderr
    assert f"loaded the identity of bot {name}" in again.stderr
    assert (storage / "generation").read_text() == "2\n"
    assert bot_generation(cluster, name) == 2


def test_every_output_format_from_the_services_list(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    _, token = add_bot(cluster, roles="machine-id-db,machine-id-app-role")
    d = {k: tmp_path / k for k in ("tls", "mongo", "cockroach", "app", "app2")}
    services = "services:\n" + "".join(
        f"""- type: database
  destination:
    type: directory
    path: {d[fmt]}
  service: example-server
  database: example
  username: alice
  format: {fmt}
  roles: [machine-id-db]
"""
        for fmt in ("tls", "mongo", "cockroach")
    )
    outputs = f"""outputs:
  - type: application
    destination:
      type: directory
      path: {d["app"]}
    app_name: grafana-example
    specific_tls_naming: true
  - type: application
    destination:
      directory: {d["app2"]}
    app_name: grafana-example
  - type: identity
    destination:
      type: memory
"""
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "bot",
        outputs=outputs + services,
    )
    proc = tbot("start", "-c", cfg, "--oneshot")
    assert 'Generated identity for app {"grafana-example"}' in proc.stderr
    assert {p.name for p in d["tls"].iterdir()} == BASE_FILES | {"tls.crt", "tls.key", "tls.cas"}
    assert (d["tls"] / "tls.cas").read_bytes() == (d["tls"] / "teleport-host-ca.crt").read_bytes()
    assert {p.name for p in d["mongo"].iterdir()} == BASE_FILES | {"mongo.crt", "mongo.cas"}
    mongo = (d["mongo"] / "mongo.crt").read_bytes()
    assert (d["mongo"] / "tlscert").read_bytes() in mongo and (
        d["mongo"] / "key"
    ).read_bytes() in mongo
    assert (d["mongo"] / "mongo.cas").read_bytes() == (
        d["mongo"] / "teleport-database-ca.crt"
    ).read_bytes()
    roach = d["cockroach"] / "cockroach"
    assert {p.name for p in roach.iterdir()} == {"node.crt", "node.key", "ca.crt"}
    assert mode(roach) == 0o700
    assert {p.name for p in d["app"].iterdir()} == BASE_FILES | {"tls.crt", "tls.key", "tls.cas"}
    assert {p.name for p in d["app2"].iterdir()} == BASE_FILES
    app = cert_identity(d["app"] / "tlscert")
    assert app.route_to_app is not None and app.route_to_app.name == "grafana-example"
    assert app.groups == ("machine-id-db", "machine-id-app-role")
    assert cert_identity(d["tls"] / "tlscert").groups == ("machine-id-db",)


def test_flags_only_start_as_tctl_bots_add_prints(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    _, token = add_bot(cluster)
    dest = tmp_path / "tbot-user"
    tbot(
        "start",
        f"--destination-dir={dest}",
        f"--token={token}",
        f"--proxy-server={cluster.public_addr}",
        f"--ca-pin={pin}",
        "--join-method=token",
        f"--data-dir={tmp_path / 'data'}",
        "--oneshot",
    )
    assert {p.name for p in dest.iterdir()} == BASE_FILES
    assert cert_identity(dest / "tlscert").route_to_database is None


def test_wrong_ca_pin_is_refused_and_the_token_survives(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    _, token = add_bot(cluster)
    storage = tmp_path / "bot"
    wrong = "sha256:" + "1" * 64
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=wrong,
        storage=storage,
        outputs=db_output(tmp_path / "out"),
    )
    proc = tbot("start", "-c", cfg, "--oneshot", check=False)
    assert proc.returncode == 6, proc.stderr
    assert "refusing to join" in proc.stderr and "does not match" in proc.stderr
    assert not (storage / "identity").exists()
    # the right pin on the command line replaces the onboarding section: the token still works
    tbot("start", "-c", cfg, f"--token={token}", f"--ca-pin={pin}", "--oneshot")
    assert (storage / "identity").exists()


def test_reused_token_and_expired_identity(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    name, token = add_bot(cluster)
    first = seed_config(
        tmp_path / "a.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "a",
        outputs=db_output(tmp_path / "out-a"),
        extra="certificate_ttl: 2s\n",
    )
    tbot("start", "-c", first, "--oneshot")
    # a second bot instance with the same (single-use) token
    second = seed_config(
        tmp_path / "b.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "b",
        outputs=db_output(tmp_path / "out-b"),
    )
    proc = tbot("start", "-c", second, "--oneshot", check=False)
    assert proc.returncode == 6, proc.stderr
    assert "already used" in proc.stderr
    # the first instance's identity expires; its token is spent: a clear way out
    time.sleep(3)
    dead = tbot("start", "-c", first, "--oneshot", check=False)
    assert dead.returncode == 6, dead.stderr
    assert f"the identity of bot '{name}'" in dead.stderr and "expired at" in dead.stderr
    assert f"tctl bots rm {name} && tctl bots add {name}" in dead.stderr


# ---------------------------------------------------------------------- the daemon
def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _poll(what: str, fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            got = fn()
            if got:
                return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.1)


@contextlib.contextmanager
def daemon(*args: str | Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [TBOT, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _metric(body: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    assert m, body
    return float(m.group(1))


def test_daemon_diagnostics_sighup_and_sigterm(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    name, token = add_bot(cluster)
    port = free_port()
    storage, dest, pid_file = tmp_path / "bot", tmp_path / "out", tmp_path / "tbot.pid"
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=storage,
        outputs=db_output(dest),
        extra=f"diag_addr: 127.0.0.1:{port}\n",
    )
    base = f"http://127.0.0.1:{port}"
    with daemon("--log-format=json", "start", "-c", cfg, f"--pid-file={pid_file}") as proc:
        _poll("/readyz", lambda: _get(f"{base}/readyz")[0] == 200)
        doc = json.loads(_get(f"{base}/readyz")[1])
        assert doc["status"] == "healthy"
        ((label, detail),) = doc["services"].items()
        assert "database" in label and detail["status"] == "healthy" and detail["expires"]
        assert _get(f"{base}/livez")[0] == 200
        metrics = _get(f"{base}/metrics")[1]
        assert _metric(metrics, "tbot_renewals_total") == 0
        assert _metric(metrics, "tbot_joins_total") == 1
        assert 3000 < _metric(metrics, f'tbot_output_expiry_seconds{{output="{label}"}}') <= 3600
        assert int(pid_file.read_text()) == proc.pid
        before = (dest / "tlscert").read_bytes()
        proc.send_signal(signal.SIGHUP)  # systemctl reload: renew now
        _poll("a renewal", lambda: _metric(_get(f"{base}/metrics")[1], "tbot_renewals_total") == 1)
        assert (storage / "generation").read_text() == "2\n"
        _poll("fresh outputs", lambda: (dest / "tlscert").read_bytes() != before)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        out = proc.stdout.read() if proc.stdout else ""
    assert "Traceback" not in out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("received a reload signal" in rec["message"] for rec in lines), out
    assert not pid_file.exists()
    assert bot_generation(cluster, name) == 2


def _iso(value: str) -> float:
    """An ISO-8601 UTC time from /readyz as a unix timestamp."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_diagnostics_last_and_next_renewal_times(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    """/readyz (per output and for the identity) and /metrics say when tbot last renewed and
    when it renews next; SIGHUP moves both; the scheduled renewal comes when it said."""
    _, token = add_bot(cluster)
    port = free_port()
    interval = 20.0  # long enough that start-up never reaches the first scheduled renewal
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "bot",
        outputs=db_output(tmp_path / "out"),
        extra=f"diag_addr: 127.0.0.1:{port}\nrenewal_interval: 20s\ncertificate_ttl: 1m\n",
    )
    base = f"http://127.0.0.1:{port}"

    def times() -> tuple[dict[str, Any], dict[str, Any], str]:
        status, body = _get(f"{base}/readyz")
        assert status == 200, body
        doc = json.loads(body)
        ((label, detail),) = doc["services"].items()
        return doc["identity"], detail, label

    def metric(name: str) -> float:
        return _metric(_get(f"{base}/metrics")[1], name)

    with daemon("start", "-c", cfg) as proc:
        _poll("/readyz", lambda: _get(f"{base}/readyz")[0] == 200)
        ident, detail, label = times()
        # the existing keys are all still there
        assert detail["status"] == "healthy" and detail["expires"] and ident["expires"]
        out_last, out_next = _iso(detail["last_renewal"]), _iso(detail["next_renewal"])
        id_last, id_next = _iso(ident["last_renewal"]), _iso(ident["next_renewal"])
        assert id_next == out_next  # one loop renews the identity and every output
        assert id_last <= out_last <= time.time() + 1
        assert abs(out_next - (out_last + interval)) <= 3, (out_last, out_next)
        # /metrics has the same times as unix timestamps (gauges)
        text = _get(f"{base}/metrics")[1]
        for name in (
            "tbot_identity_last_renewal_timestamp_seconds",
            "tbot_identity_next_renewal_timestamp_seconds",
            "tbot_output_last_renewal_timestamp_seconds",
            "tbot_output_next_renewal_timestamp_seconds",
        ):
            assert f"# TYPE {name} gauge\n" in text, text
        out = f'{{output="{label}"}}'
        assert abs(metric("tbot_identity_last_renewal_timestamp_seconds") - id_last) < 0.01
        assert abs(metric("tbot_identity_next_renewal_timestamp_seconds") - id_next) < 0.01
        assert abs(metric(f"tbot_output_last_renewal_timestamp_seconds{out}") - out_last) < 0.01
        assert abs(metric(f"tbot_output_next_renewal_timestamp_seconds{out}") - out_next) < 0.01

        # SIGHUP: renewed now, before the schedule; both times move on
        assert metric("tbot_renewals_total") == 0
        proc.send_signal(signal.SIGHUP)
        _poll("the reload's renewal", lambda: metric("tbot_renewals_total") == 1)
        _poll("the next renewal rescheduled", lambda: _iso(times()[1]["next_renewal"]) > out_next)
        ident, detail, _ = times()
        hup_last, hup_next = _iso(detail["last_renewal"]), _iso(detail["next_renewal"])
        assert _iso(ident["last_renewal"]) > id_last
        assert hup_last > out_last
        assert hup_last < out_next - 1  # not the scheduled renewal: the SIGHUP one
        assert abs(hup_next - (hup_last + interval)) <= 3, (hup_last, hup_next)
        assert abs(metric(f"tbot_output_next_renewal_timestamp_seconds{out}") - hup_next) < 0.01

        # the scheduled renewal comes when /readyz said it would
        _poll("the scheduled renewal", lambda: metric("tbot_renewals_total") == 2, timeout=45)
        _poll("its output", lambda: _iso(times()[1]["last_renewal"]) > hup_last)
        assert abs(_iso(times()[1]["last_renewal"]) - hup_next) <= 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_failed_renewals_keep_the_last_good_outputs(tmp_path: Path) -> None:
    """The auth service stops for two renewal intervals: the scheduled renewals fail (and are
    counted), the outputs keep serving; it comes back and the schedule alone recovers."""
    with running_cluster(tmp_path / "cluster") as c:
        c.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)
        pin = parse_status(c.tctl("status").stdout)["CA pin"]
        _, token = add_bot(c)
        port = free_port()
        dest = tmp_path / "out"
        cfg = seed_config(
            tmp_path / "tbot.yaml",
            addr=c.public_addr,
            token=token,
            pin=pin,
            storage=tmp_path / "bot",
            outputs=db_output(dest),
            extra=f"diag_addr: 127.0.0.1:{port}\nrenewal_interval: 2s\ncertificate_ttl: 1m\n",
        )
        base = f"http://127.0.0.1:{port}"

        def metric(name: str) -> float:
            return _metric(_get(f"{base}/metrics")[1], name)

        with daemon("start", "-c", cfg) as proc:
            _poll("/readyz", lambda: _get(f"{base}/readyz")[0] == 200)
            _poll("a scheduled renewal", lambda: metric("tbot_renewals_total") >= 1, timeout=30)
            c.stop()
            good = (dest / "tlscert").read_bytes()
            renewed = metric("tbot_renewals_total")
            # two intervals without the auth service: two scheduled attempts fail
            _poll("two failures", lambda: metric("tbot_renewal_failures_total") >= 2, timeout=30)
            assert proc.poll() is None
            assert _get(f"{base}/readyz")[0] == 200  # the last good outputs are unexpired
            assert (dest / "tlscert").read_bytes() == good
            assert metric("tbot_renewals_total") == renewed
            c.start()
            _poll(
                "a renewal on schedule",
                lambda: metric("tbot_renewals_total") > renewed,
                timeout=30,
            )
            _poll("fresh outputs", lambda: (dest / "tlscert").read_bytes() != good)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


# ---------------------------------------------------------------------- init with real users
@pytest.fixture
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setfacl"):
        pytest.skip("needs root, useradd and setfacl")
    with linux_users("bot", "app", "other") as made:
        yield made


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp root is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="jg-tbot-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _cat_as(user: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "cat", str(path)], capture_output=True, text=True, check=False
    )


def test_init_with_acls_then_start(
    cluster: Cluster, roles: None, pin: str, users: dict[str, pwd.struct_passwd], public_dir: Path
) -> None:
    botu, appu, other = users["bot"], users["app"], users["other"]
    dest = public_dir / "machine-id"
    _, token = add_bot(cluster)
    cfg = seed_config(
        public_dir / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=public_dir / "bot",
        outputs=db_output(dest, fmt="cockroach"),
    )
    # the seed's command, verbatim apart from the paths and user names
    proc = tbot(
        "init",
        "-c",
        cfg,
        f"--init-dir={dest}",
        f"--bot-user={botu.pw_name}",
        f"--owner={botu.pw_name}:{botu.pw_name}",
        f"--reader-user={appu.pw_name}",
    )
    assert "has been initialized" in proc.stderr and "with ACLs" in proc.stderr
    expected = BASE_FILES | {"cockroach"}
    assert {p.name for p in dest.iterdir()} == expected
    for p in [dest, *dest.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (botu.pw_uid, botu.pw_gid), p
    dir_acl = subprocess.run(
        ["getfacl", "-cnp", str(dest)], capture_output=True, text=True, check=True
    ).stdout
    assert f"user:{appu.pw_uid}:r-x" in dir_acl and "other::---" in dir_acl
    file_acl = subprocess.run(
        ["getfacl", "-cnp", str(dest / "tlscert")], capture_output=True, text=True, check=True
    ).stdout
    assert f"user:{appu.pw_uid}:r--" in file_acl
    again = tbot(
        "init",
        "-c",
        cfg,
        f"--init-dir={dest}",
        f"--bot-user={botu.pw_name}",
        f"--reader-user={appu.pw_name}",
    )
    assert "Nothing to create." in again.stderr

    # tbot writes as root into the bot user's directory: owner and ACL survive the atomic writes
    tbot("start", "-c", cfg, "--oneshot")
    cert = dest / "cockroach" / "node.crt"
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert cert.stat().st_uid == botu.pw_uid
    assert _cat_as(appu.pw_name, dest / "tlscert").stdout.startswith("-----BEGIN CERTIFICATE")
    assert _cat_as(appu.pw_name, cert).returncode == 0
    assert _cat_as(other.pw_name, dest / "tlscert").returncode != 0

    # --clean removes what the output does not write
    (dest / "stale.pem").write_text("x")
    warned = tbot(
        "init",
        "-c",
        cfg,
        f"--init-dir={dest}",
        f"--bot-user={botu.pw_name}",
        f"--reader-user={appu.pw_name}",
    )
    assert "stale.pem" in warned.stderr and (dest / "stale.pem").exists()
    tbot(
        "init",
        "-c",
        cfg,
        f"--init-dir={dest}",
        f"--bot-user={botu.pw_name}",
        f"--reader-user={appu.pw_name}",
        "--clean",
    )
    assert not (dest / "stale.pem").exists()


def test_init_without_acl_users_falls_back_to_permissions(
    users: dict[str, pwd.struct_passwd], public_dir: Path
) -> None:
    botu = users["bot"]
    dest = public_dir / "tbot-user"
    proc = tbot("init", f"--destination-dir={dest}", f"--owner={botu.pw_name}:{botu.pw_name}")
    assert (
        "ACLs are not usable for destination" in proc.stderr
        and "--bot-user must be set" in proc.stderr
    )
    assert mode(dest) == 0o700 and mode(dest / "tlscert") == 0o600
    assert (dest / "tlscert").stat().st_uid == botu.pw_uid
    required = public_dir / "tbot.yaml"
    required.write_text(
        f"version: v2\noutputs:\n  - type: identity\n    destination:\n      type: directory\n"
        f"      path: {public_dir / 'req'}\n      acls: required\n"
    )
    failed = tbot("init", "-c", required, check=False)
    assert failed.returncode != 0 and "ACLs are not usable" in failed.stderr


# ---------------------------------------------------------------------- install systemd
def test_install_systemd(tmp_path: Path) -> None:
    cfg = tmp_path / "tbot.yaml"
    cfg.write_text("version: v2\n")
    units = tmp_path / "units"
    units.mkdir()
    proc = tbot("install", "systemd", "-c", cfg, f"--systemd-directory={units}")
    assert "systemctl enable --now tbot" in proc.stderr
    unit = units / "tbot.service"
    assert mode(unit) == 0o644
    assert unit.read_text() == (
        "# Generated by `tbot`\n[Unit]\nDescription=tbot - Teleport Machine & Workload Identity Service\n"
        "After=network.target\n\n[Service]\nType=simple\nUser=teleport\nGroup=teleport\nRestart=always\n"
        'RestartSec=5\nEnvironment="TELEPORT_ANONYMOUS_TELEMETRY=0"\n'
        f"ExecStart={TBOT} start -c {cfg} --pid-file=/run/tbot.pid\n"
        "ExecReload=/bin/kill -HUP $MAINPID\nPIDFile=/run/tbot.pid\nLimitNOFILE=524288\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    assert (
        "up to date" in tbot("install", "systemd", "-c", cfg, f"--systemd-directory={units}").stderr
    )
    args = [
        "install",
        "systemd",
        f"--config={cfg}",
        f"--systemd-directory={units}",
        "--user=bot",
        "--group=bot",
    ]
    refused = tbot(*args, check=False)
    assert refused.returncode == 2 and "already exists with different content" in refused.stderr
    tbot(*args, "--force")
    assert "User=bot\nGroup=bot\n" in unit.read_text()
    named = tbot(
        "install",
        "systemd",
        "-c",
        cfg,
        f"--systemd-directory={units}",
        "--name=machine-id",
        "--pid-file=/run/mid.pid",
    )
    assert "systemctl enable --now machine-id" in named.stderr
    text = (units / "machine-id.service").read_text()
    assert "Description=machine-id - " in text and "PIDFile=/run/mid.pid\n" in text
    missing = tbot("install", "systemd", f"--systemd-directory={units}", check=False)
    assert missing.returncode == 2 and "missing required parameter --config" in missing.stderr


# ---------------------------------------------------------------------- proxies
def start_tbot_proxy(*args: str | Path, ready: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [TBOT, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"tbot proxy exited early ({proc.wait()}): {err}", pytrace=False)
        lines.append(line)
        if line.startswith(ready):
            return proc, "".join(lines)


def stop_tbot_proxy(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGHUP)  # the unit's ExecReload: harmless
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_proxy_app_listener_relays_http_with_the_app_certificate(
    cluster: Cluster, roles: None, pin: str, tmp_path: Path
) -> None:
    _, token = add_bot(cluster, roles="machine-id-app-role")
    dest = tmp_path / "machine-id"
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "bot",
        outputs=f"outputs:\n  - type: application\n    destination:\n      type: directory\n      path: {dest}\n    app_name: grafana-example\n",
    )
    tbot("start", "-c", cfg, "--oneshot")
    port = free_port()
    proc, out = start_tbot_proxy(
        "proxy",
        f"--destination-dir={dest}",
        f"--proxy={cluster.public_addr}",
        "app",
        f"--port={port}",
        "grafana-example",
        ready="Any local user",
    )
    try:
        assert f"http://127.0.0.1:{port}" in out
        # no app of that name runs in this cluster (seed 003 and test_app_access cover the
        # real relay): the listener still answers in HTTP, saying why
        status, body = _get(f"http://127.0.0.1:{port}/api/users")
        assert status == 502 and "serves no application 'grafana-example'" in body, body
    finally:
        stop_tbot_proxy(proc)
    wrong = tbot(
        "proxy",
        f"--destination-dir={dest}",
        f"--proxy={cluster.public_addr}",
        "app",
        "other-app",
        check=False,
    )
    assert wrong.returncode == 2 and "not for application 'other-app'" in wrong.stderr


@pytest.fixture(scope="module")
def pg_bot(db_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bot with a database output for "pg" on the database cluster: (config, destination)."""
    db_cluster.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)
    pin = parse_status(db_cluster.tctl("status").stdout)["CA pin"]
    _, token = add_bot(db_cluster)
    root = tmp_path_factory.mktemp("pg-bot")
    dest = root / "machine-id"
    cfg = seed_config(
        root / "tbot.yaml",
        addr=db_cluster.public_addr,
        token=token,
        pin=pin,
        storage=root / "bot",
        outputs=db_output(dest, service="pg"),
    )
    proc = tbot("start", "-c", cfg, "--oneshot")
    assert "not registered or not visible" not in proc.stderr  # db.list found its protocol
    return cfg, dest


def test_proxy_db_tunnel_from_the_config(
    db_cluster: Cluster,
    postgres: Path,
    pg_bot: tuple[Path, Path],
) -> None:
    cfg, dest = pg_bot
    port = free_port()
    # seed 002: the proxy address comes from the config (-c before the subcommand)
    proc, out = start_tbot_proxy(
        "-c",
        cfg,
        "proxy",
        f"--destination-dir={dest}",
        "db",
        f"--port={port}",
        "--tunnel",
        "pg",
        ready="  psql",
    )
    try:
        assert f"on 127.0.0.1:{port}" in out
        url = f"postgres://alice@127.0.0.1:{port}/example?sslmode=disable"
        slow = subprocess.Popen(
            ["psql", url, "-Atc", "select pg_sleep(2); select 'still here'"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        before = (dest / "tlscert").read_bytes()
        tbot("start", "-c", cfg, "--oneshot")  # renew while a connection is live
        assert (dest / "tlscert").read_bytes() != before
        sout, serr = slow.communicate(timeout=60)
        assert "still here" in sout, serr
        psql = subprocess.run(
            ["psql", url, "-Atc", "select 42"], capture_output=True, text=True, timeout=60
        )
        assert psql.stdout.strip() == "42", psql.stderr
    finally:
        stop_tbot_proxy(proc)


def test_proxy_db_tls_mode_with_the_seed_conninfo(
    db_cluster: Cluster,
    postgres: Path,
    pg_bot: tuple[Path, Path],
) -> None:
    cfg, dest = pg_bot
    port = free_port()
    proc, out = start_tbot_proxy(
        "-c",
        cfg,
        "proxy",
        f"--proxy={db_cluster.public_addr}",
        f"--destination-dir={dest}",
        "db",
        f"--port={port}",
        "pg",
        ready="  key_file=",
    )
    try:
        assert f"  cert_file={dest}/tlscert\n" in out
        conninfo = (
            f"host=localhost hostaddr=127.0.0.1 port={port} dbname=example user=alice "
            f"sslmode=verify-full sslrootcert={dest}/teleport-host-ca.crt "
            f"sslkey={dest}/key sslcert={dest}/tlscert"
        )
        psql = subprocess.run(
            ["psql", conninfo, "-Atc", "select 7"], capture_output=True, text=True, timeout=60
        )
        assert psql.stdout.strip() == "7", psql.stderr
    finally:
        stop_tbot_proxy(proc)
    wrong = tbot(
        "-c", cfg, "proxy", f"--destination-dir={dest}", "db", "--tunnel", "other", check=False
    )
    assert wrong.returncode == 2 and "is for database 'pg', not 'other'" in wrong.stderr
