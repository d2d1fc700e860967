"""Benchmark of the Paxos core alone: three replicas stepped in one process.

No simulator, no network, no disk: each replica has a ``MemoryStore``, messages go straight
from one step's sends to the destination's next step (FIFO), and the clock only moves to
elect a master. Clients submit 100-byte values to the master in batches of 100 (one batch
per instance) with the pipeline kept full. Reports acknowledged values per second and the
CPU microseconds per value (``time.process_time``), as JSON:

    python -m sim.bench.paxos [--values N] [--value-bytes B] [--batch N] [--pipeline N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import deque

from pxq.effects import Boot, ClientCall, Now, Received, Wake
from pxq.paxos.config import PaxosConfig
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.messages import Propose, ProposeOk
from pxq.paxos.replica import Replica
from sim.memstore import MemoryStore


def run(
    values: int, value_bytes: int, batch: int, pipeline: int, seed: int = 1
) -> dict[str, object]:
    names = ("b0", "b1", "b2")
    config = PaxosConfig(
        replicas=names,
        batch_items_max=batch,
        pipeline_max=pipeline,
        pending_max=max(10_000, 2 * batch * pipeline),
        checkpoint_every=10_000,
        log_hold=1000,
    )
    stores = {n: MemoryStore() for n in names}
    nodes = {
        n: Replica(
            n,
            config,
            stores[n],
            random.Random(f"{seed}/{n}"),
            lambda g, s=stores[n]: RecordingLog(s, g),  # type: ignore[misc]
        )
        for n in names
    }
    clock = {"t": 0}
    inbox: deque[tuple[str, str, object]] = deque()
    acked = 0

    def step(name: str, inp: Boot | Received | Wake | ClientCall) -> None:
        nonlocal acked
        t = clock["t"]
        fx = nodes[name].step(Now(mono_ms=t, wall_ms=t), inp)
        stores[name].apply(fx.writes)  # durable before the sends are released
        for s in fx.sends:
            inbox.append((name, s.dst, s.msg))
        for r in fx.replies:
            if isinstance(r.response, ProposeOk):
                acked += 1

    def drain() -> None:
        while inbox:
            src, dst, msg = inbox.popleft()
            step(dst, Received(src=src, msg=msg))

    for n in names:
        step(n, Boot())
    master = None
    while master is None:  # elect: move time in small steps, firing due timers
        clock["t"] += 5
        for n in names:
            d = nodes[n].next_deadline()
            if d is not None and d <= clock["t"]:
                step(n, Wake())
        drain()
        master = next(
            (n for n in names if nodes[n].is_master(0, Now(mono_ms=clock["t"], wall_ms=0))), None
        )

    payloads = [bytes([i % 251]) * value_bytes for i in range(batch)]
    call_id = 0
    window = batch * pipeline
    cpu0, wall0 = time.process_time(), time.perf_counter()
    submitted = 0
    while acked < values:
        # keep the pipeline full: submit up to a window of values ahead of the acks
        while submitted < values and submitted - acked < window:
            for p in payloads[: min(batch, values - submitted)]:
                call_id += 1
                submitted += 1
                step(master, ClientCall(call_id=call_id, request=Propose(group=0, value=p)))
        drain()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    applied = {n: nodes[n].applied(0) for n in names}
    return {
        "benchmark": "paxos_core_3_replicas_in_process",
        "values": values,
        "value_bytes": value_bytes,
        "batch_items_max": batch,
        "pipeline_max": pipeline,
        "instances": applied[master],
        "proposals_per_s": round(values / wall),
        "proposals_per_cpu_s": round(values / cpu),
        "cpu_us_per_value": round(cpu * 1e6 / values, 2),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "followers_applied": applied,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=200_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--pipeline", type=int, default=8)
    a = ap.parse_args()
    print(json.dumps(run(a.values, a.value_bytes, a.batch, a.pipeline), indent=2))


if __name__ == "__main__":
    main()
