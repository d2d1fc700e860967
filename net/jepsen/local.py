"""``LocalTarget``: the cluster under test as processes on 127.0.0.1, in a home of its own.

The target's directory is a cluster home (``net.cluster.processes.ClusterHome``: ``cluster.toml``,
``run/``, ``logs/``, ``data/``, ``tls/``) plus ``clock/<node>``, the libfaketime offset file of
each node. The cluster file is the one given, or the embedded default (``pxq cluster up``'s)
with its six ports moved to ``base_port`` .. ``base_port + 5`` (store replicas, then lock
replicas) and a second consumer group (``audit``), so that the queue workload reads with two
groups. The nodes are started as ``pxq cluster up`` starts them (``net.cluster.processes.up``,
without metrics ports) and restarted as ``pxq cluster start`` does; every pid is checked to
still be that node's ``pxq node run`` before it is signalled.

Faults: ``kill`` (SIGKILL; ``start`` brings the node back on its data), ``pause`` (SIGSTOP /
SIGCONT), with ``clock=True`` ``clock``, and with ``lazy_disks=True`` ``power`` and
``disk-full``. Partitions and slow links need network namespaces (``net.jepsen.netns``):
``UnsupportedFault``. ``heal_network`` has nothing to undo and does nothing.

Disks: with ``lazy_disks=True`` each node's data directory (``data/<node>``) is the mount point
of a ``net.jepsen.lazyfs.LazyDisk`` whose durable state is ``disks/<node>``, mounted before the
nodes start and unmounted at teardown (also after a failed setup). ``power_cut`` kills the node
(SIGKILL) and then drops every write it did not fsync (``LazyDisk.power_cut``: the node's
files on the old mount are stale, so the kill comes first); ``fill_disk`` / ``free_disk``
switch the disk's ENOSPC mode. A node on a full disk refuses enqueues and stops at its first
commit that needs its data file to grow (``docs/testing-real-clusters.md``): ``start`` it again
after ``free_disk``. Lazy disks need root and FUSE (``lazyfs.unavailable_reason``).

The negative control: ``preload`` of ``net.jepsen.lazyfs.LIBEATMYDATA`` (``pxq test
--unsafe-no-fsync``) makes every fsync of the node processes, and only theirs, a no-op; on lazy
disks a power cut then loses what they acknowledged.

Clocks: with ``clock=True`` every node runs under libfaketime, and only its wall clock moves
(``net.jepsen.launch`` says how, and why not the monotonic one).

Hooks for other targets (``NodeLaunch``, from ``net.jepsen.launch.ProcessTarget``, which also
holds the clock and disk faults the netns target shares): ``env(node)`` is what a node's
process gets added to its environment (libfaketime, plus any ``preload`` libraries such as
libeatmydata for a negative control), ``data_dir(node)`` where its data lives (a subclass may
mount another file system there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from net.client.connection import ClusterIdentity
from net.cluster.probe import node_masters, service_probes
from net.cluster.processes import (
    KILL_TIMEOUT_S,
    POLL_S,
    ClusterError,
    ClusterHome,
    NodeExited,
    child_env,
    down,
    is_node_process,
    log_tail,
    new_cluster_id,
    spawn_node,
    up,
)
from net.config import NetConfig
from net.errors import NetError
from net.files import write_private
from net.jepsen.launch import DISKS_DIR, ProcessTarget
from net.jepsen.target import FaultKind, Link, UnsupportedFault
from pxq.config import ClusterConfig, NodeInfo, default_toml, load_config

BASE_PORT_DEFAULT: Final = 7500
NODES_OF_DEFAULT: Final = 6
"""Ports the embedded default uses (three store replicas, three lock replicas)."""
AUDIT_GROUP: Final = "audit"
"""The second consumer group this target adds to the embedded default."""
START_TIMEOUT_S: Final = 10.0
"""How long ``start`` waits for a restarted node to accept connections."""


def local_cluster_toml(base_port: int, *, cluster_id: str) -> str:
    """The embedded default with its ports moved to ``base_port`` onwards and the ``audit``
    consumer group added (the last table of the default is its topic's consumer group, so a
    second one appended belongs to the same topic)."""
    if not 1024 <= base_port <= 65535 - NODES_OF_DEFAULT:
        raise ValueError(f"base port: must be in 1024..{65535 - NODES_OF_DEFAULT}")
    ports = iter(range(base_port, base_port + NODES_OF_DEFAULT))
    text, count = re.subn(
        r"(?m)^port = \d+$", lambda _: f"port = {next(ports)}", default_toml(cluster_id=cluster_id)
    )
    if count != NODES_OF_DEFAULT:  # the default changed shape: say so rather than guess
        raise RuntimeError(f"the embedded default has {count} ports, not {NODES_OF_DEFAULT}")
    return text + f'\n[[topics.consumer_groups]]\nname = "{AUDIT_GROUP}"\n'


class LocalTarget(ProcessTarget):
    """Nodes as processes on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        config_file: Path | None = None,
        base_port: int = BASE_PORT_DEFAULT,
        clock: bool = False,
        preload: Sequence[Path] = (),
        keep_data: bool = False,
        lazy_disks: bool = False,
    ) -> None:
        """``root``: the target's directory (created; a cluster must not be running there).
        ``config_file``: the cluster to run (default: the embedded default on ``base_port``).
        ``clock``: run the nodes under libfaketime (``FileNotFoundError`` if it is missing).
        ``preload``: further libraries every node process preloads. ``keep_data``: leave the
        nodes' data in place at teardown (the logs always stay). ``lazy_disks``: each node's
        data directory on a ``LazyDisk`` (``LazyFsError`` naming what is missing if it cannot
        be mounted here)."""
        self.home = ClusterHome(root)
        super().__init__(root, clock=clock, preload=preload, lazy_disks=lazy_disks)
        self._keep_data = keep_data
        if config_file is None:
            self._config_path = root / "cluster.toml"
            self._config_text: str | None = local_cluster_toml(
                base_port, cluster_id=new_cluster_id()
            )
        else:
            self._config_path = config_file
            self._config_text = None
        self._config: ClusterConfig | None = None
        self._pids: dict[str, int] = {}
        self._paused: set[str] = set()
        self._started = False

    # -- the Target protocol: what it is -----------------------------------------------------

    @property
    def name(self) -> str:
        return "local"

    @property
    def config_path(self) -> Path:
        return self._config_path

    @property
    def config(self) -> ClusterConfig:
        """The cluster's configuration (after ``setup``)."""
        if self._config is None:
            raise RuntimeError("the target is not set up")
        return self._config

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(info.node for info in self.config.all_nodes())

    @property
    def faults(self) -> frozenset[FaultKind]:
        kinds: frozenset[FaultKind] = frozenset({"kill", "pause"})
        return kinds | self._launch_faults

    def data_dir(self, node: str) -> Path:
        return self.home.data_dir(node)

    # -- lifecycle ----------------------------------------------------------------------------

    async def setup(self) -> None:
        if self._started:
            raise RuntimeError("the target was set up already")
        self._started = True
        root = self.home.root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._config_text is not None:
            write_private(self._config_path, self._config_text.encode())
        config = load_config(self._config_path)
        self._config = config
        await self._prepare(info.node for info in config.all_nodes())
        result = await up(self.home, self._config_path, metrics=False, launch=self)
        self._pids = {p.node: p.pid for p in result.nodes}

    async def teardown(self) -> None:
        try:
            for node in sorted(self._paused):
                self._signal(node, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._paused.clear()
            await asyncio.to_thread(down, self.home)
            for pid in self._pids.values():
                _reap(pid)
            self._pids.clear()
        finally:
            # Unmounted whatever happened above: a mount must not outlive the test.
            try:
                await self._disks.unmount_all()
            finally:
                if not self._keep_data:
                    for d in (self.home.data_root, self.home.root / DISKS_DIR):
                        if d.is_dir():
                            shutil.rmtree(d, ignore_errors=True)

    # -- faults -------------------------------------------------------------------------------

    def is_running(self, node: str) -> bool:
        pid = self._pids.get(node)
        return pid is not None and is_node_process(pid, node)

    def _signal(self, node: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to ``node``'s process if it is running; whether it was sent."""
        pid = self._pids.get(node)
        if pid is None or not is_node_process(pid, node):
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def kill(self, node: str) -> None:
        self._info(node)
        pid = self._pids.get(node)
        if pid is None or not self._signal(node, signal.SIGKILL):
            return
        self._paused.discard(node)
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not _exited(pid):
            if time.monotonic() > deadline:
                raise ClusterError(f"{node} (pid {pid}) survived SIGKILL for {KILL_TIMEOUT_S} s")
            await asyncio.sleep(POLL_S)

    async def start(self, node: str) -> None:
        info = self._info(node)
        if self.is_running(node):
            return
        old = self._pids.pop(node, None)
        if old is not None:
            _reap(old)
        self.home.pid_file(node).unlink(missing_ok=True)
        proc = spawn_node(
            self.home,
            self._config_path.resolve(),
            node,
            child_env(),
            "pxq test",
            log_format="text",
            metrics=False,
            launch=self,
        )
        self._pids[node] = proc.pid
        await self._wait_accepting(info, proc.poll)

    async def _wait_accepting(self, info: NodeInfo, poll: Callable[[], int | None]) -> None:
        """Until ``info``'s node accepts connections (bounded); ``NodeExited`` if it exits."""
        config = self.config
        probes = {sp.service: sp.probes for sp in service_probes(config)}[info.service]
        net_config = NetConfig.for_cluster(config)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = poll()
            if code is not None:
                log_file = self.home.log_file(info.node)
                raise NodeExited(info.node, code, log_file, log_tail(log_file))
            with contextlib.suppress(NetError):
                answered = await node_masters(
                    info, probes, net_config, cluster=ClusterIdentity.of(config)
                )
                if answered is not None:
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"{info.node} accepts no connection after {START_TIMEOUT_S} s")
            await asyncio.sleep(POLL_S)

    async def pause(self, node: str) -> None:
        """SIGSTOP, and return once the process is stopped (a signal is delivered
        asynchronously)."""
        self._info(node)
        if self._signal(node, signal.SIGSTOP):
            self._paused.add(node)
            await self._until_state(node, stopped=True)

    async def resume(self, node: str) -> None:
        self._info(node)
        if self._signal(node, signal.SIGCONT):
            await self._until_state(node, stopped=False)
        self._paused.discard(node)

    async def _until_state(self, node: str, *, stopped: bool) -> None:
        """Until ``node``'s process is stopped (or runs again), bounded; a process that died
        meanwhile ends the wait too."""
        pid = self._pids[node]
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while (_process_state(pid) == "T") != stopped:
            if _process_state(pid) in ("", "Z", "X"):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{node} (pid {pid}) is not {'stopped' if stopped else 'running'} after "
                    f"{KILL_TIMEOUT_S} s"
                )
            await asyncio.sleep(POLL_S / 10)

    async def partition(self, cuts: Sequence[Link]) -> None:
        raise UnsupportedFault(self.name, "partition")

    async def heal_network(self) -> None:
        """Nothing to heal: this target cuts no link."""

    async def slow_links(self, links: Sequence[Link], delay_ms: int) -> None:
        raise UnsupportedFault(self.name, "slow-link")

    def _info(self, node: str) -> NodeInfo:
        for info in self.config.all_nodes():
            if info.node == node:
                return info
        raise ValueError(f"no node {node!r} in this cluster (nodes: {', '.join(self.nodes)})")


def _process_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` (``T``: stopped), ``""`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[0] if fields else ""


def _exited(pid: int) -> bool:
    """Whether ``pid`` has finished exiting: reaped (a child of ours: ``waitpid`` returns it
    once it is a zombie, after its files and sockets are closed) or, another's, gone or a
    zombie. Its ``/proc/<pid>/cmdline`` empties earlier in the exit, while the process may
    still hold its listening socket: a restart at that moment failed to bind its port
    (``NodeExited`` with code 1, seen once in CI under load)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _process_state(pid) in ("", "Z", "X")
    return done == pid


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is a child of ours that exited (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
