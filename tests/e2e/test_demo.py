"""The README's first command: ``make demo`` (``scripts/demo.sh``) brings up a cluster
that works as its printed instructions say, and Ctrl-C stops all of it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.conftest import BIN, cli_env

ROOT = Path(__file__).resolve().parents[2]
READY = "Press Ctrl-C to stop."

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Output:
    """The demo's stdout, read by a thread (so a full pipe never stalls the script)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, needle: str, proc: subprocess.Popen[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while needle not in "".join(self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no {needle!r} from the demo:\n{''.join(self.lines)}"
                assert proc.poll() is None or self._thread.is_alive(), (
                    f"the demo exited ({proc.returncode}):\n{''.join(self.lines)}"
                )
                self._cond.wait(min(left, 0.5))
            return "".join(self.lines)


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # not under pytest's 0700 tmp tree: as root the demo's PostgreSQL runs as its own user
    path = Path(tempfile.mkdtemp(prefix="jg-demo-"))
    path.chmod(0o711)
    yield path / "demo"
    # whatever the test left (it failed before Ctrl-C did its work): PostgreSQL runs in
    # a session of its own (pg_ctl), so stop it by its pid file, then remove the files
    pid_file = path / "demo" / "pgdata" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(path, ignore_errors=True)


def _session_pids(sid: int) -> list[int]:
    """Processes still in the demo's session (it was started as a session leader)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def test_the_demo_comes_up_as_it_says_and_ctrl_c_stops_it(demo_dir: Path) -> None:
    if not shutil.which("psql") or not (
        shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    ):
        pytest.skip("PostgreSQL is not installed (scripts/install-system-deps.sh)")
    env = cli_env() | {
        "JUMPGATE_DEMO_DIR": str(demo_dir),
        "JUMPGATE_WEB_PORT": str(free_port()),
        "JUMPGATE_AUTH_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,  # Ctrl-C reaches a terminal's whole foreground group
    )
    out = Output(proc)
    try:
        text = out.wait_for(READY, proc, timeout=180)
        login = re.search(r"tsh login --proxy=(\S+) --user=alice\s+# password: (\S+)", text)
        bot_psql = re.search(r'psql "(host=localhost port=\d+ dbname=example user=alice)"', text)
        diag = re.search(r"curl (http://127\.0\.0\.1:\d+/readyz)", text)
        pg_port = re.search(r"PostgreSQL\s+localhost:(\d+)", text)
        assert login and bot_psql and diag and pg_port, text
        assert f"jumpgate -c {demo_dir}/tbot.yaml" in text

        # the bot's tunnel: any local client, no certificates
        got = subprocess.run(
            ["psql", bot_psql.group(1), "-X", "-Atc", "select current_user, current_database()"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert got.returncode == 0 and got.stdout.strip() == "alice|example", got

        # the bot's diagnostics, which the dashboard reads for the renewal times
        with urllib.request.urlopen(diag.group(1), timeout=10) as resp:
            ready = json.load(resp)
        assert ready["status"] == "healthy" and ready["identity"]["next_renewal"], ready

        # alice logs in with the printed password and sees the database and the app
        home = demo_dir.parent / "tsh-home"
        user_env = env | {"TELEPORT_HOME": str(home)}
        tsh = str(BIN / "tsh")
        res = subprocess.run(
            [tsh, "login", f"--proxy={login.group(1)}", "--user=alice"],
            input=login.group(2) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=user_env,
        )
        assert res.returncode == 0, res.stderr
        dbs = subprocess.run(
            [tsh, "db", "ls"], capture_output=True, text=True, timeout=60, env=user_env
        )
        apps = subprocess.run(
            [tsh, "apps", "ls"], capture_output=True, text=True, timeout=60, env=user_env
        )
        assert "demo-postgres" in dbs.stdout and "demo-app" in apps.stdout, (dbs, apps)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert rc == 0, out.text
    out.wait_for("Demo stopped", proc, timeout=10)
    deadline = time.monotonic() + 20
    while (left := _session_pids(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # not left running for the rest of the suite
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running after Ctrl-C: {left}"
    with pytest.raises(OSError):  # the throwaway PostgreSQL (a daemon of its own) stopped too
        socket.create_connection(("127.0.0.1", int(pg_port.group(1))), timeout=5).close()
