"""The queue state machine (``pxq.store.sm.QueueStore``) applied directly, with a
``MemoryStore`` as its disk: commands go through ``apply`` as Paxos would deliver them, and
the test applies each step's writes to the store afterwards, as a driver does."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxq import codec
from pxq.config import ClusterConfig, loads_config
from pxq.effects import EffectsBuilder, InvariantViolation
from pxq.positional import CommandError
from pxq.store.commands import (
    Command,
    CommitCmd,
    EnqueueCmd,
    RetryCmd,
    SeekCmd,
    TickCmd,
    decode_command,
    encode_command,
)
from pxq.store.messages import (
    CommitOk,
    EnqueueOk,
    Get,
    GetOk,
    RetryOk,
    SeekOk,
    StoreError,
)
from pxq.store.records import (
    Q_DEDUPE,
    Q_ITEM,
    Q_PRODUCER,
    decode_cursor,
    encode_cursor,
    pack_items,
)
from pxq.store.sm import SNAPSHOT_MAGIC, QueueStore
from sim.memstore import MemoryStore

CONFIG = """
[cluster]
name = "t"
[limits]
dedupe_window = 4
producers_max = 3
get_items_max = 50
get_bytes_max = 4096
get_scan_items_max = 200
[[stores]]
name = "s"
groups = 1
[[stores.replicas]]
node = "n0"
port = 1
[[topics]]
name = "t"
queues = 4
[[topics.consumer_groups]]
name = "all"
retries = [{ delay_ms = 100 }, { delay_ms = 1000 }]
[[topics.consumer_groups]]
name = "odd"
kinds = ["x"]
queues = [1, 3]
dead_letter = false
[[topics]]
name = "kept"
queues = 2
[topics.retention]
hold_items = 5
hold_ms = 1000
[[topics.consumer_groups]]
name = "g"
[[topics]]
name = "nosub"
queues = 1
"""


def make_config() -> ClusterConfig:
    return loads_config(CONFIG, file="test.toml")


class Disk:
    """One QueueStore over one MemoryStore, stepped like a driver would."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or make_config()
        self.mem = MemoryStore()
        self.qs = QueueStore(self.mem, 0, self.config, "s")
        self.qs.load()
        self.instance = 0

    def step(self, *cmds: Command, own_instances: bool = False) -> list[object]:
        """Apply ``cmds`` in one step: as the values of one instance, or (``own_instances``)
        each as the single value of the next instance, as a catching-up replica does."""
        fx = EffectsBuilder()
        out = []
        if not own_instances:
            self.instance += 1
        for i, cmd in enumerate(cmds):
            if own_instances:
                self.instance += 1
            slot = 0 if own_instances else i
            result = self.qs.apply(self.instance, slot, encode_command(cmd), fx)
            out.append(codec.decode(result) if result else None)
        self.mem.apply(fx.writes)
        self.qs.end_step()
        return out

    def one(self, cmd: Command) -> object:
        return self.step(cmd)[0]

    def get(
        self,
        topic: str = "t",
        group: str = "all",
        queue: int = 0,
        cursor: int = 0,
        items_max: int = 100,
        bytes_max: int = 1 << 20,
    ) -> GetOk:
        r = self.qs.get(
            Get(
                topic=topic,
                group=group,
                queue=queue,
                cursor=cursor,
                items_max=items_max,
                bytes_max=bytes_max,
            ),
            now_ms=0,
        )
        assert isinstance(r, GetOk), r
        return r

    def rows(self, table: str) -> int:
        t = self.mem.tables.get(table)
        return 0 if t is None else len(t.keys)


def enq(
    seq: int,
    n: int = 1,
    *,
    producer: str = "p",
    topic: str = "t",
    queue: int = 0,
    wall_ms: int = 1000,
    kind: str = "",
    payload: bytes = b"x" * 10,
    after: int = 0,
) -> EnqueueCmd:
    items = pack_items([(f"k{seq}.{i}".encode(), payload, kind) for i in range(n)])
    return EnqueueCmd(
        producer=producer,
        seq=seq,
        topic=topic,
        queue=queue,
        wall_ms=wall_ms,
        items=items,
        after=after,
    )


def commit(
    cursor: int,
    *,
    group: str = "all",
    queue: int = 0,
    token: int = 0,
    topic: str = "t",
    epoch: int = 0,
) -> CommitCmd:
    return CommitCmd(topic=topic, group=group, queue=queue, cursor=cursor, token=token, epoch=epoch)


def seek(offset: int, *, group: str = "all", queue: int | None = 0, topic: str = "t") -> SeekCmd:
    return SeekCmd(topic=topic, group=group, queue=queue, offset=offset, time_ms=None)


def err(r: object) -> str:
    assert isinstance(r, StoreError), r
    assert r.definite
    return r.code


def ok(r: object) -> EnqueueOk:
    assert isinstance(r, EnqueueOk), r
    return r


# -- enqueue, dedupe -----------------------------------------------------------------------------


def test_enqueue_assigns_dense_offsets_per_queue() -> None:
    d = Disk()
    a = ok(d.one(enq(1, 3, queue=0)))
    b = ok(d.one(enq(2, 2, queue=1)))
    c = ok(d.one(enq(3, 4, queue=0)))
    assert (a.first_offset, a.count) == (0, 3)
    assert (b.first_offset, b.count) == (0, 2)
    assert (c.first_offset, c.count) == (3, 4)
    got = d.get(queue=0)
    assert [i.offset for i in got.items] == list(range(7))
    assert got.end_offset == 7 and got.next_cursor == 7


def test_items_keep_their_fields_and_the_proposer_stamp() -> None:
    d = Disk()
    d.one(enq(1, 2, wall_ms=1234, kind="x", payload=b"hello"))
    items = d.get().items
    assert [(i.key, i.payload, i.kind, i.enqueued_ms, i.attempt) for i in items] == [
        (b"k1.0", b"hello", "x", 1234, 0),
        (b"k1.1", b"hello", "x", 1234, 0),
    ]


def test_enqueue_stamps_never_decrease_within_a_queue() -> None:
    d = Disk()
    d.one(enq(1, wall_ms=5000))
    d.one(enq(2, wall_ms=3000))  # the next master's clock is behind
    assert [i.enqueued_ms for i in d.get().items] == [5000, 5000]


def test_duplicate_enqueue_returns_the_original_receipt_and_appends_nothing() -> None:
    d = Disk()
    first = ok(d.one(enq(7, 3, queue=2)))
    d.one(enq(8, 1, queue=2))
    again = ok(d.one(enq(7, 3, queue=2)))
    assert again.duplicate and not first.duplicate
    assert (again.topic, again.queue, again.first_offset, again.count) == ("t", 2, 0, 3)
    assert d.get(queue=2).end_offset == 4


def test_duplicate_within_the_same_step_is_detected() -> None:
    d = Disk()
    a, b = d.step(enq(1, 2), enq(1, 2))
    assert not ok(a).duplicate and ok(b).duplicate
    assert d.get().end_offset == 2


def test_sequence_older_than_the_window_is_a_definite_stale_sequence_error() -> None:
    d = Disk()  # dedupe_window = 4
    for seq in range(1, 11):
        ok(d.one(enq(seq)))
    assert err(d.one(enq(6))) == "stale_sequence"  # 6 <= 10 - 4
    assert ok(d.one(enq(7))).duplicate  # 7 is still in the window
    assert d.get().end_offset == 10


def test_unseen_sequence_inside_the_window_is_appended() -> None:
    d = Disk()
    ok(d.one(enq(10)))
    late = ok(d.one(enq(8)))  # sent before 10, arrived after it
    assert not late.duplicate and late.first_offset == 1
    assert ok(d.one(enq(8))).duplicate


def test_dedupe_receipts_stay_within_the_window() -> None:
    d = Disk()
    for seq in range(200):
        d.one(enq(seq))
    assert d.rows(Q_DEDUPE) == 4
    d.one(enq(10_000))  # a jump: one range delete
    assert d.rows(Q_DEDUPE) == 1


def test_least_recently_used_producer_is_forgotten_beyond_the_limit() -> None:
    d = Disk()  # producers_max = 3
    for name in ("a", "b", "c"):
        d.one(enq(1, producer=name))
    d.one(enq(2, producer="a"))  # a is now the most recent; b the least
    d.one(enq(1, producer="d"))
    assert d.rows(Q_PRODUCER) == 3
    assert ok(d.one(enq(1, producer="a"))).duplicate
    assert ok(d.one(enq(1, producer="c"))).duplicate
    assert not ok(d.one(enq(1, producer="b"))).duplicate  # forgotten: appended again


def test_a_batch_waits_for_its_after_batch() -> None:
    d = Disk()
    assert err(d.one(enq(2, after=1))) == "out_of_order"  # unknown producer: cannot tell
    ok(d.one(enq(1, 2)))
    assert err(d.one(enq(3, after=2))) == "out_of_order"  # 2 not appended yet
    assert d.get().end_offset == 2  # the refusals appended and remembered nothing
    b = ok(d.one(enq(2, after=1)))
    assert (b.first_offset, b.duplicate) == (2, False)
    assert ok(d.one(enq(3, after=2))).first_offset == 3
    # A duplicate is answered its receipt whatever its after says.
    assert ok(d.one(enq(3, after=2))).duplicate


def test_an_after_batch_below_the_window_can_never_come_so_it_does_not_block() -> None:
    d = Disk()  # dedupe_window = 4
    for seq in range(10, 16):
        ok(d.one(enq(seq)))
    # 5 was never seen and 5 + 4 <= 15: it would be stale now, so it can never be appended.
    assert not ok(d.one(enq(16, after=5))).duplicate
    # 13 is in the window with its receipt; 14 too. An unseen 12 (window: 13..16) blocks.
    ok(d.one(enq(17, after=13)))
    d2 = Disk()
    for seq in (10, 11, 14, 15):
        ok(d2.one(enq(seq)))
    assert err(d2.one(enq(16, after=12))) == "out_of_order"


def test_after_travels_in_the_command_only_when_set() -> None:
    plain, ordered = enq(5), enq(5, after=3)
    assert len(msgpack.unpackb(encode_command(plain))) == 7  # the old shape, unchanged
    assert len(msgpack.unpackb(encode_command(ordered))) == 8
    assert decode_command(encode_command(plain)) == plain
    assert decode_command(encode_command(ordered)) == ordered
    zero = msgpack.packb([*msgpack.unpackb(encode_command(plain)), 0])
    with pytest.raises(CommandError, match="after"):
        decode_command(zero)


def test_malformed_values_are_bad_requests_not_crashes() -> None:
    d = Disk()
    fx = EffectsBuilder()
    for value in (b"", b"\x93\x01\x02", b"\xc1", encode_command(TickCmd(wall_ms=1))[:1]):
        r = codec.decode(d.qs.apply(1, 0, value, fx))
        assert err(r) == "bad_request"
    bad_items = EnqueueCmd(producer="p", seq=1, topic="t", queue=0, wall_ms=1, items=b"\x01")
    assert err(d.one(bad_items)) == "bad_request"
    assert err(d.one(enq(1, topic="nope"))) == "unknown_topic"
    assert err(d.one(enq(1, queue=9))) == "bad_queue"


# -- commits ---------------------------------------------------------------------------------


def test_commit_fencing_rejects_a_lower_token() -> None:
    d = Disk()
    d.one(enq(1, 10))
    assert isinstance(d.one(commit(3, token=5)), CommitOk)
    assert err(d.one(commit(6, token=4))) == "stale_token"
    assert d.qs.cursor("t", "all", 0) == 3
    r = d.one(commit(6, token=6))
    assert isinstance(r, CommitOk) and r.cursor == 6


def test_commit_never_moves_a_cursor_backwards() -> None:
    d = Disk()
    d.one(enq(1, 10))
    d.one(commit(8))
    r = d.one(commit(2))
    assert isinstance(r, CommitOk) and r.cursor == 8
    assert d.get(cursor=0).committed == 8


def test_commit_beyond_the_end_is_rejected() -> None:
    d = Disk()
    d.one(enq(1, 3))
    assert err(d.one(commit(4))) == "bad_cursor"
    assert isinstance(d.one(commit(3)), CommitOk)


def test_commit_for_a_group_not_subscribed_is_rejected() -> None:
    d = Disk()
    assert err(d.one(commit(0, group="nobody"))) == "unknown_group"
    assert err(d.one(commit(0, group="odd", queue=0))) == "bad_queue"


# -- seek ------------------------------------------------------------------------------------


def test_seek_by_offset_moves_either_way_and_is_clamped() -> None:
    d = Disk()
    d.one(enq(1, 10))
    d.one(commit(8, token=3))
    r = d.one(SeekCmd(topic="t", group="all", queue=0, offset=2, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == ((0, 2),)
    assert d.qs.cursor("t", "all", 0) == 2
    r = d.one(SeekCmd(topic="t", group="all", queue=0, offset=99, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == ((0, 10),)
    # The token survives the seek: fencing still holds.
    assert err(d.one(commit(10, token=2))) == "stale_token"


def test_seek_by_time_lands_on_the_first_item_enqueued_at_or_after_it() -> None:
    d = Disk()
    for seq, t in enumerate((100, 200, 200, 300, 400), start=1):
        d.one(enq(seq, 2, wall_ms=t))

    def seek(time_ms: int) -> int:
        d.one(SeekCmd(topic="t", group="all", queue=0, offset=None, time_ms=time_ms))
        return d.qs.cursor("t", "all", 0)

    assert seek(0) == 0
    assert seek(150) == 2
    assert seek(200) == 2
    assert seek(201) == 6
    assert seek(400) == 8
    assert seek(401) == 10


def test_seek_below_the_retention_floor_lands_on_the_floor() -> None:
    d = Disk()
    for seq in range(1, 5):
        d.one(enq(seq, 2))
    d.one(commit(8))
    d.one(commit(8, group="odd", queue=1))  # unrelated queue
    d.one(TickCmd(wall_ms=10_000))
    assert d.qs.offsets("t", 0) == (8, 8)
    d.one(SeekCmd(topic="t", group="all", queue=0, offset=0, time_ms=None))
    assert d.qs.cursor("t", "all", 0) == 8


def test_seek_without_queue_moves_every_subscribed_queue_of_the_group() -> None:
    d = Disk()
    for q in range(4):
        d.one(enq(q + 1, 3, queue=q))
        d.one(commit(3, queue=q))
    r = d.one(SeekCmd(topic="t", group="all", queue=None, offset=1, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == tuple((q, 1) for q in range(4))
    r = d.one(SeekCmd(topic="t", group="odd", queue=None, offset=1, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == ((1, 1), (3, 1))
    assert err(d.one(SeekCmd(topic="t", group="all", queue=0, offset=1, time_ms=5))) == (
        "bad_request"
    )


def back(back_ms: int, wall_ms: int, *, group: str = "all", queue: int | None = 0) -> SeekCmd:
    """A rewind by ``back_ms`` proposed by a master whose wall clock reads ``wall_ms``."""
    return SeekCmd(
        topic="t",
        group=group,
        queue=queue,
        offset=None,
        time_ms=None,
        back_ms=back_ms,
        wall_ms=wall_ms,
    )


def test_a_relative_seek_rewinds_on_the_store_time() -> None:
    d = Disk()
    for seq, t in enumerate((11_000, 12_000, 13_000, 14_000), start=1):
        d.one(enq(seq, 2, wall_ms=t))  # offsets 0-1 at 11 s, 2-3 at 12 s, ...
    d.one(commit(8))
    # From the proposer's clock (14.5 s): back 1.5 s = stamps from 13 s on.
    r = d.one(back(1500, 14_500))
    assert isinstance(r, SeekOk) and r.positions == ((0, 4),) and r.forward == ()
    d.one(commit(8, epoch=1))
    # A proposer's clock behind the newest stamp (a master 10 s behind the one that stamped
    # them): measured from the newest stamp instead, the time an enqueue would get now.
    r = d.one(back(500, 4_000))
    assert isinstance(r, SeekOk) and r.positions == ((0, 6),)


def test_a_relative_seek_never_moves_a_cursor_forward() -> None:
    # The defect: "back 1 s" from a clock ahead of the stamps landed past every item and moved
    # the group past items it had not consumed.
    d = Disk()
    for seq, t in enumerate((1000, 2000, 3000), start=1):
        d.one(enq(seq, 2, wall_ms=t))
    d.one(commit(2))  # the group consumed offsets 0-1 only
    for wall_ms in (3000, 5000, 60_000):  # back 1 s lands at offset 4, 6, 6: all past 2
        r = d.one(back(1000, wall_ms))
        # Set where it was (listed: its epoch moved, the consumer goes back to it).
        assert isinstance(r, SeekOk) and r.positions == ((0, 2),) and r.forward == ()
        assert d.qs.cursor("t", "all", 0) == 2
    r = d.one(back(0, 3000))  # "back 0": nothing to replay, and nothing skipped
    assert isinstance(r, SeekOk) and r.positions == ((0, 2),)
    assert d.qs.cursor("t", "all", 0) == 2
    assert d.qs.epoch("t", "all", 0) == 4  # each seek set the cursor (consumers restart)
    r = d.one(back(10_000, 3000))  # far back: the start of the queue
    assert isinstance(r, SeekOk) and r.positions == ((0, 0),)


def test_an_absolute_seek_forward_says_so() -> None:
    d = Disk()
    d.one(enq(1, 10))
    d.one(commit(3))
    r = d.one(SeekCmd(topic="t", group="all", queue=0, offset=7, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == ((0, 7),) and r.forward == ((0, 3),)
    r = d.one(SeekCmd(topic="t", group="all", queue=0, offset=None, time_ms=10**12))
    assert isinstance(r, SeekOk) and r.positions == ((0, 10),) and r.forward == ((0, 7),)
    r = d.one(SeekCmd(topic="t", group="all", queue=0, offset=1, time_ms=None))
    assert isinstance(r, SeekOk) and r.positions == ((0, 1),) and r.forward == ()


def test_a_seek_needs_exactly_one_target() -> None:
    d = Disk()
    d.one(enq(1, 3))
    for offset, time_ms, back_ms in ((None, None, None), (1, None, 5), (None, 5, 5), (1, 5, 5)):
        cmd = SeekCmd(
            topic="t", group="all", queue=0, offset=offset, time_ms=time_ms, back_ms=back_ms
        )
        assert err(d.one(cmd)) == "bad_request"


def test_seek_commands_carry_back_ms_and_the_proposer_wall_clock() -> None:
    cmd = back(1500, 123_456, queue=None)
    fields = msgpack.unpackb(encode_command(cmd))
    assert len(fields) == 8 and fields[6:] == [1500, 123_456]
    assert decode_command(encode_command(cmd)) == cmd
    with pytest.raises(CommandError):  # the six-field shape from before relative seeks
        decode_command(msgpack.packb(fields[:6]))
    with pytest.raises(CommandError):
        decode_command(msgpack.packb([*fields[:6], -1, 0]))


def test_get_reports_the_store_time_it_was_served_at() -> None:
    d = Disk()
    d.one(enq(1, 1))
    r = d.qs.get(
        Get(topic="t", group="all", queue=0, cursor=0, items_max=1, bytes_max=100), now_ms=777
    )
    assert isinstance(r, GetOk) and r.now_ms == 777
    r = d.qs.get(
        Get(topic="t", group="all", queue=2, cursor=0, items_max=1, bytes_max=100), now_ms=778
    )
    assert isinstance(r, GetOk) and r.now_ms == 778  # a queue that never held anything too


# -- seek epochs ------------------------------------------------------------------------------


def test_every_seek_increments_the_cursor_epoch_even_if_the_position_stays() -> None:
    d = Disk()
    d.one(enq(1, 10))
    assert d.get().epoch == 0 and d.qs.epoch("t", "all", 0) == 0
    d.one(commit(5))
    assert d.get().epoch == 0  # commits keep the epoch
    d.one(seek(2))
    assert (d.get().committed, d.get().epoch) == (2, 1)
    r = d.one(seek(2))
    assert isinstance(r, SeekOk) and r.positions == ((0, 2),)  # did not move, yet set
    assert (d.get().committed, d.get().epoch) == (2, 2)
    d.one(SeekCmd(topic="t", group="all", queue=0, offset=None, time_ms=0))
    assert d.get().epoch == 3
    # Only the sought group's cursor: another group on the queue keeps its epoch.
    d.one(enq(2, 1, queue=1, kind="x"))
    d.one(seek(0, queue=1))
    assert d.get(group="odd", queue=1).epoch == 0
    assert d.get(group="all", queue=1).epoch == 1
    # A seek over every queue counts on each queue that has state (queue 2 never held
    # anything: there is no cursor to set and nothing a stale commit could skip).
    d.one(seek(0, queue=None))
    assert [d.qs.epoch("t", "all", q) for q in range(4)] == [4, 2, 0, 0]


def test_a_commit_with_the_epoch_before_a_seek_is_stale_and_changes_nothing() -> None:
    d = Disk()
    d.one(enq(1, 10))
    d.one(commit(4, token=2))
    d.one(seek(1))
    # The consumer's commit was based on a Get before the seek: it would undo the rewind.
    assert err(d.one(commit(8, token=3))) == "stale_epoch"
    assert (d.get().committed, d.get().epoch) == (1, 1)
    assert err(d.one(commit(0, token=1))) == "stale_token"  # the token is checked first
    # The refused commit did not record its token 3: token 2 still commits.
    r = d.one(commit(3, token=2, epoch=1))
    assert isinstance(r, CommitOk) and r.cursor == 3
    assert err(d.one(commit(9, token=2, epoch=2))) == "bad_request"  # no Get showed epoch 2
    assert d.qs.cursor("t", "all", 0) == 3


def test_a_retry_with_the_epoch_before_a_seek_is_stale_and_moves_nothing() -> None:
    d = Disk()
    d.one(enq(1, 10))
    d.one(commit(4))
    d.one(seek(2))
    assert err(d.one(retry("t", 6, 100))) == "stale_epoch"
    # Even for an offset the cursor passed: stale_offset would tell the consumer its earlier
    # attempt was applied, which the seek makes meaningless.
    d.one(seek(8))
    assert err(d.one(retry("t", 3, 100, epoch=1))) == "stale_epoch"
    assert d.qs.cursor("t", "all", 0) == 8
    assert d.qs.offsets("t.retry.all.1", 0) == (0, 0)
    assert err(d.one(retry("t", 8, 100, epoch=3))) == "bad_request"
    r = d.one(retry("t", 8, 100, epoch=2))
    assert isinstance(r, RetryOk) and r.cursor == 9
    assert d.get().epoch == 2  # a retry keeps the epoch
    assert err(d.one(retry("t", 8, 100, epoch=2))) == "stale_offset"


def test_epoch_fields_are_in_the_command_encoding_and_the_old_shapes_are_refused() -> None:
    cmd = commit(3, token=2, epoch=7)
    assert decode_command(encode_command(cmd)) == cmd
    r = retry("t", 1, 5, token=2, epoch=9)
    assert decode_command(encode_command(r)) == r
    old_commit = msgpack.packb([2, "t", "all", 0, 3, 2], use_bin_type=True)
    old_retry = msgpack.packb([4, "t", "all", 0, 1, 2, 5], use_bin_type=True)
    negative = msgpack.packb([2, "t", "all", 0, 3, 2, -1], use_bin_type=True)
    for value in (old_commit, old_retry, negative):
        with pytest.raises(CommandError):
            decode_command(value)
        assert err(codec.decode(Disk().qs.apply(1, 0, value, EffectsBuilder()))) == "bad_request"


def test_cursor_records_carry_the_epoch_and_decode_strictly() -> None:
    assert decode_cursor(encode_cursor(5, 6, 7)) == (5, 6, 7)
    with pytest.raises(struct.error):
        decode_cursor(struct.pack(">QQ", 5, 6))  # the record before seek epochs


# -- retry -----------------------------------------------------------------------------------


def retry(
    topic: str, offset: int, wall_ms: int, *, queue: int = 0, token: int = 0, epoch: int = 0
) -> RetryCmd:
    return RetryCmd(
        topic=topic,
        group="all",
        queue=queue,
        offset=offset,
        token=token,
        wall_ms=wall_ms,
        epoch=epoch,
    )


def test_retry_moves_through_the_levels_then_to_the_dead_letter_topic() -> None:
    d = Disk()
    d.one(enq(1, 3, kind="k", payload=b"body"))
    r1 = d.one(retry("t", 1, 5000))
    assert isinstance(r1, RetryOk)
    assert (r1.moved_to, r1.moved_offset, r1.cursor) == ("t.retry.all.1", 0, 2)
    assert d.qs.cursor("t", "all", 0) == 2

    lvl1 = d.get(topic="t.retry.all.1").items
    assert [(i.key, i.payload, i.kind, i.attempt, i.not_before_ms) for i in lvl1] == [
        (b"k1.1", b"body", "k", 1, 5100)
    ]
    r2 = d.one(retry("t.retry.all.1", 0, 6000))
    assert isinstance(r2, RetryOk) and r2.moved_to == "t.retry.all.2"
    lvl2 = d.get(topic="t.retry.all.2").items
    assert [(i.attempt, i.not_before_ms, i.enqueued_ms) for i in lvl2] == [(2, 7000, 6000)]
    r3 = d.one(retry("t.retry.all.2", 0, 8000))
    assert isinstance(r3, RetryOk) and r3.moved_to == "t.dlq.all"
    dead = d.get(topic="t.dlq.all").items
    assert [(i.key, i.attempt) for i in dead] == [(b"k1.1", 3)]
    assert err(d.one(retry("t.dlq.all", 0, 9000))) == "bad_request"


def test_retry_without_dead_letters_keeps_the_item_after_the_last_level() -> None:
    d = Disk()
    d.one(enq(1, 1, queue=1, kind="x"))
    r = d.one(
        RetryCmd(topic="t", group="odd", queue=1, offset=0, token=0, wall_ms=1)
    )  # odd has no retry levels and no dead letters
    assert err(r) == "no_dead_letter"
    assert d.qs.cursor("t", "odd", 1) == 0  # the item stays, to be redelivered in place
    assert d.qs.offsets("t.dlq.odd", 1) == (0, 0)


def test_retry_is_applied_once_and_fenced() -> None:
    d = Disk()
    d.one(enq(1, 3))
    d.one(commit(0, token=4))
    assert err(d.one(retry("t", 0, 1, token=3))) == "stale_token"
    assert isinstance(d.one(retry("t", 0, 1, token=4)), RetryOk)
    assert err(d.one(retry("t", 0, 1, token=4))) == "stale_offset"  # a client's re-send
    assert d.qs.offsets("t.retry.all.1", 0) == (0, 1)
    assert err(d.one(retry("t", 5, 1, token=4))) == "bad_cursor"


def test_enqueue_and_retry_of_the_same_item_in_one_step() -> None:
    # A follower catching up applies both in one step: the retry reads a row written in the
    # same step, which the storage view does not show yet.
    d = Disk()
    a, b = d.step(enq(1, 2), retry("t", 1, 50))
    assert ok(a).count == 2
    assert isinstance(b, RetryOk) and b.moved_to == "t.retry.all.1"
    assert [i.key for i in d.get(topic="t.retry.all.1").items] == [b"k1.1"]


# -- retention -------------------------------------------------------------------------------


def test_retention_never_removes_what_a_subscribed_group_has_not_consumed() -> None:
    d = Disk()
    for seq in range(1, 6):
        d.one(enq(seq, 2, queue=1, kind="x"))
    d.one(commit(10, queue=1))  # "all" consumed everything; "odd" nothing
    d.one(TickCmd(wall_ms=10**9))
    assert d.qs.offsets("t", 1) == (0, 10)
    d.one(commit(5, group="odd", queue=1))
    d.one(TickCmd(wall_ms=10**9))
    first, end = d.qs.offsets("t", 1)
    assert first <= 5 and end == 10
    assert [i.offset for i in d.get(group="odd", queue=1, cursor=5).items] == [5, 6, 7, 8, 9]
    d.one(commit(10, group="odd", queue=1))
    d.one(TickCmd(wall_ms=10**9))
    assert d.qs.offsets("t", 1) == (10, 10)
    assert d.rows(Q_ITEM) == 0


def test_retention_keeps_storage_bounded_when_every_group_keeps_up() -> None:
    d = Disk()
    high = 0
    for seq in range(1, 301):
        d.one(enq(seq, 5, queue=1, kind="x" if seq % 2 else "y"))
        for group in ("all", "odd"):
            got = d.get(group=group, queue=1, cursor=d.qs.cursor("t", group, 1))
            d.one(commit(got.next_cursor, group=group, queue=1))
        if seq % 10 == 0:
            d.one(TickCmd(wall_ms=10**9))
            high = max(high, d.rows(Q_ITEM))
    assert d.qs.offsets("t", 1)[1] == 1500
    assert high <= 2
    assert d.mem.size_bytes() < 2000


def test_retention_holds_the_newest_items_and_the_youngest() -> None:
    d = Disk()  # topic "kept": hold_items = 5, hold_ms = 1000
    for seq in range(1, 11):
        d.one(enq(seq, 1, topic="kept", wall_ms=seq * 1000))
    d.one(commit(10, group="g", topic="kept"))
    d.one(TickCmd(wall_ms=8000))  # items stamped >= 7000 are too young: offsets >= 6
    assert d.qs.offsets("kept", 0) == (5, 10)  # and hold_items keeps 5..9
    d.one(TickCmd(wall_ms=9500))
    assert d.qs.offsets("kept", 0) == (5, 10)
    d.one(enq(11, 3, topic="kept", wall_ms=20_000))
    d.one(commit(13, group="g", topic="kept"))
    d.one(TickCmd(wall_ms=20_000))  # hold_ms allows offsets < 10, hold_items < 8
    assert d.qs.offsets("kept", 0) == (8, 13)
    assert [i.offset for i in d.get(topic="kept", group="g").items] == list(range(8, 13))


def test_retention_due_says_whether_a_tick_would_remove_anything() -> None:
    d = Disk()
    d.one(enq(1, 1, topic="kept", wall_ms=1000))
    d.one(enq(2, 6, topic="kept", wall_ms=1000))
    assert not d.qs.retention_due(10**6)  # nothing consumed
    d.one(commit(7, group="g", topic="kept"))
    assert not d.qs.retention_due(1500)  # too young
    assert d.qs.retention_due(10**6)
    d.one(TickCmd(wall_ms=10**6))
    assert d.qs.offsets("kept", 0) == (1, 7)  # hold_items keeps offsets 2..6, rows are whole
    assert not d.qs.retention_due(10**6)


def test_a_queue_without_subscribers_is_emptied_by_retention() -> None:
    d = Disk()
    d.one(enq(1, 4, topic="nosub"))
    d.one(TickCmd(wall_ms=1))
    assert d.qs.offsets("nosub", 0) == (4, 4)


def test_retention_removes_whole_rows_only() -> None:
    d = Disk()
    d.one(enq(1, 4))
    d.one(enq(2, 4))
    d.one(commit(6))
    d.one(TickCmd(wall_ms=1))
    assert d.qs.offsets("t", 0) == (4, 8)
    assert [i.offset for i in d.get(cursor=6).items] == [6, 7]


def test_retention_invariant_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    d = Disk()
    d.one(enq(1, 4))
    d.one(enq(2, 4))
    d.one(commit(2))
    # Sabotage the row lookup so that the floor lands past the slowest cursor.
    monkeypatch.setattr(QueueStore, "_row_at", lambda self, q, offset: (8, b""))
    monkeypatch.setattr(QueueStore, "_first_at_or_after", lambda self, q, t, hi=None: 8)
    with pytest.raises(InvariantViolation):
        d.one(TickCmd(wall_ms=1))


# -- get -------------------------------------------------------------------------------------


def test_get_filters_by_kind_and_moves_next_cursor_past_skipped_items() -> None:
    d = Disk()
    d.one(enq(1, 2, queue=1, kind="y"))
    d.one(enq(2, 2, queue=1, kind="x"))
    d.one(enq(3, 2, queue=1, kind="y"))
    got = d.get(group="odd", queue=1)
    assert [i.offset for i in got.items] == [2, 3]
    assert got.next_cursor == 6
    assert [i.offset for i in d.get(group="all", queue=1).items] == list(range(6))
    got = d.get(group="odd", queue=1, items_max=1)
    assert [i.offset for i in got.items] == [2] and got.next_cursor == 3


def test_get_respects_item_and_byte_limits() -> None:
    d = Disk()
    d.one(enq(1, 10, payload=b"p" * 96))  # 100 bytes with the 4-byte key
    got = d.get(items_max=3)
    assert [i.offset for i in got.items] == [0, 1, 2] and got.next_cursor == 3
    got = d.get(cursor=3, bytes_max=250)
    assert [i.offset for i in got.items] == [3, 4] and got.next_cursor == 5
    got = d.get(cursor=5, bytes_max=1)  # the first item always goes
    assert [i.offset for i in got.items] == [5] and got.next_cursor == 6


def test_get_clamps_requests_to_the_configured_limits() -> None:
    d = Disk()  # get_items_max = 50, get_bytes_max = 4096, get_scan_items_max = 200
    for seq in range(1, 4):
        d.one(enq(seq, 100, queue=1, kind="y"))
    assert len(d.get(queue=1, items_max=1000).items) == 50
    d.one(enq(9, 30, queue=0, payload=b"p" * 200))
    got = d.get(queue=0, items_max=1000, bytes_max=1 << 30)
    size = sum(len(i.key) + len(i.payload) for i in got.items)
    assert size <= 4096 < size + 205
    got = d.get(group="odd", queue=1, items_max=1000)
    assert got.items == () and got.next_cursor == 200  # scanned 200 and gave up


def test_get_from_a_cursor_below_the_floor_or_beyond_the_end() -> None:
    d = Disk()
    d.one(enq(1, 4))
    d.one(enq(2, 4))
    d.one(commit(5))
    d.one(TickCmd(wall_ms=1))
    assert d.get(cursor=0).items[0].offset == 4
    got = d.get(cursor=50)
    assert got.items == () and got.next_cursor == 8
    empty = d.get(queue=3)
    assert (empty.items, empty.next_cursor, empty.end_offset) == ((), 0, 0)


def test_get_checks_topic_group_and_queue() -> None:
    d = Disk()

    def code(**kw: object) -> str:
        args: dict[str, object] = {
            "topic": "t",
            "group": "all",
            "queue": 0,
            "cursor": 0,
            "items_max": 1,
            "bytes_max": 1,
        }
        args.update(kw)
        r = d.qs.get(Get(**args), now_ms=0)  # type: ignore[arg-type]
        return err(r)

    assert code(topic="x") == "unknown_topic"
    assert code(group="x") == "unknown_group"
    assert code(queue=4) == "bad_queue"
    assert code(group="odd", queue=0) == "bad_queue"


# -- persistence -----------------------------------------------------------------------------


def populate(d: Disk) -> None:
    for seq in range(1, 8):
        d.one(enq(seq, 3, queue=seq % 4, kind="x" if seq % 2 else "y", wall_ms=seq * 10))
    d.one(commit(2, queue=1, token=3))
    d.one(seek(1, queue=1))
    d.one(seek(0, queue=1))
    d.one(retry("t", 1, 500, queue=1, token=3, epoch=2))
    d.one(enq(1, producer="q"))
    d.one(TickCmd(wall_ms=10**6))
    assert (d.qs.cursor("t", "all", 1), d.qs.epoch("t", "all", 1)) == (2, 2)


def all_gets(d: Disk) -> list[object]:
    out: list[object] = []
    for topic, queue in d.qs.queue_names():
        info = d.config.topic(topic)
        assert info is not None
        for g in info.subscribers_of(queue):
            out.append(d.get(topic=topic, group=g.name, queue=queue, cursor=0))
    return out


def test_snapshot_and_install_give_identical_gets() -> None:
    src = Disk()
    populate(src)
    dst = Disk()
    dst.one(enq(1, 5, queue=2))  # state the install must replace
    dst.one(enq(9, producer="zzz"))
    fx = EffectsBuilder()
    dst.qs.install(src.qs.snapshot(), fx)
    dst.mem.apply(fx.writes)
    dst.qs.end_step()
    assert all_gets(dst) == all_gets(src)  # GetOk.epoch included
    assert dst.mem.tables.keys() == src.mem.tables.keys()
    for name, table in src.mem.tables.items():
        assert dst.mem.tables[name].values == table.values, name
    # The dedupe state came along too.
    assert ok(dst.one(enq(7, 3, queue=3, kind="x", wall_ms=70))).duplicate
    assert ok(src.one(enq(7, 3, queue=3, kind="x", wall_ms=70))).duplicate
    # So did the seek epochs: a commit based on a Get before the last seek is still stale.
    assert dst.qs.epoch("t", "all", 1) == 2
    assert err(dst.one(commit(3, queue=1, token=3, epoch=1))) == "stale_epoch"
    assert isinstance(dst.one(commit(3, queue=1, token=3, epoch=2)), CommitOk)


def test_commands_applied_in_the_step_of_an_install_see_the_installed_state() -> None:
    src = Disk()
    populate(src)
    dst = Disk()
    fx = EffectsBuilder()
    dst.qs.install(src.qs.snapshot(), fx)
    value = encode_command(retry("t", 3, 900, queue=1, token=3, epoch=2))
    r = codec.decode(dst.qs.apply(50, 0, value, fx))
    assert isinstance(r, RetryOk), r
    dst.mem.apply(fx.writes)
    dst.qs.end_step()
    assert [i.key for i in dst.get(topic="t.retry.all.1", queue=1).items] == [b"k1.1", b"k5.0"]


def test_a_corrupt_snapshot_is_refused() -> None:
    d = Disk()
    populate(d)
    snap = d.qs.snapshot()
    with pytest.raises(InvariantViolation):
        Disk().qs.install(snap[:-3], EffectsBuilder())
    with pytest.raises(InvariantViolation):
        Disk().qs.install(b"nope" + snap, EffectsBuilder())
    # A version 1 snapshot (cursor records without the epoch) is refused before any write.
    with pytest.raises(InvariantViolation):
        Disk().qs.install(b"PXQS\x01" + snap[len(SNAPSHOT_MAGIC) :], EffectsBuilder())


def test_load_rebuilds_the_state_from_storage() -> None:
    d = Disk()
    populate(d)
    before = all_gets(d)
    fresh = QueueStore(d.mem, 0, d.config, "s")
    fresh.load()
    d.qs = fresh
    assert all_gets(d) == before
    assert fresh.epoch("t", "all", 1) == 2
    assert err(d.one(commit(3, queue=1, token=3, epoch=1))) == "stale_epoch"
    assert ok(d.one(enq(1, producer="q"))).duplicate


# -- determinism -----------------------------------------------------------------------------

_topics = st.sampled_from(["t", "t.retry.all.1", "t.retry.all.2", "kept", "nosub"])
_epochs = st.integers(0, 3)
"""Seek epochs of commits and retries: current, stale or ahead (the seeks raise them)."""
_commands = st.one_of(
    st.builds(
        lambda seq, n, q, t, p, k: enq(seq, n, queue=q, wall_ms=t, producer=p, kind=k),
        st.integers(0, 30),
        st.integers(1, 4),
        st.integers(0, 1),
        st.integers(0, 5000),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["", "x"]),
    ),
    st.builds(
        lambda c, g, q, tok, top, ep: commit(c, group=g, queue=q, token=tok, topic=top, epoch=ep),
        st.integers(0, 12),
        st.sampled_from(["all", "odd", "g"]),
        st.integers(0, 1),
        st.integers(0, 3),
        _topics,
        _epochs,
    ),
    st.builds(
        lambda top, g, q, off, t: SeekCmd(
            topic=top, group=g, queue=q, offset=off, time_ms=None if off is not None else t
        ),
        _topics,
        st.sampled_from(["all", "odd"]),
        st.one_of(st.none(), st.integers(0, 1)),
        st.one_of(st.none(), st.integers(0, 12)),
        st.integers(0, 5000),
    ),
    st.builds(
        lambda top, off, q, t, tok, ep: RetryCmd(
            topic=top, group="all", queue=q, offset=off, token=tok, wall_ms=t, epoch=ep
        ),
        _topics,
        st.integers(0, 12),
        st.integers(0, 1),
        st.integers(0, 5000),
        st.integers(0, 3),
        _epochs,
    ),
    st.builds(TickCmd, wall_ms=st.integers(0, 10_000)),
)


def run_grouped(cmds: Sequence[Command], cuts: Sequence[int]) -> tuple[Disk, list[object]]:
    d = Disk()
    results: list[object] = []
    pos = 0
    for size in [*cuts, len(cmds)]:
        if pos >= len(cmds):
            break
        chunk = cmds[pos : pos + max(size, 1)]
        pos += len(chunk)
        results.extend(d.step(*chunk, own_instances=True))
    return d, results


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cmds=st.lists(_commands, max_size=40),
    cuts=st.lists(st.integers(1, 6), max_size=40),
)
def test_same_commands_give_identical_state_and_results_whatever_the_steps(
    cmds: list[Command], cuts: list[int]
) -> None:
    # Each command is the value of its own instance; one replica applies each instance in its
    # own step, another several instances per step (catching up: the overlay is exercised).
    # Results and every stored byte must be identical.
    one, r1 = run_grouped(cmds, [1] * len(cmds))
    two, r2 = run_grouped(cmds, cuts)
    assert r1 == r2
    assert {n: t.values for n, t in one.mem.tables.items() if t.values} == {
        n: t.values for n, t in two.mem.tables.items() if t.values
    }
    assert all_gets(one) == all_gets(two)
    # A restarted replica rebuilds the same memory.
    fresh = QueueStore(two.mem, 0, two.config, "s")
    fresh.load()
    assert fresh.queues == two.qs.queues
    assert list(fresh.producers) == list(two.qs.producers)


_retention_ops = st.lists(
    st.one_of(
        st.tuples(st.just("enq"), st.integers(1, 5), st.integers(0, 400)),
        st.tuples(st.just("commit"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("tick"), st.integers(0, 400), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_retention_ops)
def test_retention_keeps_everything_the_rule_protects(ops: list[tuple[str, int, int]]) -> None:
    # Topic "kept": hold_items = 5, hold_ms = 1000, read by group "g". Whatever the order of
    # enqueues (of rows of several items), commits and ticks, a tick never removes an item
    # that is unconsumed, among the newest 5, or stamped within 1000 ms of the tick.
    d = Disk()
    seq, clock, latest = 0, 0, 0
    stamps: list[int] = []
    for op, a, b in ops:
        if op == "enq":
            seq += 1
            clock += b
            d.one(enq(seq, a, topic="kept", wall_ms=clock))
            stamps.extend([clock] * a)
        elif op == "commit":
            d.one(commit(min(a, len(stamps)), group="g", topic="kept"))
        else:
            now = clock + a
            latest = max(latest, now)  # removals of an earlier, later-stamped tick stay done
            d.one(TickCmd(wall_ms=now))
            first, end = d.qs.offsets("kept", 0)
            assert end == len(stamps)
            cursor = d.qs.cursor("kept", "g", 0)
            assert first <= cursor
            assert first <= max(0, end - 5)
            assert all(t < latest - 1000 for t in stamps[:first])
            got = d.get(topic="kept", group="g", cursor=0, items_max=1000)
            assert [i.offset for i in got.items] == list(range(first, end))


def test_a_consumer_without_a_lock_is_not_fenced_and_does_not_lower_the_token() -> None:
    """Token 0: queues given by the application (pxq echo, an explicit queue list). It still
    commits after lock holders claimed the cursor, and a stale lock holder stays fenced."""
    d = Disk()
    d.one(enq(1, 10))
    assert isinstance(d.one(commit(2, token=5)), CommitOk)  # a lock holder's claim
    r = d.one(commit(4, token=0))
    assert isinstance(r, CommitOk) and r.cursor == 4
    assert err(d.one(commit(6, token=4))) == "stale_token"  # the floor is still 5
    assert isinstance(d.one(commit(6, token=5)), CommitOk)
