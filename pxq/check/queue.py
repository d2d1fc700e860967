"""Checkers for queue histories: total-queue accounting, per-queue order, replay and retry flow.

This module owns the queue checkers and the helpers they share: reading the queue operations
of a history (``queue_history``), indexing who claims which offset (``offset_index``) and the
offsets a consumer group must receive (``_Frontier``). Each concept lives in one place.

The workload's history (Jepsen-style; see ``history.py``). Fields other than the core keys are
the ops' extras; where both an invoke and its completion carry a field they must agree.

- ``enqueue``: ``value`` = a unique msg id (str); ``topic`` (a base topic), ``queue`` (int),
  ``key``, optional ``kind`` (str, default ``""``), optional ``producer`` (str: the producer
  client that took the call, for the producer-order check). An ``ok`` completion adds
  ``offset``.
  ``fail``: definitely not enqueued; ``info`` or no completion: unknown.
- ``deliver`` (invoke + ok): a consumer handed an item to its handler. ``value`` = msg id;
  ``group``, ``topic`` (the base topic, or one of the group's retry-level or dead-letter
  topics), ``queue``, ``offset``, optional ``attempt``. Only ``ok`` completions count.
- ``handle``: the handler's result for a delivered item. ``value`` = msg id; ``group``,
  ``topic``, ``queue``, optional ``offset``; ``outcome`` ``"ok"`` or ``"fail"`` (on the
  completion or the invoke). A ``fail``/``info`` completion counts as a failed handler; a
  handle never completed has no outcome.
- ``commit``: ``group``, ``topic``, ``queue``, ``cursor``; ``ok``/``fail``/``info``.
- ``seek``: ``group``, ``topic``, ``queue`` (int, or null for every queue), ``offset``,
  ``time_ms`` or ``back_ms``; an ``ok`` completion carries ``positions`` =
  ``[[queue, new_cursor], ...]`` for every queue that moved.
- ``consumer_crash`` / ``consumer_start``: nemesis ops, ``value`` = consumer name, ``group``.
- ``store_read``: a final read of the store (Jepsen's final read), after the run: ``topic``,
  ``queue``, optional ``node`` (the replica whose own state was read; absent: a ``Get``
  served by the master through the product's read path). An ``ok`` completion carries
  ``first`` and ``end`` (the offsets ``[first, end)`` the read covers: it started there,
  or retention removed those below ``first``) and ``items`` = ``[[offset, msg_id], ...]``,
  every item stored there; ``tail`` true if the read reached the queue's end (``end`` is
  then the queue's end offset: nothing was stored at or after it). A reader's read-back of
  one acknowledged item is such a read too.
- ``cursor_read``: a consumer started a stream from the group's committed cursor as a
  ``Get`` answered it: ``group``, ``topic``, ``queue``, ``cursor``, ``epoch`` (the cursor's
  seek epoch, which every applied seek raises).

Every other ``f`` is ignored. A *lane* is one ``(group, topic, queue)``: the unit of
delivery order. A topic's *level* for a group is 0 for the base topic, n for the group's
retry level n and ``DEAD_LETTER`` for the group's dead-letter topic (see ``topic_level``).

What the group must receive on a lane (its *required* offsets; offsets are dense from 0):
every offset, on a derived topic or when the group takes every kind; on a base topic of a
group that takes some kinds only (``group_kinds``), the offsets whose msg id is known (from an
enqueue ack or any delivery) and whose enqueue's ``kind`` the group takes. A group starts
every lane at offset 0. The checkers that judge completeness (``lost``, ``skip``,
``replay-gap``, ``dropped``) assume the history ends with a drain; ``check_total_queue``
and ``check_delivery`` tell an item the group never got that the store holds (undelivered: a
liveness failure) from one no replica holds (lost) by the final reads.

A *window* ``(from_ms, to_ms)`` scopes the checkers that take one to the operations invoked in
it (an enqueue for the item checkers); everything else in the history stays as context.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from pxq.check.history import JSON, HistoryError, Op, pair_ops
from pxq.check.log import Outcome
from pxq.check.result import CheckResult, Offenders, verdict
from pxq.topics import base_topic, dead_letter_topic, retry_level, retry_topic

Subscriptions: TypeAlias = Mapping[str, Mapping[str, Collection[int]]]
"""Consumer group -> base topic -> the queues of that topic the group reads."""

GroupKinds: TypeAlias = Mapping[str, Collection[str]]
"""Consumer group -> the item kinds it receives; a group not listed receives every kind."""

RetriesPerGroup: TypeAlias = Mapping[str, int]
"""Consumer group -> its number of retry levels (0: a failed item goes straight to the dead
letter topic). A group not listed has no retry topics: a failed item is redelivered in place."""

Lane: TypeAlias = tuple[str, str, int]
"""``(group, topic, queue)``."""

DEAD_LETTER: Final = -1
"""The level of a dead-letter topic (as ``pxq.topics.retry_level`` returns it)."""

ENQUEUE: Final = "enqueue"
DELIVER: Final = "deliver"
HANDLE: Final = "handle"
COMMIT: Final = "commit"
SEEK: Final = "seek"
CONSUMER_CRASH: Final = "consumer_crash"
CONSUMER_START: Final = "consumer_start"
READ: Final = "store_read"
CURSOR_READ: Final = "cursor_read"
OWN_STOP: Final = "own_stop"
"""A consumer gave a queue up (handover, expired or lost lock): its uncommitted deliveries
come again from the next owner, like after a crash."""
OWN_START: Final = "own_start"
"""A consumer took a queue (a new lock grant): it starts from the committed cursor, so what
the previous owner delivered without committing comes again, also when that owner was paused
and never recorded an ``own_stop``."""

_NEVER: Final = 1 << 62
"""An index after every op of any history."""

_FIRST_MAX: Final = 5
"""How many offsets an example lists (for instance the first skipped ones)."""


# --------------------------------------------------------------------------------------------
# Records


def _outcome(completion: Op | None) -> Outcome:
    if completion is None or completion.type == "info":
        return "info"
    return "ok" if completion.type == "ok" else "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueRecord:
    invoke: Op
    completion: Op | None
    msg_id: str
    topic: str
    queue: int
    kind: str
    offset: int | None
    """From an ``ok`` completion; None otherwise."""
    producer: str | None = None
    """The producer client that took the call, if the history says."""

    @property
    def outcome(self) -> Outcome:
        """``ok``, ``fail`` or ``info`` (which includes a never-completed invoke)."""
        return _outcome(self.completion)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    index: int
    """The deliver invoke's index (its ``ok`` follows at once)."""
    msg_id: str
    group: str
    topic: str
    queue: int
    offset: int
    attempt: int | None

    @property
    def lane(self) -> Lane:
        return (self.group, self.topic, self.queue)

    def to_json(self) -> dict[str, JSON]:
        return {
            "index": self.index,
            "msg_id": self.msg_id,
            "group": self.group,
            "topic": self.topic,
            "queue": self.queue,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Handling:
    index: int
    """The completion's index (when the outcome became known)."""
    msg_id: str
    group: str
    topic: str
    queue: int
    offset: int | None
    failed: bool

    @property
    def lane(self) -> Lane:
        return (self.group, self.topic, self.queue)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRecord:
    index: int
    """The completion's index, or the invoke's for a commit never completed."""
    invoke_index: int
    group: str
    topic: str
    queue: int
    cursor: int
    outcome: Outcome

    @property
    def lane(self) -> Lane:
        return (self.group, self.topic, self.queue)


@dataclass(frozen=True, slots=True, kw_only=True)
class SeekRecord:
    invoke_index: int
    completion_index: int | None
    group: str
    topic: str
    queue: int | None
    """None: every queue of the topic."""
    outcome: Outcome
    positions: dict[int, int] | None
    """Queue -> the cursor the seek set, for every queue it set, moved or not (``ok`` only)."""

    def affects(self, queue: int) -> bool:
        """Whether this seek may have set ``queue``'s cursor (a failed seek set nothing). A
        seek sets the cursor of every queue it names, moved or not (a rewind by ``back_ms``
        never moves one forward, so it often stays), and bumps its epoch: the group's
        consumer restarts from the committed cursor either way."""
        if self.outcome == "fail":
            return False
        return self.queue is None or self.queue == queue


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerEvent:
    index: int
    """The nemesis invoke's index."""
    f: str
    group: str
    consumer: JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRecord:
    """An ``ok`` final read of one queue: what the store (or one replica) held."""

    invoke_index: int
    completion_index: int
    topic: str
    queue: int
    node: str | None
    """The replica whose own state was read; None: a Get served by the master."""
    first: int
    end: int
    items: dict[int, str]
    """Offset -> msg id, for every offset of ``[first, end)`` the read returned."""
    tail: bool
    """The read reached the queue's end: nothing was stored at ``end`` or after."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CursorRead:
    """A consumer read its group's committed cursor (with the cursor's seek epoch)."""

    index: int
    time_ms: int
    consumer: str
    group: str
    topic: str
    queue: int
    cursor: int
    epoch: int

    @property
    def lane(self) -> Lane:
        return (self.group, self.topic, self.queue)


Window: TypeAlias = tuple[int, int]
"""``(from_ms, to_ms)``, both included: the span of the run a checker judges."""


def in_window(window: Window | None, time_ms: int) -> bool:
    return window is None or window[0] <= time_ms <= window[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueHistory:
    """The queue operations of a history; every list is in index order."""

    enqueues: list[EnqueueRecord]
    deliveries: list[Delivery]
    handlings: list[Handling]
    commits: list[CommitRecord]
    seeks: list[SeekRecord]
    consumer_events: list[ConsumerEvent]
    reads: list[ReadRecord] = field(default_factory=list)
    cursor_reads: list[CursorRead] = field(default_factory=list)

    def stored(self) -> dict[tuple[str, int], dict[int, str]] | None:
        """``(topic, queue)`` -> offset -> msg id, over every ``ok`` final read (the master's
        and each replica's): what some replica still held at the end. None if the history
        has no final read (nothing is known about the store)."""
        if not self.reads:
            return None
        out: dict[tuple[str, int], dict[int, str]] = {}
        for read in self.reads:
            out.setdefault((read.topic, read.queue), {}).update(read.items)
        return out

    def kind_of(self) -> dict[str, str]:
        """Msg id -> the ``kind`` its enqueue declared."""
        return {record.msg_id: record.kind for record in self.enqueues}


# --------------------------------------------------------------------------------------------
# Reading the history


def _merged(invoke: Op, completion: Op | None, name: str) -> JSON:
    """The extra ``name`` of the completion, else of the invoke; they must agree if both set."""
    value = invoke.get(name)
    if completion is not None:
        done = completion.get(name)
        if done is not None:
            if value is not None and done != value:
                raise HistoryError(
                    f"op {completion.index}: {name}={done!r} differs from the invoke's {value!r}"
                )
            value = done
    return value


def _as_int(value: JSON, index: int, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HistoryError(f"op {index}: field {name!r} must be an int >= 0, got {value!r}")
    return value


def _int(value: JSON, index: int, name: str) -> int:
    result = _as_int(value, index, name)
    assert result is not None
    return result


def _str(value: JSON, index: int, name: str) -> str:
    if not isinstance(value, str):
        raise HistoryError(f"op {index}: field {name!r} must be a str, got {value!r}")
    return value


def _msg_id(invoke: Op, completion: Op | None) -> str:
    value = invoke.value if invoke.value is not None or completion is None else completion.value
    return _str(value, invoke.index, "value")


def _read_items(value: JSON, index: int, first: int, end: int) -> dict[int, str]:
    if not isinstance(value, list):
        raise HistoryError(f"op {index}: items must be a list of [offset, msg_id]")
    out: dict[int, str] = {}
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise HistoryError(f"op {index}: items must be a list of [offset, msg_id]")
        offset = _int(pair[0], index, "items")
        if not first <= offset < end:
            raise HistoryError(f"op {index}: item offset {offset} outside [{first}, {end})")
        out[offset] = _str(pair[1], index, "items")
    return out


def _positions(value: JSON, index: int) -> dict[int, int]:
    if not isinstance(value, list):
        raise HistoryError(f"op {index}: positions must be a list of [queue, cursor]")
    out: dict[int, int] = {}
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise HistoryError(f"op {index}: positions must be a list of [queue, cursor]")
        out[_int(pair[0], index, "positions")] = _int(pair[1], index, "positions")
    return out


def queue_history(ops: Iterable[Op]) -> QueueHistory:
    """Pair the ops (see ``pair_ops``) and read the queue operations, validated.

    Raises ``HistoryError`` naming the op index when the history breaks Jepsen semantics,
    when an enqueue's msg id is not a str or is enqueued twice, when a field has the wrong
    type or invoke and completion disagree on it, when an ``ok`` enqueue lacks ``offset`` or
    an ``ok`` seek lacks ``positions``, or when a ``handle`` outcome is not ok/fail.
    """
    enqueues: list[EnqueueRecord] = []
    deliveries: list[Delivery] = []
    handlings: list[Handling] = []
    commits: list[CommitRecord] = []
    seeks: list[SeekRecord] = []
    consumer_events: list[ConsumerEvent] = []
    reads: list[ReadRecord] = []
    cursor_reads: list[CursorRead] = []
    first_enqueue_of: dict[str, int] = {}
    for invoke, completion in pair_ops(ops):
        f, at = invoke.f, invoke.index
        ok = completion is not None and completion.type == "ok"
        if f == ENQUEUE:
            msg_id = _msg_id(invoke, completion)
            if msg_id in first_enqueue_of:
                raise HistoryError(
                    f"op {at}: msg id {msg_id!r} was already enqueued by op "
                    f"{first_enqueue_of[msg_id]} (msg ids must be unique)"
                )
            first_enqueue_of[msg_id] = at
            kind = _merged(invoke, completion, "kind")
            producer = _merged(invoke, completion, "producer")
            enqueues.append(
                EnqueueRecord(
                    invoke=invoke,
                    completion=completion,
                    msg_id=msg_id,
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    kind="" if kind is None else _str(kind, at, "kind"),
                    offset=_int(_merged(invoke, completion, "offset"), at, "offset")
                    if ok
                    else None,
                    producer=None if producer is None else _str(producer, at, "producer"),
                )
            )
        elif f == DELIVER:
            if not ok:
                continue
            deliveries.append(
                Delivery(
                    index=at,
                    msg_id=_msg_id(invoke, completion),
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    offset=_int(_merged(invoke, completion, "offset"), at, "offset"),
                    attempt=_as_int(
                        _merged(invoke, completion, "attempt"), at, "attempt", optional=True
                    ),
                )
            )
        elif f == HANDLE:
            if completion is None:
                continue
            outcome = _merged(invoke, completion, "outcome")
            if completion.type == "ok" and outcome not in ("ok", "fail"):
                raise HistoryError(
                    f"op {completion.index}: handle outcome must be 'ok' or 'fail', got {outcome!r}"
                )
            handlings.append(
                Handling(
                    index=completion.index,
                    msg_id=_msg_id(invoke, completion),
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    offset=_as_int(
                        _merged(invoke, completion, "offset"), at, "offset", optional=True
                    ),
                    failed=completion.type != "ok" or outcome == "fail",
                )
            )
        elif f == COMMIT:
            commits.append(
                CommitRecord(
                    index=at if completion is None else completion.index,
                    invoke_index=at,
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    cursor=_int(_merged(invoke, completion, "cursor"), at, "cursor"),
                    outcome=_outcome(completion),
                )
            )
        elif f == SEEK:
            queue = _as_int(_merged(invoke, completion, "queue"), at, "queue", optional=True)
            positions = None
            if ok:
                assert completion is not None
                positions = _positions(completion.get("positions"), completion.index)
                if queue is not None and set(positions) - {queue}:
                    raise HistoryError(
                        f"op {completion.index}: positions name queues other than {queue}"
                    )
            seeks.append(
                SeekRecord(
                    invoke_index=at,
                    completion_index=None if completion is None else completion.index,
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=queue,
                    outcome=_outcome(completion),
                    positions=positions,
                )
            )
        elif f == READ:
            if not ok:
                continue
            assert completion is not None
            node = _merged(invoke, completion, "node")
            first = _int(completion.get("first"), completion.index, "first")
            end = _int(completion.get("end"), completion.index, "end")
            if end < first:
                raise HistoryError(f"op {completion.index}: end {end} is below first {first}")
            reads.append(
                ReadRecord(
                    invoke_index=at,
                    completion_index=completion.index,
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    node=None if node is None else _str(node, at, "node"),
                    first=first,
                    end=end,
                    items=_read_items(completion.get("items"), completion.index, first, end),
                    tail=completion.get("tail") is True,
                )
            )
        elif f == CURSOR_READ:
            if not ok:
                continue
            cursor_reads.append(
                CursorRead(
                    index=at,
                    time_ms=invoke.time_ms,
                    consumer=str(invoke.process),
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    topic=_str(_merged(invoke, completion, "topic"), at, "topic"),
                    queue=_int(_merged(invoke, completion, "queue"), at, "queue"),
                    cursor=_int(_merged(invoke, completion, "cursor"), at, "cursor"),
                    epoch=_int(_merged(invoke, completion, "epoch"), at, "epoch"),
                )
            )
        elif f in (CONSUMER_CRASH, CONSUMER_START, OWN_STOP, OWN_START):
            consumer_events.append(
                ConsumerEvent(
                    index=at,
                    f=f,
                    group=_str(_merged(invoke, completion, "group"), at, "group"),
                    consumer=invoke.value,
                )
            )
    handlings.sort(key=lambda handling: handling.index)
    commits.sort(key=lambda commit: commit.index)
    return QueueHistory(
        enqueues=enqueues,
        deliveries=deliveries,
        handlings=handlings,
        commits=commits,
        seeks=seeks,
        consumer_events=consumer_events,
        reads=reads,
        cursor_reads=cursor_reads,
    )


def topic_level(topic: str, group: str) -> int | None:
    """The level of ``topic`` for ``group``: 0 for a base topic, n for the group's retry level
    n, ``DEAD_LETTER`` for its dead-letter topic; None for another group's derived topic."""
    base = base_topic(topic)
    if base == topic:
        return 0
    try:
        level = retry_level(topic)
    except ValueError:
        return None  # a malformed retry level: nobody's topic
    if level == DEAD_LETTER:
        return level if topic == dead_letter_topic(base, group) else None
    return level if level >= 1 and topic == retry_topic(base, group, level) else None


# --------------------------------------------------------------------------------------------
# Offsets: who claims what, and what a group must receive


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """One observation that ``msg_id`` sits at an offset: an enqueue ack or a delivery."""

    msg_id: str
    source: str
    """``"enqueue"`` or the delivering group."""
    index: int

    def to_json(self) -> dict[str, JSON]:
        return {"msg_id": self.msg_id, "source": self.source, "index": self.index}


OffsetIndex: TypeAlias = dict[tuple[str, int], dict[int, list[Claim]]]
"""``(topic, queue)`` -> offset -> the claims on it, in index order of the claiming ops."""


def offset_index(history: QueueHistory) -> OffsetIndex:
    """Every claim on every ``(topic, queue, offset)``: ``ok`` enqueues and all deliveries."""
    claims: list[tuple[int, str, int, int, Claim]] = []
    for record in history.enqueues:
        if record.offset is not None:
            assert record.completion is not None
            index = record.completion.index
            claim = Claim(msg_id=record.msg_id, source="enqueue", index=index)
            claims.append((index, record.topic, record.queue, record.offset, claim))
    for d in history.deliveries:
        claim = Claim(msg_id=d.msg_id, source=d.group, index=d.index)
        claims.append((d.index, d.topic, d.queue, d.offset, claim))
    claims.sort(key=lambda entry: entry[0])
    out: OffsetIndex = {}
    for _, topic, queue, offset, claim in claims:
        out.setdefault((topic, queue), {}).setdefault(offset, []).append(claim)
    return out


class _Closed:
    """A set of integers as sorted, disjoint, non-touching closed intervals."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def take(self, lo: int, hi: int, first_max: int) -> tuple[int, list[int]]:
        """How many integers of ``[lo, hi]`` are not in the set and the first ``first_max`` of
        them; then add all of ``[lo, hi]``. O(log n) amortized."""
        if lo > hi:
            return 0, []
        starts, ends = self._starts, self._ends
        i = bisect.bisect_left(ends, lo - 1)
        j = i
        missing = 0
        first: list[int] = []
        cursor = lo
        new_lo, new_hi = lo, hi
        while j < len(starts) and starts[j] <= hi + 1:  # overlaps or touches [lo, hi]
            if starts[j] > cursor:  # the gap [cursor, starts[j] - 1] lies inside [lo, hi]
                missing += starts[j] - cursor
                first.extend(range(cursor, min(starts[j], cursor + first_max - len(first))))
            cursor = ends[j] + 1  # ends[j] >= lo - 1 and ascending
            new_lo, new_hi = min(new_lo, starts[j]), max(new_hi, ends[j])
            j += 1
        if cursor <= hi:
            missing += hi - cursor + 1
            first.extend(range(cursor, min(hi + 1, cursor + first_max - len(first))))
        starts[i:j] = [new_lo]
        ends[i:j] = [new_hi]
        return missing, first


class _Frontier:
    """The required offsets of one lane that have not been seen yet.

    ``listed`` None: every offset is required (dense); otherwise the sorted required offsets.
    """

    __slots__ = ("_closed", "_listed")

    def __init__(self, listed: list[int] | None) -> None:
        self._listed = listed
        self._closed = _Closed()

    def see(self, offset: int) -> None:
        listed = self._listed
        if listed is None:
            self._closed.take(offset, offset, 0)
            return
        i = bisect.bisect_left(listed, offset)
        if i < len(listed) and listed[i] == offset:
            self._closed.take(i, i, 0)

    def take_unseen(self, lo: int, hi: int) -> tuple[int, list[int]]:
        """The count and the first few required offsets in ``[lo, hi]`` not seen yet; they
        count as seen afterwards."""
        listed = self._listed
        if listed is None:
            return self._closed.take(lo, hi, _FIRST_MAX)
        a, b = bisect.bisect_left(listed, lo), bisect.bisect_right(listed, hi) - 1
        count, first = self._closed.take(a, b, _FIRST_MAX)
        return count, [listed[i] for i in first]


class _Required:
    """The required offsets of each lane (see the module doc), as fresh ``_Frontier``s."""

    __slots__ = ("_group_kinds", "_index", "_kind_of", "_listed")

    def __init__(
        self, history: QueueHistory, index: OffsetIndex, group_kinds: GroupKinds | None
    ) -> None:
        self._index = index
        self._kind_of = history.kind_of()
        self._group_kinds = group_kinds or {}
        self._listed: dict[Lane, list[int] | None] = {}

    def frontier(self, lane: Lane) -> _Frontier:
        """A frontier of ``lane`` with nothing seen yet."""
        if lane not in self._listed:
            group, topic, queue = lane
            kinds = self._group_kinds.get(group)
            if kinds is None or topic_level(topic, group) != 0:
                self._listed[lane] = None
            else:
                known = self._index.get((topic, queue), {})
                kind_of = self._kind_of
                self._listed[lane] = [
                    offset
                    for offset in sorted(known)
                    if kind_of.get(known[offset][0].msg_id) in kinds
                ]
        return _Frontier(self._listed[lane])


# --------------------------------------------------------------------------------------------
# Checker 1: total queue


@dataclass(slots=True)
class _GroupCounts:
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    undelivered: int = 0
    recovered: int = 0
    unrecovered: int = 0
    duplicated: int = 0
    deliveries: int = 0

    def to_json(self) -> dict[str, JSON]:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "undelivered": self.undelivered,
            "recovered": self.recovered,
            "unrecovered": self.unrecovered,
            "duplicated": self.duplicated,
            "deliveries": self.deliveries,
        }


def _subscribes(subscriptions: Subscriptions, group: str, topic: str, queue: int) -> bool:
    """Whether ``group`` reads ``queue`` of base ``topic``."""
    queues = subscriptions.get(group, {}).get(topic)
    return queues is not None and queue in queues


def _takes_kind(group_kinds: GroupKinds, group: str, kind: str | None) -> bool:
    kinds = group_kinds.get(group)
    return kinds is None or kind is None or kind in kinds


def check_total_queue(
    ops: Iterable[Op],
    subscriptions: Subscriptions,
    *,
    group_kinds: GroupKinds | None = None,
    duplicates_allowed: bool = True,
    window: Window | None = None,
) -> CheckResult:
    """Jepsen ``total-queue`` per consumer group: what goes in comes out, to every subscriber.

    For each group of ``subscriptions``, an enqueue to a queue it reads, of a kind it takes, is
    *expected*; it is *delivered* if the group got its msg id from the base topic or from one
    of the group's retry-level or dead-letter topics of it (an item that ended in the dead
    letter topic counts as delivered there). Violations:

    - ``lost``: an ``ok`` enqueue expected by a group, never delivered to it, and not held
      by the store at its acknowledged offset according to the final reads (``store_read``
      ops: the master's and each replica's). An item the store holds but the group never got is not
      lost: it is *undelivered* (``undelivered`` counts them; ``check_delivery`` judges them,
      a liveness failure). Without any final read every such item counts as lost;
    - ``unexpected``: a delivered msg id that no enqueue ever invoked;
    - ``fail-but-delivered``: a ``fail`` enqueue delivered to a group;
    - ``misplaced``: delivered from a (base topic, queue) other than the one it was enqueued to;
    - ``unsubscribed``: delivered to a group from a queue it does not read, from another
      group's derived topic, or of a kind the group does not take;
    - ``duplicated`` (only if not ``duplicates_allowed``): a delivery of a msg id the group was
      delivered before, unless that earlier delivery's handler failed (the at-least-once
      retry) or a seek of the group on the delivery's topic and queue was invoked in between
      (a requested replay). With ``duplicates_allowed`` the count and examples are reported
      all the same.

    Not violations: an indefinite enqueue may be delivered (``recovered``) or not
    (``unrecovered``). ``lost-past-last-delivery`` counts the lost items whose acked offset is
    beyond the last offset the group got from that queue (an undrained consumer rather than a
    hole); ``stored-twice`` counts msg ids seen at two offsets of base topics (a producer retry
    that the store did not deduplicate). Each is per group in ``groups`` as well.

    With ``window``, only the enqueues invoked in it are expected (deliveries count whenever
    they happened).
    """
    history = queue_history(ops)
    kinds = group_kinds or {}
    enqueue_of = {record.msg_id: record for record in history.enqueues}
    lost, unexpected, fail_delivered = Offenders(), Offenders(), Offenders()
    misplaced, unsubscribed, duplicated = Offenders(), Offenders(), Offenders()
    groups = sorted(subscriptions)
    counts = {group: _GroupCounts() for group in groups}

    # The seeks that excuse a replay, by the index of their invoke.
    seek_events = [seek for seek in history.seeks if seek.outcome != "fail"]  # invoke order
    last_seek_at: dict[tuple[str, str, int | None], int] = {}
    next_seek = 0
    delivered: dict[str, set[str]] = {}
    reported: set[tuple[str, str, str]] = set()
    previous_of: dict[tuple[str, str], Delivery] = {}
    failed_since: set[tuple[str, str]] = set()
    highest_base: dict[tuple[str, str, int], int] = {}
    handlings = history.handlings
    next_handling = 0

    def once(kind: str, d: Delivery) -> bool:
        key = (kind, d.group, d.msg_id)
        if key in reported:
            return False
        reported.add(key)
        return True

    for d in history.deliveries:
        while next_handling < len(handlings) and handlings[next_handling].index < d.index:
            handling = handlings[next_handling]
            if handling.failed:
                failed_since.add((handling.group, handling.msg_id))
            next_handling += 1
        while next_seek < len(seek_events) and seek_events[next_seek].invoke_index < d.index:
            seek = seek_events[next_seek]
            last_seek_at[(seek.group, seek.topic, seek.queue)] = seek.invoke_index
            next_seek += 1
        group_counts = counts.setdefault(d.group, _GroupCounts())
        group_counts.deliveries += 1
        level = topic_level(d.topic, d.group)
        base = base_topic(d.topic)
        record = enqueue_of.get(d.msg_id)
        kind = None if record is None else record.kind
        if level == 0:
            key = (d.group, base, d.queue)
            highest_base[key] = max(highest_base.get(key, -1), d.offset)
        if (
            level is None
            or not _subscribes(subscriptions, d.group, base, d.queue)
            or not _takes_kind(kinds, d.group, kind)
        ) and once("unsubscribed", d):
            unsubscribed.add(d.to_json() | {"kind": kind})
        if record is None:
            if once("unexpected", d):
                unexpected.add(d.to_json())
        else:
            if record.outcome == "fail" and once("fail", d):
                fail_delivered.add(d.to_json() | {"enqueue_index": record.invoke.index})
            if (record.topic, record.queue) != (base, d.queue) and once("misplaced", d):
                misplaced.add(
                    d.to_json() | {"enqueued_topic": record.topic, "enqueued_queue": record.queue}
                )
        delivered.setdefault(d.group, set()).add(d.msg_id)
        who = (d.group, d.msg_id)
        previous = previous_of.get(who)
        if previous is not None and who not in failed_since:
            seek_at = max(
                last_seek_at.get((d.group, d.topic, d.queue), -1),
                last_seek_at.get((d.group, d.topic, None), -1),
            )
            if seek_at < previous.index:
                group_counts.duplicated += 1
                duplicated.add(
                    d.to_json()
                    | {
                        "previous_index": previous.index,
                        "previous_topic": previous.topic,
                        "previous_offset": previous.offset,
                    }
                )
        previous_of[who] = d
        failed_since.discard(who)

    outcomes = {"ok": 0, "fail": 0, "info": 0}
    lost_past_last = undelivered = 0
    stored = history.stored()
    for record in history.enqueues:
        if not in_window(window, record.invoke.time_ms):
            continue
        outcomes[record.outcome] += 1
        for group in groups:
            if not _subscribes(subscriptions, group, record.topic, record.queue) or not _takes_kind(
                kinds, group, record.kind
            ):
                continue
            group_counts = counts[group]
            got = record.msg_id in delivered.get(group, ())
            if record.outcome == "ok":
                group_counts.expected += 1
                if got:
                    group_counts.delivered += 1
                    continue
                assert record.offset is not None
                if stored is not None and _held(stored, record):
                    group_counts.undelivered += 1
                    undelivered += 1
                    continue
                group_counts.lost += 1
                last = highest_base.get((group, record.topic, record.queue), -1)
                if record.offset > last:
                    lost_past_last += 1
                lost.add(
                    {
                        "group": group,
                        "msg_id": record.msg_id,
                        "topic": record.topic,
                        "queue": record.queue,
                        "offset": record.offset,
                        "enqueue_index": record.invoke.index,
                        "last_delivered_offset": last,
                    }
                )
            elif record.outcome == "info":
                if got:
                    group_counts.recovered += 1
                else:
                    group_counts.unrecovered += 1

    at_base: dict[str, set[tuple[str, int, int]]] = {}
    for (topic, queue), by_offset in offset_index(history).items():
        if base_topic(topic) != topic:
            continue
        for offset, claims in by_offset.items():
            for claim in claims:
                at_base.setdefault(claim.msg_id, set()).add((topic, queue, offset))
    stored_twice = sum(1 for places in at_base.values() if len(places) > 1)

    violations = {
        "lost": lost,
        "unexpected": unexpected,
        "fail-but-delivered": fail_delivered,
        "misplaced": misplaced,
        "unsubscribed": unsubscribed,
    }
    details: dict[str, object] = {
        "attempted": len(history.enqueues),
        "acknowledged": outcomes["ok"],
        "failed": outcomes["fail"],
        "indefinite": outcomes["info"],
        "deliveries": len(history.deliveries),
        "recovered": sum(c.recovered for c in counts.values()),
        "unrecovered": sum(c.unrecovered for c in counts.values()),
        "lost-past-last-delivery": lost_past_last,
        "undelivered": undelivered,
        "final-reads": len(history.reads),
        "stored-twice": stored_twice,
        "duplicates-allowed": duplicates_allowed,
        "groups": {group: c.to_json() for group, c in counts.items()},
    }
    if window is not None:
        details["window_ms"] = list(window)
    if duplicates_allowed:
        details["duplicated"] = duplicated.count
        details["duplicated-examples"] = list(duplicated.examples)
    else:
        violations["duplicated"] = duplicated
    expected = sum(c.expected for c in counts.values())
    return verdict(
        "total-queue",
        violations,
        passed=(
            f"{expected} expected (group, item) pairs: none lost"
            + (f" ({undelivered} stored but undelivered)" if undelivered else "")
            + f"; {duplicated.count} duplicate deliveries"
        ),
        details=details,
    )


def _held(stored: Mapping[tuple[str, int], Mapping[int, str]], record: EnqueueRecord) -> bool:
    """Whether a final read found ``record``'s item at its acknowledged offset."""
    assert record.offset is not None
    return stored.get((record.topic, record.queue), {}).get(record.offset) == record.msg_id


def check_delivery(
    ops: Iterable[Op],
    subscriptions: Subscriptions,
    *,
    group_kinds: GroupKinds | None = None,
    window: Window | None = None,
) -> CheckResult:
    """Liveness of delivery: every acknowledged item the store holds reached every group that
    expects it (see ``check_total_queue``) by the end of the run.

    Violation ``undelivered``: an ``ok`` enqueue (invoked in ``window``, if given) that a final
    ``store_read`` found at its offset and that a group expecting it never got, from the base topic
    or its own retry or dead-letter topics. Items no replica holds are ``check_total_queue``'s
    ``lost``, not counted here. A history without final reads has nothing to judge: the
    details say ``final-reads`` 0.
    """
    history = queue_history(ops)
    kinds = group_kinds or {}
    stored = history.stored()
    delivered: dict[str, set[str]] = {}
    for d in history.deliveries:
        if topic_level(d.topic, d.group) is not None:
            delivered.setdefault(d.group, set()).add(d.msg_id)
    undelivered = Offenders()
    expected = 0
    for record in history.enqueues:
        if record.offset is None or not in_window(window, record.invoke.time_ms):
            continue
        for group in sorted(subscriptions):
            if not _subscribes(subscriptions, group, record.topic, record.queue) or not _takes_kind(
                kinds, group, record.kind
            ):
                continue
            expected += 1
            if record.msg_id in delivered.get(group, ()):
                continue
            if stored is not None and _held(stored, record):
                undelivered.add(
                    {
                        "group": group,
                        "msg_id": record.msg_id,
                        "topic": record.topic,
                        "queue": record.queue,
                        "offset": record.offset,
                        "enqueue_index": record.invoke.index,
                    }
                )
    details: dict[str, object] = {"expected": expected, "final-reads": len(history.reads)}
    if window is not None:
        details["window_ms"] = list(window)
    return verdict(
        "delivery",
        {"undelivered": undelivered},
        passed=f"every stored item of {expected} expected (group, item) pairs delivered",
        details=details,
    )


def check_read_after_ack(ops: Iterable[Op], *, window: Window | None = None) -> CheckResult:
    """A ``Get`` after an acknowledged enqueue returns the item: for every ``ok`` enqueue
    (invoked in ``window``, if given) and every ``ok`` master ``store_read`` (no ``node``) of
    its queue invoked after the enqueue completed and covering its offset (in ``[first, end)``,
    or at or past ``end`` for a read that reached the queue's ``tail``), the read holds the
    item's msg id at its acknowledged offset. An offset below the read's ``first`` is not
    covered (the read started after it, or retention removed it: ``check_total_queue`` says
    whether a group missed it). Violations: ``missing`` (nothing at that offset, or the
    queue ended before it) and ``wrong-item`` (another msg id at that offset).

    O((reads + judged pairs) log n): the acknowledged offsets of each queue, sorted.
    """
    history = queue_history(ops)
    acked: dict[tuple[str, int], list[tuple[int, int, EnqueueRecord]]] = {}
    for record in history.enqueues:
        if record.offset is None or not in_window(window, record.invoke.time_ms):
            continue
        assert record.completion is not None
        acked.setdefault((record.topic, record.queue), []).append(
            (record.offset, record.completion.index, record)
        )
    for entries in acked.values():
        entries.sort(key=lambda entry: (entry[0], entry[1]))
    missing, wrong = Offenders(), Offenders()
    reads = judged = 0
    for read in history.reads:
        if read.node is not None:
            continue
        reads += 1
        entries = acked.get((read.topic, read.queue), [])
        lo = bisect.bisect_left(entries, read.first, key=lambda entry: entry[0])
        hi = (
            len(entries) if read.tail else bisect.bisect_left(entries, read.end, key=lambda e: e[0])
        )
        for offset, completed, record in entries[lo:hi]:
            if completed > read.invoke_index:
                continue
            judged += 1
            found = read.items.get(offset)
            if found == record.msg_id:
                continue
            example: dict[str, JSON] = {
                "msg_id": record.msg_id,
                "topic": record.topic,
                "queue": record.queue,
                "offset": offset,
                "enqueue_index": record.invoke.index,
                "read_index": read.invoke_index,
                "read_end": read.end,
            }
            if found is None:
                missing.add(example)
            else:
                wrong.add(example | {"found": found})
    details: dict[str, object] = {"reads": reads, "judged": judged}
    if window is not None:
        details["window_ms"] = list(window)
    return verdict(
        "read-after-ack",
        {"missing": missing, "wrong-item": wrong},
        passed=f"{judged} reads of an acknowledged item returned it ({reads} reads)",
        details=details,
    )


def check_cursor_monotonic(ops: Iterable[Op], *, window: Window | None = None) -> CheckResult:
    """A consumer never sees a committed cursor go back without a seek.

    Per lane, in index order, each ``cursor_read`` (invoked in ``window``, if given) against
    the lane's highest read before it. Violations:

    - ``cursor-back``: a lower cursor at the same seek epoch, or a lower cursor at a higher
      epoch with no seek of the group on that topic and queue (or every queue) invoked before
      the read and not completed before the highest earlier read (the store's seek epoch
      rose without an operator's seek);
    - ``epoch-back``: a lower seek epoch than one read before (older state served as new).
    """
    history = queue_history(ops)
    seeks = _lane_seeks(history)
    highest: dict[Lane, CursorRead] = {}
    back, epoch_back = Offenders(), Offenders()
    judged = after_seek = 0
    for read in history.cursor_reads:
        lane = read.lane
        before = highest.get(lane)
        if before is None or (read.epoch, read.cursor) > (before.epoch, before.cursor):
            highest[lane] = read
        if before is None or not in_window(window, read.time_ms):
            continue
        judged += 1
        example: dict[str, JSON] = {
            "consumer": read.consumer,
            "group": read.group,
            "topic": read.topic,
            "queue": read.queue,
            "index": read.index,
            "cursor": read.cursor,
            "epoch": read.epoch,
            "before": {"index": before.index, "cursor": before.cursor, "epoch": before.epoch},
        }
        if read.epoch < before.epoch:
            epoch_back.add(example)
        elif read.cursor < before.cursor:
            sought = any(
                s.invoke_index < read.index
                and (s.completion_index is None or s.completion_index > before.index)
                and s.affects(read.queue)
                for s in seeks.get((read.group, read.topic), [])
            )
            if read.epoch > before.epoch and sought:
                after_seek += 1
            else:
                back.add(example)
    details: dict[str, object] = {
        "cursor-reads": len(history.cursor_reads),
        "judged": judged,
        "back-after-seek": after_seek,
    }
    if window is not None:
        details["window_ms"] = list(window)
    return verdict(
        "cursor-monotonic",
        {"cursor-back": back, "epoch-back": epoch_back},
        passed=f"{judged} committed-cursor reads never went back without a seek",
        details=details,
    )


# --------------------------------------------------------------------------------------------
# Checker 2: per-queue order


@dataclass(frozen=True, slots=True, kw_only=True)
class _Excuse:
    """Something that lets a lane go back once (a redelivery): a consumer crash or start, a
    commit that failed or is indefinite, or a seek (see ``_LaneState`` for handler failures)."""

    reason: str
    index: int
    settled_after: int
    """An ``ok`` commit on the lane invoked after this index may withdraw the excuse."""
    target: int | None = None
    """A seek's new cursor for the lane, None if unknown. A seek also explains a forward
    jump: over the offsets below ``target``, or over anything if unknown."""


@dataclass(slots=True)
class _LaneState:
    """What ``check_queue_order`` knows about one lane at a point of the sweep.

    Pending excuses: ``seeks``; ``fails`` = ``(offset, index)`` of handler failures, sorted (a
    failure at offset f explains going back to f or before); ``others`` in index order.
    """

    frontier: _Frontier
    crashes_seen: int
    seeks_seen: int = 0
    last: int = -1
    high: int = -1
    seeks: list[_Excuse] = field(default_factory=list)
    fails: list[tuple[int, int]] = field(default_factory=list)
    others: deque[_Excuse] = field(default_factory=deque)

    def consume_rewind(self, offset: int, at: int) -> str | None:
        """Consume the excuse for going back to ``offset`` (a delivery at index ``at``) and
        return its reason: a pending seek (the oldest one completed before ``at`` is used up,
        one going-back per seek: a consumer notices a seek at its next cursor read, which may
        come well after the seek completed, so two seeks completed in a row can send the lane
        back twice; one still in flight may apply later and send it back again, so it stays),
        else the handler failure with the lowest offset at or above ``offset``, else the
        oldest other excuse. None if nothing explains it."""
        if self.seeks:
            done = next((e for e in self.seeks if e.settled_after <= at), None)
            if done is not None:
                self.seeks.remove(done)
            return "seek"
        i = bisect.bisect_left(self.fails, (offset, -1))
        if i < len(self.fails):
            del self.fails[i]
            return "handler-fail"
        if self.others:
            return self.others.popleft().reason
        return None

    def withdraw(self, cursor: int, invoke_index: int) -> None:
        """An ``ok`` commit of ``cursor`` invoked at ``invoke_index``: the store's cursor is
        past what the excuses invoked before it could send the lane back to."""
        if cursor > self.high:
            others = self.others
            while others and others[0].settled_after < invoke_index:
                others.popleft()
            self.seeks = [
                e
                for e in self.seeks
                if e.settled_after >= invoke_index or e.target is None or cursor < e.target
            ]
        j = bisect.bisect_left(self.fails, (cursor, -1))
        self.fails[:j] = [fail for fail in self.fails[:j] if fail[1] >= invoke_index]


def _lane_seeks(history: QueueHistory) -> dict[tuple[str, str], list[SeekRecord]]:
    """(group, topic) -> its seeks that may have moved something, in invoke order."""
    out: dict[tuple[str, str], list[SeekRecord]] = {}
    for seek in history.seeks:
        if seek.outcome != "fail":
            out.setdefault((seek.group, seek.topic), []).append(seek)
    return out


def check_queue_order(ops: Iterable[Op], *, group_kinds: GroupKinds | None = None) -> CheckResult:
    """Jepsen-``kafka``-style per-queue checks: each group gets each queue in offset order.

    Violations:

    - ``inconsistent-offset``: two msg ids claimed at one ``(topic, queue, offset)``, by enqueue
      acks and deliveries of any groups;
    - ``unexplained-redelivery``: on a lane, a delivery at or below the previous delivery's
      offset (going back) with no excuse since: a handler failure on the lane at that offset or
      after, a crash or start of a consumer of the group, a consumer of the group giving a
      queue up or taking one (``own_stop`` / ``own_start``: a handover, a lost lock, a grant), a seek of the group on the lane's
      topic and queue (or every queue), or a commit on the lane that failed, is indefinite or
      never completed. Each excuse explains one going-back; an ``ok`` commit invoked after it
      whose cursor passes everything delivered (for a handler failure: passes the failed offset)
      withdraws it. Deliveries that go forward again after a going-back are fine;
    - ``skip``: a delivery jumps past a required offset (see the module doc) that the group
      never got on this lane, not explained by a pending seek (whose known new cursor bounds
      what it explains). One offender per such delivery; ``skipped-offsets`` counts offsets;
    - ``producer-order``: two ``ok`` enqueues that one producer took for one queue (the
      ``producer`` field) whose offsets are not in the order of their invokes: the producer's
      promise (acknowledged calls of a queue are stored in the order it accepted them, across
      pipelined batches, retries and failovers) is broken.

    O(n log n): one sweep in index order, interval sets for the offsets seen.
    """
    history = queue_history(ops)
    index = offset_index(history)
    inconsistent = Offenders()
    for (topic, queue), by_offset in sorted(index.items()):
        for offset in sorted(by_offset):
            claims = by_offset[offset]
            if len({claim.msg_id for claim in claims}) > 1:
                shown: dict[str, Claim] = {}
                for claim in claims:
                    shown.setdefault(claim.msg_id, claim)
                inconsistent.add(
                    {
                        "topic": topic,
                        "queue": queue,
                        "offset": offset,
                        "claims": [claim.to_json() for claim in shown.values()],
                    }
                )

    producer_order = _producer_order(history)
    required = _Required(history, index, group_kinds)
    crashes: dict[str, list[ConsumerEvent]] = {}
    seeks_of = _lane_seeks(history)
    events: list[tuple[int, int, object]] = [(d.index, 0, d) for d in history.deliveries]
    events += [(h.index, 1, h) for h in history.handlings if h.failed]
    events += [(c.index, 2, c) for c in history.commits]
    events += [(e.index, 3, e) for e in history.consumer_events]
    events.sort(key=lambda event: event[0])
    lanes: dict[Lane, _LaneState] = {}
    redeliveries = 0
    unexplained, skips = Offenders(), Offenders()
    skipped_offsets = excused_jumps = 0
    reasons: dict[str, int] = {}

    def lane_of(lane: Lane, at: int) -> _LaneState:
        """The lane's state, with the crashes and seeks invoked before ``at`` taken in."""
        group, topic, queue = lane
        group_crashes = crashes.get(group, [])
        state = lanes.get(lane)
        if state is None:
            state = _LaneState(frontier=required.frontier(lane), crashes_seen=len(group_crashes))
            lanes[lane] = state
        for event in group_crashes[state.crashes_seen :]:
            state.others.append(
                _Excuse(reason=event.f, index=event.index, settled_after=event.index)
            )
        state.crashes_seen = len(group_crashes)
        pending = seeks_of.get((group, topic), [])
        while state.seeks_seen < len(pending) and pending[state.seeks_seen].invoke_index < at:
            seek = pending[state.seeks_seen]
            state.seeks_seen += 1
            if seek.affects(queue):
                completed = seek.completion_index if seek.outcome == "ok" else None
                state.seeks.append(
                    _Excuse(
                        reason="seek",
                        index=seek.invoke_index,
                        settled_after=_NEVER if completed is None else completed,
                        # A cursor that stayed explains no forward jump (target 0).
                        target=None if seek.positions is None else seek.positions.get(queue, 0),
                    )
                )
        return state

    for at, _, event in events:
        if isinstance(event, ConsumerEvent):
            crashes.setdefault(event.group, []).append(event)
        elif isinstance(event, Handling):
            state = lane_of(event.lane, at)
            if event.offset is None:  # no offset: explains going back anywhere
                state.others.append(_Excuse(reason="handler-fail", index=at, settled_after=at))
            else:
                bisect.insort(state.fails, (event.offset, at))
        elif isinstance(event, CommitRecord):
            state = lane_of(event.lane, at)
            if event.outcome == "ok":
                state.withdraw(event.cursor, event.invoke_index)
            else:
                state.others.append(
                    _Excuse(reason=f"commit-{event.outcome}", index=at, settled_after=at)
                )
        elif isinstance(event, Delivery):
            d = event
            state = lane_of(d.lane, at)
            if d.offset <= state.last:
                redeliveries += 1
                explained = state.consume_rewind(d.offset, at)
                if explained is None:
                    unexplained.add(
                        d.to_json() | {"previous_offset": state.last, "highest": state.high}
                    )
                else:
                    reasons[explained] = reasons.get(explained, 0) + 1
            elif d.offset > state.last + 1:
                lo, hi = state.last + 1, d.offset - 1
                if state.seeks:
                    targets = [e.target for e in state.seeks]
                    bound = hi + 1
                    if None not in targets:
                        bound = min(bound, max(t for t in targets if t is not None))
                    excused, _ = state.frontier.take_unseen(lo, bound - 1)
                    count, first = state.frontier.take_unseen(max(lo, bound), hi)
                    if excused:
                        excused_jumps += 1
                        state.seeks.clear()
                else:
                    count, first = state.frontier.take_unseen(lo, hi)
                if count:
                    skipped_offsets += count
                    known = index.get((d.topic, d.queue), {})
                    skips.add(
                        d.to_json()
                        | {
                            "previous_offset": state.last,
                            "skipped": count,
                            "first_skipped": [
                                [o, known[o][0].msg_id if o in known else None] for o in first
                            ],
                        }
                    )
            state.frontier.see(d.offset)
            state.last = d.offset
            state.high = max(state.high, d.offset)

    return verdict(
        "queue-order",
        {
            "inconsistent-offset": inconsistent,
            "unexplained-redelivery": unexplained,
            "skip": skips,
            "producer-order": producer_order,
        },
        passed=(
            f"{len(history.deliveries)} deliveries on {len(lanes)} lanes in order; "
            f"{redeliveries} redeliveries explained"
        ),
        details={
            "deliveries": len(history.deliveries),
            "lanes": len(lanes),
            "positions": sum(len(by_offset) for by_offset in index.values()),
            "redeliveries": redeliveries,
            "redeliveries-by-reason": dict(sorted(reasons.items())),
            "excused-jumps": excused_jumps,
            "skipped-offsets": skipped_offsets,
        },
    )


def _producer_order(history: QueueHistory) -> Offenders:
    """The ``producer-order`` violations: per (producer, topic, queue), ``ok`` enqueues in
    invoke order must have increasing offsets."""
    last: dict[tuple[str, str, int], EnqueueRecord] = {}
    offenders = Offenders()
    for e in history.enqueues:  # in invoke order
        if e.producer is None or e.offset is None:
            continue
        k = (e.producer, e.topic, e.queue)
        before = last.get(k)
        if before is not None and before.offset is not None and e.offset <= before.offset:
            offenders.add(
                {
                    "producer": e.producer,
                    "topic": e.topic,
                    "queue": e.queue,
                    "earlier": {"msg_id": before.msg_id, "offset": before.offset},
                    "later": {"msg_id": e.msg_id, "offset": e.offset},
                }
            )
        if before is None or before.offset is None or e.offset > before.offset:
            last[k] = e
    return offenders


# --------------------------------------------------------------------------------------------
# Checker 3: replay


def check_replay(ops: Iterable[Op], *, group_kinds: GroupKinds | None = None) -> CheckResult:
    """After a seek, the group replays everything from its new cursor on.

    For every ``ok`` seek and every ``[queue, new_cursor]`` of its ``positions``: the group's
    deliveries on that lane in the seek's *window* include every required offset (see the
    module doc) from ``new_cursor`` up to the highest offset among those deliveries. The
    window ends when the next seek that may have set the same queue is invoked. It starts
    when a consumer of the lane noticed a seek: at its first ``cursor_read`` after the seek's
    invoke with a seek epoch above every epoch read on the lane before that invoke (the
    consumer may replay as soon as the seek applies, before the seek's caller hears of it;
    deliveries before that read come from a stream started before the seek, such as a batch
    already in flight). A lane whose history has no ``cursor_read`` at all starts the window
    at the seek's invoke. Violation: ``replay-gap``, one offender per seek and queue, with the
    missing count and the first missing offsets; ``missing-offsets`` counts them all. A
    window with no delivery at or above the new cursor is vacuous (``vacuous-windows``); so
    is one no consumer noticed before it ended (``unnoticed-windows`` counts those: the next
    seek's replay covers them).

    O(n log n): the windows of one lane are disjoint.
    """
    history = queue_history(ops)
    index = offset_index(history)
    required = _Required(history, index, group_kinds)
    by_lane: dict[Lane, list[Delivery]] = {}
    for d in history.deliveries:
        by_lane.setdefault(d.lane, []).append(d)
    lane_indexes = {lane: [d.index for d in ds] for lane, ds in by_lane.items()}
    reads: dict[Lane, list[CursorRead]] = {}
    for r in history.cursor_reads:
        reads.setdefault(r.lane, []).append(r)
    gaps = Offenders()
    windows = vacuous = unnoticed = replayed = missing_total = 0
    for (group, topic), seeks in sorted(_lane_seeks(history).items()):
        # Invoke indexes of the seeks that may have moved each queue; ``None``: every queue.
        moved: dict[int | None, list[int]] = {}
        for seek in seeks:
            if seek.positions is not None:
                for queue in seek.positions:
                    moved.setdefault(queue, []).append(seek.invoke_index)
            else:
                moved.setdefault(seek.queue, []).append(seek.invoke_index)
        for seek in seeks:
            if seek.positions is None:
                continue
            assert seek.completion_index is not None
            for queue, cursor in sorted(seek.positions.items()):
                end = _NEVER
                for invokes in (moved.get(queue, []), moved.get(None, [])):
                    i = bisect.bisect_right(invokes, seek.invoke_index)
                    if i < len(invokes):
                        end = min(end, invokes[i])
                lane = (group, topic, queue)
                ds = by_lane.get(lane, [])
                indexes = lane_indexes.get(lane, [])
                start = _noticed(reads.get(lane), seek.invoke_index)
                if start is None or start >= end:
                    windows += 1
                    vacuous += 1
                    unnoticed += 1
                    continue
                lo = bisect.bisect_right(indexes, start)
                hi = bisect.bisect_left(indexes, end)
                window = ds[lo:hi]
                windows += 1
                highest = max((d.offset for d in window), default=-1)
                if highest < cursor:
                    vacuous += 1
                    continue
                frontier = required.frontier(lane)
                for d in window:
                    if d.offset >= cursor:
                        replayed += 1
                        frontier.see(d.offset)
                count, first = frontier.take_unseen(cursor, highest)
                if count:
                    missing_total += count
                    known = index.get((topic, queue), {})
                    gaps.add(
                        {
                            "group": group,
                            "topic": topic,
                            "queue": queue,
                            "seek_index": seek.invoke_index,
                            "new_cursor": cursor,
                            "highest_delivered": highest,
                            "missing": count,
                            "first_missing": [
                                [o, known[o][0].msg_id if o in known else None] for o in first
                            ],
                        }
                    )
    return verdict(
        "replay",
        {"replay-gap": gaps},
        passed=f"{windows - vacuous} replays complete ({replayed} deliveries)",
        details={
            "seeks": len(history.seeks),
            "windows": windows,
            "vacuous-windows": vacuous,
            "unnoticed-windows": unnoticed,
            "replayed-deliveries": replayed,
            "missing-offsets": missing_total,
        },
    )


def _noticed(reads: list[CursorRead] | None, invoke_index: int) -> int | None:
    """Where a seek invoked at ``invoke_index`` is first seen to have been noticed on a lane
    with these cursor reads (in index order): the first read after the invoke with an epoch
    above every epoch read before it. The invoke itself if the lane has no reads at all."""
    if not reads:
        return invoke_index
    before = max((r.epoch for r in reads if r.index < invoke_index), default=-1)
    return next((r.index for r in reads if r.index > invoke_index and r.epoch > before), None)


# --------------------------------------------------------------------------------------------
# Checker 4: retry flow


@dataclass(slots=True)
class _Pending:
    """A handler failure not yet followed by a delivery of the same item to the group."""

    level: int
    topic: str
    queue: int
    index: int


def check_retry_flow(
    ops: Iterable[Op], retries_per_group: RetriesPerGroup, *, dead_letter: bool = True
) -> CheckResult:
    """A failed item moves up the retry levels of its group to the dead-letter topic.

    Per group and msg id, in index order: after a handler failure at level ``l`` (see
    ``topic_level``), the item's next delivery to the group is on the same queue, at level
    ``l`` again (redelivered in place) or at the next level: ``l + 1`` while ``l`` is below the
    group's number of retry levels, then the dead-letter topic (without ``dead_letter``: in
    place at the last level). A group missing from ``retries_per_group`` has no retry topics
    (in place only). Violations:

    - ``misrouted``: the next delivery after a failure is at another level or queue;
    - ``unexpected-retry``: a delivery from a retry level or the dead-letter topic without a
      handler failure of that item at the level before (or from a level or a dead-letter topic
      the group lacks);
    - ``wrong-attempt``: a delivery from the base topic or retry level n whose ``attempt`` is
      not n;
    - ``dropped``: the item's last event is a handler failure outside the dead-letter topic:
      it was never delivered again (``dropped-at-last-level`` counts those that failed on the
      group's last retry level), and no handler of the group succeeded on it before. (A
      redelivery of an item that a previous owner of the queue already handled successfully
      may fail and then be passed over: that owner's commit moved the cursor past it, and the
      store refuses to move an item below the cursor; the group did handle it:
      ``failed-after-success`` counts those.)

    A seek replays the base topic: a delivery from the base topic of an item whose pending
    failure is on a retry level is a replay (``replayed``), not a misroute, when a seek of the
    group on that topic and queue (or every queue), invoked before it and setting a cursor at
    or below its offset (or an unknown one), may have sent the lane back since the item's
    previous delivery from the base topic: it applied after that delivery (it completed after
    it, or its outcome is unknown), or a consumer read the lane's cursor after that delivery
    at or below the offset with the epoch a seek raises (a consumer notices a seek at its next
    cursor read, which may come long after the seek completed). The failure stays pending for
    the item's own move to its next level.

    Deliveries from other groups' derived topics are left to ``check_total_queue``.
    """
    history = queue_history(ops)
    seeks = _lane_seeks(history)
    events: list[tuple[int, Delivery | Handling]] = [(d.index, d) for d in history.deliveries]
    events += [(h.index, h) for h in history.handlings if h.failed]
    events.sort(key=lambda event: event[0])
    pending: dict[tuple[str, str], _Pending] = {}
    failed_levels: dict[tuple[str, str], set[int]] = {}
    misrouted, unexpected, wrong_attempt, dropped = (
        Offenders(),
        Offenders(),
        Offenders(),
        Offenders(),
    )
    failures = retried = in_place = dead_lettered = replayed = 0
    dropped_last = 0

    reads: dict[Lane, list[CursorRead]] = {}
    for read in history.cursor_reads:
        reads.setdefault(read.lane, []).append(read)
    base_seen: dict[tuple[str, str], int] = {}
    """(group, msg id) -> index of the item's latest delivery from the base topic."""

    def sought(d: Delivery, since: int) -> bool:
        """Whether a seek of ``d``'s group on its topic and queue may have sent the lane back
        over ``d``'s offset after index ``since``, the item's previous delivery from it (see
        the docstring)."""
        went_back = [
            r
            for r in reads.get(d.lane, [])
            if since < r.index < d.index and r.cursor <= d.offset and r.epoch > 0
        ]
        for seek in seeks.get((d.group, d.topic), []):
            if seek.invoke_index >= d.index or not seek.affects(d.queue):
                continue
            target = None if seek.positions is None else seek.positions.get(d.queue)
            if target is not None and target > d.offset:
                continue
            if seek.outcome != "ok" or seek.completion_index is None:
                return True  # applied at any point after its invoke
            if seek.completion_index > since:
                return True
            if any(r.index > seek.invoke_index for r in went_back):
                return True
        return False

    def next_level(group: str, level: int) -> int | None:
        """Where an item that failed at ``level`` moves to (None: nowhere, in place only)."""
        levels = retries_per_group.get(group)
        if levels is None or level == DEAD_LETTER:
            return None
        if level < levels:
            return level + 1
        return DEAD_LETTER if dead_letter else None

    for _, event in events:
        level = topic_level(event.topic, event.group)
        if level is None:
            continue
        who = (event.group, event.msg_id)
        if isinstance(event, Handling):
            failures += 1
            pending[who] = _Pending(
                level=level, topic=event.topic, queue=event.queue, index=event.index
            )
            failed_levels.setdefault(who, set()).add(level)
            continue
        d = event
        since = base_seen.get(who, -1)
        if level == 0:
            base_seen[who] = d.index
        if level != DEAD_LETTER and d.attempt is not None and d.attempt != level:
            wrong_attempt.add(d.to_json() | {"attempt": d.attempt, "level": level})
        if level != 0:
            levels = retries_per_group.get(d.group)
            before = None if levels is None else levels if level == DEAD_LETTER else level - 1
            if (
                levels is None
                or before is None
                or before > levels
                or (level == DEAD_LETTER and not dead_letter)
                or before not in failed_levels.get(who, ())
            ):
                unexpected.add(d.to_json() | {"level": level})
        if level == DEAD_LETTER:
            dead_lettered += 1
        failed = pending.get(who)
        if failed is None:
            continue
        if level == 0 and failed.level != 0 and sought(d, since):
            replayed += 1
            continue
        del pending[who]
        if level == failed.level and d.queue == failed.queue:
            in_place += 1
        elif level == next_level(d.group, failed.level) and d.queue == failed.queue:
            retried += 1
        else:
            misrouted.add(
                d.to_json()
                | {
                    "level": level,
                    "failed_index": failed.index,
                    "failed_topic": failed.topic,
                    "failed_queue": failed.queue,
                    "failed_level": failed.level,
                }
            )
    first_success: dict[tuple[str, str], int] = {}
    for h in history.handlings:
        if not h.failed:
            first_success.setdefault((h.group, h.msg_id), h.index)
    after_success = 0
    for (group, msg_id), failed in sorted(pending.items()):
        if failed.level == DEAD_LETTER:
            continue
        if first_success.get((group, msg_id), failed.index) < failed.index:
            after_success += 1
            continue
        last = failed.level == retries_per_group.get(group)
        dropped_last += last
        dropped.add(
            {
                "group": group,
                "msg_id": msg_id,
                "topic": failed.topic,
                "queue": failed.queue,
                "level": failed.level,
                "failed_index": failed.index,
                "last_level": last,
            }
        )
    return verdict(
        "retry-flow",
        {
            "misrouted": misrouted,
            "unexpected-retry": unexpected,
            "wrong-attempt": wrong_attempt,
            "dropped": dropped,
        },
        passed=(
            f"{failures} handler failures: {retried} moved on, {in_place} redelivered in place, "
            f"{dead_lettered} dead-letter deliveries"
        ),
        details={
            "failures": failures,
            "moved-on": retried,
            "redelivered-in-place": in_place,
            "replayed-by-seek": replayed,
            "dead-letter-deliveries": dead_lettered,
            "dropped-at-last-level": dropped_last,
            "failed-after-success": after_success,
        },
    )
