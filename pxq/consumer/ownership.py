"""Queue ownership through the lock service: which (group, queue) pairs a consumer process
consumes, taken and kept through leased, fenced locks, and ``ConsumerProcess``, the ``Node``
that runs a ``Consumer`` machine under that ownership.

The keys it uses in the lock service (``m/<group>/<consumer>`` for membership,
``q/<group>/<topic>/<queue>`` per base queue, ``a/<group>`` for the scheduler's assignment)
and their values are laid out in ``pxq.lockkeys``, which the scheduler shares.

**Membership.** Every ``renew_ms`` the process (re-)acquires its membership key with its
weight and the load it measured (items delivered per minute, per owned queue). Holders are
*incarnations* (``<consumer>#<random>``): a restarted process cannot renew its predecessor's
leases, it waits for them to expire, so two processes never share a token.

**Assignment.** Every ``poll_ms`` the process lists the live members of its group (and reads
the scheduler's assignment when ``use_scheduler``). The queue's owner is the scheduler's choice
when there is an assignment that names a live member for it, else the weighted rendezvous hash
of the queue over the live members (``pxq.rendezvous.hash_assign``). The process counts
itself as live from its first step, so a lone consumer starts at once. Views of membership may
differ for a moment between processes; that only delays a queue until the next poll, since the
lock decides who actually consumes.

**Ownership of a queue** (``Acquire``/``Renew``/``Release`` on its key). A grant sent at local
monotonic time ``t`` is trusted until ``t + lease_ms - margin_ms`` (the service measures the
lease from a later moment, its apply; ``margin_ms`` covers clock drift and the skew between
lock replicas), and renewed every ``renew_ms``. The queue is stopped in the ``Consumer`` machine
*before* any other input is handled once that local deadline passes, at once when a renewal is
denied, and before the lock is released when the assignment moves it elsewhere (a handover
releases the lock, so the next owner does not wait a lease: PhxQueue waits). The first thing a
stream does with a new token is a claim commit of its cursor (``Consumer``), which raises the
store's token floor, so a stale holder's later commits are refused with ``stale_token``.

**Rate limit.** The group's limit is split in proportion to the queues owned: a process owning
``k`` of the group's ``n`` queues gets the share ``(k, n)``. Ownership is exclusive, so the
shares of all processes add up to at most one.

**Leaving.** ``ClientCall(Leave())`` stops every queue, releases every lock and the membership
key, and answers ``Left`` once the releases are answered (or timed out): the queues move on at
the other consumers' next poll. A process made with ``active=False`` takes nothing until
``ClientCall(Join())`` (answered ``Joined``); after a ``Leave`` it may join again, as a new
incarnation.

Trace events (the simulator's checkers read them): ``own.start`` (group, topic, queue, token,
holder) when a queue is handed to the ``Consumer`` machine, ``own.stop`` (same, plus ``why``:
``handover``, ``denied``, ``expired``, ``leave``) when it is taken away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, assert_never

from pxq.codec import message
from pxq.consumer.machine import Consumer
from pxq.consumer.messages import HANDLER, Deliver, OwnedQueue, OwnershipRejected
from pxq.consumer.settings import ConsumerSettings
from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    NodeId,
    Now,
    Received,
    Response,
    Rng,
    StorageLow,
    Wake,
)
from pxq.lock.client import LockCalls
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    ReadLock,
    Release,
    Renew,
)
from pxq.lock.timing import (
    LEASE_MS_DEFAULT,
    MARGIN_MS_DEFAULT,
    POLL_MS_DEFAULT,
    RENEW_MS_DEFAULT,
    lease_timing_problem,
)
from pxq.lockkeys import (
    HOLDER_SEP,
    LOCK_REQ_ID_BASE,
    assignment_key,
    check_req_id_base,
    decode_assignment,
    decode_member,
    encode_member,
    member_dir,
    member_key,
    queue_key,
)
from pxq.rendezvous import QueueId, hash_assign
from pxq.topics import base_topic

if TYPE_CHECKING:
    from pxq.config.model import ClusterConfig


@message(239)
@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """Start taking queues (a process made with ``active=False`` waits for this; after a
    ``Leave`` it may join again, as a new incarnation)."""


@message(240)
@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    """Answer to ``Join``; ``holder`` is the incarnation's name in the lock service."""

    holder: str


@message(237)
@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """Stop consuming, release every lock and the membership key (a clean shutdown)."""


@message(238)
@dataclass(frozen=True, slots=True, kw_only=True)
class Left:
    """Answer to ``Leave``: ``released`` queue locks were released (or timed out)."""

    released: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipSettings:
    """Who this process is, what its group consumes, and the lease timing."""

    consumer: str
    """The consumer's name (unique among the group's live consumers; no "/" or "#")."""
    group: str
    queues: tuple[QueueId, ...]
    """Every base (topic, queue) the group consumes."""
    lock_nodes: tuple[NodeId, ...]
    lock_groups: int
    lease_ms: int = LEASE_MS_DEFAULT
    margin_ms: int = MARGIN_MS_DEFAULT
    renew_ms: int = RENEW_MS_DEFAULT
    poll_ms: int = POLL_MS_DEFAULT
    weight: int = 1
    use_scheduler: bool = False
    lock_timeout_ms: int = 300
    """One lock request attempt without an answer after this long is re-sent elsewhere."""

    def __post_init__(self) -> None:
        if not self.consumer or any(c in self.consumer for c in "/#"):
            raise ValueError(f"consumer: {self.consumer!r} must be non-empty, without '/' or '#'")
        if not self.group or "/" in self.group:
            raise ValueError(f"group: {self.group!r} must be non-empty, without '/'")
        if not self.lock_nodes:
            raise ValueError("lock_nodes: the lock service has no replicas")
        if self.lock_groups < 1:
            raise ValueError("lock_groups: must be >= 1")
        timing = lease_timing_problem(self.lease_ms, self.margin_ms, self.renew_ms, self.poll_ms)
        if timing is not None:
            raise ValueError(f"{timing[0]}: {timing[1]}")
        if self.weight < 1:
            raise ValueError("weight: must be >= 1")
        if not 0 < self.lock_timeout_ms < self.lease_ms:
            raise ValueError("lock_timeout_ms: must be > 0 and < lease_ms")
        if len(set(self.queues)) != len(self.queues):
            raise ValueError("queues: listed twice")


class _Phase(Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    OWNED = "owned"
    RELEASING = "releasing"


@dataclass(slots=True)
class _Lock:
    """One lock this process takes: a queue's or its membership key."""

    key: str
    phase: _Phase = _Phase.IDLE
    call: int | None = None
    """The lock call in flight, if any."""
    sent_ms: int = 0
    """When that call was sent (a grant is trusted from here)."""
    version: int = 0
    deadline_ms: int = 0
    """Local monotonic time until which the grant is trusted."""
    renew_at_ms: int = 0
    retry_at_ms: int = 0
    """After a denial, not asked for again before this (the holder is given time to let go)."""


@dataclass(slots=True)
class _Load:
    since_ms: int = 0
    items: dict[QueueId, int] = field(default_factory=dict)


class Ownership:
    """The lock-side half of a consumer process (see the module docstring); pure."""

    def __init__(
        self, settings: OwnershipSettings, rng: Rng, *, active: bool = True, req_id_base: int = 0
    ) -> None:
        """``req_id_base``: this incarnation's lock calls are numbered from
        ``LOCK_REQ_ID_BASE + req_id_base + 1`` (``pxq.lockkeys.REQ_ID_BASE_MAX``)."""
        self.settings = s = settings
        self._rng = rng
        self.holder = self._new_holder()
        self.calls = LockCalls(
            s.lock_nodes,
            s.lock_groups,
            rng,
            timeout_ms=s.lock_timeout_ms,
            deadline_ms=s.lease_ms - s.margin_ms,
            req_id_base=LOCK_REQ_ID_BASE + check_req_id_base(req_id_base),
        )
        self._universe = tuple(sorted(s.queues))
        self._queue_count = len(self._universe)
        self._member = _Lock(member_key(s.group, s.consumer))
        self._locks: dict[QueueId, _Lock] = {q: _Lock(queue_key(s.group, *q)) for q in s.queues}
        self._members: dict[str, int] = {}
        self._assignment: dict[QueueId, str] = {}
        self._poll_at_ms = 0
        self._poll_calls: set[int] = set()
        self._calls: dict[int, QueueId | None] = {}
        """call handle -> the queue it is about (None: the membership key)."""
        self._load = _Load()
        self._smoothed: dict[QueueId, int] = {}
        self._leaving: int | None = None if active else -1
        """The call id of a ``Leave`` being served; -1: left (or never joined)."""
        self._released = 0
        self._wanted_cache: tuple[object, set[QueueId]] | None = None
        self.changed = False
        """Set when the owned set changed; the process resets it after passing it on."""

    def _new_holder(self) -> str:
        return f"{self.settings.consumer}{HOLDER_SEP}{self._rng.getrandbits(64):016x}"

    @property
    def active(self) -> bool:
        return self._leaving is None

    def join(self, now: Now, call_id: int, fx: EffectsBuilder) -> None:
        """Start (again) taking queues, as a new incarnation once a ``Leave`` completed. A
        ``Join`` while a ``Leave`` is still releasing is refused (``bad_request``)."""
        if self._leaving is not None and self._leaving >= 0:
            fx.reply(
                call_id,
                OwnershipRejected(code="bad_request", message="a Leave is still in progress"),
            )
            return
        if self._leaving == -1:
            self._leaving = None
            self.holder = self._new_holder()
            self._poll_at_ms = now.mono_ms
            self._released = 0
        fx.reply(call_id, Joined(holder=self.holder))
        self.act(now, fx)

    # -- views -------------------------------------------------------------------------------

    def owned(self) -> tuple[OwnedQueue, ...]:
        return tuple(
            OwnedQueue(topic=q[0], queue=q[1], token=lk.version)
            for q, lk in self._locks.items()
            if lk.phase is _Phase.OWNED
        )

    def share(self) -> tuple[int, int]:
        owned = sum(1 for lk in self._locks.values() if lk.phase is _Phase.OWNED)
        return (owned, max(1, self._queue_count))

    def next_deadline(self) -> int | None:
        times = [self._poll_at_ms] if self._leaving is None and not self._poll_calls else []
        call = self.calls.next_deadline()
        if call is not None:
            times.append(call)
        for lk in (self._member, *self._locks.values()):
            if lk.phase is _Phase.IDLE and lk.retry_at_ms > 0:
                times.append(lk.retry_at_ms)
            if lk.phase is _Phase.OWNED:
                times.append(lk.deadline_ms)
                if lk.call is None:
                    times.append(lk.renew_at_ms)
        return min(times) if times else None

    # -- inputs ------------------------------------------------------------------------------

    def count_delivery(self, d: Deliver) -> None:
        """Account a delivery for the load report (retry levels count for their base queue)."""
        q = (base_topic(d.topic), d.queue)
        self._load.items[q] = self._load.items.get(q, 0) + len(d.items)

    def expire(self, now: Now, fx: EffectsBuilder) -> None:
        """Stop every queue whose grant is no longer trusted. Run before any other input."""
        for q, lk in self._locks.items():
            if lk.phase is _Phase.OWNED and now.mono_ms >= lk.deadline_ms:
                self._lose(q, lk, "expired", fx)
        if self._member.phase is _Phase.OWNED and now.mono_ms >= self._member.deadline_ms:
            self._member.phase = _Phase.IDLE

    def on_wake(self, now: Now, fx: EffectsBuilder) -> None:
        for handle, answer in self.calls.on_wake(now.mono_ms, fx):
            self._answer(now, handle, answer, fx)
        self.act(now, fx)

    def on_response(self, now: Now, src: NodeId, resp: Response, fx: EffectsBuilder) -> None:
        done = self.calls.on_response(now.mono_ms, src, resp, fx)
        if done is not None:
            self._answer(now, done[0], done[1], fx)
        self.act(now, fx)

    def leave(self, now: Now, call_id: int, fx: EffectsBuilder) -> None:
        """Start a clean shutdown; ``Left`` is replied when every release is answered."""
        if self._leaving is not None:
            if self._leaving == -1:
                fx.reply(call_id, Left(released=0))
            else:
                fx.reply(
                    call_id,
                    OwnershipRejected(code="bad_request", message="a Leave is already in progress"),
                )
            return
        self._leaving = call_id
        for q, lk in self._locks.items():
            if lk.phase is _Phase.OWNED:
                self._stop(q, lk, "leave", fx)
        self.act(now, fx)

    # -- the loop ----------------------------------------------------------------------------

    def act(self, now: Now, fx: EffectsBuilder) -> None:
        """Issue whatever calls are due: membership renewal, the poll, acquisitions,
        renewals and releases."""
        s = self.settings
        t = now.mono_ms
        if self._leaving is not None:
            self._act_leaving(t, fx)
            return
        member = self._member
        if (
            member.call is None
            and t >= member.retry_at_ms
            and (member.phase is not _Phase.OWNED or t >= member.renew_at_ms)
        ):
            if member.phase is _Phase.IDLE:
                member.phase = _Phase.ACQUIRING
            self._call(t, None, member, self._member_acquire(t), fx)
        if t >= self._poll_at_ms and not self._poll_calls:
            self._poll_at_ms = t + s.poll_ms
            self._poll_calls.add(
                self._call(t, None, None, ListLocks(prefix=member_dir(s.group)), fx)
            )
            if s.use_scheduler:
                self._poll_calls.add(
                    self._call(t, None, None, ReadLock(key=assignment_key(s.group)), fx)
                )
        wanted = self._wanted()
        for q, lk in self._locks.items():
            if lk.call is not None:
                continue
            if lk.phase is _Phase.IDLE and 0 < lk.retry_at_ms <= t:
                lk.retry_at_ms = 0  # its wait is over (whether or not it is wanted)
            if lk.phase is _Phase.OWNED:
                if q not in wanted:
                    self._stop(q, lk, "handover", fx)
                elif t >= lk.renew_at_ms:
                    self._call(t, q, lk, self._renew(lk), fx)
            elif lk.phase is _Phase.IDLE and t >= lk.retry_at_ms and q in wanted:
                lk.retry_at_ms = 0
                lk.phase = _Phase.ACQUIRING
                self._call(
                    t, q, lk, Acquire(key=lk.key, holder=self.holder, lease_ms=s.lease_ms), fx
                )
            if lk.phase is _Phase.RELEASING and lk.call is None:
                self._call(t, q, lk, self._release(lk), fx)

    def _act_leaving(self, t: int, fx: EffectsBuilder) -> None:
        pending = False
        for q, lk in (*self._locks.items(), (None, self._member)):
            if lk.phase is _Phase.OWNED and q is None:
                lk.phase = _Phase.RELEASING
                self._cancel(lk, fx)  # a renewal in flight: release instead
            if lk.phase is _Phase.RELEASING:
                pending = True
                if lk.call is None:
                    self._call(t, q, lk, self._release(lk), fx)
            elif lk.phase is _Phase.ACQUIRING:
                pending = True
        if not pending and self._leaving is not None and self._leaving >= 0:
            fx.reply(self._leaving, Left(released=self._released))
            self._leaving = -1

    def _wanted(self) -> set[QueueId]:
        s = self.settings
        members = dict(self._members)
        members[s.consumer] = s.weight
        key = (tuple(sorted(members.items())), tuple(sorted(self._assignment.items())))
        if self._wanted_cache is not None and self._wanted_cache[0] == key:
            return self._wanted_cache[1]
        wanted = self._compute_wanted(members)
        self._wanted_cache = (key, wanted)
        return wanted

    def _compute_wanted(self, members: dict[str, int]) -> set[QueueId]:
        s = self.settings
        owners: dict[QueueId, str] = {}
        rest: list[QueueId] = []
        for q in self._universe:
            chosen = self._assignment.get(q)
            if chosen is not None and chosen in members:
                owners[q] = chosen
            else:
                rest.append(q)
        owners.update(hash_assign(rest, members, salt=s.group))
        return {q for q, who in owners.items() if who == s.consumer}

    # -- calls and answers -------------------------------------------------------------------

    def _member_acquire(self, t: int) -> Acquire:
        s = self.settings
        elapsed = max(1, t - self._load.since_ms)
        loads: dict[QueueId, int] = {}
        for q, lk in self._locks.items():
            if lk.phase is _Phase.OWNED:
                fresh = self._load.items.get(q, 0) * 60_000 // elapsed
                old = self._smoothed.get(q)
                # An exponential average (weight 1/4 to the newest interval): one slow or
                # bursty interval does not make the scheduler move queues.
                loads[q] = fresh if old is None else (3 * old + fresh) // 4
        self._smoothed = loads
        self._load = _Load(since_ms=t)
        return Acquire(
            key=self._member.key,
            holder=self.holder,
            lease_ms=s.lease_ms,
            value=encode_member(s.weight, loads),
        )

    def _renew(self, lk: _Lock) -> Renew:
        return Renew(
            key=lk.key, holder=self.holder, version=lk.version, lease_ms=self.settings.lease_ms
        )

    def _release(self, lk: _Lock) -> Release:
        return Release(key=lk.key, holder=self.holder, version=lk.version)

    def _call(
        self, t: int, q: QueueId | None, lk: _Lock | None, body: object, fx: EffectsBuilder
    ) -> int:
        handle = self.calls.call(t, body, fx)  # type: ignore[arg-type]
        self._calls[handle] = q
        if lk is not None:
            lk.call = handle
            lk.sent_ms = t
        return handle

    def _answer(self, now: Now, handle: int, answer: object, fx: EffectsBuilder) -> None:
        if handle in self._poll_calls:
            self._poll_calls.discard(handle)
            self._calls.pop(handle, None)
            self._on_poll(answer)
            return
        if handle not in self._calls:
            return
        q = self._calls.pop(handle)
        lk = self._member if q is None else self._locks[q]
        if lk.call != handle:
            return
        lk.call = None
        s = self.settings
        match lk.phase:
            case _Phase.ACQUIRING | _Phase.OWNED:
                if (
                    isinstance(answer, LockOk)
                    and answer.holder == self.holder
                    and now.mono_ms >= lk.sent_ms + s.lease_ms - s.margin_ms
                ):
                    # Granted, but answered too late to be trusted (the process was paused or
                    # the answer slow): as if it expired at once. Take it again if wanted.
                    if lk.phase is _Phase.OWNED and q is not None:
                        self._lose(q, lk, "expired", fx)
                    else:
                        lk.phase = _Phase.IDLE
                elif isinstance(answer, LockOk) and answer.holder == self.holder:
                    was = lk.phase
                    lk.phase = _Phase.OWNED
                    lk.version = answer.version
                    lk.deadline_ms = lk.sent_ms + s.lease_ms - s.margin_ms
                    lk.renew_at_ms = lk.sent_ms + s.renew_ms
                    if q is not None and was is _Phase.ACQUIRING:
                        if self._leaving is not None:
                            lk.phase = _Phase.RELEASING
                        else:
                            self.changed = True
                            fx.event("own.start", **self._fields(q, lk))
                elif isinstance(answer, LockDenied) or (
                    isinstance(answer, LockError) and answer.definite
                ):
                    if lk.phase is _Phase.OWNED and q is not None:
                        self._lose(q, lk, "denied", fx)
                    else:
                        lk.phase = _Phase.IDLE
                    lk.retry_at_ms = now.mono_ms + s.poll_ms
                    if isinstance(answer, LockError):
                        fx.event("own.lock_error", key=lk.key, code=answer.code)
                elif lk.phase is _Phase.ACQUIRING:
                    # Unknown outcome: we may hold it. Acquire again (a renewal if we do).
                    lk.phase = _Phase.IDLE
                # An OWNED lock whose renewal had an unknown outcome keeps its old deadline
                # and is renewed again at once (renew_at_ms has passed).
            case _Phase.RELEASING:
                if isinstance(answer, LockOk | LockDenied) or (
                    isinstance(answer, LockError) and answer.definite
                ):
                    lk.phase = _Phase.IDLE
                    self._released += q is not None
                elif now.mono_ms >= lk.deadline_ms + s.margin_ms:
                    lk.phase = _Phase.IDLE  # the lease is over anyway
                    self._released += q is not None
            case _Phase.IDLE:
                pass
            case _:
                assert_never(lk.phase)

    def _on_poll(self, answer: object) -> None:
        s = self.settings
        if isinstance(answer, LockList):
            members: dict[str, int] = {}
            prefix = member_dir(s.group)
            for e in answer.entries:
                name = e.key[len(prefix) :]
                try:
                    weight, _ = decode_member(e.value)
                except ValueError:
                    weight = 1
                members[name] = weight
            self._members = members
        elif isinstance(answer, LockOk):
            if answer.holder and answer.value:
                try:
                    self._assignment = decode_assignment(answer.value)
                except ValueError:
                    self._assignment = {}
            else:
                self._assignment = {}

    def _stop(self, q: QueueId, lk: _Lock, why: str, fx: EffectsBuilder) -> None:
        """Hand a queue back: stop it now, release its lock next."""
        fx.event("own.stop", why=why, **self._fields(q, lk))
        lk.phase = _Phase.RELEASING
        self._cancel(lk, fx)  # a renewal in flight: its answer no longer matters
        self.changed = True

    def _lose(self, q: QueueId, lk: _Lock, why: str, fx: EffectsBuilder) -> None:
        fx.event("own.stop", why=why, **self._fields(q, lk))
        lk.phase = _Phase.IDLE
        self._cancel(lk, fx)
        self.changed = True

    def _cancel(self, lk: _Lock, fx: EffectsBuilder) -> None:
        """Forget ``lk``'s call in flight (it may still take effect: recorded as unknown)."""
        if lk.call is not None:
            self.calls.cancel(lk.call, fx)
            self._calls.pop(lk.call, None)
            lk.call = None

    def _fields(self, q: QueueId, lk: _Lock) -> dict[str, str | int]:
        return {
            "group": self.settings.group,
            "topic": q[0],
            "queue": q[1],
            "token": lk.version,
            "holder": self.holder,
        }


class ConsumerProcess:
    """A consumer process: a ``Consumer`` machine whose owned queues come from ``Ownership``.

    A ``Node``: inputs are routed by request id (lock answers to ``Ownership``, store answers
    and the handler's ``Handled`` to the ``Consumer``); before any input, queues whose grant
    is no longer trusted are stopped, and after it any change of the owned set is passed to
    the ``Consumer`` (with the rate-limit share) in the same step.
    """

    def __init__(
        self,
        consumer: ConsumerSettings,
        ownership: OwnershipSettings,
        rng: Rng,
        *,
        active: bool = True,
        req_id_base: int = 0,
    ) -> None:
        """``req_id_base``: this incarnation's range of request ids, for both halves
        (``pxq.lockkeys.REQ_ID_BASE_MAX``)."""
        if consumer.group != ownership.group:
            raise ValueError(f"group: {consumer.group!r} vs {ownership.group!r}")
        self.consumer = Consumer(consumer, rng, req_id_base=req_id_base)
        self.ownership = Ownership(ownership, rng, active=active, req_id_base=req_id_base)

    def next_deadline(self) -> int | None:
        a = self.consumer.next_deadline()
        b = self.ownership.next_deadline()
        if a is None:
            return b
        return a if b is None else min(a, b)

    def step(self, now: Now, inp: Input) -> Effects:
        fx = EffectsBuilder()
        own = self.ownership
        own.expire(now, fx)
        self._sync(now, fx)
        match inp:
            case Boot():
                self._merge(self.consumer.step(now, inp), fx)
                own.act(now, fx)
            case Received(msg=Response(req_id=req_id) as resp) if self.ownership.calls.owns(req_id):
                own.on_response(now, inp.src, resp, fx)
            case Received():
                self._merge(self.consumer.step(now, inp), fx)
            case Wake():
                self._merge(self.consumer.step(now, inp), fx)
                own.on_wake(now, fx)
            case ClientCall(call_id=call_id, request=Leave()):
                own.leave(now, call_id, fx)
            case ClientCall(call_id=call_id, request=Join()):
                own.join(now, call_id, fx)
            case ClientCall(call_id=call_id):
                fx.reply(
                    call_id,
                    OwnershipRejected(
                        code="bad_request",
                        message="this consumer takes its queues through the lock service; "
                        "the only call it accepts is Leave",
                    ),
                )
            case StorageLow():
                self._merge(self.consumer.step(now, inp), fx)
            case _:
                assert_never(inp)
        self._sync(now, fx)
        return fx.build()

    def _sync(self, now: Now, fx: EffectsBuilder) -> None:
        own = self.ownership
        if own.changed:
            own.changed = False
            self._merge(self.consumer.set_ownership(now, own.owned(), own.share()), fx)

    def _merge(self, effects: Effects, fx: EffectsBuilder) -> None:
        fx.writes.extend(effects.writes)
        fx.replies.extend(effects.replies)
        fx.trace.extend(effects.trace)
        for send in effects.sends:
            if send.dst == HANDLER and isinstance(send.msg, Deliver):
                self.ownership.count_delivery(send.msg)
            fx.sends.append(send)


def ownership_settings(
    config: ClusterConfig,
    group: str,
    consumer: str,
    topic: str | None = None,
    *,
    weight: int | None = None,
) -> OwnershipSettings:
    """The ownership settings of consumer ``consumer`` of ``group`` (on ``topic`` only, if
    given) in a cluster with a lock service: every queue the group subscribes to, the lock
    replicas, and the ``[ownership]`` timing and weight (``weight`` overrides the latter: a
    consumer of weight 2 gets about twice the queues of one of weight 1). ``ValueError`` if
    the cluster has no lock service or the group consumes nothing there."""
    locks = config.locks
    if locks is None:
        raise ValueError("the cluster has no lock service ([locks] in its configuration)")
    queues: list[QueueId] = []
    for t in config.topics:
        cg = t.group(group)
        if cg is None or (topic is not None and t.name != topic):
            continue
        queues += [(t.name, q) for q in range(t.queues) if cg.subscribes_queue(q)]
    if not queues:
        where = "no topic" if topic is None else f"topic {topic!r}"
        raise ValueError(f"{where} has a consumer group named {group!r} with queues")
    o = config.ownership
    return OwnershipSettings(
        consumer=consumer,
        group=group,
        queues=tuple(queues),
        lock_nodes=tuple(locks.nodes),
        lock_groups=locks.groups,
        lease_ms=o.lease_ms,
        margin_ms=o.margin_ms,
        renew_ms=o.renew_ms,
        poll_ms=o.poll_ms,
        weight=o.weight if weight is None else weight,
        use_scheduler=o.scheduler,
    )


__all__ = [
    "ConsumerProcess",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Ownership",
    "OwnershipSettings",
    "ownership_settings",
]
