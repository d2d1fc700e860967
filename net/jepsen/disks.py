"""``NodeDisks``: the lazy disks of a target's nodes, one ``net.jepsen.lazyfs.LazyDisk`` per
node mounted on its data directory; the part of the disk faults (``power``, ``disk-full``)
that ``net.jepsen.local.LocalTarget`` and ``net.jepsen.netns.NetnsTarget`` share.

The target says where each node's data directory (the mount point) and durable state (the
backing directory) are, mounts every disk before its nodes start and unmounts them all at
teardown, also after a failed setup: each disk is registered before it is mounted, so that
whatever got mounted is unmounted. A power cut is the target's: it kills the node first (the
node's files on the old mount go stale) and then cuts its disk (``disk(node).power_cut()``).
The mount namespace is the root namespace's for every node, also those in network namespaces,
so a node in a host of its own sees the mount the test made.
"""

from __future__ import annotations

from pathlib import Path

from net.jepsen.lazyfs import LazyDisk, LazyFsError, unavailable_reason
from net.jepsen.target import FaultKind, UnsupportedFault

DISK_FAULTS: frozenset[FaultKind] = frozenset({"power", "disk-full"})


class NodeDisks:
    """The lazy disks of one target (see the module docstring); with ``enabled=False`` none,
    and every disk fault is ``UnsupportedFault``."""

    def __init__(self, target: str, *, enabled: bool) -> None:
        """``target``: the target's name (for ``UnsupportedFault``). ``LazyFsError`` naming
        what is missing when ``enabled`` and lazy disks cannot mount here."""
        if enabled:
            reason = unavailable_reason()
            if reason is not None:
                raise LazyFsError(f"lazy disks (power and disk-full faults): {reason}")
        self._target = target
        self.enabled = enabled
        self._disks: dict[str, LazyDisk] = {}

    @property
    def faults(self) -> frozenset[FaultKind]:
        """The faults the disks add to the target's."""
        return DISK_FAULTS if self.enabled else frozenset()

    async def mount(self, node: str, *, backing: Path, mountpoint: Path) -> None:
        """A lazy disk for ``node`` on ``mountpoint`` keeping its durable state in ``backing``
        (both made private if missing)."""
        if not self.enabled:
            raise UnsupportedFault(self._target, "power")
        if node in self._disks:
            raise LazyFsError(f"{node} has a lazy disk already")
        for d in (backing.parent, mountpoint.parent, backing, mountpoint):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        disk = LazyDisk(backing, mountpoint)
        self._disks[node] = disk  # before mounting: unmount_all must see a half-made mount
        await disk.mount()

    def disk(self, node: str, fault: FaultKind) -> LazyDisk:
        """``node``'s mounted disk, for ``fault``: ``UnsupportedFault`` without lazy disks,
        ``RuntimeError`` before they are mounted, ``ValueError`` for a node without one."""
        if not self.enabled:
            raise UnsupportedFault(self._target, fault)
        if not self._disks:
            raise RuntimeError("the target is not set up (no lazy disk is mounted)")
        disk = self._disks.get(node)
        if disk is None:
            raise ValueError(f"no lazy disk for {node!r} (nodes: {', '.join(sorted(self._disks))})")
        return disk

    async def unmount_all(self) -> None:
        """Unmount every disk, each whatever happens to the others; ``LazyFsError`` naming
        those that could not be (after trying them all)."""
        problems: list[str] = []
        disks, self._disks = self._disks, {}
        for node, disk in sorted(disks.items()):
            try:
                await disk.unmount()
            except LazyFsError as exc:
                problems.append(f"{node}: {exc}")
        if problems:
            raise LazyFsError("cannot unmount the lazy disks: " + "; ".join(problems))
