"""``Consumer``: the client machine that pulls a consumer group's owned queues from the stores,
hands batches to the application handler, and moves the group's cursors on the outcome.

It owns the pull loop, handler outcomes, retry-level moves, cursor commits and the dequeue
rate limit of one machine. Ownership (which queues) is given to it explicitly (constructor,
``SetOwnership`` calls, ``set_ownership``); the lock service and the scheduler decide it later.
It writes nothing to disk: everything it must not forget lives in the stores' cursors.

Streams. Owning queue ``q`` of base topic ``t`` means consuming one *stream* per topic of
``t``'s family with the same queue number: ``t`` itself and the group's retry levels
``t.retry.<group>.1 .. n`` (the dead-letter topic is not consumed). Each stream runs one
sequential pipeline, and at most one delivery of a stream is out at a time::

    read committed cursor and seek epoch -> [tokens] -> Get -> [wait not_before] -> Deliver
        -> Handled -> Retry each failed offset, in order -> CommitCursor (asynchronous) -> Get
        ...   (a seek, seen at any point: -> [wait for the delivery out] -> read cursor ...)

* **Start.** A new stream first reads the group's committed cursor and its seek epoch (``Get``
  with ``items_max=0``) and starts there, so a restarted or re-assigned consumer redelivers
  whatever was delivered but not committed before (at-least-once).
* **Delivery.** ``Send(dst=HANDLER, msg=Deliver(...))`` with the fetched items in offset order;
  the driver answers with ``Received(src=HANDLER, msg=Handled(delivery_id, failed))``. Items of
  a retry level are not delivered before their ``not_before_ms``, on the store's time: the
  GetOk that brought them says the master's wall clock (``now_ms``), and the machine waits
  ``not_before_ms - now_ms`` from its arrival on its own monotonic clock (its deadline), so a
  consumer's wall clock ahead of or behind the masters' neither delays nor hastens a retry.
  A Retry answered ``RetryOk`` polls the next level's stream at once if it was waiting to
  poll (instead of up to ``poll_empty_max_ms`` later, or a backoff later), so the moved item
  is fetched and held until due. Per-key serial handling (same key in order,
  different keys concurrently) is the handler driver's concern: the machine only guarantees
  that a stream has one delivery out at a time. No ``Handled`` within ``handle_timeout_ms``
  counts as every item failed.
* **Outcome.** Without failures the cursor target becomes the end of the delivery. With
  failures, each failed offset is moved with ``Retry`` (which appends a copy to the next level
  or the dead-letter topic and advances the cursor past it, atomically), one at a time, in
  offset order, and only then does the target move past the delivery. The commit target never
  passes a failed offset whose ``Retry`` is not confirmed, so the cursor advances only past
  items that were handled successfully or moved. With nowhere to move to (last level and no
  dead-letter topic), the successful prefix is committed and the rest redelivered in place.
* **Commits** are ``CommitCursor(target)``, at most one in flight per stream, always carrying
  the latest target, overlapping the next Get and delivery. The store's commit is idempotent
  and monotone, so a commit with an unknown outcome (timeout, indefinite error) is simply
  re-sent. Every commit and Retry carries the stream's seek epoch (below).
* **Retry with an unknown outcome.** A ``Retry`` that a store applied twice would move the
  item twice, so after a timeout or an indefinite error the machine re-reads the committed
  cursor with ``Get(items_max=0)``: a cursor past the offset proves the Retry was applied
  (nothing else moves the cursor past a failed item), otherwise it is re-issued. A
  ``stale_offset`` answer to a Retry (pxq's store refuses to move an item below the cursor)
  also counts as applied. What can still be duplicated: against a store without that
  apply-time check, a Retry still in flight inside an old master (chosen only after the new
  master answered the re-read) may be applied after the re-issue, leaving two copies of the
  item in the next level; pxq's store refuses the second one. A re-read showing a newer seek
  epoch, or a re-issued Retry answered ``stale_epoch``, is a seek (below): the stream restarts
  whether or not the Retry was applied before it. After a Seek rewinds the cursor below moved
  items, they are delivered (and may be moved) again, as replay intends.
* **Redirects and errors.** Redirects are followed (and move the believed master), timeouts
  rotate to the next replica, indefinite errors and ``overloaded`` back off exponentially up
  to ``backoff_max_ms``; store requests are retried without a count limit because giving up
  would stop the queue. Any other definite error (``stale_token``: the lock moved on; an
  unknown topic or group, a bad queue or cursor: configurations disagree) stops the stream
  until ownership changes, with a ``consumer.stopped`` trace event: retrying cannot help and
  skipping would lose items.
* **Seeks.** Each cursor has a seek epoch that every applied Seek increments (``messages.py``).
  A stream takes the epoch from its starting probe and sends it with each commit and Retry;
  the store refuses those from before a later Seek with ``stale_epoch``, so a commit issued
  before a rewind can never undo it. A Get answer with a higher epoch, or a ``stale_epoch``
  answer, means a Seek happened: the stream restarts from the committed cursor (a new probe),
  discarding its fetched items, failed offsets, commit target and requests in flight. A
  delivery still with the handler is first waited for (phase ``DRAIN``, bounded by
  ``handle_timeout_ms``) and its outcome ignored, so a stream never has two deliveries out;
  its items come again from the new cursor if the seek went back that far. Nothing else
  moves a stream to a cursor it did not reach itself (another holder's commits show as
  ``stale_token`` once the lock moved on).
* **Ownership drop** stops a stream at once: its in-flight answers and its delivery's
  ``Handled`` are discarded, no commit or retry is sent for it afterwards (one already in
  flight may still land; it is correct for the items it covers).
* **Rate limit.** One token bucket per machine at the group's rate times this machine's
  ``share``. A Get reserves up to ``get_items_max`` tokens and refunds what the store did not
  return; a stream without tokens waits in FIFO order until ``next_available_ms``. Tokens are
  taken when items are fetched, not when they are delivered.

What may be duplicated (handlers must be idempotent): items delivered but not yet committed
when a consumer stops, crashes or loses its queue; items whose handler "failed" but had side
effects (they are redelivered from the retry level); the Retry race above; producer-side
duplicates (``ProduceUnknown`` re-sent as new items). Ordering: per stream, deliveries are in
offset order and do not overlap; items of different streams of the same queue (the base topic
and its retry levels) are delivered independently, so a key's retried item may be handled
after a later item of the same key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias, assert_never

from pxq.consumer.messages import (
    HANDLER,
    Deliver,
    Handled,
    OwnedQueue,
    OwnershipRejected,
    OwnershipSet,
    SetOwnership,
)
from pxq.consumer.ratelimit import TokenBucket
from pxq.consumer.settings import ConsumerSettings
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
    Request,
    Response,
    Rng,
    StorageLow,
    Wake,
)
from pxq.lockkeys import check_req_id_base
from pxq.routing import Location, Router, backoff_ms
from pxq.store.messages import (
    CommitCursor,
    CommitOk,
    Get,
    GetOk,
    Retry,
    RetryOk,
    StoredItem,
    StoreError,
    StoreRedirect,
)
from pxq.timers import Timers
from pxq.topics import retry_topic

StreamKey: TypeAlias = tuple[str, int]
"""(topic, queue): a base topic or one of the group's retry levels."""

RETRYABLE_DEFINITE = frozenset({"overloaded"})
"""Definite store errors worth re-sending after a backoff; any other definite error (except
``stale_offset`` answering a Retry, and ``stale_epoch``: a seek, the stream restarts) stops the
stream."""

_TOKENS: StreamKey = ("", -1)
"""The timer key of the rate-limit wake-up (no topic is named "")."""


class Phase(Enum):
    """Where a stream's pipeline is."""

    CURSOR = "cursor"  # reading the committed cursor to start from
    FETCH = "fetch"  # Get in flight, or waiting to poll again
    TOKENS = "tokens"  # waiting for rate-limit tokens before a Get
    HOLD = "hold"  # fetched items not due yet (not_before), or a redelivery pause
    HANDLE = "handle"  # a delivery is with the handler
    RETRY = "retry"  # Retry of the first failed offset in flight (or backing off)
    CHECK = "check"  # re-reading the cursor after a Retry with an unknown outcome
    DRAIN = "drain"  # a seek showed while a delivery was out: wait for it, ignore its outcome
    STOPPED = "stopped"  # stale fencing token: nothing until ownership changes


@dataclass(slots=True, eq=False)
class _Stream:
    topic: str
    queue: int
    level: int
    token: int
    loc: Location
    gen: int
    """Incarnation of the stream in this machine: answers and ``Handled`` of an earlier one
    (before a restart) are discarded."""
    terminal: bool
    """A failed item here has nowhere to go: redeliver in place instead of Retry."""
    phase: Phase = Phase.CURSOR

    cursor: int = 0
    """Next offset to fetch."""
    seek_epoch: int = 0
    """The cursor's seek epoch that ``cursor`` is based on (from the starting probe), sent
    with every commit and retry."""
    buffered: deque[StoredItem] = field(default_factory=deque)
    """Fetched, not yet delivered (at most one Get's worth)."""
    buffered_end: int = 0
    """The cursor after ``buffered`` (the last GetOk's ``next_cursor``)."""
    store_offset_ms: int = 0
    """The store's time minus this machine's monotonic clock, as of the last GetOk with items
    (``GetOk.now_ms``): ``now.mono_ms + store_offset_ms`` is the store's time now, give or
    take the answer's transit (which only makes it late), on which ``not_before_ms`` is due."""

    req_id: int | None = None
    req_target: NodeId = ""
    req_deadline_ms: int = 0
    req_cursor: int = 0
    reserved: int = 0
    """Tokens reserved for the Get in flight."""
    wake_ms: int | None = None
    failures: int = 0
    empty_polls: int = 0

    delivery_id: int | None = None
    delivered: tuple[StoredItem, ...] = ()
    delivery_end: int = 0
    handle_deadline_ms: int = 0
    failed: deque[int] = field(default_factory=deque)
    after_failed: int = 0

    known: int = 0
    """Highest cursor the store confirmed (a commit, a retry, or the cursor read)."""
    commit_target: int = 0
    commit_req: int | None = None
    commit_target_sent: int = 0
    commit_target_node: NodeId = ""
    commit_deadline_ms: int = 0
    commit_wake_ms: int | None = None
    commit_failures: int = 0
    claimed: bool = True
    """False until a commit with this stream's token was confirmed (streams with a lock's
    token start unclaimed: their first commit, at the probed cursor, raises the store's token
    floor, so the previous holder's late commits are refused)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamView:
    """A read-only snapshot of one stream, for tests and metrics."""

    topic: str
    queue: int
    phase: str
    cursor: int
    committed: int
    commit_target: int
    buffered: int
    epoch: int
    """The cursor's seek epoch the stream's position is based on."""


class Consumer:
    """The consumer client machine (a ``Node``): see the module docstring."""

    def __init__(
        self,
        settings: ConsumerSettings,
        rng: Rng,
        *,
        owned: Iterable[OwnedQueue | tuple[str, int]] = (),
        share: tuple[int, int] = (1, 1),
        req_id_base: int = 0,
    ) -> None:
        """``req_id_base``: this incarnation's requests are numbered from ``req_id_base + 1``
        (``pxq.lockkeys.REQ_ID_BASE_MAX``). A driver whose transport may hand a previous
        incarnation's late replies to this one (the simulator's network delivers by endpoint
        name) gives each incarnation a range of its own, as for the ``Producer``."""
        self.settings = settings
        self._rng = rng
        self._router = Router(settings.stores, settings.groups_per_store)
        self._streams: dict[StreamKey, _Stream] = {}
        self._owned: dict[tuple[str, int], OwnedQueue] = {}
        self._timers: Timers[StreamKey] = Timers()
        self._reqs: dict[int, tuple[StreamKey, int, bool]] = {}
        """req_id -> (stream, gen, is_commit)."""
        self._deliveries: dict[int, tuple[StreamKey, int]] = {}
        self._token_waiters: deque[tuple[StreamKey, int]] = deque()
        self._next_req_id = check_req_id_base(req_id_base) + 1
        self._next_delivery_id = 1
        self._next_gen = 1
        self._bucket: TokenBucket | None = None
        self._share = share
        initial = tuple(_owned_queue(q) for q in owned)
        problem = self._check_ownership(initial, share)
        if problem is not None:
            raise ValueError(f"owned: {problem.code}: {problem.message}")
        self._initial: tuple[OwnedQueue, ...] | None = initial

    # -- introspection -------------------------------------------------------------------------

    def streams(self) -> dict[StreamKey, StreamView]:
        return {
            k: StreamView(
                topic=s.topic,
                queue=s.queue,
                phase=s.phase.value,
                cursor=s.cursor,
                committed=s.known,
                commit_target=s.commit_target,
                buffered=len(s.buffered),
                epoch=s.seek_epoch,
            )
            for k, s in self._streams.items()
        }

    def owned(self) -> tuple[OwnedQueue, ...]:
        return tuple(self._owned.values())

    # -- Node protocol -------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        return self._timers.earliest()

    def step(self, now: Now, inp: Input) -> Effects:
        fx = EffectsBuilder()
        if self._initial is not None:
            initial, self._initial = self._initial, None
            self._apply_ownership(now, initial, self._share, fx)
        match inp:
            case Boot():
                pass
            case ClientCall(call_id=call_id, request=SetOwnership() as req):
                problem = self._check_ownership(req.queues, req.share)
                if problem is not None:
                    fx.reply(call_id, problem)
                else:
                    fx.reply(call_id, self._apply_ownership(now, req.queues, req.share, fx))
            case ClientCall(call_id=call_id):
                fx.reply(
                    call_id, OwnershipRejected(code="bad_request", message="expected SetOwnership")
                )
            case Received(src=src, msg=Response() as resp):
                self._on_response(now, src, resp, fx)
            case Received(src=src, msg=Handled() as handled) if src == HANDLER:
                self._on_handled(now, handled, fx)
            case Received(src=src, msg=msg):
                fx.event("consumer.unexpected", src=src, type=type(msg).__name__)
            case Wake():
                for key in self._timers.pop_due(now.mono_ms):
                    if key == _TOKENS:
                        self._serve_token_waiters(now, fx)
                        continue
                    st = self._streams.get(key)
                    if st is not None:
                        self._service(now, st, fx)
            case StorageLow():
                pass  # a consumer's writes are few and small: nothing to refuse
            case _:
                assert_never(inp)
        return fx.build()

    def set_ownership(
        self,
        now: Now,
        queues: Iterable[OwnedQueue | tuple[str, int]],
        share: tuple[int, int] = (1, 1),
    ) -> Effects:
        """Replace the owned queues (like a ``SetOwnership`` call); raises ``ValueError`` for
        an invalid set."""
        owned = tuple(_owned_queue(q) for q in queues)
        problem = self._check_ownership(owned, share)
        if problem is not None:
            raise ValueError(f"{problem.code}: {problem.message}")
        fx = EffectsBuilder()
        if self._initial is not None:
            self._initial = None
        self._apply_ownership(now, owned, share, fx)
        return fx.build()

    # -- ownership -----------------------------------------------------------------------------

    def _check_ownership(
        self, queues: tuple[OwnedQueue, ...], share: tuple[int, int]
    ) -> OwnershipRejected | None:
        s = self.settings
        if len(queues) > s.owned_queues_max:
            return OwnershipRejected(
                code="too_many", message=f"{len(queues)} > owned_queues_max {s.owned_queues_max}"
            )
        if share[0] < 0 or share[1] < 1:
            return OwnershipRejected(code="bad_share", message=f"share {share}")
        seen: set[tuple[str, int]] = set()
        for q in queues:
            count = s.topics.get(q.topic)
            if count is None:
                return OwnershipRejected(code="unknown_topic", message=f"no topic {q.topic!r}")
            if not 0 <= q.queue < count:
                return OwnershipRejected(
                    code="bad_queue", message=f"{q.topic!r} has queues 0..{count - 1}"
                )
            if (q.topic, q.queue) in seen:
                return OwnershipRejected(
                    code="bad_request", message=f"{q.topic}/{q.queue} listed twice"
                )
            seen.add((q.topic, q.queue))
        return None

    def _apply_ownership(
        self, now: Now, queues: tuple[OwnedQueue, ...], share: tuple[int, int], fx: EffectsBuilder
    ) -> OwnershipSet:
        s = self.settings
        self._share = share
        if s.rate_items_per_s is not None:
            if self._bucket is None:
                self._bucket = TokenBucket(
                    s.rate_items_per_s, s.burst, now_ms=now.mono_ms, share=share
                )
            elif self._bucket.share != share:
                self._bucket.set_share(now.mono_ms, share)
        wanted = {(q.topic, q.queue): q for q in queues}
        stopped = 0
        for base_key, old in list(self._owned.items()):
            new = wanted.get(base_key)
            if new is None or new.token != old.token:
                # A changed token means the lock was lost and taken again: someone else may
                # have consumed meanwhile, so start over from the committed cursor.
                for key in self._family(old):
                    self._drop(key)
                del self._owned[base_key]
                stopped += 1
        started = 0
        for q in queues:
            if (q.topic, q.queue) in self._owned:
                continue
            self._owned[(q.topic, q.queue)] = q
            started += 1
            for level, key in enumerate(self._family(q)):
                st = self._new_stream(key, level, q.token)
                self._issue(now, st, fx)
                self._rearm(st)
        if stopped or started:
            fx.event("consumer.ownership", started=started, stopped=stopped, owned=len(queues))
        return OwnershipSet(started=started, stopped=stopped)

    def _family(self, q: OwnedQueue) -> list[StreamKey]:
        s = self.settings
        return [(q.topic, q.queue)] + [
            (retry_topic(q.topic, s.group, level), q.queue)
            for level in range(1, s.retry_levels + 1)
        ]

    def _new_stream(self, key: StreamKey, level: int, token: int) -> _Stream:
        s = self.settings
        st = _Stream(
            topic=key[0],
            queue=key[1],
            level=level,
            token=token,
            loc=self._router.locate(key[0], key[1]),
            gen=self._new_gen(),
            terminal=level >= s.retry_levels and not s.dead_letter,
            claimed=token == 0,
        )
        self._streams[key] = st
        return st

    def _new_gen(self) -> int:
        gen = self._next_gen
        self._next_gen += 1
        return gen

    def _drop(self, key: StreamKey) -> None:
        st = self._streams.pop(key, None)
        if st is None:
            return
        self._refund(None, st)
        if st.phase is Phase.TOKENS:
            # Keep the wait list bounded by the live streams across ownership flips.
            self._token_waiters = deque(w for w in self._token_waiters if w[0] != key)
            self._arm_tokens()
        for req_id in (st.req_id, st.commit_req):
            if req_id is not None:
                self._reqs.pop(req_id, None)
        if st.delivery_id is not None:
            self._deliveries.pop(st.delivery_id, None)
        self._timers.set(key, None)

    # -- the pipeline --------------------------------------------------------------------------

    def _send(self, st: _Stream, body: object, fx: EffectsBuilder, *, commit: bool) -> int:
        req_id = self._next_req_id
        self._next_req_id += 1
        target = self._router.master(st.loc)
        self._reqs[req_id] = ((st.topic, st.queue), st.gen, commit)
        fx.send(target, Request(req_id=req_id, body=body))
        if commit:
            st.commit_target_node = target
        else:
            st.req_target = target
        return req_id

    def _issue(self, now: Now, st: _Stream, fx: EffectsBuilder, *, waited: bool = False) -> None:
        """Send the request of the stream's phase (or wait for tokens before a Get)."""
        s = self.settings
        st.wake_ms = None
        body: object
        match st.phase:
            case Phase.CURSOR | Phase.CHECK:
                cursor = 0 if st.phase is Phase.CURSOR else st.cursor
                body = Get(
                    topic=st.topic,
                    group=s.group,
                    queue=st.queue,
                    cursor=cursor,
                    items_max=0,
                    bytes_max=s.get_bytes_max,
                )
            case Phase.FETCH | Phase.TOKENS:
                n = s.get_items_max
                if self._bucket is not None:
                    # FIFO: a stream that did not wait does not overtake one that does.
                    n = (
                        0
                        if self._token_waiters and not waited
                        else self._bucket.take(now.mono_ms, n)
                    )
                    if n == 0:
                        st.phase = Phase.TOKENS
                        self._token_waiters.append(((st.topic, st.queue), st.gen))
                        self._arm_tokens()
                        return
                st.phase = Phase.FETCH
                st.reserved = n if self._bucket is not None else 0
                body = Get(
                    topic=st.topic,
                    group=s.group,
                    queue=st.queue,
                    cursor=st.cursor,
                    items_max=n,
                    bytes_max=s.get_bytes_max,
                )
            case Phase.RETRY:
                body = Retry(
                    topic=st.topic,
                    group=s.group,
                    queue=st.queue,
                    offset=st.failed[0],
                    token=st.token,
                    epoch=st.seek_epoch,
                )
            case Phase.HOLD | Phase.HANDLE | Phase.DRAIN | Phase.STOPPED:
                raise InvariantViolation(f"no request to issue in phase {st.phase}")
            case _:
                assert_never(st.phase)
        st.req_cursor = st.cursor
        st.req_deadline_ms = now.mono_ms + s.request_timeout_ms
        st.req_id = self._send(st, body, fx, commit=False)

    def _back_off(self, now: Now, st: _Stream) -> None:
        s = self.settings
        st.failures += 1
        st.wake_ms = now.mono_ms + backoff_ms(
            self._rng, st.failures, s.backoff_ms, s.backoff_max_ms
        )

    def _refund(self, now: Now | None, st: _Stream, used: int = 0) -> None:
        if self._bucket is not None and st.reserved > used:
            # A dropped stream refunds at the bucket's own last time (no clock at hand).
            at = now.mono_ms if now is not None else 0
            self._bucket.refund(at, st.reserved - used)
        st.reserved = 0

    def _stop(self, st: _Stream, code: str, fx: EffectsBuilder) -> None:
        self._refund(None, st)
        if st.req_id is not None:
            self._reqs.pop(st.req_id, None)
        if st.commit_req is not None:
            self._reqs.pop(st.commit_req, None)
        if st.delivery_id is not None:
            self._deliveries.pop(st.delivery_id, None)
        st.phase = Phase.STOPPED
        st.req_id = st.commit_req = st.delivery_id = None
        st.wake_ms = st.commit_wake_ms = None
        st.buffered.clear()
        st.failed.clear()
        fx.event("consumer.stopped", topic=st.topic, queue=st.queue, code=code)

    def _restart(self, now: Now, st: _Stream, why: str, fx: EffectsBuilder) -> None:
        """A Seek moved the cursor (``why``: what showed it): forget everything based on the
        old position (fetched items, failed offsets, the commit target, requests in flight,
        the outcome of a delivery out) and start over from the committed cursor."""
        fx.event(
            "consumer.seek_detected",
            topic=st.topic,
            queue=st.queue,
            at=st.cursor,
            epoch=st.seek_epoch,
            by=why,
        )
        key = (st.topic, st.queue)
        self._refund(now, st)
        for req_id in (st.req_id, st.commit_req):
            if req_id is not None:
                self._reqs.pop(req_id, None)
        if st.phase is Phase.TOKENS:
            self._token_waiters = deque(w for w in self._token_waiters if w[0] != key)
            self._arm_tokens()
        st.gen = self._new_gen()
        st.req_id = st.commit_req = None
        st.wake_ms = st.commit_wake_ms = None
        st.failures = st.commit_failures = st.empty_polls = 0
        st.buffered.clear()
        st.failed.clear()
        # Nothing to commit until the probe reads the cursor (commit_target <= known).
        st.cursor = st.known = st.commit_target = 0
        if st.delivery_id is not None:
            # At most one delivery of a stream is out at a time: let the handler give this one
            # back (or time out) before delivering from the new position.
            self._deliveries[st.delivery_id] = (key, st.gen)
            st.phase = Phase.DRAIN
            return
        st.delivered = ()
        st.phase = Phase.CURSOR
        self._issue(now, st, fx)

    def _drained(self, now: Now, st: _Stream, fx: EffectsBuilder) -> None:
        """The delivery that was out when a seek showed is back (its outcome is ignored)."""
        st.delivery_id = None
        st.delivered = ()
        st.phase = Phase.CURSOR
        self._issue(now, st, fx)

    def _deliver(self, now: Now, st: _Stream, fx: EffectsBuilder) -> None:
        """Hand the due prefix of the buffered items to the handler, or go fetch more."""
        if not st.buffered:
            st.phase = Phase.FETCH
            self._issue(now, st, fx)
            return
        first = st.buffered[0]
        store_now = now.mono_ms + st.store_offset_ms
        if first.not_before_ms > store_now:
            # Not due on the store's time: wait for it on the monotonic clock.
            st.phase = Phase.HOLD
            st.wake_ms = now.mono_ms + (first.not_before_ms - store_now)
            return
        items: list[StoredItem] = []
        while st.buffered and st.buffered[0].not_before_ms <= store_now:
            items.append(st.buffered.popleft())
        st.delivery_end = st.buffered[0].offset if st.buffered else st.buffered_end
        st.delivered = tuple(items)
        st.delivery_id = self._next_delivery_id
        self._next_delivery_id += 1
        self._deliveries[st.delivery_id] = ((st.topic, st.queue), st.gen)
        st.handle_deadline_ms = now.mono_ms + self.settings.handle_timeout_ms
        st.phase = Phase.HANDLE
        fx.send(
            HANDLER,
            Deliver(
                delivery_id=st.delivery_id,
                group=self.settings.group,
                topic=st.topic,
                queue=st.queue,
                items=st.delivered,
            ),
        )

    def _on_handled(self, now: Now, handled: Handled, fx: EffectsBuilder) -> None:
        entry = self._deliveries.pop(handled.delivery_id, None)
        if entry is None:
            return  # a dropped stream's, or a delivery that already timed out
        key, gen = entry
        st = self._streams.get(key)
        if st is None or st.gen != gen or st.delivery_id != handled.delivery_id:
            return
        if st.phase is Phase.DRAIN:
            self._drained(now, st, fx)
        else:
            self._outcome(now, st, handled.failed, fx)
        self._rearm(st)

    def _outcome(
        self, now: Now, st: _Stream, failed_offsets: Iterable[int], fx: EffectsBuilder
    ) -> None:
        delivered = {item.offset for item in st.delivered}
        failed = sorted(set(failed_offsets) & delivered)
        st.delivery_id = None
        if not failed:
            st.delivered = ()
            self._advance(now, st, st.delivery_end, fx)
            self._deliver(now, st, fx)
            return
        fx.event("consumer.failed", topic=st.topic, queue=st.queue, items=len(failed))
        if st.terminal:
            # Nowhere to move them: commit what precedes the first failure and redeliver the
            # rest (successes after it included) in place, after a pause.
            self._advance(now, st, failed[0], fx)
            again = [item for item in st.delivered if item.offset >= failed[0]]
            st.buffered.extendleft(reversed(again))
            st.delivered = ()
            st.phase = Phase.HOLD
            st.wake_ms = now.mono_ms + self.settings.redeliver_backoff_ms
            return
        st.delivered = ()
        st.failed = deque(failed)
        st.after_failed = st.delivery_end
        st.phase = Phase.RETRY
        self._issue(now, st, fx)

    def _retried(self, now: Now, st: _Stream, fx: EffectsBuilder) -> None:
        """The first failed offset is moved; go on with the next one or with the stream."""
        st.failed.popleft()
        st.failures = 0
        if st.failed:
            st.phase = Phase.RETRY
            self._issue(now, st, fx)
            return
        self._advance(now, st, st.after_failed, fx)
        self._deliver(now, st, fx)

    def _poke(self, now: Now, key: StreamKey, fx: EffectsBuilder) -> None:
        """This machine just moved an item into stream ``key`` (a retry level it consumes):
        if that stream is waiting to poll (an empty-poll backoff, up to ``poll_empty_max_ms``,
        which made 50 ms retry delays take half a second more) or to re-send its first read (a
        backoff while the group had no master), poll it now, so the item is fetched at once
        and held until it is due. The level shares its base queue's Paxos group, whose master
        just applied the Retry: a backoff there has nothing left to wait for."""
        st = self._streams.get(key)
        if st is None or st.req_id is not None or st.wake_ms is None:
            return
        if st.phase is not Phase.FETCH and st.phase is not Phase.CURSOR:
            return
        st.empty_polls = 0
        self._issue(now, st, fx)
        self._rearm(st)

    def _advance(self, now: Now, st: _Stream, target: int, fx: EffectsBuilder) -> None:
        st.commit_target = max(st.commit_target, target)
        self._maybe_commit(now, st, fx)

    def _maybe_commit(self, now: Now, st: _Stream, fx: EffectsBuilder) -> None:
        if (
            st.phase is Phase.STOPPED
            or st.commit_req is not None
            or st.commit_wake_ms is not None
            or st.phase is Phase.CURSOR
            or (st.commit_target <= st.known and st.claimed)
        ):
            return
        st.commit_target_sent = st.commit_target
        st.commit_deadline_ms = now.mono_ms + self.settings.request_timeout_ms
        body = CommitCursor(
            topic=st.topic,
            group=self.settings.group,
            queue=st.queue,
            cursor=st.commit_target,
            token=st.token,
            epoch=st.seek_epoch,
        )
        st.commit_req = self._send(st, body, fx, commit=True)

    # -- answers -------------------------------------------------------------------------------

    def _on_response(self, now: Now, src: NodeId, resp: Response, fx: EffectsBuilder) -> None:
        entry = self._reqs.pop(resp.req_id, None)
        if entry is None:
            return  # superseded, or its stream was dropped
        key, gen, is_commit = entry
        st = self._streams.get(key)
        if st is None or st.gen != gen:
            return
        if is_commit:
            if st.commit_req == resp.req_id:
                st.commit_req = None
                self._on_commit_answer(now, st, src, resp.body, fx)
        elif st.req_id == resp.req_id:
            st.req_id = None
            self._on_main_answer(now, st, src, resp.body, fx)
        self._rearm(st)

    def _on_main_answer(
        self, now: Now, st: _Stream, src: NodeId, body: object, fx: EffectsBuilder
    ) -> None:
        match body:
            case StoreRedirect(master=master):
                self._refund(now, st)
                if self._router.redirected(st.loc, src, master):
                    self._issue(now, st, fx)
                else:
                    self._back_off(now, st)
            case StoreError(definite=False):
                self._refund(now, st)
                if st.phase is Phase.RETRY:
                    st.phase = Phase.CHECK
                self._back_off(now, st)
            case StoreError(code="stale_epoch") if st.phase is Phase.RETRY:
                # A Seek moved the cursor since the read this Retry is based on: the store
                # refused it. Start over from the sought cursor (the item may be delivered
                # again, as the replay intends).
                self._restart(now, st, "retry", fx)
            case StoreError(code="stale_offset") if st.phase is Phase.RETRY:
                # The cursor is already past the offset: an earlier attempt of this Retry was
                # applied (pxq's store refuses to move an item below the cursor).
                fx.event("consumer.retry_confirmed", topic=st.topic, queue=st.queue)
                self._retried(now, st, fx)
            case StoreError(code=code) if code in RETRYABLE_DEFINITE:
                self._refund(now, st)
                self._back_off(now, st)
            case StoreError():
                # Permanent (stale_token: the lock moved on; unknown topic or group, bad queue
                # or cursor: the configuration disagrees with the store's). Retrying cannot
                # help and skipping would lose items: stop until ownership changes.
                self._stop(st, body.code, fx)
            case GetOk():
                self._router.answered(st.loc, src)
                self._check_answer(st, body.topic, body.group, body.queue, body)
                self._on_get(now, st, body, fx)
            case RetryOk():
                self._router.answered(st.loc, src)
                self._check_answer(st, body.topic, body.group, body.queue, body)
                if st.phase is not Phase.RETRY or body.cursor <= st.failed[0]:
                    raise InvariantViolation(f"{body} does not answer a Retry of {st.failed}")
                st.known = max(st.known, body.cursor)
                fx.event(
                    "consumer.retried",
                    topic=st.topic,
                    queue=st.queue,
                    offset=st.failed[0],
                    moved_to=body.moved_to,
                )
                self._poke(now, (body.moved_to, st.queue), fx)
                self._retried(now, st, fx)
            case _:
                # Not an answer to this kind of request: treat it like a lost answer.
                fx.event("consumer.unexpected", src=src, type=type(body).__name__)
                self._refund(now, st)
                if st.phase is Phase.RETRY:
                    st.phase = Phase.CHECK
                self._back_off(now, st)

    def _check_answer(self, st: _Stream, topic: str, group: str, queue: int, body: object) -> None:
        if topic != st.topic or group != self.settings.group or queue != st.queue:
            raise InvariantViolation(f"{body} answers a request of {st.topic}/{st.queue}")

    def _on_get(self, now: Now, st: _Stream, ok: GetOk, fx: EffectsBuilder) -> None:
        st.failures = 0
        if st.phase is Phase.CURSOR:
            st.cursor = st.known = st.commit_target = ok.committed
            st.seek_epoch = ok.epoch
            # What the stream starts from: the checkers hold that a committed cursor never
            # goes back without a seek (which raises the epoch).
            fx.event(
                "consumer.cursor",
                topic=st.topic,
                queue=st.queue,
                cursor=ok.committed,
                epoch=ok.epoch,
            )
            st.phase = Phase.FETCH
            self._issue(now, st, fx)
            self._maybe_commit(now, st, fx)  # the claim, for a stream with a new token
            return
        if ok.epoch > st.seek_epoch:
            # A Seek moved the cursor since our start: whatever we hold or would commit is
            # based on the old position. (A lower epoch can only be older applied state; the
            # items are still right, and our commits carry our epoch: go on.)
            self._restart(now, st, "get", fx)
            return
        if st.phase is Phase.CHECK:
            # Same epoch: nothing but our own Retry moves the cursor past the failed offset.
            if ok.committed > st.failed[0]:
                st.known = max(st.known, ok.committed)
                fx.event("consumer.retry_confirmed", topic=st.topic, queue=st.queue)
                self._retried(now, st, fx)
            else:
                st.phase = Phase.RETRY
                self._issue(now, st, fx)
            return
        if st.phase is not Phase.FETCH:
            raise InvariantViolation(f"GetOk in phase {st.phase}")
        self._refund(now, st, used=len(ok.items))
        prev = st.req_cursor
        if (
            ok.next_cursor < prev
            or any(not prev <= item.offset < ok.next_cursor for item in ok.items)
            or any(a.offset >= b.offset for a, b in zip(ok.items, ok.items[1:], strict=False))
        ):
            raise InvariantViolation(f"GetOk from cursor {prev} is out of order: {ok}")
        if ok.first_offset > prev:
            fx.event("consumer.gap", topic=st.topic, queue=st.queue, at=prev, first=ok.first_offset)
        st.cursor = ok.next_cursor
        if ok.items:
            st.empty_polls = 0
            st.buffered.extend(ok.items)
            st.buffered_end = ok.next_cursor
            st.store_offset_ms = ok.now_ms - now.mono_ms
            self._deliver(now, st, fx)
        elif ok.next_cursor > prev:
            # Only items of kinds the group does not subscribe to: skip them and read on.
            st.empty_polls = 0
            self._advance(now, st, ok.next_cursor, fx)
            self._issue(now, st, fx)
        else:
            s = self.settings
            st.empty_polls += 1
            delay = min(s.poll_empty_max_ms, s.poll_empty_ms << min(st.empty_polls - 1, 30))
            st.wake_ms = now.mono_ms + delay

    def _on_commit_answer(
        self, now: Now, st: _Stream, src: NodeId, body: object, fx: EffectsBuilder
    ) -> None:
        s = self.settings
        match body:
            case CommitOk():
                self._router.answered(st.loc, src)
                self._check_answer(st, body.topic, body.group, body.queue, body)
                st.known = max(st.known, body.cursor)
                st.commit_failures = 0
                st.claimed = True
                self._maybe_commit(now, st, fx)
                return
            case StoreRedirect(master=master):
                if self._router.redirected(st.loc, src, master):
                    self._maybe_commit(now, st, fx)
                    return
            case StoreError(definite=False) | StoreError(code="overloaded"):
                pass  # a commit is idempotent: back off and re-send
            case StoreError(code="stale_epoch"):
                # A Seek moved the cursor since the read this commit is based on: the store
                # refused the commit (it would have undone the seek). Start over from there.
                self._restart(now, st, "commit", fx)
                return
            case StoreError():
                self._stop(st, body.code, fx)  # permanent: see _on_main_answer
                return
            case _:
                fx.event("consumer.unexpected", src=src, type=type(body).__name__)
        st.commit_failures += 1
        st.commit_wake_ms = now.mono_ms + backoff_ms(
            self._rng, st.commit_failures, s.backoff_ms, s.backoff_max_ms
        )

    # -- timers --------------------------------------------------------------------------------

    def _service(self, now: Now, st: _Stream, fx: EffectsBuilder) -> None:
        t = now.mono_ms
        if st.req_id is not None and t >= st.req_deadline_ms:
            # No answer: try the next replica at once (the wait already happened).
            self._reqs.pop(st.req_id, None)
            st.req_id = None
            self._refund(now, st)
            self._router.rotate(st.loc, st.req_target)
            if st.phase is Phase.RETRY:
                st.phase = Phase.CHECK  # it may have been applied: look before re-issuing
            self._issue(now, st, fx)
        if st.delivery_id is not None and t >= st.handle_deadline_ms:
            self._deliveries.pop(st.delivery_id, None)
            fx.event("consumer.handle_timeout", topic=st.topic, queue=st.queue)
            if st.phase is Phase.DRAIN:
                self._drained(now, st, fx)
            else:
                self._outcome(now, st, [item.offset for item in st.delivered], fx)
        if st.wake_ms is not None and t >= st.wake_ms:
            st.wake_ms = None
            if st.phase is Phase.HOLD:
                self._deliver(now, st, fx)
            elif st.phase in (Phase.CURSOR, Phase.CHECK, Phase.RETRY, Phase.FETCH):
                self._issue(now, st, fx)
        if st.commit_req is not None and t >= st.commit_deadline_ms:
            self._reqs.pop(st.commit_req, None)
            st.commit_req = None
            self._router.rotate(st.loc, st.commit_target_node)
            self._maybe_commit(now, st, fx)
        if st.commit_wake_ms is not None and t >= st.commit_wake_ms:
            st.commit_wake_ms = None
            self._maybe_commit(now, st, fx)
        self._rearm(st)

    def _rearm(self, st: _Stream) -> None:
        key = (st.topic, st.queue)
        if self._streams.get(key) is not st:
            return
        at = [
            t
            for t in (
                st.req_deadline_ms if st.req_id is not None else None,
                st.handle_deadline_ms if st.delivery_id is not None else None,
                st.wake_ms,
                st.commit_deadline_ms if st.commit_req is not None else None,
                st.commit_wake_ms,
            )
            if t is not None
        ]
        self._timers.set(key, min(at) if at else None)

    def _arm_tokens(self) -> None:
        at = None
        if self._token_waiters and self._bucket is not None:
            at = self._bucket.next_available_ms(1)
        self._timers.set(_TOKENS, at)

    def _serve_token_waiters(self, now: Now, fx: EffectsBuilder) -> None:
        bucket = self._bucket
        while self._token_waiters and bucket is not None and bucket.available(now.mono_ms) > 0:
            key, gen = self._token_waiters.popleft()
            st = self._streams.get(key)
            if st is None or st.gen != gen or st.phase is not Phase.TOKENS:
                continue
            self._issue(now, st, fx, waited=True)
            self._rearm(st)
        self._arm_tokens()


def _owned_queue(q: OwnedQueue | tuple[str, int]) -> OwnedQueue:
    if isinstance(q, OwnedQueue):
        return q
    topic, queue = q
    return OwnedQueue(topic=topic, queue=queue)
