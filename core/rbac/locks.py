"""Whether a lock's target covers an identity: one rule for the auth service and agents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jumpgate.core.tlsca import Identity


def lock_applies(target: Mapping[str, Any], identity: Identity) -> bool:
    """True when ``target`` (a lock's ``spec.target``) names this identity's user (or the
    user it impersonates for), one of its roles, or its bot instance."""
    user = target.get("user")
    if user and user in (identity.username, identity.impersonator):
        return True
    role = target.get("role")
    if role and role in identity.groups:
        return True
    instance = target.get("bot_instance_id")
    return bool(instance and instance == identity.bot_instance_id)
