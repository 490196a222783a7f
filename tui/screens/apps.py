"""Apps: the web applications the user can see, with URL, curl snippet and local proxy commands."""

from __future__ import annotations

from typing import Any

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
from jumpgate.tui.state import DashboardState, StartedProxy
from jumpgate.tui.widgets.resource_table import ResourceTable, Row, make_row
from jumpgate.tui.workers import to_ui

COLUMNS = [("Name", 28), ("Public address", 40), ("Description", 36), ("Labels", 50)]
LOCAL_APP_PORT = 8080


def app_rows(apps: list[dict[str, Any]]) -> list[Row]:
    """Table rows from the app list."""
    rows = []
    for a in apps:
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        rows.append(
            make_row(
                str(a.get("name", "")),
                [
                    str(a.get("name", "")),
                    str(a.get("public_addr", "")),
                    str(a.get("description", "")),
                    ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                ],
                labels,
            )
        )
    return rows


def app_url(app: dict[str, Any]) -> str:
    """``https://<public_addr>`` (the proxy routes by this name)."""
    if app.get("url"):
        return str(app["url"])
    addr = str(app.get("public_addr") or "")
    return f"https://{addr}" if addr else ""


class AppsScreen(Screen[None]):
    """Applications behind the proxy."""

    CSS_PATH = "apps.tcss"
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("o", "open", "Open URL"),
        Binding("s", "start_proxy", "Local proxy"),
        Binding("y", "copy", "Copy curl"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.apps: dict[str, dict[str, Any]] = {}
        self.profile: Profile | None = None

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="Type to filter (words; key=value for labels)", id="app-filter")
        with Horizontal(id="apps-main"):
            yield ResourceTable(COLUMNS, id="apps")
            with VerticalScroll(id="app-details-pane"):
                yield Static("No applications yet.", id="app-details")
        yield Static("", id="app-count")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "Apps"
        self.query_one("#apps", ResourceTable).focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        """Reload (worker)."""
        self.query_one("#app-count", Static).update("Loading…")
        self.load()

    @work(thread=True, exclusive=True, group="apps")
    def load(self) -> None:
        """The app list through the profile's credentials."""
        worker = get_current_worker()
        try:
            apps = self.state.apps()
            prof = self.state.profile()  # for the certificate snippet's paths (files: here)
        except JumpgateError as exc:
            if not worker.is_cancelled:
                to_ui(self, self._failed, exc)
            return
        if not worker.is_cancelled:
            to_ui(self, self.show_apps, apps, prof)

    def _failed(self, exc: JumpgateError) -> None:
        self.query_one("#app-count", Static).update(Text(exc.message, style="red"))
        notify_error(self.app, exc, title="Apps")

    def show_apps(self, apps: list[dict[str, Any]], profile: Profile | None = None) -> None:
        """Fill the table (``profile``: whose certificate paths the snippets name)."""
        self.apps = {str(a.get("name", "")): a for a in apps}
        self.profile = profile
        table = self.query_one("#apps", ResourceTable)
        table.set_rows(app_rows(apps))
        table.filter(self.query_one("#app-filter", Input).value)
        n = len(table.view)
        self.query_one("#app-count", Static).update(
            f"{n:,} application{'' if n == 1 else 's'}"
            if apps
            else "No applications are registered (or visible to you)."
        )

    @on(Input.Changed, "#app-filter")
    def _filter(self, event: Input.Changed) -> None:
        self.query_one("#apps", ResourceTable).filter(event.value)

    @on(Input.Submitted, "#app-filter")
    def _submitted(self) -> None:
        self.query_one("#apps", ResourceTable).focus()

    def action_focus_filter(self) -> None:
        """Jump to the filter box."""
        self.query_one("#app-filter", Input).focus()

    def action_clear_filter(self) -> None:
        """Empty the filter."""
        self.query_one("#app-filter", Input).value = ""
        self.query_one("#apps", ResourceTable).focus()

    @on(ResourceTable.Highlighted, "#apps")
    def _highlighted(self, event: ResourceTable.Highlighted) -> None:
        pane = self.query_one("#app-details", Static)
        if event.row is None:
            pane.update("No application matches.")
            return
        pane.update(self.details_text(event.row.key))

    def details_text(self, name: str) -> Text:
        """URL, labels and the curl / local proxy snippets of one app."""
        a = self.apps.get(name, {})
        url = app_url(a)
        out = Text()
        out.append(f"{name}\n", style="bold")
        out.append(f"{a.get('description', '')}\n\n")
        out.append("URL      ", style="bold")
        out.append(f"{url or '-'}\n")
        out.append("Labels   ", style="bold")
        labels = ", ".join(f"{k}={v}" for k, v in sorted((a.get("labels") or {}).items()))
        out.append(f"{labels or '-'}\n")
        out.append("\nLocal proxy\n", style="bold underline")
        running = self.running(name)
        if running is not None:
            out.append("  running on ", style="green")
            out.append(f"{running.host}:{running.port}\n", style="bold green")
            out.append(f"  {snippets.curl(f'http://{running.host}:{running.port}/')}\n")
        else:
            out.append(f"  tsh proxy app {name} --port={LOCAL_APP_PORT}\n")
            out.append(f"  {snippets.curl(f'http://localhost:{LOCAL_APP_PORT}/')}\n")
            out.append("  (s starts one here)\n", style="dim")
        cert_curl = self.cert_curl(name)
        if cert_curl:
            out.append("\nWith a certificate\n", style="bold underline")
            out.append(f"  tsh apps login {name}\n")
            out.append(f"  {cert_curl}\n")
        out.append("\nWith tbot\n", style="bold underline")
        out.append(
            f"  tbot proxy --destination-dir=/opt/machine-id app --port={LOCAL_APP_PORT} {name}\n"
        )
        return out

    def _selected(self) -> dict[str, Any] | None:
        row = self.query_one("#apps", ResourceTable).current
        if row is None:
            self.notify("No application selected.", severity="warning")
            return None
        return self.apps.get(row.key)

    def action_open(self) -> None:
        """Open the app's URL in the browser."""
        a = self._selected()
        if a is None:
            return
        url = app_url(a)
        if url:
            self.open_url(url)

    @work(thread=True, group="browser")
    def open_url(self, url: str) -> None:
        """``webbrowser.open`` may block (it starts a process)."""
        import webbrowser

        ok = webbrowser.open(url)
        to_ui(self, self.notify, url, title="Opened" if ok else "No browser found; the URL is")

    def running(self, name: str) -> StartedProxy | None:
        """The local proxy this dashboard started for ``name``, if any."""
        return next((s for s in self.state.started if s.target == name), None)

    def cert_curl(self, name: str) -> str:
        """curl straight to the proxy with the certificate ``tsh apps login`` saves (the
        paths ``tsh apps config`` prints); "" without a profile or a URL."""
        from jumpgate.core.client.appclient import curl_command

        url = app_url(self.apps.get(name, {}))
        if self.profile is None or not url:
            return ""
        try:
            return curl_command(self.profile, name, url)
        except JumpgateError:  # a name that cannot be a file name: no snippet
            return ""

    def curl_snippet(self, name: str) -> str:
        """curl through the running local proxy (else the one ``tsh proxy app`` would start)."""
        running = self.running(name)
        if running is not None:
            return snippets.curl(f"http://{running.host}:{running.port}/")
        return snippets.curl(f"http://localhost:{LOCAL_APP_PORT}/")

    def action_start_proxy(self) -> None:
        """Start a local proxy for the selected app (``tsh proxy app``, a free port)."""
        a = self._selected()
        if a is None:
            return
        name = str(a.get("name", ""))
        if self.running(name) is not None:
            self.notify(f"A local proxy for {name} is already running.", severity="warning")
            return
        self.start_proxy(name)

    @work(thread=True, group="proxy")
    def start_proxy(self, name: str) -> None:
        """Log in to the app and start its local proxy (in a worker)."""
        try:
            started = self.state.start_app_proxy(name)
        except JumpgateError as exc:
            to_ui(self, notify_error, self.app, exc, title="Local proxy")
            return
        to_ui(self, self._proxy_started, name, started)

    def _proxy_started(self, name: str, started: StartedProxy) -> None:
        self.notify(
            f"Local proxy for {name} on http://{started.host}:{started.port}/", title="Started"
        )
        row = self.query_one("#apps", ResourceTable).current
        if row is not None and row.key == name:
            self.query_one("#app-details", Static).update(self.details_text(name))

    def action_copy(self) -> None:
        """Copy a curl command for the local proxy."""
        a = self._selected()
        if a is None:
            return
        cmd = self.curl_snippet(str(a.get("name", "")))
        self.app.copy_to_clipboard(cmd)
        self.notify(cmd, title="Copied", markup=False)
