"""Setup wizard (placeholder while it is built)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class WizardScreen(Screen[None]):
    """The four steps of seed 001."""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("wizard")
        yield Footer()
