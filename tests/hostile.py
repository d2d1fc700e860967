"""Hypothesis strategies for well-formed but hostile messages, shared by the hostile-input
tests (``tests/test_paxos_hostile.py``, ``tests/test_service_hostile.py``).

``messages_of(cls, ints=..., strs=...)`` builds any registered message class field by field
from its type hints: ints from ``ints`` (or a per-field strategy), text from a pool per field
name (real names mixed with wrong ones), bytes from ``values``, nested messages and tuples of
them recursively. Every message it builds passes the codec's type checks, so what it tests is
what the node does with values no honest peer or client sends.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

from hypothesis import strategies as st

U64_MAX = (1 << 64) - 1
EXTREMES = (
    0,
    1,
    15,
    16,
    17,
    (1 << 31) - 1,
    1 << 32,
    (1 << 62) - 1,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,
    U64_MAX,
    -1,
    -(1 << 31),
    -(1 << 63),
)
small = st.integers(0, 12)
ints = st.one_of(small, small, st.sampled_from(EXTREMES), st.integers(-(1 << 63), U64_MAX))
"""Mostly small counters (they reach the protocol), else the edges of every integer format."""
texts = st.one_of(st.sampled_from(("", "x", "\x00", "é" * 3, "/" * 2)), st.text(max_size=12))


def messages_of(
    cls: type,
    *,
    ints_by_name: dict[str, st.SearchStrategy[int]] | None = None,
    strs_by_name: dict[str, st.SearchStrategy[str]] | None = None,
    values: st.SearchStrategy[bytes] | None = None,
) -> st.SearchStrategy[Any]:
    """Instances of the message class ``cls`` with hostile field values (module docstring)."""
    by_int = ints_by_name or {}
    by_str = strs_by_name or {}
    blobs = values if values is not None else st.binary(max_size=24)

    def field(hint: Any, name: str) -> st.SearchStrategy[Any]:
        if hint is int:
            return by_int.get(name, ints)
        if hint is bool:
            return st.booleans()
        if hint is bytes:
            return blobs
        if hint is str:
            return by_str.get(name, texts)
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return st.lists(field(args[0], name), max_size=4).map(tuple)
            return st.tuples(*(field(a, name) for a in args))
        if type(None) in args:  # X | None
            rest = [a for a in args if a is not type(None)]
            inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
            return st.one_of(st.none(), field(inner, name))
        if args:  # A | B
            return st.one_of(*(field(a, name) for a in args))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return build(hint)
        raise AssertionError(f"no strategy for {hint!r} ({cls.__name__}.{name})")

    def build(c: type) -> st.SearchStrategy[Any]:
        hints = typing.get_type_hints(c, vars(sys.modules[c.__module__]))
        return st.builds(c, **{f.name: field(hints[f.name], f.name) for f in dataclasses.fields(c)})

    return build(cls)
