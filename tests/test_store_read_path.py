"""The queue store's read path (``QueueStore.get`` and the row lookup under it), as the drain
benchmark drives it.

Behaviours checked: a Get asks the storage view only for the key range it can use (a view
that reads rows in chunks, as the LMDB one does, would otherwise copy rows up to the queue's
end, and back to its first offset, on every Get); rows larger than the current
``enqueue_items_max`` (written under an older configuration) are still found; the items a Get
returns equal ``StoredItem`` values built the ordinary way (the store builds them through a
faster constructor), retry copies included; and, for random row sizes and Gets, the answer
equals a plain model of the queue.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from pxq import codec
from pxq.config import ClusterConfig, loads_config
from pxq.effects import EffectsBuilder
from pxq.store.commands import Command, EnqueueCmd, RetryCmd, encode_command
from pxq.store.messages import Get, GetOk, StoredItem
from pxq.store.records import Q_ITEM, pack_items
from pxq.store.sm import QueueStore
from sim.memstore import MemoryStore


def config(enqueue_items_max: int = 1000) -> ClusterConfig:
    return loads_config(
        f"""
[cluster]
name = "t"
[limits]
enqueue_items_max = {enqueue_items_max}
get_items_max = 10000
[[stores]]
name = "s"
groups = 1
[[stores.replicas]]
node = "n0"
port = 1
[[topics]]
name = "t"
queues = 1
[[topics.consumer_groups]]
name = "g"
retries = [{{ delay_ms = 100 }}]
""",
        file="test.toml",
    )


class RangeCountingView:
    """A ``StorageView`` over a ``MemoryStore`` that records, for each scan of ``q_item``, how
    many stored rows its key range holds: what a view reading whole chunks would copy."""

    def __init__(self, mem: MemoryStore) -> None:
        self.mem = mem
        self.rows_in_ranges: list[int] = []

    def get(self, table: str, key: bytes) -> bytes | None:
        return self.mem.get(table, key)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        if table == Q_ITEM:
            t = self.mem.tables.get(table)
            keys = [] if t is None else t.keys
            hi = len(keys) if end is None else bisect.bisect_left(keys, end)
            self.rows_in_ranges.append(max(0, hi - bisect.bisect_left(keys, start)))
        return self.mem.scan(table, start, end, reverse=reverse)


class Store:
    def __init__(self, mem: MemoryStore, cfg: ClusterConfig) -> None:
        self.mem = mem
        self.view = RangeCountingView(mem)
        self.qs = QueueStore(self.view, 0, cfg, "s")
        self.qs.load()
        self.instance = 0

    def apply(self, cmd: Command) -> object:
        fx = EffectsBuilder()
        self.instance += 1
        result = self.qs.apply(self.instance, 0, encode_command(cmd), fx)
        self.mem.apply(fx.writes)
        self.qs.end_step()
        return codec.decode(result)

    def get(self, cursor: int, items_max: int, bytes_max: int = 1 << 24) -> GetOk:
        r = self.qs.get(
            Get(
                topic="t",
                group="g",
                queue=0,
                cursor=cursor,
                items_max=items_max,
                bytes_max=bytes_max,
            ),
            now_ms=0,
        )
        assert isinstance(r, GetOk), r
        return r


def enqueue(store: Store, seq: int, n: int, payload_bytes: int = 8) -> None:
    items = pack_items(
        [(f"{seq}.{i}".encode(), bytes([i % 256]) * payload_bytes, "") for i in range(n)]
    )
    store.apply(
        EnqueueCmd(producer="p", seq=seq, topic="t", queue=0, wall_ms=1000 + seq, items=items)
    )


def test_a_get_scans_only_the_rows_it_can_use() -> None:
    store = Store(MemoryStore(), config(enqueue_items_max=10))
    for seq in range(1, 201):  # 200 rows of 10 items
        enqueue(store, seq, 10)
    store.view.rows_in_ranges.clear()
    got = store.get(cursor=1005, items_max=20)  # offsets 1005..1024: rows 100, 101, 102
    assert [i.offset for i in got.items] == list(range(1005, 1025))
    assert got.next_cursor == 1025
    # The row lookup looks back at most enqueue_items_max offsets (2 rows), the forward
    # scan covers [1010, 1025) (2 rows): nothing near the queue's 200 rows.
    assert sum(store.view.rows_in_ranges) <= 5, store.view.rows_in_ranges


def test_rows_larger_than_the_current_enqueue_limit_are_still_found() -> None:
    mem = MemoryStore()
    old = Store(mem, config(enqueue_items_max=1000))
    enqueue(old, 1, 300)
    enqueue(old, 2, 300)
    new = Store(mem, config(enqueue_items_max=5))  # the limit was lowered since
    got = new.get(cursor=450, items_max=100)
    assert [i.offset for i in got.items] == list(range(450, 550))
    assert got.items[0].key == b"2.150"
    moved = new.apply(
        RetryCmd(topic="t", group="g", queue=0, offset=450, token=0, wall_ms=5000, epoch=0)
    )
    assert getattr(moved, "moved_offset", None) == 0, moved


def test_items_equal_ordinarily_built_stored_items_retry_copies_included() -> None:
    store = Store(MemoryStore(), config())
    enqueue(store, 1, 3)
    store.apply(RetryCmd(topic="t", group="g", queue=0, offset=1, token=0, wall_ms=5000, epoch=0))
    got = store.get(cursor=0, items_max=10)
    assert got.items == tuple(
        StoredItem(offset=i, enqueued_ms=1001, key=f"1.{i}".encode(), payload=bytes([i]) * 8)
        for i in range(3)
    )
    r = store.qs.get(
        Get(topic="t.retry.g.1", group="g", queue=0, cursor=0, items_max=10, bytes_max=100),
        now_ms=0,
    )
    assert isinstance(r, GetOk)
    assert r.items == (
        StoredItem(
            offset=0,
            enqueued_ms=5000,
            key=b"1.1",
            payload=bytes([1]) * 8,
            attempt=1,
            not_before_ms=5100,
        ),
    )
    assert codec.decode(codec.encode(r)) == r


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(1, 40), min_size=1, max_size=25),
    gets=st.lists(
        st.tuples(st.integers(0, 1100), st.integers(0, 120), st.integers(1, 800)),
        min_size=1,
        max_size=8,
    ),
    limit=st.integers(1, 40),
)
def test_gets_agree_with_a_plain_model(
    rows: list[int], gets: list[tuple[int, int, int]], limit: int
) -> None:
    mem = MemoryStore()
    writer = Store(mem, config(enqueue_items_max=40))
    model: list[tuple[bytes, bytes]] = []
    for seq, n in enumerate(rows, start=1):
        enqueue(writer, seq, n, payload_bytes=seq % 7 + 1)
        model += [(f"{seq}.{i}".encode(), bytes([i % 256]) * (seq % 7 + 1)) for i in range(n)]
    reader = Store(mem, config(enqueue_items_max=limit))  # a lower limit: the fallback path
    for cursor, items_max, bytes_max in gets:
        got = reader.get(cursor=cursor, items_max=items_max, bytes_max=bytes_max)
        expected: list[int] = []
        size = 0
        pos = min(cursor, len(model))
        while pos < len(model) and len(expected) < items_max:
            k, p = model[pos]
            if expected and size + len(k) + len(p) > bytes_max:
                break
            expected.append(pos)
            size += len(k) + len(p)
            pos += 1
        assert [i.offset for i in got.items] == expected
        assert [(i.key, i.payload) for i in got.items] == [model[o] for o in expected]
        assert got.next_cursor == (pos if items_max else min(cursor, len(model)))
