"""``LockCalls``: the lock service's client side, for use inside client machines (the
consumer's ownership coordinator, the scheduler), which own their clock and randomness.

It turns one lock request (``Acquire``, ``Renew``, ``Release``, ``ReadLock``, ``ListLocks``)
into a *call* with one final answer, and owns what lies between: routing to the believed
master of the key's group, following redirects, re-sending after timeouts and retryable
errors, and the call's deadline. It holds no clock: every entry point takes ``now_ms`` (the
machine's monotonic ms) and the ``EffectsBuilder`` its sends go to.

Every *attempt* is also recorded as trace events, so the lock calls of a client machine can
be checked like the lock workload's history (the simulator turns them into history ops in that
format, ``sim/queue_workload.py``): ``lock.attempt`` (req_id, f, key, holder, version,
lease_ms, value, through_log) when it is sent, and ``lock.outcome`` (req_id, type ``ok`` with
outcome, holder, version, expiry_ms, at_ms, value; ``fail`` with a reason when it certainly
took no effect: a redirect, a definite error; ``info`` when it may have: no answer before the
call ended, an indefinite error, a cancel). Attempts, not calls, because a re-sent request may
be applied twice (an ``Acquire`` re-sent after a timeout extends the lease once more); each
application then has its own op. Listings are not recorded.

Routing. A key's group is ``group_of_key(key, groups)`` (the group of its directory; a
``ListLocks`` goes to the group of its prefix). The believed master of a group starts at its
preferred replica ``nodes[group % len(nodes)]`` (``PaxosConfig.preferred``'s rule, as in
``pxq.routing``, whose ``Router`` keeps the belief), moves to whoever answers a request of
the group, to ``m`` on ``LockRedirect(master=m)`` and to the next replica (configuration
order) on ``LockRedirect(master=None)`` or a timeout.

Attempts. Each attempt is ``Send(dst, Request(req_id, body))`` with a fresh ``req_id``;
answers come back as ``Response(req_id, body)``, which the machine hands to
``on_response``:

* ``LockOk`` / ``LockDenied`` / ``LockList`` / a definite ``LockError`` (other than
  ``overloaded``) are final: the call ends and ``on_response`` returns ``(handle, answer)``.
  A final answer to an earlier attempt of a call still open is accepted too (the last
  ``REQ_IDS_KEPT_MAX`` attempts of a call are remembered).
* ``LockRedirect``: re-sent at once to the new belief; after ``REDIRECTS_AT_ONCE_MAX``
  redirects in a row (an election: nobody knows a master) it backs off instead.
* ``LockError(definite=False)`` (mastership lost while in flight) and ``overloaded``: backed
  off exponentially from ``backoff_base_ms`` to ``backoff_max_ms`` with jitter from ``rng``
  (``pxq.routing.backoff_ms``), then re-sent.
* no answer within ``timeout_ms``: re-sent at once to the next replica.

Any non-final answer to an attempt that is no longer the call's current one is ignored.
A call that has no final answer ``deadline_ms`` after ``call()`` ends with
``LockError(code="timeout", definite=False)`` from ``on_wake``: its outcome is unknown (an
attempt may still be applied), exactly as for a lost reply.

Re-sending is safe for every request, which is why no count limit applies within the
deadline: a holder re-acquiring a key it holds is a renewal (same version), a renewal
re-applied only extends the lease again, ``Release`` is idempotent (a freed key with the same
version answers ``LockOk``), and reads and listings change nothing. A re-sent request may be
applied twice (first attempt and retry): an ``Acquire`` whose first copy granted the key and
whose second copy renews it answers the renewal (same version), so the final answer is
right; only its ``at_ms``/``expiry_ms`` reflect the later copy.

Request ids. A composite machine (several client machines behind one driver endpoint) must
tell whose ``Response`` it got: this helper uses ``req_id_base + 1``, ``+ 2``, … (at most
``REQ_ID_SPAN`` of them), and ``owns(req_id)`` says whether an id is in that range, so give
each part a disjoint range (for example ``req_id_base=1 << 48`` beside a machine counting from
1). ``call()`` returns a *handle*, a separate counter from 1, stable across the attempts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, TypeAlias

from pxq.effects import EffectsBuilder, InvariantViolation, NodeId, Request, Response, Rng
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
    group_of_key,
)
from pxq.routing import Location, Router, backoff_ms
from pxq.timers import Timers

LockCall: TypeAlias = Acquire | Renew | Release | ReadLock | ListLocks
"""What ``LockCalls.call`` accepts."""
LockAnswer: TypeAlias = LockOk | LockDenied | LockList | LockError
"""A call's final answer (a ``LockError`` from a node is definite; the helper's own
``timeout`` is not)."""

CALLS_MAX_DEFAULT: Final = 100_000
"""Calls one helper keeps open at once (``call`` refuses one more: the caller bounds its own
work)."""
REDIRECTS_AT_ONCE_MAX: Final = 4
"""Redirects of one call followed at once in a row; the next one backs off first."""
REQ_IDS_KEPT_MAX: Final = 8
"""Attempts of one call whose late final answers are still accepted."""
REQ_ID_SPAN: Final = 1 << 47
"""Request ids one helper may use after its ``req_id_base``."""
RETRYABLE_DEFINITE: Final = frozenset({"overloaded"})
"""Definite errors worth re-sending after a backoff (any other definite error is final)."""

_SERVICE: Final = "locks"
"""The ``Router`` store name of the lock service (it has one replica set)."""


@dataclass(slots=True, eq=False)
class _Call:
    handle: int
    body: LockCall
    loc: Location
    span_ms: int
    deadline_ms: int
    """When the call ends with ``timeout`` if nothing final came (``call()`` + ``span_ms``)."""
    req_id: int | None = None
    """The current attempt (None while backing off)."""
    target: NodeId = ""
    attempt_deadline_ms: int = 0
    wake_ms: int | None = None
    """End of the backoff (when ``req_id`` is None)."""
    failures: int = 0
    """Consecutive backoffs (the backoff grows with it)."""
    redirects: int = 0
    """Redirects followed at once since the last backoff."""
    req_ids: list[int] = field(default_factory=list)
    """The latest attempts, oldest first (at most ``REQ_IDS_KEPT_MAX``)."""
    unsettled: set[int] = field(default_factory=set)
    """Attempts sent whose outcome is not recorded yet (see ``lock.attempt`` events)."""


class LockCalls:
    """Calls to the lock service from one client machine (see the module docstring)."""

    __slots__ = (
        "_calls",
        "_next_handle",
        "_next_req",
        "_nodes",
        "_reqs",
        "_rng",
        "_router",
        "_timers",
        "backoff_base_ms",
        "backoff_max_ms",
        "calls_max",
        "deadline_ms",
        "groups",
        "req_id_base",
        "timeout_ms",
    )

    def __init__(
        self,
        nodes: tuple[NodeId, ...],
        groups: int,
        rng: Rng,
        *,
        timeout_ms: int = 500,
        backoff_base_ms: int = 20,
        backoff_max_ms: int = 1000,
        deadline_ms: int = 2000,
        req_id_base: int = 0,
        calls_max: int = CALLS_MAX_DEFAULT,
    ) -> None:
        if not nodes:
            raise ValueError("nodes: the lock service needs at least one replica")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes: replica names must be distinct, got {nodes!r}")
        if groups < 1:
            raise ValueError(f"groups: must be >= 1, got {groups}")
        if timeout_ms < 1:
            raise ValueError(f"timeout_ms: must be >= 1, got {timeout_ms}")
        if not 1 <= backoff_base_ms <= backoff_max_ms:
            raise ValueError(
                f"backoff: need 1 <= backoff_base_ms ({backoff_base_ms}) "
                f"<= backoff_max_ms ({backoff_max_ms})"
            )
        if deadline_ms < 1:
            raise ValueError(f"deadline_ms: must be >= 1, got {deadline_ms}")
        if req_id_base < 0:
            raise ValueError(f"req_id_base: must be >= 0, got {req_id_base}")
        if calls_max < 1:
            raise ValueError(f"calls_max: must be >= 1, got {calls_max}")
        self._nodes = tuple(nodes)
        self.groups = groups
        self._rng = rng
        self.timeout_ms = timeout_ms
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        self.deadline_ms = deadline_ms
        self.req_id_base = req_id_base
        self.calls_max = calls_max
        self._router = Router({_SERVICE: self._nodes}, {_SERVICE: groups})
        self._calls: dict[int, _Call] = {}
        self._reqs: dict[int, int] = {}
        """req_id -> handle, for the kept attempts of open calls."""
        self._timers: Timers[int] = Timers()
        """handle -> the call's next deadline (attempt timeout, backoff end or its deadline)."""
        self._next_handle = 1
        self._next_req = 1

    # -- queries --------------------------------------------------------------------------------

    def master_of(self, group: int) -> NodeId:
        """The replica believed to be ``group``'s master (where the next attempt goes)."""
        if not 0 <= group < self.groups:
            raise ValueError(f"group {group} is not in 0..{self.groups - 1}")
        return self._router.master((_SERVICE, group))

    def owns(self, req_id: int) -> bool:
        """Whether ``req_id`` is one this helper issued (answered, open or not)."""
        return self.req_id_base < req_id < self.req_id_base + self._next_req

    def open_calls(self) -> int:
        """Calls not finished or cancelled yet."""
        return len(self._calls)

    def next_deadline(self) -> int | None:
        """The earliest monotonic ms at which ``on_wake`` has something to do."""
        return self._timers.earliest()

    # -- entry points ---------------------------------------------------------------------------

    def call(
        self, now_ms: int, body: LockCall, fx: EffectsBuilder, *, deadline_ms: int | None = None
    ) -> int:
        """Start a call (its first attempt goes out in ``fx``); returns its handle.
        ``deadline_ms`` overrides the helper's default for this call."""
        if not isinstance(body, Acquire | Renew | Release | ReadLock | ListLocks):
            raise TypeError(f"not a lock request: {type(body).__name__}")
        if len(self._calls) >= self.calls_max:
            raise InvariantViolation(f"more than calls_max = {self.calls_max} lock calls open")
        span = self.deadline_ms if deadline_ms is None else deadline_ms
        if span < 1:
            raise ValueError(f"deadline_ms: must be >= 1, got {span}")
        key = body.prefix if isinstance(body, ListLocks) else body.key
        group = group_of_key(key, self.groups)
        handle = self._next_handle
        self._next_handle += 1
        c = _Call(
            handle=handle,
            body=body,
            loc=(_SERVICE, group),
            span_ms=span,
            deadline_ms=now_ms + span,
        )
        self._calls[handle] = c
        self._send(now_ms, c, fx)
        return handle

    def cancel(self, handle: int, fx: EffectsBuilder | None = None) -> None:
        """Forget call ``handle``: later answers to it are ignored. Unknown handles are fine.
        With ``fx``, the call is recorded as ended with an unknown outcome (it may still take
        effect)."""
        c = self._calls.pop(handle, None)
        if c is not None:
            self._forget(c)
            if fx is not None:
                _settle_all(c, "cancelled", fx)

    def on_response(
        self, now_ms: int, src: NodeId, resp: Response, fx: EffectsBuilder
    ) -> tuple[int, LockAnswer] | None:
        """Handle an answer; ``(handle, final answer)`` if it ended a call, else None (not
        ours, for a call already ended or cancelled, or retried)."""
        handle = self._reqs.get(resp.req_id)
        if handle is None:
            return None
        c = self._calls[handle]
        current = resp.req_id == c.req_id
        body = resp.body
        if resp.req_id in c.unsettled:
            c.unsettled.discard(resp.req_id)
            _record_answer(resp.req_id, body, fx)
        match body:
            case LockOk() | LockDenied() | LockList():
                self._router.answered(c.loc, src)
                return self._finish(c, body, fx)
            case LockError(definite=True, code=code) if code not in RETRYABLE_DEFINITE:
                return self._finish(c, body, fx)
            case LockRedirect(master=master) if current:
                self._router.redirected(c.loc, src, master)
                if c.redirects < REDIRECTS_AT_ONCE_MAX:
                    c.redirects += 1
                    self._send(now_ms, c, fx)
                else:
                    self._back_off(now_ms, c)
            case LockError() if current:  # indefinite, or overloaded
                self._back_off(now_ms, c)
            case LockRedirect() | LockError():
                pass  # a superseded attempt's: the current one decides
            case _ if current:  # not a lock answer: a confused peer; try again later
                self._back_off(now_ms, c)
            case _:
                pass
        return None

    def on_wake(self, now_ms: int, fx: EffectsBuilder) -> list[tuple[int, LockAnswer]]:
        """Re-send timed-out attempts (to the next replica) and due backoffs; end the calls
        whose deadline passed with ``LockError("timeout", definite=False)``, returned in
        deadline order."""
        done: list[tuple[int, LockAnswer]] = []
        for handle in self._timers.pop_due(now_ms):
            c = self._calls.get(handle)
            if c is None:  # pragma: no cover - finished calls disarm their timer
                continue
            if now_ms >= c.deadline_ms:
                answer = LockError(
                    code="timeout",
                    message=f"no final answer within the call's deadline of {c.span_ms} ms",
                    definite=False,
                )
                done.append(self._finish(c, answer, fx))
            elif c.req_id is not None and now_ms >= c.attempt_deadline_ms:
                self._router.rotate(c.loc, c.target)
                self._send(now_ms, c, fx)
            elif c.req_id is None and c.wake_ms is not None and now_ms >= c.wake_ms:
                c.redirects = 0
                self._send(now_ms, c, fx)
            else:
                self._arm(c)  # spurious
        return done

    # -- internals ------------------------------------------------------------------------------

    def _send(self, now_ms: int, c: _Call, fx: EffectsBuilder) -> None:
        if self._next_req >= REQ_ID_SPAN:
            raise InvariantViolation(f"lock request ids exhausted ({REQ_ID_SPAN})")
        req_id = self.req_id_base + self._next_req
        self._next_req += 1
        c.req_id = req_id
        c.target = self._router.master(c.loc)
        c.attempt_deadline_ms = now_ms + self.timeout_ms
        c.wake_ms = None
        c.req_ids.append(req_id)
        self._reqs[req_id] = c.handle
        if len(c.req_ids) > REQ_IDS_KEPT_MAX:
            dropped = c.req_ids.pop(0)
            self._reqs.pop(dropped, None)
            if dropped in c.unsettled:
                c.unsettled.discard(dropped)
                fx.event("lock.outcome", req_id=dropped, type="info", reason="forgotten")
        if not isinstance(c.body, ListLocks):
            c.unsettled.add(req_id)
            _record_call(req_id, c.body, fx)
        fx.send(c.target, Request(req_id=req_id, body=c.body))
        self._arm(c)

    def _back_off(self, now_ms: int, c: _Call) -> None:
        c.failures += 1
        c.req_id = None
        c.wake_ms = now_ms + backoff_ms(
            self._rng, c.failures, self.backoff_base_ms, self.backoff_max_ms
        )
        self._arm(c)

    def _arm(self, c: _Call) -> None:
        due = c.attempt_deadline_ms if c.req_id is not None else c.wake_ms
        if due is None or due > c.deadline_ms:
            due = c.deadline_ms
        self._timers.set(c.handle, due)

    def _finish(self, c: _Call, answer: LockAnswer, fx: EffectsBuilder) -> tuple[int, LockAnswer]:
        del self._calls[c.handle]
        self._forget(c)
        _settle_all(c, "superseded", fx)
        return c.handle, answer

    def _forget(self, c: _Call) -> None:
        for req_id in c.req_ids:
            self._reqs.pop(req_id, None)
        c.req_ids.clear()
        c.req_id = None
        self._timers.set(c.handle, None)


def _settle_all(c: _Call, reason: str, fx: EffectsBuilder) -> None:
    """Record every attempt of ``c`` without an outcome yet as unknown (it may be applied)."""
    for req_id in sorted(c.unsettled):
        fx.event("lock.outcome", req_id=req_id, type="info", reason=reason)
    c.unsettled.clear()


def _record_call(handle: int, body: object, fx: EffectsBuilder) -> None:
    """A ``lock.attempt`` trace event: the request of attempt ``handle`` (a req_id; listings
    are not recorded), for the simulator's lock checkers (``pxq/check/lock.py``)."""
    match body:
        case Acquire(key=key, holder=holder, lease_ms=lease, expected_version=v, value=value):
            fx.event(
                "lock.attempt",
                req_id=handle,
                f="acquire",
                key=key,
                holder=holder,
                version=v,
                lease_ms=lease,
                value=value,
            )
        case Renew(key=key, holder=holder, version=v, lease_ms=lease, value=value):
            fx.event(
                "lock.attempt",
                req_id=handle,
                f="renew",
                key=key,
                holder=holder,
                version=v,
                lease_ms=lease,
                value=value,
            )
        case Release(key=key, holder=holder, version=v):
            fx.event(
                "lock.attempt",
                req_id=handle,
                f="release",
                key=key,
                holder=holder,
                version=v,
                lease_ms=0,
                value=None,
            )
        case ReadLock(key=key, through_log=through_log):
            fx.event(
                "lock.attempt",
                req_id=handle,
                f="read",
                key=key,
                holder="",
                version=None,
                lease_ms=0,
                value=None,
                through_log=through_log,
            )
        case _:
            pass


def _record_answer(handle: int, answer: object, fx: EffectsBuilder) -> None:
    """A ``lock.outcome`` trace event: what the answer to attempt ``handle`` says of it."""
    match answer:
        case LockOk() | LockDenied():
            fx.event(
                "lock.outcome",
                req_id=handle,
                type="ok",
                outcome="ok" if isinstance(answer, LockOk) else "denied",
                holder=answer.holder,
                version=answer.version,
                expiry_ms=answer.expiry_ms,
                at_ms=answer.at_ms,
                value=answer.value,
            )
        case LockError(definite=True, code=code):
            fx.event("lock.outcome", req_id=handle, type="fail", reason=code)
        case LockError(code=code):
            fx.event("lock.outcome", req_id=handle, type="info", reason=code)
        case LockRedirect():
            fx.event("lock.outcome", req_id=handle, type="fail", reason="redirect")
        case LockList():
            pass
        case _:
            fx.event("lock.outcome", req_id=handle, type="info", reason="unexpected answer")
