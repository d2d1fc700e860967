"""Runs one scenario at one seed: build the world, drive the workload, inject the faults,
heal, check, and report.

A run has a safety phase (``duration_ms`` with the scripted and random faults) and a
liveness phase (everything healed and restarted; the workload keeps going for
``final.liveness_ms`` and must make progress within that bound), then the clients stop and
the cluster quiesces before the checkers read the history and the replicas. The log, lock and
register workloads quiesce for ``final.quiesce_ms`` (at least one call timeout); the register
workload then reads every key through the log (its final reads, into the history). The queue
workload quiesces at least ``final.quiesce_ms`` and then until it has settled (every producer
call resolved, every acknowledged item delivered to every group, every failed item delivered
again: ``QueueWorkload.settled``), at most ``final.settle_ms`` in all; then it reads the store
itself (Jepsen's final reads: every queue from the master and from each replica, into the
history) and the dead-letter queues.

Each check meets its expectation: pass, or fail where ``[check.NAME] expect = "fail"``; a
negative control without such names passes when any safety check fails.
"""

from __future__ import annotations

import io
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TextIO, TypeVar

from pxq.check.availability import (
    check_availability,
    check_election,
    election_bound_ms,
    group_load,
)
from pxq.check.history import HistoryWriter, pair_ops
from pxq.check.linear import MAX_STEPS_DEFAULT
from pxq.check.lock import check_fencing, check_lock_linearizable, check_lock_liveness
from pxq.check.log import check_agreement, check_liveness, check_no_loss, check_realtime_order
from pxq.check.models import check_history
from pxq.check.ownership import check_failover, check_ownership, check_rate_limit
from pxq.check.queue import (
    check_cursor_monotonic,
    check_delivery,
    check_queue_order,
    check_read_after_ack,
    check_replay,
    check_retry_flow,
    check_total_queue,
)
from pxq.check.result import CheckResult, Offenders, verdict
from pxq.check.retry_delay import check_retry_delay
from pxq.config.parser import ConfigError
from pxq.effects import NodeId, StorageCorruption, StorageView
from pxq.lock.node import LockNode
from pxq.paxos.config import PaxosConfig
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.replica import Replica
from pxq.scheduler.node import Scheduler
from pxq.store.node import StoreNode
from pxq.store.sm import QueueStore
from sim.availability import HealthMonitor
from sim.client import ClientSetup, OneOpClient
from sim.lock_workload import LockClient
from sim.nemesis import Nemesis
from sim.queue_workload import TOPIC, QueueWorkload, cluster_config
from sim.register_workload import RegisterClient
from sim.rng import stream
from sim.scenario import LIVENESS_CHECKS, Scenario
from sim.workload import LogClient, value_id
from sim.world import TraceRecord, World
from sim.zones import members as zone_members

DRAIN_BOUND_US = 10_000_000
"""How long (simulated) the final reads, and then reading the dead-letter queues, may take."""
SETTLE_STEP_US = 100_000
"""How often the queue workload's quiet period looks whether the run has settled."""
FAILOVER_SLACK_MS = 1000
"""A dead consumer's queues must be granted again within its lease plus this."""
BATCH_ROW_ITEMS_MAX = 1000
"""Items one stored row may hold (an enqueue batch): retention removes whole rows."""


@dataclass(slots=True)
class RunResult:
    seed: int
    scenario: str
    file: str
    ok: bool
    expect: str
    safety_ok: bool
    trace_digest: str
    sim_time_ms: int
    wall_s: float
    checks: dict[str, CheckResult]
    repro: str
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "scenario": self.scenario,
            "file": self.file,
            "ok": self.ok,
            "expect": self.expect,
            "safety_ok": self.safety_ok,
            "trace_digest": self.trace_digest,
            "sim_time_ms": self.sim_time_ms,
            "wall_s": round(self.wall_s, 3),
            "checks": {name: c.to_json() for name, c in self.checks.items()},
            "repro": self.repro,
            "stats": self.stats,
        }


def paxos_config(scn: Scenario) -> PaxosConfig:
    """The cluster's Paxos configuration: defaults, then the scenario's overrides (this also
    validates the overrides, for the queue workload too)."""
    replicas = tuple(f"n{i}" for i in range(scn.cluster.replicas))
    base = PaxosConfig(replicas=replicas, groups=scn.cluster.groups)
    overrides: dict[str, Any] = dict(scn.cluster.paxos)
    unknown = sorted(set(overrides) - set(PaxosConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{scn.file}: cluster.paxos.{unknown[0]}: unknown key")
    try:
        return replace(base, **overrides)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{scn.file}: cluster.paxos: {exc}") from None


def validate(scn: Scenario) -> None:
    """Check what the scenario loader cannot: Paxos overrides and, for the queue workload,
    the cluster configuration it implies. Raises ValueError naming the file and key."""
    paxos_config(scn)
    if scn.workload.kind == "queue":
        try:
            cluster_config(scn)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


ClientT = TypeVar("ClientT", bound=OneOpClient[Any])


class _ClientSystem(ABC, Generic[ClientT]):
    """A workload of Paxos nodes and clients with one operation in flight each
    (``sim/client.py``): what the log, lock and register workloads share. A subclass makes
    the nodes (``_factory``) and the clients (``_client``), and names its checks."""

    COUNTS: ClassVar[tuple[str, ...]]
    """What its clients count (``stats`` sums them)."""
    STREAM: ClassVar[str]
    """Client ``c<i>`` draws from the run's stream ``<STREAM>/<i>``."""

    def __init__(self, scn: Scenario, world: World, history: HistoryWriter, seed: int) -> None:
        self.scn = scn
        self.world = world
        self.history = history
        self.config = paxos_config(scn)
        self.replicas = list(self.config.replicas)
        for node_id in self.replicas:
            world.add_node(node_id, self._factory)
        self.clients = [self._client(self._setup(i, seed)) for i in range(scn.workload.clients)]

    @abstractmethod
    def _factory(self, node_id: NodeId, storage: StorageView, rng: Any) -> Any:
        """The node ``node_id`` (a ``sim.world.NodeFactory``)."""

    @abstractmethod
    def _client(self, setup: ClientSetup) -> ClientT:
        """The client made with ``setup``."""

    def _setup(self, i: int, seed: int) -> ClientSetup:
        """What client ``c<i>`` is made with."""
        w = self.scn.workload
        return ClientSetup(
            name=f"c{i}",
            index=i,
            clients=w.clients,
            world=self.world,
            history=self.history,
            rng=stream(seed, f"{self.STREAM}/{i}"),
            replicas=self.replicas,
            groups=self.config.groups,
            rate_per_s=w.rate_per_s / max(1, w.clients),
            timeout_ms=w.timeout_ms,
        )

    def attach(self, nemesis: Nemesis) -> None:
        del nemesis  # the clients are not fault targets (the lock workload's are)

    def roles(self) -> dict[str, list[str]]:
        """The processes of each role ``[zones]`` can place (``sim.zones.ROLES``)."""
        return {"replicas": self.replicas, "clients": [c.name for c in self.clients]}

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def stop(self) -> None:
        for client in self.clients:
            client.stop()

    def quiesce(self) -> None:
        """Wait ``final.quiesce_ms``, at least one call timeout (every call ends)."""
        final, w = self.scn.final, self.scn.workload
        self.world.run_until(self.world.now_us + max(final.quiesce_ms, w.timeout_ms + 1) * 1000)

    def finish(self) -> None:
        """Nothing to collect after the quiesce."""

    @abstractmethod
    def checks(self, heal_ms: int) -> dict[str, CheckResult]:
        """The workload's own checks that the scenario names."""

    def stats(self) -> dict[str, Any]:
        return {k: sum(c.counts[k] for c in self.clients) for k in self.COUNTS}


class _LogSystem(_ClientSystem[LogClient]):
    """The replicated-log workload: Paxos replicas with ``RecordingLog``, appending clients."""

    COUNTS = LogClient.COUNTS
    STREAM = "client"

    def _factory(self, node_id: NodeId, storage: StorageView, rng: Any) -> Replica:
        return Replica(node_id, self.config, storage, rng, lambda g: RecordingLog(storage, g))

    def _client(self, setup: ClientSetup) -> LogClient:
        w = self.scn.workload
        return LogClient(setup, value_bytes=w.value_bytes)

    def checks(self, heal_ms: int) -> dict[str, CheckResult]:
        ops, names = self.history.ops, self.scn.checks
        out: dict[str, CheckResult] = {}
        chosen = _chosen_log(self.world, self.replicas, self.scn.cluster.groups)
        if "no_loss" in names:
            out["no_loss"] = check_no_loss(ops, chosen)
        if "realtime_order" in names:
            out["realtime_order"] = check_realtime_order(ops, chosen)
        if "liveness" in names:
            out["liveness"] = check_liveness(ops, heal_ms, self.scn.final.liveness_ms)
        return out


class _LockServiceSystem(_ClientSystem[ClientT]):
    """Lock nodes (``LockNode``) and clients of the lock service."""

    def _factory(self, node_id: NodeId, storage: StorageView, rng: Any) -> LockNode:
        return LockNode(node_id, self.config, storage, rng)


class _LockSystem(_LockServiceSystem[LockClient]):
    """The lock workload: lock nodes (``LockNode``) and clients acquiring, renewing,
    releasing and reading locks (``sim/lock_workload.py``)."""

    COUNTS = LockClient.COUNTS
    STREAM = "lock-client"

    def _client(self, setup: ClientSetup) -> LockClient:
        w = self.scn.workload
        return LockClient(setup, keys=w.keys, lease_ms=w.lease_ms)

    def attach(self, nemesis: Nemesis) -> None:
        # The clients are endpoints, not hosts: network faults only (``client[i]``).
        nemesis.clients = [client.name for client in self.clients]

    def checks(self, heal_ms: int) -> dict[str, CheckResult]:
        ops, names = self.history.ops, self.scn.checks
        out: dict[str, CheckResult] = {}
        if "linearizable" in names:
            out["linearizable"] = check_lock_linearizable(ops)
        if "fencing" in names:
            out["fencing"] = check_fencing(ops)
        if "liveness" in names:
            out["liveness"] = check_lock_liveness(ops, heal_ms, self.scn.final.liveness_ms)
        return out


class _RegisterSystem(_LockServiceSystem[RegisterClient]):
    """The register workload: lock nodes and clients reading, writing and compare-and-setting
    their registers (``sim/register_workload.py``), then the final reads."""

    COUNTS = RegisterClient.COUNTS
    STREAM = "register-client"

    def _client(self, setup: ClientSetup) -> RegisterClient:
        w = self.scn.workload
        return RegisterClient(setup, keys=w.keys)

    def finish(self) -> None:
        """The first client reads every key through the log (bounded in simulated time)."""
        if self.clients:
            _bounded(self.world, self.clients[0].final_reads)

    def checks(self, heal_ms: int) -> dict[str, CheckResult]:
        ops, names = self.history.ops, self.scn.checks
        out: dict[str, CheckResult] = {}
        if "linearizable" in names:
            # As ``pxq check --model kv`` checks it.
            (out["linearizable"],) = check_history(ops, "kv", max_steps=MAX_STEPS_DEFAULT).checks
        if "liveness" in names:
            out["liveness"] = check_liveness(ops, heal_ms, self.scn.final.liveness_ms, f="write")
        return out


class _QueueSystem:
    """The queue workload: store replicas, producers and consumer groups."""

    def __init__(self, scn: Scenario, world: World, history: HistoryWriter, seed: int) -> None:
        self.scn = scn
        self.world = world
        self.history = history
        self.workload = QueueWorkload(scn, world, history, seed)
        self.replicas = self.workload.replicas
        self.settle: dict[str, int] = {}

    def attach(self, nemesis: Nemesis) -> None:
        nemesis.consumers = list(self.workload.consumers)
        nemesis.producers = list(self.workload.producers)
        nemesis.locks = list(self.workload.locks)
        nemesis.schedulers = list(self.workload.schedulers)
        nemesis.lock_master_of = self._lock_master_of
        nemesis.on_seek = self.workload.seek
        nemesis.consumer_groups = list(self.workload.groups)

    def roles(self) -> dict[str, list[str]]:
        """The processes of each role ``[zones]`` can place (``sim.zones.ROLES``); the
        operator's endpoint (seeks, final reads) stays outside every zone."""
        w = self.workload
        return {
            "replicas": self.replicas,
            "locks": list(w.locks),
            "producers": list(w.producers),
            "consumers": list(w.consumers),
            "schedulers": list(w.schedulers),
        }

    def _lock_master_of(self, group: int) -> NodeId | None:
        for node_id in self.workload.locks:
            host = self.world.hosts[node_id]
            node = host.node
            if (
                not host.crashed
                and isinstance(node, LockNode)
                and node.is_master(group, host.clock.now(self.world.now_us))
            ):
                return node_id
        return None

    def start(self) -> None:
        self.workload.start()

    def stop(self) -> None:
        self.workload.stop()

    def quiesce(self) -> None:
        """Wait ``final.quiesce_ms``, then until the workload has settled, at most
        ``final.settle_ms`` in all (which exceeds the producers' call timeout)."""
        final, world = self.scn.final, self.world
        start = world.now_us
        world.run_until(start + final.quiesce_ms * 1000)
        bound = start + max(final.quiesce_ms, final.settle_ms) * 1000
        while not self.workload.settled() and world.now_us < bound:
            world.run_until(min(bound, world.now_us + SETTLE_STEP_US))
        self.settle = {"quiet_ms": (world.now_us - start) // 1000} | self.workload.unsettled()

    def finish(self) -> None:
        """Read every queue of the store, then the dead-letter queues, into the history (each
        bounded in simulated time)."""
        _bounded(self.world, self.workload.final_reads)
        _bounded(self.world, self.workload.drain_dead_letters)

    def checks(self, heal_ms: int) -> dict[str, CheckResult]:
        ops, names, w = self.history.ops, self.scn.checks, self.scn.workload
        groups = self.workload.groups
        out: dict[str, CheckResult] = {}

        def window(name: str) -> tuple[int, int] | None:
            return self.scn.check_spec(name).window_ms

        subscriptions = {g: {TOPIC: range(w.queues)} for g in groups}
        if "total_queue" in names:
            out["total_queue"] = check_total_queue(
                ops,
                subscriptions,
                duplicates_allowed=w.duplicates_allowed,
                window=window("total_queue"),
            )
        if "delivery" in names:
            out["delivery"] = check_delivery(ops, subscriptions, window=window("delivery"))
        if "read_after_ack" in names:
            out["read_after_ack"] = check_read_after_ack(ops, window=window("read_after_ack"))
        if "cursor_monotonic" in names:
            out["cursor_monotonic"] = check_cursor_monotonic(ops, window=window("cursor_monotonic"))
        if "queue_order" in names:
            out["queue_order"] = check_queue_order(ops)
        if "replay" in names:
            out["replay"] = check_replay(ops)
        if "retry_flow" in names:
            retries = {g: len(w.retry_delays_ms) for g in groups}
            out["retry_flow"] = check_retry_flow(ops, retries, dead_letter=w.dead_letter)
        if "retry_delay" in names:
            delays = {g: w.retry_delays_ms for g in groups}
            out["retry_delay"] = check_retry_delay(ops, delays)
        if "retention" in names:
            out["retention"] = self._retention()
        if "liveness" in names:
            out["liveness"] = check_liveness(ops, heal_ms, self.scn.final.liveness_ms, f="enqueue")
        consumers = self.workload.consumers
        if "ownership" in names:
            out["ownership"] = check_ownership(ops, consumers)
        if "failover" in names:
            bound = w.lease_ms + FAILOVER_SLACK_MS
            lock_config = self.workload.lock_config
            out["failover"] = check_failover(
                ops,
                consumers,
                bound,
                lock_groups=None if lock_config is None else lock_config.groups,
                window=window("failover"),
            )
        if "rate_limit" in names and w.rate_items_per_s is not None:
            burst = w.rate_burst if w.rate_burst is not None else max(1, w.rate_items_per_s)
            out["rate_limit"] = check_rate_limit(ops, consumers, w.rate_items_per_s, burst)
        if "balance" in names:
            out["balance"] = self._balance()
        if "linearizable" in names:  # the consumers' and schedulers' lock calls
            out["linearizable"] = check_lock_linearizable(ops)
        if "fencing" in names:
            out["fencing"] = check_fencing(ops)
        if "storage_full" in names:
            out["storage_full"] = self._storage_full()
        return out

    def _storage_full(self) -> CheckResult:
        """The path of a short storage was taken: some enqueues were refused ``storage_full``
        (definite failures), and enqueues invoked after the first refusal were acknowledged
        again (the store resumed once consumers and retention freed space). Whether anything
        acknowledged was lost is ``total_queue``'s to say."""
        refused = resumed = 0
        first_refusal_ms: int | None = None
        for invoke, completion in pair_ops(self.history.ops):
            if invoke.f != "enqueue" or completion is None:
                continue
            if completion.type == "fail" and completion.get("reason") == "storage_full":
                refused += 1
                if first_refusal_ms is None or completion.time_ms < first_refusal_ms:
                    first_refusal_ms = completion.time_ms
        for invoke, completion in pair_ops(self.history.ops):
            if (
                invoke.f == "enqueue"
                and first_refusal_ms is not None
                and invoke.time_ms > first_refusal_ms
                and completion is not None
                and completion.type == "ok"
            ):
                resumed += 1
        missing = Offenders()
        if refused == 0:
            missing.add({"problem": "no enqueue was refused storage_full"})
        elif resumed == 0:
            missing.add({"problem": "no enqueue was acknowledged after the first refusal"})
        return verdict(
            "storage_full",
            {"path-not-taken": missing},
            passed=f"{refused} enqueues refused storage_full, {resumed} acknowledged after",
            details={
                "refused": refused,
                "acknowledged_after": resumed,
                "first_refusal_ms": first_refusal_ms,
            },
        )

    def _balance(self) -> CheckResult:
        """After the run, the active scheduler's assignment of each group keeps every live
        consumer's load (items enqueued to its queues in the second half of the run) within
        the hysteresis band of the mean plus one queue's load (queues are indivisible)."""
        w = self.scn.workload
        half_ms = self.scn.duration_ms // 2
        loads: dict[tuple[str, int], int] = {}
        for op in self.history.ops:
            if op.f == "enqueue" and op.type == "ok" and op.time_ms >= half_ms:
                q = op.get("queue")
                if isinstance(q, int):
                    loads[(TOPIC, q)] = loads.get((TOPIC, q), 0) + 1
        published: dict[str, dict[tuple[str, int], str]] = {}
        for name in self.workload.schedulers:
            host = self.world.hosts[name]
            node = host.node
            now_ms = host.clock.now(self.world.now_us).mono_ms
            if isinstance(node, Scheduler) and not host.crashed and node.is_leader(now_ms):
                published = node.published
        bad = Offenders()
        spreads: dict[str, object] = {}
        for group in self.workload.groups:
            assignment = published.get(group)
            if not assignment:
                bad.add({"group": group, "problem": "no assignment published"})
                continue
            per: dict[str, int] = {}
            for queue_id, owner in assignment.items():
                per[owner] = per.get(owner, 0) + loads.get(queue_id, 0)
            members = sorted(set(assignment.values()))
            mean = sum(per.values()) / max(1, len(members))
            top = max(per.values(), default=0)
            allowed = mean * (100 + w.band_pct) / 100 + max(loads.values(), default=0)
            spreads[group] = {"mean": round(mean), "max": top, "allowed": round(allowed)}
            if top > allowed:
                bad.add({"group": group, "max": top, "allowed": round(allowed)})
        return verdict(
            "balance",
            {"unbalanced": bad},
            passed="every group's load within the band of the mean (plus one queue)",
            details={"groups": spreads, "publishes": len(self.workload.publishes)},
        )

    def _retention(self) -> CheckResult:
        """With every group caught up, each queue keeps at most the hold plus one stored row
        (rows are removed whole) behind the slowest cursor."""
        w = self.scn.workload
        hold = w.hold_items
        slack = hold + BATCH_ROW_ITEMS_MAX if hold is not None else None
        over: list[dict[str, int]] = []
        stored = enqueued = 0
        for q in range(w.queues):
            group = q % self.scn.cluster.groups
            sm = _live_state_machine(self.world, self.replicas, group)
            if sm is None:
                continue
            first, end = sm.offsets(TOPIC, q)
            stored += end - first
            enqueued += end
            if slack is not None and end - first > slack:
                over.append({"queue": q, "kept": end - first, "allowed": slack})
        ok = not over
        return CheckResult(
            name="retention",
            ok=ok,
            summary=(
                f"retention: ok, {stored} of {enqueued} items kept"
                + ("" if hold is None else f" (hold {hold} per queue)")
                if ok
                else f"retention: FAILED, {len(over)} queues keep more than the hold allows"
            ),
            details={"stored": stored, "enqueued": enqueued, "over": over[:10]},
        )

    def stats(self) -> dict[str, Any]:
        return self.workload.stats() | {"settle": self.settle}


def _bounded(world: World, start: Callable[[Callable[[], None]], None]) -> None:
    """Start a phase that calls its ``done`` when over, and run the world until it is, at
    most ``DRAIN_BOUND_US`` of simulated time."""
    finished = False

    def done() -> None:
        nonlocal finished
        finished = True

    start(done)
    deadline = world.now_us + DRAIN_BOUND_US
    while not finished and world.now_us < deadline:
        world.run_until(min(deadline, world.now_us + SETTLE_STEP_US))


def _live_state_machine(world: World, replicas: list[NodeId], group: int) -> QueueStore | None:
    for node_id in replicas:
        host = world.hosts[node_id]
        node = host.node
        if not host.crashed and isinstance(node, StoreNode):
            sm = node.state_machine(group)
            if isinstance(sm, QueueStore):
                return sm
    return None


def run(
    scn: Scenario,
    seed: int,
    *,
    history_out: TextIO | None = None,
    trace_out: TextIO | None = None,
    observe: Callable[[World], None] | None = None,
) -> RunResult:
    """Run ``scn`` with ``seed`` (which replaces the file's own seed). ``observe`` is called
    with the world once its nodes exist, before they boot (to attach a trace listener that
    only reads, such as ``sim.lanes.NodeLanes``: the digest must not move)."""
    started = time.perf_counter()
    world = World(
        seed=seed,
        network=scn.network,
        disk=scn.disk,
        drift_ppm_max=scn.clock.drift_ppm_max,
        skew_ms_max=scn.clock.skew_ms_max,
        blank=scn.cluster.blank,
    )
    history = HistoryWriter(history_out if history_out is not None else io.StringIO())
    system: _LogSystem | _QueueSystem | _LockSystem | _RegisterSystem
    if scn.workload.kind == "queue":
        system = _QueueSystem(scn, world, history, seed)
    elif scn.workload.kind == "lock":
        system = _LockSystem(scn, world, history, seed)
    elif scn.workload.kind == "register":
        system = _RegisterSystem(scn, world, history, seed)
    else:
        system = _LogSystem(scn, world, history, seed)
    replicas = system.replicas
    checksums: dict[str, dict[int, dict[int, int]]] = {n: {} for n in replicas}
    last_master: dict[int, NodeId] = {}

    def listen(rec: TraceRecord) -> None:
        if rec.kind == "applied":
            f = dict(rec.fields)
            group, instance, checksum = f.get("group"), f.get("instance"), f.get("checksum")
            if (
                rec.node in checksums  # the store's (or log's) replicas, not the lock service's
                and isinstance(group, int)
                and isinstance(instance, int)
                and isinstance(checksum, int)
            ):
                checksums[rec.node].setdefault(group, {})[instance] = checksum
        elif rec.kind == "master" and rec.node in checksums:  # not the lock service's
            f = dict(rec.fields)
            group = f.get("group")
            if f.get("state") in ("became", "elected") and isinstance(group, int):
                last_master[group] = rec.node
        if trace_out is not None:
            trace_out.write(
                json.dumps(
                    {"t_us": rec.time_us, "node": rec.node, "kind": rec.kind}
                    | {k: v.hex() if isinstance(v, bytes) else v for k, v in rec.fields},
                    separators=(",", ":"),
                )
                + "\n"
            )

    world.listeners.append(listen)
    health = (
        HealthMonitor(world, replicas, scn.cluster.groups)
        if {"availability", "election"} & set(scn.checks)
        else None
    )

    def master_of(group: int) -> NodeId | None:
        now_us = world.now_us
        for node_id in replicas:
            host = world.hosts[node_id]
            node = host.node
            if (
                not host.crashed
                and isinstance(node, Replica | StoreNode | LockNode)
                and node.is_master(group, host.clock.now(now_us))
            ):
                return node_id
        return last_master.get(group)

    nemesis = Nemesis(world, history, stream(seed, "faults"), replicas, master_of)
    system.attach(nemesis)
    if scn.zones.names:
        placement = scn.zones.placement(system.roles())
        world.network.zone_of = placement
        world.network.zone_links = scn.zones.links()
        nemesis.zones = zone_members(placement)
    if observe is not None:
        observe(world)
    world.start()
    system.start()
    for i, fault in enumerate(scn.faults):
        nemesis.schedule(fault, f"faults[{i}]")
    if scn.random_faults.enabled:
        nemesis.random_faults(scn.random_faults, scn, scn.duration_ms)

    end_safety_us = scn.duration_ms * 1000
    world.run_until(end_safety_us)
    heal_ms = world.now_us // 1000
    nemesis.close()
    if scn.final.heal_all:
        nemesis.heal_all(restart=scn.final.restart_all)
        for left in nemesis.faults_left(restarted=scn.final.restart_all):
            nemesis.problems.append(f"still in force after the final heal: {left}")
    world.run_until(end_safety_us + scn.final.liveness_ms * 1000)
    system.stop()
    system.quiesce()
    system.finish()

    checks: dict[str, CheckResult] = {"invariants": _invariants(world)}
    if "agreement" in scn.checks:
        checks["agreement"] = check_agreement(checksums)
    checks |= system.checks(heal_ms)
    if health is not None:
        healthy = health.close()
        if "availability" in scn.checks:
            f = "enqueue" if scn.workload.kind == "queue" else "append"
            load = group_load(history.ops, f, scn.cluster.groups)
            checks["availability"] = check_availability(load, healthy)
        if "election" in scn.checks:
            bound = election_bound_ms(paxos_config(scn).lease_ms)
            checks["election"] = check_election(health.leaderless, bound_ms=bound)
    # Last: the system's checks read the replicas' disks too, and what they found corrupt counts.
    checks["corruption"] = _corruption(world)
    # A scenario whose faults did not happen as written proves nothing either way, a negative
    # control included.
    faults_check = _faults(nemesis.problems)
    safety_ok = all(c.ok for name, c in checks.items() if name not in LIVENESS_CHECKS)
    ok = meets_expectation(scn, checks, safety_ok)
    checks["faults"] = faults_check
    ok = ok and faults_check.ok
    stats = {
        "history_ops": len(history.ops),
        "faults": nemesis.applied,
        "trace_events": world.trace_count,
        "network": {
            "sent": world.network.stats.sent,
            "delivered": world.network.stats.delivered,
            "lost": world.network.stats.lost,
            "blocked": world.network.stats.blocked,
            "duplicated": world.network.stats.duplicated,
        },
        "clients": system.stats(),
        "crashes": sum(h.crashes for h in world.hosts.values()),
        "disk": {
            name: sum(getattr(h.disk.stats, name) for h in world.hosts.values())
            for name in (
                "torn_batches",
                "torn_batches_discarded",
                "torn_batches_trusted",
                "bitflips",
                "corrupt_reads",
            )
        },
        "random_faults": {
            "on": list(nemesis.kinds_on),
            "fired": dict(sorted(nemesis.fired.items())),
        },
        "violations": [v.message for v in world.violations[:5]],
    }
    return RunResult(
        seed=seed,
        scenario=scn.name,
        file=scn.file,
        ok=ok,
        expect=scn.expect_safety,
        safety_ok=safety_ok,
        trace_digest=world.digest(),
        sim_time_ms=world.now_us // 1000,
        wall_s=time.perf_counter() - started,
        checks=checks,
        repro=f"pxq sim run {scn.file} --seed {seed}",
        stats=stats,
    )


def _caught(check: CheckResult) -> bool:
    """Whether ``check`` found a violation: failed with a verdict, not merely undecided (a
    linearizability search that ran out of its budget proves nothing either way)."""
    return not check.ok and check.details.get("verdict") != "unknown"


def meets_expectation(scn: Scenario, checks: dict[str, CheckResult], safety_ok: bool) -> bool:
    """Whether a run's checks are what the scenario expects. With checks named
    ``expect = "fail"``: exactly those fail, each with a violation found (and a negative
    control's safety fails). Else a negative control needs a safety check to find a
    violation (an undecided check is no detection), and any other run every check to pass."""
    expected_fail = {name for name, spec in scn.check_specs if spec.expect == "fail"}
    if expected_fail:
        return (
            expected_fail <= set(checks)
            and all(_caught(c) if name in expected_fail else c.ok for name, c in checks.items())
            and (scn.expect_safety == "pass" or not safety_ok)
        )
    if scn.expect_safety == "pass":
        return safety_ok and all(c.ok for c in checks.values())
    return any(_caught(c) for name, c in checks.items() if name not in LIVENESS_CHECKS)


def _chosen_log(
    world: World, replicas: list[NodeId], groups: int
) -> dict[int, list[tuple[int, int, str]]]:
    """Each group's applied log, read from the replica that applied the most of it. A
    replica whose log holds a corrupt record (its checksum caught) is read around: the other
    replicas' logs decide, and the corruption is reported by the ``corruption`` check (the
    disk remembers what its reads found)."""
    out: dict[int, list[tuple[int, int, str]]] = {}
    for group in range(groups):
        best: list[tuple[int, int, str]] = []
        for node_id in replicas:
            host = world.hosts[node_id]
            if host.crashed:
                continue
            try:
                entries = [
                    (instance, slot, value_id(value))
                    for instance, slot, value in RecordingLog(host.disk.view(), group).records()
                ]
            except StorageCorruption:
                continue
            if len(entries) > len(best):
                best = entries
        out[group] = best
    return out


def _corruption(world: World) -> CheckResult:
    """Every corrupt record a read found (a node's or the checker's) was corrupted by an
    injected bit flip. A detected corruption is a finding, listed here, not a failure: it
    fails only when no fault explains it, that is when the storage handed over a record
    that was never written whole (a recovery that trusts a torn batch, a negative control)."""
    explained = Offenders()
    unexplained = Offenders()
    for node_id in sorted(world.hosts):
        disk = world.hosts[node_id].disk
        for table, key in disk.corrupt:
            found = {"node": node_id, "table": table, "key": key.hex()}
            (explained if (table, key) in disk.flipped else unexplained).add(found)
    return verdict(
        "corruption",
        {"unexplained": unexplained},
        passed=f"{explained.count} corrupt records found, each flipped by a fault",
        details={
            "detected": explained.count + unexplained.count,
            "explained": explained.count,
            "explained-examples": list(explained.examples),
        },
    )


def _faults(problems: list[str]) -> CheckResult:
    return CheckResult(
        name="faults",
        ok=not problems,
        summary=(
            "every scripted fault found its targets and the final heal undid every fault"
            if not problems
            else f"{len(problems)} fault problems, first: {problems[0]}"
        ),
        details={"problems": problems[:10]},
    )


def _invariants(world: World) -> CheckResult:
    return CheckResult(
        name="invariants",
        ok=not world.violations,
        summary=(
            "no node detected a broken invariant"
            if not world.violations
            else f"{len(world.violations)} invariant violations, first: {world.violations[0].message}"
        ),
        details={"violations": [v.message for v in world.violations[:10]]},
    )


def write_jsonl(path: Path) -> TextIO:
    """Open ``path`` for a history or trace written as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")
