"""The audit log: every access decision and every change, stored through the backend.

Events are plain JSON objects in Teleport's shape (``event``, ``code``, ``time``,
``uid``, ``cluster_name`` plus event-specific fields such as ``user``,
``db_service`` or ``success``). ``emit`` never blocks the caller: events are
queued and written in batches by one background task, so auditing adds little to
hot paths such as certificate issuance (the writer stores at most one batch per
:data:`BATCH_INTERVAL`). With the SQLite backend the batches are written by a
dedicated writer thread (sqlite releases the GIL while it works), so the event
loop does not wait for the disk; :meth:`AuditLog.flush` (and
therefore :meth:`~AuditLog.search` and :meth:`~AuditLog.close`) still returns
only once every event emitted before it is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.backend import Backend, Item, prefix_end

log = logging.getLogger(__name__)

EVENTS_PREFIX = "/events/"
#: How long events are kept in the backend.
DEFAULT_RETENTION = timedelta(days=365)
#: The background writer stores a batch at most this often (seconds): under load the
#: events of this interval share one transaction. ``flush()`` does not wait for it.
BATCH_INTERVAL = 0.02

# Teleport's event codes for the events Jumpgate emits (lib/events/codes.go).
CODES: dict[str, str] = {
    "user.create": "T1002I",
    "user.update": "T1003I",
    "user.delete": "T1004I",
    "user.login": "T1000I",
    "user.login.failure": "T1000W",
    "user.password_change": "T1005I",
    "role.created": "T9000I",
    "role.deleted": "T9001I",
    "role.updated": "T9002I",
    "bot.create": "TB001I",
    "bot.update": "TB002I",
    "bot.delete": "TB003I",
    "bot.join": "TJ001I",
    "bot.join.failure": "TJ001E",
    "instance.join": "TJ002I",
    "instance.join.failure": "TJ002E",
    "join_token.create": "TJT00I",
    "join_token.delete": "TJT01I",
    "cert.create": "TC000I",
    "cert.generation_mismatch": "TCB00W",
    "lock.created": "TLK00I",
    "lock.deleted": "TLK01I",
    "resource.create": "TRC00I",
    "resource.update": "TRC01I",
    "resource.delete": "TRC02I",
    "access.denied": "TAD00W",
    "db.session.start": "TDB00I",
    "db.session.start.failure": "TDB00W",
    "db.session.end": "TDB01I",
    "db.session.query": "TDB02I",
    "app.session.start": "T2007I",
    "app.session.chunk": "T2008I",
    "app.session.request": "T2009I",
    "app.session.end": "T2011I",
}


class _RandomPool:
    """:func:`os.urandom` read 4 KiB at a time (one system call per 256 event ids);
    thread-safe, and a forked child starts empty so it never reuses the parent's bytes."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take16(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + 16 > len(self._buf):
                self._buf = os.urandom(4096)
                pos = 0
            self._pos = pos + 16
            return self._buf[pos : pos + 16]


_RANDOM = _RandomPool()


def _uuid4() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` makes it, but cheaper."""
    b = bytearray(_RANDOM.take16())
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _timestamps(now: datetime) -> tuple[str, str]:
    """(``time`` field, key timestamp) of an event: ISO 8601 with ``Z``, and
    ``%Y-%m-%dT%H:%M:%S.%f`` in UTC (sortable, always with microseconds)."""
    utc = now if now.tzinfo is UTC else now.astimezone(UTC)
    iso = utc.isoformat()  # YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00
    if utc.year < 1000:  # pragma: no cover - isoformat pads the year, strftime may not
        return iso.replace("+00:00", "Z"), utc.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if utc.microsecond:
        return iso[:26] + "Z", iso[:26]
    return iso[:19] + "Z", iso[:19] + ".000000"


def _threaded_writes(backend: Backend) -> bool:
    """True for backends whose ``put_many`` does blocking I/O without awaiting
    anything and is thread-safe: their batches go to a writer thread."""
    from jumpgate.core.backend.sqlite import SQLiteBackend

    return isinstance(backend, SQLiteBackend) and type(backend).put_many is SQLiteBackend.put_many


def _run_to_completion(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a coroutine that never suspends (see :func:`_threaded_writes`) outside any loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the backend's put_many suspended; it cannot run in the writer thread")


def event_code(event: str, *, success: bool = True) -> str:
    """Teleport's code for ``event`` (the failure variant when ``success`` is false)."""
    if not success and f"{event}.failure" in CODES:
        return CODES[f"{event}.failure"]
    return CODES.get(event, "T0000I")


class AuditLog:
    """Buffered, batched audit writer and reader over a :class:`Backend`."""

    def __init__(
        self,
        backend: Backend,
        cluster_name: str,
        *,
        clock: Callable[[], datetime] | None = None,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self._backend = backend
        self.cluster_name = cluster_name
        self._clock = clock or backend.clock
        self._retention = retention
        self._queue: list[Item] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._index = 0
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._threaded = _threaded_writes(backend)
        self._pool: ThreadPoolExecutor | None = None

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener`` with every event as it is emitted; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: str, *, success: bool = True, **fields: Any) -> dict[str, Any]:
        """Record one event. Returns the full event as stored. Never blocks."""
        now = self._clock()
        self._index += 1
        uid = _uuid4()
        time_text, stamp = _timestamps(now)
        code = fields.pop("code", None)
        record: dict[str, Any] = {
            "event": event,
            "code": code or event_code(event, success=success),
            "time": time_text,
            "uid": uid,
            "cluster_name": self.cluster_name,
            "ei": self._index,
        }
        if not success or event.endswith((".start", ".join", ".login")):
            record["success"] = success
        for k, v in fields.items():
            if v is not None:
                record[k] = v
        self._queue.append(
            Item(
                key=f"{EVENTS_PREFIX}{stamp}/{uid}",
                value=json.dumps(record).encode(),
                expires=now + self._retention,
            )
        )
        if self._listeners:
            for listener in list(self._listeners):
                try:
                    listener(record)
                except Exception:  # a broken listener must not break auditing
                    log.exception("audit listener failed")
        self._kick()
        return record

    def _kick(self) -> None:
        wakeup, task = self._wakeup, self._task
        if wakeup is not None and wakeup.is_set() and task is not None and not task.done():
            return  # the writer is already due to run
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: flush() will be called explicitly
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = spawn(self._writer(), name="audit-writer")
        self._wakeup.set()

    async def _writer(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()
            await asyncio.sleep(BATCH_INTERVAL)  # let the next batch gather

    async def flush(self) -> None:
        """Write every queued event now; returns once all events emitted so far are stored.

        A batch that fails stays queued (at the front) and the error is raised.
        """
        batch, self._queue = self._queue, []
        if self._threaded:
            await self._flush_threaded(batch)
            return
        if not batch:
            return
        try:
            await self._backend.put_many(batch)
        except Exception as exc:
            self._requeue(batch, exc)
            raise

    def _requeue(self, batch: list[Item], exc: BaseException) -> None:
        log.error("could not write %d audit events; keeping them queued", len(batch), exc_info=exc)
        self._queue[:0] = batch

    async def _flush_threaded(self, batch: list[Item]) -> None:
        # One writer thread takes the batches in order, so once this (possibly empty)
        # batch is done, every batch handed over before it is done too.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._write_batch, batch)

        def done(f: asyncio.Future[None]) -> None:
            exc = None if f.cancelled() else f.exception()
            if exc is not None:
                self._requeue(batch, exc)

        fut.add_done_callback(done)
        # shielded: a cancelled flush (close() stops the writer task) still lets the
        # thread finish the batch, and a failed batch is still put back in the queue
        await asyncio.shield(fut)

    def _write_batch(self, batch: Sequence[Item]) -> None:
        """Writer thread: store one batch (no-op when empty)."""
        if batch:
            _run_to_completion(self._backend.put_many(batch))

    async def close(self) -> None:
        """Flush and stop the writer: every event emitted before is stored on return."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    async def search(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        types: Iterable[str] = (),
        limit: int = 500,
        filters: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Events between ``since`` and ``until`` (oldest first), optionally by type and field values.

        ``limit`` keeps the most recent ``limit`` matches.
        """
        await self.flush()
        start = EVENTS_PREFIX
        end = prefix_end(EVENTS_PREFIX)
        if since is not None:
            start = EVENTS_PREFIX + since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        if until is not None:
            end = EVENTS_PREFIX + until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "\uffff"
        wanted = set(types)
        out: list[dict[str, Any]] = []
        for item in await self._backend.get_range(start, end):
            ev = json.loads(item.value)
            if wanted and ev.get("event") not in wanted:
                continue
            if filters and any(str(ev.get(k)) != v for k, v in filters.items()):
                continue
            out.append(ev)
        return out[-limit:] if limit else out
