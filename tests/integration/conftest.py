"""A real cluster for integration tests: ``teleport configure`` + ``teleport start`` + ``tctl``.

Everything runs through the installed console scripts, as a user would run them.
Each test module gets its own cluster (free loopback ports, its own temporary
directory), so modules and xdist workers run side by side.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

# The suite-wide helpers live in tests/conftest.py; make the repository importable
# even when pytest is run as a script (then the working directory is not on sys.path).
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
from tests.conftest import free_port  # noqa: E402
from tests.pg_fixture import pg_certs, postgres  # noqa: E402, F401 - shared PostgreSQL fixtures

#: The console scripts of the environment running the tests (the project's venv).
BIN = Path(sys.executable).parent
TELEPORT = str(BIN / "teleport")
TCTL = str(BIN / "tctl")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLUSTER_NAME = "example.com"

#: The graceful shutdown steps ``teleport start`` logs on SIGTERM, in order.
SHUTDOWN_STEPS = (
    "shutdown: stopping services",
    "shutdown: closing the proxy's web port",
    "shutdown: closing the auth API",
    "shutdown: flushing the audit log",
    "shutdown: closing the backend",
    "shutdown: complete",
)


def cli_env() -> dict[str, str]:
    """The environment for the console scripts: no inherited Teleport settings, no colour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEPORT_", "TCTL_"))}
    env["NO_COLOR"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def assert_clean_stderr(proc: subprocess.CompletedProcess[str]) -> None:
    """No Python traceback ever reaches the user."""
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input: str | None = None,
    check: bool = True,
    cwd: Path | None = None,
    timeout: float = 30.0,
    context: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run a command in text mode; with ``check`` assert exit 0 (showing its output if not)."""
    proc = subprocess.run(
        [str(a) for a in argv],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    assert_clean_stderr(proc)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(proc.args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}{context}",
            pytrace=False,
        )
    return proc


def parse_status(out: str) -> dict[str, str]:
    """``tctl status`` rows: a label (``Cluster``, ``host CA``, ``CA pin``...), padding, a value."""
    rows: dict[str, str] = {}
    for line in out.splitlines():
        m = re.fullmatch(r"(CA pin|\S+ CA|\S+)\s+(\S.*)", line.strip())
        assert m, f"unexpected tctl status line {line!r} in:\n{out}"
        rows[m.group(1)] = m.group(2)
    return rows


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    """One all-in-one (auth + proxy) cluster in its own directory."""

    root: Path
    web_port: int = 0
    auth_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Where in the log the current run starts (the log is appended to across restarts).
    log_offset: int = 0
    #: Set by a successful :meth:`stop` (a test may leave its cluster stopped).
    stopped: bool = False

    @property
    def config(self) -> Path:
        return self.root / "teleport.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "teleport.log"

    @property
    def web_addr(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    @property
    def auth_addr(self) -> str:
        return f"127.0.0.1:{self.auth_port}"

    @property
    def public_addr(self) -> str:
        return f"localhost:{self.web_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the cluster is not running"
        return self.proc.pid

    # ------------------------------------------------------------------ config
    def configure(self) -> None:
        """``teleport configure`` into ``root``, then point the listeners at free loopback ports."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        run(
            [
                TELEPORT,
                "configure",
                "-o",
                f"file://{self.config}",
                f"--cluster-name={CLUSTER_NAME}",
                f"--public-addr={self.public_addr}",
                f"--data-dir={self.data_dir}",
            ]
        )
        self.set_ports()

    def set_ports(self) -> None:
        """Fresh free ports for auth_service.listen_addr and proxy_service.web_listen_addr."""
        self.web_port, self.auth_port = free_port(), free_port()
        while self.auth_port == self.web_port:
            self.auth_port = free_port()
        doc = self.read_config()
        doc["auth_service"]["listen_addr"] = self.auth_addr
        doc["proxy_service"]["web_listen_addr"] = self.web_addr
        doc["proxy_service"]["public_addr"] = self.public_addr
        self.write_config(doc)

    def read_config(self) -> dict[str, object]:
        doc = yaml.safe_load(self.config.read_text())
        assert isinstance(doc, dict)
        return doc

    def write_config(self, doc: dict[str, object]) -> None:
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    # ------------------------------------------------------------------ logs
    def log(self) -> str:
        """The daemon's output of the current (or last) run."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self.log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_context(self) -> str:
        state = "not started"
        if self.proc is not None:
            rc = self.proc.poll()
            state = "running" if rc is None else f"exited with {rc}"
        return f"\n--- teleport ({state}), log tail {self.log_path}:\n{tail(self.log())}"

    def wait_for_log(self, text: str, *, timeout: float = START_TIMEOUT, after: int = 0) -> None:
        """Poll the log until ``text`` appears (after character ``after`` of this run's log)."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[after:]:
            self.assert_alive()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{text!r} not logged within {timeout}s{self.log_context()}", pytrace=False
                )
            time.sleep(0.05)

    def assert_alive(self) -> None:
        """Fail loudly, with the daemon log, if ``teleport start`` has died."""
        if self.proc is None or self.proc.poll() is not None:
            pytest.fail(f"teleport start is not running{self.log_context()}", pytrace=False)

    # ------------------------------------------------------------------ commands
    def tctl(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        check: bool = True,
        local: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``tctl`` (with ``-c config`` unless ``local=False``)."""
        argv: list[str | os.PathLike[str]] = [TCTL]
        if local:
            argv += ["-c", self.config]
        return run(
            [*argv, *args],
            input=input,
            check=check,
            cwd=cwd or self.root,
            context=self.log_context() if check else "",
        )

    # ------------------------------------------------------------------ lifecycle
    def spawn(self) -> subprocess.Popen[bytes]:
        """``teleport start -c config`` in the background, appending to the log."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [TELEPORT, "start", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
                cwd=self.root,
            )

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the daemon and wait until ``tctl status`` answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.stopped = False
        for attempt in range(3):
            self.proc = self.spawn()
            deadline = time.monotonic() + timeout
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    break
                if self._ready():
                    return
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(
                        f"teleport start was not ready within {timeout}s{self.log_context()}",
                        pytrace=False,
                    )
                time.sleep(0.05)
            # it died: another process may have taken a port between free_port() and bind()
            if "may be using the port" in self.log() and attempt < 2:
                self.set_ports()
                continue
            pytest.fail(
                f"teleport start exited with {rc} during start-up{self.log_context()}",
                pytrace=False,
            )

    def _ready(self) -> bool:
        """Started (per the log, cheap to poll) and answering ``tctl status``."""
        if "teleport: started" not in self.log():
            return False
        if not (self.data_dir / "proc" / "auth_addr").exists():
            return False
        return self.tctl("status", check=False).returncode == 0

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM; assert a clean exit 0 within ``timeout`` and every graceful shutdown step."""
        proc = self.proc
        assert proc is not None, "the cluster is not running"
        if proc.poll() is not None:
            pytest.fail(
                f"teleport start died before it was stopped{self.log_context()}", pytrace=False
            )
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"teleport start did not exit within {timeout}s of SIGTERM{self.log_context()}",
                pytrace=False,
            )
        assert rc == 0, f"teleport start exited {rc} on SIGTERM{self.log_context()}"
        log = self.log()
        assert "Traceback" not in log, self.log_context()
        pos = 0
        for step in SHUTDOWN_STEPS:
            found = log.find(step, pos)
            assert found >= 0, f"shutdown step {step!r} missing or out of order{self.log_context()}"
            pos = found + len(step)
        self.stopped = True

    def kill(self) -> None:
        """Last resort for a wedged daemon (only ever the process this cluster started)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def make_cluster(root: Path, edit: Callable[[dict[str, object]], None] | None = None) -> Cluster:
    """A configured (not started) cluster in ``root``; ``edit`` changes its teleport.yaml."""
    c = Cluster(root=root)
    c.configure()
    if edit is not None:
        doc = c.read_config()
        edit(doc)
        c.write_config(doc)
    return c


@contextlib.contextmanager
def running_cluster(
    root: Path, edit: Callable[[dict[str, object]], None] | None = None
) -> Iterator[Cluster]:
    """Configure (``edit``: see :func:`make_cluster`) and start a cluster; on exit stop it
    gracefully (asserting the shutdown)."""
    c = make_cluster(root, edit)
    c.start()
    try:
        yield c
    except BaseException:
        c.kill()
        raise
    if c.running:
        c.stop()
    elif not c.stopped:
        pytest.fail(f"teleport start died during the tests{c.log_context()}", pytrace=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running cluster shared by the tests of one module; stopped (and checked) at the end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A per-test directory for files tctl writes."""
    return tmp_path


@pytest.fixture(autouse=True)
def _daemon_survives_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used the shared cluster: fail, with its log, if the daemon died."""
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").assert_alive()
