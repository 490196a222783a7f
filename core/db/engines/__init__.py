"""Database protocol engines, registered by protocol name.

Each engine serves one session that arrived through a tunnel: it checks access
with the auth service, connects to the database, and relays. Teleport's engine
shape: start the client connection, send an error in the client's wire format,
proxy the session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from jumpgate.core.errors import BadParameter

if TYPE_CHECKING:
    from jumpgate.core.config.services import Database as DatabaseConfig
    from jumpgate.core.db.service import DatabaseService
    from jumpgate.core.relay import Handshake


class Engine(Protocol):
    """What an engine provides."""

    async def serve(
        self,
        service: DatabaseService,
        db: DatabaseConfig | None,
        transport: asyncio.Transport,
        hs: Handshake,
        header: dict[str, Any],
    ) -> None:
        """Serve a session or cancel request described by ``header``."""


_ENGINES: dict[str, Engine] = {}


def register_engine(protocol: str, engine: Engine) -> None:
    """Make ``engine`` serve ``protocol``."""
    _ENGINES[protocol] = engine


def get_engine(protocol: str) -> Engine:
    """The engine for ``protocol`` (postgres and cockroachdb share one)."""
    if not _ENGINES:
        from jumpgate.core.db.engines.postgres import engine as _pg  # noqa: F401 - registers

    try:
        return _ENGINES[protocol]
    except KeyError:
        raise BadParameter(
            f"database protocol {protocol!r} is not supported by this Database Service",
            hint="supported: " + ", ".join(sorted(_ENGINES)),
        ) from None
