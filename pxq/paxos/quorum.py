"""Quorum arithmetic, in one place: majorities over replica sets given as index bitmasks.

Votes are kept as integer bitmasks over replica indexes (bit i = replica i voted), which is
deterministic and cheap; every "do we have a quorum" decision in the Paxos core goes
through this module. ``tests/test_paxos_quorum.py`` checks it against a brute-force model.
"""

from __future__ import annotations


def majority(n: int) -> int:
    """The smallest number of replicas that forms a quorum of ``n``."""
    return n // 2 + 1


def bit(index: int) -> int:
    return 1 << index


def votes(mask: int) -> int:
    """How many replicas are in ``mask``."""
    return mask.bit_count()


def is_quorum(mask: int, n: int) -> bool:
    """True when the replicas in ``mask`` (restricted to the n members) form a majority."""
    return votes(mask & ((1 << n) - 1)) >= majority(n)


def quorum_impossible(rejected: int, n: int) -> bool:
    """True when the replicas not in ``rejected`` can no longer form a majority."""
    return n - votes(rejected & ((1 << n) - 1)) < majority(n)
