"""Agents joining with a token: a host id a running agent still heartbeats under is refused."""

from __future__ import annotations

import pytest

from jumpgate.core.auth import hosts
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import AccessDenied
from jumpgate.core.tlsca import generate_private_key, public_key_to_pem
from tests.unit.test_local_auth import FakeClock, events, with_auth

DB = {
    "kind": "db",
    "version": "v3",
    "metadata": {"name": "pg"},
    "spec": {"protocol": "postgres", "uri": "localhost:5432"},
}


def key() -> bytes:
    return public_key_to_pem(generate_private_key().public_key())


async def join(auth: AuthServer, token: str, host_id: str) -> dict[str, object]:
    return await hosts.join_host(
        auth, token=token, host_id=host_id, node_name="n", role="Db", public_key=key()
    )


def test_a_running_agents_host_id_cannot_be_taken_over() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        token = (await auth.create_token(roles=["Db"])).metadata.name
        await join(auth, token, "agent-1")  # the first agent
        await hosts.heartbeat_databases(
            auth, host_id="agent-1", hostname="n", databases=[DB], ttl=60
        )
        with pytest.raises(AccessDenied, match="in use by a running agent") as exc:
            await join(auth, token, "agent-1")  # someone else with the (reusable) token
        assert exc.value.hint and "data_dir" in exc.value.hint
        refused = [e for e in await events(auth, "instance.join") if e.get("success") is False]
        assert refused and refused[-1]["host_id"] == "agent-1"
        await join(auth, token, "agent-2")  # another id joins fine
        clock.advance(seconds=61)  # the first agent's heartbeat has expired
        await auth.backend.sweep()
        await join(auth, token, "agent-1")  # the same agent starting again, later

    with_auth(body)
