"""Forged peer frames against real replicas (LMDB, loopback TCP): the cases of the report.

A connection that says ``Hello`` with the name of a real replica (what anyone who can reach a
port could do when peers were not authenticated, and what a faulty replica still can) sends
the three frames that stopped replicas: a heartbeat claiming a log checksum the receiver does
not have, a heartbeat at ballot 2**64 - 1, and a ``Prepare`` at the largest ballot with the
owner index of a real replica (promised and persisted, it stopped every replica again after
each restart). Now each is reported as an alarm, nothing out of range is persisted, every
replica keeps running and restarts, and acknowledged items stay readable.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from net.cluster.inprocess import LocalCluster
from net.wire.envelope import Hello
from net.wire.framing import encode_frame
from pxq.paxos import messages as pm
from pxq.paxos.ballot import BALLOT_MAX
from pxq.store.node import StoreNode
from tests.test_net_cluster import STORE, enqueue, read_keys, three_replicas
from tests.test_net_support import run_async, wait_until

U64_MAX = (1 << 64) - 1


def test_forged_peer_frames_raise_alarms_and_stop_no_replica(tmp_path: Path) -> None:
    config = three_replicas()
    group = 0
    queue = config.queues_of("events", STORE, group)[0]

    async def scenario() -> None:
        async with await LocalCluster.start(config, tmp_path) as cluster:
            await cluster.wait_for_masters()
            master = await cluster.master_of(STORE, group)
            assert master is not None
            await enqueue(cluster, master, queue, seq=1, n=3)
            follower = next(n for n in cluster.runners if n != master)
            runner = cluster.runners[follower]
            node = runner.node
            assert isinstance(node, StoreNode)
            paxos = node.replica.groups[group]
            await wait_until(lambda: paxos.learner.applied >= 1)
            promised = paxos.acceptor.promised
            owner = config.store(STORE).nodes.index(master)
            frames = [
                pm.Heartbeat(
                    group=group,
                    ballot=promised,
                    seq=99,
                    commit=paxos.learner.applied,
                    applied=paxos.learner.applied,
                    checksum=12345,
                ),
                pm.Heartbeat(group=group, ballot=U64_MAX, seq=1, commit=0, applied=0, checksum=0),
                pm.Prepare(group=group, ballot=(U64_MAX >> 4 << 4) | owner, from_instance=1),
            ]
            hello = Hello(node=master, cluster=config.name)
            sock = socket.create_connection(runner.address, timeout=5.0)
            try:
                for msg in [hello, *frames]:
                    sock.sendall(encode_frame(msg, frame_bytes_max=1 << 20))
                await wait_until(lambda: runner.stats.alarms >= 3)
            finally:
                sock.close()
            assert all(r.running for r in cluster.runners.values())
            assert paxos.acceptor.promised <= BALLOT_MAX
            # Every replica restarts from its disk, and the items are still there.
            for name in list(cluster.runners):
                await cluster.stop_node(name)
                await cluster.start_node(name)
            await cluster.wait_for_masters()
            master = await cluster.master_of(STORE, group)
            assert master is not None
            await enqueue(cluster, master, queue, seq=2, n=1)
            keys = await read_keys(cluster, master, queue)
            assert keys == [b"1.0", b"1.1", b"1.2", b"2.0"]
            await asyncio.sleep(0)

    run_async(scenario())
