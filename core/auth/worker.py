"""Extra auth API processes on one listening socket (``auth_service.workers``).

One Python process signs on one core. With ``auth_service.workers: N`` (N > 1) the
daemon starts N - 1 more processes that serve the same auth API on the same address
(each its own listening socket with ``SO_REUSEPORT``: the kernel spreads new
connections over them by a hash of the client's address and port; only processes of
the same user can share the port) over the same SQLite backend. Each has its own :class:`AuthServer`
(CAs, caches, audit writer) loaded from the backend the main process prepared.

Consistency across processes: every read of a cached kind (roles, users, locks)
first catches up with what other processes committed (:meth:`ResourceStore.sync`,
one ``PRAGMA data_version`` when nothing changed), so a role created, a user
changed or a lock placed through one process is what the next request to any
other process sees. Everything else (tokens, bots and their generation counter,
join state) is read from the backend with compare-and-swap where it matters.

:class:`WorkerPool` runs in the daemon; :func:`serve` is the worker's main.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, replace

from jumpgate.core.aio import cancel_and_wait, spawn

log = logging.getLogger(__name__)

#: the environment variable that carries a worker's :class:`WorkerSpec` (JSON)
SPEC_ENV = "JUMPGATE_AUTH_WORKER"
#: the environment variable naming the pipe a worker writes to once it serves
READY_ENV = "JUMPGATE_AUTH_WORKER_READY_FD"
#: seconds a worker has to start serving
READY_TIMEOUT = 60.0
#: the largest accepted ``auth_service.workers``
MAX_WORKERS = 64


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to serve the auth API like the main process."""

    index: int
    backend_path: str
    cluster_name: str
    second_factor: str
    proxy_public_addr: str
    host_uuid: str
    cert_file: str
    key_file: str
    host: str | None
    port: int
    log_level: str = "INFO"
    log_format: str = "text"
    log_output: str = "stderr"
    shutdown_timeout: float = 2.0
    #: the daemon's pid: the worker exits when it is no longer its parent
    parent_pid: int = 0

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, value: str) -> WorkerSpec:
        return cls(**json.loads(value))


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when the daemon that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


async def serve(spec: WorkerSpec) -> None:
    """A worker's life: load the cluster from the backend, serve, stop on SIGTERM/SIGINT."""
    from jumpgate.core.auth.api import serving, start_api_server
    from jumpgate.core.auth.server import AuthServer
    from jumpgate.core.backend.sqlite import SQLiteBackend

    _die_with_parent()
    parent = spec.parent_pid or os.getppid()
    if os.getppid() != parent:  # the daemon died before PR_SET_PDEATHSIG was in place
        log.error("the daemon (pid %d) is gone; not starting", parent)
        return
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the daemon restarts workers itself

    backend = SQLiteBackend(spec.backend_path)
    auth = AuthServer(
        backend,
        cluster_name=spec.cluster_name,
        second_factor=spec.second_factor,
        proxy_public_addr=spec.proxy_public_addr,
        host_uuid=spec.host_uuid,
    )
    auth.store.shared = True
    await auth.start(load_only=True)
    api, ctx = serving(auth, cert_file=spec.cert_file, key_file=spec.key_file)
    server = await start_api_server(
        api,
        spec.host,
        spec.port,
        ssl_context=ctx,
        reuse_port=True,
        shutdown_timeout=spec.shutdown_timeout,
    )
    log.info("serving the auth API (pid %d)", os.getpid())
    ready_fd = os.environ.get(READY_ENV)
    if ready_fd:
        with contextlib.suppress(OSError):
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))

    async def orphaned() -> None:  # belt and braces beside PR_SET_PDEATHSIG
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    watch = spawn(orphaned(), name="auth-worker-parent")
    try:
        await stop.wait()
    finally:
        await cancel_and_wait(watch)
        log.info("stopping")
        auth.wake_long_polls()
        await server.cleanup()
        await auth.close()
        await backend.close()


class WorkerPool:
    """The daemon's side: start the workers, restart one that dies, stop them all."""

    #: seconds before restarting a worker that died (doubling while it keeps dying)
    RESTART_DELAY = (0.5, 30.0)
    #: a worker that served this long before dying starts the doubling over
    STABLE_AFTER = 60.0

    def __init__(self, specs: list[WorkerSpec], *, module: str = "jumpgate.cli.auth_worker"):
        self.specs = [replace(s, parent_pid=os.getpid()) for s in specs]
        self.module = module
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def _spawn(self, spec: WorkerSpec) -> tuple[subprocess.Popen[bytes], int]:
        """Start one worker; returns it and the read end of its readiness pipe.

        In a session of its own: a terminal's Ctrl-C or a signal to the daemon's process
        group reaches the daemon only, which stops the workers in its own order.
        """
        r, w = os.pipe()
        env = dict(os.environ)
        env[SPEC_ENV] = spec.to_env()
        env[READY_ENV] = str(w)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=[w],
                start_new_session=True,
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        log.info("auth: worker %d started (pid %d)", spec.index, proc.pid)
        return proc, r

    @staticmethod
    def _wait_ready(r: int, timeout: float) -> bool:
        """Block until the worker wrote to its pipe (True) or it closed/timed out (False)."""
        import select

        try:
            poller = select.poll()  # any fd number (select() stops at 1023)
            poller.register(r, select.POLLIN)
            if not poller.poll(int(timeout * 1000)):
                return False
            return os.read(r, 1) == b"1"
        finally:
            os.close(r)

    async def _ready_or_kill(self, spec: WorkerSpec, proc: subprocess.Popen[bytes], r: int) -> bool:
        if await asyncio.to_thread(self._wait_ready, r, READY_TIMEOUT):
            return True
        if proc.poll() is None:  # alive but never ready: it will not be
            log.error(
                "auth: worker %d (pid %d) did not start serving; killing it", spec.index, proc.pid
            )
            proc.kill()
        await asyncio.to_thread(proc.wait)
        return False

    async def start(self) -> None:
        """Start every worker and wait until each serves (ConfigError naming the failure)."""
        from jumpgate.core.errors import ConfigError

        started = []
        for spec in self.specs:
            proc, r = self._spawn(spec)
            self.procs[spec.index] = proc
            started.append((spec, proc, r))
        ready = await asyncio.gather(*(self._ready_or_kill(s, p, r) for s, p, r in started))
        failed = [(s, p) for (s, p, _), ok in zip(started, ready, strict=True) if not ok]
        if failed:
            await self.stop()
            spec, proc = failed[0]
            raise ConfigError(
                f"auth worker {spec.index} did not start (exit status {proc.returncode})",
                hint="its error is in the log above; auth_service.workers: 1 runs without workers",
            )
        for spec in self.specs:
            self._tasks.append(spawn(self._watch(spec), name=f"auth-worker-{spec.index}"))

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, by index."""
        return [self.procs[s.index].pid for s in self.specs if s.index in self.procs]

    async def _watch(self, spec: WorkerSpec) -> None:
        loop = asyncio.get_running_loop()
        delay, cap = self.RESTART_DELAY
        since = loop.time()
        while not self._stopping:
            proc = self.procs[spec.index]
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            if loop.time() - since >= self.STABLE_AFTER:
                delay = self.RESTART_DELAY[0]
            log.error(
                "auth: worker %d (pid %d) exited with %s; restarting in %.1fs",
                spec.index,
                proc.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            proc, r = self._spawn(spec)
            self.procs[spec.index] = proc
            self.restarts += 1
            since = loop.time()
            if await self._ready_or_kill(spec, proc, r):
                log.info("auth: worker %d serves again (pid %d)", spec.index, proc.pid)
            delay = min(delay * 2, cap)

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, wait up to ``timeout`` seconds (together), then SIGKILL."""
        self._stopping = True
        procs = list(self.procs.values())
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

        async def reap(p: subprocess.Popen[bytes]) -> None:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), timeout)
            except TimeoutError:
                log.warning("auth: worker pid %d did not stop in %.0fs; killing it", p.pid, timeout)
                p.kill()
                await asyncio.to_thread(p.wait)

        await asyncio.gather(*(reap(p) for p in procs))
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks.clear()
        log.info("auth: %d worker(s) stopped", len(procs))
