"""Helpers shared by the ``tsh`` and database access integration tests.

They drive the installed console scripts as a user would: ``tsh`` with its own
``TELEPORT_HOME`` and ``PGSERVICEFILE``, the invite form posted as a browser
would, ``tsh proxy db`` in the background.
"""

from __future__ import annotations

import http.client
import signal
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, assert_clean_stderr, cli_env

TSH = str(Path(sys.executable).parent / "tsh")
PASSWORD = "a long enough passphrase"


def tsh_env(home: Path) -> dict[str, str]:
    """The console-script environment with ``TELEPORT_HOME=home`` and a private pg service file."""
    env = cli_env()
    env["TELEPORT_HOME"] = str(home)
    env["PGSERVICEFILE"] = str(home.parent / "pg_service.conf")
    return env


def tsh(
    home: Path,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``tsh`` with ``TELEPORT_HOME=home``; with ``check`` require exit 0."""
    proc = subprocess.run(
        [TSH, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=tsh_env(home),
        timeout=timeout,
        check=False,
    )
    assert_clean_stderr(proc)
    if check and proc.returncode != 0:
        pytest.fail(
            f"tsh {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
            f"\n--- stderr\n{proc.stderr}",
            pytrace=False,
        )
    return proc


def login(
    cluster: Cluster,
    home: Path,
    user: str,
    *flags: str,
    password: str = PASSWORD,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``tsh login`` with the password on stdin (not a terminal)."""
    proxy = f"--proxy={cluster.public_addr}"
    return tsh(home, "login", f"--user={user}", *flags, proxy, input=password + "\n", check=check)


def invite_user(cluster: Cluster, host_ca: str, user: str, *add_flags: str) -> None:
    """``tctl users add user *add_flags`` then the invite form post, as the user's browser would."""
    import re

    out = cluster.tctl("users", "add", user, *add_flags).stdout
    (url,) = re.findall(r"https://\S+/web/invite/[0-9a-f]+", out)
    ctx = ssl.create_default_context(cadata=host_ca)
    conn = http.client.HTTPSConnection("localhost", cluster.web_port, context=ctx, timeout=30)
    try:
        conn.request(
            "POST",
            urllib.parse.urlsplit(url).path,
            body=urllib.parse.urlencode({"password": PASSWORD, "password_confirm": PASSWORD}),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": f"https://localhost:{cluster.web_port}",
            },
        )
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if resp.status == 404 and "invite" not in body.lower():
        pytest.skip("needs the invite endpoint (POST /web/invite/<token>)")
    assert resp.status == 200, body


def start_proxy(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``tsh proxy db *args`` in the background; returns it once it has printed how to connect."""
    proc = subprocess.Popen(
        [TSH, "proxy", "db", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=tsh_env(home),
    )
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"tsh proxy db exited early: {proc.wait()} {proc.stderr.read()}")  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("  $ psql") or line.startswith("Your database user is"):
            return proc, "".join(lines)


def stop_proxy(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C a ``tsh proxy db``: it exits 0 without a traceback."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)  # also closes the pipes
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
