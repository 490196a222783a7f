"""A small synchronous client of the auth API (used by tctl; fast to import).

It speaks HTTP/1.1 with keep-alive over mutual TLS, verifies the auth service's
certificate against the cluster's host CA with the internal server name, and
offers ALPN ``teleport-auth@<cluster>`` so the same client also works through
the proxy's web port.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from typing import Any

from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import ConnectionProblem, from_dict
from jumpgate.core.tlsutil import load_cert_chain_from_memory

#: The name internal clients expect on auth and proxy certificates.
API_DOMAIN = "teleport.cluster.local"


def split_hostport(addr: str, default_port: int) -> tuple[str, int]:
    """``host:port`` → (host, port), handling ``[::1]:3025`` and a missing port."""
    addr = addr.strip()
    if addr.startswith("https://"):
        addr = addr[len("https://") :]
    addr = addr.rstrip("/")
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host or "127.0.0.1", int(port)
    return addr, default_port


def client_ssl_context(ident: IdentityFile, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS client context presenting ``ident`` and trusting its CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ident.ca_bundle.decode())
    ctx.check_hostname = True
    # load_cert_chain needs a path: an anonymous in-memory file (never on disk)
    load_cert_chain_from_memory(ctx, ident.cert_pem, ident.key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class _APIConnection(http.client.HTTPSConnection):
    """HTTPS connection that verifies the internal API name, whatever address it dials."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ssl_ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._ssl_ctx.wrap_socket(sock, server_hostname=API_DOMAIN)


class AuthClient:
    """Call auth API methods: ``client.call("status")``. Thread-safe; one connection per thread."""

    def __init__(self, addr: str, ident: IdentityFile, *, timeout: float = 30.0) -> None:
        self.addr = addr
        self.host, self.port = split_hostport(addr, 3025)
        self.ident = ident
        self.timeout = timeout
        cluster = ident.cluster_name
        self._ctx = client_ssl_context(ident, alpn=[f"teleport-auth@{cluster}", "http/1.1"])
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _APIConnection(self.host, self.port, timeout=self.timeout, context=self._ctx)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def call(self, method: str, **params: Any) -> Any:
        """Invoke ``method``; raise the server's error as the matching JumpgateError."""
        body = json.dumps(params).encode()
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(
                    "POST",
                    f"/v1/rpc/{method}",
                    body=body,
                    headers={"Content-Type": "application/json", "Connection": "keep-alive"},
                )
                resp = conn.getresponse()
                data = resp.read()
                break
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise ConnectionProblem(
                    f"the server at {self.addr} is not the cluster this identity trusts: {exc.verify_message}",
                    hint="check --auth-server and the identity file (-i)",
                ) from None
            except ssl.SSLError as exc:
                self.close()
                raise ConnectionProblem(
                    f"TLS handshake with {self.addr} failed: {exc.reason or exc}",
                    hint="the certificate may be expired, locked or from another cluster; "
                    "get a fresh identity",
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise ConnectionProblem(
                        f"the auth service at {self.addr} closed the connection"
                    ) from None
            except OSError as exc:
                self.close()
                raise ConnectionProblem(
                    f"cannot reach the auth service at {self.addr}: {exc.strerror or exc}",
                    hint="is teleport running? check --auth-server or auth_service.listen_addr",
                ) from None
        try:
            payload = json.loads(data)
        except ValueError:
            raise ConnectionProblem(
                f"{self.addr} did not answer like a Jumpgate auth service (HTTP {resp.status})"
            ) from None
        if "error" in payload:
            raise from_dict(payload["error"])
        return payload.get("result")
