"""The lock service's compare-and-set registers in ``LockTable`` (``pxq/lock/sm.py``).

Behaviours checked: a register never written reads (None, 0); each write sets the value and
the version + 1; a cas swaps only on its expected value (None: never written) and otherwise
answers ``RegisterMismatch`` with the current value and version, changing nothing; a fenced
write or cas is applied only while its fence lock is held with the fence's version (else
``fenced``, nothing changed); registers and lock entries of the same key never touch each
other (a release or expiry keeps the register, a register op leaves the lock as a read of it
would); keys and value bytes count against the group's limits; bad keys and values are
bad requests. Persistence: a reload and a snapshot (v3) reproduce the registers; a group
without registers still writes the v2 snapshot byte for byte; v2 and v1 snapshots install;
corrupt v3 snapshots are refused before anything is written. Generated sequences: every
register answer agrees with the ``kv`` model of the linearizability checker, and the lock
answers are those of a table that saw a lock read in place of each register command.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.check.linear import KVModel, Operation, check_operations
from pxq.effects import EffectsBuilder, InvariantViolation
from pxq.lock.commands import (
    AcquireCmd,
    Command,
    ReadCmd,
    RegCasCmd,
    RegReadCmd,
    RegWriteCmd,
    ReleaseCmd,
    decode_command,
    encode_command,
)
from pxq.lock.messages import (
    VALUE_BYTES_MAX,
    LockError,
    LockOk,
    RegisterMismatch,
    RegisterOk,
)
from pxq.lock.sm import (
    L_REGISTER,
    SNAPSHOT_MAGIC,
    SNAPSHOT_MAGIC_V2,
    LockTable,
)
from tests.test_lock_sm import Harness, acquire


def write(key: str, value: bytes, now: int, fence: tuple[str, int] | None = None) -> RegWriteCmd:
    return RegWriteCmd(key=key, value=value, fence=fence, now_ms=now)


def cas(
    key: str,
    expected: bytes | None,
    value: bytes,
    now: int,
    fence: tuple[str, int] | None = None,
) -> RegCasCmd:
    return RegCasCmd(key=key, expected=expected, value=value, fence=fence, now_ms=now)


def read(key: str, now: int) -> RegReadCmd:
    return RegReadCmd(key=key, now_ms=now)


def reg(key: str, value: bytes | None, version: int, at: int) -> RegisterOk:
    return RegisterOk(key=key, value=value, version=version, at_ms=at)


# --------------------------------------------------------------------------------------------
# Rules


def test_a_register_never_written_reads_none_with_version_zero() -> None:
    h = Harness()
    assert h.run(read("r", 1000)) == reg("r", None, 0, 1000)
    assert h.table.read_register("r", 0) == reg("r", None, 0, 1000)
    assert h.writes == [h.writes[0]]  # only the group time: a read stores nothing else


def test_each_write_sets_the_value_and_the_next_version() -> None:
    h = Harness()
    assert h.run(write("r", b"a", 1000)) == reg("r", b"a", 1, 1000)
    assert h.run(write("r", b"a", 1001)) == reg("r", b"a", 2, 1001)
    assert h.run(write("r", b"", 1002)) == reg("r", b"", 3, 1002)
    assert h.run(read("r", 1003)) == reg("r", b"", 3, 1003)


def test_cas_swaps_only_on_its_expected_value() -> None:
    h = Harness()
    assert h.run(cas("r", b"x", b"a", 1000)) == RegisterMismatch(
        key="r", value=None, version=0, at_ms=1000
    )
    assert h.run(cas("r", None, b"a", 1001)) == reg("r", b"a", 1, 1001)
    assert h.run(cas("r", None, b"b", 1002)) == RegisterMismatch(
        key="r", value=b"a", version=1, at_ms=1002
    )
    assert h.run(cas("r", b"", b"b", 1003)) == RegisterMismatch(
        key="r", value=b"a", version=1, at_ms=1003
    )
    assert h.run(cas("r", b"a", b"b", 1004)) == reg("r", b"b", 2, 1004)
    assert h.run(read("r", 1005)) == reg("r", b"b", 2, 1005)


def test_a_mismatch_changes_nothing() -> None:
    h = Harness()
    h.run(write("r", b"a", 1000))
    before = len(h.writes)
    h.run(cas("r", b"z", b"b", 1000))
    assert len(h.writes) == before
    assert h.table.read_register("r", 0).value == b"a"


def test_a_fenced_write_needs_its_lock_held_with_the_fence_version() -> None:
    h = Harness()
    fence = ("d/lock", 1)
    refused = h.run(write("d/r", b"a", 1000, fence))
    assert isinstance(refused, LockError) and refused.code == "fenced" and refused.definite
    assert "is not held" in refused.message
    h.run(acquire("d/lock", "x", 100, 1000))
    assert h.run(write("d/r", b"a", 1010, fence)) == reg("d/r", b"a", 1, 1010)
    assert h.run(cas("d/r", b"a", b"b", 1020, fence)) == reg("d/r", b"b", 2, 1020)
    stale = h.run(write("d/r", b"c", 1030, ("d/lock", 2)))
    assert isinstance(stale, LockError) and stale.code == "fenced"
    assert "held with version 1" in stale.message
    # The lease ends at 1100 on the log's time: from then on the token fences nothing.
    expired = h.run(write("d/r", b"c", 1100, fence))
    assert isinstance(expired, LockError) and expired.code == "fenced"
    h.run(acquire("d/lock", "y", 100, 1101))
    taken_over = h.run(cas("d/r", b"b", b"c", 1102, fence))
    assert isinstance(taken_over, LockError) and taken_over.code == "fenced"
    assert h.table.read_register("d/r", 0) == reg("d/r", b"b", 2, 1102)


def test_a_fenced_cas_is_fenced_before_it_is_compared() -> None:
    h = Harness()
    refused = h.run(cas("r", b"wrong", b"a", 1000, ("lock", 3)))
    assert isinstance(refused, LockError) and refused.code == "fenced"


def test_registers_and_locks_of_one_key_never_touch_each_other() -> None:
    h = Harness()
    h.run(acquire("k", "x", 100, 1000, value=b"lock-value"))
    h.run(write("k", b"register-value", 1001))
    lock = h.run(ReadCmd(key="k", now_ms=1002))
    assert isinstance(lock, LockOk) and (lock.holder, lock.version, lock.value) == (
        "x",
        1,
        b"lock-value",
    )
    h.run(ReleaseCmd(key="k", holder="x", version=1, now_ms=1003))
    assert h.run(read("k", 1004)) == reg("k", b"register-value", 1, 1004)
    h.run(acquire("k", "y", 10, 1005))
    h.run(write("k", b"again", 1100))  # the lease expired meanwhile: nothing to do with it
    assert h.run(read("k", 1200)) == reg("k", b"again", 2, 1200)
    after = h.run(ReadCmd(key="k", now_ms=1201))
    assert isinstance(after, LockOk) and (after.holder, after.version) == ("", 2)


def test_registers_and_locks_share_the_groups_key_limit() -> None:
    h = Harness(keys_max=2)
    h.run(acquire("a", "x", 100, 1000))
    assert h.run(write("r", b"v", 1000)) == reg("r", b"v", 1, 1000)
    full = h.run(write("s", b"v", 1000))
    assert isinstance(full, LockError) and full.code == "too_many_keys"
    full = h.run(cas("s", None, b"v", 1000))
    assert isinstance(full, LockError) and full.code == "too_many_keys"
    denied = h.run(acquire("b", "x", 100, 1000))
    assert isinstance(denied, LockError) and denied.code == "too_many_keys"
    assert h.run(write("r", b"w", 1000)) == reg("r", b"w", 2, 1000)  # an existing key


def test_register_values_count_against_the_groups_value_bytes() -> None:
    h = Harness(values_bytes_max=VALUE_BYTES_MAX * 2)
    big = b"x" * VALUE_BYTES_MAX
    h.run(write("r1", big, 1000))
    h.run(acquire("l", "x", 100, 1000, value=big))
    full = h.run(write("r2", b"y", 1000))
    assert isinstance(full, LockError) and full.code == "too_many_bytes"
    assert h.run(write("r1", b"small", 1000)) == reg("r1", b"small", 2, 1000)
    assert h.table.values_bytes == VALUE_BYTES_MAX + 5
    assert h.run(write("r2", b"y", 1000)) == reg("r2", b"y", 1, 1000)


@pytest.mark.parametrize(
    "cmd",
    [
        write("", b"v", 1000),
        write("k" * 256, b"v", 1000),
        write("r", b"v" * (VALUE_BYTES_MAX + 1), 1000),
        cas("r", b"v" * (VALUE_BYTES_MAX + 1), b"v", 1000),
        write("r", b"v", 1000, ("", 1)),
        read("", 1000),
    ],
)
def test_bad_register_commands_are_bad_requests_and_change_nothing(cmd: Command) -> None:
    h = Harness()
    result = h.run(cmd)
    assert isinstance(result, LockError) and result.code == "bad_request"
    assert h.table.registers == {}


def test_register_commands_round_trip() -> None:
    for cmd in (
        read("é/r", 7),
        write("r", b"\x00v", 8),
        write("r", b"", 9, ("lock", 2**64 - 1)),
        cas("r", None, b"v", 10),
        cas("r", b"", b"v", 11, ("d/l", 3)),
    ):
        assert decode_command(encode_command(cmd)) == cmd


# --------------------------------------------------------------------------------------------
# Persistence and snapshots


def test_registers_survive_a_reload_from_storage() -> None:
    h = Harness()
    h.run(write("a", b"va", 1000))
    h.run(write("a", b"vb", 1001))
    h.run(write("b", b"", 1002))
    h.run(acquire("a", "x", 100, 1003, value=b"lock"))
    other = h.reloaded()
    assert other.read_register("a", 0) == reg("a", b"vb", 2, 1003)
    assert other.read_register("b", 0) == reg("b", b"", 1, 1003)
    assert other.values_bytes == h.table.values_bytes == 2 + 4
    assert [k[4:] for k, _ in h.store.scan(L_REGISTER)] == [b"a", b"b"]


def test_snapshot_round_trip_with_registers() -> None:
    h = Harness()
    h.run(acquire("d/k", "x", 100, 1000, value=b"held"))
    h.run(acquire("free", "y", 100, 1000))
    h.run(ReleaseCmd(key="free", holder="y", version=1, now_ms=1001))
    h.run(write("d/r", b"\x00value", 1002))
    h.run(write("é", b"v", 1003))
    h.run(write("é", b"w", 1004))
    snap = h.table.snapshot()
    assert snap.startswith(SNAPSHOT_MAGIC)
    g = Harness()
    g.run(write("stale", b"gone", 5))
    g.run(acquire("stale-lock", "q", 100, 5))
    fx = EffectsBuilder()
    g.table.install(snap, fx)
    g.store.apply(fx.writes)
    for table in (g.table, g.reloaded()):
        assert list(table.items()) == list(h.table.items())
        assert table.registers == h.table.registers
        assert table.time_ms == h.table.time_ms
        assert table.values_bytes == h.table.values_bytes
    assert g.table.snapshot() == snap
    assert g.run(cas("é", b"w", b"x", 1010)) == h.run(cas("é", b"w", b"x", 1010))


def test_a_group_without_registers_writes_the_v2_snapshot() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000, value=b"va"))
    snap = h.table.snapshot()
    # The v2 layout: time, then per key u16 key, u16 holder, u32 value length, version, expiry.
    v2 = SNAPSHOT_MAGIC_V2 + (1000).to_bytes(8, "big")
    v2 += (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + (2).to_bytes(4, "big")
    v2 += (1).to_bytes(8, "big") + (1100).to_bytes(8, "big") + b"axva"
    assert snap == v2
    g = Harness()
    g.run(write("r", b"dropped", 5))  # a register the snapshot does not hold goes
    fx = EffectsBuilder()
    g.table.install(v2, fx)
    g.store.apply(fx.writes)
    assert g.table.registers == {} and g.reloaded().registers == {}
    assert list(g.table.items()) == list(h.table.items())


@pytest.mark.parametrize(
    "snap",
    [
        b"PXQL\x03" + bytes(8),  # no entry count
        b"PXQL\x03" + bytes(8) + (1).to_bytes(4, "big"),  # one entry promised, none there
        b"PXQL\x03" + bytes(8) + bytes(4) + b"\x00\x01\x00\x00",  # a register cut short
        b"PXQL\x03" + bytes(8) + bytes(4) + b"\x00\x01" + bytes(4) + bytes(8),  # no key
        b"PXQL\x03" + bytes(8) + bytes(4) + (b"\x00\x01" + bytes(12) + b"k") * 2,  # twice
    ],
)
def test_corrupt_register_snapshots_are_refused_before_writing(snap: bytes) -> None:
    h = Harness()
    fx = EffectsBuilder()
    with pytest.raises(InvariantViolation):
        h.table.install(snap, fx)
    assert fx.writes == []


def test_a_truncated_register_record_is_an_invariant_violation() -> None:
    h = Harness()
    fx = EffectsBuilder()
    fx.put(L_REGISTER, (3).to_bytes(4, "big") + b"r", b"\x00")
    h.store.apply(fx.writes)
    with pytest.raises(InvariantViolation):
        LockTable(h.store, 3).load()


# --------------------------------------------------------------------------------------------
# Generated sequences against the checker's model

KEYS = ["d/r0", "d/r1"]
LOCK = "d/lock"
VALUES: list[bytes] = [b"", b"a", b"b"]


@st.composite
def register_sequences(draw: st.DrawFn) -> list[Command]:
    now = 1000
    cmds: list[Command] = []
    for _ in range(draw(st.integers(1, 50))):
        now += draw(st.integers(0, 40))
        stamp = now - draw(st.sampled_from([0, 0, 0, 25]))  # proposers' clocks disagree
        key = draw(st.sampled_from(KEYS))
        fence = draw(st.sampled_from([None, None, None, (LOCK, 1), (LOCK, 2)]))
        kind = draw(st.integers(0, 9))
        value = draw(st.sampled_from(VALUES))
        if kind <= 2:
            cmds.append(read(key, stamp))
        elif kind <= 4:
            cmds.append(write(key, value, stamp, fence))
        elif kind <= 7:
            cmds.append(cas(key, draw(st.sampled_from([None, *VALUES])), value, stamp, fence))
        elif kind == 8:
            cmds.append(acquire(LOCK, draw(st.sampled_from(["x", "y"])), 60, stamp))
        else:
            cmds.append(
                ReleaseCmd(key=LOCK, holder="x", version=draw(st.integers(1, 2)), now_ms=stamp)
            )
    return cmds


def kv_input(cmd: RegReadCmd | RegWriteCmd | RegCasCmd) -> tuple[Any, ...]:
    match cmd:
        case RegReadCmd():
            return (cmd.key, "read", None)
        case RegWriteCmd():
            return (cmd.key, "write", cmd.value)
        case RegCasCmd():
            return (cmd.key, "cas", (cmd.expected, cmd.value))


@settings(max_examples=150, deadline=None)
@given(register_sequences())
def test_register_answers_agree_with_the_kv_model(cmds: list[Command]) -> None:
    h = Harness()
    model = KVModel(None)
    states: dict[str, Any] = {}
    ops: list[Operation] = []
    for i, cmd in enumerate(cmds):
        result = h.run(cmd)
        if not isinstance(cmd, RegReadCmd | RegWriteCmd | RegCasCmd):
            continue
        if isinstance(result, LockError):  # fenced: definitely nothing happened
            assert result.code == "fenced" and not isinstance(cmd, RegReadCmd)
            assert cmd.fence is not None
            continue
        inp = kv_input(cmd)
        state = states.get(cmd.key)
        if isinstance(result, RegisterMismatch):
            assert isinstance(cmd, RegCasCmd)
            assert result.value == state and result.value != cmd.expected
            continue  # a cas that failed completes ``fail``: the checker leaves it out
        assert isinstance(result, RegisterOk), result
        output = (
            result.value if isinstance(cmd, RegReadCmd) else (None if inp[1] == "write" else True)
        )
        legal, states[cmd.key] = model.step(state, inp, output)
        assert legal, (cmd, result)
        assert result.value == states[cmd.key]
        ops.append(
            Operation(call_index=2 * i, return_index=2 * i + 1, process=0, input=inp, output=output)
        )
    assert check_operations(model, ops).verdict == "ok"
    reads = [i for i, op in enumerate(ops) if op.input[1] == "read"]
    if reads:  # a read that saw a value never written is caught
        last = ops[reads[-1]]
        ops[reads[-1]] = Operation(
            call_index=last.call_index,
            return_index=last.return_index,
            process=0,
            input=last.input,
            output=b"never",
        )
        assert check_operations(model, ops).verdict == "illegal"


@settings(max_examples=150, deadline=None)
@given(register_sequences())
def test_register_commands_leave_the_locks_as_a_read_would(cmds: list[Command]) -> None:
    with_registers = Harness()
    reads_only = Harness()
    for cmd in cmds:
        result = with_registers.run(cmd)
        if isinstance(cmd, RegReadCmd | RegWriteCmd | RegCasCmd):
            reads_only.run(ReadCmd(key=LOCK, now_ms=cmd.now_ms))
        else:
            assert isinstance(cmd, AcquireCmd | ReleaseCmd)
            assert result == reads_only.run(cmd)
    assert list(with_registers.table.items()) == list(reads_only.table.items())
    assert with_registers.table.time_ms == reads_only.table.time_ms
