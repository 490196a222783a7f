"""Agents join a cluster through its proxy with a join token and a CA pin.

First contact: fetch the cluster's host CA from the proxy, check it against the
pins the operator gave (``--ca-pin`` / ``teleport.ca_pin``), then verify the
proxy's certificate with that CA before sending the token. The host identity
received is kept in the data directory and reused on restart.
"""

from __future__ import annotations

import json
import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from cryptography import x509

from jumpgate.core.auth.client import split_hostport
from jumpgate.core.auth.identityfile import IdentityFile, read_identity_file
from jumpgate.core.errors import AccessDenied, BadParameter, ConnectionProblem, JumpgateError
from jumpgate.core.fsutil import ensure_private_dir
from jumpgate.core.tlsca import (
    ca_pin,
    cert_to_pem,
    check_pins,
    generate_private_key,
    private_key_to_pem,
    public_key_to_pem,
)

log = logging.getLogger(__name__)


def _url(addr: str, path: str) -> tuple[str, str]:
    host, port = split_hostport(addr, 3080)
    h = f"[{host}]" if ":" in host else host
    return f"https://{h}:{port}{path}", host


async def fetch_host_ca(proxy_addr: str, *, timeout: float = 15.0) -> list[x509.Certificate]:
    """The cluster's host CA certificates, fetched without verification (check the pin next)."""
    url, _ = _url(proxy_addr, "/webapi/auth/export?type=tls-host")
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
            s.get(url, ssl=False) as resp,
        ):
            body = await resp.read()
            if resp.status != 200:
                raise ConnectionProblem(f"{url}: HTTP {resp.status}")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ConnectionProblem(
            f"cannot reach the proxy at {proxy_addr}: {exc}",
            hint="check teleport.proxy_server (or --proxy) and that the proxy is running",
        ) from None
    try:
        return x509.load_pem_x509_certificates(body)
    except ValueError:
        raise ConnectionProblem(f"{proxy_addr} did not return a CA certificate") from None


def verifying_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client TLS context that trusts only the cluster's host CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


async def join_cluster(
    proxy_addr: str,
    *,
    token: str,
    ca_pins: list[str],
    host_id: str,
    node_name: str,
    role: str,
) -> IdentityFile:
    """Join through the proxy and return the new host identity."""
    if not token:
        raise BadParameter(
            "no join token configured",
            hint="set teleport.join_params.token_name (a value or a file path)",
        )
    cas = await fetch_host_ca(proxy_addr)
    pins = [p for p in ca_pins if p]
    if pins:
        check_pins(cas[0], pins)
    else:
        log.warning(
            "no CA pin configured: trusting the cluster at %s on first use (CA pin %s); "
            "set teleport.ca_pin to verify it",
            proxy_addr,
            ca_pin(cas[0]),
        )
    ca_pem = b"".join(cert_to_pem(c) for c in cas)
    key = generate_private_key()
    url, _ = _url(proxy_addr, "/webapi/host/credentials")
    body = {
        "token": token,
        "host_id": host_id,
        "node_name": node_name,
        "role": role,
        "public_key": public_key_to_pem(key.public_key()).decode(),
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
            s.post(url, json=body, ssl=verifying_context(ca_pem)) as resp,
        ):
            payload = json.loads(await resp.read() or b"{}")
            status = resp.status
    except aiohttp.ClientSSLError as exc:
        raise ConnectionProblem(
            f"the proxy at {proxy_addr} is not trusted by its own cluster's host CA: {exc}",
            hint="check that proxy_server names the proxy's public address",
        ) from None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise ConnectionProblem(f"joining through {proxy_addr} failed: {exc}") from None
    if status != 200:
        err = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise AccessDenied(
            f"the cluster refused to join this {role} agent: {err.get('message', f'HTTP {status}')}",
            hint=err.get("hint") or "create a new token with tctl tokens add",
        )
    ident = IdentityFile(
        key_pem=private_key_to_pem(key),
        cert_pem=payload["cert"].encode(),
        ca_pems=(payload["host_ca"].encode(),),
    )
    return ident


async def load_or_join(
    path: Path,
    proxy_addr: str,
    *,
    token: str,
    ca_pins: list[str],
    host_id: str,
    node_name: str,
    role: str,
) -> IdentityFile:
    """Reuse the identity at ``path`` while it is valid; otherwise join and save it (0600)."""
    if path.exists():
        try:
            ident = read_identity_file(path)
            if ident.cert.not_valid_after_utc > datetime.now(UTC):
                return ident
            log.warning("the stored %s identity expired; joining again", role)
        except JumpgateError as exc:
            log.warning("ignoring unreadable identity %s: %s", path, exc)
    ident = await join_cluster(
        proxy_addr, token=token, ca_pins=ca_pins, host_id=host_id, node_name=node_name, role=role
    )
    ensure_private_dir(path.parent)
    ident.write(path)
    log.info("joined the cluster %s as a %s agent (host id %s)", ident.cluster_name, role, host_id)
    return ident
