"""Helpers for the application access tests: the upstream web app, bots, curl, websockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.conftest import BIN, Cluster, assert_clean_stderr, cli_env, run

TBOT = str(BIN / "tbot")
REPO = Path(__file__).resolve().parents[2]

APP_ROLE = """\
kind: role
metadata:
  name: machine-id-app-role
version: v5
spec:
  allow:
    app_labels:
      '*': '*'
"""

DEV_ROLE = """\
kind: role
metadata:
  name: app-dev-only
version: v7
spec:
  allow:
    app_labels:
      env: dev
"""


def wait_port(port: int, *, timeout: float = 15.0) -> None:
    """Poll until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout}s", pytrace=False)
        time.sleep(0.05)


@contextlib.contextmanager
def upstream_app() -> Iterator[int]:
    """The test web app (tests/integration/app_upstream.py) in its own process; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.app_upstream", f"--port={port}"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def add_app_service(cluster: Cluster, apps: list[dict[str, Any]]) -> None:
    """Enable ``app_service`` with ``apps`` in the cluster's teleport.yaml."""
    doc = cluster.read_config()
    doc["app_service"] = {"enabled": True, "apps": apps}
    cluster.write_config(doc)


def tbot(
    *args: str | Path, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tbot``."""
    return run([TBOT, *args], check=check, timeout=timeout)


def app_bot(
    cluster: Cluster,
    root: Path,
    *,
    app: str = "grafana-example",
    roles: str = "machine-id-app-role",
    specific_tls_naming: bool = False,
) -> tuple[str, Path, Path]:
    """A bot with an ``application`` output written once: (bot user, config, destination)."""
    from tests.integration.conftest import parse_status

    name = f"app{uuid.uuid4().hex[:8]}"
    out = json.loads(cluster.tctl("bots", "add", name, f"--roles={roles}", "--format=json").stdout)
    pin = parse_status(cluster.tctl("status").stdout)["CA pin"]
    root.mkdir(parents=True, exist_ok=True)
    dest = root / "machine-id"
    cfg = root / "tbot.yaml"
    cfg.write_text(
        f"""version: v2
auth_server: "{cluster.public_addr}"
onboarding:
  join_method: "token"
  token: "{out["token_id"]}"
  ca_pins:
  - "{pin}"
storage:
  type: directory
  path: {root / "bot"}
outputs:
  - type: application
    destination:
      type: directory
      path: {dest}
    app_name: {app}
{"    specific_tls_naming: true" if specific_tls_naming else ""}
"""
    )
    proc = tbot("start", "-c", cfg, "--oneshot")
    assert f'Generated identity for app {{"{app}"}}' in proc.stderr, proc.stderr
    return f"bot-{name}", cfg, dest


def curl(
    cluster: Cluster,
    path: str,
    *args: str | Path,
    app: str = "grafana-example",
    cert: Path | None = None,
    key: Path | None = None,
    ca: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``curl`` to ``https://<app>.localhost:<web port><path>`` (``--resolve`` to loopback)."""
    host = f"{app}.localhost"
    argv: list[str | Path] = [
        "curl",
        "-sS",
        "--max-time",
        "60",
        "--resolve",
        f"{host}:{cluster.web_port}:127.0.0.1",
    ]
    if cert is not None:
        argv += ["--cert", cert]
    if key is not None:
        argv += ["--key", key]
    if ca is not None:
        argv += ["--cacert", ca]
    argv += [*args, f"https://{host}:{cluster.web_port}{path}"]
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert_clean_stderr(proc)
    if check and proc.returncode != 0:
        pytest.fail(f"curl exited {proc.returncode}: {proc.stderr}", pytrace=False)
    return proc


def split_response(out: str) -> tuple[int, dict[str, str], str]:
    """``curl -i`` output: (status, headers with lower-case names, body)."""
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def tls_context(dest: Path) -> ssl.SSLContext:
    """Client TLS with the output's certificate, trusting the cluster's host CA."""
    ctx = ssl.create_default_context(cafile=str(dest / "teleport-host-ca.crt"))
    ctx.load_cert_chain(str(dest / "tlscert"), str(dest / "key"))
    return ctx


def websocket_echo(
    url: str, messages: list[str], *, ssl_ctx: ssl.SSLContext | None = None, resolve_port: int = 0
) -> list[str]:
    """Send ``messages`` over a websocket at ``url``; return the answers."""
    import aiohttp

    async def main() -> list[str]:
        connector = None
        if resolve_port:
            from aiohttp.abc import AbstractResolver

            class Loopback(AbstractResolver):
                async def resolve(
                    self, host: str, port: int = 0, family: int = 0
                ) -> list[dict[str, Any]]:
                    return [
                        {
                            "hostname": host,
                            "host": "127.0.0.1",
                            "port": port,
                            "family": socket.AF_INET,
                            "proto": 0,
                            "flags": 0,
                        }
                    ]

                async def close(self) -> None:
                    return None

            connector = aiohttp.TCPConnector(resolver=Loopback(), ssl=ssl_ctx)
        async with (
            aiohttp.ClientSession(connector=connector) as sess,
            sess.ws_connect(url, ssl=ssl_ctx if connector is None else None) as ws,
        ):
            out = []
            for m in messages:
                await ws.send_str(m)
                out.append(await asyncio.wait_for(ws.receive_str(), 30))
            return out

    return asyncio.run(main())


def start_tbot_proxy(*args: str | Path, ready: str) -> subprocess.Popen[str]:
    """``tbot *args`` in the background until it prints ``ready``."""
    proc = subprocess.Popen(
        [TBOT, *[str(a) for a in args]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    assert proc.stdout is not None
    seen = []
    while True:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"tbot exited early ({proc.wait()}):\n{''.join(seen)}", pytrace=False)
        seen.append(line)
        if ready in line:
            return proc


def stop_process(proc: subprocess.Popen[str]) -> str:
    """SIGINT, then the rest of its output (it must exit 0 without a traceback)."""
    import signal

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "Traceback" not in (out or ""), out
    return out or ""


def audit_events(cluster: Cluster, *types: str) -> list[dict[str, Any]]:
    """``tctl audit ls --format=json`` filtered by event types."""
    argv = ["audit", "ls", "--format=json", "--since=1h", "--limit=5000"]
    for t in types:
        argv.append(f"--type={t}")
    return list(json.loads(cluster.tctl(*argv).stdout))


def wait_for_event(
    cluster: Cluster, event: str, *, timeout: float = 20.0, **fields: Any
) -> dict[str, Any]:
    """Poll the audit log until an ``event`` with ``fields`` appears."""
    deadline = time.monotonic() + timeout
    while True:
        for ev in audit_events(cluster, event):
            if all(ev.get(k) == v for k, v in fields.items()):
                return ev
        if time.monotonic() > deadline:
            pytest.fail(f"no {event} event with {fields} within {timeout}s", pytrace=False)
        time.sleep(0.2)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def served_dns_names(port: int, server_name: str) -> list[str]:
    """The DNS names of the certificate the proxy on ``port`` presents for SNI
    ``server_name`` (fetched with ``openssl s_client``, read with ``openssl x509``)."""
    hello = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=hello.stdout,
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout.decode()
    return [part.strip()[4:] for part in text.split(",") if part.strip().startswith("DNS:")]
