"""Benchmark (not a test): store master failover time in the simulator.

``python -m sim.bench.failover [--seeds N]`` crashes the master of group 0 (power loss, no
restart) in the middle of a steady append load, with the default ``PaxosConfig``, and
measures from the crash to the first value chosen by the new master. Prints the
distribution over seeds as JSON; figures are recorded in ``docs/simulation.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from typing import Any

from sim import runner
from sim.scenario import loads

SCENARIO = """
version = 1
name = "bench-failover"
duration_ms = 8000
checks = ["agreement", "no_loss", "realtime_order", "liveness"]
[cluster]
replicas = 3
groups = 1
[workload]
clients = 10
rate_per_s = 500
[[faults]]
at_ms = 4000
action = "crash"
target = "master"
power_loss = true
"""


def failover_ms(seed: int) -> tuple[float, bool]:
    scn = loads(SCENARIO, file="bench-failover")
    trace = io.StringIO()
    result = runner.run(scn, seed, trace_out=trace)
    records = [json.loads(line) for line in trace.getvalue().splitlines()]
    crash = next(r for r in records if r["kind"] == "crash" and r["node"] != "nemesis")
    crashed, t_crash = crash["node"], crash["t_us"]
    became = next(
        r
        for r in records
        if r["t_us"] > t_crash
        and r["kind"] == "master"
        and r.get("state") in ("became", "elected")
        and r["node"] != crashed
        and r.get("group") == 0
    )
    chosen = next(
        r
        for r in records
        if r["t_us"] >= became["t_us"]
        and r["kind"] == "chosen"
        and r["node"] == became["node"]
        and r.get("group") == 0
    )
    return (chosen["t_us"] - t_crash) / 1000, result.ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    times: list[float] = []
    all_ok = True
    for seed in range(1, args.seeds + 1):
        ms, ok = failover_ms(seed)
        times.append(ms)
        all_ok = all_ok and ok
    times.sort()
    out: dict[str, Any] = {
        "seeds": args.seeds,
        "runs_ok": all_ok,
        "failover_ms": {
            "min": times[0],
            "median": statistics.median(times),
            "p90": times[int(len(times) * 0.9) - 1],
            "max": times[-1],
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
