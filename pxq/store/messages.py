"""The store's client API: what producers, consumers and operators send to a store node, and
what it answers (codec tags 64-127).

Addressing: a queue is ``(topic, queue)``; a consumer group reads it through its own cursor
``(topic, group, queue)``. Offsets are dense per queue, starting at 0: the cursor of a group is
the offset of the next item it has not yet handled.

Seek epochs: every cursor has an ``epoch``, 0 at first, incremented by each applied ``Seek``
that sets the cursor (whether or not its position changes). ``GetOk`` reports it; a consumer
sends the epoch of the Get its position is based on with every ``CommitCursor`` and ``Retry``,
and the store refuses one from before the latest seek (``stale_epoch``). So a commit issued
before an operator's rewind cannot move the cursor forward again once the rewind is applied:
the consumer learns of the seek instead, and restarts from the rewound cursor. Retry levels
and dead letters are derived topics that share the placement of their base topic
(``pxq.topics`` names them, ``pxq.routing`` places them): ``"{topic}.retry.{group}.{level}"``
and ``"{topic}.dlq.{group}"``.

Answers are precise about outcomes: ``StoreRedirect`` and ``StoreError(definite=True)`` mean
the request did not take effect; ``StoreError(definite=False)`` means it may have (the
client must treat it like a timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.codec import message
from pxq.effects import fast_init


@message(64)
@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One item as a producer hands it over."""

    key: bytes
    payload: bytes
    kind: str = ""
    """What the item is about; consumer groups may subscribe to some kinds only (PhxQueue's
    pub ids). Empty: the default kind."""
    headers: tuple[tuple[str, str], ...] = ()
    """Application headers in ``pxq.headers`` normal form ((name, value) pairs sorted by
    name, within its limits; else ``bad_request``). Kept through retry levels and dead
    letters."""


@message(65)
@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    """Append ``items`` to one queue, atomically and in order.

    ``(producer, seq)`` makes the call idempotent: a retry with the same pair is answered with
    the original receipt and appends nothing (within the store's dedupe window). ``seq``
    increases per producer.

    ``after`` (0: none) orders pipelined batches: the ``seq`` of this producer's previous batch
    to the same queue, still unacknowledged when this one was sent. The store appends this
    batch only once that one has been appended; before, it answers ``out_of_order`` (definite:
    nothing appended), and the producer re-sends it behind its predecessor.
    """

    topic: str
    queue: int
    producer: str
    seq: int
    items: tuple[Item, ...]
    after: int = 0


@message(66)
@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueOk:
    """The items are durable on a majority at offsets ``first_offset .. first_offset+count-1``.
    ``duplicate``: this answers a retry of an enqueue that had already been applied."""

    topic: str
    queue: int
    first_offset: int
    count: int
    duplicate: bool = False


@message(67)
@dataclass(frozen=True, slots=True, kw_only=True)
class Get:
    """Read up to ``items_max`` items / ``bytes_max`` payload bytes of a queue from ``cursor``,
    keeping only the kinds ``group`` subscribes to. Served by the master only."""

    topic: str
    group: str
    queue: int
    cursor: int
    items_max: int
    bytes_max: int


@message(68)
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredItem:
    """An item as stored and delivered."""

    offset: int
    enqueued_ms: int
    """Wall ms stamped by the master that proposed the enqueue (used by replay-by-time)."""
    key: bytes
    payload: bytes
    kind: str = ""
    attempt: int = 0
    """0 for a first delivery from the base topic; n on retry level n."""
    not_before_ms: int = 0
    """Wall ms, on the store's time (the proposing master's wall clock), before which a
    consumer must not hand the item to its handler (retry delay); compared with
    ``GetOk.now_ms``, never with the consumer's own wall clock."""
    headers: tuple[tuple[str, str], ...] = ()
    """The headers the producer gave (``Item.headers``)."""


@message(69)
@dataclass(frozen=True, slots=True, kw_only=True)
class GetOk:
    """Items from the requested cursor on (possibly none). ``next_cursor`` is where the next
    Get should start (past filtered-out items too); ``committed`` is the group's replicated
    cursor; ``first_offset`` the oldest offset retention kept; ``end_offset`` the next offset
    an enqueue will take; ``epoch`` the seek epoch of the group's cursor (see the module
    docstring), read together with ``committed``; ``now_ms`` the answering master's wall
    clock, the store's time on which retry delays (``StoredItem.not_before_ms``) are
    measured: a consumer waits ``not_before_ms - now_ms`` on its own monotonic clock from the
    answer on, so its own wall clock never matters."""

    topic: str
    group: str
    queue: int
    items: tuple[StoredItem, ...]
    next_cursor: int
    committed: int
    first_offset: int
    end_offset: int
    epoch: int = 0
    now_ms: int


@message(70)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitCursor:
    """Advance ``group``'s cursor on a queue to ``cursor`` (replicated through the log).

    ``token`` is the fencing token of the consumer's lock on (group, queue): a commit whose
    token is lower than the highest token the store has seen for that cursor is rejected
    (``StoreError("stale_token")``). 0 means a consumer without a lock (queues given by the
    application): never fenced, and it leaves the highest token as it is.
    A cursor never moves backwards through a commit (only through a Seek).

    ``epoch`` is the cursor's seek epoch as reported by the ``GetOk`` that the consumer's
    position is based on: below the cursor's current epoch (a Seek was applied since) the
    commit is refused with ``StoreError("stale_epoch")`` and changes nothing; above it, with
    ``bad_request``.
    """

    topic: str
    group: str
    queue: int
    cursor: int
    token: int = 0
    epoch: int = 0


@message(71)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitOk:
    topic: str
    group: str
    queue: int
    cursor: int


@message(72)
@dataclass(frozen=True, slots=True, kw_only=True)
class Seek:
    """Move ``group`` on one queue, or on every queue of the topic this store holds when
    ``queue`` is None. Exactly one target is given:

    * ``offset``: to that offset (absolute; either way);
    * ``time_ms``: to the first item stamped at or after that wall time (absolute; either
      way). The stamps are the masters' wall clocks, so a time read from another clock may
      land anywhere relative to them;
    * ``back_ms``: a rewind by that many ms *on the store's time*: to the first item stamped
      at or after ``T - back_ms``, ``T`` being the stamp an enqueue applied with the seek would
      get (the proposing master's wall clock, raised to the queue's newest stamp). Never
      forward: a cursor already below that target stays where it is, so a relative seek can
      never pass items the group has not consumed, whatever the caller's or masters' clocks.

    Replicated and applied once; a target below the retention floor lands on the floor. Every
    cursor the seek sets gets its epoch incremented, even if its position stays (a queue that
    never held anything has no cursor to set), so commits and retries based on an earlier Get
    are refused."""

    topic: str
    group: str
    queue: int | None
    offset: int | None = None
    time_ms: int | None = None
    back_ms: int | None = None


@message(73)
@dataclass(frozen=True, slots=True, kw_only=True)
class SeekOk:
    topic: str
    group: str
    positions: tuple[tuple[int, int], ...]
    """(queue, cursor) for every queue whose cursor the seek set, moved or not: its epoch
    moved, so the group's consumer goes back to it (a queue that never held anything has no
    cursor and is not listed)."""
    forward: tuple[tuple[int, int], ...] = ()
    """(queue, cursor before the seek) for every queue whose cursor the seek moved *forward*
    (an absolute target past the group's committed cursor): the items from that cursor up to
    the new one will not be delivered to the group. Never set by a ``back_ms`` seek, except
    where the cursor was below the retention floor."""


@message(74)
@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """The handler failed on the item at ``offset`` of a queue of ``topic`` (a base topic or
    one of its retry levels): atomically append a copy to the next retry level of ``group``
    (or to its dead-letter topic after the last level) with the level's delay, and advance the
    group's cursor past ``offset``. Fenced by ``token`` and checked against the cursor's
    seek ``epoch`` like a commit (``stale_epoch``, ``bad_request``)."""

    topic: str
    group: str
    queue: int
    offset: int
    token: int = 0
    epoch: int = 0


@message(75)
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryOk:
    topic: str
    group: str
    queue: int
    cursor: int
    moved_to: str
    """The topic the item went to (a retry level or the dead-letter topic)."""
    moved_offset: int


@message(76)
@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRedirect:
    """This node is not the master of the queue's Paxos group: nothing happened. ``master``
    is the node believed to be master, if any."""

    master: str | None


@message(77)
@dataclass(frozen=True, slots=True, kw_only=True)
class StoreError:
    """A request failed. ``definite``: it certainly took no effect. Definite codes:
    ``unknown_topic``, ``unknown_group``, ``bad_queue``, ``too_large``, ``overloaded``,
    ``stale_token`` (a newer lock holder exists), ``stale_epoch`` (a commit or retry based on a
    Get from before the cursor's latest Seek: re-read the cursor and restart from it),
    ``stale_sequence`` (an enqueue retry older than the dedupe window), ``bad_cursor`` (beyond
    the end), ``stale_offset`` (a retry of an item the cursor already passed), ``no_dead_letter``
    (no level left and no dead-letter topic), ``partial`` (a seek over all queues reached only
    some groups), ``bad_request`` (malformed, or a seek epoch above the cursor's),
    ``storage_full`` (an enqueue refused by the production driver because the replica's
    storage is below its reserve; the message names the limit; ``net.node.runner``). Indefinite:
    ``unknown`` (mastership lost while the request was in flight: it may still be applied)."""

    code: str
    message: str
    definite: bool = True


@message(78)
@dataclass(frozen=True, slots=True, kw_only=True)
class SeekPreview:
    """Where a ``Seek`` of ``group`` on one queue with this target (exactly one of
    ``offset``, ``time_ms``, ``back_ms``, as in ``Seek``) would move the cursor if it were
    applied now, without moving it (``pxq seek --dry-run``). Served by the master from its
    applied state like a ``Get``, nothing proposed; answered with the ``SeekOk`` the seek
    would give (``positions`` and ``forward``), a ``back_ms`` measured from the master's wall
    clock now. A seek applied later may land elsewhere (items enqueued, cursors committed,
    retention in between)."""

    topic: str
    group: str
    queue: int
    offset: int | None = None
    time_ms: int | None = None
    back_ms: int | None = None


StoreRequest = Enqueue | Get | CommitCursor | Seek | Retry | SeekPreview
StoreResponse = EnqueueOk | GetOk | CommitOk | SeekOk | RetryOk | StoreRedirect | StoreError
