"""Shared plumbing for the Machine ID seed replays (seeds 000, 001 and 002).

The guides run ``tbot`` as a Linux user ``teleport`` and the application as ``app``,
from systemd units. The tests create such users (with unique names), write the units
exactly as the guides show them (paths and ports substituted) and run each unit's
``ExecStart`` as its ``User=``, the way systemd would. ``systemctl reload`` is the
unit's ``ExecReload`` (SIGHUP); ``systemctl stop`` is SIGTERM.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.conftest import BIN, Cluster, cli_env, tail

T = TypeVar("T")
TBOT = str(BIN / "tbot")


def require_root_tools() -> None:
    """The replays create Linux users and run processes as them: root, useradd, runuser."""
    if os.geteuid() != 0:
        pytest.skip("the Machine ID replays create Linux users: run the suite as root (CI does)")
    for tool in ("useradd", "userdel", "runuser", "setfacl", "psql"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/install-system-deps.sh", pytrace=False)


@contextmanager
def linux_users(*roles: str) -> Iterator[dict[str, pwd.struct_passwd]]:
    """System users (with their own group) named after ``roles``, removed at the end."""
    made: dict[str, pwd.struct_passwd] = {}
    try:
        for role in roles:
            name = f"jg{role[:8]}{uuid.uuid4().hex[:6]}"
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ],
                check=True,
                capture_output=True,
            )
            made[role] = pwd.getpwnam(name)
        yield made
    finally:
        for u in made.values():
            subprocess.run(["userdel", u.pw_name], check=False, capture_output=True)
            subprocess.run(["groupdel", u.pw_name], check=False, capture_output=True)


@contextmanager
def public_root() -> Iterator[Path]:
    """A directory the test users can traverse (pytest's temporary root is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="jg-mid-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@functools.cache
def can_run_python(user: str) -> bool:
    """Whether ``user`` can run this interpreter (a pyenv under 0700 /root cannot)."""
    proc = subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, "-c", "pass"],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def python_as(user: str) -> list[str]:
    """The prefix that runs a Jumpgate console script as ``user``, where that is possible.

    When the interpreter is out of the user's reach, the script runs as root instead:
    files keep their owner and ACLs either way (tbot preserves them), and the readers
    (``psql`` as the app user) still prove the permissions.
    """
    return ["runuser", "-u", user, "--"] if can_run_python(user) else []


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout}s", pytrace=False)
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Unit:
    """A systemd unit as a guide shows it, run the way systemd would run it."""

    path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    settings: dict[str, str] = field(default_factory=dict)
    wrapped: bool = False

    @classmethod
    def write(cls, path: Path, text: str) -> Unit:
        path.write_text(text)
        settings: dict[str, str] = {}
        for line in text.splitlines():
            m = re.fullmatch(r"(\w+)=(.*)", line.strip())
            if m and not line.lstrip().startswith("#"):
                settings[m.group(1)] = m.group(2)
        return cls(path=path, log_path=path.with_suffix(".log"), settings=settings)

    def argv(self) -> list[str]:
        argv = shlex.split(self.settings["ExecStart"])
        assert argv[0] == "/usr/local/bin/tbot", argv  # the guides' install location
        return [TBOT, *argv[1:]]

    def start(self) -> None:
        """``systemctl start``: ExecStart as User= (Group= is the user's own group here)."""
        user = self.settings.get("User", "root")
        assert self.settings.get("Type") == "simple", self.settings
        with self.log_path.open("ab") as log:
            prefix = python_as(user)
            self.wrapped = bool(prefix)
            self.proc = subprocess.Popen(
                [*prefix, *self.argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
                cwd="/",
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def context(self) -> str:
        state = "running" if self.alive() else f"exited with {self.proc and self.proc.poll()}"
        return f"\n--- {self.path.name} ({state}):\n{tail(self.log())}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reload(self) -> None:
        """``systemctl reload``: the guides' ``ExecReload=/bin/kill -HUP $MAINPID``."""
        assert self.settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert self.proc is not None and self.alive(), self.context()
        # runuser forks the command as a child and waits: signal the command itself
        pids = _children(self.proc.pid) if self.wrapped else [self.proc.pid]
        for pid in pids:
            os.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        """``systemctl stop``: SIGTERM, and the process must exit cleanly."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                pytest.fail(f"{self.path.name} ignored SIGTERM{self.context()}", pytrace=False)
        assert "Traceback" not in self.log(), self.context()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def run_as(
    user: str, argv: list[str], *, timeout: float = 60, python: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` and capture its output (``python``: see :func:`python_as`)."""
    prefix = python_as(user) if python else ["runuser", "-u", user, "--"]
    return subprocess.run(
        [*prefix, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=cli_env(),
        cwd="/",
    )


def psql_as(user: str, conninfo: str, sql: str) -> str:
    """``psql "<conninfo>" -Atc <sql>`` as ``user``; its output (fails the test on error)."""
    proc = run_as(user, ["psql", conninfo, "-X", "-Atc", sql])
    assert proc.returncode == 0, f"psql as {user} failed: {proc.stderr}"
    return proc.stdout.strip()


def bots_add_token(out: str) -> str:
    """The join token from ``tctl bots add`` (text format)."""
    m = re.search(r"^The bot token: ([0-9a-f]{32})$", out, re.M)
    assert m, out
    return m.group(1)


def bot_status(cluster: Cluster, name: str) -> dict[str, object]:
    import json

    bots = json.loads(cluster.tctl("bots", "ls", "--format=json").stdout)
    (bot,) = [b for b in bots if b["metadata"]["name"] == name]
    return dict(bot["status"])
