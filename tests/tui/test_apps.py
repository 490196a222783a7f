"""Apps screen: `o` opens the selected app's URL in the browser (webbrowser.open recorded)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import pytest

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.apps import AppsScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.resource_table import ResourceTable
from tests.integration.conftest import Cluster
from tests.tui.conftest import APP, SIZE, run_async, started, switch, until


@pytest.mark.parametrize("browser", [True, False], ids=["browser", "no-browser"])
def test_o_opens_the_apps_url(
    db_cluster: Cluster, alice_home: Path, monkeypatch: pytest.MonkeyPatch, browser: bool
) -> None:
    """`o` on the real app: webbrowser.open gets its public URL (off the UI thread) and the
    notification says so, or, without a browser, shows the URL to open by hand."""
    opened: list[str] = []

    def fake_open(url: str, *args: object, **kwargs: object) -> bool:
        opened.append(url)
        return browser

    monkeypatch.setattr(webbrowser, "open", fake_open)
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))
    url = f"https://{APP}.localhost:{db_cluster.web_port}"

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "a", AppsScreen)
            table = screen.query_one("#apps", ResourceTable)
            await until(pilot, lambda: table.current is not None, "the app list")
            assert table.current is not None and table.current.key == APP
            assert not opened
            await pilot.press("o")
            await until(pilot, lambda: bool(opened), "webbrowser.open")
            assert opened == [url]
            title = "Opened" if browser else "No browser found; the URL is"
            await until(
                pilot,
                lambda: any(n.message == url and n.title == title for n in app._notifications),
                "the notification",
            )
            # nothing selected (the filter matches no app): nothing opened, a warning
            await pilot.press("slash", *"nothing-matches", "enter")
            await until(pilot, lambda: table.current is None, "the empty filter")
            await pilot.press("o")
            await until(
                pilot,
                lambda: any(n.message == "No application selected." for n in app._notifications),
                "the warning",
            )
            assert opened == [url]

    run_async(scenario)
