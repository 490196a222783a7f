"""Audit: recent events (``tctl audit ls``) for users with the rights, filterable, with details."""

from __future__ import annotations

import json
from typing import Any

from rich.syntax import Syntax
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from jumpgate.core.errors import JumpgateError
from jumpgate.tui.notify import notify_error
from jumpgate.tui.state import DashboardState
from jumpgate.tui.widgets.resource_table import ResourceTable, Row, make_row
from jumpgate.tui.workers import to_ui

COLUMNS = [("Time (UTC)", 19), ("Event", 26), ("User", 20), ("Result", 7), ("Details", 80)]
_SKIP = {"event", "code", "time", "uid", "cluster_name", "ei", "user", "success"}


def event_rows(events: list[dict[str, Any]]) -> list[Row]:
    """Newest first, the columns of ``tctl audit ls``."""
    rows = []
    for i, ev in enumerate(reversed(events)):
        detail = " ".join(
            f"{k}={v}" for k, v in ev.items() if k not in _SKIP and v not in (None, "", [])
        )
        ok = "" if "success" not in ev else ("ok" if ev["success"] else "DENIED")
        row = make_row(
            str(ev.get("uid") or i),
            [
                str(ev.get("time", ""))[:19].replace("T", " "),
                str(ev.get("event", "")),
                str(ev.get("user", "")),
                ok,
                detail,
            ],
            {k: str(v) for k, v in ev.items() if isinstance(v, str | int | bool)},
        )
        if ok == "DENIED":
            row = Row(row.key, row.cells, row.haystack, row.labels, ("", "", "", "bold red", ""))
        rows.append(row)
    return rows


class AuditScreen(Screen[None]):
    """The last 24 hours of the audit log."""

    CSS_PATH = "audit.tcss"
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, dict[str, Any]] = {}
        #: The highlighted event as JSON
        self.detail = ""

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(
            placeholder="Filter (words; key=value on event fields, e.g. event=db.session.start)",
            id="audit-filter",
        )
        with Horizontal(id="audit-main"):
            yield ResourceTable(COLUMNS, id="events")
            with VerticalScroll(id="event-pane"):
                yield Static("", id="event")
        yield Static("", id="audit-count")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Audit"
        self.query_one("#events", ResourceTable).focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        """Search the log again (worker)."""
        self.query_one("#audit-count", Static).update("Loading…")
        self.load()

    @work(thread=True, exclusive=True, group="audit")
    def load(self) -> None:
        """``events.search`` with the admin's or the user's rights."""
        worker = get_current_worker()
        try:
            events = self.state.audit_events()
        except JumpgateError as exc:
            if not worker.is_cancelled:
                to_ui(self, self._failed, exc)
            return
        if not worker.is_cancelled:
            to_ui(self, self.show_events, events)

    def _failed(self, exc: JumpgateError) -> None:
        self.query_one("#audit-count", Static).update(exc.message)
        notify_error(self.app, exc, title="Audit")

    def show_events(self, events: list[dict[str, Any]]) -> None:
        """Fill the table, newest first."""
        rows = event_rows(events)
        self.events = {r.key: ev for r, ev in zip(rows, reversed(events), strict=True)}
        table = self.query_one("#events", ResourceTable)
        table.set_rows(rows)
        table.filter(self.query_one("#audit-filter", Input).value)
        self._count()

    def _count(self) -> None:
        table = self.query_one("#events", ResourceTable)
        self.query_one("#audit-count", Static).update(
            f"{len(table.view):,} of {len(table.rows):,} events (last 24 h)"
        )

    @on(Input.Changed, "#audit-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.query_one("#events", ResourceTable).filter(event.value)
        self._count()

    @on(Input.Submitted, "#audit-filter")
    def _submitted(self) -> None:
        self.query_one("#events", ResourceTable).focus()

    def action_focus_filter(self) -> None:
        """Jump to the filter box."""
        self.query_one("#audit-filter", Input).focus()

    def action_clear_filter(self) -> None:
        """Empty the filter."""
        self.query_one("#audit-filter", Input).value = ""
        self.query_one("#events", ResourceTable).focus()

    @on(ResourceTable.Highlighted, "#events")
    def _highlighted(self, event: ResourceTable.Highlighted) -> None:
        pane = self.query_one("#event", Static)
        if event.row is None:
            pane.update("")
            return
        ev = self.events.get(event.row.key, {})
        self.detail = json.dumps(ev, indent=2, default=str)
        pane.update(Syntax(self.detail, "json", word_wrap=True))
