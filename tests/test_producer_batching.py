"""Natural batching in the producer (``machine.py``, "Batching"): with the default
``linger_ms = 0`` a queue's batch leaves in the step where the queue has no batch in flight,
calls arriving meanwhile accumulate and leave, bounded and as many as fit, in the very step
the last batch in flight is answered, or as soon as they fill a batch while fewer than
``inflight_batches_max`` are in flight; per-queue order holds and each batch names its
unfinished predecessor (``Enqueue.after``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.effects import ClientCall, Effects, Now, Received, Request, Response, Wake
from pxq.producer.machine import Producer
from pxq.producer.messages import Produce, Produced
from pxq.producer.settings import ProducerSettings
from pxq.store.messages import Enqueue, EnqueueOk
from tests.test_consumer_fakestore import GROUPS, STORES

TOPICS = {"t": 3}
KEY_BYTES = 2
"""Every key of the property test is ``k0``..``k3``."""


def make(**kw: int) -> Producer:
    s = ProducerSettings(stores=STORES, groups_per_store=GROUPS, topics=TOPICS, **kw)
    return Producer(s, random.Random(1), name="p")


def produce(p: Producer, t: int, call_id: int, key: bytes, payload: bytes = b"x") -> Effects:
    return p.step(
        Now(mono_ms=t, wall_ms=t),
        ClientCall(call_id=call_id, request=Produce(topic="t", key=key, payload=payload)),
    )


def enqueues(fx: Effects) -> list[tuple[str, int, Enqueue]]:
    out = []
    for s in fx.sends:
        assert isinstance(s.msg, Request) and isinstance(s.msg.body, Enqueue)
        out.append((s.dst, s.msg.req_id, s.msg.body))
    return out


def answer(p: Producer, t: int, dst: str, req_id: int, body: Enqueue, first: int) -> Effects:
    ok = EnqueueOk(topic=body.topic, queue=body.queue, first_offset=first, count=len(body.items))
    return p.step(
        Now(mono_ms=t, wall_ms=t), Received(src=dst, msg=Response(req_id=req_id, body=ok))
    )


def test_default_linger_is_zero() -> None:
    assert make().settings.linger_ms == 0


def test_a_call_to_an_idle_queue_leaves_in_the_step_it_arrives() -> None:
    p = make()
    (sent,) = enqueues(produce(p, 0, 1, b"k"))
    assert [i.key for i in sent[2].items] == [b"k"]
    # Nothing is due at once: the only deadline is the attempt's timeout.
    assert p.next_deadline() == p.settings.request_timeout_ms


def test_calls_behind_a_batch_in_flight_leave_together_when_it_is_answered() -> None:
    p = make(batch_items_max=3, inflight_batches_max=1)
    ((dst, req, body),) = enqueues(produce(p, 0, 1, b"k", b"0"))
    for i in range(1, 6):
        assert enqueues(produce(p, i, 1 + i, b"k", b"%d" % i)) == []
    fx = answer(p, 7, dst, req, body, 0)
    assert [r.response for r in fx.replies] == [Produced(topic="t", queue=body.queue, offset=0)]
    ((dst, req, second),) = enqueues(fx)
    assert [i.payload for i in second.items] == [b"1", b"2", b"3"]
    ((_, _, third),) = enqueues(answer(p, 9, dst, req, second, 1))
    assert [i.payload for i in third.items] == [b"4", b"5"]
    assert second.seq < third.seq


def test_a_full_batch_leaves_while_others_are_in_flight_and_names_its_predecessor() -> None:
    p = make(batch_items_max=3, inflight_batches_max=2)
    ((dst, req, first),) = enqueues(produce(p, 0, 1, b"k", b"0"))
    assert first.after == 0
    assert enqueues(produce(p, 1, 2, b"k", b"1")) == []  # not full: waits
    assert enqueues(produce(p, 2, 3, b"k", b"2")) == []
    ((_, _, second),) = enqueues(produce(p, 3, 4, b"k", b"3"))  # full: leaves
    assert [i.payload for i in second.items] == [b"1", b"2", b"3"]
    assert second.after == first.seq
    for i in range(4, 7):  # a third full batch waits: two are in flight
        assert enqueues(produce(p, i, 1 + i, b"k", b"%d" % i)) == []
    fx = answer(p, 8, dst, req, first, 0)
    ((_, _, third),) = enqueues(fx)
    assert [i.payload for i in third.items] == [b"4", b"5", b"6"]
    assert third.after == second.seq  # the oldest unfinished batch before it
    assert p.in_flight() == {("t", first.queue): (second.seq, third.seq)}


def test_an_opt_in_linger_still_waits_for_company() -> None:
    p = make(linger_ms=5)
    assert enqueues(produce(p, 0, 1, b"k")) == []
    assert p.next_deadline() == 5
    fx = p.step(Now(mono_ms=5, wall_ms=5), Wake())
    assert len(enqueues(fx)) == 1


@dataclass
class Model:
    """What the test knows: calls accepted per queue in order, the items sent, the attempt in
    flight per queue, and the offsets handed out."""

    calls: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    sent: dict[int, list[bytes]] = field(default_factory=dict)
    flying: dict[int, list[tuple[str, int, Enqueue, int]]] = field(default_factory=dict)
    """queue -> its batches in flight, oldest first, with the first offset each will get."""
    received: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    last_seq: int = 0


@settings(max_examples=120, deadline=None)
@given(
    batch_items_max=st.sampled_from([1, 2, 3, 5, 100]),
    batch_bytes_max=st.sampled_from([12, 30, 1 << 20]),
    inflight=st.sampled_from([1, 2, 4]),
    ops=st.lists(
        st.tuples(st.sampled_from(["call", "call", "answer", "time"]), st.integers(0, 255)),
        min_size=1,
        max_size=150,
    ),
)
def test_batches_leave_without_delay_bounded_maximal_and_in_order(
    batch_items_max: int, batch_bytes_max: int, inflight: int, ops: list[tuple[str, int]]
) -> None:
    p = make(
        batch_items_max=batch_items_max,
        batch_bytes_max=batch_bytes_max,
        inflight_batches_max=inflight,
        request_timeout_ms=1_000_000,
        call_timeout_ms=1_000_000,
    )
    m = Model()
    t = 0
    call_id = 0

    def absorb(fx: Effects) -> None:
        for r in fx.replies:
            assert isinstance(r.response, Produced), r
            m.received.setdefault(r.response.queue, []).append((r.call_id, r.response.offset))
        for dst, req, body in enqueues(fx):
            q = body.queue
            flying = m.flying.setdefault(q, [])
            assert len(flying) < inflight, "more batches of one queue in flight than allowed"
            assert body.after == (flying[-1][2].seq if flying else 0)
            assert body.seq > m.last_seq
            m.last_seq = body.seq
            payloads = [i.payload for i in body.items]
            waiting = [pl for _, pl in m.calls.get(q, [])][len(m.sent.get(q, [])) :]
            # The oldest waiting calls, in order, bounded...
            assert payloads == waiting[: len(payloads)]
            size = sum(len(i.key) + len(i.payload) for i in body.items)
            assert 1 <= len(payloads) <= batch_items_max
            assert len(payloads) == 1 or size <= batch_bytes_max
            # ...and as many as fit.
            cut = len(payloads) < len(waiting) and len(payloads) < batch_items_max
            if cut:
                assert size + KEY_BYTES + len(waiting[len(payloads)]) > batch_bytes_max
            # Beside batches in flight, only a full one leaves.
            if flying:
                assert cut or len(payloads) == batch_items_max or size >= batch_bytes_max
            first = len(m.sent.setdefault(q, []))
            m.sent[q].extend(payloads)
            flying.append((dst, req, body, first))
        # No idle wait: a queue with unsent calls has a batch in flight.
        for q, calls in m.calls.items():
            if len(m.sent.get(q, [])) < len(calls):
                assert m.flying.get(q), f"queue {q} holds calls with nothing in flight"
        d = p.next_deadline()
        assert d is None or d > t

    for op, arg in ops:
        if op == "call":
            call_id += 1
            key = b"k%d" % (arg % 4)
            payload = b"%d" % call_id + b"." * (arg % 8)
            q = p.route("t", key)[0]
            m.calls.setdefault(q, []).append((call_id, payload))
            absorb(produce(p, t, call_id, key, payload))
        elif op == "answer" and any(m.flying.values()):
            busy = sorted(q for q, f in m.flying.items() if f)
            q = busy[arg % len(busy)]
            # Any of the queue's batches may be answered first (the store appended them in
            # the order sent; their answers may come back in any order).
            dst, req, body, first = m.flying[q].pop((arg // 7) % len(m.flying[q]))
            absorb(answer(p, t, dst, req, body, first))
        else:
            t += arg % 3
            d = p.next_deadline()
            if d is not None and d <= t:
                absorb(p.step(Now(mono_ms=t, wall_ms=t), Wake()))
    # Drain: answer until nothing is in flight; every call then has the offset of its place.
    while any(m.flying.values()):
        q = sorted(q for q, f in m.flying.items() if f)[0]
        dst, req, body, first = m.flying[q].pop(0)
        absorb(answer(p, t, dst, req, body, first))
    for q, calls in m.calls.items():
        assert m.sent[q] == [pl for _, pl in calls]
        assert sorted(m.received[q]) == [(c, i) for i, (c, _) in enumerate(calls)]
    assert p.held_calls == 0 and p.in_flight() == {}
