"""Producer machine against the fake store: routing, batching, pipelined batches kept in order
(``Enqueue.after``), idempotent retries, redirects, outcome classification, bounds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pxq.codec import decode, encode
from pxq.effects import Boot, ClientCall, Now, Received, Request, Response, Undelivered, Wake
from pxq.producer.machine import Producer
from pxq.producer.messages import Produce, Produced, ProduceFailed, ProduceUnknown
from pxq.producer.settings import ProducerSettings
from pxq.routing import queue_of
from pxq.store.messages import Enqueue, EnqueueOk, StoreError, StoreRedirect
from tests.test_consumer_fakestore import GROUPS, STORES, FakeStore, Harness

TOPICS = {"t": 8, "u": 3}


def make(
    store: FakeStore | None = None, *, latency_ms: int = 1, seed: int = 1, **kw: Any
) -> tuple[Producer, Harness]:
    defaults: dict[str, Any] = {"linger_ms": 0}
    defaults.update(kw)
    s = ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, **defaults)
    p = Producer(s, random.Random(seed), name="p")
    h = Harness(p, store or FakeStore(), latency_ms=latency_ms)
    h.step(Boot())
    return p, h


def enqueues(h: Harness) -> list[tuple[int, str, Enqueue]]:
    return [(t, n, b) for t, n, b in h.requests if isinstance(b, Enqueue)]


def produce(h: Harness, key: bytes, payload: bytes = b"x", topic: str = "t") -> int:
    return h.call(Produce(topic=topic, key=key, payload=payload))


def test_same_key_always_routes_to_the_same_queue_and_store() -> None:
    p, h = make()
    calls = [produce(h, b"user-42", bytes([i])) for i in range(5)]
    h.run_until(lambda: all(c in h.replies for c in calls))
    answers = [h.replies[c] for c in calls]
    assert all(isinstance(a, Produced) for a in answers)
    queues = {a.queue for a in answers if isinstance(a, Produced)}
    assert queues == {queue_of(b"user-42", TOPICS["t"])}
    queue, store, group = p.route("t", b"user-42")
    assert p.route("t", b"user-42") == (queue, store, group)
    # Every request went to a replica of that one store.
    assert {n for _, n, _ in enqueues(h)} <= set(STORES[store])
    assert [i.payload for i in h.store.items("t", queue)] == [bytes([i]) for i in range(5)]


def test_keys_spread_over_queues_and_stores() -> None:
    p, _ = make()
    routes = {p.route("t", f"k{i}".encode()) for i in range(200)}
    assert {q for q, _, _ in routes} == set(range(TOPICS["t"]))
    assert {s for _, s, _ in routes} == set(STORES)


def test_batch_leaves_after_linger_ms() -> None:
    _, h = make(linger_ms=10, latency_ms=1)
    calls = [produce(h, b"k", bytes([i])) for i in range(3)]
    h.run_for(9)
    assert enqueues(h) == []
    h.run_until(lambda: all(c in h.replies for c in calls))
    sent = enqueues(h)
    assert len(sent) == 1 and sent[0][0] == 10
    assert [i.payload for i in sent[0][2].items] == [b"\x00", b"\x01", b"\x02"]
    offsets = [r.offset for c in calls if isinstance(r := h.replies[c], Produced)]
    assert offsets == [0, 1, 2]


def test_batch_leaves_as_soon_as_it_has_batch_items_max_items() -> None:
    _, h = make(linger_ms=1000, batch_items_max=3)
    for i in range(4):
        produce(h, b"k", bytes([i]))
    sent = enqueues(h)
    assert len(sent) == 1 and sent[0][0] == 0 and len(sent[0][2].items) == 3


def test_batch_is_cut_at_batch_bytes_max() -> None:
    _, h = make(linger_ms=1000, batch_bytes_max=100)
    for _ in range(3):
        produce(h, b"k", b"p" * 39)  # 40 bytes each with the key
    sent = enqueues(h)
    assert len(sent) == 1 and len(sent[0][2].items) == 2
    h.run_for(1500)
    assert [len(e.items) for _, _, e in enqueues(h)] == [2, 1]


def test_only_one_batch_is_in_flight_per_queue_and_the_next_one_accumulates() -> None:
    p, h = make(latency_ms=20)
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, len(p.in_flight()))

    h.after_step = watch
    first = produce(h, b"k", b"0")
    rest = [produce(h, b"k", bytes([i])) for i in range(1, 6)]
    other = produce(h, b"other-key-in-another-queue", b"z")
    assert queue_of(b"other-key-in-another-queue", 8) != queue_of(b"k", 8)
    h.run_until(lambda: all(c in h.replies for c in [first, *rest, other]))
    sizes = [len(e.items) for _, _, e in enqueues(h) if e.queue == queue_of(b"k", 8)]
    assert sizes == [1, 5]
    assert peak == 2  # the two queues overlap; the second batch of "k" was not full: it waited
    seqs = [e.seq for _, _, e in enqueues(h)]
    assert len(set(seqs)) == len(seqs)
    assert [r.offset for c in [first, *rest] if isinstance(r := h.replies[c], Produced)] == list(
        range(6)
    )


def test_retry_after_a_lost_reply_reuses_the_seq_and_the_store_dedupes() -> None:
    _, h = make(request_timeout_ms=50)
    lost = {"n": 0}

    def drop_first_reply(node: str, answer: object) -> bool:
        if isinstance(answer, EnqueueOk) and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    h.drop_reply = drop_first_reply
    calls = [produce(h, b"k", bytes([i])) for i in range(3)]
    h.run_until(lambda: all(c in h.replies for c in calls))
    sent = enqueues(h)
    assert len(sent) >= 2
    # The first batch went twice with the same (producer, seq) and the same items.
    assert sent[0][2] == sent[1][2]
    assert sent[1][0] - sent[0][0] == 50
    q = queue_of(b"k", 8)
    assert [i.payload for i in h.store.items("t", q)] == [b"\x00", b"\x01", b"\x02"]
    assert [r.offset for c in calls if isinstance(r := h.replies[c], Produced)] == [0, 1, 2]


def test_redirect_is_followed_and_remembered() -> None:
    store = FakeStore()
    p, h = make(store)
    _, store_name, group = p.route("t", b"k")
    replicas = STORES[store_name]
    preferred = replicas[group % 3]
    actual = replicas[(group + 1) % 3]
    store.masters[(store_name, group)] = actual
    c1 = produce(h, b"k")
    h.run_until(lambda: c1 in h.replies)
    assert isinstance(h.replies[c1], Produced)
    assert [n for _, n, _ in enqueues(h)] == [preferred, actual]
    c2 = produce(h, b"k")
    h.run_until(lambda: c2 in h.replies)
    assert [n for _, n, _ in enqueues(h)][2:] == [actual]


def test_every_attempt_lost_gives_produce_unknown() -> None:
    store = FakeStore()
    p, h = make(store, request_timeout_ms=20, retries_max=3)
    h.drop_request = lambda node, body: True
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    assert isinstance(h.replies[c], ProduceUnknown)
    assert len(enqueues(h)) == 4  # first attempt + retries_max re-sends
    assert p.held_calls == 0


def test_lost_replies_after_apply_give_produce_unknown_not_failed() -> None:
    _, h = make(request_timeout_ms=20, retries_max=2)
    h.drop_reply = lambda node, answer: True
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    assert isinstance(h.replies[c], ProduceUnknown)
    assert len(h.store.items("t", queue_of(b"k", 8))) == 1  # applied once, deduped after


def test_redirects_without_a_master_give_a_definite_failure() -> None:
    store = FakeStore()
    p, h = make(store, retries_max=4, backoff_ms=5, backoff_max_ms=20)
    _, store_name, group = p.route("t", b"k")
    store.masters[(store_name, group)] = None
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    answer = h.replies[c]
    assert isinstance(answer, ProduceFailed) and answer.code == "unavailable"
    # It tried every replica in turn while no master was known.
    assert {n for _, n, _ in enqueues(h)} == set(STORES[store_name])


def test_redirects_during_a_failover_are_followed_until_the_deadline_not_retries_max() -> None:
    # No master for longer than retries_max redirects take: the call keeps following
    # redirects (with backoff) and succeeds once a master is elected, well before its deadline.
    store = FakeStore()
    p, h = make(store, retries_max=2, backoff_ms=5, backoff_max_ms=20, call_timeout_ms=5000)
    _, store_name, group = p.route("t", b"k")
    store.masters[(store_name, group)] = None
    c = produce(h, b"k")
    h.run_until(lambda: len(enqueues(h)) >= 12)
    assert c not in h.replies, "a failover's redirects must not end the call before its deadline"
    store.masters[(store_name, group)] = STORES[store_name][1]
    h.run_until(lambda: c in h.replies)
    assert isinstance(h.replies[c], Produced)
    assert h.reply_times[c] < 5000
    # Redirect answers after retries_max come at the backoff's pace, not in a tight loop.
    times = [t for t, _, _ in enqueues(h)]
    assert len(times) < 5000 // 5


def test_redirects_without_a_master_end_the_call_at_its_deadline_not_before() -> None:
    store = FakeStore()
    p, h = make(store, retries_max=2, backoff_ms=5, backoff_max_ms=20, call_timeout_ms=500)
    _, store_name, group = p.route("t", b"k")
    store.masters[(store_name, group)] = None
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    answer = h.replies[c]
    assert isinstance(answer, ProduceFailed | ProduceUnknown)
    assert h.reply_times[c] >= 500
    assert len(enqueues(h)) > 2 + 1  # more attempts than retries_max would allow


def test_definite_store_error_fails_at_once_unless_an_earlier_attempt_may_have_applied() -> None:
    class Refusing(FakeStore):
        answers: list[object] = []

        def handle(self, node: str, body: object, wall_ms: int) -> object:
            return self.answers.pop(0) if self.answers else super().handle(node, body, wall_ms)

    store = Refusing()
    store.answers = [StoreError(code="too_large", message="no")]
    _, h = make(store)
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    assert h.replies[c] == ProduceFailed(code="too_large", message="refused: no")
    assert len(enqueues(h)) == 1

    store2 = Refusing()
    store2.answers = [
        StoreError(code="unknown", message="lost mastership", definite=False),
        StoreError(code="too_large", message="no"),
    ]
    _, h2 = make(store2)
    c2 = produce(h2, b"k")
    h2.run_until(lambda: c2 in h2.replies)
    assert isinstance(h2.replies[c2], ProduceUnknown)


def test_overloaded_store_is_retried_after_a_backoff() -> None:
    class Busy(FakeStore):
        busy = 2

        def handle(self, node: str, body: object, wall_ms: int) -> object:
            if isinstance(body, Enqueue) and self.busy > 0:
                self.busy -= 1
                return StoreError(code="overloaded", message="busy")
            return super().handle(node, body, wall_ms)

    _, h = make(Busy(), backoff_ms=10, backoff_max_ms=40)
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    assert isinstance(h.replies[c], Produced)
    times = [t for t, _, _ in enqueues(h)]
    assert len(times) == 3 and times[1] - times[0] >= 5 + 2 and times[2] - times[1] >= 10 + 2


def test_call_deadline_bounds_the_batch_and_the_calls_queued_behind_it() -> None:
    _, h = make(request_timeout_ms=40, call_timeout_ms=100, retries_max=100)
    h.drop_request = lambda node, body: True
    first = produce(h, b"k")
    h.run_for(30)
    second = produce(h, b"k")
    h.run_until(lambda: first in h.replies and second in h.replies)
    assert isinstance(h.replies[first], ProduceUnknown)
    assert h.reply_times[first] == 100
    # The second call's batch went out once the first was given up, and its own deadline
    # (from its arrival) caught it in flight.
    assert isinstance(h.replies[second], ProduceUnknown)
    assert h.reply_times[second] == 130


def test_waiting_call_past_its_deadline_fails_definitely() -> None:
    _, h = make(request_timeout_ms=1000, call_timeout_ms=100, linger_ms=0)
    h.drop_request = lambda node, body: True
    first = produce(h, b"k")
    second = produce(h, b"k")  # same ms: same deadline, waits behind the first batch
    h.run_for(200)
    # The batch in flight is unknown; the call that never left definitely failed.
    assert isinstance(h.replies[first], ProduceUnknown)
    assert h.replies[second] == ProduceFailed(
        code="timeout", message="deadline passed before it was sent"
    )
    assert h.reply_times[first] == h.reply_times[second] == 100
    assert len(enqueues(h)) == 1


def test_pending_max_rejects_calls_beyond_it_as_overloaded() -> None:
    p, h = make(pending_max=2, latency_ms=50)
    calls = [produce(h, b"k", bytes([i])) for i in range(3)]
    assert h.replies[calls[2]] == ProduceFailed(code="overloaded", message="producer queue full")
    h.run_until(lambda: calls[0] in h.replies and calls[1] in h.replies)
    assert p.held_calls == 0
    c = produce(h, b"k")
    h.run_until(lambda: c in h.replies)
    assert isinstance(h.replies[c], Produced)


def test_unknown_topic_and_too_large_items_fail_without_sending() -> None:
    _, h = make(batch_bytes_max=10)
    a = h.call(Produce(topic="nope", key=b"k", payload=b""))
    b = produce(h, b"k", b"x" * 10)
    c = h.call("not a produce")
    codes = [r.code if isinstance(r := h.replies[x], ProduceFailed) else r for x in (a, b, c)]
    assert codes == ["unknown_topic", "too_large", "bad_request"]
    assert enqueues(h) == []


def test_seqs_increase_per_producer_and_ids_differ_per_incarnation() -> None:
    s = ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, linger_ms=0)
    a = Producer(s, random.Random(1), name="p")
    b = Producer(s, random.Random(2), name="p")
    assert a.producer_id != b.producer_id and a.producer_id.startswith("p.")
    now = Now(mono_ms=0, wall_ms=0)
    seqs = []
    keys = {queue_of(bytes([i]), 3): bytes([i]) for i in range(50)}
    assert len(keys) == 3
    for i, key in enumerate(keys.values()):
        fx = a.step(now, ClientCall(call_id=i, request=Produce(topic="u", key=key, payload=b"")))
        bodies = [s.msg.body for s in fx.sends if isinstance(s.msg, Request)]
        seqs += [b.seq for b in bodies if isinstance(b, Enqueue)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_late_ok_to_a_superseded_attempt_is_accepted() -> None:
    s = ProducerSettings(
        stores=STORES, groups_per_store=GROUPS, topics=TOPICS, linger_ms=0, request_timeout_ms=10
    )
    p = Producer(s, random.Random(1))
    fx = p.step(
        Now(mono_ms=0, wall_ms=0),
        ClientCall(call_id=7, request=Produce(topic="t", key=b"k", payload=b"")),
    )
    (first,) = fx.sends
    assert isinstance(first.msg, Request) and isinstance(first.msg.body, Enqueue)
    from pxq.effects import Wake

    fx = p.step(Now(mono_ms=10, wall_ms=10), Wake())
    (second,) = fx.sends
    assert isinstance(second.msg, Request) and second.msg.body == first.msg.body
    body = first.msg.body
    ok = EnqueueOk(topic=body.topic, queue=body.queue, first_offset=5, count=1)
    fx = p.step(
        Now(mono_ms=11, wall_ms=11),
        Received(src=first.dst, msg=Response(req_id=first.msg.req_id, body=ok)),
    )
    assert [r.response for r in fx.replies] == [Produced(topic="t", queue=body.queue, offset=5)]
    # The answer to the current attempt, arriving later, is ignored.
    fx = p.step(
        Now(mono_ms=12, wall_ms=12),
        Received(
            src=second.dst, msg=Response(req_id=second.msg.req_id, body=StoreRedirect(master=None))
        ),
    )
    assert fx.replies == () and fx.sends == ()
    assert p.next_deadline() is None


def test_producer_messages_round_trip_through_the_codec() -> None:
    for m in (
        Produce(topic="t", key=b"k", payload=b"p", kind="x"),
        Produced(topic="t", queue=1, offset=2),
        ProduceFailed(code="c", message="m"),
        ProduceUnknown(reason="r"),
    ):
        assert decode(encode(m)) == m


def test_settings_reject_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="groups_per_store"):
        ProducerSettings(stores=STORES, groups_per_store={"sA": 1}, topics=TOPICS)
    with pytest.raises(ValueError, match="batch_items_max"):
        ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, batch_items_max=0)
    with pytest.raises(ValueError, match="backoff_max_ms"):
        ProducerSettings(
            stores=STORES, groups_per_store=GROUPS, topics=TOPICS, backoff_ms=10, backoff_max_ms=5
        )


@settings(max_examples=40, deadline=None)
@example(seed=40, keys=[b"c", b"a", b"a"], drop_req=37, drop_rep=40)  # "c" runs out of retries
@given(
    seed=st.integers(0, 2**32),
    keys=st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), min_size=1, max_size=40),
    drop_req=st.integers(0, 40),
    drop_rep=st.integers(0, 40),
)
def test_lossy_network_never_duplicates_and_keeps_per_key_order(
    seed: int, keys: list[bytes], drop_req: int, drop_rep: int
) -> None:
    rng = random.Random(seed)
    _, h = make(
        seed=seed,
        latency_ms=3,
        linger_ms=2,
        batch_items_max=4,
        request_timeout_ms=30,
        retries_max=50,
        call_timeout_ms=100_000,
    )
    h.drop_request = lambda node, body: rng.randrange(100) < drop_req
    h.drop_reply = lambda node, answer: rng.randrange(100) < drop_rep
    calls = []
    for i, key in enumerate(keys):
        calls.append((key, i, produce(h, key, str(i).encode())))
        h.run_for(rng.randrange(3))
    h.run_until(lambda: all(c in h.replies for _, _, c in calls), limit_ms=1_000_000)
    for key in set(keys):
        q = queue_of(key, 8)
        stored = [int(i.payload) for i in h.store.items("t", q) if i.key == key]
        sent = [i for k, i, _ in calls if k == key]
        # Applied at most once each, in call order; every acknowledged call among them, at
        # its offset. At these loss rates a call may run out of retries (ProduceUnknown):
        # it may or may not be stored.
        assert stored == sorted(set(stored)) and set(stored) <= set(sent)
        for k, i, c in calls:
            if k != key:
                continue
            r = h.replies[c]
            assert isinstance(r, Produced | ProduceUnknown), r
            if isinstance(r, Produced):
                assert h.store.items("t", q)[r.offset].payload == str(i).encode()
    produced = sum(isinstance(h.replies[c], Produced) for _, _, c in calls)
    assert drop_req + drop_rep > 30 or produced == len(calls)  # low loss: no call runs out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    keys=st.lists(st.sampled_from([b"a", b"b", b"", b""]), min_size=1, max_size=60),
    linger_ms=st.sampled_from([0, 0, 3]),
    drop=st.integers(0, 30),
)
def test_every_queue_timer_is_its_earliest_deadline_after_every_step(
    seed: int, keys: list[bytes], linger_ms: int, drop: int
) -> None:
    # A call that joins a waiting line skips the re-arm (the line's head and the batches are
    # unchanged): re-arming every queue from scratch after any step must change nothing.
    rng = random.Random(seed)
    p, h = make(
        seed=seed,
        latency_ms=3,
        linger_ms=linger_ms,
        batch_items_max=3,
        inflight_batches_max=2,
        request_timeout_ms=20,
        call_timeout_ms=400,
    )
    h.drop_request = lambda node, body: rng.randrange(100) < drop
    checked = {"steps": 0}

    def same_timers() -> None:
        before = {key: p._timers.get(key) for key in p._queues}
        for qs in list(p._queues.values()):
            p._rearm(qs)
        assert {key: p._timers.get(key) for key in p._queues} == before
        assert p.next_deadline() == min((t for t in before.values() if t is not None), default=None)
        checked["steps"] += 1

    h.after_step = same_timers
    calls = []
    for key in keys:
        calls.append(produce(h, key))
        if rng.randrange(3) == 0:
            h.run_for(rng.randrange(5))
    h.run_until(lambda: all(c in h.replies for c in calls), limit_ms=1_000_000)
    assert checked["steps"] > len(keys)


def test_a_batch_refused_out_of_order_is_parked_and_resent_behind_its_predecessor() -> None:
    _, h = make(batch_items_max=2, request_timeout_ms=50)
    first = produce(h, b"k", b"0")  # batch A leaves alone
    lost = {"n": 0}

    def drop_first_attempt_of_a(node: str, body: object) -> bool:
        if isinstance(body, Enqueue) and body.items[0].payload == b"0" and lost["n"] == 0:
            lost["n"] = 1
            return True
        return False

    h.drop_request = drop_first_attempt_of_a
    rest = [produce(h, b"k", b"1"), produce(h, b"k", b"2")]  # batch B (full) leaves at once
    h.run_until(lambda: all(c in h.replies for c in [first, *rest]))
    sent = enqueues(h)
    a_seq = sent[0][2].seq
    b_sends = [(t, e) for t, _, e in sent if e.seq != a_seq]
    a_sends = [(t, e) for t, _, e in sent if e.seq == a_seq]
    # B was refused (A not appended yet), parked, and re-sent with every re-send of A, right
    # behind it (A's timeout at 50 goes to the next replica, whose redirect sends both on).
    assert len(b_sends) == len(a_sends) >= 2
    assert all(e.after == a_seq for _, e in b_sends)
    assert [t for t, _ in b_sends] == [t for t, _ in a_sends] and a_sends[1][0] == 50
    assert [e.seq for _, _, e in sent] == [a_seq, b_sends[0][1].seq] * len(a_sends)
    offsets = [r.offset for c in [first, *rest] if isinstance(r := h.replies[c], Produced)]
    assert offsets == [0, 1, 2]


def test_a_given_up_predecessor_lets_its_successor_go_without_after() -> None:
    _, h = make(batch_items_max=2, request_timeout_ms=20, call_timeout_ms=100, retries_max=50)
    doomed = produce(h, b"k", b"0")
    a_seq = enqueues(h)[0][2].seq
    h.drop_request = lambda node, body: isinstance(body, Enqueue) and body.seq == a_seq
    h.run_for(30)
    rest = [produce(h, b"k", b"1"), produce(h, b"k", b"2")]
    h.run_until(lambda: all(c in h.replies for c in [doomed, *rest]))
    assert isinstance(h.replies[doomed], ProduceUnknown)
    assert [r.offset for c in rest if isinstance(r := h.replies[c], Produced)] == [0, 1]
    b_sends = [e for _, _, e in enqueues(h) if e.seq != a_seq]
    assert b_sends[0].after == a_seq and b_sends[-1].after == 0
    assert [i.payload for i in h.store.items("t", queue_of(b"k", 8))] == [b"1", b"2"]


def _drive_undelivered(p: Producer, *, timeout_first: bool) -> object:
    """One Produce whose every attempt is answered ``Undelivered`` (after, with
    ``timeout_first``, a first attempt left unanswered past its timeout); its reply."""
    t = 0
    fx = p.step(Now(mono_ms=t, wall_ms=t), Boot())
    fx = p.step(
        Now(mono_ms=t, wall_ms=t),
        ClientCall(call_id=1, request=Produce(topic="t", key=b"k", payload=b"x")),
    )
    targets: list[str] = []
    for _ in range(100):
        if fx.replies:
            return fx.replies[0].response
        sends = [s for s in fx.sends if isinstance(s.msg, Request)]
        if sends and not (timeout_first and not targets):
            send = sends[0]
            assert isinstance(send.msg, Request)
            targets.append(send.dst)
            fx = p.step(
                Now(mono_ms=t, wall_ms=t),
                Received(
                    src=send.dst,
                    msg=Undelivered(req_id=send.msg.req_id, reason=f"{send.dst}: refused"),
                ),
            )
            continue
        if sends:
            targets.append(sends[0].dst)
        deadline = p.next_deadline()
        assert deadline is not None
        t = deadline
        fx = p.step(Now(mono_ms=t, wall_ms=t), Wake())
    raise AssertionError("no reply")


def test_attempts_that_never_reached_a_replica_fail_definitely_naming_each() -> None:
    settings = ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, linger_ms=0)
    reply = _drive_undelivered(Producer(settings, random.Random(1), name="p"), timeout_first=False)
    assert isinstance(reply, ProduceFailed), reply
    assert reply.code == "unavailable"
    _, store, _ = Producer(settings, random.Random(1), name="p").route("t", b"k")
    for node in STORES[store]:  # every replica was tried, and is named
        assert f"{node} ({node}: refused)" in reply.message
    # An attempt that may have reached a replica (no answer in time) keeps it unknown.
    reply = _drive_undelivered(Producer(settings, random.Random(1), name="p"), timeout_first=True)
    assert isinstance(reply, ProduceUnknown), reply


def test_each_incarnation_numbers_its_requests_from_its_own_base() -> None:
    # A late reply to a previous incarnation's request can then never match this one's
    # (swarm-queue seeds 292 and 435: a false acknowledgement after a producer restart).
    s = ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, linger_ms=0)
    p = Producer(s, random.Random(1), name="p", req_id_base=7 << 32)
    h = Harness(p, FakeStore(), latency_ms=1)
    sent: list[int] = []
    h.step(Boot())
    fx = p.step(h.now, ClientCall(call_id=1, request=Produce(topic="t", key=b"k", payload=b"x")))
    wake = p.next_deadline()
    if not fx.sends and wake is not None:
        fx = p.step(Now(mono_ms=wake, wall_ms=wake), Wake())
    sent = [send.msg.req_id for send in fx.sends if isinstance(send.msg, Request)]
    assert sent == [(7 << 32) + 1]
    for bad in (-1, 1 << 62):
        with pytest.raises(ValueError, match="req_id_base"):
            Producer(s, random.Random(1), name="p", req_id_base=bad)
