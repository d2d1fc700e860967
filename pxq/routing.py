"""Routing: where things live (key -> queue, queue -> store, queue -> Paxos group), and the
client-side belief about masters shared by the producer and the consumer, with retry backoff.

Placement is stable by construction: crc32 and blake2b, never ``hash()`` (salted per
process). ``StoreRing`` places a (topic, queue) by its base topic (``pxq.topics``), so derived
topics (retry levels, dead letters) live beside their base topic and moving an item to a
retry level is one command in one Paxos group.

``Router`` owns only the client's *belief* about masters, which it learns from
``StoreRedirect`` answers and successful replies, and loses on timeouts. A group's first guess
is its preferred replica ``replicas[group % len(replicas)]``, the same rule ``PaxosConfig``
uses, so a healthy cluster answers the very first request without a redirect.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from pxq.effects import NodeId, Rng
from pxq.topics import base_topic

RING_POINTS_PER_STORE = 64
"""Virtual points per store on the consistent-hash ring (evens out the spread)."""


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


Location: TypeAlias = tuple[str, int]
"""(store name, Paxos group index within the store)."""


class Router:
    """Queue placement plus the believed master of every (store, group)."""

    __slots__ = ("_groups", "_masters", "_replicas", "_ring")

    def __init__(
        self, stores: Mapping[str, tuple[NodeId, ...]], groups_per_store: Mapping[str, int]
    ) -> None:
        self._replicas = {name: tuple(nodes) for name, nodes in stores.items()}
        self._groups = dict(groups_per_store)
        self._ring = StoreRing(list(self._replicas))
        self._masters: dict[Location, NodeId] = {}

    def locate(self, topic: str, queue: int) -> Location:
        """The store and Paxos group holding ``queue`` of ``topic`` (derived topics share the
        placement of their base topic)."""
        store = self._ring.store_of(topic, queue)
        return store, group_of(queue, self._groups[store])

    def replicas(self, loc: Location) -> tuple[NodeId, ...]:
        return self._replicas[loc[0]]

    def master(self, loc: Location) -> NodeId:
        """The replica to send the next request for ``loc`` to."""
        known = self._masters.get(loc)
        if known is not None:
            return known
        replicas = self._replicas[loc[0]]
        return replicas[loc[1] % len(replicas)]

    def answered(self, loc: Location, node: NodeId) -> bool:
        """``node`` served a request of ``loc`` as master; True if that changed the belief."""
        if node not in self._replicas[loc[0]] or self.master(loc) == node:
            return False
        self._masters[loc] = node
        return True

    def redirected(self, loc: Location, sent_to: NodeId, master: str | None) -> bool:
        """``sent_to`` answered ``StoreRedirect(master)``. Returns True when a different replica
        of the store is now believed master (worth retrying at once); otherwise the belief
        moves on to the next replica and the caller should back off first (an election is
        probably under way)."""
        replicas = self._replicas[loc[0]]
        if master is not None and master != sent_to and master in replicas:
            self._masters[loc] = master
            return True
        self.rotate(loc, sent_to)
        return False

    def rotate(self, loc: Location, away_from: NodeId) -> NodeId:
        """Stop believing in ``away_from`` (it timed out or knows no master): try the next
        replica in configuration order. Returns the new guess."""
        replicas = self._replicas[loc[0]]
        if self.master(loc) != away_from:
            return self.master(loc)  # someone already told us about a newer master
        i = replicas.index(away_from) if away_from in replicas else -1
        nxt = replicas[(i + 1) % len(replicas)]
        self._masters[loc] = nxt
        return nxt


def backoff_ms(rng: Rng, failures: int, base_ms: int, cap_ms: int) -> int:
    """Delay before the next attempt after ``failures`` consecutive failures (>= 1):
    exponential from ``base_ms`` up to ``cap_ms``, with the upper half jittered so that many
    clients that failed together do not come back together."""
    ceiling = min(cap_ms, base_ms << min(failures - 1, 30))
    half = ceiling // 2
    return ceiling - half + rng.randrange(half + 1)
