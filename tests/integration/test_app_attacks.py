"""Attacks on application access, against a real cluster and real upstream apps.

Each test plays an attacker: smuggled or forged headers, certificates of the wrong
kind, pipelining past a refusal, SNI tricks. Attacks that are refused are plain
tests (regression guards); confirmed vulnerabilities are ``xfail(strict=True)``
with the finding id of the security review, so the suite stays green until the
fix lands (the fix removes the mark).

Upstreams: the aiohttp test app, Python's ``http.server`` (a real, widely used
server that, like Go's net/http, ends header lines at a bare LF) and a raw TCP
recorder that keeps every byte the App Service forwards.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.apphelpers import APP_ROLE, upstream_app
from tests.integration.conftest import Cluster, make_cluster

DENY_PROD_ROLE = """\
kind: role
metadata:
  name: atk-noprod
version: v7
spec:
  allow:
    app_labels:
      '*': '*'
  deny:
    app_labels:
      env: prod
"""

LOCKABLE_ROLE = """\
kind: role
metadata:
  name: atk-lockable
version: v7
spec:
  allow:
    app_labels:
      '*': '*'
"""


# ---------------------------------------------------------------------- upstreams
class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers every request with the headers it parsed (as a list of pairs)."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        seen = {"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return None


class StdlibUpstream:
    """``http.server`` on a free loopback port; ``seen`` lists what it parsed."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen  # type: ignore[attr-defined,no-any-return]

    def find(self, marker: str) -> dict[str, Any] | None:
        return next((s for s in self.seen if marker in s["path"]), None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawUpstream:
    """Records every byte forwarded to it and never answers."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()
        outer = self

        class H(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(60)
                with contextlib.suppress(OSError):
                    while chunk := self.request.recv(65536):
                        with outer.lock:
                            outer.data += chunk

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> bytes:
        with self.lock:
            return bytes(self.data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stdlib_up() -> Iterator[StdlibUpstream]:
    up = StdlibUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def raw_up() -> Iterator[RawUpstream]:
    up = RawUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def aio_port() -> Iterator[int]:
    with upstream_app() as port:
        yield port


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    stdlib_up: StdlibUpstream,
    raw_up: RawUpstream,
    aio_port: int,
) -> Iterator[Cluster]:
    c = make_cluster(tmp_path_factory.mktemp("atk"))
    std = f"http://127.0.0.1:{stdlib_up.port}"
    aio = f"http://127.0.0.1:{aio_port}"
    doc = c.read_config()
    doc["app_service"] = {
        "enabled": True,
        "apps": [
            {
                "name": "atk",
                "uri": std,
                "labels": {"env": "dev"},
                "rewrite": {"headers": ["X-Remote-Groups: {{internal.groups}}", "X-Static: ok"]},
            },
            {"name": "atkraw", "uri": f"http://127.0.0.1:{raw_up.port}", "labels": {"env": "dev"}},
            {"name": "atkaio", "uri": aio, "labels": {"env": "dev"}},
            {"name": "victim", "uri": aio, "labels": {"env": "dev"}},
            {"name": "prodapp", "uri": std, "labels": {"env": "prod"}},
            # only for the impostor-agent test (its heartbeat outlives the test by a minute)
            {"name": "prodapp2", "uri": std, "labels": {"env": "prod"}},
        ],
        "resources": [{"labels": {"dyn": "yes"}}],
    }
    c.write_config(doc)
    c.start()
    try:
        for role in (APP_ROLE, DENY_PROD_ROLE, LOCKABLE_ROLE):
            c.tctl("create", "-f", "/dev/stdin", input=role)
        c.tctl("users", "add", "alice", "--roles=machine-id-app-role")
        c.tctl("users", "add", "mallory", "--roles=atk-noprod")
        c.tctl("users", "add", "lockee", "--roles=atk-lockable")
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


# ---------------------------------------------------------------------- helpers
def sign(
    cluster: Cluster, out: Path, user: str = "alice", *args: str, ttl: str = "1h"
) -> tuple[Path, Path]:
    """``tctl auth sign --format=tls`` for ``user`` with extra flags (``--app-name=...``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cluster.tctl(
        "auth", "sign", f"--user={user}", "--format=tls", f"--ttl={ttl}", f"--out={out}", *args
    )
    return out.with_suffix(".crt"), out.with_suffix(".key")


@pytest.fixture(scope="module")
def app_certs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("certs")
    return {
        app: sign(cluster, d / app, "alice", f"--app-name={app}")
        for app in ("atk", "atkraw", "atkaio", "victim")
    }


def connect(
    cluster: Cluster, sni: str | None, cert: tuple[Path, Path] | None = None
) -> ssl.SSLSocket:
    """TLS to the web port with ``sni`` (``None``: no SNI) and an optional client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    raw = socket.create_connection(("127.0.0.1", cluster.web_port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=sni)


def host(app: str, cluster: Cluster) -> str:
    return f"{app}.localhost"


class Reader:
    """Reads HTTP/1.1 responses one at a time from a socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.f = sock.makefile("rb")

    def response(self) -> tuple[int, dict[str, str], bytes] | None:
        line = self.f.readline()
        if not line:
            return None
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (h := self.f.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = self.f.read(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.f.readline().split(b";")[0], 16):
                body += self.f.read(size)
                self.f.readline()
            self.f.readline()
        else:
            body = b""
        return status, headers, body

    def rest(self) -> bytes:
        """Everything until the server closes (b"" when it closed)."""
        return self.f.read()


def exchange(
    cluster: Cluster,
    sni: str | None,
    data: bytes,
    cert: tuple[Path, Path] | None = None,
    *,
    n: int = 0,
) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """Send ``data``; read ``n`` responses, or (n=0) responses until the connection
    closes: (responses, trailing bytes)."""
    with connect(cluster, sni, cert) as s:
        s.sendall(data)
        r = Reader(s)
        out = []
        while (not n or len(out) < n) and (resp := r.response()) is not None:
            out.append(resp)
            if resp[1].get("connection", "").lower() == "close":
                break
        return out, b"" if n else r.rest()


def get(path: str, *extra: str, host_header: str = "x") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def marker() -> str:
    return "/m-" + uuid.uuid4().hex


def wait_for(cond: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def headers_of(seen: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in seen["headers"]]


# ---------------------------------------------------------------------- refused attacks
@pytest.mark.parametrize(
    "bad",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",  # CL.TE
        "Transfer-Encoding: chunked\r\nContent-Length: 5",  # TE.CL
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: +5",
        "Transfer-Encoding: gzip",
        "X-Fold: a\r\n b",  # obs-fold
        "X-Bad : a",  # whitespace before the colon
    ],
)
def test_ambiguous_framing_is_refused_first_and_later_on_a_connection(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream, bad: str
) -> None:
    # as the first request (parsed by the proxy's frontend)
    m = marker()
    body = b"hello" + get(m)
    resps, _ = exchange(cluster, host("atk", cluster), get(m, bad) + body, app_certs["atk"])
    assert resps and resps[0][0] in (400, 501), resps
    # as the second request of a keep-alive connection (parsed by the forwarder)
    m2 = marker()
    with connect(cluster, host("atk", cluster), app_certs["atk"]) as s:
        r = Reader(s)
        s.sendall(get("/ok"))
        assert (r.response() or (0,))[0] == 200
        s.sendall(get(m2, bad) + body + get(m2))
        resp = r.response()
        assert resp is not None and resp[0] in (400, 501), resp
        assert r.rest() == b""
    assert stdlib_up.find(m) is None and stdlib_up.find(m2) is None


def test_pipelined_requests_after_a_refusal_never_reach_the_app(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream, tmp_path: Path
) -> None:
    m = marker()
    # no certificate: 302/401, and the pipelined request is dropped with the connection
    resps, rest = exchange(cluster, host("atk", cluster), get("/a") + get(m))
    assert [r[0] for r in resps] == [302] and rest == b""
    # a certificate RBAC refuses (deny env=prod): 403, nothing forwarded
    cert = sign(cluster, tmp_path / "mal", "mallory", "--app-name=prodapp")
    resps, rest = exchange(cluster, host("prodapp", cluster), get("/a") + get(m), cert)
    assert [r[0] for r in resps] == [403] and rest == b""
    assert "access to app prodapp denied" in json.loads(resps[0][2])["error"]["message"]
    assert stdlib_up.find(m) is None


def test_certificates_that_are_not_app_certificates_for_this_app_are_refused(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream, tmp_path: Path
) -> None:
    m = marker()
    plain = sign(cluster, tmp_path / "plain", "alice")  # a tsh login certificate
    db = sign(cluster, tmp_path / "db", "alice", "--db-service=pg", "--db-user=alice")
    cases = {
        "atk with the atkaio certificate": (app_certs["atkaio"], "for application"),
        "a login certificate": (plain, "not for application access"),
        "a database certificate": (db, "not for application access"),
    }
    for what, (cert, why) in cases.items():
        resps, _ = exchange(cluster, host("atk", cluster), get(m, "Accept: application/json"), cert)
        assert resps[0][0] == 401, what
        assert why in json.loads(resps[0][2])["error"]["message"], what
    assert stdlib_up.find(m) is None


def test_a_certificate_from_a_look_alike_ca_fails_the_handshake(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream, tmp_path: Path
) -> None:
    """Another CA with the user CA's exact subject (as another cluster of the same name
    would have) signs a copy of a real app certificate: the handshake must fail."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    real = x509.load_pem_x509_certificate(app_certs["atk"][0].read_bytes())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    for ext in real.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    forged = builder.sign(ca_key, hashes.SHA256())
    crt, kf = tmp_path / "forged.crt", tmp_path / "forged.key"
    crt.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    m = marker()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        resps, _ = exchange(cluster, host("atk", cluster), get(m), (crt, kf))
        # TLS 1.3: the alert may arrive after the handshake, as a failed read
        assert not resps, resps
        raise ConnectionError("closed without an answer")
    assert stdlib_up.find(m) is None


def test_spoofed_identity_headers_are_replaced_on_every_request(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    forged = [
        "teleport-jwt-assertion: forged",
        "TELEPORT-JWT-ASSERTION: forged",
        "X-FORWARDED-FOR: 6.6.6.6",
        "x-forwarded-host: evil.example",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Port: 1",
        "Forwarded: for=6.6.6.6",
        "Cf-Access-Token: forged",
        "X-Static: evil",  # a rewrite.headers name the app configures
    ]
    m1, m2 = marker(), marker()
    resps, _ = exchange(
        cluster,
        host("atk", cluster),
        get(m1, *forged) + get(m2, *forged),
        app_certs["atk"],
        n=2,
    )
    assert [r[0] for r in resps] == [200, 200]
    for m in (m1, m2):
        seen = headers_of(stdlib_up.find(m) or {"headers": []})
        values = [v for _, v in seen]
        assert "forged" not in values and "6.6.6.6" not in values and "evil" not in values
        assert "for=6.6.6.6" not in values and "evil.example" not in values
        assert [v for k, v in seen if k == "x-forwarded-for"] == ["127.0.0.1"]
        assert [v for k, v in seen if k == "x-static"] == ["ok"]
        (jwt,) = [v for k, v in seen if k == "teleport-jwt-assertion"]
        head, claims = (
            json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
            for p in jwt.split(".")[:2]
        )
        assert head["alg"] == "ES256" and head["kid"]
        assert claims["aud"] == [f"http://127.0.0.1:{stdlib_up.port}"]
        assert claims["iss"] == "example.com" and claims["sub"] == "alice"
        assert claims["nbf"] < claims["iat"] < claims["exp"]


def test_a_refused_upgrade_ends_the_connection_without_forwarding_what_follows(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    m = marker()
    upgrade = get("/ws", "Connection: Upgrade", "Upgrade: websocket")
    smuggled = get(m, "X-Forwarded-For: 6.6.6.6")
    with connect(cluster, host("atk", cluster), app_certs["atk"]) as s:
        r = Reader(s)
        s.sendall(get("/a"))
        assert (r.response() or (0,))[0] == 200
        s.sendall(upgrade + smuggled)
        assert (r.response() or (0,))[0] == 200  # http.server does not upgrade
        assert r.rest() == b""
    assert stdlib_up.find(m) is None


def test_huge_heads_are_refused(cluster: Cluster, app_certs: dict[str, Any]) -> None:
    big = "X-Big: " + "a" * 70_000
    resps, _ = exchange(cluster, host("atk", cluster), get("/a", big), app_certs["atk"])
    assert resps[0][0] == 431
    resps, _ = exchange(cluster, host("atk", cluster), get("/a") + get("/b", big), app_certs["atk"])
    assert [r[0] for r in resps] == [200, 431]


def test_no_sni_or_the_proxy_host_with_an_app_host_header_reaches_the_web_api(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    """Routing is by SNI: a Host header naming an app does not open the app."""
    for sni in (None, "localhost"):
        m = marker()
        resps, _ = exchange(
            cluster,
            sni,
            get(m, "Connection: close", host_header=f"atk.localhost:{cluster.web_port}"),
            app_certs["atk"],
        )
        assert resps and resps[0][0] in (404, 302, 401, 403), resps
        assert stdlib_up.find(m) is None


def test_a_role_lock_cuts_a_live_keep_alive_session(
    cluster: Cluster, stdlib_up: StdlibUpstream, tmp_path: Path
) -> None:
    cert = sign(cluster, tmp_path / "lockee", "lockee", "--app-name=atk")
    with connect(cluster, host("atk", cluster), cert) as s:
        r = Reader(s)
        s.sendall(get("/before"))
        assert (r.response() or (0,))[0] == 200
        cluster.tctl("lock", "--role=atk-lockable", "--message=role compromised")
        try:
            assert r.rest() == b"", "the session was not closed by the role lock"
        finally:
            for lk in json.loads(cluster.tctl("get", "locks", "--format=json").stdout):
                if lk["spec"]["target"].get("role") == "atk-lockable":
                    cluster.tctl("rm", f"lock/{lk['metadata']['name']}")


def test_reserved_paths_on_a_forwarded_connection_are_not_forwarded(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    with connect(cluster, host("atk", cluster), app_certs["atk"]) as s:
        r = Reader(s)
        s.sendall(get("/a"))
        assert (r.response() or (0,))[0] == 200
        s.sendall(get("/x-teleport-auth?token=t&m=zz-reserved"))
        resp = r.response()
        assert resp is not None and resp[0] == 307
        assert resp[1]["location"] == "/x-teleport-auth?token=t&m=zz-reserved"
        assert r.rest() == b""
    assert not any("zz-reserved" in s["path"] for s in stdlib_up.seen)


# ---------------------------------------------------------------------- findings
@pytest.mark.parametrize("first", [True, False], ids=["first-request", "keep-alive"])
def test_bare_lf_cannot_smuggle_headers_past_the_forwarder(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream, first: bool
) -> None:
    """``X-Note: a<LF>X-Forwarded-For: 6.6.6.6`` is one field to the forwarder (so not
    stripped) but two to servers that end lines at LF (http.server, Go's net/http)."""
    m = marker()
    evil = (
        "X-Note: a\nX-Forwarded-For: 6.6.6.6\nTeleport-Jwt-Assertion: forged"
        "\nX-Static: evil\nX-Remote-Groups: admins"
    )
    data = (b"" if first else get("/a")) + get(m, evil)
    resps, _ = exchange(cluster, host("atk", cluster), data, app_certs["atk"], n=1 if first else 2)
    seen = stdlib_up.find(m)
    if seen is not None:
        got = dict(reversed(headers_of(seen)))  # http.server's headers[...] is the first value
        assert got.get("x-forwarded-for") == "127.0.0.1", got
        assert got.get("teleport-jwt-assertion") != "forged", got
        assert got.get("x-static") == "ok", got
        assert "x-remote-groups" not in got, got
    else:
        assert resps[-1][0] == 400


def test_a_rewrite_header_the_user_has_no_trait_for_is_not_forgeable(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    """``X-Remote-Groups: {{internal.groups}}``: alice has no ``groups`` trait, so the
    proxy leaves the header out - and must not let alice set it herself."""
    m = marker()
    resps, _ = exchange(
        cluster,
        host("atk", cluster),
        get(m, "X-Remote-Groups: admins"),
        app_certs["atk"],
        n=1,
    )
    assert resps[0][0] == 200
    seen = headers_of(stdlib_up.find(m) or {"headers": []})
    assert ("x-remote-groups", "admins") not in seen, seen


@pytest.mark.parametrize(
    "body",
    [
        b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n",  # int(.., 16) accepts '_': 16 to us, 1 to others
        b"5\r\nhelloXX0\r\n\r\n",  # any two bytes accepted as the CRLF after chunk data
        b"5\nhello\r\n0\n\n",  # bare LF chunk lines
        b"5\x0b\r\nhello\r\n0\r\n\r\n",  # vertical tab around the size
    ],
    ids=["underscore", "no-crlf-after-data", "bare-lf", "vtab"],
)
def test_malformed_chunked_bodies_are_refused_not_forwarded(
    cluster: Cluster, app_certs: dict[str, Any], raw_up: RawUpstream, body: bytes
) -> None:
    m = marker()
    head = get(m, "Transfer-Encoding: chunked")
    with connect(cluster, host("atkraw", cluster), app_certs["atkraw"]) as s:
        s.sendall(head + body)
        s.settimeout(20)
        # fixed: the forwarder answers 400 at once; today the bytes reach the app
        got = wait_for(lambda: body in raw_up.received(), timeout=5)
        assert not got, f"the malformed body {body!r} was forwarded to the app"
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400"), answer


def test_an_unknown_app_name_in_sni_does_not_mint_a_certificate(cluster: Cluster) -> None:
    """Unauthenticated: every new ``<random>.localhost`` SNI costs a key, a host CA
    signature and two files in the data directory, forever."""
    label = "nosuch" + uuid.uuid4().hex[:12]
    with contextlib.suppress(OSError, ssl.SSLError):
        connect(cluster, f"{label}.localhost").close()
    minted = list((cluster.data_dir / "proc").glob(f"proxy-{label}*"))
    assert minted == [], minted


def test_an_app_public_addr_cannot_take_over_another_apps_host(
    cluster: Cluster, app_certs: dict[str, Any], tmp_path: Path
) -> None:
    """A dynamic app (or any App Service heartbeat) claiming ``victim.localhost`` as its
    public_addr reroutes victim's host to itself: victim's users are refused (and a
    browser launched from victim's URL would sign in to the impostor)."""
    res = {
        "kind": "app",
        "version": "v3",
        "metadata": {"name": "impostor", "labels": {"dyn": "yes"}},
        "spec": {"uri": "http://127.0.0.1:9", "public_addr": "victim.localhost"},
    }
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(res))
    cluster.tctl("create", "-f", str(tmp_path / "app.yaml"))
    try:
        assert wait_for(lambda: "impostor" in cluster.tctl("apps", "ls").stdout, 30)
        # give the proxy's 2 s catalogue refresh a chance, then victim must still work
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            resps, _ = exchange(
                cluster,
                host("victim", cluster),
                get("/api/users", "Connection: close", "Accept: application/json"),
                app_certs["victim"],
            )
            assert resps[0][0] == 200, resps[0]
            time.sleep(0.5)
    finally:
        cluster.tctl("rm", "app/impostor")


def test_the_host_header_does_not_choose_the_public_origin(
    cluster: Cluster, app_certs: dict[str, Any]
) -> None:
    """SNI says atkaio; ``Host: evil.example`` becomes X-Forwarded-Host and the
    origin Location headers are rewritten to."""
    resps, _ = exchange(
        cluster,
        host("atkaio", cluster),
        get("/redirect", "Connection: close", host_header="evil.example"),
        app_certs["atkaio"],
    )
    assert resps[0][0] == 302
    assert resps[0][1]["location"].startswith(f"https://atkaio.localhost:{cluster.web_port}/")


def test_a_bad_pipelined_request_does_not_replace_the_answer_to_a_good_one(
    cluster: Cluster, app_certs: dict[str, Any], stdlib_up: StdlibUpstream
) -> None:
    """``POST /m`` (forwarded, executed by the app) pipelined with a malformed request:
    the client must get the app's answer to the POST before the 400, not a 400 in its place."""
    m = marker()
    post = f"POST {m} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".encode()
    bad = get("/b", "Content-Length: 1", "Transfer-Encoding: chunked")
    resps, _ = exchange(cluster, host("atk", cluster), get("/a") + post + bad, app_certs["atk"])
    assert wait_for(lambda: stdlib_up.find(m)), "the POST never reached the app"
    assert [r[0] for r in resps] == [200, 200, 400], resps


@pytest.mark.parametrize(
    ("second", "statuses"),
    [
        (get("/ws", "Connection: Upgrade", "Upgrade: websocket"), [200, 200]),
        (get("/x-teleport-auth?token=t"), [200, 307]),
    ],
    ids=["refused-upgrade", "reserved-path"],
)
def test_pipelined_requests_before_an_upgrade_or_reserved_path_get_their_answers(
    cluster: Cluster, app_certs: dict[str, Any], second: bytes, statuses: list[int]
) -> None:
    """Both answers must arrive (then the connection ends) when ``GET /a`` is pipelined
    with a request that ends the connection."""
    resps, _ = exchange(cluster, host("atk", cluster), get("/a") + second, app_certs["atk"])
    assert [r[0] for r in resps] == statuses, resps


def test_connection_close_from_the_client_ends_the_connection(
    cluster: Cluster, app_certs: dict[str, Any]
) -> None:
    """RFC 9112 9.6: after answering a request with ``Connection: close`` the server closes.
    http.server closes its side without saying so; the proxy keeps the client waiting."""
    with connect(cluster, host("atk", cluster), app_certs["atk"]) as s:
        s.settimeout(10)
        r = Reader(s)
        s.sendall(get("/a", "Connection: close"))
        assert (r.response() or (0,))[0] == 200
        assert r.rest() == b""


def test_another_agents_labels_for_the_same_app_name_do_not_open_it(
    cluster: Cluster, aio_port: int, stdlib_up: StdlibUpstream, tmp_path: Path
) -> None:
    """A second App Service (a dev team's agent, or a stolen App join token) announces
    ``prodapp2`` with ``env: dev``. Sessions still go to the in-process agent serving
    the real (env=prod) app, but the decision reads the labels of whichever
    app_server record comes first - here the impostor's (its host id sorts first)."""
    import re
    import signal
    import subprocess

    from tests.integration.conftest import TELEPORT, cli_env, parse_status

    out = cluster.tctl("tokens", "add", "--type=app").stdout
    token = re.search(r"--token=([0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    pin = parse_status(cluster.tctl("status").stdout)["CA pin"]
    data = tmp_path / "agent"
    data.mkdir()
    (data / "host_uuid").write_text("00000000-0000-0000-0000-000000000000")
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            TELEPORT,
            "app",
            "start",
            f"--token={token}",
            f"--ca-pin={pin}",
            f"--auth-server={cluster.public_addr}",
            "--name=prodapp2",
            f"--uri=http://127.0.0.1:{aio_port}",
            "--labels=env=dev",
            f"--data-dir={data}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:

        def both() -> bool:
            servers = json.loads(cluster.tctl("apps", "ls", "--format=json").stdout)
            return sum(s["metadata"]["name"] == "prodapp2" for s in servers) > 1

        assert wait_for(both, 30), (tmp_path / "agent.log").read_text()
        cert = sign(cluster, tmp_path / "mal", "mallory", "--app-name=prodapp2")
        m = marker()
        resps, _ = exchange(cluster, host("prodapp2", cluster), get(m), cert, n=1)
        assert resps[0][0] == 403, resps[0]
        assert stdlib_up.find(m) is None
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        log.close()


def test_a_new_apps_own_public_addr_is_its_route_and_name_from_its_first_connection(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An app registered a moment ago with a public_addr of its own: the very first
    connection for that name (before the proxy's periodic catalogue read) is routed to
    the app (a 401 for an API client without a certificate, not the web API's answer)
    and gets a certificate naming it."""
    from cryptography import x509

    name = "fresh" + uuid.uuid4().hex[:10]
    addr = f"{name}.example.test"
    res = {
        "kind": "app",
        "version": "v3",
        "metadata": {"name": name, "labels": {"dyn": "yes"}},
        "spec": {"uri": "http://127.0.0.1:9", "public_addr": addr},
    }
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(res))
    cluster.tctl("create", "-f", str(tmp_path / "app.yaml"))
    try:
        assert wait_for(lambda: name in cluster.tctl("apps", "ls").stdout, 30)
        resps, _ = exchange(
            cluster, addr, get("/api/x", "Connection: close", "Accept: application/json")
        )
        assert resps[0][0] == 401, resps[0]
        assert b"certificate" in resps[0][2].lower(), resps[0]
        with connect(cluster, addr) as s:
            der = s.getpeercert(binary_form=True)
        assert der is not None
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert addr in san.value.get_values_for_type(x509.DNSName)
    finally:
        cluster.tctl("rm", f"app/{name}")
