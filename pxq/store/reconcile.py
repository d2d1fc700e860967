"""Live reconciliation of a store's replicas (PhxQueue's "real-time reconciliation", 对账).

What is compared, per Paxos group of a store, continuously while the cluster runs:

* per (topic, queue, time bucket) of the stored rows: the offset range, the number of items
  (acknowledged to producers: a row exists only for an applied enqueue or retry copy) and a
  digest of the stored rows' bytes (``blake2b``, 8 bytes, over each row's offset and content);
* per consumer group, the items of each bucket its cursor passed (consumed), and the queue's
  first and end offsets;
* locally, on every replica: the queue's acknowledged range (its end offset, kept at apply
  time) against the rows actually stored (every offset in [first, end) held by exactly one
  row): a hole is an acknowledged item lost before delivery.

How: a *scrub* re-reads stored rows through the storage view (not counters kept at apply
time, which a changed record would not touch). The master of a group proposes a
``ReconcileCmd`` at most once per store tick; each names the next *slice* of the group's
queues (a starting queue and offset; the slice then covers whole rows up to ``SLICE_ITEMS_MAX``
items, ``SLICE_BYTES_MAX`` bytes, ``SLICE_QUEUES_MAX`` queues) and carries the figures the
master computed for the previous slice. Every replica computes a slice's figures when it
*applies* the command that names it, so all replicas compute them at the same log position;
the next command carries the master's figures, and each replica compares them with its own
from that same position. A difference is the alarm ``reconcile_mismatch`` (topic, queue,
bucket, what differs, both figures, the proposer); a local hole is ``reconcile_gap``. Both go
through ``EffectsBuilder.alarm`` (the simulator counts them as violations, the production
runner logs and counts them). Applying a ``ReconcileCmd`` writes nothing: the figures live
in RAM (``Reconciler``), so a replica that restarted between two commands skips one check.

A pass walks every queue of the group in (topic, queue) order; the next pass starts at the
first tick after the previous one ended if anything but a reconcile command was applied
since the previous started, else after ``IDLE_PASS_MS`` (an idle group grows its log by a
few commands a minute, and data at rest is still re-read).

Detection bound: a stored row altered on one replica is read by the next slice that covers
it, and that slice's figures are compared by the following command. A pass of S slices
(S = about stored items / ``SLICE_ITEMS_MAX``, at least 1) takes S + 1 commands, one per store
tick of the group's master (``retention_tick_ms``); under traffic the next pass starts at
the tick after, so a change is detected within 2 * (S + 1) ticks (the pass in progress ends,
the next reads and compares it): 4 ticks (4 s by default) for a group holding fewer than
``SLICE_ITEMS_MAX`` items, measured 2.0 s in ``scenarios/queue-altered-item.toml``. When the
retention tick is due at every tick the two take turns: twice that. An idle group adds up
to ``IDLE_PASS_MS``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from pxq.codec import message
from pxq.effects import EffectsBuilder, StorageView
from pxq.store.records import Q_ITEM, ROW_HEAD_BYTES, row_head, u64

BUCKET_MS: Final = 60_000
"""Width of a time bucket: rows are bucketed by enqueue stamp // BUCKET_MS."""
SLICE_ITEMS_MAX: Final = 4096
"""Items one slice reads at most (whole rows: the last row read may pass it)."""
SLICE_BYTES_MAX: Final = 1 << 20
"""Row bytes one slice reads at most (whole rows)."""
SLICE_QUEUES_MAX: Final = 64
"""Queues one slice covers at most (bounds the figures a command carries)."""
SLICE_BUCKETS_MAX: Final = 256
"""Buckets one slice's figures hold at most (a slice ends at the row that reaches it)."""
IDLE_PASS_MS: Final = 60_000
"""An idle group (nothing but reconcile commands applied) starts a pass this often."""
MISMATCHES_KEPT: Final = 32
"""Latest mismatches a replica keeps for ``pxq reconcile``."""
LEDGER_MAX: Final = 1024
"""Queues whose latest figures a replica keeps for ``pxq reconcile``."""
ALARMS_PER_CHECK_MAX: Final = 8
"""Alarms one comparison raises; the rest are counted in ``mismatches_total`` only."""


@message(120)
@dataclass(frozen=True, slots=True, kw_only=True)
class BucketFigures:
    """The stored rows of one time bucket of a queue within a slice."""

    bucket: int
    """Enqueue stamp // ``BUCKET_MS`` of the rows."""
    start: int
    """First offset of the bucket's rows (in this slice)."""
    end: int
    """Offset after the bucket's last row (in this slice)."""
    items: int
    """Items in those rows (acknowledged), from the rows' headers."""
    digest: int
    """blake2b (8 bytes, big-endian integer) over each row's offset and stored bytes."""
    consumed: tuple[int, ...]
    """Per consumer group of ``QueueFigures.groups``: items of [start, end) below its cursor."""


@message(121)
@dataclass(frozen=True, slots=True, kw_only=True)
class QueueFigures:
    """One queue's part of a slice: its offsets, cursors and the buckets of [start, stop)."""

    topic: str
    queue: int
    first: int
    """The queue's first stored offset (replicated state)."""
    end: int
    """The queue's end offset: items acknowledged so far (replicated state)."""
    start: int
    stop: int
    """The slice read the rows of [start, stop)."""
    groups: tuple[str, ...]
    """Consumer groups with a cursor record on the queue, sorted."""
    cursors: tuple[int, ...]
    buckets: tuple[BucketFigures, ...]
    gap: str
    """A hole or overlap between the rows and the acknowledged range ("" if none)."""


@message(122)
@dataclass(frozen=True, slots=True, kw_only=True)
class SliceFigures:
    """The figures a replica computed when it applied the command at (instance, slot)."""

    instance: int
    slot: int
    queues: tuple[QueueFigures, ...]


@message(123)
@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    """One difference found by a replica: its own figure (``mine``) and the proposer's."""

    instance: int
    """Where both figures were computed (the instance of the command that named the slice)."""
    topic: str
    queue: int
    bucket: int
    """The time bucket, or -1 for a queue-wide figure (offsets, cursors)."""
    what: str
    mine: str
    theirs: str
    proposer: str


class QueueState(Protocol):
    """What the scrub needs of a queue held in RAM (``pxq.store.sm._Queue``)."""

    @property
    def topic(self) -> str: ...
    @property
    def queue(self) -> int: ...
    @property
    def prefix(self) -> bytes: ...
    @property
    def first(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def cursors(self) -> Mapping[str, Sequence[int]]:
        """Consumer group -> [cursor, ...]."""
        ...


def row_digest(rows: Iterable[tuple[int, bytes]]) -> int:
    h = hashlib.blake2b(digest_size=8)
    for offset, row in rows:
        h.update(u64(offset))
        h.update(row)
    return int.from_bytes(h.digest(), "big")


@dataclass(slots=True)
class _Budget:
    items: int = SLICE_ITEMS_MAX
    bytes: int = SLICE_BYTES_MAX
    buckets: int = SLICE_BUCKETS_MAX

    def spent(self) -> bool:
        return self.items <= 0 or self.bytes <= 0 or self.buckets <= 0


def scrub_queue(
    view: StorageView, q: QueueState, groups: Sequence[str], start: int, budget: _Budget
) -> QueueFigures:
    """Read the stored rows of ``q`` from ``start`` (a row boundary, or below ``q.first``)
    within ``budget``, bucket them, and check them against the acknowledged range."""
    pos = max(start, q.first)
    cursors = tuple(q.cursors[g][0] for g in groups)
    buckets: list[BucketFigures] = []
    gap = ""
    expected = pos
    cur_bucket = -1
    cur_start = pos
    cur_items = 0
    cur_rows: list[tuple[int, bytes]] = []

    def close(end: int) -> None:
        if not cur_rows:
            return
        consumed = tuple(min(max(c, cur_start), end) - cur_start for c in cursors)
        buckets.append(
            BucketFigures(
                bucket=cur_bucket,
                start=cur_start,
                end=end,
                items=cur_items,
                digest=row_digest(cur_rows),
                consumed=consumed,
            )
        )
        budget.buckets -= 1

    stop = pos
    if pos < q.end and not budget.spent():
        for key, row in view.scan(Q_ITEM, q.prefix + u64(pos), q.prefix + u64(q.end)):
            offset = int.from_bytes(key[-8:], "big")
            if len(row) < ROW_HEAD_BYTES:
                gap = gap or f"row at {offset} has {len(row)} bytes, shorter than its header"
                break
            stamp, _, _, count = row_head(row)
            if offset != expected and not gap:
                gap = (
                    f"offsets {expected}..{offset - 1} have no stored row"
                    if offset > expected
                    else f"row at {offset} overlaps the row ending at {expected}"
                )
            bucket = stamp // BUCKET_MS
            if bucket != cur_bucket or not cur_rows:
                close(offset)
                cur_bucket, cur_start, cur_items, cur_rows = bucket, offset, 0, []
            cur_rows.append((offset, row))
            cur_items += count
            expected = stop = offset + count
            budget.items -= count
            budget.bytes -= len(row)
            if budget.spent():
                break
        close(stop)
        if not budget.spent() and stop != q.end:
            # Every row up to the end was read: the acknowledged range must be covered.
            gap = (
                gap or f"items are acknowledged up to offset {q.end} but stored rows end at {stop}"
            )
            stop = q.end
    return QueueFigures(
        topic=q.topic,
        queue=q.queue,
        first=q.first,
        end=q.end,
        start=pos,
        stop=stop,
        groups=tuple(groups),
        cursors=cursors,
        buckets=tuple(buckets),
        gap=gap,
    )


def scrub_slice(
    view: StorageView,
    queues: Mapping[tuple[str, int], QueueState],
    *,
    start_topic: str,
    start_queue: int,
    start_offset: int,
    instance: int,
    slot: int,
) -> SliceFigures:
    """The figures of the slice that starts at ``start_offset`` of (start_topic, start_queue)
    (or at the next queue after it, if the group holds no such queue), within the budgets."""
    budget = _Budget()
    out: list[QueueFigures] = []
    for key in sorted(queues):
        if key < (start_topic, start_queue):
            continue
        q = queues[key]
        start = start_offset if key == (start_topic, start_queue) else q.first
        groups = sorted(q.cursors)
        out.append(scrub_queue(view, q, groups, start, budget))
        if budget.spent() or len(out) >= SLICE_QUEUES_MAX:
            break
    return SliceFigures(instance=instance, slot=slot, queues=tuple(out))


def next_slice(
    queues: Mapping[tuple[str, int], QueueState], done: SliceFigures
) -> tuple[str, int, int] | None:
    """Where the slice after ``done`` starts: (topic, queue, offset); None at the pass's end."""
    if not done.queues:
        return None
    last = done.queues[-1]
    # Continue a queue only where the budget cut it: the items appended since it was read
    # are the next pass's (chasing a growing queue's tail would never end the pass).
    if last.stop < last.end and (last.topic, last.queue) in queues:
        return last.topic, last.queue, last.stop
    later = [k for k in queues if k > (last.topic, last.queue)]
    if not later:
        return None
    topic, queue = min(later)
    return topic, queue, queues[(topic, queue)].first


def _bucket_text(b: BucketFigures | None, groups: Sequence[str]) -> str:
    if b is None:
        return "absent"
    consumed = ",".join(f"{g}:{c}" for g, c in zip(groups, b.consumed, strict=True))
    return f"offsets {b.start}-{b.end} items {b.items} digest {b.digest:016x}" + (
        f" consumed {consumed}" if consumed else ""
    )


def compare(mine: SliceFigures, theirs: SliceFigures, proposer: str) -> list[Mismatch]:
    """Every difference between two replicas' figures of the same slice at the same point."""
    out: list[Mismatch] = []

    def add(topic: str, queue: int, bucket: int, what: str, *sides: str) -> None:
        m, t = sides
        out.append(
            Mismatch(
                instance=mine.instance,
                topic=topic,
                queue=queue,
                bucket=bucket,
                what=what,
                mine=m,
                theirs=t,
                proposer=proposer,
            )
        )

    their_queues = {(f.topic, f.queue): f for f in theirs.queues}
    my_queues = {(f.topic, f.queue): f for f in mine.queues}
    for key in sorted(set(my_queues) | set(their_queues)):
        m, t = my_queues.get(key), their_queues.get(key)
        topic, queue = key
        if m is None or t is None:
            add(
                topic,
                queue,
                -1,
                "queue",
                "absent" if m is None else "present",
                "absent" if t is None else "present",
            )
            continue
        if (m.first, m.end, m.start, m.stop) != (t.first, t.end, t.start, t.stop):
            add(
                topic,
                queue,
                -1,
                "offsets",
                f"first {m.first} end {m.end} read {m.start}-{m.stop}",
                f"first {t.first} end {t.end} read {t.start}-{t.stop}",
            )
        if (m.groups, m.cursors) != (t.groups, t.cursors):
            add(topic, queue, -1, "cursors", _cursors_text(m), _cursors_text(t))
        if m.gap != t.gap:
            add(topic, queue, -1, "stored_vs_acknowledged", m.gap or "none", t.gap or "none")
        mb = {(b.bucket, b.start): b for b in m.buckets}
        tb = {(b.bucket, b.start): b for b in t.buckets}
        for bkey in sorted(set(mb) | set(tb)):
            bm, bt = mb.get(bkey), tb.get(bkey)
            if bm == bt and m.groups == t.groups:
                continue
            what = "bucket"
            if bm is not None and bt is not None:
                if (bm.end, bm.items) != (bt.end, bt.items):
                    what = "items"
                elif bm.digest != bt.digest:
                    what = "content"
                else:
                    what = "consumed"
            add(topic, queue, bkey[0], what, _bucket_text(bm, m.groups), _bucket_text(bt, t.groups))
    return out


def _cursors_text(f: QueueFigures) -> str:
    return ",".join(f"{g}:{c}" for g, c in zip(f.groups, f.cursors, strict=True)) or "none"


class Reconciler:
    """The reconciliation state of one group on one replica (RAM only; see the module
    docstring): the figures awaiting comparison, the pass schedule, counts and the latest
    mismatches and figures for ``pxq reconcile``."""

    __slots__ = (
        "buckets_compared",
        "changed",
        "kept",
        "ledger",
        "mismatches",
        "mismatches_total",
        "pass_started_ms",
        "passes",
        "skipped",
        "slices_checked",
    )

    def __init__(self) -> None:
        self.kept: SliceFigures | None = None
        """Figures computed when the last reconcile command was applied, not yet compared."""
        self.changed = True
        """Something other than a reconcile command was applied since the pass started."""
        self.pass_started_ms: int | None = None
        self.passes = 0
        self.slices_checked = 0
        self.skipped = 0
        """Commands whose figures could not be compared here (this replica restarted or
        installed a snapshot since it computed its own)."""
        self.buckets_compared = 0
        self.mismatches_total = 0
        self.mismatches: deque[Mismatch] = deque(maxlen=MISMATCHES_KEPT)
        self.ledger: dict[tuple[str, int], tuple[int, QueueFigures]] = {}
        """(topic, queue) -> (instance, latest figures), at most ``LEDGER_MAX``."""

    def due(self, wall_ms: int) -> bool:
        """Whether the master should propose a reconcile command at ``wall_ms``."""
        if self.kept is not None:
            return True
        started = self.pass_started_ms
        return started is None or self.changed or wall_ms - started >= IDLE_PASS_MS

    def check(self, theirs: SliceFigures, proposer: str, fx: EffectsBuilder) -> None:
        """Compare the proposer's figures with ours from the same point; alarm on each
        difference (up to ``ALARMS_PER_CHECK_MAX``)."""
        mine = self.kept
        if mine is None or (mine.instance, mine.slot) != (theirs.instance, theirs.slot):
            self.skipped += 1
            return
        self.slices_checked += 1
        self.buckets_compared += sum(len(q.buckets) for q in mine.queues)
        found = compare(mine, theirs, proposer)
        self.mismatches_total += len(found)
        for i, m in enumerate(found):
            self.mismatches.append(m)
            if i < ALARMS_PER_CHECK_MAX:
                fx.alarm(
                    "reconcile_mismatch",
                    at=m.instance,
                    topic=m.topic,
                    queue=m.queue,
                    bucket=m.bucket,
                    differs=m.what,
                    mine=m.mine,
                    theirs=m.theirs,
                    proposer=proposer,
                )

    def keep(self, figures: SliceFigures, fx: EffectsBuilder) -> None:
        """Keep the figures just computed (for the next command's comparison and the
        ledger); a local gap is an alarm at once."""
        self.kept = figures
        for f in figures.queues:
            if f.gap:
                fx.alarm(
                    "reconcile_gap",
                    at=figures.instance,
                    topic=f.topic,
                    queue=f.queue,
                    problem=f.gap,
                )
            key = (f.topic, f.queue)
            self.ledger.pop(key, None)
            self.ledger[key] = (figures.instance, f)
            if len(self.ledger) > LEDGER_MAX:
                del self.ledger[next(iter(self.ledger))]


# -- the report of ``pxq reconcile`` -----------------------------------------------------------


@message(124)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileStatus:
    """Ask a store replica (any, not only a master) for its reconciliation report."""


@message(125)
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupReconcile:
    """One Paxos group on one replica: its log position and checksums, and what its
    reconciliation found."""

    group: int
    applied: int
    checksums: tuple[tuple[int, int], ...]
    """(instance, log checksum after it) of the recently applied instances this replica
    still knows, ascending (the latest is ``applied``)."""
    halted: str
    """Why the group stopped applying (evidence of divergence), "" if it runs."""
    passes: int
    slices_checked: int
    skipped: int
    buckets_compared: int
    mismatches_total: int
    mismatches: tuple[Mismatch, ...]
    """The latest (at most ``MISMATCHES_KEPT``), oldest first."""
    figures: tuple[tuple[int, QueueFigures], ...]
    """(instance, figures) of each queue as last scrubbed (at most ``LEDGER_MAX``)."""


@message(126)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileReport:
    node: str
    store: str
    groups: tuple[GroupReconcile, ...]


def group_report(
    group: int,
    applied: int,
    checksums: Mapping[int, int],
    halted: str | None,
    recon: Reconciler,
) -> GroupReconcile:
    return GroupReconcile(
        group=group,
        applied=applied,
        checksums=tuple(sorted(checksums.items())),
        halted=halted or "",
        passes=recon.passes,
        slices_checked=recon.slices_checked,
        skipped=recon.skipped,
        buckets_compared=recon.buckets_compared,
        mismatches_total=recon.mismatches_total,
        mismatches=tuple(recon.mismatches),
        figures=tuple((at, f) for (at, f) in (recon.ledger[k] for k in sorted(recon.ledger))),
    )
