"""``TokenBucket``: the dequeue rate limit of a consumer group, in pure integer arithmetic.

The bucket holds at most ``burst`` tokens and refills at ``rate_per_s`` tokens per second; a
consumer takes one token per item it fetches. Guarantee (property-tested): over any window of
``T`` ms, the tokens granted are at most ``burst + rate_per_s * T / 1000``.

Units: the level is kept in milli-tokens and the refill rate as an exact fraction of
milli-tokens per millisecond, with the remainder of every refill carried over, so no time is
ever lost to rounding and no float is involved (the carry is dropped only when the bucket is
full). A ``share`` ``(num, den)`` scales both rate and burst, so a group's limit can be split
across its current owners (``(1, owners)``) or in proportion to the queues each owns. The
scaled burst is rounded down to whole tokens (a fractional one would let partial tokens add
up to one more) but is at least one token, so a tiny share still makes progress; that floor
may exceed the group's burst by up to one token per owner.

``take`` grants up to the requested count (possibly fewer, possibly zero); ``refund`` returns
tokens that were taken but not used (a consumer reserves ``items_max`` tokens for a ``Get``
and gives back what the store did not return). A refund is capped at ``burst`` exactly like a
refill, which makes "take n, refund n - m" indistinguishable from "take m".
"""

from __future__ import annotations

MILLI = 1000


class TokenBucket:
    """A token bucket over integer monotonic milliseconds; starts full."""

    __slots__ = (
        "_burst_m",
        "_carry",
        "_last_ms",
        "_level_m",
        "_per_ms",
        "_rate_m",
        "burst",
        "rate_per_s",
        "share",
    )

    def __init__(
        self,
        rate_per_s: int,
        burst: int,
        *,
        now_ms: int = 0,
        share: tuple[int, int] = (1, 1),
    ) -> None:
        if rate_per_s < 0:
            raise ValueError("rate_per_s: must be >= 0")
        if burst < 1:
            raise ValueError("burst: must be >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._last_ms = now_ms
        self._carry = 0
        self._rate_m = 0
        self._burst_m = 0
        self._per_ms = MILLI
        self.share = (1, 1)
        self._apply_share(share)
        self._level_m = self._burst_m

    def _apply_share(self, share: tuple[int, int]) -> None:
        num, den = share
        if num < 0 or den < 1:
            raise ValueError(f"share: {share} is not a fraction num/den with num >= 0, den >= 1")
        self.share = (num, den)
        # Exact: the refill is rate_m / per_ms milli-tokens per ms, kept as a fraction.
        self._rate_m = self.rate_per_s * MILLI * num
        self._per_ms = MILLI * den
        self._carry = 0
        # Whole tokens only: a fractional burst would let partial tokens add up to one more.
        self._burst_m = max(1, self.burst * num // den) * MILLI

    def set_share(self, now_ms: int, share: tuple[int, int]) -> None:
        """Scale rate and burst by ``num/den`` from ``now_ms`` on (tokens above the new burst
        are dropped)."""
        self._refill(now_ms)
        self._apply_share(share)
        self._cap()

    def _refill(self, now_ms: int) -> None:
        elapsed = now_ms - self._last_ms
        if elapsed <= 0:
            return  # time never runs backwards for the bucket; a stale now adds nothing
        self._last_ms = now_ms
        if self._level_m >= self._burst_m:
            self._carry = 0
            return
        acc = self._rate_m * elapsed + self._carry
        self._level_m += acc // self._per_ms
        self._carry = acc % self._per_ms
        self._cap()

    def _cap(self) -> None:
        # A full bucket keeps no partial refill: what overflows is lost, carry included.
        if self._level_m >= self._burst_m:
            self._level_m = self._burst_m
            self._carry = 0

    def available(self, now_ms: int) -> int:
        """Whole tokens available at ``now_ms``."""
        self._refill(now_ms)
        return self._level_m // MILLI

    def take(self, now_ms: int, n: int) -> int:
        """Take up to ``n`` whole tokens at ``now_ms``; returns how many were granted."""
        if n < 0:
            raise ValueError("n: must be >= 0")
        self._refill(now_ms)
        granted = min(n, self._level_m // MILLI)
        self._level_m -= granted * MILLI
        return granted

    def refund(self, now_ms: int, n: int) -> None:
        """Give back ``n`` tokens taken earlier and not used (capped at the burst)."""
        if n < 0:
            raise ValueError("n: must be >= 0")
        self._refill(now_ms)
        self._level_m += n * MILLI
        self._cap()

    def next_available_ms(self, n: int = 1) -> int | None:
        """The earliest monotonic ms at which ``n`` whole tokens (at most the burst) will be
        available if nobody takes any meanwhile; None if never (a zero rate)."""
        need_m = min(n * MILLI, self._burst_m)
        deficit = need_m - self._level_m
        if deficit <= 0:
            return self._last_ms
        if self._rate_m == 0:
            return None
        # Smallest t with (rate_m * t + carry) // per_ms >= deficit.
        return self._last_ms + -(-(deficit * self._per_ms - self._carry) // self._rate_m)
