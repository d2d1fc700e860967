"""A three-replica store as ``LocalCluster`` (NodeRunners over loopback TCP and LMDB).

Behaviours checked: an enqueue acknowledged by the master is read back from it; after the
master is killed abruptly a new master is elected and every acknowledged item is still
readable through it; the old master, restarted from its data dir, catches up with what was
enqueued while it was down. Also the config helpers (free ports) the CLI cluster tests share.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from net.client.connection import ClusterIdentity, NodeClient
from net.cluster.inprocess import LocalCluster
from pxq.config import ClusterConfig, loads_config
from pxq.effects import NodeId
from pxq.store.messages import Enqueue, EnqueueOk, Get, GetOk, Item
from pxq.store.node import StoreNode
from tests.test_net_support import FAST, run_async, wait_until

T = 5.0  # call timeout in seconds; every wait below is bounded
STORE = "store0"
TOPIC = "events"


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_toml(
    ports: list[int],
    *,
    name: str = "test",
    groups: int = 2,
    lock_ports: list[int] | None = None,
    lock_groups: int = 1,
) -> str:
    """A one-store cluster file with a replica s0, s1, ... on each of ``ports`` and, given
    ``lock_ports``, a lock service with a replica l0, l1, ... on each of them."""
    replicas = "".join(
        f'\n[[stores.replicas]]\nnode = "s{i}"\nhost = "127.0.0.1"\nport = {port}\n'
        for i, port in enumerate(ports)
    )
    locks = ""
    if lock_ports is not None:
        locks = f"[locks]\ngroups = {lock_groups}\n" + "".join(
            f'\n[[locks.replicas]]\nnode = "l{i}"\nhost = "127.0.0.1"\nport = {port}\n'
            for i, port in enumerate(lock_ports)
        )
    return (
        f'[cluster]\nname = "{name}"\n\n'
        f'[[stores]]\nname = "{STORE}"\ngroups = {groups}\n{replicas}\n'
        f"{locks}\n"
        f'[[topics]]\nname = "{TOPIC}"\nqueues = 4\n\n'
        '[[topics.consumer_groups]]\nname = "default"\n'
    )


def three_replicas() -> ClusterConfig:
    return loads_config(cluster_toml(free_ports(3)), file="<test>")


async def call(cluster: LocalCluster, node: NodeId, request: object) -> object:
    replica = next(r for r in cluster.config.store(STORE).replicas if r.node == node)
    client = await NodeClient.connect(
        replica.host, replica.port, cluster=ClusterIdentity.of(cluster.config), config=FAST
    )
    try:
        return await client.call(request, timeout_s=T)
    finally:
        await client.close()


async def enqueue(cluster: LocalCluster, node: NodeId, queue: int, seq: int, n: int) -> EnqueueOk:
    items = tuple(Item(key=f"{seq}.{i}".encode(), payload=b"v" * 16) for i in range(n))
    answer = await call(
        cluster, node, Enqueue(topic=TOPIC, queue=queue, producer="p", seq=seq, items=items)
    )
    assert isinstance(answer, EnqueueOk), answer
    return answer


async def read_keys(cluster: LocalCluster, node: NodeId, queue: int) -> list[bytes]:
    get = Get(topic=TOPIC, group="default", queue=queue, cursor=0, items_max=100, bytes_max=1 << 20)
    answer = await call(cluster, node, get)
    assert isinstance(answer, GetOk), answer
    return [item.key for item in answer.items]


def store_node(cluster: LocalCluster, node: NodeId) -> StoreNode:
    running = cluster.runners[node].node
    assert isinstance(running, StoreNode)
    return running


async def new_master(cluster: LocalCluster, group: int, old: NodeId) -> NodeId:
    """Wait (bounded) for a master of ``group`` other than ``old``."""
    async with asyncio.timeout(10.0):
        while True:
            master = await cluster.master_of(STORE, group)
            if master is not None and master != old:
                return master
            await asyncio.sleep(0.02)


def test_free_ports_and_the_generated_config() -> None:
    ports = free_ports(3)
    assert len(set(ports)) == 3
    config = loads_config(cluster_toml(ports), file="<test>")
    assert [r.port for r in config.store(STORE).replicas] == ports
    assert all(r.host == "127.0.0.1" for r in config.store(STORE).replicas)
    assert config.locks is None
    ports = free_ports(6)
    config = loads_config(cluster_toml(ports[:3], lock_ports=ports[3:], lock_groups=2))
    assert config.locks is not None and config.locks.groups == 2
    assert [r.port for r in config.locks.replicas] == ports[3:]
    assert [n.node for n in config.all_nodes()] == ["s0", "s1", "s2", "l0", "l1", "l2"]


def test_master_failover_keeps_acknowledged_items_and_the_old_master_catches_up(
    tmp_path: Path,
) -> None:
    config = three_replicas()
    group = 0
    queue = config.queues_of(TOPIC, STORE, group)[0]

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            masters = await cluster.wait_for_masters(timeout_s=10.0)
            assert set(masters) == {(STORE, 0), (STORE, 1)}
            old = masters[(STORE, group)]

            # Enqueue through the master and read it back.
            ok = await enqueue(cluster, old, queue, seq=1, n=5)
            assert (ok.first_offset, ok.count, ok.duplicate) == (0, 5, False)
            acked = [f"1.{i}".encode() for i in range(5)]
            assert await read_keys(cluster, old, queue) == acked

            # Kill the master abruptly: another replica takes over with every acked item.
            cluster.kill_node(old)
            assert not cluster.runners[old].running
            new = await new_master(cluster, group, old)
            assert new != old
            assert await read_keys(cluster, new, queue) == acked

            # More items while the old master is down, then restart it: it catches up.
            ok = await enqueue(cluster, new, queue, seq=2, n=3)
            assert (ok.first_offset, ok.count) == (5, 3)
            acked += [f"2.{i}".encode() for i in range(3)]
            target = store_node(cluster, new).applied(group)
            await cluster.start_node(old)
            await wait_until(
                lambda: store_node(cluster, old).applied(group) >= target,
                timeout_s=10.0,
                what=f"{old} to catch up to instance {target}",
            )
            sm = store_node(cluster, old).state_machine(group)
            assert sm.offsets(TOPIC, queue)[1] == len(acked)
            # Whoever masters the group now serves every acknowledged item, in order.
            master = await cluster.wait_for_masters(timeout_s=10.0)
            assert await read_keys(cluster, master[(STORE, group)], queue) == acked
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=40.0)


def test_master_of_a_stopped_cluster_is_none(tmp_path: Path) -> None:
    config = three_replicas()

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        await cluster.wait_for_masters(timeout_s=10.0)
        await cluster.stop()
        assert await cluster.master_of(STORE, 0) is None

    run_async(scenario(), timeout_s=20.0)
