"""Property tests of the linearizability checker: generated linearizable histories pass, mutated
ones fail, the search agrees with brute force on small histories, and a 2,000-op history
finishes within its step budget; the same for the lock model (``pxq.check.lock``) on
concurrent histories of the real lock state machine (``pxq.lock.sm``).

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

from pxq import codec
from pxq.check.linear import (
    UNKNOWN,
    KVModel,
    Model,
    Operation,
    RegisterModel,
    check_operations,
)
from pxq.check.lock import LeaseLockModel, lease_alternatives, value_text
from pxq.effects import EffectsBuilder
from pxq.lock.commands import AcquireCmd, Command, ReadCmd, ReleaseCmd, RenewCmd, encode_command
from pxq.lock.messages import LockDenied, LockOk
from pxq.lock.sm import LockTable
from sim.memstore import MemoryStore

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
        crashed = draw(st.integers(0, 2)) == 0  # many info ops: the search's dominance pruning
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
# The lock model on concurrent histories of the lock state machine

LOCK_KEYS = ("a/k0", "a/k1")


def simulate_locks(actions: Sequence[Action], *, crash_every: int) -> list[Operation]:
    """A concurrent history of clients of one ``LockTable`` (the state machine itself is the
    oracle). Phases as in ``simulate``; applying a command stamps it with a clock that moves
    on by the action's argument (proposers' clocks lag at times: the table raises them), so
    leases of 20..40 ms expire along the way. Every ``crash_every``-th invoke is applied or
    not (by its argument's parity) and never returns."""
    store = MemoryStore()
    table = LockTable(store, 0)
    table.load()
    clock = 0
    time_ms = 1000
    instance = 0
    phase: dict[int, int] = {}
    pending: dict[int, dict[str, Any]] = {}
    proc_of: dict[int, int] = {}
    next_proc = 100
    made = 0
    invokes = 0
    ops: list[Operation] = []

    def apply(cmd: Command) -> LockOk | LockDenied:
        nonlocal instance
        instance += 1
        fx = EffectsBuilder()
        result = codec.decode(table.apply(instance, 0, encode_command(cmd), fx))
        store.apply(fx.writes)
        assert isinstance(result, LockOk | LockDenied)
        return result

    def command(slot: int, kind: int, arg: int) -> tuple[Command, Any]:
        nonlocal made
        key = LOCK_KEYS[arg % len(LOCK_KEYS)]
        who = f"c{slot}"
        stamp = time_ms - (15 if arg % 5 == 0 else 0)
        lease = 20 + 5 * (arg % 5)
        if kind == 0:
            made += 1
            value = f"{who}.{made}".encode() if arg % 3 else b""
            cmd: Command = AcquireCmd(
                key=key,
                holder=who,
                lease_ms=lease,
                expected_version=None,
                now_ms=stamp,
                value=value,
            )
            return cmd, ("acquire", key, who, None, lease, None, value_text(value))
        if kind == 1:
            made += 1
            renewed = f"{who}.{made}".encode() if arg % 2 else None
            version = arg % 3
            cmd = RenewCmd(
                key=key, holder=who, version=version, lease_ms=lease, now_ms=stamp, value=renewed
            )
            text = None if renewed is None else value_text(renewed)
            return cmd, ("renew", key, who, version, lease, None, text)
        if kind == 2:
            cmd = ReleaseCmd(key=key, holder=who, version=arg % 3, now_ms=stamp)
            return cmd, ("release", key, who, arg % 3, 0, None, None)
        return ReadCmd(key=key, now_ms=stamp), ("read", key, "", None, 0, None, None)

    for slot, kind, arg in actions:
        clock += 1
        time_ms += arg * 3
        state = phase.get(slot, 0)
        if state == 0:
            invokes += 1
            cmd, inp = command(slot, kind, arg)
            proc = proc_of.setdefault(slot, slot)
            if crash_every and invokes % crash_every == 0:
                if arg % 2 == 0:
                    apply(cmd)
                ops.append(
                    Operation(
                        call_index=clock, return_index=None, process=proc, input=inp, output=UNKNOWN
                    )
                )
                proc_of[slot] = next_proc
                next_proc += 1
                continue
            pending[slot] = {"call": clock, "cmd": cmd, "input": inp, "proc": proc}
            phase[slot] = 1
        elif state == 1:
            p = pending[slot]
            result = apply(p["cmd"])
            p["applied"] = (*p["input"][:5], result.at_ms, p["input"][6])
            p["output"] = (
                isinstance(result, LockOk),
                result.holder,
                result.version,
                result.expiry_ms,
                value_text(result.value),
            )
            phase[slot] = 2
        else:
            p = pending.pop(slot)
            ops.append(
                Operation(
                    call_index=p["call"],
                    return_index=clock,
                    process=p["proc"],
                    input=p["applied"],
                    output=p["output"],
                )
            )
            phase[slot] = 0
    for p in pending.values():  # still in flight: applied or not, outcome unknown
        ops.append(
            Operation(
                call_index=p["call"],
                return_index=None,
                process=p["proc"],
                input=p["input"],  # its apply time unknown
                output=UNKNOWN,
            )
        )
    return ops


def lease_verdict(ops: list[Operation]) -> str:
    return check_operations(LeaseLockModel(), lease_alternatives(ops)).verdict


lock_actions = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 9)), min_size=1, max_size=90
)


@PROPS
@given(lock_actions, st.sampled_from([0, 0, 3, 5, 8]))
def test_concurrent_histories_of_the_lock_state_machine_are_linearizable(
    acts: list[Action], crash_every: int
) -> None:
    ops = simulate_locks(acts, crash_every=crash_every)
    assert lease_verdict(ops) == "ok"


@PROPS
@given(lock_actions, st.sampled_from([0, 0, 3, 5, 8]), st.data())
def test_a_lock_answer_naming_a_value_or_version_never_given_is_caught(
    acts: list[Action], crash_every: int, data: st.DataObject
) -> None:
    ops = simulate_locks(acts, crash_every=crash_every)
    done = [i for i, o in enumerate(ops) if o.return_index is not None]
    if not done:
        return
    i = data.draw(st.sampled_from(done))
    okay, holder, version, expiry, value = ops[i].output
    if data.draw(st.booleans()):
        mutated = (okay, holder, version, expiry, "never-written")
    else:
        mutated = (okay, holder, 99, expiry, value)
    ops[i] = replace(ops[i], output=mutated)
    assert lease_verdict(ops) == "illegal"


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
