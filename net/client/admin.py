"""The operator's reads and repairs over a live cluster, behind ``AsyncClient.groups``,
``AsyncClient.dead_letters`` and ``AsyncClient.redrive`` (and ``pxq groups``, ``pxq dlq``).

This module owns how they are put together from the store's and the lock service's client
APIs; nothing here is a new protocol:

* **Queue states** (``queue_states``): per (consumer group, base topic, queue) the group's
  committed cursor, the queue's first kept and end offsets and the cursor's seek epoch, from a
  zero-item ``Get`` answered by the queue's master (the probe a consumer starts with), and the
  queue's owner and fencing token from the lock service: a ``ListLocks`` of the directory
  ``q/<group>/<topic>/`` (``pxq.lockkeys``), which consumers with ownership hold, one key per
  queue. Lag is ``end - cursor``: the items the group has not passed yet, counted before its
  kind filter. The reads are not one snapshot: each queue is read on its own master at its own
  moment, and the owners a moment later.
* **Dead letters** (``dead_letter_states``): the same read of the group's dead-letter topic
  (``"{topic}.dlq.{group}"``): its cursor (where the last redrive stopped), its end, and the
  count waiting in between.
* **Redrive** (``redrive``): each dead letter of a queue, from the dead-letter cursor on, is
  enqueued again on the *base* topic, on the same queue, as a new item (a new offset and
  stamp, attempt 0) with its key, payload, kind and headers; then the dead-letter cursor moves
  past it. Every consumer group subscribed to that queue of the base topic sees the item
  again, not only the group whose dead letter it was (``pxq dlq redrive`` warns when there are
  others). Idempotent: the enqueues use the producer id ``pxq-redrive:<topic>:<group>:<queue>``
  with sequence number ``dead-letter offset + 1``, so a redrive that died between an enqueue
  and the cursor commit, run again, is answered by the store's dedupe with the original
  receipt and appends nothing (within the store's dedupe window: ``stale_sequence`` beyond
  it, reported, nothing appended). Two redrives of one queue at once are safe for the same
  reason. Batches follow the dead-letter queue's order, so per-key order is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from net.client.types import MachineFailed, RequestFailed
from pxq.config import ClusterConfig
from pxq.lock.messages import ListLocks, LockList
from pxq.lockkeys import HOLDER_SEP, queue_key
from pxq.store.messages import (
    CommitCursor,
    CommitOk,
    Enqueue,
    EnqueueOk,
    Get,
    GetOk,
    Item,
    StoredItem,
)
from pxq.topics import dead_letter_topic

READS_IN_FLIGHT_MAX: Final = 32
"""Queue probes ``queue_states`` keeps in flight at once."""
LOCK_LIST_PAGES_MAX: Final = 64
"""Pages of one owner listing (``ListLocks`` of 1,024 entries each) before giving up."""
LOCK_ATTEMPTS_MAX: Final = 8
LOCK_TIMEOUT_S: Final = 2.0
REDRIVE_BATCH_ITEMS: Final = 100
"""Dead letters re-enqueued per enqueue (one Paxos value)."""
REDRIVE_BATCH_BYTES: Final = 1024 * 1024

Admin = Callable[[str, int, object], Awaitable[object]]
"""``AsyncClient._admin``: send a store request to a queue's master, following redirects."""
LockCall = Callable[[str, object], Awaitable[object]]
"""Send a lock request for a key to its group's master, following redirects."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueState:
    """One queue of a topic as one consumer group sees it (see the module docstring).

    ``owner`` is the consumer holding the queue (its name without the incarnation suffix;
    ``""`` when no consumer holds it or the cluster has no lock service), ``holder`` the full
    holder name, ``token`` the fencing token of its lease (0 without an owner)."""

    group: str
    topic: str
    queue: int
    cursor: int
    first: int
    end: int
    epoch: int
    owner: str
    holder: str
    token: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.cursor)

    def as_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "topic": self.topic,
            "queue": self.queue,
            "cursor": self.cursor,
            "first": self.first,
            "end": self.end,
            "lag": self.lag,
            "epoch": self.epoch,
            "owner": self.owner,
            "holder": self.holder,
            "token": self.token,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Redriven:
    """What a redrive did on one queue: ``moved`` dead letters enqueued again on the base
    topic (``duplicates`` of them answered by the store's dedupe: enqueued by an earlier,
    interrupted redrive), the dead-letter cursor now at ``cursor``."""

    queue: int
    moved: int
    duplicates: int
    cursor: int
    offsets: tuple[int, ...]
    """The base-topic offsets the items got (receipts), in dead-letter order."""


def group_targets(
    config: ClusterConfig, group: str | None, topic: str | None
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(group, base topic, subscribed queues) for every pair selected, in configuration
    order; raises ``RequestFailed`` for an unknown group or topic."""
    out: list[tuple[str, str, tuple[int, ...]]] = []
    if topic is not None and config.base_topic(topic) is None:
        raise RequestFailed("unknown_topic", f"no topic {topic!r}")
    for t in config.topics:
        if topic is not None and t.name != topic:
            continue
        for g in t.consumer_groups:
            if group is None or g.name == group:
                queues = tuple(q for q in range(t.queues) if g.subscribes_queue(q))
                out.append((g.name, t.name, queues))
    if group is not None and not out:
        where = f"topic {topic!r}" if topic is not None else "any topic"
        raise RequestFailed("unknown_group", f"no consumer group {group!r} on {where}")
    return out


async def _probe(admin: Admin, topic: str, group: str, queue: int) -> GetOk:
    probe = Get(topic=topic, group=group, queue=queue, cursor=0, items_max=0, bytes_max=0)
    answer = await admin(topic, queue, probe)
    if not isinstance(answer, GetOk):
        raise MachineFailed(f"unexpected answer to Get: {answer!r}")
    return answer


async def _gather_bounded(jobs: Sequence[Awaitable[GetOk]]) -> list[GetOk]:
    limit = asyncio.Semaphore(READS_IN_FLIGHT_MAX)

    async def one(job: Awaitable[GetOk]) -> GetOk:
        async with limit:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def list_owners(
    config: ClusterConfig, lock_call: LockCall, group: str, topic: str
) -> dict[int, tuple[str, int]]:
    """queue -> (holder, token) of every queue of ``topic`` a consumer of ``group`` holds."""
    if config.locks is None:
        return {}
    prefix = queue_key(group, topic, 0).rpartition("/")[0] + "/"
    owners: dict[int, tuple[str, int]] = {}
    start_after = ""
    for _ in range(LOCK_LIST_PAGES_MAX):
        answer = await lock_call(prefix, ListLocks(prefix=prefix, start_after=start_after))
        if not isinstance(answer, LockList):
            raise MachineFailed(f"unexpected answer to ListLocks: {answer!r}")
        for e in answer.entries:
            name = e.key[len(prefix) :]
            if name.isdigit():
                owners[int(name)] = (e.holder, e.version)
        if not answer.more or not answer.entries:
            return owners
        start_after = answer.entries[-1].key
    raise RequestFailed("too_large", f"more than {LOCK_LIST_PAGES_MAX} pages of owners")


async def queue_states(
    config: ClusterConfig,
    admin: Admin,
    lock_call: LockCall,
    group: str | None,
    topic: str | None,
    *,
    dead_letters: bool = False,
) -> list[QueueState]:
    """The state of every subscribed queue of the selected groups and topics (see the module
    docstring); with ``dead_letters``, of their dead-letter topics instead (no owners)."""
    targets = group_targets(config, group, topic)
    jobs: list[Awaitable[GetOk]] = []
    keys: list[tuple[str, str, int]] = []
    for g, t, queues in targets:
        read = dead_letter_topic(t, g) if dead_letters else t
        for q in queues:
            jobs.append(_probe(admin, read, g, q))
            keys.append((g, t, q))
    answers = await _gather_bounded(jobs)
    owners: dict[tuple[str, str], dict[int, tuple[str, int]]] = {}
    if not dead_letters:
        for g, t, _ in targets:
            owners[(g, t)] = await list_owners(config, lock_call, g, t)
    out = []
    for (g, t, q), a in zip(keys, answers, strict=True):
        holder, token = owners.get((g, t), {}).get(q, ("", 0))
        out.append(
            QueueState(
                group=g,
                topic=dead_letter_topic(t, g) if dead_letters else t,
                queue=q,
                cursor=a.committed,
                first=a.first_offset,
                end=a.end_offset,
                epoch=a.epoch,
                owner=holder.partition(HOLDER_SEP)[0],
                holder=holder,
                token=token,
            )
        )
    return out


def redrive_producer(topic: str, group: str, queue: int) -> str:
    """The producer id of the redrive of ``group``'s dead letters of ``queue`` of ``topic``."""
    return f"pxq-redrive:{topic}:{group}:{queue}"


async def redrive(
    admin: Admin, topic: str, group: str, queue: int, count_max: int | None
) -> Redriven:
    """Redrive the dead letters of ``queue`` (at most ``count_max``; None: all up to the end
    read at the start), see the module docstring. Raises ``RequestFailed`` when the
    store refuses an enqueue or commit (nothing of that batch moved on), ``OutcomeUnknown``
    when an answer is missing (run it again: it is idempotent)."""
    dlq = dead_letter_topic(topic, group)
    producer = redrive_producer(topic, group, queue)
    probe = await _probe(admin, dlq, group, queue)
    cursor, epoch = max(probe.committed, probe.first_offset), probe.epoch
    # Up to the end as read now: dead letters arriving meanwhile wait for the next redrive,
    # so a redrive ends even while items keep failing.
    stop = probe.end_offset if count_max is None else min(probe.end_offset, cursor + count_max)
    moved = duplicates = 0
    offsets: list[int] = []
    while cursor < stop:
        want = min(REDRIVE_BATCH_ITEMS, stop - cursor)
        got = await admin(
            dlq,
            queue,
            Get(
                topic=dlq,
                group=group,
                queue=queue,
                cursor=cursor,
                items_max=want,
                bytes_max=REDRIVE_BATCH_BYTES,
            ),
        )
        if not isinstance(got, GetOk):
            raise MachineFailed(f"unexpected answer to Get: {got!r}")
        epoch = got.epoch
        run: list[StoredItem] = []
        for it in got.items:  # the offsets from the first one on without a gap
            if run and it.offset != run[-1].offset + 1:
                break
            run.append(it)
        if not run:
            if got.next_cursor > cursor:  # filtered out: nothing to move, step past
                cursor = await _commit(
                    admin, dlq, group, queue, cursor=got.next_cursor, epoch=epoch
                )
            break
        first = run[0].offset
        receipt = await admin(
            topic,
            queue,
            Enqueue(
                topic=topic,
                queue=queue,
                producer=producer,
                seq=first + 1,
                items=tuple(
                    Item(key=it.key, payload=it.payload, kind=it.kind, headers=it.headers)
                    for it in run
                ),
            ),
        )
        if not isinstance(receipt, EnqueueOk):
            raise MachineFailed(f"unexpected answer to Enqueue: {receipt!r}")
        # A duplicate answers the earlier batch with this seq, whose size may differ: exactly
        # those items were enqueued, the rest are read again.
        done = receipt.count
        moved += done
        duplicates += done if receipt.duplicate else 0
        offsets.extend(range(receipt.first_offset, receipt.first_offset + done))
        cursor = await _commit(admin, dlq, group, queue, cursor=first + done, epoch=epoch)
    return Redriven(
        queue=queue, moved=moved, duplicates=duplicates, cursor=cursor, offsets=tuple(offsets)
    )


async def _commit(
    admin: Admin, topic: str, group: str, queue: int, *, cursor: int, epoch: int
) -> int:
    answer = await admin(
        topic,
        queue,
        CommitCursor(topic=topic, group=group, queue=queue, cursor=cursor, epoch=epoch),
    )
    if not isinstance(answer, CommitOk):
        raise MachineFailed(f"unexpected answer to CommitCursor: {answer!r}")
    return answer.cursor
