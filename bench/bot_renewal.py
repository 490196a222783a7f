#!/usr/bin/env python3
"""Benchmark: many Machine ID bots renewing against one auth service.

Starts a real single-node cluster (``teleport configure`` + ``teleport start``,
auth and proxy in one process on free loopback ports, as
``cert_issuance.py`` does), creates a role and ``--bots`` bots (default 500)
through the admin RPC ``bots.add`` (the call ``tctl bots add`` makes), and joins
each bot with its single-use token through the real join path: tbot's own
engine (:class:`jumpgate.core.bot.bot.Bot`, memory storage, no outputs) fetches
the cluster's host CA from the proxy, checks it against the CA pin, and posts
``/webapi/bots/join``.

Then every bot renews every ``--interval`` seconds (default 10) for
``--duration`` seconds (default 120), start times spread evenly over the first
interval, each renewal the path ``tbot start`` takes: a fresh P-256 key, the
``bots.renew`` RPC over mutual TLS with the bot's current renewable identity
through the proxy's web port (ALPN ``teleport-auth@<cluster>`` pass-through to
the auth API), the answer checked and saved to the bot's storage before use.
Renewals run on a fixed schedule (``start + k * interval``), so the offered load
is ``bots / interval`` renewals per second whatever the latency.

Reported: renewals/s, p50/p90/p99/max renewal latency, failures (goal 0, grouped
by message), the generation check at the end (every bot's generation as stored
by the auth service, read with ``bots.list``, must equal its count of
successful renewals + 1, and the identity the bot holds must carry it), the
``cert.create`` audit events of the renewals, the CPU used by the server (the
``teleport start`` process), by this process (the 500 bots) and by the rest of
the machine, and error lines in the server's log.

``--quick`` is a smoke run (50 bots, 5 s interval, 20 s). Output: a report and a
final one-line JSON summary (also written to ``--json-out``, default
``bench/results/bot_renewal.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from cert_issuance import (  # noqa: E402
    Cluster,
    loadavg,
    percentile,
    proc_cpu_seconds,
    self_cpu_seconds,
    start_py_spy,
    summarize_py_spy,
    system_cpu_seconds,
)

ROLE_NAME = "bench-bot-role"
ROLE_YAML = f"""\
kind: role
version: v5
metadata:
  name: {ROLE_NAME}
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example]
    db_users: [alice]
"""
#: Server log lines worth reporting (SQLite contention, tracebacks, errors).
LOG_PROBLEMS = re.compile(r"Traceback|database is locked|busy|ERROR|CRITICAL", re.I)


@dataclass
class BotRun:
    """One bot under load: its engine and what happened to its renewals."""

    name: str
    bot: Any  # jumpgate.core.bot.bot.Bot
    offset: float  # first renewal, seconds after the common start
    ok: int = 0
    failed: int = 0
    #: (start, seconds) of each successful renewal, start relative to the common start
    latencies: list[tuple[float, float]] = field(default_factory=list)
    late: list[float] = field(default_factory=list)  # start delay behind schedule, seconds


def git_describe() -> str:
    import subprocess

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
    except OSError:
        return ""
    return head + ("+dirty" if dirty.strip() else "")


# ----------------------------------------------------------------------------- set-up
async def create_bots(admin: Any, n: int, concurrency: int) -> list[tuple[str, str]]:
    """``bots.add`` for bench-bot-0000..: [(name, token)]."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[str, str]:
        name = f"bench-bot-{i:04d}"
        async with sem:
            res = await admin.call("bots.add", name=name, roles=[ROLE_NAME], ttl=3600)
        return name, str(res["token_id"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def join_bots(
    bots: list[tuple[str, str, float]],
    *,
    proxy: str,
    pin: str,
    interval: float,
    ttl: float,
    storage_root: str,
    concurrency: int,
) -> list[BotRun]:
    """Build a tbot engine per bot and join it with its token (``/webapi/bots/join``)."""
    from jumpgate.core.bot.bot import Bot
    from jumpgate.core.bot.config import BotConfig, OnboardingConfig
    from jumpgate.core.bot.config_outputs import DirectoryConfig, MemoryConfig

    sem = asyncio.Semaphore(concurrency)

    async def one(name: str, token: str, offset: float) -> BotRun:
        storage: Any = (
            DirectoryConfig(path=str(Path(storage_root) / name), acls="off")
            if storage_root
            else MemoryConfig()
        )
        cfg = BotConfig(
            proxy_server=proxy,
            onboarding=OnboardingConfig(join_method="token", token=token, ca_pins=[pin]),
            storage=storage,
            outputs=[],
            certificate_ttl=timedelta(seconds=ttl),
            renewal_interval=timedelta(seconds=interval),
        )
        bot = Bot(cfg)
        bot.storage.init()
        async with sem:
            await bot.ensure_identity()
        if bot.ident is None or bot.ident.generation != 1:
            raise RuntimeError(f"bot {name} joined without a generation-1 identity")
        return BotRun(name=name, bot=bot, offset=offset)

    return list(await asyncio.gather(*(one(*b) for b in bots)))


# ----------------------------------------------------------------------------- load
async def renew_all(
    runs: list[BotRun], *, start: float, interval: float, duration: float, errors: Counter[str]
) -> float:
    """Every bot renews at ``start + offset + k * interval`` (perf_counter) until ``duration``.

    Returns the perf_counter time when the last renewal finished.
    """
    from jumpgate.core.errors import JumpgateError

    async def one(run: BotRun) -> None:
        k = 0
        while True:
            due = start + run.offset + k * interval
            if due - start >= duration:
                return
            k += 1
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            run.late.append(max(0.0, t0 - due))
            try:
                await run.bot.renew_cycle()
            except (JumpgateError, OSError) as exc:
                run.failed += 1
                msg = getattr(exc, "message", None) or str(exc)
                errors[f"{type(exc).__name__}: {msg}"[:200]] += 1
                continue
            run.latencies.append((t0 - start, time.perf_counter() - t0))
            run.ok += 1

    await asyncio.gather(*(one(run) for run in runs))
    return time.perf_counter()


async def _worker(params: dict[str, Any], conn: Connection) -> None:
    t0 = time.perf_counter()
    runs = await join_bots(
        params["bots"],
        proxy=params["proxy"],
        pin=params["pin"],
        interval=params["interval"],
        ttl=params["ttl"],
        storage_root=params["storage_root"],
        concurrency=params["concurrency"],
    )
    conn.send(("ready", {"joined": len(runs), "join_s": time.perf_counter() - t0}))
    start_wall = await asyncio.to_thread(conn.recv)
    start = time.perf_counter() + (start_wall - time.time())
    errors: Counter[str] = Counter()
    cpu0 = self_cpu_seconds()
    end = await renew_all(
        runs,
        start=start,
        interval=params["interval"],
        duration=params["duration"],
        errors=errors,
    )
    cpu = self_cpu_seconds() - cpu0
    conn.send(
        (
            "done",
            {
                "bots": [
                    {
                        "name": r.name,
                        "ok": r.ok,
                        "failed": r.failed,
                        "held": r.bot.ident.generation if r.bot.ident is not None else -1,
                    }
                    for r in runs
                ],
                "latencies": [x for r in runs for x in r.latencies],
                "late": [x for r in runs for x in r.late],
                "errors": dict(errors),
                "cpu_s": cpu,
                "seconds": end - start,
            },
        )
    )


def worker_main(params: dict[str, Any], conn: Connection) -> None:
    """A client process: join its share of the bots, then renew them on schedule."""
    import logging
    import traceback

    from jumpgate.core.aio import install_event_loop_policy

    # the bots' own log lines (joined, renewed) would be thousands per second
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    install_event_loop_policy()
    try:
        asyncio.run(_worker(params, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Workers:
    """``--workers`` client processes, each driving a share of the bots."""

    def __init__(self, shares: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for share in shares:
            here, there = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(share, there), daemon=True)
            proc.start()
            there.close()
            self.conns.append(here)
            self.procs.append(proc)

    def gather(self, kind: str, timeout: float) -> list[dict[str, Any]]:
        """The next message of every worker, which must be ``kind``."""
        out = []
        deadline = time.monotonic() + timeout
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"worker pid {proc.pid}: no {kind!r} in {timeout:.0f} s")
            got, payload = conn.recv()
            if got != kind:
                raise RuntimeError(f"worker pid {proc.pid} failed:\n{payload}")
            out.append(payload)
        return out

    def send(self, value: Any) -> None:
        for conn in self.conns:
            conn.send(value)

    def close(self) -> None:
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()


# ----------------------------------------------------------------------------- checks
async def check_generations(admin: Any, bots: list[dict[str, Any]]) -> dict[str, Any]:
    """Stored generation == successful renewals + 1 == the generation the bot holds."""
    listed = await admin.call("bots.list")
    stored = {b["metadata"]["name"]: b.get("status", {}) for b in listed}
    bad: list[str] = []
    locked: list[str] = []
    for b in bots:
        st = stored.get(b["name"], {})
        gen = int(st.get("generation") or 0)
        if st.get("locked"):
            locked.append(b["name"])
        if gen != b["ok"] + 1 or b["held"] != gen:
            bad.append(
                f"{b['name']}: stored {gen}, renewals {b['ok']} (+1 = {b['ok'] + 1}), "
                f"held {b['held']}"
            )
    return {"checked": len(bots), "mismatches": len(bad), "examples": bad[:10], "locked": locked}


async def count_renewal_events(admin: Any) -> tuple[int, int]:
    """(successful, refused) ``cert.create`` events with ``cert_type: bot``."""
    events = await admin.call("events.search", types=["cert.create"], limit=10**9)
    ok = refused = 0
    for ev in events:
        if ev.get("cert_type") != "bot":
            continue
        if ev.get("success", True) is False:
            refused += 1
        else:
            ok += 1
    return ok, refused


def log_problems(path: Path, offset: int) -> list[str]:
    """Problem lines the server logged after byte ``offset``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if LOG_PROBLEMS.search(line)]


# ----------------------------------------------------------------------------- main
def windows(lat: list[tuple[float, float]], width: float, duration: float) -> list[dict[str, Any]]:
    """Latency percentiles per ``width``-second window of renewal start times."""
    out = []
    t = 0.0
    while t < duration:
        xs = sorted(d for s, d in lat if t <= s < t + width)
        out.append(
            {
                "from_s": round(t, 1),
                "renewals": len(xs),
                "p50_ms": round(percentile(xs, 0.5) * 1000, 1) if xs else None,
                "p99_ms": round(percentile(xs, 0.99) * 1000, 1) if xs else None,
                "max_ms": round(xs[-1] * 1000, 1) if xs else None,
            }
        )
        t += width
    return out


def run_bench(args: argparse.Namespace, cluster: Cluster, root: Path) -> dict[str, Any]:
    from jumpgate.core.auth.aclient import AsyncAuthClient
    from jumpgate.core.auth.identityfile import read_identity_file

    assert cluster.proc is not None
    pid = cluster.proc.pid
    ident = read_identity_file(cluster.admin_identity)

    async def admin_call(fn: Any, *a: Any) -> Any:
        admin = AsyncAuthClient(cluster.auth_addr, ident, timeout=300)
        try:
            return await fn(admin, *a)
        finally:
            await admin.close()

    status = cluster.tctl("status").stdout
    m = re.search(r"CA pin\s+(\S+)", status)
    if not m:
        raise RuntimeError(f"no CA pin in tctl status:\n{status}")
    pin = m.group(1)

    t0 = time.perf_counter()
    tokens = asyncio.run(admin_call(create_bots, args.bots, args.setup_concurrency))
    t_create = time.perf_counter() - t0
    print(f"set-up: {args.bots} bots created with bots.add in {t_create:.1f} s", flush=True)

    # first renewals spread evenly over one interval, in random order across the workers
    slots = list(range(args.bots))
    random.shuffle(slots)
    shares: list[dict[str, Any]] = [
        {
            "bots": [],
            "proxy": f"localhost:{cluster.web_port}",
            "pin": pin,
            "interval": args.interval,
            "ttl": args.ttl,
            "duration": args.duration,
            "storage_root": str(root / "bots") if args.storage == "directory" else "",
            "concurrency": max(1, args.setup_concurrency // args.workers),
        }
        for _ in range(args.workers)
    ]
    for i, ((name, token), slot) in enumerate(zip(tokens, slots, strict=True)):
        shares[i % args.workers]["bots"].append((name, token, args.interval * slot / args.bots))

    t0 = time.perf_counter()
    workers = Workers(shares)
    try:
        ready = workers.gather("ready", timeout=600)
        t_join = time.perf_counter() - t0
        joined = sum(r["joined"] for r in ready)
        print(
            f"set-up: {joined} bots joined through POST /webapi/bots/join in {t_join:.1f} s "
            f"({args.workers} client processes, worker start-up included)",
            flush=True,
        )
        if args.max_load > 0:
            w0 = time.monotonic()
            while loadavg() > args.max_load and time.monotonic() - w0 < args.max_wait:
                time.sleep(5)
            print(
                f"load: 1-minute load average {loadavg():.2f} after waiting "
                f"{time.monotonic() - w0:.0f} s (--max-load {args.max_load:g})",
                flush=True,
            )
        events_before = asyncio.run(admin_call(count_renewal_events))
        log_offset = cluster.log_path.stat().st_size

        offered = args.bots / args.interval
        print(
            f"load: {args.bots} bots x one renewal every {args.interval:g} s = {offered:.1f} "
            f"renewals/s offered, for {args.duration:g} s ...",
            flush=True,
        )
        load_before = loadavg()
        start_wall = time.time() + 1.0
        workers.send(start_wall)
        time.sleep(max(0.0, start_wall - time.time()))
        srv0, me0 = proc_cpu_seconds(pid), self_cpu_seconds()
        busy0, _ = system_cpu_seconds()
        spy = start_py_spy(pid, args.spy_out, args.duration) if args.profile else None
        done = workers.gather("done", timeout=args.duration + 600)
        srv_cpu = proc_cpu_seconds(pid) - srv0
        busy1, _ = system_cpu_seconds()
        me_cpu = self_cpu_seconds() - me0
    finally:
        workers.close()
    cli_cpu = sum(d["cpu_s"] for d in done)
    other_cpu = max(0.0, busy1 - busy0 - srv_cpu - cli_cpu - me_cpu)
    elapsed = max(d["seconds"] for d in done)

    bots = [b for d in done for b in d["bots"]]
    gens = asyncio.run(admin_call(check_generations, bots))
    events_after = asyncio.run(admin_call(count_renewal_events))
    problems = log_problems(cluster.log_path, log_offset)
    profile: dict[str, Any] | None = None
    if spy is not None:
        spy.wait(timeout=args.duration + 60)
        if args.spy_out.exists():
            profile = summarize_py_spy(args.spy_out)
            profile["raw"] = str(args.spy_out)

    errors: Counter[str] = Counter()
    for d in done:
        errors.update(d["errors"])
    ok = sum(b["ok"] for b in bots)
    failed = sum(b["failed"] for b in bots)
    timed = [tuple(x) for d in done for x in d["latencies"]]
    lat = sorted(x[1] for x in timed)
    late = sorted(x for d in done for x in d["late"])
    ev_ok = events_after[0] - events_before[0]
    ev_refused = events_after[1] - events_before[1]

    def ms(v: float) -> float:
        return round(v * 1000.0, 2)

    return {
        "benchmark": "bot_renewal",
        "commit": git_describe(),
        "bots": args.bots,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "certificate_ttl_s": args.ttl,
        "storage": args.storage,
        "workers": args.workers,
        "path": "bots.renew through the proxy web port (ALPN teleport-auth@<cluster>)",
        "setup_create_s": round(t_create, 2),
        "setup_join_s": round(t_join, 2),
        "offered_per_sec": round(offered, 2),
        "seconds": round(elapsed, 3),
        "renewals": ok,
        "renewals_per_sec": round(ok / elapsed, 2) if elapsed else None,
        "failures": failed,
        "failure_kinds": dict(errors.most_common(10)),
        "p50_ms": ms(percentile(lat, 0.50)),
        "p90_ms": ms(percentile(lat, 0.90)),
        "p99_ms": ms(percentile(lat, 0.99)),
        "max_ms": ms(lat[-1]) if lat else None,
        "mean_ms": ms(statistics.fmean(lat)) if lat else None,
        "schedule_late_p99_ms": ms(percentile(late, 0.99)),
        "windows": windows(timed, args.interval, args.duration),
        "generation_check": gens,
        "generations_consistent": gens["mismatches"] == 0 and not gens["locked"],
        "audit_renewals_ok": ev_ok,
        "audit_renewals_refused": ev_refused,
        "audit_matches": ev_ok == ok and ev_refused == 0,
        "server_cpu_pct": round(100.0 * srv_cpu / elapsed, 1) if elapsed else None,
        "server_cpu_ms_per_renewal": round(1000.0 * srv_cpu / ok, 3) if ok else None,
        "client_cpu_pct": round(100.0 * cli_cpu / elapsed, 1) if elapsed else None,
        "client_cpu_ms_per_renewal": round(1000.0 * cli_cpu / ok, 3) if ok else None,
        "other_cpu_pct": round(100.0 * other_cpu / elapsed, 1) if elapsed else None,
        "loadavg_1m_before": load_before,
        "server_log_problems": len(problems),
        "server_log_examples": problems[:10],
        "goal_failures": 0,
        "goal_met": failed == 0 and gens["mismatches"] == 0 and not gens["locked"],
        "cpus": os.cpu_count(),
        **({"profile": profile} if profile else {}),
    }


def print_report(s: dict[str, Any]) -> None:
    g = s["generation_check"]
    print()
    print(
        f"Machine ID renewal load: {s['bots']} bots, one bots.renew each every "
        f"{s['interval_s']:g} s for {s['duration_s']:g} s ({s['storage']} storage, "
        f"certificate TTL {s['certificate_ttl_s']:g} s)"
    )
    print(f"  path            {s['path']}")
    print(f"  measured        {s['seconds']:.2f} s")
    print(
        f"  renewals        {s['renewals']}   {s['renewals_per_sec']} renewals/s "
        f"(offered {s['offered_per_sec']}/s)"
    )
    print(
        f"  latency         p50 {s['p50_ms']} ms   p90 {s['p90_ms']} ms   p99 {s['p99_ms']} ms   "
        f"max {s['max_ms']} ms   mean {s['mean_ms']} ms"
    )
    print(f"  schedule        p99 start delay behind schedule {s['schedule_late_p99_ms']} ms")
    print(
        "  per interval    p99 ms by window of renewal starts: "
        + " ".join(str(w["p99_ms"]) for w in s["windows"])
    )
    print(
        f"  failures        {s['failures']}   (goal {s['goal_failures']}: "
        f"{'MET' if s['failures'] == 0 else 'NOT MET'})"
    )
    for msg, n in s["failure_kinds"].items():
        print(f"     {n:6d} x {msg}")
    print(
        f"  generations     {g['checked'] - g['mismatches']}/{g['checked']} bots: stored == "
        f"renewals + 1 == held; locked: {len(g['locked'])} -> "
        f"{'OK' if s['generations_consistent'] else 'MISMATCH'}"
    )
    for line in g["examples"]:
        print(f"     {line}")
    print(
        f"  audit           cert.create (bot) events +{s['audit_renewals_ok']} ok, "
        f"+{s['audit_renewals_refused']} refused -> {'OK' if s['audit_matches'] else 'MISMATCH'}"
    )
    print(
        f"  server CPU      {s['server_cpu_pct']}% of one core "
        f"({s['server_cpu_ms_per_renewal']} ms CPU per renewal; teleport start = auth + proxy)"
    )
    print(
        f"  client CPU      {s['client_cpu_pct']}% of one core "
        f"({s['client_cpu_ms_per_renewal']} ms per renewal; the {s['workers']} client "
        "processes running the bots)"
    )
    print(
        f"  other CPU       {s['other_cpu_pct']}% of one core (rest of the machine; "
        f"load average before: {s['loadavg_1m_before']:.2f})"
    )
    if s["other_cpu_pct"] and s["other_cpu_pct"] > 15:
        print("  warning: other processes competed for the CPUs; latencies are overstated")
    print(f"  server log      {s['server_log_problems']} problem line(s) during the load")
    for line in s["server_log_examples"]:
        print(f"     {line[:200]}")
    print(
        f"  set-up          bots.add x{s['bots']} {s['setup_create_s']} s; joins "
        f"{s['setup_join_s']} s"
    )

    prof = s.get("profile")
    if prof:
        print(
            f"\nserver profile (py-spy, {prof.get('samples')} samples; raw stacks in {prof['raw']})"
        )
        print("  top self time (file:line):")
        for f, pct in prof["self"][:20]:
            print(f"    {pct:5.1f}%  {f}")
        print("  top inclusive time (per function):")
        for f, pct in prof["inclusive"][:25]:
            print(f"    {pct:5.1f}%  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bots", type=int, default=500, help="number of bots (default 500)")
    ap.add_argument(
        "--interval", type=float, default=10.0, help="seconds between renewals (default 10)"
    )
    ap.add_argument(
        "--duration", type=float, default=120.0, help="seconds of renewals (default 120)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 50 bots, 5 s interval, 20 s")
    ap.add_argument(
        "--ttl", type=float, default=3600.0, help="certificate TTL asked for (default 3600 s)"
    )
    ap.add_argument(
        "--storage",
        choices=["memory", "directory"],
        default="memory",
        help="each bot's internal storage (default memory; directory writes files as tbot does)",
    )
    ap.add_argument(
        "--setup-concurrency",
        type=int,
        default=16,
        help="bots created/joined at a time during set-up (default 16)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2,
        help="client processes the bots are spread over (default 2, one per core: a single "
        "event loop driving every bot would add its own queueing to the latencies)",
    )
    ap.add_argument(
        "--max-load",
        type=float,
        default=0.0,
        help="before the renewals, wait until the 1-minute load average is at most this "
        "(0: do not wait)",
    )
    ap.add_argument(
        "--max-wait", type=float, default=600.0, help="longest wait for --max-load (default 600)"
    )
    ap.add_argument("--json-out", type=Path, default=BENCH / "results" / "bot_renewal.json")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during the renewals (slows it; raw stacks next to "
        "--json-out)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary cluster directory")
    args = ap.parse_args()
    args.spy_out = args.json_out.with_suffix(".pyspy.txt")
    if args.quick:
        args.bots, args.interval, args.duration = 50, 5.0, 20.0
    if args.bots < 1 or args.interval <= 0 or args.duration <= 0 or args.workers < 1:
        ap.error("--bots, --interval, --duration and --workers must be positive")
    args.workers = min(args.workers, args.bots)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)

    from jumpgate.core.aio import install_event_loop_policy

    install_event_loop_policy()

    root = Path(tempfile.mkdtemp(prefix="jg-bench-bots-"))
    cluster = Cluster(root / "cluster")
    cluster.root.mkdir()
    try:
        t0 = time.perf_counter()
        cluster.configure()
        cluster.start()
        cluster.tctl("create", "-f", str(_write(root / "role.yaml", ROLE_YAML)))
        assert cluster.proc is not None
        print(
            f"cluster: teleport start pid {cluster.proc.pid}, proxy localhost:{cluster.web_port}, "
            f"auth {cluster.auth_addr} (ready in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        summary = run_bench(args, cluster, root)
        print_report(summary)
        print()
        compact = {k: v for k, v in summary.items() if k != "profile"}
        print(json.dumps(compact, separators=(",", ":")))
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    finally:
        cluster.stop()
        if args.keep:
            print(f"(kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


if __name__ == "__main__":
    sys.exit(main())
