"""The wire codec round-trips every supported field kind and keeps its decoding invariant.

Invariant under test: decoding any byte string returns an instance of a registered class
whose every field has exactly its declared type, or raises exactly ``CodecError``. The
oracle (``_is_valid_message``) checks values against the type hints independently of the
codec's compiled checks.

Speed figures (quoted in ``pxq/codec.py``) come from ``python -m tests.test_codec``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NewType

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq import codec
from pxq.codec import (
    DEPTH_MAX,
    FORMAT_VERSION,
    FRAME_BYTES_MAX,
    TAG_RANGES,
    CodecError,
    decode,
    encode,
    message,
    tag_of,
)
from pxq.consumer.messages import Deliver, Handled, SetOwnership
from pxq.lock.messages import WriteRegister
from pxq.paxos.messages import LearnReply, Promise
from pxq.producer.messages import Produce
from pxq.store.messages import Enqueue, GetOk, Item, SeekOk, StoredItem
from pxq.store.reconcile import GroupReconcile

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1

Ballot = NewType("Ballot", int)

# --------------------------------------------------------------------------------------------
# Test-only messages (tags 1000-1099), covering every supported field kind. Module level:
# their string annotations must resolve against this module.


@message(1000)
@dataclass(frozen=True, slots=True, kw_only=True)
class Scalars:
    i: int
    b: bool
    s: str
    by: bytes
    n: None


@message(1001)
@dataclass(frozen=True, slots=True, kw_only=True)
class Leaf:
    key: int
    value: bytes


@message(1002)
@dataclass(frozen=True, slots=True, kw_only=True)
class Other:
    text: str


@message(1003)
@dataclass(frozen=True, slots=True, kw_only=True)
class Containers:
    ints: tuple[int, ...]
    leaves: tuple[Leaf, ...]
    pair: tuple[int, str]
    maybe_int: int | None
    maybe_leaf: Leaf | None
    either: Leaf | Other
    str_or_int: str | int
    leaf_int_or_none: Leaf | int | None
    optional_items: tuple[int | None, ...]
    nested_pairs: tuple[tuple[bytes, bool], ...]
    maybe_ints: tuple[int, ...] | None


@message(1004)
@dataclass(frozen=True, slots=True, kw_only=True)
class Tree:
    label: int
    children: tuple[Tree, ...]


@message(1005)
@dataclass(frozen=True, slots=True, kw_only=True)
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"Positive.n must be > 0, got {self.n}")


@message(1006)
@dataclass(frozen=True, slots=True, kw_only=True)
class Empty:
    pass


@message(1007)
@dataclass(frozen=True, slots=True, kw_only=True)
class Single:
    flag: bool


@message(1008)
@dataclass(frozen=True, slots=True, kw_only=True)
class Wrapper:
    inner: Containers
    tree: Tree | None
    ballot: Ballot
    positive: Positive | None
    any_of: Scalars | Empty | Single


@message(1009)
@dataclass(frozen=True, slots=True, kw_only=True)
class Link:  # recursion through an optional field rather than a tuple
    value: int
    next: Link | None


@message(1010)
@dataclass(frozen=True, slots=True, kw_only=True)
class LeafTwin:  # the same fields as Leaf: only its class tells them apart
    key: int
    value: bytes


@message(1011)
@dataclass(frozen=True, slots=True, kw_only=True)
class UnionPair:  # a fixed tuple of unions
    pair: tuple[int | None, str | bytes]


@message(1050)
@dataclass(frozen=True, slots=True, kw_only=True)
class HasFloat:  # unsupported field type: every use is a CodecError
    x: float


@message(1051)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ambiguous:  # a tuple and a message are both arrays on the wire
    x: tuple[int, ...] | Leaf


VALID_TAGS = [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010]
UNUSED_TAG = 1099


# --------------------------------------------------------------------------------------------
# The oracle: does a value have exactly its declared type?


def _is_valid_message(obj: object) -> bool:
    """Every field has exactly its declared type, and the classes' own rules hold."""
    return _is_well_typed(obj, rules=True)


def _is_well_typed(obj: object, *, rules: bool = False) -> bool:
    cls = type(obj)
    try:
        if codec.class_of(tag_of(cls)) is not cls:
            return False
    except CodecError:
        return False
    if not dataclasses.is_dataclass(obj):
        return False
    hints = typing.get_type_hints(cls)
    if not all(
        _conforms(getattr(obj, f.name), hints[f.name], rules) for f in dataclasses.fields(obj)
    ):
        return False
    return not (rules and isinstance(obj, Positive) and obj.n <= 0)


def _conforms(value: object, hint: Any, rules: bool) -> bool:
    if isinstance(hint, NewType):
        hint = hint.__supertype__
    if hint is int:
        return type(value) is int and INT_MIN <= value <= UINT_MAX
    if hint in (bool, str, bytes):
        return type(value) is hint
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_conforms(value, arg, rules) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if type(value) is not tuple:
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(item, args[0], rules) for item in value)
        return len(value) == len(args) and all(
            _conforms(item, arg, rules) for item, arg in zip(value, args, strict=True)
        )
    if isinstance(hint, type):
        return type(value) is hint and _is_well_typed(value, rules=rules)
    raise AssertionError(f"the oracle does not know the type {hint!r}")


def _array_depth(value: object) -> int:
    """Nesting depth of arrays in an unpacked msgpack value (a flat array is 1)."""
    if isinstance(value, list):
        return 1 + max((_array_depth(item) for item in value), default=0)
    return 0


def _decodes_to_valid_message_or_codec_error(data: bytes) -> None:
    try:
        result = decode(data)
    except CodecError:
        return
    assert _is_valid_message(result), result


def _raises_codec_error(data: bytes) -> str:
    with pytest.raises(CodecError) as excinfo:
        decode(data)
    assert excinfo.type is CodecError
    return str(excinfo.value)


def _frame(tag: int, *fields: object, version: int = FORMAT_VERSION) -> bytes:
    return bytes(msgpack.packb([version, tag, *fields], use_bin_type=True))


# --------------------------------------------------------------------------------------------
# Strategies

ints = st.integers(min_value=INT_MIN, max_value=UINT_MAX)
texts = st.text(max_size=12)
blobs = st.binary(max_size=24)
leaves = st.builds(Leaf, key=ints, value=blobs)
twins = st.builds(LeafTwin, key=ints, value=blobs)
others = st.builds(Other, text=texts)
scalars = st.builds(Scalars, i=ints, b=st.booleans(), s=texts, by=blobs, n=st.none())


def _tuples(elements: st.SearchStrategy[Any], max_size: int = 5) -> st.SearchStrategy[Any]:
    return st.lists(elements, max_size=max_size).map(tuple)


containers = st.builds(
    Containers,
    ints=_tuples(ints),
    leaves=_tuples(leaves, 4),
    pair=st.tuples(ints, texts),
    maybe_int=st.none() | ints,
    maybe_leaf=st.none() | leaves,
    either=leaves | others,
    str_or_int=texts | ints,
    leaf_int_or_none=st.none() | ints | leaves,
    optional_items=_tuples(st.none() | ints),
    nested_pairs=_tuples(st.tuples(blobs, st.booleans()), 3),
    maybe_ints=st.none() | _tuples(ints),
)
trees = st.recursive(
    st.builds(Tree, label=ints, children=st.just(())),
    lambda kids: st.builds(Tree, label=ints, children=_tuples(kids, 3)),
    max_leaves=12,
)
links = st.recursive(
    st.builds(Link, value=ints, next=st.none()),
    lambda rest: st.builds(Link, value=ints, next=rest),
    max_leaves=40,
)
positives = st.builds(Positive, n=st.integers(min_value=1, max_value=UINT_MAX))
empties = st.builds(Empty)
singles = st.builds(Single, flag=st.booleans())
wrappers = st.builds(
    Wrapper,
    inner=containers,
    tree=st.none() | trees,
    ballot=ints.map(Ballot),
    positive=st.none() | positives,
    any_of=scalars | empties | singles,
)
any_message = st.one_of(
    scalars, leaves, twins, others, containers, trees, links, positives, empties, singles, wrappers
)


def _nest(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


# Values that are valid msgpack but mostly the wrong shape for any field.
deep_lists = st.integers(min_value=2, max_value=200).map(_nest)
hostile = st.one_of(
    st.booleans(),
    st.none(),
    ints,
    st.sampled_from([0, 1, INT_MIN, UINT_MAX, *VALID_TAGS, UNUSED_TAG]),
    st.floats(allow_nan=True),
    texts,
    blobs,
    st.lists(ints | st.booleans(), max_size=4),
    st.dictionaries(st.text(max_size=3), ints, max_size=2),
    deep_lists,
)
msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | texts | blobs,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=16,
)


MODEST = settings(max_examples=300, deadline=None)


# --------------------------------------------------------------------------------------------
# Round trip


@MODEST
@given(any_message)
def test_round_trip_gives_an_equal_message_of_the_same_class(msg: object) -> None:
    wire_depth = _array_depth(msgpack.unpackb(encode(msg, depth_max=10_000)))
    if wire_depth > DEPTH_MAX:
        with pytest.raises(CodecError, match="deeper than the depth limit"):
            encode(msg)
        return
    data = encode(msg)
    back = decode(data)
    assert back == msg
    assert type(back) is type(msg)
    assert _is_valid_message(back)
    assert encode(back) == data


def test_round_trip_at_the_integer_bounds_and_of_every_kind() -> None:
    leaf = Leaf(key=UINT_MAX, value=b"\x00\xff")
    msg = Wrapper(
        inner=Containers(
            ints=(INT_MIN, -1, 0, 1, UINT_MAX),
            leaves=(leaf, Leaf(key=INT_MIN, value=b"")),
            pair=(7, "sept"),
            maybe_int=None,
            maybe_leaf=leaf,
            either=Other(text="é\u2603\U0001f600"),
            str_or_int=5,
            leaf_int_or_none=leaf,
            optional_items=(None, 3, None),
            nested_pairs=((b"a", True), (b"", False)),
            maybe_ints=(),
        ),
        tree=Tree(label=1, children=(Tree(label=2, children=()),)),
        ballot=Ballot(9),
        positive=Positive(n=1),
        any_of=Empty(),
    )
    back = decode(encode(msg))
    assert back == msg
    assert isinstance(back, Wrapper)
    assert type(back.inner.ints) is tuple
    assert type(back.inner.pair) is tuple
    assert _is_valid_message(back)


# --------------------------------------------------------------------------------------------
# The decoding invariant on hostile input


@MODEST
@given(st.binary(max_size=300))
def test_random_bytes_decode_to_a_valid_message_or_codec_error(data: bytes) -> None:
    _decodes_to_valid_message_or_codec_error(data)


@MODEST
@given(st.integers(min_value=2, max_value=15), st.sampled_from(VALID_TAGS), st.binary(max_size=120))
def test_random_fields_after_a_valid_header_decode_to_a_valid_message_or_codec_error(
    arity: int, tag: int, rest: bytes
) -> None:
    header = bytes([0x90 | arity]) + bytes(msgpack.packb(FORMAT_VERSION)) + msgpack.packb(tag)
    _decodes_to_valid_message_or_codec_error(header + rest)


@MODEST
@given(any_message, st.data())
def test_mutated_encodings_decode_to_a_valid_message_or_codec_error(
    msg: object, data: st.DataObject
) -> None:
    frame = bytearray(encode(msg, depth_max=10_000))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]), label="op")
        at = data.draw(st.integers(min_value=0, max_value=max(len(frame) - 1, 0)), label="at")
        if op == "flip" and frame:
            frame[at] ^= data.draw(st.integers(min_value=1, max_value=255), label="mask")
        elif op == "insert":
            frame.insert(at, data.draw(st.integers(min_value=0, max_value=255), label="byte"))
        elif op == "delete" and frame:
            del frame[at]
        elif op == "truncate":
            del frame[at:]
    _decodes_to_valid_message_or_codec_error(bytes(frame))


def _paths(value: object, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found = [path]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_paths(item, (*path, i)))
    return found


@MODEST
@given(any_message, st.data())
def test_wrong_shapes_of_valid_msgpack_decode_to_a_valid_message_or_codec_error(
    msg: object, data: st.DataObject
) -> None:
    tree = msgpack.unpackb(encode(msg, depth_max=10_000))
    path = data.draw(st.sampled_from(_paths(tree)[1:]), label="path")
    parent = tree
    for i in path[:-1]:
        parent = parent[i]
    last = path[-1]
    op = data.draw(st.sampled_from(["replace", "drop", "append", "wrap", "swap-bool"]))
    if op == "replace":
        parent[last] = data.draw(hostile, label="value")
    elif op == "drop":
        del parent[last]
    elif op == "append":
        parent.append(data.draw(hostile, label="value"))
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif type(parent[last]) is bool:  # swap-bool: bool for int and int for bool
        parent[last] = int(parent[last])
    elif type(parent[last]) is int and parent[last] in (0, 1):
        parent[last] = bool(parent[last])
    else:
        parent[last] = data.draw(st.booleans(), label="bool")
    _decodes_to_valid_message_or_codec_error(msgpack.packb(tree, use_bin_type=True))


@MODEST
@given(st.sampled_from(VALID_TAGS), st.lists(msgpack_values, max_size=14))
def test_arbitrary_fields_under_a_valid_tag_decode_to_a_valid_message_or_codec_error(
    tag: int, fields: list[object]
) -> None:
    _decodes_to_valid_message_or_codec_error(_frame(tag, *fields))


def test_bool_is_not_an_int_and_int_is_not_a_bool() -> None:
    assert "Leaf.key: expected int, got True" in _raises_codec_error(_frame(1001, True, b""))
    assert "Single.flag: expected bool, got int 1" in _raises_codec_error(_frame(1007, 1))
    assert decode(_frame(1007, True)) == Single(flag=True)


def test_wrong_field_types_name_the_field() -> None:
    assert "Leaf.value: expected bytes, got str" in _raises_codec_error(_frame(1001, 1, "x"))
    assert "Other.text: expected str, got bytes" in _raises_codec_error(_frame(1002, b"x"))
    assert "Scalars.n: expected None" in _raises_codec_error(_frame(1000, 1, True, "", b"", 0))
    message_ = _raises_codec_error(_frame(1004, 1, [[1001, 1, b""]]))
    assert "Tree.children: expected Tree (tag 1004), got tag int 1001" in message_
    assert "expected tuple[int, str]" in _raises_codec_error(
        _frame(1003, [], [], [1], None, None, [1002, ""], "", None, [], [], None)
    )


def _containers_frame(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "ints": [],
        "leaves": [],
        "pair": [1, "a"],
        "maybe_int": None,
        "maybe_leaf": None,
        "either": [1002, ""],
        "str_or_int": "",
        "leaf_int_or_none": None,
        "optional_items": [],
        "nested_pairs": [],
        "maybe_ints": None,
    }
    assert set(changes) <= set(fields)
    fields.update(changes)
    return _frame(tag_of(Containers), *fields.values())


def test_only_an_array_decodes_to_a_tuple() -> None:
    assert isinstance(decode(_containers_frame()), Containers)
    expected = "Containers.ints: expected tuple[int, ...], got"
    assert expected in _raises_codec_error(_containers_frame(ints={}))
    assert expected in _raises_codec_error(_containers_frame(ints=""))
    assert expected in _raises_codec_error(_containers_frame(ints=b""))
    expected = "Containers.pair: expected tuple[int, str], got"
    assert expected in _raises_codec_error(_containers_frame(pair={}))
    assert expected in _raises_codec_error(_containers_frame(pair="ab"))
    assert expected in _raises_codec_error(_containers_frame(pair=[1]))
    expected = "Containers.maybe_ints: expected tuple[int, ...] | None, got"
    assert expected in _raises_codec_error(_containers_frame(maybe_ints={}))
    expected = "Containers.leaves: expected tuple[Leaf, ...], got"
    assert expected in _raises_codec_error(_containers_frame(leaves=""))


def test_wrong_arity_is_a_codec_error() -> None:
    assert "Leaf has 2 fields, got 1" in _raises_codec_error(_frame(1001, 1))
    assert "Leaf has 2 fields, got 3" in _raises_codec_error(_frame(1001, 1, b"", 3))
    assert "Empty has 0 fields, got 1" in _raises_codec_error(_frame(1006, None))
    nested = _frame(1003, [], [[1001, 1]], [1, "a"], None, None, [1002, ""], "", None, [], [], None)
    assert "Containers.leaves: Leaf has 2 fields, got 1" in _raises_codec_error(nested)


def test_invalid_utf8_and_trailing_bytes_are_codec_errors() -> None:
    _raises_codec_error(b"\x93\x01\xcd\x03\xea\xa2\xff\xfe")  # Other(text=<invalid utf-8>)
    _raises_codec_error(encode(Empty()) + b"\x00")
    _raises_codec_error(b"")
    _raises_codec_error(b"\xc1")  # never-used msgpack byte


def test_lists_nested_too_deep_are_codec_errors() -> None:
    _raises_codec_error(b"\x91" * 100_000 + b"\x01")
    _raises_codec_error(_frame(1004, 1, [_nest(500)]))
    _raises_codec_error(b"\x92\x01" + b"\x91" * 5000 + b"\x01")


def _chain(levels: int) -> Tree:
    """A tree of ``levels`` nodes in a line: its frame nests arrays ``2 * levels`` deep."""
    tree = Tree(label=levels, children=())
    for level in range(levels - 1, 0, -1):
        tree = Tree(label=level, children=(tree,))
    return tree


def _link_chain(length: int) -> Link:
    """``length`` links (of value 0): its frame nests arrays ``length`` deep."""
    link = Link(value=0, next=None)
    for _ in range(length - 1):
        link = Link(value=0, next=link)
    return link


def _link_chain_frame(length: int) -> bytes:
    """The frame of ``_link_chain(length)``, built by hand (msgpack refuses to pack it deep)."""
    tag = bytes(msgpack.packb(tag_of(Link)))
    return (
        bytes([0x94, FORMAT_VERSION])
        + tag
        + b"\x00"
        + (bytes([0x93]) + tag + b"\x00") * (length - 1)
        + b"\xc0"
    )


def test_depth_limit_applies_to_encode_and_decode_alike() -> None:
    levels = DEPTH_MAX // 2  # Tree: a message and a tuple per level
    assert decode(encode(_chain(levels))) == _chain(levels)
    with pytest.raises(CodecError, match="deeper than the depth limit"):
        encode(_chain(levels + 1))
    deep = encode(_chain(levels + 1), depth_max=DEPTH_MAX + 2)
    assert "deeper than the depth limit" in _raises_codec_error(deep)
    assert decode(deep, depth_max=DEPTH_MAX + 2) == _chain(levels + 1)

    assert encode(_link_chain(DEPTH_MAX)) == _link_chain_frame(DEPTH_MAX)
    assert decode(_link_chain_frame(DEPTH_MAX)) == _link_chain(DEPTH_MAX)
    with pytest.raises(CodecError, match="deeper than the depth limit"):
        encode(_link_chain(DEPTH_MAX + 1))
    assert "deeper than the depth limit" in _raises_codec_error(_link_chain_frame(DEPTH_MAX + 1))


def test_nesting_beyond_the_python_recursion_limit_is_still_a_codec_error() -> None:
    with pytest.raises(CodecError) as excinfo:
        encode(_chain(3000), depth_max=10_000)
    assert excinfo.type is CodecError
    for length in (900, 5000):  # within and beyond msgpack's own nesting limit
        with pytest.raises(CodecError) as excinfo:
            decode(_link_chain_frame(length), depth_max=10_000)
        assert excinfo.type is CodecError


@pytest.mark.parametrize(
    "claim",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 4G items
        b"\xdc\xff\xff",  # array16 of 64k items
        b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xdf\xff\xff\xff\xff",  # map32 of 4G entries
        b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GiB
        b"\xd7\xff" + b"\x00" * 8,  # timestamp extension
    ],
)
def test_huge_claimed_lengths_and_extensions_are_codec_errors(claim: bytes) -> None:
    header = b"\x93\x01" + msgpack.packb(1003)
    _raises_codec_error(header + claim)
    _raises_codec_error(claim)


def _unused_test_tag() -> int:
    """A tag of the tests range that no test module registered (they share the range)."""
    for tag in reversed(TAG_RANGES["tests"]):
        try:
            codec.class_of(tag)
        except CodecError:
            return tag
    raise AssertionError("every tag of the tests range is registered")


def test_unknown_tag_is_a_codec_error_naming_the_tag() -> None:
    tag = _unused_test_tag()
    assert f"unknown message tag {tag}" in _raises_codec_error(_frame(tag))
    assert "not an int" in _raises_codec_error(_frame(True))
    assert "not an int" in _raises_codec_error(msgpack.packb([1, "1001", 1, b""]))


def test_wrong_format_version_is_a_codec_error_naming_both_versions() -> None:
    text = _raises_codec_error(_frame(1006, version=2))
    assert "format version int 2" in text
    assert f"reads version {FORMAT_VERSION}" in text
    assert "format version True" in _raises_codec_error(msgpack.packb([True, 1006]))
    assert "not a message frame" in _raises_codec_error(msgpack.packb([1]))
    assert "not a message frame" in _raises_codec_error(msgpack.packb(1))


def test_oversized_frames_are_codec_errors_both_ways() -> None:
    assert FRAME_BYTES_MAX == 64 * 1024 * 1024
    msg = Leaf(key=1, value=b"x" * 100)
    data = encode(msg)
    assert "exceeds the limit of 50" in _raises_codec_error_with(data, frame_bytes_max=50)
    with pytest.raises(CodecError, match=f"frame of {len(data)} bytes exceeds the limit of 50"):
        encode(msg, frame_bytes_max=50)
    assert decode(data, frame_bytes_max=len(data)) == msg


def _raises_codec_error_with(data: bytes, **limits: int) -> str:
    with pytest.raises(CodecError) as excinfo:
        decode(data, **limits)
    return str(excinfo.value)


def test_post_init_validation_failure_is_a_codec_error() -> None:
    text = _raises_codec_error(_frame(1005, 0))
    assert "Positive.n must be > 0, got 0" in text
    assert decode(_frame(1005, 5)) == Positive(n=5)


# --------------------------------------------------------------------------------------------
# Encoding refuses what decoding would refuse


# Python values of mostly the wrong type for any field.
hostile_python = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    texts,
    blobs,
    st.binary(max_size=4).map(bytearray),
    _tuples(st.integers(min_value=-3, max_value=3) | st.booleans() | st.none() | texts, 4),
    st.lists(ints, max_size=3),
    st.tuples(ints, texts),
    st.tuples(blobs, st.booleans()),
    leaves,
    twins,
    others,
    empties,
    singles,
    _tuples(leaves | twins | others, 3),
)

_Location = tuple[object, str, int | None]


def _locations(obj: object) -> list[_Location]:
    """Every field of ``obj`` and of the messages inside it, and every item of their tuples."""
    found: list[_Location] = []
    if not dataclasses.is_dataclass(obj):
        return found
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        found.append((obj, f.name, None))
        if type(value) is tuple:
            for i, item in enumerate(value):
                found.append((obj, f.name, i))
                found.extend(_locations(item))
        else:
            found.extend(_locations(value))
    return found


@MODEST
@given(any_message, st.data())
def test_encoding_wrong_field_values_is_a_codec_error_or_round_trips(
    msg: object, data: st.DataObject
) -> None:
    msg = copy.deepcopy(msg)
    locations = _locations(msg)
    if locations:
        owner, name, index = data.draw(st.sampled_from(locations), label="location")
        value = data.draw(hostile_python, label="value")
        if index is not None:
            items = getattr(owner, name)
            value = (*items[:index], value, *items[index + 1 :])
        object.__setattr__(owner, name, value)  # bypasses the frozen dataclass on purpose
    # Encoding checks types, not the rules of __post_init__ (which decoding runs).
    well_typed = _is_well_typed(msg)
    try:
        data_ = encode(msg)
    except CodecError as exc:
        assert not well_typed or "deeper than the depth limit" in str(exc)
        return
    assert well_typed
    if _is_valid_message(msg):
        assert decode(data_) == msg
    else:
        assert "Positive.n must be > 0" in _raises_codec_error(data_)


def test_encoding_does_not_run_post_init_but_decoding_does() -> None:
    msg = Positive(n=1)
    object.__setattr__(msg, "n", -1)  # bypasses __post_init__, as only a bug could
    assert "Positive.n must be > 0, got -1" in _raises_codec_error(encode(msg))


def _containers(**changes: object) -> Containers:
    """A valid ``Containers`` with some fields then set to (wrong) values."""
    msg = Containers(
        ints=(1, 2),
        leaves=(Leaf(key=1, value=b""),),
        pair=(1, "a"),
        maybe_int=None,
        maybe_leaf=None,
        either=Other(text=""),
        str_or_int="",
        leaf_int_or_none=None,
        optional_items=(),
        nested_pairs=(),
        maybe_ints=None,
    )
    for name, value in changes.items():
        object.__setattr__(msg, name, value)  # bypasses the frozen dataclass on purpose
    return msg


@pytest.mark.parametrize(
    ("msg", "problem"),
    [
        (Leaf(key=True, value=b""), "Leaf.key: expected int, got True"),
        (Single(flag=1), "Single.flag: expected bool, got int 1"),  # type: ignore[arg-type]
        (Leaf(key=UINT_MAX + 1, value=b""), "OverflowError"),
        (Leaf(key=INT_MIN - 1, value=b""), "OverflowError"),
        (Leaf(key=1, value=bytearray(b"x")), "Leaf.value: expected bytes, got bytearray"),  # type: ignore[arg-type]
        (Other(text="\ud800"), "UnicodeEncodeError"),
        (Tree(label=1, children=[]), "Tree.children: expected tuple[Tree, ...], got list"),  # type: ignore[arg-type]
        (
            Tree(label=1, children=(Leaf(key=1, value=b""),)),  # type: ignore[arg-type]
            "Tree.children: expected Tree, got Leaf",
        ),
        (Wrapper.__new__(Wrapper), "AttributeError"),  # fields never set
        (_containers(ints=[1]), "Containers.ints: expected tuple[int, ...], got list"),
        (_containers(ints=(1, True)), "Containers.ints: item 1: expected int, got True"),
        (_containers(pair=[1, "a"]), "Containers.pair: expected tuple[int, str], got list"),
        (_containers(pair=(1, "a", 2)), "Containers.pair: expected tuple[int, str], got tuple"),
        (_containers(pair=(1, b"a")), "Containers.pair: expected str, got bytes"),
        (_containers(maybe_ints=[1]), "Containers.maybe_ints: expected tuple[int, ...] | None"),
        (_containers(leaves=(LeafTwin(key=1, value=b""),)), "expected Leaf, got LeafTwin"),
        (_containers(maybe_leaf=LeafTwin(key=1, value=b"")), "expected Leaf | None, got LeafTwin"),
        (_containers(either=LeafTwin(key=1, value=b"")), "expected Leaf | Other, got LeafTwin"),
        (_containers(str_or_int=b""), "Containers.str_or_int: expected str | int, got bytes"),
        (_containers(optional_items=(None, 1.5)), "expected int | None, got 1.5"),
        (_containers(nested_pairs=((b"", 1),)), "expected bool, got int 1"),
    ],
)
def test_encoding_a_mistyped_message_is_a_codec_error_naming_the_problem(
    msg: object, problem: str
) -> None:
    with pytest.raises(CodecError, match="cannot encode") as excinfo:
        encode(msg)
    assert problem in str(excinfo.value)


def test_encoding_an_unregistered_object_is_a_codec_error() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Unregistered:
        x: int

    with pytest.raises(CodecError, match="not a registered message"):
        encode(Unregistered(x=1))
    with pytest.raises(CodecError, match="not a registered message"):
        encode(3)


def test_unsupported_and_ambiguous_field_types_are_codec_errors() -> None:
    with pytest.raises(CodecError, match="unsupported field type float"):
        encode(HasFloat(x=1.0))
    assert "unsupported field type float" in _raises_codec_error(_frame(1050, 1.0))
    with pytest.raises(CodecError, match="ambiguous union"):
        encode(Ambiguous(x=(1,)))
    assert "ambiguous union" in _raises_codec_error(_frame(1051, [1]))


# --------------------------------------------------------------------------------------------
# Registry


def test_registering_a_used_tag_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Duplicate is already used by Leaf"):

        @message(1001)
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Duplicate:
            key: int

    assert codec.class_of(1001) is Leaf


def test_registering_an_out_of_range_tag_is_a_value_error() -> None:
    for tag in (0, 256, 999, 1100, -1):
        with pytest.raises(ValueError, match="outside every reserved range"):

            @message(tag)
            @dataclass(frozen=True, slots=True, kw_only=True)
            class Stray:
                x: int

    with pytest.raises(CodecError, match="unknown message tag 999"):
        codec.class_of(999)


def test_registering_the_same_class_twice_is_allowed() -> None:
    assert message(1001)(Leaf) is Leaf
    assert tag_of(Leaf) == 1001


# --------------------------------------------------------------------------------------------
# The generated converters against the generic ones: the same bytes, values and errors
#
# Message classes get an encoder and a decoder generated for them (their pure tuple fields,
# such as Item.headers, checked inline); the closures of ``_message_encoder`` and
# ``_message_decoder`` are the generic path the generation unrolls. Both must accept and
# refuse the same inputs, encode to the same bytes, decode to the same values and word their
# errors the same.

# Classes of pxq with tuple fields of every kind (of messages, of plain values, of pairs, a
# fixed pair, an optional pair, pairs holding a message), the hot ones first.
PXQ_CLASSES: list[type] = [
    Item,
    StoredItem,
    Enqueue,
    GetOk,
    SeekOk,
    Produce,
    Deliver,
    Handled,
    SetOwnership,
    WriteRegister,
    Promise,
    LearnReply,
    GroupReconcile,
]


@contextlib.contextmanager
def _generic_path() -> Iterator[None]:
    """Within: the codec without its generated converters, compiled afresh."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codec, "_CODECS", {})
        patch.setattr(codec, "_CODECS_BY_TAG", {})
        patch.setattr(codec, "_generated_encoder", lambda *args, **kwargs: None)
        patch.setattr(codec, "_generated_decoder", lambda *args, **kwargs: None)
        yield


def _outcome(run: Callable[[], object]) -> tuple[str, str]:
    """What ``run`` gives (its repr: tells True from 1 and tuples from lists) or the text of
    the CodecError it raises (anything else propagates and fails the test)."""
    try:
        return ("value", repr(run()))
    except CodecError as exc:
        return ("error", str(exc))


def _both_paths(run: Callable[[], object]) -> tuple[tuple[str, str], tuple[str, str]]:
    generated = _outcome(run)
    with _generic_path():
        generic = _outcome(run)
    return generated, generic


def _raw(cls: type) -> st.SearchStrategy[Any]:
    """Instances of ``cls`` with values of their declared types, made without ``__init__``
    (their ``__post_init__`` rules are the decoder's business, the same on both paths)."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]

    def build(values: list[object]) -> object:
        obj: object = object.__new__(cls)
        for name, value in zip(fields, values, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    return st.tuples(*(_typed(hints[name]) for name in fields)).map(lambda v: build(list(v)))


def _typed(hint: Any) -> st.SearchStrategy[Any]:
    if isinstance(hint, NewType):
        hint = hint.__supertype__
    if hint is int:
        return ints
    if hint is bool:
        return st.booleans()
    if hint is str:
        return st.text(max_size=6)
    if hint is bytes:
        return st.binary(max_size=8)
    if hint is None or hint is type(None):
        return st.none()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*(_typed(arg) for arg in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuples(_typed(args[0]), 3)
        return st.tuples(*(_typed(arg) for arg in args))
    return _raw(hint)  # (none of PXQ_CLASSES refers to itself)


pxq_messages = st.one_of(*(_raw(cls) for cls in PXQ_CLASSES))
headers = _tuples(st.tuples(st.text(max_size=6), st.text(max_size=6)), 3)
# Items with and without headers, the hot case (most items have none).
items_with_headers = st.builds(
    Item, key=blobs, payload=blobs, kind=texts, headers=st.just(()) | headers
)
hot_messages = st.one_of(
    pxq_messages,
    st.builds(
        Enqueue,
        topic=texts,
        queue=ints,
        producer=texts,
        seq=ints,
        items=_tuples(items_with_headers, 4),
        after=ints,
    ),
    any_message,
)
depth_limits = st.sampled_from([1, 2, 3, 4, 5, DEPTH_MAX])
# Python values of the wrong shape for Item.headers and the like, on top of hostile_python.
hostile_headers = st.one_of(
    hostile_python,
    st.lists(st.tuples(texts, texts), max_size=2),
    _tuples(st.tuples(texts, texts) | st.tuples(texts) | st.tuples(texts, texts, texts), 3),
    _tuples(st.tuples(texts, ints) | st.tuples(blobs, texts) | st.lists(texts, max_size=2), 3),
    _tuples(st.tuples(texts, st.tuples(texts, texts)), 2),
    st.tuples(st.tuples(texts, texts), st.just(("\ud800", "x"))),
)


def test_the_hot_classes_get_generated_converters() -> None:
    for cls in [*PXQ_CLASSES, Containers, Wrapper]:
        compiled = codec._codec_for_class(cls)
        assert compiled.encode_message.__name__ == "encode_generated", cls
        assert compiled.decode_message.__name__ == "decode_generated", cls
    with _generic_path():
        compiled = codec._codec_for_class(Item)
        assert compiled.encode_message.__name__ == "encode_nested"
        assert compiled.decode_message.__name__ == "decode_message"


@MODEST
@given(hot_messages, depth_limits, st.data())
def test_generated_encoders_give_the_generic_bytes_and_errors(
    msg: object, depth_max: int, data: st.DataObject
) -> None:
    msg = copy.deepcopy(msg)
    locations = _locations(msg)
    change = data.draw(st.booleans(), label="hostile")
    if locations and change:
        owner, name, index = data.draw(st.sampled_from(locations), label="location")
        value = data.draw(hostile_headers, label="value")
        if index is not None:
            items = getattr(owner, name)
            value = (*items[:index], value, *items[index + 1 :])
        object.__setattr__(owner, name, value)  # bypasses the frozen dataclass on purpose
    generated, generic = _both_paths(lambda: encode(msg, depth_max=depth_max))
    assert generated == generic


@MODEST
@given(hot_messages, depth_limits, st.data())
def test_generated_decoders_give_the_generic_values_and_errors(
    msg: object, depth_max: int, data: st.DataObject
) -> None:
    tree = msgpack.unpackb(encode(msg, depth_max=10_000))
    for _ in range(data.draw(st.integers(min_value=0, max_value=3), label="changes")):
        path = data.draw(st.sampled_from(_paths(tree)[1:]), label="path")
        parent = tree
        for i in path[:-1]:
            parent = parent[i]
        last = path[-1]
        op = data.draw(st.sampled_from(["replace", "drop", "append", "wrap", "swap-bool"]))
        if op == "replace":
            parent[last] = data.draw(hostile | msgpack_values, label="value")
        elif op == "drop":
            del parent[last]
        elif op == "append":
            parent.append(data.draw(hostile, label="value"))
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif type(parent[last]) is bool:
            parent[last] = int(parent[last])
        elif type(parent[last]) is int and parent[last] in (0, 1):
            parent[last] = bool(parent[last])
        if not _paths(tree)[1:]:
            break
    frame = msgpack.packb(tree, use_bin_type=True)
    generated, generic = _both_paths(lambda: decode(frame, depth_max=depth_max))
    assert generated == generic


def _pure_field_cases() -> list[tuple[object, str, object]]:
    """(a valid message, the name of one of its pure tuple fields, a value for that field):
    valid values and values wrong in every way the inline checks look at."""
    item = Item(key=b"k", payload=b"p")
    register = WriteRegister(key="k", value=b"v", fence=None)
    headers_values: list[object] = [
        (),
        (("a", "b"),),
        (("a", "b"), ("c", "")),
        [("a", "b")],
        (("a", "b", "c"),),
        (("a",),),
        ((),),
        (("a", 1),),
        ((b"a", "b"),),
        (["a", "b"],),
        (("a", "b"), None),
        (("a", ("b", "c")),),
        (("\ud800", "b"),),
        None,
        "ab",
    ]
    cases: list[tuple[object, str, object]] = [(item, "headers", v) for v in headers_values]
    cases += [(register, "fence", v) for v in [None, ("a", 1), ("a", True), ("a",), ["a", 1], 1]]
    wrong: list[tuple[str, list[object]]] = [
        ("ints", [(), (1, 2), (1, True), (1, "a"), (1, None), [1], (1, (2,)), None]),
        ("optional_items", [(None, 1), (None, 1.5), (True,), ((1,),), [None]]),
        ("maybe_ints", [None, (), (1,), (1, None), (False,), [1], 1]),
        ("pair", [(1, "a"), (1, b"a"), (True, "a"), (1, "a", 2), (1,), [1, "a"], ()]),
        (
            "nested_pairs",
            [((b"", True),), ((b"", 1),), ((b"",),), (("", True),), ([b"", True],)],
        ),
    ]
    cases += [(_containers(), name, v) for name, values in wrong for v in values]
    pairs: list[object] = [(None, "a"), (1, b"a"), (True, "a"), (1.5, "a"), (None, None), [1, ""]]
    cases += [(UnionPair(pair=(1, "")), "pair", v) for v in pairs]
    return cases


@pytest.mark.parametrize(("msg", "name", "value"), _pure_field_cases())
@pytest.mark.parametrize("depth_max", [1, 2, 3, 4, DEPTH_MAX])
def test_pure_tuple_fields_encode_and_decode_as_on_the_generic_path(
    msg: Any, name: str, value: object, depth_max: int
) -> None:
    changed = copy.copy(msg)
    object.__setattr__(changed, name, value)  # bypasses the frozen dataclass on purpose
    messages: list[object] = [changed]
    if type(changed) is Item:
        messages.append(Enqueue(topic="t", queue=1, producer="p", seq=1, items=(changed,) * 2))
    for one in messages:
        generated, generic = _both_paths(partial(encode, one, depth_max=depth_max))
        assert generated == generic
    # The same value in a frame, as a peer could send it.
    tree = msgpack.unpackb(encode(msg))
    tree[2 + [f.name for f in dataclasses.fields(msg)].index(name)] = value
    trees = [tree]
    if type(msg) is Item:
        trees.append([FORMAT_VERSION, tag_of(Enqueue), "t", 1, "p", 1, [tree[1:]] * 2, 0])
    for one in trees:
        # (a lone surrogate is packed as the invalid UTF-8 a hostile peer would send)
        frame = msgpack.packb(one, use_bin_type=True, unicode_errors="surrogatepass")
        generated, generic = _both_paths(partial(decode, frame, depth_max=depth_max))
        assert generated == generic


# --------------------------------------------------------------------------------------------
# Speed figures: python -m tests.test_codec


@message(1098)
@dataclass(frozen=True, slots=True, kw_only=True)
class BenchItem:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    payload: bytes


@message(1097)
@dataclass(frozen=True, slots=True, kw_only=True)
class BenchBatch:
    items: tuple[BenchItem, ...]


def _bench_item(i: int) -> BenchItem:
    return BenchItem(a=i, b=2**40 + i, c=-i, d=123_456, e=0, f=7, payload=bytes(100))


def test_bench_messages_round_trip() -> None:
    batch = BenchBatch(items=tuple(_bench_item(i) for i in range(100)))
    assert decode(encode(batch)) == batch


def _benchmark() -> None:
    import timeit

    item = _bench_item(1)
    batch = BenchBatch(items=tuple(_bench_item(i) for i in range(100)))
    item_data, batch_data = encode(item), encode(batch)
    cases = [
        ("encode 6 ints + 100 bytes", lambda: encode(item), 100_000),
        ("decode 6 ints + 100 bytes", lambda: decode(item_data), 100_000),
        ("encode tuple of 100 of those", lambda: encode(batch), 2_000),
        ("decode tuple of 100 of those", lambda: decode(batch_data), 2_000),
    ]
    for label, run, number in cases:
        best = min(timeit.repeat(run, number=number, repeat=7)) / number
        print(f"{label:32} {best * 1e6:8.2f} µs")


if __name__ == "__main__":
    _benchmark()
