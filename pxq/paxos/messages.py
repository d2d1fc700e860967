"""The Paxos wire messages (tags 1-63) and the client API of a replica set.

Peer messages carry the Paxos ``group`` they belong to; one replica hosts every group of its
set. Client requests arrive as ``ClientCall.request`` and are answered with ``Reply``.
Values are opaque bytes at this layer: an instance value is an encoded ``Entry`` (see
``records.py``), a client value is whatever the state machine understands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from pxq.codec import message

# --------------------------------------------------------------------------------------------
# Phase 1


@message(1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """Candidate ``ballot`` asks for a promise covering every instance >= ``from_instance``.

    A new master repeats it with the same ballot and a higher ``from_instance`` (the next
    recovery window) when a promise said the acceptor has more accepted entries.
    """

    group: int
    ballot: int
    from_instance: int


@message(2)
@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedEntry:
    """An acceptor's state for one instance, as reported in a promise."""

    instance: int
    ballot: int
    value: bytes
    chosen: bool
    """The acceptor knows this value is chosen (applied, or learned as chosen)."""


@message(3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Promise:
    """The answer to a Prepare.

    When ``ok``, the acceptor has durably promised ``ballot`` and ``entries`` lists its
    accepted values for instances in [from_instance, covered_to); ``covered_to`` is None when
    the acceptor has nothing accepted at or beyond the window's end. When not ``ok``,
    ``promised`` is the higher ballot it holds, ``behind`` says the candidate asked below this
    acceptor's truncated log (it must catch up first), and ``lease_left_ms`` says how long a
    lease promise to ``master`` still holds.
    """

    group: int
    ballot: int
    from_instance: int
    ok: bool
    promised: int
    entries: tuple[AcceptedEntry, ...] = ()
    covered_to: int | None = None
    chosen_upto: int = 0
    log_start: int = 1
    behind: bool = False
    lease_left_ms: int = 0
    master: str | None = None


# --------------------------------------------------------------------------------------------
# Phase 2 and lease


@message(4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    """Master ``ballot`` proposes ``value`` for ``instance``; ``commit`` piggybacks its
    chosen prefix (every instance <= commit is chosen)."""

    group: int
    ballot: int
    instance: int
    value: bytes
    commit: int


@message(5)
@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted:
    """An acceptor's answer to Accept (``ok``) or its refusal with the ballot it promised."""

    group: int
    ballot: int
    instance: int
    ok: bool
    promised: int
    applied: int


@message(6)
@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Master ``ballot`` renews its lease (round ``seq``) and announces its commit index.

    ``applied``/``checksum`` let followers compare their log checksum with the master's.
    """

    group: int
    ballot: int
    seq: int
    commit: int
    applied: int
    checksum: int


@message(7)
@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck:
    group: int
    ballot: int
    seq: int
    ok: bool
    promised: int
    applied: int


@message(8)
@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """Master ``ballot`` stopped renewing so that ``successor`` can take over at once."""

    group: int
    ballot: int
    successor: str


# --------------------------------------------------------------------------------------------
# Catch-up and snapshots


@message(9)
@dataclass(frozen=True, slots=True, kw_only=True)
class LearnRequest:
    """Send me chosen values from ``from_instance`` on (at most ``count``)."""

    group: int
    from_instance: int
    count: int


@message(10)
@dataclass(frozen=True, slots=True, kw_only=True)
class LearnedEntry:
    """A chosen value."""

    instance: int
    value: bytes


@message(11)
@dataclass(frozen=True, slots=True, kw_only=True)
class LearnReply:
    """Chosen values for the requester. ``log_start`` > the requested instance means the
    sender truncated its log there: the requester must install a snapshot. ``applied`` and
    ``checksum`` are the sender's log checksum, which the requester compares with its own."""

    group: int
    from_instance: int
    entries: tuple[LearnedEntry, ...]
    chosen_upto: int
    log_start: int
    applied: int
    checksum: int


@message(12)
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest:
    """Send me bytes from ``offset`` of your snapshot at ``instance`` (0: your latest)."""

    group: int
    instance: int
    offset: int


@message(13)
@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk:
    """A piece of the state machine snapshot taken after applying ``instance``.

    ``checksum`` is the log checksum at ``instance``, ``digest`` a blake2b digest of the
    whole snapshot (``total`` bytes), verified before install.
    """

    group: int
    instance: int
    checksum: int
    total: int
    digest: bytes
    offset: int
    data: bytes


# --------------------------------------------------------------------------------------------
# Repair (tags 20-21: see ``repair.py``)


@message(20)
@dataclass(frozen=True, slots=True, kw_only=True)
class RepairQuery:
    """A replica that lost acceptor state (a damaged record, a replaced disk) or booted on
    blank storage of unknown history asks a peer what it holds. With ``join``, it has
    learned that it never joined the group and asks the peer to record it as a member."""

    group: int
    join: bool


@message(21)
@dataclass(frozen=True, slots=True, kw_only=True)
class RepairReply:
    """What the sender holds for ``group``: its promised ballot, the highest instance in its
    log (accepted or chosen) or proposed by it, its applied index, whether it holds nothing
    at all (``blank``), whether it is itself repairing lost acceptor state
    (``repairing``: then its answer does not count), and whether it has recorded the asker as
    a member of the group (``member``: the asker may have voted in it)."""

    group: int
    promised: int
    log_end: int
    applied: int
    blank: bool
    repairing: bool
    member: bool


# Pre-vote


@message(14)
@dataclass(frozen=True, slots=True, kw_only=True)
class PreVote:
    """A follower that heard no master for a lease asks, before it raises any ballot (its own
    acceptor's promise included), whether a campaign of its would be granted now. Answering
    changes nothing at the receiver; ``seq`` names the asker's round."""

    group: int
    seq: int


@message(15)
@dataclass(frozen=True, slots=True, kw_only=True)
class PreVoteReply:
    """The answer to a PreVote: ``granted`` when this acceptor honours no master's lease any
    more (it would promise a new ballot). Otherwise ``lease_left_ms`` says how long the lease
    of ``master`` still holds here. ``promised`` lets the asker campaign above it."""

    group: int
    seq: int
    granted: bool
    promised: int
    lease_left_ms: int = 0
    master: str | None = None


PeerMessage: TypeAlias = (
    Prepare
    | Promise
    | Accept
    | Accepted
    | Heartbeat
    | HeartbeatAck
    | Handover
    | LearnRequest
    | LearnReply
    | SnapshotRequest
    | SnapshotChunk
    | RepairQuery
    | RepairReply
    | PreVote
    | PreVoteReply
)

# --------------------------------------------------------------------------------------------
# Client API


@message(32)
@dataclass(frozen=True, slots=True, kw_only=True)
class Propose:
    """Append ``value`` to the log of ``group`` (ask the master)."""

    group: int
    value: bytes


@message(33)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeOk:
    """The value is chosen at ``instance`` (position ``slot`` in its batch) and applied;
    ``result`` is what the state machine returned for it."""

    group: int
    instance: int
    slot: int
    result: bytes


@message(34)
@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect:
    """Definite: the value was not accepted here; ``master`` is the master known (or None)."""

    group: int
    master: str | None


@message(35)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeRejected:
    """Definite failure (too large, overloaded, no such group): the value is never chosen."""

    group: int
    reason: str


@message(36)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposeUnknown:
    """Outcome unknown: the value was sent out for acceptance and may still be chosen."""

    group: int
    reason: str


ProposeResponse: TypeAlias = ProposeOk | Redirect | ProposeRejected | ProposeUnknown
