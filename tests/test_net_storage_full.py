"""A full storage refuses enqueues with a clear error, loses nothing, and recovers.

Behaviour checked (issue 5): a store replica whose LMDB nears ``map_size_max_bytes`` answers
enqueues with the definite ``storage_full`` error (``pxq.EnqueueFailed``, the message naming
the map limit) instead of stopping; the node keeps running; gets still work and every
acknowledged item reads back byte for byte; once a consumer group has consumed everything
and retention has removed it, enqueues succeed again on the same running node. Also: while
the runner reports the storage short (``StorageLow``), the store node refuses enqueues and
lets every other request through. And (issue 13) replicas whose data already exceeds their
limit when they start (what a reserve of 0, no longer accepted, used to leave behind) start
read-only instead of stopping at their first write: they refuse enqueues, serve gets and
cursor commits, and accept enqueues again once retention has freed space.

Method: a ``LocalCluster`` with a tiny map (4 MiB maximum) and a reserve of 2 MiB, so that a
few thousand 1 KiB items reach the reserve within seconds; retention with ``hold_items = 0``
and frequent ticks, and frequent Paxos checkpoints so that the replicated log's copy of the
items is truncated as well. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from net.client.api import AsyncClient
from net.client.types import EnqueueFailed, Item, Receipt
from net.cluster.inprocess import LocalCluster
from net.config import MIB, NetConfig
from net.node.runner import NodeRunner
from net.node.server import build_runner
from pxq.config import loads_config
from pxq.store.node import StoreNode
from tests.test_net_cluster import free_ports
from tests.test_net_support import FAST, run_async

TOPIC = "events"
GROUP = "default"
QUEUES = 2
ITEM_BYTES = 1024
ROUND_ITEMS = 50
"""Items enqueued concurrently per round while filling the storage."""
ITEMS_MAX = 8_000
"""Bound of the filling loop: far more than the tiny map holds."""
MAP_MAX_BYTES = 4 * MIB
RESERVE_BYTES = 2 * MIB
STORAGE_FULL_NET = NetConfig(
    first_frame_timeout_ms=FAST.first_frame_timeout_ms,
    peer_backoff_initial_ms=FAST.peer_backoff_initial_ms,
    peer_backoff_max_ms=FAST.peer_backoff_max_ms,
    peer_connect_timeout_ms=FAST.peer_connect_timeout_ms,
    map_size_bytes=1 * MIB,
    map_size_max_bytes=MAP_MAX_BYTES,
    storage_reserve_bytes=RESERVE_BYTES,
    storage_space_refresh_ms=20,
)
CONSUMER_OPTIONS = {"poll_empty_ms": 2, "poll_empty_max_ms": 20}
WAIT_S = 20.0


def config_toml(ports: list[int]) -> str:
    replicas = "".join(
        f'[[stores.replicas]]\nnode = "s{i}"\nhost = "127.0.0.1"\nport = {port}\n'
        for i, port in enumerate(ports)
    )
    return (
        '[cluster]\nname = "full"\n[batching]\nlinger_ms = 1\n'
        '[[stores]]\nname = "store0"\ngroups = 1\nretention_tick_ms = 100\n'
        f"{replicas}"
        "[stores.paxos]\ncheckpoint_every = 8\nlog_hold = 8\n"
        f'[[topics]]\nname = "{TOPIC}"\nqueues = {QUEUES}\n'
        "[topics.retention]\nhold_items = 0\n"
        f'[[topics.consumer_groups]]\nname = "{GROUP}"\n'
    )


def payload_of(i: int) -> bytes:
    return (f"{i:08d}".encode() * (ITEM_BYTES // 8))[:ITEM_BYTES]


async def fill_until_refused(
    client: AsyncClient,
) -> tuple[dict[bytes, Receipt], EnqueueFailed]:
    """Enqueue rounds of items until one is refused; the acknowledged ones by payload."""
    acked: dict[bytes, Receipt] = {}
    i = 0
    while i < ITEMS_MAX:
        batch = [(f"k{j}", payload_of(j)) for j in range(i, i + ROUND_ITEMS)]
        i += ROUND_ITEMS
        results = await client.enqueue_many(TOPIC, batch, return_exceptions=True)
        refused: EnqueueFailed | None = None
        for (_, payload), result in zip(batch, results, strict=True):
            if isinstance(result, Receipt):
                acked[payload] = result
            elif isinstance(result, EnqueueFailed):
                refused = result
            else:
                raise AssertionError(f"an enqueue ended other than acked or refused: {result!r}")
        if refused is not None:
            return acked, refused
    raise AssertionError(f"{ITEMS_MAX} items of {ITEM_BYTES} bytes were all accepted")


async def read_back(client: AsyncClient) -> list[Item]:
    items: list[Item] = []
    for queue in range(QUEUES):
        items += await client.peek(TOPIC, GROUP, queue, offset=0, count=10_000)
    return items


async def enqueue_again(client: AsyncClient) -> Receipt:
    """Retry one enqueue (refusals only) until it is accepted, bounded by ``WAIT_S``."""
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                return await client.enqueue(TOPIC, b"after", key="after")
            except EnqueueFailed as exc:
                assert exc.code == "storage_full", exc
            await asyncio.sleep(0.1)


def check_acked_items_read_back(acked: dict[bytes, Receipt], items: list[Item]) -> None:
    stored = {item.payload: item for item in items}
    assert len(stored) == len(items), "an item is stored twice"
    for payload, receipt in acked.items():
        item = stored.get(payload)
        assert item is not None, f"acknowledged item {receipt} is lost"
        assert (item.queue, item.offset) == (receipt.queue, receipt.offset)
        assert item.key == b"k%d" % int(payload[:8])


def runner_of(cluster: LocalCluster, node: str) -> NodeRunner:
    return cluster.runners[node]


def store_node_of(runner: NodeRunner) -> StoreNode:
    node = runner.node
    assert isinstance(node, StoreNode), node
    return node


@pytest.mark.parametrize("replicas", [1, 3])
def test_full_storage_refuses_enqueues_keeps_every_item_and_recovers_after_retention(
    tmp_path: Path, replicas: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = loads_config(config_toml(free_ports(replicas)), file="<test>")
    master_of: list[str] = []

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, STORAGE_FULL_NET)
        try:
            masters = await cluster.wait_for_masters(timeout_s=10.0)
            master = masters[("store0", 0)]
            master_of.append(master)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                acked, refused = await fill_until_refused(client)
                # A clear, definite error naming the limit, and the node still runs.
                assert refused.code == "storage_full"
                assert "map_size_max_bytes" in refused.message
                assert "reserve" in refused.message
                runner = runner_of(cluster, master)
                assert runner.running, runner.crash_reason
                assert runner.storage_short
                assert store_node_of(runner).storage_low is not None
                assert store_node_of(runner).enqueues_refused >= 1
                assert all(r.running for r in cluster.runners.values())
                assert len(acked) > 500  # the reserve, not something else, stopped them

                # Nothing lost, nothing corrupted: every acknowledged item reads back.
                items = await read_back(client)
                check_acked_items_read_back(acked, items)
                with pytest.raises(EnqueueFailed, match="storage_full"):
                    await client.enqueue(TOPIC, b"still full", key="x")

                # Consume everything (cursor commits go on while short), let retention free
                # the items, and enqueues succeed again on the same incarnation.
                await consume_all(client, acked)
                receipt = await enqueue_again(client)
                assert receipt.topic == TOPIC
                assert not runner.storage_short
                assert store_node_of(runner).storage_low is None
                assert runner.running
                # Retention removes the consumed items (a bounded number per tick); the new
                # one reads back.
                async with asyncio.timeout(WAIT_S):
                    while True:
                        left = [item.payload for item in await read_back(client)]
                        assert b"after" in left
                        assert set(left) <= set(acked) | {b"after"}
                        if left == [b"after"]:
                            break
                        await asyncio.sleep(0.1)
        finally:
            await cluster.stop()

    with caplog.at_level(logging.INFO, logger="pxq.storage"):
        run_async(scenario(), timeout_s=90.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "pxq.storage"]
    # Each crossing is logged once per node, by the node that measured it: the master
    # (which refused the enqueues and accepted them again), and possibly a follower that a
    # client call reached while it was short too (replicas fill alike), never back and forth.
    starts = [m.split()[1] for m in messages if "storage low" in m and "MiB in use" in m]
    ends = [m.split()[1] for m in messages if "storage back above its reserve" in m]
    assert starts.count(master_of[0]) == 1 and ends.count(master_of[0]) == 1, messages
    assert len(set(starts)) == len(starts) and len(set(ends)) == len(ends), messages
    assert len(starts) == len([m for m in messages if "storage low" in m]), messages


async def consume_all(client: AsyncClient, acked: Iterable[bytes]) -> None:
    """Consume (and commit) until every payload of ``acked`` was delivered (bounded)."""
    delivered: set[bytes] = set()

    async def handle(item: Item) -> None:
        delivered.add(item.payload)

    async with client.consumer(GROUP, TOPIC, options=CONSUMER_OPTIONS) as consumer:
        task = asyncio.create_task(consumer.run(handle))
        try:
            async with asyncio.timeout(WAIT_S):
                while not set(acked) <= delivered:
                    await asyncio.sleep(0.01)
        finally:
            consumer.stop()
            await task


def test_a_short_storage_refuses_enqueues_and_serves_gets(tmp_path: Path) -> None:
    """While the storage is short, the store node refuses enqueues and serves a Get."""
    from net.client.connection import ClusterIdentity, NodeClient
    from pxq.store.messages import Enqueue, Get, GetOk, StoreError
    from pxq.store.messages import Item as StoreItem

    # A reserve larger than anything available: enqueues are refused from the start.
    net = NetConfig(
        map_size_bytes=1 * MIB,
        map_size_max_bytes=MAP_MAX_BYTES,
        storage_reserve_bytes=MAP_MAX_BYTES - 1,
    )
    config = loads_config(config_toml(free_ports(1)), file="<test>")

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, net)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            host, port = cluster.address_of("s0")
            client = await NodeClient.connect(
                host, port, cluster=ClusterIdentity.of(cluster.config), config=FAST
            )
            try:
                item = StoreItem(key=b"k", payload=b"v")
                enq = Enqueue(topic=TOPIC, queue=0, producer="p", seq=1, items=(item,))
                answer = await client.call(enq, timeout_s=5.0)
                assert isinstance(answer, StoreError), answer
                assert (answer.code, answer.definite) == ("storage_full", True)
                assert "map_size_max_bytes=4194304" in answer.message
                get = Get(topic=TOPIC, group=GROUP, queue=0, cursor=0, items_max=10, bytes_max=MIB)
                answer = await client.call(get, timeout_s=5.0)
                assert isinstance(answer, GetOk) and answer.items == (), answer
                runner = cluster.runners["s0"]
                assert store_node_of(runner).enqueues_refused == 1
                assert runner.stats.storage_crossings == 1
                assert runner.running and runner.storage_short
            finally:
                await client.close()
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=30.0)


def test_the_cluster_file_storage_table_reaches_every_runner(tmp_path: Path) -> None:
    """``[storage]`` sets the map sizes and the reserve of nodes started from the file
    (``pxq node run`` builds its runner with ``build_runner``, ``pxq cluster up`` runs that)."""
    text = config_toml(free_ports(3)).replace(
        "[batching]",
        f"[storage]\nmap_size_bytes = {MIB}\nmap_size_max_bytes = {MAP_MAX_BYTES}\n"
        f"reserve_bytes = {RESERVE_BYTES}\n[batching]",
    )
    config = loads_config(text, file="<test>")
    runner = build_runner(config, "s1", tmp_path / "s1")
    assert (
        runner.config.map_size_bytes,
        runner.config.map_size_max_bytes,
        runner.config.storage_reserve_bytes,
    ) == (MIB, MAP_MAX_BYTES, RESERVE_BYTES)
    assert LocalCluster(config, tmp_path).net_config == runner.config
    default = build_runner(loads_config(config_toml(free_ports(3)), file="<t>"), "s0", tmp_path)
    assert default.config == NetConfig()


def test_replicas_over_their_limit_start_read_only_and_recover_after_retention(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13 item 5: every replica's LMDB already holds more than its map limit allows
    (what a reserve of 0 used to leave behind, or a lowered ``map_size_max_bytes``). Before,
    each replica stopped at its first write after a restart (``StorageFull``: the map was
    full at its maximum), so with no majority nothing could be consumed to free space. Now
    they start read-only: enqueues are refused ``storage_full``, while gets, cursor commits
    and retention go on, and enqueues resume once retention has freed space."""
    ports = free_ports(3)
    config = loads_config(config_toml(ports), file="<test>")
    roomy = replace(STORAGE_FULL_NET, map_size_max_bytes=2 * MAP_MAX_BYTES)

    async def scenario() -> None:
        # Fill the replicas under a map limit twice as large, then restart them under the
        # real one: each holds about 6 MiB against a 4 MiB limit.
        cluster = await LocalCluster.start(config, tmp_path, roomy)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                acked, refused = await fill_until_refused(client)
                assert refused.code == "storage_full", refused
        finally:
            await cluster.stop()
        cluster = await LocalCluster.start(config, tmp_path, STORAGE_FULL_NET)
        try:
            runners = list(cluster.runners.values())
            # Told right after Boot, before any client call.
            assert all(r.storage_short for r in runners)
            assert all(store_node_of(r).storage_low is not None for r in runners)
            await cluster.wait_for_masters(timeout_s=10.0)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                with pytest.raises(EnqueueFailed, match="storage_full"):
                    await client.enqueue(TOPIC, b"refused", key="x")
                check_acked_items_read_back(acked, await read_back(client))
                await consume_all(client, acked)
                receipt = await enqueue_again(client)
                assert receipt.topic == TOPIC
            crashed = {n: r.crash_reason for n, r in cluster.runners.items() if not r.running}
            assert not crashed, crashed
        finally:
            await cluster.stop()

    with caplog.at_level(logging.WARNING, logger="pxq.storage"):
        run_async(scenario(), timeout_s=120.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "pxq.storage"]
    assert any("over its limit at start" in m for m in messages), messages
