"""What a dashboard can see on this machine: identities, running local proxies, tbot processes.

Everything here reads local state only (files, ``/proc``) except
:func:`read_diagnostics`, which asks a tbot's ``diag_addr`` over HTTP (its
``/readyz`` and ``/metrics``, with the last and next renewal of the bot
identity and of each output; :func:`renewal_times` picks them for one
certificate, or estimates them from the certificate when tbot cannot say):

* :func:`profile_certs` / :func:`bot_certs` / :func:`destination_cert`: every
  certificate of a ``tsh`` profile (user, databases, apps) and of a tbot
  (its own identity in the storage, each directory output), as
  :class:`CertInfo` records with the route, the roles and the validity window;
* :func:`discover_local_proxies`: the status files running local proxies
  rewrite about once a second (``<dir>/<pid>-<port>.json``, see
  :mod:`jumpgate.core.client.localproxy`), without the ones whose process is gone;
* :func:`find_tbot_pid` and :func:`renew_now`: the pid of the ``tbot start``
  running a config (a pid file, else ``/proc``), and SIGHUP to renew at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jumpgate.core.errors import AccessDenied, BadParameter, ConnectionProblem, NotFound

if TYPE_CHECKING:
    from jumpgate.core.bot.config import BotConfig
    from jumpgate.core.client.profile import Profile


# --------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class CertInfo:
    """One certificate Jumpgate can see, and what it is for."""

    #: ``tsh profile``, ``database``, ``app``, ``tbot identity``, ``tbot output``
    kind: str
    #: A short label: the profile name, the database, the output's destination
    name: str
    subject: str
    roles: tuple[str, ...]
    route: str
    not_before: datetime
    not_after: datetime
    path: Path
    #: The tbot config it belongs to ("" for tsh certificates)
    config: str = ""
    #: The tbot config's renewal interval (None for tsh certificates)
    renewal_interval: timedelta | None = None
    #: The output's name in the tbot diagnostics (``/readyz``), for ``tbot output`` certificates
    output: str = ""

    def remaining(self, now: datetime | None = None) -> timedelta:
        """Time left (negative once expired)."""
        return self.not_after - (now or datetime.now(UTC))

    def fraction_left(self, now: datetime | None = None) -> float:
        """Remaining share of the validity window, 0.0 (expired) to 1.0 (fresh)."""
        total = (self.not_after - self.not_before).total_seconds()
        if total <= 0:
            return 0.0
        return max(0.0, min(1.0, self.remaining(now).total_seconds() / total))

    @property
    def last_renewal(self) -> datetime:
        """When the certificate was issued (its NotBefore, without the CA's one-minute backdate)."""
        return self.not_before + timedelta(minutes=1)

    @property
    def next_renewal(self) -> datetime | None:
        """An estimate of when tbot renews it (issued + renewal interval); None for tsh
        certificates. :func:`renewal_times` prefers what tbot's diagnostics say."""
        if self.renewal_interval is None:
            return None
        return self.last_renewal + self.renewal_interval


def _cert_info(pem: bytes, *, kind: str, name: str, path: Path, **extra: Any) -> CertInfo | None:
    """A :class:`CertInfo` from a certificate PEM, or None when it is not a cluster certificate."""
    from cryptography import x509

    from jumpgate.core.tlsca import identity_from_certificate

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        ident = identity_from_certificate(cert)
    except (AccessDenied, BadParameter):
        return None
    route = ""
    if ident.route_to_database is not None:
        r = ident.route_to_database
        route = f"db {r.service_name} ({r.protocol}) as {r.username or '-'}"
        if r.database:
            route += f" on {r.database}"
    elif ident.route_to_app is not None:
        route = f"app {ident.route_to_app.name}"
        if ident.route_to_app.public_addr:
            route += f" ({ident.route_to_app.public_addr})"
    return CertInfo(
        kind=kind,
        name=name,
        subject=ident.username,
        roles=tuple(ident.groups),
        route=route,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        path=path,
        **extra,
    )


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def profile_certs(profile: Profile) -> list[CertInfo]:
    """The user certificate of a tsh profile, then its database and app certificates."""
    out: list[CertInfo] = []
    pem = _read(profile.cert_path)
    if pem is not None:
        info = _cert_info(pem, kind="tsh profile", name=profile.name, path=profile.cert_path)
        if info is not None:
            out.append(info)
    for db in profile.databases():
        path = profile.db_cert_path(db)
        pem = _read(path)
        info = _cert_info(pem, kind="database", name=db, path=path) if pem else None
        if info is not None:
            out.append(info)
    app_dir = profile.key_dir / f"{profile.user}-app" / profile.cluster
    if app_dir.is_dir():
        for path in sorted([*app_dir.glob("*.crt"), *app_dir.glob("*-x509.pem")]):
            pem = _read(path)
            name = path.name.removesuffix("-x509.pem").removesuffix(".crt")
            info = _cert_info(pem, kind="app", name=name, path=path) if pem else None
            if info is not None:
                out.append(info)
    return out


def destination_cert(
    directory: str | os.PathLike[str], *, kind: str = "tbot output", **extra: Any
) -> CertInfo | None:
    """The certificate (``tlscert``) a tbot wrote to a directory destination, or None."""
    path = Path(directory) / "tlscert"
    pem = _read(path)
    if pem is None:
        return None
    return _cert_info(pem, kind=kind, name=str(directory), path=path, **extra)


def bot_certs(cfg: BotConfig) -> list[CertInfo]:
    """A tbot's own identity (directory storage) and every directory output it writes."""
    from jumpgate.core.bot.config_outputs import DirectoryConfig, output_labels

    ri = cfg.renewal_interval
    out: list[CertInfo] = []
    if isinstance(cfg.storage, DirectoryConfig):
        info = destination_cert(
            cfg.storage.path, kind="tbot identity", config=cfg.source, renewal_interval=ri
        )
        if info is not None:
            out.append(info)
    for o, label in zip(cfg.outputs, output_labels(cfg.outputs), strict=True):
        if isinstance(o.destination, DirectoryConfig):
            info = destination_cert(
                o.destination.path, config=cfg.source, renewal_interval=ri, output=label
            )
            if info is not None:
                out.append(info)
    return out


# --------------------------------------------------------------------------- local proxies
@dataclass(frozen=True)
class LocalProxyInfo:
    """One running local proxy, as its status file describes it."""

    pid: int
    listen: str
    mode: str
    protocol: str
    target: str
    proxy: str
    started: datetime | None
    connections_live: int
    connections_total: int
    bytes_in: int
    bytes_out: int
    errors: int
    last_error: str
    #: ``tsh``, ``tbot``, ``jumpgate`` or the program name from /proc
    program: str
    path: Path
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def uptime(self, now: datetime | None = None) -> timedelta:
        """How long it has been listening."""
        if self.started is None:
            return timedelta(0)
        return max(timedelta(0), (now or datetime.now(UTC)) - self.started)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_cmdline(pid: int) -> list[str]:
    """``/proc/<pid>/cmdline`` split into arguments ([] when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _program(pid: int) -> str:
    argv = process_cmdline(pid)
    names = [Path(a).name for a in argv[:3]]
    for known in ("tsh", "tbot", "jumpgate"):
        if known in names:
            return known
    return names[0] if names else "?"


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def read_proxy_status(path: Path) -> LocalProxyInfo | None:
    """One status file, or None when it is unreadable or its process is gone."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    try:
        pid = int(doc.get("pid") or 0)
    except (TypeError, ValueError):
        return None
    if not pid_alive(pid):
        return None

    def num(key: str) -> int:
        try:
            return int(doc.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    return LocalProxyInfo(
        pid=pid,
        listen=str(doc.get("listen") or ""),
        mode=str(doc.get("mode") or ""),
        protocol=str(doc.get("protocol") or ""),
        target=str(doc.get("target") or ""),
        proxy=str(doc.get("proxy") or ""),
        started=_parse_time(doc.get("started")),
        connections_live=num("connections_live"),
        connections_total=num("connections_total"),
        bytes_in=num("bytes_in"),
        bytes_out=num("bytes_out"),
        errors=num("errors"),
        last_error=str(doc.get("last_error") or ""),
        program="jumpgate" if pid == os.getpid() else _program(pid),
        path=path,
        raw=doc,
    )


def discover_local_proxies(dirs: list[Path]) -> list[LocalProxyInfo]:
    """Every live local proxy with a status file in ``dirs``, by listen address."""
    seen: set[Path] = set()
    out: list[LocalProxyInfo] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.json")):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            info = read_proxy_status(path)
            if info is not None:
                out.append(info)
    return sorted(out, key=lambda p: (p.listen, p.pid))


# --------------------------------------------------------------------------- tbot processes
def find_tbot_pid(config: str, pid_file: str = "") -> int | None:
    """The pid of the ``tbot start`` running ``config``: the pid file if it names a live
    process, else the first ``/proc`` entry whose command line is ``tbot … start … -c CONFIG``."""
    if pid_file:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(pid_file).read_text().strip())
            if pid_alive(pid):
                return pid
    want = str(Path(config).resolve()) if config else ""
    if not want:
        return None
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        argv = process_cmdline(int(entry.name))
        if not argv or "start" not in argv:
            continue
        if not any(Path(a).name == "tbot" for a in argv[:3]):
            continue
        if _config_of(argv, entry) == want:
            return int(entry.name)
    return None


def _config_of(argv: list[str], entry: Path) -> str:
    """The absolute ``-c``/``--config`` path of a tbot command line."""
    value = ""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
    if not value:
        return ""
    if not Path(value).is_absolute():
        with contextlib.suppress(OSError):
            value = str((entry / "cwd").readlink() / value)
    return str(Path(value).resolve())


def renew_now(pid: int) -> None:
    """Ask a running ``tbot start`` to renew at once (SIGHUP, as ``systemctl reload`` does)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NotFound(
            f"tbot (pid {pid}) is no longer running",
            hint="start it again: tbot start -c /etc/tbot.yaml",
        ) from None
    except PermissionError:
        raise AccessDenied(
            f"not allowed to signal tbot (pid {pid})",
            hint="run the dashboard as the user tbot runs as, or: sudo systemctl reload tbot",
        ) from None


# --------------------------------------------------------------------------- diagnostics
@dataclass(frozen=True)
class Diagnostics:
    """What a tbot's diagnostics endpoint says."""

    ready: bool
    services: dict[str, Any]
    renewals_total: int
    renewal_failures_total: int
    identity_expiry_seconds: float | None
    #: ``/readyz``'s ``identity`` entry (expires, last_renewal, next_renewal)
    identity: dict[str, Any] = field(default_factory=dict)

    def renewals(self, output: str = "") -> tuple[datetime | None, datetime | None]:
        """(last, next) renewal of an output (by its ``/readyz`` name), or of the bot
        identity when ``output`` is empty; None where tbot does not say."""
        detail = self.services.get(output) if output else self.identity
        if not isinstance(detail, dict):
            return None, None
        return _parse_time(detail.get("last_renewal")), _parse_time(detail.get("next_renewal"))


@dataclass(frozen=True)
class RenewalTimes:
    """The last and next renewal of a certificate, and where they come from."""

    last: datetime | None
    next: datetime | None
    #: ``tbot`` (its diagnostics), ``estimated`` (issued + renewal_interval), ``issued`` (a
    #: tsh certificate: ``last`` is when it was issued, nothing renews it)
    source: str


def renewal_times(cert: CertInfo, diag: Diagnostics | None) -> RenewalTimes:
    """From the diagnostics of the tbot that writes ``cert`` when they have its times,
    else estimated from the certificate itself."""
    is_bot = cert.kind == "tbot identity" or (cert.kind == "tbot output" and bool(cert.output))
    if is_bot and diag is not None:
        last, nxt = diag.renewals(cert.output if cert.kind == "tbot output" else "")
        if last is not None or nxt is not None:
            return RenewalTimes(last, nxt, "tbot")
    if cert.renewal_interval is None:
        return RenewalTimes(cert.last_renewal, None, "issued")
    return RenewalTimes(cert.last_renewal, cert.next_renewal, "estimated")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``{"name{labels}": value}`` for every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name.strip()] = float(value)
    return out


def read_diagnostics(diag_addr: str, *, timeout: float = 2.0) -> Diagnostics:
    """``/readyz`` and ``/metrics`` of a tbot (``diag_addr``, ``HOST:PORT``)."""
    base = f"http://{diag_addr}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as resp:  # noqa: S310
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionProblem(
                f"cannot reach the tbot diagnostics at {diag_addr}: {reason}",
                hint="is tbot start running with this diag_addr?",
            ) from None

    status, body = get("/readyz")
    try:
        ready_doc = json.loads(body)
    except ValueError:
        ready_doc = {}
    _, metrics_text = get("/metrics")
    metrics = parse_metrics(metrics_text)
    services = ready_doc.get("services") if isinstance(ready_doc, dict) else None
    identity = ready_doc.get("identity") if isinstance(ready_doc, dict) else None
    return Diagnostics(
        ready=status == 200,
        services=services if isinstance(services, dict) else {},
        renewals_total=int(metrics.get("tbot_renewals_total", 0)),
        renewal_failures_total=int(metrics.get("tbot_renewal_failures_total", 0)),
        identity_expiry_seconds=metrics.get("tbot_identity_expiry_seconds"),
        identity=identity if isinstance(identity, dict) else {},
    )
