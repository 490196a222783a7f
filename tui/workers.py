"""Worker results back on the UI thread, dropped when their screen is gone.

A thread worker may finish after the user left its screen, after the app began
to exit, or (under load) in an order nobody planned. Its result must then do
nothing: applying it to a screen that is no longer in the app raises
``NoMatches`` on the first ``query_one``, and pushing a dialog over a closing
app leaves a thread waiting forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.message_pump import MessagePump


def alive(node: MessagePump) -> bool:
    """Whether ``node`` is still part of a running app that is not exiting."""
    if isinstance(node, App):
        try:
            return node.is_running and node.screen.is_attached
        except Exception:  # no screen yet, or none any more
            return False
    return node.is_attached


def to_ui(node: MessagePump, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """From a worker thread: run ``fn(*args, **kwargs)`` on the UI thread while ``node`` is in the app.

    ``node`` is the screen (or widget) the result belongs to; the check runs on
    the UI thread right before ``fn``, so a screen removed in between is seen.
    Nothing happens once the app is exiting (not even a call into its loop).
    """
    if not alive(node):
        return

    def apply() -> None:
        if alive(node):
            fn(*args, **kwargs)

    with contextlib.suppress(RuntimeError):  # the app's loop stopped meanwhile
        node.app.call_from_thread(apply)
