"""The linearizability checker (pxq.check.linear): the search, info operations, the budget, the
counterexample, and each model on hand-made histories."""

from __future__ import annotations

from typing import Any

import pytest

from pxq.check.history import HistoryError, HistoryWriter
from pxq.check.linear import (
    UNKNOWN,
    KVModel,
    Operation,
    QueueLogModel,
    RegisterModel,
    check_linearizable,
    check_operations,
    kv_from_history,
    operations_from_history,
    register_converter,
)
from pxq.check.lock import LeaseLockModel, lease_alternatives


def op(call: int, ret: int | None, process: int, inp: Any, out: Any = None) -> Operation:
    return Operation(
        call_index=call,
        return_index=ret,
        process=process,
        input=inp,
        output=UNKNOWN if ret is None else out,
    )


W = "write"
R = "read"


def reg(*ops: Operation) -> str:
    return check_operations(RegisterModel(0), ops).verdict


# --------------------------------------------------------------------------------------------
# Register


def test_register_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in (0, 1):
        assert reg(op(0, 3, 1, (W, 1)), op(1, 2, 2, (R, None), seen)) == "ok"


def test_register_read_after_a_completed_write_must_see_it() -> None:
    assert reg(op(0, 1, 1, (W, 1)), op(2, 3, 2, (R, None), 1)) == "ok"
    assert reg(op(0, 1, 1, (W, 1)), op(2, 3, 2, (R, None), 0)) == "illegal"


def test_register_no_going_back_after_a_newer_value_was_read() -> None:
    # p1 writes 1 for a long time; p2 reads 1, then (later) reads 0: the write cannot un-happen.
    history = [op(0, 9, 1, (W, 1)), op(1, 2, 2, (R, None), 1), op(3, 4, 2, (R, None), 0)]
    assert reg(*history) == "illegal"


def test_register_cas_outcomes_follow_the_value() -> None:
    assert reg(op(0, 1, 1, ("cas", (0, 5)), True), op(2, 3, 2, (R, None), 5)) == "ok"
    assert reg(op(0, 1, 1, ("cas", (1, 5)), False), op(2, 3, 2, (R, None), 0)) == "ok"
    assert reg(op(0, 1, 1, ("cas", (1, 5)), True)) == "illegal"
    assert reg(op(0, 1, 1, ("cas", (0, 5)), False)) == "illegal"


def test_two_concurrent_cas_on_the_same_value_cannot_both_succeed() -> None:
    both = [op(0, 3, 1, ("cas", (0, 1)), True), op(1, 2, 2, ("cas", (0, 2)), True)]
    assert reg(*both) == "illegal"
    one = [op(0, 3, 1, ("cas", (0, 1)), True), op(1, 2, 2, ("cas", (0, 2)), False)]
    assert reg(*one) == "ok"


def test_touching_operations_are_concurrent() -> None:
    # Closed intervals: a read whose call equals the write's return may precede it.
    assert reg(op(0, 2, 1, (W, 1)), op(2, 3, 2, (R, None), 0)) == "ok"


# --------------------------------------------------------------------------------------------
# Info operations: optional, at any point after their call


def test_info_write_that_was_observed_is_linearized() -> None:
    history = [op(0, None, 1, (W, 1)), op(5, 6, 2, (R, None), 1), op(7, 8, 2, (R, None), 1)]
    assert reg(*history) == "ok"


def test_info_write_that_never_took_effect_is_left_out() -> None:
    history = [op(0, None, 1, (W, 1)), op(5, 6, 2, (R, None), 0), op(7, 8, 2, (R, None), 0)]
    assert reg(*history) == "ok"


def test_info_write_may_take_effect_long_after_its_call() -> None:
    history = [op(0, None, 1, (W, 1)), op(5, 6, 2, (R, None), 0), op(7, 8, 2, (R, None), 1)]
    assert reg(*history) == "ok"


def test_info_write_cannot_take_effect_before_its_call() -> None:
    history = [op(0, 1, 2, (R, None), 1), op(5, None, 1, (W, 1))]
    assert reg(*history) == "illegal"


def test_info_write_cannot_be_undone() -> None:
    history = [
        op(0, None, 1, (W, 1)),
        op(5, 6, 2, (R, None), 1),
        op(7, 8, 2, (R, None), 0),
    ]
    assert reg(*history) == "illegal"


def test_info_read_is_dropped() -> None:
    result = check_operations(RegisterModel(0), [op(0, None, 1, (R, None)), op(1, 2, 2, (W, 3))])
    assert result.verdict == "ok"
    assert result.operations == 1


# --------------------------------------------------------------------------------------------
# Key-value map: partitions


def test_kv_keys_are_independent_partitions() -> None:
    ops = [
        op(0, 1, 1, ("a", W, 1)),
        op(2, 3, 2, ("b", R, None), None),
        op(4, 5, 2, ("a", R, None), 1),
        op(6, 7, 1, ("b", W, 2)),
    ]
    result = check_operations(KVModel(), ops)
    assert (result.verdict, result.partitions) == ("ok", 2)


def test_kv_counterexample_names_the_partition_and_the_stuck_read() -> None:
    ops = [
        op(0, 1, 1, ("a", W, 1)),
        op(2, 3, 1, ("b", W, 7)),
        op(4, 5, 2, ("b", R, None), 7),
        op(6, 7, 2, ("b", R, None), None),  # stale: b was written before
        op(8, 9, 2, ("b", W, 8)),
        op(10, 11, 2, ("b", R, None), 8),
    ]
    result = check_operations(KVModel(), ops)
    assert result.verdict == "illegal"
    cx = result.counterexample
    assert cx is not None
    assert cx.partition == 1
    assert cx.stuck.call_index == 6
    # The minimal prefix stops at the stuck read: later operations are not in it.
    assert [o.call_index for o in cx.operations] == [2, 4, 6]
    assert [o.call_index for o in cx.longest] == [2, 4]
    check = result.to_check_result(KVModel())
    assert not check.ok
    assert check.details["verdict"] == "illegal"
    assert "op 6" in check.summary


def test_counterexample_keeps_operations_concurrent_with_the_stuck_one_as_info() -> None:
    # The write returns after the bad read's return: in the minimal prefix it is info.
    ops = [op(0, 1, 1, (W, 1)), op(2, 9, 1, (W, 2)), op(3, 4, 2, (R, None), 5)]
    result = check_operations(RegisterModel(0), ops)
    cx = result.counterexample
    assert cx is not None
    assert cx.stuck.call_index == 3
    assert [(o.call_index, o.return_index) for o in cx.operations] == [(0, 1), (2, None), (3, 4)]


# --------------------------------------------------------------------------------------------
# Budget


def test_exhausted_budget_answers_unknown_not_ok() -> None:
    ops = [op(2 * i, 2 * i + 1, 1, (W, i)) for i in range(50)]
    assert check_operations(RegisterModel(0), ops, max_steps=1000).verdict == "ok"
    result = check_operations(RegisterModel(0), ops, max_steps=10)
    assert result.verdict == "unknown"
    assert result.unknown_partition == 0
    check = check_linearizable(RegisterModel(0), ops, max_steps=10)
    assert not check.ok
    assert check.details["verdict"] == "unknown"


def test_each_key_is_decided_on_its_own_budget_and_an_illegal_key_wins() -> None:
    # Key "hard" needs many steps; key "bad" is illegal. Searched in order under one shared
    # budget, "hard" would exhaust it and hide "bad": each key now has its own.
    hard = [op(2 * i, 2 * i + 1, 1, ("hard", W, i)) for i in range(50)]
    bad = [op(200, 201, 2, ("bad", W, 1)), op(202, 203, 3, ("bad", R, None), 7)]
    result = check_operations(KVModel(), [*hard, *bad], max_steps=20)
    assert result.verdict == "illegal"
    assert result.unknown_partitions == (0,)
    assert result.illegal_partitions == (1,)
    assert result.counterexample is not None and result.counterexample.stuck.call_index == 202
    summary = result.to_check_result(KVModel()).summary
    assert "FAILED" in summary and "op 202" in summary


def test_unknown_lists_every_partition_that_ran_out_and_decides_the_others() -> None:
    ops = [op(2 * i, 2 * i + 1, 1, (k, W, i)) for k in ("a", "b", "c") for i in range(40)]
    ops += [op(500, 501, 2, ("d", W, 1))]
    result = check_operations(KVModel(), ops, max_steps=10)
    assert result.verdict == "unknown"
    assert result.unknown_partitions == (0, 1, 2)
    assert "3 of 4 partitions" in result.to_check_result(KVModel()).summary


def test_a_shrink_cut_short_by_the_budget_says_so_instead_of_blaming_the_last_op() -> None:
    # The bad read comes early; 30 good writes follow it. A budget that lets the search find
    # the violation but not finish shrinking reports a non-minimal window.
    ops = [op(0, 1, 1, (W, 1)), op(2, 3, 2, (R, None), 5)]
    ops += [op(4 + 2 * i, 5 + 2 * i, 1, (W, i)) for i in range(30)]
    full = check_operations(RegisterModel(0), ops)
    assert full.counterexample is not None and full.counterexample.minimal
    assert full.counterexample.stuck.call_index == 2
    for steps in range(1, 200):
        result = check_operations(RegisterModel(0), ops, max_steps=steps)
        cx = result.counterexample
        if result.verdict == "illegal" and cx is not None and not cx.minimal:
            summary = result.to_check_result(RegisterModel(0)).summary
            assert "budget ran out while shrinking" in summary
            assert "cannot be linearized" not in summary
            break
    else:
        pytest.fail("no budget cut the shrinking short")


def test_kv_converter_refuses_what_it_does_not_know() -> None:
    h = HistoryWriter()
    h.invoke(0, 1, "get", None, key="k")
    h.ok(1, 1, "get", 1, key="k")
    with pytest.raises(HistoryError, match=r"op 0: f='get' is not a register operation"):
        operations_from_history(h.ops, kv_from_history)
    h = HistoryWriter()
    h.invoke(0, 1, "write", 1)
    h.ok(1, 1, "write", 1)
    with pytest.raises(HistoryError, match="op 0: write without a key field"):
        operations_from_history(h.ops, kv_from_history)


def test_a_nil_read_is_a_value_or_unknown_as_asked() -> None:
    h = HistoryWriter()
    h.invoke(0, 1, "write", 3)
    h.ok(1, 1, "write", 3)
    h.invoke(2, 2, "read", None)
    h.ok(3, 2, "read", None)
    as_value = operations_from_history(h.ops, register_converter())
    assert check_operations(RegisterModel(None), as_value).verdict == "illegal"
    as_unknown = operations_from_history(h.ops, register_converter(nil_read_unknown=True))
    assert check_operations(RegisterModel(None), as_unknown).verdict == "ok"


def test_operation_returning_before_its_call_is_rejected() -> None:
    with pytest.raises(ValueError, match="returns before"):
        check_operations(RegisterModel(0), [op(5, 4, 1, (W, 1))])


def test_empty_history_is_linearizable() -> None:
    result = check_operations(KVModel(), [])
    assert (result.verdict, result.partitions, result.steps) == ("ok", 0, 0)


# --------------------------------------------------------------------------------------------
# History adapter


def test_operations_from_history_drops_fail_and_marks_info() -> None:
    h = HistoryWriter()
    h.invoke(0, 1, "write", 1, key="k")
    h.invoke(1, 2, "cas", [0, 2], key="k")
    h.ok(2, 1, "write", 1, key="k")
    h.fail(3, 2, "cas", [0, 2], key="k")
    h.invoke(4, 3, "read", None, key="k")
    h.ok(5, 3, "read", 1, key="k")
    h.invoke(6, 4, "write", 9, key="k")
    h.info(7, 4, "write", 9, key="k")
    h.invoke(8, 5, "write", 10, key="k")  # never completed
    h.invoke(9, "nemesis", "partition", None)
    ops = operations_from_history(h.ops, kv_from_history)
    assert [(o.call_index, o.return_index, o.input, o.output) for o in ops] == [
        (0, 2, ("k", "write", 1), None),
        (4, 5, ("k", "read", None), 1),
        (6, None, ("k", "write", 9), UNKNOWN),
        (8, None, ("k", "write", 10), UNKNOWN),
    ]
    assert check_linearizable(KVModel(), ops).ok


# --------------------------------------------------------------------------------------------
# Lock service model (pxq.check.lock.LeaseLockModel, through the generic search)


def acq(
    key: str, who: str, lease: int, at: int | None, expected: int | None = None, value: str = ""
) -> Any:
    return ("acquire", key, who, expected, lease, at, value)


def renew(
    key: str, who: str, version: int, lease: int, at: int | None, value: str | None = None
) -> Any:
    return ("renew", key, who, version, lease, at, value)


def rel(key: str, who: str, version: int, at: int | None) -> Any:
    return ("release", key, who, version, 0, at, None)


def rd(key: str, at: int | None) -> Any:
    return ("read", key, "", None, 0, at, None)


def out(ok: bool, holder: str, version: int | None, expiry: int, value: str = "") -> Any:
    return (ok, holder, version, expiry, value)


def lock(*ops: Operation) -> str:
    return check_operations(LeaseLockModel(), lease_alternatives(ops)).verdict


def test_lock_grant_denial_and_expiry() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(2, 3, 2, acq("k", "b", 100, 50), out(False, "a", 1, 110)),
        op(4, 5, 2, acq("k", "b", 100, 110), out(True, "b", 2, 210)),
        op(6, 7, 1, renew("k", "a", 1, 100, 120), out(False, "b", 2, 210)),
    ]
    assert lock(*history) == "ok"


def test_lock_two_holders_with_valid_leases_are_refused() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(2, 3, 2, acq("k", "b", 100, 50), out(True, "b", 2, 150)),
    ]
    assert lock(*history) == "illegal"


def test_lock_version_may_not_skip_or_repeat() -> None:
    first = op(0, 1, 1, acq("k", "a", 10, 0), out(True, "a", 1, 10))
    assert lock(first, op(2, 3, 2, acq("k", "b", 10, 20), out(True, "b", 3, 30))) == "illegal"
    assert lock(first, op(2, 3, 2, acq("k", "b", 10, 20), out(True, "b", 1, 30))) == "illegal"
    assert lock(first, op(2, 3, 2, acq("k", "b", 10, 20), out(True, "b", 2, 30))) == "ok"


def test_lock_release_frees_at_once_and_keeps_the_version() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 1000, 0), out(True, "a", 1, 1000)),
        op(2, 3, 1, rel("k", "a", 1, 5), out(True, "", 1, 0)),
        op(4, 5, 2, rd("k", 6), out(True, "", 1, 0)),
        op(6, 7, 2, acq("k", "b", 1000, 7), out(True, "b", 2, 1007)),
    ]
    assert lock(*history) == "ok"


def test_lock_reacquire_by_the_holder_keeps_the_token() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 100, 0), out(True, "a", 1, 100)),
        op(2, 3, 1, acq("k", "a", 100, 50), out(True, "a", 1, 150)),
        op(4, 5, 1, renew("k", "a", 1, 100, 60), out(True, "a", 1, 160)),
    ]
    assert lock(*history) == "ok"


def test_lock_takeover_with_expected_version() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 100, 0), out(True, "a", 1, 100)),
        op(2, 3, 2, acq("k", "b", 100, 10, expected=1), out(True, "b", 2, 110)),
    ]
    assert lock(*history) == "ok"
    wrong = [history[0], op(2, 3, 2, acq("k", "b", 100, 10, expected=0), out(True, "b", 2, 110))]
    assert lock(*wrong) == "illegal"


def test_lock_time_does_not_go_back_in_the_linearization() -> None:
    # Concurrent acquires: b's grant at 150 must come after a's at 10 (it expired a's lease);
    # a later read at 120 would put time back.
    history = [
        op(0, 5, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(1, 6, 2, acq("k", "b", 100, 150), out(True, "b", 2, 250)),
        op(7, 8, 3, rd("k", 120), out(True, "b", 2, 250)),
    ]
    assert lock(*history) == "illegal"


def test_lock_info_acquire_both_ways() -> None:
    took = [
        op(0, None, 1, acq("k", "a", 100, None)),
        op(5, 6, 2, acq("k", "b", 100, 20), out(False, "a", 1, 100)),
    ]
    assert lock(*took) == "ok"
    never = [
        op(0, None, 1, acq("k", "a", 100, None)),
        op(5, 6, 2, acq("k", "b", 100, 20), out(True, "b", 1, 120)),
    ]
    assert lock(*never) == "ok"


def test_lock_concurrent_acquires_one_wins() -> None:
    history = [
        op(0, 3, 1, acq("k", "a", 100, 5), out(False, "b", 1, 105)),
        op(1, 2, 2, acq("k", "b", 100, 5), out(True, "b", 1, 105)),
    ]
    assert lock(*history) == "ok"


def test_lock_info_acquire_may_apply_later_than_the_latest_time_seen() -> None:
    # a's acquire has an unknown outcome; b's denial at 550 names an expiry of 600: a's grant
    # was applied at 500, long after the last time seen before it (0). Applying it at 0 would
    # end its lease at 100 and could not explain the denial.
    history = [
        op(0, 1, 9, rd("k", 0), out(True, "", 0, 0)),
        op(2, None, 1, acq("k", "a", 100, None)),
        op(5, 6, 2, acq("k", "b", 100, 550), out(False, "a", 1, 600)),
        op(7, 8, 2, acq("k", "b", 100, 700), out(True, "b", 2, 800)),
    ]
    assert lock(*history) == "ok"
    # Not earlier than its call allows, though: an expiry below (time seen + lease) is refused.
    early = [*history[:2], op(5, 6, 2, acq("k", "b", 100, 10), out(False, "a", 1, 50))]
    assert lock(*early) == "illegal"


def test_lock_info_release_frees_the_key_or_is_left_out() -> None:
    grant = op(0, 1, 1, acq("k", "a", 1000, 0), out(True, "a", 1, 1000))
    release = op(2, None, 1, rel("k", "a", 1, None))
    freed = op(5, 6, 2, acq("k", "b", 1000, 10), out(True, "b", 2, 1010))
    held = op(5, 6, 2, acq("k", "b", 1000, 10), out(False, "a", 1, 1000))
    assert lock(grant, release, freed) == "ok"
    assert lock(grant, release, held) == "ok"
    assert lock(grant, freed) == "illegal"  # without the release, a's lease still holds


def test_lock_values_follow_grants_and_renewals() -> None:
    history = [
        op(0, 1, 1, acq("k", "a", 100, 0, value="v1"), out(True, "a", 1, 100, "v1")),
        op(2, 3, 1, renew("k", "a", 1, 100, 10), out(True, "a", 1, 110, "v1")),
        op(4, 5, 1, renew("k", "a", 1, 100, 20, value="v2"), out(True, "a", 1, 120, "v2")),
        op(6, 7, 2, rd("k", 30), out(True, "a", 1, 120, "v2")),
        op(8, 9, 2, rd("k", 120), out(True, "", 1, 0, "")),
    ]
    assert lock(*history) == "ok"
    stale = [*history[:3], op(6, 7, 2, rd("k", 30), out(True, "a", 1, 120, "v1"))]
    assert lock(*stale) == "illegal"
    # A concurrent read may see either value.
    racing = [*history[:2], history[2], op(3, 7, 2, rd("k", 15), out(True, "a", 1, 110, "v1"))]
    assert lock(*racing) == "ok"


def test_lock_a_read_of_unknown_version_matches_only_a_free_key() -> None:
    grant = op(0, 1, 1, acq("k", "a", 100, 0), out(True, "a", 1, 100))
    assert lock(grant, op(2, 3, 2, rd("k", 100), out(True, "", None, 0))) == "ok"
    assert lock(grant, op(2, 3, 2, rd("k", 50), out(True, "", None, 0))) == "illegal"


def test_lock_keys_are_independent() -> None:
    history = [
        op(0, 1, 1, acq("k1", "a", 100, 0), out(True, "a", 1, 100)),
        op(2, 3, 2, acq("k2", "b", 100, 10), out(True, "b", 1, 110)),
        op(4, 5, 1, rd("k2", 20), out(True, "b", 1, 110)),
    ]
    assert lock(*history) == "ok"
    assert check_operations(LeaseLockModel(), lease_alternatives(history)).partitions == 2


# --------------------------------------------------------------------------------------------
# Queue log model


def test_queue_log_appends_get_dense_offsets() -> None:
    history = [
        op(0, 3, 1, ("append", "q", "x"), 1),
        op(1, 2, 2, ("append", "q", "y"), 0),
        op(4, 5, 3, ("read", "q", 0), "y"),
        op(6, 7, 3, ("read", "q", 1), "x"),
        op(8, 9, 3, ("read", "q", 2), None),
    ]
    assert check_operations(QueueLogModel(), history).verdict == "ok"


def test_queue_log_two_appends_at_one_offset_are_refused() -> None:
    history = [op(0, 3, 1, ("append", "q", "x"), 0), op(1, 2, 2, ("append", "q", "y"), 0)]
    assert check_operations(QueueLogModel(), history).verdict == "illegal"


def test_queue_log_read_must_match_the_append() -> None:
    history = [op(0, 1, 1, ("append", "q", "x"), 0), op(2, 3, 2, ("read", "q", 0), "z")]
    assert check_operations(QueueLogModel(), history).verdict == "illegal"


def test_queue_log_an_offset_read_as_missing_cannot_have_existed_before() -> None:
    history = [op(0, 1, 1, ("append", "q", "x"), 0), op(2, 3, 2, ("read", "q", 0), None)]
    assert check_operations(QueueLogModel(), history).verdict == "illegal"


def test_queue_log_info_append_both_ways() -> None:
    seen = [
        op(0, None, 1, ("append", "q", "x")),
        op(2, 3, 2, ("append", "q", "y"), 1),
        op(4, 5, 2, ("read", "q", 0), "x"),
    ]
    assert check_operations(QueueLogModel(), seen).verdict == "ok"
    unseen = [
        op(0, None, 1, ("append", "q", "x")),
        op(2, 3, 2, ("append", "q", "y"), 0),
        op(4, 5, 2, ("read", "q", 0), "y"),
    ]
    assert check_operations(QueueLogModel(), unseen).verdict == "ok"


def test_queue_log_queues_are_partitions() -> None:
    history = [op(0, 1, 1, ("append", "a", "x"), 0), op(2, 3, 2, ("append", "b", "y"), 0)]
    result = check_operations(QueueLogModel(), history)
    assert (result.verdict, result.partitions) == ("ok", 2)


def test_a_read_older_than_a_completed_grant_is_decided_by_its_witness_without_search() -> None:
    # A deposed master's stale read: it shows version 1 after b's grant of version 2 returned.
    # Many info acquires around it would make the search explode; the witness needs none.
    history = [
        op(0, 1, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(2, 3, 2, acq("k", "b", 100, 120), out(True, "b", 2, 220)),
        *[op(4 + i, None, 10 + i, acq("k", f"c{i}", 100, None)) for i in range(40)],
        op(50, 51, 3, rd("k", 15), out(True, "a", 1, 110)),
    ]
    result = check_operations(LeaseLockModel(), lease_alternatives(history))
    assert result.verdict == "illegal"
    assert result.steps == 0
    cx = result.counterexample
    assert cx is not None and cx.witness is not None
    assert [o.call_index for o in cx.witness] == [2, 50]
    assert cx.stuck.call_index == 50
    text = result.to_check_result(LeaseLockModel()).summary
    assert "shows an older state than" in text and "(op 2)" in text and "(op 50)" in text


def test_a_lower_rank_in_a_concurrent_operation_is_no_witness() -> None:
    # The same stale-looking read, but called before b's grant returned: it may come first.
    history = [
        op(0, 1, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(2, 6, 2, acq("k", "b", 100, 120), out(True, "b", 2, 220)),
        op(4, 5, 3, rd("k", 15), out(True, "a", 1, 110)),
    ]
    result = check_operations(LeaseLockModel(), lease_alternatives(history))
    assert result.verdict == "ok"
    assert result.steps > 0


def test_a_witness_in_a_later_partition_is_found_before_an_earlier_one_is_searched() -> None:
    # Key "j" has a history too wide for the budget; key "k" has a witness: illegal, not unknown.
    wide = [op(i, None, 100 + i, acq("j", f"w{i}", 100, None)) for i in range(30)]
    wide.append(op(40, 41, 99, rd("j", 5), out(True, "", 0, 0)))
    stale = [
        op(42, 43, 1, acq("k", "a", 100, 10), out(True, "a", 1, 110)),
        op(44, 45, 2, rd("k", 5), out(True, "", 0, 0)),
    ]
    result = check_operations(LeaseLockModel(), lease_alternatives(wide + stale), max_steps=10)
    assert result.verdict == "illegal"
    assert result.illegal_partitions == (1,)
    assert result.unknown_partitions == ()
