"""The lock state machine (pxq.lock.sm): every rule, fencing-token monotonicity, persistence,
snapshots, determinism, and agreement with the checker's lock model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq import codec
from pxq.check.linear import LockModel, Operation, check_operations, lock_transition
from pxq.effects import EffectsBuilder, InvariantViolation, Write
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    Command,
    CommandError,
    ReadCmd,
    ReleaseCmd,
    RenewCmd,
    decode_command,
    encode_command,
)
from pxq.lock.messages import (
    LEASE_MS_MAX,
    Acquire,
    LockDenied,
    LockError,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
)
from pxq.lock.sm import CLEANUP_KEYS_MAX, L_KEY, LockEntry, LockTable
from sim.memstore import MemoryStore


@dataclass
class Harness:
    """One lock table on a memory store; applies commands one step each."""

    group: int = 3
    keys_max: int = 100
    store: MemoryStore = field(default_factory=MemoryStore)
    table: LockTable = field(init=False)
    instance: int = 0
    writes: list[Write] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = LockTable(self.store, self.group, keys_max=self.keys_max)
        self.table.load()

    def raw(self, value: bytes) -> bytes:
        fx = EffectsBuilder()
        self.instance += 1
        result = self.table.apply(self.instance, 0, value, fx)
        self.store.apply(fx.writes)
        self.writes += fx.writes
        return result

    def run(self, cmd: Command) -> object:
        result = self.raw(encode_command(cmd))
        return None if result == b"" else codec.decode(result)

    def reloaded(self) -> LockTable:
        other = LockTable(self.store, self.group, keys_max=self.keys_max)
        other.load()
        return other


def acquire(key: str, holder: str, lease: int, now: int, expected: int | None = None) -> AcquireCmd:
    return AcquireCmd(key=key, holder=holder, lease_ms=lease, expected_version=expected, now_ms=now)


def ok(key: str, holder: str, version: int, expiry: int, at: int) -> LockOk:
    return LockOk(key=key, holder=holder, version=version, expiry_ms=expiry, at_ms=at)


def denied(key: str, holder: str, version: int, expiry: int, at: int) -> LockDenied:
    return LockDenied(key=key, holder=holder, version=version, expiry_ms=expiry, at_ms=at)


# --------------------------------------------------------------------------------------------
# Rules


def test_first_grant_of_a_key_has_version_one() -> None:
    h = Harness()
    assert h.run(acquire("k", "a", 100, 1000)) == ok("k", "a", 1, 1100, 1000)


def test_held_key_is_denied_to_another_holder_with_the_current_entry() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(acquire("k", "b", 100, 1099)) == denied("k", "a", 1, 1100, 1099)


def test_expired_key_is_granted_with_a_new_version() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(acquire("k", "b", 100, 1100)) == ok("k", "b", 2, 1200, 1100)


def test_reacquire_by_the_holder_renews_and_keeps_the_version() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(acquire("k", "a", 500, 1050)) == ok("k", "a", 1, 1550, 1050)


def test_reacquire_by_the_holder_after_expiry_gets_a_new_version() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(acquire("k", "a", 100, 1100)) == ok("k", "a", 2, 1200, 1100)


def test_expected_version_takes_over_a_held_key() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(acquire("k", "b", 100, 1010, expected=0)) == denied("k", "a", 1, 1100, 1010)
    assert h.run(acquire("k", "b", 100, 1010, expected=1)) == ok("k", "b", 2, 1110, 1010)


def test_renew_only_by_the_holder_with_its_version_before_expiry() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    renew = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1050)
    assert h.run(renew) == ok("k", "a", 1, 1150, 1050)
    assert h.run(RenewCmd(key="k", holder="b", version=1, lease_ms=100, now_ms=1060)) == denied(
        "k", "a", 1, 1150, 1060
    )
    assert h.run(RenewCmd(key="k", holder="a", version=2, lease_ms=100, now_ms=1060)) == denied(
        "k", "a", 1, 1150, 1060
    )
    expired = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1150)
    assert h.run(expired) == denied("k", "", 1, 0, 1150)
    missing = RenewCmd(key="x", holder="a", version=0, lease_ms=100, now_ms=1150)
    assert h.run(missing) == denied("x", "", 0, 0, 1150)


def test_release_frees_at_once_and_the_next_grant_gets_a_new_version() -> None:
    h = Harness()
    h.run(acquire("k", "a", 10_000, 1000))
    assert h.run(ReleaseCmd(key="k", holder="a", version=1, now_ms=1001)) == ok("k", "", 1, 0, 1001)
    assert h.run(ReadCmd(key="k", now_ms=1002)) == ok("k", "", 1, 0, 1002)
    assert h.run(acquire("k", "b", 100, 1003)) == ok("k", "b", 2, 1103, 1003)


def test_release_is_idempotent_and_refused_after_a_new_grant() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    release = ReleaseCmd(key="k", holder="a", version=1, now_ms=1001)
    assert h.run(release) == ok("k", "", 1, 0, 1001)
    assert h.run(release) == ok("k", "", 1, 0, 1001)
    h.run(acquire("k", "b", 100, 1002))
    assert h.run(release) == denied("k", "b", 2, 1102, 1002)
    assert h.run(ReleaseCmd(key="k", holder="c", version=2, now_ms=1003)) == denied(
        "k", "b", 2, 1102, 1003
    )


def test_release_of_an_expired_lease_by_a_stale_holder_with_the_version_frees_it() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(ReleaseCmd(key="k", holder="z", version=1, now_ms=2000)) == ok("k", "", 1, 0, 2000)


def test_read_shows_expired_entries_as_free_with_their_version() -> None:
    h = Harness()
    assert h.run(ReadCmd(key="k", now_ms=5)) == ok("k", "", 0, 0, 5)
    h.run(acquire("k", "a", 100, 1000))
    assert h.run(ReadCmd(key="k", now_ms=1099)) == ok("k", "a", 1, 1100, 1099)
    assert h.run(ReadCmd(key="k", now_ms=1100)) == ok("k", "", 1, 0, 1100)
    assert h.table.read("k", 1050) == ok("k", "", 1, 0, 1100)  # local read: time never goes back


def test_time_never_goes_back_in_the_log() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000))
    # A proposer with a slow clock: the command is applied at the group's time.
    assert h.run(acquire("k", "b", 100, 500)) == denied("k", "a", 1, 1100, 1000)
    assert h.table.time_ms == 1000
    assert h.reloaded().time_ms == 1000


def test_cleanup_frees_expired_entries_and_keeps_versions() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000))
    h.run(acquire("b", "y", 500, 1000))
    assert not h.table.cleanup_due(1099)
    assert h.table.cleanup_due(1100)
    assert h.run(CleanupCmd(now_ms=1200)) is None
    assert dict(h.table.items()) == {
        "a": LockEntry(holder="", version=1, expiry_ms=0),
        "b": LockEntry(holder="y", version=1, expiry_ms=1500),
    }
    assert not h.table.cleanup_due(1200)
    assert h.run(acquire("a", "z", 100, 1300)) == ok("a", "z", 2, 1400, 1300)


def test_cleanup_frees_at_most_its_limit_lowest_keys_first() -> None:
    h = Harness(keys_max=CLEANUP_KEYS_MAX + 10)
    for i in range(CLEANUP_KEYS_MAX + 5):
        h.run(acquire(f"k{i:05d}", "x", 10, 0))
    h.run(CleanupCmd(now_ms=100))
    still_held = [k for k, e in h.table.items() if e.holder]
    assert still_held == [f"k{i:05d}" for i in range(CLEANUP_KEYS_MAX, CLEANUP_KEYS_MAX + 5)]
    h.run(CleanupCmd(now_ms=100))
    assert not h.table.cleanup_due(100)


def test_too_many_keys_refuses_a_new_key_only() -> None:
    h = Harness(keys_max=2)
    h.run(acquire("a", "x", 10, 0))
    h.run(acquire("b", "x", 10, 0))
    result = h.run(acquire("c", "x", 10, 0))
    assert isinstance(result, LockError)
    assert (result.code, result.definite) == ("too_many_keys", True)
    assert h.run(acquire("a", "y", 10, 100)) == ok("a", "y", 2, 110, 100)


@pytest.mark.parametrize(
    "cmd",
    [
        acquire("", "a", 10, 0),
        acquire("k" * 256, "a", 10, 0),
        acquire("k", "", 10, 0),
        acquire("k", "a", 0, 0),
        acquire("k", "a", LEASE_MS_MAX + 1, 0),
        RenewCmd(key="k", holder="", version=1, lease_ms=10, now_ms=0),
        ReleaseCmd(key="k", holder="", version=1, now_ms=0),
        ReadCmd(key="", now_ms=0),
    ],
)
def test_invalid_commands_are_bad_requests_and_change_nothing(cmd: Command) -> None:
    h = Harness()
    h.run(acquire("x", "a", 10, 0))
    before = list(h.table.items())
    result = h.run(cmd)
    assert isinstance(result, LockError)
    assert result.code == "bad_request"
    assert list(h.table.items()) == before


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, "k", "a", 10, None]),
        msgpack.packb([1, "k", "a", -1, None, 0]),
        msgpack.packb([1, "k", b"a", 10, None, 0]),
        msgpack.packb([9, 0]),
        msgpack.packb({"op": 1}),
        msgpack.packb([1, "k", "\udcff", 10, None, 0], unicode_errors="surrogatepass"),
    ],
)
def test_malformed_values_are_bad_requests(value: bytes) -> None:
    h = Harness()
    result = codec.decode(h.raw(value))
    assert isinstance(result, LockError)
    assert result.code == "bad_request"
    assert h.writes == []


def test_commands_round_trip() -> None:
    cmds: list[Command] = [
        acquire("k", "a", 10, 5, expected=3),
        acquire("k", "a", 10, 5),
        RenewCmd(key="k", holder="a", version=2, lease_ms=7, now_ms=9),
        ReleaseCmd(key="k", holder="a", version=2, now_ms=9),
        ReadCmd(key="k", now_ms=9),
        CleanupCmd(now_ms=9),
    ]
    for cmd in cmds:
        assert decode_command(encode_command(cmd)) == cmd
    with pytest.raises(CommandError):
        decode_command(b"\x93\x01\x02\x03")


def test_messages_round_trip_through_the_codec() -> None:
    msgs: list[object] = [
        Acquire(key="k", holder="a", lease_ms=5, expected_version=None),
        Acquire(key="k", holder="a", lease_ms=5, expected_version=7),
        Renew(key="k", holder="a", version=1, lease_ms=5),
        Release(key="k", holder="a", version=1),
        ReadLock(key="k", through_log=True),
        ok("k", "a", 1, 2, 3),
        denied("k", "a", 1, 2, 3),
        LockError(code="unknown", message="m", definite=False),
        LockRedirect(master=None),
    ]
    for m in msgs:
        assert codec.decode(codec.encode(m)) == m
        assert 128 <= codec.tag_of(type(m)) < 192


# --------------------------------------------------------------------------------------------
# Persistence, snapshots, determinism


def test_state_survives_a_reload_from_storage() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000))
    h.run(acquire("b", "y", 100, 1000))
    h.run(ReleaseCmd(key="b", holder="y", version=1, now_ms=1001))
    other = h.reloaded()
    assert list(other.items()) == list(h.table.items())
    assert other.time_ms == 1001
    assert all(k[:4] == (3).to_bytes(4, "big") for k, _ in h.store.scan(L_KEY))


def test_snapshot_install_round_trip_replaces_the_state() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000))
    h.run(acquire("é", "y", 100, 1010))
    h.run(ReleaseCmd(key="é", holder="y", version=1, now_ms=1020))
    snap = h.table.snapshot()
    g = Harness()
    g.run(acquire("stale", "q", 100, 5))
    fx = EffectsBuilder()
    g.table.install(snap, fx)
    g.store.apply(fx.writes)
    assert list(g.table.items()) == list(h.table.items())
    assert g.table.time_ms == h.table.time_ms
    assert list(g.reloaded().items()) == list(h.table.items())
    assert g.table.snapshot() == snap
    assert g.run(acquire("a", "z", 100, 1050)) == h.run(acquire("a", "z", 100, 1050))


@pytest.mark.parametrize("snap", [b"", b"PXQL\x01", b"PXQL\x01" + bytes(8) + b"\x00\x05"])
def test_corrupt_snapshot_is_refused_before_writing(snap: bytes) -> None:
    h = Harness()
    fx = EffectsBuilder()
    with pytest.raises(InvariantViolation):
        h.table.install(snap, fx)
    assert fx.writes == []


# --------------------------------------------------------------------------------------------
# Generated command sequences

KEYS = ["k0", "k1", "k2"]
HOLDERS = ["a", "b", "c"]


@st.composite
def command_sequences(draw: st.DrawFn) -> list[Command]:
    n = draw(st.integers(1, 60))
    now = 1000
    cmds: list[Command] = []
    for _ in range(n):
        now += draw(st.integers(0, 60))
        # Proposer clocks disagree: some commands carry an earlier time.
        stamp = now - draw(st.sampled_from([0, 0, 0, 30]))
        key = draw(st.sampled_from(KEYS))
        who = draw(st.sampled_from(HOLDERS))
        version = draw(st.integers(0, 4))
        lease = draw(st.integers(1, 120))
        kind = draw(st.integers(0, 9))
        if kind <= 3:
            expected = draw(st.one_of(st.none(), st.none(), st.none(), st.just(version)))
            cmds.append(acquire(key, who, lease, stamp, expected))
        elif kind <= 5:
            cmds.append(
                RenewCmd(key=key, holder=who, version=version, lease_ms=lease, now_ms=stamp)
            )
        elif kind <= 7:
            cmds.append(ReleaseCmd(key=key, holder=who, version=version, now_ms=stamp))
        elif kind == 8:
            cmds.append(ReadCmd(key=key, now_ms=stamp))
        else:
            cmds.append(CleanupCmd(now_ms=stamp))
    return cmds


PROPS = settings(max_examples=200, deadline=None)


@PROPS
@given(command_sequences())
def test_fencing_tokens_strictly_increase_and_one_valid_holder_at_a_time(
    cmds: list[Command],
) -> None:
    h = Harness()
    granted: dict[tuple[str, int], str] = {}  # (key, version) -> the only holder it was given to
    last_version: dict[str, int] = {}
    lease: dict[str, tuple[str, int]] = {}  # key -> (holder, expiry) of the latest valid lease
    for cmd in cmds:
        result = h.run(cmd)
        if isinstance(cmd, AcquireCmd | RenewCmd) and isinstance(result, LockOk):
            key, t = cmd.key, result.at_ms
            previous = last_version.get(key, 0)
            if result.version == previous:
                # A renewal: same holder, same token.
                assert granted[(key, result.version)] == cmd.holder
            else:
                assert isinstance(cmd, AcquireCmd)
                assert result.version == previous + 1
                assert (key, result.version) not in granted
                # Another holder may take a key only when no other lease is valid, unless the
                # caller named the current version (a deliberate takeover).
                current = lease.get(key)
                if current is not None and current[0] != cmd.holder and t < current[1]:
                    assert cmd.expected_version == previous
            granted[(key, result.version)] = cmd.holder
            last_version[key] = result.version
            lease[key] = (cmd.holder, result.expiry_ms)
        elif isinstance(cmd, ReleaseCmd) and isinstance(result, LockOk):
            lease.pop(cmd.key, None)
        # The table never shows a version below one it has granted.
        for key, e in h.table.items():
            assert e.version == last_version.get(key, 0)


@PROPS
@given(command_sequences())
def test_same_commands_give_the_same_results_writes_and_state(cmds: list[Command]) -> None:
    h, g = Harness(), Harness()
    for cmd in cmds:
        assert h.raw(encode_command(cmd)) == g.raw(encode_command(cmd))
    assert h.writes == g.writes
    assert h.table.snapshot() == g.table.snapshot()
    assert list(h.reloaded().items()) == list(h.table.items())


@PROPS
@given(command_sequences(), st.integers(0, 59))
def test_snapshot_mid_sequence_then_the_rest_agrees(cmds: list[Command], cut: int) -> None:
    h = Harness()
    for cmd in cmds[:cut]:
        h.run(cmd)
    g = Harness()
    fx = EffectsBuilder()
    g.table.install(h.table.snapshot(), fx)
    g.store.apply(fx.writes)
    for cmd in cmds[cut:]:
        assert h.run(cmd) == g.run(cmd)
    assert g.table.snapshot() == h.table.snapshot()


# --------------------------------------------------------------------------------------------
# Differential: the checker's lock model against the state machine


def model_input(cmd: Command, at_ms: int | None) -> Any:
    match cmd:
        case AcquireCmd():
            return ("acquire", cmd.key, cmd.holder, cmd.expected_version, cmd.lease_ms, at_ms)
        case RenewCmd():
            return ("renew", cmd.key, cmd.holder, cmd.version, cmd.lease_ms, at_ms)
        case ReleaseCmd():
            return ("release", cmd.key, cmd.holder, cmd.version, 0, at_ms)
        case ReadCmd():
            return ("read", cmd.key, "", None, 0, at_ms)
    raise AssertionError(cmd)


def sequential_history(cmds: list[Command]) -> list[Operation]:
    h = Harness()
    ops: list[Operation] = []
    for i, cmd in enumerate(cmds):
        result = h.run(cmd)
        if isinstance(cmd, CleanupCmd):
            continue  # internal: not a client operation
        assert isinstance(result, LockOk | LockDenied)
        ops.append(
            Operation(
                call_index=2 * i,
                return_index=2 * i + 1,
                process=i % 3,
                input=model_input(cmd, result.at_ms),
                output=(
                    isinstance(result, LockOk),
                    result.holder,
                    result.version,
                    result.expiry_ms,
                ),
            )
        )
    return ops


@PROPS
@given(command_sequences())
def test_lock_model_agrees_with_the_state_machine(cmds: list[Command]) -> None:
    ops = sequential_history(cmds)
    # Step by step, per key, the model's transition predicts the state machine's answer.
    states: dict[str, Any] = {}
    for o in ops:
        key = o.input[1]
        state, predicted = lock_transition(states.get(key, LockModel().init()), o.input)
        states[key] = state
        assert predicted == o.output, o
    assert check_operations(LockModel(), ops).verdict == "ok"


@PROPS
@given(command_sequences(), st.data())
def test_lock_model_rejects_a_changed_answer(cmds: list[Command], data: st.DataObject) -> None:
    ops = sequential_history(cmds)
    if not ops:
        return
    i = data.draw(st.integers(0, len(ops) - 1))
    okay, holder, version, expiry = ops[i].output
    field_ = data.draw(st.integers(0, 3))
    mutated = [okay, holder, version, expiry]
    mutated[field_] = (
        (not okay) if field_ == 0 else (holder + "x") if field_ == 1 else mutated[field_] + 1
    )
    ops[i] = Operation(
        call_index=ops[i].call_index,
        return_index=ops[i].return_index,
        process=ops[i].process,
        input=ops[i].input,
        output=tuple(mutated),
    )
    assert check_operations(LockModel(), ops).verdict == "illegal"
