"""A tiny deterministic in-process cluster of service nodes (``ReplicatedService``: store
replicas, lock replicas), shared by ``tests/test_store_node.py`` and ``tests/test_lock_node.py``.

``ServiceCluster`` runs one node per name, each with an instantly syncing ``MemoryStore`` disk,
messages delivered after a fixed latency (a send to the node itself included), integer true
time (monotonic clocks at true rate; each node's wall clock may be offset by ``wall_offset``),
crash (memory and messages in flight to it lost) and restart from its disk. After every step
it checks the stepped node's invariants (``check_invariants``) and that no Paxos group has two
lease holders. A subclass says how to build a node.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pxq.effects import Boot, ClientCall, Effects, Input, Now, Received, Wake
from pxq.paxos.service import ReplicatedService
from sim.memstore import MemoryStore

WALL_ORIGIN = 1_700_000_000_000
SPIN_MAX = 10_000
"""Wakes one node may take at one instant before the harness calls it a spinning timer."""

N = TypeVar("N", bound=ReplicatedService)  # type: ignore[type-arg]


@dataclass(slots=True)
class Flight:
    seq: int
    at: int
    src: str
    dst: str
    msg: object


class ServiceCluster(ABC, Generic[N]):
    """The cluster of ``names``; ``groups`` Paxos groups are checked for a single master."""

    def __init__(self, names: Iterable[str], groups: int, latency_ms: int = 1) -> None:
        self.names = tuple(names)
        self.groups = groups
        self.latency_ms = latency_ms
        self.time = 0
        self.disks = {name: MemoryStore() for name in self.names}
        self.nodes: dict[str, N | None] = dict.fromkeys(self.names)
        self.incarnation = dict.fromkeys(self.names, 0)
        self.wall_offset = dict.fromkeys(self.names, 0)
        self.pool: list[Flight] = []
        self.responses: dict[int, object | None] = {}
        self.seq = 0
        self.next_call = 1
        self.wakes_now: dict[str, int] = {}

    @abstractmethod
    def new_node(self, name: str, disk: MemoryStore, rng: random.Random) -> N:
        """A new incarnation of node ``name`` over its disk."""

    @abstractmethod
    def redirect_of(self, response: object) -> tuple[bool, str | None]:
        """(whether ``response`` is the service's redirect, the master it names)."""

    @abstractmethod
    def is_unknown(self, response: object) -> bool:
        """Whether ``response`` is the service's indefinite error (worth asking again)."""

    def after_step(self, name: str, fx: Effects) -> None:
        """Called after each step's effects are taken in (a subclass may record them)."""

    def start(self) -> None:
        """Boot every node (the subclass's ``make`` calls it once it is set up)."""
        for name in self.names:
            self.restart(name)

    def now(self, name: str | None = None) -> Now:
        offset = 0 if name is None else self.wall_offset[name]
        return Now(mono_ms=self.time, wall_ms=WALL_ORIGIN + self.time + offset)

    def node(self, name: str) -> N:
        node = self.nodes[name]
        assert node is not None
        return node

    def step(self, name: str, inp: Input) -> None:
        node = self.node(name)
        fx = node.step(self.now(name), inp)
        node.check_invariants()
        self.disks[name].apply(fx.writes)
        for s in fx.sends:
            self.seq += 1
            self.pool.append(Flight(self.seq, self.time + self.latency_ms, name, s.dst, s.msg))
        for r in fx.replies:
            assert self.responses.get(r.call_id) is None, f"call {r.call_id} answered twice"
            self.responses[r.call_id] = r.response
        self.after_step(name, fx)
        self.check_single_master()

    def restart(self, name: str) -> None:
        self.incarnation[name] += 1
        rng = random.Random(f"{type(self).__name__}/{name}/{self.incarnation[name]}")
        self.nodes[name] = self.new_node(name, self.disks[name], rng)
        self.step(name, Boot())

    def crash(self, name: str) -> None:
        self.nodes[name] = None
        self.pool = [f for f in self.pool if f.dst != name]

    def call(self, name: str, request: object) -> int:
        call_id = self.next_call
        self.next_call += 1
        self.responses[call_id] = None
        self.step(name, ClientCall(call_id=call_id, request=request))
        return call_id

    def run(self, ms: int) -> None:
        end = self.time + ms
        while True:
            t_msg = min((f.at for f in self.pool), default=None)
            timer: tuple[int, str] | None = None
            for name, node in self.nodes.items():
                d = None if node is None else node.next_deadline()
                if d is not None and (timer is None or d < timer[0]):
                    timer = (d, name)
            t_next = t_msg
            if timer is not None and (t_next is None or timer[0] < t_next):
                t_next = timer[0]
            if t_next is None or t_next > end:
                break
            if t_next > self.time:
                self.time = t_next
                self.wakes_now.clear()
            if t_msg is not None and t_msg <= self.time:
                f = min((f for f in self.pool if f.at <= self.time), key=lambda f: f.seq)
                self.pool.remove(f)
                if self.nodes[f.dst] is not None:
                    self.step(f.dst, Received(src=f.src, msg=f.msg))
            elif timer is not None:
                n = self.wakes_now[timer[1]] = self.wakes_now.get(timer[1], 0) + 1
                assert n < SPIN_MAX, f"{timer[1]} keeps asking for a Wake at {self.time}"
                self.step(timer[1], Wake())
        self.time = end

    def run_until(self, predicate: Callable[[], object], within_ms: int, step_ms: int = 5) -> bool:
        end = self.time + within_ms
        while self.time < end:
            if predicate():
                return True
            self.run(step_ms)
        return bool(predicate())

    def masters(self, group: int) -> list[str]:
        now = self.now()
        return [n for n, node in self.nodes.items() if node and node.is_master(group, now)]

    def check_single_master(self) -> None:
        for g in range(self.groups):
            m = self.masters(g)
            assert len(m) <= 1, f"two masters of group {g} at {self.time}: {m}"

    def wait_master(self, group: int, within_ms: int = 5000) -> str:
        assert self.run_until(lambda: bool(self.masters(group)), within_ms), "no master"
        return self.masters(group)[0]

    def request(self, name: str, request: object, within_ms: int = 2000) -> object:
        call_id = self.call(name, request)
        assert self.run_until(lambda: self.responses[call_id] is not None, within_ms), (
            f"no answer to {request!r}"
        )
        return self.responses[call_id]

    def follow_redirects(self, request: object, within_ms: int = 10_000) -> object:
        """Send ``request`` until a master answers it, following redirects (and asking again
        after an indefinite error)."""
        end = self.time + within_ms
        names = self.names
        target = names[0]
        while self.time < end:
            if self.nodes[target] is None:
                target = names[(names.index(target) + 1) % len(names)]
                continue
            r = self.request(target, request)
            redirect, master = self.redirect_of(r)
            if redirect:
                if master is not None and master != target and self.nodes[master]:
                    target = master
                else:
                    self.run(50)
                    target = names[(names.index(target) + 1) % len(names)]
                continue
            if self.is_unknown(r):
                self.run(50)
                continue
            return r
        raise AssertionError(f"no answer to {request!r} within {within_ms} ms")
