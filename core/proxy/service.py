"""The proxy service: the web port, its certificate and its routes."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from jumpgate.core.proxy.clienthello import ClientHello
from jumpgate.core.proxy.router import TLSRouter, relay_raw
from jumpgate.core.proxy.web import ClusterInfo, WebAPI

if TYPE_CHECKING:
    from jumpgate.core.proxy.apps import AppFrontend

log = logging.getLogger(__name__)

#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME: verify the chain but leave validity dates to us
X509_V_FLAG_NO_CHECK_TIME = 0x200000

#: ALPN prefix of the auth API pass-through (``teleport-auth@<cluster>``).
AUTH_ALPN_PREFIX = "teleport-auth@"
#: Contexts with a minted certificate kept (least recently used ones are dropped).
MAX_MINTED = 256
#: At most this many certificates are minted per MINT_WINDOW seconds (then the default one).
MINT_BURST = 30
MINT_WINDOW = 60.0


def proxy_dns_names(public_host: str, nodename: str) -> list[str]:
    """Names the proxy certificate must cover: the public host, its app subdomains, loopback."""
    names = [public_host, "localhost", "127.0.0.1", "::1", nodename]
    try:
        ipaddress.ip_address(public_host)
    except ValueError:
        names.append(f"*.{public_host}")
    return list(dict.fromkeys(n for n in names if n))


class ProxyService:
    """Serve the web port: TLS routing, the web API, and the auth pass-through."""

    def __init__(
        self,
        info: ClusterInfo,
        *,
        listen_host: str,
        listen_port: int,
        public_addr: str,
        cert_file: Path,
        key_file: Path,
        client_ca_pem: bytes,
        auth_addr: tuple[str, int] | None,
        mint: Callable[[str], tuple[Path, Path]] | None = None,
        host_ca_pem: bytes = b"",
        user_ca_pem: bytes = b"",
    ) -> None:
        self.info = info
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.public_addr = public_addr
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_pem = client_ca_pem
        self.auth_addr = auth_addr
        self.web = WebAPI(
            info, public_addr=public_addr, web_listen_addr=f"{listen_host}:{listen_port}"
        )
        self.router = TLSRouter(self._context_for, prepare=self._before_context)
        self.public_host = (
            public_addr.rsplit(":", 1)[0].strip("[]") if ":" in public_addr else public_addr
        )
        #: signs a certificate for one extra name (in-process auth); see _needs_own_cert
        self.mint = mint
        self._contexts: dict[tuple[str, str, bool], ssl.SSLContext] = {}
        #: contexts with a minted certificate, least recently used first (APP-SEC-4)
        self._minted: OrderedDict[tuple[str, str, bool], ssl.SSLContext] = OrderedDict()
        self._mint_times: deque[float] = deque()
        #: protocols whose TLS handshake must carry a client certificate
        self.require_client_cert: set[str] = set()
        #: protocols whose handlers check certificate expiry themselves after the handshake,
        #: so the client gets a message in its own protocol instead of a dropped connection
        self.check_expiry_after_handshake: set[str] = set()
        self.host_ca_pem = host_ca_pem
        self.user_ca_pem = user_ca_pem
        self._inner_ctx: ssl.SSLContext | None = None
        from jumpgate.core.db.tunnel import TunnelRegistry

        #: agents connected to this proxy (reverse tunnels and in-process agents)
        self.tunnels = TunnelRegistry()
        self._runner: web.AppRunner | None = None
        self.addresses: list[tuple[str, int]] = []
        #: application access on ``<app>.<public host>`` (needs the auth service in-process)
        self.apps: AppFrontend | None = None
        if hasattr(info, "store"):
            from jumpgate.core.proxy.apps import AppFrontend

            self.apps = AppFrontend(
                auth=info,
                registry=self.tunnels,
                public_addr=public_addr,
                public_host=self.public_host,
                user_ca_subjects=self._user_ca_subjects,
            )
            self.web.app_frontend = self.apps

    async def _before_context(self, protocol: str, server_name: str) -> None:
        """An app host the catalogue does not know yet: read it again first, so a new
        app's first connection gets the app's certificate (see _context_for)."""
        if protocol == "http/1.1" and self.apps is not None and server_name:
            await self.apps.refresh_for(server_name)

    def _needs_own_cert(self, server_name: str) -> bool:
        """A subdomain of a single-label public host (``app.localhost``): OpenSSL refuses
        ``*.localhost`` wildcards, so such names get a certificate of their own."""
        host = self.public_host
        return (
            self.mint is not None
            and "." not in host
            and server_name.endswith("." + host)
            and server_name.count(".") == 1
            and server_name[: -len(host) - 1].replace("-", "").isalnum()
        )

    def _user_ca_subjects(self) -> set[bytes]:
        from cryptography import x509

        return {c.subject.public_bytes() for c in x509.load_pem_x509_certificates(self.user_ca_pem)}

    def _covered_by_wildcard(self, server_name: str) -> bool:
        host = self.public_host
        return (
            "." in host
            and server_name.endswith("." + host)
            and "." not in server_name[: -len(host) - 1]
        )

    def _context_for(self, protocol: str, server_name: str = "") -> ssl.SSLContext:
        server_name = server_name.lower()
        app_host = (
            protocol == "http/1.1" and self.apps is not None and self.apps.is_app_host(server_name)
        )
        own = self._needs_own_cert(server_name) or (
            app_host and self.mint is not None and not self._covered_by_wildcard(server_name)
        )
        # mint only for apps in the live catalogue: any other name (an unauthenticated
        # client's random SNI) gets the default certificate, and costs nothing (APP-SEC-4)
        name = (
            server_name
            if own and self.apps is not None and self.apps.serves(name=server_name)
            else ""
        )
        key = (protocol, name, app_host)
        if name:
            ctx = self._minted.get(key)
            if ctx is not None:
                self._minted.move_to_end(key)
                return ctx
            if not self._may_mint():
                log.warning("proxy: certificate minting rate exceeded; default one for %s", name)
                name, key = "", (protocol, "", app_host)
        ctx = self._contexts.get(key)
        if ctx is not None:
            return ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if name:
            assert self.mint is not None
            cert_file, key_file = self.mint(name)
            try:
                ctx.load_cert_chain(str(cert_file), str(key_file))
            finally:  # loaded: no key files left behind in the data directory
                cert_file.unlink(missing_ok=True)
                key_file.unlink(missing_ok=True)
        else:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.load_verify_locations(cadata=self.client_ca_pem.decode())
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if protocol in self.require_client_cert else ssl.CERT_OPTIONAL
        )
        ctx.set_alpn_protocols([protocol])
        if protocol in self.check_expiry_after_handshake or app_host:
            # apps answer an expired certificate with a redirect or a 401 naming the expiry
            ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        if name:
            self._minted[key] = ctx
            while len(self._minted) > MAX_MINTED:
                self._minted.popitem(last=False)
            return ctx
        if len(self._contexts) > 1024:
            self._contexts.clear()
        self._contexts[key] = ctx
        return ctx

    def _may_mint(self) -> bool:
        """A token for one more minted certificate (MINT_BURST per MINT_WINDOW)."""
        now = time.monotonic()
        times = self._mint_times
        while times and now - times[0] > MINT_WINDOW:
            times.popleft()
        if len(times) >= MINT_BURST:
            return False
        times.append(now)
        return True

    async def start(self) -> list[tuple[str, int]]:
        """Start listening; returns the bound addresses."""
        self._runner = web.AppRunner(
            self.web.app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.router.add_tls_route("http/1.1", server)
        if self.apps is not None:
            self.router.routes[-1].choose = self._choose_app
            self.apps.start()
        if self.auth_addr is not None:
            self.router.add_raw_route(AUTH_ALPN_PREFIX, self._auth_passthrough, prefix=True)
        self._add_database_routes()
        self.addresses = await self.router.start(self.listen_host, self.listen_port)
        for host, port in self.addresses:
            log.info(
                "proxy: web port listening on %s:%d (TLS routing: %s)",
                host,
                port,
                ", ".join(self.router.supported()),
            )
        return self.addresses

    def _add_database_routes(self) -> None:
        from cryptography import x509

        from jumpgate.core.db.proxy import ALPN_POSTGRES, PostgresFrontend
        from jumpgate.core.db.tunnel import ALPN_REVERSE_TUNNEL, tunnel_protocol_factory

        host_ca_subjects = {
            c.subject.public_bytes() for c in x509.load_pem_x509_certificates(self.host_ca_pem)
        }
        self.router.add_tls_route(
            ALPN_REVERSE_TUNNEL, tunnel_protocol_factory(self.tunnels, lambda: host_ca_subjects)
        )
        self.require_client_cert.add(ALPN_REVERSE_TUNNEL)
        self.postgres = PostgresFrontend(
            registry=self.tunnels,
            locate=self._locate_db,
            inner_context=self._inner_db_context,
            audit=getattr(getattr(self.info, "audit", None), "emit", None),
        )
        self.check_expiry_after_handshake.add(ALPN_POSTGRES)
        self.router.add_tls_route(ALPN_POSTGRES, self.postgres.protocol_factory())

    def _inner_db_context(self) -> ssl.SSLContext:
        """The TLS server context for a database client's own (inner) handshake."""
        if self._inner_ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            ctx.load_verify_locations(cadata=self.user_ca_pem.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME  # expiry is checked after, with a message
            self._inner_ctx = ctx
        return self._inner_ctx

    async def _locate_db(self, name: str) -> list[str]:
        """Host ids of connected agents serving database ``name``."""
        from jumpgate.core.auth.hosts import database_servers

        servers = await database_servers(self.info)  # type: ignore[arg-type]
        hosts = [s.spec.host_id for s in servers if s.spec.database.metadata.name == name]
        connected = [h for h in hosts if self.tunnels.is_connected(h)]
        return connected or hosts

    async def _auth_passthrough(self, sock: socket.socket, hello: ClientHello) -> None:
        assert self.auth_addr is not None
        cluster = next(
            (p[len(AUTH_ALPN_PREFIX) :] for p in hello.alpn if p.startswith(AUTH_ALPN_PREFIX)), ""
        )
        if cluster and cluster != self.info.cluster_name:
            log.warning("refusing auth pass-through for unknown cluster %r", cluster)
            sock.close()
            return
        await relay_raw(sock, *self.auth_addr)

    def _choose_app(self, hello: ClientHello) -> Callable[[], asyncio.BaseProtocol] | None:
        """Connections whose SNI names an app go to the app frontend, not the web API."""
        apps = self.apps
        if apps is None or not apps.is_app_host(hello.server_name):
            return None
        return apps.protocol_factory(hello.server_name)

    async def close(self) -> None:
        """Stop accepting, then finish the web app."""
        await self.router.close()
        if self.apps is not None:
            await self.apps.close()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), timeout=10)
