"""An in-memory table store: the data structure behind the simulated disk.

``MemoryStore`` holds named tables of bytes -> bytes in sorted order, applies the ``Write``
effects of the driver contract, and implements the read-only ``StorageView`` protocol. The
simulated disk keeps one of these for the durable state and replays pending batches on top;
benchmarks and direct protocol tests use one as a disk that syncs instantly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from pxq.effects import Delete, DeleteRange, Put, Write


class _Table:
    """One sorted table: a dict for lookups plus a sorted key list for range scans."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.values:
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)  # the common case: appending at the end of a log
            else:
                bisect.insort(keys, key)
        self.values[key] = value

    def delete(self, key: bytes) -> None:
        if self.values.pop(key, None) is not None:
            i = bisect.bisect_left(self.keys, key)
            del self.keys[i]

    def delete_range(self, start: bytes, end: bytes) -> None:
        lo = bisect.bisect_left(self.keys, start)
        hi = bisect.bisect_left(self.keys, end)
        for key in self.keys[lo:hi]:
            del self.values[key]
        del self.keys[lo:hi]

    def scan(self, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        lo = bisect.bisect_left(self.keys, start)
        hi = len(self.keys) if end is None else bisect.bisect_left(self.keys, end)
        selected = self.keys[lo:hi]  # a copy: callers may write while iterating
        if reverse:
            selected.reverse()
        values = self.values
        for key in selected:
            value = values.get(key)
            if value is not None:
                yield key, value


class MemoryStore:
    """Tables of sorted bytes keys, updated by ``Write`` effects; a ``StorageView``."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}

    def _table(self, name: str) -> _Table:
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = _Table()
        return table

    def apply(self, writes: Iterable[Write]) -> None:
        for w in writes:
            match w:
                case Put(table=t, key=k, value=v):
                    self._table(t).put(k, v)
                case Delete(table=t, key=k):
                    self._table(t).delete(k)
                case DeleteRange(table=t, start=s, end=e):
                    self._table(t).delete_range(s, e)

    def get(self, table: str, key: bytes) -> bytes | None:
        t = self.tables.get(table)
        return None if t is None else t.values.get(key)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        t = self.tables.get(table)
        if t is None:
            return iter(())
        return t.scan(start, end, reverse)

    def copy(self) -> MemoryStore:
        other = MemoryStore()
        for name, table in self.tables.items():
            t = other._table(name)
            t.values = dict(table.values)
            t.keys = list(table.keys)
        return other

    def size_bytes(self) -> int:
        """Bytes of keys and values held, the measure a full-disk limit is checked against."""
        return sum(len(k) + len(v) for t in self.tables.values() for k, v in t.values.items())
