"""Teleport-shaped resources other than roles: kinds, identities, infrastructure, cluster."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jumpgate.core.errors import BadParameter
from jumpgate.core.resources import (
    App,
    Bot,
    CertAuthority,
    ClusterAuthPreference,
    Database,
    DatabaseServer,
    Lock,
    Resource,
    Token,
    User,
    canonical_kind,
    dump_yaml,
    parse_documents,
    parse_resource,
    resource_to_dict,
)


def one(text: str, source: str = "test.yaml") -> Resource:
    docs = parse_documents(text, source)
    assert len(docs) == 1
    return docs[0]


def roundtrip(r: Resource) -> Resource:
    again = parse_resource(resource_to_dict(r))
    assert again == r
    return again


# --- kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("roles", "role"),
        ("Users", "user"),
        ("bots", "bot"),
        ("tokens", "token"),
        ("database", "db"),
        ("databases", "db"),
        ("db_servers", "db_server"),
        ("apps", "app"),
        ("app_servers", "app_server"),
        ("locks", "lock"),
        ("cas", "cert_authority"),
        ("ca", "cert_authority"),
        ("cert_authorities", "cert_authority"),
        ("cluster_name", "cluster_name"),
        ("cap", "cluster_auth_preference"),
    ],
)
def test_canonical_kind(alias: str, kind: str) -> None:
    assert canonical_kind(alias) == kind


def test_user_and_bot() -> None:
    user = parse_resource(
        {
            "kind": "user",
            "version": "v2",
            "metadata": {"name": "alice"},
            "spec": {"roles": ["access"], "traits": {"db_users": "alice", "db_names": ["*"]}},
            "status": {"is_locked": False},
        }
    )
    assert isinstance(user, User)
    assert user.traits == {"db_users": ["alice"], "db_names": ["*"]}
    d = resource_to_dict(user)
    assert d["spec"]["traits"]["db_users"] == ["alice"]
    assert "status" not in d  # all-default status is omitted
    roundtrip(user)
    bot = parse_resource(
        {
            "kind": "bot",
            "version": "v1",
            "metadata": {"name": "app"},
            "spec": {
                "roles": ["machine-id-db"],
                "traits": [{"name": "logins", "values": ["root"]}, {"name": "x", "values": []}],
                "max_session_ttl": "12h",
            },
            "status": {"user_name": "bot-app", "role_name": "bot-app"},
        }
    )
    assert isinstance(bot, Bot)
    assert bot.trait_map() == {"logins": ["root"]}
    assert resource_to_dict(bot)["spec"]["max_session_ttl"] == "12h0m0s"
    assert list(resource_to_dict(bot)) == ["kind", "version", "metadata", "spec", "status"]
    roundtrip(bot)


def test_token() -> None:
    tok = one(
        """\
kind: token
version: v2
metadata:
  name: abc123
  expires: "2030-01-02T03:04:05.5Z"
spec:
  roles: [db, APP, bot]
  bot_name: app
"""
    )
    assert isinstance(tok, Token)
    assert tok.roles == ["Db", "App", "Bot"]
    assert tok.spec.join_method == "token"
    assert tok.metadata.expires == datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    d = resource_to_dict(tok)
    assert d["metadata"] == {"name": "abc123", "expires": "2030-01-02T03:04:05.5Z"}
    assert not tok.is_expired(datetime(2030, 1, 1, tzinfo=UTC))
    assert tok.is_expired(datetime(2030, 1, 3, tzinfo=UTC))
    roundtrip(tok)
    base = {"kind": "token", "version": "v2", "metadata": {"name": "t"}}
    with pytest.raises(BadParameter, match="bot_name"):
        parse_resource({**base, "spec": {"roles": ["Bot"]}})
    with pytest.raises(BadParameter, match="not a valid system role"):
        parse_resource({**base, "spec": {"roles": ["wizard"]}})


# --- infrastructure ----------------------------------------------------------------------

DB = """\
kind: db
version: v3
metadata:
  name: example
  labels: {env: dev}
spec:
  protocol: postgres
  uri: localhost:5432
  ca_cert: "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n"
  dynamic_labels:
    hostname: {command: [hostname], period: 1m, result: db1}
  aws: {region: us-east-1}
"""


def test_database() -> None:
    db = one(DB)
    assert isinstance(db, Database)
    assert db.protocol == "postgres"
    assert db.spec.tls.mode == "verify-full"
    assert db.spec.tls.ca_cert.startswith("-----BEGIN CERTIFICATE-----")
    assert db.spec.ca_cert == ""  # moved into tls like Teleport does
    assert db.all_labels() == {"env": "dev", "hostname": "db1"}
    d = resource_to_dict(db)
    assert d["spec"]["dynamic_labels"]["hostname"]["period"] == "1m0s"
    assert d["spec"]["aws"] == {"region": "us-east-1"}
    roundtrip(db)


@pytest.mark.parametrize("name", ["Example", "1db", "my_db", "db-", "a" * 64])
def test_bad_database_name(name: str) -> None:
    text = DB.replace("name: example", f"name: {name}")
    with pytest.raises(BadParameter) as ei:
        parse_documents(text, "db.yaml")
    msg = str(ei.value)
    assert "db.yaml, line 4" in msg and "metadata.name" in msg and "DNS-1035" in msg


def test_database_validation() -> None:
    with pytest.raises(BadParameter, match="unsupported database protocol 'postgress'"):
        parse_documents(DB.replace("protocol: postgres", "protocol: postgress"), "db.yaml")
    with pytest.raises(BadParameter, match=r"line 6: .*spec\.uri: field required"):
        parse_documents(DB.replace("  uri: localhost:5432\n", ""), "db.yaml")
    with pytest.raises(BadParameter, match="unknown TLS mode"):
        parse_documents(DB + "  tls: {mode: sloppy}\n", "db.yaml")


def test_db_server_wraps_database() -> None:
    db = one(DB)
    srv = parse_resource(
        {
            "kind": "db_server",
            "version": "v3",
            "metadata": {"name": "example", "expires": "2030-01-01T00:00:00Z"},
            "spec": {
                "host_id": "h1",
                "hostname": "agent",
                "database": resource_to_dict(db),
            },
        }
    )
    assert isinstance(srv, DatabaseServer)
    assert srv.database == db
    roundtrip(srv)


def test_app() -> None:
    app = one(
        """\
kind: app
version: v3
metadata: {name: grafana, labels: {env: dev}}
spec:
  uri: http://localhost:3000
  public_addr: grafana.example.com
  rewrite:
    redirect: [localhost]
    headers:
      - {name: X-Custom, value: example}
      - "Authorization: Bearer {{internal.jwt}}"
    jwt_claims: roles-and-traits
"""
    )
    assert isinstance(app, App)
    assert app.spec.rewrite is not None
    assert app.spec.rewrite.headers[1].value == "Bearer {{internal.jwt}}"
    assert "insecure_skip_verify" not in resource_to_dict(app)["spec"]
    roundtrip(app)
    headers = [{"name": "X-Forwarded-For", "value": "1"}]
    spec = {"uri": "http://x", "rewrite": {"headers": headers}}
    bad = {"kind": "app", "metadata": {"name": "g"}, "spec": spec}
    with pytest.raises(BadParameter, match="reserved"):
        parse_resource(bad)
    with pytest.raises(BadParameter, match="missing application URI"):
        parse_resource({"kind": "app", "metadata": {"name": "g"}, "spec": {}})


def test_lock() -> None:
    lock = parse_resource(
        {
            "kind": "lock",
            "version": "v2",
            "metadata": {"name": "l1"},
            "spec": {
                "target": {"user": "bot-app"},
                "message": "compromised",
                "expires": "2030-01-01T00:00:00Z",
            },
        }
    )
    assert isinstance(lock, Lock)
    assert lock.in_force(datetime(2029, 1, 1, tzinfo=UTC))
    assert lock.is_expired(datetime(2031, 1, 1, tzinfo=UTC))
    assert lock.spec.target.set_fields() == {"user": "bot-app"}
    roundtrip(lock)
    # An unquoted YAML date is a timestamp at midnight UTC.
    dated = one(
        "kind: lock\nmetadata: {name: l2}\nspec: {target: {role: x}, expires: 2030-01-02}\n"
    )
    assert isinstance(dated, Lock)
    assert dated.spec.expires == datetime(2030, 1, 2, tzinfo=UTC)
    with pytest.raises(BadParameter, match="at least one target"):
        parse_resource({"kind": "lock", "metadata": {"name": "l"}, "spec": {"target": {}}})


def test_cert_authority_secrets() -> None:
    cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n"
    ca = parse_resource(
        {
            "kind": "cert_authority",
            "version": "v2",
            "metadata": {"name": "example.com"},
            "spec": {
                "type": "db",
                "cluster_name": "example.com",
                "active_keys": {"tls": [{"cert": cert, "key": key}]},
            },
        }
    )
    assert isinstance(ca, CertAuthority)
    assert ca.sub_kind == "db"
    assert ca.spec.active_keys.tls[0].key == key.encode()
    public = resource_to_dict(ca)
    assert public["spec"]["active_keys"]["tls"] == [{"cert": cert}]
    assert "BEGIN PRIVATE KEY" not in dump_yaml([ca])
    full = resource_to_dict(ca, with_secrets=True)
    assert full["spec"]["active_keys"]["tls"] == [{"cert": cert, "key": key}]
    assert parse_resource(full) == ca


def test_cluster_auth_preference_yaml_off() -> None:
    cap = one("kind: cluster_auth_preference\nversion: v2\nspec:\n  second_factor: off\n")
    assert isinstance(cap, ClusterAuthPreference)
    assert cap.name == "cluster-auth-preference"
    assert cap.spec.second_factor == "off"
    assert cap.spec.type == "local"
    with pytest.raises(BadParameter, match="second_factor"):
        parse_resource({"kind": "cap", "spec": {"second_factor": "sms"}})


def test_multi_document_dump_and_parse() -> None:
    role = parse_resource({"kind": "role", "version": "v6", "metadata": {"name": "r"}})
    resources = [role, one(DB), role]
    text = dump_yaml(resources)
    assert text.splitlines().count("---") == len(resources) - 1
    assert parse_documents(text, "all.yaml") == resources
