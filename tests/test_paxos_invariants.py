"""``Group.check_invariants`` holds in healthy runs and catches states no step may leave behind;
the simulator runs it after every step of a Paxos node and reports a broken invariant."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pxq.effects import InvariantViolation, Rng, StorageView
from pxq.paxos.catchup import SnapshotIn
from pxq.paxos.config import PaxosConfig
from pxq.paxos.group import Group
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.replica import Replica
from pxq.paxos.roles import Inflight, Leadership, Phase1, Role
from sim.disk import DiskSpec
from sim.network import DelaySpec, NetworkSpec
from sim.world import World
from tests.paxos_harness import Cluster


def _busy_cluster() -> tuple[Group, Group]:
    """(the master's group 0, a follower's group 0) with values in flight on the master."""
    c = Cluster.make(3)
    m = c.wait_master(0)
    for i in range(3):
        c.propose(m, 0, b"v%d" % i)
    node = c.nodes[m]
    follower = c.nodes["r1" if m != "r1" else "r2"]
    assert node is not None and follower is not None
    master, other = node.groups[0], follower.groups[0]
    lead = master.leadership
    assert lead is not None and lead.inflight, "the master should have instances in flight"
    return master, other


def _lead(g: Group) -> Leadership:
    lead = g.leadership
    assert lead is not None
    return lead


def _follower_leads(g: Group) -> None:
    g.leadership = Leadership(since=0, next_instance=1, peer_ack_at=[None] * g.n)


def _follower_runs_phase1(g: Group) -> None:
    g.phase1 = Phase1(from_instance=1, ok=0, promises={}, deadline=0)


def _candidate_without_phase1(g: Group) -> None:
    g.role = Role.CANDIDATE


def _chosen_left_unapplied(g: Group) -> None:
    g.learner.chosen[g.learner.applied + 1] = b"x"


def _max_seen_below_promise(g: Group) -> None:
    g.max_seen = g.acceptor.promised - 1


def _leader_without_leadership(g: Group) -> None:
    g.leadership = None


def _own_acceptor_promised_more(g: Group) -> None:
    g.acceptor.promised = g.max_seen = g.ballot + 16


def _inflight_beyond_pipeline(g: Group) -> None:
    lead = _lead(g)
    beyond = g.learner.applied + g.config.pipeline_max + 1
    lead.next_instance = beyond + 1
    lead.inflight[beyond] = Inflight(value=b"", acks=0, sent_at=0, first_sent_at=0)


def _inflight_at_next_instance(g: Group) -> None:
    lead = _lead(g)
    lead.inflight[lead.next_instance] = Inflight(value=b"", acks=0, sent_at=0, first_sent_at=0)


def _mastered_before_recovery_ends(g: Group) -> None:
    lead = _lead(g)
    lead.serving_from = None
    lead.mastered = True


def _pending_bytes_without_pending(g: Group) -> None:
    lead = _lead(g)
    lead.pending.clear()
    lead.pending_bytes = 5


def _leader_installing_snapshot(g: Group) -> None:
    g.catchup.snap = SnapshotIn(src="r1", deadline=0)


Corruption = tuple[Callable[[Group], None], str]
"""A corruption of a group's state and (part of) the message that must report it."""

FOLLOWER_CORRUPTIONS: dict[str, Corruption] = {
    "leadership": (_follower_leads, "follower with leadership True"),
    "phase 1": (_follower_runs_phase1, "follower with phase 1 True"),
    "candidate": (_candidate_without_phase1, "candidate with phase 1 False"),
    "unapplied": (_chosen_left_unapplied, "left unapplied"),
    "max seen": (_max_seen_below_promise, "highest ballot seen"),
}
MASTER_CORRUPTIONS: dict[str, Corruption] = {
    "no leadership": (_leader_without_leadership, "leader with leadership False"),
    "promise": (_own_acceptor_promised_more, "own acceptor promised"),
    "beyond pipeline": (_inflight_beyond_pipeline, "outside the pipeline"),
    "at next instance": (_inflight_at_next_instance, "outside the pipeline"),
    "mastered": (_mastered_before_recovery_ends, "master before the end of recovery"),
    "pending bytes": (_pending_bytes_without_pending, "pending values"),
    "snapshot": (_leader_installing_snapshot, "installing a snapshot"),
}


def test_a_busy_master_and_its_followers_satisfy_the_invariants() -> None:
    master, follower = _busy_cluster()
    assert master.role is Role.LEADER and follower.role is Role.FOLLOWER
    master.check_invariants()
    follower.check_invariants()


@pytest.mark.parametrize("case", sorted(FOLLOWER_CORRUPTIONS))
def test_a_corrupted_follower_state_is_caught(case: str) -> None:
    corrupt, message = FOLLOWER_CORRUPTIONS[case]
    _, follower = _busy_cluster()
    follower.check_invariants()
    corrupt(follower)
    with pytest.raises(InvariantViolation, match=message):
        follower.check_invariants()


@pytest.mark.parametrize("case", sorted(MASTER_CORRUPTIONS))
def test_a_corrupted_master_state_is_caught(case: str) -> None:
    corrupt, message = MASTER_CORRUPTIONS[case]
    master, _ = _busy_cluster()
    master.check_invariants()
    corrupt(master)
    with pytest.raises(InvariantViolation, match=message):
        master.check_invariants()


def _world_of_replicas() -> tuple[World, PaxosConfig]:
    config = PaxosConfig(replicas=("r0", "r1", "r2"))
    world = World(
        seed=3,
        network=NetworkSpec(delay=DelaySpec(dist="constant", mean_us=500)),
        disk=DiskSpec(fsync=DelaySpec(dist="constant", mean_us=1000), write_us_per_kib=0),
    )

    def factory(node_id: str, view: StorageView, rng: Rng) -> Replica:
        return Replica(node_id, config, view, rng, lambda g: RecordingLog(view, g))

    for name in config.replicas:
        world.add_node(name, factory)
    world.start()
    return world, config


def test_the_simulator_checks_the_invariants_after_every_step() -> None:
    world, config = _world_of_replicas()
    world.run_until(3_000_000)
    assert world.violations == []
    leaders = [
        h
        for h in world.hosts.values()
        if isinstance(h.node, Replica) and h.node.groups[0].role is Role.LEADER
    ]
    assert len(leaders) == 1
    host = leaders[0]
    assert isinstance(host.node, Replica)
    # Corrupt the leader between two steps (in a way its steps never look at, so only the
    # check can notice): its next step (a heartbeat) must be reported.
    lead = host.node.groups[0].leadership
    assert lead is not None and not lead.pending
    lead.pending_bytes = 5
    steps = host.steps
    world.run_until(3_000_000 + 2 * config.heartbeat_ms * 1000)
    assert host.steps > steps
    assert [v.node for v in world.violations] == [host.node_id]
    assert "pending values" in world.violations[0].message
    assert host.crashes == 1
