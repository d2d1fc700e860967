"""Item headers in the pure core (``pxq.headers``, the store's rows, the state machine and the
producer) and the seek preview (``SeekPreview``) on the queue state machine.

Goal: headers are a bounded map of small strings whose normal form is checked wherever they
enter (client library, producer machine, store node, state machine); they survive the row
encoding, retry levels and dead letters; rows written before headers still decode; hostile
item arrays are refused, never a crash; a seek preview reports what the seek would do and
changes nothing.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxq import codec
from pxq.headers import (
    HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX,
    HEADERS_BYTES_MAX,
    HEADERS_MAX,
    flat_headers,
    headers_problem,
    normal_headers,
)
from pxq.store.commands import EnqueueCmd, RetryCmd
from pxq.store.messages import Item, RetryOk, SeekOk, SeekPreview, StoredItem, StoreError
from pxq.store.records import pack_items, unpack_items
from tests.test_store_sm import Disk, commit, enq, ok, seek

H = (("source", "web"), ("trace-id", "ab12"))


def test_normal_headers_sort_by_name_and_empty_is_none() -> None:
    assert normal_headers({"trace-id": "ab12", "source": "web"}) == H
    assert normal_headers({}) == ()
    assert normal_headers(None) == ()


@pytest.mark.parametrize(
    ("headers", "error", "says"),
    [
        ({"a": 1}, TypeError, "must be str"),
        ({1: "a"}, TypeError, "must be str"),
        ({"": "x"}, ValueError, f"1..{HEADER_NAME_BYTES_MAX} bytes"),
        ({"n" * (HEADER_NAME_BYTES_MAX + 1): "x"}, ValueError, "bytes"),
        ({"a": "v" * (HEADER_VALUE_BYTES_MAX + 1)}, ValueError, "exceeds"),
        ({f"h{i}": "" for i in range(HEADERS_MAX + 1)}, ValueError, "exceed the limit"),
        (
            {f"h{i}": "v" * (HEADERS_BYTES_MAX // 4) for i in range(5)},
            ValueError,
            f"exceed {HEADERS_BYTES_MAX}",
        ),
        ({"a": "\udc80"}, ValueError, "valid Unicode"),
    ],
)
def test_broken_headers_are_refused_saying_which_limit(
    headers: dict[object, object], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        normal_headers(headers)  # type: ignore[arg-type]


def test_headers_out_of_normal_form_are_a_problem() -> None:
    assert headers_problem(H) is None
    assert "sorted" in str(headers_problem((H[1], H[0])))
    assert "unique" in str(headers_problem((("a", "1"), ("a", "2"))))


def test_rows_without_headers_decode_as_before_and_with_headers_round_trip() -> None:
    old = msgpack.packb([[b"k", b"p", ""]], use_bin_type=True)  # a row from before headers
    assert pack_items([(b"k", b"p", "")]) == old
    assert unpack_items(old, 10) == [[b"k", b"p", ""]]
    new = pack_items([(b"k", b"p", "", flat_headers(H))])
    assert unpack_items(new, 10) == [[b"k", b"p", "", ["source", "web", "trace-id", "ab12"]]]


@pytest.mark.parametrize(
    "item",
    [
        [b"k", b"p", "", []],  # empty headers are written as no element
        [b"k", b"p", "", ["a"]],  # odd
        [b"k", b"p", "", ["b", "1", "a", "2"]],  # unsorted
        [b"k", b"p", "", ["a", b"1"]],  # bytes value
        [b"k", b"p", "", "a"],  # not a list
        [b"k", b"p", "", ["a", "1"], 5],  # five elements
        [b"k", b"p", "", ["h", "v"] * (HEADERS_MAX + 1)],
    ],
)
def test_hostile_stored_headers_are_refused(item: list[object]) -> None:
    assert unpack_items(msgpack.packb([item], use_bin_type=True), 10) is None


@given(st.binary(max_size=64))
def test_unpack_items_of_any_bytes_is_a_list_or_none(blob: bytes) -> None:
    result = unpack_items(blob, 10)
    assert result is None or isinstance(result, list)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8), st.text(max_size=16), max_size=HEADERS_MAX
    ).filter(lambda d: headers_problem(tuple(sorted(d.items()))) is None)
)
def test_messages_with_headers_round_trip_through_the_codec(headers: dict[str, str]) -> None:
    normal = normal_headers(headers)
    item = Item(key=b"k", payload=b"p", kind="x", headers=normal)
    stored = StoredItem(offset=1, enqueued_ms=2, key=b"k", payload=b"p", headers=normal)
    preview = SeekPreview(topic="t", group="g", queue=0, back_ms=5)
    for msg in (item, stored, preview):
        assert codec.decode(codec.encode(msg)) == msg


def _enqueue_with_headers(d: Disk, seq: int, headers: tuple[tuple[str, str], ...]) -> None:
    items = pack_items([(f"k{seq}".encode(), b"payload", "", flat_headers(headers))])
    ok(d.one(EnqueueCmd(producer="p", seq=seq, topic="t", queue=0, wall_ms=1000, items=items)))


def test_headers_come_back_on_get_and_survive_retry_levels_and_dead_letters() -> None:
    d = Disk()
    d.one(enq(1))  # an item without headers, beside one with
    _enqueue_with_headers(d, 2, H)
    got = d.get()
    assert [i.headers for i in got.items] == [(), H]
    # level 1, level 2, then the dead-letter topic: the copy keeps the headers each time
    topic, offset = "t", 1
    for _ in range(3):
        r = d.one(RetryCmd(topic=topic, group="all", queue=0, offset=offset, token=0, wall_ms=1))
        assert isinstance(r, RetryOk), r
        topic, offset = r.moved_to, r.moved_offset
        moved = d.get(topic=topic).items
        assert [(i.headers, i.payload) for i in moved] == [(H, b"payload")]
    assert topic == "t.dlq.all"


def test_a_seek_preview_reports_the_seek_and_moves_nothing() -> None:
    d = Disk()
    for seq in range(1, 6):
        d.one(enq(seq))
    d.one(commit(3))
    back = d.qs.preview_seek(SeekPreview(topic="t", group="all", queue=0, offset=1), 0)
    assert back == SeekOk(topic="t", group="all", positions=((0, 1),))
    fwd = d.qs.preview_seek(SeekPreview(topic="t", group="all", queue=0, offset=9), 0)
    assert fwd == SeekOk(topic="t", group="all", positions=((0, 5),), forward=((0, 3),))
    assert d.qs.cursor("t", "all", 0) == 3 and d.qs.epoch("t", "all", 0) == 0
    # what the preview said is what the seek does
    assert d.one(seek(1)) == back
    refused = d.qs.preview_seek(SeekPreview(topic="t", group="nope", queue=0, offset=1), 0)
    assert isinstance(refused, StoreError) and refused.code == "unknown_group"
    two = d.qs.preview_seek(SeekPreview(topic="t", group="all", queue=0, offset=1, back_ms=1), 0)
    assert isinstance(two, StoreError) and two.code == "bad_request"


def test_a_seek_preview_back_in_time_is_measured_from_the_given_wall_clock() -> None:
    d = Disk()
    for seq, wall in ((1, 1000), (2, 2000), (3, 3000)):
        d.one(enq(seq, wall_ms=wall))
    d.one(commit(3))
    preview = SeekPreview(topic="t", group="all", queue=0, back_ms=1500)
    assert d.qs.preview_seek(preview, 3500) == SeekOk(topic="t", group="all", positions=((0, 1),))
    never_forward = d.qs.preview_seek(preview, 9000)
    assert never_forward == SeekOk(topic="t", group="all", positions=((0, 3),))


def test_the_producer_sends_headers_with_the_item_and_refuses_broken_ones() -> None:
    from pxq.producer.messages import Produce, Produced, ProduceFailed
    from tests.test_producer import enqueues, make

    _, h = make()
    good = h.call(Produce(topic="t", key=b"k", payload=b"x", headers=H))
    bad = h.call(Produce(topic="t", key=b"k", payload=b"x", headers=(H[1], H[0])))
    h.run_until(lambda: good in h.replies and bad in h.replies)
    assert isinstance(h.replies[good], Produced)
    refused = h.replies[bad]
    assert isinstance(refused, ProduceFailed) and refused.code == "bad_request"
    assert [i.headers for _, _, b in enqueues(h) for i in b.items] == [H]
