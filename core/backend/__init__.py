"""The cluster's key-value store: one small async interface, several implementations.

The auth service keeps all cluster state under string keys such as
``/roles/access``; values are opaque bytes. Implementations:
:class:`~jumpgate.core.backend.memory.MemoryBackend` (tests, tbot's ``memory``
storage) and :class:`~jumpgate.core.backend.sqlite.SQLiteBackend` (the default;
several processes may share its file). Semantics every implementation follows:

* An item whose ``expires <= clock()`` is gone: every read misses it and
  ``create``/``update``/``compare_and_swap`` decide as if it were absent, even
  before the background sweeper deletes it (which emits a DELETE event).
* Every write stamps the stored item with a new ``revision``, increasing per
  backend (per file for SQLite).
* :meth:`Backend.watch` returns a :class:`Watcher` fed by a bounded queue. A
  watcher that falls behind is closed with :class:`~jumpgate.core.errors.LimitExceeded`
  raised from its iterator; writers never block. Consumers should open the
  watcher *before* reading the state they want to keep in sync, and re-read
  everything after an error.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from jumpgate.core.aio import spawn
from jumpgate.core.errors import BadParameter, JumpgateError, LimitExceeded

__all__ = [
    "DEFAULT_WATCH_CAPACITY",
    "Backend",
    "BackgroundTask",
    "Clock",
    "Event",
    "EventType",
    "Item",
    "Watcher",
    "WatcherSet",
    "check_item",
    "check_key",
    "is_expired",
    "key",
    "prefix_end",
    "utcnow",
]

Clock = Callable[[], datetime]
"""A function returning the current time as an aware UTC datetime."""

#: Events a watcher may hold before it is closed as too slow.
DEFAULT_WATCH_CAPACITY = 1024

_MAX_CHAR = "\U0010ffff"


def utcnow() -> datetime:
    """The default :data:`Clock`: the current aware UTC time."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Item:
    """One stored key-value pair.

    ``expires`` is a TTL: from that instant on the item is invisible and the
    sweeper deletes it. ``revision`` is ignored on input and set by the backend
    on every write.
    """

    key: str
    value: bytes
    expires: datetime | None = None
    revision: int = 0


class EventType(StrEnum):
    """What happened to a key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class Event:
    """A change delivered to watchers. For DELETE the item carries only the key
    (``value == b""``) and the revision of the deletion."""

    type: EventType
    item: Item


def key(*parts: str) -> str:
    """Build a backend key: ``key("roles", "access") == "/roles/access"``."""
    return "/" + "/".join(parts)


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every key starting with ``prefix``.

    Use as ``get_range(prefix, prefix_end(prefix))``. The last character is
    incremented (skipping the UTF-16 surrogate block, which keys cannot hold);
    trailing U+10FFFF characters are dropped first. For the empty prefix (or
    one made only of U+10FFFF) it returns ``"\\U0010ffff"``, which is above
    every practical key.
    """
    stripped = prefix.rstrip(_MAX_CHAR)
    if not stripped:
        return _MAX_CHAR
    nxt = ord(stripped[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:
        nxt = 0xE000
    return stripped[:-1] + chr(nxt)


def check_key(k: str) -> str:
    """Validate a key (non-empty text that encodes to UTF-8) and return it."""
    if not isinstance(k, str) or not k:
        raise BadParameter(
            f"backend key must be a non-empty string, got {k!r}",
            hint='keys look like "/roles/access"; build them with jumpgate.core.backend.key()',
        )
    try:
        k.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadParameter(
            f"backend key {k!r} is not valid Unicode text",
            hint="remove lone surrogate characters from the key",
        ) from exc
    return k


def check_item(item: Item) -> Item:
    """Validate an item for writing; returns it with ``value`` as bytes and
    ``expires`` normalised to UTC."""
    if not isinstance(item, Item):
        raise BadParameter(
            f"expected a backend Item, got {type(item).__name__}",
            hint="wrap the value in jumpgate.core.backend.Item(key, value)",
        )
    check_key(item.key)
    value = item.value
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadParameter(
            f"value of backend key {item.key!r} must be bytes, got {type(value).__name__}",
            hint="serialise the resource (e.g. JSON, then .encode()) before storing it",
        )
    expires = item.expires
    if expires is not None:
        if not isinstance(expires, datetime) or expires.tzinfo is None:
            raise BadParameter(
                f"expiry of backend key {item.key!r} must be an aware datetime, got {expires!r}",
                hint="use datetime.now(UTC) + timedelta(...)",
            )
        expires = expires.astimezone(UTC)
    if value is item.value and expires is item.expires:
        return item
    return dataclasses.replace(item, value=value, expires=expires)


def is_expired(item: Item, now: datetime) -> bool:
    """True when ``item`` has a TTL that has been reached at ``now``."""
    return item.expires is not None and item.expires <= now


def _copy_error(err: JumpgateError) -> JumpgateError:
    return type(err)(err.message, hint=err.hint)


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Watcher:
    """A stream of :class:`Event` for keys starting with any of ``prefixes``.

    Use as an async iterator, ideally inside ``async with``::

        async with backend.watch([key("roles", "")]) as w:
            async for event in w:
                ...

    Iteration ends after :meth:`close` (or when the backend closes). If the
    watcher's queue overflows, it is closed and the iterator raises
    :class:`~jumpgate.core.errors.LimitExceeded`: the consumer should re-read the
    state and watch again. Thread-safe: events may be pushed from any thread.
    """

    def __init__(
        self,
        prefixes: Sequence[str] = (),
        *,
        capacity: int = DEFAULT_WATCH_CAPACITY,
        on_close: Callable[[Watcher], None] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(prefixes, str):
            raise BadParameter(
                f"watch prefixes must be a list of strings, got the string {prefixes!r}",
                hint=f"pass [{prefixes!r}]",
            )
        if capacity < 1:
            raise BadParameter(f"watcher capacity must be positive, got {capacity}")
        self.prefixes: tuple[str, ...] = tuple(prefixes)
        self.capacity = capacity
        self._buf: deque[Event] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._error: JumpgateError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_close = on_close
        self._on_wait = on_wait

    @property
    def closed(self) -> bool:
        """True once the watcher stopped accepting events."""
        return self._closed

    @property
    def error(self) -> JumpgateError | None:
        """Why the watcher was closed, if it was closed by an error."""
        return self._error

    def matches(self, k: str) -> bool:
        """True when events for key ``k`` are for this watcher."""
        return not self.prefixes or k.startswith(self.prefixes)

    def push(self, event: Event) -> bool:
        """Queue ``event`` (never blocks). Returns False if the watcher is closed,
        including when this event overflowed it."""
        waiter: asyncio.Future[None] | None = None
        with self._lock:
            if self._closed:
                return False
            overflow = len(self._buf) >= self.capacity
            if not overflow:
                self._buf.append(event)
                waiter, self._waiter = self._waiter, None
        if overflow:
            self.fail(
                LimitExceeded(
                    f"watcher on {list(self.prefixes) or 'all keys'} fell behind: "
                    f"more than {self.capacity} events queued, so it was closed",
                    hint="re-read the current state, then open a new watcher",
                )
            )
            return False
        self._wake(waiter)
        return True

    def close(self) -> None:
        """Stop the watcher; iteration ends once the consumer next asks."""
        self._finish(None)

    def fail(self, error: JumpgateError) -> None:
        """Close the watcher so that its iterator raises ``error``."""
        self._finish(error)

    def _finish(self, error: JumpgateError | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
            self._buf.clear()
            waiter, self._waiter = self._waiter, None
        self._wake(waiter)
        if self._on_close is not None:
            self._on_close(self)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            waiter.set_result(None)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_set_none, waiter)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._on_wait is not None:
            self._on_wait()
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._error is not None:
                    raise _copy_error(self._error)
                if self._buf:
                    return self._buf.popleft()
                if self._closed:
                    raise StopAsyncIteration
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = fut
            try:
                await fut
            finally:
                with self._lock:
                    if self._waiter is fut:
                        self._waiter = None

    def drain(self) -> list[Event]:
        """The events queued now, without waiting (raises like iteration when failed)."""
        with self._lock:
            if self._error is not None:
                raise _copy_error(self._error)
            out = list(self._buf)
            self._buf.clear()
        return out

    async def next(self, timeout: float | None = None) -> Event:
        """The next event, waiting at most ``timeout`` seconds (TimeoutError).

        Raises StopAsyncIteration when the watcher was closed normally."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WatcherSet:
    """The live watchers of one backend: creates them and fans events out.

    A helper for backend implementations; thread-safe."""

    def __init__(self) -> None:
        self._watchers: list[Watcher] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._watchers)

    def add(
        self,
        prefixes: Sequence[str],
        *,
        capacity: int = DEFAULT_WATCH_CAPACITY,
        on_wait: Callable[[], None] | None = None,
    ) -> Watcher:
        """Create and register a watcher; it unregisters itself when closed."""
        w = Watcher(prefixes, capacity=capacity, on_close=self._discard, on_wait=on_wait)
        with self._lock:
            self._watchers.append(w)
        return w

    def prefixes(self) -> tuple[str, ...] | None:
        """The key prefixes some watcher wants (sorted, deduplicated), or None for every key.

        None also when a watcher watches everything (it has no prefixes). A
        backend may use this to skip reading events no watcher will take.
        """
        with self._lock:
            wanted: set[str] = set()
            for w in self._watchers:
                if not w.prefixes:
                    return None
                wanted.update(w.prefixes)
        return tuple(sorted(wanted))

    def _discard(self, w: Watcher) -> None:
        with self._lock:
            if w in self._watchers:
                self._watchers.remove(w)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every watcher whose prefixes match its key."""
        with self._lock:
            targets = [w for w in self._watchers if w.matches(event.item.key)]
        for w in targets:
            w.push(event)

    def close_all(self, error: JumpgateError | None = None) -> None:
        """Close every watcher, with ``error`` raised from their iterators if given."""
        with self._lock:
            targets = list(self._watchers)
        for w in targets:
            if error is None:
                w.close()
            else:
                w.fail(_copy_error(error))


class BackgroundTask:
    """A lazily started, restartable background task for backend implementations.

    :meth:`ensure` spawns ``factory()`` (via :func:`jumpgate.core.aio.spawn`)
    when called from a running event loop and the task is not already running;
    called without a loop it does nothing, so sync code paths may call it freely.
    """

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, None]], *, name: str) -> None:
        self._factory = factory
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while the task exists and has not finished."""
        return self._task is not None and not self._task.done()

    def ensure(self) -> None:
        """Start the task if it is not running and a loop is running here."""
        if self.running:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = spawn(self._factory(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait for it (if it belongs to the running loop)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop is not asyncio.get_running_loop():  # started by another thread's loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
            return
        task.cancel()
        if task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Backend(abc.ABC):
    """The key-value interface the auth service stores everything in.

    All methods raise :class:`~jumpgate.core.errors.ConnectionProblem` after
    :meth:`close`. Keys are compared as Unicode code points (which is also
    UTF-8 byte order).
    """

    clock: Clock

    @abc.abstractmethod
    async def get(self, key: str) -> Item:
        """The live item at ``key``; NotFound if absent or expired."""

    @abc.abstractmethod
    async def get_range(self, start: str, end: str, *, limit: int = 0) -> list[Item]:
        """Live items with ``start <= key < end`` sorted by key; at most ``limit``
        (0 = no limit)."""

    @abc.abstractmethod
    async def put(self, item: Item) -> Item:
        """Create or overwrite ``item``; returns it as stored (with its revision)."""

    async def put_many(self, items: Sequence[Item]) -> list[Item]:
        """Create or overwrite several items (one transaction where the backend can)."""
        return [await self.put(i) for i in items]

    @abc.abstractmethod
    async def create(self, item: Item) -> Item:
        """Store ``item``; AlreadyExists if a live item has its key."""

    @abc.abstractmethod
    async def update(self, item: Item) -> Item:
        """Overwrite ``item``; NotFound if no live item has its key."""

    @abc.abstractmethod
    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        """Write ``replace`` only if the stored value equals ``expected.value``.

        NotFound if absent or expired, CompareFailed if the value differs,
        BadParameter if the two keys differ."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; NotFound if absent or expired."""

    @abc.abstractmethod
    async def delete_range(self, start: str, end: str) -> int:
        """Remove live items with ``start <= key < end``; returns how many."""

    @abc.abstractmethod
    def watch(
        self, prefixes: Sequence[str] = (), *, capacity: int = DEFAULT_WATCH_CAPACITY
    ) -> Watcher:
        """A watcher of changes to keys starting with any of ``prefixes``
        (all keys when empty). Only changes after this call are delivered."""

    def catch_up(self) -> None:  # noqa: B027 - optional: a no-op unless overridden
        """Deliver to the watchers, now, the changes other processes committed so far.

        Writes made through this object reach its watchers before the write returns;
        writes of other processes sharing the storage arrive on the backend's own
        schedule (a poll). Several auth processes on one backend call this before a
        read that must see every write acknowledged to anyone (read-your-writes across
        processes). The default does nothing: a backend with one writer has nothing
        to catch up on.
        """

    @abc.abstractmethod
    async def start(self) -> None:
        """Start background work (the expiry sweeper) now; otherwise it starts
        on first use from a running event loop."""

    @abc.abstractmethod
    async def sweep(self) -> int:
        """Delete expired items now, emitting DELETE events; returns how many."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background tasks, end all watchers and release resources."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
