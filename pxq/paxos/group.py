"""One Paxos group on one replica: roles, election, master lease, proposer, catch-up.

``Group`` combines the group's ``Acceptor`` (durable Paxos state) and ``Learner`` (in-order
apply) with the volatile roles:

* follower: acks the master, learns its commit index, campaigns when the master is silent
  for a lease, fetches missing chosen values and snapshots;
* candidate: runs phase 1 for every instance >= its first unchosen one, in bounded windows;
* leader: re-proposes what the promise quorum reported (no-ops for gaps), renews its lease
  with heartbeats, batches client values into instances and keeps a bounded pipeline.

Batching is natural (Nagle-style): no timer runs on the idle path. A client value that finds
the pipeline idle (no instance beyond the applied prefix) is proposed in the very step it
arrives. Values arriving while instances are in flight accumulate into the next batch, which
leaves (room in the pipeline permitting: at most ``pipeline_max`` instances beyond the applied
prefix) in the step an instance is chosen, as soon as it holds ``batch_items_max`` values or
``batch_bytes_max`` bytes, or once its oldest value has waited ``batch_delay_ms``, whichever
comes first. The delay is only an upper bound: it lets a burst of values from different
producers or queues share one instance instead of one instance each (fewer messages and
applies per value), without ever serialising them behind a whole round, so the pipeline stays
in use. ``batch_delay_ms = 0`` proposes every value at once while the pipeline has room.

Early Accepts: a leader sends its ``Accept`` messages in the step that writes its own accept,
marked ``early`` (``pxq.effects.Send``), so the followers' writes overlap its own. Its own vote
is not counted then: it sends an ``Accepted`` to itself, which the driver releases only once
that write is durable, like any output. A value is thus chosen only by durable votes, and a
follower's vote is durable before it leaves. The Accept is safe to release early because the
leader's ballot rests on promises that were durable before its Prepare left, and a value
accepted by followers but never by the leader is ordinary Paxos.

Only a leader that holds the lease and has applied everything up to the end of its recovery
is *master*: it alone proposes client values and serves. Every handler takes the node's
monotonic time ``now`` (ms) and appends its writes, sends, replies and trace events to the
step's ``EffectsBuilder``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import assert_never

from pxq.effects import EffectsBuilder, InvariantViolation, NodeId, Rng, StorageView
from pxq.paxos.acceptor import Acceptor
from pxq.paxos.ballot import NO_BALLOT, next_ballot, owner_index
from pxq.paxos.config import PaxosConfig
from pxq.paxos.learner import Applied, Learner
from pxq.paxos.lease import master_lease_until
from pxq.paxos.messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    Handover,
    Heartbeat,
    HeartbeatAck,
    LearnedEntry,
    LearnReply,
    LearnRequest,
    PeerMessage,
    Prepare,
    Promise,
    ProposeOk,
    ProposeRejected,
    ProposeUnknown,
    Redirect,
    SnapshotChunk,
    SnapshotRequest,
)
from pxq.paxos.quorum import bit, is_quorum, quorum_impossible
from pxq.paxos.records import (
    LOG,
    decode_log,
    digest,
    encode_entry,
    instance_of_log_key,
    log_key,
)
from pxq.paxos.sm import StateMachine


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class _Inflight:
    """An instance this leader proposed that is not yet known chosen."""

    value: bytes
    acks: int
    sent_at: int
    first_sent_at: int
    """When the first Accept went out: every ack was given after it, so a quorum of acks
    renews the lease from this time (never from a later retransmission)."""
    retries: int = 0


@dataclass(slots=True)
class _Waiting:
    """Client calls (one per slot) answered when ``instance`` is applied."""

    value: bytes
    calls: tuple[int, ...]


@dataclass(slots=True)
class _Pending:
    call_id: int
    value: bytes
    at: int


@dataclass(slots=True)
class _SnapshotIn:
    """A snapshot being received from ``src``."""

    src: NodeId
    deadline: int
    instance: int = 0
    total: int = 0
    checksum: int = 0
    digest: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    retries: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotOut:
    """A snapshot this replica serves to peers (kept in a bounded cache)."""

    instance: int
    checksum: int
    data: bytes
    digest: bytes


class SnapshotCache:
    """Encoded snapshots kept while peers fetch them, at most ``limit`` (FIFO eviction)."""

    __slots__ = ("items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[int, SnapshotOut] = {}

    def get(self, group: int) -> SnapshotOut | None:
        return self.items.get(group)

    def put(self, group: int, snap: SnapshotOut) -> None:
        self.items.pop(group, None)
        self.items[group] = snap
        while len(self.items) > self.limit:
            del self.items[next(iter(self.items))]  # dicts keep insertion order


class Group:
    """The replica's part in one Paxos group."""

    def __init__(
        self,
        *,
        group: int,
        me: NodeId,
        config: PaxosConfig,
        view: StorageView,
        rng: Rng,
        sm_factory: Callable[[int], StateMachine],
        snapshots: SnapshotCache,
    ) -> None:
        self.group = group
        self.me = me
        self.config = config
        self.view = view
        self.rng = rng
        self.snapshots = snapshots
        self.n = len(config.replicas)
        self.my_index = config.index_of(me)
        self.preferred_index = group % self.n
        self.peers = tuple(r for r in config.replicas if r != me)
        self.acceptor = Acceptor(group, config, view)
        self.learner = Learner(group, config, view, sm_factory(group))

        self.role = Role.FOLLOWER
        self.ballot = NO_BALLOT
        self.max_seen = NO_BALLOT
        self.known_master: int | None = None
        # follower timers
        self.heard_master_at = 0
        self.not_before = 0
        self.election_delay = 0
        self.commit_seen = 0
        self.learn_deadline: int | None = None
        self.snap: _SnapshotIn | None = None
        # phase 1 (candidate, or leader fetching its next recovery window)
        self.prep_active = False
        self.prep_from = 0
        self.prep_ok = 0
        self.prep_rejects = 0
        self.prep_promises: dict[int, Promise] = {}
        self.prep_deadline = 0
        self.prep_retries = 0
        self.prep_wait_ms = 0
        # leader
        self.leader_since = 0
        self.lease_until = 0
        self.hb_seq = 0
        self.hb_rounds: dict[int, list[int]] = {}
        self.next_hb_at = 0
        self.recovery: deque[tuple[int, bytes | None]] = deque()
        self.next_window: int | None = None
        self.serving_from: int | None = None
        self.next_instance = 1
        self.inflight: dict[int, _Inflight] = {}
        self.pending: deque[_Pending] = deque()
        self.pending_bytes = 0
        self.mastered = False
        self.handing_over = False
        self.peer_applied = [0] * self.n
        self.peer_ack_at: list[int | None] = [None] * self.n
        self.last_now = 0
        """The time of the latest input, for deadlines that depend on it."""
        # client calls waiting for their instance to be applied (any role)
        self.waiting: dict[int, _Waiting] = {}

    # ---------------------------------------------------------------------------------------
    # Queries

    def is_master(self, now: int) -> bool:
        return (
            self.role is Role.LEADER
            and not self.handing_over
            and self.serving_from is not None
            and self.learner.applied >= self.serving_from - 1
            and now < self.lease_until
        )

    def master_of(self) -> NodeId | None:
        if self.role is Role.LEADER:
            return self.me
        if self.known_master is None:
            return None
        return self.config.replicas[self.known_master]

    def deadline(self) -> int | None:
        cfg = self.config
        times: list[int] = []
        if self.role is Role.FOLLOWER:
            times.append(self._election_at())
            if self.learn_deadline is not None:
                times.append(self.learn_deadline)
            if self.snap is not None:
                times.append(self.snap.deadline)
        elif self.role is Role.CANDIDATE:
            times.append(self.prep_deadline)
        else:
            times.append(self.next_hb_at)
            times.append(self._give_up_at())
            if self.mastered:
                times.append(self.lease_until)  # to report the lapse
            if self.prep_active:
                times.append(self.prep_deadline)
            if self.inflight:
                times.append(min(f.sent_at for f in self.inflight.values()) + cfg.accept_timeout_ms)
            # Without a valid lease the pump cannot cut a batch: a renewal will.
            if (
                self.pending
                and self._can_batch()
                and self._room(self.next_instance)
                and self.last_now < self.lease_until
            ):
                # The batch's upper bound. (Steps that free a slot or find the pipeline idle
                # pump at once; if some path left a due batch behind, the tick cuts it.)
                times.append(min(self.pending[0].at + cfg.batch_delay_ms, self.lease_until))
        return min(times)

    # ---------------------------------------------------------------------------------------
    # Boot and timers

    def boot(self, now: int, fx: EffectsBuilder) -> None:
        self.last_now = now
        self.acceptor.load(now)
        self.learner.load()
        self.max_seen = self.acceptor.promised
        self.heard_master_at = now
        self.not_before = 0
        self.election_delay = self._draw_election_delay()
        # Values learned as chosen but not applied before the restart: pick them up again.
        g, learner = self.group, self.learner
        start = learner.applied + 1
        for key, rec in self.view.scan(LOG, log_key(g, start), log_key(g, start + learner.horizon)):
            instance = instance_of_log_key(key)
            r = decode_log(rec)
            if instance != start or not r.chosen:
                break
            learner.mark_chosen(instance, r.value, fx)
            start += 1
        self._advance(now, fx)

    def tick(self, now: int, fx: EffectsBuilder) -> None:
        self.last_now = now
        cfg = self.config
        if self.role is Role.FOLLOWER:
            if self.snap is not None and now >= self.snap.deadline:
                self._snapshot_retry(now, fx)
            if self.learn_deadline is not None and now >= self.learn_deadline:
                self.learn_deadline = None
                src = self._learn_source()
                if src is not None and self.commit_seen > self.learner.applied:
                    self._request_learn(now, src, fx)
            if now >= self._election_at():
                self._campaign(now, fx)
            return
        if self.role is Role.CANDIDATE:
            if now >= self.prep_deadline:
                self._prepare_retry(now, fx)
            return
        # leader
        if now >= self._give_up_at():
            self._step_down(now, "lease lost", fx)
            return
        if self.mastered and not self.is_master(now):
            # The lease lapsed (heartbeat rounds lost). Keep the ballot and keep trying to
            # renew for one more lease; give up only after that.
            self.mastered = False
            fx.event("master", group=self.group, ballot=self.ballot, state="lapsed")
        if now >= self.next_hb_at:
            self._heartbeat(now, fx)
            self._consider_handover(now)
        if self.prep_active and now >= self.prep_deadline:
            self._prepare_retry(now, fx)
            if self.role is not Role.LEADER:
                return
        for instance in sorted(self.inflight):
            inf = self.inflight[instance]
            if self.learner.is_chosen(instance):
                del self.inflight[instance]
                continue
            if now < inf.sent_at + cfg.accept_timeout_ms:
                continue
            inf.retries += 1
            if inf.retries > cfg.accept_retries_max:
                self._step_down(now, "no accept quorum", fx)
                return
            inf.sent_at = now
            msg = Accept(
                group=self.group,
                ballot=self.ballot,
                instance=instance,
                value=inf.value,
                commit=self.learner.applied,
            )
            for i, peer in enumerate(self.config.replicas):
                if peer != self.me and not inf.acks & bit(i):
                    fx.send(peer, msg, early=True)
        self._pump(now, fx)

    def _give_up_at(self) -> int:
        """A leader without a lease for a whole lease_ms steps down (others will have
        started campaigning by then)."""
        return max(self.lease_until, self.leader_since) + self.config.lease_ms

    def _election_at(self) -> int:
        return (
            max(self.heard_master_at + self.config.lease_ms, self.not_before) + self.election_delay
        )

    def _draw_election_delay(self) -> int:
        jitter = self.config.election_jitter_ms
        if self.my_index == self.preferred_index:
            return self.rng.randint(0, jitter // 4)
        return jitter // 4 + self.rng.randint(0, jitter)

    # ---------------------------------------------------------------------------------------
    # Messages

    def on_message(self, now: int, src: NodeId, msg: PeerMessage, fx: EffectsBuilder) -> None:
        self.last_now = now
        src_index = self.config.index_of(src)
        match msg:
            case Prepare():
                self._on_prepare(now, src, msg, fx)
            case Promise():
                self._on_promise(now, src, src_index, msg, fx)
            case Accept():
                self._on_accept(now, src, src_index, msg, fx)
            case Accepted():
                self._on_accepted(now, src_index, msg, fx)
            case Heartbeat():
                self._on_heartbeat(now, src, src_index, msg, fx)
            case HeartbeatAck():
                self._on_heartbeat_ack(now, src_index, msg, fx)
            case Handover():
                self._on_handover(now, msg, fx)
            case LearnRequest():
                self._on_learn_request(src, msg, fx)
            case LearnReply():
                self._on_learn_reply(now, src, msg, fx)
            case SnapshotRequest():
                self._on_snapshot_request(src, msg, fx)
            case SnapshotChunk():
                self._on_snapshot_chunk(now, src, msg, fx)
            case _:
                assert_never(msg)

    def _see_ballot(self, ballot: int) -> None:
        self.max_seen = max(self.max_seen, ballot)

    def _lease_holder_name(self) -> NodeId | None:
        b = self.acceptor.lease_ballot
        if b == NO_BALLOT:
            return None
        return self.config.replicas[owner_index(b)]

    def _on_prepare(self, now: int, src: NodeId, msg: Prepare, fx: EffectsBuilder) -> None:
        self._see_ballot(msg.ballot)
        promise = self.acceptor.on_prepare(
            ballot=msg.ballot,
            from_instance=msg.from_instance,
            now_ms=now,
            applied=self.learner.applied,
            master_name=self._lease_holder_name(),
            fx=fx,
        )
        fx.send(src, promise)
        if promise.ok:
            if self.role is not Role.FOLLOWER and msg.ballot != self.ballot:
                # Our own acceptor now refuses our ballot: we cannot lead with it.
                self._step_down(now, "preempted", fx)
            if self.role is Role.FOLLOWER:
                # Give the candidate time to finish before competing with it.
                self.not_before = max(self.not_before, now + 2 * self.config.accept_timeout_ms)

    def _on_accept(
        self, now: int, src: NodeId, src_index: int, msg: Accept, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.ballot)
        ok = self.acceptor.on_accept(
            ballot=msg.ballot,
            instance=msg.instance,
            value=msg.value,
            now_ms=now,
            applied=self.learner.applied,
            fx=fx,
        )
        if ok:
            self._follow(now, src_index, msg.ballot, fx)
            self._on_commit(now, src, msg.ballot, msg.commit, fx)
        fx.send(
            src,
            Accepted(
                group=self.group,
                ballot=msg.ballot,
                instance=msg.instance,
                ok=ok,
                promised=self.acceptor.promised,
                applied=self.learner.applied,
            ),
        )

    def _on_heartbeat(
        self, now: int, src: NodeId, src_index: int, msg: Heartbeat, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.ballot)
        ok = msg.ballot >= self.acceptor.promised
        if ok:
            self.acceptor.grant_lease(msg.ballot, now)
            self._follow(now, src_index, msg.ballot, fx)
            self._on_commit(now, src, msg.ballot, msg.commit, fx)
            self.learner.verify_peer(msg.applied, msg.checksum)
        fx.send(
            src,
            HeartbeatAck(
                group=self.group,
                ballot=msg.ballot,
                seq=msg.seq,
                ok=ok,
                promised=self.acceptor.promised,
                applied=self.learner.applied,
            ),
        )

    def _follow(self, now: int, src_index: int, ballot: int, fx: EffectsBuilder) -> None:
        """A master with ``ballot`` (>= our promise) is active: follow it."""
        if self.role is not Role.FOLLOWER and ballot != self.ballot:
            self._step_down(now, "preempted", fx)
        self.known_master = src_index
        self.heard_master_at = now

    def _on_commit(
        self, now: int, src: NodeId, ballot: int, commit: int, fx: EffectsBuilder
    ) -> None:
        """The master of ``ballot`` says every instance <= ``commit`` is chosen."""
        learner = self.learner
        if commit <= learner.applied:
            return
        self.commit_seen = max(self.commit_seen, commit)
        instance = learner.applied + 1
        limit = min(commit, learner.applied + learner.horizon)
        while instance <= limit:
            if instance not in learner.chosen:
                rec = self.acceptor.read(instance)
                # Our accepted value is the chosen one if we accepted it from this very
                # ballot: a master proposes one value per instance.
                if rec is None or not (rec.chosen or rec.ballot == ballot):
                    break
                learner.mark_chosen(instance, rec.value, fx)
            instance += 1
        self._advance(now, fx)
        if learner.applied < commit:
            self._request_learn(now, src, fx)

    # -- leader side of phase 2 and the lease --------------------------------------------------

    def _on_accepted(self, now: int, src_index: int, msg: Accepted, fx: EffectsBuilder) -> None:
        self._see_ballot(msg.promised)
        self.peer_applied[src_index] = max(self.peer_applied[src_index], msg.applied)
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        if not msg.ok:
            if msg.promised > self.ballot:
                self._step_down(now, "preempted", fx)
            return
        self.peer_ack_at[src_index] = now
        inf = self.inflight.get(msg.instance)
        if inf is None:
            return
        inf.acks |= bit(src_index)
        if is_quorum(inf.acks, self.n):
            self._instance_chosen(now, msg.instance, fx)

    def _instance_chosen(self, now: int, instance: int, fx: EffectsBuilder) -> None:
        inf = self.inflight.pop(instance)
        # Acceptors grant the lease promise when they accept, like for heartbeats.
        self.lease_until = max(self.lease_until, master_lease_until(inf.first_sent_at, self.config))
        if not self.learner.mark_chosen(instance, inf.value, fx):
            raise InvariantViolation(f"group {self.group}: instance {instance} beyond horizon")
        self._advance(now, fx)
        self._pump(now, fx, slot_freed=True)

    def _heartbeat(self, now: int, fx: EffectsBuilder) -> None:
        cfg = self.config
        self.hb_seq += 1
        seq = self.hb_seq
        self.hb_rounds[seq] = [now, bit(self.my_index)]
        useful_after = now - cfg.lease_effective_ms()
        rounds_max = cfg.lease_ms // cfg.heartbeat_ms + 2
        for s in sorted(self.hb_rounds):
            if self.hb_rounds[s][0] <= useful_after or len(self.hb_rounds) > rounds_max:
                del self.hb_rounds[s]
        self.acceptor.grant_lease(self.ballot, now)
        msg = Heartbeat(
            group=self.group,
            ballot=self.ballot,
            seq=seq,
            commit=self.learner.applied,
            applied=self.learner.applied,
            checksum=self.learner.checksum,
        )
        for peer in self.peers:
            fx.send(peer, msg)
        self.next_hb_at = now + cfg.heartbeat_ms
        if is_quorum(self.hb_rounds[seq][1], self.n):
            self._lease_round_done(now, seq, fx)

    def _on_heartbeat_ack(
        self, now: int, src_index: int, msg: HeartbeatAck, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.promised)
        self.peer_applied[src_index] = max(self.peer_applied[src_index], msg.applied)
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        if not msg.ok:
            if msg.promised > self.ballot:
                self._step_down(now, "preempted", fx)
            return
        self.peer_ack_at[src_index] = now
        round_ = self.hb_rounds.get(msg.seq)
        if round_ is None:
            return
        round_[1] |= bit(src_index)
        if is_quorum(round_[1], self.n):
            self._lease_round_done(now, msg.seq, fx)

    def _lease_round_done(self, now: int, seq: int, fx: EffectsBuilder) -> None:
        sent_at = self.hb_rounds[seq][0]
        self.lease_until = max(self.lease_until, master_lease_until(sent_at, self.config))
        self._check_mastered(now, fx)
        self._pump(now, fx)

    def _check_mastered(self, now: int, fx: EffectsBuilder) -> None:
        if not self.mastered and self.is_master(now):
            self.mastered = True
            fx.event("master", group=self.group, ballot=self.ballot, state="became")

    # -- candidate ------------------------------------------------------------------------------

    def _campaign(self, now: int, fx: EffectsBuilder) -> None:
        self.known_master = None
        if self.snap is not None:
            # Installing a snapshot: we are far behind and could not lead anyway.
            self.not_before = self.snap.deadline
            return
        ballot = next_ballot(max(self.max_seen, self.acceptor.promised), self.my_index)
        start = self.learner.applied + 1
        own = self.acceptor.on_prepare(
            ballot=ballot,
            from_instance=start,
            now_ms=now,
            applied=self.learner.applied,
            master_name=None,
            fx=fx,
        )
        if not own.ok:
            # Our own acceptor still honours a lease (or just booted): wait it out.
            self._backoff(now, max(own.lease_left_ms, 1))
            return
        self.role = Role.CANDIDATE
        self.ballot = ballot
        self.max_seen = ballot
        fx.event("campaign", group=self.group, ballot=ballot)
        self._start_prepare(now, start, own, fx)

    def _start_prepare(self, now: int, start: int, own: Promise, fx: EffectsBuilder) -> None:
        self.prep_active = True
        self.prep_from = start
        self.prep_ok = bit(self.my_index)
        self.prep_rejects = 0
        self.prep_promises = {self.my_index: own}
        self.prep_deadline = now + self.config.accept_timeout_ms
        self.prep_retries = 0
        self.prep_wait_ms = 0
        msg = Prepare(group=self.group, ballot=self.ballot, from_instance=start)
        for peer in self.peers:
            fx.send(peer, msg)
        if is_quorum(self.prep_ok, self.n):
            self._window_done(now, fx)

    def _prepare_retry(self, now: int, fx: EffectsBuilder) -> None:
        self.prep_retries += 1
        if self.prep_retries > self.config.accept_retries_max:
            self._phase1_failed(now, fx)
            return
        self.prep_deadline = now + self.config.accept_timeout_ms
        msg = Prepare(group=self.group, ballot=self.ballot, from_instance=self.prep_from)
        answered = self.prep_ok | self.prep_rejects
        for i, peer in enumerate(self.config.replicas):
            if peer != self.me and not answered & bit(i):
                fx.send(peer, msg)

    def _phase1_failed(self, now: int, fx: EffectsBuilder) -> None:
        self.prep_active = False
        if self.role is Role.LEADER:
            self._step_down(now, "recovery window failed", fx)
        self._backoff(now, self.prep_wait_ms)

    def _backoff(self, now: int, wait_ms: int) -> None:
        """Campaign failed or was refused: follow, and retry after a randomized delay."""
        self.role = Role.FOLLOWER
        self.prep_active = False
        # At least 1 ms: the election timer must move past ``now`` or the driver would spin.
        self.not_before = now + max(wait_ms, 1)
        self.election_delay = self._draw_election_delay()

    def _on_promise(
        self, now: int, src: NodeId, src_index: int, msg: Promise, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.promised)
        if msg.behind:
            # The peer truncated its log above our first unchosen instance: catch up.
            self._request_learn(now, src, fx)
        if not self.prep_active or msg.ballot != self.ballot or msg.from_instance != self.prep_from:
            return
        if msg.ok:
            if src_index not in self.prep_promises:
                self.prep_promises[src_index] = msg
                self.prep_ok |= bit(src_index)
            if msg.chosen_upto > self.learner.applied:
                self.commit_seen = max(self.commit_seen, msg.chosen_upto)
        else:
            self.prep_rejects |= bit(src_index)
            self.prep_wait_ms = max(self.prep_wait_ms, msg.lease_left_ms)
            if msg.master is not None and msg.lease_left_ms > 0:
                self.known_master = self.config.index_of(msg.master)
            if msg.promised > self.ballot or quorum_impossible(self.prep_rejects, self.n):
                self._phase1_failed(now, fx)
                return
        if is_quorum(self.prep_ok, self.n):
            self._window_done(now, fx)

    def _window_done(self, now: int, fx: EffectsBuilder) -> None:
        """A quorum promised for [prep_from, ...): decide what to propose in that window."""
        self.prep_active = False
        cfg = self.config
        start = self.prep_from
        promises = [self.prep_promises[i] for i in sorted(self.prep_promises)]
        end = start + cfg.learn_chunk_max
        final = True
        for p in promises:
            if p.covered_to is not None:
                final = False
                end = min(end, p.covered_to)
        best: dict[int, AcceptedEntry] = {}
        chosen: dict[int, bytes] = {}
        for p in promises:
            for e in p.entries:
                if e.instance < start or e.instance >= end:
                    continue
                if e.chosen:
                    other = chosen.get(e.instance)
                    if other is not None and other != e.value:
                        raise InvariantViolation(
                            f"group {self.group} instance {e.instance}: peers report two "
                            "different chosen values"
                        )
                    chosen[e.instance] = e.value
                b = best.get(e.instance)
                if b is None or e.ballot > b.ballot:
                    best[e.instance] = e
                elif e.ballot == b.ballot and e.ballot != NO_BALLOT and e.value != b.value:
                    raise InvariantViolation(
                        f"group {self.group} instance {e.instance}: two values accepted "
                        f"under ballot {e.ballot}"
                    )
        last = max(best, default=start - 1) if final else end - 1
        if self.role is Role.CANDIDATE:
            self._become_leader(now, fx)
        for instance in range(start, last + 1):
            if self.learner.is_chosen(instance):
                continue
            value = chosen.get(instance)
            if value is not None and self.learner.mark_chosen(instance, value, fx):
                self.acceptor.write_chosen(instance, value, fx)
                continue
            entry = best.get(instance)
            # The highest-ballot accepted value may have been chosen: re-propose it as is.
            # Nothing accepted in a quorum: nothing was chosen, fill the gap with a no-op.
            self.recovery.append((instance, None if entry is None else entry.value))
        self.next_instance = max(self.next_instance, last + 1)
        if final:
            self.next_window = None
            self.serving_from = self.next_instance
        else:
            self.next_window = end
        self._advance(now, fx)
        self._pump(now, fx)

    def _become_leader(self, now: int, fx: EffectsBuilder) -> None:
        self.role = Role.LEADER
        self.known_master = self.my_index
        self.leader_since = now
        self.lease_until = 0
        self.hb_rounds.clear()
        self.recovery.clear()
        self.inflight.clear()
        self.next_window = None
        self.serving_from = None
        self.mastered = False
        self.handing_over = False
        self.next_instance = self.learner.applied + 1
        self.peer_ack_at = [None] * self.n
        fx.event("master", group=self.group, ballot=self.ballot, state="elected")
        self._heartbeat(now, fx)

    # -- proposing --------------------------------------------------------------------------------

    def _room(self, instance: int) -> bool:
        """The pipeline bound: at most pipeline_max instances beyond the applied prefix."""
        return instance <= self.learner.applied + self.config.pipeline_max

    def _batch_due(self, now: int, *, slot_freed: bool = False) -> bool:
        """Whether the pending values (at least one) may leave as a batch now, room in the
        pipeline permitting: when an instance was just chosen (``slot_freed``), when nothing
        is in flight, when the batch is full, or once its oldest value has waited
        ``batch_delay_ms`` (so always with ``batch_delay_ms = 0``)."""
        cfg = self.config
        return (
            slot_freed
            or cfg.batch_delay_ms == 0
            or self.next_instance <= self.learner.applied + 1
            or len(self.pending) >= cfg.batch_items_max
            or self.pending_bytes >= cfg.batch_bytes_max
            or now >= self.pending[0].at + cfg.batch_delay_ms
        )

    def _can_batch(self) -> bool:
        return (
            self.role is Role.LEADER
            and not self.handing_over
            and not self.prep_active
            and self.next_window is None
            and not self.recovery
            and self.serving_from is not None
        )

    def _pump(self, now: int, fx: EffectsBuilder, *, slot_freed: bool = False) -> None:
        """Fill the pipeline: recovery values first, then batches of client values.
        ``slot_freed``: an instance was just chosen, pending values leave without waiting."""
        cfg = self.config
        learner = self.learner
        while self.role is Role.LEADER and not self.prep_active:
            if self.recovery:
                instance, value = self.recovery[0]
                if not self._room(instance):
                    break
                self.recovery.popleft()
                if learner.is_chosen(instance) or instance in self.inflight:
                    continue
                if value is None:
                    value = encode_entry([], learner.applied, learner.checksum)
                self._propose(now, instance, value, (), fx)
                continue
            if self.next_window is not None:
                if not self.inflight:
                    self._next_window(now, fx)
                break
            if self.handing_over:
                self._maybe_finish_handover(now, fx)
                break
            if not self.pending or not self._can_batch() or now >= self.lease_until:
                break
            instance = self.next_instance
            if not self._room(instance) or not self._batch_due(now, slot_freed=slot_freed):
                break
            values: list[bytes] = []
            calls: list[int] = []
            size = 0
            while (
                self.pending
                and len(values) < cfg.batch_items_max
                and (not values or size + len(self.pending[0].value) <= cfg.batch_bytes_max)
            ):
                p = self.pending.popleft()
                values.append(p.value)
                calls.append(p.call_id)
                size += len(p.value)
            self.pending_bytes -= size
            self.next_instance += 1
            value = encode_entry(values, learner.applied, learner.checksum)
            self._propose(now, instance, value, tuple(calls), fx)

    def _propose(
        self, now: int, instance: int, value: bytes, calls: tuple[int, ...], fx: EffectsBuilder
    ) -> None:
        if not self.acceptor.on_accept(
            ballot=self.ballot,
            instance=instance,
            value=value,
            now_ms=now,
            applied=self.learner.applied,
            fx=fx,
        ):
            raise InvariantViolation(f"group {self.group}: leader's own acceptor refused")
        if calls:
            self.waiting[instance] = _Waiting(value=value, calls=calls)
        # The own vote counts only once the accept just written is durable: it comes back as
        # an Accepted sent to this node, which the driver holds like any output. So the
        # Accepts may leave at once, while that write syncs (see "Early Accepts" above).
        inf = _Inflight(value=value, acks=0, sent_at=now, first_sent_at=now)
        self.inflight[instance] = inf
        msg = Accept(
            group=self.group,
            ballot=self.ballot,
            instance=instance,
            value=value,
            commit=self.learner.applied,
        )
        for peer in self.peers:
            fx.send(peer, msg, early=True)
        fx.send(
            self.me,
            Accepted(
                group=self.group,
                ballot=self.ballot,
                instance=instance,
                ok=True,
                promised=self.ballot,
                applied=self.learner.applied,
            ),
        )

    def _next_window(self, now: int, fx: EffectsBuilder) -> None:
        """Recovery continues: promise the next window with the same ballot."""
        start = self.next_window
        if start is None:
            return
        start = max(start, self.learner.applied + 1)
        own = self.acceptor.on_prepare(
            ballot=self.ballot,
            from_instance=start,
            now_ms=now,
            applied=self.learner.applied,
            master_name=None,
            fx=fx,
        )
        if not own.ok:
            self._step_down(now, "recovery window refused", fx)
            return
        self.next_window = None
        self._start_prepare(now, start, own, fx)

    def on_propose(self, now: int, call_id: int, value: bytes, fx: EffectsBuilder) -> None:
        self.last_now = now
        cfg = self.config
        g = self.group
        if len(value) > cfg.value_bytes_max:
            fx.reply(call_id, ProposeRejected(group=g, reason="value too large"))
            return
        if self.role is not Role.LEADER or self.handing_over:
            master = (
                self.config.replicas[self.preferred_index]
                if self.handing_over
                else self.master_of()
            )
            fx.reply(call_id, Redirect(group=g, master=master))
            return
        if (
            len(self.pending) >= cfg.pending_max
            or self.pending_bytes + len(value) > cfg.pending_bytes_max
        ):
            fx.reply(call_id, ProposeRejected(group=g, reason="overloaded"))
            return
        self.pending.append(_Pending(call_id=call_id, value=value, at=now))
        self.pending_bytes += len(value)
        # Proposed at once if the pipeline is idle or the batch full (see the module docstring);
        # otherwise it waits for an instance to be chosen or for its deadline.
        if self._batch_due(now):
            self._pump(now, fx)

    # -- applying ---------------------------------------------------------------------------------

    def _advance(self, now: int, fx: EffectsBuilder) -> None:
        """Apply what is ready, answer the clients waiting on it, checkpoint."""
        done = self.learner.apply_ready(fx)
        if done:
            self._answer(done, fx)
            self._maybe_truncate(fx)
            if self.role is Role.LEADER:
                self._check_mastered(now, fx)

    def _answer(self, done: list[Applied], fx: EffectsBuilder) -> None:
        for a in done:
            w = self.waiting.pop(a.instance, None)
            if w is None:
                continue
            if w.value != a.value:
                raise InvariantViolation(
                    f"group {self.group} instance {a.instance}: applied value differs from "
                    "the one proposed for waiting clients"
                )
            for slot, call_id in enumerate(w.calls):
                fx.reply(
                    call_id,
                    ProposeOk(
                        group=self.group, instance=a.instance, slot=slot, result=a.results[slot]
                    ),
                )

    def _maybe_truncate(self, fx: EffectsBuilder) -> None:
        cfg = self.config
        applied = self.learner.applied
        acc = self.acceptor
        # At each multiple of checkpoint_every (the state machine's durable state plus the
        # applied record are the checkpoint), drop the log below it, keeping log_hold
        # instances for lagging peers to catch up from without a snapshot.
        checkpoint = applied - applied % cfg.checkpoint_every
        new_start = checkpoint - cfg.log_hold + 1
        if acc.truncate_below(new_start, fx):
            fx.event("truncated", group=self.group, log_start=new_start)

    # -- stepping down and handover -----------------------------------------------------------

    def _step_down(self, now: int, reason: str, fx: EffectsBuilder) -> None:
        g = self.group
        was_leader = self.role is Role.LEADER
        for instance in sorted(self.waiting):
            if not self.learner.is_chosen(instance):
                # Sent out for acceptance: a later master may still choose it.
                for call_id in self.waiting.pop(instance).calls:
                    fx.reply(call_id, ProposeUnknown(group=g, reason=reason))
        while self.pending:
            # Never sent out: definitely not chosen.
            fx.reply(self.pending.popleft().call_id, Redirect(group=g, master=None))
        self.pending_bytes = 0
        self.inflight.clear()
        self.recovery.clear()
        self.next_window = None
        self.prep_active = False
        self.hb_rounds.clear()
        self.lease_until = 0
        self.serving_from = None
        self.handing_over = False
        self.mastered = False
        self.role = Role.FOLLOWER
        if self.known_master == self.my_index:
            self.known_master = None
        self.heard_master_at = now
        self.election_delay = self._draw_election_delay()
        if was_leader:
            fx.event("master", group=g, ballot=self.ballot, state="lost", reason=reason)

    def _consider_handover(self, now: int) -> None:
        cfg = self.config
        p = self.preferred_index
        if self.handing_over or p == self.my_index or not self.is_master(now):
            return
        if now - self.leader_since < cfg.handover_after_ms:
            return
        acked = self.peer_ack_at[p]
        if acked is None or now - acked > 2 * cfg.heartbeat_ms:
            return
        if self.peer_applied[p] + cfg.handover_lag_max < self.learner.applied:
            return
        self.handing_over = True

    def _maybe_finish_handover(self, now: int, fx: EffectsBuilder) -> None:
        if self.inflight or self.recovery or self.next_window is not None:
            return
        g = self.group
        successor = self.config.replicas[self.preferred_index]
        while self.pending:
            fx.reply(self.pending.popleft().call_id, Redirect(group=g, master=successor))
        self.pending_bytes = 0
        ballot = self.ballot
        # Stop serving first (step_down drops the lease), then release the acceptors' lease
        # promises: nobody can rely on this ballot's lease any more.
        self._step_down(now, "handover", fx)
        self.acceptor.release_lease(ballot)
        msg = Handover(group=g, ballot=ballot, successor=successor)
        for peer in self.peers:
            fx.send(peer, msg)

    def _on_handover(self, now: int, msg: Handover, fx: EffectsBuilder) -> None:
        if msg.ballot < self.acceptor.promised:
            return  # stale: a newer ballot is in charge
        self.acceptor.release_lease(msg.ballot)
        if self.known_master is not None and self.known_master == owner_index(msg.ballot):
            self.known_master = None
        if self.role is not Role.FOLLOWER:
            return
        if msg.successor == self.me:
            self._campaign(now, fx)
        else:
            self.heard_master_at = now  # let the successor win

    # -- catch-up ---------------------------------------------------------------------------------

    def _learn_source(self) -> NodeId | None:
        if self.known_master is not None and self.known_master != self.my_index:
            return self.config.replicas[self.known_master]
        return None

    def _request_learn(self, now: int, src: NodeId, fx: EffectsBuilder) -> None:
        if self.snap is not None or (self.learn_deadline is not None and now < self.learn_deadline):
            return
        self.learn_deadline = now + self.config.learn_timeout_ms
        fx.send(
            src,
            LearnRequest(
                group=self.group,
                from_instance=self.learner.applied + 1,
                count=self.config.learn_chunk_max,
            ),
        )

    def _on_learn_request(self, src: NodeId, msg: LearnRequest, fx: EffectsBuilder) -> None:
        cfg = self.config
        learner = self.learner
        start = max(msg.from_instance, 1)
        entries: list[LearnedEntry] = []
        if start >= self.acceptor.log_start:
            end = min(start + min(msg.count, cfg.learn_chunk_max), learner.applied + 1)
            size = 0
            expected = start
            for key, rec in self.view.scan(
                LOG, log_key(self.group, start), log_key(self.group, end)
            ):
                instance = instance_of_log_key(key)
                if instance != expected or (entries and size >= cfg.learn_bytes_max):
                    break
                value = decode_log(rec).value
                entries.append(LearnedEntry(instance=instance, value=value))
                size += len(value)
                expected += 1
        fx.send(
            src,
            LearnReply(
                group=self.group,
                from_instance=start,
                entries=tuple(entries),
                chosen_upto=learner.applied,
                log_start=self.acceptor.log_start,
                applied=learner.applied,
                checksum=learner.checksum,
            ),
        )

    def _on_learn_reply(self, now: int, src: NodeId, msg: LearnReply, fx: EffectsBuilder) -> None:
        learner = self.learner
        self.learn_deadline = None
        self.commit_seen = max(self.commit_seen, msg.chosen_upto)
        for e in msg.entries:
            if e.instance <= learner.applied:
                continue
            if not learner.mark_chosen(e.instance, e.value, fx):
                break
            self.acceptor.write_chosen(e.instance, e.value, fx)
        self._advance(now, fx)
        learner.verify_peer(msg.applied, msg.checksum)
        if learner.applied + 1 < msg.log_start and learner.applied < msg.chosen_upto:
            self._start_snapshot(now, src, fx)
        elif learner.applied < self.commit_seen and msg.entries:
            self._request_learn(now, src, fx)

    # -- snapshots --------------------------------------------------------------------------------

    def _start_snapshot(self, now: int, src: NodeId, fx: EffectsBuilder) -> None:
        if self.snap is not None:
            return
        if self.role is not Role.FOLLOWER:
            if self.role is Role.LEADER:
                return  # a leader recovered from a quorum; it never installs snapshots
            self._backoff(now, 0)
        self.snap = _SnapshotIn(src=src, deadline=now + self.config.learn_timeout_ms)
        fx.event("snapshot_requested", group=self.group, source=src)
        fx.send(src, SnapshotRequest(group=self.group, instance=0, offset=0))

    def _snapshot_retry(self, now: int, fx: EffectsBuilder) -> None:
        s = self.snap
        if s is None:
            return
        s.retries += 1
        if s.retries > self.config.accept_retries_max:
            self.snap = None  # give up; the next commit or promise we see starts over
            return
        s.deadline = now + self.config.learn_timeout_ms
        fx.send(
            s.src,
            SnapshotRequest(group=self.group, instance=s.instance, offset=len(s.data)),
        )

    def _on_snapshot_request(self, src: NodeId, msg: SnapshotRequest, fx: EffectsBuilder) -> None:
        learner = self.learner
        snap = self.snapshots.get(self.group)
        offset = msg.offset
        if msg.instance == 0 or snap is None or snap.instance != msg.instance:
            offset = 0
            if snap is None or snap.instance != learner.applied:
                data = learner.sm.snapshot()
                snap = SnapshotOut(
                    instance=learner.applied,
                    checksum=learner.checksum,
                    data=data,
                    digest=digest(data),
                )
                self.snapshots.put(self.group, snap)
        offset = min(max(offset, 0), len(snap.data))
        fx.send(
            src,
            SnapshotChunk(
                group=self.group,
                instance=snap.instance,
                checksum=snap.checksum,
                total=len(snap.data),
                digest=snap.digest,
                offset=offset,
                data=snap.data[offset : offset + self.config.snapshot_chunk_bytes],
            ),
        )

    def _on_snapshot_chunk(
        self, now: int, src: NodeId, msg: SnapshotChunk, fx: EffectsBuilder
    ) -> None:
        s = self.snap
        if s is None or src != s.src:
            return
        if self.role is not Role.FOLLOWER or msg.instance <= self.learner.applied:
            self.snap = None  # we got past it some other way
            return
        if msg.offset == 0:
            if msg.total > self.config.snapshot_bytes_max:
                fx.event("snapshot_too_large", group=self.group, total=msg.total)
                self.snap = None
                return
            s.instance = msg.instance
            s.total = msg.total
            s.checksum = msg.checksum
            s.digest = msg.digest
            s.data = bytearray()
        elif msg.instance != s.instance or msg.offset != len(s.data):
            return  # stale or duplicate chunk
        s.data += msg.data
        s.retries = 0
        s.deadline = now + self.config.learn_timeout_ms
        if len(s.data) < s.total:
            fx.send(src, SnapshotRequest(group=self.group, instance=s.instance, offset=len(s.data)))
            return
        data = bytes(s.data)
        if len(data) != s.total or digest(data) != s.digest:
            fx.event("snapshot_corrupt", group=self.group, instance=s.instance)
            s.data = bytearray()
            fx.send(src, SnapshotRequest(group=self.group, instance=0, offset=0))
            return
        self.snap = None
        self.learner.install(s.instance, s.checksum, data, fx)
        self.acceptor.truncate_below(s.instance + 1, fx)
        for instance in [i for i in sorted(self.waiting) if i <= s.instance]:
            for call_id in self.waiting.pop(instance).calls:
                fx.reply(call_id, ProposeUnknown(group=self.group, reason="snapshot installed"))
        fx.event("snapshot_installed", group=self.group, instance=s.instance, checksum=s.checksum)
        self._advance(now, fx)
        if self.learner.applied < self.commit_seen:
            self._request_learn(now, src, fx)

    def finish(self, fx: EffectsBuilder) -> None:
        self.learner.flush(fx)
        self.acceptor.end_step()
