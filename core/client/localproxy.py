"""The local proxy of ``tsh proxy db``, ``tsh db connect`` and tbot tunnels.

It listens on a loopback port and, for every accepted connection, opens TLS to
the proxy's web port (ALPN ``teleport-postgres``, SNI = the proxy host, the
proxy verified against the cluster's host CA) and relays bytes both ways. It
never parses the database protocol; it only *writes* one PostgreSQL
``ErrorResponse`` itself when it cannot open the upstream connection, so the
client shows a useful message instead of "server closed the connection".

Two modes (docs/design/db-access.md):

* ``tls`` (no ``client_cert_provider``): the outer TLS carries no client
  certificate; psql's own TLS (with the database certificate) runs inside it.
* ``tunnel``: the outer TLS presents the database certificate from
  ``client_cert_provider()``, called for every new connection (in a worker
  thread, it may renew) so renewed certificates apply without dropping live
  connections.

Bytes are copied by :class:`jumpgate.core.relay.Relay` (asyncio Protocols with
flow control); a :class:`~jumpgate.core.relay.Handshake` holds what the client
sends while the upstream connection opens. A status file
(``status_dir/<pid>-<port>.json``) is rewritten atomically about once a second
while the proxy runs and removed on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jumpgate.core.aio import cancel_and_wait, install_event_loop_policy, spawn
from jumpgate.core.db.engines.postgres.protocol import error_response
from jumpgate.core.errors import BadParameter, ConnectionProblem
from jumpgate.core.fsutil import atomic_write
from jumpgate.core.relay import Handshake, Relay
from jumpgate.core.tlsutil import load_cert_chain_from_memory

log = logging.getLogger(__name__)

#: ``() -> (cert_pem, key_pem)`` for tunnel mode.
CertProvider = Callable[[], tuple[bytes, bytes]]

#: PostgreSQL CancelRequest code (first message of a cancel connection).
_CANCEL_REQUEST_CODE = 80877102
#: How long to wait for the client's first bytes before answering a failure anyway.
_FAIL_WAIT = 2.0


_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH.
_HOSTNAME_MISMATCH = 62


def pg_error_response(message: str, *, code: str = "08006") -> bytes:
    """A FATAL PostgreSQL ``ErrorResponse`` (SQLSTATE 08006, connection failure by default)."""
    return error_response(message, code=code)


def _is_cancel_request(data: bytes) -> bool:
    return len(data) >= 8 and struct.unpack("!II", data[:8]) == (16, _CANCEL_REQUEST_CODE)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Refused(Exception):
    """The upstream connection cannot be opened; the message goes to the client."""


@dataclass
class LocalProxyStats:
    """Counters: ``bytes_in`` came from the proxy to clients, ``bytes_out`` went to the proxy."""

    connections_live: int = 0
    connections_total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    last_error: str = ""


class LocalProxy:
    """Listen on loopback and relay every connection through TLS to the proxy."""

    def __init__(
        self,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        proxy_addr: str,
        sni: str,
        alpn: list[str] | None = None,
        ca_pem: bytes | None,
        client_cert_provider: CertProvider | None = None,
        target: str = "",
        protocol: str = "postgres",
        status_dir: Path | None = None,
        insecure: bool = False,
        connect_timeout: float = 15.0,
        expired_hint: str = "run tsh db login",
    ) -> None:
        from jumpgate.core.client.profile import normalize_proxy_addr

        self.listen_host = listen_host
        self.listen_port = listen_port
        self._last_status = ""
        self.proxy_addr = proxy_addr
        self.proxy_host, self.proxy_port = normalize_proxy_addr(proxy_addr)
        self.sni = sni
        self.alpn = list(alpn) if alpn else ["teleport-postgres"]
        self.ca_pem = ca_pem
        self.client_cert_provider = client_cert_provider
        self.target = target
        self.protocol = protocol
        self.status_dir = Path(status_dir) if status_dir is not None else None
        self.insecure = insecure
        self.connect_timeout = connect_timeout
        self.expired_hint = expired_hint
        self._stats = LocalProxyStats()
        #: bytes of connections already closed (live ones are read from their relays)
        self._done_in = self._done_out = 0
        self.started: datetime | None = None
        self.address: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._relays: set[Relay] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._base_ctx: ssl.SSLContext | None = None
        self._cert_ctx: tuple[bytes, bytes, ssl.SSLContext] | None = None

    @property
    def stats(self) -> LocalProxyStats:
        """Counters, with the bytes of live connections up to date."""
        st = self._stats
        st.bytes_in = self._done_in + sum(r.bytes_b_to_a for r in self._relays)
        st.bytes_out = self._done_out + sum(r.bytes_a_to_b for r in self._relays)
        return st

    @property
    def mode(self) -> str:
        """``tunnel`` when a client certificate is presented to the proxy, else ``tls``."""
        return "tunnel" if self.client_cert_provider is not None else "tls"

    @property
    def status_path(self) -> Path | None:
        """``status_dir/<pid>-<port>.json`` once started."""
        if self.status_dir is None or self.address is None:
            return None
        return self.status_dir / f"{os.getpid()}-{self.address[1]}.json"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        """Bind the listener; returns (host, port)."""
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._server = await loop.create_server(self._accept, self.listen_host, self.listen_port)
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self.started = datetime.now(UTC)
        if self.status_dir is not None:
            self._write_status()
            self._status_task = spawn(self._status_loop(), name="localproxy-status")
        log.info("local proxy listening on %s:%d (%s mode)", *self.address, self.mode)
        return self.address

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening, close every live connection, remove the status file."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for relay in list(self._relays):
            relay.close()
        for task in list(self._tasks):
            await cancel_and_wait(task)
        await cancel_and_wait(self._status_task)
        self._status_task = None
        path = self.status_path
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._closed.set()

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The status document (see docs/design/db-access.md)."""
        host, port = self.address or (self.listen_host, self.listen_port)
        return {
            "pid": os.getpid(),
            "listen": f"{host}:{port}",
            "mode": self.mode,
            "protocol": self.protocol,
            "target": self.target,
            "proxy": self.proxy_addr,
            "started": _rfc3339(self.started) if self.started else "",
            **asdict(self.stats),
        }

    def _write_status(self) -> None:
        path = self.status_path
        if path is None:
            return
        try:
            text = json.dumps(self.status(), indent=2) + "\n"
            if text == self._last_status:
                return  # nothing changed: no rewrite
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, text, mode=0o600, durable=False)
            self._last_status = text
        except OSError as exc:
            log.debug("cannot write the local proxy status file %s: %s", path, exc)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._write_status()

    def _record_error(self, message: str) -> None:
        self._stats.errors += 1
        self._stats.last_error = message
        log.warning("local proxy: %s", message)

    # ------------------------------------------------------------------ upstream
    def _base_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_pem:
            ctx.load_verify_locations(cadata=self.ca_pem.decode())
        else:
            ctx.load_default_certs()
        ctx.set_alpn_protocols(self.alpn)
        return ctx

    async def _context(self) -> ssl.SSLContext:
        if self.client_cert_provider is None:
            if self._base_ctx is None:
                self._base_ctx = self._base_context()
            return self._base_ctx
        loop = asyncio.get_running_loop()
        try:
            cert_pem, key_pem = await loop.run_in_executor(None, self.client_cert_provider)
        except Exception as exc:
            msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise _Refused(f"cannot get a database certificate: {msg}") from None
        cached = self._cert_ctx
        if cached is not None and cached[0] == cert_pem and cached[1] == key_pem:
            self._check_expiry(cert_pem)
            return cached[2]
        self._check_expiry(cert_pem)
        ctx = self._base_context()
        try:
            load_cert_chain_from_memory(ctx, cert_pem, key_pem)
        except BadParameter as exc:
            raise _Refused(f"the database certificate or key is unusable: {exc}") from None
        self._cert_ctx = (cert_pem, key_pem, ctx)
        return ctx

    def _check_expiry(self, cert_pem: bytes) -> None:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise _Refused("the database certificate is not a PEM certificate") from None
        not_after = cert.not_valid_after_utc
        if not_after <= datetime.now(UTC):
            raise _Refused(
                f"your database certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC; "
                f"{self.expired_hint}"
            )

    # ------------------------------------------------------------------ connections
    def _accept(self) -> Handshake:
        """Protocol factory: hold the client's bytes while the upstream opens."""
        hs = Handshake()
        task = spawn(self._serve(hs), name="localproxy-conn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return hs

    async def _serve(self, hs: Handshake) -> None:
        st = self._stats
        st.connections_total += 1
        st.connections_live += 1
        relay: Relay | None = None
        try:
            while hs.transport is None and not hs.lost:  # connection_made is scheduled
                await asyncio.sleep(0)
            try:
                relay = await self._open_upstream()
            except _Refused as exc:
                await self._fail(hs, str(exc))
                return
            relay.a.attach_handshake(hs)
            self._relays.add(relay)
            await relay.wait()
        finally:
            if relay is not None:
                self._relays.discard(relay)
                self._done_in += relay.bytes_b_to_a
                self._done_out += relay.bytes_a_to_b
                relay.close()
            elif hs.transport is not None and not hs.transport.is_closing():
                hs.transport.close()
            st.connections_live -= 1

    async def _open_upstream(self) -> Relay:
        """TLS to the proxy (ALPN, SNI, tunnel certificate); the relay's ``b`` side."""
        loop = asyncio.get_running_loop()
        where = f"{self.proxy_host}:{self.proxy_port}"
        ctx = await self._context()
        relay = Relay()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: relay.b,
                    self.proxy_host,
                    self.proxy_port,
                    ssl=ctx,
                    server_hostname=self.sni,
                    ssl_handshake_timeout=self.connect_timeout,
                ),
                timeout=self.connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            if exc.verify_code == _HOSTNAME_MISMATCH and self.sni != self.proxy_host:
                # the proxy presents certificates only for applications it serves
                app = self.sni.split(".")[0]
                raise _Refused(
                    f"the Jumpgate proxy at {where} serves no application {app!r} (its "
                    f"certificate does not cover {self.sni}); check the name with "
                    "tsh apps ls (or tctl apps ls) and that its Application Service is running"
                ) from None
            raise _Refused(
                f"the Jumpgate proxy at {where} is not trusted: {exc.verify_message}; "
                "log in again with tsh login"
            ) from None
        except ssl.SSLError as exc:
            raise _Refused(
                f"the Jumpgate proxy at {where} refused the connection: {exc.reason or exc}"
            ) from None
        except TimeoutError:
            raise _Refused(f"cannot reach the Jumpgate proxy at {where}: timed out") from None
        except OSError as exc:
            raise _Refused(
                f"cannot reach the Jumpgate proxy at {where}: {exc.strerror or exc}"
            ) from None
        return relay

    async def _fail(self, hs: Handshake, message: str) -> None:
        """Tell the client why, in PostgreSQL's language, once it has spoken; then close.

        Waiting for its first message (up to ``_FAIL_WAIT``) keeps the error from
        racing the client's own write; a CancelRequest is just closed, as PostgreSQL does.
        """
        self._record_error(message)
        first = b""
        with contextlib.suppress(TimeoutError, ConnectionProblem):
            first = await asyncio.wait_for(hs.read_some(), _FAIL_WAIT)
        t = hs.transport
        if t is None or t.is_closing():
            return
        if first[:8] == _SSL_REQUEST:
            # answer "no TLS" first: libpq then sends its StartupMessage in clear and prints
            # our error itself (an error *during* the SSL exchange would be shown as
            # "server sent an error response during SSL exchange", hiding the reason)
            t.write(b"N")
            with contextlib.suppress(TimeoutError, ConnectionProblem):
                first = await asyncio.wait_for(hs.read_some(), _FAIL_WAIT)
            if t.is_closing():
                return
        if not _is_cancel_request(first):
            t.write(pg_error_response(message))
        t.close()


class ThreadedLocalProxy:
    """Run a :class:`LocalProxy` on its own event loop in a daemon thread (``tsh db connect``)."""

    def __init__(self, proxy: LocalProxy) -> None:
        self.proxy = proxy
        # the default loop here: uvloop's close() fails (EBUSY) while a client transport
        # is still closing when tsh db connect ends; tsh proxy db runs on uvloop
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="localproxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self, timeout: float = 10.0) -> tuple[str, int]:
        """Start the thread and the listener; returns (host, port)."""
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        return fut.result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the proxy and stop the thread."""
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop)
        with contextlib.suppress(Exception):
            fut.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


def serve_until_signal(
    proxy: LocalProxy, on_started: Callable[[str, int], None] | None = None
) -> None:
    """Run ``proxy`` on a new event loop until SIGINT or SIGTERM (``tsh proxy db``)."""
    import signal

    async def main() -> None:
        host, port = await proxy.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if on_started is not None:
                on_started(host, port)
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await proxy.close()

    install_event_loop_policy()  # uvloop: about half the CPU per relayed message
    asyncio.run(main())
