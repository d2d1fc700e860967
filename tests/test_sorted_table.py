"""``pxq.sorted_table``: ``SortedTable`` and stacks of ``PendingTable`` against a dict model.

Random puts, deletes and range deletes over a small key alphabet (so that keys collide and
ranges cover them), then point reads and scans in both directions over random bounds; the
stacks are read the way the step overlay and the LMDB storage read them (the newest layer
first for a lookup, ``over`` from the oldest up for a scan), with and without a base table.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.sorted_table import MISSING, PendingTable, SortedTable

# Keys of 0 to 3 bytes from a 3-letter alphabet: few enough that writes hit the same keys.
_keys = st.binary(max_size=3).map(lambda b: bytes(97 + x % 3 for x in b))
_values = st.binary(min_size=1, max_size=4)
_ops = st.one_of(
    st.tuples(st.just("put"), _keys, _values),
    st.tuples(st.just("delete"), _keys, st.just(b"")),
    st.tuples(st.just("range"), _keys, _keys),
)
_bounds = st.tuples(_keys, st.none() | _keys, st.booleans())


def _expected(
    model: dict[bytes, bytes], start: bytes, end: bytes | None, reverse: bool
) -> list[tuple[bytes, bytes]]:
    chosen = sorted(k for k in model if k >= start and (end is None or k < end))
    if reverse:
        chosen.reverse()
    return [(k, model[k]) for k in chosen]


def _apply_model(model: dict[bytes, bytes], op: tuple[str, bytes, bytes]) -> None:
    kind, a, b = op
    if kind == "put":
        model[a] = b
    elif kind == "delete":
        model.pop(a, None)
    else:
        for k in [k for k in model if a <= k < b]:
            del model[k]


def _apply_base(table: SortedTable[bytes], op: tuple[str, bytes, bytes]) -> None:
    kind, a, b = op
    if kind == "put":
        table.set(a, b)
    elif kind == "delete":
        table.discard(a)
    else:
        table.drop_range(a, b)


def _apply_pending(table: PendingTable, op: tuple[str, bytes, bytes]) -> None:
    kind, a, b = op
    if kind == "put":
        table.set(a, b)
    elif kind == "delete":
        table.set(a, None)
    else:
        table.delete_range(a, b)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_ops, max_size=60), bounds=st.lists(_bounds, min_size=1, max_size=4))
def test_sorted_table_agrees_with_a_dict(
    ops: list[tuple[str, bytes, bytes]], bounds: list[tuple[bytes, bytes | None, bool]]
) -> None:
    table: SortedTable[bytes] = SortedTable()
    model: dict[bytes, bytes] = {}
    for op in ops:
        _apply_base(table, op)
        _apply_model(model, op)
        assert table.keys == sorted(model)
        assert table.values == model
    for start, end, reverse in bounds:
        expected = _expected(model, start, end, reverse)
        assert list(table.scan(start, end, reverse)) == expected
        assert table.select(start, end, reverse) == expected
    copy = table.copy()
    table.set(b"zz", b"after the copy")
    assert copy.values == model and copy.keys == sorted(model)


def _lookup(base: SortedTable[bytes], stack: list[PendingTable], key: bytes) -> bytes | None:
    for pending in reversed(stack):
        found = pending.lookup(key)
        if found is not MISSING:
            return found
    return base.values.get(key)


@settings(max_examples=300, deadline=None)
@given(
    base_ops=st.lists(_ops, max_size=30),
    layers=st.lists(st.lists(_ops, max_size=30), min_size=1, max_size=3),
    bounds=st.lists(_bounds, min_size=1, max_size=4),
)
def test_pending_tables_over_a_base_agree_with_a_dict(
    base_ops: list[tuple[str, bytes, bytes]],
    layers: list[list[tuple[str, bytes, bytes]]],
    bounds: list[tuple[bytes, bytes | None, bool]],
) -> None:
    base: SortedTable[bytes] = SortedTable()  # empty when base_ops is: no underlying data
    model: dict[bytes, bytes] = {}
    for op in base_ops:
        _apply_base(base, op)
        _apply_model(model, op)
    stack: list[PendingTable] = []
    for layer_ops in layers:
        pending = PendingTable()
        stack.append(pending)
        for op in layer_ops:
            _apply_pending(pending, op)
            _apply_model(model, op)
        assert pending.keys == sorted(pending.values)
    for key in {k for op in base_ops for k in op[1:]} | {
        k for ops in layers for op in ops for k in op[1:]
    }:
        assert _lookup(base, stack, key) == model.get(key)
    for start, end, reverse in bounds:
        it = base.scan(start, end, reverse)
        for pending in stack:
            it = pending.over(it, start, end, reverse)
        assert list(it) == _expected(model, start, end, reverse)


def test_range_delete_then_put_brings_one_key_back() -> None:
    base: SortedTable[bytes] = SortedTable()
    for key in (b"a", b"b", b"c"):
        base.set(key, b"old")
    pending = PendingTable()
    pending.set(b"b", b"mine")
    pending.delete_range(b"a", b"c")
    assert pending.lookup(b"b") is None  # the range dropped my earlier write too
    pending.set(b"b", b"again")
    assert pending.lookup(b"a") is None
    assert pending.lookup(b"b") == b"again"
    assert pending.lookup(b"c") is MISSING
    merged = pending.over(base.scan(b"", None, False), b"", None, False)
    assert list(merged) == [(b"b", b"again"), (b"c", b"old")]


def test_empty_range_delete_is_ignored() -> None:
    pending = PendingTable()
    pending.set(b"b", b"v")
    pending.delete_range(b"c", b"a")
    pending.delete_range(b"b", b"b")
    assert pending.ranges == []
    assert pending.lookup(b"b") == b"v"


def test_scan_skips_keys_removed_while_iterating() -> None:
    table: SortedTable[bytes] = SortedTable()
    for key in (b"a", b"b", b"c"):
        table.set(key, key)
    seen = []
    for key, _ in table.scan(b"", None, False):
        seen.append(key)
        table.discard(b"b")
        table.set(b"d", b"d")  # keys are chosen when the scan starts: not seen
    assert seen == [b"a", b"c"]


def test_keys_written_during_a_merged_scan_hide_the_layer_below() -> None:
    base: SortedTable[bytes] = SortedTable()
    for key in (b"a", b"b", b"c", b"d"):
        base.set(key, b"old")
    pending = PendingTable()
    seen = []
    for key, _ in pending.over(base.scan(b"", None, True), b"", None, True):
        seen.append(key)
        pending.set(b"c", b"new")
        pending.delete_range(b"a", b"b")
    assert seen == [b"d", b"b"]
