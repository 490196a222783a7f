"""Local proxies: every running ``tsh proxy db`` / ``tbot proxy`` / dashboard proxy, live."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Sparkline, Static
from textual.worker import get_current_worker

from jumpgate.core.client.discovery import LocalProxyInfo
from jumpgate.tui.state import DashboardState
from jumpgate.tui.widgets.timefmt import countdown, human_bytes
from jumpgate.tui.workers import to_ui

COLUMNS = (
    "Program",
    "PID",
    "Listen",
    "Mode",
    "Target",
    "Live",
    "Total",
    "In",
    "Out",
    "Errors",
    "Uptime",
)
#: Throughput samples kept per proxy (one a second).
HISTORY = 60


class ProxiesScreen(Screen[None]):
    """Status files of running local proxies, polled every second."""

    CSS_PATH = "proxies.tcss"
    BINDINGS = [
        Binding("x", "stop", "Stop (started here)"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.proxies: list[LocalProxyInfo] = []
        self._last: dict[str, tuple[float, int]] = {}
        self.history: dict[str, deque[float]] = {}

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable[object] = DataTable(id="proxies", cursor_type="row", zebra_stripes=True)
        yield table
        with Vertical(id="proxy-details-pane"):
            yield Static("", id="proxy-details")
            yield Sparkline([], id="throughput")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Local proxies"
        table = self.query_one("#proxies", DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        table.focus()
        self.action_refresh()
        self.set_interval(1.0, self.action_refresh)

    def action_refresh(self) -> None:
        """Read the status files again (worker)."""
        self.load()

    @work(thread=True, exclusive=True, group="proxies")
    def load(self) -> None:
        """Discover running proxies through their status files."""
        worker = get_current_worker()
        found = self.state.local_proxies()
        if not worker.is_cancelled:
            to_ui(self, self.show, found)

    @staticmethod
    def key(p: LocalProxyInfo) -> str:
        """A proxy's identity across polls."""
        return f"{p.pid}-{p.listen}"

    def show(self, proxies: list[LocalProxyInfo]) -> None:
        """Update the rows and the throughput history."""
        now = datetime.now(UTC).timestamp()
        for p in proxies:
            k = self.key(p)
            total = p.bytes_in + p.bytes_out
            last = self._last.get(k)
            rate = 0.0
            if last is not None and now > last[0]:
                rate = max(0.0, (total - last[1]) / (now - last[0]))
            self._last[k] = (now, total)
            self.history.setdefault(k, deque(maxlen=HISTORY)).append(rate)
        self.proxies = proxies
        table = self.query_one("#proxies", DataTable)
        keep = table.cursor_row
        table.clear()
        for p in proxies:
            table.add_row(*self._cells(p), key=self.key(p))
        if proxies:
            table.move_cursor(row=min(max(keep, 0), len(proxies) - 1))
        self._details()

    def _cells(self, p: LocalProxyInfo) -> list[str | Text]:
        return [
            p.program,
            str(p.pid),
            p.listen,
            p.mode,
            p.target,
            str(p.connections_live),
            str(p.connections_total),
            human_bytes(p.bytes_in),
            human_bytes(p.bytes_out),
            Text(str(p.errors), style="red" if p.errors else ""),
            countdown(p.uptime()) if p.started else "-",
        ]

    def _current(self) -> LocalProxyInfo | None:
        table = self.query_one("#proxies", DataTable)
        if not self.proxies or not 0 <= table.cursor_row < len(self.proxies):
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((p for p in self.proxies if self.key(p) == key), None)

    @on(DataTable.RowHighlighted, "#proxies")
    def _details(self) -> None:
        p = self._current()
        details = self.query_one("#proxy-details", Static)
        spark = self.query_one("#throughput", Sparkline)
        if p is None:
            details.update(
                "No local proxy is running. Start one from the Databases screen (s), "
                "or with tsh proxy db / tbot proxy db."
            )
            spark.data = []
            return
        hist = list(self.history.get(self.key(p), []))
        out = Text()
        out.append(f"{p.program} (pid {p.pid}) → {p.target} via {p.proxy}\n", style="bold")
        out.append(
            f"listening on {p.listen}, {p.mode} mode, {p.protocol}; "
            f"throughput now {human_bytes(hist[-1] if hist else 0)}/s "
            f"(last {len(hist)} s below)\n"
        )
        if p.last_error:
            out.append(f"last error: {p.last_error}\n", style="red")
        details.update(out)
        spark.data = [0.0] * (HISTORY - len(hist)) + hist  # new samples enter on the right

    def action_stop(self) -> None:
        """Stop the selected proxy when this dashboard started it."""
        p = self._current()
        if p is None:
            return
        _, _, port = p.listen.rpartition(":")
        mine = next(
            (s for s in self.state.started if str(s.port) == port and p.program == "jumpgate"),
            None,
        )
        if mine is None:
            self.notify(
                "Only proxies started from this dashboard can be stopped here; "
                f"stop the other one where it runs (pid {p.pid}).",
                severity="warning",
            )
            return
        self.stop(mine)

    @work(thread=True, group="proxy-stop")
    def stop(self, started: object) -> None:
        """Stop a dashboard proxy (worker: closing waits for its connections)."""
        self.state.stop_proxy(started)  # type: ignore[arg-type]
        to_ui(self, self.notify, "Local proxy stopped", title="Stopped")
        to_ui(self, self.action_refresh)
