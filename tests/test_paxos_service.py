"""The shared part of the service nodes (``pxq.paxos.service.ReplicatedService``), apart from
either service: a tiny counter service (``CounterService`` over ``Counter`` state machines).

Most tests replace the node's replica by ``ScriptedReplica``, which records what the service
asks of it and answers what the test scripts, so translation, the outbox (one proposal per
step) and the tick schedule are checked exactly. The last tests run three real replicas.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Reply,
    Wake,
)
from pxq.paxos.config import PaxosConfig
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from pxq.paxos.replica import Replica
from pxq.paxos.service import Answer, InnerCall, Proposal, ReplicatedService
from sim.memstore import MemoryStore

NAMES = ("r0", "r1", "r2")
TABLE = "test_counter"


class Counter:
    """A sum per group; a command is a decimal increment (its result the new sum), or
    ``b"tick"`` (counted, empty result)."""

    def __init__(self, view: MemoryStore, group: int) -> None:
        self.view = view
        self.group = group
        self.total = 0
        self.ticks = 0

    def load(self) -> None:
        raw = self.view.get(TABLE, self.group.to_bytes(4, "big"))
        self.total = 0 if raw is None else int(raw)

    def apply(self, instance: int, slot: int, value: bytes, fx: EffectsBuilder) -> bytes:
        if value == b"tick":
            self.ticks += 1
            return b""
        self.total += int(value)
        fx.put(TABLE, self.group.to_bytes(4, "big"), str(self.total).encode())
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return str(self.total).encode()

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        self.total = int(snapshot)
        fx.put(TABLE, self.group.to_bytes(4, "big"), snapshot)


@dataclass(frozen=True, slots=True)
class Bump:
    group: int
    n: int


@dataclass(frozen=True, slots=True)
class Peek:
    group: int


@dataclass(frozen=True, slots=True)
class BumpAll:
    n: int


@dataclass(frozen=True, slots=True)
class Moved:
    master: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str
    definite: bool


@dataclass(slots=True)
class _Fan:
    waiting: int
    results: list[object] = field(default_factory=list)


class CounterService(ReplicatedService[Counter]):
    def __init__(
        self, node_id: NodeId, config: PaxosConfig, storage: MemoryStore, tick_ms: int = 300
    ) -> None:
        self.disk = storage
        self.want_tick = True
        self.tick_times: list[tuple[int, int]] = []
        super().__init__(node_id, config, storage, random.Random(node_id), tick_ms=tick_ms)

    def new_state_machine(self, group: int) -> Counter:
        return Counter(self.disk, group)

    def plan_request(self, now: Now, request: object) -> Answer | Proposal | tuple[Proposal, ...]:
        match request:
            case Peek(group=group):
                if not self.is_master(group, now):
                    return Answer(response=Moved(self.master_hint(group)))
                return Answer(response=self.sms[group].total)
            case Bump(group=group, n=n):
                return Proposal(group=group, value=str(n).encode())
            case BumpAll(n=n):
                fan = _Fan(waiting=self.groups)
                value = str(n).encode()
                return tuple(Proposal(group=g, value=value, tag=fan) for g in range(self.groups))
            case _:
                return Answer(response=Failed("bad_request", "not a counter request", True))

    def tick_time_ms(self, now: Now, group: int) -> int:
        self.tick_times.append((now.mono_ms, group))
        return super().tick_time_ms(now, group)

    def tick_command(self, group: int, time_ms: int) -> bytes | None:
        return b"tick" if self.want_tick else None

    def decode_result(self, result: bytes) -> object:
        return None if not result else int(result)

    def redirect_response(self, master: NodeId | None) -> Moved:
        return Moved(master)

    def error_response(self, code: str, message: str, *, definite: bool) -> Failed:
        return Failed(code, message, definite)

    def client_reply(self, call: InnerCall, response: object) -> Reply | None:
        fan = call.tag
        if not isinstance(fan, _Fan):
            return super().client_reply(call, response)
        fan.results.append(response)
        fan.waiting -= 1
        return None if fan.waiting else Reply(call_id=call.outer, response=list(fan.results))


class ScriptedReplica(Replica):
    """Records every input; answers with ``pending`` replies and the scripted deadline and
    mastership."""

    def __init__(self, config: PaxosConfig, storage: MemoryStore) -> None:
        super().__init__("r0", config, storage, random.Random(0), lambda g: Counter(storage, g))
        self.inputs: list[Input] = []
        self.pending: list[Reply] = []
        self.deadline: int | None = None
        self.master = True
        self.known_master: NodeId | None = "r2"

    def step(self, now: Now, inp: Input) -> Effects:
        self.inputs.append(inp)
        replies, self.pending = tuple(self.pending), []
        return Effects(replies=replies)

    def next_deadline(self) -> int | None:
        return self.deadline

    def is_master(self, group: int, now: Now) -> bool:
        return self.master

    def master_of(self, group: int) -> NodeId | None:
        return self.known_master

    def proposals(self) -> list[tuple[int, Propose]]:
        """(inner call id, proposal) of every ``ClientCall`` the service made, in order."""
        out = []
        for inp in self.inputs:
            if isinstance(inp, ClientCall):
                assert isinstance(inp.request, Propose)
                out.append((inp.call_id, inp.request))
        return out


def at(ms: int) -> Now:
    return Now(mono_ms=ms, wall_ms=1_700_000_000_000 + ms)


def scripted(groups: int = 3, tick_ms: int = 300) -> tuple[CounterService, ScriptedReplica]:
    config = PaxosConfig(replicas=NAMES, groups=groups)
    disk = MemoryStore()
    svc = CounterService("r0", config, disk, tick_ms=tick_ms)
    fake = ScriptedReplica(config, disk)
    svc.replica = fake
    svc.step(at(1000), Boot())
    return svc, fake


def answer(svc: CounterService, fake: ScriptedReplica, inner: int, response: object) -> Effects:
    fake.pending.append(Reply(call_id=inner, response=response))
    return svc.step(at(svc.last_mono), Received(src="r1", msg=object()))


@pytest.mark.parametrize(
    ("replica_answer", "response"),
    [
        (ProposeOk(group=1, instance=3, slot=0, result=b"7"), 7),
        (Redirect(group=1, master="r2"), Moved("r2")),
        (Redirect(group=1, master=None), Moved(None)),
        (
            ProposeRejected(group=1, reason="value too large"),
            Failed("too_large", "value too large", True),
        ),
        (
            ProposeRejected(group=1, reason="pipeline full"),
            Failed("overloaded", "pipeline full", True),
        ),
        (ProposeUnknown(group=1, reason="lease lost"), Failed("unknown", "lease lost", False)),
    ],
)
def test_the_replicas_answer_becomes_the_services_response_to_the_client_call(
    replica_answer: object, response: object
) -> None:
    svc, fake = scripted()
    assert svc.step(at(1000), ClientCall(call_id=42, request=Bump(group=1, n=7))).replies == ()
    ((inner, proposal),) = fake.proposals()
    assert (proposal.group, proposal.value) == (1, b"7") and inner != 42
    fx = answer(svc, fake, inner, replica_answer)
    assert fx.replies == (Reply(call_id=42, response=response),)
    assert svc.calls == {}


def test_a_request_answered_at_once_proposes_nothing() -> None:
    svc, fake = scripted()
    fake.master = False
    fx = svc.step(at(1000), ClientCall(call_id=5, request=Peek(group=0)))
    assert fx.replies == (Reply(call_id=5, response=Moved("r2")),)
    fx = svc.step(at(1000), ClientCall(call_id=6, request="nonsense"))
    assert fx.replies == (
        Reply(call_id=6, response=Failed("bad_request", "not a counter request", True)),
    )
    assert fake.proposals() == [] and svc.calls == {}


def test_a_redirect_hint_never_names_this_node() -> None:
    svc, fake = scripted()
    assert svc.master_hint(0) == "r2"
    fake.known_master = "r0"
    assert svc.master_hint(0) is None


def test_an_answer_to_an_unknown_inner_call_is_an_invariant_violation() -> None:
    svc, fake = scripted()
    with pytest.raises(InvariantViolation, match="unknown call 99"):
        answer(svc, fake, 99, Redirect(group=0, master=None))


def test_an_answer_that_is_no_propose_response_is_an_invariant_violation() -> None:
    svc, fake = scripted()
    svc.step(at(1000), ClientCall(call_id=1, request=Bump(group=0, n=1)))
    ((inner, _),) = fake.proposals()
    with pytest.raises(InvariantViolation, match="unexpected replica answer"):
        answer(svc, fake, inner, "what")


def test_a_client_call_before_boot_is_an_invariant_violation() -> None:
    config = PaxosConfig(replicas=NAMES, groups=1)
    svc = CounterService("r0", config, MemoryStore())
    with pytest.raises(InvariantViolation, match="must be Boot"):
        svc.step(at(0), ClientCall(call_id=1, request=Bump(group=0, n=1)))


def test_a_tick_interval_below_one_ms_is_refused() -> None:
    with pytest.raises(ValueError, match="tick interval"):
        CounterService("r0", PaxosConfig(replicas=NAMES, groups=1), MemoryStore(), tick_ms=0)


def test_a_request_over_several_groups_makes_one_proposal_per_step() -> None:
    svc, fake = scripted(groups=3)
    svc.step(at(1000), ClientCall(call_id=8, request=BumpAll(n=2)))
    assert [p.group for _, p in fake.proposals()] == [0]
    assert len(svc.outbox) == 2
    assert svc.next_deadline() == 1000  # an immediate Wake drains the outbox
    # The replica's own due timer goes first: the outbox waits.
    fake.deadline = 1000
    svc.step(at(1000), Wake())
    assert isinstance(fake.inputs[-1], Wake) and len(svc.outbox) == 2
    fake.deadline = None
    svc.step(at(1000), Wake())
    assert [p.group for _, p in fake.proposals()] == [0, 1]
    svc.step(at(1000), Wake())
    assert [p.group for _, p in fake.proposals()] == [0, 1, 2]
    assert not svc.outbox and svc.next_deadline() == min(svc.tick_at) > 1000
    # One answer for the three proposals, when the last arrives.
    (i0, _), (i1, _), (i2, _) = fake.proposals()
    assert answer(svc, fake, i0, ProposeOk(group=0, instance=1, slot=0, result=b"2")).replies == ()
    assert answer(svc, fake, i2, Redirect(group=2, master="r1")).replies == ()
    fx = answer(svc, fake, i1, ProposeOk(group=1, instance=1, slot=0, result=b"2"))
    assert fx.replies == (Reply(call_id=8, response=[2, Moved("r1"), 2]),)


def test_the_groups_ticks_are_staggered_over_one_interval() -> None:
    svc, fake = scripted(groups=3, tick_ms=300)
    assert svc.tick_at == [1100, 1200, 1300]
    assert svc.next_deadline() == 1100
    fake.deadline = 1050
    assert svc.next_deadline() == 1050


def test_due_ticks_are_proposed_one_per_step_and_never_twice_in_flight() -> None:
    svc, fake = scripted(groups=3, tick_ms=300)
    fx = svc.step(at(1300), Wake())  # every group is due
    assert [(p.group, p.value) for _, p in fake.proposals()] == [(0, b"tick")]
    assert svc.tick_at == [1600, 1200, 1300] and svc.ticking == [True, False, False]
    assert fx.replies == ()
    svc.step(at(1300), Wake())
    svc.step(at(1300), Wake())
    assert [p.group for _, p in fake.proposals()] == [0, 1, 2]
    assert svc.tick_at == [1600, 1600, 1600]
    # Group 0 is due again while its tick is unanswered: no second tick, but re-armed.
    svc.step(at(1600), Wake())
    assert [p.group for _, p in fake.proposals()] == [0, 1, 2]
    assert svc.tick_at == [1900, 1900, 1900]
    # A tick's answer is for no client, and frees its group for the next tick.
    (inner, _) = fake.proposals()[0]
    fx = answer(svc, fake, inner, ProposeUnknown(group=0, reason="lease lost"))
    assert fx.replies == () and svc.ticking == [False, True, True]
    svc.step(at(1900), Wake())
    assert [p.group for _, p in fake.proposals()] == [0, 1, 2, 0]


def test_a_tick_time_is_read_for_every_due_group_even_without_a_proposal() -> None:
    svc, fake = scripted(groups=2, tick_ms=200)
    fake.master = False
    svc.step(at(1200), Wake())
    assert svc.tick_times == [(1200, 0), (1200, 1)]
    fake.master = True
    svc.want_tick = False
    svc.step(at(1400), Wake())
    assert svc.tick_times[2:] == [(1400, 0), (1400, 1)]
    assert fake.proposals() == [] and svc.ticking == [False, False]


def test_boot_forgets_calls_and_the_outbox_and_restarts_the_ticks() -> None:
    svc, _ = scripted(groups=2, tick_ms=200)
    svc.step(at(1000), ClientCall(call_id=1, request=BumpAll(n=1)))
    svc.step(at(1100), Wake())
    svc.step(at(1200), Wake())  # group 0's tick
    assert svc.calls and svc.ticking == [True, False]
    svc.step(at(5000), ClientCall(call_id=2, request=BumpAll(n=1)))
    assert svc.outbox
    svc.step(at(9000), Boot())
    assert svc.calls == {} and not svc.outbox and svc.ticking == [False, False]
    assert svc.tick_at == [9100, 9200]


# -- three real replicas ----------------------------------------------------------------------


@dataclass(slots=True)
class World:
    nodes: dict[str, CounterService]
    disks: dict[str, MemoryStore]
    time: int = 0
    pool: list[tuple[int, int, str, str, object]] = field(default_factory=list)
    responses: dict[int, object] = field(default_factory=dict)
    seq: int = 0

    @classmethod
    def make(cls, groups: int = 2) -> World:
        config = PaxosConfig(replicas=NAMES, groups=groups)
        disks = {n: MemoryStore() for n in NAMES}
        w = cls(
            nodes={n: CounterService(n, config, disks[n], tick_ms=100) for n in NAMES}, disks=disks
        )
        for n in NAMES:
            w.step(n, Boot())
        return w

    def step(self, name: str, inp: Input) -> None:
        fx = self.nodes[name].step(Now(mono_ms=self.time, wall_ms=self.time), inp)
        self.disks[name].apply(fx.writes)
        for s in fx.sends:
            self.seq += 1
            self.pool.append((self.time + 1, self.seq, name, s.dst, s.msg))
        for r in fx.replies:
            assert r.call_id not in self.responses, f"call {r.call_id} answered twice"
            self.responses[r.call_id] = r.response

    def run(self, ms: int) -> None:
        end = self.time + ms
        while True:
            timers = [
                (d, n) for n, node in self.nodes.items() if (d := node.next_deadline()) is not None
            ]
            msg = min(self.pool, default=None)
            timer = min(timers, default=None)
            t = min([x[0] for x in (msg, timer) if x is not None], default=None)
            if t is None or t > end:
                break
            self.time = max(self.time, t)
            if msg is not None and msg[0] <= self.time:
                self.pool.remove(msg)
                self.step(msg[3], Received(src=msg[2], msg=msg[4]))
            elif timer is not None:
                self.step(timer[1], Wake())
        self.time = end

    def master(self, group: int) -> str:
        now = Now(mono_ms=self.time, wall_ms=self.time)
        (m,) = [n for n, node in self.nodes.items() if node.is_master(group, now)]
        return m

    def request(self, name: str, call_id: int, request: object) -> object:
        self.step(name, ClientCall(call_id=call_id, request=request))
        self.run(200)
        return self.responses[call_id]


def test_replicas_serve_at_the_master_and_redirect_elsewhere() -> None:
    w = World.make(groups=2)
    w.run(3000)
    m = w.master(1)
    other = next(n for n in NAMES if n != m)
    assert w.request(m, 1, Bump(group=1, n=5)) == 5
    assert w.request(m, 2, Bump(group=1, n=4)) == 9
    assert w.request(other, 3, Bump(group=1, n=1)) == Moved(m)
    assert w.request(other, 4, Peek(group=1)) == Moved(m)
    assert w.request(m, 5, Peek(group=1)) == 9
    assert all(w.nodes[n].state_machine(1).total == 9 for n in NAMES)


def test_the_master_of_each_group_proposes_its_ticks() -> None:
    w = World.make(groups=2)
    w.run(3000)
    masters = {g: w.master(g) for g in range(2)}
    ticks = {g: w.nodes[masters[g]].state_machine(g).ticks for g in range(2)}
    w.run(1000)  # ten intervals of 100 ms
    for g in range(2):
        assert 9 <= w.nodes[masters[g]].state_machine(g).ticks - ticks[g] <= 11
        assert w.nodes[masters[g]].applied(g) > 0
