"""One rule decides whether a lock covers an identity (auth service and agents share it)."""

from __future__ import annotations

from jumpgate.core.rbac.locks import lock_applies
from jumpgate.core.tlsca import Identity

ALICE = Identity(username="alice", groups=("access", "dev"))
BOT_OUT = Identity(
    username="bot-app", groups=("db-reader",), impersonator="bot-app", bot_instance_id="i-1"
)


def test_user_role_and_instance_targets() -> None:
    assert lock_applies({"user": "alice"}, ALICE)
    assert lock_applies({"role": "dev"}, ALICE)
    assert lock_applies({"bot_instance_id": "i-1"}, BOT_OUT)
    assert lock_applies({"user": "bot-app"}, BOT_OUT)


def test_other_targets_do_not_apply() -> None:
    assert not lock_applies({"user": "bob"}, ALICE)
    assert not lock_applies({"role": "admin"}, ALICE)
    assert not lock_applies({"bot_instance_id": "i-2"}, BOT_OUT)
    assert not lock_applies({"user": "", "role": "", "bot_instance_id": ""}, ALICE)
    assert not lock_applies({}, ALICE)
