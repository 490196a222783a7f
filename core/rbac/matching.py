"""String and label matching, as Teleport's ``utils.MatchString`` and ``services.MatchLabels``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

WILDCARD = "*"


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str] | None:
    """Regex for a pattern: ``^...$`` is a regex as written; otherwise a ``*`` glob."""
    if pattern.startswith("^") and pattern.endswith("$"):
        expr = pattern
    else:
        expr = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    try:
        return re.compile(expr)
    except re.error:
        return None


def match_string(pattern: str, value: str) -> bool:
    """True when ``value`` matches ``pattern``.

    ``*`` matches anything; ``^...$`` is a full regular expression; anything else is
    a glob in which ``*`` matches any run of characters and the rest is literal.
    An invalid regular expression matches nothing.
    """
    if pattern == WILDCARD:
        return True
    rx = _compile(pattern)
    return bool(rx is not None and rx.search(value))


def match_any(patterns: Iterable[str], value: str) -> str | None:
    """The first pattern that matches ``value``, or None."""
    for p in patterns:
        if match_string(p, value):
            return p
    return None


def is_wildcard_selector(selector: Mapping[str, Sequence[str]]) -> bool:
    """True for ``{'*': ['*']}`` (possibly among other keys): matches every resource."""
    return list(selector.get(WILDCARD, ())) == [WILDCARD]


def match_labels(
    selector: Mapping[str, Sequence[str]],
    labels: Mapping[str, str],
    *,
    noun: str = "database",
) -> tuple[bool, str]:
    """Match resource ``labels`` against a role label ``selector``; return ``(ok, reason)``.

    Teleport's algorithm: an empty selector matches nothing; ``{'*': ['*']}`` matches
    everything, even an unlabelled resource; otherwise every selector key must be
    present (AND) and its value must match one of the selector values (OR).
    ``reason`` explains a mismatch (``label "env" is "prod", role allows ["dev"]``);
    it is empty on a match. ``noun`` names the resource in reasons.
    """
    if not selector:
        return False, "role has no label selector for this kind of resource"
    if is_wildcard_selector(selector):
        return True, ""
    for key, values in selector.items():
        if key not in labels:
            return False, f'{noun} has no label "{key}"'
        value = labels[key]
        if WILDCARD in values:
            continue
        if match_any(values, value) is None:
            return False, f'label "{key}" is "{value}", role allows {json.dumps(list(values))}'
    return True, ""
