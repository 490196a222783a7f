"""The Application Service agent: heartbeats its apps, serves sessions from the proxy.

Like the Database Service it dials out only: a pool of idle reverse-tunnel
connections waits at the proxy (or, in one process with the proxy, sessions
arrive over socketpairs). For each session the proxy sends a header line with
the user's certificate; the agent asks the auth service to decide
(``app.session_start``: certificate, RBAC by ``app_labels``, locks; the answer
carries the session's signed JWT), answers one line, and then forwards HTTP
(:mod:`jumpgate.core.app.forwarder`). Live sessions end when a lock targets
them or their certificate expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.app.forwarder import (
    STRIPPED_REQUEST_HEADERS,
    AppSession,
    Upstream,
    request_suffix,
)
from jumpgate.core.app.rewrite import render_headers
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.config.services import App as AppConfig
from jumpgate.core.errors import ConfigError, JumpgateError
from jumpgate.core.serviceagent import HEARTBEAT_TTL, ServiceAgent
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)

#: Audit events are sent to the auth service in batches this often.
AUDIT_FLUSH = 0.5
#: A long session records an ``app.session.chunk`` this often (and one at its end).
CHUNK_INTERVAL = 60.0
#: Requests listed in one chunk event (the count covers all of them).
CHUNK_DETAIL = 100


@dataclass
class ServedApp:
    """One application this agent serves (from teleport.yaml or an ``app`` resource)."""

    name: str
    uri: str
    description: str = ""
    public_addr: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    insecure_skip_verify: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    redirect: list[str] = field(default_factory=list)
    jwt_claims: str = ""

    @classmethod
    def from_config(cls, cfg: AppConfig) -> ServedApp:
        """From an ``app_service.apps`` entry."""
        rw = cfg.rewrite
        return cls(
            name=cfg.name,
            uri=cfg.uri,
            description=cfg.description,
            public_addr=cfg.public_addr or "",
            labels={str(k): str(v) for k, v in cfg.labels.items()},
            insecure_skip_verify=bool(cfg.insecure_skip_verify),
            headers=rw.parsed_headers() if rw else [],
            redirect=list(rw.redirect) if rw else [],
            jwt_claims=(rw.jwt_claims or "") if rw else "",
        )

    @classmethod
    def from_resource(cls, res: dict[str, Any]) -> ServedApp:
        """From an ``app`` resource (``tctl create``)."""
        meta, spec = res.get("metadata") or {}, res.get("spec") or {}
        rw = spec.get("rewrite") or {}
        return cls(
            name=str(meta.get("name", "")),
            uri=str(spec.get("uri", "")),
            description=str(meta.get("description") or ""),
            public_addr=str(spec.get("public_addr") or ""),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            insecure_skip_verify=bool(spec.get("insecure_skip_verify")),
            headers=[(str(h["name"]), str(h["value"])) for h in rw.get("headers") or []],
            redirect=[str(h) for h in rw.get("redirect") or []],
            jwt_claims=str(rw.get("jwt_claims") or ""),
        )

    def resource(self) -> dict[str, Any]:
        """The ``app`` resource (Teleport's shape) the heartbeat carries."""
        spec: dict[str, Any] = {"uri": self.uri, "public_addr": self.public_addr}
        if self.insecure_skip_verify:
            spec["insecure_skip_verify"] = True
        if self.headers or self.redirect or self.jwt_claims:
            spec["rewrite"] = {
                "redirect": self.redirect,
                "headers": [{"name": n, "value": v} for n, v in self.headers],
                **({"jwt_claims": self.jwt_claims} if self.jwt_claims else {}),
            }
        return {
            "kind": "app",
            "version": "v3",
            "metadata": {
                "name": self.name,
                "description": self.description,
                "labels": dict(self.labels),
            },
            "spec": spec,
        }

    def upstream(self) -> Upstream:
        """Where to forward requests."""
        return Upstream.from_uri(
            self.uri, insecure_skip_verify=self.insecure_skip_verify, redirect=self.redirect
        )


@dataclass
class LiveAppSession:
    """A session in progress (for locks, expiry, audit and the dashboard)."""

    session_id: str
    identity: Identity
    app: str
    forwarder: AppSession
    uri: str = ""
    started: float = field(default_factory=time.monotonic)
    #: requests since the last chunk event: (method, path, query, status)
    recent: list[tuple[str, str, str, int]] = field(default_factory=list)
    unreported: int = 0
    last_chunk: float = field(default_factory=time.monotonic)


@dataclass
class AppServiceState:
    """Counters for logs and tests."""

    sessions_total: int = 0
    sessions_denied: int = 0
    live: dict[str, LiveAppSession] = field(default_factory=dict)


class AppService(ServiceAgent):
    """One agent serving the apps of ``app_service``."""

    kind = "app"

    def __init__(
        self,
        *,
        apps: list[ServedApp],
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
        if not apps and not self.selectors:
            raise ConfigError(
                "app_service is enabled but lists no apps and no resources to watch",
                hint="add app_service.apps: [{name: grafana, uri: http://localhost:3000}] or "
                "app_service.resources: [{labels: {'*': '*'}}] for apps created with tctl create",
            )
        for app in apps:
            try:
                app.upstream()
            except ValueError as exc:
                raise ConfigError(str(exc), hint="for example uri: http://localhost:3000") from None
        self.static = {a.name: a for a in apps}
        self.apps: dict[str, ServedApp] = dict(self.static)
        self.state = AppServiceState()
        #: the proxy's app frontend in this process: it hands connections over directly
        self.local_frontend: Any = None
        self._audit_task: asyncio.Task[None] | None = None
        self._events: list[dict[str, Any]] = []
        self._events_ready = asyncio.Event()
        self._refused: list[str] = []  # public_addr values the auth service refused

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Announce the apps (at once when the cluster is up), then keep serving."""
        await self._announce_and_serve(
            ", ".join(self.apps) or "(apps matching app_service.resources)"
        )
        self._audit_task = spawn(self._audit_loop(), name="app-audit")
        if self.local_frontend is not None:
            self.local_frontend.local_agents[self.host_id] = self
        self._start_sessions()

    async def close(self) -> None:
        """Stop serving; live sessions are closed and their events flushed."""
        if self.local_frontend is not None:
            self.local_frontend.local_agents.pop(self.host_id, None)
        for sess in list(self.state.live.values()):
            sess.forwarder.close("the App Service is stopping")
        await self._stop_serving()
        await asyncio.sleep(0)  # let closing sessions record their end
        await self._flush_events()
        await cancel_and_wait(self._audit_task)
        await self.auth.close()

    # ------------------------------------------------------------------ heartbeats
    async def _heartbeat_once(self) -> None:
        await self.refresh_dynamic()
        answer = await self.auth.call(
            "app.heartbeat",
            hostname=self.hostname,
            apps=[a.resource() for a in self.apps.values()],
            ttl=HEARTBEAT_TTL,
        )
        refused = sorted((answer or {}).get("refused") or []) if isinstance(answer, dict) else []
        if refused != self._refused:
            for line in refused:
                log.warning("app: %s", line)
            self._refused = refused

    async def refresh_dynamic(self) -> bool:
        """Serve the ``app`` resources whose labels match ``app_service.resources``."""
        if not self.selectors:
            return False
        from jumpgate.core.rbac.matching import match_labels

        found: dict[str, ServedApp] = {}
        for res in await self.auth.call("app.resources"):
            labels = (res.get("metadata") or {}).get("labels") or {}
            name = str((res.get("metadata") or {}).get("name", ""))
            if name in self.static or not any(match_labels(s, labels)[0] for s in self.selectors):
                continue
            app = ServedApp.from_resource(res)
            try:
                app.upstream()
            except ValueError as exc:
                log.warning("app: ignoring app resource %s: %s", name, exc)
                continue
            found[name] = app
        before = {n: a for n, a in self.apps.items() if n not in self.static}
        changed = before != found
        if set(before) != set(found):
            log.info("app: dynamic apps now %s", ", ".join(sorted(found)) or "none")
        self.apps = {**self.static, **found}
        return changed

    # ------------------------------------------------------------------ locks
    def _live_sessions(self) -> Iterable[tuple[str, Identity, str, Any]]:
        return [(s.session_id, s.identity, s.app, s) for s in self.state.live.values()]

    def _close_session(self, handle: Any, reason: str) -> None:
        handle.forwarder.close(reason)

    # ------------------------------------------------------------------ audit
    def _record(self, event: str, **fields: Any) -> None:
        self._events.append({"event": event, **fields})
        self._events_ready.set()

    async def _flush_events(self) -> None:
        if not self._events:
            return
        batch, self._events = self._events, []
        try:
            await self.auth.call("audit.emit", events=batch)
        except JumpgateError as exc:
            log.warning("app: could not record %d audit events: %s", len(batch), exc)
            if len(self._events) < 10_000:
                self._events[:0] = batch

    async def _audit_loop(self) -> None:
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            await asyncio.sleep(AUDIT_FLUSH)
            now = time.monotonic()
            for sess in list(self.state.live.values()):
                if sess.unreported and now - sess.last_chunk >= CHUNK_INTERVAL:
                    self._chunk(sess)
            await self._flush_events()

    def _chunk(self, sess: LiveAppSession) -> None:
        self._record(
            "app.session.chunk",
            sid=sess.session_id,
            app_name=sess.app,
            user=sess.identity.username,
            request_count=sess.unreported,
            requests=[
                {"method": m, "path": p, "raw_query": q, "status_code": s}
                for m, p, q, s in sess.recent
            ],
        )
        sess.recent = []
        sess.unreported = 0
        sess.last_chunk = time.monotonic()

    # ------------------------------------------------------------------ sessions
    async def handle_session(
        self, transport: asyncio.Transport, handshake: Any, header: dict[str, Any]
    ) -> None:
        """Serve one session that arrived through a tunnel (one answer line, then HTTP)."""
        from jumpgate.core.db.tunnel import encode_line

        answer, live = await self.authorize(header)
        handshake.write(encode_line(answer))
        if live is None:
            transport.close()
            return
        await self.serve(live, transport, handshake.take_buffer())

    async def authorize(
        self, header: dict[str, Any]
    ) -> tuple[dict[str, Any], LiveAppSession | None]:
        """Ask the auth service about a session header: the answer, and the session if allowed."""
        name = str(header.get("app", ""))
        session_id = str(header.get("session_id", ""))
        app = self.apps.get(name)

        def refuse(status: int, reason: str, hint: str = "") -> tuple[dict[str, Any], None]:
            self.state.sessions_denied += 1
            return {"ok": False, "status": status, "reason": reason, "hint": hint}, None

        if header.get("type") != "session" or app is None:
            return refuse(404, f'application "{name}" is not served by this App Service')
        cert_pem = str(header.get("identity_cert", ""))
        try:
            decision = await self.auth.call(
                "app.session_start",
                identity_cert=cert_pem,
                app=name,
                client_addr=str(header.get("client_addr", "")),
                session_id=session_id,
            )
        except JumpgateError as exc:
            return refuse(502, f"the App Service cannot reach the auth service: {exc.message}")
        if not decision.get("allowed"):
            return refuse(
                403, str(decision.get("reason") or "access denied"), str(decision.get("hint") or "")
            )
        identity = identity_from_certificate(x509.load_pem_x509_certificate(cert_pem.encode()))
        forwarder = self._forwarder(app, header, decision)
        live = LiveAppSession(session_id, identity, name, forwarder, uri=app.uri)

        def on_request(method: str, target: str, status: int) -> None:
            live.unreported += 1
            if len(live.recent) < CHUNK_DETAIL:
                path, _, query = target.partition("?")
                live.recent.append((method, path, query, status))

        forwarder.on_request = on_request
        return {"ok": True}, live

    async def serve(
        self, live: LiveAppSession, transport: asyncio.BaseTransport, initial: bytes
    ) -> None:
        """Forward HTTP on ``transport`` (the tunnel, or the client's own connection in-process)."""
        forwarder = live.forwarder
        key = f"{live.session_id}/{id(forwarder)}"
        self.state.live[key] = live
        self.state.sessions_total += 1
        forwarder.start(transport, initial)
        expiry = _expiry_timer(forwarder, live.identity)
        try:
            await forwarder.wait()
        finally:
            if expiry is not None:
                expiry.cancel()
            self.state.live.pop(key, None)
            if live.unreported:
                self._chunk(live)
            self._record(
                "app.session.end",
                sid=live.session_id,
                app_name=live.app,
                app_uri=live.uri,
                user=live.identity.username,
                requests=forwarder.requests,
                bytes_sent=forwarder.bytes_down,
                bytes_received=forwarder.bytes_up,
                reason=forwarder.close_reason or None,
            )

    def _forwarder(
        self, app: ServedApp, header: dict[str, Any], decision: dict[str, Any]
    ) -> AppSession:
        upstream = app.upstream()
        jwt = str(decision.get("jwt", ""))
        traits = decision.get("traits") or {}
        public = str(header.get("public_addr") or app.public_addr or app.name)
        rewrites = render_headers(app.headers, jwt=jwt, traits=traits)
        names = {n.lower() for n, _ in rewrites}
        client_ip = str(header.get("client_addr", "")).rsplit(":", 1)[0].strip("[]")
        added: list[tuple[str, str]] = []
        if "host" not in names:
            added.append(("Host", upstream.host_header))
        added += [
            ("X-Forwarded-For", client_ip),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", public),
            ("X-Forwarded-Server", self.hostname or self.host_id),
            ("Teleport-Jwt-Assertion", jwt),
        ]
        # every configured rewrite header, rendered or not: one left out because the
        # user lacks its trait must not keep the client's own value (APP-SEC-2)
        configured = {n.lower().encode("latin-1", "replace") for n, _ in app.headers}
        strip = STRIPPED_REQUEST_HEADERS | configured
        return AppSession(
            upstream,
            suffix=request_suffix(added + rewrites),
            strip=frozenset(strip),
            public_origin=f"https://{public}",
        )


def _expiry_timer(forwarder: AppSession, identity: Identity) -> asyncio.TimerHandle | None:
    """Close the session when the user's certificate expires."""
    if identity.expires is None:
        return None
    left = (identity.expires - datetime.now(UTC)).total_seconds()
    loop = asyncio.get_running_loop()
    return loop.call_later(max(0.0, left), forwarder.close, "the certificate expired")


def identity_path(data_dir: Path) -> Path:
    """Where an App Service agent keeps its host identity."""
    return data_dir / "proc" / "app.pem"
