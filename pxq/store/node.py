"""``StoreNode``: one replica of a store, a ``Node`` that serves the store's client API.

It composes a ``pxq.paxos.replica.Replica`` whose groups apply ``QueueStore`` state machines,
and owns only what sits around the log:

* validation of client requests against the configuration (unknown topic or group, a queue
  that is not here, too many or too large items): answered at once with a definite
  ``StoreError``, nothing proposed;
* encoding of the write requests (Enqueue, CommitCursor, Seek, Retry) into commands proposed
  to the queue's Paxos group, and the translation of the replica's answers: ``ProposeOk`` ->
  the state machine's result, ``Redirect`` -> ``StoreRedirect``, ``ProposeRejected`` -> a
  definite ``StoreError``, ``ProposeUnknown`` -> ``StoreError("unknown", definite=False)``;
* reads (``Get``), served by the lease holder of the group from applied state: the master
  answers a proposal only after applying it, and a step's reads see every earlier step's
  writes, so a Get after an ``EnqueueOk`` sees the items;
* retention ticks: every ``retention_tick_ms`` (staggered over the groups) the master of each
  group proposes one, if its state says the tick would remove something.

One input drives at most one step of the replica (the driver applies writes between steps,
and the replica relies on it). Work that needs more replica steps (a Seek over every queue of
a topic spans several groups; a tick while the replica's own timer is due) waits in a small
outbox, and the node asks for an immediate ``Wake`` to drain it one proposal at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, assert_never

from pxq import codec
from pxq.config import ClusterConfig, TopicInfo
from pxq.effects import (
    NO_EFFECTS,
    Boot,
    ClientCall,
    Effects,
    Input,
    InvariantViolation,
    NodeId,
    Now,
    Received,
    Reply,
    Rng,
    StorageView,
    Wake,
)
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from pxq.paxos.replica import Replica
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
    StoreError,
    StoreRedirect,
)
from pxq.store.records import NAME_BYTES_MAX, pack_items
from pxq.store.sm import QueueStore

if TYPE_CHECKING:
    from pxq.paxos.sm import StateMachine

SEEK_ALL_QUEUED_MAX: Final = 1
"""Seeks over all queues whose per-group proposals may wait in the outbox at once (bounds the
outbox to this many times the group count)."""

_TICK: Final = -1
"""Outer call id of an internal retention tick (its result is not answered to anyone)."""


@dataclass(slots=True, kw_only=True)
class _SeekAll:
    """A Seek over every queue of a topic: one proposal per group, one answer."""

    call_id: int
    waiting: int
    results: list[object] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """A proposal in flight: whom to answer (``outer``), or a tick / a part of a seek."""

    outer: int
    group: int
    seek: _SeekAll | None = None


class StoreNode:
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
        self.node_id = node_id
        self.config = config
        self.storage = storage
        self.groups = self.store.groups
        self.sms: dict[int, QueueStore] = {}
        self.replica = Replica(node_id, self.store.paxos, storage, rng, self._make_sm)
        self.calls: dict[int, _Call] = {}
        self.outbox: deque[tuple[int, int, bytes]] = deque()
        self.next_inner = 1
        self.tick_at: list[int] = [0] * self.groups
        self.ticking: list[bool] = [False] * self.groups
        self.last_mono = 0
        self.booted = False

    def _make_sm(self, group: int) -> StateMachine:
        sm = QueueStore(self.storage, group, self.config, self.store.name)
        self.sms[group] = sm
        return sm

    # -- Node protocol --------------------------------------------------------------------------

    def step(self, now: Now, inp: Input) -> Effects:
        self.last_mono = now.mono_ms
        own: list[Reply] = []
        fx: Effects | None = None
        match inp:
            case Boot():
                self._boot(now)
                fx = self.replica.step(now, inp)
            case Received():
                fx = self.replica.step(now, inp)
            case ClientCall(call_id=call_id, request=request):
                if not self.booted:
                    raise InvariantViolation("the first input of an incarnation must be Boot")
                fx = self._on_call(now, call_id, request, own)
            case Wake():
                fx = self._on_wake(now)
            case _:
                assert_never(inp)
        for sm in self.sms.values():
            sm.end_step()
        if fx is None:
            return Effects(replies=tuple(own)) if own else NO_EFFECTS
        return self._translate(fx, own)

    def next_deadline(self) -> int | None:
        if self.outbox:
            return self.last_mono  # drain at once, one proposal per step
        best = self.replica.next_deadline()
        if self.booted:
            tick = min(self.tick_at)
            if best is None or tick < best:
                best = tick
        return best

    # -- queries --------------------------------------------------------------------------------

    def is_master(self, group: int, now: Now) -> bool:
        return self.replica.is_master(group, now)

    def master_of(self, group: int) -> NodeId | None:
        return self.replica.master_of(group)

    def applied(self, group: int) -> int:
        return self.replica.applied(group)

    def state_machine(self, group: int) -> QueueStore:
        return self.sms[group]

    # -- inputs ---------------------------------------------------------------------------------

    def _boot(self, now: Now) -> None:
        # A new incarnation forgets every call: the driver never answers them.
        self.calls.clear()
        self.outbox.clear()
        self.sms.clear()
        tick = self.store.retention_tick_ms
        # Stagger the groups' ticks over one interval.
        self.tick_at = [now.mono_ms + tick * (g + 1) // self.groups for g in range(self.groups)]
        self.ticking = [False] * self.groups
        self.booted = True

    def _on_wake(self, now: Now) -> Effects | None:
        t = now.mono_ms
        due = self.replica.next_deadline()
        if due is not None and due <= t:
            return self.replica.step(now, Wake())
        if self.outbox:
            inner, group, value = self.outbox.popleft()
            return self._submit(now, inner, group, value)
        for g in range(self.groups):
            if self.tick_at[g] > t:
                continue
            self.tick_at[g] = t + self.store.retention_tick_ms
            if (
                not self.ticking[g]
                and self.replica.is_master(g, now)
                and self.sms[g].retention_due(_wall(now))
            ):
                self.ticking[g] = True
                inner = self._new_call(_Call(outer=_TICK, group=g))
                # One proposal per step: other due groups wait for the next (immediate) Wake.
                return self._submit(now, inner, g, encode_command(TickCmd(wall_ms=_wall(now))))
        return None

    def _on_call(self, now: Now, call_id: int, request: object, own: list[Reply]) -> Effects | None:
        def answer(response: object) -> None:
            own.append(Reply(call_id=call_id, response=response))

        match request:
            case Get():
                answer(self._get(now, request))
                return None
            case Enqueue():
                cmd_or_error = self._enqueue_cmd(now, request)
                queue: int | None = request.queue
            case CommitCursor():
                cmd_or_error = self._commit_cmd(request)
                queue = request.queue
            case Seek():
                cmd_or_error = self._seek_cmd(request)
                queue = request.queue
            case Retry():
                cmd_or_error = self._retry_cmd(now, request)
                queue = request.queue
            case _:
                answer(_bad("bad_request", f"not a store request: {type(request).__name__}"))
                return None
        if isinstance(cmd_or_error, StoreError):
            answer(cmd_or_error)
            return None
        value = encode_command(cmd_or_error)
        if len(value) > self.store.paxos.value_bytes_max:
            answer(_bad("too_large", f"request of {len(value)} bytes exceeds the value limit"))
            return None
        if queue is not None:
            group = queue % self.groups
            return self._submit(
                now, self._new_call(_Call(outer=call_id, group=group)), group, value
            )
        # A Seek over every queue of the topic: one proposal per group holding some of them.
        seek = cmd_or_error
        if not isinstance(seek, SeekCmd):  # pragma: no cover - only Seek has no queue
            raise InvariantViolation("a request without a queue must be a Seek")
        if len(self.outbox) >= SEEK_ALL_QUEUED_MAX * self.groups:
            answer(_bad("overloaded", "another seek over all queues is still being proposed"))
            return None
        info = self.config.topic(seek.topic)
        base = info.base.name if info is not None else seek.topic
        groups = [g for g in range(self.groups) if self.config.queues_of(base, self.store.name, g)]
        if not groups:
            answer(SeekOk(topic=seek.topic, group=seek.group, positions=()))
            return None
        agg = _SeekAll(call_id=call_id, waiting=len(groups))
        parts = [(self._new_call(_Call(outer=call_id, group=g, seek=agg)), g) for g in groups]
        for inner, g in parts[1:]:
            self.outbox.append((inner, g, value))
        inner, g = parts[0]
        return self._submit(now, inner, g, value)

    # -- proposals ------------------------------------------------------------------------------

    def _new_call(self, call: _Call) -> int:
        inner = self.next_inner
        self.next_inner += 1
        self.calls[inner] = call
        return inner

    def _submit(self, now: Now, inner: int, group: int, value: bytes) -> Effects:
        return self.replica.step(
            now, ClientCall(call_id=inner, request=Propose(group=group, value=value))
        )

    def _translate(self, fx: Effects, own: list[Reply]) -> Effects:
        """The replica's effects with its replies rewritten into store responses."""
        replies = list(own)
        for r in fx.replies:
            call = self.calls.pop(r.call_id, None)
            if call is None:
                raise InvariantViolation(f"the replica answered unknown call {r.call_id}")
            response = _response(r.response)
            if call.outer == _TICK:
                self.ticking[call.group] = False
                continue
            if call.seek is not None:
                agg = call.seek
                agg.results.append(response)
                agg.waiting -= 1
                if agg.waiting == 0:
                    replies.append(Reply(call_id=agg.call_id, response=_merge_seek(agg.results)))
                continue
            replies.append(Reply(call_id=call.outer, response=response))
        if not replies and not fx.replies:
            return fx
        return Effects(writes=fx.writes, sends=fx.sends, replies=tuple(replies), trace=fx.trace)

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
            return StoreRedirect(master=self._master_hint(group))
        return self.sms[group].get(req)

    def _master_hint(self, group: int) -> str | None:
        master = self.replica.master_of(group)
        return None if master == self.node_id else master

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
        if not req.items:
            return _bad("bad_request", "an enqueue needs at least one item")
        if len(req.items) > limits.enqueue_items_max:
            return _bad(
                "too_large",
                f"{len(req.items)} items exceed limits.enqueue_items_max = "
                f"{limits.enqueue_items_max}",
            )
        triples = []
        for i, item in enumerate(req.items):
            kind = item.kind.encode("utf-8")
            size = len(item.key) + len(item.payload) + len(kind)
            if size > limits.item_bytes_max:
                return _bad(
                    "too_large",
                    f"item {i} has {size} bytes, over limits.item_bytes_max = "
                    f"{limits.item_bytes_max}",
                )
            triples.append((item.key, item.payload, item.kind))
        return EnqueueCmd(
            producer=req.producer,
            seq=req.seq,
            topic=req.topic,
            queue=req.queue,
            wall_ms=_wall(now),
            items=pack_items(triples),
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

    def _seek_cmd(self, req: Seek) -> Command | StoreError:
        target = self._target(req.topic, req.group, req.queue)
        if isinstance(target, StoreError):
            return target
        if (req.offset is None) == (req.time_ms is None):
            return _bad("bad_request", "a seek needs exactly one of offset and time_ms")
        if req.offset is not None and req.offset < 0:
            return _bad("bad_request", "offset must be >= 0")
        return SeekCmd(
            topic=req.topic,
            group=req.group,
            queue=req.queue,
            offset=req.offset,
            time_ms=req.time_ms,
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


def _bad(code: str, message: str) -> StoreError:
    return StoreError(code=code, message=message, definite=True)


def _response(answer: object) -> object:
    """A store response for the replica's answer to one proposal."""
    match answer:
        case ProposeOk(result=result):
            if not result:
                return None  # a tick
            try:
                return codec.decode(result)
            except codec.CodecError as exc:
                raise InvariantViolation(f"undecodable queue store result: {exc}") from exc
        case Redirect(master=master):
            return StoreRedirect(master=master)
        case ProposeRejected(reason=reason):
            code = "too_large" if "large" in reason else "overloaded"
            return StoreError(code=code, message=reason, definite=True)
        case ProposeUnknown(reason=reason):
            return StoreError(code="unknown", message=reason, definite=False)
        case _:
            raise InvariantViolation(f"unexpected replica answer {type(answer).__name__}")


def _merge_seek(results: list[object]) -> object:
    """One answer for a Seek that went to several groups."""
    oks = [r for r in results if isinstance(r, SeekOk)]
    if len(oks) == len(results):
        positions = sorted(p for r in oks for p in r.positions)
        return SeekOk(topic=oks[0].topic, group=oks[0].group, positions=tuple(positions))
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
