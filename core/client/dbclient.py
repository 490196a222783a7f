"""Database access from a profile: list, log in (certificates), env/config, the pg service file.

``tsh db login`` asks the auth service (through the proxy's web port, ALPN
``teleport-auth@<cluster>``) for a certificate with ``route_to_database`` for
the profile's key, saves it as ``keys/<proxy>/<user>-db/<cluster>/<db>.crt``
and, for PostgreSQL, writes a ``[<cluster>-<db>]`` section to
``~/.pg_service.conf`` (``$PGSERVICEFILE``), keeping every other section.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jumpgate.core.client.profile import Profile
from jumpgate.core.errors import AccessDenied, BadParameter, JumpgateError, NotFound
from jumpgate.core.fsutil import atomic_write
from jumpgate.core.tlsca import RouteToDatabase, load_private_key, public_key_to_pem

#: Renew a tunnel's database certificate when less than this is left.
RENEW_BEFORE = timedelta(minutes=1)


# --------------------------------------------------------------------------- pg service file
def pg_service_path() -> Path:
    """``$PGSERVICEFILE`` or ``~/.pg_service.conf``."""
    env = os.environ.get("PGSERVICEFILE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".pg_service.conf"


def service_name(profile: Profile, db: str) -> str:
    """The pg service name tsh uses: ``<cluster>-<db>``."""
    return f"{profile.cluster}-{db}"


_SECTION = re.compile(r"^\s*\[([^\]]*)\]\s*$")


def _split_sections(text: str) -> list[tuple[str | None, list[str]]]:
    """Lines grouped by section header; the first group (None) holds lines before any header."""
    groups: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            groups.append((m.group(1).strip(), [line]))
        else:
            groups[-1][1].append(line)
    return groups


def _write_sections(path: Path, groups: list[tuple[str | None, list[str]]]) -> None:
    lines = [line for _, body in groups for line in body]
    text = "\n".join(lines).strip("\n")
    mode = 0o600
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
    atomic_write(path, text + "\n" if text else "", mode=mode)


def read_pg_service_section(path: Path, name: str) -> dict[str, str] | None:
    """The ``key=value`` pairs of section ``name``, or None when absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    for section, body in _split_sections(text):
        if section == name:
            out: dict[str, str] = {}
            for line in body[1:]:
                s = line.strip()
                if s and not s.startswith("#") and "=" in s:
                    k, _, v = s.partition("=")
                    out[k.strip()] = v.strip()
            return out
    return None


def write_pg_service_section(path: Path, name: str, values: dict[str, str]) -> None:
    """Add or replace section ``name`` (atomically), keeping every other section as it was."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    groups = [g for g in _split_sections(text) if g[0] != name]
    # a blank line between sections, as tsh writes them
    if groups and any(line.strip() for _, body in groups for line in body):
        last = groups[-1][1]
        while last and not last[-1].strip():
            last.pop()
        last.append("")
    groups.append((name, [f"[{name}]", *(f"{k}={v}" for k, v in values.items())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_sections(path, groups)


def remove_pg_service_section(path: Path, name: str) -> bool:
    """Remove section ``name``; returns whether it was there."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return False
    groups = _split_sections(text)
    kept = [g for g in groups if g[0] != name]
    if len(kept) == len(groups):
        return False
    _write_sections(path, kept)
    return True


# --------------------------------------------------------------------------- auth API
def _client(profile: Profile) -> Any:
    from jumpgate.core.auth.client import AuthClient

    profile.require_valid()
    return AuthClient(profile.web_proxy_addr, profile.identity_file())


def list_databases(profile: Profile) -> list[dict[str, Any]]:
    """Databases the user may see (RPC ``db.list``), sorted by name."""
    client = _client(profile)
    try:
        dbs = client.call("db.list")
    finally:
        client.close()
    return sorted((d for d in dbs or [] if isinstance(d, dict)), key=lambda d: str(d.get("name")))


def _lookup(profile: Profile, db: str) -> dict[str, Any] | None:
    """The ``db.list`` entry for ``db``; ``{}`` when the server has no ``db.list`` (older)."""
    try:
        dbs = list_databases(profile)
    except NotFound as exc:
        if "unknown API method" in exc.message:
            return {}
        raise
    return next((d for d in dbs if d.get("name") == db), None)


def _single(values: Any) -> str:
    """The one concrete entry of an allowed list (no wildcard or template), else ``""``."""
    vals = [str(v) for v in values or []]
    if (
        len(vals) == 1
        and "*" not in vals[0]
        and "{{" not in vals[0]
        and not vals[0].startswith("^")
    ):
        return vals[0]
    return ""


def db_route(profile: Profile, db: str) -> RouteToDatabase | None:
    """The route of the saved certificate for ``db`` (None when not logged in to it)."""
    ident = profile.db_identity(db)
    return ident.route_to_database if ident is not None else None


def db_cert_valid(profile: Profile, db: str, *, margin: timedelta = timedelta(0)) -> bool:
    """Whether a certificate for ``db`` is on disk and valid for at least ``margin``."""
    ident = profile.db_identity(db)
    if ident is None or ident.expires is None:
        return False
    return ident.expires - datetime.now(UTC) > margin


def db_login(
    profile: Profile,
    db: str,
    db_user: str | None = None,
    db_name: str | None = None,
    *,
    pg_service_file: Path | None = None,
) -> Path:
    """Get and save a certificate for ``db``; returns its path. Writes the pg service section."""
    info = _lookup(profile, db)
    if info is None:
        raise NotFound(
            f'database "{db}" not found',
            hint="list the databases you can access with: tsh db ls",
        )
    protocol = str(info.get("protocol") or "postgres")
    user = db_user or _single(info.get("allowed_users"))
    if not user:
        raise BadParameter(
            "please provide the database user name using the --db-user flag",
            hint=f"for example: tsh db login --db-user=alice {db}",
        )
    name = db_name or _single(info.get("allowed_names"))
    if not name and protocol in ("postgres", "cockroachdb"):
        raise BadParameter(
            "please provide the database name using the --db-name flag",
            hint=f"for example: tsh db login --db-user={user} --db-name=postgres {db}",
        )
    pub = public_key_to_pem(load_private_key(profile.key_pem()).public_key()).decode()
    remaining = max(int(profile.valid_for().total_seconds()), 60)
    client = _client(profile)
    try:
        resp = client.call(
            "certs.user",
            public_key=pub,
            ttl=remaining,
            route_to_database={
                "service_name": db,
                "protocol": protocol,
                "username": user,
                "database": name,
            },
        )
    finally:
        client.close()
    path = profile.save_db_cert(db, str(resp["cert"]).encode())
    if protocol in ("postgres", "cockroachdb"):
        write_pg_service_section(
            pg_service_file or pg_service_path(),
            service_name(profile, db),
            pg_service_values(profile, db, user, name),
        )
    return path


def pg_service_values(profile: Profile, db: str, user: str, name: str) -> dict[str, str]:
    """The section tsh writes for ``db`` (the proxy's host and web port, as Teleport does)."""
    values = {
        "host": profile.proxy_host,
        "port": str(profile.proxy_port),
        "sslmode": "verify-full",
        "sslrootcert": str(profile.ca_path),
        "sslcert": str(profile.db_cert_path(db)),
        "sslkey": str(profile.key_path),
        "user": user,
    }
    if name:
        values["dbname"] = name
    return values


def resolve_db(profile: Profile, db: str | None) -> str:
    """``db``, or the only database logged in to; explain when that is ambiguous."""
    if db:
        return db
    dbs = profile.databases()
    if len(dbs) == 1:
        return dbs[0]
    if not dbs:
        raise NotFound(
            "you are not logged in to any database",
            hint="log in with: tsh db login --db-user=USER --db-name=NAME DB",
        )
    raise BadParameter(
        f"multiple databases are logged in ({', '.join(dbs)}); please specify one",
        hint=f"for example: tsh db env {dbs[0]}",
    )


def _require_route(profile: Profile, db: str) -> RouteToDatabase:
    route = db_route(profile, db)
    if route is None:
        raise NotFound(
            f'you are not logged in to database "{db}"',
            hint=f"log in with: tsh db login --db-user=USER --db-name=NAME {db}",
        )
    return route


def db_env(profile: Profile, db: str | None = None) -> dict[str, str]:
    """``PGHOST`` … ``PGDATABASE`` for ``db`` (PostgreSQL only)."""
    db = resolve_db(profile, db)
    route = _require_route(profile, db)
    if route.protocol not in ("postgres", "cockroachdb"):
        raise BadParameter(f'database "{db}" is {route.protocol}; tsh db env supports PostgreSQL')
    env = {
        "PGHOST": profile.proxy_host,
        "PGPORT": str(profile.proxy_port),
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(profile.ca_path),
        "PGSSLCERT": str(profile.db_cert_path(db)),
        "PGSSLKEY": str(profile.key_path),
        "PGUSER": route.username,
    }
    if route.database:
        env["PGDATABASE"] = route.database
    return env


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def psql_conninfo(profile: Profile, db: str, host: str, port: int) -> str:
    """A libpq connection string for ``db`` through a local proxy at ``host:port`` (TLS mode)."""
    route = _require_route(profile, db)
    parts = {
        "host": host,
        "port": str(port),
        "user": route.username,
        "dbname": route.database,
        "sslmode": "verify-full",
        "sslrootcert": str(profile.ca_path),
        "sslcert": str(profile.db_cert_path(db)),
        "sslkey": str(profile.key_path),
    }
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items() if v)


def db_config(profile: Profile, db: str | None = None) -> dict[str, Any]:
    """Name, Host, Port, User, Database, CA, Cert, Key and the psql command for ``db``."""
    db = resolve_db(profile, db)
    route = _require_route(profile, db)
    return {
        "name": db,
        "host": profile.proxy_host,
        "port": profile.proxy_port,
        "user": route.username,
        "database": route.database,
        "ca": str(profile.ca_path),
        "cert": str(profile.db_cert_path(db)),
        "key": str(profile.key_path),
        "service": service_name(profile, db),
        "command": shlex.join(["psql", f"service={service_name(profile, db)}"]),
    }


def db_logout(
    profile: Profile, db: str | None = None, *, pg_service_file: Path | None = None
) -> list[str]:
    """Remove the certificate(s) and pg service section(s); returns the databases logged out."""
    if db is not None and profile.db_cert_pem(db) is None:
        raise NotFound(
            f'you are not logged in to database "{db}"',
            hint="tsh status lists the databases you are logged in to",
        )
    removed = profile.remove_db_certs(db)
    path = pg_service_file or pg_service_path()
    for name in removed:
        remove_pg_service_section(path, service_name(profile, name))
    return removed


def ensure_db_login(
    profile: Profile,
    db: str,
    db_user: str | None = None,
    db_name: str | None = None,
    *,
    pg_service_file: Path | None = None,
) -> RouteToDatabase:
    """Reuse the saved certificate when it is valid and matches the flags, else log in again."""
    route = db_route(profile, db)
    fresh = route is not None and db_cert_valid(profile, db, margin=RENEW_BEFORE)
    if (
        fresh
        and route is not None
        and (not db_user or db_user == route.username)
        and (not db_name or db_name == route.database)
    ):
        return route
    db_login(
        profile,
        db,
        db_user or (route.username if route else None),
        db_name or (route.database if route else None),
        pg_service_file=pg_service_file,
    )
    return _require_route(profile, db)


def tunnel_cert_provider(profile: Profile, db: str) -> Callable[[], tuple[bytes, bytes]]:
    """A ``client_cert_provider`` for a tunnel: the saved certificate, renewed when near expiry.

    Renewal re-requests the same route while the user certificate is valid;
    once that has expired the old certificate is returned as is and the local
    proxy tells the client to log in again.
    """

    def provide() -> tuple[bytes, bytes]:
        if not db_cert_valid(profile, db, margin=RENEW_BEFORE) and not profile.is_expired():
            route = db_route(profile, db)
            with contextlib.suppress(JumpgateError):
                db_login(
                    profile,
                    db,
                    route.username if route else None,
                    route.database if route else None,
                )
        cert = profile.db_cert_pem(db)
        if cert is None:
            raise AccessDenied(f'not logged in to database "{db}"', hint=f"tsh db login {db}")
        return cert, profile.key_pem()

    return provide


# --------------------------------------------------------------------------- psql
def find_psql() -> str:
    """The path of ``psql``, or NotFound telling how to install it."""
    import shutil

    path = shutil.which("psql")
    if path is None:
        raise NotFound(
            "psql is not installed or not on PATH",
            hint="install the PostgreSQL client (e.g. apt install postgresql-client), or run "
            "'tsh proxy db' and connect with another client",
        )
    return path


def run_db_client(argv: list[str]) -> int:
    """Run a database CLI in the foreground with inherited stdio; return its exit code.

    While it runs this process ignores SIGINT (with a Python handler, not
    SIG_IGN, so the child starts with the default disposition): Ctrl-C at the
    terminal reaches the client (psql then sends its CancelRequest through the
    local proxy) and must not stop the local proxy under it.
    """
    import signal
    import subprocess

    def ignore(signum: int, frame: Any) -> None:
        return None

    old_int = signal.signal(signal.SIGINT, ignore)
    old_quit = signal.signal(signal.SIGQUIT, ignore)
    try:
        try:
            proc = subprocess.Popen(argv)
        except OSError as exc:
            raise NotFound(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGQUIT, old_quit)
    return 128 - rc if rc < 0 else rc
