"""The dashboard's databases table with N synthetic databases: load, filter and render times.

Drives the real app headless (Textual's Pilot) through the same data path as a
cluster answer (``database_rows`` in the worker, ``DatabasesScreen.show_databases``
on the UI thread), then types filters one key at a time. For comparison it also
times Textual's DataTable doing the same load and a re-fill per filter.

    .venv/bin/python bench/tui_filter.py [--rows 10000] [--runs 5] [--json-out FILE]

Goal at 10,000 rows: the filter under 20 ms per keystroke, and a keystroke through Pilot
(key, filter, repaint) within 50 ms of the same keystroke into a lone Input (Pilot's and
Textual's own cost per key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(n: int) -> list[dict[str, Any]]:
    """``db.list``-shaped entries."""
    return [
        {
            "name": f"db-{i:05d}",
            "protocol": "postgres",
            "description": f"Synthetic database {i}",
            "labels": {"env": "prod" if i % 4 == 0 else "dev", "team": f"t{i % 10}"},
            "allowed_users": ["alice"],
            "allowed_names": ["example"],
        }
        for i in range(n)
    ]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def dashboard(rows: int, runs: int) -> dict[str, Any]:
    from jumpgate.tui.dashboard import JumpgateApp
    from jumpgate.tui.screens.databases import DatabasesScreen, database_rows
    from jumpgate.tui.screens.login import LoginScreen
    from jumpgate.tui.state import DashboardState, Options
    from jumpgate.tui.widgets.resource_table import ResourceTable

    dbs = synthetic(rows)
    out: dict[str, Any] = {"rows_build_ms": [], "show_ms": [], "keystroke_ms": [], "clear_ms": []}
    home = tempfile.mkdtemp(prefix="jg-bench-")
    for _ in range(runs):
        app = JumpgateApp(DashboardState(Options(home=home)))
        async with app.run_test(size=(150, 42)) as pilot:
            for _ in range(100):
                if isinstance(app.screen, LoginScreen):
                    break
                await pilot.pause(0.02)
            if isinstance(app.screen, LoginScreen):
                await pilot.press("escape")
            screen = app.screen
            assert isinstance(screen, DatabasesScreen)
            t0 = time.perf_counter()
            built = database_rows(dbs)
            out["rows_build_ms"].append(ms(time.perf_counter() - t0))
            t0 = time.perf_counter()
            screen.show_databases(dbs, built)
            await pilot.pause()
            out["show_ms"].append(ms(time.perf_counter() - t0))
            table = screen.query_one("#dbs", ResourceTable)
            # the filter itself (what a keystroke costs before Textual repaints)
            for text in (
                "",
                "e",
                "en",
                "env",
                "env=",
                "env=p",
                "env=prod",
                "env=prod ",
                "env=prod 1",
            ):
                t0 = time.perf_counter()
                table.filter(text)
                out.setdefault("filter_ms", []).append(ms(time.perf_counter() - t0))
            table.filter("")
            await pilot.pause()
            await pilot.press("slash")
            for key in "env=prod 12":
                t0 = time.perf_counter()
                await pilot.press(key if key != " " else "space")
                await pilot.pause()
                out["keystroke_ms"].append(ms(time.perf_counter() - t0))
            out["matches"] = len(table.view)
            t0 = time.perf_counter()
            await pilot.press("escape")
            await pilot.pause()
            out["clear_ms"].append(ms(time.perf_counter() - t0))
    return out


async def baseline(keys: str) -> list[float]:
    """The same keystrokes into a lone Input: what Pilot and Textual cost per key anyway."""
    from textual.app import App, ComposeResult
    from textual.widgets import Input

    class Bare(App[None]):
        def compose(self) -> ComposeResult:
            yield Input()

    out = []
    app = Bare()
    async with app.run_test(size=(150, 42)) as pilot:
        await pilot.pause()
        for key in keys:
            t0 = time.perf_counter()
            await pilot.press(key if key != " " else "space")
            await pilot.pause()
            out.append(ms(time.perf_counter() - t0))
    return out


async def datatable(rows: int) -> dict[str, Any]:
    """Textual's DataTable: the load, and one filter as clear + add_rows of the matches."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from jumpgate.tui.screens.databases import database_rows

    built = database_rows(synthetic(rows))
    cells = [r.cells for r in built]

    class Bench(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable()

    out: dict[str, Any] = {}
    app = Bench()
    async with app.run_test(size=(150, 42)) as pilot:
        table = app.query_one(DataTable)
        table.add_columns("Name", "Protocol", "Description", "Labels", "Users", "Names")
        t0 = time.perf_counter()
        table.add_rows(cells)
        await pilot.pause()
        out["load_ms"] = ms(time.perf_counter() - t0)
        keep = [c for r, c in zip(built, cells, strict=True) if "1" in r.haystack]
        t0 = time.perf_counter()
        table.clear()
        table.add_rows(keep)
        await pilot.pause()
        out["one_filter_ms"] = ms(time.perf_counter() - t0)
        out["one_filter_matches"] = len(keep)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "p90": round(sorted(values)[int(0.9 * (len(values) - 1))], 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    dash = asyncio.run(dashboard(args.rows, args.runs))
    dt = asyncio.run(datatable(args.rows))
    base = asyncio.run(baseline("env=prod 12" * args.runs))
    result = {
        "rows": args.rows,
        "runs": args.runs,
        "rows_build_ms (worker)": summary(dash["rows_build_ms"]),
        "show_ms (UI: set rows + first paint)": summary(dash["show_ms"]),
        "filter_ms (table.filter, no repaint)": summary(dash["filter_ms"]),
        "keystroke_ms (Pilot: key, filter, repaint)": summary(dash["keystroke_ms"]),
        "baseline_keystroke_ms (Pilot: key into a lone Input)": summary(base),
        "clear_filter_ms": summary(dash["clear_ms"]),
        "final_matches": dash["matches"],
        "textual_datatable": dt,
        "goal": "filter p90 < 20 ms; keystroke p90 < baseline + 50 ms",
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
