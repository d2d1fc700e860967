"""Every replica of a cluster configuration (store replicas and lock replicas), run as node
runners inside this process, and the master probing shared with the multi-process cluster.

``LocalCluster`` is what the tests, the benchmarks and demos use when separate processes are
not the point: the same ``StoreNode`` and ``LockNode`` state machines on the same
``NodeRunner`` driver (LMDB, TCP on 127.0.0.1) as ``pxq node run``, started, stopped, killed
and restarted from one event loop. The multi-process local cluster (``pxq cluster up``,
``net.cluster``) is built on ``pxq node run`` (``net.server``); both use the helpers of this
module:

* ``node_spec`` (with ``store_factory``, ``lock_factory`` and ``peers_of``): how a node is
  built, where it listens and whom it talks to. A store replica talks to its store's replicas,
  a lock replica to the lock replicas;
* ``service_probes``, ``node_masters``, ``find_masters`` and ``wait_for_masters``: which
  replica is the master of a Paxos group now. Groups are named ``(service, group)``: a store's
  name, or ``LOCKS_SERVICE`` for the lock service. Only a group's master (the lease holder)
  answers its probe with success: for a store group a zero-item ``Get`` on a queue the group
  holds (``GetOk``), for a lock group a local ``ReadLock`` of a key the group holds
  (``LockOk``; a follower answers ``LockRedirect``).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from net.client import NodeClient
from net.config import NetConfig
from net.errors import NetError
from net.runner import NodeFactory, NodeRunner
from pxq.config import (
    LOCKS_SERVICE,
    ClusterConfig,
    LockServiceConfig,
    NodeInfo,
    ReplicaConfig,
    StoreConfig,
)
from pxq.effects import NodeId, StorageView
from pxq.lock.messages import LockOk, ReadLock
from pxq.lock.node import LockNode, group_of_key
from pxq.store.messages import Get, GetOk
from pxq.store.node import StoreNode

PROBE_TIMEOUT_S = 0.5
WAIT_POLL_S = 0.05
LOCK_PROBE_PREFIX: Final = "pxq-probe-"
"""Lock probe keys are this prefix and a number; probes only read them (never acquire)."""
LOCK_PROBE_TRIES_PER_GROUP: Final = 64
"""Candidate keys tried per group when looking for one probe key in each group (CRC-32 spreads
them evenly: missing a group within 64 tries per group does not happen in practice, and is
reported if it does)."""

GroupKey = tuple[str, int]
"""A Paxos group of the cluster: (service, group number); the service is a store's name or
``LOCKS_SERVICE``."""


def store_factory(config: ClusterConfig, store: StoreConfig) -> NodeFactory:
    """The node factory of a replica of ``store``."""

    def factory(node_id: NodeId, storage: StorageView, rng: random.Random) -> StoreNode:
        return StoreNode(node_id, config, store.name, storage, rng)

    return factory


def lock_factory(locks: LockServiceConfig) -> NodeFactory:
    """The node factory of a lock replica (one replica of every lock group)."""

    def factory(node_id: NodeId, storage: StorageView, rng: random.Random) -> LockNode:
        return LockNode(
            node_id,
            locks.paxos,
            storage,
            rng,
            keys_max=locks.keys_max,
            values_bytes_max=locks.values_bytes_max,
            cleanup_tick_ms=locks.cleanup_tick_ms,
        )

    return factory


def peers_of(service: StoreConfig | LockServiceConfig) -> dict[NodeId, tuple[str, int]]:
    """The addresses of a replica set (a store's, or the lock service's), by node name."""
    return {r.node: (r.host, r.port) for r in service.replicas}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What it takes to run one node: its entry in the configuration, how to build its state
    machine and the addresses of its replica set."""

    info: NodeInfo
    factory: NodeFactory
    peers: dict[NodeId, tuple[str, int]]


def node_spec(config: ClusterConfig, node: NodeId) -> NodeSpec | None:
    """How to run ``node`` (a store or a lock replica); None if ``config`` has no such node."""
    info = config.node_info(node)
    if info is None:
        return None
    if info.role == "lock":
        locks = config.locks
        if locks is None:  # pragma: no cover - node_info only lists lock nodes of [locks]
            raise NetError(f"{node!r} is a lock node but the configuration has no [locks]")
        return NodeSpec(info=info, factory=lock_factory(locks), peers=peers_of(locks))
    store = config.store(info.service)
    return NodeSpec(info=info, factory=store_factory(config, store), peers=peers_of(store))


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


@functools.lru_cache(maxsize=16)
def lock_probe_keys(groups: int) -> tuple[str, ...]:
    """A key of each lock group (index: the group), the first ``LOCK_PROBE_PREFIX<n>`` that
    ``group_of_key`` puts there. Raises ``NetError`` if some group gets none within
    ``LOCK_PROBE_TRIES_PER_GROUP * groups`` candidates."""
    if groups < 1:
        raise NetError(f"a lock service needs at least one group, got {groups}")
    keys: list[str | None] = [None] * groups
    missing = groups
    for n in range(LOCK_PROBE_TRIES_PER_GROUP * groups):
        key = f"{LOCK_PROBE_PREFIX}{n}"
        g = group_of_key(key, groups)
        if keys[g] is None:
            keys[g] = key
            missing -= 1
            if missing == 0:
                return tuple(k for k in keys if k is not None)
    lacking = [g for g, k in enumerate(keys) if k is None]
    raise NetError(f"found no probe key for lock group(s) {lacking} of {groups}")


def lock_probe_request(groups: int, group: int) -> ReadLock:
    """A local read of a key lock ``group`` holds: only the group's master answers ``LockOk``."""
    return ReadLock(key=lock_probe_keys(groups)[group], through_log=False)


@dataclass(frozen=True, slots=True)
class ServiceProbes:
    """The replicas of one service (a store or the lock service) and a probe per group."""

    service: str
    replicas: tuple[ReplicaConfig, ...]
    probes: dict[int, Get | ReadLock]


def service_probes(config: ClusterConfig) -> list[ServiceProbes]:
    """Every service of ``config`` with its probes: the stores (only the groups that can be
    probed, see ``probe_request``), then the lock service (every group)."""
    found: list[ServiceProbes] = []
    for store in config.stores:
        probes: dict[int, Get | ReadLock] = {
            g: p for g in range(store.groups) if (p := probe_request(config, store, g)) is not None
        }
        found.append(ServiceProbes(store.name, store.replicas, probes))
    locks = config.locks
    if locks is not None:
        lock_probes: dict[int, Get | ReadLock] = {
            g: lock_probe_request(locks.groups, g) for g in range(locks.groups)
        }
        found.append(ServiceProbes(LOCKS_SERVICE, locks.replicas, lock_probes))
    return found


def probed_groups(config: ClusterConfig) -> list[GroupKey]:
    """Every Paxos group of ``config`` that can be probed: the store groups that hold a queue
    with a consumer group, and every lock group."""
    return [(sp.service, g) for sp in service_probes(config) for g in sorted(sp.probes)]


def lock_groups(config: ClusterConfig) -> list[GroupKey]:
    """The lock service's groups, ``(LOCKS_SERVICE, g)``; empty without ``[locks]``."""
    locks = config.locks
    return [] if locks is None else [(LOCKS_SERVICE, g) for g in range(locks.groups)]


async def node_masters(
    replica: ReplicaConfig | NodeInfo,
    probes: Mapping[int, object],
    net_config: NetConfig | None = None,
) -> list[int] | None:
    """The groups (of ``probes``) that ``replica`` masters now, ascending; None if it cannot be
    reached. The probes go out pipelined on one connection; a group counts as mastered when
    its probe is answered ``GetOk`` (a store group) or ``LockOk`` (a lock group)."""
    net_config = net_config or NetConfig()
    try:
        client = await NodeClient.connect(replica.host, replica.port, config=net_config)
    except (NetError, OSError):
        return None
    try:

        async def ask(group: int, probe: object) -> int | None:
            try:
                answer = await client.call(probe, timeout_s=PROBE_TIMEOUT_S)
            except NetError:
                return None
            return group if isinstance(answer, GetOk | LockOk) else None

        answers = await asyncio.gather(*(ask(g, p) for g, p in sorted(probes.items())))
    finally:
        await client.close()
    return [g for g in answers if g is not None]


async def find_masters(
    config: ClusterConfig,
    net_config: NetConfig | None = None,
    *,
    nodes: Collection[NodeId] | None = None,
    services: Collection[str] | None = None,
) -> dict[GroupKey, NodeId]:
    """One probing pass over every replica, stores and locks (or only ``nodes``, only the
    replicas of ``services``): the master of each group that answered. Replicas are probed
    concurrently."""
    jobs: list[tuple[str, ReplicaConfig, dict[int, Get | ReadLock]]] = []
    for sp in service_probes(config):
        if services is not None and sp.service not in services:
            continue
        for replica in sp.replicas:
            if sp.probes and (nodes is None or replica.node in nodes):
                jobs.append((sp.service, replica, sp.probes))
    results = await asyncio.gather(*(node_masters(r, p, net_config) for _, r, p in jobs))
    masters: dict[GroupKey, NodeId] = {}
    for (service, replica, _), groups in zip(jobs, results, strict=True):
        for g in groups or ():
            masters.setdefault((service, g), replica.node)
    return masters


async def wait_for_masters(
    config: ClusterConfig,
    net_config: NetConfig | None = None,
    *,
    timeout_s: float = 10.0,
    nodes: Callable[[], Collection[NodeId] | None] | None = None,
    check: Callable[[], None] | None = None,
    groups: Collection[GroupKey] | None = None,
) -> dict[GroupKey, NodeId]:
    """Wait until every probed group (or every one of ``groups``) has a master; return the
    masters (the latest seen).

    ``nodes`` (called before every pass) limits the probing to the replicas that are up;
    ``check`` is called before every pass and may raise to abort the wait. Raises
    ``NetError`` naming the groups without a master after ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wanted = probed_groups(config) if groups is None else sorted(groups)
    services = None if groups is None else {s for s, _ in wanted}
    masters: dict[GroupKey, NodeId] = {}
    while True:
        if check is not None:
            check()
        masters.update(
            await find_masters(
                config,
                net_config,
                nodes=nodes() if nodes is not None else None,
                services=services,
            )
        )
        if all(key in masters for key in wanted):
            return {key: masters[key] for key in wanted}
        if loop.time() > deadline:
            missing = ", ".join(f"{s}/{g}" for s, g in wanted if (s, g) not in masters)
            raise NetError(f"no master elected within {timeout_s} s for group(s) {missing}")
        await asyncio.sleep(WAIT_POLL_S)


# -- the in-process cluster ---------------------------------------------------------------------


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
