"""The ownership half of a consumer process (pxq/consumer/ownership.py) against a fake lock
service: membership, assignment by hashing and by the scheduler, grants trusted only until
``lease - margin`` after they were sent, handover with release, leaving and joining."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from pxq.consumer.machine import Consumer
from pxq.consumer.ownership import (
    ConsumerProcess,
    Join,
    Joined,
    Leave,
    Left,
    Ownership,
    OwnershipSettings,
)
from pxq.consumer.settings import ConsumerSettings
from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Now,
    Received,
    Request,
    Response,
    Send,
    Wake,
)
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockEntry,
    LockList,
    LockOk,
    ReadLock,
    Release,
    Renew,
)
from pxq.lockkeys import (
    LOCK_REQ_ID_BASE,
    REQ_ID_BASE_MAX,
    assignment_key,
    encode_assignment,
    encode_member,
)
from pxq.rendezvous import hash_assign

LOCKS = ("l0", "l1", "l2")
QUEUES = tuple(("t", q) for q in range(8))


def settings(name: str, **kw: object) -> OwnershipSettings:
    base: dict[str, object] = {
        "consumer": name,
        "group": "g",
        "queues": QUEUES,
        "lock_nodes": LOCKS,
        "lock_groups": 1,
        "lease_ms": 3000,
        "margin_ms": 600,
        "renew_ms": 1000,
        "poll_ms": 500,
    }
    base.update(kw)
    return OwnershipSettings(**base)  # type: ignore[arg-type]


@dataclass
class Entry:
    holder: str
    version: int
    expiry: int
    value: bytes = b""


@dataclass
class FakeLocks:
    """A lock service that answers at once, at the caller's time (one clock for all)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    silent: bool = False
    """Drop every request (a lock service that cannot be reached)."""

    def live(self, key: str, now: int) -> Entry | None:
        e = self.entries.get(key)
        return e if e is not None and e.expiry > now else None

    def answer(self, body: object, now: int) -> object:
        match body:
            case Acquire(key=key, holder=holder, lease_ms=lease, value=value):
                e = self.live(key, now)
                if e is not None and e.holder != holder:
                    return LockDenied(
                        key=key, holder=e.holder, version=e.version, expiry_ms=e.expiry, at_ms=now
                    )
                if e is None:
                    self.versions[key] = self.versions.get(key, 0) + 1
                    e = Entry(holder, self.versions[key], 0)
                    self.entries[key] = e
                e.expiry, e.value = now + lease, value
                return LockOk(
                    key=key, holder=holder, version=e.version, expiry_ms=e.expiry, at_ms=now
                )
            case Renew(key=key, holder=holder, version=version, lease_ms=lease):
                e = self.live(key, now)
                if e is None or e.holder != holder or e.version != version:
                    return LockDenied(key=key, holder="", version=0, expiry_ms=0, at_ms=now)
                e.expiry = now + lease
                return LockOk(
                    key=key, holder=holder, version=e.version, expiry_ms=e.expiry, at_ms=now
                )
            case Release(key=key, holder=holder):
                e = self.live(key, now)
                if e is not None and e.holder == holder:
                    del self.entries[key]
                return LockOk(
                    key=key, holder="", version=self.versions.get(key, 0), expiry_ms=0, at_ms=now
                )
            case ReadLock(key=key):
                e = self.live(key, now)
                if e is None:
                    return LockOk(key=key, holder="", version=0, expiry_ms=0, at_ms=now)
                return LockOk(
                    key=key,
                    holder=e.holder,
                    version=e.version,
                    expiry_ms=e.expiry,
                    at_ms=now,
                    value=e.value,
                )
            case ListLocks(prefix=prefix):
                entries = tuple(
                    LockEntry(
                        key=k, holder=e.holder, version=e.version, expiry_ms=e.expiry, value=e.value
                    )
                    for k, e in sorted(self.entries.items())
                    if k.startswith(prefix) and "/" not in k[len(prefix) :] and e.expiry > now
                )
                return LockList(prefix=prefix, entries=entries, at_ms=now, more=False)
        raise AssertionError(f"unexpected {body!r}")


class Driver:
    """Runs several ``Ownership`` machines against one ``FakeLocks`` on one clock."""

    def __init__(self, locks: FakeLocks | None = None) -> None:
        self.locks = locks or FakeLocks()
        self.now = 0
        self.machines: dict[str, Ownership] = {}
        self.events: list[tuple[int, str, str, dict[str, object]]] = []
        self.incarnations = 0

    def add(self, name: str, **kw: object) -> Ownership:
        self.incarnations += 1
        m = Ownership(settings(name, **kw), random.Random(f"{name}/{self.incarnations}"))
        self.machines[name] = m
        fx = EffectsBuilder()
        m.act(self._now(), fx)
        self._run(name, fx)
        return m

    def _now(self) -> Now:
        return Now(mono_ms=self.now, wall_ms=1_700_000_000_000 + self.now)

    def _run(self, name: str, fx: EffectsBuilder) -> None:
        m = self.machines[name]
        for ev in fx.trace:
            self.events.append((self.now, name, ev.kind, dict(ev.fields)))
        sends = list(fx.sends)
        fx.sends.clear()
        fx.trace.clear()
        for send in sends:
            assert isinstance(send.msg, Request)
            if self.locks.silent:
                continue
            body = self.locks.answer(send.msg.body, self.now)
            out = EffectsBuilder()
            m.expire(self._now(), out)
            m.on_response(self._now(), send.dst, Response(req_id=send.msg.req_id, body=body), out)
            self._run(name, out)

    def advance(self, to_ms: int, step_ms: int = 50) -> None:
        while self.now < to_ms:
            self.now = min(to_ms, self.now + step_ms)
            for name, m in list(self.machines.items()):
                fx = EffectsBuilder()
                m.expire(self._now(), fx)
                m.on_wake(self._now(), fx)
                self._run(name, fx)

    def owned(self, name: str) -> set[tuple[str, int]]:
        return {(o.topic, o.queue) for o in self.machines[name].owned()}

    def kinds(self, name: str, kind: str) -> list[dict[str, object]]:
        return [f for _, n, k, f in self.events if n == name and k == kind]


def test_a_lone_consumer_takes_every_queue_with_a_token() -> None:
    d = Driver()
    a = d.add("a")
    d.advance(100)
    assert d.owned("a") == set(QUEUES)
    assert all(o.token >= 1 for o in a.owned())
    assert a.share() == (8, 8)
    assert len(d.kinds("a", "own.start")) == 8


def test_two_consumers_split_the_queues_by_the_hash_and_hand_over_with_a_release() -> None:
    d = Driver()
    d.add("a")
    d.advance(600)
    assert d.owned("a") == set(QUEUES)
    d.add("b")
    d.advance(3000)
    want = hash_assign(QUEUES, {"a": 1, "b": 1}, salt="g")
    assert d.owned("a") == {q for q, who in want.items() if who == "a"}
    assert d.owned("b") == {q for q, who in want.items() if who == "b"}
    moved = {q for q, who in want.items() if who == "b"}
    stops = d.kinds("a", "own.stop")
    assert {(s["topic"], s["queue"]) for s in stops} == moved
    assert {s["why"] for s in stops} == {"handover"}
    # Released, not left to expire: b got them well within one lease of joining.
    starts_b = [t for t, n, k, _ in d.events if n == "b" and k == "own.start"]
    assert max(starts_b) - 600 < 3000 - 600


def test_a_grant_is_trusted_only_until_lease_minus_margin_after_it_was_sent() -> None:
    d = Driver()
    d.add("a")
    d.advance(100)
    assert d.owned("a") == set(QUEUES)
    d.locks.silent = True  # renewals go unanswered
    d.advance(2350)
    assert d.owned("a") == set(QUEUES)
    d.advance(2450)  # first grants were sent at 0: trusted until 2400
    assert d.owned("a") == set()
    assert {s["why"] for s in d.kinds("a", "own.stop")} == {"expired"}


def test_a_grant_answered_after_its_trusted_time_is_not_used() -> None:
    """The answer to an Acquire sent before a long pause arrives after it: not an owner."""
    m = Ownership(settings("a"), random.Random(1))
    fx = EffectsBuilder()
    m.act(Now(mono_ms=0, wall_ms=0), fx)
    acquires = [
        (s.dst, s.msg.req_id, s.msg.body)
        for s in fx.sends
        if isinstance(s.msg, Request) and isinstance(s.msg.body, Acquire)
    ]
    dst, req_id, body = next(a for a in acquires if a[2].key.startswith("q/"))
    late = Now(mono_ms=2500, wall_ms=2500)
    out = EffectsBuilder()
    m.expire(late, out)
    ok = LockOk(key=body.key, holder=m.holder, version=3, expiry_ms=3000, at_ms=0)
    m.on_response(late, dst, Response(req_id=req_id, body=ok), out)
    assert m.owned() == ()
    assert not [e for e in out.trace if e.kind == "own.start"]


def test_a_denied_renewal_drops_the_queue_at_once() -> None:
    d = Driver()
    d.add("a")
    d.advance(100)
    key = "q/g/t/0"
    # Someone else got the lock (an operator's takeover): the next renewal is denied.
    d.locks.entries[key] = Entry("intruder#1", 99, 10**9)
    d.advance(1100)
    assert ("t", 0) not in d.owned("a")
    assert any(s["why"] == "denied" and s["queue"] == 0 for s in d.kinds("a", "own.stop"))


def test_the_scheduler_assignment_is_followed_for_live_members_only() -> None:
    d = Driver()
    assignment = {q: "b" for q in QUEUES}
    assignment[("t", 0)] = "a"
    d.locks.entries[assignment_key("g")] = Entry("sched#1", 1, 10**9, encode_assignment(assignment))
    d.add("a", use_scheduler=True)
    d.advance(800)
    # b is not a live member: its queues fall back to the hash over the live ones (just a).
    assert d.owned("a") == set(QUEUES)
    d.add("b", use_scheduler=True)
    d.advance(3000)
    assert d.owned("a") == {("t", 0)}
    assert d.owned("b") == set(QUEUES) - {("t", 0)}


def test_weights_in_membership_values_shift_the_hash() -> None:
    d = Driver()
    d.locks.entries["m/g/heavy"] = Entry("heavy#1", 1, 10**9, encode_member(1000, {}))
    d.add("a")
    d.advance(1000)
    want = hash_assign(QUEUES, {"a": 1, "heavy": 1000}, salt="g")
    assert d.owned("a") == {q for q, who in want.items() if who == "a"}


def _process() -> ConsumerProcess:
    consumer = ConsumerSettings(
        group="g",
        stores={"s": ("n0", "n1", "n2")},
        groups_per_store={"s": 1},
        topics={"t": 8},
    )
    return ConsumerProcess(consumer, settings("a"), random.Random(5), active=False)


def _answer_locks(p: ConsumerProcess, fx: Effects, locks: FakeLocks, now: Now) -> list[Effects]:
    out = []
    for send in fx.sends:
        if isinstance(send.msg, Request) and send.dst in LOCKS:
            body = locks.answer(send.msg.body, now.mono_ms)
            out.append(
                p.step(now, Received(src=send.dst, msg=Response(req_id=send.msg.req_id, body=body)))
            )
    return out


def test_a_process_joins_passes_its_queues_to_the_consumer_and_leaves_cleanly() -> None:
    locks = FakeLocks()
    p = _process()
    now = Now(mono_ms=0, wall_ms=0)
    assert p.step(now, Boot()).sends == ()  # inactive: takes nothing before Join
    fx = p.step(now, ClientCall(call_id=1, request=Join()))
    assert isinstance(fx.replies[0].response, Joined)
    pending = _answer_locks(p, fx, locks, now)
    while pending:
        pending = [e for f in pending for e in _answer_locks(p, f, locks, now)]
    assert {(o.topic, o.queue) for o in p.consumer.owned()} == set(QUEUES)
    assert all(o.token >= 1 for o in p.consumer.owned())
    fx = p.step(now, ClientCall(call_id=2, request=Leave()))
    assert p.consumer.owned() == ()  # stopped before any release goes out
    replies = list(fx.replies)
    pending = _answer_locks(p, fx, locks, now)
    while pending:
        replies += [r for f in pending for r in f.replies]
        pending = [e for f in pending for e in _answer_locks(p, f, locks, now)]
    left = [r.response for r in replies if isinstance(r.response, Left)]
    assert left and left[0].released == 8
    assert not [k for k in locks.entries if locks.live(k, 0)]  # everything released


def test_ownership_calls_are_refused_in_a_lock_owned_process() -> None:
    from pxq.consumer.messages import OwnershipRejected, SetOwnership

    p = _process()
    fx = p.step(Now(mono_ms=0, wall_ms=0), ClientCall(call_id=1, request=SetOwnership(queues=())))
    assert isinstance(fx.replies[0].response, OwnershipRejected)


def test_wakes_are_not_a_busy_loop_while_a_poll_is_unanswered() -> None:
    m = Ownership(settings("a"), random.Random(1))
    fx = EffectsBuilder()
    m.act(Now(mono_ms=0, wall_ms=0), fx)
    deadline = m.next_deadline()
    assert deadline is not None and deadline > 0
    _ = [s for s in fx.sends if isinstance(s, Send)]
    m.on_wake(Now(mono_ms=600, wall_ms=600), EffectsBuilder())
    later = m.next_deadline()
    assert later is not None and later > 600


def test_wake_input_is_accepted() -> None:
    p = _process()
    p.step(Now(mono_ms=0, wall_ms=0), Wake())


def test_a_restarted_consumer_waits_for_its_predecessors_leases_without_spinning() -> None:
    d = Driver()
    d.add("a")
    d.advance(100)
    old = d.machines["a"].holder
    del d.machines["a"]  # a crash: its leases stay until they expire
    d.add("a")  # the restart: a new incarnation
    assert d.machines["a"].holder != old
    d.advance(1000)
    assert d.owned("a") == set()  # still held by the dead incarnation
    d.advance(3500)
    assert d.owned("a") == set(QUEUES)  # taken once the old leases expired
    tokens = {o.token for o in d.machines["a"].owned()}
    assert tokens == {2}


def test_ownership_settings_from_the_configuration() -> None:
    from pxq.config import default_config
    from pxq.consumer.ownership import ownership_settings

    config = default_config()
    s = ownership_settings(config, "default", "c1")
    assert s.queues == tuple(("events", q) for q in range(8))
    assert s.lock_nodes == ("l0", "l1", "l2") and s.lock_groups == 1
    assert (s.lease_ms, s.margin_ms, s.renew_ms, s.poll_ms, s.weight) == (3000, 600, 1000, 500, 1)
    assert ownership_settings(config, "default", "c1", weight=3).weight == 3
    import pytest

    with pytest.raises(ValueError, match="consumer group named 'nope'"):
        ownership_settings(config, "nope", "c1")


def test_each_incarnation_numbers_its_requests_and_lock_calls_from_its_own_base() -> None:
    # Both halves of a consumer process take the incarnation's range, so a late reply to a
    # previous incarnation's read, commit or lock call (the simulator delivers replies by
    # name) never matches one of this incarnation's.
    consumer = ConsumerSettings(
        group="g", stores={"s": ("n0", "n1", "n2")}, groups_per_store={"s": 1}, topics={"t": 8}
    )
    base = 5 << 32
    p = ConsumerProcess(consumer, settings("a"), random.Random(5), req_id_base=base)
    fx = p.step(Now(mono_ms=0, wall_ms=0), Boot())
    lock_ids = [s.msg.req_id for s in fx.sends if isinstance(s.msg, Request) and s.dst in LOCKS]
    assert lock_ids and min(lock_ids) == LOCK_REQ_ID_BASE + base + 1
    c = Consumer(consumer, random.Random(5), owned=(("t", 0),), req_id_base=base)
    fx = c.step(Now(mono_ms=0, wall_ms=0), Boot())
    ids = [s.msg.req_id for s in fx.sends if isinstance(s.msg, Request)]
    assert ids and min(ids) == base + 1
    for bad in (-1, REQ_ID_BASE_MAX):
        with pytest.raises(ValueError, match="req_id_base"):
            ConsumerProcess(consumer, settings("a"), random.Random(5), req_id_base=bad)
        with pytest.raises(ValueError, match="req_id_base"):
            Consumer(consumer, random.Random(5), req_id_base=bad)
