#!/usr/bin/env python3
"""Benchmark: wall time of CLI start-up compared with the bare interpreter.

Runs each command ``--runs`` times (default 20) after ``--warmup`` runs (default
2) with stdout/stderr discarded, using ``hyperfine`` when it is installed
(``--export-json``) and otherwise a ``time.perf_counter`` + ``subprocess`` loop
that goes round-robin over the commands (so background load hits all alike).
The baseline is ``python3 -c pass`` with the project venv's interpreter, so
``site`` and the editable-install ``.pth`` processing count in the baseline too.

Then prints the slowest imports of ``tctl --help`` from ``python -X importtime``
(median of ``--importtime-runs`` runs; cumulative and self time) so it is clear
what to make lazy.

Goal: every command's mean <= 4x the bare interpreter's mean.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

GOAL_RATIO = 4.0
VENV_BIN = Path(sys.executable).parent
PY = str(VENV_BIN / "python3") if (VENV_BIN / "python3").exists() else sys.executable


def tool(name: str) -> str:
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        sys.exit(f"cannot find {name!r}: run from the project venv (.venv/bin/python bench/...)")
    return found


def commands() -> list[tuple[str, list[str]]]:
    return [
        ("python3 -c pass", [PY, "-c", "pass"]),
        ("tctl --help", [tool("tctl"), "--help"]),
        ("tsh version", [tool("tsh"), "version"]),
        ("tbot --help", [tool("tbot"), "--help"]),
        ("teleport version", [tool("teleport"), "version"]),
    ]


def clean_env() -> dict[str, str]:
    """The caller's environment minus variables that would change what the CLIs do."""
    env = dict(os.environ)
    for k in ("TELEPORT_CONFIG_FILE", "TELEPORT_PROXY", "TELEPORT_HOME", "PYTHONPROFILEIMPORTTIME"):
        env.pop(k, None)
    env["PYTHONDONTWRITEBYTECODE"] = env.get("PYTHONDONTWRITEBYTECODE", "")
    return env


def check_commands(cmds: list[tuple[str, list[str]]], env: dict[str, str]) -> None:
    for name, argv in cmds:
        r = subprocess.run(argv, capture_output=True, env=env, timeout=60)
        if r.returncode != 0:
            sys.exit(f"{name!r} exited with {r.returncode}:\n{r.stderr.decode(errors='replace')}")


def run_loop(
    cmds: list[tuple[str, list[str]]], runs: int, warmup: int, env: dict[str, str]
) -> dict[str, list[float]]:
    """Round-robin over the commands so background noise hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for i in range(warmup + runs):
        for name, argv in cmds:
            t0 = time.perf_counter()
            subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True
            )
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_hyperfine(
    hf: str, cmds: list[tuple[str, list[str]]], runs: int, warmup: int, env: dict[str, str]
) -> dict[str, list[float]]:
    import shlex

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "hf.json"
        argv = [
            hf,
            "--shell=none",
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--export-json",
            str(out),
            "--style",
            "basic",
        ]
        for name, cmd in cmds:
            argv += ["--command-name", name, shlex.join(cmd)]
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    return {r["command"]: list(r["times"]) for r in data["results"]}


def importtime(argv: list[str], runs: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """Per-module median self/cumulative import time (µs) for ``argv`` run under -X importtime."""
    selfs: dict[str, list[int]] = defaultdict(list)
    cums: dict[str, list[int]] = defaultdict(list)
    depth: dict[str, int] = {}
    for _ in range(runs):
        r = subprocess.run(
            [PY, "-X", "importtime", *argv], capture_output=True, text=True, env=env, timeout=60
        )
        for line in r.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            parts = line[len("import time:") :].split("|", 2)
            if len(parts) != 3 or not parts[0].strip().isdigit() or not parts[1].strip().isdigit():
                continue
            self_us, cum_us, raw_name = parts
            name = raw_name.strip()
            depth[name] = (len(raw_name) - len(raw_name.lstrip(" ")) - 1) // 2
            selfs[name].append(int(self_us))
            cums[name].append(int(cum_us))
    out = []
    for name in cums:
        out.append(
            {
                "module": name,
                "self_us": int(statistics.median(selfs[name])),
                "cumulative_us": int(statistics.median(cums[name])),
                "depth": depth.get(name, 0),
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--importtime-runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=15, help="how many imports to list")
    ap.add_argument(
        "--no-hyperfine", action="store_true", help="use the Python loop even if hyperfine exists"
    )
    ap.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    args = ap.parse_args()

    env = clean_env()
    cmds = commands()
    check_commands(cmds, env)
    hf = None if args.no_hyperfine else shutil.which("hyperfine")
    method = "hyperfine" if hf else "python loop (time.perf_counter + subprocess.run)"
    print(f"CLI start-up: {args.runs} runs after {args.warmup} warm-ups each, via {method}")
    load_before = loadavg()
    print(
        f"interpreter: {PY} ({sys.version.split()[0]}); {os.cpu_count()} CPUs; "
        f"load average {load_before:.2f}"
    )
    if load_before > 0.5:
        print(
            "  warning: the machine is busy; figures will be noisy "
            "(the min and median ratios are steadier than the mean)"
        )
    if hf:
        times = run_hyperfine(hf, cmds, args.runs, args.warmup, env)
    else:
        times = run_loop(cmds, args.runs, args.warmup, env)

    base_name = cmds[0][0]
    base = statistics.fmean(times[base_name])
    base_median = statistics.median(times[base_name])
    base_min = min(times[base_name])
    rows: list[dict[str, Any]] = []
    print()
    print(
        f"  {'command':<20} {'mean':>9} {'median':>9} {'min':>9} {'stdev':>8} "
        f"{'x py mean':>10} {'x py median':>12} {'x py min':>9}"
    )
    for name, _ in cmds:
        t = times[name]
        mean = statistics.fmean(t)
        row: dict[str, Any] = {
            "command": name,
            "mean_ms": round(mean * 1000, 2),
            "median_ms": round(statistics.median(t) * 1000, 2),
            "min_ms": round(min(t) * 1000, 2),
            "stdev_ms": round(statistics.stdev(t) * 1000, 2) if len(t) > 1 else 0.0,
            "ratio": round(mean / base, 2),
            "median_ratio": round(statistics.median(t) / base_median, 2),
            "min_ratio": round(min(t) / base_min, 2),
        }
        if name != base_name:
            row["goal_met"] = row["ratio"] <= GOAL_RATIO
        rows.append(row)
        mark = "" if name == base_name else ("  ok" if row["goal_met"] else "  OVER GOAL")
        print(
            f"  {name:<20} {row['mean_ms']:>7.1f}ms {row['median_ms']:>7.1f}ms {row['min_ms']:>7.1f}ms "
            f"{row['stdev_ms']:>6.1f}ms {row['ratio']:>9.2f}x {row['median_ratio']:>11.2f}x "
            f"{row['min_ratio']:>8.2f}x{mark}"
        )
    worst = max(r["ratio"] for r in rows if r["command"] != base_name)
    goal_met = worst <= GOAL_RATIO
    print(
        f"\n  goal: every CLI <= {GOAL_RATIO:g}x the bare interpreter ({base * 1000 * GOAL_RATIO:.0f} ms); "
        f"worst {worst:.2f}x -> {'MET' if goal_met else 'NOT MET'}"
    )

    imports = importtime([tool("tctl"), "--help"], args.importtime_runs, env)
    top_cum = sorted(imports, key=lambda r: r["cumulative_us"], reverse=True)[: args.top]
    top_self = sorted(imports, key=lambda r: r["self_us"], reverse=True)[: args.top]
    total_us = sum(r["self_us"] for r in imports)
    print(
        f"\n`tctl --help` imports (python -X importtime, median of {args.importtime_runs} runs; "
        f"{len(imports)} modules, {total_us / 1000:.1f} ms of import time in all)"
    )
    print(f"  top {args.top} by cumulative time (a module and everything it imported):")
    for r in top_cum:
        print(f"    {r['cumulative_us'] / 1000:7.1f} ms  {'  ' * min(r['depth'], 8)}{r['module']}")
    print(f"  top {args.top} by self time:")
    for r in top_self:
        print(f"    {r['self_us'] / 1000:7.1f} ms  {r['module']}")

    summary = {
        "benchmark": "cli_startup",
        "method": "hyperfine" if hf else "python-loop",
        "runs": args.runs,
        "warmup": args.warmup,
        "loadavg_1m": load_before,
        "baseline_ms": round(base * 1000, 2),
        "commands": rows,
        "worst_ratio": worst,
        "goal_ratio": GOAL_RATIO,
        "goal_met": goal_met,
        "tctl_help_import_ms": round(total_us / 1000, 1),
        "tctl_help_top_imports": [
            {
                "module": r["module"],
                "cumulative_ms": round(r["cumulative_us"] / 1000, 2),
                "self_ms": round(r["self_us"] / 1000, 2),
            }
            for r in top_cum
        ],
    }
    print()
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "tctl_help_top_imports"},
            separators=(",", ":"),
        )
    )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
