"""The Database Service agent: joins, heartbeats its databases, serves sessions.

It dials out only. A pool of idle reverse-tunnel connections waits at the
proxy; each session takes one and the agent dials a replacement. When the proxy
runs in the same process the sessions arrive over a socketpair instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.config.services import Database as DatabaseConfig
from jumpgate.core.errors import ConfigError
from jumpgate.core.serviceagent import HEARTBEAT_TTL, ServiceAgent
from jumpgate.core.tlsca import Identity

log = logging.getLogger(__name__)


def db_resource(cfg: DatabaseConfig) -> dict[str, Any]:
    """The ``db`` resource (Teleport's shape) for a static ``db_service.databases`` entry."""
    tls: dict[str, Any] = {"mode": cfg.tls.mode}
    if cfg.tls.server_name:
        tls["server_name"] = cfg.tls.server_name
    if cfg.tls.trust_system_cert_pool:
        tls["trust_system_cert_pool"] = True
    return {
        "kind": "db",
        "version": "v3",
        "metadata": {
            "name": cfg.name,
            "description": cfg.description,
            "labels": dict(cfg.static_labels),
        },
        "spec": {"protocol": cfg.protocol, "uri": cfg.uri, "tls": tls},
    }


@dataclass
class LiveSession:
    """A session in progress (for lock enforcement and the dashboard)."""

    session_id: str
    identity: Identity
    db: str
    db_user: str
    db_name: str
    close: Any = None  # callable that ends the session


@dataclass
class DatabaseServiceState:
    """Counters for logs and tests."""

    sessions_total: int = 0
    sessions_denied: int = 0
    live: dict[str, LiveSession] = field(default_factory=dict)


class DatabaseService(ServiceAgent):
    """One agent serving the databases of ``db_service``."""

    kind = "db"

    def __init__(
        self,
        *,
        databases: list[DatabaseConfig],
        resource_selectors: list[dict[str, list[str]]] | None = None,
        host_id: str,
        hostname: str,
        identity: IdentityFile,
        auth_addr: str,
        proxy_addr: str,
        proxy_sni: str,
    ) -> None:
        super().__init__(
            resource_selectors=resource_selectors,
            host_id=host_id,
            hostname=hostname,
            identity=identity,
            auth_addr=auth_addr,
            proxy_addr=proxy_addr,
            proxy_sni=proxy_sni,
        )
        if not databases and not self.selectors:
            raise ConfigError(
                "db_service is enabled but lists no databases and no resources to watch",
                hint="add db_service.databases (teleport db configure create writes one) or "
                "db_service.resources: [{labels: {'*': '*'}}] for databases created with tctl create",
            )
        self.static = {d.name: d for d in databases}
        #: what this agent serves now: the static databases plus matching ``db`` resources
        self.databases: dict[str, DatabaseConfig] = dict(self.static)
        #: inline CA certificates of dynamic databases (``spec.tls.ca_cert``)
        self.inline_ca: dict[str, bytes] = {}
        self.state = DatabaseServiceState()
        #: the cluster's db CA (learned with the first session; verifies cancel targets)
        self.db_ca_pem: bytes = b""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Announce the databases (at once when the cluster is up), then keep serving.

        An unreachable cluster is not fatal: heartbeats and tunnels retry by themselves.
        """
        await self._announce_and_serve(
            ", ".join(self.databases) or "(databases matching db_service.resources)"
        )
        self._start_sessions()

    async def close(self) -> None:
        """Stop serving; live sessions are closed."""
        await self._stop_serving()
        for sess in list(self.state.live.values()):
            if sess.close:
                sess.close()
        await self.auth.close()

    # ------------------------------------------------------------------ heartbeats
    async def refresh_dynamic(self) -> bool:
        """Serve the ``db`` resources whose labels match ``db_service.resources``.

        Returns whether the set of databases changed.
        """
        if not self.selectors:
            return False
        from jumpgate.core.rbac.matching import match_labels

        found: dict[str, DatabaseConfig] = {}
        inline: dict[str, bytes] = {}
        for res in await self.auth.call("db.resources"):
            labels = res["metadata"].get("labels", {})
            name = res["metadata"]["name"]
            if name in self.static or not any(match_labels(s, labels)[0] for s in self.selectors):
                continue
            spec = res.get("spec", {})
            tls = spec.get("tls") or {}
            try:
                found[name] = DatabaseConfig.model_validate(
                    {
                        "name": name,
                        "description": res["metadata"].get("description", ""),
                        "protocol": spec.get("protocol", ""),
                        "uri": spec.get("uri", ""),
                        "static_labels": labels,
                        "tls": {
                            "mode": tls.get("mode") or "verify-full",
                            "server_name": tls.get("server_name") or None,
                            "trust_system_cert_pool": bool(tls.get("trust_system_cert_pool")),
                        },
                    }
                )
            except ValueError as exc:
                log.warning("db: ignoring db resource %s: %s", name, exc)
                continue
            if tls.get("ca_cert"):
                inline[name] = str(tls["ca_cert"]).encode()
        added = set(found) - set(self.databases)
        removed = {n for n in self.databases if n not in self.static and n not in found}
        changed = bool(added or removed) or any(found[n] != self.databases.get(n) for n in found)
        if added or removed:
            log.info("db: dynamic databases now %s", ", ".join(sorted(found)) or "none")
        self.databases = {**self.static, **found}
        self.inline_ca = inline
        return changed

    async def _heartbeat_once(self) -> None:
        await self.refresh_dynamic()
        await self.auth.call(
            "db.heartbeat",
            host_id=self.host_id,
            hostname=self.hostname,
            databases=[db_resource(d) for d in self.databases.values()],
            ttl=HEARTBEAT_TTL,
        )

    # ------------------------------------------------------------------ sessions
    def _live_sessions(self) -> Iterable[tuple[str, Identity, str, Any]]:
        return [(s.session_id, s.identity, s.db, s) for s in self.state.live.values()]

    def _close_session(self, handle: Any, reason: str) -> None:
        if handle.close:
            handle.close(reason)

    async def handle_session(
        self, transport: asyncio.Transport, handshake: Any, header: dict[str, Any]
    ) -> None:
        """Serve one session or cancel request that arrived through a tunnel."""
        from jumpgate.core.db.engines import get_engine

        db_cfg = self.databases.get(str(header.get("db", "")))
        engine = get_engine(str(header.get("protocol", db_cfg.protocol if db_cfg else "")))
        await engine.serve(self, db_cfg, transport, handshake, header)


def identity_path(data_dir: Path, role: str) -> Path:
    """Where an agent keeps its host identity."""
    return data_dir / "proc" / f"{role.lower()}.pem"
