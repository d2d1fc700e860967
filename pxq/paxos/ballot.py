"""Ballot numbers: totally ordered, unique per replica, packed into one integer.

A ballot is ``round * 16 + replica_index``. Rounds start at 1, so ballot 0 means "none"
(nothing promised or accepted). Comparing the packed integers compares rounds first and
breaks ties by replica index, so two replicas can never pick the same ballot.
"""

from __future__ import annotations

from pxq.effects import InvariantViolation

INDEX_BITS = 4
INDEX_SPAN = 1 << INDEX_BITS
NO_BALLOT = 0
BALLOT_MAX = (1 << 62) - 1
"""The largest ballot a replica accepts from a peer or reads from its disk. It leaves room
above it for ``next_ballot`` while staying far below 2**64 (the u64 of its records): an honest
replica reaches it only after 2**58 elections, so a larger ballot was forged
(``validate.py``) and is never promised, accepted or persisted."""


def make_ballot(round_: int, index: int) -> int:
    """The ballot of ``round_`` (>= 1) owned by the replica at ``index``."""
    if round_ < 1 or not 0 <= index < INDEX_SPAN:
        raise InvariantViolation(f"bad ballot parts round={round_} index={index}")
    return round_ * INDEX_SPAN + index


def round_of(ballot: int) -> int:
    return ballot >> INDEX_BITS


def owner_index(ballot: int) -> int:
    """The replica index that owns ``ballot`` (meaningless for NO_BALLOT)."""
    return ballot & (INDEX_SPAN - 1)


def next_ballot(highest_seen: int, index: int) -> int:
    """The smallest ballot owned by ``index`` that is above every ballot seen so far."""
    return make_ballot(round_of(highest_seen) + 1, index)
