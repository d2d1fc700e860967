"""Property tests of the linearizability checker: generated linearizable histories pass, mutated
ones fail, the search agrees with brute force on small histories, and a 2,000-op history
finishes within its step budget.

Run ``python -m tests.test_linear_props`` to print the checker's speed on the sanity history.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.check.linear import (
    UNKNOWN,
    KVModel,
    Model,
    Operation,
    RegisterModel,
    check_operations,
)

PROPS = settings(max_examples=150, deadline=None)

Action = tuple[int, int, int]
"""(process slot, operation kind 0..2, argument): drives one process one phase forward."""


def simulate(actions: Sequence[Action], *, keys: int = 1, crash_every: int = 0) -> list[Operation]:
    """A concurrent history of clients of one atomic key-value map.

    Each action moves one process slot a phase on: idle -> invoked -> applied (the op takes
    effect atomically, its output computed from the map) -> returned. Every such history is
    linearizable (the apply order is a witness). With ``crash_every = n`` every n-th invoke
    crashes: it is applied or not (by its argument's parity) and never returns; the slot then
    continues as a fresh process. Ops still in flight at the end are info ops too.
    """
    store: dict[int, int] = {}
    phase: dict[int, int] = {}
    pending: dict[int, dict[str, Any]] = {}
    proc_of: dict[int, int] = {}
    next_proc = 100
    ops: list[Operation] = []
    clock = 0
    invokes = 0
    written = 0
    for slot, kind, arg in actions:
        clock += 1
        state = phase.get(slot, 0)
        if state == 0:
            invokes += 1
            key = arg % keys
            if kind == 0:
                inp: Any = (key, "read", None)
            elif kind == 1:
                written += 1
                inp = (key, "write", written * 1000 + arg)  # unique values
            else:
                inp = (key, "cas", (arg % 3, written * 1000 + 999))
            proc = proc_of.setdefault(slot, slot)
            pending[slot] = {"call": clock, "input": inp, "proc": proc}
            if crash_every and invokes % crash_every == 0:
                if arg % 2 == 0:
                    _apply(store, inp)
                ops.append(
                    Operation(
                        call_index=clock, return_index=None, process=proc, input=inp, output=UNKNOWN
                    )
                )
                proc_of[slot] = next_proc
                next_proc += 1
                continue
            phase[slot] = 1
        elif state == 1:
            pending[slot]["output"] = _apply(store, pending[slot]["input"])
            phase[slot] = 2
        else:
            p = pending.pop(slot)
            ops.append(
                Operation(
                    call_index=p["call"],
                    return_index=clock,
                    process=p["proc"],
                    input=p["input"],
                    output=p["output"],
                )
            )
            phase[slot] = 0
    for p in pending.values():  # still in flight when the history ends: outcome unknown
        ops.append(
            Operation(
                call_index=p["call"],
                return_index=None,
                process=p["proc"],
                input=p["input"],
                output=UNKNOWN,
            )
        )
    return ops


def _apply(store: dict[int, int], inp: Any) -> Any:
    key, kind, arg = inp
    current = store.get(key)
    if kind == "read":
        return current
    if kind == "write":
        store[key] = arg
        return None
    old, new = arg
    if current == old:
        store[key] = new
        return True
    return False


actions = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 7)), min_size=1, max_size=120
)


@PROPS
@given(actions)
def test_concurrent_histories_of_an_atomic_register_are_linearizable(acts: list[Action]) -> None:
    ops = simulate(acts)
    assert check_operations(KVModel(), ops).verdict == "ok"


@PROPS
@given(actions, st.integers(2, 5))
def test_histories_with_crashed_operations_are_linearizable(acts: list[Action], n: int) -> None:
    ops = simulate(acts, keys=2, crash_every=n)
    assert check_operations(KVModel(), ops).verdict == "ok"


@PROPS
@given(actions, st.data())
def test_a_read_of_a_value_never_written_is_caught(acts: list[Action], data: st.DataObject) -> None:
    ops = simulate(acts, keys=2, crash_every=4)
    reads = [i for i, o in enumerate(ops) if o.input[1] == "read" and o.return_index is not None]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    ops[i] = replace(ops[i], output=-1)
    result = check_operations(KVModel(), ops)
    assert result.verdict == "illegal"
    assert result.counterexample is not None
    assert result.counterexample.stuck == ops[i]


def sequential(acts: list[Action]) -> list[Operation]:
    """A history where every op invokes, applies and returns before the next one starts."""
    flat: list[Action] = []
    for slot, kind, arg in acts:
        flat += [(slot, kind, arg)] * 3
    return simulate(flat)


@PROPS
@given(actions, st.data())
def test_any_changed_output_of_a_sequential_history_is_caught(
    acts: list[Action], data: st.DataObject
) -> None:
    ops = sequential(acts)
    assert check_operations(KVModel(), ops).verdict == "ok"
    observing = [i for i, o in enumerate(ops) if o.input[1] in ("read", "cas")]
    if not observing:
        return
    i = data.draw(st.sampled_from(observing))
    o = ops[i]
    if o.input[1] == "cas":
        mutated = not o.output
    else:
        mutated = data.draw(
            st.sampled_from([None, *(x.input[2] for x in ops if x.input[1] == "write")]).filter(
                lambda v: v != o.output
            )
        )
    ops[i] = replace(o, output=mutated)
    assert check_operations(KVModel(), ops).verdict == "illegal"


# --------------------------------------------------------------------------------------------
# Agreement with brute force on small arbitrary histories


def brute_force(model: Model[Any], ops: Sequence[Operation]) -> bool:
    """Try every subset of info ops and every order consistent with real time."""
    done = [o for o in ops if o.return_index is not None]
    info = [o for o in ops if o.return_index is None]
    for r in range(len(info) + 1):
        for chosen in itertools.combinations(info, r):
            group = done + list(chosen)
            for order in itertools.permutations(group):
                if _respects_real_time(order) and _legal(model, order):
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b.return_index is not None and b.return_index < a.call_index:
                return False
    return True


def _legal(model: Model[Any], order: Sequence[Operation]) -> bool:
    state = model.init()
    for o in order:
        ok, state = model.step(state, o.input, o.output)
        if not ok:
            return False
    return True


@st.composite
def small_history(draw: st.DrawFn) -> list[Operation]:
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        call = draw(st.integers(0, 12))
        crashed = draw(st.integers(0, 4)) == 0
        ret = None if crashed else call + draw(st.integers(0, 6))
        kind = draw(st.sampled_from(["read", "write", "cas"]))
        if kind == "read":
            inp: Any = ("read", None)
            out: Any = draw(st.integers(0, 2))
        elif kind == "write":
            inp, out = ("write", draw(st.integers(0, 2))), None
        else:
            inp = ("cas", (draw(st.integers(0, 2)), draw(st.integers(0, 2))))
            out = draw(st.booleans())
        ops.append(
            Operation(
                call_index=call,
                return_index=ret,
                process=i,
                input=inp,
                output=UNKNOWN if ret is None else out,
            )
        )
    return ops


@settings(max_examples=400, deadline=None)
@given(small_history())
def test_search_agrees_with_brute_force(ops: list[Operation]) -> None:
    model = RegisterModel(0)
    expected = brute_force(model, ops)
    assert (check_operations(model, ops).verdict == "ok") == expected


# --------------------------------------------------------------------------------------------
# Performance sanity


def sanity_history(seed: int = 7, ops_count: int = 2000) -> list[Operation]:
    """``ops_count`` ops of 4 processes over 8 keys, interleaved at random (seeded)."""
    rng = random.Random(seed)
    acts: list[Action] = []
    history: list[Operation] = []
    while len(history) < ops_count:
        acts += [(rng.randrange(4), rng.randrange(3), rng.randrange(8)) for _ in range(600)]
        history = simulate(acts, keys=8)
    return history[:ops_count]


SANITY_BUDGET = 200_000


def test_two_thousand_register_ops_finish_within_the_step_budget() -> None:
    history = sanity_history()
    assert len(history) == 2000
    result = check_operations(KVModel(), history, max_steps=SANITY_BUDGET)
    assert result.verdict == "ok"
    assert result.partitions == 8
    assert 2000 <= result.steps <= SANITY_BUDGET


def main() -> None:  # pragma: no cover - a benchmark, not a test
    import time

    history = sanity_history()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        result = check_operations(KVModel(), history, max_steps=SANITY_BUDGET)
        best = min(best, time.perf_counter() - start)
    print(
        f"{len(history)} ops, {result.partitions} partitions, {result.steps} steps: "
        f"best {best * 1000:.1f} ms, {len(history) / best:,.0f} ops/s"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
