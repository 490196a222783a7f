"""What the Database Service and the Application Service agents share.

Both dial out only. They announce what they serve with heartbeats (at once, then
every :data:`HEARTBEAT_INTERVAL` seconds, retrying quickly after a failure),
pick up matching dynamic resources (``*_service.resources``), long-poll the
lock set and close live sessions a lock targets, and take sessions either from
a pool of idle reverse-tunnel connections at the proxy or, when the proxy runs
in the same process, over socketpairs.

A subclass names its :attr:`ServiceAgent.kind` (``"db"`` or ``"app"``: the log
prefix, the tunnel's service name and the task names) and supplies the
heartbeat, the dynamic-resource refresh, the session handler and how a live
session is closed.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import socket
from collections.abc import Iterable
from typing import Any, ClassVar

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.auth.aclient import AsyncAuthClient
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import JumpgateError
from jumpgate.core.rbac.locks import lock_applies
from jumpgate.core.tlsca import Identity

log = logging.getLogger(__name__)

#: How often an agent announces what it serves, and how long an announcement lives.
HEARTBEAT_INTERVAL = 20.0
HEARTBEAT_TTL = 60.0
#: Idle reverse-tunnel connections kept at the proxy.
TUNNEL_POOL = 3
#: How often an agent with ``*_service.resources`` looks for new resources.
DYNAMIC_REFRESH = 3.0
#: How long a lock watch waits at the auth service before it is renewed.
LOCK_WATCH_TIMEOUT = 25


class ServiceAgent(abc.ABC):
    """The common life of an agent: heartbeats, dynamic resources, locks, tunnels."""

    #: ``"db"`` or ``"app"``.
    kind: ClassVar[str]

    def __init__(
        self,
        *,
        resource_selectors: list[dict[str, list[str]]] | None,
        host_id: str,
        hostname: str,
        identity: IdentityFile,
        auth_addr: str,
        proxy_addr: str,
        proxy_sni: str,
    ) -> None:
        self.selectors = [s for s in (resource_selectors or []) if s]
        self.host_id = host_id
        self.hostname = hostname
        self.identity = identity
        self.auth = AsyncAuthClient(auth_addr, identity)
        self.proxy_addr = proxy_addr
        self.proxy_sni = proxy_sni
        #: set when the proxy runs in this process: sessions come over socketpairs
        self.local_registry: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    async def _heartbeat_once(self) -> None:
        """Refresh dynamic resources and announce what this agent serves."""

    @abc.abstractmethod
    async def refresh_dynamic(self) -> bool:
        """Serve the dynamic resources matching the selectors; return whether that changed."""

    @abc.abstractmethod
    async def handle_session(
        self, transport: asyncio.Transport, handshake: Any, header: dict[str, Any]
    ) -> None:
        """Serve one session that arrived through a tunnel or a socketpair."""

    @abc.abstractmethod
    def _live_sessions(self) -> Iterable[tuple[str, Identity, str, Any]]:
        """Live sessions as (session id, identity, what it reaches, handle for closing)."""

    @abc.abstractmethod
    def _close_session(self, handle: Any, reason: str) -> None:
        """End a live session (its handle from :meth:`_live_sessions`) telling why."""

    # ------------------------------------------------------------------ lifecycle
    async def _announce_and_serve(self, what: str) -> None:
        """First heartbeat (not fatal when the cluster is down), then the loops and the tunnel."""
        try:
            await self._heartbeat_once()
        except JumpgateError as exc:
            log.warning("%s: cannot reach the cluster yet (%s); will keep trying", self.kind, exc)
        log.info("%s: serving %s (host id %s)", self.kind, what, self.host_id)
        self._tasks.append(spawn(self._heartbeat_loop(), name=f"{self.kind}-heartbeat"))
        self._tasks.append(spawn(self._lock_loop(), name=f"{self.kind}-locks"))
        if self.selectors:
            self._tasks.append(spawn(self._dynamic_loop(), name=f"{self.kind}-dynamic"))

    def _start_sessions(self) -> None:
        """Take sessions: in-process from the proxy when it is here, else through tunnels."""
        if self.local_registry is not None:
            self.local_registry.add_local(self.host_id, self._local_session, service=self.kind)
            return
        from jumpgate.core.db.tunnel import TunnelAgent

        tunnel = TunnelAgent(
            proxy_addr=self.proxy_addr,
            sni=self.proxy_sni,
            identity=self.identity,
            host_id=self.host_id,
            services=[self.kind],
            pool=TUNNEL_POOL,
            on_session=self.handle_session,
        )
        self._tasks.append(spawn(tunnel.run(), name=f"{self.kind}-tunnel"))

    async def _stop_serving(self) -> None:
        """Withdraw from the in-process proxy and stop the loops and the tunnel."""
        if self.local_registry is not None:
            self.local_registry.remove_local(self.host_id, service=self.kind)
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()

    # ------------------------------------------------------------------ loops
    async def _heartbeat_loop(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            try:
                await self._heartbeat_once()
                delay = HEARTBEAT_INTERVAL
            except JumpgateError as exc:
                log.warning("%s: heartbeat failed (%s); retrying", self.kind, exc)
                delay = 2.0

    async def _dynamic_loop(self) -> None:
        while True:
            await asyncio.sleep(DYNAMIC_REFRESH)
            try:
                if await self.refresh_dynamic():
                    await self._heartbeat_once()
            except JumpgateError as exc:
                log.debug("%s: refreshing dynamic resources failed: %s", self.kind, exc)

    async def _lock_loop(self) -> None:
        generation = -1
        while True:
            try:
                res = await self.auth.call(
                    "locks.watch", generation=generation, timeout=LOCK_WATCH_TIMEOUT
                )
            except JumpgateError as exc:
                log.debug("%s: lock watch failed (%s); retrying", self.kind, exc)
                await asyncio.sleep(1.0)
                continue
            generation = int(res["generation"])
            self.enforce_locks(res["locks"])

    def enforce_locks(self, locks: list[dict[str, Any]]) -> None:
        """Close every live session a lock targets."""
        for session_id, identity, target, handle in list(self._live_sessions()):
            for lk in locks:
                spec = lk.get("spec", {})
                if lock_applies(spec.get("target", {}), identity):
                    message = spec.get("message", "")
                    log.info(
                        "%s: closing session %s of %s to %s: locked (%s)",
                        self.kind,
                        session_id,
                        identity.username,
                        target,
                        message,
                    )
                    self._close_session(handle, f"locked: {message}")
                    break

    async def _local_session(self) -> socket.socket:
        """In-process hand-off: a socketpair whose other end this agent serves."""
        from jumpgate.core.db.tunnel import serve_tunnel_socket

        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        spawn(serve_tunnel_socket(ours, self.handle_session), name=f"{self.kind}-local-session")
        return theirs
