"""How a node of the cluster file is built: the one place that turns a ``ClusterConfig`` and a
node name into the node's state machine factory and the addresses of its replica set.

Both drivers and every cluster runner build nodes through ``node_spec``: ``pxq node run``
(``net.node.server``), the in-process cluster (``net.cluster.inprocess``) and the simulator's
queue workload (``sim.queue_workload``). A store replica is a ``StoreNode`` of its store and
talks to that store's replicas; a lock replica is a ``LockNode`` hosting every lock group and
talks to the other lock replicas. Pure: nothing here opens a file, a socket or a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.config import ClusterConfig, LockServiceConfig, NodeInfo, StoreConfig
from pxq.effects import NodeFactory, NodeId, Rng, StorageView
from pxq.lock.node import LockNode
from pxq.store.node import StoreNode


def store_factory(config: ClusterConfig, store: StoreConfig) -> NodeFactory:
    """The node factory of a replica of ``store``."""

    def factory(node_id: NodeId, storage: StorageView, rng: Rng) -> StoreNode:
        return StoreNode(node_id, config, store.name, storage, rng)

    return factory


def lock_factory(locks: LockServiceConfig) -> NodeFactory:
    """The node factory of a lock replica (one replica of every lock group)."""

    def factory(node_id: NodeId, storage: StorageView, rng: Rng) -> LockNode:
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
            raise ValueError(f"{node!r} is a lock node but the configuration has no [locks]")
        return NodeSpec(info=info, factory=lock_factory(locks), peers=peers_of(locks))
    store = config.store(info.service)
    return NodeSpec(info=info, factory=store_factory(config, store), peers=peers_of(store))
