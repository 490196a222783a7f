"""Seed guide 003, "Machine ID with Application Access", replayed against Jumpgate.

The guide's files appear as printed (role.yaml, /etc/tbot.yaml with the
troubleshooting section's ``specific_tls_naming: true``, the systemd unit); only
host names, ports and paths are substituted:

* the proxy (``example.teleport.sh:443`` / ``teleport.example.com:443``) is the test
  cluster's ``localhost:<free port>``; ``grafana-example`` is a real web app (an
  aiohttp stand-in for Grafana answering ``/api/users``) served by the cluster's
  App Service, so its address is ``grafana-example.localhost:<port>``;
* ``/etc``, ``/opt/machine-id`` and ``/var/lib/teleport/bot`` live in a private
  directory; the Linux users ``teleport`` and ``app`` get unique names;
* the proxy's certificate is cluster-signed (no public wildcard CA), so curl gets
  ``--cacert`` as the guide says it would need, and ``--resolve`` for the subdomain;
* ``tbot proxy … app --port=1234`` uses a free port instead of 1234.

If a command of the guide stops working as shown, the test fails: fix Jumpgate.
"""

from __future__ import annotations

import json
import pwd
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.e2e.machine_id import (
    TBOT,
    Unit,
    bots_add_token,
    linux_users,
    port_open,
    public_root,
    require_root_tools,
    run_as,
    wait_for,
)
from tests.integration.apphelpers import add_app_service, upstream_app
from tests.integration.conftest import Cluster, cli_env, make_cluster, parse_status, run

ROLE = """\
kind: role
metadata:
  name: machine-id-app-role
version: v5
spec:
  allow:
    app_labels:
      '*': '*'
"""

TBOT_YAML = """\
version: v2
auth_server: "{proxy}"
onboarding:
  join_method: "token"
  token: "{token}"
  ca_pins:
  - "{pin}"
storage:
  type: directory
  path: {root}/var/lib/teleport/bot
outputs:
  - type: application
    destination:
      type: directory
      path: {root}/opt/machine-id
    app_name: grafana-example
    specific_tls_naming: true
"""

UNIT = """\
[Unit]
Description=Teleport Machine ID Service
After=network.target

[Service]
Type=simple
User={teleport}
Group={teleport}
Restart=on-failure
Environment="TELEPORT_ANONYMOUS_TELEMETRY=1"
ExecStart=/usr/local/bin/tbot start -c {root}/etc/tbot.yaml
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/machine-id.pid
LimitNOFILE=524288

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    require_root_tools()
    with upstream_app() as port:
        cluster = make_cluster(tmp_path_factory.mktemp("seed003") / "cluster")
        add_app_service(cluster, [{"name": "grafana-example", "uri": f"http://127.0.0.1:{port}"}])
        cluster.start()
        try:
            with linux_users("teleport", "app") as users:
                yield cluster, {k: u.pw_name for k, u in users.items()}
        except BaseException:
            cluster.kill()
            raise
        cluster.stop(timeout=60)


def curl_as(user: str, cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    host = f"grafana-example.localhost:{cluster.web_port}"
    return run_as(
        user,
        ["curl", "-sS", "--max-time", "30", "--resolve", f"{host}:127.0.0.1", *args],
    )


def test_seed_003_machine_id_with_application_access(
    world: tuple[Cluster, dict[str, str]],
) -> None:
    c, users = world
    teleport, app = users["teleport"], users["app"]
    with public_root() as root:
        (root / "etc").mkdir()
        dest = root / "opt/machine-id"
        url = f"https://grafana-example.localhost:{c.web_port}/api/users"

        # Step 1/3: role.yaml, tctl create
        (root / "role.yaml").write_text(ROLE)
        c.tctl("create", "-f", str(root / "role.yaml"))

        # Step 2/3: the bot, /etc/tbot.yaml, tbot init, the bot directory, the unit
        token = bots_add_token(
            c.tctl("bots", "add", "example", "--roles=machine-id-app-role").stdout
        )
        pin = parse_status(c.tctl("status").stdout)["CA pin"]
        cfg = root / "etc/tbot.yaml"
        cfg.write_text(TBOT_YAML.format(proxy=c.public_addr, token=token, pin=pin, root=root))
        run(
            [
                TBOT,
                "init",
                "-c",
                cfg,
                f"--init-dir={dest}",
                f"--bot-user={teleport}",
                f"--owner={teleport}:{teleport}",
                f"--reader-user={app}",
            ]
        )
        bot_dir = root / "var/lib/teleport/bot"
        bot_dir.mkdir(parents=True)
        import shutil

        shutil.chown(bot_dir, teleport, teleport)
        for d in (root / "var/lib/teleport", bot_dir):
            d.chmod(d.stat().st_mode | 0o111)
        unit = Unit.write(root / "machine-id.service", UNIT.format(teleport=teleport, root=root))
        unit.start()
        try:
            wait_for(
                "tbot writes the application output",
                lambda: (
                    (
                        (dest / "tls.crt").exists()
                        and b"CERTIFICATE" in (dest / "tls.crt").read_bytes()
                    )
                    or not unit.alive()
                ),
            )
            assert unit.alive(), unit.context()
            # journalctl -u machine-id | grep -i app (logged just after the files are written)
            wait_for(
                "tbot logs the application output",
                lambda: (
                    'Generated identity for app {"grafana-example"}' in unit.log()
                    or not unit.alive()
                ),
            )
            assert unit.alive(), unit.context()
            assert pwd.getpwuid((dest / "tlscert").stat().st_uid).pw_name == teleport

            # Step 3/3: curl with the bot's certificate, as the app user
            ca = str(dest / "teleport-host-ca.crt")
            out = curl_as(
                app,
                c,
                "--user",
                "admin:admin",
                "--cert",
                str(dest / "tlscert"),
                "--key",
                str(dest / "key"),
                "--cacert",
                ca,
                url,
            )
            assert out.returncode == 0, out.stderr
            assert [u["login"] for u in json.loads(out.stdout)] == ["admin", "viewer"]
            # specific_tls_naming: tls.crt and tls.key hold the same credentials
            assert (dest / "tls.crt").read_bytes() == (dest / "tlscert").read_bytes()
            out = curl_as(
                app,
                c,
                "--cert",
                str(dest / "tls.crt"),
                "--key",
                str(dest / "tls.key"),
                "--cacert",
                ca,
                url,
            )
            assert json.loads(out.stdout)[0]["login"] == "admin", out.stderr

            # Without valid certificates: the login page
            page = curl_as(app, c, "-i", "-H", "Accept: text/html", "--cacert", ca, url)
            assert page.stdout.startswith("HTTP/1.1 302"), page.stdout
            assert f"Location: https://{c.public_addr}/web/login?redirect=" in page.stdout
            # "scripted clients will be redirected to the Teleport login page", told why
            api = curl_as(app, c, "-i", "--cacert", ca, url)
            assert api.stdout.startswith("HTTP/1.1 302"), api.stdout
            assert f"Location: https://{c.public_addr}/web/login?redirect=" in api.stdout
            assert "needs a valid certificate" in api.stdout
            asks_json = curl_as(app, c, "-i", "-H", "Accept: application/json", "--cacert", ca, url)
            assert asks_json.stdout.startswith("HTTP/1.1 401"), asks_json.stdout
            assert "/web/login?redirect=" in asks_json.stdout  # the JSON error names the login page
            login = run(
                ["curl", "-sS", "--cacert", ca, f"https://{c.public_addr}/web/login"], timeout=30
            )
            assert "tsh apps login" in login.stdout

            # Proxy note: tbot proxy ... app --port=1234 grafana-example, then plain HTTP
            port = free_port()
            proxy = subprocess.Popen(
                [
                    TBOT,
                    "proxy",
                    f"--destination-dir={dest}",
                    f"--proxy={c.public_addr}",
                    "app",
                    f"--port={port}",
                    "grafana-example",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=cli_env(),
            )
            try:
                wait_for(
                    "tbot proxy app listens", lambda: port_open(port) or proxy.poll() is not None
                )
                assert proxy.poll() is None
                out = run(
                    ["curl", "-sS", "--user", "admin:admin", f"http://localhost:{port}/api/users"],
                    timeout=30,
                )
                assert json.loads(out.stdout)[1]["login"] == "viewer"
            finally:
                proxy.terminate()
                proxy.wait(timeout=15)
                assert proxy.stdout is not None and "Traceback" not in proxy.stdout.read()
                proxy.stdout.close()
        finally:
            unit.stop()
