"""``tctl auth sign`` and ``tctl auth export``."""

from __future__ import annotations

import sys
from typing import Any

import typer

from jumpgate.cli.common import split_csv, warn

auth_app = typer.Typer(help="Certificates and certificate authorities.", no_args_is_help=True)

POSTGRES_HELP = """
To enable mutual TLS on your PostgreSQL server, add the following to its
postgresql.conf configuration file:

ssl = on
ssl_cert_file = '/path/to/{out}.crt'
ssl_key_file = '/path/to/{out}.key'
ssl_ca_file = '/path/to/{out}.cas'

To enable mutual TLS on your MySQL server, add the following to its
mysql.cnf configuration file:

[mysqld]
require_secure_transport=ON
ssl-cert=/path/to/{out}.crt
ssl-key=/path/to/{out}.key
ssl-ca=/path/to/{out}.cas
"""


def _ctx_globals(ctx: typer.Context) -> Any:
    from jumpgate.cli.tctl import g

    return g(ctx)


@auth_app.command("sign")
def sign(
    ctx: typer.Context,
    user: str = typer.Option("", "--user", help="Sign an identity for this user"),
    host: str = typer.Option(
        "", "--host", help="Comma-separated host names/IPs for a database server certificate"
    ),
    out: str = typer.Option(
        ..., "-o", "--out", help="Output path (files get .crt/.key/.cas as the format needs)"
    ),
    format: str = typer.Option(
        "", "--format", help="file (identity), tls, db, mongodb, cockroachdb"
    ),
    ttl: str = typer.Option("", "--ttl", help="Certificate TTL [default: 12h]"),
    db_service: str = typer.Option(
        "", "--db-service", help="Route the user certificate to this database"
    ),
    db_user: str = typer.Option("", "--db-user", help="Database user for --db-service"),
    db_name: str = typer.Option("", "--db-name", help="Database name for --db-service"),
    db_protocol: str = typer.Option("postgres", "--db-protocol", help="Protocol of --db-service"),
    app_name: str = typer.Option(
        "", "--app-name", help="Route the user certificate to this application"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Overwrite existing files"),
) -> None:
    """Sign a database server certificate (--host) or a user identity (--user)."""
    from pathlib import Path

    from jumpgate.core.client.certfiles import (
        DB_FORMATS,
        write_server_credentials,
        write_user_credentials,
    )
    from jumpgate.core.durations import parse_duration
    from jumpgate.core.errors import AlreadyExists, BadParameter
    from jumpgate.core.tlsca import generate_private_key, private_key_to_pem, public_key_to_pem

    if bool(user) == bool(host):
        raise BadParameter(
            "pass exactly one of --user or --host",
            hint="--host=db.example.com for a database server",
        )
    ttl_s = parse_duration(ttl, field="--ttl").total_seconds() if ttl else None
    key = generate_private_key()
    pub = public_key_to_pem(key.public_key()).decode()
    client = _ctx_globals(ctx).client()
    if host:
        fmt = format or "db"
        if fmt not in DB_FORMATS:
            raise BadParameter(
                f"--format={fmt} cannot be used with --host",
                hint="use one of: " + ", ".join(DB_FORMATS),
            )
        _refuse_overwrite(out, fmt, overwrite)
        hosts = split_csv(host)
        if fmt == "cockroachdb":
            # CockroachDB requires node certificates for the name "node" (CN and first SAN)
            hosts = ["node", *[h for h in hosts if h != "node"]]
        resp = client.call("certs.db_server", public_key=pub, hosts=hosts, ttl=ttl_s)
        files = write_server_credentials(
            fmt,
            out,
            key_pem=private_key_to_pem(key),
            cert_pem=resp["cert"].encode(),
            server_ca_pem=resp["db_ca"].encode(),
            client_ca_pem=resp["db_client_ca"].encode(),
        )
        print(f"Database credentials have been written to {', '.join(str(f) for f in files)}.")
        if fmt in ("db", "tls"):
            print(POSTGRES_HELP.format(out=Path(out).name), end="")
        return
    fmt = format or "file"
    route = None
    if db_service:
        route = {
            "service_name": db_service,
            "protocol": db_protocol,
            "username": db_user,
            "database": db_name,
        }
    app_route = None
    if app_name:
        if db_service:
            raise BadParameter("pass only one of --db-service and --app-name")
        import uuid

        app_route = {"name": app_name, "session_id": str(uuid.uuid4())}
    if not overwrite and Path(out).exists() and fmt == "file":
        raise AlreadyExists(f"{out} already exists", hint="pass --overwrite to replace it")
    resp = client.call(
        "certs.user",
        public_key=pub,
        username=user,
        ttl=ttl_s,
        route_to_database=route,
        route_to_app=app_route,
        strict_ttl=bool(ttl),
    )
    files = write_user_credentials(
        fmt,
        out,
        key_pem=private_key_to_pem(key),
        cert_pem=resp["cert"].encode(),
        ca_pems=(resp["host_ca"] + resp["user_ca"]).encode(),
    )
    print(f"\nThe credentials have been written to {', '.join(str(f) for f in files)}")


def _refuse_overwrite(out: str, fmt: str, overwrite: bool) -> None:
    from pathlib import Path

    from jumpgate.core.errors import AlreadyExists

    if overwrite:
        return
    base = Path(out)
    candidates = (
        [base / "node.crt"]
        if fmt == "cockroachdb"
        else [base.with_name(base.name + s) for s in (".crt", ".key", ".cas")]
    )
    existing = [str(p) for p in candidates if p.exists()]
    if existing:
        raise AlreadyExists(
            f"{', '.join(existing)} already exist(s)", hint="pass --overwrite to replace them"
        )


@auth_app.command("export")
def export(
    ctx: typer.Context,
    type: str = typer.Option(
        "", "--type", help="tls-host, tls-user, db, db-client, host, user, jwt (and *-der)"
    ),
) -> None:
    """Print public CA certificates."""
    from jumpgate.core.client.admin import fetch_ca_export
    from jumpgate.core.errors import BadParameter
    from jumpgate.core.tlsca.export import EXPORT_TYPES

    export_type = type or "tls-host"
    if export_type not in EXPORT_TYPES:
        raise BadParameter(
            f"unknown --type {export_type!r}", hint="use one of: " + ", ".join(EXPORT_TYPES)
        )
    gl = _ctx_globals(ctx)
    if gl.auth_server and not gl.identity:
        fetched = fetch_ca_export(gl.auth_server, export_type)
        if not fetched.verified and not gl.insecure:
            warn(
                f"{gl.auth_server} presented a certificate this machine does not trust, so the CA "
                f"below was fetched without verification (its pin: {fetched.pin}). Compare it with "
                "tctl auth export on the auth host; --insecure silences this warning."
            )
        sys.stdout.buffer.write(fetched.body)
        return
    from cryptography import x509

    from jumpgate.core.tlsca.export import render_export

    out = gl.client().call("cas.export", type=EXPORT_TYPES[export_type][0].value)
    certs = x509.load_pem_x509_certificates(out["pem"].encode())
    sys.stdout.buffer.write(render_export(out["cluster_name"], certs, export_type))
