"""Replica behaviour through the in-process harness: election, failover, lease, client API,
batching, pipeline, catch-up, snapshots, recovery, integrity checks."""

from __future__ import annotations

import random

import pytest

from pxq.effects import (
    ALARM,
    Boot,
    ClientCall,
    InvariantViolation,
    Now,
    Put,
    Received,
    TraceEvent,
    Wake,
)
from pxq.paxos.messages import (
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    LearnReply,
    Propose,
    ProposeOk,
    ProposeRejected,
    ProposeUnknown,
    Redirect,
    SnapshotChunk,
)
from pxq.paxos.records import (
    KIND_APPLIED,
    META,
    decode_entry,
    encode_applied,
    encode_entry,
    meta_key,
)
from pxq.paxos.replica import Replica
from pxq.paxos.roles import Role
from tests.paxos_harness import Cluster


def ok(c: Cluster, call_id: int) -> ProposeOk:
    r = c.calls[call_id].response
    assert isinstance(r, ProposeOk), r
    return r


def test_preferred_replica_becomes_master_after_one_lease() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    assert m == "r0"
    # Booted acceptors refuse promises for one lease; then the preferred replica goes first.
    assert c.config.lease_ms <= c.time < c.config.lease_ms + 100


def test_masters_of_different_groups_spread_over_replicas() -> None:
    c = Cluster.make(3, groups=6)
    c.run(2000)
    assert [c.masters(g) for g in range(6)] == [["r0"], ["r1"], ["r2"], ["r0"], ["r1"], ["r2"]]


def test_single_replica_set_works() -> None:
    c = Cluster.make(1)
    c.wait_master(0)
    assert c.propose_until_ok(0, b"solo", start="r0").instance == 1


def test_value_is_chosen_applied_everywhere_and_acknowledged() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    call = c.propose(m, 0, b"hello")
    c.run(400)  # a heartbeat carries the commit index to the followers
    r = ok(c, call)
    assert (r.instance, r.slot, r.result) == (1, 0, b"")
    for name in c.config.replicas:
        assert c.records(name) == [(1, 0, b"hello")]
    c.check_agreement()
    c.check_acknowledged()


def test_follower_redirects_to_the_master_and_unknown_group_is_rejected() -> None:
    c = Cluster.make(3)
    c.wait_master(0)
    c.run(300)
    call = c.propose("r1", 0, b"x")
    assert c.calls[call].response == Redirect(group=0, master="r0")
    bad = c.propose("r1", 7, b"x")
    assert isinstance(c.calls[bad].response, ProposeRejected)


def test_replica_before_election_redirects_to_nobody() -> None:
    c = Cluster.make(3)
    call = c.propose("r1", 0, b"x")
    assert c.calls[call].response == Redirect(group=0, master=None)


def test_too_large_and_overload_are_definite_rejections() -> None:
    c = Cluster.make(3, value_bytes_max=10, pending_max=2, batch_delay_ms=50)
    m = c.wait_master(0)
    big = c.propose(m, 0, b"x" * 11)
    assert c.calls[big].response == ProposeRejected(group=0, reason="value too large")
    # The first leaves at once (the pipeline is idle); the next two wait behind it.
    first, a, b, fourth = (c.propose(m, 0, b"v%d" % i) for i in range(4))
    assert c.calls[fourth].response == ProposeRejected(group=0, reason="overloaded")
    c.run(200)
    assert ok(c, first).instance + 1 == ok(c, a).instance == ok(c, b).instance


def test_values_behind_an_instance_in_flight_are_batched_by_count() -> None:
    c = Cluster.make(3, batch_items_max=100, batch_delay_ms=50)
    m = c.wait_master(0)
    calls = [c.propose(m, 0, b"%03d" % i) for i in range(250)]
    # The first finds the pipeline idle and leaves alone; full batches leave at once; the
    # last 49 wait for company until instance 1 is chosen (well before the delay).
    c.run(10)
    instances = [ok(c, i).instance for i in calls]
    assert instances == [1] + [2] * 100 + [3] * 100 + [4] * 49
    assert [ok(c, i).slot for i in calls[1:4]] == [0, 1, 2]


def test_values_behind_an_instance_in_flight_are_batched_by_bytes() -> None:
    c = Cluster.make(3, batch_bytes_max=100, value_bytes_max=40, batch_delay_ms=20)
    m = c.wait_master(0)
    calls = [c.propose(m, 0, b"x" * 40) for _ in range(5)]
    c.run(50)
    assert [ok(c, i).instance for i in calls] == [1, 2, 2, 3, 3]


def test_pipeline_bounds_instances_in_flight() -> None:
    c = Cluster.make(3, batch_items_max=1, pipeline_max=4)
    m = c.wait_master(0)
    c.run(5)
    c.check_lease = False
    c.drop_where(lambda f: True)
    calls = [c.propose(m, 0, b"v%d" % i) for i in range(10)]
    accepts = [f for f in c.pool if isinstance(f.msg, Accept)]
    assert sorted({f.msg.instance for f in accepts}) == [1, 2, 3, 4]  # type: ignore[attr-defined]
    c.run(100)
    assert sorted(ok(c, i).instance for i in calls) == list(range(1, 11))


def test_instances_are_applied_in_order_even_if_chosen_out_of_order() -> None:
    c = Cluster.make(3, batch_items_max=1, pipeline_max=4)
    m = c.wait_master(0)
    c.run(5)
    c.pool.clear()
    first, second = c.propose(m, 0, b"a"), c.propose(m, 0, b"b")
    # instance 2 gets its quorum first: it must wait for instance 1
    c.deliver_where(lambda f: isinstance(f.msg, Accept) and f.msg.instance == 2)
    c.deliver_where(lambda f: isinstance(f.msg, Accepted) and f.msg.instance == 2)
    assert c.calls[second].response is None
    c.run(20)
    assert (ok(c, first).instance, ok(c, second).instance) == (1, 2)
    applied = [dict(e.fields)["instance"] for _, n, e in c.trace if n == m and e.kind == "applied"]
    assert applied == [1, 2]


def test_master_crash_fails_over_within_one_and_a_half_seconds() -> None:
    worst = 0
    for seed in range(6):
        c = Cluster.make(3, seed=seed)
        m = c.wait_master(0)
        c.propose_until_ok(0, b"before", start=m)
        c.run(37 * seed)  # crash at different phases of the heartbeat cycle
        crash_at = c.time
        c.crash(m)
        target = [n for n in c.config.replicas if n != m]
        done = False
        while not done and c.time < crash_at + 3000:
            masters = c.masters(0)
            if masters:
                call = c.propose(masters[0], 0, b"after")
                c.run_until(lambda c=c, call=call: c.calls[call].response is not None, 200, 1)
                done = isinstance(c.calls[call].response, ProposeOk)
            else:
                c.run(1)
        assert done and c.masters(0)[0] in target
        worst = max(worst, c.time - crash_at)
    assert worst < 1500, worst


def test_mastership_returns_to_the_preferred_replica_after_it_recovers() -> None:
    c = Cluster.make(3)
    assert c.wait_master(0) == "r0"
    c.crash("r0")
    c.run(2000)
    other = c.masters(0)
    assert other and other[0] != "r0"
    c.restart("r0")
    c.run(c.config.handover_after_ms + 2000)
    assert c.masters(0) == ["r0"]
    kinds = [dict(e.fields).get("reason") for _, _, e in c.trace if e.kind == "master"]
    assert "handover" in kinds
    c.propose_until_ok(0, b"after handover", start="r0")
    c.check_agreement()


def test_during_a_handover_clients_are_redirected_to_the_successor() -> None:
    """Between the old master's step-down and the successor's election, the old master and
    the third replica name the successor (not "no master known": a client told that tries
    the next replica in its list, which may be unreachable; zone-outage-queue, seed 14)."""
    c = Cluster.make(3, latency_ms=5)
    assert c.wait_master(0) == "r0"
    c.crash("r0")
    c.run(2000)
    old = c.masters(0)[0]
    third = next(n for n in c.config.replicas if n not in ("r0", old))
    c.restart("r0")

    def handed_over() -> bool:
        return any(
            e.kind == "master" and dict(e.fields).get("reason") == "handover" for _, _, e in c.trace
        )

    assert c.run_until(handed_over, within_ms=c.config.handover_after_ms + 2000, step_ms=1)
    assert c.masters(0) == []  # the successor has not won yet
    call = c.propose(old, 0, b"x")
    assert c.calls[call].response == Redirect(group=0, master="r0")
    c.run(c.latency_ms)  # the Handover reaches the others
    assert c.masters(0) == []
    call = c.propose(third, 0, b"y")
    assert c.calls[call].response == Redirect(group=0, master="r0")
    c.propose_until_ok(0, b"after handover", start=old)
    assert c.masters(0) == ["r0"]
    c.check_agreement()


def test_a_majority_across_a_link_slower_than_the_timeouts_still_elects_a_master() -> None:
    """r1 and r2 are 60 ms apart (a 120 ms round trip, above the default 100 ms round
    timeout); r0 is near both. With r0 down, every pre-vote and Prepare between r1 and r2
    used to time out before its answers came back, and no master was ever elected. A late
    answer measures the round trip, and the next round waits long enough for it."""
    c = Cluster.make(3)
    c.link_ms = {("r1", "r2"): 60, ("r2", "r1"): 60}
    assert c.wait_master(0) == "r0"
    c.propose_until_ok(0, b"before", start="r0")
    c.crash("r0")
    crashed_at = c.time
    assert c.run_until(lambda: bool(c.masters(0)), within_ms=5000, step_ms=5)
    elected = c.masters(0)[0]
    assert c.time - crashed_at < 3000, c.time - crashed_at
    node = c.nodes[elected]
    assert node is not None
    assert node.groups[0].round_trip_ms >= 120  # the slow link's round trip
    c.propose_until_ok(0, b"after", start=elected)
    c.check_agreement()
    c.check_acknowledged()


def test_lost_mastership_with_values_in_flight_answers_unknown_then_value_survives() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    c.run(10)
    c.pool.clear()
    call = c.propose(m, 0, b"maybe")
    c.run(1)  # the batch is cut; the Accepts are now in the pool
    # The Accept reaches r1 only; then the master is cut off from everyone.
    c.deliver_where(lambda f: isinstance(f.msg, Accept) and f.dst == "r1")
    c.partition([m], [n for n in c.config.replicas if n != m])
    c.run(3000)
    assert isinstance(c.calls[call].response, ProposeUnknown)
    # r1 accepted it, so the new master must re-propose it: it is chosen after all.
    c.heal()
    c.run(3000)
    for name in c.config.replicas:
        assert (1, 0, b"maybe") in c.records(name)
    c.check_agreement()


def test_pending_values_never_sent_are_redirected_when_mastership_is_lost() -> None:
    c = Cluster.make(3, batch_delay_ms=10_000, batch_items_max=100)
    m = c.wait_master(0)
    sent = c.propose(m, 0, b"in flight")  # the pipeline was idle: proposed at once
    call = c.propose(m, 0, b"queued")  # waits for company behind it
    c.partition([m], [n for n in c.config.replicas if n != m])
    c.run(2000)
    assert isinstance(c.calls[sent].response, ProposeUnknown)
    assert isinstance(c.calls[call].response, Redirect)


def test_two_replicas_never_both_master_with_drifting_clocks() -> None:
    drift = 50_000  # 5 %: large, to make a wrong margin show up
    c = Cluster.make(3, drift_ppm_max=drift, latency_ms=3)
    c.ppm = {"r0": -drift, "r1": drift, "r2": drift}  # the master's clock runs slow
    c.check_lease = True  # checked after every step
    m = c.wait_master(0)
    for round_ in range(4):
        c.partition([m], [n for n in c.config.replicas if n != m])
        c.run(3000)
        c.heal()
        c.run(1500 + 97 * round_)
        m = c.wait_master(0)
    assert c.masters(0)


def test_lease_exclusivity_is_checked_at_every_step() -> None:
    # A negative control for the check above: two masters at once must be reported.
    c = Cluster.make(3)
    c.wait_master(0)
    node = c.nodes["r1"]
    assert node is not None
    node.groups[0].is_master = lambda now: True  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="two masters"):
        c.run(300)


def test_lagging_follower_catches_up_in_chunks() -> None:
    c = Cluster.make(3, learn_chunk_max=3, batch_items_max=1)
    m = c.wait_master(0)
    lagger = next(n for n in c.config.replicas if n != m)
    c.partition([lagger], [n for n in c.config.replicas if n != lagger])
    for i in range(20):
        c.propose_until_ok(0, b"v%d" % i, start=m)
    assert c.applied_index(lagger) == 0
    c.heal()
    c.run(1000)
    assert c.applied_index(lagger) == c.applied_index(m) == 20
    replies = [f for f in c.trace if f[1] == lagger and f[2].kind == "chosen"]
    assert len(replies) >= 20
    c.check_agreement()


def test_restarted_follower_below_truncation_installs_a_snapshot() -> None:
    c = Cluster.make(3, checkpoint_every=5, log_hold=2, batch_items_max=1, snapshot_chunk_bytes=16)
    m = c.wait_master(0)
    lagger = next(n for n in c.config.replicas if n != m)
    c.crash(lagger)
    for i in range(23):
        c.propose_until_ok(0, b"value-%02d" % i, start=m)
    assert any(e.kind == "truncated" for _, n, e in c.trace if n == m)
    c.restart(lagger)
    c.run(3000)
    assert any(e.kind == "snapshot_installed" for _, n, e in c.trace if n == lagger)
    assert c.applied_index(lagger) == 23
    assert c.records(lagger) == c.records(m)
    # and it keeps up afterwards
    c.propose_until_ok(0, b"later", start=m)
    c.run(500)
    assert c.records(lagger) == c.records(m)


def test_whole_cluster_restart_keeps_every_acknowledged_value() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    for i in range(5):
        c.propose_until_ok(0, b"v%d" % i, start=m)
    c.run(500)
    for name in c.config.replicas:
        c.crash(name)
    for name in c.config.replicas:
        c.restart(name)
    m = c.wait_master(0)
    c.propose_until_ok(0, b"after restart", start=m)
    c.run(500)
    c.check_acknowledged()
    c.check_agreement()
    assert [v for _, _, v in c.records("r2")][:5] == [b"v%d" % i for i in range(5)]


def test_new_master_recovers_more_accepted_instances_than_one_promise_holds() -> None:
    c = Cluster.make(3, learn_chunk_max=2, pipeline_max=8, batch_items_max=1)
    m = c.wait_master(0)
    c.run(10)
    c.pool.clear()
    calls = [c.propose(m, 0, b"p%d" % i) for i in range(7)]
    # Every Accept reaches one follower (so all 7 are chosen: master + that follower), but
    # no ack gets back and no commit index ever reaches anyone.
    follower = "r1" if m != "r1" else "r2"
    c.deliver_where(lambda f: isinstance(f.msg, Accept) and f.dst == follower)
    c.drop_where(lambda f: True)
    c.crash(m)
    c.run(3000)
    new = c.masters(0)
    assert new and new[0] != m
    c.propose_until_ok(0, b"next", start=new[0])
    got = [v for _, _, v in c.records(new[0])]
    assert got[:7] == [b"p%d" % i for i in range(7)]
    assert all(c.calls[i].response is not None for i in calls)


def test_divergent_log_checksum_is_detected_loudly() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    c.propose_until_ok(0, b"a", start=m)
    c.run(500)
    victim = next(n for n in c.config.replicas if n != m)
    # Corrupt the victim's idea of its log checksum (a silent divergence), then restart it.
    c.crash(victim)
    c.stores[victim].apply(
        [Put(table=META, key=meta_key(0, KIND_APPLIED), value=encode_applied(1, 12345))]
    )
    c.restart(victim)
    c.hostile = True
    c.run(1000)
    # Evidence about the group, not a crash: the victim reports it and keeps running.
    alarms = [dict(ev.fields) for _, name, ev in c.alarms if name == victim]
    assert alarms and alarms[0]["what"] == "checksum_mismatch", alarms
    assert alarms[0]["mine"] == 12345 and c.up(victim)


def test_value_whose_check_disagrees_with_the_local_chain_is_refused() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    c.propose_until_ok(0, b"a", start=m)
    c.run(500)
    follower = next(n for n in c.config.replicas if n != m)
    node = c.nodes[follower]
    assert node is not None
    # A forged Accept whose value claims a different checksum at instance 1, then a commit.
    ballot = c.nodes[m].groups[0].ballot  # type: ignore[union-attr]
    bad = encode_entry([b"b"], 1, 999)
    assert decode_entry(bad).check_instance == 1
    fx = node.step(
        c.now(follower),
        Received(src=m, msg=Accept(group=0, ballot=ballot, instance=2, value=bad, commit=2)),
    )
    # Refused, reported, and the group halts: it applies nothing more and never leads.
    alarms = [dict(ev.fields) for ev in fx.trace if ev.kind == ALARM]
    assert [a["what"] for a in alarms] == ["divergence"]
    assert "checksum" in str(alarms[0]["reason"])
    group = node.groups[0]
    assert group.learner.applied == 1 and group.learner.halted is not None
    assert not any(isinstance(ev, TraceEvent) and ev.kind == "applied" for ev in fx.trace)
    group.not_before = 0
    node.step(c.now(follower), Wake())
    assert group.role is Role.FOLLOWER and not group.is_master(c.now(follower).mono_ms)


def test_stale_messages_are_ignored_safely() -> None:
    c = Cluster.make(3)
    m = c.wait_master(0)
    c.propose_until_ok(0, b"a", start=m)
    ballot = c.nodes[m].groups[0].ballot  # type: ignore[union-attr]
    # A new master's election makes the old master's ballot old.
    c.crash(m)
    c.run(3000)
    m2 = c.wait_master(0)
    follower = next(n for n in c.config.replicas if n not in (m, m2))
    c.restart(m)
    node = c.nodes[follower]
    assert node is not None and node.groups[0].acceptor.promised > ballot
    now = c.now(follower)
    # old-ballot heartbeat and accept are refused, unknown groups and sources dropped
    fx = node.step(
        now,
        Received(
            src=m, msg=Heartbeat(group=0, ballot=ballot, seq=1, commit=9, applied=0, checksum=0)
        ),
    )
    assert isinstance(fx.sends[0].msg, HeartbeatAck) and not fx.sends[0].msg.ok
    fx = node.step(
        now, Received(src=m, msg=Accept(group=0, ballot=ballot, instance=5, value=b"", commit=0))
    )
    assert isinstance(fx.sends[0].msg, Accepted) and not fx.sends[0].msg.ok
    fx = node.step(
        now,
        Received(
            src="zz", msg=Heartbeat(group=0, ballot=99, seq=1, commit=9, applied=0, checksum=0)
        ),
    )
    assert not fx.sends
    fx = node.step(
        now,
        Received(
            src=m,
            msg=LearnReply(
                group=5,
                from_instance=1,
                entries=(),
                chosen_upto=0,
                log_start=1,
                applied=0,
                checksum=0,
            ),
        ),
    )
    assert not fx.sends
    fx = node.step(
        now,
        Received(
            src=m,
            msg=SnapshotChunk(
                group=0, instance=9, checksum=0, total=1, digest=b"", offset=0, data=b"x"
            ),
        ),
    )
    assert not fx.writes  # no snapshot was requested
    c.run(500)
    c.check_agreement()


def test_a_replica_must_boot_first() -> None:
    c = Cluster.make(1)
    fresh = Replica("r0", c.config, c.stores["r0"], random.Random(1), c.sm_factory("r0"))
    with pytest.raises(InvariantViolation):
        fresh.step(
            Now(mono_ms=0, wall_ms=0), ClientCall(call_id=1, request=Propose(group=0, value=b""))
        )
    fresh.step(Now(mono_ms=0, wall_ms=0), Boot())
    assert fresh.next_deadline() is not None


def test_same_seed_gives_the_same_trace() -> None:
    def run(seed: int) -> list[tuple[int, str, str]]:
        c = Cluster.make(3, seed=seed)
        m = c.wait_master(0)
        c.crash(m)
        c.run(2000)
        return [(t, n, repr(e)) for t, n, e in c.trace]

    assert run(3) == run(3)
