"""The Textual application: screens as modes, global bindings, command palette, themes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable
from functools import partial
from typing import Any

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

#: Signals that end the dashboard cleanly (Ctrl-C is a key binding inside Textual)
EXIT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


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

    async def run_async(self, *, headless: bool = False, **kwargs: Any) -> None:
        """Run in a terminal; SIGTERM and SIGHUP end the app as ``q`` does, so the terminal is
        restored (alternate screen left, mouse reporting off) and the local proxies started
        here stop. The exit status is then 128 + the signal's number, as a shell reports it."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if not headless:
            for sig in EXIT_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup): keep it so
                try:
                    loop.add_signal_handler(sig, self._signalled, sig)
                except (ValueError, NotImplementedError, RuntimeError):
                    continue  # not the main thread, or no such signal here
                installed.append(sig)
        try:
            return await super().run_async(headless=headless, **kwargs)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _signalled(self, sig: signal.Signals) -> None:
        # once is enough: should the clean exit hang, the same signal again ends the process
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(sig)
        self.exit(return_code=128 + sig.value)

    def on_mount(self) -> None:
        """Offer to log in when there is no profile and no tbot to watch."""
        self._check_login()

    @work(thread=True, group="startup")
    def _check_login(self) -> None:
        opts = self.state.options
        offer = not (opts.configs or opts.destination_dirs or self.state.profile() is not None)
        defaults = self.state.login_defaults() if offer else None
        to_ui(self, self._login_checked, defaults)

    def _login_checked(self, defaults: tuple[str, str] | None) -> None:
        if defaults is not None:
            self._show_login(*defaults)
        self.login_checked = True

    def action_toggle_theme(self) -> None:
        """Light ↔ dark."""
        self.theme = LIGHT if self.theme != LIGHT else DARK

    def action_login(self) -> None:
        """``tsh login`` in a dialog; every screen reloads after a successful login."""
        self._login_defaults()

    @work(thread=True, group="login-defaults")
    def _login_defaults(self) -> None:
        """The dialog's proxy and user come from the profile on disk: read here, not in compose."""
        to_ui(self, self._show_login, *self.state.login_defaults())

    def _show_login(self, proxy: str, user: str) -> None:
        # the user may have opened the login dialog (L) before the start-up check came back,
        # or pressed L twice: one dialog is enough
        if any(isinstance(s, LoginScreen) for s in self.screen_stack):
            return

        def done(ok: bool | None) -> None:
            if ok:
                self.refresh_screens()

        self.push_screen(LoginScreen(self.state, proxy=proxy, user=user), done)

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
