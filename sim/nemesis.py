"""The nemesis: resolves fault targets when a fault fires, applies faults and their inverses,
and generates the background random faults of a swarm seed.

Every fault it applies is written to the history (process ``"nemesis"``, type ``info``) with
the nodes it resolved, and fed into the trace digest, so a failing run says exactly what was
done to whom and when.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from pxq.check.history import JSON, HistoryWriter
from pxq.effects import NodeId
from sim.disk import SimDisk
from sim.scenario import SELECTOR_RE, FaultSpec, RandomFaultSpec, Scenario
from sim.world import TraceRecord, World

MasterOf = Callable[[int], NodeId | None]


class Nemesis:
    """Applies a scenario's faults to a world."""

    def __init__(
        self,
        world: World,
        history: HistoryWriter,
        rng: random.Random,
        replicas: list[NodeId],
        master_of: MasterOf,
    ) -> None:
        self.world = world
        self.history = history
        self.rng = rng
        self.replicas = replicas
        self.master_of = master_of
        self.crash_order: list[NodeId] = []
        self.pause_order: list[NodeId] = []
        self.partitions: list[tuple[list[NodeId], list[NodeId]]] = []
        self.applied = 0
        self.consumers: list[str] = []
        self.producers: list[str] = []
        self.locks: list[NodeId] = []
        self.schedulers: list[str] = []
        self.lock_master_of: MasterOf | None = None
        self.on_seek: Callable[[FaultSpec], None] | None = None

    @property
    def f(self) -> int:
        """How many replicas may be down at once while a majority stays up."""
        return (len(self.replicas) - 1) // 2

    # -- selectors -----------------------------------------------------------------------

    def resolve(self, selector: str, group: int = 0) -> list[NodeId]:
        m = SELECTOR_RE.match(selector)
        if m is None:
            raise ValueError(f"unknown selector {selector!r}")
        nodes = self.replicas
        if selector == "master":
            master = self.master_of(group)
            return [master] if master is not None else [self.rng.choice(nodes)]
        if m.group(2) is not None:
            master = self.master_of(group)
            followers = [n for n in nodes if n != master]
            i = int(m.group(2))
            return [followers[i % len(followers)]]
        if m.group(3) is not None:
            return [selector]
        if selector == "lock_master":
            if self.lock_master_of is None or not self.locks:
                raise ValueError("selector 'lock_master' needs consumers owning through locks")
            master = self.lock_master_of(group)
            return [master] if master is not None else [self.rng.choice(self.locks)]
        for index, pool, what in (
            (6, self.locks, "lock replicas"),
            (7, self.schedulers, "schedulers"),
        ):
            if m.group(index) is not None:
                if not pool:
                    raise ValueError(f"selector {selector!r}: this workload has no {what}")
                return [pool[int(m.group(index)) % len(pool)]]
        if m.group(4) is not None or m.group(5) is not None:
            pool = self.consumers if m.group(4) is not None else self.producers
            i = int(m.group(4) if m.group(4) is not None else m.group(5))
            if not pool:
                raise ValueError(f"selector {selector!r} needs the queue workload")
            return [pool[i % len(pool)]]
        match selector:
            case "any":
                return [self.rng.choice(nodes)]
            case "all":
                return list(nodes)
            case "minority":
                return sorted(self.rng.sample(nodes, self.f))
            case "majority":
                return sorted(self.rng.sample(nodes, len(nodes) - self.f))
            case "crashed":
                down = [n for n in self.crash_order if self.world.hosts[n].crashed]
                return down[-1:]
            case "paused":
                paused = [n for n in self.pause_order if self.world.hosts[n].paused]
                return paused[-1:]
        raise ValueError(f"unknown selector {selector!r}")

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, fault: FaultSpec) -> None:
        if fault.at_ms is not None:
            self.world.call_later(fault.at_ms * 1000 - self.world.now_us, lambda: self.fire(fault))
            return
        after = fault.after
        assert after is not None
        wanted = set(self.resolve(after.node)) if after.node is not None else None
        seen = 0

        def listen(rec: TraceRecord) -> None:
            nonlocal seen
            if rec.kind != after.event or (wanted is not None and rec.node not in wanted):
                return
            seen += 1
            if seen == after.count:
                self.world.listeners.remove(listen)
                self.world.call_later(after.delay_ms * 1000, lambda: self.fire(fault))

        self.world.listeners.append(listen)

    def fire(self, fault: FaultSpec) -> None:
        targets = self.resolve(fault.target, fault.group) if fault.target is not None else []
        undo = self.apply(fault, targets)
        if fault.duration_ms is not None and undo is not None:
            self.world.call_later(fault.duration_ms * 1000, undo)

    # -- applying ------------------------------------------------------------------------

    def _log(self, action: str, targets: list[NodeId], **extra: object) -> None:
        self.applied += 1
        time_ms = self.world.now_us // 1000
        fields: dict[str, JSON] = {k: str(v) for k, v in extra.items()}
        value: list[JSON] = list(targets)
        self.history.invoke(time_ms, "nemesis", action, value, **fields)
        self.history.info(time_ms, "nemesis", action, value, **fields)
        self.world.record(
            "nemesis",
            action,
            (("targets", ",".join(targets)), *sorted((k, str(v)) for k, v in extra.items())),
        )

    def apply(self, fault: FaultSpec, targets: list[NodeId]) -> Callable[[], None] | None:
        """Apply ``fault`` to ``targets`` now; return its inverse, if it has one."""
        world, net = self.world, self.world.network
        action = fault.action
        if not targets and action in ("crash", "restart", "pause", "resume", "clock", "disk"):
            self._log(action, [], skipped="no target")
            return None
        # A seek is recorded by the workload as the operator's own operation.
        extra = {
            k: v
            for k, v in (
                ("mono_stall_ms", fault.mono_stall_ms),
                ("mono_jump_ms", fault.mono_jump_ms),
            )
            if v is not None
        }
        self._log("seek_requested" if action == "seek" else action, targets, **extra)
        match action:
            case "partition":
                rest = [n for n in self._endpoints() if n not in targets]
                net.partition(targets, rest, fault.direction)
                return lambda: self._unpartition(targets, rest)
            case "heal":
                self.heal_network()
            case "clog" | "unclog":
                peers = (
                    self.resolve(fault.peer)
                    if fault.peer
                    else [n for n in self.replicas if n not in targets]
                )
                paths = [(a, b) for a in targets for b in peers if a != b]
                if fault.direction in ("both", "in"):
                    paths += [(b, a) for a in targets for b in peers if a != b]
                if action == "unclog":
                    for a, b in paths:
                        net.unclog(a, b)
                    return None
                for a, b in paths:
                    net.clog(a, b)
                return lambda: self._unclog(paths)
            case "loss":
                net.spec = replace(net.spec, loss=fault.rate)
                return lambda: self._restore_network(action)
            case "duplicate":
                net.spec = replace(net.spec, duplicate=fault.rate)
                return lambda: self._restore_network(action)
            case "reorder":
                net.spec = replace(net.spec, reorder=fault.rate)
                return lambda: self._restore_network(action)
            case "delay":
                assert fault.delay is not None
                net.spec = replace(net.spec, delay=fault.delay)
                return lambda: self._restore_network("delay")
            case "crash":
                for n in targets:
                    world.hosts[n].crash(power_loss=fault.power_loss)
                    self.crash_order.append(n)
                return lambda: self.restart(targets)
            case "restart":
                self.restart(targets)
            case "pause":
                for n in targets:
                    world.hosts[n].pause()
                    self.pause_order.append(n)
                return lambda: self.resume(targets)
            case "resume":
                self.resume(targets)
            case "clock":
                for n in targets:
                    clock = world.hosts[n].clock
                    if fault.drift_ppm is not None:
                        clock.set_drift(world.now_us, fault.drift_ppm)
                    if fault.skew_ms:
                        clock.jump_wall(fault.skew_ms)
                    if fault.mono_stall_ms is not None:
                        clock.stall_mono(world.now_us, fault.mono_stall_ms)
                    if fault.mono_jump_ms is not None:
                        clock.jump_mono(world.now_us, fault.mono_jump_ms)
                    if fault.mono_stall_ms is not None or fault.mono_jump_ms is not None:
                        # The armed timer counts on the old clock: a jump makes its deadline
                        # due now, a stall later.
                        world.hosts[n].clock_changed()
            case "disk":
                return self._disk(fault, targets)
            case "seek":
                if self.on_seek is not None:
                    self.on_seek(fault)
            case "reply_before_persist":
                for n in targets:
                    world.hosts[n].reply_before_persist = True
                return lambda: self._set_reply_before_persist(targets, False)
        return None

    def _disk(self, fault: FaultSpec, targets: list[NodeId]) -> Callable[[], None] | None:
        disks = [self.world.hosts[n].disk for n in targets]
        kind = fault.disk_fault
        if kind in ("replaced", "wiped"):
            self._replace_disks(targets, as_replacement=kind == "replaced")
            return None
        for disk in disks:
            match kind:
                case "bitflip":
                    disk.bitflip()
                case "fsync_error":
                    disk.fail_next_fsync = True
                case "torn":
                    disk.torn_on_power_loss = True
                case "full":
                    disk.spec = replace(disk.spec, capacity_bytes=_full_capacity(disk))
                case "slow":
                    disk.spec = replace(disk.spec, fsync=fault.fsync or disk.spec.fsync)
                case "lying_fsync":
                    disk.lying = True
                case "trust_torn":
                    disk.trust_torn = True
        if kind == "full":
            self._check_space(targets)
        if kind in ("bitflip", "fsync_error"):
            return None

        def undo() -> None:
            self._log(f"restore_disk_{kind}", targets)
            for disk in disks:
                disk.spec = disk.baseline
                disk.torn_on_power_loss = False
                disk.trust_torn = False
                disk.lying = False
            if kind == "full":
                self._check_space(targets)
                # Space is back: what the full disk crashed starts again (as a supervisor
                # restarts a replica once an operator has freed its disk).
                hosts = self.world.hosts
                self.restart([n for n in targets if hosts[n].crash_reason == "disk full"])

        return undo

    def _replace_disks(self, targets: list[NodeId], *, as_replacement: bool) -> None:
        """The node's disk is replaced by a blank one: a node that was up goes down with it
        and boots again at once. ``replaced``: it is told it is a replacement (as
        ``pxq node run --replace``), so it votes in no quorum until it has re-learned what
        it might have promised or accepted. ``wiped`` (negative control): it boots as a new
        member and votes at once, with amnesia."""
        for n in targets:
            host = self.world.hosts[n]
            was_up = not host.crashed
            host.crash(power_loss=True, reason="disk replaced")
            host.disk.wipe()
            host.if_blank = "replace" if as_replacement else "new"
            if was_up:
                host.start()

    def _check_space(self, targets: list[NodeId]) -> None:
        """The hosts measure their disks at once (a crossing is reported without waiting
        for the next sync)."""
        for n in targets:
            self.world.hosts[n].check_space()

    def _endpoints(self) -> list[str]:
        return sorted(self.world.hosts) + sorted(self.world.endpoints)

    def _unpartition(self, side: list[NodeId], rest: list[NodeId]) -> None:
        self._log("heal_partition", side)
        self.world.network.unpartition(side, rest)

    def _unclog(self, paths: list[tuple[str, str]]) -> None:
        self._log("unclog", sorted({a for a, _ in paths}))
        for a, b in paths:
            self.world.network.unclog(a, b)

    def _restore_network(self, field_name: str) -> None:
        self._log(f"restore_{field_name}", [])
        net = self.world.network
        net.spec = replace(net.spec, **{field_name: getattr(net.baseline, field_name)})

    def _set_reply_before_persist(self, targets: list[NodeId], on: bool) -> None:
        for n in targets:
            self.world.hosts[n].reply_before_persist = on

    def restart(self, targets: list[NodeId]) -> None:
        down = [n for n in targets if self.world.hosts[n].crashed]
        if down:
            self._log("restart", down)
        for n in down:
            self.world.hosts[n].start()

    def resume(self, targets: list[NodeId]) -> None:
        paused = [n for n in targets if self.world.hosts[n].paused]
        if paused:
            self._log("resume", paused)
        for n in paused:
            self.world.hosts[n].resume()

    def heal_network(self) -> None:
        self.world.network.heal()

    def heal_all(self, *, restart: bool) -> None:
        """The final phase: every network fault gone, disks honest, everyone resumed and,
        with ``restart``, every crashed node restarted."""
        self._log("heal_all", [])
        self.world.network.heal()
        for n in self.replicas + self.locks:
            host = self.world.hosts[n]
            host.disk.spec = host.disk.baseline
            host.disk.torn_on_power_loss = False
            host.disk.fail_next_fsync = False
            host.reply_before_persist = False
            host.check_space()
        everyone = sorted(self.world.hosts)
        self.resume(everyone)
        if restart:
            self.restart(everyone)

    # -- random faults -------------------------------------------------------------------

    def random_faults(self, spec: RandomFaultSpec, scenario: Scenario, until_ms: int) -> None:
        """Schedule the seed's background faults until ``until_ms``: the seed picks which
        kinds are on (each with probability 1/2, at least one) and each kind's mean interval;
        faults stay within what a correct cluster survives without losing a value (at most
        ``max_down`` replicas crashed or paused at once, drift within the clock bound)."""
        rng = self.rng
        kinds = [k for k in spec.kinds if rng.random() < 0.5] or [rng.choice(spec.kinds)]
        self._log("swarm_options", [], kinds=",".join(kinds))
        for kind in kinds:
            mean_ms = rng.randint(spec.interval_ms_min, spec.interval_ms_max)
            t = 0
            while True:
                t += 1 + int(rng.expovariate(1.0 / mean_ms))
                if t >= until_ms:
                    break
                duration = rng.randint(1, spec.duration_ms_max)
                self.world.call_later(
                    t * 1000 - self.world.now_us,
                    partial(self._random_fault, kind, duration, scenario),
                )

    def _random_fault(self, kind: str, duration_ms: int, scenario: Scenario) -> None:
        rng = self.rng
        down = [
            n for n in self.replicas if self.world.hosts[n].crashed or self.world.hosts[n].paused
        ]
        undo: Callable[[], None] | None = None
        match kind:
            case "partition":
                side = sorted(rng.sample(self.replicas, rng.randint(1, max(1, self.f))))
                direction = rng.choice(["both", "both", "in", "out"])
                fault = FaultSpec(action="partition", at_ms=0, direction=direction)  # type: ignore[arg-type]
                undo = self.apply(fault, side)
            case "crash" | "torn" | "pause":
                limit = {"minority": self.f, "majority": self.f + 1, "all": len(self.replicas)}
                if len(down) >= limit[scenario.random_faults.max_down]:
                    return
                target = [rng.choice([n for n in self.replicas if n not in down])]
                if kind == "pause":
                    undo = self.apply(FaultSpec(action="pause", at_ms=0), target)
                else:
                    if kind == "torn":
                        self.world.hosts[target[0]].disk.torn_on_power_loss = True
                    power_loss = kind == "torn" or rng.random() < 0.5
                    undo = self.apply(
                        FaultSpec(action="crash", at_ms=0, power_loss=power_loss), target
                    )
            case "disk_full":
                # Full down to the reserve: the node is told its storage is short (a
                # store refuses enqueues) and keeps running (see _full_capacity).
                target = [rng.choice(self.replicas)]
                undo = self.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), target)
            case "clog":
                a, b = rng.sample(self.replicas, 2)
                undo = self.apply(FaultSpec(action="clog", at_ms=0, peer=b, direction="out"), [a])
            case "loss" | "duplicate" | "reorder":
                rate = rng.choice([0.01, 0.05, 0.1, 0.2])
                undo = self.apply(FaultSpec(action=kind, at_ms=0, rate=rate), [])
            case "consumer_crash" | "consumer_pause":
                live = [
                    n
                    for n in self.consumers
                    if not self.world.hosts[n].crashed and not self.world.hosts[n].paused
                ]
                if len(live) <= 1:
                    return  # keep one consumer up, so the queues always have somewhere to go
                target = [rng.choice(live)]
                action = "crash" if kind == "consumer_crash" else "pause"
                undo = self.apply(FaultSpec(action=action, at_ms=0), target)
            case "clock":
                bound = scenario.clock.drift_ppm_max
                drift = rng.randint(-bound, bound)
                self.apply(
                    FaultSpec(action="clock", at_ms=0, drift_ppm=drift), [rng.choice(self.replicas)]
                )
        if undo is not None:
            self.world.call_later(duration_ms * 1000, undo)


def _full_capacity(disk: SimDisk) -> int:
    """The capacity that makes ``disk`` full as of now (never larger than it already is).
    With a reserve, full is what a node must survive: the room left drops just below the
    reserve, so the node is told its storage is short (a store refuses enqueues) and the
    reserve takes the rest of its writes. Without one, the disk is totally full: its next
    growing batch is rejected and the node crashes."""
    reserve = disk.spec.reserve_bytes
    full = disk.used_bytes() + max(0, reserve - 1)
    cap = disk.spec.capacity_bytes
    return max(1, full if cap is None else min(cap, full))
