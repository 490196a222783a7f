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

The relay is a small pair of asyncio Protocols with flow control (the reading
side pauses while the other side's write buffer is full). A status file
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
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.fsutil import atomic_write

log = logging.getLogger(__name__)

#: ``() -> (cert_pem, key_pem)`` for tunnel mode.
CertProvider = Callable[[], tuple[bytes, bytes]]

#: PostgreSQL CancelRequest code (first message of a cancel connection).
_CANCEL_REQUEST_CODE = 80877102
#: Bytes buffered from the client while the upstream connection opens.
_PENDING_LIMIT = 256 * 1024
#: How long to wait for the client's first bytes before answering a failure anyway.
_FAIL_WAIT = 2.0


def pg_error_response(message: str, *, code: str = "08006", severity: str = "FATAL") -> bytes:
    """A PostgreSQL ``ErrorResponse`` message: ``E``, int32 length, fields, terminator."""
    fields = b""
    for tag, value in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", message)):
        fields += tag + value.encode("utf-8", "replace").replace(b"\0", b"") + b"\0"
    fields += b"\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


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


class _Side(asyncio.Protocol):
    """One end of a relayed connection."""

    def __init__(self, conn: _Conn, upstream: bool) -> None:
        self.conn = conn
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.upstream:
            self.conn.downstream_made()

    def data_received(self, data: bytes) -> None:
        self.conn.data(self, data)

    def eof_received(self) -> bool:
        self.conn.finish(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conn.finish(self)

    def pause_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.conn.other(self)
        if other is not None and other.transport is not None and not other.closed:
            other.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Conn:
    """A client connection and, once open, its upstream connection to the proxy."""

    def __init__(self, proxy: LocalProxy) -> None:
        self.proxy = proxy
        self.down = _Side(self, upstream=False)
        self.up: _Side | None = None
        self.pending = bytearray()
        self.got_data = False
        self.failure: str | None = None
        self.paused = False
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def other(self, side: _Side) -> _Side | None:
        return self.up if side is self.down else self.down

    def downstream_made(self) -> None:
        self.proxy._conn_opened(self)
        self.task = spawn(self.proxy._open_upstream(self), name="localproxy-upstream")

    def attach(self, up: _Side) -> None:
        """The upstream is open: flush what the client already sent, start relaying."""
        self.up = up
        if self.done or self.down.closed:
            up.close()
            return
        assert up.transport is not None
        if self.pending:
            self.proxy.stats.bytes_out += len(self.pending)
            up.transport.write(bytes(self.pending))
            self.pending.clear()
        if self.paused and self.down.transport is not None:
            self.paused = False
            self.down.transport.resume_reading()

    def fail(self, message: str) -> None:
        """Opening the upstream failed: tell the client in PostgreSQL's language, then close."""
        self.failure = message
        self.proxy._record_error(message)
        if self.got_data:
            self._send_failure()
        else:
            self._timer = asyncio.get_running_loop().call_later(_FAIL_WAIT, self._send_failure)

    def _send_failure(self) -> None:
        t = self.down.transport
        if t is None or t.is_closing() or self.failure is None:
            return
        if not _is_cancel_request(bytes(self.pending[:8])):
            t.write(pg_error_response(self.failure))
        self.failure = None
        t.close()

    def data(self, side: _Side, data: bytes) -> None:
        if side is self.down:
            self.got_data = True
            up = self.up
            if up is not None and up.transport is not None and not up.closed:
                self.proxy.stats.bytes_out += len(data)
                up.transport.write(data)
                return
            self.pending += data
            if self.failure is not None:
                if self._timer is not None:
                    self._timer.cancel()
                self._send_failure()
            elif len(self.pending) > _PENDING_LIMIT and self.down.transport is not None:
                self.paused = True
                self.down.transport.pause_reading()
        else:
            self.proxy.stats.bytes_in += len(data)
            if self.down.transport is not None and not self.down.closed:
                self.down.transport.write(data)

    def finish(self, side: _Side) -> None:
        """One side ended: close the other (after flushing what it still has to write)."""
        other = self.other(side)
        side.close()
        if other is not None:
            other.close()
        elif side is self.down and self.task is not None and not self.task.done():
            self.task.cancel()
        if not self.done and self.down.closed and (self.up is None or self.up.closed):
            self.done = True
            if self._timer is not None:
                self._timer.cancel()
            self.proxy._conn_closed(self)


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
        self.stats = LocalProxyStats()
        self.started: datetime | None = None
        self.address: tuple[str, int] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Conn] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._base_ctx: ssl.SSLContext | None = None
        self._cert_ctx: tuple[bytes, bytes, ssl.SSLContext] | None = None

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
        self._server = await loop.create_server(
            lambda: _Conn(self).down, self.listen_host, self.listen_port
        )
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
        for conn in list(self._conns):
            conn.down.close()
            if conn.up is not None:
                conn.up.close()
            if conn.task is not None:
                await cancel_and_wait(conn.task)
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
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, json.dumps(self.status(), indent=2) + "\n", mode=0o600)
        except OSError as exc:
            log.debug("cannot write the local proxy status file %s: %s", path, exc)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._write_status()

    def _record_error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        log.warning("local proxy: %s", message)

    def _conn_opened(self, conn: _Conn) -> None:
        self._conns.add(conn)
        self.stats.connections_total += 1
        self.stats.connections_live += 1

    def _conn_closed(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.stats.connections_live -= 1

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
        fd, path = tempfile.mkstemp(prefix="jg-lp-", suffix=".pem")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_pem + cert_pem)
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise _Refused(f"the database certificate or key is unusable: {exc}") from None
        finally:
            Path(path).unlink()
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

    async def _open_upstream(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        where = f"{self.proxy_host}:{self.proxy_port}"
        try:
            ctx = await self._context()
            _, up = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Side(conn, upstream=True),
                    self.proxy_host,
                    self.proxy_port,
                    ssl=ctx,
                    server_hostname=self.sni,
                    ssl_handshake_timeout=self.connect_timeout,
                ),
                timeout=self.connect_timeout,
            )
        except _Refused as exc:
            conn.fail(str(exc))
            return
        except ssl.SSLCertVerificationError as exc:
            conn.fail(
                f"the Jumpgate proxy at {where} is not trusted: {exc.verify_message}; "
                "log in again with tsh login"
            )
            return
        except ssl.SSLError as exc:
            conn.fail(f"the Jumpgate proxy at {where} refused the connection: {exc.reason or exc}")
            return
        except TimeoutError:
            conn.fail(f"cannot reach the Jumpgate proxy at {where}: timed out")
            return
        except OSError as exc:
            conn.fail(f"cannot reach the Jumpgate proxy at {where}: {exc.strerror or exc}")
            return
        assert isinstance(up, _Side)
        conn.attach(up)


class ThreadedLocalProxy:
    """Run a :class:`LocalProxy` on its own event loop in a daemon thread (``tsh db connect``)."""

    def __init__(self, proxy: LocalProxy) -> None:
        self.proxy = proxy
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

    asyncio.run(main())
