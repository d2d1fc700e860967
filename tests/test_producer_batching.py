"""Natural batching in the producer (``machine.py``, "Batching"): with the default
``linger_ms = 0`` a queue's batch leaves in the step where the queue has no batch in flight,
calls arriving meanwhile accumulate and leave, bounded and as many as fit, in the very step
the batch in flight is answered; per-queue order and one batch in flight per queue hold."""

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
    p = make(batch_items_max=3)
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
    flying: dict[int, tuple[str, int, Enqueue]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    received: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    last_seq: int = 0


@settings(max_examples=80, deadline=None)
@given(
    batch_items_max=st.sampled_from([1, 2, 3, 5, 100]),
    batch_bytes_max=st.sampled_from([12, 30, 1 << 20]),
    ops=st.lists(
        st.tuples(st.sampled_from(["call", "call", "answer", "time"]), st.integers(0, 255)),
        min_size=1,
        max_size=150,
    ),
)
def test_batches_leave_without_delay_bounded_maximal_and_in_order(
    batch_items_max: int, batch_bytes_max: int, ops: list[tuple[str, int]]
) -> None:
    p = make(
        batch_items_max=batch_items_max,
        batch_bytes_max=batch_bytes_max,
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
            assert q not in m.flying, "two batches of one queue in flight"
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
            if len(payloads) < len(waiting) and len(payloads) < batch_items_max:
                assert size + KEY_BYTES + len(waiting[len(payloads)]) > batch_bytes_max
            m.sent.setdefault(q, []).extend(payloads)
            m.flying[q] = (dst, req, body)
        # No idle wait: a queue with unsent calls has a batch in flight.
        for q, calls in m.calls.items():
            if len(m.sent.get(q, [])) < len(calls):
                assert q in m.flying, f"queue {q} holds calls with nothing in flight"
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
        elif op == "answer" and m.flying:
            q = sorted(m.flying)[arg % len(m.flying)]
            dst, req, body = m.flying.pop(q)
            first = m.offsets.get(q, 0)
            m.offsets[q] = first + len(body.items)
            absorb(answer(p, t, dst, req, body, first))
        else:
            t += arg % 3
            d = p.next_deadline()
            if d is not None and d <= t:
                absorb(p.step(Now(mono_ms=t, wall_ms=t), Wake()))
    # Drain: answer until nothing is in flight; every call is then answered, in order.
    while m.flying:
        q = sorted(m.flying)[0]
        dst, req, body = m.flying.pop(q)
        first = m.offsets.get(q, 0)
        m.offsets[q] = first + len(body.items)
        absorb(answer(p, t, dst, req, body, first))
    for q, calls in m.calls.items():
        assert m.sent[q] == [pl for _, pl in calls]
        assert m.received[q] == [(c, i) for i, (c, _) in enumerate(calls)]
    assert p.held_calls == 0 and p.in_flight() == {}
