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

import bisect
from collections.abc import Iterator

from pxq.effects import EffectsBuilder, InvariantViolation, StorageView


class _Table:
    """The writes of one table in this step: a value, or None for a deleted key."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, bytes | None] = {}
        self.keys: list[bytes] = []

    def set(self, key: bytes, value: bytes | None) -> None:
        if key not in self.values:
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                bisect.insort(keys, key)
        self.values[key] = value

    def drop_range(self, start: bytes, end: bytes) -> None:
        lo = bisect.bisect_left(self.keys, start)
        hi = bisect.bisect_left(self.keys, end)
        for key in self.keys[lo:hi]:
            del self.values[key]
        del self.keys[lo:hi]

    def scan(
        self, start: bytes, end: bytes | None, reverse: bool
    ) -> list[tuple[bytes, bytes | None]]:
        lo = bisect.bisect_left(self.keys, start)
        hi = len(self.keys) if end is None else bisect.bisect_left(self.keys, end)
        selected = self.keys[lo:hi]
        if reverse:
            selected.reverse()
        return [(k, self.values[k]) for k in selected]


class StepOverlay:
    """Reads through the storage view with this step's writes on top; writes go to ``fx``."""

    __slots__ = ("fx", "ranges", "tables", "view")

    def __init__(self, view: StorageView) -> None:
        self.view = view
        self.fx: EffectsBuilder | None = None
        self.tables: dict[str, _Table] = {}
        self.ranges: dict[str, list[tuple[bytes, bytes]]] = {}

    # -- step boundaries ------------------------------------------------------------------------

    def begin(self, fx: EffectsBuilder) -> None:
        if fx is not self.fx:
            self.end_step()
            self.fx = fx

    def end_step(self) -> None:
        self.fx = None
        self.tables.clear()
        self.ranges.clear()

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
            t = self.tables[table] = _Table()
        t.set(key, value)

    def delete(self, table: str, key: bytes) -> None:
        self._fx().delete(table, key)
        t = self.tables.get(table)
        if t is None:
            t = self.tables[table] = _Table()
        t.set(key, None)

    def delete_range(self, table: str, start: bytes, end: bytes) -> None:
        if start >= end:
            return
        self._fx().delete_range(table, start, end)
        t = self.tables.get(table)
        if t is not None:
            t.drop_range(start, end)  # the range deletes them; a later put brings a key back
        self.ranges.setdefault(table, []).append((start, end))

    # -- reads ------------------------------------------------------------------------------------

    def _deleted_by_range(self, table: str, key: bytes) -> bool:
        ranges = self.ranges.get(table)
        if not ranges:
            return False
        return any(s <= key < e for s, e in ranges)

    def get(self, table: str, key: bytes) -> bytes | None:
        t = self.tables.get(table)
        if t is not None and key in t.values:
            return t.values[key]
        if self._deleted_by_range(table, key):
            return None
        return self.view.get(table, key)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        t = self.tables.get(table)
        ranges = self.ranges.get(table)
        base = self.view.scan(table, start, end, reverse=reverse)
        if t is None and not ranges:
            return base
        return self._merged(table, base, [] if t is None else t.scan(start, end, reverse), reverse)

    def _merged(
        self,
        table: str,
        base: Iterator[tuple[bytes, bytes]],
        mine: list[tuple[bytes, bytes | None]],
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        written = self.tables.get(table)
        overridden = written.values if written is not None else {}
        i = 0
        for key, value in base:
            if key in overridden or self._deleted_by_range(table, key):
                continue
            # Emit my writes that come before this key in scan order.
            while i < len(mine) and (mine[i][0] > key if reverse else mine[i][0] < key):
                k, v = mine[i]
                i += 1
                if v is not None:
                    yield k, v
            yield key, value
        while i < len(mine):
            k, v = mine[i]
            i += 1
            if v is not None:
                yield k, v
