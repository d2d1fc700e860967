"""``ReplicatedService``: the part of a service node that sits between its clients and a ``Replica``.

A service (the store, the lock service) runs its state machines in the Paxos groups of one
``pxq.paxos.replica.Replica`` and serves a client API of its own around them. This base class
owns what every such node shares, and asks its subclass only for what differs (the hooks,
below):

* the ``Node`` protocol: ``step`` dispatches ``Boot`` and ``Received`` to the replica, a
  ``ClientCall`` to the service's ``plan_request`` hook and a ``Wake`` to the timers; a
  ``StorageLow`` sets ``storage_low`` (traced ``storage.low`` / ``storage.ok``), which the
  service's hooks consult (the store refuses enqueues while it is set);
  ``next_deadline`` is the earliest of the replica's deadline and the groups' periodic
  ticks (or "now" while the outbox holds work);
* the queries ``is_master``, ``master_of``, ``applied`` and ``state_machine`` (the state
  machines the replica built through the ``new_state_machine`` hook, in ``sms``), and
  ``check_invariants`` (the replica's);
* inner calls: each proposal gets a fresh inner call id (the replica's ``ClientCall`` id),
  mapped in ``calls`` to the client call to answer (or ``TICK``), its group and a tag of the
  service's own; the replica's answers are translated with the hooks ``decode_result``,
  ``redirect_response`` and ``error_response``: ``ProposeOk`` -> the state machine's result, ``Redirect`` ->
  the service's redirect, ``ProposeRejected`` -> a definite error (``too_large`` or
  ``overloaded``), ``ProposeUnknown`` -> an error ``unknown`` that is not definite;
* periodic ticks: every ``tick_ms`` (staggered over the groups, so they do not all fall due
  at once) the master of each group may propose one command of the service's
  (``tick_command``: the store's retention tick, the lock's cleanup), at most one in flight
  per group; its answer goes to no one.

One input drives at most one step of the replica (the driver applies writes between steps,
and the replica relies on it). On ``Wake`` the replica's own timer goes first; else the
first queued proposal of the outbox; else the first group whose tick is due and has
something to propose: one proposal per step. Work that needs more replica steps (a request
that fans out over several groups; further due ticks) waits for the next ``Wake``, which
``next_deadline`` asks for at once while the outbox is not empty.

A new incarnation (``Boot``) forgets every call (the driver never answers them), the outbox
and the state machines (the replica rebuilds them), and restarts the tick schedule.

Replies: every step says ``replies_early`` (``pxq.effects``), so the driver does not hold the
service's replies until the step's writes are durable. What a reply can say is safe without
that: an error or a redirect promises nothing; a proposal's result, or a read of applied
state, is about values chosen by a majority of durable votes (every replica, this one
included, casts its vote only once its accept is durable: see ``group.py``, "Early Accepts"),
so the value survives any crash, and re-applying the log gives the same result; the step's
own writes (the chosen mark, the state machine's changes) are derived from the log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, TypeVar, assert_never

from pxq.effects import (
    NO_EFFECTS,
    Boot,
    ClientCall,
    Effects,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Reply,
    Rng,
    StorageLow,
    StorageView,
    TraceEvent,
    Wake,
)
from pxq.paxos.config import PaxosConfig
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from pxq.paxos.replica import Replica
from pxq.paxos.sm import StateMachine

TICK: Final = -1
"""Outer call id of a periodic tick's proposal (its result is not answered to anyone)."""

SM = TypeVar("SM", bound=StateMachine)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What the ``plan_request`` hook returns for a request answered at once (nothing proposed)."""

    response: object


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """A command to propose to ``group``; ``tag`` is kept with its inner call for the
    ``client_reply`` hook."""

    group: int
    value: bytes
    tag: object = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InnerCall:
    """A proposal in flight: whom to answer (``outer``: a client call id, or ``TICK``), its
    group, and the service's tag."""

    outer: int
    group: int
    tag: object = None


class ReplicatedService(ABC, Generic[SM]):
    """A service node around a ``Replica`` whose groups apply state machines of type ``SM``;
    a ``pxq.effects.Node``. Subclasses implement the hooks."""

    def __init__(
        self,
        node_id: NodeId,
        paxos: PaxosConfig,
        storage: StorageView,
        rng: Rng,
        *,
        tick_ms: int,
    ) -> None:
        if tick_ms < 1:
            raise ValueError(f"the tick interval must be >= 1 ms, got {tick_ms}")
        self.node_id = node_id
        self.storage = storage
        self.groups = paxos.groups
        self.tick_ms = tick_ms
        self.sms: dict[int, SM] = {}
        self.replica = Replica(node_id, paxos, storage, rng, self._make_sm)
        self.calls: dict[int, InnerCall] = {}
        self.outbox: deque[tuple[int, int, bytes]] = deque()
        """(inner call id, group, value) of proposals waiting for a step of their own."""
        self.next_inner = 1
        self.tick_at: list[int] = [0] * self.groups
        self.ticking: list[bool] = [False] * self.groups
        """Per group: a tick proposal is in flight (no second one until it is answered)."""
        self.last_mono = 0
        self.booted = False
        self.storage_low: StorageLow | None = None
        """The driver's last ``StorageLow`` while it says short (None: not short). The service
        decides what to refuse meanwhile (the store: enqueues; the lock service: nothing)."""
        self.refused: dict[str, int] = {}
        """Proposals the replica refused, by the error code answered (``too_large``,
        ``overloaded``), by this incarnation (for metrics)."""

    # -- hooks ----------------------------------------------------------------------------------

    @abstractmethod
    def new_state_machine(self, group: int) -> SM:
        """A fresh state machine for ``group`` (the replica loads it at every ``Boot``)."""

    @abstractmethod
    def plan_request(self, now: Now, request: object) -> Answer | Proposal | tuple[Proposal, ...]:
        """A client request's immediate answer, or the proposal(s) that serve it. Of several
        proposals the first is made in this step, the others wait in the outbox."""

    @abstractmethod
    def tick_command(self, group: int, time_ms: int) -> bytes | None:
        """The periodic command this master proposes to ``group`` at ``time_ms`` (from
        ``tick_time_ms``), or None when it would change nothing."""

    @abstractmethod
    def decode_result(self, result: bytes) -> object:
        """The client response for a state machine's result (raise ``InvariantViolation`` on
        a result the state machine cannot have produced)."""

    @abstractmethod
    def redirect_response(self, master: NodeId | None) -> object:
        """The service's redirect to ``master`` (None: unknown)."""

    @abstractmethod
    def error_response(self, code: str, message: str, *, definite: bool) -> object:
        """The service's error response."""

    def tick_time_ms(self, now: Now, group: int) -> int:
        """The time a due tick of ``group`` is stamped with; called for every due group, even
        when it proposes nothing. The wall clock by default."""
        return max(0, now.wall_ms)

    def client_reply(self, call: InnerCall, response: object) -> Reply | None:
        """The client reply for ``call``'s translated ``response`` (None: none yet)."""
        return Reply(call_id=call.outer, response=response)

    def end_step(self) -> None:
        """Called after every step, before the replica's answers are translated."""

    # -- Node protocol --------------------------------------------------------------------------

    def step(self, now: Now, inp: Input) -> Effects:
        self.last_mono = now.mono_ms
        own: list[Reply] = []
        fx: Effects | None = None
        match inp:
            case Boot():
                self._boot(now)
                fx = self.replica.step(now, inp)
            case Received():
                fx = self.replica.step(now, inp)
            case ClientCall(call_id=call_id, request=request):
                if not self.booted:
                    raise InvariantViolation("the first input of an incarnation must be Boot")
                fx = self._on_call(now, call_id, request, own)
            case Wake():
                fx = self._on_wake(now)
            case StorageLow():
                fx = self._on_storage(inp)
            case _:
                assert_never(inp)
        self.end_step()
        if fx is None:
            return Effects(replies=tuple(own), replies_early=True) if own else NO_EFFECTS
        return self._translate(fx, own)

    def next_deadline(self) -> int | None:
        if self.outbox:
            return self.last_mono  # drain at once, one proposal per step
        best = self.replica.next_deadline()
        if self.booted:
            tick = min(self.tick_at)
            if best is None or tick < best:
                best = tick
        return best

    # -- queries --------------------------------------------------------------------------------

    def is_master(self, group: int, now: Now) -> bool:
        return self.replica.is_master(group, now)

    def master_of(self, group: int) -> NodeId | None:
        return self.replica.master_of(group)

    def applied(self, group: int) -> int:
        return self.replica.applied(group)

    def state_machine(self, group: int) -> SM:
        return self.sms[group]

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` if the replica's Paxos state breaks an invariant
        (``Replica.check_invariants``); the simulator calls it after every step."""
        self.replica.check_invariants()

    def master_hint(self, group: int) -> NodeId | None:
        """Where a redirect for ``group`` points: its master as far as known, never this
        node (which is not serving it)."""
        master = self.replica.master_of(group)
        return None if master == self.node_id else master

    # -- internals ------------------------------------------------------------------------------

    def _make_sm(self, group: int) -> StateMachine:
        sm = self.new_state_machine(group)
        self.sms[group] = sm
        return sm

    def _boot(self, now: Now) -> None:
        # A new incarnation forgets every call: the driver never answers them.
        self.calls.clear()
        self.outbox.clear()
        self.sms.clear()
        tick = self.tick_ms
        # Stagger the groups' ticks over one interval.
        self.tick_at = [now.mono_ms + tick * (g + 1) // self.groups for g in range(self.groups)]
        self.ticking = [False] * self.groups
        self.storage_low = None  # the driver reports a short storage after Boot
        self.booted = True

    def _on_storage(self, low: StorageLow) -> Effects:
        self.storage_low = low if low.short else None
        return Effects(
            trace=(
                TraceEvent(
                    kind="storage.low" if low.short else "storage.ok",
                    fields=(
                        ("available_bytes", low.available_bytes),
                        ("reserve_bytes", low.reserve_bytes),
                        ("used_bytes", low.used_bytes),
                    ),
                ),
            )
        )

    def _on_wake(self, now: Now) -> Effects | None:
        t = now.mono_ms
        due = self.replica.next_deadline()
        if due is not None and due <= t:
            return self.replica.step(now, Wake())
        if self.outbox:
            inner, group, value = self.outbox.popleft()
            return self._submit(now, inner, group, value)
        for g in range(self.groups):
            if self.tick_at[g] > t:
                continue
            self.tick_at[g] = t + self.tick_ms
            time_ms = self.tick_time_ms(now, g)
            if self.ticking[g] or not self.replica.is_master(g, now):
                continue
            command = self.tick_command(g, time_ms)
            if command is None:
                continue
            self.ticking[g] = True
            inner = self._new_call(InnerCall(outer=TICK, group=g))
            # One proposal per step: other due groups wait for the next (immediate) Wake.
            return self._submit(now, inner, g, command)
        return None

    def _on_call(self, now: Now, call_id: int, request: object, own: list[Reply]) -> Effects | None:
        plan = self.plan_request(now, request)
        if isinstance(plan, Answer):
            own.append(Reply(call_id=call_id, response=plan.response))
            return None
        parts = (plan,) if isinstance(plan, Proposal) else plan
        if not parts:
            raise InvariantViolation("a request must be answered or proposed")
        inners = [self._new_call(InnerCall(outer=call_id, group=p.group, tag=p.tag)) for p in parts]
        for inner, p in zip(inners[1:], parts[1:], strict=True):
            self.outbox.append((inner, p.group, p.value))
        return self._submit(now, inners[0], parts[0].group, parts[0].value)

    def _new_call(self, call: InnerCall) -> int:
        inner = self.next_inner
        self.next_inner += 1
        self.calls[inner] = call
        return inner

    def _submit(self, now: Now, inner: int, group: int, value: bytes) -> Effects:
        return self.replica.step(
            now, ClientCall(call_id=inner, request=Propose(group=group, value=value))
        )

    def _translate(self, fx: Effects, own: list[Reply]) -> Effects:
        """The replica's effects with its replies rewritten into the service's responses."""
        if not fx.replies and not own:
            return fx
        replies = list(own)
        for r in fx.replies:
            call = self.calls.pop(r.call_id, None)
            if call is None:
                raise InvariantViolation(f"the replica answered unknown call {r.call_id}")
            if call.outer == TICK:
                _check_answer(r.response)
                self.ticking[call.group] = False
                continue
            reply = self.client_reply(call, self._outcome(r.response))
            if reply is not None:
                replies.append(reply)
        return Effects(
            writes=fx.writes,
            sends=fx.sends,
            replies=tuple(replies),
            trace=fx.trace,
            replies_early=True,
        )

    def _outcome(self, answer: object) -> object:
        """The service's response for the replica's answer to one proposal."""
        match answer:
            case ProposeOk(result=result):
                return self.decode_result(result)
            case Redirect(master=master):
                return self.redirect_response(master)
            case ProposeRejected(reason=reason):
                code = "too_large" if "large" in reason else "overloaded"
                self.refused[code] = self.refused.get(code, 0) + 1
                return self.error_response(code, reason, definite=True)
            case ProposeUnknown(reason=reason):
                return self.error_response("unknown", reason, definite=False)
            case _:
                raise InvariantViolation(f"unexpected replica answer {type(answer).__name__}")


def _check_answer(answer: object) -> None:
    if not isinstance(answer, ProposeOk | Redirect | ProposeRejected | ProposeUnknown):
        raise InvariantViolation(f"unexpected replica answer {type(answer).__name__}")
