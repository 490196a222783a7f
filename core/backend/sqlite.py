"""Embedded SQLite backend: the default store, one file under the data directory.

Tables (see ``_SCHEMA``): ``meta`` (schema_version, revision counter), ``kv``
and the append-only change log ``events``. Every write runs in ``BEGIN
IMMEDIATE`` ... ``COMMIT``: the check (create, update, compare-and-swap) and
the write share one transaction, the revision counter in ``meta`` is bumped,
and the change is appended to ``events``. Several processes
may therefore share the file safely. Watchers are fed from ``events``: right
after a local write (so local changes arrive at once) and every
``poll_interval`` seconds while a watcher exists (to pick up other processes'
writes). Events are delivered in ``events.id`` order, each exactly once.

Calls are short and local, so they run directly on the event loop thread over
one connection guarded by a lock (sync callers in other threads are safe too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jumpgate.core.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConfigError,
    ConnectionProblem,
    JumpgateError,
    LimitExceeded,
    NotFound,
)
from jumpgate.core.fsutil import ensure_private_dir

from . import (
    DEFAULT_WATCH_CAPACITY,
    Backend,
    BackgroundTask,
    Clock,
    Event,
    EventType,
    Item,
    Watcher,
    WatcherSet,
    check_item,
    check_key,
    prefix_end,
    utcnow,
)

log = logging.getLogger(__name__)

_UPSERT = (
    "INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "expires = excluded.expires, revision = excluded.revision"
)
_INSERT_EVENT = "INSERT INTO events (type, key, value, expires, revision) VALUES (?, ?, ?, ?, ?)"

__all__ = ["EVENTS_KEEP", "SCHEMA_VERSION", "SQLiteBackend"]

#: Version of the table layout this code writes; newer files are refused.
SCHEMA_VERSION = 1
#: How many rows of the ``events`` table the sweeper keeps.
EVENTS_KEEP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT,
    key TEXT,
    value BLOB,
    expires REAL,
    revision INTEGER
);
"""

_LIVE = "(expires IS NULL OR expires > ?)"
_Row = tuple[Any, ...]


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


#: From this many rows written in one transaction its read-back filters by prefix in SQL
#: (``bench/sqlite_watch.py``: dearer than a plain read for one row, cheaper for 32).
_FILTER_FROM_ROWS = 8
_TOP_CHAR = "\U0010ffff"
#: Above this many distinct watched prefixes the event query reads every row.
_MAX_FILTER_PREFIXES = 32


def _events_query(last: int, prefixes: tuple[str, ...] | None) -> tuple[str, tuple[Any, ...]]:
    """The statement that reads the events after ``last`` some watcher may want.

    Rows under no watched prefix (an audit batch, when only resources are
    watched) stay in SQLite instead of being copied into Python to be dropped
    there. Two rows are always read, whatever their key: ``last + 1``, so a
    trimmed log is still noticed (the first row is not ``last + 1``), and the
    newest row, so ``last`` moves past the skipped ones. One statement is one
    snapshot, so no row can slip in between. The ranges may take in a few keys
    beyond a prefix; watchers filter exactly.
    """
    base = "SELECT id, type, key, value, expires, revision FROM events WHERE id > ?"
    if prefixes is None or len(prefixes) > _MAX_FILTER_PREFIXES:
        return base + " ORDER BY id", (last,)
    conds: list[str] = []
    params: list[Any] = [last, last + 1]
    for p in prefixes:
        if p.rstrip(_TOP_CHAR):
            conds.append("(key >= ? AND key < ?)")
            params += [p, prefix_end(p)]
        else:  # "" or only U+10FFFF: no upper bound above it
            conds.append("key >= ?")
            params.append(p)
    ranges = " OR ".join(conds)
    sql = f"{base} AND (id = ? OR id = (SELECT max(id) FROM events) OR {ranges}) ORDER BY id"  # noqa: S608 - placeholders only
    return sql, tuple(params)


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteBackend(Backend):
    """A :class:`~jumpgate.core.backend.Backend` stored in one SQLite file.

    ``path`` is created (parent directory 0700, file 0600) if missing. A file
    that is not a SQLite database, or was written by a newer schema, raises
    :class:`~jumpgate.core.errors.ConfigError`. ``poll_interval`` is how often
    watchers look for other processes' writes; ``sweep_interval`` how often
    expired items are deleted.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = utcnow,
        poll_interval: float = 0.25,
        sweep_interval: float = 1.0,
        events_keep: int = EVENTS_KEEP,
    ) -> None:
        if poll_interval <= 0 or sweep_interval <= 0:
            raise BadParameter(
                f"poll_interval and sweep_interval must be positive, "
                f"got {poll_interval} and {sweep_interval}"
            )
        if events_keep < 1:
            raise BadParameter(f"events_keep must be positive, got {events_keep}")
        self.path = Path(path)
        self.clock = clock
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.events_keep = events_keep
        self._lock = threading.RLock()
        self._closed = False
        self._watchers = WatcherSet()
        self._last_event = 0
        self._data_version = -1  # PRAGMA data_version at the last catch_up
        self._conn: sqlite3.Connection = self._open()
        self._sweeper = BackgroundTask(self._sweep_loop, name="jumpgate-backend-sqlite-sweeper")
        self._poller = BackgroundTask(self._poll_loop, name="jumpgate-backend-sqlite-poller")

    def __repr__(self) -> str:
        return f"SQLiteBackend({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------

    def _config_error(self, what: str) -> ConfigError:
        return ConfigError(
            f"backend file {self.path}: {what}",
            hint="point the storage path at a Jumpgate SQLite database, or move this file "
            "aside (or restore it from a backup) so a fresh one is created",
        )

    def _open(self) -> sqlite3.Connection:
        try:
            ensure_private_dir(self.path.parent)
            if self.path.is_dir():
                raise self._config_error("is a directory, not a database file")
            if not self.path.exists():
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise self._config_error(f"cannot be created: {exc.strerror or exc}") from exc
        try:
            conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise self._config_error(f"cannot be opened: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not wal (filesystem?)", self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._init_schema(conn)
        except JumpgateError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            if _is_busy(exc):
                raise ConnectionProblem(
                    f"backend file {self.path} is locked by another process: {exc}",
                    hint="another Jumpgate process is holding a long write; retry shortly",
                ) from exc
            raise self._config_error(f"is not a usable SQLite database ({exc})") from exc
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?), "
                "('revision', 0)",
                (SCHEMA_VERSION,),
            )
            version = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"backend file {self.path} has schema version {version}; "
                    f"this Jumpgate understands up to {SCHEMA_VERSION}",
                    hint="upgrade Jumpgate to the version that created this file",
                )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # -- plumbing --------------------------------------------------------------

    def _checked(self) -> sqlite3.Connection:
        if self._closed:
            raise ConnectionProblem(
                f"backend {self.path} is closed",
                hint="open a new SQLiteBackend; this one was shut down",
            )
        self._sweeper.ensure()
        return self._conn

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            if _is_busy(exc):
                hint = "another process held the write lock for over 10 s; retry"
            else:
                hint = "check free disk space and the file's health (PRAGMA integrity_check)"
            raise ConnectionProblem(f"backend {self.path}: {exc}", hint=hint) from exc

    @contextlib.contextmanager
    def _txn(self, rows: int = 1) -> Iterator[sqlite3.Connection]:
        """A write transaction (caller holds ``self._lock``); polls watchers after.

        ``rows``: about how many events the write adds (a batch's size), which
        picks the cheaper way to read them back (see :meth:`_poll_locked`).
        """
        conn = self._checked()
        with self._guard():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        try:
            with self._guard():
                self._poll_locked(filtered=rows >= _FILTER_FROM_ROWS)
        except JumpgateError as exc:  # the write itself succeeded; the poller retries
            log.warning("%s: delivering events failed: %s", self.path, exc)

    def _now(self) -> float:
        return self.clock().timestamp()

    @staticmethod
    def _bump(conn: sqlite3.Connection, n: int = 1) -> int:
        """Reserve ``n`` revisions; returns the first."""
        conn.execute("UPDATE meta SET value = value + ? WHERE key = 'revision'", (n,))
        last: int = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        return last - n + 1

    @staticmethod
    def _event(conn: sqlite3.Connection, typ: EventType, item: Item) -> None:
        conn.execute(
            _INSERT_EVENT, (str(typ), item.key, item.value, _ts(item.expires), item.revision)
        )

    def _live(self, conn: sqlite3.Connection, k: str) -> Item | None:
        row = conn.execute(
            f"SELECT value, expires, revision FROM kv WHERE key = ? AND {_LIVE}",  # noqa: S608
            (k, self._now()),
        ).fetchone()
        return None if row is None else Item(k, bytes(row[0]), _dt(row[1]), row[2])

    def _store(self, conn: sqlite3.Connection, item: Item) -> Item:
        stored = Item(item.key, item.value, item.expires, self._bump(conn))
        conn.execute(_UPSERT, (stored.key, stored.value, _ts(stored.expires), stored.revision))
        self._event(conn, EventType.PUT, stored)
        return stored

    def _remove(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        if not keys:
            return
        first = self._bump(conn, len(keys))
        conn.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])
        for i, k in enumerate(keys):
            self._event(conn, EventType.DELETE, Item(k, b"", None, first + i))

    # -- reads -----------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if absent or expired."""
        check_key(key)
        with self._lock, self._guard():
            item = self._live(self._checked(), key)
        if item is None:
            raise NotFound(f"key {key!r} not found")
        return item

    async def get_range(self, start: str, end: str, *, limit: int = 0) -> list[Item]:
        """Live items with ``start <= key < end`` sorted by key (``limit`` 0 = all)."""
        if limit < 0:
            raise BadParameter(f"limit must be >= 0, got {limit}")
        with self._lock, self._guard():
            rows = (
                self._checked()
                .execute(
                    "SELECT key, value, expires, revision FROM kv "  # noqa: S608
                    f"WHERE key >= ? AND key < ? AND {_LIVE} ORDER BY key LIMIT ?",
                    (start, end, self._now(), limit or -1),
                )
                .fetchall()
            )
        return [Item(r[0], bytes(r[1]), _dt(r[2]), r[3]) for r in rows]

    # -- writes ----------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        """Create or overwrite ``item``."""
        item = check_item(item)
        with self._lock, self._txn() as conn:
            return self._store(conn, item)

    async def put_many(self, items: Sequence[Item]) -> list[Item]:
        """Create or overwrite several items in one transaction (audit batches).

        One revision reservation and two ``executemany`` calls for the whole batch
        (items keep their order: a key given twice ends with its last value).
        """
        checked = [check_item(i) for i in items]
        if not checked:
            return []
        with self._lock, self._txn(len(checked)) as conn:
            first = self._bump(conn, len(checked))
            stored = [Item(i.key, i.value, i.expires, first + n) for n, i in enumerate(checked)]
            rows = [(i.key, i.value, _ts(i.expires), i.revision) for i in stored]
            conn.executemany(_UPSERT, rows)
            put = str(EventType.PUT)
            conn.executemany(_INSERT_EVENT, [(put, *row) for row in rows])
            return stored

    async def create(self, item: Item) -> Item:
        """Store ``item``; AlreadyExists if a live item has its key."""
        item = check_item(item)
        with self._lock, self._txn() as conn:
            if self._live(conn, item.key) is not None:
                raise AlreadyExists(f"key {item.key!r} already exists")
            return self._store(conn, item)

    async def update(self, item: Item) -> Item:
        """Overwrite ``item``; NotFound if no live item has its key."""
        item = check_item(item)
        with self._lock, self._txn() as conn:
            if self._live(conn, item.key) is None:
                raise NotFound(f"key {item.key!r} not found")
            return self._store(conn, item)

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        """Write ``replace`` only if the stored value equals ``expected.value``."""
        expected = check_item(expected)
        replace = check_item(replace)
        if expected.key != replace.key:
            raise BadParameter(
                f"compare_and_swap keys differ: {expected.key!r} vs {replace.key!r}",
                hint="expected and replace must name the same key",
            )
        with self._lock, self._txn() as conn:
            current = self._live(conn, replace.key)
            if current is None:
                raise NotFound(f"key {replace.key!r} not found")
            if current.value != expected.value:
                raise CompareFailed(
                    f"key {replace.key!r} changed since it was read",
                    hint="read it again and retry",
                )
            return self._store(conn, replace)

    async def delete(self, key: str) -> None:
        """Remove ``key``; NotFound if absent or expired."""
        check_key(key)
        with self._lock, self._txn() as conn:
            if self._live(conn, key) is None:
                raise NotFound(f"key {key!r} not found")
            self._remove(conn, [key])

    async def delete_range(self, start: str, end: str) -> int:
        """Remove live items with ``start <= key < end``; returns how many."""
        with self._lock, self._txn() as conn:
            keys = [
                r[0]
                for r in conn.execute(
                    f"SELECT key FROM kv WHERE key >= ? AND key < ? AND {_LIVE} ORDER BY key",  # noqa: S608
                    (start, end, self._now()),
                )
            ]
            self._remove(conn, keys)
        return len(keys)

    # -- watching --------------------------------------------------------------

    def watch(
        self, prefixes: Sequence[str] = (), *, capacity: int = DEFAULT_WATCH_CAPACITY
    ) -> Watcher:
        """A watcher of changes (by any process) to keys starting with ``prefixes``."""
        with self._lock:
            conn = self._checked()
            if not len(self._watchers):
                with self._guard():
                    row = conn.execute(
                        "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
                    ).fetchone()
                self._last_event = row[0] if row else 0
            w = self._watchers.add(prefixes, capacity=capacity, on_wait=self._ensure_background)
            self._poller.ensure()
            return w

    def catch_up(self) -> None:
        """Deliver other processes' committed changes to the watchers now.

        ``PRAGMA data_version`` (a counter SQLite bumps when another connection
        commits) makes the usual case, nothing new, cost one cheap statement.
        """
        if not len(self._watchers):
            return
        with self._lock:
            if self._closed:
                return
            with self._guard():
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:
                    self._poll_locked()
                    self._data_version = version  # only once delivered

    def _ensure_background(self) -> None:
        if not self._closed:
            self._sweeper.ensure()
            self._poller.ensure()

    def _poll_locked(self, *, filtered: bool = True) -> None:
        """Deliver events after ``_last_event`` to watchers (caller holds the lock).

        ``filtered`` leaves rows under no watched prefix in SQLite; it pays off
        when many rows may be new (a batch, or other processes' writes since the
        last poll) and costs a little more than a plain read for one or two.
        """
        if self._closed or not len(self._watchers):
            return
        prefixes = self._watchers.prefixes() if filtered else None
        sql, params = _events_query(self._last_event, prefixes)
        rows: list[_Row] = self._conn.execute(sql, params).fetchall()
        if not rows:
            return
        first, last = rows[0][0], rows[-1][0]
        gap = first != self._last_event + 1
        self._last_event = last
        if gap:
            log.warning("%s: watchers missed events (trimmed); closing them", self.path)
            self._watchers.close_all(
                LimitExceeded(
                    f"watchers of {self.path} fell behind the event log",
                    hint="re-read the current state, then open a new watcher",
                )
            )
            return
        for _id, typ, k, value, expires, revision in rows:
            item = Item(k, bytes(value) if value is not None else b"", _dt(expires), revision)
            self._watchers.emit(Event(EventType(typ), item))

    async def _poll_loop(self) -> None:
        while not self._closed and len(self._watchers):
            await asyncio.sleep(self.poll_interval)
            with self._lock:
                if self._closed:
                    return
                try:
                    with self._guard():
                        self._poll_locked()
                except JumpgateError as exc:
                    log.warning("%s: polling events failed: %s", self.path, exc)

    # -- expiry and lifecycle --------------------------------------------------

    async def start(self) -> None:
        """Start the expiry sweeper now."""
        with self._lock:
            self._checked()

    async def sweep(self) -> int:
        """Delete expired items (emitting DELETE events) and trim the event log."""
        with self._lock, self._txn() as conn:
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT key FROM kv WHERE expires IS NOT NULL AND expires <= ? ORDER BY key",
                    (self._now(),),
                )
            ]
            self._remove(conn, keys)
            conn.execute(
                "DELETE FROM events WHERE id <= "
                "(SELECT seq FROM sqlite_sequence WHERE name = 'events') - ?",
                (self.events_keep,),
            )
        if keys:
            log.debug("%s: swept %d expired items", self.path, len(keys))
        return len(keys)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.sweep_interval)
            if self._closed:
                return
            try:
                await self.sweep()
            except JumpgateError as exc:
                log.warning("%s: sweeping expired items failed: %s", self.path, exc)

    async def close(self) -> None:
        """Stop background tasks, end watchers and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        await self._sweeper.stop()
        await self._poller.stop()
        self._watchers.close_all()
        with self._lock:
            self._conn.close()
