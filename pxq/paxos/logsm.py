"""``RecordingLog``: the replicated-log state machine (records every applied value).

It is the workload of the Paxos tests and benchmark: each applied client value is stored
in table ``paxos_rlog`` under u32 group + u64 instance + u32 slot, and its result is empty.
Its snapshot is the list of all records; installing one replaces the group's records.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pxq.effects import EffectsBuilder, InvariantViolation, StorageView

TABLE = "paxos_rlog"
_KEY = struct.Struct(">IQI")
_REC_HEAD = struct.Struct(">QII")


class RecordingLog:
    """Records each applied value of one group; a ``StateMachine``."""

    __slots__ = ("count", "group", "view")

    def __init__(self, view: StorageView, group: int) -> None:
        self.view = view
        self.group = group
        self.count = 0

    def _bounds(self) -> tuple[bytes, bytes]:
        return struct.pack(">I", self.group), struct.pack(">I", self.group + 1)

    def load(self) -> None:
        start, end = self._bounds()
        self.count = sum(1 for _ in self.view.scan(TABLE, start, end))

    def apply(self, instance: int, slot: int, value: bytes, fx: EffectsBuilder) -> bytes:
        fx.put(TABLE, _KEY.pack(self.group, instance, slot), value)
        self.count += 1
        return b""

    def records(self) -> Iterator[tuple[int, int, bytes]]:
        """(instance, slot, value) of every recorded value, in log order."""
        start, end = self._bounds()
        for key, value in self.view.scan(TABLE, start, end):
            _, instance, slot = _KEY.unpack(key)
            yield instance, slot, value

    def snapshot(self) -> bytes:
        parts: list[bytes] = []
        for instance, slot, value in self.records():
            parts.append(_REC_HEAD.pack(instance, slot, len(value)))
            parts.append(value)
        return b"".join(parts)

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        start, end = self._bounds()
        fx.delete_range(TABLE, start, end)
        pos, count = 0, 0
        while pos < len(snapshot):
            if pos + _REC_HEAD.size > len(snapshot):
                raise InvariantViolation("RecordingLog snapshot truncated")
            instance, slot, n = _REC_HEAD.unpack_from(snapshot, pos)
            pos += _REC_HEAD.size
            if pos + n > len(snapshot):
                raise InvariantViolation("RecordingLog snapshot truncated")
            fx.put(TABLE, _KEY.pack(self.group, instance, slot), snapshot[pos : pos + n])
            pos += n
            count += 1
        self.count = count
