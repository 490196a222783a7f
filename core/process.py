"""``teleport start``: run the enabled services in one asyncio process.

The process owns the data directory (an exclusive lock, so a second ``teleport
start`` on the same directory refuses cleanly), the backend, and the services
its ``teleport.yaml`` enables. It stops gracefully on SIGTERM/SIGINT, logging
each step, and reloads its configuration on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.backend.sqlite import SQLiteBackend
from jumpgate.core.config import TeleportConfig, load_config, parse_hostport
from jumpgate.core.errors import ConfigError, ConnectionProblem
from jumpgate.core.fsutil import atomic_write, ensure_private_dir
from jumpgate.core.proxy.service import ProxyService, proxy_dns_names
from jumpgate.core.tlsca import CAType, generate_private_key, private_key_to_pem, public_key_to_pem

log = logging.getLogger(__name__)

#: The local admin identity ``tctl`` uses on the auth host.
ADMIN_IDENTITY = "proc/admin.pem"


def admin_identity_path(data_dir: Path) -> Path:
    """Where ``teleport start`` keeps the admin identity for local ``tctl``."""
    return data_dir / ADMIN_IDENTITY


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/process.lock`` holding our pid."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "process.lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the holder."""
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"data directory {self.path.parent} is in use by another teleport process (pid {holder})",
                hint="stop that process first, or give this one its own teleport.data_dir",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Drop the lock."""
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass
class Services:
    """What is running."""

    auth: AuthServer | None = None
    auth_runner: object | None = None
    auth_addr: tuple[str, int] | None = None
    auth_workers: Any = None  # core.auth.worker.WorkerPool when auth_service.workers > 1
    proxy: ProxyService | None = None
    proxy_addrs: list[tuple[str, int]] = field(default_factory=list)
    db: Any = None
    app: Any = None
    extra: list[object] = field(default_factory=list)


class TeleportProcess:
    """The supervisor behind ``teleport start``."""

    def __init__(self, config: TeleportConfig, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.data_dir = config.data_dir
        self._lock = DataDirLock(self.data_dir)
        self._backend: SQLiteBackend | None = None
        self.services = Services()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ helpers
    def host_uuid(self) -> str:
        """This node's id, created at first start (``<data_dir>/host_uuid``)."""
        path = self.data_dir / "host_uuid"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = str(uuid.uuid4())
            atomic_write(path, value + "\n", mode=0o600)
            return value

    def _write_keypair(self, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
        proc = ensure_private_dir(self.data_dir / "proc")
        cert, key = proc / f"{name}.crt", proc / f"{name}.key"
        atomic_write(key, key_pem, mode=0o600)
        atomic_write(cert, cert_pem, mode=0o600)
        return cert, key

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every enabled service; raise on configuration problems."""
        cfg = self.config
        cfg.validate_supported()
        ensure_private_dir(self.data_dir)
        self._lock.acquire()
        try:
            await self._start_services()
        except BaseException:
            await self._stop_services()
            self._lock.release()
            raise
        self.ready.set()

    async def _start_services(self) -> None:
        cfg = self.config
        host_id = self.host_uuid()
        if not (cfg.auth_enabled or cfg.proxy_enabled or cfg.db_enabled or cfg.app_enabled):
            raise ConfigError(
                "no service is enabled in this configuration",
                hint="enable auth_service, proxy_service, db_service or app_service",
            )
        if cfg.auth_enabled:
            log.info("backend: SQLite at %s", cfg.backend_path)
            self._backend = SQLiteBackend(cfg.backend_path)
            cluster_name = cfg.auth_service.cluster_name or cfg.teleport.nodename
            auth = AuthServer(
                self._backend,
                cluster_name=cluster_name,
                second_factor=cfg.auth_service.authentication.second_factor,
                proxy_public_addr=cfg.proxy_public_addr if cfg.proxy_enabled else "",
                host_uuid=host_id,
            )
            await auth.start()
            self.services.auth = auth
            await self._start_auth_api(auth, host_id)
        if cfg.proxy_enabled:
            if self.services.auth is None:
                raise ConfigError(
                    "a proxy without a local auth service is not supported yet",
                    hint="enable auth_service in the same teleport.yaml",
                )
            await self._start_proxy(self.services.auth, host_id)
        if cfg.db_enabled:
            await self._start_db_service(host_id)
        if cfg.app_enabled:
            from jumpgate.core.app.agent import start_app_service

            self.services.app = await start_app_service(self, host_id)

    async def _start_db_service(self, host_id: str) -> None:
        """The Database Service: in-process with a local auth, or an agent that joins."""
        from jumpgate.core.db.service import DatabaseService, identity_path
        from jumpgate.core.join import load_or_join

        cfg = self.config
        if not cfg.db_service.databases and not cfg.db_service.resources:
            raise ConfigError(
                "db_service is enabled but lists no databases and no resources to watch",
                hint="add db_service.databases (teleport db configure create writes one) or "
                "db_service.resources: [{labels: {'*': '*'}}]",
            )
        auth = self.services.auth
        if auth is not None and self.services.auth_addr is not None:
            key = generate_private_key()
            issued = auth.generate_host_cert(
                public_key=public_key_to_pem(key.public_key()), host_id=host_id, role="Db"
            )
            ident = IdentityFile(
                key_pem=private_key_to_pem(key),
                cert_pem=issued.cert_pem,
                ca_pems=(issued.host_ca_pem,),
            )
            auth_addr = "{}:{}".format(*self.services.auth_addr)
            proxy_addr = cfg.proxy_public_addr
        else:
            upstream = cfg.upstream()
            if upstream is None:
                raise ConfigError(
                    "db_service needs teleport.proxy_server (or auth_server) to join a cluster",
                    hint="teleport db configure create --proxy=HOST:PORT writes it",
                )
            _, proxy_addr = upstream
            delay = 1.0
            while True:
                try:
                    ident = await load_or_join(
                        identity_path(self.data_dir, "Db"),
                        proxy_addr,
                        token=cfg.join_token() or "",
                        ca_pins=list(cfg.teleport.ca_pin),
                        host_id=host_id,
                        node_name=cfg.teleport.nodename,
                        role="Db",
                    )
                    break
                except ConnectionProblem as exc:  # the cluster is not up yet: keep trying
                    log.warning("db: cannot join yet (%s); retrying in %.0fs", exc.message, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        raise
                    delay = min(delay * 2, 30.0)
            auth_addr = proxy_addr
        proxy_host = parse_hostport(proxy_addr, 3080)[0]
        service = DatabaseService(
            databases=list(cfg.db_service.databases),
            resource_selectors=[dict(m.labels) for m in cfg.db_service.resources],
            host_id=host_id,
            hostname=cfg.teleport.nodename,
            identity=ident,
            auth_addr=auth_addr,
            proxy_addr=proxy_addr,
            proxy_sni=proxy_host,
        )
        if self.services.proxy is not None:
            service.local_registry = self.services.proxy.tunnels
        await service.start()
        self.services.db = service

    async def _start_auth_api(self, auth: AuthServer, host_id: str) -> None:
        cfg = self.config
        host, port = parse_hostport(cfg.auth_service.listen_addr, 3025)
        key = generate_private_key()
        names = [
            cfg.teleport.nodename,
            "localhost",
            "127.0.0.1",
            "::1",
            *cfg.auth_service.public_addr,
        ]
        names = [
            parse_hostport(n, 3025)[0] if ":" in n and not n.startswith("::") else n for n in names
        ]
        issued = auth.generate_host_cert(
            public_key=public_key_to_pem(key.public_key()),
            host_id=host_id,
            role="Auth",
            dns_names=names,
        )
        cert_file, key_file = self._write_keypair("auth", issued.cert_pem, private_key_to_pem(key))
        from jumpgate.core.auth.api import serving, start_api_server

        api, ctx = serving(auth, cert_file=str(cert_file), key_file=str(key_file))
        workers = cfg.auth_service.worker_count()

        try:
            # the project's lean HTTP/1.1 server (about a third of aiohttp's per-request cost)
            runner = await start_api_server(
                api,
                host or None,
                port,
                ssl_context=ctx,
                shutdown_timeout=2.0,
                reuse_port=workers > 1,  # the workers bind it too
            )
        except OSError as exc:
            raise ConfigError(
                f"auth_service.listen_addr {host}:{port}: {exc.strerror or exc}",
                hint="another process may be using the port; pick another listen_addr",
            ) from None
        bound = runner.addresses[0] if runner.addresses else (host, port)
        self.services.auth_runner = runner
        self.services.auth_addr = (_connect_host(host), int(bound[1]))
        log.info("auth: API listening on %s:%d (mutual TLS)", bound[0], bound[1])
        if workers > 1:
            await self._start_auth_workers(
                auth, host or None, int(bound[1]), workers, cert_file, key_file, host_id
            )
        # the local admin identity for tctl on this host
        admin_key = generate_private_key()
        admin = auth.generate_host_cert(
            public_key=public_key_to_pem(admin_key.public_key()),
            host_id=f"admin.{auth.cluster_name}",
            role="Admin",
            ttl=timedelta(days=365),
        )
        ensure_private_dir(self.data_dir / "proc")
        IdentityFile(
            key_pem=private_key_to_pem(admin_key),
            cert_pem=admin.cert_pem,
            ca_pems=(admin.host_ca_pem,),
        ).write(admin_identity_path(self.data_dir))
        atomic_write(
            self.data_dir / "proc" / "auth_addr",
            f"{self.services.auth_addr[0]}:{self.services.auth_addr[1]}\n",
            mode=0o600,
        )

    async def _start_auth_workers(
        self,
        auth: AuthServer,
        host: str | None,
        port: int,
        count: int,
        cert_file: Path,
        key_file: Path,
        host_id: str,
    ) -> None:
        """``count - 1`` more processes serving the auth API on ``host:port`` (SO_REUSEPORT)."""
        from jumpgate.core.auth.worker import WorkerPool, WorkerSpec

        cfg = self.config
        auth.store.shared = True  # read-your-writes with the workers' commits
        log_cfg = cfg.teleport.log
        specs = [
            WorkerSpec(
                index=i,
                backend_path=str(cfg.backend_path),
                cluster_name=auth.cluster_name,
                second_factor=auth.second_factor,
                proxy_public_addr=auth.proxy_public_addr,
                host_uuid=host_id,
                cert_file=str(cert_file),
                key_file=str(key_file),
                host=host,
                port=port,
                log_level=logging.getLevelName(logging.getLogger().level),
                log_format=log_cfg.format.output,
                log_output=log_cfg.output,
            )
            for i in range(1, count)
        ]
        pool = WorkerPool(specs)
        await pool.start()
        self.services.auth_workers = pool
        log.info("auth: %d processes serve the auth API (auth_service.workers)", count)

    async def _start_proxy(self, auth: AuthServer, host_id: str) -> None:
        cfg = self.config
        host, port = parse_hostport(cfg.proxy_service.web_listen_addr, 3080)
        public_host = parse_hostport(cfg.proxy_public_addr, 3080)[0]
        key = generate_private_key()
        issued = auth.generate_host_cert(
            public_key=public_key_to_pem(key.public_key()),
            host_id=host_id,
            role="Proxy",
            dns_names=proxy_dns_names(public_host, cfg.teleport.nodename),
        )
        cert_file, key_file = self._write_keypair("proxy", issued.cert_pem, private_key_to_pem(key))
        proxy = ProxyService(
            auth,
            listen_host=host,
            listen_port=port,
            public_addr=cfg.proxy_public_addr,
            cert_file=cert_file,
            key_file=key_file,
            client_ca_pem=auth.ca_pem(CAType.USER) + auth.ca_pem(CAType.HOST),
            auth_addr=self.services.auth_addr,
            mint=lambda name: self._mint_proxy_cert(auth, host_id, name),
            host_ca_pem=auth.ca_pem(CAType.HOST),
            user_ca_pem=auth.ca_pem(CAType.USER),
        )
        try:
            self.services.proxy_addrs = await proxy.start()
        except OSError as exc:
            raise ConfigError(
                f"proxy_service.web_listen_addr {host}:{port}: {exc.strerror or exc}",
                hint="another process may be using the port; pick another web_listen_addr",
            ) from None
        self.services.proxy = proxy

    def _mint_proxy_cert(self, auth: AuthServer, host_id: str, name: str) -> tuple[Path, Path]:
        """A proxy certificate for one extra name (app subdomains of a single-label host)."""
        key = generate_private_key()
        issued = auth.generate_host_cert(
            public_key=public_key_to_pem(key.public_key()),
            host_id=host_id,
            role="Proxy",
            dns_names=[name],
        )
        safe = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
        return self._write_keypair(f"proxy-{safe}", issued.cert_pem, private_key_to_pem(key))

    async def _stop_services(self) -> None:
        s = self.services
        if s.app is not None:
            log.info("shutdown: stopping the Application Service")
            await s.app.close()
        if s.db is not None:
            log.info("shutdown: stopping the Database Service")
            await s.db.close()
        if s.proxy is not None:
            log.info("shutdown: closing the proxy's web port")
            await s.proxy.close()
        if s.auth_workers is not None:
            log.info("shutdown: stopping the auth API workers")
            await s.auth_workers.stop()
        if s.auth_runner is not None:
            log.info("shutdown: closing the auth API")
            if s.auth is not None:
                s.auth.wake_long_polls()
            await s.auth_runner.cleanup()  # type: ignore[attr-defined]
        if s.auth is not None:
            log.info("shutdown: flushing the audit log")
            await s.auth.close()
        if self._backend is not None:
            log.info("shutdown: closing the backend")
            await self._backend.close()
            self._backend = None
        self.services = Services()

    async def stop(self) -> None:
        """Graceful shutdown, step by step."""
        log.info("shutdown: stopping services")
        await self._stop_services()
        self._lock.release()
        log.info("shutdown: complete")

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (signal handlers call this)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask :meth:`run` to reload the configuration (SIGHUP)."""
        self._reload.set()

    async def _do_reload(self) -> None:
        if self.config_path is None:
            log.warning("reload: no configuration file to re-read; ignoring SIGHUP")
            return
        try:
            new = load_config(self.config_path)
            new.validate_supported()
        except ConfigError as exc:
            log.error("reload: keeping the running configuration: %s", exc)
            return
        if new.data_dir != self.data_dir:
            log.error(
                "reload: teleport.data_dir cannot change while running; keeping %s", self.data_dir
            )
            return
        log.info("reload: restarting services with %s", self.config_path)
        await self._stop_services()
        self.config = new
        await self._start_services()
        log.info("reload: done")

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig, fn in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, fn)
        await self.start()
        log.info("teleport: started (data dir %s)", self.data_dir)
        try:
            while not self._stop.is_set():
                stop = asyncio.ensure_future(self._stop.wait())
                reload = asyncio.ensure_future(self._reload.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                for t in (stop, reload):
                    t.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._do_reload()
        finally:
            await self.stop()
