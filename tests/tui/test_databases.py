"""Databases screen against a real cluster (Database Service "pg", a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from textual.widgets import Checkbox, Input, Label

from jumpgate.core.client import snippets
from jumpgate.core.client.pgquery import run_query
from jumpgate.core.client.snippets import ConnParams
from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.databases import DatabasesScreen
from jumpgate.tui.screens.dialogs import DbOptionsScreen
from jumpgate.tui.screens.proxies import ProxiesScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.resource_table import ResourceTable
from tests.integration.conftest import Cluster, cli_env
from tests.tui.conftest import (
    SIZE,
    decline_login,
    doc_shot,
    run_async,
    shown,
    started,
    switch,
    until,
)

TSH = str(Path(sys.executable).parent / "tsh")


def synthetic(n: int) -> list[dict[str, object]]:
    """``db.list``-shaped entries."""
    return [
        {
            "name": f"db-{i:05d}",
            "protocol": "postgres",
            "description": f"Synthetic database {i}",
            "labels": {"env": "prod" if i % 4 == 0 else "dev", "team": f"t{i % 10}"},
            "allowed_users": ["alice"],
            "allowed_names": ["example"],
        }
        for i in range(n)
    ]


def test_lists_filters_and_details_from_the_cluster(db_cluster: Cluster, alice_home: Path) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = app.screen
            assert isinstance(screen, DatabasesScreen)
            table = screen.query_one("#dbs", ResourceTable)
            await until(pilot, lambda: bool(table.rows), "the database list")
            assert [r.key for r in table.rows] == ["pg"]
            assert table.rows[0].cells[:3] == ("pg", "postgres", "Example PostgreSQL")
            details_widget = screen.query_one("#details")
            # the details follow the cursor's Highlighted message, a frame after the rows
            await until(
                pilot, lambda: "tsh db connect pg" in str(details_widget.render()), "the details"
            )
            details = str(details_widget.render())
            assert f"local proxy → localhost:{db_cluster.web_port} → pg" in details
            bar = str(screen.query_one("#profile-bar").render())
            assert "alice@localhost" in bar and "session" in bar
            doc_shot(app, "databases-cluster")
            # type-to-filter: label filters and words
            await pilot.press("slash", *"env=prod")
            await until(pilot, lambda: not table.view, "the env=prod filter")
            assert str(screen.query_one("#count").render()) == "0 of 1 database"
            await pilot.press("escape")
            await until(pilot, lambda: len(table.view) == 1, "the cleared filter")
            await pilot.press("slash", *"example env=dev", "enter")
            await until(pilot, lambda: len(table.view) == 1, "the env=dev filter")
            assert app.focused is table

    run_async(scenario)


def test_local_proxy_started_from_the_dashboard_carries_a_query(
    db_cluster: Cluster, postgres: Path, alice_home: Path
) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            table = app.screen.query_one("#dbs", ResourceTable)
            await until(pilot, lambda: bool(table.rows), "the database list")
            await pilot.press("s")
            await shown(pilot, DbOptionsScreen, "the dialog")
            dialog = app.screen
            ok = dialog.query_one("#ok")
            await until(pilot, lambda: ok.region.area > 0, "the dialog's layout")
            dialog.query_one("#db-user").value = "alice"  # type: ignore[attr-defined]
            dialog.query_one("#db-name").value = "example"  # type: ignore[attr-defined]
            await pilot.click("#ok")
            state = app.state
            await until(pilot, lambda: bool(state.started), "the local proxy", timeout=60)
            proxy = state.started[0]
            assert proxy.mode == "tunnel" and proxy.target == "pg"
            res = run_query(
                ConnParams("127.0.0.1", proxy.port, "alice", "example", tunnel=True),
                "select current_user, current_database()",
            )
            assert res.rows == [["alice", "example"]]
            # the proxies screen finds it through its status file
            proxies = await switch(pilot, "p", ProxiesScreen)
            await until(
                pilot,
                lambda: any(
                    p.listen.endswith(f":{proxy.port}") and p.connections_total >= 1
                    for p in proxies.proxies
                ),
                "the proxy's status with the connection",
            )
            (mine,) = [p for p in proxies.proxies if p.listen.endswith(f":{proxy.port}")]
            assert mine.program == "jumpgate" and mine.mode == "tunnel" and mine.target == "pg"
            assert mine.bytes_in > 0 and mine.bytes_out > 0
            await pilot.press("x")
            await until(pilot, lambda: not state.started, "the proxy to stop")
            await until(pilot, lambda: not proxies.proxies, "the status file to go")

    run_async(scenario)


def test_ten_thousand_databases_through_the_same_data_path(tmp_path: Path) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(tmp_path / "none"))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await decline_login(pilot)  # the login offer (no profile)
            assert isinstance(screen, DatabasesScreen)
            screen.show_databases(synthetic(10_000))
            table = screen.query_one("#dbs", ResourceTable)
            assert len(table.view) == 10_000
            await pilot.press("end")
            assert table.current is not None and table.current.key == "db-09999"
            await pilot.press("slash", *"env=prod team=t0")
            await until(pilot, lambda: len(table.view) == 500, "the label filter")
            assert all(r.labels["env"] == "prod" for r in (table.rows[i] for i in table.view))
            assert "500 of 10,000 databases" in str(screen.query_one("#count").render())
            await pilot.press(*" 1000")
            await until(pilot, lambda: len(table.view) == 1, "the word filter")
            assert table.current is not None and table.current.key == "db-01000"

    run_async(scenario)


def test_tls_mode_local_proxy_carries_a_query_and_y_copies_its_connection_string(
    db_cluster: Cluster, postgres: Path, alice_home: Path
) -> None:
    """TLS mode (tunnel unchecked): the client brings the database certificate. The string
    `y` copies names the running proxy's port and the profile's files; libpq (psycopg)
    connects with it as pasted."""
    import psycopg

    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))
    prof = app.state.profile()
    assert prof is not None

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = app.screen
            table = screen.query_one("#dbs", ResourceTable)
            await until(pilot, lambda: bool(table.rows), "the database list")
            await pilot.press("s")
            await shown(pilot, DbOptionsScreen, "the dialog")
            dialog = app.screen
            await until(pilot, lambda: app.focused is dialog.query_one("#db-user"), "focus")
            await pilot.press(*"alice", "down", *"example")
            tunnel = dialog.query_one("#tunnel", Checkbox)
            await until(pilot, lambda: tunnel.region.area > 0, "the dialog's layout")
            await pilot.click("#tunnel")
            await until(pilot, lambda: not tunnel.value, "TLS mode")
            await pilot.click("#ok")
            state = app.state
            await until(pilot, lambda: bool(state.started), "the local proxy", timeout=60)
            proxy = state.started[0]
            assert (proxy.mode, proxy.target) == ("tls", "pg")
            # a query through it with the profile's files (its db certificate from the login)
            params = snippets.for_profile(
                prof, "pg", user="alice", database="example", port=proxy.port, tunnel=False
            )
            res = run_query(params, "select current_user, current_database()")
            assert res.rows == [["alice", "example"]]
            # y: the libpq string for this proxy, TLS files included
            details = screen.query_one("#details")
            await until(
                pilot,
                lambda: f"127.0.0.1:{proxy.port} (tls)" in str(details.render()),
                "the running proxy in the details",
            )
            await pilot.press("y")
            want = (
                f"host=localhost port={proxy.port} dbname=example user=alice "
                f"sslmode=verify-full sslrootcert={prof.ca_path} sslkey={prof.key_path} "
                f"sslcert={prof.db_cert_path('pg')}"
            )
            await until(pilot, lambda: app.clipboard == want, f"{want!r} in the clipboard")
            copied = app.clipboard

            def through_libpq() -> tuple[object, ...] | None:
                with psycopg.connect(copied, connect_timeout=15) as conn:
                    return conn.execute("select current_user, current_database()").fetchone()

            assert await asyncio.to_thread(through_libpq) == ("alice", "example")
            await until(
                pilot,
                lambda: any(n.title == "Copied" for n in app._notifications),
                "the copy notification",
            )

    run_async(scenario)


def test_y_copies_the_user_and_database_of_a_later_tsh_db_login(
    db_cluster: Cluster, alice_home: Path, pg_service: Path
) -> None:
    """Before any `tsh db login` the roles allow any user and name (placeholders); after one
    (outside the dashboard, no reload) the copied string and the snippets name its route."""
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))
    base = "host=localhost port=5433 dbname={db} user={user} sslmode=disable"

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = app.screen
            table = screen.query_one("#dbs", ResourceTable)
            await until(pilot, lambda: bool(table.rows), "the database list")
            await pilot.press("y")
            first = base.format(db="DATABASE", user="USER")
            await until(pilot, lambda: app.clipboard == first, f"{first!r} in the clipboard")
            env = cli_env()
            env.update(TELEPORT_HOME=str(alice_home), PGSERVICEFILE=str(pg_service))
            await asyncio.to_thread(
                subprocess.run,
                [TSH, "db", "login", "--db-user=alice", "--db-name=example", "pg"],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
            await pilot.press("y")
            second = base.format(db="example", user="alice")
            await until(pilot, lambda: app.clipboard == second, f"{second!r} in the clipboard")
            details = screen.query_one("#details")
            await until(pilot, lambda: second in str(details.render()), "the snippets")

    run_async(scenario)


def test_click_moves_the_cursor_and_double_click_opens_connect(tmp_path: Path) -> None:
    app = JumpgateApp(DashboardState(Options(home=str(tmp_path / "none"))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await decline_login(pilot)
            assert isinstance(screen, DatabasesScreen)
            screen.show_databases(synthetic(500))
            table = screen.query_one("#dbs", ResourceTable)
            details = screen.query_one("#details")
            await until(pilot, lambda: table.region.area > 0, "the table's layout")
            # line 0 is the header: a click there moves nothing
            await pilot.click("#dbs", offset=(3, 0))
            assert table.current is not None and table.current.key == "db-00000"
            await pilot.click("#dbs", offset=(3, 4))  # the 4th row
            await until(pilot, lambda: table.cursor == 3, "the cursor on the clicked row")
            assert table.current is not None and table.current.key == "db-00003"
            await until(pilot, lambda: "Synthetic database 3\n" in str(details.render()), "details")
            # scrolled a page down, a click lands on the row drawn there
            await pilot.press("pagedown", "pagedown")
            await until(pilot, lambda: table.scroll_offset.y > 0, "the scroll")
            top = int(table.scroll_offset.y)
            await pilot.click("#dbs", offset=(3, 2))
            await until(pilot, lambda: table.cursor == top + 1, "the cursor after the scroll")
            assert table.current is not None and table.current.key == f"db-{top + 1:05d}"
            assert not isinstance(app.screen, DbOptionsScreen)  # one click selects nothing
            # a double click connects: the options dialog for that database
            await pilot.double_click("#dbs", offset=(3, 5))
            await shown(pilot, DbOptionsScreen, "the dialog")
            dialog = app.screen
            key = f"db-{top + 4:05d}"
            assert table.current is not None and table.current.key == key
            title = dialog.query_one("#question", Label)
            assert str(title.render()) == f"Connect to {key} (tsh db connect)"
            assert dialog.query_one("#db-user", Input).value == "alice"
            assert dialog.query_one("#db-name", Input).value == "example"
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, "the dialog to close")

    run_async(scenario)
