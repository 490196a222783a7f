"""Starting the Application Service inside ``teleport start`` (all-in-one or a joined agent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from jumpgate.core.app.service import AppService, ServedApp, identity_path
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.config import parse_hostport
from jumpgate.core.errors import ConfigError, ConnectionProblem
from jumpgate.core.tlsca import generate_private_key, private_key_to_pem, public_key_to_pem

if TYPE_CHECKING:
    from jumpgate.core.process import TeleportProcess

log = logging.getLogger(__name__)


async def start_app_service(proc: TeleportProcess, host_id: str) -> AppService:
    """Build, connect and start the App Service of ``proc``'s configuration.

    With the auth service in the same process the agent's host certificate
    (system role ``App``) is issued directly and, with the proxy there too,
    sessions arrive over socketpairs. Otherwise the agent joins through
    ``teleport.proxy_server`` with the join token (retrying while the cluster
    is unreachable) and keeps its identity in ``<data_dir>/proc/app.pem``.
    """
    cfg = proc.config
    apps = [ServedApp.from_config(a) for a in cfg.app_service.apps]
    selectors = [dict(m.labels) for m in cfg.app_service.resources]
    if not apps and not any(selectors):
        raise ConfigError(
            "app_service is enabled but lists no apps and no resources to watch",
            hint="add app_service.apps: [{name: grafana, uri: http://localhost:3000}] "
            "(teleport app start --name --uri writes one) or "
            "app_service.resources: [{labels: {'*': '*'}}]",
        )
    auth = proc.services.auth
    if auth is not None and proc.services.auth_addr is not None:
        key = generate_private_key()
        issued = auth.generate_host_cert(
            public_key=public_key_to_pem(key.public_key()), host_id=host_id, role="App"
        )
        ident = IdentityFile(
            key_pem=private_key_to_pem(key), cert_pem=issued.cert_pem, ca_pems=(issued.host_ca_pem,)
        )
        auth_addr = "{}:{}".format(*proc.services.auth_addr)
        proxy_addr = cfg.proxy_public_addr
    else:
        ident, proxy_addr = await _join(proc, host_id)
        auth_addr = proxy_addr
    service = AppService(
        apps=apps,
        resource_selectors=selectors,
        host_id=host_id,
        hostname=cfg.teleport.nodename,
        identity=ident,
        auth_addr=auth_addr,
        proxy_addr=proxy_addr,
        proxy_sni=parse_hostport(proxy_addr, 3080)[0],
    )
    if proc.services.proxy is not None:
        service.local_registry = proc.services.proxy.tunnels
        service.local_frontend = proc.services.proxy.apps
    await service.start()
    return service


async def _join(proc: TeleportProcess, host_id: str) -> tuple[IdentityFile, str]:
    from jumpgate.core.join import load_or_join

    cfg = proc.config
    upstream = cfg.upstream()
    if upstream is None:
        raise ConfigError(
            "app_service needs teleport.proxy_server (or auth_server) to join a cluster",
            hint="teleport app start --proxy=HOST:PORT --token=... sets it",
        )
    _, proxy_addr = upstream
    delay = 1.0
    while True:
        try:
            ident = await load_or_join(
                identity_path(proc.data_dir),
                proxy_addr,
                token=cfg.join_token() or "",
                ca_pins=list(cfg.teleport.ca_pin),
                host_id=host_id,
                node_name=cfg.teleport.nodename,
                role="App",
            )
            return ident, proxy_addr
        except ConnectionProblem as exc:  # the cluster is not up yet: keep trying
            log.warning("app: cannot join yet (%s); retrying in %.0fs", exc.message, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc._stop.wait(), delay)
            if proc._stop.is_set():
                raise
            delay = min(delay * 2, 30.0)
