"""``tbot init``: prepare an output directory so only the bot and its readers can use it.

Follows Teleport's onInit (TELEPORT-REFERENCE §2.3): pick the output
(``--init-dir``, or the only one), create the directory and every file the
output will write (empty, 0600; directories 0700), then give each the owner
(``--owner`` or the bot user) and, with ``acls: try|required``, a POSIX ACL
granting the bot user read/write and ``--reader-user`` (and ``readers:``) read.
When ACLs cannot be used: ``required`` fails; ``try`` warns and falls back to
plain 0600/0700 permissions.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jumpgate.core.bot import posixacl
from jumpgate.core.bot.config import BotConfig
from jumpgate.core.bot.config_outputs import AnyOutput, DirectoryConfig, IdentityOutputConfig
from jumpgate.core.bot.destinations import DIR_MODE, FILE_MODE, DirectoryDestination
from jumpgate.core.bot.outputs import describe
from jumpgate.core.errors import AccessDenied, BadParameter, JumpgateError, NotFound

log = logging.getLogger(__name__)

ACL_TEST_FAILED = (
    "ACLs are not usable for destination {dest}; Change the destination's ACL mode to `off` "
    "to silence this warning."
)


@dataclass
class InitReport:
    """What ``tbot init`` did."""

    path: Path
    owner: str
    acls: bool
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise NotFound(f"unknown user {name!r}", hint="create it first (useradd)") from None


def _group(name: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except KeyError:
        raise NotFound(f"unknown group {name!r}", hint="create it first (groupadd)") from None


def _owner(spec: str, default: tuple[int, int] | None = None) -> tuple[int, int, str]:
    """``user:group`` → (uid, gid, text); empty → ``default`` or the current user."""
    if spec:
        user, sep, group = spec.partition(":")
        if not sep or not user or not group:
            raise BadParameter(f"invalid owner string: {spec!r}", hint="use --owner=USER:GROUP")
        return _user(user).pw_uid, _group(group).gr_gid, spec
    uid, gid = default or (os.geteuid(), os.getegid())
    return uid, gid, f"{_name_of_uid(uid)}:{_name_of_gid(gid)}"


def _name_of_uid(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_gid(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def select_output(cfg: BotConfig, *, init_dir: str = "", destination_dir: str = "") -> AnyOutput:
    """The output to initialise (Teleport's rules: the only one, or ``--init-dir``)."""
    if destination_dir:
        return IdentityOutputConfig(destination=DirectoryConfig(path=destination_dir))
    if not init_dir:
        if len(cfg.outputs) == 1:
            out = cfg.outputs[0]
        else:
            raise BadParameter(
                "An output to initialize must be specified with --init-dir",
                hint="pass --init-dir=PATH naming one of the configured directories",
            )
    else:
        want = Path(init_dir).absolute()
        found = [
            o
            for o in cfg.outputs
            if isinstance(o.destination, DirectoryConfig)
            and Path(o.destination.path).absolute() == want
        ]
        if not found:
            raise NotFound(
                f"Cannot initialize destination {init_dir!r} because it has not been configured.",
                hint="add an output with this directory to the config (-c), or use --destination-dir",
            )
        out = found[0]
    if not isinstance(out.destination, DirectoryConfig):
        raise BadParameter("`tbot init` only supports directory destinations")
    return out


def _existing(root: Path, wanted_dirs: list[str]) -> set[str]:
    names = {p.name for p in root.iterdir()}
    for d in wanted_dirs:
        sub = root / d
        if sub.is_dir() and not sub.is_symlink():
            names |= {f"{d}/{p.name}" for p in sub.iterdir()}
    return names


def init_destination(
    cfg: BotConfig,
    *,
    init_dir: str = "",
    destination_dir: str = "",
    bot_user: str = "",
    owner: str = "",
    reader_user: str = "",
    clean: bool = False,
) -> InitReport:
    """Create and secure one output directory; see the module docstring."""
    out = select_output(cfg, init_dir=init_dir, destination_dir=destination_dir)
    dcfg = out.destination
    assert isinstance(dcfg, DirectoryConfig)
    warnings: list[str] = []
    wanted = describe(out)
    dirs = [n for n, is_dir in wanted if is_dir]

    bot = _user(bot_user) if bot_user else None
    acl_opts: tuple[int, list[int], list[int]] | None = None
    if dcfg.acls in ("try", "required"):
        try:
            acl_opts, default_owner = _acl_users(dcfg, bot, reader_user)
            uid, gid, owner_text = _owner(owner, default_owner)
        except JumpgateError as exc:
            if dcfg.acls == "required":
                raise type(exc)(
                    ACL_TEST_FAILED.format(dest=dcfg.describe()) + f": {exc.message}",
                    hint=exc.hint,
                ) from None
            warnings.append(ACL_TEST_FAILED.format(dest=dcfg.describe()) + f" ({exc.message})")
            acl_opts = None
            uid, gid, owner_text = _owner(owner)
    else:
        uid, gid, owner_text = _owner(owner, (bot.pw_uid, bot.pw_gid) if bot else None)

    trusted = tuple({uid, *((bot.pw_uid,) if bot else ())})
    dest = DirectoryDestination(
        dcfg.path, symlinks=dcfg.symlinks, acls=dcfg.acls, trusted_uids=trusted
    )
    log.info("Initializing destination %s", dest.describe())
    dest.init(tuple(dirs))
    root = dest.path

    if acl_opts is not None:
        problem = _test_acl(root, uid, acl_opts)
        if problem:
            if dcfg.acls == "required":
                raise AccessDenied(
                    ACL_TEST_FAILED.format(dest=dcfg.describe()) + f": {problem}",
                    hint="ACL support may need to be enabled for the filesystem (install acl)",
                )
            warnings.append(ACL_TEST_FAILED.format(dest=dcfg.describe()) + f" ({problem})")
            acl_opts = None
            uid, gid, owner_text = _owner(owner)
        elif uid in acl_opts[1]:
            warnings.append(
                "The destination owner and reader are the same. This will break OpenSSH"
            )

    existing = _existing(root, dirs)
    wanted_names = {n for n, _ in wanted}
    created = sorted(wanted_names - existing)
    for name in created:
        if name not in dirs:
            dest.write(name, b"")
    extra = sorted(
        n for n in existing - wanted_names if not (n.startswith(".") and n.endswith(".tmp"))
    )
    removed: list[str] = []
    if extra and clean:
        for name in extra:
            p = root / name
            if p.is_symlink() or p.is_file():
                p.unlink()
                removed.append(name)
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
                removed.append(name)
    elif extra:
        warnings.append(
            f"{root} holds files this output does not write: {', '.join(extra)} "
            "(tbot init --clean removes them)"
        )

    if os.geteuid() != 0 and uid != os.geteuid():
        warnings.append("Not running as root, ownership change is likely to fail")
    for name, is_dir in [("", True), *sorted(wanted)]:
        _secure(root / name if name else root, is_dir, uid, gid, acl_opts)
    return InitReport(
        path=root,
        owner=owner_text,
        acls=acl_opts is not None,
        created=created,
        removed=removed,
        extra=[n for n in extra if n not in removed],
        warnings=warnings,
    )


def _acl_users(
    dcfg: DirectoryConfig, bot: pwd.struct_passwd | None, reader_user: str
) -> tuple[tuple[int, list[int], list[int]], tuple[int, int]]:
    """(bot uid, reader uids, reader gids) and the default owner (the bot user and its group)."""
    if bot is None:
        raise BadParameter("--bot-user must be set", hint="the Linux user tbot runs as")
    readers = [_user(reader_user).pw_uid] if reader_user else []
    readers += [_user(r.user).pw_uid for r in dcfg.readers if r.user]
    groups = [_group(r.group).gr_gid for r in dcfg.readers if r.group]
    if not readers and not groups:
        raise BadParameter("--reader-user must be set", hint="the Linux user that reads the files")
    return (bot.pw_uid, readers, groups), (bot.pw_uid, bot.pw_gid)


def _spec(opts: tuple[int, list[int], list[int]], owner_uid: int, is_dir: bool) -> str:
    bot_uid, readers, groups = opts
    return posixacl.desired_spec(
        bot_uid=bot_uid, owner_uid=owner_uid, reader_uids=readers, reader_gids=groups, is_dir=is_dir
    )


def _test_acl(root: Path, owner_uid: int, opts: tuple[int, list[int], list[int]]) -> str | None:
    """Set an ACL on a scratch file in the destination; the problem, or None when it works."""
    test = root / str(uuid.uuid4())
    try:
        fd = os.open(test, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, FILE_MODE)
        os.close(fd)
        posixacl.setfacl(test, _spec(opts, owner_uid, False))
    except (OSError, JumpgateError) as exc:
        return getattr(exc, "message", None) or str(exc)
    finally:
        test.unlink(missing_ok=True)
    return None


def _secure(
    path: Path, is_dir: bool, uid: int, gid: int, acl_opts: tuple[int, list[int], list[int]] | None
) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise AccessDenied(f"{path} is a symbolic link; refusing to change it", hint="remove it")
    if is_dir != stat.S_ISDIR(st.st_mode):
        kind = "a directory" if is_dir else "a file"
        raise BadParameter(
            f"{path} is expected to be {kind}", hint="remove it and run tbot init again"
        )
    if (st.st_uid, st.st_gid) != (uid, gid):
        try:
            os.chown(path, uid, gid, follow_symlinks=False)
        except PermissionError:
            raise AccessDenied(
                f"cannot change the owner of {path}: Elevated permissions required",
                hint="run tbot init as root",
            ) from None
    if acl_opts is not None:
        spec = _spec(acl_opts, uid, is_dir)
        if not posixacl.acl_matches(path, spec):
            if os.geteuid() not in (0, uid):
                raise AccessDenied(
                    f"the ACL of {path} is incorrect: Elevated permissions required",
                    hint="run tbot init as root or as the owner",
                )
            posixacl.setfacl(path, spec)
        return
    mode = DIR_MODE if is_dir else FILE_MODE
    if stat.S_IMODE(st.st_mode) != mode or posixacl.acl_entries_beyond_mode(path):
        posixacl.strip(path, mode)
