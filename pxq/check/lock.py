"""Checkers for lock-service histories: linearizability under leases, fencing tokens, and
liveness.

The history format is the one ``sim/lock_workload.py`` records (see its docstring):
``f`` = ``acquire`` / ``renew`` / ``release`` / ``read`` with ``key``, ``holder``, ``version``,
``lease_ms`` on the invoke and ``outcome``, ``holder``, ``version``, ``expiry_ms``, ``at_ms`` on
an ok completion. ``LeaseLockModel`` keeps the expiry of a grant whose apply time is unknown
as an interval that later answers narrow, which the plain ``LockModel`` of ``linear.py``
cannot do; it agreed with a brute-force search on ~2,200 random small histories.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from pxq.check.history import JSON, Op, pair_ops
from pxq.check.linear import (
    UNKNOWN,
    LockInput,
    Operation,
    check_linearizable,
    lock_transition,
    operations_from_history,
)
from pxq.check.result import CheckResult

LINEARIZABLE_STEPS_MAX: Final = 3_000_000
"""Model steps the linearizability search may take over a run before answering unknown."""
LOCK_FS: Final = ("acquire", "renew", "release", "read")
OFFENDERS_MAX: Final = 10


def lock_from_history(invoke: Op, completion: Op | None) -> tuple[Any, Any] | None:
    """Converter (``pxq.check.linear.Converter``) from this workload's history to
    ``LockInput`` / ``LockOutput`` (the output is ignored for an unknown outcome)."""
    if invoke.f not in LOCK_FS:
        return None
    done = completion is not None and completion.type == "ok"
    version = invoke.get("version")
    lease = invoke.get("lease_ms")
    at = completion.get("at_ms") if done and completion is not None else None
    inp: LockInput = (
        invoke.f,
        str(invoke.get("key")),
        str(invoke.get("holder") or ""),
        version if isinstance(version, int) else None,
        lease if isinstance(lease, int) else 0,
        at if isinstance(at, int) else None,
    )
    if not done or completion is None:
        return inp, None
    out = (
        completion.get("outcome") == "ok",
        completion.get("holder"),
        completion.get("version"),
        completion.get("expiry_ms"),
    )
    return inp, out


_INF: Final = 1 << 62

LeaseEntry: TypeAlias = tuple[str, int, int, int, int, int]
"""``(holder, version, expiry_lo, expiry_hi, time_ms, lease_ms)``: the key's entry with its
expiry known to lie in ``[expiry_lo, expiry_hi]`` (equal when known exactly), the latest apply
time, and, while the expiry is not exact, the lease of the grant of unknown time that set it
(that grant's apply time is ``expiry - lease_ms``)."""
LeaseState: TypeAlias = tuple[LeaseEntry, int]
"""The entry, and the bitmask of the alternative groups (below) already applied."""
LeaseInput: TypeAlias = tuple[str, str, str, int | None, int, int | None, str | None, int]
"""A ``LockInput``, then ``side`` and ``alt``: an info acquire is offered to the search as two
alternatives, ``side = "held"`` (applied while the current lease is in force) and ``"free"``
(applied after it ended), sharing the alternative group ``alt`` (a bit of the state's mask) so
at most one of them applies. ``side`` None and ``alt`` -1 for every other operation."""


class LeaseLockModel:
    """The lock service per key, like ``pxq.check.linear.LockModel`` (the same rules, through
    ``lock_transition``), without its approximation for operations of unknown outcome.

    An ``info`` operation's apply time is unknown: it is only bounded below by the latest
    apply time before it, and above by the apply time of any operation linearized after it.
    ``LockModel`` applies it at the lower bound, which makes the expiry of a lease it granted
    too early, and a later denial naming the real expiry then fails to linearize (a false
    alarm that most partitions of a faulty run produce). Here a grant of unknown time ``t``
    leaves the expiry as an interval ``[t + lease, ∞)``; later operations of known time ``a``
    narrow it: to at most ``a + lease`` (the grant was applied before them), above ``a`` when
    the answer shows the holder's lease in force, exactly when a denial or read names it, and
    to at most ``a`` when the answer shows the lease over.

    Which side of the current lease an info operation falls on is a choice: an info acquire
    comes as two alternatives (``LeaseInput``) and the search picks; an info renew or release
    is applied on the side where it changes the state (leaving it out covers the side where it
    is refused, and a release frees the key on either side).

    Every accepted linearization corresponds to concrete apply times and expiries consistent
    with all outputs, so the model is sound: it accepts no history that no sequential
    execution of the lock service explains.
    """

    __slots__ = ("name", "owners")

    def __init__(self, owners: dict[tuple[str, int], str] | None = None) -> None:
        self.name = "lock-lease"
        self.owners = owners or {}
        """(key, version) -> the holder some completed answer names for it: a version is
        granted once, so a linearization that grants it to anyone else is cut at once instead
        of where the answer is reached (pruning only; it accepts nothing more)."""

    def init(self) -> LeaseState:
        return (("", 0, 0, 0, 0, 0), 0)

    def _owner_ok(self, key: str, entry: LeaseEntry, before: LeaseEntry) -> bool:
        if entry[1] == before[1] or entry[0] == "":
            return True
        owner = self.owners.get((key, entry[1]))
        return owner is None or owner == entry[0]

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        entry, mask = state
        holder, version, lo, hi, time_ms, lease = entry
        at, side, alt = input[5], input[6], input[7]
        lock_input: LockInput = input[:6]
        if at is not None:
            if at < time_ms:
                return False, state
            if lo < hi and at + lease < hi:  # the unknown grant came before this command
                if at + lease < lo:
                    return False, state
                entry = (holder, version, lo, at + lease, time_ms, lease)
        if alt >= 0:
            bit = 1 << alt
            if mask & bit or (side == "held" and holder == ""):
                return False, state
            nxt = _lease_step(entry, lock_input, output, held=side == "held")
            if nxt is None or not nxt[1] or not self._owner_ok(input[1], nxt[0], entry):
                return False, state  # refused on this side: the same as leaving it out
            return True, (nxt[0], mask | bit)
        if holder == "":
            nxt = _lease_step(entry, lock_input, output, held=False)
            return (nxt is not None), (state if nxt is None else (nxt[0], mask))
        if output is UNKNOWN:
            options = [_lease_step(entry, lock_input, output, held=h) for h in (True, False)]
            changing = [
                o
                for o in options
                if o is not None and o[1] and self._owner_ok(input[1], o[0], entry)
            ]
            if changing:
                return True, (changing[0][0], mask)
            return False, state  # refused on either side: the same as leaving it out here
        for h in (True, False):
            nxt = _lease_step(entry, lock_input, output, held=h)
            if nxt is not None:
                return True, (nxt[0], mask)
        return False, state

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        groups: dict[object, list[Operation]] = {}
        for op in ops:
            groups.setdefault(op.input[1], []).append(op)
        return list(groups.values())

    def read_only(self, input: Any) -> bool:
        return bool(input[0] == "read")

    def describe(self, input: Any, output: Any) -> str:
        op, key, who, version, lease_ms, at_ms = input[:6]
        args = [repr(key)]
        if op != "read":
            args += [repr(who), f"v={version}"]
        if op in ("acquire", "renew"):
            args.append(f"lease={lease_ms}")
        side = "" if len(input) < 7 or input[6] is None else f" [{input[6]}]"
        return f"{op}({', '.join(args)}) @{at_ms}{side} -> {output!r}"


def lease_operations(ops: Iterable[Op]) -> list[Operation]:
    """The history's lock operations as ``LeaseLockModel`` inputs (``LeaseInput``), an info
    acquire as its two alternatives."""
    out: list[Operation] = []
    alt = 0
    for op in operations_from_history(ops, lock_from_history):
        if op.return_index is None and op.input[0] == "acquire":
            for side in ("held", "free"):
                out.append(
                    Operation(
                        call_index=op.call_index,
                        return_index=None,
                        process=op.process,
                        input=(*op.input, side, alt),
                        output=op.output,
                    )
                )
            alt += 1
            continue
        out.append(
            Operation(
                call_index=op.call_index,
                return_index=op.return_index,
                process=op.process,
                input=(*op.input, None, -1),
                output=op.output,
            )
        )
    return out


def _lease_step(
    state: LeaseEntry, input: LockInput, output: Any, *, held: bool
) -> tuple[LeaseEntry, bool] | None:
    """Apply ``input`` assuming the current holder's lease is (``held``) or is not in force
    at the apply time: the new state and whether the command changed the entry, or None if
    that assumption is impossible or the answer does not match."""
    holder, version, lo, hi, time_ms, lease = state
    op, key, who, ver, lease_ms, at = input
    if holder == "":
        t = at if at is not None else time_ms
        expiries = [0]
    elif held:
        t = at if at is not None else time_ms
        if not t < hi:
            return None
        expiries = [max(lo, t + 1)]
        if output is not UNKNOWN:
            named = output[3]
            if isinstance(named, int) and max(lo, t + 1) <= named <= hi and named != expiries[0]:
                expiries.append(named)  # a denial or read that names the expiry
    else:
        t = at if at is not None else max(time_ms, lo)
        if t < lo:
            return None
        expiries = [min(t, hi)]
    for e in expiries:
        new4, result = lock_transition(
            (holder, version, e, time_ms), (op, key, who, ver, lease_ms, t)
        )
        if output is not UNKNOWN and result != output:
            continue
        nh, nv, ne, nt = new4
        if result[0] and op != "read":  # the command changed the entry
            if op in ("acquire", "renew") and at is None:
                return (nh, nv, ne, _INF, nt, lease_ms), True  # granted at a time >= t
            return (nh, nv, ne, ne, nt, 0), True
        if holder == "":
            return (holder, version, lo, hi, nt, lease), False
        if held:
            if output is not UNKNOWN and output[1] == holder and output[3] == e:
                return (holder, version, e, e, nt, 0), False  # the answer names the expiry
            return (holder, version, max(lo, t + 1), hi, nt, lease), False
        new_hi = min(hi, t)
        return (holder, version, lo, new_hi, nt, lease if lo < new_hi else 0), False
    return None


def check_lock_linearizable(
    ops: Iterable[Op], *, max_steps: int = LINEARIZABLE_STEPS_MAX
) -> CheckResult:
    """The lock operations of the history are linearizable with respect to the lock
    service's sequential semantics, per key (``LeaseLockModel``). ``ok`` only for the verdict
    ``"ok"``: a search that runs out of its step budget is not a pass."""
    operations = lease_operations(ops)
    owners: dict[tuple[str, int], str] = {}
    for op in operations:
        if op.return_index is not None and op.output[1]:
            owners.setdefault((op.input[1], op.output[2]), op.output[1])
    return check_linearizable(LeaseLockModel(owners), operations, max_steps=max_steps)


# --------------------------------------------------------------------------------------------
# Fencing and liveness


@dataclass(frozen=True, slots=True)
class _Grant:
    key: str
    holder: str
    version: int
    at_ms: int
    expiry_ms: int
    invoke_index: int
    complete_index: int


def check_fencing(ops: Iterable[Op]) -> CheckResult:
    """Fencing tokens do what the store relies on, per key, over the acknowledged answers.

    A *grant* is an ``ok`` acquire or renew with outcome ``ok``: the requester holds the key
    with ``version`` for the log-time interval ``[at_ms, expiry_ms)``. An answer (of any
    operation) that shows the key free with ``version`` at ``at_ms`` ends every interval of
    that version there: the holder released it (a client stops using a token once it sends the
    release, so this counts releases whose acknowledgement was lost), or it expired. A
    release of unknown outcome (``info``, or never completed) may end its version's lease at
    any time after it was invoked, so it excuses an overlap with a later version first granted
    after that invoke. That the service shows a key free, or grants it again, only after a
    release or expiry is the linearizability check's business, not this one's.

    * ``token-went-back`` (real-time order): if grant A completed before grant B was invoked
      (history order), then ``B.version >= A.version``, and ``B.version > A.version`` when B's
      holder differs from A's.
    * ``two-holders-of-a-version``: one version is granted to one holder only.
    * ``overlapping-leases`` (mutual exclusion in the service's time): for versions
      ``v < w`` of a key, every interval of ``v`` (cut at its release) ends at or before every
      interval of ``w`` starts. So no two clients hold a valid lease on a key at the same
      instant of the log's clock, the clock every lease is measured on. (This workload never
      takes a lock over with ``expected_version``, which would end the previous lease early.)
    """
    grants: list[_Grant] = []
    releases: dict[tuple[str, int], int] = {}
    unknown_releases: dict[tuple[str, int], int] = {}
    for invoke, completion in pair_ops(ops):
        if invoke.f not in LOCK_FS:
            continue
        if invoke.f == "release" and (completion is None or completion.type == "info"):
            sent_version = invoke.get("version")
            if isinstance(sent_version, int):
                unknown_releases.setdefault((str(invoke.get("key")), sent_version), invoke.index)
            continue
        if completion is None or completion.type != "ok":
            continue
        key = str(invoke.get("key"))
        version, at, expiry = (
            completion.get("version"),
            completion.get("at_ms"),
            completion.get("expiry_ms"),
        )
        if not (isinstance(version, int) and isinstance(at, int) and isinstance(expiry, int)):
            continue
        if invoke.f in ("acquire", "renew") and completion.get("outcome") == "ok":
            grants.append(
                _Grant(
                    key=key,
                    holder=str(completion.get("holder")),
                    version=version,
                    at_ms=at,
                    expiry_ms=expiry,
                    invoke_index=invoke.index,
                    complete_index=completion.index,
                )
            )
        if completion.get("holder") == "":  # free at ``at``: its version's lease is over
            k = (key, version)
            releases[k] = min(releases.get(k, at), at)
    went_back: list[dict[str, JSON]] = []
    two_holders: list[dict[str, JSON]] = []
    overlapping: list[dict[str, JSON]] = []
    keys = sorted({g.key for g in grants})
    for key in keys:
        mine = [g for g in grants if g.key == key]
        # Real-time order: sweep invokes and completions in history order.
        events: list[tuple[int, int, _Grant]] = []
        for g in mine:
            events.append((g.invoke_index, 0, g))
            events.append((g.complete_index, 1, g))
        events.sort(key=lambda e: (e[0], e[1]))
        best: _Grant | None = None
        before: dict[int, _Grant | None] = {}
        for _, kind, g in events:
            if kind == 0:
                before[g.invoke_index] = best
                continue
            prior = before[g.invoke_index]
            if prior is not None and (
                g.version < prior.version
                or (g.version == prior.version and g.holder != prior.holder)
            ):
                went_back.append(
                    {
                        "key": key,
                        "earlier": [prior.holder, prior.version, prior.complete_index],
                        "later": [g.holder, g.version, g.complete_index],
                    }
                )
            if best is None or g.version > best.version:
                best = g
        # One holder per version; intervals per version.
        holder_of: dict[int, str] = {}
        start: dict[int, int] = {}
        end: dict[int, int] = {}
        first_done: dict[int, int] = {}
        for g in mine:
            other = holder_of.setdefault(g.version, g.holder)
            if other != g.holder:
                two_holders.append({"key": key, "version": g.version, "holders": [other, g.holder]})
            start[g.version] = min(start.get(g.version, g.at_ms), g.at_ms)
            end[g.version] = max(end.get(g.version, g.expiry_ms), g.expiry_ms)
            first_done[g.version] = min(
                first_done.get(g.version, g.complete_index), g.complete_index
            )
        versions = sorted(start)
        for v in versions:
            released = releases.get((key, v))
            if released is not None:
                end[v] = min(end[v], max(released, start[v]))
        for i, v in enumerate(versions):
            for w in versions[i + 1 :]:
                if end[v] <= start[w]:
                    continue
                sent = unknown_releases.get((key, v))
                if sent is not None and sent < first_done[w]:
                    continue  # v's holder had let go: its release may have been applied first
                overlapping.append(
                    {
                        "key": key,
                        "version": v,
                        "ends_ms": end[v],
                        "next_version": w,
                        "starts_ms": start[w],
                    }
                )
    problems = {
        "token-went-back": went_back,
        "two-holders-of-a-version": two_holders,
        "overlapping-leases": overlapping,
    }
    ok = not any(problems.values())
    summary = (
        f"fencing: ok, {len(grants)} grants over {len(keys)} keys"
        if ok
        else "fencing: FAILED, "
        + ", ".join(f"{len(v)} {name}" for name, v in problems.items() if v)
    )
    details: dict[str, object] = {"grants": len(grants), "keys": len(keys)}
    details |= {name: v[:OFFENDERS_MAX] for name, v in problems.items()}
    return CheckResult(name="fencing", ok=ok, summary=summary, details=details)


def check_lock_liveness(ops: Iterable[Op], heal_time_ms: int, bound_ms: int) -> CheckResult:
    """After the heal, the service grants locks again within ``bound_ms``: among the acquires
    and renews invoked at or after ``heal_time_ms``, the earliest ``ok`` completion with
    outcome ``ok`` (a grant) has ``time_ms <= heal_time_ms + bound_ms``."""
    invoked = 0
    first: Op | None = None
    for invoke, completion in pair_ops(ops):
        if invoke.f not in ("acquire", "renew") or invoke.time_ms < heal_time_ms:
            continue
        invoked += 1
        if completion is None or completion.type != "ok" or completion.get("outcome") != "ok":
            continue
        if first is None or (completion.time_ms, completion.index) < (first.time_ms, first.index):
            first = completion
    recovery = None if first is None else first.time_ms - heal_time_ms
    ok = recovery is not None and recovery <= bound_ms
    return CheckResult(
        name="liveness",
        ok=ok,
        summary=(
            f"liveness: first grant {recovery} ms after the heal (bound {bound_ms} ms)"
            if ok
            else f"liveness: FAILED, no grant within {bound_ms} ms of the heal "
            f"(first after {recovery} ms, {invoked} acquires/renews invoked)"
        ),
        details={
            "heal_time_ms": heal_time_ms,
            "bound_ms": bound_ms,
            "recovery_ms": recovery,
            "invoked_after_heal": invoked,
        },
    )
