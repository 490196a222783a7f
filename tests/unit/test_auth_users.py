"""Invite links die with their user: deleting or resetting a user revokes old links."""

from __future__ import annotations

import pytest

from jumpgate.core.auth.local import invite_info
from jumpgate.core.auth.server import AuthServer
from jumpgate.core.errors import NotFound
from tests.unit.test_local_auth import FakeClock, with_auth


def test_deleting_a_user_revokes_its_invite_links() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        _, old = await auth.create_user(name="alice", roles=["access"], traits={})
        assert (await invite_info(auth, old)).user == "alice"
        await auth.delete_user("alice")
        _, new = await auth.create_user(name="alice", roles=["access"], traits={})
        with pytest.raises(NotFound):
            await invite_info(auth, old)  # a link for the old account must not open the new one
        assert (await invite_info(auth, new)).user == "alice"

    with_auth(body)


def test_revoking_leaves_other_users_links_alone() -> None:
    async def body(auth: AuthServer, clock: FakeClock) -> None:
        _, a = await auth.create_user(name="alice", roles=["access"], traits={})
        _, b = await auth.create_user(name="bob", roles=["access"], traits={})
        assert await auth.revoke_user_tokens("alice") == 1
        with pytest.raises(NotFound):
            await invite_info(auth, a)
        assert (await invite_info(auth, b)).user == "bob"

    with_auth(body)
