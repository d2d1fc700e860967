"""LazyFS (``net.jepsen.lazyfs``): what survives a power cut is exactly what was fsynced.

Unit tests drive ``LazyOps`` directly on two plain directories (a cache and a backing dir, no
FUSE): dirty pages and sizes reach the backing dir only on ``fsync``, a shrink then a growth
syncs as zeros, the namespace journal is committed in order by any ``fsync`` or directory
``fsync``, an unlinked file's dirty data is forgotten, full mode refuses growth only.

Mounted tests (root, ``/dev/fuse``, fuse3 and mfusepy; skipped otherwise, with the reason)
go through the kernel: a write without fsync is gone after a power cut while reads saw it;
with fsync it is kept; a rename is kept after a directory fsync and lost without; full mode
gives ENOSPC and ``statfs`` shows no room, and clears; the node's LMDB storage commits
(fdatasync plus LMDB's O_DSYNC meta page) survive a power cut in a process killed while
committing, exactly up to and including every acknowledged commit; and an eatmydata'd
LMDB (fsync a no-op) loses its committed transactions: the negative control of ``pxq test``.
End to end: a 3-replica cluster (``pxq cluster up``'s processes) with every data dir on a lazy
disk keeps every acknowledged item through kill -9 plus a power cut of every node (with its
nodes under eatmydata, tried by hand, it loses every item). Every mount is unmounted in a
``finally``, and the tests check that no mount is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from net.client.api import AsyncClient
from net.cluster.processes import ClusterHome, down, start_node, up
from net.config import MIB, NetConfig
from net.errors import NetError
from net.jepsen.lazyfs import (
    FUSERMOUNT,
    LIBEATMYDATA,
    PAGE_BYTES,
    LazyDisk,
    LazyFsError,
    LazyOps,
    _is_mount_point,
    unavailable_reason,
)
from net.node.storage import LmdbStorage
from tests.test_cli_cluster import kill_all
from tests.test_net_cluster import TOPIC, cluster_toml, free_ports

CONFIG = NetConfig(map_size_bytes=16 * MIB)
CHILD_TIMEOUT_S = 30.0
"""Bound of every child process of these tests."""

# -- LazyOps without FUSE ------------------------------------------------------------------


def make_ops(tmp_path: Path) -> tuple[LazyOps, Path, Path]:
    cache, backing = tmp_path / "cache", tmp_path / "backing"
    cache.mkdir()
    backing.mkdir()
    return (
        LazyOps(cache=str(cache), backing=str(backing), full=False, ready=lambda: None),
        cache,
        backing,
    )


def test_data_reaches_the_backing_dir_only_on_fsync(tmp_path: Path) -> None:
    ops, cache, backing = make_ops(tmp_path)
    fh = ops.create("/f", 0o600, os.O_WRONLY)
    ops.write("/f", b"a" * (PAGE_BYTES + 10), 0, fh)
    assert (cache / "f").read_bytes() == b"a" * (PAGE_BYTES + 10)
    assert not (backing / "f").exists()  # the create is in the journal
    assert ops.status()["dirty_pages"] == 2
    ops.fsync("/f", 1, fh)
    assert (backing / "f").read_bytes() == b"a" * (PAGE_BYTES + 10)
    ops.write("/f", b"b", 5, fh)  # one page dirty again
    assert (backing / "f").read_bytes()[5:6] == b"a"
    assert ops.status() == {
        "full": False,
        "dirty_files": 1,
        "dirty_pages": 1,
        "journal_ops": 0,
        "syncs": 1,
    }
    ops.fsync("/f", 1, fh)
    assert (backing / "f").read_bytes() == (cache / "f").read_bytes()
    ops.release("/f", fh)


def test_a_shrink_then_growth_syncs_zeros_not_old_bytes(tmp_path: Path) -> None:
    ops, cache, backing = make_ops(tmp_path)
    fh = ops.create("/f", 0o600, os.O_WRONLY)
    ops.write("/f", b"x" * (3 * PAGE_BYTES), 0, fh)
    ops.fsync("/f", 0, fh)
    ops.truncate("/f", 100, fh)
    ops.truncate("/f", 2 * PAGE_BYTES, fh)  # grows again: bytes 100.. are zeros
    ops.write("/f", b"y", PAGE_BYTES + 7, fh)
    ops.fsync("/f", 0, fh)
    expected = b"x" * 100 + bytes(PAGE_BYTES - 100) + bytes(7) + b"y" + bytes(PAGE_BYTES - 8)
    assert (cache / "f").read_bytes() == expected
    assert (backing / "f").read_bytes() == expected
    ops.release("/f", fh)


def test_the_namespace_journal_is_committed_in_order_by_any_fsync(tmp_path: Path) -> None:
    ops, _cache, backing = make_ops(tmp_path)
    ops.mkdir("/d", 0o700)
    fh = ops.create("/d/tmp", 0o600, os.O_WRONLY)
    ops.write("/d/tmp", b"new", 0, fh)
    ops.fsync("/d/tmp", 0, fh)
    ops.release("/d/tmp", fh)
    ops.rename("/d/tmp", "/d/final")
    ops.symlink("/link", "d/final")
    ops.chmod("/d/final", 0o640)
    assert sorted(os.listdir(backing / "d")) == ["tmp"]
    assert ops.status()["journal_ops"] == 3
    ops.fsyncdir("/d", 0, 0)
    assert sorted(os.listdir(backing / "d")) == ["final"]
    assert (backing / "d" / "final").read_bytes() == b"new"
    assert (backing / "d" / "final").stat().st_mode & 0o777 == 0o640
    assert os.readlink(backing / "link") == "d/final"
    ops.unlink("/link")
    ops.unlink("/d/final")
    ops.rmdir("/d")
    ops.fsyncdir("/", 0, 0)
    assert os.listdir(backing) == []


def test_a_file_created_before_another_fsync_comes_back_empty_without_its_own(
    tmp_path: Path,
) -> None:
    ops, _cache, backing = make_ops(tmp_path)
    f = ops.create("/f", 0o600, os.O_WRONLY)
    ops.write("/f", b"never synced", 0, f)
    g = ops.create("/g", 0o600, os.O_WRONLY)
    ops.write("/g", b"synced", 0, g)
    ops.fsync("/g", 1, g)  # commits the whole journal: both creates
    assert (backing / "f").read_bytes() == b""
    assert (backing / "g").read_bytes() == b"synced"
    ops.release("/f", f)
    ops.release("/g", g)


def test_an_unlinked_file_leaves_no_dirty_data_behind(tmp_path: Path) -> None:
    ops, _cache, backing = make_ops(tmp_path)
    fh = ops.create("/f", 0o600, os.O_WRONLY)
    ops.write("/f", b"gone", 0, fh)
    ops.release("/f", fh)
    ops.unlink("/f")
    assert ops.status()["dirty_files"] == 0
    fh = ops.create("/g", 0o600, os.O_WRONLY)  # may reuse the inode number
    ops.write("/g", b"kept", 0, fh)
    ops.unlink("/g")  # still open: its data stays dirty until released
    assert ops.status()["dirty_files"] == 1
    ops.release(None, fh)
    assert ops.status()["dirty_files"] == 0
    ops.fsyncdir("/", 0, 0)
    assert os.listdir(backing) == []


def test_full_mode_refuses_growth_and_allows_overwrites_removals_and_syncs(tmp_path: Path) -> None:
    ops, _cache, backing = make_ops(tmp_path)
    fh = ops.create("/f", 0o600, os.O_WRONLY)
    ops.write("/f", b"abcd", 0, fh)
    ops.set_full(True)
    refusals: tuple[Callable[[], int], ...] = (
        lambda: ops.write("/f", b"e", 4, fh),
        lambda: ops.truncate("/f", 10, fh),
        lambda: ops.create("/g", 0o600, os.O_WRONLY),
        lambda: ops.mkdir("/d", 0o700),
        lambda: ops.link("/h", "/f"),
        lambda: ops.symlink("/s", "f"),
    )
    for refused in refusals:
        with pytest.raises(OSError) as caught:
            refused()
        assert caught.value.errno == errno.ENOSPC
    assert ops.write("/f", b"X", 1, fh) == 1  # inside the file: no new space
    ops.fsync("/f", 0, fh)  # the pending data had its space reserved when written
    assert (backing / "f").read_bytes() == b"aXcd"
    room = ops.statfs("/")
    assert room["f_bavail"] == room["f_bfree"] == room["f_favail"] == 0
    ops.set_full(False)
    assert ops.write("/f", b"e", 4, fh) == 1
    assert ops.statfs("/")["f_bavail"] > 0
    ops.release("/f", fh)


# -- through FUSE ---------------------------------------------------------------------------

needs_fuse = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"LazyFS cannot mount here: {unavailable_reason()}"
)


def on_lazy_disk(tmp_path: Path, body: Callable[[LazyDisk, Path], Awaitable[None]]) -> None:
    """Run ``body(disk, mountpoint)`` on a mounted LazyDisk; unmount whatever happens and
    check that no mount is left."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    async def main() -> None:
        disk = LazyDisk(tmp_path / "backing", mnt)
        await disk.mount()
        try:
            await body(disk, mnt)
        finally:
            await disk.unmount()
            await disk.unmount()  # idempotent

    asyncio.run(main())
    assert not _is_mount_point(mnt)


def fsynced_write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@needs_fuse
def test_a_power_cut_keeps_exactly_what_was_fsynced(tmp_path: Path) -> None:
    async def body(disk: LazyDisk, mnt: Path) -> None:
        fsynced_write(mnt / "kept", b"durable")
        fsync_dir(mnt)
        (mnt / "kept").write_bytes(b"overwritten, never synced")
        (mnt / "new").write_bytes(b"never synced")
        assert (mnt / "kept").read_bytes() == b"overwritten, never synced"  # reads see it
        assert (mnt / "new").read_bytes() == b"never synced"
        status = await disk.status()
        assert status.dirty_files == 2 and status.journal_ops == 1  # the create of "new"
        with pytest.raises(LazyFsError, match="already a mount point"):
            await LazyDisk(disk.backing, mnt).mount()
        await disk.power_cut()
        assert sorted(os.listdir(mnt)) == ["kept"]
        assert (mnt / "kept").read_bytes() == b"durable"
        assert (await disk.status()).dirty_files == 0

    on_lazy_disk(tmp_path, body)


@needs_fuse
def test_a_rename_is_durable_after_a_directory_fsync_only(tmp_path: Path) -> None:
    async def body(disk: LazyDisk, mnt: Path) -> None:
        (mnt / "d").mkdir()
        fsynced_write(mnt / "d" / "a.tmp", b"A")
        os.rename(mnt / "d" / "a.tmp", mnt / "d" / "a")
        fsync_dir(mnt / "d")
        fsynced_write(mnt / "d" / "b.tmp", b"B")
        os.rename(mnt / "d" / "b.tmp", mnt / "d" / "b")  # no fsync after it
        await disk.power_cut()
        assert sorted(os.listdir(mnt / "d")) == ["a", "b.tmp"]
        assert (mnt / "d" / "a").read_bytes() == b"A"

    on_lazy_disk(tmp_path, body)


@needs_fuse
def test_full_mode_gives_enospc_and_clears(tmp_path: Path) -> None:
    async def body(disk: LazyDisk, mnt: Path) -> None:
        fsynced_write(mnt / "f", b"1234")
        await disk.set_full(True)
        assert disk.full and (await disk.status()).full
        assert os.statvfs(mnt).f_bavail == 0
        with pytest.raises(OSError) as caught:
            (mnt / "g").write_bytes(b"x")
        assert caught.value.errno == errno.ENOSPC
        fd = os.open(mnt / "f", os.O_WRONLY)
        try:
            with pytest.raises(OSError) as caught:
                os.pwrite(fd, b"5", 4)
            assert caught.value.errno == errno.ENOSPC
            assert os.pwrite(fd, b"X", 0) == 1
            os.fsync(fd)
        finally:
            os.close(fd)
        await disk.power_cut()  # a full disk stays full
        assert (mnt / "f").read_bytes() == b"X234"
        assert os.statvfs(mnt).f_bavail == 0
        await disk.set_full(False)
        fsynced_write(mnt / "g", b"x")
        assert os.statvfs(mnt).f_bavail > 0

    on_lazy_disk(tmp_path, body)


ORPHAN = """
import asyncio, sys
from pathlib import Path
from net.jepsen.lazyfs import LazyDisk

async def main():
    disk = LazyDisk(Path(sys.argv[1]), Path(sys.argv[2]))
    await disk.mount()
    print(disk._cache.parent, flush=True)
    await asyncio.sleep(60)  # killed before

asyncio.run(main())
"""
ORPHAN_GONE_S = 10.0
"""Bound of the wait for an orphaned file system to unmount and clean up."""


@needs_fuse
def test_a_file_system_whose_controller_died_unmounts_and_removes_its_cache(
    tmp_path: Path,
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(tmp_path / "backing"), str(mnt)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        scratch = Path(proc.stdout.readline().strip())
        assert scratch.is_dir() and _is_mount_point(mnt)
    finally:
        proc.kill()
        proc.wait(CHILD_TIMEOUT_S)
    deadline = time.monotonic() + ORPHAN_GONE_S
    try:
        while _is_mount_point(mnt) or scratch.exists():
            assert time.monotonic() < deadline, "the orphaned LazyFS is still there"
            time.sleep(0.05)
    finally:
        if _is_mount_point(mnt):  # the test failed: leave no mount behind
            subprocess.run([FUSERMOUNT, "-u", "-z", str(mnt)], check=False, timeout=10)


COMMITTER = """
import sys
from pathlib import Path
from net.config import MIB, NetConfig
from net.node.storage import LmdbStorage
from pxq.effects import Put
s = LmdbStorage.open(Path(sys.argv[1]), cluster="c", node="n",
                     config=NetConfig(map_size_bytes=16 * MIB, checkpoint_batches=8))
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    s.apply([Put(table="t", key=b"k%05d" % i, value=b"v" * 200)])
    if sys.argv[4] == "commit":
        s.commit()  # a checkpoint: one LMDB transaction
    else:  # as the runner does: the write-ahead log, a checkpoint every 8th batch
        s.written(s.write(s.seal()))
    print(i, flush=True)  # acknowledged: the commit returned
s.close()
"""
MODES = ("commit", "log")
"""How the committer makes each write durable: ``commit`` (every one an LMDB transaction),
``log`` (seal, write, written: appended to the write-ahead log, with a checkpoint now and
then)."""


def committer(
    data: Path, start: int, end: int, env: dict[str, str], mode: str = "commit"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", COMMITTER, str(data), str(start), str(end), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | env,
    )


def stored_keys(data: Path) -> list[bytes]:
    storage = LmdbStorage.open(data, cluster="c", node="n", config=CONFIG)
    try:
        return [key for key, _ in storage.scan("t")]
    finally:
        storage.close()


@needs_fuse
@pytest.mark.parametrize("mode", MODES)
def test_lmdb_keeps_every_acknowledged_commit_of_a_process_killed_by_a_power_cut(
    tmp_path: Path, mode: str
) -> None:
    async def body(disk: LazyDisk, mnt: Path) -> None:
        data = mnt / "node"
        proc = committer(data, 0, 100_000, {}, mode)
        acked = -1
        try:
            assert proc.stdout is not None
            while acked < 30:  # bounded: the child commits at most 100,000 and dies
                line = proc.stdout.readline()
                assert line, "the committer exited early"
                acked = int(line)
        finally:
            proc.kill()
            proc.wait(CHILD_TIMEOUT_S)
        await disk.power_cut()
        keys = stored_keys(data)
        assert len(keys) > acked  # every acknowledged commit, in order, and nothing else
        assert keys == [b"k%05d" % i for i in range(len(keys))]

    on_lazy_disk(tmp_path, body)


@needs_fuse
@pytest.mark.skipif(
    ctypes.util.find_library("eatmydata") is None, reason="no libeatmydata (Debian eatmydata)"
)
@pytest.mark.parametrize("mode", MODES)
def test_an_eatmydata_lmdb_loses_committed_transactions_on_a_power_cut(
    tmp_path: Path, mode: str
) -> None:
    async def body(disk: LazyDisk, mnt: Path) -> None:
        data = mnt / "node"
        honest = committer(data, 0, 3, {})
        assert honest.communicate(timeout=CHILD_TIMEOUT_S)[0].split() == ["0", "1", "2"]
        lying = committer(data, 3, 20, {"LD_PRELOAD": LIBEATMYDATA}, mode)
        assert lying.communicate(timeout=CHILD_TIMEOUT_S)[0].split()[-1] == "19"
        assert lying.returncode == 0
        if mode == "commit":
            # Before the cut: all of them. (Not read in "log" mode: opening a data dir
            # replays its log into LMDB with real syncs, which would save the lie.)
            assert len(stored_keys(data)) == 20
        await disk.power_cut()
        assert stored_keys(data) == [b"k00000", b"k00001", b"k00002"]

    on_lazy_disk(tmp_path, body)


NODES = ("s0", "s1", "s2")
ITEMS = 60
"""Items enqueued (each acknowledged once durable on a majority) before every node loses its
power."""
READ_TIMEOUT_S = 20.0
"""Bound of reading the items back after the restart (elections, catch-up)."""


@needs_fuse
def test_a_cluster_on_lazy_disks_keeps_every_acknowledged_item_through_a_power_cut_of_every_node(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "cluster.toml"
    config_file.write_text(cluster_toml(free_ports(3)), encoding="utf-8")
    home = ClusterHome(tmp_path / "home")
    disks = {node: LazyDisk(tmp_path / "disks" / node, home.data_dir(node)) for node in NODES}

    async def enqueue_all() -> list[bytes]:
        client = await AsyncClient.connect(config_file)
        try:
            payloads = [b"item-%03d" % i for i in range(ITEMS)]
            for start in range(0, ITEMS, 10):  # ten calls in flight: batched proposals
                await asyncio.gather(
                    *(client.enqueue(TOPIC, p, key=p[-1:]) for p in payloads[start : start + 10])
                )
            return payloads
        finally:
            await client.close()

    async def read_all() -> set[bytes]:
        client = await AsyncClient.connect(config_file)
        deadline = time.monotonic() + READ_TIMEOUT_S
        try:
            while True:
                try:
                    found: set[bytes] = set()
                    for queue in range(4):
                        items = await client.peek(TOPIC, "default", queue, offset=0, count=ITEMS)
                        found.update(bytes(item.payload) for item in items)
                    return found
                except NetError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await client.close()

    async def main() -> None:
        pids: dict[str, int] = {}
        try:
            for disk in disks.values():
                disk.mountpoint.mkdir(parents=True)
                await disk.mount()
            started = await up(home, config_file, tls=False)
            pids = {n.node: n.pid for n in started.nodes}
            acked = await enqueue_all()
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            for disk in disks.values():
                assert (await disk.status()).dirty_files > 0  # something to lose
                await disk.power_cut()
            for node in NODES:
                pids[node] = (await start_node(home, node)).pid
            found = await read_all()
            assert set(acked) <= found, sorted(set(acked) - found)
        finally:
            down(home, timeout_s=5.0)
            kill_all(pids)
            for disk in disks.values():
                await disk.unmount()

    asyncio.run(main())
    assert not any(_is_mount_point(disk.mountpoint) for disk in disks.values())
