"""The acceptor of one Paxos group: promises, accepted values, the log, the lease promise.

It owns the durable Paxos state of its group (``paxos_meta`` kinds P and S and the
``paxos_log`` table, see ``records.py``) and the two rules of Paxos:

* promise only a ballot >= the one already promised;
* accept only a ballot >= the one promised (raising the promise to it).

Each rule persists its effect as writes in the step that emits the reply; the driver
releases the reply only after those writes are durable.

On top of Paxos it keeps the in-memory *lease promise*: after acking ballot b at local time
t it grants no Prepare of another ballot until t + lease_ms (see ``lease.py``). That promise
is lost on restart, so a booted acceptor grants no Prepare at all for lease_ms.

The storage view shows the writes of earlier steps only (the driver applies a step's writes
after ``step`` returns), so log records written in the current step are also kept in a
small overlay that ``read`` consults first and ``end_step`` clears.
"""

from __future__ import annotations

from pxq.effects import EffectsBuilder, InvariantViolation, StorageCorruption, StorageView
from pxq.paxos.ballot import BALLOT_MAX, NO_BALLOT
from pxq.paxos.config import PaxosConfig
from pxq.paxos.lease import acceptor_lease_until
from pxq.paxos.messages import AcceptedEntry, Promise
from pxq.paxos.records import (
    KIND_LOG_START,
    KIND_PROMISE,
    LOG,
    META,
    LogRecord,
    decode_log,
    decode_u64,
    encode_log,
    encode_u64,
    group_key,
    instance_of_log_key,
    log_key,
    meta_key,
)


class Acceptor:
    """Acceptor state of one group, backed by the replica's storage view."""

    __slots__ = (
        "config",
        "group",
        "lease_ballot",
        "lease_until",
        "log_start",
        "overlay",
        "promised",
        "view",
    )

    def __init__(self, group: int, config: PaxosConfig, view: StorageView) -> None:
        self.group = group
        self.config = config
        self.view = view
        self.promised = NO_BALLOT
        self.log_start = 1
        self.lease_ballot = NO_BALLOT
        self.lease_until = 0
        self.overlay: dict[int, LogRecord] = {}
        """Log records written in the current step (not yet visible through the view)."""

    def end_step(self) -> None:
        self.overlay.clear()

    def load(self, now_ms: int, *, promise_lost: bool = False, start_lost: bool = False) -> None:
        """Rebuild from storage at Boot; refuse every Prepare for lease_ms (the lease promises
        this acceptor gave before the restart were in memory only). A lost record (damaged,
        see ``repair.py``) is not read: the promise counts as none (the group is repairing
        and votes in no quorum), the log start as 1."""
        key = meta_key(self.group, KIND_PROMISE)
        rec = None if promise_lost else self.view.get(META, key)
        self.promised = NO_BALLOT if rec is None else decode_u64(rec, "promise record", key)
        if self.promised > BALLOT_MAX:
            # Only a forged Prepare gets there; the record is unusable: repair it from peers.
            raise StorageCorruption(
                f"promise record of group {self.group}: ballot {self.promised} is above the "
                f"largest a replica can own ({BALLOT_MAX})",
                table=META,
                key=key,
            )
        key = meta_key(self.group, KIND_LOG_START)
        rec = None if start_lost else self.view.get(META, key)
        self.log_start = 1 if rec is None else decode_u64(rec, "log start record", key)
        self.lease_ballot = NO_BALLOT
        self.lease_until = acceptor_lease_until(now_ms, self.config)

    # -- lease promise -------------------------------------------------------------------

    def grant_lease(self, ballot: int, now_ms: int) -> None:
        """Called whenever this acceptor acks a heartbeat or Accept of ``ballot``."""
        until = acceptor_lease_until(now_ms, self.config)
        if ballot != self.lease_ballot:
            # Switching holders: only allowed when ``ballot`` >= promised, which the caller
            # checked; the old holder's promise is superseded because it can no longer get a
            # majority of acks from acceptors that promised a higher ballot.
            self.lease_ballot = ballot
            self.lease_until = until
        else:
            self.lease_until = max(self.lease_until, until)

    def lease_blocks(self, ballot: int, now_ms: int) -> bool:
        """Whether the lease promise forbids promising ``ballot`` now."""
        return now_ms < self.lease_until and ballot != self.lease_ballot

    def release_lease(self, ballot: int) -> None:
        """The holder of ``ballot`` handed over: it stopped serving before telling us."""
        if self.lease_ballot == ballot:
            self.lease_until = 0

    # -- log access ----------------------------------------------------------------------

    def read(self, instance: int) -> LogRecord | None:
        mine = self.overlay.get(instance)
        if mine is not None:
            return mine
        key = log_key(self.group, instance)
        rec = self.view.get(LOG, key)
        return None if rec is None else decode_log(rec, key)

    def _write(self, instance: int, rec: LogRecord, fx: EffectsBuilder) -> None:
        self.overlay[instance] = rec
        fx.put(LOG, log_key(self.group, instance), encode_log(rec.ballot, rec.value, rec.chosen))

    def write_chosen(self, instance: int, value: bytes, fx: EffectsBuilder) -> None:
        """Record a value learned as chosen (from a peer or a recovery quorum)."""
        if instance < self.log_start:
            return
        old = self.read(instance)
        if old is not None and old.chosen:
            if old.value != value:
                raise InvariantViolation(
                    f"group {self.group} instance {instance}: two different chosen values"
                )
            return
        self._write(instance, LogRecord(ballot=NO_BALLOT, value=value, chosen=True), fx)

    def truncate_below(self, new_start: int, fx: EffectsBuilder) -> bool:
        """Delete log instances below ``new_start`` (all chosen and applied)."""
        if new_start <= self.log_start:
            return False
        fx.delete_range(LOG, log_key(self.group, self.log_start), log_key(self.group, new_start))
        for instance in [i for i in self.overlay if i < new_start]:
            del self.overlay[instance]
        self.log_start = new_start
        fx.put(META, meta_key(self.group, KIND_LOG_START), encode_u64(new_start))
        return True

    def raise_promise(self, ballot: int, fx: EffectsBuilder) -> None:
        if ballot > self.promised:
            self.promised = ballot
            fx.put(META, meta_key(self.group, KIND_PROMISE), encode_u64(ballot))

    # -- Paxos rules ---------------------------------------------------------------------

    def on_prepare(
        self,
        *,
        ballot: int,
        from_instance: int,
        now_ms: int,
        applied: int,
        master_name: str | None,
        fx: EffectsBuilder,
    ) -> Promise:
        """Phase 1b. ``applied``: the local learner's applied index (those are chosen)."""
        g = self.group
        if ballot < self.promised:
            return Promise(
                group=g,
                ballot=ballot,
                from_instance=from_instance,
                ok=False,
                promised=self.promised,
            )
        if self.lease_blocks(ballot, now_ms):
            return Promise(
                group=g,
                ballot=ballot,
                from_instance=from_instance,
                ok=False,
                promised=self.promised,
                lease_left_ms=self.lease_until - now_ms,
                master=master_name,
            )
        if from_instance < self.log_start:
            # We deleted accepted state below log_start; answering would hide values that
            # may be chosen there. The candidate must catch up (it is behind anyway).
            return Promise(
                group=g,
                ballot=ballot,
                from_instance=from_instance,
                ok=False,
                promised=self.promised,
                behind=True,
                log_start=self.log_start,
                chosen_upto=applied,
            )
        self.raise_promise(ballot, fx)
        cfg = self.config
        window_end = from_instance + cfg.learn_chunk_max
        entries: list[AcceptedEntry] = []
        size = 0
        covered_to: int | None = None
        for key, rec in self.view.scan(LOG, log_key(g, from_instance), group_key(g + 1)):
            instance = instance_of_log_key(key)
            if instance >= window_end or (entries and size >= cfg.learn_bytes_max):
                covered_to = instance
                break
            r = decode_log(rec, key)
            entries.append(
                AcceptedEntry(
                    instance=instance,
                    ballot=r.ballot,
                    value=r.value,
                    chosen=r.chosen or instance <= applied,
                )
            )
            size += len(r.value)
        return Promise(
            group=g,
            ballot=ballot,
            from_instance=from_instance,
            ok=True,
            promised=self.promised,
            entries=tuple(entries),
            covered_to=covered_to,
            chosen_upto=applied,
            log_start=self.log_start,
        )

    def on_accept(
        self,
        *,
        ballot: int,
        instance: int,
        value: bytes,
        now_ms: int,
        applied: int,
        fx: EffectsBuilder,
    ) -> bool:
        """Phase 2b: accept ``value`` for ``instance`` under ``ballot`` if allowed."""
        if ballot < self.promised:
            return False
        if instance < self.log_start:
            # Chosen, applied and truncated here: Paxos guarantees the master proposes the
            # chosen value, and nobody will ask us about this instance again.
            self.raise_promise(ballot, fx)
            self.grant_lease(ballot, now_ms)
            return True
        old = self.read(instance)
        chosen_here = old is not None and (old.chosen or instance <= applied)
        if old is not None and chosen_here and old.value != value:
            # Another value is chosen for this instance. Every ballot at or above the one that
            # chose it carries that value, so this Accept comes from below it: a deposed
            # master's Accept, delayed or duplicated, reaching a replica that learned the
            # chosen value by catch-up or heartbeats (which raise no promise). Refuse it, and
            # give its master neither our promise nor our lease. A correct replica never
            # crashes on it; a real divergence would still show in the log checksums.
            fx.event(
                "accept_refused",
                group=self.group,
                instance=instance,
                ballot=ballot,
                reason="chosen_differs",
            )
            return False
        self.raise_promise(ballot, fx)
        self.grant_lease(ballot, now_ms)
        if chosen_here:
            return True
        self._write(instance, LogRecord(ballot=ballot, value=value, chosen=False), fx)
        return True
