"""The auth API: JSON remote procedure calls over mutual TLS.

``POST /v1/rpc/<method>`` with a JSON object of parameters returns
``{"result": ...}`` or ``{"error": {"kind", "message", "hint"}}``. The caller is
whoever its client certificate says (host CA or user CA); every method checks
RBAC (or the ``Admin`` system role) and every denial is audited.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from cryptography import x509

from jumpgate.core.auth.server import ADMIN_ROLE, AuthServer
from jumpgate.core.errors import (
    AccessDenied,
    AlreadyExists,
    BadParameter,
    CompareFailed,
    JumpgateError,
    NotFound,
)
from jumpgate.core.tlsca import Identity, identity_from_certificate

log = logging.getLogger(__name__)

Handler = Callable[["ApiContext", dict[str, Any]], Awaitable[Any]]

_STATUS: dict[type[JumpgateError], int] = {
    BadParameter: 400,
    AccessDenied: 403,
    NotFound: 404,
    AlreadyExists: 409,
    CompareFailed: 412,
}


@dataclass(frozen=True)
class Method:
    """One API method and the permission it needs (``None`` = any authenticated caller)."""

    name: str
    fn: Handler
    kind: str | None = None
    verb: str | None = None


METHODS: dict[str, Method] = {}


def rpc(
    name: str, *, kind: str | None = None, verb: str | None = None
) -> Callable[[Handler], Handler]:
    """Register an API method. ``kind``/``verb`` name the RBAC rule it requires."""

    def deco(fn: Handler) -> Handler:
        METHODS[name] = Method(name, fn, kind, verb)
        return fn

    return deco


@dataclass
class ApiContext:
    """What a method gets: the auth server and the authenticated caller."""

    auth: AuthServer
    identity: Identity
    client_addr: str

    @property
    def is_admin(self) -> bool:
        """The local admin identity (``tctl`` on the auth host) may do everything."""
        return self.identity.system_role == ADMIN_ROLE

    def require(self, kind: str, verb: str) -> None:
        """Raise AccessDenied unless the caller's roles allow ``verb`` on ``kind``."""
        if self.is_admin:
            return
        self.auth.checker_for_identity(self.identity).require_rule(kind, verb)

    @property
    def caller(self) -> str:
        """The caller's user name for audit records."""
        return self.identity.username


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, bytes):
        return obj.decode()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """JSON for API responses."""
    return json.dumps(obj, default=_json_default, separators=(",", ":"))


class AuthAPI:
    """The aiohttp application serving :data:`METHODS` for one :class:`AuthServer`."""

    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        self._identities: OrderedDict[bytes, Identity] = OrderedDict()
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_post("/v1/rpc/{method}", self.handle)
        self.app.router.add_get("/v1/ping", self.ping)

    def _identity(self, request: web.Request) -> Identity:
        transport = request.transport
        ssl_obj = transport.get_extra_info("ssl_object") if transport else None
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        if not der:
            raise AccessDenied(
                "a client certificate is required", hint="use an identity file (-i) or log in"
            )
        ident = self._identities.get(der)
        if ident is None:
            ident = identity_from_certificate(x509.load_der_x509_certificate(der))
            self._identities[der] = ident
            if len(self._identities) > 4096:
                self._identities.popitem(last=False)
        if ident.expires is not None and ident.expires <= self.auth.clock():
            raise AccessDenied(f"certificate expired at {ident.expires}", hint="log in again")
        return ident

    async def ping(self, request: web.Request) -> web.Response:
        """Unauthenticated liveness and cluster name."""
        return web.json_response(
            {"cluster_name": self.auth.cluster_name, "server_version": version()}
        )

    async def handle(self, request: web.Request) -> web.Response:
        """Dispatch one RPC."""
        name = request.match_info["method"]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client_addr = f"{peer[0]}:{peer[1]}" if peer else ""
        identity: Identity | None = None
        try:
            identity = self._identity(request)
            method = METHODS.get(name)
            if method is None:
                raise NotFound(
                    f"unknown API method {name!r}", hint="client and server versions may differ"
                )
            if identity.system_role != ADMIN_ROLE:
                self.auth.check_lock(identity)
            ctx = ApiContext(self.auth, identity, client_addr)
            if method.kind and method.verb:
                ctx.require(method.kind, method.verb)
            body = await request.read()
            try:
                params = json.loads(body) if body else {}
            except ValueError:
                raise BadParameter("request body is not JSON") from None
            if not isinstance(params, dict):
                raise BadParameter("request body must be a JSON object")
            result = await method.fn(ctx, params)
            return web.Response(text=dumps({"result": result}), content_type="application/json")
        except JumpgateError as exc:
            status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
            if isinstance(exc, AccessDenied):
                self.auth.audit.emit(
                    "access.denied",
                    success=False,
                    user=identity.username if identity else None,
                    method=name,
                    error=exc.message,
                    addr=client_addr,
                )
            return web.Response(
                status=status, text=dumps({"error": exc.to_dict()}), content_type="application/json"
            )
        except Exception as exc:
            log.exception("API method %s failed", name)
            err = {"kind": "error", "message": f"internal error in {name}: {exc}"}
            return web.Response(
                status=500, text=dumps({"error": err}), content_type="application/json"
            )


def version() -> str:
    """The Jumpgate version string."""
    from jumpgate.core.version import VERSION

    return VERSION


def server_ssl_context(
    *, cert_file: str, key_file: str, client_ca_pem: bytes, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate from one of the given CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cadata=client_ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
