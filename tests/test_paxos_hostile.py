"""Hostile peers: well-formed messages no honest replica sends never crash a replica.

A fake peer takes the name of replica ``r2`` (as anyone who could reach a replica's port could
before peers were authenticated, and as a compromised or buggy replica still can) and sends
the two honest replicas forged messages of every peer type (extreme ballots and counters,
ballots of other owners, unknown groups, garbage and forged entries, unknown names), replays
and reorders frames it saw, and mutates one field of them; meanwhile the honest replicas
serve proposals, crash and restart. Whatever it sends: no replica raises (an invariant
violation included), every step's writes can be read back (each restart reloads the whole
store), and a last restart of each honest replica boots. Evidence of the forgery is reported
as alarms (``pxq.effects.ALARM``), never as a crash.

Safety against a fake *member* is not claimed here: one that holds a member's identity can
fool the others into choosing its values (Paxos tolerates crashes, not lies). That is what
authenticating peers is for (``docs/security.md``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pxq.effects import Boot, Put, StorageCorruption
from pxq.paxos import messages as pm
from pxq.paxos.records import KIND_PROMISE, META, encode_entry, encode_u64, meta_key
from pxq.paxos.validate import BALLOT_MAX, COUNT_MAX, PEER_TYPES
from tests.hostile import U64_MAX, ints, messages_of
from tests.paxos_harness import Cluster

FAKE = "r2"
HONEST = ("r0", "r1")

# Mostly ballots the fake peer may own (it then reaches the protocol), else near the honest
# ones (small rounds, every owner index) or wild.
fakes = st.builds(lambda r: r * 16 + 2, st.integers(1, 8))
ballots = st.one_of(
    fakes, fakes, st.builds(lambda r, i: r * 16 + i, st.integers(0, 8), st.integers(0, 15)), ints
)
groups = st.sampled_from((0, 1, 0, 1, 0, 1, 2, -1, COUNT_MAX))
names = st.sampled_from(("r0", "r1", "r2", "zz", ""))
values = st.one_of(
    st.binary(max_size=24),
    st.builds(
        encode_entry,
        st.lists(st.binary(max_size=8), max_size=3),
        st.integers(0, 12),
        st.one_of(st.just(0), st.integers(0, U64_MAX)),
    ),
)


def _messages_of(cls: type) -> st.SearchStrategy[Any]:
    return messages_of(
        cls,
        ints_by_name={"ballot": ballots, "promised": ballots, "group": groups},
        strs_by_name={"master": names, "successor": names},
        values=values,
    )


def test_every_peer_message_type_has_a_check() -> None:
    assert set(typing.get_args(pm.PeerMessage)) == set(PEER_TYPES)


forged = st.one_of(*(_messages_of(cls) for cls in PEER_TYPES))

actions = st.one_of(
    st.tuples(st.just("run"), st.integers(1, 400)),
    st.tuples(st.just("forge"), st.sampled_from(HONEST), forged),
    st.tuples(st.just("replay"), st.integers(0, 10_000), st.sampled_from(HONEST), st.booleans()),
    st.tuples(
        st.just("mutate"), st.integers(0, 10_000), st.sampled_from(HONEST), st.integers(0, 10), ints
    ),
    st.tuples(
        st.just("propose"), st.sampled_from(HONEST), st.integers(0, 1), st.binary(max_size=8)
    ),
    st.tuples(st.just("restart"), st.sampled_from(HONEST)),
    st.tuples(
        st.just("aimed"),
        st.sampled_from(HONEST),
        st.integers(0, 1),
        st.sampled_from(("accept", "heartbeat", "learn", "prepare")),
        st.integers(0, 3),
        values,
        st.integers(0, U64_MAX),
    ),
)


def _aimed(
    c: Cluster, dst: str, group: int, kind: str, k: int, value: bytes, checksum: int
) -> object:
    """A forgery aimed at ``dst``'s state: a ballot of the fake's above every ballot it saw,
    the next instances, its own applied index with a made-up checksum."""
    node = c.nodes[dst]
    assert node is not None
    g = node.groups[group]
    applied = g.learner.applied
    ballot = ((max(g.acceptor.promised, g.max_seen) >> 4) + 1 + k) * 16 + 2
    instance = applied + 1 + k
    if kind == "accept":
        return pm.Accept(
            group=group, ballot=ballot, instance=instance, value=value, commit=instance
        )
    if kind == "heartbeat":
        return pm.Heartbeat(
            group=group,
            ballot=ballot,
            seq=k,
            commit=applied + k,
            applied=applied,
            checksum=checksum,
        )
    if kind == "learn":
        return pm.LearnReply(
            group=group,
            from_instance=applied + 1,
            entries=(pm.LearnedEntry(instance=applied + 1, value=value),),
            chosen_upto=instance,
            log_start=1,
            applied=applied,
            checksum=checksum,
        )
    return pm.Prepare(group=group, ballot=ballot, from_instance=applied + 1)


def _mutate(msg: object, which: int, value: int) -> object:
    """``msg`` with its ``which``-th int field (cyclically) set to ``value``."""
    fields = [
        f.name
        for f in dataclasses.fields(msg)  # type: ignore[arg-type]
        if type(getattr(msg, f.name)) is int
    ]
    if not fields:
        return msg
    return dataclasses.replace(msg, **{fields[which % len(fields)]: value})  # type: ignore[type-var]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(0, 1000), script=st.lists(actions, min_size=4, max_size=40))
def test_no_message_crashes_a_replica_or_poisons_its_disk(
    seed: int, script: list[tuple[Any, ...]]
) -> None:
    c = Cluster.make(3, groups=2, seed=seed)
    c.hostile = True
    c.check_lease = False  # a fake member can fool two replicas into leading: not a crash
    c.sent = []
    c.crash(FAKE)  # its name is the fake peer's now
    for group in range(2):
        c.wait_master(group)
    for action in script:
        match action:
            case ("run", ms):
                c.run(ms)
            case ("forge", dst, msg):
                c.inject(dst, FAKE, msg)
            case ("replay", i, dst, as_fake):
                if c.sent:
                    f = c.sent[i % len(c.sent)]
                    c.inject(dst, FAKE if as_fake else f.src, f.msg)
            case ("mutate", i, dst, which, value):
                if c.sent:
                    f = c.sent[i % len(c.sent)]
                    c.inject(dst, FAKE, _mutate(f.msg, which, value))
            case ("propose", node, group, value):
                c.propose(node, group, value)
            case ("aimed", dst, group, kind, k, value, checksum):
                if c.up(dst):
                    c.inject(dst, FAKE, _aimed(c, dst, group, kind, k, value, checksum))
            case ("restart", node):
                c.crash(node)
                c.restart(node)
    c.run(300)
    for what in sorted({str(dict(ev.fields)["what"]) for _, _, ev in c.alarms}):
        event(f"alarm {what}")  # what the forgeries reached (--hypothesis-show-statistics)
    for node in HONEST:
        # Restart always works: every record written can be read back by a new incarnation.
        c.crash(node)
        c.restart(node)
    c.run(1000)


def test_the_forged_frames_of_the_report_are_refused_with_alarms() -> None:
    """The three frames that stopped replicas: a heartbeat with a checksum the receiver does
    not have, a heartbeat at ballot 2**64 - 1, and a Prepare at the largest ballot with the
    owner index of a real replica."""
    c = Cluster.make(3)
    c.hostile = True
    m = c.wait_master(0)
    c.propose_until_ok(0, b"a", start=m)
    c.run(200)
    follower = next(n for n in c.config.replicas if n != m)
    node = c.nodes[follower]
    assert node is not None
    ballot = node.groups[0].acceptor.promised
    frames = [
        pm.Heartbeat(group=0, ballot=ballot, seq=99, commit=1, applied=1, checksum=12345),
        pm.Heartbeat(group=0, ballot=U64_MAX, seq=1, commit=0, applied=0, checksum=0),
        pm.Prepare(group=0, ballot=(U64_MAX >> 4 << 4) | c.config.index_of(m), from_instance=1),
    ]
    for frame in frames:
        c.inject(follower, m, frame)
    what = [dict(ev.fields)["what"] for _, name, ev in c.alarms if name == follower]
    assert what == ["checksum_mismatch", "invalid_message", "invalid_message"]
    assert node.groups[0].acceptor.promised == ballot  # nothing out of range was persisted
    c.crash(follower)
    c.restart(follower)
    c.run(500)
    c.propose_until_ok(0, b"b", start=m)


def test_a_persisted_ballot_no_replica_can_own_is_repaired_not_used() -> None:
    """A promise record of ballot 2**64 - 1 with a valid checksum (as the forged Prepare of the
    report left on every replica before messages were validated): the replica refuses to
    boot with it, naming the record, and a boot told the record is damaged (what the
    drivers do next) repairs it from its peers and serves again."""
    c = Cluster.make(3)
    m = c.wait_master(0)
    c.propose_until_ok(0, b"a", start=m)
    c.run(200)
    victim = next(n for n in c.config.replicas if n != m)
    key = meta_key(0, KIND_PROMISE)
    c.crash(victim)
    c.stores[victim].apply([Put(table=META, key=key, value=encode_u64(U64_MAX))])
    with pytest.raises(StorageCorruption, match="promise record of group 0") as caught:
        c.restart(victim)
    assert (caught.value.table, caught.value.key) == (META, key)
    c.restart(victim, Boot(damaged=((META, key),)))
    c.run(3000)
    node = c.nodes[victim]
    assert node is not None and node.groups[0].acceptor.promised <= BALLOT_MAX
    assert not node.groups[0].repair.flags
    c.propose_until_ok(0, b"b", start=m)
    c.run(500)
    assert [v for _, _, v in c.records(victim)][-2:] == [b"a", b"b"]
