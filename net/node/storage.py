"""LMDB storage of one node: the production ``StorageView`` and its group-committed writes.

``LmdbStorage`` owns one LMDB environment per node data dir and everything about it:

* the data dir itself: created if missing, private (0700, its files 0600, wider modes found
  tightened and logged: ``net.files``), locked against a second opener (``flock`` on
  ``pxq-node.lock``: a second process, or a second runner in this process, fails to start
  instead of becoming a second writer), and stamped with a marker (``pxq-node.json``) that
  records the cluster id and node name, so that a node is never started on another node's
  state;
* one named database per table, created on first ``Put`` (bounded by
  ``NetConfig.tables_max``);
* values sealed with a CRC-32 suffix computed over the table name, the key and the value,
  checked on every read (a mismatch raises ``StorageCorruption``);
* writes in layers, durable in order. ``apply`` adds one step's writes to the *open batch*,
  an in-memory layer (per table a ``pxq.sorted_table.PendingTable``: values and tombstones
  with sorted keys, plus the deleted ranges). ``seal`` closes it and numbers it (1, 2, ...);
  ``write`` makes a sealed batch durable and may run on a dedicated writer thread: it
  appends the batch to the node's write-ahead log and syncs that (``net.node.wal``: one
  write and one fdatasync). Batches durable in the log move into LMDB in a *checkpoint*:
  ``checkpoint_due`` hands out one once they number ``NetConfig.checkpoint_batches`` or hold
  ``checkpoint_bytes`` (or when the caller forces it: the runner does
  ``checkpoint_interval_ms`` after a batch went to the log), and ``checkpoint`` commits them
  in one LMDB transaction (``sync=True``: fdatasync of the data, then a synchronous meta
  page write) that also records the number of the last one. It may run on a second thread,
  beside the appends, which it does not wait for. Once the log has grown past
  ``LOG_REWIND_CHECKPOINTS`` times ``checkpoint_bytes``, the caller stops appending
  (``log_full``) and the next checkpoint, taken with no append running, *rewinds* the log:
  it holds every batch the log holds, draws the log's next nonce, and the log starts over.
  With ``checkpoint_batches = 1`` there is no log: every sealed batch is such a checkpoint,
  written by ``write``. ``written`` (back on the owner's thread) advances ``durable_seq``;
  after a checkpoint it drops its layers from the overlay. Reads (``get``, ``scan``) look
  through the open layer, then the sealed layers newest first (those durable in the log
  included), then a read transaction on LMDB renewed after each checkpoint: a node reads
  its own writes whether they are durable or not (read-your-writes, as ``pxq.effects``
  requires). ``commit`` seals everything and rewinds at once on the calling thread (tests,
  tools, a runner's final turn, so that a clean stop leaves nothing in the log). Opening a
  data dir writes the log's batches that the last checkpoint does not hold into LMDB (a
  rewinding checkpoint) before anything else.
  The runner (``net.node.runner``) seals all steps of one loop turn into one batch (group commit)
  and keeps stepping while the writer thread syncs it;
* a full map: a checkpoint's ``write`` reports it before anything is written (a batch in the
  log is durable without LMDB); ``written`` doubles the map
  (up to ``NetConfig.map_size_max_bytes``) on the owner's thread, where no read transaction
  is then open, and the batch is written again; when the map cannot grow, ``StorageFull`` is
  raised with every batch not yet durable dropped (the ones durable in the log stay: the
  next incarnation replays them, growing the map past its maximum if need be). That is the
  last resort: the runner
  refuses enqueues well before, from ``space()`` (``StorageSpace``): the pages in use by the
  tables (from LMDB's per-database statistics, so space that retention freed counts as free
  again although the file never shrinks), against the map maximum and the filesystem.
  ``map_size_max_bytes`` is the *limit* ``space()`` measures against; the map's *ceiling*
  (how far ``written`` may grow it) is the same, except that ``allow_room`` raises it for a
  node that starts over its limit (``net.node.runner``): its map then holds what it holds
  plus the reserve, so that the writes that free space (cursor commits, retention) fit
  instead of stopping the node at its first write of every incarnation.

Threads: ``write`` and ``checkpoint`` touch nothing the other methods change, and LMDB is
opened with ``MDB_NOTLS`` (py-lmdb always does), so a read transaction on the owner's thread
and the write transaction of a checkpoint on another thread coexist. Everything else belongs
to one thread. At most one ``write`` runs at a time, in sealing order, and at most one
``checkpoint``, beside it unless it rewinds; a ``write`` that is a checkpoint (no log) runs
alone. Nothing else (``close`` included) may run while either is running.

LMDB keys are 1 to 511 bytes: a ``Put`` of an empty or longer key raises ``StorageError``;
reads and deletes of such keys find nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, assert_never
from zlib import crc32

import lmdb

from net.config import NetConfig
from net.errors import DataDirError, DataDirMismatch, StorageError, StorageFull
from net.files import FILE_MODE, private_dir
from net.node.wal import NONCE_BYTES, WalContents, WalFile, encode_record
from pxq.config.identity import describe_cluster
from pxq.effects import Delete, DeleteRange, Put, StorageCorruption, Write
from pxq.sorted_table import MISSING, PendingTable

MARKER_NAME: Final = "pxq-node.json"
"""The file in a data dir naming the cluster and node it belongs to."""
MARKER_FORMAT: Final = 1
LOCK_NAME: Final = "pxq-node.lock"
"""The file locked (``flock``) by the process that has the data dir open."""
DATA_NAME: Final = "data.mdb"
DAMAGED_NAME: Final = "pxq-damaged.json"
"""Records that failed their checksum, noted by the runner for the next ``Boot.damaged``."""
"""LMDB's data file inside the data dir."""

log = logging.getLogger("pxq.net.storage")

_MAP_ALIGN_BYTES: Final = 64 * 1024
"""A ceiling raised by ``allow_room`` is a multiple of this (of every OS page size)."""

_CRC = struct.Struct(">I")
_CRC_BYTES = _CRC.size

WAL_TABLE: Final = "pxq.wal"
"""The table where each checkpoint records the log's state (no node may use this name)."""
_WAL_KEY: Final = b"state"
_WAL_STATE = struct.Struct(">QQ")  # the last batch LMDB holds, the log's base; the nonce follows
_WAL_STATE_V1 = struct.Struct(">Q")  # before checkpoints ran beside the log: base = last batch
_WAL_SEED: Final = crc32(WAL_TABLE.encode())
_RECOVERY_GROWS_MAX: Final = 40
LOG_REWIND_CHECKPOINTS: Final = 4
"""The log is rewound once it holds this many times ``checkpoint_bytes``."""
BACKLOG_CHECKPOINTS: Final = 4
"""Appends wait while the batches not in LMDB number this many times ``checkpoint_batches``
or hold this many times ``checkpoint_bytes`` (a checkpoint lagging behind the log)."""


@dataclass(frozen=True, slots=True)
class _Table:
    db: lmdb._Database
    crc_seed: int  # CRC-32 of the table name, the start of every value's checksum


class _Layer:
    """The writes of one future transaction, readable before they are durable.

    ``writes`` keeps them in order for the transaction; ``tables`` answers reads, one
    ``PendingTable`` per table written: within a layer a key's latest ``Put``/``Delete`` wins
    over the layer's ``DeleteRange``s, and the ranges hide the keys of the layers below.
    """

    __slots__ = ("bytes", "seq", "tables", "writes")

    def __init__(self) -> None:
        self.seq = 0  # set when sealed
        self.writes: list[Write] = []
        self.tables: dict[str, PendingTable] = {}
        self.bytes = 0

    def add(self, w: Write) -> None:
        self.writes.append(w)
        if isinstance(w, Put):  # nearly every write: no match statement for it
            table, key, value = w.table, w.key, w.value
            t = self.tables.get(table)
            if t is None:
                t = self.tables[table] = PendingTable()
            t.set(key, value)
            self.bytes += len(key) + len(value)
            return
        match w:
            case Delete(table=table, key=key):
                t = self.tables.get(table)
                if t is None:
                    t = self.tables[table] = PendingTable()
                t.set(key, None)
                self.bytes += len(key)
            case DeleteRange(table=table, start=start, end=end):
                if start < end:
                    t = self.tables.get(table)
                    if t is None:
                        t = self.tables[table] = PendingTable()
                    t.delete_range(start, end)
                    self.bytes += len(start) + len(end)
            case _:
                assert_never(w)


class SealedBatch:
    """The writes handed to one ``write`` (``LmdbStorage.seal``) or ``checkpoint``
    (``LmdbStorage.checkpoint_due``); opaque to callers. A checkpoint batch carries the
    layers it moves into LMDB, up to its own (oldest first)."""

    __slots__ = ("_checkpoint", "_layer", "_rewind")

    def __init__(
        self,
        layer: _Layer,
        checkpoint: tuple[_Layer, ...] | None = None,
        *,
        rewind: bool = False,
    ) -> None:
        self._layer = layer
        self._checkpoint = checkpoint
        self._rewind = rewind

    @property
    def checkpoint(self) -> bool:
        """Whether this batch commits its layers to LMDB, rather than appending one to the
        write-ahead log."""
        return self._checkpoint is not None

    @property
    def rewind(self) -> bool:
        """Whether this checkpoint also starts the log over (no append may run beside it)."""
        return self._rewind

    @property
    def seq(self) -> int:
        """Batches are numbered 1, 2, ... in sealing order; they must commit in that order."""
        return self._layer.seq

    @property
    def writes(self) -> int:
        return len(self._layer.writes)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSpace:
    """How much more the node's LMDB can hold (``LmdbStorage.space``), in bytes.

    ``used_bytes`` counts the pages of every table's B-tree (branch, leaf and overflow pages),
    of the main database that names the tables, and the two meta pages; pages that deletes
    freed are not in it (LMDB reuses them). LMDB's own free-page list is not counted either;
    the runner's reserve covers it. ``fs_free_bytes`` is what the filesystem of the data dir
    still grants this user (None if ``statvfs`` failed: the disk is then not a limit here)."""

    used_bytes: int
    map_max_bytes: int
    file_bytes: int
    fs_free_bytes: int | None

    def __post_init__(self) -> None:
        if min(self.used_bytes, self.map_max_bytes, self.file_bytes) < 0 or (
            self.fs_free_bytes is not None and self.fs_free_bytes < 0
        ):
            raise ValueError(f"negative figure in {self}")

    @property
    def map_room_bytes(self) -> int:
        """What the map may still take before it reaches ``map_size_max_bytes``."""
        return max(0, self.map_max_bytes - self.used_bytes)

    @property
    def disk_room_bytes(self) -> int | None:
        """Free filesystem space plus the free pages inside the data file (reusable without
        growing it); None if the filesystem could not be asked."""
        if self.fs_free_bytes is None:
            return None
        return self.fs_free_bytes + max(0, self.file_bytes - self.used_bytes)

    @property
    def limit(self) -> str:
        """Which bound is the nearer one: ``"map"`` or ``"disk"``."""
        disk = self.disk_room_bytes
        return "disk" if disk is not None and disk < self.map_room_bytes else "map"

    @property
    def available_bytes(self) -> int:
        """The smaller of the map's and the disk's room."""
        disk = self.disk_room_bytes
        return self.map_room_bytes if disk is None else min(self.map_room_bytes, disk)

    @property
    def capacity_bytes(self) -> int:
        """The most this LMDB could hold now: what it uses plus what is available."""
        return self.used_bytes + self.available_bytes

    def describe(self) -> str:
        """The figures in words, naming the nearer limit (for logs and error messages)."""
        mib = 1024 * 1024
        if self.limit == "map":
            where = f"LMDB map limit NetConfig.map_size_max_bytes={self.map_max_bytes}"
        else:
            where = f"disk of the data dir ({(self.fs_free_bytes or 0) / mib:.1f} MiB free)"
        return (
            f"{self.available_bytes / mib:.1f} MiB available before the {where}; "
            f"{self.used_bytes / mib:.1f} MiB in use"
        )


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What ``LmdbStorage.write`` did with a batch: made it durable (a checkpoint: with the
    tables it created), or not, because the map was full (only a checkpoint; nothing was
    written: grow and write it again)."""

    batch: SealedBatch
    committed: bool
    new_tables: dict[str, lmdb._Database]


class LmdbStorage:
    """One node's LMDB environment: a ``StorageView`` plus ``apply``/``commit`` (see the
    module docstring for the layers and the writer-thread protocol)."""

    __slots__ = (
        "_checkpoint_batches",
        "_checkpoint_bytes",
        "_chunk",
        "_closed",
        "_env",
        "_failed",
        "_held_bytes",
        "_key_max",
        "_lmdb_seq",
        "_lock_fd",
        "_log_base",
        "_main_db",
        "_map_limit",
        "_map_size",
        "_map_size_max",
        "_next_seq",
        "_nonce",
        "_open",
        "_pending_tables",
        "_rtxn",
        "_sealed",
        "_tables",
        "_tables_max",
        "_wal",
        "_wal_base",
        "_wal_db",
        "checkpoints",
        "commits",
        "committed_bytes",
        "durable_seq",
        "map_grows",
        "path",
        "rewinds",
    )

    def __init__(
        self,
        *,
        path: Path,
        env: lmdb.Environment,
        lock_fd: int,
        tables: dict[str, _Table],
        config: NetConfig,
        wal: WalFile,
        wal_db: lmdb._Database,
        wal_seq: int,
        log_base: int,
        nonce: bytes,
    ) -> None:
        """Use ``LmdbStorage.open``."""
        self.path = path
        self._env = env
        self._lock_fd = lock_fd
        self._tables = tables
        self._tables_max = config.tables_max
        self._chunk = config.scan_chunk_items
        self._map_size = env.info()["map_size"]
        self._map_limit = config.map_size_max_bytes
        self._map_size_max = max(config.map_size_max_bytes, self._map_size)  # the ceiling
        self._key_max = env.max_key_size()
        self._main_db = env.open_db(None)  # the database naming the tables (for space())
        self._rtxn: lmdb.Transaction[bytes] | None = None
        self._open = _Layer()  # writes applied since the last seal
        self._sealed: deque[_Layer] = deque()  # sealed, not yet in LMDB; oldest first
        self._held_bytes = 0  # the bytes of the layers in _sealed
        self._pending_tables: set[str] = set()  # tables written by a layer, not in LMDB yet
        self._next_seq = 1
        self._failed: str | None = None
        self._closed = False
        self.commits = 0
        self.committed_bytes = 0
        """Key and value bytes of the batches committed so far (as counted by the layers)."""
        self.durable_seq = 0
        """The last batch known durable (``written`` of it returned)."""
        self.map_grows = 0
        self._wal = wal
        self._wal_db = wal_db
        self._wal_base = wal_seq  # the log's number of this incarnation's batch 0
        self._log_base = log_base  # the log's number of the record before its first
        self._nonce = nonce  # what the log's records are checksummed with (net.node.wal)
        self._lmdb_seq = 0  # the last batch LMDB holds (a checkpoint's)
        self._checkpoint_batches = config.checkpoint_batches
        self._checkpoint_bytes = config.checkpoint_bytes
        self.checkpoints = 0
        self.rewinds = 0
        """Checkpoints that started the log over (the one at opening included)."""

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        *,
        cluster: str,
        node: str,
        config: NetConfig,
        replace: bool = False,
        cluster_id: str = "",
    ) -> LmdbStorage:
        """Open (creating if needed) the data dir of ``node`` in ``cluster`` (whose id is
        ``cluster_id``, "" for none).

        Raises ``DataDirError`` if the dir cannot be created, read or written, is locked by
        another opener, holds LMDB data without a marker, or holds a marker without LMDB data
        (the node lost its data: unless ``replace``, the operator's word that the node is
        its own replacement, see ``pxq.paxos.repair``); ``DataDirMismatch`` if its marker
        names another cluster (name or id) or node. Once LMDB has created its files, the dir and its
        parent are fsynced, so that their entries survive a power loss.
        """
        if not cluster or not node:
            raise ValueError("cluster and node must be non-empty")
        path = Path(data_dir)
        _prepare_dir(path)
        lock_fd = _lock_dir(path)
        try:
            _check_marker(path, cluster=cluster, node=node, replace=replace, cluster_id=cluster_id)
            try:
                env = lmdb.open(
                    str(path),
                    map_size=config.map_size_bytes,
                    max_dbs=config.tables_max + 1,  # and the log's state
                    subdir=True,
                    sync=True,
                    metasync=True,  # an acceptor's promise must survive a crash
                    writemap=False,
                    lock=True,
                    mode=FILE_MODE,  # data.mdb and lock.mdb (net.files)
                )
            except lmdb.Error as exc:
                raise DataDirError(f"cannot open the LMDB environment in {path}: {exc}") from exc
            try:
                tables = _existing_tables(env, path)
                wal_db = _open_wal_db(env, path)
                wal_seq, log_base, nonce = _wal_state(env, wal_db, path)
                wal, contents = WalFile.open(
                    path, base=log_base, after=wal_seq, nonce=nonce, mode=FILE_MODE
                )
            except BaseException:
                env.close()
                raise
            try:
                _fsync_dir(path)  # LMDB's files and the log exist durably
                _fsync_dir(path.resolve().parent)
                storage = cls(
                    path=path,
                    env=env,
                    lock_fd=lock_fd,
                    tables=tables,
                    config=config,
                    wal=wal,
                    wal_db=wal_db,
                    wal_seq=wal_seq,
                    log_base=log_base,
                    nonce=nonce,
                )
            except BaseException:
                wal.close()
                env.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            storage._recover(contents)
        except BaseException:
            storage.close()
            raise
        return storage

    def _recover(self, contents: WalContents) -> None:
        """Write the log's records that the last checkpoint does not hold into LMDB in one
        rewinding checkpoint. The map grows as far as the records need, past
        ``map_size_max_bytes`` if need be: they are acknowledged writes (the node then starts
        short of space, see ``allow_room``). Without such records, nothing is written
        (opening a data dir to read it syncs nothing) and the log goes on after its last
        record, unless the log has no nonce yet (a new data dir, or one from before the
        log), or its records stop short of the checkpoint (damage in what LMDB holds
        anyway: the numbering would break)."""
        records = contents.records
        if not records and self._nonce and contents.last == self._wal_base:
            return
        for record in records:
            self._open.writes.extend(record.writes)
        if records:
            log.info(
                "%s: replaying %d batch(es) of the write-ahead log (%d to %d) into LMDB",
                self.path,
                len(records),
                records[0].seq,
                records[-1].seq,
            )
            self._wal_base = records[-1].seq
        layer = self._open
        layer.seq = 0
        self._open = _Layer()
        batch = SealedBatch(layer, checkpoint=(layer,), rewind=True)
        for _ in range(_RECOVERY_GROWS_MAX):
            outcome = self._checkpoint_write(batch, self._wal_base)
            if outcome.committed:
                break
            # Acknowledged writes: the ceiling moves with them (see the docstring).
            self._map_size_max = max(self._map_size_max, self._map_size * 2)
            self._grow()
        else:
            raise self._fail(
                f"the write-ahead log's batches do not fit the LMDB map of {self._map_size} bytes",
                full=True,
            )
        self._wal.reset()
        self._drop_rtxn()
        for name, db in outcome.new_tables.items():
            self._tables[name] = _Table(db=db, crc_seed=crc32(name.encode()))
        self.checkpoints += 1
        self.rewinds += 1

    # -- StorageView --------------------------------------------------------------------------

    def get(self, table: str, key: bytes) -> bytes | None:
        """The value under ``key`` in ``table``, including writes not yet durable."""
        if not 0 < len(key) <= self._key_max:
            return None
        pending = self._open.tables.get(table)
        if pending is not None:
            found = pending.lookup(key)
            if found is not MISSING:
                return found
        for layer in reversed(self._sealed):
            pending = layer.tables.get(table)
            if pending is not None:
                found = pending.lookup(key)
                if found is not MISSING:
                    return found
        t = self._tables.get(table)
        if t is None:
            return None
        raw = self._read_txn().get(key, db=t.db)
        if raw is None:
            return None
        return _unseal(table, t.crc_seed, key, raw)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order (descending with ``reverse``),
        including writes not yet durable.

        Reads ``scan_chunk_items`` pairs per cursor positioning and re-seeks after the last
        key for the next chunk, so an iterator survives commits made while it is open;
        later chunks see them.
        """
        it = (
            self._scan_reverse(table, start, end)
            if reverse
            else self._scan_forward(table, start, end)
        )
        for layer in self._sealed:
            pending = layer.tables.get(table)
            if pending is not None:
                it = pending.over(it, start, end, reverse)
        pending = self._open.tables.get(table)
        if pending is not None:
            it = pending.over(it, start, end, reverse)
        return it

    def _scan_forward(
        self, table: str, start: bytes, end: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        chunk_max = self._chunk
        after: bytes | None = None
        while True:
            t = self._tables.get(table)
            if t is None:
                return
            chunk: list[tuple[bytes, bytes]] = []
            cursor = self._read_txn().cursor(t.db)
            try:
                if after is None:
                    found = cursor.set_range(start) if start else cursor.first()
                else:
                    found = cursor.set_range(after)
                    if found and cursor.key() == after:
                        found = cursor.next()
                if found:
                    for key, raw in cursor.iternext():
                        if end is not None and key >= end:
                            break
                        chunk.append((key, raw))
                        if len(chunk) >= chunk_max:
                            break
            finally:
                cursor.close()
            for key, raw in chunk:
                yield key, _unseal(table, t.crc_seed, key, raw)
            if len(chunk) < chunk_max:
                return
            after = chunk[-1][0]

    def _scan_reverse(
        self, table: str, start: bytes, end: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        chunk_max = self._chunk
        below: bytes | None = end  # every key yielded is < below (None: no bound yet)
        while True:
            t = self._tables.get(table)
            if t is None or below == b"":
                return
            chunk: list[tuple[bytes, bytes]] = []
            cursor = self._read_txn().cursor(t.db)
            try:
                if below is None:
                    found = cursor.last()
                else:
                    # The first key >= below, then one step back; or the last key if all
                    # keys are below the bound.
                    found = cursor.prev() if cursor.set_range(below) else cursor.last()
                if found:
                    for key, raw in cursor.iterprev():
                        if key < start:
                            break
                        chunk.append((key, raw))
                        if len(chunk) >= chunk_max:
                            break
            finally:
                cursor.close()
            for key, raw in chunk:
                yield key, _unseal(table, t.crc_seed, key, raw)
            if len(chunk) < chunk_max:
                return
            below = chunk[-1][0]

    # -- writes -------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether writes were applied since the last seal (or commit)."""
        return bool(self._open.writes)

    @property
    def held(self) -> int:
        """Sealed batches LMDB does not hold yet (durable in the log, or not yet durable)."""
        return len(self._sealed)

    @property
    def unwritten(self) -> int:
        """Sealed batches not yet durable (being written, or waiting for their turn)."""
        return sum(1 for layer in self._sealed if layer.seq > self.durable_seq)

    @property
    def overlay_bytes(self) -> int:
        """Key and value bytes held in memory until a checkpoint puts them in LMDB (all
        layers: the open one, those sealed, those durable in the log)."""
        return self._open.bytes + self._held_bytes

    @property
    def horizon_seq(self) -> int:
        """The batch that will hold the last write applied so far: the open batch's number if
        it has writes, else the last sealed one's (``durable_seq`` if all are durable). Output
        that may depend on what was read is safe to release once ``durable_seq`` reaches it."""
        if self._open.writes:
            return self._next_seq
        return self._sealed[-1].seq if self._sealed else self.durable_seq

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return self._map_size

    def space(self) -> StorageSpace:
        """Measure the space in use and still available (``StorageSpace``), as of the last
        commit. Costs one statistics read per table, a ``stat`` of the data file and a
        ``statvfs`` of the data dir: call it now and then, not per request. Raises
        ``StorageError`` if LMDB cannot be read (the storage is then unusable)."""
        txn = self._read_txn()
        try:
            main = txn.stat(self._main_db)
            pages = 2 + main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
            for t in self._tables.values():
                st = txn.stat(t.db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        except lmdb.Error as exc:
            raise self._fail(f"cannot read the LMDB statistics: {exc}") from exc
        try:
            file_bytes = os.stat(self.path / DATA_NAME).st_size
        except OSError:
            file_bytes = 0  # no file yet: nothing inside it to reuse
        try:
            vfs = os.statvfs(self.path)
            fs_free: int | None = vfs.f_bavail * vfs.f_frsize
        except OSError:
            fs_free = None
        return StorageSpace(
            used_bytes=pages * main["psize"],
            map_max_bytes=self._map_limit,
            file_bytes=file_bytes,
            fs_free_bytes=fs_free,
        )

    @property
    def map_ceiling(self) -> int:
        """How far the map may grow (``map_size_max_bytes``, unless ``allow_room`` raised it)."""
        return self._map_size_max

    def allow_room(self, room_bytes: int) -> int:
        """Let the map grow to hold ``room_bytes`` more than the tables use now (``space()``),
        past ``map_size_max_bytes`` if need be, and return the new ceiling. The limit that
        ``space()`` reports does not move: the node stays short until its data is back under
        it. Only the map is raised; a full filesystem stays full."""
        if room_bytes < 0:
            raise ValueError(f"room_bytes must be >= 0, got {room_bytes}")
        wanted = self.space().used_bytes + room_bytes
        wanted += -wanted % _MAP_ALIGN_BYTES
        self._map_size_max = max(self._map_size_max, wanted)
        return self._map_size_max

    def apply(self, writes: Iterable[Write]) -> None:
        """Add one step's writes to the open batch, in order; reads see them at once.

        Raises ``StorageError`` for a write LMDB can never store (a ``Put`` key that is empty
        or longer than LMDB's limit, a table name out of bounds, more tables than
        ``NetConfig.tables_max``); the storage is then unusable.
        """
        self._check_usable()
        layer = self._open
        key_max = self._key_max
        for w in writes:
            if type(w) is Put:
                if not 0 < len(w.key) <= key_max:
                    raise self._fail(
                        f"Put of a {len(w.key)}-byte key in table {w.table!r}: LMDB keys are "
                        f"1 to {key_max} bytes"
                    )
                table = w.table
                if table not in self._tables and table not in self._pending_tables:
                    self._admit_table(table)
            elif type(w) is Delete and not 0 < len(w.key) <= key_max:
                continue  # LMDB holds no such key: nothing to delete
            layer.add(w)

    def _admit_table(self, table: str) -> None:
        if table == WAL_TABLE:
            raise self._fail(f"table name {table!r} is reserved for the write-ahead log")
        name = table.encode()
        if not 0 < len(name) <= self._key_max:
            raise self._fail(f"table name {table!r} must be 1 to {self._key_max} bytes")
        if len(self._tables) + len(self._pending_tables) >= self._tables_max:
            raise self._fail(
                f"table {table!r} would exceed NetConfig.tables_max "
                f"({len(self._tables) + len(self._pending_tables)} exist)"
            )
        self._pending_tables.add(table)

    def seal(self, *, checkpoint: bool = False) -> SealedBatch | None:
        """Close the open batch (None if it has no writes); later writes go to a new one.
        The sealed batch stays readable until a checkpoint has put it in LMDB.

        ``write`` appends it to the log, unless there is no log (``checkpoint_batches``
        is 1) or ``checkpoint`` is asked: it is then a rewinding checkpoint of every layer
        LMDB lacks, which ``write`` commits to LMDB. With ``checkpoint`` and no open
        writes, the batch is a rewinding checkpoint of the layers already sealed (None if
        LMDB holds everything and the log is empty). A checkpoint is sealed only when no
        ``write`` or ``checkpoint`` runs."""
        self._check_usable()
        layer = self._open
        if not layer.writes:
            if checkpoint and (self._sealed or self._wal.offset):
                return self._rewind_batch()
            return None
        layer.seq = self._next_seq
        self._next_seq += 1
        self._sealed.append(layer)
        self._held_bytes += layer.bytes
        self._open = _Layer()
        if checkpoint or self._checkpoint_batches == 1:
            return self._rewind_batch()
        return SealedBatch(layer)

    def _rewind_batch(self) -> SealedBatch:
        """A checkpoint of every sealed layer that also rewinds the log; no append runs."""
        sealed = self._sealed
        if sealed:
            return SealedBatch(sealed[-1], checkpoint=tuple(sealed), rewind=True)
        # LMDB holds everything: the checkpoint only records that and starts the log over.
        empty = _Layer()
        empty.seq = self.durable_seq
        return SealedBatch(empty, checkpoint=(), rewind=True)

    @property
    def log_full(self) -> bool:
        """Whether the log must be rewound before the next append: the caller waits for the
        running append to finish, then takes the checkpoint ``checkpoint_due`` hands out."""
        return self._wal.offset >= LOG_REWIND_CHECKPOINTS * self._checkpoint_bytes

    @property
    def backlogged(self) -> bool:
        """Whether the batches LMDB lacks are so many that appends should wait for the
        running checkpoint (``BACKLOG_CHECKPOINTS``): reads look through every one."""
        return len(self._sealed) >= BACKLOG_CHECKPOINTS * self._checkpoint_batches or (
            self._held_bytes >= BACKLOG_CHECKPOINTS * self._checkpoint_bytes
        )

    def checkpoint_due(
        self, *, force: bool = False, writer_idle: bool = False
    ) -> SealedBatch | None:
        """A checkpoint of the batches durable in the log (for ``checkpoint``), if one is
        due: they number ``checkpoint_batches`` or hold ``checkpoint_bytes``, or ``force``
        and there is any. If the log is full (``log_full``) and ``writer_idle`` (no
        ``write`` runs, so every sealed batch is durable), a rewinding checkpoint of all of
        them, due even if LMDB holds them all. None otherwise, and always without a log
        (``checkpoint_batches`` 1). Not to be called while a ``checkpoint`` runs."""
        self._check_usable()
        if self._checkpoint_batches == 1:
            return None
        if writer_idle and self.log_full:
            if self.unwritten:
                raise StorageError("a rewind was asked with batches not yet durable")
            return self._rewind_batch()
        durable = self.durable_seq
        layers: list[_Layer] = []
        size = 0
        for layer in self._sealed:
            if layer.seq > durable:
                break
            layers.append(layer)
            size += layer.bytes
        if not layers:
            return None
        if force or len(layers) >= self._checkpoint_batches or size >= self._checkpoint_bytes:
            return SealedBatch(layers[-1], checkpoint=tuple(layers))
        return None

    def write(self, batch: SealedBatch) -> WriteOutcome:
        """Make a sealed ``batch`` durable: append it to the write-ahead log and sync that
        (one fdatasync), or, for a checkpoint batch, ``checkpoint`` it. May run on another
        thread than every other method (one call at a time, in sealing order); touches no
        state the other methods change.

        Returns ``committed=False`` if a checkpoint finds the map full (nothing written: the
        caller grows the map with ``written`` and writes the batch again). Raises
        ``StorageError`` on any other failure (``StorageFull`` for a full disk); nothing of
        the batch is then durable as far as the caller can tell, and the storage must not be
        used again.
        """
        if batch._checkpoint is not None:
            return self.checkpoint(batch)
        layer = batch._layer
        self._wal.append(encode_record(self._wal_base + layer.seq, layer.writes, self._nonce))
        return WriteOutcome(batch=batch, committed=True, new_tables={})

    def checkpoint(self, batch: SealedBatch) -> WriteOutcome:
        """Commit a checkpoint batch's layers to LMDB in one durable transaction (fdatasync
        of the data, then the synchronous meta page write), recording the number of its
        last batch; a rewind also records the log's new base and nonce, then starts the log
        over. May run on another thread, beside a ``write`` unless it rewinds. Returns and
        raises as ``write`` does."""
        outcome = self._checkpoint_write(batch, self._wal_base + batch._layer.seq)
        if outcome.committed and batch._rewind:
            self._wal.reset()
        return outcome

    def _checkpoint_write(self, batch: SealedBatch, wal_seq: int) -> WriteOutcome:
        """The LMDB transaction of a checkpoint (see ``checkpoint``)."""
        if batch._checkpoint is None:
            raise StorageError(f"batch {batch.seq} is not a checkpoint")
        if batch._rewind:
            nonce, base = os.urandom(NONCE_BYTES), wal_seq
        else:
            nonce, base = self._nonce, self._log_base
        new_tables: dict[str, lmdb._Database] = {}
        try:
            txn = self._env.begin(write=True)
        except lmdb.Error as exc:
            raise StorageError(f"cannot begin a transaction: {exc}") from exc
        try:
            for layer in batch._checkpoint:
                if layer.seq > self._lmdb_seq or layer.seq == 0:
                    self._write_all(txn, layer.writes, new_tables)
            state = _WAL_STATE.pack(wal_seq, base) + nonce
            txn.put(
                _WAL_KEY,
                state + _CRC.pack(crc32(state, crc32(_WAL_KEY, _WAL_SEED))),
                db=self._wal_db,
            )
            txn.commit()
        except lmdb.MapFullError:
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            return WriteOutcome(batch=batch, committed=False, new_tables={})
        except lmdb.Error as exc:
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            if isinstance(exc, lmdb.DiskError) or _is_enospc(exc):
                raise StorageFull(f"disk full during commit: {exc}") from exc
            raise StorageError(f"commit failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            raise
        self._nonce, self._log_base = nonce, base
        return WriteOutcome(batch=batch, committed=True, new_tables=new_tables)

    def written(self, outcome: WriteOutcome) -> None:
        """Take the result of ``write`` or ``checkpoint`` into account (on the thread that
        applies and reads).

        ``durable_seq`` advances to a durable batch. A checkpoint's layers leave the overlay
        (reads now find them in LMDB); a batch in the log stays in it until a checkpoint. For
        an uncommitted checkpoint (full map) the map is doubled, up to
        ``NetConfig.map_size_max_bytes``; at the maximum ``StorageFull`` is raised and every
        batch not yet durable is dropped (the storage stays usable with what is durable).
        """
        self._check_usable()
        batch = outcome.batch
        checkpoint = batch._checkpoint
        if checkpoint is None:
            in_order = batch.seq == self.durable_seq + 1 and batch._layer in self._sealed
        elif checkpoint:
            in_order = bool(self._sealed) and self._sealed[0] is checkpoint[0]
        else:  # a rewind of a log that LMDB holds all of
            in_order = not self._sealed
        if not in_order:
            raise self._fail(f"batch {batch.seq} completed out of order")
        if not outcome.committed:
            self._grow()
            return
        self.commits += 1
        if checkpoint is None:
            self.durable_seq = batch.seq
            self.committed_bytes += batch._layer.bytes
            return
        sealed = self._sealed
        while sealed and sealed[0].seq <= batch.seq:
            layer = sealed.popleft()
            self._held_bytes -= layer.bytes
            if layer.seq > self.durable_seq:
                self.committed_bytes += layer.bytes
        self._drop_rtxn()  # the next read sees the new commit
        for name, db in outcome.new_tables.items():
            self._tables[name] = _Table(db=db, crc_seed=crc32(name.encode()))
            self._pending_tables.discard(name)
        self.durable_seq = max(self.durable_seq, batch.seq)
        self._lmdb_seq = batch.seq
        self.checkpoints += 1
        self.rewinds += batch._rewind

    def commit(self) -> bool:
        """Make every applied write durable now, on this thread; False if there were none.

        Raises ``StorageFull`` (the map could not grow: nothing of the uncommitted writes is
        left, the storage stays usable) or ``StorageError`` (the storage is unusable). A
        failed commit is never retried, except after a full map, which LMDB reports before
        writing anything. Not to be called while a ``write`` runs on another thread.
        """
        self._check_usable()
        batch = self.seal(checkpoint=True)
        if batch is None:
            return False
        while True:  # bounded: a full map doubles, up to its ceiling, then StorageFull
            try:
                outcome = self.write(batch)
            except StorageFull as exc:
                raise self._fail(str(exc), full=True) from exc
            except StorageError as exc:
                raise self._fail(str(exc)) from exc
            self.written(outcome)
            if outcome.committed:
                return True

    def abort(self) -> None:
        """Discard every write not yet durable (the open batch, sealed ones not written);
        what is durable in the log stays readable."""
        self._open = _Layer()
        sealed = self._sealed
        while sealed and sealed[-1].seq > self.durable_seq:
            self._held_bytes -= sealed.pop().bytes
        self._next_seq = self.durable_seq + 1  # the dropped numbers are taken again
        self._pending_tables = {
            table for layer in sealed for table in layer.tables if table not in self._tables
        }

    def close(self) -> None:
        """Drop writes not yet durable, close the environment and release the data dir lock.
        No ``write`` may be running on another thread."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self._drop_rtxn()
        self._wal.close()
        self._env.close()
        os.close(self._lock_fd)

    # -- internals ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"storage of {self.path} is closed")
        if self._failed is not None:
            raise StorageError(f"storage of {self.path} failed earlier: {self._failed}")

    def _read_txn(self) -> lmdb.Transaction[bytes]:
        txn = self._rtxn
        if txn is None:
            self._check_usable()
            try:
                txn = self._rtxn = self._env.begin(write=False)
            except lmdb.Error as exc:
                raise self._fail(f"cannot begin a read transaction: {exc}") from exc
        return txn

    def _drop_rtxn(self) -> None:
        txn, self._rtxn = self._rtxn, None
        if txn is not None:
            with contextlib.suppress(lmdb.Error):
                txn.abort()

    def _write_all(
        self,
        txn: lmdb.Transaction[bytes],
        writes: list[Write],
        new_tables: dict[str, lmdb._Database],
    ) -> None:
        tables = self._tables
        put = txn.put
        pack = _CRC.pack
        for w in writes:
            if isinstance(w, Put):  # nearly every write: no match statement for it
                table, key, value = w.table, w.key, w.value
                t = tables.get(table)
                if t is None:
                    db = new_tables.get(table)
                    if db is None:
                        db = new_tables[table] = self._create_db(table, txn)
                    seed = crc32(table.encode())
                else:
                    db = t.db
                    seed = t.crc_seed
                put(key, value + pack(crc32(value, crc32(key, seed))), db=db)
                continue
            match w:
                case Delete(table=table, key=key):
                    found = tables.get(table)
                    if found is not None:
                        txn.delete(key, db=found.db)
                    elif table in new_tables:
                        txn.delete(key, db=new_tables[table])
                case DeleteRange(table=table, start=start, end=end):
                    found = tables.get(table)
                    db = found.db if found is not None else new_tables.get(table)
                    if db is not None and start < end:
                        _delete_range(txn, db, start, end)
                case _:
                    assert_never(w)

    def _create_db(self, table: str, txn: lmdb.Transaction[bytes]) -> lmdb._Database:
        try:
            return self._env.open_db(table.encode(), txn=txn, create=True)
        except lmdb.DbsFullError as exc:
            raise StorageError(
                f"table {table!r} would exceed NetConfig.tables_max ({len(self._tables)} exist)"
            ) from exc

    def _grow(self) -> None:
        """Double the map after a full-map write, or raise ``StorageFull`` at the maximum."""
        size = min(self._map_size * 2, self._map_size_max)
        if size <= self._map_size:
            self.abort()
            raise StorageFull(
                f"LMDB map of {self.path} is full at {self._map_size} bytes "
                f"(NetConfig.map_size_max_bytes); the writes not yet durable were dropped"
            )
        self._drop_rtxn()  # no transaction of this process may be open while remapping
        try:
            self._env.set_mapsize(size)
        except lmdb.Error as exc:
            raise self._fail(f"cannot grow the LMDB map to {size} bytes: {exc}") from exc
        self._map_size = self._env.info()["map_size"]
        self.map_grows += 1

    def _fail(self, reason: str, *, full: bool = False) -> StorageError:
        """Drop the writes not yet durable, make the storage unusable, return the error."""
        self.abort()
        self._drop_rtxn()
        self._failed = reason
        return StorageFull(reason) if full else StorageError(reason)


def _unseal(table: str, crc_seed: int, key: bytes, raw: bytes) -> bytes:
    """The value of a sealed record, or ``StorageCorruption``."""
    size = len(raw) - _CRC_BYTES
    if size < 0:
        raise StorageCorruption(
            f"record {key[:32]!r} of table {table!r} is {len(raw)} bytes, shorter than its CRC",
            table=table,
            key=key,
        )
    value = raw[:size]
    (stored,) = _CRC.unpack_from(raw, size)
    if crc32(value, crc32(key, crc_seed)) != stored:
        raise StorageCorruption(
            f"CRC mismatch in record {key[:32]!r} of table {table!r}", table=table, key=key
        )
    return value


def _delete_range(
    txn: lmdb.Transaction[bytes], db: lmdb._Database, start: bytes, end: bytes
) -> None:
    cursor = txn.cursor(db)
    try:
        found = cursor.set_range(start) if start else cursor.first()
        # delete() moves the cursor to the next record; key() is b"" past the end, and no
        # stored key is empty.
        while found:
            key = cursor.key()
            if not key or key >= end:
                break
            found = cursor.delete()
    finally:
        cursor.close()


def _is_enospc(exc: lmdb.Error) -> bool:
    return "ENOSPC" in str(exc) or os.strerror(errno.ENOSPC) in str(exc)


# -- the data dir ---------------------------------------------------------------------------


def _prepare_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise DataDirError(f"data dir {path} exists and is not a directory")
    try:
        tightened = private_dir(path)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {path}: {exc.strerror}") from exc
    if tightened:
        log.warning(
            "data dir %s: tightened the modes of %s (they were open to group or others; "
            "a data dir is 0700 and its files 0600)",
            path,
            ", ".join(tightened),
        )
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not readable and writable by this user")


def _lock_dir(path: Path) -> int:
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise DataDirError(f"cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirError(
                f"data dir {path} is in use (locked by another process or runner)"
            ) from exc
        raise DataDirError(f"cannot lock {lock_path}: {exc.strerror}") from exc
    return fd


def _fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (files created in it) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DataDirError(f"cannot fsync the directory {path}: {exc.strerror}") from exc


def _check_marker(
    path: Path, *, cluster: str, node: str, replace: bool = False, cluster_id: str = ""
) -> None:
    marker = path / MARKER_NAME
    try:
        text = marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        if (path / DATA_NAME).exists():
            raise DataDirError(
                f"data dir {path} holds LMDB data but no {MARKER_NAME}: refusing to guess "
                f"which node it belongs to"
            ) from None
        _write_marker(path, cluster=cluster, node=node, cluster_id=cluster_id)
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot read {marker}: {exc}") from exc
    try:
        data = json.loads(text)
        found_format, found_cluster, found_node = data["format"], data["cluster"], data["node"]
        found_id = data.get("cluster_id", "")
        if not isinstance(found_id, str):
            raise TypeError(f"cluster_id is {type(found_id).__name__}, not a string")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataDirError(f"{marker} is malformed: {exc}") from exc
    if found_format != MARKER_FORMAT:
        raise DataDirError(f"{marker} has format {found_format!r}, expected {MARKER_FORMAT}")
    if (found_cluster, found_node) != (cluster, node) or found_id not in ("", cluster_id):
        raise DataDirMismatch(
            f"data dir {path} belongs to node {found_node!r} of "
            f"{describe_cluster(found_cluster, found_id)}, not to node {node!r} of "
            f"{describe_cluster(cluster, cluster_id)}"
        )
    if not replace and not (path / DATA_NAME).exists():
        raise DataDirError(
            f"data dir {path} has its {MARKER_NAME} but no {DATA_NAME}: node {node!r} lost its "
            "data, and starting it as a new member would make it vote with amnesia. If the "
            "rest of the cluster is healthy, start it as a replacement (pxq node run "
            "--replace): it re-learns from its peers before it votes again"
        )
    if cluster_id and not found_id:
        # Data from before clusters had ids (or from a file without one): it takes this id.
        log.warning("data dir %s: stamping cluster id %s into its %s", path, cluster_id, marker)
        _write_marker(path, cluster=cluster, node=node, cluster_id=cluster_id)


def _write_marker(path: Path, *, cluster: str, node: str, cluster_id: str = "") -> None:
    """Write the marker atomically (temp file, fsync, rename); ``open`` fsyncs the dir (and
    its parent) once LMDB has created its files beside it."""
    fields: dict[str, object] = {"format": MARKER_FORMAT, "cluster": cluster, "node": node}
    if cluster_id:
        fields["cluster_id"] = cluster_id
    body = json.dumps(fields) + "\n"
    tmp = path / (MARKER_NAME + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path / MARKER_NAME)
    except OSError as exc:
        raise DataDirError(f"cannot write {path / MARKER_NAME}: {exc.strerror}") from exc


def read_damaged(path: Path) -> tuple[tuple[str, bytes], ...]:
    """The records (table, key) noted in ``path``'s ``DAMAGED_NAME`` (none without it)."""
    try:
        text = (path / DAMAGED_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot read {path / DAMAGED_NAME}: {exc}") from exc
    try:
        data = json.loads(text)
        return tuple((str(t), bytes.fromhex(k)) for t, k in data["damaged"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataDirError(f"{path / DAMAGED_NAME} is malformed: {exc}") from exc


def note_damaged(path: Path, record: tuple[str, bytes]) -> None:
    """Add ``record`` to ``path``'s ``DAMAGED_NAME``, atomically and durably."""
    records = list(read_damaged(path))
    if record not in records:
        records.append(record)
    body = json.dumps({"damaged": [[t, k.hex()] for t, k in records]}) + "\n"
    tmp = path / (DAMAGED_NAME + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path / DAMAGED_NAME)
    except OSError as exc:
        raise DataDirError(f"cannot write {path / DAMAGED_NAME}: {exc.strerror}") from exc
    _fsync_dir(path)


def clear_damaged(path: Path) -> None:
    """Forget the noted records (the node's repair of them is durable)."""
    with contextlib.suppress(FileNotFoundError):
        (path / DAMAGED_NAME).unlink()


def _open_wal_db(env: lmdb.Environment, path: Path) -> lmdb._Database:
    """The named database of the log's state (created if missing)."""
    try:
        return env.open_db(WAL_TABLE.encode(), create=True)
    except lmdb.Error as exc:
        raise DataDirError(f"cannot open the write-ahead log's state in {path}: {exc}") from exc


def _wal_state(env: lmdb.Environment, db: lmdb._Database, path: Path) -> tuple[int, int, bytes]:
    """(the last batch LMDB holds, the log's base, the log's nonce), as the last checkpoint
    recorded them; (0, 0, b"") for a data dir from before the log (nothing to replay then)."""
    try:
        with env.begin(write=False) as txn:
            raw = txn.get(_WAL_KEY, db=db)
    except lmdb.Error as exc:
        raise DataDirError(f"cannot read the write-ahead log's state in {path}: {exc}") from exc
    if raw is None:
        return 0, 0, b""
    value = _unseal(WAL_TABLE, _WAL_SEED, _WAL_KEY, raw)
    if len(value) == _WAL_STATE.size + NONCE_BYTES:
        seq, base = _WAL_STATE.unpack_from(value)  # base <= seq: read_records checks it
        return seq, base, value[_WAL_STATE.size :]
    if len(value) == _WAL_STATE_V1.size + NONCE_BYTES:  # each checkpoint rewound the log
        (seq,) = _WAL_STATE_V1.unpack_from(value)
        return seq, seq, value[_WAL_STATE_V1.size :]
    raise StorageCorruption(
        f"the write-ahead log's state in {path} is {len(value)} bytes",
        table=WAL_TABLE,
        key=_WAL_KEY,
    )


def _existing_tables(env: lmdb.Environment, path: Path) -> dict[str, _Table]:
    """Handles of every named database. Opened through a write transaction because LMDB
    keeps the handles a transaction opened only if it commits."""
    tables: dict[str, _Table] = {}
    try:
        txn = env.begin(write=True)
        try:
            names = [key for key, _ in txn.cursor() if key != WAL_TABLE.encode()]
            for name in names:
                db = env.open_db(name, txn=txn, create=False)
                tables[name.decode()] = _Table(db=db, crc_seed=crc32(name))
            txn.commit()
        except BaseException:
            txn.abort()
            raise
    except (lmdb.Error, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot list the tables in {path}: {exc}") from exc
    return tables
