"""``ProcessTarget``: what a target whose nodes are processes it launches (``LocalTarget`` of
``net.jepsen.local``, ``NetnsTarget`` of ``net.jepsen.netns``) shares: how a node process is
launched (``NodeLaunch``: ``env`` and ``data_dir``), libfaketime for the ``clock`` fault, the
libraries every node preloads, the lazy disks (``net.jepsen.disks.NodeDisks``) and the ``power``
and ``disk-full`` faults on them. A target says its name, where each node's data lives, how a
node is looked up and killed; the clock files (``clock/<node>``) and the lazy disks' durable
state (``disks/<node>``) live under the root it gives.

Clocks: with ``clock=True`` every node runs under libfaketime (Debian package ``faketime``):
``LD_PRELOAD`` of the library, ``FAKETIME_TIMESTAMP_FILE`` = its ``clock/<node>`` file (``+0``
at start), ``FAKETIME_NO_CACHE=1`` so that a new offset applies at once (each wall-clock read
then costs ~15 µs), and ``FAKETIME_DONT_FAKE_MONOTONIC=1``: only the **wall clock** moves. Why not the monotonic one:
pxq measures leases on monotonic time (``net.clock``) and assumes it advances at the real
rate within a drift bound; a forward jump of one node's monotonic clock is what a pause
already does to it (the pause nemesis), and a backward one breaks that assumption outright
(a follower would wait out a lease that ended, an event loop's timers stall), a fault outside
what a correct cluster must survive. Wall time is what the nodes stamp into records: the
lock service's command times (``at_ms``, lease expiry in log time) and the enqueue times that
replay by time reads.

libfaketime 0.9.10 (Debian 12) traps: it applies a "monotonic fix" to timed waits by default on
this glibc, and with ``FAKETIME_DONT_FAKE_MONOTONIC`` that fix makes a timed semaphore wait
sleep its whole timeout instead of waking when posted: a node's writer thread then commits
seconds late and every master loses its lease (measured: no enqueue in 8 s). Hence
``FAKETIME_FORCE_MONOTONIC_FIX=0``; a test keeps the hand-off prompt. ``time.sleep`` still
fails with EINVAL under the library; the nodes never call it (they wait in their event loop
and their writer thread's queue).
"""

from __future__ import annotations

import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from net.files import write_private
from net.jepsen.disks import NodeDisks
from net.jepsen.lazyfs import LazyDisk
from net.jepsen.target import FaultKind, UnsupportedFault
from pxq.config import NodeInfo

CLOCK_DIR: Final = "clock"
DISKS_DIR: Final = "disks"
"""Where the lazy disks keep what was made durable (``disks/<node>``)."""
FAKETIME_ENV: Final = {
    "FAKETIME_NO_CACHE": "1",
    "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    "FAKETIME_FORCE_MONOTONIC_FIX": "0",
}
"""libfaketime's settings (see the module docstring)."""


def faketime_library() -> Path | None:
    """libfaketime of this machine's architecture (Debian's multiarch path), None if absent."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    path = Path("/usr/lib") / str(multiarch) / "faketime" / "libfaketime.so.1"
    return path if path.is_file() else None


def faketime_offset(offset_ms: int) -> str:
    """The content of a libfaketime timestamp file for an offset (``+1.500``, ``-0.250``)."""
    return f"{offset_ms / 1000:+.3f}\n"


class ProcessTarget(ABC):
    """The launch of a target's node processes and the faults that come with it (see the
    module docstring)."""

    def __init__(
        self, root: Path, *, clock: bool, preload: Sequence[Path], lazy_disks: bool
    ) -> None:
        """``root``: where the clock files and the lazy disks' durable state go. ``clock``:
        run the nodes under libfaketime (``FileNotFoundError`` if it is missing).
        ``preload``: further libraries every node process preloads. ``lazy_disks``: each
        node's data directory on a ``LazyDisk`` (``LazyFsError`` naming what is missing if it
        cannot be mounted here)."""
        self._disks = NodeDisks(self.name, enabled=lazy_disks)
        self._faketime = faketime_library() if clock else None
        if clock and self._faketime is None:
            raise FileNotFoundError(
                "clock faults need libfaketime (Debian package faketime); not found"
            )
        self._preload = tuple(preload)
        self._launch_root = root

    @property
    @abstractmethod
    def name(self) -> str:
        """Short name for reports (``"local"``, ``"netns"``)."""

    @abstractmethod
    def data_dir(self, node: str) -> Path:
        """``node``'s data directory (a lazy disk's mount point)."""

    @abstractmethod
    def _info(self, node: str) -> NodeInfo:
        """``node`` of the cluster file; an error naming the nodes if there is none."""

    @abstractmethod
    async def kill(self, node: str) -> None:
        """SIGKILL ``node``'s process and wait (bounded) until it is gone."""

    @property
    def _launch_faults(self) -> frozenset[FaultKind]:
        """The faults the launch adds: ``clock`` under libfaketime, the lazy disks' faults."""
        clock: frozenset[FaultKind] = frozenset({"clock"} if self._faketime else ())
        return clock | self._disks.faults

    # -- NodeLaunch: how a node process starts ------------------------------------------------

    def env(self, node: str) -> dict[str, str]:
        """What ``node``'s process gets added to its environment: libfaketime's settings
        (with ``clock``) and ``LD_PRELOAD`` of libfaketime and the ``preload`` libraries."""
        preload = [str(p) for p in self._preload]
        extra: dict[str, str] = {}
        if self._faketime is not None:
            preload.insert(0, str(self._faketime))
            extra.update(FAKETIME_ENV)
            extra["FAKETIME_TIMESTAMP_FILE"] = str(self._clock_file(node).resolve())
        if preload:
            extra["LD_PRELOAD"] = ":".join(preload)
        return extra

    def _clock_file(self, node: str) -> Path:
        return self._launch_root / CLOCK_DIR / node

    async def _prepare(self, nodes: Iterable[str]) -> None:
        """Before ``nodes`` first start: their clock files (offset 0, with ``clock``) and
        their lazy disks, mounted (each one registered before it is mounted: ``_disks``'s
        ``unmount_all`` at teardown unmounts whatever got mounted)."""
        nodes = list(nodes)
        if self._faketime is not None:
            (self._launch_root / CLOCK_DIR).mkdir(mode=0o700, exist_ok=True)
            for node in nodes:
                write_private(self._clock_file(node), faketime_offset(0).encode())
        if self._disks.enabled:
            for node in nodes:
                await self._disks.mount(
                    node,
                    backing=self._launch_root / DISKS_DIR / node,
                    mountpoint=self.data_dir(node),
                )

    # -- faults -------------------------------------------------------------------------------

    async def set_clock_offset(self, node: str, offset_ms: int) -> None:
        if self._faketime is None:
            raise UnsupportedFault(self.name, "clock")
        self._info(node)
        # Replaced whole (write, then rename): libfaketime re-reads it at every clock call.
        write_private(self._clock_file(node), faketime_offset(offset_ms).encode())

    async def power_cut(self, node: str) -> None:
        """SIGKILL, then the disk loses what was not fsynced (in that order: the node must
        not write to a disk that is being cut)."""
        disk = self._disk(node, "power")
        await self.kill(node)
        await disk.power_cut()

    async def fill_disk(self, node: str) -> None:
        await self._disk(node, "disk-full").set_full(True)

    async def free_disk(self, node: str) -> None:
        await self._disk(node, "disk-full").set_full(False)

    def _disk(self, node: str, fault: FaultKind) -> LazyDisk:
        return self._disks.disk(node, fault)
