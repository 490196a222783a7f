"""Browser sign-in for applications: ``/web/login``, ``/web/launch`` and ``/web/logout``.

Application hosts send a browser without a valid certificate or app cookie to
``/web/login?redirect=<app URL>``. The page is a server-rendered form (no
JavaScript): user, password and, when the cluster requires it, a one-time code.
A successful post (same origin only; the checks, rate limits and ``user.login``
audit of ``POST /webapi/ssh/certs``) creates a web session (cookie
``__Host-session``) and continues to ``/web/launch`` — but only when ``redirect``
is an https URL of an application host of this cluster; anything else lands
on a neutral signed-in page, so the form is no open redirect.

``/web/launch?app=NAME&path=/p`` bounces once through the app host to pick up
its ``state`` nonce, then mints the app certificate and a single-use launch
token (:mod:`jumpgate.core.proxy.websession`) and sends the browser to
``https://<app host>/x-teleport-auth?token=…``, where the app frontend
(:mod:`jumpgate.core.proxy.apps`) sets the app session cookie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from jumpgate.core.auth import local
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import AccessDenied, BadParameter, JumpgateError, LimitExceeded
from jumpgate.core.proxy import websession as ws_store
from jumpgate.core.proxy.web_login import PAGE_HEADERS, _e, _page, _same_origin, _sentence

log = logging.getLogger(__name__)


def safe_path(path: str) -> str:
    """``path`` when it is a local absolute path (``/…``, not ``//host`` or ``/\\host``), else ``/``."""
    if (
        not path.startswith("/")
        or path.startswith(("//", "/\\"))
        or any(c in path for c in "\r\n\\")
    ):
        return "/"
    return path


def _help(app: str, proxy: str) -> str:
    app = app or "APP"
    return (
        "<h2>Without a browser</h2>"
        "<ul>"
        f"<li>People: <code>tsh login --proxy={_e(proxy)}</code>, then "
        f"<code>tsh apps login {_e(app)}</code> (prints a curl command) or "
        f"<code>tsh proxy app {_e(app)}</code> (a local HTTP port).</li>"
        f"<li>Machines: a tbot <code>application</code> output with "
        f"<code>app_name: {_e(app)}</code>; use its <code>tlscert</code> and <code>key</code>.</li>"
        "</ul>"
    )


class AppLoginRoutes:
    """The browser sign-in routes, bound to the in-process auth server and the app frontend."""

    def __init__(self, auth: AuthServer, public_addr: str, frontend: Callable[[], Any]) -> None:
        self.auth = auth
        self.public_addr = public_addr or auth.proxy_public_addr
        self._frontend = frontend
        host, _, port = self.public_addr.rpartition(":")
        self.port = port if host and port.isdigit() else ""

    # ------------------------------------------------------------------ helpers
    @property
    def frontend(self) -> Any:
        """The proxy's :class:`~jumpgate.core.proxy.apps.AppFrontend` (or None)."""
        return self._frontend()

    def _port_of(self, netloc_port: int | None) -> str:
        return str(netloc_port) if netloc_port is not None else "443"

    def app_target(self, redirect: str) -> tuple[str, str] | None:
        """``(app, path)`` when ``redirect`` is an https URL of an app host here, else None."""
        fe = self.frontend
        if fe is None or not redirect:
            return None
        try:
            parts = urlsplit(redirect)
            port = parts.port
        except ValueError:
            return None
        if parts.scheme != "https" or parts.username or parts.password or not parts.hostname:
            return None
        if self._port_of(port) != (self.port or "443"):
            return None
        app = str(fe.app_name_for(parts.hostname))
        if not app:
            return None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return app, safe_path(path)

    async def app_origin(self, app: str) -> str | None:
        """``https://<app host>[:port]`` of an app that is online, or None."""
        fe = self.frontend
        if fe is None:
            return None
        for srv in await fe.catalogue():
            if srv.spec.app.metadata.name == app:
                pub = str(srv.spec.app.spec.public_addr or f"{app}.{fe.public_host}")
                if ":" not in pub and self.port and self.port != "443":
                    pub = f"{pub}:{self.port}"
                return f"https://{pub}"
        return None

    @staticmethod
    def launch_path(app: str, path: str) -> str:
        """``/web/launch?app=…&path=…``."""
        return "/web/launch?" + urlencode({"app": app, "path": path})

    async def session(self, request: web.Request) -> ws_store.WebSession | None:
        """The request's live web session (None when absent, expired or forged)."""
        secret = request.cookies.get(ws_store.WEB_COOKIE, "")
        if not secret:
            return None
        return await ws_store.get_web_session(self.auth, secret)

    def _form(
        self,
        *,
        redirect: str,
        app: str,
        origin: str,
        user: str = "",
        error: str = "",
        status: int = 200,
        notice: str = "",
    ) -> web.Response:
        otp = local.otp_required(self.auth)
        invalid = ' aria-invalid="true" aria-describedby="form-error"' if error else ""
        parts = ["<h1>Sign in to Jumpgate</h1>"]
        if app:
            parts.append(f"<p>Sign in to open the application <strong>{_e(app)}</strong>.</p>")
        if notice:
            parts.append(f'<p class="hint" role="status">{_e(notice)}</p>')
        if error:
            parts.append(f'<div class="alert" role="alert" id="form-error">{_e(error)}</div>')
        parts += [
            '<form method="post" action="/web/login" novalidate>',
            f'<input type="hidden" name="redirect" value="{_e(redirect)}">',
            '<div class="field"><label for="user">User name</label>'
            f'<input id="user" name="user" type="text" value="{_e(user)}" '
            f'autocomplete="username" autocapitalize="none" spellcheck="false" required{invalid}>'
            "</div>",
            '<div class="field"><label for="password">Password</label>'
            '<input id="password" name="password" type="password" '
            f'autocomplete="current-password" required{invalid}></div>',
        ]
        if otp:
            otp_invalid = ' aria-invalid="true"' if error else ""
            parts.append(
                '<div class="field"><label for="otp_code">Authenticator code</label>'
                '<input id="otp_code" name="otp_code" type="text" inputmode="numeric" '
                'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required '
                f'aria-describedby="otp-hint"{otp_invalid}>'
                '<p class="hint" id="otp-hint">The 6-digit code your authenticator app shows now.'
                "</p></div>"
            )
        parts += ['<button type="submit">Sign in</button>', "</form>", _help(app, self.public_addr)]
        resp = _page("Sign in", "\n".join(parts), status=status)
        if origin:  # the post continues to the app host: let the form's redirects go there
            resp.headers["Content-Security-Policy"] = PAGE_HEADERS[
                "Content-Security-Policy"
            ].replace("form-action 'self'", f"form-action 'self' {origin}")
        return resp

    def _signed_in(self, ws: ws_store.WebSession, *, notice: str = "") -> web.Response:
        parts = [
            "<h1>You are signed in</h1>",
            f'<div class="ok" role="status">Signed in to Jumpgate as <strong>{_e(ws.user)}</strong> '
            f"until {ws.expires:%Y-%m-%d %H:%M} UTC.</div>",
        ]
        if notice:
            parts.append(f'<div class="alert" role="alert">{_e(notice)}</div>')
        parts += [
            "<p>Open an application at its address, for example "
            f"<code>https://APP.{_e(self.frontend.public_host if self.frontend else 'proxy')}"
            f"{':' + _e(self.port) if self.port and self.port != '443' else ''}/</code>; "
            "<code>tsh apps ls</code> lists the ones you may open.</p>",
            '<form method="post" action="/web/logout">'
            '<button type="submit">Sign out</button></form>',
        ]
        return _page("Signed in", "\n".join(parts))

    def _message(self, title: str, message: str, *, status: int, hint: str = "") -> web.Response:
        body = f'<h1>{_e(title)}</h1><div class="alert" role="alert">{_e(_sentence(message))}</div>'
        if hint:
            body += f"<p>{_e(_sentence(hint))}</p>"
        return _page(title, body, status=status)

    # ------------------------------------------------------------------ /web/login
    async def login_get(self, request: web.Request) -> web.StreamResponse:
        """The sign-in form; with a live session, straight on to the app (or the signed-in page)."""
        redirect = request.query.get("redirect", "")
        target = self.app_target(redirect)
        notice = (
            "The link you followed does not lead to an application of this cluster, "
            "so you will not be sent there."
            if redirect and target is None
            else ""
        )
        ws = await self.session(request)
        if ws is not None:
            if target is not None:
                raise web.HTTPFound(self.launch_path(*target), headers=PAGE_HEADERS)
            return self._signed_in(ws, notice=notice)
        origin = await self.app_origin(target[0]) if target else None
        return self._form(
            redirect=redirect if target else "",
            app=target[0] if target else "",
            origin=origin or "",
            notice=notice,
        )

    async def login_post(self, request: web.Request) -> web.StreamResponse:
        """Check the credentials; set the web session cookie; continue to the app."""
        if not _same_origin(request):
            return self._message(
                "Request refused",
                "this form was submitted from another site",
                status=403,
                hint="open the sign-in page of this proxy directly and try again",
            )
        try:
            form = await request.post()
        except ValueError:
            form = {}  # type: ignore[assignment]
        user = str(form.get("user", ""))[:256]
        password = str(form.get("password", ""))
        otp = str(form.get("otp_code", ""))
        redirect = str(form.get("redirect", ""))
        target = self.app_target(redirect)
        origin = (await self.app_origin(target[0]) if target else None) or ""

        def again(message: str, status: int) -> web.Response:
            return self._form(
                redirect=redirect if target else "",
                app=target[0] if target else "",
                origin=origin,
                user=user,
                error=message,
                status=status,
            )

        if not user:
            return again("Enter your user name.", 400)
        try:
            res = await local.authenticate(
                self.auth,
                user=user,
                password=password,
                otp_token=otp,
                client_ip=request.remote or "",
            )
        except LimitExceeded as exc:
            resp = again(_sentence(exc.message), 429)
            resp.headers["Retry-After"] = "60"
            return resp
        except AccessDenied as exc:
            return again(_sentence(exc.message), 403)
        secret, ws = await ws_store.create_web_session(
            self.auth, res, client_ip=request.remote or ""
        )
        location = self.launch_path(*target) if target else "/web/login"
        resp = web.Response(status=303, headers={**PAGE_HEADERS, "Location": location})
        resp.headers["Set-Cookie"] = ws_store.set_cookie(
            ws_store.WEB_COOKIE,
            secret,
            max_age=int(ws.remaining(self.auth.clock()).total_seconds()),
        )
        return resp

    # ------------------------------------------------------------------ /web/launch
    async def launch(self, request: web.Request) -> web.StreamResponse:
        """Mint an app certificate and a launch token; send the browser to the app host."""
        app = request.query.get("app", "")
        path = safe_path(request.query.get("path", "/"))
        state = request.query.get("state", "")
        origin = await self.app_origin(app) if app else None
        if origin is None:
            return self._message(
                "Application not available",
                f'application "{app}" is not available: no App Service serving it is connected'
                if app
                else "no application was named",
                status=404,
                hint="tsh apps ls shows the applications that are online",
            )
        ws = await self.session(request)
        if ws is None:
            raise web.HTTPFound(
                "/web/login?redirect=" + quote(origin + path, safe=""), headers=PAGE_HEADERS
            )
        if not state:  # pick up the app host's state nonce first
            raise web.HTTPFound(
                f"{origin}/x-teleport-auth?" + urlencode({"path": path}), headers=PAGE_HEADERS
            )
        denied = await self._check_app(ws, app, request.remote or "")
        if denied:
            return self._message(
                "Access denied",
                denied,
                status=403,
                hint="ask an administrator for a role that allows it",
            )
        try:
            token = await ws_store.create_launch_token(
                self.auth,
                ws,
                app=app,
                public_addr=urlsplit(origin).netloc,
                path=path,
                state=state,
                client_ip=request.remote or "",
            )
        except BadParameter as exc:
            return self._message("Cannot open the application", exc.message, status=400)
        except AccessDenied as exc:
            return self._message("Access denied", exc.message, status=403, hint=exc.hint or "")
        except JumpgateError as exc:  # the user was deleted meanwhile, ...
            return self._message("Cannot open the application", exc.message, status=403)
        raise web.HTTPFound(
            f"{origin}/x-teleport-auth?" + urlencode({"token": token}), headers=PAGE_HEADERS
        )

    async def _check_app(self, ws: ws_store.WebSession, app: str, addr: str) -> str:
        """Why the user may not open ``app`` ("" when allowed); refusals are audited."""
        from jumpgate.core.app.auth import app_servers
        from jumpgate.core.resources import User
        from jumpgate.core.tlsca import Identity

        try:
            user = await self.auth.store.get_as(User, ws.user)
        except JumpgateError:
            return f"user {ws.user} no longer exists"
        traits = {k: list(v) for k, v in (user.spec.traits or {}).items()}
        reason = ""
        lock = self.auth.find_lock(Identity(username=ws.user, groups=tuple(user.spec.roles)))
        if lock is not None:
            reason = f'{ws.user} is locked: "{lock.spec.message or "no message"}"'
        else:
            servers = [s for s in await app_servers(self.auth) if s.spec.app.metadata.name == app]
            labels = servers[0].spec.app.all_labels() if servers else {}
            decision = self.auth.checker_for(list(user.spec.roles), traits).check_app(
                name=app, labels=labels
            )
            if not decision.allowed:
                reason = f"access to app {app} denied: {decision.reason}"
        if reason:
            self.auth.audit.emit(
                "app.session.start",
                success=False,
                user=ws.user,
                roles=list(user.spec.roles),
                app_name=app,
                addr=addr,
                error=reason,
            )
        return reason

    # ------------------------------------------------------------------ /web/logout
    async def logout_get(self, request: web.Request) -> web.Response:
        """A sign-out button (signing out changes state, so it takes a POST)."""
        ws = await self.session(request)
        if ws is None:
            return _page(
                "Signed out",
                '<h1>You are signed out</h1><p class="ok" role="status">No Jumpgate sign-in '
                'is active in this browser.</p><p><a href="/web/login">Sign in</a></p>',
            )
        return _page(
            "Sign out",
            f"<h1>Sign out</h1><p>Signed in as <strong>{_e(ws.user)}</strong>. Signing out also "
            "ends this browser's sessions with applications.</p>"
            '<form method="post" action="/web/logout"><button type="submit">Sign out</button></form>',
        )

    async def logout_post(self, request: web.Request) -> web.Response:
        """Delete the web session and its app sessions, clear the cookie."""
        if not _same_origin(request):
            return self._message(
                "Request refused", "this form was submitted from another site", status=403
            )
        secret = request.cookies.get(ws_store.WEB_COOKIE, "")
        user, app_sessions = await ws_store.delete_web_session(self.auth, secret)
        fe = self.frontend
        if fe is not None and app_sessions:
            fe.close_browser_sessions(app_sessions, "signed out")
        if user:
            self.auth.audit.emit("user.logout", user=user, addr=request.remote or None)
        resp = _page(
            "Signed out",
            '<h1>You are signed out</h1><p class="ok" role="status">Your Jumpgate sign-in and '
            'its application sessions have ended.</p><p><a href="/web/login">Sign in again</a></p>',
        )
        resp.headers["Set-Cookie"] = ws_store.clear_cookie(ws_store.WEB_COOKIE)
        return resp


def register_app_login_routes(
    app: web.Application, auth: object, *, public_addr: str, frontend: Callable[[], Any]
) -> None:
    """Add ``/web/login``, ``/web/launch`` and ``/web/logout`` (with an in-process AuthServer;
    otherwise only an explanatory ``GET /web/login``)."""
    if not isinstance(auth, AuthServer):
        app.router.add_get("/web/login", _explain)
        return
    routes = AppLoginRoutes(auth, public_addr, frontend)
    r = app.router
    r.add_get("/web/login", routes.login_get)
    r.add_post("/web/login", routes.login_post)
    r.add_get("/web/launch", routes.launch)
    r.add_get("/web/logout", routes.logout_get)
    r.add_post("/web/logout", routes.logout_post)


async def _explain(request: web.Request) -> web.Response:
    return _page("Sign in", "<h1>Sign in to reach this application</h1>" + _help("", request.host))
