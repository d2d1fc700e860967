"""LMDB storage of one node: the production ``StorageView`` and its group-committed writes.

``LmdbStorage`` owns one LMDB environment per node data dir and everything about it:

* the data dir itself: created if missing, locked against a second opener (``flock`` on
  ``pxq-node.lock``: a second process, or a second runner in this process, fails to start
  instead of becoming a second writer), and stamped with a marker (``pxq-node.json``) that
  records the cluster id and node name, so that a node is never started on another node's
  state;
* one named database per table, created on first ``Put`` (bounded by
  ``NetConfig.tables_max``);
* values sealed with a CRC-32 suffix computed over the table name, the key and the value,
  checked on every read (a mismatch raises ``StorageCorruption``);
* one write transaction at a time, opened lazily. Reads go through it, so they see every
  write applied so far, committed or not (read-your-writes, as ``pxq.effects`` requires).
  ``apply`` adds one step's writes to it, ``commit`` makes all of them durable at once
  (``sync=True``: fdatasync of the data, then a synchronous meta page write): the runner
  applies every step of one loop turn and commits once (group commit);
* a full map: the transaction is aborted, the map doubled (up to
  ``NetConfig.map_size_max_bytes``) and the whole uncommitted batch replayed; when the map
  cannot grow, ``StorageFull`` is raised with nothing of the batch left.

It is not thread-safe: LMDB write transactions belong to the thread that opened them, and
the runner calls everything from its event loop thread. A commit blocks that thread for the
fsync (about 0.15-0.25 ms on this VM's disk in fast mode, see limits.md section 2); frames
arriving meanwhile wait in kernel buffers and form the next turn's group.

LMDB keys are 1 to 511 bytes: a ``Put`` of an empty or longer key raises ``StorageError``;
reads and deletes of such keys find nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, assert_never
from zlib import crc32

import lmdb

from net.config import NetConfig
from net.errors import DataDirError, DataDirMismatch, StorageError, StorageFull
from pxq.effects import Delete, DeleteRange, Put, StorageCorruption, Write

MARKER_NAME: Final = "pxq-node.json"
"""The file in a data dir naming the cluster and node it belongs to."""
MARKER_FORMAT: Final = 1
LOCK_NAME: Final = "pxq-node.lock"
"""The file locked (``flock``) by the process that has the data dir open."""
DATA_NAME: Final = "data.mdb"
"""LMDB's data file inside the data dir."""

_CRC = struct.Struct(">I")
_CRC_BYTES = _CRC.size


@dataclass(frozen=True, slots=True)
class _Table:
    db: lmdb._Database
    crc_seed: int  # CRC-32 of the table name, the start of every value's checksum


class LmdbStorage:
    """One node's LMDB environment: a ``StorageView`` plus ``apply``/``commit``."""

    __slots__ = (
        "_batch",
        "_chunk",
        "_closed",
        "_env",
        "_failed",
        "_key_max",
        "_lock_fd",
        "_map_size",
        "_map_size_max",
        "_new_tables",
        "_tables",
        "_txn",
        "commits",
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
        self._chunk = config.scan_chunk_items
        self._map_size = env.info()["map_size"]
        self._map_size_max = max(config.map_size_max_bytes, self._map_size)
        self._key_max = env.max_key_size()
        self._txn: lmdb.Transaction[bytes] | None = None
        self._batch: list[Write] = []  # every write in the open transaction, for replay
        self._new_tables: list[str] = []  # tables created by the open transaction
        self._failed: str | None = None
        self._closed = False
        self.commits = 0
        self.map_grows = 0

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, data_dir: Path | str, *, cluster: str, node: str, config: NetConfig
    ) -> LmdbStorage:
        """Open (creating if needed) the data dir of ``node`` in ``cluster``.

        Raises ``DataDirError`` if the dir cannot be created, read or written, is locked by
        another opener, or holds LMDB data without a marker; ``DataDirMismatch`` if its
        marker names another cluster or node.
        """
        if not cluster or not node:
            raise ValueError("cluster and node must be non-empty")
        path = Path(data_dir)
        _prepare_dir(path)
        lock_fd = _lock_dir(path)
        try:
            _check_marker(path, cluster=cluster, node=node)
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
                )
            except lmdb.Error as exc:
                raise DataDirError(f"cannot open the LMDB environment in {path}: {exc}") from exc
            try:
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
        """The value under ``key`` in ``table``, including uncommitted writes."""
        t = self._tables.get(table)
        if t is None or not 0 < len(key) <= self._key_max:
            return None
        raw = self._write_txn().get(key, db=t.db)
        if raw is None:
            return None
        return _unseal(table, t.crc_seed, key, raw)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order (descending with ``reverse``).

        Reads ``scan_chunk_items`` pairs per cursor positioning and re-seeks after the last
        key for the next chunk, so an iterator survives writes and commits made while it is
        open; later chunks see those writes.
        """
        if reverse:
            return self._scan_reverse(table, start, end)
        return self._scan_forward(table, start, end)

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
            cursor = self._write_txn().cursor(t.db)
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
            cursor = self._write_txn().cursor(t.db)
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
        """Whether writes were applied since the last commit."""
        return bool(self._batch)

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return self._map_size

    def apply(self, writes: Iterable[Write]) -> None:
        """Apply one step's writes to the open transaction, in order.

        Raises ``StorageFull`` if the map is full and cannot grow (the whole uncommitted
        batch, of this and earlier steps, is then aborted) and ``StorageError`` on any other
        LMDB failure (the storage is then unusable).
        """
        self._check_usable()
        writes = tuple(writes)
        self._batch.extend(writes)
        try:
            self._apply_writes(writes)
        except lmdb.MapFullError:
            self._grow_and_replay()
        except lmdb.Error as exc:
            raise self._fail(f"LMDB write failed: {type(exc).__name__}: {exc}") from exc

    def commit(self) -> bool:
        """Make every applied write durable in one transaction; False if there were none.

        Raises ``StorageFull`` or ``StorageError`` as ``apply`` does. A failed commit is never
        retried, except after a full map, which LMDB reports before writing anything.
        """
        self._check_usable()
        if not self._batch:
            return False
        while True:
            txn = self._txn
            if txn is None:  # a replay after growth failed to reopen: cannot happen
                raise self._fail("no open transaction to commit")
            try:
                txn.commit()
            except lmdb.MapFullError:
                # LMDB ran out of pages while saving its free list, before any I/O: the
                # transaction is gone, the durable state is the previous commit.
                self._txn = None
                self._forget_new_tables()
                self._grow_and_replay()
                continue
            except lmdb.Error as exc:
                self._txn = None
                self._forget_new_tables()
                if isinstance(exc, lmdb.DiskError) or _is_enospc(exc):
                    raise self._fail(f"disk full during commit: {exc}", full=True) from exc
                raise self._fail(f"commit failed: {type(exc).__name__}: {exc}") from exc
            break
        self._txn = None
        self._new_tables.clear()
        self._batch.clear()
        self.commits += 1
        return True

    def abort(self) -> None:
        """Discard every write applied since the last commit."""
        self._abort_txn()
        self._batch.clear()

    def close(self) -> None:
        """Abort uncommitted writes, close the environment and release the data dir lock."""
        if self._closed:
            return
        self._closed = True
        self._abort_txn()
        self._batch.clear()
        self._env.close()
        os.close(self._lock_fd)

    # -- internals ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"storage of {self.path} is closed")
        if self._failed is not None:
            raise StorageError(f"storage of {self.path} failed earlier: {self._failed}")

    def _write_txn(self) -> lmdb.Transaction[bytes]:
        txn = self._txn
        if txn is None:
            self._check_usable()
            try:
                txn = self._txn = self._env.begin(write=True)
            except lmdb.Error as exc:
                raise self._fail(f"cannot begin a transaction: {exc}") from exc
        return txn

    def _apply_writes(self, writes: Iterable[Write]) -> None:
        txn = self._write_txn()
        key_max = self._key_max
        for w in writes:
            match w:
                case Put(table=table, key=key, value=value):
                    if not 0 < len(key) <= key_max:
                        raise self._fail(
                            f"Put of a {len(key)}-byte key in table {table!r}: LMDB keys are "
                            f"1 to {key_max} bytes"
                        )
                    t = self._tables.get(table) or self._create_table(table, txn)
                    sealed = value + _CRC.pack(crc32(value, crc32(key, t.crc_seed)))
                    txn.put(key, sealed, db=t.db)
                case Delete(table=table, key=key):
                    found = self._tables.get(table)
                    if found is not None and 0 < len(key) <= key_max:
                        txn.delete(key, db=found.db)
                case DeleteRange(table=table, start=start, end=end):
                    found = self._tables.get(table)
                    if found is not None and start < end:
                        _delete_range(txn, found.db, start, end)
                case _:
                    assert_never(w)

    def _create_table(self, table: str, txn: lmdb.Transaction[bytes]) -> _Table:
        name = table.encode()
        if not 0 < len(name) <= self._key_max:
            raise self._fail(f"table name {table!r} must be 1 to {self._key_max} bytes")
        try:
            db = self._env.open_db(name, txn=txn, create=True)
        except lmdb.DbsFullError as exc:
            raise self._fail(
                f"table {table!r} would exceed NetConfig.tables_max ({len(self._tables)} exist)"
            ) from exc
        t = _Table(db=db, crc_seed=crc32(name))
        self._tables[table] = t
        # LMDB closes the handle of a database created by a transaction that aborts.
        self._new_tables.append(table)
        return t

    def _forget_new_tables(self) -> None:
        for table in self._new_tables:
            self._tables.pop(table, None)
        self._new_tables.clear()

    def _abort_txn(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            with contextlib.suppress(lmdb.Error):  # already freed by a failed commit
                txn.abort()
        self._forget_new_tables()

    def _grow_and_replay(self) -> None:
        """Abort, double the map and replay the batch until it fits or the map is at its max."""
        while True:
            self._abort_txn()
            size = min(self._map_size * 2, self._map_size_max)
            if size <= self._map_size:
                self._batch.clear()
                raise StorageFull(
                    f"LMDB map of {self.path} is full at {self._map_size} bytes "
                    f"(NetConfig.map_size_max_bytes); the uncommitted batch was aborted"
                )
            try:
                self._env.set_mapsize(size)
            except lmdb.Error as exc:
                raise self._fail(f"cannot grow the LMDB map to {size} bytes: {exc}") from exc
            self._map_size = self._env.info()["map_size"]
            self.map_grows += 1
            try:
                self._apply_writes(self._batch)
                return
            except lmdb.MapFullError:
                continue
            except lmdb.Error as exc:
                raise self._fail(f"LMDB write failed: {type(exc).__name__}: {exc}") from exc

    def _fail(self, reason: str, *, full: bool = False) -> StorageError:
        """Abort, make the storage unusable and return the error to raise."""
        self._abort_txn()
        self._batch.clear()
        self._failed = reason
        return StorageFull(reason) if full else StorageError(reason)


def _unseal(table: str, crc_seed: int, key: bytes, raw: bytes) -> bytes:
    """The value of a sealed record, or ``StorageCorruption``."""
    size = len(raw) - _CRC_BYTES
    if size < 0:
        raise StorageCorruption(
            f"record {key[:32]!r} of table {table!r} is {len(raw)} bytes, shorter than its CRC"
        )
    value = raw[:size]
    (stored,) = _CRC.unpack_from(raw, size)
    if crc32(value, crc32(key, crc_seed)) != stored:
        raise StorageCorruption(f"CRC mismatch in record {key[:32]!r} of table {table!r}")
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
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {path}: {exc.strerror}") from exc
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {path} is not readable and writable by this user")


def _lock_dir(path: Path) -> int:
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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


def _check_marker(path: Path, *, cluster: str, node: str) -> None:
    marker = path / MARKER_NAME
    try:
        text = marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        if (path / DATA_NAME).exists():
            raise DataDirError(
                f"data dir {path} holds LMDB data but no {MARKER_NAME}: refusing to guess "
                f"which node it belongs to"
            ) from None
        _write_marker(path, cluster=cluster, node=node)
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise DataDirError(f"cannot read {marker}: {exc}") from exc
    try:
        data = json.loads(text)
        found_format, found_cluster, found_node = data["format"], data["cluster"], data["node"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataDirError(f"{marker} is malformed: {exc}") from exc
    if found_format != MARKER_FORMAT:
        raise DataDirError(f"{marker} has format {found_format!r}, expected {MARKER_FORMAT}")
    if (found_cluster, found_node) != (cluster, node):
        raise DataDirMismatch(
            f"data dir {path} belongs to node {found_node!r} of cluster {found_cluster!r}, "
            f"not to node {node!r} of cluster {cluster!r}"
        )


def _write_marker(path: Path, *, cluster: str, node: str) -> None:
    """Write the marker atomically and durably (temp file, fsync, rename, fsync the dir)."""
    body = json.dumps({"format": MARKER_FORMAT, "cluster": cluster, "node": node}) + "\n"
    tmp = path / (MARKER_NAME + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path / MARKER_NAME)
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise DataDirError(f"cannot write {path / MARKER_NAME}: {exc.strerror}") from exc


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
