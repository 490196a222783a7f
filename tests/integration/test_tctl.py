"""``tctl`` against a real ``teleport start``: every admin command a user runs, end to end."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_public_key

from jumpgate.core.auth.client import AuthClient
from jumpgate.core.auth.identityfile import read_identity_file
from tests.integration.conftest import CLUSTER_NAME, Cluster, parse_status, run

ROLE_YAML = """\
kind: role
version: v7
metadata:
  name: {name}
spec:
  allow:
    db_labels:
      '*': '*'
    db_names: ['*']
    db_users: [{db_user}]
"""


# ---------------------------------------------------------------------- helpers
_EXPORTS: dict[tuple[Path, str], str] = {}


def export(cluster: Cluster, ca_type: str) -> str:
    """``tctl auth export --type=...`` on the auth host (the CAs never change: asked once)."""
    key = (cluster.root, ca_type)
    if key not in _EXPORTS:
        _EXPORTS[key] = cluster.tctl("auth", "export", f"--type={ca_type}").stdout
    return _EXPORTS[key]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spki_pin_with_openssl(cert_pem: Path) -> str:
    """``sha256:`` + the SHA-256 of the certificate's SubjectPublicKeyInfo (DER), via openssl."""
    pub = run(["openssl", "x509", "-in", cert_pem, "-pubkey", "-noout"]).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=pub.encode(),
        capture_output=True,
        check=True,
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hex"], input=der, capture_output=True, check=True
    ).stdout.decode()
    return "sha256:" + digest.split()[-1]


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_cert_text(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def public_der(obj: Any) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a certificate, a private key or a public key."""
    key = obj.public_key() if hasattr(obj, "public_key") else obj
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_private_file(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} mode {path.stat().st_mode:o}"


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A user-facing error: the exit code, ``ERROR: ...`` on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("ERROR: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def admin_client(cluster: Cluster) -> AuthClient:
    """The auth API as the local admin (to read the audit log, which has no tctl command yet)."""
    return AuthClient(
        cluster.auth_addr, read_identity_file(cluster.data_dir / "proc" / "admin.pem")
    )


def get_json(cluster: Cluster, ref: str) -> list[dict[str, object]]:
    docs = json.loads(cluster.tctl("get", ref, "--format=json").stdout)
    assert isinstance(docs, list)
    return docs


# ---------------------------------------------------------------------- status
def test_status_shows_cluster_cas_and_a_pin_of_the_host_ca(cluster: Cluster, workdir: Path) -> None:
    out = cluster.tctl("status").stdout
    rows = parse_status(out)
    assert rows["Cluster"] == CLUSTER_NAME
    version = cluster.tctl("version").stdout
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", rows["Version"]), rows
    assert f"v{rows['Version']}" in version
    for ca in ("host", "user", "db", "db_client"):
        assert f"{ca} CA" in rows, out
    assert list(rows)[:2] == ["Cluster", "Version"]
    assert list(rows)[-1] == "CA pin"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", rows["CA pin"]), rows["CA pin"]

    host_ca = write(workdir / "host-ca.pem", export(cluster, "tls-host"))
    assert rows["CA pin"] == spki_pin_with_openssl(host_ca)


# ---------------------------------------------------------------------- auth sign (servers)
def test_auth_sign_db_writes_a_verifiable_server_certificate(
    cluster: Cluster, workdir: Path
) -> None:
    out = cluster.tctl(
        "auth",
        "sign",
        "--format=db",
        "--host=localhost,127.0.0.1",
        "--out=server",
        "--ttl=2190h",
        cwd=workdir,
    ).stdout
    crt, key, cas = (workdir / f"server.{ext}" for ext in ("crt", "key", "cas"))
    for f in (crt, key, cas):
        assert_private_file(f)
        assert f.name in out
    assert "ssl_cert_file" in out  # the PostgreSQL hints

    db_ca = write(workdir / "db-ca.pem", export(cluster, "db"))
    db_client_ca = export(cluster, "db-client")
    verified = run(["openssl", "verify", "-CAfile", db_ca, crt])
    assert verified.stdout.strip() == f"{crt}: OK"

    cert = load_cert(crt)
    dns, ips = sans(cert)
    assert "localhost" in dns
    assert "127.0.0.1" in ips
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(hours=2190) <= lifetime <= timedelta(hours=2190, minutes=10), lifetime
    assert public_der(load_pem_private_key(key.read_bytes(), None)) == public_der(cert)
    assert cas.read_text() == db_client_ca
    assert db_client_ca != db_ca.read_text()

    # signing again into the same files needs --overwrite
    again = cluster.tctl(
        "auth", "sign", "--format=db", "--host=localhost", "--out=server", cwd=workdir, check=False
    )
    assert_error(again, 4, "--overwrite")
    assert load_cert(crt) == cert


def test_auth_sign_mongodb_puts_the_key_with_the_certificate(
    cluster: Cluster, workdir: Path
) -> None:
    cluster.tctl(
        "auth", "sign", "--format=mongodb", "--host=mongo.example.com", "--out=mongo", cwd=workdir
    )
    crt, cas = workdir / "mongo.crt", workdir / "mongo.cas"
    assert_private_file(crt)
    assert_private_file(cas)
    assert not (workdir / "mongo.key").exists()
    bundle = crt.read_bytes()
    assert b"-----BEGIN CERTIFICATE-----" in bundle
    assert b"PRIVATE KEY-----" in bundle
    cert = x509.load_pem_x509_certificate(bundle)
    assert public_der(load_pem_private_key(bundle, None)) == public_der(cert)
    assert "mongo.example.com" in sans(cert)[0]
    # MongoDB maps the Organization to the cluster
    orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == [CLUSTER_NAME]
    assert cas.read_text() == export(cluster, "db-client")


def test_auth_sign_cockroachdb_writes_a_certs_directory(cluster: Cluster, workdir: Path) -> None:
    cluster.tctl(
        "auth",
        "sign",
        "--format=cockroachdb",
        "--host=localhost,roach1",
        "--out=certs",
        cwd=workdir,
    )
    certs = workdir / "certs"
    assert certs.is_dir()
    assert sorted(p.name for p in certs.iterdir()) == [
        "ca-client.crt",
        "ca.crt",
        "node.crt",
        "node.key",
    ]
    for f in certs.iterdir():
        assert_private_file(f)
    assert (certs / "ca.crt").read_text() == export(cluster, "db")
    assert (certs / "ca-client.crt").read_text() == export(cluster, "db-client")
    node = load_cert(certs / "node.crt")
    assert public_der(load_pem_private_key((certs / "node.key").read_bytes(), None)) == public_der(
        node
    )
    verified = run(["openssl", "verify", "-CAfile", certs / "ca.crt", certs / "node.crt"])
    assert verified.stdout.strip().endswith(": OK")
    # CockroachDB only accepts node certificates for the user "node"
    cn = node.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["node"]
    assert {"node", "localhost", "roach1"} <= set(sans(node)[0])


def test_auth_sign_needs_a_host_or_a_user(cluster: Cluster, workdir: Path) -> None:
    proc = cluster.tctl("auth", "sign", "--format=db", "--out=server", cwd=workdir, check=False)
    assert_error(proc, 2, "--host")
    assert not list(workdir.iterdir())


# ---------------------------------------------------------------------- remote identities, RBAC, locks
def test_user_identity_works_remotely_and_follows_rbac_and_locks(
    cluster: Cluster, workdir: Path
) -> None:
    cluster.tctl("users", "add", "alice", "--roles=access", "--db-users=*", "--db-names=*")
    cluster.tctl("auth", "sign", "--user=alice", "--out=alice.pem", "--ttl=1h", cwd=workdir)
    ident = workdir / "alice.pem"
    assert_private_file(ident)

    def as_alice(*args: str, via: str = cluster.web_addr, pem: Path = ident, check: bool = True):
        return cluster.tctl(f"--auth-server={via}", "-i", pem, *args, local=False, check=check)

    # through the proxy's web port (ALPN teleport-auth@cluster) and the auth port directly
    for via in (cluster.web_addr, cluster.auth_addr):
        rows = parse_status(as_alice("status", via=via).stdout)
        assert rows["Cluster"] == CLUSTER_NAME

    # the access role may not create users; the denial is audited
    denied = as_alice("users", "add", "mallory", "--roles=access", check=False)
    assert_error(denied, 6, "access denied")
    assert cluster.tctl("get", "user/mallory", check=False).returncode == 3
    events = admin_client(cluster).call("events.search", types=["access.denied"])
    assert any(e.get("user") == "alice" and e.get("method") == "users.add" for e in events), events

    # with editor, a fresh identity may
    out = cluster.tctl("users", "update", "alice", "--set-roles=access,editor").stdout
    assert "access, editor" in out
    cluster.tctl("auth", "sign", "--user=alice", "--out=alice2.pem", "--ttl=1h", cwd=workdir)
    ident2 = workdir / "alice2.pem"
    created = as_alice("users", "add", "carol", "--roles=access", pem=ident2)
    assert f"https://{cluster.public_addr}/web/invite/" in created.stdout

    # a lock shuts alice out with its message, rm lock/<id> lifts it
    lock_out = cluster.tctl("lock", "--user=alice", "--message=incident 42", "--ttl=1h").stdout
    m = re.fullmatch(r'Created a lock with name "([0-9a-f-]{36})"\.\n', lock_out)
    assert m, lock_out
    lock_id = m.group(1)
    locks = get_json(cluster, "locks")
    lock = next(lk for lk in locks if lk["metadata"]["name"] == lock_id)  # type: ignore[index]
    assert lock["spec"]["target"] == {"user": "alice"}  # type: ignore[index]
    assert lock["spec"]["message"] == "incident 42"  # type: ignore[index]
    locked = as_alice("status", pem=ident2, check=False)
    assert_error(locked, 6, "incident 42")

    assert f'"{lock_id}"' in cluster.tctl("rm", f"lock/{lock_id}").stdout
    assert parse_status(as_alice("status", pem=ident2).stdout)["Cluster"] == CLUSTER_NAME


# ---------------------------------------------------------------------- create / get / rm
def test_create_refuses_to_overwrite_without_force(cluster: Cluster, workdir: Path) -> None:
    path = write(workdir / "role.yaml", ROLE_YAML.format(name="dbreaders", db_user="reader"))
    assert cluster.tctl("create", path).stdout.strip() == 'role "dbreaders" has been created'
    again = cluster.tctl("create", path, check=False)
    assert_error(again, 4, "dbreaders", "already exists")

    write(path, ROLE_YAML.format(name="dbreaders", db_user="writer"))
    assert "has been updated" in cluster.tctl("create", "-f", path).stdout

    (doc,) = yaml.safe_load_all(cluster.tctl("get", "role/dbreaders").stdout)
    assert doc["kind"] == "role"
    assert doc["metadata"]["name"] == "dbreaders"
    assert doc["spec"]["allow"]["db_users"] == ["writer"]
    (jdoc,) = get_json(cluster, "role/dbreaders")
    assert jdoc["spec"] == doc["spec"]
    table = cluster.tctl("get", "role/dbreaders", "--format=text").stdout.splitlines()
    assert table[0].split() == ["Kind", "Name", "Labels"]
    assert table[2].split() == ["role", "dbreaders"]

    assert (
        cluster.tctl("rm", "role/dbreaders").stdout.strip() == 'role "dbreaders" has been deleted'
    )
    gone = cluster.tctl("get", "role/dbreaders", check=False)
    assert_error(gone, 3, "not found")
    assert_error(cluster.tctl("rm", "role/dbreaders", check=False), 3)


def test_create_reads_several_documents_from_stdin(cluster: Cluster) -> None:
    text = "---\n".join(
        ROLE_YAML.format(name=n, db_user=n) for n in ("multi-a", "multi-b", "multi-c")
    )
    out = cluster.tctl("create", input=text).stdout
    assert out.splitlines() == [f'role "multi-{x}" has been created' for x in "abc"]
    docs = list(
        yaml.safe_load_all(cluster.tctl("get", "role/multi-a,role/multi-b,role/multi-c").stdout)
    )
    assert [d["metadata"]["name"] for d in docs] == ["multi-a", "multi-b", "multi-c"]
    assert [d["spec"]["allow"]["db_users"] for d in docs] == [["multi-a"], ["multi-b"], ["multi-c"]]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(
            "kind: role\nversion: v7\nmetadata:\n  name: [broken\n", None, id="malformed-yaml"
        ),
        pytest.param(
            "kind: role\nversion: v99\nmetadata:\n  name: r-v99\nspec: {}\n",
            2,
            id="unknown-version",
        ),
        pytest.param(
            "kind: role\nversion: v7\nmetadata:\n  name: r-noverbs\nspec:\n  allow:\n"
            "    rules:\n    - resources: [user]\n",
            8,
            id="rule-without-verbs",
        ),
    ],
)
def test_create_rejects_bad_resources_naming_the_line(
    cluster: Cluster, workdir: Path, text: str, line: int | None
) -> None:
    path = write(workdir / "bad.yaml", text)
    proc = cluster.tctl("create", path, check=False)
    assert_error(proc, 2, "bad.yaml", "line")
    if line is not None:
        assert f"line {line}" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------------- tokens
def test_tokens_add_ls_rm(cluster: Cluster) -> None:
    text = cluster.tctl("tokens", "add", "--type=db", "--format=text").stdout
    assert text.count("\n") == 1
    token = text.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token), text

    data = json.loads(cluster.tctl("tokens", "add", "--type=db", "--format=json").stdout)
    assert set(data) >= {"token", "roles", "expires"}
    assert data["roles"] == ["Db"]
    assert data["expires"]
    token2 = data["token"]

    listing = cluster.tctl("tokens", "ls").stdout
    assert token not in listing
    assert token2 not in listing
    assert f"*{token[-4:]}" in listing
    secrets = cluster.tctl("tokens", "ls", "--with-secrets").stdout
    assert token in secrets
    assert token2 in secrets
    assert secrets.splitlines()[0].split()[:2] == ["Token", "Type"]

    assert token in cluster.tctl("tokens", "rm", token).stdout
    after = cluster.tctl("tokens", "ls", "--with-secrets").stdout
    assert token not in after
    assert token2 in after
    assert_error(cluster.tctl("tokens", "rm", token, check=False), 3)


# ---------------------------------------------------------------------- users
def test_users_add_update_ls_reset_rm(cluster: Cluster) -> None:
    out = cluster.tctl(
        "users", "add", "--roles=access", "--db-users=*", "--db-names=*", "dave"
    ).stdout
    urls = re.findall(r"https://\S+", out)
    assert len(urls) == 1, out
    assert re.fullmatch(rf"https://{re.escape(cluster.public_addr)}/web/invite/[0-9a-f]+", urls[0])

    again = cluster.tctl("users", "add", "--roles=access", "dave", check=False)
    assert_error(again, 4, "dave", "already exists")

    cluster.tctl("users", "update", "dave", "--set-roles=access,editor")
    rows = [line.split() for line in cluster.tctl("users", "ls").stdout.splitlines()]
    assert rows[0] == ["User", "Roles"]
    assert ["dave", "access,editor"] in rows
    (user,) = get_json(cluster, "user/dave")
    assert user["spec"]["roles"] == ["access", "editor"]  # type: ignore[index]
    assert user["spec"]["traits"]["db_users"] == ["*"]  # type: ignore[index]

    reset = cluster.tctl("users", "reset", "dave").stdout
    reset_url = re.findall(r"https://\S+", reset)
    assert reset_url and reset_url[0] != urls[0]
    assert reset_url[0].startswith(f"https://{cluster.public_addr}/web/")

    assert "dave" in cluster.tctl("users", "rm", "dave").stdout
    assert "dave" not in cluster.tctl("users", "ls").stdout
    assert_error(cluster.tctl("users", "rm", "dave", check=False), 3, "dave")


# ---------------------------------------------------------------------- bots
def test_bots_add_update_ls_rm(cluster: Cluster) -> None:
    roles = "---\n".join(
        ROLE_YAML.format(name=n, db_user="'*'") for n in ("machine-id-db", "machine-id-extra")
    )
    cluster.tctl("create", "-f", input=roles)
    data = json.loads(
        cluster.tctl("bots", "add", "app", "--roles=machine-id-db", "--format=json").stdout
    )
    assert set(data) == {"user_name", "role_name", "token_id", "token_ttl"}
    assert data["user_name"] == "bot-app"
    assert data["role_name"] == "bot-app"
    assert data["token_ttl"] == 3600 * 10**9

    cluster.tctl("bots", "update", "app", "--add-roles", "machine-id-extra")
    (bot,) = get_json(cluster, "bot/app")
    assert bot["spec"]["roles"] == ["machine-id-db", "machine-id-extra"]  # type: ignore[index]
    (role,) = get_json(cluster, "role/bot-app")
    impersonate = role["spec"]["allow"]["impersonate"]["roles"]  # type: ignore[index]
    assert sorted(impersonate) == ["machine-id-db", "machine-id-extra"]

    rows = [line.split() for line in cluster.tctl("bots", "ls").stdout.splitlines()]
    assert rows[0][:3] == ["Bot", "User", "Roles"]
    assert ["app", "bot-app", "machine-id-db,machine-id-extra"] in [r[:3] for r in rows]

    cluster.tctl("bots", "rm", "app")
    assert_error(cluster.tctl("get", "user/bot-app", check=False), 3)
    assert_error(cluster.tctl("get", "role/bot-app", check=False), 3)
    assert "app" not in cluster.tctl("bots", "ls").stdout.split()


# ---------------------------------------------------------------------- auth export
def test_auth_export_openssh_forms(cluster: Cluster) -> None:
    host_ca = load_cert_text(export(cluster, "tls-host"))
    user_ca = load_cert_text(export(cluster, "tls-user"))

    (host_line,) = export(cluster, "host").splitlines()
    marker, hosts, key_type, key_b64, comment = host_line.split(" ")
    assert marker == "@cert-authority"
    assert hosts.split(",") == [CLUSTER_NAME, f"*.{CLUSTER_NAME}"]
    assert comment == "type=host"
    ssh_key = load_ssh_public_key(f"{key_type} {key_b64}".encode())
    assert public_der(ssh_key) == public_der(host_ca)

    (user_line,) = export(cluster, "user").splitlines()
    marker, key_type, key_b64, comment = user_line.split(" ")
    assert marker == "cert-authority"
    # Teleport's authorized_keys form: the comment is URL-encoded clustername and type
    assert urllib.parse.parse_qs(comment) == {"clustername": [CLUSTER_NAME], "type": ["user"]}
    ssh_key = load_ssh_public_key(f"{key_type} {key_b64}".encode())
    assert public_der(ssh_key) == public_der(user_ca)


def test_auth_export_through_the_proxy_without_an_identity(cluster: Cluster) -> None:
    local = export(cluster, "db-client")
    proc = cluster.tctl(
        "auth", "export", "--type=db-client", f"--auth-server={cluster.web_addr}", local=False
    )
    assert proc.stdout == local
    assert "-----BEGIN CERTIFICATE-----" in local
