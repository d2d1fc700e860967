"""Long random schedules (a small seed swarm) over three replicas, deeper than Hypothesis
explores: thousands of operations per seed with message reordering, loss, duplication,
crashes, partitions and drifting clocks. Same invariants and liveness check as the
stateful test. A failure names its seed; rerun it alone with ``-k "seed_N"``."""

from __future__ import annotations

import random

import pytest

from tests.paxos_harness import Cluster

NAMES = ("r0", "r1", "r2")
DRIFT = 1000


def schedule(seed: int, ops: int) -> Cluster:
    rng = random.Random(seed)
    c = Cluster.make(
        3,
        groups=2,
        seed=seed,
        latency_ms=rng.choice([1, 2, 5]),
        drift_ppm_max=DRIFT,
        checkpoint_every=rng.choice([3, 5, 50]),
        log_hold=rng.choice([0, 2, 10]),
        learn_chunk_max=rng.choice([1, 2, 4]),
        batch_items_max=rng.choice([1, 3]),
        pipeline_max=rng.choice([1, 2, 4]),
        snapshot_chunk_bytes=rng.choice([16, 1000]),
    )
    c.ppm = {n: rng.randint(-DRIFT, DRIFT) for n in NAMES}
    c.offset = {n: rng.randint(0, 5000) for n in NAMES}
    for n in NAMES:
        c.restart(n)
    counter = 0
    for step in range(ops):
        x = rng.random()
        if x < 0.35 and c.pool:
            c.deliver(rng.randrange(len(c.pool)))
        elif x < 0.42 and c.pool:
            c.drop(rng.randrange(len(c.pool)))
        elif x < 0.45 and c.pool:
            c.duplicate(rng.randrange(len(c.pool)))
        elif x < 0.60:
            c.run(rng.randint(1, 300))
        elif x < 0.68:
            c.time += rng.randint(1, 400)
            for n in NAMES:
                c.fire(n)
        elif x < 0.70:
            up = [n for n in NAMES if c.up(n)]
            if len(up) >= 2:
                c.crash(rng.choice(up))
        elif x < 0.73:
            down = [n for n in NAMES if not c.up(n)]
            if down:
                c.restart(rng.choice(down))
        elif x < 0.75:
            a = rng.choice(NAMES)
            c.partition([a], [n for n in NAMES if n != a])
        elif x < 0.78:
            c.heal()
        else:
            group = rng.randrange(2)
            name = rng.choice(NAMES)
            node = c.nodes[name]
            if node is not None and rng.random() < 0.8:
                name = node.master_of(group) or name
            for _ in range(rng.randint(1, 4)):
                counter += 1
                c.propose(name, group, b"v%d-%d" % (seed, counter))
        if step % 50 == 0:
            c.check_agreement()
            c.check_acknowledged()
    c.heal()
    for n in NAMES:
        if not c.up(n):
            c.restart(n)
    for group in (0, 1):
        c.propose_until_ok(group, b"liveness-%d" % group, within_ms=15_000)
    # Every replica catches up (possibly through several snapshot transfers).
    converged = c.run_until(c.converged, 30_000, 100)
    assert converged, f"replicas did not converge: {c.applied_indexes()}"
    c.check_agreement()
    c.check_acknowledged()
    return c


@pytest.mark.parametrize("seed", range(12), ids=lambda s: f"seed_{s}")
def test_random_schedule_keeps_safety_and_recovers(seed: int) -> None:
    c = schedule(seed, 1500)
    oks = sum(1 for call in c.calls.values() if type(call.response).__name__ == "ProposeOk")
    assert oks >= 2  # at least the liveness proposals
