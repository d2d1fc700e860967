"""Catch-up and snapshot transfer of one Paxos group on one replica.

``CatchUp`` is the collaborator a ``Group`` (``group.py``) calls to learn chosen values it
missed and to serve them to peers. It owns:

* learning: ``LearnRequest`` for the values after the applied prefix, in chunks of at most
  ``learn_chunk_max`` instances and ``learn_bytes_max`` bytes, one request outstanding (the
  learn deadline retries it); the ``LearnReply`` marks what it carries chosen, writes it to
  the log and applies it, and asks for more while the commit index seen is ahead (a leader
  ignores replies: see ``on_learn_reply``);
* the serving side of both: answering ``LearnRequest`` from the log, and ``SnapshotRequest``
  from a snapshot of the state machine encoded once and kept in the replica's
  ``SnapshotCache`` while peers fetch it in ``snapshot_chunk_bytes`` chunks;
* receiving a snapshot (``SnapshotIn``): when a peer's log starts above our applied prefix,
  the state machine is fetched chunk by chunk (retried at the learn deadline, at most
  ``accept_retries_max`` times), checked against its digest and installed, and the log
  below it dropped.

What belongs to the group (its role, the commit index seen, applying values and answering
the clients waiting on them) it reaches through ``CatchUpHost``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pxq.effects import EffectsBuilder, NodeId, StorageView
from pxq.paxos.acceptor import Acceptor
from pxq.paxos.config import PaxosConfig
from pxq.paxos.learner import Learner
from pxq.paxos.messages import (
    LearnedEntry,
    LearnReply,
    LearnRequest,
    SnapshotChunk,
    SnapshotRequest,
)
from pxq.paxos.records import LOG, decode_log, digest, instance_of_log_key, log_key
from pxq.paxos.roles import Role


@dataclass(slots=True)
class SnapshotIn:
    """A snapshot being received from ``src``."""

    src: NodeId
    deadline: int
    instance: int = 0
    total: int = 0
    checksum: int = 0
    digest: bytes = b""
    data: bytearray = field(default_factory=bytearray)
    retries: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotOut:
    """A snapshot this replica serves to peers (kept in a bounded cache)."""

    instance: int
    checksum: int
    data: bytes
    digest: bytes


class SnapshotCache:
    """Encoded snapshots kept while peers fetch them, at most ``limit`` (FIFO eviction)."""

    __slots__ = ("items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[int, SnapshotOut] = {}

    def get(self, group: int) -> SnapshotOut | None:
        return self.items.get(group)

    def put(self, group: int, snap: SnapshotOut) -> None:
        self.items.pop(group, None)
        self.items[group] = snap
        while len(self.items) > self.limit:
            del self.items[next(iter(self.items))]  # dicts keep insertion order


class CatchUpHost(Protocol):
    """What catch-up needs from its group."""

    role: Role
    commit_seen: int
    """The highest instance this replica heard is chosen."""

    def advance(self, now: int, fx: EffectsBuilder) -> None:
        """Apply what is ready and answer the clients waiting on it."""

    def backoff(self, now: int, wait_ms: int) -> None:
        """Give up a campaign: follow, and campaign again after ``wait_ms`` at the earliest."""

    def forget_waiting(self, upto: int, reason: str, fx: EffectsBuilder) -> None:
        """Answer the clients waiting on instances <= ``upto``: their outcome is unknown."""


class CatchUp:
    """Learning missed values and snapshots for one group, and serving them to peers."""

    __slots__ = (
        "acceptor",
        "config",
        "group",
        "host",
        "learn_deadline",
        "learner",
        "snap",
        "snapshots",
        "view",
    )

    def __init__(
        self,
        *,
        group: int,
        config: PaxosConfig,
        view: StorageView,
        acceptor: Acceptor,
        learner: Learner,
        snapshots: SnapshotCache,
        host: CatchUpHost,
    ) -> None:
        self.group = group
        self.config = config
        self.view = view
        self.acceptor = acceptor
        self.learner = learner
        self.snapshots = snapshots
        self.host = host
        self.learn_deadline: int | None = None
        """While a LearnRequest is outstanding: when to give up waiting for its reply."""
        self.snap: SnapshotIn | None = None

    # -- timers ---------------------------------------------------------------------------------

    def deadline(self) -> int | None:
        """The earliest retry due (a follower's timers; None: none)."""
        times = []
        if self.learn_deadline is not None:
            times.append(self.learn_deadline)
        if self.snap is not None:
            times.append(self.snap.deadline)
        return min(times, default=None)

    def tick(self, now: int, source: NodeId | None, fx: EffectsBuilder) -> None:
        """A follower's timers: retry the snapshot transfer, and the learning from ``source``
        (the known master) while the commit index seen is ahead."""
        if self.snap is not None and now >= self.snap.deadline:
            self._snapshot_retry(now, fx)
        if self.learn_deadline is not None and now >= self.learn_deadline:
            self.learn_deadline = None
            if source is not None and self.host.commit_seen > self.learner.applied:
                self.request_learn(now, source, fx)

    # -- learning -------------------------------------------------------------------------------

    def request_learn(self, now: int, src: NodeId, fx: EffectsBuilder) -> None:
        """Ask ``src`` for the values after the applied prefix (unless a request or a snapshot
        transfer is already under way). A frozen learner (a damaged state machine) learns
        nothing before a snapshot replaced it (``repair.py``)."""
        if self.learner.frozen:
            return
        if self.snap is not None or (self.learn_deadline is not None and now < self.learn_deadline):
            return
        self.learn_deadline = now + self.config.learn_timeout_ms
        fx.send(
            src,
            LearnRequest(
                group=self.group,
                from_instance=self.learner.applied + 1,
                count=self.config.learn_chunk_max,
            ),
        )

    def on_learn_request(self, src: NodeId, msg: LearnRequest, fx: EffectsBuilder) -> None:
        cfg = self.config
        learner = self.learner
        start = max(msg.from_instance, 1)
        entries: list[LearnedEntry] = []
        if start >= self.acceptor.log_start:
            end = min(start + min(msg.count, cfg.learn_chunk_max), learner.applied + 1)
            size = 0
            expected = start
            for key, rec in self.view.scan(
                LOG, log_key(self.group, start), log_key(self.group, end)
            ):
                instance = instance_of_log_key(key)
                if instance != expected or (entries and size >= cfg.learn_bytes_max):
                    break
                value = decode_log(rec, key).value
                entries.append(LearnedEntry(instance=instance, value=value))
                size += len(value)
                expected += 1
        fx.send(
            src,
            LearnReply(
                group=self.group,
                from_instance=start,
                entries=tuple(entries),
                chosen_upto=learner.applied,
                log_start=self.acceptor.log_start,
                applied=learner.applied,
                checksum=learner.checksum,
            ),
        )

    def on_learn_reply(self, now: int, src: NodeId, msg: LearnReply, fx: EffectsBuilder) -> None:
        host = self.host
        learner = self.learner
        self.learn_deadline = None
        if host.role is Role.LEADER:
            # A leader knows what is chosen from its own accept quorums and its phase 1. A
            # reply to a request sent before it led can carry a value that a higher ballot
            # chose where this (deposed, not yet aware) leader proposed another one. Applying
            # it would let its commit index cover an instance where its followers hold its own
            # proposal, and a follower takes as chosen what it accepted under the master's
            # ballot below the master's commit index: it would apply a value never chosen
            # (tests/test_paxos_late_learn.py). Ignored; the leader's Accepts fail and it
            # steps down, then learns as a follower.
            return
        host.commit_seen = max(host.commit_seen, msg.chosen_upto)
        if learner.frozen:
            return  # a snapshot comes first (``repair.py``)
        for e in msg.entries:
            if e.instance <= learner.applied:
                continue
            if not learner.mark_chosen(e.instance, e.value, fx):
                break
            self.acceptor.write_chosen(e.instance, e.value, fx)
        host.advance(now, fx)
        learner.verify_peer(src, msg.applied, msg.checksum, fx)
        if learner.applied + 1 < msg.log_start and learner.applied < msg.chosen_upto:
            self.start_snapshot(now, src, fx)
        elif learner.applied < host.commit_seen and msg.entries:
            self.request_learn(now, src, fx)

    # -- snapshots ------------------------------------------------------------------------------

    def start_snapshot(self, now: int, src: NodeId, fx: EffectsBuilder) -> None:
        if self.snap is not None:
            return
        role = self.host.role
        if role is not Role.FOLLOWER:
            if role is Role.LEADER:
                return  # a leader recovered from a quorum; it never installs snapshots
            self.host.backoff(now, 0)
        self.snap = SnapshotIn(src=src, deadline=now + self.config.learn_timeout_ms)
        fx.event("snapshot_requested", group=self.group, source=src)
        fx.send(src, SnapshotRequest(group=self.group, instance=0, offset=0))

    def _snapshot_retry(self, now: int, fx: EffectsBuilder) -> None:
        s = self.snap
        if s is None:
            return
        s.retries += 1
        if s.retries > self.config.accept_retries_max:
            self.snap = None  # give up; the next commit or promise we see starts over
            return
        s.deadline = now + self.config.learn_timeout_ms
        fx.send(
            s.src,
            SnapshotRequest(group=self.group, instance=s.instance, offset=len(s.data)),
        )

    def on_snapshot_request(self, src: NodeId, msg: SnapshotRequest, fx: EffectsBuilder) -> None:
        learner = self.learner
        if learner.frozen:
            return  # a damaged state machine is nobody's snapshot
        snap = self.snapshots.get(self.group)
        offset = msg.offset
        if msg.instance == 0 or snap is None or snap.instance != msg.instance:
            offset = 0
            if snap is None or snap.instance != learner.applied:
                data = learner.sm.snapshot()
                snap = SnapshotOut(
                    instance=learner.applied,
                    checksum=learner.checksum,
                    data=data,
                    digest=digest(data),
                )
                self.snapshots.put(self.group, snap)
        offset = min(max(offset, 0), len(snap.data))
        fx.send(
            src,
            SnapshotChunk(
                group=self.group,
                instance=snap.instance,
                checksum=snap.checksum,
                total=len(snap.data),
                digest=snap.digest,
                offset=offset,
                data=snap.data[offset : offset + self.config.snapshot_chunk_bytes],
            ),
        )

    def on_snapshot_chunk(
        self, now: int, src: NodeId, msg: SnapshotChunk, fx: EffectsBuilder
    ) -> None:
        s = self.snap
        if s is None or src != s.src:
            return
        if self.host.role is not Role.FOLLOWER or msg.instance <= self.learner.applied:
            self.snap = None  # we got past it some other way
            return
        if msg.offset == 0:
            if msg.total > self.config.snapshot_bytes_max:
                fx.event("snapshot_too_large", group=self.group, total=msg.total)
                self.snap = None
                return
            s.instance = msg.instance
            s.total = msg.total
            s.checksum = msg.checksum
            s.digest = msg.digest
            s.data = bytearray()
        elif msg.instance != s.instance or msg.offset != len(s.data):
            return  # stale or duplicate chunk
        s.data += msg.data
        s.retries = 0
        s.deadline = now + self.config.learn_timeout_ms
        if len(s.data) < s.total:
            fx.send(src, SnapshotRequest(group=self.group, instance=s.instance, offset=len(s.data)))
            return
        data = bytes(s.data)
        if len(data) != s.total or digest(data) != s.digest:
            fx.event("snapshot_corrupt", group=self.group, instance=s.instance)
            s.data = bytearray()
            fx.send(src, SnapshotRequest(group=self.group, instance=0, offset=0))
            return
        self.snap = None
        self.learner.install(s.instance, s.checksum, data, fx)
        self.acceptor.truncate_below(s.instance + 1, fx)
        self.host.forget_waiting(s.instance, "snapshot installed", fx)
        fx.event("snapshot_installed", group=self.group, instance=s.instance, checksum=s.checksum)
        self.host.advance(now, fx)
        if self.learner.applied < self.host.commit_seen:
            self.request_learn(now, src, fx)
