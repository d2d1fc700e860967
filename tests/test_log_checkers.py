"""The replicated-log checkers accept correct runs and catch each kind of violation."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pxq.check.history import HistoryError, HistoryWriter, Op
from pxq.check.log import (
    ChosenEntry,
    check_agreement,
    check_apply_order,
    check_liveness,
    check_no_loss,
    check_realtime_order,
    index_chosen,
)
from pxq.check.result import EXAMPLES_MAX, CheckResult

Logs = dict[int, list[ChosenEntry]]
Checksums = dict[str, dict[int, dict[int, int]]]


def _is_json(result: CheckResult) -> bool:
    return bool(json.loads(json.dumps(result.to_json())) == result.to_json())


def _examples(result: CheckResult, kind: str) -> list[dict[str, object]]:
    examples = result.details[f"{kind}-examples"]
    assert isinstance(examples, list)
    return examples


def _two_sequential_appends() -> tuple[list[Op], Logs]:
    """a then b on group 0, then c (info, recovered) and d (fail) on group 1."""
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.ok(1, 1, "append", "a", group=0, instance=0, slot=0)
    w.invoke(2, 1, "append", "b", group=0)
    w.ok(3, 1, "append", "b", group=0, instance=1, slot=0)
    w.invoke(4, 2, "append", "c", group=1)
    w.info(5, 2, "append", "c", group=1)
    w.invoke(6, 3, "append", "d", group=1)
    w.fail(7, 3, "append", "d", group=1)
    return w.ops, {0: [(0, 0, "a"), (1, 0, "b")], 1: [(0, 0, "c")]}


# --------------------------------------------------------------------------------------------
# Agreement


def test_agreement_passes_when_replicas_agree_where_they_overlap() -> None:
    sums: Checksums = {
        "s0": {0: {0: 11, 1: 12, 2: 13}, 1: {0: 7}},
        "s1": {0: {0: 11, 1: 12}},  # lagging: instance 2 and group 1 not applied yet
        "s2": {0: {0: 11, 1: 12, 2: 13}, 1: {0: 7, 1: 8}},
    }
    result = check_agreement(sums)
    assert result.ok, result.summary
    assert result.details["instances"] == 5
    assert result.details["compared"] == 4  # group 1 instance 1 has a single reporter
    assert _is_json(result)


def test_agreement_reports_the_first_disagreeing_instance_per_group() -> None:
    sums: Checksums = {
        "s0": {0: {0: 11, 1: 12, 2: 13}, 3: {5: 1}},
        "s1": {0: {0: 11, 1: 99, 2: 98}, 3: {5: 1}},
        "s2": {0: {0: 11, 1: 12, 2: 13}, 3: {5: 2}},
    }
    result = check_agreement(sums)
    assert not result.ok
    assert result.details["disagreements"] == 3
    assert result.details["first-disagreement"] == [[0, 1], [3, 5]]
    assert result.details["disagreements-examples"] == [
        {"group": 0, "instance": 1, "checksums": {"s0": 12, "s1": 99, "s2": 12}},
        {"group": 0, "instance": 2, "checksums": {"s0": 13, "s1": 98, "s2": 13}},
        {"group": 3, "instance": 5, "checksums": {"s0": 1, "s1": 1, "s2": 2}},
    ]
    assert "FAILED" in result.summary and "3 disagreements" in result.summary
    assert _is_json(result)


def test_agreement_caps_examples_but_counts_everything() -> None:
    sums: Checksums = {
        "a": {0: {i: i for i in range(50)}},
        "b": {0: {i: i + 1 for i in range(50)}},
    }
    result = check_agreement(sums)
    assert result.details["disagreements"] == 50
    assert isinstance(result.details["disagreements-examples"], list)
    assert len(result.details["disagreements-examples"]) == EXAMPLES_MAX


# --------------------------------------------------------------------------------------------
# Apply order


def test_apply_order_passes_for_increasing_positions() -> None:
    assert check_apply_order({0: [(0, 0, "a"), (0, 1, "b"), (3, 0, "c")], 1: []}).ok


@pytest.mark.parametrize(
    "log",
    [
        [(0, 0, "a"), (2, 0, "b"), (1, 0, "c")],
        [(0, 1, "a"), (0, 0, "b")],
        [(0, 0, "a"), (0, 0, "b")],
    ],
    ids=["instance-backwards", "slot-backwards", "same-position"],
)
def test_apply_order_catches_a_position_not_after_its_predecessor(log: list[ChosenEntry]) -> None:
    result = check_apply_order({7: log})
    assert not result.ok
    assert result.details["out-of-order"] == 1


# --------------------------------------------------------------------------------------------
# No loss


def test_no_loss_passes_and_counts_recovered_and_unrecovered_indefinite_appends() -> None:
    ops, logs = _two_sequential_appends()
    w = HistoryWriter()
    for op in ops:
        w.record(op.type, op.time_ms, op.process, op.f, op.value, **dict(op.extra))
    w.invoke(8, 4, "append", "e", group=1)  # never completed, never applied
    result = check_no_loss(w.ops, logs)
    assert result.ok, result.summary
    assert result.details["acknowledged"] == 2
    assert result.details["failed"] == 1
    assert result.details["indefinite"] == 2
    assert result.details["recovered"] == 1
    assert result.details["unrecovered"] == 1
    assert _is_json(result)


def test_no_loss_catches_a_lost_acknowledged_append() -> None:
    ops, logs = _two_sequential_appends()
    logs[0] = [(0, 0, "a")]
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["lost"] == 1
    assert result.details["lost-past-log-end"] == 1  # b was reported at instance 1 > end 0
    (example,) = _examples(result, "lost")
    assert example["value"] == "b" and example["reported"] == [1, 0]
    assert "1 lost" in result.summary


def test_no_loss_distinguishes_a_hole_from_a_lagging_replica() -> None:
    ops, logs = _two_sequential_appends()
    logs[0] = [(1, 0, "b")]  # a is missing below the end: not explained by lag
    result = check_no_loss(ops, logs)
    assert result.details["lost"] == 1
    assert result.details["lost-past-log-end"] == 0


def test_no_loss_catches_a_duplicated_value() -> None:
    ops, logs = _two_sequential_appends()
    logs[0].append((2, 0, "a"))
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["duplicated"] == 1
    assert result.details["duplicated-examples"] == [
        {
            "value": "a",
            "found": [
                {"group": 0, "instance": 0, "slot": 0},
                {"group": 0, "instance": 2, "slot": 0},
            ],
        }
    ]


def test_no_loss_catches_a_recovered_indefinite_value_applied_twice() -> None:
    ops, logs = _two_sequential_appends()
    logs[1].append((1, 0, "c"))
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["duplicated"] == 1


def test_no_loss_catches_a_failed_append_that_is_present() -> None:
    ops, logs = _two_sequential_appends()
    logs[1].append((1, 0, "d"))
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["fail-but-present"] == 1


def test_no_loss_catches_an_unexpected_value() -> None:
    ops, logs = _two_sequential_appends()
    logs[1].append((1, 0, "never-invoked"))
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["unexpected"] == 1


def test_no_loss_catches_a_value_elsewhere_than_its_ok_reported() -> None:
    ops, logs = _two_sequential_appends()
    logs[0] = [(0, 0, "a"), (1, 1, "b")]
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["misplaced"] == 1


def test_no_loss_catches_an_indefinite_value_in_another_group() -> None:
    ops, logs = _two_sequential_appends()
    logs[1] = []
    logs[2] = [(0, 0, "c")]
    result = check_no_loss(ops, logs)
    assert not result.ok
    assert result.details["misplaced"] == 1


def test_no_loss_rejects_a_workload_that_repeats_a_value() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.fail(1, 1, "append", "a", group=0)
    w.invoke(2, 1, "append", "a", group=0)
    with pytest.raises(HistoryError, match="op 2: value 'a' was already appended by op 0"):
        check_no_loss(w.ops, {})


@pytest.mark.parametrize(
    "extra",
    [{"group": 0, "instance": 0}, {"group": 0, "slot": 0}, {"instance": 0, "slot": 0}],
)
def test_no_loss_rejects_an_ok_without_its_position(extra: dict[str, int]) -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a")
    w.ok(1, 1, "append", "a", **extra)
    with pytest.raises(HistoryError, match="op 1: field"):
        check_no_loss(w.ops, {})


def test_no_loss_rejects_a_completion_in_another_group_than_its_invoke() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.ok(1, 1, "append", "a", group=1, instance=0, slot=0)
    with pytest.raises(HistoryError, match="op 1: group 1 differs"):
        check_no_loss(w.ops, {})


def test_no_loss_ignores_other_operations() -> None:
    ops, logs = _two_sequential_appends()
    w = HistoryWriter()
    for op in ops:
        w.record(op.type, op.time_ms, op.process, op.f, op.value, **dict(op.extra))
    w.invoke(9, "nemesis", "partition", [["s0"], ["s1", "s2"]])
    w.invoke(9, 9, "read", None)
    w.ok(10, 9, "read", ["a", "b"])
    assert check_no_loss(w.ops, logs).ok


# --------------------------------------------------------------------------------------------
# Real-time order


def test_realtime_order_passes_for_sequential_appends_in_order() -> None:
    ops, logs = _two_sequential_appends()
    result = check_realtime_order(ops, logs)
    assert result.ok, result.summary
    assert result.details["constrained"] == 1  # only b follows a completed append
    assert _is_json(result)


def test_realtime_order_allows_concurrent_appends_in_either_order() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.invoke(1, 2, "append", "b", group=0)
    w.ok(2, 1, "append", "a", group=0, instance=1, slot=0)
    w.ok(3, 2, "append", "b", group=0, instance=0, slot=0)
    assert check_realtime_order(w.ops, {0: [(0, 0, "b"), (1, 0, "a")]}).ok


def test_realtime_order_catches_an_inversion() -> None:
    ops, _ = _two_sequential_appends()
    result = check_realtime_order(ops, {0: [(0, 0, "b"), (1, 0, "a")]})
    assert not result.ok
    assert result.details["inversions"] == 1
    assert result.details["inversions-examples"] == [
        {
            "group": 0,
            "earlier": "a",
            "earlier_completion_index": 1,
            "earlier_position": [1, 0],
            "later": "b",
            "later_invoke_index": 2,
            "later_position": [0, 0],
        }
    ]


def test_realtime_order_catches_a_later_append_joining_an_already_chosen_instance() -> None:
    ops, _ = _two_sequential_appends()
    result = check_realtime_order(ops, {0: [(0, 0, "a"), (0, 1, "b")]})
    assert not result.ok
    assert result.details["inversions"] == 1


def test_realtime_order_constrains_an_indefinite_append_that_began_later() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.ok(1, 1, "append", "a", group=0, instance=5, slot=0)
    w.invoke(2, 2, "append", "b", group=0)
    w.info(3, 2, "append", "b", group=0)
    assert not check_realtime_order(w.ops, {0: [(4, 0, "b"), (5, 0, "a")]}).ok
    assert check_realtime_order(w.ops, {0: [(5, 0, "a"), (6, 0, "b")]}).ok


def test_realtime_order_lets_an_indefinite_append_take_effect_late() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.info(1, 1, "append", "a", group=0)
    w.invoke(2, 2, "append", "b", group=0)
    w.ok(3, 2, "append", "b", group=0, instance=0, slot=0)
    assert check_realtime_order(w.ops, {0: [(0, 0, "b"), (1, 0, "a")]}).ok


def test_realtime_order_compares_only_within_a_group() -> None:
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.ok(1, 1, "append", "a", group=0, instance=9, slot=0)
    w.invoke(2, 1, "append", "b", group=1)
    w.ok(3, 1, "append", "b", group=1, instance=0, slot=0)
    assert check_realtime_order(w.ops, {0: [(9, 0, "a")], 1: [(0, 0, "b")]}).ok


def test_realtime_order_uses_the_latest_completed_append_not_the_last_one() -> None:
    # a (instance 5) completes before c (instance 3) is invoked; b (instance 1) completes
    # later but still before c: the sweep must keep the maximum, not the most recent.
    w = HistoryWriter()
    w.invoke(0, 1, "append", "a", group=0)
    w.invoke(1, 2, "append", "b", group=0)
    w.ok(2, 1, "append", "a", group=0, instance=5, slot=0)
    w.ok(3, 2, "append", "b", group=0, instance=1, slot=0)
    w.invoke(4, 3, "append", "c", group=0)
    w.ok(5, 3, "append", "c", group=0, instance=3, slot=0)
    result = check_realtime_order(w.ops, {0: [(1, 0, "b"), (3, 0, "c"), (5, 0, "a")]})
    assert not result.ok
    (example,) = _examples(result, "inversions")
    assert (example["earlier"], example["later"]) == ("a", "c")


def test_realtime_order_scales_to_a_long_sequential_history() -> None:
    # Quadratic pair-wise checking would take minutes here; the sweep takes well under a second.
    w = HistoryWriter()
    n = 30_000
    for i in range(n):
        w.invoke(2 * i, 1, "append", f"v{i}", group=0)
        w.ok(2 * i + 1, 1, "append", f"v{i}", group=0, instance=i, slot=0)
    log: list[ChosenEntry] = [(i, 0, f"v{i}") for i in range(n)]
    result = check_realtime_order(w.ops, {0: log})
    assert result.ok and result.details["constrained"] == n - 1
    log[0], log[-1] = (0, 0, log[-1][2]), (n - 1, 0, log[0][2])
    assert check_realtime_order(w.ops, {0: log}).details["inversions"] == n - 1


# --------------------------------------------------------------------------------------------
# Liveness


def _liveness_history() -> list[Op]:
    w = HistoryWriter()
    w.invoke(100, 1, "append", "a")
    w.ok(1050, 1, "append", "a", group=0, instance=0, slot=0)  # invoked before the heal
    w.invoke(1000, 2, "append", "b")
    w.info(1400, 2, "append", "b")
    w.invoke(1400, 3, "append", "c")
    w.fail(1500, 3, "append", "c")
    w.invoke(1500, 3, "append", "d")
    w.ok(1700, 3, "append", "d", group=0, instance=1, slot=0)
    w.invoke(1600, 4, "append", "e")
    w.ok(1650, 4, "append", "e", group=0, instance=1, slot=1)
    return w.ops


def test_liveness_measures_the_first_ok_of_an_op_invoked_after_the_heal() -> None:
    result = check_liveness(_liveness_history(), heal_time_ms=1000, bound_ms=650)
    assert result.ok, result.summary
    assert result.details["recovery_ms"] == 650  # e, not a (invoked before) nor d (later)
    assert result.details["first_ok_index"] == 9
    assert result.details["invoked_after_heal"] == 4
    assert _is_json(result)


def test_liveness_fails_when_the_bound_is_exceeded() -> None:
    result = check_liveness(_liveness_history(), heal_time_ms=1000, bound_ms=649)
    assert not result.ok
    assert result.details["recovery_ms"] == 650
    assert result.details["not-recovered-within-bound"] == 1


def test_liveness_fails_when_nothing_succeeds_after_the_heal() -> None:
    result = check_liveness(_liveness_history(), heal_time_ms=1601, bound_ms=10_000)
    assert not result.ok
    assert result.details["recovery_ms"] is None


def test_liveness_counts_only_the_named_operation() -> None:
    result = check_liveness(_liveness_history(), heal_time_ms=1000, bound_ms=10_000, f="read")
    assert not result.ok
    assert result.details["invoked_after_heal"] == 0


# --------------------------------------------------------------------------------------------
# Generated runs: valid histories pass every checker, each mutation trips the right one


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    ops: list[Op]
    logs: Logs
    checksums: Checksums
    ok_values: list[tuple[int, str]]
    """(group, value) of every acknowledged append, in log order per group."""
    failed_values: list[str]


def _checksums(logs: Logs, applied_below: dict[str, dict[int, int]]) -> Checksums:
    """Running CRC32 per instance; a replica applied the instances of ``group`` below
    ``applied_below[replica][group]`` (all of them if absent): whole instances, never part of one.
    """
    out: Checksums = {}
    for replica, below in applied_below.items():
        out[replica] = {}
        for group, entries in logs.items():
            running = 0
            sums: dict[int, int] = {}
            for instance, _slot, value in entries:
                if group in below and instance >= below[group]:
                    break
                running = zlib.crc32(value.encode(), running)
                sums[instance] = running
            out[replica][group] = sums
    return out


@st.composite
def runs(draw: st.DrawFn) -> Run:
    """A valid history in rounds: a few processes invoke on one group, the group chooses one
    instance holding the acknowledged values (and any indefinite ones that take effect), then
    the processes complete in any order. Indefinite appends may also take effect rounds later.
    """
    writer = HistoryWriter()
    group_count = draw(st.integers(min_value=1, max_value=3))
    logs: Logs = {g: [] for g in range(group_count)}
    next_instance = dict.fromkeys(range(group_count), 0)
    deferred: dict[int, list[str]] = {g: [] for g in range(group_count)}
    free_processes: list[int] = []
    process_count = 0
    time_ms = 0
    value_count = 0
    ok_values: list[tuple[int, str]] = []
    failed_values: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=10))):
        group = draw(st.integers(min_value=0, max_value=group_count - 1))
        batch: list[tuple[int, str, str]] = []
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            if free_processes:
                process = free_processes.pop()
            else:
                process, process_count = process_count, process_count + 1
            value, value_count = f"c{process}-{value_count}", value_count + 1
            time_ms += draw(st.integers(min_value=0, max_value=3))
            writer.invoke(time_ms, process, "append", value, group=group)
            outcome = draw(
                st.sampled_from(["ok", "ok", "fail", "info-now", "info-later", "info-never"])
            )
            batch.append((process, value, outcome))
        # The instance is chosen: late indefinite values from earlier rounds, then this batch.
        chosen = deferred[group] + [v for _, v, o in batch if o in ("ok", "info-now")]
        deferred[group] = [v for _, v, o in batch if o == "info-later"]
        instance = next_instance[group]
        slot_of = {value: slot for slot, value in enumerate(chosen)}
        if chosen:
            logs[group].extend((instance, slot, value) for value, slot in slot_of.items())
            next_instance[group] += draw(st.integers(min_value=1, max_value=2))
        for process, value, outcome in draw(st.permutations(batch)):
            time_ms += draw(st.integers(min_value=0, max_value=3))
            if outcome == "ok":
                writer.ok(
                    time_ms,
                    process,
                    "append",
                    value,
                    group=group,
                    instance=instance,
                    slot=slot_of[value],
                )
                ok_values.append((group, value))
                free_processes.append(process)
            elif outcome == "fail":
                writer.fail(time_ms, process, "append", value, group=group)
                failed_values.append(value)
                free_processes.append(process)
            elif draw(st.booleans()):
                writer.info(time_ms, process, "append", value, group=group)
            # else: left outstanding until the end of the history (also indefinite)
    lagging = {g: draw(st.integers(min_value=0, max_value=next_instance[g])) for g in logs}
    checksums = _checksums(logs, {"s0": {}, "s1": {}, "s2": lagging})
    ok_values.sort(key=lambda gv: next(e for e in logs[gv[0]] if e[2] == gv[1]))
    return Run(
        ops=writer.ops,
        logs=logs,
        checksums=checksums,
        ok_values=ok_values,
        failed_values=failed_values,
    )


def _all_checks(run: Run, logs: Logs, checksums: Checksums) -> dict[str, CheckResult]:
    return {
        "agreement": check_agreement(checksums),
        "apply-order": check_apply_order(logs),
        "no-loss": check_no_loss(run.ops, logs),
        "realtime-order": check_realtime_order(run.ops, logs),
    }


def _append_at_end(logs: Logs, group: int, value: str) -> None:
    last_instance = logs[group][-1][0] if logs[group] else -1
    logs[group].append((last_instance + 1, 0, value))


@settings(max_examples=200)
@given(runs())
def test_generated_valid_runs_pass_every_checker(run: Run) -> None:
    results = _all_checks(run, run.logs, run.checksums)
    assert all(r.ok for r in results.values()), [r.summary for r in results.values()]
    assert all(_is_json(r) for r in results.values())
    acknowledged = {v for _, v in run.ok_values}
    assert acknowledged <= set(index_chosen(run.logs))


@settings(max_examples=200)
@given(run=runs(), data=st.data())
@pytest.mark.parametrize(
    "mutation", ["drop", "duplicate", "swap", "fail-present", "unexpected", "checksum"]
)
def test_each_mutation_of_a_valid_run_trips_the_right_checker(
    mutation: str, run: Run, data: st.DataObject
) -> None:
    logs: Logs = {g: list(entries) for g, entries in run.logs.items()}
    checksums = run.checksums
    expect: tuple[str, str]
    if mutation == "drop":
        assume(run.ok_values)
        group, value = data.draw(st.sampled_from(run.ok_values))
        logs[group] = [e for e in logs[group] if e[2] != value]
        expect = ("no-loss", "lost")
    elif mutation == "duplicate":
        assume(run.ok_values)
        group, value = data.draw(st.sampled_from(run.ok_values))
        _append_at_end(logs, group, value)
        expect = ("no-loss", "duplicated")
    elif mutation == "swap":
        pairs = [
            (a, b)
            for i, a in enumerate(run.ok_values)
            for b in run.ok_values[i + 1 :]
            if a[0] == b[0] and _instance_of(logs, a) < _instance_of(logs, b)
        ]
        assume(pairs)
        (group, first), (_, second) = data.draw(st.sampled_from(pairs))
        swap = {first: second, second: first}
        logs[group] = [(i, s, swap.get(v, v)) for i, s, v in logs[group]]
        expect = ("realtime-order", "inversions")
    elif mutation == "fail-present":
        assume(run.failed_values)
        value = data.draw(st.sampled_from(run.failed_values))
        _append_at_end(logs, data.draw(st.sampled_from(sorted(logs))), value)
        expect = ("no-loss", "fail-but-present")
    elif mutation == "unexpected":
        _append_at_end(logs, data.draw(st.sampled_from(sorted(logs))), "never-invoked")
        expect = ("no-loss", "unexpected")
    else:
        shared = [
            (g, i) for g, sums in run.checksums["s0"].items() for i in sums
        ]  # s0 and s1 applied everything
        assume(shared)
        group, instance = data.draw(st.sampled_from(shared))
        checksums = {r: {g: dict(s) for g, s in per.items()} for r, per in run.checksums.items()}
        checksums["s1"][group][instance] += 1
        expect = ("agreement", "disagreements")
    results = _all_checks(run, logs, checksums)
    name, kind = expect
    assert not results[name].ok
    count = results[name].details[kind]
    assert isinstance(count, int) and count >= 1
    assert results["apply-order"].ok  # every mutation keeps positions increasing


def _instance_of(logs: Logs, group_value: tuple[int, str]) -> int:
    group, value = group_value
    return next(i for i, _, v in logs[group] if v == value)
