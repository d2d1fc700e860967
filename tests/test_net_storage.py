"""LmdbStorage: the production StorageView with CRC-sealed values and group commit.

Behaviours checked: round trips, forward and reverse scans with bounds (also across scan
chunks), DeleteRange, read-your-writes before commit, durability across reopen and loss of
uncommitted writes, agreement with the simulator's MemoryStore on random operation sequences,
CRC corruption detected on get and scan, a full map growing transparently or failing as
StorageFull with nothing partial left, the data-dir marker and lock, and the layers of writes
not yet durable (reads see sealed and open batches, a batch written on another thread,
completion in order only, a full map reported by ``write`` and grown on completion); the
space measurement the runner's storage watch uses (pages in use follow the tables and
shrink after deletes, the nearer of the map and disk limits) and the reserve's configuration;
the write-ahead log (batches durable in it survive a crash and are replayed once, checkpoints
by count and bytes, a torn tail dropped with everything synced kept, damage before the end
refused, records of an earlier nonce or crafted inside a payload never taken).
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lmdb
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from net.config import KIB, MIB, NetConfig
from net.errors import DataDirError, DataDirMismatch, StorageError, StorageFull
from net.node.storage import MARKER_NAME, WAL_TABLE, LmdbStorage, SealedBatch, StorageSpace
from net.node.wal import HEAD_BYTES, WAL_NAME, WalCorrupt, encode_record, read_records
from pxq.config import STORAGE_RESERVE_MIN_BYTES, default_toml, loads_config
from pxq.effects import Delete, DeleteRange, Put, StorageCorruption, StorageView, Write
from sim.memstore import MemoryStore

CONFIG = NetConfig(map_size_bytes=16 * MIB, scan_chunk_items=3)
T = 10.0  # seconds a test waits for the other thread at most


def open_storage(path: Path, config: NetConfig = CONFIG, node: str = "s0") -> LmdbStorage:
    return LmdbStorage.open(path, cluster="c1", node=node, config=config)


def k(i: int) -> bytes:
    return i.to_bytes(2, "big")


def test_storage_is_a_storage_view(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        assert isinstance(s, StorageView)
    finally:
        s.close()


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        assert s.get("t", b"a") is None
        s.apply([Put(table="t", key=b"a", value=b"1"), Put(table="u", key=b"a", value=b"")])
        s.apply([Put(table="t", key=b"a", value=b"2")])
        assert s.get("t", b"a") == b"2"
        assert s.get("u", b"a") == b""
        assert s.commit() is True
        assert s.commit() is False  # nothing new
        assert s.get("t", b"a") == b"2"
        s.apply([Delete(table="t", key=b"a"), Delete(table="t", key=b"zz")])
        s.apply([Delete(table="missing", key=b"a")])
        assert s.get("t", b"a") is None
        s.commit()
    finally:
        s.close()


def test_scans_forward_reverse_bounded_and_across_chunks(tmp_path: Path) -> None:
    s = open_storage(tmp_path)  # 3 items per chunk: every scan below crosses chunks
    try:
        s.apply([Put(table="t", key=k(i), value=b"v%d" % i) for i in range(20)])
        assert [key for key, _ in s.scan("t")] == [k(i) for i in range(20)]
        assert [key for key, _ in s.scan("t", reverse=True)] == [k(i) for i in reversed(range(20))]
        assert [key for key, _ in s.scan("t", k(5), k(12))] == [k(i) for i in range(5, 12)]
        assert [key for key, _ in s.scan("t", k(5), k(12), reverse=True)] == [
            k(i) for i in reversed(range(5, 12))
        ]
        # Bounds that are not keys, and empty ranges.
        assert [key for key, _ in s.scan("t", b"\x00\x05\x00", b"\x00\x08\x00")] == [
            k(6),
            k(7),
            k(8),
        ]
        assert list(s.scan("t", k(7), k(7))) == []
        assert list(s.scan("t", k(9), k(3), reverse=True)) == []
        assert list(s.scan("t", b"", b"", reverse=True)) == []
        assert list(s.scan("missing")) == []
        assert dict(s.scan("t"))[k(4)] == b"v4"
    finally:
        s.close()


def test_scan_survives_writes_and_commits_between_chunks(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        s.apply([Put(table="t", key=k(i), value=b"x") for i in range(10)])
        s.commit()
        it = s.scan("t")
        first = [next(it)[0] for _ in range(3)]
        # A write and a commit while the iterator is open: later chunks see them.
        s.apply([Delete(table="t", key=k(5)), Put(table="t", key=k(50), value=b"y")])
        s.commit()
        rest = [key for key, _ in it]
        assert first == [k(0), k(1), k(2)]
        assert rest == [k(3), k(4), k(6), k(7), k(8), k(9), k(50)]
    finally:
        s.close()


def test_delete_range_removes_exactly_the_half_open_range(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        s.apply([Put(table="t", key=k(i), value=b"x") for i in range(10)])
        s.apply([DeleteRange(table="t", start=k(3), end=k(7))])
        assert [key for key, _ in s.scan("t")] == [k(i) for i in (0, 1, 2, 7, 8, 9)]
        s.apply([DeleteRange(table="t", start=k(8), end=b"\xff")])
        s.apply([DeleteRange(table="t", start=k(5), end=k(1))])  # empty: no-op
        s.apply([DeleteRange(table="missing", start=b"", end=b"\xff")])
        assert [key for key, _ in s.scan("t")] == [k(i) for i in (0, 1, 2, 7)]
        s.apply([DeleteRange(table="t", start=b"", end=b"\xff\xff\xff")])
        assert list(s.scan("t")) == []
    finally:
        s.close()


def test_reads_see_uncommitted_writes_and_abort_discards_them(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        s.apply([Put(table="t", key=b"a", value=b"1")])
        s.commit()
        s.apply([Put(table="t", key=b"a", value=b"2"), Put(table="new", key=b"b", value=b"3")])
        assert s.pending
        assert s.get("t", b"a") == b"2"
        assert list(s.scan("new")) == [(b"b", b"3")]
        s.abort()
        assert not s.pending
        assert s.get("t", b"a") == b"1"
        assert s.get("new", b"b") is None  # the table created by the aborted txn is gone
        s.apply([Put(table="new", key=b"c", value=b"4")])  # and can be created again
        s.commit()
        assert s.get("new", b"c") == b"4"
    finally:
        s.close()


def test_committed_writes_survive_reopen_and_uncommitted_do_not(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    s.apply([Put(table="t", key=b"a", value=b"durable")])
    s.apply([Put(table="u", key=b"b", value=b"durable too")])
    s.commit()
    s.apply([Put(table="t", key=b"c", value=b"lost")])
    s.close()  # without commit: the last write is gone
    s = open_storage(tmp_path)
    try:
        assert s.get("t", b"a") == b"durable"
        assert s.get("u", b"b") == b"durable too"
        assert s.get("t", b"c") is None
    finally:
        s.close()


def test_put_of_a_key_lmdb_cannot_store_is_a_storage_error(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        assert s.get("t", b"") is None
        assert s.get("t", b"x" * 600) is None
        with pytest.raises(StorageError, match="1 to 511 bytes"):
            s.apply([Put(table="t", key=b"", value=b"v")])
        with pytest.raises(StorageError, match="failed earlier"):
            s.apply([Put(table="t", key=b"a", value=b"v")])
    finally:
        s.close()


# -- agreement with the simulator's MemoryStore ------------------------------------------

_keys = st.binary(min_size=1, max_size=3).map(lambda b: b.replace(b"\x00", b"\x01"))
_tables = st.sampled_from(["a", "b"])
_put = st.builds(
    lambda t, key, v: Put(table=t, key=key, value=v), _tables, _keys, st.binary(max_size=8)
)
_delete = st.builds(lambda t, key: Delete(table=t, key=key), _tables, _keys)
_delete_range = st.builds(
    lambda t, a, b: DeleteRange(table=t, start=a, end=b), _tables, _keys, _keys
)
_ops = st.one_of(_put, _delete, _delete_range, st.just("commit"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_ops, max_size=40), start=_keys, end=st.none() | _keys)
def test_storage_agrees_with_memory_store(
    ops: list[Write | str], start: bytes, end: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = open_storage(Path(tmp), NetConfig(map_size_bytes=4 * MIB, scan_chunk_items=2))
        model = MemoryStore()
        try:
            for op in ops:
                if isinstance(op, str):
                    s.commit()
                else:
                    s.apply([op])
                    model.apply([op])
                for table in ("a", "b"):
                    assert list(s.scan(table)) == list(model.scan(table))
            for table in ("a", "b"):
                for reverse in (False, True):
                    got = list(s.scan(table, start, end, reverse=reverse))
                    assert got == list(model.scan(table, start, end, reverse=reverse))
                for key, value in model.scan(table):
                    assert s.get(table, key) == value
        finally:
            s.close()


_log_rounds = st.lists(
    st.tuples(
        st.lists(st.one_of(_put, _put, _put, _delete, _delete_range), min_size=1, max_size=3),
        st.sampled_from(
            ["durable"] * 4 + ["ckpt_start", "ckpt_end", "commit", "crash", "crash_late"]
        ),
    ),
    min_size=3,
    max_size=25,
).map(lambda rounds: [op for writes, action in rounds for op in (*writes, action)])
"""A few writes, then what happens to them (mostly ``durable``)."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_log_rounds,
    batches=st.sampled_from([1, 2, 2, 3, 4]),
    checkpoint_bytes=st.sampled_from([64, 8 * MIB, 8 * MIB]),
)
def test_writes_durable_in_the_log_or_lmdb_and_only_those_survive_crashes(
    ops: list[Write | str], batches: int, checkpoint_bytes: int
) -> None:
    """``durable`` makes the open batch durable as the runner's writer does (seal, write,
    written: an append to the log, or a checkpoint without a log), ``ckpt_start`` takes the
    checkpoint ``checkpoint_due`` hands out and ``ckpt_end`` completes it, appends going on
    meanwhile as on the runner's two threads (a full log or a backlog waits for it and
    rewinds, as the runner does; after an append the checkpoint then due starts),
    ``commit`` checkpoints everything, ``crash`` closes
    without the running checkpoint and ``crash_late`` after its LMDB transaction but before
    ``written``, and reopens (replaying the log). After every step the storage reads as the
    model: everything applied while running, exactly what was durable after a crash. A small
    ``checkpoint_bytes`` makes the log rewind every few batches."""
    config = NetConfig(
        map_size_bytes=4 * MIB,
        scan_chunk_items=2,
        checkpoint_batches=batches,
        checkpoint_bytes=checkpoint_bytes,
    )
    with tempfile.TemporaryDirectory() as tmp:
        s = open_storage(Path(tmp), config)
        durable: list[Write] = []
        pending: list[Write] = []
        running: SealedBatch | None = None  # the checkpoint on the other thread
        try:
            for op in ops:
                if (
                    op in ("durable", "commit")
                    and running is not None
                    and (op == "commit" or running.rewind)
                ):
                    s.written(s.checkpoint(running))  # an append waits for a rewind
                    running = None
                if op == "durable":
                    if s.log_full or s.backlogged:  # the runner waits, then rewinds
                        if running is not None:
                            s.written(s.checkpoint(running))
                            running = None
                        due = s.checkpoint_due(writer_idle=True)
                        if due is not None:
                            s.written(s.checkpoint(due))
                        assert not s.log_full and not s.backlogged
                    batch = s.seal()
                    if batch is not None:
                        s.written(s.write(batch))
                    durable += pending
                    pending = []
                    if running is None:  # the runner hands out the checkpoint now due
                        running = s.checkpoint_due(writer_idle=True)
                elif op == "ckpt_start":
                    if running is None:
                        running = s.checkpoint_due(force=True, writer_idle=True)
                elif op == "ckpt_end":
                    if running is not None:
                        s.written(s.checkpoint(running))
                        running = None
                elif op == "commit":
                    s.commit()
                    durable += pending
                    pending = []
                elif op in ("crash", "crash_late"):
                    if running is not None and op == "crash_late":
                        assert s.checkpoint(running).committed
                    running = None
                    s.close()
                    s = open_storage(Path(tmp), config)
                    pending = []
                else:
                    assert not isinstance(op, str)
                    s.apply([op])
                    pending.append(op)
                model = MemoryStore()
                model.apply(durable + pending)
                for table in ("a", "b"):
                    assert list(s.scan(table)) == list(model.scan(table))
                    assert list(s.scan(table, reverse=True)) == list(
                        model.scan(table, reverse=True)
                    )
        finally:
            s.close()


# -- corruption ---------------------------------------------------------------------------


def _tamper(path: Path, table: str, key: bytes, change: object) -> None:
    """Rewrite the raw LMDB record behind the storage's back."""
    env = lmdb.open(str(path), max_dbs=8, map_size=16 * MIB)
    try:
        db = env.open_db(table.encode())
        with env.begin(write=True) as txn:
            raw = txn.get(key, db=db)
            assert raw is not None
            assert callable(change)
            txn.put(key, change(raw), db=db)
    finally:
        env.close()


def _flip(index: int) -> object:
    def change(raw: bytes) -> bytes:
        b = bytearray(raw)
        b[index] ^= 0x40
        return bytes(b)

    return change


@pytest.mark.parametrize(
    "change",
    [_flip(0), _flip(-1), _flip(-5), lambda raw: raw[:2], lambda raw: raw + b"!"],
    ids=["value-byte", "crc-byte", "last-value-byte", "truncated", "extended"],
)
def test_corrupt_record_is_detected_on_get_and_scan(tmp_path: Path, change: object) -> None:
    s = open_storage(tmp_path)
    s.apply([Put(table="t", key=b"k%d" % i, value=b"value-%d" % i) for i in range(5)])
    s.commit()
    s.close()
    _tamper(tmp_path, "t", b"k2", change)
    s = open_storage(tmp_path)
    try:
        assert s.get("t", b"k1") == b"value-1"  # its neighbours are fine
        with pytest.raises(StorageCorruption, match="k2"):
            s.get("t", b"k2")
        with pytest.raises(StorageCorruption):
            list(s.scan("t"))
        with pytest.raises(StorageCorruption):
            list(s.scan("t", reverse=True))
    finally:
        s.close()


def test_a_value_moved_to_another_key_fails_its_checksum(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    s.apply([Put(table="t", key=b"a", value=b"1"), Put(table="t", key=b"b", value=b"2")])
    s.commit()
    s.close()
    env = lmdb.open(str(tmp_path), max_dbs=8, map_size=16 * MIB)
    db = env.open_db(b"t")
    with env.begin(write=True) as txn:
        raw_a = txn.get(b"a", db=db)
        assert raw_a is not None
        txn.put(b"b", raw_a, db=db)
    env.close()
    s = open_storage(tmp_path)
    try:
        with pytest.raises(StorageCorruption):
            s.get("t", b"b")
    finally:
        s.close()


# -- a full map ---------------------------------------------------------------------------


def test_full_map_grows_and_the_batch_commits(tmp_path: Path) -> None:
    config = NetConfig(map_size_bytes=256 * KIB, map_size_max_bytes=16 * MIB)
    s = open_storage(tmp_path, config)
    try:
        # Several steps of one turn; together far more than the initial map.
        for step in range(8):
            s.apply([Put(table="t", key=k(step * 100 + i), value=b"v" * 1000) for i in range(100)])
        s.commit()
        assert s.map_grows >= 1
        assert s.map_size > 256 * KIB
        assert sum(1 for _ in s.scan("t")) == 800
    finally:
        s.close()
    s = open_storage(tmp_path, config)
    try:
        assert sum(1 for _ in s.scan("t")) == 800
    finally:
        s.close()


def test_map_that_cannot_grow_fails_with_nothing_partial_and_service_resumes(
    tmp_path: Path,
) -> None:
    small = NetConfig(map_size_bytes=128 * KIB, map_size_max_bytes=256 * KIB)
    s = open_storage(tmp_path, small)
    try:
        s.apply([Put(table="base", key=b"a", value=b"kept")])
        s.commit()
        with pytest.raises(StorageFull, match="map_size_max_bytes"):
            for step in range(10):  # the turn's earlier steps are aborted too
                s.apply(
                    [Put(table="t", key=k(step * 50 + i), value=b"v" * 1000) for i in range(50)]
                )
            s.commit()
        assert not s.pending
        assert list(s.scan("t")) == []
        assert s.get("base", b"a") == b"kept"
        # The storage is consistent at its last commit and takes a small batch again.
        s.apply([Put(table="base", key=b"b", value=b"small")])
        s.commit()
    finally:
        s.close()
    # With more room (a larger configured maximum) the big batch fits.
    s = open_storage(tmp_path, NetConfig(map_size_bytes=128 * KIB, map_size_max_bytes=64 * MIB))
    try:
        assert s.get("base", b"b") == b"small"
        assert list(s.scan("t")) == []
        s.apply([Put(table="t", key=k(i), value=b"v" * 1000) for i in range(500)])
        s.commit()
        assert sum(1 for _ in s.scan("t")) == 500
    finally:
        s.close()


def test_too_many_tables_is_a_storage_error(tmp_path: Path) -> None:
    s = open_storage(tmp_path, NetConfig(tables_max=2))
    try:
        s.apply([Put(table="a", key=b"k", value=b"")])
        s.apply([Put(table="b", key=b"k", value=b"")])
        with pytest.raises(StorageError, match="tables_max"):
            s.apply([Put(table="c", key=b"k", value=b"")])
    finally:
        s.close()


# -- data dir -----------------------------------------------------------------------------


def test_data_dir_of_another_node_or_cluster_is_refused(tmp_path: Path) -> None:
    open_storage(tmp_path, node="s0").close()
    with pytest.raises(DataDirMismatch, match="belongs to node 's0' of cluster 'c1'"):
        open_storage(tmp_path, node="s1")
    with pytest.raises(DataDirMismatch, match="cluster 'c1'"):
        LmdbStorage.open(tmp_path, cluster="other", node="s0", config=CONFIG)
    open_storage(tmp_path, node="s0").close()  # the right node still opens it


def test_data_dir_problems_are_named(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a dir")
    with pytest.raises(DataDirError, match="not a directory"):
        open_storage(a_file)
    s = open_storage(tmp_path / "d")
    with pytest.raises(DataDirError, match="in use"):
        open_storage(tmp_path / "d")
    s.close()
    (tmp_path / "d" / MARKER_NAME).write_text("{not json")
    with pytest.raises(DataDirError, match="malformed"):
        open_storage(tmp_path / "d")
    (tmp_path / "d" / MARKER_NAME).unlink()
    with pytest.raises(DataDirError, match=r"no pxq-node\.json"):
        open_storage(tmp_path / "d")


# -- layers: batches sealed, written (possibly on another thread) and completed in order ----


def test_reads_see_sealed_and_open_batches_until_they_are_written(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        s.apply([Put(table="t", key=k(i), value=b"old") for i in range(6)])
        s.commit()
        base = s.durable_seq
        s.apply([Put(table="t", key=k(1), value=b"b1"), Delete(table="t", key=k(2))])
        s.apply(
            [DeleteRange(table="t", start=k(3), end=k(5)), Put(table="t", key=k(4), value=b"b1")]
        )
        first = s.seal()
        assert first is not None and first.seq == base + 1
        assert not s.pending and s.unwritten == 1
        assert s.seal() is None  # nothing new since
        # The next batch writes over the sealed one while it is not yet durable.
        s.apply([Put(table="t", key=k(2), value=b"b2"), Delete(table="t", key=k(4))])
        s.apply([Put(table="new", key=b"x", value=b"b2")])
        assert s.horizon_seq == base + 2 and s.durable_seq == base
        expected = {k(0): b"old", k(1): b"b1", k(2): b"b2", k(5): b"old"}
        assert dict(s.scan("t")) == expected
        assert [key for key, _ in s.scan("t", reverse=True)] == sorted(expected, reverse=True)
        assert s.get("t", k(3)) is None and s.get("t", k(4)) is None
        assert list(s.scan("new")) == [(b"x", b"b2")]
        # Written on a thread of its own, completed on this one: the same reads after.
        with ThreadPoolExecutor(max_workers=1) as pool:
            outcome = pool.submit(s.write, first).result()
        assert outcome.committed
        assert dict(s.scan("t")) == expected  # not yet completed: the layer still answers
        s.written(outcome)
        assert s.durable_seq == base + 1 and s.unwritten == 0 and s.horizon_seq == base + 2
        assert dict(s.scan("t")) == expected
        assert s.get("new", b"x") == b"b2"
        second = s.seal()
        assert second is not None and second.seq == base + 2
        s.written(s.write(second))
        # Durable in the write-ahead log; read from memory until a checkpoint.
        assert s.durable_seq == base + 2 and s.overlay_bytes > 0
        assert dict(s.scan("t")) == expected
        assert s.commit()  # a checkpoint of what is durable only in the log
        assert s.overlay_bytes == 0 and s.durable_seq == base + 2
        assert dict(s.scan("t")) == expected
    finally:
        s.close()
    s = open_storage(tmp_path)
    try:
        assert dict(s.scan("t")) == expected
        assert s.get("new", b"x") == b"b2"
    finally:
        s.close()


def test_batches_complete_in_order_only(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        s.apply([Put(table="t", key=b"a", value=b"1")])
        first = s.seal()
        s.apply([Put(table="t", key=b"a", value=b"2")])
        second = s.seal()
        assert first is not None and second is not None
        outcome = s.write(second)  # a driver that writes out of order
        with pytest.raises(StorageError, match="out of order"):
            s.written(outcome)
        with pytest.raises(StorageError, match="failed earlier"):
            s.apply([Put(table="t", key=b"b", value=b"3")])
    finally:
        s.close()


def test_a_sealed_batch_dropped_by_close_is_not_durable(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    s.apply([Put(table="t", key=b"a", value=b"durable")])
    s.commit()
    s.apply([Put(table="t", key=b"a", value=b"sealed only")])
    assert s.seal() is not None
    assert s.get("t", b"a") == b"sealed only"
    s.close()
    s = open_storage(tmp_path)
    try:
        assert s.get("t", b"a") == b"durable"
    finally:
        s.close()


def test_a_full_map_reported_by_write_grows_on_completion(tmp_path: Path) -> None:
    # Every batch a checkpoint (no log): the one LMDB commit finds the map full.
    config = NetConfig(map_size_bytes=256 * KIB, map_size_max_bytes=16 * MIB, checkpoint_batches=1)
    s = open_storage(tmp_path, config)
    try:
        s.apply([Put(table="t", key=k(i), value=b"v" * 1000) for i in range(800)])
        batch = s.seal()
        assert batch is not None
        outcome = s.write(batch)
        assert not outcome.committed  # nothing written
        s.written(outcome)  # grows the map; the batch is still to be written
        assert s.map_grows == 1 and s.unwritten == 1 and s.durable_seq == 0
        assert sum(1 for _ in s.scan("t")) == 800
        for _ in range(8):  # bounded: each round doubles the map
            outcome = s.write(batch)
            s.written(outcome)
            if outcome.committed:
                break
        assert outcome.committed and s.durable_seq == 1
        assert sum(1 for _ in s.scan("t")) == 800
    finally:
        s.close()


# -- space and headroom ---------------------------------------------------------------------


def test_storage_space_takes_the_nearer_of_the_map_and_the_disk() -> None:
    by_map = StorageSpace(
        used_bytes=3 * MIB, map_max_bytes=4 * MIB, file_bytes=3 * MIB, fs_free_bytes=100 * MIB
    )
    assert (by_map.map_room_bytes, by_map.disk_room_bytes) == (1 * MIB, 100 * MIB)
    assert (by_map.limit, by_map.available_bytes) == ("map", 1 * MIB)
    assert by_map.capacity_bytes == 4 * MIB
    assert "map_size_max_bytes=4194304" in by_map.describe()
    # Free pages inside the file count as disk room: retention frees space without the file
    # ever shrinking.
    by_disk = StorageSpace(
        used_bytes=2 * MIB, map_max_bytes=64 * MIB, file_bytes=10 * MIB, fs_free_bytes=1 * MIB
    )
    assert (by_disk.limit, by_disk.available_bytes) == ("disk", 9 * MIB)
    assert by_disk.capacity_bytes == 11 * MIB
    assert "disk" in by_disk.describe() and "1.0 MiB free" in by_disk.describe()
    # A map used beyond its maximum (a lowered configuration) has no room, not a negative one.
    over = StorageSpace(
        used_bytes=8 * MIB, map_max_bytes=4 * MIB, file_bytes=8 * MIB, fs_free_bytes=None
    )
    assert (over.disk_room_bytes, over.limit, over.available_bytes) == (None, "map", 0)
    with pytest.raises(ValueError, match="negative"):
        StorageSpace(used_bytes=-1, map_max_bytes=1, file_bytes=0, fs_free_bytes=None)


def test_space_in_use_follows_the_tables_and_shrinks_after_deletes(tmp_path: Path) -> None:
    config = NetConfig(map_size_bytes=1 * MIB, map_size_max_bytes=16 * MIB)
    s = open_storage(tmp_path, config)
    try:
        empty = s.space()
        assert empty.map_max_bytes == 16 * MIB
        assert 0 < empty.used_bytes < 64 * KIB
        assert empty.fs_free_bytes is not None and empty.fs_free_bytes > 0
        s.apply([Put(table="t", key=k(i), value=b"v" * 1000) for i in range(2000)])
        assert s.space().used_bytes == empty.used_bytes  # as of the last commit: none yet
        s.commit()
        full = s.space()
        # 2000 records of ~1 KB: at least their bytes, at most twice (half-full pages).
        assert 2000 * 1000 <= full.used_bytes - empty.used_bytes <= 2 * 2000 * 1100
        assert full.available_bytes == 16 * MIB - full.used_bytes
        assert full.file_bytes >= full.used_bytes
        assert s.committed_bytes >= 2000 * 1000
        s.apply([DeleteRange(table="t", start=k(0), end=k(1900))])
        s.commit()
        freed = s.space()
        # The file does not shrink, but the pages in use do: the room comes back.
        assert freed.file_bytes >= full.file_bytes
        assert freed.used_bytes < empty.used_bytes + 300 * 1100
        assert freed.available_bytes > full.available_bytes + 1 * MIB
    finally:
        s.close()


def test_allow_room_lets_a_map_full_at_its_limit_take_writes_again(tmp_path: Path) -> None:
    """A map full at ``map_size_max_bytes`` refuses every new page (``StorageFull``); after
    ``allow_room`` it grows past the limit by that room, while ``space()`` still measures
    against the limit (the node stays short until its data is back under it)."""
    small = NetConfig(map_size_bytes=128 * KIB, map_size_max_bytes=256 * KIB)
    s = open_storage(tmp_path, small)
    try:
        written = 0
        with pytest.raises(StorageFull, match="map_size_max_bytes"):
            while True:  # one page-sized record per commit until the map is full
                s.apply([Put(table="t", key=k(written), value=b"v" * 3000)])
                s.commit()
                written += 1
        assert written > 0 and s.map_ceiling == 256 * KIB
        full = s.space()
        assert full.map_max_bytes == 256 * KIB and full.available_bytes < 64 * KIB
        ceiling = s.allow_room(128 * KIB)
        assert ceiling == s.map_ceiling >= full.used_bytes + 128 * KIB > 256 * KIB
        assert ceiling % (64 * KIB) == 0
        # Room for the deletes that free space, and for more (past the limit).
        s.apply([Put(table="t", key=k(written), value=b"v" * 3000)])
        s.apply([DeleteRange(table="t", start=k(0), end=k(written // 2))])
        s.commit()
        assert s.map_size > 256 * KIB
        after = s.space()
        assert after.map_max_bytes == 256 * KIB  # the limit did not move
        assert after.used_bytes < full.used_bytes
        with pytest.raises(ValueError, match="room_bytes"):
            s.allow_room(-1)
    finally:
        s.close()


def test_storage_reserve_is_validated_and_automatic_by_default() -> None:
    auto = NetConfig()
    assert auto.storage_reserve_bytes is None
    assert auto.reserve_for(10 * 1024 * MIB) == 512 * MIB  # 5 % of the capacity
    assert auto.reserve_for(1024 * MIB) == 64 * MIB  # at least 64 MiB
    assert auto.reserve_for(16 * MIB) == 8 * MIB  # at most half of a tiny capacity
    # ... but never below the minimum, however tiny the capacity.
    assert auto.reserve_for(2 * MIB) == STORAGE_RESERVE_MIN_BYTES == 2 * MIB
    assert auto.reserve_for(0) == STORAGE_RESERVE_MIN_BYTES
    with pytest.raises(ValueError, match="capacity_bytes"):
        auto.reserve_for(-1)
    fixed = NetConfig(map_size_bytes=MIB, map_size_max_bytes=8 * MIB, storage_reserve_bytes=3 * MIB)
    assert fixed.reserve_for(100 * MIB) == 3 * MIB
    # 0 (which used to turn the watch off) and anything below the minimum are refused, and
    # so is a reserve that leaves no room below the map maximum.
    for bad in (0, -1, STORAGE_RESERVE_MIN_BYTES - 1, 8 * MIB):
        with pytest.raises(ValueError, match=r"storage_reserve_bytes must be in 2097152 "):
            NetConfig(map_size_bytes=MIB, map_size_max_bytes=8 * MIB, storage_reserve_bytes=bad)
    with pytest.raises(ValueError, match="storage_resume_margin_percent"):
        NetConfig(storage_resume_margin_percent=101)
    with pytest.raises(ValueError, match="storage_space_refresh_ms"):
        NetConfig(storage_space_refresh_ms=0)


def test_the_data_dir_and_its_parent_are_fsynced_once_lmdb_created_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync
    data_dir = tmp_path / "parent" / "n0"

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, (data_dir / "data.mdb").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    s = LmdbStorage.open(data_dir, cluster="c", node="n0", config=NetConfig())
    s.close()
    assert (str(data_dir), True) in synced
    assert (str(data_dir.parent), True) in synced


def test_a_marker_without_data_is_refused_unless_replacing(tmp_path: Path) -> None:
    s = LmdbStorage.open(tmp_path, cluster="c", node="n0", config=NetConfig())
    s.close()
    (tmp_path / "data.mdb").unlink()
    with pytest.raises(DataDirError, match="--replace"):
        LmdbStorage.open(tmp_path, cluster="c", node="n0", config=NetConfig())
    s = LmdbStorage.open(tmp_path, cluster="c", node="n0", config=NetConfig(), replace=True)
    s.close()


# -- the write-ahead log (net.node.wal) -----------------------------------------------------


def _write_batches(s: LmdbStorage, batches: list[list[Write]]) -> list[bool]:
    """Seal, write and complete each batch, then take the checkpoint that is due, as the
    runner does (one after the other); whether a checkpoint followed each batch."""
    kinds = []
    for writes in batches:
        s.apply(writes)
        batch = s.seal()
        assert batch is not None
        outcome = s.write(batch)
        s.written(outcome)
        assert outcome.committed and s.durable_seq == batch.seq
        due = s.checkpoint_due(writer_idle=True)
        kinds.append(due is not None)
        if due is not None:
            s.written(s.checkpoint(due))
    return kinds


def test_batches_in_the_log_survive_a_crash_and_are_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(checkpoint_batches=4)
    s = open_storage(tmp_path, config)
    kinds = _write_batches(
        s,
        [
            [Put(table="t", key=k(0), value=b"a"), Put(table="t", key=k(1), value=b"a")],
            [Delete(table="t", key=k(0)), Put(table="u", key=b"x", value=b"new table")],
            [DeleteRange(table="t", start=k(1), end=k(2)), Put(table="t", key=k(5), value=b"c")],
        ],
    )
    assert kinds == [False, False, False]  # all three only in the log
    assert s.checkpoints == 1  # the one of the open, nothing since
    s.close()  # a crash: no commit
    caplog.set_level(logging.INFO, logger="pxq.net.storage")
    s = open_storage(tmp_path, config)
    try:
        assert dict(s.scan("t")) == {k(5): b"c"}
        assert s.get("u", b"x") == b"new table"
        assert s.overlay_bytes == 0
    finally:
        s.close()
    assert "replaying 3 batch(es) of the write-ahead log (1 to 3)" in caplog.text
    caplog.clear()
    s = open_storage(tmp_path, config)  # and again: nothing replayed twice, nothing lost
    try:
        assert dict(s.scan("t")) == {k(5): b"c"}
    finally:
        s.close()
    assert "replaying" not in caplog.text


def test_a_checkpoint_every_n_batches_moves_the_log_into_lmdb(tmp_path: Path) -> None:
    config = NetConfig(checkpoint_batches=3)
    s = open_storage(tmp_path, config)
    try:
        kinds = _write_batches(s, [[Put(table="t", key=k(i), value=b"v%d" % i)] for i in range(7)])
        assert kinds == [False, False, True, False, False, True, False]
        assert s.checkpoints == 3  # the open's and two
        assert s.unwritten == 0 and s.overlay_bytes > 0  # batch 7 is in the log
        assert dict(s.scan("t")) == {k(i): b"v%d" % i for i in range(7)}
    finally:
        s.close()
    s = open_storage(tmp_path, config)
    try:
        assert dict(s.scan("t")) == {k(i): b"v%d" % i for i in range(7)}
    finally:
        s.close()


def test_a_checkpoint_is_due_by_bytes_too(tmp_path: Path) -> None:
    s = open_storage(tmp_path, NetConfig(checkpoint_batches=100, checkpoint_bytes=3000))
    try:
        kinds = _write_batches(s, [[Put(table="t", key=k(i), value=b"v" * 1000)] for i in range(5)])
        assert kinds == [False, False, True, False, False]
    finally:
        s.close()


def _three_batches_in_the_log(data_dir: Path, config: NetConfig) -> Path:
    """Three batches durable in the log only (a crash after them); the log's path."""
    s = open_storage(data_dir, config)
    _write_batches(s, [[Put(table="t", key=k(i), value=b"v" * 50)] for i in range(3)])
    s.close()
    return data_dir / WAL_NAME


def test_a_torn_tail_is_dropped_and_what_was_synced_is_kept(tmp_path: Path) -> None:
    config = NetConfig(checkpoint_batches=100)
    path = _three_batches_in_the_log(tmp_path, config)
    whole = path.read_bytes()
    record = len(encode_record(1, [Put(table="t", key=k(0), value=b"v" * 50)], bytes(8)))
    for cut in (1, HEAD_BYTES - 1, HEAD_BYTES + 1, record - 1):
        # The third write torn at `cut`: its first bytes made it, the rest did not.
        path.write_bytes(whole[: 2 * record + cut] + bytes(len(whole) - 2 * record - cut))
        shutil.copytree(tmp_path, tmp_path.parent / f"copy{cut}")
        copy = open_storage(tmp_path.parent / f"copy{cut}", config)
        try:
            assert dict(copy.scan("t")) == {k(0): b"v" * 50, k(1): b"v" * 50}
        finally:
            copy.close()


def test_damage_before_the_end_of_the_log_refuses_to_open(tmp_path: Path) -> None:
    config = NetConfig(checkpoint_batches=100)
    path = _three_batches_in_the_log(tmp_path, config)
    data = bytearray(path.read_bytes())
    data[HEAD_BYTES + 10] ^= 0x01  # a bit of the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="synced record was damaged"):
        open_storage(tmp_path, config)


def test_records_of_an_earlier_nonce_and_crafted_payloads_are_not_taken(tmp_path: Path) -> None:
    config = NetConfig(checkpoint_batches=100)
    s = open_storage(tmp_path, config)
    _write_batches(s, [[Put(table="t", key=b"a", value=b"1")]])
    s.close()
    path = tmp_path / WAL_NAME
    stale = path.read_bytes()
    s = open_storage(tmp_path, config)  # replays, checkpoints under a new nonce, empties
    try:
        assert s.get("t", b"a") == b"1"
    finally:
        s.close()
    # A crash between a checkpoint and the emptying of the log leaves its records: under
    # the old nonce they are not taken again (here, they would undo nothing, but a record
    # of an overwritten key would).
    path.write_bytes(stale)
    s = open_storage(tmp_path, config)
    try:
        assert s.get("t", b"a") == b"1"
        s.apply([Put(table="t", key=b"a", value=b"2")])
        s.commit()
    finally:
        s.close()
    path.write_bytes(stale)
    s = open_storage(tmp_path, config)
    try:
        assert s.get("t", b"a") == b"2"  # the stale record did not come back
    finally:
        s.close()
    # A record crafted with a guessed nonce inside a torn tail is no record either.
    forged = encode_record(99, [Put(table="t", key=b"a", value=b"forged")], b"\0" * 8)
    path.write_bytes(b"PXQW" + bytes(20) + forged)
    s = open_storage(tmp_path, config)
    try:
        assert s.get("t", b"a") == b"2"
    finally:
        s.close()


def test_read_records_takes_them_in_sequence_only() -> None:
    nonce = b"12345678"
    one = encode_record(5, [Put(table="t", key=b"a", value=b"1")], nonce)
    two = encode_record(6, [Delete(table="t", key=b"a")], nonce)
    three = encode_record(7, [DeleteRange(table="t", start=b"a", end=b"b")], nonce)
    found = read_records(one + two + three, base=4, after=4, nonce=nonce, where="log")
    assert [r.seq for r in found.records] == [5, 6, 7]
    assert found.records[2].writes == (DeleteRange(table="t", start=b"a", end=b"b"),)
    assert (found.last, found.end) == (7, len(one + two + three))
    # The ones a checkpoint holds are checked and left out.
    found = read_records(one + two + three, base=4, after=6, nonce=nonce, where="log")
    assert [r.seq for r in found.records] == [7]
    assert (found.last, found.end) == (7, len(one + two + three))
    empty = read_records(b"", base=4, after=4, nonce=nonce, where="log")
    assert (empty.records, empty.last, empty.end) == ((), 4, 0)
    with pytest.raises(WalCorrupt, match="where record 5 belongs"):
        read_records(two + three, base=4, after=4, nonce=nonce, where="log")
    with pytest.raises(WalCorrupt, match="where record 5 belongs"):
        read_records(two + three, base=4, after=6, nonce=nonce, where="log")
    with pytest.raises(WalCorrupt, match=r"record 7 at byte \d+ where record 6 belongs"):
        read_records(one + three, base=4, after=4, nonce=nonce, where="log")
    with pytest.raises(WalCorrupt, match="older than the log's base"):
        read_records(one, base=4, after=3, nonce=nonce, where="log")
    # Another nonce: nothing is a record.
    other = read_records(one + two, base=4, after=4, nonce=b"87654321", where="log")
    assert (other.records, other.end) == ((), 0)


def test_a_record_that_checks_but_does_not_decode_is_corruption() -> None:
    nonce = b"12345678"
    payload = msgpack.packb([[9, "t", b"k"]], use_bin_type=True)
    crc = zlib.crc32(payload, zlib.crc32(struct.pack(">QI", 1, len(payload)), zlib.crc32(nonce)))
    record = b"PXQW" + struct.pack(">QII", 1, len(payload), crc) + payload
    with pytest.raises(WalCorrupt, match="does not decode"):
        read_records(record, base=0, after=0, nonce=nonce, where="log")


def _append(s: LmdbStorage, writes: list[Write]) -> None:
    s.apply(writes)
    batch = s.seal()
    assert batch is not None and not batch.checkpoint
    s.written(s.write(batch))


def test_a_checkpoint_runs_beside_appends_and_a_crash_replays_only_what_it_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(checkpoint_batches=100)
    s = open_storage(tmp_path, config)
    checkpointer = ThreadPoolExecutor(1)
    try:
        _append(s, [Put(table="t", key=k(1), value=b"1")])
        _append(s, [Put(table="t", key=k(2), value=b"2")])
        assert s.checkpoint_due() is None  # 2 of 100 batches
        due = s.checkpoint_due(force=True)
        assert due is not None and due.checkpoint and not due.rewind and due.seq == 2
        running = checkpointer.submit(s.checkpoint, due)
        # Appends go on beside it, and reads see everything.
        s.apply([Put(table="t", key=k(3), value=b"3"), Delete(table="t", key=k(1))])
        third = s.seal()
        assert third is not None and not third.checkpoint
        s.written(s.write(third))
        s.written(running.result(T))
        assert s.held == 1 and s.durable_seq == 3  # batch 3 waits for the next checkpoint
        assert dict(s.scan("t")) == {k(2): b"2", k(3): b"3"}
    finally:
        checkpointer.shutdown()
        s.close()  # a crash: batch 3 is in the log only
    caplog.set_level(logging.INFO, logger="pxq.net.storage")
    s = open_storage(tmp_path, config)
    try:
        assert dict(s.scan("t")) == {k(2): b"2", k(3): b"3"}
    finally:
        s.close()
    assert "replaying 1 batch(es) of the write-ahead log (3 to 3)" in caplog.text


def test_a_crash_between_a_checkpoint_and_its_completion_loses_and_replays_nothing_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(checkpoint_batches=100)
    s = open_storage(tmp_path, config)
    _append(s, [Put(table="t", key=b"n", value=b"1")])
    _append(s, [Put(table="t", key=b"n", value=b"2")])
    due = s.checkpoint_due(force=True)
    assert due is not None
    assert s.checkpoint(due).committed  # in LMDB, never announced by written()
    _append(s, [Delete(table="t", key=b"n")])
    s.close()
    caplog.set_level(logging.INFO, logger="pxq.net.storage")
    s = open_storage(tmp_path, config)
    try:
        assert s.get("t", b"n") is None  # batch 3 replayed over the checkpoint of 1 and 2
    finally:
        s.close()
    assert "replaying 1 batch(es) of the write-ahead log (3 to 3)" in caplog.text


def test_opening_a_log_the_checkpoint_holds_writes_nothing_and_appends_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(checkpoint_batches=2)
    s = open_storage(tmp_path, config)
    kinds = _write_batches(s, [[Put(table="t", key=k(i), value=b"v")] for i in range(2)])
    assert kinds == [False, True]  # the checkpoint holds both; the log holds them too
    log_bytes = (tmp_path / WAL_NAME).read_bytes()
    s.close()
    mdb = (tmp_path / "data.mdb").read_bytes()
    caplog.set_level(logging.INFO, logger="pxq.net.storage")
    s = open_storage(tmp_path, config)
    try:
        assert s.checkpoints == 0 and not s.log_full
        assert (tmp_path / "data.mdb").read_bytes() == mdb  # nothing written at open
        assert (tmp_path / WAL_NAME).read_bytes() == log_bytes
        # The next batch is record 3 of the same log, after the first two.
        _write_batches(s, [[Put(table="t", key=k(2), value=b"v")]])
    finally:
        s.close()
    assert "replaying" not in caplog.text
    s = open_storage(tmp_path, config)
    try:
        assert dict(s.scan("t")) == {k(i): b"v" for i in range(3)}
    finally:
        s.close()
    assert "replaying 1 batch(es) of the write-ahead log (3 to 3)" in caplog.text


def test_a_full_log_is_rewound_by_a_checkpoint_taken_while_no_append_runs(
    tmp_path: Path,
) -> None:
    config = NetConfig(checkpoint_batches=100, checkpoint_bytes=100)
    s = open_storage(tmp_path, config)
    wal = tmp_path / WAL_NAME
    try:
        value = b"v" * 60
        for i in range(6):
            if s.log_full:
                break
            _append(s, [Put(table="t", key=k(i), value=value)])
            due = s.checkpoint_due()  # 60 bytes a batch: every second one is due
            if due is not None:
                assert not due.rewind
                s.written(s.checkpoint(due))
        assert s.log_full and s.held <= 1  # 4 x 100 bytes of records
        assert s.checkpoint_due() is None or not s.log_full  # not while an append may run
        rewind = s.checkpoint_due(writer_idle=True)
        assert rewind is not None and rewind.rewind
        s.written(s.checkpoint(rewind))
        assert not s.log_full and s.held == 0
        # LMDB holds everything, and the log is full again: the rewind has no layers.
        written = i
        for j in range(written, written + 10):
            if s.log_full:
                break
            _append(s, [Put(table="t", key=k(j), value=value)])
            due = s.checkpoint_due(force=True)
            if due is not None:
                s.written(s.checkpoint(due))
        assert s.log_full and s.held == 0
        empty = s.checkpoint_due(writer_idle=True)
        assert empty is not None and empty.rewind
        s.written(s.checkpoint(empty))
        assert not s.log_full
        _append(s, [Put(table="t", key=b"last", value=b"x")])
        head = wal.read_bytes()[:HEAD_BYTES]
        assert head[:4] == b"PXQW"
        assert struct.unpack(">Q", head[4:12])[0] == s.durable_seq  # the log starts with it
        expected = dict(s.scan("t"))
    finally:
        s.close()  # a crash: the last batch is in the log only
    s = open_storage(tmp_path, config)
    try:
        assert dict(s.scan("t")) == expected and s.get("t", b"last") == b"x"
    finally:
        s.close()


def test_appends_wait_for_a_checkpoint_that_lags_far_behind(tmp_path: Path) -> None:
    s = open_storage(tmp_path, NetConfig(checkpoint_batches=2, checkpoint_bytes=8 * MIB))
    try:
        for i in range(8):
            assert not s.backlogged
            _append(s, [Put(table="t", key=k(i), value=b"v")])
        assert s.backlogged and s.held == 8  # 4 x 2 batches not in LMDB
        due = s.checkpoint_due()
        assert due is not None and due.seq == 8
        s.written(s.checkpoint(due))
        assert not s.backlogged and s.held == 0
    finally:
        s.close()


def test_the_log_state_of_before_checkpoints_ran_beside_it_is_read(tmp_path: Path) -> None:
    """Until checkpoints ran on their own thread, each rewound the log, and the state was the
    last batch and the nonce alone (16 bytes)."""
    config = NetConfig(checkpoint_batches=100)
    s = open_storage(tmp_path, config)
    _write_batches(s, [[Put(table="t", key=b"a", value=b"1")]])
    s.close()
    env = lmdb.open(str(tmp_path), max_dbs=8, map_size=16 * MIB)
    try:
        db = env.open_db(WAL_TABLE.encode())
        with env.begin(write=True) as txn:
            raw = txn.get(b"state", db=db)
            assert raw is not None and len(raw) == 8 + 8 + 8 + 4
            seq, base = struct.unpack(">QQ", raw[:16])
            assert (seq, base) == (0, 0)
            old = struct.pack(">Q", seq) + raw[16:24]
            seed = zlib.crc32(WAL_TABLE.encode())
            txn.put(
                b"state",
                old + struct.pack(">I", zlib.crc32(old, zlib.crc32(b"state", seed))),
                db=db,
            )
    finally:
        env.close()
    s = open_storage(tmp_path, config)  # replays record 1 under the old state
    try:
        assert s.get("t", b"a") == b"1"
    finally:
        s.close()


def test_the_log_state_table_is_reserved(tmp_path: Path) -> None:
    s = open_storage(tmp_path)
    try:
        with pytest.raises(StorageError, match="reserved"):
            s.apply([Put(table=WAL_TABLE, key=b"state", value=b"x")])
    finally:
        s.close()


def test_the_cluster_files_checkpoint_settings_reach_the_storage(tmp_path: Path) -> None:
    cluster = loads_config(default_toml(tls=False) + "[storage]\ncheckpoint_batches = 2\n")
    config = NetConfig.for_cluster(cluster, node="s0")
    assert config.checkpoint_batches == 2
    s = open_storage(tmp_path, config)
    try:
        kinds = _write_batches(s, [[Put(table="t", key=k(i), value=b"v")] for i in range(4)])
        assert kinds == [False, True, False, True]
    finally:
        s.close()
    with pytest.raises(ValueError, match="checkpoint_batches must be positive"):
        NetConfig(checkpoint_batches=0)
