"""The pxq client library: ``AsyncClient`` (asyncio) and ``Client`` (blocking), re-exported as
``pxq.AsyncClient`` and ``pxq.Client``.

This module owns the application-facing API over the pure client machines: an
``AsyncClient`` holds the cluster configuration, one connection per store replica (shared by
everything it runs), one ``Producer`` machine (made on the first enqueue) and any number of
consumers (``net.client.consumer``), plus the admin calls (``seek``, ``peek``) that follow
redirects themselves. Routing, batching, dedupe ids, retries, redirects, commits, retry
levels and rate limits all happen in the machines (``pxq.producer``, ``pxq.consumer``).

Example::

    import asyncio
    import pxq

    async def main() -> None:
        async with await pxq.AsyncClient.connect("cluster.toml") as client:
            receipt = await client.enqueue("events", b"hello", key="user-42")
            print(receipt.queue, receipt.offset)

            async def handle(item: pxq.Item) -> None:
                print(item.key, item.payload)       # raise to send it to the retry level

            async with client.consumer("default") as consumer:
                task = asyncio.create_task(consumer.run(handle))
                await asyncio.sleep(1)
                consumer.stop()
                await task

    asyncio.run(main())

Semantics an application must know:

* ``enqueue`` returns a ``Receipt`` once the item is durable on a majority. It raises
  ``EnqueueFailed`` when the item was definitely not enqueued and ``OutcomeUnknown`` when it
  may have been (timeouts, a cluster down, a master lost mid-request): retrying the latter
  may duplicate the item. Retries *inside* the client reuse the batch's dedupe id, so they
  never duplicate. Items with the same key keep their order (among acknowledged ones).
* Concurrent ``enqueue`` calls (and ``enqueue_many``) are batched per queue by the producer
  machine (``[batching]`` of the configuration: ``linger_ms``, ``items_max``, ``bytes_max``).
* Registers (``register_read``, ``register_write``, ``register_cas``): linearizable
  compare-and-set registers of the lock service (``[locks]``), small values beside the
  queue; a write or cas may be fenced by a lock's token (``net.client.registers``).
* Consumers deliver at least once: an item is delivered again if its consumer stops before
  the commit of its delivery was confirmed, and a handler that failed is retried from the
  retry level. Handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

from net.client.admin import QueueState, Redriven, group_targets, queue_states, redrive
from net.client.consumer import AsyncConsumer, Batch, Handler
from net.client.driver import CALL_TIMEOUT_MARGIN_S, MachineDriver, NodePool
from net.client.registers import (
    Fence,
    check_expected,
    check_fence,
    check_key,
    check_value,
    register_call,
    register_value,
)
from net.client.types import (
    CasMismatch,
    ClientClosed,
    ClusterMismatch,
    ConfigSource,
    EnqueueFailed,
    Item,
    Key,
    MachineFailed,
    OutcomeUnknown,
    PermissionDenied,
    PxqError,
    Receipt,
    RegisterValue,
    RequestFailed,
    SeekResult,
    headers_view,
)
from net.config import NetConfig
from net.errors import CallOutcomeUnknown, MetadataMismatch, NetError
from pxq.config import ClusterConfig, default_config, load_config
from pxq.consumer.messages import OwnedQueue
from pxq.consumer.ownership import ownership_settings
from pxq.consumer.settings import consumer_settings
from pxq.headers import Headers, normal_headers
from pxq.lock.messages import (
    CasRegister,
    LockError,
    LockRedirect,
    ReadRegister,
    RegisterOk,
    WriteRegister,
    group_of_key,
)
from pxq.producer.machine import Producer
from pxq.producer.messages import Produce, Produced, ProduceFailed, ProduceUnknown
from pxq.producer.settings import producer_settings
from pxq.routing import Router, backoff_ms
from pxq.store.messages import (
    Get,
    GetOk,
    Seek,
    SeekOk,
    SeekPreview,
    StoredItem,
    StoreError,
    StoreRedirect,
)

__all__ = [
    "AsyncClient",
    "AsyncConsumer",
    "Batch",
    "CasMismatch",
    "ClientClosed",
    "ClusterMismatch",
    "ConfigSource",
    "EnqueueFailed",
    "Handler",
    "Item",
    "Key",
    "MachineFailed",
    "OutcomeUnknown",
    "PermissionDenied",
    "PxqError",
    "QueueState",
    "Receipt",
    "Redriven",
    "RegisterValue",
    "RequestFailed",
    "SeekResult",
    "resolve_config",
]


DEFAULT_CONFIG_PATH = Path(".pxq") / "cluster.toml"
"""Where ``resolve_config(None)`` looks first, relative to the working directory."""
ADMIN_ATTEMPTS_MAX = 16
"""Attempts of one admin request (redirects and timeouts included) before giving up."""
ADMIN_BACKOFF_MS = 20
ADMIN_BACKOFF_MAX_MS = 500
PEEK_ITEMS_MAX = 10_000
PEEK_BYTES_MAX = 16 * 1024 * 1024
SETTLE_TIMEOUT_MARGIN_S = 1.0


def resolve_config(config: ConfigSource = None) -> ClusterConfig:
    """The cluster configuration to use: ``config`` itself, the TOML file at that path, or
    for None ``./.pxq/cluster.toml`` if it exists, else the embedded default (a local
    3-replica store on 127.0.0.1:7101-7103, as ``pxq cluster up`` starts it). Raises
    ``pxq.config.ConfigError`` for an unreadable or invalid file."""
    if isinstance(config, ClusterConfig):
        return config
    if config is None:
        if DEFAULT_CONFIG_PATH.is_file():
            return load_config(DEFAULT_CONFIG_PATH)
        default = default_config()
        # Its TLS directory is where `pxq cluster up` would create it: beside the file.
        tls = dataclasses.replace(
            default.tls, dir=str(DEFAULT_CONFIG_PATH.parent / default.tls.dir)
        )
        return dataclasses.replace(default, tls=tls)
    return load_config(config)


def _need_str(name: str, value: object) -> None:
    if type(value) is not str:
        raise TypeError(f"{name}: expected str, got {type(value).__name__}")


def _need_int(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if type(value) is not int:  # bool is not an int here
        expected = "int or None" if optional else "int"
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}")


def _key_bytes(key: Key) -> bytes:
    """The stored key: None is no key (empty: the producer spreads keyless items)."""
    if key is None:
        return b""
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"key: expected bytes, str or None, got {type(key).__name__}")


def _payload_bytes(payload: bytes | bytearray | memoryview) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    hint = " (encode str payloads first, e.g. text.encode())" if isinstance(payload, str) else ""
    raise TypeError(f"payload: expected bytes, got {type(payload).__name__}{hint}")


def _receipt(reply: object) -> Receipt:
    if type(reply) is Produced:  # the common case, without the match below
        return Receipt(topic=reply.topic, queue=reply.queue, offset=reply.offset)
    match reply:
        case Produced(topic=topic, queue=queue, offset=offset):
            return Receipt(topic=topic, queue=queue, offset=offset)
        case ProduceFailed(code="permission_denied", message=message):
            raise PermissionDenied(message)
        case ProduceFailed(code=code, message=message):
            raise EnqueueFailed(code, message)
        case ProduceUnknown(reason=reason):
            raise OutcomeUnknown(reason)
        case _:
            raise MachineFailed(f"unexpected producer reply {reply!r}")


class AsyncClient:
    """A connection to one pxq cluster, for producing, consuming and admin calls.

    Create it with ``await AsyncClient.connect(...)`` inside a running event loop; close it
    with ``await client.close()`` or ``async with``. Connections to store replicas open
    lazily on first use and are reused. Not thread-safe: use it from its event loop only
    (``pxq.Client`` is the blocking, thread-safe wrapper)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        name: str = "pxq-client",
        request_timeout_ms: int | None = None,
        call_timeout_ms: int | None = None,
        producer_options: Mapping[str, int] | None = None,
        net_config: NetConfig | None = None,
    ) -> None:
        _need_str("name", name)
        _need_int("request_timeout_ms", request_timeout_ms, optional=True)
        _need_int("call_timeout_ms", call_timeout_ms, optional=True)
        self.config = config
        self.name = name
        self._rng = random.Random(int.from_bytes(os.urandom(16), "big"))
        timeouts: dict[str, int] = {}
        if request_timeout_ms is not None:
            timeouts["request_timeout_ms"] = request_timeout_ms
        self._timeouts = timeouts
        producer: dict[str, int] = dict(timeouts)
        if call_timeout_ms is not None:
            producer["call_timeout_ms"] = call_timeout_ms
        producer.update(producer_options or {})
        # Validate now (a bad option is a ValueError at connect, not at the first enqueue).
        self._producer_settings = producer_settings(config, **producer)
        self._request_timeout_ms = self._producer_settings.request_timeout_ms
        self._call_timeout_ms = self._producer_settings.call_timeout_ms
        self._pool = NodePool.for_config(config, net_config)  # stores and lock replicas
        self._router = Router(
            {s.name: s.nodes for s in config.stores}, {s.name: s.groups for s in config.stores}
        )
        self._producer: MachineDriver | None = None
        self._verified = False
        self._verifying: asyncio.Future[str | None] | None = None
        self._verify_attempts = 0
        # Calls made before the cluster was verified queue here, in call order (asyncio.Lock
        # is FIFO), so that the producer still sees them in the order they were made.
        self._gate = asyncio.Lock()
        self._gate_waiters = 0
        self._consumers: set[AsyncConsumer] = set()
        self._consumer_count = 0
        self._closed = False

    @classmethod
    async def connect(
        cls,
        config: ConfigSource = None,
        *,
        name: str = "pxq-client",
        request_timeout_ms: int | None = None,
        call_timeout_ms: int | None = None,
        producer_options: Mapping[str, int] | None = None,
        net_config: NetConfig | None = None,
    ) -> AsyncClient:
        """A client of the cluster described by ``config`` (see ``resolve_config``).

        ``request_timeout_ms``: one attempt of any store request without an answer is
        retried after this (default 1000). ``call_timeout_ms``: overall deadline of one
        enqueue (default 10000). ``producer_options``: other ``ProducerSettings`` fields
        (``linger_ms``, ``batch_items_max``, ``retries_max``, ``pending_max``...).
        Connections open lazily, so this does not fail when the cluster is down."""
        return cls(
            resolve_config(config),
            name=name,
            request_timeout_ms=request_timeout_ms,
            call_timeout_ms=call_timeout_ms,
            producer_options=producer_options,
            net_config=net_config,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def unreachable(self) -> dict[str, str]:
        """Nodes whose last connection attempt failed, with why (each reason names the
        address): what a command warns about when nothing answers."""
        return dict(self._pool.failures)

    async def verify(self) -> str | None:
        """Check, on one connection, that the cluster reached is the one of this client's
        file: same name and id (else the node refuses the connection) and the same routing
        metadata (else ``ClusterMismatch``, naming what differs, and every later call raises
        it too). Returns the node reached, or None when no node could be reached within the
        request timeout (``unreachable()`` says why). Calls do this by themselves before
        their first request; commands call it first to report problems early."""
        if self._closed:
            raise ClientClosed("the client is closed")
        mismatch = self._pool.mismatch
        if mismatch is not None:
            raise ClusterMismatch(str(mismatch), mismatch.differences)
        if self._verifying is None:
            # One check shared by every caller waiting for it: they resume in call order.
            self._verifying = asyncio.ensure_future(self._verify_once())
        verifying = self._verifying
        try:
            return await asyncio.shield(verifying)
        finally:
            if verifying.done() and self._verifying is verifying and not self._verified:
                self._verifying = None  # nothing reached (or refused): check again next time

    async def _verify_once(self) -> str | None:
        self._verify_attempts += 1
        nodes = [info.node for info in self.config.all_nodes()]
        try:
            node = await self._pool.connect_any(nodes, self._request_timeout_ms / 1000)
        except MetadataMismatch as exc:
            raise ClusterMismatch(str(exc), exc.differences) from None
        self._verified = node is not None
        return node

    # -- producing -------------------------------------------------------------------------

    def _producer_driver(self) -> MachineDriver:
        if self._closed:
            raise ClientClosed("the client is closed")
        driver = self._producer
        if driver is None or (driver.closed and driver.failure is None):
            rng = random.Random(self._rng.getrandbits(128))
            machine = Producer(self._producer_settings, rng, name=self.name)
            driver = MachineDriver(
                machine,
                self._pool,
                request_timeout_ms=self._request_timeout_ms,
                name="producer",
                report_undelivered=True,
            )
            self._producer = driver
        return driver

    async def enqueue(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        key: Key = None,
        kind: str = "",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Receipt:
        """Enqueue one item on ``topic`` and wait until it is durable on a majority.

        ``key`` decides the queue (same key, same queue, same order); None (or an empty key)
        is no key: the item is stored without one and the producer spreads keyless items over
        the queues (no order among them). ``kind`` is the item's kind (consumer groups may
        subscribe to some kinds only). ``headers``: a small map of str to str delivered with
        the item (``Item.headers``; limits in ``pxq.headers``: a ``TypeError`` or
        ``ValueError`` at once when broken).
        Raises ``EnqueueFailed`` (definitely not enqueued: unknown topic, too large, the
        client's bound on held calls, refused everywhere) or ``OutcomeUnknown`` (maybe
        enqueued: no answer within ``call_timeout_ms``, for example a cluster that accepts
        connections and then stops answering). A cluster that refuses every connection is a
        definite ``EnqueueFailed`` (``unavailable``, naming each replica's address and why);
        a cluster file whose routing metadata differs from the cluster's is
        ``ClusterMismatch`` (an ``EnqueueFailed``). Arguments of the wrong type raise
        ``TypeError`` at once, before anything is sent."""
        request = self._request(
            topic, payload, key, kind, () if headers is None else normal_headers(headers)
        )
        if self._verified and not self._gate_waiters:
            fut = self._submit(request)
        else:
            (fut,) = await self._submit_verified([request])
        return _receipt(await fut)

    async def _submit_verified(self, requests: list[Produce]) -> list[asyncio.Future[object]]:
        """Submit ``requests`` once the cluster is verified (``verify``: the first call made
        before it is does it, once for every call queued meanwhile), in the order the calls
        were made."""
        attempts = self._verify_attempts
        self._gate_waiters += 1
        try:
            async with self._gate:
                if not self._verified and self._verify_attempts == attempts:
                    await self.verify()
                return [self._submit(request) for request in requests]
        finally:
            self._gate_waiters -= 1

    def _request(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        key: Key,
        kind: str,
        headers: Headers = (),
    ) -> Produce:
        """The validated request (``TypeError`` for a wrong argument type)."""
        if type(topic) is not str:
            _need_str("topic", topic)
        if type(kind) is not str:
            _need_str("kind", kind)
        # The common cases inline (the same bytes as _key_bytes and _payload_bytes give).
        key_bytes = b"" if key is None else _key_bytes(key)
        return Produce(
            topic=topic,
            key=key_bytes,
            payload=payload if type(payload) is bytes else _payload_bytes(payload),
            kind=kind,
            headers=headers,
        )

    def _submit(self, request: Produce) -> asyncio.Future[object]:
        mismatch = self._pool.mismatch
        if mismatch is not None:
            raise ClusterMismatch(str(mismatch), mismatch.differences)
        driver = self._producer
        if driver is None or driver.closed or self._closed:
            driver = self._producer_driver()
        return driver.call(request)

    @overload
    async def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: Literal[False] = False,
    ) -> list[Receipt]: ...

    @overload
    async def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: Literal[True],
    ) -> list[Receipt | PxqError]: ...

    async def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: bool = False,
    ) -> list[Receipt] | list[Receipt | PxqError]:
        """Enqueue ``(key, payload)`` pairs concurrently (batched per queue; items of one key
        keep their order) and wait for all of them.

        Returns the receipts in input order. Each item succeeds or fails on its own: with
        ``return_exceptions=True`` a failed item's slot holds its ``EnqueueFailed`` /
        ``OutcomeUnknown``; otherwise, after every item finished, the first failure (in input
        order) is raised, and the other items may have been enqueued. ``kind`` and
        ``headers`` apply to every item."""
        normal = normal_headers(headers)
        # Every item is checked before any is handed over: a bad one sends nothing.
        requests = [self._request(topic, payload, key, kind, normal) for key, payload in items]
        if self._verified and not self._gate_waiters:
            futures = [self._submit(request) for request in requests]
        else:
            futures = await self._submit_verified(requests)
        results: list[Receipt | PxqError] = []
        for fut in futures:
            try:
                results.append(_receipt(await fut))
            except PxqError as exc:
                results.append(exc)
        if return_exceptions:
            return results
        receipts: list[Receipt] = []
        for r in results:
            if isinstance(r, PxqError):
                raise r
            receipts.append(r)
        return receipts

    # -- consuming -------------------------------------------------------------------------

    def consumer(
        self,
        group: str,
        topic: str | None = None,
        queues: Sequence[int] | None = None,
        *,
        concurrency: int = 16,
        close_timeout_s: float = 5.0,
        options: Mapping[str, int] | None = None,
        name: str | None = None,
        weight: int | None = None,
    ) -> AsyncConsumer:
        """A consumer of ``group``: of ``topic`` (default: every topic the group subscribes
        to). Start it with ``run(handler)`` or ``batches()``; see ``net.client.consumer``.

        Which queues it consumes: with ``queues`` given, exactly those (no lock service
        involved: the application keeps two consumers from sharing a queue). Without, if the
        cluster runs a lock service (``[locks]``), the group's queues are shared among all its
        running consumers through it: each queue is owned by one consumer at a time, fenced,
        spread by consistent hashing (or the scheduler), and moved on within one lease when a
        consumer dies (``name`` names this consumer among them; default: host, pid and a
        counter; ``weight``, default ``[ownership] weight``, its share relative to the others).
        Without a lock service: every queue the group subscribes to.

        ``concurrency`` bounds handler calls at once (``run``). ``options`` overrides
        ``ConsumerSettings`` fields (``get_items_max``, ``poll_empty_max_ms``,
        ``handle_timeout_ms``...). Raises ``ValueError`` for an unknown group, a topic the
        group does not consume, or a queue it is not subscribed to."""
        if self._closed:
            raise ClientClosed("the client is closed")
        mismatch = self._pool.mismatch
        if mismatch is not None:
            raise ClusterMismatch(str(mismatch), mismatch.differences)
        _need_str("group", group)
        if topic is not None:
            _need_str("topic", topic)
        if queues is not None:
            if isinstance(queues, str | bytes):
                raise TypeError("queues: expected a sequence of int, got a string")
            for q in queues:
                _need_int("queues[]", q)
        _need_int("concurrency", concurrency)
        if concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
        if type(close_timeout_s) not in (int, float) or close_timeout_s < 0:
            raise ValueError(f"close_timeout_s: expected seconds >= 0, got {close_timeout_s!r}")
        if name is not None:
            _need_str("name", name)
        _need_int("weight", weight, optional=True)
        for option, value in (options or {}).items():
            _need_int(f"options[{option!r}]", value)
        overrides = dict(self._timeouts)
        overrides.update(options or {})
        subscribed_topics = [t for t in self.config.topics if t.group(group) is not None]
        if not subscribed_topics:
            raise ValueError(f"no topic has a consumer group named {group!r}")
        if topic is not None:
            subscribed_topics = [t for t in subscribed_topics if t.name == topic]
            if not subscribed_topics:
                raise ValueError(f"consumer group {group!r} does not consume topic {topic!r}")
        settings = consumer_settings(self.config, group, topic, **overrides)
        owned: list[OwnedQueue] = []
        for cfg in subscribed_topics:
            cg = cfg.group(group)
            if cg is None:  # pragma: no cover - filtered above
                continue
            chosen = (
                [q for q in range(cfg.queues) if cg.subscribes_queue(q)]
                if queues is None
                else list(queues)
            )
            for q in chosen:
                if not 0 <= q < cfg.queues or not cg.subscribes_queue(q):
                    raise ValueError(
                        f"consumer group {group!r} is not subscribed to queue {q} of {cfg.name!r}"
                    )
                owned.append(OwnedQueue(topic=cfg.name, queue=q))
        ownership = None
        if queues is None and self.config.locks is not None:
            self._consumer_count += 1
            who = name or f"{socket.gethostname()}-{os.getpid()}-{self._consumer_count}"
            ownership = ownership_settings(
                self.config, group, who.replace("/", "_"), topic, weight=weight
            )
        consumer = AsyncConsumer(
            settings=settings,
            owned=tuple(owned),
            ownership=ownership,
            pool=self._pool,
            rng=random.Random(self._rng.getrandbits(128)),
            concurrency=concurrency,
            close_timeout_s=close_timeout_s,
            on_close=self._consumers.discard,
            verify=self.verify,
        )
        self._consumers.add(consumer)
        return consumer

    # -- admin -----------------------------------------------------------------------------

    async def seek(
        self,
        topic: str,
        group: str,
        queue: int | None = None,
        *,
        offset: int | None = None,
        time_ms: int | None = None,
        back_ms: int | None = None,
        dry_run: bool = False,
    ) -> SeekResult:
        """Move ``group``'s cursor on ``queue`` of ``topic`` (None: on every queue the group
        is subscribed to). Exactly one target:

        * ``back_ms``: rewind by that many ms *on the store's time* (its master's clock, which
          stamped the items): replay what was enqueued in the last ``back_ms`` ms. Never moves
          a cursor forward, so it cannot skip items the group has not consumed, whatever this
          machine's clock says. The way to "replay the last N seconds".
        * ``offset``: to that offset, either way.
        * ``time_ms``: to the first item stamped at or after that wall time (Unix ms), either
          way. The stamps are the masters' clocks: a time read from this machine's clock may
          lie past them (its clock ahead) and move the cursor forward.

        A target below the retention floor lands on the floor. Running consumers of the group
        notice and restart from the new cursor (also where it did not move: what they had
        not committed comes again).

        Returns a ``SeekResult``: the new cursors, and the queues moved forward past items the
        group had not consumed (``forward``; empty for a ``back_ms`` rewind). Raises
        ``RequestFailed`` (refused: unknown topic or group, bad queue...) or
        ``OutcomeUnknown`` (no answer; seeking again to the same target is harmless, except
        that a repeated ``back_ms`` rewind is measured from the later time).

        ``dry_run``: move nothing; the result says where each queue would move if the seek
        were applied now (``SeekPreview``, answered by each queue's master)."""
        _need_str("topic", topic)
        _need_str("group", group)
        for field_name, value in (
            ("queue", queue),
            ("offset", offset),
            ("time_ms", time_ms),
            ("back_ms", back_ms),
        ):
            _need_int(field_name, value, optional=True)
        if sum(t is not None for t in (offset, time_ms, back_ms)) != 1:
            raise ValueError("seek: give exactly one of offset, time_ms and back_ms")
        if back_ms is not None and back_ms < 0:
            raise ValueError("seek: back_ms must be >= 0")
        info = self.config.topic(topic)
        if info is None:
            raise RequestFailed("unknown_topic", f"no topic {topic!r}")
        cg = info.group(group)
        if cg is None:
            raise RequestFailed("unknown_group", f"{group!r} does not consume {topic!r}")
        if queue is None:
            targets = [q for q in range(info.queues) if cg.subscribes_queue(q)]
        elif not 0 <= queue < info.queues:
            raise ValueError(f"queue: {topic!r} has queues 0..{info.queues - 1}, got {queue}")
        else:
            targets = [queue]
        positions: dict[int, int] = {}
        forward: dict[int, int] = {}
        for q in targets:
            request: Seek | SeekPreview = (SeekPreview if dry_run else Seek)(
                topic=topic, group=group, queue=q, offset=offset, time_ms=time_ms, back_ms=back_ms
            )
            answer = await self._admin(topic, q, request)
            if not isinstance(answer, SeekOk):
                raise MachineFailed(f"unexpected answer to Seek: {answer!r}")
            positions.update(dict(answer.positions))
            forward.update(dict(answer.forward))
        return SeekResult(positions=positions, forward=forward)

    async def peek(
        self,
        topic: str,
        group: str,
        queue: int,
        *,
        offset: int | None = None,
        count: int = 100,
    ) -> list[Item]:
        """Read up to ``count`` items of ``queue`` of ``topic`` as ``group`` sees them (its
        kinds only), from ``offset`` (None: the group's committed cursor), without
        committing anything. ``topic`` may be a retry-level or dead-letter topic of the
        group (``"{topic}.dlq.{group}"``), which is how dead letters are inspected."""
        _need_str("topic", topic)
        _need_str("group", group)
        _need_int("queue", queue)
        _need_int("offset", offset, optional=True)
        _need_int("count", count)
        if not 0 <= count <= PEEK_ITEMS_MAX:
            raise ValueError(f"count: must be in 0..{PEEK_ITEMS_MAX}")
        if offset is None:
            probe = Get(topic=topic, group=group, queue=queue, cursor=0, items_max=0, bytes_max=0)
            first = await self._admin(topic, queue, probe)
            if not isinstance(first, GetOk):
                raise MachineFailed(f"unexpected answer to Get: {first!r}")
            offset = first.committed
        request = Get(
            topic=topic,
            group=group,
            queue=queue,
            cursor=offset,
            items_max=count,
            bytes_max=PEEK_BYTES_MAX,
        )
        answer = await self._admin(topic, queue, request)
        if not isinstance(answer, GetOk):
            raise MachineFailed(f"unexpected answer to Get: {answer!r}")
        return [_stored_item(topic, queue, it) for it in answer.items]

    async def groups(self, group: str | None = None, topic: str | None = None) -> list[QueueState]:
        """Per consumer group, base topic and subscribed queue: the group's committed cursor,
        the queue's first and end offsets, lag, seek epoch, and the consumer owning it with
        its fencing token (from the lock service); ``group`` and ``topic`` select (None: all).
        See ``net.client.admin``. Raises ``RequestFailed`` (unknown group or topic, a store
        refusing) or ``OutcomeUnknown``."""
        return await queue_states(self.config, self._admin, self._lock_call, group, topic)

    async def dead_letters(
        self, group: str | None = None, topic: str | None = None
    ) -> list[QueueState]:
        """Like ``groups``, of the groups' dead-letter topics: per queue, the dead-letter
        cursor (where redrives stopped), the end, and ``lag``: dead letters waiting."""
        return await queue_states(
            self.config, self._admin, self._lock_call, group, topic, dead_letters=True
        )

    async def redrive(
        self, topic: str, group: str, queue: int | None = None, *, count_max: int | None = None
    ) -> list[Redriven]:
        """Enqueue ``group``'s dead letters of ``topic`` again on ``topic`` (on ``queue``, or
        every queue the group subscribes to), at most ``count_max`` per queue, and move the
        dead-letter cursor past them; idempotent (semantics in ``net.client.admin``)."""
        if count_max is not None and count_max < 0:
            raise ValueError("redrive: count_max must be >= 0")
        ((_, _, queues),) = group_targets(self.config, group, topic)
        if queue is not None:
            if queue not in queues:
                raise RequestFailed(
                    "bad_queue", f"{group!r} is not subscribed to queue {queue} of {topic!r}"
                )
            queues = (queue,)
        return [await redrive(self._admin, topic, group, q, count_max) for q in queues]

    # -- registers ---------------------------------------------------------------------------

    async def register_read(self, key: str, *, through_log: bool = False) -> RegisterValue:
        """Read register ``key`` of the lock service: its value (None if never written) and
        version (0 then). Linearizable either way: by default the master of the key's lock
        group answers from its applied state under its lease; ``through_log`` orders the read
        through the Paxos log (one more round trip to a majority). Raises ``RequestFailed``
        (``unavailable``: no master answered within ``call_timeout_ms``)."""
        check_key(key)
        if type(through_log) is not bool:
            raise TypeError(f"through_log: expected bool, got {type(through_log).__name__}")
        answer = await self._register_call(ReadRegister(key=key, through_log=through_log))
        return register_value(answer)

    async def register_write(self, key: str, value: bytes, *, fence: Fence | None = None) -> int:
        """Set register ``key`` to ``value`` (at most 64 KiB); the new version. With ``fence``
        ``(lock key, version)`` (a lock of the same directory) only while that lock is held
        with that version: else ``RequestFailed`` with code ``fenced``. ``OutcomeUnknown``
        when it may or may not have been written (it is never re-sent after that)."""
        request = WriteRegister(
            key=check_key(key),
            value=check_value(value),
            fence=self._fence(fence, key),
        )
        return (await self._register_call(request)).version

    async def register_cas(
        self, key: str, expected: bytes | None, value: bytes, *, fence: Fence | None = None
    ) -> int:
        """Set register ``key`` to ``value`` if it holds ``expected`` (None: never written);
        the new version. ``CasMismatch`` (definite, naming the current value and version)
        if it holds anything else; ``fence`` and ``OutcomeUnknown`` as for
        ``register_write``."""
        request = CasRegister(
            key=check_key(key),
            expected=check_expected(expected),
            value=check_value(value),
            fence=self._fence(fence, key),
        )
        return (await self._register_call(request)).version

    def _fence(self, fence: object, key: str) -> Fence | None:
        locks = self.config.locks
        return check_fence(fence, key, 1 if locks is None else locks.groups)

    async def _register_call(
        self, request: ReadRegister | WriteRegister | CasRegister
    ) -> RegisterOk:
        if self._closed:
            raise ClientClosed("the client is closed")
        if not self._verified:
            await self.verify()
        return await register_call(
            self._pool,
            self.config,
            self._rng,
            request,
            request_timeout_ms=self._request_timeout_ms,
            call_timeout_ms=self._call_timeout_ms,
        )

    async def _lock_call(self, key: str, request: object) -> object:
        """Send a lock ``request`` about ``key`` to the master of its lock group, following
        redirects; bounded by attempts and ``call_timeout_ms``."""
        locks = self.config.locks
        if locks is None:
            raise RequestFailed("unavailable", "the cluster has no lock service")
        replicas = [r.node for r in locks.replicas]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._call_timeout_ms / 1000
        target = replicas[group_of_key(key, locks.groups) % len(replicas)]
        last = "no attempt"
        for attempt in range(ADMIN_ATTEMPTS_MAX):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                answer = await self._pool.call(
                    target, request, min(self._request_timeout_ms / 1000, remaining)
                )
            except (CallOutcomeUnknown, TimeoutError, NetError, OSError) as exc:
                last = f"{target}: {exc}"
                target = replicas[(replicas.index(target) + 1) % len(replicas)]
            else:
                match answer:
                    case LockRedirect(master=master) if master in replicas:
                        last = f"{target} redirected (master {master})"
                        target = master
                        continue
                    case LockRedirect():
                        last = f"{target} redirected (no master known)"
                        target = replicas[(replicas.index(target) + 1) % len(replicas)]
                    case LockError(code="permission_denied", message=message):
                        raise PermissionDenied(message)
                    case LockError(definite=True, code=code, message=message):
                        raise RequestFailed(code, message)
                    case LockError(code=code, message=message):
                        last = f"{code}: {message}"
                    case _:
                        return answer
            delay = backoff_ms(self._rng, attempt + 1, ADMIN_BACKOFF_MS, ADMIN_BACKOFF_MAX_MS)
            await asyncio.sleep(min(delay / 1000, max(0.0, deadline - loop.time())))
        raise RequestFailed("unavailable", f"{type(request).__name__} gave up: {last}")

    async def _admin(self, topic: str, queue: int, request: object) -> object:
        """Send ``request`` to the master of ``queue``'s Paxos group, following redirects;
        retry timeouts on the next replica, bounded by attempts and ``call_timeout_ms``."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if not self._verified:
            await self.verify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._call_timeout_ms / 1000
        loc = self._router.locate(topic, queue)
        timeout_s = self._request_timeout_ms / 1000 + CALL_TIMEOUT_MARGIN_S
        maybe_applied = False
        last = "no attempt"
        unsent: dict[str, str] = {}
        failures = 0
        for _ in range(ADMIN_ATTEMPTS_MAX):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            target = self._router.master(loc)
            wait = False
            try:
                answer = await self._pool.call(target, request, min(timeout_s, remaining))
            except (CallOutcomeUnknown, TimeoutError) as exc:
                maybe_applied = maybe_applied or isinstance(exc, CallOutcomeUnknown)
                last = f"{target}: {exc}"
                self._router.rotate(loc, target)
                wait = isinstance(exc, TimeoutError)
            except MetadataMismatch as exc:
                raise ClusterMismatch(str(exc), exc.differences) from None
            except (NetError, OSError) as exc:
                # Not sent (a connection that could not be set up names its address).
                last = f"{target}: {exc}"
                unsent[target] = str(exc)
                self._router.rotate(loc, target)
                wait = True
            else:
                match answer:
                    case StoreRedirect(master=master):
                        last = f"{target} redirected (master {master})"
                        wait = not self._router.redirected(loc, target, master)
                    case StoreError(definite=False):
                        maybe_applied = True
                        last = f"{answer.code}: {answer.message}"
                        wait = True
                    case StoreError(code="overloaded"):
                        last = f"{answer.code}: {answer.message}"
                        wait = True
                    case StoreError(code="permission_denied", message=message):
                        raise PermissionDenied(message)
                    case StoreError(code=code, message=message):
                        raise RequestFailed(code, message)
                    case _:
                        self._router.answered(loc, target)
                        return answer
            if wait:
                failures += 1
                delay = backoff_ms(self._rng, failures, ADMIN_BACKOFF_MS, ADMIN_BACKOFF_MAX_MS)
                await asyncio.sleep(min(delay / 1000, max(0.0, deadline - loop.time())))
        what = type(request).__name__
        if maybe_applied:
            raise OutcomeUnknown(f"{what} gave up: {last}")
        if unsent and last.startswith(tuple(f"{node}: " for node in unsent)):
            # Ended on connections that could not be set up: name every replica's reason.
            reasons = "; ".join(f"{node} ({why})" for node, why in sorted(unsent.items()))
            raise RequestFailed("unavailable", f"{what} gave up: not delivered to {reasons}")
        raise RequestFailed("unavailable", f"{what} gave up: {last}")

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close consumers (their handled deliveries are committed first, bounded), wait for
        enqueues in flight (bounded by ``call_timeout_ms``), close the connections.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        producer = self._producer
        if producer is not None:
            loop = asyncio.get_running_loop()
            end = loop.time() + self._call_timeout_ms / 1000 + SETTLE_TIMEOUT_MARGIN_S
            while producer.open_calls and not producer.closed and loop.time() < end:
                producer.progress.clear()
                try:
                    async with asyncio.timeout(max(0.0, end - loop.time())):
                        await producer.progress.wait()
                except TimeoutError:
                    break
            await producer.close()
        await self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _stored_item(topic: str, queue: int, it: StoredItem) -> Item:
    return Item(
        topic=topic,
        queue=queue,
        offset=it.offset,
        key=it.key,
        payload=it.payload,
        kind=it.kind,
        attempt=it.attempt,
        enqueued_ms=it.enqueued_ms,
        headers=headers_view(it.headers),
    )
