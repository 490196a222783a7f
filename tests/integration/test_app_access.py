"""Application access end to end: a real web app behind a real cluster, reached with curl,
tbot outputs and ``tbot proxy app``; JWTs checked with PyJWT against the proxy's JWKS."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.apphelpers import (
    APP_ROLE,
    DEV_ROLE,
    add_app_service,
    app_bot,
    audit_events,
    curl,
    rss_kib,
    served_dns_names,
    split_response,
    start_tbot_proxy,
    stop_process,
    tls_context,
    upstream_app,
    wait_for_event,
    websocket_echo,
)
from tests.integration.conftest import Cluster, make_cluster

APP = "grafana-example"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with upstream_app() as port:
        yield port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[Cluster]:
    """An all-in-one cluster whose App Service serves the test app (and a "prod" copy)."""
    c = make_cluster(tmp_path_factory.mktemp("apps"))
    uri = f"http://127.0.0.1:{upstream}"
    add_app_service(
        c,
        [
            {
                "name": APP,
                "description": "The test app",
                "uri": uri,
                "labels": {"env": "dev"},
                "rewrite": {
                    "headers": [
                        "Authorization: Bearer {{internal.jwt}}",
                        "X-Static: seed-003",
                        "X-Logins: {{internal.logins}}",
                    ]
                },
            },
            {"name": "prod-app", "uri": uri, "labels": {"env": "prod"}},
        ],
    )
    c.start()
    try:
        c.tctl("create", "-f", "/dev/stdin", input=APP_ROLE)
        c.tctl("create", "-f", "/dev/stdin", input=DEV_ROLE)
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


@pytest.fixture(scope="module")
def bot(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A bot with an application output for grafana-example (specific_tls_naming on)."""
    user, _, dest = app_bot(cluster, tmp_path_factory.mktemp("bot"), specific_tls_naming=True)
    return user, dest


def certs(dest: Path) -> dict[str, Path]:
    return {"cert": dest / "tlscert", "key": dest / "key", "ca": dest / "teleport-host-ca.crt"}


# ---------------------------------------------------------------------- the seed's path
def test_curl_with_the_bot_certificate_reaches_the_app(
    cluster: Cluster, bot: tuple[str, Path]
) -> None:
    _, dest = bot
    out = curl(cluster, "/api/users", **certs(dest))
    assert [u["login"] for u in json.loads(out.stdout)] == ["admin", "viewer"]
    # specific_tls_naming: tls.crt / tls.key work the same
    assert (dest / "tls.crt").read_bytes() == (dest / "tlscert").read_bytes()
    out = curl(
        cluster,
        "/api/users",
        cert=dest / "tls.crt",
        key=dest / "tls.key",
        ca=dest / "tls.cas",
    )
    assert json.loads(out.stdout)[0]["login"] == "admin"


def test_without_a_certificate_clients_are_redirected_and_json_clients_get_401(
    cluster: Cluster, bot: tuple[str, Path]
) -> None:
    _, dest = bot
    ca = dest / "teleport-host-ca.crt"
    status, headers, _ = split_response(
        curl(cluster, "/api/users?x=1", "-i", "-H", "Accept: text/html", ca=ca).stdout
    )
    assert status == 302
    assert headers["location"].startswith(f"https://{cluster.public_addr}/web/login?redirect=")
    assert "grafana-example.localhost" in headers["location"]
    # "scripted clients will be redirected to the Teleport login page" (seed 003) - and
    # told why in the body curl prints
    status, headers, body = split_response(curl(cluster, "/api/users", "-i", ca=ca).stdout)
    assert status == 302 and headers["location"].startswith(f"https://{cluster.public_addr}/")
    assert "no client certificate" in body and "--cert tlscert --key key" in body
    # an API client asking for JSON gets a 401 it can parse
    status, headers, body = split_response(
        curl(cluster, "/api/users", "-i", "-H", "Accept: application/json", ca=ca).stdout
    )
    assert status == 401 and headers["content-type"] == "application/json"
    assert "no client certificate" in json.loads(body)["error"]["message"]


def test_a_certificate_for_another_app_or_an_expired_one_is_refused(
    cluster: Cluster, bot: tuple[str, Path], tmp_path: Path
) -> None:
    _, dest = bot
    ca = dest / "teleport-host-ca.crt"
    status, _, body = split_response(
        curl(
            cluster,
            "/api/users",
            "-i",
            "-H",
            "Accept: application/json",
            app="prod-app",
            cert=dest / "tlscert",
            key=dest / "key",
            ca=ca,
        ).stdout
    )
    assert status == 401
    msg = json.loads(body)["error"]["message"]
    assert 'for application "grafana-example", not "prod-app"' in msg
    cluster.tctl("users", "add", "carol", "--roles=access")
    cluster.tctl(
        "auth",
        "sign",
        "--user=carol",
        f"--app-name={APP}",
        "--format=tls",
        "--ttl=2s",
        f"--out={tmp_path / 'carol'}",
    )
    time.sleep(3.5)  # the certificate must be past its expiry
    status, _, body = split_response(
        curl(
            cluster,
            "/api/users",
            "-i",
            "-H",
            "Accept: application/json",
            cert=tmp_path / "carol.crt",
            key=tmp_path / "carol.key",
            ca=ca,
        ).stdout
    )
    assert status == 401 and "expired at" in body, body


def test_the_jwt_verifies_against_the_proxy_jwks_and_headers_are_rewritten(
    cluster: Cluster, bot: tuple[str, Path], upstream: int
) -> None:
    import jwt as pyjwt

    user, dest = bot
    got = json.loads(
        curl(
            cluster,
            "/api/headers",
            "-H",
            "Teleport-Jwt-Assertion: forged",
            "-H",
            "X-Forwarded-For: 10.9.9.9",
            **certs(dest),
        ).stdout
    )
    token = got["Teleport-Jwt-Assertion"]
    assert token != "forged" and got["X-Forwarded-For"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "https"
    assert got["X-Forwarded-Host"] == f"grafana-example.localhost:{cluster.web_port}"
    assert got["Host"] == f"127.0.0.1:{upstream}"
    assert got["Authorization"] == f"Bearer {token}"  # rewrite.headers with {{internal.jwt}}
    assert got["X-Static"] == "seed-003"
    assert "X-Logins" not in got  # the bot has no logins trait: that header is left out

    ssl_ctx = tls_context(dest)
    conn = http.client.HTTPSConnection("localhost", cluster.web_port, context=ssl_ctx, timeout=30)
    conn.request("GET", "/.well-known/jwks.json")
    jwks = json.loads(conn.getresponse().read())
    conn.close()
    header = pyjwt.get_unverified_header(token)
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    key = pyjwt.PyJWK(jwk).key
    claims = pyjwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=f"http://127.0.0.1:{upstream}",
        issuer="example.com",
    )
    assert claims["username"] == claims["sub"] == user
    assert claims["roles"] == ["machine-id-app-role"]
    assert isinstance(claims["traits"], dict)
    assert claims["nbf"] <= time.time() < claims["exp"]


def test_keep_alive_head_post_chunked_and_location_rewrite(
    cluster: Cluster, bot: tuple[str, Path]
) -> None:
    _, dest = bot
    conn = http.client.HTTPSConnection(
        "grafana-example.localhost", cluster.web_port, context=tls_context(dest), timeout=30
    )
    conn.sock = None
    import socket

    raw = socket.create_connection(("127.0.0.1", cluster.web_port))
    conn.sock = tls_context(dest).wrap_socket(raw, server_hostname="grafana-example.localhost")
    try:
        conn.request("GET", "/api/users")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())[0]["login"] == "admin"
        conn.request("HEAD", "/api/users")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b""
        body = b"y" * 300_000
        conn.request("POST", "/upload", body=body)
        r = conn.getresponse()
        assert json.loads(r.read())["bytes"] == len(body)
        conn.request(
            "POST", "/upload", body=iter([b"a" * 1000, b"b" * 70_000]), encode_chunked=True
        )
        r = conn.getresponse()
        assert json.loads(r.read())["bytes"] == 71_000
        conn.request("GET", "/redirect")
        r = conn.getresponse()
        r.read()
        assert r.status == 302
        assert r.getheader("Location") == (
            f"https://grafana-example.localhost:{cluster.web_port}/api/users"
        )
    finally:
        conn.close()


def test_a_100_mb_download_streams_with_bounded_proxy_memory(
    cluster: Cluster, bot: tuple[str, Path]
) -> None:
    _, dest = bot
    before = rss_kib(cluster.pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(cluster.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = curl(
            cluster, "/stream?mb=100", "-o", "/dev/null", "-w", "%{size_download}", **certs(dest)
        )
    finally:
        done.set()
        sampler.join()
    assert int(out.stdout) == 100 * 1024 * 1024
    grew_mib = (peak[0] - before) / 1024
    assert grew_mib < 40, f"the proxy grew by {grew_mib:.0f} MiB while streaming 100 MiB"


def test_upload_is_streamed_intact(cluster: Cluster, bot: tuple[str, Path], tmp_path: Path) -> None:
    import hashlib
    import os

    _, dest = bot
    data = os.urandom(20 * 1024 * 1024)
    (tmp_path / "up.bin").write_bytes(data)
    out = curl(cluster, "/upload", "--data-binary", f"@{tmp_path / 'up.bin'}", **certs(dest))
    got = json.loads(out.stdout)
    assert got == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_websocket_through_the_proxy_and_through_tbot_proxy_app(
    cluster: Cluster, bot: tuple[str, Path]
) -> None:
    _, dest = bot
    url = f"https://grafana-example.localhost:{cluster.web_port}/ws"
    answers = websocket_echo(
        url, ["one", "two"], ssl_ctx=tls_context(dest), resolve_port=cluster.web_port
    )
    assert answers == ["echo: one", "echo: two"]
    port = free_port()
    proc = start_tbot_proxy(
        "proxy",
        f"--destination-dir={dest}",
        f"--proxy={cluster.public_addr}",
        "app",
        f"--port={port}",
        APP,
        ready="Any local user",
    )
    try:
        assert websocket_echo(f"http://127.0.0.1:{port}/ws", ["three"]) == ["echo: three"]
        out = curl_plain(port, "/api/users")
        assert json.loads(out)[1]["login"] == "viewer"
    finally:
        stop_process(proc)


def curl_plain(port: int, path: str) -> str:
    import subprocess

    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", f"http://localhost:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_rbac_by_app_labels_is_enforced_and_audited(cluster: Cluster, tmp_path: Path) -> None:
    user, _, dest = app_bot(cluster, tmp_path, app="prod-app", roles="app-dev-only")
    status, _, body = split_response(
        curl(cluster, "/api/users", "-i", app="prod-app", **certs(dest)).stdout
    )
    assert status == 403, body
    assert "app labels do not match" in json.loads(body)["error"]["message"]
    ev = wait_for_event(cluster, "app.session.start", user=user, app_name="prod-app")
    assert ev["success"] is False and "app labels do not match" in ev["error"]


def test_sessions_are_audited_with_each_request(cluster: Cluster, bot: tuple[str, Path]) -> None:
    user, dest = bot
    marker = f"page={uuid.uuid4().hex}"  # the bot is shared: find this request's events
    curl(cluster, f"/api/users?{marker}", **certs(dest))

    def this_request() -> dict[str, Any] | None:
        for ev in audit_events(cluster, "app.session.chunk"):
            for r in ev.get("requests", []):
                if ev.get("user") == user and r.get("raw_query") == marker:
                    return {"event": ev, "request": r}
        return None

    deadline = time.monotonic() + 20
    found = this_request()
    while found is None and time.monotonic() < deadline:
        time.sleep(0.2)
        found = this_request()
    assert found is not None, f"no app.session.chunk with {marker}"
    req = found["request"]
    assert (req["method"], req["path"], req["status_code"]) == ("GET", "/api/users", 200)
    sid = found["event"]["sid"]
    start = wait_for_event(cluster, "app.session.start", user=user, sid=sid)
    assert start["success"] is True
    assert start["app_name"] == APP and start["app_uri"].startswith("http://127.0.0.1:")
    end = wait_for_event(cluster, "app.session.end", user=user, sid=sid)
    assert end["requests"] >= 1


def test_a_lock_cuts_a_live_session_and_refuses_new_ones(cluster: Cluster, tmp_path: Path) -> None:
    user, _, dest = app_bot(cluster, tmp_path)
    port = free_port()
    proc = start_tbot_proxy(
        "proxy",
        f"--destination-dir={dest}",
        f"--proxy={cluster.public_addr}",
        "app",
        f"--port={port}",
        APP,
        ready="Any local user",
    )
    try:
        import socket

        live = socket.create_connection(("127.0.0.1", port))
        live.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
        first = live.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        cluster.tctl("lock", f"--user={user}", "--message=stolen laptop")
        live.settimeout(20)
        deadline = time.monotonic() + 20
        closed = False
        while time.monotonic() < deadline:
            try:
                if live.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                break
        assert closed, "the live session was not cut by the lock"
        live.close()
        out = curl_plain(port, "/api/users")
        assert "locked" in out.lower() or "lock" in out.lower(), out
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------- people and agents
def test_tsh_apps_ls_login_config_proxy_logout(
    cluster: Cluster, bot: tuple[str, Path], tmp_path: Path
) -> None:
    from tests.integration.dbhelpers import login, tsh

    _, dest = bot
    home = tmp_path / "tsh"
    from tests.integration.dbhelpers import invite_user

    invite_user(
        cluster, (dest / "teleport-host-ca.crt").read_text(), "dana", "--roles=app-dev-only"
    )
    login(cluster, home, "dana")
    ls = tsh(home, "apps", "ls").stdout
    assert APP in ls and "prod-app" not in ls  # app-dev-only sees env=dev apps only
    listed = json.loads(tsh(home, "apps", "ls", "--format=json").stdout)
    assert [a["name"] for a in listed] == [APP]
    out = tsh(home, "apps", "login", APP).stdout
    assert f"Logged into app {APP}" in out and "-x509.pem" in out
    assert f"> {APP}" in tsh(home, "apps", "ls").stdout
    cfg = json.loads(tsh(home, "apps", "config", "--format=json").stdout)
    assert cfg["uri"] == f"https://{APP}.localhost:{cluster.web_port}"
    assert tsh(home, "apps", "config", "--format=uri").stdout.strip() == cfg["uri"]
    got = curl(
        cluster, "/api/users", cert=Path(cfg["cert"]), key=Path(cfg["key"]), ca=Path(cfg["ca"])
    )
    assert json.loads(got.stdout)[0]["login"] == "admin"
    assert (Path(cfg["cert"]).stat().st_mode & 0o777) == 0o600
    missing = tsh(home, "apps", "login", "prod-app", check=False)
    assert missing.returncode != 0 and 'application "prod-app" not found' in missing.stderr

    port = free_port()
    import subprocess

    from tests.integration.dbhelpers import TSH, tsh_env

    proc = subprocess.Popen(
        [TSH, "proxy", "app", APP, f"--port={port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=tsh_env(home),
    )
    try:
        assert proc.stdout is not None
        assert f"Proxying connections to {APP} on 127.0.0.1:{port}" in proc.stdout.readline()
        assert json.loads(curl_plain(port, "/api/users"))[0]["login"] == "admin"
    finally:
        stop_process(proc)
    assert f'Logged out of app "{APP}"' in tsh(home, "apps", "logout").stdout
    assert not Path(cfg["cert"]).exists()


def test_a_separate_app_agent_joins_with_a_token_and_serves_through_the_tunnel(
    cluster: Cluster, bot: tuple[str, Path], upstream: int, tmp_path: Path
) -> None:
    import re
    import subprocess

    from tests.integration.conftest import TELEPORT, cli_env, parse_status

    out = cluster.tctl(
        "tokens",
        "add",
        "--type=app",
        "--app-name=remote-app",
        f"--app-uri=http://127.0.0.1:{upstream}",
    ).stdout
    assert "teleport app start" in out and "--name=remote-app" in out
    token = re.search(r"--token=([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    pin = parse_status(cluster.tctl("status").stdout)["CA pin"]
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            TELEPORT,
            "app",
            "start",
            f"--token={token}",
            f"--ca-pin={pin}",
            f"--auth-server={cluster.public_addr}",
            "--name=remote-app",
            f"--uri=http://127.0.0.1:{upstream}",
            "--labels=env=dev",
            f"--data-dir={tmp_path / 'agent'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while "remote-app" not in cluster.tctl("apps", "ls").stdout:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent's app never appeared in tctl apps ls"
            time.sleep(0.2)
        # the proxy's certificate names the new app from its first connection on,
        # not only after its next periodic catalogue read
        assert "remote-app.localhost" in served_dns_names(cluster.web_port, "remote-app.localhost")
        row = next(r for r in cluster.tctl("apps", "ls").stdout.splitlines() if "remote-app" in r)
        assert "remote-app.localhost" in row and "env=dev" in row
        _, _, dest = app_bot(cluster, tmp_path / "bot", app="remote-app")
        got = curl(cluster, "/api/headers", app="remote-app", **certs(dest))
        headers = json.loads(got.stdout)
        assert headers["X-Forwarded-Host"] == f"remote-app.localhost:{cluster.web_port}"
        assert headers["Teleport-Jwt-Assertion"].count(".") == 2
        answers = websocket_echo(
            f"https://remote-app.localhost:{cluster.web_port}/ws",
            ["tunnel"],
            ssl_ctx=tls_context(dest),
            resolve_port=cluster.web_port,
        )
        assert answers == ["echo: tunnel"]
    finally:
        import signal

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
        log.close()
    text = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in text and "shutdown: stopping the Application Service" in text
