"""Where tbot writes credentials: a directory (safely) or memory.

:class:`DirectoryDestination` writes every file atomically (a temporary file
in the same directory, fsync, rename) with mode 0600; directories it creates
get 0700. It never writes *through* a symbolic link someone planted:

* the destination directory is opened with ``O_NOFOLLOW|O_DIRECTORY`` and must
  be owned by us or root (``symlinks: secure`` and ``try-secure``); a
  directory that is a symlink is refused in ``secure`` mode and, in
  ``try-secure`` mode, followed with a warning only when its target is ours;
* files are created relative to that directory's descriptor with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` and renamed over the old name, so a planted
  ``tlscert -> /etc/passwd`` is *replaced* (``try-secure``, with a warning) or
  refused (``secure``), and its target is never opened for writing;
* ``symlinks: insecure`` follows links on purpose (for people who link
  outputs elsewhere).

A file that ``tbot init`` prepared (owner, POSIX ACL for the reader) keeps its
owner and ACL across these atomic replacements: they are copied onto the
temporary file before the rename. A new file in a directory with an ACL gets
the directory's named entries (without execute), so readers keep access.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from jumpgate.core.bot import posixacl
from jumpgate.core.bot.config_outputs import DestinationConfig, DirectoryConfig
from jumpgate.core.errors import AccessDenied, BadParameter, NotFound
from jumpgate.core.failpoint import failpoint

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


class Destination(Protocol):
    """Somewhere credentials are written to and read back from."""

    def describe(self) -> str:
        """``directory /opt/machine-id`` / ``memory``."""
        ...

    def init(self, subdirs: tuple[str, ...] = ()) -> None:
        """Create the destination (and ``subdirs``) if needed."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Replace file ``name`` (may contain one ``/``) atomically."""
        ...

    def write_many(self, files: dict[str, bytes]) -> None:
        """Replace several files, each atomically, all switched over together."""
        ...

    def read(self, name: str) -> bytes | None:
        """The content of ``name``, or None when it does not exist."""
        ...


class MemoryDestination:
    """Files kept in a dict (``type: memory``)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def describe(self) -> str:
        """``memory``."""
        return "memory"

    def init(self, subdirs: tuple[str, ...] = ()) -> None:
        """Nothing to create."""

    def write(self, name: str, data: bytes) -> None:
        """Keep ``data`` under ``name``."""
        self.files[name] = bytes(data)

    def write_many(self, files: dict[str, bytes]) -> None:
        """Keep every file (one dict update: readers see all or none)."""
        self.files.update({k: bytes(v) for k, v in files.items()})

    def read(self, name: str) -> bytes | None:
        """The kept bytes, or None."""
        return self.files.get(name)


def _split(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise BadParameter(f"invalid destination file name {name!r}")
    return parts


class DirectoryDestination:
    """A directory on disk; see the module docstring for the symlink rules."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        symlinks: str = "try-secure",
        acls: str = "try",
        trusted_uids: tuple[int, ...] = (),
    ) -> None:
        if symlinks not in ("insecure", "try-secure", "secure"):
            raise BadParameter(f"invalid symlinks mode {symlinks!r}")
        self.path = Path(path).absolute()
        self.symlinks = symlinks
        self.acls = acls
        #: Owners accepted besides this user and root (``tbot init --owner``).
        self.trusted_uids = trusted_uids
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls, cfg: DirectoryConfig) -> DirectoryDestination:
        """From a ``type: directory`` config."""
        return cls(cfg.path, symlinks=cfg.symlinks, acls=cfg.acls)

    def describe(self) -> str:
        """``directory /opt/machine-id``."""
        return f"directory {self.path}"

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # ------------------------------------------------------------------ the directory
    def _ours(self, st: os.stat_result) -> bool:
        return st.st_uid in (os.geteuid(), 0, *self.trusted_uids)

    def _check_owner(self, path: Path, st: os.stat_result) -> None:
        """Secure modes: the directory must be ours or root's (root may also use its users')."""
        if self.symlinks == "insecure" or self._ours(st):
            return
        if self.symlinks == "try-secure" and os.geteuid() == 0:
            self._warn_once(
                "owner",
                "the destination %s belongs to uid %d, not root; writing there as root "
                "(symlinks: try-secure)",
                path,
                st.st_uid,
            )
            return
        raise AccessDenied(
            f"the destination {path} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.geteuid()}) or root; refusing to write credentials there",
            hint="run tbot as the directory's owner (see tbot init --owner), "
            "or set symlinks: insecure",
        )

    def _resolve_dir(self, *, create: bool) -> Path:
        """The directory to open, after the symlink/ownership policy (creating it if asked)."""
        p = self.path
        try:
            st = p.lstat()
        except PermissionError:
            raise AccessDenied(
                f"cannot reach the destination {p}: permission denied",
                hint="every parent directory must be searchable by the user tbot runs as",
            ) from None
        except FileNotFoundError:
            if not create:
                raise NotFound(
                    f"the destination {p} does not exist",
                    hint="create it with tbot init, or run tbot start once",
                ) from None
            p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(p))
            if self.symlinks == "secure":
                raise AccessDenied(
                    f"the destination {p} is a symbolic link (to {target}); refusing to use it "
                    "with symlinks: secure",
                    hint="point path at the real directory, or set symlinks: insecure",
                )
            if self.symlinks == "try-secure":
                tst = target.stat()
                if not self._ours(tst):
                    raise AccessDenied(
                        f"the destination {p} is a symbolic link to {target}, which belongs "
                        f"to uid {tst.st_uid}, not to this user; refusing to use it",
                        hint="point path at a directory you own, or set symlinks: insecure",
                    )
                self._warn_once(
                    "dirlink",
                    "the destination %s is a symbolic link to %s and may be subject to symlink "
                    "attacks; set symlinks: insecure if this is intentional",
                    p,
                    target,
                )
            return target
        if not stat.S_ISDIR(st.st_mode):
            raise BadParameter(f"the destination {p} is not a directory")
        return p

    @contextlib.contextmanager
    def _dir_fd(self, *, create: bool = True) -> Iterator[int]:
        path = self._resolve_dir(create=create)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if self.symlinks != "insecure":
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AccessDenied(
                    f"the destination {path} was replaced by a symbolic link; refusing to use it"
                ) from None
            if exc.errno == errno.EACCES:
                raise AccessDenied(
                    f"cannot open the destination {path}: permission denied",
                    hint="run tbot as the directory's owner, or fix it with tbot init",
                ) from None
            raise
        try:
            self._check_owner(path, os.fstat(fd))
            yield fd
        finally:
            os.close(fd)

    def _subdir(self, dfd: int, part: str, *, create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if self.symlinks != "insecure":
            flags |= os.O_NOFOLLOW
        try:
            return os.open(part, flags, dir_fd=dfd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, DIR_MODE, dir_fd=dfd)
            return os.open(part, flags, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise AccessDenied(
                    f"{self.path / part} is a symbolic link or not a directory; refusing to "
                    f"follow it (symlinks: {self.symlinks})",
                    hint="remove it; tbot recreates the directory",
                ) from None
            raise

    def init(self, subdirs: tuple[str, ...] = ()) -> None:
        """Create the directory (0700) and ``subdirs``; check the symlink/ownership policy."""
        with self._dir_fd(create=True) as dfd:
            for sub in subdirs:
                cur = dfd
                opened: list[int] = []
                try:
                    for part in _split(sub):
                        cur = self._subdir(cur, part, create=True)
                        opened.append(cur)
                finally:
                    for fd in opened:
                        os.close(fd)

    # ------------------------------------------------------------------ files
    def write(self, name: str, data: bytes) -> None:
        """Replace ``name`` atomically (0600), never writing through a planted symlink."""
        parts = _split(name)
        with self._dir_fd(create=True) as top:
            opened: list[int] = []
            dfd = top
            try:
                for part in parts[:-1]:
                    dfd = self._subdir(dfd, part, create=True)
                    opened.append(dfd)
                self._write_at(dfd, parts[-1], name, data)
            finally:
                for fd in opened:
                    os.close(fd)

    def write_many(self, files: dict[str, bytes]) -> None:
        """Replace several files so that readers see the new set together, as nearly as
        POSIX allows: every new file is written and fsynced under a temporary name
        first, then all are renamed into place in a row (microseconds apart, where
        writing them one by one leaves milliseconds between a new ``key`` and its
        ``tlscert``), then the directories are fsynced.
        """
        with self._dir_fd(create=True) as top:
            opened: list[int] = []
            staged: list[tuple[int, str, str]] = []  # (directory fd, temporary, final name)
            try:
                for name, data in files.items():
                    parts = _split(name)
                    dfd = top
                    for part in parts[:-1]:
                        dfd = self._subdir(dfd, part, create=True)
                        opened.append(dfd)
                    tmp = self._stage_at(dfd, parts[-1], name, data)
                    if tmp is not None:
                        staged.append((dfd, tmp, parts[-1]))
                for i, (dfd, tmp, base) in enumerate(staged):
                    os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
                    staged[i] = (dfd, "", base)
                    if i == 0:
                        failpoint("bot.output.after_first_file")
                for fd in (top, *opened):
                    with contextlib.suppress(OSError):
                        os.fsync(fd)
            finally:
                for dfd, tmp, _ in staged:
                    if tmp:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp, dir_fd=dfd)
                for fd in opened:
                    os.close(fd)

    def _write_at(self, dfd: int, base: str, name: str, data: bytes) -> None:
        tmp = self._stage_at(dfd, base, name, data)
        if tmp is None:
            return
        try:
            os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(dfd)

    def _stage_at(self, dfd: int, base: str, name: str, data: bytes) -> str | None:
        """Write ``data`` to a new temporary file beside ``base`` (owner and ACL carried
        over, fsynced) and return its name; None when it was written already (a
        deliberately followed symlink, ``symlinks: insecure``)."""
        full = self.path / name
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            target = os.readlink(base, dir_fd=dfd)
            if self.symlinks == "secure":
                raise AccessDenied(
                    f"refusing to write {full}: it is a symbolic link (to {target}) and "
                    "symlinks: secure forbids following it",
                    hint=f"remove {full}; if the link is intentional set symlinks: insecure",
                )
            if self.symlinks == "insecure":
                from jumpgate.core.fsutil import atomic_write

                real = Path(os.path.realpath(full))
                atomic_write(real, data, mode=FILE_MODE)
                return None
            log.warning(
                "%s is a symbolic link (to %s): replacing the link with a regular file instead "
                "of following it (symlinks: try-secure)",
                full,
                target,
            )
            st = None  # do not copy anything from the link's target
        elif st is not None and not stat.S_ISREG(st.st_mode):
            raise BadParameter(f"{full} exists and is not a regular file")
        acl = self._acl_for(dfd, base, st)
        tmp = f".{base}.{secrets.token_hex(6)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=dfd,
        )
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                if st is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(fd, st.st_uid, st.st_gid)
                if acl is not None:
                    posixacl.set_fd(fd, acl)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return tmp

    def _acl_for(self, dfd: int, base: str, st: os.stat_result | None) -> posixacl.ACL | None:
        """The ACL the new file should carry: the old file's, else derived from the directory's."""
        if self.acls == "off":
            return None
        if st is not None:
            try:
                fd = os.open(
                    base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
                )
            except OSError:
                return None
            try:
                return posixacl.get_fd(fd)
            finally:
                os.close(fd)
        dir_acl = posixacl.get_fd(dfd)
        return posixacl.for_new_file(dir_acl) if dir_acl is not None else None

    def read(self, name: str) -> bytes | None:
        """The content of ``name`` (None when missing); symlinks refused unless ``insecure``."""
        parts = _split(name)
        try:
            with self._dir_fd(create=False) as top:
                opened: list[int] = []
                dfd = top
                try:
                    for part in parts[:-1]:
                        dfd = self._subdir(dfd, part, create=False)
                        opened.append(dfd)
                    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
                    if self.symlinks != "insecure":
                        flags |= os.O_NOFOLLOW
                    try:
                        fd = os.open(parts[-1], flags, dir_fd=dfd)
                    except OSError as exc:
                        if exc.errno == errno.ELOOP:
                            raise AccessDenied(
                                f"refusing to read {self.path / name}: it is a symbolic link",
                                hint="remove it, or set symlinks: insecure",
                            ) from None
                        raise
                    try:
                        if not stat.S_ISREG(os.fstat(fd).st_mode):
                            raise BadParameter(f"{self.path / name} is not a regular file")
                        chunks = []
                        while chunk := os.read(fd, 65536):
                            chunks.append(chunk)
                        return b"".join(chunks)
                    finally:
                        os.close(fd)
                finally:
                    for fd in opened:
                        os.close(fd)
        except (FileNotFoundError, NotFound):
            return None
        except PermissionError:
            raise AccessDenied(
                f"cannot read {self.path / name}: permission denied",
                hint="run as the bot user or a reader set up with tbot init",
            ) from None

    def listdir(self) -> list[str]:
        """Names in the directory (top level)."""
        with self._dir_fd(create=False) as dfd:
            return sorted(os.listdir(dfd))  # noqa: PTH208 - a directory descriptor


def make_destination(cfg: DestinationConfig) -> DirectoryDestination | MemoryDestination:
    """The destination a config describes."""
    if isinstance(cfg, DirectoryConfig):
        return DirectoryDestination.from_config(cfg)
    return MemoryDestination()
