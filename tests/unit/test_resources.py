"""Teleport-shaped resources: parsing, validation errors with lines, round trips."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jumpgate.core.errors import BadParameter
from jumpgate.core.rbac import AccessChecker
from jumpgate.core.resources import (
    Resource,
    Role,
    bot_role,
    dump_yaml,
    parse_documents,
    parse_resource,
    preset_roles,
    resource_to_dict,
)

# The `kind: role` blocks of the seed documents (/work/shared/seeds/000, 001/002, 003).
SEED_ROLES = {
    "machine-id-db": """\
kind: role
version: v5
metadata:
  name: machine-id-db
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
""",
    "example-role": """\
kind: role
version: v6
metadata:
  name: example-role
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: [example-db]
    db_users: [alice]
    rules:
      - resources: [db_server, db]
        verbs: [read, list]
""",
    "machine-id-app-role": """\
kind: role
metadata:
  name: machine-id-app-role
version: v5
spec:
  allow:
    app_labels:
      '*': '*'
""",
}


def one(text: str, source: str = "test.yaml") -> Resource:
    docs = parse_documents(text, source)
    assert len(docs) == 1
    return docs[0]


def roundtrip(r: Resource) -> Resource:
    again = parse_resource(resource_to_dict(r))
    assert again == r
    return again


# --- seed roles --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_ROLES))
def test_seed_roles_parse_and_round_trip(name: str) -> None:
    role = one(SEED_ROLES[name], "role.yaml")
    assert isinstance(role, Role)
    assert role.name == name
    roundtrip(role)
    # and through YAML text
    assert parse_documents(dump_yaml([role]), "again.yaml") == [role]


def test_seed_role_fields() -> None:
    role = one(SEED_ROLES["machine-id-db"])
    assert isinstance(role, Role)
    assert role.version == "v5"
    assert role.allow.db_labels == {"*": ["*"]}
    assert role.allow.db_names == ["example"]
    assert role.allow.db_users == ["alice"]
    assert role.allow.rules[0].resources == ["db_server", "db"]
    assert role.allow.rules[0].verbs == ["read", "list"]
    assert role.max_session_ttl == timedelta(hours=30)
    app = one(SEED_ROLES["machine-id-app-role"])
    assert isinstance(app, Role)
    assert app.allow.app_labels == {"*": ["*"]}
    assert app.allow.db_labels == {}  # v5: no default wildcard


def test_dict_shape_and_key_order() -> None:
    d = resource_to_dict(one(SEED_ROLES["machine-id-db"]))
    assert list(d) == ["kind", "version", "metadata", "spec"]
    assert d["metadata"] == {"name": "machine-id-db"}
    assert d["spec"]["options"] == {"max_session_ttl": "30h0m0s"}
    assert d["spec"]["allow"]["db_labels"] == {"*": "*"}
    assert d["spec"]["allow"]["rules"] == [
        {"resources": ["db_server", "db"], "verbs": ["read", "list"]}
    ]
    assert "deny" not in d["spec"]


# --- errors ------------------------------------------------------------------------------

NO_VERBS = """\
kind: role
version: v5
metadata:
  name: machine-id-db
spec:
  allow:
    db_labels:
      '*': '*'
    rules:
      - resources: [db_server, db]
        where: 'true'
"""


def test_rule_without_verbs_names_field_and_line() -> None:
    with pytest.raises(BadParameter) as ei:
        parse_documents(NO_VERBS, "role.yaml")
    msg = str(ei.value)
    assert msg.startswith("role.yaml, line 10: ")
    assert 'role "machine-id-db"' in msg
    assert "spec.allow.rules[0].verbs" in msg
    assert "field required" in msg and "missing verbs" in msg
    assert ei.value.hint


def test_rule_with_empty_verbs_or_resources() -> None:
    text = NO_VERBS.replace("        where: 'true'", "        verbs: []")
    with pytest.raises(BadParameter, match=r"line 11: .*verbs: missing verbs"):
        parse_documents(text, "role.yaml")
    text = NO_VERBS.replace("resources: [db_server, db]", "verbs: [read]")
    with pytest.raises(BadParameter, match="missing resources to match"):
        parse_documents(text, "role.yaml")


def test_error_in_second_document_points_at_its_line() -> None:
    text = SEED_ROLES["example-role"] + "---\n" + NO_VERBS
    with pytest.raises(BadParameter, match=r"^r\.yaml, line 24: "):
        parse_documents(text, "r.yaml")


def test_unknown_kind_lists_supported() -> None:
    with pytest.raises(BadParameter) as ei:
        parse_resource({"kind": "gizmo", "version": "v1", "metadata": {"name": "x"}})
    assert "gizmo" in str(ei.value)
    for kind in ("role", "db", "app", "token", "cert_authority"):
        assert kind in str(ei.value)
    with pytest.raises(BadParameter, match="kind"):
        parse_resource({"metadata": {"name": "x"}})


def test_unknown_field_in_rule() -> None:
    text = NO_VERBS.replace("        where: 'true'", "        verbs: [read]\n        verb: [x]")
    with pytest.raises(BadParameter, match=r"line 12: .*rules\[0\]\.verb: unknown field"):
        parse_documents(text, "role.yaml")


def test_wrong_type_is_reported() -> None:
    data = {"kind": "role", "version": "v7", "metadata": {"name": "r"}}
    data["spec"] = {"allow": {"db_users": {"a": "b"}}}
    with pytest.raises(BadParameter, match=r'role "r": spec\.allow\.db_users: '):
        parse_resource(data)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"allow": {"db_labels": {"*": "prod"}}}, "selector *:prod is not supported"),
        ({"allow": {"impersonate": {"users": ["a"]}}}, "please set both impersonate.users"),
        ({"allow": {"logins": ["*"]}}, "wildcard matcher is not allowed in logins"),
        ({"allow": {"db_users": ["{{internal.x"]}}, "template brackets"),
        ({"allow": {"db_users": ["{{nope.x}}"]}}, 'unknown namespace "nope"'),
        ({"deny": {"impersonate": {"roles": ["a"], "where": "x"}}}, "not supported"),
        ({"options": {"max_session_ttl": "forever"}}, "not a duration"),
    ],
)
def test_role_validation(spec: dict[str, object], message: str) -> None:
    data = {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": spec}
    with pytest.raises(BadParameter) as ei:
        parse_resource(data)
    assert message in str(ei.value)


def test_unrecognized_role_version() -> None:
    with pytest.raises(BadParameter, match="unrecognized role version: v9"):
        parse_resource({"kind": "role", "version": "v9", "metadata": {"name": "r"}})


# --- roles -------------------------------------------------------------------------------


def test_label_value_string_becomes_list() -> None:
    role = parse_resource(
        {
            "kind": "role",
            "version": "v7",
            "metadata": {"name": "r"},
            "spec": {"allow": {"db_labels": {"env": "dev", "team": ["a", "b"], "n": 1}}},
        }
    )
    assert isinstance(role, Role)
    assert role.allow.db_labels == {"env": ["dev"], "team": ["a", "b"], "n": ["1"]}
    assert resource_to_dict(role)["spec"]["allow"]["db_labels"] == {
        "env": "dev",
        "team": ["a", "b"],
        "n": "1",
    }


@pytest.mark.parametrize("version", ["v3", "v4", "v5", "v6", "v7", "v8"])
def test_version_defaults(version: str) -> None:
    role = parse_resource({"kind": "role", "version": version, "metadata": {"name": "r"}})
    assert isinstance(role, Role)
    wild = {"*": ["*"]}
    for fld in ("db_labels", "app_labels", "node_labels"):
        assert getattr(role.allow, fld) == (wild if version == "v3" else {})
    assert role.max_session_ttl == timedelta(hours=30)
    roundtrip(role)


def test_extra_teleport_keys_round_trip() -> None:
    text = """\
kind: role
version: v7
metadata:
  name: devs
  description: developers
  labels: {team: dev}
spec:
  options:
    max_session_ttl: 8h
    forward_agent: false
    port_forwarding: false
    create_db_user_mode: keep
  allow:
    kubernetes_labels: {'*': '*'}
    windows_desktop_logins: [Administrator]
    request:
      roles: [admin]
      thresholds: [{approve: 1, deny: 1}]
    db_roles: [reader]
  deny:
    node_labels: {env: prod}
"""
    role = one(text)
    assert isinstance(role, Role)
    assert role.max_session_ttl == timedelta(hours=8)
    d = resource_to_dict(role)
    assert d["spec"]["options"] == {
        "max_session_ttl": "8h0m0s",
        "forward_agent": False,
        "port_forwarding": False,
        "create_db_user_mode": "keep",
    }
    allow = d["spec"]["allow"]
    assert allow["kubernetes_labels"] == {"*": "*"}
    assert allow["windows_desktop_logins"] == ["Administrator"]
    assert allow["request"] == {"roles": ["admin"], "thresholds": [{"approve": 1, "deny": 1}]}
    assert d["spec"]["deny"] == {"node_labels": {"env": "prod"}}
    assert d["metadata"] == {"name": "devs", "description": "developers", "labels": {"team": "dev"}}
    roundtrip(role)


def test_presets() -> None:
    roles = {r.name: r for r in preset_roles()}
    assert set(roles) == {"access", "editor", "auditor", "requester"}
    # requester (seed 004: tctl users add --roles=access,requester) grants no access by itself
    assert (
        not AccessChecker([roles["requester"]], {"db_users": ["*"], "db_names": ["*"]})
        .check_database(name="x", protocol="postgres", labels={}, db_user="a", db_name="b")
        .allowed
    )
    access = roles["access"]
    assert access.version == "v7"
    assert access.allow.logins == ["{{internal.logins}}"]
    assert access.allow.db_users == ["{{internal.db_users}}"]
    assert access.allow.db_names == ["{{internal.db_names}}"]
    for fld in ("db_labels", "app_labels", "node_labels"):
        assert getattr(access.allow, fld) == {"*": ["*"]}
    assert access.max_session_ttl == timedelta(hours=30)
    editor = roles["editor"]
    assert not editor.allow.db_labels
    star = {k for r in editor.allow.rules if r.verbs == ["*"] for k in r.resources}
    assert {"user", "role", "bot", "token", "lock", "db", "app"} <= star
    assert "cert_authority" not in star
    for r in roles.values():
        roundtrip(r)


def test_bot_role() -> None:
    role = bot_role("app", ["machine-id-db"])
    assert role.name == "bot-app"
    assert role.labels == {"teleport.internal/bot": "app"}
    assert role.allow.impersonate is not None
    assert role.allow.impersonate.roles == ["machine-id-db"]
    assert role.allow.impersonate.users == []
    kinds = {k for r in role.allow.rules for k in r.resources}
    assert {"cert_authority", "db", "db_server", "app", "app_server", "cluster_name"} <= kinds
    roundtrip(role)
