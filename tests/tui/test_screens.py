"""Local proxies (a real tbot proxy), audit (the admin's view of the cluster's log), apps and login."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from jumpgate.core.client.pgquery import run_query
from jumpgate.core.client.snippets import ConnParams
from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.apps import AppsScreen
from jumpgate.tui.screens.audit import AuditScreen
from jumpgate.tui.screens.databases import DatabasesScreen
from jumpgate.tui.screens.dialogs import ConfirmScreen
from jumpgate.tui.screens.login import LoginScreen
from jumpgate.tui.screens.proxies import ProxiesScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.resource_table import ResourceTable
from tests.conftest import free_port
from tests.integration.conftest import BIN, Cluster, cli_env
from tests.integration.dbhelpers import PASSWORD, invite_user
from tests.integration.test_tbot import DB_ROLE, TBOT, tbot
from tests.tui.conftest import (
    APP,
    SIZE,
    bot_config,
    doc_shot,
    login_offer,
    run_async,
    shown,
    started,
    switch,
    until,
)


@pytest.fixture
def tbot_dest(db_cluster: Cluster, tmp_path: Path) -> Path:
    """A database output for "pg" written by tbot start --oneshot."""
    cfg, dest = bot_config(db_cluster, tmp_path)
    tbot("start", "-c", cfg, "--oneshot")
    return dest


def test_proxies_screen_shows_a_running_tbot_proxy_live(
    db_cluster: Cluster, postgres: Path, alice_home: Path, tbot_dest: Path
) -> None:
    port = free_port()
    env = cli_env()
    env["TELEPORT_HOME"] = str(alice_home)
    proc = subprocess.Popen(
        [
            TBOT,
            "proxy",
            f"--destination-dir={tbot_dest}",
            f"--proxy={db_cluster.public_addr}",
            "db",
            f"--port={port}",
            "--tunnel",
            "pg",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "p", ProxiesScreen)

            def mine() -> list:  # type: ignore[type-arg]
                return [p for p in screen.proxies if p.listen == f"127.0.0.1:{port}"]

            await until(pilot, lambda: bool(mine()), "the tbot proxy")
            (p,) = mine()
            assert (p.program, p.pid, p.mode, p.target) == ("tbot", proc.pid, "tunnel", "pg")
            assert p.connections_total == 0
            res = run_query(
                ConnParams("127.0.0.1", port, "alice", "example", tunnel=True), "select 1"
            )
            assert res.rows == [["1"]]
            await until(
                pilot,
                # the status is written when the connection opens and again with its bytes
                lambda: (
                    bool(mine()) and mine()[0].connections_total == 1 and mine()[0].bytes_in > 0
                ),
                "the connection and its bytes in the status",
            )
            hist = screen.history[screen.key(mine()[0])]
            await until(pilot, lambda: max(hist) > 0, "throughput in the sparkline data")
            doc_shot(app, "proxies")
            # stopping a proxy this dashboard did not start is refused with an explanation
            await pilot.press("x")
            await until(
                pilot,
                lambda: any("Only proxies started" in str(n.message) for n in app._notifications),
                "the refusal",
            )
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
            await until(pilot, lambda: not mine(), "the proxy to leave the list")

    try:
        run_async(scenario)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_audit_screen_lists_filters_and_details_events(
    db_cluster: Cluster, alice_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(db_cluster.config))
    db_cluster.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)  # an event to find
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "u", AuditScreen)
            table = screen.query_one("#events", ResourceTable)
            await until(pilot, lambda: bool(table.rows), "audit events")
            await pilot.press("slash", *"event=role.created name=machine-id-db", "enter")
            await until(pilot, lambda: len(table.view) >= 1, "the filtered event")
            row = table.current
            assert row is not None and row.cells[1] == "role.created"
            assert '"name": "machine-id-db"' in screen.detail
            doc_shot(app, "audit")

    run_async(scenario)


def _assert_users_api(snippet: str) -> None:
    """Run a curl snippet of the Apps screen against the test app's ``/api/users``."""
    *curl, base = shlex.split(snippet)
    answer = subprocess.run(
        [*curl, "-sS", "--max-time", "60", base.rstrip("/") + "/api/users"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)[0]["login"] == "admin", answer.stdout


def test_apps_screen_lists_a_real_app_and_its_curl_snippet_reaches_it(
    db_cluster: Cluster, alice_home: Path
) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))
    url = f"https://{APP}.localhost:{db_cluster.web_port}"

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "a", AppsScreen)
            table = screen.query_one("#apps", ResourceTable)
            count = screen.query_one("#app-count")
            await until(pilot, lambda: bool(table.rows), "the app list")
            assert [r.key for r in table.rows] == [APP]
            assert table.rows[0].cells == (
                APP,
                f"{APP}.localhost",
                "Grafana (the test web app)",
                "env=dev,team=observability",
            )
            assert str(count.render()) == "1 application"
            details = screen.query_one("#app-details")
            await until(pilot, lambda: APP in str(details.render()), "the details")
            text = str(details.render())
            assert f"URL      {url}\n" in text, text
            assert f"tsh proxy app {APP} --port=8080" in text
            assert "curl http://localhost:8080/" in text
            # with a certificate: after `tsh apps login`, the snippet reaches the app as is
            assert f"tsh apps login {APP}\n" in text
            cert_curl = screen.cert_curl(APP)
            assert f"  {cert_curl}\n" in text and "--cert" in cert_curl
            env = cli_env() | {"TELEPORT_HOME": str(alice_home)}
            subprocess.run(
                [str(BIN / "tsh"), "apps", "login", APP],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
            _assert_users_api(cert_curl)
            doc_shot(app, "apps")
            # a local proxy started here: the details show curl against it, and it works
            await pilot.press("s")
            state = app.state
            await until(pilot, lambda: bool(state.started), "the app's local proxy", timeout=60)
            proxy = state.started[0]
            assert (proxy.target, proxy.host) == (APP, "127.0.0.1")
            snippet = f"curl http://127.0.0.1:{proxy.port}/"
            await until(pilot, lambda: snippet in str(details.render()), "the running proxy")
            assert screen.curl_snippet(APP) == snippet
            _assert_users_api(snippet)
            # filters: a label, then nothing left
            await pilot.press("slash", *"team=observability", "enter")
            await until(pilot, lambda: len(table.view) == 1, "the label filter")
            await pilot.press("slash", *" nope", "enter")
            await until(pilot, lambda: not table.view, "the empty filter")
            await until(
                pilot, lambda: "No application matches" in str(details.render()), "no match"
            )
            await until(pilot, lambda: app.focused is table, "the table's focus")
            await pilot.press("o")  # nothing selected: a warning, no crash
            await until(
                pilot,
                lambda: any(
                    "No application selected" in str(n.message) for n in app._notifications
                ),
                "the warning",
            )

    run_async(scenario)


def test_login_dialog_logs_in_with_the_tsh_login_steps(
    db_cluster: Cluster, tmp_path: Path, pg_service: Path
) -> None:
    host_ca = db_cluster.tctl("auth", "export", "--type=tls-host").stdout
    invite_user(
        db_cluster, host_ca, "dora", "--roles=access", "--db-users=alice", "--db-names=example"
    )
    home = tmp_path / "tsh"
    # localhost is a loopback name: trusted on first use, as tsh login does
    app = JumpgateApp(
        DashboardState(Options(home=str(home), proxy=db_cluster.public_addr, user="dora"))
    )

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            login = await login_offer(pilot)
            assert isinstance(login, LoginScreen)
            ok = login.query_one("#ok")
            await until(pilot, lambda: ok.region.area > 0, "the dialog's layout")
            login.query_one("#password").value = "wrong password"  # type: ignore[attr-defined]
            await pilot.click("#ok")
            await until(pilot, lambda: "invalid" in login.message, f"the refusal ({login.message})")  # type: ignore[attr-defined]
            login.query_one("#password").value = PASSWORD  # type: ignore[attr-defined]
            await pilot.click("#ok")
            await shown(pilot, DatabasesScreen, "the login")
            table = app.screen.query_one("#dbs", ResourceTable)
            await until(pilot, lambda: [r.key for r in table.rows] == ["pg"], "the databases")
            assert not isinstance(app.screen, ConfirmScreen)

    run_async(scenario)
    prof = DashboardState(Options(home=str(home))).profile()
    assert prof is not None and prof.user == "dora"
    assert oct(os.stat(prof.key_path).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("proxy", "first"), [("proxy.example.com:443", "password"), (None, "proxy")]
)
def test_login_offer_focuses_one_field_from_its_first_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str | None, first: str
) -> None:
    """The field that takes the first keys is decided once: the password when the proxy is
    known, else the proxy. It has the focus as soon as the dialog has any, and keeps it
    while the screen behind the dialog finishes its (failed) load."""
    monkeypatch.setenv("TELEPORT_CONFIG_FILE", str(tmp_path / "no-teleport.yaml"))
    app = JumpgateApp(
        DashboardState(Options(home=str(tmp_path / "tsh"), user="alice", proxy=proxy))
    )

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            # the first moment the dialog has a focus at all (a tight poll, not login_offer's)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not (isinstance(app.screen, LoginScreen) and app.focused is not None):
                assert loop.time() < deadline, "no login offer with a focus"
                await asyncio.sleep(0)
            login = app.screen
            assert app.focused is login.query_one(f"#{first}")
            await login_offer(pilot)
            count = app.screen_stack[0].query_one("#count")
            await until(pilot, lambda: "Loading" not in str(count.render()), "the failed load")
            await until(pilot, lambda: login.query_one("#password").region.area > 0, "layout")
            assert app.focused is login.query_one(f"#{first}")
            where = f" to {proxy}" if proxy else ""
            assert str(count.render()) == f"not logged in{where}"

    run_async(scenario)
