"""The invite page in a real headless Chromium (Debian's), driven by Playwright.

The form is filled the way a screen-reader user finds it: by label and role. The
browser trusts exactly the proxy's certificate (its SPKI pin), so TLS is real.
Needs ``/usr/bin/chromium`` (scripts/install-system-deps.sh) and the ``playwright``
package (the ``dev`` extra); ``playwright install`` is never used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.conftest import Cluster
from tests.integration.test_web_login import PASSWORD, add_user, otp_cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Chromium's console line for a document answered 400 or 404 (expected on the invite pages).
EXPECTED_STATUS = re.compile(r"^Failed to load resource: .*status of (400|404)\b")


def _require_browser() -> Any:
    """The Playwright module, or skip (outside CI) / fail (in CI) with the fix."""
    problem = ""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if not problem and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (run scripts/install-system-deps.sh as root)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return sync_api


def spki_pin(cluster: Cluster, ca_file: Path) -> str:
    """base64(SHA-256(SPKI)) of the proxy's certificate, fetched over a verified connection."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("localhost", cluster.web_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Browser:
    """One Chromium for a cluster, trusting only that cluster's proxy certificate."""

    def __init__(self, pw: Any, cluster: Cluster, pin: str) -> None:
        self.cluster = cluster
        self.browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        )
        self.problems: list[str] = []

    def page(self, **context: Any) -> Any:
        """A fresh page; console errors and warnings and page errors go to ``problems``.

        The invite pages answer 400 (form errors) and 404 (a spent link) on purpose;
        Chromium logs those document statuses as console errors, so those are not problems.
        """
        self.problems = []
        page = self.browser.new_context(**context).new_page()
        page.set_default_timeout(15_000)

        def on_console(msg: Any) -> None:
            if msg.type not in ("error", "warning"):
                return
            where = urllib.parse.urlsplit(msg.location.get("url", "")).path
            if where.startswith("/web/invite/") and EXPECTED_STATUS.search(msg.text):
                return
            self.problems.append(f"console {msg.type}: {msg.text} ({where})")

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        return page

    def url(self, path: str) -> str:
        return f"https://{self.cluster.public_addr}{path}"

    def close(self) -> None:
        self.browser.close()


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    """One Playwright driver for the module (the sync API allows only one at a time)."""
    manager = _require_browser().sync_playwright()
    driver = manager.start()
    try:
        yield driver
    finally:
        manager.__exit__(None, None, None)


def _browser_for(pw: Any, cluster: Cluster, root: Path) -> Iterator[Browser]:
    ca = root / "host-ca.pem"
    ca.write_text(cluster.tctl("auth", "export", "--type=tls-host").stdout)
    b = Browser(pw, cluster, spki_pin(cluster, ca))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def browser(
    pw: Any, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    yield from _browser_for(pw, cluster, tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def otp_browser(pw: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with otp_cluster(tmp_path_factory.mktemp("otp-browser")) as c:
        yield from _browser_for(pw, c, c.root)


def _screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 2_000, path


def test_invite_in_a_browser(browser: Browser, tmp_path: Path) -> None:
    sync = _require_browser()
    expect = sync.expect
    path = add_user(browser.cluster, "grace")
    page = browser.page()
    page.goto(browser.url(path))
    expect(page).to_have_title(re.compile("Set up your account"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your Jumpgate account")
    expect(page.get_by_label("User name")).to_have_value("grace")
    _screenshot(page, tmp_path / "invite.png")

    # a mismatched confirmation: the form comes back with an alert, nothing set
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD + "?")
    page.get_by_role("button", name="Set password").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("The two passwords do not match")
    expect(page.get_by_label("Confirm password")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Password", exact=True)).to_have_value("")  # never echoed
    _screenshot(page, tmp_path / "invite-error.png")

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account is ready")
    expect(page.locator("pre")).to_have_text(
        f"tsh login --proxy={browser.cluster.public_addr} --user=grace"
    )
    _screenshot(page, tmp_path / "invite-done.png")

    # the link is spent
    page.goto(browser.url(path))
    expect(page.get_by_role("alert")).to_contain_text("invalid or has expired")
    assert browser.problems == [], browser.problems


def test_invite_page_reflows_at_200_percent_and_in_dark_mode(
    browser: Browser, tmp_path: Path
) -> None:
    sync = _require_browser()
    path = add_user(browser.cluster, "heidi")
    # 200% zoom of a 1280x800 window is a 640x400 CSS viewport at twice the pixel density
    page = browser.page(
        viewport={"width": 640, "height": 400}, device_scale_factor=2, color_scheme="dark"
    )
    page.goto(browser.url(path))
    sync.expect(page.get_by_label("Password", exact=True)).to_be_visible()
    no_hscroll = page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert no_hscroll, "the page scrolls sideways at 200% zoom"
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(18, 18, 22)", bg  # the dark palette applies
    _screenshot(page, tmp_path / "invite-dark-200.png")
    assert browser.problems == [], browser.problems


def test_otp_enrollment_in_a_browser(otp_browser: Browser, tmp_path: Path) -> None:
    sync = _require_browser()
    expect = sync.expect
    path = add_user(otp_browser.cluster, "ivan")
    page = otp_browser.page()
    page.goto(otp_browser.url(path))
    expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    secret = page.locator("#otp-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret), secret
    code_field = page.get_by_label("Authenticator code")
    expect(code_field).to_have_attribute("inputmode", "numeric")
    expect(code_field).to_have_attribute("autocomplete", "one-time-code")
    _screenshot(page, tmp_path / "otp.png")

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    code_field.fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("alert")).to_contain_text("authenticator code is not valid")
    # the same secret is shown again, so the app already set up keeps working
    assert page.locator("#otp-secret").inner_text().replace(" ", "") == secret

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).at(time.time()))
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account is ready")
    _screenshot(page, tmp_path / "otp-done.png")
    assert browser_url_host(page.url) == otp_browser.cluster.public_addr
    assert otp_browser.problems == [], otp_browser.problems


def browser_url_host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc
