"""tbot config v2: the seeds' YAML, both output lists, errors with lines, CLI overrides."""

from __future__ import annotations

import logging
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from jumpgate.core.bot.config import (
    DEFAULT_STORAGE_PATH,
    CLIOverrides,
    apply_overrides,
    load_config,
    parse_config,
)
from jumpgate.core.bot.config_outputs import (
    ApplicationOutputConfig,
    DatabaseOutputConfig,
    DirectoryConfig,
    IdentityOutputConfig,
    MemoryConfig,
    Reader,
)
from jumpgate.core.errors import BadParameter, ConfigError

# Seed 000 (Machine ID with Databases, v2 config), verbatim.
SEED_DB = """\
version: v2
auth_server: "example.teleport.sh:443"
onboarding:
  join_method: "token"
  token: "00000000000000000000000000000000"
  ca_pins:
  - "sha256:1111111111111111111111111111111111111111111111111111111111111111"
storage:
  type: directory
  path: /var/lib/teleport/bot
outputs:
  - type: database
    destination:
      type: directory
      path: /opt/machine-id
    # Specify the details of the database you wish to connect to.
    service: example-server
    username: alice
    database: example
    # Specify a format to use for the output credentials. For most databases,
    # this configuration field can be omitted. See the table below for the
    # databases that require a value to be specified here.
    # format: mongo
"""

# Seed 001: the database service in the newer services: list.
SEED_SERVICES = """\
version: v2
proxy_server: teleport.example.com:443
onboarding:
  join_method: token
  token: abc
services:
- type: database
  destination:
    type: directory
    path: /opt/machine-id
  # Specify the details of the database you wish to connect to.
  service: example-server
  database: example-db
  username: alice
  # Specify a format to use for the output credentials. For most databases,
  # this configuration field can be omitted.
  # format: mongo
"""

# Seed 003 (Machine ID with Application Access).
SEED_APP = """\
version: v2
auth_server: "example.teleport.sh:443"
onboarding:
  join_method: "token"
  token: "00000000000000000000000000000000"
  ca_pins:
  - "sha256:1111111111111111111111111111111111111111111111111111111111111111"
storage:
  type: directory
  path: /var/lib/teleport/bot
outputs:
  - type: application
    destination:
      type: directory
      path: /opt/machine-id
    app_name: grafana-example
"""

SEED_APP_TLS_NAMING = """\
version: v2
outputs:
  - type: application
    destination:
      type: directory
      path: /opt/machine-id
    app_name: grafana-example
    specific_tls_naming: true
"""

PIN = "sha256:" + "1" * 64


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "tbot.yaml")
    return info.value


# --------------------------------------------------------------------- seeds
def test_seed_database_config() -> None:
    cfg = parse_config(SEED_DB, "/etc/tbot.yaml")
    assert cfg.auth_server == "example.teleport.sh:443"
    assert cfg.address == "example.teleport.sh:443"
    assert cfg.onboarding.join_method == "token"
    assert cfg.onboarding.token_value() == "0" * 32
    assert cfg.onboarding.ca_pins == [PIN]
    assert cfg.storage == DirectoryConfig(path="/var/lib/teleport/bot")
    (out,) = cfg.outputs
    assert isinstance(out, DatabaseOutputConfig)
    assert (out.service, out.username, out.database, out.format) == (
        "example-server",
        "alice",
        "example",
        "",
    )
    assert out.destination == DirectoryConfig(path="/opt/machine-id")
    assert cfg.certificate_ttl == timedelta(hours=1)
    assert cfg.renewal_interval == timedelta(minutes=20)
    assert not cfg.oneshot
    assert cfg.warnings == []


def test_seed_database_formats() -> None:
    for fmt in ("mongo", "tls", "cockroach"):
        cfg = parse_config(SEED_DB.replace("# format: mongo", f"format: {fmt}"))
        out = cfg.outputs[0]
        assert isinstance(out, DatabaseOutputConfig)
        assert out.format == fmt


def test_seed_services_form() -> None:
    cfg = parse_config(SEED_SERVICES)
    assert cfg.proxy_server == "teleport.example.com:443"
    (out,) = cfg.outputs
    assert isinstance(out, DatabaseOutputConfig)
    assert out.database == "example-db"


def test_outputs_and_services_are_merged() -> None:
    cfg = parse_config(
        SEED_SERVICES + "outputs:\n  - type: identity\n    destination:\n      type: memory\n"
    )
    assert [o.type for o in cfg.outputs] == ["identity", "database"]
    assert isinstance(cfg.outputs[0].destination, MemoryConfig)


def test_seed_application_configs() -> None:
    cfg = parse_config(SEED_APP)
    (out,) = cfg.outputs
    assert isinstance(out, ApplicationOutputConfig)
    assert out.app_name == "grafana-example"
    assert not out.specific_tls_naming
    cfg = parse_config(SEED_APP_TLS_NAMING)
    out = cfg.outputs[0]
    assert isinstance(out, ApplicationOutputConfig)
    assert out.specific_tls_naming
    # no version problem, default storage
    assert cfg.storage == DirectoryConfig(path=DEFAULT_STORAGE_PATH)


# --------------------------------------------------------------------- shapes
def test_destination_forms_and_options() -> None:
    cfg = parse_config(
        textwrap.dedent(
            """\
            version: v2
            storage:
              destination:
                type: directory
                path: /srv/bot
            outputs:
              - type: identity
                destination:
                  directory: /opt/a
              - type: identity
                directory: /opt/b
                roles: [access, editor]
              - type: identity
                destination:
                  type: directory
                  path: /opt/c
                  symlinks: secure
                  acls: required
                  readers:
                    - user: app
                    - group: 1234
              - type: identity
                destination: memory://
            """
        )
    )
    assert cfg.storage == DirectoryConfig(path="/srv/bot")
    a, b, c, d = cfg.outputs
    assert a.destination == DirectoryConfig(path="/opt/a")
    assert b.destination == DirectoryConfig(path="/opt/b")
    assert b.roles == ["access", "editor"]
    assert c.destination == DirectoryConfig(
        path="/opt/c",
        symlinks="secure",
        acls="required",
        readers=[Reader(user="app"), Reader(group="1234")],
    )
    assert isinstance(d.destination, MemoryConfig)


def test_memory_storage_and_lifetimes() -> None:
    cfg = parse_config(
        "version: v2\nstorage:\n  type: memory\ncredential_ttl: 2h\nrenewal_interval: 30m\n"
        "oneshot: true\ndebug: true\ndiag_addr: 127.0.0.1:3001\n"
    )
    assert isinstance(cfg.storage, MemoryConfig)
    assert cfg.certificate_ttl == timedelta(hours=2)
    assert cfg.renewal_interval == timedelta(minutes=30)
    assert cfg.oneshot and cfg.debug
    assert cfg.diag_addr == "127.0.0.1:3001"
    cfg = parse_config("version: v2\ncertificate_ttl: 90m\n")
    assert cfg.certificate_ttl == timedelta(minutes=90)


def test_ttl_shorter_than_interval_warns() -> None:
    cfg = parse_config("version: v2\ncertificate_ttl: 10m\nrenewal_interval: 20m\n")
    assert any("shorter than the renewal interval" in w for w in cfg.warnings)
    cfg = parse_config("version: v2\ncertificate_ttl: 10m\nrenewal_interval: 20m\noneshot: true\n")
    assert cfg.warnings == []
    cfg = parse_config("version: v2\ncertificate_ttl: 48h\n")
    assert any("exceeds the maximum TTL" in w for w in cfg.warnings)


def test_token_from_file(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("  secret-token\n")
    cfg = parse_config(f"version: v2\nonboarding:\n  token: {tok}\n")
    assert cfg.onboarding.token_value() == "secret-token"
    cfg = parse_config(f"version: v2\nonboarding:\n  token: {tmp_path / 'missing'}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.onboarding.token_value()


def test_load_config_file(tmp_path: Path) -> None:
    p = tmp_path / "tbot.yaml"
    p.write_text(SEED_APP)
    assert load_config(p).source == str(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------- errors
def test_unknown_key_names_key_and_line() -> None:
    err = _err(SEED_DB.replace("    username: alice\n", "    username: alice\n    usernme: x\n"))
    assert "tbot.yaml, line 19" in err.message
    assert "outputs[0].usernme: unknown key" in err.message
    assert err.hint == 'did you mean "username"?'
    err = _err("version: v2\nonboardin:\n  token: x\n")
    assert err.message == "tbot.yaml, line 2: onboardin: unknown key"
    err = _err(
        "version: v2\noutputs:\n  - type: identity\n    destination:\n      type: directory\n      path: /x\n      mode: 1\n"
    )
    assert "line 7" in err.message and "outputs[0].destination.mode" in err.message


def test_v1_keys_and_versions() -> None:
    err = _err("version: v2\ndestinations:\n  - directory: /opt/x\n")
    assert "line 2" in err.message and "v1 key" in (err.hint or "")
    assert "v1 configs are not supported" in _err("version: v1\n").message
    cfg = parse_config("proxy_server: p:443\n")
    assert any("no version" in w for w in cfg.warnings)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("onboarding:\n  join_method: iam\n", "join method 'iam' is not supported"),
        ("onboarding:\n  join_method: magic\n", "unknown join method 'magic'"),
        (f"onboarding:\n  ca_pins: [{PIN}]\n  ca_path: /x.pem\n", "mutually exclusive"),
        ("auth_server: a:1\nproxy_server: b:2\n", "mutually exclusive"),
        ("outputs:\n  - type: database\n    directory: /x\n", "service must not be empty"),
        ("outputs:\n  - type: application\n    directory: /x\n", "app_name must not be empty"),
        (
            "outputs:\n  - type: database\n    service: s\n    format: redis\n    directory: /x\n",
            "invalid value 'redis'",
        ),
        ("outputs:\n  - type: kubernetes\n    directory: /x\n", "not supported by Jumpgate"),
        ("outputs:\n  - type: nope\n    directory: /x\n", "unknown output type"),
        ("outputs:\n  - type: identity\n", "destination: is required"),
        (
            "outputs:\n  - type: identity\n    destination:\n      type: directory\n",
            "path: must not be empty",
        ),
        (
            "outputs:\n  - type: identity\n    destination:\n      type: directory\n      path: /x\n      symlinks: maybe\n",
            "invalid value 'maybe'",
        ),
        ("renewal_interval: soon\n", "is not a duration"),
        ("certificate_ttl: 1h\ncredential_ttl: 1h\n", "not both"),
        ("diag_addr: nowhere\n", "invalid address"),
        ("oneshot: perhaps\n", "expected true or false"),
        ("outputs: {}\n", "expected a list"),
    ],
)
def test_invalid_configs(yaml_text: str, message: str) -> None:
    err = _err("version: v2\n" + yaml_text)
    assert message in err.message, err.message
    assert "tbot.yaml, line " in err.message


# --------------------------------------------------------------------- overrides
def test_cli_overrides_replace_sections(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(SEED_DB, "/etc/tbot.yaml")
    with caplog.at_level(logging.WARNING):
        out = apply_overrides(
            cfg,
            CLIOverrides(
                data_dir="/tmp/bot-data",
                destination_dir="./tbot-user",
                token="newtoken",
                proxy_server="proxy.example.com:3080",
                certificate_ttl=timedelta(minutes=30),
                renewal_interval=timedelta(minutes=10),
                oneshot=True,
                diag_addr="127.0.0.1:3001",
            ),
        )
    assert "CLI parameters are overriding configuration" in caplog.text
    assert out.storage == DirectoryConfig(path="/tmp/bot-data")
    (o,) = out.outputs
    assert isinstance(o, IdentityOutputConfig)
    assert o.destination == DirectoryConfig(path="./tbot-user")
    # the whole onboarding section is replaced: the file's pins are gone
    assert out.onboarding.token == "newtoken" and out.onboarding.ca_pins == []
    assert (out.proxy_server, out.auth_server) == ("proxy.example.com:3080", "")
    assert out.certificate_ttl == timedelta(minutes=30) and out.oneshot
    # the original is untouched
    assert cfg.onboarding.ca_pins == [PIN] and len(cfg.outputs) == 1


def test_cli_overrides_without_file_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    from jumpgate.core.bot.config import BotConfig

    base = BotConfig()
    out = apply_overrides(base, CLIOverrides(data_dir="memory://", ca_pins=[PIN], token="t"))
    assert isinstance(out.storage, MemoryConfig)
    assert out.onboarding.ca_pins == [PIN]
    with pytest.raises(BadParameter, match="not supported"):
        apply_overrides(base, CLIOverrides(join_method="github"))
    with pytest.raises(BadParameter, match="mutually exclusive"):
        apply_overrides(base, CLIOverrides(auth_server="a:1", proxy_server="b:2"))
    warned = apply_overrides(
        base,
        CLIOverrides(certificate_ttl=timedelta(minutes=5), renewal_interval=timedelta(minutes=20)),
    )
    assert any("shorter than the renewal interval" in w for w in warned.warnings)


# --------------------------------------------------------------------- engine pieces (no cluster)
def test_backoff_readiness_and_metrics() -> None:
    from datetime import UTC, datetime

    from jumpgate.core.bot.bot import Bot
    from jumpgate.core.bot.diag import metrics_text

    now = datetime(2030, 1, 1, tzinfo=UTC)
    cfg = parse_config(SEED_APP.replace("/var/lib/teleport/bot", "/nonexistent/bot"))
    cfg.storage = MemoryConfig()
    bot = Bot(cfg, clock=lambda: now, backoff_base=timedelta(seconds=5))
    delays = [bot._backoff(n) for n in (1, 2, 3, 30)]
    assert 3.75 <= delays[0] <= 6.25 and 7.5 <= delays[1] <= 12.5 and 15 <= delays[2] <= 25
    assert delays[3] <= 20 * 60 * 1.25  # capped at the renewal interval (with jitter)
    ready, body = bot.readiness()
    assert not ready and body["status"] == "unhealthy"
    (label,) = bot.states
    assert body["services"] == {label: {"status": "initializing", "reason": "not generated yet"}}
    bot.states[label].expires = now + timedelta(minutes=30)
    ready, body = bot.readiness()
    assert ready and body["services"][label]["expires"] == "2030-01-01T00:30:00Z"
    text = metrics_text(bot, now)
    assert f'tbot_output_expiry_seconds{{output="{label}"}} 1800\n' in text
    assert (
        "tbot_renewals_total 0\n" in text and "# TYPE tbot_renewal_failures_total counter" in text
    )
    bot.states[label].expires = now - timedelta(seconds=1)
    bot.states[label].last_error = "AccessDenied: nope"
    ready, body = bot.readiness()
    assert not ready and body["services"][label]["reason"] == "AccessDenied: nope"


def test_systemd_unit_rendering() -> None:
    from jumpgate.core.bot.systemd import render_unit

    text = render_unit(config="/etc/tbot.yaml")
    assert text.startswith("# Generated by `tbot`\n[Unit]\n")
    assert (
        "ExecStart=/usr/local/bin/tbot start -c /etc/tbot.yaml --pid-file=/run/tbot.pid\n" in text
    )
    assert "PIDFile=/run/tbot.pid\n" in text and 'TELEPORT_ANONYMOUS_TELEMETRY=0"' in text
    text = render_unit(
        config="/etc/tbot.yaml",
        name="my-special-bot",
        pid_file="/tmp/tbot-fake.pid",
        anonymous_telemetry=True,
    )
    assert "Description=my-special-bot - Teleport Machine & Workload Identity Service\n" in text
    assert "--pid-file=/tmp/tbot-fake.pid\n" in text and 'TELEMETRY=1"' in text
    with pytest.raises(BadParameter, match="missing required parameter --config"):
        render_unit(config="")


def test_init_selects_the_output() -> None:
    from jumpgate.core.bot.init import select_output
    from jumpgate.core.errors import NotFound

    cfg = parse_config(SEED_DB)
    assert select_output(cfg).type == "database"
    assert select_output(cfg, init_dir="/opt/machine-id").type == "database"
    with pytest.raises(NotFound, match="has not been configured"):
        select_output(cfg, init_dir="/opt/other")
    assert select_output(cfg, destination_dir="./tbot-user").type == "identity"
    two = parse_config(
        SEED_SERVICES + "outputs:\n  - type: identity\n    destination:\n      type: memory\n"
    )
    with pytest.raises(BadParameter, match="--init-dir"):
        select_output(two)
    with pytest.raises(BadParameter, match="only supports directory"):
        select_output(
            parse_config("version: v2\noutputs:\n  - type: identity\n    destination: memory://\n")
        )
