"""The state machine interface that a Paxos group applies its chosen values to.

A state machine is deterministic: the same chosen values in the same order give the same
state, writes and results on every replica. It persists its own state through the
``EffectsBuilder`` it is handed (writes to its own tables); the replica writes the applied
instance in the same step, so the driver makes both durable atomically and a restarted
replica resumes exactly after the last applied instance.

A replica builds one state machine per group from a factory ``Callable[[int],
StateMachine]`` at every ``Boot`` (so the factory usually closes over the storage view) and
calls ``load()`` before anything else.

Reads through the storage view see the writes of earlier steps only: the driver applies a
step's writes after ``step`` returns. A state machine that reads back what it wrote while
applying a batch must keep those values in memory for the rest of the step.
"""

from __future__ import annotations

from typing import Protocol

from pxq.effects import EffectsBuilder


class StateMachine(Protocol):
    def load(self) -> None:
        """Rebuild in-memory state from the storage view (called once per incarnation)."""
        ...

    def apply(self, instance: int, slot: int, value: bytes, fx: EffectsBuilder) -> bytes:
        """Apply client value ``slot`` of chosen ``instance``; return its per-value result.

        Must be deterministic and must not fail on a logically invalid value (return an
        error result instead): a chosen value is applied on every replica.
        """
        ...

    def snapshot(self) -> bytes:
        """The complete state after the last applied value, for a lagging peer."""
        ...

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        """Replace the whole state with ``snapshot`` (writes through ``fx``)."""
        ...
