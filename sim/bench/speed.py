"""Benchmark of the simulator itself (not a test): ``python -m sim.bench.speed``.

1. Raw event rate: three endpoints keep a fixed number of messages in flight through the
   simulated network (delay draw, FIFO bookkeeping, SimPy heap), counting deliveries per
   wall second.
2. A 3-replica Paxos cluster under a steady append load (the replicated-log workload,
   no faults): simulated time per wall second, i.e. how much faster than real time it runs,
   and trace events per wall second.

Prints one JSON object. Figures and the machine are recorded in ``docs/simulation.md``.
"""

from __future__ import annotations

import heapq
import json
import platform
import random
import time
from typing import Any

import simpy

from sim import runner
from sim.network import DelaySpec, Network, NetworkSpec
from sim.scenario import loads

STEADY = """
version = 1
name = "bench-steady"
duration_ms = {duration_ms}
checks = ["agreement", "no_loss", "realtime_order"]
[cluster]
replicas = 3
[workload]
clients = {clients}
rate_per_s = {rate}
[final]
liveness_ms = 1000
quiesce_ms = 2000
"""


def raw_events(messages: int = 300_000, in_flight: int = 30) -> dict[str, Any]:
    env = simpy.Environment()
    nodes = ["a", "b", "c"]
    rng = random.Random(1)
    delivered = 0

    def deliver(src: str, dst: str, payload: object) -> None:
        nonlocal delivered
        delivered += 1
        if delivered + in_flight <= messages:
            net.send(dst, nodes[(nodes.index(dst) + 1) % 3], payload)

    net = Network(
        env, rng, NetworkSpec(delay=DelaySpec(dist="uniform", min_us=100, max_us=2000)), deliver
    )
    for i in range(in_flight):
        net.send(nodes[i % 3], nodes[(i + 1) % 3], i)
    t0 = time.perf_counter()
    env.run()
    wall = time.perf_counter() - t0
    return {
        "messages": delivered,
        "wall_s": round(wall, 3),
        "events_per_s": round(delivered / wall),
    }


def heapq_baseline(messages: int = 300_000, in_flight: int = 30) -> dict[str, Any]:
    """The same message pattern on a bare ``heapq`` loop: the floor SimPy is compared with."""
    rng = random.Random(1)
    heap: list[tuple[int, int, int, int]] = []
    seq = 0
    for i in range(in_flight):
        seq += 1
        heapq.heappush(heap, (100 + int(rng.random() * 1901), seq, (i + 1) % 3, i))
    delivered = 0
    t0 = time.perf_counter()
    while heap:
        now, _, dst, payload = heapq.heappop(heap)
        delivered += 1
        if delivered + in_flight <= messages:
            seq += 1
            heapq.heappush(
                heap, (now + 100 + int(rng.random() * 1901), seq, (dst + 1) % 3, payload)
            )
    wall = time.perf_counter() - t0
    return {
        "messages": delivered,
        "wall_s": round(wall, 3),
        "events_per_s": round(delivered / wall),
    }


def steady_cluster(
    duration_ms: int = 20_000, clients: int = 20, rate: int = 2000
) -> dict[str, Any]:
    scn = loads(STEADY.format(duration_ms=duration_ms, clients=clients, rate=rate), file="bench")
    t0 = time.perf_counter()
    result = runner.run(scn, 1)
    wall = time.perf_counter() - t0
    acked = result.stats["clients"]["ok"]
    return {
        "sim_time_ms": result.sim_time_ms,
        "wall_s": round(wall, 3),
        "speedup_vs_real_time": round(result.sim_time_ms / 1000 / wall, 2),
        "acked_appends": acked,
        "acked_appends_per_wall_s": round(acked / wall),
        "messages_delivered": result.stats["network"]["delivered"],
        "messages_per_wall_s": round(result.stats["network"]["delivered"] / wall),
        "trace_events_per_wall_s": round(result.stats["trace_events"] / wall),
        "ok": result.ok,
    }


def main() -> None:
    raw = raw_events()
    base = heapq_baseline()
    out = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "raw_network": raw,
        "heapq_baseline": base,
        "raw_network_vs_heapq": round(raw["events_per_s"] / base["events_per_s"], 3),
        "steady_3_replicas": steady_cluster(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
