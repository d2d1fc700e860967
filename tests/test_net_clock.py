"""The runtime's monotonic clock counts the time a host is suspended (CLOCK_BOOTTIME).

A master lease or a consumer's trust in its locks measured on CLOCK_MONOTONIC survives a
suspend longer than the lease: the holder would wake up believing it still holds it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import net.clock
from net.clock import mono_ns, now

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(net.clock.BOOTTIME is None, reason="the platform has no CLOCK_BOOTTIME")
def test_monotonic_time_is_boottime_where_the_platform_has_it() -> None:
    assert net.clock.BOOTTIME is not None
    before = time.clock_gettime_ns(net.clock.BOOTTIME)
    ours = mono_ns()
    after = time.clock_gettime_ns(net.clock.BOOTTIME)
    assert before <= ours <= after


def test_now_is_integer_ms_of_both_clocks_and_never_goes_back() -> None:
    a = now()
    b = now()
    assert isinstance(a.mono_ms, int) and isinstance(a.wall_ms, int)
    assert b.mono_ms >= a.mono_ms
    assert abs(a.wall_ms - time.time_ns() // 1_000_000) < 1_000


@pytest.mark.parametrize("path", ["net/node/runner.py", "net/client/driver.py"])
def test_drivers_read_monotonic_time_only_through_net_clock(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    assert re.search(r"time\.monotonic(_ns)?\(", text) is None, path
    assert "mono_ns" in text
