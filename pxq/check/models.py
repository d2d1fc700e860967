"""Checking a recorded history as a whole: which checkers a model runs, and the verdict.

This module owns what ``pxq check HISTORY --model M`` decides, independent of files and
formats: the operations each model knows (an op of a client process whose ``f`` a model does
not know is a ``HistoryError``, never skipped), the checkers it runs, and how their results
combine into one verdict:

* ``register``: one linearizable register (``read``, ``write``, ``cas``), initially null;
* ``kv``: a map of independent registers, one per ``key`` field, each initially null;
* ``lock``: the lock service's lease semantics (``pxq.check.lock``): linearizability under
  leases and fencing tokens;
* ``queue``: the queue checkers of ``pxq.check.queue`` that need nothing but the history
  (total queue, delivery, read after ack, cursor monotonic, queue order, replay, and retry
  flow when the retry levels are known), plus ownership and the lock checks when the history
  holds consumers' lock operations. Subscriptions are the cluster's when a configuration is
  given; otherwise each group is taken to read every queue (seen in enqueues) of every base
  topic it got anything from, which the result says.

Nemesis ops (process ``"nemesis"``) are the test's own actions: any ``f`` is accepted.

The verdict is ``"invalid"`` if any checker found a violation, else ``"unknown"`` if a
linearizability search ran out of its step budget (never reported as valid), else
``"valid"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pxq.check.history import NEMESIS, HistoryError, Op, pair_ops
from pxq.check.linear import (
    REGISTER_FS,
    KVModel,
    Model,
    RegisterModel,
    check_operations,
    kv_converter,
    operations_from_history,
    register_converter,
)
from pxq.check.lock import (
    LIST_F,
    LOCK_FS,
    check_fencing,
    check_lock_linearizable,
)
from pxq.check.ownership import check_ownership
from pxq.check.queue import (
    COMMIT,
    CURSOR_READ,
    DELIVER,
    ENQUEUE,
    HANDLE,
    OWN_START,
    OWN_STOP,
    READ,
    SEEK,
    GroupKinds,
    RetriesPerGroup,
    Subscriptions,
    check_cursor_monotonic,
    check_delivery,
    check_queue_order,
    check_read_after_ack,
    check_replay,
    check_retry_flow,
    check_total_queue,
)
from pxq.check.result import CheckResult
from pxq.config import ClusterConfig
from pxq.topics import base_topic

ModelName: TypeAlias = Literal["register", "kv", "lock", "queue"]
MODELS: Final[tuple[ModelName, ...]] = ("register", "kv", "lock", "queue")

Verdict: TypeAlias = Literal["valid", "invalid", "unknown"]

QUEUE_FS: Final = frozenset(
    {ENQUEUE, DELIVER, HANDLE, COMMIT, SEEK, READ, CURSOR_READ, OWN_START, OWN_STOP}
)
LOCK_HISTORY_FS: Final = frozenset({*LOCK_FS, LIST_F, "lock_master"})
"""``lock_master``: the workload's note of the lock service's master (not checked)."""

KNOWN_FS: Final[Mapping[ModelName, frozenset[str]]] = {
    "register": frozenset(REGISTER_FS),
    "kv": frozenset(REGISTER_FS),
    "lock": LOCK_HISTORY_FS,
    "queue": QUEUE_FS | LOCK_HISTORY_FS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueLayout:
    """What the queue checkers need beyond the history (from a cluster configuration)."""

    subscriptions: Subscriptions
    group_kinds: GroupKinds
    retries: RetriesPerGroup
    dead_letter: Mapping[str, bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """The outcome of ``check_history``."""

    model: ModelName
    verdict: Verdict
    operations: int
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()


def _validate(ops: Sequence[Op], model: ModelName) -> None:
    known = KNOWN_FS[model]
    for op in ops:
        if op.process == NEMESIS:
            continue
        if op.f not in known:
            raise HistoryError(
                f"op {op.index}: f={op.f!r} is not an operation of the {model} model "
                f"(one of {sorted(known)})"
            )
    pair_ops(ops)  # Jepsen semantics (one outstanding op per process, ...)


def _verdict(checks: Sequence[CheckResult]) -> Verdict:
    if all(c.ok for c in checks):
        return "valid"
    if any(not c.ok and c.details.get("verdict") != "unknown" for c in checks):
        return "invalid"
    return "unknown"


def check_history(
    ops: Sequence[Op],
    model: ModelName,
    *,
    max_steps: int,
    nil_read_unknown: bool = False,
    layout: QueueLayout | None = None,
) -> Report:
    """Check ``ops`` as a history of ``model`` (see the module docstring). ``HistoryError``
    when the history is not one: malformed pairing, an operation the model does not know, a
    field a checker needs missing or of the wrong type."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} (one of {list(MODELS)})")
    _validate(ops, model)
    if model in ("register", "kv"):
        lin_model: Model[object]
        if model == "register":
            lin_model = RegisterModel(None)
            operations = operations_from_history(
                ops, register_converter(nil_read_unknown=nil_read_unknown)
            )
        else:
            lin_model = KVModel(None)
            operations = operations_from_history(
                ops, kv_converter(nil_read_unknown=nil_read_unknown)
            )
        lin = check_operations(lin_model, operations, max_steps=max_steps)
        result = lin.to_check_result(lin_model)
        return Report(
            model=model,
            verdict=_verdict([result]),
            operations=len(operations),
            checks=(result,),
        )
    client_ops = sum(1 for op in ops if op.process != NEMESIS and op.type == "invoke")
    if model == "lock":
        checks = (check_lock_linearizable(ops, max_steps=max_steps), check_fencing(ops))
        return Report(model=model, verdict=_verdict(checks), operations=client_ops, checks=checks)
    results, notes = _queue_checks(ops, layout, max_steps)
    return Report(
        model=model,
        verdict=_verdict(results),
        operations=client_ops,
        checks=tuple(results),
        notes=tuple(notes),
    )


def _queue_checks(
    ops: Sequence[Op], layout: QueueLayout | None, max_steps: int
) -> tuple[list[CheckResult], list[str]]:
    notes: list[str] = []
    if layout is None:
        layout = infer_layout(ops)
        notes.append(
            "subscriptions inferred from the history (each group reads every queue of every "
            "base topic it got an item from); pass the cluster file for the configured ones"
        )
    subs, kinds = layout.subscriptions, layout.group_kinds
    results = [
        check_total_queue(ops, subs, group_kinds=kinds),
        check_delivery(ops, subs, group_kinds=kinds),
        check_read_after_ack(ops),
        check_cursor_monotonic(ops),
        check_queue_order(ops, group_kinds=kinds),
        check_replay(ops, group_kinds=kinds),
    ]
    if layout.retries:
        for dead_letter in sorted(set(layout.dead_letter.values())):
            groups = {
                g: n for g, n in layout.retries.items() if layout.dead_letter[g] is dead_letter
            }
            part = [op for op in ops if _group_of(op) in groups or _group_of(op) is None]
            results.append(check_retry_flow(part, groups, dead_letter=dead_letter))
    else:
        notes.append("retry_flow not run: the retry levels come from the cluster file")
    consumers = sorted({str(op.process) for op in ops if op.f in (OWN_START, OWN_STOP)})
    if consumers:
        results.append(check_ownership(ops, consumers))
    if any(op.f in LOCK_FS for op in ops if op.process != NEMESIS):
        results.append(check_lock_linearizable(ops, max_steps=max_steps))
        results.append(check_fencing(ops))
    return results, notes


def _group_of(op: Op) -> str | None:
    for k, v in op.extra:
        if k == "group":
            return str(v)
    return None


def infer_layout(ops: Sequence[Op]) -> QueueLayout:
    """Subscriptions read off a history: every group that got an item from a base topic
    (directly or through its retry or dead-letter topics) reads every queue of that topic
    that an enqueue names."""
    queues: dict[str, set[int]] = {}
    got: dict[str, set[str]] = {}
    for op in ops:
        fields = dict(op.extra)
        topic, queue = fields.get("topic"), fields.get("queue")
        if op.f == ENQUEUE and isinstance(topic, str) and isinstance(queue, int):
            queues.setdefault(topic, set()).add(queue)
        group = fields.get("group")
        if op.f in (DELIVER, COMMIT, SEEK, CURSOR_READ) and isinstance(group, str):
            topics = got.setdefault(group, set())
            if isinstance(topic, str):
                topics.add(base_topic(topic))
    subscriptions = {
        group: {t: sorted(queues.get(t, ())) for t in sorted(topics)}
        for group, topics in sorted(got.items())
    }
    return QueueLayout(subscriptions=subscriptions, group_kinds={}, retries={}, dead_letter={})


def layout_from_config(config: ClusterConfig) -> QueueLayout:
    """The subscriptions, kinds and retry levels of every consumer group of ``config``."""
    subscriptions: dict[str, dict[str, list[int]]] = {}
    kinds: dict[str, list[str]] = {}
    retries: dict[str, int] = {}
    dead_letter: dict[str, bool] = {}
    for topic in config.topics:
        for group in topic.consumer_groups:
            queues = range(topic.queues) if group.queues is None else group.queues
            subscriptions.setdefault(group.name, {})[topic.name] = sorted(queues)
            if group.kinds is not None:
                kinds[group.name] = sorted(group.kinds)
            retries[group.name] = len(group.retries)
            dead_letter[group.name] = group.dead_letter
    return QueueLayout(
        subscriptions=subscriptions, group_kinds=kinds, retries=retries, dead_letter=dead_letter
    )
