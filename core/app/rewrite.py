"""``rewrite.headers`` templates: ``{{internal.jwt}}`` and the user's traits.

``{{internal.jwt}}`` is the signed token of the session; ``{{internal.NAME}}``
and ``{{external.NAME}}`` are the user's trait ``NAME`` (several values are
joined with ``,``). A header whose template names a trait the user does not
have is left out, as Teleport does, and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"\{\{\s*(internal|external)\.([A-Za-z0-9_.:-]+)\s*\}\}")


class MissingTrait(Exception):
    """A template names a trait the user does not have."""


def interpolate(value: str, *, jwt: str, traits: Mapping[str, Sequence[str]]) -> str:
    """Replace every ``{{internal.x}}``/``{{external.x}}`` in ``value``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(2)
        if m.group(1) == "internal" and name == "jwt":
            return jwt
        vals = [v for v in traits.get(name, ()) if v]
        if not vals:
            raise MissingTrait(name)
        return ",".join(vals)

    return _TEMPLATE.sub(sub, value)


def render_headers(
    headers: Sequence[tuple[str, str]], *, jwt: str, traits: Mapping[str, Sequence[str]]
) -> list[tuple[str, str]]:
    """The ``rewrite.headers`` of an app with templates filled in (unfillable ones dropped)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        try:
            out.append((name, interpolate(value, jwt=jwt, traits=traits)))
        except MissingTrait as exc:
            log.info("app: header %s left out: the user has no trait %r", name, str(exc))
    return out
