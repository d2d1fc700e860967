"""``StepOverlay``: the storage view plus the writes of the current step.

The driver applies a step's writes only after the step returns (``pxq/effects.py``), but one
step may apply many commands that read what earlier ones wrote: a follower catching up applies
an enqueue and the retry of the same item in one step, and an installed snapshot is followed
by more commands at once. Every write of the queue store goes through this class, which emits
it to the step's ``EffectsBuilder`` and remembers it, so reads see "the view plus my writes".

A step is recognised by its ``EffectsBuilder``: ``begin(fx)`` with another builder than the
last one starts a new step and forgets the old writes (the driver has applied them by then;
the store node also calls ``end_step`` after every step to free the memory at once).
"""

from __future__ import annotations

from collections.abc import Iterator

from pxq.effects import EffectsBuilder, InvariantViolation, StorageView
from pxq.sorted_table import MISSING, PendingTable


class StepOverlay:
    """Reads through the storage view with this step's writes on top; writes go to ``fx``."""

    __slots__ = ("fx", "tables", "view")

    def __init__(self, view: StorageView) -> None:
        self.view = view
        self.fx: EffectsBuilder | None = None
        self.tables: dict[str, PendingTable] = {}

    # -- step boundaries ------------------------------------------------------------------------

    def begin(self, fx: EffectsBuilder) -> None:
        if fx is not self.fx:
            self.end_step()
            self.fx = fx

    def end_step(self) -> None:
        self.fx = None
        self.tables.clear()

    def _fx(self) -> EffectsBuilder:
        fx = self.fx
        if fx is None:
            raise InvariantViolation("queue store write outside an apply step")
        return fx

    # -- writes -----------------------------------------------------------------------------------

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._fx().put(table, key, value)
        t = self.tables.get(table)
        if t is None:
            t = self.tables[table] = PendingTable()
        t.set(key, value)

    def delete(self, table: str, key: bytes) -> None:
        self._fx().delete(table, key)
        t = self.tables.get(table)
        if t is None:
            t = self.tables[table] = PendingTable()
        t.set(key, None)

    def delete_range(self, table: str, start: bytes, end: bytes) -> None:
        if start >= end:
            return
        self._fx().delete_range(table, start, end)
        t = self.tables.get(table)
        if t is None:
            t = self.tables[table] = PendingTable()
        t.delete_range(start, end)

    # -- reads ------------------------------------------------------------------------------------

    def get(self, table: str, key: bytes) -> bytes | None:
        t = self.tables.get(table)
        if t is not None:
            found = t.lookup(key)
            if found is not MISSING:
                return found
        return self.view.get(table, key)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        base = self.view.scan(table, start, end, reverse=reverse)
        t = self.tables.get(table)
        if t is None:
            return base
        return t.over(base, start, end, reverse)
