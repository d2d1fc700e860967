"""The nemesis of ``pxq test``: a fault schedule drawn from a seed, carried out on a target, and
recorded in the history.

A schedule is a sequence of faults, one at a time: a warm-up, then for each fault its start,
what it does and to which nodes, how long it lasts, its heal, and a quiet gap before the next
one. ``draw_schedule`` draws it from ``random.Random(seed)`` alone (the same seed and cluster
give the same schedule), choosing among the nemeses asked for with equal odds; a fault that
would outlast the time limit is cut at it (the final heal undoes it). The nemeses (each a
``FaultKind`` of ``net.jepsen.target``; a drawer per kind in ``DRAWERS``):

- ``kill``: kill -9 of a random node, of the master of a random Paxos group (found by probing
  when the fault starts: ``net.cluster.probe``), or of a majority of one service's replicas;
  the heal starts them again on their data.
- ``pause``: SIGSTOP of a random node or of a group's master for longer than a master lease
  (1 s by default), then SIGCONT.
- ``clock``: a jump of one node's wall clock, or a skew of every replica of a service (each
  its own offset), then every clock back to real time. (``LocalTarget`` explains why only
  wall clocks move.)
- ``partition``: a shape of ``net.jepsen.shapes`` over the replicas of ONE service (store
  replicas and lock replicas never talk to each other, so a cut between them would do
  nothing): the master of a random group isolated (found by probing when the fault starts),
  random halves, a bridge (two halves that both reach one node), or a one-way cut; the heal is
  ``heal_network``.
- ``slow-link``: every link of a random replica to the other replicas of its service, both
  ways, or one random link, delayed by 50-300 ms for a while; the heal is ``heal_network``.
- ``power``: a power cut (kill -9 and the loss of every write not fsynced) of a random node,
  of a majority of one service's replicas, or of every replica of one service at once (a
  whole-service power loss must lose nothing acknowledged); the heal starts them again.
- ``disk-full``: one node's data disk answers ENOSPC for a while (the node refuses writes,
  then stops at its first commit that needs its data file to grow); the heal frees the disk
  (``disk-free``) and starts the node again if it stopped (``start``).

A schedule only holds faults the target supports (``check_nemeses`` refuses the others, naming
them) and that a drawer exists for.

Each action is a ``nemesis`` operation in the history (``pxq.check.history``): an ``invoke``
when it starts, an ``info`` when it is done, ``f`` = ``kill`` / ``start`` / ``pause`` /
``resume`` / ``clock`` / ``partition`` / ``slow-link`` / ``heal`` / ``power-cut`` /
``disk-full`` / ``disk-free``, ``value`` = the node names (a list), for ``clock`` the
``[node, offset_ms]`` pairs, for ``partition``, ``slow-link`` and their ``heal`` the one-way
links ``[source, destination]`` (a ``slow-link`` also has the extra ``delay_ms``); extras
``phase`` (``"fault"``, ``"heal"`` or ``"final-heal"``),
``fault_no`` (the fault's number in the schedule; absent for the final heal) and, when the
action failed, ``error``. The final heal (``Nemesis.heal_all``) starts every node that is not
running (after freeing every disk it filled), resumes every paused one, sets every clock it
moved back to 0 and heals the network of a target that can cut it, each recorded likewise; a
node found not running that the nemesis did not kill (or power cut, or whose disk it did not
fill) died by itself, and is reported in ``errors``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Final

from net.cluster.probe import find_masters
from net.config import NetConfig
from net.errors import NetError
from net.jepsen.shapes import bridge, cut_between, halves, isolate, one_way
from net.jepsen.target import FAULT_KINDS, FaultKind, Link, Target, UnsupportedFault
from pxq.check.history import JSON, NEMESIS, HistoryWriter
from pxq.config import LOCKS_SERVICE, ClusterConfig

WARMUP_MS: Final = (1000, 2000)
"""The first fault starts this long (drawn in the range) after the workload."""
GAP_MS: Final = (1000, 3000)
"""Quiet time between a heal and the next fault."""
KILL_MS: Final = (1000, 4000)
PAUSE_MS: Final = (1500, 4000)
"""Longer than a master lease (``pxq.paxos.config``: 1000 ms): a paused master loses it."""
CLOCK_MS: Final = (2000, 5000)
CLOCK_JUMP_MS_MAX: Final = 5000
"""Largest jump of one node's wall clock, either way. The lock service's log time never goes
back, so after a forward jump it stands still until real time catches up: leases then last
that much longer in real time, a liveness cost that stays within the recovery bound."""
CLOCK_SKEW_MS_MAX: Final = 2000
"""Largest offset of each node of a skewed service."""
PARTITION_MS: Final = (2000, 5000)
"""Longer than a master lease: an isolated master or a minority side loses it."""
SLOW_LINK_MS: Final = (2000, 5000)
SLOW_DELAY_MS: Final = (50, 300)
"""The delay of a slow link, each way: a few round trips of it fit in a master lease."""
PARTITION_SHAPES: Final = ("master", "halves", "bridge", "one-way")
POWER_MS: Final = (1000, 4000)
DISK_FULL_MS: Final = (2000, 5000)
"""Long enough for a node to meet the full disk (it stops within a second or two)."""
TAIL_MS: Final = 500
"""No fault starts later than this before the time limit."""
FAULTS_MAX: Final = 10_000
"""Faults of one schedule at most (a bound on the drawing loop)."""
FINAL: Final = "final-heal"
MASTER_PROBE_MS: Final = 500
"""Bound of a connection attempt when the nemesis looks for a master."""


class NemesisError(ValueError):
    """A nemesis list the target or this module cannot carry out; the message names it."""


# -- the schedule -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The cluster as the nemesis sees it: each service's replicas and number of groups."""

    replicas: Mapping[str, tuple[str, ...]]
    """Service (a store's name, or ``LOCKS_SERVICE``) -> its replicas."""
    groups: Mapping[str, int]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for service in sorted(self.replicas) for n in self.replicas[service])


def layout_of(config: ClusterConfig) -> Layout:
    replicas = {s.name: tuple(r.node for r in s.replicas) for s in config.stores}
    groups = {s.name: s.groups for s in config.stores}
    if config.locks is not None:
        replicas[LOCKS_SERVICE] = tuple(r.node for r in config.locks.replicas)
        groups[LOCKS_SERVICE] = config.locks.groups
    return Layout(replicas=replicas, groups=groups)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault of a schedule."""

    kind: FaultKind
    start_ms: int
    """From the start of the workload."""
    duration_ms: int
    nodes: tuple[str, ...]
    """The nodes it acts on; for a master fault, the node to use when no master answers."""
    master_of: tuple[str, int] | None = None
    """``(service, group)``: act on that group's master, found when the fault starts."""
    offsets_ms: tuple[int, ...] = ()
    """``clock``: the offset of each of ``nodes``."""
    links: tuple[Link, ...] = ()
    """``partition``, ``slow-link``: the one-way links it cuts or slows (for a master
    isolated: those of ``nodes[0]``, replaced by the master's when the fault starts)."""
    delay_ms: int = 0
    """``slow-link``: the delay of each of ``links``."""
    what: str = ""
    """A short description (``"kill master of store0/2"``)."""

    @property
    def heal_ms(self) -> int:
        return self.start_ms + self.duration_ms

    def to_json(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "start_ms": self.start_ms,
            "duration_ms": self.duration_ms,
            "nodes": list(self.nodes),
            "master_of": None if self.master_of is None else list(self.master_of),
            "offsets_ms": list(self.offsets_ms),
            "links": [list(link) for link in self.links],
            "delay_ms": self.delay_ms,
            "what": self.what,
        }


Drawer = Callable[[random.Random, Layout, int], Fault]
"""Draws one fault of its kind starting at the given ms."""


def _draw_kill(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*KILL_MS)
    service = rng.choice(sorted(layout.replicas))
    replicas = layout.replicas[service]
    how = rng.choice(("node", "master", "majority"))
    if how == "majority":
        nodes = tuple(sorted(rng.sample(replicas, len(replicas) // 2 + 1)))
        what = f"kill a majority of {service}: {', '.join(nodes)}"
        return Fault(kind="kill", start_ms=start_ms, duration_ms=duration, nodes=nodes, what=what)
    node = rng.choice(replicas)
    if how == "master":
        group = rng.randrange(layout.groups[service])
        return Fault(
            kind="kill",
            start_ms=start_ms,
            duration_ms=duration,
            nodes=(node,),
            master_of=(service, group),
            what=f"kill the master of {service}/{group}",
        )
    return Fault(
        kind="kill", start_ms=start_ms, duration_ms=duration, nodes=(node,), what=f"kill {node}"
    )


def _draw_pause(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*PAUSE_MS)
    service = rng.choice(sorted(layout.replicas))
    node = rng.choice(layout.replicas[service])
    if rng.random() < 0.5:
        group = rng.randrange(layout.groups[service])
        return Fault(
            kind="pause",
            start_ms=start_ms,
            duration_ms=duration,
            nodes=(node,),
            master_of=(service, group),
            what=f"pause the master of {service}/{group}",
        )
    return Fault(
        kind="pause", start_ms=start_ms, duration_ms=duration, nodes=(node,), what=f"pause {node}"
    )


def _draw_clock(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*CLOCK_MS)
    service = rng.choice(sorted(layout.replicas))
    if rng.random() < 0.5:
        node = rng.choice(layout.replicas[service])
        offset = rng.choice((-1, 1)) * rng.randint(1, CLOCK_JUMP_MS_MAX)
        return Fault(
            kind="clock",
            start_ms=start_ms,
            duration_ms=duration,
            nodes=(node,),
            offsets_ms=(offset,),
            what=f"jump the clock of {node} by {offset:+d} ms",
        )
    nodes = layout.replicas[service]
    offsets = tuple(rng.randint(-CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX) for _ in nodes)
    return Fault(
        kind="clock",
        start_ms=start_ms,
        duration_ms=duration,
        nodes=nodes,
        offsets_ms=offsets,
        what=f"skew the clocks of {service}: "
        + ", ".join(f"{n} {o:+d} ms" for n, o in zip(nodes, offsets, strict=True)),
    )


def _network_service(rng: random.Random, layout: Layout, kind: str) -> str:
    """A random service with at least two replicas (a link needs two ends)."""
    services = [s for s in sorted(layout.replicas) if len(layout.replicas[s]) >= 2]
    if not services:
        raise NemesisError(f"{kind} faults need a service of at least 2 replicas")
    return rng.choice(services)


def _links_text(links: Sequence[Link]) -> str:
    return ", ".join(f"{a}->{b}" for a, b in links)


def _draw_partition(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*PARTITION_MS)
    service = _network_service(rng, layout, "partition")
    replicas = layout.replicas[service]
    shapes = [s for s in PARTITION_SHAPES if s != "bridge" or len(replicas) >= 3]
    shape = rng.choice(shapes)
    if shape == "master":
        node = rng.choice(replicas)
        group = rng.randrange(layout.groups[service])
        return Fault(
            kind="partition",
            start_ms=start_ms,
            duration_ms=duration,
            nodes=(node,),
            master_of=(service, group),
            links=tuple(isolate(node, replicas)),
            what=f"isolate the master of {service}/{group}",
        )
    draw = {"halves": halves, "bridge": bridge, "one-way": one_way}[shape]
    links = tuple(draw(replicas, rng))
    return Fault(
        kind="partition",
        start_ms=start_ms,
        duration_ms=duration,
        nodes=tuple(sorted({n for link in links for n in link})),
        links=links,
        what=f"partition {service} ({shape}): cut {_links_text(links)}",
    )


def _draw_slow_link(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*SLOW_LINK_MS)
    delay = rng.randint(*SLOW_DELAY_MS)
    service = _network_service(rng, layout, "slow-link")
    replicas = sorted(layout.replicas[service])
    if rng.random() < 0.5:
        node = rng.choice(replicas)
        links = tuple(cut_between([node], [n for n in replicas if n != node]))
        what = f"slow every link of {node} by {delay} ms"
    else:
        a, b = rng.sample(replicas, 2)
        links = ((a, b),)
        what = f"slow {a}->{b} by {delay} ms"
    return Fault(
        kind="slow-link",
        start_ms=start_ms,
        duration_ms=duration,
        nodes=tuple(sorted({n for link in links for n in link})),
        links=links,
        delay_ms=delay,
        what=what,
    )


def _draw_power(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    duration = rng.randint(*POWER_MS)
    service = rng.choice(sorted(layout.replicas))
    replicas = layout.replicas[service]
    how = rng.choice(("node", "majority", "all"))
    if how == "node":
        nodes: tuple[str, ...] = (rng.choice(replicas),)
        what = f"power cut of {nodes[0]}"
    elif how == "majority":
        nodes = tuple(sorted(rng.sample(replicas, len(replicas) // 2 + 1)))
        what = f"power cut of a majority of {service}: {', '.join(nodes)}"
    else:
        nodes = replicas
        what = f"power cut of every replica of {service}"
    return Fault(kind="power", start_ms=start_ms, duration_ms=duration, nodes=nodes, what=what)


def _draw_disk_full(rng: random.Random, layout: Layout, start_ms: int) -> Fault:
    node = rng.choice(layout.replicas[rng.choice(sorted(layout.replicas))])
    return Fault(
        kind="disk-full",
        start_ms=start_ms,
        duration_ms=rng.randint(*DISK_FULL_MS),
        nodes=(node,),
        what=f"fill the disk of {node}",
    )


DRAWERS: Final[dict[FaultKind, Drawer]] = {
    "kill": _draw_kill,
    "pause": _draw_pause,
    "clock": _draw_clock,
    "partition": _draw_partition,
    "slow-link": _draw_slow_link,
    "power": _draw_power,
    "disk-full": _draw_disk_full,
}
"""The nemeses this module can schedule, by fault kind."""


def parse_nemeses(text: str) -> tuple[FaultKind, ...]:
    """``"kill,pause"`` -> the fault kinds, in a canonical order (``""`` or ``"none"``: no
    fault). ``NemesisError`` naming an unknown name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in FAULT_KINDS]
    if unknown:
        raise NemesisError(
            f"unknown nemesis {', '.join(map(repr, unknown))} (one of {', '.join(FAULT_KINDS)}, "
            f"or none)"
        )
    return tuple(k for k in FAULT_KINDS if k in names)


def check_nemeses(nemeses: Sequence[FaultKind], target: Target) -> None:
    """``NemesisError`` naming each nemesis the target cannot inject or nothing draws."""
    unsupported = [k for k in nemeses if k not in target.faults]
    if unsupported:
        raise NemesisError(
            "; ".join(str(UnsupportedFault(target.name, k)) for k in unsupported)
            + f" (it can: {', '.join(sorted(target.faults)) or 'nothing'})"
        )
    undrawn = [k for k in nemeses if k not in DRAWERS]
    if undrawn:
        raise NemesisError(f"no nemesis schedules {', '.join(map(repr, undrawn))} faults yet")


def draw_schedule(
    seed: int, nemeses: Sequence[FaultKind], layout: Layout, time_limit_ms: int
) -> tuple[Fault, ...]:
    """The faults of a run of ``time_limit_ms``, from ``seed`` alone (see the module doc)."""
    if time_limit_ms < 1:
        raise NemesisError(f"the time limit must be at least 1 ms, got {time_limit_ms}")
    kinds = sorted(set(nemeses))
    for kind in kinds:
        if kind not in DRAWERS:
            raise NemesisError(f"no nemesis schedules {kind!r} faults yet")
    if not kinds:
        return ()
    rng = random.Random(seed)
    faults: list[Fault] = []
    at = rng.randint(*WARMUP_MS)
    while at < time_limit_ms - TAIL_MS and len(faults) < FAULTS_MAX:
        fault = DRAWERS[rng.choice(kinds)](rng, layout, at)
        if fault.heal_ms > time_limit_ms:
            fault = _cut(fault, time_limit_ms - fault.start_ms)
        faults.append(fault)
        at = fault.heal_ms + rng.randint(*GAP_MS)
    return tuple(faults)


def _cut(fault: Fault, duration_ms: int) -> Fault:
    return replace(fault, duration_ms=duration_ms)


# -- carrying it out ----------------------------------------------------------------------------


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


_Step = tuple[str, JSON, list[Callable[[], Awaitable[None]]]]
"""An action of the nemesis: its ``f``, its ``value``, the calls that carry it out."""


@dataclass(slots=True)
class Nemesis:
    """Carries out a schedule on ``target``, recording every action into ``writer``."""

    target: Target
    config: ClusterConfig
    writer: HistoryWriter
    errors: list[str] = field(default_factory=list)
    """Every action that failed (also recorded in the history)."""
    done: int = 0
    """Faults injected so far."""
    _clocks_moved: set[str] = field(default_factory=set)
    _paused: set[str] = field(default_factory=set)
    _killed: set[str] = field(default_factory=set)
    """Killed and not started again yet (a heal that failed leaves them here)."""
    _filled: set[str] = field(default_factory=set)
    """Disks filled and not freed yet (their nodes may have stopped: that is no finding)."""

    async def run(self, schedule: Sequence[Fault], started_at: float, until: float) -> None:
        """Each fault at its time (``started_at`` on the event loop's clock), held for its
        duration from when it was injected, then healed. A heal that took long (a restart)
        pushes the next fault back, so that the quiet gap drawn before it is kept; a fault
        that would then start after ``until`` - ``TAIL_MS`` is not injected (``done`` counts
        the faults injected)."""
        loop = asyncio.get_running_loop()
        healed_at, planned_heal_ms = started_at, 0
        for number, fault in enumerate(schedule):
            gap_s = (fault.start_ms - planned_heal_ms) / 1000
            at = max(started_at + fault.start_ms / 1000, healed_at + gap_s)
            if at > until - TAIL_MS / 1000:
                return
            await asyncio.sleep(max(0.0, at - loop.time()))
            heal = await self._inject(number, fault)
            self.done += 1
            await asyncio.sleep(fault.duration_ms / 1000)
            await heal()
            healed_at, planned_heal_ms = loop.time(), fault.heal_ms

    async def _inject(self, number: int, fault: Fault) -> Callable[[], Awaitable[None]]:
        """Inject ``fault``; returns its heal."""
        t = self.target
        nodes = fault.nodes
        if fault.master_of is not None:
            nodes = (await self._master(fault.master_of) or nodes[0],)
        names: list[JSON] = list(nodes)
        extra: dict[str, JSON] = {}
        act: _Step
        undo: _Step
        match fault.kind:
            case "kill":
                self._killed.update(nodes)
                act = ("kill", names, [partial(t.kill, n) for n in nodes])
                undo = ("start", names, [partial(t.start, n) for n in nodes])
            case "pause":
                self._paused.update(nodes)
                act = ("pause", names, [partial(t.pause, n) for n in nodes])
                undo = ("resume", names, [partial(t.resume, n) for n in nodes])
            case "clock":
                pairs = list(zip(nodes, fault.offsets_ms, strict=True))
                self._clocks_moved.update(nodes)
                act = (
                    "clock",
                    [[n, o] for n, o in pairs],
                    [partial(t.set_clock_offset, n, o) for n, o in pairs],
                )
                undo = (
                    "clock",
                    [[n, 0] for n in nodes],
                    [partial(t.set_clock_offset, n, 0) for n in nodes],
                )
            case "partition":
                links = fault.links
                if fault.master_of is not None:  # the master found now, or the fallback
                    replicas = layout_of(self.config).replicas[fault.master_of[0]]
                    links = tuple(isolate(nodes[0], replicas))
                cut: list[JSON] = [[a, b] for a, b in links]
                act = ("partition", cut, [partial(t.partition, links)])
                undo = ("heal", cut, [t.heal_network])
            case "slow-link":
                slowed: list[JSON] = [[a, b] for a, b in fault.links]
                extra["delay_ms"] = fault.delay_ms
                act = ("slow-link", slowed, [partial(t.slow_links, fault.links, fault.delay_ms)])
                undo = ("heal", slowed, [t.heal_network])
            case "power":
                self._killed.update(nodes)
                act = ("power-cut", names, [partial(t.power_cut, n) for n in nodes])
                undo = ("start", names, [partial(t.start, n) for n in nodes])
            case "disk-full":
                self._filled.update(nodes)
                act = ("disk-full", names, [partial(t.fill_disk, n) for n in nodes])
                undo = ("disk-free", names, [partial(t.free_disk, n) for n in nodes])
            case _:
                raise NemesisError(f"no nemesis carries out {fault.kind!r} faults yet")
        f, value, actions = act
        await self._act(f, value, {"phase": "fault", "fault_no": number, **extra}, actions)

        async def heal() -> None:
            f, value, actions = undo
            if f == "resume":
                self._paused.difference_update(nodes)
            if f == "start":
                self._killed.difference_update(nodes)
            if f == "disk-free":
                self._filled.difference_update(nodes)
            extra: dict[str, JSON] = {"phase": "heal", "fault_no": number}
            await self._act(f, value, extra, actions)
            stopped = [n for n in nodes if f == "disk-free" and not t.is_running(n)]
            if stopped:  # it met the full disk and stopped, as it should
                await self._act(
                    "start", list(stopped), extra, [partial(t.start, n) for n in stopped]
                )

        return heal

    async def _master(self, group: tuple[str, int]) -> str | None:
        """The group's master now, found within ``MASTER_PROBE_S`` (a paused replica accepts
        a connection and never answers: probes must not wait for it), else None."""
        net_config = replace(
            NetConfig.for_cluster(self.config), client_connect_timeout_ms=MASTER_PROBE_MS
        )
        try:
            async with asyncio.timeout(2 * MASTER_PROBE_MS / 1000):
                masters = await find_masters(self.config, net_config, services=[group[0]])
        except (NetError, TimeoutError):
            return None
        return masters.get(group)

    async def _act(
        self,
        f: str,
        value: JSON,
        extra: dict[str, JSON],
        actions: Sequence[Callable[[], Awaitable[None]]],
    ) -> None:
        """Record ``f`` on ``value`` (invoke), run ``actions`` concurrently, record the info;
        a failed action is recorded (``error``) and kept in ``errors``, not raised."""
        self.writer.invoke(wall_ms(), NEMESIS, f, value, **extra)
        results = await asyncio.gather(*(a() for a in actions), return_exceptions=True)
        problems = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation and the like
        if problems:
            error = f"{f} {value}: " + "; ".join(problems)
            self.errors.append(error)
            self.writer.info(wall_ms(), NEMESIS, f, value, **extra, error=error)
        else:
            self.writer.info(wall_ms(), NEMESIS, f, value, **extra)

    async def heal_all(self) -> None:
        """The final heal: every node running and resumed, every clock moved back to 0, the
        network healed (see the module doc)."""
        t = self.target
        final: dict[str, JSON] = {"phase": FINAL}
        if "partition" in t.faults or "slow-link" in t.faults:
            await self._act("heal", None, final, [t.heal_network])
        paused = sorted(self._paused)
        if paused:
            await self._act("resume", list(paused), final, [partial(t.resume, n) for n in paused])
            self._paused.clear()
        filled = sorted(self._filled)
        if filled:
            await self._act(
                "disk-free", list(filled), final, [partial(t.free_disk, n) for n in filled]
            )
            self._filled.clear()
        stopped = [n for n in t.nodes if not t.is_running(n)]
        for node in sorted(set(stopped) - self._killed - set(filled)):
            # Started again below all the same, but a node that died by itself is a finding.
            self.errors.append(f"{node} was not running at the final heal, not killed by us")
        if stopped:
            await self._act("start", list(stopped), final, [partial(t.start, n) for n in stopped])
        moved = sorted(self._clocks_moved)
        if moved:
            await self._act(
                "clock",
                [[n, 0] for n in moved],
                final,
                [partial(t.set_clock_offset, n, 0) for n in moved],
            )
