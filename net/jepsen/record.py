"""The record of one test run: a directory with the history, the nemesis timeline, every
checker's result, a summary, plots like Jepsen's, and an ``index.html`` that shows them.

This module owns the directory's layout and its pictures; ``pxq test`` (real clusters) and
``pxq sim run --record`` (the simulator) both call ``write_record``. Pure data in, files out:

* ``history_ops``: the run's history (``pxq.check.history.Op``, JSONL semantics of invoke,
  ok, fail, info). ``time_ms`` may be simulated time (from 0) or Unix milliseconds: plots
  show seconds since ``start_ms`` (default: the first op's time).
* ``results``: every checker's ``CheckResult`` or its JSON (``CheckResult.to_json()``), as a
  sequence or as a mapping from the name to show to the result. A failed result whose
  ``details["verdict"]`` is ``"unknown"`` is shown as unknown (a search out of budget).
* ``nemesis_ops``: the test's own actions (process ``"nemesis"``: an ``invoke`` then an
  ``info`` per action); default: those of the history. ``timeline`` pairs them into windows.
* ``node_lanes`` (simulated runs): node name -> spans ``(start_ms, end_ms, state)`` with
  ``state`` one of ``"up"``, ``"down"``, ``"paused"`` (these cover the run, one at a time),
  ``"cut"`` (some path to or from the node is partitioned or clogged) or ``"master:G"`` (the
  node holds the master lease of Paxos group ``G``); the last two overlay the first three.
* ``marks``: extra violation marks ``(time_ms, label)`` (an invariant broken inside a node).

Files (``RECORD_FILES``, plus ``nodes.png`` with lanes, ``nemesis.jsonl`` when the nemesis
ops are given apart from the history, and ``failure-<check>.svg`` for each linearizability
failure with a counterexample, drawn by ``pxq.check.picture``):

* ``history.jsonl``, ``timeline.json`` (``Timeline.to_json``), ``results.json`` (title, ok,
  every check's JSON, and ``marks``: where each failed check's first named op lies),
  ``summary.txt`` (the table the command printed, or one made here);
* ``latency.png``: each operation's latency (invoke to completion) at its invoke time, log
  scale, colour by outcome and marker by ``f``; an op never completed counts as ``info`` and
  runs to the end (Jepsen's latency-raw plot);
* ``rate.png``: completions per second (1 s buckets) per ``f`` and outcome (Jepsen's rate);
* ``nodes.png``: a lane per node (up, down, paused, cut off, master of which group);
* all three with the nemesis windows shaded and labelled and the violation marks drawn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Final, TypeAlias

from pxq.check.history import JSON, NEMESIS, Op, write_history
from pxq.check.picture import failure_svg
from pxq.check.result import CheckResult

RECORD_FILES: Final = (
    "history.jsonl",
    "timeline.json",
    "results.json",
    "summary.txt",
    "latency.png",
    "rate.png",
    "index.html",
)
"""What every record directory holds."""

LaneSpan: TypeAlias = tuple[int, int, str]
"""``(start_ms, end_ms, state)`` of one node (see the module docstring for the states)."""
ResultLike: TypeAlias = CheckResult | Mapping[str, Any]

# -- how nemesis actions pair into windows ---------------------------------------------------
# The vocabulary of real runs (``pxq test``: kill/start, pause/resume, partition/heal, clock,
# power-cut, disk-full/disk-free, slow-link) and of the simulator's nemesis (crash/restart,
# heal_partition, clog/unclog, restore_*, heal_all, ...).

NETWORK_FAULTS: Final = frozenset(
    {"partition", "slow-link", "clog", "loss", "duplicate", "delay", "reorder"}
)
CLOSES: Final[Mapping[str, frozenset[str]]] = {
    "start": frozenset({"kill", "power-cut"}),
    "restart": frozenset({"crash"}),
    "resume": frozenset({"pause"}),
    "disk-free": frozenset({"disk-full"}),
    "heal": NETWORK_FAULTS,
    "heal_partition": frozenset({"partition"}),
    "unclog": frozenset({"clog"}),
    "restore_loss": frozenset({"loss"}),
    "restore_duplicate": frozenset({"duplicate"}),
    "restore_delay": frozenset({"delay"}),
    "restore_reorder": frozenset({"reorder"}),
    "restore_clock": frozenset({"clock"}),
}
"""Closing action -> the faults whose windows it ends (on the nodes it names, if any)."""
CLOSES_DISK_PREFIX: Final = "restore_disk_"
"""The simulator's end of a disk fault (``restore_disk_full``, ...) ends ``disk`` windows."""
HEAL_ALL: Final = "heal_all"
"""The simulator's final heal: ends every window."""
PER_NODE: Final = frozenset(
    {"kill", "power-cut", "crash", "pause", "disk-full", "disk", "clock", "reply_before_persist"}
)
"""Faults that act on each named node on its own: one window per node."""
OPENS: Final = PER_NODE.union(*CLOSES.values())
INSTANT_DISK_FAULTS: Final = frozenset(
    {"bitflip", "alter_item", "fsync_error", "replaced", "wiped"}
)
"""The simulator's disk faults (its ``disk`` action's ``disk_fault``) that are done at once:
events, not windows."""
CLOCK: Final = "clock"
"""A clock action ends the node's previous clock window and opens one unless its offset is 0."""

FAULT_COLOURS: Final[Mapping[str, str]] = {
    "kill": "#e06666",
    "crash": "#e06666",
    "power-cut": "#990000",
    "pause": "#b07fd8",
    "partition": "#6fa8dc",
    "clog": "#6fa8dc",
    "clock": "#45b5a5",
    "disk-full": "#c9a227",
    "disk": "#c9a227",
    "slow-link": "#93c47d",
    "delay": "#93c47d",
    "loss": "#93c47d",
    "duplicate": "#93c47d",
    "reorder": "#93c47d",
}
OTHER_FAULT_COLOUR: Final = "#999999"
OUTCOME_COLOURS: Final[Mapping[str, str]] = {"ok": "#3b78c2", "info": "#ffa400", "fail": "#ff1e90"}
MARKERS: Final = ("o", "s", "D", "v", "^", "<", ">", "p", "*", "h", "X", "P")
STATE_COLOURS: Final[Mapping[str, str]] = {"up": "#a8d5a2", "down": "#e06666", "paused": "#f6b26b"}
WINDOW_LABELS_MAX: Final = 40
"""More windows than this are drawn without naming their nodes."""
SHADED_KINDS_MAX: Final = 12
"""More windows than this are shaded as one grey 'some fault in force'."""
PANEL_INCHES_MAX: Final = 2.4
"""The nemesis panel's height at most (its rows get thinner)."""
KIND_ROWS_MAX: Final = 3
"""Rows the nemesis panel gives one fault kind at most (overlapping windows share the last)."""
LATENCY_FLOOR_MS: Final = 0.5
"""Latencies are integer ms: a 0 ms latency is drawn here (a log axis has no 0)."""
MARK_INDEX_KEYS: Final = (
    "call_index",
    "invoke_index",
    "enqueue_index",
    "index",
    "op",
    "completion_index",
    "return_index",
)
"""Keys under which checkers name the history ops they blame (history indexes)."""
MARK_TIME_KEYS: Final = ("time_ms", "from_ms", "at_ms")
"""Keys under which checkers name the time of what they blame, when they name no op."""
SEARCH_DEPTH_MAX: Final = 6


# ---------------------------------------------------------------------------------------------
# The nemesis timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """A fault in force: from the start of its action to the end of the one that undid it."""

    f: str
    nodes: tuple[str, ...]
    start_ms: int
    end_ms: int
    ended_by: str | None
    """The closing action's ``f``; None: still in force when the run ended."""
    value: JSON = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "f": self.f,
            "nodes": list(self.nodes),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "ended_by": self.ended_by,
            "value": self.value,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A nemesis action that neither starts nor ends a fault (a seek, a skipped fault...)."""

    f: str
    time_ms: int
    value: JSON = None

    def to_json(self) -> dict[str, JSON]:
        return {"f": self.f, "time_ms": self.time_ms, "value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    start_ms: int
    end_ms: int
    windows: tuple[Window, ...]
    events: tuple[Event, ...]

    def to_json(self) -> dict[str, JSON]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "windows": [w.to_json() for w in self.windows],
            "events": [e.to_json() for e in self.events],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class _Action:
    f: str
    value: JSON
    op: Op
    start_ms: int
    done_ms: int


def _actions(nemesis_ops: Iterable[Op]) -> list[_Action]:
    """The nemesis ops as actions, in the order they started: an invoke with its completion
    (the first later completion of the same ``f``, of the same value if one has it: actions
    may overlap), or a lone completion, or an invoke never completed (done as it started)."""
    slots: list[tuple[Op, Op]] = []
    pending: list[int] = []
    for op in nemesis_ops:
        if op.process != NEMESIS:
            continue
        if op.type == "invoke":
            pending.append(len(slots))
            slots.append((op, op))
            continue
        same_f = [i for i in pending if slots[i][0].f == op.f]
        same_value = [i for i in same_f if slots[i][0].value == op.value]
        match = (same_value or same_f)[:1]
        if match:
            pending.remove(match[0])
            slots[match[0]] = (slots[match[0]][0], op)
        else:
            slots.append((op, op))
    return [_action(first, last) for first, last in slots]


def _action(first: Op, last: Op) -> _Action:
    value = last.value if last.value is not None else first.value
    return _Action(f=first.f, value=value, op=first, start_ms=first.time_ms, done_ms=last.time_ms)


def _nodes(value: JSON) -> list[str]:
    """The node names an action's value names: a name, a list of names or of one-way links
    ``[a, b]``, or an object with ``node``/``nodes``/``links``. Numbers (offsets) are not
    nodes."""
    out: list[str] = []

    def walk(v: JSON, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(v, str):
            if v not in out:
                out.append(v)
        elif isinstance(v, list):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, dict):
            for key in ("node", "nodes", "links", "targets"):
                if key in v:
                    walk(v[key], depth + 1)

    walk(value, 0)
    return out


def _offset(action: _Action) -> int | float | None:
    """A clock action's offset: the op's ``offset_ms`` field, or the value's (an object with
    ``offset_ms``/``offset``, a bare number, or a number in a list)."""
    for raw in (action.op.get("offset_ms"), action.value):
        if isinstance(raw, bool):
            continue
        if isinstance(raw, int | float):
            return raw
        if isinstance(raw, dict):
            for key in ("offset_ms", "offset"):
                got = raw.get(key)
                if isinstance(got, int | float) and not isinstance(got, bool):
                    return got
        if isinstance(raw, list):
            numbers = [x for x in raw if isinstance(x, int | float) and not isinstance(x, bool)]
            if numbers:
                return numbers[0]
    return None


def _clock_offsets(action: _Action, nodes: list[str]) -> list[tuple[str, int | float | None]]:
    """Each node a clock action sets, with its new offset: the value's ``[node, offset_ms]``
    pairs (``pxq test``'s), else every node it names with the action's one offset."""
    value = action.value
    pairs: list[tuple[str, int | float | None]] = []
    if isinstance(value, list):
        for p in value:
            if not isinstance(p, list) or len(p) != 2:
                break
            node, offset = p
            if not isinstance(node, str) or isinstance(offset, bool):
                break
            if not isinstance(offset, int | float):
                break
            pairs.append((node, offset))
        else:
            if pairs:
                return pairs
    offset_all = _offset(action)
    return [(n, offset_all) for n in nodes]


def timeline(
    nemesis_ops: Iterable[Op], *, start_ms: int | None = None, end_ms: int | None = None
) -> Timeline:
    """Pair the nemesis actions into fault windows: a kill until the start of that node, a
    pause until its resume, a partition (or slow link) until the heal, a full disk until it
    is freed, a clock offset until the node's next clock action (offset 0 ends it),
    ``heal_all`` ends everything; a window still open ends at ``end_ms`` (default: the last
    action's time) with ``ended_by`` None. Other actions are ``events``."""
    actions = _actions(nemesis_ops)
    first = min((a.start_ms for a in actions), default=0)
    last = max((a.done_ms for a in actions), default=first)
    t0 = first if start_ms is None else start_ms
    t1 = max(last if end_ms is None else end_ms, t0)
    open_: list[tuple[str, tuple[str, ...], int, JSON]] = []
    windows: list[Window] = []
    events: list[Event] = []

    def close(which: frozenset[str] | None, nodes: list[str], action: _Action) -> bool:
        closed = False
        for entry in list(open_):
            f, on, start, value = entry
            if which is not None and f not in which:
                continue
            if nodes and on and not set(on) & set(nodes):
                continue
            open_.remove(entry)
            windows.append(
                Window(
                    f=f,
                    nodes=on,
                    start_ms=start,
                    end_ms=max(start, action.done_ms),
                    ended_by=action.f,
                    value=value,
                )
            )
            closed = True
        return closed

    for action in actions:
        f, nodes = action.f, _nodes(action.value)
        if (
            action.op.get("skipped") is not None  # the simulator's fault that found no target
            or action.op.get("disk_fault") in INSTANT_DISK_FAULTS
        ):
            events.append(Event(f=f, time_ms=action.start_ms, value=action.value))
            continue
        if f == HEAL_ALL:
            close(None, [], action)
            continue
        if f == CLOCK:
            offsets = _clock_offsets(action, nodes)
            for node, offset in offsets:
                close(frozenset({CLOCK}), [node], action)
                if offset != 0:
                    open_.append((CLOCK, (node,), action.start_ms, action.value))
            if not offsets:
                events.append(Event(f=f, time_ms=action.start_ms, value=action.value))
            continue
        if f in CLOSES or f.startswith(CLOSES_DISK_PREFIX):
            which = CLOSES.get(f, frozenset({"disk"}))
            if not close(which, nodes, action) and f not in OPENS:
                events.append(Event(f=f, time_ms=action.start_ms, value=action.value))
            continue
        if f in PER_NODE and nodes:
            open_.extend((f, (n,), action.start_ms, action.value) for n in nodes)
        elif f in OPENS:
            open_.append((f, tuple(nodes), action.start_ms, action.value))
        else:
            events.append(Event(f=f, time_ms=action.start_ms, value=action.value))
    for f, on, start, value in open_:
        windows.append(
            Window(f=f, nodes=on, start_ms=start, end_ms=max(start, t1), ended_by=None, value=value)
        )
    windows.sort(key=lambda w: (w.start_ms, w.end_ms, w.f, w.nodes))
    return Timeline(start_ms=t0, end_ms=t1, windows=tuple(windows), events=tuple(events))


# ---------------------------------------------------------------------------------------------
# Results and where each failure lies


def _as_result(raw: ResultLike, name: str | None = None) -> CheckResult:
    if isinstance(raw, CheckResult):
        return raw
    details = raw.get("details")
    return CheckResult(
        name=str(raw.get("name", name or "?")),
        ok=bool(raw.get("ok")),
        summary=str(raw.get("summary", "")),
        details=dict(details) if isinstance(details, Mapping) else {},
    )


def named_results(
    results: Sequence[ResultLike] | Mapping[str, ResultLike],
) -> list[tuple[str, CheckResult]]:
    """``(name to show, result)`` for every result, in the order given."""
    if isinstance(results, Mapping):
        return [(str(k), _as_result(v, str(k))) for k, v in results.items()]
    out = [_as_result(r) for r in results]
    return [(r.name, r) for r in out]


def status(result: CheckResult) -> str:
    """``ok``, ``FAIL`` or ``UNKNOWN`` (a search that ran out of budget)."""
    if result.ok:
        return "ok"
    return "UNKNOWN" if result.details.get("verdict") == "unknown" else "FAIL"


def _blamed(details: Mapping[str, object]) -> tuple[list[int], list[int]]:
    """The history indexes and times a failed result names: those of its counterexample's
    stuck op, else those in its violations' examples (``KIND-examples`` with ``KIND`` > 0),
    else anywhere in its details."""
    cx = details.get("counterexample")
    if isinstance(cx, Mapping):
        stuck = cx.get("stuck")
        if isinstance(stuck, Mapping):
            index = stuck.get("call_index")
            if isinstance(index, int) and not isinstance(index, bool):
                return [index], []
    scopes: list[object] = [
        value
        for key, value in details.items()
        if key.endswith("-examples") and _positive(details.get(key[: -len("-examples")]))
    ]
    for scope in (scopes, [details]):
        indexes: list[int] = []
        times: list[int] = []
        _collect(scope, indexes, times, 0)
        if indexes or times:
            return indexes, times
    return [], []


def _positive(count: object) -> bool:
    return isinstance(count, int) and not isinstance(count, bool) and count > 0


def _collect(value: object, indexes: list[int], times: list[int], depth: int) -> None:
    if depth > SEARCH_DEPTH_MAX:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                if key in MARK_INDEX_KEYS:
                    indexes.append(int(item))
                elif key in MARK_TIME_KEYS:
                    times.append(int(item))
            else:
                _collect(item, indexes, times, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, indexes, times, depth + 1)


def violation_marks(
    history_ops: Sequence[Op], results: Sequence[tuple[str, CheckResult]]
) -> list[tuple[int, str]]:
    """``(time_ms, check name)`` of the first op each failed check names (by history index,
    else by time); a failed check that names none gets no mark."""
    time_of = {op.index: op.time_ms for op in history_ops}
    marks: list[tuple[int, str]] = []
    for name, result in results:
        if result.ok:
            continue
        indexes, times = _blamed(result.details)
        known = [time_of[i] for i in indexes if i in time_of]
        candidates = known or times
        if candidates:
            marks.append((min(candidates), name))
    return sorted(marks)


# ---------------------------------------------------------------------------------------------
# Summary


def summary_table(
    title: str, results: Sequence[tuple[str, CheckResult]], history_ops: Sequence[Op], tl: Timeline
) -> str:
    """The run's summary: one line per check, then the operations and the faults."""
    width = max([len(n) for n, _ in results] + [5])
    lines = [title, ""]
    lines += [f"{'check':<{width}}  {'result':<7}  summary"]
    lines += [f"{n:<{width}}  {status(r):<7}  {r.summary}" for n, r in results]
    counts = {"ok": 0, "fail": 0, "info": 0, "unfinished": 0}
    for _invoke, completion in _pairs(history_ops):
        counts[completion.type if completion is not None else "unfinished"] += 1
    lines += [
        "",
        f"operations: {sum(counts.values())} ({', '.join(f'{v} {k}' for k, v in counts.items())})",
        f"fault windows: {len(tl.windows)} ({_kinds(tl.windows)}); other nemesis actions: "
        f"{len(tl.events)}",
    ]
    failed = [n for n, r in results if not r.ok]
    lines.append(f"verdict: {'FAILED: ' + ', '.join(failed) if failed else 'ok'}")
    return "\n".join(lines) + "\n"


def _kinds(windows: Sequence[Window]) -> str:
    counts: dict[str, int] = {}
    for w in windows:
        counts[w.f] = counts.get(w.f, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"


def _pairs(ops: Sequence[Op]) -> list[tuple[Op, Op | None]]:
    """Client ops paired by process (tolerant: a second invoke of a process ends its first
    as unfinished; a completion without an invoke is ignored)."""
    pairs: list[tuple[Op, Op | None]] = []
    slot: dict[object, int] = {}
    for op in ops:
        if op.process == NEMESIS:
            continue
        if op.type == "invoke":
            slot[op.process] = len(pairs)
            pairs.append((op, None))
            continue
        i = slot.pop(op.process, None)
        if i is not None and pairs[i][0].f == op.f:
            pairs[i] = (pairs[i][0], op)
    return pairs


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(tl: Timeline) -> list[tuple[str, list[Window]]]:
    """The nemesis panel's rows: per fault kind (in order of first use), its windows spread
    over as few rows as keep them from overlapping (at most ``KIND_ROWS_MAX``)."""
    rows: list[tuple[str, list[Window]]] = []
    for kind in dict.fromkeys(w.f for w in tl.windows):
        mine: list[list[Window]] = []
        for w in (w for w in tl.windows if w.f == kind):
            free = [r for r in mine if r[-1].end_ms <= w.start_ms]
            if free or len(mine) >= KIND_ROWS_MAX:
                (free or mine)[0 if free else len(mine) - 1].append(w)
            else:
                mine.append([w])
        rows += [(kind if i == 0 else "", r) for i, r in enumerate(mine)]
    return rows


def _figure(plt: Any, tl: Timeline, height: float) -> tuple[Any, Any]:
    """A figure with the main axes and, when there were faults, a nemesis panel above it
    (a row per fault kind, a bar per window, as Jepsen draws nemesis activity)."""
    rows = _rows(tl)
    if not rows and not tl.events:
        fig, ax = plt.subplots(figsize=(11, height + 0.9))
        return fig, ax
    count = len(rows) + (1 if tl.events else 0)
    panel = min(0.3 + 0.2 * count, PANEL_INCHES_MAX)
    fig, (top, ax) = plt.subplots(
        2,
        1,
        figsize=(11, height + panel + 0.9),
        sharex=True,
        gridspec_kw={"height_ratios": [panel, height], "hspace": 0.08},
    )
    labels = len(tl.windows) <= WINDOW_LABELS_MAX
    t0 = tl.start_ms
    for row, (_, windows) in enumerate(rows):
        y = count - 1 - row
        for w in windows:
            x0 = (w.start_ms - t0) / 1000
            width = max((w.end_ms - w.start_ms) / 1000, 0.02)
            colour = FAULT_COLOURS.get(w.f, OTHER_FAULT_COLOUR)
            top.broken_barh([(x0, width)], (y - 0.38, 0.76), color=colour, alpha=0.8)
            if labels and w.nodes:
                top.text(x0, y, f" {','.join(w.nodes)}", va="center", fontsize=6, clip_on=True)
    for e in tl.events:
        top.plot([(e.time_ms - t0) / 1000], [0], marker="|", color="#555", ms=7)
    names = [kind for kind, _ in rows] + (["other"] if tl.events else [])
    top.set_yticks(range(count), list(reversed(names)), fontsize=7 if count <= 12 else 5)
    top.set_ylim(-0.6, count - 0.4)
    top.grid(True, axis="x", alpha=0.3)
    top.tick_params(axis="x", labelbottom=False, length=0)
    return fig, ax


def _shade(ax: Any, tl: Timeline) -> None:
    """Shade each fault window lightly behind the data, in its kind's colour; with more than
    ``SHADED_KINDS_MAX`` windows, shade in grey where any fault was in force (the panel
    above shows which)."""
    t0 = tl.start_ms
    spans = [(w.start_ms, w.end_ms, FAULT_COLOURS.get(w.f, OTHER_FAULT_COLOUR)) for w in tl.windows]
    if len(spans) > SHADED_KINDS_MAX:
        merged: list[tuple[int, int, str]] = []
        for a, b, _ in sorted(spans):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]), OTHER_FAULT_COLOUR)
            else:
                merged.append((a, b, OTHER_FAULT_COLOUR))
        spans = merged
    for a, b, colour in spans:
        x0, x1 = (a - t0) / 1000, (b - t0) / 1000
        ax.axvspan(x0, max(x1, x0 + 0.02), color=colour, alpha=0.12, lw=0, zorder=0)


def _mark(ax: Any, marks: Sequence[tuple[int, str]], t0: int) -> None:
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for i, (time_ms, name) in enumerate(marks):
        x = (time_ms - t0) / 1000
        ax.axvline(x, color="#cc0000", lw=1.4, zorder=5, label="violation" if i == 0 else None)
        ax.text(x, 0.02, f" {name}", transform=trans, color="#cc0000", fontsize=7, zorder=6)


def _finish(
    ax: Any, fig: Any, path: Path, tl: Timeline, *, empty: str | None, legend: Sequence[Any] = ()
) -> None:
    ax.set_xlim(0, max((tl.end_ms - tl.start_ms) / 1000, 1.0))
    ax.set_xlabel("seconds since the start of the run")
    ax.grid(True, alpha=0.3, which="both")
    if empty is not None:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="#777")
    handles = [*legend, *ax.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(
            handles=handles,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
        )
    inches = fig.get_figheight()
    fig.subplots_adjust(left=0.14, right=0.8, top=1 - 0.35 / inches, bottom=0.5 / inches)
    fig.savefig(path, dpi=90)


def latency_plot(
    path: Path,
    pairs: Sequence[tuple[Op, Op | None]],
    tl: Timeline,
    marks: Sequence[tuple[int, str]],
    title: str,
) -> None:
    """Each op's latency at its invoke time; unfinished ops as info until the end."""
    plt = _pyplot()
    t0, t1 = tl.start_ms, tl.end_ms
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for invoke, completion in pairs:
        outcome: str = completion.type if completion is not None else "info"
        end = completion.time_ms if completion is not None else max(t1, invoke.time_ms)
        xs, ys = series.setdefault((invoke.f, outcome), ([], []))
        xs.append((invoke.time_ms - t0) / 1000)
        ys.append(max(float(end - invoke.time_ms), LATENCY_FLOOR_MS))
    fs = sorted({f for f, _ in series})
    fig, ax = _figure(plt, tl, 4.5)
    for (f, outcome), (xs, ys) in sorted(series.items()):
        ax.scatter(
            xs,
            ys,
            s=7,
            marker=MARKERS[fs.index(f) % len(MARKERS)],
            color=OUTCOME_COLOURS.get(outcome, "#555"),
            alpha=0.6,
            lw=0,
            label=f"{f} {outcome} ({len(xs)})",
            rasterized=True,
            zorder=2,
        )
    if series:
        ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    fig.suptitle(f"{title}: latency of every operation", fontsize=9)
    _shade(ax, tl)
    _mark(ax, marks, t0)
    _finish(ax, fig, path, tl, empty=None if series else "no operations")
    plt.close(fig)


def rate_plot(
    path: Path,
    pairs: Sequence[tuple[Op, Op | None]],
    tl: Timeline,
    marks: Sequence[tuple[int, str]],
    title: str,
) -> None:
    """Completions per second per ``f`` and outcome, in 1 s buckets."""
    plt = _pyplot()
    t0, t1 = tl.start_ms, tl.end_ms
    buckets = max(1, (t1 - t0) // 1000 + 1)
    counts: dict[tuple[str, str], list[int]] = {}
    for invoke, completion in pairs:
        if completion is None:
            continue
        b = min(buckets - 1, max(0, (completion.time_ms - t0) // 1000))
        counts.setdefault((invoke.f, completion.type), [0] * buckets)[b] += 1
    fig, ax = _figure(plt, tl, 4.0)
    xs = [b + 0.5 for b in range(buckets)]
    for (f, outcome), row in sorted(counts.items()):
        style = {"ok": "-", "info": "--", "fail": ":"}.get(outcome, "-")
        ax.plot(xs, row, ls=style, lw=1.2, label=f"{f} {outcome}", zorder=2)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("completions per second")
    fig.suptitle(f"{title}: throughput (1 s buckets)", fontsize=9)
    _shade(ax, tl)
    _mark(ax, marks, t0)
    _finish(ax, fig, path, tl, empty=None if counts else "no completed operations")
    plt.close(fig)


def nodes_plot(
    path: Path,
    lanes: Mapping[str, Sequence[LaneSpan]],
    tl: Timeline,
    marks: Sequence[tuple[int, str]],
    title: str,
) -> None:
    """A lane per node: up, down or paused; hatched while cut off; a thin bar per group it
    is master of."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    t0 = tl.start_ms
    names = list(lanes)
    groups = sorted({int(s[7:]) for spans in lanes.values() for _, _, s in spans if _is_master(s)})
    cmap = plt.get_cmap("tab10")
    fig, ax = _figure(plt, tl, 0.4 + 0.5 * max(1, len(names)))
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        for state in ("up", "down", "paused"):
            bars = _bars(lanes[name], state, t0)
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.5), color=STATE_COLOURS[state], zorder=2)
        cut = _bars(lanes[name], "cut", t0)
        if cut:
            ax.broken_barh(
                cut, (y - 0.35, 0.5), facecolor="none", edgecolor="#333", hatch="////", zorder=3
            )
        height = 0.2 / max(1, len(groups))
        for k, g in enumerate(groups):
            bars = _bars(lanes[name], f"master:{g}", t0)
            if bars:
                ax.broken_barh(bars, (y + 0.17 + k * height, height), color=cmap(g % 10), zorder=3)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_ylim(-0.7, max(len(names), 1) - 0.3)
    legend = [Patch(color=STATE_COLOURS[s], label=s) for s in ("up", "down", "paused")]
    legend.append(Patch(facecolor="none", edgecolor="#333", hatch="////", label="cut off"))
    legend += [Patch(color=cmap(g % 10), label=f"master of group {g}") for g in groups]
    fig.suptitle(f"{title}: nodes (faults shaded)", fontsize=9)
    _shade(ax, tl)
    _mark(ax, marks, t0)
    _finish(ax, fig, path, tl, empty=None if names else "no nodes", legend=legend)
    plt.close(fig)


def _is_master(state: str) -> bool:
    return state.startswith("master:") and state[7:].isdigit()


def _bars(spans: Sequence[LaneSpan], state: str, t0: int) -> list[tuple[float, float]]:
    return [((a - t0) / 1000, max(b - a, 1) / 1000) for a, b, s in spans if s == state and b >= a]


# ---------------------------------------------------------------------------------------------
# The directory


def write_record(
    run_dir: Path,
    history_ops: Sequence[Op],
    results: Sequence[ResultLike] | Mapping[str, ResultLike],
    *,
    title: str,
    nemesis_ops: Sequence[Op] | None = None,
    node_lanes: Mapping[str, Sequence[LaneSpan]] | None = None,
    marks: Sequence[tuple[int, str]] = (),
    summary: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    run_info: Mapping[str, JSON] | None = None,
    verdict: str | None = None,
) -> list[Path]:
    """Write the run's record into ``run_dir`` (made if missing; files there are replaced)
    and return the files written. ``summary`` is the table the command printed (default:
    ``summary_table``); ``run_info`` (seed, command, digest...) goes into ``results.json``;
    ``verdict`` heads ``index.html`` (default: which checks failed), for a run whose checks
    are meant to fail (a negative control)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ops = list(history_ops)
    nemesis = list(nemesis_ops) if nemesis_ops is not None else None
    acts = [op for op in (ops if nemesis is None else nemesis) if op.process == NEMESIS]
    times = [op.time_ms for op in ops] + [op.time_ms for op in acts]
    spans = [t for lane in (node_lanes or {}).values() for a, b, _ in lane for t in (a, b)]
    t0 = start_ms if start_ms is not None else min(times + spans, default=0)
    t1 = end_ms if end_ms is not None else max([*times, *spans, t0])
    tl = timeline(acts, start_ms=t0, end_ms=t1)
    named = named_results(results)
    all_marks = sorted([*violation_marks(ops, named), *marks])
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        path = run_dir / name
        path.write_text(content, encoding="utf-8")
        written.append(path)

    history_path = run_dir / "history.jsonl"
    with history_path.open("w", encoding="utf-8") as stream:
        write_history(ops, stream)
    written.append(history_path)
    if nemesis is not None:
        with (run_dir / "nemesis.jsonl").open("w", encoding="utf-8") as stream:
            write_history(nemesis, stream)
        written.append(run_dir / "nemesis.jsonl")
    text("timeline.json", json.dumps(tl.to_json(), indent=1) + "\n")
    table = summary if summary is not None else summary_table(title, named, ops, tl)
    text("summary.txt", table if table.endswith("\n") else table + "\n")
    pictures: list[tuple[str, str]] = []
    for name, result in named:
        svg = None if result.ok else failure_svg(name, result.summary, result.details)
        if svg is not None:
            file = f"failure-{_slug(name)}.svg"
            text(file, svg)
            pictures.append((name, file))
    text(
        "results.json",
        json.dumps(
            {
                "title": title,
                "ok": all(r.ok for _, r in named),
                "checks": [{"check": n} | r.to_json() for n, r in named],
                "marks": [{"time_ms": t, "check": n} for t, n in all_marks],
                "failure_pictures": [f for _, f in pictures],
                "run": dict(run_info or {}),
            },
            indent=1,
            default=str,
        )
        + "\n",
    )
    pairs = _pairs(ops)
    plots = [("latency.png", latency_plot), ("rate.png", rate_plot)]
    for file, plot in plots:
        plot(run_dir / file, pairs, tl, all_marks, title)
        written.append(run_dir / file)
    if node_lanes is not None:
        nodes_plot(run_dir / "nodes.png", node_lanes, tl, all_marks, title)
        written.append(run_dir / "nodes.png")
    images = [f for f, _ in plots] + (["nodes.png"] if node_lanes is not None else [])
    text(
        "index.html",
        _html(
            title,
            table,
            verdict=verdict,
            named=named,
            images=images,
            pictures=pictures,
            written=written,
        ),
    )
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "check"


def _html(
    title: str,
    table: str,
    *,
    verdict: str | None,
    named: Sequence[tuple[str, CheckResult]],
    images: Sequence[str],
    pictures: Sequence[tuple[str, str]],
    written: Sequence[Path],
) -> str:
    failed = [n for n, r in named if not r.ok]
    if verdict is None:
        verdict = f"FAILED: {', '.join(failed)}" if failed else "every check passed"
    colour = "#c00" if failed else "#070"
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em auto;max-width:1300px}"
        "pre{background:#f5f5f5;padding:.6em;overflow-x:auto}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p style="color:{colour};font-weight:bold">{escape(verdict)}</p>',
        f"<pre>{escape(table)}</pre>",
    ]
    for image in images:
        parts.append(f'<h2>{escape(image)}</h2><img src="{escape(image)}" alt="{escape(image)}">')
    for name, file in pictures:
        parts.append(
            f"<h2>failing window of {escape(name)}</h2>"
            f'<p><a href="{escape(file)}">{escape(file)}</a></p>'
            f'<img src="{escape(file)}" alt="{escape(file)}">'
        )
    links = [p.name for p in written if p.suffix not in (".png", ".svg")] + ["index.html"]
    parts.append("<h2>files</h2><ul>")
    parts += [f'<li><a href="{escape(n)}">{escape(n)}</a></li>' for n in links]
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"
