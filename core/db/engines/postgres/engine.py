"""The PostgreSQL engine of the Database Service agent.

Per session: decode the client's ``StartupMessage``; ask the auth service for a
decision (RBAC on the database user and name the client actually sent, locks,
certificate checks) and a short-lived ``db_client`` certificate; connect to
PostgreSQL with mutual TLS; watch the server's start-up to learn the backend
key (for cancels) and spot refusals; then relay bytes. Queries are audited from
a tap beside the relay: a framing scanner that copies only Query/Parse payloads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jumpgate.core.aio import spawn
from jumpgate.core.auth.client import split_hostport
from jumpgate.core.db.engines import register_engine
from jumpgate.core.db.engines.postgres.protocol import (
    BackendStartupScanner,
    FrontendScanner,
    ProtocolError,
    StartupMessage,
    error_response,
    parse_startup_packet,
    parse_statement,
    query_text,
)
from jumpgate.core.db.engines.postgres.upstream import (
    client_tls_context,
    connect_upstream,
    send_cancel,
)
from jumpgate.core.db.tunnel import encode_line
from jumpgate.core.errors import JumpgateError
from jumpgate.core.relay import Relay
from jumpgate.core.tlsca import generate_private_key, private_key_to_pem, public_key_to_pem

if TYPE_CHECKING:
    from jumpgate.core.config.services import Database as DatabaseConfig
    from jumpgate.core.db.service import DatabaseService
    from jumpgate.core.relay import Handshake

log = logging.getLogger(__name__)

#: Audit events are sent to the auth service in batches at most this often.
AUDIT_FLUSH = 0.5


class QueryAuditor:
    """Collects ``db.session.query`` events from the relay tap and ships them in batches."""

    def __init__(self, service: DatabaseService, base: dict[str, Any]) -> None:
        self.service = service
        self.base = base
        self.scanner = FrontendScanner(b"QP")
        self.pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.failed = False

    def tap(self, data: bytes) -> None:
        """Called by the relay with client→server bytes (already forwarded)."""
        if self.failed:
            return
        try:
            messages = self.scanner.feed(data)
        except ProtocolError:
            self.failed = True  # stop auditing a stream we cannot frame; the relay goes on
            log.warning(
                "postgres: could not frame client messages for audit in session %s",
                self.base["sid"],
            )
            return
        for kind, payload in messages:
            if kind == b"Q":
                self.pending.append(
                    {"event": "db.session.query", "db_query": query_text(payload), **self.base}
                )
            elif kind == b"P":
                name, query = parse_statement(payload)
                self.pending.append(
                    {
                        "event": "db.session.query",
                        "db_query": query,
                        "statement_name": name,
                        **self.base,
                    }
                )
        if self.pending and self._task is None:
            self._task = spawn(self._flush_later(), name="pg-audit")

    async def _flush_later(self) -> None:
        await asyncio.sleep(AUDIT_FLUSH)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Send what is pending."""
        batch, self.pending = self.pending, []
        if batch:
            try:
                await self.service.auth.call("audit.emit", events=batch)
            except JumpgateError as exc:
                log.error("postgres: lost %d query audit events: %s", len(batch), exc)


class PostgresEngine:
    """Serves PostgreSQL (and CockroachDB, which speaks its protocol) sessions."""

    async def serve(
        self,
        service: DatabaseService,
        db: DatabaseConfig | None,
        transport: asyncio.Transport,
        hs: Handshake,
        header: dict[str, Any],
    ) -> None:
        if header.get("type") == "cancel":
            transport.close()
            if db is not None:
                await self._cancel(
                    service, db, int(header.get("pid", 0)), int(header.get("secret", 0))
                )
            return
        try:
            await self._session(service, db, transport, hs, header)
        finally:
            if not transport.is_closing():
                transport.close()

    def _refuse(
        self,
        hs: Handshake,
        message: str,
        *,
        hint: str | None = None,
        code: str = "28000",
        raw: bytes = b"",
    ) -> None:
        hs.write(encode_line({"ok": False}))
        hs.write(raw or error_response(message, code=code, hint=hint))
        if hs.transport is not None:
            hs.transport.close()

    async def _cancel(
        self, service: DatabaseService, db: DatabaseConfig, pid: int, secret: int
    ) -> None:
        host, port = split_hostport(db.uri, 5432)
        # verify the server as for sessions, so the cancel secret only goes to the real database
        ca_pem = (
            Path(db.tls.ca_cert_file).read_bytes() if db.tls.ca_cert_file else service.db_ca_pem
        )
        ctx = client_tls_context(
            mode=db.tls.mode,
            ca_pem=ca_pem or None,
            trust_system=bool(db.tls.trust_system_cert_pool),
            cert_pem=None,
            key_pem=None,
        )
        try:
            await send_cancel(
                host,
                port,
                ssl_context=ctx,
                server_hostname=db.tls.server_name or host,
                pid=pid,
                secret=secret,
            )
        except (JumpgateError, OSError) as exc:
            log.warning("postgres: cancel request to %s failed: %s", db.uri, exc)

    async def _session(
        self,
        service: DatabaseService,
        db: DatabaseConfig | None,
        transport: asyncio.Transport,
        hs: Handshake,
        header: dict[str, Any],
    ) -> None:
        service.state.sessions_total += 1
        name = str(header.get("db", ""))
        if db is None:
            self._refuse(hs, f'database "{name}" is not served by this Database Service')
            return
        try:
            startup, _ = parse_startup_packet(base64.b64decode(str(header.get("startup", ""))))
        except (ProtocolError, ValueError) as exc:
            self._refuse(hs, f"malformed start-up message: {exc}", code="08P01")
            return
        if not isinstance(startup, StartupMessage):
            self._refuse(hs, "expected a start-up message", code="08P01")
            return
        db_user, db_name = startup.user, startup.database
        session_id = str(header.get("session_id", ""))
        base = {
            "sid": session_id,
            "db_service": name,
            "db_protocol": db.protocol,
            "db_uri": db.uri,
            "db_user": db_user,
            "db_name": db_name,
            "addr": str(header.get("client_addr", "")),
        }
        key = generate_private_key()
        try:
            decision = await service.auth.call(
                "db.session_start",
                identity_cert=header.get("identity_cert", ""),
                db=name,
                db_user=db_user,
                db_name=db_name,
                client_addr=base["addr"],
                session_id=session_id,
                public_key=public_key_to_pem(key.public_key()).decode(),
            )
        except JumpgateError as exc:
            self._refuse(hs, f"Jumpgate cannot check access right now: {exc}", code="08006")
            return
        if not decision.get("allowed"):
            service.state.sessions_denied += 1
            self._refuse(
                hs, decision.get("reason") or "access denied", hint=decision.get("hint") or None
            )
            return
        user = str(decision.get("user", ""))
        base["user"] = user
        ca_pem: bytes | None = decision["db_ca"].encode()
        service.db_ca_pem = decision["db_ca"].encode()
        if name in service.inline_ca:
            ca_pem = service.inline_ca[name]
        elif db.tls.ca_cert_file:
            try:
                ca_pem = Path(db.tls.ca_cert_file).read_bytes()
            except OSError as exc:
                self._refuse(
                    hs, f"the Database Service cannot read tls.ca_cert_file: {exc}", code="08006"
                )
                return
        host, port = split_hostport(db.uri, 5432)
        try:
            ctx = client_tls_context(
                mode=db.tls.mode,
                ca_pem=ca_pem,
                trust_system=bool(db.tls.trust_system_cert_pool),
                cert_pem=decision["cert"].encode(),
                key_pem=private_key_to_pem(key),
            )
            up_transport, up_hs, leftover = await connect_upstream(
                host,
                port,
                ssl_context=ctx,
                server_hostname=db.tls.server_name or host,
                startup=startup.raw,
            )
        except (JumpgateError, OSError, TimeoutError) as exc:
            msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            await self._audit(
                service,
                [
                    {
                        "event": "db.session.start",
                        "success": False,
                        "error": f"connect: {msg}",
                        **base,
                    }
                ],
            )
            self._refuse(
                hs, f'cannot connect to database "{name}" at {db.uri}: {msg}', code="08001"
            )
            return
        scanner = BackendStartupScanner()
        first = bytearray(leftover)
        try:
            done = scanner.feed(leftover)
            while not done:
                if scanner.auth_requests:
                    raise ProtocolError(
                        f"PostgreSQL asked for a password (authentication request {scanner.auth_requests[0]}); "
                        "its pg_hba.conf must use certificate authentication for Jumpgate"
                    )
                chunk = await asyncio.wait_for(up_hs.read_some(), 15)
                first += chunk
                done = scanner.feed(chunk)
        except (ProtocolError, JumpgateError, OSError, TimeoutError) as exc:
            up_transport.close()
            msg = getattr(exc, "message", None) or str(exc) or "timed out"
            await self._audit(
                service, [{"event": "db.session.start", "success": False, "error": msg, **base}]
            )
            self._refuse(
                hs,
                f'database "{name}" refused the session: {msg}',
                hint="check pg_hba.conf: hostssl all all ::/0 cert",
                code="08001",
            )
            return
        if scanner.error is not None:
            up_transport.close()
            await self._audit(
                service,
                [
                    {
                        "event": "db.session.start",
                        "success": False,
                        "error": scanner.error.get("M", ""),
                        **base,
                    }
                ],
            )
            self._refuse(hs, "", raw=bytes(first))
            return
        hs.write(encode_line({"ok": True, "backend_key": list(scanner.backend_key or (0, 0))}))
        hs.write(bytes(first))
        auditor = QueryAuditor(
            service, {k: base[k] for k in ("sid", "db_service", "db_user", "db_name", "user")}
        )
        relay = Relay.between(hs, up_hs, on_a_data=auditor.tap)
        from jumpgate.core.db.service import LiveSession
        from jumpgate.core.tlsca import Identity

        ident = _identity_from_pem(str(header.get("identity_cert", ""))) or Identity(username=user)
        live = LiveSession(session_id, ident, name, db_user, db_name)
        reason: list[str] = []

        def cut(why: str = "") -> None:
            reason.append(why)
            relay.abort()

        live.close = cut
        service.state.live[session_id] = live
        started = time.monotonic()
        try:
            await relay.wait()
        finally:
            service.state.live.pop(session_id, None)
            await auditor.flush()
            await self._audit(
                service,
                [
                    {
                        "event": "db.session.end",
                        **base,
                        "bytes_in": relay.bytes_a_to_b,
                        "bytes_out": relay.bytes_b_to_a,
                        "duration_ms": int((time.monotonic() - started) * 1000),
                        "reason": reason[0] if reason else "",
                    }
                ],
            )

    async def _audit(self, service: DatabaseService, events: list[dict[str, Any]]) -> None:
        try:
            await service.auth.call("audit.emit", events=events)
        except JumpgateError as exc:
            log.error("postgres: could not record %d audit event(s): %s", len(events), exc)


def _identity_from_pem(pem: str) -> Any:
    from cryptography import x509

    from jumpgate.core.tlsca import identity_from_certificate

    try:
        return identity_from_certificate(x509.load_pem_x509_certificate(pem.encode()))
    except (ValueError, JumpgateError):
        return None


_ENGINE = PostgresEngine()
register_engine("postgres", _ENGINE)
register_engine("cockroachdb", _ENGINE)
