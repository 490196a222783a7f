"""Machine ID on the auth side: bots join with a token, renew, and get output certificates.

* :func:`join_bot` spends a single-use bot join token on the first **renewable**
  certificate (generation 1) for user ``bot-NAME``. A join whose answer was lost
  (tbot crashed, the network dropped) can be retried with the same token and the
  same public key for :data:`JOIN_RETRY_WINDOW`, as long as the bot has not renewed:
  the token stays single-use for anyone else, and the bot cannot lock itself out.
* :func:`renew_bot` trades the current renewable certificate for the next
  generation. The generation counter and the SHA-256 of the certificate that
  last renewed live in labels of the bot user; every change is a
  compare-and-swap on the stored user, so concurrent renewals serialise. The
  same certificate renewing twice (the bot crashed before saving the answer)
  gets the same generation again; anything else means a copied identity, and
  the bot user is locked.
* :func:`issue_output_cert` impersonates the bot's roles (its role's
  ``allow.impersonate.roles``, read fresh) in short, non-renewable certificates
  that cannot be used to ask for more.

The network front ends (RPCs, the proxy's join route) are in :mod:`.methods_bot`.
See docs/design/machine-id.md for the wire contracts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from jumpgate.core.auth.bots import bot_user_name
from jumpgate.core.auth.server import BOT_GENERATION_LABEL, MAX_RENEWABLE_TTL, AuthServer
from jumpgate.core.auth.store import storage_key
from jumpgate.core.backend import Item
from jumpgate.core.errors import AccessDenied, BadParameter, CompareFailed, JumpgateError, NotFound
from jumpgate.core.resources import Role, Token, parse_resource, resource_to_dict
from jumpgate.core.tlsca import (
    CAType,
    Identity,
    RouteToApp,
    RouteToDatabase,
    identity_from_certificate,
    load_public_key,
    verify_certificate,
)
from jumpgate.core.tlsca.ca import certificate_pem

log = logging.getLogger(__name__)

#: SHA-256 (hex) of the certificate that last renewed (it held the previous generation).
BOT_PREV_CERT_LABEL = "teleport.internal/bot-prev-cert"
#: RFC 3339 time of the last successful renewal (``tctl bots ls``).
BOT_LAST_RENEWAL_LABEL = "teleport.internal/bot-last-renewal"
#: Renewable and output certificates default to this TTL (Teleport: DefaultRenewableCertTTL).
DEFAULT_RENEWABLE_TTL = timedelta(hours=1)
#: Compare-and-swap attempts on the bot user before giving up.
CAS_ATTEMPTS = 8
#: Lock message on a generation mismatch (Teleport's wording).
MISMATCH_LOCK_MESSAGE = (
    'The bot user "{user}" has been locked due to a certificate generation mismatch, '
    "possibly indicating a stolen certificate."
)
_CONSUMED_LABEL = "jumpgate.internal/consumed"
#: How long a spent token still answers a retry of its own join (same key, generation 1).
JOIN_RETRY_WINDOW = timedelta(hours=1)
#: A random id of the join that set generation 1: a retry must name the same join (a
#: bot deleted and created again under the same name is a different bot).
_JOIN_ID_LABEL = "jumpgate.internal/join-id"


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _retry_key(token: str) -> str:
    """Where a spent token's join is remembered (by the token's hash, never its value)."""
    return f"/bot_join_retry/{_sha256(token)}"  # internal record, not a resource kind


def _key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (PEM spelling does not matter)."""
    from cryptography.hazmat.primitives import serialization

    der = load_public_key(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _sha256(der)


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _traits(user: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in (user.get("spec", {}).get("traits") or {}).items()}


def _renewable_ttl(ttl: timedelta | None) -> timedelta:
    ttl = ttl or DEFAULT_RENEWABLE_TTL
    if ttl <= timedelta(0):
        raise BadParameter("the requested certificate TTL must be positive", hint="pass ttl > 0")
    return min(ttl, MAX_RENEWABLE_TTL)


def _generation(labels: dict[str, str], user_name: str) -> int:
    raw = labels.get(BOT_GENERATION_LABEL, "0") or "0"
    try:
        return int(raw)
    except ValueError:
        raise BadParameter(
            f'user "{user_name}" has a malformed generation label {raw!r}',
            hint="recreate the bot: tctl bots rm NAME, then tctl bots add NAME --roles=...",
        ) from None


def _refused(auth: AuthServer, event: str, exc: JumpgateError, **fields: Any) -> None:
    """Audit a refusal with its reason (empty fields left out)."""
    auth.audit.emit(
        event, success=False, error=exc.message, **{k: v for k, v in fields.items() if v}
    )


# ----------------------------------------------------------------------------- the bot user
async def _read_user(auth: AuthServer, user_name: str) -> tuple[Item, dict[str, Any]]:
    """The bot user's stored item (authoritative, not the cache) and its decoded JSON."""
    try:
        item = await auth.backend.get(storage_key("user", user_name))
    except NotFound:
        raise AccessDenied(
            f'bot user "{user_name}" does not exist (the bot was deleted)',
            hint="create the bot again with: tctl bots add NAME --roles=...",
        ) from None
    data: dict[str, Any] = json.loads(item.value)
    data.setdefault("metadata", {}).setdefault("labels", {})
    return item, data


async def _swap_user(auth: AuthServer, item: Item, data: dict[str, Any]) -> None:
    """Write ``data`` over ``item`` iff it is unchanged (:class:`CompareFailed` otherwise)."""
    res = parse_resource(data)
    value = json.dumps(resource_to_dict(res, with_secrets=True)).encode()
    await auth.backend.compare_and_swap(item, Item(key=item.key, value=value, expires=item.expires))
    # Keep this process's user cache coherent at once (the backend watch delivers the
    # same record moments later): code that reads the user from the cache and writes it
    # back must not resurrect an older generation. With other auth processes on the
    # backend, catching up with the event log applies this write in its order (a later
    # write by another process must not be overwritten in the cache by this one).
    store = auth.store
    if store.shared:
        store.sync()
    else:
        store.cached("user")[res.metadata.name] = res
        store.generation += 1


def _issue_renewable(
    auth: AuthServer,
    *,
    name: str,
    traits: dict[str, tuple[str, ...]],
    generation: int,
    public_key: bytes,
    ttl: timedelta,
) -> dict[str, Any]:
    user_name = bot_user_name(name)
    identity = Identity(
        username=user_name,
        groups=(user_name,),
        traits=traits,
        logins=traits.get("logins", ()),
        cluster_name=auth.cluster_name,
        route_to_cluster=auth.cluster_name,
        bot_name=name,
        generation=generation,
        renewable=True,
    )
    cert = auth.cas[CAType.USER].issue(public_key, identity=identity, not_after=auth.clock() + ttl)
    out = _wire(auth, cert)
    out["cluster_name"] = auth.cluster_name
    out["generation"] = generation
    return out


def _wire(auth: AuthServer, cert: x509.Certificate) -> dict[str, Any]:
    return {
        "cert": certificate_pem(cert).decode(),
        "host_ca": auth.ca_pem(CAType.HOST).decode(),
        "user_ca": auth.ca_pem(CAType.USER).decode(),
        "db_ca": auth.ca_pem(CAType.DB).decode(),
        "expires": _rfc3339(cert.not_valid_after_utc),
    }


# ----------------------------------------------------------------------------- join
def _token_gone() -> AccessDenied:
    return AccessDenied(
        "the join token is unknown, already used or has expired",
        hint="bot tokens are single-use and expire (1h by default): create a new bot "
        "with tctl bots add NAME --roles=...",
    )


async def _consume_token(auth: AuthServer, token: str) -> None:
    """Spend ``token`` atomically: exactly one of several concurrent callers succeeds.

    The token's record is compare-and-swapped to an already expired tombstone
    (invisible to every reader at once, swept later), so a second join that read
    the token before it was spent loses the swap.
    """
    key = storage_key("token", token)
    try:
        item = await auth.backend.get(key)
    except NotFound:
        raise _token_gone() from None
    data = json.loads(item.value)
    now = auth.clock()
    meta = data.setdefault("metadata", {})
    meta["expires"] = _rfc3339(now)
    meta.setdefault("labels", {})[_CONSUMED_LABEL] = uuid.uuid4().hex
    tomb = Item(key=key, value=json.dumps(data).encode(), expires=now)
    try:
        await auth.backend.compare_and_swap(item, tomb)
    except (CompareFailed, NotFound):
        raise _token_gone() from None


async def join_bot(
    auth: AuthServer,
    *,
    token: str,
    public_key: bytes,
    ttl: timedelta | None = None,
    client_addr: str = "",
) -> dict[str, Any]:
    """Exchange a single-use bot join token for the bot's first renewable certificate.

    Returns ``{"cert", "host_ca", "user_ca", "db_ca", "cluster_name",
    "generation": 1, "expires"}`` (PEM strings, RFC 3339 expiry). Raises
    :class:`AccessDenied` for a bad, spent or expired token, a bot that already
    joined, or a locked bot; :class:`BadParameter` for a malformed key or TTL.
    Audited as ``bot.join`` either way (never with the token's value).
    """
    bot_name = ""
    try:
        load_public_key(public_key)
        ttl = _renewable_ttl(ttl)
        try:
            tok = await auth.store.get_as(Token, token) if token else None
        except NotFound:
            tok = None
        retried = False
        if tok is None or tok.is_expired(auth.clock()):
            again = await _retry_join(auth, token, public_key, ttl)
            if again is None:
                raise _token_gone()
            (bot_name, out), retried = again, True
        else:
            if "Bot" not in tok.spec.roles or not tok.spec.bot_name:
                raise AccessDenied(
                    f"the join token is not a bot token (it allows {', '.join(tok.spec.roles)})",
                    hint="create a bot and its token with: tctl bots add NAME --roles=...",
                )
            bot_name = tok.spec.bot_name
            out = await _first_join(auth, token, bot_name, public_key, ttl)
    except JumpgateError as exc:
        _refused(auth, "bot.join", exc, bot_name=bot_name, method="token", addr=client_addr)
        raise
    auth.audit.emit(
        "bot.join",
        success=True,
        bot_name=bot_name,
        user=bot_user_name(bot_name),
        method="token",
        addr=client_addr or None,
        generation=1,
        expires=out["expires"],
        retry=True if retried else None,
    )
    return out


async def _first_join(
    auth: AuthServer, token: str, bot_name: str, public_key: bytes, ttl: timedelta
) -> dict[str, Any]:
    """Spend ``token`` on generation 1 of ``bot_name`` and remember the join for a retry."""
    user_name = bot_user_name(bot_name)
    item, data = await _read_user(auth, user_name)
    already = AccessDenied(
        f'user "{user_name}" has already been issued a renewable certificate and cannot be '
        "issued another; consider deleting and recreating the bot",
        hint=f"tctl bots rm {bot_name}, then tctl bots add {bot_name} --roles=... "
        "and join with the new token",
    )
    if _generation(data["metadata"]["labels"], user_name) != 0:
        raise already
    auth.check_lock(Identity(username=user_name, groups=(user_name,), bot_name=bot_name))
    await _consume_token(auth, token)
    join_id = uuid.uuid4().hex
    for _ in range(CAS_ATTEMPTS):
        labels = data["metadata"]["labels"]
        if _generation(labels, user_name) != 0:
            raise already
        labels[BOT_GENERATION_LABEL] = "1"
        labels[BOT_PREV_CERT_LABEL] = ""
        labels[_JOIN_ID_LABEL] = join_id
        try:
            await _swap_user(auth, item, data)
            break
        except CompareFailed:
            item, data = await _read_user(auth, user_name)
    else:
        raise CompareFailed(
            f'user "{user_name}" kept changing while the bot joined', hint="try again"
        )
    retry = {
        "bot_name": bot_name,
        "key_sha256": _key_fingerprint(public_key),
        "join_id": join_id,
    }
    await auth.backend.put(
        Item(
            key=_retry_key(token),
            value=json.dumps(retry).encode(),
            expires=auth.clock() + JOIN_RETRY_WINDOW,
        )
    )
    return _issue_renewable(
        auth, name=bot_name, traits=_traits(data), generation=1, public_key=public_key, ttl=ttl
    )


async def _retry_join(
    auth: AuthServer, token: str, public_key: bytes, ttl: timedelta
) -> tuple[str, dict[str, Any]] | None:
    """Answer a retried join again: same spent token, same key, bot still at generation 1.

    None when this is not such a retry (the caller then refuses as for any spent
    token). Re-issuing is safe: the certificate is for a key only the original
    joiner holds, and the generation it carries is the one the bot already has.
    """
    if not token:
        return None
    try:
        record = json.loads((await auth.backend.get(_retry_key(token))).value)
    except NotFound:
        return None
    if record.get("key_sha256") != _key_fingerprint(public_key):
        return None
    bot_name = str(record.get("bot_name", ""))
    user_name = bot_user_name(bot_name)
    try:
        _, data = await _read_user(auth, user_name)
    except AccessDenied:
        return None
    labels = data["metadata"]["labels"]
    if labels.get(_JOIN_ID_LABEL) != record.get("join_id"):
        return None  # not the bot that joined with this token (deleted and created again)
    if _generation(labels, user_name) != 1:
        return None  # it renewed since: the identity is in use, a second copy is not
    auth.check_lock(Identity(username=user_name, groups=(user_name,), bot_name=bot_name))
    out = _issue_renewable(
        auth, name=bot_name, traits=_traits(data), generation=1, public_key=public_key, ttl=ttl
    )
    log.info("answered a retried join of bot %s (same token and key, generation 1)", bot_name)
    return bot_name, out


# ----------------------------------------------------------------------------- renewal
def _require_renewable(identity: Identity) -> str:
    """The bot name of a renewable bot identity; AccessDenied for anything else."""
    if identity.disallow_reissue:
        raise AccessDenied(
            "this certificate may not be used to request more certificates",
            hint="bot output certificates cannot renew; use the bot's own renewable identity",
        )
    name = identity.bot_name
    if not identity.renewable or not name or identity.username != bot_user_name(name):
        raise AccessDenied(
            f"{identity.username} is not a renewable bot identity",
            hint="only a bot's own certificate (from tbot's internal storage) may do this",
        )
    return name


def _check_presented(auth: AuthServer, identity: Identity, der: bytes) -> None:
    """``der`` must be the certificate ``identity`` was read from, issued by the user CA."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise AccessDenied("the presented certificate cannot be parsed") from None
    verify_certificate(cert, auth.cas[CAType.USER].trusted_certs, now=auth.clock())
    if identity_from_certificate(cert) != identity:
        raise AccessDenied("the presented certificate does not match the caller's identity")


async def renew_bot(
    auth: AuthServer,
    *,
    identity: Identity,
    presented_cert_der: bytes,
    public_key: bytes,
    ttl: timedelta | None = None,
) -> dict[str, Any]:
    """Renew a bot's renewable certificate (see the module docstring for the three cases).

    Returns the same shape as :func:`join_bot`, ``generation`` being the new one.
    """
    name = identity.bot_name or ""
    user_name = identity.username
    try:
        name = _require_renewable(identity)
        auth.check_lock(identity)
        load_public_key(public_key)
        ttl = _renewable_ttl(ttl)
        _check_presented(auth, identity, presented_cert_der)
        presented, digest = identity.generation, hashlib.sha256(presented_cert_der).hexdigest()
        for _ in range(CAS_ATTEMPTS):
            item, data = await _read_user(auth, user_name)
            labels = data["metadata"]["labels"]
            stored = _generation(labels, user_name)
            if stored == 0:
                raise AccessDenied(
                    f'bot "{name}" has not joined since it was (re)created; this certificate '
                    "belongs to an earlier bot of that name",
                    hint=f"join again with a new token: tctl bots add {name} ... (after tctl bots rm)",
                )
            if presented == stored:
                new_gen = stored + 1
                labels[BOT_GENERATION_LABEL] = str(new_gen)
                labels[BOT_PREV_CERT_LABEL] = digest
            elif presented == stored - 1 and labels.get(BOT_PREV_CERT_LABEL) == digest:
                new_gen = stored  # the same certificate renewing again: idempotent
            else:
                await _generation_mismatch(auth, name, stored, presented)
            labels[BOT_LAST_RENEWAL_LABEL] = _rfc3339(auth.clock())
            try:
                await _swap_user(auth, item, data)
                break
            except CompareFailed:
                continue
        else:
            raise CompareFailed(
                f'user "{user_name}" kept changing during the renewal', hint="try again"
            )
        traits = _traits(data)
        out = _issue_renewable(
            auth, name=name, traits=traits, generation=new_gen, public_key=public_key, ttl=ttl
        )
    except JumpgateError as exc:
        gen = identity.generation
        _refused(
            auth, "cert.create", exc, cert_type="bot", user=user_name, bot_name=name, generation=gen
        )
        raise
    auth.audit.emit(
        "cert.create",
        cert_type="bot",
        user=user_name,
        bot_name=name,
        roles=[user_name],
        generation=new_gen,
        previous_generation=presented,
        expires=out["expires"],
    )
    return out


async def _generation_mismatch(auth: AuthServer, name: str, stored: int, presented: int) -> None:
    """Lock the bot user, audit the mismatch, and refuse (always raises)."""
    user_name = bot_user_name(name)
    lock = await auth.create_lock(
        target={"user": user_name},
        message=MISMATCH_LOCK_MESSAGE.format(user=user_name),
        creator="jumpgate-auth",
    )
    auth.audit.emit(
        "cert.generation_mismatch",
        success=False,
        user=user_name,
        bot_name=name,
        stored_generation=stored,
        presented_generation=presented,
        lock=lock.metadata.name,
    )
    log.warning(
        "bot %s: generation mismatch (stored=%d, presented=%d), locked", name, stored, presented
    )
    raise AccessDenied(
        f"renewable cert generation mismatch: stored={stored}, presented={presented}",
        hint=f"the bot identity may have been copied; bot user {user_name} is now locked. "
        f"Investigate, then lift the lock (tctl rm lock/{lock.metadata.name}) or recreate "
        f"the bot (tctl bots rm {name} && tctl bots add {name} ...)",
    )


# ----------------------------------------------------------------------------- outputs
async def issue_output_cert(
    auth: AuthServer,
    *,
    identity: Identity,
    public_key: bytes,
    ttl: timedelta | None = None,
    roles: Sequence[str] = (),
    route_to_database: RouteToDatabase | None = None,
    route_to_app: RouteToApp | None = None,
) -> dict[str, Any]:
    """A non-renewable certificate impersonating the bot's roles (all, or ``roles``).

    Returns ``{"cert", "host_ca", "user_ca", "db_ca", "expires"}``.
    """
    name = identity.bot_name
    user_name = identity.username
    granted: list[str] = []
    try:
        name = _require_renewable(identity)
        auth.check_lock(identity)
        load_public_key(public_key)
        if route_to_database is not None and not route_to_database.service_name:
            raise BadParameter(
                "route_to_database needs service_name", hint="name the database resource"
            )
        if route_to_app is not None and not route_to_app.name:
            raise BadParameter("route_to_app needs name", hint="name the application resource")
        try:
            bot_role = await auth.store.get_as(Role, user_name)
        except NotFound:
            raise AccessDenied(
                f'bot "{name}" no longer exists', hint=f"tctl bots add {name} --roles=..."
            ) from None
        _, user = await _read_user(auth, user_name)
        if _generation(user["metadata"]["labels"], user_name) < identity.generation:
            raise AccessDenied(
                f"this certificate belongs to an earlier bot named {name!r}",
                hint="join the bot again with a new token",
            )
        imp = bot_role.spec.allow.impersonate
        allowed = list(imp.roles) if imp is not None else []
        wanted = list(dict.fromkeys(roles)) if roles else allowed
        outside = [r for r in wanted if r not in allowed]
        if outside:
            raise AccessDenied(
                f"bot {name!r} may not impersonate role(s) {', '.join(outside)} "
                f"(it may impersonate: {', '.join(allowed) or 'none'})",
                hint=f"tctl bots update {name} --add-roles={','.join(outside)}",
            )
        if not wanted:
            raise AccessDenied(
                f"bot {name!r} has no roles to impersonate",
                hint=f"tctl bots update {name} --add-roles=ROLE",
            )
        known = auth.store.cached("role")
        missing = [r for r in wanted if r not in known]
        if missing:
            raise BadParameter(
                f"role(s) {', '.join(missing)} of bot {name!r} no longer exist",
                hint=f"tctl bots update {name} --set-roles=...",
            )
        granted = wanted
        traits = _traits(user)
        now = auth.clock()
        life = ttl or DEFAULT_RENEWABLE_TTL
        if life <= timedelta(0):
            raise BadParameter("the requested certificate TTL must be positive")
        max_ttl = auth.checker_for(granted, traits).max_session_ttl()
        if max_ttl > timedelta(0):
            life = min(life, max_ttl)
        not_after = now + life
        if identity.expires is not None:
            not_after = min(not_after, identity.expires)
        if not_after <= now:
            raise AccessDenied("the bot's certificate has expired", hint="renew it first")
        if route_to_app is not None:
            route_to_app = RouteToApp(
                name=route_to_app.name,
                public_addr=route_to_app.public_addr,
                cluster_name=route_to_app.cluster_name or auth.cluster_name,
                session_id=route_to_app.session_id or str(uuid.uuid4()),
            )
        out_ident = Identity(
            username=user_name,
            groups=tuple(granted),
            traits=traits,
            usage=("usage:db",) if route_to_database else ("usage:apps",) if route_to_app else (),
            logins=traits.get("logins", ()),
            cluster_name=auth.cluster_name,
            route_to_cluster=auth.cluster_name,
            route_to_database=route_to_database,
            route_to_app=route_to_app,
            bot_name=name,
            impersonator=user_name,
            disallow_reissue=True,
        )
        auth.check_lock(out_ident)
        cert = auth.cas[CAType.USER].issue(public_key, identity=out_ident, not_after=not_after)
    except JumpgateError as exc:
        asked = list(roles) or granted
        _refused(
            auth,
            "cert.create",
            exc,
            cert_type="bot-output",
            user=user_name,
            bot_name=name,
            roles=asked,
        )
        raise
    out = _wire(auth, cert)
    auth.audit.emit(
        "cert.create",
        cert_type="bot-output",
        user=user_name,
        bot_name=name,
        impersonator=user_name,
        roles=granted,
        db_service=route_to_database.service_name if route_to_database else None,
        db_user=route_to_database.username if route_to_database else None,
        db_name=route_to_database.database if route_to_database else None,
        app_name=route_to_app.name if route_to_app else None,
        expires=out["expires"],
    )
    return out
