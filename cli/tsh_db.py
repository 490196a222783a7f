"""``tsh db …`` and ``tsh proxy db``: list, log in to and connect to databases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from jumpgate.cli.common import Format, labels_text, print_json, print_table, print_yaml

if TYPE_CHECKING:
    from jumpgate.core.client.profile import Profile

db_app = typer.Typer(
    help="View and control proxied databases.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
proxy_app = typer.Typer(
    help="Run local proxies to the cluster.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DB_USER = typer.Option(None, "-u", "--db-user", help="Database user to log in as")
_DB_NAME = typer.Option(None, "-n", "--db-name", help="Database name to connect to")


def _g(ctx: typer.Context) -> Any:
    from jumpgate.cli.tsh import g

    return g(ctx)


def _emit(data: Any, fmt: Format) -> None:
    print_json(data) if fmt is Format.json else print_yaml(data)


# ---------------------------------------------------------------------- ls
def _go_list(values: Any) -> str:
    """Go's ``%v`` of a []string: ``[a b]``."""
    return "[" + " ".join(str(v) for v in values or []) + "]"


def allowed_users_text(db: dict[str, Any]) -> str:
    """``[alice]`` or ``[*], except: [bob]``."""
    text = _go_list(db.get("allowed_users"))
    denied = db.get("denied_users") or []
    return f"{text}, except: {_go_list(denied)}" if denied else text


def _parse_label_filters(args: list[str]) -> dict[str, str]:
    from jumpgate.core.errors import BadParameter

    out: dict[str, str] = {}
    for arg in args:
        for part in arg.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise BadParameter(
                    f"invalid label filter {part!r}", hint="use key=value, e.g. env=dev"
                )
            out[key.strip()] = value.strip()
    return out


@db_app.command("ls")
def db_ls(
    ctx: typer.Context,
    labels: list[str] = typer.Argument(None, help="Label filters: env=dev[,team=a]"),
    format: Format = typer.Option(Format.text, "-f", "--format", help="Output format"),
) -> None:
    """List the databases you can access."""
    from jumpgate.core.client.dbclient import db_route, list_databases

    prof = _g(ctx).profile()
    wanted = _parse_label_filters(labels or [])
    dbs = [
        d
        for d in list_databases(prof)
        if all((d.get("labels") or {}).get(k) == v for k, v in wanted.items())
    ]
    if format is not Format.text:
        _emit(dbs, format)
        return
    rows = []
    for d in dbs:
        name = str(d.get("name", ""))
        route = db_route(prof, name)
        connect = ""
        if route is not None:
            name = f"> {name} (user: {route.username}, db: {route.database})"
            connect = f"tsh db connect {d.get('name')}"
        rows.append(
            [
                name,
                str(d.get("description", "")),
                allowed_users_text(d),
                labels_text(d.get("labels") or {}),
                connect,
            ]
        )
    print_table(["Name", "Description", "Allowed Users", "Labels", "Connect"], rows)


# ---------------------------------------------------------------------- login / logout
@db_app.command("login")
def db_login(
    ctx: typer.Context,
    db: str = typer.Argument(..., help="Database name (tsh db ls)"),
    db_user: str = _DB_USER,
    db_name: str = _DB_NAME,
) -> None:
    """Get a certificate for a database and save its connection information."""
    from jumpgate.core.client.dbclient import db_login as do_login
    from jumpgate.core.client.dbclient import service_name

    prof = _g(ctx).profile()
    do_login(prof, db, db_user, db_name)
    svc = service_name(prof, db)
    print(
        f'Connection information for database "{db}" has been saved.\n\n'
        "You can now connect to it using the following command:\n\n"
        f"  tsh db connect {db}\n\n"
        "Or view the connect command for the native database CLI client:\n\n"
        f"  tsh db config --format=cmd {db}\n\n"
        f'psql and other libpq clients find it as service "{svc}" in the pg service file; '
        "they reach the proxy through a local proxy:\n\n"
        f"  tsh proxy db --port=5433 {db}\n"
        f'  psql "service={svc} host=localhost port=5433"\n'
    )


@db_app.command("logout")
def db_logout(
    ctx: typer.Context,
    db: str = typer.Argument(None, help="Database (all when omitted)"),
) -> None:
    """Remove database certificates."""
    from jumpgate.core.client.dbclient import db_logout as do_logout

    prof = _g(ctx).profile(valid=False)
    removed = do_logout(prof, db)
    if db is not None:
        print(f'Logged out of database "{db}".')
    elif removed:
        print(f"Logged out of databases: {', '.join(removed)}.")
    else:
        print("You are not logged in to any database.")


# ---------------------------------------------------------------------- env / config
@db_app.command("env")
def db_env(
    ctx: typer.Context,
    db: str = typer.Argument(None, help="Database (the only logged-in one when omitted)"),
    format: Format = typer.Option(Format.text, "-f", "--format", help="Output format"),
) -> None:
    """Print environment variables for the database's native client."""
    from jumpgate.core.client.dbclient import db_env as env_of

    env = env_of(_g(ctx).profile(), db)
    if format is not Format.text:
        _emit(env, format)
        return
    for key, value in env.items():
        print(f"export {key}={value}")


@db_app.command("config")
def db_config(
    ctx: typer.Context,
    db: str = typer.Argument(None, help="Database (the only logged-in one when omitted)"),
    format: str = typer.Option("text", "-f", "--format", help="text, cmd, json or yaml"),
) -> None:
    """Print the database's connection information."""
    from jumpgate.core.client.dbclient import db_config as config_of
    from jumpgate.core.errors import BadParameter

    cfg = config_of(_g(ctx).profile(), db)
    if format == "cmd":
        print(cfg["command"])
    elif format in ("json", "yaml"):
        _emit(cfg, Format(format))
    elif format == "text":
        rows = [
            ("Name:", cfg["name"]),
            ("Host:", cfg["host"]),
            ("Port:", cfg["port"]),
            ("User:", cfg["user"]),
            ("Database:", cfg["database"]),
            ("CA:", cfg["ca"]),
            ("Cert:", cfg["cert"]),
            ("Key:", cfg["key"]),
        ]
        for label, value in rows:
            print(f"{label:<10} {value}".rstrip())
    else:
        raise BadParameter(f"unknown --format {format!r}", hint="use text, cmd, json or yaml")


# ---------------------------------------------------------------------- connect / proxy
def _local_proxy(prof: Profile, db: str, port: int, *, tunnel: bool) -> Any:
    from jumpgate.core.client.dbclient import tunnel_cert_provider
    from jumpgate.core.client.localproxy import LocalProxy

    return LocalProxy(
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


@db_app.command("connect")
def db_connect(
    ctx: typer.Context,
    db: str = typer.Argument(..., help="Database name"),
    db_user: str = _DB_USER,
    db_name: str = _DB_NAME,
) -> None:
    """Connect to a database with psql through a local proxy."""
    from jumpgate.core.client.dbclient import (
        ensure_db_login,
        find_psql,
        psql_conninfo,
        run_db_client,
    )
    from jumpgate.core.client.localproxy import ThreadedLocalProxy

    prof = _g(ctx).profile()
    psql = find_psql()
    ensure_db_login(prof, db, db_user, db_name)
    runner = ThreadedLocalProxy(_local_proxy(prof, db, 0, tunnel=False))
    _, port = runner.start()
    try:
        conninfo = psql_conninfo(prof, db, "localhost", port) + " hostaddr=127.0.0.1"
        rc = run_db_client([psql, conninfo])
    finally:
        runner.stop()
    raise typer.Exit(rc)


@proxy_app.command("db")
def proxy_db(
    ctx: typer.Context,
    db: str = typer.Argument(..., help="Database name"),
    port: int = typer.Option(0, "-p", "--port", help="Local port [default: random]"),
    tunnel: bool = typer.Option(
        False, "--tunnel", help="Authenticate here: clients connect without TLS"
    ),
    db_user: str = _DB_USER,
    db_name: str = _DB_NAME,
) -> None:
    """Start a local proxy to a database (until Ctrl-C)."""
    from jumpgate.core.client.dbclient import ensure_db_login
    from jumpgate.core.client.localproxy import serve_until_signal

    prof = _g(ctx).profile()
    route = ensure_db_login(prof, db, db_user, db_name)
    proxy = _local_proxy(prof, db, port, tunnel=tunnel)
    random_port = port == 0
    hint = (
        "To avoid port randomization, you can choose the listening port using the --port flag.\n"
        if random_port
        else ""
    )

    def started(host: str, bound: int) -> None:
        if tunnel:
            kind = "PostgreSQL" if route.protocol in ("postgres", "cockroachdb") else route.protocol
            target = f"/{route.database}" if route.database else ""
            print(
                f'Started authenticated tunnel for the {kind} database "{db}" in cluster '
                f'"{prof.cluster}" on {host}:{bound}.\n{hint}\n'
                "Use the following command to connect to the database or to the address above "
                "using other database GUI/CLI clients:\n\n"
                f"  $ psql postgres://{route.username}@localhost:{bound}{target}\n",
                flush=True,
            )
        else:
            print(
                f"Started DB proxy on {host}:{bound}\n{hint}\n"
                f"Use the following credentials to connect to the {db} proxy:\n"
                f"  ca_file={prof.ca_path}\n"
                f"  cert_file={prof.db_cert_path(db)}\n"
                f"  key_file={prof.key_path}\n\n"
                f'Your database user is "{route.username}". '
                f'The target database name is "{route.database}".\n',
                flush=True,
            )

    serve_until_signal(proxy, started)
