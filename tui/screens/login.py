"""Log in to a proxy, with the prompts of ``tsh login`` (password, OTP, CA pin)."""

from __future__ import annotations

import threading
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from jumpgate.core.errors import JumpgateError
from jumpgate.tui.notify import error_text
from jumpgate.tui.screens.dialogs import ConfirmScreen
from jumpgate.tui.state import DashboardState
from jumpgate.tui.widgets.fieldkeys import TAB_KEYS
from jumpgate.tui.workers import to_ui


class LoginScreen(ModalScreen[bool]):
    """Proxy, user, password and one-time code; the CA pin is confirmed in a dialog."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    # Tab moves between fields at once: "alice<Tab>password" never types the password
    # into the user field (see widgets/fieldkeys.py)
    BINDINGS = [Binding("escape", "dismiss(False)", "Cancel", priority=True), *TAB_KEYS]
    #: The field that takes the first keys, marked in :meth:`compose`. Textual focuses it
    #: as soon as the form is composed, before the first frame, and nothing else moves it
    #: (a ``focus()`` in ``on_mount`` would come later and race with Textual's own choice,
    #: the first input, so keys and screenshots could land on either field)
    AUTO_FOCUS = "Input.first-field"

    def __init__(self, state: DashboardState, *, proxy: str = "", user: str = "") -> None:
        """``proxy`` and ``user`` fill the form (:meth:`DashboardState.login_defaults`, read
        in a worker: nothing here touches the disk)."""
        super().__init__()
        self.state = state
        self.proxy = proxy
        self.user = user
        #: The last progress or error text shown under the form
        self.message = ""

    def _say(self, text: str) -> None:
        self.message = text
        self.query_one("#detail", Static).update(text)

    def compose(self) -> ComposeResult:
        proxy, user = self.proxy, self.user
        # decided once, here: the password when the proxy is known, else the proxy
        first = "password" if proxy else "proxy"
        with Vertical(id="dialog"):
            yield Label("Log in (tsh login)", id="question")
            with Grid(classes="form"):
                yield Label("Proxy")
                yield Input(
                    proxy,
                    placeholder="proxy.example.com:443",
                    id="proxy",
                    classes="first-field" if first == "proxy" else None,
                )
                yield Label("User")
                yield Input(user, id="user")
                yield Label("Password")
                yield Input(
                    password=True,
                    id="password",
                    classes="first-field" if first == "password" else None,
                )
                yield Label("OTP token")
                yield Input(placeholder="only when the cluster asks for one", id="otp")
            yield Static("", id="detail", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Log in", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#ok")
    @on(Input.Submitted)
    def _submit(self) -> None:
        proxy = self.query_one("#proxy", Input).value.strip()
        user = self.query_one("#user", Input).value.strip()
        if not proxy or not user:
            self._say("The proxy and the user are required.")
            return
        self._say("Logging in…")
        self.query_one("#ok", Button).disabled = True
        self.login(
            proxy,
            user,
            self.query_one("#password", Input).value,
            self.query_one("#otp", Input).value.strip(),
        )

    def _confirm_pin(self, addr: str, pin: str) -> bool:
        """Ask on the UI thread and wait here (worker thread) for the answer."""
        answer: list[bool] = []
        done = threading.Event()

        def got(ok: bool | None) -> None:
            answer.append(bool(ok))
            done.set()

        if not self.is_attached:  # the dialog closed (or the app is exiting): no answer
            return False
        self.app.call_from_thread(
            self.app.push_screen,
            ConfirmScreen(
                f"The authenticity of proxy {addr} can't be established.",
                f"CA pin {pin}\nCompare it with the pin 'tctl status' prints. Trust it?",
                yes="Trust",
            ),
            got,
        )
        while not done.wait(0.5):
            if not self.is_attached:
                return False
        return answer[0]

    @work(thread=True, exclusive=True, group="login")
    def login(self, proxy: str, user: str, password: str, otp: str) -> None:
        """Trust the proxy, ping it, exchange the password for a certificate, save the profile."""
        from jumpgate.core.client.login import establish_trust, ping
        from jumpgate.core.client.login import login as password_login
        from jumpgate.core.client.profile import join_hostport, normalize_proxy_addr

        store = self.state.store
        insecure = self.state.options.insecure
        try:
            host, port = normalize_proxy_addr(proxy)
            addr = join_hostport(host, port)
            trust = establish_trust(
                addr,
                insecure=insecure,
                store=store,
                confirm=lambda pin: self._confirm_pin(addr, pin),
            )
            info = ping(addr, insecure=insecure, ca_pem=trust.ca_pem)
            second = str((info.get("auth") or {}).get("second_factor") or "off")
            if second in ("otp", "on") and not otp:
                raise JumpgateError(
                    "this cluster asks for a one-time code", hint="fill in the OTP token"
                )
            res = password_login(addr, user, password, otp, None, trust=trust)
            store.save(
                proxy_addr=addr,
                user=res.username,
                cluster=res.cluster_name,
                key_pem=res.key_pem,
                cert_pem=res.cert_pem,
                ca_pem=res.host_ca_pem,
                insecure=insecure,
            )
        except JumpgateError as exc:
            to_ui(self, self._failed, exc)
            return
        self.state.options.proxy = addr
        self.state.options.user = res.username
        to_ui(self, self._done, res.username, addr)

    def _failed(self, exc: JumpgateError) -> None:
        self._say(error_text(exc))
        self.query_one("#ok", Button).disabled = False
        self.query_one("#password", Input).focus()

    def _done(self, user: str, addr: str) -> None:
        self.app.notify(f"Logged in as {user} at {addr}", title="Logged in")
        self.dismiss(True)
