"""Certificates screen: the tsh profile and a running tbot (real daemon, diagnostics, SIGHUP)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from textual.widgets import DataTable

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.certificates import CertificatesScreen
from jumpgate.tui.state import DashboardState, Options
from tests.conftest import free_port
from tests.integration.conftest import Cluster, parse_status
from tests.integration.test_tbot import DB_ROLE, _get, _metric, _poll, add_bot, daemon, db_output
from tests.integration.test_tbot import seed_config as write_seed_config
from tests.tui.conftest import SIZE, doc_shot, run_async, started, switch, until

COUNTDOWN = re.compile(r"^(\d+d\d\dh\d\dm|\d+h\d\dm\d\ds|\d+m\d\ds)$")


def test_profile_and_tbot_certificates_with_countdown_and_renew_now(
    db_cluster: Cluster, alice_home: Path, tmp_path: Path
) -> None:
    db_cluster.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)
    pin = parse_status(db_cluster.tctl("status").stdout)["CA pin"]
    _, token = add_bot(db_cluster)
    port = free_port()
    dest, storage = tmp_path / "machine-id", tmp_path / "bot"
    cfg = write_seed_config(
        tmp_path / "tbot.yaml",
        addr=db_cluster.public_addr,
        token=token,
        pin=pin,
        storage=storage,
        outputs=db_output(dest, service="pg"),
        extra=f"diag_addr: 127.0.0.1:{port}\n",
    )
    base = f"http://127.0.0.1:{port}"
    with daemon("start", "-c", cfg) as proc:
        _poll("/readyz", lambda: _get(f"{base}/readyz")[0] == 200)
        app = JumpgateApp(DashboardState(Options(home=str(alice_home), configs=[str(cfg)])))

        async def scenario() -> None:
            async with app.run_test(size=SIZE) as pilot:
                await started(pilot)
                screen = await switch(pilot, "c", CertificatesScreen)
                table = screen.query_one("#certs", DataTable)
                await until(pilot, lambda: table.row_count == 3, "three certificates")
                kinds = {c.kind: c for c in screen.certs}
                assert set(kinds) == {"tsh profile", "tbot identity", "tbot output"}
                assert kinds["tsh profile"].subject == "alice"
                out = kinds["tbot output"]
                assert out.route == "db pg (postgres) as alice on example"
                assert out.subject.startswith("bot-") and out.config == str(cfg)
                for row in range(3):
                    left = str(table.get_cell_at((row, 2)))  # type: ignore[arg-type]
                    assert COUNTDOWN.match(left), left
                # live: the countdown of the profile moves on its own
                first = str(table.get_cell_at((0, 2)))  # type: ignore[arg-type]
                await until(
                    pilot,
                    lambda: str(table.get_cell_at((0, 2))) != first,  # type: ignore[arg-type]
                    "the countdown to tick",
                    timeout=5,
                )
                # the diagnostics endpoint is read
                await until(pilot, lambda: bool(screen.diag), "diagnostics")
                assert "ready" in str(table.get_cell_at((2, 6)))  # type: ignore[arg-type]
                table.move_cursor(row=[c.kind for c in screen.certs].index("tbot output"))
                await pilot.pause()
                doc_shot(app, "certificates")
                # renew now: SIGHUP to the tbot running this config (found through /proc)
                before = (dest / "tlscert").read_bytes()
                table.move_cursor(row=[c.kind for c in screen.certs].index("tbot output"))
                await pilot.press("r")
                await until(
                    pilot,
                    lambda: _metric(_get(f"{base}/metrics")[1], "tbot_renewals_total") == 1,
                    "tbot to renew",
                )
                await until(pilot, lambda: (dest / "tlscert").read_bytes() != before, "new output")
                assert any("SIGHUP" in str(n.message) for n in app._notifications)

        run_async(scenario)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
