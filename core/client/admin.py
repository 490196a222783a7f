"""How ``tctl`` finds and authenticates to the auth service.

On the auth host it reads ``teleport.yaml`` (``-c``, default
``/etc/teleport.yaml``) and uses the local admin identity that ``teleport
start`` keeps in the data directory. Elsewhere it needs ``--auth-server`` and
an identity file (``-i``) from ``tctl auth sign --user`` or a tbot ``identity``
output.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jumpgate.core.auth.client import AuthClient, split_hostport
from jumpgate.core.auth.identityfile import read_identity_file
from jumpgate.core.errors import BadParameter, ConfigError, ConnectionProblem, NotFound
from jumpgate.core.yamlutil import load_one

DEFAULT_CONFIG = "/etc/teleport.yaml"


@dataclass(frozen=True)
class AdminTarget:
    """Where tctl connects and with which identity file."""

    addr: str
    identity_path: Path


def default_config_path() -> str:
    """``$TELEPORT_CONFIG_FILE`` or ``/etc/teleport.yaml``."""
    return os.environ.get("TELEPORT_CONFIG_FILE", DEFAULT_CONFIG)


def resolve_admin(
    *, config: str | None, auth_server: str | None, identity: str | None
) -> AdminTarget:
    """Decide how to reach the auth service, or explain what is missing."""
    if identity:
        if not auth_server:
            raise BadParameter(
                "--auth-server is required with an identity file (-i)",
                hint="pass the auth (3025) or proxy (web) address: --auth-server=proxy.example.com:443",
            )
        return AdminTarget(addr=auth_server, identity_path=Path(identity))
    path = Path(config or default_config_path())
    if not path.exists():
        raise ConfigError(
            f"no identity file given and the configuration {path} does not exist",
            hint="log in with tsh login, run tctl on the auth host with -c /path/to/teleport.yaml, "
            "or pass --auth-server=HOST:PORT -i IDENTITY_FILE",
        )
    data_dir, auth_enabled, listen_addr = _admin_settings(path)
    if not auth_enabled:
        raise ConfigError(
            f"{path} does not enable auth_service, so there is no local admin identity",
            hint="point -c at the auth host's teleport.yaml, or use --auth-server and -i",
        )
    ident = data_dir / "proc" / "admin.pem"
    if not ident.exists():
        raise ConnectionProblem(
            f"no admin identity in {data_dir}: has teleport started with {path}?",
            hint=f"start the cluster first: teleport start -c {path}",
        )
    if not os.access(ident, os.R_OK):
        raise ConfigError(
            f"cannot read the admin identity {ident}: permission denied",
            hint="run tctl as the user that runs teleport (often root)",
        )
    addr = auth_server
    if not addr:
        recorded = data_dir / "proc" / "auth_addr"
        if recorded.exists():
            addr = recorded.read_text().strip()
        else:
            host, port = split_hostport(listen_addr, 3025)
            addr = f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"
    return AdminTarget(addr=addr, identity_path=ident)


def _admin_settings(path: Path) -> tuple[Path, bool, str]:
    """``teleport.data_dir``, whether auth is enabled, and ``auth_service.listen_addr``.

    A light read of teleport.yaml: tctl needs three keys, not the whole validated
    model (which costs a quarter of a second to import). ``teleport start``
    validates the file fully.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    data, _ = load_one(text, str(path))
    tp = data.get("teleport") or {}
    auth = data.get("auth_service") or {}
    if not isinstance(tp, dict) or not isinstance(auth, dict):
        raise ConfigError(f"{path}: teleport and auth_service must be mappings")
    enabled = auth.get("enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() not in ("no", "false", "off", "0")
    return (
        Path(str(tp.get("data_dir") or "/var/lib/teleport")),
        bool(enabled),
        str(auth.get("listen_addr") or "0.0.0.0:3025"),
    )


def connect_admin(
    *, config: str | None, auth_server: str | None, identity: str | None
) -> AuthClient:
    """An API client for tctl.

    Precedence, as Teleport's tctl: an identity file (``-i``); else the auth host's
    configuration (``-c``, or ``/etc/teleport.yaml`` when it exists); else the
    credentials of the current ``tsh login`` profile, through the proxy.
    """
    if not identity and not config and not Path(default_config_path()).exists():
        from jumpgate.core.client.profile import ProfileStore

        prof = ProfileStore().current()
        if prof is not None:
            prof.require_valid()
            return AuthClient(auth_server or prof.web_proxy_addr, prof.identity_file())
    target = resolve_admin(config=config, auth_server=auth_server, identity=identity)
    return AuthClient(target.addr, read_identity_file(target.identity_path))


@dataclass(frozen=True)
class FetchedExport:
    """Public CA material fetched from a proxy without credentials."""

    body: bytes
    verified: bool

    @property
    def pin(self) -> str:
        """``sha256:…`` of the first certificate's public key (PEM exports only)."""
        from cryptography import x509

        from jumpgate.core.tlsca import ca_pin

        try:
            return ca_pin(x509.load_pem_x509_certificates(self.body)[0])
        except ValueError:
            return "n/a"


def fetch_ca_export(addr: str, export_type: str, *, timeout: float = 15.0) -> FetchedExport:
    """``GET https://ADDR/webapi/auth/export?type=…`` (public CA material).

    The proxy's certificate is verified against the system trust store first;
    a proxy with a cluster-signed certificate is then read without verification
    and the result flagged ``verified=False`` so the caller can warn and print
    the pin to compare.
    """
    host, port = split_hostport(addr, 443)
    host_part = f"[{host}]" if ":" in host else host
    url = f"https://{host_part}:{port}/webapi/auth/export?type={export_type}"
    for verified in (True, False):
        ctx = ssl.create_default_context()
        if not verified:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
                return FetchedExport(resp.read(), verified)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            if exc.code == 400:
                raise BadParameter(f"the proxy refused the export: {detail}") from None
            if exc.code == 404:
                raise NotFound(f"{addr} has no CA export endpoint (HTTP 404)") from None
            raise ConnectionProblem(f"{url}: HTTP {exc.code} {detail}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if verified and isinstance(reason, ssl.SSLCertVerificationError):
                continue
            raise ConnectionProblem(
                f"cannot reach {addr}: {reason}", hint="check the --auth-server address and port"
            ) from None
        except OSError as exc:
            raise ConnectionProblem(f"cannot reach {addr}: {exc}") from None
    raise ConnectionProblem(f"cannot fetch CA export from {addr}")
