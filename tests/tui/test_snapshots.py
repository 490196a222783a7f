"""Snapshot tests (pytest-textual-snapshot): fixed terminal size, no cursor blink, fixed data.

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report. ``JUMPGATE_DOC_SHOTS=1`` also writes the guide's SVGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.databases import DatabasesScreen
from jumpgate.tui.screens.login import LoginScreen
from jumpgate.tui.screens.wizard import WizardScreen
from jumpgate.tui.state import DashboardState, Options
from tests.tui.conftest import SIZE, doc_shot, no_blink, until
from tests.tui.test_databases import synthetic


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JumpgateApp:
    """A dashboard without a profile (nothing on screen depends on the clock or the network)."""
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(tmp_path / "no-teleport.yaml"))
    return JumpgateApp(DashboardState(Options(home=str(tmp_path / "tsh"), user="alice")))


async def _settle_databases(pilot: Any) -> DatabasesScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the login offer")
    await pilot.press("escape")
    screen = app.screen
    assert isinstance(screen, DatabasesScreen)
    count = screen.query_one("#count")
    await until(pilot, lambda: "Loading" not in str(count.render()), "the failed load")
    app.clear_notifications()
    no_blink(app)
    return screen


def test_databases_with_synthetic_rows(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        screen = await _settle_databases(pilot)
        screen.show_databases(synthetic(10_000))
        await pilot.press("down", "down", "down")
        await pilot.pause()
        doc_shot(pilot.app, "databases")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_databases_filtered_light_theme(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        screen = await _settle_databases(pilot)
        screen.show_databases(synthetic(10_000))
        await pilot.press("t", "slash", *"env=prod team=t4 12")
        no_blink(pilot.app)
        await pilot.pause()
        doc_shot(pilot.app, "databases-light")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_login_dialog(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(pilot.app.screen, LoginScreen), "the login offer")
        no_blink(pilot.app)
        pilot.app.screen.query_one("#proxy").value = "proxy.example.com:443"
        await pilot.pause()
        doc_shot(pilot.app, "login")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_wizard_step_one_with_its_yaml_preview(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await _settle_databases(pilot)
        await pilot.press("w")
        screen = pilot.app.screen
        assert isinstance(screen, WizardScreen)
        screen.query_one("#db-names").value = "example-db"
        screen.query_one("#db-users").value = "alice"
        no_blink(pilot.app)
        screen.query_one("#next").focus()
        await pilot.pause()
        doc_shot(pilot.app, "wizard-1")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
