"""``StoreNode``: one replica of a store, a ``Node`` that serves the store's client API.

It is a ``pxq.paxos.service.ReplicatedService`` whose replica's groups apply ``QueueStore``
state machines: the service owns the ``Node`` protocol, the inner calls to the replica, the
per-group ticks and the translation of the replica's answers (``ProposeOk`` -> the state
machine's result, ``Redirect`` -> ``StoreRedirect``, ``ProposeRejected`` -> a definite
``StoreError``, ``ProposeUnknown`` -> ``StoreError("unknown", definite=False)``). This module
owns only what is the store's:

* validation of client requests against the configuration (unknown topic or group, a queue
  that is not here, too many or too large items): answered at once with a definite
  ``StoreError``, nothing proposed;
* encoding of the write requests (Enqueue, CommitCursor, Seek, Retry) into commands proposed
  to the queue's Paxos group;
* reads (``Get``, ``SeekPreview``), served by the lease holder of the group from applied state: the master
  answers a proposal only after applying it, and a step's reads see every earlier step's
  writes, so a Get after an ``EnqueueOk`` sees the items;
* a Seek over every queue of a topic: it spans several groups, so it is one proposal per
  group (the first in this step, the others from the service's outbox, one per step), and
  their answers merge into one;
* retention ticks: every ``retention_tick_ms`` (staggered over the groups) the master of each
  group proposes one, if its state says the tick would remove something; the same tick
  carries live reconciliation (``pxq.store.reconcile``): when both are due, the two take
  turns; any replica answers ``ReconcileStatus`` with its ``ReconcileReport``;
* a short storage: while the driver says the space left is below its reserve
  (``StorageLow``, kept by the service in ``storage_low``), an enqueue that this replica
  would propose as the queue's master is answered at once with the definite
  ``StoreError(code="storage_full")``, nothing proposed, nothing appended, and counted in
  ``enqueues_refused``; the message names the limit and the figures of the crossing. Every
  other request (gets, cursor commits, seeks, retries, retention ticks) goes on: they write
  little, the reserve is there for them, and consumers plus retention are what frees space.
  A replica that is not the master answers an enqueue as usual (a redirect): the master's
  storage decides. A follower's storage fills with what the master replicates; one whose
  disk is totally full stops at its next write (the driver's last resort) while a majority
  carries on.

One input drives at most one step of the replica (see ``pxq.paxos.service``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Final

from pxq import codec
from pxq.config.model import ClusterConfig, TopicInfo
from pxq.effects import InvariantViolation, NodeId, Now, Reply, Rng, StorageView
from pxq.headers import flat_headers, headers_problem, headers_size
from pxq.paxos.service import Answer, InnerCall, Proposal, ReplicatedService
from pxq.store.commands import (
    Command,
    CommitCmd,
    EnqueueCmd,
    RetryCmd,
    SeekCmd,
    TickCmd,
    encode_command,
)
from pxq.store.messages import (
    CommitCursor,
    Enqueue,
    Get,
    Retry,
    Seek,
    SeekOk,
    SeekPreview,
    StoreError,
    StoreRedirect,
)
from pxq.store.reconcile import ReconcileReport, ReconcileStatus, group_report
from pxq.store.records import NAME_BYTES_MAX, pack_items
from pxq.store.sm import QueueStore

SEEK_ALL_QUEUED_MAX: Final = 1
"""Seeks over all queues whose per-group proposals may wait in the outbox at once (bounds the
outbox to this many times the group count)."""


@dataclass(slots=True, kw_only=True)
class _SeekAll:
    """A Seek over every queue of a topic: one proposal per group, one answer (the tag of
    each part's inner call)."""

    waiting: int
    results: list[object] = field(default_factory=list)


class StoreNode(ReplicatedService[QueueStore]):
    """A replica of store ``store_name``; a ``pxq.effects.Node``."""

    def __init__(
        self,
        node_id: NodeId,
        config: ClusterConfig,
        store_name: str,
        storage: StorageView,
        rng: Rng,
    ) -> None:
        self.store = config.store(store_name)
        if node_id not in self.store.nodes:
            raise ValueError(f"node {node_id!r} is not a replica of store {store_name!r}")
        if self.store.groups != self.store.paxos.groups:
            raise ValueError(f"store {store_name!r}: groups differ from its Paxos groups")
        self.config = config
        super().__init__(
            node_id, self.store.paxos, storage, rng, tick_ms=self.store.retention_tick_ms
        )
        self.enqueues_refused = 0
        """Enqueues answered ``storage_full`` by this incarnation."""
        self.reconciled_last = [False] * self.groups
        """Per group: the last tick proposed was a reconcile command (the next due retention
        tick goes first)."""

    # -- hooks of ReplicatedService -------------------------------------------------------------

    def new_state_machine(self, group: int) -> QueueStore:
        return QueueStore(self.storage, group, self.config, self.store.name)

    def end_step(self) -> None:
        for sm in self.sms.values():
            if sm.db.fx is not None:  # only the groups this step applied to have writes
                sm.end_step()

    def tick_command(self, group: int, time_ms: int) -> bytes | None:
        sm = self.sms[group]
        retention = sm.retention_due(time_ms)
        if retention and self.reconciled_last[group]:
            self.reconciled_last[group] = False
            return encode_command(TickCmd(wall_ms=time_ms))
        recon = sm.reconcile_command(time_ms, self.node_id)
        if recon is not None:
            value = encode_command(recon)
            # Figures are bounded (``reconcile.SLICE_QUEUES_MAX``, ``SLICE_BUCKETS_MAX``);
            # a value limit set below them skips the comparison rather than the tick.
            if len(value) > self.store.paxos.value_bytes_max:
                value = encode_command(dataclasses.replace(recon, check=b""))
            self.reconciled_last[group] = True
            return value
        if retention:
            self.reconciled_last[group] = False
            return encode_command(TickCmd(wall_ms=time_ms))
        return None

    def decode_result(self, result: bytes) -> object:
        if not result:
            return None
        try:
            return codec.decode(result)
        except codec.CodecError as exc:
            raise InvariantViolation(f"undecodable queue store result: {exc}") from exc

    def redirect_response(self, master: NodeId | None) -> StoreRedirect:
        return StoreRedirect(master=master)

    def error_response(self, code: str, message: str, *, definite: bool) -> StoreError:
        return StoreError(code=code, message=message, definite=definite)

    def client_reply(self, call: InnerCall, response: object) -> Reply | None:
        agg = call.tag
        if not isinstance(agg, _SeekAll):
            return Reply(call_id=call.outer, response=response)
        agg.results.append(response)
        agg.waiting -= 1
        if agg.waiting > 0:
            return None
        return Reply(call_id=call.outer, response=_merge_seek(agg.results))

    def plan_request(self, now: Now, request: object) -> Answer | Proposal | tuple[Proposal, ...]:
        match request:
            case Get():
                return Answer(response=self._get(now, request))
            case SeekPreview():
                return Answer(response=self._preview_seek(now, request))
            case ReconcileStatus():
                return Answer(response=self._reconcile_report())
            case Enqueue():
                cmd_or_error = self._enqueue_cmd(now, request)
                queue: int | None = request.queue
            case CommitCursor():
                cmd_or_error = self._commit_cmd(request)
                queue = request.queue
            case Seek():
                cmd_or_error = self._seek_cmd(now, request)
                queue = request.queue
            case Retry():
                cmd_or_error = self._retry_cmd(now, request)
                queue = request.queue
            case _:
                return Answer(
                    response=_bad("bad_request", f"not a store request: {type(request).__name__}")
                )
        if isinstance(cmd_or_error, StoreError):
            return Answer(response=cmd_or_error)
        if isinstance(cmd_or_error, EnqueueCmd):
            refusal = self._storage_refusal(now, cmd_or_error.queue)
            if refusal is not None:
                return Answer(response=refusal)
        value = encode_command(cmd_or_error)
        if len(value) > self.store.paxos.value_bytes_max:
            return Answer(
                response=_bad("too_large", f"request of {len(value)} bytes exceeds the value limit")
            )
        if queue is not None:
            return Proposal(group=queue % self.groups, value=value)
        # A Seek over every queue of the topic: one proposal per group holding some of them.
        seek = cmd_or_error
        if not isinstance(seek, SeekCmd):  # pragma: no cover - only Seek has no queue
            raise InvariantViolation("a request without a queue must be a Seek")
        if len(self.outbox) >= SEEK_ALL_QUEUED_MAX * self.groups:
            return Answer(
                response=_bad("overloaded", "another seek over all queues is still being proposed")
            )
        info = self.config.topic(seek.topic)
        base = info.base.name if info is not None else seek.topic
        groups = [g for g in range(self.groups) if self.config.queues_of(base, self.store.name, g)]
        if not groups:
            return Answer(response=SeekOk(topic=seek.topic, group=seek.group, positions=()))
        agg = _SeekAll(waiting=len(groups))
        return tuple(Proposal(group=g, value=value, tag=agg) for g in groups)

    # -- requests -------------------------------------------------------------------------------

    def _target(self, topic: str, group: str | None, queue: int | None) -> TopicInfo | StoreError:
        """Check that ``queue`` of ``topic`` (read by ``group``) is served by this store."""
        info = self.config.topic(topic)
        if info is None:
            return _bad("unknown_topic", f"no topic {topic!r}")
        cg = None
        if group is not None:
            cg = info.group(group)
            if cg is None:
                return _bad("unknown_group", f"{group!r} does not read {topic!r}")
        if queue is not None:
            if queue < 0:
                return _bad("bad_queue", f"queue {queue} is negative")
            problem = self.sms[queue % self.groups].queue_problem(info, queue, cg)
            if problem is not None:
                return _bad("bad_queue", problem)
        return info

    def _get(self, now: Now, req: Get) -> object:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if req.cursor < 0 or req.items_max < 0 or req.bytes_max < 0:
            # items_max = 0 is a probe: no items, but the group's committed cursor and the
            # queue's bounds (how a consumer learns where to start).
            return _bad("bad_request", "cursor, items_max and bytes_max must be >= 0")
        group = req.queue % self.groups
        if not self.replica.is_master(group, now):
            return StoreRedirect(master=self.master_hint(group))
        return self.sms[group].get(req, _wall(now))

    def _preview_seek(self, now: Now, req: SeekPreview) -> object:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if (req.offset is not None and req.offset < 0) or (
            req.back_ms is not None and req.back_ms < 0
        ):
            return _bad("bad_request", "offset and back_ms must be >= 0")
        group = req.queue % self.groups
        if not self.replica.is_master(group, now):
            return StoreRedirect(master=self.master_hint(group))
        return self.sms[group].preview_seek(req, _wall(now))

    def _reconcile_report(self) -> ReconcileReport:
        """This replica's reconciliation figures and log checksums, per group (a local read:
        every replica answers, so ``pxq reconcile`` can compare them)."""
        groups = []
        for g in self.replica.groups:
            learner = g.learner
            sm = self.sms.get(g.group)
            if sm is None:
                continue
            groups.append(
                group_report(g.group, learner.applied, learner.recent, learner.halted, sm.recon)
            )
        return ReconcileReport(node=self.node_id, store=self.store.name, groups=tuple(groups))

    def _enqueue_cmd(self, now: Now, req: Enqueue) -> Command | StoreError:
        target = self._target(req.topic, None, req.queue)
        if isinstance(target, StoreError):
            return target
        if target.level != 0:
            return _bad("unknown_topic", f"{req.topic!r} is a derived topic: enqueue to its base")
        limits = self.config.limits
        if not req.producer or len(req.producer.encode("utf-8")) > NAME_BYTES_MAX:
            return _bad("bad_request", f"producer id must be 1..{NAME_BYTES_MAX} bytes")
        if req.seq < 0:
            return _bad("bad_request", "seq must be >= 0")
        if not 0 <= req.after < req.seq:
            return _bad(
                "bad_request", "after must be 0 (none) or an earlier seq (0 <= after < seq)"
            )
        if not req.items:
            return _bad("bad_request", "an enqueue needs at least one item")
        if len(req.items) > limits.enqueue_items_max:
            return _bad(
                "too_large",
                f"{len(req.items)} items exceed limits.enqueue_items_max = "
                f"{limits.enqueue_items_max}",
            )
        triples: list[tuple[bytes, bytes, str] | tuple[bytes, bytes, str, list[str]]] = []
        for i, item in enumerate(req.items):
            kind = item.kind.encode("utf-8")
            size = len(item.key) + len(item.payload) + len(kind)
            if item.headers:
                problem = headers_problem(item.headers)
                if problem is not None:
                    return _bad("bad_request", f"item {i}: {problem}")
                size += headers_size(item.headers)
            if size > limits.item_bytes_max:
                return _bad(
                    "too_large",
                    f"item {i} has {size} bytes, over limits.item_bytes_max = "
                    f"{limits.item_bytes_max}",
                )
            if item.headers:
                triples.append((item.key, item.payload, item.kind, flat_headers(item.headers)))
            else:
                triples.append((item.key, item.payload, item.kind))
        return EnqueueCmd(
            producer=req.producer,
            seq=req.seq,
            topic=req.topic,
            queue=req.queue,
            wall_ms=_wall(now),
            items=pack_items(triples),
            after=req.after,
        )

    def _storage_refusal(self, now: Now, queue: int) -> StoreError | None:
        """The ``storage_full`` refusal of an enqueue to ``queue`` while the storage is short
        and this replica is the queue's master (else None: go on)."""
        low = self.storage_low
        if low is None or not self.replica.is_master(queue % self.groups, now):
            return None
        self.enqueues_refused += 1
        return StoreError(
            code="storage_full",
            message=(
                f"storage of {self.node_id} is full: {_size(low.available_bytes)} available "
                f"before the {low.limit}, below the reserve of {_size(low.reserve_bytes)} "
                f"kept for replication and consumers ({_size(low.used_bytes)} in use); "
                f"enqueues resume once consumers and retention free space"
            ),
            definite=True,
        )

    def _commit_cmd(self, req: CommitCursor) -> Command | StoreError:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if req.cursor < 0 or req.token < 0 or req.epoch < 0:
            return _bad("bad_request", "cursor, token and epoch must be >= 0")
        return CommitCmd(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            cursor=req.cursor,
            token=req.token,
            epoch=req.epoch,
        )

    def _seek_cmd(self, now: Now, req: Seek) -> Command | StoreError:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if sum(t is not None for t in (req.offset, req.time_ms, req.back_ms)) != 1:
            return _bad("bad_request", "a seek needs exactly one of offset, time_ms and back_ms")
        if (req.offset is not None and req.offset < 0) or (
            req.back_ms is not None and req.back_ms < 0
        ):
            return _bad("bad_request", "offset and back_ms must be >= 0")
        return SeekCmd(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            offset=req.offset,
            time_ms=req.time_ms,
            back_ms=req.back_ms,
            wall_ms=_wall(now),
        )

    def _retry_cmd(self, now: Now, req: Retry) -> Command | StoreError:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if target.level < 0:
            return _bad("bad_request", f"{req.topic!r} is a dead-letter topic: no retry")
        if req.offset < 0 or req.token < 0 or req.epoch < 0:
            return _bad("bad_request", "offset, token and epoch must be >= 0")
        return RetryCmd(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            offset=req.offset,
            token=req.token,
            wall_ms=_wall(now),
            epoch=req.epoch,
        )


def _wall(now: Now) -> int:
    return max(0, now.wall_ms)


def _size(n: int) -> str:
    """A byte count for messages: in MiB (one decimal) from 1 MiB on, else in KiB or bytes."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} bytes"


def _bad(code: str, message: str) -> StoreError:
    return StoreError(code=code, message=message, definite=True)


def _merge_seek(results: list[object]) -> object:
    """One answer for a Seek that went to several groups."""
    oks = [r for r in results if isinstance(r, SeekOk)]
    if len(oks) == len(results):
        positions = sorted(p for r in oks for p in r.positions)
        forward = sorted(p for r in oks for p in r.forward)
        return SeekOk(
            topic=oks[0].topic,
            group=oks[0].group,
            positions=tuple(positions),
            forward=tuple(forward),
        )
    failures = [r for r in results if not isinstance(r, SeekOk)]
    definite = all(
        isinstance(r, StoreRedirect) or (isinstance(r, StoreError) and r.definite) for r in failures
    )
    if not oks and definite:
        redirects = [r for r in failures if isinstance(r, StoreRedirect)]
        return redirects[0] if redirects else failures[0]
    # Some groups moved and some did not (or may have): a Seek is idempotent, retry it, or
    # seek queue by queue at each group's master.
    return StoreError(
        code="partial",
        message=f"{len(oks)} of {len(results)} groups applied the seek",
        definite=False,
    )
