"""A real PostgreSQL server for tests, configured like a database behind Jumpgate.

``start_postgres`` runs ``initdb`` + ``pg_ctl`` in a private directory: TLS on with
the given server certificate, client certificates required over TCP (``hostssl …
cert``, no password fallback, no plain TCP), trust on the Unix socket for set-up.
When the tests run as root (CI), PostgreSQL runs as the unprivileged system user
``jumpgate-pg``, created once (a file lock serialises xdist workers).

``make_db_certs`` mirrors ``tctl auth sign --format=db``: the server certificate
is signed by the cluster's ``db`` CA, and the server trusts the ``db_client`` CA
(the ``.cas`` file) for client certificates whose CN is the database user.

Fixtures: ``pg_certs`` and ``postgres`` (session scope: one server per xdist
worker). Import them into a conftest (or a test module) to use them::

    from tests.pg_fixture import pg_certs, postgres  # noqa: F401
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from glob import glob
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    cert_to_pem,
    generate_private_key,
    private_key_to_pem,
    utcnow,
)

#: The system user PostgreSQL runs as when the tests run as root.
PG_USER = "jumpgate-pg"
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
CLUSTER_NAME = "example.com"
DEFAULT_DATABASES = ("example", "example-db")
DEFAULT_USERS = ("alice",)
START_TIMEOUT = 30

_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH nor in "
    "/usr/lib/postgresql/*/bin; install them with `bash scripts/install-system-deps.sh` "
    "(Debian package postgresql)"
)


# --------------------------------------------------------------------------- binaries


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin$", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH first, else the newest
    ``/usr/lib/postgresql/<version>/bin``; ``None`` when there is none."""
    found = [shutil.which(name) for name in PG_BINARIES]
    if all(found):
        dirs = {Path(f).resolve().parent for f in found if f}
        if len(dirs) == 1:
            return dirs.pop()
    for candidate in sorted(glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all((Path(candidate) / name).is_file() for name in PG_BINARIES):
            return Path(candidate)
    return None


def require_pg_bin() -> Path:
    """:func:`find_pg_bin`, or fail (when ``CI`` is set) / skip the test."""
    found = find_pg_bin()
    if found is not None:
        return found
    if os.environ.get("CI"):
        pytest.fail(_INSTALL_HINT, pytrace=False)
    pytest.skip(_INSTALL_HINT)


def _psql_path(bin_dir: Path) -> str:
    local = bin_dir / "psql"
    if local.is_file():
        return str(local)
    found = shutil.which("psql")
    if found is None:
        pytest.fail("psql was not found (Debian package postgresql-client)", pytrace=False)
    return found


# --------------------------------------------------------------------------- the pg user


def ensure_pg_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged user PostgreSQL runs as (created once); else ``None``."""
    if os.geteuid() != 0:
        return None
    lock = Path(tempfile.gettempdir()) / "jumpgate-pg-user.lock"
    with lock.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(PG_USER)
        except KeyError:
            pass
        proc = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            return pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.fail(
                f"cannot create the system user {PG_USER} to run PostgreSQL as: "
                f"useradd exited {proc.returncode}: {proc.stderr.strip()}",
                pytrace=False,
            )


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, user.pw_uid, user.pw_gid, follow_symlinks=False)


# --------------------------------------------------------------------------- certificates


@dataclass
class DbCerts:
    """The cluster's ``db`` and ``db_client`` CAs and a server certificate for localhost."""

    db_ca: CertAuthority
    db_client_ca: CertAuthority
    server_cert_pem: bytes
    server_key_pem: bytes

    def client_cert(
        self, user: str, *, ca: CertAuthority | None = None, ttl: timedelta = timedelta(hours=1)
    ) -> tuple[bytes, bytes]:
        """``(cert_pem, key_pem)`` with ``CN=user`` (from the ``db_client`` CA by default)."""
        key = generate_private_key()
        cert = (ca or self.db_client_ca).issue(
            key.public_key(),
            not_after=utcnow() + ttl,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]),
            client=True,
        )
        return cert_to_pem(cert), private_key_to_pem(key)

    def write_client_files(
        self, directory: Path, user: str, *, ca: CertAuthority | None = None
    ) -> dict[str, str]:
        """libpq's ``sslrootcert``/``sslcert``/``sslkey`` files for ``user`` (key 0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self.client_cert(user, ca=ca)
        root = directory / "root.crt"
        root.write_bytes(self.db_ca.cert_pem)
        cert = directory / f"{user}.crt"
        cert.write_bytes(cert_pem)
        key = directory / f"{user}.key"
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(key_pem)
        return {"sslrootcert": str(root), "sslcert": str(cert), "sslkey": str(key)}


def make_db_certs(
    hosts: Sequence[str] = ("localhost", "127.0.0.1"), *, cluster: str = CLUSTER_NAME
) -> DbCerts:
    """Throwaway CAs and a server certificate, as ``tctl auth sign --format=db`` makes them."""
    db_ca = CertAuthority.generate(CAType.DB, cluster)
    db_client_ca = CertAuthority.generate(CAType.DB_CLIENT, cluster)
    key = generate_private_key()
    cert = db_ca.issue(
        key.public_key(),
        not_after=utcnow() + timedelta(days=1),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        dns_names=list(hosts),
        server=True,
        client=False,
    )
    return DbCerts(db_ca, db_client_ca, cert_to_pem(cert), private_key_to_pem(key))


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class PgServer:
    """A running PostgreSQL: TCP on ``host:port`` (TLS + client certificates only) and a
    trusted Unix socket in ``socket_dir`` for set-up through :meth:`psql`."""

    base: Path
    bin_dir: Path
    port: int
    run_as: pwd.struct_passwd | None
    keep_log: Path | None = None
    host: str = "127.0.0.1"
    _running: bool = field(default=False, repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def log(self) -> str:
        """The server log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ commands
    def _as_pg(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        return ["runuser", "-u", self.run_as.pw_name, "--", *argv]

    def _run(self, argv: list[str], *, what: str, timeout: float = 60) -> str:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        proc = subprocess.run(
            self._as_pg(argv),
            cwd=self.base,  # the pg user may not be able to read the test's working directory
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n"
                f"--- server log\n{self.log()[-4000:]}",
                pytrace=False,
            )
        return proc.stdout

    def psql(self, sql: str, *, user: str = "postgres", db: str = "postgres") -> str:
        """Run ``sql`` over the Unix socket (trusted); return psql's unaligned output."""
        psql = _psql_path(self.bin_dir)
        proc = subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                db,
                "-c",
                sql,
            ],
            env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"psql {sql!r} as {user}@{db} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # ------------------------------------------------------------------ lifecycle
    def _pg_ctl(self, *args: str) -> list[str]:
        return self._as_pg([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])

    def start(self) -> None:
        """``pg_ctl -w start``; on a port clash pick another port (three tries)."""
        for attempt in range(3):
            self._write_port()
            proc = subprocess.run(
                self._pg_ctl("-l", str(self.log_path), "-w", "-t", str(START_TIMEOUT), "start"),
                cwd=self.base,
                env={**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"},
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT + 10,
                check=False,
            )
            if proc.returncode == 0:
                self._running = True
                return
            if "Address already in use" in self.log() and attempt < 2:
                self.port = _free_port()
                continue
            pytest.fail(
                f"PostgreSQL did not start (pg_ctl exit {proc.returncode}): {proc.stderr}\n"
                f"--- server log\n{self.log()[-4000:]}",
                pytrace=False,
            )

    def _write_port(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        text = re.sub(r"(?m)^port = \d+\n", "", text) + f"port = {self.port}\n"
        conf.write_text(text)

    def stop(self) -> None:
        """Stop the server, keep its log (in ``keep_log``) and remove its files."""
        if self._running:
            self._running = False
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    self._pg_ctl("-m", "fast", "-w", "-t", "20", "stop"),
                    cwd=self.base,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
        if self.keep_log is not None and self.log_path.exists():
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, self.keep_log)
        shutil.rmtree(self.base, ignore_errors=True)


def _write_conf(server: PgServer, certs: tuple[bytes, bytes, bytes]) -> None:
    cert_pem, key_pem, ca_pem = certs
    base = server.base
    (base / "server.crt").write_bytes(cert_pem)
    key = base / "server.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_bytes(key_pem)
    (base / "ca.crt").write_bytes(ca_pem)
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# --- jumpgate test settings\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{base}'\n"
            "ssl = on\n"
            f"ssl_cert_file = '{base / 'server.crt'}'\n"
            f"ssl_key_file = '{base / 'server.key'}'\n"
            f"ssl_ca_file = '{base / 'ca.crt'}'\n"
            "max_connections = 50\n"
            "shared_buffers = 16MB\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "log_connections = on\n"
        )
    (server.data_dir / "pg_hba.conf").write_text(
        "# jumpgate tests: trust on the Unix socket for set-up; TCP only with TLS and a\n"
        "# client certificate whose CN is the database user (no password fallback)\n"
        "local   all all                trust\n"
        "hostssl all all 127.0.0.1/32   cert\n"
        "hostssl all all ::1/128        cert\n"
    )


def start_postgres(
    tmp_path: Path,
    *,
    server_cert_pem: bytes,
    server_key_pem: bytes,
    ca_pem: bytes,
    databases: Sequence[str] = DEFAULT_DATABASES,
    users: Sequence[str] = DEFAULT_USERS,
    port: int | None = None,
) -> PgServer:
    """Create, configure and start a PostgreSQL server; create ``users`` and ``databases``.

    ``ca_pem`` is the CA client certificates must chain to (the ``db_client`` CA).
    The server's files live in a short private directory under the system temp
    directory (Unix socket paths are limited to ~100 bytes and, as root, the pg
    user must reach them); its log is copied to ``tmp_path/postgres.log`` on stop.
    Every user can create objects in the ``public`` schema of every database.
    ``port`` is a free port chosen beforehand (a cluster config may name it first).
    """
    bin_dir = require_pg_bin()
    run_as = ensure_pg_user()
    base = Path(tempfile.mkdtemp(prefix="jgpg-"))
    server = PgServer(
        base=base,
        bin_dir=bin_dir,
        port=port or _free_port(),
        run_as=run_as,
        keep_log=tmp_path / "postgres.log",
    )
    try:
        data = base / "data"
        data.mkdir(mode=0o700)
        if run_as is not None:
            _chown_tree(base, run_as)
        server._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )
        _write_conf(server, (server_cert_pem, server_key_pem, ca_pem))
        if run_as is not None:
            _chown_tree(base, run_as)
        server.start()
        for user in users:
            server.psql(f"CREATE ROLE {_quote_ident(user)} LOGIN")
        for db in databases:
            server.psql(f"CREATE DATABASE {_quote_ident(db)}")
            server.psql("GRANT ALL ON SCHEMA public TO PUBLIC", db=db)
    except BaseException:
        server.stop()
        raise
    return server


def wait_for_log(server: PgServer, text: str, *, timeout: float = 5) -> bool:
    """Poll the server log for ``text`` (e.g. a connection line); whether it appeared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def pg_certs() -> DbCerts:
    """Throwaway ``db``/``db_client`` CAs and a server certificate for localhost."""
    return make_db_certs()


@pytest.fixture(scope="session")
def postgres(pg_certs: DbCerts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A running PostgreSQL (users ``alice`` and ``postgres``; databases ``example``,
    ``example-db``) that trusts ``pg_certs.db_client_ca``; one per xdist worker."""
    server = start_postgres(
        tmp_path_factory.mktemp("postgres"),
        server_cert_pem=pg_certs.server_cert_pem,
        server_key_pem=pg_certs.server_key_pem,
        ca_pem=pg_certs.db_client_ca.cert_pem,
    )
    try:
        yield server
    finally:
        server.stop()
