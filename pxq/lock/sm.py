"""``LockTable``: the lock state machine of one Paxos group of the lock service.

It owns the map key -> (holder, version, expiry_ms, value) of one group, the group's applied
time, a per-directory index of its keys, and their persistence. It implements
``pxq.paxos.sm.StateMachine``; the commands it applies are in ``commands.py``, the
client-facing meaning of the results in ``messages.py``.

Rules (``pxq.check.lock.lock_transition`` states the same sequential semantics for the
linearizability checker; a differential test keeps the two in agreement):

* Time. A command is applied at ``t = max(command.now_ms, group time)`` and the group time
  becomes ``t``: time never goes back in the log, whatever the proposers' clocks do. At ``t`` an
  entry is *held* iff it has a holder and ``t < expiry_ms``.
* Acquire: the holder of a held entry re-acquiring renews (same version, expiry ``t + lease``);
  a free or expired entry, or one whose version equals ``expected_version``, is granted with
  version + 1 (the first grant of a key gets version 1); anything else is denied. A grant of
  either kind sets the entry's value to the acquire's value.
* Renew: only by the holder of a held entry with its version (expiry ``t + lease``); a value
  given replaces the entry's, none keeps it.
* Release: with the entry's version, by its holder or when it is no longer held; frees it at
  once, keeping the version, and clears the value.
* Read: the entry as held at ``t`` (a free or expired entry reads as holder ``""``, expiry 0,
  value ``b""``).
* List: the entries of one directory held at ``t``, in key order, bounded (``list_dir``).
* Registers (``pxq.lock.messages``): a map key -> (version, value) beside the lock entries,
  never leased, never touched by a lock command (nor a lock entry by a register command).
  A write sets the value and the version + 1 (1 for the first write); a cas does so only if
  the value is its ``expected`` (None: never written), else answers ``RegisterMismatch``
  with the current value and version. A fenced write or cas is applied only if its fence
  lock is held at ``t`` with the fence's version, else refused ``fenced``. A read returns
  (value, version), (None, 0) for a register never written. A register op advances the
  group time like any command (the proposer's stamp).
* Cleanup: frees the expired entries at ``t`` (at most ``CLEANUP_KEYS_MAX`` per command, lowest
  keys first), keeping each key's version as its floor, so versions never go backwards. It is
  invisible to clients: an expired entry already reads and acquires as free, and ``t`` only
  grows; it only drops holders' names and values from the state.

Versions are per key: a free entry is never deleted (its version is the floor of the next
grant), so the number of keys a group ever saw (lock entries and registers together) is
bounded by ``keys_max``, and the bytes of their values by ``values_bytes_max``.

Directories: ``dirs`` maps each directory (``pxq.lock.messages.directory_of``) to the sorted
list of its keys, so a listing visits only its own directory's keys, in order, and stops
after one entry past its limit (expired and free keys of the directory are skipped on the
way). Keys are never deleted, so the index only grows (``bisect.insort`` per new key).

Persistence (every key starts with the u32 group; integers big-endian):

| table          | key                | value                                        |
|----------------|--------------------|----------------------------------------------|
| ``lock_key``   | group, key (UTF-8) | u64 version, u64 expiry_ms, holder (UTF-8)   |
| ``lock_value`` | group, key (UTF-8) | the entry's value (only when not empty)      |
| ``lock_meta``  | group              | u64 group time                               |
| ``lock_register`` | group, key (UTF-8) | u64 version, the register's value         |

Values live in their own table so that entries without a value (and every record written
before values existed) keep their layout. The whole map lives in RAM (a lock group holds few
keys); writes are puts of final values, so a step that applies several commands needs no
read-back through the storage view.

Snapshot: ``SNAPSHOT_MAGIC_V2``, u64 group time, then per key in key order ``u16 key length,
u16 holder length, u32 value length, u64 version, u64 expiry`` and the three byte strings.
A group holding registers writes ``SNAPSHOT_MAGIC`` (v3) instead: the time, a u32 count of
lock entries, those entries as in v2, then per register in key order ``u16 key length, u32
value length, u64 version``, the key and the value. A group without registers keeps writing
v2, so its snapshots stay byte for byte what they were (and readable by a release before
registers). ``install`` reads all three formats (v1: before values, ``SNAPSHOT_MAGIC_V1``).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, assert_never

from pxq import codec
from pxq.effects import EffectsBuilder, InvariantViolation, StorageView
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    ListCmd,
    ReadCmd,
    RegCasCmd,
    RegReadCmd,
    RegWriteCmd,
    ReleaseCmd,
    RenewCmd,
    decode_command,
)
from pxq.lock.messages import (
    FENCED,
    HOLDER_BYTES_MAX,
    KEY_BYTES_MAX,
    LEASE_MS_MAX,
    LIST_BYTES_MAX,
    LIST_ENTRIES_MAX,
    VALUE_BYTES_MAX,
    LockDenied,
    LockEntry,
    LockError,
    LockList,
    LockOk,
    RegisterMismatch,
    RegisterOk,
    directory_of,
)
from pxq.positional import CommandError

L_KEY: Final = "lock_key"
L_VALUE: Final = "lock_value"
L_META: Final = "lock_meta"
L_REGISTER: Final = "lock_register"
TABLES: Final = (L_KEY, L_VALUE, L_META, L_REGISTER)

KEYS_MAX_DEFAULT: Final = 100_000
"""Keys (lock entries, held or free, and registers) one group may hold; a grant or first
write of a new key beyond it is refused."""
VALUES_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
"""Bytes of values one group may hold in all; a grant or renewal beyond it is refused."""
CLEANUP_KEYS_MAX: Final = 1_000
"""Expired entries one cleanup command frees at most (the rest wait for the next one)."""
SNAPSHOT_MAGIC_V1: Final = b"PXQL\x01"
SNAPSHOT_MAGIC_V2: Final = b"PXQL\x02"
SNAPSHOT_MAGIC: Final = b"PXQL\x03"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ENTRY = struct.Struct(">QQ")
_SNAP_ENTRY_V1 = struct.Struct(">HHQQ")
_SNAP_ENTRY = struct.Struct(">HHIQQ")
_SNAP_REGISTER = struct.Struct(">HIQ")


@dataclass(slots=True)
class TableEntry:
    """One key's entry; ``holder == ""`` (and ``value == b""``) when free (released or
    cleaned up)."""

    holder: str
    version: int
    expiry_ms: int
    value: bytes = b""

    def held_at(self, t: int) -> bool:
        return self.holder != "" and t < self.expiry_ms


@dataclass(slots=True)
class Register:
    """One register: its version (writes so far) and value."""

    version: int
    value: bytes


def _bad(message: str) -> bytes:
    return codec.encode(LockError(code="bad_request", message=message))


def _name_ok(name: str, limit: int) -> bool:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(raw) <= limit


def _entry_bytes(key: str, holder: str, value: bytes) -> int:
    """What one listed entry counts against ``LIST_BYTES_MAX``."""
    return len(key.encode("utf-8")) + len(holder.encode("utf-8")) + len(value)


class LockTable:
    """The locks of one Paxos group of the lock service; a ``pxq.paxos.sm.StateMachine``."""

    __slots__ = (
        "dirs",
        "entries",
        "expiry_high_ms",
        "group",
        "keys_max",
        "registers",
        "time_ms",
        "values_bytes",
        "values_bytes_max",
        "view",
    )

    def __init__(
        self,
        view: StorageView,
        group: int,
        *,
        keys_max: int = KEYS_MAX_DEFAULT,
        values_bytes_max: int = VALUES_BYTES_MAX_DEFAULT,
    ) -> None:
        if keys_max < 1:
            raise ValueError("keys_max must be >= 1")
        if values_bytes_max < VALUE_BYTES_MAX:
            raise ValueError(f"values_bytes_max must be >= VALUE_BYTES_MAX ({VALUE_BYTES_MAX})")
        self.view = view
        self.group = group
        self.keys_max = keys_max
        self.values_bytes_max = values_bytes_max
        self.entries: dict[str, TableEntry] = {}
        self.registers: dict[str, Register] = {}
        self.dirs: dict[str, list[str]] = {}
        """directory -> its keys, sorted."""
        self.values_bytes = 0
        """Sum of the lengths of the entries' and the registers' values."""
        self.expiry_high_ms = 0
        self.time_ms = 0

    # -- StateMachine -------------------------------------------------------------------------

    def load(self) -> None:
        prefix = _U32.pack(self.group)
        end = _U32.pack(self.group + 1)
        entries: dict[str, TableEntry] = {}
        for key, value in self.view.scan(L_KEY, prefix, end):
            entries[key[4:].decode("utf-8")] = _decode_entry(value)
        for key, value in self.view.scan(L_VALUE, prefix, end):
            e = entries.get(key[4:].decode("utf-8"))
            if e is None:
                raise InvariantViolation("a lock value without its entry")
            e.value = value
        registers: dict[str, Register] = {}
        for key, value in self.view.scan(L_REGISTER, prefix, end):
            registers[key[4:].decode("utf-8")] = _decode_register(value)
        self._set_entries(entries, registers)
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
            case ListCmd():
                problem = list_problem(cmd.prefix, cmd.entries_max, cmd.start_after)
                if problem is not None:
                    return _bad(problem)
                return codec.encode(self.list_dir(cmd.prefix, cmd.entries_max, cmd.start_after, t))
            case CleanupCmd():
                self._cleanup(t, fx)
                return b""
            case RegReadCmd():
                if not _name_ok(cmd.key, KEY_BYTES_MAX):
                    return _bad(f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
                return codec.encode(self.read_register(cmd.key, t))
            case RegWriteCmd() | RegCasCmd():
                return self._register_write(cmd, t, fx)
            case _:
                assert_never(cmd)

    def snapshot(self) -> bytes:
        parts = [SNAPSHOT_MAGIC if self.registers else SNAPSHOT_MAGIC_V2, _U64.pack(self.time_ms)]
        if self.registers:
            parts.append(_U32.pack(len(self.entries)))
        for key in sorted(self.entries):
            e = self.entries[key]
            raw_key = key.encode("utf-8")
            raw_holder = e.holder.encode("utf-8")
            parts.append(
                _SNAP_ENTRY.pack(
                    len(raw_key), len(raw_holder), len(e.value), e.version, e.expiry_ms
                )
            )
            parts += (raw_key, raw_holder, e.value)
        for key in sorted(self.registers):
            r = self.registers[key]
            raw_key = key.encode("utf-8")
            parts += (_SNAP_REGISTER.pack(len(raw_key), len(r.value), r.version), raw_key, r.value)
        return b"".join(parts)

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        # All checked before anything is written.
        time_ms, entries, registers = _parse_snapshot(snapshot)
        prefix = _U32.pack(self.group)
        end = _U32.pack(self.group + 1)
        fx.delete_range(L_KEY, prefix, end)
        fx.delete_range(L_VALUE, prefix, end)
        if self.registers:  # the table mirrors them: without any there is nothing to delete
            fx.delete_range(L_REGISTER, prefix, end)
        fx.put(L_META, prefix, _U64.pack(time_ms))
        for key, e in entries.items():
            self._persist(key, e, fx, value_changed=e.value != b"")
        for key, r in registers.items():
            self._persist_register(key, r, fx)
        self._set_entries(entries, registers)
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
        return LockOk(
            key=key,
            holder=e.holder,
            version=e.version,
            expiry_ms=e.expiry_ms,
            at_ms=t,
            value=e.value,
        )

    def read_register(self, key: str, now_ms: int) -> RegisterOk:
        """Register ``key`` (value None and version 0 if never written) as of
        ``max(now_ms, group time)``."""
        t = max(now_ms, self.time_ms)
        r = self.registers.get(key)
        if r is None:
            return RegisterOk(key=key, value=None, version=0, at_ms=t)
        return RegisterOk(key=key, value=r.value, version=r.version, at_ms=t)

    def list_dir(self, prefix: str, entries_max: int, start_after: str, now_ms: int) -> LockList:
        """The entries of directory ``prefix`` held at ``max(now_ms, group time)``, with keys
        after ``start_after``, in key order: at most ``entries_max`` of them and
        ``LIST_BYTES_MAX`` bytes (at least one), ``more`` if a held one was left out. The
        arguments must be valid (``list_problem``)."""
        t = max(now_ms, self.time_ms)
        keys = self.dirs.get(prefix, [])
        out: list[LockEntry] = []
        size = 0
        more = False
        for i in range(bisect.bisect_right(keys, start_after), len(keys)):
            key = keys[i]
            e = self.entries[key]
            if not e.held_at(t):
                continue
            cost = _entry_bytes(key, e.holder, e.value)
            if len(out) >= entries_max or (out and size + cost > LIST_BYTES_MAX):
                more = True
                break
            size += cost
            out.append(
                LockEntry(
                    key=key,
                    holder=e.holder,
                    version=e.version,
                    expiry_ms=e.expiry_ms,
                    value=e.value,
                )
            )
        return LockList(prefix=prefix, entries=tuple(out), at_ms=t, more=more)

    def cleanup_due(self, now_ms: int) -> bool:
        """Would a cleanup at ``now_ms`` free anything?"""
        t = max(now_ms, self.time_ms)
        return any(e.holder != "" and not e.held_at(t) for e in self.entries.values())

    def items(self) -> Iterator[tuple[str, TableEntry]]:
        """Every (key, entry) in key order (copies: mutating them changes nothing)."""
        for key in sorted(self.entries):
            e = self.entries[key]
            yield (
                key,
                TableEntry(
                    holder=e.holder, version=e.version, expiry_ms=e.expiry_ms, value=e.value
                ),
            )

    # -- commands -------------------------------------------------------------------------------

    def _set_entries(self, entries: dict[str, TableEntry], registers: dict[str, Register]) -> None:
        self.entries = entries
        self.registers = registers
        dirs: dict[str, list[str]] = {}
        for key in sorted(entries):
            dirs.setdefault(directory_of(key), []).append(key)
        self.dirs = dirs
        self.values_bytes = sum(len(e.value) for e in entries.values()) + sum(
            len(r.value) for r in registers.values()
        )
        # No lease of this table lasts past this (a bound: releases do not lower it).
        self.expiry_high_ms = max((e.expiry_ms for e in entries.values() if e.holder), default=0)

    def _persist(self, key: str, e: TableEntry, fx: EffectsBuilder, *, value_changed: bool) -> None:
        raw_key = _U32.pack(self.group) + key.encode("utf-8")
        if e.holder:
            self.expiry_high_ms = max(self.expiry_high_ms, e.expiry_ms)
        fx.put(L_KEY, raw_key, _ENTRY.pack(e.version, e.expiry_ms) + e.holder.encode("utf-8"))
        if value_changed:
            if e.value:
                fx.put(L_VALUE, raw_key, e.value)
            else:
                fx.delete(L_VALUE, raw_key)

    def _set_value(self, e: TableEntry, value: bytes) -> bool:
        """Give ``e`` ``value`` (the caller checked the group's byte limit); True if it changed."""
        if e.value == value:
            return False
        self.values_bytes += len(value) - len(e.value)
        e.value = value
        return True

    def _too_many_keys(self) -> bytes | None:
        """The refusal of a new key (lock entry or register) when the group is full."""
        if len(self.entries) + len(self.registers) < self.keys_max:
            return None
        return codec.encode(
            LockError(
                code="too_many_keys",
                message=f"the group holds keys_max = {self.keys_max} keys",
            )
        )

    def _too_many_bytes(self, e: TableEntry | Register | None, value: bytes) -> bytes | None:
        old = 0 if e is None else len(e.value)
        if self.values_bytes - old + len(value) <= self.values_bytes_max:
            return None
        return codec.encode(
            LockError(
                code="too_many_bytes",
                message=f"a value of {len(value)} bytes would take the group's values over "
                f"values_bytes_max = {self.values_bytes_max} bytes",
            )
        )

    def _denied(self, key: str, t: int) -> bytes:
        view = self.read(key, t)
        return codec.encode(
            LockDenied(
                key=key,
                holder=view.holder,
                version=view.version,
                expiry_ms=view.expiry_ms,
                at_ms=t,
                value=view.value,
            )
        )

    def _granted(
        self, key: str, e: TableEntry, value: bytes | None, t: int, fx: EffectsBuilder
    ) -> bytes:
        changed = False if value is None else self._set_value(e, value)
        self._persist(key, e, fx, value_changed=changed)
        return codec.encode(
            LockOk(
                key=key,
                holder=e.holder,
                version=e.version,
                expiry_ms=e.expiry_ms,
                at_ms=t,
                value=e.value,
            )
        )

    def _check(
        self, key: str, holder: str, lease_ms: int | None, value: bytes | None
    ) -> bytes | None:
        if not _name_ok(key, KEY_BYTES_MAX):
            return _bad(f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
        if not _name_ok(holder, HOLDER_BYTES_MAX):
            return _bad(f"holder must be 1..{HOLDER_BYTES_MAX} UTF-8 bytes")
        if lease_ms is not None and not 1 <= lease_ms <= LEASE_MS_MAX:
            return _bad(f"lease_ms must be 1..{LEASE_MS_MAX}")
        if value is not None and len(value) > VALUE_BYTES_MAX:
            return _bad(f"value of {len(value)} bytes exceeds VALUE_BYTES_MAX = {VALUE_BYTES_MAX}")
        return None

    def _acquire(self, cmd: AcquireCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, cmd.lease_ms, cmd.value)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        expiry = t + cmd.lease_ms
        if e is None:
            full = self._too_many_keys() or self._too_many_bytes(None, cmd.value)
            if full is not None:
                return full
            e = self.entries[cmd.key] = TableEntry(holder=cmd.holder, version=1, expiry_ms=expiry)
            bisect.insort(self.dirs.setdefault(directory_of(cmd.key), []), cmd.key)
            return self._granted(cmd.key, e, cmd.value, t, fx)
        renewal = e.held_at(t) and e.holder == cmd.holder
        if not renewal and e.held_at(t) and cmd.expected_version != e.version:
            return self._denied(cmd.key, t)
        full = self._too_many_bytes(e, cmd.value)
        if full is not None:
            return full
        if not renewal:  # free, expired, or a takeover naming the current version
            e.holder = cmd.holder
            e.version += 1
        e.expiry_ms = expiry  # a re-acquire by the holder is a renewal: same token
        return self._granted(cmd.key, e, cmd.value, t, fx)

    def _renew(self, cmd: RenewCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, cmd.lease_ms, cmd.value)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        if e is None or not e.held_at(t) or e.holder != cmd.holder or e.version != cmd.version:
            return self._denied(cmd.key, t)
        if cmd.value is not None:
            full = self._too_many_bytes(e, cmd.value)
            if full is not None:
                return full
        e.expiry_ms = t + cmd.lease_ms
        return self._granted(cmd.key, e, cmd.value, t, fx)

    def _release(self, cmd: ReleaseCmd, t: int, fx: EffectsBuilder) -> bytes:
        problem = self._check(cmd.key, cmd.holder, None, None)
        if problem is not None:
            return problem
        e = self.entries.get(cmd.key)
        current = 0 if e is None else e.version
        if cmd.version != current or (e is not None and e.held_at(t) and e.holder != cmd.holder):
            return self._denied(cmd.key, t)
        if e is None:  # version 0 of a key never granted: already free, nothing to store
            return codec.encode(LockOk(key=cmd.key, holder="", version=0, expiry_ms=0, at_ms=t))
        self._free(cmd.key, e, fx)
        return codec.encode(LockOk(key=cmd.key, holder="", version=e.version, expiry_ms=0, at_ms=t))

    def _free(self, key: str, e: TableEntry, fx: EffectsBuilder) -> None:
        """Drop ``e``'s holder, expiry and value (keeping its version), if it has any."""
        if e.holder != "" or e.expiry_ms != 0 or e.value:
            e.holder = ""
            e.expiry_ms = 0
            changed = self._set_value(e, b"")
            self._persist(key, e, fx, value_changed=changed)

    # -- registers ------------------------------------------------------------------------------

    def _persist_register(self, key: str, r: Register, fx: EffectsBuilder) -> None:
        raw_key = _U32.pack(self.group) + key.encode("utf-8")
        fx.put(L_REGISTER, raw_key, _U64.pack(r.version) + r.value)

    def _register_write(self, cmd: RegWriteCmd | RegCasCmd, t: int, fx: EffectsBuilder) -> bytes:
        """A register write or compare-and-set (see the module docstring)."""
        key, value, fence = cmd.key, cmd.value, cmd.fence
        expected = cmd.expected if isinstance(cmd, RegCasCmd) else None
        if not _name_ok(key, KEY_BYTES_MAX):
            return _bad(f"key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
        if len(value) > VALUE_BYTES_MAX or (
            expected is not None and len(expected) > VALUE_BYTES_MAX
        ):
            return _bad(f"a value exceeds VALUE_BYTES_MAX = {VALUE_BYTES_MAX} bytes")
        if fence is not None:
            if not _name_ok(fence[0], KEY_BYTES_MAX):
                return _bad(f"fence key must be 1..{KEY_BYTES_MAX} UTF-8 bytes")
            lock = self.entries.get(fence[0])
            if lock is None or not lock.held_at(t) or lock.version != fence[1]:
                now = (
                    "is not held"
                    if lock is None or not lock.held_at(t)
                    else f"is held with version {lock.version}"
                )
                return codec.encode(
                    LockError(code=FENCED, message=f"fence lock {fence[0]!r} {now}, not {fence[1]}")
                )
        r = self.registers.get(key)
        if isinstance(cmd, RegCasCmd) and (None if r is None else r.value) != expected:
            current = self.read_register(key, t)
            return codec.encode(
                RegisterMismatch(key=key, value=current.value, version=current.version, at_ms=t)
            )
        if r is None:
            full = self._too_many_keys() or self._too_many_bytes(None, value)
            if full is not None:
                return full
            r = self.registers[key] = Register(version=0, value=b"")
        else:
            full = self._too_many_bytes(r, value)
            if full is not None:
                return full
        self.values_bytes += len(value) - len(r.value)
        r.value = value
        r.version += 1
        self._persist_register(key, r, fx)
        return codec.encode(RegisterOk(key=key, value=r.value, version=r.version, at_ms=t))

    def _cleanup(self, t: int, fx: EffectsBuilder) -> None:
        expired = sorted(
            key for key, e in self.entries.items() if e.holder != "" and not e.held_at(t)
        )
        for key in expired[:CLEANUP_KEYS_MAX]:
            self._free(key, self.entries[key], fx)


def list_problem(prefix: object, entries_max: object, start_after: object) -> str | None:
    """Why a listing's arguments are invalid, or None (the node and the table share it)."""
    if not isinstance(prefix, str) or not _name_ok(prefix, KEY_BYTES_MAX):
        return f"prefix must be 1..{KEY_BYTES_MAX} UTF-8 bytes"
    if not prefix.endswith("/"):
        return f"prefix {prefix!r} must end with '/'"
    if type(entries_max) is not int or not 1 <= entries_max <= LIST_ENTRIES_MAX:
        return f"entries_max must be 1..{LIST_ENTRIES_MAX}, got {entries_max!r}"
    if not isinstance(start_after, str) or (
        start_after and not _name_ok(start_after, KEY_BYTES_MAX)
    ):
        return f"start_after must be empty or a key of 1..{KEY_BYTES_MAX} UTF-8 bytes"
    return None


def _decode_entry(value: bytes) -> TableEntry:
    if len(value) < _ENTRY.size:
        raise InvariantViolation("lock entry record truncated")
    version, expiry = _ENTRY.unpack_from(value)
    return TableEntry(
        holder=value[_ENTRY.size :].decode("utf-8"), version=version, expiry_ms=expiry
    )


def _decode_register(value: bytes) -> Register:
    if len(value) < _U64.size:
        raise InvariantViolation("register record truncated")
    return Register(version=_U64.unpack_from(value)[0], value=value[_U64.size :])


def _parse_snapshot(snapshot: bytes) -> tuple[int, dict[str, TableEntry], dict[str, Register]]:
    head = len(SNAPSHOT_MAGIC)
    magic = snapshot[:head]
    magics = (SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_V2, SNAPSHOT_MAGIC_V1)
    if magic not in magics or len(snapshot) < head + _U64.size:
        raise InvariantViolation("not a lock table snapshot")
    layout = _SNAP_ENTRY_V1 if magic == SNAPSHOT_MAGIC_V1 else _SNAP_ENTRY
    (time_ms,) = _U64.unpack_from(snapshot, head)
    pos = head + _U64.size
    count: int | None = None  # lock entries before the registers (v3); None: to the end
    if magic == SNAPSHOT_MAGIC:
        if pos + _U32.size > len(snapshot):
            raise InvariantViolation("lock table snapshot truncated")
        (count,) = _U32.unpack_from(snapshot, pos)
        pos += _U32.size
    entries: dict[str, TableEntry] = {}
    registers: dict[str, Register] = {}
    try:
        while pos < len(snapshot) and (count is None or len(entries) < count):
            if pos + layout.size > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            if layout is _SNAP_ENTRY:
                klen, hlen, vlen, version, expiry = _SNAP_ENTRY.unpack_from(snapshot, pos)
            else:
                klen, hlen, version, expiry = _SNAP_ENTRY_V1.unpack_from(snapshot, pos)
                vlen = 0
            pos += layout.size
            if pos + klen + hlen + vlen > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            key = snapshot[pos : pos + klen].decode("utf-8")
            holder = snapshot[pos + klen : pos + klen + hlen].decode("utf-8")
            value = snapshot[pos + klen + hlen : pos + klen + hlen + vlen]
            pos += klen + hlen + vlen
            if key in entries:
                raise InvariantViolation(f"lock table snapshot holds key {key!r} twice")
            entries[key] = TableEntry(holder=holder, version=version, expiry_ms=expiry, value=value)
        if count is not None and len(entries) < count:
            raise InvariantViolation("lock table snapshot truncated")
        while pos < len(snapshot):
            if pos + _SNAP_REGISTER.size > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            klen, vlen, version = _SNAP_REGISTER.unpack_from(snapshot, pos)
            pos += _SNAP_REGISTER.size
            if pos + klen + vlen > len(snapshot):
                raise InvariantViolation("lock table snapshot truncated")
            key = snapshot[pos : pos + klen].decode("utf-8")
            value = snapshot[pos + klen : pos + klen + vlen]
            pos += klen + vlen
            if key in registers:
                raise InvariantViolation(f"lock table snapshot holds register {key!r} twice")
            registers[key] = Register(version=version, value=value)
    except UnicodeDecodeError:
        raise InvariantViolation("lock table snapshot holds a name that is not UTF-8") from None
    return time_ms, entries, registers
