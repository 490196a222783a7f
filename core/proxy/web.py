"""The proxy's HTTPS API: what clients ask before they log in.

``/webapi/ping`` and ``/webapi/find`` (also under ``/v1``) describe the cluster
and the proxy; ``/webapi/auth/export`` hands out public CA certificates;
``/.well-known/jwks.json`` publishes the keys that sign app JWTs.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from jumpgate.core.proxy.web_login import register_login_routes
from jumpgate.core.tlsca import CAType, CertAuthority
from jumpgate.core.tlsca.export import EXPORT_TYPES, export_ca_type, render_export
from jumpgate.core.version import VERSION

MIN_CLIENT_VERSION = "0.1.0"


class ClusterInfo(Protocol):
    """What the web API needs from the auth service (in-process or remote)."""

    cluster_name: str
    second_factor: str
    cas: dict[CAType, CertAuthority]


def export_ca(info: ClusterInfo, export_type: str) -> bytes:
    """The public material of one CA in the form ``tctl auth export`` prints."""
    ca = info.cas[export_ca_type(export_type)]
    return render_export(info.cluster_name, ca.trusted_certs, export_type)


def jwks(info: ClusterInfo) -> dict[str, Any]:
    """JSON Web Key Set of the ``jwt`` CA (ES256)."""
    from jumpgate.core.app.jwt import public_jwk

    return {
        "keys": [
            public_jwk(pub)
            for cert in info.cas[CAType.JWT].trusted_certs
            if isinstance(pub := cert.public_key(), ec.EllipticCurvePublicKey)
        ]
    }


class WebAPI:
    """aiohttp routes of the proxy's web API."""

    def __init__(self, info: ClusterInfo, *, public_addr: str, web_listen_addr: str) -> None:
        self.info = info
        self.public_addr = public_addr
        self.web_listen_addr = web_listen_addr
        self.app = web.Application()
        r = self.app.router
        for prefix in ("", "/v1"):
            r.add_get(f"{prefix}/webapi/ping", self.ping)
            r.add_get(f"{prefix}/webapi/ping/{{connector}}", self.ping)
            r.add_get(f"{prefix}/webapi/find", self.find)
            r.add_get(f"{prefix}/webapi/auth/export", self.auth_export)
            r.add_get(
                f"{prefix}/webapi/automaticupgrades/channel/{{channel}}/version",
                self.upgrade_version,
            )
        r.add_get("/.well-known/jwks.json", self.jwks)
        if hasattr(info, "store"):  # the auth service runs in this process
            from jumpgate.core.proxy.web_agents import register_agent_routes

            register_agent_routes(self.app, info)
        r.add_get("/", self.index)
        from jumpgate.core.proxy.web_apps import register_app_login_routes

        #: the proxy's app frontend (set by ProxyService): browser sign-in for apps uses it
        self.app_frontend: Any = None
        # where app hosts send browsers without a certificate: sign-in, launch, sign-out
        register_app_login_routes(
            self.app, info, public_addr=public_addr, frontend=lambda: self.app_frontend
        )
        # login + invite pages (no-op unless ``info`` is an in-process AuthServer)
        register_login_routes(self.app, info, public_addr=public_addr)

    def proxy_settings(self) -> dict[str, Any]:
        """``proxy`` part of ping/find."""
        return {
            "kube": {"enabled": False},
            "ssh": {
                "listen_addr": "",
                "tunnel_listen_addr": "",
                "web_listen_addr": self.web_listen_addr,
                "public_addr": self.public_addr,
            },
            "db": {},
            "tls_routing_enabled": True,
        }

    def find_payload(self) -> dict[str, Any]:
        """Body of ``/webapi/find``."""
        return {
            "proxy": self.proxy_settings(),
            "server_version": VERSION,
            "min_client_version": MIN_CLIENT_VERSION,
            "cluster_name": self.info.cluster_name,
            "automatic_upgrades": False,
            "edition": "community",
            "fips": False,
        }

    async def find(self, request: web.Request) -> web.Response:
        """Cheap cluster discovery for agents."""
        return web.json_response(self.find_payload())

    async def ping(self, request: web.Request) -> web.Response:
        """Discovery plus authentication settings, for clients about to log in."""
        payload = self.find_payload()
        payload["auth"] = {
            "type": "local",
            "second_factor": self.info.second_factor,
            "preferred_local_mfa": "otp" if self.info.second_factor in ("otp", "on") else "",
            "local": {"name": ""},
            "private_key_policy": "none",
            "allow_passwordless": False,
            "allow_headless": False,
            "has_motd": False,
            "load_all_cas": False,
            "signature_algorithm_suite": "balanced-v1",
        }
        return web.json_response(payload)

    async def auth_export(self, request: web.Request) -> web.Response:
        """Public CA certificates: ``?type=tls-host|tls-user|db|db-client|host|user|jwt``."""
        export_type = request.query.get("type", "tls-host")
        if export_type not in EXPORT_TYPES:
            return web.json_response(
                {
                    "error": {
                        "message": f"unknown CA type {export_type!r}; use one of {', '.join(EXPORT_TYPES)}"
                    }
                },
                status=400,
            )
        body = export_ca(self.info, export_type)
        ctype = "application/octet-stream" if export_type.endswith("-der") else "text/plain"
        return web.Response(body=body, content_type=ctype)

    async def upgrade_version(self, request: web.Request) -> web.Response:
        """The version agents should run (``v<version>``, as Teleport's upgrade channel answers)."""
        return web.Response(text=f"v{VERSION}", content_type="text/plain")

    async def jwks(self, request: web.Request) -> web.Response:
        """Keys that verify ``Teleport-Jwt-Assertion`` tokens."""
        return web.json_response(jwks(self.info))

    async def index(self, request: web.Request) -> web.Response:
        """A plain landing page (the web UI is not part of Jumpgate)."""
        return web.Response(
            text=f"Jumpgate proxy for cluster {self.info.cluster_name}. Use tsh, tbot or jumpgate.\n",
            content_type="text/plain",
        )
