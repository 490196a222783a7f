"""Browser access to applications: sign-in page, launch tokens, app session cookies.

A real cluster with a real web app behind it; a real headless Chromium (Playwright,
as in test_invite_browser.py) and curl (cookies sent by hand, so every hop and every
``Set-Cookie`` is visible). Users are created with ``tctl users add`` and their
invite link, as people are.
"""

from __future__ import annotations

import html
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.integration.apphelpers import (
    DEV_ROLE,
    add_app_service,
    audit_events,
    upstream_app,
    wait_for_event,
)
from tests.integration.conftest import Cluster, assert_clean_stderr, cli_env, make_cluster

APP = "grafana-example"
PASSWORD = "a long enough passphrase"

ALL_APPS_ROLE = """\
kind: role
metadata:
  name: browser-apps
version: v7
spec:
  allow:
    app_labels:
      '*': '*'
"""

SHORT_ROLE = """\
kind: role
metadata:
  name: browser-short
version: v7
spec:
  options:
    max_session_ttl: 10s
  allow:
    app_labels:
      '*': '*'
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with upstream_app() as port:
        yield port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[Cluster]:
    """An all-in-one cluster serving the test app (env=dev) and a prod copy (env=prod)."""
    c = make_cluster(tmp_path_factory.mktemp("browser-apps"))
    uri = f"http://127.0.0.1:{upstream}"
    add_app_service(
        c,
        [
            {"name": APP, "uri": uri, "labels": {"env": "dev"}},
            {"name": "prod-app", "uri": uri, "labels": {"env": "prod"}},
        ],
    )
    c.start()
    try:
        for role in (ALL_APPS_ROLE, DEV_ROLE, SHORT_ROLE):
            c.tctl("create", "-f", "/dev/stdin", input=role)
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


@pytest.fixture(scope="module")
def ca(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "host-ca.pem"
    path.write_text(cluster.tctl("auth", "export", "--type=tls-host").stdout)
    return path


_counter = iter(range(1_000_000))


def new_user(cluster: Cluster, ca: Path, roles: str = "browser-apps") -> str:
    """``tctl users add`` + the invite form: a user with a password, ready to sign in."""
    name = f"b{next(_counter)}{int(time.time() * 1000) % 100000}"
    out = cluster.tctl("users", "add", name, f"--roles={roles}").stdout
    (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
    r = Http(cluster, ca).request(
        "POST",
        url,
        form={"password": PASSWORD, "password_confirm": PASSWORD},
        headers={"Origin": f"https://{cluster.public_addr}"},
    )
    assert r.status == 200, r.body
    return name


# ---------------------------------------------------------------------- curl
@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: str

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        return values[-1] if values else ""

    def cookies(self) -> dict[str, str]:
        """Set-Cookie lines by cookie name (the whole line)."""
        return {v.split("=", 1)[0]: v for v in self.headers.get("set-cookie", [])}

    def cookie_value(self, name: str) -> str:
        line = self.cookies().get(name, "")
        return line.split("=", 1)[1].split(";", 1)[0] if line else ""


@dataclass
class Http:
    """curl against the proxy (``localhost``) and app hosts (``*.localhost``, resolved to loopback)."""

    cluster: Cluster
    ca: Path
    jar: dict[str, dict[str, str]] = field(default_factory=dict)  # host -> cookies

    def url(self, path: str, host: str = "") -> str:
        return f"https://{host or 'localhost'}:{self.cluster.web_port}{path}"

    def app_url(self, path: str, app: str = APP) -> str:
        return self.url(path, f"{app}.localhost")

    def request(
        self,
        method: str,
        url: str,
        *,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        cookies: bool = True,
    ) -> Reply:
        host = urllib.parse.urlsplit(url).hostname or ""
        argv = ["curl", "-sS", "-i", "--max-time", "60", "--cacert", str(self.ca), "-X", method]
        argv += ["--resolve", f"{host}:{self.cluster.web_port}:127.0.0.1"]
        hdrs = {"Accept": "text/html", **(headers or {})}
        jar = self.jar.get(host, {})
        if cookies and jar and "Cookie" not in hdrs:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        for k, v in hdrs.items():
            argv += ["-H", f"{k}: {v}"]
        if form is not None:
            argv += ["--data", urllib.parse.urlencode(form)]
        proc = subprocess.run(
            [*argv, url], capture_output=True, text=True, env=cli_env(), timeout=90, check=False
        )
        assert_clean_stderr(proc)
        assert proc.returncode == 0, proc.stderr
        head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
        lines = head.splitlines()
        out: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            out.setdefault(k.strip().lower(), []).append(v.strip())
        reply = Reply(int(lines[0].split()[1]), out, body)
        for name, line in reply.cookies().items():  # a minimal cookie jar (Max-Age=0 deletes)
            value = reply.cookie_value(name)
            if "Max-Age=0" in line or not value:
                self.jar.setdefault(host, {}).pop(name, None)
            else:
                self.jar.setdefault(host, {})[name] = value
        return reply

    def get(self, url: str, **kw: Any) -> Reply:
        return self.request("GET", url, **kw)

    def follow(self, reply: Reply) -> Reply:
        """GET the reply's Location (made absolute against the proxy)."""
        assert reply.status in (302, 303, 307), (reply.status, reply.body)
        loc = reply.header("location")
        return self.get(loc if loc.startswith("https://") else self.url(loc))

    def sign_in(self, user: str, redirect: str) -> Reply:
        """Submit the sign-in form the way a browser on the proxy's page does."""
        return self.request(
            "POST",
            self.url("/web/login"),
            form={"user": user, "password": PASSWORD, "redirect": redirect},
            headers={"Origin": f"https://{self.cluster.public_addr}"},
        )

    def launch_token(self, user: str, path: str = "/api/headers", app: str = APP) -> str:
        """App URL → login → launch → state → launch: the (unused) token's URL."""
        first = self.get(self.app_url(path, app))
        assert first.status == 302, first.body
        login = first.header("location")
        assert login.startswith(self.url("/web/login?redirect="))
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(login).query)["redirect"][0]
        signed = self.sign_in(user, redirect)
        assert signed.status == 303, signed.body
        to_app = self.follow(signed)  # /web/launch without state → the app host
        assert to_app.header("location").startswith(self.app_url("/x-teleport-auth?", app))
        state = self.follow(to_app)  # the app host sets its state nonce
        assert "/web/launch?" in state.header("location")
        minted = self.follow(state)
        token_url = minted.header("location")
        assert token_url.startswith(self.app_url("/x-teleport-auth?token=", app)), minted.body
        return token_url

    def open_app(self, user: str, path: str = "/api/headers", app: str = APP) -> Reply:
        """The whole browser flow; returns the reply of the token URL (302 to ``path``)."""
        done = self.get(self.launch_token(user, path, app))
        assert done.status == 302, done.body
        assert done.header("location") == path
        return done


def jwks_verify(cluster: Cluster, ca: Path, token: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(
        f"https://{cluster.public_addr}/.well-known/jwks.json", context=ctx, timeout=30
    ) as resp:
        keys = json.load(resp)["keys"]
    key = jwt.PyJWK(keys[0]).key
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["ES256"], options={"verify_aud": False}
    )
    return claims


# ---------------------------------------------------------------------- the curl tests
def test_the_whole_flow_with_curl_sets_strict_cookies_and_forwards_the_user(
    cluster: Cluster, ca: Path
) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    token_url = http.launch_token(user)
    # the proxy's session cookie
    ws_line = http.jar["localhost"]["__Host-session"]
    assert ws_line
    done = http.get(token_url)
    assert done.status == 302 and done.header("location") == "/api/headers"
    for line in (done.cookies()["__Host-grv_app_session"],):
        attrs = [a.strip() for a in line.split(";")]
        assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= set(attrs), line
        assert not any(a.lower().startswith("domain=") for a in attrs), line
    assert "Max-Age=0" in done.cookies()["__Host-grv_app_state"]  # the nonce is spent
    assert done.header("referrer-policy") == "no-referrer"
    page = http.get(http.app_url("/api/headers"), headers={"Accept": "application/json"})
    assert page.status == 200, page.body
    seen = json.loads(page.body)
    assert "__Host-grv_app" not in seen.get(
        "Cookie", ""
    )  # the proxy's cookie never reaches the app
    claims = jwks_verify(cluster, ca, seen["Teleport-Jwt-Assertion"])
    assert claims["username"] == user and claims["sub"] == user
    wait_for_event(cluster, "app.session.launch", user=user, app_name=APP)
    wait_for_event(cluster, "app.session.start", user=user, app_name=APP, success=True)


def test_login_cookie_flags(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    r = http.sign_in(user, "")
    assert r.status == 303 and r.header("location") == "/web/login"
    line = r.cookies()["__Host-session"]
    attrs = [a.strip() for a in line.split(";")]
    assert {"Path=/", "Secure", "HttpOnly", "SameSite=Lax"} <= set(attrs), line
    assert not any(a.lower().startswith("domain=") for a in attrs), line
    max_age = int(next(a for a in attrs if a.startswith("Max-Age="))[8:])
    assert 12 * 3600 - 60 < max_age <= 12 * 3600
    page = http.get(http.url("/web/login"))
    assert page.status == 200 and "You are signed in" in page.body and user in page.body


def test_a_cross_origin_login_post_is_refused(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    for hdrs in (
        {"Origin": "https://evil.example"},
        {"Origin": f"https://{APP}.localhost:{cluster.web_port}"},  # an app host is another origin
        {"Sec-Fetch-Site": "cross-site", "Origin": f"https://{cluster.public_addr}"},
    ):
        r = http.request(
            "POST",
            http.url("/web/login"),
            form={"user": user, "password": PASSWORD, "redirect": ""},
            headers=hdrs,
        )
        assert r.status == 403, (hdrs, r.body)
        assert "another site" in r.body and "set-cookie" not in r.headers
    # sign-out takes a same-origin POST too
    assert (
        http.request(
            "POST", http.url("/web/logout"), headers={"Origin": "https://evil.example"}
        ).status
        == 403
    )


@pytest.mark.parametrize(
    "redirect",
    [
        "https://evil.example/",
        "http://{app}.localhost:{port}/",
        "https://{app}.localhost:1/",
        "https://user@{app}.localhost:{port}/",
        "https://localhost:{port}/web/login",
        "//evil.example/",
        "javascript:alert(1)",
    ],
)
def test_no_open_redirect(cluster: Cluster, ca: Path, redirect: str) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    redirect = redirect.format(app=APP, port=cluster.web_port)
    r = http.sign_in(user, redirect)
    assert r.status == 303 and r.header("location") == "/web/login", r.headers
    page = http.get(http.url("/web/login?redirect=" + urllib.parse.quote(redirect, safe="")))
    assert page.status == 200 and "does not lead to an application" in page.body
    assert "evil.example" not in page.header("location")


def test_paths_cannot_leave_the_app_host(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    r = http.get(http.app_url("/x-teleport-auth?path=//evil.example/x"))
    assert r.status == 302
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(r.header("location")).query)["path"] == ["/"]
    user = new_user(cluster, ca)
    http.sign_in(user, "")
    r = http.get(http.url("/web/launch?app=grafana-example&path=%2F%2Fevil.example"))
    assert r.status == 302
    loc = urllib.parse.urlsplit(r.header("location"))
    assert loc.netloc == f"{APP}.localhost:{cluster.web_port}" and loc.path == "/x-teleport-auth"
    assert urllib.parse.parse_qs(loc.query)["path"] == ["/"]


def test_a_launch_token_is_single_use_and_bound_to_the_browser(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    token_url = http.launch_token(user)
    # another browser (no state cookie, or another one) cannot use it
    stranger = Http(cluster, ca)
    stranger.get(http.app_url("/x-teleport-auth?path=/"))  # gets its own state nonce
    r = stranger.get(token_url)
    assert r.status == 403 and "not started in this browser" in r.body
    # ... and that attempt used it up
    r = http.get(token_url)
    assert r.status == 403 and "already used" in r.body, r.body
    # a fresh one works once
    token_url = http.launch_token(user)
    assert http.get(token_url).status == 302
    r = http.get(token_url)
    assert r.status == 403 and "unknown or was already used" in r.body
    wait_for_event(cluster, "app.session.launch", app_name=APP, success=False)


def test_a_token_for_one_app_does_not_open_another(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    token_url = http.launch_token(user)
    query = urllib.parse.urlsplit(token_url).query
    http.get(http.app_url("/x-teleport-auth?path=/", "prod-app"))
    r = http.get(http.app_url(f"/x-teleport-auth?{query}", "prod-app"))
    assert r.status == 403 and 'is for application "grafana-example"' in html.unescape(r.body)


def test_forged_cookies_are_sent_to_the_login_page(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    for value in ("forged", "A" * 43, "x" * 200):
        r = http.get(
            http.app_url("/api/users"), headers={"Cookie": f"__Host-grv_app_session={value}"}
        )
        assert r.status == 302, r.body
        assert r.header("location").startswith(http.url("/web/login?redirect="))
        assert "Max-Age=0" in r.cookies()["__Host-grv_app_session"]
    r = http.get(
        http.app_url("/api/users"),
        headers={"Cookie": "__Host-grv_app_session=forged", "Accept": "application/json"},
    )
    assert r.status == 401 and "browser session is not valid" in r.body
    # a forged proxy session is simply not signed in
    r = http.get(
        http.url("/web/launch?app=grafana-example&path=/&state=" + "s" * 43),
        headers={"Cookie": "__Host-session=" + "A" * 43},
    )
    assert r.status == 302 and r.header("location").startswith("/web/login?redirect=")


def test_sessions_expire_with_the_roles_max_session_ttl(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca, roles="browser-short")  # max_session_ttl: 10s
    http.open_app(user)
    assert http.get(http.app_url("/api/users")).status == 200
    spare = Http(cluster, ca)
    late_token = spare.launch_token(user)  # minted, not used
    # poll (no fixed sleep) until both sign-ins have ended (spare's began last)
    deadline = time.monotonic() + 40
    while "You are signed in" in spare.get(spare.url("/web/login")).body:
        assert time.monotonic() < deadline, "the 10s web session did not end"
        time.sleep(0.5)
    r = http.get(http.app_url("/api/users"))
    assert r.status == 302 and r.header("location").startswith(http.url("/web/login?redirect="))
    r = spare.get(late_token)
    assert r.status == 403 and ("expired" in r.body or "has ended" in r.body), r.body


def test_sign_out_of_an_app_and_of_jumpgate(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    http.open_app(user)
    app_cookie = http.jar[f"{APP}.localhost"]["__Host-grv_app_session"]
    # keep a connection open on the app session: sign-out closes it
    r = http.get(http.app_url("/x-teleport-logout"))
    assert r.status == 200 and "Signed out of grafana-example" in r.body
    assert "Max-Age=0" in r.cookies()["__Host-grv_app_session"]
    r = http.get(
        http.app_url("/api/users"), headers={"Cookie": f"__Host-grv_app_session={app_cookie}"}
    )
    assert r.status == 302 and "/web/login" in r.header("location")
    # still signed in at the proxy: opening the app again goes straight through
    http.open_app(user)
    app_cookie = http.jar[f"{APP}.localhost"]["__Host-grv_app_session"]
    r = http.request(
        "POST", http.url("/web/logout"), headers={"Origin": f"https://{cluster.public_addr}"}
    )
    assert r.status == 200 and "You are signed out" in r.body
    assert "Max-Age=0" in r.cookies()["__Host-session"]
    # the app session went with it, and the proxy session too
    r = http.get(
        http.app_url("/api/users"), headers={"Cookie": f"__Host-grv_app_session={app_cookie}"}
    )
    assert r.status == 302
    r = http.get(http.url("/web/launch?app=grafana-example&path=/"))
    assert r.status == 302 and r.header("location").startswith("/web/login?redirect=")
    wait_for_event(cluster, "user.logout", user=user)


def _raw_app_conn(cluster: Cluster, ca: Path, cookie: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", cluster.web_port), timeout=30)
    tls = ctx.wrap_socket(raw, server_hostname=f"{APP}.localhost")
    tls.sendall(
        f"GET /api/users HTTP/1.1\r\nHost: {APP}.localhost\r\n"
        f"Cookie: __Host-grv_app_session={cookie}\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"]"):
        chunk = tls.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return tls


def _closed_within(sock: ssl.SSLSocket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except (ssl.SSLError, OSError):
            return True
    return False


def test_sign_out_closes_live_connections(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    http.open_app(new_user(cluster, ca))
    conn = _raw_app_conn(cluster, ca, http.jar[f"{APP}.localhost"]["__Host-grv_app_session"])
    try:
        http.request(
            "POST", http.url("/web/logout"), headers={"Origin": f"https://{cluster.public_addr}"}
        )
        assert _closed_within(conn, 20), "the keep-alive connection outlived the sign-out"
    finally:
        conn.close()


def test_a_lock_cuts_cookie_sessions(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    http.open_app(user)
    cookie = http.jar[f"{APP}.localhost"]["__Host-grv_app_session"]
    conn = _raw_app_conn(cluster, ca, cookie)
    try:
        cluster.tctl("lock", f"--user={user}", "--message=lost laptop")
        assert _closed_within(conn, 30), "a live cookie session survived the lock"
    finally:
        conn.close()
    r = http.get(http.app_url("/api/users"))
    assert r.status == 403 and "locked" in r.body
    r = http.get(http.url("/web/launch?app=grafana-example&path=/&state=" + "s" * 43))
    assert r.status == 403 and "locked" in r.body


def test_a_role_without_the_app_gets_403(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca, roles="app-dev-only")
    r = http.get(http.app_url("/", "prod-app"))
    redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(r.header("location")).query)["redirect"][
        0
    ]
    signed = http.sign_in(user, redirect)
    to_app = http.follow(signed)
    state = http.follow(to_app)
    denied = http.follow(state)
    assert denied.status == 403 and "access to app prod-app denied" in denied.body.lower()
    assert "set-cookie" not in denied.headers
    ev = wait_for_event(cluster, "app.session.start", user=user, app_name="prod-app", success=False)
    assert "denied" in ev["error"]
    # the dev app is fine
    assert http.open_app(user).status == 302
    assert [e for e in audit_events(cluster, "cert.create") if e.get("user") == user]


# ---------------------------------------------------------------------- a real browser
def _spki_pin(cluster: Cluster, ca: Path, server_name: str) -> str:
    """base64(SHA-256(SPKI)) of the certificate the proxy shows for ``server_name``."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", cluster.web_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_a_browser_opens_the_app_through_the_sign_in_page(
    cluster: Cluster, ca: Path, tmp_path: Path
) -> None:
    from tests.integration.test_invite_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

    sync = _require_browser()
    expect = sync.expect
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    pins = ",".join(_spki_pin(cluster, ca, n) for n in ("localhost", f"{APP}.localhost"))
    app_url = http.app_url("/api/headers")
    problems: list[str] = []
    with sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                *CHROMIUM_ARGS,
                f"--ignore-certificate-errors-spki-list={pins}",
                "--host-resolver-rules=MAP *.localhost 127.0.0.1",
            ],
        )
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            # the app sends the browser to the sign-in page, which names the app
            page.goto(app_url)
            expect(page).to_have_title(re.compile("Sign in"))
            assert page.url.startswith(http.url("/web/login?redirect="))
            expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to Jumpgate")
            expect(page.locator("main")).to_contain_text(f"open the application {APP}")
            page.screenshot(path=str(tmp_path / "login.png"), full_page=True)

            # a wrong password: the form comes back with an alert, the name kept
            page.get_by_label("User name").fill(user)
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).to_contain_text("Invalid username, password")
            expect(page.get_by_label("User name")).to_have_value(user)
            expect(page.get_by_label("Password")).to_have_value("")

            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(app_url)
            seen = json.loads(page.locator("body").inner_text())
            claims = jwks_verify(cluster, ca, seen["Teleport-Jwt-Assertion"])
            assert claims["username"] == user
            assert "__Host-grv_app" not in seen.get("Cookie", "")

            cookies = {c["name"]: c for c in context.cookies()}
            for name, host in (
                ("__Host-session", "localhost"),
                ("__Host-grv_app_session", f"{APP}.localhost"),
            ):
                c = cookies[name]
                assert c["domain"] == host and c["path"] == "/", c  # host-only
                assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Lax", c
            assert "__Host-grv_app_state" not in cookies  # spent

            # the app's own pages work with the cookie
            page.goto(http.app_url("/"))
            expect(page.locator("p")).to_have_text("hello")

            # sign out of Jumpgate: the app asks for a sign-in again
            page.goto(http.url("/web/logout"))
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("You are signed out")
            page.goto(app_url)
            expect(page).to_have_title(re.compile("Sign in"))
            assert "__Host-grv_app_session" not in {c["name"] for c in context.cookies()}
        finally:
            browser.close()
    assert problems == [], problems


def test_a_reserved_path_on_a_forwarded_connection_is_sent_to_a_new_one(
    cluster: Cluster, ca: Path
) -> None:
    """/x-teleport-auth and /x-teleport-logout are the proxy's: a browser that reuses an
    app connection for them is told (307, Connection: close) to ask again on a new one."""
    http = Http(cluster, ca)
    http.open_app(new_user(cluster, ca))
    conn = _raw_app_conn(cluster, ca, http.jar[f"{APP}.localhost"]["__Host-grv_app_session"])
    try:
        conn.sendall(f"GET /x-teleport-logout HTTP/1.1\r\nHost: {APP}.localhost\r\n\r\n".encode())
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        conn.close()
    head = data.decode().lower()
    assert head.startswith("http/1.1 307"), data
    assert "location: /x-teleport-logout" in head and "connection: close" in head


def test_sign_in_asks_for_the_one_time_code_when_the_cluster_requires_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import pyotp

    from tests.integration.test_web_login import otp_cluster, otp_secret

    with otp_cluster(tmp_path_factory.mktemp("otp-browser-apps")) as c:
        ca = c.root / "host-ca.pem"
        ca.write_text(c.tctl("auth", "export", "--type=tls-host").stdout)
        http = Http(c, ca)
        out = c.tctl("users", "add", "olga", "--roles=access").stdout
        (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
        totp = pyotp.TOTP(otp_secret(http.get(url).body))
        origin = {"Origin": f"https://{c.public_addr}"}
        fields = {"password": PASSWORD, "password_confirm": PASSWORD}
        enrolled = http.request(
            "POST", url, form={**fields, "otp_code": totp.now()}, headers=origin
        )
        assert enrolled.status == 200, enrolled.body

        form = http.get(http.url("/web/login"))
        assert 'autocomplete="one-time-code"' in form.body and "Authenticator code" in form.body
        login = {"user": "olga", "password": PASSWORD, "redirect": ""}
        r = http.request("POST", http.url("/web/login"), form=login, headers=origin)
        assert r.status == 403 and "set-cookie" not in r.headers
        code = totp.at(time.time() + 30)  # the enrollment used the current step
        r = http.request(
            "POST", http.url("/web/login"), form={**login, "otp_code": code}, headers=origin
        )
        assert r.status == 303 and "__Host-session" in r.cookies()
        assert "You are signed in" in http.get(http.url("/web/login")).body


def test_failed_sign_ins_are_rate_limited_and_audited(cluster: Cluster, ca: Path) -> None:
    http = Http(cluster, ca)
    user = new_user(cluster, ca)
    origin = {"Origin": f"https://{cluster.public_addr}"}
    bad = {"user": user, "password": "wrong password", "redirect": ""}
    for _ in range(5):
        r = http.request("POST", http.url("/web/login"), form=bad, headers=origin)
        assert r.status == 403 and 'role="alert"' in r.body
    ok = {**bad, "password": PASSWORD}
    r = http.request("POST", http.url("/web/login"), form=ok, headers=origin)
    assert r.status == 429 and "too many failed login attempts" in r.body.lower()
    assert r.header("retry-after") and "set-cookie" not in r.headers
    ev = wait_for_event(cluster, "user.login", user=user, success=False)
    assert ev["method"] == "local"
