"""Fixtures of the dashboard tests: one real cluster per xdist worker (databases, an app,
PostgreSQL) and helpers to drive the Textual app with its Pilot until the exact state asserted."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.conftest import free_port  # noqa: E402
from tests.integration.apphelpers import add_app_service, upstream_app  # noqa: E402
from tests.integration.conftest import Cluster, make_cluster  # noqa: E402
from tests.integration.test_tsh import sign_alice  # noqa: E402
from tests.pg_fixture import PgServer, start_postgres  # noqa: E402

#: The terminal size of every Pilot run and snapshot.
SIZE = (150, 42)

#: The web app the cluster's App Service serves (tests/integration/app_upstream.py).
APP = "grafana-example"


# ------------------------------------------------------------------ one cluster per worker
# The dashboard tests only read the cluster or add uniquely named things to it (bots,
# roles of their own, a user), so one cluster per xdist worker serves them all: starting
# a cluster, PostgreSQL and the upstream app once instead of once per test module.
@pytest.fixture(scope="session")
def pg_port() -> int:
    """Where PostgreSQL listens (the cluster's "pg" points there before it starts)."""
    return free_port()


@pytest.fixture(scope="session")
def app_upstream() -> Iterator[int]:
    """The test web app behind the App Service; yields its port."""
    with upstream_app() as port:
        yield port


@pytest.fixture(scope="session")
def db_cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_port: int, app_upstream: int
) -> Iterator[Cluster]:
    """A cluster whose own process runs the Database Service ("pg", a real PostgreSQL on
    ``pg_port`` once :func:`postgres` starts it) and the App Service ("grafana-example")."""
    c = make_cluster(tmp_path_factory.mktemp("tui-cluster"))
    doc = c.read_config()
    doc["db_service"] = {
        "enabled": True,
        "databases": [
            {
                "name": "pg",
                "description": "Example PostgreSQL",
                "protocol": "postgres",
                "uri": f"localhost:{pg_port}",
                "static_labels": {"env": "dev"},
            }
        ],
    }
    c.write_config(doc)
    add_app_service(
        c,
        [
            {
                "name": APP,
                "description": "Grafana (the test web app)",
                "uri": f"http://127.0.0.1:{app_upstream}",
                "labels": {"env": "dev", "team": "observability"},
            }
        ],
    )
    c.start()
    try:
        yield c
    except BaseException:
        c.kill()
        raise
    c.stop()


@pytest.fixture(scope="session")
def postgres(
    db_cluster: Cluster, pg_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgServer]:
    """A real PostgreSQL behind "pg": its server certificate from ``tctl auth sign
    --format=db``, client certificates of the cluster's db_client CA required."""
    certs = tmp_path_factory.mktemp("pg-certs")
    db_cluster.tctl(
        "auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={certs}/server"
    )
    server = start_postgres(
        tmp_path_factory.mktemp("postgres"),
        server_cert_pem=(certs / "server.crt").read_bytes(),
        server_key_pem=(certs / "server.key").read_bytes(),
        ca_pem=(certs / "server.cas").read_bytes(),
        databases=("example",),
        users=("alice",),
        port=pg_port,
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def alice_identity(db_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice's identity file from ``tctl auth sign`` (role access: every database and app)."""
    return sign_alice(db_cluster, tmp_path_factory.mktemp("alice") / "alice.id")


async def until(pilot: Any, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Let the app run until ``check()`` holds (polled between frames), or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.05)


def ready(screen: Any) -> bool:
    """``screen`` is the one on top, mounted, and takes keys (focus is on it, if anywhere)."""
    app = screen.app
    if app.screen is not screen or not screen.is_mounted:
        return False
    focused = app.focused
    return focused is None or focused.screen is screen


async def shown(pilot: Any, cls: type, what: str, timeout: float = 30.0) -> Any:
    """Wait until a ``cls`` screen is on top with its widgets mounted; return it.

    A pushed screen is ``app.screen`` before its children are composed, so a query
    made the moment it appears can find nothing.
    """
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, cls) and ready(app.screen), what, timeout)
    return app.screen


async def started(pilot: Any) -> None:
    """The app's start-up is over: the login check answered, and its dialog (if it offered
    one) is up and takes keys. Keys pressed before that could land under the dialog."""
    app = pilot.app
    await until(pilot, lambda: app.login_checked, "the start-up login check")
    await until(pilot, lambda: ready(app.screen), "the first screen")


async def login_offer(pilot: Any) -> Any:
    """The login dialog the app offers at start (no profile), ready for keys."""
    from jumpgate.tui.screens.login import LoginScreen

    await started(pilot)
    login = pilot.app.screen
    assert isinstance(login, LoginScreen), f"no login offer: {login!r}"
    await until(pilot, lambda: pilot.app.focused is not None, "the dialog's focus")
    return login


async def decline_login(pilot: Any) -> Any:
    """Escape the login offer; the Databases screen behind it, ready for keys."""
    from jumpgate.tui.screens.databases import DatabasesScreen

    await login_offer(pilot)
    await pilot.press("escape")
    app = pilot.app
    await until(
        pilot,
        lambda: isinstance(app.screen, DatabasesScreen) and ready(app.screen),
        "the databases screen",
    )
    return app.screen


async def switch(pilot: Any, key: str, cls: type) -> Any:
    """Press a screen's key; the screen once mounted (its forms exist and take keys)."""
    app = pilot.app
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, cls) and ready(app.screen), cls.__name__)
    return app.screen


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
def alice_home(db_cluster: Cluster, alice_identity: Path, tmp_path: Path, pg_service: Path) -> Path:
    """A tsh profile of its own for alice on the shared cluster (from tctl auth sign)."""
    from jumpgate.core.auth.identityfile import read_identity_file
    from jumpgate.core.client.profile import ProfileStore

    home = tmp_path / "tsh"
    ident = read_identity_file(alice_identity)
    ProfileStore(home).save(
        proxy_addr=db_cluster.public_addr,
        user="alice",
        cluster=ident.cluster_name,
        key_pem=ident.key_pem,
        cert_pem=ident.cert_pem,
        ca_pem=ident.ca_pems[0],
    )
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


@pytest.fixture
def tmux() -> Iterator[Any]:
    """A private tmux server (``tests.tui.test_tmux_e2e.Tmux``), killed afterwards."""
    import shutil

    from tests.tui.test_tmux_e2e import Tmux

    if not shutil.which("tmux"):
        pytest.skip("needs tmux (scripts/install-system-deps.sh installs it)")
    t = Tmux()
    try:
        yield t
    finally:
        t.run("kill-server", check=False)


def bot_config(cluster: Cluster, tmp_path: Path, *, extra: str = "") -> tuple[Path, Path]:
    """A bot allowed the "pg" database (its role, ``tctl bots add``) and a seed-shaped
    tbot.yaml with a database output for it: (config path, destination directory)."""
    from tests.integration.conftest import parse_status
    from tests.integration.test_tbot import DB_ROLE, add_bot, db_output, seed_config

    cluster.tctl("create", "-f", "/dev/stdin", input=DB_ROLE)
    pin = parse_status(cluster.tctl("status").stdout)["CA pin"]
    _, token = add_bot(cluster)
    dest = tmp_path / "machine-id"
    cfg = seed_config(
        tmp_path / "tbot.yaml",
        addr=cluster.public_addr,
        token=token,
        pin=pin,
        storage=tmp_path / "bot",
        outputs=db_output(dest, service="pg"),
        extra=extra,
    )
    return cfg, dest
