"""``Target``: the cluster a Jepsen-style test runs against, and what it can do to it.

A target owns a running cluster of real node processes: it makes it (``setup``), hands the
workload its cluster file (``config_path``), lets the nemesis act on its nodes, and removes
everything it made (``teardown``, also after a failure). Each fault a nemesis can inject is a
method; a target that cannot do a fault says so in ``faults`` and raises
``UnsupportedFault`` (naming the fault and the target) when asked, never pretends.

Node names are those of the cluster file (``store0-0``, ``lock-1``, ...). Every method is
idempotent where it can be (killing a dead node, healing a healed network: nothing to do) and
bounded in time. The nemesis records what it did in the history as ``nemesis`` operations
(``pxq.check.history.NEMESIS``); targets do not write to the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, Protocol, TypeAlias, get_args

from net.errors import NetError

FaultKind: TypeAlias = Literal[
    "kill",  # kill -9 a node's process; ``start`` brings it back on its data
    "pause",  # SIGSTOP / SIGCONT
    "partition",  # drop packets between nodes (one-way pairs), ``heal_network`` undoes
    "clock",  # shift one node's wall clock while it runs (monotonic time keeps its rate)
    "power",  # lose every write a node did not fsync, kill -9 it (``start`` brings it back)
    "disk-full",  # a node's data disk answers ENOSPC until ``free_disk``
    "slow-link",  # delay every byte between two nodes (userspace proxy)
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)

Link: TypeAlias = tuple[str, str]
"""A one-way path ``(source, destination)`` between two nodes."""


class UnsupportedFault(NetError):
    """The target cannot inject this fault (for example a partition between processes that
    share 127.0.0.1)."""

    def __init__(self, target: str, fault: FaultKind) -> None:
        super().__init__(f"the {target} target cannot inject {fault!r} faults")
        self.target = target
        self.fault = fault


class Target(Protocol):
    """A cluster under test. Coroutines run on the test's event loop."""

    @property
    def name(self) -> str:
        """Short name for reports (``"local"``, ``"netns"``)."""

    @property
    def config_path(self) -> Path:
        """The cluster file clients of this cluster use."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node of the cluster, store replicas then lock replicas."""

    @property
    def faults(self) -> frozenset[FaultKind]:
        """The fault kinds this target can inject."""

    async def setup(self) -> None:
        """Make and start the cluster; return once every Paxos group has a master."""

    async def teardown(self) -> None:
        """Stop every process and undo every change this target made (rules, namespaces,
        mounts); safe to call twice and after a failed ``setup``."""

    def is_running(self, node: str) -> bool:
        """Whether ``node``'s process is alive (paused counts as alive)."""

    async def kill(self, node: str) -> None:
        """SIGKILL ``node``'s process (nothing if it is not running)."""

    async def start(self, node: str) -> None:
        """Start ``node`` on its data (nothing if it is running)."""

    async def pause(self, node: str) -> None:
        """SIGSTOP ``node``."""

    async def resume(self, node: str) -> None:
        """SIGCONT ``node``."""

    async def partition(self, cuts: Sequence[Link]) -> None:
        """Drop every packet on each one-way link of ``cuts`` (in addition to cuts already
        in place). A two-way cut is both directions."""

    async def heal_network(self) -> None:
        """Remove every cut and every slow link."""

    async def set_clock_offset(self, node: str, offset_ms: int) -> None:
        """Make ``node``'s wall clock read ``offset_ms`` ahead (negative: behind) of real
        time, from now on, while it runs. Its monotonic clock is not moved: leases assume it
        runs at the real rate, and a jump of it is what a pause does (``net.jepsen.local``)."""

    async def power_cut(self, node: str) -> None:
        """Lose every write ``node`` did not fsync, and kill -9 it."""

    async def fill_disk(self, node: str) -> None:
        """Make ``node``'s data disk refuse writes with ENOSPC."""

    async def free_disk(self, node: str) -> None:
        """Undo ``fill_disk``."""

    async def slow_links(self, links: Sequence[Link], delay_ms: int) -> None:
        """Delay every byte sent on each one-way link by ``delay_ms``."""
