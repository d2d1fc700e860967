"""File modes of what the production side writes on disk: private to the user running it.

A node's data directory and a cluster home (with its ``data``, ``logs`` and ``run``
directories) are 0700, and every file pxq creates in them 0600: the LMDB files hold queue
payloads, the logs describe the traffic, and nothing of it is any other local user's
business. Modes are set at creation (``os.open``'s mode, LMDB's ``mode``), so the process
umask can only narrow them; a directory or file found open to group or others (created by an
older version, or by hand) is tightened, and the caller logs what was tightened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Final

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
OPEN_TO_OTHERS: Final = 0o077
"""The group and other permission bits: none of them is ever set by pxq."""


def private_dir(path: Path) -> tuple[str, ...]:
    """Create ``path`` (missing parents too) as 0700, then tighten ``path`` and the files and
    directories directly in it that are open to group or others (their group and other bits
    cleared). Returns the names tightened, ``"."`` for ``path`` itself, for the caller to
    log. Raises ``OSError``."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tightened: list[str] = []
    if _tighten(path):
        tightened.append(".")
    for entry in sorted(path.iterdir()):
        if _tighten(entry):
            tightened.append(entry.name)
    return tuple(tightened)


def _tighten(path: Path) -> bool:
    """Clear the group and other bits of a regular file or directory (never following a
    symlink); True if there were any."""
    st = path.lstat()
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not mode & OPEN_TO_OTHERS:
        return False
    os.chmod(path, mode & ~OPEN_TO_OTHERS)
    return True


def write_private(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Replace ``path`` atomically (a temporary file beside it, renamed) with ``data``, as a
    0600 file; with ``fsync``, the data is durable before the rename. Raises ``OSError``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a leftover temporary file keeps its old mode otherwise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def open_private_append(path: Path) -> BinaryIO:
    """``path`` opened for appending, created 0600, an existing one tightened to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise
