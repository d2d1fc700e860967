"""The end-of-run checkers on hand-made histories: final reads tell lost from undelivered
(the seed 31339 class of queue-pipelined-order), a Get after an acknowledged enqueue returns
it, a committed cursor never goes back without a seek, retry_flow knows seeks, failover does
not count time when the lock service has no master, and checks scoped to a time window."""

from __future__ import annotations

import pytest

from pxq.check.history import JSON, NEMESIS, HistoryError, HistoryWriter, Op
from pxq.check.ownership import LOCK_MASTER, check_failover, lock_masterless
from pxq.check.queue import (
    check_cursor_monotonic,
    check_delivery,
    check_read_after_ack,
    check_retry_flow,
    check_total_queue,
)
from pxq.topics import retry_topic

T = "t0"
R1 = retry_topic(T, "g0", 1)
SUBS = {"g0": {T: [0, 1]}}


class H:
    """A hand-made queue history: every call its own process, completions right after."""

    def __init__(self) -> None:
        self.w = HistoryWriter()
        self.time_ms = 0
        self.process = 0

    @property
    def ops(self) -> list[Op]:
        return self.w.ops

    def _pair(self, f: str, value: JSON, **extra: JSON) -> None:
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, f, value, **extra)
        self.w.ok(self.time_ms, self.process, f, value, **extra)

    def enqueue(self, msg: str, offset: int, *, queue: int = 0) -> None:
        extra: dict[str, JSON] = {"topic": T, "queue": queue, "key": msg}
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, "enqueue", msg, **extra)
        self.w.ok(self.time_ms, self.process, "enqueue", msg, **extra, offset=offset)

    def deliver(self, msg: str, offset: int, *, queue: int = 0, topic: str = T) -> None:
        self._pair("deliver", msg, group="g0", topic=topic, queue=queue, offset=offset)

    def handle(self, msg: str, offset: int, outcome: str, *, topic: str = T) -> None:
        self._pair("handle", msg, group="g0", topic=topic, queue=0, offset=offset, outcome=outcome)

    def read(
        self,
        queue: int,
        first: int,
        end: int,
        items: list[tuple[int, str]],
        *,
        node: str | None = None,
        tail: bool = True,
    ) -> None:
        where: dict[str, JSON] = {"topic": T, "queue": queue}
        if node is not None:
            where["node"] = node
        pairs: JSON = [[o, m] for o, m in items]
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, "store_read", None, **where)
        self.w.ok(
            self.time_ms,
            self.process,
            "store_read",
            None,
            **where,
            first=first,
            end=end,
            items=pairs,
            tail=tail,
        )

    def cursor(self, consumer: str, cursor: int, epoch: int = 0) -> None:
        extra: dict[str, JSON] = {
            "group": "g0",
            "topic": T,
            "queue": 0,
            "cursor": cursor,
            "epoch": epoch,
        }
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, "cursor_read", consumer, **extra)
        self.w.ok(self.time_ms, self.process, "cursor_read", consumer, **extra)

    def seek(self, cursor: int) -> None:
        extra: dict[str, JSON] = {"group": "g0", "topic": T, "queue": 0, "offset": cursor}
        self.process += 1
        self.time_ms += 1
        self.w.invoke(self.time_ms, self.process, "seek", None, **extra)
        self.w.ok(self.time_ms, self.process, "seek", None, **extra, positions=[[0, cursor]])


# --------------------------------------------------------------------------------------------
# Lost or undelivered: queue-pipelined-order seed 31339


def _last_fetch_lost() -> H:
    """Seed 31339 of queue-pipelined-order at e9a0d7a: items 1034-1038 of queue 1 acknowledged,
    held by every replica, but the consumer's last fetch and its answer were lost and the run
    stopped before the retry: the group got queue 1 only up to 1033."""
    h = H()
    for offset in range(1030, 1039):
        h.enqueue(f"m{offset}", offset, queue=1)
    for offset in range(1030, 1034):
        h.deliver(f"m{offset}", offset, queue=1)
    return h


def test_without_final_reads_an_undelivered_item_counts_as_lost() -> None:
    """What total_queue said at seed 31339 (5 lost), and still says for a history with no
    final read: nothing is known about the store."""
    result = check_total_queue(_last_fetch_lost().ops, SUBS)
    assert not result.ok
    assert result.details["lost"] == 5 and result.details["lost-past-last-delivery"] == 5
    assert check_delivery(_last_fetch_lost().ops, SUBS).details["final-reads"] == 0


def test_final_reads_tell_undelivered_from_lost() -> None:
    h = _last_fetch_lost()
    items = [(o, f"m{o}") for o in range(1030, 1039)]
    h.read(1, 1030, 1039, items)  # the master
    for node in ("n0", "n1", "n2"):
        h.read(1, 1030, 1039, items, node=node)
    total = check_total_queue(h.ops, SUBS)
    assert total.ok, total.summary
    assert total.details["lost"] == 0 and total.details["undelivered"] == 5
    delivery = check_delivery(h.ops, SUBS)
    assert not delivery.ok
    assert delivery.details["undelivered"] == 5
    examples = delivery.details["undelivered-examples"]
    assert isinstance(examples, list) and examples[0]["offset"] == 1034


def test_an_item_in_no_replica_is_lost_even_with_final_reads() -> None:
    h = _last_fetch_lost()
    # One replica holds 1034-1036 only; the master's read ends at 1037 (1037, 1038 gone).
    h.read(1, 1030, 1037, [(o, f"m{o}") for o in range(1030, 1037)], node="n0")
    h.read(1, 1030, 1037, [(o, f"m{o}") for o in range(1030, 1037)])
    total = check_total_queue(h.ops, SUBS)
    assert not total.ok
    assert total.details["lost"] == 2 and total.details["undelivered"] == 3
    assert check_delivery(h.ops, SUBS).details["undelivered"] == 3
    # Another msg id at the acknowledged offset is not the item: lost, not undelivered.
    g = _last_fetch_lost()
    g.read(1, 1030, 1039, [(o, "other") for o in range(1030, 1039)])
    assert check_total_queue(g.ops, SUBS).details["lost"] == 5
    assert check_delivery(g.ops, SUBS).ok


def test_a_read_item_outside_its_range_is_a_history_error() -> None:
    h = H()
    h.read(0, 5, 6, [(9, "x")])
    with pytest.raises(HistoryError, match="outside"):
        check_total_queue(h.ops, SUBS)


# --------------------------------------------------------------------------------------------
# Read after an acknowledged enqueue


def test_a_get_after_an_acknowledged_enqueue_returns_it() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.read(0, 1, 2, [(1, "b")], tail=False)  # a reader's read-back of b
    h.read(0, 0, 2, [(0, "a"), (1, "b")])  # the final read
    result = check_read_after_ack(h.ops)
    assert result.ok, result.summary
    assert result.details["judged"] == 3


def test_read_after_ack_catches_a_missing_and_a_wrong_item() -> None:
    h = H()
    h.enqueue("a", 0)
    h.enqueue("b", 1)
    h.enqueue("c", 2)
    h.read(0, 0, 2, [(0, "x")])  # a replaced, b absent, c past the queue's end
    result = check_read_after_ack(h.ops)
    assert not result.ok
    assert result.details["wrong-item"] == 1 and result.details["missing"] == 2


def test_read_after_ack_judges_only_reads_after_the_ack_and_of_the_master() -> None:
    h = H()
    h.read(0, 0, 0, [])  # before the enqueue: not judged
    h.enqueue("a", 0)
    h.read(0, 0, 0, [], node="n2")  # a lagging replica's own state: not a Get
    h.read(0, 3, 3, [])  # retention removed offsets below 3: not covered
    h.read(0, 0, 0, [], tail=False)  # covers nothing
    result = check_read_after_ack(h.ops)
    assert result.ok and result.details["judged"] == 0


# --------------------------------------------------------------------------------------------
# A committed cursor never goes back without a seek


def test_committed_cursor_reads_going_forward_and_back_after_a_seek_pass() -> None:
    h = H()
    h.cursor("c0", 0)
    h.cursor("c1", 40)
    h.seek(10)
    h.cursor("c0", 10, epoch=1)
    h.cursor("c1", 12, epoch=1)
    result = check_cursor_monotonic(h.ops)
    assert result.ok, result.summary
    assert result.details["back-after-seek"] == 1 and result.details["judged"] == 3


def test_a_committed_cursor_going_back_without_a_seek_is_caught() -> None:
    h = H()
    h.cursor("c0", 40)
    h.cursor("c1", 30)  # same epoch, lower: a rewind nobody asked for
    result = check_cursor_monotonic(h.ops)
    assert not result.ok and result.details["cursor-back"] == 1
    # A higher epoch without any seek in the history does not excuse it either.
    g = H()
    g.cursor("c0", 40)
    g.cursor("c1", 30, epoch=1)
    assert check_cursor_monotonic(g.ops).details["cursor-back"] == 1
    # Nor does a seek already completed before the higher read.
    k = H()
    k.seek(0)
    k.cursor("c0", 40, epoch=1)
    k.cursor("c1", 30, epoch=2)
    assert check_cursor_monotonic(k.ops).details["cursor-back"] == 1


def test_a_seek_epoch_going_back_is_caught() -> None:
    h = H()
    h.seek(0)
    h.cursor("c0", 5, epoch=1)
    h.cursor("c1", 5, epoch=0)
    result = check_cursor_monotonic(h.ops)
    assert not result.ok and result.details["epoch-back"] == 1


# --------------------------------------------------------------------------------------------
# retry_flow knows seeks


def _failed_on_level_one_then_replayed(*, seek: bool) -> H:
    h = H()
    h.enqueue("a", 0)
    h.deliver("a", 0)
    h.handle("a", 0, "fail")
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "fail", topic=R1)
    if seek:
        h.seek(0)
    h.deliver("a", 0)  # the base topic again: a replay if a seek came in between
    h.handle("a", 0, "ok")
    h.deliver("a", 0, topic=R1)  # the item's own move: in place on level 1 (say)
    h.handle("a", 0, "ok", topic=R1)
    return h


def test_retry_flow_takes_a_replay_after_a_seek_for_what_it_is() -> None:
    result = check_retry_flow(_failed_on_level_one_then_replayed(seek=True).ops, {"g0": 2})
    assert result.ok, result.summary
    assert result.details["replayed-by-seek"] == 1
    assert result.details["redelivered-in-place"] == 1


def test_retry_flow_without_a_seek_still_calls_it_misrouted() -> None:
    result = check_retry_flow(_failed_on_level_one_then_replayed(seek=False).ops, {"g0": 2})
    assert not result.ok and result.details["misrouted"] == 1


def test_retry_flow_takes_a_replay_by_a_seek_in_flight_at_the_failure_for_what_it_is() -> None:
    # swarm-consumers seed 38: a seek invoked before the item's failure on level 1 completed
    # just after it; the replay from the base topic that followed is the seek's doing.
    h = H()
    h.enqueue("a", 0)
    h.deliver("a", 0)
    h.handle("a", 0, "fail")
    where: dict[str, JSON] = {"group": "g0", "topic": T, "queue": 0, "offset": 0}
    h.time_ms += 1
    h.w.invoke(h.time_ms, "admin", "seek", None, **where)
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "fail", topic=R1)
    h.w.ok(h.time_ms, "admin", "seek", None, **where, positions=[[0, 0]])
    h.deliver("a", 0)
    h.handle("a", 0, "ok")
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "ok", topic=R1)
    result = check_retry_flow(h.ops, {"g0": 2})
    assert result.ok, result.summary
    assert result.details["replayed-by-seek"] == 1


def test_retry_flow_takes_a_replay_by_a_seek_completed_before_the_failure_for_what_it_is() -> None:
    # swarm-queue seed 210: the seek completed after the item's delivery from the base topic
    # but before its failure on level 1 (its consumer was paused); the consumer noticed the
    # seek on resuming and replayed the base topic over the item.
    h = H()
    h.enqueue("a", 0)
    h.deliver("a", 0)
    h.handle("a", 0, "fail")
    h.seek(0)
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "fail", topic=R1)
    h.deliver("a", 0)
    h.handle("a", 0, "ok")
    h.deliver("a", 0, topic=R1)  # the item's own move: in place on level 1
    h.handle("a", 0, "ok", topic=R1)
    result = check_retry_flow(h.ops, {"g0": 2})
    assert result.ok, result.summary
    assert result.details["replayed-by-seek"] == 1


@pytest.mark.parametrize("noticed", [True, False])
def test_retry_flow_a_seek_noticed_after_a_stale_delivery_explains_the_replay(
    noticed: bool,
) -> None:
    # The seek completed before the item's delivery from the base topic, which came from the
    # consumer's old position; the consumer read the new cursor (a seek's epoch, at or below
    # the item) only after the item failed on level 1, and replayed it. Without that cursor
    # read nothing shows the lane went back: a misroute.
    h = H()
    h.enqueue("a", 0)
    h.seek(0)
    h.deliver("a", 0)
    h.handle("a", 0, "fail")
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "fail", topic=R1)
    if noticed:
        read: dict[str, JSON] = {"group": "g0", "topic": T, "queue": 0, "cursor": 0, "epoch": 1}
        h.time_ms += 1
        h.w.invoke(h.time_ms, "c0.cursor", "cursor_read", "c0", **read)
        h.w.ok(h.time_ms, "c0.cursor", "cursor_read", "c0", **read)
    h.deliver("a", 0)
    h.handle("a", 0, "ok")
    h.deliver("a", 0, topic=R1)
    h.handle("a", 0, "ok", topic=R1)
    result = check_retry_flow(h.ops, {"g0": 2})
    assert result.ok == noticed, result.summary
    assert result.details["replayed-by-seek"] == (1 if noticed else 0)


# --------------------------------------------------------------------------------------------
# failover does not count the lock service's own failover


class F:
    def __init__(self) -> None:
        self.w = HistoryWriter()

    @property
    def ops(self) -> list[Op]:
        return self.w.ops

    def own(self, t: int, c: str, token: int) -> None:
        extra: dict[str, JSON] = {"group": "g0", "topic": T, "queue": 0, "token": token}
        extra["holder"] = f"{c}#1"
        self.w.invoke(t, c, "own_start", c, **extra)
        self.w.ok(t, c, "own_start", c, **extra)

    def nemesis(self, t: int, f: str, *targets: str) -> None:
        self.w.invoke(t, NEMESIS, f, list(targets))
        self.w.info(t, NEMESIS, f, list(targets))

    def lock(self, t: int, node: str, state: str, group: int | None = 0) -> None:
        extra: dict[str, JSON] = {"state": state}
        if group is not None:
            extra["group"] = group
        self.w.invoke(t, "lock-service", LOCK_MASTER, node, **extra)
        self.w.ok(t, "lock-service", LOCK_MASTER, node, **extra)


def _failover_during_lock_failover() -> F:
    """Consumer a crashes at 1000 while the lock master l0 crashes at 900; l1 serves from
    3000; b takes the queue at 4200: 3200 ms after a went down, 1200 of them with a lock
    master."""
    h = F()
    h.lock(100, "l0", "became")
    h.own(200, "a", 1)
    h.lock(900, "l0", "crashed", group=None)
    h.nemesis(1000, "crash", "a")
    h.lock(3000, "l1", "elected")
    h.lock(3000, "l1", "became")
    h.own(4200, "b", 2)
    return h


def test_failover_excludes_time_when_the_lock_service_has_no_master() -> None:
    h = _failover_during_lock_failover()
    assert lock_masterless(h.ops, 1) == [(0, 100), (900, 3000)]
    assert not check_failover(h.ops, ["a", "b"], 2000).ok  # counting the lock's own failover
    result = check_failover(h.ops, ["a", "b"], 2000, lock_groups=1)
    assert result.ok, result.summary
    assert result.details["max_ms"] == 1200


def test_failover_is_slow_when_the_lock_service_had_a_master() -> None:
    h = F()
    h.lock(100, "l0", "became")
    h.own(200, "a", 1)
    h.nemesis(1000, "crash", "a")
    h.own(4200, "b", 2)
    result = check_failover(h.ops, ["a", "b"], 2000, lock_groups=1)
    assert not result.ok and result.details["slow_failover"] == 1


def test_a_paused_lock_master_serves_nobody() -> None:
    h = F()
    h.lock(0, "l0", "became", group=0)
    h.lock(0, "l1", "became", group=1)
    h.nemesis(500, "pause", "l1")  # group 1 has no master: the lock service is masterless
    h.nemesis(800, "resume", "l1")
    h.lock(1000, "l1", "lapsed", group=1)
    h.lock(1300, "l2", "became", group=1)
    assert lock_masterless(h.ops, 2) == [(500, 800), (1000, 1300)]


# --------------------------------------------------------------------------------------------
# Windows


def test_a_window_scopes_the_item_checks_and_failover() -> None:
    h = _last_fetch_lost()  # enqueues at 1-9 ms; 1034-1038 are the last five
    assert check_total_queue(h.ops, SUBS, window=(0, 4)).ok
    assert not check_total_queue(h.ops, SUBS, window=(0, 9)).ok
    f = F()
    f.lock(0, "l0", "became")
    f.own(10, "a", 1)
    f.nemesis(100, "crash", "a")  # slow: granted 5000 ms later
    f.own(5100, "b", 2)
    f.nemesis(6000, "crash", "b")  # fast
    f.own(6500, "a", 3)
    assert not check_failover(f.ops, ["a", "b"], 1000, lock_groups=1).ok
    scoped = check_failover(f.ops, ["a", "b"], 1000, lock_groups=1, window=(5000, 9000))
    assert scoped.ok and scoped.details["failovers"] == 1
