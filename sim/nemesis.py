"""The nemesis: resolves fault targets when a fault fires, applies faults and their inverses,
generates the background random faults of a swarm seed (drawn by the kinds of
``sim.fault_kinds``), and undoes every fault at the final heal.

Every fault it applies is written to the history (process ``"nemesis"``, type ``info``) with
the nodes it resolved, and fed into the trace digest, so a failing run says exactly what was
done to whom and when. A selector that names a master waits for one (before the first
election there is none); one that cannot resolve at all (``crashed`` with nobody down) is a
problem of the scenario, reported in ``problems``: the run fails with it rather than picking
someone else.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from pxq.check.history import JSON, HistoryWriter
from pxq.effects import NodeId
from sim.disk import SimDisk
from sim.fault_kinds import RANDOM_KINDS
from sim.scenario import (
    NETWORK_ACTIONS,
    SELECTOR_RE,
    AfterSpec,
    FaultSpec,
    RandomFaultSpec,
    Scenario,
)
from sim.world import TraceRecord, World

MasterOf = Callable[[int], NodeId | None]
Paths = list[tuple[str, str]]


class WaitForMaster(Exception):
    """The selector names a master (or a follower) of a group that has none yet."""


class Unresolvable(ValueError):
    """The selector names nobody (``crashed`` with no node down, ...)."""


def _paths(side: list[str], peers: list[str], direction: str) -> Paths:
    """The directed paths between ``side`` and ``peers``: ``out`` those ``side`` sends on,
    ``in`` those it receives on, ``both`` both."""
    paths: Paths = []
    if direction in ("both", "out"):
        paths += [(a, b) for a in side for b in peers if a != b]
    if direction in ("both", "in"):
        paths += [(b, a) for a in side for b in peers if a != b]
    return paths


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
        self.clients: list[str] = []
        """The lock workload's client endpoints (``client[i]``)."""
        self.zones: dict[str, list[str]] = {}
        """The processes placed in each zone (``zone:NAME``), sorted by name."""
        self.lock_master_of: MasterOf | None = None
        self.on_seek: Callable[[FaultSpec], None] | None = None
        self.consumer_groups: list[str] = []
        self.fired: dict[str, int] = {}
        """Random faults that applied, by kind (a kind drawn with no target is not counted)."""
        self.kinds_on: tuple[str, ...] = ()
        self.flipped: set[NodeId] = set()
        """Replicas a random bit flip or disk replacement damaged (kept to a minority)."""
        self.problems: list[str] = []
        """Scripted faults that could not resolve their targets (the run fails with these)."""
        self.waiting: dict[str, Callable[[TraceRecord], None]] = {}
        """Scripted faults waiting for a master, by label, with their listener."""
        self.clock_baseline = {n: copy.copy(h.clock) for n, h in world.hosts.items()}
        """Each node's clock as the run started (the final heal puts clocks back on it)."""

    @property
    def f(self) -> int:
        """How many replicas may be down at once while a majority stays up."""
        return (len(self.replicas) - 1) // 2

    # -- selectors -----------------------------------------------------------------------

    def resolve(self, selector: str, group: int = 0) -> list[NodeId]:
        """The nodes ``selector`` names now. Raises ``WaitForMaster`` for a master or a
        follower of a group without a master yet, ``Unresolvable`` when it names nobody."""
        m = SELECTOR_RE.match(selector)
        if m is None:
            raise ValueError(f"unknown selector {selector!r}")
        nodes = self.replicas
        if selector == "master" or m.group(2) is not None:
            master = self.master_of(group)
            if master is None:
                raise WaitForMaster(f"a master of group {group}")
            if selector == "master":
                return [master]
            followers = [n for n in nodes if n != master]
            return [followers[int(m.group(2)) % len(followers)]]
        if m.group(3) is not None:
            return [selector]
        if selector == "lock_master":
            if self.lock_master_of is None or not self.locks:
                raise ValueError("selector 'lock_master' needs consumers owning through locks")
            master = self.lock_master_of(group)
            if master is None:
                raise WaitForMaster(f"a master of lock group {group}")
            return [master]
        zone = m.group(9)
        if zone is not None:
            placed = self.zones.get(zone, [])
            if not placed:
                raise Unresolvable(f"selector {selector!r}: nothing is placed in zone {zone!r}")
            return list(placed)
        for index, pool, what in (
            (4, self.consumers, "consumers"),
            (5, self.producers, "producers"),
            (6, self.locks, "lock replicas"),
            (7, self.schedulers, "schedulers"),
            (8, self.clients, "lock clients"),
        ):
            if m.group(index) is not None:
                i = int(m.group(index))
                if i >= len(pool):
                    raise Unresolvable(f"selector {selector!r}: there are {len(pool)} {what}")
                return [pool[i]]
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
                if not down:
                    raise Unresolvable("selector 'crashed': no node the nemesis crashed is down")
                return down[-1:]
            case "paused":
                paused = [n for n in self.pause_order if self.world.hosts[n].paused]
                if not paused:
                    raise Unresolvable("selector 'paused': no node the nemesis paused is paused")
                return paused[-1:]
        raise ValueError(f"unknown selector {selector!r}")

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self, fault: FaultSpec, label: str = "fault") -> None:
        """Fire ``fault`` at its time, or after its trigger; ``label`` names it in problems."""
        if fault.at_ms is not None:
            self.world.call_later(
                fault.at_ms * 1000 - self.world.now_us, lambda: self.fire(fault, label)
            )
            return
        after = fault.after
        if after is None:
            raise ValueError(f"{label}: a fault needs at_ms or after")
        seen = 0

        def listen(rec: TraceRecord) -> None:
            nonlocal seen
            if not self._matches(after, rec):
                return
            seen += 1
            if seen == after.count:
                self.world.listeners.remove(listen)
                self.world.call_later(after.delay_ms * 1000, lambda: self.fire(fault, label))

        self.world.listeners.append(listen)

    def _matches(self, after: AfterSpec, rec: TraceRecord) -> bool:
        """Whether ``rec`` is an event ``after`` counts: its kind, its fields (same type and
        value), and its node (the selector resolved at this event)."""
        if rec.kind != after.event:
            return False
        fields = dict(rec.fields)
        for key, want in after.where:
            got = fields.get(key)
            if type(got) is not type(want) or got != want:
                return False
        if after.node is None:
            return True
        try:
            return rec.node in self.resolve(after.node)
        except (WaitForMaster, Unresolvable):
            return False

    def fire(self, fault: FaultSpec, label: str = "fault") -> None:
        """Resolve ``fault``'s targets now and apply it (and schedule its inverse). A fault
        naming a master waits for the group's next master; one naming nobody is a problem."""
        try:
            targets = self.resolve(fault.target, fault.group) if fault.target is not None else []
            peers = self._side(fault.sides[1], fault.group) if fault.sides is not None else None
            if fault.sides is not None:
                targets = self._side(fault.sides[0], fault.group)
            if fault.peer is not None:
                peers = self.resolve(fault.peer, fault.group)
        except WaitForMaster as exc:
            self._wait(fault, label, str(exc))
            return
        except Unresolvable as exc:
            self.problems.append(f"{label} ({fault.action}): {exc}")
            self._log(fault.action, [], skipped=str(exc))
            return
        self.waiting.pop(label, None)
        zoned = fault.target is not None and fault.target.startswith("zone:")
        if zoned and fault.action not in NETWORK_ACTIONS:
            # The clients of the log, lock and register workloads are endpoints, not nodes:
            # in a zone they take its network faults only.
            targets = [n for n in targets if n in self.world.hosts]
        undo = self.apply(fault, targets, peers)
        if fault.duration_ms is not None and undo is not None:
            self.world.call_later(fault.duration_ms * 1000, undo)

    def _side(self, selectors: tuple[str, ...], group: int) -> list[NodeId]:
        out: list[NodeId] = []
        for selector in selectors:
            out += [n for n in self.resolve(selector, group) if n not in out]
        return sorted(out)

    def _wait(self, fault: FaultSpec, label: str, what: str) -> None:
        """Fire ``fault`` again at the next election of a master (of any group)."""
        if label not in self.waiting:
            self._log("wait", [], fault=label, fault_action=fault.action, waits_for=what)

        def listen(rec: TraceRecord) -> None:
            state = dict(rec.fields).get("state")
            if rec.kind == "master" and state in ("became", "elected"):
                self.world.listeners.remove(listen)
                self.world.call_later(0, lambda: self.fire(fault, label))

        self.waiting[label] = listen
        self.world.listeners.append(listen)

    def close(self) -> None:
        """The safety phase is over: faults still waiting for a master never fired."""
        for label, listen in sorted(self.waiting.items()):
            if listen in self.world.listeners:
                self.world.listeners.remove(listen)
            self.problems.append(f"{label}: waited for a master until the end of the faults")
        self.waiting.clear()

    # -- applying ------------------------------------------------------------------------

    def _log(
        self,
        action: str,
        targets: list[NodeId],
        history_only: dict[str, JSON] | None = None,
        **extra: object,
    ) -> None:
        """Record an action in the history and the trace; ``history_only`` fields go to the
        history alone (what a record's timeline needs, kept out of the trace digest)."""
        self.applied += 1
        time_ms = self.world.now_us // 1000
        fields: dict[str, JSON] = {k: str(v) for k, v in extra.items()}
        fields.update(history_only or {})
        value: list[JSON] = list(targets)
        self.history.invoke(time_ms, "nemesis", action, value, **fields)
        self.history.info(time_ms, "nemesis", action, value, **fields)
        self.world.record(
            "nemesis",
            action,
            (("targets", ",".join(targets)), *sorted((k, str(v)) for k, v in extra.items())),
        )

    def apply(
        self, fault: FaultSpec, targets: list[NodeId], peers: list[NodeId] | None = None
    ) -> Callable[[], None] | None:
        """Apply ``fault`` to ``targets`` (and, for a fault between two sides, ``peers``; by
        default ``fault.peer`` resolved now) now; return its inverse, if it has one."""
        world, net = self.world, self.world.network
        action = fault.action
        if not targets and action in ("crash", "restart", "pause", "resume", "clock", "disk"):
            self._log(action, [], skipped="no target")
            return None
        if peers is None and fault.peer is not None:
            peers = self.resolve(fault.peer, fault.group)
        if action == "partition" and fault.shape is not None:
            return self._shaped_partition(fault.shape)
        extra: dict[str, object] = {}
        if peers is not None and action in ("partition", "loss", "duplicate", "delay"):
            extra["peers"] = ",".join(peers)
        # A seek is recorded by the workload as the operator's own operation.
        for key, v in (
            ("mono_stall_ms", fault.mono_stall_ms),
            ("mono_jump_ms", fault.mono_jump_ms),
        ):
            if v is not None:
                extra[key] = v
        kind: dict[str, JSON] | None = (
            {"disk_fault": fault.disk_fault} if action == "disk" else None
        )
        self._log("seek_requested" if action == "seek" else action, targets, kind, **extra)
        match action:
            case "partition":
                rest = peers if peers is not None else self._endpoints()
                rest = [n for n in rest if n not in targets]
                net.partition(targets, rest, fault.direction)
                return lambda: self._unpartition(targets, rest)
            case "heal":
                self.heal_network()
            case "clog" | "unclog":
                others = peers if peers is not None else self.replicas
                paths = _paths(targets, [n for n in others if n not in targets], fault.direction)
                if action == "unclog":
                    for a, b in paths:
                        net.unclog(a, b)
                    return None
                for a, b in paths:
                    net.clog(a, b)
                return lambda: self._unclog(paths)
            case "loss" | "duplicate" | "delay" if targets:
                others = peers if peers is not None else self._endpoints()
                paths = _paths(targets, [n for n in others if n not in targets], fault.direction)
                value = fault.delay if action == "delay" else fault.rate
                for a, b in paths:
                    net.set_path_fault(a, b, action, value)
                return lambda: self._restore_paths(action, paths)
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
                if fault.delay is None:
                    raise ValueError("a delay fault needs a delay")
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

    def _shaped_partition(self, shape: str) -> Callable[[], None]:
        """Lay out a bridge or a ring among the store's replicas (in an order drawn from the
        nemesis's stream) and cut the pairs it separates, both ways."""
        order = list(self.replicas)
        self.rng.shuffle(order)
        n = len(order)
        pairs: list[tuple[NodeId, NodeId]] = []
        if shape == "bridge":
            # order[0] is the bridge; the rest split in two halves that cannot talk.
            rest = order[1:]
            half_a, half_b = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2 :])
            pairs = [(a, b) for a in half_a for b in half_b]
        else:
            # Each replica keeps its neighbours within k ring steps: itself and 2k others
            # make a majority, and no two replicas keep the same majority.
            k = -(-(n // 2) // 2)
            for i in range(n):
                for j in range(i + 1, n):
                    if min(j - i, n - (j - i)) > k:
                        pairs.append((order[i], order[j]))
        cut = sorted(tuple(sorted(p)) for p in pairs)
        self._log("partition", order, shape=shape, cut=" ".join(f"{a}|{b}" for a, b in cut))
        net = self.world.network
        for a, b in cut:
            net.partition([a], [b], "both")

        def undo() -> None:
            self._log("heal_partition", order, shape=shape)
            for a, b in cut:
                net.unpartition([a], [b])

        return undo

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
                case "alter_item":
                    disk.alter_item()
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
        if kind in ("bitflip", "alter_item", "fsync_error"):
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
        it might have promised or accepted. ``wiped``: it boots as the world's blank storage
        says: as a new member that votes at once, with amnesia (the negative control), or,
        in a ``probe`` world (``[cluster] blank``, as ``pxq node run``), it asks its peers
        and refuses to run, staying down."""
        for n in targets:
            host = self.world.hosts[n]
            was_up = not host.crashed
            host.crash(power_loss=True, reason="disk replaced")
            host.disk.wipe()
            host.if_blank = "replace" if as_replacement else self.world.blank
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

    def _restore_paths(self, field_name: str, paths: Paths) -> None:
        self._log(f"restore_{field_name}", sorted({a for a, _ in paths}))
        for a, b in paths:
            self.world.network.set_path_fault(a, b, field_name, None)

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

    def end_fsync_error(self, targets: list[NodeId]) -> None:
        """The end of a random fsync error: the disk fails no more syncs, and a node it
        stopped starts again (as its supervisor would once the disk is sound)."""
        hosts = self.world.hosts
        for n in targets:
            hosts[n].disk.fail_next_fsync = False
        self.restart([n for n in targets if hosts[n].crash_reason == "fsync error"])

    def heal_network(self) -> None:
        self.world.network.heal()

    def heal_all(self, *, restart: bool) -> None:
        """The final phase: every fault undone. The network back to its baseline (no
        partition, clog or path fault; loss, duplication, reordering and delay as in
        ``[network]``); every disk back to its ``[disk]`` spec, honest (no lying fsync, no
        pending fsync error, no torn writes, trusted or not); no driver replying before
        persisting; every clock back on its own drift and on the wall time it would show had
        no fault touched it, a monotonic stall in progress ended (the clock runs on from where
        it stood: monotonic time is never stepped); everyone resumed; and every crashed node restarted (with ``restart``), or else
        those a full disk stopped (their space is back). Bit flips already on a disk stay:
        data is not repaired by a heal."""
        self._log("heal_all", [])
        self.close()
        self.world.network.heal()
        hosts = self.world.hosts
        now_us = self.world.now_us
        moved: list[NodeId] = []
        for n in sorted(hosts):
            host = hosts[n]
            disk = host.disk
            disk.spec = disk.baseline
            disk.torn_on_power_loss = False
            disk.fail_next_fsync = False
            disk.lying = False
            disk.trust_torn = False
            host.reply_before_persist = False
            if host.clock.end_stall(now_us):
                host.clock_changed()  # the armed timer counted on the stalled clock
                moved.append(n)
            base = self.clock_baseline.get(n)
            if base is not None and self._clock_moved(n):
                host.clock.set_drift(now_us, base.drift_ppm)
                host.clock.jump_wall(base.now(now_us).wall_ms - host.clock.now(now_us).wall_ms)
                if n not in moved:
                    moved.append(n)
            host.check_space()
        if moved:
            self._log("restore_clock", moved)
        everyone = sorted(hosts)
        self.resume(everyone)
        if restart:
            self.restart(everyone)
        else:
            self.restart([n for n in everyone if hosts[n].crash_reason == "disk full"])

    def _clock_moved(self, n: NodeId) -> bool:
        base = self.clock_baseline.get(n)
        clock = self.world.hosts[n].clock
        now_us = self.world.now_us
        # Monotonic time is never stepped back: a changed rate leaves it where it got to.
        return base is not None and (
            clock.drift_ppm != base.drift_ppm
            or clock.now(now_us).wall_ms != base.now(now_us).wall_ms
        )

    def faults_left(self, *, restarted: bool) -> list[str]:
        """What of every fault is still in force (after ``heal_all``: nothing; crashed
        nodes only count with ``restarted``)."""
        net = self.world.network
        left = [
            what
            for what, on in (
                ("network spec", net.spec != net.baseline),
                ("partitions", bool(net.blocked)),
                ("clogs", bool(net.clogged)),
                ("path faults", bool(net.path_faults)),
            )
            if on
        ]
        for n, host in sorted(self.world.hosts.items()):
            disk = host.disk
            for what, on in (
                ("disk spec", disk.spec != disk.baseline),
                ("torn writes", disk.torn_on_power_loss),
                ("lying fsync", disk.lying),
                ("trusted torn writes", disk.trust_torn),
                ("monotonic clock stall", host.clock.stalling(self.world.now_us)),
                ("fsync error", disk.fail_next_fsync),
                ("reply before persist", host.reply_before_persist),
                ("clock", self._clock_moved(n)),
                ("paused", host.paused),
                # A node restarted by the heal that stops again by itself (a corrupt record
                # read at boot) is not a fault left in force.
                ("crashed", restarted and host.crashed and host.crash_reason == "nemesis"),
            ):
                if on:
                    left.append(f"{n}: {what}")
        return left

    # -- random faults -------------------------------------------------------------------

    def random_faults(self, spec: RandomFaultSpec, scenario: Scenario, until_ms: int) -> None:
        """Schedule the seed's background faults until ``until_ms``: the seed picks which
        kinds are on (each with probability 1/2, at least one) and each kind's mean interval;
        each fault is drawn by its kind (``sim.fault_kinds``) when it fires, within what a
        correct cluster survives without losing a value."""
        rng = self.rng
        kinds = [k for k in spec.kinds if rng.random() < 0.5] or [rng.choice(spec.kinds)]
        self.kinds_on = tuple(kinds)
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
        fired = RANDOM_KINDS[kind].draw(self, scenario)
        if fired is None:
            return
        self.fired[kind] = self.fired.get(kind, 0) + 1
        if fired.undo is not None:
            self.world.call_later(duration_ms * 1000, fired.undo)


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
