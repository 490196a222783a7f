"""tbot never locks itself out: kill -9 at every step of joining and renewing.

Teleport bots lock themselves out when a renewal is issued but not saved (Teleport
issues #13228 and #17866). Here the real ``tbot`` is killed with SIGKILL at each named
step (``core/failpoint.py``: the process sends itself SIGKILL exactly there), and at
random moments of a running daemon, then started again: it must recover by itself,
the bot must not be locked, its generation must only move forward, and the outputs
must hold a matching, valid key and certificate.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jumpgate.core.failpoint import KNOWN
from jumpgate.core.tlsca import identity_from_certificate, load_private_key
from tests.integration.conftest import BIN, Cluster, assert_clean_stderr, cli_env, parse_status
from tests.integration.test_tbot import add_bot, bot_generation

TBOT = str(BIN / "tbot")


@pytest.fixture(scope="module")
def pin(cluster: Cluster) -> str:
    return parse_status(cluster.tctl("status").stdout)["CA pin"]


def config(tmp_path: Path, cluster: Cluster, pin: str, token: str, extra: str = "") -> Path:
    cfg = tmp_path / "tbot.yaml"
    cfg.write_text(
        f"""version: v2
proxy_server: {cluster.public_addr}
onboarding:
  join_method: token
  token: {token}
  ca_pins: ["{pin}"]
storage:
  type: directory
  path: {tmp_path / "storage"}
outputs:
  - type: identity
    destination:
      type: directory
      path: {tmp_path / "out"}
{extra}"""
    )
    return cfg


def oneshot(cfg: Path, failpoint: str = "") -> subprocess.CompletedProcess[str]:
    env = cli_env()
    if failpoint:
        env["JUMPGATE_FAILPOINTS"] = failpoint
    proc = subprocess.run(
        [TBOT, "start", "-c", str(cfg), "--oneshot"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert_clean_stderr(proc)
    return proc


def killed(proc: subprocess.CompletedProcess[str], failpoint: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert f"failpoint {failpoint}" in proc.stderr, proc.stderr


def assert_outputs_usable(tmp_path: Path) -> x509.Certificate:
    """The identity output: a key and a certificate that belong together, still valid."""
    out = tmp_path / "out"
    cert = x509.load_pem_x509_certificate((out / "tlscert").read_bytes())
    key = load_private_key((out / "key").read_bytes())
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)
    assert cert.not_valid_after_utc.timestamp() > time.time()
    return cert


def assert_not_locked(cluster: Cluster, name: str) -> None:
    bots = json.loads(cluster.tctl("bots", "ls", "--format=json").stdout)
    (bot,) = [b for b in bots if b["metadata"]["name"] == name]
    assert not bot["status"].get("locked"), bot
    locks = json.loads(cluster.tctl("get", "locks", "--format=json").stdout or "[]")
    assert not [lk for lk in locks if f"bot-{name}" in json.dumps(lk["spec"]["target"])], locks


def stored_generation(tmp_path: Path) -> int:
    return int((tmp_path / "storage" / "generation").read_text())


# ------------------------------------------------------------------------- joining
@pytest.mark.parametrize("step", ["bot.join.before_request", "bot.join.after_response"])
def test_crash_while_joining_then_start_again(
    cluster: Cluster, pin: str, tmp_path: Path, step: str
) -> None:
    name, token = add_bot(cluster, roles="access")
    cfg = config(tmp_path, cluster, pin, token)
    killed(oneshot(cfg, step), step)
    # the token is spent when the answer was lost; the retry with the same key still works
    again = oneshot(cfg)
    assert again.returncode == 0, again.stderr
    if step == "bot.join.after_response":
        assert "retrying an unfinished join" in again.stderr, again.stderr
    assert bot_generation(cluster, name) == stored_generation(tmp_path) == 1
    assert_outputs_usable(tmp_path)
    assert_not_locked(cluster, name)
    # and it renews on from there
    assert oneshot(cfg).returncode == 0
    assert bot_generation(cluster, name) == stored_generation(tmp_path) == 2


def test_a_spent_token_is_not_a_second_identity(cluster: Cluster, pin: str, tmp_path: Path) -> None:
    """The join retry needs the same key, and the bot still at generation 1."""
    name, token = add_bot(cluster, roles="access")
    first = tmp_path / "first"
    first.mkdir()
    cfg = config(first, cluster, pin, token)
    killed(oneshot(cfg, "bot.join.after_response"), "bot.join.after_response")
    # another machine with the same token (and its own key) is refused
    other = tmp_path / "other"
    other.mkdir()
    stolen = oneshot(config(other, cluster, pin, token))
    assert stolen.returncode != 0 and "already used" in stolen.stderr, stolen.stderr
    # the first machine completes its join and renews: now even its key cannot rejoin
    assert oneshot(cfg).returncode == 0
    assert oneshot(cfg).returncode == 0
    assert bot_generation(cluster, name) == 2
    (first / "storage" / "identity").unlink()
    for piece in ("key", "tlscert", "tlscacerts"):
        (first / "storage" / piece).unlink()
    joinkey = first / "storage" / "joinkey"
    assert joinkey.read_bytes() == b""  # cleared once the identity was saved
    refused = oneshot(cfg)
    assert refused.returncode != 0 and "already used" in refused.stderr, refused.stderr
    assert_not_locked(cluster, name)


# ------------------------------------------------------------------------- renewing
RENEWAL_STEPS = [
    "bot.renew.before_request",
    "bot.renew.after_response",
    "bot.storage.after_identity",
    "bot.renew.after_save",
    "bot.output.after_first_file",
]


def test_every_failpoint_is_exercised() -> None:
    assert set(RENEWAL_STEPS) | {"bot.join.before_request", "bot.join.after_response"} == set(KNOWN)


@pytest.mark.parametrize("step", RENEWAL_STEPS)
def test_crash_while_renewing_then_start_again(
    cluster: Cluster, pin: str, tmp_path: Path, step: str
) -> None:
    name, token = add_bot(cluster, roles="access")
    cfg = config(tmp_path, cluster, pin, token)
    assert oneshot(cfg).returncode == 0  # joined: generation 1, outputs written
    before = bot_generation(cluster, name)
    killed(oneshot(cfg, step), step)
    server_after_crash = bot_generation(cluster, name)
    issued = step not in ("bot.renew.before_request",)
    assert server_after_crash == before + (1 if issued else 0)
    # started again, it recovers by itself: no lock, the generation moves forward
    again = oneshot(cfg)
    assert again.returncode == 0, again.stderr
    assert "locked" not in again.stderr
    now = bot_generation(cluster, name)
    assert now == stored_generation(tmp_path) and now >= server_after_crash
    assert_not_locked(cluster, name)
    cert = assert_outputs_usable(tmp_path)
    assert identity_from_certificate(cert).username == f"bot-{name}"
    assert oneshot(cfg).returncode == 0
    assert bot_generation(cluster, name) == now + 1


def test_random_kill_9_of_a_renewing_daemon(cluster: Cluster, pin: str, tmp_path: Path) -> None:
    """A daemon renewing every second, killed -9 at random moments, ten times over."""
    name, token = add_bot(cluster, roles="access")
    cfg = config(tmp_path, cluster, pin, token, extra="renewal_interval: 1s\ncertificate_ttl: 1m\n")
    assert oneshot(cfg).returncode == 0
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    seen = bot_generation(cluster, name)
    for _ in range(10):
        proc = subprocess.Popen(
            [TBOT, "start", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        time.sleep(rng.uniform(0.05, 1.5))  # the kill lands anywhere in start-up or renewal
        proc.kill()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=10)
        assert "Traceback" not in err and "locked" not in err, err
        generation = bot_generation(cluster, name)
        assert generation >= seen
        seen = generation
    final = oneshot(cfg)
    assert final.returncode == 0, final.stderr
    assert bot_generation(cluster, name) == stored_generation(tmp_path) > 1
    assert_not_locked(cluster, name)
    assert_outputs_usable(tmp_path)
