"""The setup wizard: the four steps of machine database access (seed 001), previewed, then applied.

Each step shows what it will create or write; Next validates the step, asks for
confirmation, and only then acts (in a worker): (1) create the role and give it
to the bot, (2) write tbot.yaml (and optionally run tbot once), (3) write the
systemd unit and/or start the local proxy, (4) snippets and a test connection.

Files are read in workers. Step 2 never replaces a tbot.yaml it has not read: Next
waits for the read of the path in the form, and the write reads the file again and
merges into what is there then. Step 3 takes the unit's ``--proxy`` (and the
started proxy's) from the tbot.yaml, else the tsh profile, and refuses without one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Checkbox, ContentSwitcher, Footer, Header, Input, Select, Static

from jumpgate.core.client import dbsetup, snippets
from jumpgate.core.errors import BadParameter, JumpgateError
from jumpgate.tui.notify import error_text, notify_error
from jumpgate.tui.screens.dialogs import ConfirmScreen
from jumpgate.tui.state import DashboardState, StartedProxy
from jumpgate.tui.widgets import wizard_forms as forms
from jumpgate.tui.widgets.fieldkeys import TAB_KEYS
from jumpgate.tui.workers import alive, to_ui

STEPS = ("RBAC", "tbot output", "Local proxy", "Client")
NEXT_LABELS = ("Create role…", "Write tbot.yaml…", "Apply…", "Finish")


class Unread(Enum):
    """A tbot.yaml path whose read has not finished (distinct from "no file there")."""

    NOT_READ = "not read"


NOT_READ = Unread.NOT_READ

#: What the wizard knows of a tbot.yaml: its text, None (no file), or why it can't be read.
ConfigRead = str | None | JumpgateError


class WizardScreen(Screen[None]):
    """Role → tbot output → local proxy → client, with Back/Next."""

    CSS_PATH = "wizard.tcss"
    BINDINGS = [
        Binding("ctrl+b", "back", "Back"),
        Binding("ctrl+n", "next", "Next"),
        *TAB_KEYS,  # typed-ahead text lands in the field Tab moved to (widgets/fieldkeys.py)
    ]

    def __init__(self) -> None:
        super().__init__()
        self.step = 1
        self.applied: dbsetup.RoleApplied | None = None
        #: tbot.yaml path → what its last read found (no entry: not read yet)
        self.existing: dict[str, ConfigRead] = {}
        #: The config path whose read Next waits for (step 2)
        self.next_when_read: str | None = None
        #: Step 3's proxy address: None while it is looked up, "" when there is none
        self.proxy_addr: str | None = None
        self.output: dbsetup.OutputForm | None = None
        self.proxy_form: dbsetup.ProxyForm | None = None
        self.started: StartedProxy | None = None
        self.busy = False
        #: What the test connection returned (for the tests and the screen)
        self.test_result: str = ""

    @property
    def state(self) -> DashboardState:
        return self.app.state  # type: ignore[attr-defined, no-any-return]

    def compose(self) -> ComposeResult:
        opts = self.state.options
        yield Header()
        yield Static("", id="steps")
        with ContentSwitcher(initial="step1", id="wizard"):
            yield from forms.step1("example")
            yield from forms.step2(opts.configs[0] if opts.configs else "", "")
            yield from forms.step3()
            yield from forms.step4()
        with Horizontal(id="nav"):
            yield Static("", id="status", markup=False)
            yield Button("Back", id="back")
            yield Button(NEXT_LABELS[0], id="next", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        # compose ran just before; when the app began to exit meanwhile, the forms were
        # never mounted and there is nothing to show
        if not alive(self):
            return
        self.sub_title = "Setup wizard"
        self.show_step(1)
        self.prefill()

    @work(thread=True, group="wizard-prefill")
    def prefill(self) -> None:
        """The proxy address from the profile (a file read: in a worker)."""
        prof = self.state.profile()
        if prof is not None:
            to_ui(self, self._set_if_empty, "#proxy-server", prof.web_proxy_addr)

    def _set_if_empty(self, selector: str, value: str) -> None:
        box = self.query_one(selector, Input)
        if not box.value:
            box.value = value

    # ------------------------------------------------------------------ navigation
    def show_step(self, step: int) -> None:
        """Switch to ``step`` and refresh its preview (a no-op once the screen is gone)."""
        self.step = step
        if not alive(self):
            return
        self.query_one("#wizard", ContentSwitcher).current = f"step{step}"
        marks = []
        for i, name in enumerate(STEPS, 1):
            style = "bold reverse" if i == step else ("green" if i < step else "dim")
            marks.append((f" {i} {name} ", style))
            if i < len(STEPS):
                marks.append((" > ", "dim"))
        self.query_one("#steps", Static).update(Text.assemble(*marks))
        self.query_one("#back", Button).disabled = step == 1
        self.query_one("#next", Button).label = NEXT_LABELS[step - 1]
        self.set_status("")
        self.next_when_read = None
        if step == 2:
            self.reread(forms.read_output(self).config_path)
        if step == 3:
            self.proxy_addr = None
            self.find_proxy((self.output or forms.read_output(self)).config_path)
        self.update_preview()

    def set_status(self, text: str, style: str = "") -> None:
        """The line beside the buttons."""
        self.query_one("#status", Static).update(Text(text, style=style))

    def action_back(self) -> None:
        """The previous step (what was applied stays applied)."""
        if self.step > 1 and not self.busy:
            self.show_step(self.step - 1)

    def action_next(self) -> None:
        """Validate this step, confirm, apply, then move on."""
        if self.busy:
            return
        try:
            {1: self._next1, 2: self._next2, 3: self._next3, 4: self._next4}[self.step]()
        except JumpgateError as exc:
            self.refuse(exc)

    def refuse(self, exc: JumpgateError) -> None:
        """A refusal of the form: said on the status line beside the buttons only, with a
        bell; a toast would cover the Next button the user presses again after the fix."""
        self.set_status(error_text(exc).replace("\n", " — "), "red")
        self.app.bell()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.action_back()

    @on(Button.Pressed, "#next")
    def _next_pressed(self) -> None:
        self.action_next()

    def _confirm(self, question: str, detail: str, then: Callable[[], object]) -> None:
        def answered(ok: bool | None) -> None:
            if ok:
                self.busy = True
                self.set_status("Working…")
                then()

        self.app.push_screen(ConfirmScreen(question, detail, yes="Confirm"), answered)

    def _done(self, step: int, message: str) -> None:
        self.busy = False
        self.notify(message, title=f"Step {step}", markup=False)
        self.show_step(step + 1)

    def _failed(self, exc: BaseException) -> None:
        self.busy = False
        self.set_status(error_text(exc).replace("\n", " — "), "red")
        notify_error(self.app, exc, title=f"Step {self.step}")

    # ------------------------------------------------------------------ previews
    @on(Input.Changed)
    @on(Checkbox.Changed)
    @on(Select.Changed)
    def _changed(self, event: Any) -> None:
        if getattr(event.control, "id", "") == "config-path":
            self.reread(event.value.strip())
        self.update_preview()

    def update_preview(self) -> None:
        """Redraw the current step's preview (YAML, unit, snippets) or its problems."""
        target = self.query_one(f"#preview{self.step}", Static)
        try:
            target.update(self._preview())
        except JumpgateError as exc:
            target.update(Text(error_text(exc), style="red"))

    def _preview(self) -> Text:
        if self.step == 1:
            form, bot = forms.read_role(self)
            problems = form.problems()
            out = Text("role.yaml\n\n", style="bold")
            out.append(dbsetup.role_yaml(form))
            out.append(f"\nthen: tctl bots update {bot or 'BOT'} --add-roles {form.name}\n", "dim")
            out.append("(or tctl bots add when the bot does not exist yet)\n", "dim")
            for p in problems:
                out.append(f"\n• {p}", "yellow")
            return out
        if self.step == 2:
            return self._preview_config()
        if self.step == 3:
            return self._preview_unit()
        return self._preview_client()

    def _preview_config(self) -> Text:
        form = forms.read_output(self)
        existing = self.existing.get(form.config_path, NOT_READ)
        if existing is NOT_READ:
            return Text(f"{form.config_path} (reading…)", style="bold")
        if isinstance(existing, JumpgateError):
            raise existing
        new = existing is None or not existing.strip()
        self.query_one("#new-config").display = new
        self.query_one("#new-help").display = new
        head = "new file" if new else "adds to the existing file"
        out = Text(f"{form.config_path} ({head})\n\n", style="bold")
        out.append(dbsetup.tbot_yaml(form, existing))
        for p in form.problems(new_config=new):
            out.append(f"\n• {p}", "yellow")
        return out

    def _preview_unit(self) -> Text:
        out_form = self.output or forms.read_output(self)
        form = forms.read_proxy(self)
        out = Text(f"{form.unit_path or '(no unit file)'}\n\n", style="bold")
        out.append(
            dbsetup.proxy_unit(
                form,
                config=out_form.config_path,
                proxy=self.proxy_addr or "PROXY:PORT",
                destination=out_form.destination,
                service=out_form.service or "SERVICE",
            )
        )
        out.append("\nthen: sudo systemctl enable --now " + Path(form.unit_path).stem + "\n", "dim")
        problems = form.problems()
        if self.proxy_addr == "":
            why = no_proxy(out_form.config_path)
            problems.append(f"{why.message}: {why.hint}")
        for p in problems:
            out.append(f"\n• {p}", "yellow")
        return out

    def conn_params(self) -> snippets.ConnParams:
        """Where the client connects: the started proxy, else the configured port."""
        out_form = self.output or forms.read_output(self)
        pf = self.proxy_form or forms.read_proxy(self)
        port = self.started.port if self.started else pf.port
        return snippets.for_destination(
            out_form.destination,
            user=out_form.username or "USER",
            database=out_form.database,
            port=port,
            tunnel=pf.tunnel,
        )

    def _preview_client(self) -> Text:
        p = self.conn_params()
        out = Text()
        for title, body in (
            ("psql", snippets.psql(p) + "\n"),
            ("libpq connection string", snippets.libpq(p) + "\n"),
            ("Python (psycopg)", snippets.psycopg(p)),
            ("Go (pgx)", snippets.pgx(p)),
        ):
            out.append(f"{title}\n", style="bold underline")
            out.append(body + "\n")
        return out

    # ------------------------------------------------------------------ step 1
    def _next1(self) -> None:
        form, bot = forms.read_role(self)
        text = dbsetup.validate_role(form)
        if not bot:
            raise BadParameter("the bot name is empty", hint="name the bot, e.g. example")
        self._confirm(
            f"Create role {form.name!r} and give it to bot {bot!r}?",
            text,
            lambda: self.apply_role(form, bot),
        )

    @work(thread=True, exclusive=True, group="wizard")
    def apply_role(self, form: dbsetup.RoleForm, bot: str) -> None:
        """resources.create + bots.update --add-roles (or bots.add) as the admin."""
        try:
            client = self.state.admin_client()
            try:
                applied = dbsetup.apply_role(client, form, bot)
            finally:
                client.close()
        except JumpgateError as exc:
            to_ui(self, self._failed, exc)
            return
        to_ui(self, self._role_applied, form, applied)

    def _role_applied(self, form: dbsetup.RoleForm, applied: dbsetup.RoleApplied) -> None:
        self.applied = applied
        if applied.token:
            self.query_one("#token", Input).value = applied.token
        if applied.ca_pin:
            self.query_one("#ca-pin", Input).value = applied.ca_pin
        for selector, values in (("#database", form.db_names), ("#username", form.db_users)):
            if values and "*" not in values[0]:
                self._set_if_empty(selector, values[0])
        how = "created with it" if applied.bot_created else "updated"
        self._done(1, f"Role {form.name} {applied.role_action}; bot {applied.bot} {how}")

    # ------------------------------------------------------------------ step 2
    def reread(self, path: str) -> None:
        """Forget what ``path`` held and read it again (until then it counts as not read)."""
        self.existing.pop(path, None)
        self.read_existing(path)

    @work(thread=True, group="wizard-read")
    def read_existing(self, path: str) -> None:
        """The current text of ``path`` (None when there is no file, the error when it
        cannot be read)."""
        found: ConfigRead
        try:
            found = dbsetup.read_config(path)
        except JumpgateError as exc:
            found = exc
        to_ui(self, self._existing_read, path, found)

    def _existing_read(self, path: str, found: ConfigRead) -> None:
        self.existing[path] = found
        if self.step != 2:
            return
        self.update_preview()
        # Next was pressed before this read finished: go on now, if the form still
        # names this file and nothing else happened meanwhile
        if (
            self.next_when_read == path
            and forms.read_output(self).config_path == path
            and not self.busy
            and self.app.screen is self
        ):
            self.next_when_read = None
            self.action_next()

    def _next2(self) -> None:
        form = forms.read_output(self)
        existing = self.existing.get(form.config_path, NOT_READ)
        if existing is NOT_READ:
            # never decide "new file" before the read said so: wait for it
            self.next_when_read = form.config_path
            self.set_status(f"Reading {form.config_path}…")
            return
        if isinstance(existing, JumpgateError):
            raise existing
        problems = form.problems(new_config=existing is None or not existing.strip())
        if problems:
            raise BadParameter(problems[0], hint="; ".join(problems[1:]) or None)
        text = dbsetup.tbot_yaml(form, existing)
        dbsetup.validate_tbot_yaml(text, form.config_path)
        run_once = self.query_one("#run-once", Checkbox).value
        extra = "\nthen run tbot once to write the credentials" if run_once else ""
        self._confirm(
            f"Write {form.config_path}?",
            text + extra,
            lambda: self.write_config(form, text, run_once),
        )

    @work(thread=True, exclusive=True, group="wizard")
    def write_config(self, form: dbsetup.OutputForm, shown: str, run_once: bool) -> None:
        """Write tbot.yaml atomically, merged into the file as it is now (``shown`` is what
        the confirmation showed); optionally ``tbot start --oneshot`` in-process."""
        try:
            written = dbsetup.write_config(form)
            if run_once:
                run_bot_once(form.config_path)
        except (JumpgateError, OSError) as exc:
            to_ui(self, self._failed, exc)
            return
        if form.config_path not in self.state.options.configs:
            self.state.options.configs.append(form.config_path)
        to_ui(self, self._config_written, form, run_once, written != shown)

    def _config_written(self, form: dbsetup.OutputForm, ran: bool, merged: bool) -> None:
        self.output = form
        self.existing.pop(form.config_path, None)
        note = " (merged with changes made to it meanwhile)" if merged else ""
        note += " and the credentials written" if ran else ""
        self._done(2, f"Wrote {form.config_path}{note}")

    # ------------------------------------------------------------------ step 3
    def proxy_address(self, config_path: str) -> str:
        """In a worker: the proxy the tbot.yaml joins through, else the tsh profile's ("" if none)."""
        addr = dbsetup.config_proxy(config_path)
        if not addr:
            try:
                prof = self.state.profile()
            except (JumpgateError, OSError):
                prof = None
            addr = prof.web_proxy_addr if prof is not None else ""
        return addr

    @work(thread=True, group="wizard-proxy")
    def find_proxy(self, config_path: str) -> None:
        """The proxy address for step 3's preview (file reads: in a worker)."""
        to_ui(self, self._proxy_found, self.proxy_address(config_path))

    def _proxy_found(self, addr: str) -> None:
        self.proxy_addr = addr
        if self.step == 3:
            self.update_preview()

    def _next3(self) -> None:
        form = forms.read_proxy(self)
        problems = form.problems()
        if problems:
            raise BadParameter(problems[0], hint="; ".join(problems[1:]) or None)
        write_unit = self.query_one("#write-unit", Checkbox).value and bool(form.unit_path)
        start = self.query_one("#start-now", Checkbox).value
        if not write_unit and not start:
            self.proxy_form = form
            self.show_step(4)
            return
        # the address is read again now (the tbot.yaml may have changed): in a worker
        self.busy = True
        self.set_status("Looking up the proxy address…")
        self.check_proxy(self.output or forms.read_output(self), form, write_unit, start)

    @work(thread=True, group="wizard-proxy")
    def check_proxy(
        self, out_form: dbsetup.OutputForm, form: dbsetup.ProxyForm, write_unit: bool, start: bool
    ) -> None:
        """Step 3's proxy address, then back to the UI to confirm (or refuse without one)."""
        try:
            addr = self.proxy_address(out_form.config_path)
        except Exception as exc:  # never leave the step busy: say what went wrong
            to_ui(self, self._failed, exc)
            return
        to_ui(self, self._confirm3, out_form, form, write_unit, start, addr)

    def _confirm3(
        self,
        out_form: dbsetup.OutputForm,
        form: dbsetup.ProxyForm,
        write_unit: bool,
        start: bool,
        addr: str,
    ) -> None:
        self.busy = False
        self._proxy_found(addr)
        if not addr:
            # never a unit with an empty --proxy=
            self.refuse(no_proxy(out_form.config_path))
            return
        self.set_status("")
        unit = dbsetup.proxy_unit(
            form,
            config=out_form.config_path,
            proxy=addr,
            destination=out_form.destination,
            service=out_form.service,
        )
        what = []
        if write_unit:
            what.append(f"write {form.unit_path}")
        if start:
            mode = "tunnel" if form.tunnel else "TLS"
            what.append(f"start the local proxy on 127.0.0.1:{form.port} ({mode} mode)")
        self._confirm(
            " and ".join(what).capitalize() + "?",
            unit if write_unit else "",
            lambda: self.apply_proxy(out_form, form, unit if write_unit else None, start, addr),
        )

    @work(thread=True, exclusive=True, group="wizard")
    def apply_proxy(
        self,
        out: dbsetup.OutputForm,
        form: dbsetup.ProxyForm,
        unit: str | None,
        start: bool,
        proxy_addr: str,
    ) -> None:
        """Write the unit (0644, atomically) and/or start ``tbot proxy db`` in the dashboard."""
        try:
            if unit is not None:
                dbsetup.write_text(form.unit_path, unit, mode=0o644)
            started = None
            if start:
                started = self.state.start_bot_proxy(
                    proxy_addr=proxy_addr,
                    destination=out.destination,
                    service=out.service,
                    port=form.port,
                    tunnel=form.tunnel,
                )
        except JumpgateError as exc:
            to_ui(self, self._failed, exc)
            return
        to_ui(self, self._proxy_applied, form, unit is not None, started)

    def _proxy_applied(
        self, form: dbsetup.ProxyForm, wrote: bool, started: StartedProxy | None
    ) -> None:
        self.proxy_form = form
        self.started = started
        parts = []
        if wrote:
            parts.append(f"wrote {form.unit_path}")
        if started is not None:
            parts.append(f"local proxy on {started.host}:{started.port} ({started.mode})")
        self._done(3, "; ".join(parts).capitalize())

    # ------------------------------------------------------------------ step 4
    def _next4(self) -> None:
        self.notify("The setup is complete.", title="Setup wizard")
        self.app.switch_mode("certificates")

    @on(Button.Pressed, "#test")
    def _test_pressed(self) -> None:
        self.query_one("#test-result", Static).update("Connecting…")
        self.test_connection(self.conn_params())

    @work(thread=True, exclusive=True, group="wizard-test")
    def test_connection(self, params: snippets.ConnParams) -> None:
        """``select current_user, current_database()`` through the local proxy."""
        from jumpgate.core.client.pgquery import run_query

        try:
            res = run_query(params, "select current_user, current_database(), version()")
            user, db, version = (res.rows[0] + [None, None, None])[:3]
            text = f"Connected as {user} to {db}: {str(version or '').split(',')[0]}"
            style = "bold green"
        except JumpgateError as exc:
            text, style = "Failed: " + error_text(exc).replace("\n", " — "), "bold red"
        to_ui(self, self._tested, text, style)

    def _tested(self, text: str, style: str) -> None:
        self.test_result = text
        self.query_one("#test-result", Static).update(Text(text, style=style))


def no_proxy(config_path: str) -> BadParameter:
    """Why step 3 cannot go on: no proxy address in the tbot.yaml nor a tsh profile."""
    return BadParameter(
        f"no proxy address for the local proxy: {config_path or 'the tbot.yaml'} sets no "
        "proxy_server and there is no tsh profile",
        hint=(
            "log in with tsh login --proxy=HOST:PORT, or set proxy_server: "
            f"HOST:PORT in {config_path or 'the tbot.yaml'}, then press Next again"
        ),
    )


def run_bot_once(config_path: str) -> None:
    """``tbot start -c CONFIG --oneshot`` in this process (a worker thread)."""
    from jumpgate.core.bot.bot import Bot
    from jumpgate.core.bot.config import load_config

    cfg = load_config(config_path)
    cfg.oneshot = True
    asyncio.run(Bot(cfg).run())
