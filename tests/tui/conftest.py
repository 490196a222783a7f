"""Fixtures of the dashboard tests: real clusters (shared with the integration tests) and helpers
to drive the Textual app with its Pilot."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.integration import test_tsh as _tsh  # noqa: E402
from tests.integration.conftest import Cluster, cluster  # noqa: E402, F401 - shared fixture

# the database-access fixtures of the tsh tests: a cluster whose Database Service serves "pg",
# and a real PostgreSQL behind it
db_cluster = _tsh.db_cluster
pg_port = _tsh.pg_port
postgres = _tsh.postgres
saved_profile = _tsh.saved_profile

#: The terminal size of every Pilot run and snapshot.
SIZE = (150, 42)


async def until(pilot: Any, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Let the app run until ``check()`` holds (polled between frames), or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    """Run one Pilot scenario."""
    asyncio.run(fn())  # type: ignore[arg-type]


@pytest.fixture
def pg_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private pg service file (tsh db login writes one)."""
    path = tmp_path / "pg_service.conf"
    monkeypatch.setenv("PGSERVICEFILE", str(path))
    return path


@pytest.fixture
def alice_home(db_cluster: Cluster, tmp_path: Path, pg_service: Path) -> Path:
    """A tsh profile for alice on the database cluster (from tctl auth sign)."""
    home = tmp_path / "tsh"
    saved_profile(db_cluster, home, tmp_path)
    return home


#: Where the guide's screenshots go (docs/guides/dashboard.md).
DOC_IMG = Path(_REPO) / "docs" / "guides" / "img"


def doc_shot(app: Any, name: str) -> None:
    """With ``JUMPGATE_DOC_SHOTS=1``, save the screen as ``docs/guides/img/<name>.svg``."""
    import os

    if os.environ.get("JUMPGATE_DOC_SHOTS") == "1":
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(filename=f"{name}.svg", path=str(DOC_IMG))


def no_blink(app: Any) -> None:
    """Stop every input's cursor from blinking (stable screenshots)."""
    from textual.widgets import Input

    for screen in app.screen_stack:
        for box in screen.query(Input):
            box.cursor_blink = False
