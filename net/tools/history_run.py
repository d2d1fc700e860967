"""A real-runtime queue workload that records a Jepsen-style history for the queue checkers.

This module owns ``HistoryRun``: against a running cluster (``pxq cluster up``, or any
cluster a configuration file describes), it drives ``producers`` concurrent producer tasks
through one ``pxq.AsyncClient`` and one ``AsyncConsumer`` per consumer group (each owning
every queue of the topic), and records every operation in the format the queue checkers read
(``pxq/check/queue.py``), as ``sim/queue_workload.py`` records a simulated run:

- ``enqueue``: each producer task is a Jepsen process with one call in flight. ``invoke``
  (``value`` = a unique msg id, ``topic``, ``queue``, ``key``, ``producer`` = the run id: one
  client, one producer machine), then ``ok`` with the receipt's
  ``offset``, ``fail`` (``EnqueueFailed``: definitely not enqueued; ``reason`` = its code) or
  ``info`` (``OutcomeUnknown`` or any other client error: maybe enqueued). After an ``info``
  the task continues as a new process id. The msg id is the payload's prefix up to ``|``.
- ``deliver`` and ``handle`` (invoke + ok each, ``outcome`` ``"ok"``), process = the consumer's
  name, for every item a consumer sees, with ``group``, ``topic``, ``queue``, ``offset`` and
  ``attempt``. Consumers read with ``batches()``: a batch is one delivery of one queue in
  offset order, recorded item by item as it arrives. (``run(handler)`` hands items of
  different keys to concurrent handler calls, so their calls would not be in offset order.)
- ``own_start`` / ``own_stop`` (invoke + ok, process = the consumer's name): a queue taken or
  given up through the lock service (``group``, ``topic``, ``queue``, ``token``, ``holder``,
  ``why``): the queue checkers excuse the redeliveries that follow, and check the ownership.
- ``consumer_crash`` / ``consumer_start`` (nemesis, invoke + info): a consumer that ended by
  itself (its machine failed, ownership refused) is replaced by a new one, which starts again
  from the group's committed cursor.
- ``seek`` (``replay``): a rewind of one group on every queue by ``back_ms``, a process of its
  own; the ``ok`` completion carries the ``positions`` set (``pxq.check.queue``'s replay
  check then wants every item from there on delivered again).
- ``store_read`` (``read_store``, after the drain): Jepsen's final read of every queue.
- ``nemesis(f, value)``: the test's own actions (``kill``, ``start`` of a node...), recorded
  with the same wall clock so a test can split the history at them; the checkers ignore them.

``time_ms`` is wall-clock Unix milliseconds. The run assumes a topic nobody else writes or
consumes and whose queues start empty (the checkers expect every lane to start at offset 0);
``start`` refuses a queue that ever held items (its end offset is above 0).

Use::

    async with HistoryRun(config, writer) as run:   # connects, starts producers and consumers
        await asyncio.sleep(5)                     # (kill and restart nodes meanwhile)
        await run.stop_producing()
        await run.drain()
    results = check_history(writer.ops, config, run.topic, run.groups)

or ``python -m net.tools.history_run --config cluster.toml --seconds 5 --out history.jsonl``, which
also runs ``total-queue`` and ``queue-order`` on the result (exit status 1 if either fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from net.client.api import AsyncClient, resolve_config
from net.client.consumer import AsyncConsumer
from net.client.types import EnqueueFailed, Item, OutcomeUnknown, PxqError, RequestFailed
from pxq.check.history import JSON, NEMESIS, HistoryWriter, Op
from pxq.check.queue import (
    OWN_START,
    OWN_STOP,
    READ,
    SEEK,
    Subscriptions,
    check_queue_order,
    check_total_queue,
)
from pxq.check.result import CheckResult
from pxq.config import ClusterConfig, TopicConfig
from pxq.effects import TraceEvent
from pxq.routing import queue_of

SEPARATOR: Final = b"|"
"""Ends the msg id at the start of every payload."""
CLOSE_MARGIN_S: Final = 2.0
"""Extra time, beyond the enqueue deadline, that stopping waits for a producer's last call."""
RESTART_BACKOFF_S: Final = 0.2
READ_PAGE_ITEMS: Final = 1000
READ_PAGES_MAX: Final = 10_000
"""A final read of one queue stops with a failure after this many pages."""


def wall_ms() -> int:
    """Wall-clock Unix time in integer milliseconds (the history's ``time_ms``)."""
    return time.time_ns() // 1_000_000


def msg_id_of(payload: bytes) -> str:
    """The msg id a payload starts with (everything before the first ``|``)."""
    return payload.split(SEPARATOR, 1)[0].decode("ascii", "replace")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How a ``HistoryRun`` drives the cluster."""

    topic: str | None = None
    """The topic to use; None: the configuration's first topic."""
    groups: tuple[str, ...] | None = None
    """The consumer groups to run (one consumer each); None: every group of the topic."""
    producers: int = 8
    """Producer tasks (Jepsen processes), each with one enqueue in flight."""
    keys: int = 1000
    """Distinct keys the producers pick from at random."""
    value_bytes: int = 64
    """Payload size (the msg id, the separator, then padding)."""
    pause_ms: int = 0
    """A producer task's pause between two calls (0: none)."""
    request_timeout_ms: int = 500
    """One store request without an answer is retried after this (producer and consumers)."""
    call_timeout_ms: int = 5000
    """An enqueue's overall deadline (then ``OutcomeUnknown``)."""
    drain_timeout_s: float = 15.0
    """The longest ``drain`` waits for every acknowledged item to reach every group."""
    quiet_ms: int = 300
    """After that, ``drain`` waits until no delivery came for this long (late duplicates)."""
    consumer_restarts_max: int = 10
    """Consumers replaced per group at most; after that the group stops consuming."""
    check_empty: bool = True
    """``start`` refuses a topic whose queues already hold items (the checkers need offset 0)."""
    seed: int | None = None
    """Seed of the key choice (None: random)."""
    run_id: str = ""
    """Prefix of every msg id (default: derived from the wall clock), so runs never collide."""

    def __post_init__(self) -> None:
        for name in ("producers", "keys", "value_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.pause_ms < 0 or self.quiet_ms < 0 or self.consumer_restarts_max < 0:
            raise ValueError("pause_ms, quiet_ms, consumer_restarts_max: must be >= 0")
        if self.drain_timeout_s <= 0:
            raise ValueError("drain_timeout_s: must be > 0")


@dataclass(slots=True)
class RunCounts:
    """What a run did so far (the history has the details)."""

    invoked: int = 0
    ok: int = 0
    fail: int = 0
    info: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    """Per group."""
    consumer_restarts: dict[str, int] = field(default_factory=dict)
    """Per group."""
    drained: bool | None = None
    """Whether ``drain`` saw every acknowledged item reach every group (None: not drained)."""
    drain_s: float | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "invoked": self.invoked,
            "ok": self.ok,
            "fail": self.fail,
            "info": self.info,
            "deliveries": dict(self.deliveries),
            "consumer_restarts": dict(self.consumer_restarts),
            "drained": self.drained,
            "drain_s": self.drain_s,
        }


class HistoryRun:
    """Producers and consumers over a running cluster, recording into ``writer``.

    Not thread-safe; everything runs on the event loop that called ``start``."""

    def __init__(
        self,
        config: ClusterConfig,
        writer: HistoryWriter,
        options: RunOptions | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.options = options or RunOptions()
        topic = self._topic_config()
        self.topic = topic.name
        self.queues = topic.queues
        self.groups = self._group_names(topic)
        self.counts = RunCounts(
            deliveries=dict.fromkeys(self.groups, 0),
            consumer_restarts=dict.fromkeys(self.groups, 0),
        )
        self.run_id = self.options.run_id or f"r{wall_ms() % 100_000_000}"
        seed = self.options.seed
        self._rng = random.Random(seed if seed is not None else os.urandom(16))
        self._client: AsyncClient | None = None
        self._producing = False
        self._consuming = False
        self._producer_tasks: list[asyncio.Task[None]] = []
        self._consumer_tasks: list[asyncio.Task[None]] = []
        self._consumers: dict[str, AsyncConsumer] = {}
        self._next_process = 0
        self._acked: set[str] = set()
        self._seen: dict[str, set[str]] = {g: set() for g in self.groups}
        self._last_delivery = time.monotonic()
        self._progress = asyncio.Event()

    # -- setup -------------------------------------------------------------------------------

    def _topic_config(self) -> TopicConfig:
        name = self.options.topic
        if name is None:
            if not self.config.topics:
                raise ValueError("the configuration has no topic")
            return self.config.topics[0]
        topic = self.config.base_topic(name)
        if topic is None:
            raise ValueError(f"the configuration has no base topic {name!r}")
        return topic

    def _group_names(self, topic: TopicConfig) -> tuple[str, ...]:
        names = tuple(cg.name for cg in topic.consumer_groups)
        if self.options.groups is None:
            return names
        for g in self.options.groups:
            if g not in names:
                raise ValueError(f"topic {topic.name!r} has no consumer group {g!r}")
        return tuple(self.options.groups)

    def subscriptions(self) -> Subscriptions:
        """What each running group reads, as ``check_total_queue`` wants it."""
        return subscriptions(self.config, self.topic, self.groups)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the run is not started")
        return self._client

    async def start(self) -> None:
        """Connect, check the topic is empty (``check_empty``), start consumers and producers."""
        if self._client is not None:
            raise RuntimeError("the run was started already")
        o = self.options
        self._client = await AsyncClient.connect(
            self.config,
            name=f"history-{self.run_id}",
            request_timeout_ms=o.request_timeout_ms,
            call_timeout_ms=o.call_timeout_ms,
        )
        if o.check_empty and self.groups:
            # By the end offset, not by reading: items already consumed and removed by
            # retention are gone, yet the queue's offsets no longer start at 0.
            for state in await self.client.groups(self.groups[0], self.topic):
                if state.end > 0:
                    raise RuntimeError(
                        f"queue {state.queue} of {self.topic!r} held items already (end offset "
                        f"{state.end}): the history checkers need queues that never held any"
                    )
        self._consuming = True
        for group in self.groups:
            self._consumer_tasks.append(asyncio.create_task(self._consume(group)))
        self._producing = True
        for task_no in range(o.producers):
            self._producer_tasks.append(asyncio.create_task(self._produce(task_no)))

    # -- recording ---------------------------------------------------------------------------

    def nemesis(self, f: str, value: JSON = None, **extra: JSON) -> None:
        """Record one of the test's own actions (invoke + info of the ``nemesis`` process)."""
        now = wall_ms()
        self.writer.invoke(now, NEMESIS, f, value, **extra)
        self.writer.info(now, NEMESIS, f, value, **extra)

    def _new_process(self) -> int:
        process = self._next_process
        self._next_process += 1
        return process

    # -- producing ---------------------------------------------------------------------------

    async def _produce(self, task_no: int) -> None:
        o = self.options
        process = self._new_process()
        seq = 0
        while self._producing:
            seq += 1
            msg_id = f"{self.run_id}.{task_no}.{process}.{seq}"
            key = f"k{self._rng.randrange(o.keys)}"
            pad = max(0, o.value_bytes - len(msg_id) - len(SEPARATOR))
            payload = msg_id.encode() + SEPARATOR + b"." * pad
            queue = queue_of(key.encode(), self.queues)
            extra: dict[str, JSON] = {
                "topic": self.topic,
                "queue": queue,
                "key": key,
                "producer": self.run_id,  # one client, one producer machine
            }
            w = self.writer
            w.invoke(wall_ms(), process, "enqueue", msg_id, **extra)
            self.counts.invoked += 1
            try:
                receipt = await self.client.enqueue(self.topic, payload, key=key)
            except EnqueueFailed as exc:
                w.fail(wall_ms(), process, "enqueue", msg_id, **extra, reason=exc.code)
                self.counts.fail += 1
            except OutcomeUnknown as exc:
                w.info(wall_ms(), process, "enqueue", msg_id, **extra, reason=exc.reason)
                self.counts.info += 1
                process = self._new_process()
            except PxqError as exc:  # closed client, failed machine: maybe enqueued
                w.info(wall_ms(), process, "enqueue", msg_id, **extra, reason=repr(exc))
                self.counts.info += 1
                process = self._new_process()
            else:
                # The receipt's queue goes into the history as such: a queue other than the
                # key's would make the history unreadable, loudly.
                extra["queue"] = receipt.queue
                w.ok(wall_ms(), process, "enqueue", msg_id, **extra, offset=receipt.offset)
                self.counts.ok += 1
                self._acked.add(msg_id)
            if o.pause_ms:
                await asyncio.sleep(o.pause_ms / 1000)

    async def stop_producing(self) -> None:
        """Stop every producer task after its call in flight (bounded by the enqueue deadline;
        a call still open then is abandoned: its invoke stays uncompleted, an unknown)."""
        self._producing = False
        tasks = self._producer_tasks
        if not tasks:
            return
        timeout = self.options.call_timeout_ms / 1000 + CLOSE_MARGIN_S
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self._producer_tasks = []
        for result in results:
            if isinstance(result, Exception):
                raise RuntimeError("a producer task failed") from result

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, group: str) -> None:
        """One consumer of ``group`` at a time, replaced (bounded) when it ends by itself."""
        incarnation = 0
        while self._consuming:
            name = f"{group}-c{incarnation}"
            consumer = self.client.consumer(group, self.topic)
            consumer.trace_listener = functools.partial(self._record_ownership, name)
            self._consumers[group] = consumer
            reason = "ended"
            try:
                async for batch in consumer.batches():
                    for item in batch:
                        self._record_delivery(name, group, item)
            except PxqError as exc:
                reason = repr(exc)
            finally:
                await consumer.close()
            if not self._consuming:
                return
            restarts = self.counts.consumer_restarts
            if restarts[group] >= self.options.consumer_restarts_max:
                self.nemesis("consumer_crash", name, group=group, reason=f"{reason}; given up")
                return
            restarts[group] += 1
            self.nemesis("consumer_crash", name, group=group, reason=reason)
            await asyncio.sleep(RESTART_BACKOFF_S)
            incarnation += 1
            self.nemesis("consumer_start", f"{group}-c{incarnation}", group=group)

    def _record_ownership(self, consumer: str, event: TraceEvent) -> None:
        """A queue taken or given up through the lock service, as ``own_start`` /
        ``own_stop`` (invoke + ok) of the consumer, with the lock's fencing ``token`` and
        ``holder`` (and ``why`` for a stop): what was delivered and not committed comes
        again, from the queue's next owner."""
        if event.kind not in ("own.start", "own.stop"):
            return
        f = OWN_START if event.kind == "own.start" else OWN_STOP
        extra: dict[str, JSON] = {
            k: v
            for k, v in event.fields
            if k in ("group", "topic", "queue", "token", "holder", "why")
            and isinstance(v, str | int)
        }
        now = wall_ms()
        self.writer.invoke(now, consumer, f, consumer, **extra)
        self.writer.ok(now, consumer, f, consumer, **extra)

    def _record_delivery(self, consumer: str, group: str, item: Item) -> None:
        msg_id = msg_id_of(item.payload)
        extra: dict[str, JSON] = {
            "group": group,
            "topic": item.topic,
            "queue": item.queue,
            "offset": item.offset,
            "attempt": item.attempt,
        }
        now = wall_ms()
        w = self.writer
        w.invoke(now, consumer, "deliver", msg_id, **extra)
        w.ok(now, consumer, "deliver", msg_id, **extra)
        w.invoke(now, consumer, "handle", msg_id, **extra)
        w.ok(now, consumer, "handle", msg_id, **extra, outcome="ok")
        self.counts.deliveries[group] += 1
        self._seen[group].add(msg_id)
        self._last_delivery = time.monotonic()
        self._progress.set()

    def missing(self) -> dict[str, int]:
        """Per group: acknowledged items it has not been delivered yet."""
        return {g: len(self._acked - self._seen[g]) for g in self.groups}

    async def drain(self) -> bool:
        """Wait (bounded by ``drain_timeout_s``) until every acknowledged item reached every
        group, then until no delivery came for ``quiet_ms``. Returns whether it all arrived."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.options.drain_timeout_s
        quiet_s = self.options.quiet_ms / 1000
        complete = False
        while loop.time() < deadline:
            complete = not any(self.missing().values())
            idle = time.monotonic() - self._last_delivery
            if complete and idle >= quiet_s:
                break
            self._progress.clear()
            wait = quiet_s - idle if complete else deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min(wait, deadline - loop.time()))):
                    await self._progress.wait()
        complete = not any(self.missing().values())
        self.counts.drained = complete
        self.counts.drain_s = round(loop.time() - started, 3)
        return complete

    # -- replay and final reads --------------------------------------------------------------

    async def replay(self, group: str, back_ms: int) -> None:
        """Rewind ``group`` by ``back_ms`` on every queue it reads (``AsyncClient.seek``), as a
        ``seek`` op of a process of its own: ``ok`` with the ``positions`` it set, ``fail``
        (``RequestFailed``: not applied) or ``info``. Its consumer replays from there."""
        if group not in self.groups:
            raise ValueError(f"the run has no consumer group {group!r}")
        process = self._new_process()
        extra: dict[str, JSON] = {
            "group": group,
            "topic": self.topic,
            "queue": None,
            "back_ms": back_ms,
        }
        w = self.writer
        w.invoke(wall_ms(), process, SEEK, None, **extra)
        try:
            result = await self.client.seek(self.topic, group, back_ms=back_ms)
        except RequestFailed as exc:
            w.fail(wall_ms(), process, SEEK, None, **extra, reason=exc.code)
        except PxqError as exc:
            w.info(wall_ms(), process, SEEK, None, **extra, reason=repr(exc))
        else:
            positions: list[JSON] = [[q, c] for q, c in sorted(result.positions.items())]
            w.ok(wall_ms(), process, SEEK, None, **extra, positions=positions)

    async def read_store(self) -> None:
        """Jepsen's final read: every item each queue of the topic holds, read from its master
        (``peek`` from offset 0, as the first group sees them), one ``store_read`` op per queue
        (``pxq.check.queue``), so the checkers tell an item no replica holds (lost) from one
        the consumers did not get (undelivered). A read that fails is recorded ``fail``: the
        checkers then know less, and say so."""
        group = self.groups[0]
        for queue in range(self.queues):
            process = self._new_process()
            extra: dict[str, JSON] = {"topic": self.topic, "queue": queue}
            self.writer.invoke(wall_ms(), process, READ, None, **extra)
            items: list[JSON] = []
            offset = 0
            try:
                for _ in range(READ_PAGES_MAX):
                    page = await self.client.peek(
                        self.topic, group, queue, offset=offset, count=READ_PAGE_ITEMS
                    )
                    if not page:
                        break
                    items.extend([it.offset, msg_id_of(it.payload)] for it in page)
                    offset = page[-1].offset + 1
                else:
                    raise RequestFailed("too_long", f"more than {READ_PAGES_MAX} pages")
            except PxqError as exc:
                self.writer.fail(wall_ms(), process, READ, None, **extra, reason=repr(exc))
                continue
            self.writer.ok(
                wall_ms(), process, READ, None, **extra, first=0, end=offset, items=items, tail=True
            )

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop producing (if still), stop the consumers, close the client. Idempotent."""
        if self._client is None:
            return
        await self.stop_producing()
        self._consuming = False
        for consumer in list(self._consumers.values()):
            consumer.stop()
        if self._consumer_tasks:
            _, pending = await asyncio.wait(self._consumer_tasks, timeout=CLOSE_MARGIN_S * 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._consumer_tasks, return_exceptions=True)
        self._consumer_tasks = []
        await self._client.close()
        self._client = None

    async def __aenter__(self) -> HistoryRun:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- checking -----------------------------------------------------------------------------------


def subscriptions(config: ClusterConfig, topic: str, groups: Sequence[str]) -> Subscriptions:
    """``groups`` -> ``topic`` -> the queues each reads (for ``check_total_queue``)."""
    info = config.base_topic(topic)
    if info is None:
        raise ValueError(f"no base topic {topic!r}")
    out: dict[str, dict[str, list[int]]] = {}
    for g in groups:
        cg = info.group(g)
        if cg is None:
            raise ValueError(f"topic {topic!r} has no consumer group {g!r}")
        out[g] = {topic: [q for q in range(info.queues) if cg.subscribes_queue(q)]}
    return out


def check_history(
    ops: Sequence[Op], config: ClusterConfig, topic: str, groups: Sequence[str]
) -> list[CheckResult]:
    """``total-queue`` (duplicates allowed and counted) and ``queue-order`` of a run."""
    return [
        check_total_queue(ops, subscriptions(config, topic, groups), duplicates_allowed=True),
        check_queue_order(ops),
    ]


@dataclass(frozen=True, slots=True)
class RecordedRun:
    ops: list[Op]
    counts: RunCounts
    topic: str
    groups: tuple[str, ...]


async def record(
    config: ClusterConfig,
    out: Path,
    seconds: float,
    options: RunOptions | None = None,
) -> RecordedRun:
    """Run for ``seconds``, stop producing, drain, and write the history to ``out`` (JSONL)."""
    with out.open("w", encoding="utf-8", buffering=1) as stream:
        writer = HistoryWriter(stream)
        run = HistoryRun(config, writer, options)
        try:
            await run.start()
            await asyncio.sleep(seconds)
            await run.stop_producing()
            await run.drain()
        finally:
            await run.close()
    return RecordedRun(writer.ops, run.counts, run.topic, run.groups)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m net.tools.history_run``: record a run against a running cluster and check it."""
    parser = argparse.ArgumentParser(prog="python -m net.tools.history_run", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="the cluster file")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to produce")
    parser.add_argument("--out", type=Path, default=Path("history.jsonl"), help="JSONL output")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--topic", default=None)
    parser.add_argument("--group", action="append", default=None, help="a consumer group")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds: must be in (0, 3600]")
    config = resolve_config(args.config)
    options = RunOptions(
        topic=args.topic,
        groups=None if args.group is None else tuple(args.group),
        producers=args.producers,
    )
    run = asyncio.run(record(config, args.out, args.seconds, options))
    print(json.dumps(run.counts.to_json()))
    results = check_history(run.ops, config, run.topic, run.groups)
    for result in results:
        print(result.summary)
    print(f"history: {args.out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
