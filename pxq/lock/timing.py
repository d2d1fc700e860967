"""The timing rules of a lease holder (a consumer, the scheduler), in one place.

A holder trusts a grant until ``lease_ms - margin_ms`` after it sent the request (the margin
covers clock drift over one lease and the lock masters' term-clock catch-up, see
``pxq.lock.node``), renews every ``renew_ms`` (at least twice within the trusted time, so one
lost renewal does not lose the lease) and polls what it watches every ``poll_ms`` (less than a
lease, or a dead peer's keys would be noticed late).
"""

from __future__ import annotations

from typing import Final

LEASE_MS_DEFAULT: Final = 3000
"""A holder's lease (a consumer's on each queue it owns and on its membership key, the
scheduler's on its election key) unless configured otherwise."""
MARGIN_MS_DEFAULT: Final = 600
RENEW_MS_DEFAULT: Final = 1000
POLL_MS_DEFAULT: Final = 500
"""The defaults of the other timings; together with ``LEASE_MS_DEFAULT`` they satisfy
``lease_timing_problem``."""


def lease_timing_problem(
    lease_ms: int, margin_ms: int, renew_ms: int, poll_ms: int
) -> tuple[str, str] | None:
    """The first rule the timing breaks, as (field, reason); None if it is valid."""
    if lease_ms < 1:
        return "lease_ms", f"must be >= 1, got {lease_ms}"
    if not 0 < margin_ms < lease_ms:
        return "margin_ms", f"must be > 0 and < lease_ms = {lease_ms}, got {margin_ms}"
    renew_max = (lease_ms - margin_ms) // 2
    if not 0 < renew_ms <= renew_max:
        return (
            "renew_ms",
            f"must be > 0 and <= (lease_ms - margin_ms) / 2 = {renew_max}, got {renew_ms}",
        )
    if not 0 < poll_ms < lease_ms:
        return "poll_ms", f"must be > 0 and < lease_ms = {lease_ms}, got {poll_ms}"
    return None
