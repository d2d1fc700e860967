"""A fake store cluster and a tiny deterministic network harness for the client machines, plus
tests of the fake itself (so the producer and consumer tests rest on checked semantics).

``FakeStore`` implements the store API of ``pxq.store.messages`` in memory, for every store of
a layout at once: per-queue item lists with dense offsets, per-group cursors (monotone commits,
fenced by tokens, checked against the cursor's seek epoch), ``Seek`` by offset of one queue
(which moves the cursor either way and increments its epoch; ``FakeStore.seek`` applies one
directly, as an operator would), ``Retry`` moves to retry levels and the dead-letter
topic with the level's delay, enqueue dedupe by ``(producer, seq)`` (every seq remembered)
and ordering by ``Enqueue.after`` (``out_of_order`` until that seq is appended), kind filtering, and
mastership (a non-master replica answers ``StoreRedirect``).

``Harness`` steps one client machine: its store requests reach the fake store after
``latency_ms`` and the answer comes back after as long again, either of which a test may drop;
deliveries to ``HANDLER`` go to a handler function (or wait for the test to answer them).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pxq.consumer.messages import HANDLER, Deliver, Handled
from pxq.effects import ClientCall, Effects, Input, Node, Now, Received, Request, Response, Wake
from pxq.routing import Location, StoreRing, group_of
from pxq.store.messages import (
    CommitCursor,
    CommitOk,
    Enqueue,
    EnqueueOk,
    Get,
    GetOk,
    Retry,
    RetryOk,
    Seek,
    SeekOk,
    StoredItem,
    StoreError,
    StoreRedirect,
)
from pxq.topics import base_topic, dead_letter_topic, retry_level, retry_topic

WALL0 = 1_700_000_000_000
STEPS_MAX = 2_000_000
STORES = {"sA": ("a0", "a1", "a2"), "sB": ("b0", "b1", "b2")}
GROUPS = {"sA": 2, "sB": 3}


@dataclass
class FakeStore:
    stores: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(STORES))
    groups_per_store: dict[str, int] = field(default_factory=lambda: dict(GROUPS))
    retry_delays: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dead_letter: dict[str, bool] = field(default_factory=dict)
    subscriptions: dict[str, frozenset[str]] = field(default_factory=dict)
    """group -> kinds it receives (absent: all kinds)."""
    queues: dict[tuple[str, int], list[StoredItem]] = field(default_factory=dict)
    cursors: dict[tuple[str, str, int], int] = field(default_factory=dict)
    tokens: dict[tuple[str, str, int], int] = field(default_factory=dict)
    epochs: dict[tuple[str, str, int], int] = field(default_factory=dict)
    """Seek epoch per cursor (absent: 0)."""
    dedupe: dict[tuple[str, int], EnqueueOk] = field(default_factory=dict)
    masters: dict[Location, str | None] = field(default_factory=dict)
    retry_checks_cursor: bool = True
    """Refuse a Retry below the cursor with ``stale_offset``, as pxq's store does."""
    applied: list[object] = field(default_factory=list)
    """Every request that took effect, in order."""

    def __post_init__(self) -> None:
        self.ring = StoreRing(list(self.stores))

    def locate(self, topic: str, queue: int) -> Location:
        store = self.ring.store_of(topic, queue)
        return store, group_of(queue, self.groups_per_store[store])

    def master_of(self, loc: Location) -> str | None:
        if loc in self.masters:
            return self.masters[loc]
        replicas = self.stores[loc[0]]
        return replicas[loc[1] % len(replicas)]

    def items(self, topic: str, queue: int) -> list[StoredItem]:
        return self.queues.setdefault((topic, queue), [])

    def append(
        self, topic: str, queue: int, key: bytes, payload: bytes, wall_ms: int = WALL0, **kw: Any
    ) -> StoredItem:
        q = self.items(topic, queue)
        item = StoredItem(offset=len(q), enqueued_ms=wall_ms, key=key, payload=payload, **kw)
        q.append(item)
        return item

    def cursor(self, topic: str, group: str, queue: int) -> int:
        return self.cursors.get((topic, group, queue), 0)

    def epoch(self, topic: str, group: str, queue: int) -> int:
        return self.epochs.get((topic, group, queue), 0)

    def seek(self, topic: str, group: str, queue: int, offset: int) -> int:
        """An operator's Seek applied at once: the cursor moves to ``offset`` (clamped to the
        queue) and its epoch goes up. Returns the new cursor."""
        k = (topic, group, queue)
        self.cursors[k] = min(max(offset, 0), len(self.items(topic, queue)))
        self.epochs[k] = self.epochs.get(k, 0) + 1
        return self.cursors[k]

    def _refused(self, topic: str, group: str, queue: int, token: int, epoch: int) -> object:
        """The error for a commit or retry with a stale token or a wrong epoch, or None (and
        the token is recorded as the highest seen)."""
        k = (topic, group, queue)
        if 0 < token < self.tokens.get(k, 0):
            return StoreError(code="stale_token", message="stale")
        if epoch < self.epoch(topic, group, queue):
            return StoreError(code="stale_epoch", message="a seek since")
        if epoch > self.epoch(topic, group, queue):
            return StoreError(code="bad_request", message="epoch from the future")
        self.tokens[k] = max(token, self.tokens.get(k, 0))
        return None

    def handle(self, node: str, body: object, wall_ms: int) -> object:
        topic = getattr(body, "topic", None)
        queue = getattr(body, "queue", None)
        if not isinstance(topic, str) or not isinstance(queue, int):
            return StoreError(code="bad_request", message="no topic/queue")
        loc = self.locate(topic, queue)
        if node not in self.stores[loc[0]]:
            return StoreError(code="bad_request", message=f"{node} does not hold {topic}/{queue}")
        master = self.master_of(loc)
        if master != node:
            return StoreRedirect(master=master)
        match body:
            case Enqueue():
                return self._enqueue(body, wall_ms)
            case Get():
                return self._get(body, wall_ms)
            case CommitCursor():
                refused = self._refused(body.topic, body.group, body.queue, body.token, body.epoch)
                if refused is not None:
                    return refused
                k = (body.topic, body.group, body.queue)
                if body.cursor > len(self.items(body.topic, body.queue)):
                    return StoreError(code="bad_cursor", message="beyond the end")
                self.cursors[k] = max(self.cursors.get(k, 0), body.cursor)
                self.applied.append(body)
                return CommitOk(
                    topic=body.topic, group=body.group, queue=body.queue, cursor=self.cursors[k]
                )
            case Retry():
                return self._retry(body, wall_ms)
            case Seek(offset=int(offset)):
                moved = self.seek(body.topic, body.group, queue, offset)
                self.applied.append(body)
                return SeekOk(topic=body.topic, group=body.group, positions=((queue, moved),))
            case _:
                return StoreError(code="bad_request", message=type(body).__name__)

    def _enqueue(self, e: Enqueue, wall_ms: int) -> object:
        seen = self.dedupe.get((e.producer, e.seq))
        if seen is not None:
            return EnqueueOk(
                topic=seen.topic,
                queue=seen.queue,
                first_offset=seen.first_offset,
                count=seen.count,
                duplicate=True,
            )
        if e.after and (e.producer, e.after) not in self.dedupe:
            return StoreError(code="out_of_order", message=f"seq {e.after} not appended yet")
        q = self.items(e.topic, e.queue)
        first = len(q)
        for it in e.items:
            self.append(e.topic, e.queue, it.key, it.payload, wall_ms, kind=it.kind)
        ok = EnqueueOk(topic=e.topic, queue=e.queue, first_offset=first, count=len(e.items))
        self.dedupe[(e.producer, e.seq)] = ok
        self.applied.append(e)
        return ok

    def _get(self, g: Get, wall_ms: int) -> GetOk:
        q = self.items(g.topic, g.queue)
        subscribed = self.subscriptions.get(g.group)
        out: list[StoredItem] = []
        size = 0
        pos = g.cursor
        while pos < len(q) and len(out) < g.items_max:
            it = q[pos]
            if subscribed is None or it.kind in subscribed:
                if out and size + len(it.payload) > g.bytes_max:
                    break
                out.append(it)
                size += len(it.payload)
            pos += 1
        if g.items_max > 0:
            # Skip filtered-out items after the last returned one too.
            while pos < len(q) and subscribed is not None and q[pos].kind not in subscribed:
                pos += 1
        return GetOk(
            topic=g.topic,
            group=g.group,
            queue=g.queue,
            items=tuple(out),
            next_cursor=pos,
            committed=self.cursor(g.topic, g.group, g.queue),
            first_offset=0,
            end_offset=len(q),
            epoch=self.epoch(g.topic, g.group, g.queue),
            now_ms=wall_ms,
        )

    def _retry(self, r: Retry, wall_ms: int) -> object:
        q = self.items(r.topic, r.queue)
        if not 0 <= r.offset < len(q):
            return StoreError(code="bad_request", message="no such offset")
        refused = self._refused(r.topic, r.group, r.queue, r.token, r.epoch)
        if refused is not None:
            return refused
        k = (r.topic, r.group, r.queue)
        if self.retry_checks_cursor and r.offset < self.cursors.get(k, 0):
            return StoreError(code="stale_offset", message="below the cursor")
        item = q[r.offset]
        level = retry_level(r.topic)
        delays = self.retry_delays.get(r.group, ())
        base = base_topic(r.topic)
        if level + 1 <= len(delays):
            dest = retry_topic(base, r.group, level + 1)
            not_before = wall_ms + delays[level]
        elif self.dead_letter.get(r.group, True):
            dest, not_before = dead_letter_topic(base, r.group), 0
        else:
            return StoreError(code="bad_request", message="nowhere to move the item")
        moved = self.append(
            dest,
            r.queue,
            item.key,
            item.payload,
            wall_ms,
            kind=item.kind,
            attempt=level + 1,
            not_before_ms=not_before,
        )
        self.cursors[k] = max(self.cursors.get(k, 0), r.offset + 1)
        self.applied.append(r)
        return RetryOk(
            topic=r.topic,
            group=r.group,
            queue=r.queue,
            cursor=self.cursors[k],
            moved_to=dest,
            moved_offset=moved.offset,
        )


Drop = Callable[[str, object], bool]


class Harness:
    """Steps one client machine against a ``FakeStore`` on a simulated clock."""

    def __init__(
        self,
        machine: Node,
        store: FakeStore,
        *,
        latency_ms: int = 1,
        handler: Callable[[Deliver], tuple[int, ...]] | None = None,
        handle_ms: int = 0,
        start_ms: int = 0,
    ) -> None:
        self.machine = machine
        self.store = store
        self.latency_ms = latency_ms
        self.handler = handler
        self.handle_ms = handle_ms
        self.now_ms = start_ms
        self.wall_skew_ms = 0
        """How far the machine's wall clock is off."""
        self.store_skew_ms = 0
        """How far the store's wall clock (its masters') is off, independently."""
        self._events: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.drop_request: Drop = lambda node, body: False
        self.drop_reply: Drop = lambda node, body: False
        self.down: set[str] = set()
        self.replies: dict[int, object] = {}
        self.reply_times: dict[int, int] = {}
        self.requests: list[tuple[int, str, object]] = []
        """(time, node, body) of every store request the machine sent."""
        self.deliveries: list[tuple[int, Deliver]] = []
        self.open_deliveries: dict[int, Deliver] = {}
        self.after_step: Callable[[], None] = lambda: None
        self._next_call = 1
        self.steps = 0

    @property
    def now(self) -> Now:
        return Now(mono_ms=self.now_ms, wall_ms=WALL0 + self.now_ms + self.wall_skew_ms)

    def _push(self, at: int, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def step(self, inp: Input) -> Effects:
        return self.absorb(self.machine.step(self.now, inp))

    def absorb(self, fx: Effects) -> Effects:
        """Carry out the effects of a step (or of a direct call such as ``set_ownership``)."""
        if fx.writes:
            raise AssertionError("client machines write nothing")
        for send in fx.sends:
            if send.dst == HANDLER:
                assert isinstance(send.msg, Deliver)
                self.deliveries.append((self.now_ms, send.msg))
                self.open_deliveries[send.msg.delivery_id] = send.msg
                if self.handler is not None:
                    self._push(self.now_ms + self.handle_ms, "handle", send.msg)
                continue
            assert isinstance(send.msg, Request), send
            self.requests.append((self.now_ms, send.dst, send.msg.body))
            self._push(self.now_ms + self.latency_ms, "request", (send.dst, send.msg))
        for reply in fx.replies:
            assert reply.call_id not in self.replies, "answered twice"
            self.replies[reply.call_id] = reply.response
            self.reply_times[reply.call_id] = self.now_ms
        self.after_step()
        return fx

    def call(self, request: object) -> int:
        call_id = self._next_call
        self._next_call += 1
        self.step(ClientCall(call_id=call_id, request=request))
        return call_id

    def handled(self, delivery_id: int, failed: tuple[int, ...] = ()) -> None:
        self.open_deliveries.pop(delivery_id, None)
        self.step(Received(src=HANDLER, msg=Handled(delivery_id=delivery_id, failed=failed)))

    def _process(self, kind: str, payload: Any) -> None:
        if kind == "request":
            node, req = payload
            if node in self.down or self.drop_request(node, req.body):
                return
            answer = self.store.handle(node, req.body, WALL0 + self.now_ms + self.store_skew_ms)
            if self.drop_reply(node, answer):
                return
            self._push(
                self.now_ms + self.latency_ms,
                "response",
                (node, Response(req_id=req.req_id, body=answer)),
            )
        elif kind == "response":
            node, resp = payload
            if node in self.down:
                return
            self.step(Received(src=node, msg=resp))
        elif kind == "handle":
            d: Deliver = payload
            if d.delivery_id not in self.open_deliveries:
                return
            assert self.handler is not None
            self.handled(d.delivery_id, self.handler(d))
        else:
            raise AssertionError(kind)

    def run_until(self, done: Callable[[], bool], limit_ms: int = 60_000) -> None:
        end = self.now_ms + limit_ms
        while not done():
            if not self._advance(end):
                raise AssertionError(f"not done after {limit_ms} ms (now {self.now_ms})")

    def run_for(self, ms: int) -> None:
        end = self.now_ms + ms
        while self._advance(end):
            pass
        self.now_ms = end

    def _advance(self, end: int) -> bool:
        self.steps += 1
        if self.steps > STEPS_MAX:
            raise AssertionError("the machine keeps waking without progress")
        deadline = self.machine.next_deadline()
        event_at = self._events[0][0] if self._events else None
        if event_at is not None and (deadline is None or event_at <= deadline):
            if event_at > end:
                return False
            at, _, kind, payload = heapq.heappop(self._events)
            self.now_ms = max(self.now_ms, at)
            self._process(kind, payload)
            return True
        if deadline is None or deadline > end:
            return False
        self.now_ms = max(self.now_ms, deadline)
        self.step(Wake())
        return True


# -- tests of the fake -------------------------------------------------------------------------


def test_fake_store_dedupes_enqueue_by_producer_and_seq() -> None:
    store = FakeStore()
    loc = store.locate("t", 0)
    master = store.master_of(loc)
    assert master is not None
    from pxq.store.messages import Item

    e = Enqueue(topic="t", queue=0, producer="p", seq=1, items=(Item(key=b"k", payload=b"x"),))
    first = store.handle(master, e, WALL0)
    again = store.handle(master, e, WALL0)
    assert isinstance(first, EnqueueOk) and isinstance(again, EnqueueOk)
    assert again.duplicate and again.first_offset == first.first_offset
    assert len(store.items("t", 0)) == 1


def test_fake_store_redirects_from_a_non_master_replica() -> None:
    store = FakeStore()
    loc = store.locate("t", 0)
    master = store.master_of(loc)
    other = next(n for n in store.stores[loc[0]] if n != master)
    answer = store.handle(
        other, Get(topic="t", group="g", queue=0, cursor=0, items_max=1, bytes_max=9), WALL0
    )
    assert answer == StoreRedirect(master=master)


def test_fake_store_retry_moves_through_levels_to_the_dead_letter_topic() -> None:
    store = FakeStore(retry_delays={"g": (100,)})
    store.append("t", 0, b"k", b"x")
    master = store.master_of(store.locate("t", 0))
    assert master is not None
    ok = store.handle(master, Retry(topic="t", group="g", queue=0, offset=0), WALL0)
    assert isinstance(ok, RetryOk) and ok.moved_to == retry_topic("t", "g", 1)
    assert store.items(ok.moved_to, 0)[0].not_before_ms == WALL0 + 100
    assert store.cursor("t", "g", 0) == 1
    ok2 = store.handle(master, Retry(topic=ok.moved_to, group="g", queue=0, offset=0), WALL0)
    assert isinstance(ok2, RetryOk) and ok2.moved_to == dead_letter_topic("t", "g")
    assert store.items(ok2.moved_to, 0)[0].attempt == 2


def test_fake_store_seek_raises_the_epoch_and_refuses_older_commits_and_retries() -> None:
    store = FakeStore()
    for i in range(5):
        store.append("t", 0, b"k", str(i).encode())
    master = store.master_of(store.locate("t", 0))
    assert master is not None
    get = Get(topic="t", group="g", queue=0, cursor=0, items_max=0, bytes_max=9)
    assert isinstance(ok := store.handle(master, get, WALL0), GetOk) and ok.epoch == 0
    commit = CommitCursor(topic="t", group="g", queue=0, cursor=4)
    assert isinstance(store.handle(master, commit, WALL0), CommitOk)
    seek = Seek(topic="t", group="g", queue=0, offset=1)
    assert store.handle(master, seek, WALL0) == SeekOk(topic="t", group="g", positions=((0, 1),))
    assert isinstance(ok := store.handle(master, get, WALL0), GetOk)
    assert (ok.committed, ok.epoch) == (1, 1)
    stale = store.handle(master, commit, WALL0)
    assert isinstance(stale, StoreError) and stale.code == "stale_epoch"
    retry = Retry(topic="t", group="g", queue=0, offset=2)
    stale = store.handle(master, retry, WALL0)
    assert isinstance(stale, StoreError) and stale.code == "stale_epoch"
    assert store.cursor("t", "g", 0) == 1 and not store.items(retry_topic("t", "g", 1), 0)
    ahead = store.handle(master, CommitCursor(topic="t", group="g", queue=0, cursor=4, epoch=2), 0)
    assert isinstance(ahead, StoreError) and ahead.code == "bad_request"
    now = store.handle(master, CommitCursor(topic="t", group="g", queue=0, cursor=4, epoch=1), 0)
    assert isinstance(now, CommitOk) and now.cursor == 4
