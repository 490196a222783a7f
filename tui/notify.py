"""Errors as notifications, with the same hints the command-line tools print."""

from __future__ import annotations

from textual.app import App

from jumpgate.core.errors import JumpgateError


def error_text(exc: BaseException) -> str:
    """The message and, on the next line, the hint (how to fix it)."""
    if isinstance(exc, JumpgateError):
        return exc.message + (f"\n{exc.hint}" if exc.hint else "")
    return f"{type(exc).__name__}: {exc}"


def notify_error(app: App[object], exc: BaseException, *, title: str = "Error") -> None:
    """Show ``exc`` as an error notification (call on the UI thread)."""
    app.notify(error_text(exc), title=title, severity="error", timeout=10, markup=False)
