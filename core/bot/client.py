"""The bot's side of the Machine ID wire contracts (docs/design/machine-id.md).

* :func:`trusted_host_ca`: fetch the cluster's host CA from the proxy and check
  it against ``ca_pins`` (or the CA in ``ca_path``) before trusting it;
* :func:`join`: ``POST /webapi/bots/join`` over TLS verified with that CA;
* :class:`BotAPI`: the RPCs ``bots.renew``, ``bots.output_cert`` and
  ``db.list`` with a bot certificate, through the proxy's web port (ALPN
  ``teleport-auth@<cluster>``) or on the auth port.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from jumpgate.core.auth.aclient import AsyncAuthClient
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import (
    AccessDenied,
    ConfigError,
    ConnectionProblem,
    JumpgateError,
    from_dict,
)
from jumpgate.core.join import fetch_host_ca, verifying_context
from jumpgate.core.tlsca import ca_pin, cert_to_pem, check_pins

log = logging.getLogger(__name__)


def hostport(addr: str) -> tuple[str, int]:
    """``host:port`` of a proxy address (the web port, 3080 when not given)."""
    from jumpgate.core.client.profile import normalize_proxy_addr

    return normalize_proxy_addr(addr)


def join_hostport(host: str, port: int) -> str:
    """``host:port`` with brackets around IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Issued:
    """A certificate the cluster issued, with its CAs (PEM)."""

    cert_pem: bytes
    host_ca: bytes
    user_ca: bytes
    db_ca: bytes
    expires: datetime
    generation: int = 0
    cluster_name: str = ""


def _pem(payload: dict[str, Any], key: str) -> bytes:
    value = payload.get(key)
    if not isinstance(value, str) or "-----BEGIN" not in value:
        raise ConnectionProblem(f"the cluster's answer has no usable {key!r}")
    return value.encode() if value.endswith("\n") else (value + "\n").encode()


def parse_issued(payload: Any) -> Issued:
    """The wire shape ``{"cert", "host_ca", "user_ca", "db_ca", "expires", ...}``."""
    if not isinstance(payload, dict):
        raise ConnectionProblem("the cluster answered with something other than a certificate")
    cert_pem = _pem(payload, "cert")
    expires = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    gen = payload.get("generation") or 0
    return Issued(
        cert_pem=cert_pem,
        host_ca=_pem(payload, "host_ca"),
        user_ca=_pem(payload, "user_ca"),
        db_ca=_pem(payload, "db_ca"),
        expires=expires,
        generation=int(gen) if isinstance(gen, int | str) and str(gen).isdigit() else 0,
        cluster_name=str(payload.get("cluster_name") or ""),
    )


async def trusted_host_ca(
    addr: str, *, ca_pins: list[str], ca_path: str = "", insecure: bool = False
) -> bytes:
    """The cluster's host CA (PEM), fetched from the proxy and verified before any secret is sent.

    ``ca_pins``: the CA's pin must be one of them (AccessDenied otherwise).
    ``ca_path``: the fetched CA must be one of the certificates in that file.
    Neither: trusted on first use, with a warning naming its pin.
    """
    host, port = hostport(addr)
    try:
        cas = await fetch_host_ca(join_hostport(host, port))
    except ConnectionProblem as exc:
        raise ConnectionProblem(
            exc.message,
            hint="proxy_server (or auth_server) must name the proxy's web address, HOST:PORT: "
            "Jumpgate bots join and renew through the proxy",
        ) from None
    pins = [p for p in ca_pins if p.strip()]
    if pins:
        try:
            check_pins(cas[0], pins)
        except AccessDenied as exc:
            raise AccessDenied(
                f"refusing to join the cluster at {addr}: {exc.message}",
                hint=exc.hint,
            ) from None
    elif ca_path:
        expected = _load_ca_file(ca_path)
        if not any(c == cas[0] for c in expected):
            raise AccessDenied(
                f"refusing to join the cluster at {addr}: its host CA (pin {ca_pin(cas[0])}) "
                f"is not the CA in {ca_path}",
                hint="check onboarding.ca_path against 'tctl auth export --type=tls-host'",
            )
    else:
        log.warning(
            "no CA pin configured%s: trusting the cluster at %s on first use (CA pin %s); "
            "set onboarding.ca_pins (or --ca-pin) to verify it",
            " (insecure)" if insecure else "",
            addr,
            ca_pin(cas[0]),
        )
    return b"".join(cert_to_pem(c) for c in cas)


def _load_ca_file(path: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"onboarding.ca_path: cannot read {path}: {exc.strerror or exc}"
        ) from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"onboarding.ca_path: {path} holds no PEM certificate") from None


def _answer_error(payload: Any, status: int, what: str) -> JumpgateError:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return from_dict({k: str(v) for k, v in err.items()})
    return ConnectionProblem(f"{what}: HTTP {status}")


async def join(
    addr: str, *, token: str, public_key_pem: bytes, ttl_seconds: float, ca_pem: bytes
) -> Issued:
    """``POST /webapi/bots/join``: spend the token on the first renewable certificate."""
    host, port = hostport(addr)
    h = f"[{host}]" if ":" in host else host
    url = f"https://{h}:{port}/webapi/bots/join"
    body = {
        "token": token,
        "public_key": public_key_pem.decode(),
        "join_method": "token",
        "ttl": ttl_seconds,
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
            s.post(url, json=body, ssl=verifying_context(ca_pem)) as resp,
        ):
            raw = await resp.read()
            status = resp.status
    except aiohttp.ClientSSLError as exc:
        raise ConnectionProblem(
            f"the proxy at {addr} is not trusted by its cluster's host CA: {exc}",
            hint="check that proxy_server/auth_server names the proxy's public address",
        ) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ConnectionProblem(f"joining through {addr} failed: {exc}") from None
    try:
        payload = json.loads(raw or b"{}")
    except ValueError:
        payload = None
    if status == 404:
        raise ConnectionProblem(
            f"{addr} does not offer bot joining (POST /webapi/bots/join: HTTP 404)",
            hint="proxy_server/auth_server must name a Jumpgate proxy's web address",
        )
    if status != 200:
        raise _answer_error(payload, status, f"joining through {addr}")
    return parse_issued(payload)


class BotAPI:
    """Auth API calls with a bot certificate (renewable or output)."""

    def __init__(self, addr: str, ident: IdentityFile, *, timeout: float = 30.0) -> None:
        host, port = hostport(addr)
        self.addr = addr
        self._client = AsyncAuthClient(join_hostport(host, port), ident, timeout=timeout)

    async def _call(self, method: str, **params: Any) -> Any:
        try:
            return await self._client.call(method, **params)
        except ssl.SSLError as exc:  # pragma: no cover - aiohttp wraps most of these
            raise ConnectionProblem(f"TLS with {self.addr} failed: {exc}") from None

    async def renew(self, *, public_key_pem: bytes, ttl_seconds: float) -> Issued:
        """``bots.renew``: the next generation of the renewable certificate."""
        return parse_issued(
            await self._call("bots.renew", public_key=public_key_pem.decode(), ttl=ttl_seconds)
        )

    async def output_cert(
        self,
        *,
        public_key_pem: bytes,
        ttl_seconds: float,
        roles: list[str],
        route_to_database: dict[str, str] | None = None,
        route_to_app: dict[str, str] | None = None,
    ) -> Issued:
        """``bots.output_cert``: an impersonated, non-renewable certificate for one output."""
        return parse_issued(
            await self._call(
                "bots.output_cert",
                public_key=public_key_pem.decode(),
                ttl=ttl_seconds,
                roles=roles,
                route_to_database=route_to_database,
                route_to_app=route_to_app,
            )
        )

    async def db_list(self) -> list[dict[str, Any]]:
        """``db.list``: the databases this certificate's roles may see."""
        result = await self._call("db.list")
        return [d for d in result or [] if isinstance(d, dict)]

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.close()
