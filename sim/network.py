"""The simulated network: delay distributions, loss, duplication, reordering, partitions, clogs.

Messages travel between named endpoints (nodes and clients). Each directed path is FIFO, like
a TCP connection, unless reordering is on: then a message may take an extra random delay and
overtake others. Duplication and reordering model a datagram-like peer network; traffic of
client endpoints rides a stream (as client connections do) and is never duplicated or
reordered, only lost, blocked or held. A partition blocks directed paths (both ways for a symmetric one); a message
is dropped if its path is blocked when it is sent or when it would arrive. A clogged path
holds its messages (nothing is lost) until it is unclogged, as FoundationDB's clogging does.
A path may also have its own loss, duplication or delay (``PathFault``), in place of the
network-wide one. With zones (``sim.zones``), a message between endpoints placed in two
different zones takes the delay of their link (``zone_links``) in place of the network-wide
one: a link's latency is a property of the link, which a network-wide delay fault leaves alone
and a path fault overrides.
Every random draw comes from the network's own stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import simpy

DelayDist = Literal["constant", "uniform", "exponential"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DelaySpec:
    """A latency distribution in microseconds: constant ``mean_us``; uniform between ``min_us``
    and ``max_us``; or ``min_us`` plus an exponential with mean ``mean_us - min_us``, capped at
    ``max_us``."""

    dist: DelayDist = "uniform"
    mean_us: int = 1000
    min_us: int = 500
    max_us: int = 1500

    def __post_init__(self) -> None:
        if self.min_us < 0 or self.mean_us < 0 or self.max_us < 0:
            raise ValueError("delays must not be negative")
        if self.dist == "uniform" and self.min_us > self.max_us:
            raise ValueError("min must not exceed max")
        if self.dist == "exponential" and not self.min_us <= self.mean_us <= self.max_us:
            raise ValueError("exponential delay needs min <= mean <= max")

    def draw(self, rng: random.Random) -> int:
        match self.dist:
            case "constant":
                return self.mean_us
            case "uniform":
                return self.min_us + int(rng.random() * (self.max_us - self.min_us + 1))
            case "exponential":
                extra = self.mean_us - self.min_us
                if extra == 0:
                    return self.min_us
                return min(self.max_us, self.min_us + int(rng.expovariate(1.0 / extra)))


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSpec:
    """Baseline network behaviour; faults change loss, duplication, reordering and delay."""

    delay: DelaySpec = DelaySpec()
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_us: int = 20_000

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if self.reorder_us < 0:
            raise ValueError("reorder_us must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PathFault:
    """One directed path's own loss, duplication or delay (None: the network's)."""

    loss: float | None = None
    duplicate: float | None = None
    delay: DelaySpec | None = None

    def empty(self) -> bool:
        return self.loss is None and self.duplicate is None and self.delay is None


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    blocked: int = 0
    duplicated: int = 0
    reordered: int = 0
    held: int = 0
    by_path: dict[tuple[str, str], int] = field(default_factory=dict)


Deliver = Callable[[str, str, object], None]
"""Called as ``deliver(src, dst, payload)`` when a message arrives."""


class Network:
    """Moves payloads between endpoints through a SimPy environment."""

    def __init__(
        self, env: simpy.Environment, rng: random.Random, spec: NetworkSpec, deliver: Deliver
    ) -> None:
        self.env = env
        self.rng = rng
        self.baseline = spec
        self.spec = spec
        self.deliver = deliver
        self.blocked: set[tuple[str, str]] = set()
        self.clogged: dict[tuple[str, str], list[object]] = {}
        self.path_faults: dict[tuple[str, str], PathFault] = {}
        self.stats = NetworkStats()
        self._path_last_us: dict[tuple[str, str], int] = {}
        self.stream_endpoints: set[str] = set()
        """Endpoints whose traffic rides a TCP-like stream (clients): never duplicated or
        reordered, though it can still be lost, blocked or held."""
        self.zone_of: dict[str, str] = {}
        """The zone of each placed endpoint (none placed: no zones)."""
        self.zone_links: dict[tuple[str, str], DelaySpec] = {}
        """The delay of each directed link between two different zones that has its own."""

    # -- faults --------------------------------------------------------------------------

    def block(self, src: str, dst: str) -> None:
        self.blocked.add((src, dst))

    def partition(self, side: list[str], rest: list[str], direction: str = "both") -> None:
        """Cut the paths between ``side`` and ``rest``. ``direction`` "out" blocks only what
        ``side`` sends, "in" only what it receives, "both" both ways."""
        for a in side:
            for b in rest:
                if direction in ("both", "out"):
                    self.blocked.add((a, b))
                if direction in ("both", "in"):
                    self.blocked.add((b, a))

    def unpartition(self, side: list[str], rest: list[str]) -> None:
        for a in side:
            for b in rest:
                self.blocked.discard((a, b))
                self.blocked.discard((b, a))

    def clog(self, src: str, dst: str) -> None:
        self.clogged.setdefault((src, dst), [])

    def unclog(self, src: str, dst: str) -> None:
        held = self.clogged.pop((src, dst), [])
        for payload in held:
            self._transmit(src, dst, payload)

    def set_path_fault(
        self, src: str, dst: str, field_name: str, value: float | DelaySpec | None
    ) -> None:
        """Give the path ``src -> dst`` its own ``loss``, ``duplicate`` or ``delay``
        (``value`` None: the network's again)."""
        path = (src, dst)
        pf = self.path_faults.get(path, PathFault())
        if field_name == "delay":
            pf = replace(pf, delay=value if isinstance(value, DelaySpec) else None)
        elif field_name in ("loss", "duplicate"):
            rate = float(value) if isinstance(value, float | int) else None
            pf = replace(pf, loss=rate) if field_name == "loss" else replace(pf, duplicate=rate)
        else:
            raise ValueError(f"no path fault {field_name!r}")
        if pf.empty():
            self.path_faults.pop(path, None)
        else:
            self.path_faults[path] = pf

    def heal(self) -> None:
        """Remove every partition, clog and path fault, and restore the baseline behaviour."""
        self.blocked.clear()
        self.path_faults.clear()
        for src, dst in sorted(self.clogged):
            self.unclog(src, dst)
        self.spec = self.baseline

    # -- traffic -------------------------------------------------------------------------

    def send(self, src: str, dst: str, payload: object) -> None:
        stats = self.stats
        stats.sent += 1
        path = (src, dst)
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        if path in self.blocked:
            stats.blocked += 1
            return
        held = self.clogged.get(path)
        if held is not None:
            stats.held += 1
            held.append(payload)
            return
        self._transmit(src, dst, payload)

    def _transmit(self, src: str, dst: str, payload: object) -> None:
        spec, rng, stats = self.spec, self.rng, self.stats
        path = (src, dst)
        loss, duplicate, delay = spec.loss, spec.duplicate, spec.delay
        if self.zone_links:
            zone_of = self.zone_of
            link = self.zone_links.get((zone_of.get(src, ""), zone_of.get(dst, "")))
            if link is not None:
                delay = link
        pf = self.path_faults.get(path) if self.path_faults else None
        if pf is not None:
            loss = loss if pf.loss is None else pf.loss
            duplicate = duplicate if pf.duplicate is None else pf.duplicate
            delay = delay if pf.delay is None else pf.delay
        if loss and rng.random() < loss:
            stats.lost += 1
            return
        stream = src in self.stream_endpoints or dst in self.stream_endpoints
        copies = 2 if duplicate and not stream and rng.random() < duplicate else 1
        stats.duplicated += copies - 1
        for _ in range(copies):
            now = int(self.env.now)
            arrive = now + delay.draw(rng)
            if spec.reorder and not stream and rng.random() < spec.reorder:
                stats.reordered += 1
                arrive += int(rng.random() * spec.reorder_us)
            else:
                # FIFO per path, as on one TCP connection.
                arrive = max(arrive, self._path_last_us.get(path, 0))
                self._path_last_us[path] = arrive
            event = self.env.timeout(arrive - now)
            event.callbacks.append(partial(self._arrive, src, dst, payload))

    def _arrive(self, src: str, dst: str, payload: object, _event: object) -> None:
        if (src, dst) in self.blocked:
            self.stats.blocked += 1
            return
        self.stats.delivered += 1
        self.deliver(src, dst, payload)
