"""Keyed one-shot timers for client machines: at most one live deadline per key, earliest first.

Client machines (producer, consumer) keep one deadline per queue they work on, and a driver
asks for the earliest one after every step. Scanning thousands of queues per step would cost
more than the step itself, so this keeps a lazy min-heap: setting a key's deadline pushes a
new entry and leaves the old one behind; stale entries are skipped when they reach the top,
and the heap is rebuilt when stale entries outnumber live ones (``STALE_FACTOR``), which
bounds its size by the number of live keys.

Shared by ``pxq.producer`` and ``pxq.consumer``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

STALE_FACTOR = 2
"""The heap is compacted once it holds more than ``STALE_FACTOR * live + STALE_SLACK`` entries."""
STALE_SLACK = 32


class Timers(Generic[K]):
    """One optional deadline (monotonic ms) per key; ``earliest()`` and ``pop_due(now)``."""

    __slots__ = ("_gen", "_heap", "_live")

    def __init__(self) -> None:
        # key -> (deadline, generation): an entry of the heap is live iff it matches this.
        self._live: dict[K, tuple[int, int]] = {}
        # (deadline, generation, key): the generation is unique, so keys are never compared.
        self._heap: list[tuple[int, int, K]] = []
        self._gen = 0

    def __len__(self) -> int:
        return len(self._live)

    def get(self, key: K) -> int | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def set(self, key: K, at_ms: int | None) -> None:
        """Arm ``key`` at ``at_ms`` (replacing its previous deadline), or disarm it (None)."""
        current = self._live.get(key)
        if at_ms is None:
            if current is not None:
                del self._live[key]
            return
        if current is not None and current[0] == at_ms:
            return
        self._gen += 1
        self._live[key] = (at_ms, self._gen)
        heapq.heappush(self._heap, (at_ms, self._gen, key))
        if len(self._heap) > STALE_FACTOR * len(self._live) + STALE_SLACK:
            self._heap = [(ms, gen, k) for k, (ms, gen) in self._live.items()]
            heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            ms, gen, key = heap[0]
            if self._live.get(key) == (ms, gen):
                return
            heapq.heappop(heap)

    def earliest(self) -> int | None:
        """The earliest live deadline, or None when no key is armed."""
        # _drop_stale inlined: drivers ask after every step. A generation is pushed once, so
        # an entry whose generation is its key's live one is live.
        heap = self._heap
        live = self._live
        while heap:
            ms, gen, key = heap[0]
            entry = live.get(key)
            if entry is not None and entry[1] == gen:
                return ms
            heapq.heappop(heap)
        return None

    def pop_due(self, now_ms: int) -> list[K]:
        """Disarm and return every key whose deadline is at or before ``now_ms``, earliest
        first (ties in arming order)."""
        due: list[K] = []
        heap = self._heap
        while True:
            self._drop_stale()
            if not heap or heap[0][0] > now_ms:
                return due
            _, _, key = heapq.heappop(heap)
            del self._live[key]
            due.append(key)
