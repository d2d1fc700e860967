"""The volatile state of a group's roles: what a candidate and a leader hold, and nothing else.

A replica's part in a group (``group.py``) is a follower, a candidate or a leader (``Role``).
Durable state (the acceptor), the learner, the commit index and catch-up belong to the
replica whatever its role; the state below exists only while a role needs it, as one object
the group holds or drops, so leaving a role forgets all of it in one assignment and a new
field of a role is declared (and initialised) in one place:

* ``PreVoteRound``: a follower asking its peers whether it may campaign (``PreVote``),
  before it raises any ballot. Created when its election timer fires, dropped when a quorum
  granted (it campaigns), when the round fails, or when it hears a master.
* ``Phase1``: one round of phase 1 (Prepare/Promise) over the instances >= ``from_instance``.
  A candidate's campaign is such a round; a leader whose recovery needs more than one window
  runs one round per further window under the same ballot. Created when the round starts,
  dropped when it reaches a quorum, fails, or the replica steps down.
* ``Leadership``: what a leader keeps for its ballot: the lease and its heartbeat rounds,
  recovery, the pipeline of instances in flight, the pending client values, handover.
  Created on winning the election, dropped on stepping down.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from pxq.paxos.messages import Promise


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True, kw_only=True)
class PreVoteRound:
    """A follower's pre-vote round ``seq``: may it campaign without disturbing a live master?"""

    seq: int
    granted: int
    """Bitmask of the replicas that honour no lease any more (this one included)."""
    deadline: int
    """When the round fails if no quorum granted."""
    refused: int = 0
    """Bitmask of the replicas that still honour a master's lease."""
    wait_ms: int = 0
    """The longest lease a refusing replica still honours: how long to back off."""


@dataclass(slots=True, kw_only=True)
class Phase1:
    """A round of phase 1 for the instances >= ``from_instance`` under the group's ballot."""

    from_instance: int
    ok: int
    """Bitmask of the replicas that promised (this one included)."""
    promises: dict[int, Promise]
    """Replica index -> its promise, for the replicas in ``ok``."""
    deadline: int
    """When unanswered replicas get the Prepare again (or the round fails)."""
    rejects: int = 0
    """Bitmask of the replicas that refused."""
    retries: int = 0
    wait_ms: int = 0
    """The longest lease a refusing replica still honours: how long to back off."""


@dataclass(slots=True, kw_only=True)
class Inflight:
    """An instance this leader proposed that is not yet known chosen."""

    value: bytes
    acks: int
    sent_at: int
    first_sent_at: int
    """When the first Accept went out: every ack was given after it, so a quorum of acks
    renews the lease from this time (never from a later retransmission)."""
    retries: int = 0


@dataclass(slots=True, kw_only=True)
class Pending:
    """A client value waiting to be batched into an instance."""

    call_id: int
    value: bytes
    at: int


@dataclass(slots=True, kw_only=True)
class Leadership:
    """The state of a leader of the group's ballot, from its election to its stepping down."""

    since: int
    """When it won the election."""
    next_instance: int
    """The next instance a client batch goes to (above everything recovery covers)."""
    peer_ack_at: list[int | None]
    """Per replica index: when it last acked this ballot (None: not yet)."""
    lease_until: int = 0
    next_hb_at: int = 0
    hb_rounds: dict[int, list[int]] = field(default_factory=dict)
    """Heartbeat seq -> [sent at, bitmask of the replicas that acked it]."""
    recovery: deque[tuple[int, bytes | None]] = field(default_factory=deque)
    """(instance, value to re-propose or None for a no-op) found by phase 1, in order."""
    next_window: int | None = None
    """The first instance of the next recovery window still to promise (None: none)."""
    serving_from: int | None = None
    """The first instance of client values, once recovery is complete (None: not yet)."""
    inflight: dict[int, Inflight] = field(default_factory=dict)
    pending: deque[Pending] = field(default_factory=deque)
    pending_bytes: int = 0
    mastered: bool = False
    """The "became" master event was emitted and the "lapsed" one not since."""
    handing_over: bool = False
    """Mastership is being handed to the preferred replica: no new client values."""
