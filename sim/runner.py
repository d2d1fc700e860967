"""Runs one scenario at one seed: build the world, drive the workload, inject the faults,
heal, check, and report.

A run has a safety phase (``duration_ms`` with the scripted and random faults) and a
liveness phase (everything healed and restarted; the workload keeps going for
``final.liveness_ms`` and must make progress within that bound), then the clients stop and
the cluster quiesces before the checkers read the history and the replicas.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from pxq.check.history import HistoryWriter
from pxq.check.log import check_agreement, check_liveness, check_no_loss, check_realtime_order
from pxq.check.result import CheckResult
from pxq.effects import NodeId, StorageView
from pxq.paxos.config import PaxosConfig
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.replica import Replica
from sim.nemesis import Nemesis
from sim.rng import stream
from sim.scenario import Scenario
from sim.workload import LogClient, value_id
from sim.world import TraceRecord, World

SAFETY_CHECKS = ("invariants", "agreement", "no_loss", "realtime_order")


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
    """The cluster's Paxos configuration: defaults, then the scenario's overrides."""
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


def _state_machine(storage: StorageView) -> Any:
    return lambda group: RecordingLog(storage, group)


def run(
    scn: Scenario,
    seed: int,
    *,
    history_out: TextIO | None = None,
    trace_out: TextIO | None = None,
) -> RunResult:
    """Run ``scn`` with ``seed`` (which replaces the file's own seed)."""
    started = time.perf_counter()
    config = paxos_config(scn)
    replicas = list(config.replicas)
    world = World(
        seed=seed,
        network=scn.network,
        disk=scn.disk,
        drift_ppm_max=scn.clock.drift_ppm_max,
        skew_ms_max=scn.clock.skew_ms_max,
    )
    history = HistoryWriter(history_out if history_out is not None else io.StringIO())

    def factory(node_id: NodeId, storage: StorageView, rng: Any) -> Replica:
        return Replica(node_id, config, storage, rng, _state_machine(storage))

    for node_id in replicas:
        world.add_node(node_id, factory)

    checksums: dict[str, dict[int, dict[int, int]]] = {n: {} for n in replicas}
    last_master: dict[int, NodeId] = {}

    def listen(rec: TraceRecord) -> None:
        if rec.kind == "applied":
            f = dict(rec.fields)
            group, instance, checksum = f.get("group"), f.get("instance"), f.get("checksum")
            if isinstance(group, int) and isinstance(instance, int) and isinstance(checksum, int):
                checksums[rec.node].setdefault(group, {})[instance] = checksum
        elif rec.kind == "master":
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

    def master_of(group: int) -> NodeId | None:
        now_us = world.now_us
        for node_id in replicas:
            host = world.hosts[node_id]
            node = host.node
            if (
                not host.crashed
                and isinstance(node, Replica)
                and node.is_master(group, host.clock.now(now_us))
            ):
                return node_id
        return last_master.get(group)

    nemesis = Nemesis(world, history, stream(seed, "faults"), replicas, master_of)
    clients = [
        LogClient(
            name=f"c{i}",
            index=i,
            clients=scn.workload.clients,
            world=world,
            history=history,
            rng=stream(seed, f"client/{i}"),
            replicas=replicas,
            groups=config.groups,
            rate_per_s=scn.workload.rate_per_s / max(1, scn.workload.clients),
            value_bytes=scn.workload.value_bytes,
            timeout_ms=scn.workload.timeout_ms,
        )
        for i in range(scn.workload.clients)
    ]

    world.start()
    for client in clients:
        client.start()
    for fault in scn.faults:
        nemesis.schedule(fault)
    if scn.random_faults.enabled:
        nemesis.random_faults(scn.random_faults, scn, scn.duration_ms)

    end_safety_us = scn.duration_ms * 1000
    world.run_until(end_safety_us)
    heal_ms = world.now_us // 1000
    if scn.final.heal_all:
        nemesis.heal_all(restart=scn.final.restart_all)
    world.run_until(end_safety_us + scn.final.liveness_ms * 1000)
    for client in clients:
        client.stop()
    quiesce_us = max(scn.final.quiesce_ms, scn.workload.timeout_ms + 1) * 1000
    world.run_until(world.now_us + quiesce_us)

    checks = _check(
        scn, world=world, history=history, replicas=replicas, checksums=checksums, heal_ms=heal_ms
    )
    safety_ok = all(checks[name].ok for name in SAFETY_CHECKS if name in checks)
    if scn.expect_safety == "pass":
        ok = safety_ok and all(c.ok for c in checks.values())
    else:
        ok = not safety_ok
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
        "clients": {
            k: sum(c.counts[k] for c in clients)
            for k in ("invoke", "ok", "fail", "info", "redirect")
        },
        "crashes": sum(h.crashes for h in world.hosts.values()),
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


def _chosen_log(
    world: World, replicas: list[NodeId], groups: int
) -> dict[int, list[tuple[int, int, str]]]:
    """Each group's applied log, read from the replica that applied the most of it."""
    out: dict[int, list[tuple[int, int, str]]] = {}
    for group in range(groups):
        best: list[tuple[int, int, str]] = []
        for node_id in replicas:
            host = world.hosts[node_id]
            if host.crashed:
                continue
            entries = [
                (instance, slot, value_id(value))
                for instance, slot, value in RecordingLog(host.disk.view(), group).records()
            ]
            if len(entries) > len(best):
                best = entries
        out[group] = best
    return out


def _check(
    scn: Scenario,
    *,
    world: World,
    history: HistoryWriter,
    replicas: list[NodeId],
    checksums: dict[str, dict[int, dict[int, int]]],
    heal_ms: int,
) -> dict[str, CheckResult]:
    checks: dict[str, CheckResult] = {}
    checks["invariants"] = CheckResult(
        name="invariants",
        ok=not world.violations,
        summary=(
            "no node detected a broken invariant"
            if not world.violations
            else f"{len(world.violations)} invariant violations, first: {world.violations[0].message}"
        ),
        details={"violations": [v.message for v in world.violations[:10]]},
    )
    ops = history.ops
    chosen = _chosen_log(world, replicas, scn.cluster.groups)
    if "agreement" in scn.checks:
        checks["agreement"] = check_agreement(checksums)
    if "no_loss" in scn.checks:
        checks["no_loss"] = check_no_loss(ops, chosen)
    if "realtime_order" in scn.checks:
        checks["realtime_order"] = check_realtime_order(ops, chosen)
    if "liveness" in scn.checks:
        checks["liveness"] = check_liveness(ops, heal_ms, scn.final.liveness_ms)
    return checks


def write_jsonl(path: Path) -> TextIO:
    """Open ``path`` for a history or trace written as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")
