"""One access checker over a user's roles (Teleport's ``RoleSet`` / ``AccessChecker``).

Deny always wins: every check looks at the ``deny`` side of every role first.

Databases (``check_database``): a deny role blocks the request when

* its ``deny.db_labels`` match the database and it names no db_users/db_names
  (the whole database is denied), or
* its ``deny.db_labels`` match (or it has no deny selector at all) and its
  ``deny.db_users`` match the user, or its ``deny.db_names`` match the name.

Then ONE allow role must match the labels, the user and (for protocols with
database names) the name. Reasons are phrased in the user's terms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from jumpgate.core.errors import AccessDenied
from jumpgate.core.rbac.matching import is_wildcard_selector, match_any, match_labels
from jumpgate.core.rbac.traits import apply_traits
from jumpgate.core.resources.base import canonical_kind
from jumpgate.core.resources.role import Role, RoleConditions

#: Protocols whose database *name* is checked against ``db_names``.
NAME_ENFORCED_PROTOCOLS = frozenset(
    {"postgres", "mongodb", "cockroachdb", "sqlserver", "oracle", "spanner"}
)


def names_enforced(protocol: str) -> bool:
    """True when ``db_names`` applies to databases of ``protocol``."""
    return protocol in NAME_ENFORCED_PROTOCOLS


@dataclass(frozen=True)
class Decision:
    """Outcome of one check: ``reason`` explains it; ``role`` names the deciding role."""

    allowed: bool
    reason: str
    role: str = ""

    def require(self, *, hint: str | None = None) -> None:
        """Raise :class:`AccessDenied` with the reason unless allowed."""
        if not self.allowed:
            raise AccessDenied(self.reason, hint=hint)


def _fmt(values: Iterable[str]) -> str:
    items = list(values)
    return ", ".join(items) if items else "none"


def _describe(selector: Mapping[str, Sequence[str]]) -> str:
    if is_wildcard_selector(selector):
        return "any labels"
    parts = []
    for key, vals in selector.items():
        parts.append(f"{key}={vals[0]}" if len(vals) == 1 else f"{key} in [{', '.join(vals)}]")
    return ", ".join(parts)


def _kind(name: str) -> str:
    kind: str = canonical_kind(name, strict=False)
    return kind


class AccessChecker:
    """Answers "may this identity do X?" for one user's roles and traits.

    Role templates are expanded once, with ``traits``, when the checker is built.
    """

    def __init__(
        self,
        roles: Sequence[Role],
        traits: Mapping[str, Sequence[str]],
        *,
        username: str = "",
    ) -> None:
        self.username = username
        self.traits: dict[str, list[str]] = {k: list(v) for k, v in traits.items()}
        self.roles: list[Role] = [apply_traits(r, self.traits) for r in roles]
        self.role_names: list[str] = [r.name for r in roles]

    # --- databases ---------------------------------------------------------------------

    def _db_deny(
        self, labels: Mapping[str, str], db_user: str, db_name: str, enforce: bool
    ) -> Decision | None:
        for role in self.roles:
            deny = role.deny
            if deny.db_labels:
                if not match_labels(deny.db_labels, labels)[0]:
                    continue
                if not deny.db_users and not deny.db_names:
                    why = f"databases with {_describe(deny.db_labels)}"
                    return Decision(False, f'role "{role.name}" denies access to {why}', role.name)
            if match_any(deny.db_users, db_user) is not None:
                msg = f'role "{role.name}" denies database user "{db_user}"'
                return Decision(False, msg, role.name)
            if enforce and match_any(deny.db_names, db_name) is not None:
                msg = f'role "{role.name}" denies database name "{db_name}"'
                return Decision(False, msg, role.name)
        return None

    def check_database(
        self,
        *,
        name: str,
        protocol: str,
        labels: Mapping[str, str],
        db_user: str,
        db_name: str,
    ) -> Decision:
        """May the user connect to database ``name`` as ``db_user`` to ``db_name``?"""
        enforce = names_enforced(protocol)
        if not db_user:
            allowed = _fmt(self.allowed_db_users(labels)[0])
            return Decision(False, f"a database user is required (allowed: {allowed})")
        denied = self._db_deny(labels, db_user, db_name, enforce)
        if denied is not None:
            return denied
        label_miss: tuple[str, str] | None = None
        matched: list[Role] = []
        for role in self.roles:
            allow = role.allow
            if not allow.db_labels:
                continue
            ok, why = match_labels(allow.db_labels, labels, noun="database")
            if not ok:
                label_miss = label_miss or (role.name, why)
                continue
            matched.append(role)
            user_ok = match_any(allow.db_users, db_user) is not None
            name_ok = not enforce or match_any(allow.db_names, db_name) is not None
            if user_ok and name_ok:
                return Decision(True, f'allowed by role "{role.name}"', role.name)
        if not matched:
            if label_miss is None:
                return Decision(False, "no role grants access to databases")
            return Decision(False, f"database labels do not match: {label_miss[1]}", label_miss[0])
        first = matched[0].name
        if not any(match_any(r.allow.db_users, db_user) is not None for r in matched):
            users = _fmt(_union(r.allow.db_users for r in matched))
            return Decision(
                False, f'database user "{db_user}" is not allowed (allowed: {users})', first
            )
        names_ok = [r for r in matched if match_any(r.allow.db_names, db_name) is not None]
        if not names_ok:
            names = _fmt(_union(r.allow.db_names for r in matched))
            if not db_name:
                return Decision(False, f"a database name is required (allowed: {names})", first)
            msg = f'database name "{db_name}" is not allowed (allowed: {names})'
            return Decision(False, msg, first)
        msg = (
            f'no single role allows database user "{db_user}" '
            f'together with database name "{db_name}"'
        )
        return Decision(False, msg, first)

    def _matching(self, side: str, labels: Mapping[str, str]) -> list[RoleConditions]:
        out = []
        for role in self.roles:
            cond: RoleConditions = getattr(role.spec, side)
            if cond.db_labels and match_labels(cond.db_labels, labels)[0]:
                out.append(cond)
        return out

    def _denied_values(self, labels: Mapping[str, str], attr: str) -> list[str]:
        out: list[str] = []
        for role in self.roles:
            deny = role.deny
            if deny.db_labels:
                if not match_labels(deny.db_labels, labels)[0]:
                    continue
                if not deny.db_users and not deny.db_names:
                    out.append("*")
                    continue
            out.extend(getattr(deny, attr))
        return sorted(set(out))

    def allowed_db_users(self, labels: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(allowed, denied) database users for a database with ``labels`` (sorted)."""
        allowed = sorted(_union(c.db_users for c in self._matching("allow", labels)))
        return allowed, self._denied_values(labels, "db_users")

    def allowed_db_names(self, labels: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(allowed, denied) database names for a database with ``labels`` (sorted)."""
        allowed = sorted(_union(c.db_names for c in self._matching("allow", labels)))
        return allowed, self._denied_values(labels, "db_names")

    def can_see_database(self, labels: Mapping[str, str]) -> bool:
        """Listing visibility: some allow selector matches and no deny role blocks it whole."""
        if not self._matching("allow", labels):
            return False
        for cond in self._matching("deny", labels):
            if not cond.db_users and not cond.db_names:
                return False
        return True

    # --- apps --------------------------------------------------------------------------

    def check_app(self, *, name: str, labels: Mapping[str, str]) -> Decision:
        """May the user open application ``name`` (with ``labels``)?"""
        for role in self.roles:
            sel = role.deny.app_labels
            if sel and match_labels(sel, labels, noun="app")[0]:
                msg = f'role "{role.name}" denies access to app "{name}" ({_describe(sel)})'
                return Decision(False, msg, role.name)
        miss: tuple[str, str] | None = None
        for role in self.roles:
            sel = role.allow.app_labels
            if not sel:
                continue
            ok, why = match_labels(sel, labels, noun="app")
            if ok:
                return Decision(True, f'allowed by role "{role.name}"', role.name)
            miss = miss or (role.name, why)
        if miss is None:
            return Decision(False, "no role grants access to apps")
        return Decision(False, f"app labels do not match: {miss[1]}", miss[0])

    # --- rules -------------------------------------------------------------------------

    def check_rule(self, kind: str, verb: str) -> Decision:
        """May the user perform ``verb`` on resources of ``kind``?

        ``*`` in a rule's resources or verbs matches everything; ``readnosecrets`` is
        satisfied by ``read``. Deny rules apply even with a ``where`` clause; allow rules
        with a ``where`` clause do not grant here (the condition cannot be evaluated).
        """
        k = _kind(kind)
        for role in self.roles:
            for r in role.deny.rules:
                if _rule_matches(r.resources, r.has_verb(verb), k):
                    msg = f'role "{role.name}" denies action "{verb}" on "{kind}"'
                    return Decision(False, msg, role.name)
        conditional = ""
        for role in self.roles:
            for r in role.allow.rules:
                if not _rule_matches(r.resources, r.has_verb(verb), k):
                    continue
                if r.where:
                    conditional = (
                        conditional or f'role "{role.name}" allows it only where {r.where}'
                    )
                    continue
                return Decision(True, f'allowed by role "{role.name}"', role.name)
        msg = f'access denied to perform action "{verb}" on "{kind}"'
        return Decision(False, f"{msg}: {conditional}" if conditional else msg)

    def require_rule(self, kind: str, verb: str) -> None:
        """Raise :class:`AccessDenied` unless :meth:`check_rule` allows ``verb`` on ``kind``."""
        d = self.check_rule(kind, verb)
        if d.allowed:
            return
        if d.role:
            hint = d.reason
        else:
            roles = _fmt(self.role_names)
            hint = (
                f'ask a cluster administrator for a role with a rule allowing "{verb}" on '
                f'"{kind}" (for example the editor role); your roles: {roles}'
            )
        raise AccessDenied(f'access denied to perform action "{verb}" on "{kind}"', hint=hint)

    # --- impersonation -----------------------------------------------------------------

    def check_impersonate(self, *, user: str = "", roles: Sequence[str]) -> Decision:
        """May the user obtain certificates as ``user`` and/or with ``roles``?

        Without ``user`` this is role impersonation (bots): each role must be allowed
        by some role's ``allow.impersonate.roles``. With ``user`` one role must allow
        the user and all the roles. ``deny.impersonate`` matching either wins.
        """
        for role in self.roles:
            imp = role.deny.impersonate
            if imp is None:
                continue
            if user and match_any(imp.users, user) is not None:
                msg = f'role "{role.name}" denies impersonating user "{user}"'
                return Decision(False, msg, role.name)
            for r in roles:
                if match_any(imp.roles, r) is not None:
                    msg = f'role "{role.name}" denies impersonating role "{r}"'
                    return Decision(False, msg, role.name)
        if not user and not roles:
            return Decision(False, "nothing to impersonate: no user and no roles given")
        usable = [
            (role.name, role.allow.impersonate)
            for role in self.roles
            if role.allow.impersonate is not None and not role.allow.impersonate.where
        ]
        if user:
            for rname, imp in usable:
                if match_any(imp.users, user) is None:
                    continue
                if all(match_any(imp.roles, r) is not None for r in roles):
                    return Decision(True, f'allowed by role "{rname}"', rname)
            return Decision(
                False, f'not allowed to impersonate user "{user}" with roles [{_fmt(roles)}]'
            )
        granting = ""
        for r in roles:
            hit = next((n for n, imp in usable if match_any(imp.roles, r) is not None), None)
            if hit is None:
                return Decision(False, f'not allowed to impersonate role "{r}"')
            granting = granting or hit
        return Decision(True, f'allowed by role "{granting}"', granting)

    # --- session length ----------------------------------------------------------------

    def max_session_ttl(self) -> timedelta:
        """The shortest ``max_session_ttl`` over the roles (zero without roles)."""
        if not self.roles:
            return timedelta(0)
        ttl: timedelta = min(r.max_session_ttl for r in self.roles)
        return ttl


def _rule_matches(resources: Sequence[str], verb_ok: bool, kind: str) -> bool:
    if not verb_ok:
        return False
    return any(res == "*" or _kind(res) == kind for res in resources)


def _union(groups: Iterable[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for g in groups:
        out.extend(g)
    return list(dict.fromkeys(out))
