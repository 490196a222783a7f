"""Asynchronous auth API client for agents (aiohttp, keep-alive, mutual TLS)."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from jumpgate.core.auth.client import API_DOMAIN, client_ssl_context, split_hostport
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import ConnectionProblem, from_dict


class AsyncAuthClient:
    """Call auth API methods from asyncio code: ``await client.call("db.heartbeat", ...)``.

    ``addr`` may be the auth service or a proxy's web port (ALPN
    ``teleport-auth@<cluster>`` pass-through).
    """

    def __init__(self, addr: str, ident: IdentityFile, *, timeout: float = 60.0) -> None:
        self.addr = addr
        self.host, self.port = split_hostport(addr, 3025)
        self.ident = ident
        self._ctx: ssl.SSLContext = client_ssl_context(
            ident, alpn=[f"teleport-auth@{ident.cluster_name}", "http/1.1"]
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ctx, limit=16)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def call(self, method: str, **params: Any) -> Any:
        """Invoke ``method``; the server's error comes back as the matching JumpgateError."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"https://{host}:{self.port}/v1/rpc/{method}"
        try:
            async with self._sess().post(
                url,
                data=json.dumps(params),
                server_hostname=API_DOMAIN,
                headers={"Content-Type": "application/json"},
            ) as resp:
                body = await resp.read()
        except aiohttp.ClientSSLError as exc:
            raise ConnectionProblem(
                f"TLS with the auth service at {self.addr} failed: {exc}",
                hint="the agent's certificate may be expired or from another cluster",
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionProblem(
                f"cannot reach the auth service at {self.addr}: {exc}"
            ) from None
        try:
            payload = json.loads(body)
        except ValueError:
            raise ConnectionProblem(
                f"{self.addr} answered HTTP {resp.status} without JSON"
            ) from None
        if "error" in payload:
            raise from_dict(payload["error"])
        return payload.get("result")

    async def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
