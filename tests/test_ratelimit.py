"""TokenBucket: the window bound (property), refunds, shares, next_available_ms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.consumer.ratelimit import TokenBucket

ops = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 40)),  # (ms since previous take, n asked)
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(0, 2000),
    burst=st.integers(1, 50),
    share=st.tuples(st.integers(1, 5), st.integers(1, 7)).filter(lambda s: s[0] <= s[1]),
    steps=ops,
)
def test_granted_over_any_window_is_at_most_burst_plus_rate_times_length(
    rate: int, burst: int, share: tuple[int, int], steps: list[tuple[int, int]]
) -> None:
    bucket = TokenBucket(rate, burst, now_ms=0, share=share)
    num, den = share
    eff_burst = max(1, burst * num // den)  # at least one token: see the module docstring
    t = 0
    grants: list[tuple[int, int]] = []
    for dt, n in steps:
        t += dt
        granted = bucket.take(t, n)
        assert 0 <= granted <= n
        grants.append((t, granted))
    for i, (t0, _) in enumerate(grants):
        total = 0
        for t1, g in grants[i:]:
            total += g
            # Exact in integers: total * 1000 * den <= eff_burst * 1000 * den + rate*num*T.
            assert total * 1000 * den <= eff_burst * 1000 * den + rate * num * (t1 - t0)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 500),
    burst=st.integers(1, 30),
    steps=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 20), st.integers(0, 20)), max_size=50
    ),
)
def test_take_then_refund_the_unused_part_equals_taking_only_what_was_used(
    rate: int, burst: int, steps: list[tuple[int, int, int]]
) -> None:
    reserving = TokenBucket(rate, burst)
    exact = TokenBucket(rate, burst)
    t = 0
    for dt, asked, used in steps:
        t += dt
        got = reserving.take(t, asked)
        use = min(used, got)
        reserving.refund(t + dt // 2, got - use)
        assert exact.take(t, use) == use
        # Levels may differ only while the refund is in flight (between t and t + dt // 2).
        t += dt // 2
        assert reserving.available(t) == exact.available(t)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 3000),
    burst=st.integers(1, 40),
    drain_at=st.integers(0, 1000),
    n=st.integers(1, 60),
)
def test_next_available_ms_is_the_first_ms_with_enough_tokens(
    rate: int, burst: int, drain_at: int, n: int
) -> None:
    bucket = TokenBucket(rate, burst)
    bucket.take(drain_at, burst)
    at = bucket.next_available_ms(n)
    assert at is not None and at >= drain_at
    need = min(n, burst)
    probe = TokenBucket(rate, burst)
    probe.take(drain_at, burst)
    if at > drain_at:
        assert probe.available(at - 1) < need
    assert probe.available(at) >= need


def test_starts_full_and_refills_at_the_rate() -> None:
    b = TokenBucket(10, 5, now_ms=1000)
    assert b.take(1000, 7) == 5
    assert b.take(1000, 1) == 0
    assert b.next_available_ms(1) == 1100
    assert b.take(1099, 1) == 0
    assert b.take(1100, 3) == 1
    assert b.take(1500, 10) == 4
    assert b.available(10_000) == 5  # capped at the burst


def test_fractional_rates_lose_nothing_to_rounding() -> None:
    b = TokenBucket(1, 100, share=(1, 3))  # a third of a token per second, burst 33
    b.take(0, 100)
    granted = sum(b.take(t, 1) for t in range(0, 30_000, 7)) + b.take(30_000, 1)
    assert granted == 10  # 30 s at 1/3 token per second, to the ms
    assert b.next_available_ms(1) == 33_000


def test_zero_rate_never_refills() -> None:
    b = TokenBucket(0, 2)
    assert b.take(0, 5) == 2
    assert b.next_available_ms(1) is None
    assert b.available(10**9) == 0


def test_set_share_rescales_rate_and_burst() -> None:
    b = TokenBucket(100, 10)
    b.set_share(0, (1, 2))
    assert b.available(0) == 5  # the excess over the new burst is dropped
    b.take(0, 5)
    assert b.next_available_ms(1) == 20  # 50 tokens/s


def test_time_going_backwards_adds_nothing() -> None:
    b = TokenBucket(1000, 10)
    b.take(100, 10)
    assert b.take(50, 1) == 0
    assert b.take(101, 1) == 1


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, 0)
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(-1, 1)
    with pytest.raises(ValueError, match="share"):
        TokenBucket(1, 1, share=(1, 0))
    with pytest.raises(ValueError, match="n"):
        TokenBucket(1, 1).take(0, -1)
