"""The core helpers behind the dashboard (no Textual): wizard files, snippets, discovery, filter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jumpgate.core.client import dbsetup, snippets
from jumpgate.core.client.discovery import (
    discover_local_proxies,
    find_tbot_pid,
    parse_metrics,
    renew_now,
)
from jumpgate.core.errors import BadParameter, ConfigError, NotFound
from jumpgate.core.resources import parse_documents
from jumpgate.tui.screens.databases import database_rows
from jumpgate.tui.widgets.resource_table import parse_filter, row_matches

SEED_ROLE = """\
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
"""


def test_role_yaml_is_the_seed_role_and_parses() -> None:
    form = dbsetup.RoleForm("example-role", {"*": "*"}, ["example-db"], ["alice"])
    assert dbsetup.role_yaml(form) == SEED_ROLE
    (role,) = parse_documents(dbsetup.validate_role(form), "role.yaml")
    assert role.metadata.name == "example-role"


def test_role_form_problems_and_label_errors() -> None:
    with pytest.raises(BadParameter, match="db names"):
        dbsetup.validate_role(dbsetup.RoleForm("r", {"*": "*"}, [], ["alice"]))
    with pytest.raises(BadParameter, match="invalid label 'env'"):
        dbsetup.parse_labels("env")
    assert dbsetup.parse_labels("env=dev, team = a") == {"env": "dev", "team": "a"}
    assert dbsetup.split_list("a, b c") == ["a", "b", "c"]


def test_tbot_yaml_new_config_parses_as_tbot_reads_it() -> None:
    form = dbsetup.OutputForm(
        service="example-server",
        database="example-db",
        username="alice",
        destination="/opt/machine-id",
        config_path="/etc/tbot.yaml",
        proxy_server="proxy.example.com:3080",
        token="abc123",
        ca_pin="sha256:" + "0" * 64,
    )
    assert form.problems(new_config=True) == []
    text = dbsetup.tbot_yaml(form, None)
    cfg = dbsetup.validate_tbot_yaml(text, "tbot.yaml")
    assert cfg.proxy_server == "proxy.example.com:3080"
    (out,) = cfg.outputs
    assert (out.type, out.service, out.database, out.username) == (  # type: ignore[union-attr]
        "database",
        "example-server",
        "example-db",
        "alice",
    )


def test_tbot_yaml_adds_to_an_existing_config_and_replaces_the_same_destination() -> None:
    existing = "version: v2\nproxy_server: p:443\nonboarding: {token: t}\nservices:\n- type: identity\n  destination: {type: directory, path: /opt/id}\n"
    form = dbsetup.OutputForm(service="s", database="d", destination="/opt/db", format="tls")
    once = dbsetup.tbot_yaml(form, existing)
    twice = dbsetup.tbot_yaml(form, once)
    doc = yaml.safe_load(twice)
    assert [s["type"] for s in doc["services"]] == ["identity", "database"]
    assert doc["services"][1]["format"] == "tls"
    with pytest.raises(ConfigError):
        dbsetup.validate_tbot_yaml("version: v2\nbogus: 1\n", "tbot.yaml")


def test_proxy_unit_is_the_seed_unit() -> None:
    form = dbsetup.ProxyForm(port=12345)
    unit = dbsetup.proxy_unit(
        form,
        config="/etc/tbot.yaml",
        proxy="proxy.example.com:3080",
        destination="/opt/machine-id",
        service="example-server",
    )
    assert (
        "ExecStart=/usr/local/bin/tbot -c /etc/tbot.yaml proxy --proxy=proxy.example.com:3080 "
        "--destination-dir=/opt/machine-id db --port=12345 example-server\n"
    ) in unit
    assert "PIDFile=/run/tbot-db-proxy.pid" in unit and "LimitNOFILE=8192" in unit
    tunnel = dbsetup.proxy_unit(
        dbsetup.ProxyForm(port=1, tunnel=True), config="c", proxy="p", destination="d", service="s"
    )
    assert "db --port=1 --tunnel s" in tunnel
    assert dbsetup.ProxyForm(port=0).problems()


def test_write_text_is_atomic_with_the_mode(tmp_path: Path) -> None:
    path = dbsetup.write_text(tmp_path / "a" / "b" / "tbot.yaml", "x: 1\n", mode=0o600)
    assert path.read_text() == "x: 1\n" and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["tbot.yaml"]
    with pytest.raises(BadParameter, match="cannot write"):
        dbsetup.write_text(path / "under-a-file", "x")


def test_atomic_create_never_replaces_a_file_that_is_there(tmp_path: Path) -> None:
    from jumpgate.core.fsutil import atomic_write

    path = tmp_path / "tbot.yaml"
    atomic_write(path, "first\n", replace=False)
    assert path.read_text() == "first\n" and (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):
        atomic_write(path, "second\n", replace=False)
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tbot.yaml"]  # no temp file left


def new_output(config_path: Path) -> dbsetup.OutputForm:
    return dbsetup.OutputForm(
        service="example-server",
        database="example-db",
        username="alice",
        destination="/opt/machine-id",
        proxy_server="proxy.example.com:3080",
        token="abc123",
        config_path=str(config_path),
    )


OTHERS_CONFIG = (
    "version: v2\nproxy_server: p.example.com:443\nonboarding: {token: t}\n"
    "services:\n- type: identity\n  destination: {type: directory, path: /opt/id}\n"
)


def test_write_config_merges_into_a_file_created_after_it_was_found_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer creates tbot.yaml between the wizard's last read and its write:
    the wizard's output is merged into that file, which is not replaced."""
    path = tmp_path / "tbot.yaml"
    reads = []
    real_read = dbsetup.read_config

    def racing_read(p: str) -> str | None:
        got = real_read(p)
        reads.append(got)
        if len(reads) == 2:  # the re-check right before the write: the other writer wins
            path.write_text(OTHERS_CONFIG)
        return got

    monkeypatch.setattr(dbsetup, "read_config", racing_read)
    written = dbsetup.write_config(new_output(path))
    doc = yaml.safe_load(path.read_text())
    assert path.read_text() == written
    assert [s["type"] for s in doc["services"]] == ["identity", "database"]
    assert doc["proxy_server"] == "p.example.com:443"  # the other writer's file, kept


def test_write_config_refuses_a_dangling_symlink_and_writes_through_a_live_one(
    tmp_path: Path,
) -> None:
    """A dangling link is neither followed (the dashboard may run as root: it would create
    whatever file the link names) nor replaced; a live one is written through."""
    target = tmp_path / "etc" / "tbot.yaml"
    link = tmp_path / "tbot.yaml"
    link.symlink_to(target)
    with pytest.raises(BadParameter, match=r"symbolic link .* does not exist"):
        dbsetup.write_config(new_output(link))
    assert link.is_symlink() and not target.exists() and not target.parent.exists()
    target.parent.mkdir()
    target.write_text("")  # what the hint says: create the file it points to
    dbsetup.write_config(new_output(link))
    assert link.is_symlink() and "example-db" in target.read_text()


def test_snippets_name_the_real_files() -> None:
    p = snippets.for_destination(
        "/opt/machine-id", user="alice", database="example-db", port=1234, tunnel=False
    )
    assert snippets.libpq(p) == (
        "host=localhost port=1234 dbname=example-db user=alice sslmode=verify-full "
        "sslrootcert=/opt/machine-id/teleport-host-ca.crt sslkey=/opt/machine-id/key "
        "sslcert=/opt/machine-id/tlscert"
    )
    go = snippets.pgx(p)
    assert '"sslrootcert=/opt/machine-id/teleport-host-ca.crt ",' in go
    assert "authenticated tunnel" in go and "github.com/jackc/pgx/v4/stdlib" in go
    compile(snippets.psycopg(p), "snippet.py", "exec")
    t = snippets.for_destination("/d", user="a b", database="x", port=5, tunnel=True)
    assert snippets.libpq(t) == "host=localhost port=5 dbname=x user='a b' sslmode=disable"
    assert snippets.url(t) == "postgres://a%20b@localhost:5/x?sslmode=disable"
    assert snippets.psql(t).startswith("psql 'host=localhost")


def _status(d: Path, pid: int, port: int) -> None:
    d.mkdir(exist_ok=True)
    (d / f"{pid}-{port}.json").write_text(
        json.dumps(
            {
                "pid": pid,
                "listen": f"127.0.0.1:{port}",
                "mode": "tunnel",
                "target": "pg",
                "started": "2026-01-01T00:00:00Z",
                "bytes_in": 10,
                "connections_live": 1,
            }
        )
    )


def test_discovery_skips_status_files_of_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _status(tmp_path, os.getpid(), 5000)
    _status(tmp_path, dead.pid, 5001)
    (tmp_path / "junk.json").write_text("{not json")
    (found,) = discover_local_proxies([tmp_path, tmp_path / "missing"])
    assert (found.pid, found.listen, found.program, found.bytes_in) == (
        os.getpid(),
        "127.0.0.1:5000",
        "jumpgate",
        10,
    )
    assert found.uptime().total_seconds() > 0


def test_tbot_pid_from_a_pid_file_and_renew_of_a_gone_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "tbot.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert find_tbot_pid(str(tmp_path / "tbot.yaml"), str(pid_file)) == os.getpid()
    assert find_tbot_pid(str(tmp_path / "nothing-runs-this.yaml")) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(NotFound, match="no longer running"):
        renew_now(dead.pid)


def test_parse_metrics() -> None:
    text = '# HELP x\ntbot_renewals_total 3\ntbot_output_healthy{output="a b"} 1\n'
    assert parse_metrics(text) == {
        "tbot_renewals_total": 3.0,
        'tbot_output_healthy{output="a b"}': 1.0,
    }


def test_typed_filters_narrow_to_the_same_rows_as_a_full_scan() -> None:
    """What the table shows after each keystroke equals a fresh filter of every row."""
    import asyncio

    from textual.app import App, ComposeResult

    from jumpgate.tui.widgets.resource_table import ResourceTable

    dbs = [
        {"name": f"db-{i}", "protocol": "postgres", "labels": {"env": ["dev", "prod"][i % 2]}}
        for i in range(300)
    ]
    rows = database_rows(dbs)

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield ResourceTable([("Name", 10)])

    async def scenario() -> None:
        app = One()
        async with app.run_test():
            table = app.query_one(ResourceTable)
            table.set_rows(rows)
            for typed in ("env=prod 1", "db-2 x", "1 env=dev 2", "pro env= 9"):
                for n in range(len(typed) + 1):
                    text = typed[:n]
                    table.filter(text)
                    words, labels = parse_filter(text)
                    want = [i for i, r in enumerate(rows) if row_matches(r, words, labels)]
                    assert table.view == want, text

    asyncio.run(scenario())


def test_the_dashboard_finds_proxies_in_the_profile_home_the_default_home_and_extra_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``tbot proxy`` started without TELEPORT_HOME writes to ``~/.tsh/proxies``: the
    dashboard, on another profile home, lists it too (and each proxy once)."""
    from jumpgate.tui.state import DashboardState, Options

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    profile_home, extra = tmp_path / "profile", tmp_path / "extra"
    for d, port in ((profile_home / "proxies", 5000), (tmp_path / "home/.tsh/proxies", 5001)):
        d.mkdir(parents=True)
        _status(d, os.getpid(), port)
    extra.mkdir()
    _status(extra, os.getpid(), 5002)
    state = DashboardState(
        Options(home=str(profile_home), proxies_dirs=[str(extra), str(profile_home / "proxies")])
    )
    assert [p.listen for p in state.local_proxies()] == [
        "127.0.0.1:5000",
        "127.0.0.1:5001",
        "127.0.0.1:5002",
    ]
