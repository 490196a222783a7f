"""Certificates screen: the tsh profile and its db/app certificates, a running tbot (real
daemon, renewal times from its diagnostics, SIGHUP), short-lived certificates running out."""

from __future__ import annotations

import json
import re
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from rich.text import Text
from textual.widgets import DataTable

from jumpgate.tui.dashboard import JumpgateApp
from jumpgate.tui.screens.certificates import CertificatesScreen
from jumpgate.tui.state import DashboardState, Options
from jumpgate.tui.widgets.timefmt import fraction_style, short_time
from tests.conftest import free_port
from tests.integration.conftest import Cluster
from tests.integration.dbhelpers import tsh
from tests.integration.test_tbot import _get, _metric, _poll, daemon, tbot
from tests.tui.conftest import APP, SIZE, bot_config, doc_shot, run_async, started, switch, until

COUNTDOWN = re.compile(r"^(\d+d\d\dh\d\dm|\d+h\d\dm\d\ds|\d+m\d\ds)$")


def test_profile_and_tbot_certificates_with_countdown_and_renew_now(
    db_cluster: Cluster, alice_home: Path, tmp_path: Path
) -> None:
    port = free_port()
    cfg, dest = bot_config(
        db_cluster, tmp_path, extra=f"diag_addr: 127.0.0.1:{port}\nrenewal_interval: 30m\n"
    )
    base = f"http://127.0.0.1:{port}"

    def readyz() -> tuple[dict[str, Any], dict[str, Any]]:
        """tbot's own word: (identity, the output's detail)."""
        doc = json.loads(_get(f"{base}/readyz")[1])
        ((detail,),) = [list(doc["services"].values())]
        return doc["identity"], detail

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
                # the diagnostics endpoint is read: last/next renewal are tbot's, marked so
                await until(pilot, lambda: bool(screen.diag), "diagnostics")
                assert "ready" in str(table.get_cell_at((2, 6)))  # type: ignore[arg-type]
                ident, detail = readyz()
                for kind, doc in (("tbot identity", ident), ("tbot output", detail)):
                    key = str(kinds[kind].path)
                    assert cell(table, key, "Last") == f"{when(doc['last_renewal'])} (tbot)"
                    assert cell(table, key, "Next") == f"{when(doc['next_renewal'])} (tbot)"
                # tsh certificates are not renewed: when issued, no next renewal
                prof = kinds["tsh profile"]
                assert cell(table, str(prof.path), "Last") == short_time(issued(prof.path))
                assert cell(table, str(prof.path), "Next") == "-"
                table.move_cursor(row=[c.kind for c in screen.certs].index("tbot output"))
                details = screen.query_one("#cert-details")
                await until(pilot, lambda: "Next renewal" in str(details.render()), "details")
                text = str(details.render())
                nxt = parse(detail["next_renewal"]).astimezone()
                assert f"Next renewal  {nxt:%Y-%m-%d %H:%M:%S} (from tbot)\n" in text, text
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
                # the screen reads the diagnostics again: the renewal's times, to the millisecond
                await until(
                    pilot,
                    lambda: parse(readyz()[1]["last_renewal"]) > parse(detail["last_renewal"]),
                    "tbot's new last renewal",
                )
                _, renewed = readyz()
                want = (parse(renewed["last_renewal"]), parse(renewed["next_renewal"]))
                d = screen.diag[str(cfg)]
                await until(
                    pilot,
                    lambda: (
                        not isinstance(screen.diag[str(cfg)], str)
                        and screen.diag[str(cfg)].renewals(out.output) == want
                    ),  # type: ignore[union-attr]
                    "the renewed times on screen",
                )
                key = str(out.path)
                await until(
                    pilot,
                    lambda: cell(table, key, "Next") == f"{when(renewed['next_renewal'])} (tbot)",
                    "the new next renewal",
                )
                assert d is not screen.diag[str(cfg)]
                # tbot stops: its diagnostics no longer answer, the times are estimated
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
                await pilot.press("f5")
                await until(pilot, lambda: isinstance(screen.diag[str(cfg)], str), "no answer")
                await until(pilot, lambda: cell(table, key, "Next").endswith("(est.)"), "estimate")
                new = issued(dest / "tlscert")
                assert cell(table, key, "Last") == f"{short_time(new)} (est.)"
                assert (
                    cell(table, key, "Next") == f"{short_time(new + timedelta(minutes=30))} (est.)"
                )
                assert str(table.get_cell(key, "tbot")) == "unreachable"
                await until(pilot, lambda: "(estimated" in str(details.render()), "details")

        run_async(scenario)
        assert proc.poll() == 0


def parse(value: str) -> datetime:
    """An ISO-8601 UTC time from /readyz."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def when(value: str) -> str:
    """A /readyz time as the table shows it."""
    return short_time(parse(value))


def issued(path: Path) -> datetime:
    """When a certificate was issued: its NotBefore without the CA's one-minute backdate."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_before_utc + timedelta(minutes=1)


def cell(table: DataTable[Any], row: str, column: str) -> str:
    return str(table.get_cell(row, column))


def style(table: DataTable[Any], row: str) -> str:
    """The style of a row's countdown."""
    value = table.get_cell(row, "Left")
    assert isinstance(value, Text)
    return str(value.style)


@pytest.mark.parametrize(
    ("fraction", "want"),
    [
        (1.0, "green"),
        (0.3, "green"),
        (0.29, "yellow"),
        (0.1, "yellow"),
        (0.09, "bold red"),
        (0.0, "bold red reverse"),
    ],
)
def test_countdown_colour_by_remaining_fraction(fraction: float, want: str) -> None:
    assert fraction_style(fraction) == want


def test_short_lived_certificate_turns_yellow_red_expired_with_notifications(
    db_cluster: Cluster, alice_home: Path, tmp_path: Path
) -> None:
    """A certificate from tctl auth sign --ttl=20s in a destination directory: its countdown
    goes yellow, then red with a "low" notification, then EXPIRED with another one; the
    profile's (12h) stays green."""
    db_cluster.tctl(
        "auth", "sign", "--user=alice", "--format=tls", "--ttl=20s", f"--out={tmp_path / 'short'}"
    )
    dest = tmp_path / "short-lived"
    dest.mkdir()
    shutil.copy(tmp_path / "short.crt", dest / "tlscert")
    cert = x509.load_pem_x509_certificate((dest / "tlscert").read_bytes())
    begin, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert end - begin == timedelta(seconds=80)  # 20s, backdated one minute

    def fraction() -> float:
        return (end - datetime.now(UTC)) / (end - begin)

    app = JumpgateApp(DashboardState(Options(home=str(alice_home), destination_dirs=[str(dest)])))
    key, what = str(dest / "tlscert"), f"tbot output {dest}"

    def notified(text: str) -> bool:
        return any(
            n.message == text and n.severity == "warning" and n.title == "Certificate"
            for n in app._notifications
        )

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "c", CertificatesScreen)
            table = screen.query_one("#certs", DataTable)
            await until(pilot, lambda: table.row_count == 2, "two certificates")
            prof = next(c for c in screen.certs if c.kind == "tsh profile")
            assert style(table, str(prof.path)) == "green"
            # 20s of 80s left (25%): yellow, no warning yet — unless a slow start-up took
            # the 12 s the yellow phase lasts (the thresholds have their own test above)
            await until(pilot, lambda: style(table, key) in ("yellow", "bold red"), "yellow")
            if style(table, key) == "yellow":
                assert fraction() >= 0.1 - 1 / 80
                assert not any(what in str(n.message) for n in app._notifications)
            # under 10% of its lifetime left: red, and a warning
            await until(pilot, lambda: style(table, key) == "bold red", "red", timeout=20)
            assert fraction() < 0.1 + 1 / 80  # the tick comes at most a second late
            await until(
                pilot,
                lambda: any(
                    str(n.message).startswith(f"{what} expires in ") for n in app._notifications
                ),
                "the low warning",
            )
            # expired: reversed red, EXPIRED, and a warning of its own
            await until(
                pilot, lambda: style(table, key) == "bold red reverse", "expired", timeout=20
            )
            assert datetime.now(UTC) >= end
            assert cell(table, key, "Left") == "EXPIRED"
            await until(pilot, lambda: notified(f"{what} has expired"), "the expiry warning")
            assert style(table, str(prof.path)) == "green"

    run_async(scenario)


def test_profile_database_and_app_certificates_are_listed(
    db_cluster: Cluster, alice_home: Path
) -> None:
    """tsh db login and tsh apps login: their certificates are rows of the profile."""
    tsh(alice_home, "db", "login", "--db-user=alice", "--db-name=example", "pg")
    tsh(alice_home, "apps", "login", APP)
    app = JumpgateApp(DashboardState(Options(home=str(alice_home))))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "c", CertificatesScreen)
            table = screen.query_one("#certs", DataTable)
            await until(pilot, lambda: table.row_count == 3, "three certificates")
            rows = [
                [str(table.get_cell_at((r, col))) for col in (0, 1, 7, 9)]  # type: ignore[arg-type]
                for r in range(3)
            ]
            assert rows == [
                ["tsh profile", "localhost", "alice", "-"],
                ["database", "pg", "alice", "db pg (postgres) as alice on example"],
                ["app", APP, "alice", f"app {APP} ({APP}.localhost)"],
            ]
            for c in screen.certs:
                assert c.path.is_file() and c.roles
                assert COUNTDOWN.match(cell(table, str(c.path), "Left"))
                assert cell(table, str(c.path), "Next") == "-"
            # the app's row selected: its details
            await pilot.press("down", "down")
            details = screen.query_one("#cert-details")
            await until(pilot, lambda: f"app: {APP}" in str(details.render()), "app details")
            assert "Route         app grafana-example" in str(details.render())

    run_async(scenario)


def test_a_renewal_that_is_past_due_is_marked_due(
    db_cluster: Cluster, alice_home: Path, tmp_path: Path
) -> None:
    """A bot whose renewal_interval (1s) passes while it is not running: the Next column
    turns from the estimate to "due …" as the seconds tick, and the details say why."""
    cfg, dest = bot_config(db_cluster, tmp_path, extra="renewal_interval: 1s\n")
    tbot("start", "-c", cfg, "--oneshot")
    app = JumpgateApp(DashboardState(Options(home=str(alice_home), configs=[str(cfg)])))

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await started(pilot)
            screen = await switch(pilot, "c", CertificatesScreen)
            table = screen.query_one("#certs", DataTable)
            await until(pilot, lambda: any(c.output for c in screen.certs), "the bot's output")
            out = next(c for c in screen.certs if c.output)
            key = str(out.path)
            due = f"due {short_time(issued(dest / 'tlscert') + timedelta(seconds=1))} (est.)"
            await until(pilot, lambda: cell(table, key, "Next") == due, "the due renewal")
            assert table.get_cell(key, "Next").style == "yellow"
            table.move_cursor(row=[c.output for c in screen.certs].index(out.output))
            details = screen.query_one("#cert-details")
            await until(
                pilot,
                lambda: "due: renewing now, or tbot is not running" in str(details.render()),
                "the details' due note",
            )

    run_async(scenario)
