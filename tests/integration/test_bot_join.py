"""Machine ID against a real ``teleport start``: join on the proxy, renew and outputs on the auth API."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

import pytest
from cryptography import x509

from jumpgate.core.auth.client import AuthClient
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.errors import AccessDenied
from jumpgate.core.tlsca import (
    generate_private_key,
    identity_from_certificate,
    private_key_to_pem,
    public_key_to_pem,
)
from tests.integration.conftest import Cluster


def post_join(cluster: Cluster, host_ca: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """``POST /webapi/bots/join`` over HTTPS, the proxy verified with the pinned host CA."""
    ctx = ssl.create_default_context(cadata=host_ca)
    conn = http.client.HTTPSConnection("localhost", cluster.web_port, context=ctx, timeout=15)
    try:
        conn.request(
            "POST", "/webapi/bots/join", body=body, headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


class Bot:
    """What tbot keeps: a key, the current renewable certificate, the host CA."""

    def __init__(
        self, cluster: Cluster, host_ca: str, result: dict[str, Any], key_pem: bytes
    ) -> None:
        self.cluster = cluster
        self.host_ca = host_ca
        self.result = result
        self.key_pem = key_pem

    @property
    def generation(self) -> int:
        return identity_from_certificate(
            x509.load_pem_x509_certificate(self.result["cert"].encode())
        ).generation

    def client(self) -> AuthClient:
        ident = IdentityFile(self.key_pem, self.result["cert"].encode(), (self.host_ca.encode(),))
        return AuthClient(self.cluster.web_addr, ident)  # ALPN pass-through on the web port

    def call(self, method: str, **params: Any) -> tuple[dict[str, Any], bytes]:
        key = generate_private_key()
        client = self.client()
        try:
            result = client.call(
                method, public_key=public_key_to_pem(key.public_key()).decode(), **params
            )
        finally:
            client.close()
        return result, private_key_to_pem(key)

    def renew(self) -> Bot:
        result, key = self.call("bots.renew", ttl=1200)
        return Bot(self.cluster, self.host_ca, result, key)


def bots_ls(cluster: Cluster) -> dict[str, Any]:
    (bot,) = [
        b
        for b in json.loads(cluster.tctl("bots", "ls", "--format=json").stdout)
        if b["metadata"]["name"] == "app"
    ]
    status: dict[str, Any] = bot["status"]
    return status


@pytest.fixture(scope="module")
def host_ca(cluster: Cluster) -> str:
    return cluster.tctl("auth", "export", "--type=tls-host").stdout


def test_join_renew_output_and_generation_mismatch(cluster: Cluster, host_ca: str) -> None:
    token = json.loads(
        cluster.tctl("bots", "add", "app", "--roles=access", "--format=json").stdout
    )["token_id"]
    key = generate_private_key()
    req = {
        "token": token,
        "public_key": public_key_to_pem(key.public_key()).decode(),
        "join_method": "token",
        "ttl": 1800,
    }
    status, joined = post_join(cluster, host_ca, json.dumps(req).encode())
    assert status == 200, joined
    assert joined["generation"] == 1 and joined["cluster_name"] == "example.com"
    assert joined["host_ca"].strip() == host_ca.strip()
    gen1 = Bot(cluster, host_ca, joined, private_key_to_pem(key))
    assert gen1.generation == 1

    # the token was single-use (only a retry with the same key is answered again, see
    # test_tbot_crash); refusals never echo it
    other = {**req, "public_key": public_key_to_pem(generate_private_key().public_key()).decode()}
    status, refused = post_join(cluster, host_ca, json.dumps(other).encode())
    assert status == 403 and token not in json.dumps(refused)
    assert "already used" in refused["error"]["message"]
    status, bad = post_join(cluster, host_ca, b"{nope")
    assert status == 400, bad

    gen2 = gen1.renew()
    assert gen2.generation == 2 and gen2.result["generation"] == 2
    st = bots_ls(cluster)
    assert st["generation"] == 2 and st["last_renewal"] and not st["locked"]
    text = cluster.tctl("bots", "ls").stdout
    assert "Generation" in text and "Last Renewal" in text

    out, _ = gen2.call("bots.output_cert", roles=[], ttl=600)
    ident = identity_from_certificate(x509.load_pem_x509_certificate(out["cert"].encode()))
    assert ident.groups == ("access",) and ident.disallow_reissue and not ident.renewable
    assert ident.impersonator == "bot-app" and ident.bot_name == "app"

    # the gen-1 certificate renewing again (a crash before saving): idempotent, no lock
    gen2_copy = gen1.renew()
    assert gen2_copy.generation == 2 and not bots_ls(cluster)["locked"]
    gen3 = gen2.renew()
    assert gen3.generation == 3
    with pytest.raises(AccessDenied, match="generation mismatch: stored=3, presented=2"):
        gen2_copy.renew()
    st = bots_ls(cluster)
    assert st["locked"] and st["lock"]
    row = next(
        line for line in cluster.tctl("bots", "ls").stdout.splitlines() if line.startswith("app ")
    )
    assert f"yes ({st['lock']})" in row
    with pytest.raises(AccessDenied, match="locked"):
        gen3.renew()

    # an administrator lifts the lock: the legitimate holder carries on
    cluster.tctl("rm", f"lock/{st['lock']}")
    assert gen3.renew().generation == 4
    assert not bots_ls(cluster)["locked"]
