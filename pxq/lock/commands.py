"""The commands of the lock state machine: the values a lock node proposes through Paxos.

Encoding: one compact positional msgpack array per command (not a registered codec message,
as for the store's commands)::

    [1, key, holder, lease_ms, expected_version | nil, now_ms, value]   acquire
    [2, key, holder, version, lease_ms, now_ms, value | nil]            renew
    [3, key, holder, version, now_ms]                                   release
    [4, key, now_ms]                                       read (ordered through the log)
    [5, now_ms]                                            cleanup of expired entries
    [6, prefix, entries_max, start_after, now_ms]          list a directory through the log
    [7, key, now_ms]                                       register read (through the log)
    [8, key, value, fence_key | nil, fence_version | nil, now_ms]             register write
    [9, key, expected | nil, value, fence_key | nil, fence_version | nil, now_ms]  register cas

An acquire or renew without its last field (the encoding before values existed) decodes with
value ``b""`` (acquire) or nil (renew: keep the value), so logs written before stay readable.

Every command carries the proposing master's wall time ``now_ms``, so applying never reads a
clock. ``decode_command`` of any byte string returns a command whose fields have exactly their
declared types, or raises ``CommandError`` (a chosen value is applied on every replica, so a
malformed one must become an error result, never a crash). Semantic limits (lengths, lease
range) are checked by the state machine, which answers ``bad_request``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from pxq.positional import CommandError, blob, pack, text, u64, unpack

OP_ACQUIRE: Final = 1
OP_RENEW: Final = 2
OP_RELEASE: Final = 3
OP_READ: Final = 4
OP_CLEANUP: Final = 5
OP_LIST: Final = 6
OP_REG_READ: Final = 7
OP_REG_WRITE: Final = 8
OP_REG_CAS: Final = 9
FIELDS_MAX: Final = 8
"""The longest command array."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireCmd:
    key: str
    holder: str
    lease_ms: int
    expected_version: int | None
    now_ms: int
    value: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewCmd:
    key: str
    holder: str
    version: int
    lease_ms: int
    now_ms: int
    value: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseCmd:
    key: str
    holder: str
    version: int
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadCmd:
    key: str
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupCmd:
    """Free the expired entries (keeping their versions), as of ``now_ms``."""

    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ListCmd:
    """List the live entries of directory ``prefix`` (``pxq.lock.messages.ListLocks``)."""

    prefix: str
    entries_max: int
    start_after: str
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegReadCmd:
    """Read register ``key`` (``pxq.lock.messages.ReadRegister``) through the log."""

    key: str
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegWriteCmd:
    """Set register ``key`` to ``value``; ``fence`` (lock key, version): only while that lock
    entry is held with that version at the command's time."""

    key: str
    value: bytes
    fence: tuple[str, int] | None
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RegCasCmd:
    """Set register ``key`` to ``value`` if it holds ``expected`` (None: never written);
    ``fence`` as for ``RegWriteCmd``."""

    key: str
    expected: bytes | None
    value: bytes
    fence: tuple[str, int] | None
    now_ms: int


Command: TypeAlias = (
    AcquireCmd
    | RenewCmd
    | ReleaseCmd
    | ReadCmd
    | CleanupCmd
    | ListCmd
    | RegReadCmd
    | RegWriteCmd
    | RegCasCmd
)


def encode_command(cmd: Command) -> bytes:
    fields: list[Any]
    match cmd:
        case AcquireCmd():
            fields = [
                OP_ACQUIRE,
                cmd.key,
                cmd.holder,
                cmd.lease_ms,
                cmd.expected_version,
                cmd.now_ms,
                cmd.value,
            ]
        case RenewCmd():
            fields = [
                OP_RENEW,
                cmd.key,
                cmd.holder,
                cmd.version,
                cmd.lease_ms,
                cmd.now_ms,
                cmd.value,
            ]
        case ReleaseCmd():
            fields = [OP_RELEASE, cmd.key, cmd.holder, cmd.version, cmd.now_ms]
        case ReadCmd():
            fields = [OP_READ, cmd.key, cmd.now_ms]
        case CleanupCmd():
            fields = [OP_CLEANUP, cmd.now_ms]
        case ListCmd():
            fields = [OP_LIST, cmd.prefix, cmd.entries_max, cmd.start_after, cmd.now_ms]
        case RegReadCmd():
            fields = [OP_REG_READ, cmd.key, cmd.now_ms]
        case RegWriteCmd():
            fields = [OP_REG_WRITE, cmd.key, cmd.value, *_fence_fields(cmd.fence), cmd.now_ms]
        case RegCasCmd():
            fields = [
                OP_REG_CAS,
                cmd.key,
                cmd.expected,
                cmd.value,
                *_fence_fields(cmd.fence),
                cmd.now_ms,
            ]
    return pack(fields)


def _fence_fields(fence: tuple[str, int] | None) -> list[Any]:
    return [None, None] if fence is None else [fence[0], fence[1]]


def _fence(key: object, version: object) -> tuple[str, int] | None:
    if key is None and version is None:
        return None
    return (text(key), u64(version))


def decode_command(value: bytes) -> Command:
    fields = unpack(value, FIELDS_MAX)
    op, n = fields[0], len(fields)
    if op == OP_ACQUIRE and n in (6, 7):
        return AcquireCmd(
            key=text(fields[1]),
            holder=text(fields[2]),
            lease_ms=u64(fields[3]),
            expected_version=None if fields[4] is None else u64(fields[4]),
            now_ms=u64(fields[5]),
            value=blob(fields[6]) if n == 7 else b"",
        )
    if op == OP_RENEW and n in (6, 7):
        return RenewCmd(
            key=text(fields[1]),
            holder=text(fields[2]),
            version=u64(fields[3]),
            lease_ms=u64(fields[4]),
            now_ms=u64(fields[5]),
            value=None if n == 6 or fields[6] is None else blob(fields[6]),
        )
    if op == OP_RELEASE and n == 5:
        return ReleaseCmd(
            key=text(fields[1]),
            holder=text(fields[2]),
            version=u64(fields[3]),
            now_ms=u64(fields[4]),
        )
    if op == OP_READ and n == 3:
        return ReadCmd(key=text(fields[1]), now_ms=u64(fields[2]))
    if op == OP_CLEANUP and n == 2:
        return CleanupCmd(now_ms=u64(fields[1]))
    if op == OP_LIST and n == 5:
        return ListCmd(
            prefix=text(fields[1]),
            entries_max=u64(fields[2]),
            start_after=text(fields[3]),
            now_ms=u64(fields[4]),
        )
    if op == OP_REG_READ and n == 3:
        return RegReadCmd(key=text(fields[1]), now_ms=u64(fields[2]))
    if op == OP_REG_WRITE and n == 6:
        return RegWriteCmd(
            key=text(fields[1]),
            value=blob(fields[2]),
            fence=_fence(fields[3], fields[4]),
            now_ms=u64(fields[5]),
        )
    if op == OP_REG_CAS and n == 7:
        return RegCasCmd(
            key=text(fields[1]),
            expected=None if fields[2] is None else blob(fields[2]),
            value=blob(fields[3]),
            fence=_fence(fields[4], fields[5]),
            now_ms=u64(fields[6]),
        )
    raise CommandError(f"unknown command {op!r} with {n} fields")
