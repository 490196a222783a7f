"""Key-value backend semantics, run against both the memory and SQLite implementations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jumpgate.core.aio import spawn
from jumpgate.core.backend import (
    DEFAULT_WATCH_CAPACITY,
    Backend,
    EventType,
    Item,
    key,
    prefix_end,
)
from jumpgate.core.backend.memory import MemoryBackend
from jumpgate.core.backend.sqlite import SQLiteBackend
from jumpgate.core.errors import (
    AlreadyExists,
    BadParameter,
    CompareFailed,
    ConnectionProblem,
    LimitExceeded,
    NotFound,
)

T = TypeVar("T")
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    """A mutable clock: tests move time by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


Factory = Callable[..., Backend]


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    def factory(**kw: Any) -> Backend:
        if request.param == "memory":
            return MemoryBackend(**kw)
        return SQLiteBackend(tmp_path / "backend" / "sqlite.db", poll_interval=0.05, **kw)

    return factory


def with_backend(make: Factory, body: Callable[[Backend], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        b = make(**kw)
        try:
            await body(b)
        finally:
            await b.close()

    run(main())


# -- helpers -------------------------------------------------------------------


def test_key_and_prefix_end() -> None:
    assert key("roles", "access") == "/roles/access"
    assert prefix_end("/roles/") == "/roles0"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("") == "\U0010ffff"
    assert prefix_end("\ud7ff") == "\ue000"
    p = "/users/"
    for k in ["/users/", "/users/a", "/users/\U0010ffff\U0010ffff"]:
        assert p <= k < prefix_end(p)
    assert not prefix_end(p) > "/users0"


# -- basic CRUD ----------------------------------------------------------------


def test_put_get_and_missing(make: Factory) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(NotFound, match="'/a' not found"):
            await b.get("/a")
        stored = await b.put(Item("/a", b"one"))
        assert stored.value == b"one" and stored.revision > 0
        assert await b.get("/a") == stored
        again = await b.put(Item("/a", bytearray(b"two")))  # type: ignore[arg-type]
        assert (await b.get("/a")).value == b"two" == again.value

    with_backend(make, body)


def test_create_update_delete_errors(make: Factory) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(NotFound):
            await b.update(Item("/x", b"1"))
        await b.create(Item("/x", b"1"))
        with pytest.raises(AlreadyExists) as exc:
            await b.create(Item("/x", b"2"))
        assert exc.value.kind == "already_exists"
        assert (await b.get("/x")).value == b"1"
        await b.update(Item("/x", b"3"))
        assert (await b.get("/x")).value == b"3"
        await b.delete("/x")
        with pytest.raises(NotFound):
            await b.get("/x")
        with pytest.raises(NotFound):
            await b.delete("/x")

    with_backend(make, body)


def test_compare_and_swap(make: Factory) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(NotFound):
            await b.compare_and_swap(Item("/c", b"0"), Item("/c", b"1"))
        first = await b.put(Item("/c", b"0"))
        swapped = await b.compare_and_swap(first, Item("/c", b"1"))
        assert swapped.revision > first.revision
        with pytest.raises(CompareFailed) as exc:
            await b.compare_and_swap(first, Item("/c", b"2"))
        assert exc.value.hint
        assert (await b.get("/c")).value == b"1"
        with pytest.raises(BadParameter, match="keys differ"):
            await b.compare_and_swap(Item("/c", b"1"), Item("/d", b"2"))
        # Only the value is compared, not the revision.
        await b.compare_and_swap(Item("/c", b"1", revision=999), Item("/c", b"3"))
        assert (await b.get("/c")).value == b"3"

    with_backend(make, body)


def test_range_limit_and_delete_range(make: Factory) -> None:
    async def body(b: Backend) -> None:
        for k in ["/r/b", "/r/a", "/r/c", "/r0", "/q", "/r/b/x"]:
            await b.put(Item(k, k.encode()))
        got = await b.get_range("/r/", prefix_end("/r/"))
        assert [i.key for i in got] == ["/r/a", "/r/b", "/r/b/x", "/r/c"]
        assert [i.value for i in got] == [b"/r/a", b"/r/b", b"/r/b/x", b"/r/c"]
        assert [i.key for i in await b.get_range("/r/", "/r/c", limit=2)] == ["/r/a", "/r/b"]
        assert [i.key for i in await b.get_range("/r/b", "/r/c")] == ["/r/b", "/r/b/x"]
        assert await b.get_range("/z", "/a") == []
        with pytest.raises(BadParameter):
            await b.get_range("/", "/z", limit=-1)
        assert await b.delete_range("/r/b", prefix_end("/r/b")) == 2
        assert await b.delete_range("/r/b", prefix_end("/r/b")) == 0
        rest = await b.get_range("", prefix_end(""))
        assert [i.key for i in rest] == ["/q", "/r/a", "/r/c", "/r0"]

    with_backend(make, body)


def test_revisions_increase(make: Factory) -> None:
    async def body(b: Backend) -> None:
        revs = [(await b.put(Item("/a", b"1"))).revision]
        revs.append((await b.create(Item("/b", b"1"))).revision)
        revs.append((await b.update(Item("/a", b"2"))).revision)
        revs.append((await b.compare_and_swap(Item("/a", b"2"), Item("/a", b"3"))).revision)
        w = b.watch()
        await b.delete("/b")
        ev = await w.next(2)
        assert ev.type is EventType.DELETE and ev.item.key == "/b"
        revs.append(ev.item.revision)
        revs.append((await b.put(Item("/b", b"x"))).revision)
        assert revs == sorted(set(revs)), revs
        assert (await b.get("/a")).revision == revs[3]

    with_backend(make, body)


def test_put_many_revisions_order_and_watch(make: Factory) -> None:
    async def body(b: Backend) -> None:
        before = (await b.put(Item("/x", b"0"))).revision
        w = b.watch(["/e/"])
        stored = await b.put_many(
            [Item("/e/1", b"a"), Item("/e/2", b"b"), Item("/e/1", b"c", expires=None)]
        )
        assert [i.revision for i in stored] == [before + 1, before + 2, before + 3]
        assert (await b.get("/e/1")).value == b"c"  # the later value of a repeated key wins
        assert (await b.get("/e/1")).revision == before + 3
        got = [await w.next(2) for _ in range(3)]
        assert [(e.item.key, e.item.value, e.item.revision) for e in got] == [
            ("/e/1", b"a", before + 1),
            ("/e/2", b"b", before + 2),
            ("/e/1", b"c", before + 3),
        ]
        assert await b.put_many([]) == []
        assert (await b.put(Item("/y", b"1"))).revision == before + 4

    with_backend(make, body)


def test_bad_items_rejected(make: Factory) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(BadParameter, match="non-empty"):
            await b.put(Item("", b"x"))
        with pytest.raises(BadParameter, match="bytes"):
            await b.put(Item("/a", "text"))  # type: ignore[arg-type]
        with pytest.raises(BadParameter, match="aware"):
            await b.put(Item("/a", b"x", expires=datetime(2030, 1, 1)))
        with pytest.raises(BadParameter):
            b.watch("/a")  # a bare string, not a list

    with_backend(make, body)


# -- TTL -----------------------------------------------------------------------


def test_ttl_expires_exactly_at_deadline(make: Factory) -> None:
    clock = FakeClock()
    deadline = T0 + timedelta(seconds=30)

    async def body(b: Backend) -> None:
        stored = await b.put(Item("/t/a", b"v", expires=deadline))
        assert stored.expires == deadline
        await b.put(Item("/t/b", b"keep"))
        clock.now = deadline - timedelta(microseconds=1)
        assert (await b.get("/t/a")).expires == deadline
        assert len(await b.get_range("/t/", prefix_end("/t/"))) == 2
        clock.now = deadline
        with pytest.raises(NotFound):
            await b.get("/t/a")
        assert [i.key for i in await b.get_range("/t/", prefix_end("/t/"))] == ["/t/b"]
        with pytest.raises(NotFound):
            await b.update(Item("/t/a", b"x"))
        with pytest.raises(NotFound):
            await b.compare_and_swap(Item("/t/a", b"v"), Item("/t/a", b"w"))
        with pytest.raises(NotFound):
            await b.delete("/t/a")
        assert await b.delete_range("/t/a", "/t/b") == 0
        created = await b.create(Item("/t/a", b"new"))  # over the expired one
        assert (await b.get("/t/a")) == created and created.expires is None

    with_backend(make, body, clock=clock)


def test_ttl_timezone_normalised(make: Factory) -> None:
    clock = FakeClock()
    tz = datetime(2030, 1, 1, 14, 0, tzinfo=UTC).astimezone().tzinfo

    async def body(b: Backend) -> None:
        local = (T0 + timedelta(hours=1)).astimezone(tz)
        stored = await b.put(Item("/a", b"v", expires=local))
        assert stored.expires == T0 + timedelta(hours=1)
        assert (await b.get("/a")).expires == T0 + timedelta(hours=1)

    with_backend(make, body, clock=clock)


def test_sweeper_emits_delete(make: Factory) -> None:
    clock = FakeClock()

    async def body(b: Backend) -> None:
        w = b.watch(["/s/"])
        await b.put(Item("/s/a", b"v", expires=T0 + timedelta(seconds=5)))
        await b.put(Item("/s/b", b"v"))
        assert (await w.next(2)).item.key == "/s/a"
        assert (await w.next(2)).item.key == "/s/b"
        clock.advance(seconds=5)
        ev = await w.next(3)  # from the background sweeper, started lazily
        assert ev.type is EventType.DELETE
        assert ev.item.key == "/s/a" and ev.item.value == b""
        assert await b.sweep() == 0
        await b.put(Item("/s/c", b"v", expires=T0 + timedelta(seconds=6)))
        clock.advance(seconds=1)
        assert await b.sweep() == 1
        assert (await w.next(2)).type is EventType.PUT
        assert (await w.next(2)).type is EventType.DELETE
        assert [i.key for i in await b.get_range("/s/", "/s0")] == ["/s/b"]

    with_backend(make, body, clock=clock, sweep_interval=0.05)


# -- watch ---------------------------------------------------------------------


def test_watch_prefixes_and_order(make: Factory) -> None:
    async def body(b: Backend) -> None:
        w = b.watch(["/roles/", "/users/"])
        everything = b.watch([])
        await b.put(Item("/roles/a", b"1"))
        await b.put(Item("/tokens/x", b"t"))
        await b.put(Item("/users/u", b"2"))
        await b.put(Item("/roles/a", b"3"))
        await b.delete("/roles/a")
        await b.delete_range("/u", "/v")
        await b.put(Item("/roles0", b"no"))
        got = [await w.next(2) for _ in range(5)]
        assert [(e.type, e.item.key) for e in got] == [
            (EventType.PUT, "/roles/a"),
            (EventType.PUT, "/users/u"),
            (EventType.PUT, "/roles/a"),
            (EventType.DELETE, "/roles/a"),
            (EventType.DELETE, "/users/u"),
        ]
        assert got[2].item.value == b"3"
        with pytest.raises(TimeoutError):
            await w.next(0.2)  # neither /tokens/x nor /roles0
        all_keys = [(await everything.next(2)).item.key for _ in range(7)]
        assert all_keys[1] == "/tokens/x" and all_keys[-1] == "/roles0"
        w.close()
        with pytest.raises(StopAsyncIteration):
            await w.next(1)

    with_backend(make, body)


def test_watch_async_for_and_close_wakes_consumer(make: Factory) -> None:
    async def body(b: Backend) -> None:
        seen: list[str] = []
        async with b.watch(["/w/"]) as w:

            async def consume() -> None:
                async for ev in w:
                    seen.append(ev.item.key)

            task = spawn(consume(), name="test-consume")
            await b.put(Item("/w/1", b""))
            await b.put(Item("/w/2", b""))
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 2)  # closing the watcher ended the loop
        assert seen == ["/w/1", "/w/2"]

    with_backend(make, body)


def test_slow_watcher_is_closed_with_error(make: Factory) -> None:
    async def body(b: Backend) -> None:
        slow = b.watch(["/o/"])
        fast = b.watch(["/o/"])
        received = 0
        for i in range(DEFAULT_WATCH_CAPACITY + 5):
            await b.put(Item(f"/o/{i:05d}", b"x"))  # must never block
            await fast.next(1)
            received += 1
        assert received == DEFAULT_WATCH_CAPACITY + 5
        assert slow.closed and not fast.closed
        with pytest.raises(LimitExceeded, match="fell behind") as exc:
            async for _ in slow:
                pass
        assert exc.value.hint and "re-read" in exc.value.hint
        with pytest.raises(LimitExceeded):  # keeps failing, never silently ends
            await slow.next(1)
        tiny = b.watch([], capacity=2)
        for i in range(3):
            await b.put(Item(f"/t/{i}", b""))
        with pytest.raises(LimitExceeded):
            await tiny.next(1)

    with_backend(make, body)


def test_closed_backend_refuses_calls(make: Factory) -> None:
    async def main() -> None:
        b = make()
        w = b.watch()
        await b.put(Item("/a", b"1"))
        await b.close()
        await b.close()  # idempotent
        with pytest.raises(StopAsyncIteration):
            await w.next(1)  # closing the backend ends its watchers
        for call in (
            b.get("/a"),
            b.put(Item("/a", b"2")),
            b.get_range("/", "/z"),
            b.delete("/a"),
            b.delete_range("/", "/z"),
            b.sweep(),
        ):
            with pytest.raises(ConnectionProblem) as exc:
                await call
            assert exc.value.hint
        with pytest.raises(ConnectionProblem):
            b.watch()

    run(main())


def test_concurrent_cas_increments_in_one_loop(make: Factory) -> None:
    async def body(b: Backend) -> None:
        await b.put(Item("/counter", b"0"))
        conflicts = 0

        async def worker() -> None:
            nonlocal conflicts
            for _ in range(25):
                while True:
                    cur = await b.get("/counter")
                    await asyncio.sleep(0)  # let the others interleave
                    try:
                        await b.compare_and_swap(
                            cur, Item("/counter", b"%d" % (int(cur.value) + 1))
                        )
                        break
                    except CompareFailed:
                        conflicts += 1

        await asyncio.gather(*(worker() for _ in range(8)))
        assert (await b.get("/counter")).value == b"200"
        assert conflicts > 0  # the test really raced

    with_backend(make, body)
