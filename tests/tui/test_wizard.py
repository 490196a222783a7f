"""The setup wizard's whole path against a real cluster: role, bot, tbot.yaml, unit file, a
local proxy and a successful test connection through it; for a new bot and for an existing
bot with an existing tbot.yaml; Back, the refusals of each step, and what is never written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Button, Checkbox, Input

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.dialogs import ConfirmScreen
from jumpgate.tui.screens.wizard import WizardScreen
from jumpgate.tui.state import DashboardState, Options
from tests.conftest import free_port
from tests.integration.conftest import Cluster, parse_status
from tests.tui.conftest import (
    SIZE,
    decline_login,
    doc_shot,
    no_blink,
    run_async,
    shown,
    started,
    switch,
    until,
)


@pytest.fixture
def admin(db_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard finds the admin identity as tctl does (TELEPORT_CONFIG_FILE)."""
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(db_cluster.config))


async def _fill(screen: WizardScreen, **values: str) -> None:
    for key, value in values.items():
        screen.query_one(f"#{key.replace('_', '-')}", Input).value = value


async def _click(pilot: Any, screen: WizardScreen, button_id: str) -> None:
    """Click a button as a person would: not within the 0.2 s a Button ignores clicks after one."""
    button = screen.query_one(f"#{button_id}", Button)
    await until(pilot, lambda: not button.has_class("-active"), f"the {button_id} button to settle")
    await pilot.click(f"#{button_id}")


async def _tick(pilot: Any, screen: WizardScreen, box_id: str) -> None:
    """Tick a checkbox with a click, and see it ticked (a toast over it would take the click)."""
    box = screen.query_one(f"#{box_id}", Checkbox)
    assert not box.value, f"{box_id} is already ticked"
    pilot.app.clear_notifications()
    await until(pilot, lambda: box.region.area > 0 and not pilot.app._notifications, "the box")
    await pilot.click(f"#{box_id}")
    await until(pilot, lambda: box.value, f"the {box_id} box to be ticked")


async def _press_test(pilot: Any, screen: WizardScreen) -> None:
    """Click Test connection with no toast over it."""
    pilot.app.clear_notifications()
    await until(pilot, lambda: not pilot.app._notifications, "the toasts to go")
    await _click(pilot, screen, "test")


async def _click_next(pilot: Any, screen: WizardScreen) -> None:
    await _click(pilot, screen, "next")


async def _yes(pilot: Any, app: JumpgateApp, screen: WizardScreen, step: int) -> None:
    """Confirm the dialog that is up; the step done (the next one shown) or its error said."""
    # the dialog is the screen before its buttons are mounted: wait for them, then layout
    await until(pilot, lambda: len(app.screen.query("#yes")) > 0, "the dialog's buttons")
    yes = app.screen.query_one("#yes")
    await until(pilot, lambda: yes.region.area > 0, "the dialog's layout")
    await pilot.click("#yes")

    def over() -> bool:
        if screen.step != step:
            return True
        return not screen.busy and _status(screen) not in ("", "Working…")

    await until(pilot, over, f"step {step} to finish", timeout=90)
    assert screen.step == step + 1, _status(screen)


async def _next_and_confirm(pilot: Any, app: JumpgateApp, screen: WizardScreen, step: int) -> None:
    await _click_next(pilot, screen)
    await shown(pilot, ConfirmScreen, f"the step {step} dialog")
    await _yes(pilot, app, screen, step)


def _status(screen: WizardScreen) -> str:
    return str(screen.query_one("#status").render())


async def _refused(pilot: Any, app: JumpgateApp, screen: WizardScreen, says: str) -> None:
    """Next is refused with ``says`` on the status line beside the buttons (no dialog)."""
    step = screen.step
    screen.set_status("")  # the previous refusal may have said the same
    await _click_next(pilot, screen)
    await until(pilot, lambda: says in _status(screen), f"the refusal {says!r}")
    await until(pilot, lambda: not screen.busy, "the wizard to be idle")
    assert screen.step == step and app.screen is screen, _status(screen)


async def _step1(pilot: Any, app: JumpgateApp, screen: WizardScreen, role: str, bot: str) -> None:
    await _fill(screen, role_name=role, db_names="example", db_users="alice", bot_name=bot)
    await _next_and_confirm(pilot, app, screen, 1)


def _bot_roles(cluster: Cluster, name: str) -> list[str]:
    bots = json.loads(cluster.tctl("bots", "ls", "--format=json").stdout)
    (bot,) = [b for b in bots if b["metadata"]["name"] == name]
    return list(bot["spec"]["roles"])


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
            await _tick(pilot, screen, "tunnel")
            preview3 = screen.query_one("#preview3")
            await until(pilot, lambda: "--tunnel pg" in str(preview3.render()), "the tunnel unit")
            no_blink(app)
            doc_shot(app, "wizard-3")
            await _next_and_confirm(pilot, app, screen, 3)
            # step 4: snippets with the real paths, and the test connection
            snippets = str(screen.query_one("#preview4").render())
            assert f"port={port}" in snippets and "dbname=example" in snippets
            await _press_test(pilot, screen)
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
            await shown(pilot, ConfirmScreen, "the dialog")
            await until(pilot, lambda: len(app.screen.query("#no")) > 0, "the dialog's buttons")
            no = app.screen.query_one("#no")
            await until(pilot, lambda: no.region.area > 0, "the dialog's layout")
            await pilot.click("#no")  # cancel: nothing happens
            await until(pilot, lambda: app.screen is screen, "the dialog to close")
            assert screen.step == 1 and screen.applied is None and not screen.busy

    run_async(scenario)
    missing = db_cluster.tctl("get", "role/never-role", check=False)
    assert missing.returncode != 0


def test_existing_bot_and_tbot_yaml_whole_path(
    db_cluster: Cluster, postgres: Path, alice_home: Path, admin: None, tmp_path: Path
) -> None:
    """An existing bot gets the role (bots update --add-roles); Next pressed before the
    existing tbot.yaml was read waits for the read; a service added to the file while the
    confirmation is up is kept; the file keeps its mode; the bot then reaches the database."""
    out = json.loads(
        db_cluster.tctl("bots", "add", "exbot", "--roles=access", "--format=json").stdout
    )
    pin = parse_status(db_cluster.tctl("status").stdout)["CA pin"]
    config, dest = tmp_path / "tbot.yaml", tmp_path / "db-out"
    unit = tmp_path / "tbot-db-proxy.service"
    identity = {
        "type": "identity",
        "destination": {"type": "directory", "path": str(tmp_path / "id")},
    }
    later = {
        "type": "identity",
        "destination": {"type": "directory", "path": str(tmp_path / "id2")},
    }
    original = {
        "version": "v2",
        "proxy_server": db_cluster.public_addr,
        "onboarding": {"join_method": "token", "token": out["token_id"], "ca_pins": [pin]},
        "storage": {"type": "directory", "path": str(tmp_path / "bot-data")},
        "services": [identity],
    }
    config.write_text(yaml.safe_dump(original))
    config.chmod(0o640)
    # a tbot running as its own user owns its config; the dashboard (root here) keeps it so
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(config, *owner)
    port = free_port()
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            await _step1(pilot, app, screen, "exrole", "exbot")
            assert screen.applied is not None and not screen.applied.bot_created
            assert screen.query_one("#token", Input).value == ""  # no new token
            # step 2: Next right after naming the file, before its read could finish (the
            # new-config fields filled too, as if the user had: they must not matter)
            await _fill(
                screen,
                service="pg",
                destination=str(dest),
                token=out["token_id"],
                storage=str(tmp_path / "other-data"),
                config_path=str(config),
            )
            screen.action_next()
            # no "new file" decided before the read: the wizard waits for it
            assert not isinstance(app.screen, ConfirmScreen)
            assert "Reading" in _status(screen)
            await shown(pilot, ConfirmScreen, "the dialog")
            # another output added while the confirmation is up
            doc = yaml.safe_load(config.read_text())
            doc["services"].append(later)
            config.write_text(yaml.safe_dump(doc))
            await _yes(pilot, app, screen, 2)
            # step 3: the unit's --proxy is the tbot.yaml's; the proxy started in tunnel mode
            await _fill(screen, port=str(port), unit_path=str(unit))
            await _tick(pilot, screen, "tunnel")
            await _next_and_confirm(pilot, app, screen, 3)
            await _press_test(pilot, screen)
            await until(pilot, lambda: bool(screen.test_result), "the test connection", timeout=60)
            assert screen.test_result.startswith("Connected as alice to example"), (
                screen.test_result
            )

    run_async(scenario)
    assert sorted(_bot_roles(db_cluster, "exbot")) == ["access", "exrole"]
    doc = yaml.safe_load(config.read_text())
    assert doc["services"] == [
        identity,
        later,
        {
            "type": "database",
            "destination": {"type": "directory", "path": str(dest)},
            "service": "pg",
            "database": "example",
            "username": "alice",
        },
    ]
    assert {k: v for k, v in doc.items() if k != "services"} == {
        k: v for k, v in original.items() if k != "services"
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert (config.stat().st_uid, config.stat().st_gid) == owner
    assert not list(tmp_path.glob(".tbot.yaml.*"))
    assert (dest / "tlscert").exists() and (tmp_path / "id2").is_dir()
    assert f"--proxy={db_cluster.public_addr} " in unit.read_text()


def test_back_keeps_each_steps_values(
    db_cluster: Cluster, alice_home: Path, admin: None, tmp_path: Path
) -> None:
    """Back returns to the previous step with what was typed there; going on again
    updates the now existing bot and rewrites the same output (no duplicate)."""
    config, dest = tmp_path / "tbot.yaml", tmp_path / "out"
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            await _fill(screen, db_labels="env=dev")
            await _step1(pilot, app, screen, "backrole", "backbot")
            token = screen.query_one("#token", Input).value
            assert token
            await _fill(
                screen,
                service="pg",
                destination=str(dest),
                config_path=str(config),
                storage=str(tmp_path / "data"),
            )
            screen.query_one("#run-once", Checkbox).value = False
            await _click(pilot, screen, "back")
            await until(pilot, lambda: screen.step == 1, "step 1")
            values = {
                k: screen.query_one(f"#{k}", Input).value
                for k in ("role-name", "db-labels", "db-names", "db-users", "bot-name")
            }
            assert values == {
                "role-name": "backrole",
                "db-labels": "env=dev",
                "db-names": "example",
                "db-users": "alice",
                "bot-name": "backbot",
            }
            preview1 = screen.query_one("#preview1")
            await until(pilot, lambda: "name: backrole" in str(preview1.render()), "preview 1")
            await _next_and_confirm(pilot, app, screen, 1)
            assert screen.applied is not None and not screen.applied.bot_created
            for key, value in (
                ("service", "pg"),
                ("destination", str(dest)),
                ("config-path", str(config)),
                ("token", token),
            ):
                assert screen.query_one(f"#{key}", Input).value == value, key
            assert not screen.query_one("#run-once", Checkbox).value
            await _next_and_confirm(pilot, app, screen, 2)
            await _fill(screen, port="23456")
            await _tick(pilot, screen, "tunnel")
            await _click(pilot, screen, "back")
            await until(pilot, lambda: screen.step == 2, "step 2")
            assert screen.query_one("#service", Input).value == "pg"
            preview2 = screen.query_one("#preview2")
            await until(
                pilot, lambda: "adds to the existing file" in str(preview2.render()), "the read"
            )
            await _next_and_confirm(pilot, app, screen, 2)
            assert screen.query_one("#port", Input).value == "23456"
            assert screen.query_one("#tunnel", Checkbox).value

    run_async(scenario)
    assert _bot_roles(db_cluster, "backbot") == ["backrole"]
    doc = yaml.safe_load(config.read_text())
    assert [s["destination"]["path"] for s in doc["services"]] == [str(dest)]


def test_steps_2_and_3_refuse_invalid_input_and_write_nothing(
    db_cluster: Cluster, alice_home: Path, admin: None, tmp_path: Path
) -> None:
    config, dest = tmp_path / "tbot.yaml", tmp_path / "out"
    unit = tmp_path / "bad.service"
    listy = tmp_path / "listy.yaml"
    listy.write_text("- a\n- b\n")
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            await _step1(pilot, app, screen, "valrole", "valbot")
            screen.query_one("#run-once", Checkbox).value = False
            await _fill(screen, config_path=str(config), storage=str(tmp_path / "data"))
            await _refused(pilot, app, screen, "service: the database's name")
            await _fill(screen, service="pg", destination="relative/out")
            await _refused(pilot, app, screen, "destination: an absolute directory path")
            await _fill(screen, destination=str(dest), storage="data")
            await _refused(pilot, app, screen, "storage: an absolute directory path")
            await _fill(screen, storage=str(tmp_path / "data"), config_path=str(tmp_path))
            await _refused(pilot, app, screen, f"{tmp_path} is a directory")
            await _fill(screen, config_path=str(listy))
            await _refused(pilot, app, screen, "expected a YAML mapping")
            assert listy.read_text() == "- a\n- b\n" and not config.exists()
            await _fill(screen, config_path=str(config))
            await _next_and_confirm(pilot, app, screen, 2)
            # step 3
            await _fill(screen, port="0", unit_path=str(unit))
            await _refused(pilot, app, screen, "port: a TCP port between 1 and 65535")
            await _fill(screen, port="70000")
            await _refused(pilot, app, screen, "port: a TCP port between 1 and 65535")
            await _fill(screen, port=str(free_port()), unit_path=str(tmp_path / "bad.conf"))
            await _refused(pilot, app, screen, "unit file: the name must end in .service")
            assert screen.started is None and not app.state.started

    run_async(scenario)
    assert not unit.exists() and not (tmp_path / "bad.conf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".service", ".conf")] == []


def test_unit_proxy_comes_from_tbot_yaml_and_is_never_empty(
    db_cluster: Cluster, admin: None, tmp_path: Path
) -> None:
    """No tsh profile, and a tbot.yaml without proxy_server: step 3 refuses to write a unit
    with an empty --proxy=; once the tbot.yaml names the proxy, the unit gets it."""
    config, unit = tmp_path / "tbot.yaml", tmp_path / "tbot-db-proxy.service"
    original = {
        "version": "v2",
        "onboarding": {"join_method": "token", "token": "some-token"},
        "storage": {"type": "directory", "path": str(tmp_path / "data")},
        "services": [
            {"type": "identity", "destination": {"type": "directory", "path": str(tmp_path / "id")}}
        ],
    }
    config.write_text(yaml.safe_dump(original))
    app = JumpgateApp(DashboardState(Options(home=str(tmp_path / "no-profile"))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await decline_login(pilot)
            screen = await switch(pilot, "w", WizardScreen)
            await _step1(pilot, app, screen, "proxrole", "proxbot")
            screen.query_one("#run-once", Checkbox).value = False
            await _fill(
                screen, service="pg", destination=str(tmp_path / "out"), config_path=str(config)
            )
            await _next_and_confirm(pilot, app, screen, 2)
            await _fill(screen, unit_path=str(unit), port=str(free_port()))
            screen.query_one("#start-now", Checkbox).value = False
            await _refused(pilot, app, screen, "no proxy address for the local proxy")
            assert "set proxy_server: HOST:PORT in" in _status(screen)
            assert not unit.exists()
            preview3 = str(screen.query_one("#preview3").render())
            assert "--proxy=PROXY:PORT" in preview3 and "sets no proxy_server" in preview3
            # the user names the proxy in tbot.yaml; Next reads it again
            doc = yaml.safe_load(config.read_text())
            doc["proxy_server"] = db_cluster.public_addr
            config.write_text(yaml.safe_dump(doc))
            await _next_and_confirm(pilot, app, screen, 3)

    run_async(scenario)
    text = unit.read_text()
    assert f"--proxy={db_cluster.public_addr} " in text and "--proxy= " not in text
