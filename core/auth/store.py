"""Typed resource storage over the backend, with an in-memory cache of hot kinds.

Resources are stored as the JSON of their Teleport form (secrets included) under
one key per resource. Roles, users and locks are read on every certificate
request and every access decision, so they are cached in memory and kept fresh
by a backend watch (writes by other auth processes on the same backend arrive as
events).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.backend import Backend, Event, EventType, Item, Watcher, prefix_end
from jumpgate.core.errors import AlreadyExists, BadParameter, NotFound
from jumpgate.core.resources import Resource, canonical_kind, parse_resource, resource_to_dict

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Resource)

#: Backend key prefix of each kind. Server heartbeats carry the host id in the key.
PREFIXES: dict[str, str] = {
    "role": "/roles/",
    "user": "/users/",
    "bot": "/bots/",
    "token": "/tokens/",
    "db": "/db/",
    "db_server": "/db_servers/",
    "app": "/apps/",
    "app_server": "/app_servers/",
    "lock": "/locks/",
    "cert_authority": "/authorities/",
    "cluster_name": "/cluster_configuration/name/",
    "cluster_auth_preference": "/cluster_configuration/auth_preference/",
}
CACHED_KINDS = ("role", "user", "lock")

#: Human plural used in messages.
PLURAL = {"db": "databases", "app": "apps", "cert_authority": "cert authorities"}


def storage_key(kind: str, name: str, *, host_id: str = "") -> str:
    """Backend key of one resource."""
    prefix = PREFIXES[kind]
    if kind in ("db_server", "app_server"):
        return f"{prefix}{name}/{host_id}"
    return prefix + name


class ResourceStore:
    """CRUD for Teleport-shaped resources, cached for the kinds read on hot paths."""

    def __init__(self, backend: Backend, clock: Callable[[], datetime]) -> None:
        self.backend = backend
        self.clock = clock
        self._cache: dict[str, dict[str, Resource]] = {k: {} for k in CACHED_KINDS}
        self._watch_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, str, Resource | None], None]] = []
        self._watcher: Watcher | None = None
        #: bumped on every change of a cached kind; callers key their own caches on it
        self.generation = 0
        #: several processes write this backend (auth workers): every cached read
        #: first catches up with their commits (:meth:`sync`)
        self.shared = False

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Load the cached kinds and follow changes made by anyone."""
        ready = asyncio.Event()
        self._watch_task = spawn(self._follow(ready), name="resource-cache")
        await ready.wait()

    async def close(self) -> None:
        """Stop following changes."""
        await cancel_and_wait(self._watch_task)

    def on_change(self, listener: Callable[[str, str, Resource | None], None]) -> None:
        """Call ``listener(kind, name, resource_or_None)`` on every change of a cached kind."""
        self._listeners.append(listener)

    async def _reload(self) -> None:
        for kind in CACHED_KINDS:
            fresh: dict[str, Resource] = {}
            for r in await self._scan(kind):
                fresh[r.metadata.name] = r
            self._cache[kind] = fresh
        self.generation += 1
        for kind in CACHED_KINDS:  # anything may have changed: listeners re-read
            for listener in list(self._listeners):
                listener(kind, "", None)

    def _reload_now(self) -> None:
        """:meth:`_reload` without the event loop (the backend's reads do not suspend)."""
        coro = self._reload()
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()
        raise RuntimeError("the backend suspended during a cache reload")

    async def _follow(self, ready: asyncio.Event) -> None:
        prefixes = [PREFIXES[k] for k in CACHED_KINDS]
        while True:
            try:
                async with self.backend.watch(prefixes) as watcher:
                    await self._reload()
                    self._watcher = watcher
                    ready.set()
                    async for ev in watcher:
                        self._apply(ev)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # watcher overflow or backend hiccup: re-sync
                self._watcher = None
                log.warning("resource cache lost its watch (%s); reloading", exc)
                await asyncio.sleep(0.5)

    def _apply(self, ev: Event) -> None:
        kind = next((k for k in CACHED_KINDS if ev.item.key.startswith(PREFIXES[k])), None)
        if kind is None:
            return
        name = ev.item.key[len(PREFIXES[kind]) :]
        res: Resource | None = None
        if ev.type is EventType.PUT:
            res = self._decode(ev.item)
            self._cache[kind][name] = res
        else:
            self._cache[kind].pop(name, None)
        self.generation += 1
        for listener in list(self._listeners):
            listener(kind, name, res)

    def sync(self) -> None:
        """Apply, now, every change committed to the backend so far, by any process.

        Without it, other processes' writes reach the cache on the backend's poll
        (a fraction of a second later); with several auth processes on one backend,
        :attr:`shared` makes every cached read call it first, so a role, user or lock
        written through one process is what the next request to any other sees.
        Does nothing unless :attr:`shared` (one process: its own writes are applied
        as they are made).
        """
        if not self.shared or self._watch_task is None:
            return
        self.backend.catch_up()
        watcher = self._watcher
        if watcher is not None and not watcher.closed:
            try:
                events = watcher.drain()
            except Exception:  # noqa: S110 - failed watch: read everything below
                pass
            else:
                for ev in events:
                    self._apply(ev)
                return
        # the watch failed (overflow, a trimmed event log) and the follow task is setting
        # up a new one: never answer from a cache that may be missing writes, read it all
        self._reload_now()

    # ------------------------------------------------------------------ encoding
    def _decode(self, item: Item) -> Resource:
        data = json.loads(item.value)
        res = parse_resource(data)
        return res

    def _encode(self, res: Resource) -> bytes:
        return json.dumps(resource_to_dict(res, with_secrets=True)).encode()

    def _expires(self, res: Resource) -> datetime | None:
        exp = res.metadata.expires
        return exp if isinstance(exp, datetime) else None

    # ----------------------------------------------------------------- reading
    def cached(self, kind: str) -> dict[str, Resource]:
        """The live cache of a cached kind (do not mutate)."""
        self.sync()
        return self._cache[kind]

    def cached_as(self, cls: type[R]) -> dict[str, R]:
        """The live cache of a cached kind, typed (do not mutate)."""
        self.sync()
        return self._cache[cls.KIND]  # type: ignore[return-value]

    async def get_as(self, cls: type[R], name: str) -> R:
        """One resource of the kind of ``cls``, typed."""
        res = await self.get(cls.KIND, name)
        if not isinstance(res, cls):
            raise NotFound(f'{cls.KIND} "{name}" not found')
        return res

    async def list_as(self, cls: type[R]) -> list[R]:
        """Every live resource of the kind of ``cls``, typed."""
        return [r for r in await self.list(cls.KIND) if isinstance(r, cls)]

    async def _scan(self, kind: str) -> list[Resource]:
        prefix = PREFIXES[kind]
        items = await self.backend.get_range(prefix, prefix_end(prefix))
        out = []
        for item in items:
            try:
                out.append(self._decode(item))
            except Exception as exc:  # one bad record must not hide the rest
                log.error("skipping unreadable %s at %s: %s", kind, item.key, exc)
        return out

    async def list(self, kind: str) -> list[Resource]:
        """Every live resource of ``kind``, sorted by name."""
        kind = canonical_kind(kind)
        if kind not in PREFIXES:
            raise BadParameter(f"resources of kind {kind!r} are not stored by the auth service")
        now = self.clock()
        if kind in self._cache and self._watch_task is not None:
            self.sync()
            items = list(self._cache[kind].values())
        else:
            items = await self._scan(kind)
        live = [r for r in items if not r.is_expired(now)]
        return sorted(live, key=lambda r: r.metadata.name)

    async def get(self, kind: str, name: str) -> Resource:
        """One resource; :class:`NotFound` names the kind and the name."""
        kind = canonical_kind(kind)
        if kind in ("db_server", "app_server"):
            found = [r for r in await self.list(kind) if r.metadata.name == name]
            if not found:
                raise NotFound(f'{kind} "{name}" not found')
            return found[0]
        if kind in self._cache and self._watch_task is not None:
            self.sync()
            res = self._cache[kind].get(name)
            if res is None or res.is_expired(self.clock()):
                raise NotFound(f'{kind} "{name}" not found')
            return res
        try:
            item = await self.backend.get(storage_key(kind, name))
        except NotFound:
            raise NotFound(f'{kind} "{name}" not found') from None
        return self._decode(item)

    async def exists(self, kind: str, name: str) -> bool:
        """Whether ``kind/name`` exists."""
        try:
            await self.get(kind, name)
        except NotFound:
            return False
        return True

    # ----------------------------------------------------------------- writing
    async def put(self, res: Resource, *, create: bool = False, host_id: str = "") -> Resource:
        """Store ``res``; with ``create`` refuse to overwrite (:class:`AlreadyExists`)."""
        kind = res.kind
        item = Item(
            key=storage_key(kind, res.metadata.name, host_id=host_id),
            value=self._encode(res),
            expires=self._expires(res),
        )
        if create:
            try:
                await self.backend.create(item)
            except AlreadyExists:
                raise AlreadyExists(
                    f'{kind} "{res.metadata.name}" already exists',
                    hint="use -f/--force to overwrite it",
                ) from None
        else:
            await self.backend.put(item)
        if kind in self._cache:
            self._cache[kind][res.metadata.name] = res
            self.generation += 1
        return res

    async def mutate(
        self,
        kind: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        attempts: int = 8,
    ) -> Resource:
        """Read ``kind/name`` from the backend, apply ``change`` to its dict, compare-and-swap.

        Retries when someone else wrote in between, so concurrent updates of
        different fields (e.g. bot roles and the bot's generation label) never
        overwrite each other with stale data.
        """
        from jumpgate.core.errors import CompareFailed

        key = storage_key(kind, name)
        for _ in range(attempts):
            try:
                current = await self.backend.get(key)
            except NotFound:
                raise NotFound(f'{kind} "{name}" not found') from None
            data = json.loads(current.value)
            res = parse_resource(change(data))
            new = Item(key=key, value=self._encode(res), expires=self._expires(res))
            try:
                await self.backend.compare_and_swap(current, new)
            except CompareFailed:
                continue
            if kind in self._cache:
                self._cache[kind][name] = res
                self.generation += 1
            return res
        raise CompareFailed(f'{kind} "{name}" kept changing; try again')

    async def delete(self, kind: str, name: str) -> None:
        """Delete one resource; :class:`NotFound` when absent."""
        kind = canonical_kind(kind)
        if kind in ("db_server", "app_server"):
            prefix = f"{PREFIXES[kind]}{name}/"
            n = await self.backend.delete_range(prefix, prefix_end(prefix))
            if not n:
                raise NotFound(f'{kind} "{name}" not found')
            return
        try:
            await self.backend.delete(storage_key(kind, name))
        except NotFound:
            raise NotFound(f'{kind} "{name}" not found') from None
        if kind in self._cache:
            self._cache[kind].pop(name, None)
            self.generation += 1

    async def get_raw(self, key: str) -> dict[str, Any]:
        """A JSON record stored outside the resource kinds (e.g. password hashes)."""
        item = await self.backend.get(key)
        data: dict[str, Any] = json.loads(item.value)
        return data

    async def put_raw(
        self, key: str, data: dict[str, Any], *, expires: datetime | None = None
    ) -> None:
        """Store a JSON record outside the resource kinds."""
        await self.backend.put(Item(key=key, value=json.dumps(data).encode(), expires=expires))
