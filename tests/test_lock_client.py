"""The lock client helper (``pxq.lock.client.LockCalls``): against real ``LockNode`` replicas in
the in-process cluster of ``tests/test_lock_node.py`` (first answers, redirects, a master
crash, deadline expiry, cancel), and unit tests of its routing, retry and bookkeeping rules
with hand-fed answers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from pxq.effects import EffectsBuilder, InvariantViolation, Request, Response, Send
from pxq.lock.client import REDIRECTS_AT_ONCE_MAX, REQ_IDS_KEPT_MAX, LockAnswer, LockCalls
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
    group_of_key,
)
from pxq.paxos.config import PaxosConfig
from tests.test_lock_node import NAMES, LockCluster

ME = "client"
LEASE = 1000


@dataclass(slots=True)
class ClientWorld:
    """A ``LockCalls`` wired to a ``LockCluster``: its requests reach a node as ``ClientCall``s
    after ``latency_ms`` (dropped if the node is down or ``cut``), the node's replies come back
    as ``Response``s after the same latency. Time moves in 1 ms ticks."""

    cluster: LockCluster
    calls: LockCalls
    latency_ms: int = 1
    cut: set[str] = field(default_factory=set)
    to_nodes: list[tuple[int, str, Request]] = field(default_factory=list)
    to_client: list[tuple[int, str, Response]] = field(default_factory=list)
    waiting: dict[int, tuple[str, int]] = field(default_factory=dict)
    """cluster call id -> (node, req_id)."""
    done: dict[int, LockAnswer] = field(default_factory=dict)
    sent: list[tuple[str, Request]] = field(default_factory=list)

    @classmethod
    def make(cls, *, groups: int = 1, nodes: tuple[str, ...] = NAMES, **kw: int) -> ClientWorld:
        cluster = LockCluster.make(groups=groups)
        calls = LockCalls(nodes, groups, random.Random(7), **kw)
        return cls(cluster=cluster, calls=calls)

    @property
    def now(self) -> int:
        return self.cluster.time

    def _effects(self, fx: EffectsBuilder) -> None:
        assert not (fx.writes or fx.replies), "a client helper only sends"
        for s in fx.sends:
            assert isinstance(s.msg, Request)
            self.sent.append((s.dst, s.msg))
            self.to_nodes.append((self.now + self.latency_ms, s.dst, s.msg))

    def _finished(self, results: list[tuple[int, LockAnswer]]) -> None:
        for handle, answer in results:
            assert handle not in self.done, f"call {handle} answered twice"
            self.done[handle] = answer

    def call(self, body: Acquire | Renew | Release | ReadLock | ListLocks) -> int:
        fx = EffectsBuilder()
        handle = self.calls.call(self.now, body, fx)
        self._effects(fx)
        return handle

    def tick(self) -> None:
        self.cluster.run(1)
        t = self.now
        for item in [x for x in self.to_nodes if x[0] <= t]:
            self.to_nodes.remove(item)
            _, dst, req = item
            if self.cluster.nodes[dst] is None or dst in self.cut:
                continue  # lost
            call_id = self.cluster.call(dst, req.body)
            self.waiting[call_id] = (dst, req.req_id)
        for call_id, (dst, req_id) in list(self.waiting.items()):
            answer = self.cluster.responses.get(call_id)
            if answer is not None:
                del self.waiting[call_id]
                if dst not in self.cut:
                    resp = Response(req_id=req_id, body=answer)
                    self.to_client.append((t + self.latency_ms, dst, resp))
        for back in [x for x in self.to_client if x[0] <= t]:
            self.to_client.remove(back)
            fx = EffectsBuilder()
            result = self.calls.on_response(t, back[1], back[2], fx)
            self._effects(fx)
            if result is not None:
                self._finished([result])
        due = self.calls.next_deadline()
        if due is not None and due <= t:
            fx = EffectsBuilder()
            self._finished(self.calls.on_wake(t, fx))
            self._effects(fx)

    def wait(self, handle: int, within_ms: int = 10_000) -> LockAnswer:
        for _ in range(within_ms):
            if handle in self.done:
                return self.done[handle]
            self.tick()
        raise AssertionError(f"call {handle} not finished within {within_ms} ms")


def acquire(key: str, holder: str, value: bytes = b"") -> Acquire:
    return Acquire(key=key, holder=holder, lease_ms=LEASE, value=value)


# --------------------------------------------------------------------------------------------
# Against lock nodes


def test_a_call_reaches_the_master_and_returns_its_answer() -> None:
    w = ClientWorld.make(groups=2)
    w.cluster.wait_master(0)
    w.cluster.wait_master(1)
    key = "jobs/a"
    handle = w.call(acquire(key, "alice", b"v"))
    got = w.wait(handle)
    assert isinstance(got, LockOk) and (got.holder, got.version, got.value) == ("alice", 1, b"v")
    assert len(w.sent) == 1  # the preferred replica is the master: no redirect
    group = group_of_key(key, 2)
    assert w.sent[0][0] == w.cluster.masters(group)[0] == w.calls.master_of(group)
    assert w.calls.owns(w.sent[0][1].req_id)
    # Every request kind gets its final answer; handles are unique and increasing.
    bodies: list[Acquire | Renew | Release | ReadLock | ListLocks] = [
        acquire(key, "bob"),
        Renew(key=key, holder="alice", version=1, lease_ms=LEASE, value=b"w"),
        ReadLock(key=key, through_log=True),
        ListLocks(prefix="jobs/"),
        Release(key=key, holder="alice", version=1),
    ]
    handles = [w.call(b) for b in bodies]
    assert handles == sorted(handles) and handles[0] > handle
    answers = [w.wait(h) for h in handles]
    assert isinstance(answers[0], LockDenied) and answers[0].holder == "alice"
    assert isinstance(answers[1], LockOk) and answers[1].value == b"w"
    assert isinstance(answers[2], LockOk) and answers[2].value == b"w"
    assert isinstance(answers[3], LockList) and [e.key for e in answers[3].entries] == [key]
    assert isinstance(answers[4], LockOk) and answers[4].holder == ""
    assert w.calls.open_calls() == 0 and w.calls.next_deadline() is None


def test_a_redirect_moves_the_belief_and_is_followed_at_once() -> None:
    # The helper's replica order makes it guess l1 for group 0, whose master is l0.
    w = ClientWorld.make(groups=1, nodes=("l1", "l2", "l0"))
    master = w.cluster.wait_master(0)
    assert master == "l0"
    w.cluster.run(300)  # heartbeats: followers know the master
    assert w.calls.master_of(0) == "l1"
    got = w.wait(w.call(acquire("k", "alice")))
    assert isinstance(got, LockOk)
    assert [dst for dst, _ in w.sent] == ["l1", "l0"]
    assert w.sent[0][1].req_id != w.sent[1][1].req_id  # a fresh id per attempt
    assert w.calls.master_of(0) == "l0"
    w.wait(w.call(ReadLock(key="k")))
    assert [dst for dst, _ in w.sent][2:] == ["l0"]  # learned: straight to the master


def test_a_crashed_master_times_out_and_the_call_moves_on_to_the_new_one() -> None:
    w = ClientWorld.make(groups=1, timeout_ms=200, deadline_ms=10_000)
    old = w.cluster.wait_master(0)
    long = Acquire(key="k", holder="alice", lease_ms=60_000)
    got = w.wait(w.call(long))
    assert isinstance(got, LockOk)
    w.cluster.crash(old)
    start = w.now
    before = len(w.sent)
    renewed = w.wait(w.call(long), within_ms=9_000)
    # A renewal by re-acquire once a new master is elected (the lease still holds in the
    # log's time: same version).
    assert isinstance(renewed, LockOk) and renewed.version == 1, renewed
    attempts = w.sent[before:]
    assert attempts[0][0] == old and len(attempts) >= 2
    assert attempts[1][0] != old  # the timeout rotated away from the dead master
    new = w.cluster.masters(0)[0]
    assert w.calls.master_of(0) == new != old
    assert w.now - start < 9_000


def test_a_call_without_a_final_answer_ends_with_an_indefinite_timeout_at_its_deadline() -> None:
    w = ClientWorld.make(groups=1, timeout_ms=100, deadline_ms=700)
    w.cluster.wait_master(0)
    w.cut = set(NAMES)  # every request and reply is lost
    start = w.now
    handle = w.call(acquire("k", "alice"))
    got = w.wait(handle, within_ms=2_000)
    assert isinstance(got, LockError)
    assert (got.code, got.definite) == ("timeout", False)
    assert "700" in got.message
    assert w.now - start == 700
    assert [dst for dst, _ in w.sent] == ["l0", "l1", "l2", "l0", "l1", "l2", "l0"]
    assert w.calls.next_deadline() is None and w.calls.open_calls() == 0
    # The call's own deadline overrides the helper's.
    fx = EffectsBuilder()
    h2 = w.calls.call(w.now, ReadLock(key="k"), fx, deadline_ms=150)
    assert w.calls.next_deadline() == w.now + 100
    ((done, answer),) = w.calls.on_wake(w.now + 150, fx)
    assert done == h2 and isinstance(answer, LockError) and "150" in answer.message


def test_a_cancelled_call_ignores_its_answer() -> None:
    w = ClientWorld.make(groups=1)
    w.cluster.wait_master(0)
    handle = w.call(acquire("k", "alice"))
    w.calls.cancel(handle)
    assert w.calls.next_deadline() is None and w.calls.open_calls() == 0
    for _ in range(200):
        w.tick()
    assert handle not in w.done  # the node answered, the helper dropped it
    assert not w.waiting and not w.to_client
    w.calls.cancel(handle)  # twice: harmless
    w.calls.cancel(12345)


# --------------------------------------------------------------------------------------------
# Unit tests with hand-fed answers


class FixedRng:
    """Jitter at a chosen point of its range."""

    def __init__(self, pick: int = 0) -> None:
        self.pick = pick

    def random(self) -> float:
        return 0.0

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        lo, hi = (0, start) if stop is None else (start, stop)
        return min(lo + self.pick, hi - 1)

    def randint(self, a: int, b: int) -> int:
        return a

    def getrandbits(self, k: int, /) -> int:
        return 0


NODES = ("n0", "n1", "n2")


def make(**kw: int) -> LockCalls:
    return LockCalls(NODES, 4, FixedRng(), **kw)


def sends(fx: EffectsBuilder) -> list[Send]:
    out = list(fx.sends)
    fx.sends.clear()
    return out


def test_the_first_guess_is_the_preferred_replica_of_paxos_config() -> None:
    config = PaxosConfig(replicas=NODES, groups=4)
    calls = make()
    assert [calls.master_of(g) for g in range(4)] == [config.preferred(g) for g in range(4)]
    with pytest.raises(ValueError, match="group"):
        calls.master_of(4)


def test_requests_go_to_the_group_of_the_key_or_listed_directory() -> None:
    calls = make()
    fx = EffectsBuilder()
    calls.call(0, acquire("dir/x", "h"), fx)
    calls.call(0, ListLocks(prefix="dir/"), fx)
    calls.call(0, ReadLock(key="dir/y"), fx)
    group = group_of_key("dir/", 4)
    assert {s.dst for s in sends(fx)} == {NODES[group % 3]}


def test_request_ids_are_the_base_plus_a_counter_and_owns_tells_them_apart() -> None:
    base = 1 << 48
    calls = LockCalls(NODES, 4, FixedRng(), req_id_base=base)
    assert not calls.owns(base + 1)  # nothing issued yet
    fx = EffectsBuilder()
    h1 = calls.call(0, ReadLock(key="a"), fx)
    h2 = calls.call(0, ReadLock(key="b"), fx)
    ids = [s.msg.req_id for s in sends(fx)]  # type: ignore[attr-defined]
    assert ids == [base + 1, base + 2] and (h1, h2) == (1, 2)
    assert calls.owns(base + 1) and calls.owns(base + 2)
    assert not calls.owns(base) and not calls.owns(base + 3) and not calls.owns(1)
    # A finished call's ids stay ours (so a composite machine routes late answers here),
    # and their answers are ignored.
    assert calls.on_response(1, "n0", Response(req_id=base + 1, body=ok("a")), fx) == (h1, ok("a"))
    assert calls.owns(base + 1)
    assert calls.on_response(2, "n0", Response(req_id=base + 1, body=ok("a")), fx) is None


def ok(key: str) -> LockOk:
    return LockOk(key=key, holder="", version=0, expiry_ms=0, at_ms=1)


def first_request(calls: LockCalls, body: ReadLock, fx: EffectsBuilder) -> tuple[int, Send]:
    handle = calls.call(0, body, fx)
    (s,) = sends(fx)
    return handle, s


def req_id(s: Send) -> int:
    assert isinstance(s.msg, Request)
    return s.msg.req_id


def test_redirects_are_followed_at_once_until_the_limit_then_back_off() -> None:
    calls = make(backoff_base_ms=40, backoff_max_ms=1000, timeout_ms=500, deadline_ms=5000)
    fx = EffectsBuilder()
    key = "k"
    group = group_of_key(key, 4)
    handle, s = first_request(calls, ReadLock(key=key), fx)
    targets = [s.dst]
    for _ in range(REDIRECTS_AT_ONCE_MAX):
        assert (
            calls.on_response(
                10, s.dst, Response(req_id=req_id(s), body=LockRedirect(master=None)), fx
            )
            is None
        )
        (s,) = sends(fx)
        targets.append(s.dst)
    # Nobody knows a master: each redirect moved on to the next replica.
    start = NODES.index(targets[0])
    assert targets == [NODES[(start + i) % 3] for i in range(REDIRECTS_AT_ONCE_MAX + 1)]
    assert (
        calls.on_response(10, s.dst, Response(req_id=req_id(s), body=LockRedirect(master=None)), fx)
        is None
    )
    assert sends(fx) == []  # backing off: 40 ms, jitter at its low end (20..40)
    assert calls.next_deadline() == 30
    assert calls.on_wake(29, fx) == [] and sends(fx) == []
    assert calls.on_wake(30, fx) == []
    (s,) = sends(fx)
    # A redirect naming the master is followed at once again (the budget was reset).
    resp = Response(req_id=req_id(s), body=LockRedirect(master="n2"))
    assert calls.on_response(31, s.dst, resp, fx) is None
    (s,) = sends(fx)
    assert s.dst == "n2" == calls.master_of(group)
    assert calls.on_response(32, "n2", Response(req_id=req_id(s), body=ok(key)), fx) == (
        handle,
        ok(key),
    )


def test_indefinite_errors_and_overload_back_off_exponentially_with_jitter() -> None:
    calls = LockCalls(NODES, 1, FixedRng(pick=10**9), backoff_base_ms=20, backoff_max_ms=100)
    fx = EffectsBuilder()
    _, s = first_request(calls, ReadLock(key="k"), fx)
    now = 0
    delays = []
    for body in [
        LockError(code="unknown", message="m", definite=False),
        LockError(code="overloaded", message="m", definite=True),
        LockError(code="unknown", message="m", definite=False),
        LockError(code="unknown", message="m", definite=False),
    ]:
        assert calls.on_response(now, s.dst, Response(req_id=req_id(s), body=body), fx) is None
        assert sends(fx) == []
        due = calls.next_deadline()
        assert due is not None
        delays.append(due - now)
        now = due
        calls.on_wake(now, fx)
        (s,) = sends(fx)
        assert s.dst == "n0"  # an error is not a reason to change replicas
    assert delays == [20, 40, 80, 100]  # jitter at its top: the ceiling


def test_a_late_final_answer_to_an_earlier_attempt_ends_the_call() -> None:
    calls = make(timeout_ms=100)
    fx = EffectsBuilder()
    handle, first = first_request(calls, ReadLock(key="k"), fx)
    calls.on_wake(100, fx)
    (second,) = sends(fx)
    assert second.dst != first.dst and req_id(second) > req_id(first)
    # A non-final answer to the superseded attempt changes nothing.
    late_redirect = Response(req_id=req_id(first), body=LockRedirect(master=None))
    assert calls.on_response(101, first.dst, late_redirect, fx) is None and sends(fx) == []
    assert calls.next_deadline() == 200
    # Its final answer is accepted.
    assert calls.on_response(102, first.dst, Response(req_id=req_id(first), body=ok("k")), fx) == (
        handle,
        ok("k"),
    )
    assert (
        calls.on_response(103, second.dst, Response(req_id=req_id(second), body=ok("k")), fx)
        is None
    )


def test_only_the_latest_attempts_are_remembered() -> None:
    calls = make(timeout_ms=10, deadline_ms=10_000)
    fx = EffectsBuilder()
    handle, s = first_request(calls, ReadLock(key="k"), fx)
    ids = [req_id(s)]
    for t in range(10, 10 * (REQ_IDS_KEPT_MAX + 2), 10):
        calls.on_wake(t, fx)
        (s,) = sends(fx)
        ids.append(req_id(s))
    assert len(ids) > REQ_IDS_KEPT_MAX
    assert calls.on_response(500, "n0", Response(req_id=ids[0], body=ok("k")), fx) is None
    kept = ids[-REQ_IDS_KEPT_MAX]
    assert calls.on_response(500, "n0", Response(req_id=kept, body=ok("k")), fx) == (
        handle,
        ok("k"),
    )


def test_definite_errors_are_final_and_strange_answers_are_retried() -> None:
    calls = make()
    fx = EffectsBuilder()
    handle, s = first_request(calls, ReadLock(key="k"), fx)
    assert calls.on_response(1, s.dst, Response(req_id=req_id(s), body="garbage"), fx) is None
    assert sends(fx) == [] and calls.next_deadline() is not None
    now = calls.next_deadline()
    assert now is not None
    calls.on_wake(now, fx)
    (s,) = sends(fx)
    bad = LockError(code="bad_request", message="m", definite=True)
    assert calls.on_response(now, s.dst, Response(req_id=req_id(s), body=bad), fx) == (handle, bad)
    assert calls.open_calls() == 0


def test_a_wake_before_anything_is_due_does_nothing() -> None:
    calls = make(timeout_ms=100)
    fx = EffectsBuilder()
    first_request(calls, ReadLock(key="k"), fx)
    assert calls.on_wake(50, fx) == [] and sends(fx) == []
    assert calls.next_deadline() == 100


def test_invalid_arguments_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="nodes"):
        LockCalls((), 1, FixedRng())
    with pytest.raises(ValueError, match="distinct"):
        LockCalls(("a", "a"), 1, FixedRng())
    with pytest.raises(ValueError, match="groups"):
        LockCalls(NODES, 0, FixedRng())
    with pytest.raises(ValueError, match="timeout_ms"):
        make(timeout_ms=0)
    with pytest.raises(ValueError, match="backoff"):
        make(backoff_base_ms=50, backoff_max_ms=10)
    with pytest.raises(ValueError, match="deadline_ms"):
        make(deadline_ms=0)
    with pytest.raises(ValueError, match="req_id_base"):
        make(req_id_base=-1)
    calls = make(calls_max=1)
    fx = EffectsBuilder()
    with pytest.raises(TypeError, match="not a lock request"):
        calls.call(0, "acquire please", fx)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline_ms"):
        calls.call(0, ReadLock(key="k"), fx, deadline_ms=0)
    calls.call(0, ReadLock(key="k"), fx)
    with pytest.raises(InvariantViolation, match="calls_max"):
        calls.call(0, ReadLock(key="k"), fx)
