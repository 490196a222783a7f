"""Databases: the ``tsh db ls`` table with type-to-filter, details, snippets and actions."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from jumpgate.core.client import snippets
from jumpgate.core.client.profile import Profile
from jumpgate.core.errors import JumpgateError
from jumpgate.tui.notify import notify_error
from jumpgate.tui.state import DashboardState, tsh_argv
from jumpgate.tui.widgets.resource_table import ResourceTable, Row, make_row
from jumpgate.tui.widgets.timefmt import countdown
from jumpgate.tui.workers import to_ui

if TYPE_CHECKING:
    from jumpgate.core.tlsca import RouteToDatabase

COLUMNS = [
    ("Name", 32),
    ("Protocol", 12),
    ("Description", 36),
    ("Labels", 40),
    ("Allowed users", 24),
    ("Allowed names", 24),
]
#: Seconds between two reads of the profile certificate's expiry (the countdown ticks each second)
EXPIRY_REREAD = 5.0


def _go_list(values: Any) -> str:
    return "[" + " ".join(str(v) for v in values or []) + "]"


def _single(values: Any) -> str:
    vals = [str(v) for v in values or []]
    return vals[0] if len(vals) == 1 and "*" not in vals[0] and "{{" not in vals[0] else ""


def not_after(prof: Profile | None) -> datetime | None:
    """When the profile's certificate expires; None when it cannot be read (reads a file)."""
    if prof is None:
        return None
    try:
        return prof.valid_until
    except (JumpgateError, OSError, ValueError):
        return None


def read_route(prof: Profile, name: str) -> RouteToDatabase | None:
    """The route of an earlier ``tsh db login`` to ``name`` (reads its certificate)."""
    from jumpgate.core.client.dbclient import db_route

    try:
        return db_route(prof, name)
    except (JumpgateError, OSError, ValueError):
        return None


def read_routes(prof: Profile) -> dict[str, RouteToDatabase | None]:
    """The routes of every database certificate on disk (reads them)."""
    try:
        names = prof.databases()
    except OSError:
        return {}
    return {name: read_route(prof, name) for name in names}


def database_rows(dbs: list[dict[str, Any]]) -> list[Row]:
    """Table rows from ``db.list`` entries (the same data ``tsh db ls`` prints)."""
    rows = []
    for d in dbs:
        labels = {str(k): str(v) for k, v in (d.get("labels") or {}).items()}
        users = _go_list(d.get("allowed_users"))
        if d.get("denied_users"):
            users += f", except: {_go_list(d.get('denied_users'))}"
        rows.append(
            make_row(
                str(d.get("name", "")),
                [
                    str(d.get("name", "")),
                    str(d.get("protocol", "")),
                    str(d.get("description", "")),
                    ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                    users,
                    _go_list(d.get("allowed_names")),
                ],
                labels,
            )
        )
    return rows


class DatabasesScreen(Screen[None]):
    """Every database the user can reach."""

    CSS_PATH = "databases.tcss"
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("enter", "connect", "Connect", show=False),
        Binding("s", "start_proxy", "Local proxy"),
        Binding("y", "copy", "Copy conn"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.dbs: dict[str, dict[str, Any]] = {}
        self.profile: Profile | None = None
        #: The database in the details pane
        self._shown: str | None = None
        # Read from disk in workers only (the UI thread formats them): the profile
        # certificate's expiry, and the route of each database certificate on disk
        self._not_after: datetime | None = None
        self._routes: dict[str, RouteToDatabase | None] = {}

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="profile-bar")
        yield Input(placeholder="Type to filter (words; key=value for labels)", id="filter")
        with Horizontal(id="main"):
            yield ResourceTable(COLUMNS, id="dbs")
            with VerticalScroll(id="details-pane"):
                yield Static("Select a database.", id="details")
        yield Static("", id="count")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Databases"
        self.query_one("#dbs", ResourceTable).focus()
        self.action_refresh()
        self.set_interval(1.0, self._tick)
        # a certificate renewed elsewhere (tsh login) shows in the countdown
        self.set_interval(EXPIRY_REREAD, self._reread_expiry)

    # ------------------------------------------------------------------ data
    def action_refresh(self) -> None:
        """Reload the list from the cluster (in a worker)."""
        self.query_one("#count", Static).update("Loading…")
        self.load()

    @work(thread=True, exclusive=True, group="databases")
    def load(self) -> None:
        """``db.list`` through the profile's credentials."""
        worker = get_current_worker()
        try:
            prof = self.state.require_profile()
            dbs = self.state.databases()
            rows = database_rows(dbs)
        except JumpgateError as exc:
            if not worker.is_cancelled:
                failed = self.state.profile()
                routes = read_routes(failed) if failed is not None else {}
                to_ui(self, self._failed, exc, failed, not_after(failed), routes)
            return
        expiry, routes = not_after(prof), read_routes(prof)
        if not worker.is_cancelled:
            to_ui(self, self._loaded, prof, dbs, rows, expiry, routes)

    def _failed(
        self,
        exc: JumpgateError,
        prof: Profile | None,
        expiry: datetime | None,
        routes: dict[str, RouteToDatabase | None],
    ) -> None:
        self.profile, self._not_after, self._routes = prof, expiry, routes
        self.query_one("#count", Static).update(Text(exc.message, style="red"))
        if prof is not None:  # logged out: the profile bar says so and the login is offered
            notify_error(self.app, exc)
        self._tick()

    def _loaded(
        self,
        prof: Profile,
        dbs: list[dict[str, Any]],
        rows: list[Row],
        expiry: datetime | None,
        routes: dict[str, RouteToDatabase | None],
    ) -> None:
        self.profile, self._not_after, self._routes = prof, expiry, routes
        self._shown = None  # the snippets depend on the profile
        self.show_databases(dbs, rows)

    def _reread_expiry(self) -> None:
        if self.profile is not None:
            self._read_expiry(self.profile)

    @work(thread=True, exclusive=True, group="databases-expiry")
    def _read_expiry(self, prof: Profile) -> None:
        expiry = not_after(prof)
        to_ui(self, self._expiry_read, prof, expiry)

    def _expiry_read(self, prof: Profile, expiry: datetime | None) -> None:
        if prof is self.profile and expiry != self._not_after:
            self._not_after = expiry
            self._tick()

    def show_databases(self, dbs: list[dict[str, Any]], rows: list[Row] | None = None) -> None:
        """Fill the table (the one data path, from the cluster or a benchmark).

        ``rows`` are :func:`database_rows` of ``dbs``, built in the worker when given.
        """
        self.dbs = {str(d.get("name", "")): d for d in dbs}
        table = self.query_one("#dbs", ResourceTable)
        table.set_rows(rows if rows is not None else database_rows(dbs))
        table.filter(self.query_one("#filter", Input).value)
        self._update_count()
        self._tick()

    def _update_count(self) -> None:
        table = self.query_one("#dbs", ResourceTable)
        total, shown = len(table.rows), len(table.view)
        noun = "database" if total == 1 else "databases"
        text = f"{total:,} {noun}" if shown == total else f"{shown:,} of {total:,} {noun}"
        self.query_one("#count", Static).update(text)

    def _tick(self) -> None:
        """The profile bar's countdown (from the expiry the workers read: no file here)."""
        prof = self.profile
        bar = self.query_one("#profile-bar", Static)
        if prof is None:
            bar.update(Text("Not logged in: press L to log in", style="bold red"))
            return
        if self._not_after is None:
            bar.update(Text(f"{prof.user}@{prof.web_proxy_addr}: certificate missing"))
            return
        left = self._not_after - datetime.now(UTC)
        style = "green" if left.total_seconds() > 600 else "bold red"
        bar.update(
            Text.assemble(
                (f"{prof.user}@{prof.web_proxy_addr}", "bold"),
                f"  cluster {prof.cluster}  ·  session ",
                (countdown(left), style),
            )
        )

    # ------------------------------------------------------------------ filter
    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_one("#dbs", ResourceTable).filter(event.value)
        self._update_count()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.query_one("#dbs", ResourceTable).focus()

    def action_focus_filter(self) -> None:
        """Jump to the filter box."""
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        """Empty the filter and go back to the table."""
        self.query_one("#filter", Input).value = ""
        self.query_one("#dbs", ResourceTable).focus()

    # ------------------------------------------------------------------ details
    @on(ResourceTable.Highlighted, "#dbs")
    def _highlighted(self, event: ResourceTable.Highlighted) -> None:
        key = event.row.key if event.row is not None else None
        if key == self._shown and key is not None:
            return  # the same database (a filter kept it under the cursor): no re-layout
        self._shown = key
        details = self.query_one("#details", Static)
        details.update("No database matches." if key is None else self.details_text(key))
        if key is not None and self.profile is not None:
            # a `tsh db login` since the load changes the snippets' user and name
            self._read_route(self.profile, key)

    def _read_route(
        self,
        prof: Profile,
        name: str,
        then: Callable[[str], object] | None = None,
        *,
        group: str = "databases-route",
    ) -> None:
        """Read the route of ``name`` in a worker (cached, details redrawn), then call
        ``then(name)`` on the UI thread. A newer read in the same ``group`` replaces it."""

        def read() -> None:
            route = read_route(prof, name)
            if not get_current_worker().is_cancelled:
                to_ui(self, self._route_read, prof, name, route)
                if then is not None:
                    to_ui(self, then, name)

        self.run_worker(read, thread=True, exclusive=True, group=group)

    def _route_read(self, prof: Profile, name: str, route: RouteToDatabase | None) -> None:
        """A route read in a worker: cached, and the details redrawn when it changed them."""
        if prof is not self.profile or self._routes.get(name) == route:
            return
        self._routes[name] = route
        if self._shown == name:
            self.query_one("#details", Static).update(self.details_text(name))

    def _conn(self, name: str) -> snippets.ConnParams | None:
        """Connection parameters through a local proxy (a running one when there is one)."""
        prof = self.profile
        db = self.dbs.get(name)
        if prof is None or db is None:
            return None
        route = self._routes.get(name)
        user = route.username if route else _single(db.get("allowed_users")) or "USER"
        dbname = route.database if route else _single(db.get("allowed_names")) or "DATABASE"
        running = next((s for s in self.state.started if s.target == name), None)
        port = running.port if running else snippets.DEFAULT_LOCAL_PORT
        tunnel = running.mode == "tunnel" if running else True
        return snippets.for_profile(
            prof, name, user=user, database=dbname, port=port, tunnel=tunnel
        )

    def details_text(self, name: str) -> Text:
        """Route, labels and the connection snippets of one database."""
        db = self.dbs.get(name, {})
        prof = self.profile
        out = Text()
        out.append(f"{name}\n", style="bold")
        out.append(f"{db.get('description', '')}\n\n")
        labels = ", ".join(f"{k}={v}" for k, v in sorted((db.get("labels") or {}).items()))
        out.append("Protocol  ", style="bold")
        out.append(f"{db.get('protocol', '')}\n")
        out.append("Labels    ", style="bold")
        out.append(f"{labels or '-'}\n")
        out.append("Users     ", style="bold")
        out.append(f"{_go_list(db.get('allowed_users'))}\n")
        out.append("Names     ", style="bold")
        out.append(f"{_go_list(db.get('allowed_names'))}\n")
        if prof is not None:
            out.append("Route     ", style="bold")
            out.append(f"local proxy → {prof.web_proxy_addr} → {name}\n")
        running = next((s for s in self.state.started if s.target == name), None)
        if running is not None:
            out.append("Running   ", style="bold")
            out.append(f"{running.host}:{running.port} ({running.mode})\n", style="green")
        out.append("\nConnect\n", style="bold underline")
        out.append(f"  tsh db connect {name}\n")
        out.append(f"  tsh proxy db --tunnel --port={snippets.DEFAULT_LOCAL_PORT} {name}\n")
        p = self._conn(name)
        if p is not None:
            out.append("\npsql\n", style="bold underline")
            out.append(f"  {snippets.psql(p)}\n")
            out.append("\nlibpq\n", style="bold underline")
            out.append(f"  {snippets.libpq(p)}\n")
            out.append("\nPython (psycopg)\n", style="bold underline")
            out.append(snippets.psycopg(p))
            out.append("\nGo (pgx)\n", style="bold underline")
            out.append(snippets.pgx(p))
        return out

    # ------------------------------------------------------------------ actions
    def _selected(self) -> str | None:
        row = self.query_one("#dbs", ResourceTable).current
        if row is None:
            self.notify("No database selected.", severity="warning")
            return None
        return row.key

    @on(ResourceTable.Selected, "#dbs")
    def _selected_row(self) -> None:
        self.action_connect()

    def action_connect(self) -> None:
        """Suspend the dashboard and run ``tsh db connect``."""
        name = self._selected()
        if name is None:
            return
        if self.profile is None:
            self._connect_dialog(name)
        else:  # the dialog offers the route of an earlier `tsh db login`: read it first
            self._read_route(self.profile, name, self._connect_dialog, group="databases-connect")

    def _connect_dialog(self, name: str) -> None:
        """The options dialog, then ``tsh db connect`` in the suspended terminal."""
        db = self.dbs.get(name, {})
        from jumpgate.tui.screens.dialogs import DbOptionsScreen

        def go(opts: dict[str, Any] | None) -> None:
            if opts is None:
                return
            argv = [*tsh_argv()]
            if self.state.options.proxy:
                argv.append(f"--proxy={self.state.options.proxy}")
            if self.state.options.user:
                argv.append(f"--user={self.state.options.user}")
            argv += ["db", "connect", name]
            if opts.get("db_user"):
                argv.append(f"--db-user={opts['db_user']}")
            if opts.get("db_name"):
                argv.append(f"--db-name={opts['db_name']}")
            try:
                with self.app.suspend():
                    rc = subprocess.run(argv, check=False).returncode
                    if rc:  # keep its error on screen until the user has read it
                        print(
                            f"\ntsh db connect exited with {rc}. "
                            "Press Enter to return to the dashboard.",
                            flush=True,
                        )
                        with contextlib.suppress(EOFError, OSError):
                            input()
            except Exception as exc:  # SuspendNotSupported in a headless run
                notify_error(self.app, exc)
                return
            if self.profile is not None:  # tsh db connect logs in to the database
                self._read_route(self.profile, name)
            if rc:
                self.notify(f"tsh db connect exited with {rc}", severity="warning")

        # the route of an earlier `tsh db login`, else the one user/name the roles allow
        route = self._routes.get(name) if self.profile is not None else None
        self.app.push_screen(
            DbOptionsScreen(
                f"Connect to {name} (tsh db connect)",
                db_user=route.username if route else _single(db.get("allowed_users")),
                db_name=route.database if route else _single(db.get("allowed_names")),
            ),
            go,
        )

    def action_start_proxy(self) -> None:
        """Start a local proxy (tunnel or TLS mode) for the selected database."""
        name = self._selected()
        if name is None:
            return
        db = self.dbs.get(name, {})
        from jumpgate.tui.screens.dialogs import DbOptionsScreen

        def go(opts: dict[str, Any] | None) -> None:
            if opts is not None:
                self.start_proxy(name, opts)

        self.app.push_screen(
            DbOptionsScreen(
                f"Local proxy for {name} (tsh proxy db)",
                db_user=_single(db.get("allowed_users")),
                db_name=_single(db.get("allowed_names")),
                proxy=True,
            ),
            go,
        )

    @work(thread=True, group="proxy")
    def start_proxy(self, name: str, opts: dict[str, Any]) -> None:
        """Log in to the database and start the local proxy (in a worker)."""
        try:
            started = self.state.start_db_proxy(
                name,
                tunnel=bool(opts.get("tunnel")),
                port=int(opts.get("port") or 0),
                db_user=opts.get("db_user"),
                db_name=opts.get("db_name"),
            )
        except JumpgateError as exc:
            to_ui(self, notify_error, self.app, exc)
            return
        prof = self.profile
        route = read_route(prof, name) if prof is not None else None  # logged in to it now
        to_ui(self, self._proxy_started, name, started.host, started.port, started.mode)
        if prof is not None:
            to_ui(self, self._route_read, prof, name, route)

    def _proxy_started(self, name: str, host: str, port: int, mode: str) -> None:
        self.notify(f"Local proxy for {name} on {host}:{port} ({mode} mode)", title="Started")
        if self._shown == name:
            self.query_one("#details", Static).update(self.details_text(name))

    def action_copy(self) -> None:
        """Copy the libpq connection string of the selected database."""
        name = self._selected()
        if name is None:
            return
        if self.profile is None:
            self._copy(name)
        else:  # the string names the user and database of an earlier `tsh db login`
            self._read_route(self.profile, name, self._copy, group="databases-copy")

    def _copy(self, name: str) -> None:
        p = self._conn(name)
        if p is None:
            self.notify("Log in first (L).", severity="warning")
            return
        self.app.copy_to_clipboard(snippets.libpq(p))
        self.notify(snippets.libpq(p), title="Copied", markup=False)
