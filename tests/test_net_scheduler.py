"""The scheduler in the real runtime (``net/cluster/scheduler.py``): against a LocalCluster with a
lock service on 127.0.0.1, two schedulers run, one is elected; with two members of group
"default" registered (one reporting all the load on queues it does not balance), the active
scheduler publishes an assignment naming only live members that covers every queue; when the
active one stops, the other takes over. ``pxq scheduler run`` refuses a cluster without a
lock service with exit code 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

from net.client.connection import ClusterIdentity, NodeClient
from net.cluster.inprocess import LocalCluster
from net.cluster.scheduler import run_scheduler
from pxq.config import loads_config
from pxq.lock.messages import Acquire, LockOk, ReadLock
from pxq.lockkeys import assignment_key, decode_assignment, encode_member, member_key
from tests.test_cli_cluster import pxq
from tests.test_net_cluster import cluster_toml, free_ports
from tests.test_net_support import FAST, run_async

OWNERSHIP = "[ownership]\nlease_ms = 2000\nmargin_ms = 400\nrenew_ms = 500\npoll_ms = 200\n"


async def lock_call(cluster: LocalCluster, request: object) -> object:
    for _ in range(100):
        master = await cluster.lock_master_of(0)
        if master is not None:
            host, port = cluster.address_of(master)
            client = await NodeClient.connect(
                host, port, cluster=ClusterIdentity.of(cluster.config), config=FAST
            )
            try:
                answer = await client.call(request, timeout_s=5.0)
            finally:
                await client.close()
            if isinstance(answer, LockOk):
                return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer to {request!r}")


def test_two_schedulers_one_publishes_and_the_other_takes_over(tmp_path: Path) -> None:
    ports = free_ports(4)
    text = cluster_toml(ports[:1], groups=1, lock_ports=ports[1:])
    config = loads_config(text.replace("[[topics]]", OWNERSHIP + "\n[[topics]]", 1), file="<t>")

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            loads = {("events", 0): 600, ("events", 1): 600, ("events", 2): 10, ("events", 3): 10}
            for name, report in (("x", loads), ("y", {})):
                await lock_call(
                    cluster,
                    Acquire(
                        key=member_key("default", name),
                        holder=f"{name}#1",
                        lease_ms=60_000,
                        value=encode_member(1, report),
                    ),
                )
            a = asyncio.create_task(run_scheduler(config, "a", stop=stop_a, net_config=FAST))
            await asyncio.sleep(0.3)
            b = asyncio.create_task(run_scheduler(config, "b", stop=stop_b, net_config=FAST))
            published = None
            async with asyncio.timeout(10.0):
                while published is None:
                    read = await lock_call(cluster, ReadLock(key=assignment_key("default")))
                    assert isinstance(read, LockOk)
                    if read.holder.startswith("a#") and read.value:
                        published = decode_assignment(read.value)
                    await asyncio.sleep(0.1)
            assert set(published) == {("events", q) for q in range(4)}
            assert set(published.values()) <= {"x", "y"}
            # The two heavy queues end up on different members.
            assert published[("events", 0)] != published[("events", 1)]
            stop_a.set()
            await a
            async with asyncio.timeout(15.0):
                while True:
                    read = await lock_call(cluster, ReadLock(key=assignment_key("default")))
                    assert isinstance(read, LockOk)
                    if read.holder.startswith("b#"):
                        break
                    await asyncio.sleep(0.1)
            stop_b.set()
            await b
        finally:
            stop_a.set()
            stop_b.set()
            await cluster.stop()

    run_async(scenario(), timeout_s=40.0)


def test_scheduler_run_needs_a_lock_service(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(cluster_toml(free_ports(1), groups=1))
    out = pxq("scheduler", "run", "--config", str(path), cwd=tmp_path, timeout_s=30)
    assert out.returncode == 2
    assert "no lock service" in out.stderr
