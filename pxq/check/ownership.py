"""Checkers for consumer ownership through the lock service, over a queue history.

The history holds, besides the queue operations (``pxq/check/queue.py``), the ownership
changes of every consumer process (``own_start`` / ``own_stop`` with ``group``, ``topic``,
``queue``, ``token`` and ``holder``: the process incarnation), the nemesis' faults (``crash``,
``pause``, ``restart``, ``resume`` with the target names as value) and the deliveries
(``deliver`` with ``group``, ``topic``, ``queue``).

* ``check_ownership``: at most one valid owner per (group, queue) at any time. Tokens of
  successive grants of a queue grow (a lower token granted after a higher one, or one token
  granted to two holders, is a violation); every delivery to a handler happens while its
  process owns the queue (``deliver_unowned``) and before any grant of the queue with a higher
  token (``deliver_after_newer_grant``: a stale owner acting after its successor was granted).
  A crash ends all of the process's ownerships; a pause does not (a paused process acts not at
  all, and must drop expired queues before acting once it resumes: the check sees it if not).
* ``check_failover``: a consumer that crashes or pauses while owning queues has each of them
  granted again (to another process, or to itself after a restart) within ``bound_ms``;
  queues it still holds legitimately at the end (a pause shorter than its lease) are not
  counted. Time when the lock service itself has no master does not count toward the bound
  (no grant can happen then: that is the lock service's failover, which the lock checks
  judge): the history's ``lock_master`` ops (``value`` = the lock replica, ``group``,
  ``state``: ``became`` serving, ``lapsed`` / ``lost`` no longer, ``crashed`` for every
  group) and the nemesis' ``pause`` / ``resume`` of lock replicas say when each lock group
  had a serving master; while any of ``lock_groups`` has none, the lock service is
  masterless. With ``window``, only consumers going down in it are judged. The measured
  times are in the details (the failover figures of ``docs/``).
* ``check_rate_limit``: over any window of ``window_ms`` (several sizes), the items delivered
  to a group are at most ``rate * (window + slack) / 1000 + burst + consumers``: tokens are
  taken when items are fetched, and delivered a network round trip later (``slack_ms``), and
  each owner's bucket holds at least one token (``pxq.consumer.ratelimit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pxq.check.history import JSON, Op
from pxq.check.result import CheckResult, Offenders, verdict
from pxq.topics import base_topic

QueueRef = tuple[str, str, int]
"""(group, base topic, queue)."""
CONSUMER_FAULTS_DOWN = ("crash", "pause")
RATE_WINDOWS_MS = (100, 1000, 5000)
FAILOVER_TIMES_MAX = 1000
"""Failover times listed in a result's details (the rest are only counted)."""


@dataclass(slots=True)
class _Grant:
    holder: str
    token: int
    time_ms: int


def _ref(op: Op) -> QueueRef | None:
    group, topic, queue = op.get("group"), op.get("topic"), op.get("queue")
    if not isinstance(group, str) or not isinstance(topic, str) or not isinstance(queue, int):
        return None
    return group, base_topic(topic), queue


def _targets(op: Op) -> list[str]:
    value: JSON = op.value
    return [str(v) for v in value] if isinstance(value, list) else []


def check_ownership(ops: Iterable[Op], consumers: Iterable[str]) -> CheckResult:
    """See the module docstring."""
    names = set(consumers)
    lower = Offenders()
    shared = Offenders()
    unowned = Offenders()
    stale = Offenders()
    open_: dict[QueueRef, dict[str, _Grant]] = {}
    newest: dict[QueueRef, _Grant] = {}
    grants = deliveries = concurrent_max = 0
    for op in ops:
        if op.process == "nemesis":
            if op.type == "info" and op.f == "crash":
                for c in _targets(op):
                    for holders in open_.values():
                        holders.pop(c, None)
            continue
        if op.type != "ok" or not isinstance(op.process, str):
            continue
        c = op.process
        if op.f in ("own_start", "own_stop"):
            ref = _ref(op)
            token, holder = op.get("token"), op.get("holder")
            if ref is None or not isinstance(token, int) or not isinstance(holder, str):
                continue
            holders = open_.setdefault(ref, {})
            if op.f == "own_stop":
                holders.pop(c, None)
                continue
            grants += 1
            top = newest.get(ref)
            if top is not None and token < top.token:
                lower.add({"op": op.index, "queue": list(ref), "token": token, "after": top.token})
            elif top is not None and token == top.token and holder != top.holder:
                shared.add({"op": op.index, "queue": list(ref), "token": token})
            if top is None or token >= top.token:
                newest[ref] = _Grant(holder, token, op.time_ms)
            holders[c] = _Grant(holder, token, op.time_ms)
            concurrent_max = max(concurrent_max, len(holders))
        elif op.f == "deliver" and c in names:
            ref = _ref(op)
            if ref is None:
                continue
            deliveries += 1
            mine = open_.get(ref, {}).get(c)
            if mine is None:
                unowned.add({"op": op.index, "consumer": c, "queue": list(ref)})
                continue
            top = newest[ref]
            if top.token > mine.token and top.time_ms < op.time_ms:
                stale.add(
                    {
                        "op": op.index,
                        "consumer": c,
                        "queue": list(ref),
                        "token": mine.token,
                        "newer": top.token,
                        "granted_ms": top.time_ms,
                    }
                )
    return verdict(
        "ownership",
        {
            "lower_token_granted": lower,
            "token_granted_twice": shared,
            "deliver_unowned": unowned,
            "deliver_after_newer_grant": stale,
        },
        passed=f"{grants} grants, {deliveries} deliveries, each by the queue's one valid owner",
        details={"grants": grants, "deliveries": deliveries, "holders_at_once_max": concurrent_max},
    )


LOCK_MASTER = "lock_master"
"""A lock replica's master state changed (see the module docstring)."""


def lock_masterless(ops: Iterable[Op], lock_groups: int) -> list[tuple[int, int]]:
    """The spans ``[from_ms, to_ms)`` in which some lock group had no serving master (from
    the start of the history until every group first had one). The last span may end at
    the history's last op."""
    serving: set[tuple[str, int]] = set()
    paused: set[str] = set()
    spans: list[tuple[int, int]] = []
    since: int | None = 0
    last_ms = 0

    def has_master() -> bool:
        up = {g for node, g in serving if node not in paused}
        return all(g in up for g in range(lock_groups))

    for op in ops:
        last_ms = op.time_ms
        if op.process == "nemesis" and op.type == "info" and op.f in ("pause", "resume"):
            for target in _targets(op):
                (paused.add if op.f == "pause" else paused.discard)(target)
        elif op.f == LOCK_MASTER and op.type == "ok" and isinstance(op.value, str):
            state, group = op.get("state"), op.get("group")
            if state == "crashed":
                serving = {(n, g) for n, g in serving if n != op.value}
            elif isinstance(group, int) and state == "became":
                serving.add((op.value, group))
            elif isinstance(group, int) and state in ("lapsed", "lost"):
                serving.discard((op.value, group))
            else:
                continue
        else:
            continue
        up = has_master()
        if up and since is not None:
            if op.time_ms > since:
                spans.append((since, op.time_ms))
            since = None
        elif not up and since is None:
            since = op.time_ms
    if since is not None and last_ms > since:
        spans.append((since, last_ms))
    return spans


def _overlap(spans: Sequence[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(hi, b) - max(lo, a)) for a, b in spans)


def check_failover(
    ops: Sequence[Op],
    consumers: Iterable[str],
    bound_ms: int,
    *,
    lock_groups: int | None = None,
    window: tuple[int, int] | None = None,
) -> CheckResult:
    """See the module docstring. ``lock_groups`` None: the lock service's own failovers are
    not excluded (the history has no ``lock_master`` ops)."""
    names = set(consumers)
    masterless = [] if lock_groups is None else lock_masterless(ops, lock_groups)
    owners: dict[QueueRef, dict[str, int]] = {}
    """queue -> consumer -> token, for open ownerships."""
    pending: dict[QueueRef, list[tuple[int, str]]] = {}
    """queue -> [(down time, consumer)] waiting for a new grant."""
    times: list[int] = []
    slow = Offenders()
    end_ms = ops[-1].time_ms if ops else 0
    for op in ops:
        if op.process == "nemesis" and op.type == "info":
            down = [c for c in _targets(op) if c in names]
            judged = window is None or window[0] <= op.time_ms <= window[1]
            if op.f in CONSUMER_FAULTS_DOWN:
                for c in down:
                    for ref, holders in owners.items():
                        if c in holders and judged:
                            pending.setdefault(ref, []).append((op.time_ms, c))
                    if op.f == "crash":
                        for holders in owners.values():
                            holders.pop(c, None)
            continue
        if op.type != "ok" or op.f not in ("own_start", "own_stop"):
            continue
        started = _ref(op)
        token = op.get("token")
        if started is None or not isinstance(op.process, str):
            continue
        holders = owners.setdefault(started, {})
        if op.f == "own_stop":
            holders.pop(op.process, None)
            continue
        holders[op.process] = token if isinstance(token, int) else 0
        for t_down, c in pending.pop(started, []):
            took = op.time_ms - t_down - _overlap(masterless, t_down, op.time_ms)
            times.append(took)
            if took > bound_ms:
                slow.add(
                    {"queue": list(started), "consumer": c, "down_ms": t_down, "took_ms": took}
                )
    for ref, waiting in pending.items():
        for t_down, c in waiting:
            if c in owners.get(ref, {}):
                continue  # a pause shorter than the lease: it kept the queue
            if end_ms - t_down - _overlap(masterless, t_down, end_ms) > bound_ms:
                slow.add({"queue": list(ref), "consumer": c, "down_ms": t_down, "took_ms": None})
    times.sort()
    details: dict[str, object] = {
        "failovers": len(times),
        "bound_ms": bound_ms,
        "times_ms": times[:FAILOVER_TIMES_MAX],
        "lock_masterless_ms": sum(b - a for a, b in masterless),
    }
    if window is not None:
        details["window_ms"] = list(window)
    if times:
        details |= {
            "min_ms": times[0],
            "median_ms": times[len(times) // 2],
            "p90_ms": times[min(len(times) - 1, len(times) * 9 // 10)],
            "max_ms": times[-1],
        }
    return verdict(
        "failover",
        {"slow_failover": slow},
        passed=f"{len(times)} queues moved on, each within {bound_ms} ms",
        details=details,
    )


def check_rate_limit(
    ops: Iterable[Op],
    consumers: Iterable[str],
    rate_per_s: int,
    burst: int,
    *,
    slack_ms: int = 500,
    windows_ms: Sequence[int] = RATE_WINDOWS_MS,
) -> CheckResult:
    """See the module docstring."""
    names = set(consumers)
    by_group: dict[str, list[int]] = {}
    owners: dict[str, set[str]] = {}
    for op in ops:
        if op.type != "ok" or op.f != "deliver" or op.process not in names:
            continue
        group = op.get("group")
        if isinstance(group, str):
            by_group.setdefault(group, []).append(op.time_ms)
            owners.setdefault(group, set()).add(str(op.process))
    over = Offenders()
    peak: dict[str, float] = {}
    for group, times in sorted(by_group.items()):
        times.sort()
        for window in windows_ms:
            allowed = rate_per_s * (window + slack_ms) / 1000 + burst + len(owners[group])
            j = 0
            for i, start in enumerate(times):
                j = max(j, i)
                while j + 1 < len(times) and times[j + 1] <= start + window:
                    j += 1
                count = j - i + 1
                peak[f"{group}/{window}ms"] = max(peak.get(f"{group}/{window}ms", 0), count)
                if count > allowed:
                    over.add(
                        {"group": group, "window_ms": window, "from_ms": start, "items": count}
                    )
                    break
    return verdict(
        "rate_limit",
        {"over_limit": over},
        passed=f"deliveries within {rate_per_s}/s + burst {burst} over every window",
        details={"peak_items": {k: int(v) for k, v in sorted(peak.items())}},
    )
