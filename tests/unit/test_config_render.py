"""Rendering configs (teleport configure, db configure create, systemd) and -o/--output."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest

from jumpgate.core.config import (
    load_config,
    parse_config,
    parse_labels,
    render_db_configure,
    render_systemd_unit,
    render_teleport_configure,
    write_output,
)
from jumpgate.core.errors import BadParameter, ConfigError


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text("0123456789abcdef\n")
    return p


def db_kwargs(token_path: Path, /, **over: object) -> dict[str, object]:
    """Seed 004's ``teleport db configure create`` flags."""
    kw: dict[str, object] = {
        "proxy": "example.teleport.sh",
        "token": str(token_path),
        "name": "example-postgres",
        "protocol": "postgres",
        "uri": "postgres.example.com:5432",
        "labels": parse_labels("env=dev"),
        "ca_cert_file": None,
        "trust_system_cert_pool": False,
        "ca_pins": [],
        "nodename": "db-host",
    }
    kw.update(over)
    return kw


# ------------------------------------------------------- db configure create


def test_db_configure_seed_flow(token_file: Path) -> None:
    text = render_db_configure(**db_kwargs(token_file))
    assert "ca_pin" not in text and "tls" not in text
    cfg = parse_config(text, "teleport.yaml")
    assert cfg.version == "v3"
    assert cfg.db_enabled
    assert not cfg.auth_enabled and not cfg.proxy_enabled and not cfg.ssh_enabled
    assert cfg.teleport.nodename == "db-host"
    assert cfg.teleport.proxy_server == "example.teleport.sh:3080"
    assert cfg.upstream() == ("proxy", "example.teleport.sh:3080")
    assert cfg.teleport.join_params is not None
    assert cfg.teleport.join_params.token_name == str(token_file)
    assert cfg.teleport.join_params.method == "token"
    assert cfg.join_token() == "0123456789abcdef"
    assert cfg.teleport.ca_pin == []
    (db,) = cfg.db_service.databases
    assert db.name == "example-postgres"
    assert db.protocol == "postgres"
    assert db.uri == "postgres.example.com:5432"
    assert db.static_labels == {"env": "dev"}
    assert db.tls.mode == "verify-full"
    assert db.tls.ca_cert_file is None
    assert db.tls.trust_system_cert_pool is False


def test_db_configure_key_order(token_file: Path) -> None:
    text = render_db_configure(**db_kwargs(token_file, ca_pins=["sha256:aa"]))
    top = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith(" ")]
    assert top == [
        "version",
        "teleport",
        "auth_service",
        "ssh_service",
        "proxy_service",
        "db_service",
    ]
    keys = [ln.strip().split(":")[0] for ln in text.splitlines() if ln.startswith("  ")][:6]
    assert keys == ["nodename", "data_dir", "proxy_server", "join_params", "token_name", "method"]
    assert parse_config(text).teleport.ca_pin == ["sha256:aa"]


def test_db_configure_custom_ca(token_file: Path) -> None:
    text = render_db_configure(
        **db_kwargs(
            token_file, proxy="example.teleport.sh:443", ca_cert_file="/var/lib/teleport/db.ca"
        )
    )
    cfg = parse_config(text)
    assert cfg.teleport.proxy_server == "example.teleport.sh:443"
    db = cfg.db_service.databases[0]
    assert db.tls.ca_cert_file == "/var/lib/teleport/db.ca"
    assert db.tls.trust_system_cert_pool is False


def test_db_configure_trust_system_cert_pool(token_file: Path) -> None:
    text = render_db_configure(
        **db_kwargs(token_file, proxy="example.teleport.sh:443", trust_system_cert_pool=True)
    )
    db = parse_config(text).db_service.databases[0]
    assert db.tls.trust_system_cert_pool is True
    assert db.tls.ca_cert_file is None


def test_db_configure_written_and_loaded(token_file: Path, tmp_path: Path) -> None:
    text = render_db_configure(**db_kwargs(token_file))
    out = tmp_path / "teleport.yaml"
    assert write_output(text, f"file://{out}") == str(out)
    cfg = load_config(out)
    assert cfg.source == out
    assert cfg.join_token() == "0123456789abcdef"


@pytest.mark.parametrize(
    ("over", "flag"),
    [
        ({"name": "Example_PG"}, "--name"),
        ({"name": "9db"}, "--name"),
        ({"protocol": "postgress"}, "--protocol"),
        ({"uri": ""}, "--uri"),
        ({"proxy": "bad host:x"}, "--proxy"),
        ({"token": ""}, "--token"),
        ({"labels": {"": "x"}}, "--labels"),
    ],
)
def test_db_configure_bad_flags(token_file: Path, over: dict[str, object], flag: str) -> None:
    with pytest.raises(BadParameter) as ei:
        render_db_configure(**db_kwargs(token_file, **over))
    assert flag in ei.value.message
    assert ei.value.hint


def test_parse_labels() -> None:
    assert parse_labels("env=dev,team=a") == {"env": "dev", "team": "a"}
    assert parse_labels("") == {}
    assert parse_labels("k=") == {"k": ""}
    with pytest.raises(BadParameter) as ei:
        parse_labels("env")
    assert ei.value.message == '--labels: "env" is not a key=value pair'
    assert ei.value.hint is not None and "env=dev" in ei.value.hint
    with pytest.raises(BadParameter, match="twice"):
        parse_labels("a=1,a=2")


# --------------------------------------------------------- teleport configure


def test_teleport_configure_round_trip() -> None:
    text = render_teleport_configure(cluster_name="example.com", public_addr=None, nodename="node1")
    assert text.startswith("version: v3\nteleport:\n  nodename: node1\n")
    cfg = parse_config(text)
    assert cfg.auth_service.cluster_name == "example.com"
    assert cfg.auth_enabled and cfg.proxy_enabled
    assert not cfg.ssh_enabled and not cfg.db_enabled
    assert cfg.auth_service.listen_addr == "0.0.0.0:3025"
    assert cfg.auth_service.proxy_listener_mode == "multiplex"
    assert cfg.auth_service.authentication.second_factor == "off"
    assert cfg.proxy_service.web_listen_addr == "0.0.0.0:3080"
    assert cfg.proxy_service.public_addr == ["node1:3080"]
    assert cfg.proxy_public_addr == "node1:3080"
    assert cfg.proxy_service.https_keypairs == []
    assert cfg.proxy_service.https_keypairs_reload_interval == timedelta(0)
    assert cfg.proxy_service.acme.enabled is None
    assert cfg.teleport.ca_pin == []
    assert cfg.teleport.log.output == "stderr"
    assert cfg.teleport.log.format.output == "text"
    assert cfg.data_dir == Path("/var/lib/teleport")
    cfg.validate_supported()


def test_teleport_configure_options() -> None:
    text = render_teleport_configure(
        cluster_name="c",
        public_addr="teleport.example.com:443",
        data_dir="/srv/tp",
        nodename="n",
        web_listen_addr="0.0.0.0:443",
        second_factor="otp",
    )
    cfg = parse_config(text)
    assert cfg.proxy_public_addr == "teleport.example.com:443"
    assert cfg.proxy_service.web_listen_addr == "0.0.0.0:443"
    assert cfg.auth_service.authentication.second_factor == "otp"
    assert cfg.data_dir == Path("/srv/tp")
    with pytest.raises(BadParameter):
        render_teleport_configure(
            cluster_name="c", public_addr=None, nodename="n", second_factor="x"
        )
    with pytest.raises(BadParameter, match="--cluster-name"):
        render_teleport_configure(cluster_name=" ", public_addr=None, nodename="n")


# -------------------------------------------------------------------- systemd


def test_systemd_unit() -> None:
    unit = render_systemd_unit()
    lines = unit.splitlines()
    assert lines[0] == "[Unit]"
    assert "Description=Teleport Service" in lines
    assert "After=network.target" in lines
    assert "Type=simple" in lines and "Restart=on-failure" in lines
    assert "EnvironmentFile=-/etc/default/teleport" in lines
    assert (
        "ExecStart=/usr/local/bin/teleport start --config /etc/teleport.yaml "
        "--pid-file=/run/teleport.pid"
    ) in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "PIDFile=/run/teleport.pid" in lines
    assert "LimitNOFILE=524288" in lines
    assert lines[-2:] == ["[Install]", "WantedBy=multi-user.target"]
    custom = render_systemd_unit(config_path="/c.yaml", teleport_binary="/b/tp", pid_file="/p")
    assert "ExecStart=/b/tp start --config /c.yaml --pid-file=/p" in custom


# ---------------------------------------------------------------- write_output


def test_write_output_stdout(tmp_path: Path) -> None:
    target = tmp_path / "teleport.yaml"
    assert write_output("x: 1\n", "stdout", default_path=str(target)) == "x: 1\n"
    assert not target.exists()


def test_write_output_file_default(tmp_path: Path) -> None:
    target = tmp_path / "teleport.yaml"
    assert write_output("a: 1\n", "file", default_path=str(target)) == str(target)
    assert target.read_text() == "a: 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # Overwrites, like `teleport db configure create -o file`.
    write_output("b: 2\n", "file", default_path=str(target))
    assert target.read_text() == "b: 2\n"


def test_write_output_file_url(tmp_path: Path) -> None:
    target = tmp_path / "custom.yaml"
    assert write_output("c: 3\n", f"file://{target}") == str(target)
    assert target.read_text() == "c: 3\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", ["json", "", "/etc/teleport.yaml", "stdout2"])
def test_write_output_bad_value(bad: str) -> None:
    with pytest.raises(BadParameter) as ei:
        write_output("x", bad)
    assert ei.value.message == '--output must be "stdout", "file" or "file:///path"'


def test_write_output_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match="absolute"):
        write_output("x", "file://relative/path.yaml")
    with pytest.raises(ConfigError, match="does not exist") as ei:
        write_output("x", f"file://{tmp_path}/missing/dir/t.yaml")
    assert ei.value.hint is not None and "mkdir" in ei.value.hint
    with pytest.raises(ConfigError, match="directory"):
        write_output("x", f"file://{tmp_path}")
