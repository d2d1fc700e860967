"""``Producer``: the client machine that turns application ``Produce`` calls into batched,
idempotent ``Enqueue`` requests to store masters.

It owns routing (key -> queue -> store -> Paxos group -> believed master), per-queue batching,
retries that reuse the batch's dedupe id, and the classification of every call's outcome into
``Produced`` / ``ProduceFailed`` (definite) / ``ProduceUnknown``. It writes nothing to disk.

How it talks (see ``pxq.effects``): the application calls it with
``ClientCall(call_id, Produce(...))`` and gets ``Reply(call_id, Produced | ProduceFailed |
ProduceUnknown)``; it sends ``Send(dst=replica, msg=Request(req_id, Enqueue(...)))`` and
receives ``Received(src=replica, msg=Response(req_id, answer))``.

Semantics:

* **Routing.** An item's queue is ``queue_of(key)`` (the same key, the same queue, so its
  items keep their order); items without a key (an empty key) are spread over the topic's
  queues round robin and have no order among themselves.
* **Batching.** Calls are grouped per (topic, queue), in arrival order, into batches of at
  most ``batch_items_max`` items and ``batch_bytes_max`` key+payload bytes. Batching is natural
  (Nagle-style): a call to a queue with no batch in flight leaves at once, in the step it
  arrives; calls arriving while the queue has batches in flight accumulate, and leave as the
  next batch in the step the last of those is finished, or as soon as they fill a batch
  (while fewer than ``inflight_batches_max`` batches of the queue are in flight). So an idle
  queue costs no added latency, a busy one sends full batches, and a saturated one keeps
  several full batches in flight (pipelined). ``linger_ms > 0`` opts into a minimum wait: a
  batch then leaves only once it is full or its oldest call has waited ``linger_ms``.
* **Order across pipelined batches.** Acknowledged calls of one queue get increasing offsets
  in the order they were accepted by the producer, across retries and failovers. Each attempt
  of a batch names, as ``Enqueue.after``, the batch of the same queue just before it that is
  not finished yet (acknowledged or given up); the store appends a batch only after that one
  (else ``out_of_order``: nothing appended). A batch refused ``out_of_order`` is parked and
  re-sent right behind its predecessor's next attempt, or at once (without ``after``) when the
  predecessor is finished. ``inflight_batches_max = 1`` sends one batch per queue at a time.
* **Idempotent retries.** Each batch gets ``(producer_id, seq)`` once, ``seq`` increasing per
  producer; every re-send of the batch (after a timeout, ``StoreError(definite=False)``, a
  redirect or ``overloaded``) carries the same pair and the same items, so the store appends
  it at most once (within its dedupe window) and answers a duplicate with the original
  receipt. Item ``i`` of a batch gets offset ``first_offset + i``. A late ``EnqueueOk`` to a
  superseded attempt of the current batch is accepted (it is the same batch).
* **Outcome.** Re-sends are bounded by ``retries_max`` and by the call's overall deadline
  (``call_timeout_ms`` from the arrival of the batch's oldest call). Redirects do not count
  toward ``retries_max``: a master failover (a second or so of "not the master") is routine,
  so a batch follows redirects until its deadline. Beyond ``retries_max`` redirects every
  re-send waits a backoff, so replicas that point at each other while a failover settles
  cannot make it spin. When either runs out, the
  batch's calls get ``ProduceUnknown`` if any attempt may have been applied (a timeout, an
  indefinite error, or an attempt still in flight), and ``ProduceFailed`` if every attempt was
  definitely refused (redirects, definite errors) or never delivered (``Undelivered``: the
  driver could not reach the replica, which it says only when nothing was sent; the next
  replica is tried after a backoff, counted toward ``retries_max``). So a cluster that refuses
  every connection gives ``ProduceFailed("unavailable")`` naming the replicas and why. A non-retryable definite error ends the
  batch at once with the same rule.
* **Dedupe ids across restarts.** ``producer_id`` must never be reused by another incarnation
  (the store would take a fresh batch for a retry of an old one and drop it). By default it
  is ``"{name}.{64 random bits}"`` drawn from the injected ``rng``, so the driver must give
  each incarnation its own random stream (or pass a unique ``producer_id``).

What this leaves to the store: deduplicating by the exact ``(producer, seq)`` pair, or by the
highest ``seq`` per (producer, topic, queue). Not by the highest ``seq`` per producer alone:
batches of different queues are in flight concurrently and may arrive out of ``seq`` order.

Known ordering caveat: a batch given up with ``ProduceUnknown`` may still be applied later
(an old master's proposal that gets chosen), after the queue's next batch. Order is
guaranteed between acknowledged calls only.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeAlias, assert_never

from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Reply,
    Request,
    Response,
    Rng,
    StorageLow,
    Undelivered,
    Wake,
)
from pxq.headers import headers_problem, headers_size
from pxq.producer.messages import Produce, Produced, ProduceFailed, ProduceUnknown
from pxq.producer.settings import ProducerSettings
from pxq.routing import Location, Router, backoff_ms, queue_of
from pxq.store.messages import Enqueue, EnqueueOk, Item, StoreError, StoreRedirect
from pxq.timers import Timers

QueueKey: TypeAlias = tuple[str, int]
"""(topic, queue)."""

OUT_OF_ORDER = "out_of_order"
"""The store's answer to a batch whose predecessor (``Enqueue.after``) is not appended yet."""

RETRYABLE_DEFINITE = frozenset({"overloaded"})
"""Definite store errors worth re-sending after a backoff; any other definite error ends the
batch (the request itself is wrong: unknown topic, bad queue, too large...)."""


REQ_ID_BASE_MAX: Final = 1 << 62
"""Request ids stay below 2**63 (msgpack's signed range) with room for a run's requests."""


@dataclass(slots=True, eq=False)
class _Call:
    call_id: int
    item: Item
    size: int
    arrived_ms: int
    deadline_ms: int


@dataclass(slots=True, eq=False)
class _Batch:
    seq: int
    calls: tuple[_Call, ...]
    body: Enqueue
    deadline_ms: int
    target: NodeId = ""
    sends: int = 0
    req_id: int | None = None
    """The attempt in flight, if any."""
    req_ids: list[int] = field(default_factory=list)
    """Every attempt's id, so a late answer to a superseded attempt is still recognised."""
    attempt_deadline_ms: int = 0
    resend_at_ms: int | None = None
    failures: int = 0
    redirects: int = 0
    """Attempts answered by a redirect: not counted toward ``retries_max``."""
    possibly_applied: bool = False
    parked: bool = False
    """Refused ``out_of_order``: re-sent right behind the predecessor's next attempt, or when
    the predecessor is finished."""
    last_code: str = "unavailable"
    last_message: str = ""
    undelivered: dict[NodeId, str] = field(default_factory=dict)
    """Per replica, why the batch's last attempt to it never reached it (``Undelivered``)."""


@dataclass(slots=True, eq=False)
class _QueueState:
    topic: str
    queue: int
    loc: Location
    waiting: deque[_Call] = field(default_factory=deque)
    waiting_bytes: int = 0
    batches: list[_Batch] = field(default_factory=list)
    """The queue's batches in flight (sent, not finished), in seq order."""


class Producer:
    """The producer client machine (a ``Node``): see the module docstring."""

    def __init__(
        self,
        settings: ProducerSettings,
        rng: Rng,
        *,
        name: str = "producer",
        producer_id: str | None = None,
        req_id_base: int = 0,
    ) -> None:
        """``req_id_base``: this incarnation's requests are numbered from ``req_id_base + 1``.
        A driver whose transport may hand a previous incarnation's late replies to this one
        (the simulator's network delivers by endpoint name; a TCP connection dies with its
        process) gives each incarnation a range of its own, so that a late ``EnqueueOk`` can
        never acknowledge another request that happens to have the same id."""
        if not 0 <= req_id_base < REQ_ID_BASE_MAX:
            raise ValueError(f"req_id_base: must be in 0..{REQ_ID_BASE_MAX - 1}, got {req_id_base}")
        self.settings = settings
        self._rng = rng
        self.producer_id = (
            producer_id if producer_id is not None else f"{name}.{rng.getrandbits(64):016x}"
        )
        self._router = Router(settings.stores, settings.groups_per_store)
        self._queues: dict[QueueKey, _QueueState] = {}
        self._locs: dict[QueueKey, Location] = {}
        """Where each queue lives (``Router.locate`` hashes): a queue's state goes away when it
        is idle, at 1 call in flight after every call. Bounded by the configured queues."""
        self._timers: Timers[QueueKey] = Timers()
        self._reqs: dict[int, tuple[QueueKey, int]] = {}
        self._next_req_id = req_id_base + 1
        self._next_seq = 1
        self._held_calls = 0
        self._held_bytes = 0
        self._keyless_next: dict[str, int] = {}
        """Topic -> the queue its next keyless item goes to (modulo the queue count)."""

    # -- introspection (tests, metrics) --------------------------------------------------------

    @property
    def held_calls(self) -> int:
        """Produce calls accepted and not yet answered."""
        return self._held_calls

    def in_flight(self) -> dict[QueueKey, tuple[int, ...]]:
        """(topic, queue) -> seqs of the batches in flight there, oldest first."""
        return {k: tuple(b.seq for b in qs.batches) for k, qs in self._queues.items() if qs.batches}

    def route(self, topic: str, key: bytes) -> tuple[int, str, int]:
        """(queue, store, Paxos group) that ``key`` of ``topic`` goes to."""
        queue = queue_of(key, self.settings.topics[topic])
        store, group = self._router.locate(topic, queue)
        return queue, store, group

    # -- Node protocol -------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        return self._timers.earliest()

    def step(self, now: Now, inp: Input) -> Effects:
        fx = EffectsBuilder()
        match inp:
            case Boot():
                pass  # a fresh incarnation holds nothing: open calls died with the old one
            case ClientCall(call_id=call_id, request=request):
                self._on_call(now, call_id, request, fx)
            case Received(src=src, msg=Response() as resp):
                self._on_response(now, src, resp, fx)
            case Received(src=src, msg=Undelivered() as undelivered):
                self._on_undelivered(now, src, undelivered, fx)
            case Received(src=src, msg=msg):
                fx.event("producer.unexpected", src=src, type=type(msg).__name__)
            case Wake():
                for key in self._timers.pop_due(now.mono_ms):
                    qs = self._queues.get(key)
                    if qs is not None:
                        self._service(now, qs, fx)
            case StorageLow():
                pass  # a producer writes nothing
            case _:
                assert_never(inp)
        return fx.build()

    # -- calls ---------------------------------------------------------------------------------

    def _on_call(self, now: Now, call_id: int, request: object, fx: EffectsBuilder) -> None:
        s = self.settings
        if not isinstance(request, Produce):
            fx.reply(call_id, ProduceFailed(code="bad_request", message="expected Produce"))
            return
        queues = s.topics.get(request.topic)
        if queues is None:
            fx.reply(
                call_id,
                ProduceFailed(code="unknown_topic", message=f"no topic {request.topic!r}"),
            )
            return
        size = len(request.key) + len(request.payload)
        if request.headers:
            problem = headers_problem(request.headers)
            if problem is not None:
                fx.reply(call_id, ProduceFailed(code="bad_request", message=problem))
                return
            size += headers_size(request.headers)
        if size > s.batch_bytes_max:
            fx.reply(
                call_id,
                ProduceFailed(
                    code="too_large", message=f"{size} bytes > batch_bytes_max {s.batch_bytes_max}"
                ),
            )
            return
        if self._held_calls >= s.pending_max or self._held_bytes + size > s.pending_bytes_max:
            fx.reply(call_id, ProduceFailed(code="overloaded", message="producer queue full"))
            return
        if request.key:
            queue = queue_of(request.key, queues)
        else:
            # No key, no order to keep: spread keyless items over the queues, round robin.
            queue = self._keyless_next.get(request.topic, 0) % queues
            self._keyless_next[request.topic] = queue + 1
        key = (request.topic, queue)
        qs = self._queues.get(key)
        if qs is None:
            loc = self._locs.get(key)
            if loc is None:
                loc = self._locs[key] = self._router.locate(request.topic, queue)
            qs = _QueueState(topic=request.topic, queue=queue, loc=loc)
            self._queues[key] = qs
        item = Item(
            key=request.key, payload=request.payload, kind=request.kind, headers=request.headers
        )
        waiting = qs.waiting
        behind = len(waiting)
        waiting.append(
            _Call(
                call_id=call_id,
                item=item,
                size=size,
                arrived_ms=now.mono_ms,
                deadline_ms=now.mono_ms + s.call_timeout_ms,
            )
        )
        qs.waiting_bytes += size
        self._held_calls += 1
        self._held_bytes += size
        self._pump(now, qs, fx)
        if behind and len(waiting) > behind:
            # The common case under load: the call joined a waiting line and no batch left, so
            # the line's head and the batches (all the queue's deadlines) are as they were.
            return
        self._rearm(qs)

    # -- batches -------------------------------------------------------------------------------

    def _ready(self, now: Now, qs: _QueueState) -> bool:
        """Whether the queue's waiting calls (at least one) may leave now: a full batch while
        the pipeline has room; otherwise only with no batch in flight, at once with
        ``linger_ms = 0``, else once the oldest call waited ``linger_ms``."""
        s = self.settings
        if len(qs.batches) >= s.inflight_batches_max:
            return False
        if len(qs.waiting) >= s.batch_items_max or qs.waiting_bytes >= s.batch_bytes_max:
            return True
        return not qs.batches and (
            s.linger_ms == 0 or qs.waiting[0].arrived_ms + s.linger_ms <= now.mono_ms
        )

    def _pump(self, now: Now, qs: _QueueState, fx: EffectsBuilder) -> None:
        """Send the queue's next batches while they are ready."""
        while qs.waiting and self._ready(now, qs):
            self._send_batch(now, qs, fx)

    def _send_batch(self, now: Now, qs: _QueueState, fx: EffectsBuilder) -> None:
        s = self.settings
        calls: list[_Call] = []
        size = 0
        while qs.waiting and len(calls) < s.batch_items_max:
            nxt = qs.waiting[0]
            if calls and size + nxt.size > s.batch_bytes_max:
                break
            calls.append(qs.waiting.popleft())
            size += nxt.size
        qs.waiting_bytes -= size
        seq = self._next_seq
        self._next_seq += 1
        body = Enqueue(
            topic=qs.topic,
            queue=qs.queue,
            producer=self.producer_id,
            seq=seq,
            items=tuple(c.item for c in calls),
        )
        # Oldest call first: the batch's fate is decided by its oldest call's deadline.
        b = _Batch(seq=seq, calls=tuple(calls), body=body, deadline_ms=calls[0].deadline_ms)
        qs.batches.append(b)
        self._send_attempt(now, qs, b, fx)

    def _send_attempt(self, now: Now, qs: _QueueState, b: _Batch, fx: EffectsBuilder) -> None:
        """Send ``b`` (with ``after`` = its unfinished predecessor), then any parked batch
        right behind it."""
        req_id = self._next_req_id
        self._next_req_id += 1
        b.sends += 1
        b.req_id = req_id
        b.req_ids.append(req_id)
        b.resend_at_ms = None
        b.parked = False
        b.target = self._router.master(qs.loc)
        b.attempt_deadline_ms = min(now.mono_ms + self.settings.request_timeout_ms, b.deadline_ms)
        self._reqs[req_id] = ((qs.topic, qs.queue), b.seq)
        i = qs.batches.index(b)
        after = qs.batches[i - 1].seq if i else 0
        if b.body.after != after:
            b.body = dataclasses.replace(b.body, after=after)
        fx.send(b.target, Request(req_id=req_id, body=b.body))
        if i + 1 < len(qs.batches) and qs.batches[i + 1].parked:
            self._send_attempt(now, qs, qs.batches[i + 1], fx)

    def _again(
        self, now: Now, qs: _QueueState, b: _Batch, fx: EffectsBuilder, *, wait: bool
    ) -> None:
        """The current attempt failed; re-send (at once or after a backoff) if allowed.
        Attempts answered by a redirect are bounded by the deadline alone."""
        b.req_id = None
        b.failures += 1
        if b.sends - b.redirects > self.settings.retries_max:
            self._give_up(now, qs, b, "retries exhausted", fx)
            return
        if not wait:
            self._send_attempt(now, qs, b, fx)
            return
        s = self.settings
        b.resend_at_ms = now.mono_ms + backoff_ms(
            self._rng, b.failures, s.backoff_ms, s.backoff_max_ms
        )

    def _out_of_order(self, now: Now, qs: _QueueState, b: _Batch, fx: EffectsBuilder) -> None:
        """The store has not appended ``b``'s predecessor yet: park ``b`` behind it, or re-send
        it at once if the predecessor is finished meanwhile (the attempt then has no
        ``after``). Not counted as a failure: the predecessor's own retries bound it."""
        b.req_id = None
        fx.event("producer.out_of_order", topic=qs.topic, queue=qs.queue, seq=b.seq)
        if qs.batches.index(b) == 0:
            self._send_attempt(now, qs, b, fx)
        else:
            b.parked = True

    def _give_up(self, now: Now, qs: _QueueState, b: _Batch, why: str, fx: EffectsBuilder) -> None:
        if b.possibly_applied or b.req_id is not None:
            reply: object = ProduceUnknown(reason=f"{why} ({b.last_code})")
            fx.event("producer.unknown", topic=qs.topic, queue=qs.queue, seq=b.seq, why=why)
        else:
            reply = ProduceFailed(code=b.last_code, message=f"{why}: {b.last_message}".rstrip(": "))
        answers = fx.replies
        size = 0
        for call in b.calls:
            answers.append(Reply(call_id=call.call_id, response=reply))
            size += call.size
        self._finish(now, qs, b, size, fx)

    def _finish(self, now: Now, qs: _QueueState, b: _Batch, size: int, fx: EffectsBuilder) -> None:
        """Forget ``b``, whose calls (``size`` bytes) were just answered, and send the parked
        batch behind it."""
        self._held_calls -= len(b.calls)
        self._held_bytes -= size
        for req_id in b.req_ids:
            self._reqs.pop(req_id, None)
        i = qs.batches.index(b)
        del qs.batches[i]
        if i < len(qs.batches) and qs.batches[i].parked:
            self._send_attempt(now, qs, qs.batches[i], fx)

    # -- timers --------------------------------------------------------------------------------

    def _service(self, now: Now, qs: _QueueState, fx: EffectsBuilder) -> None:
        t = now.mono_ms
        for b in list(qs.batches):  # oldest first, so re-sends keep their order
            if t >= b.deadline_ms:
                self._give_up(now, qs, b, "deadline", fx)
            elif b.req_id is not None and t >= b.attempt_deadline_ms:
                # No answer: the attempt may have been applied. Try the next replica at once
                # (the wait already happened); a live master redirects us back cheaply.
                b.possibly_applied = True
                b.last_code, b.last_message = "timeout", "no answer"
                self._router.rotate(qs.loc, b.target)
                self._again(now, qs, b, fx, wait=False)
            elif b.req_id is None and b.resend_at_ms is not None and t >= b.resend_at_ms:
                self._send_attempt(now, qs, b, fx)
        while qs.waiting and qs.waiting[0].deadline_ms <= t:
            # Never sent: a definite failure.
            call = qs.waiting.popleft()
            qs.waiting_bytes -= call.size
            self._held_calls -= 1
            self._held_bytes -= call.size
            fx.reply(
                call.call_id,
                ProduceFailed(code="timeout", message="deadline passed before it was sent"),
            )
        self._pump(now, qs, fx)
        self._rearm(qs)

    def _rearm(self, qs: _QueueState) -> None:
        key = (qs.topic, qs.queue)
        if not qs.batches and not qs.waiting:
            del self._queues[key]
            self._timers.set(key, None)
            return
        # The earliest of the batches' deadlines (the call's, then the attempt's or the
        # re-send's) and the waiting line head's (its deadline, and its linger without batches).
        at: int | None = None
        for b in qs.batches:
            t = b.deadline_ms
            if b.req_id is not None:
                t = min(t, b.attempt_deadline_ms)
            elif b.resend_at_ms is not None:
                t = min(t, b.resend_at_ms)
            if at is None or t < at:
                at = t
        if qs.waiting:
            head = qs.waiting[0]
            t = head.deadline_ms
            if not qs.batches:
                t = min(t, head.arrived_ms + self.settings.linger_ms)
            if at is None or t < at:
                at = t
        self._timers.set(key, at)

    # -- answers -------------------------------------------------------------------------------

    def _on_response(self, now: Now, src: NodeId, resp: Response, fx: EffectsBuilder) -> None:
        entry = self._reqs.get(resp.req_id)
        if entry is None:
            return  # a late answer to a batch already finished
        key, seq = entry
        qs = self._queues.get(key)
        if qs is None:
            return
        b = next((x for x in qs.batches if x.seq == seq), None)
        if b is None:
            return
        current = resp.req_id == b.req_id
        body = resp.body
        match body:
            case EnqueueOk():
                self._router.answered(qs.loc, src)
                self._on_enqueued(now, qs, b, body, fx)
            case _ if not current:
                pass  # a superseded attempt's refusal says nothing about the current one
            case StoreRedirect(master=master):
                b.last_code, b.last_message = "unavailable", f"redirected by {src}"
                b.redirects += 1
                known = self._router.redirected(qs.loc, src, master)
                wait = not known or b.redirects > self.settings.retries_max
                self._again(now, qs, b, fx, wait=wait)
            case StoreError(definite=False):
                b.possibly_applied = True
                b.last_code, b.last_message = body.code, body.message
                self._again(now, qs, b, fx, wait=True)
            case StoreError(code=code) if code == OUT_OF_ORDER:
                b.last_code, b.last_message = body.code, body.message
                self._out_of_order(now, qs, b, fx)
            case StoreError(code=code) if code in RETRYABLE_DEFINITE:
                b.last_code, b.last_message = body.code, body.message
                self._again(now, qs, b, fx, wait=True)
            case StoreError():
                b.last_code, b.last_message = body.code, body.message
                b.req_id = None
                self._give_up(now, qs, b, "refused", fx)
            case _:
                fx.event("producer.unexpected", src=src, type=type(body).__name__)
                return  # the attempt's timeout decides
        self._pump(now, qs, fx)
        self._rearm(qs)

    def _on_undelivered(
        self, now: Now, src: NodeId, undelivered: Undelivered, fx: EffectsBuilder
    ) -> None:
        """The current attempt never reached ``src``: definitely not applied there. Try the
        next replica after a backoff, counted toward ``retries_max`` like any failure."""
        entry = self._reqs.get(undelivered.req_id)
        if entry is None:
            return
        key, seq = entry
        qs = self._queues.get(key)
        b = None if qs is None else next((x for x in qs.batches if x.seq == seq), None)
        if qs is None or b is None or b.req_id != undelivered.req_id:
            return  # a superseded attempt: says nothing about the current one
        b.undelivered[src] = undelivered.reason
        b.last_code = "unavailable"
        b.last_message = "not delivered to " + "; ".join(
            f"{node} ({reason})" for node, reason in sorted(b.undelivered.items())
        )
        self._router.rotate(qs.loc, src)
        self._again(now, qs, b, fx, wait=True)
        self._pump(now, qs, fx)
        self._rearm(qs)

    def _on_enqueued(
        self, now: Now, qs: _QueueState, b: _Batch, ok: EnqueueOk, fx: EffectsBuilder
    ) -> None:
        if ok.topic != qs.topic or ok.queue != qs.queue or ok.count != len(b.calls):
            raise InvariantViolation(
                f"EnqueueOk {ok} does not match batch seq {b.seq} of {qs.topic}/{qs.queue} "
                f"with {len(b.calls)} items"
            )
        topic, queue = qs.topic, qs.queue
        offset = ok.first_offset
        answers = fx.replies
        size = 0
        for call in b.calls:
            answers.append(
                Reply(
                    call_id=call.call_id,
                    response=Produced(topic=topic, queue=queue, offset=offset),
                )
            )
            offset += 1
            size += call.size
        self._finish(now, qs, b, size, fx)
