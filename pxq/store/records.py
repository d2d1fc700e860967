"""The queue store's tables, keys and record encodings (everything it persists).

Every key starts with the u32 Paxos group, so one group's state is one key range per table
(``group_bounds``): a snapshot streams it, an install deletes it. Integers in keys are
big-endian, so bytewise key order is numeric order. Names (topics, consumer groups,
producers) enter keys with a one-byte length prefix: keys of one name are contiguous, and
two names never share a prefix ambiguously.

| table        | key                                              | value                          |
|--------------|--------------------------------------------------|--------------------------------|
| ``q_queue``  | group, topic, u32 queue                          | first offset, end offset, last enqueue ms |
| ``q_item``   | group, topic, u32 queue, u64 first offset        | one enqueue batch (a *row*)    |
| ``q_cursor`` | group, topic, u32 queue, consumer group          | cursor, highest fencing token, seek epoch |
| ``q_producer`` | group, producer                                | highest seq, last use (instance, slot) |
| ``q_dedupe`` | group, producer, u64 seq                         | receipt: topic, queue, first offset, count |

A row holds the items of one enqueue (or one retry copy) at consecutive offsets: a 24-byte
header (enqueue wall ms, attempt, not-before wall ms, item count) followed by the msgpack array
``[[key, payload, kind], ...]`` exactly as the enqueue command carried it, so applying an
enqueue stores the bytes it was given without re-encoding them. An item with headers is
``[key, payload, kind, [name1, value1, ...]]`` (``pxq.headers``: sorted, unique, within the
limits, never empty); an item without has the three elements rows had before headers, so
rows written before headers decode unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import msgpack

from pxq.effects import InvariantViolation
from pxq.headers import HEADERS_MAX, headers_problem, pairs_of_flat

Q_QUEUE: Final = "q_queue"
Q_ITEM: Final = "q_item"
Q_CURSOR: Final = "q_cursor"
Q_PRODUCER: Final = "q_producer"
Q_DEDUPE: Final = "q_dedupe"
TABLES: Final = (Q_QUEUE, Q_ITEM, Q_CURSOR, Q_PRODUCER, Q_DEDUPE)
"""Every table of the store, in snapshot order."""

NAME_BYTES_MAX: Final = 255
"""Longest name (UTF-8) in a key: the length prefix is one byte."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_QUEUE_META = struct.Struct(">QQQ")
_ROW_HEAD = struct.Struct(">QIQI")
ROW_HEAD_BYTES: Final = _ROW_HEAD.size
_CURSOR = struct.Struct(">QQQ")
_PRODUCER = struct.Struct(">QQI")
_RECEIPT = struct.Struct(">QII")

U64_MAX: Final = 2**64 - 1


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def name_part(name: str) -> bytes:
    """A name as a key part: one length byte, then UTF-8."""
    raw = name.encode("utf-8")
    if len(raw) > NAME_BYTES_MAX:
        raise ValueError(f"name of {len(raw)} bytes exceeds {NAME_BYTES_MAX}")
    return bytes((len(raw),)) + raw


def group_bounds(group: int) -> tuple[bytes, bytes]:
    """The key range [start, end) of ``group`` in every table."""
    return _U32.pack(group), _U32.pack(group + 1)


def queue_prefix(group: int, topic: str, queue: int) -> bytes:
    """The key of a queue in ``q_queue``; the prefix of its rows and cursors."""
    return _U32.pack(group) + name_part(topic) + _U32.pack(queue)


def parse_queue_key(key: bytes) -> tuple[int, str, int, int]:
    """(group, topic, queue, length of the queue prefix) of a key starting with a queue prefix."""
    group = _U32.unpack_from(key, 0)[0]
    n = key[4]
    topic = key[5 : 5 + n].decode("utf-8")
    queue = _U32.unpack_from(key, 5 + n)[0]
    return group, topic, queue, 9 + n


def cursor_key(prefix: bytes, consumer_group: str) -> bytes:
    return prefix + name_part(consumer_group)


def parse_cursor_key(key: bytes) -> tuple[int, str, int, str]:
    group, topic, queue, n = parse_queue_key(key)
    m = key[n]
    return group, topic, queue, key[n + 1 : n + 1 + m].decode("utf-8")


def producer_key(group: int, producer: str) -> bytes:
    return _U32.pack(group) + name_part(producer)


def parse_producer_key(key: bytes) -> str:
    n = key[4]
    return key[5 : 5 + n].decode("utf-8")


def dedupe_key(producer_key_: bytes, seq: int) -> bytes:
    return producer_key_ + _U64.pack(seq)


# --------------------------------------------------------------------------------------------
# Values


def encode_queue_meta(first: int, end: int, last_ms: int) -> bytes:
    return _QUEUE_META.pack(first, end, last_ms)


def decode_queue_meta(value: bytes) -> tuple[int, int, int]:
    first, end, last_ms = _QUEUE_META.unpack(value)
    return first, end, last_ms


def encode_cursor(cursor: int, token: int, epoch: int) -> bytes:
    return _CURSOR.pack(cursor, token, epoch)


def decode_cursor(value: bytes) -> tuple[int, int, int]:
    """(cursor, highest fencing token, seek epoch); a value of any other length (such as the
    16-byte record before seek epochs) raises ``struct.error``."""
    cursor, token, epoch = _CURSOR.unpack(value)
    return cursor, token, epoch


def encode_producer(high: int, instance: int, slot: int) -> bytes:
    return _PRODUCER.pack(high, instance, slot)


def decode_producer(value: bytes) -> tuple[int, int, int]:
    high, instance, slot = _PRODUCER.unpack(value)
    return high, instance, slot


def encode_receipt(topic: str, queue: int, first: int, count: int) -> bytes:
    return _RECEIPT.pack(first, count, queue) + topic.encode("utf-8")


def decode_receipt(value: bytes) -> tuple[str, int, int, int]:
    first, count, queue = _RECEIPT.unpack_from(value, 0)
    return value[_RECEIPT.size :].decode("utf-8"), queue, first, count


def encode_row(
    enqueued_ms: int, attempt: int, not_before_ms: int, count: int, items: bytes
) -> bytes:
    return _ROW_HEAD.pack(enqueued_ms, attempt, not_before_ms, count) + items


def row_head(row: bytes) -> tuple[int, int, int, int]:
    """(enqueued_ms, attempt, not_before_ms, count) of a row."""
    enqueued_ms, attempt, not_before_ms, count = _ROW_HEAD.unpack_from(row, 0)
    return enqueued_ms, attempt, not_before_ms, count


def row_items(row: bytes) -> list[list[Any]]:
    """The ``[key, payload, kind]`` (or ``[key, payload, kind, headers]``) lists of a row
    (checked when the enqueue was applied)."""
    items: list[list[Any]] = msgpack.unpackb(memoryview(row)[ROW_HEAD_BYTES:], raw=False)
    if len(items) != _ROW_HEAD.unpack_from(row, 0)[3]:
        raise InvariantViolation("a stored row's item count disagrees with its header")
    return items


def pack_items(items: Sequence[Sequence[Any]]) -> bytes:
    """The msgpack array of ``[key, payload, kind]`` triples (``[key, payload, kind, flat
    headers]`` for an item with headers)."""
    data: bytes = msgpack.packb(items, use_bin_type=True)
    return data


def unpack_items(blob: bytes, count_max: int) -> list[list[Any]] | None:
    """Decode and check an items array: None unless it is a list of at most ``count_max``
    ``[bytes, bytes, str]`` or ``[bytes, bytes, str, headers]`` lists, the headers a
    non-empty flat array in ``pxq.headers`` normal form."""
    try:
        items = msgpack.unpackb(
            blob,
            raw=False,
            max_array_len=max(count_max, 2 * HEADERS_MAX, 4),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # any malformed input is a bad request, never a crash
        return None
    if type(items) is not list or len(items) > count_max:
        return None
    for it in items:
        if (
            type(it) is not list
            or not 3 <= len(it) <= 4
            or type(it[0]) is not bytes
            or type(it[1]) is not bytes
            or type(it[2]) is not str
        ):
            return None
        if len(it) == 4 and not _flat_headers_ok(it[3]):
            return None
    return items


def _flat_headers_ok(flat: object) -> bool:
    if type(flat) is not list or not flat or len(flat) % 2 or len(flat) > 2 * HEADERS_MAX:
        return False
    if not all(type(s) is str for s in flat):
        return False
    return headers_problem(pairs_of_flat(flat)) is None
