"""Application access from a ``tsh`` profile: list, log in (certificates), config, local proxy.

``tsh apps login APP`` asks the auth service (through the proxy's web port) for
a certificate with ``route_to_app`` for the profile's key and saves it as
``keys/<proxy>/<user>-app/<cluster>/<app>-x509.pem`` (Teleport's layout). The
certificate, the profile's key and the cluster CA are what ``curl`` needs.
"""

from __future__ import annotations

import contextlib
import shlex
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jumpgate.core.client.profile import Profile
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.fsutil import atomic_write, ensure_private_dir
from jumpgate.core.tlsca import Identity, load_private_key, public_key_to_pem

#: Renew a local proxy's app certificate when less than this is left.
RENEW_BEFORE = timedelta(minutes=1)
_SUFFIX = "-x509.pem"


def app_dir(profile: Profile) -> Path:
    """``keys/<proxy host>/<user>-app/<cluster>``."""
    return profile.key_dir / f"{profile.user}-app" / profile.cluster


def app_cert_path(profile: Profile, app: str) -> Path:
    """Where the certificate for ``app`` lives."""
    if not app or "/" in app or app.startswith("."):
        raise BadParameter(f"invalid application name {app!r}")
    return app_dir(profile) / f"{app}{_SUFFIX}"


def logged_in_apps(profile: Profile) -> list[str]:
    """Apps with a certificate on disk, sorted."""
    d = app_dir(profile)
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(_SUFFIX)] for p in d.glob(f"*{_SUFFIX}"))


def app_identity(profile: Profile, app: str) -> Identity | None:
    """The identity of the saved certificate for ``app`` (None when absent or unreadable)."""
    from cryptography import x509

    from jumpgate.core.errors import JumpgateError
    from jumpgate.core.tlsca import identity_from_certificate

    try:
        pem = app_cert_path(profile, app).read_bytes()
        return identity_from_certificate(x509.load_pem_x509_certificate(pem))
    except (FileNotFoundError, ValueError, JumpgateError):
        return None


def _client(profile: Profile) -> Any:
    from jumpgate.core.auth.client import AuthClient

    profile.require_valid()
    return AuthClient(profile.web_proxy_addr, profile.identity_file())


def list_apps(profile: Profile) -> list[dict[str, Any]]:
    """Apps the user may open (RPC ``apps.list``), sorted by name."""
    client = _client(profile)
    try:
        apps = client.call("apps.list")
    finally:
        client.close()
    return sorted((a for a in apps or [] if isinstance(a, dict)), key=lambda a: str(a["name"]))


def public_url(profile: Profile, public_addr: str) -> str:
    """``https://<public addr>[:<proxy port>]``: apps are served on the proxy's web port."""
    host = public_addr
    if ":" not in host and profile.proxy_port != 443:
        host = f"{host}:{profile.proxy_port}"
    return f"https://{host}"


def app_login(profile: Profile, app: str) -> tuple[Path, dict[str, Any]]:
    """Get and save a certificate for ``app``; returns its path and the app's listing."""
    info = next((a for a in list_apps(profile) if a["name"] == app), None)
    if info is None:
        raise NotFound(
            f'application "{app}" not found',
            hint="list the applications you can access with: tsh apps ls",
        )
    pub = public_key_to_pem(load_private_key(profile.key_pem()).public_key()).decode()
    remaining = max(int(profile.valid_for().total_seconds()), 60)
    client = _client(profile)
    try:
        resp = client.call(
            "certs.user",
            public_key=pub,
            ttl=remaining,
            cas=False,
            route_to_app={
                "name": app,
                "public_addr": str(info.get("public_addr") or ""),
                "cluster_name": profile.cluster,
                "session_id": str(uuid.uuid4()),
            },
        )
    finally:
        client.close()
    path = app_cert_path(profile, app)
    ensure_private_dir(path.parent)
    atomic_write(path, str(resp["cert"]).encode(), mode=0o600)
    return path, info


def resolve_app(profile: Profile, app: str | None) -> str:
    """``app``, or the only app logged in to; explain when that is ambiguous."""
    if app:
        return app
    apps = logged_in_apps(profile)
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise NotFound(
            "you are not logged in to any application",
            hint="log in with: tsh apps login APP (tsh apps ls lists them)",
        )
    raise BadParameter(
        f"multiple applications are logged in ({', '.join(apps)}); please specify one",
        hint=f"for example: tsh apps config {apps[0]}",
    )


def app_logout(profile: Profile, app: str | None = None) -> list[str]:
    """Remove the certificate of ``app`` (all apps when None); returns the apps logged out."""
    names = [app] if app else logged_in_apps(profile)
    removed = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            app_cert_path(profile, name).unlink()
            removed.append(name)
    if app and not removed:
        raise NotFound(
            f'you are not logged in to application "{app}"',
            hint="tsh apps ls marks the applications you are logged in to",
        )
    return removed


def _require(profile: Profile, app: str) -> Identity:
    ident = app_identity(profile, app)
    if ident is None or ident.route_to_app is None:
        raise NotFound(
            f'you are not logged in to application "{app}"',
            hint=f"log in with: tsh apps login {app}",
        )
    return ident


def curl_command(profile: Profile, app: str, uri: str) -> str:
    """The curl command line for ``app`` with the saved certificate."""
    return shlex.join(
        [
            "curl",
            "--cacert",
            str(profile.ca_path),
            "--cert",
            str(app_cert_path(profile, app)),
            "--key",
            str(profile.key_path),
            uri,
        ]
    )


def app_config(profile: Profile, app: str | None = None) -> dict[str, Any]:
    """Name, URI, CA, Cert, Key and the curl command for ``app``."""
    app = resolve_app(profile, app)
    ident = _require(profile, app)
    route = ident.route_to_app
    assert route is not None
    uri = public_url(profile, route.public_addr or f"{app}.{profile.proxy_host}")
    return {
        "name": app,
        "uri": uri,
        "ca": str(profile.ca_path),
        "cert": str(app_cert_path(profile, app)),
        "key": str(profile.key_path),
        "curl": curl_command(profile, app, uri),
        "expires": ident.expires.isoformat() if ident.expires else "",
    }


def app_cert_valid(profile: Profile, app: str, *, margin: timedelta = timedelta(0)) -> bool:
    """Whether a certificate for ``app`` is on disk and valid for at least ``margin``."""
    ident = app_identity(profile, app)
    if ident is None or ident.expires is None:
        return False
    return ident.expires - datetime.now(UTC) > margin


def ensure_app_login(profile: Profile, app: str) -> Path:
    """Reuse the saved certificate when valid, else log in again."""
    if app_cert_valid(profile, app, margin=RENEW_BEFORE):
        return app_cert_path(profile, app)
    return app_login(profile, app)[0]


def app_cert_provider(profile: Profile, app: str) -> Callable[[], tuple[bytes, bytes]]:
    """``client_cert_provider`` for a local proxy: the saved certificate, renewed near expiry."""
    from jumpgate.core.errors import JumpgateError

    def provide() -> tuple[bytes, bytes]:
        if not app_cert_valid(profile, app, margin=RENEW_BEFORE) and not profile.is_expired():
            with contextlib.suppress(JumpgateError):
                app_login(profile, app)
        try:
            cert = app_cert_path(profile, app).read_bytes()
        except FileNotFoundError:
            raise AccessDenied(
                f'not logged in to application "{app}"', hint=f"tsh apps login {app}"
            ) from None
        return cert, profile.key_pem()

    return provide


def app_local_proxy(profile: Profile, app: str, port: int = 0) -> Any:
    """The local proxy of ``tsh proxy app``: plain HTTP on 127.0.0.1, mutual TLS to the proxy."""
    from jumpgate.core.bot.proxy import AppLocalProxy

    ident = _require(profile, app)
    route = ident.route_to_app
    assert route is not None
    sni = (route.public_addr or f"{app}.{profile.proxy_host}").rsplit(":", 1)[0]
    return AppLocalProxy(
        "127.0.0.1",
        port,
        proxy_addr=profile.web_proxy_addr,
        sni=sni,
        alpn=["http/1.1"],
        ca_pem=profile.ca_pem(),
        client_cert_provider=app_cert_provider(profile, app),
        target=app,
        protocol="http",
        status_dir=profile.proxies_dir,
        insecure=profile.insecure,
        expired_hint=f"log in again: tsh apps login {app}",
    )
