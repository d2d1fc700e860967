"""Jepsen-style operation histories: the ``Op`` record, the JSONL writer and reader, and pairing.

This module owns the history format that simulated and real runs both record and that every
checker reads. A history is a sequence of operations, one JSON object per line (JSONL)::

    {"index":0,"time_ms":5,"process":3,"type":"invoke","f":"append","value":"c3-17","group":1}
    {"index":1,"time_ms":9,"process":3,"type":"ok","f":"append","value":"c3-17","group":1,...}

``index`` is the position in the history (dense from 0); ``time_ms`` is simulated or real
integer milliseconds; ``process`` is the logical client process (an int, or the string
``"nemesis"`` for fault injection); ``f`` names the operation; ``value`` is any JSON value;
any further keys (``queue``, ``offset``, ``msg_id``, ``node``, ``group``, ``instance``, ...)
are the op's ``extra`` fields, written as top-level keys.

Jepsen semantics of the four op types, which every recorder must respect (classifying an
indefinite error as ``fail`` makes every checker unsound):

- ``invoke``: a process starts an operation. A process has at most one outstanding invoke.
- ``ok``: the operation took effect (exactly once, between its invoke and this completion).
- ``fail``: the operation definitely did **not** take effect, and never will.
- ``info``: the outcome is unknown: the operation may or may not take effect, now or at any
  later time. The process that got ``info`` is retired: its next operation must use a new
  process id. (The nemesis process is exempt: its operations are the test's own actions.)

An invoke that is never completed (the history ends first) is treated like ``info``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeAlias, get_args

JSON: TypeAlias = "bool | int | float | str | list[JSON] | dict[str, JSON] | None"
"""A JSON-compatible value (lists, not tuples; ``str`` keys; no NaN or infinity)."""

OpType: TypeAlias = Literal["invoke", "ok", "fail", "info"]
Process: TypeAlias = int | str

OP_TYPES: Final[tuple[OpType, ...]] = get_args(OpType)
COMPLETION_TYPES: Final[tuple[OpType, ...]] = ("ok", "fail", "info")
NEMESIS: Final = "nemesis"
"""The process id of fault-injection operations."""

CORE_KEYS: Final[tuple[str, ...]] = ("index", "time_ms", "process", "type", "f", "value")
"""The keys every history line has, in the order they are written; no extra may reuse one."""


class HistoryError(ValueError):
    """A history is malformed; the message names the line (reader) or op index (pairing)."""


# --------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One history entry. Equal to its JSONL round trip; hashable only if its values are."""

    index: int
    time_ms: int
    process: Process
    type: OpType
    f: str
    value: JSON = None
    extra: tuple[tuple[str, JSON], ...] = ()

    def __post_init__(self) -> None:
        _check_int("index", self.index)
        if self.index < 0:
            raise HistoryError(f"index must be >= 0, got {self.index}")
        _check_int("time_ms", self.time_ms)
        if isinstance(self.process, bool) or not isinstance(self.process, int | str):
            raise HistoryError(f"process must be an int or a str, got {self.process!r}")
        if self.type not in OP_TYPES:
            raise HistoryError(f"type must be one of {list(OP_TYPES)}, got {self.type!r}")
        if not isinstance(self.f, str) or not self.f:
            raise HistoryError(f"f must be a non-empty str, got {self.f!r}")
        seen: set[str] = set()
        for key, _ in self.extra:
            if not isinstance(key, str):
                raise HistoryError(f"extra key must be a str, got {key!r}")
            if key in CORE_KEYS:
                raise HistoryError(f"extra key {key!r} collides with a core key")
            if key in seen:
                raise HistoryError(f"extra key {key!r} appears twice")
            seen.add(key)

    def get(self, name: str, default: JSON = None) -> JSON:
        """The extra field ``name`` (for example ``"group"``), or ``default`` if absent."""
        for key, value in self.extra:
            if key == name:
                return value
        return default

    def to_json(self) -> dict[str, JSON]:
        """The JSON object of this op: the core keys in ``CORE_KEYS`` order, then the extras."""
        obj: dict[str, JSON] = {
            "index": self.index,
            "time_ms": self.time_ms,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
        }
        obj.update(self.extra)
        return obj

    def to_json_line(self) -> str:
        """The op as one JSONL line, without the trailing newline."""
        return json.dumps(self.to_json(), sort_keys=False, separators=(",", ":"), allow_nan=False)


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryError(f"{name} must be an int, got {value!r}")


def _check_json(value: object, where: str) -> None:
    """Raise unless ``value`` survives a JSON round trip unchanged (so ``Op`` equality holds)."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise HistoryError(f"{where}: {value!r} is not representable in JSON")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise HistoryError(f"{where}: JSON object key {key!r} is not a str")
            _check_json(item, where)
        return
    raise HistoryError(f"{where}: {type(value).__name__} is not JSON (use lists and dicts)")


# --------------------------------------------------------------------------------------------
# Writing


class HistoryWriter:
    """Records ops with dense indexes, in memory (``ops``) and, if given, as JSONL on ``stream``.

    The writer does not flush; the owner of the stream decides when (a real run should flush
    at least before it checks, a simulated run only at the end).
    """

    __slots__ = ("_ops", "_stream")

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._ops: list[Op] = []

    @property
    def ops(self) -> list[Op]:
        """Every op recorded so far, in index order (a copy)."""
        return list(self._ops)

    def record(
        self,
        type: OpType,
        time_ms: int,
        process: Process,
        f: str,
        value: JSON = None,
        **extra: JSON,
    ) -> Op:
        """Append one op of ``type``; ``extra`` become top-level keys in insertion order."""
        _check_json(value, "value")
        for key, item in extra.items():
            _check_json(item, f"extra {key!r}")
        op = Op(
            index=len(self._ops),
            time_ms=time_ms,
            process=process,
            type=type,
            f=f,
            value=value,
            extra=tuple(extra.items()),
        )
        line = op.to_json_line()
        if self._stream is not None:
            self._stream.write(line + "\n")
        self._ops.append(op)
        return op

    def invoke(
        self, time_ms: int, process: Process, f: str, value: JSON = None, **extra: JSON
    ) -> Op:
        """Record that ``process`` starts operation ``f``."""
        return self.record("invoke", time_ms, process, f, value, **extra)

    def ok(self, time_ms: int, process: Process, f: str, value: JSON = None, **extra: JSON) -> Op:
        """Record that the outstanding operation of ``process`` took effect."""
        return self.record("ok", time_ms, process, f, value, **extra)

    def fail(self, time_ms: int, process: Process, f: str, value: JSON = None, **extra: JSON) -> Op:
        """Record that the outstanding operation of ``process`` definitely did not take effect."""
        return self.record("fail", time_ms, process, f, value, **extra)

    def info(self, time_ms: int, process: Process, f: str, value: JSON = None, **extra: JSON) -> Op:
        """Record an unknown outcome; a client ``process`` is retired afterwards."""
        return self.record("info", time_ms, process, f, value, **extra)


def write_history(ops: Iterable[Op], stream: IO[str]) -> None:
    """Write ``ops`` as JSONL to ``stream`` (indexes are written as they are)."""
    for op in ops:
        stream.write(op.to_json_line() + "\n")


# --------------------------------------------------------------------------------------------
# Reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def parse_op(line: str, expected_index: int) -> Op:
    """Parse and validate one history line; raises ``HistoryError`` without a line number."""
    if not line.strip():
        raise HistoryError("empty line")
    try:
        obj = json.loads(
            line,
            parse_constant=_reject_constant,
            object_pairs_hook=_object_without_duplicates,
        )
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise HistoryError(f"bad JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HistoryError(f"expected a JSON object, got {type(obj).__name__}")
    for key in CORE_KEYS:
        if key not in obj:
            raise HistoryError(f"missing key {key!r}")
    index = obj["index"]
    _check_int("index", index)
    if index != expected_index:
        raise HistoryError(f"index {index} where {expected_index} was expected (not dense)")
    op_type = obj["type"]
    if op_type not in OP_TYPES:
        raise HistoryError(f"unknown type {op_type!r} (expected one of {list(OP_TYPES)})")
    extra = tuple((key, value) for key, value in obj.items() if key not in CORE_KEYS)
    return Op(
        index=index,
        time_ms=obj["time_ms"],
        process=obj["process"],
        type=op_type,
        f=obj["f"],
        value=obj["value"],
        extra=extra,
    )


def read_history(source: str | Path | Iterable[str]) -> list[Op]:
    """Read a JSONL history from a path (``str`` or ``Path``) or from an iterable of lines.

    Every line is validated; the first problem raises ``HistoryError("line N: ...")`` with a
    1-based line number. Blank lines are errors too (a history has no gaps).
    """
    if isinstance(source, str | Path):
        with Path(source).open(encoding="utf-8") as stream:
            return _read_lines(stream)
    return _read_lines(source)


def _read_lines(lines: Iterable[str]) -> list[Op]:
    ops: list[Op] = []
    for line_no, line in enumerate(lines, start=1):
        try:
            ops.append(parse_op(line, expected_index=len(ops)))
        except HistoryError as exc:
            raise HistoryError(f"line {line_no}: {exc}") from None
    return ops


# --------------------------------------------------------------------------------------------
# Pairing


def pair_ops(ops: Iterable[Op]) -> list[tuple[Op, Op | None]]:
    """Pair each invoke with its completion by process, in order of the invokes.

    Raises ``HistoryError`` naming the op index if the history breaks Jepsen semantics: ops
    not in increasing index order, a second invoke while one is outstanding, a completion
    without an outstanding invoke, a completion whose ``f`` differs from its invoke's, or a
    client process invoking again after it got ``info``. Invokes never completed are paired
    with ``None``.
    """
    pairs: list[tuple[Op, Op | None]] = []
    slot_of_outstanding: dict[Process, int] = {}
    retired: set[Process] = set()
    last_index = -1
    for op in ops:
        if op.index <= last_index:
            raise HistoryError(f"op {op.index}: index not after {last_index}")
        last_index = op.index
        key = op.process
        if op.type == "invoke":
            if key in slot_of_outstanding:
                pending = pairs[slot_of_outstanding[key]][0].index
                raise HistoryError(
                    f"op {op.index}: process {key!r} invokes while op {pending} is outstanding"
                )
            if key in retired:
                raise HistoryError(
                    f"op {op.index}: process {key!r} was retired by an info and must not invoke"
                )
            slot_of_outstanding[key] = len(pairs)
            pairs.append((op, None))
            continue
        slot = slot_of_outstanding.pop(key, None)
        if slot is None:
            raise HistoryError(
                f"op {op.index}: {op.type} completion of process {key!r} without an invoke"
            )
        invoke = pairs[slot][0]
        if op.f != invoke.f:
            raise HistoryError(
                f"op {op.index}: completion f={op.f!r} does not match invoke "
                f"{invoke.index} f={invoke.f!r}"
            )
        pairs[slot] = (invoke, op)
        if op.type == "info" and key != NEMESIS:
            retired.add(key)
    return pairs
