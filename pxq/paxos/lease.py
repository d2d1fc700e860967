"""Master lease arithmetic: how long each side of a heartbeat may rely on it.

An acceptor that acks a heartbeat (or Accept) of ballot b at its local time t promises not
to grant a Prepare to any other ballot until its clock reads t + lease_ms. The master that
sent the round at its local time t0 (which happened before every ack, in real time) and got
a majority of acks holds the lease until its clock reads t0 + lease_effective_ms, where
lease_effective_ms = lease_ms * (1 - 2 rho) - margin, rho = drift_ppm_max / 1e6.

Why that is safe: with real times T0 <= TA, the master's lease ends in real time no later
than T0 + lease_effective/(1 - rho), and the acceptor's promise ends no earlier than
TA + (lease_ms - 1)/(1 + rho) (one ms for integer clocks). Since
(1 - 2 rho)(1 + rho) <= 1 - rho, the margin (>= a few ms) covers the rounding, so the master
stops serving before any acceptor of that majority could promise a rival. Any rival needs a
majority of promises, which intersects every lease majority.
"""

from __future__ import annotations

from pxq.paxos.config import PaxosConfig


def master_lease_until(sent_at_ms: int, config: PaxosConfig) -> int:
    """The master's lease expiry (its clock) for a round it sent at ``sent_at_ms``."""
    return sent_at_ms + config.lease_effective_ms()


def acceptor_lease_until(acked_at_ms: int, config: PaxosConfig) -> int:
    """Until when an acceptor that acked at ``acked_at_ms`` refuses rival Prepares."""
    return acked_at_ms + config.lease_ms
