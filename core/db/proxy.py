"""The proxy's side of database access: the ``teleport-postgres`` route.

For every connection the router hands over (outer TLS already terminated):

1. read the first start-up packet;
2. ``CancelRequest`` → look up the session by its backend key and forward the
   cancel to the agent that serves it;
3. ``SSLRequest`` → ``N`` when the outer certificate already routes to a database
   (authenticated tunnel), else ``S`` and an inner TLS handshake that requires
   the user's database certificate (TLS carried through from the client);
4. ``StartupMessage`` → pick an agent serving the database, open a tunnel
   connection with a session header, read its one-line answer, then relay bytes.

Nothing is parsed after the start-up: the relay copies bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jumpgate.core.aio import spawn
from jumpgate.core.db.engines.postgres.protocol import (
    CancelRequest,
    GSSENCRequest,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    error_response,
    parse_startup_packet,
)
from jumpgate.core.db.tunnel import TunnelRegistry, read_json_line
from jumpgate.core.errors import ConnectionProblem, JumpgateError
from jumpgate.core.relay import Handshake, Relay, start_tls_server
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)

ALPN_POSTGRES = "teleport-postgres"

#: Where a database is served: (host id, database protocol) per database name.
Locator = Callable[[str], Awaitable[list[str]]]


@dataclass
class CancelTarget:
    """Where to send a CancelRequest for one backend key."""

    host_id: str
    db: str


class PostgresFrontend:
    """Handles ``teleport-postgres`` connections at the proxy."""

    def __init__(
        self,
        *,
        registry: TunnelRegistry,
        locate: Locator,
        inner_context: Callable[[], ssl.SSLContext],
        audit: Callable[..., Any] | None = None,
    ) -> None:
        self.registry = registry
        self.locate = locate
        self.inner_context = inner_context
        self.audit = audit
        self._cancel: OrderedDict[tuple[int, int], CancelTarget] = OrderedDict()
        self.sessions_started = 0

    def protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """For :meth:`TLSRouter.add_tls_route`."""

        def factory() -> Handshake:
            hs = Handshake()
            spawn(self._serve(hs), name="pg-frontend")
            return hs

        return factory

    def _remember_cancel(self, key: tuple[int, int], target: CancelTarget) -> None:
        self._cancel[key] = target
        while len(self._cancel) > 100_000:
            self._cancel.popitem(last=False)

    async def _serve(self, hs: Handshake) -> None:
        try:
            await self._serve_inner(hs)
        except (ConnectionProblem, ConnectionError, OSError, TimeoutError) as exc:
            log.debug("postgres: connection ended during start-up: %s", exc)
            if hs.transport is not None:
                hs.transport.close()
        except Exception:
            log.exception("postgres: unexpected error")
            if hs.transport is not None:
                hs.transport.close()

    def _fail(
        self, hs: Handshake, message: str, *, hint: str | None = None, code: str = "28000"
    ) -> None:
        if hs.transport is not None and not hs.transport.is_closing():
            hs.write(error_response(message, code=code, hint=hint))
            hs.transport.close()

    async def _serve_inner(self, hs: Handshake) -> None:
        outer: Identity | None = None
        tunnel_mode = False
        identity: Identity | None = None
        client_addr = ""
        first = True
        while True:
            try:
                packet = await hs.read_until_packet(parse_startup_packet)
            except ProtocolError as exc:
                self._fail(hs, f"Jumpgate proxy: {exc}", code="08P01")
                return
            assert hs.transport is not None  # data arrived, so the connection is made
            if first:
                # the outer TLS (terminated by the router) decides the mode
                first = False
                outer = _peer_identity(hs.transport)
                tunnel_mode = outer is not None and outer.route_to_database is not None
                identity = outer if tunnel_mode else None
                client_addr = _peer_addr(hs.transport)
            if isinstance(packet, CancelRequest):
                await self._forward_cancel(packet)
                hs.transport.close()
                return
            if isinstance(packet, GSSENCRequest):
                hs.write(b"N")
                continue
            if isinstance(packet, SSLRequest):
                if tunnel_mode:
                    hs.write(b"N")
                    continue
                hs.write(b"S")
                try:
                    await start_tls_server(hs.transport, hs, self.inner_context())
                except (ssl.SSLError, ConnectionError, OSError, TimeoutError, JumpgateError) as exc:
                    log.info("postgres: client TLS handshake from %s failed: %s", client_addr, exc)
                    if hs.transport is not None:
                        hs.transport.close()
                    return
                identity = _peer_identity(hs.transport)
                continue
            assert isinstance(packet, StartupMessage)
            break
        if identity is not None and identity.expires is not None:
            now = datetime.now(UTC)
            if identity.expires <= now:
                reason = (
                    f"your database certificate expired at {identity.expires:%Y-%m-%d %H:%M:%S} UTC"
                )
                log.info("postgres: refused %s from %s: %s", identity.username, client_addr, reason)
                if self.audit is not None:
                    route = identity.route_to_database
                    self.audit(
                        "db.session.start",
                        success=False,
                        user=identity.username,
                        db_service=route.service_name if route else "",
                        addr=client_addr,
                        error=f"certificate has expired: {reason}",
                    )
                self._fail(hs, reason, hint="get a new one: tsh db login (or tbot renews it)")
                return
        if identity is None or identity.route_to_database is None:
            self._fail(
                hs,
                "Jumpgate proxy: this connection carries no database certificate",
                hint="connect with sslmode=verify-full and the certificate from 'tsh db login', "
                "or through 'tsh proxy db --tunnel'",
            )
            return
        await self._open_session(hs, identity, packet, client_addr, tunnel_mode)

    async def _open_session(
        self,
        hs: Handshake,
        identity: Identity,
        startup: StartupMessage,
        client_addr: str,
        tunnel_mode: bool,
    ) -> None:
        route = identity.route_to_database
        assert route is not None
        db = route.service_name
        hosts = await self.locate(db)
        if not hosts:
            self._fail(
                hs,
                f'database "{db}" is not available: no Database Service serving it is connected',
                hint="tsh db ls shows the databases that are online",
                code="08001",
            )
            return
        random.shuffle(hosts)
        assert hs.transport is not None
        cert_der = hs.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cert_pem = x509.load_der_x509_certificate(cert_der).public_bytes(_PEM).decode()
        session_id = str(uuid.uuid4())
        header = {
            "type": "session",
            "protocol": route.protocol or "postgres",
            "db": db,
            "session_id": session_id,
            "client_addr": client_addr,
            "identity_cert": cert_pem,
            "startup": base64.b64encode(startup.raw).decode(),
            "tunnel_mode": tunnel_mode,
        }
        last_error: Exception | None = None
        for host_id in hosts:
            try:
                _, agent = await self.registry.open(host_id, header)
                answer = await read_json_line(agent)
            except (JumpgateError, OSError) as exc:
                last_error = exc
                continue
            key = answer.get("backend_key")
            if answer.get("ok") and isinstance(key, list) and len(key) == 2:
                self._remember_cancel((int(key[0]), int(key[1])), CancelTarget(host_id, db))
            self.sessions_started += 1
            relay = Relay.between(hs, agent)
            await relay.wait()
            return
        self._fail(
            hs,
            f'database "{db}" is not reachable: {last_error}',
            hint="check the Database Service's logs",
            code="08001",
        )

    async def _forward_cancel(self, req: CancelRequest) -> None:
        target = self._cancel.get((req.pid, req.secret))
        if target is None:
            log.debug("postgres: cancel for an unknown backend key ignored")
            return
        try:
            transport, _ = await self.registry.open(
                target.host_id,
                {"type": "cancel", "db": target.db, "pid": req.pid, "secret": req.secret},
            )
            transport.close()
        except (JumpgateError, OSError) as exc:
            log.warning("postgres: could not forward a cancel request: %s", exc)


# ---------------------------------------------------------------------- helpers
_PEM = Encoding.PEM


def _peer_identity(transport: asyncio.BaseTransport) -> Identity | None:
    ssl_obj = transport.get_extra_info("ssl_object")
    if ssl_obj is None:
        return None
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return identity_from_certificate(x509.load_der_x509_certificate(der))
    except JumpgateError:
        return None


def _peer_addr(transport: asyncio.BaseTransport) -> str:
    peer: Any = transport.get_extra_info("peername")
    if not peer:
        return ""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
