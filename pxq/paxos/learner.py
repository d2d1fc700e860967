"""The learner of one Paxos group: chosen values, in-order apply, the log checksum chain.

It owns the applied index and log checksum of its group (``paxos_meta`` kind A) and the
group's state machine. Values become known as chosen in any order (a pipeline, recovery
windows, catch-up); they are applied strictly in instance order. When applying instance i it
verifies the check carried in the value (the proposer's checksum at an earlier instance)
against its own chain: replicas must never diverge silently. The applied index is written in
the same step as the state machine's writes, so they become durable together.

Evidence of divergence (a chosen value whose check disagrees with this chain, a value that is
not an entry, a second value chosen at one instance, a peer's log checksum that differs from
ours) is not this replica's broken invariant but a fact about the group: it raises an alarm
(``pxq.effects.ALARM``) and the learner *halts* (``halted`` says why): it applies nothing more
and the group neither leads nor serves. A crash would not help, as the same values come back
after a restart; a halted group keeps the node's other groups running and waits for an
operator (``docs/operations.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.effects import EffectsBuilder, InvariantViolation, NodeId, StorageView
from pxq.paxos.config import PaxosConfig
from pxq.paxos.records import (
    KIND_APPLIED,
    META,
    chain,
    decode_applied,
    decode_entry,
    encode_applied,
    meta_key,
)
from pxq.paxos.sm import StateMachine


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """One instance applied in this step, with the state machine's result per value."""

    instance: int
    value: bytes
    results: tuple[bytes, ...]


class Learner:
    """Applies the chosen values of one group to its state machine, in order."""

    __slots__ = (
        "applied",
        "checksum",
        "chosen",
        "config",
        "dirty",
        "frozen",
        "group",
        "halted",
        "horizon",
        "recent",
        "sm",
        "view",
    )

    def __init__(
        self, group: int, config: PaxosConfig, view: StorageView, sm: StateMachine
    ) -> None:
        self.group = group
        self.config = config
        self.view = view
        self.sm = sm
        self.applied = 0
        self.checksum = 0
        self.chosen: dict[int, bytes] = {}
        """Chosen values above ``applied``, waiting for the gap below them to close."""
        self.recent: dict[int, int] = {0: 0}
        """Log checksum after each recently applied instance (bounded by ``horizon``)."""
        self.horizon = config.learn_chunk_max + config.pipeline_max + 2
        """How far above ``applied`` a chosen value may be held, and how many checksums are
        kept: a value's check refers to at most this far below it."""
        self.dirty = False
        self.frozen = False
        """The state machine is damaged (``repair.py``): it is not loaded, nothing is applied
        and the applied index counts as 0 until a peer's snapshot is installed."""
        self.halted: str | None = None
        """Why this group stopped applying (evidence of divergence), or None."""

    def load(self, *, state_lost: bool = False) -> None:
        self.chosen.clear()
        self.halted = None
        self.frozen = state_lost
        if state_lost:
            self.applied, self.checksum = 0, 0
            self.recent = {0: 0}
            return
        self.sm.load()
        key = meta_key(self.group, KIND_APPLIED)
        rec = self.view.get(META, key)
        if rec is not None:
            self.applied, self.checksum = decode_applied(rec, key)
        self.recent = {self.applied: self.checksum}

    def can_hold(self, instance: int) -> bool:
        """Whether a chosen value for ``instance`` may be buffered now."""
        return instance <= self.applied + self.horizon

    def is_chosen(self, instance: int) -> bool:
        return instance <= self.applied or instance in self.chosen

    def mark_chosen(self, instance: int, value: bytes, fx: EffectsBuilder) -> bool:
        """Record that ``value`` is chosen at ``instance``; False if it cannot be held yet
        (beyond the horizon, or frozen: a snapshot comes first)."""
        if self.frozen or self.halted is not None:
            return False
        if instance <= self.applied:
            return True
        old = self.chosen.get(instance)
        if old is not None:
            if old != value:
                self.halt(f"instance {instance}: two different chosen values", fx)
                return False
            return True
        if not self.can_hold(instance):
            return False
        self.chosen[instance] = value
        fx.event("chosen", group=self.group, instance=instance)
        return True

    def apply_ready(self, fx: EffectsBuilder) -> list[Applied]:
        """Apply every chosen value that continues the applied prefix."""
        done: list[Applied] = []
        if self.frozen or self.halted is not None:
            return done
        while (value := self.chosen.get(self.applied + 1)) is not None:
            instance = self.applied + 1
            try:
                entry = decode_entry(value)
            except InvariantViolation as exc:
                self.halt(f"instance {instance}: the chosen value is not an entry ({exc})", fx)
                break
            if entry.check_instance >= instance:
                self.halt(
                    f"instance {instance}: check refers to instance {entry.check_instance}, "
                    "not below it",
                    fx,
                )
                break
            expected = self.recent.get(entry.check_instance)
            if expected is not None and expected != entry.check_checksum:
                self.halt(
                    f"instance {instance}: log checksum at {entry.check_instance} is "
                    f"{expected:#x} here but {entry.check_checksum:#x} at the proposer",
                    fx,
                )
                break
            del self.chosen[instance]
            results = tuple(
                self.sm.apply(instance, slot, v, fx) for slot, v in enumerate(entry.values)
            )
            self.checksum = chain(self.checksum, value)
            self.applied = instance
            self.recent[instance] = self.checksum
            self.recent.pop(instance - self.horizon, None)
            self.dirty = True
            fx.event("applied", group=self.group, instance=instance, checksum=self.checksum)
            done.append(Applied(instance=instance, value=value, results=results))
        return done

    def verify_peer(self, peer: NodeId, instance: int, checksum: int, fx: EffectsBuilder) -> None:
        """Compare a peer's log checksum at ``instance`` with ours, if we still know ours. A
        difference is evidence about the group, not about this replica's state: an alarm
        (the peer, or this replica, diverged; the checksums alone cannot say which)."""
        mine = self.recent.get(instance)
        if mine is not None and mine != checksum:
            fx.alarm(
                "checksum_mismatch",
                group=self.group,
                instance=instance,
                peer=peer,
                mine=mine,
                theirs=checksum,
            )

    def halt(self, reason: str, fx: EffectsBuilder) -> None:
        """Stop applying: ``reason`` is evidence that the group's replicas diverged."""
        self.halted = reason
        self.chosen.clear()
        fx.alarm("divergence", group=self.group, reason=reason)

    def install(self, instance: int, checksum: int, snapshot: bytes, fx: EffectsBuilder) -> None:
        """Replace the state with a peer's snapshot taken after ``instance``."""
        if instance <= self.applied:
            raise InvariantViolation("snapshot install would move the applied index back")
        self.sm.install(snapshot, fx)
        self.frozen = False
        self.applied = instance
        self.checksum = checksum
        self.recent = {instance: checksum}
        for i in [i for i in self.chosen if i <= instance]:
            del self.chosen[i]
        self.dirty = True

    def flush(self, fx: EffectsBuilder) -> None:
        """Write the applied record once per step (after the state machine's writes)."""
        if self.dirty:
            fx.put(
                META,
                meta_key(self.group, KIND_APPLIED),
                encode_applied(self.applied, self.checksum),
            )
            self.dirty = False
