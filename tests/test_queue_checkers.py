"""The queue checkers accept correct histories and catch each kind of violation."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pxq.check.history import JSON, NEMESIS, HistoryError, HistoryWriter, Op
from pxq.check.queue import (
    DEAD_LETTER,
    _Closed,
    _Frontier,
    check_queue_order,
    check_replay,
    check_retry_flow,
    check_total_queue,
    offset_index,
    queue_history,
    topic_level,
)
from pxq.check.result import EXAMPLES_MAX, CheckResult
from pxq.topics import dead_letter_topic, retry_topic

T = "orders"
R1 = retry_topic(T, "g", 1)
R2 = retry_topic(T, "g", 2)
DLQ = dead_letter_topic(T, "g")


def _is_json(result: CheckResult) -> bool:
    return bool(json.loads(json.dumps(result.to_json())) == result.to_json())


def _examples(result: CheckResult, kind: str) -> list[dict[str, object]]:
    examples = result.details[f"{kind}-examples"]
    assert isinstance(examples, list)
    return examples


class H:
    """A hand-made queue history; every op gets a fresh process, every pair is adjacent."""

    def __init__(self) -> None:
        self.w = HistoryWriter()
        self.time_ms = 0
        self.process = 0

    @property
    def ops(self) -> list[Op]:
        return self.w.ops

    def _pair(self, f: str, value: JSON, completion: str | None, **extra: JSON) -> int:
        self.process += 1
        self.time_ms += 1
        invoke = self.w.invoke(self.time_ms, self.process, f, value, **extra)
        if completion is not None:
            self.w.record(completion, self.time_ms, self.process, f, value, **extra)  # type: ignore[arg-type]
        return invoke.index

    def enqueue(
        self,
        msg: str,
        offset: int | None = None,
        *,
        queue: int = 0,
        outcome: str | None = "ok",
        kind: str | None = None,
        topic: str = T,
    ) -> None:
        extra: dict[str, JSON] = {"topic": topic, "queue": queue, "key": msg}
        if kind is not None:
            extra["kind"] = kind
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, "enqueue", msg, **extra)
        if outcome == "ok":
            assert offset is not None
            self.w.ok(self.time_ms, self.process, "enqueue", msg, **extra, offset=offset)
        elif outcome is not None:
            self.w.record(outcome, self.time_ms, self.process, "enqueue", msg, **extra)  # type: ignore[arg-type]

    def deliver(
        self,
        group: str,
        msg: str,
        offset: int,
        *,
        queue: int = 0,
        topic: str = T,
        attempt: int | None = None,
    ) -> int:
        extra: dict[str, JSON] = {"group": group, "topic": topic, "queue": queue, "offset": offset}
        if attempt is not None:
            extra["attempt"] = attempt
        return self._pair("deliver", msg, "ok", **extra)

    def handle(
        self,
        group: str,
        msg: str,
        offset: int,
        outcome: str = "ok",
        *,
        queue: int = 0,
        topic: str = T,
    ) -> None:
        self._pair(
            "handle",
            msg,
            "ok",
            group=group,
            topic=topic,
            queue=queue,
            offset=offset,
            outcome=outcome,
        )

    def commit(
        self, group: str, cursor: int, outcome: str = "ok", *, queue: int = 0, topic: str = T
    ) -> None:
        self._pair("commit", None, outcome, group=group, topic=topic, queue=queue, cursor=cursor)

    def seek(
        self,
        group: str,
        positions: list[tuple[int, int]],
        *,
        queue: int | None = 0,
        outcome: str = "ok",
        topic: str = T,
    ) -> None:
        self.process += 1
        self.time_ms += 1
        target = min((c for _, c in positions), default=0)
        extra: dict[str, JSON] = {"group": group, "topic": topic, "queue": queue, "offset": target}
        self.w.invoke(self.time_ms, self.process, "seek", None, **extra)
        if outcome == "ok":
            pairs: JSON = [[q, c] for q, c in positions]
            self.w.ok(self.time_ms, self.process, "seek", None, **extra, positions=pairs)
        else:
            self.w.record(outcome, self.time_ms, self.process, "seek", None, **extra)  # type: ignore[arg-type]

    def nemesis(self, f: str, group: str, consumer: str = "c1") -> None:
        self.time_ms += 1
        self.w.invoke(self.time_ms, NEMESIS, f, consumer, group=group)
        self.w.info(self.time_ms, NEMESIS, f, consumer, group=group)

    def take(self, group: str, msg: str, offset: int, *, queue: int = 0, topic: str = T) -> None:
        """Deliver and handle ok."""
        self.deliver(group, msg, offset, queue=queue, topic=topic)
        self.handle(group, msg, offset, queue=queue, topic=topic)


SUBS = {"g": {T: [0]}, "h": {T: [0, 1]}}


# --------------------------------------------------------------------------------------------
# Reading


def test_queue_history_reads_every_operation_and_ignores_others() -> None:
    h = H()
    h.enqueue("a", 0, kind="x")
    h.enqueue("b", outcome="info")
    h.enqueue("c", outcome=None)
    h.deliver("g", "a", 0, attempt=0)
    h.handle("g", "a", 0, "fail")
    h.commit("g", 1, "info")
    h.seek("g", [(0, 0)], queue=None)
    h.nemesis("consumer_crash", "g")
    h.nemesis("partition", "s1")
    history = queue_history(h.ops)
    assert [(e.msg_id, e.outcome, e.offset, e.kind) for e in history.enqueues] == [
        ("a", "ok", 0, "x"),
        ("b", "info", None, ""),
        ("c", "info", None, ""),
    ]
    (d,) = history.deliveries
    assert (d.group, d.topic, d.queue, d.offset, d.attempt) == ("g", T, 0, 0, 0)
    assert [h.failed for h in history.handlings] == [True]
    assert [c.outcome for c in history.commits] == ["info"]
    (seek,) = history.seeks
    assert seek.queue is None and seek.positions == {0: 0} and seek.affects(0)
    assert [e.f for e in history.consumer_events] == ["consumer_crash"]
    index = offset_index(history)
    assert [c.source for c in index[(T, 0)][0]] == ["enqueue", "g"]


def test_topic_levels() -> None:
    assert topic_level(T, "g") == 0
    assert topic_level(R2, "g") == 2
    assert topic_level(DLQ, "g") == DEAD_LETTER
    assert topic_level(R1, "h") is None
    assert topic_level(DLQ, "h") is None
    assert topic_level(f"{T}.retry.g.0", "g") is None


def test_malformed_histories_are_rejected() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("a", 1)
    with pytest.raises(HistoryError, match="already enqueued"):
        queue_history(h.ops)
    w = HistoryWriter()
    w.invoke(0, 1, "enqueue", "a", topic=T, queue=0)
    w.ok(1, 1, "enqueue", "a", topic=T, queue=0)
    with pytest.raises(HistoryError, match="'offset'"):
        check_total_queue(w.ops, SUBS)
    w = HistoryWriter()
    w.invoke(0, 1, "seek", None, group="g", topic=T, queue=0, offset=0)
    w.ok(1, 1, "seek", None, group="g", topic=T, queue=0)
    with pytest.raises(HistoryError, match="positions"):
        check_replay(w.ops)
    w = HistoryWriter()
    w.invoke(0, 1, "deliver", "a", group="g", topic=T, queue=0, offset=0)
    w.ok(0, 1, "deliver", "a", group="g", topic=T, queue=0, offset=1)
    with pytest.raises(HistoryError, match="differs"):
        check_queue_order(w.ops)
    w = HistoryWriter()
    w.invoke(0, 1, "handle", "a", group="g", topic=T, queue=0)
    w.ok(0, 1, "handle", "a", outcome="maybe")
    with pytest.raises(HistoryError, match="outcome"):
        check_retry_flow(w.ops, {})


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(-1, 12), st.integers(0, 4)),
        max_size=30,
    )
)
def test_the_interval_set_matches_a_plain_set(takes: list[tuple[int, int, int]]) -> None:
    closed, model = _Closed(), set[int]()
    for lo, width, first_max in takes:
        hi = lo + width
        unseen = [x for x in range(lo, hi + 1) if x not in model]
        assert closed.take(lo, hi, first_max) == (len(unseen), unseen[:first_max])
        model.update(range(lo, hi + 1))


def test_a_listed_frontier_counts_only_listed_offsets() -> None:
    frontier = _Frontier([1, 4, 5, 9])
    frontier.see(4)
    frontier.see(7)  # not listed: ignored
    assert frontier.take_unseen(0, 8) == (2, [1, 5])
    assert frontier.take_unseen(0, 9) == (1, [9])
    assert frontier.take_unseen(10, 20) == (0, [])


# --------------------------------------------------------------------------------------------
# Total queue


def _mixed_outcomes() -> H:
    """a, b ok on queue 0; c info (recovered by g); d info (never delivered); e failed; f ok
    on queue 1 (read by h only)."""
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.enqueue("c", outcome="info")
    h.enqueue("d", outcome=None)
    h.enqueue("e", outcome="fail")
    h.enqueue("f", 0, queue=1)
    for group in ("g", "h"):
        h.take(group, "a", 0)
        h.take(group, "b", 1)
    h.take("g", "c", 2)
    h.take("h", "f", 0, queue=1)
    return h


def test_total_queue_passes_and_counts_recovered_and_unrecovered() -> None:
    result = check_total_queue(_mixed_outcomes().ops, SUBS)
    assert result.ok, result.summary
    assert result.details["acknowledged"] == 3
    assert result.details["failed"] == 1
    assert result.details["indefinite"] == 2
    groups = result.details["groups"]
    assert isinstance(groups, dict)
    assert groups["g"]["expected"] == 2 and groups["g"]["recovered"] == 1
    assert groups["g"]["unrecovered"] == 1
    assert groups["h"]["expected"] == 3 and groups["h"]["recovered"] == 0
    assert groups["h"]["unrecovered"] == 2
    assert result.details["duplicated"] == 0
    assert _is_json(result)


def test_total_queue_catches_a_lost_item_per_group() -> None:
    h = _mixed_outcomes()
    h.enqueue("z", 2)
    h.take("g", "z", 3)  # c took offset 2 on queue 0, so z is at 3 (its ack is wrong: no matter)
    result = check_total_queue(h.ops, SUBS)
    assert not result.ok
    assert result.details["lost"] == 1
    (example,) = _examples(result, "lost")
    assert example["group"] == "h" and example["msg_id"] == "z"
    assert example["last_delivered_offset"] == 1
    assert result.details["lost-past-last-delivery"] == 1
    assert "1 lost" in result.summary


def test_total_queue_lost_below_the_last_delivery_is_a_hole() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.take("g", "b", 1)
    result = check_total_queue(h.ops, {"g": {T: [0]}})
    assert result.details["lost"] == 1
    assert result.details["lost-past-last-delivery"] == 0


def test_total_queue_counts_the_dead_letter_topic_as_delivered() -> None:
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0, topic=DLQ)  # e.g. a history that starts after the base delivery
    h.deliver("g", "a", 0, topic=R1)
    assert check_total_queue(h.ops, {"g": {T: [0]}}).ok


def test_total_queue_catches_unexpected_and_fail_but_delivered() -> None:
    h = _mixed_outcomes()
    h.take("g", "ghost", 3)
    h.take("h", "e", 2)
    result = check_total_queue(h.ops, SUBS)
    assert not result.ok
    assert result.details["unexpected"] == 1
    assert result.details["fail-but-delivered"] == 1
    assert _examples(result, "unexpected")[0]["msg_id"] == "ghost"
    assert _examples(result, "fail-but-delivered")[0]["group"] == "h"


def test_total_queue_catches_misplaced_and_unsubscribed_deliveries() -> None:
    h = _mixed_outcomes()
    h.take("h", "a", 1, queue=1)  # a was enqueued to queue 0
    h.take("g", "f", 1, queue=1)  # g does not read queue 1
    h.deliver("g", "b", 0, topic=retry_topic(T, "h", 1))  # h's retry topic
    h.deliver("x", "a", 0)  # no such group
    result = check_total_queue(h.ops, SUBS)
    assert result.details["misplaced"] == 1
    assert _examples(result, "misplaced")[0]["enqueued_queue"] == 0
    assert result.details["unsubscribed"] == 3
    assert [e["group"] for e in _examples(result, "unsubscribed")] == ["g", "g", "x"]


def test_total_queue_with_kinds_expects_only_the_kinds_a_group_takes() -> None:
    h = H()
    h.enqueue("a", 0, kind="pay")
    h.enqueue("b", 1, kind="refund")
    h.take("g", "a", 0)
    h.take("h", "a", 0)
    h.take("h", "b", 1)
    kinds = {"g": ["pay"]}
    result = check_total_queue(h.ops, SUBS, group_kinds=kinds)
    assert result.ok, result.summary
    assert check_total_queue(h.ops, SUBS).details["lost"] == 1  # g taking every kind lost b
    h.take("g", "b", 1)
    result = check_total_queue(h.ops, SUBS, group_kinds=kinds)
    assert result.details["unsubscribed"] == 1


def test_total_queue_duplicates_are_reported_and_fail_only_when_disallowed() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.take("g", "a", 0)
    h.take("g", "b", 1)
    h.nemesis("consumer_crash", "g")
    h.take("g", "a", 0)  # redelivered after the crash: a duplicate
    h.take("g", "b", 1)
    result = check_total_queue(h.ops, {"g": {T: [0]}})
    assert result.ok
    assert result.details["duplicated"] == 2
    strict = check_total_queue(h.ops, {"g": {T: [0]}}, duplicates_allowed=False)
    assert not strict.ok
    assert strict.details["duplicated"] == 2
    example = _examples(strict, "duplicated")[0]
    assert example["msg_id"] == "a" and example["previous_offset"] == 0


def test_total_queue_redelivery_after_a_handler_failure_or_a_seek_is_no_duplicate() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.deliver("g", "a", 0)
    h.handle("g", "a", 0, "fail")
    h.take("g", "a", 0)  # redelivery after failure
    h.take("g", "b", 1)
    h.seek("g", [(0, 0)])
    h.take("g", "a", 0)  # replay
    h.take("g", "b", 1)
    h.deliver("g", "a", 0, topic=R1, attempt=1)  # a retry level after ... no failure since
    result = check_total_queue(h.ops, {"g": {T: [0]}}, duplicates_allowed=False)
    assert result.details["duplicated"] == 1
    assert _examples(result, "duplicated")[0]["topic"] == R1


def test_total_queue_counts_an_item_stored_twice() -> None:
    h = H()
    h.enqueue("a", 0)
    h.take("g", "a", 0)
    h.take("g", "a", 1)  # a producer retry stored it again at offset 1
    result = check_total_queue(h.ops, {"g": {T: [0]}}, duplicates_allowed=False)
    assert result.details["stored-twice"] == 1
    assert result.details["duplicated"] == 1


def test_total_queue_caps_examples_but_counts_everything() -> None:
    h = H()
    for i in range(30):
        h.enqueue(f"m{i}", i)
    result = check_total_queue(h.ops, {"g": {T: [0]}})
    assert result.details["lost"] == 30
    assert len(_examples(result, "lost")) == EXAMPLES_MAX


# --------------------------------------------------------------------------------------------
# Queue order


def _in_order(h: H, group: str, msgs: list[str], start: int = 0) -> None:
    for offset, msg in enumerate(msgs, start=start):
        h.take(group, msg, offset)


def test_order_passes_for_in_order_deliveries_of_two_groups() -> None:
    h = H()
    for i, msg in enumerate("abcd"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abcd"))
    _in_order(h, "h", list("ab"))
    result = check_queue_order(h.ops)
    assert result.ok, result.summary
    assert result.details["lanes"] == 2
    assert _is_json(result)


@pytest.mark.parametrize(
    "excuse", ["handler-fail", "crash", "start", "commit-fail", "commit-info", "seek", "seek-all"]
)
def test_order_accepts_a_redelivery_after_each_excuse(excuse: str) -> None:
    h = H()
    for i, msg in enumerate("abc"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.deliver("g", "b", 1)
    h.handle("g", "b", 1, "fail" if excuse == "handler-fail" else "ok")
    if excuse == "crash":
        h.nemesis("consumer_crash", "g")
    elif excuse == "start":
        h.nemesis("consumer_start", "g", "c2")
    elif excuse.startswith("commit"):
        h.commit("g", 2, excuse.removeprefix("commit-"))
    elif excuse == "seek":
        h.seek("g", [(0, 1)])
    elif excuse == "seek-all":
        h.seek("g", [(0, 1), (1, 0)], queue=None)
    _in_order(h, "g", list("bc"), start=1)
    result = check_queue_order(h.ops)
    assert result.ok, result.summary
    assert result.details["redeliveries"] == 1


def test_order_a_seek_that_left_the_cursor_explains_a_redelivery_but_no_skip() -> None:
    # A rewind by back_ms often leaves the cursor where it is (it never moves forward), yet
    # it sets the cursor: the consumer restarts from the committed cursor and redelivers what
    # it had not committed. Over every queue too, even from a history that lists the moved
    # queues only (the store lists every queue a seek set).
    for queue in (0, None):
        h = H()
        for i, msg in enumerate("abcdef"):
            h.enqueue(msg, i)
        _in_order(h, "g", list("abc"))
        h.seek("g", [(1, 0)] if queue is None else [], queue=queue)
        _in_order(h, "g", list("bc"), start=1)
        h.take("g", "f", 5)  # skips d and e: a seek that moved nothing explains no jump
        result = check_queue_order(h.ops)
        assert result.details["unexplained-redelivery"] == 0, queue
        assert result.details["redeliveries-by-reason"] == {"seek": 1}
        assert (result.details["skip"], result.details["skipped-offsets"]) == (1, 2)


def test_order_a_seek_still_in_flight_explains_a_later_rewind() -> None:
    # swarm-queue seed 16: seek A (back 604 ms) was invoked, then seek B; B applied and sent
    # the lane back; A applied seconds later (its Paxos round held up by faults) and sent it
    # back again. B's rewind must not use up A's excuse: A had not completed.
    h = H()
    for i, msg in enumerate("abcdefgh"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abcd"))
    where: dict[str, JSON] = {"group": "g", "topic": T, "queue": 0}
    h.time_ms += 1
    h.w.invoke(h.time_ms, "admin.a", "seek", None, **where, back_ms=600)
    h.w.invoke(h.time_ms, "admin.b", "seek", None, **where, back_ms=1400)
    h.w.ok(h.time_ms, "admin.b", "seek", None, **where, back_ms=1400, positions=[[0, 1]])
    _in_order(h, "g", list("bcdefg"), start=1)
    h.w.ok(h.time_ms, "admin.a", "seek", None, **where, back_ms=600, positions=[[0, 3]])
    _in_order(h, "g", list("defgh"), start=3)
    result = check_queue_order(h.ops)
    assert result.details["unexplained-redelivery"] == 0
    assert result.details["redeliveries-by-reason"] == {"seek": 2}
    # Once both completed, a third rewind has no excuse.
    h.take("g", "b", 1)
    assert check_queue_order(h.ops).details["unexplained-redelivery"] == 1


def test_order_each_completed_seek_explains_one_rewind_noticed_late() -> None:
    # swarm-queue seed 54: two seeks completed (the second left the cursor where it was, yet
    # raised its epoch) before the consumer noticed the first; it went back once per seek.
    h = H()
    for i, msg in enumerate("abc"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("ab"))
    h.seek("g", [(0, 0)])
    h.seek("g", [(0, 0)])
    _in_order(h, "g", list("ab"))
    _in_order(h, "g", list("abc"))
    result = check_queue_order(h.ops)
    assert result.details["unexplained-redelivery"] == 0, result.summary
    assert result.details["redeliveries-by-reason"] == {"seek": 2}
    h.take("g", "a", 0)  # a third time: two seeks explain two rewinds only
    assert check_queue_order(h.ops).details["unexplained-redelivery"] == 1


def test_order_catches_an_unexplained_redelivery() -> None:
    h = H()
    for i, msg in enumerate("abc"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abc"))
    h.take("g", "b", 1)
    h.seek("g", [(1, 0)], queue=1)  # set another queue only: explains nothing here
    h.commit("g", 5, "fail", queue=1)  # idem
    h.handle("h", "b", 1, "fail")  # another group
    h.nemesis("consumer_crash", "h")  # idem
    h.take("g", "b", 1)
    result = check_queue_order(h.ops)
    assert not result.ok
    assert result.details["unexplained-redelivery"] == 2
    first, second = _examples(result, "unexplained-redelivery")
    assert first["offset"] == 1 and first["previous_offset"] == 2
    assert second["offset"] == 1 and second["previous_offset"] == 1


def test_order_each_excuse_explains_one_going_back() -> None:
    h = H()
    for i, msg in enumerate("ab"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.deliver("g", "b", 1)
    h.handle("g", "b", 1, "fail")
    h.take("g", "b", 1)  # explained
    h.take("g", "b", 1)  # not explained
    assert check_queue_order(h.ops).details["unexplained-redelivery"] == 1


def test_order_handler_failure_explains_going_back_only_to_the_failed_offset() -> None:
    h = H()
    for i, msg in enumerate("abcd"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abc"))
    h.deliver("g", "d", 3)
    h.handle("g", "b", 1, "fail")  # b's handler failed late (per-key concurrency)
    h.take("g", "c", 2)  # back to 2, past the failed 1: unexplained
    result = check_queue_order(h.ops)
    assert result.details["unexplained-redelivery"] == 1
    h2 = H()
    for i, msg in enumerate("abcd"):
        h2.enqueue(msg, i)
    _in_order(h2, "g", list("abcd"))
    h2.handle("g", "b", 1, "fail")
    _in_order(h2, "g", list("bcd"), start=1)
    assert check_queue_order(h2.ops).ok


def test_order_an_ok_commit_past_everything_withdraws_an_excuse() -> None:
    h = H()
    for i, msg in enumerate("ab"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.nemesis("consumer_crash", "g")  # this lane was not rewound by the crash
    h.take("g", "b", 1)
    h.commit("g", 2)
    h.take("g", "b", 1)
    assert check_queue_order(h.ops).details["unexplained-redelivery"] == 1


def test_order_a_commit_in_flight_across_a_crash_does_not_withdraw_it() -> None:
    h = H()
    for i, msg in enumerate("ab"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.take("g", "b", 1)
    fields: dict[str, JSON] = {"group": "g", "topic": T, "queue": 0, "cursor": 2}
    h.w.invoke(50, 99, "commit", None, **fields)
    h.nemesis("consumer_crash", "g")  # the new owner may read the cursor before it moves
    h.w.ok(51, 99, "commit", None, **fields)
    h.take("g", "b", 1)
    result = check_queue_order(h.ops)
    assert result.ok, result.summary
    assert result.details["redeliveries-by-reason"] == {"consumer_crash": 1}


def test_order_catches_inconsistent_offsets_across_acks_and_groups() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.take("g", "a", 0)
    h.take("g", "b", 1)
    h.take("h", "b", 0)  # h claims b sits at 0
    h.take("h", "c", 1)  # and a never-acked c at 1
    result = check_queue_order(h.ops)
    assert not result.ok
    assert result.details["inconsistent-offset"] == 2
    example = _examples(result, "inconsistent-offset")[0]
    assert example["offset"] == 0
    claims = example["claims"]
    assert isinstance(claims, list)
    assert [c["msg_id"] for c in claims] == ["a", "b"]


def test_order_catches_a_skip_over_a_known_offset() -> None:
    h = H()
    for i, msg in enumerate("abcd"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.take("g", "d", 3)
    result = check_queue_order(h.ops)
    assert not result.ok
    assert result.details["skip"] == 1
    assert result.details["skipped-offsets"] == 2
    (example,) = _examples(result, "skip")
    assert example["first_skipped"] == [[1, "b"], [2, "c"]]
    assert example["previous_offset"] == 0


def test_order_a_first_delivery_past_offset_zero_is_a_skip() -> None:
    h = H()
    h.enqueue("a", 0, outcome="info")  # offset unknown
    h.take("g", "b", 1)
    result = check_queue_order(h.ops)
    assert result.details["skip"] == 1  # offsets are dense: 0 exists
    (example,) = _examples(result, "skip")
    assert example["first_skipped"] == [[0, None]]


def test_order_skipped_offsets_delivered_before_are_no_skip() -> None:
    h = H()
    for i, msg in enumerate("abcd"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abcd"))
    h.handle("g", "b", 1, "fail")
    h.take("g", "b", 1)
    h.take("g", "d", 3)  # jumps over c, which g already got
    assert check_queue_order(h.ops).ok


def test_order_kinds_a_group_does_not_take_are_no_skip() -> None:
    h = H()
    h.enqueue("a", 0, kind="pay")
    h.enqueue("b", 1, kind="refund")
    h.enqueue("c", 2, kind="pay")
    h.enqueue("d", outcome="info", kind="pay")  # unknown offset: not required
    h.take("g", "a", 0)
    h.take("g", "c", 2)
    h.take("g", "e", 4)
    assert not check_queue_order(h.ops).ok  # g takes every kind: b and 3 are skipped
    result = check_queue_order(h.ops, group_kinds={"g": ["pay"]})
    assert result.ok, result.summary


def test_order_a_seek_forward_explains_a_jump_up_to_its_new_cursor() -> None:
    h = H()
    for i, msg in enumerate("abcdefg"):
        h.enqueue(msg, i)
    h.take("g", "a", 0)
    h.seek("g", [(0, 3)])
    h.take("g", "d", 3)
    h.seek("g", [(0, 5)])
    h.take("g", "g", 6)  # past the new cursor 5: f is skipped
    result = check_queue_order(h.ops)
    assert result.details["excused-jumps"] == 2
    assert result.details["skip"] == 1
    (example,) = _examples(result, "skip")
    assert example["first_skipped"] == [[5, "f"]]


def test_order_checks_retry_and_dead_letter_lanes_too() -> None:
    h = H()
    h.deliver("g", "a", 0, topic=R1)
    h.deliver("g", "c", 2, topic=R1)
    result = check_queue_order(h.ops)
    assert result.details["skip"] == 1  # dense: 1 exists on the retry topic


# --------------------------------------------------------------------------------------------
# Replay


def _replayable() -> H:
    h = H()
    for i, msg in enumerate("abcd"):
        h.enqueue(msg, i)
    _in_order(h, "g", list("abcd"))
    return h


def test_replay_passes_when_everything_from_the_new_cursor_comes_again() -> None:
    h = _replayable()
    h.seek("g", [(0, 1)])
    _in_order(h, "g", list("bcd"), start=1)
    result = check_replay(h.ops)
    assert result.ok, result.summary
    assert result.details["replayed-deliveries"] == 3
    assert check_queue_order(h.ops).ok
    assert _is_json(result)


def test_replay_counts_what_the_consumer_replays_before_the_seek_completes() -> None:
    # swarm-queue seeds 300 and 341: the seek applied and the consumer went back to its new
    # cursor before the seek's caller heard the answer; the replay starts at the invoke.
    h = _replayable()
    where: dict[str, JSON] = {"group": "g", "topic": T, "queue": 0}
    h.time_ms += 1
    h.w.invoke(h.time_ms, "admin", "seek", None, **where, offset=0)
    h.take("g", "a", 0)
    h.w.ok(h.time_ms, "admin", "seek", None, **where, offset=0, positions=[[0, 0]])
    _in_order(h, "g", list("bcd"), start=1)
    result = check_replay(h.ops)
    assert result.ok, result.summary
    assert result.details["replayed-deliveries"] == 4


def test_replay_catches_a_gap() -> None:
    h = _replayable()
    h.seek("g", [(0, 0)])
    h.take("g", "a", 0)
    h.take("g", "b", 1)
    h.take("g", "d", 3)
    result = check_replay(h.ops)
    assert not result.ok
    assert result.details["missing-offsets"] == 1
    (example,) = _examples(result, "replay-gap")
    assert example["first_missing"] == [[2, "c"]]
    assert example["new_cursor"] == 0 and example["highest_delivered"] == 3
    assert check_queue_order(h.ops).ok  # c was delivered before: no skip, only a replay gap


def test_replay_catches_a_missing_new_cursor_and_uses_all_queue_positions() -> None:
    h = _replayable()
    h.enqueue("x", 0, queue=1)
    h.take("g", "x", 0, queue=1)
    h.seek("g", [(0, 2), (1, 0)], queue=None)
    h.take("g", "d", 3)
    h.take("g", "x", 0, queue=1)
    result = check_replay(h.ops)
    assert result.details["replay-gap"] == 1
    assert _examples(result, "replay-gap")[0]["first_missing"] == [[2, "c"]]


def test_replay_window_ends_at_the_next_seek_and_ignores_failed_seeks() -> None:
    h = _replayable()
    h.seek("g", [(0, 0)])
    h.take("g", "a", 0)
    h.seek("g", [(0, 3)])
    h.take("g", "d", 3)
    assert check_replay(h.ops).ok
    h2 = _replayable()
    h2.seek("g", [(0, 0)])
    h2.take("g", "a", 0)
    h2.seek("g", [], outcome="fail")
    h2.take("g", "d", 3)
    assert check_replay(h2.ops).details["missing-offsets"] == 2


def _cursor_read(h: H, cursor: int, epoch: int) -> None:
    read: dict[str, JSON] = {"group": "g", "topic": T, "queue": 0, "cursor": cursor}
    h.time_ms += 1
    h.w.invoke(h.time_ms, "c1.cursor", "cursor_read", "c1", **read, epoch=epoch)
    h.w.ok(h.time_ms, "c1.cursor", "cursor_read", "c1", **read, epoch=epoch)


def test_replay_window_starts_when_a_consumer_notices_the_seek() -> None:
    # swarm-queue seed 7: a batch in flight before the seek is delivered after its invoke,
    # and the next seek is invoked before the consumer noticed the first: the first seek's
    # window holds only the stale batch, which is no replay (the second seek's covers it).
    h = H()
    for i, msg in enumerate("abcdefgh"):
        h.enqueue(msg, i)
    _cursor_read(h, 0, 0)
    _in_order(h, "g", list("abcde"))
    h.seek("g", [(0, 1)])
    h.take("g", "f", 5)  # in flight before the seek
    h.seek("g", [(0, 1)])
    _cursor_read(h, 1, 2)
    _in_order(h, "g", list("bcdefgh"), start=1)
    result = check_replay(h.ops)
    assert result.ok, result.summary
    assert result.details["unnoticed-windows"] == 1
    # A gap after the consumer noticed is still one.
    h.seek("g", [(0, 2)])
    _cursor_read(h, 2, 3)
    h.take("g", "c", 2)
    h.take("g", "e", 4)
    result = check_replay(h.ops)
    assert result.details["missing-offsets"] == 1
    assert _examples(result, "replay-gap")[0]["first_missing"] == [[3, "d"]]


def test_replay_skips_kinds_the_group_does_not_take_and_vacuous_windows() -> None:
    h = H()
    for i, kind in enumerate(["pay", "refund", "pay"]):
        h.enqueue(f"m{i}", i, kind=kind)
    h.take("g", "m0", 0)
    h.take("g", "m2", 2)
    h.seek("g", [(0, 0)])
    h.take("g", "m0", 0)
    h.take("g", "m2", 2)
    assert not check_replay(h.ops).ok
    assert check_replay(h.ops, group_kinds={"g": ["pay"]}).ok
    h2 = _replayable()
    h2.seek("g", [(0, 0)])
    result = check_replay(h2.ops)
    assert result.ok and result.details["vacuous-windows"] == 1


# --------------------------------------------------------------------------------------------
# Retry flow


def _through_the_levels(levels: int) -> H:
    """a fails on the base topic and on every retry level, then sits in the dead letters."""
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0, attempt=0)
    h.handle("g", "a", 0, "fail")
    for level in range(1, levels + 1):
        topic = retry_topic(T, "g", level)
        h.deliver("g", "a", 0, topic=topic, attempt=level)
        h.handle("g", "a", 0, "fail", topic=topic)
    h.deliver("g", "a", 0, topic=DLQ, attempt=levels + 1)
    h.handle("g", "a", 0, topic=DLQ)
    return h


def test_retry_flow_passes_through_every_level_to_the_dead_letters() -> None:
    result = check_retry_flow(_through_the_levels(2).ops, {"g": 2})
    assert result.ok, result.summary
    assert result.details["moved-on"] == 3
    assert result.details["dead-letter-deliveries"] == 1
    assert _is_json(result)
    assert check_total_queue(_through_the_levels(2).ops, {"g": {T: [0]}}).ok
    assert check_queue_order(_through_the_levels(2).ops).ok


def test_retry_flow_accepts_redelivery_in_place_and_success_on_a_level() -> None:
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0)
    h.handle("g", "a", 0, "fail")
    h.deliver("g", "a", 0)  # in place (say the move failed)
    h.handle("g", "a", 0, "fail")
    h.deliver("g", "a", 0, topic=R1, attempt=1)
    h.handle("g", "a", 0, topic=R1)
    result = check_retry_flow(h.ops, {"g": 2})
    assert result.ok, result.summary
    assert result.details["redelivered-in-place"] == 1


def test_retry_flow_catches_an_item_dropped_at_the_last_level() -> None:
    h = _through_the_levels(1)
    ops = [op for op in h.ops if op.get("topic") != DLQ]
    result = check_retry_flow(ops, {"g": 1})
    assert not result.ok
    assert result.details["dropped"] == 1
    assert result.details["dropped-at-last-level"] == 1
    (example,) = _examples(result, "dropped")
    assert example["level"] == 1 and example["last_level"] is True


def test_retry_flow_catches_an_item_dropped_without_retry_levels() -> None:
    h = H()
    h.enqueue("a", 0)
    h.deliver("h", "a", 0)
    h.handle("h", "a", 0, "fail")
    result = check_retry_flow(h.ops, {"g": 1})  # h has no retry levels: in place only
    assert result.details["dropped"] == 1
    assert result.details["dropped-at-last-level"] == 0


def test_retry_flow_excuses_a_failure_after_another_owner_handled_the_item() -> None:
    """swarm-consumers seed 47 (at e3a0d3e): one owner handled the item; its commit landed
    after the next owner read the cursor; the next owner's redelivery failed and its Retry
    was refused (below the cursor): the group did handle the item."""
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0)
    h.handle("g", "a", 0)  # the first owner: success
    h.deliver("g", "a", 0)  # the next owner, after a handover
    h.handle("g", "a", 0, "fail")
    result = check_retry_flow(h.ops, {"g": 1})
    assert result.ok, result.summary
    assert result.details["failed-after-success"] == 1
    # Without the success, the same failure is a dropped item.
    g = H()
    g.enqueue("a", 0)
    g.deliver("g", "a", 0)
    g.handle("g", "a", 0, "fail")
    assert check_retry_flow(g.ops, {"g": 1}).details["dropped"] == 1


def test_retry_flow_catches_a_skipped_level_and_a_retry_without_failure() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.deliver("g", "a", 0, attempt=0)
    h.handle("g", "a", 0, "fail")
    h.deliver("g", "a", 0, topic=R2, attempt=2)  # level 1 skipped
    h.take("g", "b", 1)
    h.deliver("g", "b", 0, topic=R1, attempt=1)  # b never failed
    result = check_retry_flow(h.ops, {"g": 2})
    assert not result.ok
    assert result.details["misrouted"] == 1
    assert result.details["unexpected-retry"] == 2
    (example,) = _examples(result, "misrouted")
    assert example["failed_level"] == 0 and example["level"] == 2


def test_retry_flow_catches_another_queue_and_a_wrong_attempt() -> None:
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0)
    h.handle("g", "a", 0, "fail")
    h.deliver("g", "a", 0, topic=R1, queue=1, attempt=1)
    h.deliver("g", "a", 1, topic=R1, queue=1, attempt=3)
    result = check_retry_flow(h.ops, {"g": 2})
    assert result.details["misrouted"] == 1
    assert result.details["wrong-attempt"] == 1


def test_retry_flow_catches_a_dead_letter_before_the_last_level() -> None:
    h = H()
    h.enqueue("a", 0)
    h.deliver("g", "a", 0)
    h.handle("g", "a", 0, "fail")
    h.deliver("g", "a", 0, topic=DLQ)
    result = check_retry_flow(h.ops, {"g": 1})
    assert result.details["misrouted"] == 1
    assert result.details["unexpected-retry"] == 1
    assert check_retry_flow(h.ops, {"g": 0}).ok  # with no levels, straight to the dead letters


def test_retry_flow_without_dead_letters_redelivers_in_place_at_the_last_level() -> None:
    h = _through_the_levels(1)
    ops = [op for op in h.ops if op.get("topic") != DLQ]
    h2 = H()
    h2.w = HistoryWriter()
    for op in ops:
        h2.w.record(op.type, op.time_ms, op.process, op.f, op.value, **dict(op.extra))
    h2.deliver("g", "a", 0, topic=R1, attempt=1)  # in place on the last level
    h2.handle("g", "a", 0, topic=R1)
    result = check_retry_flow(h2.ops, {"g": 1}, dead_letter=False)
    assert result.ok, result.summary
    assert result.details["redelivered-in-place"] == 1
    with_dlq = check_retry_flow(_through_the_levels(1).ops, {"g": 1}, dead_letter=False)
    assert with_dlq.details["misrouted"] == 1 and with_dlq.details["unexpected-retry"] == 1
    dropped = check_retry_flow(ops, {"g": 1}, dead_letter=False)
    assert dropped.details["dropped-at-last-level"] == 1


# --------------------------------------------------------------------------------------------
# Generated histories: a small simulated store, producers and consumers


GROUPS = ("g1", "g2")
G2_KINDS = ("a",)
G2_LEVELS = 1


@dataclass
class _LaneSim:
    group: str
    topic: str
    queue: int
    process: int
    position: int = 0
    in_flight: int | None = None


@dataclass
class Run:
    ops: list[Op]
    subscriptions: dict[str, dict[str, list[int]]]
    group_kinds: dict[str, list[str]] = field(default_factory=lambda: {"g2": list(G2_KINDS)})
    retries: dict[str, int] = field(default_factory=lambda: {"g2": G2_LEVELS})


def simulate(rnd: random.Random) -> Run:
    """A valid history: producers enqueue (ok, fail, info applied or not, never completed),
    two groups consume (g1 every queue and kind, failures redelivered in place, seeks; g2 some
    queues, kind "a" only, one retry level and dead letters), with commits that fail or are
    indefinite and consumer crashes; then a drain."""
    w = HistoryWriter()
    clock = [0]
    processes = [0]

    def fresh() -> int:
        processes[0] += 1
        return processes[0]

    def pair(process: int, f: str, value: JSON, completion: str, **extra: JSON) -> Op:
        clock[0] += 1
        w.invoke(clock[0], process, f, value, **extra)
        return w.record(completion, clock[0], process, f, value, **extra)  # type: ignore[arg-type]

    queues = rnd.randint(1, 3)
    g2_queues = sorted(rnd.sample(range(queues), rnd.randint(1, queues)))
    subscriptions = {"g1": {T: list(range(queues))}, "g2": {T: g2_queues}}
    items: dict[tuple[str, int], list[str]] = {}
    kind_of: dict[str, str] = {}
    cursors: dict[tuple[str, str, int], int] = {}
    lanes: dict[tuple[str, str, int], _LaneSim] = {}

    def lane(group: str, topic: str, queue: int) -> _LaneSim:
        key = (group, topic, queue)
        if key not in lanes:
            lanes[key] = _LaneSim(group, topic, queue, fresh())
        return lanes[key]

    for q in range(queues):
        lane("g1", T, q)
    for q in g2_queues:
        lane("g2", T, q)

    producers = [fresh() for _ in range(rnd.randint(1, 3))]
    pending: dict[int, tuple[str, dict[str, JSON], str, int | None]] = {}
    sequence = [0]

    def next_offset(ln: _LaneSim) -> int | None:
        stored = items.get((ln.topic, ln.queue), [])
        offset = ln.position
        if ln.group == "g2" and ln.topic == T:
            while offset < len(stored) and kind_of[stored[offset]] not in G2_KINDS:
                offset += 1
        ln.position = offset
        return offset if offset < len(stored) else None

    def produce() -> None:
        i = rnd.randrange(len(producers))
        process = producers[i]
        if process in pending:
            msg, fields, outcome, offset = pending.pop(process)
            clock[0] += 1
            if outcome == "ok":
                w.ok(clock[0], process, "enqueue", msg, **fields, offset=offset)
            elif outcome == "fail":
                w.fail(clock[0], process, "enqueue", msg, **fields)
            else:
                w.info(clock[0], process, "enqueue", msg, **fields)
                producers[i] = fresh()
            return
        sequence[0] += 1
        msg = f"m{sequence[0]}"
        queue = rnd.randrange(queues)
        kind_of[msg] = rnd.choice(["a", "b"])
        extra: dict[str, JSON] = {"topic": T, "queue": queue, "key": msg, "kind": kind_of[msg]}
        clock[0] += 1
        w.invoke(clock[0], process, "enqueue", msg, **extra)
        outcome = rnd.choice(["ok", "ok", "ok", "fail", "info", "info"])
        applied = outcome == "ok" or (outcome == "info" and rnd.random() < 0.5)
        offset = None
        if applied:
            stored = items.setdefault((T, queue), [])
            offset = len(stored)
            stored.append(msg)
        pending[process] = (msg, extra, outcome, offset)

    def commit(ln: _LaneSim, cursor: int, *, draining: bool) -> None:
        key = (ln.group, ln.topic, ln.queue)
        outcome = "ok" if draining else rnd.choice(["ok", "ok", "ok", "ok", "fail", "info"])
        pair(
            ln.process,
            "commit",
            None,
            outcome,
            group=ln.group,
            topic=ln.topic,
            queue=ln.queue,
            cursor=cursor,
        )
        if outcome == "ok" or (outcome == "info" and rnd.random() < 0.5):
            cursors[key] = max(cursors.get(key, 0), cursor)
        if outcome != "ok":
            ln.position = cursors.get(key, 0)  # re-read the committed cursor
            ln.in_flight = None
        if outcome == "info":
            ln.process = fresh()

    def step(ln: _LaneSim, *, draining: bool) -> bool:
        """Deliver the next item or handle the one in flight; False if there is nothing."""
        level = topic_level(ln.topic, ln.group)
        assert level is not None
        fields: dict[str, JSON] = {"group": ln.group, "topic": ln.topic, "queue": ln.queue}
        if ln.in_flight is None:
            offset = next_offset(ln)
            if offset is None:
                return False
            msg = items[(ln.topic, ln.queue)][offset]
            attempt = G2_LEVELS + 1 if level == DEAD_LETTER else level
            pair(ln.process, "deliver", msg, "ok", **fields, offset=offset, attempt=attempt)
            ln.in_flight = offset
            return True
        offset = ln.in_flight
        msg = items[(ln.topic, ln.queue)][offset]
        fails = not draining and level != DEAD_LETTER and rnd.random() < 0.25
        pair(
            ln.process,
            "handle",
            msg,
            "ok",
            **fields,
            offset=offset,
            outcome="fail" if fails else "ok",
        )
        ln.in_flight = None
        if not fails:
            ln.position = offset + 1
            if rnd.random() < 0.5 or draining:
                commit(ln, offset + 1, draining=draining)
            return True
        if ln.group == "g1":
            ln.position = offset  # redelivered in place
            return True
        # g2: move the item to the next level and advance the cursor past it (one command).
        to = retry_topic(T, "g2", level + 1) if level < G2_LEVELS else dead_letter_topic(T, "g2")
        items.setdefault((to, ln.queue), []).append(msg)
        lane("g2", to, ln.queue)
        key = (ln.group, ln.topic, ln.queue)
        cursors[key] = max(cursors.get(key, 0), offset + 1)
        ln.position = offset + 1
        return True

    def crash() -> None:
        group = rnd.choice(GROUPS)
        for f in ("consumer_crash", "consumer_start"):
            clock[0] += 1
            w.invoke(clock[0], NEMESIS, f, f"{group}-c1", group=group)
            w.info(clock[0], NEMESIS, f, f"{group}-c1", group=group)
        for ln in lanes.values():
            if ln.group == group:
                ln.position = cursors.get((group, ln.topic, ln.queue), 0)
                ln.in_flight = None

    def seek() -> None:
        queue: int | None = rnd.choice([None, *range(queues)])
        targets = range(queues) if queue is None else [queue]
        target = 0 if queue is None else rnd.randint(0, cursors.get(("g1", T, queue), 0))
        positions: list[JSON] = []
        for q in targets:
            key = ("g1", T, q)
            if cursors.get(key, 0) != target:
                cursors[key] = target
                positions.append([q, target])
                ln = lanes[key]
                ln.position = target
                ln.in_flight = None
        pair(
            fresh(),
            "seek",
            None,
            "ok",
            group="g1",
            topic=T,
            queue=queue,
            offset=target,
            positions=positions,
        )

    steps = rnd.randint(10, 80)
    seek_steps = set(rnd.sample(range(steps // 3, steps), rnd.randint(1, 2)))
    for i in range(steps):
        roll = rnd.random()
        if i in seek_steps:
            seek()
        elif roll < 0.35:
            produce()
        elif roll < 0.95:
            step(rnd.choice(list(lanes.values())), draining=False)
        else:
            crash()
    for process, (msg, extra, outcome, offset) in sorted(pending.items()):
        if rnd.random() < 0.3:
            continue  # never completed
        clock[0] += 1
        if outcome == "ok":
            w.ok(clock[0], process, "enqueue", msg, **extra, offset=offset)
        else:
            w.record(outcome, clock[0], process, "enqueue", msg, **extra)  # type: ignore[arg-type]
    progress = True
    while progress:  # drain: every lane to its end, handlers succeed
        progress = False
        for ln in list(lanes.values()):
            while step(ln, draining=True):
                progress = True
    return Run(ops=w.ops, subscriptions=subscriptions)


def _check_all(run: Run) -> list[CheckResult]:
    return [
        check_total_queue(run.ops, run.subscriptions, group_kinds=run.group_kinds),
        check_queue_order(run.ops, group_kinds=run.group_kinds),
        check_replay(run.ops, group_kinds=run.group_kinds),
        check_retry_flow(run.ops, run.retries),
    ]


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_generated_valid_histories_pass_every_checker(rnd: random.Random) -> None:
    run = simulate(rnd)
    for result in _check_all(run):
        assert result.ok, result.summary
        assert _is_json(result)


def _rebuild(ops: list[Op], edit: Callable[[list[Op]], list[Op]]) -> list[Op]:
    """``edit`` the ops, then renumber them densely (processes and pairs are kept)."""
    w = HistoryWriter()
    for op in edit(list(ops)):
        w.record(op.type, op.time_ms, op.process, op.f, op.value, **dict(op.extra))
    return w.ops


def _deliveries(ops: list[Op]) -> list[int]:
    """Positions (in ``ops``) of the deliver invokes (each followed by its ok)."""
    return [i for i, op in enumerate(ops) if op.f == "deliver" and op.type == "invoke"]


def _without_pairs(ops: list[Op], drop: Callable[[Op], bool]) -> list[Op]:
    """``ops`` without the invoke/completion pairs whose invoke matches ``drop``."""
    out: list[Op] = []
    skip_next = False
    for op in ops:
        if skip_next:
            skip_next = False
            continue
        if op.type == "invoke" and op.f in ("deliver", "handle") and drop(op):
            skip_next = True
            continue
        out.append(op)
    return out


MUTATIONS = ["drop-only-delivery", "duplicate", "swap-offsets", "drop-replayed", "drop-retry"]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(rnd=st.randoms(use_true_random=False), data=st.data())
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_mutation_of_a_valid_history_trips_the_right_checker(
    mutation: str, rnd: random.Random, data: st.DataObject
) -> None:
    run = simulate(rnd)
    ops = run.ops
    history = queue_history(ops)
    enqueue_of = {e.msg_id: e for e in history.enqueues}

    def total(mutated: list[Op], *, duplicates_allowed: bool = True) -> CheckResult:
        return check_total_queue(
            mutated,
            run.subscriptions,
            group_kinds=run.group_kinds,
            duplicates_allowed=duplicates_allowed,
        )

    if mutation == "drop-only-delivery":
        counts: dict[tuple[str, str], int] = {}
        for d in history.deliveries:
            counts[(d.group, d.msg_id)] = counts.get((d.group, d.msg_id), 0) + 1
        once = sorted(
            who for who, n in counts.items() if n == 1 and enqueue_of[who[1]].outcome == "ok"
        )
        assume(once)
        group, msg = data.draw(st.sampled_from(once))
        mutated = _rebuild(
            ops,
            lambda o: _without_pairs(o, lambda op: op.value == msg and op.get("group") == group),
        )
        result = total(mutated)
        assert not result.ok and result.details["lost"] == 1, result.summary
    elif mutation == "duplicate":
        assume(_deliveries(ops))
        at = data.draw(st.sampled_from(_deliveries(ops)))
        copy = [
            Op(
                index=0,
                time_ms=op.time_ms,
                process="dup",
                type=op.type,
                f=op.f,
                value=op.value,
                extra=op.extra,
            )
            for op in ops[at : at + 2]
        ]
        mutated = _rebuild(ops, lambda o: o[: at + 2] + copy + o[at + 2 :])
        before = total(ops, duplicates_allowed=False).details["duplicated"]
        result = total(mutated, duplicates_allowed=False)
        assert not result.ok and result.details["duplicated"] == before + 1  # type: ignore[operator]
        assert total(mutated).ok
    elif mutation == "swap-offsets":
        base = [
            i
            for i in _deliveries(ops)
            if ops[i].get("topic") == T and enqueue_of[str(ops[i].value)].outcome == "ok"
        ]
        assume(base)
        i = data.draw(st.sampled_from(base))
        others = [
            j
            for j in base
            if ops[i].get("queue") == ops[j].get("queue") and ops[i].value != ops[j].value
        ]
        assume(others)
        j = data.draw(st.sampled_from(others))
        oi, oj = ops[i].get("offset"), ops[j].get("offset")

        def swap(o: list[Op]) -> list[Op]:
            for k, offset in ((i, oj), (i + 1, oj), (j, oi), (j + 1, oi)):
                extra = tuple((key, offset if key == "offset" else v) for key, v in o[k].extra)
                o[k] = Op(
                    index=0,
                    time_ms=o[k].time_ms,
                    process=o[k].process,
                    type=o[k].type,
                    f=o[k].f,
                    value=o[k].value,
                    extra=extra,
                )
            return o

        result = check_queue_order(_rebuild(ops, swap), group_kinds=run.group_kinds)
        assert not result.ok and result.details["inconsistent-offset"] >= 1  # type: ignore[operator]
    elif mutation == "drop-replayed":
        seeks = [s for s in history.seeks if s.positions]
        assume(seeks)
        seek = seeks[-1]  # the last one: its window runs to the end
        assert seek.completion_index is not None
        replayed: dict[tuple[int, int], list[int]] = {}
        highest: dict[int, int] = {}
        for d in history.deliveries:
            if d.group == "g1" and d.index > seek.completion_index:
                q_cursor = seek.positions.get(d.queue) if seek.positions else None
                if q_cursor is not None and d.offset >= q_cursor:
                    replayed.setdefault((d.queue, d.offset), []).append(d.index)
                    highest[d.queue] = max(highest.get(d.queue, -1), d.offset)
        dropped = sorted(
            found[0]
            for (queue, offset), found in replayed.items()
            if len(found) == 1 and offset < highest[queue]
        )
        assume(dropped)
        index = data.draw(st.sampled_from(dropped))
        mutated = _rebuild(ops, lambda o: o[:index] + o[index + 2 :])
        result = check_replay(mutated, group_kinds=run.group_kinds)
        assert not result.ok and result.details["missing-offsets"] == 1, result.summary
    else:
        # Items that failed on the base topic before g2 ever handled them successfully (a
        # failure after a success may be passed over: see check_retry_flow).
        first_ok: dict[str, int] = {}
        for h in history.handlings:
            if h.group == "g2" and not h.failed:
                first_ok.setdefault(h.msg_id, h.index)
        failed = sorted(
            {
                h.msg_id
                for h in history.handlings
                if h.group == "g2"
                and h.failed
                and h.topic == T
                and first_ok.get(h.msg_id, h.index + 1) > h.index
            }
        )
        assume(failed)
        msg = data.draw(st.sampled_from(failed))
        mutated = _rebuild(
            ops,
            lambda o: _without_pairs(
                o, lambda op: op.value == msg and op.get("group") == "g2" and op.get("topic") != T
            ),
        )
        result = check_retry_flow(mutated, run.retries)
        assert not result.ok and result.details["dropped"] == 1, result.summary
        assert check_total_queue(mutated, run.subscriptions, group_kinds=run.group_kinds).ok


def test_queue_order_excuses_a_redelivery_after_a_new_owner_took_the_queue() -> None:
    """swarm-consumers seed 23: an owner delivered 0..3 and was paused past its lease (no
    own_stop); the next owner's grant restarts the queue from the committed cursor 0."""

    def history(with_grant: bool) -> list[Op]:
        h = H()
        for i, msg in enumerate("abcd"):
            h.enqueue(msg, i)
        for i, msg in enumerate("abcd"):
            h.deliver("g", msg, i)
        if with_grant:
            h._pair("own_start", "c0", "ok", group="g", topic=T, queue=0, token=3, holder="c0#1")
        h.deliver("g", "a", 0)
        return h.ops

    assert check_queue_order(history(True)).ok
    assert not check_queue_order(history(False)).ok


def test_order_catches_a_producer_storing_its_acknowledged_calls_out_of_order() -> None:
    def history(offsets: dict[str, int], producers: dict[str, str]) -> list[Op]:
        w = HistoryWriter()
        # Three concurrent calls invoked a, b, c (processes 1..3), completed in another order.
        for p, msg in enumerate("abc", start=1):
            w.invoke(p, p, "enqueue", msg, topic=T, queue=0, key=msg, producer=producers[msg])
        for p, msg in ((2, "b"), (3, "c"), (1, "a")):
            extra: dict[str, JSON] = {"topic": T, "queue": 0, "key": msg}
            extra["producer"] = producers[msg]
            if msg in offsets:
                w.ok(9, p, "enqueue", msg, **extra, offset=offsets[msg])
            else:
                w.info(9, p, "enqueue", msg, **extra)
        return w.ops

    one = {"a": "p1", "b": "p1", "c": "p1"}
    assert check_queue_order(history({"a": 0, "b": 1, "c": 2}, one)).ok
    bad = check_queue_order(history({"a": 2, "b": 0, "c": 1}, one))
    assert not bad.ok and bad.details["producer-order"] == 2  # b and c stored before a
    example = _examples(bad, "producer-order")[0]
    assert example["earlier"] == {"msg_id": "a", "offset": 2}
    assert example["later"] == {"msg_id": "b", "offset": 0}
    # Another producer's calls, or a call with an unknown outcome, promise nothing.
    assert check_queue_order(history({"a": 2, "b": 0, "c": 1}, {**one, "a": "p2"})).ok
    assert check_queue_order(history({"b": 0, "c": 1}, one)).ok
