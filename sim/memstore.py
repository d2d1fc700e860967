"""An in-memory table store: the data structure behind the simulated disk.

``MemoryStore`` holds named tables of bytes -> bytes in sorted order, applies the ``Write``
effects of the driver contract, and implements the read-only ``StorageView`` protocol. The
simulated disk keeps one of these for the durable state and replays pending batches on top;
benchmarks and direct protocol tests use one as a disk that syncs instantly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pxq.effects import Delete, DeleteRange, Put, Write
from pxq.sorted_table import SortedTable


class MemoryStore:
    """Tables of sorted bytes keys, updated by ``Write`` effects; a ``StorageView``."""

    __slots__ = ("tables",)

    def __init__(self) -> None:
        self.tables: dict[str, SortedTable[bytes]] = {}

    def _table(self, name: str) -> SortedTable[bytes]:
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = SortedTable()
        return table

    def apply(self, writes: Iterable[Write]) -> None:
        for w in writes:
            match w:
                case Put(table=t, key=k, value=v):
                    self._table(t).set(k, v)
                case Delete(table=t, key=k):
                    self._table(t).discard(k)
                case DeleteRange(table=t, start=s, end=e):
                    self._table(t).drop_range(s, e)

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
        other.tables = {name: table.copy() for name, table in self.tables.items()}
        return other

    def size_bytes(self) -> int:
        """Bytes of keys and values held, the measure a full-disk limit is checked against."""
        return sum(len(k) + len(v) for t in self.tables.values() for k, v in t.values.items())
