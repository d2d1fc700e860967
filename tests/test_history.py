"""Histories: the JSONL format round-trips, the reader names the bad line, pairing is Jepsen's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxq.check.history import (
    CORE_KEYS,
    JSON,
    NEMESIS,
    HistoryError,
    HistoryWriter,
    Op,
    pair_ops,
    read_history,
    write_history,
)


def _sample_writer(stream: io.StringIO | None = None) -> HistoryWriter:
    writer = HistoryWriter(stream)
    writer.invoke(5, 3, "append", "c3-17", group=1)
    writer.invoke(6, NEMESIS, "partition", {"halves": [["s0"], ["s1", "s2"]]})
    writer.ok(7, NEMESIS, "partition", None)
    writer.ok(9, 3, "append", "c3-17", group=1, instance=4, slot=0)
    writer.invoke(10, 4, "read", None, queue="q0", offset=12)
    writer.fail(11, 4, "read", None, error="not-master")
    writer.invoke(12, 5, "append", "c5-0", group=0)
    writer.info(20, 5, "append", "c5-0", group=0, error="timeout")
    return writer


# --------------------------------------------------------------------------------------------
# Writing and the round trip


def test_writer_emits_compact_jsonl_with_core_keys_first_then_extras() -> None:
    stream = io.StringIO()
    writer = HistoryWriter(stream)
    writer.invoke(5, 3, "append", "c3-17", group=1)
    writer.ok(9, 3, "append", "c3-17", group=1, instance=4, slot=0)
    assert stream.getvalue().splitlines() == [
        '{"index":0,"time_ms":5,"process":3,"type":"invoke","f":"append","value":"c3-17","group":1}',
        '{"index":1,"time_ms":9,"process":3,"type":"ok","f":"append","value":"c3-17",'
        '"group":1,"instance":4,"slot":0}',
    ]


def test_writer_assigns_dense_indexes_and_returns_the_recorded_op() -> None:
    writer = _sample_writer()
    assert [op.index for op in writer.ops] == list(range(8))
    third = writer.ops[3]
    assert third == Op(
        index=3,
        time_ms=9,
        process=3,
        type="ok",
        f="append",
        value="c3-17",
        extra=(("group", 1), ("instance", 4), ("slot", 0)),
    )
    op = writer.info(30, 6, "append", "c6-0")
    assert op.index == 8 and writer.ops[-1] is op


def test_writer_ops_is_a_copy() -> None:
    writer = _sample_writer()
    writer.ops.clear()
    assert len(writer.ops) == 8


def test_round_trip_through_a_stream_a_str_path_and_a_path(tmp_path: Path) -> None:
    stream = io.StringIO()
    writer = _sample_writer(stream)
    assert read_history(io.StringIO(stream.getvalue())) == writer.ops
    path = tmp_path / "history.jsonl"
    path.write_text(stream.getvalue(), encoding="utf-8")
    assert read_history(path) == writer.ops
    assert read_history(str(path)) == writer.ops


def test_write_history_writes_what_the_writer_wrote() -> None:
    stream = io.StringIO()
    writer = _sample_writer(stream)
    again = io.StringIO()
    write_history(writer.ops, again)
    assert again.getvalue() == stream.getvalue()


def test_get_reads_extra_fields_with_a_default() -> None:
    op = _sample_writer().ops[3]
    assert op.get("instance") == 4
    assert op.get("missing") is None
    assert op.get("missing", -1) == -1


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values: st.SearchStrategy[JSON] = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
extra_keys = st.text(min_size=1, max_size=6).filter(lambda k: k not in CORE_KEYS)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["invoke", "ok", "fail", "info"]),
            st.integers(min_value=0, max_value=10**12),
            st.integers(min_value=0, max_value=50) | st.text(min_size=1, max_size=5),
            st.text(min_size=1, max_size=10),
            json_values,
            st.dictionaries(extra_keys, json_values, max_size=4),
        ),
        max_size=20,
    )
)
def test_any_json_history_round_trips_exactly(
    rows: list[tuple[str, int, int | str, str, JSON, dict[str, JSON]]],
) -> None:
    stream = io.StringIO()
    writer = HistoryWriter(stream)
    for op_type, time_ms, process, f, value, extra in rows:
        match op_type:
            case "invoke":
                writer.invoke(time_ms, process, f, value, **extra)
            case "ok":
                writer.ok(time_ms, process, f, value, **extra)
            case "fail":
                writer.fail(time_ms, process, f, value, **extra)
            case _:
                writer.info(time_ms, process, f, value, **extra)
    text = stream.getvalue()
    assert len(text.splitlines()) == len(rows)
    assert read_history(io.StringIO(text)) == writer.ops


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1: "a"}, float("nan"), float("inf"), b"bytes", {"k": [set()]}],
    ids=["tuple", "int-key", "nan", "inf", "bytes", "nested-set"],
)
def test_writer_rejects_values_that_would_not_round_trip(value: object) -> None:
    writer = HistoryWriter()
    with pytest.raises(HistoryError):
        writer.invoke(0, 1, "append", value)  # type: ignore[arg-type]
    with pytest.raises(HistoryError):
        writer.invoke(0, 1, "append", "v", note=value)  # type: ignore[arg-type]
    assert writer.ops == []


def test_writer_rejects_an_extra_that_shadows_a_core_key() -> None:
    writer = HistoryWriter()
    with pytest.raises(HistoryError, match="'index' collides"):
        writer.invoke(0, 1, "append", "v", index=7)
    assert writer.ops == []


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"index": True}, "index must be an int"),
        ({"index": -1}, "index must be >= 0"),
        ({"time_ms": 1.5}, "time_ms must be an int"),
        ({"process": None}, "process must be an int or a str"),
        ({"process": False}, "process must be an int or a str"),
        ({"type": "done"}, "type must be one of"),
        ({"f": ""}, "f must be a non-empty str"),
        ({"extra": (("a", 1), ("a", 2))}, "'a' appears twice"),
    ],
)
def test_op_rejects_malformed_fields(fields: dict[str, object], problem: str) -> None:
    base: dict[str, object] = {
        "index": 0,
        "time_ms": 0,
        "process": 1,
        "type": "invoke",
        "f": "append",
        "value": "v",
    }
    with pytest.raises(HistoryError, match=problem):
        Op(**(base | fields))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The reader names the line and the problem

_GOOD = [
    '{"index":0,"time_ms":1,"process":1,"type":"invoke","f":"append","value":"a"}',
    '{"index":1,"time_ms":2,"process":1,"type":"ok","f":"append","value":"a","group":0}',
]


@pytest.mark.parametrize(
    ("third_line", "problem"),
    [
        ('{"index":2,"time_ms":3,', "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"index":2,"time_ms":3,"process":1,"type":"invoke","f":"append"}', "missing key 'value'"),
        ('{"index":2,"time_ms":3,"process":1,"type":"invoke","value":1}', "missing key 'f'"),
        ('{"index":3,"time_ms":3,"process":1,"type":"invoke","f":"a","value":1}', "not dense"),
        ('{"index":1,"time_ms":3,"process":1,"type":"invoke","f":"a","value":1}', "not dense"),
        ('{"index":2,"time_ms":3,"process":1,"type":"done","f":"a","value":1}', "unknown type"),
        ('{"index":2,"time_ms":"3","process":1,"type":"ok","f":"a","value":1}', "time_ms must"),
        ('{"index":"2","time_ms":3,"process":1,"type":"ok","f":"a","value":1}', "index must"),
        ('{"index":2,"time_ms":3,"process":[1],"type":"ok","f":"a","value":1}', "process must"),
        ('{"index":2,"time_ms":3,"process":1,"type":"ok","f":7,"value":1}', "f must"),
        ('{"index":2,"time_ms":3,"process":1,"type":"ok","f":"a","value":NaN}', "NaN"),
        ('{"index":2,"time_ms":3,"process":1,"type":"ok","f":"a","value":1,"f":"b"}', "duplicate"),
        ("", "empty line"),
    ],
)
def test_reader_error_names_the_line_and_the_problem(third_line: str, problem: str) -> None:
    text = "\n".join([*_GOOD, third_line, _GOOD[0]]) + "\n"
    with pytest.raises(HistoryError, match=r"^line 3: ") as caught:
        read_history(io.StringIO(text))
    assert problem in str(caught.value)


def test_reader_accepts_a_missing_final_newline_and_an_empty_history() -> None:
    assert len(read_history(io.StringIO("\n".join(_GOOD)))) == 2
    assert read_history(io.StringIO("")) == []


def test_reader_keeps_extra_fields_in_file_order() -> None:
    line = '{"index":0,"time_ms":1,"process":"nemesis","type":"info","f":"crash","value":null,'
    line += '"node":"s1","group":2}'
    (op,) = read_history([line])
    assert op.extra == (("node", "s1"), ("group", 2))
    assert json.loads(op.to_json_line()) == json.loads(line)


# --------------------------------------------------------------------------------------------
# Pairing


def test_pair_ops_pairs_by_process_in_invoke_order() -> None:
    writer = HistoryWriter()
    a = writer.invoke(0, 1, "append", "a")
    b = writer.invoke(1, 2, "append", "b")
    b_ok = writer.ok(2, 2, "append", "b")
    a_fail = writer.fail(3, 1, "append", "a")
    c = writer.invoke(4, 1, "append", "c")  # a fail does not retire the process
    d = writer.invoke(5, 3, "append", "d")
    d_info = writer.info(6, 3, "append", "d")
    assert pair_ops(writer.ops) == [(a, a_fail), (b, b_ok), (c, None), (d, d_info)]


def test_pair_ops_rejects_a_completion_without_an_invoke() -> None:
    writer = HistoryWriter()
    writer.invoke(0, 1, "append", "a")
    writer.ok(1, 2, "append", "a")
    with pytest.raises(HistoryError, match="op 1: ok completion of process 2 without an invoke"):
        pair_ops(writer.ops)


def test_pair_ops_rejects_a_second_outstanding_invoke() -> None:
    writer = HistoryWriter()
    writer.invoke(0, 1, "append", "a")
    writer.invoke(1, 1, "append", "b")
    with pytest.raises(HistoryError, match="op 1: process 1 invokes while op 0 is outstanding"):
        pair_ops(writer.ops)


def test_pair_ops_retires_a_client_process_after_info() -> None:
    writer = HistoryWriter()
    writer.invoke(0, 1, "append", "a")
    writer.info(1, 1, "append", "a")
    writer.invoke(2, 1, "append", "b")
    with pytest.raises(HistoryError, match="op 2: process 1 was retired"):
        pair_ops(writer.ops)


def test_pair_ops_does_not_retire_the_nemesis() -> None:
    writer = HistoryWriter()
    writer.invoke(0, NEMESIS, "crash", "s1")
    writer.info(1, NEMESIS, "crash", "s1")
    writer.invoke(2, NEMESIS, "restart", "s1")
    assert [c is None for _, c in pair_ops(writer.ops)] == [False, True]


def test_pair_ops_rejects_a_completion_of_another_operation() -> None:
    writer = HistoryWriter()
    writer.invoke(0, 1, "append", "a")
    writer.ok(1, 1, "read", None)
    with pytest.raises(HistoryError, match="op 1: completion f='read' does not match"):
        pair_ops(writer.ops)


def test_pair_ops_rejects_ops_out_of_index_order() -> None:
    ops = _sample_writer().ops
    with pytest.raises(HistoryError, match="op 2: index not after 3"):
        pair_ops([ops[0], ops[1], ops[3], ops[2]])
