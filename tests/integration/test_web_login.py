"""Password login against a real ``teleport start``: invite page, form post, ``/webapi/ssh/certs``.

Plain HTTPS (``http.client``) verified with the host CA from ``tctl auth export``,
as a browser or ``tsh`` would talk to the proxy's web port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography import x509

from jumpgate.core.tlsca import generate_private_key, public_key_to_pem
from jumpgate.core.tlsca.identity import identity_from_certificate
from tests.integration.conftest import CLUSTER_NAME, Cluster, make_cluster

PASSWORD = "a long enough passphrase"
GENERIC = "invalid username, password or second factor"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class Web:
    """A verified HTTPS client for one cluster's web port."""

    def __init__(self, cluster: Cluster, ca_file: Path) -> None:
        self.cluster = cluster
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.origin = f"https://{cluster.public_addr}"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPSConnection(
            "localhost", self.cluster.web_port, context=self.ctx, timeout=30
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict[str, str], **headers: str) -> Reply:
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin}
        hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
        hdrs = {k: v for k, v in hdrs.items() if v}  # "" drops a header
        return self.request(
            "POST", path, body=urllib.parse.urlencode(fields).encode(), headers=hdrs
        )

    def post_json(self, path: str, doc: Any) -> Reply:
        return self.request(
            "POST",
            path,
            body=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )

    def login(
        self, user: str, password: str, otp: str = "", path: str = "/webapi/ssh/certs"
    ) -> Reply:
        key = public_key_to_pem(generate_private_key().public_key()).decode()
        return self.post_json(
            path,
            {"user": user, "password": password, "otp_token": otp, "tls_pub_key": key, "ttl": 0},
        )


def add_user(cluster: Cluster, name: str, *flags: str) -> str:
    """``tctl users add``; returns the invite path (``/web/invite/<token>``)."""
    out = cluster.tctl("users", "add", name, "--roles=access", *flags).stdout
    (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
    assert url.startswith(f"https://{cluster.public_addr}/"), out
    return urllib.parse.urlsplit(url).path


def otp_secret(page: str) -> str:
    m = re.search(r'id="otp-secret"[^>]*>([A-Z2-7 ]+)<', page)
    assert m, page
    return m.group(1).replace(" ", "")


def assert_page_headers(reply: Reply) -> None:
    h = reply.headers
    assert h["content-type"].startswith("text/html")
    assert h["cache-control"] == "no-store"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "DENY"
    csp = h["content-security-policy"]
    for part in ("default-src 'none'", "style-src 'unsafe-inline'", "img-src data:"):
        assert part in csp
    assert "form-action 'self'" in csp
    assert "<script" not in reply.text


@pytest.fixture(scope="module")
def web(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Web:
    ca = tmp_path_factory.mktemp("ca") / "host-ca.pem"
    ca.write_text(cluster.tctl("auth", "export", "--type=tls-host").stdout)
    return Web(cluster, ca)


# ---------------------------------------------------------------------- second_factor: off
def test_invite_then_password_login_returns_a_certificate(cluster: Cluster, web: Web) -> None:
    path = add_user(cluster, "alice", "--db-users=reader,writer", "--db-names=app")
    page = web.get(path)
    assert page.status == 200, page.text
    assert_page_headers(page)
    assert "alice" in page.text and 'autocomplete="new-password"' in page.text
    assert 'aria-describedby="password-rules"' in page.text
    assert "otp_code" not in page.text and "<svg" not in page.text

    done = web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD})
    assert done.status == 200, done.text
    assert_page_headers(done)
    assert f"tsh login --proxy={cluster.public_addr} --user=alice" in done.text
    assert PASSWORD not in done.text

    # single use: the page and the form are gone
    assert web.get(path).status == 404
    again = web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD})
    assert again.status == 404 and "invalid or has expired" in again.text

    host_ca = cluster.tctl("auth", "export", "--type=tls-host").stdout
    for prefix in ("", "/v1"):
        reply = web.login("alice", PASSWORD, path=f"{prefix}/webapi/ssh/certs")
        assert reply.status == 200, reply.text
        assert reply.headers["cache-control"] == "no-store"
        out = reply.json()
        assert out["username"] == "alice" and out["cluster_name"] == CLUSTER_NAME
        assert PASSWORD not in reply.text
        ident = identity_from_certificate(x509.load_pem_x509_certificate(out["tls_cert"].encode()))
        assert ident.username == "alice" and list(ident.groups) == ["access"]
        assert set(ident.traits["db_users"]) == {"reader", "writer"}
        assert ident.traits["db_names"] == ("app",)
        (signer,) = out["host_signers"]
        assert signer["spec"]["type"] == "host" and signer["spec"]["cluster_name"] == CLUSTER_NAME
        (tls,) = signer["spec"]["active_keys"]["tls"]
        assert tls["cert"].strip() in host_ca


def test_bad_credentials_get_one_generic_403(cluster: Cluster, web: Web) -> None:
    path = add_user(cluster, "bob")
    assert web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD}).status == 200
    wrong = web.login("bob", "not the password")
    ghost = web.login("nobody-here", PASSWORD)
    assert wrong.status == ghost.status == 403
    assert wrong.json() == ghost.json() == {"error": {"message": GENERIC}}
    assert "not the password" not in wrong.text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON object"),
        (b"[]", "JSON object"),
        (json.dumps({"user": "bob", "password": 1}).encode(), "password must be a string"),
        (json.dumps({"user": "bob", "password": "x", "ttl": "1h"}).encode(), "nanoseconds"),
        (json.dumps({"user": "bob", "password": "x"}).encode(), "tls_pub_key is required"),
        (
            json.dumps({"user": "bob", "password": "x", "tls_pub_key": "junk"}).encode(),
            "PEM public key",
        ),
    ],
)
def test_malformed_login_requests_are_400(web: Web, body: bytes, message: str) -> None:
    reply = web.request(
        "POST", "/webapi/ssh/certs", body=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status == 400, reply.text
    assert message in reply.json()["error"]["message"]


def test_form_errors_show_an_alert_and_keep_the_link(cluster: Cluster, web: Web) -> None:
    path = add_user(cluster, "carol")
    short = web.post_form(path, {"password": "short", "password_confirm": "short"})
    assert short.status == 400
    assert_page_headers(short)
    assert 'role="alert"' in short.text and "at least 12 characters" in short.text
    assert re.search(r'id="password"[^>]*aria-invalid="true"', short.text)
    mismatch = web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD + "x"})
    assert mismatch.status == 400 and "do not match" in mismatch.text
    assert PASSWORD not in mismatch.text  # never echoed back into the form
    ok = web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD})
    assert ok.status == 200, ok.text


def test_cross_site_posts_are_refused(cluster: Cluster, web: Web) -> None:
    path = add_user(cluster, "dave")
    fields = {"password": PASSWORD, "password_confirm": PASSWORD}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "", "Referer": "https://evil.example/page"},
    ):
        reply = web.post_form(path, fields, **headers)
        assert reply.status == 403, (headers, reply.text)
        assert 'role="alert"' in reply.text
    # a same-origin browser post (opaque Origin under no-referrer + Sec-Fetch-Site)
    ok = web.post_form(path, fields, Origin="null", Sec_Fetch_Site="same-origin")
    assert ok.status == 200, ok.text


def test_repeated_failures_are_rate_limited(cluster: Cluster, web: Web) -> None:
    path = add_user(cluster, "erin")
    assert web.post_form(path, {"password": PASSWORD, "password_confirm": PASSWORD}).status == 200
    for _ in range(5):
        assert web.login("erin", "wrong password").status == 403
    limited = web.login("erin", PASSWORD)
    assert limited.status == 429, limited.text
    assert "too many failed login attempts" in limited.json()["error"]["message"]
    assert limited.headers.get("retry-after")


# ---------------------------------------------------------------------- second_factor: otp
@contextlib.contextmanager
def otp_cluster(root: Path) -> Iterator[Cluster]:
    """A cluster started with ``auth_service.authentication.second_factor: otp``."""
    c = make_cluster(root)
    doc = c.read_config()
    auth = doc["auth_service"]
    assert isinstance(auth, dict)
    auth.setdefault("authentication", {})["second_factor"] = "otp"
    c.write_config(doc)
    c.start()
    try:
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


@pytest.fixture(scope="module")
def otp_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """A verified client of a second cluster, one that requires TOTP."""
    with otp_cluster(tmp_path_factory.mktemp("otp-cluster")) as c:
        ca = c.root / "host-ca.pem"
        ca.write_text(c.tctl("auth", "export", "--type=tls-host").stdout)
        yield Web(c, ca)


def test_otp_enrollment_and_login(otp_web: Web) -> None:
    cluster = otp_web.cluster
    path = add_user(cluster, "frank", "--db-users=reader")
    page = otp_web.get(path)
    assert page.status == 200, page.text
    assert_page_headers(page)
    assert "<svg" in page.text and 'role="img"' in page.text
    assert 'inputmode="numeric"' in page.text and 'autocomplete="one-time-code"' in page.text
    secret = otp_secret(page.text)
    assert otp_secret(otp_web.get(path).text) == secret  # stable across views
    totp = pyotp.TOTP(secret)

    fields = {"password": PASSWORD, "password_confirm": PASSWORD}
    bad = otp_web.post_form(path, {**fields, "otp_code": "12345"})
    assert bad.status == 400 and "not valid" in bad.text
    done = otp_web.post_form(path, {**fields, "otp_code": totp.now()})
    assert done.status == 200, done.text

    assert otp_web.login("frank", PASSWORD).status == 403  # no second factor
    code = totp.at(time.time() + 30)  # the next step (the current one was used to enroll)
    ok = otp_web.login("frank", PASSWORD, code)
    assert ok.status == 200, ok.text
    ident = identity_from_certificate(
        x509.load_pem_x509_certificate(ok.json()["tls_cert"].encode())
    )
    assert ident.username == "frank" and ident.traits["db_users"] == ("reader",)
    reused = otp_web.login("frank", PASSWORD, code)
    assert reused.status == 403 and reused.json()["error"]["message"] == GENERIC
