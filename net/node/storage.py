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
  ``write`` commits a sealed batch in one LMDB transaction (``sync=True``: fdatasync of the
  data, then a synchronous meta page write) and may run on a dedicated writer thread;
  ``written`` (back on the owner's thread) drops the layer from the overlay and advances
  ``durable_seq``. Reads (``get``, ``scan``) look through the open layer, then the sealed
  layers newest first, then a read transaction on LMDB renewed after each commit: a node
  reads its own writes whether they are durable or not (read-your-writes, as ``pxq.effects``
  requires). ``commit`` does seal, write and written at once on the calling thread (tests,
  tools, a runner's final turn).
  The runner (``net.node.runner``) seals all steps of one loop turn into one batch (group commit)
  and keeps stepping while the writer thread syncs it;
* a full map: ``write`` reports it before anything is written; ``written`` doubles the map
  (up to ``NetConfig.map_size_max_bytes``) on the owner's thread, where no read transaction
  is then open, and the batch is written again; when the map cannot grow, ``StorageFull`` is
  raised with every batch not yet durable dropped. That is the last resort: the runner
  refuses enqueues well before, from ``space()`` (``StorageSpace``): the pages in use by the
  tables (from LMDB's per-database statistics, so space that retention freed counts as free
  again although the file never shrinks), against the map maximum and the filesystem.
  ``map_size_max_bytes`` is the *limit* ``space()`` measures against; the map's *ceiling*
  (how far ``written`` may grow it) is the same, except that ``allow_room`` raises it for a
  node that starts over its limit (``net.node.runner``): its map then holds what it holds
  plus the reserve, so that the writes that free space (cursor commits, retention) fit
  instead of stopping the node at its first write of every incarnation.

Threads: ``write`` touches nothing the other methods change, and LMDB is opened with
``MDB_NOTLS`` (py-lmdb always does), so a read transaction on the owner's thread and the
write transaction on the writer thread coexist. Everything else belongs to one thread, and at
most one ``write`` runs at a time, in sealing order; nothing else (``close`` included) may run
while a ``write`` is running.

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
    """The writes handed to one transaction (``LmdbStorage.seal``); opaque to callers."""

    __slots__ = ("_layer",)

    def __init__(self, layer: _Layer) -> None:
        self._layer = layer

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
    """What ``LmdbStorage.write`` did with a batch: committed (with the tables it created),
    or not, because the map was full (nothing was written; grow and write it again)."""

    batch: SealedBatch
    committed: bool
    new_tables: dict[str, lmdb._Database]


class LmdbStorage:
    """One node's LMDB environment: a ``StorageView`` plus ``apply``/``commit`` (see the
    module docstring for the layers and the writer-thread protocol)."""

    __slots__ = (
        "_chunk",
        "_closed",
        "_env",
        "_failed",
        "_key_max",
        "_lock_fd",
        "_main_db",
        "_map_limit",
        "_map_size",
        "_map_size_max",
        "_next_seq",
        "_open",
        "_pending_tables",
        "_rtxn",
        "_sealed",
        "_tables",
        "_tables_max",
        "commits",
        "committed_bytes",
        "durable_seq",
        "map_grows",
        "path",
    )

    def __init__(
        self,
        *,
        path: Path,
        env: lmdb.Environment,
        lock_fd: int,
        tables: dict[str, _Table],
        config: NetConfig,
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
        self._sealed: deque[_Layer] = deque()  # sealed, not yet committed; oldest first
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
                    max_dbs=config.tables_max,
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
                _fsync_dir(path)
                _fsync_dir(path.resolve().parent)
                tables = _existing_tables(env, path)
            except BaseException:
                env.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path=path, env=env, lock_fd=lock_fd, tables=tables, config=config)

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
    def unwritten(self) -> int:
        """Sealed batches not yet committed (being written, or waiting for their turn)."""
        return len(self._sealed)

    @property
    def overlay_bytes(self) -> int:
        """Key and value bytes held in memory until they are durable (all layers)."""
        return self._open.bytes + sum(layer.bytes for layer in self._sealed)

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
        name = table.encode()
        if not 0 < len(name) <= self._key_max:
            raise self._fail(f"table name {table!r} must be 1 to {self._key_max} bytes")
        if len(self._tables) + len(self._pending_tables) >= self._tables_max:
            raise self._fail(
                f"table {table!r} would exceed NetConfig.tables_max "
                f"({len(self._tables) + len(self._pending_tables)} exist)"
            )
        self._pending_tables.add(table)

    def seal(self) -> SealedBatch | None:
        """Close the open batch (None if it has no writes); later writes go to a new one.
        The sealed batch stays readable until ``written`` reports it durable."""
        self._check_usable()
        layer = self._open
        if not layer.writes:
            return None
        layer.seq = self._next_seq
        self._next_seq += 1
        self._sealed.append(layer)
        self._open = _Layer()
        return SealedBatch(layer)

    def write(self, batch: SealedBatch) -> WriteOutcome:
        """Commit ``batch`` in one durable LMDB transaction (fdatasync of the data, then the
        synchronous meta page write). May run on another thread than every other method (one
        call at a time, in sealing order); touches no state the other methods change.

        Returns ``committed=False`` if the map is full (nothing written: the caller grows the
        map with ``written`` and writes the batch again). Raises ``StorageError`` on any other
        LMDB failure (``StorageFull`` for a full disk); nothing of the batch is then durable
        as far as the caller can tell, and the storage must not be used again.
        """
        layer = batch._layer
        new_tables: dict[str, lmdb._Database] = {}
        try:
            txn = self._env.begin(write=True)
        except lmdb.Error as exc:
            raise StorageError(f"cannot begin a transaction: {exc}") from exc
        try:
            self._write_all(txn, layer.writes, new_tables)
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
        return WriteOutcome(batch=batch, committed=True, new_tables=new_tables)

    def written(self, outcome: WriteOutcome) -> None:
        """Take the result of ``write`` into account (on the thread that applies and reads).

        A committed batch leaves the overlay (reads now find it in LMDB) and ``durable_seq``
        advances to it. For an uncommitted one (full map) the map is doubled, up to
        ``NetConfig.map_size_max_bytes``; at the maximum ``StorageFull`` is raised and every
        batch not yet durable is dropped (the storage stays usable at its last commit).
        """
        self._check_usable()
        batch = outcome.batch
        if not self._sealed or self._sealed[0] is not batch._layer:
            raise self._fail(f"batch {batch.seq} completed out of order")
        if not outcome.committed:
            self._grow()
            return
        self._sealed.popleft()
        self._drop_rtxn()  # the next read sees the new commit
        for name, db in outcome.new_tables.items():
            self._tables[name] = _Table(db=db, crc_seed=crc32(name.encode()))
            self._pending_tables.discard(name)
        self.durable_seq = batch.seq
        self.commits += 1
        self.committed_bytes += batch._layer.bytes

    def commit(self) -> bool:
        """Make every applied write durable now, on this thread; False if there were none.

        Raises ``StorageFull`` (the map could not grow: nothing of the uncommitted writes is
        left, the storage stays usable) or ``StorageError`` (the storage is unusable). A
        failed commit is never retried, except after a full map, which LMDB reports before
        writing anything. Not to be called while a ``write`` runs on another thread.
        """
        self._check_usable()
        self.seal()
        if not self._sealed:
            return False
        while self._sealed:
            batch = SealedBatch(self._sealed[0])
            try:
                outcome = self.write(batch)
            except StorageFull as exc:
                raise self._fail(str(exc), full=True) from exc
            except StorageError as exc:
                raise self._fail(str(exc)) from exc
            self.written(outcome)
        return True

    def abort(self) -> None:
        """Discard every write not yet durable (open and sealed batches)."""
        self._open = _Layer()
        self._sealed.clear()
        self._pending_tables.clear()

    def close(self) -> None:
        """Drop writes not yet durable, close the environment and release the data dir lock.
        No ``write`` may be running on another thread."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self._drop_rtxn()
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


def _existing_tables(env: lmdb.Environment, path: Path) -> dict[str, _Table]:
    """Handles of every named database. Opened through a write transaction because LMDB
    keeps the handles a transaction opened only if it commits."""
    tables: dict[str, _Table] = {}
    try:
        txn = env.begin(write=True)
        try:
            names = [key for key, _ in txn.cursor()]
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
