"""The dashboard as a program: bad start-up input, SIGTERM/SIGHUP in a real terminal, and the
command palette's commands."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from jumpgate.tui.dashboard import LIGHT, JumpgateApp
from jumpgate.tui.screens.login import LoginScreen
from jumpgate.tui.screens.proxies import ProxiesScreen
from jumpgate.tui.state import DashboardState, Options
from tests.integration.conftest import Cluster, cli_env
from tests.tui.conftest import SIZE, decline_login, ready, run_async, shown, until
from tests.tui.test_tmux_e2e import JUMPGATE, TMUX_ENV, Tmux, pane_command


# ------------------------------------------------------------------ bad start-up input
def _jumpgate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in TMUX_ENV.items() if not k.startswith("TELEPORT_")}
    env["TELEPORT_HOME"] = str(tmp_path / "tsh")
    return subprocess.run(
        [JUMPGATE, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("kind", "want"),
    [
        ("missing-config", "ERROR: the tbot config {path} does not exist\ncreate it"),
        (
            "invalid-config",
            "ERROR: {path}, line 3: outputs[0].type: unknown output type 'nonsense'\nvalid types",
        ),
        ("missing-destination", "ERROR: the tbot destination directory {path} does not exist\n"),
        ("file-as-destination", "ERROR: the tbot destination {path} is not a directory\n"),
    ],
)
def test_bad_config_or_destination_stops_before_the_terminal_is_taken(
    tmp_path: Path, kind: str, want: str
) -> None:
    """``-c``/``--destination-dir`` are checked before Textual starts: exit 2, the loader's
    message and hint on stderr, nothing drawn on stdout, no traceback."""
    if kind == "missing-config":
        path = tmp_path / "nonexistent.yaml"
        args = ["-c", str(path)]
    elif kind == "invalid-config":
        path = tmp_path / "tbot.yaml"
        path.write_text("version: v2\noutputs:\n  - type: nonsense\n    destination: 3\n")
        args = ["-c", str(path)]
    elif kind == "missing-destination":
        path = tmp_path / "no-such-dir"
        args = ["--destination-dir", str(path)]
    else:
        path = tmp_path / "a-file"
        path.write_text("")
        args = ["--destination-dir", str(path)]
    res = _jumpgate(tmp_path, *args)
    assert res.returncode == 2, (res.returncode, res.stderr)  # BadParameter's code, as tbot
    assert res.stderr.startswith(want.format(path=path)), res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""  # no escape sequence: the terminal was never taken over


def test_bad_config_error_is_the_tbot_loaders(tmp_path: Path) -> None:
    """The same message and hint as ``tbot -c`` prints for the same file."""
    path = tmp_path / "tbot.yaml"
    path.write_text("version: v2\nnot_a_key: 1\n")
    res = _jumpgate(tmp_path, "-c", str(path))
    tbot = subprocess.run(
        [str(Path(JUMPGATE).with_name("tbot")), "start", "-c", str(path), "--oneshot"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=TMUX_ENV,
        timeout=60,
        check=False,
    )
    assert res.returncode == tbot.returncode == 2
    assert res.stderr.startswith(f"ERROR: {path}, line 2: not_a_key: unknown key\nvalid keys"), (
        res.stderr
    )
    assert res.stderr == tbot.stderr, (res.stderr, tbot.stderr)


# ------------------------------------------------------------------ signals in a terminal
def _pane(tmux: Tmux, fmt: str) -> str:
    return tmux.run("display-message", "-p", "-t", "jg", fmt).stdout.strip()


#: The pane's terminal modes: alternate screen, then the mouse-reporting modes Textual sets
MODES = "#{alternate_on} #{mouse_standard_flag} #{mouse_button_flag} #{mouse_any_flag} #{mouse_sgr_flag}"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_restores_the_terminal_and_stops_the_dashboards_proxies(
    db_cluster: Cluster,
    alice_home: Path,
    pg_service: Path,
    tmux: Tmux,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    env = cli_env()
    env.update(TELEPORT_HOME=str(alice_home), PGSERVICEFILE=str(pg_service), TERM="xterm-256color")
    # the pane's shell keeps the pane (and its terminal modes) after jumpgate exits, and
    # writes down its exit status
    exit_file = tmp_path / "exit-status"
    tmux.start(f"{pane_command(env)}; echo $? > {exit_file}; exec sleep 600")
    tmux.wait_for(r"^.*\bpg\b.*postgres.*Example PostgreSQL")
    modes = _pane(tmux, MODES).split()
    assert modes[0] == "1"  # the alternate screen
    assert "1" in modes[1:]  # mouse reporting
    # a local proxy started from the dashboard: the keys as fast as tmux sends them, in one
    # burst (Tab, or Down, must move to the next field before the characters after it arrive)
    tmux.run("send-keys", "-t", "jg", "s")
    tmux.wait_for(r"Local proxy for pg \(tsh proxy db\)")
    move = "Tab" if sig == signal.SIGHUP else "Down"
    tmux.run("send-keys", "-t", "jg", "alice", move, "example", "Enter")
    # the details pane says where it runs (port 0: any free port)
    screen = tmux.wait_for(r"Running\s+127\.0\.0\.1:\d+ \(tunnel\)", timeout=60)
    found = re.search(r"Running\s+127\.0\.0\.1:(\d+) \(tunnel\)", screen)
    assert found is not None
    port = int(found.group(1))
    # its status file is named after jumpgate's pid
    (status,) = (alice_home / "proxies").glob(f"*-{port}.json")
    pid = int(status.name.split("-")[0])
    assert not _refused(port)

    os.kill(pid, sig)
    deadline = time.monotonic() + 20
    while not exit_file.exists() or not exit_file.read_text().strip():
        assert time.monotonic() < deadline, tmux.capture()
        time.sleep(0.1)
    # exited with 128 + the signal's number (a death by the signal would be the same number
    # in $?: the clean-up below tells them apart)
    assert exit_file.read_text().strip() == str(128 + sig.value)
    assert _pane(tmux, MODES) == "0 0 0 0 0", tmux.capture()  # normal screen, no mouse
    assert not status.exists()  # the exit clean-up ran: the proxy closed and said so
    assert _refused(port)


# ------------------------------------------------------------------ command palette
def _palette_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JumpgateApp:
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(tmp_path / "no-teleport.yaml"))
    opts = Options(home=str(tmp_path / "tsh"), user="alice", proxy="proxy.example.com:443")
    return JumpgateApp(DashboardState(opts))


async def _run_command(pilot: Any, title: str) -> None:
    """Open the palette (ctrl+p), search ``title``, pick it with the cursor and Enter."""
    from textual.command import CommandList, CommandPalette

    app = pilot.app
    await pilot.press("ctrl+p")
    await until(
        pilot, lambda: isinstance(app.screen, CommandPalette) and ready(app.screen), "the palette"
    )
    palette = app.screen
    await pilot.press(*title)
    commands = palette.query_one(CommandList)

    def first() -> str:
        if not commands.option_count:
            return ""
        return str(commands.get_option_at_index(0).hit.text)  # type: ignore[attr-defined]

    await until(pilot, lambda: first() == title, f"{title!r} first in the palette")
    await pilot.press("down")
    await until(pilot, lambda: commands.highlighted == 0, "the highlight")
    await pilot.press("enter")
    await until(pilot, lambda: not isinstance(app.screen, CommandPalette), "the palette to close")


def test_command_palette_commands_switch_screens_theme_and_open_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _palette_app(tmp_path, monkeypatch)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await decline_login(pilot)
            await _run_command(pilot, "Go to Local proxies")
            await shown(pilot, ProxiesScreen, "the proxies")
            assert app.current_mode == "proxies"
            assert app.theme != LIGHT
            await _run_command(pilot, "Toggle light/dark")
            await until(pilot, lambda: app.theme == LIGHT, "the light theme")
            await _run_command(pilot, "Log in")
            await shown(pilot, LoginScreen, "the login dialog")
            login = app.screen
            # filled in from the options (read in a worker), the password field first
            assert login.query_one("#proxy").value == "proxy.example.com:443"  # type: ignore[attr-defined]
            assert login.query_one("#user").value == "alice"  # type: ignore[attr-defined]
            await until(pilot, lambda: app.focused is login.query_one("#password"), "focus")
            await pilot.press("escape")
            await shown(pilot, ProxiesScreen, "the proxies again")
            await _run_command(pilot, "Go to Databases")
            await until(pilot, lambda: app.current_mode == "databases", "the databases")

    run_async(scenario)
