"""``AsyncConsumer``: one consumer of one consumer group, as the application sees it.

It owns a ``pxq.consumer.machine.Consumer`` (pull, cursors, retry levels, rate limit: see that
module) run by a ``MachineDriver``, and the application side of the machine's ``HANDLER``
channel: turning each ``Deliver`` into handler calls or a ``Batch``, and answering
``Handled(delivery_id, failed)``.

Two ways to consume (one at a time per consumer):

* ``await consumer.run(handler)``: the handler (async, or sync: then it runs in a worker
  thread of the consumer's own pool, ``concurrency`` threads, never the loop's default
  executor, which the loop itself needs, e.g. to resolve host names) gets one ``Item`` at a
  time. Items with the same key are handled one at a time, in
  offset order; items with different keys (or no key) run concurrently, at most ``concurrency`` at once.
  An item whose handler raised goes to the group's next retry level (or its dead-letter
  topic); the queue's cursor is committed past a delivery once each of its items succeeded
  or was moved. ``run`` returns after ``stop()`` or ``close()``.
* ``async for batch in consumer.batches():``: one ``Batch`` (the items of one delivery, from
  one queue, in offset order) at a time. The batch is committed when the loop body finishes
  without raising (commit after success); items marked with ``batch.fail(item)`` go to the
  retry level instead. If the body raises or breaks out, the batch is *not* committed: the
  consumer stops, and the batch is delivered again from the committed cursor (to this
  consumer when it iterates again, or to another consumer of the group). To end after a
  batch *with* its commit, call ``consumer.stop()`` in the body and let it finish.

Slow handlers. Cursor commits and lease renewals run on the event loop, so nothing that
blocks the loop may run there: a sync handler runs in a worker thread and may take as long as
it likes (the lease is renewed meanwhile; after ``handle_timeout_ms`` its delivery counts as
failed and moves to the retry level); an async handler, and the body of a ``batches`` loop,
must await, never block (``time.sleep``, a blocking write). A loop blocked past the lease
loses its queues: once the loop runs again the consumer stops them before anything else (its
late commits are refused by their fencing token) and their items come again, perhaps to
another consumer. ``pxq.Client`` runs async handlers on a loop of their own, so there even a
blocking one cannot stall the client's loop.

Stopping (``stop``/``close``, or the end of ``batches``) waits for handlers in flight and for
the commits of finished deliveries to be confirmed (bounded by ``close_timeout_s``), then
drops the queues: deliveries not yet handled are left uncommitted and come again.

Ownership: with ``ownership`` settings (a cluster with a lock service, no queues chosen by
the application), the machine is a ``pxq.consumer.ownership.ConsumerProcess``: a session
starts with ``Join`` (the process takes its share of the group's queues through the lock
service, fenced, and keeps following membership changes) and ends with ``Leave`` (every queue
stopped, every lock released at once, so the other consumers take them over without waiting
for a lease). A queue given up while the process runs (``own.stop``: its lease lost, say while
the lock service was out) revokes its deliveries not answered yet: a batch still waiting in
``batches()`` is never yielded, and a handler of ``run`` gets none of its items that it has
not started; they come again from the queue's next owner (found by ``pxq test``: the
``ownership`` check's ``deliver_unowned``). Without, the consumer owns exactly the queues it
was given; two consumers of one group that own the same queue both consume it (duplicates,
not loss).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final, TypeAlias

from net.client.driver import MachineDriver, NodePool
from net.client.types import (
    NO_HEADERS,
    ClientClosed,
    Item,
    MachineFailed,
    PxqError,
    RequestFailed,
    headers_view,
)
from net.logs import OWNERSHIP_LOGGER, log_event
from pxq.access import LOCKS, PERMISSION_DENIED, read_permission
from pxq.consumer.machine import Consumer as ConsumerMachine
from pxq.consumer.messages import (
    HANDLER,
    Deliver,
    Handled,
    OwnedQueue,
    OwnershipRejected,
    OwnershipSet,
    SetOwnership,
)
from pxq.consumer.ownership import ConsumerProcess, Join, Joined, Leave, Left, OwnershipSettings
from pxq.consumer.settings import ConsumerSettings
from pxq.effects import Received, TraceEvent
from pxq.store.messages import StoredItem

if TYPE_CHECKING:
    import random

log = logging.getLogger("pxq.client.consumer")
ownership_log = logging.getLogger(OWNERSHIP_LOGGER)

OWNERSHIP_WHY: Final = {
    "expired": "its lease on the queue's lock expired before a renewal was confirmed",
    "denied": "the lock service gave the queue to another consumer",
    "handover": "handed over to another consumer (the spread changed)",
    "leave": "the consumer is leaving",
}
"""What an ``own.stop`` event's ``why`` means (``pxq.consumer.ownership``), for the log."""

Handler: TypeAlias = Callable[[Item], object]
"""An item handler: a plain function (run in a worker thread) or an ``async`` function (run on
the event loop). Returning means success; raising ``Exception`` means failure."""

CONCURRENCY_DEFAULT = 16
"""Handler calls running at once per consumer (different keys only)."""
CLOSE_TIMEOUT_DEFAULT_S = 5.0
"""How long stopping waits for running handlers, and then for commits to be confirmed."""
SETTLING_PHASES = frozenset({"retry", "check"})
"""Stream phases (``pxq.consumer.machine.Phase``) in which a handled delivery's failed items
are still being moved to the retry level: stopping waits for them."""


class Batch:
    """The items of one delivery: one queue (of a base topic or a retry level), offset order.

    Iterate it, index it, ``len()`` it. ``fail(item)`` sends that item to the retry level (or
    dead-letter topic) when the batch is committed, instead of counting it as handled."""

    __slots__ = ("_failed", "group", "items", "queue", "topic")

    def __init__(self, *, group: str, topic: str, queue: int, items: tuple[Item, ...]) -> None:
        self.group = group
        self.topic = topic
        self.queue = queue
        self.items = items
        self._failed: set[int] = set()

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def __repr__(self) -> str:
        return f"Batch({self.topic}/{self.queue}, {len(self.items)} items, group={self.group!r})"

    def fail(self, item: Item) -> None:
        """Count ``item`` as failed: on commit it moves to the next retry level."""
        if not any(i.offset == item.offset for i in self.items) or item.topic != self.topic:
            raise ValueError(f"item {item.topic}/{item.queue}@{item.offset} is not in {self!r}")
        self._failed.add(item.offset)

    @property
    def failed(self) -> tuple[int, ...]:
        """Offsets marked with ``fail``, ascending."""
        return tuple(sorted(self._failed))


_ITEM_FIELDS: Final = (
    "topic",
    "queue",
    "offset",
    "key",
    "payload",
    "kind",
    "attempt",
    "enqueued_ms",
    "headers",
)
if (
    tuple(f.name for f in dataclasses.fields(Item)) != _ITEM_FIELDS
    or hasattr(Item, "__post_init__")
    or not all(isinstance(vars(Item).get(n), types.MemberDescriptorType) for n in _ITEM_FIELDS)
):  # pragma: no cover - guards the fast constructor below against a changed Item
    raise RuntimeError("net.client.types.Item changed: update net.client.consumer._items")
_NEW = object.__new__
_SETTERS: Final = tuple(vars(Item)[n].__set__ for n in _ITEM_FIELDS)
(
    _SET_TOPIC,
    _SET_QUEUE,
    _SET_OFFSET,
    _SET_KEY,
    _SET_PAYLOAD,
    _SET_KIND,
    _SET_ATTEMPT,
    _SET_MS,
    _SET_HEADERS,
) = _SETTERS


def _items(d: Deliver, stored: Iterable[StoredItem]) -> tuple[Item, ...]:
    """The handler's ``Item`` of each of ``stored`` (items of delivery ``d``).

    One ``Item`` per delivered item is the consumer's main per-item cost: this sets the slots
    of the frozen dataclass directly (as ``pxq.codec`` does when it decodes a message) instead
    of going through its generated ``__init__``, which sets each field with
    ``object.__setattr__``; the values come from a checked ``StoredItem``."""
    topic, queue = d.topic, d.queue
    out: list[Item] = []
    append = out.append
    for it in stored:
        item: Item = _NEW(Item)
        _SET_TOPIC(item, topic)
        _SET_QUEUE(item, queue)
        _SET_OFFSET(item, it.offset)
        _SET_KEY(item, it.key)
        _SET_PAYLOAD(item, it.payload)
        _SET_KIND(item, it.kind)
        _SET_ATTEMPT(item, it.attempt)
        _SET_MS(item, it.enqueued_ms)
        _SET_HEADERS(item, headers_view(it.headers) if it.headers else NO_HEADERS)
        append(item)
    return tuple(out)


def _item(d: Deliver, it: StoredItem) -> Item:
    return _items(d, (it,))[0]


def is_async_handler(handler: Handler) -> bool:
    """Whether ``handler`` is an ``async`` function (or an object with an async ``__call__``)."""
    call = type(handler).__call__ if not inspect.isfunction(handler) else None
    return inspect.iscoroutinefunction(handler) or (
        call is not None and inspect.iscoroutinefunction(call)
    )


class AsyncConsumer:
    """A consumer of ``group`` owning ``owned`` (see the module docstring). Made by
    ``AsyncClient.consumer``; use it as an async context manager or ``close()`` it."""

    def __init__(
        self,
        *,
        settings: ConsumerSettings,
        owned: tuple[OwnedQueue, ...],
        ownership: OwnershipSettings | None = None,
        pool: NodePool,
        rng: random.Random,
        concurrency: int = CONCURRENCY_DEFAULT,
        close_timeout_s: float = CLOSE_TIMEOUT_DEFAULT_S,
        on_close: Callable[[AsyncConsumer], None] | None = None,
        verify: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency: must be >= 1")
        self.group = settings.group
        self.owned = owned
        self._settings = settings
        self._process: ConsumerProcess | None = None
        if ownership is not None:
            self._process = ConsumerProcess(settings, ownership, rng, active=False)
            self._machine = self._process.consumer
        else:
            self._machine = ConsumerMachine(settings, rng)
        self._driver = MachineDriver(
            self._process if self._process is not None else self._machine,
            pool,
            request_timeout_ms=settings.request_timeout_ms,
            name=f"consumer of {settings.group}",
            on_handler=self._on_handler,
            on_trace=self._on_trace,
            on_failure=lambda _: self.stop(),
        )
        self._close_timeout_s = close_timeout_s
        self._on_close = on_close
        self.trace_listener: Callable[[TraceEvent], None] | None = None
        """Hears every trace event of the consumer's machines (a test's history recorder:
        ``net.tools.history_run`` records the ownership changes)."""
        self._verify = verify
        """The client's check that its file matches the cluster (``AsyncClient.verify``),
        awaited before consuming: a mismatch raises ``ClusterMismatch`` at once instead of a
        consumer waiting on refused connections without saying why."""
        self._sem = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None
        """The worker threads of a sync handler (``run``), one per concurrent call."""
        self._mode: str | None = None
        self._accepting = False
        self._stopping = False
        self._closed = False
        self._stop_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready: asyncio.Queue[Deliver | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._handling: dict[int, Deliver] = {}
        """Deliveries handed to the handler side and not answered yet, by delivery id."""
        self._revoked: set[int] = set()
        """Deliveries of queues given up since they were handed over (``own.stop``): never
        yielded, no item of them handed to a handler any more (their items come again from
        the queue's next owner; the machine ignores their answers)."""
        self._handler: Handler | None = None
        self._handler_async = False
        self._session = 0
        self._session_ended = True
        self._batch_out = False
        """A ``batches`` session has a batch out with the loop body (the generator is suspended
        at its ``yield``)."""
        self.stopped_streams: list[tuple[str, int, str]] = []
        """(topic, queue, store error code) of streams the machine stopped (for example a
        stale fencing token); they resume only when ownership is set again."""
        self.denied: list[str] = []
        """The permissions the cluster refused this consumer's principal (``pxq.access``):
        ``consume:TOPIC/GROUP`` (a stream stopped ``permission_denied``) or ``locks`` (its
        ownership requests refused), each once, in the order first refused."""

    # -- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def machine(self) -> ConsumerMachine:
        """The pure consumer machine (read-only use: ``streams()`` for metrics and tests)."""
        return self._machine

    async def run(self, handler: Handler) -> None:
        """Consume with ``handler`` until ``stop()`` or ``close()`` (see the module docstring).

        Raises ``MachineFailed`` if the consumer machine stopped on a broken invariant."""
        if self._verify is not None:
            await self._verify()
        await self._wait_ending()
        session = self._begin("run")
        self._handler = handler
        self._handler_async = is_async_handler(handler)
        if not self._handler_async and self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix=f"pxq-handler-{self.group}"
            )
        try:
            await self._acquire()
            await self._stop_event.wait()
        finally:
            await self._end(session)
        if self._driver.failure is not None:
            raise self._driver.failure

    async def batches(self) -> AsyncGenerator[Batch, None]:
        """Yield batches until ``stop()`` or ``close()``; each is committed when the loop body
        that received it finishes without raising (see the module docstring).

        Iterating again after a loop that raised or broke out abandons that loop's batch
        (uncommitted) and starts over from the committed cursors."""
        if self._mode == "batches" and self._batch_out and not self._session_ended:
            # The previous loop left with a batch out (raised or broke out) and its generator
            # was not closed yet: end that session here, its batch uncommitted.
            await self._end(self._session)
        if self._verify is not None:
            await self._verify()
        await self._wait_ending()
        session = self._begin("batches")
        try:
            await self._acquire()
            ready = self._ready
            while not self._stopping:
                d = await ready.get()
                if d is None or self._stopping or session != self._session:
                    break
                if d.delivery_id in self._revoked:
                    self._forget_delivery(d.delivery_id)
                    continue  # its queue was given up while it waited: another owner's now
                batch = Batch(
                    group=self.group,
                    topic=d.topic,
                    queue=d.queue,
                    items=_items(d, d.items),
                )
                self._batch_out = True
                yield batch
                if session != self._session or self._session_ended:
                    return  # the session was ended meanwhile: nothing to commit into
                self._batch_out = False
                # Resumed: the loop body finished without raising. Commit (or move failures).
                self._answer(d.delivery_id, batch.failed)
        finally:
            await self._end(session)
        if self._driver.failure is not None:
            raise self._driver.failure

    def stop(self) -> None:
        """Ask ``run`` / ``batches`` to end (non-blocking; safe from a handler). In
        ``batches``, the batch being handled is still committed if its body finishes."""
        self._stopping = True
        self._stop_event.set()
        self._ready.put_nowait(None)

    async def close(self) -> None:
        """Stop consuming (as ``stop``), wait for the commits of handled deliveries (bounded),
        release the queues and stop the machine. Idempotent."""
        if self._closed:
            return
        self.stop()
        if self._mode == "run":
            try:
                async with asyncio.timeout(2 * self._close_timeout_s + 1):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("consumer of %s: run() did not end in time", self.group)
        if not self._session_ended:
            # A ``batches`` loop suspended in its body (close called from it): end it here.
            await self._end(self._session)
        self._closed = True
        if self._executor is not None:
            # Handlers still running were abandoned by _end (their deliveries come again).
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        await self._driver.close()
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sessions --------------------------------------------------------------------------

    async def _wait_ending(self) -> None:
        """If a session is being ended (its commits settling), wait for it."""
        if self._session_ended and self._mode is not None:
            await self._idle.wait()

    def _begin(self, mode: str) -> int:
        if self._closed:
            raise ClientClosed(f"the consumer of {self.group} is closed")
        if self._driver.failure is not None:
            raise self._driver.failure
        if self._mode is not None:
            raise PxqError(f"the consumer of {self.group} is already consuming ({self._mode})")
        self._mode = mode
        self._session += 1
        self._session_ended = False
        self._batch_out = False
        self._idle.clear()
        self._stopping = False
        self._stop_event.clear()
        self._ready = asyncio.Queue()
        self._handling.clear()
        self._revoked.clear()
        return self._session

    @property
    def holder(self) -> str | None:
        """This consumer's incarnation in the lock service (None without one)."""
        return None if self._process is None else self._process.ownership.holder

    async def _acquire(self) -> None:
        if self._process is not None:
            answer = await self._driver.call(Join())
        else:
            answer = await self._driver.call(SetOwnership(queues=self.owned))
        match answer:
            case OwnershipSet() | Joined():
                self._accepting = True
            case OwnershipRejected(code=code, message=message):
                raise RequestFailed(code, message)
            case _:
                raise MachineFailed(f"unexpected answer to SetOwnership: {answer!r}")

    async def _end(self, session: int) -> None:
        """Wait for handlers and commits (bounded), then drop the queues. Runs once per session
        (a finished session's late finalizer does nothing)."""
        if session != self._session or self._session_ended:
            return
        self._session_ended = True
        self._accepting = False
        try:
            tasks = list(self._tasks)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self._close_timeout_s)
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning(
                        "consumer of %s: %d handler(s) still running at stop were cancelled",
                        self.group,
                        len(pending),
                    )
                    await asyncio.gather(*pending, return_exceptions=True)
            await self._settle()
            if not self._driver.closed:
                request: object = Leave() if self._process is not None else SetOwnership(queues=())
                try:
                    async with asyncio.timeout(self._close_timeout_s):
                        answer = await self._driver.call(request)
                    if self._process is not None and not isinstance(answer, Left):
                        log.warning("consumer of %s: leave answered %r", self.group, answer)
                except (TimeoutError, PxqError):
                    pass  # the driver is being closed: the streams die with it
        finally:
            self._ready = asyncio.Queue()
            self._handling.clear()
            self._revoked.clear()
            self._mode = None
            self._idle.set()

    async def _settle(self) -> None:
        """Wait until every live stream has moved its failed items (a ``Retry`` in flight or
        being confirmed) and its commit target is confirmed by its store."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout_s
        while not self._driver.closed:
            behind = [
                v
                for v in self._machine.streams().values()
                if v.phase in SETTLING_PHASES
                or (v.phase != "stopped" and v.commit_target > v.committed)
            ]
            if not behind:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "consumer of %s: %d commit(s) unconfirmed at stop (delivered again later)",
                    self.group,
                    len(behind),
                )
                return
            self._driver.progress.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._driver.progress.wait()
            except TimeoutError:
                pass

    # -- the HANDLER channel ---------------------------------------------------------------

    def _on_handler(self, msg: object) -> None:
        if not isinstance(msg, Deliver) or not self._accepting:
            return  # not accepting: the queues are being dropped, the delivery comes again
        self._handling[msg.delivery_id] = msg
        if self._mode == "run":
            task = asyncio.get_running_loop().create_task(self._handle(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._mode == "batches":
            self._ready.put_nowait(msg)

    def _revoke(self, topic: str, queue: int) -> None:
        """``queue`` of ``topic`` was given up: its deliveries not answered yet are revoked."""
        for d in self._handling.values():
            if d.topic == topic and d.queue == queue:
                self._revoked.add(d.delivery_id)

    def _forget_delivery(self, delivery_id: int) -> None:
        self._handling.pop(delivery_id, None)
        self._revoked.discard(delivery_id)

    def _answer(self, delivery_id: int, failed: tuple[int, ...]) -> None:
        self._forget_delivery(delivery_id)
        self._driver.feed(
            Received(src=HANDLER, msg=Handled(delivery_id=delivery_id, failed=failed))
        )

    async def _handle(self, d: Deliver) -> None:
        by_key: dict[bytes, list[StoredItem]] = {}
        keyless: list[list[StoredItem]] = []
        for it in d.items:
            if it.key:
                by_key.setdefault(it.key, []).append(it)
            else:
                keyless.append([it])  # no key, no order to keep: each item on its own
        failed: list[int] = []

        async def chain(items: list[StoredItem]) -> None:
            for it in items:
                async with self._sem:
                    if d.delivery_id in self._revoked:
                        return  # its queue was given up: the rest is the next owner's
                    ok = await self._invoke(_item(d, it))
                if not ok:
                    failed.append(it.offset)

        await asyncio.gather(*(chain(items) for items in (*by_key.values(), *keyless)))
        self._answer(d.delivery_id, tuple(sorted(failed)))

    async def _invoke(self, item: Item) -> bool:
        handler = self._handler
        if handler is None:
            return False
        try:
            if self._handler_async:
                result = handler(item)
            else:
                call = functools.partial(contextvars.copy_context().run, handler, item)
                result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.info(
                "handler failed on %s/%d@%d (attempt %d): %r",
                item.topic,
                item.queue,
                item.offset,
                item.attempt,
                exc,
            )
            return False
        return True

    def _note_denied(self, permission: str) -> None:
        if permission not in self.denied:
            self.denied.append(permission)
            log.warning(
                "consumer of %s: the cluster refused its principal the permission %s",
                self.group,
                permission,
            )

    def _on_trace(self, event: TraceEvent) -> None:
        if self.trace_listener is not None:
            self.trace_listener(event)
        if event.kind in ("own.start", "own.stop"):
            # Ownership changes, once each, on their named logger with the facts as fields.
            fields = dict(event.fields)
            if event.kind == "own.stop":
                self._revoke(str(fields.get("topic")), int(fields.get("queue") or 0))
            why = fields.get("why")
            log_event(
                ownership_log,
                logging.INFO,
                "consumer %s of %s %s %s/%s (token %s%s)",
                fields.get("holder"),
                self.group,
                "took" if event.kind == "own.start" else "gave up",
                fields.get("topic"),
                fields.get("queue"),
                fields.get("token"),
                "" if why is None else f", {OWNERSHIP_WHY.get(str(why), why)!s}",
                event=event.kind,
                **fields,
            )
        elif event.kind == "consumer.stopped":
            fields = dict(event.fields)
            topic, queue, code = fields.get("topic"), fields.get("queue"), fields.get("code")
            log.warning("consumer of %s stopped %s/%s: %s", self.group, topic, queue, code)
            self.stopped_streams.append((str(topic), int(queue or 0), str(code)))
            if code == PERMISSION_DENIED:
                self._note_denied(read_permission(str(topic), self.group))
        elif event.kind == "own.lock_error":
            if dict(event.fields).get("code") == PERMISSION_DENIED:
                self._note_denied(LOCKS)
        elif event.kind == "consumer.handle_timeout":
            fields = dict(event.fields)
            log.warning(
                "consumer of %s: handler timed out on %s/%s (its items count as failed)",
                self.group,
                fields.get("topic"),
                fields.get("queue"),
            )
