"""Agents join the cluster, heartbeat their resources, and ask the auth service to decide.

``join_host`` turns a join token into a host certificate (``POST
/webapi/host/credentials`` on the proxy). Database sessions are authorised
here, in one place, with the one access checker: the agent sends the user's
certificate and what the client asked for, and gets back a decision and, when
allowed, a short-lived certificate from the ``db_client`` CA to present to the
database.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from jumpgate.core.auth.server import AuthServer, system_role
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.resources import (
    AppServer,
    DatabaseServer,
    Token,
    parse_resource,
    resource_to_dict,
)
from jumpgate.core.tlsca import (
    CAType,
    Identity,
    cert_to_pem,
    identity_from_certificate,
    verify_certificate,
)

log = logging.getLogger(__name__)

#: Host certificates for joined agents.
HOST_CERT_TTL = timedelta(days=365)
#: Never issue a database client certificate for longer than this.
MAX_DB_CLIENT_TTL = timedelta(hours=12)


async def join_host(
    auth: AuthServer,
    *,
    token: str,
    host_id: str,
    node_name: str,
    role: str,
    public_key: bytes,
    client_addr: str = "",
) -> dict[str, Any]:
    """Exchange a join token for a host certificate for ``role`` (``Db``, ``App``, ``Node``)."""
    wanted = system_role(role)
    if not host_id or "/" in host_id:
        raise BadParameter("host_id must be a non-empty id without '/'")
    try:
        tok = await auth.store.get_as(Token, token)
    except NotFound:
        tok = None
    reason = ""
    if tok is None or tok.is_expired(auth.clock()):
        reason = "the join token is unknown or has expired"
    elif wanted not in tok.spec.roles:
        reason = (
            f"the join token does not allow role {wanted} (it allows {', '.join(tok.spec.roles)})"
        )
    hint = "create a new token with: tctl tokens add --type=" + wanted.lower()
    if not reason:
        reason = await _host_id_in_use(auth, host_id)
        hint = (
            "another agent runs under this host id; give this one its own data_dir (a new "
            "host id), or, if it is the same agent starting again, wait for the time shown"
        )
    if reason:
        auth.audit.emit(
            "instance.join",
            success=False,
            role=wanted,
            host_id=host_id,
            node_name=node_name,
            addr=client_addr,
            error=reason,
        )
        raise AccessDenied(reason, hint=hint)
    issued = auth.generate_host_cert(
        public_key=public_key,
        host_id=host_id,
        role=wanted,
        dns_names=[node_name] if node_name else [],
        ttl=HOST_CERT_TTL,
    )
    auth.audit.emit(
        "instance.join",
        role=wanted,
        host_id=host_id,
        node_name=node_name,
        addr=client_addr,
        token_expires=tok.metadata.expires.isoformat() if tok and tok.metadata.expires else None,
    )
    return {
        "cert": issued.cert_pem.decode(),
        "host_ca": issued.host_ca_pem.decode(),
        "user_ca": issued.user_ca_pem.decode(),
        "cluster_name": auth.cluster_name,
    }


async def _host_id_in_use(auth: AuthServer, host_id: str) -> str:
    """Why ``host_id`` may not join now ("" when it may): a running agent still heartbeats
    under it. A token holder must not take over another agent's sessions and records by
    joining under its id; an agent that lost its data directory picks a new id anyway,
    and one that re-joins under its own id can once its last heartbeat has expired."""
    servers: list[DatabaseServer | AppServer] = [
        *await auth.store.list_as(DatabaseServer),
        *await auth.store.list_as(AppServer),
    ]
    for res in servers:
        if res.spec.host_id == host_id:
            expires = res.metadata.expires
            until = expires.isoformat() if expires else "its next sweep"
            return (
                f"host id {host_id!r} is in use by a running agent (its heartbeat is "
                f"valid until {until})"
            )
    return ""


async def heartbeat_databases(
    auth: AuthServer, *, host_id: str, hostname: str, databases: list[dict[str, Any]], ttl: float
) -> None:
    """Record the databases an agent serves as ``db_server`` resources that expire with the TTL."""
    expires = auth.clock() + timedelta(seconds=max(5.0, min(ttl, 3600.0)))
    for db in databases:
        res = parse_resource(
            {
                "kind": "db_server",
                "version": "v3",
                "metadata": {
                    "name": db["metadata"]["name"],
                    "labels": db["metadata"].get("labels", {}),
                    "expires": expires.isoformat(),
                },
                "spec": {
                    "host_id": host_id,
                    "hostname": hostname,
                    "database": db,
                    "version": _version(),
                },
            }
        )
        await auth.store.put(res, host_id=host_id)


def _version() -> str:
    from jumpgate.core.version import VERSION

    return VERSION


async def database_servers(auth: AuthServer) -> list[DatabaseServer]:
    """Live ``db_server`` heartbeats."""
    return await auth.store.list_as(DatabaseServer)


async def list_databases(auth: AuthServer, identity: Identity) -> list[dict[str, Any]]:
    """Databases ``identity`` may see, one entry per name, with the users/names it may use."""
    checker = auth.checker_for_identity(identity)
    seen: dict[str, dict[str, Any]] = {}
    for srv in await database_servers(auth):
        db = srv.spec.database
        labels = db.all_labels()
        name = db.metadata.name
        if name in seen:
            seen[name]["hostnames"].append(srv.spec.hostname)
            continue
        if not checker.can_see_database(labels):
            continue
        allowed_users, denied_users = checker.allowed_db_users(labels)
        allowed_names, denied_names = checker.allowed_db_names(labels)
        seen[name] = {
            "name": name,
            "description": db.metadata.description,
            "protocol": db.spec.protocol,
            "uri": db.spec.uri,
            "labels": labels,
            "allowed_users": allowed_users,
            "denied_users": denied_users,
            "allowed_names": allowed_names,
            "denied_names": denied_names,
            "hostnames": [srv.spec.hostname],
        }
    return sorted(seen.values(), key=lambda d: d["name"])


def verified_user_identity(auth: AuthServer, cert_pem: bytes) -> Identity:
    """The identity in a user certificate an agent forwards for a session: signed by the
    cluster's user CA and valid now (the agents' session decisions share this check)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    verify_certificate(
        cert, auth.cas[CAType.USER].trusted_certs, now=auth.clock(), purpose="client"
    )
    return identity_from_certificate(cert)


async def start_db_session(
    auth: AuthServer,
    *,
    agent: Identity,
    identity_cert: bytes,
    db: str,
    db_user: str,
    db_name: str,
    client_addr: str,
    session_id: str,
    public_key: bytes,
) -> dict[str, Any]:
    """Decide whether a database session may start; audit it; issue the db client cert."""
    base: dict[str, Any] = {
        "sid": session_id,
        "db_service": db,
        "db_user": db_user,
        "db_name": db_name,
        "addr": client_addr,
        "server_id": agent.username,
    }
    identity: Identity | None = None
    try:
        identity = verified_user_identity(auth, identity_cert)
        base["user"] = identity.username
        base["roles"] = list(identity.groups)
        route = identity.route_to_database
        if route is None:
            raise AccessDenied(
                "the certificate is not for database access",
                hint=f"get a database certificate first: tsh db login {db}",
            )
        if route.service_name != db:
            raise AccessDenied(
                f'the certificate is for database "{route.service_name}", not "{db}"',
                hint=f"tsh db login {db}",
            )
        base["db_protocol"] = route.protocol
        auth.check_lock(identity)
        servers = [s for s in await database_servers(auth) if s.spec.database.metadata.name == db]
        if not servers:
            raise AccessDenied(f'database "{db}" is not registered (no Database Service serves it)')
        database = servers[0].spec.database
        base["db_uri"] = database.spec.uri
        decision = auth.checker_for_identity(identity).check_database(
            name=db,
            protocol=database.spec.protocol,
            labels=database.all_labels(),
            db_user=db_user,
            db_name=db_name,
        )
        if not decision.allowed:
            raise AccessDenied(f"access to database {db} denied: {decision.reason}")
    except AccessDenied as exc:
        auth.audit.emit("db.session.start", success=False, error=exc.message, **base)
        return {"allowed": False, "reason": exc.message, "hint": exc.hint or ""}
    assert identity is not None and identity.expires is not None
    now = auth.clock()
    not_after = min(identity.expires, now + MAX_DB_CLIENT_TTL)
    client_cert = auth.cas[CAType.DB_CLIENT].issue(
        public_key,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, db_user)]),
        not_after=not_after,
        client=True,
        server=False,
    )
    auth.audit.emit("db.session.start", success=True, **base)
    return {
        "allowed": True,
        "reason": "",
        "cert": cert_to_pem(client_cert).decode(),
        "db_ca": auth.ca_pem(CAType.DB).decode(),
        "user": identity.username,
        "roles": list(identity.groups),
        "expires": identity.expires.isoformat(),
    }


def lock_snapshot(auth: AuthServer) -> list[dict[str, Any]]:
    """Every lock in force, in Teleport's shape."""
    from jumpgate.core.resources import Lock

    now = auth.clock()
    return [
        resource_to_dict(lk) for lk in auth.store.cached_as(Lock).values() if not lk.is_expired(now)
    ]
