"""The setup wizard's whole path against a real cluster: role, bot, tbot.yaml, unit file, a
local proxy and a successful test connection through it."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Button, Input

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.dialogs import ConfirmScreen
from jumpgate.tui.screens.wizard import WizardScreen
from jumpgate.tui.state import DashboardState, Options
from tests.conftest import free_port
from tests.integration.conftest import Cluster
from tests.tui.conftest import SIZE, doc_shot, no_blink, run_async, started, switch, until


@pytest.fixture
def admin(db_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard finds the admin identity as tctl does (TELEPORT_CONFIG_FILE)."""
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(db_cluster.config))


async def _fill(screen: WizardScreen, **values: str) -> None:
    for key, value in values.items():
        screen.query_one(f"#{key.replace('_', '-')}", Input).value = value


async def _click_next(pilot: Any, screen: WizardScreen) -> None:
    """Click Next as a person would: not within the 0.2 s a Button ignores clicks after one."""
    button = screen.query_one("#next", Button)
    await until(pilot, lambda: not button.has_class("-active"), "the Next button to settle")
    await pilot.click("#next")


async def _next_and_confirm(pilot: Any, app: JumpgateApp, screen: WizardScreen, step: int) -> None:
    await _click_next(pilot, screen)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), f"the step {step} dialog")
    yes = app.screen.query_one("#yes")
    await until(pilot, lambda: yes.region.area > 0, "the dialog's layout")
    await pilot.click("#yes")
    await until(pilot, lambda: not screen.busy, f"step {step} to finish", timeout=90)
    assert screen.step == step + 1, str(screen.query_one("#status").render())


def test_whole_path_ends_with_a_successful_test_connection(
    db_cluster: Cluster, postgres: Path, alice_home: Path, admin: None, tmp_path: Path
) -> None:
    config, dest = tmp_path / "etc" / "tbot.yaml", tmp_path / "opt" / "machine-id"
    unit = tmp_path / "systemd" / "tbot-db-proxy.service"
    port = free_port()
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            # step 1: the role (live YAML preview), created as the admin, bot created with it
            await _fill(
                screen,
                role_name="wizard-role",
                db_names="example",
                db_users="alice",
                bot_name="wizbot",
            )
            preview1 = screen.query_one("#preview1")
            await until(
                pilot,
                lambda: (
                    "name: wizard-role" in str(preview1.render())
                    and "db_names: [example]" in str(preview1.render())
                ),
                "the role preview",
            )
            await _next_and_confirm(pilot, app, screen, 1)
            assert screen.applied is not None and screen.applied.bot_created
            assert screen.query_one("#token", Input).value == screen.applied.token
            # step 2: the database output, a new tbot.yaml, tbot run once
            await until(
                pilot,
                lambda: screen.query_one("#proxy-server", Input).value == db_cluster.public_addr,
                "the proxy address from the profile",
            )
            await _fill(
                screen,
                service="pg",
                destination=str(dest),
                config_path=str(config),
                storage=str(tmp_path / "bot-data"),
            )
            assert screen.query_one("#database", Input).value == "example"
            assert screen.query_one("#username", Input).value == "alice"
            await pilot.pause()
            assert not config.exists()  # nothing is written before the confirmation
            no_blink(app)
            doc_shot(app, "wizard-2")
            await _next_and_confirm(pilot, app, screen, 2)
            # step 3: the seed's unit file, and the proxy started now in tunnel mode
            await _fill(screen, port=str(port), unit_path=str(unit))
            await pilot.click("#tunnel")
            preview3 = screen.query_one("#preview3")
            await until(pilot, lambda: "--tunnel pg" in str(preview3.render()), "the tunnel unit")
            no_blink(app)
            doc_shot(app, "wizard-3")
            await _next_and_confirm(pilot, app, screen, 3)
            # step 4: snippets with the real paths, and the test connection
            snippets = str(screen.query_one("#preview4").render())
            assert f"port={port}" in snippets and "dbname=example" in snippets
            await pilot.click("#test")
            await until(pilot, lambda: bool(screen.test_result), "the test connection", timeout=60)
            assert screen.test_result.startswith("Connected as alice to example"), (
                screen.test_result
            )
            await pilot.pause()
            doc_shot(app, "wizard-4")

    run_async(scenario)
    assert "wizard-role" in db_cluster.tctl("get", "role/wizard-role").stdout
    bots = json.loads(db_cluster.tctl("bots", "ls", "--format=json").stdout)
    (bot,) = [b for b in bots if b["metadata"]["name"] == "wizbot"]
    assert "wizard-role" in bot["spec"]["roles"]
    doc = yaml.safe_load(config.read_text())
    assert doc["services"] == [
        {
            "type": "database",
            "destination": {"type": "directory", "path": str(dest)},
            "service": "pg",
            "database": "example",
            "username": "alice",
        }
    ]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert (dest / "tlscert").exists()
    text = unit.read_text()
    assert f"db --port={port} --tunnel pg" in text and f"-c {config} proxy" in text
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert not list(unit.parent.glob(".*"))  # the atomic write left no temporary file


def test_validation_and_nothing_written_without_confirmation(
    db_cluster: Cluster, alice_home: Path, admin: None, tmp_path: Path
) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            await _fill(screen, role_name="never-role", db_users="alice", bot_name="neverbot")
            status = screen.query_one("#status")
            await _click_next(pilot, screen)
            await until(pilot, lambda: "db names" in str(status.render()), "the db names problem")
            assert screen.step == 1 and not isinstance(app.screen, ConfirmScreen)
            await _fill(screen, db_names="example", db_labels="env")
            await _click_next(pilot, screen)
            await until(pilot, lambda: "invalid label" in str(status.render()), "the label error")
            assert screen.step == 1 and not isinstance(app.screen, ConfirmScreen)
            await _fill(screen, db_labels="env=dev")
            # the refusals are said beside the buttons, not in toasts over the Next button
            assert not app._notifications
            await _click_next(pilot, screen)
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the dialog")
            no = app.screen.query_one("#no")
            await until(pilot, lambda: no.region.area > 0, "the dialog's layout")
            await pilot.click("#no")  # cancel: nothing happens
            await until(pilot, lambda: app.screen is screen, "the dialog to close")
            assert screen.step == 1 and screen.applied is None and not screen.busy

    run_async(scenario)
    missing = db_cluster.tctl("get", "role/never-role", check=False)
    assert missing.returncode != 0
