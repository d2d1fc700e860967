"""One Paxos group on one replica: roles, election, master lease, proposer.

``Group`` combines the group's ``Acceptor`` (durable Paxos state), ``Learner`` (in-order
apply) and ``CatchUp`` (learning missed values and snapshots from peers, ``catchup.py``) with
the volatile roles, whose state lives in ``roles.py`` (``Phase1`` while a round of phase 1
runs, ``Leadership`` while leading; dropped as a whole when the role ends):

* follower: acks the master, learns its commit index, fetches missing chosen values and
  snapshots; when the master is silent for a lease it first asks its peers (pre-vote) and
  campaigns only once a quorum says it honours no master's lease any more;
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

Pre-vote: a follower whose election timer fires raises no ballot, not even its own
acceptor's promise, before a quorum (itself included) answered a ``PreVote`` saying it honours
no master's lease. Without it, a replica that was paused or cut off, and so heard no master
for a lease, would campaign at once on coming back: its own acceptor would promise the new
ballot, refuse the live master's next heartbeat, and the refusal would depose a master that a
majority still follows (every group it leads stops for an election). A replica that hears a
live master refuses, so a quorum of grants exists only when no lease majority does. Answering
a ``PreVote`` changes nothing, so it needs no persistence.

Only a leader that holds the lease and has applied everything up to the end of its recovery
is *master*: it alone proposes client values and serves. Every handler takes the node's
monotonic time ``now`` (ms) and appends its writes, sends, replies and trace events to the
step's ``EffectsBuilder``. ``check_invariants`` states what holds between any two steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, assert_never

from pxq.effects import BlankStorage, EffectsBuilder, InvariantViolation, NodeId, Rng, StorageView
from pxq.paxos.acceptor import Acceptor
from pxq.paxos.ballot import BALLOT_MAX, NO_BALLOT, next_ballot, owner_index
from pxq.paxos.catchup import CatchUp, SnapshotCache
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
    LearnReply,
    LearnRequest,
    PeerMessage,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    ProposeOk,
    ProposeRejected,
    ProposeUnknown,
    Redirect,
    RepairQuery,
    RepairReply,
    SnapshotChunk,
    SnapshotRequest,
)
from pxq.paxos.quorum import bit, is_quorum, quorum_impossible
from pxq.paxos.records import (
    KIND_APPLIED,
    KIND_LOG_START,
    KIND_MEMBERS,
    KIND_PROMISE,
    LOG,
    META,
    REPAIR_STATE,
    REPAIR_VOTES,
    decode_log,
    encode_entry,
    encode_u64,
    instance_of_log_key,
    log_key,
    meta_key,
)
from pxq.paxos.repair import GroupDamage, Repair, log_end, read_flags, read_members
from pxq.paxos.roles import Inflight, Leadership, Pending, Phase1, PreVoteRound, Role
from pxq.paxos.sm import StateMachine

ROUND_TRIP_MAX_FRACTION: Final = 4
"""The round-trip estimate is capped at ``lease_ms`` / this (a late answer after a partition
must not stretch the timers for long; a link slower than that cannot keep a lease anyway)."""

PRE_VOTE_ROUNDS_TIMED: Final = 4
"""How many recent pre-vote rounds keep their send time, to time late answers."""


@dataclass(slots=True)
class _Waiting:
    """Client calls (one per slot) answered when ``instance`` is applied."""

    value: bytes
    calls: tuple[int, ...]


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
        """The highest instance this replica heard is chosen (from masters and peers)."""
        self.catchup = CatchUp(
            group=group,
            config=config,
            view=view,
            acceptor=self.acceptor,
            learner=self.learner,
            snapshots=snapshots,
            host=self,
        )
        self.repair = Repair(group, config, self.me, self.peers)
        """What this group lost and is re-learning from its peers (``repair.py``)."""
        self.pre_vote: PreVoteRound | None = None
        """A follower's pre-vote round, while it asks whether it may campaign."""
        self.pre_vote_seq = 0
        """The last pre-vote round number, over this incarnation."""
        self.pre_vote_sent: dict[int, int] = {}
        """When the last few pre-vote rounds were sent (seq -> time): even a late answer
        measures a round trip."""
        self.round_trip_ms = 0
        """The longest round trip to the peers seen lately (pre-vote answers, heartbeat acks),
        at most ``ROUND_TRIP_MAX_FRACTION`` of the lease: it stretches the retransmission and
        election timers above a slow link's round trip (``_round_timeout``)."""
        self.phase1: Phase1 | None = None
        """A round of phase 1 (a candidate's, or a leader's next recovery window)."""
        self.leadership: Leadership | None = None
        """Set exactly while the role is leader."""
        self.hb_seq = 0
        """The last heartbeat sequence number, over all leaderships of this incarnation."""
        self.peer_applied = [0] * self.n
        """Per replica index: the highest applied index it reported in an ack."""
        self.last_now = 0
        """The time of the latest input, for deadlines that depend on it."""
        # client calls waiting for their instance to be applied (any role)
        self.waiting: dict[int, _Waiting] = {}

    # ---------------------------------------------------------------------------------------
    # Queries

    def is_master(self, now: int) -> bool:
        lead = self.leadership
        return (
            lead is not None
            and not lead.handing_over
            and lead.serving_from is not None
            and self.learner.applied >= lead.serving_from - 1
            and now < lead.lease_until
            and self.learner.halted is None
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
        lead = self.leadership
        if lead is not None:
            times.append(lead.next_hb_at)
            times.append(self._give_up_at(lead))
            if lead.mastered:
                times.append(lead.lease_until)  # to report the lapse
            if self.phase1 is not None:
                times.append(self.phase1.deadline)
            if lead.inflight:
                times.append(min(f.sent_at for f in lead.inflight.values()) + self._round_timeout())
            # Without a valid lease the pump cannot cut a batch: a renewal will.
            if (
                lead.pending
                and self._can_batch(lead)
                and self._room(lead.next_instance)
                and self.last_now < lead.lease_until
            ):
                # The batch's upper bound. (Steps that free a slot or find the pipeline idle
                # pump at once; if some path left a due batch behind, the tick cuts it.)
                times.append(min(lead.pending[0].at + cfg.batch_delay_ms, lead.lease_until))
        elif self.phase1 is not None:
            times.append(self.phase1.deadline)  # a candidate
        else:
            # While a pre-vote round runs, the election timer (already due) waits for it.
            pre_vote = self.pre_vote
            times.append(self._election_at() if pre_vote is None else pre_vote.deadline)
            catchup = self.catchup.deadline()
            if catchup is not None:
                times.append(catchup)
            if self.repair.deadline is not None:
                times.append(self.repair.deadline)
        return min(times)

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` unless the state is one a step can leave behind.

        Cheap (no storage reads, nothing proportional to the log or to the waiting clients)
        and side-effect free: the simulator calls it after every step.
        """
        g = self.group
        learner = self.learner
        applied = learner.applied
        if applied + 1 in learner.chosen:
            raise InvariantViolation(f"group {g}: chosen instance {applied + 1} left unapplied")
        if learner.recent.get(applied) != learner.checksum:
            raise InvariantViolation(f"group {g}: no log checksum kept for applied {applied}")
        promised = self.acceptor.promised
        if not self.ballot <= self.max_seen >= promised:
            raise InvariantViolation(
                f"group {g}: highest ballot seen {self.max_seen} is below ballot {self.ballot} "
                f"or promise {promised}"
            )
        role, phase1, lead = self.role, self.phase1, self.leadership
        if (role is Role.LEADER) != (lead is not None):
            raise InvariantViolation(f"group {g}: {role.value} with leadership {lead is not None}")
        if (role is Role.CANDIDATE and phase1 is None) or (
            role is Role.FOLLOWER and phase1 is not None
        ):
            raise InvariantViolation(f"group {g}: {role.value} with phase 1 {phase1 is not None}")
        if role is not Role.FOLLOWER and self.pre_vote is not None:
            raise InvariantViolation(f"group {g}: {role.value} in a pre-vote round")
        if role is Role.FOLLOWER:
            return
        # Our own acceptor refusing our ballot makes us step down at once.
        if promised != self.ballot or owner_index(self.ballot) != self.my_index:
            raise InvariantViolation(
                f"group {g}: {role.value} of ballot {self.ballot}, own acceptor promised {promised}"
            )
        if self.catchup.snap is not None:
            raise InvariantViolation(f"group {g}: {role.value} installing a snapshot")
        if lead is None:
            return
        cfg = self.config
        if phase1 is not None and (
            lead.serving_from is not None
            or lead.next_window is not None
            or lead.recovery
            or lead.inflight
        ):
            raise InvariantViolation(f"group {g}: next recovery window started too early")
        if lead.serving_from is not None and (
            lead.next_window is not None or lead.serving_from > lead.next_instance
        ):
            raise InvariantViolation(f"group {g}: serving from {lead.serving_from} mid-recovery")
        if (lead.mastered or lead.handing_over) and lead.serving_from is None:
            raise InvariantViolation(f"group {g}: master before the end of recovery")
        for instance in lead.inflight:
            if not instance < lead.next_instance or not self._room(instance):
                raise InvariantViolation(
                    f"group {g}: instance {instance} in flight outside the pipeline "
                    f"(applied {applied}, next {lead.next_instance})"
                )
        if (
            len(lead.pending) > cfg.pending_max
            or not 0 <= lead.pending_bytes <= cfg.pending_bytes_max
            or (lead.pending_bytes and not lead.pending)
        ):
            raise InvariantViolation(
                f"group {g}: {len(lead.pending)} pending values of {lead.pending_bytes} bytes"
            )
        if len(lead.hb_rounds) > cfg.lease_ms // cfg.heartbeat_ms + 2:
            raise InvariantViolation(f"group {g}: {len(lead.hb_rounds)} heartbeat rounds kept")

    # ---------------------------------------------------------------------------------------
    # Boot and timers

    def boot(
        self,
        now: int,
        fx: EffectsBuilder,
        *,
        damage: GroupDamage | None = None,
        blank: bool = False,
        if_blank: BlankStorage = "new",
    ) -> None:
        """Rebuild from storage. ``damage``: the records of this group that failed their
        checksum (never read; repaired, ``repair.py``); ``blank``: the replica's storage
        holds nothing, and ``if_blank`` says what that means (``pxq.effects.Boot``)."""
        self.last_now = now
        g, learner, acc = self.group, self.learner, self.acceptor
        d = damage if damage is not None else GroupDamage()
        flags = REPAIR_VOTES | REPAIR_STATE if d.repair else read_flags(self.view, g)
        if d.promise:
            flags |= REPAIR_VOTES
            fx.delete(META, meta_key(g, KIND_PROMISE))
        if d.applied or d.state:
            flags |= REPAIR_STATE
        if d.applied:
            fx.delete(META, meta_key(g, KIND_APPLIED))
        if d.members:
            fx.delete(META, meta_key(g, KIND_MEMBERS))  # absent: every replica (cautious)
        everyone = self.repair.everyone()
        self.repair.members = everyone if d.members else read_members(self.view, g, everyone)
        acc.load(now, promise_lost=d.promise, start_lost=d.log_start)
        learner.load(state_lost=bool(flags & REPAIR_STATE))
        self.max_seen = acc.promised
        self.heard_master_at = now
        self.not_before = 0
        self.election_delay = self._draw_election_delay()
        # A damaged log record: redundant at or below the applied index (truncate the log
        # above it); above it, a vote this replica may have given (repair the votes).
        truncate_to = 0
        scan_end = learner.applied + 1 + learner.horizon
        for instance in d.instances:
            fx.delete(LOG, log_key(g, instance))
            if not learner.frozen and instance <= learner.applied:
                truncate_to = max(truncate_to, instance + 1)
            else:
                flags |= REPAIR_VOTES
                scan_end = min(scan_end, instance)
        if d.log_start:
            if learner.frozen:
                fx.put(META, meta_key(g, KIND_LOG_START), encode_u64(1))  # install truncates
            else:
                truncate_to = max(truncate_to, learner.applied + 1)
        if truncate_to:
            acc.truncate_below(truncate_to, fx)
        if blank and if_blank == "replace":
            flags |= REPAIR_VOTES
        self.repair.probing = blank and if_blank == "probe"
        self.repair.set_flags(flags, fx)
        if flags or self.repair.probing:
            fx.event(
                "repair",
                group=g,
                state="probe" if self.repair.probing else "started",
                votes=bool(flags & REPAIR_VOTES),
                state_machine=bool(flags & REPAIR_STATE),
            )
            self._repair_tick(now, fx)
        # Values learned as chosen but not applied before the restart: pick them up again.
        start = learner.applied + 1
        if not learner.frozen:
            for key, rec in self.view.scan(LOG, log_key(g, start), log_key(g, scan_end)):
                instance = instance_of_log_key(key)
                r = decode_log(rec, key)
                if instance != start or not r.chosen:
                    break
                learner.mark_chosen(instance, r.value, fx)
                start += 1
        self.advance(now, fx)

    def tick(self, now: int, fx: EffectsBuilder) -> None:
        self.last_now = now
        cfg = self.config
        lead = self.leadership
        if lead is None:
            phase1 = self.phase1
            if phase1 is None:  # a follower
                self.catchup.tick(now, self._learn_source(), fx)
                deadline = self.repair.deadline
                if deadline is not None and now >= deadline:
                    self._repair_tick(now, fx)
                pre_vote = self.pre_vote
                if pre_vote is not None:
                    if now >= pre_vote.deadline:
                        self._pre_vote_failed(now, pre_vote)
                elif now >= self._election_at():
                    self._start_pre_vote(now, fx)
            elif now >= phase1.deadline:  # a candidate
                self._prepare_retry(now, phase1, fx)
            return
        if now >= self._give_up_at(lead):
            self._step_down(now, "lease lost", fx)
            return
        if lead.mastered and not self.is_master(now):
            # The lease lapsed (heartbeat rounds lost). Keep the ballot and keep trying to
            # renew for one more lease; give up only after that.
            lead.mastered = False
            fx.event("master", group=self.group, ballot=self.ballot, state="lapsed")
        if now >= lead.next_hb_at:
            self._heartbeat(now, lead, fx)
            self._consider_handover(now)
        phase1 = self.phase1
        if phase1 is not None and now >= phase1.deadline:
            self._prepare_retry(now, phase1, fx)
        if self.leadership is not lead:
            return  # stepped down (the heartbeat's pump, or the window's phase 1, failed)
        timeout = self._round_timeout()
        for instance in sorted(lead.inflight):
            inf = lead.inflight[instance]
            if self.learner.is_chosen(instance):
                del lead.inflight[instance]
                continue
            if now < inf.sent_at + timeout:
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

    def _give_up_at(self, lead: Leadership) -> int:
        """A leader without a lease for a whole lease_ms steps down (others will have
        started campaigning by then)."""
        return max(lead.lease_until, lead.since) + self.config.lease_ms

    def _learn_source(self) -> NodeId | None:
        """Whom a follower learns missed values from: the master it knows, if not itself."""
        if self.known_master is not None and self.known_master != self.my_index:
            return self.config.replicas[self.known_master]
        return None

    def _election_at(self) -> int:
        return (
            max(self.heard_master_at + self.config.lease_ms, self.not_before) + self.election_delay
        )

    def _draw_election_delay(self) -> int:
        # Competing campaigns must be spread wider than a round trip, or candidates on either
        # side of a slow link preempt each other before either hears the other won.
        jitter = max(self.config.election_jitter_ms, 2 * self.round_trip_ms)
        if self.my_index == self.preferred_index:
            return self.rng.randint(0, jitter // 4)
        return jitter // 4 + self.rng.randint(0, jitter)

    def _round_timeout(self) -> int:
        """How long a round (pre-vote, Prepare, Accept) waits for answers before it is
        retransmitted or given up: ``accept_timeout_ms``, or twice the round trip measured
        lately if that is longer (a round across a link slower than the setting would
        otherwise never complete)."""
        return max(self.config.accept_timeout_ms, 2 * self.round_trip_ms)

    def _note_round_trip(self, sample_ms: int) -> None:
        """A round trip was measured: the estimate jumps up to it at once and decays towards
        shorter ones (an eighth of the way per sample)."""
        rtt = min(sample_ms, self.config.lease_ms // ROUND_TRIP_MAX_FRACTION)
        if rtt >= self.round_trip_ms:
            self.round_trip_ms = rtt
        else:
            self.round_trip_ms = (7 * self.round_trip_ms + rtt) // 8

    # ---------------------------------------------------------------------------------------
    # Messages

    def on_message(self, now: int, src: NodeId, msg: PeerMessage, fx: EffectsBuilder) -> None:
        self.last_now = now
        src_index = self.config.index_of(src)
        if self.repair.probing and not isinstance(msg, RepairQuery | RepairReply):
            return  # blank storage of unknown history: write nothing, vote for nothing yet
        match msg:
            case PreVote():
                self._on_pre_vote(now, src, msg, fx)
            case PreVoteReply():
                self._on_pre_vote_reply(now, src_index, msg, fx)
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
                self.catchup.on_learn_request(src, msg, fx)
            case LearnReply():
                self.catchup.on_learn_reply(now, src, msg, fx)
            case SnapshotRequest():
                self.catchup.on_snapshot_request(src, msg, fx)
            case SnapshotChunk():
                self.catchup.on_snapshot_chunk(now, src, msg, fx)
            case RepairQuery():
                self._on_repair_query(src, msg, fx)
            case RepairReply():
                if self.repair.on_reply(now, src, msg, fx):
                    self._repair_round_done(now, fx)
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
        if not self.repair.voting():
            refusal = Promise(
                group=self.group,
                ballot=msg.ballot,
                from_instance=msg.from_instance,
                ok=False,
                promised=self.acceptor.promised,
            )
            fx.send(src, refusal)
            return
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
                self.pre_vote = None
                self.not_before = max(self.not_before, now + 2 * self._round_timeout())

    def _on_accept(
        self, now: int, src: NodeId, src_index: int, msg: Accept, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.ballot)
        if not self.repair.voting():
            # Repairing: no vote, but learn what the master says is chosen.
            ok = False
            if msg.ballot >= self.acceptor.promised:
                self._follow(now, src_index, msg.ballot, fx)
                self._on_commit(now, src, msg.ballot, msg.commit, fx)
        else:
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
            if self.repair.voting():
                self.acceptor.grant_lease(msg.ballot, now)
            self._follow(now, src_index, msg.ballot, fx)
            self._on_commit(now, src, msg.ballot, msg.commit, fx)
            self.learner.verify_peer(src, msg.applied, msg.checksum, fx)
            # Repairing: learn from the master, but no ack (it counts in no lease quorum).
            ok = self.repair.voting()
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
        self.pre_vote = None
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
        self.advance(now, fx)
        if learner.applied < commit:
            self.catchup.request_learn(now, src, fx)

    # -- leader side of phase 2 and the lease --------------------------------------------------

    def _on_accepted(self, now: int, src_index: int, msg: Accepted, fx: EffectsBuilder) -> None:
        self._see_ballot(msg.promised)
        self.peer_applied[src_index] = max(self.peer_applied[src_index], msg.applied)
        lead = self.leadership
        if lead is None or msg.ballot != self.ballot:
            return
        if not msg.ok:
            if msg.promised > self.ballot:
                self._step_down(now, "preempted", fx)
            return
        lead.peer_ack_at[src_index] = now
        inf = lead.inflight.get(msg.instance)
        if inf is None:
            return
        inf.acks |= bit(src_index)
        if is_quorum(inf.acks, self.n):
            self._instance_chosen(now, lead, msg.instance, fx)

    def _instance_chosen(
        self, now: int, lead: Leadership, instance: int, fx: EffectsBuilder
    ) -> None:
        inf = lead.inflight.pop(instance)
        # Acceptors grant the lease promise when they accept, like for heartbeats.
        lead.lease_until = max(lead.lease_until, master_lease_until(inf.first_sent_at, self.config))
        if not self.learner.mark_chosen(instance, inf.value, fx):
            raise InvariantViolation(f"group {self.group}: instance {instance} beyond horizon")
        self.advance(now, fx)
        self._pump(now, fx, slot_freed=True)

    def _heartbeat(self, now: int, lead: Leadership, fx: EffectsBuilder) -> None:
        cfg = self.config
        self.hb_seq += 1
        seq = self.hb_seq
        rounds = lead.hb_rounds
        rounds[seq] = [now, bit(self.my_index)]
        useful_after = now - cfg.lease_effective_ms()
        rounds_max = cfg.lease_ms // cfg.heartbeat_ms + 2
        for s in sorted(rounds):
            if rounds[s][0] <= useful_after or len(rounds) > rounds_max:
                del rounds[s]
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
        lead.next_hb_at = now + cfg.heartbeat_ms
        if is_quorum(rounds[seq][1], self.n):
            self._lease_round_done(now, lead, seq, fx)

    def _on_heartbeat_ack(
        self, now: int, src_index: int, msg: HeartbeatAck, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.promised)
        self.peer_applied[src_index] = max(self.peer_applied[src_index], msg.applied)
        lead = self.leadership
        if lead is None or msg.ballot != self.ballot:
            return
        if not msg.ok:
            if msg.promised > self.ballot:
                self._step_down(now, "preempted", fx)
            return
        lead.peer_ack_at[src_index] = now
        round_ = lead.hb_rounds.get(msg.seq)
        if round_ is None:
            return
        self._note_round_trip(now - round_[0])
        round_[1] |= bit(src_index)
        if is_quorum(round_[1], self.n):
            self._lease_round_done(now, lead, msg.seq, fx)

    def _lease_round_done(self, now: int, lead: Leadership, seq: int, fx: EffectsBuilder) -> None:
        sent_at = lead.hb_rounds[seq][0]
        lead.lease_until = max(lead.lease_until, master_lease_until(sent_at, self.config))
        self._check_mastered(now, lead, fx)
        self._pump(now, fx)

    def _check_mastered(self, now: int, lead: Leadership, fx: EffectsBuilder) -> None:
        if not lead.mastered and self.is_master(now):
            lead.mastered = True
            fx.event("master", group=self.group, ballot=self.ballot, state="became")

    # -- pre-vote ---------------------------------------------------------------------------------

    def _start_pre_vote(self, now: int, fx: EffectsBuilder) -> None:
        """The election timer fired: ask the peers whether a campaign would be granted."""
        if not self.repair.may_lead() or self.learner.halted is not None:
            self.not_before = now + self.config.lease_ms  # repairing or halted: never lead
            return
        snap = self.catchup.snap
        if snap is not None:
            # Installing a snapshot: we are far behind and could not lead anyway.
            self.not_before = snap.deadline
            return
        lease_left = self.acceptor.lease_until - now
        if lease_left > 0:
            # Our own acceptor still honours a lease (or just booted): wait it out.
            self.backoff(now, lease_left)
            return
        self.pre_vote_seq += 1
        pre_vote = PreVoteRound(
            seq=self.pre_vote_seq,
            granted=bit(self.my_index),
            deadline=now + self._round_timeout(),
        )
        sent = self.pre_vote_sent
        sent[pre_vote.seq] = now
        sent.pop(pre_vote.seq - PRE_VOTE_ROUNDS_TIMED, None)
        self.pre_vote = pre_vote
        fx.event("pre_vote", group=self.group, seq=pre_vote.seq)
        if is_quorum(pre_vote.granted, self.n):
            self._campaign(now, fx)
            return
        msg = PreVote(group=self.group, seq=pre_vote.seq)
        for peer in self.peers:
            fx.send(peer, msg)

    def _on_pre_vote(self, now: int, src: NodeId, msg: PreVote, fx: EffectsBuilder) -> None:
        """Grant iff our acceptor honours no lease: it would promise a new ballot now."""
        acc = self.acceptor
        lease_left = max(0, acc.lease_until - now)
        fx.send(
            src,
            PreVoteReply(
                group=self.group,
                seq=msg.seq,
                granted=lease_left == 0,
                promised=acc.promised,
                lease_left_ms=lease_left,
                master=self._lease_holder_name() if lease_left else None,
            ),
        )

    def _on_pre_vote_reply(
        self, now: int, src_index: int, msg: PreVoteReply, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.promised)
        sent_at = self.pre_vote_sent.get(msg.seq)
        if sent_at is not None:
            self._note_round_trip(now - sent_at)
        pre_vote = self.pre_vote
        if pre_vote is None or msg.seq != pre_vote.seq:
            return  # a late answer to a round already over (it measured the round trip)
        if msg.granted:
            pre_vote.granted |= bit(src_index)
            if is_quorum(pre_vote.granted, self.n):
                self._campaign(now, fx)
            return
        pre_vote.refused |= bit(src_index)
        pre_vote.wait_ms = max(pre_vote.wait_ms, msg.lease_left_ms)
        if msg.master is not None and msg.master in self.config.replicas and msg.lease_left_ms:
            self.known_master = self.config.index_of(msg.master)
        if quorum_impossible(pre_vote.refused, self.n):
            self._pre_vote_failed(now, pre_vote)

    def _pre_vote_failed(self, now: int, pre_vote: PreVoteRound) -> None:
        """No quorum granted: a master still holds a lease (or the peers are unreachable)."""
        self.backoff(now, pre_vote.wait_ms)

    # -- candidate ------------------------------------------------------------------------------

    def _campaign(self, now: int, fx: EffectsBuilder) -> None:
        self.pre_vote = None
        if not self.repair.may_lead() or self.learner.halted is not None:
            self.not_before = now + self.config.lease_ms  # repairing or halted: never lead
            return
        self.known_master = None
        snap = self.catchup.snap
        if snap is not None:
            # Installing a snapshot: we are far behind and could not lead anyway.
            self.not_before = snap.deadline
            return
        ballot = next_ballot(max(self.max_seen, self.acceptor.promised), self.my_index)
        if ballot > BALLOT_MAX:
            # Only a forged ballot gets this high (``validate.py``): no honest replica would
            # accept ours. Report it and wait, rather than propose what peers must refuse.
            fx.alarm("ballot_space_exhausted", group=self.group, ballot=ballot)
            self.not_before = now + self.config.lease_ms
            return
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
            self.backoff(now, max(own.lease_left_ms, 1))
            return
        self.role = Role.CANDIDATE
        self.ballot = ballot
        self.max_seen = ballot
        fx.event("campaign", group=self.group, ballot=ballot)
        self._start_prepare(now, start, own, fx)

    def _start_prepare(self, now: int, start: int, own: Promise, fx: EffectsBuilder) -> None:
        phase1 = Phase1(
            from_instance=start,
            ok=bit(self.my_index),
            promises={self.my_index: own},
            deadline=now + self._round_timeout(),
        )
        self.phase1 = phase1
        msg = Prepare(group=self.group, ballot=self.ballot, from_instance=start)
        for peer in self.peers:
            fx.send(peer, msg)
        if is_quorum(phase1.ok, self.n):
            self._window_done(now, phase1, fx)

    def _prepare_retry(self, now: int, phase1: Phase1, fx: EffectsBuilder) -> None:
        phase1.retries += 1
        if phase1.retries > self.config.accept_retries_max:
            self._phase1_failed(now, phase1, fx)
            return
        phase1.deadline = now + self._round_timeout()
        msg = Prepare(group=self.group, ballot=self.ballot, from_instance=phase1.from_instance)
        answered = phase1.ok | phase1.rejects
        for i, peer in enumerate(self.config.replicas):
            if peer != self.me and not answered & bit(i):
                fx.send(peer, msg)

    def _phase1_failed(self, now: int, phase1: Phase1, fx: EffectsBuilder) -> None:
        self.phase1 = None
        if self.leadership is not None:
            self._step_down(now, "recovery window failed", fx)
        self.backoff(now, phase1.wait_ms)

    def backoff(self, now: int, wait_ms: int) -> None:
        """Campaign failed or was refused: follow, and retry after a randomized delay."""
        self.role = Role.FOLLOWER
        self.phase1 = None
        self.pre_vote = None
        # At least 1 ms: the election timer must move past ``now`` or the driver would spin.
        self.not_before = now + max(wait_ms, 1)
        self.election_delay = self._draw_election_delay()

    def _on_promise(
        self, now: int, src: NodeId, src_index: int, msg: Promise, fx: EffectsBuilder
    ) -> None:
        self._see_ballot(msg.promised)
        if msg.behind:
            # The peer truncated its log above our first unchosen instance: catch up.
            self.catchup.request_learn(now, src, fx)
        phase1 = self.phase1
        if phase1 is None or msg.ballot != self.ballot or msg.from_instance != phase1.from_instance:
            return
        if msg.ok:
            if src_index not in phase1.promises:
                phase1.promises[src_index] = msg
                phase1.ok |= bit(src_index)
            if msg.chosen_upto > self.learner.applied:
                self.commit_seen = max(self.commit_seen, msg.chosen_upto)
        else:
            phase1.rejects |= bit(src_index)
            phase1.wait_ms = max(phase1.wait_ms, msg.lease_left_ms)
            if msg.master is not None and msg.lease_left_ms > 0:
                self.known_master = self.config.index_of(msg.master)
            if msg.promised > self.ballot or quorum_impossible(phase1.rejects, self.n):
                self._phase1_failed(now, phase1, fx)
                return
        if is_quorum(phase1.ok, self.n):
            self._window_done(now, phase1, fx)

    def _window_done(self, now: int, phase1: Phase1, fx: EffectsBuilder) -> None:
        """A quorum promised for [from_instance, ...): decide what to propose in that window."""
        self.phase1 = None
        cfg = self.config
        start = phase1.from_instance
        promises = [phase1.promises[i] for i in sorted(phase1.promises)]
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
        lead = self._become_leader(now, fx) if self.role is Role.CANDIDATE else self.leadership
        if lead is None:
            raise InvariantViolation(f"group {self.group}: a phase 1 round ended while following")
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
            lead.recovery.append((instance, None if entry is None else entry.value))
        lead.next_instance = max(lead.next_instance, last + 1)
        if final:
            lead.next_window = None
            lead.serving_from = lead.next_instance
        else:
            lead.next_window = end
        self.advance(now, fx)
        self._pump(now, fx)

    def _become_leader(self, now: int, fx: EffectsBuilder) -> Leadership:
        lead = Leadership(
            since=now, next_instance=self.learner.applied + 1, peer_ack_at=[None] * self.n
        )
        self.role = Role.LEADER
        self.leadership = lead
        self.known_master = self.my_index
        fx.event("master", group=self.group, ballot=self.ballot, state="elected")
        self._heartbeat(now, lead, fx)
        return lead

    # -- proposing --------------------------------------------------------------------------------

    def _room(self, instance: int) -> bool:
        """The pipeline bound: at most pipeline_max instances beyond the applied prefix."""
        return instance <= self.learner.applied + self.config.pipeline_max

    def _batch_due(self, now: int, lead: Leadership, *, slot_freed: bool = False) -> bool:
        """Whether the pending values (at least one) may leave as a batch now, room in the
        pipeline permitting: when an instance was just chosen (``slot_freed``), when nothing
        is in flight, when the batch is full, or once its oldest value has waited
        ``batch_delay_ms`` (so always with ``batch_delay_ms = 0``)."""
        cfg = self.config
        return (
            slot_freed
            or cfg.batch_delay_ms == 0
            or lead.next_instance <= self.learner.applied + 1
            or len(lead.pending) >= cfg.batch_items_max
            or lead.pending_bytes >= cfg.batch_bytes_max
            or now >= lead.pending[0].at + cfg.batch_delay_ms
        )

    def _can_batch(self, lead: Leadership) -> bool:
        return (
            not lead.handing_over
            and self.phase1 is None
            and lead.next_window is None
            and not lead.recovery
            and lead.serving_from is not None
        )

    def _pump(self, now: int, fx: EffectsBuilder, *, slot_freed: bool = False) -> None:
        """Fill the pipeline: recovery values first, then batches of client values.
        ``slot_freed``: an instance was just chosen, pending values leave without waiting."""
        cfg = self.config
        learner = self.learner
        while (lead := self.leadership) is not None and self.phase1 is None:
            if lead.recovery:
                instance, value = lead.recovery[0]
                if not self._room(instance):
                    break
                lead.recovery.popleft()
                if learner.is_chosen(instance) or instance in lead.inflight:
                    continue
                if value is None:
                    value = encode_entry([], learner.applied, learner.checksum)
                self._propose(now, instance, value, (), fx)
                continue
            if lead.next_window is not None:
                if not lead.inflight:
                    self._next_window(now, lead, lead.next_window, fx)
                break
            if lead.handing_over:
                self._maybe_finish_handover(now, lead, fx)
                break
            if not lead.pending or not self._can_batch(lead) or now >= lead.lease_until:
                break
            instance = lead.next_instance
            if not self._room(instance) or not self._batch_due(now, lead, slot_freed=slot_freed):
                break
            pending = lead.pending
            values: list[bytes] = []
            calls: list[int] = []
            size = 0
            while (
                pending
                and len(values) < cfg.batch_items_max
                and (not values or size + len(pending[0].value) <= cfg.batch_bytes_max)
            ):
                p = pending.popleft()
                values.append(p.value)
                calls.append(p.call_id)
                size += len(p.value)
            lead.pending_bytes -= size
            lead.next_instance += 1
            value = encode_entry(values, learner.applied, learner.checksum)
            self._propose(now, instance, value, tuple(calls), fx)

    def _propose(
        self, now: int, instance: int, value: bytes, calls: tuple[int, ...], fx: EffectsBuilder
    ) -> None:
        lead = self.leadership
        if lead is None:
            raise InvariantViolation(f"group {self.group}: proposing while not leading")
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
        inf = Inflight(value=value, acks=0, sent_at=now, first_sent_at=now)
        lead.inflight[instance] = inf
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

    def _next_window(
        self, now: int, lead: Leadership, next_window: int, fx: EffectsBuilder
    ) -> None:
        """Recovery continues: promise the next window (from ``next_window``) with the same
        ballot."""
        start = max(next_window, self.learner.applied + 1)
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
        lead.next_window = None
        self._start_prepare(now, start, own, fx)

    def on_propose(self, now: int, call_id: int, value: bytes, fx: EffectsBuilder) -> None:
        self.last_now = now
        cfg = self.config
        g = self.group
        if len(value) > cfg.value_bytes_max:
            fx.reply(call_id, ProposeRejected(group=g, reason="value too large"))
            return
        lead = self.leadership
        if lead is None or lead.handing_over:
            master = (
                self.config.replicas[self.preferred_index] if lead is not None else self.master_of()
            )
            fx.reply(call_id, Redirect(group=g, master=master))
            return
        if (
            len(lead.pending) >= cfg.pending_max
            or lead.pending_bytes + len(value) > cfg.pending_bytes_max
        ):
            fx.reply(call_id, ProposeRejected(group=g, reason="overloaded"))
            return
        lead.pending.append(Pending(call_id=call_id, value=value, at=now))
        lead.pending_bytes += len(value)
        # Proposed at once if the pipeline is idle or the batch full (see the module docstring);
        # otherwise it waits for an instance to be chosen or for its deadline.
        if self._batch_due(now, lead):
            self._pump(now, fx)

    # -- applying ---------------------------------------------------------------------------------

    def advance(self, now: int, fx: EffectsBuilder) -> None:
        """Apply what is ready, answer the clients waiting on it, checkpoint."""
        if self.repair.flags:
            self._repair_progress(fx)
        done = self.learner.apply_ready(fx)
        if self.learner.halted is not None and self.role is not Role.FOLLOWER:
            self._step_down(now, "halted", fx)  # evidence of divergence: it must not lead
        if done:
            self._answer(done, fx)
            self._maybe_truncate(fx)
            if self.repair.flags:
                self._repair_progress(fx)
            lead = self.leadership
            if lead is not None:
                self._check_mastered(now, lead, fx)

    def _answer(self, done: list[Applied], fx: EffectsBuilder) -> None:
        for a in done:
            w = self.waiting.pop(a.instance, None)
            if w is None:
                continue
            if w.value != a.value:
                # Another value was chosen where this replica led: divergence, not success.
                for call_id in w.calls:
                    fx.reply(call_id, ProposeUnknown(group=self.group, reason="diverged"))
                self.learner.halt(
                    f"instance {a.instance}: the chosen value is not the one this replica proposed",
                    fx,
                )
                continue
            for slot, call_id in enumerate(w.calls):
                fx.reply(
                    call_id,
                    ProposeOk(
                        group=self.group, instance=a.instance, slot=slot, result=a.results[slot]
                    ),
                )

    def forget_waiting(self, upto: int, reason: str, fx: EffectsBuilder) -> None:
        """Answer the clients waiting on instances <= ``upto``: their outcome is unknown."""
        for instance in [i for i in sorted(self.waiting) if i <= upto]:
            for call_id in self.waiting.pop(instance).calls:
                fx.reply(call_id, ProposeUnknown(group=self.group, reason=reason))

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
        """Follow: drop the role's state (a leader's, a candidate's) and answer its clients."""
        g = self.group
        lead = self.leadership
        for instance in sorted(self.waiting):
            if not self.learner.is_chosen(instance):
                # Sent out for acceptance: a later master may still choose it.
                for call_id in self.waiting.pop(instance).calls:
                    fx.reply(call_id, ProposeUnknown(group=g, reason=reason))
        if lead is not None:
            while lead.pending:
                # Never sent out: definitely not chosen.
                fx.reply(lead.pending.popleft().call_id, Redirect(group=g, master=None))
        self.leadership = None
        self.phase1 = None
        self.pre_vote = None
        self.role = Role.FOLLOWER
        if self.known_master == self.my_index:
            self.known_master = None
        self.heard_master_at = now
        self.election_delay = self._draw_election_delay()
        if lead is not None:
            fx.event("master", group=g, ballot=self.ballot, state="lost", reason=reason)

    def _consider_handover(self, now: int) -> None:
        cfg = self.config
        p = self.preferred_index
        lead = self.leadership
        if lead is None or lead.handing_over or p == self.my_index or not self.is_master(now):
            return
        if now - lead.since < cfg.handover_after_ms:
            return
        acked = lead.peer_ack_at[p]
        if acked is None or now - acked > 2 * cfg.heartbeat_ms:
            return
        if self.peer_applied[p] + cfg.handover_lag_max < self.learner.applied:
            return
        lead.handing_over = True

    def _maybe_finish_handover(self, now: int, lead: Leadership, fx: EffectsBuilder) -> None:
        if lead.inflight or lead.recovery or lead.next_window is not None:
            return
        g = self.group
        successor = self.config.replicas[self.preferred_index]
        while lead.pending:
            fx.reply(lead.pending.popleft().call_id, Redirect(group=g, master=successor))
        lead.pending_bytes = 0
        ballot = self.ballot
        # Stop serving first (step_down drops the lease), then release the acceptors' lease
        # promises: nobody can rely on this ballot's lease any more.
        self._step_down(now, "handover", fx)
        # Redirect clients to the successor from now on (it campaigns on the Handover), not
        # "no master known": a client told that would try the next replica in its list,
        # perhaps an unreachable one, and wait out its request timeout. The hint stays until a
        # master is heard (``_follow``) or this replica campaigns.
        self.known_master = self.preferred_index
        self.acceptor.release_lease(ballot)
        msg = Handover(group=g, ballot=ballot, successor=successor)
        for peer in self.peers:
            fx.send(peer, msg)

    def _on_handover(self, now: int, msg: Handover, fx: EffectsBuilder) -> None:
        if msg.ballot < self.acceptor.promised:
            return  # stale: a newer ballot is in charge
        self.acceptor.release_lease(msg.ballot)
        if self.role is not Role.FOLLOWER:
            if self.known_master is not None and self.known_master == owner_index(msg.ballot):
                self.known_master = None
            return
        if msg.successor == self.me:
            self._campaign(now, fx)
        else:
            # Let the successor win, and send clients to it meanwhile (as the old master does).
            self.known_master = self.config.index_of(msg.successor)
            self.heard_master_at = now

    # -- repair (``repair.py``) -----------------------------------------------------------------

    def _repair_tick(self, now: int, fx: EffectsBuilder) -> None:
        """Ask the peers that have not answered again; fetch a snapshot for a damaged state
        machine (from another peer each time a transfer gives up)."""
        rep = self.repair
        rep.deadline = None
        if rep.round_open():
            rep.ask(now, fx)
        if self.learner.frozen:
            if self.catchup.snap is None:
                peer = self.peers[self.rng.randrange(len(self.peers))]
                self.catchup.start_snapshot(now, peer, fx)
            rep.deadline = now + self.config.learn_timeout_ms

    def _on_repair_query(self, src: NodeId, msg: RepairQuery, fx: EffectsBuilder) -> None:
        rep = self.repair
        member = rep.record_member(src, fx) if msg.join else rep.is_member(src)
        end = log_end(self.view, self.group)
        lead = self.leadership
        if lead is not None:
            end = max(end, lead.next_instance - 1)
        applied = self.learner.applied
        promised = self.acceptor.promised
        reply = RepairReply(
            group=self.group,
            promised=promised,
            log_end=end,
            applied=applied,
            blank=promised == NO_BALLOT and end == 0 and applied == 0 and not rep.flags,
            repairing=not rep.voting(),
            member=member,
        )
        fx.send(src, reply)

    def _repair_round_done(self, now: int, fx: EffectsBuilder) -> None:
        """Every other replica answered: promise the highest ballot any of them holds (at
        least what this replica may have promised), and learn up to the highest instance
        any of them holds (at least any this replica may have voted in)."""
        rep = self.repair
        answers = sorted(rep.answers.items())
        rep.answers.clear()
        rep.deadline = None
        promised = max(a.promised for _, a in answers)
        self._see_ballot(promised)
        self.acceptor.raise_promise(promised, fx)
        rep.upto = max(max(a.log_end, a.applied) for _, a in answers)
        src, best = max(answers, key=lambda item: (item[1].applied, item[0]))
        self.commit_seen = max(self.commit_seen, best.applied)
        fx.event("repair", group=self.group, state="learning", upto=rep.upto, promised=promised)
        if self.learner.applied < best.applied:
            self.catchup.request_learn(now, src, fx)
        if self.learner.frozen:
            rep.deadline = now + self.config.learn_timeout_ms
        self._repair_progress(fx)

    def _repair_progress(self, fx: EffectsBuilder) -> None:
        """Clear what is repaired: the state machine once a snapshot replaced it, the votes
        once everything this replica may have voted in is applied here."""
        rep = self.repair
        flags = rep.flags
        if flags & REPAIR_STATE and not self.learner.frozen:
            flags &= ~REPAIR_STATE
        if flags & REPAIR_VOTES and rep.upto is not None and self.learner.applied >= rep.upto:
            flags &= ~REPAIR_VOTES
            rep.upto = None
        if flags != rep.flags:
            rep.set_flags(flags, fx)
            fx.event(
                "repair",
                group=self.group,
                state="repaired" if not flags else "state_machine_installed",
                applied=self.learner.applied,
            )
        if not self.learner.frozen and not rep.round_open():
            rep.deadline = None

    def finish(self, fx: EffectsBuilder) -> None:
        self.learner.flush(fx)
        self.acceptor.end_step()
