"""The lock-service values of pxq.lockkeys: assignment and load report round trips,
canonical bytes, compactness, the 64 KiB limit, and decoders fuzzed with random and mutated
bytes (they return a well-typed result or raise ValueError, nothing else)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.lock.messages import VALUE_BYTES_MAX
from pxq.lockkeys import (
    FORMAT_VERSION,
    decode_assignment,
    decode_load,
    encode_assignment,
    encode_load,
)
from pxq.rendezvous import LOAD_MAX, QUEUE_NUMBER_MAX, QueueId, hash_assign

PROPS = settings(max_examples=150, deadline=None)
FUZZ = settings(max_examples=400, deadline=None)

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
queue_ids = st.tuples(
    st.one_of(st.sampled_from(["orders", "pay.retry.g.1"]), names),
    st.one_of(st.integers(0, 300), st.integers(0, QUEUE_NUMBER_MAX)),
)
assignments = st.dictionaries(
    queue_ids, st.one_of(st.sampled_from(["c1", "c2"]), names), max_size=60
)
load_reports = st.dictionaries(
    queue_ids, st.one_of(st.integers(0, 1000), st.integers(0, LOAD_MAX)), max_size=60
)


def _well_typed_assignment(out: object) -> bool:
    return isinstance(out, dict) and all(
        isinstance(q, tuple)
        and isinstance(q[0], str)
        and type(q[1]) is int
        and isinstance(who, str)
        and who
        for q, who in out.items()
    )


def _well_typed_loads(out: object) -> bool:
    return isinstance(out, dict) and all(
        isinstance(q, tuple) and isinstance(q[0], str) and type(q[1]) is int and type(n) is int
        for q, n in out.items()
    )


# --------------------------------------------------------------------------------------------
# Round trips, canonical form, size


@PROPS
@given(assignment=assignments)
def test_assignment_round_trips(assignment: dict[QueueId, str]) -> None:
    assert decode_assignment(encode_assignment(assignment)) == assignment


@PROPS
@given(loads=load_reports)
def test_load_report_round_trips(loads: dict[QueueId, int]) -> None:
    assert decode_load(encode_load(loads)) == loads


@PROPS
@given(assignment=assignments, loads=load_reports)
def test_encodings_are_canonical_whatever_the_insertion_order(
    assignment: dict[QueueId, str], loads: dict[QueueId, int]
) -> None:
    assert encode_assignment(assignment) == encode_assignment(dict(reversed(assignment.items())))
    assert encode_load(loads) == encode_load(dict(reversed(loads.items())))


def test_empty_values_round_trip() -> None:
    assert decode_assignment(encode_assignment({})) == {}
    assert decode_load(encode_load({})) == {}


def test_two_thousand_queues_over_twenty_members_fit_well_under_the_limit() -> None:
    queues = [(f"topic-{t}", q) for t in range(4) for q in range(500)]
    members = {f"consumer-{i:02d}.zone-a.example": 1 for i in range(20)}
    assignment = hash_assign(queues, members, "group")
    data = encode_assignment(assignment)
    assert len(data) < 16 * 1024  # measured: about 6 KB
    assert decode_assignment(data) == assignment
    report = encode_load({q: 120_000 + q[1] for q in queues[:100]})  # one consumer's share
    assert len(report) < 1024


def test_encode_refuses_a_value_over_the_lock_service_limit() -> None:
    queues = [("t", q) for q in range(1 << 20, (1 << 20) + 20_000)]  # 5 bytes per number
    with pytest.raises(ValueError, match="over VALUE_BYTES_MAX = 65536"):
        encode_assignment(dict.fromkeys(queues, "c"))
    with pytest.raises(ValueError, match="over VALUE_BYTES_MAX = 65536"):
        encode_load(dict.fromkeys(queues, 1 << 40))


def test_decode_refuses_oversized_input() -> None:
    data = bytes(msgpack.packb([FORMAT_VERSION, [], []])) + b"\x00" * VALUE_BYTES_MAX
    with pytest.raises(ValueError, match="over VALUE_BYTES_MAX"):
        decode_assignment(data)
    with pytest.raises(ValueError, match="over VALUE_BYTES_MAX"):
        decode_load(data)


# --------------------------------------------------------------------------------------------
# Bad input, with clear messages


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([2, [], []], "format version 2"),
        ([True, [], []], "format version True"),
        ([1, ["a", "a"], []], "a name is listed twice"),
        ([1, ["a"], [["t", [[1, [0]]]]]], "member index"),
        ([1, ["a"], [["t", [[0, [0]]]], ["t", [[0, [1]]]]]], "topic 't' is listed twice"),
        ([1, ["a", "b"], [["t", [[0, [3]], [1, [3]]]]]], r"queue \('t', 3\) is listed twice"),
        ([1, ["a"], [["t", [[0, [-1]]]]]], "queue: expected an int"),
        ([1, ["a"], [["t", [[0, [True]]]]]], "queue: expected an int"),
        ([1, [""], []], "member 0"),
        ([1, ["a"], [["", [[0, [1]]]]]], "topic 0"),
        ([1, ["a"]], "expected an array of 3"),
        ({"v": 1}, "not a valid msgpack value"),  # maps are refused
        ([1, [b"a"], []], "not a valid msgpack value"),  # so is binary
    ],
)
def test_decode_assignment_names_the_problem(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        decode_assignment(bytes(msgpack.packb(value, use_bin_type=True)))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([2, []], "format version 2"),
        ([1, [["t", [0, 5, 1]]]], "odd number"),
        ([1, [["t", [0, -5]]]], r"queue \('t', 0\) load"),
        ([1, [["t", [0, LOAD_MAX + 1]]]], r"queue \('t', 0\) load"),
        ([1, [["t", [0, 5, 0, 6]]]], r"queue \('t', 0\) is listed twice"),
        ([1, [["t", [0, 5]], ["t", [1, 6]]]], "topic 't' is listed twice"),
        ([1, [["t", [QUEUE_NUMBER_MAX + 1, 5]]]], "queue: expected an int"),
        ([1, [["t"]]], "expected an array of 2"),
    ],
)
def test_decode_load_names_the_problem(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        decode_load(bytes(msgpack.packb(value, use_bin_type=True)))


def test_decoders_refuse_non_bytes_and_garbage() -> None:
    for decode in (decode_assignment, decode_load):
        with pytest.raises(ValueError, match="expected bytes"):
            decode("not bytes")  # type: ignore[arg-type]
        for garbage in (b"", b"\xc1", b"\x93\x01", b"\x92\x01\x90\x00"):
            with pytest.raises(ValueError, match="not a valid msgpack value"):
                decode(garbage)


@pytest.mark.parametrize(
    "assignment",
    [{("t", -1): "a"}, {("", 0): "a"}, {("t", 0): ""}, {("t", 0): 5}, {("t", 0, 1): "a"}],
)
def test_encode_assignment_refuses_invalid_input(assignment: dict[QueueId, str]) -> None:
    with pytest.raises(ValueError):
        encode_assignment(assignment)


@pytest.mark.parametrize(
    "loads", [{("t", 0): -1}, {("t", 0): LOAD_MAX + 1}, {("t", 0): True}, {("t", 1 << 32): 1}]
)
def test_encode_load_refuses_invalid_input(loads: dict[QueueId, int]) -> None:
    with pytest.raises(ValueError):
        encode_load(loads)


# --------------------------------------------------------------------------------------------
# Fuzzing: only ValueError, whatever the bytes


def _decodes_validly_or_raises_value_error(blob: bytes) -> None:
    """Each decoder raises ValueError on ``blob`` or returns a valid value, which re-encodes
    and decodes to itself; any other exception fails the test."""
    try:
        got = decode_assignment(blob)
    except ValueError:
        pass
    else:
        assert _well_typed_assignment(got)
        assert decode_assignment(encode_assignment(got)) == got
    try:
        got_loads = decode_load(blob)
    except ValueError:
        pass
    else:
        assert _well_typed_loads(got_loads)
        assert decode_load(encode_load(got_loads)) == got_loads


@FUZZ
@given(data=st.binary(max_size=512))
def test_decoders_of_random_bytes_raise_only_value_error(data: bytes) -> None:
    _decodes_validly_or_raises_value_error(data)


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 63), (1 << 64) - 1),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.binary(max_size=8),
        st.sampled_from([FORMAT_VERSION, "t", 0]),
    ),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


@FUZZ
@given(value=msgpack_values)
def test_decoders_of_arbitrary_msgpack_raise_only_value_error(value: object) -> None:
    _decodes_validly_or_raises_value_error(bytes(msgpack.packb(value, use_bin_type=True)))
    for shaped in ([FORMAT_VERSION, value, value], [FORMAT_VERSION, value]):
        _decodes_validly_or_raises_value_error(bytes(msgpack.packb(shaped, use_bin_type=True)))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, dropped, inserted, or cut off at the end."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        if not out:
            out.append(draw(st.integers(0, 255)))
            continue
        i = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[i] ^= draw(st.integers(1, 255))
        elif kind == "drop":
            del out[i]
        elif kind == "insert":
            out.insert(i, draw(st.integers(0, 255)))
        else:
            del out[i:]
    return bytes(out)


@FUZZ
@given(assignment=assignments, loads=load_reports, data=st.data())
def test_decoders_of_mutated_encodings_raise_only_value_error(
    assignment: dict[QueueId, str], loads: dict[QueueId, int], data: st.DataObject
) -> None:
    _decodes_validly_or_raises_value_error(data.draw(mutated(encode_assignment(assignment))))
    _decodes_validly_or_raises_value_error(data.draw(mutated(encode_load(loads))))
