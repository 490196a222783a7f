#!/usr/bin/env python3
"""Benchmark: database-certificate issuance rate through the auth API.

Starts a real single-node cluster (``teleport configure`` + ``teleport start`` in
a temporary data directory, listening on free loopback ports), creates the user
``bench`` with ``tctl users add``, then keeps ``--concurrency`` clients (default
16) calling ``certs.user`` for ``--seconds`` (default 20) with the local admin
identity over keep-alive mutual-TLS connections. Every call asks for a database
certificate (``route_to_database``), so the server does the full path: user
lookup, RBAC checker, lock check, ECDSA signing and a ``cert.create`` audit event.
Each call passes ``"cas": false`` (the client already holds the cluster's CA
certificates, so only the new certificate needs to come back); ``--with-cas``
asks for the four CA bundles in every response too, as tctl and tsh do.

Client modes (``--client``), all over keep-alive connections, one per client:

* ``raw`` (default): one asyncio process (uvloop when installed) with
  ``--concurrency`` tasks, each on its own TLS connection speaking minimal
  HTTP/1.1 through an ``asyncio.Protocol``; request bytes are pre-built. This
  loads the client least (~0.13 ms CPU per call vs ~0.5 ms for aiohttp), which
  matters on a 2-core machine where the server needs the other core.
* ``aiohttp``: the same process model through ``aiohttp.ClientSession`` with a
  ``TCPConnector(ssl=client_ssl_context(...))`` and
  ``server_hostname="teleport.cluster.local"``.
* ``threads``: ``--concurrency`` threads sharing one sync ``AuthClient`` (one
  keep-alive connection per thread); most client CPU per call plus GIL hand-offs.

Public keys come from a pre-generated pool of P-256 keys so that key generation
does not cost client CPU during the measurement.

Output: a human-readable report and a final one-line JSON summary (also written
to ``--json-out`` when given). Goal: >= 2,000 db-cert issues/s.

``--profile`` samples the server with py-spy (``pip install py-spy`` into the
venv) during the measurement and prints its hottest functions; the raw
collapsed stacks are kept next to ``--json-out`` (or in the temp dir with
``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

GOAL_PER_SEC = 2000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
VENV_BIN = Path(sys.executable).parent
CLIENT_NOTE = {
    "raw": "one uvloop process, tasks on raw asyncio.Protocol HTTP/1.1 connections "
    "(the cheapest client: least client CPU per call)",
    "aiohttp": "one uvloop process, tasks sharing an aiohttp ClientSession (keep-alive TCPConnector)",
    "threads": "threads sharing one sync AuthClient (a keep-alive connection per thread)",
}
ROUTE = {
    "service_name": "example",
    "protocol": "postgres",
    "username": "alice",
    "database": "example",
}


# ----------------------------------------------------------------------------- helpers
def tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else from PATH."""
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        sys.exit(f"cannot find {name!r}: run from the project venv (.venv/bin/python bench/...)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and of its live child processes (auth workers)."""
    total = proc_cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:  # field 4: ppid
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds over all cores from /proc/stat."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def make_key_pool(n: int) -> list[str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = []
    for _ in range(n):
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        out.append(
            pub.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        )
    return out


# ----------------------------------------------------------------------------- cluster
class Cluster:
    """A throw-away ``teleport start`` with its own data dir and loopback ports."""

    def __init__(self, root: Path, *, auth_workers: int = 1) -> None:
        self.root = root
        self.auth_workers = auth_workers
        self.config = root / "teleport.yaml"
        self.data_dir = root / "data"
        self.log_path = root / "teleport.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.auth_port = 0
        self.web_port = 0

    def tctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("tctl"), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def configure(self) -> None:
        import yaml

        subprocess.run(
            [
                tool("teleport"),
                "configure",
                "--cluster-name=bench",
                f"--data-dir={self.data_dir}",
                f"--output=file://{self.config}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cfg = yaml.safe_load(self.config.read_text())
        self.auth_port, self.web_port = free_port(), free_port()
        while self.web_port == self.auth_port:
            self.web_port = free_port()
        cfg["auth_service"]["listen_addr"] = f"127.0.0.1:{self.auth_port}"
        cfg["proxy_service"]["web_listen_addr"] = f"127.0.0.1:{self.web_port}"
        cfg["proxy_service"]["public_addr"] = f"localhost:{self.web_port}"
        cfg["teleport"]["log"]["severity"] = "WARN"
        if self.auth_workers != 1:
            cfg["auth_service"]["workers"] = self.auth_workers
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [tool("teleport"), "start", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"teleport start exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            if (self.data_dir / "proc" / "auth_addr").exists() and self.tctl(
                "status", check=False
            ).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"teleport did not become ready in {timeout}s:\n{self.log_path.read_text()}"
        )

    @property
    def auth_addr(self) -> str:
        return (self.data_dir / "proc" / "auth_addr").read_text().strip()

    @property
    def admin_identity(self) -> Path:
        return self.data_dir / "proc" / "admin.pem"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------- load
class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.end = 0.0  # perf_counter() when the phase ended


def _body(key: str, *, with_cas: bool = False) -> bytes:
    params: dict[str, Any] = {
        "username": "bench",
        "public_key": key,
        "ttl": 3600,
        "route_to_database": ROUTE,
    }
    if not with_cas:
        params["cas"] = False  # the client holds the CAs already: only the certificate back
    return json.dumps(params).encode()


async def _run_aiohttp(
    addr: str,
    ident: Any,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    on_measure_start: Any,
) -> tuple[Stats, Stats]:
    import aiohttp

    from jumpgate.core.auth.client import API_DOMAIN, client_ssl_context, split_hostport

    host, port = split_hostport(addr, 3025)
    ctx = client_ssl_context(ident, alpn=["http/1.1"])
    url = f"https://{host}:{port}/v1/rpc/certs.user"
    warm, meas = Stats(), Stats()
    phase: dict[str, Any] = {"stats": warm, "stop": False}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(i: int) -> None:
            n = i
            while not phase["stop"]:
                body = bodies[n % len(bodies)]
                n += concurrency
                st: Stats = phase["stats"]
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, server_hostname=API_DOMAIN) as resp:
                        raw = await resp.read()
                    dt = time.perf_counter() - t0
                    if resp.status != 200:
                        st.errors[f"HTTP {resp.status}: {raw[:120]!r}"] += 1
                        continue
                    if b'"result"' not in raw[:16]:
                        st.errors[f"bad body: {raw[:120]!r}"] += 1
                        continue
                    st.ok += 1
                    st.latencies.append(dt)
                except Exception as exc:  # keep going; report the kinds
                    st.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                    await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        phase["stats"] = meas
        on_measure_start()
        await asyncio.sleep(seconds)
        phase["stop"] = True
        on_measure_end = time.perf_counter()
        await asyncio.gather(*tasks)
        meas.end = on_measure_end
    return warm, meas


class _RawHTTP(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client protocol: one request in flight, Content-Length only."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.need = -1
        self.status = 0
        self.head = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).split(b"\r\n")
            self.status = int(head[0].split(b" ", 2)[1])
            self.need = -2
            for h in head[1:]:
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.need = int(value)
            if self.need == -2:
                assert self.waiter is not None
                self.waiter.set_exception(RuntimeError("response without Content-Length"))
                return
            self.head = end + 4
        if len(self.buf) - self.head >= self.need:
            body = bytes(self.buf[self.head : self.head + self.need])
            del self.buf[: self.head + self.need]
            self.need = -1
            assert self.waiter is not None
            if not self.waiter.done():
                self.waiter.set_result((self.status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _run_raw(
    addr: str,
    ident: Any,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    on_measure_start: Any,
) -> tuple[Stats, Stats]:
    from jumpgate.core.auth.client import API_DOMAIN, client_ssl_context, split_hostport

    host, port = split_hostport(addr, 3025)
    ctx = client_ssl_context(ident, alpn=["http/1.1"])
    reqs = [
        (
            f"POST /v1/rpc/certs.user HTTP/1.1\r\nHost: {API_DOMAIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    loop = asyncio.get_running_loop()
    warm, meas = Stats(), Stats()
    phase: dict[str, Any] = {"stats": warm, "stop": False}

    async def connect() -> _RawHTTP:
        _, proto = await loop.create_connection(
            _RawHTTP, host, port, ssl=ctx, server_hostname=API_DOMAIN
        )
        return proto

    async def worker(i: int) -> None:
        n = i
        conn: _RawHTTP | None = None
        while not phase["stop"]:
            req = reqs[n % len(reqs)]
            n += concurrency
            st: Stats = phase["stats"]
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await connect()
                status, raw = await conn.request(req)
                dt = time.perf_counter() - t0
                if status != 200:
                    st.errors[f"HTTP {status}: {raw[:120]!r}"] += 1
                    continue
                if b'"result"' not in raw[:16]:
                    st.errors[f"bad body: {raw[:120]!r}"] += 1
                    continue
                st.ok += 1
                st.latencies.append(dt)
            except Exception as exc:
                st.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    phase["stats"] = meas
    on_measure_start()
    await asyncio.sleep(seconds)
    phase["stop"] = True
    end = time.perf_counter()
    await asyncio.gather(*tasks)
    meas.end = end
    return warm, meas


def _run_loop(coro: Coroutine[Any, Any, tuple[Stats, Stats]]) -> tuple[Stats, Stats]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_raw(*args: Any) -> tuple[Stats, Stats]:
    return _run_loop(_run_raw(*args))


def run_aiohttp(*args: Any) -> tuple[Stats, Stats]:
    return _run_loop(_run_aiohttp(*args))


def run_threads(
    addr: str,
    ident: Any,
    bodies: list[bytes],
    concurrency: int,
    warmup: float,
    seconds: float,
    on_measure_start: Any,
) -> tuple[Stats, Stats]:
    from jumpgate.core.auth.client import AuthClient

    client = AuthClient(addr, ident)
    calls = [json.loads(b) for b in bodies]
    warm, meas = Stats(), Stats()
    phase: dict[str, Any] = {"stats": warm, "stop": False}
    lock = threading.Lock()

    def worker(i: int) -> None:
        n = i
        while not phase["stop"]:
            params = calls[n % len(calls)]
            n += concurrency
            st: Stats = phase["stats"]
            t0 = time.perf_counter()
            try:
                client.call("certs.user", **params)
                dt = time.perf_counter() - t0
                with lock:
                    st.ok += 1
                    st.latencies.append(dt)
            except Exception as exc:
                with lock:
                    st.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                time.sleep(0.01)
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    phase["stats"] = meas
    on_measure_start()
    time.sleep(seconds)
    phase["stop"] = True
    end = time.perf_counter()
    for t in threads:
        t.join()
    meas.end = end
    return warm, meas


# ----------------------------------------------------------------------------- profiling
def start_py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not spy:
        print(
            "--profile: py-spy not found; install it with .venv/bin/pip install py-spy",
            file=sys.stderr,
        )
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--duration",
            str(max(1, int(seconds))),
            "--output",
            str(out),
            "--nonblocking",
            *(["--gil"] if os.environ.get("PYSPY_GIL") else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _strip_line(frame: str) -> str:
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def summarize_py_spy(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Self sample shares per source line and inclusive shares per function (py-spy raw stacks)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames:
            self_c[frames[-1]] += n
        # inclusive time per function: py-spy names frames "func (file:line)"; drop the line
        for f in {_strip_line(f) for f in frames}:
            incl_c[f] += n
    if not total:
        return {"self": [], "inclusive": []}

    # drop the start-up call chain every request runs under (teleport main -> click -> asyncio)
    top_incl = max(incl_c.values())
    for f in [f for f, n in incl_c.items() if n >= 0.98 * top_incl]:
        del incl_c[f]

    def fmt(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, 100.0 * n / total) for f, n in c.most_common(top)]

    return {"self": fmt(self_c), "inclusive": fmt(incl_c), "samples": total}  # type: ignore[dict-item]


# ----------------------------------------------------------------------------- main
def count_cert_create(addr: str, ident: Any) -> int | None:
    from jumpgate.core.auth.client import AuthClient

    try:
        client = AuthClient(addr, ident, timeout=120)
        events = client.call("events.search", types=["cert.create"], limit=10**9)
        client.close()
        return len(events)
    except Exception as exc:
        print(f"(could not count cert.create events: {exc})", file=sys.stderr)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement time (default 20)")
    ap.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up before measuring (default 2)"
    )
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--client", choices=["raw", "aiohttp", "threads"], default="raw")
    ap.add_argument(
        "--keys", type=int, default=256, help="size of the pre-generated P-256 key pool"
    )
    ap.add_argument(
        "--with-cas",
        action="store_true",
        help="ask for the CA certificates in every response too (as tctl/tsh do by default)",
    )
    ap.add_argument(
        "--auth-workers",
        type=int,
        default=1,
        help="auth_service.workers of the cluster: processes serving the auth API (default 1)",
    )
    ap.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    ap.add_argument("--profile", action="store_true", help="sample the server with py-spy")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cluster directory")
    args = ap.parse_args()

    from jumpgate.core.auth.identityfile import read_identity_file

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="jg-bench-"))
    cluster = Cluster(root, auth_workers=args.auth_workers)
    spy: subprocess.Popen[bytes] | None = None
    spy_out = args.json_out.with_suffix(".pyspy.txt") if args.json_out else root / "pyspy.txt"
    try:
        t0 = time.perf_counter()
        cluster.configure()
        cluster.start()
        startup = time.perf_counter() - t0
        cluster.tctl(
            "users", "add", "bench", "--roles=access", "--db-users=alice", "--db-names=example"
        )
        assert cluster.proc is not None
        pid = cluster.proc.pid
        addr = cluster.auth_addr
        ident = read_identity_file(cluster.admin_identity)
        print(
            f"cluster: teleport start pid {pid}, auth {addr}, data dir {cluster.data_dir} "
            f"(ready in {startup:.1f}s)"
        )

        kt = time.perf_counter()
        bodies = [_body(k, with_cas=args.with_cas) for k in make_key_pool(args.keys)]
        print(
            f"key pool: {args.keys} P-256 public keys pre-generated in {time.perf_counter() - kt:.2f}s"
        )

        events_before = count_cert_create(addr, ident)
        load_before = loadavg()

        marks: dict[str, float] = {}

        def on_measure_start() -> None:
            nonlocal spy
            marks["t"] = time.perf_counter()
            marks["srv"] = tree_cpu_seconds(pid)
            marks["cli"] = self_cpu_seconds()
            marks["sys_busy"], marks["sys_total"] = system_cpu_seconds()
            if args.profile:
                spy = start_py_spy(pid, spy_out, args.seconds)

        runner = {"raw": run_raw, "aiohttp": run_aiohttp, "threads": run_threads}[args.client]
        print(
            f"load: {args.concurrency} concurrent {args.client} clients, "
            f"{args.warmup:g}s warm-up + {args.seconds:g}s measured ...",
            flush=True,
        )
        warm, meas = runner(
            addr, ident, bodies, args.concurrency, args.warmup, args.seconds, on_measure_start
        )
        end = meas.end
        srv_cpu = tree_cpu_seconds(pid) - marks["srv"]
        cli_cpu = self_cpu_seconds() - marks["cli"]
        busy, _total = system_cpu_seconds()
        other_cpu = max(0.0, busy - marks["sys_busy"] - srv_cpu - cli_cpu)
        elapsed = end - marks["t"]

        issued_total = warm.ok + meas.ok
        # each auth process writes its audit events in batches (every 20 ms); the search
        # runs in one of them: give the others' last batches a moment to land
        settle = time.monotonic() + 5.0
        events_after = count_cert_create(addr, ident)
        while (
            events_before is not None
            and events_after is not None
            and events_after - events_before < issued_total
            and time.monotonic() < settle
        ):
            time.sleep(0.05)
            events_after = count_cert_create(addr, ident)
        if events_before is not None and events_after is not None:
            grew = events_after - events_before
            audit_ok: bool | None = grew == issued_total
            audit_line = (
                f"cert.create events: {events_before} -> {events_after} (+{grew}); "
                f"successful issuances incl. warm-up: {issued_total} -> "
                f"{'OK' if audit_ok else 'MISMATCH'}"
            )
        else:
            grew, audit_ok, audit_line = None, None, "cert.create events: not counted"

        lat = sorted(meas.latencies)
        rate = meas.ok / elapsed if elapsed > 0 else 0.0
        errors = sum(meas.errors.values())
        summary: dict[str, Any] = {
            "benchmark": "cert_issuance",
            "client": args.client,
            "with_cas": args.with_cas,
            "concurrency": args.concurrency,
            "auth_workers": args.auth_workers,
            "seconds": round(elapsed, 3),
            "issued": meas.ok,
            "issues_per_sec": round(rate, 1),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
            "errors": errors,
            "server_cpu_pct": round(100.0 * srv_cpu / elapsed, 1) if elapsed else None,
            "client_cpu_pct": round(100.0 * cli_cpu / elapsed, 1) if elapsed else None,
            "other_cpu_pct": round(100.0 * other_cpu / elapsed, 1) if elapsed else None,
            "loadavg_1m_before": load_before,
            "server_cpu_ms_per_issue": round(1000.0 * srv_cpu / meas.ok, 3) if meas.ok else None,
            "warmup_issued": warm.ok,
            "warmup_errors": sum(warm.errors.values()),
            "cert_create_events_added": grew,
            "audit_matches": audit_ok,
            "goal_issues_per_sec": GOAL_PER_SEC,
            "goal_met": rate >= GOAL_PER_SEC,
            "cpus": os.cpu_count(),
        }

        print()
        print(
            f"db-cert issuance via certs.user ({args.client} client, {args.concurrency} concurrent, "
            f"keep-alive mTLS, audit on)"
        )
        print(f"  client          {CLIENT_NOTE[args.client]}")
        print(f"  measured        {elapsed:.2f} s")
        print(f"  issued          {meas.ok}")
        print(
            f"  rate            {rate:,.1f} issues/s   (goal >= {GOAL_PER_SEC:,.0f}/s: "
            f"{'MET' if rate >= GOAL_PER_SEC else 'NOT MET'})"
        )
        print(
            f"  latency         p50 {summary['p50_ms']} ms   p99 {summary['p99_ms']} ms   "
            f"mean {summary['mean_ms']} ms"
        )
        print(f"  errors          {errors}")
        for msg, n in meas.errors.most_common(5):
            print(f"     {n:6d} x {msg}")
        procs = "" if args.auth_workers == 1 else f", {args.auth_workers} auth processes"
        print(
            f"  server CPU      {summary['server_cpu_pct']}% of one core "
            f"({summary['server_cpu_ms_per_issue']} ms CPU per issue{procs})"
        )
        print(f"  client CPU      {summary['client_cpu_pct']}% of one core (this process)")
        print(
            f"  other CPU       {summary['other_cpu_pct']}% of one core (everything else on the "
            f"machine{', py-spy included' if args.profile else ''}; "
            f"load average before: {load_before:.2f})"
        )
        if not args.profile and summary["other_cpu_pct"] and summary["other_cpu_pct"] > 15:
            print("  warning: other processes competed for the CPUs; the rate is understated")
        print(f"  audit           {audit_line}")

        if spy is not None:
            spy.wait(timeout=args.seconds + 60)
            if spy_out.exists():
                prof = summarize_py_spy(spy_out)
                summary["profile"] = str(spy_out)
                print(
                    f"\nserver profile (py-spy, {prof.get('samples')} samples; raw stacks in {spy_out})"
                )
                print("  top self time (file:line):")
                for f, pct in prof["self"][:20]:
                    print(f"    {pct:5.1f}%  {f}")
                print("  top inclusive time (per function):")
                for f, pct in prof["inclusive"][:25]:
                    print(f"    {pct:5.1f}%  {f}")
            else:
                err = spy.stderr.read().decode() if spy.stderr else ""
                print(f"\npy-spy produced no profile: {err.strip()}")

        line = json.dumps(summary, separators=(",", ":"))
        print()
        print(line)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        cluster.stop()
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
