"""Jepsen's EDN histories: a small EDN reader and the conversion of Jepsen ops into ``Op``.

This module owns reading the histories that Jepsen writes (``history.edn``) and that Knossos
reads, so that ``pxq check`` can decide a history recorded by another tool. A history is a
sequence of maps, one per line or inside one top-level vector or list::

    {:type :invoke, :f :cas, :value [1 4], :process 0, :time 2014170, :index 0}
    {:type :ok, :f :cas, :value [1 4], :process 0, :time 3261483, :index 1}
    {:type :info, :f :start, :value nil, :process :nemesis, :time 4400000}

The reader covers the EDN that such histories use: ``nil``, ``true``/``false``, integers
(``N`` suffix allowed), floats (``M`` suffix allowed), strings with escapes, characters,
keywords, symbols, vectors, lists, maps, sets, tagged values (``#inst "..."`` and the like,
read as their value) and ``#_`` discards; commas are whitespace and ``;`` starts a comment.
Anything else is a ``HistoryError`` naming the line and column. Nesting is bounded
(``DEPTH_MAX``), so a hostile file cannot exhaust the stack.

The conversion (``ops_from_edn``) is faithful, never silent: every op must be a map with
``:type`` (one of ``:invoke :ok :fail :info``), ``:f`` and ``:process``; ``:value`` is
optional (nil). Keywords become their names (``:cas`` -> ``"cas"``), vectors, lists and
sets become lists, maps become objects with their keys' names; ``:process :nemesis``
becomes ``"nemesis"``, another keyword process its name; ``:time`` (Jepsen's nanoseconds)
becomes ``time_ms`` (0 without it); ``:index`` is dropped (ops are numbered by position);
every other key becomes an extra field. Jepsen records each nemesis action as two ``:info``
ops (start and completion); the first becomes an ``invoke``, as in pxq's own histories.
``independent_keys`` turns the ``[key value]`` tuples of ``jepsen.independent`` histories
into a ``key`` field, as the kv model expects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from pxq.check.history import JSON, NEMESIS, OP_TYPES, HistoryError, Op, OpType

DEPTH_MAX: Final = 64
"""Deepest nesting of collections the reader accepts."""


@dataclass(frozen=True, slots=True)
class Keyword:
    """An EDN keyword (``:name`` or ``:ns/name``); ``name`` is without the colon."""

    name: str


@dataclass(frozen=True, slots=True)
class Symbol:
    """An EDN symbol (``foo``, ``ns/foo``)."""

    name: str


@dataclass(frozen=True, slots=True)
class Located:
    """A top-level form and the 1-based line it starts on."""

    line: int
    value: object


_WS: Final = " \t\r\n,"
_DELIMS: Final = _WS + '()[]{}";'
_INT: Final = re.compile(r"[+-]?\d+N?")
_FLOAT: Final = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?")
_CHARS: Final = {"newline": "\n", "space": " ", "tab": "\t", "return": "\r"}
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_CLOSERS: Final = {"(": ")", "[": "]", "{": "}"}


class _Reader:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def where(self, pos: int | None = None) -> str:
        at = self.pos if pos is None else pos
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return f"line {line}, column {column}"

    def error(self, message: str, pos: int | None = None) -> HistoryError:
        return HistoryError(f"{self.where(pos)}: {message}")

    def skip(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            c = text[self.pos]
            if c in _WS:
                self.pos += 1
            elif c == ";":
                end = text.find("\n", self.pos)
                self.pos = n if end == -1 else end + 1
            else:
                return

    def forms(self) -> Iterator[Located]:
        while True:
            self.skip()
            if self.pos >= len(self.text):
                return
            line = self.text.count("\n", 0, self.pos) + 1
            value = self.form(0)
            if value is not _DISCARDED:
                yield Located(line=line, value=value)

    def token(self) -> str:
        start = self.pos
        text, n = self.text, len(self.text)
        while self.pos < n and text[self.pos] not in _DELIMS:
            self.pos += 1
        return text[start : self.pos]

    def form(self, depth: int) -> object:
        if depth > DEPTH_MAX:
            raise self.error(f"nested deeper than {DEPTH_MAX} collections")
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("unexpected end of input")
        start = self.pos
        c = self.text[self.pos]
        if c in "([{":
            self.pos += 1
            items = self.items(_CLOSERS[c], depth, start)
            if c == "{":
                return self.map(items, start)
            return items
        if c in ")]}":
            raise self.error(f"unexpected {c!r}")
        if c == '"':
            return self.string()
        if c == "\\":
            self.pos += 1
            name = self.token() or self.text[self.pos : self.pos + 1]
            if not name:
                raise self.error("a character literal without a character", start)
            if len(name) == 1:
                if self.pos == start + 1:
                    self.pos += 1
                return name
            if name in _CHARS:
                return _CHARS[name]
            if name.startswith("u") and len(name) == 5:
                try:
                    return chr(int(name[1:], 16))
                except ValueError:
                    pass
            raise self.error(f"unknown character literal \\{name}", start)
        if c == "#":
            self.pos += 1
            if self.pos < len(self.text) and self.text[self.pos] == "{":
                self.pos += 1
                return self.items("}", depth, start)
            if self.pos < len(self.text) and self.text[self.pos] == "_":
                self.pos += 1
                self.form(depth + 1)
                return _DISCARDED
            tag = self.token()
            if not tag:
                raise self.error("a '#' without a tag", start)
            return self.form(depth + 1)  # a tagged value reads as its value
        if c == ":":
            self.pos += 1
            name = self.token()
            if not name:
                raise self.error("a ':' without a keyword name", start)
            return Keyword(name)
        token = self.token()
        if not token:
            raise self.error(f"unexpected {c!r}")
        if token == "nil":
            return None
        if token in ("true", "false"):
            return token == "true"
        if _INT.fullmatch(token):
            return int(token.rstrip("N"))
        if _FLOAT.fullmatch(token):
            value = float(token.rstrip("M"))
            if not math.isfinite(value):
                raise self.error(f"number {token} out of range", start)
            return value
        if token[0].isdigit() or (token[0] in "+-" and token[1:2].isdigit()):
            raise self.error(f"bad number {token!r}", start)
        return Symbol(token)

    def items(self, closer: str, depth: int, start: int) -> list[object]:
        out: list[object] = []
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.error(f"{closer!r} expected before the end of input", start)
            if self.text[self.pos] == closer:
                self.pos += 1
                return out
            value = self.form(depth + 1)
            if value is not _DISCARDED:
                out.append(value)

    def map(self, items: list[object], start: int) -> dict[object, object]:
        if len(items) % 2:
            raise self.error("a map with an odd number of forms", start)
        out: dict[object, object] = {}
        for key, value in zip(items[::2], items[1::2], strict=True):
            try:
                hash(key)
            except TypeError:
                raise self.error(f"a map key that is a collection: {key!r}", start) from None
            if key in out:
                raise self.error(f"duplicate map key {_show(key)}", start)
            out[key] = value
        return out

    def string(self) -> str:
        start = self.pos
        self.pos += 1
        text, n = self.text, len(self.text)
        parts: list[str] = []
        while self.pos < n:
            c = text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(parts)
            if c == "\\":
                esc = text[self.pos + 1 : self.pos + 2]
                if esc in _ESCAPES:
                    parts.append(_ESCAPES[esc])
                    self.pos += 2
                    continue
                if esc == "u":
                    digits = text[self.pos + 2 : self.pos + 6]
                    if len(digits) == 4 and all(d in "0123456789abcdefABCDEF" for d in digits):
                        parts.append(chr(int(digits, 16)))
                        self.pos += 6
                        continue
                raise self.error(f"bad escape in a string: \\{esc}")
            parts.append(c)
            self.pos += 1
        raise self.error("unterminated string", start)


_DISCARDED: Final = object()


def _show(value: object) -> str:
    if isinstance(value, Keyword):
        return f":{value.name}"
    if isinstance(value, Symbol):
        return value.name
    return repr(value)


def read_edn(text: str) -> list[Located]:
    """Every top-level form of ``text``, with its line; ``HistoryError`` on malformed EDN."""
    return list(_Reader(text).forms())


# --------------------------------------------------------------------------------------------
# Jepsen ops


def to_json(value: object, where: str) -> JSON:
    """An EDN value as a JSON value (see the module docstring)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Keyword | Symbol):
        return value.name
    if isinstance(value, list):
        return [to_json(v, where) for v in value]
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for k, v in value.items():
            name = k.name if isinstance(k, Keyword | Symbol) else k if isinstance(k, str) else None
            if name is None:
                raise HistoryError(f"{where}: a map key {_show(k)} is not a keyword or string")
            if name in out:
                raise HistoryError(f"{where}: map key {name!r} twice")
            out[name] = to_json(v, where)
        return out
    raise HistoryError(f"{where}: a value of type {type(value).__name__}")  # pragma: no cover


def _field(op: dict[object, object], name: str) -> object:
    return op.get(Keyword(name))


def ops_from_edn(text: str) -> list[Op]:
    """The ops of a Jepsen EDN history (see the module docstring); ``HistoryError`` naming the
    line of the first op that is not one."""
    forms = read_edn(text)
    if len(forms) == 1 and isinstance(forms[0].value, list):
        forms = [Located(line=forms[0].line, value=v) for v in forms[0].value]
    ops: list[Op] = []
    nemesis_open = False
    for form in forms:
        where = f"line {form.line}"
        op = form.value
        if not isinstance(op, dict):
            raise HistoryError(f"{where}: an op must be a map, got {_show(op)}")
        for required in ("type", "f", "process"):
            if Keyword(required) not in op:
                raise HistoryError(f"{where}: op without :{required}")
        raw_type = _field(op, "type")
        op_type = raw_type.name if isinstance(raw_type, Keyword) else None
        if op_type not in OP_TYPES:
            raise HistoryError(
                f"{where}: :type {_show(raw_type)} is not one of :invoke :ok :fail :info"
            )
        raw_f = _field(op, "f")
        if not isinstance(raw_f, Keyword | Symbol | str):
            raise HistoryError(f"{where}: :f {_show(raw_f)} is not a keyword")
        f = raw_f if isinstance(raw_f, str) else raw_f.name
        raw_process = _field(op, "process")
        if isinstance(raw_process, Keyword):
            process: int | str = raw_process.name
        elif isinstance(raw_process, int) and not isinstance(raw_process, bool):
            process = raw_process
        else:
            raise HistoryError(f"{where}: :process {_show(raw_process)} is not an int or keyword")
        raw_time = _field(op, "time")
        if raw_time is None:
            time_ms = 0
        elif isinstance(raw_time, int) and not isinstance(raw_time, bool) and raw_time >= 0:
            time_ms = raw_time // 1_000_000
        else:
            raise HistoryError(f"{where}: :time {_show(raw_time)} is not a count of nanoseconds")
        typ: OpType = op_type
        if process == NEMESIS and typ == "info":
            typ = "info" if nemesis_open else "invoke"
            nemesis_open = not nemesis_open
        extra: list[tuple[str, JSON]] = []
        for key, value in op.items():
            if not isinstance(key, Keyword):
                raise HistoryError(f"{where}: key {_show(key)} is not a keyword")
            if key.name in ("type", "f", "process", "time", "value", "index"):
                continue
            if key.name in ("time_ms",):
                raise HistoryError(f"{where}: key :{key.name} would clash with pxq's own")
            extra.append((key.name, to_json(value, where)))
        try:
            ops.append(
                Op(
                    index=len(ops),
                    time_ms=time_ms,
                    process=process,
                    type=typ,
                    f=f,
                    value=to_json(_field(op, "value"), where),
                    extra=tuple(extra),
                )
            )
        except HistoryError as exc:
            raise HistoryError(f"{where}: {exc}") from None
    return ops


def independent_keys(ops: list[Op]) -> list[Op]:
    """``jepsen.independent`` ops (``value`` = ``[key, value]``) with the key moved into a
    ``key`` field; nemesis ops pass through. ``HistoryError`` for a client op whose value is
    not such a pair, or that has a ``key`` field already."""
    out: list[Op] = []
    for op in ops:
        if op.process == NEMESIS:
            out.append(op)
            continue
        if any(k == "key" for k, _ in op.extra):
            raise HistoryError(f"op {op.index}: has a :key already, and a [key value] tuple")
        pair = op.value
        if not isinstance(pair, list) or len(pair) != 2:
            raise HistoryError(
                f"op {op.index}: value {pair!r} is not a [key value] tuple of jepsen.independent"
            )
        key = pair[0]
        if isinstance(key, list | dict):
            raise HistoryError(f"op {op.index}: key {key!r} is not a scalar")
        out.append(
            Op(
                index=op.index,
                time_ms=op.time_ms,
                process=op.process,
                type=op.type,
                f=op.f,
                value=pair[1],
                extra=(*op.extra, ("key", key)),
            )
        )
    return out
