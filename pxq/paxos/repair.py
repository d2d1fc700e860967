"""Repair of one Paxos group on one replica: what it lost, and re-learning it from its peers.

A replica loses durable state in part (a record that failed its checksum: the driver restarts
it with the record in ``Boot.damaged``, see ``pxq.effects``) or whole (a replaced disk: blank
storage booted with ``if_blank="replace"``). It never guesses what it lost:

* a log record of an instance it has applied is redundant (the state machine holds it, the
  value is chosen): the log is truncated above it, and peers that need it get a snapshot;
* the promise, or a log record above the applied index (a value it may have accepted and
  acknowledged), is acceptor state: the group sets ``REPAIR_VOTES`` and takes part in no
  quorum (it refuses every Prepare, Accept and heartbeat, and never campaigns) while it
  keeps learning. It asks every other replica (``RepairQuery``) for its promise, the end of
  its log and its applied index. Once every other replica has answered (one that is itself
  repairing does not count), it promises the highest ballot reported and learns up to the
  highest instance reported; then it votes again. Why every other replica: a candidate
  durably promises its own ballot before its Prepare leaves, so the highest ballot this
  replica might have promised is held by some other replica; and any value chosen with its
  vote was durably accepted by at least one other replica, which reports an instance at or
  above it. (With three replicas, every other replica is the smallest set that works; with
  more, a majority of the others would do for the accepted values but not for the promise.)
  Learning up to that instance means every instance it might have voted in is chosen and
  known here, so its later promises report the chosen values;
* the state machine (one of its records, or the applied record) is damaged: the group sets
  ``REPAIR_STATE``, loads nothing of it and applies nothing (the learner is frozen) until a
  peer's snapshot has replaced it; its acceptor state is intact, so it keeps voting;
* the log start record: the log below the applied index is dropped and the record written
  again (unless the applied index is lost too: then the snapshot install truncates).

The flags are durable (``paxos_meta`` kind R, ``records.py``), written in the boot step that
found the damage, so a replica that restarts mid-repair carries on.

Blank storage booted with ``if_blank="probe"`` (what a real node sees on an empty data
directory) may belong to a replica that never joined the group (a new cluster, or a replica
started for the first time after its peers) or to one that lost its data after voting. Each
replica records which replicas of the set are members of the group (``paxos_meta`` kind M, a
bitmask; absent, it means every replica: storage from a new cluster, a replacement, or a
damaged record, which is the cautious answer). A replica that joins through a probe votes
only once a peer has durably recorded it as a member, so a replica that ever voted is
recorded by at least one peer. The probing replica writes nothing and votes for nothing; it
asks every peer (``RepairQuery``):

* a peer that has recorded it as a member (``RepairReply.member``): it lost its data; it
  raises ``ReplacementRequired`` (the driver stops it; the operator restarts it as a
  replacement);
* a majority, itself included, is blank: the cluster is new;
* every other replica answered, none of them repairing, none recording it: it never joined
  (the peer that recorded it, if it had voted, would be among them).

In both of the last cases it durably records itself as a member, sets ``REPAIR_JOIN`` and asks
again with ``RepairQuery.join``: a peer that is not probing records it and answers
``member``; the first such answer clears the flag and it votes. A replica stopped after the
probe keeps its member record, so it boots as a member (its storage is not blank), and
``REPAIR_JOIN`` resumes the request if no peer had confirmed it yet.

Known limit: a message sent by the replica's previous life (before the disk was replaced)
and delivered after its repair is complete could still be accepted by a peer; the drivers
close every connection of a stopped incarnation, and a replacement takes far longer than a
message's delivery.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from pxq.effects import EffectsBuilder, NodeId, ReplacementRequired, StorageView
from pxq.paxos.config import PaxosConfig
from pxq.paxos.messages import RepairQuery, RepairReply
from pxq.paxos.quorum import majority
from pxq.paxos.records import (
    KIND_APPLIED,
    KIND_LOG_START,
    KIND_MEMBERS,
    KIND_PROMISE,
    KIND_REPAIR,
    LOG,
    META,
    REPAIR_JOIN,
    REPAIR_VOTES,
    decode_u64,
    encode_u64,
    group_key,
    meta_key,
)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(slots=True)
class GroupDamage:
    """The damaged records of one group, as reported in ``Boot.damaged``."""

    promise: bool = False
    applied: bool = False
    log_start: bool = False
    repair: bool = False
    members: bool = False
    state: bool = False
    """A record of the group's state machine."""
    instances: list[int] = field(default_factory=list)
    """Log records."""

    def any(self) -> bool:
        return (
            self.promise
            or self.applied
            or self.log_start
            or self.repair
            or self.members
            or self.state
            or bool(self.instances)
        )


def classify(damaged: Sequence[tuple[str, bytes]], groups: int) -> list[GroupDamage]:
    """Which group each damaged record belongs to, and what it held. Every table of a
    replica's node keys its records by the u32 group first; a record that names no group
    of this replica damages every group (its acceptor state and its state machine)."""
    out = [GroupDamage() for _ in range(groups)]
    for table, key in damaged:
        g = _U32.unpack_from(key)[0] if len(key) >= 4 else groups
        if g >= groups:
            for d in out:
                d.repair = True  # unknown: assume both acceptor state and state lost
            continue
        d = out[g]
        if table == META and len(key) == 5:
            kind = key[4:5]
            if kind == KIND_PROMISE:
                d.promise = True
            elif kind == KIND_APPLIED:
                d.applied = True
            elif kind == KIND_LOG_START:
                d.log_start = True
            elif kind == KIND_MEMBERS:
                d.members = True
            else:
                d.repair = True
        elif table == LOG and len(key) == 12:
            d.instances.append(int(_U64.unpack_from(key, 4)[0]))
        elif table in (META, LOG):
            d.repair = True
        else:
            d.state = True
    return out


def storage_blank(view: StorageView) -> bool:
    """Whether the replica's Paxos storage holds nothing at all (no group ever promised,
    accepted, applied or started a repair)."""
    return next(view.scan(META), None) is None and next(view.scan(LOG), None) is None


def read_flags(view: StorageView, group: int) -> int:
    rec = view.get(META, meta_key(group, KIND_REPAIR))
    return 0 if rec is None else decode_u64(rec, "repair record", meta_key(group, KIND_REPAIR))


def read_members(view: StorageView, group: int, everyone: int) -> int:
    """The replicas ``group``'s record names as members (a bitmask; ``everyone`` if absent)."""
    key = meta_key(group, KIND_MEMBERS)
    rec = view.get(META, key)
    return everyone if rec is None else decode_u64(rec, "members record", key)


def log_end(view: StorageView, group: int) -> int:
    """The highest instance of ``group`` in the log (0: none)."""
    for key, _ in view.scan(LOG, group_key(group), group_key(group + 1), reverse=True):
        return int(_U64.unpack_from(key, 4)[0])
    return 0


class Repair:
    """The repair state of one group: the durable flags, a probe or query round, and the
    instance to learn before voting again."""

    __slots__ = (
        "answers",
        "config",
        "deadline",
        "flags",
        "group",
        "me",
        "members",
        "peers",
        "probing",
        "upto",
    )

    def __init__(
        self, group: int, config: PaxosConfig, me: NodeId, peers: tuple[NodeId, ...]
    ) -> None:
        self.group = group
        self.config = config
        self.me = me
        self.peers = peers
        self.flags = 0
        self.members = (1 << len(config.replicas)) - 1
        """The replicas recorded as members of the group (a bitmask in configuration order;
        meaningless while probing, when nothing is recorded)."""
        self.probing = False
        """Blank storage of unknown history: asking the peers whether it ever joined."""
        self.answers: dict[NodeId, RepairReply] = {}
        self.deadline: int | None = None
        """While a round runs: when to ask again the peers that have not answered."""
        self.upto: int | None = None
        """Once the round is over: vote again when the applied index reaches it."""

    def everyone(self) -> int:
        return (1 << len(self.config.replicas)) - 1

    def voting(self) -> bool:
        """Whether the group may take part in a quorum (promise, accept, ack heartbeats)."""
        return not self.probing and not self.flags & (REPAIR_VOTES | REPAIR_JOIN)

    def may_lead(self) -> bool:
        return not self.probing and not self.flags

    def round_open(self) -> bool:
        return (
            self.probing
            or bool(self.flags & REPAIR_JOIN)
            or (bool(self.flags & REPAIR_VOTES) and self.upto is None)
        )

    def set_flags(self, flags: int, fx: EffectsBuilder) -> None:
        if flags == self.flags:
            return
        self.flags = flags
        key = meta_key(self.group, KIND_REPAIR)
        if flags:
            fx.put(META, key, encode_u64(flags))
        else:
            fx.delete(META, key)

    def record_member(self, node: NodeId, fx: EffectsBuilder) -> bool:
        """Durably record ``node`` as a member (not while probing: a probing replica writes
        nothing). Whether it is recorded."""
        if self.probing:
            return False
        bit = 1 << self.config.index_of(node)
        if not self.members & bit:
            self.members |= bit
            fx.put(META, meta_key(self.group, KIND_MEMBERS), encode_u64(self.members))
        return True

    def is_member(self, node: NodeId) -> bool:
        return not self.probing and bool(self.members & 1 << self.config.index_of(node))

    def ask(self, now: int, fx: EffectsBuilder) -> None:
        """Ask every peer that has not answered yet (or only as a replica repairing its own
        loss, which vouches for nothing)."""
        self.deadline = now + self.config.learn_timeout_ms
        msg = RepairQuery(group=self.group, join=bool(self.flags & REPAIR_JOIN))
        for peer in self.peers:
            answer = self.answers.get(peer)
            if answer is None or answer.repairing:
                fx.send(peer, msg)

    def on_reply(self, now: int, src: NodeId, msg: RepairReply, fx: EffectsBuilder) -> bool:
        """Record an answer; True once a round of the votes' repair is complete (a probe
        raises ``ReplacementRequired`` on the first answer that records this replica)."""
        if not self.round_open() or src not in self.peers:
            return False
        if min(msg.promised, msg.log_end, msg.applied) < 0:
            fx.event("dropped", reason="bad repair reply", source=src, group=self.group)
            return False
        if self.probing:
            self._on_probe_reply(now, src, msg, fx)
            return False
        if self.flags & REPAIR_JOIN and msg.member:
            self.set_flags(self.flags & ~REPAIR_JOIN, fx)
            fx.event("repair", group=self.group, state="joined", recorded_by=src)
            if not self.round_open():
                self.answers.clear()
                self.deadline = None
        if not self.flags & REPAIR_VOTES or self.upto is not None or msg.repairing:
            return False  # no votes' round, or it lost state too: its answer does not count
        self.answers[src] = msg
        return len(self.answers) == len(self.peers)

    def _on_probe_reply(self, now: int, src: NodeId, msg: RepairReply, fx: EffectsBuilder) -> None:
        if msg.member:
            raise ReplacementRequired(
                f"group {self.group}: this replica's storage is blank but {src} recorded it "
                f"as a member of the group (promised ballot {msg.promised}, applied "
                f"{msg.applied}): it lost its data and must be started as a replacement"
            )
        if msg.blank or not msg.repairing:
            self.answers[src] = msg  # a peer repairing its own loss vouches for nothing
        blank = sum(1 for a in self.answers.values() if a.blank)
        vouching = sum(1 for a in self.answers.values() if not a.repairing)
        if blank + 1 >= majority(len(self.peers) + 1):
            state = "new_cluster"
        elif vouching == len(self.peers):
            state = "never_joined"
        else:
            return
        self.probing = False
        self.answers.clear()
        self.members = 0
        self.record_member(self.me, fx)
        self.set_flags(self.flags | REPAIR_JOIN, fx)
        fx.event("repair", group=self.group, state=state)
        self.ask(now, fx)
