"""The plumbing the simulated workload clients share: a network endpoint running one logical
process at a time (Jepsen semantics), with Poisson arrivals, one operation in flight.

``OneOpClient`` owns what every such client does the same way: its start and stop, the
arrivals (an arrival while an operation is in flight invokes nothing), the invoke record,
choosing the target (the group's master as far as the client knows, else the group's default
replica), sending and resending under a fresh request id (so a late reply to an earlier send
is told apart), the timeout of the operation (by a token unique to it), following a
redirect (to the master it names, else after a backoff to a random replica), and the filter
that drops replies to anything but the operation in flight. A subclass says what differs
(hooks): the next operation (``_invoke_next``, which makes an op and calls ``_invoke``), what
an answer means (``_reply``), what a timeout does (``_timed_out``), and what a redirect that
names no new master does to the known master (``_blind_redirect``).

``LockServiceClient`` adds what the clients of the lock service share (``sim/lock_workload.py``,
``sim/register_workload.py``): operations on a key (its group by ``group_of_key``), redirects
and errors of the lock service (a definite ``LockError`` is a ``fail``, any other error an
``info`` that retires the process), and the ``info`` record itself.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, TypeVar

from pxq.check.history import JSON, HistoryWriter
from pxq.effects import NodeId
from pxq.lock.messages import LockError, LockRedirect, group_of_key
from sim.world import CallMsg, ReplyMsg, World

REDIRECT_BACKOFF_US: Final = 20_000
"""How long a client waits before it tries a random replica after a redirect to no master."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSetup:
    """What every client is made with."""

    name: str
    """The client's endpoint name."""
    index: int
    clients: int
    """``index`` of ``clients``: the client's first process id, and the stride of the next."""
    world: World
    history: HistoryWriter
    rng: random.Random
    """The client's own stream (arrivals and its choices)."""
    replicas: list[NodeId]
    groups: int
    rate_per_s: float
    """The client's arrival rate (Poisson)."""
    timeout_ms: int
    """An operation without an answer by then is recorded ``info``."""


@dataclass(slots=True, kw_only=True)
class ClientOp:
    """The operation in flight."""

    process: int
    f: str
    group: int
    request: object
    target: NodeId
    req_id: int
    """The request id of the latest send (a reply must carry it)."""
    token: int
    """The operation's timeout token (unique to it: the request id drawn at its invoke, which
    no send carries)."""


OpT = TypeVar("OpT", bound=ClientOp)


class OneOpClient(ABC, Generic[OpT]):
    """One client endpoint with one operation in flight at a time (see the module docstring)."""

    COUNTS: ClassVar[tuple[str, ...]]
    """What the client counts (``counts``): ``invoke`` and ``redirect`` among them."""

    def __init__(self, setup: ClientSetup) -> None:
        self.name = setup.name
        self.world = setup.world
        self.history = setup.history
        self.rng = setup.rng
        self.replicas = setup.replicas
        self.groups = setup.groups
        self.mean_gap_us = 1_000_000 / setup.rate_per_s
        self.timeout_us = setup.timeout_ms * 1000
        self.process = setup.index
        self.process_stride = setup.clients
        self.req_seq = 0
        self.op: OpT | None = None
        self.masters: dict[int, NodeId] = {}
        self.running = False
        self.counts = dict.fromkeys(self.COUNTS, 0)
        setup.world.add_endpoint(setup.name, self.receive)

    def start(self) -> None:
        self.running = True
        self._schedule_next()

    def stop(self) -> None:
        """Invoke nothing new; an operation in flight still completes or times out."""
        self.running = False

    def _schedule_next(self) -> None:
        gap = int(self.rng.expovariate(1.0) * self.mean_gap_us) + 1
        self.world.call_later(gap, self._arrival)

    def _arrival(self) -> None:
        if not self.running:
            return
        if self.op is None:
            self._invoke_next()
        self._schedule_next()

    def _now_ms(self) -> int:
        return self.world.now_us // 1000

    def _retire(self) -> None:
        """The process's outcome is unknown: the client goes on as a new process (Jepsen)."""
        self.process += self.process_stride

    # -- the operation in flight -------------------------------------------------------------

    @abstractmethod
    def _invoke_next(self) -> None:
        """Choose the next operation, make it (``_fresh`` gives its target and request id)
        and ``_invoke`` it."""

    def _fresh(self, group: int) -> tuple[NodeId, int]:
        """The target and the request id (also its token) of a new operation on ``group``."""
        target = self.masters.get(group) or self.replicas[group % len(self.replicas)]
        self.req_seq += 1
        return target, self.req_seq

    def _invoke(self, op: OpT, value: JSON, extra: dict[str, JSON]) -> None:
        """Record the invocation of ``op`` (``value`` and ``extra`` as the history has them),
        send it and start its timeout."""
        self.op = op
        self.counts["invoke"] += 1
        self.history.invoke(self._now_ms(), op.process, op.f, value, **extra)
        self._send(op)
        token = op.token
        self.world.call_later(self.timeout_us, lambda: self._timeout(token))

    def _send(self, op: OpT) -> None:
        self.req_seq += 1
        op.req_id = self.req_seq
        self.world.network.send(self.name, op.target, CallMsg(op.req_id, op.request))

    def _resend(self, op: OpT) -> None:
        if self.op is op:
            self._send(op)

    def _timeout(self, token: int) -> None:
        op = self.op
        if op is None or op.token != token:
            return
        self._timed_out(op)

    @abstractmethod
    def _timed_out(self, op: OpT) -> None:
        """``op`` got no answer in time: complete it (its outcome is unknown)."""

    def receive(self, src: str, payload: object) -> None:
        op = self.op
        if not isinstance(payload, ReplyMsg) or op is None or payload.req_id != op.req_id:
            return  # a late reply to an operation already completed
        self._reply(src, op, payload.response)

    @abstractmethod
    def _reply(self, src: str, op: OpT, response: object) -> None:
        """``src`` answered the latest send of ``op`` with ``response``."""

    def _redirected(self, op: OpT, master: NodeId | None) -> None:
        """``op``'s target is not the master: send it to the ``master`` it names, or, if it
        names none (or itself), after a backoff to a random replica."""
        self.counts["redirect"] += 1
        if master is not None and master != op.target:
            self.masters[op.group] = master
            op.target = master
            self._send(op)
        else:
            self._blind_redirect(op)
            op.target = self.rng.choice(self.replicas)
            self.world.call_later(REDIRECT_BACKOFF_US, lambda: self._resend(op))

    def _blind_redirect(self, op: OpT) -> None:
        """A redirect named no new master: here the client keeps the master it knows for the
        group (the next operation goes there again)."""


@dataclass(slots=True, kw_only=True)
class KeyOp(ClientOp):
    """An operation of the lock service on one key (a directory: the key of a listing)."""

    key: str
    value: JSON
    """The operation's value as invoked."""
    sent_us: int
    """When it was invoked (simulated)."""


class LockServiceClient(OneOpClient[KeyOp]):
    """A client of the lock service (see the module docstring)."""

    def _invoke_key(
        self, f: str, key: str, request: object, value: JSON, extra: dict[str, JSON]
    ) -> None:
        """Invoke ``request`` on ``key`` (``value`` and ``extra`` as the history has them)."""
        group = group_of_key(key, self.groups)
        target, req_id = self._fresh(group)
        op = KeyOp(
            process=self.process,
            f=f,
            group=group,
            request=request,
            target=target,
            req_id=req_id,
            token=req_id,
            key=key,
            value=value,
            sent_us=self.world.now_us,
        )
        self._invoke(op, value, extra)

    def _reply(self, src: str, op: KeyOp, response: object) -> None:
        match response:
            case LockRedirect(master=master):
                self._redirected(op, master)
            case LockError(code=code, definite=True):
                self.counts["fail"] += 1
                self.history.fail(
                    self._now_ms(), op.process, op.f, self._fail_value(op), key=op.key, reason=code
                )
                self._done()
            case LockError(code=code):
                self._unknown(op, code)
            case _:
                if not self._complete(src, op, response):
                    self._unknown(op, f"unexpected reply {type(response).__name__}")

    @abstractmethod
    def _complete(self, src: str, op: KeyOp, response: object) -> bool:
        """Complete ``op`` with ``response`` if it is an answer to it; whether it was."""

    def _fail_value(self, op: KeyOp) -> JSON:
        """The value a definite failure of ``op`` records: here none."""
        return None

    def _blind_redirect(self, op: KeyOp) -> None:
        """A redirect named no new master: forget the one the client knew for the group."""
        self.masters.pop(op.group, None)

    def _unknown(self, op: KeyOp, reason: str) -> None:
        """``op``'s outcome is unknown (``info``): the process retires."""
        self.counts["info"] += 1
        self.history.info(self._now_ms(), op.process, op.f, None, key=op.key, reason=reason)
        self._retire()
        self._unsure(op)
        self._done()

    @abstractmethod
    def _unsure(self, op: KeyOp) -> None:
        """What the client stops relying on after ``op`` ended with an unknown outcome."""

    def _done(self) -> None:
        """The operation in flight ended (recorded and counted)."""
        self.op = None
