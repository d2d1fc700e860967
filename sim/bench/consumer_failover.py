"""Benchmark (not a test): consumer failover time in the simulator.

``python -m sim.bench.consumer_failover [--seeds N] [--lease-ms L]`` runs a queue workload
whose consumers own queues through the lock service (3 consumers of one group, 8 queues) and
kills one consumer (no restart) in the middle of a steady load, then measures, for every queue
it owned, the time from the kill to the queue's next grant to a live consumer (the failover
checker's figures). The default ownership timing is the configuration's (lease 3000 ms, margin
600, renew 1000, poll 500). Prints the distribution over seeds as JSON; figures are recorded in
``docs/simulation.md``. The goal: within one lease plus one second.
"""

from __future__ import annotations

import argparse
import json
import statistics

from sim import runner
from sim.scenario import loads

SCENARIO = """
version = 1
name = "bench-consumer-failover"
duration_ms = 12000
checks = ["total_queue", "queue_order", "ownership", "failover"]
[cluster]
replicas = 3
groups = 2
[workload]
kind = "queue"
producers = 2
rate_per_s = 300
queues = 8
consumer_groups = 1
consumers_per_group = 3
handle_ms = 2
ownership = "locks"
lease_ms = {lease}
margin_ms = {margin}
renew_ms = {renew}
poll_ms = {poll}
[[faults]]
at_ms = 5000
action = "crash"
target = "consumer[{victim}]"
[final]
restart_all = false
"""


def failovers(seed: int, lease_ms: int) -> tuple[list[int], bool]:
    text = SCENARIO.format(
        lease=lease_ms,
        margin=lease_ms // 5,
        renew=lease_ms // 3,
        poll=min(500, lease_ms // 4),
        victim=seed % 3,
    )
    scn = loads(text, file="bench-consumer-failover")
    result = runner.run(scn, seed)
    check = result.checks["failover"]
    times = check.details.get("times_ms")
    assert isinstance(times, list)
    return [int(t) for t in times], result.ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--lease-ms", type=int, default=3000)
    args = ap.parse_args()
    times: list[int] = []
    failed = 0
    for seed in range(1, args.seeds + 1):
        got, ok = failovers(seed, args.lease_ms)
        times += got
        failed += not ok
    times.sort()
    print(
        json.dumps(
            {
                "seeds": args.seeds,
                "lease_ms": args.lease_ms,
                "bound_ms": args.lease_ms + 1000,
                "queues_failed_over": len(times),
                "runs_failed": failed,
                "min_ms": times[0] if times else None,
                "median_ms": statistics.median(times) if times else None,
                "p90_ms": times[int(len(times) * 0.9)] if times else None,
                "max_ms": times[-1] if times else None,
            }
        )
    )


if __name__ == "__main__":
    main()
