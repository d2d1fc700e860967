"""Consumer machine against the fake store: offset order, commit after success, retry levels
and the dead-letter topic, not_before, ownership changes, restarts, rate limit, unknown
outcomes, redirects, seeks, fencing."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.codec import decode, encode
from pxq.consumer.machine import Consumer
from pxq.consumer.messages import (
    Deliver,
    Handled,
    OwnedQueue,
    OwnershipRejected,
    OwnershipSet,
    SetOwnership,
)
from pxq.consumer.settings import ConsumerSettings
from pxq.effects import Boot, Now
from pxq.store.messages import (
    CommitCursor,
    CommitOk,
    Get,
    Retry,
    RetryOk,
    StoredItem,
    StoreError,
)
from pxq.topics import dead_letter_topic, retry_topic
from tests.test_consumer_fakestore import GROUPS, STORES, WALL0, FakeStore, Harness

TOPICS = {"t": 4}
L1 = retry_topic("t", "g", 1)
L2 = retry_topic("t", "g", 2)
DLQ = dead_letter_topic("t", "g")


def ok_all(d: Deliver) -> tuple[int, ...]:
    return ()


def make(
    store: FakeStore | None = None,
    *,
    owned: tuple[OwnedQueue | tuple[str, int], ...] = (("t", 0),),
    handler: Callable[[Deliver], tuple[int, ...]] | None = ok_all,
    latency_ms: int = 1,
    handle_ms: int = 0,
    seed: int = 1,
    share: tuple[int, int] = (1, 1),
    **kw: Any,
) -> tuple[Consumer, Harness]:
    store = store or FakeStore()
    s = ConsumerSettings(group="g", stores=STORES, groups_per_store=GROUPS, topics=TOPICS, **kw)
    store.retry_delays["g"] = s.retry_delays_ms
    store.dead_letter["g"] = s.dead_letter
    c = Consumer(s, random.Random(seed), owned=owned, share=share)
    h = Harness(c, store, latency_ms=latency_ms, handler=handler, handle_ms=handle_ms)
    h.step(Boot())
    return c, h


def fill(store: FakeStore, n: int, topic: str = "t", queue: int = 0, **kw: Any) -> None:
    for i in range(n):
        store.append(topic, queue, f"k{i % 3}".encode(), str(i).encode(), **kw)


def delivered(h: Harness, topic: str = "t", queue: int = 0) -> list[int]:
    return [
        i.offset for _, d in h.deliveries if (d.topic, d.queue) == (topic, queue) for i in d.items
    ]


def requests_of(h: Harness, kind: type) -> list[tuple[int, str, Any]]:
    return [(t, n, b) for t, n, b in h.requests if isinstance(b, kind)]


def test_delivers_in_offset_order_and_commits_only_handled_items() -> None:
    store = FakeStore()
    fill(store, 25)
    handled: set[int] = set()

    def handler(d: Deliver) -> tuple[int, ...]:
        handled.update(i.offset for i in d.items)
        return ()

    def prefix() -> int:
        n = 0
        while n in handled:
            n += 1
        return n

    def check() -> None:
        assert store.cursor("t", "g", 0) <= prefix()
        assert len(h.open_deliveries) <= 1  # one delivery of the queue at a time

    c, h = make(store, handler=handler, handle_ms=3, get_items_max=10)
    h.after_step = check
    h.run_until(lambda: store.cursor("t", "g", 0) == 25)
    assert delivered(h) == list(range(25))
    assert max(len(d.items) for _, d in h.deliveries) == 10
    h.run_for(5)
    assert c.streams()[("t", 0)].committed == 25


def test_nothing_is_committed_before_the_handler_answers() -> None:
    store = FakeStore()
    fill(store, 3)
    _, h = make(store, handler=None)
    h.run_for(100)
    assert len(h.open_deliveries) == 1
    assert requests_of(h, CommitCursor) == [] and store.cursor("t", "g", 0) == 0
    (d,) = h.open_deliveries.values()
    h.handled(d.delivery_id)
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)


def test_failed_items_go_through_every_retry_level_then_to_the_dead_letter_topic() -> None:
    store = FakeStore()
    fill(store, 5)
    store.items("t", 0)[2] = StoredItem(offset=2, enqueued_ms=WALL0, key=b"kb", payload=b"bad")

    def handler(d: Deliver) -> tuple[int, ...]:
        return tuple(i.offset for i in d.items if i.payload == b"bad")

    c, h = make(store, handler=handler, retry_delays_ms=(100, 300), get_items_max=2)
    h.run_until(lambda: len(store.items(DLQ, 0)) == 1)
    bad = [(t, d.topic, i) for t, d in h.deliveries for i in d.items if i.payload == b"bad"]
    assert [(topic, i.attempt) for _, topic, i in bad] == [("t", 0), (L1, 1), (L2, 2)]
    # Each level waited for its delay: not_before is checked against the wall clock.
    for t, _, i in bad:
        assert WALL0 + t >= i.not_before_ms
    assert bad[1][0] - bad[0][0] >= 100 and bad[2][0] - bad[1][0] >= 300
    assert delivered(h) == [0, 1, 2, 3, 4]
    assert store.items(DLQ, 0)[0].payload == b"bad" and store.items(DLQ, 0)[0].attempt == 3
    h.run_for(50)
    assert store.cursor("t", "g", 0) == 5
    assert store.cursor(L1, "g", 0) == 1 and store.cursor(L2, "g", 0) == 1
    # The dead-letter topic is not consumed.
    assert all(d.topic != DLQ for _, d in h.deliveries)
    assert [type(r).__name__ for r in store.applied if isinstance(r, Retry)] == ["Retry"] * 3
    assert set(c.streams()) == {("t", 0), (L1, 0), (L2, 0)}


def test_retry_level_item_waits_for_its_not_before() -> None:
    store = FakeStore()
    store.append(L1, 0, b"k", b"later", attempt=1, not_before_ms=WALL0 + 1000)
    _, h = make(store, retry_delays_ms=(1000,))
    h.run_for(999)
    assert h.deliveries == []
    h.run_until(lambda: len(h.deliveries) == 1)
    # The store's time comes with the answer, one latency (1 ms) old: never early, that late.
    assert h.deliveries[0][0] == 1001


@pytest.mark.parametrize("consumer_skew_ms", [-5000, -1000, 1000, 5000])
def test_not_before_is_measured_on_the_store_time_not_the_consumer_wall_clock(
    consumer_skew_ms: int,
) -> None:
    # The consumer's wall clock is seconds off the store's (a delay stamped by the master
    # used to be compared with it: items came seconds late, or at once).
    store = FakeStore()
    store.append(L1, 0, b"k", b"later", attempt=1, not_before_ms=WALL0 + 1000)
    _, h = make(store, retry_delays_ms=(1000,))
    h.wall_skew_ms = consumer_skew_ms
    h.run_until(lambda: len(h.deliveries) == 1, limit_ms=10_000)
    assert h.deliveries[0][0] == 1001


def test_a_consumer_wall_clock_jump_while_holding_changes_nothing() -> None:
    store = FakeStore()
    store.append(L1, 0, b"k", b"later", attempt=1, not_before_ms=WALL0 + 1000)
    _, h = make(store, retry_delays_ms=(1000,))
    h.run_for(100)
    h.wall_skew_ms = -5000  # the consumer's wall clock steps back while it holds the item
    h.run_until(lambda: len(h.deliveries) == 1, limit_ms=10_000)
    assert h.deliveries[0][0] == 1001


def test_a_store_clock_behind_holds_the_item_for_its_delay_on_that_clock() -> None:
    # The store's clock 3 s behind: a not_before it stamped 1 s ahead of its clock is due
    # 1 s after the fetch, whatever the consumer's own clock says.
    store = FakeStore()
    store.append(L1, 0, b"k", b"later", attempt=1, not_before_ms=WALL0 - 3000 + 1000)
    _, h = make(store, retry_delays_ms=(1000,))
    h.store_skew_ms = -3000
    h.run_until(lambda: len(h.deliveries) == 1, limit_ms=10_000)
    assert h.deliveries[0][0] == 1001


def test_a_retry_polls_the_idle_next_level_at_once() -> None:
    # The level's stream is idle at its longest empty-poll backoff (500 ms): the Retry that
    # moves an item there makes it poll now, so a 50 ms delay is honoured within a few ms
    # rather than up to half a second late.
    store = FakeStore()
    _, h = make(store, handler=lambda d: (0,), retry_delays_ms=(50,))
    h.run_for(5000)  # every stream backs off to poll_empty_max_ms
    fill(store, 1)
    h.run_until(lambda: any(d.topic == L1 for _, d in h.deliveries), limit_ms=10_000)
    retried = next(t for t, _, body in h.requests if isinstance(body, Retry))
    moved = next(t for t, d in h.deliveries if d.topic == L1)
    assert 50 <= moved - retried <= 50 + 5, (retried, moved)


def test_without_a_dead_letter_topic_last_level_failures_are_redelivered_in_place() -> None:
    store = FakeStore()
    fill(store, 3)
    failures = {"left": 2}

    def handler(d: Deliver) -> tuple[int, ...]:
        if any(i.offset == 1 for i in d.items) and failures["left"] > 0:
            failures["left"] -= 1
            return (1,)
        return ()

    _, h = make(store, handler=handler, dead_letter=False, redeliver_backoff_ms=50)
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)
    assert [[i.offset for i in d.items] for _, d in h.deliveries] == [[0, 1, 2], [1, 2], [1, 2]]
    assert requests_of(h, Retry) == []
    assert h.deliveries[1][0] - h.deliveries[0][0] >= 50


def test_dropping_ownership_stops_the_queue_at_once() -> None:
    store = FakeStore()
    fill(store, 5)
    c, h = make(store, handler=None, owned=(("t", 0), ("t", 1)))
    fill(store, 5, queue=1)
    h.run_for(20)
    assert len(h.open_deliveries) == 2
    dropped = next(d for d in h.open_deliveries.values() if d.queue == 0)
    fx = h.absorb(c.set_ownership(h.now, [("t", 1)]))
    assert fx.sends == ()
    at = h.now_ms
    h.handled(dropped.delivery_id)  # its result is discarded
    h.run_for(1000)
    assert [b for t, _, b in h.requests if t >= at and getattr(b, "queue", None) == 0] == []
    assert store.cursor("t", "g", 0) == 0
    assert set(c.streams()) == {("t", 1)}


def test_added_queue_starts_from_the_committed_cursor() -> None:
    store = FakeStore()
    fill(store, 10)
    store.cursors[("t", "g", 0)] = 7
    _, h = make(store, owned=())
    assert h.requests == []
    reply = h.call(SetOwnership(queues=(OwnedQueue(topic="t", queue=0),)))
    assert h.replies[reply] == OwnershipSet(started=1, stopped=0)
    first = h.requests[0][2]
    assert isinstance(first, Get) and first.items_max == 0
    h.run_until(lambda: store.cursor("t", "g", 0) == 10)
    assert delivered(h) == [7, 8, 9]


def test_restart_redelivers_the_uncommitted_tail_and_loses_nothing() -> None:
    store = FakeStore()
    fill(store, 12)
    seen: list[int] = []

    def handler(d: Deliver) -> tuple[int, ...]:
        seen.extend(i.offset for i in d.items)
        return ()

    _, h = make(store, handler=handler, get_items_max=4)
    # Commits after the first one are lost on the way: the store keeps cursor 4.
    commits = {"n": 0}

    def drop_late_commits(node: str, body: object) -> bool:
        if isinstance(body, CommitCursor):
            commits["n"] += 1
            return commits["n"] > 1
        return False

    h.drop_request = drop_late_commits
    h.run_until(lambda: len(seen) == 12)
    assert store.cursor("t", "g", 0) == 4
    # The consumer crashes; a new incarnation takes the queue.
    _, h2 = make(store, handler=handler, get_items_max=4, seed=2)
    h2.run_until(lambda: store.cursor("t", "g", 0) == 12)
    assert seen == list(range(12)) + list(range(4, 12))


def test_rate_limit_holds_over_every_window() -> None:
    store = FakeStore()
    fill(store, 400)
    fill(store, 400, queue=1)
    rate, burst = 50, 5
    _, h = make(
        store,
        owned=(("t", 0), ("t", 1)),
        rate_items_per_s=rate,
        rate_burst=burst,
        get_items_max=10,
        retry_delays_ms=(10,),
    )
    h.run_for(3000)
    events = sorted((t, len(d.items)) for t, d in h.deliveries)
    total = sum(n for _, n in events)
    assert total >= rate * 3 * 0.9  # the limit is also reached, not only respected
    for i, (t0, _) in enumerate(events):
        count = 0
        for t1, n in events[i:]:
            count += n
            assert count <= burst + rate * (t1 - t0) / 1000


def test_share_splits_the_group_rate() -> None:
    store = FakeStore()
    fill(store, 400)
    _, h = make(store, rate_items_per_s=100, rate_burst=10, share=(1, 4))
    h.run_for(2000)
    total = sum(len(d.items) for _, d in h.deliveries)
    assert 40 <= total <= 25 * 2 + 3


@pytest.mark.parametrize("store_checks_cursor", [True, False])
def test_retry_with_a_lost_answer_moves_the_item_once(store_checks_cursor: bool) -> None:
    store = FakeStore(retry_checks_cursor=store_checks_cursor)
    fill(store, 3)
    lost = {"n": 0}

    def lose_first_retry_ok(node: str, answer: object) -> bool:
        if isinstance(answer, RetryOk) and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    h_handler = lambda d: tuple(i.offset for i in d.items if i.offset == 1)  # noqa: E731
    _, h = make(store, handler=h_handler, retry_delays_ms=(10_000,), request_timeout_ms=50)
    h.drop_reply = lose_first_retry_ok
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)
    assert len(store.items(L1, 0)) == 1
    assert len(requests_of(h, Retry)) == 1  # the cursor re-read showed it was applied
    # A timeout moves on to the next replica, which redirects back: count the master's.
    master = store.master_of(store.locate("t", 0))
    checks = [b for _, n, b in requests_of(h, Get) if n == master and b.items_max == 0]
    assert [b.cursor for b in checks if b.topic == "t"] == [0, 3]  # the start, the re-read


def test_retry_whose_request_was_lost_is_reissued_and_moves_the_item_once() -> None:
    store = FakeStore(retry_checks_cursor=False)
    fill(store, 3)
    lost = {"n": 0}

    def lose_first_retry(node: str, body: object) -> bool:
        if isinstance(body, Retry) and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    _, h = make(
        store,
        handler=lambda d: tuple(i.offset for i in d.items if i.offset == 1),
        retry_delays_ms=(10_000,),
        request_timeout_ms=50,
    )
    h.drop_request = lose_first_retry
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)
    assert len(requests_of(h, Retry)) == 2
    assert len(store.items(L1, 0)) == 1


def test_redirects_are_followed_for_reads_and_commits() -> None:
    store = FakeStore()
    fill(store, 3)
    loc = store.locate("t", 0)
    replicas = STORES[loc[0]]
    actual = replicas[(loc[1] + 2) % 3]
    store.masters[loc] = actual
    _, h = make(store)
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)
    nodes = [n for _, n, b in h.requests if getattr(b, "topic", "") == "t"]
    assert nodes[0] == replicas[loc[1] % 3] and set(nodes[1:]) == {actual}


def test_lost_commit_answers_are_resent() -> None:
    store = FakeStore()
    fill(store, 3)
    lost = {"n": 0}

    def lose_two(node: str, answer: object) -> bool:
        if isinstance(answer, CommitOk) and lost["n"] < 2:
            lost["n"] += 1
            return True
        return False

    c, h = make(store, request_timeout_ms=30)
    h.drop_reply = lose_two
    h.run_until(lambda: c.streams()[("t", 0)].committed == 3)
    master = store.master_of(store.locate("t", 0))
    assert len([n for _, n, _ in requests_of(h, CommitCursor) if n == master]) == 3
    assert delivered(h) == [0, 1, 2]


def test_a_rewound_cursor_is_followed_and_redelivers() -> None:
    store = FakeStore()
    fill(store, 5)
    c, h = make(store)
    h.run_until(lambda: store.cursor("t", "g", 0) == 5)
    store.seek("t", "g", 0, 2)  # an operator's Seek (replay); the consumer polls an idle queue
    h.run_until(lambda: len(delivered(h)) == 8, limit_ms=5000)
    assert delivered(h) == [0, 1, 2, 3, 4, 2, 3, 4]
    h.run_until(lambda: store.cursor("t", "g", 0) == 5)
    assert c.streams()[("t", 0)].epoch == 1


def test_a_cursor_moved_without_a_seek_is_not_followed() -> None:
    # Only a seek epoch moves a stream to a cursor it did not reach itself: a cursor that
    # changed under the same epoch (here: by hand; in a real store another holder, whose
    # token then fences this one) leaves the stream where it is.
    store = FakeStore()
    fill(store, 5)
    _, h = make(store)
    h.run_until(lambda: store.cursor("t", "g", 0) == 5)
    store.cursors[("t", "g", 0)] = 2
    h.run_for(2000)
    assert delivered(h) == [0, 1, 2, 3, 4]


def after_seek(h: Harness, mark: int, queue: int = 0) -> set[int]:
    """Offsets of the base topic delivered since ``h.deliveries[mark]``."""
    return {
        i.offset
        for _, d in h.deliveries[mark:]
        if (d.topic, d.queue) == ("t", queue)
        for i in d.items
    }


def test_a_commit_in_flight_across_a_seek_cannot_undo_it() -> None:
    # The replay bug: a commit sent before the consumer knew of a seek lands after it.
    store = FakeStore()
    fill(store, 10)
    marks: list[int] = []

    def seek_before_the_commit(node: str, body: object) -> bool:
        if isinstance(body, CommitCursor) and body.cursor >= 6 and not marks:
            marks.append(len(h.deliveries))
            store.seek("t", "g", 0, 2)
        return False

    c, h = make(store, get_items_max=3)
    h.drop_request = seek_before_the_commit
    h.run_until(lambda: bool(marks) and store.cursor("t", "g", 0) == 10)
    assert delivered(h)[:6] == [0, 1, 2, 3, 4, 5]
    assert after_seek(h, marks[0]) >= set(range(2, 10))
    # The stale commit was refused; every commit applied after the seek has its epoch.
    commits = [b for b in store.applied if isinstance(b, CommitCursor)]
    assert [b.cursor for b in commits if b.epoch == 0] == [3]
    assert all(b.epoch == 1 for b in commits if b.cursor != 3)
    assert c.streams()[("t", 0)].epoch == 1


@pytest.mark.parametrize("answer", [True, False])
def test_a_seek_seen_while_a_delivery_is_out_waits_for_it_and_ignores_its_outcome(
    answer: bool,
) -> None:
    store = FakeStore()
    fill(store, 10)
    lost: list[object] = []

    def lose_first_commit(node: str, body: object) -> bool:
        if isinstance(body, CommitCursor) and not lost:
            lost.append(body)
            return True
        return False

    c, h = make(store, handler=None, get_items_max=4, request_timeout_ms=50)
    h.drop_request = lose_first_commit
    h.run_until(lambda: len(h.open_deliveries) == 1)
    (d1,) = h.open_deliveries.values()
    h.handled(d1.delivery_id)  # commit(4) is lost; the next delivery goes out
    h.run_until(lambda: len(h.deliveries) == 2)
    (d2,) = h.open_deliveries.values()
    assert [i.offset for i in d2.items] == [4, 5, 6, 7]
    mark = len(h.deliveries)
    store.seek("t", "g", 0, 1)
    # The re-sent commit(4) is refused with stale_epoch while d2 is with the handler.
    h.run_until(lambda: c.streams()[("t", 0)].phase == "drain", limit_ms=500)
    h.run_for(200)
    assert len(h.deliveries) == mark  # never two deliveries of the stream out at once
    if answer:
        h.handled(d2.delivery_id)
    else:
        h.open_deliveries.clear()  # the handler never answers: handle_timeout_ms
    h.run_until(lambda: len(h.deliveries) > mark, limit_ms=60_000)
    assert store.cursor("t", "g", 0) == 1  # d2's outcome was not committed
    assert [i.offset for i in h.deliveries[mark][1].items] == [1, 2, 3, 4]
    for d in list(h.open_deliveries.values()):
        h.handled(d.delivery_id)
    h.handler = ok_all
    h.run_until(lambda: store.cursor("t", "g", 0) == 10)
    assert after_seek(h, mark) >= set(range(1, 10))


def test_a_retry_refused_after_a_seek_restarts_from_the_seek_target() -> None:
    store = FakeStore()
    fill(store, 6)
    seen: set[int] = set()
    marks: list[int] = []

    def fail_3_once(d: Deliver) -> tuple[int, ...]:
        failed = tuple(i.offset for i in d.items if i.offset == 3 and 3 not in seen)
        seen.update(i.offset for i in d.items)
        return failed

    def seek_before_the_retry(node: str, body: object) -> bool:
        if isinstance(body, Retry) and not marks:
            marks.append(len(h.deliveries))
            store.seek("t", "g", 0, 0)
        return False

    _, h = make(store, handler=fail_3_once, retry_delays_ms=(10,))
    h.drop_request = seek_before_the_retry
    h.run_until(lambda: bool(marks) and store.cursor("t", "g", 0) == 6)
    assert store.items(L1, 0) == []  # the refused Retry moved nothing
    assert after_seek(h, marks[0]) == set(range(6))


def test_a_retry_with_an_unknown_outcome_across_a_seek_restarts_from_the_seek_target() -> None:
    store = FakeStore()
    fill(store, 6)
    seen: set[int] = set()
    marks: list[int] = []

    def fail_3_once(d: Deliver) -> tuple[int, ...]:
        failed = tuple(i.offset for i in d.items if i.offset == 3 and 3 not in seen)
        seen.update(i.offset for i in d.items)
        return failed

    def seek_and_lose_the_retry_answer(node: str, answer: object) -> bool:
        if isinstance(answer, RetryOk) and not marks:
            marks.append(len(h.deliveries))
            store.seek("t", "g", 0, 1)
            return True
        return False

    _, h = make(store, handler=fail_3_once, retry_delays_ms=(10_000,), request_timeout_ms=50)
    h.drop_reply = seek_and_lose_the_retry_answer
    h.run_until(lambda: bool(marks) and store.cursor("t", "g", 0) == 6)
    # The re-read showed the new epoch: no second Retry, the item moved once and is
    # delivered again from the seek target (as the replay asks).
    assert len(requests_of(h, Retry)) == 1
    assert len(store.items(L1, 0)) == 1
    assert after_seek(h, marks[0]) == set(range(1, 6))


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    fail_pct=st.integers(0, 30),
    drop_pct=st.integers(0, 20),
    seeks=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 1), st.integers(0, 40)), max_size=4
    ),
)
def test_every_seek_is_followed_by_deliveries_from_its_target(
    seed: int, fail_pct: int, drop_pct: int, seeks: list[tuple[int, int, int]]
) -> None:
    """Under loss and handler failures, after a seek to X every offset o >= X of the queue is
    delivered again, unless a later seek of the queue went past o (and skipped it)."""
    rng = random.Random(seed)
    store = FakeStore()
    fill(store, 40)
    fill(store, 40, queue=1)

    def handler(d: Deliver) -> tuple[int, ...]:
        return tuple(i.offset for i in d.items if rng.randrange(100) < fail_pct)

    _, h = make(
        store,
        owned=(("t", 0), ("t", 1)),
        handler=handler,
        handle_ms=1,
        seed=seed,
        retry_delays_ms=(5,),
        request_timeout_ms=20,
        get_items_max=4,
        backoff_max_ms=40,
    )
    h.drop_request = lambda node, body: rng.randrange(100) < drop_pct
    h.drop_reply = lambda node, body: rng.randrange(100) < drop_pct

    def one_delivery_out_per_stream() -> None:
        streams = [(d.topic, d.queue) for d in h.open_deliveries.values()]
        assert len(streams) == len(set(streams))

    h.after_step = one_delivery_out_per_stream
    done: list[tuple[int, int, int]] = []  # (mark, queue, target)
    for gap, queue, offset in seeks:
        h.run_for(gap)
        done.append((len(h.deliveries), queue, store.seek("t", "g", queue, offset)))
    h.drop_request = lambda node, body: False
    h.drop_reply = lambda node, body: False

    def drained() -> bool:
        return all(
            store.cursor(t, "g", q) == len(store.items(t, q)) for t in ("t", L1) for q in (0, 1)
        )

    h.run_until(drained, limit_ms=100_000)
    for i, (mark, queue, target) in enumerate(done):
        later = [x for _, q, x in done[i + 1 :] if q == queue]
        required = set(range(max([target, *later]), 40))
        assert required <= after_seek(h, mark, queue), (i, done)


def test_items_of_unsubscribed_kinds_are_skipped_and_committed() -> None:
    store = FakeStore(subscriptions={"g": frozenset({"a"})})
    for kind in ("b", "a", "b", "b"):
        store.append("t", 0, b"k", kind.encode(), kind=kind)
    _, h = make(store)
    h.run_until(lambda: store.cursor("t", "g", 0) == 4)
    assert delivered(h) == [1]


def test_stale_token_stops_the_stream_until_ownership_changes() -> None:
    store = FakeStore()
    fill(store, 3)
    store.tokens[("t", "g", 0)] = 5
    c, h = make(store, owned=(OwnedQueue(topic="t", queue=0, token=4),))
    h.run_for(500)
    assert c.streams()[("t", 0)].phase == "stopped"
    assert store.cursor("t", "g", 0) == 0
    sent = len(h.requests)
    h.run_for(500)
    assert len(h.requests) == sent
    h.absorb(c.set_ownership(h.now, [OwnedQueue(topic="t", queue=0, token=6)]))
    h.run_until(lambda: store.cursor("t", "g", 0) == 3)


def test_handler_timeout_counts_as_failure() -> None:
    store = FakeStore()
    fill(store, 2)
    _, h = make(store, handler=None, handle_timeout_ms=100, retry_delays_ms=(5,))
    h.run_until(lambda: len(store.items(L1, 0)) == 2, limit_ms=1000)
    assert store.cursor("t", "g", 0) == 2
    first = h.deliveries[0][1]
    before = len(h.requests)
    h.handled(first.delivery_id)  # too late: ignored
    assert len(h.requests) == before


def test_set_ownership_validates_the_set() -> None:
    _, h = make(owned=())
    bad = [
        SetOwnership(queues=(OwnedQueue(topic="nope", queue=0),)),
        SetOwnership(queues=(OwnedQueue(topic="t", queue=4),)),
        SetOwnership(queues=(OwnedQueue(topic="t", queue=0), OwnedQueue(topic="t", queue=0))),
        SetOwnership(queues=(), share=(1, 0)),
    ]
    codes = []
    for req in bad:
        r = h.replies[h.call(req)]
        assert isinstance(r, OwnershipRejected)
        codes.append(r.code)
    assert codes == ["unknown_topic", "bad_queue", "bad_request", "bad_share"]
    r = h.replies[h.call("nonsense")]
    assert isinstance(r, OwnershipRejected) and r.code == "bad_request"
    with pytest.raises(ValueError, match="too_many"):
        s = ConsumerSettings(
            group="g", stores=STORES, groups_per_store=GROUPS, topics=TOPICS, owned_queues_max=1
        )
        Consumer(s, random.Random(1), owned=[("t", 0), ("t", 1)])


def test_consumer_messages_round_trip_through_the_codec() -> None:
    item = StoredItem(offset=1, enqueued_ms=2, key=b"k", payload=b"p", attempt=1)
    for m in (
        Deliver(delivery_id=1, group="g", topic="t", queue=0, items=(item,)),
        Handled(delivery_id=1, failed=(1, 2)),
        SetOwnership(queues=(OwnedQueue(topic="t", queue=1, token=3),), share=(1, 2)),
        OwnershipSet(started=1, stopped=0),
        OwnershipRejected(code="c", message="m"),
    ):
        assert decode(encode(m)) == m


def test_settings_reject_inconsistent_values() -> None:
    base: dict[str, Any] = {"group": "g", "stores": STORES, "groups_per_store": GROUPS}
    with pytest.raises(ValueError, match="derived topic"):
        ConsumerSettings(topics={L1: 1}, **base)
    with pytest.raises(ValueError, match="poll_empty_max_ms"):
        ConsumerSettings(topics=TOPICS, poll_empty_ms=100, poll_empty_max_ms=10, **base)
    with pytest.raises(ValueError, match="group"):
        ConsumerSettings(topics=TOPICS, **{**base, "group": ""})


def test_empty_queue_is_polled_with_a_growing_bounded_backoff() -> None:
    _, h = make(poll_empty_ms=10, poll_empty_max_ms=80)
    h.run_for(1000)
    times = [t for t, _, b in requests_of(h, Get) if b.items_max > 0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:4] == [12, 22, 42, 82] and max(gaps) == 82  # + 2 ms round trip each


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    fail_pct=st.integers(0, 40),
    drop_pct=st.integers(0, 25),
    restarts=st.integers(0, 3),
    store_checks_cursor=st.booleans(),
)
def test_at_least_once_under_loss_failures_and_restarts(
    seed: int, fail_pct: int, drop_pct: int, restarts: int, store_checks_cursor: bool
) -> None:
    """Every item ends up handled successfully or in the dead-letter topic; nothing is moved
    twice; the cursors reach the end once the network heals."""
    rng = random.Random(seed)
    store = FakeStore(retry_checks_cursor=store_checks_cursor)
    fill(store, 30)
    fill(store, 30, queue=1)
    succeeded: set[tuple[int, bytes]] = set()

    def handler(d: Deliver) -> tuple[int, ...]:
        failed = []
        for i in d.items:
            if rng.randrange(100) < fail_pct:
                failed.append(i.offset)
            else:
                succeeded.add((d.queue, i.payload))
        return tuple(failed)

    owned = (("t", 0), ("t", 1))
    kw: dict[str, Any] = {
        "retry_delays_ms": (5, 10),
        "request_timeout_ms": 20,
        "get_items_max": 4,
        "backoff_max_ms": 40,
    }
    for life in range(restarts + 1):
        _, h = make(store, owned=owned, handler=handler, handle_ms=1, seed=seed + life, **kw)
        h.drop_request = lambda node, body: rng.randrange(100) < drop_pct
        h.drop_reply = lambda node, body: rng.randrange(100) < drop_pct
        h.run_for(rng.randrange(50, 400))
    h.drop_request = lambda node, body: False
    h.drop_reply = lambda node, body: False
    topics = ["t", L1, L2]

    def drained() -> bool:
        return all(
            store.cursor(t, "g", q) == len(store.items(t, q)) for t in topics for q in (0, 1)
        )

    h.run_until(drained, limit_ms=100_000)
    for q in (0, 1):
        dead = {i.payload for i in store.items(DLQ, q)}
        for i in store.items("t", q):
            assert (q, i.payload) in succeeded or i.payload in dead
        # Nothing moved twice: each level holds each payload at most once.
        for t in (L1, L2, DLQ):
            payloads = [i.payload for i in store.items(t, q)]
            assert len(payloads) == len(set(payloads))


def test_wall_and_mono_clocks_are_independent_in_now() -> None:
    # A guard for the harness itself: the consumer sees the skewed wall clock.
    _, h = make()
    h.wall_skew_ms = 7
    assert h.now == Now(mono_ms=h.now_ms, wall_ms=WALL0 + h.now_ms + 7)


def test_ownership_flips_keep_the_token_wait_list_bounded() -> None:
    store = FakeStore()
    fill(store, 50)
    c, h = make(store, rate_items_per_s=0, rate_burst=1, owned=(("t", 0), ("t", 1)))
    h.run_for(50)  # the single token is spent; both streams wait for tokens forever
    for i in range(100):
        h.absorb(c.set_ownership(h.now, [("t", i % 2)]))
        h.run_for(5)
    assert len(c._token_waiters) <= len(c.streams())
    assert sum(len(d.items) for _, d in h.deliveries) == 1


def test_a_new_token_is_claimed_at_the_probed_cursor_before_the_old_holder_can_commit() -> None:
    store = FakeStore()
    fill(store, 4)
    store.cursors[("t", "g", 0)] = 2  # the previous holder (token 3) got this far
    store.tokens[("t", "g", 0)] = 3
    _, h = make(store, owned=(OwnedQueue(topic="t", queue=0, token=4),), handler=None)
    h.run_for(50)  # the probe, the claim; the delivery waits for the handler
    claims = [b for _, _, b in requests_of(h, CommitCursor) if b.token == 4]
    assert claims and claims[0].cursor == 2
    assert store.tokens[("t", "g", 0)] == 4
    # The previous holder's late commit is now refused, whatever cursor it carries.
    late = CommitCursor(topic="t", group="g", queue=0, cursor=3, token=3)
    node = store.stores[store.locate("t", 0)[0]][0]
    assert isinstance(store.handle(node, late, 0), StoreError)
    assert store.cursor("t", "g", 0) == 2


def test_streams_without_a_lock_make_no_claim() -> None:
    store = FakeStore()
    _, h = make(store)  # token 0: locks off
    h.run_for(50)
    assert requests_of(h, CommitCursor) == []
