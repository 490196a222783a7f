"""``tsh login``: trust the proxy, ping it, and exchange a password for a certificate.

The proxy's certificate is signed by the cluster's host CA, not a public CA, so
trust is established in this order (:func:`establish_trust`):

1. the system trust store (a proxy behind a public certificate);
2. a host CA already saved in the profile for that proxy (an earlier login);
3. the host CA fetched from ``/webapi/auth/export?type=tls-host`` over an
   *unverified* connection, accepted only when the proxy's own certificate
   verifies against it AND (``insecure``, or the proxy is a loopback address,
   or the caller's ``confirm(pin)`` says yes).

A password is only ever sent over a connection verified by (1), (2) or the CA
accepted in (3).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jumpgate.core.client.profile import ProfileStore, join_hostport, normalize_proxy_addr
from jumpgate.core.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    JumpgateError,
    LimitExceeded,
    NotFound,
)

#: How long to wait for the proxy before giving up.
DEFAULT_TIMEOUT = 15.0

#: ``confirm(pin) -> bool``: ask the user whether to trust a CA with this pin.
Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class ProxyTrust:
    """How to verify the proxy: the system store (``ca_pem=None``) or a cluster host CA."""

    proxy_addr: str
    ca_pem: bytes | None = None
    #: ``system``, ``saved``, ``fetched``
    source: str = "system"
    pin: str = ""
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the proxy this way."""
        ctx = ssl.create_default_context()
        if self.ca_pem is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(cadata=self.ca_pem.decode())
            # --insecure tolerates a name mismatch (dialling by an address the
            # certificate does not list) but still pins the accepted CA
            ctx.check_hostname = not self.insecure
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


@dataclass(frozen=True)
class LoginResult:
    """What a successful login returns: the new credentials and the cluster they are for."""

    username: str
    cluster_name: str
    key_pem: bytes
    cert_pem: bytes
    host_ca_pem: bytes


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- HTTP
def _request(
    proxy_addr: str,
    method: str,
    path: str,
    ctx: ssl.SSLContext,
    *,
    body: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    want_peer_cert: bool = False,
) -> tuple[int, bytes, bytes | None]:
    """One HTTPS request; returns (status, body, the proxy's leaf certificate DER)."""
    host, port = normalize_proxy_addr(proxy_addr)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        peer = None
        if want_peer_cert and conn.sock is not None:
            sock = conn.sock
            assert isinstance(sock, ssl.SSLSocket)
            peer = sock.getpeercert(binary_form=True)
        resp = conn.getresponse()
        return resp.status, resp.read(), peer
    except ssl.SSLCertVerificationError:
        raise
    except ssl.SSLError as exc:
        raise ConnectionProblem(
            f"TLS handshake with the proxy at {join_hostport(host, port)} failed: "
            f"{exc.reason or exc}",
            hint="is this the proxy's web port (proxy_service.web_listen_addr)?",
        ) from None
    except TimeoutError:
        raise ConnectionProblem(
            f"the proxy at {join_hostport(host, port)} did not answer within {timeout:g}s",
            hint="check --proxy and that the proxy is running",
        ) from None
    except OSError as exc:
        raise ConnectionProblem(
            f"cannot reach the proxy at {join_hostport(host, port)}: {exc.strerror or exc}",
            hint="check --proxy=HOST:PORT and that the proxy is running",
        ) from None
    finally:
        conn.close()


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or "")
        if isinstance(err, str):
            return err
        if "message" in doc:
            return str(doc["message"])
    return ""


def ping(
    proxy_addr: str,
    *,
    insecure: bool = False,
    ca_pem: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """``GET /webapi/ping``: cluster name, versions, proxy and auth settings.

    Verifies the proxy against ``ca_pem`` when given, else the system store; with
    ``insecure`` an unverifiable proxy is read anyway (the answer holds no secret).
    """
    trust = ProxyTrust(proxy_addr, ca_pem=ca_pem, insecure=insecure)
    try:
        status, body, _ = _request(
            proxy_addr, "GET", "/webapi/ping", trust.context(), timeout=timeout
        )
    except ssl.SSLCertVerificationError as exc:
        if not insecure:
            raise ConnectionProblem(
                f"the proxy at {proxy_addr} presented a certificate that cannot be verified: "
                f"{exc.verify_message}",
                hint="log in first (tsh login trusts the cluster CA), or pass --insecure",
            ) from None
        status, body, _ = _request(
            proxy_addr, "GET", "/webapi/ping", _unverified_context(), timeout=timeout
        )
    if status != 200:
        raise ConnectionProblem(
            f"ping of the proxy at {proxy_addr} failed (HTTP {status}): {_error_message(body)}"
        )
    try:
        doc = json.loads(body)
    except ValueError:
        raise ConnectionProblem(f"{proxy_addr} did not answer like a Jumpgate proxy") from None
    if not isinstance(doc, dict):
        raise ConnectionProblem(f"{proxy_addr} did not answer like a Jumpgate proxy")
    return doc


def _unverified_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --------------------------------------------------------------------------- trust
def _works(trust: ProxyTrust, timeout: float) -> bool:
    """Whether a verified connection succeeds with ``trust``."""
    try:
        _request(trust.proxy_addr, "GET", "/webapi/find", trust.context(), timeout=timeout)
    except ssl.SSLCertVerificationError:
        return False
    return True


def fetch_host_ca(proxy_addr: str, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[bytes, str]:
    """Fetch the host CA unverified and check the proxy's own certificate against it.

    Returns (CA PEM bundle, pin of the CA that issued the proxy's certificate).
    Raises AccessDenied when the proxy's certificate was not issued by the CA it serves.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from jumpgate.core.tlsca import ca_pin, load_certificates

    status, body, leaf_der = _request(
        proxy_addr,
        "GET",
        "/webapi/auth/export?type=tls-host",
        _unverified_context(),
        timeout=timeout,
        want_peer_cert=True,
    )
    if status != 200:
        raise ConnectionProblem(
            f"cannot fetch the cluster CA from {proxy_addr} (HTTP {status}): {_error_message(body)}",
            hint="is this a Jumpgate proxy's web port?",
        )
    try:
        cas = load_certificates(body)
    except BadParameter:
        raise ConnectionProblem(f"{proxy_addr} returned no CA certificate") from None
    if leaf_der is None:
        raise ConnectionProblem(f"the proxy at {proxy_addr} presented no certificate")
    leaf = x509.load_der_x509_certificate(leaf_der)
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return body, ca_pin(ca)
    raise AccessDenied(
        f"the proxy at {proxy_addr} presented a certificate that its own cluster CA did not issue",
        hint="something between you and the proxy may be intercepting the connection",
    )


def establish_trust(
    proxy_addr: str,
    *,
    insecure: bool = False,
    store: ProfileStore | None = None,
    confirm: Confirm | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ProxyTrust:
    """Decide how to verify the proxy before any secret is sent (see the module docstring)."""
    host, port = normalize_proxy_addr(proxy_addr)
    addr = join_hostport(host, port)
    system = ProxyTrust(addr, source="system", insecure=insecure)
    if _works(system, timeout):
        return system
    saved = store.saved_ca(addr) if store is not None else None
    if saved:
        trust = ProxyTrust(addr, ca_pem=saved, source="saved", insecure=insecure)
        if _works(trust, timeout):
            return trust
    ca_pem, pin = fetch_host_ca(addr, timeout=timeout)
    accepted = insecure or is_loopback(host) or (confirm is not None and confirm(pin))
    if not accepted:
        raise AccessDenied(
            f"the authenticity of the proxy at {addr} can't be established (CA pin {pin})",
            hint="compare the pin with the one 'tctl status' prints on the cluster, then log in "
            "on a terminal to confirm it, or pass --insecure",
        )
    trust = ProxyTrust(addr, ca_pem=ca_pem, source="fetched", pin=pin, insecure=insecure)
    if not insecure and not _works(trust, timeout):
        raise AccessDenied(
            f"the proxy's certificate does not cover the name {host!r}",
            hint="use the proxy's public address (proxy_service.public_addr) or pass --insecure",
        )
    return trust


# --------------------------------------------------------------------------- login
def _pem_field(value: Any) -> bytes:
    """A PEM either as text or base64 of the PEM (Go's []byte marshalling)."""
    if isinstance(value, bytes):
        return value
    text = str(value or "")
    if "-----BEGIN" in text:
        return text.encode()
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return b""


def _host_ca_from(resp: dict[str, Any]) -> bytes:
    out = b""
    for signer in resp.get("host_signers") or []:
        spec = (signer or {}).get("spec") or {}
        if spec.get("type", "host") != "host":
            continue
        for key in (spec.get("active_keys") or {}).get("tls") or []:
            out += _pem_field((key or {}).get("cert"))
    return out


def login(
    proxy_addr: str,
    user: str,
    password: str,
    otp_token: str = "",
    ttl: timedelta | None = None,
    *,
    trust: ProxyTrust,
    timeout: float = DEFAULT_TIMEOUT,
) -> LoginResult:
    """``POST /webapi/ssh/certs`` with a fresh P-256 key; returns the new credentials."""
    from jumpgate.core.tlsca import (
        generate_private_key,
        load_certificate,
        private_key_to_pem,
        public_key_to_pem,
    )

    if not user:
        raise BadParameter("a user name is required", hint="pass --user=NAME")
    if trust.ca_pem is None and trust.source != "system":
        raise BadParameter("refusing to send a password without a way to verify the proxy")
    key = generate_private_key()
    body: dict[str, Any] = {
        "user": user,
        "password": password,
        "otp_token": otp_token,
        "tls_pub_key": public_key_to_pem(key.public_key()).decode(),
        "ttl": int(ttl.total_seconds() * 1_000_000_000) if ttl else 0,
    }
    try:
        status, raw, _ = _request(
            trust.proxy_addr,
            "POST",
            "/webapi/ssh/certs",
            trust.context(),
            body=body,
            timeout=timeout,
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConnectionProblem(
            f"the proxy at {trust.proxy_addr} is no longer the one trusted a moment ago: "
            f"{exc.verify_message}"
        ) from None
    if status == 403 or status == 401:
        raise AccessDenied("invalid username, password or second factor")
    if status == 429:
        raise LimitExceeded("too many login attempts", hint="wait a minute before trying again")
    if status == 404:
        raise NotFound(
            f"the proxy at {trust.proxy_addr} does not offer password login (POST /webapi/ssh/certs)",
            hint="the proxy may be older than this tsh",
        )
    if status != 200:
        msg = _error_message(raw) or f"HTTP {status}"
        raise JumpgateError(f"login failed: {msg}")
    try:
        resp = json.loads(raw)
    except ValueError:
        raise ConnectionProblem("the proxy's login answer is not JSON") from None
    cert_pem = _pem_field(resp.get("tls_cert"))
    host_ca = _host_ca_from(resp) or (trust.ca_pem or b"")
    if not cert_pem:
        raise ConnectionProblem("the proxy's login answer holds no certificate")
    cert = load_certificate(cert_pem)
    if cert.public_key() != key.public_key():
        raise AccessDenied("the proxy returned a certificate for another key")
    if not host_ca:
        raise ConnectionProblem("the proxy's login answer holds no cluster CA")
    cluster = str(resp.get("cluster_name") or "")
    if not cluster:
        from jumpgate.core.auth.identityfile import IdentityFile

        cluster = IdentityFile(b"", cert_pem, ()).cluster_name
    return LoginResult(
        username=str(resp.get("username") or user),
        cluster_name=cluster,
        key_pem=private_key_to_pem(key),
        cert_pem=cert_pem,
        host_ca_pem=host_ca,
    )
