"""Lock nodes (``pxq.lock.node.LockNode``) in a small deterministic in-process cluster:
acquire, renew, release and reads through the log, values, directory listings, redirects,
validation, failover with a lagging wall clock, cleanup; and the lock workload's checkers
(``sim/lock_workload.py``) on hand-made histories, including the negative cases they must
catch.

``LockCluster`` is the shared ``tests/service_harness.ServiceCluster`` over LockNodes (instantly
syncing disks, fixed latency, integer true time, wall clocks that may be offset, crash and
restart, a single-master check after every step).
"""

from __future__ import annotations

import random
import zlib

import pytest

from pxq.check.history import JSON, HistoryWriter, Op
from pxq.check.lock import (
    check_fencing,
    check_lock_linearizable,
    check_lock_liveness,
    lock_operations,
)
from pxq.lock.messages import (
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
from pxq.lock.node import LockNode, directory_of, group_of_key
from pxq.paxos.config import PaxosConfig
from pxq.paxos.roles import Role
from sim import scenario
from sim.memstore import MemoryStore
from tests.service_harness import WALL_ORIGIN, ServiceCluster

NAMES = ("l0", "l1", "l2")


class LockCluster(ServiceCluster[LockNode]):
    """Three lock replicas (``tests/service_harness.py``)."""

    def __init__(self, config: PaxosConfig, cleanup_tick_ms: int = 200) -> None:
        self.config = config
        self.cleanup_tick_ms = cleanup_tick_ms
        super().__init__(config.replicas, config.groups)

    @classmethod
    def make(cls, groups: int = 2, cleanup_tick_ms: int = 200) -> LockCluster:
        c = cls(PaxosConfig(replicas=NAMES, groups=groups), cleanup_tick_ms=cleanup_tick_ms)
        c.start()
        return c

    def new_node(self, name: str, disk: MemoryStore, rng: random.Random) -> LockNode:
        return LockNode(name, self.config, disk, rng, cleanup_tick_ms=self.cleanup_tick_ms)

    def redirect_of(self, response: object) -> tuple[bool, str | None]:
        if isinstance(response, LockRedirect):
            return True, response.master
        return False, None

    def is_unknown(self, response: object) -> bool:
        return isinstance(response, LockError) and response.code == "unknown"

    def request_ok(self, request: object, key: str, within_ms: int = 10_000) -> object:
        """Send ``request`` to the master of ``key``'s group, following redirects."""
        return self.follow_redirects(request, within_ms)

    def master_of_key(self, key: str) -> str:
        return self.wait_master(group_of_key(key, self.config.groups))


LEASE = 1000


def acquire(key: str, holder: str, lease: int = LEASE) -> Acquire:
    return Acquire(key=key, holder=holder, lease_ms=lease)


# --------------------------------------------------------------------------------------------
# The node


def test_keys_map_to_groups_by_crc32_of_their_directory() -> None:
    assert directory_of("queue/7") == "queue/"
    assert directory_of("a/b/c") == "a/b/"
    assert directory_of("a/") == "a/"
    assert directory_of("plain") == "plain"
    assert group_of_key("queue/7", 4) == zlib.crc32(b"queue/") % 4
    assert group_of_key("ключ", 3) == zlib.crc32("ключ".encode()) % 3
    assert {group_of_key(f"k{i}", 4) for i in range(50)} == {0, 1, 2, 3}
    # All keys of a directory, and the directory's listing prefix, share one group.
    assert {group_of_key(f"dir/{i}", 7) for i in range(50)} == {group_of_key("dir/", 7)}
    assert {group_of_key(f"d{i}/x", 4) for i in range(50)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        group_of_key("k", 0)


def test_acquire_renew_release_and_reads_through_the_log() -> None:
    c = LockCluster.make()
    m = c.master_of_key("a")
    node = c.node(m)
    group = node.group_of("a")
    applied = node.applied(group)
    got = c.request(m, acquire("a", "alice"))
    assert isinstance(got, LockOk) and (got.holder, got.version) == ("alice", 1)
    assert got.expiry_ms == got.at_ms + LEASE and got.at_ms >= WALL_ORIGIN
    assert node.applied(group) == applied + 1  # it went through the log
    # Another holder is denied with the entry that caused it.
    denied = c.request(m, acquire("a", "bob"))
    assert isinstance(denied, LockDenied)
    assert (denied.holder, denied.version, denied.expiry_ms) == ("alice", 1, got.expiry_ms)
    # A renewal keeps the token and moves the expiry; a re-acquire by the holder too.
    c.run(100)
    renewed = c.request(m, Renew(key="a", holder="alice", version=1, lease_ms=LEASE))
    assert isinstance(renewed, LockOk) and renewed.version == 1
    assert renewed.expiry_ms > got.expiry_ms
    again = c.request(m, acquire("a", "alice"))
    assert isinstance(again, LockOk) and again.version == 1
    # Reads: through the log and locally at the master see the same entry.
    logged = c.request(m, ReadLock(key="a", through_log=True))
    assert isinstance(logged, LockOk) and (logged.holder, logged.version) == ("alice", 1)
    local = c.responses[c.call(m, ReadLock(key="a"))]  # answered in the same step
    assert isinstance(local, LockOk) and (local.holder, local.version) == ("alice", 1)
    assert local.at_ms == logged.at_ms  # the group's time: the last applied command's
    # A stale release is denied; the holder's release frees the key at once, keeping the token.
    stale = c.request(m, Release(key="a", holder="alice", version=7))
    assert isinstance(stale, LockDenied)
    freed = c.request(m, Release(key="a", holder="alice", version=1))
    assert isinstance(freed, LockOk)
    assert freed == LockOk(key="a", holder="", version=1, expiry_ms=0, at_ms=freed.at_ms)
    bob = c.request(m, acquire("a", "bob"))
    assert isinstance(bob, LockOk) and (bob.holder, bob.version) == ("bob", 2)
    # A renewal by the previous holder with its old token is refused.
    old = c.request(m, Renew(key="a", holder="alice", version=1, lease_ms=LEASE))
    assert isinstance(old, LockDenied) and (old.holder, old.version) == ("bob", 2)


def test_followers_redirect_writes_and_local_reads_to_the_master() -> None:
    c = LockCluster.make()
    m = c.master_of_key("b")
    c.run(300)  # heartbeats tell the followers who the master is
    for name in NAMES:
        if name == m:
            continue
        assert c.request(name, acquire("b", "x")) == LockRedirect(master=m)
        assert c.responses[c.call(name, ReadLock(key="b"))] == LockRedirect(master=m)
        assert c.request(name, ReadLock(key="b", through_log=True)) == LockRedirect(master=m)


@pytest.mark.parametrize(
    "request_",
    [
        Acquire(key="", holder="h", lease_ms=10),
        Acquire(key="k" * 256, holder="h", lease_ms=10),
        Acquire(key="k", holder="", lease_ms=10),
        Acquire(key="k", holder="h", lease_ms=0),
        Acquire(key="k", holder="h", lease_ms=24 * 60 * 60 * 1000 + 1),
        Acquire(key="k", holder="h", lease_ms=10, expected_version=-1),
        Renew(key="k", holder="h", version=-1, lease_ms=10),
        Renew(key="k", holder="h" * 256, version=1, lease_ms=10),
        Release(key="k", holder="h", version=-2),
        ReadLock(key=""),
        ReadLock(key="\udc80", through_log=True),
        Acquire(key="k", holder="h", lease_ms=10, value=b"v" * (VALUE_BYTES_MAX + 1)),
        Acquire(key="k", holder="h", lease_ms=10, value="text"),  # type: ignore[arg-type]
        Renew(key="k", holder="h", version=1, lease_ms=10, value=b"v" * (VALUE_BYTES_MAX + 1)),
        ListLocks(prefix=""),
        ListLocks(prefix="d"),
        ListLocks(prefix="d/", entries_max=0),
        ListLocks(prefix="d/", entries_max=LIST_ENTRIES_MAX + 1),
        ListLocks(prefix="d/", through_log=1),  # type: ignore[arg-type]
        "not a lock request",
    ],
)
def test_invalid_requests_fail_at_once_without_a_proposal(request_: object) -> None:
    c = LockCluster.make(groups=1)
    m = c.wait_master(0)
    applied = c.node(m).applied(0)
    r = c.responses[c.call(m, request_)]  # answered in the same step
    assert isinstance(r, LockError) and r.definite and r.code == "bad_request", r
    c.run(50)
    assert c.node(m).applied(0) == applied


def test_a_too_large_value_is_refused_naming_its_size() -> None:
    c = LockCluster.make(groups=1)
    m = c.wait_master(0)
    big = b"v" * (VALUE_BYTES_MAX + 1)
    r = c.responses[c.call(m, Acquire(key="k", holder="h", lease_ms=10, value=big))]
    assert isinstance(r, LockError) and str(VALUE_BYTES_MAX + 1) in r.message
    r = c.responses[c.call(m, ListLocks(prefix="nodir"))]
    assert isinstance(r, LockError) and "must end with '/'" in r.message


def test_values_through_acquire_renew_read_and_release() -> None:
    c = LockCluster.make()
    key = "owners/q1"
    m = c.master_of_key(key)
    got = c.request(m, Acquire(key=key, holder="alice", lease_ms=LEASE, value=b"addr:1"))
    assert isinstance(got, LockOk) and got.value == b"addr:1"
    denied = c.request(m, Acquire(key=key, holder="bob", lease_ms=LEASE, value=b"addr:2"))
    assert isinstance(denied, LockDenied) and denied.value == b"addr:1"
    kept = c.request(m, Renew(key=key, holder="alice", version=1, lease_ms=LEASE))
    assert isinstance(kept, LockOk) and kept.value == b"addr:1"
    swapped = c.request(
        m, Renew(key=key, holder="alice", version=1, lease_ms=LEASE, value=b"addr:3")
    )
    assert isinstance(swapped, LockOk) and swapped.value == b"addr:3"
    local = c.responses[c.call(m, ReadLock(key=key))]
    assert isinstance(local, LockOk) and local.value == b"addr:3"
    logged = c.request(m, ReadLock(key=key, through_log=True))
    assert isinstance(logged, LockOk) and logged.value == b"addr:3"
    freed = c.request(m, Release(key=key, holder="alice", version=1))
    assert isinstance(freed, LockOk) and freed.value == b""
    # Every replica stores the same values.
    c.run(300)
    for name in NAMES:
        table = c.node(name).state_machine(c.node(name).group_of(key))
        assert dict(table.items())[key].value == b""


def test_list_a_directory_locally_and_through_the_log() -> None:
    c = LockCluster.make(groups=3)
    prefix = "m/group-a/"
    m = c.master_of_key(prefix)
    for i, who in enumerate(["c2", "c0", "c1"]):
        got = c.request(
            m, Acquire(key=f"{prefix}{who}", holder=who, lease_ms=LEASE, value=str(i).encode())
        )
        assert isinstance(got, LockOk)
    # Keys of other directories never show, even in the same group.
    other = next(
        f"x{i}/k" for i in range(100) if group_of_key(f"x{i}/k", 3) == c.node(m).group_of(prefix)
    )
    assert isinstance(c.request(m, Acquire(key=other, holder="z", lease_ms=LEASE)), LockOk)
    sub = f"{prefix}sub/x"  # a subdirectory: its own directory, likely another group
    assert isinstance(c.request_ok(Acquire(key=sub, holder="z", lease_ms=LEASE), sub), LockOk)
    local = c.responses[c.call(m, ListLocks(prefix=prefix))]  # answered in the same step
    assert isinstance(local, LockList)
    assert [(e.key, e.holder, e.value) for e in local.entries] == [
        (f"{prefix}c0", "c0", b"1"),
        (f"{prefix}c1", "c1", b"2"),
        (f"{prefix}c2", "c2", b"0"),
    ]
    assert not local.more
    logged = c.request(m, ListLocks(prefix=prefix, entries_max=2, through_log=True))
    assert isinstance(logged, LockList) and logged.more
    assert logged.entries == local.entries[:2] and logged.at_ms >= local.at_ms
    rest = c.request(m, ListLocks(prefix=prefix, entries_max=2, start_after=logged.entries[-1].key))
    assert isinstance(rest, LockList) and rest.entries == local.entries[2:] and not rest.more
    # Followers redirect listings like any other request.
    c.run(300)
    for name in NAMES:
        if name != m:
            assert c.responses[c.call(name, ListLocks(prefix=prefix))] == LockRedirect(master=m)
            assert c.request(name, ListLocks(prefix=prefix, through_log=True)) == LockRedirect(
                master=m
            )


def test_a_listing_drops_expired_entries_once_the_group_time_passes_them() -> None:
    c = LockCluster.make(groups=1, cleanup_tick_ms=100)
    m = c.wait_master(0)
    assert isinstance(c.request(m, Acquire(key="e/short", holder="a", lease_ms=50)), LockOk)
    assert isinstance(c.request(m, Acquire(key="e/long", holder="b", lease_ms=60_000)), LockOk)
    c.run(500)  # a cleanup moved the group's time past the short lease
    local = c.responses[c.call(m, ListLocks(prefix="e/"))]
    assert isinstance(local, LockList)
    assert [e.key for e in local.entries] == ["e/long"]
    assert local.entries[0] == LockEntry(
        key="e/long", holder="b", version=1, expiry_ms=local.entries[0].expiry_ms, value=b""
    )


def test_failover_keeps_versions_monotonic_even_with_a_lagging_wall_clock() -> None:
    c = LockCluster.make(groups=1)
    old = c.wait_master(0)
    got = c.request_ok(acquire("f", "alice"), "f")
    assert isinstance(got, LockOk) and got.version == 1
    freed = c.request_ok(Release(key="f", holder="alice", version=1), "f")
    assert isinstance(freed, LockOk)
    held = c.request_ok(acquire("f", "bob", lease=5000), "f")
    assert isinstance(held, LockOk) and held.version == 2
    # Every other replica's wall clock is 10 s behind the old master's.
    for name in NAMES:
        if name != old:
            c.wall_offset[name] = -10_000
    c.crash(old)
    new = c.wait_master(0, within_ms=5000)
    assert new != old
    # The log's time never goes back: bob's lease still holds on the new master.
    denied = c.request_ok(acquire("f", "carol"), "f")
    assert isinstance(denied, LockDenied) and (denied.holder, denied.version) == ("bob", 2)
    assert denied.at_ms >= held.at_ms
    renewed = c.request_ok(Renew(key="f", holder="bob", version=2, lease_ms=LEASE), "f")
    assert isinstance(renewed, LockOk) and renewed.version == 2
    freed = c.request_ok(Release(key="f", holder="bob", version=2), "f")
    assert isinstance(freed, LockOk)
    carol = c.request_ok(acquire("f", "carol"), "f")
    assert isinstance(carol, LockOk) and carol.version == 3  # never a reused token
    # The old master comes back, catches up, and knows the same entry.
    c.restart(old)
    c.run(2000)
    table = c.node(old).state_machine(0)
    assert dict(table.items())["f"].version == 3


def test_a_new_master_with_a_fast_wall_clock_does_not_end_leases_early() -> None:
    """The regression of consumer-lock-master-partition seed 1: the next master's wall clock
    runs 1.5 s ahead; a 3 s lease granted just before the failover must still hold when the
    new master answers 2 s after the grant, because its term clock starts from the log's
    time, not from its wall clock."""
    c = LockCluster.make(groups=1)
    old = c.wait_master(0)
    held = c.request_ok(acquire("f", "bob", lease=3000), "f")
    assert isinstance(held, LockOk)
    granted_at = c.time
    for name in NAMES:
        if name != old:
            c.wall_offset[name] = 1_500
    c.crash(old)
    new = c.wait_master(0, within_ms=5000)
    assert new != old
    c.run(max(0, granted_at + 2000 - c.time))
    assert c.time - granted_at < 3000 - 200  # still inside bob's trusted time
    denied = c.request_ok(acquire("f", "carol"), "f")
    assert isinstance(denied, LockDenied), (c.time - granted_at, denied)
    assert denied.holder == "bob"
    # Wall time is never exceeded, and the term clock is behind the new master's wall clock.
    node = c.node(new)
    assert node.stamp(c.now(new), 0) <= c.now(new).wall_ms - 1_000


def _recovering_leader(c: LockCluster) -> str | None:
    """The replica that leads group 0 but is not yet its master (still recovering), if any."""
    now = c.now()
    for name in NAMES:
        node = c.nodes[name]
        if (
            node is not None
            and node.replica.groups[0].role is Role.LEADER
            and not node.is_master(0, now)
        ):
            return name
    return None


def test_a_command_queued_by_a_recovering_leader_is_not_stamped_with_its_wall_clock() -> None:
    """The regression of consumer-lock-master-partition seed 206: a leader still recovering
    (not yet master) queues the commands it is asked for and proposes them once master. It
    stamped them with its wall clock, 1.4 s ahead of the previous master's there, so a lease
    that its holder still trusted had expired by that stamp and the key went to another
    holder. A leader that is not yet master now proposes nothing: it redirects, and the
    command is stamped by the master it reaches."""
    c = LockCluster.make(groups=1)
    old = c.wait_master(0)
    held = c.request_ok(acquire("f", "bob", lease=3000), "f")
    assert isinstance(held, LockOk)
    granted_at = c.time
    for name in NAMES:
        if name != old:
            c.wall_offset[name] = 5_000  # far enough ahead to expire bob's lease at once
    c.crash(old)

    assert c.run_until(lambda: _recovering_leader(c) is not None, 5000, step_ms=1)
    leader = _recovering_leader(c)
    assert leader is not None
    call = c.call(leader, acquire("f", "carol"))
    assert c.run_until(lambda: c.responses[call] is not None, 3000)
    assert isinstance(c.responses[call], LockRedirect)
    answer = c.request_ok(acquire("f", "carol"), "f")
    assert c.time - granted_at < 3000 - 200  # still inside bob's trusted time
    assert isinstance(answer, LockDenied), (c.time - granted_at, answer)
    assert answer.holder == "bob"


def test_a_leader_recovering_a_group_that_never_applied_anything_grants_no_past_lease() -> None:
    """The regression of swarm-consumers seeds 19 and 20: the first leader of a lock group
    whose log is empty queued an acquire while recovering, stamped with the group's applied
    time, 0; once master it granted the lease at log time 0 (expiry ``lease_ms``, long past
    on the wall clock), and the next command, stamped with its wall clock, gave the same key
    to another holder at once while the first still trusted its lease."""
    c = LockCluster.make(groups=1)

    assert c.run_until(lambda: _recovering_leader(c) is not None, 5000, step_ms=1)
    leader = _recovering_leader(c)
    assert leader is not None and c.node(leader).state_machine(0).time_ms == 0
    call = c.call(leader, acquire("f", "bob"))
    assert c.run_until(lambda: c.responses[call] is not None, 3000)
    held = c.responses[call]
    if isinstance(held, LockRedirect):  # not master yet: bob retries, as a client does
        held = c.request_ok(acquire("f", "bob"), "f")
    assert isinstance(held, LockOk), held
    granted_at = c.time
    assert held.expiry_ms >= WALL_ORIGIN + granted_at, held
    denied = c.request_ok(acquire("f", "carol"), "f")
    assert c.time - granted_at < LEASE - 200  # still inside bob's trusted time
    assert isinstance(denied, LockDenied), (c.time - granted_at, denied)
    assert (denied.holder, denied.version) == ("bob", 1)


def test_master_proposes_cleanup_of_expired_entries_on_every_replica() -> None:
    c = LockCluster.make(groups=1, cleanup_tick_ms=100)
    m = c.wait_master(0)
    got = c.request(m, acquire("c", "alice", lease=50))
    assert isinstance(got, LockOk)
    applied = c.node(m).applied(0)
    c.run(500)
    assert c.node(m).applied(0) == applied + 1  # exactly one cleanup, then nothing to free
    for name in NAMES:
        entry = dict(c.node(name).state_machine(0).items())["c"]
        assert (entry.holder, entry.version, entry.expiry_ms) == ("", 1, 0), name
    # The local read now reports the key free, at the cleanup's time.
    local = c.responses[c.call(m, ReadLock(key="c"))]
    assert isinstance(local, LockOk) and local.holder == "" and local.at_ms >= got.expiry_ms
    c.run(1000)
    assert c.node(m).applied(0) == applied + 1


def test_no_cleanup_while_leases_are_in_force() -> None:
    c = LockCluster.make(groups=1, cleanup_tick_ms=100)
    m = c.wait_master(0)
    assert isinstance(c.request(m, acquire("d", "alice", lease=60_000)), LockOk)
    applied = c.node(m).applied(0)
    c.run(2000)
    assert c.node(m).applied(0) == applied


# --------------------------------------------------------------------------------------------
# The workload's checkers on hand-made histories


class H:
    """A tiny history builder in the lock workload's format."""

    def __init__(self) -> None:
        self.w = HistoryWriter()
        self.t = 0

    def op(
        self,
        process: int,
        f: str,
        key: str,
        holder: str,
        version: int | None,
        lease: int,
        result: tuple[str, str, int, int, int] | None,
        *,
        value: str | None = None,
        got: str | None = None,
    ) -> None:
        """One operation; ``result`` = (outcome, holder, version, expiry, at) or None (info);
        ``value``: the value an acquire or renew sets, ``got``: the value the answer shows
        (None: histories without values)."""
        self.t += 1
        self.w.invoke(
            self.t, process, f, value, key=key, holder=holder, version=version, lease_ms=lease
        )
        self.t += 1
        if result is None:
            self.w.info(self.t, process, f, None, key=key, reason="timeout")
            return
        outcome, h, v, e, at = result
        self.w.ok(
            self.t,
            process,
            f,
            got,
            key=key,
            outcome=outcome,
            holder=h,
            version=v,
            expiry_ms=e,
            at_ms=at,
        )

    def listing(
        self,
        process: int,
        prefix: str,
        entries: list[tuple[str, str, int, int, str]] | None,
        at: int = 0,
        *,
        more: bool = False,
        start_after: str = "",
    ) -> None:
        """A listing; ``entries`` None: its outcome is unknown."""
        self.t += 1
        self.w.invoke(self.t, process, "list", None, prefix=prefix, start_after=start_after)
        self.t += 1
        if entries is None:
            self.w.info(self.t, process, "list", None, key=prefix, reason="timeout")
            return
        rows: list[JSON] = [list(e) for e in entries]
        self.w.ok(self.t, process, "list", None, prefix=prefix, entries=rows, more=more, at_ms=at)

    @property
    def ops(self) -> list[Op]:
        return self.w.ops


def test_checks_pass_a_correct_history() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h.op(2, "acquire", "k", "b", None, 100, ("denied", "a", 1, 1100, 1050))
    h.op(1, "renew", "k", "a", 1, 100, ("ok", "a", 1, 1160, 1060))
    h.op(1, "release", "k", "a", 1, 0, ("ok", "", 1, 0, 1070))
    h.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1180, 1080))
    h.op(3, "read", "k", "", None, 0, ("ok", "b", 2, 1180, 1090))
    assert check_lock_linearizable(h.ops).ok
    assert check_fencing(h.ops).ok
    live = check_lock_liveness(h.ops, heal_time_ms=0, bound_ms=100)
    assert live.ok and live.details["recovery_ms"] == 2
    assert not check_lock_liveness(h.ops, heal_time_ms=1000, bound_ms=100).ok


def test_checks_catch_two_holders_at_once() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1150, 1050))  # a's lease holds
    lin = check_lock_linearizable(h.ops)
    assert not lin.ok and lin.details["verdict"] == "illegal"
    fencing = check_fencing(h.ops)
    assert not fencing.ok and fencing.details["overlapping-leases"]


def test_fencing_catches_a_token_that_goes_back() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 5, 1100, 1000))
    h.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 4, 1300, 1200))  # after a: lower token
    fencing = check_fencing(h.ops)
    assert not fencing.ok and fencing.details["token-went-back"]
    h2 = H()
    h2.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h2.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 1, 1300, 1200))  # a reused token
    assert check_fencing(h2.ops).details["two-holders-of-a-version"]


def test_a_release_ends_the_lease_for_the_fencing_check() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h.op(1, "release", "k", "a", 1, 0, ("ok", "", 1, 0, 1010))
    h.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1120, 1020))
    assert check_fencing(h.ops).ok
    assert check_lock_linearizable(h.ops).ok


def test_a_release_of_unknown_outcome_excuses_the_next_grant_only_after_it_was_sent() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h.op(1, "release", "k", "a", 1, 0, None)  # sent; the answer was lost
    h.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1120, 1020))
    assert check_fencing(h.ops).ok
    assert check_lock_linearizable(h.ops).ok
    h2 = H()
    h2.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000))
    h2.op(2, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1120, 1020))
    h2.op(1, "release", "k", "a", 1, 0, None)  # sent after b's grant: no excuse
    assert check_fencing(h2.ops).details["overlapping-leases"]


def test_an_info_grant_applied_later_than_the_latest_time_seen_is_linearizable() -> None:
    # a's acquire times out but was applied at 1500 (expiry 1600); b's denial names that
    # expiry. Applied at the latest time seen before it (1000), its lease would end at 1100
    # and could not explain the denial (the old plain model's false alarm); the lease model
    # keeps the apply time open.
    h = H()
    h.op(9, "read", "k", "", None, 0, ("ok", "", 0, 0, 1000))
    h.op(1, "acquire", "k", "a", None, 100, None)
    h.op(2, "acquire", "k", "b", None, 100, ("denied", "a", 1, 1600, 1550))
    h.op(2 + 10, "acquire", "k", "b", None, 100, ("ok", "b", 2, 1800, 1700))
    assert check_lock_linearizable(h.ops).ok
    info = [o for o in lock_operations(h.ops) if o.return_index is None]
    assert [o.input[5] for o in info] == [None]  # its apply time is unknown to the checker
    # But the unknown grant cannot be placed where its lease would contradict an answer:
    # the expiry a denial names must be at least the earliest the grant could have had.
    h2 = H()
    h2.op(9, "read", "k", "", None, 0, ("ok", "", 0, 0, 1000))
    h2.op(1, "acquire", "k", "a", None, 100, None)
    h2.op(2, "acquire", "k", "b", None, 100, ("denied", "a", 1, 1050, 1010))  # < 1000 + 100
    assert not check_lock_linearizable(h2.ops).ok
    # Nor may a later answer show the key free while that lease must still hold.
    h3 = H()
    h3.op(1, "acquire", "k", "a", None, 100, None)
    h3.op(2, "acquire", "k", "b", None, 100, ("denied", "a", 1, 1600, 1550))
    h3.op(3, "read", "k", "", None, 0, ("ok", "", 1, 0, 1560))
    assert not check_lock_linearizable(h3.ops).ok


def test_checks_follow_values_through_grants_renewals_and_reads() -> None:
    h = H()
    h.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000), value="v1", got="v1")
    h.op(2, "read", "k", "", None, 0, ("ok", "a", 1, 1100, 1010), got="v1")
    h.op(1, "renew", "k", "a", 1, 100, ("ok", "a", 1, 1120, 1020), got="v1")  # keeps it
    h.op(1, "renew", "k", "a", 1, 100, ("ok", "a", 1, 1130, 1030), value="v2", got="v2")
    h.op(2, "read", "k", "", None, 0, ("ok", "a", 1, 1130, 1040), got="v2")
    h.op(3, "acquire", "k", "b", None, 100, ("denied", "a", 1, 1130, 1050), value="x", got="v2")
    h.op(1, "release", "k", "a", 1, 0, ("ok", "", 1, 0, 1060), got="")
    h.op(2, "read", "k", "", None, 0, ("ok", "", 1, 0, 1070), got="")
    assert check_lock_linearizable(h.ops).ok
    # A read of a value replaced before it started is caught.
    stale = H()
    stale.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000), value="v1", got="v1")
    stale.op(1, "renew", "k", "a", 1, 100, ("ok", "a", 1, 1130, 1030), value="v2", got="v2")
    stale.op(2, "read", "k", "", None, 0, ("ok", "a", 1, 1130, 1040), got="v1")
    assert not check_lock_linearizable(stale.ops).ok
    # So is a value the released (or expired) entry should no longer show.
    kept = H()
    kept.op(1, "acquire", "k", "a", None, 100, ("ok", "a", 1, 1100, 1000), value="v1", got="v1")
    kept.op(2, "read", "k", "", None, 0, ("ok", "", 1, 0, 1200), got="v1")
    assert not check_lock_linearizable(kept.ops).ok


def test_checks_read_a_listing_as_a_read_of_every_key_it_covers() -> None:
    def base() -> H:
        h = H()
        h.op(1, "acquire", "d/a", "p", None, 100, ("ok", "p", 1, 1100, 1000), value="x", got="x")
        h.op(2, "acquire", "d/b", "q", None, 100, ("ok", "q", 1, 1110, 1010), got="")
        h.op(3, "acquire", "d/c", "r", None, 100, ("ok", "r", 1, 1120, 1020), got="")
        h.op(3, "release", "d/c", "r", 1, 0, ("ok", "", 1, 0, 1030))
        return h

    h = base()
    h.listing(4, "d/", [("d/a", "p", 1, 1100, "x"), ("d/b", "q", 1, 1110, "")], 1040)
    h.listing(4, "d/", [("d/a", "p", 1, 1100, "x")], 1050, more=True)  # d/b, d/c not covered
    h.listing(4, "d/", [("d/b", "q", 1, 1110, "")], 1060, start_after="d/a")
    h.listing(4, "d/", [("d/b", "q", 1, 1110, "")], 1105)  # d/a expired at 1100
    h.listing(5, "d/", None)  # unknown outcome: changes nothing
    assert check_lock_linearizable(h.ops).ok
    assert check_fencing(h.ops).ok
    ops = lock_operations(h.ops)
    assert sum(1 for o in ops if o.call_index == h.ops[8].index) == 3  # d/a, d/b, d/c
    # A held key left out of a complete listing is caught ...
    missing = base()
    missing.listing(4, "d/", [("d/a", "p", 1, 1100, "x")], 1040)
    assert not check_lock_linearizable(missing.ops).ok
    # ... as is a released key listed, a wrong value, or an expired lease listed.
    for entries, at in [
        ([("d/a", "p", 1, 1100, "x"), ("d/b", "q", 1, 1110, ""), ("d/c", "r", 1, 1120, "")], 1040),
        ([("d/a", "p", 1, 1100, "y"), ("d/b", "q", 1, 1110, "")], 1040),
        ([("d/a", "p", 1, 1100, "x"), ("d/b", "q", 1, 1110, "")], 1100),
    ]:
        wrong = base()
        wrong.listing(4, "d/", entries, at)
        assert not check_lock_linearizable(wrong.ops).ok, entries


# --------------------------------------------------------------------------------------------
# The scenario schema


def test_a_lock_scenario_loads_with_its_fields_and_checks() -> None:
    scn = scenario.loads(
        'version = 1\nname = "x"\nduration_ms = 10\n'
        '[workload]\nkind = "lock"\nclients = 2\nkeys = 3\nlease_ms = 700\ntimeout_ms = 900\n'
    )
    assert scn.workload.kind == "lock"
    assert (scn.workload.keys, scn.workload.lease_ms, scn.workload.timeout_ms) == (3, 700, 900)
    assert scn.checks == scenario.LOCK_CHECKS


def test_a_lock_scenario_refuses_checks_of_other_workloads() -> None:
    with pytest.raises(scenario.ScenarioError, match="'no_loss' needs the log workload"):
        scenario.loads(
            'version = 1\nname = "x"\nduration_ms = 10\nchecks = ["no_loss"]\n'
            '[workload]\nkind = "lock"\n'
        )
    with pytest.raises(scenario.ScenarioError, match="'fencing' needs the queue or lock workload"):
        scenario.loads('version = 1\nname = "x"\nduration_ms = 10\nchecks = ["fencing"]\n')
    with pytest.raises(scenario.ScenarioError, match=r"workload\.keys"):
        scenario.loads(
            'version = 1\nname = "x"\nduration_ms = 10\n[workload]\nkind = "lock"\nkeys = 0\n'
        )
