"""In-memory backend: a dict plus a sorted key list. For tests and tbot's ``memory`` storage.

Nothing survives the process. Semantics match the SQLite backend exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import threading
from collections.abc import Sequence

from jumpgate.core.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConnectionProblem,
    NotFound,
)

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
    is_expired,
    utcnow,
)

log = logging.getLogger(__name__)

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """A :class:`~jumpgate.core.backend.Backend` kept in process memory.

    ``sweep_interval`` is how often (seconds) the background sweeper deletes
    expired items and emits their DELETE events. Safe to call from several
    threads; the sweeper runs on the event loop that first uses the backend.
    """

    def __init__(self, *, clock: Clock = utcnow, sweep_interval: float = 1.0) -> None:
        if sweep_interval <= 0:
            raise BadParameter(f"sweep_interval must be positive, got {sweep_interval}")
        self.clock = clock
        self.sweep_interval = sweep_interval
        self._items: dict[str, Item] = {}
        self._keys: list[str] = []
        self._revision = 0
        self._lock = threading.RLock()
        self._watchers = WatcherSet()
        self._closed = False
        self._sweeper = BackgroundTask(self._sweep_loop, name="jumpgate-backend-memory-sweeper")

    # -- helpers ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionProblem(
                "the memory backend is closed",
                hint="open a new backend; this one was shut down",
            )
        self._sweeper.ensure()

    def _live(self, k: str) -> Item | None:
        item = self._items.get(k)
        if item is None or is_expired(item, self.clock()):
            return None
        return item

    def _store(self, item: Item) -> Item:
        self._revision += 1
        stored = dataclasses.replace(item, revision=self._revision)
        if item.key not in self._items:
            bisect.insort(self._keys, item.key)
        self._items[item.key] = stored
        self._watchers.emit(Event(EventType.PUT, stored))
        return stored

    def _remove(self, k: str) -> None:
        del self._items[k]
        idx = bisect.bisect_left(self._keys, k)
        del self._keys[idx]
        self._revision += 1
        self._watchers.emit(Event(EventType.DELETE, Item(k, b"", revision=self._revision)))

    def _range_keys(self, start: str, end: str) -> list[str]:
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, end)
        return self._keys[lo:hi] if lo < hi else []

    # -- reads -----------------------------------------------------------------

    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if absent or expired."""
        check_key(key)
        with self._lock:
            self._check_open()
            item = self._live(key)
        if item is None:
            raise NotFound(f"key {key!r} not found")
        return item

    async def get_range(self, start: str, end: str, *, limit: int = 0) -> list[Item]:
        """Live items with ``start <= key < end`` sorted by key (``limit`` 0 = all)."""
        if limit < 0:
            raise BadParameter(f"limit must be >= 0, got {limit}")
        out: list[Item] = []
        with self._lock:
            self._check_open()
            now = self.clock()
            for k in self._range_keys(start, end):
                item = self._items[k]
                if is_expired(item, now):
                    continue
                out.append(item)
                if limit and len(out) >= limit:
                    break
        return out

    # -- writes ----------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        """Create or overwrite ``item``."""
        item = check_item(item)
        with self._lock:
            self._check_open()
            return self._store(item)

    async def create(self, item: Item) -> Item:
        """Store ``item``; AlreadyExists if a live item has its key."""
        item = check_item(item)
        with self._lock:
            self._check_open()
            if self._live(item.key) is not None:
                raise AlreadyExists(f"key {item.key!r} already exists")
            return self._store(item)

    async def update(self, item: Item) -> Item:
        """Overwrite ``item``; NotFound if no live item has its key."""
        item = check_item(item)
        with self._lock:
            self._check_open()
            if self._live(item.key) is None:
                raise NotFound(f"key {item.key!r} not found")
            return self._store(item)

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        """Write ``replace`` only if the stored value equals ``expected.value``."""
        expected = check_item(expected)
        replace = check_item(replace)
        if expected.key != replace.key:
            raise BadParameter(
                f"compare_and_swap keys differ: {expected.key!r} vs {replace.key!r}",
                hint="expected and replace must name the same key",
            )
        with self._lock:
            self._check_open()
            current = self._live(replace.key)
            if current is None:
                raise NotFound(f"key {replace.key!r} not found")
            if current.value != expected.value:
                raise CompareFailed(
                    f"key {replace.key!r} changed since it was read",
                    hint="read it again and retry",
                )
            return self._store(replace)

    async def delete(self, key: str) -> None:
        """Remove ``key``; NotFound if absent or expired."""
        check_key(key)
        with self._lock:
            self._check_open()
            if self._live(key) is None:
                raise NotFound(f"key {key!r} not found")
            self._remove(key)

    async def delete_range(self, start: str, end: str) -> int:
        """Remove live items with ``start <= key < end``; returns how many."""
        with self._lock:
            self._check_open()
            now = self.clock()
            doomed = [
                k for k in self._range_keys(start, end) if not is_expired(self._items[k], now)
            ]
            for k in doomed:
                self._remove(k)
        return len(doomed)

    # -- watch, expiry, lifecycle ----------------------------------------------

    def watch(
        self, prefixes: Sequence[str] = (), *, capacity: int = DEFAULT_WATCH_CAPACITY
    ) -> Watcher:
        """A watcher of changes to keys starting with any of ``prefixes``."""
        with self._lock:
            if self._closed:
                raise ConnectionProblem(
                    "the memory backend is closed", hint="open a new backend to watch"
                )
            self._sweeper.ensure()
            return self._watchers.add(prefixes, capacity=capacity, on_wait=self._sweeper.ensure)

    async def start(self) -> None:
        """Start the expiry sweeper now."""
        with self._lock:
            self._check_open()

    async def sweep(self) -> int:
        """Delete expired items now, emitting DELETE events; returns how many."""
        with self._lock:
            self._check_open()
            return self._sweep_locked()

    def _sweep_locked(self) -> int:
        now = self.clock()
        doomed = [k for k, item in self._items.items() if is_expired(item, now)]
        doomed.sort()
        for k in doomed:
            self._remove(k)
        if doomed:
            log.debug("memory backend: swept %d expired items", len(doomed))
        return len(doomed)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.sweep_interval)
            with self._lock:
                if self._closed:
                    return
                try:
                    self._sweep_locked()
                except Exception:  # pragma: no cover - defensive: keep sweeping
                    log.exception("memory backend: sweep failed")

    async def close(self) -> None:
        """Stop the sweeper and end all watchers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        await self._sweeper.stop()
        self._watchers.close_all()
