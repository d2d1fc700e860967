"""Multi-Paxos replicated log: acceptor, proposer, learner, master lease, catch-up, checkpoint.

Modules: ``config`` (limits and timing), ``ballot`` and ``quorum`` (arithmetic), ``lease``
(lease arithmetic and its safety argument), ``messages`` (wire and client API), ``records``
(durable layout, value and checksum formats), ``acceptor``, ``learner``, ``group`` (roles and
protocol of one group), ``roles`` (the state of a candidate and of a leader), ``catchup``
(catch-up and snapshot transfer), ``replica`` (the ``Node``), ``service`` (a service node
around a replica), ``sm`` (state machine interface) and ``logsm`` (``RecordingLog``).
"""

from __future__ import annotations

from pxq.paxos.config import PaxosConfig
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.messages import (
    Propose,
    ProposeOk,
    ProposeRejected,
    ProposeResponse,
    ProposeUnknown,
    Redirect,
)
from pxq.paxos.replica import Replica
from pxq.paxos.sm import StateMachine

__all__ = [
    "PaxosConfig",
    "Propose",
    "ProposeOk",
    "ProposeRejected",
    "ProposeResponse",
    "ProposeUnknown",
    "RecordingLog",
    "Redirect",
    "Replica",
    "StateMachine",
]
