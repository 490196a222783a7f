"""Reverse tunnels: agents dial out to the proxy and wait for sessions.

See docs/design/db-access.md for the wire format. The agent keeps ``pool`` idle
TLS connections at the proxy (ALPN ``teleport-reversetunnel``, its host
certificate); the proxy hands each session to one idle connection with a JSON
header line, and the agent dials a replacement at once. In one process the same
exchange runs over a socketpair.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.auth.client import client_ssl_context, split_hostport
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import ConnectionProblem, JumpgateError
from jumpgate.core.relay import Handshake
from jumpgate.core.tlsca import identity_from_certificate

log = logging.getLogger(__name__)

ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"
#: Longest header line accepted (it carries a PEM certificate).
MAX_HEADER = 64 * 1024
VERSION = "0.1.0"

SessionHandler = Callable[[asyncio.Transport, Handshake, dict[str, Any]], Awaitable[None]]


def encode_line(obj: dict[str, Any]) -> bytes:
    """One JSON object as a newline-terminated line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def read_json_line(hs: Handshake, *, limit: int = MAX_HEADER) -> dict[str, Any]:
    """Read one JSON object line from ``hs``."""
    line = await hs.read_line(limit)
    try:
        obj = json.loads(line)
    except ValueError:
        raise ConnectionProblem("the tunnel peer sent a malformed header") from None
    if not isinstance(obj, dict):
        raise ConnectionProblem("the tunnel peer sent a header that is not an object")
    return obj


# ---------------------------------------------------------------------- agent side
class TunnelAgent:
    """Keeps ``pool`` idle reverse-tunnel connections to the proxy; serves what arrives."""

    def __init__(
        self,
        *,
        proxy_addr: str,
        sni: str,
        identity: IdentityFile,
        host_id: str,
        services: list[str],
        pool: int,
        on_session: SessionHandler,
    ) -> None:
        self.host, self.port = split_hostport(proxy_addr, 3080)
        self.sni = sni
        self.host_id = host_id
        self.services = services
        self.pool = pool
        self.on_session = on_session
        self._ctx: ssl.SSLContext = client_ssl_context(identity, alpn=[ALPN_REVERSE_TUNNEL])
        self._idle = 0
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Maintain the pool until cancelled; reconnect with backoff when the proxy is away."""
        delay = 0.2
        try:
            while True:
                while self._idle < self.pool:
                    try:
                        await self._dial()
                        delay = 0.2
                    except (OSError, ssl.SSLError, JumpgateError, TimeoutError) as exc:
                        self.connected.clear()
                        log.info(
                            "tunnel: cannot reach the proxy at %s:%d (%s); retrying in %.1fs",
                            self.host,
                            self.port,
                            exc,
                            delay,
                        )
                        await asyncio.sleep(delay * random.uniform(0.7, 1.3))
                        delay = min(delay * 2, 10.0)
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            for task in list(self._tasks):
                await cancel_and_wait(task)

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        transport, hs = await asyncio.wait_for(
            loop.create_connection(
                Handshake, self.host, self.port, ssl=self._ctx, server_hostname=self.sni
            ),
            timeout=15,
        )
        if transport.get_extra_info("ssl_object").selected_alpn_protocol() != ALPN_REVERSE_TUNNEL:
            transport.close()
            raise ConnectionProblem("the proxy does not accept reverse tunnels")
        hs.write(
            encode_line(
                {
                    "type": "hello",
                    "host_id": self.host_id,
                    "services": self.services,
                    "version": VERSION,
                }
            )
        )
        self._idle += 1
        self.connected.set()
        task = spawn(self._wait_for_session(transport, hs), name="tunnel-idle")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_for_session(self, transport: asyncio.Transport, hs: Handshake) -> None:
        taken = False
        try:
            header = await read_json_line(hs)
            self._idle -= 1
            taken = True
            self._wakeup.set()  # dial a replacement now
            await self.on_session(transport, hs, header)
        except (ConnectionProblem, OSError) as exc:
            log.debug("tunnel: idle connection ended: %s", exc)
            transport.close()
        except Exception:
            log.exception("tunnel: session handler failed")
            transport.close()
        finally:
            if not taken:
                self._idle -= 1
                self._wakeup.set()


async def serve_tunnel_socket(sock: socket.socket, on_session: SessionHandler) -> None:
    """Serve one in-process tunnel connection (the agent end of a socketpair)."""
    loop = asyncio.get_running_loop()
    transport, hs = await loop.connect_accepted_socket(Handshake, sock)
    try:
        header = await read_json_line(hs)
    except (ConnectionProblem, OSError):
        transport.close()
        return
    await on_session(transport, hs, header)


# ---------------------------------------------------------------------- proxy side
@dataclass
class TunnelConn:
    """An idle reverse-tunnel connection waiting at the proxy."""

    host_id: str
    transport: asyncio.Transport
    hs: Handshake
    #: which service of the agent it reaches: ``db`` or ``app``
    service: str = "db"


#: How the proxy names each service in its messages.
SERVICE_NAMES = {"db": "Database Service", "app": "Application Service"}


def _key(host_id: str, service: str) -> str:
    """Registry key: one process may run a Database and an App Service under one host id."""
    return host_id if service == "db" else f"{host_id}/{service}"


@dataclass
class AgentEntry:
    """What the proxy knows of one agent."""

    idle: collections.deque[TunnelConn] = field(default_factory=collections.deque)
    local: Callable[[], Awaitable[socket.socket]] | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class TunnelRegistry:
    """The proxy's view of connected agents."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentEntry] = {}

    def add_local(
        self, host_id: str, dial: Callable[[], Awaitable[socket.socket]], *, service: str = "db"
    ) -> None:
        """An agent in this process: sessions go over socketpairs it creates."""
        key = _key(host_id, service)
        self.agents.setdefault(key, AgentEntry()).local = dial
        self._wake(key)

    def remove_local(self, host_id: str, *, service: str = "db") -> None:
        """The in-process agent stopped."""
        entry = self.agents.get(_key(host_id, service))
        if entry is not None:
            entry.local = None

    def add_idle(self, conn: TunnelConn) -> None:
        """An agent's idle connection arrived."""
        key = _key(conn.host_id, conn.service)
        self.agents.setdefault(key, AgentEntry()).idle.append(conn)
        self._wake(key)

    def discard(self, conn: TunnelConn) -> None:
        """An idle connection closed."""
        entry = self.agents.get(_key(conn.host_id, conn.service))
        if entry is not None:
            with contextlib.suppress(ValueError):
                entry.idle.remove(conn)

    def _wake(self, host_id: str) -> None:
        entry = self.agents[host_id]
        for fut in entry.waiters:
            if not fut.done():
                fut.set_result(None)
        entry.waiters.clear()

    def is_connected(self, host_id: str, *, service: str = "db") -> bool:
        """Whether the agent can take a session now."""
        entry = self.agents.get(_key(host_id, service))
        return bool(entry and (entry.local or entry.idle))

    async def open(
        self, host_id: str, header: dict[str, Any], *, wait: float = 5.0, service: str = "db"
    ) -> tuple[asyncio.Transport, Handshake]:
        """Send ``header`` to the agent over a fresh tunnel connection; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        key = _key(host_id, service)
        while True:
            entry = self.agents.setdefault(key, AgentEntry())
            if entry.local is not None:
                sock = await entry.local()
                transport, hs = await loop.connect_accepted_socket(Handshake, sock)
                hs.write(encode_line(header))
                return transport, hs
            while entry.idle:
                conn = entry.idle.popleft()
                if conn.transport.is_closing() or conn.hs.lost:
                    continue
                conn.hs.write(encode_line(header))
                return conn.transport, conn.hs
            left = deadline - loop.time()
            if left <= 0:
                raise ConnectionProblem(
                    f"the {SERVICE_NAMES.get(service, service)} (host {host_id}) is not "
                    "connected to this proxy",
                    hint="check that the agent is running and can reach the proxy",
                )
            fut: asyncio.Future[None] = loop.create_future()
            entry.waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, left)


def tunnel_protocol_factory(
    registry: TunnelRegistry, host_ca_fingerprints: Callable[[], set[bytes]]
) -> Callable[[], asyncio.Protocol]:
    """Protocol factory for the proxy's ``teleport-reversetunnel`` route."""

    def factory() -> asyncio.Protocol:
        hs = Handshake()
        spawn(_accept_agent(registry, hs, host_ca_fingerprints), name="tunnel-accept")
        return hs

    return factory


async def _accept_agent(
    registry: TunnelRegistry, hs: Handshake, host_ca_fps: Callable[[], set[bytes]]
) -> None:
    from cryptography import x509

    try:
        hello = await asyncio.wait_for(read_json_line(hs, limit=4096), timeout=15)
    except (ConnectionProblem, OSError, TimeoutError, JumpgateError) as exc:
        log.info("tunnel: dropped a connection before its hello: %s", exc)
        if hs.transport is not None:
            hs.transport.close()
        return
    transport = hs.transport
    assert transport is not None
    ssl_obj = transport.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
    if not der:
        transport.close()
        return
    cert = x509.load_der_x509_certificate(der)
    ident = identity_from_certificate(cert)
    issuer_ok = cert.issuer.public_bytes() in host_ca_fps()
    service = {"Db": "db", "App": "app"}.get(ident.system_role or "", "")
    services = hello.get("services")
    if (
        not issuer_ok
        or not service
        or hello.get("host_id") != ident.username
        or (isinstance(services, list) and service not in services)
    ):
        log.warning("tunnel: refused agent %s (role %r)", ident.username, ident.system_role)
        transport.close()
        return
    conn = TunnelConn(ident.username, transport, hs, service)
    registry.add_idle(conn)
    log.debug("tunnel: agent %s idle connection registered", ident.username)
    # notice when the agent drops the idle connection
    while not hs.lost and not transport.is_closing():
        if conn not in registry.agents.get(_key(conn.host_id, conn.service), AgentEntry()).idle:
            return  # taken for a session
        await asyncio.sleep(1.0)
    registry.discard(conn)
