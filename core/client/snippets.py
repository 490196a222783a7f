"""Connection snippets for a database behind a local proxy: libpq, psql, psycopg, Go (pgx).

A local proxy (``tsh proxy db`` or ``tbot proxy db``) listens on loopback. In
TLS mode the client brings its own certificate (``sslcert``/``sslkey``) and
verifies the proxy against the cluster's host CA (``sslrootcert``,
``sslmode=verify-full``); in tunnel mode (``--tunnel``) the local proxy
authenticates and the client connects in plain text to loopback.

The snippets name the real files (the tsh profile's or a tbot destination's),
so they can be pasted as they are.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from jumpgate.core.client.profile import Profile

#: The port the snippets use when no local proxy is running yet.
DEFAULT_LOCAL_PORT = 5433


@dataclass(frozen=True)
class ConnParams:
    """Where a client connects and with which files."""

    host: str
    port: int
    user: str
    database: str
    tunnel: bool = False
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""

    def fields(self) -> list[tuple[str, str]]:
        """The libpq keywords, in the order the seed guide lists them."""
        out = [
            ("host", self.host),
            ("port", str(self.port)),
            ("dbname", self.database),
            ("user", self.user),
        ]
        if self.tunnel:
            out.append(("sslmode", "disable"))
        else:
            out += [
                ("sslmode", "verify-full"),
                ("sslrootcert", self.sslrootcert),
                ("sslkey", self.sslkey),
                ("sslcert", self.sslcert),
            ]
        return [(k, v) for k, v in out if v]


def for_destination(
    directory: str | Path,
    *,
    user: str,
    database: str,
    port: int,
    tunnel: bool,
    host: str = "localhost",
) -> ConnParams:
    """Parameters for a tbot ``database`` output (default format) in ``directory``."""
    d = Path(directory)
    return ConnParams(
        host=host,
        port=port,
        user=user,
        database=database,
        tunnel=tunnel,
        sslrootcert=str(d / "teleport-host-ca.crt"),
        sslcert=str(d / "tlscert"),
        sslkey=str(d / "key"),
    )


def for_profile(
    profile: Profile,
    db: str,
    *,
    user: str,
    database: str,
    port: int,
    tunnel: bool,
    host: str = "localhost",
) -> ConnParams:
    """Parameters for database ``db`` of a tsh profile (its certificate, key and host CA)."""
    return ConnParams(
        host=host,
        port=port,
        user=user,
        database=database,
        tunnel=tunnel,
        sslrootcert=str(profile.ca_path),
        sslcert=str(profile.db_cert_path(db)),
        sslkey=str(profile.key_path),
    )


def _libpq_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq(p: ConnParams) -> str:
    """A libpq key/value connection string."""
    return " ".join(f"{k}={_libpq_value(v)}" for k, v in p.fields())


def url(p: ConnParams) -> str:
    """A ``postgres://`` URL."""
    query = "&".join(
        f"{k}={quote(v, safe='/')}"
        for k, v in p.fields()
        if k not in ("host", "port", "dbname", "user")
    )
    host = f"[{p.host}]" if ":" in p.host else p.host
    return f"postgres://{quote(p.user, safe='')}@{host}:{p.port}/{quote(p.database, safe='')}" + (
        f"?{query}" if query else ""
    )


def psql(p: ConnParams) -> str:
    """The psql command line."""
    return shlex.join(["psql", libpq(p)])


def psycopg(p: ConnParams) -> str:
    """A Python program with psycopg 3."""
    args = "".join(f"    {k}={v!r},\n" for k, v in p.fields())
    return (
        "import psycopg\n\n"
        "with psycopg.connect(\n"
        f"{args}"
        ") as conn:\n"
        '    print(conn.execute("select current_user, current_database()").fetchone())\n'
    )


def pgx(p: ConnParams) -> str:
    """The seed guide's Go program (database/sql with pgx) with these values."""
    lines = []
    for k, v in p.fields():
        if k == "sslmode" and not p.tunnel:
            lines.append(
                "\t\t// The next four options should be omitted if the local proxy has been\n"
                '\t\t// placed in "authenticated tunnel" mode.'
            )
        lines.append(f'\t\t"{k}={v} ",')
    body = "\n".join(lines)
    return f"""package main

import (
\t"database/sql"
\t"fmt"
\t"log"

\t_ "github.com/jackc/pgx/v4/stdlib"
)

func main() {{
\t// Open connection to database.
\tdb, err := sql.Open("pgx", fmt.Sprint(
{body}
\t))
\tif err != nil {{
\t\tlog.Fatalf("Failed to open database: %v.", err)
\t}}

\tdefer db.Close()

\t// Call "Ping" to test connectivity.
\terr = db.Ping()
\tif err != nil {{
\t\tlog.Fatalf("Failed to Ping database: %v.", err)
\t}}

\tlog.Printf("Successfully connected to PostgreSQL.")
}}
"""


def curl(app_url: str, *, cert: str = "", key: str = "", ca: str = "") -> str:
    """A curl command for a web application (through a local proxy when no cert is given)."""
    argv = ["curl"]
    if ca:
        argv += ["--cacert", ca]
    if cert:
        argv += ["--cert", cert]
    if key:
        argv += ["--key", key]
    return shlex.join([*argv, app_url])
