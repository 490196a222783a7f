"""The ~/.tsh profile layout, its file modes, logout, expiry, and the pg service file."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jumpgate.core.client import dbclient
from jumpgate.core.client.profile import (
    Profile,
    ProfileStore,
    normalize_proxy_addr,
    store_from_identity_file,
)
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.tlsca import (
    CAType,
    CertAuthority,
    Identity,
    RouteToDatabase,
    cert_to_pem,
    generate_private_key,
    private_key_to_pem,
)

CLUSTER = "example.com"


@pytest.fixture(scope="module")
def cas() -> dict[str, CertAuthority]:
    return {
        "host": CertAuthority.generate(CAType.HOST, CLUSTER),
        "user": CertAuthority.generate(CAType.USER, CLUSTER),
    }


def issue(
    cas: dict[str, CertAuthority],
    key_pub: object,
    *,
    ttl: timedelta = timedelta(hours=12),
    route: RouteToDatabase | None = None,
    past: bool = False,
) -> bytes:
    ca = cas["user"]
    now = datetime.now(UTC)
    if past:
        ca = CertAuthority(
            CAType.USER, CLUSTER, ca.cert, ca.key, clock=lambda: now - timedelta(hours=2)
        )
    ident = Identity(
        username="alice",
        groups=("access",),
        logins=("root",),
        cluster_name=CLUSTER,
        route_to_database=route,
    )
    end = now - timedelta(hours=1) if past else now + ttl
    return cert_to_pem(ca.issue(key_pub, identity=ident, not_after=end))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(tmp_path / "tsh")


def login(store: ProfileStore, cas: dict[str, CertAuthority], *, past: bool = False) -> Profile:
    key = generate_private_key()
    return store.save(
        proxy_addr="proxy.example.com:3080",
        user="alice",
        cluster=CLUSTER,
        key_pem=private_key_to_pem(key),
        cert_pem=issue(cas, key.public_key(), past=past),
        ca_pem=cas["host"].cert_pem,
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---------------------------------------------------------------------- layout
def test_save_writes_teleport_layout_with_private_modes(store: ProfileStore, cas: dict) -> None:
    prof = login(store, cas)
    home = store.home
    assert (home / "current-profile").read_text() == "proxy.example.com\n"
    assert prof.yaml_path == home / "proxy.example.com.yaml"
    assert prof.key_path == home / "keys/proxy.example.com/alice.key"
    assert prof.cert_path == home / "keys/proxy.example.com/alice.crt"
    assert prof.ca_path == home / "keys/proxy.example.com/cas/example.com.pem"
    assert prof.db_cert_path("pg") == home / "keys/proxy.example.com/alice-db/example.com/pg.crt"
    for f in (prof.key_path, prof.cert_path, prof.ca_path, prof.yaml_path):
        assert mode(f) == 0o600, f
    for d in (home, home / "keys", prof.key_dir, prof.ca_path.parent):
        assert mode(d) == 0o700, d
    import yaml

    doc = yaml.safe_load(prof.yaml_path.read_text())
    assert doc == {
        "web_proxy_addr": "proxy.example.com:3080",
        "user": "alice",
        "cluster": CLUSTER,
        "tls_routing_enabled": True,
    }


def test_no_temp_files_left_behind(store: ProfileStore, cas: dict) -> None:
    login(store, cas)
    login(store, cas)  # rewrite everything
    leftovers = [p for p in store.home.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_current_and_identity(store: ProfileStore, cas: dict) -> None:
    assert store.current() is None
    login(store, cas)
    prof = store.current()
    assert prof is not None
    assert prof.web_proxy_addr == "proxy.example.com:3080"
    assert prof.proxy_url == "https://proxy.example.com:3080"
    assert prof.identity.username == "alice"
    assert prof.identity.groups == ("access",)
    assert not prof.is_expired()
    assert timedelta(hours=11) < prof.valid_for() <= timedelta(hours=12)
    ident = prof.identity_file()
    assert ident.cluster_name == CLUSTER
    assert ident.ca_pems == (cas["host"].cert_pem,)


def test_insecure_flag_is_recorded(store: ProfileStore, cas: dict) -> None:
    key = generate_private_key()
    store.save(
        proxy_addr="127.0.0.1:3080",
        user="alice",
        cluster=CLUSTER,
        key_pem=private_key_to_pem(key),
        cert_pem=issue(cas, key.public_key()),
        ca_pem=cas["host"].cert_pem,
        insecure=True,
    )
    assert "insecure: true" in (store.home / "127.0.0.1.yaml").read_text()
    prof = store.current()
    assert prof is not None and prof.insecure


def test_expired_profile(store: ProfileStore, cas: dict) -> None:
    prof = login(store, cas, past=True)
    assert prof.is_expired()
    with pytest.raises(AccessDenied, match="expired") as info:
        prof.require_valid()
    assert "tsh login" in (info.value.hint or "")


def test_list_puts_active_first(store: ProfileStore, cas: dict) -> None:
    login(store, cas)
    key = generate_private_key()
    store.save(
        proxy_addr="a.example.com:443",
        user="alice",
        cluster=CLUSTER,
        key_pem=private_key_to_pem(key),
        cert_pem=issue(cas, key.public_key()),
        ca_pem=cas["host"].cert_pem,
        make_current=False,
    )
    assert [p.name for p in store.list()] == ["proxy.example.com", "a.example.com"]


# ---------------------------------------------------------------------- logout
def test_delete_removes_keys_yaml_and_current(store: ProfileStore, cas: dict) -> None:
    prof = login(store, cas)
    removed = store.delete()
    assert [p.name for p in removed] == ["proxy.example.com"]
    assert not prof.key_dir.exists()
    assert not prof.yaml_path.exists()
    assert not (store.home / "current-profile").exists()
    assert store.current() is None
    assert store.delete() == []


def test_delete_other_proxy_keeps_current(store: ProfileStore, cas: dict) -> None:
    login(store, cas)
    key = generate_private_key()
    other = store.save(
        proxy_addr="b.example.com:443",
        user="bob",
        cluster=CLUSTER,
        key_pem=private_key_to_pem(key),
        cert_pem=issue(cas, key.public_key()),
        ca_pem=cas["host"].cert_pem,
        make_current=False,
    )
    assert store.delete(proxy="b.example.com:443", user="alice") == []  # wrong user
    assert store.delete(proxy="b.example.com:443") == [other]
    assert store.current_name() == "proxy.example.com"


def test_relogin_as_another_user_replaces_keys(store: ProfileStore, cas: dict) -> None:
    first = login(store, cas)
    key = generate_private_key()
    store.save(
        proxy_addr="proxy.example.com:3080",
        user="bob",
        cluster=CLUSTER,
        key_pem=private_key_to_pem(key),
        cert_pem=issue(cas, key.public_key()),
        ca_pem=cas["host"].cert_pem,
    )
    assert not first.key_path.exists()
    cur = store.current()
    assert cur is not None and cur.user == "bob"


# ---------------------------------------------------------------------- db certs
def test_db_certs(store: ProfileStore, cas: dict) -> None:
    prof = login(store, cas)
    from jumpgate.core.tlsca import load_private_key

    pub = load_private_key(prof.key_pem()).public_key()
    route = RouteToDatabase("pg", "postgres", "alice", "example")
    path = prof.save_db_cert("pg", issue(cas, pub, route=route))
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert prof.databases() == ["pg"]
    assert dbclient.db_route(prof, "pg") == route
    assert dbclient.db_cert_valid(prof, "pg")
    assert store.remove_db_certs("other") == []
    assert prof.remove_db_certs() == ["pg"]
    assert prof.databases() == []
    with pytest.raises(BadParameter):
        prof.db_cert_path("../escape")


def test_env_config_and_logout(store: ProfileStore, cas: dict, tmp_path: Path) -> None:
    prof = login(store, cas)
    from jumpgate.core.tlsca import load_private_key

    pub = load_private_key(prof.key_pem()).public_key()
    prof.save_db_cert("pg", issue(cas, pub, route=RouteToDatabase("pg", "postgres", "u", "n")))
    env = dbclient.db_env(prof)
    assert env == {
        "PGHOST": "proxy.example.com",
        "PGPORT": "3080",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(prof.ca_path),
        "PGSSLCERT": str(prof.db_cert_path("pg")),
        "PGSSLKEY": str(prof.key_path),
        "PGUSER": "u",
        "PGDATABASE": "n",
    }
    cfg = dbclient.db_config(prof, "pg")
    assert cfg["command"] == "psql service=example.com-pg"
    info = dbclient.psql_conninfo(prof, "pg", "localhost", 5000)
    assert info.startswith("host=localhost port=5000 user=u dbname=n sslmode=verify-full ")
    svc = tmp_path / "pg_service.conf"
    dbclient.write_pg_service_section(svc, "example.com-pg", {"host": "x"})
    assert dbclient.db_logout(prof, pg_service_file=svc) == ["pg"]
    assert dbclient.read_pg_service_section(svc, "example.com-pg") is None
    with pytest.raises(NotFound):
        dbclient.db_env(prof, "pg")
    with pytest.raises(NotFound):
        dbclient.db_logout(prof, "pg", pg_service_file=svc)


# ---------------------------------------------------------------------- pg_service.conf
PG_SERVICE = """\
# my own services
[prod]
host=db.internal
port=5432

[example.com-pg]
host=old
user=old

[dev]
host=localhost
"""


def test_pg_service_replace_keeps_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "pg_service.conf"
    path.write_text(PG_SERVICE)
    path.chmod(0o640)
    dbclient.write_pg_service_section(
        path, "example.com-pg", {"host": "proxy", "port": "443", "user": "alice"}
    )
    text = path.read_text()
    assert "# my own services\n[prod]\nhost=db.internal\nport=5432\n" in text
    assert "[dev]\nhost=localhost\n" in text
    assert "host=old" not in text
    assert text.endswith("[example.com-pg]\nhost=proxy\nport=443\nuser=alice\n")
    assert dbclient.read_pg_service_section(path, "example.com-pg") == {
        "host": "proxy",
        "port": "443",
        "user": "alice",
    }
    assert mode(path) == 0o640  # the user's mode is kept
    assert dbclient.remove_pg_service_section(path, "example.com-pg")
    assert not dbclient.remove_pg_service_section(path, "example.com-pg")
    after = path.read_text()
    assert "[prod]" in after and "[dev]" in after and "example.com-pg" not in after


def test_pg_service_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "svc.conf"
    monkeypatch.setenv("PGSERVICEFILE", str(path))
    assert dbclient.pg_service_path() == path
    dbclient.write_pg_service_section(path, "c-db", {"host": "h"})
    assert path.read_text() == "[c-db]\nhost=h\n"
    assert mode(path) == 0o600
    dbclient.write_pg_service_section(path, "c-db2", {"host": "h2"})
    assert path.read_text() == "[c-db]\nhost=h\n\n[c-db2]\nhost=h2\n"


# ---------------------------------------------------------------------- misc
@pytest.mark.parametrize(
    ("addr", "want"),
    [
        ("proxy.example.com:3080", ("proxy.example.com", 3080)),
        ("https://proxy.example.com:3080/", ("proxy.example.com", 3080)),
        ("proxy.example.com", ("proxy.example.com", 443)),
        ("[::1]:3080", ("::1", 3080)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
    ],
)
def test_normalize_proxy_addr(addr: str, want: tuple[str, int]) -> None:
    assert normalize_proxy_addr(addr) == want


@pytest.mark.parametrize("addr", ["", "host:port", "host:0", "host:70000"])
def test_normalize_proxy_addr_rejects(addr: str) -> None:
    with pytest.raises(BadParameter):
        normalize_proxy_addr(addr)


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TELEPORT_HOME", str(tmp_path / "h"))
    assert ProfileStore().home == tmp_path / "h"
    monkeypatch.delenv("TELEPORT_HOME")
    assert ProfileStore().home == Path.home() / ".tsh"


def test_store_from_identity_file(tmp_path: Path, cas: dict) -> None:
    key = generate_private_key()
    ident = tmp_path / "identity"
    ident.write_bytes(
        private_key_to_pem(key)
        + issue(cas, key.public_key())
        + cas["host"].cert_pem
        + cas["user"].cert_pem
    )
    store = store_from_identity_file(ident, "localhost:3080")
    prof = store.require_current()
    assert prof.user == "alice" and prof.cluster == CLUSTER
    assert prof.ca_pem() == cas["host"].cert_pem  # only the host CA verifies the proxy
