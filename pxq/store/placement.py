"""Where things live: key -> queue, queue -> store, queue -> Paxos group, and the names of
derived topics (retry levels, dead letters).

Stable by construction: crc32 and blake2b, never ``hash()`` (salted per process). Derived
topics share the placement of their base topic, so moving an item to a retry level is one
command in one Paxos group.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Sequence

RING_POINTS_PER_STORE = 64
"""Virtual points per store on the consistent-hash ring (evens out the spread)."""

RETRY_MARK = ".retry."
DLQ_MARK = ".dlq."


def queue_of(key: bytes, queues: int) -> int:
    """The queue of ``key`` among ``queues``: the same key always lands on the same queue."""
    if queues < 1:
        raise ValueError("queues must be >= 1")
    return zlib.crc32(key) % queues


def group_of(queue: int, groups: int) -> int:
    """The Paxos group of a store that holds ``queue``."""
    return queue % groups


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class StoreRing:
    """Consistent hashing of (base topic, queue) over store names."""

    __slots__ = ("_owners", "_points")

    def __init__(self, stores: Sequence[str]) -> None:
        if not stores:
            raise ValueError("at least one store is needed")
        if len(set(stores)) != len(stores):
            raise ValueError("store names must be distinct")
        ring = sorted(
            (_point(f"{store}#{i}"), store)
            for store in stores
            for i in range(RING_POINTS_PER_STORE)
        )
        self._points = [p for p, _ in ring]
        self._owners = [s for _, s in ring]

    def store_of(self, topic: str, queue: int) -> str:
        point = _point(f"{base_topic(topic)}/{queue}")
        i = bisect.bisect_right(self._points, point) % len(self._points)
        return self._owners[i]


def retry_topic(topic: str, group: str, level: int) -> str:
    """The topic holding ``group``'s items at retry ``level`` (1-based) of ``topic``."""
    return f"{base_topic(topic)}{RETRY_MARK}{group}.{level}"


def dead_letter_topic(topic: str, group: str) -> str:
    return f"{base_topic(topic)}{DLQ_MARK}{group}"


def base_topic(topic: str) -> str:
    """The base topic of a derived one (itself for a base topic)."""
    for mark in (RETRY_MARK, DLQ_MARK):
        i = topic.find(mark)
        if i >= 0:
            return topic[:i]
    return topic


def retry_level(topic: str) -> int:
    """0 for a base topic, n for retry level n, -1 for a dead-letter topic."""
    i = topic.find(RETRY_MARK)
    if i >= 0:
        return int(topic.rsplit(".", 1)[1])
    return -1 if DLQ_MARK in topic else 0
