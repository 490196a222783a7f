"""What the dashboard looks at: the tsh profile, tbot configs and destinations, local proxies.

Plain Python over ``jumpgate.core`` (no Textual): every method may block on
files or the network, so screens call them from thread workers only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jumpgate.core.errors import AccessDenied, BadParameter, JumpgateError

if TYPE_CHECKING:
    from jumpgate.core.auth.client import AuthClient
    from jumpgate.core.bot.config import BotConfig
    from jumpgate.core.client.discovery import CertInfo, LocalProxyInfo
    from jumpgate.core.client.localproxy import ThreadedLocalProxy
    from jumpgate.core.client.profile import Profile, ProfileStore


@dataclass
class Options:
    """The command-line options of ``jumpgate``."""

    proxy: str | None = None
    user: str | None = None
    configs: list[str] = field(default_factory=list)
    destination_dirs: list[str] = field(default_factory=list)
    #: Extra directories holding local-proxy status files
    proxies_dirs: list[str] = field(default_factory=list)
    insecure: bool = False
    home: str | None = None


def check_inputs(options: Options) -> None:
    """Refuse a ``-c`` that tbot could not load, or a ``--destination-dir`` that is not a
    readable directory (the dashboard checks them before it takes over the terminal).

    The config errors are the loader's own (the same message and hint as ``tbot -c``).
    """
    from jumpgate.core.bot.config import load_config

    for path in options.configs:
        load_config(path)
    for d in options.destination_dirs:
        p = Path(d)
        if not p.exists():
            raise BadParameter(
                f"the tbot destination directory {p} does not exist",
                hint="check the path, or run tbot (tbot start -c tbot.yaml) to create it",
            )
        if not p.is_dir():
            raise BadParameter(
                f"the tbot destination {p} is not a directory",
                hint="pass the directory tbot writes to (the destination's path)",
            )
        if not os.access(p, os.R_OK | os.X_OK):
            raise BadParameter(
                f"the tbot destination directory {p} cannot be read",
                hint="run jumpgate as a user who can read it (the bot's user or group)",
            )


@dataclass
class StartedProxy:
    """A local proxy this dashboard started (stopped when the dashboard exits)."""

    target: str
    runner: ThreadedLocalProxy
    host: str
    port: int
    mode: str


class DashboardState:
    """Shared by every screen; thread-safe enough for one worker per screen at a time."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._store: ProfileStore | None = None
        self.started: list[StartedProxy] = []

    # ------------------------------------------------------------------ profile
    @property
    def store(self) -> ProfileStore:
        """The profile directory (``$TELEPORT_HOME`` or ``~/.tsh``)."""
        if self._store is None:
            from jumpgate.core.client.profile import ProfileStore

            self._store = ProfileStore(self.options.home)
        return self._store

    def profile(self) -> Profile | None:
        """The profile ``--proxy``/``--user`` select, else the current one."""
        return self.store.find(self.options.proxy, self.options.user)

    def login_defaults(self) -> tuple[str, str]:
        """The proxy and user the login dialog starts with: the options, else the profile's,
        else the local user name (no proxy)."""
        import getpass

        prof = self.profile()
        proxy = self.options.proxy or (prof.web_proxy_addr if prof else "")
        user = self.options.user or (prof.user if prof else "") or getpass.getuser()
        return proxy, user

    def require_profile(self) -> Profile:
        """The profile, valid; AccessDenied with the login hint otherwise."""
        prof = self.profile()
        if prof is None:
            where = f" to {self.options.proxy}" if self.options.proxy else ""
            raise AccessDenied(
                f"not logged in{where}",
                hint="press L to log in (the same as tsh login --proxy=HOST:PORT --user=NAME)",
            )
        prof.require_valid()
        return prof

    def databases(self) -> list[dict[str, Any]]:
        """``tsh db ls`` as data."""
        from jumpgate.core.client.dbclient import list_databases

        return list_databases(self.require_profile())

    def apps(self) -> list[dict[str, Any]]:
        """The applications the user can see (``tsh apps ls`` as data), each with its URL."""
        from jumpgate.core.client.appclient import list_apps, public_url

        prof = self.require_profile()
        apps = [a for a in list_apps(prof) if isinstance(a, dict)]
        for a in apps:
            if a.get("public_addr"):
                a["url"] = public_url(prof, str(a["public_addr"]))
        return apps

    # ------------------------------------------------------------------ tbot
    def bot_configs(self) -> list[tuple[str, BotConfig | None, str]]:
        """(path, parsed config or None, error text) for every ``-c`` given."""
        from jumpgate.core.bot.config import load_config

        out: list[tuple[str, BotConfig | None, str]] = []
        for path in self.options.configs:
            try:
                out.append((path, load_config(path), ""))
            except JumpgateError as exc:
                out.append((path, None, exc.message))
        return out

    def certificates(self) -> tuple[list[CertInfo], list[str]]:
        """Every certificate Jumpgate can see, and warnings about what it could not read."""
        from jumpgate.core.client.discovery import bot_certs, destination_cert, profile_certs

        certs: list[CertInfo] = []
        warnings: list[str] = []
        prof = self.profile()
        if prof is not None:
            certs += profile_certs(prof)
        for path, cfg, err in self.bot_configs():
            if cfg is None:
                warnings.append(f"{path}: {err}")
                continue
            certs += bot_certs(cfg)
        seen = {c.path.parent for c in certs}
        for d in self.options.destination_dirs:
            if Path(d) in seen:
                continue
            info = destination_cert(d)
            if info is None:
                warnings.append(f"{d}: no certificate (tlscert) yet")
            else:
                certs.append(info)
        return certs, warnings

    # ------------------------------------------------------------------ local proxies
    def proxies_dirs(self) -> list[Path]:
        """Where running local proxies keep their status files: the profile's home, this
        user's default home (``~/.tsh``: a ``tbot proxy`` started without
        ``TELEPORT_HOME``), and every ``--proxies-dir``."""
        dirs = [self.store.home / "proxies", Path.home() / ".tsh" / "proxies"]
        dirs += [Path(d) for d in self.options.proxies_dirs]
        return list(dict.fromkeys(d.resolve() for d in dirs))  # a symlinked ~/.tsh: once

    def local_proxies(self) -> list[LocalProxyInfo]:
        """Every running local proxy with a status file."""
        from jumpgate.core.client.discovery import discover_local_proxies

        return discover_local_proxies(self.proxies_dirs())

    def start_db_proxy(
        self,
        db: str,
        *,
        tunnel: bool,
        port: int = 0,
        db_user: str | None = None,
        db_name: str | None = None,
    ) -> StartedProxy:
        """``tsh proxy db [--tunnel]`` inside the dashboard (logs in to the database first)."""
        from jumpgate.core.client.dbclient import ensure_db_login, tunnel_cert_provider
        from jumpgate.core.client.localproxy import LocalProxy

        prof = self.require_profile()
        ensure_db_login(prof, db, db_user, db_name)
        proxy = LocalProxy(
            "127.0.0.1",
            port,
            proxy_addr=prof.web_proxy_addr,
            sni=prof.proxy_host,
            ca_pem=prof.ca_pem(),
            client_cert_provider=tunnel_cert_provider(prof, db) if tunnel else None,
            target=db,
            status_dir=prof.proxies_dir,
            insecure=prof.insecure,
        )
        return self._run(proxy, db)

    def start_app_proxy(self, app: str, *, port: int = 0) -> StartedProxy:
        """``tsh proxy app`` inside the dashboard (logs in to the app first): plain HTTP on
        127.0.0.1, the app's certificate towards the proxy."""
        from jumpgate.core.client.appclient import app_local_proxy, ensure_app_login

        prof = self.require_profile()
        ensure_app_login(prof, app)
        return self._run(app_local_proxy(prof, app, port), app)

    def start_bot_proxy(
        self, *, proxy_addr: str, destination: str, service: str, port: int, tunnel: bool
    ) -> StartedProxy:
        """``tbot proxy db`` inside the dashboard, over a tbot destination."""
        from jumpgate.core.bot.proxy import db_proxy

        lp = db_proxy(
            proxy_addr=proxy_addr,
            destination_dir=destination,
            service=service,
            port=port,
            tunnel=tunnel,
        )
        lp.status_dir = self.store.home / "proxies"
        return self._run(lp, service)

    def _run(self, proxy: Any, target: str) -> StartedProxy:
        from jumpgate.core.client.localproxy import ThreadedLocalProxy

        runner = ThreadedLocalProxy(proxy)
        try:
            host, port = runner.start()
        except OSError as exc:
            runner.stop()
            raise JumpgateError(
                f"cannot listen for the local proxy: {exc.strerror or exc}",
                hint="choose another port",
            ) from None
        started = StartedProxy(target, runner, host, port, proxy.mode)
        self.started.append(started)
        return started

    def stop_proxy(self, started: StartedProxy) -> None:
        """Stop a proxy this dashboard started."""
        started.runner.stop()
        with contextlib.suppress(ValueError):
            self.started.remove(started)

    def stop_all(self) -> None:
        """Stop every proxy this dashboard started (on exit)."""
        for s in list(self.started):
            self.stop_proxy(s)

    # ------------------------------------------------------------------ admin
    def admin_client(self) -> AuthClient:
        """The admin's API client, found as tctl finds it (``TELEPORT_CONFIG_FILE``,
        ``/etc/teleport.yaml``, else the current tsh profile)."""
        from jumpgate.core.client.admin import connect_admin

        return connect_admin(config=None, auth_server=None, identity=None)

    def audit_events(self, since_hours: float = 24.0, limit: int = 500) -> list[dict[str, Any]]:
        """Recent audit events (``tctl audit ls``), oldest first."""
        from datetime import UTC, datetime, timedelta

        start = datetime.now(UTC) - timedelta(hours=since_hours)
        client = self.admin_client()
        try:
            events = client.call("events.search", since=start.isoformat(), types=[], limit=limit)
        finally:
            client.close()
        return [e for e in events or [] if isinstance(e, dict)]


def tsh_argv() -> list[str]:
    """How to run tsh: the one beside this Python (the same install), else on PATH."""
    beside = Path(sys.executable).parent / "tsh"
    if beside.exists() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("tsh")
    return [found] if found else ["tsh"]
