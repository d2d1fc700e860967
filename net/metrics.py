"""Prometheus metrics of one node: ``NodeCollector`` reads a ``NodeRunner`` at scrape time, and
``MetricsServer`` serves it over plain HTTP (prometheus-client's own threaded server).

Nothing is updated on the hot path for metrics beyond what the runner keeps anyway (its
``stats``, one dict increment per client call in ``requests``, and the writer thread's commit
times): every family is computed from that and from the node's own state when Prometheus asks.
A scrape arrives on the HTTP server's thread, which must not read the node while the event loop
steps it, so the collector hands the reading to the loop (``call_soon_threadsafe``) and waits
for it (``SCRAPE_TIMEOUT_S`` at most): the loop spends the time of one reading per scrape, the
node is never read from two threads, and a blocked loop cannot block the HTTP server beyond
that bound (the scrape then fails, which Prometheus records as the target being down).

Labels: ``paxos_group`` is a Paxos group of the node's service (``service``: the store's name,
or ``locks``); ``consumer_group`` a consumer group. The per-queue families (offsets, cursors,
lag) come only from the master of the queue's Paxos group, whose applied state is the
authority, so that summing over the nodes of a cluster counts each queue once.

The endpoint carries no secret (names of topics, consumer groups and nodes, counts) and is plain
HTTP even when the cluster has TLS on: bind it to an address only the monitoring can reach
(docs/operations.md, "Logs and metrics"). The metric names, types and labels are listed there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import threading
from collections.abc import Iterable
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from net.errors import AddressInUse, StartupError
from net.node.runner import (
    COMMIT_SECONDS_BUCKETS,
    CommitTimes,
    NodeRunner,
    monotonic_ms,
    wall_ms,
)
from pxq.effects import Now
from pxq.paxos.roles import Role
from pxq.paxos.service import ReplicatedService
from pxq.store.node import StoreNode

SCRAPE_TIMEOUT_S: Final = 5.0
"""How long a scrape waits for the event loop to read the node."""

REFUSAL_REASONS: Final = (
    "permission_denied",
    "storage_full",
    "overloaded",
    "too_large",
    "connection_budget",
    "connection_evicted",
)
"""The reasons of ``pxq_refusals_total``, each always present (0 until it happens)."""


class NodeCollector(Collector):
    """The metric families of one node (see the module docstring)."""

    def __init__(self, runner: NodeRunner) -> None:
        self.runner = runner

    def describe(self) -> Iterable[Metric]:
        # No description up front: registering must not read the node (collect would).
        return ()

    def collect(self) -> Iterable[Metric]:
        loop = self.runner.loop
        if loop is None or loop.is_closed():
            return self._families_stopped()
        try:
            if asyncio.get_running_loop() is loop:
                return self.read()  # already on the loop (a test collecting directly)
        except RuntimeError:
            pass
        done: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def read_on_loop() -> None:
            try:
                done.set_result(self.read())
            except BaseException as exc:
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read_on_loop)
        except RuntimeError:  # the loop closed meanwhile
            return self._families_stopped()
        return done.result(timeout=SCRAPE_TIMEOUT_S)

    def _families_stopped(self) -> list[Metric]:
        return [self._info(), GaugeMetricFamily("pxq_node_running", _RUNNING_HELP, value=0)]

    def _info(self) -> GaugeMetricFamily:
        runner = self.runner
        info = GaugeMetricFamily(
            "pxq_node_info",
            "The node: its cluster, name and service (value 1).",
            labels=("cluster", "node", "service"),
        )
        info.add_metric((runner.cluster, runner.node_id, runner.service), 1)
        return info

    def read(self) -> list[Metric]:
        """Every family, read from the runner now (on the loop's thread)."""
        runner = self.runner
        stats = runner.stats
        families: list[Metric] = [
            self._info(),
            GaugeMetricFamily("pxq_node_running", _RUNNING_HELP, value=int(runner.running)),
        ]
        requests = CounterMetricFamily(
            "pxq_requests",
            "Client calls received, by request type (refused and redirected ones included).",
            labels=("request",),
        )
        for kind, count in sorted(runner.requests.items(), key=lambda kv: kv[0].__name__):
            requests.add_metric((kind.__name__,), count)
        families.append(requests)
        families += [
            CounterMetricFamily("pxq_steps", "Inputs stepped into the node.", value=stats.steps),
            CounterMetricFamily(
                "pxq_commits", "Storage transactions committed (fsync).", value=stats.commits
            ),
            CounterMetricFamily(
                "pxq_alarms",
                "Alarms the node raised (logged on pxq.net.alarm).",
                value=stats.alarms,
            ),
        ]
        families.append(
            _histogram(
                "pxq_commit_seconds",
                "Time of one storage commit on the writer thread (an append to the "
                "write-ahead log and its fdatasync, or an LMDB transaction and its fsync).",
                runner.commit_times,
            )
        )
        families.append(
            _histogram(
                "pxq_checkpoint_seconds",
                "Time of one checkpoint on the checkpoint thread (an LMDB transaction of the "
                "batches durable in the write-ahead log, and its fsync).",
                runner.checkpoint_times,
            )
        )
        node = runner.node
        refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        refusals["permission_denied"] = stats.calls_refused
        refusals["connection_budget"] = stats.connections_refused
        refusals["connection_evicted"] = stats.connections_evicted
        if isinstance(node, ReplicatedService):
            for code, n in node.refused.items():
                refusals[code] = refusals.get(code, 0) + n
        if isinstance(node, StoreNode):
            refusals["storage_full"] = node.enqueues_refused
        refused = CounterMetricFamily(
            "pxq_refusals",
            "Requests and connections refused, by reason.",
            labels=("reason",),
        )
        for reason, n in refusals.items():
            refused.add_metric((reason,), n)
        families.append(refused)
        families += self._storage()
        if isinstance(node, ReplicatedService):
            now = Now(mono_ms=monotonic_ms(), wall_ms=wall_ms())
            families += self._paxos(node, now)
            if isinstance(node, StoreNode):
                families += self._queues(node, now)
        return families

    def _storage(self) -> list[Metric]:
        runner = self.runner
        storage = runner.storage
        if storage is None or not runner.running:
            return []
        space = storage.space()
        reserve = runner.config.reserve_for(space.capacity_bytes)
        map_size = getattr(storage, "map_size", None)
        families: list[Metric] = [
            GaugeMetricFamily(
                "pxq_storage_used_bytes",
                "Bytes of the LMDB pages in use (every table's B-tree, freed pages excluded).",
                value=space.used_bytes,
            ),
            GaugeMetricFamily(
                "pxq_storage_file_bytes", "Size of the LMDB data file.", value=space.file_bytes
            ),
            GaugeMetricFamily(
                "pxq_storage_map_max_bytes",
                "The LMDB map's limit (map_size_max_bytes, or more for a replica that started "
                "over it).",
                value=space.map_max_bytes,
            ),
            GaugeMetricFamily(
                "pxq_storage_available_bytes",
                "What the storage can still take: the smaller of the map's and the disk's room.",
                value=space.available_bytes,
            ),
            GaugeMetricFamily(
                "pxq_storage_reserve_bytes",
                "Headroom kept for everything but enqueues: below it, enqueues are refused.",
                value=reserve,
            ),
            GaugeMetricFamily(
                "pxq_storage_short",
                "1 while the node refuses enqueues for lack of storage (storage_full).",
                value=int(runner.storage_short),
            ),
        ]
        if isinstance(map_size, int):
            families.append(
                GaugeMetricFamily(
                    "pxq_storage_map_size_bytes",
                    "The LMDB map's current size (it doubles when full, up to its limit).",
                    value=map_size,
                )
            )
        checkpoints = getattr(storage, "checkpoints", None)
        rewinds = getattr(storage, "rewinds", None)
        held = getattr(storage, "held", None)
        if isinstance(checkpoints, int) and isinstance(held, int) and isinstance(rewinds, int):
            families += [
                CounterMetricFamily(
                    "pxq_storage_checkpoints",
                    "Checkpoints of the write-ahead log into LMDB (this incarnation).",
                    value=checkpoints,
                ),
                CounterMetricFamily(
                    "pxq_storage_log_rewinds",
                    "Checkpoints that also started the write-ahead log over (this incarnation).",
                    value=rewinds,
                ),
                GaugeMetricFamily(
                    "pxq_storage_log_batches",
                    "Batches sealed that LMDB does not hold yet (most durable in the log).",
                    value=held,
                ),
            ]
        return families

    def _paxos(self, node: ReplicatedService[Any], now: Now) -> list[Metric]:
        service = self.runner.service
        labels = ("service", "paxos_group")
        master = GaugeMetricFamily(
            "pxq_paxos_master",
            "1 where this node is the group's master and holds its lease (it serves).",
            labels=labels,
        )
        role = GaugeMetricFamily(
            "pxq_paxos_role",
            "The node's role in the group (value 1 for the current role).",
            labels=(*labels, "role"),
        )
        ballot = GaugeMetricFamily(
            "pxq_paxos_ballot", "The group's ballot as this node knows it.", labels=labels
        )
        applied = GaugeMetricFamily(
            "pxq_paxos_applied_instance",
            "Highest log instance applied by this replica.",
            labels=labels,
        )
        chosen = GaugeMetricFamily(
            "pxq_paxos_chosen_instance",
            "Highest log instance this replica knows chosen (applied, or waiting to be).",
            labels=labels,
        )
        for g, group in enumerate(node.replica.groups):
            key = (service, str(g))
            master.add_metric(key, int(node.is_master(g, now)))
            for r in Role:
                role.add_metric((*key, r.value), int(group.role is r))
            ballot.add_metric(key, group.ballot)
            learner = group.learner
            applied.add_metric(key, learner.applied)
            chosen.add_metric(key, max(learner.chosen, default=learner.applied))
        return [master, role, ballot, applied, chosen]

    def _queues(self, node: StoreNode, now: Now) -> list[Metric]:
        config = node.config
        end = GaugeMetricFamily(
            "pxq_queue_end_offset",
            "Items ever enqueued to the queue (the offset the next one takes); from the "
            "master of its Paxos group.",
            labels=("topic", "queue"),
        )
        stored = GaugeMetricFamily(
            "pxq_queue_stored_items",
            "Items the queue still stores (retention removes consumed ones).",
            labels=("topic", "queue"),
        )
        cursor = GaugeMetricFamily(
            "pxq_consumer_cursor",
            "The consumer group's committed cursor on the queue.",
            labels=("topic", "consumer_group", "queue"),
        )
        lag = GaugeMetricFamily(
            "pxq_consumer_lag",
            "Items of the queue the consumer group has not consumed (end offset - cursor).",
            labels=("topic", "consumer_group", "queue"),
        )
        for g in range(node.groups):
            if not node.is_master(g, now):
                continue
            sm = node.state_machine(g)
            queues = {
                (t.name, q)
                for t in config.topics
                for q in config.queues_of(t.name, node.store.name, g)
            }
            queues.update(sm.queue_names())  # retry levels and dead letters that hold items
            for topic, q in sorted(queues):
                info = config.topic(topic)
                if info is None:
                    continue
                first, end_offset = sm.offsets(topic, q)
                end.add_metric((topic, str(q)), end_offset)
                stored.add_metric((topic, str(q)), end_offset - first)
                for cg in info.subscribers_of(q):
                    at = sm.cursor(topic, cg.name, q)
                    cursor.add_metric((topic, cg.name, str(q)), at)
                    lag.add_metric((topic, cg.name, str(q)), max(0, end_offset - at))
        return [end, stored, cursor, lag]


_RUNNING_HELP: Final = "1 while the node runs (0 once it stopped or crashed)."


def _histogram(name: str, documentation: str, times: CommitTimes) -> HistogramMetricFamily:
    counts, sum_s = times.snapshot()
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, n in zip((*COMMIT_SECONDS_BUCKETS, float("inf")), counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=sum_s)


class MetricsServer:
    """The HTTP endpoint of one node's metrics (``/metrics``, or any path), on a thread of its
    own; ``close`` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(
        cls, runner: NodeRunner, host: str, port: int, *, process: bool = False
    ) -> MetricsServer:
        """Serve ``runner``'s metrics on ``host:port`` (0: any free port); ``process`` adds
        the process's own (CPU, memory, file descriptors: for a process of one node).
        ``AddressInUse`` if the port is taken, ``StartupError`` for another bind failure."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(runner))
        if process:
            ProcessCollector(registry=registry)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"cannot serve metrics on {host}:{port}: the port is in use"
                ) from exc
            raise StartupError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        thread.name = f"pxq-metrics-{runner.node_id}"
        return cls(server, thread)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return (str(host), int(port))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
