"""``QueueStore``: the queue state machine of one Paxos group of a store.

It owns the queues of one group (queue q of a topic lives in group q mod G of the store that
``pxq.routing.StoreRing`` assigns it to): their items with dense per-queue offsets, the consumer groups'
cursors with their fencing tokens, producer deduplication, retry moves and retention. It
implements ``pxq.paxos.sm.StateMachine``; the commands it applies are in ``commands.py``, the
tables and keys in ``records.py``.

Memory: only per-queue metadata (offsets, last enqueue time, cursors) and per-producer
(highest seq, last use) live in RAM; items and dedupe receipts are read through the storage
view when needed, so a replica can hold millions of items with little RSS (measured with
``pxq bench --rss``: RssAnon flat from 100,000 to 5,000,000 items). Within one step the view
does not show the step's own writes, so every write goes through ``StepOverlay``. Reads ask
the view only for the key range they can use (a view may read rows in chunks per
positioning), so a Get costs the rows it returns, not the queue's length.

Semantics, beyond the client API's docstrings (``messages.py``):

* Enqueue stamps the proposer's wall time, raised to the queue's previous stamp if the clock
  went back: stamps never decrease within a queue, so replay-by-time is a binary search.
* Deduplication: per producer, the receipts of the sequence numbers in (high - window, high]
  are kept; a seq in that window answers its receipt (``duplicate=True``) or, if never seen,
  is appended; a seq at or below ``high - window`` is answered ``stale_sequence`` (definite).
  Producers beyond ``producers_max`` are forgotten least recently used first (an evicted
  producer's late retry is appended again: the window is the guarantee).
* Pipelined batches: an enqueue with ``after`` is appended only if the producer's batch
  ``after`` was (its receipt is in the window, or it is below the window and so can never be
  appended any more); otherwise ``out_of_order`` (definite, nothing remembered). A duplicate
  is answered its receipt before this check. Applied in log order on every replica, so the
  answer is the same everywhere.
* Seek epochs: each cursor has an epoch (0 at first, persisted with it, so in snapshots too).
  Seek moves a cursor either way, keeps its token and increments its epoch, even when the
  position stays: a commit or retry carries the epoch of the Get it is based on, and one
  below the cursor's epoch is ``stale_epoch`` and changes nothing, so a commit issued before a
  rewind cannot undo it. An epoch above the cursor's is ``bad_request`` (no Get reported it).
* Commit: a token below the highest seen for the cursor is ``stale_token`` (token 0 is a
  consumer without a lock, given its queues by the application: never fenced, and it does
  not lower the highest token seen); then the epoch is
  checked; a cursor beyond the queue's end is ``bad_cursor``; a lower cursor than the current
  one leaves it unchanged (answered with the current cursor).
* Retry: fenced and epoch-checked like a commit (after ``bad_cursor`` for an offset beyond the
  end); the item at ``offset`` (not below the cursor: ``stale_offset``) is copied, with
  attempt + 1 and ``not_before_ms`` = proposer time + the level's delay, to the next retry
  level of the group, or to its dead-letter topic after the last level; the cursor moves past
  ``offset`` in the same command. A group with ``dead_letter = false`` gets ``no_dead_letter``
  after its last level and the item stays (its consumer redelivers it in place): nothing is
  ever dropped silently.
* Seek targets: an offset or a wall time (absolute, either way; a move forward is reported
  in ``SeekOk.forward``), or ``back_ms``: a rewind on the store's time, ``max(proposer's
  wall, the queue's newest stamp) - back_ms``, which never moves a cursor forward, so neither
  the caller's clock nor a master's clock behind the stamps can make a rewind skip items.
* Retention (``pxq.config`` states the rule): a tick removes whole rows (enqueue batches)
  below the floor; the floor never passes a subscribed group's cursor, checked on every tick.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, assert_never

from pxq import codec
from pxq.config.model import ClusterConfig, ConsumerGroupConfig, TopicInfo
from pxq.effects import EffectsBuilder, InvariantViolation, StorageView
from pxq.headers import pairs_of_flat
from pxq.positional import CommandError
from pxq.store.commands import (
    CommitCmd,
    EnqueueCmd,
    ReconcileCmd,
    RetryCmd,
    SeekCmd,
    TickCmd,
    decode_command,
)
from pxq.store.messages import (
    CommitOk,
    EnqueueOk,
    Get,
    GetOk,
    RetryOk,
    SeekOk,
    SeekPreview,
    StoredItem,
    StoreError,
)
from pxq.store.overlay import StepOverlay
from pxq.store.reconcile import Reconciler, SliceFigures, next_slice, scrub_slice
from pxq.store.records import (
    NAME_BYTES_MAX,
    Q_CURSOR,
    Q_DEDUPE,
    Q_ITEM,
    Q_PRODUCER,
    Q_QUEUE,
    TABLES,
    U64_MAX,
    cursor_key,
    decode_cursor,
    decode_producer,
    decode_queue_meta,
    decode_receipt,
    dedupe_key,
    encode_cursor,
    encode_producer,
    encode_queue_meta,
    encode_receipt,
    encode_row,
    group_bounds,
    pack_items,
    parse_cursor_key,
    parse_producer_key,
    parse_queue_key,
    producer_key,
    queue_prefix,
    row_head,
    row_items,
    u64,
    unpack_items,
)
from pxq.topics import dead_letter_topic, retry_topic

SNAPSHOT_MAGIC = b"PXQS\x02"
"""First bytes of a queue store snapshot (format version 2: cursor records carry the seek
epoch; a version 1 snapshot is refused like a corrupt one)."""
_DEDUPE_DELETES_MAX = 8
"""Above this many sequence numbers leaving the window at once, one range delete is cheaper."""


@dataclass(slots=True)
class _Queue:
    """What RAM holds of one queue: offsets, the last stamp, the cursors."""

    topic: str
    queue: int
    prefix: bytes
    first: int = 0
    """Lowest offset still stored (the start of the oldest kept row)."""
    end: int = 0
    """Offset the next item will take."""
    last_ms: int = 0
    """Enqueue stamp of the newest row."""
    cursors: dict[str, list[int]] = field(default_factory=dict)
    """Consumer group -> [cursor, highest fencing token, seek epoch]."""

    def cursor_of(self, group: str) -> tuple[int, int, int]:
        """(cursor, highest token, seek epoch) of ``group``; all 0 if it has no record."""
        c = self.cursors.get(group)
        return (0, 0, 0) if c is None else (c[0], c[1], c[2])


@dataclass(slots=True)
class _Producer:
    key: bytes
    high: int
    instance: int
    slot: int


def _encode(msg: object) -> bytes:
    return codec.encode(msg)


def _error(code: str, message: str) -> bytes:
    return codec.encode(StoreError(code=code, message=message, definite=True))


class QueueStore:
    """The queues of one Paxos group of ``store``; a ``pxq.paxos.sm.StateMachine``."""

    __slots__ = (
        "config",
        "db",
        "group",
        "groups",
        "limits",
        "owned",
        "producers",
        "queues",
        "recon",
        "store",
        "view",
    )

    def __init__(self, view: StorageView, group: int, config: ClusterConfig, store: str) -> None:
        self.view = view
        self.group = group
        self.config = config
        self.store = store
        self.groups = config.store(store).groups
        if not 0 <= group < self.groups:
            raise ValueError(f"group {group} outside 0..{self.groups - 1} of store {store!r}")
        self.limits = config.limits
        self.db = StepOverlay(view)
        self.queues: dict[tuple[str, int], _Queue] = {}
        self.producers: dict[str, _Producer] = {}
        """In least-recently-used-first order (a use moves a producer to the end)."""
        self.owned: dict[tuple[str, int], bool] = {}
        """Cache: does this group of this store hold (base topic, queue)?"""
        self.recon = Reconciler()
        """Live reconciliation (``pxq.store.reconcile``): RAM only, reset by load/install."""

    # -- StateMachine -------------------------------------------------------------------------

    def load(self) -> None:
        lo, hi = group_bounds(self.group)
        self.db.end_step()
        self.recon = Reconciler()
        self._rebuild(
            self.view.scan(Q_QUEUE, lo, hi),
            self.view.scan(Q_CURSOR, lo, hi),
            self.view.scan(Q_PRODUCER, lo, hi),
        )

    def apply(self, instance: int, slot: int, value: bytes, fx: EffectsBuilder) -> bytes:
        self.db.begin(fx)
        try:
            cmd = decode_command(value)
        except CommandError as exc:
            return _error("bad_request", str(exc))
        if type(cmd) is ReconcileCmd:
            return self._reconcile(instance, slot, cmd, fx)
        self.recon.changed = True
        match cmd:
            case EnqueueCmd():
                return self._enqueue(instance, slot, cmd)
            case CommitCmd():
                return self._commit(cmd)
            case SeekCmd():
                return self._seek(cmd)
            case RetryCmd():
                return self._retry(cmd)
            case TickCmd():
                self._tick(cmd)
                return b""
            case ReconcileCmd():  # pragma: no cover - handled above, before the change mark
                raise InvariantViolation("reconcile command reached the match")
            case _:
                assert_never(cmd)

    def snapshot(self) -> bytes:
        """Every record of this group in every ``q_`` table, as one byte string.

        Known limit: the whole snapshot is built in memory (as the Paxos layer sends and the
        receiver buffers it whole, bounded by ``snapshot_bytes_max``).
        """
        lo, hi = group_bounds(self.group)
        parts = [SNAPSHOT_MAGIC]
        for index, table in enumerate(TABLES):
            for key, value in self.db.scan(table, lo, hi):
                parts.append(
                    bytes((index,)) + len(key).to_bytes(4, "big") + len(value).to_bytes(4, "big")
                )
                parts.append(key)
                parts.append(value)
        return b"".join(parts)

    def install(self, snapshot: bytes, fx: EffectsBuilder) -> None:
        records = _parse_snapshot(snapshot, self.group)  # all checked before anything is written
        self.db.begin(fx)
        lo, hi = group_bounds(self.group)
        for table in TABLES:
            self.db.delete_range(table, lo, hi)
        for table, key, value in records:
            self.db.put(table, key, value)
        self.recon = Reconciler()
        self._rebuild(
            ((k, v) for t, k, v in records if t == Q_QUEUE),
            ((k, v) for t, k, v in records if t == Q_CURSOR),
            ((k, v) for t, k, v in records if t == Q_PRODUCER),
        )

    def end_step(self) -> None:
        """Forget this step's writes (the driver applies them once the step returns)."""
        self.db.end_step()

    # -- queries (served from applied state, outside Paxos) ----------------------------------------

    def get(self, req: Get, now_ms: int) -> GetOk | StoreError:
        """Items of a queue from ``req.cursor``, filtered by the group's kinds, within limits;
        ``now_ms`` is the serving master's wall clock, reported as the store's time."""
        info = self.config.topic(req.topic)
        if info is None:
            return StoreError(code="unknown_topic", message=f"no topic {req.topic!r}")
        cg = info.group(req.group)
        if cg is None:
            return StoreError(
                code="unknown_group", message=f"{req.group!r} does not read {req.topic!r}"
            )
        problem = self.queue_problem(info, req.queue, cg)
        if problem is not None:
            return StoreError(code="bad_queue", message=problem)
        q = self.queues.get((req.topic, req.queue))
        if q is None:
            return GetOk(
                topic=req.topic,
                group=req.group,
                queue=req.queue,
                items=(),
                next_cursor=0,
                committed=0,
                first_offset=0,
                end_offset=0,
                now_ms=now_ms,
            )
        committed, _, epoch = q.cursor_of(req.group)
        items, next_cursor = self._read(q, cg, req.cursor, req.items_max, req.bytes_max)
        return GetOk(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            items=items,
            next_cursor=next_cursor,
            committed=committed,
            first_offset=q.first,
            end_offset=q.end,
            epoch=epoch,
            now_ms=now_ms,
        )

    def offsets(self, topic: str, queue: int) -> tuple[int, int]:
        """(first offset kept, end offset) of a queue; (0, 0) if it never held anything."""
        q = self.queues.get((topic, queue))
        return (0, 0) if q is None else (q.first, q.end)

    def cursor(self, topic: str, group: str, queue: int) -> int:
        q = self.queues.get((topic, queue))
        return 0 if q is None else q.cursor_of(group)[0]

    def epoch(self, topic: str, group: str, queue: int) -> int:
        """The seek epoch of ``group``'s cursor on a queue."""
        q = self.queues.get((topic, queue))
        return 0 if q is None else q.cursor_of(group)[2]

    def retention_due(self, wall_ms: int) -> bool:
        """Whether a retention tick proposed at ``wall_ms`` would remove anything (the master
        proposes none otherwise, so an idle or stalled group does not grow its log)."""
        return any(self._retention_target(q, wall_ms) is not None for q in self.queues.values())

    def reconcile_command(self, wall_ms: int, proposer: str) -> ReconcileCmd | None:
        """The reconcile command this group's master proposes at ``wall_ms``, or None when
        none is due (``pxq.store.reconcile``)."""
        recon = self.recon
        if not recon.due(wall_ms):
            return None
        kept = recon.kept
        at: tuple[str, int, int] | None
        if kept is not None:
            at = next_slice(self.queues, kept)
            check = codec.encode(kept)
        else:
            if not self.queues:
                return None
            first = min(self.queues)
            at, check = (*first, self.queues[first].first), b""
        if at is None:  # the pass ends with this comparison
            return ReconcileCmd(wall_ms=wall_ms, proposer=proposer, check=check, topic=None)
        return ReconcileCmd(
            wall_ms=wall_ms, proposer=proposer, check=check, topic=at[0], queue=at[1], offset=at[2]
        )

    def queue_names(self) -> list[tuple[str, int]]:
        """Every (topic, queue) this group has state for, sorted."""
        return sorted(self.queues)

    # -- rebuilding memory ------------------------------------------------------------------------

    def _rebuild(
        self,
        queue_recs: Iterable[tuple[bytes, bytes]],
        cursor_recs: Iterable[tuple[bytes, bytes]],
        producer_recs: Iterable[tuple[bytes, bytes]],
    ) -> None:
        self.queues = {}
        for key, value in queue_recs:
            _, topic, queue, _ = parse_queue_key(key)
            first, end, last_ms = decode_queue_meta(value)
            self.queues[(topic, queue)] = _Queue(
                topic=topic, queue=queue, prefix=key, first=first, end=end, last_ms=last_ms
            )
        for key, value in cursor_recs:
            _, topic, queue, group = parse_cursor_key(key)
            cursor, token, epoch = decode_cursor(value)
            self._queue(topic, queue).cursors[group] = [cursor, token, epoch]
        found = []
        for key, value in producer_recs:
            high, instance, slot = decode_producer(value)
            found.append((instance, slot, parse_producer_key(key), key, high))
        found.sort()
        self.producers = {
            name: _Producer(key=key, high=high, instance=instance, slot=slot)
            for instance, slot, name, key, high in found
        }

    # -- helpers ----------------------------------------------------------------------------------

    def _queue(self, topic: str, queue: int) -> _Queue:
        q = self.queues.get((topic, queue))
        if q is None:
            q = _Queue(topic=topic, queue=queue, prefix=queue_prefix(self.group, topic, queue))
            self.queues[(topic, queue)] = q
        return q

    def _save_queue(self, q: _Queue) -> None:
        self.db.put(Q_QUEUE, q.prefix, encode_queue_meta(q.first, q.end, q.last_ms))

    def _save_cursor(self, q: _Queue, group: str, cursor: int, token: int, epoch: int) -> None:
        q.cursors[group] = [cursor, token, epoch]
        self.db.put(Q_CURSOR, cursor_key(q.prefix, group), encode_cursor(cursor, token, epoch))

    def queue_problem(
        self, info: TopicInfo, queue: int, cg: ConsumerGroupConfig | None = None
    ) -> str | None:
        """Why ``queue`` of ``info`` is not served by this group, or None if it is."""
        if not 0 <= queue < info.queues:
            return f"queue {queue} outside 0..{info.queues - 1} of {info.name!r}"
        if queue % self.groups != self.group:
            return f"queue {queue} is in Paxos group {queue % self.groups}, not {self.group}"
        key = (info.base.name, queue)
        owned = self.owned.get(key)
        if owned is None:
            owned = self.owned[key] = self.config.store_for(info.base.name, queue) == self.store
        if not owned:
            return f"queue {queue} of {info.name!r} is not on store {self.store!r}"
        if cg is not None and not cg.subscribes_queue(queue):
            return f"group {cg.name!r} does not subscribe to queue {queue} of {info.name!r}"
        return None

    def _row_at(self, q: _Queue, offset: int) -> tuple[int, bytes]:
        """(first offset, row) of the row holding ``offset`` (which must be in [first, end)).

        The reverse scan is bounded below: a row holds at most ``enqueue_items_max`` items
        (an enqueue is refused above it; a retry copy is one item), so the row holding
        ``offset`` starts at most that far before it. A storage view may read a whole chunk of
        rows per positioning, so an unbounded range would copy rows back to the queue's first
        on every call. Rows written under a larger limit (the configuration changed) are
        still found by the unbounded scan that follows a miss."""
        end = q.prefix + u64(offset + 1)
        near = max(q.first, offset - self.limits.enqueue_items_max + 1)
        lows = (q.prefix + u64(near), q.prefix) if near > q.first else (q.prefix,)
        for low in lows:
            for key, row in self.db.scan(Q_ITEM, low, end, reverse=True):
                start = int.from_bytes(key[-8:], "big")
                if start + row_head(row)[3] <= offset:
                    break
                return start, row
        raise InvariantViolation(
            f"group {self.group}: no stored row holds offset {offset} of {q.topic}/{q.queue} "
            f"(first {q.first}, end {q.end})"
        )

    def _first_at_or_after(self, q: _Queue, time_ms: int, hi: int | None = None) -> int:
        """The first offset in [first, hi] (hi: the end by default) whose enqueue stamp is
        >= ``time_ms``, or ``hi``. A binary search over rows: stamps never decrease."""
        lo = q.first
        hi = q.end if hi is None else min(hi, q.end)
        while lo < hi:
            start, row = self._row_at(q, (lo + hi) // 2)
            stamp, _, _, count = row_head(row)
            if stamp >= time_ms:
                hi = start
            else:
                # The whole row is older; ``hi`` may fall inside it, so never step past hi.
                lo = min(start + count, hi)
        return max(lo, q.first)

    # -- enqueue ----------------------------------------------------------------------------------

    def _enqueue(self, instance: int, slot: int, cmd: EnqueueCmd) -> bytes:
        info = self.config.topic(cmd.topic)
        if info is None or info.level != 0:
            return _error("unknown_topic", f"no base topic {cmd.topic!r}")
        problem = self.queue_problem(info, cmd.queue)
        if problem is not None:
            return _error("bad_queue", problem)
        if not cmd.producer or len(cmd.producer.encode("utf-8")) > NAME_BYTES_MAX:
            return _error("bad_request", f"producer id must be 1..{NAME_BYTES_MAX} bytes")
        items = unpack_items(cmd.items, self.limits.enqueue_items_max)
        if items is None:
            return _error("bad_request", "items are not a list of [key, payload, kind]")
        window = self.limits.dedupe_window
        prod = self.producers.get(cmd.producer)
        if prod is not None:
            if cmd.seq + window <= prod.high:
                return _error(
                    "stale_sequence",
                    f"seq {cmd.seq} of producer {cmd.producer!r} is older than the dedupe "
                    f"window (highest {prod.high}, window {window})",
                )
            if cmd.seq <= prod.high:
                receipt = self.db.get(Q_DEDUPE, dedupe_key(prod.key, cmd.seq))
                if receipt is not None:
                    topic, queue, first, count = decode_receipt(receipt)
                    self._touch(cmd.producer, prod, instance, slot)
                    return _encode(
                        EnqueueOk(
                            topic=topic,
                            queue=queue,
                            first_offset=first,
                            count=count,
                            duplicate=True,
                        )
                    )
        if cmd.after:
            problem = self._unordered(cmd, prod)
            if problem is not None:
                return _error("out_of_order", problem)
        existing = self.queues.get((cmd.topic, cmd.queue))
        first, count = (0 if existing is None else existing.end), len(items)
        if count:
            # Memory holds a queue only if storage does (load must rebuild the same state).
            q = self._queue(cmd.topic, cmd.queue)
            stamp = max(cmd.wall_ms, q.last_ms)
            self.db.put(Q_ITEM, q.prefix + u64(first), encode_row(stamp, 0, 0, count, cmd.items))
            q.end += count
            q.last_ms = stamp
            self._save_queue(q)
        self._remember(cmd.producer, prod, cmd.seq, instance, slot)
        pkey = self.producers[cmd.producer].key
        self.db.put(
            Q_DEDUPE, dedupe_key(pkey, cmd.seq), encode_receipt(cmd.topic, cmd.queue, first, count)
        )
        return _encode(EnqueueOk(topic=cmd.topic, queue=cmd.queue, first_offset=first, count=count))

    def _touch(self, name: str, prod: _Producer, instance: int, slot: int) -> None:
        # Deterministic LRU: the use order is the apply order, the same on every replica.
        del self.producers[name]
        self.producers[name] = prod
        prod.instance, prod.slot = instance, slot
        self.db.put(Q_PRODUCER, prod.key, encode_producer(prod.high, instance, slot))

    def _unordered(self, cmd: EnqueueCmd, prod: _Producer | None) -> str | None:
        """Why ``cmd`` may not be appended yet (its ``after`` batch is not appended), or None.

        A receipt in the window says ``after`` was appended. Below the window it can never be
        appended any more (its seq is stale), so nothing it could be put behind is left. An
        unknown producer (new, or evicted) cannot say: the batch waits for its predecessor's
        outcome, and the producer re-sends it without ``after`` once that one is finished.
        """
        if prod is None:
            return f"producer {cmd.producer!r} unknown: seq {cmd.after} not seen yet"
        if cmd.after + self.limits.dedupe_window <= prod.high:
            return None
        if cmd.after <= prod.high and self.db.get(Q_DEDUPE, dedupe_key(prod.key, cmd.after)):
            return None
        return f"seq {cmd.after} of producer {cmd.producer!r} is not appended yet"

    def _remember(
        self, name: str, prod: _Producer | None, seq: int, instance: int, slot: int
    ) -> None:
        window = self.limits.dedupe_window
        if prod is None:
            while len(self.producers) >= self.limits.producers_max:
                self._evict(next(iter(self.producers)))
            prod = _Producer(key=producer_key(self.group, name), high=seq, instance=0, slot=0)
            self.producers[name] = prod
        elif seq > prod.high:
            # Receipts leaving the window: seqs in (old_high - window, seq - window].
            lo = max(0, prod.high - window + 1)
            hi = seq - window
            if hi >= lo:
                if hi - lo < _DEDUPE_DELETES_MAX:
                    for s in range(lo, hi + 1):
                        self.db.delete(Q_DEDUPE, dedupe_key(prod.key, s))
                else:
                    self.db.delete_range(
                        Q_DEDUPE, dedupe_key(prod.key, lo), dedupe_key(prod.key, hi + 1)
                    )
            prod.high = seq
        self._touch(name, prod, instance, slot)

    def _evict(self, name: str) -> None:
        prod = self.producers.pop(name)
        self.db.delete(Q_PRODUCER, prod.key)
        # Every dedupe key of this producer starts with its key (names are length-prefixed).
        self.db.delete_range(Q_DEDUPE, prod.key, prod.key + b"\xff" * 9)

    # -- cursors ----------------------------------------------------------------------------------

    def _cursor_target(
        self, topic: str, group: str, queue: int | None
    ) -> tuple[TopicInfo, ConsumerGroupConfig] | bytes:
        info = self.config.topic(topic)
        if info is None:
            return _error("unknown_topic", f"no topic {topic!r}")
        cg = info.group(group)
        if cg is None:
            return _error("unknown_group", f"{group!r} does not read {topic!r}")
        if queue is not None:
            problem = self.queue_problem(info, queue, cg)
            if problem is not None:
                return _error("bad_queue", problem)
        return info, cg

    def _commit(self, cmd: CommitCmd) -> bytes:
        target = self._cursor_target(cmd.topic, cmd.group, cmd.queue)
        if isinstance(target, bytes):
            return target
        q = self.queues.get((cmd.topic, cmd.queue))
        cursor, token, epoch = (0, 0, 0) if q is None else q.cursor_of(cmd.group)
        end = 0 if q is None else q.end
        if 0 < cmd.token < token:
            return _error(
                "stale_token", f"token {cmd.token} is below {token}, the highest seen here"
            )
        problem = _epoch_problem(cmd.epoch, epoch)
        if problem is not None:
            return problem
        if cmd.cursor > end:
            return _error("bad_cursor", f"cursor {cmd.cursor} is beyond the end offset {end}")
        new = max(cursor, cmd.cursor)
        if new != cursor or cmd.token > token:
            self._save_cursor(
                self._queue(cmd.topic, cmd.queue), cmd.group, new, max(token, cmd.token), epoch
            )
        return _encode(CommitOk(topic=cmd.topic, group=cmd.group, queue=cmd.queue, cursor=new))

    def _seek(self, cmd: SeekCmd) -> bytes:
        target = self._cursor_target(cmd.topic, cmd.group, cmd.queue)
        if isinstance(target, bytes):
            return target
        info, cg = target
        if sum(t is not None for t in (cmd.offset, cmd.time_ms, cmd.back_ms)) != 1:
            return _error("bad_request", "a seek needs exactly one of offset, time_ms and back_ms")
        if cmd.queue is not None:
            queues: Iterable[int] = (cmd.queue,)
        else:
            queues = (
                q
                for q in self.config.queues_of(info.base.name, self.store, self.group)
                if cg.subscribes_queue(q)
            )
        positions: list[tuple[int, int]] = []
        forward: list[tuple[int, int]] = []
        for queue in queues:
            q = self.queues.get((cmd.topic, queue))
            if q is None:
                continue  # never held anything: every cursor is 0 and stays 0
            cursor, token, epoch = q.cursor_of(cmd.group)
            position = self._seek_position(q, cursor, cmd)
            # The epoch moves even if the position stays: a commit based on an earlier Get
            # must not carry the cursor past the seek's target.
            self._save_cursor(q, cmd.group, position, token, epoch + 1)
            positions.append((queue, position))
            if position > cursor:
                forward.append((queue, cursor))
        return _encode(
            SeekOk(
                topic=cmd.topic, group=cmd.group, positions=tuple(positions), forward=tuple(forward)
            )
        )

    def _seek_position(self, q: _Queue, cursor: int, cmd: SeekCmd) -> int:
        """Where a seek ``cmd`` moves a cursor at ``cursor`` on ``q``."""
        if cmd.offset is not None:
            return min(max(cmd.offset, q.first), q.end)
        if cmd.time_ms is not None:
            return self._first_at_or_after(q, cmd.time_ms)
        # A rewind on the store's time: the stamp an enqueue applied now would get.
        # Only ever back: a target past the cursor (the stamps behind the proposer's
        # clock, or nothing enqueued lately) leaves it (the floor aside, below).
        now_ms = max(cmd.wall_ms, q.last_ms)
        back = self._first_at_or_after(q, now_ms - (cmd.back_ms or 0))
        return max(min(back, cursor), q.first)

    def preview_seek(self, req: SeekPreview, wall_ms: int) -> SeekOk | StoreError:
        """The ``SeekOk`` a seek of ``req``'s target proposed at ``wall_ms`` would give, from
        the applied state, writing nothing (``SeekPreview``)."""
        target = self._cursor_target(req.topic, req.group, req.queue)
        if isinstance(target, bytes):
            error = codec.decode(target)
            if not isinstance(error, StoreError):  # pragma: no cover - _cursor_target's errors
                raise InvariantViolation("a cursor target error must be a StoreError")
            return error
        if sum(t is not None for t in (req.offset, req.time_ms, req.back_ms)) != 1:
            return StoreError(
                code="bad_request",
                message="a seek needs exactly one of offset, time_ms and back_ms",
            )
        q = self.queues.get((req.topic, req.queue))
        if q is None:
            return SeekOk(topic=req.topic, group=req.group, positions=())
        cursor = q.cursor_of(req.group)[0]
        cmd = SeekCmd(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            offset=req.offset,
            time_ms=req.time_ms,
            back_ms=req.back_ms,
            wall_ms=wall_ms,
        )
        position = self._seek_position(q, cursor, cmd)
        return SeekOk(
            topic=req.topic,
            group=req.group,
            positions=((req.queue, position),),
            forward=((req.queue, cursor),) if position > cursor else (),
        )

    # -- retry ------------------------------------------------------------------------------------

    def _retry(self, cmd: RetryCmd) -> bytes:
        target = self._cursor_target(cmd.topic, cmd.group, cmd.queue)
        if isinstance(target, bytes):
            return target
        info, _ = target
        if info.level < 0:
            return _error("bad_request", f"{cmd.topic!r} is a dead-letter topic: no retry")
        cg = info.base.group(cmd.group)
        if cg is None:  # pragma: no cover - derived topics exist only for configured groups
            return _error("unknown_group", f"{cmd.group!r} does not read {info.base.name!r}")
        q = self.queues.get((cmd.topic, cmd.queue))
        end = 0 if q is None else q.end
        if q is None or cmd.offset >= end:
            return _error("bad_cursor", f"offset {cmd.offset} is beyond the end offset {end}")
        cursor, token, epoch = q.cursor_of(cmd.group)
        if 0 < cmd.token < token:
            return _error(
                "stale_token", f"token {cmd.token} is below {token}, the highest seen here"
            )
        # Before stale_offset: a consumer takes stale_offset as proof that its earlier
        # attempt was applied, which holds only within one epoch.
        problem = _epoch_problem(cmd.epoch, epoch)
        if problem is not None:
            return problem
        if cmd.offset < cursor or cmd.offset < q.first:
            return _error(
                "stale_offset",
                f"offset {cmd.offset} is below the cursor {cursor} (already handled or retried)",
            )
        start, row = self._row_at(q, cmd.offset)
        _, attempt, _, _ = row_head(row)
        item = row_items(row)[cmd.offset - start]
        level = info.level + 1
        moved_to, moved_offset, not_before = "", -1, 0
        if level <= len(cg.retries):
            moved_to = retry_topic(info.base.name, cg.name, level)
            not_before = cmd.wall_ms + cg.retries[level - 1].delay_ms
        elif cg.dead_letter:
            moved_to = dead_letter_topic(info.base.name, cg.name)
        else:
            # Without a dead-letter topic the item stays where it is: a queue never drops an
            # item silently. The consumer redelivers it in place instead of retrying it.
            return _error(
                "no_dead_letter",
                f"{cmd.group!r} has no retry level after {info.level} and no dead-letter topic",
            )
        if moved_to:
            tq = self._queue(moved_to, cmd.queue)
            stamp = max(cmd.wall_ms, tq.last_ms)
            moved_offset = tq.end
            self.db.put(
                Q_ITEM,
                tq.prefix + u64(moved_offset),
                encode_row(stamp, attempt + 1, min(not_before, U64_MAX), 1, pack_items([item])),
            )
            tq.end += 1
            tq.last_ms = stamp
            self._save_queue(tq)
        new = cmd.offset + 1
        self._save_cursor(q, cmd.group, new, max(token, cmd.token), epoch)
        return _encode(
            RetryOk(
                topic=cmd.topic,
                group=cmd.group,
                queue=cmd.queue,
                cursor=new,
                moved_to=moved_to,
                moved_offset=moved_offset,
            )
        )

    # -- reconciliation ---------------------------------------------------------------------------

    def _reconcile(self, instance: int, slot: int, cmd: ReconcileCmd, fx: EffectsBuilder) -> bytes:
        """Compare the proposer's figures with ours, then scrub the next slice (no writes)."""
        recon = self.recon
        if cmd.check:
            try:
                theirs = codec.decode(cmd.check)
            except codec.CodecError as exc:
                return _error("bad_request", f"reconcile figures: {exc}")
            if not isinstance(theirs, SliceFigures):
                return _error("bad_request", "reconcile figures are not a SliceFigures")
            recon.check(theirs, cmd.proposer, fx)
        elif cmd.topic is not None:
            recon.pass_started_ms = cmd.wall_ms
            recon.changed = False
        recon.kept = None
        if cmd.topic is None:
            recon.passes += 1
            return b""
        figures = scrub_slice(
            self.db,
            self.queues,
            start_topic=cmd.topic,
            start_queue=cmd.queue,
            start_offset=cmd.offset,
            instance=instance,
            slot=slot,
        )
        recon.keep(figures, fx)
        return b""

    # -- retention --------------------------------------------------------------------------------

    def _tick(self, cmd: TickCmd) -> None:
        for key in sorted(self.queues):
            q = self.queues[key]
            target = self._retention_target(q, cmd.wall_ms)
            if target is None:
                continue
            new_first, slowest, keep_from = target
            if new_first > slowest or new_first > keep_from:
                raise InvariantViolation(
                    f"group {self.group}: retention of {q.topic}/{q.queue} would remove "
                    f"offsets below {new_first} but a subscribed group is at {slowest} and "
                    f"the hold keeps {keep_from} on"
                )
            self.db.delete_range(Q_ITEM, q.prefix, q.prefix + u64(new_first))
            q.first = new_first
            self._save_queue(q)

    def _retention_target(self, q: _Queue, wall_ms: int) -> tuple[int, int, int] | None:
        """(new first offset, slowest subscribed cursor, first offset the item hold keeps) if a
        tick at ``wall_ms`` would remove rows of ``q``; None if it would remove nothing."""
        if q.first >= q.end:
            return None
        info = self.config.topic(q.topic)
        if info is None:
            return None  # a topic no longer configured: keep its data (no rule applies)
        subscribers = info.subscribers_of(q.queue)
        slowest = min((q.cursor_of(g.name)[0] for g in subscribers), default=q.end)
        floor = min(slowest, q.end)
        hold = info.retention
        keep_from = q.end if hold.hold_items is None else max(0, q.end - hold.hold_items)
        floor = min(floor, keep_from)
        if floor <= q.first:
            return None
        if hold.hold_ms is not None:
            # Items stamped at or after now - hold_ms are kept.
            floor = self._first_at_or_after(q, wall_ms - hold.hold_ms, floor)
            if floor <= q.first:
                return None
        new_first = q.end if floor >= q.end else self._row_at(q, floor)[0]
        if new_first <= q.first:
            return None
        return new_first, slowest, keep_from

    # -- reading ----------------------------------------------------------------------------------

    def _read(
        self, q: _Queue, cg: ConsumerGroupConfig, cursor: int, items_max: int, bytes_max: int
    ) -> tuple[tuple[StoredItem, ...], int]:
        limits = self.limits
        items_max = min(items_max, limits.get_items_max)
        bytes_max = min(bytes_max, limits.get_bytes_max)
        pos = max(cursor, q.first)
        if pos >= q.end or items_max < 1:
            return (), min(pos, q.end)
        kinds = cg.kind_set
        scan_max = limits.get_scan_items_max
        out: list[StoredItem] = []
        nbytes = scanned = 0
        # Offsets this Get may look at: [pos, stop). Bounding the scan's range (not only the
        # loop) keeps a storage view that reads rows in chunks from copying rows it won't use.
        stop = min(q.end, pos + (scan_max if kinds is not None else min(items_max, scan_max)))
        start, first_row = self._row_at(q, pos)
        rows: Iterator[tuple[int, bytes]] = itertools.chain(
            ((start, first_row),),
            (
                (int.from_bytes(key[-8:], "big"), row)
                for key, row in self.db.scan(
                    Q_ITEM, q.prefix + u64(start + row_head(first_row)[3]), q.prefix + u64(stop)
                )
            ),
        )
        for rstart, row in rows:
            stamp, attempt, not_before, count = row_head(row)
            head = (stamp, attempt, not_before)
            items: list[list[Any]] = row_items(row)
            for i in range(pos - rstart, count):
                it = items[i]
                k, p, kind = it[0], it[1], it[2]
                if kinds is None or kind in kinds:
                    size = len(k) + len(p)
                    if out and nbytes + size > bytes_max:
                        return tuple(out), pos
                    headers = pairs_of_flat(it[3]) if len(it) == 4 else ()
                    out.append(_stored_item(rstart + i, k, p, kind, head, headers=headers))
                    nbytes += size
                pos = rstart + i + 1
                scanned += 1
                if len(out) >= items_max or scanned >= scan_max:
                    return tuple(out), pos
        return tuple(out), pos


_STORED_ITEM_FIELDS: Final = (
    "offset",
    "enqueued_ms",
    "key",
    "payload",
    "kind",
    "attempt",
    "not_before_ms",
    "headers",
)
if (
    tuple(f.name for f in dataclasses.fields(StoredItem)) != _STORED_ITEM_FIELDS
    or hasattr(StoredItem, "__post_init__")
    or not all(
        isinstance(vars(StoredItem).get(n), types.MemberDescriptorType) for n in _STORED_ITEM_FIELDS
    )
):  # pragma: no cover - guards the fast constructor below against a changed StoredItem
    raise InvariantViolation("StoredItem changed: update _stored_item")
_NEW = object.__new__
(
    _SET_OFFSET,
    _SET_MS,
    _SET_KEY,
    _SET_PAYLOAD,
    _SET_KIND,
    _SET_ATTEMPT,
    _SET_NOT_BEFORE,
    _SET_HEADERS,
) = (vars(StoredItem)[n].__set__ for n in _STORED_ITEM_FIELDS)


def _stored_item(
    offset: int,
    key: bytes,
    payload: bytes,
    kind: str,
    head: tuple[int, int, int],
    *,
    headers: tuple[tuple[str, str], ...],
) -> StoredItem:
    """``StoredItem(...)`` at a third of the cost (a Get builds one per item), ``head`` being
    the row's (enqueue stamp, attempt, not_before_ms): the generated ``__init__`` of a frozen
    dataclass sets each field through ``object.__setattr__``; this sets the slots directly, as
    ``pxq.codec`` does when it decodes one. The values come from a row checked when its
    enqueue was applied, so they have the declared types."""
    item: StoredItem = _NEW(StoredItem)
    _SET_OFFSET(item, offset)
    _SET_MS(item, head[0])
    _SET_KEY(item, key)
    _SET_PAYLOAD(item, payload)
    _SET_KIND(item, kind)
    _SET_ATTEMPT(item, head[1])
    _SET_NOT_BEFORE(item, head[2])
    _SET_HEADERS(item, headers)
    return item


def _epoch_problem(sent: int, current: int) -> bytes | None:
    """The error answering a commit or retry based on seek epoch ``sent`` when the cursor is at
    epoch ``current``, or None if they agree."""
    if sent < current:
        return _error(
            "stale_epoch",
            f"epoch {sent} is below the cursor's epoch {current}: a seek moved the cursor "
            "since the read this request is based on",
        )
    if sent > current:
        return _error("bad_request", f"epoch {sent} is above the cursor's epoch {current}")
    return None


def _parse_snapshot(data: bytes, group: int) -> list[tuple[str, bytes, bytes]]:
    if not data.startswith(SNAPSHOT_MAGIC):
        raise InvariantViolation("queue store snapshot: bad magic")
    lo, hi = group_bounds(group)
    records: list[tuple[str, bytes, bytes]] = []
    pos = len(SNAPSHOT_MAGIC)
    n = len(data)
    while pos < n:
        if pos + 9 > n:
            raise InvariantViolation("queue store snapshot truncated")
        index = data[pos]
        klen = int.from_bytes(data[pos + 1 : pos + 5], "big")
        vlen = int.from_bytes(data[pos + 5 : pos + 9], "big")
        pos += 9
        if index >= len(TABLES) or pos + klen + vlen > n:
            raise InvariantViolation("queue store snapshot corrupt")
        key = data[pos : pos + klen]
        value = data[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        if not lo <= key < hi:
            raise InvariantViolation(f"queue store snapshot holds a key outside group {group}")
        records.append((TABLES[index], key, value))
    return records
