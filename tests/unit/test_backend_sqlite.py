"""SQLite backend specifics: several processes on one file, persistence, bad files."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from jumpgate.core.backend import EventType, Item
from jumpgate.core.backend.sqlite import SQLiteBackend, _events_query
from jumpgate.core.errors import CompareFailed, ConfigError, LimitExceeded

COUNTER = "/counter"


def _cas_increments(path: str, n: int, go: Any, conflicts: Any) -> None:
    go.wait(30)  # start all processes together so they really contend

    async def main() -> None:
        b = SQLiteBackend(Path(path))
        try:
            for _ in range(n):
                while True:
                    cur = await b.get(COUNTER)
                    try:
                        await b.compare_and_swap(cur, Item(COUNTER, b"%d" % (int(cur.value) + 1)))
                        break
                    except CompareFailed:
                        with conflicts.get_lock():
                            conflicts.value += 1
        finally:
            await b.close()

    asyncio.run(main())


def test_four_processes_cas_counter(tmp_path: Path) -> None:
    path = tmp_path / "backend" / "sqlite.db"

    async def setup() -> None:
        b = SQLiteBackend(path)
        await b.put(Item(COUNTER, b"0"))
        await b.close()

    asyncio.run(setup())
    ctx = multiprocessing.get_context("fork")
    go, conflicts = ctx.Event(), ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_cas_increments, args=(str(path), 200, go, conflicts)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    async def check() -> None:
        b = SQLiteBackend(path)
        item = await b.get(COUNTER)
        assert item.value == b"800"
        assert item.revision == 801  # one put + 800 swaps, nothing lost or doubled
        await b.close()

    asyncio.run(check())
    print(f"{conflicts.value} compare failures retried")


def test_second_object_on_same_file_sees_writes_by_poll(tmp_path: Path) -> None:
    path = tmp_path / "sqlite.db"

    async def main() -> None:
        a = SQLiteBackend(path, poll_interval=0.05)
        b = SQLiteBackend(path, poll_interval=0.05)
        try:
            await a.put(Item("/roles/old", b"before the watch"))
            w = b.watch(["/roles/"])
            await a.put(Item("/roles/x", b"1"))
            await a.put(Item("/other", b"nope"))
            await a.delete("/roles/x")
            ev1 = await w.next(2)
            ev2 = await w.next(2)
            assert (ev1.type, ev1.item.key, ev1.item.value) == (EventType.PUT, "/roles/x", b"1")
            assert (ev2.type, ev2.item.key) == (EventType.DELETE, "/roles/x")
            assert ev1.item.revision < ev2.item.revision
            # A local write on b is delivered once, not again by the poller.
            await b.put(Item("/roles/y", b"2"))
            assert (await w.next(1)).item.key == "/roles/y"
            await asyncio.sleep(0.2)
            with pytest.raises(TimeoutError):
                await w.next(0.1)
            # Revisions are shared by the file, not per object.
            assert (await a.put(Item("/roles/z", b""))).revision > ev2.item.revision
            assert (await w.next(2)).item.key == "/roles/z"
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_watcher_that_missed_trimmed_events_fails(tmp_path: Path) -> None:
    path = tmp_path / "sqlite.db"

    async def main() -> None:
        a = SQLiteBackend(path, events_keep=5)
        b = SQLiteBackend(path, poll_interval=60)  # effectively never polls on its own
        try:
            w = b.watch()
            for i in range(20):
                await a.put(Item(f"/k/{i}", b""))
            await a.sweep()  # trims the event log to the last 5 rows
            await b.put(Item("/k/local", b""))  # b reads the log after its own write
            with pytest.raises(LimitExceeded, match="fell behind"):
                await w.next(1)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_prefix_watcher_notices_a_trimmed_log_of_unwatched_keys(tmp_path: Path) -> None:
    """The rows a watcher missed were all outside its prefix: still a gap, still an error."""
    path = tmp_path / "sqlite.db"

    async def main() -> None:
        a = SQLiteBackend(path, events_keep=5)
        b = SQLiteBackend(path, poll_interval=60)
        try:
            w = b.watch(["/roles/"])
            await a.put_many([Item(f"/events/{i:03d}", b"audit") for i in range(20)])
            await a.sweep()
            b.catch_up()  # reads other processes' rows the filtered way
            with pytest.raises(LimitExceeded, match="fell behind"):
                await w.next(1)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_prefix_watchers_skip_unwatched_rows_in_sqlite(tmp_path: Path) -> None:
    """Audit batches between two role writes are not read back into Python at all."""
    path = tmp_path / "sqlite.db"

    async def main() -> None:
        a = SQLiteBackend(path)
        b = SQLiteBackend(path, poll_interval=60)
        try:
            w = b.watch(["/roles/", "/locks/"])
            for round_ in range(3):
                await a.put_many(
                    [Item(f"/events/{round_}/{i:04d}", b"x" * 200) for i in range(500)]
                )
                await a.put(Item(f"/roles/r{round_}", b"role"))
                await a.put_many([Item(f"/events/{round_}/z{i:04d}", b"x") for i in range(500)])
                last = b._last_event
                sql, params = _events_query(last, b._watchers.prefixes())
                with sqlite3.connect(path) as conn:
                    rows = conn.execute(sql, params).fetchall()
                # last + 1 (gap check), the role, the newest row: not the 1,000 audit rows
                assert [r[2] for r in rows] == [
                    f"/events/{round_}/0000",
                    f"/roles/r{round_}",
                    f"/events/{round_}/z0499",
                ]
                b.catch_up()
                got = w.drain()
                assert [(e.type, e.item.key) for e in got] == [(EventType.PUT, f"/roles/r{round_}")]
                assert b._last_event == rows[-1][0]  # moved past the skipped rows
            # A watcher of everything still gets every row.
            everything = b.watch()
            await a.put_many([Item("/events/late", b""), Item("/locks/l", b"")])
            b.catch_up()
            assert [e.item.key for e in everything.drain()] == ["/events/late", "/locks/l"]
            assert [e.item.key for e in w.drain()] == ["/locks/l"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_filtered_read_back_of_edge_prefixes(tmp_path: Path) -> None:
    """The empty prefix and one of U+10FFFF have no upper bound in SQL: nothing is lost."""
    path = tmp_path / "sqlite.db"

    async def main() -> None:
        a = SQLiteBackend(path)
        b = SQLiteBackend(path, poll_interval=60)
        try:
            top = "/\U0010ffff"
            w_top = b.watch([top])
            w_all = b.watch([""])
            await a.put_many([Item(f"{top}x", b""), Item("/roles/r", b"")])
            b.catch_up()
            assert [e.item.key for e in w_top.drain()] == [f"{top}x"]
            assert [e.item.key for e in w_all.drain()] == [f"{top}x", "/roles/r"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "backend" / "sqlite.db"

    async def main() -> None:
        b = SQLiteBackend(path)
        first = await b.put(Item("/a", b"\x00\xffbinary"))
        await b.close()
        b = SQLiteBackend(path)
        try:
            assert await b.get("/a") == first
            assert (await b.put(Item("/b", b""))).revision > first.revision
        finally:
            await b.close()

    asyncio.run(main())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"kv", "events", "meta"} <= tables


@pytest.mark.parametrize("content", [b"definitely not sqlite\n" * 200, b"short garbage"])
def test_garbage_file_is_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "sqlite.db"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        SQLiteBackend(path)
    assert str(path) in exc.value.message
    assert exc.value.hint
    assert path.read_bytes() == content  # never "repaired" behind the user's back


def test_directory_path_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        SQLiteBackend(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sqlite.db"
    asyncio.run(SQLiteBackend(path).close())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        SQLiteBackend(path)


def test_shared_between_threads(tmp_path: Path) -> None:
    b = SQLiteBackend(tmp_path / "sqlite.db")
    asyncio.run(b.put(Item(COUNTER, b"0")))
    errors: list[BaseException] = []

    def worker() -> None:
        async def main() -> None:
            for _ in range(50):
                while True:
                    cur = await b.get(COUNTER)
                    try:
                        await b.compare_and_swap(cur, Item(COUNTER, b"%d" % (int(cur.value) + 1)))
                        break
                    except CompareFailed:
                        pass

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert asyncio.run(b.get(COUNTER)).value == b"200"
    asyncio.run(b.close())
