"""``/web/login``: where application hosts send browsers that have no valid certificate.

Jumpgate has no web UI; the page says how to reach the application with a
certificate (``tsh apps login``, ``tsh proxy app`` or a tbot application
output) and links back to where the browser was going.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

from aiohttp import web


def _app_name(redirect: str) -> str:
    host = urlsplit(redirect).hostname or ""
    return host.split(".", 1)[0] if "." in host else ""


async def web_login(request: web.Request) -> web.Response:
    """A plain HTML page (no JavaScript) explaining how to sign in to an application."""
    redirect = request.query.get("redirect", "")
    if not redirect.startswith("https://"):
        redirect = ""
    app = _app_name(redirect) or "APP"
    back = (
        f'<p>Then go back to <a href="{escape(redirect)}">{escape(redirect)}</a>.</p>'
        if redirect
        else ""
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Jumpgate</title></head>
<body>
<h1>Sign in to reach this application</h1>
<p>Applications behind this Jumpgate proxy need a client certificate.</p>
<ul>
<li>People: <code>tsh login --proxy={escape(request.host)}</code>, then
<code>tsh apps login {escape(app)}</code> (prints a curl command) or
<code>tsh proxy app {escape(app)}</code> (a local HTTP port).</li>
<li>Machines: a tbot <code>application</code> output with <code>app_name: {escape(app)}</code>;
use its <code>tlscert</code> and <code>key</code>.</li>
</ul>
{back}
</body></html>
"""
    return web.Response(
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def register_app_login_routes(app: web.Application) -> None:
    """Add ``GET /web/login``."""
    app.router.add_get("/web/login", web_login)
