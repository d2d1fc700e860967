"""The random fault kinds of a swarm: one table, ``RANDOM_KINDS``, from kind name to what the
kind needs from a scenario, how a swarm description names it, whether it is drawn by
default, and its drawer.

Adding a kind is one entry here. A drawer picks its targets from the nemesis's own stream and
applies the fault through ``Nemesis.apply`` (so it is logged and traced like a scripted one);
it returns ``Fired`` (with the inverse to schedule after the fault's duration, if any) or
``None`` when it could not apply (no target left within the bounds): only fired faults are
counted (``Nemesis.fired``, reported per kind by a run's stats and a swarm's totals).

Faults stay within what a correct cluster survives without losing an acknowledged value: at
most ``max_down`` replicas of a Paxos service (the store's, or the lock service's) crashed,
paused or about to crash of an fsync error at once; bit flips on at most a minority of the
store's replicas over a whole run (a replica that reads a flipped record stops); clocks within
``[clock]`` bounds; one consumer and one producer always left running. A zone outage takes
a whole zone at once, so it is drawn only among the zones whose loss keeps those bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.clock import EPOCH_MS
from sim.disk import DiskSpec
from sim.network import DelaySpec
from sim.scenario import ClockSpec, ClusterSpec, FaultSpec, Scenario, WorkloadSpec
from sim.zones import ZonesSpec

if TYPE_CHECKING:
    from pxq.effects import NodeId
    from sim.nemesis import Nemesis


@dataclass(frozen=True, slots=True)
class Fired:
    """A random fault that applied; ``undo`` (if any) runs after the fault's duration."""

    undo: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Parts:
    """What a kind may need of a scenario (known before the scenario is whole)."""

    cluster: ClusterSpec
    workload: WorkloadSpec
    disk: DiskSpec
    clock: ClockSpec
    zones: ZonesSpec


Drawer = Callable[["Nemesis", Scenario], Fired | None]
Needs = Callable[[Parts], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomKind:
    phrase: str
    """How a swarm file's description names the kind (checked by a test)."""
    draw: Drawer
    needs: Needs | None = None
    """Why the kind cannot apply to a scenario (None: it can)."""
    default: bool = False
    """Drawn when a file lists no ``kinds``."""


# --------------------------------------------------------------------------------------------
# What kinds need


def _queue(p: Parts) -> str | None:
    return None if p.workload.kind == "queue" else 'needs [workload] kind = "queue"'


def _consumers(p: Parts) -> str | None:
    if p.workload.kind != "queue" or p.workload.consumer_groups == 0:
        return 'needs [workload] kind = "queue" with consumer_groups >= 1'
    return None


def _lock_service(p: Parts) -> str | None:
    w = p.workload
    if w.kind == "lock" or (w.kind == "queue" and w.ownership == "locks"):
        return None
    return 'needs a lock service ([workload] kind = "lock", or ownership = "locks")'


def _schedulers(p: Parts) -> str | None:
    if p.workload.kind == "queue" and p.workload.schedulers > 0:
        return None
    return "needs [workload] schedulers >= 1"


def _reserve(p: Parts) -> str | None:
    # Without a reserve a full disk crashes its node at its next write: that is what the
    # crash faults are for (and they respect max_down).
    return None if p.disk.reserve_bytes > 0 else "needs [disk] reserve_bytes > 0"


def _drift(p: Parts) -> str | None:
    return None if p.clock.drift_ppm_max > 0 else "needs [clock] drift_ppm_max > 0"


def _skew(p: Parts) -> str | None:
    return None if p.clock.skew_ms_max > 0 else "needs [clock] skew_ms_max > 0"


def _zoned(p: Parts) -> str | None:
    return None if len(p.zones.names) >= 2 else "needs [zones] with two zones or more"


def _replicas(least: int) -> Needs:
    def needs(p: Parts) -> str | None:
        if p.cluster.replicas >= least:
            return None
        return f"needs [cluster] replicas >= {least}"

    return needs


# --------------------------------------------------------------------------------------------
# Drawers (each draw from ``nem.rng`` in a fixed order: the same seed draws the same faults)


def _limit(scenario: Scenario, pool: list[NodeId]) -> int:
    f = (len(pool) - 1) // 2
    return {"minority": f, "majority": f + 1, "all": len(pool)}[scenario.random_faults.max_down]


def _up_within_budget(nem: Nemesis, scenario: Scenario, pool: list[NodeId]) -> list[NodeId]:
    """The members of ``pool`` a process fault may take down now: none once ``max_down`` of
    them are down (crashed, paused, or armed to crash at their next fsync)."""
    hosts = nem.world.hosts
    down = [n for n in pool if hosts[n].crashed or hosts[n].paused or hosts[n].disk.fail_next_fsync]
    if len(down) >= _limit(scenario, pool):
        return []
    return [n for n in pool if n not in down]


def _lock_pool(nem: Nemesis) -> list[NodeId]:
    """The lock service's replicas: the queue workload's, or the lock workload's own."""
    return list(nem.locks) if nem.locks else list(nem.replicas)


def _partition(nem: Nemesis, scenario: Scenario) -> Fired | None:
    rng = nem.rng
    side = sorted(rng.sample(nem.replicas, rng.randint(1, max(1, nem.f))))
    direction = rng.choice(["both", "both", "in", "out"])
    fault = FaultSpec(action="partition", at_ms=0, direction=direction)  # type: ignore[arg-type]
    return Fired(nem.apply(fault, side))


def _replica_down(action: str, *, torn: bool = False) -> Drawer:
    def draw(nem: Nemesis, scenario: Scenario) -> Fired | None:
        up = _up_within_budget(nem, scenario, nem.replicas)
        if not up:
            return None
        target = [nem.rng.choice(up)]
        if action == "pause":
            return Fired(nem.apply(FaultSpec(action="pause", at_ms=0), target))
        if torn:
            nem.world.hosts[target[0]].disk.torn_on_power_loss = True
        power_loss = torn or nem.rng.random() < 0.5
        return Fired(nem.apply(FaultSpec(action="crash", at_ms=0, power_loss=power_loss), target))

    return draw


def _disk_full(nem: Nemesis, scenario: Scenario) -> Fired | None:
    # Full down to the reserve: the node is told its storage is short (a store refuses
    # enqueues) and keeps running (see nemesis._full_capacity).
    target = [nem.rng.choice(nem.replicas)]
    return Fired(nem.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), target))


def _clog(nem: Nemesis, scenario: Scenario) -> Fired | None:
    a, b = nem.rng.sample(nem.replicas, 2)
    return Fired(nem.apply(FaultSpec(action="clog", at_ms=0, peer=b, direction="out"), [a]))


def _network_rate(action: str) -> Drawer:
    def draw(nem: Nemesis, scenario: Scenario) -> Fired | None:
        rate = nem.rng.choice([0.01, 0.05, 0.1, 0.2])
        return Fired(nem.apply(FaultSpec(action=action, at_ms=0, rate=rate), []))

    return draw


def _client_down(pool_of: Callable[[Nemesis], list[str]], action: str) -> Drawer:
    def draw(nem: Nemesis, scenario: Scenario) -> Fired | None:
        hosts = nem.world.hosts
        live = [n for n in pool_of(nem) if not hosts[n].crashed and not hosts[n].paused]
        if len(live) <= 1:
            return None  # keep one up, so the queues (or the load) always have somewhere to go
        target = [nem.rng.choice(live)]
        return Fired(nem.apply(FaultSpec(action=action, at_ms=0), target))

    return draw


def _drift_change(nem: Nemesis, scenario: Scenario) -> Fired | None:
    bound = scenario.clock.drift_ppm_max
    drift = nem.rng.randint(-bound, bound)
    target = [nem.rng.choice(nem.replicas)]
    return Fired(nem.apply(FaultSpec(action="clock", at_ms=0, drift_ppm=drift), target))


def _lock_down(action: str) -> Drawer:
    def draw(nem: Nemesis, scenario: Scenario) -> Fired | None:
        pool = _lock_pool(nem)
        up = _up_within_budget(nem, scenario, pool)
        if not up:
            return None
        target = [nem.rng.choice(up)]
        fault = FaultSpec(action=action, at_ms=0, power_loss=nem.rng.random() < 0.5)
        return Fired(nem.apply(fault, target))

    return draw


def _scheduler_crash(nem: Nemesis, scenario: Scenario) -> Fired | None:
    # Consumers fall back to consistent hashing over live consumers while no scheduler runs.
    live = [n for n in nem.schedulers if not nem.world.hosts[n].crashed]
    if not live:
        return None
    return Fired(nem.apply(FaultSpec(action="crash", at_ms=0), [nem.rng.choice(live)]))


def _wall_step(nem: Nemesis, scenario: Scenario) -> Fired | None:
    """Step one node's wall clock (as NTP might) to an offset within ``[clock] skew_ms_max``
    of true time; monotonic time is unaffected. Not undone (a step is an event, not a
    state), except by the final heal."""
    bound = scenario.clock.skew_ms_max
    pool = nem.replicas + [n for n in nem.locks if n not in nem.replicas]
    target = nem.rng.choice(pool)
    wanted = nem.rng.randint(-bound, bound)
    now_us = nem.world.now_us
    offset = nem.world.hosts[target].clock.now(now_us).wall_ms - EPOCH_MS - now_us // 1000
    if wanted == offset:
        return None
    return Fired(nem.apply(FaultSpec(action="clock", at_ms=0, skew_ms=wanted - offset), [target]))


def _bitflip(nem: Nemesis, scenario: Scenario) -> Fired | None:
    # A replica that reads a flipped record stops (and may stop again at each restart), so
    # flips stay on at most a minority of the store's replicas over the run.
    pool = nem.replicas if len(nem.flipped) < nem.f else sorted(nem.flipped)
    if not pool:
        return None
    target = nem.rng.choice(pool)
    if not any(table.keys for table in nem.world.hosts[target].disk.durable.tables.values()):
        return None  # nothing durable to flip yet
    nem.flipped.add(target)
    return Fired(nem.apply(FaultSpec(action="disk", at_ms=0, disk_fault="bitflip"), [target]))


def _replaced(nem: Nemesis, scenario: Scenario) -> Fired | None:
    # A replaced disk leaves a replica that votes in no quorum until it has re-learned from
    # every other replica what it might have promised or accepted: damaged replicas (bit
    # flips included) stay within a minority of the store's replicas over the run, and the
    # replica goes down with its disk, so the down budget applies.
    up = _up_within_budget(nem, scenario, nem.replicas)
    damaged = nem.replicas if len(nem.flipped) < nem.f else sorted(nem.flipped)
    pool = [n for n in damaged if n in up]
    if not pool:
        return None
    target = nem.rng.choice(pool)
    nem.flipped.add(target)
    return Fired(nem.apply(FaultSpec(action="disk", at_ms=0, disk_fault="replaced"), [target]))


def _fsync_error(nem: Nemesis, scenario: Scenario) -> Fired | None:
    up = _up_within_budget(nem, scenario, nem.replicas)
    if not up:
        return None
    target = [nem.rng.choice(up)]
    nem.apply(FaultSpec(action="disk", at_ms=0, disk_fault="fsync_error"), target)
    return Fired(lambda: nem.end_fsync_error(target))


def _disk_slow(nem: Nemesis, scenario: Scenario) -> Fired | None:
    mean_ms = nem.rng.choice([5, 20, 50])
    fsync = DelaySpec(
        dist="exponential", min_us=1000, mean_us=mean_ms * 1000, max_us=mean_ms * 10_000
    )
    target = [nem.rng.choice(nem.replicas)]
    return Fired(
        nem.apply(FaultSpec(action="disk", at_ms=0, disk_fault="slow", fsync=fsync), target)
    )


def _delay(nem: Nemesis, scenario: Scenario) -> Fired | None:
    mean_ms = nem.rng.choice([5, 20, 50])
    delay = DelaySpec(
        dist="exponential", min_us=1000, mean_us=mean_ms * 1000, max_us=mean_ms * 10_000
    )
    return Fired(nem.apply(FaultSpec(action="delay", at_ms=0, delay=delay), []))


def _seek(nem: Nemesis, scenario: Scenario) -> Fired | None:
    rng = nem.rng
    group = rng.choice(nem.consumer_groups)
    queue = rng.randrange(scenario.workload.queues) if rng.random() < 0.75 else None
    back_ms = rng.randint(0, 2000)
    fault = FaultSpec(action="seek", at_ms=0, consumer_group=group, queue=queue, back_ms=back_ms)
    return Fired(nem.apply(fault, []))


def _shaped(shape: str) -> Drawer:
    def draw(nem: Nemesis, scenario: Scenario) -> Fired | None:
        fault = FaultSpec(action="partition", at_ms=0, shape=shape)  # type: ignore[arg-type]
        return Fired(nem.apply(fault, []))

    return draw


def _path(nem: Nemesis, scenario: Scenario) -> Fired | None:
    """Loss, duplication or delay on the paths between two replicas (one way or both)."""
    rng = nem.rng
    a, b = rng.sample(nem.replicas, 2)
    action = rng.choice(["loss", "duplicate", "delay"])
    direction = rng.choice(["both", "in", "out"])
    mean_ms = rng.choice([5, 20, 50])
    fault = FaultSpec(
        action=action,
        at_ms=0,
        direction=direction,  # type: ignore[arg-type]
        rate=rng.choice([0.05, 0.2, 0.5, 1.0]) if action != "delay" else 0.0,
        delay=DelaySpec(
            dist="exponential", min_us=1000, mean_us=mean_ms * 1000, max_us=mean_ms * 10_000
        )
        if action == "delay"
        else None,
    )
    return Fired(nem.apply(fault, [a], [b]))


def _down(nem: Nemesis, n: NodeId) -> bool:
    host = nem.world.hosts[n]
    return host.crashed or host.paused or host.disk.fail_next_fsync


def _zone_outage(nem: Nemesis, scenario: Scenario) -> Fired | None:
    """A whole zone out at once: its nodes crashed together (with or without power loss), or
    it cut off from everyone else. Only a zone whose loss keeps each Paxos service within
    ``max_down`` (counting what is already down) and leaves a consumer and a producer
    running elsewhere."""
    rng = nem.rng
    zone = rng.choice(sorted(nem.zones))
    crash = rng.random() < 0.5
    power_loss = rng.random() < 0.5
    members = nem.zones[zone]
    for pool in (nem.replicas, nem.locks):
        lost = [n for n in pool if n in members or _down(nem, n)]
        if pool and len(lost) > _limit(scenario, pool):
            return None
    for pool in (nem.consumers, nem.producers):
        if pool and all(n in members or _down(nem, n) for n in pool):
            return None
    if not crash:
        fault = FaultSpec(action="partition", at_ms=0)
        return Fired(nem.apply(fault, members))
    hosts = nem.world.hosts
    targets = [n for n in members if n in hosts and not hosts[n].crashed]
    if not targets:
        return None
    return Fired(nem.apply(FaultSpec(action="crash", at_ms=0, power_loss=power_loss), targets))


RANDOM_KINDS: dict[str, RandomKind] = {
    "partition": RandomKind(phrase="partitions", draw=_partition, default=True),
    "crash": RandomKind(phrase="replica crashes", draw=_replica_down("crash"), default=True),
    "pause": RandomKind(phrase="replica pauses", draw=_replica_down("pause"), default=True),
    "clog": RandomKind(phrase="clogs", draw=_clog, default=True),
    "loss": RandomKind(phrase="message loss", draw=_network_rate("loss"), default=True),
    "duplicate": RandomKind(phrase="duplication", draw=_network_rate("duplicate"), default=True),
    "reorder": RandomKind(phrase="reordering", draw=_network_rate("reorder"), default=True),
    "clock": RandomKind(phrase="clock drift", draw=_drift_change, needs=_drift, default=True),
    "torn": RandomKind(phrase="torn writes", draw=_replica_down("crash", torn=True), default=True),
    "consumer_crash": RandomKind(
        phrase="consumer crashes",
        draw=_client_down(lambda nem: nem.consumers, "crash"),
        needs=_consumers,
    ),
    "consumer_pause": RandomKind(
        phrase="consumer pauses",
        draw=_client_down(lambda nem: nem.consumers, "pause"),
        needs=_consumers,
    ),
    "disk_full": RandomKind(phrase="full disks", draw=_disk_full, needs=_reserve),
    "lock_crash": RandomKind(
        phrase="lock replica crashes", draw=_lock_down("crash"), needs=_lock_service
    ),
    "lock_pause": RandomKind(
        phrase="lock replica pauses", draw=_lock_down("pause"), needs=_lock_service
    ),
    "scheduler_crash": RandomKind(
        phrase="scheduler crashes", draw=_scheduler_crash, needs=_schedulers
    ),
    "producer_crash": RandomKind(
        phrase="producer crashes",
        draw=_client_down(lambda nem: nem.producers, "crash"),
        needs=_queue,
    ),
    "wall_step": RandomKind(phrase="wall-clock steps", draw=_wall_step, needs=_skew),
    "bitflip": RandomKind(phrase="bit flips", draw=_bitflip),
    "replaced": RandomKind(phrase="replaced disks", draw=_replaced),
    "fsync_error": RandomKind(phrase="fsync errors", draw=_fsync_error),
    "disk_slow": RandomKind(phrase="slow disks", draw=_disk_slow),
    "delay": RandomKind(phrase="delay spikes", draw=_delay),
    "seek": RandomKind(phrase="seeks", draw=_seek, needs=_consumers),
    "bridge": RandomKind(phrase="bridge partitions", draw=_shaped("bridge"), needs=_replicas(3)),
    "ring": RandomKind(phrase="ring partitions", draw=_shaped("ring"), needs=_replicas(5)),
    "path": RandomKind(phrase="per-path faults", draw=_path, needs=_replicas(3)),
    "zone_outage": RandomKind(phrase="zone outages", draw=_zone_outage, needs=_zoned),
}
"""Every random fault kind, by the name ``[random_faults] kinds`` uses."""

RANDOM_DEFAULT = tuple(k for k, v in RANDOM_KINDS.items() if v.default)
