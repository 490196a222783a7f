"""The auth service: certificate authorities, identities, users, bots, tokens and locks.

``AuthServer`` holds the business rules; :mod:`jumpgate.core.auth.api` puts it on
the network behind mutual TLS and RBAC. Everything it knows lives in the backend,
so several auth processes can share one cluster state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from jumpgate.core.audit import AuditLog
from jumpgate.core.auth.store import ResourceStore
from jumpgate.core.backend import Backend
from jumpgate.core.durations import format_duration
from jumpgate.core.errors import AccessDenied, AlreadyExists, BadParameter, ConfigError, NotFound
from jumpgate.core.rbac import AccessChecker
from jumpgate.core.rbac.locks import lock_applies
from jumpgate.core.resources import CertAuthority as CAResource
from jumpgate.core.resources import (
    ClusterName,
    Lock,
    Resource,
    Role,
    User,
    parse_resource,
    preset_roles,
    resource_to_dict,
)
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    Identity,
    RouteToApp,
    RouteToDatabase,
    load_public_key,
)
from jumpgate.core.tlsca.ca import certificate_pem

log = logging.getLogger(__name__)

#: The server name every internal TLS client expects on the auth service's certificate.
API_DOMAIN = "teleport.cluster.local"
#: Default TTL of a join token from ``tctl tokens add`` (Teleport: 30m).
DEFAULT_TOKEN_TTL = timedelta(minutes=30)
#: Default TTL of a bot join token (Teleport: DefaultBotJoinTTL = 1h).
DEFAULT_BOT_TOKEN_TTL = timedelta(hours=1)
#: Default TTL of a user invite link.
DEFAULT_INVITE_TTL = timedelta(hours=1)
#: Default user certificate TTL (Teleport: apidefaults.CertDuration = 12h).
DEFAULT_CERT_TTL = timedelta(hours=12)
#: Renewable (bot) certificates may not live longer (Teleport: MaxRenewableCertTTL).
MAX_RENEWABLE_TTL = timedelta(hours=24)

SYSTEM_ROLES = {
    "auth": "Auth",
    "proxy": "Proxy",
    "node": "Node",
    "db": "Db",
    "app": "App",
    "bot": "Bot",
    "admin": "Admin",
    "kube": "Kube",
    "windowsdesktop": "WindowsDesktop",
    "discovery": "Discovery",
    "instance": "Instance",
    "trusted_cluster": "Trusted_cluster",
}
ADMIN_ROLE = "Admin"
BOT_LABEL = "teleport.internal/bot"
BOT_GENERATION_LABEL = "teleport.internal/bot-generation"


def system_role(name: str) -> str:
    """Teleport's spelling of a system role given in any case (``db`` → ``Db``)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "trustedcluster":
        key = "trusted_cluster"
    if key not in SYSTEM_ROLES:
        raise BadParameter(
            f"unknown token type {name!r}",
            hint="use one of: " + ", ".join(sorted(SYSTEM_ROLES)),
        )
    return SYSTEM_ROLES[key]


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the auth service signed, with the CA certificates a client needs."""

    cert_pem: bytes
    identity: Identity
    host_ca_pem: bytes
    user_ca_pem: bytes
    db_ca_pem: bytes
    db_client_ca_pem: bytes

    def to_wire(self) -> dict[str, str]:
        """JSON form for the API."""
        return {
            "cert": self.cert_pem.decode(),
            "host_ca": self.host_ca_pem.decode(),
            "user_ca": self.user_ca_pem.decode(),
            "db_ca": self.db_ca_pem.decode(),
            "db_client_ca": self.db_client_ca_pem.decode(),
        }


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class AuthServer:
    """Cluster authority. Create it, then ``await start()``."""

    def __init__(
        self,
        backend: Backend,
        *,
        cluster_name: str,
        clock: Callable[[], datetime] | None = None,
        second_factor: str = "off",
        proxy_public_addr: str = "",
        host_uuid: str = "",
    ) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.clock = clock or backend.clock
        self.second_factor = second_factor
        self.proxy_public_addr = proxy_public_addr
        self.host_uuid = host_uuid or str(uuid.uuid4())
        self.store = ResourceStore(backend, self.clock)
        self.audit = AuditLog(backend, cluster_name, clock=self.clock)
        self.cas: dict[CAType, CertAuthority] = {}
        self._checkers: dict[tuple[Any, ...], AccessChecker] = {}
        self._checkers_gen = -1
        self._lock_changed: asyncio.Event | None = None  # set when the locks change
        self._closing = False  # wake_long_polls: long-polls return at once

    # ------------------------------------------------------------------ start-up
    async def start(self, *, load_only: bool = False) -> None:
        """First start: record the cluster name, generate the CAs, create preset roles.

        ``load_only`` (an auth worker, the daemon prepared the backend): load the CAs
        and the cache only; never re-create a preset role an admin deleted since, nor
        rewrite the auth preference.
        """
        await self._ensure_cluster_name()
        self.store.on_change(self._on_change)
        await self.store.start()
        await self._ensure_cas()
        if load_only:
            return
        for role in preset_roles():
            if not await self.store.exists("role", role.metadata.name):
                await self.store.put(role, create=False)
        await self._ensure_auth_preference()

    def _on_change(self, kind: str, name: str, res: Resource | None) -> None:
        if kind != "lock":
            return
        self._wake()

    def _wake(self) -> None:
        if self._lock_changed is not None:
            self._lock_changed.set()
            self._lock_changed = None

    @property
    def lock_generation(self) -> int:
        """A fingerprint of the locks in force (the same in every auth process).

        Agents long-poll ``locks.watch`` with the last one they saw; it is derived from
        the lock set itself, not counted per process, so any process can compare it.
        """
        locks = self.store.cached_as(Lock)
        h = hashlib.sha256()
        for name in sorted(locks):
            h.update(json.dumps(resource_to_dict(locks[name]), sort_keys=True).encode())
            h.update(b"\0")
        return int.from_bytes(h.digest()[:6], "big")

    async def wait_lock_change(self, generation: int, timeout: float) -> int:
        """Return the lock fingerprint once it differs from ``generation`` (or after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = self.lock_generation
        while current == generation and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                break
            if self._lock_changed is None:
                self._lock_changed = asyncio.Event()
            event = self._lock_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
            current = self.lock_generation
        return current

    def wake_long_polls(self) -> None:
        """Let every waiting ``locks.watch`` call return now (shutdown)."""
        self._closing = True
        self._wake()

    async def close(self) -> None:
        """Flush the audit log and stop background work (long-polls return at once)."""
        self.wake_long_polls()
        await self.audit.close()
        await self.store.close()

    async def _ensure_cluster_name(self) -> None:
        try:
            existing = await self.store.get_as(ClusterName, "cluster-name")
        except NotFound:
            res = parse_resource(
                {
                    "kind": "cluster_name",
                    "version": "v2",
                    "metadata": {"name": "cluster-name"},
                    "spec": {"cluster_name": self.cluster_name, "cluster_id": str(uuid.uuid4())},
                }
            )
            await self.store.put(res, create=True)
            return
        stored = existing.spec.cluster_name
        if stored != self.cluster_name:
            raise ConfigError(
                f'this data directory belongs to cluster "{stored}", but the configuration '
                f'says cluster_name "{self.cluster_name}"',
                hint="the cluster name cannot change after the first start: restore "
                f'auth_service.cluster_name to "{stored}" or use a new data_dir',
            )

    async def _ensure_auth_preference(self) -> None:
        res = parse_resource(
            {
                "kind": "cluster_auth_preference",
                "version": "v2",
                "metadata": {"name": "cluster-auth-preference"},
                "spec": {"type": "local", "second_factor": self.second_factor},
            }
        )
        await self.store.put(res)

    async def _ensure_cas(self) -> None:
        for ca_type in CAType:
            name = f"{ca_type.value}/{self.cluster_name}"
            try:
                res = await self.store.get("cert_authority", name)
            except NotFound:
                ca = CertAuthority.generate(ca_type, self.cluster_name, clock=self.clock)
                res = parse_resource(self._ca_resource(ca, name))
                try:
                    await self.store.put(res, create=True)
                except AlreadyExists:  # another auth process won the race
                    res = await self.store.get("cert_authority", name)
                else:
                    log.info("generated the %s certificate authority", ca_type.value)
            self.cas[ca_type] = self._ca_from_resource(ca_type, res)

    def _ca_resource(self, ca: CertAuthority, name: str) -> dict[str, Any]:
        return {
            "kind": "cert_authority",
            "version": "v2",
            "metadata": {"name": name},
            "spec": {
                "type": ca.ca_type.value,
                "cluster_name": self.cluster_name,
                "active_keys": {
                    "tls": [{"cert": ca.cert_pem.decode(), "key": ca.key_pem.decode()}]
                },
            },
        }

    def _ca_from_resource(self, ca_type: CAType, res: Resource) -> CertAuthority:
        assert isinstance(res, CAResource)
        tls = res.spec.active_keys.tls[0]
        key = tls.key
        return CertAuthority.from_pem(
            ca_type,
            self.cluster_name,
            tls.cert.encode() if isinstance(tls.cert, str) else tls.cert,
            (key.encode() if isinstance(key, str) else key) if key else None,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ CAs
    def ca_pem(self, ca_type: CAType) -> bytes:
        """PEM of every trusted certificate of one CA (cached by the CA object, so a
        CA replaced in ``self.cas`` is picked up at once)."""
        return self.cas[ca_type].trusted_pem

    def ca_pin(self) -> str:
        """``sha256:…`` pin of the host CA, as ``tctl status`` prints it."""
        return self.cas[CAType.HOST].pin()

    def _issued(self, cert: x509.Certificate, identity: Identity) -> IssuedCert:
        return IssuedCert(
            cert_pem=certificate_pem(cert),
            identity=identity,
            host_ca_pem=self.ca_pem(CAType.HOST),
            user_ca_pem=self.ca_pem(CAType.USER),
            db_ca_pem=self.ca_pem(CAType.DB),
            db_client_ca_pem=self.ca_pem(CAType.DB_CLIENT),
        )

    # ------------------------------------------------------------------ access
    def checker_for(
        self, roles: Sequence[str], traits: Mapping[str, Sequence[str]]
    ) -> AccessChecker:
        """An access checker for a set of role names and traits (cached until roles change)."""
        self.store.sync()  # with auth workers: roles changed elsewhere count
        if self._checkers_gen != self.store.generation:
            self._checkers.clear()
            self._checkers_gen = self.store.generation
        key = (tuple(roles), tuple(sorted((k, tuple(v)) for k, v in traits.items())))
        checker = self._checkers.get(key)
        if checker is None:
            known = self.store.cached_as(Role)
            missing = [r for r in roles if r not in known]
            if missing:
                log.warning("identity names roles that no longer exist: %s", ", ".join(missing))
            checker = AccessChecker([known[r] for r in roles if r in known], traits)
            self._checkers[key] = checker
        return checker

    def checker_for_identity(self, identity: Identity) -> AccessChecker:
        """The checker for the roles and traits a certificate carries."""
        return self.checker_for(identity.groups, identity.traits)

    def find_lock(self, identity: Identity) -> Lock | None:
        """The first live lock that targets this identity's user, roles or bot, if any."""
        now = self.clock()
        for lock in self.store.cached_as(Lock).values():
            if lock.is_expired(now):
                continue
            if lock_applies(lock.spec.target.model_dump(), identity):
                return lock
        return None

    def check_lock(self, identity: Identity) -> None:
        """Raise :class:`AccessDenied` when a lock targets ``identity``."""
        lock = self.find_lock(identity)
        if lock is not None:
            msg = lock.spec.message or "no message"
            raise AccessDenied(
                f'{identity.username} is locked: "{msg}" (lock {lock.metadata.name})',
                hint=f"an administrator can lift it with: tctl rm lock/{lock.metadata.name}",
            )

    # ------------------------------------------------------------------ certificates
    def _cap_ttl(
        self, ttl: timedelta | None, checker: AccessChecker, *, strict: bool = False
    ) -> timedelta:
        ttl = ttl or DEFAULT_CERT_TTL
        if ttl <= timedelta(0):
            raise BadParameter("the requested certificate TTL must be positive")
        max_ttl = checker.max_session_ttl()
        if strict and max_ttl > timedelta(0) and ttl > max_ttl:
            raise BadParameter(
                f"The credential was not issued because the requested TTL of {format_duration(ttl)} "
                f"exceeded the maximum allowed value of {format_duration(max_ttl)}",
                hint="ask for a shorter --ttl, or raise options.max_session_ttl in the user's roles",
            )
        return min(ttl, max_ttl) if max_ttl > timedelta(0) else ttl

    async def generate_user_cert(
        self,
        *,
        public_key: bytes,
        username: str,
        ttl: timedelta | None = None,
        route_to_database: RouteToDatabase | None = None,
        route_to_app: RouteToApp | None = None,
        roles: Sequence[str] | None = None,
        requester: Identity | None = None,
        login_ip: str = "",
        strict_ttl: bool = False,
    ) -> IssuedCert:
        """Sign a user certificate for ``username`` with the user CA.

        ``roles`` restricts the certificate to a subset of the user's roles (or, for
        bots, names the impersonated roles). ``requester`` is the caller, recorded
        as impersonator when it differs from ``username``.
        """
        user = await self.store.get_as(User, username)
        traits = {k: list(v) for k, v in (user.spec.traits or {}).items()}
        user_roles = list(user.spec.roles)
        granted = user_roles
        impersonator = ""
        if requester is not None and requester.username != username:
            impersonator = requester.username
        if roles:
            wanted = list(dict.fromkeys(roles))
            outside = [r for r in wanted if r not in user_roles]
            if outside:
                raise AccessDenied(
                    f"user {username!r} does not hold the role(s) {', '.join(outside)}"
                )
            granted = wanted
        checker = self.checker_for(granted, traits)
        ttl = self._cap_ttl(ttl, checker, strict=strict_ttl)
        now = self.clock()
        identity = Identity(
            username=username,
            groups=tuple(granted),
            traits={k: tuple(v) for k, v in traits.items()},
            usage=("usage:db",) if route_to_database else ("usage:apps",) if route_to_app else (),
            logins=tuple(traits.get("logins", ())),
            cluster_name=self.cluster_name,
            route_to_cluster=self.cluster_name,
            route_to_database=route_to_database,
            route_to_app=route_to_app,
            impersonator=impersonator,
            login_ip=login_ip,
        )
        self.check_lock(identity)
        cert = self.cas[CAType.USER].issue(public_key, identity=identity, not_after=now + ttl)
        self.audit.emit(
            "cert.create",
            cert_type="user",
            user=username,
            roles=list(granted),
            impersonator=impersonator or None,
            db_service=route_to_database.service_name if route_to_database else None,
            db_user=route_to_database.username if route_to_database else None,
            db_name=route_to_database.database if route_to_database else None,
            app_name=route_to_app.name if route_to_app else None,
            expires=_iso(now + ttl),
        )
        return self._issued(cert, identity)

    def generate_host_cert(
        self,
        *,
        public_key: bytes,
        host_id: str,
        role: str,
        dns_names: Sequence[str] = (),
        ttl: timedelta = timedelta(days=365),
    ) -> IssuedCert:
        """Sign a host certificate (auth, proxy, agents, the local admin) with the host CA."""
        identity = Identity(
            username=host_id,
            groups=(role,),
            system_role=role,
            cluster_name=self.cluster_name,
        )
        cert = self.cas[CAType.HOST].issue(
            public_key,
            identity=identity,
            not_after=self.clock() + ttl,
            dns_names=[API_DOMAIN, *dns_names],
            server=True,
            client=True,
        )
        return self._issued(cert, identity)

    def generate_database_server_cert(
        self, *, public_key: bytes, hosts: Sequence[str], ttl: timedelta, requester: str = ""
    ) -> IssuedCert:
        """Sign a database server certificate (``tctl auth sign --format=db``) with the db CA."""
        hosts = [h.strip() for h in hosts if h.strip()]
        if not hosts:
            raise BadParameter(
                "at least one hostname must be specified", hint="pass --host=db.example.com"
            )
        load_public_key(public_key)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_name),
            ]
        )
        cert = self.cas[CAType.DB].issue(
            public_key,
            subject=subject,
            not_after=self.clock() + ttl,
            dns_names=hosts,
            server=True,
            client=True,
        )
        self.audit.emit(
            "cert.create",
            cert_type="db_server",
            hosts=hosts,
            user=requester or None,
            ttl=int(ttl.total_seconds()),
        )
        return self._issued(cert, Identity(username=hosts[0]))

    # ------------------------------------------------------------------ tokens
    async def create_token(
        self,
        *,
        roles: Sequence[str],
        ttl: timedelta | None = None,
        value: str = "",
        labels: Mapping[str, str] | None = None,
        bot_name: str = "",
        creator: str = "",
    ) -> Resource:
        """Create a join token; the token's name is its secret value."""
        sys_roles = [system_role(r) for r in roles]
        if "Admin" in sys_roles:
            raise BadParameter("join tokens cannot grant the Admin role")
        if "Bot" in sys_roles and not bot_name:
            raise BadParameter(
                "bot join tokens belong to a bot",
                hint="create the bot and its token with: tctl bots add NAME --roles=...",
            )
        if not sys_roles:
            raise BadParameter(
                "a token needs at least one type", hint="pass --type=db (or app, node, bot)"
            )
        ttl = ttl or DEFAULT_TOKEN_TTL
        if ttl <= timedelta(0):
            raise BadParameter("--ttl must be positive")
        value = value or secrets.token_hex(16)
        expires = self.clock() + ttl
        spec: dict[str, Any] = {"roles": sys_roles, "join_method": "token"}
        if bot_name:
            spec["bot_name"] = bot_name
        res = parse_resource(
            {
                "kind": "token",
                "version": "v2",
                "metadata": {"name": value, "labels": dict(labels or {}), "expires": _iso(expires)},
                "spec": spec,
            }
        )
        try:
            await self.store.put(res, create=True)
        except AlreadyExists:
            raise AlreadyExists(
                f"failed to create token ({value!r} already exists), please use another name"
            ) from None
        self.audit.emit(
            "join_token.create", roles=sys_roles, user=creator or None, bot_name=bot_name or None
        )
        return res

    # ------------------------------------------------------------------ users
    async def _check_roles_exist(self, roles: Sequence[str]) -> None:
        known = self.store.cached("role")
        missing = [r for r in roles if r not in known]
        if missing:
            raise BadParameter(
                f"role(s) {', '.join(repr(r) for r in missing)} not found",
                hint="list roles with: tctl get roles",
            )

    async def create_user(
        self,
        *,
        name: str,
        roles: Sequence[str],
        traits: Mapping[str, Sequence[str]],
        invite_ttl: timedelta | None = None,
        creator: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> tuple[Resource, str]:
        """Create a local user and a single-use invite token for setting the password."""
        if not name or "/" in name:
            raise BadParameter(f"invalid user name {name!r}")
        await self._check_roles_exist(roles)
        res = parse_resource(
            {
                "kind": "user",
                "version": "v2",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": {
                    "roles": list(roles),
                    "traits": {k: list(v) for k, v in traits.items()},
                    "created_by": {"user": {"name": creator}, "time": _iso(self.clock())}
                    if creator
                    else {},
                },
            }
        )
        try:
            await self.store.put(res, create=True)
        except AlreadyExists:
            raise AlreadyExists(
                f'user "{name}" already exists',
                hint=f"to update an existing local user: tctl users update {name} --set-roles ...",
            ) from None
        self.audit.emit("user.create", user=creator or None, name=name, roles=list(roles))
        token = await self.create_invite(name, ttl=invite_ttl or DEFAULT_INVITE_TTL)
        return res, token

    async def create_invite(self, username: str, *, ttl: timedelta) -> str:
        """A single-use, expiring token that lets ``username`` set a password."""
        token = secrets.token_hex(16)
        expires = self.clock() + ttl
        await self.store.put_raw(
            f"/usertokens/{token}",
            {
                "user": username,
                "kind": "invite",
                "created": _iso(self.clock()),
                "expires": _iso(expires),
            },
            expires=expires,
        )
        return token

    async def revoke_user_tokens(self, username: str) -> int:
        """Invalidate every outstanding invite/reset link of ``username``."""
        import json

        from jumpgate.core.backend import prefix_end

        gone = 0
        for item in await self.backend.get_range("/usertokens/", prefix_end("/usertokens/")):
            try:
                owner = json.loads(item.value).get("user")
            except ValueError:
                continue
            if owner == username:
                with contextlib.suppress(NotFound):
                    await self.backend.delete(item.key)
                    gone += 1
        return gone

    def invite_url(self, token: str) -> str:
        """``https://<proxy public addr>/web/invite/<token>``."""
        return f"https://{self.proxy_public_addr}/web/invite/{token}"

    async def update_user(
        self,
        name: str,
        *,
        roles: Sequence[str] | None = None,
        traits: Mapping[str, Sequence[str]] | None = None,
        updater: str = "",
    ) -> Resource:
        """Replace a user's roles and/or some of its traits.

        A compare-and-swap on the stored record: a concurrent write (a bot's renewal
        moving its generation label, through any auth process) is kept, not overwritten.
        """
        if roles is not None:
            await self._check_roles_exist(roles)

        def change(data: dict[str, Any]) -> dict[str, Any]:
            if roles is not None:
                data["spec"]["roles"] = list(roles)
            if traits:
                data["spec"].setdefault("traits", {}).update(
                    {k: list(v) for k, v in traits.items()}
                )
            return data

        res = await self.store.mutate("user", name, change)
        self.audit.emit("user.update", user=updater or None, name=name, roles=res.roles)  # type: ignore[attr-defined]
        return res

    async def delete_user(self, name: str, *, deleter: str = "") -> None:
        """Delete a user (and its password)."""
        user = await self.store.get("user", name)
        if user.metadata.labels.get(BOT_LABEL):
            raise BadParameter(
                f'user "{name}" belongs to bot "{user.metadata.labels[BOT_LABEL]}"',
                hint=f"remove the bot instead: tctl bots rm {user.metadata.labels[BOT_LABEL]}",
            )
        await self.store.delete("user", name)
        await self.revoke_user_tokens(name)
        with contextlib.suppress(NotFound):
            await self.backend.delete(f"/web/users/{name}/pwd")
        self.audit.emit("user.delete", user=deleter or None, name=name)

    @staticmethod
    def _dict(res: Resource) -> dict[str, Any]:
        from jumpgate.core.resources import resource_to_dict

        return resource_to_dict(res, with_secrets=True)

    # ------------------------------------------------------------------ locks
    async def create_lock(
        self,
        *,
        target: Mapping[str, str],
        message: str = "",
        expires: datetime | None = None,
        creator: str = "",
    ) -> Resource:
        """Lock a user, role or bot instance out of the cluster (live sessions end too)."""
        target = {k: v for k, v in target.items() if v}
        if not target:
            raise BadParameter("a lock needs a target", hint="pass --user, --role or --bot")
        name = str(uuid.uuid4())
        spec: dict[str, Any] = {
            "target": dict(target),
            "message": message,
            "created_by": creator,
            "created_at": _iso(self.clock()),
        }
        metadata: dict[str, Any] = {"name": name}
        if expires is not None:
            if expires <= self.clock():
                raise BadParameter(
                    "the lock would already be expired",
                    hint="use a future --expires or a positive --ttl",
                )
            spec["expires"] = _iso(expires)
            metadata["expires"] = _iso(expires)
        res = parse_resource({"kind": "lock", "version": "v2", "metadata": metadata, "spec": spec})
        await self.store.put(res, create=True)
        self.audit.emit(
            "lock.created", user=creator or None, name=name, target=dict(target), message=message
        )
        return res
