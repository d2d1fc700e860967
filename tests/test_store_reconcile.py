"""Live reconciliation (``pxq.store.reconcile``): replicas of a queue store's group applying the
same log compute the same figures at the same position, and every difference in stored
content, counts, offsets or cursors is an alarm naming the queue and bucket. Replicas are
``QueueStore`` instances over their own ``MemoryStore``, stepped as a driver does; the
"master" proposes each reconcile command from its own state."""

from __future__ import annotations

import dataclasses

from pxq import codec
from pxq.effects import ALARM, EffectsBuilder
from pxq.positional import CommandError
from pxq.store.commands import (
    Command,
    CommitCmd,
    EnqueueCmd,
    ReconcileCmd,
    decode_command,
    encode_command,
)
from pxq.store.reconcile import (
    BUCKET_MS,
    SLICE_ITEMS_MAX,
    BucketFigures,
    QueueFigures,
    SliceFigures,
    compare,
)
from pxq.store.records import Q_ITEM, pack_items, queue_prefix, row_items, u64
from pxq.store.sm import QueueStore
from sim.memstore import MemoryStore
from tests.test_store_sm import make_config

Alarm = dict[str, object]


class Replica:
    def __init__(self) -> None:
        self.mem = MemoryStore()
        self.qs = QueueStore(self.mem, 0, make_config(), "s")
        self.qs.load()
        self.alarms: list[Alarm] = []

    def apply(self, instance: int, cmd: Command) -> None:
        fx = EffectsBuilder()
        self.qs.apply(instance, 0, encode_command(cmd), fx)
        self.mem.apply(fx.writes)
        self.qs.end_step()
        self.alarms += [dict(ev.fields) for ev in fx.trace if ev.kind == ALARM]


class Group:
    """Three replicas applying one log; replica 0 proposes the reconcile commands."""

    def __init__(self) -> None:
        self.replicas = [Replica() for _ in range(3)]
        self.instance = 0
        self.seq = 0

    def apply(self, cmd: Command) -> None:
        self.instance += 1
        for r in self.replicas:
            r.apply(self.instance, cmd)

    def enqueue(self, queue: int, n: int, wall_ms: int = 1000) -> None:
        self.seq += 1
        items = pack_items([(b"k", f"item {self.seq}.{i}".encode(), "") for i in range(n)])
        self.apply(
            EnqueueCmd(
                producer="p", seq=self.seq, topic="t", queue=queue, wall_ms=wall_ms, items=items
            )
        )

    def reconcile_pass(self, wall_ms: int = 2000) -> int:
        """Run reconcile commands proposed by replica 0 until none is due; return how many."""
        n = 0
        while (cmd := self.replicas[0].qs.reconcile_command(wall_ms, "n0")) is not None:
            self.apply(cmd)
            n += 1
            if n > 100:
                raise AssertionError("a reconciliation pass does not end")
        return n

    def alarms(self, i: int) -> list[Alarm]:
        return self.replicas[i].alarms


def alter_first_row(mem: MemoryStore, queue: int) -> None:
    """Change one item's payload in the queue's first stored row (a well-formed record)."""
    key = queue_prefix(0, "t", queue) + u64(0)
    row = mem.get(Q_ITEM, key)
    assert row is not None
    items = row_items(row)
    items[0][1] = b"X" + items[0][1][1:]
    mem.tables[Q_ITEM].set(key, row[:24] + pack_items(items))


def test_replicas_applying_the_same_log_reconcile_without_alarms() -> None:
    g = Group()
    for q in range(4):
        g.enqueue(q, 3)
    g.apply(CommitCmd(topic="t", group="all", queue=0, cursor=2, token=0))
    assert g.reconcile_pass() == 2  # one slice for everything, then its comparison
    for i in range(3):
        assert g.alarms(i) == []
        recon = g.replicas[i].qs.recon
        assert (recon.passes, recon.slices_checked, recon.mismatches_total) == (1, 1, 0)
    # Nothing changed since: no pass is due until the idle interval.
    assert g.replicas[0].qs.reconcile_command(2000, "n0") is None


def test_an_altered_item_on_a_follower_is_a_content_mismatch_naming_its_bucket() -> None:
    g = Group()
    for q in range(4):
        g.enqueue(q, 3, wall_ms=5 * BUCKET_MS + 7)
    alter_first_row(g.replicas[2].mem, queue=1)
    g.reconcile_pass()
    assert g.alarms(0) == [] and g.alarms(1) == []
    (alarm,) = g.alarms(2)
    assert alarm["what"] == "reconcile_mismatch"
    assert (alarm["topic"], alarm["queue"], alarm["bucket"], alarm["differs"]) == (
        "t",
        1,
        5,
        "content",
    )
    assert alarm["proposer"] == "n0"
    assert alarm["mine"] != alarm["theirs"]
    (m,) = g.replicas[2].qs.recon.mismatches
    assert (m.topic, m.queue, m.bucket, m.what) == ("t", 1, 5, "content")


def test_an_altered_item_on_the_master_alarms_every_follower() -> None:
    g = Group()
    g.enqueue(0, 2)
    alter_first_row(g.replicas[0].mem, queue=0)
    g.reconcile_pass()
    assert g.alarms(0) == []
    assert [a["differs"] for a in g.alarms(1)] == ["content"]
    assert [a["differs"] for a in g.alarms(2)] == ["content"]


def test_a_stored_row_missing_under_the_acknowledged_range_is_a_gap_alarm() -> None:
    g = Group()
    g.enqueue(0, 2)
    g.enqueue(0, 3)
    # The first row (offsets 0..1) vanishes from replica 1's storage: acknowledged, not stored.
    g.replicas[1].mem.tables[Q_ITEM].discard(queue_prefix(0, "t", 0) + u64(0))
    g.reconcile_pass()
    kinds = [(a["what"], a.get("differs")) for a in g.alarms(1)]
    assert ("reconcile_gap", None) in kinds
    gap = next(a for a in g.alarms(1) if a["what"] == "reconcile_gap")
    assert gap["problem"] == "offsets 0..1 have no stored row"
    assert ("reconcile_mismatch", "stored_vs_acknowledged") in kinds
    assert g.alarms(0) == [] and g.alarms(2) == []


def test_a_cursor_that_differs_is_a_consumed_mismatch_of_the_bucket() -> None:
    g = Group()
    g.enqueue(0, 4)
    g.apply(CommitCmd(topic="t", group="all", queue=0, cursor=1, token=0))
    # Replica 2 alone applies a commit (as if its state machine had diverged).
    g.replicas[2].apply(99, CommitCmd(topic="t", group="all", queue=0, cursor=3, token=0))
    g.reconcile_pass()
    differs = sorted(str(a["differs"]) for a in g.alarms(2))
    assert differs == ["consumed", "cursors"]
    consumed = next(a for a in g.alarms(2) if a["differs"] == "consumed")
    assert "consumed all:3" in str(consumed["mine"]) and "consumed all:1" in str(consumed["theirs"])


def test_a_replica_that_restarted_between_two_commands_skips_one_comparison() -> None:
    g = Group()
    g.enqueue(0, 2)
    g.apply(g.replicas[0].qs.reconcile_command(2000, "n0") or _fail())
    g.replicas[1].qs.load()  # a restart: the figures kept in RAM are gone
    g.apply(g.replicas[0].qs.reconcile_command(2000, "n0") or _fail())
    assert g.replicas[1].qs.recon.skipped == 1
    assert g.replicas[1].qs.recon.slices_checked == 0
    assert g.alarms(1) == []


def test_a_pass_reads_large_queues_in_bounded_slices_and_ends_while_they_grow() -> None:
    g = Group()
    for _ in range(3 * SLICE_ITEMS_MAX // 100):
        g.enqueue(0, 100)
    g.enqueue(1, 5)
    cmds = 0
    while (cmd := g.replicas[0].qs.reconcile_command(2000, "n0")) is not None:
        g.apply(cmd)
        g.enqueue(1, 5)  # the last queue keeps growing: the pass must still end
        cmds += 1
        if g.replicas[0].qs.recon.passes:
            break
        assert cmds < 20
    recon = g.replicas[0].qs.recon
    assert recon.passes == 1
    assert cmds == 4  # three slices (the budget cuts queue 0 twice), then the last comparison
    assert recon.slices_checked == 3
    assert all(r.alarms == [] for r in g.replicas)


def test_compare_reports_each_kind_of_difference() -> None:
    b = BucketFigures(bucket=1, start=0, end=4, items=4, digest=7, consumed=(4,))
    q = QueueFigures(
        topic="t",
        queue=0,
        first=0,
        end=4,
        start=0,
        stop=4,
        groups=("g",),
        cursors=(4,),
        buckets=(b,),
        gap="",
    )
    mine = SliceFigures(instance=5, slot=0, queues=(q,))
    assert compare(mine, mine, "n0") == []
    other = SliceFigures(
        instance=5,
        slot=0,
        queues=(
            QueueFigures(
                topic="t",
                queue=0,
                first=0,
                end=5,
                start=0,
                stop=5,
                groups=("g",),
                cursors=(4,),
                buckets=(
                    BucketFigures(bucket=1, start=0, end=5, items=5, digest=7, consumed=(4,)),
                ),
                gap="",
            ),
            dataclasses.replace(q, queue=1),
        ),
    )
    found = {(m.queue, m.bucket, m.what) for m in compare(mine, other, "n0")}
    assert found == {(0, -1, "offsets"), (0, 1, "items"), (1, -1, "queue")}


def test_reconcile_commands_round_trip_and_malformed_figures_are_a_bad_request() -> None:
    cmd = ReconcileCmd(wall_ms=5, proposer="n0", check=b"", topic="t", queue=2, offset=9)
    assert decode_command(encode_command(cmd)) == cmd
    end = ReconcileCmd(wall_ms=5, proposer="n0", check=b"x", topic=None)
    assert decode_command(encode_command(end)) == end
    r = Replica()
    fx = EffectsBuilder()
    result = r.qs.apply(1, 0, encode_command(end), fx)
    assert codec.decode(result).code == "bad_request"  # type: ignore[attr-defined]
    try:
        decode_command(encode_command(cmd)[:-1])
    except CommandError:
        pass
    else:
        raise AssertionError("a truncated command decoded")


def _fail() -> ReconcileCmd:
    raise AssertionError("no reconcile command was due")
