"""Login routes of the proxy's web port: ``POST /webapi/ssh/certs`` and the invite page.

``/web/invite/<token>`` is a small server-rendered HTML form (no JavaScript) where a
new local user chooses a password and, when the cluster requires it, enrolls a
TOTP authenticator from an inline SVG QR code. The pages send strict security
headers; a form post must come from the same origin when the browser says where
it comes from. Passwords, OTP secrets and tokens never reach a log.
"""

from __future__ import annotations

import html
import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from jumpgate.core.auth import local
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import AccessDenied, BadParameter, LimitExceeded, NotFound

log = logging.getLogger(__name__)

#: Headers on every HTML page of the invite flow.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
_JSON_HEADERS = {"Cache-Control": "no-store"}

_CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1b1b1f; --muted: #4a4a55;
  --accent: #0b57d0; --accent-fg: #ffffff; --border: #8a8a96; --err-bg: #fdecea;
  --err-fg: #8c1d18; --ok-bg: #e6f4ea; --ok-fg: #0d5224; --code-bg: #f1f1f4; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #121216; --fg: #ececf1; --muted: #b4b4c0; --accent: #a8c7fa;
    --accent-fg: #0b1d3a; --border: #8e8e9c; --err-bg: #3b1512; --err-fg: #ffb4ab;
    --ok-bg: #0f2d1a; --ok-fg: #a6e3b8; --code-bg: #23232b; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 1rem/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 36rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.5rem; line-height: 1.25; margin: 0 0 1rem; }
p, li { overflow-wrap: anywhere; }
.field { margin: 0 0 1.25rem; }
label { display: block; font-weight: 600; margin-bottom: 0.25rem; }
input { width: 100%; max-width: 100%; font: inherit; padding: 0.6rem 0.75rem;
  color: var(--fg); background: var(--bg); border: 2px solid var(--border);
  border-radius: 0.375rem; }
input[readonly] { background: var(--code-bg); }
input[aria-invalid="true"] { border-color: var(--err-fg); }
input:focus-visible, button:focus-visible { outline: 3px solid var(--accent);
  outline-offset: 2px; }
.hint { color: var(--muted); font-size: 0.95rem; margin: 0.25rem 0 0; }
fieldset { border: 2px solid var(--border); border-radius: 0.5rem; margin: 0 0 1.25rem;
  padding: 1rem; min-width: 0; }
legend { font-weight: 700; padding: 0 0.25rem; }
.qr { background: #ffffff; display: inline-block; padding: 0.5rem; border-radius: 0.375rem;
  max-width: 100%; }
.qr svg { display: block; width: 100%; max-width: 16rem; height: auto; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  background: var(--code-bg); border-radius: 0.25rem; }
code { padding: 0.1rem 0.3rem; overflow-wrap: anywhere; }
pre { padding: 0.75rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.secret { letter-spacing: 0.08em; font-size: 1.05rem; }
button { font: inherit; font-weight: 600; padding: 0.65rem 1.25rem; border: 0;
  border-radius: 0.375rem; background: var(--accent); color: var(--accent-fg);
  cursor: pointer; }
.alert { background: var(--err-bg); color: var(--err-fg); border-left: 0.3rem solid;
  padding: 0.75rem 1rem; margin: 0 0 1.25rem; border-radius: 0.25rem; }
.ok { background: var(--ok-bg); color: var(--ok-fg); padding: 0.75rem 1rem;
  border-radius: 0.25rem; margin: 0 0 1rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    doc = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)} · Jumpgate</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    return web.Response(
        text=doc, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


def _qr_svg(uri: str) -> str:
    import segno  # only the invite page needs it: keep the daemon's start-up lean

    qr = segno.make(uri, error="m")
    svg: str = qr.svg_inline(
        scale=5,
        border=4,
        dark="#000000",
        light="#ffffff",
        title="QR code for your authenticator app",
    )
    return svg.replace("<svg ", '<svg role="img" aria-labelledby="qr-title" ', 1).replace(
        "<title>", '<title id="qr-title">', 1
    )


def _sentence(text: str) -> str:
    """``text`` with a capital first letter and a full stop."""
    text = text.strip()
    if not text:
        return ""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _group(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def invite_form(token: str, invite: local.Invite, *, error: str = "", error_field: str = "") -> str:
    """The HTML body of the invite form (with an error message when ``error``)."""

    def invalid(name: str) -> str:
        return ' aria-invalid="true"' if error and error_field == name else ""

    def described(name: str, *ids: str) -> str:
        refs = [*ids, "form-error"] if error and error_field == name else list(ids)
        return f' aria-describedby="{" ".join(refs)}"' if refs else ""

    parts = [
        "<h1>Set up your Jumpgate account</h1>",
        f"<p>Choose a password for the user <strong>{_e(invite.user)}</strong>.</p>",
    ]
    if error:
        parts.append(f'<div class="alert" role="alert" id="form-error">{_e(error)}</div>')
    parts += [
        f'<form method="post" action="/web/invite/{_e(token)}" novalidate>',
        '<div class="field"><label for="username">User name</label>'
        f'<input id="username" name="username" type="text" value="{_e(invite.user)}" '
        'autocomplete="username" readonly></div>',
        '<div class="field"><label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="new-password" '
        f'required minlength="{local.MIN_PASSWORD_LEN}" maxlength="{local.MAX_PASSWORD_LEN}"'
        f"{described('password', 'password-rules')}{invalid('password')}>"
        f'<p class="hint" id="password-rules">Use {local.MIN_PASSWORD_LEN} to '
        f"{local.MAX_PASSWORD_LEN} characters. A passphrase of several words works well.</p>"
        "</div>",
        '<div class="field"><label for="password_confirm">Confirm password</label>'
        '<input id="password_confirm" name="password_confirm" type="password" '
        'autocomplete="new-password" required'
        f"{described('password_confirm', 'confirm-rules')}{invalid('password_confirm')}>"
        '<p class="hint" id="confirm-rules">Type the same password again.</p></div>',
    ]
    if invite.otp_required and invite.otp_secret:
        parts += [
            "<fieldset><legend>Two-factor authentication</legend>",
            "<p>This cluster requires a one-time code from an authenticator app at every "
            "login. Scan this QR code with the app:</p>",
            f'<div class="qr">{_qr_svg(invite.otp_uri())}</div>',
            '<p id="otp-secret-label">Or enter this key in the app by hand (time-based, '
            "6 digits, 30 seconds):</p>",
            f'<p><code class="secret" id="otp-secret" aria-labelledby="otp-secret-label">'
            f"{_e(_group(invite.otp_secret))}</code></p>",
            '<div class="field"><label for="otp_code">Authenticator code</label>'
            '<input id="otp_code" name="otp_code" type="text" inputmode="numeric" '
            'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required'
            f"{described('otp_code', 'otp-rules')}{invalid('otp_code')}>"
            '<p class="hint" id="otp-rules">The 6-digit code the app shows now.</p></div>',
            "</fieldset>",
        ]
    parts += ['<button type="submit">Set password</button>', "</form>"]
    return "\n".join(parts)


def _same_origin(request: web.Request) -> bool:
    """False when the browser tells us the form was posted from another site."""
    host = request.headers.get("Host", "").lower()
    site = request.headers.get("Sec-Fetch-Site", "")
    if site and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin == "null":  # opaque: sent under Referrer-Policy no-referrer
            return site == "same-origin"
        return urlsplit(origin).netloc.lower() == host
    referer = request.headers.get("Referer")
    if referer:
        return urlsplit(referer).netloc.lower() == host
    return True


def _json_error(status: int, message: str, hint: str | None = None) -> web.Response:
    err: dict[str, str] = {"message": message}
    if hint:
        err["hint"] = hint
    return web.json_response({"error": err}, status=status, headers=_JSON_HEADERS)


class LoginRoutes:
    """Handlers bound to one in-process auth server."""

    def __init__(self, auth: AuthServer, public_addr: str) -> None:
        self.auth = auth
        self.public_addr = public_addr or auth.proxy_public_addr

    async def ssh_certs(self, request: web.Request) -> web.Response:
        """``POST /webapi/ssh/certs``: password (+ OTP) login that returns a user certificate."""
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _json_error(400, "the request body must be a JSON object")
        if not isinstance(body, dict):
            return _json_error(400, "the request body must be a JSON object")
        fields: dict[str, Any] = {}
        for name in ("user", "password", "otp_token", "tls_pub_key"):
            value = body.get(name, "")
            if not isinstance(value, str):
                return _json_error(400, f"{name} must be a string")
            fields[name] = value
        ttl = body.get("ttl", 0)
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            return _json_error(400, "ttl must be an integer number of nanoseconds")
        if not fields["user"]:
            return _json_error(400, "user is required")
        if not fields["tls_pub_key"]:
            return _json_error(400, "tls_pub_key is required (a PEM public key)")
        try:
            out = await local.login(
                self.auth,
                user=fields["user"],
                password=fields["password"],
                otp_token=fields["otp_token"],
                tls_pub_key=fields["tls_pub_key"].encode(),
                ttl_ns=ttl,
                client_ip=request.remote or "",
            )
        except LimitExceeded as exc:
            resp = _json_error(429, exc.message, exc.hint)
            resp.headers["Retry-After"] = "60"
            return resp
        except AccessDenied as exc:
            return _json_error(403, exc.message, exc.hint)
        except NotFound:  # the user vanished between the checks
            return _json_error(403, local.GENERIC_LOGIN_ERROR)
        except BadParameter as exc:
            return _json_error(400, exc.message, exc.hint)
        return web.json_response(out, headers=_JSON_HEADERS)

    def _invalid_page(self, exc: NotFound) -> web.Response:
        body = (
            "<h1>Invite link not valid</h1>"
            f'<div class="alert" role="alert">{_e(_sentence(exc.message))}</div>'
            f"<p>{_e(_sentence(exc.hint or ''))}</p>"
        )
        return _page("Invite link not valid", body, status=404)

    async def invite_get(self, request: web.Request) -> web.Response:
        """The invite form."""
        token = request.match_info["token"]
        try:
            invite = await local.invite_info(self.auth, token)
        except NotFound as exc:
            return self._invalid_page(exc)
        return _page("Set up your account", invite_form(token, invite))

    async def invite_post(self, request: web.Request) -> web.Response:
        """Submit the invite form: set the password, or show the form again with the error."""
        token = request.match_info["token"]
        if not _same_origin(request):
            return _page(
                "Request refused",
                '<h1>Request refused</h1><div class="alert" role="alert">This form was '
                "submitted from another site. Open the invite link directly and try again."
                "</div>",
                status=403,
            )
        try:
            form = await request.post()
        except ValueError:
            form = {}  # type: ignore[assignment]
        values = {k: str(form.get(k, "")) for k in ("password", "password_confirm", "otp_code")}
        try:
            user = await local.complete_invite(
                self.auth,
                token,
                password=values["password"],
                password_confirm=values["password_confirm"],
                otp_code=values["otp_code"],
            )
        except NotFound as exc:
            return self._invalid_page(exc)
        except BadParameter as exc:
            try:
                invite = await local.invite_info(self.auth, token)
            except NotFound as nf:
                return self._invalid_page(nf)
            message = " ".join(filter(None, (_sentence(exc.message), _sentence(exc.hint or ""))))
            field = exc.field if isinstance(exc, local.InviteFormError) else ""
            body = invite_form(token, invite, error=message, error_field=field)
            return _page("Set up your account", body, status=400)
        command = f"tsh login --proxy={self.public_addr} --user={user}"
        body = (
            "<h1>Your account is ready</h1>"
            f'<div class="ok" role="status">The password for <strong>{_e(user)}</strong> '
            "is set.</div>"
            "<p>Log in from a terminal with:</p>"
            f"<pre><code>{_e(command)}</code></pre>"
            "<p>This invite link has now been used and no longer works.</p>"
        )
        return _page("Account ready", body)


def register_login_routes(app: web.Application, auth: object, *, public_addr: str = "") -> None:
    """Add the login and invite routes to the proxy's app (only for an in-process AuthServer)."""
    if not isinstance(auth, AuthServer):
        return
    routes = LoginRoutes(auth, public_addr)
    r = app.router
    for prefix in ("", "/v1"):
        r.add_post(f"{prefix}/webapi/ssh/certs", routes.ssh_certs)
    r.add_get("/web/invite/{token}", routes.invite_get)
    r.add_post("/web/invite/{token}", routes.invite_post)
