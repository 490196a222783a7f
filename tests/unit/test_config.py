"""teleport.yaml loading: models, defaults, version rules and error messages with lines."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from jumpgate.core.config import (
    load_config,
    parse_config,
    parse_hostport,
)
from jumpgate.core.errors import BadParameter, ConfigError


def cfg_of(text: str):
    return parse_config(textwrap.dedent(text), "teleport.yaml")


def err_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        cfg_of(text)
    return ei.value


# ------------------------------------------------------------------ defaults


def test_minimal_v3_defaults() -> None:
    cfg = cfg_of(
        """\
        version: v3
        teleport:
          nodename: node1
        """
    )
    assert cfg.version == "v3"
    assert cfg.teleport.nodename == "node1"
    assert cfg.data_dir == Path("/var/lib/teleport")
    assert cfg.backend_path == Path("/var/lib/teleport/backend/sqlite.db")
    assert cfg.auth_enabled and cfg.proxy_enabled
    assert not cfg.db_enabled and not cfg.app_enabled
    assert cfg.auth_service.listen_addr == "0.0.0.0:3025"
    assert cfg.proxy_service.web_listen_addr == "0.0.0.0:3080"
    assert cfg.proxy_public_addr == "localhost:3080"
    assert cfg.teleport.log.severity == "INFO"
    assert cfg.auth_service.authentication.second_factor == "off"
    assert cfg.source is None
    assert cfg.join_token() is None
    assert cfg.upstream() is None
    cfg.validate_supported()


def test_version_missing_is_v1() -> None:
    cfg = cfg_of("teleport:\n  auth_servers: [auth.example.com]\n")
    assert cfg.version == "v1"
    assert cfg.upstream() == ("auth", "auth.example.com:3025")


def test_bad_version() -> None:
    e = err_of("version: v4\n")
    assert e.message.startswith("teleport.yaml, line 1: version: expected")
    assert "v4" in e.message
    e = err_of("version: 3\n")
    assert e.hint == 'did you mean "v3"?'


def test_yes_no_booleans_and_words() -> None:
    cfg = cfg_of(
        """\
        version: v3
        auth_service:
          enabled: "no"
          authentication:
            second_factor: off
          disconnect_expired_cert: "on"
        proxy_service:
          enabled: "False"
          trust_x_forwarded_for: yes
          proxy_protocol: on
        db_service:
          enabled: "yes"
        app_service:
          enabled: true
        """
    )
    assert not cfg.auth_enabled and not cfg.proxy_enabled
    assert cfg.db_enabled and cfg.app_enabled
    assert cfg.auth_service.authentication.second_factor == "off"
    assert cfg.auth_service.disconnect_expired_cert is True
    assert cfg.proxy_service.trust_x_forwarded_for is True
    assert cfg.proxy_service.proxy_protocol == "on"


def test_bad_bool() -> None:
    e = err_of(
        """\
        version: v3
        db_service:
          enabled: maybe
        """
    )
    assert e.message.startswith("teleport.yaml, line 3: db_service.enabled:")
    assert "maybe" in e.message and "yes/no" in e.message
    assert e.hint


def test_empty_sections_and_scalar_lists() -> None:
    cfg = cfg_of(
        """\
        version: v3
        teleport:
          ca_pin: sha256:abc
          log:
            severity: warning
        db_service:
        proxy_service:
          public_addr: teleport.example.com
          postgres_public_addr: pg.example.com:5432
        """
    )
    assert not cfg.db_enabled
    assert cfg.teleport.ca_pin == ["sha256:abc"]
    assert cfg.teleport.log.severity == "WARN"
    assert cfg.proxy_service.public_addr == ["teleport.example.com"]
    assert cfg.proxy_service.postgres_public_addr == ["pg.example.com:5432"]
    assert cfg.proxy_public_addr == "teleport.example.com:3080"


def test_proxy_public_addr_wildcard_listen() -> None:
    cfg = cfg_of("version: v3\nproxy_service:\n  web_listen_addr: '[::]:443'\n")
    assert cfg.proxy_public_addr == "localhost:443"
    cfg = cfg_of("version: v3\nproxy_service:\n  public_addr: [a.example.com:443, b:1]\n")
    assert cfg.proxy_public_addr == "a.example.com:443"


# ------------------------------------------------------------- unknown keys


def test_unknown_key_line_and_suggestion() -> None:
    e = err_of(
        """\
        version: v3
        teleport:
          nodename: node1
        auth_service:
          enabled: yes
        proxy_service:
          enabled: yes
          web_listen_adr: 0.0.0.0:443
        """
    )
    assert e.message == "teleport.yaml, line 8: proxy_service.web_listen_adr: unknown key"
    assert e.hint == 'did you mean "web_listen_addr"?'


def test_unknown_top_level_and_no_close_match() -> None:
    e = err_of("version: v3\nteleport:\n  zzzz: 1\n")
    assert e.message == "teleport.yaml, line 3: teleport.zzzz: unknown key"
    assert e.hint is not None and "nodename" in e.hint and "data_dir" in e.hint
    e = err_of("version: v3\ndb_servce:\n  enabled: yes\n")
    assert "line 2: db_servce: unknown key" in e.message
    assert e.hint == 'did you mean "db_service"?'


def test_nested_unknown_key_in_database_entry() -> None:
    e = err_of(
        """\
        version: v3
        db_service:
          enabled: yes
          databases:
          - name: one
            protocol: postgres
            uri: localhost:5432
          - name: two
            protcol: mysql
            uri: localhost:3306
        """
    )
    # The typo leads, ahead of the "missing protocol" it causes.
    first = e.message.splitlines()[0]
    assert first == "teleport.yaml, line 9: db_service.databases[1].protcol: unknown key"
    assert e.hint == 'did you mean "protocol"?'
    assert "databases[1].protocol: missing required key" in e.message


def test_unknown_key_in_tls() -> None:
    e = err_of(
        """\
        version: v3
        db_service:
          databases:
          - name: one
            protocol: postgres
            uri: localhost:5432
            tls:
              mdoe: insecure
        """
    )
    assert e.message == "teleport.yaml, line 8: db_service.databases[0].tls.mdoe: unknown key"
    assert e.hint == 'did you mean "mode"?'


def test_open_sections_take_any_key() -> None:
    cfg = cfg_of(
        """\
        version: v3
        ssh_service:
          enabled: no
          labels: {a: b}
          commands: []
        kubernetes_service:
          enabled: yes
          kube_cluster_name: k
        auth_service:
          authentication:
            type: github
            connector_name: gh
        """
    )
    assert not cfg.ssh_enabled
    assert cfg.kubernetes_service.enabled is True
    assert cfg.auth_service.authentication.type == "github"


def test_duplicate_key() -> None:
    e = err_of("version: v3\nteleport:\n  nodename: a\n  nodename: b\n")
    assert "duplicate key" in e.message and "line 4" in e.message


def test_literal_error_suggests() -> None:
    e = err_of("version: v3\nteleport:\n  log:\n    format:\n      output: jsn\n")
    assert e.message.startswith("teleport.yaml, line 5: teleport.log.format.output: expected")
    assert e.hint == 'did you mean "json"?'


def test_wrong_type_messages() -> None:
    e = err_of("version: v3\nteleport:\n  log: stderr\n")
    assert "line 3: teleport.log: expected a mapping" in e.message
    e = err_of("version: v3\nauth_service:\n  tokens: proxy:abc\n")
    assert "auth_service.tokens: expected a list" in e.message
    e = err_of("version: v3\nauth_service:\n  client_idle_timeout: soon\n")
    assert "auth_service.client_idle_timeout" in e.message and "duration" in e.message


# ------------------------------------------------------------ version rules


def test_v3_forbids_auth_servers() -> None:
    e = err_of("version: v3\nteleport:\n  nodename: a\n  auth_servers: [x:3025]\n")
    assert e.message.startswith("teleport.yaml, line 4: teleport.auth_servers:")
    assert "v3" in e.message
    assert e.hint is not None and "proxy_server" in e.hint


def test_v3_auth_server_and_proxy_server_together() -> None:
    e = err_of("version: v3\nteleport:\n  auth_server: a:3025\n  proxy_server: p:443\n")
    assert "line 4" in e.message and "cannot both be set" in e.message


def test_v2_rejects_v3_keys() -> None:
    e = err_of("version: v2\nteleport:\n  proxy_server: p:443\n")
    assert "line 3: teleport.proxy_server: needs config version v3" in e.message


def test_upstream_v3() -> None:
    assert cfg_of("version: v3\nteleport:\n  auth_server: auth.local\n").upstream() == (
        "auth",
        "auth.local:3025",
    )
    cfg = cfg_of("version: v3\nteleport:\n  proxy_server: p.example.com:443\n")
    assert cfg.upstream() == ("proxy", "p.example.com:443")


def test_bad_address_has_line() -> None:
    e = err_of("version: v3\nproxy_service:\n  public_addr: [ok:443, 'bad host:1']\n")
    assert e.message.startswith("teleport.yaml, line 3: proxy_service.public_addr[1]:")


# -------------------------------------------------------------- databases


DB_HEAD = "version: v3\ndb_service:\n  enabled: yes\n  databases:\n"


def test_database_entry_full() -> None:
    cfg = cfg_of(
        DB_HEAD
        + """\
  - name: example-postgres
    description: Example PostgreSQL
    protocol: postgres
    uri: postgres.example.com:5432
    ca_cert_file: /var/lib/teleport/db.ca
    static_labels: {env: dev, version: 14}
    dynamic_labels:
    - name: hostname
      command: [hostname]
      period: 1m0s
    admin_user: {name: teleport-admin}
"""
    )
    db = cfg.db_service.databases[0]
    assert db.tls.ca_cert_file == "/var/lib/teleport/db.ca"  # deprecated alias moved
    assert db.tls.mode == "verify-full"
    assert db.static_labels == {"env": "dev", "version": "14"}
    assert db.dynamic_labels[0].period == timedelta(minutes=1)
    assert db.admin_user == {"name": "teleport-admin"}


def test_database_name_and_protocol_errors() -> None:
    e = err_of(DB_HEAD + "  - name: Bad_Name\n    protocol: postgres\n    uri: x:1\n")
    assert e.message.startswith("teleport.yaml, line 5: db_service.databases[0].name:")
    assert "Bad_Name" in e.message
    e = err_of(DB_HEAD + "  - name: ok\n    protocol: postgress\n    uri: x:1\n")
    assert e.message.startswith("teleport.yaml, line 6: db_service.databases[0].protocol:")
    assert e.hint == 'did you mean "postgres"?'
    e = err_of(DB_HEAD + "  - name: ok\n    protocol: postgres\n")
    assert "db_service.databases[0].uri: missing required key" in e.message
    e = err_of(DB_HEAD + "  - name: ok\n    protocol: postgres\n    uri: x\n    tls: {mode: off}\n")
    assert "tls.mode" in e.message


def test_database_duplicate_names() -> None:
    e = err_of(
        DB_HEAD
        + "  - {name: a, protocol: mysql, uri: 'x:1'}\n  - {name: a, protocol: mysql, uri: 'y:1'}\n"
    )
    assert e.message.startswith("teleport.yaml, line 6: db_service.databases[1].name:")
    assert "first on line 5" in e.message


def test_resources_labels() -> None:
    cfg = cfg_of(
        "version: v3\ndb_service:\n  resources:\n  - labels: {'*': '*'}\n"
        "  - labels: {env: [dev, staging]}\n"
    )
    assert cfg.db_service.resources[0].labels == {"*": ["*"]}
    assert cfg.db_service.resources[1].labels == {"env": ["dev", "staging"]}


# ------------------------------------------------------------------- apps


APP_HEAD = "version: v3\napp_service:\n  enabled: yes\n  apps:\n  - name: grafana\n"


def test_app_rewrite_headers() -> None:
    cfg = cfg_of(
        APP_HEAD
        + """\
    uri: http://localhost:3000
    rewrite:
      redirect: [localhost]
      headers:
      - "X-Custom-Header: example"
      - "Authorization: Bearer {{internal.jwt}}"
      jwt_claims: roles
"""
    )
    rw = cfg.app_service.apps[0].rewrite
    assert rw is not None
    assert rw.parsed_headers() == [
        ("X-Custom-Header", "example"),
        ("Authorization", "Bearer {{internal.jwt}}"),
    ]


@pytest.mark.parametrize(
    "header", ["x-forwarded-for: 1.2.3.4", "Teleport-Jwt-Assertion: x", "Cf-Access-Token: y"]
)
def test_reserved_rewrite_header_refused(header: str) -> None:
    e = err_of(
        APP_HEAD
        + f"    uri: http://x\n    rewrite:\n      headers:\n      - ok: 1\n      - '{header}'\n"
    )
    assert "reserved" in e.message
    assert e.message.startswith("teleport.yaml, line")
    e2 = err_of(APP_HEAD + f"    uri: http://x\n    rewrite:\n      headers: ['{header}']\n")
    assert "line 8: app_service.apps[0].rewrite.headers[0]:" in e2.message


def test_header_without_colon_and_app_without_uri() -> None:
    e = err_of(APP_HEAD + "    uri: http://x\n    rewrite:\n      headers: [NoColon]\n")
    assert "Name: value" in e.message
    e = err_of(APP_HEAD + "    description: d\n")
    assert "has no uri" in e.message


# ---------------------------------------------------------- tokens & files


def test_join_token_from_file(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("  s3cr3t\n")
    cfg = cfg_of(f"version: v3\nteleport:\n  join_params:\n    token_name: {tok}\n")
    assert cfg.join_token() == "s3cr3t"
    assert cfg.teleport.join_params is not None
    assert cfg.teleport.join_params.method == "token"
    cfg = cfg_of("version: v3\nteleport:\n  auth_token: literal-value\n")
    assert cfg.join_token() == "literal-value"
    cfg = cfg_of(f"version: v3\nteleport:\n  auth_token: {tmp_path / 'missing'}\n")
    with pytest.raises(ConfigError, match="not found"):
        cfg.join_token()


def test_static_tokens(tmp_path: Path) -> None:
    tok = tmp_path / "db-token"
    tok.write_text("from-file\n")
    cfg = cfg_of(f"version: v3\nauth_service:\n  tokens: ['proxy,Node:abc', 'db:{tok}']\n")
    toks = cfg.auth_service.static_tokens()
    assert toks[0].roles == ("proxy", "node") and toks[0].token() == "abc"
    assert toks[1].roles == ("db",) and toks[1].token() == "from-file"
    e = err_of("version: v3\nauth_service:\n  tokens:\n  - 'proxy:a'\n  - 'nod:b'\n")
    assert e.message.startswith("teleport.yaml, line 5: auth_service.tokens[1]:")
    assert e.hint == 'did you mean "node"?'


def test_storage(tmp_path: Path) -> None:
    cfg = cfg_of("version: v3\nteleport:\n  data_dir: /d\n  storage:\n    path: db\n")
    assert cfg.backend_path == Path("/d/db/sqlite.db")
    cfg = cfg_of("version: v3\nteleport:\n  storage:\n    type: sqlite\n    path: /x/state.db\n")
    assert cfg.backend_path == Path("/x/state.db")
    cfg = cfg_of(
        "version: v3\nteleport:\n  storage:\n    type: etcd\n    peers: [https://e:2379]\n"
    )
    with pytest.raises(ConfigError, match="storage type etcd is not supported yet") as ei:
        cfg.validate_supported()
    assert "line 4" in ei.value.message and ei.value.hint


def test_load_config_file(tmp_path: Path) -> None:
    p = tmp_path / "teleport.yaml"
    p.write_text("version: v3\nteleport:\n  nodename: n\nproxy_service:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.message == f"{p}, line 5: proxy_service.bogus: unknown key"
    p.write_text("version: v3\nteleport:\n  nodename: n\n")
    assert load_config(p).source == p


def test_load_config_missing(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(p) in ei.value.message
    assert ei.value.hint == "create one with: teleport configure -o file:///etc/teleport.yaml"


# ------------------------------------------------------------ host:port


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("example.com", ("example.com", 3080)),
        ("example.com:443", ("example.com", 443)),
        ("[::1]:3080", ("::1", 3080)),
        ("[::1]", ("::1", 3080)),
        ("::1", ("::1", 3080)),
        (":3025", ("0.0.0.0", 3025)),
        ("https://example.com:443/", ("example.com", 443)),
        ("10.0.0.1:0", ("10.0.0.1", 0)),
    ],
)
def test_parse_hostport(text: str, want: tuple[str, int]) -> None:
    assert parse_hostport(text, 3080) == want


@pytest.mark.parametrize("text", ["", "host:", "host:port", "host:99999", "a b:1", "[::1", "[x]:1"])
def test_parse_hostport_junk(text: str) -> None:
    with pytest.raises(BadParameter):
        parse_hostport(text, 3080)
