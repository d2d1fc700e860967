"""LazyFS: a FUSE file system that loses what was not fsynced, and can play a full disk.

A node's data dir lives on the mount; the file system keeps every change in memory until it
is made durable, and a *power cut* drops what was not (Jepsen's LazyFS, in Python, on
``mfusepy``). Two parts:

* ``LazyOps``, the file system, run by ``serve`` in a process of its own (``python -m
  net.jepsen.lazyfs``) so that the node can be killed and the disk cut independently. It has
  three directories: the *mount point*; the *backing* directory, the platter, which holds
  exactly what was made durable; and the *cache*, a copy of the backing directory in memory
  (tmpfs by default) that every operation acts on, so that reads always see the latest state
  (a process sees its own writes, durable or not).
* ``LazyDisk``, the controller: mounts (cache = backing, child started, bounded wait for the
  file system's ``init``), cuts the power, fills and frees the disk, unmounts; every wait is
  bounded and teardown is idempotent, also after failures (``fusermount3 -u -z``, then
  ``umount -l``: no stale mount left).

What is durable, and when (the model; ``docs/testing-real-clusters.md``, "Disks"):

* file data, per file at page granularity (``PAGE_BYTES``): writes and truncates change the
  cache only; ``fsync`` or ``fdatasync`` of the file copies its dirty pages and its size to
  the backing directory. A write through a descriptor opened ``O_SYNC``/``O_DSYNC`` (LMDB
  writes its meta page so) is followed by an ``fsync`` that the kernel sends by itself;
* the namespace and metadata (create, mkdir, rmdir, unlink, rename, symlink, link, chmod,
  chown) go to a *journal*, one ordered list for the whole file system, like ext4's or XFS's:
  every ``fsync`` (of any file) and every directory ``fsync`` commits the whole journal,
  in order, before the file's data. So a rename is durable after a directory ``fsync`` (or
  any later ``fsync``), and a file created and fsynced is found again. Stricter POSIX
  readings (only the fsynced directory's entries) are not modelled, nor is the background
  write-back of a real kernel (which makes data durable after ~30 s without ``fsync``): here
  nothing is durable until asked for, the worst case;
* not modelled: torn pages (a page is copied whole or not at all), timestamps (the backing
  copy gets the time of the sync), ownership beyond ``chown`` by root, extended attributes,
  ``sync(2)``/``syncfs(2)`` (FUSE does not pass them on).

A power cut kills the file system's process (SIGKILL: the journal and the dirty pages die
with it), detaches the mount (``fusermount3 -u -z``), copies the backing directory to a fresh
cache and mounts again: a new mount has new inodes, so the kernel's page cache, which LMDB
reads through ``mmap``, cannot serve a dropped page. Processes still holding files of the old
mount get ``ENOTCONN``; the nemesis kills the node first.

Full mode (``set_full(True)``): every change that would need new space fails with ``ENOSPC``
(a write past the end of a file, a growing truncate, creating a file, directory or link),
and ``statfs`` reports no free block or inode, so that a node watching its free space
(``LmdbStorage.space``) refuses writes before it meets the error. Overwriting inside a file,
removing, renaming and ``fsync`` still work: space for a pending write was taken when the
write was accepted (as ext4's delayed allocation reserves it), so ``fsync`` of data already
written does not fail. The mode survives a power cut (a full disk stays full).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes.util
import errno
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, assert_never

from net.errors import NetError

PAGE_BYTES: Final = 4096
"""The unit of dirty data: a sync copies whole pages of the cache to the backing directory."""
JOURNAL_OPS_MAX: Final = 10_000
"""Namespace changes held before the journal is committed without an ``fsync`` (a real
journal is bounded too); far above what a node does between two syncs."""
READY_TIMEOUT_S: Final = 15.0
"""How long a mount may take (a child Python process importing ``mfusepy``, then ``init``)."""
EXIT_TIMEOUT_S: Final = 5.0
"""How long the file system's process may take to exit after an unmount or a SIGKILL."""
COMMAND_TIMEOUT_S: Final = 5.0
"""How long a control command (``full``, ``status``) or an external ``fusermount3`` may take."""
LOG_TAIL_BYTES: Final = 2000
"""How much of the file system's log an error message quotes."""
FUSERMOUNT: Final = "fusermount3"
CACHE_NAME: Final = "cache"
"""The cache's directory in the scratch directory."""
LOG_NAME: Final = "lazyfs.log"
"""The file system process's standard error, in the scratch directory."""
LIBEATMYDATA: Final = "libeatmydata.so"
"""Debian ``eatmydata``'s preload library (fsync a no-op): the negative control's node."""


class LazyFsError(NetError):
    """The lazy file system could not be mounted, controlled or unmounted."""


def unavailable_reason() -> str | None:
    """Why a LazyFS cannot be mounted here (None if it can): it needs root, ``/dev/fuse``,
    ``fusermount3`` and libfuse 3 (Debian ``fuse3``) and the ``mfusepy`` package."""
    if os.geteuid() != 0:
        return "LazyFS mounts need root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (the kernel has no FUSE)"
    if shutil.which(FUSERMOUNT) is None:
        return f"no {FUSERMOUNT} (Debian package fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "no libfuse3 (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed"
    return None


# -- the journal of namespace changes ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Create:
    path: str
    mode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Mkdir:
    path: str
    mode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rmdir:
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Unlink:
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Rename:
    old: str
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Symlink:
    path: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Link:
    path: str
    existing: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Chmod:
    path: str
    mode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Chown:
    path: str
    uid: int
    gid: int


_JournalOp: TypeAlias = (
    _Create | _Mkdir | _Rmdir | _Unlink | _Rename | _Symlink | _Link | _Chmod | _Chown
)


@dataclass(slots=True)
class _Dirty:
    """The unsynced data of one file (an inode of the cache)."""

    pages: set[int] = field(default_factory=set)
    min_size: int | None = None
    """The smallest size a truncate gave the file since its last sync: the backing copy is
    cut to it first, so that bytes beyond it read as zeros once the file grows again."""


class LazyOps:
    """The file system's operations (``mfusepy`` calls them, on one thread: ``nothreads``).

    ``cache`` and ``backing`` are the roots of the cache and of the backing directory; paths
    given by FUSE start with ``/``. Descriptors handed to the kernel are descriptors of the
    cache's files. The control thread reads ``full`` and the counters under ``_mutex``.
    """

    use_ns = True  # mfusepy: times in integer nanoseconds

    def __init__(self, *, cache: str, backing: str, full: bool, ready: Callable[[], None]) -> None:
        self.cache = cache
        self.backing = backing
        self.full = full
        self._mutex = threading.Lock()
        self.syncs = 0
        self._ready = ready  # called once the kernel talks to us (FUSE init)
        self._journal: deque[_JournalOp] = deque()
        self._dirty: dict[int, _Dirty] = {}
        self._fh_ino: dict[int, int] = {}

    # -- state for the controller ---------------------------------------------------------

    def status(self) -> dict[str, int | bool]:
        with self._mutex:
            return {
                "full": self.full,
                "dirty_files": len(self._dirty),
                "dirty_pages": sum(len(d.pages) for d in self._dirty.values()),
                "journal_ops": len(self._journal),
                "syncs": self.syncs,
            }

    def set_full(self, full: bool) -> None:
        with self._mutex:
            self.full = full

    # -- helpers --------------------------------------------------------------------------

    def _c(self, path: str) -> str:
        return self.cache + path

    def _b(self, path: str) -> str:
        return self.backing + path

    def _check_room(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _log(self, op: _JournalOp) -> None:
        self._journal.append(op)
        if len(self._journal) >= JOURNAL_OPS_MAX:
            self._commit_journal()

    def _commit_journal(self) -> None:
        """Replay the namespace changes on the backing directory, in order (each leaves the
        journal once applied: a failure leaves only what is still to do)."""
        while self._journal:
            op = self._journal[0]
            match op:
                case _Create(path=path, mode=mode):
                    fd = os.open(self._b(path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
                    os.close(fd)
                case _Mkdir(path=path, mode=mode):
                    os.mkdir(self._b(path), mode)
                case _Rmdir(path=path):
                    os.rmdir(self._b(path))
                case _Unlink(path=path):
                    os.unlink(self._b(path))
                case _Rename(old=old, new=new):
                    os.rename(self._b(old), self._b(new))
                case _Symlink(path=path, target=target):
                    os.symlink(target, self._b(path))
                case _Link(path=path, existing=existing):
                    os.link(self._b(existing), self._b(path))
                case _Chmod(path=path, mode=mode):
                    os.chmod(self._b(path), mode)
                case _Chown(path=path, uid=uid, gid=gid):
                    os.chown(self._b(path), uid, gid, follow_symlinks=False)
                case _:
                    assert_never(op)
            self._journal.popleft()

    def _mark(self, ino: int, start: int, end: int) -> None:
        """Pages ``[start, end)`` (bytes) of inode ``ino`` are dirty."""
        dirty = self._dirty.setdefault(ino, _Dirty())
        if end > start:
            dirty.pages.update(range(start // PAGE_BYTES, (end - 1) // PAGE_BYTES + 1))

    def _sync(self, path: str | None, fd: int | None) -> None:
        """Commit the journal, then the data of the file at ``path`` (read through ``fd``, a
        descriptor of its cache copy, when given)."""
        self._commit_journal()
        self.syncs += 1
        if path is None:
            return  # an unlinked file: nothing of it is reachable after a power cut
        ino = os.fstat(fd).st_ino if fd is not None else os.lstat(self._c(path)).st_ino
        dirty = self._dirty.pop(ino, None)
        if dirty is None:
            return
        src = fd if fd is not None else os.open(self._c(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            dst = os.open(self._b(path), os.O_WRONLY | os.O_CLOEXEC)
            try:
                if dirty.min_size is not None:
                    os.ftruncate(dst, dirty.min_size)
                for page in sorted(dirty.pages):
                    data = os.pread(src, PAGE_BYTES, page * PAGE_BYTES)
                    if data:
                        os.pwrite(dst, data, page * PAGE_BYTES)
                os.ftruncate(dst, os.fstat(src).st_size)
            finally:
                os.close(dst)
        finally:
            if src != fd:
                os.close(src)

    def _forget_if_gone(self, st: os.stat_result) -> None:
        """Drop the dirty data of an inode whose last name was removed, unless it is open
        (``release`` drops it then): its number may be reused by a new file."""
        if st.st_nlink <= 1 and not stat.S_ISDIR(st.st_mode) and st.st_ino not in self._open_inos():
            self._dirty.pop(st.st_ino, None)

    def _open_inos(self) -> set[int]:
        return set(self._fh_ino.values())

    def _opened(self, fd: int) -> int:
        self._fh_ino[fd] = os.fstat(fd).st_ino
        return fd

    # -- FUSE operations ------------------------------------------------------------------

    def init(self, path: str) -> None:
        self._ready()

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._c(path or "/"))
        return {
            "st_mode": st.st_mode,
            "st_nlink": st.st_nlink,
            "st_uid": st.st_uid,
            "st_gid": st.st_gid,
            "st_size": st.st_size,
            "st_blocks": st.st_blocks,
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._c(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *sorted(os.listdir(self._c(path)))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._c(path))

    def statfs(self, path: str) -> dict[str, int]:
        vfs = os.statvfs(self.backing)
        with self._mutex:
            full = self.full
        return {
            "f_bsize": vfs.f_bsize,
            "f_frsize": vfs.f_frsize,
            "f_blocks": vfs.f_blocks,
            "f_bfree": 0 if full else vfs.f_bfree,
            "f_bavail": 0 if full else vfs.f_bavail,
            "f_files": vfs.f_files,
            "f_ffree": 0 if full else vfs.f_ffree,
            "f_favail": 0 if full else vfs.f_favail,
            "f_namemax": vfs.f_namemax,
        }

    def open(self, path: str, flags: int) -> int:
        # The cache's descriptor takes none of the caller's flags: the kernel checks access
        # and positions appends (pwrite on an O_APPEND descriptor would ignore its offset),
        # a truncation is tracked, and O_SYNC/O_DSYNC writes come with an fsync.
        with self._mutex:
            fd = os.open(self._c(path), os.O_RDWR | os.O_CLOEXEC)
            if flags & os.O_TRUNC:
                self._truncate(path, 0, fd)
            return self._opened(fd)

    def create(self, path: str, mode: int, flags: int) -> int:
        with self._mutex:
            existed = os.path.lexists(self._c(path))
            if not existed:
                self._check_room()
            fd = os.open(self._c(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            if not existed:
                self._log(_Create(path=path, mode=mode))
            elif flags & os.O_TRUNC:
                self._truncate(path, 0, fd)
            return self._opened(fd)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            if self.full and offset + len(data) > os.fstat(fh).st_size:
                self._check_room()
            written = os.pwrite(fh, data, offset)
            self._mark(self._fh_ino[fh], offset, offset + written)
            return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._mutex:
            self._truncate(path, length, fh)
        return 0

    def _truncate(self, path: str | None, length: int, fd: int | None) -> None:
        st = os.fstat(fd) if fd is not None else os.lstat(self._c(path or "/"))
        if length > st.st_size:
            self._check_room()
        if fd is not None:
            os.ftruncate(fd, length)
        else:
            os.truncate(self._c(path or "/"), length)
        dirty = self._dirty.setdefault(st.st_ino, _Dirty())
        if length < st.st_size:
            dirty.min_size = length if dirty.min_size is None else min(dirty.min_size, length)

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) is no sync

    def release(self, path: str | None, fh: int) -> int:
        with self._mutex:
            st = os.fstat(fh)
            os.close(fh)
            self._fh_ino.pop(fh, None)
            if st.st_nlink == 0 and st.st_ino not in self._open_inos():
                self._dirty.pop(st.st_ino, None)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self._mutex:
            self._sync(path, fh)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self._mutex:
            self._commit_journal()
            self.syncs += 1
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            self._check_room()
            os.mkdir(self._c(path), mode)
            self._log(_Mkdir(path=path, mode=mode))
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            os.rmdir(self._c(path))
            self._log(_Rmdir(path=path))
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            st = os.lstat(self._c(path))
            os.unlink(self._c(path))
            self._log(_Unlink(path=path))
            self._forget_if_gone(st)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            try:
                replaced: os.stat_result | None = os.lstat(self._c(new))
            except FileNotFoundError:
                replaced = None
            os.rename(self._c(old), self._c(new))
            self._log(_Rename(old=old, new=new))
            if replaced is not None:
                self._forget_if_gone(replaced)
        return 0

    def symlink(self, target: str, source: str) -> int:
        # mfusepy's names: the link is ``target`` and it points to ``source``.
        with self._mutex:
            self._check_room()
            os.symlink(source, self._c(target))
            self._log(_Symlink(path=target, target=source))
        return 0

    def link(self, target: str, source: str) -> int:
        # The new name is ``target``, the existing file ``source``.
        with self._mutex:
            self._check_room()
            os.link(self._c(source), self._c(target))
            self._log(_Link(path=target, existing=source))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            os.chmod(self._c(path), mode)
            self._log(_Chmod(path=path, mode=mode))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._mutex:
            os.chown(self._c(path), uid, gid, follow_symlinks=False)
            self._log(_Chown(path=path, uid=uid, gid=gid))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._c(path), follow_symlinks=False)
        else:
            os.utime(self._c(path), ns=times, follow_symlinks=False)
        return 0


# -- the file system's process ---------------------------------------------------------------


def serve(argv: Sequence[str] | None = None) -> int:
    """Mount a LazyFS and serve it until it is unmounted (``python -m net.jepsen.lazyfs``).

    Standard input carries control commands, one per line (``full on``, ``full off``,
    ``status``), each answered by one JSON line on standard output, which first says
    ``{"ready": true}`` once the kernel talks to the file system. The cache is
    ``SCRATCH/cache``. End of input (the controller died) unmounts the file system and
    removes the scratch directory, so that neither a mount nor its memory outlives the
    controller.
    """
    parser = argparse.ArgumentParser(prog="python -m net.jepsen.lazyfs")
    parser.add_argument("--backing", required=True)
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--mountpoint", required=True)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args(argv)
    import mfusepy  # libfuse is loaded here, in the file system's process only

    # The protocol owns the real standard output; stray prints go to the log.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    os.umask(0)  # modes given by the kernel already have the caller's umask applied
    reply_lock = threading.Lock()

    def reply(message: dict[str, Any]) -> None:
        with reply_lock:
            out.write(json.dumps(message, sort_keys=True) + "\n")

    ops = LazyOps(
        cache=os.path.realpath(os.path.join(args.scratch, CACHE_NAME)),
        backing=os.path.realpath(args.backing),
        full=args.full,
        ready=lambda: reply({"ready": True}),
    )
    orphaned = threading.Event()
    control = threading.Thread(
        target=_control_loop, args=(ops, reply, args.mountpoint, orphaned), daemon=True
    )
    control.start()
    mfusepy.FUSE(
        ops,
        args.mountpoint,
        foreground=True,
        nothreads=True,
        fsname="lazyfs",
        hard_remove=True,  # no .fuse_hidden files: an unlinked open file has no path
    )
    if orphaned.is_set():
        shutil.rmtree(args.scratch, ignore_errors=True)
    return 0


def _control_loop(
    ops: LazyOps,
    reply: Callable[[dict[str, Any]], None],
    mountpoint: str,
    orphaned: threading.Event,
) -> None:
    for raw in sys.stdin:
        command = raw.split()
        match command:
            case ["full", "on" | "off" as value]:
                ops.set_full(value == "on")
                reply({"ok": True, **ops.status()})
            case ["status"]:
                reply({"ok": True, **ops.status()})
            case _:
                reply({"ok": False, "error": f"unknown command {raw.strip()!r}"})
    # The controller is gone: detach the mount; the FUSE loop ends when the kernel lets go.
    orphaned.set()
    subprocess.run([FUSERMOUNT, "-u", "-z", mountpoint], check=False, timeout=COMMAND_TIMEOUT_S)


# -- the controller ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LazyStatus:
    """What the file system holds that a power cut would drop."""

    full: bool
    dirty_files: int
    dirty_pages: int
    journal_ops: int
    syncs: int


class LazyDisk:
    """One lazy disk: ``backing`` holds what is durable, ``mountpoint`` is where a node's data
    dir lives. ``mount`` before use; ``unmount`` always (safe twice, and after failures).

    The cache (the in-memory state) and the file system's log go to ``scratch``, a fresh
    directory under ``scratch_parent`` (default: ``/dev/shm`` when it exists).
    """

    def __init__(
        self, backing: Path, mountpoint: Path, *, scratch_parent: Path | None = None
    ) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        shm = Path("/dev/shm")
        self._scratch_parent = scratch_parent or (shm if shm.is_dir() else None)
        self._scratch: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._full = False

    @property
    def mounted(self) -> bool:
        return self._proc is not None

    @property
    def full(self) -> bool:
        return self._full

    async def mount(self) -> None:
        """Mount over ``mountpoint`` (an existing directory, not a mount point) what
        ``backing`` holds; return once the file system answers."""
        if self._proc is not None:
            raise LazyFsError(f"{self.mountpoint} is already mounted by this LazyDisk")
        reason = unavailable_reason()
        if reason is not None:
            raise LazyFsError(f"cannot mount a LazyFS: {reason}")
        if _is_mount_point(self.mountpoint):
            raise LazyFsError(
                f"{self.mountpoint} is already a mount point (a stale one is removed by "
                f"{FUSERMOUNT} -u -z {self.mountpoint})"
            )
        if not self.mountpoint.is_dir():
            raise LazyFsError(f"mount point {self.mountpoint} is not a directory")
        self.backing.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix="pxq-lazyfs-", dir=self._scratch_parent))
        try:
            await self._start()
        except BaseException:
            await self.unmount()
            raise

    async def power_cut(self) -> None:
        """Lose every change not made durable: kill the file system, detach the mount, and
        mount again what the backing directory holds (an empty page cache)."""
        if self._proc is None:
            raise LazyFsError(f"no LazyFS is mounted on {self.mountpoint}")
        try:
            await self._kill()
            await self._detach()
            await self._start()
        except BaseException:
            await self.unmount()
            raise

    async def set_full(self, full: bool) -> None:
        """Make the disk answer ENOSPC to every change needing space (``True``), or not."""
        await self._command(f"full {'on' if full else 'off'}")
        self._full = full

    async def status(self) -> LazyStatus:
        answer = await self._command("status")
        return LazyStatus(
            full=bool(answer["full"]),
            dirty_files=int(answer["dirty_files"]),
            dirty_pages=int(answer["dirty_pages"]),
            journal_ops=int(answer["journal_ops"]),
            syncs=int(answer["syncs"]),
        )

    async def unmount(self) -> None:
        """Unmount and stop the file system (what was not synced is dropped, as on a power
        cut), remove the cache. Idempotent; leaves no mount behind, also after failures."""
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                if not await _run([FUSERMOUNT, "-u", str(self.mountpoint)]):
                    await self._detach()  # busy: detach it lazily
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)
            await self._kill()
        finally:
            try:
                await self._detach()
            finally:
                if self._scratch is not None:
                    shutil.rmtree(self._scratch, ignore_errors=True)
                    self._scratch = None

    # -- internals ----------------------------------------------------------------------

    @property
    def _cache(self) -> Path:
        if self._scratch is None:
            raise LazyFsError("the LazyDisk is not mounted")
        return self._scratch / CACHE_NAME

    async def _start(self) -> None:
        """Copy the backing directory to a fresh cache, start the file system, wait for it."""
        cache = self._cache
        if cache.exists():
            shutil.rmtree(cache)
        shutil.copytree(self.backing, cache, symlinks=True)
        shutil.copystat(self.backing, cache)
        log_path = self._cache.parent / LOG_NAME
        args = [
            sys.executable,
            "-m",
            "net.jepsen.lazyfs",
            "--backing",
            str(self.backing),
            "--scratch",
            str(cache.parent),
            "--mountpoint",
            str(self.mountpoint),
        ]
        if self._full:
            args.append("--full")
        with open(log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a ^C of the test is the controller's to handle
            )
        answer = await self._read_line(READY_TIMEOUT_S, "mounting")
        if answer.get("ready") is not True:
            raise LazyFsError(f"LazyFS on {self.mountpoint} said {answer!r} instead of ready")
        if not _is_mount_point(self.mountpoint):
            raise LazyFsError(f"LazyFS said ready but {self.mountpoint} is not mounted")

    async def _command(self, line: str) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise LazyFsError(f"no LazyFS is mounted on {self.mountpoint}")
        proc.stdin.write(line.encode() + b"\n")
        try:
            await asyncio.wait_for(proc.stdin.drain(), COMMAND_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise LazyFsError(f"LazyFS on {self.mountpoint}: cannot send {line!r}: {exc}") from exc
        answer = await self._read_line(COMMAND_TIMEOUT_S, repr(line))
        if answer.get("ok") is not True:
            raise LazyFsError(f"LazyFS on {self.mountpoint} refused {line!r}: {answer!r}")
        return answer

    async def _read_line(self, timeout_s: float, doing: str) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise LazyFsError(f"no LazyFS is mounted on {self.mountpoint}")
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        except TimeoutError:
            raise LazyFsError(
                f"LazyFS on {self.mountpoint} did not answer within {timeout_s} s "
                f"({doing}){self._log_tail()}"
            ) from None
        if not raw:
            raise LazyFsError(f"LazyFS on {self.mountpoint} exited ({doing}){self._log_tail()}")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise LazyFsError(f"LazyFS on {self.mountpoint} answered {raw!r}") from exc
        if not isinstance(answer, dict):
            raise LazyFsError(f"LazyFS on {self.mountpoint} answered {raw!r}")
        return answer

    def _log_tail(self) -> str:
        if self._scratch is None:
            return ""
        try:
            with open(self._scratch / LOG_NAME, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - LOG_TAIL_BYTES))
                tail = log.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f": {tail}" if tail else ""

    async def _kill(self) -> None:
        """SIGKILL the file system's process (if any) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)
            except TimeoutError:
                raise LazyFsError(
                    f"LazyFS process {proc.pid} on {self.mountpoint} did not die"
                ) from None

    async def _detach(self) -> None:
        """Detach the mount even if busy or dead (lazy unmount); nothing if not mounted."""
        if not _is_mount_point(self.mountpoint):
            return
        if await _run([FUSERMOUNT, "-u", "-z", str(self.mountpoint)]):
            return
        if not await _run(["umount", "-l", str(self.mountpoint)]):
            raise LazyFsError(f"cannot unmount {self.mountpoint}")


async def _run(argv: list[str]) -> bool:
    """Run a short command (bounded); True if it succeeded."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_S) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


def _is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point (``/proc/self/mountinfo``; ``os.path.ismount``
    cannot stat a dead FUSE mount)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space, tab, newline, backslash)."""
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


if __name__ == "__main__":
    sys.exit(serve())
