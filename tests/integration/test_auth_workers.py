"""``auth_service.workers``: several processes serve the auth API from one socket and backend.

A real ``teleport start`` with ``workers: 2``; clients are real mutual-TLS
``AuthClient`` connections, each new one handed by the kernel to either process.
What must hold: a write acknowledged by one process is what the next request to the
other sees (a new user can be issued a certificate at once, a new lock refuses the
next certificate at once: deny is never late), a killed worker is replaced, and the
daemon's shutdown takes the workers with it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jumpgate.core.auth.client import AuthClient
from jumpgate.core.auth.identityfile import read_identity_file
from jumpgate.core.errors import JumpgateError
from jumpgate.core.tlsca import generate_private_key, public_key_to_pem
from tests.integration.conftest import Cluster, make_cluster, running_cluster

WORKER_MODULE = "jumpgate.cli.auth_worker"


def workers_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` running the auth worker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid and WORKER_MODULE.encode() in cmdline:
            found.append(int(entry))
    return found


def established_on(pid: int, port: int) -> int:
    """How many ESTABLISHED TCP connections to local ``port`` process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:
                n += 1
    return n


def wait_until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def workers(n: object) -> Callable[[dict[str, object]], None]:
    """A teleport.yaml edit: ``auth_service.workers: n``."""

    def edit(doc: dict[str, object]) -> None:
        doc["auth_service"]["workers"] = n  # type: ignore[index]

    return edit


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("workers"), workers(2)) as c:
        wait_until(lambda: len(workers_of(c.pid)) == 1, "the auth worker")
        yield c


def client(cluster: Cluster) -> AuthClient:
    """A new connection as the local admin (the kernel picks the process that accepts it)."""
    return AuthClient(
        cluster.auth_addr, read_identity_file(cluster.data_dir / "proc" / "admin.pem")
    )


def call(cluster: Cluster, method: str, **params: object) -> object:
    c = client(cluster)
    try:
        return c.call(method, **params)
    finally:
        c.close()


PUBLIC_KEY = public_key_to_pem(generate_private_key().public_key()).decode()


def test_both_processes_accept_connections(cluster: Cluster) -> None:
    (worker,) = workers_of(cluster.pid)
    held = [client(cluster) for _ in range(16)]
    try:
        for c in held:
            c.call("status")
        on_main = established_on(cluster.pid, cluster.auth_port)
        on_worker = established_on(worker, cluster.auth_port)
        # 16 connections, each to whichever process accepted first: both took some
        assert on_main + on_worker >= 16
        assert on_main > 0 and on_worker > 0, (on_main, on_worker)
    finally:
        for c in held:
            c.close()


def test_writes_through_one_process_bind_the_next_request_to_any(cluster: Cluster) -> None:
    """A new user is usable at once and a new lock refuses at once, on every process."""
    for i in range(12):
        name = f"w{i}"
        call(cluster, "users.add", name=name, roles=["access"])
        issued = call(cluster, "certs.user", username=name, public_key=PUBLIC_KEY, ttl=600)
        assert isinstance(issued, dict) and "BEGIN CERTIFICATE" in str(issued.get("cert", ""))
        call(cluster, "locks.create", target={"user": name}, message="stop")
        for _ in range(3):
            with pytest.raises(JumpgateError, match="lock"):
                call(cluster, "certs.user", username=name, public_key=PUBLIC_KEY, ttl=600)


def test_lock_long_polls_agree_across_processes(cluster: Cluster) -> None:
    """``locks.watch`` fingerprints are the same in every process, and a poll waiting on
    any process returns as soon as a lock is placed through another."""
    gens = {call(cluster, "locks.watch", generation=-1, timeout=0)["generation"] for _ in range(8)}  # type: ignore[index]
    assert len(gens) == 1, gens
    (gen,) = gens
    # nothing changed: a poll with the current fingerprint waits out its timeout
    t0 = time.monotonic()
    same = call(cluster, "locks.watch", generation=gen, timeout=0.5)
    assert same["generation"] == gen and time.monotonic() - t0 >= 0.4  # type: ignore[index]
    for i in range(4):
        c = client(cluster)
        try:
            result: dict[str, object] = {}

            def poll(
                c: AuthClient = c, gen: object = gen, result: dict[str, object] = result
            ) -> None:
                result.update(c.call("locks.watch", generation=gen, timeout=20))

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.3)  # the poll is waiting
            call(cluster, "locks.create", target={"user": f"poll{i}"}, message="stop")
            t0 = time.monotonic()
            t.join(timeout=15)
            assert not t.is_alive(), "the long-poll missed the new lock"
            assert time.monotonic() - t0 < 5
        finally:
            c.close()
        assert result["generation"] != gen
        assert any(
            lk.get("spec", {}).get("target", {}).get("user") == f"poll{i}"  # type: ignore[union-attr]
            for lk in result["locks"]  # type: ignore[attr-defined]
        ), result
        gen = result["generation"]


def test_a_restarted_worker_does_not_bring_back_a_deleted_preset_role(cluster: Cluster) -> None:
    cluster.tctl("rm", "role/auditor")
    (worker,) = workers_of(cluster.pid)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: workers_of(cluster.pid) not in ([], [worker]), "a new auth worker")
    wait_until(
        lambda: cluster.log().count("[auth worker 1] serving the auth API") >= 2, "it serves"
    )
    for _ in range(4):
        with pytest.raises(JumpgateError, match="not found"):
            call(cluster, "resources.get", kind="role", name="auditor")


def test_a_killed_worker_is_replaced_and_the_api_keeps_serving(cluster: Cluster) -> None:
    (worker,) = workers_of(cluster.pid)
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: workers_of(cluster.pid) not in ([], [worker]), "a new auth worker")
    (again,) = workers_of(cluster.pid)
    assert again != worker
    for _ in range(8):
        assert call(cluster, "status")
    log = cluster.log()
    assert f"worker 1 (pid {worker}) exited" in log
    # the worker's own lines say which worker wrote them
    assert "[auth worker 1] serving the auth API" in log


def test_shutdown_stops_the_workers(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "c", workers(3)) as c:  # stopped with every step asserted
        wait_until(lambda: len(workers_of(c.pid)) == 2, "two auth workers")
        pids = workers_of(c.pid)
    assert c.stopped
    assert "shutdown: stopping the auth API workers" in c.log()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.parametrize("value", [0, 65, "many", -1])
def test_a_bad_worker_count_is_a_clear_config_error(tmp_path: Path, value: object) -> None:
    c = make_cluster(tmp_path / "c", workers(value))
    proc = c.spawn()
    rc = proc.wait(timeout=60)
    log = c.log()
    assert rc != 0
    assert "auth_service.workers" in log and "Traceback" not in log, log
