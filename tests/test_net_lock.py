"""The lock service in the real runtime: three ``LockNode`` replicas as ``LocalCluster`` node
runners (LMDB, TCP on 127.0.0.1), called over real TCP with ``net.client.connection.NodeClient``.

Behaviours checked: an acquire through the master is granted with version 1, renewed (same
version, later expiry), released (the next holder gets version 2 at once, without waiting for
the lease); a follower answers ``LockRedirect`` naming the master and nothing happens; after
the master's runner is killed abruptly, another replica becomes master, refuses a new holder
while the old lease lasts and grants it (version + 1) once the lease expired by the log's
time; a client's ``NodePool`` built from the configuration reaches lock nodes by name;
``lock_probe_keys`` finds one key per lock group. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from net.client.connection import ClusterIdentity, NodeClient
from net.client.driver import NodePool, node_addresses
from net.cluster.inprocess import LocalCluster
from net.cluster.probe import lock_probe_keys, probed_groups
from net.errors import NetError
from pxq.config import LOCK_GROUPS_MAX, LOCKS_SERVICE, ClusterConfig, loads_config
from pxq.effects import NodeId
from pxq.lock.messages import (
    Acquire,
    LockDenied,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
)
from pxq.lock.node import LockNode, group_of_key
from pxq.nodes import node_spec
from tests.test_net_cluster import STORE, cluster_toml, free_ports
from tests.test_net_support import FAST, run_async

T = 5.0  # call timeout in seconds
KEY = "queue/events/default/0"


def lock_cluster_config(lock_groups: int = 1) -> ClusterConfig:
    """One single-replica store (the file needs a store) and three lock replicas, with the
    ``LockNode`` settings away from their defaults."""
    ports = free_ports(4)
    text = cluster_toml(ports[:1], groups=1, lock_ports=ports[1:], lock_groups=lock_groups)
    header = f"[locks]\ngroups = {lock_groups}\n"
    settings = "keys_max = 77\nvalues_bytes_max = 200000\ncleanup_tick_ms = 300\n"
    if header not in text:
        raise AssertionError("cluster_toml changed its [locks] table")
    return loads_config(text.replace(header, header + settings), file="<test>")


async def call(cluster: LocalCluster, node: NodeId, request: object) -> object:
    host, port = cluster.address_of(node)
    client = await NodeClient.connect(
        host, port, cluster=ClusterIdentity.of(cluster.config), config=FAST
    )
    try:
        return await client.call(request, timeout_s=T)
    finally:
        await client.close()


async def acquire(cluster: LocalCluster, node: NodeId, holder: str, lease_ms: int) -> object:
    return await call(cluster, node, Acquire(key=KEY, holder=holder, lease_ms=lease_ms))


async def lock_master(cluster: LocalCluster, *, other_than: NodeId | None = None) -> NodeId:
    """Wait (bounded) for a master of lock group 0 (other than ``other_than``)."""
    async with asyncio.timeout(10.0):
        while True:
            master = await cluster.lock_master_of(0)
            if master is not None and master != other_than:
                return master
            await asyncio.sleep(0.02)


def test_lock_probe_keys_find_one_key_in_every_group() -> None:
    for groups in (1, 2, 7, LOCK_GROUPS_MAX):
        keys = lock_probe_keys(groups)
        assert [group_of_key(k, groups) for k in keys] == list(range(groups))
    with pytest.raises(NetError):
        lock_probe_keys(0)


def test_lock_nodes_are_built_as_lock_nodes_of_the_lock_replica_set() -> None:
    config = lock_cluster_config(lock_groups=2)
    spec = node_spec(config, "l1")
    assert spec is not None and spec.info.role == "lock"
    assert sorted(spec.peers) == ["l0", "l1", "l2"]
    store_spec = node_spec(config, "s0")
    assert store_spec is not None and sorted(store_spec.peers) == ["s0"]
    assert node_spec(config, "nobody") is None
    assert probed_groups(config) == [(STORE, 0), (LOCKS_SERVICE, 0), (LOCKS_SERVICE, 1)]
    assert node_addresses(config) == config.node_addresses()
    assert set(node_addresses(config)) == {"s0", "l0", "l1", "l2"}


def test_acquire_renew_release_and_redirects_over_tcp(tmp_path: Path) -> None:
    config = lock_cluster_config()

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            assert sorted(cluster.runners) == ["l0", "l1", "l2", "s0"]
            masters = await cluster.wait_for_lock_masters(timeout_s=10.0)
            assert set(masters) == {0}
            master = masters[0]
            node = cluster.runners[master].node
            assert isinstance(node, LockNode)
            assert (node.keys_max, node.values_bytes_max, node.cleanup_tick_ms) == (77, 200000, 300)
            # The cluster-wide wait covers the lock group too.
            everything = await cluster.wait_for_masters(timeout_s=10.0)
            assert everything[(LOCKS_SERVICE, 0)] == master

            first = await acquire(cluster, master, "a", 5000)
            assert isinstance(first, LockOk), first
            assert (first.holder, first.version) == ("a", 1)
            assert first.expiry_ms == first.at_ms + 5000

            denied = await acquire(cluster, master, "b", 5000)
            assert isinstance(denied, LockDenied), denied
            assert (denied.holder, denied.version) == ("a", 1)

            renewed = await call(
                cluster, master, Renew(key=KEY, holder="a", version=1, lease_ms=8000)
            )
            assert isinstance(renewed, LockOk), renewed
            assert renewed.version == 1 and renewed.expiry_ms > first.expiry_ms

            # A follower redirects to the master (once it heard of it) and changes nothing.
            follower = next(n for n in cluster.lock_nodes if n != master)
            async with asyncio.timeout(5.0):
                while True:
                    redirect = await acquire(cluster, follower, "c", 5000)
                    assert isinstance(redirect, LockRedirect), redirect
                    if redirect.master is not None:
                        break
                    await asyncio.sleep(0.02)
            assert redirect.master == master
            read = await call(cluster, follower, ReadLock(key=KEY))
            assert isinstance(read, LockRedirect) and read.master == master
            read = await call(cluster, master, ReadLock(key=KEY, through_log=True))
            assert isinstance(read, LockOk) and (read.holder, read.version) == ("a", 1)

            # A release frees the key at once: the next holder gets the next version.
            released = await call(cluster, master, Release(key=KEY, holder="a", version=1))
            assert isinstance(released, LockOk), released
            assert released.holder == ""
            second = await acquire(cluster, master, "b", 5000)
            assert isinstance(second, LockOk), second
            assert (second.holder, second.version) == ("b", 2)

            # A client's pool built from the configuration reaches lock nodes by name.
            pool = NodePool.for_config(config, FAST)
            try:
                assert pool.address_of(master) == cluster.address_of(master)
                seen = await pool.call(master, ReadLock(key=KEY), T)
                assert isinstance(seen, LockOk) and (seen.holder, seen.version) == ("b", 2)
            finally:
                await pool.close()
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=30.0)


def test_a_new_master_grants_the_key_only_after_the_old_lease_expired(tmp_path: Path) -> None:
    config = lock_cluster_config()
    lease_ms = 3000

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            old = (await cluster.wait_for_lock_masters(timeout_s=10.0))[0]
            held = await acquire(cluster, old, "a", lease_ms)
            assert isinstance(held, LockOk) and held.version == 1, held

            cluster.kill_node(old)
            assert not cluster.runners[old].running
            new = await lock_master(cluster, other_than=old)
            assert new != old

            # The new master refuses "b" while a's lease lasts, then grants it with version 2.
            answers: list[object] = []
            async with asyncio.timeout(lease_ms / 1000 + 10.0):
                while True:
                    answer = await acquire(cluster, new, "b", lease_ms)
                    answers.append(answer)
                    if isinstance(answer, LockOk):
                        break
                    assert isinstance(answer, LockDenied | LockRedirect), answer
                    await asyncio.sleep(0.05)
            granted = answers[-1]
            assert isinstance(granted, LockOk)
            assert (granted.holder, granted.version) == ("b", 2)
            assert granted.at_ms >= held.expiry_ms
            for answer in answers[:-1]:
                if isinstance(answer, LockDenied):
                    assert (answer.holder, answer.version) == ("a", 1)
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=40.0)
