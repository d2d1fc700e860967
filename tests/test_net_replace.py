"""A replica whose data directory was emptied, or lost its LMDB file, refuses to run as a
new member of a cluster with history (it would vote with amnesia), naming ``--replace``;
started as a replacement (``pxq node run --replace``: ``build_runner(..., replace=True)``)
it re-learns from its peers, votes again and serves. A corrupt record stops the runner,
which notes it beside the data; the next start repairs it from the peers. Loopback only."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from net.cluster.inprocess import LocalCluster
from net.errors import BootFailed, DataDirError
from net.node.server import build_runner
from net.node.storage import DAMAGED_NAME, DATA_NAME, MARKER_NAME
from pxq.effects import NodeId
from pxq.paxos.records import KIND_PROMISE, META, meta_key
from tests.test_net_cluster import STORE, enqueue, read_keys, store_node, three_replicas
from tests.test_net_storage import _flip, _tamper
from tests.test_net_support import FAST, run_async, wait_until


def test_a_wiped_replica_refuses_to_run_until_started_as_a_replacement(tmp_path: Path) -> None:
    config = three_replicas()
    group = 0
    queue = config.queues_of("events", STORE, group)[0]

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            masters = await cluster.wait_for_masters(timeout_s=10.0)
            master = masters[(STORE, group)]
            await enqueue(cluster, master, queue, seq=1, n=5)
            victim: NodeId = next(n for n in ("s0", "s1", "s2") if n != master)
            await cluster.stop_node(victim)
            data_dir = tmp_path / victim
            shutil.rmtree(data_dir)

            # An emptied data dir: the node asks its peers, finds history, stops.
            runner = build_runner(config, victim, data_dir, FAST)
            await runner.start()
            reason = await asyncio.wait_for(runner.wait_stopped(), timeout=10.0)
            assert reason is not None and "--replace" in reason, reason
            assert "blank storage" in reason

            # A marker without the LMDB file: refused before anything runs.
            (data_dir / DATA_NAME).unlink()
            assert (data_dir / MARKER_NAME).exists()
            with pytest.raises(DataDirError, match="--replace"):
                await build_runner(config, victim, data_dir, FAST).start()

            # Meanwhile the others carry on.
            await enqueue(cluster, master, queue, seq=2, n=3)
            target = store_node(cluster, master).applied(group)

            # As a replacement: it re-learns everything, then votes again.
            runner = build_runner(config, victim, data_dir, FAST, replace=True)
            await runner.start()
            cluster.runners[victim] = runner
            await wait_until(
                lambda: store_node(cluster, victim).applied(group) >= target,
                timeout_s=10.0,
                what=f"{victim} to re-learn up to instance {target}",
            )
            await wait_until(
                lambda: all(
                    g.repair.voting() and not g.repair.flags
                    for g in store_node(cluster, victim).replica.groups
                ),
                timeout_s=10.0,
                what=f"{victim} to finish its repair",
            )
            sm = store_node(cluster, victim).state_machine(group)
            assert sm.offsets("events", queue)[1] == 8
            # It takes part in quorums again: with the old master stopped, the replacement
            # and the third replica elect a master that serves every acknowledged item.
            await cluster.stop_node(master)
            async with asyncio.timeout(10.0):
                while (new := await cluster.master_of(STORE, group)) in (None, master):
                    await asyncio.sleep(0.02)
            assert new is not None
            keys = await read_keys(cluster, new, queue)
            assert keys == [f"1.{i}".encode() for i in range(5)] + [
                f"2.{i}".encode() for i in range(3)
            ]
            await enqueue(cluster, new, queue, seq=3, n=1)
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=60.0)


def test_a_corrupt_record_is_noted_and_repaired_at_the_next_start(tmp_path: Path) -> None:
    """The runner stops at a corrupt record, notes it beside the data; the next start boots
    with it in ``Boot.damaged`` and the replica repairs it from its peers (no crash loop)."""
    config = three_replicas()
    group = 0
    queue = config.queues_of("events", STORE, group)[0]

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            masters = await cluster.wait_for_masters(timeout_s=10.0)
            master = masters[(STORE, group)]
            await enqueue(cluster, master, queue, seq=1, n=5)
            victim: NodeId = next(n for n in ("s0", "s1", "s2") if n != master)
            await cluster.stop_node(victim)
            data_dir = tmp_path / victim
            _tamper(data_dir, META, meta_key(group, KIND_PROMISE), _flip(0))
            with pytest.raises(BootFailed, match=DAMAGED_NAME):
                await build_runner(config, victim, data_dir, FAST).start()
            assert (data_dir / DAMAGED_NAME).exists()
            await enqueue(cluster, master, queue, seq=2, n=3)
            target = store_node(cluster, master).applied(group)
            runner = build_runner(config, victim, data_dir, FAST)
            await runner.start()
            cluster.runners[victim] = runner
            await wait_until(
                lambda: (
                    store_node(cluster, victim).applied(group) >= target
                    and all(not g.repair.flags for g in store_node(cluster, victim).replica.groups)
                ),
                timeout_s=10.0,
                what=f"{victim} to repair its promise and catch up to {target}",
            )
            await wait_until(
                lambda: not (data_dir / DAMAGED_NAME).exists(),
                timeout_s=5.0,
                what="the note to be dropped once the repair is durable",
            )
            await enqueue(cluster, master, queue, seq=3, n=1)
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=60.0)


def test_a_replica_first_started_after_its_peers_joins_and_restarts_as_a_member(
    tmp_path: Path,
) -> None:
    """Real nodes probe an empty data directory (``pxq node run``). A replica started for the
    first time after its peers formed the cluster is not taken for one that lost its data: no
    peer recorded it as a member. Once it has joined, a restart finds its member record, even
    if it never promised or accepted anything; an emptied data dir is refused again."""
    config = three_replicas()
    group = 0
    queue = config.queues_of("events", STORE, group)[0]

    async def start(cluster: LocalCluster, node: NodeId) -> None:
        runner = build_runner(config, node, tmp_path / node, FAST)
        await runner.start()
        cluster.runners[node] = runner

    def joined(cluster: LocalCluster, node: NodeId) -> bool:
        return all(g.repair.voting() for g in store_node(cluster, node).replica.groups)

    async def scenario() -> None:
        cluster = LocalCluster(config, tmp_path, FAST)
        try:
            for node in ("s0", "s1"):
                await start(cluster, node)
            master = (await cluster.wait_for_masters(timeout_s=10.0))[(STORE, group)]
            await enqueue(cluster, master, queue, seq=1, n=5)
            await start(cluster, "s2")
            await wait_until(lambda: joined(cluster, "s2"), timeout_s=10.0, what="s2 to join")
            await cluster.stop_node("s2")
            await start(cluster, "s2")
            assert joined(cluster, "s2")  # a member at once: its storage holds its record
            await cluster.stop_node(master)
            async with asyncio.timeout(10.0):
                while (new := await cluster.master_of(STORE, group)) in (None, master):
                    await asyncio.sleep(0.02)
            assert new is not None
            assert await read_keys(cluster, new, queue) == [f"1.{i}".encode() for i in range(5)]
            await cluster.stop_node("s2")
            shutil.rmtree(tmp_path / "s2")
            runner = build_runner(config, "s2", tmp_path / "s2", FAST)
            await runner.start()
            reason = await asyncio.wait_for(runner.wait_stopped(), timeout=10.0)
            assert reason is not None and "recorded it as a member" in reason, reason
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=60.0)
