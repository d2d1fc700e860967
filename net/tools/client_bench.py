"""Client latency benchmark: ``python -m net.tools.client_bench [--items N] [--linger-ms MS]``.

It owns the figures quoted for the client library: the latency of one ``enqueue`` awaited at a
time (p50/p99), the throughput of ``enqueue_many``, and the echo round trip (enqueue, then
seen by a polling consumer). It starts a ``LocalCluster`` (3 replicas, 2 Paxos groups, LMDB
with fsync) on free loopback ports in a temporary directory, in this process. Throughput
under concurrent load, CPU per item and the baselines are ``pxq bench`` (``net.tools.bench``),
whose helpers (free ports, percentiles) this module shares.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from net.client.api import AsyncClient
from net.cluster.inprocess import LocalCluster
from net.tools.measure import free_ports, percentile
from pxq.config import loads_config

ECHO_ROUNDS = 20


def _toml(linger_ms: int) -> str:
    lines = ["[cluster]", 'name = "bench"', "[batching]", f"linger_ms = {linger_ms}"]
    lines += ["[[stores]]", 'name = "s0"', "groups = 2"]
    for i, port in enumerate(free_ports(3)):
        lines += ["[[stores.replicas]]", f'node = "n{i}"', f"port = {port}"]
    lines += ["[[topics]]", 'name = "bench"', "queues = 8"]
    lines += ["[[topics.consumer_groups]]", 'name = "g"']
    return "\n".join(lines) + "\n"


def _pct(values: list[float], p: float) -> float:
    return percentile(sorted(values), p * 100) * 1000


async def bench(items: int, linger_ms: int) -> None:
    config = loads_config(_toml(linger_ms), file="<bench>")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = await LocalCluster.start(config, Path(tmp))
        try:
            await cluster.wait_for_masters()
            async with await AsyncClient.connect(config) as client:
                await client.enqueue("bench", b"warm-up", key="k")
                one: list[float] = []
                for _ in range(items):
                    t0 = time.perf_counter()
                    await client.enqueue("bench", b"x" * 100, key="k")
                    one.append(time.perf_counter() - t0)
                print(
                    f"enqueue (one at a time, linger_ms={linger_ms}): "
                    f"p50 {_pct(one, 0.5):.2f} ms, p99 {_pct(one, 0.99):.2f} ms ({items} items)"
                )
                many = 20 * items
                t0 = time.perf_counter()
                await client.enqueue_many("bench", [(None, b"y" * 100) for _ in range(many)])
                rate = many / (time.perf_counter() - t0)
                print(f"enqueue_many ({many} items of 100 B, random keys): {rate:.0f} items/s")
                await _echo(client)
        finally:
            await cluster.stop()


async def _echo(client: AsyncClient) -> None:
    rounds: list[float] = []
    seen = asyncio.Event()
    wanted = b""

    def handle(payload: bytes) -> None:
        if payload == wanted:
            seen.set()

    consumer = client.consumer("g", options={"poll_empty_ms": 1, "poll_empty_max_ms": 5})
    async with consumer:
        task = asyncio.create_task(consumer.run(lambda item: handle(item.payload)))
        await asyncio.sleep(0.2)  # streams read their cursors and drain the earlier items
        for i in range(ECHO_ROUNDS):
            wanted = f"echo {i}".encode()
            seen.clear()
            t0 = time.perf_counter()
            await client.enqueue("bench", wanted, key=f"echo-{i}")
            async with asyncio.timeout(10):
                await seen.wait()
            rounds.append(time.perf_counter() - t0)
        consumer.stop()
        await task
    print(
        f"echo round trip (enqueue -> consumer handler, {ECHO_ROUNDS} rounds): "
        f"p50 {_pct(rounds, 0.5):.2f} ms, p99 {_pct(rounds, 0.99):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=200, help="sequential enqueues to time")
    parser.add_argument("--linger-ms", type=int, default=0, help="producer linger (config)")
    args = parser.parse_args()
    asyncio.run(bench(args.items, args.linger_ms))


if __name__ == "__main__":
    main()
