#!/usr/bin/env python3
"""Benchmark: a web app directly vs through ``tsh proxy app`` (application access).

Starts, in temporary directories: the test web app (tests/integration/app_upstream.py,
aiohttp, its own process), a cluster (``teleport start``: auth + proxy + App Service
in one process, the App Service serving that app), a user (``tctl users add`` and the
invite form, then ``tsh login`` with ``TELEPORT_HOME`` in a temp dir), ``tsh apps
login`` and ``tsh proxy app`` in the background. Then ``wrk`` (keep-alive, 16
connections, 2 threads, ``--seconds`` each, default 20) runs against ``GET
/api/users``:

* DIRECT: ``http://127.0.0.1:<app port>/api/users``;
* PROXY: ``http://127.0.0.1:<tsh proxy app port>/api/users`` — the local proxy
  carries the user's app certificate to the proxy over mutual TLS, the App Service
  forwards HTTP (JWT and X-Forwarded-* headers added) to the app.

The parts alternate over ``--rounds`` (default 2) so a change in the machine's load
hits both. Output: requests/s, latency, the ratio (goal >= 0.5x), and one JSON line
(also written to ``--json-out``, default bench/results/app_proxy.json).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "bench"))
from cert_issuance import (  # noqa: E402
    proc_cpu_seconds,
    start_py_spy,
    summarize_py_spy,
    system_cpu_seconds,
)

PASSWORD = "a long enough passphrase"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def env(home: Path | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPORT_", "TCTL_"))}
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    if home is not None:
        e["TELEPORT_HOME"] = str(home)
    return e


def run(*argv: str | Path, home: Path | None = None, input: str | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env(home), input=input
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def wrk(url: str, seconds: int) -> dict[str, float]:
    out = run("wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    mean_ms = float(lat.group(1)) * scale[lat.group(2)] if lat else 0.0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0
    return {"rps": rps, "latency_ms": mean_ms, "p99_ms": p99_ms}


def measured(
    url: str, seconds: int, pids: dict[str, int], profile: Path | None = None
) -> dict[str, float]:
    """``wrk`` against ``url``; with the CPU milliseconds per request of each of ``pids``
    (and of the rest of the machine: wrk and anything else) during the run."""
    spies = []
    if profile is not None:
        for name in ("teleport", "tsh"):
            spy = start_py_spy(pids[name], profile / f"{name}.txt", seconds)
            if spy is not None:
                spies.append(spy)
    before = {n: proc_cpu_seconds(p) for n, p in pids.items()}
    busy0, _ = system_cpu_seconds()
    r = wrk(url, seconds)
    busy1, _ = system_cpu_seconds()
    for spy in spies:
        spy.wait(timeout=seconds + 30)
    n = max(r["rps"] * seconds, 1.0)
    ours = 0.0
    for name, pid in pids.items():
        used = proc_cpu_seconds(pid) - before[name]
        ours += used
        r[f"cpu_ms_{name}"] = used * 1000 / n
    r["cpu_ms_rest"] = max(busy1 - busy0 - ours, 0.0) * 1000 / n
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json-out", default=str(REPO / "bench/results/app_proxy.json"))
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample teleport and tsh proxy app with py-spy during the first proxy run",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk (scripts/install-system-deps.sh)")

    root = Path(tempfile.mkdtemp(prefix="jg-appbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        app_port, web_port, auth_port = free_port(), free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.integration.app_upstream", f"--port={app_port}"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env(),
            )
        )
        cfg = root / "teleport.yaml"
        run(
            BIN / "teleport",
            "configure",
            "-o",
            f"file://{cfg}",
            "--cluster-name=bench.test",
            f"--public-addr=localhost:{web_port}",
            f"--data-dir={root / 'data'}",
        )
        import yaml

        doc = yaml.safe_load(cfg.read_text())
        doc["auth_service"]["listen_addr"] = f"127.0.0.1:{auth_port}"
        doc["proxy_service"]["web_listen_addr"] = f"127.0.0.1:{web_port}"
        doc["app_service"] = {
            "enabled": True,
            "apps": [{"name": "bench", "uri": f"http://127.0.0.1:{app_port}"}],
        }
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        log = (root / "teleport.log").open("wb")
        procs.append(
            subprocess.Popen(
                [BIN / "teleport", "start", "-c", cfg], stdout=log, stderr=log, env=env()
            )
        )
        wait_port(app_port)
        wait_port(web_port)
        deadline = time.monotonic() + 30
        while not (root / "data/proc/auth_addr").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        out = run(BIN / "tctl", "-c", cfg, "users", "add", "bencher", "--roles=access")
        url = re.search(r"https://\S+/web/invite/[0-9a-f]+", out).group(0)  # type: ignore[union-attr]
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPSConnection("localhost", web_port, context=ctx, timeout=30)
        conn.request(
            "POST",
            parts.path,
            body=urllib.parse.urlencode({"password": PASSWORD, "password_confirm": PASSWORD}),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": f"https://{parts.netloc}",
            },
        )
        assert conn.getresponse().status == 200
        home = root / "tsh"
        run(
            BIN / "tsh",
            "login",
            f"--proxy=localhost:{web_port}",
            "--user=bencher",
            "--insecure",
            home=home,
            input=PASSWORD + "\n",
        )
        run(BIN / "tsh", "apps", "login", "bench", home=home)
        proxy_port = free_port()
        procs.append(
            subprocess.Popen(
                [BIN / "tsh", "proxy", "app", "bench", f"--port={proxy_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env(home),
            )
        )
        wait_port(proxy_port)
        direct_url = f"http://127.0.0.1:{app_port}/api/users"
        proxy_url = f"http://127.0.0.1:{proxy_port}/api/users"
        run("curl", "-fsS", proxy_url)  # warm and check the path works
        pids = {"app": procs[0].pid, "teleport": procs[1].pid, "tsh": procs[2].pid}
        results: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
        for i in range(args.rounds):
            results["direct"].append(measured(direct_url, args.seconds, pids))
            prof = root if args.profile and i == 0 else None
            results["proxy"].append(measured(proxy_url, args.seconds, pids, prof))
        summary = {}
        cpu_keys = [f"cpu_ms_{n}" for n in (*pids, "rest")]
        for name, rs in results.items():
            summary[name] = {
                "rps": sum(r["rps"] for r in rs) / len(rs),
                "latency_ms": sum(r["latency_ms"] for r in rs) / len(rs),
                "p99_ms": max(r["p99_ms"] for r in rs),
                **{k: sum(r[k] for r in rs) / len(rs) for k in cpu_keys},
            }
        ratio = summary["proxy"]["rps"] / summary["direct"]["rps"]
        cols = "".join(f"{k[7:]:>10}" for k in cpu_keys)
        print(f"{'path':<8} {'req/s':>10} {'mean ms':>9} {'p99 ms':>8}   CPU ms/request:{cols}")
        for name, s in summary.items():
            cpu = "".join(f"{s[k]:>10.3f}" for k in cpu_keys)
            print(
                f"{name:<8} {s['rps']:>10.0f} {s['latency_ms']:>9.2f} {s['p99_ms']:>8.2f}"
                f"   {'':15}{cpu}"
            )
        print(f"ratio proxy/direct: {ratio:.2f}x (goal >= 0.50x)")
        if args.profile:
            for name in ("teleport", "tsh"):
                raw = root / f"{name}.txt"
                if not raw.exists():
                    continue
                prof_sum = summarize_py_spy(raw)
                print(f"\n{name} profile (py-spy): top self time")
                for where, share in prof_sum["self"][:20]:
                    print(f"  {share:6.1f}%  {where}")
                print(f"{name}: top inclusive time")
                for where, share in prof_sum["inclusive"][:25]:
                    print(f"  {share:6.1f}%  {where}")
        line = {
            "bench": "app_proxy",
            "seconds": args.seconds,
            "rounds": args.rounds,
            "connections": 16,
            **{f"{k}_{m}": round(v, 2) for k, s in summary.items() for m, v in s.items()},
            "ratio": round(ratio, 3),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(line))
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(line) + "\n")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=20)
            if p.poll() is None:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
