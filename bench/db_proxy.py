#!/usr/bin/env python3
"""Benchmark: PostgreSQL through the database access path vs a direct TLS connection.

Starts a real cluster (``teleport start``: auth + proxy in one process), a
PostgreSQL with TLS and certificate authentication (server certificate from
``tctl auth sign --format=db``), a Database Service agent (``teleport db
start``, its own process, joining through the proxy with a db token and the CA
pin), a user that logs in with ``tsh login`` (``TELEPORT_HOME`` in a temp dir),
``tsh db login`` and ``tsh proxy db --tunnel`` in the background. Then, in one
run, each workload goes DIRECT (libpq ``sslmode=verify-full`` with a
``db_client`` certificate for the database user, the kind the agent uses) and
through the TUNNEL (``sslmode=disable`` to the local proxy's port):

* ``pgbench -S`` (select-only) with 1 client (``-j 1``) and 10 clients
  (``-j 2``) for ``--seconds`` each: TPS and the tunnel/direct ratio (goals:
  >= 0.60x at 1 client, >= 0.75x at 10 clients);
* ``pgbench -S -C`` (a new connection per transaction), 10 clients (``-j 10``):
  p50/p90/p99 of the per-connection cycle (disconnect + connect + SELECT, from
  the ``-l`` per-transaction logs) and TPS;
* COPY out: ``COPY (SELECT repeat('x', 1000) FROM generate_series(1, N)) TO
  STDOUT`` (``--copy-mb``, default 1024 MB) through ``psql`` into /dev/null:
  MB/s and the ratio (goal >= 0.85x).

Each phase runs in ``--rounds`` (default 2) alternating direct/tunnel parts so a
change of the machine's load hits both paths alike. During every run it
records the CPU seconds (``/proc/<pid>/stat``) of the cluster process (auth +
proxy), the agent, ``tsh proxy db``, PostgreSQL (postmaster and backends), the
client (pgbench/psql) and the rest of the machine, and reports the tunnel's CPU
milliseconds per transaction (per MB for COPY) for each hop.

The bot chain (``--chains``, default ``tsh,bot``): a bot created with ``tctl
bots add`` (role from ``tctl create``: the database, ``alice``/``example``),
``tbot start --oneshot`` writing a database output to a directory (joining
with the token and the CA pin), and ``tbot proxy --proxy=... --destination-dir=...
db --tunnel`` serving it. Every workload then also runs through that local
port (``sslmode=disable``), with the same goals as the tsh tunnel.

Output: a table and one JSON summary line (also written to ``--json-out``,
default ``bench/results/db_proxy.json``). ``--quick`` is a smoke run (5 s
phases, 64 MB COPY, one round). ``--profile tsh,proxy,agent`` samples those
processes with py-spy during the tunnel phases.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from cert_issuance import (  # noqa: E402
    CLK_TCK,
    Cluster,
    free_port,
    loadavg,
    percentile,
    proc_cpu_seconds,
    start_py_spy,
    summarize_py_spy,
    system_cpu_seconds,
    tool,
)

DB_NAME = "example-postgres"  # the database resource the agent serves
PG_USER = "alice"  # the PostgreSQL role
PG_DB = "example"  # the PostgreSQL database
TSH_USER = "bench"
PASSWORD = "a long enough benchmark passphrase"
GOALS = {"select_1": 0.60, "select_10": 0.75, "copy": 0.85}
#: --chains value -> the path key in the results ("tunnel" kept for the tsh chain)
CHAIN_PATHS = {"tsh": "tunnel", "bot": "bot"}
PATH_LABELS = {"direct": "direct", "tunnel": "tsh tunnel", "bot": "tbot tunnel"}
BOT_NAME = "bench-db-bot"
BOT_ROLE = "bench-db-bot-role"
BOT_ROLE_YAML = f"""\
kind: role
version: v6
metadata:
  name: {BOT_ROLE}
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [{PG_DB}]
    db_users: [{PG_USER}]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
"""
ROW_BYTES = 1001  # repeat('x', 1000) plus the newline of COPY's text format
MB = 1024 * 1024  # --copy-mb and every MB/s figure


# ----------------------------------------------------------------------------- helpers
def clean_env(**extra: str) -> dict[str, str]:
    """This environment without inherited Teleport/libpq settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPORT_", "TCTL_", "PG"))}
    env["NO_COLOR"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120.0,
    what: str = "",
) -> str:
    proc = subprocess.run(
        argv,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what or ' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


def pg_tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None
    )
    if not found:
        sys.exit(f"{name} not found (Debian packages postgresql / postgresql-client)")
    return found


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    return data[data.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)


def child_pids(parent: int) -> list[int]:
    """Live children of ``parent``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if _stat_fields(entry.name)[1] == str(parent):
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_cpu_seconds(parent: int) -> float:
    """CPU of ``parent``, its reaped children and its live children (PostgreSQL's backends).

    Racy while a child exits (it may be missed, or counted twice): take it only when
    no backend is exiting (see :meth:`CpuMeter.settle`).
    """
    f = _stat_fields(parent)
    total = sum(int(v) for v in f[11:15])  # utime stime cutime cstime
    for pid in child_pids(parent):
        try:
            total += sum(int(v) for v in _stat_fields(pid)[11:15])
        except (OSError, ValueError):
            continue
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


def wait_for(
    pred: Callable[[], bool],
    timeout: float,
    what: str,
    alive: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(
                f"{what}: the process exited with {alive.returncode}\n"
                + (log.read_text(errors="replace")[-4000:] if log and log.exists() else "")
            )
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{what}: not ready after {timeout}s\n"
        + (log.read_text(errors="replace")[-4000:] if log and log.exists() else "")
    )


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- set-up
class Setup:
    """Everything the measurement needs; ``close()`` stops it all."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.cluster = Cluster(root / "cluster")
        self.cluster.root.mkdir()
        self.pg: Any = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = root / "agent.log"
        self.tsh_proxy: subprocess.Popen[bytes] | None = None
        self.tsh_log = root / "tsh-proxy.log"
        self.home = root / "tsh"
        self.tsh_env = clean_env(
            TELEPORT_HOME=str(self.home), PGSERVICEFILE=str(root / "pg_service.conf")
        )
        self.tunnel_port = args.port or free_port()
        self.direct_env: dict[str, str] = {}
        self.tunnel_env: dict[str, str] = {}
        self.tbot_proxy: subprocess.Popen[bytes] | None = None
        self.tbot_log = root / "tbot-proxy.log"
        self.bot_root = root / "bot"
        self.bot_port = free_port()
        while self.bot_port == self.tunnel_port:
            self.bot_port = free_port()
        self.bot_env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # -- steps
    def start_cluster(self) -> None:
        self.cluster.configure()
        self.cluster.start()
        status = self.cluster.tctl("status").stdout
        m = re.search(r"CA pin\s+(\S+)", status)
        if not m:
            raise RuntimeError(f"no CA pin in tctl status:\n{status}")
        self.ca_pin = m.group(1)
        m = re.search(r"Cluster\s+(\S+)", status)
        self.cluster_name = m.group(1) if m else "bench"

    def start_postgres(self) -> None:
        from tests.pg_fixture import start_postgres

        certs = self.root / "pgcerts"
        certs.mkdir()
        self.cluster.tctl(
            "auth",
            "sign",
            "--format=db",
            "--host=localhost,127.0.0.1",
            f"--out={certs}/server",
            "--ttl=24h",
        )
        self.pg = start_postgres(
            self.root,
            server_cert_pem=(certs / "server.crt").read_bytes(),
            server_key_pem=(certs / "server.key").read_bytes(),
            ca_pem=(certs / "server.cas").read_bytes(),
            databases=(PG_DB,),
            users=(PG_USER,),
        )
        # the fixture's 16 MB shared_buffers would make pgbench -S read through the OS
        # page cache; give the scale-10 data set (~160 MB) room, then restart
        self.pg.psql(f"ALTER SYSTEM SET shared_buffers = '{self.args.pg_shared_buffers}'")
        self.pg.psql("ALTER SYSTEM SET max_connections = 100")
        self.pg.psql("ALTER SYSTEM SET log_connections = off")
        subprocess.run(
            self.pg._pg_ctl("-l", str(self.pg.log_path), "-w", "-t", "30", "restart"),
            cwd=self.pg.base,
            capture_output=True,
            timeout=60,
            check=True,
        )
        (self.root / "db-ca.pem").write_text(
            self.cluster.tctl("auth", "export", "--type=db").stdout
        )

    def direct_client_cert(self) -> None:
        """A db_client-CA certificate with CN=alice, signed here with the CA read via tctl."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        from jumpgate.core.tlsca import (
            CAType,
            CertAuthority,
            cert_to_pem,
            generate_private_key,
            private_key_to_pem,
            utcnow,
        )

        out = self.cluster.tctl(
            "get",
            f"cert_authority/db_client/{self.cluster_name}",
            "--with-secrets",
            "--format=json",
        ).stdout
        doc = json.loads(out)
        if isinstance(doc, list):
            doc = doc[0]
        pair = doc["spec"]["active_keys"]["tls"][0]

        def pem(v: str) -> bytes:
            return v.encode() if v.lstrip().startswith("-----BEGIN") else base64.b64decode(v)

        ca = CertAuthority.from_pem(
            CAType.DB_CLIENT, self.cluster_name, pem(pair["cert"]), pem(pair["key"])
        )
        key = generate_private_key()
        cert = ca.issue(
            key.public_key(),
            not_after=utcnow() + timedelta(hours=4),
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PG_USER)]),
            client=True,
        )
        d = self.root / "direct"
        d.mkdir()
        (d / "client.crt").write_bytes(cert_to_pem(cert))
        keyf = d / "client.key"
        keyf.touch(mode=0o600)
        keyf.write_bytes(private_key_to_pem(key))
        self.direct_env = clean_env(
            PGHOST="localhost",
            PGHOSTADDR="127.0.0.1",
            PGPORT=str(self.pg.port),
            PGUSER=PG_USER,
            PGDATABASE=PG_DB,
            PGSSLMODE="verify-full",
            PGSSLROOTCERT=str(self.root / "db-ca.pem"),
            PGSSLCERT=str(d / "client.crt"),
            PGSSLKEY=str(keyf),
            PGCONNECT_TIMEOUT="20",
        )

    def start_agent(self) -> None:
        token = self.cluster.tctl("tokens", "add", "--type=db", "--ttl=1h", "--format=text").stdout
        token = token.strip().splitlines()[-1].strip()
        log = self.agent_log.open("wb")
        self.agent = subprocess.Popen(
            [
                tool("teleport"),
                "db",
                "start",
                f"--token={token}",
                f"--proxy=localhost:{self.cluster.web_port}",
                f"--ca-pin={self.ca_pin}",
                f"--name={DB_NAME}",
                "--protocol=postgres",
                f"--uri=localhost:{self.pg.port}",
                f"--data-dir={self.root / 'agent'}",
                "--nodename=bench-db",
                "--description=benchmark PostgreSQL",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            start_new_session=True,
        )

        def registered() -> bool:
            out = self.cluster.tctl("get", "db_servers", "--format=json", check=False).stdout
            return DB_NAME in out

        wait_for(registered, 60, "the Database Service agent", self.agent, self.agent_log)

    def login(self) -> None:
        out = self.cluster.tctl(
            "users",
            "add",
            TSH_USER,
            "--roles=access",
            f"--db-users={PG_USER}",
            f"--db-names={PG_DB}",
        ).stdout
        (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
        ctx = ssl.create_default_context(
            cadata=self.cluster.tctl("auth", "export", "--type=tls-host").stdout
        )
        conn = http.client.HTTPSConnection(
            "localhost", self.cluster.web_port, context=ctx, timeout=30
        )
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
        if resp.status != 200:
            raise RuntimeError(f"invite form: HTTP {resp.status}: {body[:400]}")
        tsh = tool("tsh")
        run(
            [tsh, "login", f"--proxy=localhost:{self.cluster.web_port}", f"--user={TSH_USER}"],
            env=self.tsh_env,
            input=PASSWORD + "\n",
            what="tsh login",
        )
        run(
            [tsh, "db", "login", f"--db-user={PG_USER}", f"--db-name={PG_DB}", DB_NAME],
            env=self.tsh_env,
            what="tsh db login",
        )

    def start_tunnel(self) -> None:
        log = self.tsh_log.open("wb")
        self.tsh_proxy = subprocess.Popen(
            [
                tool("tsh"),
                "proxy",
                "db",
                "--tunnel",
                f"--port={self.tunnel_port}",
                f"--db-user={PG_USER}",
                f"--db-name={PG_DB}",
                DB_NAME,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.tsh_env,
            start_new_session=True,
        )
        wait_for(
            lambda: "$ psql" in self.tsh_log.read_text(errors="replace"),
            30,
            "tsh proxy db --tunnel",
            self.tsh_proxy,
            self.tsh_log,
        )
        self.tunnel_env = clean_env(
            PGHOST="127.0.0.1",
            PGPORT=str(self.tunnel_port),
            PGUSER=PG_USER,
            PGDATABASE=PG_DB,
            PGSSLMODE="disable",
            PGCONNECT_TIMEOUT="20",
        )

    def start_bot_tunnel(self) -> None:
        """Role + ``tctl bots add``, ``tbot start --oneshot``, then ``tbot proxy db --tunnel``."""
        self.bot_root.mkdir(mode=0o700)
        role = self.bot_root / "role.yaml"
        role.write_text(BOT_ROLE_YAML)
        self.cluster.tctl("create", "-f", str(role))
        added = json.loads(
            self.cluster.tctl(
                "bots", "add", BOT_NAME, f"--roles={BOT_ROLE}", "--format=json"
            ).stdout
        )
        token_file = self.bot_root / "token"
        token_file.write_text(str(added["token_id"]) + "\n")
        token_file.chmod(0o600)
        out_dir = self.bot_root / "machine-id"
        cfg = self.bot_root / "tbot.yaml"
        # seed 000/002's shape: auth_server naming the proxy, ca_pins, a database output
        cfg.write_text(
            f"""version: v2
auth_server: "localhost:{self.cluster.web_port}"
onboarding:
  join_method: "token"
  token: "{token_file}"
  ca_pins:
  - "{self.ca_pin}"
storage:
  type: directory
  path: {self.bot_root / "storage"}
certificate_ttl: 4h
renewal_interval: 1h
outputs:
  - type: database
    destination:
      type: directory
      path: {out_dir}
    service: {DB_NAME}
    database: {PG_DB}
    username: {PG_USER}
"""
        )
        run(
            [tool("tbot"), "start", "-c", str(cfg), "--oneshot"],
            what="tbot start --oneshot",
            timeout=120,
        )
        log = self.tbot_log.open("wb")
        self.tbot_proxy = subprocess.Popen(
            [
                tool("tbot"),
                "proxy",
                f"--proxy=localhost:{self.cluster.web_port}",
                f"--destination-dir={out_dir}",
                "db",
                f"--port={self.bot_port}",
                "--tunnel",
                DB_NAME,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            start_new_session=True,
        )
        wait_for(
            lambda: "  psql " in self.tbot_log.read_text(errors="replace"),
            30,
            "tbot proxy db --tunnel",
            self.tbot_proxy,
            self.tbot_log,
        )
        self.bot_env = clean_env(
            PGHOST="127.0.0.1",
            PGPORT=str(self.bot_port),
            PGUSER=PG_USER,
            PGDATABASE=PG_DB,
            PGSSLMODE="disable",
            PGCONNECT_TIMEOUT="20",
        )

    def path_env(self, path: str) -> dict[str, str]:
        """libpq environment of a path: direct, tunnel (tsh) or bot (tbot)."""
        return {"direct": self.direct_env, "tunnel": self.tunnel_env, "bot": self.bot_env}[path]

    def check_paths(self) -> None:
        psql = pg_tool("psql")
        for name in self.args.paths:
            env = self.path_env(name)
            out = run(
                [
                    psql,
                    "-X",
                    "-Atc",
                    "select current_user || '@' || current_database() "
                    "|| ' ssl=' || coalesce((select ssl::text from pg_stat_ssl "
                    "where pid = pg_backend_pid()), '?')",
                ],
                env=env,
                what=f"psql ({name})",
            )
            if out.strip() != f"{PG_USER}@{PG_DB} ssl=true":
                raise RuntimeError(f"unexpected answer through the {name} path: {out!r}")

    def pids(self) -> dict[str, int]:
        assert self.cluster.proc and self.agent
        out = {"proxy": self.cluster.proc.pid, "agent": self.agent.pid}
        if self.tsh_proxy is not None:
            out["tsh"] = self.tsh_proxy.pid
        if self.tbot_proxy is not None:
            out["tbot"] = self.tbot_proxy.pid
        return out

    def postmaster_pid(self) -> int:
        return int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        stop_process(self.tbot_proxy, signal.SIGTERM, 15)
        stop_process(self.tsh_proxy, signal.SIGINT, 15)
        stop_process(self.agent, signal.SIGTERM, 20)
        with contextlib.suppress(Exception):
            self.cluster.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()


# ----------------------------------------------------------------------------- measurement
class CpuMeter:
    """CPU seconds of the named pids, PostgreSQL, the clients we ran, and the rest."""

    def __init__(self, pids: dict[str, int], postmaster: int) -> None:
        self.pids = pids
        self.postmaster = postmaster
        # PostgreSQL's own processes, with no client connected
        self.idle_children = set(child_pids(postmaster))

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the backends of the last run are gone (their CPU is then in cutime)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not set(child_pids(self.postmaster)) - self.idle_children:
                return
            time.sleep(0.05)

    def snap(self) -> dict[str, float]:
        self.settle()
        s = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}
        s["postgres"] = tree_cpu_seconds(self.postmaster)
        s["client"] = children_cpu_seconds()
        s["busy"], _ = system_cpu_seconds()
        s["bench"] = sum(os.times()[:2])
        s["t"] = time.perf_counter()
        return s

    @staticmethod
    def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        d = {k: b[k] - a[k] for k in a}
        known = sum(d[k] for k in d if k not in ("busy", "t"))
        d["other"] = max(0.0, d.pop("busy") - known)  # everything else on the machine
        wall = d.pop("t")
        d.pop("bench")
        out = {k: round(v, 2) for k, v in d.items()}
        out["wall"] = round(wall, 2)
        return out


def parse_pgbench(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"^tps = ([\d.]+)", out, re.M)
    res["tps"] = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    res["transactions"] = int(m.group(1)) if m else None
    m = re.search(r"latency average = ([\d.]+) ms", out)
    res["latency_avg_ms"] = float(m.group(1)) if m else None
    m = re.search(r"(?:initial|average) connection time = ([\d.]+) ms", out)
    res["connection_ms"] = float(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    res["failed"] = int(m.group(1)) if m else 0
    return res


def read_pgbench_logs(prefix: Path) -> tuple[list[float], list[float]]:
    """(transaction latencies, per-client gaps between completions), both in ms.

    Under ``-C`` pgbench's logged latency excludes connecting; the gap between one
    client's consecutive completions is the full cycle: disconnect, connect, query.
    """
    lat: list[float] = []
    gaps: list[float] = []
    for f in prefix.parent.glob(prefix.name + ".*"):
        last: dict[int, float] = {}
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue
            client, latency_us = int(parts[0]), int(parts[2])
            done = int(parts[4]) + int(parts[5]) / 1e6
            lat.append(latency_us / 1000.0)
            if client in last:
                gaps.append((done - last[client]) * 1000.0)
            last[client] = done
    return sorted(lat), sorted(gaps)


def merge_runs(runs: list[dict[str, Any]], connect: bool) -> dict[str, Any]:
    """One result from the rounds of a phase: sums, means, merged latency percentiles."""
    tx = sum(r["transactions"] or 0 for r in runs)
    secs = sum(r["seconds"] for r in runs)
    tps_vals = [r["tps"] for r in runs if r["tps"] is not None]
    out: dict[str, Any] = {
        # equal durations: the mean of the runs' TPS (pgbench's, connection set-up excluded)
        "tps": round(sum(tps_vals) / len(tps_vals), 1) if tps_vals else None,
        "tps_rounds": [r["tps"] for r in runs],
        "transactions": tx,
        "seconds": secs,
        "failed": sum(r["failed"] for r in runs),
        "loadavg_1m_before": [r["loadavg_1m_before"] for r in runs],
    }
    lats = [(r["latency_avg_ms"], r["transactions"]) for r in runs if r["latency_avg_ms"]]
    if lats and tx:
        out["latency_avg_ms"] = round(sum(lat * n for lat, n in lats) / tx, 3)
    conns = [r["connection_ms"] for r in runs if r["connection_ms"] is not None]
    if conns:
        out["connection_ms"] = round(sum(conns) / len(conns), 3)
    cpu: dict[str, float] = {}
    for r in runs:
        for k, v in r["cpu_s"].items():
            cpu[k] = round(cpu.get(k, 0.0) + v, 2)
    out["cpu_s"] = cpu
    if connect:
        gaps = sorted(g for r in runs for g in r["_gaps"])
        lat = sorted(x for r in runs for x in r["_lat"])
        out["cycle_p50_ms"] = round(percentile(gaps, 0.50), 3)
        out["cycle_p90_ms"] = round(percentile(gaps, 0.90), 3)
        out["cycle_p99_ms"] = round(percentile(gaps, 0.99), 3)
        out["query_p90_ms"] = round(percentile(lat, 0.90), 3)
        out["cycles"] = len(gaps)
    return out


class Bench:
    def __init__(self, setup: Setup, args: argparse.Namespace) -> None:
        self.s = setup
        self.args = args
        self.meter = CpuMeter(setup.pids(), setup.postmaster_pid())
        self.pgbench = pg_tool("pgbench")
        self.psql = pg_tool("psql")
        self.spy: dict[str, Any] = {}

    def env(self, path: str) -> dict[str, str]:
        return self.s.path_env(path)

    def order(self, r: int) -> list[str]:
        """Round ``r``'s order of the paths: forwards, then backwards (ABBA for two)."""
        paths = list(self.args.paths)
        return paths if r % 2 == 0 else paths[::-1]

    def _maybe_profile(self, path: str, phase: str, seconds: float) -> list[Any]:
        # proxy and agent are profiled on the tsh chain (as before); tbot on its own
        if path == "direct" or not self.args.profile:
            return []
        spies = []
        for name in self.args.profile:
            if (name == "tbot") != (path == "bot") or name not in self.s.pids():
                continue
            out = self.s.root / f"pyspy-{name}-{phase}.txt"
            proc = start_py_spy(self.s.pids()[name], out, seconds)
            if proc:
                spies.append((name, proc, out))
        return spies

    def _finish_profile(self, phase: str, spies: list[Any]) -> None:
        for name, proc, out in spies:
            try:
                proc.wait(timeout=self.args.seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                prof = summarize_py_spy(out)
                keep = self.args.json_out.with_name(f"db_proxy.pyspy-{name}-{phase}.txt")
                shutil.copyfile(out, keep)
                prof["raw"] = str(keep)  # type: ignore[assignment]
                self.spy.setdefault(name, {})[phase] = prof

    def pgbench_run(
        self,
        path: str,
        phase: str,
        clients: int,
        threads: int,
        connect: bool,
        seconds: int,
        profile: bool,
    ) -> dict[str, Any]:
        """One pgbench run; latencies (for ``-C``) stay in ``_lat``/``_gaps`` for merging."""
        logdir = Path(tempfile.mkdtemp(prefix=f"pgbench-{phase}-{path}-", dir=self.s.root))
        prefix = logdir / "log"
        argv = [
            self.pgbench,
            "-n",
            "-S",
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(seconds),
        ]
        if connect:
            argv += ["-C", "-l", f"--log-prefix={prefix}"]
        spy = self._maybe_profile(path, phase, seconds) if profile else []
        load = loadavg()
        a = self.meter.snap()
        proc = subprocess.run(
            argv,
            env=self.env(path),
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
            cwd=logdir,
        )
        b = self.meter.snap()
        self._finish_profile(phase, spy)
        if proc.returncode != 0:
            raise RuntimeError(
                f"pgbench ({phase}, {path}) exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        res = parse_pgbench(proc.stdout)
        res["seconds"] = seconds
        res["loadavg_1m_before"] = load
        res["cpu_s"] = self.meter.diff(a, b)
        if connect:
            res["_lat"], res["_gaps"] = read_pgbench_logs(prefix)
        shutil.rmtree(logdir, ignore_errors=True)
        return res

    def pgbench_phase(
        self, phase: str, clients: int, threads: int, connect: bool
    ) -> dict[str, dict[str, Any]]:
        """``--rounds`` runs per path, alternating direct/tunnel (ABBA...), then merged."""
        rounds = self.args.rounds
        seconds = max(1, round(self.args.seconds / rounds))
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in self.args.paths}
        for r in range(rounds):
            for path in self.order(r):
                runs[path].append(
                    self.pgbench_run(path, phase, clients, threads, connect, seconds, r == 0)
                )
        return {path: merge_runs(rs, connect) for path, rs in runs.items()}

    def copy_run(self, path: str, mb: float, profile: bool) -> dict[str, Any]:
        rows = max(1, int(mb * MB // ROW_BYTES))
        sql = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT"
        argv = [
            self.psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-o",
            "/dev/null",
            "-c",
            "\\timing on",
            "-c",
            sql,
        ]
        spy = self._maybe_profile(path, "copy", self.args.seconds) if profile else []
        load = loadavg()
        a = self.meter.snap()
        t0 = time.perf_counter()
        proc = subprocess.run(
            argv, env=self.env(path), capture_output=True, text=True, timeout=3600, check=False
        )
        wall = time.perf_counter() - t0
        b = self.meter.snap()
        self._finish_profile("copy", spy)
        if proc.returncode != 0:
            raise RuntimeError(f"psql COPY ({path}) exited {proc.returncode}\n{proc.stderr}")
        m = re.search(r"Time: ([\d.]+) ms", proc.stdout)
        secs = float(m.group(1)) / 1000.0 if m else wall
        nbytes = rows * ROW_BYTES
        return {
            "rows": rows,
            "bytes": nbytes,
            "seconds": round(secs, 3),
            "wall_seconds": round(wall, 3),
            "loadavg_1m_before": load,
            "mb_per_s": round(nbytes / MB / secs, 1),
            "cpu_s": self.meter.diff(a, b),
        }

    def copy_phase(self) -> dict[str, dict[str, Any]]:
        """``--copy-mb`` per path, in ``--rounds`` parts alternating direct and tunnel."""
        rounds = self.args.rounds
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in self.args.paths}
        for r in range(rounds):
            for path in self.order(r):
                runs[path].append(self.copy_run(path, self.args.copy_mb / rounds, r == 0))
        out: dict[str, dict[str, Any]] = {}
        for path, rs in runs.items():
            nbytes = sum(x["bytes"] for x in rs)
            secs = sum(x["seconds"] for x in rs)
            cpu: dict[str, float] = {}
            for x in rs:
                for k, v in x["cpu_s"].items():
                    cpu[k] = round(cpu.get(k, 0.0) + v, 2)
            out[path] = {
                "rows": sum(r["rows"] for r in rs),
                "bytes": nbytes,
                "seconds": round(secs, 3),
                "wall_seconds": round(sum(r["wall_seconds"] for r in rs), 3),
                "mb_per_s": round(nbytes / MB / secs, 1),
                "mb_per_s_rounds": [r["mb_per_s"] for r in rs],
                "loadavg_1m_before": [r["loadavg_1m_before"] for r in rs],
                "cpu_s": cpu,
            }
        return out


def wait_for_load(limit: float, max_wait: float) -> float:
    """Sleep until the 1-minute load average is at most ``limit`` (or ``max_wait`` passed)."""
    t0 = time.monotonic()
    while loadavg() > limit and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    return time.monotonic() - t0


def git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty.strip() else "")


def ratio(t: float | None, d: float | None) -> float | None:
    return round(t / d, 3) if t and d else None


def cpu_ms_per(cpu: dict[str, float], n: float | None) -> dict[str, float]:
    if not n:
        return {}
    return {k: round(1000.0 * v / n, 3) for k, v in cpu.items() if k != "wall"}


# ----------------------------------------------------------------------------- report
def ratio_key(path: str) -> str:
    """The per-phase key of a chain's ratio to direct (``ratio`` for the tsh tunnel)."""
    return "ratio" if path == "tunnel" else f"{path}_ratio"


def goal_key(path: str, phase: str) -> str:
    """The summary's goal name: ``select_1`` for the tsh tunnel, ``bot_select_1`` for tbot."""
    return phase if path == "tunnel" else f"{path}_{phase}"


def print_report(summary: dict[str, Any]) -> None:
    ph = summary["phases"]
    chains = [p for p in summary["paths"] if p != "direct"]

    def g(v: Any, fmt: str = "{:,.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    def goal(r: float | None, key: str) -> str:
        if key not in GOALS:
            return ""
        if r is None:
            return f"(>= {GOALS[key]:.2f}: n/a)"
        return f"(>= {GOALS[key]:.2f}: {'MET' if r >= GOALS[key] else 'NOT MET'})"

    print()
    print(
        "PostgreSQL direct (TLS, verify-full) vs through "
        + " and ".join(
            {"tunnel": "`tsh proxy db --tunnel`", "bot": "`tbot proxy db --tunnel`"}[c]
            for c in chains
        )
        + f" ({summary['seconds_per_phase']:g} s per path and pgbench phase in "
        f"{summary['rounds']} alternating round(s), {summary['cpus']} CPUs, "
        f"load average before {summary['loadavg_1m_before']:.2f})"
    )
    print()
    head = f"  {'workload':<34} {'direct':>10}"
    for c in chains:
        head += f" {PATH_LABELS[c]:>12} {'ratio':>6} {'goal':<16}"
    print(head)
    print("  " + "-" * (len(head) - 2))

    def row(label: str, key: str, field: str, fmt: str = "{:,.1f}") -> None:
        line = f"  {label:<34} {g(ph[key]['direct'].get(field), fmt):>10}"
        for c in chains:
            r = ph[key].get(ratio_key(c))
            line += f" {g(ph[key][c].get(field), fmt):>12} {g(r, '{:.3f}'):>6} {goal(r, key):<16}"
        print(line.rstrip())

    def cycle_row(label: str, field: str) -> None:
        d = ph["connect_10"]["direct"].get(field)
        line = f"  {label:<34} {g(d, '{:.2f}'):>10}"
        for c in chains:
            t = ph["connect_10"][c].get(field)
            line += f" {g(t, '{:.2f}'):>12} {g(ratio(t, d), '{:.2f}'):>6} {'':<16}"
        print(line.rstrip())

    row("pgbench -S, 1 client   [TPS]", "select_1", "tps")
    row("pgbench -S, 10 clients [TPS]", "select_10", "tps")
    row("pgbench -S -C, 10 clients [TPS]", "connect_10", "tps")
    cycle_row("  connect+select p50 [ms]", "cycle_p50_ms")
    cycle_row("  connect+select p90 [ms]", "cycle_p90_ms")
    cycle_row("  connect+select p99 [ms]", "cycle_p99_ms")
    cycle_row("  select alone p90 [ms]", "query_p90_ms")
    row(f"COPY out {summary['copy_mb']} MB [MB/s]", "copy", "mb_per_s")
    print()
    print(
        "  CPU seconds per phase and path. proxy = teleport start (auth+proxy), agent = "
        "teleport db start,"
    )
    print(
        "  tsh = tsh proxy db, tbot = tbot proxy db, postgres = postmaster + backends, "
        "client = pgbench/psql, other = rest of machine"
    )
    cols = ["proxy", "agent", *(h for h in ("tsh", "tbot") if h in summary["hops"]), "postgres"]
    cols += ["client", "other", "wall"]
    print(f"  {'phase':<12}{'path':<13}" + "".join(f"{c:>9}" for c in cols))
    for key in ("select_1", "select_10", "connect_10", "copy"):
        for path in summary["paths"]:
            cpu = ph[key][path]["cpu_s"]
            print(f"  {key:<12}{path:<13}" + "".join(f"{cpu.get(c, 0.0):>9.2f}" for c in cols))
    print()
    print("  CPU per unit through each chain (ms per transaction; ms per MB for COPY)")
    print(f"  {'phase':<12}{'path':<13}" + "".join(f"{c:>9}" for c in cols[:-1]))
    for key in ("select_1", "select_10", "connect_10", "copy"):
        for path in chains:
            per = ph[key][path].get("cpu_ms_per_unit", {})
            print(
                f"  {key:<12}{path:<13}"
                + "".join(f"{per.get(c, float('nan')):>9.3f}" for c in cols[:-1])
            )
    if summary.get("other_load_warning"):
        print(f"\n  warning: {summary['other_load_warning']}")


# ----------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="per pgbench phase (default 20)")
    ap.add_argument("--copy-mb", type=int, default=1024, help="COPY volume in MB (default 1024)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 s phases, 64 MB COPY")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="split each pgbench phase into this many runs per path, alternating direct and "
        "tunnel (ABBA), so load drift hits both alike (default 2; --quick: 1)",
    )
    ap.add_argument(
        "--chains",
        type=lambda v: [p for p in v.split(",") if p],
        default=["tsh", "bot"],
        help="what to compare with direct, comma-separated: tsh (tsh proxy db --tunnel), bot "
        "(tbot proxy db --tunnel fed by tbot start --oneshot); default tsh,bot",
    )
    ap.add_argument("--port", type=int, default=0, help="tsh tunnel port (default: free)")
    ap.add_argument("--pg-shared-buffers", default="256MB", help="PostgreSQL shared_buffers")
    ap.add_argument(
        "--profile",
        type=lambda v: [p for p in v.split(",") if p],
        help="py-spy these processes (comma-separated: tsh,proxy,agent,tbot) during the tunnel "
        "phases (tbot during the bot chain's, the others during the tsh chain's)",
    )
    ap.add_argument(
        "--max-load",
        type=float,
        default=0.0,
        help="before measuring, wait until the 1-minute load average is at most "
        "this (0: do not wait)",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="longest wait for --max-load, seconds (default 600)",
    )
    ap.add_argument("--json-out", type=Path, default=BENCH / "results" / "db_proxy.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.profile and not set(args.profile) <= {"tsh", "proxy", "agent", "tbot"}:
        ap.error("--profile takes tsh, proxy, agent and/or tbot")
    if not args.chains or not set(args.chains) <= set(CHAIN_PATHS):
        ap.error("--chains takes tsh and/or bot")
    args.paths = ["direct", *(CHAIN_PATHS[c] for c in dict.fromkeys(args.chains))]
    if args.quick:
        args.seconds, args.copy_mb = 5.0, 64
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    args.rounds = max(1, args.rounds)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)

    root = Path(tempfile.mkdtemp(prefix="jg-bench-db-"))
    root.chmod(0o755)  # PostgreSQL runs as another user when we are root
    setup = Setup(root, args)
    try:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("cluster (teleport start)", setup.start_cluster),
            ("PostgreSQL (tctl auth sign --format=db)", setup.start_postgres),
            ("direct client certificate (db_client CA)", setup.direct_client_cert),
            ("Database Service agent (teleport db start)", setup.start_agent),
        ]
        if "tunnel" in args.paths:
            steps += [
                ("tsh login + tsh db login", setup.login),
                ("tsh proxy db --tunnel", setup.start_tunnel),
            ]
        if "bot" in args.paths:
            steps.append(("bots add, tbot start --oneshot, tbot proxy", setup.start_bot_tunnel))
        steps.append(("check every path (psql)", setup.check_paths))
        for label, step in steps:
            t0 = time.perf_counter()
            step()
            print(f"set-up: {label:<45} {time.perf_counter() - t0:6.1f} s", flush=True)
        t0 = time.perf_counter()
        run(
            [pg_tool("pgbench"), "-i", "-q", "-s", str(args.scale)],
            env=setup.direct_env,
            timeout=1200,
            what="pgbench -i",
        )
        setup.pg.psql("VACUUM ANALYZE", user="postgres", db=PG_DB)
        print(
            f"set-up: {'pgbench -i -s ' + str(args.scale) + ' (direct)':<45} "
            f"{time.perf_counter() - t0:6.1f} s",
            flush=True,
        )
        # warm the cache (the table fits in shared_buffers)
        run(
            [pg_tool("psql"), "-X", "-qc", "select count(*) from pgbench_accounts"],
            env=setup.direct_env,
        )
        if args.max_load > 0:
            waited = wait_for_load(args.max_load, args.max_wait)
            print(
                f"load: 1-minute load average {loadavg():.2f} after waiting {waited:.0f} s "
                f"(--max-load {args.max_load:g})",
                flush=True,
            )

        bench = Bench(setup, args)
        load_before = loadavg()
        phases: dict[str, Any] = {}
        plan = [
            ("select_1", 1, 1, False),
            ("select_10", 10, 2, False),
            ("connect_10", 10, 10, True),
        ]
        for key, clients, threads, connect in plan:
            print(f"measure: {key:<11} ...", end=" ", flush=True)
            phases[key] = bench.pgbench_phase(key, clients, threads, connect)
            for path in args.paths:
                r = phases[key][path]
                r["cpu_ms_per_unit"] = cpu_ms_per(r["cpu_s"], r["transactions"])
                if path != "direct":
                    phases[key][ratio_key(path)] = ratio(r["tps"], phases[key]["direct"]["tps"])
            print(
                ", ".join(f"{p} {phases[key][p]['tps']:,.1f} TPS" for p in args.paths),
                flush=True,
            )
        print(f"measure: {'copy':<11} ...", end=" ", flush=True)
        phases["copy"] = bench.copy_phase()
        for path in args.paths:
            r = phases["copy"][path]
            r["cpu_ms_per_unit"] = cpu_ms_per(r["cpu_s"], r["bytes"] / MB)
            if path != "direct":
                phases["copy"][ratio_key(path)] = ratio(
                    r["mb_per_s"], phases["copy"]["direct"]["mb_per_s"]
                )
        print(
            ", ".join(f"{p} {phases['copy'][p]['mb_per_s']:,.1f} MB/s" for p in args.paths),
            flush=True,
        )

        chains = [p for p in args.paths if p != "direct"]
        goals = {}
        for path in chains:
            for k, v in GOALS.items():
                r = phases[k][ratio_key(path)]
                goals[goal_key(path, k)] = {"goal": v, "ratio": r, "met": r is not None and r >= v}
        chain_hops = {"tunnel": ("proxy", "agent", "tsh"), "bot": ("proxy", "agent", "tbot")}

        def hop_cost(key: str, path: str) -> dict[str, float]:
            per = phases[key][path].get("cpu_ms_per_unit", {})
            return {h: per.get(h, float("nan")) for h in chain_hops[path]}

        def figures(key: str, field: str) -> dict[str, Any]:
            out: dict[str, Any] = {p: phases[key][p][field] for p in args.paths}
            for p in chains:
                out[ratio_key(p)] = phases[key][ratio_key(p)]
            return out

        disturbed = [
            f"{key}/{path}"
            for key in phases
            for path in args.paths
            if phases[key][path]["cpu_s"]["other"] > 0.15 * phases[key][path]["cpu_s"]["wall"]
        ]
        summary: dict[str, Any] = {
            "benchmark": "db_proxy",
            "commit": git_describe(),
            "quick": args.quick,
            "seconds_per_phase": args.seconds,
            "rounds": args.rounds,
            "copy_mb": args.copy_mb,
            "scale": args.scale,
            "cpus": os.cpu_count(),
            "loadavg_1m_before": load_before,
            "paths": args.paths,
            "hops": sorted({h for p in chains for h in chain_hops[p]}),
            "select_1_tps": figures("select_1", "tps"),
            "select_10_tps": figures("select_10", "tps"),
            "connect_10_p90_ms": {p: phases["connect_10"][p]["cycle_p90_ms"] for p in args.paths},
            "copy_mb_per_s": figures("copy", "mb_per_s"),
            **{
                f"{'' if p == 'tunnel' else p + '_'}hop_cpu_ms_per_{unit}": hop_cost(key, p)
                for p in chains
                for key, unit in (
                    ("select_1", "txn_select_1"),
                    ("select_10", "txn_select_10"),
                    ("connect_10", "connection"),
                    ("copy", "mb_copy"),
                )
            },
            "goals": goals,
            "goals_met": all(g["met"] for g in goals.values()),
            "disturbed_phases": disturbed,
            "phases": phases,
        }
        if bench.spy:
            summary["profile"] = bench.spy
        if load_before > 1.0 or disturbed:
            summary["other_load_warning"] = (
                f"load average {load_before:.2f} before measuring; other processes used more "
                f"than 15 % of a core during {', '.join(disturbed) or 'no phase'}: "
                "the figures are understated, the tunnels' more than the direct ones"
            )
        print_report(summary)
        for name, by_phase in bench.spy.items():
            for phase, prof in by_phase.items():
                print(
                    f"\n{name} profile, {phase} (py-spy, {prof.get('samples')} samples; "
                    f"raw stacks in {prof.get('raw')})"
                )
                print("  top self time (file:line):")
                for f, pct in prof["self"][:15]:
                    print(f"    {pct:5.1f}%  {f}")
                print("  top inclusive time (per function):")
                for f, pct in prof["inclusive"][:15]:
                    print(f"    {pct:5.1f}%  {f}")
        compact = {k: v for k, v in summary.items() if k not in ("phases", "profile")}
        print()
        print(json.dumps(compact, separators=(",", ":")))
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    finally:
        setup.close()
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
