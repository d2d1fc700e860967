"""The lock-service key space of consumer balancing, shared by consumers
(``pxq.consumer.ownership``) and the scheduler (``pxq.scheduler.node``): the keys, the
holders' names, and the encodings of the values both sides read and write.

Keys (a key's directory, up to its last "/", picks its lock group)::

    m/<group>/<consumer>          membership: leased by each live consumer of the group; the
                                  value is the consumer's weight and its load report
    q/<group>/<topic>/<queue>     ownership of one base queue (with its retry levels); the
                                  version granted is the fencing token of every cursor commit
    a/<group>                     the scheduler's published assignment (when it runs)
    s/leader                      the active scheduler (any number may run; one holds this)

Holders are *incarnations* ``<name>#<random>`` (``HOLDER_SEP``): a restarted process cannot
renew its predecessor's leases.

Values (version 1 of the assignment and load report; every list is a msgpack array, no maps,
no binary)::

    membership:  [weight >= 1, load report bytes]
    assignment:  [1, members, topics]
                 members = [name, ...]                       distinct, sorted
                 topics  = [[topic, owners], ...]            distinct topics, sorted
                 owners  = [[member index, [queue, ...]], ...]  by index, queues ascending
    load report: [1, [[topic, [queue, load, queue, load, ...]], ...]]
                                                             topics sorted, queues ascending

Grouping by topic and member keeps an assignment small: a queue number costs 1 to 5 bytes and
each name is written once, so 2,000 queues over 20 members take about 6 KB. ``encode_*``
write the canonical form (equal mappings give equal bytes) and raise ``ValueError`` when the
input is invalid or the result would exceed ``VALUE_BYTES_MAX`` (the lock service's limit on
one value). ``decode_assignment`` and ``decode_load`` accept any order but raise
``ValueError``, naming the problem, for anything else: oversized input, bytes that are not
msgpack or not this shape, a wrong version, names or numbers outside the limits of
``pxq.rendezvous``, a queue listed twice. Decoding never raises another exception type,
whatever the bytes (fuzzed in the tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgpack

from pxq.lock.messages import VALUE_BYTES_MAX
from pxq.rendezvous import (
    LOAD_MAX,
    QUEUE_NUMBER_MAX,
    QueueId,
    check_load,
    check_name,
    check_queue_id,
)

LOCK_REQ_ID_BASE: Final = 1 << 48
"""Request ids of a consumer's or scheduler's lock calls (``LockCalls(req_id_base=...)``)
start here, above any id the consumer's ``Consumer`` machine uses."""
REQ_ID_BASE_MAX: Final = 1 << 47
"""A consumer's or scheduler's ``req_id_base`` (one range per incarnation) is below this: its
``Consumer`` machine numbers requests from ``req_id_base + 1`` (below ``LOCK_REQ_ID_BASE``),
its lock calls from ``LOCK_REQ_ID_BASE + req_id_base + 1``."""


def check_req_id_base(req_id_base: int) -> int:
    """``req_id_base`` if it is in 0..``REQ_ID_BASE_MAX - 1``; else ``ValueError``."""
    if not 0 <= req_id_base < REQ_ID_BASE_MAX:
        raise ValueError(f"req_id_base: must be in 0..{REQ_ID_BASE_MAX - 1}, got {req_id_base}")
    return req_id_base


HOLDER_SEP: Final = "#"
"""Between a process's name and its incarnation in a holder's name."""
LEADER_KEY: Final = "s/leader"
"""Held by the active scheduler."""


# --------------------------------------------------------------------------------------------
# Keys


def member_dir(group: str) -> str:
    return f"m/{group}/"


def member_key(group: str, consumer: str) -> str:
    return f"m/{group}/{consumer}"


def queue_key(group: str, topic: str, queue: int) -> str:
    return f"q/{group}/{topic}/{queue}"


def assignment_key(group: str) -> str:
    return f"a/{group}"


# --------------------------------------------------------------------------------------------
# Value encodings

FORMAT_VERSION: Final = 1
"""First element of the assignment and of the load report; other versions are refused."""


def _pack(what: str, value: object) -> bytes:
    data = bytes(msgpack.packb(value, use_bin_type=True))
    if len(data) > VALUE_BYTES_MAX:
        raise ValueError(
            f"{what} encodes to {len(data)} bytes, over VALUE_BYTES_MAX = {VALUE_BYTES_MAX}"
        )
    return data


def _unpack(what: str, data: bytes) -> object:
    if not isinstance(data, bytes):
        raise ValueError(f"{what}: expected bytes, got {type(data).__name__}")
    size = len(data)
    if size > VALUE_BYTES_MAX:
        raise ValueError(f"{what}: {size} bytes, over VALUE_BYTES_MAX = {VALUE_BYTES_MAX}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            max_str_len=size,
            max_bin_len=0,  # no binary anywhere in these formats
            max_array_len=size,
            max_map_len=0,  # nor maps
            max_ext_len=0,  # nor extension types
        )
    except Exception as exc:  # msgpack's errors: truncated, extra data, bad UTF-8, limits...
        raise ValueError(
            f"{what}: not a valid msgpack value ({type(exc).__name__}: {exc})"
        ) from exc


def _list(what: str, value: object, length: int | None = None) -> list[object]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        shape = "an array" if length is None else f"an array of {length}"
        raise ValueError(f"{what}: expected {shape}, got {value!r:.80}")
    return value


def _int(what: str, value: object, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ValueError(f"{what}: expected an int in 0..{high}, got {value!r:.80}")
    return value


def _header(what: str, data: bytes, length: int) -> list[object]:
    top = _list(what, _unpack(what, data), length)
    if top[0] != FORMAT_VERSION or isinstance(top[0], bool):
        raise ValueError(f"{what}: format version {top[0]!r:.40}, expected {FORMAT_VERSION}")
    return top


# --------------------------------------------------------------------------------------------
# Assignment


def encode_assignment(assignment: Mapping[QueueId, str]) -> bytes:
    """The scheduler's assignment (queue -> member) as a lock-service value."""
    by_topic: dict[str, dict[str, list[int]]] = {}
    for queue, member in assignment.items():
        topic, number = check_queue_id(queue)
        check_name(f"owner of {queue!r}", member)
        by_topic.setdefault(topic, {}).setdefault(member, []).append(number)
    names = sorted({m for owners in by_topic.values() for m in owners})
    index = {name: i for i, name in enumerate(names)}
    topics = [
        [topic, [[index[m], sorted(qs)] for m, qs in sorted(owners.items())]]
        for topic, owners in sorted(by_topic.items())
    ]
    return _pack("assignment", [FORMAT_VERSION, names, topics])


def decode_assignment(data: bytes) -> dict[QueueId, str]:
    """The assignment in a value written by ``encode_assignment``; ``ValueError`` if
    malformed or oversized."""
    top = _header("assignment", data, 3)
    names: list[str] = []
    for i, name in enumerate(_list("assignment members", top[1])):
        names.append(check_name(f"assignment member {i}", name))
    if len(set(names)) != len(names):
        raise ValueError("assignment members: a name is listed twice")
    out: dict[QueueId, str] = {}
    seen_topics: set[str] = set()
    for t, raw_topic in enumerate(_list("assignment topics", top[2])):
        topic_entry = _list(f"assignment topic {t}", raw_topic, 2)
        topic = check_name(f"assignment topic {t}", topic_entry[0])
        if topic in seen_topics:
            raise ValueError(f"assignment: topic {topic!r} is listed twice")
        seen_topics.add(topic)
        for raw_owner in _list(f"assignment topic {topic!r} owners", topic_entry[1]):
            owner_entry = _list(f"assignment topic {topic!r} owner", raw_owner, 2)
            member = names[
                _int(f"assignment topic {topic!r} member index", owner_entry[0], len(names) - 1)
            ]
            for raw_number in _list(f"assignment topic {topic!r} queues", owner_entry[1]):
                number = _int(f"assignment topic {topic!r} queue", raw_number, QUEUE_NUMBER_MAX)
                if (topic, number) in out:
                    raise ValueError(f"assignment: queue ({topic!r}, {number}) is listed twice")
                out[(topic, number)] = member
    return out


# --------------------------------------------------------------------------------------------
# Load report


def encode_load(loads: Mapping[QueueId, int]) -> bytes:
    """A consumer's load report (per owned queue, items per minute) as a lock-service value."""
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for queue, load in loads.items():
        topic, number = check_queue_id(queue)
        by_topic.setdefault(topic, []).append((number, check_load(queue, load)))
    topics = [
        [topic, [x for pair in sorted(pairs) for x in pair]]
        for topic, pairs in sorted(by_topic.items())
    ]
    return _pack("load report", [FORMAT_VERSION, topics])


def decode_load(data: bytes) -> dict[QueueId, int]:
    """The loads in a value written by ``encode_load``; ``ValueError`` if malformed or
    oversized."""
    top = _header("load report", data, 2)
    out: dict[QueueId, int] = {}
    seen_topics: set[str] = set()
    for t, raw_topic in enumerate(_list("load report topics", top[1])):
        topic_entry = _list(f"load report topic {t}", raw_topic, 2)
        topic = check_name(f"load report topic {t}", topic_entry[0])
        if topic in seen_topics:
            raise ValueError(f"load report: topic {topic!r} is listed twice")
        seen_topics.add(topic)
        flat = _list(f"load report topic {topic!r} loads", topic_entry[1])
        if len(flat) % 2:
            raise ValueError(f"load report topic {topic!r}: odd number of queue/load items")
        for i in range(0, len(flat), 2):
            number = _int(f"load report topic {topic!r} queue", flat[i], QUEUE_NUMBER_MAX)
            load = _int(f"load report queue ({topic!r}, {number}) load", flat[i + 1], LOAD_MAX)
            if (topic, number) in out:
                raise ValueError(f"load report: queue ({topic!r}, {number}) is listed twice")
            out[(topic, number)] = load
    return out


# --------------------------------------------------------------------------------------------
# Membership


def encode_member(weight: int, loads: Mapping[QueueId, int]) -> bytes:
    """A membership key's value: the consumer's weight and its load report."""
    return bytes(msgpack.packb([weight, encode_load(loads)], use_bin_type=True))


def decode_member(data: bytes) -> tuple[int, dict[QueueId, int]]:
    """``(weight, loads)`` of a membership value; ``ValueError`` if malformed."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"membership value: not msgpack: {exc}") from exc
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not isinstance(raw[0], int)
        or isinstance(raw[0], bool)
        or raw[0] < 1
        or not isinstance(raw[1], bytes)
    ):
        raise ValueError("membership value: expected [weight >= 1, load bytes]")
    return raw[0], decode_load(raw[1])
