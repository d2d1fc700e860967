"""Durable layout of the Paxos core and the byte formats of instance values.

Tables (keys are big-endian so bytewise order is numeric order):

``paxos_meta``   key u32 group + kind byte
    ``P`` promised ballot (u64), ``A`` applied instance + log checksum (u64, u64),
    ``S`` log start: the lowest instance still in the log (u64),
    ``R`` repair under way (u64 flags, absent when none): ``REPAIR_VOTES``, the acceptor's
    promise or accepted values were lost (it votes in no quorum until it has re-learned
    them from its peers); ``REPAIR_STATE``, the state machine was damaged (it applies
    nothing until a peer's snapshot replaced it); ``REPAIR_JOIN``, a replica that found
    blank storage and its peers' word that it never joined the group votes in no quorum
    until a peer has recorded it as a member. See ``repair.py``.
    ``M`` members (u64 bitmask over the set's replicas, in configuration order): the
    replicas this one has recorded as members of the group (absent: every replica).
``paxos_log``    key u32 group + u64 instance
    the acceptor's accepted ballot (u64), flags (u8: bit 0 = known chosen) and the value.

Every record ends with a crc32 of the bytes before it; a mismatch on read raises
``StorageCorruption`` (the driver crashes the node rather than act on a torn record), and
so does a ballot above ``BALLOT_MAX`` (only a forged message could have put it there): the
node then repairs the record from its peers (``repair.py``).

An instance value is an encoded ``Entry``: a no-op or a batch of client values, plus
``check_instance``/``check_checksum``: the proposer's log checksum after applying
``check_instance`` (its chosen prefix when it proposed). Every replica verifies it when it
applies the entry. (A proposer cannot vouch for the checksum of the immediately preceding
instance: with a pipeline, that instance may still be undecided and end up a no-op filled
by a later master.) The log checksum itself is the chain c_i = H(c_{i-1}, value_i), with H
an 8-byte blake2b, computed by every replica as it applies.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from pxq.effects import InvariantViolation, StorageCorruption
from pxq.paxos.ballot import BALLOT_MAX

META = "paxos_meta"
LOG = "paxos_log"

KIND_PROMISE = b"P"
KIND_APPLIED = b"A"
KIND_LOG_START = b"S"
KIND_REPAIR = b"R"
KIND_MEMBERS = b"M"

REPAIR_VOTES = 1
REPAIR_STATE = 2
REPAIR_JOIN = 4

FLAG_CHOSEN = 1

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_LOG_HEAD = struct.Struct(">QB")
_ENTRY_HEAD = struct.Struct(">BQQI")

ENTRY_NOOP = 0
ENTRY_BATCH = 1
ENTRY_OVERHEAD = _ENTRY_HEAD.size
VALUE_OVERHEAD = _U32.size


# --------------------------------------------------------------------------------------------
# Keys


def group_key(group: int) -> bytes:
    return _U32.pack(group)


def meta_key(group: int, kind: bytes) -> bytes:
    return _U32.pack(group) + kind


def log_key(group: int, instance: int) -> bytes:
    return _U32.pack(group) + _U64.pack(instance)


def instance_of_log_key(key: bytes) -> int:
    return int(_U64.unpack_from(key, 4)[0])


# --------------------------------------------------------------------------------------------
# Checksummed records


def seal(payload: bytes) -> bytes:
    return payload + _U32.pack(zlib.crc32(payload))


def unseal(record: bytes, what: str, table: str | None = None, key: bytes | None = None) -> bytes:
    """The payload of a sealed record; ``StorageCorruption`` (naming ``table`` and ``key``
    when given, so that the driver can report the record at the next ``Boot``) if its
    checksum fails."""
    if len(record) < 4:
        raise StorageCorruption(f"{what}: record of {len(record)} bytes", table=table, key=key)
    payload = record[:-4]
    if zlib.crc32(payload) != _U32.unpack_from(record, len(record) - 4)[0]:
        raise StorageCorruption(f"{what}: checksum mismatch", table=table, key=key)
    return payload


def encode_u64(n: int) -> bytes:
    return seal(_U64.pack(n))


def decode_u64(record: bytes, what: str, key: bytes | None = None) -> int:
    """A u64 ``paxos_meta`` record (``key``: its key, named in a ``StorageCorruption``)."""
    payload = unseal(record, what, META, key)
    if len(payload) != 8:
        raise StorageCorruption(f"{what}: bad length {len(payload)}", table=META, key=key)
    return int(_U64.unpack(payload)[0])


def encode_applied(instance: int, checksum: int) -> bytes:
    return seal(_U64X2.pack(instance, checksum))


def decode_applied(record: bytes, key: bytes | None = None) -> tuple[int, int]:
    payload = unseal(record, "applied record", META, key)
    if len(payload) != 16:
        raise StorageCorruption(f"applied record: bad length {len(payload)}", table=META, key=key)
    instance, checksum = _U64X2.unpack(payload)
    return int(instance), int(checksum)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRecord:
    """One acceptor log slot: the accepted ballot and value, and whether it is known chosen."""

    ballot: int
    value: bytes
    chosen: bool


def encode_log(ballot: int, value: bytes, chosen: bool) -> bytes:
    return seal(_LOG_HEAD.pack(ballot, FLAG_CHOSEN if chosen else 0) + value)


def decode_log(record: bytes, key: bytes | None = None) -> LogRecord:
    """A ``paxos_log`` record (``key``: its key, named in a ``StorageCorruption``)."""
    payload = unseal(record, "log record", LOG, key)
    if len(payload) < _LOG_HEAD.size:
        raise StorageCorruption("log record: too short", table=LOG, key=key)
    ballot, flags = _LOG_HEAD.unpack_from(payload)
    if ballot > BALLOT_MAX:
        raise StorageCorruption(
            f"log record: ballot {ballot} is above the largest a replica can own",
            table=LOG,
            key=key,
        )
    return LogRecord(
        ballot=int(ballot), value=payload[_LOG_HEAD.size :], chosen=bool(flags & FLAG_CHOSEN)
    )


# --------------------------------------------------------------------------------------------
# Instance values


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A decoded instance value."""

    noop: bool
    check_instance: int
    check_checksum: int
    values: tuple[bytes, ...]


def encode_entry(
    values: list[bytes] | tuple[bytes, ...], check_instance: int, check_checksum: int
) -> bytes:
    """A batch of client values (an empty list encodes a no-op)."""
    kind = ENTRY_BATCH if values else ENTRY_NOOP
    parts = [_ENTRY_HEAD.pack(kind, check_instance, check_checksum, len(values))]
    pack = _U32.pack
    for v in values:
        parts.append(pack(len(v)))
        parts.append(v)
    return b"".join(parts)


def decode_entry(value: bytes) -> Entry:
    """Decode an instance value; a malformed one is an invariant violation (it was chosen)."""
    if len(value) < _ENTRY_HEAD.size:
        raise InvariantViolation("instance value too short")
    kind, check_instance, check_checksum, count = _ENTRY_HEAD.unpack_from(value)
    pos = _ENTRY_HEAD.size
    values: list[bytes] = []
    unpack = _U32.unpack_from
    end = len(value)
    for _ in range(count):
        if pos + 4 > end:
            raise InvariantViolation("instance value truncated")
        (n,) = unpack(value, pos)
        pos += 4
        if pos + n > end:
            raise InvariantViolation("instance value truncated")
        values.append(value[pos : pos + n])
        pos += n
    if pos != end or kind not in (ENTRY_NOOP, ENTRY_BATCH) or (kind == ENTRY_NOOP) != (count == 0):
        raise InvariantViolation("instance value malformed")
    return Entry(
        noop=kind == ENTRY_NOOP,
        check_instance=int(check_instance),
        check_checksum=int(check_checksum),
        values=tuple(values),
    )


def chain(previous: int, value: bytes) -> int:
    """The log checksum after appending ``value`` to a log whose checksum is ``previous``."""
    h = hashlib.blake2b(_U64.pack(previous), digest_size=8)
    h.update(value)
    return int.from_bytes(h.digest(), "big")


def digest(data: bytes) -> bytes:
    """A 16-byte blake2b digest (for snapshot transfers)."""
    return hashlib.blake2b(data, digest_size=16).digest()
