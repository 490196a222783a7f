"""RBAC: matching, trait templates, and the access checker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jumpgate.core.errors import AccessDenied, BadParameter
from jumpgate.core.rbac import (
    AccessChecker,
    Decision,
    apply_traits,
    expand,
    match_labels,
    match_string,
)
from jumpgate.core.resources import Role, bot_role, make_role, preset_roles


def role(name: str, *, version: str = "v7", **spec: Any) -> Role:
    return make_role(
        name,
        version=version,
        allow=spec.get("allow"),
        deny=spec.get("deny"),
        max_session_ttl=spec.get("ttl"),
    )


def access() -> Role:
    return next(r for r in preset_roles() if r.name == "access")


# --- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "ok"),
    [
        ("*", "", True),
        ("*", "anything", True),
        ("dev", "dev", True),
        ("dev", "dev2", False),
        ("dev*", "dev-east", True),
        ("*-east", "dev-east", True),
        ("*-east", "dev-west", False),
        ("d*v", "dv", True),
        ("a.b", "axb", False),  # glob: '.' is literal
        ("a.b", "a.b", True),
        ("^dev-[0-9]+$", "dev-42", True),
        ("^dev-[0-9]+$", "dev-x", False),
        ("^(prod|stage)$", "stage", True),
        ("^[$", "x", False),  # invalid regex matches nothing
        ("^dev", "^dev", True),  # no trailing $: a literal glob
    ],
)
def test_match_string(pattern: str, value: str, ok: bool) -> None:
    assert match_string(pattern, value) is ok


@pytest.mark.parametrize(
    ("selector", "labels", "ok", "reason"),
    [
        ({}, {"env": "dev"}, False, "no label selector"),
        ({"*": ["*"]}, {}, True, ""),
        ({"*": ["*"]}, {"env": "prod"}, True, ""),
        ({"env": ["dev"]}, {"env": "dev"}, True, ""),
        ({"env": ["dev"]}, {"env": "prod"}, False, 'label "env" is "prod", role allows ["dev"]'),
        ({"env": ["dev"]}, {}, False, 'database has no label "env"'),
        ({"env": ["dev", "stage"]}, {"env": "stage"}, True, ""),  # OR across values
        ({"env": ["dev"], "team": ["a"]}, {"env": "dev"}, False, 'no label "team"'),  # AND
        ({"env": ["dev"], "team": ["a"]}, {"env": "dev", "team": "a"}, True, ""),
        ({"env": ["*"]}, {"env": "whatever"}, True, ""),
        ({"env": ["*"]}, {"team": "a"}, False, 'no label "env"'),
        ({"env": ["dev-*"]}, {"env": "dev-east"}, True, ""),
        ({"env": ["^(dev|qa)$"]}, {"env": "qa"}, True, ""),
        ({"env": ["^(dev|qa)$"]}, {"env": "prod"}, False, "prod"),
    ],
)
def test_match_labels(
    selector: dict[str, list[str]], labels: dict[str, str], ok: bool, reason: str
) -> None:
    got, why = match_labels(selector, labels)
    assert got is ok
    assert reason in why
    if ok:
        assert why == ""


# --- traits ------------------------------------------------------------------------------

TRAITS = {
    "logins": ["root", "ubuntu"],
    "email": ["alice@example.com"],
    "groups": ["team-db", "team-web", "other"],
    "db_users": ["alice"],
    "env": ["dev"],
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", ["plain"]),
        ("{{internal.logins}}", ["root", "ubuntu"]),
        ("{{ internal.logins }}", ["root", "ubuntu"]),
        ('{{internal["logins"]}}', ["root", "ubuntu"]),
        ("{{external.logins}}", ["root", "ubuntu"]),
        ("pre-{{internal.logins}}-post", ["pre-root-post", "pre-ubuntu-post"]),
        ("{{internal.missing}}", []),
        ("x-{{internal.missing}}", []),
        ("{{email.local(external.email)}}", ["alice"]),
        ('{{regexp.replace(external.groups, "^team-(.*)$", "$1")}}', ["db", "web"]),
        ('{{regexp.replace(external.groups, "^team-(?P<t>.*)$", "db-${t}")}}', ["db-db", "db-web"]),
        ('{{regexp.replace(external.groups, "team", "squad")}}', ["squad-db", "squad-web"]),
        ('IAM#{{regexp.replace(external.email, "^(.*)@.*$", "$1")}};', ["IAM#alice;"]),
        ("{{strings.upper(internal.env)}}", ["DEV"]),
        ("{{internal.jwt}}", ["{{internal.jwt}}"]),
        ("Bearer {{internal.jwt}}", ["Bearer {{internal.jwt}}"]),
    ],
)
def test_expand(value: str, expected: list[str]) -> None:
    assert expand(value, TRAITS) == expected


@pytest.mark.parametrize(
    "value",
    [
        "{{internal.logins",
        "internal.logins}}",
        "{{a}}{{b}}",
        "{{unknown.x}}",
        "{{email.local()}}",
        "{{nosuch.func(internal.x)}}",
        '{{regexp.replace(internal.x, "(", "y")}}',
        "{{internal.logins extra}}",
    ],
)
def test_expand_malformed(value: str) -> None:
    with pytest.raises(BadParameter):
        expand(value, TRAITS)


def test_apply_traits_expands_and_dedupes() -> None:
    r = role(
        "t",
        allow={
            "logins": ["{{internal.logins}}", "root", "admin"],
            "db_users": ["{{internal.db_users}}", "alice"],
            "db_names": ["{{internal.nothing}}"],
            "db_labels": {"env": "{{internal.env}}", "{{internal.missing}}": "x"},
        },
        deny={"db_users": ["{{email.local(external.email)}}-admin"]},
    )
    out = apply_traits(r, TRAITS)
    assert out.allow.logins == ["root", "ubuntu", "admin"]
    assert out.allow.db_users == ["alice"]
    assert out.allow.db_names == []
    # An unresolvable key becomes "" so the selector can never match (never widens access).
    assert out.allow.db_labels == {"env": ["dev"], "": ["x"]}
    assert out.deny.db_users == ["alice-admin"]
    assert r.allow.logins[0] == "{{internal.logins}}"  # original untouched


# --- databases ---------------------------------------------------------------------------

PG = {"name": "example-db", "protocol": "postgres"}


def db(
    checker: AccessChecker, user: str, name: str, labels: dict[str, str] | None = None, **kw: Any
) -> Decision:
    args = {**PG, **kw}
    return checker.check_database(
        name=args["name"],
        protocol=args["protocol"],
        labels=labels if labels is not None else {"env": "dev"},
        db_user=user,
        db_name=name,
    )


def test_builtin_access_role_with_user_traits() -> None:
    # tctl users add bob --roles=access --db-users=alice --db-names=*
    checker = AccessChecker([access()], {"db_users": ["alice"], "db_names": ["*"]}, username="bob")
    ok = db(checker, "alice", "anything")
    assert ok.allowed and ok.role == "access"
    no = db(checker, "postgres", "anything")
    assert not no.allowed
    assert no.reason == 'database user "postgres" is not allowed (allowed: alice)'
    assert checker.allowed_db_users({"env": "dev"}) == (["alice"], [])
    assert checker.allowed_db_names({}) == (["*"], [])
    # no traits at all: templates expand to nothing
    empty = AccessChecker([access()], {})
    d = db(empty, "alice", "x")
    assert not d.allowed and "(allowed: none)" in d.reason


def test_seed_role_example() -> None:
    r = role(
        "example-role",
        version="v6",
        allow={"db_labels": {"*": "*"}, "db_names": ["example-db"], "db_users": ["alice"]},
    )
    checker = AccessChecker([r], {})
    assert db(checker, "alice", "example-db").allowed
    bad = db(checker, "alice", "prod")
    assert not bad.allowed
    assert bad.reason == 'database name "prod" is not allowed (allowed: example-db)'
    # MySQL has no enforced database names.
    assert db(checker, "alice", "prod", protocol="mysql").allowed


def test_label_and_role_reasons() -> None:
    dev_only = role(
        "dev", allow={"db_labels": {"env": "dev"}, "db_users": ["*"], "db_names": ["*"]}
    )
    d = db(AccessChecker([dev_only], {}), "alice", "x", {"env": "prod"})
    assert not d.allowed
    assert d.reason == 'database labels do not match: label "env" is "prod", role allows ["dev"]'
    assert d.role == "dev"
    apps_only = role("apps", allow={"app_labels": {"*": "*"}})
    d = db(AccessChecker([apps_only], {}), "alice", "x")
    assert d.reason == "no role grants access to databases"
    assert not db(AccessChecker([], {}), "alice", "x").allowed


def test_same_role_must_grant_user_and_name() -> None:
    a = role("a", allow={"db_labels": {"*": "*"}, "db_users": ["alice"], "db_names": ["one"]})
    b = role("b", allow={"db_labels": {"*": "*"}, "db_users": ["bob"], "db_names": ["two"]})
    checker = AccessChecker([a, b], {})
    assert db(checker, "alice", "one").allowed
    assert db(checker, "bob", "two").allowed
    d = db(checker, "alice", "two")
    assert not d.allowed and "no single role" in d.reason


def test_deny_beats_allow_across_roles() -> None:
    allow_all = role("all", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["*"]})
    no_pg = role("no-prod", deny={"db_labels": {"env": "prod"}, "db_users": ["postgres"]})
    checker = AccessChecker([allow_all, no_pg], {})
    d = db(checker, "postgres", "x", {"env": "prod"})
    assert not d.allowed
    assert d.reason == 'role "no-prod" denies database user "postgres"'
    assert d.role == "no-prod"
    assert db(checker, "postgres", "x", {"env": "dev"}).allowed  # deny labels do not match
    assert db(checker, "alice", "x", {"env": "prod"}).allowed  # other users still fine
    # deny db_names
    no_main = role("no-main", deny={"db_labels": {"*": "*"}, "db_names": ["main"]})
    d = db(AccessChecker([allow_all, no_main], {}), "alice", "main")
    assert d.reason == 'role "no-main" denies database name "main"'
    # deny labels alone: the whole database
    no_prod = role("no-prod-at-all", deny={"db_labels": {"env": "prod"}})
    checker = AccessChecker([allow_all, no_prod], {})
    d = db(checker, "alice", "x", {"env": "prod"})
    assert not d.allowed and 'role "no-prod-at-all" denies access' in d.reason
    assert not checker.can_see_database({"env": "prod"})
    assert checker.can_see_database({"env": "dev"})
    # deny db_users with no deny selector applies to every database
    never_root = role("never-root", deny={"db_users": ["root"]})
    assert not db(AccessChecker([allow_all, never_root], {}), "root", "x").allowed


def test_allowed_db_users_with_except_list() -> None:
    allow = role(
        "a", allow={"db_labels": {"*": "*"}, "db_users": ["*", "alice"], "db_names": ["*"]}
    )
    deny = role("d", deny={"db_labels": {"env": "prod"}, "db_users": ["bob"]})
    checker = AccessChecker([allow, deny], {})
    assert checker.allowed_db_users({"env": "prod"}) == (["*", "alice"], ["bob"])
    assert checker.allowed_db_users({"env": "dev"}) == (["*", "alice"], [])
    assert checker.allowed_db_names({"env": "prod"}) == (["*"], [])
    assert checker.can_see_database({"env": "prod"})


def test_empty_db_user_is_refused() -> None:
    allow = role("a", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["*"]})
    d = db(AccessChecker([allow], {}), "", "x")
    assert not d.allowed and "database user is required" in d.reason
    named = role("n", allow={"db_labels": {"*": "*"}, "db_users": ["*"], "db_names": ["main"]})
    d = db(AccessChecker([named], {}), "alice", "")
    assert d.reason == "a database name is required (allowed: main)"


# --- apps --------------------------------------------------------------------------------


def test_check_app() -> None:
    allow = role("apps", allow={"app_labels": {"env": ["dev", "stage"]}})
    deny = role("no-grafana", deny={"app_labels": {"app": "grafana"}})
    checker = AccessChecker([allow, deny], {})
    assert checker.check_app(name="wiki", labels={"env": "dev"}).allowed
    d = checker.check_app(name="grafana", labels={"env": "dev", "app": "grafana"})
    assert not d.allowed and d.role == "no-grafana"
    d = checker.check_app(name="wiki", labels={"env": "prod"})
    assert (
        d.reason == 'app labels do not match: label "env" is "prod", role allows ["dev", "stage"]'
    )
    d = AccessChecker([role("none")], {}).check_app(name="x", labels={})
    assert d.reason == "no role grants access to apps"
    v3 = role("old", version="v3")
    assert AccessChecker([v3], {}).check_app(name="x", labels={}).allowed


# --- rules -------------------------------------------------------------------------------


def test_rules() -> None:
    editor = next(r for r in preset_roles() if r.name == "editor")
    checker = AccessChecker([editor], {})
    assert checker.check_rule("role", "create").allowed
    assert checker.check_rule("database", "delete").allowed  # alias of db
    assert checker.check_rule("cert_authority", "readnosecrets").allowed
    assert not checker.check_rule("cert_authority", "update").allowed
    star = role("root", allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]})
    assert AccessChecker([star], {}).check_rule("anything", "rotate").allowed
    no_del = role("no-delete", deny={"rules": [{"resources": ["*"], "verbs": ["delete"]}]})
    checker = AccessChecker([star, no_del], {})
    d = checker.check_rule("user", "delete")
    assert not d.allowed and d.role == "no-delete"
    assert checker.check_rule("user", "read").allowed
    no_read = role("no-read", deny={"rules": [{"resources": ["user"], "verbs": ["read"]}]})
    assert not AccessChecker([star, no_read], {}).check_rule("user", "readnosecrets").allowed
    ro = role("ro", allow={"rules": [{"resources": ["user"], "verbs": ["readnosecrets"]}]})
    assert not AccessChecker([ro], {}).check_rule("user", "read").allowed
    with pytest.raises(AccessDenied) as ei:
        AccessChecker([ro], {}).require_rule("user", "create")
    assert str(ei.value) == 'access denied to perform action "create" on "user"'
    assert ei.value.hint and "ro" in ei.value.hint
    AccessChecker([star], {}).require_rule("user", "create")


def test_rule_with_where_does_not_grant_unconditionally() -> None:
    checker = AccessChecker([access()], {})
    d = checker.check_rule("session", "list")
    assert not d.allowed and "only where" in d.reason
    assert checker.check_rule("event", "list").allowed


# --- impersonation -----------------------------------------------------------------------


def test_bot_role_impersonation() -> None:
    checker = AccessChecker([bot_role("app", ["machine-id-db", "apps-*"])], {})
    assert checker.check_impersonate(roles=["machine-id-db"]).allowed
    assert checker.check_impersonate(roles=["machine-id-db", "apps-x"]).allowed
    d = checker.check_impersonate(roles=["machine-id-db", "editor"])
    assert not d.allowed and '"editor"' in d.reason
    assert not checker.check_impersonate(user="alice", roles=["machine-id-db"]).allowed
    assert checker.check_rule("cert_authority", "readnosecrets").allowed


def test_user_impersonation_and_deny() -> None:
    imp = role("imp", allow={"impersonate": {"users": ["*"], "roles": ["dev", "ops"]}})
    no_ops = role("no-ops", deny={"impersonate": {"roles": ["ops"]}})
    checker = AccessChecker([imp, no_ops], {})
    assert checker.check_impersonate(user="alice", roles=["dev"]).allowed
    d = checker.check_impersonate(user="alice", roles=["dev", "ops"])
    assert not d.allowed and d.role == "no-ops"
    assert not checker.check_impersonate(user="alice", roles=["admin"]).allowed
    assert not checker.check_impersonate(roles=[]).allowed


def test_max_session_ttl_is_minimum() -> None:
    a = role("a", ttl="8h")
    b = role("b")
    checker = AccessChecker([a, b], {})
    assert checker.max_session_ttl() == timedelta(hours=8)
    assert AccessChecker([b], {}).max_session_ttl() == timedelta(hours=30)
    assert checker.role_names == ["a", "b"]


# --- property: deny never helps ----------------------------------------------------------

VALUES = st.sampled_from(["alice", "bob", "postgres", "*", "a*", "^b.*$"])
NAMES = st.sampled_from(["main", "prod", "*", "m*"])
LABELS = st.sampled_from(
    [{}, {"*": "*"}, {"env": "dev"}, {"env": "prod"}, {"env": ["dev", "prod"]}, {"team": "a"}]
)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "db_labels": draw(LABELS),
        "db_users": draw(st.lists(VALUES, max_size=3)),
        "db_names": draw(st.lists(NAMES, max_size=3)),
    }


REQUEST = st.fixed_dictionaries(
    {
        "user": st.sampled_from(["alice", "bob", "postgres", "root"]),
        "name": st.sampled_from(["main", "prod", "other"]),
        "labels": st.sampled_from(
            [{}, {"env": "dev"}, {"env": "prod"}, {"env": "dev", "team": "a"}]
        ),
        "protocol": st.sampled_from(["postgres", "mysql"]),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    allows=st.lists(conditions(), max_size=3),
    denies=st.lists(conditions(), max_size=2),
    extra_deny=conditions(),
    req=REQUEST,
)
def test_adding_a_deny_role_never_grants(
    allows: list[dict[str, Any]],
    denies: list[dict[str, Any]],
    extra_deny: dict[str, Any],
    req: dict[str, Any],
) -> None:
    roles = [role(f"a{i}", allow=c) for i, c in enumerate(allows)]
    roles += [role(f"d{i}", deny=c) for i, c in enumerate(denies)]

    def decide(rs: list[Role]) -> bool:
        return (
            AccessChecker(rs, {})
            .check_database(
                name="x",
                protocol=req["protocol"],
                labels=req["labels"],
                db_user=req["user"],
                db_name=req["name"],
            )
            .allowed
        )

    before = decide(roles)
    extra = role("extra-deny", deny=extra_deny)
    after = decide([*roles, extra])
    assert not (after and not before)  # a denial never turns into an allow
    if after:
        # ...and an allow survives only when the new deny role did not match
        assert decide([extra, *roles])
    # a deny role that certainly matches (wildcard labels, this user) always denies
    sure = role("sure", deny={"db_labels": {"*": "*"}, "db_users": [req["user"]]})
    assert not decide([*roles, sure])
