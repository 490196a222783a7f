"""The Textual application: screens as modes, global bindings, command palette, themes."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from jumpgate.tui.screens.apps import AppsScreen
from jumpgate.tui.screens.audit import AuditScreen
from jumpgate.tui.screens.certificates import CertificatesScreen
from jumpgate.tui.screens.databases import DatabasesScreen
from jumpgate.tui.screens.login import LoginScreen
from jumpgate.tui.screens.proxies import ProxiesScreen
from jumpgate.tui.screens.wizard import WizardScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.workers import to_ui

#: mode name → (screen class, key, title)
SCREENS: dict[str, tuple[type[Screen[None]], str, str]] = {
    "databases": (DatabasesScreen, "d", "Databases"),
    "apps": (AppsScreen, "a", "Apps"),
    "wizard": (WizardScreen, "w", "Setup wizard"),
    "certificates": (CertificatesScreen, "c", "Certificates"),
    "proxies": (ProxiesScreen, "p", "Local proxies"),
    "audit": (AuditScreen, "u", "Audit"),
}

DARK, LIGHT = "textual-dark", "textual-light"


class JumpgateApp(App[None]):
    """``jumpgate``: databases, apps, the setup wizard, certificates, local proxies, audit."""

    TITLE = "Jumpgate"
    MODES = {name: cls for name, (cls, _, _) in SCREENS.items()}
    DEFAULT_MODE = "databases"
    BINDINGS = [
        *(
            Binding(key, f"switch_mode('{name}')", title.split()[-1].capitalize(), priority=False)
            for name, (_, key, title) in SCREENS.items()
        ),
        Binding("L", "login", "Log in"),
        Binding("t", "toggle_theme", "Theme"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, state: DashboardState | None = None, *, theme: str = DARK) -> None:
        super().__init__()
        self.state = state or DashboardState(Options())
        self.theme = theme
        #: Set once the start-up check is done: the login dialog it offered (if any) is
        #: on the screen stack by then
        self.login_checked = False

    def on_mount(self) -> None:
        """Offer to log in when there is no profile and no tbot to watch."""
        self._check_login()

    @work(thread=True, group="startup")
    def _check_login(self) -> None:
        opts = self.state.options
        offer = not (opts.configs or opts.destination_dirs or self.state.profile() is not None)
        to_ui(self, self._login_checked, offer)

    def _login_checked(self, offer: bool) -> None:
        # the user may have opened the login dialog (L) before the check came back: one is enough
        if offer and not any(isinstance(s, LoginScreen) for s in self.screen_stack):
            self.action_login()
        self.login_checked = True

    def action_toggle_theme(self) -> None:
        """Light ↔ dark."""
        self.theme = LIGHT if self.theme != LIGHT else DARK

    def action_login(self) -> None:
        """``tsh login`` in a dialog; every screen reloads after a successful login."""

        def done(ok: bool | None) -> None:
            if ok:
                self.refresh_screens()

        self.push_screen(LoginScreen(self.state), done)

    def refresh_screens(self) -> None:
        """Ask the current screen to reload its data."""
        reload = getattr(self.screen, "action_refresh", None)
        if reload is not None:
            reload()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette: every screen, log in, plus Textual's own commands."""
        yield from super().get_system_commands(screen)
        for name, (_, key, title) in SCREENS.items():
            yield SystemCommand(
                f"Go to {title}",
                f"Switch to the {title} screen ({key})",
                partial(self.switch_mode, name),
            )
        yield SystemCommand("Log in", "Log in to a proxy, as tsh login does (L)", self.action_login)
        yield SystemCommand(
            "Toggle light/dark",
            "Switch between light and dark themes (t)",
            self.action_toggle_theme,
        )

    async def action_quit(self) -> None:
        """Stop the local proxies started here, then exit."""
        self.state.stop_all()
        self.exit()

    def on_unmount(self) -> None:
        """Local proxies never outlive the dashboard."""
        self.state.stop_all()
