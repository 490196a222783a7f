"""Asyncio helpers shared by every service.

``spawn`` is the only way the code base starts background tasks (bare
``asyncio.create_task`` is banned by ruff TID251): it names the task, keeps a
strong reference until it finishes, and logs an exception nobody awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_TASKS: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _TASKS.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s failed: %s", task.get_name(), exc, exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a named background task and keep it alive until done."""
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - the one allowed place
    _TASKS.add(task)
    task.add_done_callback(_done)
    return task


def install_event_loop_policy() -> None:
    """Use uvloop when it is installed (it is a hard dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to finish, swallowing its cancellation or error."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
