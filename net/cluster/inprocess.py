"""Every replica of a cluster configuration (store replicas and lock replicas), run as node
runners inside this process: ``LocalCluster``.

It is what the tests, the benchmarks and demos use when separate processes are not the point:
the same ``StoreNode`` and ``LockNode`` state machines (built by ``pxq.nodes.node_spec``) on
the same ``NodeRunner`` driver (LMDB, TCP on 127.0.0.1) as ``pxq node run``, started,
stopped, killed and restarted from one event loop. Masters are found by the probes of
``net.cluster.probe``, as the multi-process cluster (``net.cluster.processes``) finds them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from net.cluster.probe import GroupKey, find_masters, lock_groups, wait_for_masters
from net.config import NetConfig
from net.errors import NetError
from net.node.runner import NodeRunner
from net.tls import node_contexts
from pxq.access import AccessPolicy
from pxq.config import LOCKS_SERVICE, ClusterConfig
from pxq.config.identity import metadata_text
from pxq.effects import NodeId
from pxq.nodes import NodeSpec, node_spec


class LocalCluster:
    """Every node of ``config`` (the replicas of each store, then the lock replicas if the
    configuration has ``[locks]``), each a ``NodeRunner`` in this process."""

    def __init__(
        self, config: ClusterConfig, data_root: Path, net_config: NetConfig | None = None
    ) -> None:
        self.config = config
        self.data_root = Path(data_root)
        self.net_config = net_config or NetConfig.for_cluster(config)
        self.runners: dict[NodeId, NodeRunner] = {}

    @classmethod
    async def start(
        cls, config: ClusterConfig, data_root: Path, net_config: NetConfig | None = None
    ) -> LocalCluster:
        cluster = cls(config, data_root, net_config)
        try:
            for info in config.all_nodes():
                await cluster.start_node(info.node)
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    def _spec(self, node: NodeId) -> NodeSpec:
        spec = node_spec(self.config, node)
        if spec is None:
            raise NetError(f"{node!r} is not a store or lock replica of the configuration")
        return spec

    @property
    def lock_nodes(self) -> tuple[NodeId, ...]:
        """The lock replicas of the configuration (empty without ``[locks]``)."""
        locks = self.config.locks
        return () if locks is None else locks.nodes

    def address_of(self, node: NodeId) -> tuple[str, int]:
        """Where ``node`` listens (from the configuration)."""
        return self._spec(node).info.address

    def node_net_config(self, node: NodeId) -> NetConfig:
        """``net_config`` (a client's: probes and clients use it) with, under ``[tls]``, the
        node's own certificate instead of the client's."""
        if self.net_config.tls is None:
            return self.net_config
        return dataclasses.replace(self.net_config, tls=node_contexts(self.config, node))

    async def start_node(self, node: NodeId) -> NodeRunner:
        """Start (or restart) ``node`` from its data directory."""
        spec = self._spec(node)
        runner = NodeRunner(
            node_id=node,
            cluster=self.config.name,
            data_dir=self.data_root / node,
            factory=spec.factory,
            peers=spec.peers,
            host=spec.info.host,
            port=spec.info.port,
            config=self.node_net_config(node),
            access=AccessPolicy.for_cluster(self.config),
            service=spec.info.service,
            cluster_id=self.config.id,
            metadata=metadata_text(self.config),
        )
        await runner.start()
        self.runners[node] = runner
        return runner

    async def stop_node(self, node: NodeId) -> None:
        """Stop ``node`` gracefully (the current turn is committed and released first)."""
        runner = self.runners.get(node)
        if runner is not None:
            await runner.stop()

    def kill_node(self, node: NodeId) -> None:
        """Stop ``node`` abruptly, as a process crash would: the writes of the current turn
        are never committed, its output is never released, every socket closes at once."""
        runner = self.runners.get(node)
        if runner is not None and runner.running:
            runner._crash("killed (LocalCluster.kill_node)", None)

    async def stop(self) -> None:
        for node in sorted(self.runners):
            await self.runners[node].stop()

    async def __aenter__(self) -> LocalCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _running(self) -> list[NodeId]:
        return [n for n, r in self.runners.items() if r.running]

    async def master_of(self, store_name: str, group: int) -> NodeId | None:
        """The replica that serves ``group`` of the service ``store_name`` now (a store's name,
        or ``LOCKS_SERVICE``): the one that answers the group's probe."""
        masters = await find_masters(
            self.config, self.net_config, nodes=self._running(), services=(store_name,)
        )
        return masters.get((store_name, group))

    async def lock_master_of(self, group: int) -> NodeId | None:
        """The lock replica that masters lock ``group`` now (it answers a local ``ReadLock``)."""
        return await self.master_of(LOCKS_SERVICE, group)

    async def wait_for_masters(self, timeout_s: float = 10.0) -> dict[GroupKey, NodeId]:
        """Wait until every Paxos group that holds a queue, and every lock group, has a master;
        return them."""
        return await wait_for_masters(
            self.config, self.net_config, timeout_s=timeout_s, nodes=self._running
        )

    async def wait_for_lock_masters(self, timeout_s: float = 10.0) -> dict[int, NodeId]:
        """Wait until every lock group has a master; return them by group. Raises ``NetError``
        without ``[locks]`` or when some group has no master after ``timeout_s``."""
        wanted = lock_groups(self.config)
        if not wanted:
            raise NetError("the configuration has no lock service ([locks])")
        masters = await wait_for_masters(
            self.config,
            self.net_config,
            timeout_s=timeout_s,
            nodes=self._running,
            groups=wanted,
        )
        return {g: node for (_, g), node in masters.items()}
