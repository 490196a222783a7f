"""tbot destinations (atomic writes, modes, symlink attacks, ACLs) and the files each output writes."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jumpgate.core.auth.identityfile import parse_identity_file
from jumpgate.core.bot import posixacl
from jumpgate.core.bot.config_outputs import (
    ApplicationOutputConfig,
    DatabaseOutputConfig,
    DirectoryConfig,
    IdentityOutputConfig,
    MemoryConfig,
)
from jumpgate.core.bot.destinations import (
    DirectoryDestination,
    MemoryDestination,
    make_destination,
)
from jumpgate.core.bot.outputs import BASE_FILES, Credentials, describe, render, subdirs
from jumpgate.core.errors import AccessDenied

ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to create files owned by others")
needs_acl = pytest.mark.skipif(shutil.which("setfacl") is None, reason="needs setfacl (acl)")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# --------------------------------------------------------------------- basics
def test_atomic_writes_modes_and_subdirs(tmp_path: Path) -> None:
    dest = DirectoryDestination(tmp_path / "out" / "deep")
    dest.init(("cockroach",))
    root = tmp_path / "out" / "deep"
    assert _mode(root) == 0o700 and _mode(root / "cockroach") == 0o700
    old = os.umask(0)
    try:
        dest.write("tlscert", b"one")
        dest.write("tlscert", b"two")
        dest.write("cockroach/node.key", b"k")
        dest.write("newdir/file", b"n")
    finally:
        os.umask(old)
    assert (root / "tlscert").read_bytes() == b"two"
    assert _mode(root / "tlscert") == 0o600
    assert _mode(root / "cockroach" / "node.key") == 0o600
    assert _mode(root / "newdir") == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["cockroach", "newdir", "tlscert"]
    assert dest.read("tlscert") == b"two"
    assert dest.read("missing") is None
    assert dest.listdir() == ["cockroach", "newdir", "tlscert"]
    with pytest.raises(Exception, match="invalid destination file name"):
        dest.write("../escape", b"x")


def test_write_many_switches_a_set_over_together(tmp_path: Path) -> None:
    root = tmp_path / "out"
    dest = DirectoryDestination(root)
    dest.init(("cockroach",))
    dest.write_many({"key": b"k1", "tlscert": b"c1", "cockroach/node.crt": b"n1"})
    dest.write_many({"key": b"k2", "tlscert": b"c2", "cockroach/node.crt": b"n2"})
    assert [dest.read(n) for n in ("key", "tlscert", "cockroach/node.crt")] == [
        b"k2",
        b"c2",
        b"n2",
    ]
    assert all(_mode(root / n) == 0o600 for n in ("key", "tlscert", "cockroach/node.crt"))
    leftovers = [p.name for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    # a planted symlink in the set is handled as write() does, before anything moves
    (root / "tlscert").unlink()
    (root / "tlscert").symlink_to("/etc/passwd")
    strict = DirectoryDestination(root, symlinks="secure")
    with pytest.raises(AccessDenied, match="symbolic link"):
        strict.write_many({"key": b"k3", "tlscert": b"c3"})
    assert dest.read("key") == b"k2"  # nothing was switched over
    assert [p.name for p in root.rglob("*") if p.name.endswith(".tmp")] == []


def test_memory_destination() -> None:
    dest = make_destination(MemoryConfig())
    assert isinstance(dest, MemoryDestination)
    dest.init()
    dest.write("key", b"k")
    assert dest.read("key") == b"k" and dest.read("x") is None
    dest.write_many({"key": b"k2", "tlscert": b"c2"})
    assert dest.read("key") == b"k2" and dest.read("tlscert") == b"c2"
    assert isinstance(make_destination(DirectoryConfig(path="/x")), DirectoryDestination)


# --------------------------------------------------------------------- symlink attacks
@pytest.mark.parametrize("mode", ["try-secure", "secure"])
def test_planted_symlink_to_system_file_is_never_followed(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    dest = DirectoryDestination(out, symlinks=mode)
    dest.init()
    before = _sha(Path("/etc/passwd"))
    (out / "tlscert").symlink_to("/etc/passwd")
    if mode == "secure":
        with pytest.raises(AccessDenied, match="symbolic link"):
            dest.write("tlscert", b"attacker wins?")
        assert (out / "tlscert").is_symlink()
    else:
        dest.write("tlscert", b"cert")
        assert not (out / "tlscert").is_symlink()
        assert (out / "tlscert").read_bytes() == b"cert"
    assert _sha(Path("/etc/passwd")) == before
    # reading through a planted link is refused too
    (out / "key").symlink_to("/etc/passwd")
    with pytest.raises(AccessDenied):
        dest.read("key")


@needs_root
@pytest.mark.parametrize("mode", ["try-secure", "secure"])
def test_planted_symlink_to_another_users_file(tmp_path: Path, mode: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.chown(victim, NOBODY, NOBODY)
    out = tmp_path / "out"
    dest = DirectoryDestination(out, symlinks=mode)
    dest.init()
    (out / "key").symlink_to(victim)
    if mode == "secure":
        with pytest.raises(AccessDenied):
            dest.write("key", b"x")
    else:
        dest.write("key", b"x")
    assert victim.read_bytes() == b"precious"
    assert victim.stat().st_uid == NOBODY


def test_insecure_mode_follows_links_on_purpose(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.pem"
    target.write_bytes(b"old")
    out = tmp_path / "out"
    dest = DirectoryDestination(out, symlinks="insecure")
    dest.init()
    (out / "tlscert").symlink_to(target)
    dest.write("tlscert", b"new")
    assert (out / "tlscert").is_symlink()
    assert target.read_bytes() == b"new"


def test_symlinked_subdirectory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    dest = DirectoryDestination(out)
    dest.init()
    (out / "cockroach").symlink_to(elsewhere)
    with pytest.raises(AccessDenied, match="refusing to follow"):
        dest.write("cockroach/node.key", b"k")
    assert list(elsewhere.iterdir()) == []


def test_destination_directory_that_is_a_symlink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(AccessDenied, match="symbolic link"):
        DirectoryDestination(link, symlinks="secure").write("key", b"k")
    DirectoryDestination(link, symlinks="try-secure").write("key", b"k")
    assert (real / "key").read_bytes() == b"k"
    assert "may be subject to symlink attacks" in caplog.text
    DirectoryDestination(link, symlinks="insecure").write("key", b"k2")
    assert (real / "key").read_bytes() == b"k2"


@needs_root
def test_directory_owned_by_someone_else(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(AccessDenied, match="belongs to uid 65534"):
        DirectoryDestination(theirs, symlinks="secure").write("key", b"k")
    assert list(theirs.iterdir()) == []
    # the owner tbot init was told about is trusted
    DirectoryDestination(theirs, symlinks="secure", trusted_uids=(NOBODY,)).write("key", b"k")
    # root acting for one of its users: allowed in try-secure, with a warning
    DirectoryDestination(theirs, symlinks="try-secure").write("key", b"k2")
    assert "belongs to uid 65534, not root" in caplog.text
    # a symlink to someone else's directory is never followed in try-secure
    link = tmp_path / "link"
    link.symlink_to(theirs)
    with pytest.raises(AccessDenied, match="not to this user"):
        DirectoryDestination(link, symlinks="try-secure").write("key", b"k")
    DirectoryDestination(theirs, symlinks="insecure").write("key", b"k3")
    assert (theirs / "key").read_bytes() == b"k3"


def test_directory_owned_by_someone_else_unprivileged(tmp_path: Path) -> None:
    """As a normal user, try-secure refuses a directory it does not own (run in a child)."""
    if not ROOT:
        pytest.skip("needs root to switch to another user")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tbot-dest-"))  # pytest's tmp root is 0700
    base.chmod(0o755)
    theirs = base / "theirs"
    theirs.mkdir(mode=0o777)
    theirs.chmod(0o777)
    os.chown(theirs, NOBODY, NOBODY)
    code = (
        "import os, sys\n"
        "from jumpgate.core.bot.destinations import DirectoryDestination\n"
        "from jumpgate.core.errors import AccessDenied\n"
        "os.setgid(65534); os.setuid(65533)  # after the imports: the interpreter is root's\n"
        f"d = DirectoryDestination({str(theirs)!r}, symlinks='try-secure')\n"
        "try:\n    d.write('key', b'k')\nexcept AccessDenied as e:\n    print('refused', e)\n"
    )
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert "refused" in proc.stdout and "belongs to uid 65534" in proc.stdout, proc.stderr
    assert "(uid 65533)" in proc.stdout


# --------------------------------------------------------------------- ACLs
def test_acl_xattr_roundtrip_and_spec() -> None:
    acl = (
        posixacl.Entry(posixacl.USER_OBJ, 6),
        posixacl.Entry(posixacl.USER, 4, 1001),
        posixacl.Entry(posixacl.GROUP_OBJ, 0),
        posixacl.Entry(posixacl.MASK, 6),
        posixacl.Entry(posixacl.OTHER, 0),
    )
    assert posixacl.decode(posixacl.encode(acl)) == acl
    assert [e.text() for e in acl] == [
        "user::rw-",
        "user:1001:r--",
        "group::---",
        "mask::rw-",
        "other::---",
    ]
    spec = posixacl.desired_spec(
        bot_uid=1000, owner_uid=1000, reader_uids=[1001], reader_gids=[50], is_dir=True
    )
    assert spec == "user::rwx,user:1001:r-x,group::---,group:50:r-x,mask::rwx,other::---"
    dir_acl = (posixacl.Entry(posixacl.USER_OBJ, 7), posixacl.Entry(posixacl.USER, 5, 7))
    assert posixacl.for_new_file(dir_acl) == (
        posixacl.Entry(posixacl.USER_OBJ, 6),
        posixacl.Entry(posixacl.USER, 4, 7),
    )


@needs_acl
def test_acl_survives_atomic_replacement_and_new_files_inherit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dest = DirectoryDestination(out)
    dest.init()
    dest.write("tlscert", b"one")
    try:
        posixacl.setfacl(
            out / "tlscert", "user::rw-,user:65534:r--,group::---,mask::rw-,other::---"
        )
        posixacl.setfacl(out, "user::rwx,user:65534:r-x,group::---,mask::rwx,other::---")
    except posixacl.ACLError as exc:
        pytest.skip(f"the filesystem has no ACLs: {exc}")
    dest.write("tlscert", b"two")
    assert "user:65534:r--" in posixacl.getfacl(out / "tlscert")
    assert (out / "tlscert").read_bytes() == b"two"
    dest.write("fresh", b"new file")
    assert "user:65534:r--" in posixacl.getfacl(out / "fresh")
    assert posixacl.acl_matches(
        out / "tlscert", "user::rw-,user:65534:r--,group::---,mask::rw-,other::---"
    )
    # acls: off leaves new files private
    DirectoryDestination(out, acls="off").write("private", b"p")
    assert not any(e.startswith("user:65534") for e in posixacl.getfacl(out / "private"))


# --------------------------------------------------------------------- outputs
@pytest.fixture(scope="module")
def creds() -> Credentials:
    from datetime import timedelta

    from jumpgate.core.tlsca import (
        CAType,
        CertAuthority,
        Identity,
        cert_to_pem,
        generate_private_key,
        private_key_to_pem,
    )

    now = datetime.now(UTC)
    host = CertAuthority.generate(CAType.HOST, "example.com")
    user = CertAuthority.generate(CAType.USER, "example.com")
    db = CertAuthority.generate(CAType.DB, "example.com")
    key = generate_private_key()
    cert = cert_to_pem(
        user.issue(
            key.public_key(),
            not_after=now + timedelta(hours=1),
            identity=Identity(username="bot-app", groups=("access",)),
        )
    )
    return Credentials(
        key_pem=private_key_to_pem(key),
        cert_pem=cert,
        host_ca=host.cert_pem,
        user_ca=user.cert_pem,
        db_ca=db.cert_pem,
        expires=now,
    )


def _db(fmt: str) -> DatabaseOutputConfig:
    return DatabaseOutputConfig(destination=MemoryConfig(), service="example-server", format=fmt)


def test_identity_output_files(creds: Credentials) -> None:
    files = render(IdentityOutputConfig(destination=MemoryConfig()), creds)
    assert sorted(files) == sorted(BASE_FILES)
    ident = parse_identity_file(files["identity"])
    assert ident.cert_pem == files["tlscert"] and ident.key_pem == files["key"]
    assert ident.ca_pems == (creds.host_ca,)
    assert ident.cluster_name == "example.com"
    assert files["teleport-host-ca.crt"] == creds.host_ca
    assert files["teleport-user-ca.crt"] == creds.user_ca
    assert files["teleport-database-ca.crt"] == creds.db_ca


def test_database_output_formats(creds: Credentials) -> None:
    base = set(BASE_FILES)
    assert set(render(_db(""), creds)) == base
    tls = render(_db("tls"), creds)
    assert set(tls) == base | {"tls.crt", "tls.key", "tls.cas"}
    assert tls["tls.cas"] == creds.host_ca and tls["tls.crt"] == creds.cert_pem
    mongo = render(_db("mongo"), creds)
    assert set(mongo) == base | {"mongo.crt", "mongo.cas"}
    assert mongo["mongo.crt"] == creds.cert_pem + creds.key_pem
    assert mongo["mongo.cas"] == creds.db_ca
    roach = render(_db("cockroach"), creds)
    assert set(roach) == base | {"cockroach/node.crt", "cockroach/node.key", "cockroach/ca.crt"}
    assert roach["cockroach/ca.crt"] == creds.db_ca
    assert subdirs(_db("cockroach")) == ("cockroach",)
    assert ("cockroach", True) in describe(_db("cockroach"))


def test_application_output(creds: Credentials) -> None:
    app = ApplicationOutputConfig(destination=MemoryConfig(), app_name="grafana-example")
    assert set(render(app, creds)) == set(BASE_FILES)
    app.specific_tls_naming = True
    files = render(app, creds)
    assert set(files) == set(BASE_FILES) | {"tls.crt", "tls.key", "tls.cas"}
    assert files["tls.crt"] == files["tlscert"] and files["tls.key"] == files["key"]
    assert [n for n, _ in describe(app)][-3:] == ["tls.crt", "tls.key", "tls.cas"]


def test_rendered_output_written_to_a_directory_is_loadable(
    tmp_path: Path, creds: Credentials
) -> None:
    dest = DirectoryDestination(tmp_path / "machine-id")
    out = _db("cockroach")
    dest.init(subdirs(out))
    for name, data in render(out, creds).items():
        dest.write(name, data)
    ident = parse_identity_file((tmp_path / "machine-id" / "identity").read_bytes())
    assert ident.identity.username == "bot-app"
    proc = subprocess.run(
        [
            "openssl",
            "x509",
            "-noout",
            "-subject",
            "-in",
            str(tmp_path / "machine-id" / "cockroach" / "node.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if shutil.which("openssl"):
        assert "bot-app" in proc.stdout
