"""Databases screen against a real cluster (Database Service "pg", a real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from jumpgate.core.client.pgquery import run_query
from jumpgate.core.client.snippets import ConnParams
from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.databases import DatabasesScreen
from jumpgate.tui.screens.dialogs import DbOptionsScreen
from jumpgate.tui.screens.proxies import ProxiesScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.resource_table import ResourceTable
from tests.integration.conftest import Cluster
from tests.tui.conftest import SIZE, decline_login, doc_shot, run_async, started, switch, until


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
            assert "0 of 1 databases" in str(screen.query_one("#count").render())
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
            await until(pilot, lambda: isinstance(app.screen, DbOptionsScreen), "the dialog")
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
