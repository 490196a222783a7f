"""The proxy's app catalogue: a new app is known at its first handshake, and unknown
host names cost a bounded number of catalogue reads (a real in-memory auth server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jumpgate.core.app.auth import heartbeat_apps
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend.memory import MemoryBackend
from jumpgate.core.db.tunnel import TunnelRegistry
from jumpgate.core.proxy.apps import UNKNOWN_HOST_REFRESH, AppFrontend


def _app(name: str) -> dict[str, Any]:
    return {
        "kind": "app",
        "version": "v3",
        "metadata": {"name": name},
        "spec": {"uri": "http://127.0.0.1:9"},
    }


class ReadCounter:
    """Counts the catalogue's store reads (``auth.store.list_as``), passing them on."""

    def __init__(self, auth: AuthServer) -> None:
        self.n = 0
        real = auth.store.list_as

        async def counting(cls: Any) -> Any:
            self.n += 1
            return await real(cls)

        auth.store.list_as = counting  # type: ignore[method-assign]


def _frontend(auth: AuthServer) -> AppFrontend:
    """The proxy's app frontend for ``*.proxy.test``, over ``auth`` in this process."""
    return AppFrontend(
        auth=auth,
        registry=TunnelRegistry(),
        public_addr="proxy.test:3080",
        public_host="proxy.test",
        user_ca_subjects=set,
    )


def test_unknown_hosts_reread_the_catalogue_once_per_window() -> None:
    async def main() -> None:
        auth = AuthServer(MemoryBackend(), cluster_name="example.com")
        await auth.start()
        try:
            fe = _frontend(auth)
            await fe.catalogue()
            assert not fe.serves(name="grafana.proxy.test")
            await heartbeat_apps(
                auth, host_id="h1", hostname="agent", apps=[_app("grafana")], ttl=60
            )
            # the periodic read is up to 2 s away; the handshake's own read finds the app
            # (once the last read is UNKNOWN_HOST_REFRESH old: aged here, not waited for)
            await fe.refresh_for("grafana.proxy.test")
            assert not fe.serves(name="grafana.proxy.test")  # read 0 s ago: not again
            fe._catalogue_at -= UNKNOWN_HOST_REFRESH
            await fe.refresh_for("grafana.proxy.test")
            assert fe.serves(name="grafana.proxy.test")

            reads = ReadCounter(auth)
            fe._catalogue_at -= 10  # stale: the next unknown name reads it again
            await asyncio.gather(*(fe.refresh_for(f"r{i}.proxy.test") for i in range(200)))
            assert reads.n == 1  # 200 concurrent handshakes share one read
            await asyncio.gather(*(fe.refresh_for(f"s{i}.example.org") for i in range(200)))
            assert reads.n == 1  # and none again within the window

            fe._catalogue_at -= 10
            for own in ("proxy.test", "PROXY.test.", "localhost", "127.0.0.1", "::1", ""):
                await fe.refresh_for(own)
            await fe.refresh_for("grafana.proxy.test")  # known already
            assert reads.n == 1  # none of those read the catalogue
        finally:
            await auth.close()

    asyncio.run(main())


def test_a_slow_or_failing_catalogue_read_never_holds_or_fails_handshakes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stalled store: 50 handshakes for unknown names share one read and each goes on
    after UNKNOWN_HOST_WAIT; a failing store: no exception reaches the handshake, and
    no retry storm (one read per window, failed or not)."""
    from jumpgate.core.proxy import apps as apps_mod

    monkeypatch.setattr(apps_mod, "UNKNOWN_HOST_WAIT", 0.05)

    async def main() -> None:
        auth = AuthServer(MemoryBackend(), cluster_name="example.com")
        await auth.start()
        try:
            fe = _frontend(auth)
            real = auth.store.list_as
            release = asyncio.Event()
            reads = 0
            mode = "stall"

            async def store_read(cls: Any) -> Any:
                nonlocal reads
                reads += 1
                if mode == "fail":
                    raise RuntimeError("the store is gone")
                await release.wait()
                return await real(cls)

            await heartbeat_apps(auth, host_id="h1", hostname="agent", apps=[_app("new")], ttl=60)
            auth.store.list_as = store_read  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(*(fe.refresh_for(f"x{i}.proxy.test") for i in range(50)))
            assert loop.time() - t0 < 2.0  # each waited UNKNOWN_HOST_WAIT, not for the read
            assert reads == 1 and not fe.serves(name="new.proxy.test")
            release.set()  # the read ends in the background and is used from then on
            await asyncio.sleep(0)
            await fe.catalogue(max_age=3600)
            while not fe.serves(name="new.proxy.test"):
                await asyncio.sleep(0.01)
            assert reads == 1

            mode = "fail"
            fe._catalogue_at -= 10
            await asyncio.gather(*(fe.refresh_for(f"y{i}.proxy.test") for i in range(100)))
            assert reads == 2  # one failed read for all of them, and no exception
            await fe.refresh_for("z.proxy.test")
            assert reads == 2  # a failed read also counts for the window
            assert fe.serves(name="new.proxy.test")  # what was known is kept
        finally:
            await auth.close()

    asyncio.run(main())


def test_following_heartbeats_a_new_app_is_known_at_once_and_random_names_cost_no_read() -> None:
    """With the app_server watch running (as in the proxy): an app whose heartbeat just
    landed is found by the very next handshake, with no time window; names that match
    nothing, while nothing changed, read nothing."""

    async def main() -> None:
        auth = AuthServer(MemoryBackend(), cluster_name="example.com")
        await auth.start()
        fe = _frontend(auth)
        fe.start()
        try:
            while fe._watcher is None or fe._catalogue_from == float("-inf"):
                await asyncio.sleep(0.01)  # the watch is set up, the first read done
            await fe.refresh_for("first.proxy.test")  # a change since: the watch's start
            reads = ReadCounter(auth)
            await asyncio.gather(*(fe.refresh_for(f"r{i}.proxy.test") for i in range(200)))
            assert reads.n == 0  # nothing changed: unknown names cost no read
            await heartbeat_apps(auth, host_id="h1", hostname="agent", apps=[_app("new")], ttl=60)
            reads.n = 0  # (the heartbeat reads app_servers itself)
            await fe.refresh_for("new.proxy.test")  # the very next handshake, no waiting
            assert fe.serves(name="new.proxy.test") and reads.n == 1
            await fe.refresh_for("other.proxy.test")
            assert reads.n == 1
        finally:
            await fe.close()
            await auth.close()

    asyncio.run(main())
