"""A small real web application for the app access tests and the benchmark (aiohttp).

Run as ``python -m tests.integration.app_upstream --port P``; it prints
``ready <port>`` once it listens on 127.0.0.1.

Endpoints:

* ``GET /api/users`` — a JSON list of users (the seed guide's Grafana call);
* ``GET /api/headers`` — the request's headers as JSON (JWT, X-Forwarded-*, rewrites);
* ``GET /stream?mb=N`` — ``N`` MiB of bytes, streamed in 256 KiB chunks (chunked encoding);
* ``POST /upload`` — reads the body as a stream and answers ``{"bytes": n, "sha256": …}``;
* ``GET /ws`` — a websocket that echoes text and binary messages;
* ``GET /redirect`` — ``302`` to this app's own absolute ``/api/users`` URL;
* ``GET /`` — a tiny HTML page.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

from aiohttp import WSMsgType, web

USERS = [
    {"id": 1, "login": "admin", "email": "admin@localhost"},
    {"id": 2, "login": "viewer", "email": "viewer@localhost"},
]
CHUNK = b"x" * (256 * 1024)


async def users(request: web.Request) -> web.Response:
    return web.json_response(USERS)


async def headers(request: web.Request) -> web.Response:
    return web.json_response(dict(request.headers.items()))


async def stream(request: web.Request) -> web.StreamResponse:
    mb = int(request.query.get("mb", "1"))
    resp = web.StreamResponse()
    resp.content_type = "application/octet-stream"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(mb * 4):
        await resp.write(CHUNK)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        total += len(chunk)
    return web.json_response({"bytes": total, "sha256": digest.hexdigest()})


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str("echo: " + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"http://{request.app['self_host']}/api/users")


async def index(request: web.Request) -> web.Response:
    return web.Response(
        text="<!doctype html><title>app</title><p>hello</p>", content_type="text/html"
    )


def make_app(port: int) -> web.Application:
    app = web.Application()
    app["self_host"] = f"127.0.0.1:{port}"
    app.router.add_get("/api/users", users)
    app.router.add_get("/api/headers", headers)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/", index)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    async def on_startup(app: web.Application) -> None:
        print(f"ready {args.port}", flush=True)

    app = make_app(args.port)
    app.on_startup.append(on_startup)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    sys.exit(main())
