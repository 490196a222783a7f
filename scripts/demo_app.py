"""The demo's web application: what an app behind Jumpgate sees.

``GET /api/users`` answers a JSON list (the Machine ID guide's Grafana call);
``GET /`` shows who is calling, from the ``Teleport-Jwt-Assertion`` header the
proxy signs (its claims are decoded for display only: a real app verifies the
signature against ``https://<proxy>/.well-known/jwks.json``).

Run: ``python scripts/demo_app.py --port 18080`` (listens on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import base64
import html
import json

from aiohttp import web

USERS = [
    {"id": 1, "login": "admin", "email": "admin@localhost"},
    {"id": 2, "login": "viewer", "email": "viewer@localhost"},
]


def _claims(token: str) -> dict[str, object]:
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


async def users(request: web.Request) -> web.Response:
    return web.json_response(USERS)


async def index(request: web.Request) -> web.Response:
    claims = _claims(request.headers.get("Teleport-Jwt-Assertion", ""))
    who = html.escape(str(claims.get("username", "someone without a Jumpgate JWT")))
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in claims.items()
    )
    page = (
        "<!doctype html><meta charset=utf-8><title>Jumpgate demo app</title>"
        f"<h1>Hello, {who}</h1><p>The proxy vouched for you with a signed JWT:</p>"
        f"<table>{rows}</table><p><a href=/api/users>/api/users</a></p>"
    )
    return web.Response(text=page, content_type="text/html")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/users", users)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
