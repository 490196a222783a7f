"""What a resource watcher costs an auth process while audit batches are written.

An auth process watches roles, users, locks and CAs to keep its cache; every
write it makes (and every ``catch_up`` in a shared store) reads the new rows of
the backend's event log. Audit batches (``put_many``) are most of those rows.
This script writes batches of audit-sized items to a real SQLite backend with
such a watcher open and reports the CPU per row written and the part spent
reading the event log back, with the watcher's prefixes pushed into the SQL
(``filtered``, the default behaviour) and with every row read into Python
(``all``, as before). Runs alternate so machine drift hits both alike.

    .venv/bin/python bench/sqlite_watch.py [--batches 300] [--runs 3] [--json-out FILE]
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

from jumpgate.core.backend import Item
from jumpgate.core.backend.sqlite import SQLiteBackend

WATCHED = ["/roles/", "/users/", "/locks/", "/cert_authorities/"]
VALUE = b"x" * 600  # about one cert.create event


async def one_run(filtered: bool, batches: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        b = SQLiteBackend(Path(d) / "bench.db")
        try:
            w = b.watch(WATCHED)
            if not filtered:
                b._watchers.prefixes = lambda: None  # type: ignore[method-assign]
            poll = b._poll_locked
            spent = [0.0]

            def timed(**kw: bool) -> None:
                t = time.perf_counter()
                poll(**kw)
                spent[0] += time.perf_counter() - t

            b._poll_locked = timed  # type: ignore[method-assign]
            rows = 0
            cpu = time.process_time()
            for r in range(batches):
                await b.put_many([Item(f"/events/{r}/{i}", VALUE) for i in range(batch)])
                rows += batch
            cpu = time.process_time() - cpu
            w.close()
        finally:
            await b.close()
    return {"cpu_us_per_row": cpu / rows * 1e6, "poll_us_per_row": spent[0] / rows * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32, help="rows per put_many (the audit writer's)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"all": [], "filtered": []}
    for _ in range(args.runs):
        for mode in ("all", "filtered"):
            results[mode].append(asyncio.run(one_run(mode == "filtered", args.batches, args.batch)))
    summary: dict[str, Any] = {"benchmark": "sqlite_watch", "batch": args.batch}
    for mode, runs in results.items():
        cpu = statistics.median(r["cpu_us_per_row"] for r in runs)
        poll = statistics.median(r["poll_us_per_row"] for r in runs)
        summary[mode] = {"cpu_us_per_row": round(cpu, 2), "poll_us_per_row": round(poll, 2)}
        print(
            f"{mode:9} write + watch: {cpu:6.1f} µs CPU per row; reading the log back: {poll:5.2f} µs"
        )
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
