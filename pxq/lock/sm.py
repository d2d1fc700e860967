"""``LockTable``: the lock state machine of one Paxos group of the lock service.

It owns the map key -> (holder, version, expiry_ms) of one group, the group's applied time,
and their persistence. It implements ``pxq.paxos.sm.StateMachine``; the commands it applies are
in ``commands.py``, the client-facing meaning of the results in ``messages.py``.

Rules (``pxq.check.linear.lock_transition`` states the same sequential semantics for the
linearizability checker; a differential test keeps the two in agreement):

* Time. A command is applied at ``t = max(command.now_ms, group time)`` and the group time
  becomes ``t``: time never goes back in the log, whatever the proposers' clocks do. At ``t`` an
  entry is *held* iff it has a holder and ``t < expiry_ms``.
* Acquire: the holder of a held entry re-acquiring renews (same version, expiry ``t + lease``);
  a free or expired entry, or one whose version equals ``expected_version``, is granted with
  version + 1 (the first grant of a key gets version 1); anything else is denied.
* Renew: only by the holder of a held entry with its version (expiry ``t + lease``).
* Release: with the entry's version, by its holder or when it is no longer held; frees it at
  once, keeping the version.
* Read: the entry as held at ``t`` (a free or expired entry reads as holder ``""``, expiry 0).
* Cleanup: frees the expired entries at ``t`` (at most ``CLEANUP_KEYS_MAX`` per command, lowest
  keys first), keeping each key's version as its floor, so versions never go backwards. It is
  invisible to clients: an expired entry already reads and acquires as free, and ``t`` only
  grows; it only drops holders' names from the state.

Versions are per key: a free entry is never deleted (its version is the floor of the next
grant), so the number of keys a group ever saw is bounded by ``keys_max``.

Persistence (every key starts with the u32 group; integers big-endian):

| table        | key                     | value                                    |
|--------------|-------------------------|------------------------------------------|
| ``lock_key`` | group, key (UTF-8)      | u64 version, u64 expiry_ms, holder (UTF-8) |
| ``lock_meta``| group                   | u64 group time                           |

The whole map lives in RAM (a lock group holds few keys); writes are puts of final values, so
a step that applies several commands needs no read-back through the storage view.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, assert_never

from pxq import codec
from pxq.effects import EffectsBuilder, InvariantViolation, StorageView
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    CommandError,
    ReadCmd,
    ReleaseCmd,
    RenewCmd,
    decode_command,
)
from pxq.lock.messages import (
    HOLDER_BYTES_MAX,
    KEY_BYTES_MAX,
    LEASE_MS_MAX,
    LockDenied,
    LockError,
    LockOk,
)

L_KEY: Final = "lock_key"
L_META: Final = "lock_meta"
TABLES: Final = (L_KEY, L_META)

KEYS_MAX_DEFAULT: Final = 100_000
"""Keys (held or free) one group may hold; a grant of a new key beyond it is refused."""
CLEANUP_KEYS_MAX: Final = 1_000
"""Expired entries one cleanup command frees at most (the rest wait for the next one)."""
SNAPSHOT_MAGIC: Final = b"PXQL\x01"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY = struct.Struct(">QQ")
_SNAP_ENTRY = struct.Struct(">HHQQ")


@dataclass(slots=True)
class LockEntry:
    """One key's entry; ``holder == ""`` when free (released or cleaned up)."""

    holder: str
    version: int
    expiry_ms: int

    def held_at(self, t: int) -> bool:
        return self.holder != "" and t < self.expiry_ms


def _bad(message: str) -> bytes:
    return codec.encode(LockError(code="bad_request", message=message))


def _name_ok(name: str, limit: int) -> bool:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(raw) <= limit


class LockTable:
    """The locks of one Paxos group of the lock service; a ``pxq.paxos.sm.StateMachine``."""

    __slots__ = ("entries", "group", "keys_max", "time_ms", "view")

    def __init__(self, view: StorageView, group: int, *, keys_max: int = KEYS_MAX_DEFAULT) -> None:
        if keys_max < 1:
            raise ValueError("keys_max must be >= 1")
        self.view = view
        self.group = group
        self.keys_max = keys_max
        self.entries: dict[str, LockEntry] = {}
        self.time_ms = 0

    # -- StateMachine -------------------------------------------------------------------------

    def load(self) -> None:
        prefix = _U32.pack(self.group)
        end = _U32.pack(self.group + 1)
        self.entries = {}
        for key, value in self.view.scan(L_KEY, prefix, end):
            self.entries[key[4:].decode("utf-8")] = _decode_entry(value)
        meta = self.view.get(L_META, prefix)
        self.time_ms = 0 if meta is None else _U64.unpack(meta)[0]

    def apply(self, instance: int, slot: int, value: bytes, fx: EffectsBuilder) -> bytes:
        try:
            cmd = decode_command(value)
        except CommandError as exc:
            return _bad(str(exc))
        t = max(cmd.now_ms, self.time_ms)
        if t != self.time_ms:
            self.time_ms = t
            fx.put(L_META, _U32.pack(self.group), _U64.pack(t))
        match cmd:
            case AcquireCmd():
                return self._acquire(cmd, t, fx)
            case RenewCmd():
                return self._renew(cmd, t, fx)
            case ReleaseCmd():
                return self._release(cmd, t, fx)
            case ReadCmd():
                if not _name_ok(cmd.key, KEY_BYTES_MAX):
                    return _bad(f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
                return codec.encode(self.read(cmd.key, t))
            case CleanupCmd():
                self._cleanup(t, fx)
                return b""
            case _:
                assert_never(cmd)

    def snapshot(self) -> bytes:
        parts = [SNAPSHOT_MAGIC, _U64.pack(self.time_ms)]
        for key in sorted(self.entries):
            e = self.entries[key]
            raw_key = key.encode("utf-8")
            raw_holder = e.holder.encode("utf-8")
            parts.append(_SNAP_ENTRY.pack(len(raw_key), len(raw_holder), e.version, e.expiry_ms))
            parts.append(raw_key)
            parts.append(raw_holder)
        return b"".join(parts)

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        time_ms, entries = _parse_snapshot(snapshot)  # all checked before anything is written
        prefix = _U32.pack(self.group)
        end = _U32.pack(self.group + 1)
        fx.delete_range(L_KEY, prefix, end)
        fx.put(L_META, prefix, _U64.pack(time_ms))
        for key, e in entries.items():
            self._persist(key, e, fx)
        self.entries = entries
        self.time_ms = time_ms

    # -- queries (outside Paxos) -----------------------------------------------------------------

    def read(self, key: str, now_ms: int) -> LockOk:
        """``key``'s entry as held at ``max(now_ms, group time)`` (a lease holder's local read)."""
        t = max(now_ms, self.time_ms)
        e = self.entries.get(key)
        if e is None:
            return LockOk(key=key, holder="", version=0, expiry_ms=0, at_ms=t)
        if not e.held_at(t):
            return LockOk(key=key, holder="", version=e.version, expiry_ms=0, at_ms=t)
        return LockOk(key=key, holder=e.holder, version=e.version, expiry_ms=e.expiry_ms, at_ms=t)

    def cleanup_due(self, now_ms: int) -> bool:
        """Would a cleanup at ``now_ms`` free anything?"""
        t = max(now_ms, self.time_ms)
        return any(e.holder != "" and not e.held_at(t) for e in self.entries.values())

    def items(self) -> Iterator[tuple[str, LockEntry]]:
        """Every (key, entry) in key order (copies: mutating them changes nothing)."""
        for key in sorted(self.entries):
            e = self.entries[key]
            yield key, LockEntry(holder=e.holder, version=e.version, expiry_ms=e.expiry_ms)

    # -- commands -------------------------------------------------------------------------------

    def _persist(self, key: str, e: LockEntry, fx: EffectsBuilder) -> None:
        fx.put(
            L_KEY,
            _U32.pack(self.group) + key.encode("utf-8"),
            _ENTRY.pack(e.version, e.expiry_ms) + e.holder.encode("utf-8"),
        )

    def _denied(self, key: str, t: int) -> bytes:
        view = self.read(key, t)
        return codec.encode(
            LockDenied(
                key=key, holder=view.holder, version=view.version, expiry_ms=view.expiry_ms, at_ms=t
            )
        )

    def _granted(self, key: str, e: LockEntry, t: int, fx: EffectsBuilder) -> bytes:
        self._persist(key, e, fx)
        return codec.encode(
            LockOk(key=key, holder=e.holder, version=e.version, expiry_ms=e.expiry_ms, at_ms=t)
        )

    def _check(self, key: str, holder: str, lease_ms: int | None) -> bytes | None:
        if not _name_ok(key, KEY_BYTES_MAX):
            return _bad(f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
        if not _name_ok(holder, HOLDER_BYTES_MAX):
            return _bad(f"holder must be 1..{HOLDER_BYTES_MAX} UTF-8 bytes")
        if lease_ms is not None and not 1 <= lease_ms <= LEASE_MS_MAX:
            return _bad(f"lease_ms must be 1..{LEASE_MS_MAX}")
        return None

    def _acquire(self, cmd: AcquireCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, cmd.lease_ms)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        expiry = t + cmd.lease_ms
        if e is None:
            if len(self.entries) >= self.keys_max:
                return codec.encode(
                    LockError(
                        code="too_many_keys",
                        message=f"the group holds keys_max = {self.keys_max} keys",
                    )
                )
            e = self.entries[cmd.key] = LockEntry(holder=cmd.holder, version=1, expiry_ms=expiry)
            return self._granted(cmd.key, e, t, fx)
        if e.held_at(t) and e.holder == cmd.holder:
            e.expiry_ms = expiry  # re-acquire by the holder: a renewal, same token
            return self._granted(cmd.key, e, t, fx)
        if not e.held_at(t) or cmd.expected_version == e.version:
            e.holder = cmd.holder
            e.version += 1
            e.expiry_ms = expiry
            return self._granted(cmd.key, e, t, fx)
        return self._denied(cmd.key, t)

    def _renew(self, cmd: RenewCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, cmd.lease_ms)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        if e is None or not e.held_at(t) or e.holder != cmd.holder or e.version != cmd.version:
            return self._denied(cmd.key, t)
        e.expiry_ms = t + cmd.lease_ms
        return self._granted(cmd.key, e, t, fx)

    def _release(self, cmd: ReleaseCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, None)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        current = 0 if e is None else e.version
        if cmd.version != current or (e is not None and e.held_at(t) and e.holder != cmd.holder):
            return self._denied(cmd.key, t)
        if e is None:  # version 0 of a key never granted: already free, nothing to store
            return codec.encode(LockOk(key=cmd.key, holder="", version=0, expiry_ms=0, at_ms=t))
        if e.holder != "" or e.expiry_ms != 0:
            e.holder = ""
            e.expiry_ms = 0
            self._persist(cmd.key, e, fx)
        return codec.encode(LockOk(key=cmd.key, holder="", version=e.version, expiry_ms=0, at_ms=t))

    def _cleanup(self, t: int, fx: EffectsBuilder) -> None:
        expired = sorted(
            key for key, e in self.entries.items() if e.holder != "" and not e.held_at(t)
        )
        for key in expired[:CLEANUP_KEYS_MAX]:
            e = self.entries[key]
            e.holder = ""
            e.expiry_ms = 0
            self._persist(key, e, fx)


def _decode_entry(value: bytes) -> LockEntry:
    if len(value) < _ENTRY.size:
        raise InvariantViolation("lock entry record truncated")
    version, expiry = _ENTRY.unpack_from(value)
    return LockEntry(holder=value[_ENTRY.size :].decode("utf-8"), version=version, expiry_ms=expiry)


def _parse_snapshot(snapshot: bytes) -> tuple[int, dict[str, LockEntry]]:
    head = len(SNAPSHOT_MAGIC)
    if snapshot[:head] != SNAPSHOT_MAGIC or len(snapshot) < head + _U64.size:
        raise InvariantViolation("not a lock table snapshot")
    (time_ms,) = _U64.unpack_from(snapshot, head)
    pos = head + _U64.size
    entries: dict[str, LockEntry] = {}
    try:
        while pos < len(snapshot):
            if pos + _SNAP_ENTRY.size > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            klen, hlen, version, expiry = _SNAP_ENTRY.unpack_from(snapshot, pos)
            pos += _SNAP_ENTRY.size
            if pos + klen + hlen > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            key = snapshot[pos : pos + klen].decode("utf-8")
            holder = snapshot[pos + klen : pos + klen + hlen].decode("utf-8")
            pos += klen + hlen
            entries[key] = LockEntry(holder=holder, version=version, expiry_ms=expiry)
    except UnicodeDecodeError:
        raise InvariantViolation("lock table snapshot holds a name that is not UTF-8") from None
    return time_ms, entries
