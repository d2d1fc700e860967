"""The availability checker: a group whose master stays healthy keeps acknowledging writes;
and the election checker: a group without a healthy master gets one within a bound while a
majority of its replicas could elect it (``check_election``, at the end).

A fault on a replica that leads nothing (paused, cut off, flapping, restarted) must not
stall the groups whose master is up and reaches a majority: the longest gap between two
consecutive acknowledgements of such a group is bounded (``GAP_MS_MAX``). A disturbed master
(a rejoining replica deposing it and an election following) shows as a gap of a lease or
more.

The checker is pure: it takes the history and, per group, the windows of time during which
the group's master was healthy (the driver that knows the faults computes them:
``sim/availability.py``). A gap counts only when both of its ends lie in one healthy window,
so the time a master itself was down or cut off, and the election after it, never count.
Who the master is may change inside a window (a handover, or a disturbance: the last replica
that became master stays "the master" until another one does); the window only asks that it
be healthy.

A gap measures unavailability only while someone was waiting for the cluster: a gap between
acknowledgements at ``a`` and ``b`` counts from ``max(a, t)``, where ``t`` is the earliest
invoke, since the healthy window opened, among the operations of the group (whatever their
outcome) outstanding at some time between ``a`` and ``b``; nothing counts if there is none. So
a lull in the offered load (every client busy with another group) does not count, nor does an
operation invoked before the window opened (still in a client's backoff after a failover),
while the load that keeps arriving or waiting during a stall does, even when its calls end
in a timeout.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pxq.check.history import Op, pair_ops
from pxq.check.result import CheckResult, Offenders, verdict

GAP_MS_MAX: Final = 200
"""The longest gap (ms) allowed between acknowledgements of a group with a healthy master."""

Window = tuple[int, int]
"""``(start_ms, end_ms)``: a closed interval of time."""

NEVER: Final = 2**62
"""The end of a call that never completed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupLoad:
    """The operations of one group: when they were acknowledged, and every call's
    ``(invoke_ms, end_ms)`` (``NEVER`` if it never completed), both sorted."""

    acks: list[int]
    calls: list[Window]


def group_load(ops: Iterable[Op], f: str, groups: int) -> dict[int, GroupLoad]:
    """Per group, the operations ``f`` of the history. The group is the invoke's ``group``
    field or else its ``queue`` field mod ``groups``."""
    out = {g: GroupLoad(acks=[], calls=[]) for g in range(groups)}
    for invoke, completion in pair_ops(ops):
        if invoke.f != f:
            continue
        group = invoke.get("group")
        if not isinstance(group, int):
            queue = invoke.get("queue")
            if not isinstance(queue, int):
                continue
            group = queue % groups
        load = out.get(group)
        if load is None:
            continue
        end = NEVER if completion is None else completion.time_ms
        load.calls.append((invoke.time_ms, end))
        if completion is not None and completion.type == "ok":
            load.acks.append(completion.time_ms)
    for load in out.values():
        load.acks.sort()
        load.calls.sort()
    return out


def check_availability(
    load: Mapping[int, GroupLoad],
    healthy: Mapping[int, Sequence[Window]],
    *,
    gap_ms_max: int = GAP_MS_MAX,
) -> CheckResult:
    """Per group, the longest wait between consecutive acknowledgements inside the group's
    healthy windows (counted as the module docstring says) is at most ``gap_ms_max``. Fails
    too when no gap could be measured at all (no load, or never a healthy master): a check
    that saw nothing proves nothing."""
    longest: dict[int, int] = {}
    gaps = Offenders()
    unmeasured = Offenders()
    measured = 0
    for group in sorted(load):
        acks, calls = load[group].acks, load[group].calls
        invokes = [invoke for invoke, _end in calls]
        for start, end in sorted(healthy.get(group, ())):
            # calls[p]: the first call invoked since ``start`` still outstanding after ``a``.
            # ``a`` only grows, so ``p`` only moves forward.
            p = bisect_left(invokes, start)
            for k in range(bisect_left(acks, start) + 1, bisect_right(acks, end)):
                a, b = acks[k - 1], acks[k]
                while p < len(calls) and calls[p][1] <= a:
                    p += 1
                measured += 1
                gap = 0
                if p < len(calls) and calls[p][0] < b:
                    gap = b - max(a, calls[p][0])
                longest[group] = max(longest.get(group, 0), gap)
                if gap > gap_ms_max:
                    gaps.add({"group": group, "from_ms": a, "to_ms": b, "gap_ms": gap})
    if measured == 0:
        unmeasured.add("no load, or never a healthy master")
    worst = max(longest.values(), default=0)
    return verdict(
        "availability",
        {"gaps-over-bound": gaps, "nothing-measured": unmeasured},
        passed=f"longest gap under a healthy master {worst} ms (bound {gap_ms_max} ms)",
        details={
            "gap_ms_max": gap_ms_max,
            "longest_gap_ms": worst,
            "longest_gap_ms_per_group": {str(g): v for g, v in sorted(longest.items())},
            "gaps_measured": measured,
            "healthy_ms": {str(g): sum(e - s for s, e in ws) for g, ws in sorted(healthy.items())},
        },
    )


ELECTION_SLACK_MS: Final = 1000
"""What an election may take beyond two leases (``election_bound_ms``)."""


def election_bound_ms(lease_ms: int) -> int:
    """The longest a group may stay without a healthy master while a majority could elect
    one: the followers wait out a lease since they last heard the master (a restarted
    acceptor promises nothing for a lease either), then a campaign's rounds and the new
    master's first lease round."""
    return 2 * lease_ms + ELECTION_SLACK_MS


def check_election(leaderless: Mapping[int, Sequence[Window]], *, bound_ms: int) -> CheckResult:
    """Per group, every stretch without a healthy master while a majority of the replicas was
    up and connected (the driver computes them: ``sim/availability.py``) ended within
    ``bound_ms``: a majority that can elect a master does. The first stretch of a run (no
    master yet) counts too, so a run always measures at least one."""
    longest: dict[int, int] = {}
    slow = Offenders()
    unmeasured = Offenders()
    measured = 0
    for group in sorted(leaderless):
        for start, end in sorted(leaderless[group]):
            measured += 1
            length = end - start
            longest[group] = max(longest.get(group, 0), length)
            if length > bound_ms:
                slow.add({"group": group, "from_ms": start, "to_ms": end, "ms": length})
    if measured == 0:
        unmeasured.add("no stretch without a master was seen (not even the first election)")
    worst = max(longest.values(), default=0)
    return verdict(
        "election",
        {"leaderless-over-bound": slow, "nothing-measured": unmeasured},
        passed=f"longest stretch without a master while a majority could elect one {worst} ms "
        f"(bound {bound_ms} ms)",
        details={
            "bound_ms": bound_ms,
            "longest_ms": worst,
            "longest_ms_per_group": {str(g): v for g, v in sorted(longest.items())},
            "stretches": measured,
        },
    )
