"""Atomic, permission-safe file writes. Keys and certificates never half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o600,
    durable: bool = True,
    owner: tuple[int, int] | None = None,
    replace: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    The file is created with ``mode`` from the start (never world-readable in
    between) and the directory entry is fsynced so a crash leaves either the old
    or the new content, never a mix. ``durable=False`` skips the fsyncs (still
    atomic for readers) for frequently rewritten, disposable files such as status files.
    ``owner`` (uid, gid) is given to the new file before it replaces the old one, as
    far as this process may (a file another user owns keeps its owner when root
    rewrites it); without it the file belongs to this process.
    ``replace=False`` only creates: ``FileExistsError`` if ``path`` exists by the time
    the complete file is put there (a hard link, which never replaces), so a file
    someone else created meanwhile is never overwritten.
    """
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if replace:
            Path(tmp).replace(p)
        else:
            _create_from(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    if durable:
        fsync_dir(p.parent)


def _create_from(tmp: str, p: Path) -> None:
    """Put the complete file ``tmp`` at ``p`` unless something is there already."""
    try:
        os.link(tmp, p)  # never replaces: FileExistsError when p is there
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # a filesystem without hard links: a check, then the rename (a narrow race)
        if os.path.lexists(p):
            raise FileExistsError(errno.EEXIST, "File exists", str(p)) from None
        Path(tmp).replace(p)
        return
    with contextlib.suppress(OSError):  # the file is in place: a stray temp name is harmless
        Path(tmp).unlink()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry to disk (best effort on filesystems that refuse)."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def ensure_private_dir(path: str | os.PathLike[str], *, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) if missing; new directories get ``mode``."""
    p = Path(path)
    p.mkdir(mode=mode, parents=True, exist_ok=True)
    return p
