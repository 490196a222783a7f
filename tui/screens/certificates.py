"""Certificates: every identity Jumpgate can see, with a live countdown and renew-now.

The last and next renewal of a tbot certificate come from the bot's diagnostics
(``diag_addr``) when its config has one and it answers, marked ``(tbot)``; else
they are estimated from the certificate (issued + ``renewal_interval``), marked
``(est.)``. A tsh certificate shows when it was issued (nothing renews it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from jumpgate.core.client.discovery import CertInfo, Diagnostics, RenewalTimes, renewal_times
from jumpgate.core.errors import JumpgateError, NotFound
from jumpgate.tui.notify import notify_error
from jumpgate.tui.state import DashboardState
from jumpgate.tui.widgets.timefmt import countdown, fraction_style, short_time
from jumpgate.tui.workers import to_ui

COLUMNS = ("Kind", "Name", "Left", "Not after", "Last", "Next", "tbot", "Subject", "Roles", "Route")

#: How each source of the renewal times is marked in the table, and in the details pane.
SOURCE_TAG = {"tbot": "(tbot)", "estimated": "(est.)", "issued": ""}
SOURCE_TEXT = {
    "tbot": "(from tbot)",
    "estimated": "(estimated: issued + renewal_interval)",
    "issued": "(issued; renewed by logging in again)",
}


def short_name(name: str) -> str:
    """A destination path as its last two parts (the details pane shows all of it)."""
    parts = name.split("/")
    return name if len(parts) <= 3 else "…/" + "/".join(parts[-2:])


#: How often the files are read again (the countdown itself ticks every second).
RELOAD_SECONDS = 5.0


class CertificatesScreen(Screen[None]):
    """The tsh profile and its database/app certificates, every tbot identity and output."""

    CSS_PATH = "certificates.tcss"
    BINDINGS = [
        Binding("r", "renew", "Renew now"),
        Binding("f5", "refresh", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.certs: list[CertInfo] = []
        self.diag: dict[str, Diagnostics | str] = {}
        self._warned: set[tuple[str, str]] = set()

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        table: DataTable[object] = DataTable(id="certs", cursor_type="row", zebra_stripes=True)
        yield table
        with VerticalScroll(id="cert-details-pane"):
            yield Static("", id="cert-details")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Certificates"
        table = self.query_one("#certs", DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        table.focus()
        self.action_refresh()
        self.set_interval(1.0, self.tick)
        self.set_interval(RELOAD_SECONDS, self.action_refresh)

    def action_refresh(self) -> None:
        """Read every certificate again (worker)."""
        self.load()

    @work(thread=True, exclusive=True, group="certs")
    def load(self) -> None:
        """Certificates from disk, and the diagnostics of each tbot that has a diag_addr."""
        worker = get_current_worker()
        certs, warnings = self.state.certificates()
        diag: dict[str, Diagnostics | str] = {}
        for path, cfg, _ in self.state.bot_configs():
            if cfg is not None and cfg.diag_addr:
                from jumpgate.core.client.discovery import read_diagnostics

                try:
                    diag[path] = read_diagnostics(cfg.diag_addr)
                except JumpgateError as exc:
                    diag[path] = exc.message
        if not worker.is_cancelled:
            to_ui(self, self.show, certs, warnings, diag)

    def show(
        self, certs: list[CertInfo], warnings: list[str], diag: dict[str, Diagnostics | str]
    ) -> None:
        """Rebuild the table (keeping the cursor on the same certificate)."""
        self.certs = certs
        self.diag = diag
        for w in warnings:
            if ("warning", w) not in self._warned:
                self._warned.add(("warning", w))
                self.notify(w, title="Certificates", severity="warning", markup=False)
        table = self.query_one("#certs", DataTable)
        keep = table.cursor_row
        table.clear()
        for c in certs:
            table.add_row(*self._cells(c), key=str(c.path))
        if certs:
            table.move_cursor(row=min(keep, len(certs) - 1))
        else:
            self.query_one("#cert-details", Static).update(
                "No certificates found: log in (L), or start the dashboard with "
                "-c /etc/tbot.yaml or --destination-dir DIR."
            )
        self.tick()

    def _tbot_cell(self, c: CertInfo) -> Text:
        if not c.config:
            return Text("-")
        d = self.diag.get(c.config)
        if d is None:
            return Text("no diag_addr", style="dim")
        if isinstance(d, str):
            return Text("unreachable", style="red")
        return Text(
            f"{'ready' if d.ready else 'unhealthy'} · {d.renewals_total} renewals",
            style="green" if d.ready else "red",
        )

    def renewals(self, c: CertInfo) -> RenewalTimes:
        """Last/next renewal of ``c``: from its tbot's diagnostics, else estimated."""
        d = self.diag.get(c.config) if c.config else None
        return renewal_times(c, d if isinstance(d, Diagnostics) else None)

    @staticmethod
    def _when(t: datetime | None, source: str, due_by: datetime | None = None) -> Text:
        """A renewal time with its source tag; with ``due_by`` (the next renewal, now), a
        time already past is marked "due": tbot is renewing right now, or it is not
        running to do it."""
        if t is None:
            return Text("-")
        tag = SOURCE_TAG[source]
        text = f"{short_time(t)} {tag}" if tag else short_time(t)
        if due_by is not None and t <= due_by:
            return Text(f"due {text}", style="yellow")
        return Text(text, style="dim" if source == "estimated" else "")

    def _cells(self, c: CertInfo, now: datetime | None = None) -> list[Text | str]:
        now = now or datetime.now(UTC)
        left = Text(countdown(c.remaining(now)), style=fraction_style(c.fraction_left(now)))
        times = self.renewals(c)
        return [
            c.kind,
            short_name(c.name),
            left,
            short_time(c.not_after),
            self._when(times.last, times.source),
            self._when(times.next, times.source, due_by=now),
            self._tbot_cell(c),
            c.subject,
            ",".join(c.roles),
            c.route or "-",
        ]

    def tick(self) -> None:
        """Redraw the countdowns; warn once when a certificate runs low or expires."""
        now = datetime.now(UTC)
        table = self.query_one("#certs", DataTable)
        for c in self.certs:
            key = str(c.path)
            frac = c.fraction_left(now)
            try:
                table.update_cell(
                    key, "Left", Text(countdown(c.remaining(now)), style=fraction_style(frac))
                )
                times = self.renewals(c)
                table.update_cell(key, "Next", self._when(times.next, times.source, due_by=now))
            except Exception:  # noqa: S112 - the row went away between reloads
                continue
            level = "expired" if frac <= 0 else "low" if frac < 0.1 else ""
            if level and (key, level) not in self._warned:
                self._warned.add((key, level))
                what = f"{c.kind} {c.name}"
                msg = (
                    f"{what} has expired"
                    if level == "expired"
                    else f"{what} expires in {countdown(c.remaining(now))}"
                )
                self.notify(msg, title="Certificate", severity="warning", markup=False)
        self._show_details()

    @on(DataTable.RowHighlighted, "#certs")
    def _highlighted(self) -> None:
        self._show_details()

    def _current(self) -> CertInfo | None:
        table = self.query_one("#certs", DataTable)
        if not self.certs or table.cursor_row < 0 or table.cursor_row >= len(self.certs):
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((c for c in self.certs if str(c.path) == key), None)

    def _show_details(self) -> None:
        c = self._current()
        if c is None:
            return
        now = datetime.now(UTC)
        out = Text()
        out.append(f"{c.kind}: {c.name}\n", style="bold")
        rows = [
            ("Subject", c.subject),
            ("Roles", ", ".join(c.roles) or "-"),
            ("Route", c.route or "-"),
            ("Valid", f"{c.not_before:%Y-%m-%d %H:%M:%S} → {c.not_after:%Y-%m-%d %H:%M:%S} UTC"),
            ("File", str(c.path)),
        ]
        if c.config:
            rows.append(("tbot config", c.config))
        for label, value in rows:
            out.append(f"{label:<14}", style="bold")
            out.append(f"{value}\n")
        out.append(f"{'Left':<14}", style="bold")
        out.append(countdown(c.remaining(now)), style=fraction_style(c.fraction_left(now)))
        out.append(f"  ({c.fraction_left(now):.0%} of its lifetime)\n")
        times = self.renewals(c)
        for label, t in (("Last renewal", times.last), ("Next renewal", times.next)):
            if t is None:
                continue
            out.append(f"{label:<14}", style="bold")
            out.append(f"{t.astimezone():%Y-%m-%d %H:%M:%S} {SOURCE_TEXT[times.source]}")
            if label == "Next renewal" and t <= now:
                out.append("  due: renewing now, or tbot is not running", style="yellow")
            out.append("\n")
        d = self.diag.get(c.config) if c.config else None
        if isinstance(d, Diagnostics):
            out.append(f"{'Diagnostics':<14}", style="bold")
            out.append(
                f"{'ready' if d.ready else 'unhealthy'}, {d.renewals_total} renewals, "
                f"{d.renewal_failures_total} failures\n"
            )
        elif isinstance(d, str):
            out.append(f"{'Diagnostics':<14}", style="bold")
            out.append(d + "\n", style="red")
        self.query_one("#cert-details", Static).update(out)

    # ------------------------------------------------------------------ renew
    def action_renew(self) -> None:
        """SIGHUP the tbot that writes the selected certificate; tsh certificates need a login."""
        c = self._current()
        if c is None:
            return
        if not c.config:
            self.notify(
                "tsh certificates are renewed by logging in again: press L",
                title="Renew",
                severity="warning",
            )
            return
        self.renew(c.config)

    @work(thread=True, group="renew")
    def renew(self, config: str) -> None:
        """Find the tbot pid (pid file or /proc) and send it SIGHUP."""
        from jumpgate.core.client.discovery import find_tbot_pid, renew_now

        try:
            pid = find_tbot_pid(config)
            if pid is None:
                raise NotFound(
                    f"no running tbot start -c {config} found",
                    hint=f"start it: tbot start -c {config}",
                )
            renew_now(pid)
        except JumpgateError as exc:
            to_ui(self, notify_error, self.app, exc, title="Renew")
            return
        to_ui(self, self.notify, f"Sent SIGHUP to tbot (pid {pid}): renewing now", title="Renew")
        to_ui(self, self.set_timer, 1.5, self.action_refresh)
