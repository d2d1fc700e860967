"""The simulated disk of one node: pending and durable state, fsync latency, and disk faults.

Model (after turmoil-fs, FoundationDB's AsyncFileNonDurable and LMDB's semantics):

- Each step's writes form one *batch*, applied atomically. The node reads through a view
  that shows every batch submitted so far (read-your-writes); only synced batches are
  *durable*.
- ``sync`` makes every batch submitted so far durable after a latency drawn from the fsync
  distribution plus a per-KiB write cost. Syncs are serial: a sync requested while another is
  running starts when it ends and covers everything submitted by then (group commit).
- A process crash without power loss keeps submitted batches (the OS page cache writes them);
  a power loss drops every unsynced batch.
- The medium is a log-structured store: a sync writes each batch as its records followed by
  a *seal* (the commit record), and a sealed batch is compacted into the table (``durable``)
  at once, so reads never replay a log. With ``torn_on_power_loss`` a power loss during a
  sync tears the first batch it was writing: a prefix of its records, drawn from the disk's
  stream (one record, some or all of them), reaches the medium without a seal, its last record
  possibly cut short or garbled. The prefix stays on the medium as an unsealed tail until the
  next ``open`` (the node's boot), whose recovery replays sealed batches only: it discards the
  tail whole and counts it, so a batch is never applied in part (what LMDB's meta pages give
  the real runtime). A recovery that trusts the tail (``trust_torn``, a negative control)
  applies the prefix as the medium holds it, cut or garbled last record included.
- Every stored value carries a CRC-32 seeded with its table and key; a bit flip corrupts a durable value and the next read
  of it raises ``StorageCorruption``. The disk remembers which keys a fault flipped and which
  keys a read found corrupt, so a run can tell a corruption a fault explains from one the
  storage itself produced (``unexplained_corruptions``).
- An fsync error fails the sync (the driver then crashes the node; the batches it covered are
  lost).
- Space: with a ``capacity_bytes`` the disk holds at most that many bytes of keys and sealed
  values (``used_bytes``, kept up to date per batch: a put counts its key and value in place
  of the value it replaces, a delete frees what it removes). A batch that would take the
  disk past its capacity is rejected whole (``DiskFull``: a *totally* full disk, the driver's
  last resort crashes the node). Below that, ``reserve_bytes`` is the headroom kept for what
  is not an enqueue: ``space()`` reports whether the room left is below the reserve, or back
  above it plus ``resume_margin_percent`` (hysteresis), and the driver reports those
  crossings to the node (``pxq.effects.StorageLow``), which then refuses enqueues. A
  scenario file refuses a capacity without a reserve, as a cluster file refuses
  ``[storage] reserve_bytes = 0``; a disk fault can still fill a disk totally.
- A lying fsync (negative control only) reports success without making anything durable.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import simpy

from pxq.effects import Delete, DeleteRange, Put, StorageCorruption, Write
from pxq.store.records import Q_ITEM, ROW_HEAD_BYTES, pack_items, row_items
from sim.memstore import MemoryStore
from sim.network import DelaySpec


class DiskFull(Exception):
    """The batch does not fit in the disk's capacity."""


class FsyncError(Exception):
    """The disk failed an fsync."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSpec:
    """Baseline disk behaviour."""

    fsync: DelaySpec = DelaySpec(dist="uniform", mean_us=1000, min_us=500, max_us=2000)
    write_us_per_kib: int = 2
    capacity_bytes: int | None = None
    reserve_bytes: int = 0
    """Room kept free for everything but enqueues: below it (with a capacity) the node is told
    its storage is short. 0: never (a disk that fills up only crashes its node)."""
    resume_margin_percent: int = 10
    """The node is told its storage is no longer short once the room is back above the
    reserve plus this share of it (as ``NetConfig.storage_resume_margin_percent``)."""

    def __post_init__(self) -> None:
        if self.write_us_per_kib < 0:
            raise ValueError("write_us_per_kib must not be negative")
        if self.capacity_bytes is not None and self.capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        if self.reserve_bytes < 0:
            raise ValueError("reserve_bytes must not be negative")
        if not 0 <= self.resume_margin_percent <= 100:
            raise ValueError("resume_margin_percent must be in 0..100")


@dataclass(slots=True)
class DiskStats:
    batches: int = 0
    syncs: int = 0
    synced_batches: int = 0
    bytes_written: int = 0
    lost_batches: int = 0
    torn_batches: int = 0
    torn_batches_discarded: int = 0
    torn_batches_trusted: int = 0
    corrupt_reads: int = 0
    bitflips: int = 0
    altered_items: int = 0
    fsync_errors: int = 0
    full_rejections: int = 0
    wipes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSpace:
    """One measurement of a disk with a capacity: bytes in use, room left, the reserve, and
    whether the room is below the reserve (``short``) or above the resume threshold
    (``resumed``; neither: in the hysteresis band)."""

    used_bytes: int
    available_bytes: int
    reserve_bytes: int
    short: bool
    resumed: bool


CORRUPT_KEYS_MAX = 100
"""Distinct corrupt (table, key) pairs a disk remembers (the rest are only counted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TornTail:
    """What a torn batch left on the medium: a prefix of its records and no seal."""

    records: tuple[Write, ...]
    of_records: int
    """How many records the whole batch had."""
    damage: str
    """What happened to the last record of the prefix: ``intact``, ``cut`` or ``garbled``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """What ``open`` found on the medium: an unsealed tail, discarded or (negative control)
    trusted and applied."""

    records: int
    of_records: int
    damage: str
    trusted: bool


_TABLE_SEEDS: dict[str, int] = {}


def _crc(table: str, key: bytes, value: bytes) -> bytes:
    """The CRC-32 of a stored value, seeded with its table and key as the real runtime's
    storage seals it (``net/node/storage.py``): a value read under another key fails it, and
    it never coincides with a record's own CRC nested inside the value."""
    seed = _TABLE_SEEDS.get(table)
    if seed is None:
        seed = _TABLE_SEEDS[table] = zlib.crc32(table.encode())
    return zlib.crc32(value, zlib.crc32(key, seed)).to_bytes(4, "big")


def _unseal(table: str, key: bytes, stored: bytes) -> bytes:
    value, crc = stored[:-4], stored[-4:]
    if len(stored) < 4 or _crc(table, key, value) != crc:
        raise StorageCorruption(
            f"checksum mismatch in table {table!r} at key {key.hex()}", table=table, key=key
        )
    return value


def _sealed(writes: tuple[Write, ...]) -> list[Write]:
    return [
        Put(table=w.table, key=w.key, value=w.value + _crc(w.table, w.key, w.value))
        if isinstance(w, Put)
        else w
        for w in writes
    ]


def _batch_bytes(writes: list[Write]) -> int:
    n = 0
    for w in writes:
        match w:
            case Put(key=k, value=v):
                n += len(k) + len(v)
            case Delete(key=k):
                n += len(k)
            case DeleteRange(start=s, end=e):
                n += len(s) + len(e)
    return n


class DiskView:
    """The node's read-only view: everything submitted, values checked against their CRC."""

    __slots__ = ("_disk",)

    def __init__(self, disk: SimDisk) -> None:
        self._disk = disk

    def get(self, table: str, key: bytes) -> bytes | None:
        stored = self._disk.visible.get(table, key)
        if stored is None:
            return None
        return self._disk.checked(table, key, stored)

    def scan(
        self, table: str, start: bytes = b"", end: bytes | None = None, *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        disk = self._disk
        for key, stored in disk.visible.scan(table, start, end, reverse=reverse):
            yield key, disk.checked(table, key, stored)


class SimDisk:
    """One node's disk inside a SimPy environment."""

    def __init__(self, env: simpy.Environment, rng: random.Random, spec: DiskSpec) -> None:
        self.env = env
        self.rng = rng
        self.baseline = spec
        self.spec = spec
        self.durable = MemoryStore()
        self.visible = MemoryStore()
        self.pending: list[tuple[int, list[Write]]] = []
        self.next_batch = 1
        self.durable_upto = 0
        self.stats = DiskStats()
        self.lying = False
        self.lied: list[list[Write]] = []
        self.fail_next_fsync = False
        self.torn_on_power_loss = False
        self.trust_torn = False
        """Negative control: recovery applies an unsealed tail instead of discarding it."""
        self.torn: TornTail | None = None
        """The unsealed tail a torn batch left on the medium, until the next ``open``."""
        self.flipped: set[tuple[str, bytes]] = set()
        """Every (table, key) whose durable value a bit-flip fault corrupted."""
        self.corrupt: list[tuple[str, bytes]] = []
        """Distinct (table, key) pairs a read found corrupt, in order (at most
        ``CORRUPT_KEYS_MAX``)."""
        self._syncing: tuple[int, int] | None = None  # (generation, covers batch id)
        self._sync_wanted = False
        self._generation = 0
        self._on_synced: Callable[[int], None] | None = None
        self._on_error: Callable[[Exception], None] | None = None
        self._used: int | None = None
        """Bytes held by ``visible``, once something asked (kept up to date per batch)."""

    def view(self) -> DiskView:
        return DiskView(self)

    def checked(self, table: str, key: bytes, stored: bytes) -> bytes:
        try:
            return _unseal(table, key, stored)
        except StorageCorruption:
            self.stats.corrupt_reads += 1
            where = (table, key)
            if len(self.corrupt) < CORRUPT_KEYS_MAX and where not in self.corrupt:
                self.corrupt.append(where)
            raise

    def unexplained_corruptions(self) -> list[tuple[str, bytes]]:
        """The corrupt records reads found that no bit-flip fault explains: data the storage
        itself handed over wrong (a recovery that adopted a torn record)."""
        return [where for where in self.corrupt if where not in self.flipped]

    def attach(
        self, on_synced: Callable[[int], None], on_error: Callable[[Exception], None]
    ) -> None:
        """Register the host's callbacks: ``on_synced(batch_id)`` once every batch up to
        ``batch_id`` is durable, ``on_error(exc)`` when a sync fails."""
        self._on_synced = on_synced
        self._on_error = on_error

    # -- space ---------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of keys and (sealed) values on the disk, pending batches included."""
        if self._used is None:
            self._used = self.visible.size_bytes()
        return self._used

    def space(self) -> DiskSpace | None:
        """The room left against the capacity and the reserve; None without a capacity or a
        reserve (nothing to report)."""
        spec = self.spec
        cap = spec.capacity_bytes
        if cap is None or spec.reserve_bytes == 0:
            return None
        used = self.used_bytes()
        available = max(0, cap - used)
        reserve = spec.reserve_bytes
        return DiskSpace(
            used_bytes=used,
            available_bytes=available,
            reserve_bytes=reserve,
            short=available < reserve,
            resumed=available >= reserve + reserve * spec.resume_margin_percent // 100,
        )

    def _growth(self, writes: list[Write]) -> int:
        """By how many bytes ``writes`` (sealed) would change ``used_bytes``, in order: a
        replaced or deleted value no longer counts."""
        visible = self.visible
        touched: dict[tuple[str, bytes], int] = {}  # this batch's keys: their size, or 0

        def size_of(table: str, key: bytes) -> int:
            held = touched.get((table, key))
            if held is not None:
                return held
            value = visible.get(table, key)
            return 0 if value is None else len(key) + len(value)

        delta = 0
        for w in writes:
            match w:
                case Put(table=t, key=k, value=v):
                    delta += len(k) + len(v) - size_of(t, k)
                    touched[(t, k)] = len(k) + len(v)
                case Delete(table=t, key=k):
                    delta -= size_of(t, k)
                    touched[(t, k)] = 0
                case DeleteRange(table=t, start=lo, end=hi):
                    keys = [k for k, _ in visible.scan(t, lo, hi)]
                    keys += [k for (tt, k) in touched if tt == t and lo <= k < hi]
                    for k in sorted(set(keys)):
                        delta -= size_of(t, k)
                        touched[(t, k)] = 0
        return delta

    # -- writing -------------------------------------------------------------------------

    def submit(self, writes: tuple[Write, ...]) -> int:
        """Accept one step's batch; return its id. Raises DiskFull (nothing applied)."""
        sealed = _sealed(writes)
        size = _batch_bytes(sealed)
        if self._used is not None or self.spec.capacity_bytes is not None:
            growth = self._growth(sealed)
            used = self.used_bytes() + growth
            cap = self.spec.capacity_bytes
            if cap is not None and growth > 0 and used > cap:
                self.stats.full_rejections += 1
                raise DiskFull(
                    f"batch of {size} bytes does not fit: {cap - used + growth} of {cap} bytes left"
                )
            self._used = used
        batch_id = self.next_batch
        self.next_batch += 1
        self.visible.apply(sealed)
        self.pending.append((batch_id, sealed))
        self.stats.batches += 1
        self.stats.bytes_written += size
        return batch_id

    def request_sync(self) -> None:
        """Make every batch submitted so far durable, then call ``on_synced``."""
        if self._syncing is not None:
            self._sync_wanted = True
            return
        if not self.pending:
            if self._on_synced is not None:
                self._on_synced(self.next_batch - 1)
            return
        self._start_sync()

    def _start_sync(self) -> None:
        covers = self.next_batch - 1
        size = sum(_batch_bytes(w) for b, w in self.pending if b <= covers)
        latency = self.spec.fsync.draw(self.rng) + self.spec.write_us_per_kib * size // 1024
        self._syncing = (self._generation, covers)
        self._sync_wanted = False
        ev = self.env.timeout(latency)
        gen = self._generation
        ev.callbacks.append(lambda _e: self._sync_done(gen, covers))

    def _sync_done(self, generation: int, covers: int) -> None:
        if generation != self._generation:
            return  # the node crashed while this sync was running
        self._syncing = None
        self.stats.syncs += 1
        if self.fail_next_fsync:
            self.fail_next_fsync = False
            self.stats.fsync_errors += 1
            if self._on_error is not None:
                self._on_error(FsyncError("fsync failed (injected)"))
            return
        keep: list[tuple[int, list[Write]]] = []
        for batch_id, writes in self.pending:
            if batch_id > covers:
                keep.append((batch_id, writes))
            elif self.lying:
                self.lied.append(writes)  # reported durable, still only in the page cache
            else:
                self.durable.apply(writes)
                self.stats.synced_batches += 1
        self.pending = keep
        self.durable_upto = covers
        if self._on_synced is not None:
            self._on_synced(covers)
        if self._sync_wanted and self._syncing is None:
            self.request_sync()

    # -- faults --------------------------------------------------------------------------

    def crash(self, *, power_loss: bool) -> None:
        """The node's process died. Without power loss the OS still writes every submitted
        batch; with power loss every unsynced batch is gone (and one may be torn)."""
        in_flight = self._syncing
        self._generation += 1
        self._syncing = None
        self._sync_wanted = False
        if not power_loss:
            for writes in self.lied:
                self.durable.apply(writes)
            for _batch_id, writes in self.pending:
                self.durable.apply(writes)
        else:
            if self.torn_on_power_loss and in_flight is not None and self.pending:
                self.torn = self._tear(self.pending[0][1])
            self.stats.lost_batches += len(self.pending) + len(self.lied)
        self.pending = []
        self.lied = []
        self.visible = self.durable.copy()
        self._used = None  # measured again on demand

    def _tear(self, writes: list[Write]) -> TornTail:
        """A power loss in the middle of writing ``writes``: a prefix of its records reaches
        the medium, the seal does not. The last record of the prefix may be cut short (a Put
        keeps part of its sealed value; any other record is unreadable and gone) or garbled
        (one bit of a Put's sealed value flipped)."""
        rng = self.rng
        self.stats.torn_batches += 1
        prefix = list(writes[: rng.randint(1, len(writes))])
        damage = "intact"
        if prefix:
            damage = ("intact", "cut", "garbled")[rng.randrange(3)]
            last = prefix[-1]
            if damage == "intact":
                pass
            elif not isinstance(last, Put):
                prefix.pop()  # a cut or garbled delete record does not parse: it is not there
            elif damage == "cut":
                cut = last.value[: rng.randrange(len(last.value))]
                prefix[-1] = Put(table=last.table, key=last.key, value=cut)
            else:
                stored = bytearray(last.value)
                bit = rng.randrange(len(stored) * 8)
                stored[bit // 8] ^= 1 << (bit % 8)
                prefix[-1] = Put(table=last.table, key=last.key, value=bytes(stored))
        return TornTail(records=tuple(prefix), of_records=len(writes), damage=damage)

    def open(self) -> Recovery | None:
        """Recover the medium before a boot: replay sealed batches only. An unsealed tail
        (a torn batch) is discarded whole; with ``trust_torn`` (negative control) it is
        applied as the medium holds it. None when there was no tail."""
        tail, self.torn = self.torn, None
        if tail is None:
            return None
        if self.trust_torn:
            self.durable.apply(tail.records)
            self.visible.apply(tail.records)
            self._used = None
            self.stats.torn_batches_trusted += 1
        else:
            self.stats.torn_batches_discarded += 1
        return Recovery(
            records=len(tail.records),
            of_records=tail.of_records,
            damage=tail.damage,
            trusted=self.trust_torn,
        )

    def wipe(self) -> None:
        """A blank disk in place of this one (its node is down: ``crash`` came first)."""
        self.durable = MemoryStore()
        self.visible = MemoryStore()
        self.pending = []
        self.lied = []
        self._used = None
        self.stats.wipes += 1

    def bitflip(self) -> tuple[str, bytes] | None:
        """Flip one bit of one random durable value; return (table, key) or None if empty."""
        names = sorted(t for t, tab in self.durable.tables.items() if tab.keys)
        if not names:
            return None
        table = names[self.rng.randrange(len(names))]
        keys = self.durable.tables[table].keys
        key = keys[self.rng.randrange(len(keys))]
        stored = bytearray(self.durable.tables[table].values[key])
        bit = self.rng.randrange(len(stored) * 8)
        stored[bit // 8] ^= 1 << (bit % 8)
        flipped = bytes(stored)
        before = self.durable.tables[table].values[key]
        self.durable.tables[table].values[key] = flipped
        self.flipped.add((table, key))
        if self.visible.get(table, key) == before:  # not overwritten by a pending batch
            self.visible.tables[table].values[key] = flipped
        self.stats.bitflips += 1
        return table, key

    def alter_item(self) -> tuple[str, bytes] | None:
        """NEGATIVE CONTROL: change the payload of one item of one random stored queue row,
        resealed with a valid CRC (as a storage or software defect that writes a wrong but
        well-formed record would): no checksum catches it, only live reconciliation does.
        Returns (table, key), or None when no row is stored."""
        table = self.durable.tables.get(Q_ITEM)
        if table is None or not table.keys:
            return None
        key = table.keys[self.rng.randrange(len(table.keys))]
        before = table.values[key]
        row = _unseal(Q_ITEM, key, before)
        items = row_items(row)
        item = items[self.rng.randrange(len(items))]
        payload: bytes = item[1]
        item[1] = bytes((payload[0] ^ 0xFF,)) + payload[1:] if payload else b"\x00"
        altered = row[:ROW_HEAD_BYTES] + pack_items(items)
        sealed = altered + _crc(Q_ITEM, key, altered)
        table.values[key] = sealed
        if self.visible.get(Q_ITEM, key) == before:  # not overwritten by a pending batch
            self.visible.tables[Q_ITEM].values[key] = sealed
        self.stats.altered_items += 1
        return Q_ITEM, key
