"""``NetnsTarget``: the cluster under test with each node on a host of its own (a network
namespace of ``net.jepsen.hosts``), so the network between nodes can be cut and slowed.

One host per node of the cluster file (store replicas and lock replicas alike), named after
the node, so a ``Link`` between two nodes is a path between two hosts and a cut is exact. The
target writes ``<root>/cluster.toml``: the base file (the embedded default unless given, with
a fresh ``[cluster] id``) with each replica's ``host`` set to its host's address (servers
bind what the file says; the ports stay those of the base file). With ``[tls]`` on it creates
the cluster's CA and certificates in ``<root>/tls`` (``net.tls``: no hostname is checked, so
certificates do not care about the addresses). Each node runs as ``pxq node run`` in its
namespace (``net.cluster.processes.node_command`` with ``child_env``), logging to
``<root>/hosts/<node>/node.log`` with its data in ``<root>/hosts/<node>/data``. The test client
runs in the root namespace and reaches every node over the bridge; no fault touches it.

Faults: ``kill``/``start`` (SIGKILL, then a new process on the same data), ``pause``
(SIGSTOP/SIGCONT), ``partition`` (a one-way link ``a -> b`` is ``Hosts.cut(a, b,
ports=(b's port,))``: ``a``'s peer link to ``b`` carries every message ``a`` sends ``b``, and
only that is lost; ``b``'s messages to ``a`` still arrive) and ``slow-link`` (a
``net.jepsen.proxy.DelayProxy`` per link on the bridge address, ``a``'s connections to ``b``
redirected to it with ``Hosts.redirect``; a link already slowed keeps its first delay until
``heal_network``). ``heal_network`` removes every rule first and closes the proxies after,
so the redirected connections end and their senders reconnect directly. With ``clock=True``,
``clock`` too, as ``net.jepsen.local.LocalTarget`` does it: every node runs under libfaketime
(its settings ``FAKETIME_ENV``, its offset file ``<root>/clock/<node>``); only the wall clock
moves.

Disks: with ``lazy_disks=True`` each node's data directory is the mount point of a
``net.jepsen.lazyfs.LazyDisk`` whose durable state is ``<root>/disks/<node>``
(``net.jepsen.disks.NodeDisks``, shared with ``LocalTarget``): mounted in the root namespace
before the nodes start (the network namespaces share its mount namespace, so every node sees
its disk) and unmounted at teardown after the hosts (and so every node process) are gone,
also after a failed setup. Faults ``power`` (SIGKILL, then the disk drops what was not
fsynced) and ``disk-full`` (``fill_disk`` / ``free_disk``: ENOSPC mode; a node that stopped on
the full disk is started again by the nemesis). ``preload``: further libraries every node
process preloads (libeatmydata for the negative control ``--unsafe-no-fsync``).

A pid is signalled only while it still is that node's ``pxq node run``
(``net.cluster.processes.is_node_process``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from net.cluster.probe import GroupKey, wait_for_masters
from net.cluster.processes import (
    child_env,
    is_node_process,
    log_tail,
    new_cluster_id,
    node_command,
)
from net.config import NetConfig
from net.errors import NetError
from net.files import open_private_append, write_private
from net.jepsen.hosts import Hosts
from net.jepsen.launch import ProcessTarget
from net.jepsen.proxy import DelayProxy, ProxyStats
from net.jepsen.target import FaultKind, Link
from net.tls import ensure_cluster_material
from pxq.config import ClusterConfig, NodeInfo, default_toml, load_config

log = logging.getLogger("pxq.net.jepsen.netns")

CONFIG_NAME: Final = "cluster.toml"
UP_TIMEOUT_S: Final = 30.0
KILL_WAIT_S: Final = 5.0
REPLICA_TABLES: Final = ("[[stores.replicas]]", "[[locks.replicas]]")
FAULTS: Final[frozenset[FaultKind]] = frozenset({"kill", "pause", "partition", "slow-link"})


class NetnsError(NetError):
    """The netns cluster cannot be made or driven; the message says why."""


def with_hosts(base_toml: str, addresses: dict[str, str]) -> str:
    """``base_toml`` with ``host = "<address>"`` after the ``node = ...`` line of each replica
    table, for the nodes of ``addresses``. The caller checks the result (``load_config``): a
    base file that already sets a replica's ``host`` fails there (a duplicate key)."""
    out: list[str] = []
    in_replica = False
    for line in base_toml.splitlines():
        out.append(line)
        stripped = line.strip()
        if stripped.startswith("["):
            in_replica = stripped in REPLICA_TABLES
        elif in_replica and stripped.startswith("node"):
            node = tomllib.loads(stripped).get("node")
            if isinstance(node, str) and node in addresses:
                out.append(f'host = "{addresses[node]}"')
    return "\n".join(out) + "\n"


def replica_names(base_toml: str) -> list[str]:
    """The replicas of a cluster file, stores' then the lock service's (read before the hosts
    exist: the base file's replicas may all share one address and port until then)."""
    doc = tomllib.loads(base_toml)
    stores = doc.get("stores", [])
    locks = doc.get("locks", {})
    tables = [r for s in stores for r in s.get("replicas", [])] + locks.get("replicas", [])
    names = [r.get("node") for r in tables]
    if not all(isinstance(n, str) for n in names):
        raise NetnsError(f"every replica of the base cluster file needs a node name: {names}")
    return [str(n) for n in names]


class NetnsTarget(ProcessTarget):
    """A cluster of node processes in network namespaces (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        base_toml: str | None = None,
        tls: bool = True,
        up_timeout_s: float = UP_TIMEOUT_S,
        log_format: str = "text",
        clock: bool = False,
        lazy_disks: bool = False,
        preload: Sequence[Path] = (),
    ) -> None:
        """``clock``: run the nodes under libfaketime (``FileNotFoundError`` if missing).
        ``lazy_disks``: each node's data directory on a ``LazyDisk`` (``LazyFsError`` naming
        what is missing if it cannot be mounted here). ``preload``: further libraries every
        node process preloads."""
        self.root = root.resolve()
        super().__init__(self.root, clock=clock, preload=preload, lazy_disks=lazy_disks)
        self._base_toml = base_toml
        self._tls = tls
        self._up_timeout_s = up_timeout_s
        self._log_format = log_format
        self._hosts: Hosts | None = None
        self._config: ClusterConfig | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._proxies: dict[Link, DelayProxy] = {}
        self._nodes: tuple[str, ...] = ()

    # -- Target's properties ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "netns"

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    @property
    def faults(self) -> frozenset[FaultKind]:
        return FAULTS | self._launch_faults

    @property
    def hosts(self) -> Hosts:
        if self._hosts is None:
            raise NetnsError("the netns cluster is not set up")
        return self._hosts

    @property
    def config(self) -> ClusterConfig:
        if self._config is None:
            raise NetnsError("the netns cluster is not set up")
        return self._config

    def pid(self, node: str) -> int | None:
        """The pid of ``node``'s current process (None: never started or exited)."""
        proc = self._procs.get(node)
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def slow_link_stats(self) -> dict[Link, ProxyStats]:
        """What each slow link's proxy forwarded so far (empty after ``heal_network``)."""
        return {link: proxy.stats for link, proxy in sorted(self._proxies.items())}

    def log_file(self, node: str) -> Path:
        return self.hosts.host(node).dir / "node.log"

    # -- setup and teardown -------------------------------------------------------------------

    async def setup(self) -> None:
        """Make a host per node, write the cluster file, start every node in its host and
        wait until every Paxos group has a master. On failure everything is torn down."""
        base = self._base_toml or default_toml(tls=self._tls, cluster_id=new_cluster_id())
        try:
            nodes = replica_names(base)
            self._nodes = tuple(nodes)
            self.root.mkdir(parents=True, exist_ok=True)
            hosts = await asyncio.to_thread(Hosts.up, nodes, self.root / "hosts")
            self._hosts = hosts
            addresses = {n: hosts.host(n).address for n in nodes}
            write_private(self.config_path, with_hosts(base, addresses).encode())
            config = load_config(self.config_path)
            wrong = [i.node for i in config.all_nodes() if i.host != addresses.get(i.node)]
            if wrong:
                raise NetnsError(f"{self.config_path}: no host address set for {wrong}")
            self._config = config
            self._nodes = tuple(i.node for i in config.all_nodes())
            if config.tls.enabled:
                ensure_cluster_material(config)
            await self._prepare(nodes)
            for node in nodes:
                self._spawn(node, "setup")
            await wait_for_masters(
                config,
                NetConfig.for_cluster(config),
                timeout_s=self._up_timeout_s,
                nodes=lambda: [n for n in nodes if self.is_running(n)],
                check=self._check_alive,
            )
        except BaseException:
            await self.teardown()
            raise

    def _check_alive(self) -> None:
        for node, proc in self._procs.items():
            code = proc.poll()
            if code is not None:
                tail = log_tail(self.log_file(node))
                raise NetnsError(f"node {node} exited with code {code} while starting:\n{tail}")

    async def teardown(self) -> None:
        """Close the proxies, then remove the hosts (which kills every process in them),
        then unmount the lazy disks (whatever happened before: no mount outlives the test)."""
        try:
            await self._close_proxies()
            hosts, self._hosts = self._hosts, None
            self._procs.clear()
            if hosts is not None:
                await asyncio.to_thread(hosts.teardown)
        finally:
            await self._disks.unmount_all()

    async def masters(self) -> dict[GroupKey, str]:
        """The master of every group, waiting (bounded) until each has one."""
        return await wait_for_masters(
            self.config,
            NetConfig.for_cluster(self.config),
            timeout_s=self._up_timeout_s,
            nodes=lambda: [n for n in self._nodes if self.is_running(n)],
        )

    # -- processes ----------------------------------------------------------------------------

    def _info(self, node: str) -> NodeInfo:
        for info in self.config.all_nodes():
            if info.node == node:
                return info
        raise NetnsError(f"no node {node!r} (nodes: {', '.join(self._nodes)})")

    def _spawn(self, node: str, why: str) -> None:
        data_dir = self.data_dir(node)
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = node_command(
            self.config_path, node, data_dir, log_format=self._log_format, metrics=False
        )
        with open_private_append(self.log_file(node)) as node_log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            node_log.write(f"---- {stamp} netns target {why}: starting {node} ----\n".encode())
            node_log.flush()
            env = child_env() | self.env(node)
            self._procs[node] = self.hosts.run(node, argv, env=env, stdout=node_log)

    def data_dir(self, node: str) -> Path:
        return self.hosts.host(node).dir / "data"

    def is_running(self, node: str) -> bool:
        proc = self._procs.get(node)
        return proc is not None and proc.poll() is None

    def _signal(self, node: str, sig: signal.Signals) -> bool:
        """Send ``sig`` to ``node``'s process if it is still that node's; whether it was."""
        self._info(node)
        proc = self._procs.get(node)
        if proc is None or proc.poll() is not None or not is_node_process(proc.pid, node):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        return True

    async def kill(self, node: str) -> None:
        if self._signal(node, signal.SIGKILL):
            proc = self._procs[node]
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, KILL_WAIT_S)

    async def start(self, node: str) -> None:
        self._info(node)
        if not self.is_running(node):
            self._spawn(node, "start")

    async def pause(self, node: str) -> None:
        self._signal(node, signal.SIGSTOP)

    async def resume(self, node: str) -> None:
        self._signal(node, signal.SIGCONT)

    # -- the network --------------------------------------------------------------------------

    async def partition(self, cuts: Sequence[Link]) -> None:
        ports = {link: self._info(link[1]).port for link in cuts}
        hosts = self.hosts

        def apply() -> None:
            for (a, b), port in ports.items():
                hosts.cut(a, b, ports=(port,))

        await asyncio.to_thread(apply)

    async def slow_links(self, links: Sequence[Link], delay_ms: int) -> None:
        hosts = self.hosts
        for a, b in links:
            if (a, b) in self._proxies or a == b:
                continue
            dst = self._info(b)
            self._info(a)
            proxy = DelayProxy(
                listen_host=hosts.bridge_address,
                destination=(dst.host, dst.port),
                delay_ms=delay_ms,
            )
            await proxy.start()
            self._proxies[(a, b)] = proxy
            await asyncio.to_thread(hosts.redirect, a, b, dst.port, proxy.address)

    async def heal_network(self) -> None:
        await asyncio.to_thread(self.hosts.heal)
        await self._close_proxies()

    async def _close_proxies(self) -> None:
        proxies = list(self._proxies.values())
        self._proxies.clear()
        for proxy in proxies:
            await proxy.close()


# -- the manual tool --------------------------------------------------------------------------

MANUAL_SECONDS_MAX: Final = 24 * 3600


async def _serve_by_hand(target: NetnsTarget, seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await target.setup()
        print(f"cluster file: {target.config_path}")
        for node in target.nodes:
            host = target.hosts.host(node)
            print(f"  {node}: {host.address} (ip netns exec {host.netns} ...; log {host.dir})")
        print(f"masters: {await target.masters()}")
        print(f"up for {seconds:g} s at most; Ctrl-C tears it down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    finally:
        await target.teardown()
        print("torn down")


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m net.jepsen.netns``: a netns cluster to try faults on by hand."""
    parser = argparse.ArgumentParser(
        prog="python3 -m net.jepsen.netns",
        description="Run a cluster with a node per network namespace until Ctrl-C "
        "(docs/testing-real-clusters.md); cut it with python3 -m net.jepsen.hosts --dir DIR/hosts.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="the cluster's directory")
    parser.add_argument("--config", type=Path, help="base cluster file (default: embedded)")
    parser.add_argument("--no-tls", action="store_true", help="the embedded default, TLS off")
    parser.add_argument("--seconds", type=float, default=3600.0, help="tear down after this")
    args = parser.parse_args(argv)
    base = args.config.read_text(encoding="utf-8") if args.config is not None else None
    target = NetnsTarget(args.dir, base_toml=base, tls=not args.no_tls)
    try:
        asyncio.run(_serve_by_hand(target, min(args.seconds, MANUAL_SECONDS_MAX)))
    except NetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
