"""Timers (shared by the client machines) and the backoff helper."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.routing import backoff_ms
from pxq.timers import STALE_FACTOR, STALE_SLACK, Timers


def test_a_key_has_one_deadline_and_the_latest_setting_wins() -> None:
    t: Timers[str] = Timers()
    t.set("a", 50)
    t.set("b", 20)
    t.set("a", 10)
    assert t.earliest() == 10 and t.get("a") == 10
    t.set("a", None)
    assert t.earliest() == 20 and len(t) == 1
    assert t.pop_due(19) == []
    assert t.pop_due(100) == ["b"]
    assert t.earliest() is None and len(t) == 0


def test_due_keys_come_out_earliest_first_ties_in_arming_order() -> None:
    t: Timers[str] = Timers()
    for key, at in [("x", 5), ("y", 3), ("z", 5), ("w", 9)]:
        t.set(key, at)
    assert t.pop_due(5) == ["y", "x", "z"]
    assert t.pop_due(9) == ["w"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.none() | st.integers(0, 1000)), max_size=300))
def test_timers_match_a_plain_dict_and_stay_compact(ops: list[tuple[int, int | None]]) -> None:
    t: Timers[int] = Timers()
    model: dict[int, int] = {}
    for key, at in ops:
        t.set(key, at)
        if at is None:
            model.pop(key, None)
        else:
            model[key] = at
        assert t.earliest() == (min(model.values()) if model else None)
        assert len(t._heap) <= STALE_FACTOR * len(model) + STALE_SLACK + 1
    due = t.pop_due(500)
    assert sorted(due) == sorted(k for k, at in model.items() if at <= 500)


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(3)
    for failures, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (40, 100)]:
        for _ in range(20):
            d = backoff_ms(rng, failures, 10, 100)
            assert ceiling - ceiling // 2 <= d <= ceiling
