"""Store nodes (``pxq.store.node.StoreNode``) in a small deterministic in-process cluster:
requests, redirects, reads on the master, failover, retention ticks.

``StoreCluster`` is the store's version of ``tests/paxos_harness.Cluster``: N StoreNodes with
instantly syncing ``MemoryStore`` disks, a pool of in-flight messages delivered after a fixed
latency, integer true time (every clock runs at true rate from the same origin), crash and
restart. Writes are applied before the step's sends and replies leave, as the driver contract
requires. After every step it checks that no group has two lease holders.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from pxq.config import DEFAULT_TOML, ClusterConfig, default_config, loads_config
from pxq.effects import Effects, StorageLow
from pxq.store.messages import (
    CommitCursor,
    CommitOk,
    Enqueue,
    EnqueueOk,
    Get,
    GetOk,
    Item,
    Retry,
    RetryOk,
    Seek,
    SeekOk,
    StoreError,
    StoreRedirect,
)
from pxq.store.node import StoreNode
from pxq.store.records import Q_ITEM
from sim.memstore import MemoryStore
from tests.service_harness import WALL_ORIGIN, ServiceCluster


class StoreCluster(ServiceCluster[StoreNode]):
    """The replicas of one store (``tests/service_harness.py``); records every trace event."""

    def __init__(self, config: ClusterConfig, store: str) -> None:
        self.config = config
        self.store = store
        self.trace: list[tuple[str, str]] = []
        info = config.store(store)
        super().__init__(info.nodes, info.groups)

    @classmethod
    def make(cls, config: ClusterConfig | None = None, store: str | None = None) -> StoreCluster:
        config = config or default_config()
        c = cls(config, store or config.stores[0].name)
        c.start()
        return c

    def new_node(self, name: str, disk: MemoryStore, rng: random.Random) -> StoreNode:
        return StoreNode(name, self.config, self.store, disk, rng)

    def after_step(self, name: str, fx: Effects) -> None:
        self.trace.extend((name, ev.kind) for ev in fx.trace)

    def redirect_of(self, response: object) -> tuple[bool, str | None]:
        if isinstance(response, StoreRedirect):
            return True, response.master
        return False, None

    def is_unknown(self, response: object) -> bool:
        return isinstance(response, StoreError) and response.code == "unknown"

    def request_ok(self, request: object, group: int, within_ms: int = 10_000) -> object:
        """Send ``request`` to the master of ``group``, following redirects."""
        return self.follow_redirects(request, within_ms)


def enqueue(queue: int, seq: int, n: int = 1, producer: str = "p") -> Enqueue:
    return Enqueue(
        topic="events",
        queue=queue,
        producer=producer,
        seq=seq,
        items=tuple(Item(key=f"{seq}.{i}".encode(), payload=b"v" * 20) for i in range(n)),
    )


def get(queue: int, cursor: int = 0, topic: str = "events") -> Get:
    return Get(
        topic=topic, group="default", queue=queue, cursor=cursor, items_max=100, bytes_max=1 << 20
    )


def test_enqueue_then_get_on_the_master_sees_the_items() -> None:
    c = StoreCluster.make()
    m = c.wait_master(1)
    r = c.request(m, enqueue(queue=5, seq=1, n=3))  # queue 5 is in group 1
    assert r == EnqueueOk(topic="events", queue=5, first_offset=0, count=3)
    # Asked in the very next step after the acknowledgement, the master serves the items.
    got = c.responses[c.call(m, get(5))]
    assert isinstance(got, GetOk)
    assert [i.key for i in got.items] == [b"1.0", b"1.1", b"1.2"]
    assert all(i.enqueued_ms >= WALL_ORIGIN for i in got.items)


def test_followers_redirect_writes_and_reads_to_the_master() -> None:
    c = StoreCluster.make()
    m = c.wait_master(2)
    c.run(300)  # heartbeats tell the followers who the master is
    for name in c.names:
        if name == m:
            continue
        assert c.request(name, enqueue(queue=2, seq=1)) == StoreRedirect(master=m)
        assert c.request(name, get(2)) == StoreRedirect(master=m)


def test_invalid_requests_fail_at_once_without_a_proposal() -> None:
    c = StoreCluster.make()
    m = c.wait_master(0)
    applied = c.nodes[m].applied(0)  # type: ignore[union-attr]

    def answer(request: object) -> str:
        call_id = c.call(m, request)
        r = c.responses[call_id]  # answered in the same step
        assert isinstance(r, StoreError) and r.definite, r
        return r.code

    assert answer(Enqueue(topic="nope", queue=0, producer="p", seq=1, items=())) == (
        "unknown_topic"
    )
    assert answer(enqueue(queue=8, seq=1)) == "bad_queue"
    ordered = enqueue(queue=0, seq=3)
    for after in (3, 4, -1):  # after names an earlier batch, or is 0
        assert answer(dataclasses.replace(ordered, after=after)) == "bad_request"
    assert answer(Enqueue(topic="events", queue=0, producer="p", seq=1, items=())) == (
        "bad_request"
    )
    big = Item(key=b"k", payload=b"x" * (c.config.limits.item_bytes_max + 1))
    assert answer(Enqueue(topic="events", queue=0, producer="p", seq=1, items=(big,))) == (
        "too_large"
    )
    many = tuple(Item(key=b"k", payload=b"") for _ in range(1001))
    assert answer(Enqueue(topic="events", queue=0, producer="p", seq=1, items=many)) == (
        "too_large"
    )
    # Each item is allowed, but together they do not fit one Paxos value.
    halves = tuple(Item(key=b"k", payload=b"x" * (700 * 1024)) for _ in range(2))
    assert answer(Enqueue(topic="events", queue=0, producer="p", seq=1, items=halves)) == (
        "too_large"
    )
    assert answer(
        Enqueue(topic="events.dlq.default", queue=0, producer="p", seq=1, items=halves)
    ) == ("unknown_topic")
    assert answer(CommitCursor(topic="events", group="nobody", queue=0, cursor=0)) == (
        "unknown_group"
    )
    assert answer(Seek(topic="events", group="default", queue=0)) == "bad_request"
    assert answer(CommitCursor(topic="events", group="default", queue=0, cursor=0, epoch=-1)) == (
        "bad_request"
    )
    assert answer(Retry(topic="events", group="default", queue=0, offset=0, epoch=-1)) == (
        "bad_request"
    )
    assert answer(Retry(topic="events.dlq.default", group="default", queue=0, offset=0)) == (
        "bad_request"
    )
    assert answer("hello") == "bad_request"
    c.run(50)
    assert c.nodes[m].applied(0) == applied  # type: ignore[union-attr]


def test_commit_retry_and_seek_through_the_log() -> None:
    c = StoreCluster.make()
    c.wait_master(3)
    assert isinstance(c.request_ok(enqueue(queue=3, seq=1, n=5), group=3), EnqueueOk)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=3, cursor=2, token=7), 3)
    assert r == CommitOk(topic="events", group="default", queue=3, cursor=2)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=3, cursor=4, token=6), 3)
    assert isinstance(r, StoreError) and r.code == "stale_token"
    r = c.request_ok(Retry(topic="events", group="default", queue=3, offset=2, token=7), 3)
    assert isinstance(r, RetryOk) and r.moved_to == "events.retry.default.1" and r.cursor == 3
    r = c.request_ok(Seek(topic="events", group="default", queue=3, offset=1), 3)
    assert r == SeekOk(topic="events", group="default", positions=((3, 1),))
    got = c.request_ok(get(3, cursor=0, topic="events.retry.default.1"), 3)
    assert isinstance(got, GetOk) and [(i.key, i.attempt) for i in got.items] == [(b"1.2", 1)]
    assert got.items[0].not_before_ms >= WALL_ORIGIN + 1000
    # The seek raised the cursor's epoch: requests based on the Get before it are refused.
    got = c.request_ok(get(3), 3)
    assert isinstance(got, GetOk) and (got.committed, got.epoch) == (1, 1)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=3, cursor=4, token=7), 3)
    assert isinstance(r, StoreError) and r.code == "stale_epoch" and r.definite
    r = c.request_ok(Retry(topic="events", group="default", queue=3, offset=3, token=7), 3)
    assert isinstance(r, StoreError) and r.code == "stale_epoch" and r.definite
    r = c.request_ok(
        CommitCursor(topic="events", group="default", queue=3, cursor=4, token=7, epoch=1), 3
    )
    assert r == CommitOk(topic="events", group="default", queue=3, cursor=4)
    r = c.request_ok(Retry(topic="events", group="default", queue=3, offset=4, token=7, epoch=1), 3)
    assert isinstance(r, RetryOk) and r.cursor == 5


def test_failover_keeps_acknowledged_items_and_cursors() -> None:
    c = StoreCluster.make()
    old = c.wait_master(0)
    for seq in range(1, 6):
        assert isinstance(c.request_ok(enqueue(queue=4, seq=seq, n=2), group=0), EnqueueOk)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=4, cursor=6), 0)
    assert isinstance(r, CommitOk)
    c.crash(old)
    new = c.wait_master(0, within_ms=5000)
    assert new != old
    got = c.request_ok(get(4), group=0)
    assert isinstance(got, GetOk)
    assert got.committed == 6 and got.end_offset == 10
    assert [i.offset for i in got.items] == list(range(10))
    # A producer retry of an acknowledged enqueue is still recognised by the new master.
    again = c.request_ok(enqueue(queue=4, seq=5, n=2), group=0)
    assert isinstance(again, EnqueueOk) and again.duplicate and again.first_offset == 8
    # The old master comes back, catches up, and serves the same state once it leads again.
    c.restart(old)
    c.run(4000)
    final = c.request_ok(get(4), group=0)
    assert isinstance(final, GetOk) and final.end_offset == 10 and final.committed == 6


NO_HOLD = loads_config(DEFAULT_TOML.replace("hold_ms = 3600000\n", ""))
"""The embedded default without its hour of hold: consumed items are removable at once."""


def test_master_proposes_retention_ticks_that_empty_consumed_queues() -> None:
    c = StoreCluster.make(NO_HOLD)
    c.wait_master(1)
    assert isinstance(c.request_ok(enqueue(queue=1, seq=1, n=4), group=1), EnqueueOk)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=1, cursor=4), 1)
    assert isinstance(r, CommitOk)
    c.run(2 * c.config.store(c.store).retention_tick_ms + 500)
    got = c.request_ok(get(1), group=1)
    assert isinstance(got, GetOk) and (got.first_offset, got.end_offset) == (4, 4)
    for name in c.names:  # every replica applied the tick
        table = c.disks[name].tables.get(Q_ITEM)
        assert table is None or not table.keys, name


def test_idle_groups_propose_no_ticks() -> None:
    c = StoreCluster.make()
    c.run(3000)
    applied = {g: c.nodes[c.wait_master(g)].applied(g) for g in range(4)}  # type: ignore[union-attr]
    c.run(5000)
    assert {g: c.nodes[c.masters(g)[0]].applied(g) for g in range(4)} == applied  # type: ignore[union-attr]


def test_no_ticks_while_nothing_is_removable_or_to_reconcile() -> None:
    c = StoreCluster.make(NO_HOLD)
    m = c.wait_master(1)
    assert isinstance(c.request_ok(enqueue(queue=1, seq=1, n=4), group=1), EnqueueOk)
    c.run(300)
    node = c.nodes[m]
    assert node is not None
    applied = node.applied(1)
    tick_ms = c.config.store(c.store).retention_tick_ms
    c.run(5 * tick_ms)  # the consumer group never commits: nothing to remove
    # One reconciliation pass over the group's one queue (a slice, then its comparison).
    assert node.applied(1) == applied + 2
    assert node.state_machine(1).recon.passes == 1
    c.run(5 * tick_ms)  # idle: nothing is due
    assert node.applied(1) == applied + 2
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=1, cursor=4), 1)
    assert isinstance(r, CommitOk)
    c.run(5 * tick_ms)
    # The commit, one retention tick, then one reconciliation pass of the changed group.
    assert node.applied(1) == applied + 6
    assert node.state_machine(1).recon.passes == 2
    c.run(5 * tick_ms)
    assert node.applied(1) == applied + 6


def test_a_lagging_replica_installs_a_queue_store_snapshot() -> None:
    text = DEFAULT_TOML + "\n[stores.paxos]\ncheckpoint_every = 4\nlog_hold = 1\n"
    text = text.replace(
        "[[topics]]",
        '[[stores.replicas]]\nnode = "s3"\nport = 7104\n'
        '[[stores.replicas]]\nnode = "s4"\nport = 7105\n\n[[topics]]',
        1,
    )
    c = StoreCluster.make(loads_config(text, file="snap.toml"))
    c.wait_master(0)
    c.crash("s4")  # group 0 prefers s0; s4 misses everything below
    for seq in range(1, 16):
        assert isinstance(c.request_ok(enqueue(queue=0, seq=seq, n=3), group=0), EnqueueOk)
    r = c.request_ok(CommitCursor(topic="events", group="default", queue=0, cursor=7), 0)
    assert isinstance(r, CommitOk)
    c.restart("s4")
    assert c.run_until(
        lambda: c.nodes["s4"].applied(0) == c.nodes["s0"].applied(0),  # type: ignore[union-attr]
        within_ms=5000,
    )
    assert ("s4", "snapshot_installed") in c.trace
    lo, hi = (0).to_bytes(4, "big"), (1).to_bytes(4, "big")
    for table in ("q_queue", "q_item", "q_cursor", "q_producer", "q_dedupe"):
        assert list(c.disks["s4"].scan(table, lo, hi)) == list(c.disks["s0"].scan(table, lo, hi))
    sm = c.nodes["s4"].state_machine(0)  # type: ignore[union-attr]
    assert sm.offsets("events", 0) == (0, 45) and sm.cursor("events", "default", 0) == 7


SOLO = """
[cluster]
name = "solo"
[[stores]]
name = "one"
groups = 3
[[stores.replicas]]
node = "n0"
port = 7000
[[topics]]
name = "events"
queues = 6
[[topics.consumer_groups]]
name = "default"
"""


def test_seek_over_all_queues_spans_every_group() -> None:
    c = StoreCluster.make(loads_config(SOLO, file="solo.toml"))
    for g in range(3):
        c.wait_master(g)
    for q in range(6):
        assert isinstance(c.request("n0", enqueue(queue=q, seq=q + 1, n=3)), EnqueueOk)
        r = c.request("n0", CommitCursor(topic="events", group="default", queue=q, cursor=3))
        assert isinstance(r, CommitOk)
    r = c.request("n0", Seek(topic="events", group="default", queue=None, offset=1))
    assert r == SeekOk(topic="events", group="default", positions=tuple((q, 1) for q in range(6)))


def test_seek_over_all_queues_merges_what_moved_forward() -> None:
    c = StoreCluster.make(loads_config(SOLO, file="solo.toml"))
    for g in range(3):
        c.wait_master(g)
    for q in range(6):
        assert isinstance(c.request("n0", enqueue(queue=q, seq=q + 1, n=3)), EnqueueOk)
    r = c.request("n0", Seek(topic="events", group="default", queue=None, offset=2))
    assert r == SeekOk(
        topic="events",
        group="default",
        positions=tuple((q, 2) for q in range(6)),
        forward=tuple((q, 0) for q in range(6)),
    )
    # A rewind on the store's time never goes forward: back 0 ms leaves every cursor (and
    # sets it: listed, as the consumers go back to it).
    r = c.request("n0", Seek(topic="events", group="default", queue=None, back_ms=0))
    assert r == SeekOk(topic="events", group="default", positions=tuple((q, 2) for q in range(6)))


def test_a_relative_seek_is_measured_on_the_master_clock_and_gets_say_its_time() -> None:
    c = StoreCluster.make(loads_config(SOLO, file="solo.toml"))
    c.wait_master(0)
    c.wall_offset["n0"] = -3000  # the master's clock, 3 s behind true time, stamps the items
    for seq in range(1, 4):
        assert isinstance(c.request("n0", enqueue(queue=0, seq=seq, n=2)), EnqueueOk)
        c.run(400)
    got = c.request("n0", get(0))
    assert isinstance(got, GetOk) and got.now_ms == c.now("n0").wall_ms
    stamps = [i.enqueued_ms for i in got.items]
    assert stamps[0] < stamps[2] < stamps[4] and max(stamps) < WALL_ORIGIN + c.time - 3000
    r = c.request("n0", CommitCursor(topic="events", group="default", queue=0, cursor=6))
    assert isinstance(r, CommitOk)
    # Back 600 ms on the master's clock: the last batch only (an operator whose clock reads
    # true time would have asked for a time past every stamp).
    r = c.request("n0", Seek(topic="events", group="default", queue=0, back_ms=600))
    assert r == SeekOk(topic="events", group="default", positions=((0, 4),))
    assert answer_code(c, Seek(topic="events", group="default", queue=0, back_ms=-1)) == (
        "bad_request"
    )
    assert answer_code(c, Seek(topic="events", group="default", queue=0, offset=1, back_ms=1)) == (
        "bad_request"
    )


def answer_code(c: StoreCluster, request: object) -> str:
    r = c.request("n0", request)
    assert isinstance(r, StoreError) and r.definite, r
    return r.code


def test_seek_over_all_queues_reports_groups_mastered_elsewhere() -> None:
    c = StoreCluster.make()
    for g in range(4):
        c.wait_master(g)
    c.run(300)
    for q in range(8):
        assert isinstance(c.request_ok(enqueue(queue=q, seq=q + 1, n=2), group=q % 4), EnqueueOk)
    r = c.request("s0", Seek(topic="events", group="default", queue=None, offset=0))
    # s0 masters only some groups: nothing moved (all cursors are at 0) where it is master,
    # and the others redirected; the answer says the outcome is partial.
    assert isinstance(r, StoreError) and r.code == "partial" and not r.definite


@pytest.mark.parametrize("request_", [get(0), enqueue(queue=0, seq=1)])
def test_requests_before_a_master_exists_are_redirected(request_: object) -> None:
    c = StoreCluster.make()
    r = c.request("s1", request_)
    assert isinstance(r, StoreRedirect)


def short(available: int = 10, *, is_short: bool = True) -> StorageLow:
    return StorageLow(
        short=is_short,
        available_bytes=available,
        reserve_bytes=100,
        used_bytes=900,
        limit="test disk's capacity of 1000 bytes",
    )


def test_a_short_storage_refuses_enqueues_only_and_accepts_them_once_space_is_back() -> None:
    c = StoreCluster.make()
    m = c.wait_master(2)
    c.run(300)  # heartbeats tell the followers who the master is
    node = c.node(m)
    assert isinstance(c.request(m, enqueue(queue=2, seq=1, n=2)), EnqueueOk)
    c.step(m, short())
    assert node.storage_low is not None and (m, "storage.low") in c.trace
    applied = node.applied(2)

    refusal = c.responses[c.call(m, enqueue(queue=2, seq=2))]  # answered in the same step
    assert isinstance(refusal, StoreError)
    assert (refusal.code, refusal.definite) == ("storage_full", True)
    assert "10 bytes available before the test disk's capacity" in refusal.message
    assert "reserve of 100 bytes" in refusal.message and "900 bytes in use" in refusal.message
    assert node.enqueues_refused == 1
    c.run(50)
    assert node.applied(2) == applied  # nothing proposed, nothing appended
    # Everything else goes on: reads, cursor commits, seeks (what frees space).
    got = c.request(m, get(2))
    assert isinstance(got, GetOk) and got.end_offset == 2
    r = c.request(m, CommitCursor(topic="events", group="default", queue=2, cursor=2))
    assert isinstance(r, CommitOk)
    r = c.request(m, Seek(topic="events", group="default", queue=2, offset=1))
    assert isinstance(r, SeekOk)
    assert node.applied(2) > applied
    # A follower redirects as usual: the master's storage decides.
    follower = next(n for n in c.names if n != m)
    c.step(follower, short())
    assert c.request(follower, enqueue(queue=2, seq=2)) == StoreRedirect(master=m)
    assert c.node(follower).enqueues_refused == 0

    c.step(m, short(200, is_short=False))
    assert node.storage_low is None and (m, "storage.ok") in c.trace
    r = c.request(m, enqueue(queue=2, seq=2))
    assert r == EnqueueOk(topic="events", queue=2, first_offset=2, count=1)
    assert node.enqueues_refused == 1
