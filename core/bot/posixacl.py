"""POSIX ACLs for tbot destinations: the ``system.posix_acl_access`` xattr, and setfacl/getfacl.

``tbot init`` configures ACLs with the ``setfacl``/``getfacl`` tools (Debian
package ``acl``) so that only the bot user and the reader users can read the
credentials (TELEPORT-REFERENCE §1.4: ``user::rw``, ``user:<bot>:rw``,
``user:<reader>:r``, ``group::---``, ``mask::rw``, ``other::---``; directories
get ``x`` too). The renewal loop copies an existing file's ACL onto its
replacement by reading and writing the xattr directly (no subprocess per file).

Linux xattr format: a little-endian ``u32`` version (2), then one
``(u16 tag, u16 perm, u32 id)`` record per entry.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jumpgate.core.errors import BadParameter, JumpgateError

XATTR = "system.posix_acl_access"
_VERSION = 2
_UNDEFINED_ID = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_TAG_NAMES = {
    USER_OBJ: "user",
    USER: "user",
    GROUP_OBJ: "group",
    GROUP: "group",
    MASK: "mask",
    OTHER: "other",
}


@dataclass(frozen=True)
class Entry:
    """One ACL entry: ``tag`` (USER, GROUP, ...), permission bits (r=4 w=2 x=1), uid/gid."""

    tag: int
    perm: int
    id: int = _UNDEFINED_ID

    def text(self) -> str:
        """``user:1001:r--`` / ``mask::rw-``."""
        perms = "".join(c if self.perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        ident = "" if self.id == _UNDEFINED_ID else str(self.id)
        return f"{_TAG_NAMES[self.tag]}:{ident}:{perms}"


ACL = tuple[Entry, ...]


def decode(raw: bytes) -> ACL:
    """Parse the xattr value."""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != _VERSION or (len(raw) - 4) % 8:
        raise BadParameter("malformed POSIX ACL xattr")
    return tuple(Entry(*struct.unpack_from("<HHI", raw, off)) for off in range(4, len(raw), 8))


def encode(acl: ACL) -> bytes:
    """The xattr value (entries sorted as the kernel requires)."""
    entries = sorted(acl, key=lambda e: (e.tag, e.id))
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", e.tag, e.perm, e.id) for e in entries
    )


def get_fd(fd: int) -> ACL | None:
    """The access ACL of an open file, or None when it has none beyond its mode bits."""
    try:
        raw = os.getxattr(fd, XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    acl = decode(raw)
    return acl if any(e.tag in (USER, GROUP) for e in acl) else None


def set_fd(fd: int, acl: ACL) -> None:
    """Give an open file ``acl`` (also sets its mode bits accordingly)."""
    os.setxattr(fd, XATTR, encode(acl))


def for_new_file(dir_acl: ACL) -> ACL:
    """A file ACL derived from its directory's: the same entries without execute."""
    out = []
    for e in dir_acl:
        perm = e.perm & ~1
        if e.tag == USER_OBJ:
            perm |= 6  # the owner reads and writes its own file
        out.append(Entry(e.tag, perm, e.id))
    return tuple(out)


# --------------------------------------------------------------------- tbot init helpers
def desired_spec(
    *,
    bot_uid: int,
    owner_uid: int,
    reader_uids: Sequence[int],
    reader_gids: Sequence[int],
    is_dir: bool,
) -> str:
    """The ``setfacl --set`` text for a destination file or directory.

    The owner and the bot user may read and write; readers may only read
    (directories: read and search); the owning group and others get nothing.
    """
    x = "x" if is_dir else "-"
    entries = [f"user::rw{x}"]
    if bot_uid != owner_uid:
        entries.append(f"user:{bot_uid}:rw{x}")
    for uid in dict.fromkeys(reader_uids):
        if uid not in (owner_uid, bot_uid):
            entries.append(f"user:{uid}:r-{x}")
    entries.append("group::---")
    for gid in dict.fromkeys(reader_gids):
        entries.append(f"group:{gid}:r-{x}")
    entries += [f"mask::rw{x}", "other::---"]
    return ",".join(entries)


class ACLError(JumpgateError):
    """setfacl/getfacl failed or is missing."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ACLError(
            f"{name} is not installed", hint="install the acl package (apt-get install acl)"
        )
    return path


def setfacl(path: str | os.PathLike[str], spec: str) -> None:
    """Replace ``path``'s ACL with ``spec`` (never following a symlink: ``-P``)."""
    proc = subprocess.run(
        [_tool("setfacl"), "-P", "--set", spec, os.fspath(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ACLError(f"setfacl on {path} failed: {proc.stderr.strip() or proc.returncode}")


def getfacl(path: str | os.PathLike[str]) -> list[str]:
    """``path``'s ACL entries as setfacl text (``user:1001:r--``), numeric ids, no comments."""
    proc = subprocess.run(
        [_tool("getfacl"), "-P", "-c", "-n", "-p", os.fspath(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ACLError(f"getfacl on {path} failed: {proc.stderr.strip() or proc.returncode}")
    out = []
    for line in proc.stdout.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def acl_matches(path: str | os.PathLike[str], spec: str) -> bool:
    """Whether ``path``'s ACL is exactly ``spec`` (order does not matter)."""
    return sorted(getfacl(path)) == sorted(spec.split(","))


def acl_entries_beyond_mode(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (not followed if a link) has named ACL entries."""
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    return any(e.tag in (USER, GROUP) for e in decode(raw))


def strip(path: str | os.PathLike[str], mode: int) -> None:
    """Remove ``path``'s ACL and set plain permission bits ``mode``."""
    try:
        os.removexattr(path, XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    Path(path).chmod(mode)
