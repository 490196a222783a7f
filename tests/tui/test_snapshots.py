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
from jumpgate.tui.screens.wizard import WizardScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.resource_table import ResourceTable, parse_filter, row_matches
from tests.tui.conftest import SIZE, decline_login, doc_shot, login_offer, no_blink, switch, until
from tests.tui.test_databases import synthetic


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> JumpgateApp:
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(tmp_path / "no-teleport.yaml"))
    return JumpgateApp(DashboardState(Options(home=str(tmp_path / "tsh"), user="alice", **opts)))


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JumpgateApp:
    """A dashboard without a profile (nothing on screen depends on the clock or the network)."""
    return _app(tmp_path, monkeypatch)


async def _failed_load(pilot: Any) -> None:
    """The Databases screen (under any dialog) has shown why it could not load (no profile:
    in its status line, without a notification that would fade at a time of its own)."""
    base = pilot.app.screen_stack[0]
    assert isinstance(base, DatabasesScreen)
    count = base.query_one("#count")
    await until(pilot, lambda: "Loading" not in str(count.render()), "the failed load")
    assert not pilot.app._notifications


async def _settle_databases(pilot: Any) -> DatabasesScreen:
    screen = await decline_login(pilot)
    await _failed_load(pilot)
    no_blink(pilot.app)
    return screen  # type: ignore[no-any-return]


def test_databases_with_synthetic_rows(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        screen = await _settle_databases(pilot)
        screen.show_databases(synthetic(10_000))
        await pilot.press("down", "down", "down")
        table = screen.query_one("#dbs", ResourceTable)
        await until(pilot, lambda: table.current is not None, "the cursor")
        assert table.current is not None and table.current.key == "db-00003"
        doc_shot(pilot.app, "databases")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_databases_filtered_light_theme(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        screen = await _settle_databases(pilot)
        screen.show_databases(synthetic(10_000))
        await pilot.press("t", "slash", *"env=prod team=t4 12")
        table = screen.query_one("#dbs", ResourceTable)
        words, labels = parse_filter("env=prod team=t4 12")
        want = [i for i, r in enumerate(table.rows) if row_matches(r, words, labels)]
        await until(pilot, lambda: table.view == want, "the filter")
        assert pilot.app.theme == "textual-light"
        no_blink(pilot.app)
        doc_shot(pilot.app, "databases-light")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_login_dialog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snap_compare: Any) -> None:
    # as `jumpgate --proxy=proxy.example.com:443 --user=alice` opens it: the dialog is filled
    # in by the options, the password field has the focus
    app = _app(tmp_path, monkeypatch, proxy="proxy.example.com:443")

    async def run_before(pilot: Any) -> None:
        login = await login_offer(pilot)
        assert pilot.app.focused is login.query_one("#password")
        await _failed_load(pilot)
        no_blink(pilot.app)
        doc_shot(pilot.app, "login")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_wizard_step_one_with_its_yaml_preview(app: JumpgateApp, snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await _settle_databases(pilot)
        screen = await switch(pilot, "w", WizardScreen)
        screen.query_one("#db-names").value = "example-db"
        screen.query_one("#db-users").value = "alice"
        no_blink(pilot.app)
        screen.query_one("#next").focus()
        preview = screen.query_one("#preview1")
        await until(pilot, lambda: "db_users: [alice]" in str(preview.render()), "the preview")
        doc_shot(pilot.app, "wizard-1")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
