"""A tiny deterministic in-process driver for Paxos replicas (no simpy).

``Cluster`` runs N ``Replica`` nodes, each with a ``MemoryStore`` that syncs instantly, a
pool of in-flight messages, integer true time and a per-node monotonic clock that may drift
(ppm) and have an offset. Tests either drive it by hand (deliver, drop, duplicate a given
message, fire a node's timer, crash, restart, partition) or let ``run`` deliver messages
after a fixed latency and fire timers in time order.

Because writes are applied to the store before the step's sends enter the pool, a crash
just drops the node object: a restart rebuilds it from its store with ``Boot``.

Checks run on every step: the stepped replica's invariants hold (``Replica.check_invariants``),
replicas agree on the checksum of every applied instance and no replica raises an alarm
(unless ``hostile``: tests of hostile input), and at most one replica believes it is master
of a group at any instant of true time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pxq.effects import ALARM, Boot, ClientCall, Effects, Now, Received, TraceEvent, Wake
from pxq.paxos.config import PaxosConfig
from pxq.paxos.logsm import RecordingLog
from pxq.paxos.messages import Propose, ProposeOk, ProposeUnknown, Redirect
from pxq.paxos.replica import Replica
from pxq.paxos.sm import StateMachine
from sim.memstore import MemoryStore


@dataclass(slots=True)
class Flight:
    """A message in the pool."""

    seq: int
    deliver_at: int
    src: str
    dst: str
    msg: object


@dataclass(slots=True)
class Call:
    node: str
    group: int
    value: bytes
    response: object | None = None


@dataclass(slots=True)
class Cluster:
    config: PaxosConfig
    seed: int = 0
    latency_ms: int = 1
    link_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    """One-way latency of particular links (source, destination); ``latency_ms`` elsewhere."""
    ppm: dict[str, int] = field(default_factory=dict)
    offset: dict[str, int] = field(default_factory=dict)
    check_lease: bool = True
    time: int = 0
    stores: dict[str, MemoryStore] = field(default_factory=dict)
    nodes: dict[str, Replica | None] = field(default_factory=dict)
    incarnation: dict[str, int] = field(default_factory=dict)
    pool: list[Flight] = field(default_factory=list)
    sent: list[Flight] | None = None
    """When a list: every message sent, kept after delivery (tests that look at answers)."""
    calls: dict[int, Call] = field(default_factory=dict)
    trace: list[tuple[int, str, TraceEvent]] = field(default_factory=list)
    alarms: list[tuple[int, str, TraceEvent]] = field(default_factory=list)
    hostile: bool = False
    """A fake peer takes part (tests of hostile input): alarms (``pxq.effects.ALARM``) are
    expected and replicas may be fooled into applying different values. Else every replica
    is honest: an alarm, or two checksums of one applied instance, fail the test."""
    applied: dict[tuple[int, int], int] = field(default_factory=dict)
    side: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    next_call: int = 1
    steps: int = 0

    @classmethod
    def make(
        cls, n: int = 3, groups: int = 1, seed: int = 0, latency_ms: int = 1, **overrides: int
    ) -> Cluster:
        config = PaxosConfig(replicas=tuple(f"r{i}" for i in range(n)), groups=groups, **overrides)
        c = cls(config=config, seed=seed, latency_ms=latency_ms)
        for name in config.replicas:
            c.stores[name] = MemoryStore()
            c.incarnation[name] = 0
            c.nodes[name] = None
            c.restart(name)
        return c

    # -- clocks ------------------------------------------------------------------------------

    def mono(self, name: str, t: int | None = None) -> int:
        t = self.time if t is None else t
        return self.offset.get(name, 0) + t + (t * self.ppm.get(name, 0)) // 1_000_000

    def now(self, name: str) -> Now:
        m = self.mono(name)
        return Now(mono_ms=m, wall_ms=1_700_000_000_000 + m)

    def true_time_of(self, name: str, local_ms: int) -> int:
        """The earliest true time at which ``name``'s clock reads at least ``local_ms``."""
        ppm = self.ppm.get(name, 0)
        t = max(
            self.time,
            (local_ms - self.offset.get(name, 0)) * 1_000_000 // (1_000_000 + ppm) - 2,
        )
        while self.mono(name, t) < local_ms:
            t += 1
        return t

    # -- stepping ------------------------------------------------------------------------------

    def sm_factory(self, name: str) -> Callable[[int], StateMachine]:
        store = self.stores[name]

        def make(group: int) -> StateMachine:
            return RecordingLog(store, group)

        return make

    def _step(self, name: str, inp: Boot | Received | Wake | ClientCall) -> Effects:
        node = self.nodes[name]
        assert node is not None
        fx = node.step(self.now(name), inp)
        node.check_invariants()
        self.steps += 1
        self.stores[name].apply(fx.writes)
        for s in fx.sends:
            self.seq += 1
            flight = Flight(
                seq=self.seq,
                deliver_at=self.time + self.link_ms.get((name, s.dst), self.latency_ms),
                src=name,
                dst=s.dst,
                msg=s.msg,
            )
            self.pool.append(flight)
            if self.sent is not None:
                self.sent.append(flight)
        for r in fx.replies:
            call = self.calls[r.call_id]
            assert call.response is None, f"call {r.call_id} answered twice"
            call.response = r.response
        for ev in fx.trace:
            self.trace.append((self.time, name, ev))
            if ev.kind == ALARM:
                self.alarms.append((self.time, name, ev))
                if not self.hostile:
                    raise AssertionError(f"{name} raised an alarm: {dict(ev.fields)}")
            if ev.kind == "applied":
                f = dict(ev.fields)
                key = (int(f["group"]), int(f["instance"]))  # type: ignore[arg-type]
                checksum = int(f["checksum"])  # type: ignore[arg-type]
                seen = self.applied.setdefault(key, checksum)
                assert self.hostile or seen == checksum, f"{name} applied {key} differently"
        if self.check_lease:
            self.check_single_master()
        return fx

    def restart(self, name: str, boot: Boot | None = None) -> None:
        """A new incarnation of ``name`` from its store, booted with ``boot`` (default: a
        plain ``Boot()``)."""
        self.incarnation[name] += 1
        rng = random.Random(self.seed * 1000 + self.config.replicas.index(name) * 100)
        rng.seed(f"{self.seed}/{name}/{self.incarnation[name]}")
        self.nodes[name] = Replica(
            name,
            self.config,
            self.stores[name],
            rng,
            self.sm_factory(name),
        )
        self._step(name, Boot() if boot is None else boot)

    def crash(self, name: str) -> None:
        """Lose the node's memory; its open calls are never answered."""
        self.nodes[name] = None
        for call in self.calls.values():
            if call.node == name and call.response is None:
                call.response = ProposeUnknown(group=call.group, reason="crashed")

    def up(self, name: str) -> bool:
        return self.nodes[name] is not None

    def partition(self, *sides: Iterable[str]) -> None:
        """Split the replicas into sides that cannot talk to each other."""
        self.side = {}
        for i, members in enumerate(sides):
            for m in members:
                self.side[m] = i

    def heal(self) -> None:
        self.side = {}

    def connected(self, a: str, b: str) -> bool:
        return self.side.get(a, -1) == self.side.get(b, -1)

    # -- manual control --------------------------------------------------------------------------

    def deliver(self, index: int) -> None:
        flight = self.pool.pop(index)
        if self.up(flight.dst) and self.connected(flight.src, flight.dst):
            self._step(flight.dst, Received(src=flight.src, msg=flight.msg))

    def inject(self, dst: str, src: str, msg: object) -> None:
        """Deliver ``msg`` to ``dst`` as if ``src`` had sent it (a forged or replayed frame)."""
        if self.up(dst):
            self._step(dst, Received(src=src, msg=msg))

    def drop_where(self, pred: Callable[[Flight], bool]) -> int:
        """Drop every pooled message matching ``pred``; how many were dropped."""
        keep = [f for f in self.pool if not pred(f)]
        dropped = len(self.pool) - len(keep)
        self.pool = keep
        return dropped

    def deliver_where(self, pred: Callable[[Flight], bool]) -> int:
        """Deliver (in send order) every pooled message matching ``pred``, once."""
        chosen = sorted((f for f in self.pool if pred(f)), key=lambda f: f.seq)
        for f in chosen:
            self.deliver(self.pool.index(f))
        return len(chosen)

    def drop(self, index: int) -> None:
        self.pool.pop(index)

    def duplicate(self, index: int) -> None:
        f = self.pool[index]
        self.seq += 1
        self.pool.append(Flight(self.seq, f.deliver_at, f.src, f.dst, f.msg))

    def fire(self, name: str) -> bool:
        """Wake ``name`` if its deadline has passed on its clock."""
        node = self.nodes[name]
        if node is None:
            return False
        d = node.next_deadline()
        if d is None or d > self.mono(name):
            return False
        self._step(name, Wake())
        after = node.next_deadline() if self.nodes[name] is node else None
        if after is not None and after <= self.mono(name):
            # A deadline that stays in the past after its Wake would spin the driver.
            groups = [
                (
                    g.group,
                    g.role,
                    g.deadline(),
                    g._election_at(),
                    g.catchup.learn_deadline,
                    g.catchup.snap,
                )
                for g in node.groups
            ]
            raise AssertionError(f"{name} keeps asking for a Wake at {after}: {groups}")
        return True

    def propose(self, name: str, group: int, value: bytes) -> int:
        call_id = self.next_call
        self.next_call += 1
        self.calls[call_id] = Call(node=name, group=group, value=value)
        if self.up(name):
            self._step(name, ClientCall(call_id=call_id, request=Propose(group=group, value=value)))
        else:
            self.calls[call_id].response = ProposeUnknown(group=group, reason="down")
        return call_id

    # -- automatic run -------------------------------------------------------------------------

    def _next_timer(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for name, node in self.nodes.items():
            if node is None:
                continue
            d = node.next_deadline()
            if d is None:
                continue
            t = self.true_time_of(name, d)
            if best is None or t < best[0]:
                best = (t, name)
        return best

    def step_next(self, end: int) -> bool:
        """Deliver the next message or fire the next timer, if it is due by true time ``end``
        (False: nothing is). ``run`` is this in a loop; tests that must act between two
        events (a partition right after one step) call it directly."""
        msg_t = min((f.deliver_at for f in self.pool), default=None)
        timer = self._next_timer()
        t_next = msg_t if msg_t is not None else None
        if timer is not None and (t_next is None or timer[0] < t_next):
            t_next = timer[0]
        if t_next is None or t_next > end:
            return False
        self.time = max(self.time, t_next)
        if msg_t is not None and msg_t <= self.time:
            i = min(
                (i for i, f in enumerate(self.pool) if f.deliver_at <= self.time),
                key=lambda i: self.pool[i].seq,
            )
            self.deliver(i)
        elif timer is not None:
            self.fire(timer[1])
        return True

    def run(self, ms: int, *, until_quiet: bool = False) -> None:
        """Deliver messages (after ``latency_ms``) and fire timers in true-time order."""
        end = self.time + ms
        while self.step_next(end):
            if until_quiet and not self.pool:
                return
        self.time = max(self.time, end)

    def run_until(self, predicate: object, within_ms: int, step_ms: int = 5) -> bool:
        assert callable(predicate)
        end = self.time + within_ms
        while self.time < end:
            if predicate():
                return True
            self.run(step_ms)
        return bool(predicate())

    # -- queries and checks ------------------------------------------------------------------------

    def masters(self, group: int = 0) -> list[str]:
        return [
            name
            for name, node in self.nodes.items()
            if node is not None and node.is_master(group, self.now(name))
        ]

    def check_single_master(self) -> None:
        for g in range(self.config.groups):
            m = self.masters(g)
            assert len(m) <= 1, f"two masters of group {g} at t={self.time}: {m}"

    def wait_master(self, group: int = 0, within_ms: int = 5000) -> str:
        assert self.run_until(lambda: bool(self.masters(group)), within_ms), "no master"
        return self.masters(group)[0]

    def records(self, name: str, group: int = 0) -> list[tuple[int, int, bytes]]:
        return list(RecordingLog(self.stores[name], group).records())

    def applied_index(self, name: str, group: int = 0) -> int:
        node = self.nodes[name]
        if node is not None:
            return node.applied(group)
        from pxq.paxos.records import KIND_APPLIED, META, decode_applied, meta_key

        rec = self.stores[name].get(META, meta_key(group, KIND_APPLIED))
        return 0 if rec is None else decode_applied(rec)[0]

    def applied_indexes(self) -> dict[int, list[int]]:
        return {
            g: [self.applied_index(n, g) for n in self.config.replicas]
            for g in range(self.config.groups)
        }

    def converged(self) -> bool:
        """Every replica applied the same prefix of every group."""
        return all(len(set(a)) == 1 for a in self.applied_indexes().values())

    def check_agreement(self) -> None:
        """Every (group, instance, slot) recorded on two replicas holds the same value."""
        for g in range(self.config.groups):
            seen: dict[tuple[int, int], bytes] = {}
            for name in self.config.replicas:
                for instance, slot, value in self.records(name, g):
                    other = seen.setdefault((instance, slot), value)
                    assert other == value, f"replicas disagree at group {g} {(instance, slot)}"

    def check_acknowledged(self) -> None:
        """Every ProposeOk value is in the applied log of every replica that got that far."""
        for call in self.calls.values():
            r = call.response
            if not isinstance(r, ProposeOk):
                continue
            for name in self.config.replicas:
                if self.applied_index(name, call.group) < r.instance:
                    continue
                recs = {(i, s): v for i, s, v in self.records(name, call.group) if i == r.instance}
                assert recs.get((r.instance, r.slot)) == call.value, (
                    f"acknowledged value lost on {name} at {r.instance}/{r.slot}"
                )

    def propose_until_ok(
        self, group: int, value: bytes, within_ms: int = 10_000, start: str | None = None
    ) -> ProposeOk:
        """Propose through redirects and retries until the value is acknowledged."""
        end = self.time + within_ms
        target = start or self.config.replicas[0]
        while self.time < end:
            if not self.up(target):
                target = self.config.replicas[(self.config.replicas.index(target) + 1) % 3]
                continue
            call_id = self.propose(target, group, value)
            self.run_until(lambda c=call_id: self.calls[c].response is not None, 2000)
            r = self.calls[call_id].response
            if isinstance(r, ProposeOk):
                return r
            if isinstance(r, Redirect) and r.master is not None and r.master != target:
                target = r.master
                continue
            if isinstance(r, ProposeUnknown):
                # May still be chosen: retrying would duplicate it; tests use fresh values.
                pass
            self.run(50)
            i = self.config.replicas.index(target)
            target = self.config.replicas[(i + 1) % len(self.config.replicas)]
        raise AssertionError(f"no ProposeOk for group {group} within {within_ms} ms")
