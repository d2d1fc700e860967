"""The clocks of the production runtime: monotonic nanoseconds that keep counting while the
host sleeps, and the ``Now`` a node or client machine is stepped with.

Leases are measured on the monotonic clock: a Paxos master's lease, and a consumer's trust in
the queue locks it holds. ``CLOCK_MONOTONIC`` (``time.monotonic_ns``) stops while a host or VM
is suspended, so a master frozen longer than its lease would wake up believing it still holds
it and serve reads. ``CLOCK_BOOTTIME`` (Linux) counts suspended time too; pxq uses it where the
platform has it and ``CLOCK_MONOTONIC`` elsewhere. The node runner and the client driver read
monotonic time here and nowhere else (a test checks it). Timers are still armed on the event
loop's clock, from the difference to the deadline: after a suspend they may fire late, never
early, and every step sees the true elapsed time, so an expired lease is seen as expired.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Final

from pxq.effects import Now

BOOTTIME: Final = getattr(time, "CLOCK_BOOTTIME", None)
"""The clock id of ``CLOCK_BOOTTIME``, or None where the platform lacks it."""

mono_ns: Callable[[], int] = (
    time.monotonic_ns
    if BOOTTIME is None
    else functools.partial(time.clock_gettime_ns, BOOTTIME)  # a C call, as cheap
)
"""Monotonic nanoseconds, counting the time the host was suspended where the platform can."""


def now() -> Now:
    """The driver's clock, in integer ms."""
    return Now(mono_ms=mono_ns() // 1_000_000, wall_ms=time.time_ns() // 1_000_000)
