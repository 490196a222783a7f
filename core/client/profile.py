"""Client profiles in Teleport's ``~/.tsh`` layout (``$TELEPORT_HOME``).

::

    $TELEPORT_HOME (default ~/.tsh)/
      current-profile                                   "<proxy host>\\n"
      <proxy host>.yaml                                 web_proxy_addr, user, cluster, ...
      keys/<proxy host>/<user>.key                      private key (0600)
      keys/<proxy host>/<user>.crt                      user TLS certificate
      keys/<proxy host>/cas/<cluster>.pem               host CA (verifies the proxy)
      keys/<proxy host>/<user>-db/<cluster>/<db>.crt    database certificates
      proxies/<pid>-<port>.json                         running local proxies

Every file is written atomically with mode 0600 and every directory is 0700.
This module imports only the standard library at start-up (``tsh version`` and
shell completion stay fast); PyYAML and cryptography load on first use.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.fsutil import atomic_write

if TYPE_CHECKING:
    from jumpgate.core.auth.identityfile import IdentityFile
    from jumpgate.core.tlsca import Identity

#: Default web port when ``--proxy`` names only a host (Teleport's default).
DEFAULT_WEB_PORT = 443


def default_home() -> Path:
    """``$TELEPORT_HOME`` or ``~/.tsh``."""
    env = os.environ.get("TELEPORT_HOME", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".tsh"


def normalize_proxy_addr(addr: str) -> tuple[str, int]:
    """``https://proxy:3080/`` / ``proxy:3080`` / ``proxy`` / ``[::1]:3080`` → (host, port)."""
    raw = addr.strip()
    for scheme in ("https://", "http://"):
        if raw.startswith(scheme):
            raw = raw[len(scheme) :]
    raw = raw.split("/", 1)[0]
    if not raw:
        raise BadParameter(
            "the proxy address is empty", hint="pass --proxy=HOST:PORT (the proxy's web address)"
        )
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port_s = rest.lstrip(":")
    elif raw.count(":") == 1:
        host, port_s = raw.split(":")
    elif raw.count(":") > 1:  # a bare IPv6 address
        host, port_s = raw, ""
    else:
        host, port_s = raw, ""
    try:
        port = int(port_s) if port_s else DEFAULT_WEB_PORT
    except ValueError:
        raise BadParameter(
            f"the proxy address {addr!r} has an invalid port {port_s!r}",
            hint="pass --proxy=HOST:PORT, e.g. --proxy=proxy.example.com:443",
        ) from None
    if not host or not 0 < port < 65536:
        raise BadParameter(f"invalid proxy address {addr!r}", hint="pass --proxy=HOST:PORT")
    return host, port


def join_hostport(host: str, port: int) -> str:
    """(host, port) → ``host:port`` (``[v6]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _safe_name(value: str, what: str) -> str:
    """Refuse names that would escape the profile directory."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise BadParameter(f"invalid {what} {value!r} for a file name")
    return value


def _mkdirs(path: Path, root: Path) -> None:
    """Create ``path`` and any missing parents below ``root`` (and root) with mode 0700."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p == root or p.parent == p:
            break
        p = p.parent
    if not root.parent.exists():
        # parents of TELEPORT_HOME itself are ordinary directories (e.g. ~/.config)
        root.parent.mkdir(parents=True, exist_ok=True)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
        d.chmod(0o700)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # lazily: start-up time

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _load_cert(pem: bytes) -> Any:
    from jumpgate.core.tlsca import load_certificate

    return load_certificate(pem)


@dataclass(frozen=True)
class Profile:
    """One logged-in proxy: where it is, who we are there, and the files that say so."""

    home: Path
    proxy_host: str
    proxy_port: int
    user: str
    cluster: str
    insecure: bool = False
    #: other keys of ``<proxy host>.yaml``, kept on rewrite
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ names
    @property
    def name(self) -> str:
        """Profile name: the proxy host."""
        return self.proxy_host

    @property
    def web_proxy_addr(self) -> str:
        """``host:port`` of the proxy's web port."""
        return join_hostport(self.proxy_host, self.proxy_port)

    @property
    def proxy_url(self) -> str:
        """``https://host:port``."""
        return f"https://{self.web_proxy_addr}"

    # ------------------------------------------------------------------ paths
    @property
    def yaml_path(self) -> Path:
        """``<home>/<proxy host>.yaml``."""
        return self.home / f"{self.proxy_host}.yaml"

    @property
    def key_dir(self) -> Path:
        """``<home>/keys/<proxy host>``."""
        return self.home / "keys" / self.proxy_host

    @property
    def key_path(self) -> Path:
        """The private key (also the key of every database certificate)."""
        return self.key_dir / f"{self.user}.key"

    @property
    def cert_path(self) -> Path:
        """The user TLS certificate."""
        return self.key_dir / f"{self.user}.crt"

    @property
    def ca_path(self) -> Path:
        """The cluster's host CA (verifies the proxy and the database proxy's inner TLS)."""
        return self.key_dir / "cas" / f"{self.cluster}.pem"

    @property
    def db_dir(self) -> Path:
        """``keys/<proxy host>/<user>-db/<cluster>``."""
        return self.key_dir / f"{self.user}-db" / self.cluster

    def db_cert_path(self, db: str) -> Path:
        """Where the certificate for database ``db`` lives."""
        return self.db_dir / f"{_safe_name(db, 'database name')}.crt"

    @property
    def proxies_dir(self) -> Path:
        """Status files of running local proxies."""
        return self.home / "proxies"

    # ------------------------------------------------------------------ content
    def key_pem(self) -> bytes:
        """The private key PEM."""
        return self._read(self.key_path, "private key")

    def cert_pem(self) -> bytes:
        """The user certificate PEM."""
        return self._read(self.cert_path, "certificate")

    def ca_pem(self) -> bytes:
        """The host CA PEM."""
        return self._read(self.ca_path, "cluster CA")

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"the {what} of profile {self.name} is missing ({path})",
                hint=f"log in again: tsh login --proxy={self.web_proxy_addr}",
            ) from None

    @property
    def identity(self) -> Identity:
        """The identity the user certificate asserts (roles, traits, expiry)."""
        from jumpgate.core.tlsca import identity_from_certificate

        return identity_from_certificate(_load_cert(self.cert_pem()))

    @property
    def valid_until(self) -> datetime:
        """NotAfter of the user certificate (UTC)."""
        not_after: datetime = _load_cert(self.cert_pem()).not_valid_after_utc
        return not_after

    def valid_for(self, now: datetime | None = None) -> timedelta:
        """Time left on the user certificate (negative when expired)."""
        return self.valid_until - (now or datetime.now(UTC))

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the user certificate has expired."""
        return self.valid_for(now) <= timedelta(0)

    def require_valid(self) -> None:
        """Raise AccessDenied (with the login command) when the certificate has expired."""
        if self.is_expired():
            raise AccessDenied(
                f"your certificate for {self.proxy_url} expired at "
                f"{self.valid_until:%Y-%m-%d %H:%M:%S} UTC",
                hint=f"log in again: tsh login --proxy={self.web_proxy_addr} --user={self.user}",
            )

    def identity_file(self) -> IdentityFile:
        """Key, certificate and host CA as an :class:`IdentityFile` (for ``AuthClient``)."""
        from jumpgate.core.auth.identityfile import IdentityFile

        return IdentityFile(
            key_pem=self.key_pem(), cert_pem=self.cert_pem(), ca_pems=(self.ca_pem(),)
        )

    # ------------------------------------------------------------------ databases
    def databases(self) -> list[str]:
        """Names of the databases with a certificate on disk, sorted."""
        if not self.db_dir.is_dir():
            return []
        return sorted(p.stem for p in self.db_dir.glob("*.crt"))

    def db_cert_pem(self, db: str) -> bytes | None:
        """The certificate for ``db``, or None when not logged in to it."""
        try:
            return self.db_cert_path(db).read_bytes()
        except FileNotFoundError:
            return None

    def db_identity(self, db: str) -> Identity | None:
        """The identity of the ``db`` certificate (its ``route_to_database``), or None."""
        from jumpgate.core.tlsca import identity_from_certificate

        pem = self.db_cert_pem(db)
        if pem is None:
            return None
        try:
            return identity_from_certificate(_load_cert(pem))
        except (AccessDenied, BadParameter):
            return None

    def save_db_cert(self, db: str, cert_pem: bytes) -> Path:
        """Store a database certificate (0600, atomically); return its path."""
        path = self.db_cert_path(db)
        _mkdirs(path.parent, self.home)
        atomic_write(path, cert_pem, mode=0o600)
        return path

    def remove_db_certs(self, db: str | None = None) -> list[str]:
        """Delete the certificate of ``db`` (all databases when None); return the names removed."""
        names = [db] if db is not None else self.databases()
        removed = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self.db_cert_path(name).unlink()
                removed.append(name)
        return removed

    # ------------------------------------------------------------------ yaml
    def to_yaml_dict(self) -> dict[str, Any]:
        """The ``<proxy host>.yaml`` document."""
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            web_proxy_addr=self.web_proxy_addr,
            user=self.user,
            cluster=self.cluster,
            tls_routing_enabled=True,
        )
        if self.insecure:
            doc["insecure"] = True
        else:
            doc.pop("insecure", None)
        return doc


class ProfileStore:
    """The profile directory: which proxies we are logged in to, and their credentials."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()

    @property
    def current_profile_path(self) -> Path:
        """``<home>/current-profile``."""
        return self.home / "current-profile"

    def current_name(self) -> str | None:
        """The active profile's name (proxy host), read without parsing anything else."""
        try:
            name = self.current_profile_path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        return name or None

    def get(self, name: str) -> Profile | None:
        """The profile for proxy host ``name``, or None."""
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.home / f"{name}.yaml"
        if not path.is_file():
            return None
        doc = _load_yaml(path)
        addr = str(doc.get("web_proxy_addr") or "")
        user = str(doc.get("user") or "")
        if not addr or not user:
            return None
        try:
            host, port = normalize_proxy_addr(addr)
        except BadParameter:
            return None
        known = {"web_proxy_addr", "user", "cluster", "tls_routing_enabled", "insecure"}
        return Profile(
            home=self.home,
            proxy_host=host,
            proxy_port=port,
            user=user,
            cluster=str(doc.get("cluster") or name),
            insecure=bool(doc.get("insecure", False)),
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def set_current(self, name: str) -> None:
        """Make the profile of proxy host ``name`` the active one."""
        _mkdirs(self.home, self.home)
        atomic_write(self.current_profile_path, f"{_safe_name(name, 'profile name')}\n", mode=0o600)

    def current(self) -> Profile | None:
        """The active profile, or None when not logged in."""
        name = self.current_name()
        return self.get(name) if name else None

    def require_current(self) -> Profile:
        """The active profile, or AccessDenied telling the user to log in."""
        prof = self.current()
        if prof is None:
            raise AccessDenied(
                "not logged in", hint="log in first: tsh login --proxy=HOST:PORT --user=NAME"
            )
        return prof

    def list(self) -> list[Profile]:
        """Every profile on disk, the active one first."""
        if not self.home.is_dir():
            return []
        profiles = [p for p in (self.get(f.stem) for f in sorted(self.home.glob("*.yaml"))) if p]
        cur = self.current_name()
        profiles.sort(key=lambda p: (p.name != cur, p.name))
        return profiles

    def find(self, proxy: str | None = None, user: str | None = None) -> Profile | None:
        """The profile for ``proxy`` (and ``user``), or the active one when proxy is None."""
        prof = self.get(normalize_proxy_addr(proxy)[0]) if proxy else self.current()
        if prof is not None and user and prof.user != user:
            return None
        return prof

    def save(
        self,
        *,
        proxy_addr: str,
        user: str,
        cluster: str,
        key_pem: bytes,
        cert_pem: bytes,
        ca_pem: bytes,
        insecure: bool = False,
        make_current: bool = True,
    ) -> Profile:
        """Write key, certificate, host CA and profile yaml; make it the active profile.

        Logging in as another user on the same proxy replaces the previous user's
        keys for that proxy (one user per proxy, as tsh does).
        """
        import yaml  # lazily: start-up time

        host, port = normalize_proxy_addr(proxy_addr)
        _safe_name(host, "proxy host")
        _safe_name(user, "user name")
        _safe_name(cluster, "cluster name")
        old = self.get(host)
        extra = old.extra if old is not None else {}
        prof = Profile(
            home=self.home,
            proxy_host=host,
            proxy_port=port,
            user=user,
            cluster=cluster,
            insecure=insecure,
            extra=extra,
        )
        if old is not None and old.user != user:
            shutil.rmtree(old.key_dir, ignore_errors=True)
        _mkdirs(prof.ca_path.parent, self.home)
        atomic_write(prof.key_path, key_pem, mode=0o600)
        atomic_write(prof.cert_path, cert_pem, mode=0o600)
        atomic_write(prof.ca_path, ca_pem, mode=0o600)
        atomic_write(
            prof.yaml_path, yaml.safe_dump(prof.to_yaml_dict(), sort_keys=False), mode=0o600
        )
        if make_current:
            self.set_current(host)
        return prof

    def saved_ca(self, proxy_addr: str) -> bytes | None:
        """The host CA saved for the proxy at ``proxy_addr`` (from an earlier login), or None."""
        host = normalize_proxy_addr(proxy_addr)[0]
        prof = self.get(host)
        if prof is not None and prof.ca_path.is_file():
            return prof.ca_path.read_bytes()
        cas = self.home / "keys" / host / "cas"
        if cas.is_dir():
            data = b"".join(p.read_bytes() for p in sorted(cas.glob("*.pem")))
            return data or None
        return None

    def delete(self, proxy: str | None = None, user: str | None = None) -> builtins.list[Profile]:
        """Log out: remove the key directory and yaml of one profile (the active one by default).

        With ``proxy=None`` and ``user=None`` only the active profile is removed;
        clears ``current-profile`` when it pointed at a removed profile. Returns
        the profiles removed (empty when there was nothing to remove).
        """
        prof = self.find(proxy, user)
        if prof is None:
            return []
        shutil.rmtree(prof.key_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            prof.yaml_path.unlink()
        if self.current_name() == prof.name:
            with contextlib.suppress(FileNotFoundError):
                self.current_profile_path.unlink()
        return [prof]

    # ------------------------------------------------------------------ conveniences
    def db_cert_path(self, db: str) -> Path:
        """Certificate path of ``db`` in the active profile."""
        return self.require_current().db_cert_path(db)

    def save_db_cert(self, db: str, cert_pem: bytes) -> Path:
        """Store a database certificate in the active profile."""
        return self.require_current().save_db_cert(db, cert_pem)

    def remove_db_certs(self, db: str | None = None) -> builtins.list[str]:
        """Remove database certificates from the active profile."""
        prof = self.current()
        return prof.remove_db_certs(db) if prof else []

    def identity_file(self) -> IdentityFile:
        """The active profile as an identity file."""
        return self.require_current().identity_file()


def store_from_identity_file(identity: str | os.PathLike[str], proxy_addr: str) -> ProfileStore:
    """A throw-away profile directory (0700, removed at exit) holding an identity file (``-i``).

    Every command then works as if logged in with that identity; database
    certificates obtained this way live only as long as the process.
    """
    import atexit
    import tempfile

    from cryptography.x509.oid import NameOID

    from jumpgate.core.auth.identityfile import read_identity_file
    from jumpgate.core.tlsca import load_certificate

    ident = read_identity_file(Path(identity))
    host_cas = []
    for pem in ident.ca_pems:
        ous = load_certificate(pem).subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if any(str(a.value) == "host" for a in ous):
            host_cas.append(pem)
    tmp = tempfile.mkdtemp(prefix="tsh-identity-")
    atexit.register(shutil.rmtree, tmp, True)
    store = ProfileStore(tmp)
    store.save(
        proxy_addr=proxy_addr,
        user=ident.identity.username,
        cluster=ident.cluster_name,
        key_pem=ident.key_pem,
        cert_pem=ident.cert_pem,
        ca_pem=b"".join(host_cas or ident.ca_pems),
    )
    return store
