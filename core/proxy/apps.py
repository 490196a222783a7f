"""The proxy's side of application access: ``<app>.<public host>`` on the web port.

The TLS router sends connections whose SNI names an app (a subdomain of the
proxy's public host, or an app's own ``public_addr``) here instead of to the web
API. For each connection the frontend reads the first request head (without
consuming it) and checks the client certificate: issued by the user CA, not
expired, routed to this app. Without a valid certificate a browser
is redirected to ``/web/login`` on the proxy — browsers and scripted clients
alike, as Teleport's Machine ID guide says ("scripted clients will be redirected to
the Teleport login page"), with the reason in the body — while an API client that
asks for JSON (``Accept: application/json`` without ``text/html``) gets ``401``
with a JSON error. With one, the frontend opens a reverse
tunnel to an App Service serving the app, passes the certificate in the
session header, reads the agent's one-line answer (RBAC and locks are decided
by the auth service, through the agent), and then relays bytes: the agent
parses and forwards HTTP, the proxy copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jumpgate.core.aio import spawn
from jumpgate.core.app.http1 import MAX_HEAD, Head, HTTPError, head_end, parse_request_head
from jumpgate.core.app.http1 import simple_response as _response
from jumpgate.core.db.tunnel import TunnelRegistry, read_json_line
from jumpgate.core.errors import JumpgateError
from jumpgate.core.relay import Handshake, Relay
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)

#: Browser sign-in endpoints on every app host (handled here, never forwarded).
AUTH_PATH = "/x-teleport-auth"
LOGOUT_PATH = "/x-teleport-logout"
APP_COOKIE_BYTES = b"__Host-grv_app_session"
#: How long a client has to send its first request head.
FIRST_REQUEST_TIMEOUT = 30.0
#: How long the app catalogue (heartbeats) is reused before it is read again.
CATALOGUE_TTL = 1.0
#: A connection for a host the catalogue does not know re-reads it, at most this often.
UNKNOWN_HOST_REFRESH = 0.25
#: ... and waits at most this long for that read before its handshake goes on without it.
UNKNOWN_HOST_WAIT = 1.0


class _Unauthenticated(Exception):
    """No usable certificate for this app: redirect a browser, 401 an API client."""


def _head_parser(data: bytes) -> tuple[Head | None, int]:
    """For :meth:`Handshake.read_until_packet`: the first head, consuming nothing."""
    end = head_end(data)
    if end < 0:
        if len(data) > MAX_HEAD:
            raise HTTPError(431, "the request head is too large")
        return None, 0
    return parse_request_head(data[:end]), 0


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve a finished future's exception (logged where it is awaited, not here)."""
    if not fut.cancelled():
        fut.exception()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def wants_html(head: Head) -> bool:
    """A browser navigation (``Accept`` lists text/html)."""
    accept = (head.get(b"accept") or b"").lower()
    return b"text/html" in accept


def wants_json(head: Head) -> bool:
    """An API client that asks for JSON and not for a page (gets 401, not a redirect)."""
    accept = (head.get(b"accept") or b"").lower()
    return b"application/json" in accept and b"text/html" not in accept


class AppFrontend:
    """Serves application hosts on the proxy's web port."""

    def __init__(
        self,
        *,
        auth: Any,
        registry: TunnelRegistry,
        public_addr: str,
        public_host: str,
        user_ca_subjects: Callable[[], set[bytes]],
    ) -> None:
        self.auth = auth
        self.registry = registry
        self.public_addr = public_addr
        self.public_host = public_host.lower()
        self.user_ca_subjects = user_ca_subjects
        #: app public address (host, lower case) → app name, for custom public_addr values
        self.public_addrs: dict[str, str] = {}
        #: names of the apps in the catalogue (only these get a minted certificate)
        self.app_names: set[str] = set()
        self._catalogue: list[Any] = []
        #: when the last read ended (successful or not): reads are at most this frequent
        self._catalogue_at = float("-inf")
        #: when the last successful read began: what it holds is at least that recent
        self._catalogue_from = float("-inf")
        self._catalogue_lock = asyncio.Lock()
        #: when an ``app_server`` last changed (heartbeat, expiry), per the backend's watch
        self._changed_at = float("-inf")
        #: that watch (None before :meth:`start` or while it is being set up again)
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        #: App Services running in this process (host id → service): served without a tunnel
        self.local_agents: dict[str, Any] = {}
        self.sessions_started = 0
        #: live connections of browser (cookie) sessions: app session id → closers
        self.browser_conns: dict[str, set[Callable[[str], None]]] = {}

    # ------------------------------------------------------------------ hosts
    def app_name_for(self, server_name: str) -> str:
        """The app a host name (SNI or Host) addresses, or ``""``."""
        host = server_name.lower().rstrip(".")
        if not host:
            return ""
        # <name>.<public host> always names the app <name>: no public_addr can take it
        suffix = "." + self.public_host
        if self.public_host and host.endswith(suffix):
            label = host[: -len(suffix)]
            if label and "." not in label:
                return label
        return self.public_addrs.get(host, "")

    def public_origin_host(self, server_name: str) -> str:
        """``host:port`` of the app's public origin: the SNI (an app host, by routing) and
        the proxy's port. Never the client's ``Host`` header, which it chooses freely."""
        host, addr = server_name.lower().rstrip("."), self.public_addr
        if addr.startswith("["):
            port = addr.rsplit("]:", 1)[1] if "]:" in addr else ""
        else:
            port = addr.rsplit(":", 1)[1] if addr.count(":") == 1 else ""
        return f"{host}:{port}" if port else host

    def _subdomain_or_self(self, host: str) -> bool:
        """``host`` is the proxy's public host or a ``<label>.<public host>`` app name."""
        ph = self.public_host
        return bool(ph) and (
            host == ph or (host.endswith("." + ph) and "." not in host[: -len(ph) - 1])
        )

    def serves(self, *, name: str) -> bool:
        """Whether host ``name`` addresses an app of the live catalogue (not just any label)."""
        app = self.app_name_for(name)
        return bool(app) and app in self.app_names

    def is_app_host(self, server_name: str) -> bool:
        """Whether connections with this SNI are for an app (not the web API)."""
        return bool(self.app_name_for(server_name))

    async def refresh_for(self, server_name: str) -> None:
        """Re-read the catalogue before a handshake for a host it does not know yet.

        An app registered since the last read then gets its own certificate (and its
        route) on its very first connection, not after the next periodic refresh. The
        read is shared by concurrent callers and happens at most every
        :data:`UNKNOWN_HOST_REFRESH` seconds (a failed one too), so a client sending
        random names costs a few catalogue reads a second at most; a handshake waits
        for it at most :data:`UNKNOWN_HOST_WAIT` seconds. Nothing here fails a
        connection: on a slow or failed read it goes on with what is known.
        """
        host = server_name.lower().rstrip(".")
        if not host or host in (self.public_host, "localhost") or _is_ip(host):
            return
        if self.serves(name=host):
            return
        if self._watcher is not None:
            # following the heartbeats: read only when one changed since the last read
            # began (then at once, so no just-registered app is missed); an unknown name
            # with nothing changed costs no read at all
            if not self._changed_since_read():
                return
            max_age = 0.0
        else:
            max_age = UNKNOWN_HOST_REFRESH
        read = asyncio.ensure_future(self.catalogue(max_age=max_age))
        try:
            await asyncio.wait_for(asyncio.shield(read), UNKNOWN_HOST_WAIT)
        # debug only: any client can send unknown names (the periodic read warns instead)
        except TimeoutError:
            log.debug("apps: the app catalogue read is slow; %s goes on without it", host)
            read.add_done_callback(_consume)
        except Exception as exc:  # the store failed: the handshake goes on regardless
            log.debug("apps: reading the app catalogue for %s failed: %s", host, exc)

    def _changed_since_read(self) -> bool:
        """Whether an ``app_server`` changed after the last successful read began
        (other processes' commits included: they are caught up first)."""
        watcher = self._watcher
        if watcher is None or watcher.closed:
            return True  # not watching (or the watch just failed): assume a change
        try:
            self.auth.store.backend.catch_up()
            if watcher.drain():
                self._changed_at = time.monotonic()
        except Exception:  # a failed watch: assume a change (the follow task starts anew)
            return True
        return self._changed_at >= self._catalogue_from

    async def _follow_heartbeats(self) -> None:
        """Note when any ``app_server`` changes (the watch behind :meth:`refresh_for`)."""
        from jumpgate.core.auth.store import PREFIXES

        while True:
            try:
                async with self.auth.store.backend.watch([PREFIXES["app_server"]]) as watcher:
                    self._changed_at = time.monotonic()  # anything may have changed
                    self._watcher = watcher
                    async for _ in watcher:
                        self._changed_at = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # overflow or a backend hiccup: watch again
                log.debug("apps: the app_server watch ended (%s); watching again", exc)
            self._watcher = None
            self._changed_at = time.monotonic()
            await asyncio.sleep(0.5)

    async def catalogue(self, *, max_age: float = CATALOGUE_TTL) -> list[Any]:
        """Live ``app_server`` heartbeats, read again when the last read is older than
        ``max_age`` seconds. Concurrent callers share one read: a caller that waited
        while another read ran takes that read's result."""
        if time.monotonic() - self._catalogue_at <= max_age:
            return self._catalogue
        waiting_since = time.monotonic()
        async with self._catalogue_lock:
            if (
                self._catalogue_from >= waiting_since
                or time.monotonic() - self._catalogue_at <= max_age
            ):
                return self._catalogue  # read (or failed) while this caller waited
            begun = time.monotonic()
            try:
                await self._read_catalogue()
                self._catalogue_from = begun
            finally:
                self._catalogue_at = time.monotonic()
        return self._catalogue

    async def _read_catalogue(self) -> None:
        from jumpgate.core.app.auth import addr_host, app_servers

        catalogue = await app_servers(self.auth)
        addrs: dict[str, str] = {}
        ambiguous: set[str] = set()
        for srv in catalogue:
            name = srv.spec.app.metadata.name
            host = addr_host(srv.spec.app.spec.public_addr or "")
            if not host or self._subdomain_or_self(host):
                continue  # routed by name; never the proxy's own host
            if addrs.setdefault(host, name) != name:
                ambiguous.add(host)  # two apps claim it: route it to neither
        for host in ambiguous:
            log.warning("apps: several apps claim the public address %s; not routed", host)
            addrs.pop(host, None)
        self._catalogue = catalogue
        self.public_addrs = addrs
        self.app_names = {srv.spec.app.metadata.name for srv in catalogue}

    def start(self) -> None:
        """Keep the custom public addresses fresh (they decide routing by SNI)."""

        async def loop() -> None:
            while True:
                try:
                    await self.catalogue()
                except Exception as exc:  # the loop outlives a failing store
                    log.warning("apps: reading the app catalogue failed: %s", exc)
                await asyncio.sleep(2.0)

        self._refresh_task = spawn(loop(), name="proxy-apps-refresh")
        self._watch_task = spawn(self._follow_heartbeats(), name="proxy-apps-watch")

    async def close(self) -> None:
        """Stop the refresh loop and the heartbeat watch."""
        from jumpgate.core.aio import cancel_and_wait

        await cancel_and_wait(self._refresh_task)
        await cancel_and_wait(self._watch_task)
        self._watcher = None

    # ------------------------------------------------------------------ connections
    def protocol_factory(self, server_name: str) -> Callable[[], Handshake]:
        """A protocol factory for one connection whose SNI is ``server_name``."""

        def factory() -> Handshake:
            hs = Handshake(max_buffer=MAX_HEAD + 1)
            spawn(self._serve(hs, server_name), name="app-frontend")
            return hs

        return factory

    async def _serve(self, hs: Handshake, server_name: str) -> None:
        try:
            await self._serve_inner(hs, server_name)
        except HTTPError as exc:
            self._reply(hs, exc.status, exc.message, None)
        except (JumpgateError, ConnectionError, OSError, TimeoutError) as exc:
            log.debug("apps: connection ended early: %s", exc)
            self._close(hs)
        except Exception:
            log.exception("apps: unexpected error")
            self._close(hs)

    async def _serve_inner(self, hs: Handshake, server_name: str) -> None:
        head = await asyncio.wait_for(hs.read_until_packet(_head_parser), FIRST_REQUEST_TIMEOUT)
        assert hs.transport is not None
        app = self.app_name_for(server_name)  # by SNI only, as routing is
        client_addr = _peer_addr(hs.transport)
        path = head.target.split("?", 1)[0]
        if app and path in (AUTH_PATH, LOGOUT_PATH):
            await self._browser_endpoint(hs, head, app, path, client_addr)
            return
        browser_sid = ""  # set for sessions of an app cookie (sign-out closes them)
        try:
            try:
                identity, cert_pem = self._identity(hs.transport, app)
            except _Unauthenticated:
                if _has_client_cert(hs.transport) or not _app_cookie(head):
                    raise
                identity, cert_pem = await self._cookie_identity(head, app)
                browser_sid = identity.route_to_app.session_id if identity.route_to_app else ""
        except _Unauthenticated as exc:
            self._audit_refusal(app, client_addr, str(exc), None)
            self._unauthenticated(hs, head, server_name, str(exc), clear=bool(_app_cookie(head)))
            return
        servers = [s for s in await self.catalogue() if s.spec.app.metadata.name == app]
        if not servers:
            self._reply(
                hs,
                404,
                f'application "{app}" is not available: no App Service serving it is connected',
                head,
                hint="tsh apps ls shows the applications that are online",
            )
            return
        public = self.public_origin_host(server_name)
        route = identity.route_to_app
        header = {
            "type": "session",
            "kind": "app",
            "app": app,
            "session_id": (route.session_id if route else "") or str(uuid.uuid4()),
            "client_addr": client_addr,
            "identity_cert": cert_pem,
            "public_addr": public,
        }
        hosts = [s.spec.host_id for s in servers]
        random.shuffle(hosts)
        hosts.sort(key=lambda h: not self.registry.is_connected(h, service="app"))
        last_error = ""
        hosts.sort(key=lambda h: h not in self.local_agents)
        for host_id in hosts:
            local = self.local_agents.get(host_id)
            if local is not None:
                # same process: the agent forwards on the client's connection itself
                answer, live = await local.authorize(header)
                if live is None:
                    self._reply(
                        hs,
                        int(answer.get("status") or 403),
                        str(answer.get("reason")),
                        head,
                        hint=str(answer.get("hint") or "") or None,
                    )
                    return
                self.sessions_started += 1
                with self._tracked(browser_sid, live.forwarder.close):
                    await local.serve(live, hs.transport, hs.take_buffer())
                return
            try:
                _, agent = await self.registry.open(host_id, header, service="app")
                answer = await asyncio.wait_for(read_json_line(agent), 30.0)
            except (JumpgateError, OSError, TimeoutError) as exc:
                last_error = getattr(exc, "message", "") or str(exc) or type(exc).__name__
                continue
            if not answer.get("ok"):
                if agent.transport is not None:
                    agent.transport.close()
                status = int(answer.get("status") or 403)
                self._reply(
                    hs,
                    status,
                    str(answer.get("reason") or "access denied"),
                    head,
                    hint=str(answer.get("hint") or "") or None,
                )
                return
            self.sessions_started += 1
            relay = Relay.between(hs, agent)
            with self._tracked(browser_sid, _closer(relay)):
                await relay.wait()
            return
        self._reply(hs, 502, f'application "{app}" is not reachable: {last_error}', head)

    # ------------------------------------------------------------------ checks
    def _identity(self, transport: asyncio.BaseTransport, app: str) -> tuple[Identity, str]:
        ssl_obj = transport.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        if not der:
            raise _Unauthenticated("no client certificate was presented")
        cert = x509.load_der_x509_certificate(der)
        if cert.issuer.public_bytes() not in self.user_ca_subjects():
            raise _Unauthenticated(
                "the client certificate is not a user certificate of this cluster"
            )
        now = datetime.now(UTC)
        if cert.not_valid_after_utc <= now:
            raise _Unauthenticated(
                f"the client certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        try:
            identity = identity_from_certificate(cert)
        except JumpgateError as exc:
            raise _Unauthenticated(f"the client certificate is unusable: {exc.message}") from None
        route = identity.route_to_app
        if route is None:
            raise _Unauthenticated("the client certificate is not for application access")
        if route.name != app:
            raise _Unauthenticated(
                f'the client certificate is for application "{route.name}", not "{app}"'
            )
        return identity, cert.public_bytes(Encoding.PEM).decode()

    def _audit_refusal(self, app: str, addr: str, reason: str, identity: Identity | None) -> None:
        audit = getattr(self.auth, "audit", None)
        if audit is not None:
            audit.emit(
                "app.session.start",
                success=False,
                app_name=app,
                addr=addr,
                user=identity.username if identity else None,
                error=reason,
            )

    # ------------------------------------------------------------------ answers
    def login_url(self, redirect: str) -> str:
        """``https://<proxy>/web/login?redirect=…``."""
        return f"https://{self.public_addr}/web/login?redirect={quote(redirect, safe='')}"

    def _unauthenticated(
        self,
        hs: Handshake,
        head: Head,
        server_name: str,
        reason: str,
        *,
        clear: bool = False,
    ) -> None:
        host = self.public_origin_host(server_name)
        hint = (
            "use the certificate from 'tsh apps login' or a tbot application output "
            "(curl --cert tlscert --key key)"
        )
        if not wants_json(head):
            target = self.login_url(f"https://{host}{head.target}")
            if wants_html(head):
                body = (
                    f'<!doctype html><title>Sign in</title><p>Redirecting to <a href="'
                    f'{escape(target)}">the login page</a>.</p>\n'
                ).encode()
                ctype = "text/html; charset=utf-8"
            else:  # a scripted client: say why, in the body it prints
                body = (
                    f"Redirecting to the login page {target}: this application needs a valid "
                    f"certificate: {reason}; {hint}\n"
                ).encode()
                ctype = "text/plain; charset=utf-8"
            headers = [("Location", target)]
            if clear:  # a stale app cookie: forget it
                from jumpgate.core.proxy.websession import APP_COOKIE, clear_cookie

                headers.append(("Set-Cookie", clear_cookie(APP_COOKIE)))
            self._write(hs, _response(302, body, content_type=ctype, headers=headers))
            return
        self._reply(
            hs,
            401,
            f"this application needs a valid certificate: {reason}",
            head,
            hint=hint,
            login_url=self.login_url(f"https://{host}{head.target}"),
        )

    def _reply(
        self,
        hs: Handshake,
        status: int,
        message: str,
        head: Head | None,
        *,
        hint: str | None = None,
        login_url: str = "",
    ) -> None:
        if head is not None and wants_html(head):
            text = f"<!doctype html><title>{status}</title><h1>{escape(message)}</h1>"
            if hint:
                text += f"<p>{escape(hint)}</p>"
            data = _response(status, text.encode(), content_type="text/html; charset=utf-8")
        else:
            err: dict[str, Any] = {"message": message}
            if hint:
                err["hint"] = hint
            if login_url:
                err["login_url"] = login_url
            data = _response(
                status, json.dumps({"error": err}).encode() + b"\n", content_type="application/json"
            )
        self._write(hs, data)

    # ------------------------------------------------------------------ browser sessions
    @contextlib.contextmanager
    def _tracked(self, sid: str, close: Callable[[str], None]) -> Iterator[None]:
        """Remember a live connection of app session ``sid`` so sign-out can close it."""
        if not sid:
            yield
            return
        closers = self.browser_conns.setdefault(sid, set())
        closers.add(close)
        try:
            yield
        finally:
            closers.discard(close)
            if not closers:
                self.browser_conns.pop(sid, None)

    def close_browser_sessions(self, session_ids: list[str], reason: str) -> int:
        """Close the live connections of these app sessions (after sign-out); returns how many."""
        n = 0
        for sid in session_ids:
            for close in list(self.browser_conns.get(sid, ())):
                close(reason)
                n += 1
        return n

    async def _cookie_identity(self, head: Head, app: str) -> tuple[Identity, str]:
        """The identity an app session cookie stands for (its stored certificate)."""
        from jumpgate.core.proxy import websession

        session = await websession.get_app_session(self.auth, _app_cookie(head))
        if session is None:
            raise _Unauthenticated("the browser session is not valid or has expired; sign in again")
        if session.app != app:
            raise _Unauthenticated(f'the browser session is for application "{session.app}"')
        cert = x509.load_pem_x509_certificate(session.cert_pem.encode())
        if cert.not_valid_after_utc <= datetime.now(UTC):
            raise _Unauthenticated("the browser session has expired; sign in again")
        return identity_from_certificate(cert), session.cert_pem

    async def _browser_endpoint(
        self, hs: Handshake, head: Head, app: str, path: str, client_addr: str
    ) -> None:
        """``/x-teleport-auth`` and ``/x-teleport-logout`` (see :mod:`.app_browser`)."""
        from jumpgate.core.proxy.app_browser import browser_endpoint

        await browser_endpoint(self, hs, head, app, path, client_addr)

    @staticmethod
    def _write(hs: Handshake, data: bytes) -> None:
        t = hs.transport
        if t is not None and not t.is_closing():
            t.write(data)
            t.close()

    @staticmethod
    def _close(hs: Handshake) -> None:
        t = hs.transport
        if t is not None and not t.is_closing():
            t.close()


def _closer(relay: Relay) -> Callable[[str], None]:
    return lambda _reason: relay.close()


def _has_client_cert(transport: asyncio.BaseTransport) -> bool:
    ssl_obj = transport.get_extra_info("ssl_object")
    return bool(ssl_obj is not None and ssl_obj.getpeercert(binary_form=True))


def _app_cookie(head: Head) -> str:
    """The app session cookie of a request head ("" without one)."""
    raw = head.get(b"cookie")
    if not raw or APP_COOKIE_BYTES not in raw:
        return ""
    from jumpgate.core.proxy.websession import APP_COOKIE, parse_cookies

    return parse_cookies(raw.decode("latin-1")).get(APP_COOKIE, "")


def _peer_addr(transport: asyncio.BaseTransport) -> str:
    peer: Any = transport.get_extra_info("peername")
    if not peer:
        return ""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
