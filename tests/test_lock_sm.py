"""The lock state machine (pxq.lock.sm): every rule, values, directory listings, fencing-token
monotonicity, persistence, snapshots, determinism, and agreement with the checker's lock
model (pxq.check.lock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq import codec
from pxq.check.linear import Operation, check_operations
from pxq.check.lock import LeaseLockModel, lease_alternatives, lock_transition, value_text
from pxq.effects import EffectsBuilder, InvariantViolation, Write
from pxq.lock.commands import (
    AcquireCmd,
    CleanupCmd,
    Command,
    ListCmd,
    ReadCmd,
    ReleaseCmd,
    RenewCmd,
    decode_command,
    encode_command,
)
from pxq.lock.messages import (
    LEASE_MS_MAX,
    LIST_BYTES_MAX,
    LIST_ENTRIES_MAX,
    VALUE_BYTES_MAX,
    Acquire,
    ListLocks,
    LockDenied,
    LockEntry,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
)
from pxq.lock.sm import (
    CLEANUP_KEYS_MAX,
    L_KEY,
    L_VALUE,
    SNAPSHOT_MAGIC_V1,
    LockTable,
    TableEntry,
)
from pxq.positional import CommandError
from sim.memstore import MemoryStore


@dataclass
class Harness:
    """One lock table on a memory store; applies commands one step each."""

    group: int = 3
    keys_max: int = 100
    values_bytes_max: int = VALUE_BYTES_MAX * 4
    store: MemoryStore = field(default_factory=MemoryStore)
    table: LockTable = field(init=False)
    instance: int = 0
    writes: list[Write] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = LockTable(
            self.store, self.group, keys_max=self.keys_max, values_bytes_max=self.values_bytes_max
        )
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
        other = LockTable(
            self.store, self.group, keys_max=self.keys_max, values_bytes_max=self.values_bytes_max
        )
        other.load()
        return other


def acquire(
    key: str,
    holder: str,
    lease: int,
    now: int,
    expected: int | None = None,
    value: bytes = b"",
) -> AcquireCmd:
    return AcquireCmd(
        key=key,
        holder=holder,
        lease_ms=lease,
        expected_version=expected,
        now_ms=now,
        value=value,
    )


def ok(key: str, holder: str, version: int, expiry: int, at: int, value: bytes = b"") -> LockOk:
    return LockOk(key=key, holder=holder, version=version, expiry_ms=expiry, at_ms=at, value=value)


def denied(
    key: str, holder: str, version: int, expiry: int, at: int, value: bytes = b""
) -> LockDenied:
    return LockDenied(
        key=key, holder=holder, version=version, expiry_ms=expiry, at_ms=at, value=value
    )


def listing(prefix: str, entries_max: int, now: int, start_after: str = "") -> ListCmd:
    return ListCmd(prefix=prefix, entries_max=entries_max, start_after=start_after, now_ms=now)


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
        "a": TableEntry(holder="", version=1, expiry_ms=0),
        "b": TableEntry(holder="y", version=1, expiry_ms=1500),
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


# --------------------------------------------------------------------------------------------
# Values


def test_a_grant_sets_the_value_and_a_renewal_by_acquire_replaces_it() -> None:
    h = Harness()
    assert h.run(acquire("k", "a", 100, 1000, value=b"one")) == ok("k", "a", 1, 1100, 1000, b"one")
    assert h.run(ReadCmd(key="k", now_ms=1001)) == ok("k", "a", 1, 1100, 1001, b"one")
    # A re-acquire by the holder is a renewal: same version, the acquire's value (even empty).
    assert h.run(acquire("k", "a", 100, 1010, value=b"two")) == ok("k", "a", 1, 1110, 1010, b"two")
    assert h.run(acquire("k", "a", 100, 1020)) == ok("k", "a", 1, 1120, 1020)
    # A new grant after expiry takes the new acquire's value.
    assert h.run(acquire("k", "b", 100, 1200, value=b"b")) == ok("k", "b", 2, 1300, 1200, b"b")


def test_renew_keeps_the_value_without_one_and_replaces_it_with_one() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000, value=b"v1"))
    keep = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1010)
    assert h.run(keep) == ok("k", "a", 1, 1110, 1010, b"v1")
    swap = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1020, value=b"v2")
    assert h.run(swap) == ok("k", "a", 1, 1120, 1020, b"v2")
    clear = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1030, value=b"")
    assert h.run(clear) == ok("k", "a", 1, 1130, 1030)


def test_a_denial_carries_the_value_of_the_entry_that_caused_it() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000, value=b"mine"))
    assert h.run(acquire("k", "b", 100, 1050, value=b"x")) == denied(
        "k", "a", 1, 1100, 1050, b"mine"
    )
    bad = RenewCmd(key="k", holder="b", version=1, lease_ms=100, now_ms=1060, value=b"x")
    assert h.run(bad) == denied("k", "a", 1, 1100, 1060, b"mine")
    assert h.table.read("k", 0).value == b"mine"


def test_expired_free_and_released_entries_read_with_an_empty_value() -> None:
    h = Harness()
    h.run(acquire("k", "a", 100, 1000, value=b"v"))
    assert h.run(ReadCmd(key="k", now_ms=1100)) == ok("k", "", 1, 0, 1100)
    assert h.run(acquire("k", "b", 100, 1100, value=b"w")) == ok("k", "b", 2, 1200, 1100, b"w")
    assert h.run(ReleaseCmd(key="k", holder="b", version=2, now_ms=1110)) == ok("k", "", 2, 0, 1110)
    assert dict(h.table.items())["k"] == TableEntry(holder="", version=2, expiry_ms=0, value=b"")
    assert h.table.values_bytes == 0


def test_cleanup_drops_the_values_of_expired_entries() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000, value=b"aaaa"))
    h.run(acquire("b", "y", 500, 1000, value=b"bb"))
    assert h.table.values_bytes == 6
    h.run(CleanupCmd(now_ms=1200))
    assert h.table.values_bytes == 2
    assert list(h.store.scan(L_VALUE)) == [((3).to_bytes(4, "big") + b"b", b"bb")]
    assert list(h.reloaded().items()) == list(h.table.items())


def test_a_value_over_the_limit_is_a_bad_request_naming_its_size() -> None:
    h = Harness()
    big = b"x" * (VALUE_BYTES_MAX + 1)
    result = h.run(acquire("k", "a", 100, 1000, value=big))
    assert isinstance(result, LockError) and result.code == "bad_request"
    assert str(VALUE_BYTES_MAX + 1) in result.message
    h.run(acquire("k", "a", 100, 1000))
    renew = RenewCmd(key="k", holder="a", version=1, lease_ms=100, now_ms=1001, value=big)
    result = h.run(renew)
    assert isinstance(result, LockError) and result.code == "bad_request"
    full = b"x" * VALUE_BYTES_MAX
    assert h.run(acquire("k", "a", 100, 1002, value=full)) == ok("k", "a", 1, 1102, 1002, full)


def test_the_groups_value_bytes_are_bounded() -> None:
    h = Harness(values_bytes_max=VALUE_BYTES_MAX * 2)
    full = b"x" * VALUE_BYTES_MAX
    h.run(acquire("a", "x", 100, 0, value=full))
    h.run(acquire("b", "x", 100, 0, value=full))
    before = list(h.table.items())
    refused = h.run(acquire("c", "x", 100, 0, value=b"y"))
    assert isinstance(refused, LockError) and (refused.code, refused.definite) == (
        "too_many_bytes",
        True,
    )
    renew = RenewCmd(key="a", holder="x", version=1, lease_ms=100, now_ms=1, value=full + b"")
    assert h.run(renew) == ok("a", "x", 1, 101, 1, full)  # same size: fits
    assert list(h.table.items())[2:] == before[2:]
    assert "c" not in dict(h.table.items())
    # Shrinking one value makes room.
    h.run(RenewCmd(key="a", holder="x", version=1, lease_ms=100, now_ms=2, value=b"small"))
    assert h.run(acquire("c", "x", 100, 3, value=b"y")) == ok("c", "x", 1, 103, 3, b"y")
    with pytest.raises(ValueError, match="values_bytes_max"):
        LockTable(h.store, 0, values_bytes_max=VALUE_BYTES_MAX - 1)


# --------------------------------------------------------------------------------------------
# Directory listings


def test_list_shows_the_live_entries_of_one_directory_in_key_order() -> None:
    h = Harness()
    h.run(acquire("d/b", "x", 100, 1000, value=b"vb"))
    h.run(acquire("d/a", "y", 500, 1000, value=b"va"))
    h.run(acquire("d/c", "z", 100, 1000))
    h.run(ReleaseCmd(key="d/c", holder="z", version=1, now_ms=1000))
    h.run(acquire("d/sub/x", "x", 100, 1000))  # a subdirectory: not listed
    h.run(acquire("dx", "x", 100, 1000))  # another directory sharing the prefix's letters
    h.run(acquire("d/", "w", 100, 1000))  # the directory's own name: an empty name
    got = h.run(listing("d/", 10, 1050))
    assert got == LockList(
        prefix="d/",
        entries=(
            LockEntry(key="d/", holder="w", version=1, expiry_ms=1100, value=b""),
            LockEntry(key="d/a", holder="y", version=1, expiry_ms=1500, value=b"va"),
            LockEntry(key="d/b", holder="x", version=1, expiry_ms=1100, value=b"vb"),
        ),
        at_ms=1050,
        more=False,
    )
    # Expired entries drop out as of the listing's time.
    later = h.run(listing("d/", 10, 1100))
    assert isinstance(later, LockList)
    assert [e.key for e in later.entries] == ["d/a"] and later.at_ms == 1100
    assert h.table.list_dir("d/", 10, "", 0) == later  # the group's time: never goes back
    assert h.run(listing("none/", 10, 1100)) == LockList(
        prefix="none/", entries=(), at_ms=1100, more=False
    )


def test_list_pages_with_entries_max_and_start_after() -> None:
    h = Harness()
    for name in "abcde":
        h.run(acquire(f"q/{name}", "x", 1000, 0))
    h.run(ReleaseCmd(key="q/c", holder="x", version=1, now_ms=1))
    first = h.table.list_dir("q/", 2, "", 0)
    assert [e.key for e in first.entries] == ["q/a", "q/b"] and first.more
    second = h.table.list_dir("q/", 2, first.entries[-1].key, 0)
    assert [e.key for e in second.entries] == ["q/d", "q/e"]
    assert not second.more  # nothing live after q/e
    assert h.table.list_dir("q/", 2, "q/e", 0) == LockList(
        prefix="q/", entries=(), at_ms=1, more=False
    )
    # Exactly entries_max live entries left: no more.
    assert not h.table.list_dir("q/", 4, "", 0).more


def test_list_stops_at_its_byte_limit_with_at_least_one_entry() -> None:
    h = Harness(keys_max=200, values_bytes_max=LIST_BYTES_MAX * 2)
    full = b"v" * VALUE_BYTES_MAX
    per_list = LIST_BYTES_MAX // (len("b/000") + len("x") + VALUE_BYTES_MAX)  # whole entries
    for i in range(per_list + 5):
        h.run(acquire(f"b/{i:03d}", "x", 1000, 0, value=full))
    got = h.table.list_dir("b/", LIST_ENTRIES_MAX, "", 0)
    assert got.more and len(got.entries) == per_list
    assert sum(len(e.key) + 1 + len(e.value) for e in got.entries) <= LIST_BYTES_MAX


@pytest.mark.parametrize(
    ("cmd", "problem"),
    [
        (listing("", 10, 0), "prefix"),
        (listing("d", 10, 0), "must end with '/'"),
        (listing("d/", 0, 0), "entries_max"),
        (listing("d/", LIST_ENTRIES_MAX + 1, 0), "entries_max"),
        (listing("d/" * 200, 1, 0), "prefix"),
        (listing("d/", 1, 0, start_after="k" * 256), "start_after"),
    ],
)
def test_invalid_listings_are_bad_requests_naming_the_problem(cmd: ListCmd, problem: str) -> None:
    h = Harness()
    result = h.run(cmd)
    assert isinstance(result, LockError) and result.code == "bad_request"
    assert problem in result.message


def test_the_directory_index_holds_each_key_once_in_order_also_after_reload() -> None:
    h = Harness()
    for key in ["a/z", "a/b", "b/x", "a/b", "top", "a/m/n"]:
        h.run(acquire(key, "x", 10, 0))
    expected = {"a/": ["a/b", "a/z"], "b/": ["b/x"], "top": ["top"], "a/m/": ["a/m/n"]}
    assert h.table.dirs == expected
    assert h.reloaded().dirs == expected
    fx = EffectsBuilder()
    g = Harness()
    g.table.install(h.table.snapshot(), fx)
    assert g.table.dirs == expected


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
        acquire("k", "a", 10, 5, value=b"\x00\xff"),
        RenewCmd(key="k", holder="a", version=2, lease_ms=7, now_ms=9),
        RenewCmd(key="k", holder="a", version=2, lease_ms=7, now_ms=9, value=b""),
        RenewCmd(key="k", holder="a", version=2, lease_ms=7, now_ms=9, value=b"v"),
        ReleaseCmd(key="k", holder="a", version=2, now_ms=9),
        ReadCmd(key="k", now_ms=9),
        CleanupCmd(now_ms=9),
        listing("d/", 7, 9, start_after="d/x"),
    ]
    for cmd in cmds:
        assert decode_command(encode_command(cmd)) == cmd
    with pytest.raises(CommandError):
        decode_command(b"\x93\x01\x02\x03")
    with pytest.raises(CommandError, match="byte string"):
        decode_command(msgpack.packb([1, "k", "a", 10, None, 0, "text"]))


def test_commands_written_before_values_still_decode() -> None:
    old_acquire = msgpack.packb([1, "k", "a", 10, None, 5], use_bin_type=True)
    assert decode_command(old_acquire) == acquire("k", "a", 10, 5)
    old_renew = msgpack.packb([2, "k", "a", 1, 10, 5], use_bin_type=True)
    assert decode_command(old_renew) == RenewCmd(
        key="k", holder="a", version=1, lease_ms=10, now_ms=5, value=None
    )


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
        Acquire(key="k", holder="a", lease_ms=5, value=b"v"),
        Renew(key="k", holder="a", version=1, lease_ms=5, value=b""),
        ok("k", "a", 1, 2, 3, b"value"),
        denied("k", "a", 1, 2, 3, b"value"),
        ListLocks(prefix="d/"),
        ListLocks(prefix="d/", entries_max=5, through_log=True, start_after="d/a"),
        LockList(
            prefix="d/",
            entries=(LockEntry(key="d/a", holder="h", version=3, expiry_ms=9, value=b"x"),),
            at_ms=4,
            more=True,
        ),
    ]
    for m in msgs:
        assert codec.decode(codec.encode(m)) == m
        assert 128 <= codec.tag_of(type(m)) < 192


# --------------------------------------------------------------------------------------------
# Persistence, snapshots, determinism


def test_state_survives_a_reload_from_storage() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000, value=b"va"))
    h.run(acquire("b", "y", 100, 1000, value=b"vb"))
    h.run(ReleaseCmd(key="b", holder="y", version=1, now_ms=1001))
    other = h.reloaded()
    assert list(other.items()) == list(h.table.items())
    assert other.time_ms == 1001
    assert dict(other.items())["a"].value == b"va"
    assert other.values_bytes == h.table.values_bytes == 2
    assert all(k[:4] == (3).to_bytes(4, "big") for k, _ in h.store.scan(L_KEY))
    assert [k for k, _ in h.store.scan(L_VALUE)] == [(3).to_bytes(4, "big") + b"a"]


def test_snapshot_install_round_trip_replaces_the_state() -> None:
    h = Harness()
    h.run(acquire("a", "x", 100, 1000, value=b"\x00value"))
    h.run(acquire("é", "y", 100, 1010, value=b"v"))
    h.run(ReleaseCmd(key="é", holder="y", version=1, now_ms=1020))
    h.run(acquire("d/k", "z", 100, 1020, value=b"dir"))
    snap = h.table.snapshot()
    g = Harness()
    g.run(acquire("stale", "q", 100, 5, value=b"gone"))
    fx = EffectsBuilder()
    g.table.install(snap, fx)
    g.store.apply(fx.writes)
    assert list(g.table.items()) == list(h.table.items())
    assert g.table.time_ms == h.table.time_ms
    assert list(g.reloaded().items()) == list(h.table.items())
    assert g.table.snapshot() == snap
    assert g.table.values_bytes == h.table.values_bytes
    assert g.table.list_dir("d/", 5, "", 0) == h.table.list_dir("d/", 5, "", 0)
    assert g.run(acquire("a", "z", 100, 1050)) == h.run(acquire("a", "z", 100, 1050))


def test_a_snapshot_written_before_values_installs() -> None:
    # The v1 layout: time, then per key u16 key length, u16 holder length, u64 version, expiry.
    v1 = SNAPSHOT_MAGIC_V1 + (1000).to_bytes(8, "big")
    v1 += (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + (4).to_bytes(8, "big")
    v1 += (1100).to_bytes(8, "big") + b"kx"
    h = Harness()
    fx = EffectsBuilder()
    h.table.install(v1, fx)
    h.store.apply(fx.writes)
    assert list(h.table.items()) == [("k", TableEntry(holder="x", version=4, expiry_ms=1100))]
    assert h.table.time_ms == 1000
    assert list(h.reloaded().items()) == list(h.table.items())


@pytest.mark.parametrize(
    "snap",
    [
        b"",
        b"PXQL\x01",
        b"PXQL\x01" + bytes(8) + b"\x00\x05",
        b"PXQL\x02" + bytes(8) + bytes(12) + b"\x00" * 7,
        b"PXQL\x02" + bytes(8) + b"\x00\x01\x00\x00\x00\x00\x00\x09" + bytes(16) + b"k",
        b"PXQL\x09" + bytes(8),
    ],
)
def test_corrupt_snapshot_is_refused_before_writing(snap: bytes) -> None:
    h = Harness()
    fx = EffectsBuilder()
    with pytest.raises(InvariantViolation):
        h.table.install(snap, fx)
    assert fx.writes == []


# --------------------------------------------------------------------------------------------
# Generated command sequences

KEYS = ["k0", "d/k1", "d/k2"]
"""``k0`` is its own directory; the others share ``d/``."""
DIR_KEYS = ["d/k1", "d/k2"]
HOLDERS = ["a", "b", "c"]
VALUES = [b"", b"x", b"y"]


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
        kind = draw(st.integers(0, 10))
        if kind <= 3:
            expected = draw(st.one_of(st.none(), st.none(), st.none(), st.just(version)))
            value = draw(st.sampled_from(VALUES))
            cmds.append(acquire(key, who, lease, stamp, expected, value))
        elif kind <= 5:
            renew_value = draw(st.sampled_from([None, None, *VALUES]))
            cmds.append(
                RenewCmd(
                    key=key,
                    holder=who,
                    version=version,
                    lease_ms=lease,
                    now_ms=stamp,
                    value=renew_value,
                )
            )
        elif kind <= 7:
            cmds.append(ReleaseCmd(key=key, holder=who, version=version, now_ms=stamp))
        elif kind == 8:
            cmds.append(ReadCmd(key=key, now_ms=stamp))
        elif kind == 9:
            after = draw(st.sampled_from(["", "", "d/k1"]))
            cmds.append(listing("d/", draw(st.integers(1, 2)), stamp, after))
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
            return (
                "acquire",
                cmd.key,
                cmd.holder,
                cmd.expected_version,
                cmd.lease_ms,
                at_ms,
                value_text(cmd.value),
            )
        case RenewCmd():
            value = None if cmd.value is None else value_text(cmd.value)
            return ("renew", cmd.key, cmd.holder, cmd.version, cmd.lease_ms, at_ms, value)
        case ReleaseCmd():
            return ("release", cmd.key, cmd.holder, cmd.version, 0, at_ms, None)
        case ReadCmd():
            return ("read", cmd.key, "", None, 0, at_ms, None)
    raise AssertionError(cmd)


def model_output(result: LockOk | LockDenied) -> Any:
    return (
        isinstance(result, LockOk),
        result.holder,
        result.version,
        result.expiry_ms,
        value_text(result.value),
    )


def sequential_history(cmds: list[Command]) -> list[Operation]:
    """The commands applied one after the other, as checker operations; a listing as a read
    of each key of its directory it covers (as ``pxq.check.lock`` reads a listing)."""
    h = Harness()
    ops: list[Operation] = []
    for i, cmd in enumerate(cmds):
        result = h.run(cmd)
        if isinstance(cmd, CleanupCmd):
            continue  # internal: not a client operation
        if isinstance(cmd, ListCmd):
            assert isinstance(result, LockList)
            seen = {e.key: e for e in result.entries}
            last = max(seen) if seen else None
            for key in DIR_KEYS:
                if key <= cmd.start_after or (result.more and (last is None or key > last)):
                    continue  # not covered by this listing
                e = seen.get(key)
                output = (
                    (True, "", None, 0, "")
                    if e is None
                    else (True, e.holder, e.version, e.expiry_ms, value_text(e.value))
                )
                ops.append(
                    Operation(
                        call_index=2 * i,
                        return_index=2 * i + 1,
                        process=i % 3,
                        input=("read", key, "", None, 0, result.at_ms, None),
                        output=output,
                    )
                )
            continue
        assert isinstance(result, LockOk | LockDenied)
        ops.append(
            Operation(
                call_index=2 * i,
                return_index=2 * i + 1,
                process=i % 3,
                input=model_input(cmd, result.at_ms),
                output=model_output(result),
            )
        )
    return ops


def lease_verdict(ops: list[Operation]) -> str:
    return check_operations(LeaseLockModel(), lease_alternatives(ops)).verdict


@PROPS
@given(command_sequences())
def test_lock_model_agrees_with_the_state_machine(cmds: list[Command]) -> None:
    h = Harness()
    states: dict[str, Any] = {}
    for cmd in cmds:
        result = h.run(cmd)
        if isinstance(cmd, CleanupCmd):
            continue
        if isinstance(cmd, ListCmd):
            # Exactly the keys the model holds at the listing's time, in order, bounded.
            assert isinstance(result, LockList)
            held = []
            for key in DIR_KEYS:
                _, view = lock_transition(
                    states.get(key, ("", 0, 0, 0, "")),
                    ("read", key, "", None, 0, result.at_ms, None),
                )
                if view[1] and key > cmd.start_after:
                    assert view[2] is not None
                    held.append(
                        LockEntry(
                            key=key,
                            holder=view[1],
                            version=view[2],
                            expiry_ms=view[3],
                            value=view[4].encode("latin-1"),
                        )
                    )
            assert result.entries == tuple(held[: cmd.entries_max])
            assert result.more == (len(held) > cmd.entries_max)
            continue
        # Step by step, per key, the model's transition predicts the state machine's answer.
        assert isinstance(result, LockOk | LockDenied), result
        key = cmd.key
        state, predicted = lock_transition(
            states.get(key, ("", 0, 0, 0, "")), model_input(cmd, result.at_ms)
        )
        states[key] = state
        assert predicted == model_output(result), (cmd, result)
    assert lease_verdict(sequential_history(cmds)) == "ok"


@PROPS
@given(command_sequences(), st.data())
def test_lock_model_rejects_a_changed_answer(cmds: list[Command], data: st.DataObject) -> None:
    ops = sequential_history(cmds)
    if not ops:
        return
    i = data.draw(st.integers(0, len(ops) - 1))
    okay, holder, version, expiry, value = ops[i].output
    field_ = data.draw(st.integers(0, 4))
    mutated = [okay, holder, version, expiry, value]
    if field_ == 0:
        mutated[0] = not okay
    elif field_ == 1:
        mutated[1] = holder + "x"
    elif field_ == 2:
        mutated[2] = 99 if version is None else version + 1
    elif field_ == 3:
        mutated[3] = expiry + 1
    else:
        mutated[4] = value + "!"
    ops[i] = Operation(
        call_index=ops[i].call_index,
        return_index=ops[i].return_index,
        process=ops[i].process,
        input=ops[i].input,
        output=tuple(mutated),
    )
    assert lease_verdict(ops) == "illegal"
