"""Linearizability checking: a Wing-Gong-Lowe search with Porcupine's optimisations, and models.

This module owns the generic checker (``check_operations``, ``check_linearizable``), the
``Operation`` record it searches over, the adapter from Jepsen histories
(``operations_from_history``), and the sequential specifications (models) of the register,
the key-value map and the queue log. The lock service's model, which needs to place
operations of unknown outcome at an unknown time, is ``pxq.check.lock.LeaseLockModel``.

The search (Wing & Gong 1993, with Lowe's memoisation, as Porcupine does it):

* **P-compositionality.** A model splits the operations into independent partitions (per key,
  per queue); the history is linearizable iff every partition is, so each is searched alone.
* **Data layout.** Calls and returns are entries of a doubly linked list held in flat ``list``
  arrays; linearizing an operation lifts its call and return out of the list in O(1), and
  backtracking puts them back. At equal positions calls sort before returns (closed
  intervals: operations that touch are concurrent).
* **Memoisation.** The set of linearized operations is an ``int`` bitset; a configuration
  ``(bitset, model state)`` that was reached before is not explored again, so model states
  must be hashable and compare by value.
* **Info operations** (``return_index is None``: the outcome is unknown) are optional, as in
  Knossos: they have no return entry, so they may be linearized at any point after their
  call, or never. The search succeeds once every *completed* operation is linearized. Info
  operations that a model calls ``read_only`` are dropped up front: they cannot change state,
  so including them never helps. Alternatives of one info operation share a ``choice``: once
  one is linearized the others are not offered.
* **Dominance of info operations.** A configuration is (completed operations linearized,
  info operations used, model state). One that reaches a (completed set, state) pair already
  reached with a *subset* of its info operations used is pruned: every continuation of it is
  also a continuation of the earlier one, which had at least the same info operations left
  to use. This subsumes the exact memo and is what keeps histories with many info operations
  (a lock service under faults) searchable: the order in which unobserved info operations are
  applied, or whether they are at all, no longer multiplies the search.
* **Budget.** ``max_steps`` bounds the model steps of each partition's search, and again of
  each illegal partition's counterexample search (there is no clock in the pure core).
  Every partition is decided on its own budget: one that runs out is ``"unknown"``, never a
  hang, and does not keep the others from being decided. The verdict is ``"illegal"`` as
  soon as a partition is illegal (whatever the ones before it; the ones after it are not
  searched), else ``"unknown"`` if any ran out, else ``"ok"``.
* **Completed first.** Each configuration offers its completed candidates before its info
  candidates (a second pass over the same calls): a linearization that needs no more info
  operations is found before any is tried. The set explored is the same, only its order;
  on the hardest lock histories the swarm produced this cut the steps from 1.3-2.5 M to a
  few hundred.
* **Rank witnesses.** A model may name quantities of an operation (``ranks``) that never
  decrease along any legal sequential history of a partition (the lock service's fencing
  version and apply time). Before searching a partition the checker looks for two completed
  operations A and B where A returned before B was called, yet one of B's ranks is lower
  than A's: every linearization puts A before B, so none is legal. Such a pair decides the
  partition illegal in O(n log n), however many info operations would make the search
  explode (a deposed master serving stale reads), and is reported as the counterexample's
  ``witness``.
* **Counterexample.** For an illegal partition the checker searches for the shortest prefix
  of it (cut at a return) that is already illegal: an operation that returned before the cut
  stays as it was, one that returned after it becomes an info operation. Illegality is
  monotone in the cut, so a binary search finds the smallest one; the operation returning
  just before the cut is the one that cannot be linearized (``stuck``). The report also
  carries the longest partial linearization the search reached on that prefix. When the
  budget runs out during that binary search, the smallest illegal prefix found so far is
  reported with ``minimal=False``: its last return bounds where the failure lies, and the
  report says so instead of blaming that operation.

Verdicts map onto ``CheckResult`` with ``ok=True`` only for ``"ok"``: an ``"unknown"`` result
is not a pass (``details["verdict"]`` tells it apart from ``"illegal"``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeAlias, TypeVar

from pxq.check.history import JSON, HistoryError, Op, Process, pair_ops
from pxq.check.result import CheckResult

S = TypeVar("S", bound=Hashable)

Verdict: TypeAlias = Literal["ok", "illegal", "unknown"]

MAX_STEPS_DEFAULT: Final = 1_000_000
"""Model steps the search of one partition may take before it is ``"unknown"``."""

DOMINATORS_MAX: Final = 8
"""Info-operation sets kept per (completed set, state) for the dominance check: the check
stays O(1) per step, so the step budget bounds the time too."""

COUNTEREXAMPLE_OPS_MAX: Final = 24
"""Operations of the minimal failing prefix listed in a report (the latest ones by call)."""


class _Unknown:
    """The output of an operation whose outcome is unknown (an info operation)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""The ``output`` of every info operation; models must accept any outcome for it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One operation to linearize.

    ``call_index`` and ``return_index`` are positions in the history (or any integer clock on
    which every process's operations do not overlap); ``return_index`` is None for an
    operation whose outcome is unknown (its ``output`` is then ``UNKNOWN``). ``input`` and
    ``output`` are what the model's ``step`` receives; they must be hashable.
    """

    call_index: int
    return_index: int | None
    process: Process
    input: Any
    output: Any
    choice: int = -1
    """Operations of unknown outcome with the same ``choice`` (>= 0) are alternatives of one
    operation (for instance an effect on either side of a lease): at most one of them is
    linearized."""

    def to_json(self, model: Model[Any] | None = None) -> dict[str, JSON]:
        """A JSON-compatible description (the model's, when given)."""
        text = (
            model.describe(self.input, self.output)
            if model is not None
            else f"{self.input!r} -> {self.output!r}"
        )
        return {
            "call_index": self.call_index,
            "return_index": self.return_index,
            "process": self.process,
            "op": text,
        }


class Model(Protocol[S]):
    """A sequential specification. ``step`` must be a pure function of its arguments."""

    name: str

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, input: Any, output: Any) -> tuple[bool, S]:
        """Whether ``input`` applied to ``state`` can answer ``output`` (any answer when it is
        ``UNKNOWN``), and the state after it."""
        ...

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        """Independent parts of ``ops`` (deterministic order); ``[list(ops)]`` if there are none."""
        ...

    def read_only(self, input: Any) -> bool:
        """Whether ``input`` never changes the state (an info read can then be dropped)."""
        ...

    def describe(self, input: Any, output: Any) -> str:
        """A short human-readable form of one operation."""
        ...

    def ranks(self, input: Any, output: Any) -> tuple[int | None, ...]:
        """Quantities of a completed operation that never decrease along any legal sequential
        history of its partition, each on its own (None: this operation does not show it);
        ``()`` when the model has none."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Counterexample:
    """Why one partition is not linearizable."""

    partition: int
    """Index of the partition in the model's ``partition`` order."""
    stuck: Operation
    """The operation that cannot be linearized after the ones that returned before it."""
    operations: tuple[Operation, ...]
    """The minimal illegal prefix of the partition (ops returning after the cut are info)."""
    longest: tuple[Operation, ...]
    """The longest partial linearization the search reached on that prefix, in order."""
    minimal: bool = True
    """Whether ``operations`` is the smallest illegal prefix. False when the budget ran out
    while shrinking: the failure lies at or before ``stuck``'s return, not necessarily at
    ``stuck`` itself."""
    witness: tuple[Operation, Operation] | None = None
    """A rank witness (A, B), when that is how the partition was decided: A returned before B
    was called, yet B shows a lower rank; ``stuck`` is B and ``operations`` the partition cut
    at B's return (not searched for a smaller illegal prefix)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Linearization:
    """The outcome of ``check_operations``."""

    verdict: Verdict
    steps: int
    """Model steps taken (including the counterexample search)."""
    partitions: int
    operations: int
    counterexample: Counterexample | None = None
    """The first illegal partition's (verdict ``"illegal"``)."""
    unknown_partitions: tuple[int, ...] = ()
    """Every partition whose search ran out of its budget (any verdict but ``"ok"``: an
    illegal verdict may come with partitions left undecided)."""
    illegal_partitions: tuple[int, ...] = ()
    """The partition found illegal (the search stops there)."""

    @property
    def unknown_partition(self) -> int | None:
        """The first partition that ran out of budget, if any."""
        return self.unknown_partitions[0] if self.unknown_partitions else None

    def to_check_result(self, model: Model[Any], name: str = "linearizable") -> CheckResult:
        """This outcome as a ``CheckResult`` (``ok`` only for the verdict ``"ok"``)."""
        details: dict[str, object] = {
            "model": model.name,
            "verdict": self.verdict,
            "steps": self.steps,
            "partitions": self.partitions,
            "operations": self.operations,
        }
        if self.unknown_partitions:
            details["unknown-partitions"] = list(self.unknown_partitions)
        if self.verdict == "unknown":
            listed = ", ".join(str(p) for p in self.unknown_partitions[:8])
            more = len(self.unknown_partitions) - 8
            summary = (
                f"{name}: UNKNOWN, step budget exhausted in "
                f"{len(self.unknown_partitions)} of {self.partitions} partitions "
                f"({listed}{f', +{more}' if more > 0 else ''}); the others are linearizable"
            )
        elif self.verdict == "illegal":
            cx = self.counterexample
            if cx is None:  # pragma: no cover - an illegal verdict always carries one
                raise ValueError("illegal verdict without a counterexample")
            where = (
                _witness_text(model, cx.witness)
                if cx.witness is not None
                else f"{model.describe(cx.stuck.input, cx.stuck.output)} "
                f"(op {cx.stuck.call_index}) cannot be linearized"
                if cx.minimal
                else f"not linearizable up to the return of op {cx.stuck.call_index} "
                "(the step budget ran out while shrinking: the failure lies at or before it)"
            )
            summary = f"{name}: FAILED, partition {cx.partition}: {where}"
            shown = sorted(cx.operations, key=lambda o: o.call_index)[-COUNTEREXAMPLE_OPS_MAX:]
            details["illegal-partitions"] = list(self.illegal_partitions)
            counterexample: dict[str, object] = {
                "partition": cx.partition,
                "minimal": cx.minimal,
                "stuck": cx.stuck.to_json(model),
                "prefix-operations": len(cx.operations),
                "operations": [o.to_json(model) for o in shown],
                "longest-linearization": [
                    o.to_json(model) for o in cx.longest[-COUNTEREXAMPLE_OPS_MAX:]
                ],
            }
            if cx.witness is not None:
                counterexample["witness"] = [o.to_json(model) for o in cx.witness]
            details["counterexample"] = counterexample
        else:
            summary = f"{name}: ok, {self.operations} ops in {self.partitions} partitions"
        return CheckResult(name=name, ok=self.verdict == "ok", summary=summary, details=details)


def _witness_text(model: Model[Any], witness: tuple[Operation, Operation]) -> str:
    first, later = witness
    return (
        f"{model.describe(later.input, later.output)} (op {later.call_index}) shows an older "
        f"state than {model.describe(first.input, first.output)} (op {first.call_index}), "
        "which returned before it was called"
    )


# --------------------------------------------------------------------------------------------
# The search


def _rank_witness(
    model: Model[Any], ops: Sequence[Operation]
) -> tuple[Operation, Operation] | None:
    """Two completed operations A, B of one partition with A returning before B's call and a
    rank of B below the same rank of A (module docstring, "Rank witnesses"), the one with the
    earliest-returning B; None if there is none."""
    ranked = [(op, model.ranks(op.input, op.output)) for op in ops if op.return_index is not None]
    if not any(ranks for _, ranks in ranked):
        return None
    by_return = sorted(ranked, key=lambda r: r[0].return_index or 0)
    best: list[tuple[int, Operation]] = []  # per rank: the highest one returned so far
    found: tuple[Operation, Operation] | None = None
    i = 0
    for op, ranks in sorted(ranked, key=lambda r: r[0].call_index):
        while i < len(by_return) and (by_return[i][0].return_index or 0) < op.call_index:
            done, done_ranks = by_return[i]
            for k, rank in enumerate(done_ranks):
                while len(best) <= k:
                    best.append((-1, done))
                if rank is not None and rank > best[k][0]:
                    best[k] = (rank, done)
            i += 1
        if found is not None and (op.return_index or 0) >= (found[1].return_index or 0):
            continue
        for k, rank in enumerate(ranks):
            if rank is not None and k < len(best) and rank < best[k][0]:
                found = (best[k][1], op)
                break
    return found


class _BudgetExhausted(Exception):
    pass


@dataclass(slots=True)
class _Budget:
    left: int
    used: int = 0


def _search(model: Model[Any], ops: Sequence[Operation], budget: _Budget) -> tuple[bool, list[int]]:
    """WGL over one partition: (linearizable, the longest (partial) linearization reached, as
    indexes into ``ops``). Raises ``_BudgetExhausted`` when the budget runs out."""
    n = len(ops)
    events: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call_index, 0, i))
        if op.return_index is not None:
            events.append((op.return_index, 1, i))
    events.sort()
    m = len(events)
    # Entry 0 is the list head; entries 1..m are the events; -1 ends the list.
    nxt = [*range(1, m + 1), -1]
    prv = [-1, *range(m)]
    op_of = [-1] * (m + 1)
    is_call = [False] * (m + 1)
    ret_entry = [-1] * n
    call_entry = [-1] * n
    for e, (_, kind, i) in enumerate(events, start=1):
        op_of[e] = i
        if kind == 0:
            is_call[e] = True
            call_entry[i] = e
        else:
            ret_entry[i] = e
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]
    # A completed op's bit goes into ``done``; an info op's into ``used``, as the bit of the
    # first op of its choice (alternatives share it, so one excludes the others).
    done_bit = [0] * n
    used_bit = [0] * n
    first_of_choice: dict[int, int] = {}
    for i, op in enumerate(ops):
        if op.return_index is not None:
            done_bit[i] = 1 << i
        elif op.choice >= 0:
            used_bit[i] = 1 << first_of_choice.setdefault(op.choice, i)
        else:
            used_bit[i] = 1 << i
    remaining = sum(1 for op in ops if op.return_index is not None)
    step = model.step
    state = model.init()
    done = used = 0
    # (done, state) -> the first ``used`` sets it was reached with (none a superset of
    # another's), at most DOMINATORS_MAX of them so that a step costs O(1); every
    # configuration reached is also in ``exact`` (the plain memo).
    seen: dict[tuple[int, Hashable], list[int]] = {(0, state): [0]}
    exact: set[tuple[tuple[int, Hashable], int]] = {((0, state), 0)}
    stack: list[tuple[int, Any, int, int, bool]] = []
    longest: list[int] = []
    left = budget.left
    steps = 0
    entry = nxt[0]
    # Each configuration offers its completed candidates first, then (a second pass over the
    # same calls) its info candidates: a linearization that needs no more info operations is
    # found before any is tried (the set explored is the same, only the order changes).
    info_pass = False
    while remaining:
        if entry == -1 or not is_call[entry]:
            if not info_pass:
                info_pass = True
                entry = nxt[0]
                continue
            if not stack:
                budget.left = left - steps
                budget.used += steps
                return False, longest
            entry, state, done, used, info_pass = stack.pop()
            i = op_of[entry]
            r = ret_entry[i]
            if r != -1:  # unlift in reverse order: the return, then the call
                remaining += 1
                nxt[prv[r]] = r
                if nxt[r] != -1:
                    prv[nxt[r]] = r
            nxt[prv[entry]] = entry
            if nxt[entry] != -1:
                prv[nxt[entry]] = entry
            entry = nxt[entry]
            continue
        i = op_of[entry]
        if (done_bit[i] == 0) != info_pass or used & used_bit[i]:
            entry = nxt[entry]  # not this pass's kind, or an alternative of it was linearized
            continue
        steps += 1
        if steps > left:
            budget.left = 0
            budget.used += steps
            raise _BudgetExhausted
        ok, new_state = step(state, inputs[i], outputs[i])
        if ok:
            new_done, new_used = done | done_bit[i], used | used_bit[i]
            key = (new_done, new_state)
            reached = seen.get(key)
            if reached is None:
                seen[key] = [new_used]
                exact.add((key, new_used))
            elif (key, new_used) in exact or any(u & new_used == u for u in reached):
                entry = nxt[entry]  # dominated: reached before with no more info ops used
                continue
            else:
                exact.add((key, new_used))
                if len(reached) < DOMINATORS_MAX:
                    reached.append(new_used)
            stack.append((entry, state, done, used, info_pass))
            state, done, used = new_state, new_done, new_used
            # Lift the call, then its return.
            after = nxt[entry]
            nxt[prv[entry]] = after
            if after != -1:
                prv[after] = prv[entry]
            r = ret_entry[i]
            if r != -1:
                remaining -= 1
                after = nxt[r]
                nxt[prv[r]] = after
                if after != -1:
                    prv[after] = prv[r]
            if len(stack) > len(longest):
                longest = [op_of[e] for e, _, _, _, _ in stack]
            entry = nxt[0]
            info_pass = False
            continue
        entry = nxt[entry]
    budget.left = left - steps
    budget.used += steps
    return True, [op_of[e] for e, _, _, _, _ in stack]


def _truncate(ops: Sequence[Operation], cut: int) -> list[Operation]:
    """The prefix of ``ops`` called before ``cut``; ops returning at or after it become info."""
    out: list[Operation] = []
    for op in ops:
        if op.call_index >= cut:
            continue
        if op.return_index is None or op.return_index < cut:
            out.append(op)
            continue
        out.append(
            Operation(
                call_index=op.call_index,
                return_index=None,
                process=op.process,
                input=op.input,
                output=UNKNOWN,
            )
        )
    return out


def _counterexample(
    model: Model[Any], index: int, ops: Sequence[Operation], max_steps: int
) -> tuple[Counterexample, int]:
    """The minimal illegal prefix of an illegal partition (see the module docstring), searched
    on a budget of its own, and the steps it took."""
    budget = _Budget(left=max_steps)
    returns = sorted(op.return_index for op in ops if op.return_index is not None)
    lo, hi = 0, len(returns) - 1  # returns[hi] + 1 is a known illegal cut (the whole history)
    minimal = True
    longest_ids: list[int] = []
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            ok, _ = _search(model, _truncate(ops, returns[mid] + 1), budget)
            if ok:
                lo = mid + 1
            else:
                hi = mid
        _, longest_ids = _search(model, _truncate(ops, returns[hi] + 1), budget)
    except _BudgetExhausted:
        # The smallest illegal prefix known so far: its last return bounds the failure, but
        # the operation returning there need not be the one that cannot be linearized.
        minimal = lo >= hi
        longest_ids = []
    best = _truncate(ops, returns[hi] + 1)
    cut = returns[hi]
    stuck = next(op for op in ops if op.return_index == cut)
    cx = Counterexample(
        partition=index,
        stuck=stuck,
        operations=tuple(best),
        longest=tuple(best[i] for i in longest_ids),
        minimal=minimal,
    )
    return cx, budget.used


def check_operations(
    model: Model[Any], ops: Iterable[Operation], *, max_steps: int = MAX_STEPS_DEFAULT
) -> Linearization:
    """Is the concurrent history ``ops`` linearizable with respect to ``model``?

    Every partition is searched on its own budget of ``max_steps`` model steps, so one that
    is hard to decide never hides another that is illegal. The verdict is ``"illegal"`` as
    soon as a partition is (its counterexample searched on a budget of its own; the later
    partitions are not searched), else ``"unknown"`` if any ran out of budget, else ``"ok"``.
    """
    if max_steps < 0:
        raise ValueError("max_steps must be >= 0")
    kept: list[Operation] = []
    for op in ops:
        if op.return_index is not None and op.return_index < op.call_index:
            raise ValueError(f"operation {op.call_index} returns before it is called")
        if op.return_index is None and model.read_only(op.input):
            continue  # an info read cannot constrain anything
        kept.append(op)
    parts = model.partition(kept)
    steps = 0
    unknown: list[int] = []
    illegal: list[int] = []
    cx: Counterexample | None = None
    # A rank witness decides its partition at once (module docstring, "Rank witnesses"):
    # look for one in every partition before searching any.
    for index, part in enumerate(parts):
        witness = _rank_witness(model, part)
        if witness is not None:
            cut = witness[1].return_index or 0
            cx = Counterexample(
                partition=index,
                stuck=witness[1],
                operations=tuple(_truncate(part, cut + 1)),
                longest=(),
                minimal=False,
                witness=witness,
            )
            return Linearization(
                verdict="illegal",
                steps=0,
                partitions=len(parts),
                operations=len(kept),
                counterexample=cx,
                illegal_partitions=(index,),
            )
    for index, part in enumerate(parts):
        budget = _Budget(left=max_steps)
        try:
            ok, _ = _search(model, part, budget)
        except _BudgetExhausted:
            unknown.append(index)
            ok = True
        steps += budget.used
        if not ok:
            illegal.append(index)
            cx, used = _counterexample(model, index, part, max_steps)
            steps += used
            break  # invalid as soon as any key is: the later keys are not searched
    verdict: Verdict = "illegal" if illegal else "unknown" if unknown else "ok"
    return Linearization(
        verdict=verdict,
        steps=steps,
        partitions=len(parts),
        operations=len(kept),
        counterexample=cx,
        unknown_partitions=tuple(unknown),
        illegal_partitions=tuple(illegal),
    )


def check_linearizable(
    model: Model[Any],
    ops: Iterable[Operation],
    *,
    max_steps: int = MAX_STEPS_DEFAULT,
    name: str = "linearizable",
) -> CheckResult:
    """``check_operations`` as a ``CheckResult``."""
    return check_operations(model, ops, max_steps=max_steps).to_check_result(model, name)


# --------------------------------------------------------------------------------------------
# From histories

Converter: TypeAlias = Callable[[Op, Op | None], tuple[Any, Any] | None]
"""``(invoke, completion or None) -> (input, output)``, or None to leave the op out. It is
called for ``ok`` completions and for unknown outcomes (``info`` or never completed); the
output it returns for an unknown outcome is ignored (replaced by ``UNKNOWN``)."""


def operations_from_history(ops: Iterable[Op], convert: Converter) -> list[Operation]:
    """Pair a Jepsen history and turn it into ``Operation``s.

    ``fail`` completions are left out (the operation definitely did not take effect); ``info``
    and never-completed invokes become operations with ``return_index=None`` and output
    ``UNKNOWN``; call and return indexes are the history indexes of the invoke and completion.
    Nemesis operations are left out.
    """
    out: list[Operation] = []
    for invoke, completion in pair_ops(ops):
        if invoke.process == "nemesis":
            continue
        if completion is not None and completion.type == "fail":
            continue
        converted = convert(invoke, completion)
        if converted is None:
            continue
        inp, outp = converted
        done = completion is not None and completion.type == "ok"
        out.append(
            Operation(
                call_index=invoke.index,
                return_index=completion.index if done and completion is not None else None,
                process=invoke.process,
                input=inp,
                output=outp if done else UNKNOWN,
            )
        )
    return out


def _partition_by(
    ops: Sequence[Operation], key: Callable[[Any], Hashable]
) -> list[list[Operation]]:
    """Operations grouped by ``key(input)``, groups in order of first appearance."""
    groups: dict[Hashable, list[Operation]] = {}
    for op in ops:
        groups.setdefault(key(op.input), []).append(op)
    return list(groups.values())


# --------------------------------------------------------------------------------------------
# Register and key-value map

RegisterInput: TypeAlias = tuple[str, Any]
"""``("read", None)`` -> the value read; ``("write", v)`` -> None; ``("cas", (old, new))`` ->
whether it swapped (True) or found another value (False)."""


def _register_step(state: Any, op: str, arg: Any, output: Any) -> tuple[bool, Any]:
    if op == "read":
        return (output is UNKNOWN or output == state), state
    if op == "write":
        return True, arg
    if op == "cas":
        old, new = arg
        swapped = state == old
        if output is UNKNOWN:
            return True, new if swapped else state
        if output != swapped:
            return False, state
        return True, new if swapped else state
    raise ValueError(f"unknown register operation {op!r}")


class RegisterModel:
    """One register, initially ``initial``; inputs are ``RegisterInput``; one partition."""

    __slots__ = ("initial", "name")

    def __init__(self, initial: Hashable = None) -> None:
        self.name = "register"
        self.initial = initial

    def init(self) -> Any:
        return self.initial

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        op, arg = input
        return _register_step(state, op, arg, output)

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return [list(ops)] if ops else []

    def read_only(self, input: Any) -> bool:
        return bool(input[0] == "read")

    def describe(self, input: Any, output: Any) -> str:
        op, arg = input
        shown = "" if arg is None else repr(arg)
        return f"{op}({shown}) -> {output!r}"

    def ranks(self, input: Any, output: Any) -> tuple[int | None, ...]:
        return ()


class KVModel:
    """A map of independent registers, partitioned per key.

    Inputs are ``(key, op, arg)`` with ``op`` and ``arg`` as in ``RegisterInput``; every key
    starts at ``initial`` (None: absent).
    """

    __slots__ = ("initial", "name")

    def __init__(self, initial: Hashable = None) -> None:
        self.name = "kv"
        self.initial = initial

    def init(self) -> Any:
        return self.initial

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        _, op, arg = input
        return _register_step(state, op, arg, output)

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _partition_by(ops, lambda inp: inp[0])

    def read_only(self, input: Any) -> bool:
        return bool(input[1] == "read")

    def describe(self, input: Any, output: Any) -> str:
        key, op, arg = input
        shown = "" if arg is None else repr(arg)
        return f"{op}({key!r}{', ' if shown else ''}{shown}) -> {output!r}"

    def ranks(self, input: Any, output: Any) -> tuple[int | None, ...]:
        return ()


# --------------------------------------------------------------------------------------------
# Queue log


class QueueLogModel:
    """An append-only log per queue (partitioned per queue).

    Inputs: ``("append", queue, value)`` -> the offset it got; ``("read", queue, offset)`` ->
    the value at ``offset``, or None if the log is not that long yet.

    States are ``(length, node)`` where ``node`` interns the log's content: equal contents get
    the same node number, so a state hashes in O(1) and the search never copies a log. The
    intern table lives in the model instance (use one instance per check, or accept that it
    grows with every check it serves).
    """

    __slots__ = ("_children", "_nodes", "name")

    def __init__(self) -> None:
        self.name = "queue-log"
        self._nodes: list[tuple[int, Hashable]] = [(-1, None)]
        """node -> (parent node, value appended last); node 0 is the empty log."""
        self._children: dict[tuple[int, Hashable], int] = {}

    def init(self) -> tuple[int, int]:
        return (0, 0)

    def _child(self, node: int, value: Hashable) -> int:
        key = (node, value)
        child = self._children.get(key)
        if child is None:
            child = len(self._nodes)
            self._nodes.append(key)
            self._children[key] = child
        return child

    def _value_at(self, length: int, node: int, offset: int) -> Hashable:
        nodes = self._nodes
        for _ in range(length - 1 - offset):
            node = nodes[node][0]
        return nodes[node][1]

    def step(self, state: Any, input: Any, output: Any) -> tuple[bool, Any]:
        op, _, arg = input
        length, node = state
        if op == "append":
            if output is not UNKNOWN and output != length:
                return False, state
            return True, (length + 1, self._child(node, arg))
        if op == "read":
            if output is UNKNOWN:
                return True, state
            if arg >= length:
                return output is None, state
            return output == self._value_at(length, node, arg), state
        raise ValueError(f"unknown queue-log operation {op!r}")

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        return _partition_by(ops, lambda inp: inp[1])

    def read_only(self, input: Any) -> bool:
        return bool(input[0] == "read")

    def describe(self, input: Any, output: Any) -> str:
        op, queue, arg = input
        return f"{op}(q={queue!r}, {arg!r}) -> {output!r}"

    def ranks(self, input: Any, output: Any) -> tuple[int | None, ...]:
        return ()


# --------------------------------------------------------------------------------------------
# History conventions for the models above


REGISTER_FS: Final = ("read", "write", "cas")
"""The operations of register and key-value histories."""


def _register_input(op: Op, completion: Op | None, nil_read_unknown: bool) -> tuple[Any, Any]:
    """``(op name, argument)`` and the expected output of one register operation."""
    if op.f == "read":
        if completion is None:
            return ("read", None), None
        value = completion.value
        if value is None and nil_read_unknown:
            return ("read", None), UNKNOWN  # Knossos: a nil read is a read of unknown value
        return ("read", None), _hashable(value, op.index)
    if op.f == "write":
        return ("write", _hashable(op.value, op.index)), None
    if op.f == "cas":
        pair = op.value
        if not isinstance(pair, list) or len(pair) != 2:
            raise HistoryError(f"op {op.index}: cas value must be [old, new], got {pair!r}")
        return ("cas", (_hashable(pair[0], op.index), _hashable(pair[1], op.index))), True
    raise HistoryError(
        f"op {op.index}: f={op.f!r} is not a register operation (one of {list(REGISTER_FS)})"
    )


def _hashable(value: JSON, index: int) -> Hashable:
    """A JSON value as a hashable model value (lists as tuples, objects as sorted pairs)."""
    if isinstance(value, list):
        return tuple(_hashable(v, index) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v, index)) for k, v in value.items()))
    return value


def register_converter(*, nil_read_unknown: bool = False) -> Converter:
    """Converter for single-register histories: ``f`` is ``read``/``write``/``cas``;
    ``value`` is the written value, ``[old, new]`` for a cas, and the value read in a read's
    ``ok`` completion (a ``null`` read is a read of the register's null value, or, with
    ``nil_read_unknown``, as Knossos reads it, a read of an unknown value). A cas that found
    another value completes ``fail`` (it did not take effect, so it is left out). Any other
    ``f`` is a ``HistoryError``."""

    def convert(invoke: Op, completion: Op | None) -> tuple[Any, Any]:
        return _register_input(invoke, completion, nil_read_unknown)

    return convert


def kv_converter(*, nil_read_unknown: bool = False) -> Converter:
    """Converter for key-value histories: as ``register_converter``, per key; the key is the
    op's extra field ``key`` (a scalar), which every op must carry."""

    def convert(invoke: Op, completion: Op | None) -> tuple[Any, Any]:
        fields = dict(invoke.extra)
        if "key" not in fields:
            raise HistoryError(f"op {invoke.index}: {invoke.f} without a key field")
        key = fields["key"]
        if isinstance(key, list | dict):
            raise HistoryError(f"op {invoke.index}: key {key!r} is not a scalar")
        (op, arg), output = _register_input(invoke, completion, nil_read_unknown)
        return (key, op, arg), output

    return convert


kv_from_history: Final = kv_converter()
"""The key-value converter with ``null`` reads checked as values (pxq's own histories)."""
