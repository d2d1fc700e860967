"""Every store replica of a cluster configuration, run as node runners inside this process,
and the master probing shared with the multi-process cluster.

``LocalCluster`` is what the tests, the benchmarks and demos use when separate processes are
not the point: the same ``StoreNode`` state machines on the same ``NodeRunner`` driver (LMDB,
TCP on 127.0.0.1) as ``pxq node run``, started, stopped, killed and restarted from one event
loop. The multi-process local cluster (``pxq cluster up``, ``net.cluster``) is built on
``pxq node run`` (``net.server``); both use the helpers of this module:

* ``store_factory`` and ``peers_of``: how a replica of a store is built and whom it talks to;
* ``probe_request``, ``node_masters``, ``find_masters`` and ``wait_for_masters``: which
  replica is the master of a Paxos group now. The probe is a zero-item ``Get`` on a queue the
  group holds; only the group's master (the lease holder) answers it with ``GetOk``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection
from pathlib import Path

from net.client import NodeClient
from net.config import NetConfig
from net.errors import NetError
from net.runner import NodeFactory, NodeRunner
from pxq.config import ClusterConfig, ReplicaConfig, StoreConfig
from pxq.effects import NodeId, StorageView
from pxq.store.messages import Get, GetOk
from pxq.store.node import StoreNode

PROBE_TIMEOUT_S = 0.5
WAIT_POLL_S = 0.05

GroupKey = tuple[str, int]
"""A Paxos group of the cluster: (store name, group number)."""


def store_factory(config: ClusterConfig, store: StoreConfig) -> NodeFactory:
    """The node factory of a replica of ``store``."""

    def factory(node_id: NodeId, storage: StorageView, rng: random.Random) -> StoreNode:
        return StoreNode(node_id, config, store.name, storage, rng)

    return factory


def peers_of(store: StoreConfig) -> dict[NodeId, tuple[str, int]]:
    """The addresses of a store's replicas, by node name."""
    return {r.node: (r.host, r.port) for r in store.replicas}


# -- master probing -----------------------------------------------------------------------------


def probe_request(config: ClusterConfig, store: StoreConfig, group: int) -> Get | None:
    """A zero-item Get on some queue ``store`` holds in ``group``; None if the group holds no
    queue with a consumer group (it serves no reads, so it cannot be probed)."""
    for topic in config.topics:
        queues = config.queues_of(topic.name, store.name, group)
        if queues and topic.consumer_groups:
            return Get(
                topic=topic.name,
                group=topic.consumer_groups[0].name,
                queue=queues[0],
                cursor=0,
                items_max=0,
                bytes_max=0,
            )
    return None


def probed_groups(config: ClusterConfig) -> list[GroupKey]:
    """Every Paxos group of ``config`` that can be probed (see ``probe_request``)."""
    return [
        (s.name, g)
        for s in config.stores
        for g in range(s.groups)
        if probe_request(config, s, g) is not None
    ]


async def node_masters(
    replica: ReplicaConfig, probes: dict[int, Get], net_config: NetConfig | None = None
) -> list[int] | None:
    """The groups (of ``probes``) that ``replica`` masters now, ascending; None if it cannot be
    reached. The probes go out pipelined on one connection."""
    net_config = net_config or NetConfig()
    try:
        client = await NodeClient.connect(replica.host, replica.port, config=net_config)
    except (NetError, OSError):
        return None
    try:

        async def ask(group: int, probe: Get) -> int | None:
            try:
                answer = await client.call(probe, timeout_s=PROBE_TIMEOUT_S)
            except NetError:
                return None
            return group if isinstance(answer, GetOk) else None

        answers = await asyncio.gather(*(ask(g, p) for g, p in sorted(probes.items())))
    finally:
        await client.close()
    return [g for g in answers if g is not None]


async def find_masters(
    config: ClusterConfig,
    net_config: NetConfig | None = None,
    *,
    nodes: Collection[NodeId] | None = None,
) -> dict[GroupKey, NodeId]:
    """One probing pass over every replica (or only ``nodes``): the master of each group that
    answered. Replicas are probed concurrently."""
    jobs: list[tuple[StoreConfig, ReplicaConfig, dict[int, Get]]] = []
    for store in config.stores:
        probes = {
            g: p for g in range(store.groups) if (p := probe_request(config, store, g)) is not None
        }
        for replica in store.replicas:
            if probes and (nodes is None or replica.node in nodes):
                jobs.append((store, replica, probes))
    results = await asyncio.gather(*(node_masters(r, p, net_config) for _, r, p in jobs))
    masters: dict[GroupKey, NodeId] = {}
    for (store, replica, _), groups in zip(jobs, results, strict=True):
        for g in groups or ():
            masters.setdefault((store.name, g), replica.node)
    return masters


async def wait_for_masters(
    config: ClusterConfig,
    net_config: NetConfig | None = None,
    *,
    timeout_s: float = 10.0,
    nodes: Callable[[], Collection[NodeId] | None] | None = None,
    check: Callable[[], None] | None = None,
) -> dict[GroupKey, NodeId]:
    """Wait until every probed group has a master; return the masters (the latest seen).

    ``nodes`` (called before every pass) limits the probing to the replicas that are up;
    ``check`` is called before every pass and may raise to abort the wait. Raises
    ``NetError`` naming the groups without a master after ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wanted = probed_groups(config)
    masters: dict[GroupKey, NodeId] = {}
    while True:
        if check is not None:
            check()
        masters.update(
            await find_masters(config, net_config, nodes=nodes() if nodes is not None else None)
        )
        if all(key in masters for key in wanted):
            return {key: masters[key] for key in wanted}
        if loop.time() > deadline:
            missing = ", ".join(f"{s}/{g}" for s, g in wanted if (s, g) not in masters)
            raise NetError(f"no master elected within {timeout_s} s for group(s) {missing}")
        await asyncio.sleep(WAIT_POLL_S)


# -- the in-process cluster ---------------------------------------------------------------------


class LocalCluster:
    """The replicas of every store of ``config``, each a ``NodeRunner`` in this process."""

    def __init__(
        self, config: ClusterConfig, data_root: Path, net_config: NetConfig | None = None
    ) -> None:
        self.config = config
        self.data_root = Path(data_root)
        self.net_config = net_config or NetConfig()
        self.runners: dict[NodeId, NodeRunner] = {}

    @classmethod
    async def start(
        cls, config: ClusterConfig, data_root: Path, net_config: NetConfig | None = None
    ) -> LocalCluster:
        cluster = cls(config, data_root, net_config)
        for store in config.stores:
            for replica in store.replicas:
                await cluster.start_node(replica.node)
        return cluster

    def _store_of(self, node: NodeId) -> StoreConfig:
        store = self.config.store_of_node(node)
        if store is None:
            raise NetError(f"{node!r} is not a replica of any store")
        return store

    async def start_node(self, node: NodeId) -> NodeRunner:
        """Start (or restart) ``node`` from its data directory."""
        store = self._store_of(node)
        replica = next(r for r in store.replicas if r.node == node)
        runner = NodeRunner(
            node_id=node,
            cluster=self.config.name,
            data_dir=self.data_root / node,
            factory=store_factory(self.config, store),
            peers=peers_of(store),
            host=replica.host,
            port=replica.port,
            config=self.net_config,
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
        """The replica that serves reads for ``group`` now (it answers a probe ``Get``)."""
        masters = await find_masters(self.config, self.net_config, nodes=self._running())
        return masters.get((store_name, group))

    async def wait_for_masters(self, timeout_s: float = 10.0) -> dict[GroupKey, NodeId]:
        """Wait until every Paxos group that holds a queue has a master; return them."""
        return await wait_for_masters(
            self.config, self.net_config, timeout_s=timeout_s, nodes=self._running
        )
