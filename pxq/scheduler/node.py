"""``Scheduler``: the client machine that balances consumer groups by load.

One scheduler is active at a time: the holder of the lock ``s/leader`` (any number may run;
the others wait for the lease). While it trusts its lease (``lease_ms - margin_ms`` after the
grant was sent, as consumers trust theirs), every ``period_ms`` it, for each consumer group:

1. lists the group's live members (``m/<group>/``: weights and load reports; the keys and
   values it shares with consumers are laid out in ``pxq.lockkeys``); a consumer whose
   membership lease expired is dead and is absent from the list;
2. takes each queue's load from its owner's last report, and computes the next assignment with
   ``rebalance`` (``pxq.scheduler.balance``): dead members' queues move, and queues move for
   load only when some member is outside the hysteresis band, a bounded number per period.
   A second hysteresis guards against measurement noise: a rebalance that only moves queues
   for load is published only if it lowers the most loaded member's load (per weight) by at
   least ``band_pct / 2`` percent; placing a dead member's queues always is. On taking over,
   it first reads the assignment in force (``a/<group>``) and starts from it, so a new
   scheduler does not undo its predecessor's work (without one: from the consistent-hash
   assignment consumers use without a scheduler);
3. publishes it as the value of ``a/<group>`` with a lease of ``assignment_lease_ms``, renewed
   every period. Consumers started with ``use_scheduler`` follow it for queues whose assigned
   owner is live, and fall back to consistent hashing otherwise, and for everything once the
   scheduler is gone long enough for the assignment's lease to expire.

Nothing it does is needed for safety: which consumer actually consumes is decided by the
queue locks; the scheduler only changes who tries to take them.

Trace events: ``sched.leader`` (holder) when it becomes the active scheduler,
``sched.publish`` (group, moved, members) for each published assignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, assert_never

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
)
from pxq.lock.timing import (
    LEASE_MS_DEFAULT,
    MARGIN_MS_DEFAULT,
    RENEW_MS_DEFAULT,
    lease_timing_problem,
)
from pxq.lockkeys import (
    HOLDER_SEP,
    LEADER_KEY,
    LOCK_REQ_ID_BASE,
    assignment_key,
    check_req_id_base,
    decode_assignment,
    decode_member,
    encode_assignment,
    member_dir,
)
from pxq.rendezvous import QueueId, hash_assign
from pxq.scheduler.balance import member_loads, rebalance

if TYPE_CHECKING:
    from pxq.config.model import ClusterConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    name: str
    groups: Mapping[str, tuple[QueueId, ...]]
    """Consumer group -> every base (topic, queue) it consumes."""
    lock_nodes: tuple[NodeId, ...]
    lock_groups: int
    lease_ms: int = LEASE_MS_DEFAULT
    margin_ms: int = MARGIN_MS_DEFAULT
    renew_ms: int = RENEW_MS_DEFAULT
    period_ms: int = 2000
    assignment_lease_ms: int = 6000
    band_pct: int = 20
    moves_max: int = 64
    lock_timeout_ms: int = 300

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/#"):
            raise ValueError(f"name: {self.name!r} must be non-empty, without '/' or '#'")
        if not self.lock_nodes or self.lock_groups < 1:
            raise ValueError("lock_nodes/lock_groups: the lock service is empty")
        timing = lease_timing_problem(self.lease_ms, self.margin_ms, self.renew_ms, 1)
        if timing is not None:
            raise ValueError(f"{timing[0]}: {timing[1]}")
        if self.period_ms < 1 or self.assignment_lease_ms <= self.period_ms:
            raise ValueError("assignment_lease_ms: must be > period_ms >= 1")
        if not 0 <= self.band_pct <= 100 or self.moves_max < 1:
            raise ValueError("band_pct: 0..100, moves_max: >= 1")


class Scheduler:
    """The scheduler client machine (a ``Node``): see the module docstring."""

    def __init__(self, settings: SchedulerSettings, rng: Rng, *, req_id_base: int = 0) -> None:
        """``req_id_base``: this incarnation's lock calls are numbered from
        ``LOCK_REQ_ID_BASE + req_id_base + 1`` (``pxq.lockkeys.REQ_ID_BASE_MAX``): a driver whose
        transport may hand a previous incarnation's late replies to this one gives each
        incarnation a range of its own."""
        self.settings = s = settings
        self.holder = f"{s.name}{HOLDER_SEP}{rng.getrandbits(64):016x}"
        self.calls = LockCalls(
            s.lock_nodes,
            s.lock_groups,
            rng,
            timeout_ms=s.lock_timeout_ms,
            deadline_ms=s.lease_ms - s.margin_ms,
            req_id_base=LOCK_REQ_ID_BASE + check_req_id_base(req_id_base),
        )
        self._leader_call: int | None = None
        self._leader_sent_ms = 0
        self._leader_until_ms: int | None = None
        self._renew_at_ms = 0
        self._period_at_ms = 0
        self._list_calls: dict[int, str] = {}
        self._read_calls: dict[int, str] = {}
        self._publish_calls: dict[int, str] = {}
        self._loaded: set[str] = set()
        """Groups whose assignment in force was read since this scheduler became leader."""
        self.published: dict[str, dict[QueueId, str]] = {}

    def is_leader(self, now_ms: int) -> bool:
        return self._leader_until_ms is not None and now_ms < self._leader_until_ms

    def next_deadline(self) -> int | None:
        # Only the timers that can act: a due renewal or period waits for its call in flight
        # (whose answer is an input anyway), or the machine would be woken in a busy loop.
        times = [] if self._leader_call is not None else [self._renew_at_ms]
        if self._leader_until_ms is not None:
            times.append(self._leader_until_ms)
            if not self._list_calls and not self._read_calls:
                times.append(self._period_at_ms)
        call = self.calls.next_deadline()
        if call is not None:
            times.append(call)
        return min(times) if times else None

    def step(self, now: Now, inp: Input) -> Effects:
        fx = EffectsBuilder()
        t = now.mono_ms
        if self._leader_until_ms is not None and t >= self._leader_until_ms:
            self._leader_until_ms = None
            fx.event("sched.follower", holder=self.holder)
        match inp:
            case Boot():
                pass
            case Received(src=src, msg=Response() as resp):
                done = self.calls.on_response(t, src, resp, fx)
                if done is not None:
                    self._answer(now, done[0], done[1], fx)
            case Received():
                pass
            case Wake():
                for handle, answer in self.calls.on_wake(t, fx):
                    self._answer(now, handle, answer, fx)
            case ClientCall(call_id=call_id):
                fx.reply(
                    call_id, LockError(code="bad_request", message="a scheduler takes no calls")
                )
            case StorageLow():
                pass  # a scheduler writes nothing
            case _:
                assert_never(inp)
        self._act(now, fx)
        return fx.build()

    def _act(self, now: Now, fx: EffectsBuilder) -> None:
        s = self.settings
        t = now.mono_ms
        if self._leader_call is None and t >= self._renew_at_ms:
            self._leader_sent_ms = t
            self._renew_at_ms = t + s.renew_ms
            self._leader_call = self.calls.call(
                t, Acquire(key=LEADER_KEY, holder=self.holder, lease_ms=s.lease_ms), fx
            )
        if not self.is_leader(t):
            return
        unread = [g for g in sorted(s.groups) if g not in self._loaded]
        if unread:
            if not self._read_calls:
                for group in unread:
                    handle = self.calls.call(t, ReadLock(key=assignment_key(group)), fx)
                    self._read_calls[handle] = group
            return
        if t >= self._period_at_ms and not self._list_calls:
            self._period_at_ms = t + s.period_ms
            for group in sorted(s.groups):
                handle = self.calls.call(t, ListLocks(prefix=member_dir(group)), fx)
                self._list_calls[handle] = group

    def _answer(self, now: Now, handle: int, answer: object, fx: EffectsBuilder) -> None:
        s = self.settings
        if handle == self._leader_call:
            self._leader_call = None
            if isinstance(answer, LockOk) and answer.holder == self.holder:
                if self._leader_until_ms is None:
                    fx.event("sched.leader", holder=self.holder)
                    self._period_at_ms = now.mono_ms
                    self._loaded.clear()
                    self.published.clear()
                self._leader_until_ms = self._leader_sent_ms + s.lease_ms - s.margin_ms
            elif isinstance(answer, LockDenied):
                self._leader_until_ms = None
            return
        group = self._read_calls.pop(handle, None)
        if group is not None:
            if isinstance(answer, LockOk):
                self._loaded.add(group)
                if answer.holder and answer.value:
                    try:
                        self.published[group] = decode_assignment(answer.value)
                    except ValueError:
                        fx.event("sched.bad_assignment", group=group)
            return
        group = self._list_calls.pop(handle, None)
        if group is not None:
            if isinstance(answer, LockList) and self.is_leader(now.mono_ms):
                self._schedule(now, group, answer, fx)
            return
        self._publish_calls.pop(handle, None)

    def _schedule(self, now: Now, group: str, listing: LockList, fx: EffectsBuilder) -> None:
        s = self.settings
        prefix = member_dir(group)
        members: dict[str, int] = {}
        loads: dict[QueueId, int] = {}
        universe = s.groups[group]
        for entry in listing.entries:
            try:
                weight, report = decode_member(entry.value)
            except ValueError:
                fx.event("sched.bad_report", key=entry.key)
                weight, report = 1, {}
            members[entry.key[len(prefix) :]] = weight
            loads.update(report)
        if not members:
            return  # nobody to assign to: consumers fall back to hashing when they come
        loads = {q: loads.get(q, 0) for q in universe}
        current = self.published.get(group)
        if current is None:
            current = hash_assign(universe, members, salt=group)
        current = {q: who for q, who in current.items() if q in loads}
        new = rebalance(
            current, loads, members, band_pct=s.band_pct, moves_max=s.moves_max, salt=group
        )
        orphans = any(current.get(q) not in members for q in universe)
        if not orphans and new != current and not _worth_it(current, new, loads, members, s):
            new = current  # too small a gain to be worth a handover
        moved = sum(1 for q, who in new.items() if current.get(q) != who)
        self.published[group] = new
        handle = self.calls.call(
            now.mono_ms,
            Acquire(
                key=assignment_key(group),
                holder=self.holder,
                lease_ms=s.assignment_lease_ms,
                value=encode_assignment(new),
            ),
            fx,
        )
        self._publish_calls[handle] = group
        fx.event("sched.publish", group=group, moved=moved, members=len(members))


def _worth_it(
    current: Mapping[QueueId, str],
    new: Mapping[QueueId, str],
    loads: Mapping[QueueId, int],
    members: Mapping[str, int],
    s: SchedulerSettings,
) -> bool:
    """Whether moving from ``current`` to ``new`` lowers the most loaded member's load per
    weight, or the spread ``sum(load^2 / weight)``, by at least ``band_pct / 2`` percent."""
    a = member_loads(current, loads, members)
    b = member_loads(new, loads, members)
    peak_a = max((x / members[m] for m, x in a.items()), default=0.0)
    peak_b = max((x / members[m] for m, x in b.items()), default=0.0)
    spread_a = sum(x * x / members[m] for m, x in a.items())
    spread_b = sum(x * x / members[m] for m, x in b.items())
    keep = (200 - s.band_pct) / 200
    return peak_b <= peak_a * keep or spread_b <= spread_a * keep


def scheduler_settings(config: ClusterConfig, name: str) -> SchedulerSettings:
    """A scheduler named ``name`` for every consumer group of ``config``: each group's queues
    (those it subscribes to, over all its topics), the lock replicas, and the ``[ownership]``
    timing (the assignment is published every ``2 * poll_ms`` with a lease of two periods
    plus the ownership lease). ``ValueError`` without a lock service."""
    locks = config.locks
    if locks is None:
        raise ValueError("the cluster has no lock service ([locks] in its configuration)")
    groups: dict[str, list[QueueId]] = {}
    for t in config.topics:
        for cg in t.consumer_groups:
            groups.setdefault(cg.name, []).extend(
                (t.name, q) for q in range(t.queues) if cg.subscribes_queue(q)
            )
    o = config.ownership
    period = max(1, 2 * o.poll_ms)
    return SchedulerSettings(
        name=name,
        groups={g: tuple(qs) for g, qs in sorted(groups.items())},
        lock_nodes=tuple(locks.nodes),
        lock_groups=locks.groups,
        lease_ms=o.lease_ms,
        margin_ms=o.margin_ms,
        renew_ms=o.renew_ms,
        period_ms=period,
        assignment_lease_ms=2 * period + o.lease_ms,
    )
