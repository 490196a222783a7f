"""Browser sign-in endpoints on application hosts: ``/x-teleport-auth`` and ``/x-teleport-logout``.

``/x-teleport-auth`` without a token sets this browser's state nonce (a host-only
cookie) and sends it to the proxy's ``/web/launch``; with a token (from
``/web/launch``) it consumes the token — single use, expiry, app and nonce
checked, audited as ``app.session.launch`` — sets the app session cookie and
redirects to the path. ``/x-teleport-logout`` deletes the app session, closes its
live connections and clears the cookie. See docs/design/app-access.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlencode

from jumpgate.core.app.http1 import Head
from jumpgate.core.app.http1 import simple_response as _response
from jumpgate.core.proxy import web_apps, websession
from jumpgate.core.proxy.apps import LOGOUT_PATH
from jumpgate.core.relay import Handshake

if TYPE_CHECKING:
    from jumpgate.core.proxy.apps import AppFrontend


async def browser_endpoint(
    fe: AppFrontend, hs: Handshake, head: Head, app: str, path: str, client_addr: str
) -> None:
    """Answer one request for ``path`` (``/x-teleport-auth`` or ``/x-teleport-logout``) on ``app``'s host."""

    cookies = websession.parse_cookies((head.get(b"cookie") or b"").decode("latin-1"))
    query = parse_qs(head.target.partition("?")[2])
    security = [("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")]
    if path == LOGOUT_PATH:
        session = await websession.delete_app_session(
            fe.auth, cookies.get(websession.APP_COOKIE, "")
        )
        if session is not None:
            fe.close_browser_sessions([session.session_id], "signed out")
            fe.auth.audit.emit(
                "app.session.logout", user=session.user, app_name=app, sid=session.session_id
            )
        body = (
            '<!doctype html><html lang="en"><meta charset="utf-8"><title>Signed out</title>'
            f"<h1>Signed out of {escape(app)}</h1><p>This browser's session with the "
            f'application has ended. <a href="https://{escape(fe.public_addr)}/web/logout">'
            "Sign out of Jumpgate</a> too, or "
            f'<a href="/">sign in to {escape(app)} again</a>.</p>'
        ).encode()
        fe._write(
            hs,
            _response(
                200,
                body,
                content_type="text/html; charset=utf-8",
                headers=[
                    ("Set-Cookie", websession.clear_cookie(websession.APP_COOKIE)),
                    *security,
                ],
            ),
        )
        return
    if head.method not in ("GET", "HEAD"):
        fe._reply(hs, 405, f"{path} takes GET", head)
        return
    token = (query.get("token") or [""])[0]
    if not token:  # start: a state nonce for this browser, then the proxy's launcher
        state = websession.new_secret()
        target = web_apps.safe_path((query.get("path") or ["/"])[0])
        location = f"https://{fe.public_addr}/web/launch?" + urlencode(
            {"app": app, "path": target, "state": state}
        )
        cookie = websession.set_cookie(
            websession.STATE_COOKIE, state, max_age=int(websession.STATE_TTL.total_seconds())
        )
        fe._write(
            hs,
            _response(
                302,
                b"",
                headers=[("Location", location), ("Set-Cookie", cookie), *security],
            ),
        )
        return
    try:
        grant = await websession.consume_launch_token(
            fe.auth, token, app=app, state=cookies.get(websession.STATE_COOKIE, "")
        )
    except websession.LaunchRefused as exc:
        fe.auth.audit.emit(
            "app.session.launch",
            success=False,
            app_name=app,
            addr=client_addr,
            error=exc.message,
        )
        fe._reply(
            hs,
            403,
            exc.message,
            head,
            hint=f"open https://{fe.public_addr}/web/launch?app={quote(app)} to sign in again",
        )
        return
    sess = grant.session
    fe.auth.audit.emit(
        "app.session.launch",
        user=sess.user,
        app_name=app,
        sid=sess.session_id,
        addr=client_addr,
    )
    max_age = max(1, int((sess.expires - datetime.now(UTC)).total_seconds()))
    fe._write(
        hs,
        _response(
            302,
            b"",
            headers=[
                ("Location", grant.path),
                (
                    "Set-Cookie",
                    websession.set_cookie(websession.APP_COOKIE, grant.cookie, max_age=max_age),
                ),
                ("Set-Cookie", websession.clear_cookie(websession.STATE_COOKIE)),
                *security,
            ],
        ),
    )
