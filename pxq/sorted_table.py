"""Sorted tables of byte keys: the one in-memory structure behind every table and overlay.

``SortedTable`` keeps values by key with the keys sorted: a dict answers lookups, a sorted list
answers range scans (``bisect``; appending past the last key, the common case of a log, costs
no search). The simulator's ``MemoryStore`` (``sim/memstore.py``) holds its tables in these.

``PendingTable`` is one table's writes that the layer below does not have yet: values,
tombstones (``None``) for deleted keys, and deleted ranges. Reads through it see the writes
on top of the layer below: ``lookup`` for one key, ``over`` for a scan merged with the same
scan of the layer below. The queue store's step overlay (``pxq/store/overlay.py``) and the
LMDB storage's not-yet-durable batches (``net/node/storage.py``) are stacks of these.

Within a ``PendingTable`` a key's latest write (``set``, a value or a tombstone) wins over the
table's deleted ranges: ``delete_range`` drops the writes of its keys made so far, so a later
``set`` brings a key back; the ranges hide only the keys of the layer below.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterator
from typing import Final, Generic, Literal, TypeVar

V = TypeVar("V")


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING: Final = _Missing.MISSING
"""``PendingTable.lookup``: the table says nothing about the key (read the layer below)."""

Missing = Literal[_Missing.MISSING]


class SortedTable(Generic[V]):
    """Values by byte key, with the keys in a sorted list for range scans.

    ``values`` and ``keys`` are public for readers that walk the table (``keys`` holds exactly
    the keys of ``values``, ascending); write only through the methods, which keep both in
    step (replacing the value of a present key in ``values`` is the one exception).
    """

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, V] = {}
        self.keys: list[bytes] = []

    def set(self, key: bytes, value: V) -> None:
        if key not in self.values:
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)  # the common case: appending at the end of a log
            else:
                bisect.insort(keys, key)
        self.values[key] = value

    def discard(self, key: bytes) -> None:
        """Remove ``key`` if present."""
        if self.values.pop(key, MISSING) is not MISSING:
            keys = self.keys
            del keys[bisect.bisect_left(keys, key)]

    def drop_range(self, start: bytes, end: bytes) -> None:
        """Remove every key with ``start <= key < end``."""
        keys = self.keys
        lo = bisect.bisect_left(keys, start)
        hi = bisect.bisect_left(keys, end)
        if lo < hi:
            values = self.values
            for key in keys[lo:hi]:
                del values[key]
            del keys[lo:hi]

    def select(self, start: bytes, end: bytes | None, reverse: bool) -> list[tuple[bytes, V]]:
        """The entries with ``start <= key < end`` (no upper bound for None) in key order,
        descending with ``reverse``: a copy, taken now."""
        keys = self.keys
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        chosen = keys[lo:hi]
        if reverse:
            chosen.reverse()
        values = self.values
        return [(key, values[key]) for key in chosen]

    def scan(
        self: SortedTable[bytes], start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        """The entries with ``start <= key < end`` in key order (descending with ``reverse``),
        lazily: the keys are chosen at the first ``next``, each value is read when reached,
        and a key removed meanwhile is skipped (so the caller may write while iterating)."""
        keys = self.keys
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        chosen = keys[lo:hi]  # a copy: callers may write while iterating
        if reverse:
            chosen.reverse()
        values = self.values
        for key in chosen:
            value = values.get(key)
            if value is not None:
                yield key, value

    def copy(self: SortedTable[bytes]) -> SortedTable[bytes]:
        """An independent copy (of a plain table: a ``PendingTable`` has its ranges too)."""
        other: SortedTable[bytes] = SortedTable()
        other.values = dict(self.values)
        other.keys = list(self.keys)
        return other


class PendingTable(SortedTable[bytes | None]):
    """One table's writes over a layer below: values, tombstones (None), deleted ranges.

    ``set(key, value)`` writes a key, ``set(key, None)`` deletes it (a tombstone that hides
    the key of the layer below), ``delete_range`` deletes a range."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.values = {}
        self.keys = []
        self.ranges: list[tuple[bytes, bytes]] = []
        """Deleted ranges ``[start, end)``, in the order deleted; each non-empty."""

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete the keys ``start <= key < end``; an empty range (``start >= end``) is
        ignored."""
        if start < end:
            self.drop_range(start, end)
            self.ranges.append((start, end))

    def hides(self, key: bytes) -> bool:
        """Whether a deleted range covers ``key``."""
        # A loop, not any() over a generator: this runs per key of a merged scan.
        for start, end in self.ranges:  # noqa: SIM110
            if start <= key < end:
                return True
        return False

    def lookup(self, key: bytes) -> bytes | Missing | None:
        """The key's value, None if deleted here, ``MISSING`` if this table says nothing."""
        value = self.values.get(key, MISSING)
        if value is MISSING and self.ranges and self.hides(key):
            return None
        return value

    def over(
        self,
        below: Iterator[tuple[bytes, bytes]],
        start: bytes,
        end: bytes | None,
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        """``below``, the same scan (``start``, ``end``, ``reverse``) of the layer below, with
        this table's writes on top. This table's entries in the range are chosen now; a key
        written or range deleted while the scan runs still hides that key of ``below``."""
        return self._merge(below, self.select(start, end, reverse), bool(reverse))

    def _merge(
        self,
        below: Iterator[tuple[bytes, bytes]],
        mine: list[tuple[bytes, bytes | None]],
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        written = self.values
        ranges = self.ranges
        i = 0
        n = len(mine)
        for key, value in below:
            if key in written or (ranges and self.hides(key)):
                continue
            # Emit my entries that come before this key in scan order: ``k < key`` forward,
            # ``k > key`` in reverse. No k equals key (written keys of below are skipped; a
            # key dropped from ``written`` since is hidden by the range that dropped it), so
            # ``(k > key) is reverse`` says it in one comparison.
            while i < n and (mine[i][0] > key) is reverse:
                k, v = mine[i]
                i += 1
                if v is not None:
                    yield k, v
            yield key, value
        while i < n:
            k, v = mine[i]
            i += 1
            if v is not None:
                yield k, v
