"""The driver contract: what every protocol node consumes and produces.

Every protocol component of pxq (Paxos replica, store node, lock node, scheduler,
consumer, producer) is a pure state machine with one entry point::

    step(now: Now, inp: Input) -> Effects
    next_deadline() -> int | None          # monotonic ms, or None for "no timer"

A *driver* (``sim`` for the deterministic simulator, ``net`` for real sockets and LMDB)
owns the clock, the network, the disk and randomness, and feeds the node. Both drivers
implement the obligations documented on each field below in the same way; the contract
is written up for users in ``docs/protocol.md``.

This module imports nothing but the standard library's typing and dataclass helpers: it is
the floor of the pure core. Its frozen dataclasses get a faster generated ``__init__``
(``fast_init``: same parameters and objects), as they are built several times per step; so
do the messages built once per item on the client's enqueue path (``pxq.producer.messages``,
``pxq.store.messages.Item``, ``net.client.types.Receipt``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

NodeId: TypeAlias = str
"""A node's name in the cluster configuration (for example ``"s0"``). Stable across restarts."""

TraceValue: TypeAlias = int | str | bytes | bool | None

_C = TypeVar("_C", bound=type)

BlankStorage = Literal["new", "probe", "replace"]
"""What a node's blank storage means at ``Boot`` (see ``Boot.if_blank``)."""


def fast_init(cls: _C) -> _C:
    """Replace the ``__init__`` that ``dataclass`` generated for a frozen, slotted, keyword-only
    class with one that sets each slot through its descriptor: the same parameters, defaults
    and resulting object, in about two thirds of the time (the generated one goes through
    ``object.__setattr__`` per field to get around the frozen ``__setattr__``). These classes
    are built once or more per step, in every driver."""
    namespace: dict[str, Any] = {}
    params: list[str] = []
    body: list[str] = []
    for i, f in enumerate(fields(cls)):
        slot = vars(cls).get(f.name)
        if not (f.kw_only and f.init and isinstance(slot, types.MemberDescriptorType)):
            raise TypeError(f"{cls.__qualname__}.{f.name}: not a keyword-only slot")
        if f.default_factory is not MISSING:
            raise TypeError(f"{cls.__qualname__}.{f.name}: default_factory is not supported")
        namespace[f"set{i}"] = slot.__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
        body.append(f"    set{i}(self, {f.name})")
    if not params or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__qualname__}: needs fields and no __post_init__")
    exec(f"def __init__(self, *, {', '.join(params)}):\n" + "\n".join(body), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010 (mypy: assigning to a method)
    return cls


# --------------------------------------------------------------------------------------------
# Time


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Now:
    """The node's view of time at the moment of a step, in integer milliseconds.

    ``mono_ms`` is the node's monotonic clock: it never goes backwards for one incarnation of
    a node, has an arbitrary origin, and may drift against other nodes' clocks within the
    configured bound. Timeouts, leases and batching use it and nothing else.

    ``wall_ms`` is the node's wall clock (Unix epoch ms). It may jump and disagree between
    nodes; it is only stamped into records (for example an item's enqueue time, used by
    replay-by-time) and never used to decide safety.
    """

    mono_ms: int
    wall_ms: int


# --------------------------------------------------------------------------------------------
# Inputs: the closed union a node's ``step`` accepts.


@dataclass(frozen=True, slots=True, kw_only=True)
class Boot:
    """The first input of every incarnation of a node.

    When the driver delivers it, the node's storage view holds exactly what the disk made
    durable before the previous incarnation ended (nothing more: unsynced writes of a node
    that lost power are gone). The node rebuilds its state from the view and may emit
    effects (for example, re-announce itself).

    ``damaged`` lists the records (table, key) that failed their checksum in the previous
    incarnation (``StorageCorruption``, which stopped it): the node must not read them and
    repairs what they held (a Paxos replica from its peers). ``if_blank`` says what blank
    storage means, for a node whose storage holds nothing at all: ``"new"``, a new member
    of a new cluster (nothing to forget); ``"probe"``, unknown (a replica asks its peers
    and refuses to run, ``ReplacementRequired``, if one recorded it as a member); ``"replace"``, the
    node lost its storage and is its own replacement (a replica takes part in no quorum
    until it has re-learned from its peers what it might have promised or accepted).
    Storage that holds something ignores it.
    """

    damaged: tuple[tuple[str, bytes], ...] = ()
    if_blank: BlankStorage = "new"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A message from a peer node arrived.

    Drivers deliver each message at most once per transmission but the network may drop,
    duplicate, delay and reorder messages; nodes must tolerate all four.
    """

    src: NodeId
    msg: object


@dataclass(frozen=True, slots=True, kw_only=True)
class Wake:
    """The node's deadline (the last value of ``next_deadline()``) has been reached.

    A driver may deliver a ``Wake`` late (a paused process, a busy loop) or spuriously; the
    node must check its own deadlines against ``now``.
    """


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCall:
    """A request from an external client (not a peer node).

    ``call_id`` is chosen by the driver and is unique per incarnation of the node; the node
    answers it with at most one ``Reply`` carrying the same id, possibly from a later step.
    A node that crashes never answers its open calls: clients see a timeout, which they must
    treat as an unknown outcome.
    """

    call_id: int
    request: object


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StorageLow:
    """The space left on the node's storage crossed its reserve: below it (``short``), or
    back above the reserve plus the driver's hysteresis margin (not ``short``).

    The driver measures the space (the room left before the disk's, or the storage engine's,
    limit) and delivers this input on a *crossing* only, never for every measurement. A new
    incarnation starts as not short: a driver whose storage is below the reserve at boot
    delivers ``StorageLow(short=True)`` right after ``Boot``. The figures (bytes, at the
    measurement that crossed) and ``limit`` (what bounds the space, in words: the map limit,
    the filesystem, the simulated disk) are for the messages a node writes. What a node does
    with it is its own policy: a store replica refuses enqueues while short (the reserve is
    for replication, cursor commits and retention, which free space); other nodes ignore it.
    A write that finds the storage *totally* full still crashes the node (``Effects``)."""

    short: bool
    available_bytes: int
    reserve_bytes: int
    used_bytes: int
    limit: str


Input: TypeAlias = Boot | Received | Wake | ClientCall | StorageLow


# --------------------------------------------------------------------------------------------
# Writes: the persistent state changes of one step.


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """Store ``value`` under ``key`` in ``table`` (replacing any previous value)."""

    table: str
    key: bytes
    value: bytes


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Remove ``key`` from ``table``; a missing key is not an error."""

    table: str
    key: bytes


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRange:
    """Remove every key ``k`` of ``table`` with ``start <= k < end`` (bytewise order)."""

    table: str
    start: bytes
    end: bytes


Write: TypeAlias = Put | Delete | DeleteRange


# --------------------------------------------------------------------------------------------
# Outputs


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """A message for peer ``dst``. Released only once the step's writes are durable, unless
    ``early``: then the driver releases it at once (the node vouches that the message does
    not depend on anything not yet durable, see ``Effects``).

    ``dst`` may be the node itself: the driver then hands ``msg`` back to the node as
    ``Received(src=itself)`` once released, reliably (never through the network; a crash
    before the release drops it like any held output)."""

    dst: NodeId
    msg: object
    early: bool = False


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The answer to ``ClientCall(call_id)``. Released only once the step's writes are durable
    (unless its step says ``replies_early``)."""

    call_id: int
    response: object


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """Something worth recording (a master change, a chosen value, a detected anomaly).

    Drivers stamp it with the node and time and feed it to the trace digest (in the
    simulator) or the log (in production). It carries no obligation and never waits.
    """

    kind: str
    fields: tuple[tuple[str, TraceValue], ...] = ()


ALARM = "alarm"
"""The kind of a ``TraceEvent`` that reports evidence of something wrong outside this node's
own state: a peer that claims a different log checksum, a message no honest replica sends, a
chosen value this replica cannot apply. Its ``what`` field names the alarm. A node never
crashes on such evidence (a crash would not make it go away: the same input comes back after
a restart); it reports it and refuses what it cannot use. The simulator counts every alarm
as a violation (its replicas are all honest); the production driver logs it at error level
and counts it (``net.node.runner``)."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Effects:
    """Everything one ``step`` asks of its driver, in order of obligation.

    1. ``writes``: applied to storage atomically and in order, as one batch, after ``step``
       returns. From the next step on the storage view reflects them (read-your-writes across
       steps), but they are durable only once the driver has synced them. Within one step the
       view does not show that step's own writes: a node keeps what it just wrote in memory.
    2. ``sends`` and 3. ``replies``: released only after every write emitted by this step
       *and by every earlier step of the same incarnation* is durable (fsync returned). A
       driver may group-commit the writes of several consecutive steps in one sync, provided
       it releases nothing from those steps before that sync. Output of one step is released
       in the order listed; outputs of different steps are released in step order.
    4. ``trace``: recorded at once, never delayed, never a reason to wait.

    ``Send.early``: a send the node may release at once, ahead of this and earlier steps'
    held output (a Paxos master's ``Accept``: the other replicas' votes are durable before
    they answer, and the master counts its own vote only from a send to itself, which waits
    for its write as usual).

    ``replies_early``: the node states that this step's replies depend on nothing that is not
    durable yet (for example, answers about values already chosen on a majority that includes
    another replica's durable vote: applying them again after a crash gives the same answer).
    The driver then releases the replies at once, ahead of this and earlier steps' held
    output; the sends still wait as in 2.

    If a write or sync fails (an fsync error, a full disk, a checksum failure on read), the
    driver crashes the node: it never retries an fsync and never releases the step's output.
    """

    writes: tuple[Write, ...] = ()
    sends: tuple[Send, ...] = ()
    replies: tuple[Reply, ...] = ()
    trace: tuple[TraceEvent, ...] = ()
    replies_early: bool = False

    def split_early(
        self,
    ) -> tuple[tuple[Send, ...], tuple[Reply, ...], tuple[Send, ...], tuple[Reply, ...]]:
        """(sends, replies) a driver releases at once (``Send.early``, ``replies_early``), then
        (sends, replies) that wait for durability: the one rule both drivers apply."""
        sends, replies = self.sends, self.replies
        early_replies: tuple[Reply, ...] = ()
        if self.replies_early:
            early_replies, replies = replies, ()
        if not any(s.early for s in sends):
            return (), early_replies, sends, replies
        return (
            tuple(s for s in sends if s.early),
            early_replies,
            tuple(s for s in sends if not s.early),
            replies,
        )


NO_EFFECTS = Effects()


@dataclass(slots=True, init=False)
class EffectsBuilder:
    """A mutable accumulator that nodes use while handling one input; ``build()`` freezes it."""

    writes: list[Write]
    sends: list[Send]
    replies: list[Reply]
    trace: list[TraceEvent]

    def __init__(self) -> None:
        # List literals rather than the generated default factories: one builder per step.
        self.writes = []
        self.sends = []
        self.replies = []
        self.trace = []

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.writes.append(Put(table=table, key=key, value=value))

    def delete(self, table: str, key: bytes) -> None:
        self.writes.append(Delete(table=table, key=key))

    def delete_range(self, table: str, start: bytes, end: bytes) -> None:
        self.writes.append(DeleteRange(table=table, start=start, end=end))

    def send(self, dst: NodeId, msg: object, *, early: bool = False) -> None:
        self.sends.append(Send(dst=dst, msg=msg, early=early))

    def reply(self, call_id: int, response: object) -> None:
        self.replies.append(Reply(call_id=call_id, response=response))

    def event(self, kind: str, **fields: TraceValue) -> None:
        self.trace.append(TraceEvent(kind=kind, fields=tuple(sorted(fields.items()))))

    def alarm(self, what: str, **fields: TraceValue) -> None:
        """Report evidence of a fault outside this node (see ``ALARM``)."""
        self.event(ALARM, what=what, **fields)

    def build(self) -> Effects:
        if not (self.writes or self.sends or self.replies or self.trace):
            return NO_EFFECTS
        return Effects(
            writes=tuple(self.writes),
            sends=tuple(self.sends),
            replies=tuple(self.replies),
            trace=tuple(self.trace),
        )


# --------------------------------------------------------------------------------------------
# Client machines


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Sent by a *client* machine (producer, consumer): ``Send(dst=node, msg=Request(...))``.

    The driver delivers ``body`` to node ``dst`` as a ``ClientCall``; the node's ``Reply`` comes
    back to the client machine as ``Received(src=dst, msg=Response(req_id, body))``. A lost
    request or reply is never reported: the client machine keeps its own deadline.
    """

    req_id: int
    body: object


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The answer to ``Request(req_id)``, as a client machine receives it."""

    req_id: int
    body: object


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Undelivered:
    """``Request(req_id)`` definitely did not reach node ``src``, received as
    ``Received(src, Undelivered(req_id, reason))``: the driver could not set up a connection to
    it, or the node refused the client before reading any of its calls. The node did not see
    the request (unlike a timeout or a lost connection, which say nothing). ``reason`` names
    the address and why. Only a driver with connections produces it, and only for a client
    machine that asks for it (the producer); the simulator's network loses requests
    silently and never does."""

    req_id: int
    reason: str


# --------------------------------------------------------------------------------------------
# Storage view and node protocols


class StorageCorruption(Exception):
    """A stored record failed its checksum on read. The driver stops the node's incarnation
    (its in-memory state may be half-way through the step); when the exception names the
    record (``table``, ``key``), the driver starts a new incarnation with the record in
    ``Boot.damaged`` so that the node repairs it instead of reading it again."""

    def __init__(self, message: str, *, table: str | None = None, key: bytes | None = None):
        super().__init__(message)
        self.table = table
        self.key = key


class ReplacementRequired(Exception):
    """A node booted on blank storage (``Boot(if_blank="probe")``) found that a peer recorded
    it as a member: it lost its data and must not run as a new one (it would vote with amnesia).
    The driver stops it and tells the operator to start it as a replacement."""


class InvariantViolation(Exception):
    """A node detected that a protocol invariant is broken (for example two replicas
    disagree on a chosen value). This is never handled: it crashes the node loudly and the
    simulator reports it as a safety failure."""


@runtime_checkable
class StorageView(Protocol):
    """Read-only access to a node's own storage, injected at construction.

    Reads see every write of the node's earlier steps (read-your-writes across steps),
    whether or not it is durable yet; they do not see the writes the current step is about to
    return. Keys are bytes compared bytewise; integers in keys are big-endian so that
    bytewise order is numeric order. A read that finds a corrupt record raises
    ``StorageCorruption``.
    """

    def get(self, table: str, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        ...

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` (``end=None``: no upper bound) in key order
        (descending with ``reverse=True``)."""
        ...


class Rng(Protocol):
    """The randomness a node is handed (a seeded ``random.Random`` satisfies it). The pure core
    never imports ``random``: the driver derives the stream from the run's seed."""

    def random(self) -> float: ...

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int: ...

    def randint(self, a: int, b: int) -> int: ...

    def getrandbits(self, k: int, /) -> int: ...


class Node(Protocol):
    """A protocol state machine. Implementations are deterministic functions of their
    construction arguments (configuration, storage view, a seeded ``Rng``) and the
    sequence of ``(now, input)`` pairs they were stepped with."""

    def step(self, now: Now, inp: Input) -> Effects:
        """Handle one input and say what the driver must do."""
        ...

    def next_deadline(self) -> int | None:
        """The monotonic ms at which the node wants a ``Wake``, or None. Re-read after every
        step; a driver keeps exactly one timer per node armed at this value."""
        ...


NodeFactory = Callable[[NodeId, StorageView, Rng], Node]
"""Builds one incarnation of a node from its durable storage view and its random stream (a
seeded ``random.Random`` the driver derives from the run's seed). Both drivers restart a node
by calling its factory again on what survived on disk; ``pxq.nodes`` builds the factories of
the cluster file's nodes."""


def u64(n: int) -> bytes:
    """Encode a non-negative integer as an 8-byte big-endian key part."""
    return n.to_bytes(8, "big")


def from_u64(b: bytes) -> int:
    """Decode an 8-byte big-endian key part."""
    if len(b) != 8:
        raise ValueError(f"expected 8 bytes, got {len(b)}")
    return int.from_bytes(b, "big")
