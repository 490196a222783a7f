"""The dashboard in a real terminal: tmux starts ``jumpgate``, send-keys drives it, capture-pane reads it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, cli_env

JUMPGATE = str(Path(sys.executable).parent / "jumpgate")
WIDTH, HEIGHT = 160, 50
#: The profile's row of the certificates table: kind, name (the proxy host), the countdown
PROFILE_ROW = r"^\W*tsh profile\s+localhost\s+(\d+h\d\dm\d\ds)\b"
SIZE_VARS = ("COLUMNS", "LINES")
TMUX_ENV = {k: v for k, v in os.environ.items() if k not in SIZE_VARS}


def pane_command(env: dict[str, str]) -> str:
    """``jumpgate`` with ``env``, minus COLUMNS/LINES (the pane's size must be what it reads)."""
    pairs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k not in SIZE_VARS)
    return f"env -u COLUMNS -u LINES {pairs} {JUMPGATE}"


class Tmux:
    """One private tmux server (its own socket) running one window."""

    def __init__(self) -> None:
        self.socket = f"jg-tui-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            # explicit: the C-level environment of this process can hold COLUMNS=80 LINES=24
            # (set by a library's terminal set-up, not in os.environ); the tmux server would
            # hand them to the pane and the app would draw 80 columns in a wider pane
            env=TMUX_ENV,
            capture_output=True,
            text=True,
            timeout=15,
            check=check,
        )

    def start(self, command: str) -> None:
        """Run ``command`` in a new WIDTH x HEIGHT pane."""
        self.run("new-session", "-d", "-s", "jg", "-x", str(WIDTH), "-y", str(HEIGHT), command)
        size = self.run("display-message", "-p", "-t", "jg", "#{pane_width}x#{pane_height}")
        assert size.stdout.strip() == f"{WIDTH}x{HEIGHT}", size.stdout

    def capture(self) -> str:
        return self.run("capture-pane", "-p", "-t", "jg", check=False).stdout

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """Poll the screen until ``pattern`` (a regex) shows; return the screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if re.search(pattern, screen, re.M):
                return screen
            time.sleep(0.1)
        pytest.fail(f"{pattern!r} never appeared; the screen was:\n{screen}", pytrace=False)

    def alive(self) -> bool:
        return self.run("has-session", "-t", "jg", check=False).returncode == 0


def test_databases_list_and_certificate_countdown_in_tmux(
    db_cluster: Cluster, alice_home: Path, pg_service: Path, tmux: Tmux
) -> None:
    env = cli_env()
    env.update(TELEPORT_HOME=str(alice_home), PGSERVICEFILE=str(pg_service), TERM="xterm-256color")
    command = pane_command(env)
    # the pane's size is set, not inherited: every column of both tables fits in one line
    tmux.start(command)
    tmux.wait_for(r"^.*\bpg\b.*postgres.*Example PostgreSQL")
    tmux.wait_for(r"\b1 database\b")
    tmux.wait_for(r"alice@localhost:\d+ .*session \d+h\d\dm\d\ds")
    tmux.run("send-keys", "-t", "jg", "c")
    # the columns in their order: Kind, Name, Left, Not after, …, Subject
    screen = tmux.wait_for(rf"{PROFILE_ROW}.* alice ")
    first = re.search(PROFILE_ROW, screen, re.M)
    assert first is not None
    # the countdown is live: it changes while we watch
    deadline = time.monotonic() + 15
    now = first.group(1)
    while now == first.group(1) and time.monotonic() < deadline:
        time.sleep(0.2)
        m = re.search(PROFILE_ROW, tmux.capture(), re.M)
        now = m.group(1) if m else now
    assert now != first.group(1), "the countdown did not move"
    tmux.run("send-keys", "-t", "jg", "q")
    deadline = time.monotonic() + 15
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), tmux.capture()


def test_connect_suspends_the_dashboard_for_psql_and_comes_back(
    db_cluster: Cluster, postgres: object, alice_home: Path, pg_service: Path, tmux: Tmux
) -> None:
    """Enter on a database: the options dialog, then `tsh db connect` runs psql in the same
    terminal (the dashboard suspended); quitting psql brings the dashboard back."""
    if not shutil.which("psql"):
        pytest.skip("needs psql (scripts/install-system-deps.sh installs it)")
    env = cli_env()
    env.update(TELEPORT_HOME=str(alice_home), PGSERVICEFILE=str(pg_service), TERM="xterm-256color")
    command = pane_command(env)
    tmux.start(command)
    tmux.wait_for(r"^.*\bpg\b.*postgres.*Example PostgreSQL")
    # `tsh db login` earlier: the dialog offers its user and name; Enter connects
    tsh = str(Path(sys.executable).parent / "tsh")
    subprocess.run(
        [tsh, "db", "login", "--db-user=alice", "--db-name=example", "pg"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    tmux.run("send-keys", "-t", "jg", "Enter")
    tmux.wait_for(r"Connect to pg \(tsh db connect\)")
    tmux.wait_for(r"Database user\s+\S+\s+alice")
    tmux.run("send-keys", "-t", "jg", "Enter")
    tmux.wait_for(r"example=>", timeout=45)  # psql's prompt: the dashboard is suspended
    marker = f"tmux{uuid.uuid4().hex[:6]}"
    # \g runs the query (tmux would read a trailing ";" as its own command separator)
    tmux.run("send-keys", "-t", "jg", "-l", f"select '{marker}' || current_user \\g")
    tmux.run("send-keys", "-t", "jg", "Enter")
    tmux.wait_for(rf"{marker}alice")
    tmux.run("send-keys", "-t", "jg", "\\q", "Enter")
    tmux.wait_for(r"^.*\bpg\b.*postgres.*Example PostgreSQL")
    tmux.run("send-keys", "-t", "jg", "q")
    deadline = time.monotonic() + 15
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), tmux.capture()


def test_login_fields_typed_ahead_land_where_tab_moved_and_the_password_never_shows(
    tmp_path: Path, tmux: Tmux
) -> None:
    """``proxy<Tab>user<Tab>password`` in one burst, as a password manager types it: each
    part lands in its own field, so the password is masked, never in the user field."""
    env = cli_env()
    env.update(
        TELEPORT_HOME=str(tmp_path / "tsh"),
        TELEPORT_CONFIG_FILE=str(tmp_path / "no-teleport.yaml"),
        TERM="xterm-256color",
    )
    tmux.start(pane_command(env))
    tmux.wait_for(r"Log in \(tsh login\)")
    secret = f"typed-ahead-{uuid.uuid4().hex[:8]}"
    tmux.run("send-keys", "-t", "jg", "127.0.0.1:9", "Tab", "alice", "Tab", secret)
    screen = tmux.wait_for(r"Password\s+\S+\s+•{8,}")
    assert re.search(r"Proxy\s+\S+\s+127\.0\.0\.1:9\s", screen), screen
    assert re.search(r"User\s+\S+\s+alice\s", screen), screen
    assert secret not in screen and "typed-ahead" not in screen
    tmux.run("send-keys", "-t", "jg", "Escape")
    deadline = time.monotonic() + 15
    while "Log in (tsh login)" in tmux.capture():  # (an Escape and a q sent together
        assert time.monotonic() < deadline, tmux.capture()  # would read as Alt+q)
        time.sleep(0.1)
    tmux.run("send-keys", "-t", "jg", "q")
    deadline = time.monotonic() + 15
    while tmux.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tmux.alive(), tmux.capture()
