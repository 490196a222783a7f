"""The audit log: every access decision and every change, stored through the backend.

Events are plain JSON objects in Teleport's shape (``event``, ``code``, ``time``,
``uid``, ``cluster_name`` plus event-specific fields such as ``user``,
``db_service`` or ``success``). ``emit`` never blocks the caller: events are
queued and written in batches by one background task, so auditing adds little to
hot paths such as certificate issuance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.backend import Backend, Item, prefix_end

log = logging.getLogger(__name__)

EVENTS_PREFIX = "/events/"
#: How long events are kept in the backend.
DEFAULT_RETENTION = timedelta(days=365)

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
    "app.session.request": "T2009I",
    "app.session.end": "T2011I",
}


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

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``listener`` with every event as it is emitted; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: str, *, success: bool = True, **fields: Any) -> dict[str, Any]:
        """Record one event. Returns the full event as stored. Never blocks."""
        now = self._clock()
        self._index += 1
        uid = str(uuid.uuid4())
        record: dict[str, Any] = {
            "event": event,
            "code": fields.pop("code", None) or event_code(event, success=success),
            "time": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "uid": uid,
            "cluster_name": self.cluster_name,
            "ei": self._index,
        }
        if event.endswith((".start", ".join", ".login")) or "success" in fields:
            record["success"] = success
        record.update({k: v for k, v in fields.items() if v is not None})
        key = f"{EVENTS_PREFIX}{now.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}/{uid}"
        self._queue.append(
            Item(
                key=key,
                value=json.dumps(record, sort_keys=True).encode(),
                expires=now + self._retention,
            )
        )
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:  # a broken listener must not break auditing
                log.exception("audit listener failed")
        self._kick()
        return record

    def _kick(self) -> None:
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

    async def flush(self) -> None:
        """Write every queued event now."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            await self._backend.put_many(batch)
        except Exception:
            log.exception("could not write %d audit events; keeping them queued", len(batch))
            self._queue[:0] = batch
            raise

    async def close(self) -> None:
        """Flush and stop the writer."""
        await cancel_and_wait(self._task)
        self._task = None
        await self.flush()

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
