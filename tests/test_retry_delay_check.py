"""``check_retry_delay``: a failed item reaches its next retry level within the level's delay
plus the bound, never before the delay.

Method: hand-written histories (``tests/test_queue_checkers.H``) whose clock is set between
ops: an on-time move passes; a late one, an early one, and a failure at the level before
measured from its latest failure are told apart; dead letters and other groups' topics are
ignored.
"""

from __future__ import annotations

from pxq.check.retry_delay import RETRY_LATE_MS_MAX, check_retry_delay
from pxq.topics import dead_letter_topic, retry_topic
from tests.test_queue_checkers import H, T

L1 = retry_topic(T, "g", 1)
L2 = retry_topic(T, "g", 2)
DELAYS = {"g": (50, 200)}


def fail_then_move(h: H, msg: str, *, failed_ms: int, moved_ms: int, level: int = 1) -> None:
    source = T if level == 1 else retry_topic(T, "g", level - 1)
    h.time_ms = failed_ms - 1
    h.handle("g", msg, 0, "fail", topic=source)
    h.time_ms = moved_ms - 1
    h.deliver("g", msg, 0, topic=retry_topic(T, "g", level), attempt=level)


def test_moves_within_the_delay_plus_the_bound_pass_with_their_figures() -> None:
    h = H()
    fail_then_move(h, "a", failed_ms=1000, moved_ms=1053)
    fail_then_move(h, "a", failed_ms=1100, moved_ms=1100 + 200 + RETRY_LATE_MS_MAX, level=2)
    fail_then_move(h, "b", failed_ms=2000, moved_ms=2049)  # 1 ms early: rounding, tolerated
    result = check_retry_delay(h.ops, DELAYS)
    assert result.ok, result.summary
    assert result.details["moves"] == 3
    assert result.details["lateness_ms"] == {
        "min": -1,
        "median": 3,
        "p99": RETRY_LATE_MS_MAX,
        "max": RETRY_LATE_MS_MAX,
    }


def test_a_late_and_an_early_move_are_violations() -> None:
    h = H()
    fail_then_move(h, "late", failed_ms=1000, moved_ms=1000 + 50 + RETRY_LATE_MS_MAX + 1)
    fail_then_move(h, "early", failed_ms=2000, moved_ms=2040)
    result = check_retry_delay(h.ops, DELAYS)
    assert not result.ok
    assert (result.details["late"], result.details["early"]) == (1, 1)
    late, early = result.details["late-examples"], result.details["early-examples"]
    assert late == [
        {
            "group": "g",
            "msg_id": "late",
            "topic": L1,
            "failed_ms": 1000,
            "delivered_ms": 1000 + 50 + RETRY_LATE_MS_MAX + 1,
            "delay_ms": 50,
            "late_ms": RETRY_LATE_MS_MAX + 1,
        }
    ]
    assert isinstance(early, list) and [(e["msg_id"], e["late_ms"]) for e in early] == [
        ("early", -10)
    ]
    assert check_retry_delay(h.ops, DELAYS, late_ms_max=RETRY_LATE_MS_MAX + 1).details["late"] == 0


def test_the_delay_runs_from_the_latest_failure_at_the_level_before() -> None:
    # Redelivered in place after a consumer crash, the item failed again: the Retry that
    # moved it acted on the second failure.
    h = H()
    h.time_ms = 999
    h.handle("g", "a", 0, "fail")
    fail_then_move(h, "a", failed_ms=5000, moved_ms=5060)
    result = check_retry_delay(h.ops, DELAYS)
    assert result.ok and result.details["lateness_ms"]["max"] == 10  # type: ignore[index]


def test_dead_letters_other_groups_and_unmoved_failures_are_not_measured() -> None:
    h = H()
    h.time_ms = 99
    h.handle("g", "a", 0, "fail", topic=L2)
    h.time_ms = 9999
    h.deliver("g", "a", 0, topic=dead_letter_topic(T, "g"))  # no delay on dead letters
    h.handle("g", "b", 0, "fail")  # never moved (the run ended): retry_flow's concern
    h.deliver("h", "c", 0, topic=L1, attempt=1)  # another group's level
    h.deliver("g", "d", 0, topic=L1, attempt=1)  # no failure seen: retry_flow's concern
    result = check_retry_delay(h.ops, DELAYS)
    assert result.ok and result.details["moves"] == 0
