"""Role-based access control: label/string matching, trait templates, one access checker."""

from __future__ import annotations

from jumpgate.core.rbac.checker import (
    NAME_ENFORCED_PROTOCOLS,
    AccessChecker,
    Decision,
    names_enforced,
)
from jumpgate.core.rbac.matching import match_any, match_labels, match_string
from jumpgate.core.rbac.traits import apply_traits, expand, expand_all, parse_template

__all__ = [
    "NAME_ENFORCED_PROTOCOLS",
    "AccessChecker",
    "Decision",
    "apply_traits",
    "expand",
    "expand_all",
    "match_any",
    "match_labels",
    "match_string",
    "names_enforced",
    "parse_template",
]
