"""Configuration of a Paxos replica set: membership, timing and every limit, in one place.

``PaxosConfig`` is shared by every replica of a set (they must agree on it). Every queue,
buffer, batch, chunk and retry count the Paxos core keeps is bounded by a field here, and
``__post_init__`` rejects inconsistent values with a ``ValueError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.effects import NodeId

MiB = 1024 * 1024
REPLICAS_MAX = 9
"""Ballots pack the replica index into 4 bits (see ``ballot.py``); 9 leaves room."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PaxosConfig:
    """Membership, timing and limits of one replica set hosting ``groups`` Paxos groups."""

    replicas: tuple[NodeId, ...]
    """The members, in a fixed order every replica agrees on (index = ballot tiebreak)."""
    groups: int = 1
    """Paxos groups hosted by the set; group g prefers ``replicas[g % len(replicas)]``."""

    # -- timing (monotonic ms of each node's own clock) ---------------------------------------
    lease_ms: int = 1000
    """How long an acceptor's ack keeps it from promising any other ballot."""
    heartbeat_ms: int = 200
    """Interval between master heartbeats (which renew the lease without disk writes)."""
    drift_ppm_max: int = 1000
    """Largest clock rate error (parts per million) of any node that the lease tolerates."""
    lease_margin_ms: int = 5
    """Subtracted from the master's lease on top of the drift allowance (ms rounding, safety)."""
    election_jitter_ms: int = 100
    """Width of the random delay before a campaign; the preferred replica uses a quarter."""
    accept_timeout_ms: int = 100
    """Retransmit an Accept (or Prepare) that has no quorum after this long."""
    accept_retries_max: int = 8
    """Retransmissions of one Accept round before the master steps down."""
    learn_timeout_ms: int = 300
    """Retry a catch-up or snapshot request that got no answer after this long."""
    handover_after_ms: int = 2000
    """A non-preferred master serves at least this long before handing over."""

    # -- batching and pipeline ----------------------------------------------------------------
    # A value that finds the pipeline idle is proposed at once; values arriving while instances
    # are in flight accumulate into one batch (``group.py`` explains the rule).
    batch_items_max: int = 100
    """Client values per instance."""
    batch_bytes_max: int = 1 * MiB
    """Payload bytes per instance."""
    batch_delay_ms: int = 1
    """Upper bound on how long a value that arrives while instances are in flight waits for
    company; an instance being chosen or the batch filling ends the wait sooner, and a value
    that finds the pipeline idle never waits. 0: every value is proposed at once while the
    pipeline has room (one instance per value until it is full: least latency, most
    messages)."""
    pipeline_max: int = 8
    """Instances beyond the applied prefix (proposed, not yet applied) per group."""
    pending_max: int = 10_000
    """Client values queued per group; beyond it new values are rejected as overloaded."""
    pending_bytes_max: int = 64 * MiB
    """Client value bytes queued per group; beyond it new values are rejected as overloaded."""
    value_bytes_max: int = 1 * MiB
    """Largest single client value."""

    # -- catch-up, checkpoint, snapshot --------------------------------------------------------
    learn_chunk_max: int = 32
    """Instances per Promise or LearnReply (and per recovery window of a new master)."""
    learn_bytes_max: int = 4 * MiB
    """Value bytes per Promise or LearnReply (at least one entry is always sent)."""
    checkpoint_every: int = 1000
    """Applied instances between checkpoints (log truncation points)."""
    log_hold: int = 1000
    """Instances kept below the checkpoint before truncation, for peers to catch up from."""
    snapshot_chunk_bytes: int = 1 * MiB
    """Bytes per snapshot transfer message."""
    snapshot_bytes_max: int = 1024 * MiB
    """Largest snapshot a replica buffers while receiving it."""
    snapshot_cache_max: int = 2
    """Snapshots a replica keeps encoded while serving them to peers."""
    handover_lag_max: int = 8
    """How far behind (instances) the preferred replica may be to receive a handover."""

    def __post_init__(self) -> None:
        n = len(self.replicas)
        if n < 1 or n > REPLICAS_MAX or n % 2 == 0:
            raise ValueError(f"replicas: need an odd count from 1 to {REPLICAS_MAX}, got {n}")
        if len(set(self.replicas)) != n:
            raise ValueError("replicas: names must be distinct")
        if any(not r for r in self.replicas):
            raise ValueError("replicas: names must be non-empty")
        positive = (
            "groups",
            "lease_ms",
            "heartbeat_ms",
            "election_jitter_ms",
            "accept_timeout_ms",
            "accept_retries_max",
            "learn_timeout_ms",
            "batch_items_max",
            "batch_bytes_max",
            "pipeline_max",
            "pending_max",
            "pending_bytes_max",
            "value_bytes_max",
            "learn_chunk_max",
            "learn_bytes_max",
            "checkpoint_every",
            "snapshot_chunk_bytes",
            "snapshot_bytes_max",
            "snapshot_cache_max",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "drift_ppm_max",
            "lease_margin_ms",
            "batch_delay_ms",
            "log_hold",
            "handover_after_ms",
            "handover_lag_max",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.drift_ppm_max >= 100_000:
            raise ValueError("drift_ppm_max: must be below 100000 (10 %)")
        if self.value_bytes_max > self.batch_bytes_max:
            raise ValueError("value_bytes_max: must not exceed batch_bytes_max")
        if self.value_bytes_max > self.pending_bytes_max:
            raise ValueError("value_bytes_max: must not exceed pending_bytes_max")
        # The master must complete at least two heartbeat rounds per lease, or a single lost
        # heartbeat would let the lease lapse under a healthy master.
        if 2 * self.heartbeat_ms >= self.lease_effective_ms():
            raise ValueError(
                "heartbeat_ms: must be below half the effective lease "
                f"({self.lease_effective_ms()} ms after drift and margin)"
            )

    def lease_effective_ms(self) -> int:
        """How long after sending a heartbeat round the master may rely on it (its clock).

        lease_ms * (1 - 2 * drift) - margin, rounded down: see ``lease.py`` for why.
        """
        return self.lease_ms * (1_000_000 - 2 * self.drift_ppm_max) // 1_000_000 - (
            self.lease_margin_ms
        )

    def index_of(self, node: NodeId) -> int:
        """The replica index of ``node`` (ValueError if it is not a member)."""
        return self.replicas.index(node)

    def preferred(self, group: int) -> NodeId:
        """The replica that should be master of ``group`` when it is alive."""
        return self.replicas[group % len(self.replicas)]
