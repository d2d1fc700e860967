"""Hypothesis explores schedules of three replicas: which message is delivered, dropped or
duplicated, when timers fire, crashes, restarts, partitions and proposals.

Invariants after every rule: replicas agree on every applied value and log checksum, no
acknowledged value is missing from an applied log, and (checked by the harness after every
single step) at most one replica believes it is master at any instant, with clocks drifting
within ``drift_ppm_max``. Teardown heals everything and requires a proposal to succeed.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.paxos_harness import Cluster

NAMES = ("r0", "r1", "r2")
DRIFT = 1000


class PaxosSchedules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = Cluster.make(
            3,
            groups=2,
            latency_ms=2,
            drift_ppm_max=DRIFT,
            checkpoint_every=4,
            log_hold=2,
            learn_chunk_max=3,
            batch_items_max=3,
            pipeline_max=3,
            snapshot_chunk_bytes=64,
        )
        self.counter = 0

    @initialize(
        ppm=st.lists(st.integers(-DRIFT, DRIFT), min_size=3, max_size=3),
        offsets=st.lists(st.integers(0, 10_000), min_size=3, max_size=3),
        warmup=st.integers(0, 2500),
    )
    def clocks(self, ppm: list[int], offsets: list[int], warmup: int) -> None:
        # Clocks are set before anything happens: rebuild the cluster with them.
        c = Cluster.make(
            3,
            groups=2,
            latency_ms=2,
            drift_ppm_max=DRIFT,
            checkpoint_every=4,
            log_hold=2,
            learn_chunk_max=3,
            batch_items_max=3,
            pipeline_max=3,
            snapshot_chunk_bytes=64,
        )
        c.ppm = dict(zip(NAMES, ppm, strict=True))
        c.offset = dict(zip(NAMES, offsets, strict=True))
        for name in NAMES:
            c.restart(name)
        self.c = c
        c.run(warmup)

    # -- the network ---------------------------------------------------------------------------

    @precondition(lambda self: bool(self.c.pool))
    @rule(i=st.integers(0, 10**6))
    def deliver(self, i: int) -> None:
        self.c.deliver(i % len(self.c.pool))

    @precondition(lambda self: bool(self.c.pool))
    @rule(i=st.integers(0, 10**6))
    def drop(self, i: int) -> None:
        self.c.drop(i % len(self.c.pool))

    @precondition(lambda self: bool(self.c.pool))
    @rule(i=st.integers(0, 10**6))
    def duplicate(self, i: int) -> None:
        self.c.duplicate(i % len(self.c.pool))

    @rule(a=st.sampled_from(NAMES))
    def isolate(self, a: str) -> None:
        self.c.partition([a], [n for n in NAMES if n != a])

    @rule()
    def heal(self) -> None:
        self.c.heal()

    # -- time ------------------------------------------------------------------------------------

    @rule(ms=st.integers(1, 400))
    def advance_and_fire_timers(self, ms: int) -> None:
        c = self.c
        c.time += ms
        for name in NAMES:
            c.fire(name)

    @rule(ms=st.integers(1, 600))
    def run_normally(self, ms: int) -> None:
        self.c.run(ms)

    # -- processes -------------------------------------------------------------------------------

    @precondition(lambda self: sum(self.c.up(n) for n in NAMES) >= 2)
    @rule(name=st.sampled_from(NAMES))
    def crash(self, name: str) -> None:
        if self.c.up(name):
            self.c.crash(name)

    @rule(name=st.sampled_from(NAMES))
    def restart(self, name: str) -> None:
        if not self.c.up(name):
            self.c.restart(name)

    # -- clients -----------------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(NAMES),
        group=st.integers(0, 1),
        count=st.integers(1, 5),
        follow=st.booleans(),
    )
    def propose(self, name: str, group: int, count: int, follow: bool) -> None:
        c = self.c
        node = c.nodes[name]
        if follow and node is not None:
            # Like a client that follows redirects: ask whoever this replica names.
            name = node.master_of(group) or name
        for _ in range(count):
            self.counter += 1
            c.propose(name, group, b"value-%d" % self.counter)

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def replicas_agree(self) -> None:
        self.c.check_agreement()

    @invariant()
    def acknowledged_values_are_applied(self) -> None:
        self.c.check_acknowledged()

    @invariant()
    def at_most_one_master(self) -> None:
        self.c.check_single_master()

    def teardown(self) -> None:
        c = self.c
        c.heal()
        for name in NAMES:
            if not c.up(name):
                c.restart(name)
        for group in (0, 1):
            c.propose_until_ok(group, b"liveness-%d" % group, within_ms=15_000)
        # Every replica catches up (possibly through several snapshot transfers).
        converged = c.run_until(c.converged, 30_000, 100)
        assert converged, f"replicas did not converge: {c.applied_indexes()}"
        c.check_agreement()
        c.check_acknowledged()


PaxosSchedules.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_paxos_schedules = PaxosSchedules.TestCase
