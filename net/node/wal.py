"""The write-ahead log of a node's storage: one file, one write and one fdatasync per batch.

A synchronous LMDB commit writes the B-tree pages a batch touched and syncs twice (the data,
then the meta page): 1.0-1.4 ms on the disks measured here, against about 0.1 ms for
writing the same bytes in place into a file and syncing it once (``docs/performance.md``,
"The write-ahead log"). So ``net.node.storage`` makes a batch durable by adding it here, and
moves the batches into LMDB in one synchronous transaction now and then (a *checkpoint*,
which runs beside the appends, on a thread of its own), which records the sequence number
of the last batch it holds. Once the log has grown past its bound, a checkpoint taken while
no append runs also *rewinds* it: it records that every batch of the log is in LMDB, a new
base (the number of the record before the first) and a new nonce (below), and the log
starts over at its first byte. After a crash, ``WalFile.open`` hands back the records the
last checkpoint does not hold, and the storage writes them into LMDB before anything else.

A record is a header and a payload::

    magic "PXQW" | seq (u64) | payload length (u32) | CRC-32 of nonce, seq, length, payload (u32)
    payload: msgpack [[0, table, key, value] | [1, table, key] | [2, table, start, end], ...]
             (Put, Delete, DeleteRange, in the batch's order)

The *nonce* is 8 random bytes drawn at each rewind and stored in LMDB with it; the records
written after that rewind are checksummed with it. So the records of before the rewind,
which the file still holds past the new ones (it is overwritten, not truncated), do not
check and are not taken, and bytes inside a record's payload (a client's item, which may be
crafted to look like a record) cannot pass for a record either: they would have to match a
checksum keyed by a value that never leaves the node.

Reading the log back (``read_records``), records are taken in file order while they are
whole, carry the magic and their CRC matches. The first one that is not ends the log: that
is the torn tail of a write that a crash interrupted, never acknowledged since its sync had
not returned. Only the last record can be torn, because each write waits for the sync of the
one before; so a record that checks *after* the end means a synced record was damaged, and
opening fails (``WalCorrupt``) rather than silently dropping acknowledged writes. The
records must be numbered without a gap from the one after the rewind's base; those the last
checkpoint holds are checked and skipped.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from zlib import crc32

import msgpack

from net.errors import StorageError, StorageFull
from pxq.effects import Delete, DeleteRange, Put, Write

WAL_NAME: Final = "pxq-wal.log"
"""The log's file inside the data dir."""

MAGIC: Final = b"PXQW"
_HEAD = struct.Struct(">4sQII")  # magic, seq, payload length, crc
HEAD_BYTES: Final = _HEAD.size
_CRC_COVERED = struct.Struct(">QI")  # seq, payload length: covered by the CRC after the nonce
NONCE_BYTES: Final = 8
_PUT, _DELETE, _DELETE_RANGE = 0, 1, 2


class WalCorrupt(StorageError):
    """The log holds damage that is not a torn tail: acknowledged writes would be lost."""


@dataclass(frozen=True, slots=True)
class WalRecord:
    seq: int
    writes: tuple[Write, ...]


def encode_record(seq: int, writes: list[Write] | tuple[Write, ...], nonce: bytes) -> bytes:
    """One record: header and payload, checksummed with ``nonce``."""
    rows: list[list[object]] = []
    for w in writes:
        if type(w) is Put:
            rows.append([_PUT, w.table, w.key, w.value])
        elif type(w) is Delete:
            rows.append([_DELETE, w.table, w.key])
        elif type(w) is DeleteRange:
            rows.append([_DELETE_RANGE, w.table, w.start, w.end])
        else:
            raise TypeError(f"not a storage write: {w!r}")
    payload: bytes = msgpack.packb(rows, use_bin_type=True)
    crc = crc32(payload, crc32(_CRC_COVERED.pack(seq, len(payload)), crc32(nonce)))
    return _HEAD.pack(MAGIC, seq, len(payload), crc) + payload


def _record_at(data: bytes, offset: int, nonce_crc: int) -> tuple[int, bytes] | None:
    """(seq, payload) of a whole record with a matching CRC at ``offset``, else None."""
    if len(data) - offset < HEAD_BYTES:
        return None
    magic, seq, length, crc = _HEAD.unpack_from(data, offset)
    start = offset + HEAD_BYTES
    if magic != MAGIC or len(data) - start < length:
        return None
    payload = data[start : start + length]
    if crc32(payload, crc32(_CRC_COVERED.pack(seq, length), nonce_crc)) != crc:
        return None
    return seq, payload


def _decode_payload(payload: bytes, where: str) -> tuple[Write, ...]:
    try:
        rows = msgpack.unpackb(payload, raw=False, use_list=True)
        if not isinstance(rows, list):
            raise TypeError("not a list of writes")
        writes: list[Write] = []
        for row in rows:
            if not isinstance(row, list) or not row:
                raise TypeError(f"malformed write {row!r}")
            kind = row[0]
            if kind == _PUT and len(row) == 4:
                writes.append(Put(table=_str(row[1]), key=_bytes(row[2]), value=_bytes(row[3])))
            elif kind == _DELETE and len(row) == 3:
                writes.append(Delete(table=_str(row[1]), key=_bytes(row[2])))
            elif kind == _DELETE_RANGE and len(row) == 4:
                writes.append(
                    DeleteRange(table=_str(row[1]), start=_bytes(row[2]), end=_bytes(row[3]))
                )
            else:
                raise TypeError(f"unknown write {row[:1]!r} of {len(row)} fields")
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # The CRC matched, so this is no torn write: the log was written by something else.
        raise WalCorrupt(f"{where}: a record with a valid CRC does not decode: {exc}") from exc
    return tuple(writes)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"table name is {type(value).__name__}, not str")
    return value


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"key or value is {type(value).__name__}, not bytes")
    return value


@dataclass(frozen=True, slots=True)
class WalContents:
    """What ``read_records`` found in a log."""

    records: tuple[WalRecord, ...]
    """The records the checkpoint does not hold (numbered after it), in order."""
    last: int
    """The number of the log's last record (its base if it has none)."""
    end: int
    """The offset just past that record: where the next one goes."""


def read_records(data: bytes, *, base: int, after: int, nonce: bytes, where: str) -> WalContents:
    """The records of ``data`` (a log's content, checksummed with ``nonce``), which must be
    numbered ``base + 1``, ``base + 2``, ... in file order; the ones numbered up to
    ``after`` (held by the last checkpoint) are checked, not decoded, and left out.

    Raises ``WalCorrupt`` if one is out of sequence, or if a well-formed record follows the
    end of the log (damage before it, not a torn tail).
    """
    if after < base:
        raise WalCorrupt(
            f"{where}: the checkpoint (batch {after}) is older than the log's base {base}"
        )
    nonce_crc = crc32(nonce)
    records: list[WalRecord] = []
    offset = 0
    last = base
    while True:
        found = _record_at(data, offset, nonce_crc)
        if found is None:
            break
        seq, payload = found
        if seq != last + 1:
            raise WalCorrupt(
                f"{where}: record {seq} at byte {offset} where record {last + 1} belongs"
            )
        if seq > after:
            records.append(WalRecord(seq=seq, writes=_decode_payload(payload, where)))
        last = seq
        offset += HEAD_BYTES + len(payload)
    end = offset
    # Past the end: only a torn record or stale bytes may follow, never a later record.
    probe = data.find(MAGIC, end + 1)
    while probe != -1:
        later = _record_at(data, probe, nonce_crc)
        if later is not None:
            raise WalCorrupt(
                f"{where}: the log ends at byte {end} (a damaged record), yet record "
                f"{later[0]} follows at byte {probe}: a synced record was damaged"
            )
        probe = data.find(MAGIC, probe + 1)
    return WalContents(records=tuple(records), last=last, end=end)


class WalFile:
    """The open log of one data dir. ``append`` runs on the storage's writer thread,
    ``reset`` on the thread of a rewinding checkpoint while no append runs (one call at a
    time); ``open`` and ``close`` on the owner's.

    The file is written in place, never truncated: ``reset`` only moves the write position
    back to the start (the rewind drew a new nonce, under which what the file still holds
    checks as nothing). It grows, in steps of at least ``GROW_BYTES`` written as zeros and
    synced once, to the most one log has held; so an ``append`` changes no file size and no
    block map, and its fdatasync writes the record alone (not a journal commit of the
    file's metadata as well, which costs as much again)."""

    __slots__ = ("_fd", "allocated", "offset", "path")

    GROW_BYTES: Final = 1 << 20

    def __init__(self, path: Path, fd: int, allocated: int) -> None:
        self.path = path
        self._fd = fd
        self.offset = 0
        """Where the next record goes: the bytes appended since the log was last rewound."""
        self.allocated = allocated
        """The file's size."""

    @classmethod
    def open(
        cls, data_dir: Path, *, base: int, after: int, nonce: bytes, mode: int
    ) -> tuple[WalFile, WalContents]:
        """Open (creating) the log of ``data_dir`` and read it (``read_records``: the log
        was rewound after batch ``base`` under ``nonce``; the last checkpoint holds up to
        ``after``). The write position is the end of the records read; the caller writes
        the records the checkpoint lacks into LMDB in a rewinding checkpoint, then calls
        ``reset``."""
        path = data_dir / WAL_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as exc:
            raise StorageError(f"cannot open the write-ahead log {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            chunks = []
            done = 0
            while done < size:
                chunk = os.pread(fd, min(size - done, 1 << 24), done)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
            contents = read_records(
                b"".join(chunks), base=base, after=after, nonce=nonce, where=str(path)
            )
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot read the write-ahead log {path}: {exc.strerror}") from exc
        except BaseException:
            os.close(fd)
            raise
        wal = cls(path, fd, size)
        wal.offset = contents.end
        return wal, contents

    def append(self, record: bytes) -> None:
        """Write one record at the write position and sync it: the batch is durable when
        this returns."""
        end = self.offset + len(record)
        try:
            if end > self.allocated:
                self._grow(end)
            written = os.pwrite(self._fd, record, self.offset)
            while written < len(record):  # a short write (a signal)
                more = os.pwrite(self._fd, record[written:], self.offset + written)
                if more <= 0:
                    raise OSError(errno.EIO, "a write made no progress")
                written += more
            os.fdatasync(self._fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageFull(f"disk full writing {self.path}: {exc}") from exc
            raise StorageError(f"cannot write {self.path}: {exc}") from exc
        self.offset = end

    def _grow(self, end: int) -> None:
        size = max(end, 2 * self.allocated, self.GROW_BYTES)
        size += -size % self.GROW_BYTES
        zeros = bytes(self.GROW_BYTES)
        at = self.allocated
        while at < size:
            at += os.pwrite(self._fd, zeros[: size - at], at)
        os.fdatasync(self._fd)  # the new size and blocks, once
        self.allocated = size

    def reset(self) -> None:
        """Start the log over (every record in it is in a durable checkpoint, which drew the
        nonce the next records are checksummed with: a rewind)."""
        self.offset = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
