"""Writing signed credentials to disk in the layouts Teleport uses.

``tctl auth sign --format=db|tls|mongodb|cockroachdb --host=… --out=PATH`` and
``--user=NAME --out=FILE`` (identity file). Every file is written atomically
with mode 0600.
"""

from __future__ import annotations

from pathlib import Path

from jumpgate.core.errors import BadParameter
from jumpgate.core.fsutil import atomic_write, ensure_private_dir

#: formats that produce a database *server* certificate with --host
DB_FORMATS = ("db", "tls", "mongodb", "cockroachdb", "redis", "elasticsearch", "scylla")
#: formats for a user identity with --user
USER_FORMATS = ("file", "tls", "db")


def write_server_credentials(
    fmt: str,
    out: str,
    *,
    key_pem: bytes,
    cert_pem: bytes,
    server_ca_pem: bytes,
    client_ca_pem: bytes,
) -> list[Path]:
    """Write a database server's key, certificate and CA files; return the paths written.

    ``.cas`` (and CockroachDB's ``ca-client.crt``) hold the ``db_client`` CA: the CA
    whose certificates the database must accept from the Database Service.
    """
    if not out:
        raise BadParameter("--out is required", hint="for example: --out=server")
    base = Path(out)
    if fmt in ("db", "tls", "redis", "elasticsearch", "scylla"):
        files = {
            base.with_name(base.name + ".key"): key_pem,
            base.with_name(base.name + ".crt"): cert_pem,
            base.with_name(base.name + ".cas"): client_ca_pem,
        }
    elif fmt == "mongodb":
        files = {
            base.with_name(base.name + ".crt"): cert_pem + key_pem,
            base.with_name(base.name + ".cas"): client_ca_pem,
        }
    elif fmt == "cockroachdb":
        ensure_private_dir(base)
        files = {
            base / "node.crt": cert_pem,
            base / "node.key": key_pem,
            base / "ca.crt": server_ca_pem,
            base / "ca-client.crt": client_ca_pem,
        }
    else:
        raise BadParameter(
            f"unsupported --format {fmt!r} for --host", hint="use one of: " + ", ".join(DB_FORMATS)
        )
    for path, data in files.items():
        if path.parent and not path.parent.exists():
            raise BadParameter(
                f"directory {path.parent} does not exist", hint="create it or change --out"
            )
        atomic_write(path, data, mode=0o600)
    return list(files)


def write_user_credentials(
    fmt: str, out: str, *, key_pem: bytes, cert_pem: bytes, ca_pems: bytes
) -> list[Path]:
    """Write a user identity: one identity file (``file``) or key/cert/CA files (``tls``, ``db``)."""
    base = Path(out)
    if fmt == "file":
        atomic_write(base, key_pem + cert_pem + ca_pems, mode=0o600)
        return [base]
    if fmt in ("tls", "db"):
        return write_server_credentials(
            "tls",
            out,
            key_pem=key_pem,
            cert_pem=cert_pem,
            server_ca_pem=ca_pems,
            client_ca_pem=ca_pems,
        )
    raise BadParameter(f"unsupported --format {fmt!r} for --user", hint="use file or tls")
