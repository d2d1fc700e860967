"""Validation of peer messages before they reach a Paxos group: what no honest replica sends.

The codec already guarantees every field's type (``pxq.codec``); this module checks what the
types cannot say, so that no message from any connection can crash a replica or get a value
persisted that cannot be written or read back (a ballot too large for its u64 record, an
owner index that names no replica):

* every ballot is ``NO_BALLOT`` or at most ``BALLOT_MAX``, and owned by a replica of the set;
  a ballot a sender proposes with (``Prepare``, ``Accept``, ``Heartbeat``, ``Handover``) is
  owned by that sender, and a ballot an answer echoes (``Promise``, ``Accepted``,
  ``HeartbeatAck``) by this replica, which is the only one that asks with it;
* instances, sequence numbers, offsets and sizes are in ``0..COUNT_MAX``, checksums in u64;
* node names (a master, a successor) are replicas of the set.

``problem`` returns None for a valid message or a short reason; the replica drops an invalid
message and raises an alarm (``pxq.effects.ALARM``): from a replica that authenticated, it is
evidence of a defect or of a compromised peer.

``BALLOT_MAX`` (``ballot.py``) leaves room above it for ``next_ballot`` while staying far below
2**64: the bound costs an honest replica nothing, and a ballot it promised can always be
encoded and exceeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

from pxq.paxos.ballot import BALLOT_MAX, INDEX_SPAN, NO_BALLOT, owner_index
from pxq.paxos.messages import (
    Accept,
    Accepted,
    Handover,
    Heartbeat,
    HeartbeatAck,
    LearnReply,
    LearnRequest,
    PeerMessage,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    RepairQuery,
    RepairReply,
    SnapshotChunk,
    SnapshotRequest,
)

__all__ = [
    "BALLOT_MAX",
    "COUNT_MAX",
    "PEER_TYPES",
    "U64_MAX",
    "Peers",
    "is_peer_message",
    "problem",
]

COUNT_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Peers:
    """The replica set, and the index of the replica that receives."""

    replicas: tuple[str, ...]
    me: int
    n: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", len(self.replicas))


def _ballot(b: int, peers: Peers) -> bool:
    """``b`` is NO_BALLOT or a ballot a replica of the set may own."""
    return b == NO_BALLOT or (INDEX_SPAN <= b <= BALLOT_MAX and owner_index(b) < peers.n)


def _owned(b: int, owner: int) -> bool:
    return INDEX_SPAN <= b <= BALLOT_MAX and owner_index(b) == owner


def _counts(*values: int) -> bool:
    return all(0 <= v <= COUNT_MAX for v in values)


def _name(name: str | None, peers: Peers) -> bool:
    return name is None or name in peers.replicas


def _prepare(m: Prepare, src: int, p: Peers) -> str | None:
    if not _owned(m.ballot, src):
        return "ballot not owned by its sender"
    return None if _counts(m.from_instance) else "instance out of range"


def _promise(m: Promise, src: int, p: Peers) -> str | None:
    if not _owned(m.ballot, p.me) or not _ballot(m.promised, p):
        return "ballot out of range"
    if not _counts(m.from_instance, m.chosen_upto, m.log_start, m.lease_left_ms):
        return "count out of range"
    if m.covered_to is not None and not _counts(m.covered_to):
        return "count out of range"
    if not _name(m.master, p):
        return "master is not a replica"
    for e in m.entries:
        if not _counts(e.instance) or not _ballot(e.ballot, p):
            return "accepted entry out of range"
    return None


# Accept and Accepted are the messages of every round: their checks are written out.


def _accept(m: Accept, src: int, p: Peers) -> str | None:
    b = m.ballot
    if not (INDEX_SPAN <= b <= BALLOT_MAX and b & (INDEX_SPAN - 1) == src):
        return "ballot not owned by its sender"
    if 0 <= m.instance <= COUNT_MAX and 0 <= m.commit <= COUNT_MAX:
        return None
    return "count out of range"


def _accepted(m: Accepted, src: int, p: Peers) -> str | None:
    b = m.ballot
    if not (INDEX_SPAN <= b <= BALLOT_MAX and b & (INDEX_SPAN - 1) == p.me):
        return "ballot out of range"
    if not _ballot(m.promised, p):
        return "ballot out of range"
    if 0 <= m.instance <= COUNT_MAX and 0 <= m.applied <= COUNT_MAX:
        return None
    return "count out of range"


def _heartbeat(m: Heartbeat, src: int, p: Peers) -> str | None:
    if not _owned(m.ballot, src):
        return "ballot not owned by its sender"
    if not _counts(m.seq, m.commit, m.applied):
        return "count out of range"
    return None if 0 <= m.checksum <= U64_MAX else "checksum out of range"


def _heartbeat_ack(m: HeartbeatAck, src: int, p: Peers) -> str | None:
    if not _owned(m.ballot, p.me) or not _ballot(m.promised, p):
        return "ballot out of range"
    return None if _counts(m.seq, m.applied) else "count out of range"


def _handover(m: Handover, src: int, p: Peers) -> str | None:
    if not _owned(m.ballot, src):
        return "ballot not owned by its sender"
    return None if m.successor in p.replicas else "successor is not a replica"


def _learn_request(m: LearnRequest, src: int, p: Peers) -> str | None:
    return None if _counts(m.from_instance, m.count) else "count out of range"


def _learn_reply(m: LearnReply, src: int, p: Peers) -> str | None:
    if not _counts(m.from_instance, m.chosen_upto, m.log_start, m.applied):
        return "count out of range"
    if not 0 <= m.checksum <= U64_MAX:
        return "checksum out of range"
    if not all(0 <= e.instance <= COUNT_MAX for e in m.entries):
        return "entry instance out of range"
    return None


def _snapshot_request(m: SnapshotRequest, src: int, p: Peers) -> str | None:
    return None if _counts(m.instance, m.offset) else "count out of range"


def _snapshot_chunk(m: SnapshotChunk, src: int, p: Peers) -> str | None:
    if not _counts(m.instance, m.total, m.offset) or m.offset + len(m.data) > m.total:
        return "chunk out of range"
    return None if 0 <= m.checksum <= U64_MAX else "checksum out of range"


def _repair_query(m: RepairQuery, src: int, p: Peers) -> str | None:
    return None


def _repair_reply(m: RepairReply, src: int, p: Peers) -> str | None:
    if not _ballot(m.promised, p):
        return "ballot out of range"
    return None if _counts(m.log_end, m.applied) else "count out of range"


def _pre_vote(m: PreVote, src: int, p: Peers) -> str | None:
    return None if _counts(m.seq) else "count out of range"


def _pre_vote_reply(m: PreVoteReply, src: int, p: Peers) -> str | None:
    if not _ballot(m.promised, p):
        return "ballot out of range"
    if not _counts(m.seq, m.lease_left_ms):
        return "count out of range"
    return None if _name(m.master, p) else "master is not a replica"


_CHECKS: dict[type, Callable[[object, int, Peers], str | None]] = {
    cls: check  # type: ignore[misc]
    for cls, check in (
        (Prepare, _prepare),
        (Promise, _promise),
        (Accept, _accept),
        (Accepted, _accepted),
        (Heartbeat, _heartbeat),
        (HeartbeatAck, _heartbeat_ack),
        (Handover, _handover),
        (LearnRequest, _learn_request),
        (LearnReply, _learn_reply),
        (SnapshotRequest, _snapshot_request),
        (SnapshotChunk, _snapshot_chunk),
        (RepairQuery, _repair_query),
        (RepairReply, _repair_reply),
        (PreVote, _pre_vote),
        (PreVoteReply, _pre_vote_reply),
    )
}


PEER_TYPES: tuple[type, ...] = tuple(_CHECKS)
"""Every peer message type (the ``PeerMessage`` union), each with its check here."""


def is_peer_message(msg: object) -> TypeGuard[PeerMessage]:
    """Whether ``msg`` is one of the Paxos peer messages (``PEER_TYPES``)."""
    return type(msg) in _CHECKS


def problem(msg: object, src: int, peers: Peers) -> str | None:
    """None when ``msg`` from the replica at index ``src`` is one an honest replica could
    send; else why not (an unknown type included)."""
    check = _CHECKS.get(type(msg))
    if check is None:
        return "unknown message"
    return check(msg, src, peers)
