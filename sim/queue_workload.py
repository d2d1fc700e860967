"""The queue workload: producers and consumer groups over a simulated store.

Built from a scenario: one store of ``[cluster] replicas`` replicas and ``groups`` Paxos
groups (``StoreNode``), one topic ``t0`` of ``queues`` queues, ``consumer_groups`` consumer
groups ``g0``, ``g1``, … each of ``consumers_per_group`` consumer processes, and ``producers``
producer processes (``Producer`` machines), each running ``concurrency`` application processes
that make one ``Produce`` call at a time with Poisson arrivals (with ``hot_share``, that share
of the items goes to the first ``hot_queues`` queues: a load skew).

Consumers own queues in one of two ways. ``ownership = "static"``: each is a ``Consumer``
machine with a fixed split of the queues. ``ownership = "locks"``: each is a
``ConsumerProcess`` taking queues through a lock service of ``lock_replicas`` replicas
(``l0``, ``l1``, …; ``LockNode``), spread by consistent hashing or, with ``schedulers``
scheduler processes (``sched0``, …), by the active scheduler's assignment. Ownership changes
go into the history as ``own_start`` / ``own_stop`` (with the fencing token and the holder)
for the ownership checkers (``pxq/check/ownership.py``).

Every operation goes into the history in the format the queue checkers read
(``pxq/check/queue.py``): ``enqueue`` (invoke, then ok with the offset, fail or info; its
``producer`` is the producer process and incarnation, for the producer-order check),
``deliver`` and ``handle`` for every item a handler sees (a handler fails an item with the
scenario's ``fail_rate``), ``seek`` for an operator's replay, and ``consumer_crash`` /
``consumer_start``, ``cursor_read`` (a consumer starting a stream from the committed cursor
and its seek epoch) and ``lock_master`` (a lock replica starting or ceasing to serve as a lock
group's master, or crashing: ``pxq/check/ownership.py``).

The end of a run: after the producers stop, ``settled`` says whether every call has resolved,
every acknowledged item reached every group and every failed item its next delivery (the
runner waits for it, bounded); then ``final_reads`` reads every queue of the store, once from
the master through a ``Get`` and once from each live replica's own state, into the history
(``store_read``), so the checkers tell an item no replica holds (lost) from one the store
holds but a group never got (undelivered); ``drain_dead_letters`` reads every dead-letter
queue and records what it holds as deliveries, so the checkers see where failed items ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pxq.check.history import JSON, HistoryWriter
from pxq.check.lock import value_text
from pxq.check.ownership import LOCK_MASTER
from pxq.check.queue import CURSOR_READ, DEAD_LETTER, READ, topic_level
from pxq.config import ClusterConfig, loads_config
from pxq.consumer.machine import Consumer
from pxq.consumer.messages import Deliver, Handled, OwnedQueue
from pxq.consumer.ownership import ConsumerProcess, OwnershipSettings
from pxq.consumer.settings import consumer_settings
from pxq.effects import Node, NodeFactory, NodeId, Received, Rng, StorageView
from pxq.nodes import node_spec
from pxq.paxos.config import PaxosConfig
from pxq.producer.machine import Producer
from pxq.producer.messages import Produce, Produced, ProduceFailed, ProduceUnknown
from pxq.producer.settings import producer_settings
from pxq.routing import group_of, queue_of
from pxq.scheduler.node import Scheduler, SchedulerSettings
from pxq.store.messages import Get, GetOk, Seek, SeekOk, StoreError, StoreRedirect
from pxq.store.node import StoreNode
from pxq.store.sm import QueueStore
from pxq.topics import dead_letter_topic
from sim.rng import stream
from sim.scenario import FaultSpec, Scenario
from sim.world import HANDLER, CallMsg, ReplyMsg, TraceRecord, World

TOPIC = "t0"
STORE = "s0"
SEPARATOR = b"|"
ADMIN = "admin"
ADMIN_TIMEOUT_US = 1_000_000
ADMIN_ATTEMPTS_MAX = 20
DRAIN_ITEMS_MAX = 10_000
READ_PAGES_MAX = 10_000
"""Get pages one final read of a queue may take (each up to ``DRAIN_ITEMS_MAX`` items)."""
PRODUCER_REQUEST_TIMEOUT_MS = 500
"""How long a producer waits for one request's answer before re-sending (within the call's
``timeout_ms``)."""
READ_AFTER_ACK_SHARE = 0.125
"""The share of acknowledged enqueues that a reader reads back at once (a ``Get`` from the
master at the item's offset: ``store_read``), for the read-after-ack check."""


def msg_id_of(payload: bytes) -> str:
    return payload.split(SEPARATOR, 1)[0].decode("ascii", "replace")


def cluster_config(scn: Scenario) -> ClusterConfig:
    """The cluster configuration a queue scenario describes."""
    w = scn.workload
    lines = [
        "[cluster]",
        'name = "sim"',
        "[[stores]]",
        f'name = "{STORE}"',
        f"groups = {scn.cluster.groups}",
    ]
    if scn.cluster.paxos:
        lines.append("[stores.paxos]")
        lines += [f"{k} = {v}" for k, v in scn.cluster.paxos]
    for i in range(scn.cluster.replicas):
        lines += ["[[stores.replicas]]", f'node = "n{i}"', f"port = {7101 + i}"]
    if w.ownership == "locks":
        lines += ["[locks]"]
        for i in range(w.lock_replicas):
            lines += ["[[locks.replicas]]", f'node = "l{i}"', f"port = {7201 + i}"]
    lines += ["[[topics]]", f'name = "{TOPIC}"', f"queues = {w.queues}"]
    if w.hold_items is not None:
        lines += ["[topics.retention]", f"hold_items = {w.hold_items}"]
    for g in range(w.consumer_groups):
        retries = ", ".join(f"{{ delay_ms = {d} }}" for d in w.retry_delays_ms)
        lines += [
            "[[topics.consumer_groups]]",
            f'name = "g{g}"',
            f"retries = [{retries}]",
            f"dead_letter = {'true' if w.dead_letter else 'false'}",
        ]
        if w.rate_items_per_s is not None:
            burst = "" if w.rate_burst is None else f", burst = {w.rate_burst}"
            lines.append(f"rate = {{ items_per_s = {w.rate_items_per_s}{burst} }}")
    return loads_config("\n".join(lines) + "\n", file=f"{scn.file} (queue cluster)")


@dataclass(slots=True)
class _AppProcess:
    """One application process of a producer: one call in flight at a time."""

    producer: str
    process: int
    seq: int = 0
    busy: bool = False
    msg_id: str = ""
    extra: dict[str, JSON] | None = None


class QueueWorkload:
    """Builds the store, producers and consumers into a world and drives them."""

    def __init__(self, scn: Scenario, world: World, history: HistoryWriter, seed: int) -> None:
        self.scn = scn
        self.world = world
        self.history = history
        self.seed = seed
        self.config = cluster_config(scn)
        w = scn.workload
        self.replicas = [f"n{i}" for i in range(scn.cluster.replicas)]
        self.groups = [f"g{g}" for g in range(w.consumer_groups)]
        self.rng = stream(seed, "queue-workload")
        self.read_rng = stream(seed, "queue-workload/reads")
        self.reads = 0
        self.running = False
        self.counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0, "deliver": 0, "handle_fail": 0}
        self.fail_reasons: dict[str, int] = {}
        """Definitely failed enqueues by the producer's code (``storage_full``, ...)."""
        self.admin_seq = 0
        self.admin_pending: dict[int, Callable[[object], None]] = {}
        self.masters: dict[int, NodeId] = {}
        self.publishes: list[tuple[int, dict[str, object]]] = []
        self.lock_calls: dict[str, tuple[str, str]] = {}
        """Lock calls in flight in the history: process -> (f, key)."""
        self.delivered: dict[str, set[str]] = {g: set() for g in self.groups}
        self.succeeded: dict[str, set[str]] = {g: set() for g in self.groups}
        self.undelivered: dict[str, set[str]] = {g: set() for g in self.groups}
        """Acknowledged msg ids a group has not been delivered yet (for ``settled``)."""
        self.awaiting: dict[str, set[str]] = {g: set() for g in self.groups}
        """Msg ids whose handler failed and whose next delivery to the group is due."""

        for node in self.replicas:
            world.add_node(node, self._node_factory(node))
        self.producers: list[str] = []
        self.apps: list[_AppProcess] = []
        self.next_process = 0
        for p in range(w.producers):
            name = f"p{p}"
            self.producers.append(name)
            world.add_client(name, self._producer_factory)
            for _ in range(w.concurrency):
                self.apps.append(_AppProcess(name, self._new_process()))
        self.locks: list[NodeId] = []
        self.schedulers: list[str] = []
        self.lock_config: PaxosConfig | None = None
        if self.config.locks is not None:
            self.locks = list(self.config.locks.nodes)
            self.lock_config = self.config.locks.paxos
            for node in self.locks:
                world.add_node(node, self._node_factory(node))
            for i in range(w.schedulers):
                name = f"sched{i}"
                self.schedulers.append(name)
                world.add_client(name, self._scheduler_factory)
        self.consumers: list[str] = []
        self.consumer_group: dict[str, str] = {}
        self.ownership: dict[str, tuple[OwnedQueue, ...]] = {}
        for g in self.groups:
            for c in range(w.consumers_per_group):
                name = f"{g}-c{c}"
                self.consumers.append(name)
                self.consumer_group[name] = g
                self.ownership[name] = tuple(
                    OwnedQueue(topic=TOPIC, queue=q, token=0)
                    for q in range(w.queues)
                    if q % w.consumers_per_group == c
                )
                world.add_client(name, self._consumer_factory, self._handler_for(name))
        self.hot_keys: list[bytes] = []
        if w.hot_queues and w.hot_share > 0:
            self.hot_keys = [
                k
                for k in (f"k{i}".encode() for i in range(1000))
                if queue_of(k, w.queues) < w.hot_queues
            ]
        world.add_endpoint(ADMIN, self._admin_receive)
        world.listeners.append(self._on_trace)

    # -- factories ----------------------------------------------------------------------

    def _node_factory(self, node: NodeId) -> NodeFactory:
        """A store or lock replica, built as ``pxq node run`` builds it (``pxq.nodes``)."""
        spec = node_spec(self.config, node)
        if spec is None:
            raise ValueError(f"{node!r} is not a replica of the queue cluster")
        return spec.factory

    def _producer_factory(self, node_id: NodeId, storage: StorageView, rng: Rng) -> Producer:
        # The call timeout is the scenario's timeout_ms: one place, which the runner's
        # quiet period and settle bound are checked against.
        overrides = {
            "request_timeout_ms": min(PRODUCER_REQUEST_TIMEOUT_MS, self.scn.workload.timeout_ms),
            "call_timeout_ms": self.scn.workload.timeout_ms,
        }
        if self.scn.workload.batch_items is not None:
            overrides["batch_items_max"] = self.scn.workload.batch_items
        return Producer(
            producer_settings(self.config, **overrides),
            rng,
            name=node_id,
            req_id_base=self._req_id_base(node_id),
        )

    def _req_id_base(self, node_id: NodeId) -> int:
        """Each incarnation of a client numbers its requests apart: the simulated network
        delivers a late reply to the previous incarnation's request by name (swarm-queue seeds
        292, 435)."""
        return self.world.hosts[node_id].incarnation << 32

    def _consumer_factory(self, node_id: NodeId, storage: StorageView, rng: Rng) -> Node:
        group = self.consumer_group[node_id]
        settings = consumer_settings(self.config, group, request_timeout_ms=500, backoff_max_ms=500)
        if self.lock_config is None:
            return Consumer(
                settings, rng, owned=self.ownership[node_id], req_id_base=self._req_id_base(node_id)
            )
        w = self.scn.workload
        own = OwnershipSettings(
            consumer=node_id,
            group=group,
            queues=tuple((TOPIC, q) for q in range(w.queues)),
            lock_nodes=self.lock_config.replicas,
            lock_groups=self.lock_config.groups,
            lease_ms=w.lease_ms,
            margin_ms=w.margin_ms,
            renew_ms=w.renew_ms,
            poll_ms=w.poll_ms,
            use_scheduler=bool(self.schedulers),
        )
        return ConsumerProcess(settings, own, rng, req_id_base=self._req_id_base(node_id))

    def _scheduler_factory(self, node_id: NodeId, storage: StorageView, rng: Rng) -> Scheduler:
        assert self.lock_config is not None
        w = self.scn.workload
        settings = SchedulerSettings(
            name=node_id,
            groups={g: tuple((TOPIC, q) for q in range(w.queues)) for g in self.groups},
            lock_nodes=self.lock_config.replicas,
            lock_groups=self.lock_config.groups,
            lease_ms=w.lease_ms,
            margin_ms=w.margin_ms,
            renew_ms=w.renew_ms,
            band_pct=w.band_pct,
        )
        return Scheduler(settings, rng, req_id_base=self._req_id_base(node_id))

    def _new_process(self) -> int:
        self.next_process += 1
        return self.next_process

    # -- producing ----------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        for app in self.apps:
            self._schedule(app)

    def stop(self) -> None:
        self.running = False

    def _now_ms(self) -> int:
        return self.world.now_us // 1000

    def _schedule(self, app: _AppProcess) -> None:
        w = self.scn.workload
        per_process = w.rate_per_s / max(1, len(self.apps))
        gap = int(self.rng.expovariate(1.0) * 1_000_000 / per_process) + 1
        self.world.call_later(gap, lambda: self._produce(app))

    def _produce(self, app: _AppProcess) -> None:
        if not self.running:
            return
        host = self.world.hosts[app.producer]
        if app.busy or host.crashed:
            self._schedule(app)
            return
        app.seq += 1
        msg_id = f"{app.producer}.{app.process}.{app.seq}"
        if self.hot_keys and self.rng.random() < self.scn.workload.hot_share:
            key = self.hot_keys[self.rng.randrange(len(self.hot_keys))]
        else:
            key = f"k{self.rng.randrange(1000)}".encode()
        pad = max(0, self.scn.workload.value_bytes - len(msg_id) - 1)
        payload = msg_id.encode() + SEPARATOR + b"." * pad
        queue = queue_of(key, self.scn.workload.queues)
        extra: dict[str, JSON] = {
            "topic": TOPIC,
            "queue": queue,
            "key": key.decode(),
            "producer": f"{app.producer}.{host.incarnation}",
        }
        self.history.invoke(self._now_ms(), app.process, "enqueue", msg_id, **extra)
        self.counts["invoke"] += 1
        app.busy = True
        app.msg_id = msg_id
        app.extra = extra
        incarnation = host.incarnation

        def done(response: object) -> None:
            if host.incarnation != incarnation:
                return
            self._produced(app, msg_id, extra, response)

        host.local_call(Produce(topic=TOPIC, key=key, payload=payload), done)

    def _produced(
        self, app: _AppProcess, msg_id: str, extra: dict[str, JSON], response: object
    ) -> None:
        now = self._now_ms()
        app.busy = False
        match response:
            case Produced(offset=offset):
                self.counts["ok"] += 1
                self.history.ok(now, app.process, "enqueue", msg_id, **extra, offset=offset)
                for group in self.groups:
                    if msg_id not in self.delivered[group]:
                        self.undelivered[group].add(msg_id)
                queue = extra["queue"]
                if self.groups and self.read_rng.random() < READ_AFTER_ACK_SHARE:
                    self._read_back(queue if isinstance(queue, int) else 0, offset)
            case ProduceFailed(code=code):
                self.counts["fail"] += 1
                self.fail_reasons[code] = self.fail_reasons.get(code, 0) + 1
                self.history.fail(now, app.process, "enqueue", msg_id, **extra, reason=code)
            case ProduceUnknown(reason=reason):
                self._info(app, msg_id, extra, reason)
            case other:
                self._info(app, msg_id, extra, f"unexpected reply {type(other).__name__}")
        self._schedule(app)

    def _info(self, app: _AppProcess, msg_id: str, extra: dict[str, JSON], reason: str) -> None:
        self.counts["info"] += 1
        self.history.info(self._now_ms(), app.process, "enqueue", msg_id, **extra, reason=reason)
        app.process = self._new_process()  # retire the process (Jepsen semantics)

    def _producer_crashed(self, producer: str) -> None:
        """Calls in flight in a crashed producer process have unknown outcomes."""
        for app in self.apps:
            if app.producer == producer and app.busy:
                app.busy = False
                self._info(app, app.msg_id, app.extra or {}, "producer crashed")
                self._schedule(app)

    # -- consuming ----------------------------------------------------------------------

    def _handler_for(self, consumer: str) -> Callable[[object], None]:
        def handle(msg: object) -> None:
            if isinstance(msg, Deliver):
                self._handle(consumer, msg)

        return handle

    def _handle(self, consumer: str, d: Deliver) -> None:
        host = self.world.hosts[consumer]
        incarnation = host.incarnation
        now = self._now_ms()
        failed: list[int] = []
        for item in d.items:
            msg_id = msg_id_of(item.payload)
            extra: dict[str, JSON] = {
                "group": d.group,
                "topic": d.topic,
                "queue": d.queue,
                "offset": item.offset,
                "attempt": item.attempt,
            }
            self.history.invoke(now, consumer, "deliver", msg_id, **extra)
            self.history.ok(now, consumer, "deliver", msg_id, **extra)
            self.counts["deliver"] += 1
            self.delivered[d.group].add(msg_id)
            self.undelivered[d.group].discard(msg_id)
            self.awaiting[d.group].discard(msg_id)
            fail = self.rng.random() < self.scn.workload.fail_rate
            outcome = "fail" if fail else "ok"
            self.history.invoke(now, consumer, "handle", msg_id, **extra)
            self.history.ok(now, consumer, "handle", msg_id, **extra, outcome=outcome)
            if fail:
                self.counts["handle_fail"] += 1
                failed.append(item.offset)
                if self._comes_again(d.group, d.topic, msg_id):
                    self.awaiting[d.group].add(msg_id)
            else:
                self.succeeded[d.group].add(msg_id)

        def finish() -> None:
            if host.incarnation == incarnation and not host.crashed:
                host.step(
                    Received(
                        src=HANDLER, msg=Handled(delivery_id=d.delivery_id, failed=tuple(failed))
                    )
                )

        w = self.scn.workload
        slow = w.slow_handle_ms is not None and d.group == self.groups[-1]
        handle_ms = w.slow_handle_ms if slow and w.slow_handle_ms is not None else w.handle_ms
        self.world.call_later(handle_ms * 1000, finish)

    def _comes_again(self, group: str, topic: str, msg_id: str) -> bool:
        """Whether an item failed on ``topic`` is delivered to ``group`` again (in place or on
        its next retry level) rather than ending in the dead-letter topic, which only the
        drain after the run reads. An item the group handled before may be passed over (a
        previous owner's commit moved the cursor past it)."""
        w = self.scn.workload
        level = topic_level(topic, group)
        if level is None or level == DEAD_LETTER or msg_id in self.succeeded[group]:
            return False
        return not (w.dead_letter and level == len(w.retry_delays_ms))

    def settled(self) -> bool:
        """Every producer call resolved, every acknowledged item delivered to every group and
        every failed item delivered again (the end of a run waits for this, bounded)."""
        return (
            not any(app.busy for app in self.apps)
            and not any(self.undelivered.values())
            and not any(self.awaiting.values())
        )

    def unsettled(self) -> dict[str, int]:
        """What ``settled`` still waits for (for the run's stats)."""
        return {
            "calls": sum(app.busy for app in self.apps),
            "undelivered": sum(len(v) for v in self.undelivered.values()),
            "awaiting_retry": sum(len(v) for v in self.awaiting.values()),
        }

    def _on_trace(self, rec: TraceRecord) -> None:
        if rec.kind in ("lock.attempt", "lock.outcome"):
            self._lock_op(rec)
            return
        if rec.kind == "consumer.cursor" and rec.node in self.consumer_group:
            f = dict(rec.fields)
            read: dict[str, JSON] = {
                k: v
                for k in ("topic", "queue", "cursor", "epoch")
                if isinstance(v := f.get(k), str | int)
            }
            read["group"] = self.consumer_group[rec.node]
            now = self._now_ms()
            process = f"{rec.node}.cursor"
            self.history.invoke(now, process, CURSOR_READ, rec.node, **read)
            self.history.ok(now, process, CURSOR_READ, rec.node, **read)
            return
        if rec.node in self.locks and rec.kind in ("master", "crash"):
            f = dict(rec.fields)
            fields: dict[str, JSON] = {"state": "crashed"}
            if rec.kind == "master":
                group, state = f.get("group"), f.get("state")
                fields = {
                    "group": group if isinstance(group, int) else None,
                    "state": str(state),
                }
            now = self._now_ms()
            self.history.invoke(now, "lock-service", LOCK_MASTER, rec.node, **fields)
            self.history.ok(now, "lock-service", LOCK_MASTER, rec.node, **fields)
            return
        if rec.kind in ("own.start", "own.stop"):
            f = dict(rec.fields)
            op = "own_start" if rec.kind == "own.start" else "own_stop"
            extra: dict[str, JSON] = {
                k: v for k, v in f.items() if isinstance(v, str | int) and not isinstance(v, bool)
            }
            extra["t_us"] = rec.time_us
            now = self._now_ms()
            self.history.invoke(now, rec.node, op, rec.node, **extra)
            self.history.ok(now, rec.node, op, rec.node, **extra)
            return
        if rec.kind == "sched.publish":
            self.publishes.append((rec.time_us, dict(rec.fields)))
            return
        if rec.kind not in ("crash", "boot"):
            return
        node = rec.node
        group = self.consumer_group.get(node)
        if group is not None:
            kind = "consumer_crash" if rec.kind == "crash" else "consumer_start"
            if rec.kind == "boot" and dict(rec.fields).get("incarnation") == 1:
                return
            now = self._now_ms()
            self.history.invoke(now, "nemesis", kind, node, group=group)
            self.history.info(now, "nemesis", kind, node, group=group)
        elif node in self.producers and rec.kind == "crash":
            self._producer_crashed(node)

    def _lock_op(self, rec: TraceRecord) -> None:
        """A consumer's or scheduler's lock request attempt, in the lock workload's history
        format (``sim/lock_workload.py``), one process per attempt, for the lock checkers."""
        f = dict(rec.fields)
        req_id = f.get("req_id")
        process = f"{rec.node}.{self.world.hosts[rec.node].incarnation}.{req_id!s}"
        now = self._now_ms()
        raw = f.get("value")
        value: JSON = value_text(raw) if isinstance(raw, bytes) else None
        if rec.kind == "lock.attempt":
            op = str(f.get("f"))
            extra: dict[str, JSON] = {
                k: v
                for k, v in f.items()
                if k in ("key", "holder", "version", "lease_ms", "through_log")
                and isinstance(v, str | int | bool | None)
            }
            self.history.invoke(now, process, op, value, **extra)
            self.lock_calls[process] = (op, str(f.get("key")))
            return
        call = self.lock_calls.pop(process, None)
        if call is None:
            return
        op, key = call
        kind = f.get("type")
        if kind == "ok":
            extra = {
                k: v
                for k, v in f.items()
                if k in ("outcome", "holder", "version", "expiry_ms", "at_ms")
                and isinstance(v, str | int | None)
            }
            self.history.ok(now, process, op, value, key=key, **extra)
        elif kind == "fail":
            self.history.fail(now, process, op, None, key=key, reason=str(f.get("reason")))
        else:
            self.history.info(now, process, op, None, key=key, reason=str(f.get("reason")))

    # -- operator: seek and dead letters --------------------------------------------------

    def _admin_call(self, queue: int, request: object, done: Callable[[object], None]) -> None:
        """Send ``request`` for ``queue`` to its group's master, following redirects."""
        group = group_of(queue, self.scn.cluster.groups)
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > ADMIN_ATTEMPTS_MAX:
                done(StoreError(code="unknown", message="no answer", definite=False))
                return
            target = self.masters.get(group, self.replicas[group % len(self.replicas)])
            self.admin_seq += 1
            req_id = self.admin_seq
            answered = False

            def on_reply(response: object) -> None:
                nonlocal answered
                answered = True
                if isinstance(response, StoreRedirect):
                    if response.master is not None:
                        self.masters[group] = response.master
                    else:
                        self.masters[group] = self.rng.choice(self.replicas)
                    self.world.call_later(20_000, attempt)
                    return
                done(response)

            def on_timeout() -> None:
                if not answered:
                    self.admin_pending.pop(req_id, None)
                    self.masters[group] = self.rng.choice(self.replicas)
                    attempt()

            self.admin_pending[req_id] = on_reply
            self.world.network.send(ADMIN, target, CallMsg(req_id, request))
            self.world.call_later(ADMIN_TIMEOUT_US, on_timeout)

        attempt()

    def _admin_receive(self, src: str, payload: object) -> None:
        if isinstance(payload, ReplyMsg):
            cb = self.admin_pending.pop(payload.req_id, None)
            if cb is not None:
                cb(payload.response)

    def seek(self, fault: FaultSpec) -> None:
        """An operator's replay: move a group on one queue (or each queue) to an offset, or
        back by ``back_ms`` on the store's time (the operator's clock plays no part)."""
        group = fault.consumer_group or self.groups[0]
        queues = range(self.scn.workload.queues) if fault.queue is None else [fault.queue]
        for queue in queues:
            now = self._now_ms()
            target: dict[str, JSON] = (
                {"offset": fault.offset} if fault.offset is not None else {"back_ms": fault.back_ms}
            )
            process = f"admin.{group}.{queue}.{self.admin_seq}"
            self.history.invoke(
                now, process, "seek", None, group=group, topic=TOPIC, queue=queue, **target
            )
            request = Seek(
                topic=TOPIC, group=group, queue=queue, offset=fault.offset, back_ms=fault.back_ms
            )

            def done(
                response: object, p: str = process, q: int = queue, t: dict[str, JSON] = target
            ) -> None:
                at = self._now_ms()
                extra: dict[str, JSON] = {"group": group, "topic": TOPIC, "queue": q, **t}
                if isinstance(response, SeekOk):
                    positions: list[JSON] = [[qq, c] for qq, c in response.positions]
                    if response.forward:
                        # Cursors moved forward past items the group had not consumed.
                        extra["forward"] = [[qq, c] for qq, c in response.forward]
                    self.history.ok(at, p, "seek", None, **extra, positions=positions)
                elif isinstance(response, StoreError) and response.definite:
                    self.history.fail(at, p, "seek", None, **extra, reason=response.code)
                else:
                    self.history.info(at, p, "seek", None, **extra)

            self._admin_call(queue, request, done)

    def final_reads(self, on_done: Callable[[], None]) -> None:
        """Read every queue of the topic into the history (``store_read``): from each live
        store replica's own state (``node``), and through a ``Get`` answered by the master
        (paged, following redirects). ``on_done`` runs once every master read has ended."""
        if not self.groups:  # a Get reads for a group: without one there is nothing to ask
            on_done()
            return
        group = self.groups[0]  # every group takes every kind: any group sees every item
        queues = range(self.scn.workload.queues)
        for node in self.replicas:
            host = self.world.hosts[node]
            if host.crashed or not isinstance(host.node, StoreNode):
                continue
            for queue in queues:
                sm = host.node.state_machine(group_of(queue, self.scn.cluster.groups))
                if isinstance(sm, QueueStore):
                    self._replica_read(node, sm, group, queue)
        pending = len(queues)
        for queue in queues:

            def ended() -> None:
                nonlocal pending
                pending -= 1
                if pending == 0:
                    on_done()

            self._master_read(group, queue, ended)

    def _replica_read(self, node: str, sm: QueueStore, group: str, queue: int) -> None:
        now = self._now_ms()
        process = f"final.{node}.{queue}"
        where: dict[str, JSON] = {"topic": TOPIC, "queue": queue, "node": node}
        self.history.invoke(now, process, READ, None, **where)
        first, end = sm.offsets(TOPIC, queue)
        items: list[JSON] = []
        cursor = first
        # The replica's own wall clock, as its Get would report the store's time.
        store_now = self.world.hosts[node].clock.now(self.world.now_us).wall_ms
        for _ in range(READ_PAGES_MAX):
            page = sm.get(self._read_request(group, queue, cursor), store_now)
            if not isinstance(page, GetOk):
                self.history.info(now, process, READ, None, **where, reason=page.code)
                return
            items += [[item.offset, msg_id_of(item.payload)] for item in page.items]
            progressed = page.next_cursor > cursor
            cursor = page.next_cursor
            if cursor >= end or not progressed:
                break
        self.history.ok(
            now,
            process,
            READ,
            None,
            **where,
            first=first,
            end=cursor,
            items=items,
            tail=cursor >= end,
        )

    def _master_read(self, group: str, queue: int, ended: Callable[[], None]) -> None:
        process = f"final.master.{queue}"
        where: dict[str, JSON] = {"topic": TOPIC, "queue": queue}
        self.history.invoke(self._now_ms(), process, READ, None, **where)
        items: list[JSON] = []
        first: int | None = None
        pages = 0

        def page(cursor: int) -> None:
            nonlocal pages
            pages += 1
            self._admin_call(queue, self._read_request(group, queue, cursor), answer)

        def answer(response: object) -> None:
            nonlocal first
            now = self._now_ms()
            if not isinstance(response, GetOk):
                self.history.info(now, process, READ, None, **where)
                ended()
                return
            if first is None:
                first = response.first_offset
            items.extend([item.offset, msg_id_of(item.payload)] for item in response.items)
            done = response.next_cursor >= response.end_offset
            if done or pages >= READ_PAGES_MAX:
                end = response.next_cursor
                self.history.ok(
                    now, process, READ, None, **where, first=first, end=end, items=items, tail=done
                )
                ended()
                return
            page(response.next_cursor)

        page(0)

    def _read_back(self, queue: int, offset: int) -> None:
        """Read one acknowledged item back from the master at its offset (``store_read``)."""
        self.reads += 1
        process = f"reader.{self.reads}"
        where: dict[str, JSON] = {"topic": TOPIC, "queue": queue}
        self.history.invoke(self._now_ms(), process, READ, None, **where)
        request = replace(self._read_request(self.groups[0], queue, offset), items_max=1)

        def answer(response: object) -> None:
            now = self._now_ms()
            if isinstance(response, GetOk):
                items: list[JSON] = [[i.offset, msg_id_of(i.payload)] for i in response.items]
                first = max(offset, response.first_offset)
                end = max(first, response.next_cursor)
                tail = response.next_cursor >= response.end_offset
                self.history.ok(
                    now, process, READ, None, **where, first=first, end=end, items=items, tail=tail
                )
            else:
                self.history.info(now, process, READ, None, **where)

        self._admin_call(queue, request, answer)

    def _read_request(self, group: str, queue: int, cursor: int) -> Get:
        return Get(
            topic=TOPIC,
            group=group,
            queue=queue,
            cursor=cursor,
            items_max=DRAIN_ITEMS_MAX,
            bytes_max=64 << 20,
        )

    def drain_dead_letters(self, on_done: Callable[[], None]) -> None:
        """Read every dead-letter queue once and record its items as deliveries to the group
        (process ``dlq``), so the checkers see where failed items ended."""
        pending = 0
        if not self.scn.workload.dead_letter:
            on_done()
            return
        for group in self.groups:
            topic = dead_letter_topic(TOPIC, group)
            for queue in range(self.scn.workload.queues):
                pending += 1

                def done(response: object, g: str = group, t: str = topic, q: int = queue) -> None:
                    nonlocal pending
                    if isinstance(response, GetOk):
                        now = self._now_ms()
                        for item in response.items:
                            extra: dict[str, JSON] = {
                                "group": g,
                                "topic": t,
                                "queue": q,
                                "offset": item.offset,
                                "attempt": item.attempt,
                            }
                            msg_id = msg_id_of(item.payload)
                            self.history.invoke(now, "dlq", "deliver", msg_id, **extra)
                            self.history.ok(now, "dlq", "deliver", msg_id, **extra)
                    pending -= 1
                    if pending == 0:
                        on_done()

                request = Get(
                    topic=topic,
                    group=group,
                    queue=queue,
                    cursor=0,
                    items_max=DRAIN_ITEMS_MAX,
                    bytes_max=64 << 20,
                )
                self._admin_call(queue, request, done)

    def stats(self) -> dict[str, Any]:
        return dict(self.counts) | {"fail_reasons": dict(sorted(self.fail_reasons.items()))}
