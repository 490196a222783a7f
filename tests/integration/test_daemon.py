"""``teleport``: the daemon's web port, its lifecycle, and its configuration helpers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jumpgate.core.auth.client import AuthClient
from jumpgate.core.auth.identityfile import read_identity_file
from jumpgate.core.config import load_config
from jumpgate.core.version import VERSION
from tests.integration.conftest import (
    CLUSTER_NAME,
    TELEPORT,
    Cluster,
    make_cluster,
    parse_status,
    run,
    running_cluster,
)

ROLE_YAML = """\
kind: role
version: v7
metadata:
  name: survivor
spec:
  allow:
    db_labels:
      '*': '*'
"""


@pytest.fixture(scope="module")
def host_ca(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's host CA (``tctl auth export --type=tls-host``), to verify the proxy with."""
    path = tmp_path_factory.mktemp("ca") / "host-ca.pem"
    path.write_text(cluster.tctl("auth", "export", "--type=tls-host").stdout)
    return path


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of this test's own, for tests that stop and restart it."""
    with running_cluster(tmp_path / "own") as c:
        yield c


def curl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """curl with certificate verification on (no -k), failing on HTTP errors."""
    return run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "10", *args], check=check
    )


def get_json(cluster: Cluster, host_ca: Path, path: str, host: str = "localhost") -> dict[str, Any]:
    url = f"https://{host}:{cluster.web_port}{path}"
    doc = json.loads(curl("--cacert", host_ca, url).stdout)
    assert isinstance(doc, dict)
    return doc


def status_rows(cluster: Cluster) -> dict[str, str]:
    return parse_status(cluster.tctl("status").stdout)


# ---------------------------------------------------------------------- web API
@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_webapi_ping_and_find_over_a_verified_connection(
    cluster: Cluster, host_ca: Path, prefix: str
) -> None:
    ping = get_json(cluster, host_ca, f"{prefix}/webapi/ping")
    assert ping["cluster_name"] == CLUSTER_NAME
    assert ping["server_version"] == VERSION
    assert ping["auth"]["second_factor"] == "off"
    assert ping["proxy"]["tls_routing_enabled"] is True
    assert ping["proxy"]["ssh"]["public_addr"] == cluster.public_addr

    find = get_json(cluster, host_ca, f"{prefix}/webapi/find")
    assert "auth" not in find
    assert find["cluster_name"] == CLUSTER_NAME
    assert find["server_version"] == VERSION
    assert find["proxy"]["tls_routing_enabled"] is True


def test_proxy_certificate_verifies_for_loopback_addresses(cluster: Cluster, host_ca: Path) -> None:
    # the certificate names localhost, 127.0.0.1 and ::1
    assert (
        get_json(cluster, host_ca, "/webapi/find", host="127.0.0.1")["cluster_name"] == CLUSTER_NAME
    )
    resolved = curl(
        "--cacert",
        host_ca,
        "--resolve",
        f"localhost:{cluster.web_port}:127.0.0.1",
        f"https://localhost:{cluster.web_port}/webapi/find",
    )
    assert json.loads(resolved.stdout)["cluster_name"] == CLUSTER_NAME
    # and no other CA vouches for it
    untrusted = curl(f"https://localhost:{cluster.web_port}/webapi/find", check=False)
    assert untrusted.returncode == 60, untrusted.stderr


def test_no_certificate_is_minted_for_an_unknown_app_subdomain(
    cluster: Cluster, host_ca: Path
) -> None:
    """The proxy presents certificates only for applications it serves (APP-SEC-4: any
    name used to make it mint and keep one); a registered app's subdomain is covered
    (tests/integration/test_app_access.py)."""
    port = cluster.web_port
    proc = run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--cacert",
            host_ca,
            "--resolve",
            f"grafana.localhost:{port}:127.0.0.1",
            f"https://grafana.localhost:{port}/api/users",
        ],
        check=False,
    )
    assert proc.returncode == 60, f"curl exited {proc.returncode}: {proc.stderr}"
    assert "grafana.localhost" in proc.stderr
    minted = list((cluster.data_dir / "proc").glob("*grafana*"))
    assert minted == [], minted


def test_unknown_alpn_protocol_is_refused(cluster: Cluster) -> None:
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            cluster.web_addr,
            "-alpn",
            "bogus",
            "-servername",
            "localhost",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert proc.returncode != 0
    assert "no application protocol" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    cluster.assert_alive()


# ---------------------------------------------------------------------- lifecycle
def test_second_start_on_the_same_data_dir_refuses(cluster: Cluster) -> None:
    proc = run([TELEPORT, "start", "-c", cluster.config], check=False, timeout=20)
    assert proc.returncode != 0
    assert "in use by another teleport process" in proc.stderr
    assert str(cluster.pid) in proc.stderr
    assert "Traceback" not in proc.stderr
    # the running one is unharmed
    cluster.assert_alive()
    assert status_rows(cluster)["Cluster"] == CLUSTER_NAME


def test_sighup_reloads_and_keeps_serving(cluster: Cluster, host_ca: Path) -> None:
    before = status_rows(cluster)
    mark = len(cluster.log())
    cluster.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    cluster.wait_for_log("reload: done", after=mark)
    cluster.assert_alive()
    assert status_rows(cluster) == before
    assert get_json(cluster, host_ca, "/webapi/ping")["cluster_name"] == CLUSTER_NAME


def test_restart_keeps_the_cluster_and_refuses_a_rename(own_cluster: Cluster) -> None:
    c = own_cluster
    c.tctl("create", input=ROLE_YAML)
    before = status_rows(c)
    c.stop()

    c.start()
    after = status_rows(c)
    assert after["Cluster"] == CLUSTER_NAME
    assert after["CA pin"] == before["CA pin"]
    assert "survivor" in c.tctl("get", "role/survivor").stdout
    # the audit log was flushed at shutdown and survives the restart
    admin = AuthClient(c.auth_addr, read_identity_file(c.data_dir / "proc" / "admin.pem"))
    events = admin.call("events.search", types=["role.created"])
    assert any(e.get("name") == "survivor" for e in events), events

    c.stop()
    doc = c.read_config()
    doc["auth_service"]["cluster_name"] = "renamed.example.com"  # type: ignore[index]
    c.write_config(doc)
    proc = run([TELEPORT, "start", "-c", c.config], check=False, timeout=20)
    assert proc.returncode != 0
    assert proc.stderr.count("ERROR: ") == 1, proc.stderr
    assert f'"{CLUSTER_NAME}"' in proc.stderr
    assert '"renamed.example.com"' in proc.stderr
    assert not c.running


# ---------------------------------------------------------------------- configuration
def test_unknown_config_key_names_the_line_and_suggests_the_right_one(tmp_path: Path) -> None:
    c = make_cluster(tmp_path)
    text = c.config.read_text()
    assert "  web_listen_addr:" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  web_listen_addr:", "  web_listen_adr:"))
    line = next(i for i, ln in enumerate(bad.read_text().splitlines(), 1) if "web_listen_adr" in ln)

    proc = run([TELEPORT, "start", "-c", bad], check=False, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"\bline {line}\b", proc.stderr), proc.stderr
    assert "web_listen_adr" in proc.stderr
    assert '"web_listen_addr"' in proc.stderr
    assert not c.data_dir.exists()


def test_install_systemd_writes_a_unit(tmp_path: Path) -> None:
    unit = tmp_path / "teleport.service"
    config = tmp_path / "teleport.yaml"
    run([TELEPORT, "install", "systemd", "-o", unit, "--config", config])
    text = unit.read_text()
    assert "[Service]" in text
    assert "[Install]" in text
    (exec_start,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    assert "start --config" in exec_start
    assert str(config) in exec_start
    binary = exec_start.removeprefix("ExecStart=").split()[0]
    assert binary.endswith("/teleport")


def test_version() -> None:
    out = run([TELEPORT, "version"]).stdout
    assert re.match(
        rf"Jumpgate teleport v{re.escape(VERSION)} \(Teleport \d+\.\d+\.\d+ compatible\)", out
    )


def test_db_configure_create_writes_a_loadable_agent_config(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef\n")
    out = tmp_path / "db.yaml"
    proc = run(
        [
            TELEPORT,
            "db",
            "configure",
            "create",
            "-o",
            f"file://{out}",
            f"--token={token_file}",
            "--proxy=localhost:3080",
            "--name=example-postgres",
            "--protocol=postgres",
            "--uri=localhost:5432",
            "--labels=env=dev",
        ]
    )
    assert str(out) in proc.stderr
    cfg = load_config(out)
    assert cfg.db_enabled
    assert not cfg.auth_enabled
    assert not cfg.proxy_enabled
    assert cfg.teleport.proxy_server == "localhost:3080"
    assert cfg.join_token() == "0123456789abcdef"
    (db,) = cfg.db_service.databases
    assert (db.name, db.protocol, db.uri) == ("example-postgres", "postgres", "localhost:5432")
    assert db.static_labels == {"env": "dev"}
