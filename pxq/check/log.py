"""Checkers for the replicated append-only log: one Paxos log per group.

This module owns the log checkers (agreement, no loss, real-time order, apply order,
liveness) and the helpers they share: extracting the append operations of a history
(``appends``) and indexing a chosen log by value (``index_chosen``). Each piece of
multiset and ordering logic lives in exactly one of these helpers.

The workload: clients append unique string values (for example ``"c3-17"``) to group ``g``.
An append's invoke carries the value and, usually, ``group``; its ``ok`` completion carries
the extra fields ``group``, ``instance`` (the log instance that holds the value) and ``slot``
(the value's position inside that batched instance). ``fail`` means the value was definitely
not appended; ``info`` (or no completion at all) means unknown.

The data the checkers compare the history against:

- ``ChosenLogs``: for each group, the ``(instance, slot, value)`` entries one replica
  applied, in apply order. Take it after the liveness phase (the replica has caught up),
  otherwise acknowledged values past its applied point are reported as lost
  (``lost-past-log-end`` says how many of the lost ones that could explain).
- ``ReplicaChecksums``: for each replica, for each group, for each applied instance, the
  replica's running checksum after applying that instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pxq.check.history import JSON, HistoryError, Op, pair_ops
from pxq.check.result import CheckResult, Offenders, verdict

Position: TypeAlias = tuple[int, int]
"""``(instance, slot)``: where a value sits in one group's log; tuples order like the log."""

ChosenEntry: TypeAlias = tuple[int, int, str]
"""``(instance, slot, value)``, one applied value."""

ChosenLogs: TypeAlias = Mapping[int, Sequence[ChosenEntry]]
"""Group -> the entries one replica applied, in apply order."""

ReplicaChecksums: TypeAlias = Mapping[str, Mapping[int, Mapping[int, int]]]
"""Replica name -> group -> instance -> running checksum after applying that instance."""

Outcome: TypeAlias = Literal["ok", "fail", "info"]

APPEND: Final = "append"
"""The default operation name of the log workload."""


# --------------------------------------------------------------------------------------------
# Shared helpers: the history side


@dataclass(frozen=True, slots=True, kw_only=True)
class Append:
    """One append of the history: its invoke, completion and what the completion reported."""

    invoke: Op
    completion: Op | None
    value: str
    group: int | None
    """From the invoke's or the completion's ``group`` field (they must agree); None if absent."""
    reported: Position | None
    """``(instance, slot)`` of an ``ok`` completion; None otherwise."""

    @property
    def outcome(self) -> Outcome:
        """``ok``, ``fail``, or ``info`` (which includes a never-completed invoke)."""
        if self.completion is None:
            return "info"
        if self.completion.type == "ok":
            return "ok"
        if self.completion.type == "fail":
            return "fail"
        return "info"


def _int_field(op: Op, name: str) -> int:
    value = op.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryError(f"op {op.index}: field {name!r} must be an int, got {value!r}")
    return value


def _optional_int_field(op: Op, name: str) -> int | None:
    return None if op.get(name) is None else _int_field(op, name)


def appends(ops: Iterable[Op], f: str = APPEND) -> list[Append]:
    """The operations named ``f`` of a history, in invoke order, validated for the checkers.

    Raises ``HistoryError`` (naming the op index) when the history breaks Jepsen semantics
    (see ``pair_ops``), when a value is not a str or is appended twice (the workload must
    append unique values), when invoke and completion disagree on ``group``, or when an
    ``ok`` lacks int ``group``, ``instance`` and ``slot`` fields.
    """
    out: list[Append] = []
    first_invoke_of: dict[str, int] = {}
    for invoke, completion in pair_ops(ops):
        if invoke.f != f:
            continue
        value = invoke.value
        if not isinstance(value, str):
            raise HistoryError(f"op {invoke.index}: {f} value must be a str, got {value!r}")
        if value in first_invoke_of:
            raise HistoryError(
                f"op {invoke.index}: value {value!r} was already appended by op "
                f"{first_invoke_of[value]} (values must be unique)"
            )
        first_invoke_of[value] = invoke.index
        group = _optional_int_field(invoke, "group")
        reported: Position | None = None
        if completion is not None:
            if completion.type == "ok":
                done_group: int | None = _int_field(completion, "group")
                reported = (_int_field(completion, "instance"), _int_field(completion, "slot"))
            else:
                done_group = _optional_int_field(completion, "group")
            if group is not None and done_group is not None and done_group != group:
                raise HistoryError(
                    f"op {completion.index}: group {done_group} differs from the invoke's {group}"
                )
            if done_group is not None:
                group = done_group
        out.append(
            Append(
                invoke=invoke, completion=completion, value=value, group=group, reported=reported
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Shared helpers: the log side


@dataclass(frozen=True, slots=True, kw_only=True)
class Occurrence:
    """One place a value was applied: group, instance and slot."""

    group: int
    instance: int
    slot: int

    @property
    def position(self) -> Position:
        return (self.instance, self.slot)

    def to_json(self) -> dict[str, JSON]:
        return {"group": self.group, "instance": self.instance, "slot": self.slot}


def index_chosen(chosen: ChosenLogs) -> dict[str, list[Occurrence]]:
    """Value -> every place it was applied (the multiset view of the logs).

    Groups are visited in ascending order and entries in apply order, so the dict's order and
    each value's list are deterministic; a value's first occurrence is where it took effect.
    """
    where: dict[str, list[Occurrence]] = {}
    for group in sorted(chosen):
        for instance, slot, value in chosen[group]:
            where.setdefault(value, []).append(
                Occurrence(group=group, instance=instance, slot=slot)
            )
    return where


def _append_json(append: Append) -> dict[str, JSON]:
    return {
        "value": append.value,
        "invoke_index": append.invoke.index,
        "completion_index": None if append.completion is None else append.completion.index,
        "group": append.group,
        "reported": None if append.reported is None else list(append.reported),
    }


# --------------------------------------------------------------------------------------------
# Checkers


def check_agreement(replica_checksums: ReplicaChecksums) -> CheckResult:
    """Every replica that applied ``(group, instance)`` reports the same checksum for it.

    Checksums are running, so one divergence usually makes every later instance of the group
    disagree as well; ``first-disagreement`` lists ``[group, instance]`` of the lowest
    disagreeing instance of each group, and the examples are the lowest ones overall.
    """
    replicas = sorted(replica_checksums)
    groups = sorted({group for r in replicas for group in replica_checksums[r]})
    instances = 0
    compared = 0
    first_per_group: list[list[int]] = []
    disagreeing = Offenders()
    for group in groups:
        per_replica = {
            r: replica_checksums[r][group] for r in replicas if group in replica_checksums[r]
        }
        for instance in sorted({i for sums in per_replica.values() for i in sums}):
            instances += 1
            reported: dict[str, JSON] = {
                r: sums[instance] for r, sums in per_replica.items() if instance in sums
            }
            if len(reported) < 2:
                continue
            compared += 1
            if len(set(reported.values())) > 1:
                if not first_per_group or first_per_group[-1][0] != group:
                    first_per_group.append([group, instance])
                disagreeing.add({"group": group, "instance": instance, "checksums": reported})
    return verdict(
        "agreement",
        {"disagreements": disagreeing},
        passed=f"{compared} instances compared across {len(replicas)} replicas",
        details={
            "replicas": replicas,
            "groups": groups,
            "instances": instances,
            "compared": compared,
            "first-disagreement": first_per_group,
        },
    )


def check_apply_order(chosen: ChosenLogs) -> CheckResult:
    """Within each group, applied positions strictly increase: ``(instance, slot)`` ascending.

    A replica applies instances in order and the values of a batch in slot order; an entry at
    or before its predecessor's position means a replica applied out of order or applied one
    position twice (two values at one position).
    """
    entries = 0
    out_of_order = Offenders()
    for group in sorted(chosen):
        previous: Position | None = None
        for apply_index, (instance, slot, value) in enumerate(chosen[group]):
            entries += 1
            position = (instance, slot)
            if previous is not None and position <= previous:
                out_of_order.add(
                    {
                        "group": group,
                        "apply_index": apply_index,
                        "value": value,
                        "position": list(position),
                        "previous": list(previous),
                    }
                )
            previous = position
    return verdict(
        "apply-order",
        {"out-of-order": out_of_order},
        passed=f"{entries} entries in {len(chosen)} groups in order",
        details={"groups": len(chosen), "entries": entries},
    )


def check_no_loss(ops: Iterable[Op], chosen: ChosenLogs, *, f: str = APPEND) -> CheckResult:
    """Total-log accounting (Jepsen ``total-queue``, made exact by the reported positions).

    Violations:

    - ``lost``: an append completed ``ok`` but its value is in no group's log;
    - ``misplaced``: the value is in a log, but not at the group/instance/slot its ``ok``
      reported (or, for an indefinite append, not in the group it was sent to);
    - ``duplicated``: a value appears more than once in the logs;
    - ``unexpected``: a value appears that no append ever invoked;
    - ``fail-but-present``: an append completed ``fail`` (definitely not) but its value is there.

    Not violations: an indefinite (``info`` or never completed) append may appear once
    (counted as ``recovered``) or not at all (``unrecovered``). ``lost-past-log-end`` counts
    the lost values whose reported position lies beyond the end of their group's log, which
    points at a lagging replica rather than a lost write.
    """
    history = appends(ops, f)
    where = index_chosen(chosen)
    end_of: dict[int, Position] = {
        group: (entries[-1][0], entries[-1][1]) for group, entries in chosen.items() if entries
    }
    lost, misplaced, duplicated = Offenders(), Offenders(), Offenders()
    unexpected, fail_present = Offenders(), Offenders()
    counts = {"ok": 0, "fail": 0, "info": 0}
    recovered = unrecovered = lost_past_end = 0
    for append in history:
        outcome = append.outcome
        counts[outcome] += 1
        found = where.get(append.value, [])
        example = _append_json(append)
        if outcome == "ok":
            if not found:
                lost.add(example)
                end = end_of.get(append.group) if append.group is not None else None
                if end is None or (append.reported is not None and append.reported > end):
                    lost_past_end += 1
            elif not any((o.group, o.position) == (append.group, append.reported) for o in found):
                misplaced.add(example | {"found": [o.to_json() for o in found]})
        elif outcome == "fail":
            if found:
                fail_present.add(example | {"found": [o.to_json() for o in found]})
        elif found:
            recovered += 1
            if append.group is not None and found[0].group != append.group:
                misplaced.add(example | {"found": [o.to_json() for o in found]})
        else:
            unrecovered += 1
    invoked = {append.value for append in history}
    for value, found in where.items():
        if len(found) > 1:
            duplicated.add({"value": value, "found": [o.to_json() for o in found]})
        if value not in invoked:
            unexpected.add({"value": value, "found": [o.to_json() for o in found]})
    return verdict(
        "no-loss",
        {
            "lost": lost,
            "misplaced": misplaced,
            "duplicated": duplicated,
            "unexpected": unexpected,
            "fail-but-present": fail_present,
        },
        passed=(
            f"{counts['ok']} acknowledged appends each present once where reported; "
            f"{recovered} of {counts['info']} indefinite appends recovered"
        ),
        details={
            "attempted": len(history),
            "acknowledged": counts["ok"],
            "failed": counts["fail"],
            "indefinite": counts["info"],
            "recovered": recovered,
            "unrecovered": unrecovered,
            "lost-past-log-end": lost_past_end,
            "log-entries": sum(len(found) for found in where.values()),
        },
    )


def check_realtime_order(ops: Iterable[Op], chosen: ChosenLogs, *, f: str = APPEND) -> CheckResult:
    """Appends that do not overlap in real time take effect in real-time order.

    If append A completed ``ok`` before append B was invoked (A's completion index < B's
    invoke index: history order is exact where timestamps may tie) and both values are in the
    same group's log, then A's instance is strictly before B's. That is stronger than "A's
    position is before B's": A's ``ok`` means its instance was chosen, and a chosen instance
    never changes, so B cannot have joined A's batch. B may be any append found in the log,
    including an indefinite one; A must be ``ok`` (an indefinite append may take effect at any
    later time). Each value's position is its first occurrence in the log.

    A sweep per group over completions and invokes in index order keeps the latest instance
    among the appends completed so far: O(n log n) for the sort, O(n) after it.
    """
    history = appends(ops, f)
    where = index_chosen(chosen)
    starts: dict[int, list[tuple[int, Occurrence, Append]]] = {}
    ends: dict[int, list[tuple[int, Occurrence, Append]]] = {}
    for append in history:
        found = where.get(append.value)
        if not found:
            continue
        first = found[0]
        starts.setdefault(first.group, []).append((append.invoke.index, first, append))
        if append.completion is not None and append.completion.type == "ok":
            ends.setdefault(first.group, []).append((append.completion.index, first, append))
    constrained = 0
    inversions = Offenders()
    for group in sorted(starts):
        done = sorted(ends.get(group, []), key=lambda end: end[0])
        latest: tuple[Occurrence, Append] | None = None
        next_done = 0
        for invoke_index, place, append in starts[group]:  # already in invoke order
            while next_done < len(done) and done[next_done][0] < invoke_index:
                _, done_place, done_append = done[next_done]
                if latest is None or done_place.position > latest[0].position:
                    latest = (done_place, done_append)
                next_done += 1
            if latest is None:
                continue
            constrained += 1
            earlier_place, earlier = latest
            if earlier_place.instance >= place.instance:
                inversions.add(
                    {
                        "group": group,
                        "earlier": earlier.value,
                        "earlier_completion_index": (
                            None if earlier.completion is None else earlier.completion.index
                        ),
                        "earlier_position": list(earlier_place.position),
                        "later": append.value,
                        "later_invoke_index": invoke_index,
                        "later_position": list(place.position),
                    }
                )
    return verdict(
        "realtime-order",
        {"inversions": inversions},
        passed=f"{constrained} appends placed after every append completed before they began",
        details={"constrained": constrained},
    )


def check_liveness(
    ops: Iterable[Op], heal_time_ms: int, bound_ms: int, f: str = APPEND
) -> CheckResult:
    """After the heal, the cluster serves ``f`` again within ``bound_ms``.

    Precisely: among the operations ``f`` invoked at or after ``heal_time_ms``, the earliest
    ``ok`` completion must have ``time_ms <= heal_time_ms + bound_ms``. ``recovery_ms`` is that
    completion's ``time_ms - heal_time_ms`` (None if no such operation completed ``ok``; a
    history that ends too early therefore fails).
    """
    invoked_after = 0
    first_ok: Op | None = None
    for invoke, completion in pair_ops(ops):
        if invoke.f != f or invoke.time_ms < heal_time_ms:
            continue
        invoked_after += 1
        if completion is not None and completion.type == "ok":
            key = (completion.time_ms, completion.index)
            if first_ok is None or key < (first_ok.time_ms, first_ok.index):
                first_ok = completion
    recovery_ms = None if first_ok is None else first_ok.time_ms - heal_time_ms
    slow = Offenders()
    if recovery_ms is None or recovery_ms > bound_ms:
        slow.add(
            {
                "heal_time_ms": heal_time_ms,
                "bound_ms": bound_ms,
                "recovery_ms": recovery_ms,
                "invoked_after_heal": invoked_after,
            }
        )
    return verdict(
        "liveness",
        {"not-recovered-within-bound": slow},
        passed=f"first {f} ok {recovery_ms} ms after the heal (bound {bound_ms} ms)",
        details={
            "f": f,
            "heal_time_ms": heal_time_ms,
            "bound_ms": bound_ms,
            "recovery_ms": recovery_ms,
            "invoked_after_heal": invoked_after,
            "first_ok_index": None if first_ok is None else first_ok.index,
        },
    )
