"""Natural batching on the Paxos master (``group.py``, module docstring): a value that finds
the pipeline idle is proposed in the step it arrives; values arriving while instances are in
flight accumulate and leave together, bounded by ``batch_items_max`` and ``batch_bytes_max``,
in the step an instance is chosen, when the batch is full, or after ``batch_delay_ms`` at
most (at once with 0), and never beyond ``pipeline_max`` instances."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.effects import Boot, ClientCall, Effects, Received, Wake
from pxq.paxos.config import PaxosConfig
from pxq.paxos.messages import Accept, Accepted, ProposeOk
from pxq.paxos.records import decode_entry
from tests.paxos_harness import Cluster


class Recording(Cluster):
    """The harness, also keeping the first Accept of every instance (with its pool sequence
    number) however soon it is delivered."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.first_accepts: dict[int, tuple[int, Accept]] = {}

    def _step(self, name: str, inp: Boot | Received | Wake | ClientCall) -> Effects:
        before = self.seq
        fx = super()._step(name, inp)
        for f in self.pool:
            if f.seq > before and isinstance(f.msg, Accept):
                self.first_accepts.setdefault(f.msg.instance, (f.seq, f.msg))
        return fx


def accepts_from(c: Cluster, master: str, since_seq: int = 0) -> dict[int, tuple[int, Accept]]:
    """instance -> (seq, first Accept the master sent for it) among pooled messages."""
    out: dict[int, tuple[int, Accept]] = {}
    for f in sorted(c.pool, key=lambda f: f.seq):
        if f.src == master and f.seq > since_seq and isinstance(f.msg, Accept):
            out.setdefault(f.msg.instance, (f.seq, f.msg))
    return out


def values_of(a: Accept) -> list[bytes]:
    return list(decode_entry(a.value).values)


def instance_of(c: Cluster, call_id: int) -> int:
    r = c.calls[call_id].response
    assert isinstance(r, ProposeOk), r
    return r.instance


def settled_master(c: Cluster) -> str:
    m = c.wait_master(0)
    c.run(5)
    return m


def test_a_value_finding_the_pipeline_idle_is_proposed_in_the_step_it_arrives() -> None:
    c = Cluster.make(3, latency_ms=1)
    m = settled_master(c)
    before = c.seq
    call = c.propose(m, 0, b"now")
    sent = accepts_from(c, m, before)
    assert [values_of(a) for _, a in sent.values()] == [[b"now"]]
    assert {f.dst for f in c.pool if f.seq > before and isinstance(f.msg, Accept)} == {"r1", "r2"}
    # One round trip (Accept out, Accepted back at 1 ms each) and it is answered.
    start = c.time
    assert c.run_until(lambda: c.calls[call].response is not None, 10, step_ms=1)
    assert isinstance(c.calls[call].response, ProposeOk)
    assert c.time - start <= 2


def test_default_delay_is_an_upper_bound_of_one_ms() -> None:
    assert PaxosConfig(replicas=("a",)).batch_delay_ms == 1


def test_without_delay_values_leave_at_once_until_the_pipeline_is_full() -> None:
    c = Cluster.make(3, pipeline_max=2, batch_items_max=3, batch_delay_ms=0)
    m = settled_master(c)
    c.check_lease = False
    c.pool.clear()
    first, second = c.propose(m, 0, b"a"), c.propose(m, 0, b"b")
    assert sorted(accepts_from(c, m)) == [1, 2]  # each alone, at once: there was room
    late = [c.propose(m, 0, b"c%d" % i) for i in range(5)]
    assert sorted(accepts_from(c, m)) == [1, 2]  # the pipeline is full: they wait
    seq = c.seq
    # Instance 1 gets its quorum: the step that frees the slot proposes the next batch.
    c.deliver_where(lambda f: isinstance(f.msg, Accept) and f.msg.instance == 1 and f.dst == "r1")
    c.deliver_where(lambda f: isinstance(f.msg, Accepted) and f.msg.instance == 1)
    new = accepts_from(c, m, seq)
    assert [(i, values_of(a)) for i, (_, a) in new.items()] == [(3, [b"c0", b"c1", b"c2"])]
    c.run(50)
    instances = [instance_of(c, x) for x in [first, second, *late]]
    assert instances == [1, 2, 3, 3, 3, 4, 4]
    c.check_agreement()
    c.check_acknowledged()


def test_a_batch_formed_behind_a_full_pipeline_is_cut_by_bytes() -> None:
    c = Cluster.make(3, pipeline_max=1, batch_bytes_max=100, value_bytes_max=40, batch_delay_ms=0)
    m = settled_master(c)
    c.check_lease = False
    c.pool.clear()
    c.propose(m, 0, b"first")
    calls = [c.propose(m, 0, b"%d" % i * 40) for i in range(5)]
    c.run(50)
    instances = [instance_of(c, x) for x in calls]
    assert instances == [2, 2, 3, 3, 4]


def test_with_a_delay_a_value_finding_the_pipeline_idle_still_leaves_at_once() -> None:
    c = Cluster.make(3, batch_delay_ms=1000)
    m = settled_master(c)
    before = c.seq
    c.propose(m, 0, b"idle")
    assert [values_of(a) for _, a in accepts_from(c, m, before).values()] == [[b"idle"]]


def test_with_a_delay_values_behind_an_instance_in_flight_wait_at_most_the_delay() -> None:
    c = Recording.make(3, batch_delay_ms=20, pipeline_max=4)
    assert isinstance(c, Recording)
    m = settled_master(c)
    c.check_lease = False
    c.partition([m], [n for n in c.config.replicas if n != m])  # instance 1 is never chosen
    c.propose(m, 0, b"a")
    start = c.time
    c.propose(m, 0, b"b")
    c.propose(m, 0, b"c")
    c.run(19)
    assert sorted(c.first_accepts) == [1]
    c.run(1)
    assert c.time == start + 20
    assert [(i, values_of(a)) for i, (_, a) in sorted(c.first_accepts.items())] == [
        (1, [b"a"]),
        (2, [b"b", b"c"]),
    ]


def test_with_a_delay_values_behind_an_instance_leave_when_it_is_chosen() -> None:
    c = Cluster.make(3, batch_delay_ms=1000, latency_ms=1)
    m = settled_master(c)
    calls = [c.propose(m, 0, b"v%d" % i) for i in range(4)]
    c.run(5)  # instance 1 is chosen after 2 ms: the others leave then, not after 1000 ms
    assert [instance_of(c, x) for x in calls] == [1, 2, 2, 2]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch_delay_ms=st.sampled_from([0, 1, 3]),
    pipeline_max=st.sampled_from([1, 2, 4, 8]),
    batch_items_max=st.sampled_from([1, 2, 3, 100]),
    batch_bytes_max=st.sampled_from([64, 200, 1 << 20]),
    ops=st.lists(
        st.tuples(st.sampled_from(["propose", "deliver", "run"]), st.integers(0, 63)),
        min_size=1,
        max_size=120,
    ),
)
def test_values_wait_only_behind_instances_in_flight_and_batches_stay_bounded_and_maximal(
    seed: int,
    batch_delay_ms: int,
    pipeline_max: int,
    batch_items_max: int,
    batch_bytes_max: int,
    ops: list[tuple[str, int]],
) -> None:
    c = Recording.make(
        3,
        seed=seed % 1000,
        batch_delay_ms=batch_delay_ms,
        pipeline_max=pipeline_max,
        batch_items_max=batch_items_max,
        batch_bytes_max=batch_bytes_max,
        value_bytes_max=min(batch_bytes_max, 64),
    )
    m = settled_master(c)
    rng = random.Random(seed)
    # Every value in the order proposed, with the pool sequence number current at its arrival
    # (an Accept with a larger sequence number was cut after the value arrived) and the time.
    proposed: list[tuple[bytes, int]] = []
    arrived_at: list[int] = []
    assert isinstance(c, Recording)
    all_accepts = c.first_accepts

    def check() -> None:
        batches = [all_accepts[i] for i in sorted(all_accepts)]
        flat = [v for _, a in batches for v in values_of(a)]
        # FIFO: the proposed instances hold a prefix of the proposals, in order.
        assert flat == [v for v, _ in proposed[: len(flat)]]
        for _, a in batches:
            vs = values_of(a)
            assert 1 <= len(vs) <= batch_items_max
            assert len(vs) == 1 or sum(map(len, vs)) <= batch_bytes_max
        # Maximal: a batch cut after the next value arrived had no room left for it.
        for (seq, a), (_, b) in itertools.pairwise(batches):
            nxt = values_of(b)[0]
            arrived = next(s for v, s in proposed if v == nxt)
            if seq > arrived:
                vs = values_of(a)
                assert len(vs) == batch_items_max or sum(map(len, vs)) + len(nxt) > batch_bytes_max
        # A value not yet proposed means a full pipeline, or (with a delay) instances in
        # flight and a wait shorter than the delay.
        if len(flat) < len(proposed):
            last = max(all_accepts, default=0)
            applied = c.applied_index(m)
            if last < applied + pipeline_max:
                assert batch_delay_ms > 0 and last > applied, "waits with an idle pipeline"
                assert c.time - arrived_at[len(flat)] < batch_delay_ms, "waits beyond the delay"

    for op, arg in ops:
        if op == "propose":
            value = b"%d:" % len(proposed) + b"x" * (arg % 40)
            proposed.append((value, c.seq))
            arrived_at.append(c.time)
            c.propose(m, 0, value)
        elif op == "deliver" and c.pool:
            c.deliver(rng.randrange(len(c.pool)))
        else:
            c.run(arg % 4)
        check()
    c.run(200)
    check()
    assert c.masters(0) == [m]
    answered = [x.response for x in c.calls.values()]
    assert all(isinstance(r, ProposeOk) for r in answered)
    c.check_agreement()
    c.check_acknowledged()
