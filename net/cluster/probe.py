"""Which replica is the master of each Paxos group now, found by probing the replicas.

Every probe goes out as a client of the configuration's cluster (``ClientHello``), so a node
of another cluster answering at a replica's address refuses it and the probe fails with
``ForeignCluster`` instead of counting that node's masters as ours (``pxq cluster up``
printed "up" that way while all its own nodes had died on busy ports).

Shared by the in-process cluster (``net.cluster.inprocess``), the multi-process local cluster
(``pxq cluster up``, ``net.cluster.processes``) and the benchmarks. Groups are named
``(service, group)``: a store's name, or ``LOCKS_SERVICE`` for the lock service. Only a
group's master (the lease holder) answers its probe with success: for a store group a
zero-item ``Get`` on a queue the group holds (``GetOk``), for a lock group a local
``ReadLock`` of a key the group holds (``LockOk``; a follower answers ``LockRedirect``).

* ``service_probes``: every service of a configuration with one probe per group;
* ``node_masters``: the groups one replica masters now (pipelined probes, one connection);
* ``find_masters``: one probing pass over every replica;
* ``wait_for_masters``: probe until every group has a master, or fail naming the ones
  without.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from net.client.connection import ClusterIdentity, NodeClient
from net.config import NetConfig
from net.errors import ForeignCluster, MetadataMismatch, NetError
from pxq.access import LOCK_PROBE_PREFIX
from pxq.config import LOCKS_SERVICE, ClusterConfig, NodeInfo, ReplicaConfig, StoreConfig
from pxq.effects import NodeId
from pxq.lock.messages import LockOk, ReadLock
from pxq.lock.node import group_of_key
from pxq.store.messages import Get, GetOk

PROBE_TIMEOUT_S = 0.5
WAIT_POLL_S = 0.05
# Lock probe keys are LOCK_PROBE_PREFIX and a number; probes only read them (never acquire),
# which is why pxq.access lets any authenticated principal send them.
LOCK_PROBE_TRIES_PER_GROUP: Final = 64
"""Candidate keys tried per group when looking for one probe key in each group (CRC-32 spreads
them evenly: missing a group within 64 tries per group does not happen in practice, and is
reported if it does)."""

GroupKey = tuple[str, int]
"""A Paxos group of the cluster: (service, group number); the service is a store's name or
``LOCKS_SERVICE``."""


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
    *,
    cluster: ClusterIdentity,
) -> list[int] | None:
    """The groups (of ``probes``) that ``replica`` masters now, ascending; None if it cannot be
    reached. The probes go out pipelined on one connection, opened as a client of
    ``cluster``; a group counts as mastered when its probe is answered ``GetOk`` (a store
    group) or ``LockOk`` (a lock group). Raises ``ForeignCluster`` when what answers at the
    replica's address is not that replica of ``cluster`` (another cluster holds the port),
    ``MetadataMismatch`` when its routing metadata differs from ``cluster``'s."""
    net_config = net_config or NetConfig()
    try:
        client = await NodeClient.connect(
            replica.host, replica.port, cluster=cluster, config=net_config, node=replica.node
        )
    except (ForeignCluster, MetadataMismatch):
        raise  # someone else answers there: not "unreachable"
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
    concurrently. Without ``net_config``, the cluster file's (its TLS included). Raises
    ``ForeignCluster`` (or ``MetadataMismatch``) when a replica's address is answered by
    someone else (``node_masters``)."""
    net_config = net_config or NetConfig.for_cluster(config)
    cluster = ClusterIdentity.of(config)
    jobs: list[tuple[str, ReplicaConfig, dict[int, Get | ReadLock]]] = []
    for sp in service_probes(config):
        if services is not None and sp.service not in services:
            continue
        for replica in sp.replicas:
            if sp.probes and (nodes is None or replica.node in nodes):
                jobs.append((sp.service, replica, sp.probes))
    results = await asyncio.gather(
        *(node_masters(r, p, net_config, cluster=cluster) for _, r, p in jobs)
    )
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
    net_config = net_config or NetConfig.for_cluster(config)
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
