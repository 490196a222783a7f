"""``tbot proxy db|app``: local proxies fed by the certificates tbot writes to a destination.

The same :class:`~jumpgate.core.client.localproxy.LocalProxy` as ``tsh proxy
db``; the certificate is read from the destination directory for every new
connection, so renewed certificates apply without dropping live connections.

* ``db`` (``--tunnel``): the outer TLS to the proxy presents the database
  output's ``tlscert``/``key`` (authenticated tunnel: local clients need no
  certificate). Without ``--tunnel`` the client does its own TLS with those
  files inside the outer TLS (ALPN ``teleport-postgres``).
* ``app``: plain HTTP on 127.0.0.1 relayed through mutual TLS (ALPN
  ``http/1.1``, SNI ``<app>.<proxy host>``) with the application output's
  certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from jumpgate.core.bot.config import BotConfig
from jumpgate.core.bot.destinations import DirectoryDestination
from jumpgate.core.bot.outputs import HOST_CA, KEY, TLS_CERT
from jumpgate.core.client.localproxy import LocalProxy
from jumpgate.core.errors import BadParameter, ConfigError, JumpgateError, NotFound
from jumpgate.core.relay import Handshake
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)


def resolve_proxy_addr(cli_proxy: str, cfg: BotConfig | None) -> str:
    """``--proxy-server``/``--proxy``, else the config's proxy_server/auth_server."""
    if cli_proxy:
        return cli_proxy
    if cfg is not None and cfg.address:
        return cfg.address
    raise ConfigError(
        "no proxy address: pass --proxy-server=HOST:PORT or set proxy_server in the config (-c)",
        hint="for example: tbot -c /etc/tbot.yaml proxy --destination-dir=/opt/machine-id db ...",
    )


def resolve_destination_dir(cli_dir: str, cfg: BotConfig | None) -> str:
    """``--destination-dir``, else the only directory output of the config."""
    if cli_dir:
        return cli_dir
    dirs = [
        getattr(o.destination, "path", "")
        for o in (cfg.outputs if cfg is not None else [])
        if getattr(o.destination, "path", "")
    ]
    if len(dirs) == 1:
        return str(dirs[0])
    raise BadParameter(
        "--destination-dir is required"
        + (" (the config has several directory outputs)" if dirs else ""),
        hint="pass the directory of the tbot output holding the certificate",
    )


class DestinationCerts:
    """Reads ``tlscert``/``key`` from a destination directory (per connection)."""

    def __init__(self, path: str) -> None:
        self.dest = DirectoryDestination(path)
        self.path = path

    def _need(self, name: str) -> bytes:
        data = self.dest.read(name)
        if not data or b"-----BEGIN" not in data:
            raise NotFound(
                f"no {name} in {self.path}: has tbot start written this output yet?",
                hint="run tbot start (it writes the destination) and check its log",
            )
        return data

    def pair(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) that belong together.

        tbot replaces ``key`` and ``tlscert`` one after the other; a read between
        the two renames sees a new key with an old certificate, so read again.
        """
        for _ in range(20):
            cert, key = self._need(TLS_CERT), self._need(KEY)
            if _matches(cert, key):
                return cert, key
            time.sleep(0.05)
        raise BadParameter(
            f"the key in {self.path} does not belong to its certificate",
            hint="is the destination written by more than one tbot?",
        )

    def host_ca(self) -> bytes:
        """The cluster's host CA (to verify the proxy)."""
        return self._need(HOST_CA)

    def identity(self) -> Identity:
        """What the current certificate asserts."""
        return identity_from_certificate(x509.load_pem_x509_certificate(self._need(TLS_CERT)))

    def check_cluster(self, cluster: str) -> None:
        """``--cluster`` must name the cluster that issued the certificate (no leaf clusters)."""
        if not cluster:
            return
        cert = x509.load_pem_x509_certificate(self._need(TLS_CERT))
        orgs = cert.issuer.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        issuer = str(orgs[0].value) if orgs else ""
        if cluster != issuer:
            raise BadParameter(
                f"the certificate in {self.path} is for cluster {issuer!r}, not {cluster!r}",
                hint="Jumpgate has no leaf clusters: omit --cluster",
            )


def _matches(cert_pem: bytes, key_pem: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization

    from jumpgate.core.tlsca import load_private_key

    try:
        cert_pub = x509.load_pem_x509_certificate(cert_pem).public_key()
        key_pub = load_private_key(key_pem).public_key()
    except (ValueError, JumpgateError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert_pub.public_bytes(*fmt) == key_pub.public_bytes(*fmt))


def _db_provider(certs: DestinationCerts, service: str) -> Callable[[], tuple[bytes, bytes]]:
    def provide() -> tuple[bytes, bytes]:
        cert, key = certs.pair()
        route = identity_from_certificate(x509.load_pem_x509_certificate(cert)).route_to_database
        if route is None or route.service_name != service:
            raise BadParameter(
                f"the certificate in {certs.path} is not for database {service!r}"
                + (f" (it is for {route.service_name!r})" if route else "")
            )
        return cert, key

    return provide


def db_proxy(
    *,
    proxy_addr: str,
    destination_dir: str,
    service: str,
    port: int,
    tunnel: bool,
    cluster: str = "",
) -> LocalProxy:
    """The local proxy of ``tbot proxy db``."""
    from jumpgate.core.client.profile import normalize_proxy_addr

    certs = DestinationCerts(destination_dir)
    certs.check_cluster(cluster)
    route = certs.identity().route_to_database
    if route is None:
        msg = f"{destination_dir} holds no database certificate (it is not a database output)"
        if tunnel:
            raise BadParameter(msg, hint="configure an output with type: database, service: ...")
        log.warning("%s; clients must present their own database certificate", msg)
    elif route.service_name != service:
        raise BadParameter(
            f"the certificate in {destination_dir} is for database {route.service_name!r}, "
            f"not {service!r}",
            hint="use the destination of the database output for this service",
        )
    host, _ = normalize_proxy_addr(proxy_addr)
    return LocalProxy(
        "127.0.0.1",
        port,
        proxy_addr=proxy_addr,
        sni=host,
        ca_pem=certs.host_ca(),
        client_cert_provider=_db_provider(certs, service) if tunnel else None,
        target=service,
        expired_hint="is tbot start running and renewing this destination?",
        status_dir=status_dir(),
    )


def status_dir() -> Path:
    """Where ``tbot proxy`` keeps its status file: ``$TELEPORT_HOME/proxies`` (``~/.tsh``),
    beside ``tsh proxy db``'s, so the dashboard finds both."""
    from jumpgate.core.client.profile import default_home

    return default_home() / "proxies"


class AppLocalProxy(LocalProxy):
    """A :class:`LocalProxy` for web applications: failures answer HTTP 502, not PostgreSQL."""

    async def _fail(self, hs: Handshake, message: str) -> None:
        self._record_error(message)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hs.read_some(), 2.0)
        t = hs.transport
        if t is None or t.is_closing():
            return
        body = f"tbot proxy: {message}\n".encode()
        t.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        t.close()


def app_proxy(
    *, proxy_addr: str, destination_dir: str, app: str, port: int, cluster: str = ""
) -> LocalProxy:
    """The local proxy of ``tbot proxy app``."""
    from jumpgate.core.client.profile import normalize_proxy_addr

    certs = DestinationCerts(destination_dir)
    certs.check_cluster(cluster)
    route = certs.identity().route_to_app
    if route is None or route.name != app:
        have = f" (it is for app {route.name!r})" if route else ""
        raise BadParameter(
            f"the certificate in {destination_dir} is not for application {app!r}{have}",
            hint="use the destination of an output with type: application, app_name: " + app,
        )

    def provide() -> tuple[bytes, bytes]:
        return certs.pair()

    host, _ = normalize_proxy_addr(proxy_addr)
    return AppLocalProxy(
        "127.0.0.1",
        port,
        proxy_addr=proxy_addr,
        sni=f"{app}.{host}",
        alpn=["http/1.1"],
        ca_pem=certs.host_ca(),
        client_cert_provider=provide,
        target=app,
        protocol="http",
        expired_hint="is tbot start running and renewing this destination?",
        status_dir=status_dir(),
    )


def serve(proxy: LocalProxy, on_started: Callable[[str, int], None] | None = None) -> None:
    """Run ``proxy`` until SIGINT/SIGTERM; SIGHUP is harmless (certificates are read per connection)."""

    async def main() -> None:
        host, port = await proxy.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log.info("SIGHUP: certificates are re-read for every new connection"),
        )
        try:
            if on_started is not None:
                on_started(host, port)
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await proxy.close()

    from jumpgate.core.aio import install_event_loop_policy

    install_event_loop_policy()  # uvloop: about half the CPU per relayed message
    asyncio.run(main())
