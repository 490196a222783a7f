"""Small modal dialogs: confirm, and the options of a database connection or local proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from jumpgate.tui.widgets.fieldkeys import ARROW_KEYS, TAB_KEYS


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no, with what will happen spelled out."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    BINDINGS = [
        Binding("escape", "dismiss(False)", "Cancel", priority=True),
        Binding("y", "dismiss(True)", "Yes", show=False),
    ]

    def __init__(self, question: str, detail: str = "", *, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="question")
            if self.detail:
                yield Static(self.detail, id="detail", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(self.yes, variant="primary", id="yes")
                yield Button("Cancel", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class DbOptionsScreen(ModalScreen[dict[str, Any] | None]):
    """Database user and name, and for a local proxy: port and tunnel mode."""

    CSS_PATH = Path(__file__).with_name("dialogs.tcss")
    # Tab and the arrows move between fields at once (see widgets/fieldkeys.py)
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel", priority=True), *TAB_KEYS, *ARROW_KEYS]

    def __init__(
        self, title: str, *, db_user: str = "", db_name: str = "", proxy: bool = False
    ) -> None:
        super().__init__()
        self.title_text = title
        self.db_user = db_user
        self.db_name = db_name
        self.proxy = proxy

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="question")
            with Grid(classes="form"):
                yield Label("Database user")
                yield Input(self.db_user, placeholder="e.g. alice", id="db-user")
                yield Label("Database name")
                yield Input(self.db_name, placeholder="e.g. postgres", id="db-name")
                if self.proxy:
                    yield Label("Local port")
                    yield Input("0", placeholder="0 = any free port", id="port", type="integer")
                    yield Label("Mode")
                    yield Checkbox("Authenticated tunnel (--tunnel)", True, id="tunnel")
            with Horizontal(classes="buttons"):
                yield Button("Start" if self.proxy else "Connect", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        """Typing goes to the first field at once."""
        self.query_one("#db-user", Input).focus()

    def on_input_submitted(self) -> None:
        self._finish()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._finish()
        else:
            self.dismiss(None)

    def _finish(self) -> None:
        out: dict[str, Any] = {
            "db_user": self.query_one("#db-user", Input).value.strip() or None,
            "db_name": self.query_one("#db-name", Input).value.strip() or None,
        }
        if self.proxy:
            raw = self.query_one("#port", Input).value.strip() or "0"
            port = int(raw) if raw.isdigit() else -1
            if not 0 <= port < 65536:
                self.notify("the port must be 0 (any) or 1-65535", severity="error")
                return
            out["port"] = port
            out["tunnel"] = self.query_one("#tunnel", Checkbox).value
        self.dismiss(out)
