"""The learner of one Paxos group: chosen values, in-order apply, the log checksum chain.

It owns the applied index and log checksum of its group (``paxos_meta`` kind A) and the
group's state machine. Values become known as chosen in any order (a pipeline, recovery
windows, catch-up); they are applied strictly in instance order. When applying instance i it
verifies the check carried in the value (the proposer's checksum at an earlier instance)
against its own chain and raises ``InvariantViolation`` on a mismatch: replicas must never
diverge silently. The applied index is written in the same step as the state machine's
writes, so they become durable together.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.effects import EffectsBuilder, InvariantViolation, StorageView
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

    def load(self, *, state_lost: bool = False) -> None:
        self.chosen.clear()
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
        if self.frozen:
            return False
        if instance <= self.applied:
            return True
        old = self.chosen.get(instance)
        if old is not None:
            if old != value:
                raise InvariantViolation(
                    f"group {self.group} instance {instance}: two different chosen values"
                )
            return True
        if not self.can_hold(instance):
            return False
        self.chosen[instance] = value
        fx.event("chosen", group=self.group, instance=instance)
        return True

    def apply_ready(self, fx: EffectsBuilder) -> list[Applied]:
        """Apply every chosen value that continues the applied prefix."""
        done: list[Applied] = []
        if self.frozen:
            return done
        while (value := self.chosen.pop(self.applied + 1, None)) is not None:
            instance = self.applied + 1
            entry = decode_entry(value)
            if entry.check_instance >= instance:
                raise InvariantViolation(
                    f"group {self.group} instance {instance}: check refers to instance "
                    f"{entry.check_instance}, not below it"
                )
            expected = self.recent.get(entry.check_instance)
            if expected is not None and expected != entry.check_checksum:
                raise InvariantViolation(
                    f"group {self.group} instance {instance}: log checksum at "
                    f"{entry.check_instance} is {expected:#x} here but {entry.check_checksum:#x} "
                    "at the proposer"
                )
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

    def verify_peer(self, instance: int, checksum: int) -> None:
        """Compare a peer's log checksum at ``instance`` with ours, if we still know ours."""
        mine = self.recent.get(instance)
        if mine is not None and mine != checksum:
            raise InvariantViolation(
                f"group {self.group}: log checksum at instance {instance} is {mine:#x} here "
                f"but {checksum:#x} at a peer"
            )

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
