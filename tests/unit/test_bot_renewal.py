"""Machine ID server side over a real (in-memory) AuthServer: join, renew, generations, outputs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jumpgate.core.auth import botjoin, methods_bot
from jumpgate.core.auth.api import AuthAPI
from jumpgate.core.auth.bots import create_bot, delete_bot, update_bot
from jumpgate.core.auth.server import BOT_GENERATION_LABEL, AuthServer
from jumpgate.core.backend import Item
from jumpgate.core.backend.memory import MemoryBackend
from jumpgate.core.errors import AccessDenied, BadParameter
from jumpgate.core.resources import Lock, make_role
from jumpgate.core.tlsca import (
    Identity,
    RouteToDatabase,
    generate_private_key,
    identity_from_certificate,
    public_key_to_pem,
)

NOW = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)


class FakeClock:
    """A clock tests move by hand (aware UTC)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


class YieldingBackend(MemoryBackend):
    """A MemoryBackend that yields to the event loop before reads and swaps, so that
    concurrent coroutines really interleave between read and compare-and-swap."""

    async def get(self, key: str) -> Item:
        await asyncio.sleep(0)
        item = await super().get(key)
        await asyncio.sleep(0)
        return item

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        await asyncio.sleep(0)
        return await super().compare_and_swap(expected, replace)


Body = Callable[[AuthServer, FakeClock], Awaitable[None]]


def with_auth(body: Body, *, backend_cls: type[MemoryBackend] = MemoryBackend) -> None:
    """Run ``body`` against a started AuthServer on an in-memory backend with a fake clock."""

    async def main() -> None:
        clock = FakeClock()
        backend = backend_cls(clock=clock)
        await backend.start()
        auth = AuthServer(backend, cluster_name="example.com")
        await auth.start()
        try:
            await body(auth, clock)
        finally:
            await auth.close()
            await backend.close()

    asyncio.run(main())


@dataclass
class Held:
    """A certificate and its key, as tbot holds them."""

    result: dict[str, Any]

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.result["cert"].encode())

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def identity(self) -> Identity:
        return identity_from_certificate(self.cert)


def new_key() -> bytes:
    return public_key_to_pem(generate_private_key().public_key())


async def new_bot(auth: AuthServer, name: str = "app", roles: tuple[str, ...] = ("access",)) -> str:
    created = await create_bot(auth, name=name, roles=list(roles), logins=["root"])
    return created.token_id


async def join(auth: AuthServer, token: str, **kw: Any) -> Held:
    return Held(
        await botjoin.join_bot(
            auth, token=token, public_key=new_key(), client_addr="10.0.0.9:4242", **kw
        )
    )


async def renew(auth: AuthServer, held: Held, **kw: Any) -> Held:
    return Held(
        await botjoin.renew_bot(
            auth, identity=held.identity, presented_cert_der=held.der, public_key=new_key(), **kw
        )
    )


async def output(auth: AuthServer, held: Held, **kw: Any) -> Held:
    return Held(
        await botjoin.issue_output_cert(auth, identity=held.identity, public_key=new_key(), **kw)
    )


async def labels(auth: AuthServer, user: str = "bot-app") -> dict[str, str]:
    """The bot user's labels as stored (the backend, not the cache)."""
    item = await auth.backend.get(f"/users/{user}")
    out: dict[str, str] = json.loads(item.value)["metadata"]["labels"]
    return out


async def events(auth: AuthServer, kind: str) -> list[dict[str, Any]]:
    return sorted(await auth.audit.search(types=[kind]), key=lambda e: int(e["ei"]))


# ---------------------------------------------------------------------- join
def test_join_once_then_token_is_spent() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_bot(auth)
        held = await join(auth, token)
        r = held.result
        assert set(r) == {
            "cert",
            "host_ca",
            "user_ca",
            "db_ca",
            "cluster_name",
            "generation",
            "expires",
        }
        assert r["generation"] == 1 and r["cluster_name"] == "example.com"
        assert r["expires"] == "2025-03-01T13:00:05Z"
        for k in ("host_ca", "user_ca", "db_ca"):
            assert r[k].startswith("-----BEGIN CERTIFICATE-----")
        ident = held.identity
        assert ident.username == "bot-app" and ident.groups == ("bot-app",)
        assert ident.renewable and ident.generation == 1 and ident.bot_name == "app"
        assert not ident.disallow_reissue and ident.logins == ("root",)
        lab = await labels(auth)
        assert lab[BOT_GENERATION_LABEL] == "1" and lab[botjoin.BOT_PREV_CERT_LABEL] == ""
        with pytest.raises(AccessDenied, match="unknown, already used or has expired"):
            await join(auth, token)
        assert not await auth.store.exists("token", token)
        joins = await events(auth, "bot.join")
        assert [e["success"] for e in joins] == [True, False]
        assert joins[0]["bot_name"] == "app" and joins[0]["addr"] == "10.0.0.9:4242"
        assert joins[1]["code"] == "TJ001E"
        assert token not in json.dumps(await auth.audit.search())

    with_auth(body)


def test_join_refusals() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_bot(auth)
        db_token = (await auth.create_token(roles=["db"])).metadata.name
        with pytest.raises(AccessDenied, match="not a bot token"):
            await join(auth, db_token)
        with pytest.raises(BadParameter):
            await botjoin.join_bot(auth, token=token, public_key=b"garbage", client_addr="")
        assert await auth.store.exists("token", token)  # a malformed request burns nothing
        clock.advance(hours=2)
        with pytest.raises(AccessDenied, match="expired"):
            await join(auth, token)
        # a locked bot cannot join (and keeps its token)
        token2 = await new_bot(auth, "locked")
        await auth.create_lock(target={"user": "bot-locked"}, message="no")
        with pytest.raises(AccessDenied, match="locked"):
            await join(auth, token2)
        assert await auth.store.exists("token", token2)

    with_auth(body)


def test_join_ttl_default_and_cap() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        held = await join(auth, await new_bot(auth), ttl=timedelta(hours=48))
        assert held.result["expires"] == "2025-03-02T12:00:05Z"

    with_auth(body)


def test_second_join_of_the_same_bot_is_refused() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await join(auth, await new_bot(auth))
        again = (await auth.create_token(roles=["bot"], bot_name="app")).metadata.name
        with pytest.raises(AccessDenied) as err:
            await join(auth, again)
        assert err.value.message == (
            'user "bot-app" has already been issued a renewable certificate and cannot be '
            "issued another; consider deleting and recreating the bot"
        )
        assert err.value.hint and "tctl bots rm app" in err.value.hint

    with_auth(body)


def test_concurrent_joins_with_one_token_exactly_one_wins() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_bot(auth)
        results = await asyncio.gather(
            *(join(auth, token) for _ in range(4)), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, Held)]
        lost = [r for r in results if isinstance(r, AccessDenied)]
        assert len(won) == 1 and len(lost) == 3, results
        assert (await labels(auth))[BOT_GENERATION_LABEL] == "1"

    with_auth(body, backend_cls=YieldingBackend)


# ---------------------------------------------------------------------- renewal
def test_renew_chain() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        held = await join(auth, await new_bot(auth))
        for gen in (2, 3, 4):
            clock.advance(minutes=20)
            held = await renew(auth, held, ttl=timedelta(minutes=30))
            assert held.result["generation"] == gen and held.identity.generation == gen
            assert held.identity.renewable and held.identity.groups == ("bot-app",)
            assert held.result["expires"] == botjoin._rfc3339(clock() + timedelta(minutes=30))
            lab = await labels(auth)
            assert lab[BOT_GENERATION_LABEL] == str(gen)
            assert lab[botjoin.BOT_LAST_RENEWAL_LABEL] == botjoin._rfc3339(clock())
        created = [e for e in await events(auth, "cert.create") if e.get("cert_type") == "bot"]
        assert [e["generation"] for e in created] == [2, 3, 4]

    with_auth(body)


def test_crash_after_renewal_is_idempotent_and_never_locks() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        gen1 = await join(auth, await new_bot(auth))
        lost = await renew(auth, gen1)  # the bot dies before saving this answer
        assert lost.result["generation"] == 2
        retried = await renew(auth, gen1)  # restarted with the old identity
        assert retried.result["generation"] == 2 and retried.cert != lost.cert
        again = await renew(auth, gen1)  # and once more: still idempotent
        assert again.result["generation"] == 2
        assert not await auth.store.list("lock")
        gen3 = await renew(auth, retried)  # the retried identity goes on normally
        gen4 = await renew(auth, gen3)
        assert gen4.result["generation"] == 4
        assert not await auth.store.list("lock")
        assert not await events(auth, "cert.generation_mismatch")

    with_auth(body)


def test_copied_identity_locks_the_bot() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        gen1 = await join(auth, await new_bot(auth))
        a = await renew(auth, gen1)  # copy A: 1 -> 2
        b = await renew(auth, gen1)  # copy B, same cert: idempotent 2
        assert b.result["generation"] == 2
        a = await renew(auth, a)  # A: 2 -> 3
        with pytest.raises(AccessDenied) as err:
            await renew(auth, b)  # B presents its own 2: copied identity
        assert err.value.message == "renewable cert generation mismatch: stored=3, presented=2"
        (lock,) = await auth.store.list_as(Lock)
        assert lock.spec.target.user == "bot-app"
        assert lock.spec.message == (
            'The bot user "bot-app" has been locked due to a certificate generation '
            "mismatch, possibly indicating a stolen certificate."
        )
        (mismatch,) = await events(auth, "cert.generation_mismatch")
        assert mismatch["stored_generation"] == 3 and mismatch["presented_generation"] == 2
        assert mismatch["lock"] == lock.metadata.name and mismatch["code"] == "TCB00W"
        assert await events(auth, "lock.created")
        for who in (a, b, gen1):
            with pytest.raises(AccessDenied, match="locked"):
                await renew(auth, who)
        with pytest.raises(AccessDenied, match="locked"):
            await output(auth, a)
        await auth.store.delete("lock", lock.metadata.name)  # tctl rm lock/<id>
        a = await renew(auth, a)
        assert a.result["generation"] == 4
        assert (await output(auth, a)).identity.groups == ("access",)

    with_auth(body)


def test_concurrent_renewals() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        gen1 = await join(auth, await new_bot(auth))
        # the same certificate twice at once: both get generation 2, no lock
        r1, r2 = await asyncio.gather(renew(auth, gen1), renew(auth, gen1))
        assert r1.result["generation"] == r2.result["generation"] == 2
        assert not await auth.store.list("lock")
        # two different generation-2 certificates at once: one wins, the other locks
        results = await asyncio.gather(renew(auth, r1), renew(auth, r2), return_exceptions=True)
        won = [r for r in results if isinstance(r, Held)]
        lost = [r for r in results if isinstance(r, AccessDenied)]
        assert len(won) == 1 and len(lost) == 1, results
        assert won[0].result["generation"] == 3
        assert "generation mismatch" in lost[0].message
        assert (await labels(auth))[BOT_GENERATION_LABEL] == "3"

    with_auth(body, backend_cls=YieldingBackend)


def test_recreated_bot_refuses_old_identity_without_locking() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        old = await join(auth, await new_bot(auth))
        await delete_bot(auth, "app")
        await new_bot(auth)
        with pytest.raises(AccessDenied, match="has not joined since"):
            await renew(auth, old)
        with pytest.raises(AccessDenied, match="earlier bot"):
            await output(auth, old)
        assert not await auth.store.list("lock")

    with_auth(body)


def test_join_retry_same_key_until_renewed_or_recreated() -> None:
    """A lost join answer can be asked again; nothing else gets in through a spent token."""

    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token, key = await new_bot(auth), new_key()
        first = await botjoin.join_bot(auth, token=token, public_key=key)
        again = await botjoin.join_bot(auth, token=token, public_key=key)
        assert first["generation"] == again["generation"] == 1
        assert first["cert"] != again["cert"]  # freshly issued, same key and generation
        retries = [e for e in await events(auth, "bot.join") if e.get("retry")]
        assert len(retries) == 1 and retries[0]["success"] is True
        with pytest.raises(AccessDenied, match="already used"):
            await botjoin.join_bot(auth, token=token, public_key=new_key())
        # renewed: the identity is in use, so the retry is over
        await renew(auth, Held(first))
        with pytest.raises(AccessDenied, match="already used"):
            await botjoin.join_bot(auth, token=token, public_key=key)
        # a bot deleted and created again is another bot, even at generation 1
        token2 = await new_bot(auth, name="ci")
        held = await botjoin.join_bot(auth, token=token2, public_key=key)
        await delete_bot(auth, "ci")
        await botjoin.join_bot(auth, token=await new_bot(auth, name="ci"), public_key=new_key())
        with pytest.raises(AccessDenied, match="already used"):
            await botjoin.join_bot(auth, token=token2, public_key=key)
        assert held["generation"] == 1
        # after the window, the record is gone
        token3, key3 = await new_bot(auth, name="late"), new_key()
        await botjoin.join_bot(auth, token=token3, public_key=key3)
        clock.advance(seconds=botjoin.JOIN_RETRY_WINDOW.total_seconds() + 1)
        with pytest.raises(AccessDenied, match="already used"):
            await botjoin.join_bot(auth, token=token3, public_key=key3)
        assert not await auth.store.list("lock")

    with_auth(body)


def test_only_renewable_bot_identities_renew() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        _, _ = await auth.create_user(name="alice", roles=["access"], traits={})
        issued = await auth.generate_user_cert(public_key=new_key(), username="alice")
        alice = Held({"cert": issued.cert_pem.decode()})
        with pytest.raises(AccessDenied, match="not a renewable bot identity"):
            await renew(auth, alice)
        with pytest.raises(AccessDenied, match="not a renewable bot identity"):
            await output(auth, alice)
        held = await join(auth, await new_bot(auth))
        other = await join(auth, await new_bot(auth, "other"))
        with pytest.raises(AccessDenied, match="does not match"):
            await botjoin.renew_bot(
                auth, identity=held.identity, presented_cert_der=other.der, public_key=new_key()
            )

    with_auth(body)


# ---------------------------------------------------------------------- outputs
def test_output_certificates() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        await auth.store.put(make_role("short", max_session_ttl=timedelta(minutes=10)))
        held = await join(auth, await new_bot(auth))
        out = await output(auth, held)
        assert set(out.result) == {"cert", "host_ca", "user_ca", "db_ca", "expires"}
        ident = out.identity
        assert ident.username == "bot-app" and ident.groups == ("access",)
        assert ident.impersonator == "bot-app" and ident.bot_name == "app"
        assert ident.disallow_reissue and not ident.renewable and ident.generation == 0
        assert ident.logins == ("root",) and ident.traits["logins"] == ("root",)
        # roles added with tctl bots update take effect at the next call
        await update_bot(auth, "app", add_roles=["editor", "short"])
        assert (await output(auth, held)).identity.groups == ("access", "editor", "short")
        assert (await output(auth, held, roles=["editor"])).identity.groups == ("editor",)
        with pytest.raises(AccessDenied, match=r"may not impersonate role.*auditor"):
            await output(auth, held, roles=["editor", "auditor"])
        # TTL: the roles' max_session_ttl, and never past the renewable cert
        short = await output(auth, held, roles=["short"], ttl=timedelta(hours=1))
        assert short.result["expires"] == botjoin._rfc3339(clock() + timedelta(minutes=10))
        clock.advance(minutes=50)
        capped = await output(auth, held, roles=["access"], ttl=timedelta(hours=8))
        assert capped.cert.not_valid_after_utc == held.cert.not_valid_after_utc
        db = await output(
            auth,
            held,
            route_to_database=RouteToDatabase(service_name="pg", protocol="postgres", username="u"),
        )
        assert db.identity.route_to_database == RouteToDatabase("pg", "postgres", "u")
        assert db.identity.usage == ("usage:db",)
        with pytest.raises(BadParameter, match="service_name"):
            await output(auth, held, route_to_database=RouteToDatabase("", "postgres"))
        outputs = [e for e in await events(auth, "cert.create") if e["cert_type"] == "bot-output"]
        assert "service_name" in outputs[-1]["error"]  # a refusal (audited with its reason)
        assert outputs[-2]["db_service"] == "pg" and outputs[-2]["impersonator"] == "bot-app"
        assert outputs[-2]["roles"] == ["access", "editor", "short"]

    with_auth(body)


def test_output_certs_cannot_renew_or_reissue_and_locks_apply() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        held = await join(auth, await new_bot(auth))
        out = await output(auth, held)
        with pytest.raises(AccessDenied, match="may not be used to request more"):
            await renew(auth, out)
        with pytest.raises(AccessDenied, match="may not be used to request more"):
            await output(auth, out)
        await auth.create_lock(target={"role": "access"}, message="incident")
        with pytest.raises(AccessDenied, match="locked"):
            await output(auth, held)

    with_auth(body)


# ---------------------------------------------------------------------- API and web route
def test_rpc_methods_use_the_peer_certificate() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        api = AuthAPI(auth)
        held = await join(auth, await new_bot(auth))

        async def call(method: str, der: bytes, **params: Any) -> tuple[int, dict[str, Any]]:
            async def read() -> bytes:
                return json.dumps(params).encode()

            status, data = await api.call(method, der, "127.0.0.1:1", read)
            return status, json.loads(data)

        status, data = await call("bots.renew", held.der, public_key=new_key().decode(), ttl=600)
        assert status == 200, data
        renewed = Held(data["result"])
        assert renewed.identity.generation == 2
        status, data = await call(
            "bots.output_cert",
            renewed.der,
            public_key=new_key().decode(),
            roles=[],
            route_to_database={"service_name": "pg", "protocol": "postgres"},
            route_to_app=None,
        )
        assert status == 200, data
        status, data = await call(
            "bots.output_cert", renewed.der, public_key=new_key().decode(), route_to_app={"x": "y"}
        )
        assert status == 400 and "unknown field" in data["error"]["message"]

    with_auth(body)


def test_web_join_route() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = await new_bot(auth)
        app = web.Application()
        methods_bot.register_bot_join_routes(app, auth)
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/webapi/bots/join", data=b"{not json")
            assert resp.status == 400
            resp = await client.post("/v1/webapi/bots/join", json={"token": token, "ttl": "x"})
            assert resp.status == 400
            req = {"token": token, "public_key": new_key().decode(), "join_method": "token"}
            resp = await client.post("/v1/webapi/bots/join", json={**req, "ttl": 600})
            assert resp.status == 200
            got = await resp.json()
            assert got["generation"] == 1
            # another key with the spent token is refused; the same key is a retry of a
            # join whose answer was lost, answered again while the bot is at generation 1
            resp = await client.post(
                "/webapi/bots/join", json={**req, "public_key": new_key().decode()}
            )
            assert resp.status == 403
            text = await resp.text()
            assert token not in text and "already used" in text
            resp = await client.post("/webapi/bots/join", json=req)
            assert resp.status == 200 and (await resp.json())["generation"] == 1

    with_auth(body)
