"""The simulated world: SimPy as the event heap, pure nodes stepped from callbacks.

``World`` owns the environment, the network, each node's disk and clock, and the trace
digest. ``NodeHost`` is the simulator's driver of one node and applies the driver contract
exactly (``pxq/effects.py``): a step's writes go to the node's disk as one batch; its sends
and replies wait until every batch up to and including that step is durable (syncs are
group-committed by the disk); output is released in step order, except sends marked
``early`` and the replies of a step that says ``replies_early`` (they leave at once); a send
to the node itself comes back to it, after its step, without the network; one timer per node
is armed at ``next_deadline()``. Process faults (crash with or without power loss, restart from the
durable state alone, pause and resume) live here too; a restart first recovers the disk
(``SimDisk.open``) and traces what it did with a torn batch's tail.
After every step of a node that has ``check_invariants`` (``SelfChecking``), the host runs it:
a broken invariant is a violation, like an ``InvariantViolation`` raised by the step itself.

Storage running short: on a disk with a capacity and a reserve (``sim.disk.DiskSpec``) the
host measures the room left after every completed sync (and when a fault changes the disk,
and right after ``Boot``) and steps the node with ``StorageLow`` on a crossing only: short
once the room is below the reserve, not short once it is back above the reserve plus the
margin, as the production driver does (``net.node.runner``). A batch that does not fit at all
(``DiskFull``) still crashes the node: the last resort of a totally full disk.

Simulated time is integer microseconds; nodes see integer milliseconds through their clocks.
Clients (workload processes) are network endpoints too; their requests arrive at a node as
``ClientCall`` and replies travel back over the simulated network.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import msgpack
import simpy

from pxq.effects import (
    ALARM,
    BlankStorage,
    Boot,
    ClientCall,
    Effects,
    Input,
    InvariantViolation,
    Node,
    NodeFactory,
    NodeId,
    Received,
    ReplacementRequired,
    Reply,
    Request,
    Response,
    Send,
    StorageCorruption,
    StorageLow,
    TraceEvent,
    TraceValue,
    Wake,
)
from sim.clock import NodeClock
from sim.disk import DiskFull, DiskSpec, SimDisk
from sim.network import Network, NetworkSpec
from sim.rng import stream

HANDLER = "handler"

SUPERVISOR_RESTART_MS = 500
"""How long after a corrupt record stopped a node its supervisor restarts it (to repair)."""
"""The pseudo-destination a consumer machine sends deliveries to; its host's handler runs them."""


@runtime_checkable
class SelfChecking(Protocol):
    """A node that can check its own state (the Paxos replica and the services on it)."""

    def check_invariants(self) -> None:
        """Raise ``InvariantViolation`` if the node's state is one no step may leave."""


@dataclass(frozen=True, slots=True)
class CallMsg:
    """A client request on the simulated wire: ``req_id`` lets the client match the reply."""

    req_id: int
    request: object


@dataclass(frozen=True, slots=True)
class ReplyMsg:
    req_id: int
    response: object


@dataclass(slots=True)
class Violation:
    """A safety failure detected inside the world (an InvariantViolation raised by a node)."""

    time_us: int
    node: NodeId
    message: str


@dataclass(slots=True)
class TraceRecord:
    time_us: int
    node: str
    kind: str
    fields: tuple[tuple[str, TraceValue], ...]


TraceListener = Callable[[TraceRecord], None]


@dataclass(slots=True)
class _Outbox:
    batch_id: int
    sends: tuple[Send, ...]
    replies: tuple[Reply, ...]


@dataclass(slots=True)
class NodeHost:
    """The simulator's driver of one node."""

    world: World
    node_id: NodeId
    factory: NodeFactory
    disk: SimDisk
    clock: NodeClock
    node: Node | None = None
    incarnation: int = 0
    crashed: bool = True
    paused: bool = False
    reply_before_persist: bool = False
    handler: Callable[[object], None] | None = None
    """For client machines: receives what the machine sends to ``HANDLER``."""
    paused_inbox: list[Input] = field(default_factory=list)
    outbox: deque[_Outbox] = field(default_factory=deque)
    calls: dict[int, tuple[str, int]] = field(default_factory=dict)
    local_calls: dict[int, Callable[[object], None]] = field(default_factory=dict)
    """Calls made by code in the same simulated process (a workload's application)."""
    next_call_id: int = 1
    timer_token: int = 0
    armed_deadline: int | None = None
    steps: int = 0
    crashes: int = 0
    check: Callable[[], None] | None = None
    """The node's ``check_invariants``, run after each of its steps (None: it has none)."""
    storage_short: bool = False
    """Whether this incarnation was last told its storage is short (``StorageLow``)."""
    storage_crossings: int = 0
    crash_reason: str | None = None
    """Why the last incarnation ended (None before any crash)."""
    damaged: list[tuple[str, bytes]] = field(default_factory=list)
    """Records (table, key) that failed their checksum, for the next ``Boot.damaged``: the
    driver's note of them, kept beside the disk (it survives the crash it caused)."""
    if_blank: BlankStorage = "new"
    """What blank storage means at the next ``Boot`` (the world's ``blank``; ``"replace"``
    after a disk replaced)."""
    booted_damaged: tuple[tuple[str, bytes], ...] = ()
    """The records reported at the last ``Boot``."""
    boot_done: bool = False
    """The last ``Boot`` step completed (its writes, the repair of ``booted_damaged``, are
    on the disk: a crash without power loss keeps them)."""
    corruption_restarts: int = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Build a new incarnation from the durable disk and boot it."""
        if not self.crashed:
            return
        self.incarnation += 1
        self.crashed = False
        self.paused = False
        self.paused_inbox.clear()
        self.outbox.clear()
        self.calls.clear()
        rng = stream(self.world.seed, f"node/{self.node_id}/{self.incarnation}")
        self.disk.attach(self._synced, self._disk_error)
        recovery = self.disk.open()
        if recovery is not None:
            self.world.record(
                self.node_id,
                "torn_tail_trusted" if recovery.trusted else "torn_tail_discarded",
                (
                    ("damage", recovery.damage),
                    ("of_records", recovery.of_records),
                    ("records", recovery.records),
                ),
            )
        self.world.record(self.node_id, "boot", (("incarnation", self.incarnation),))
        self.node = self.factory(self.node_id, self.disk.view(), rng)
        self.check = self.node.check_invariants if isinstance(self.node, SelfChecking) else None
        self.storage_short = False
        self.booted_damaged = tuple(self.damaged)
        boot = Boot(damaged=self.booted_damaged, if_blank=self.if_blank)
        self.damaged.clear()
        self.boot_done = False
        self.step(boot)
        self.boot_done = not self.crashed
        self.check_space()

    def crash(self, *, power_loss: bool, reason: str = "nemesis") -> None:
        if self.crashed:
            return
        self.crashed = True
        self.crashes += 1
        self.crash_reason = reason
        self.node = None
        self.timer_token += 1
        self.armed_deadline = None
        self.outbox.clear()
        self.calls.clear()
        self.paused_inbox.clear()
        torn_before = self.disk.stats.torn_batches
        lost_before = self.disk.stats.lost_batches
        self.disk.crash(power_loss=power_loss)
        self.world.record(
            self.node_id,
            "crash",
            (
                ("lost_batches", self.disk.stats.lost_batches - lost_before),
                ("power_loss", power_loss),
                ("reason", reason),
                ("torn_batches", self.disk.stats.torn_batches - torn_before),
            ),
        )

    def pause(self) -> None:
        if not self.crashed:
            self.paused = True

    def resume(self) -> None:
        if self.crashed or not self.paused:
            return
        self.paused = False
        inbox, self.paused_inbox = self.paused_inbox, []
        # The overdue timer first, then what arrived meanwhile: a process resumed after a
        # SIGSTOP may well run its timers before it has read its sockets' backlog (part of
        # which its peers may have dropped anyway), and that order is the harder one (a
        # follower that heard no master for a lease must not then disturb it).
        self.step(Wake())
        for inp in inbox:
            self.step(inp)

    # -- stepping ------------------------------------------------------------------------

    def step(self, inp: Input) -> None:
        node = self.node
        if node is None or self.crashed:
            return
        if self.paused:
            if not isinstance(inp, Wake):
                self.paused_inbox.append(inp)
            return
        now = self.clock.now(self.world.now_us)
        self.steps += 1
        try:
            fx = node.step(now, inp)
            if self.check is not None:
                self.check()
        except InvariantViolation as exc:
            self.world.violation(self.node_id, str(exc))
            self.crash(power_loss=False, reason="invariant violation")
            return
        except StorageCorruption as exc:
            self.world.record(self.node_id, "storage_corruption", (("error", str(exc)),))
            self.crash(power_loss=False, reason="storage corruption")
            self._restart_to_repair(exc)
            return
        except ReplacementRequired as exc:
            # As the runner: the node stops and stays down (an operator must restart it as a
            # replacement).
            self.world.record(self.node_id, "replacement_required", (("error", str(exc)),))
            self.crash(power_loss=False, reason="replacement required")
            return
        self._apply(fx)
        self._arm_timer()

    def _restart_to_repair(self, exc: StorageCorruption) -> None:
        """A supervisor restarts a node stopped by a corrupt record, after
        ``SUPERVISOR_RESTART_MS``, with the record in ``Boot.damaged`` so that it repairs it
        from its peers. A record reported again by the incarnation booted to repair it was
        not repaired: no restart then (that would be a crash loop); the node stays down like
        one stopped by a corrupt record that the exception does not name. A record found
        by the boot step itself is reported along with those that boot was given."""
        if exc.table is None or exc.key is None:
            return
        record = (exc.table, exc.key)
        if self.boot_done and record in self.booted_damaged:
            return
        if not self.boot_done:
            # The boot step that was to repair them failed before writing anything.
            self.damaged.extend(r for r in self.booted_damaged if r not in self.damaged)
        if record in self.damaged:
            return
        self.damaged.append(record)
        self.corruption_restarts += 1
        incarnation = self.incarnation

        def restart() -> None:
            if self.crashed and self.incarnation == incarnation:
                self.world.record(self.node_id, "supervisor_restart", (("reason", "repair"),))
                self.start()

        self.world.call_later(SUPERVISOR_RESTART_MS * 1000, restart)

    def _apply(self, fx: Effects) -> None:
        for ev in fx.trace:
            self.world.trace(self.node_id, ev)
        if fx.writes:
            try:
                batch_id = self.disk.submit(fx.writes)
            except DiskFull as exc:
                self.world.record(self.node_id, "disk_full", (("error", str(exc)),))
                self.crash(power_loss=False, reason="disk full")
                return
        else:
            batch_id = self.disk.next_batch - 1
        early_sends, early_replies, sends, replies = fx.split_early()
        if early_sends or early_replies:
            self._release(early_sends, early_replies)
            if self.crashed:
                return
        if not (sends or replies):
            if fx.writes:
                self.disk.request_sync()
            return
        if self.reply_before_persist or (
            not self.outbox and batch_id <= self.disk.durable_upto and not fx.writes
        ):
            self._release(sends, replies)
            if fx.writes:
                self.disk.request_sync()
            return
        self.outbox.append(_Outbox(batch_id, sends, replies))
        self.disk.request_sync()

    def _synced(self, upto: int) -> None:
        outbox = self.outbox
        while outbox and outbox[0].batch_id <= upto:
            item = outbox.popleft()
            self._release(item.sends, item.replies)
            if self.crashed:
                return
        self.check_space()

    def check_space(self) -> None:
        """Measure the disk's room and step the node with ``StorageLow`` if it crossed the
        reserve (below it, or back above it plus the margin) since the last report."""
        if self.crashed or self.node is None:
            return
        space = self.disk.space()
        if space is None:
            if not self.storage_short:
                return
            # The capacity or the reserve is gone (a fault undone): nothing is short any more.
            short = False
            used, available, reserve = self.disk.used_bytes(), 0, 0
        elif space.short and not self.storage_short:
            short = True
            used, available, reserve = space.used_bytes, space.available_bytes, space.reserve_bytes
        elif space.resumed and self.storage_short:
            short = False
            used, available, reserve = space.used_bytes, space.available_bytes, space.reserve_bytes
        else:
            return
        self.storage_short = short
        self.storage_crossings += 1
        cap = self.disk.spec.capacity_bytes
        self.step(
            StorageLow(
                short=short,
                available_bytes=available,
                reserve_bytes=reserve,
                used_bytes=used,
                limit="simulated disk without a limit"
                if cap is None
                else f"simulated disk's capacity of {cap} bytes",
            )
        )

    def _disk_error(self, exc: Exception) -> None:
        self.world.record(self.node_id, "fsync_error", (("error", str(exc)),))
        # The batches the failed sync covered may or may not be on the medium: lose them.
        self.crash(power_loss=True, reason="fsync error")

    def _release(self, sends: tuple[Send, ...], replies: tuple[Reply, ...]) -> None:
        net = self.world.network
        for s in sends:
            msg = s.msg
            if s.dst == self.node_id:
                self._loop_back(msg)
            elif isinstance(msg, Request):
                net.send(self.node_id, s.dst, CallMsg(msg.req_id, msg.body))
            elif s.dst == HANDLER and self.handler is not None:
                self.handler(msg)
            else:
                net.send(self.node_id, s.dst, msg)
        for r in replies:
            target = self.calls.pop(r.call_id, None)
            if target is not None:
                client, req_id = target
                net.send(self.node_id, client, ReplyMsg(req_id, r.response))
                continue
            local = self.local_calls.pop(r.call_id, None)
            if local is not None:
                local(r.response)

    def _arm_timer(self) -> None:
        node = self.node
        if node is None:
            return
        deadline = node.next_deadline()
        if deadline == self.armed_deadline:
            return  # the armed timer already serves it
        self.timer_token += 1
        self.armed_deadline = deadline
        if deadline is None:
            return
        now_us = self.world.now_us
        at = self.clock.sim_us_at(deadline, now_us)
        token = self.timer_token
        ev = self.world.env.timeout(max(at - now_us, 1))
        ev.callbacks.append(lambda _e: self._fire(token))

    def clock_changed(self) -> None:
        """The node's clock was changed (a fault): arm its timer again, for the simulated
        time its deadline is now reached at."""
        self.armed_deadline = None
        self._arm_timer()

    def _fire(self, token: int) -> None:
        if token == self.timer_token and not self.crashed:
            self.armed_deadline = None
            self.step(Wake())

    def _loop_back(self, msg: object) -> None:
        """A released send to the node itself: delivered back to this incarnation (never through
        the network), after the current step."""
        incarnation = self.incarnation

        def deliver() -> None:
            if self.incarnation == incarnation:
                self.receive(self.node_id, msg)

        self.world.call_later(0, deliver)

    def local_call(self, request: object, on_reply: Callable[[object], None]) -> bool:
        """A call from inside the node's own process (no network). ``on_reply`` gets the
        response; it is never called if the process crashes first. False if it is down."""
        if self.crashed:
            return False
        call_id = self.next_call_id
        self.next_call_id += 1
        self.local_calls[call_id] = on_reply
        self.step(ClientCall(call_id=call_id, request=request))
        return True

    def receive(self, src: str, payload: object) -> None:
        if self.crashed:
            return
        if isinstance(payload, CallMsg):
            call_id = self.next_call_id
            self.next_call_id += 1
            self.calls[call_id] = (src, payload.req_id)
            self.step(ClientCall(call_id=call_id, request=payload.request))
        elif isinstance(payload, ReplyMsg):
            self.step(Received(src=src, msg=Response(req_id=payload.req_id, body=payload.response)))
        else:
            self.step(Received(src=src, msg=payload))


class World:
    """Everything in one simulated run, derived from one seed."""

    def __init__(
        self,
        *,
        seed: int,
        network: NetworkSpec,
        disk: DiskSpec,
        drift_ppm_max: int = 0,
        skew_ms_max: int = 0,
        blank: BlankStorage = "new",
    ) -> None:
        self.seed = seed
        self.blank: BlankStorage = blank
        """What a node's blank storage means at boot, unless it is told it is a replacement
        (``NodeHost.if_blank``)."""
        self.env = simpy.Environment()
        self.network = Network(self.env, stream(seed, "network"), network, self._deliver)
        self.disk_spec = disk
        self.hosts: dict[NodeId, NodeHost] = {}
        self.endpoints: dict[str, Callable[[str, object], None]] = {}
        self.violations: list[Violation] = []
        self.listeners: list[TraceListener] = []
        self.trace_count = 0
        self._digest = hashlib.sha256()
        self._clock_rng = stream(seed, "clocks")
        self.drift_ppm_max = drift_ppm_max
        self.skew_ms_max = skew_ms_max

    # -- construction --------------------------------------------------------------------

    def add_node(self, node_id: NodeId, factory: NodeFactory) -> NodeHost:
        if node_id in self.hosts or node_id in self.endpoints:
            raise ValueError(f"duplicate endpoint {node_id!r}")
        rng = self._clock_rng
        drift = rng.randint(-self.drift_ppm_max, self.drift_ppm_max) if self.drift_ppm_max else 0
        skew = rng.randint(-self.skew_ms_max, self.skew_ms_max) if self.skew_ms_max else 0
        origin_us = rng.randrange(1_000_000_000) * 1000
        clock = NodeClock(origin_us=origin_us, drift_ppm=drift, skew_ms=skew)
        disk = SimDisk(self.env, stream(self.seed, f"disk/{node_id}"), self.disk_spec)
        host = NodeHost(world=self, node_id=node_id, factory=factory, disk=disk, clock=clock)
        host.if_blank = self.blank
        self.hosts[node_id] = host
        return host

    def add_client(
        self, node_id: NodeId, factory: NodeFactory, handler: Callable[[object], None] | None = None
    ) -> NodeHost:
        """A client machine (producer, consumer): a node whose traffic rides streams (never
        duplicated or reordered), whose ``Request`` sends become client calls, and whose
        deliveries to ``HANDLER`` go to ``handler``."""
        host = self.add_node(node_id, factory)
        host.handler = handler
        self.network.stream_endpoints.add(node_id)
        return host

    def add_endpoint(self, name: str, receive: Callable[[str, object], None]) -> None:
        """A non-node endpoint (a workload client) that receives replies and messages."""
        if name in self.hosts or name in self.endpoints:
            raise ValueError(f"duplicate endpoint {name!r}")
        self.endpoints[name] = receive
        self.network.stream_endpoints.add(name)

    def start(self) -> None:
        for node_id in sorted(self.hosts):
            self.hosts[node_id].start()

    # -- events --------------------------------------------------------------------------

    def _deliver(self, src: str, dst: str, payload: object) -> None:
        host = self.hosts.get(dst)
        if host is not None:
            host.receive(src, payload)
            return
        endpoint = self.endpoints.get(dst)
        if endpoint is not None:
            endpoint(src, payload)

    def call_later(self, delay_us: int, fn: Callable[[], None]) -> None:
        ev = self.env.timeout(max(0, delay_us))
        ev.callbacks.append(lambda _e: fn())

    def trace(self, node: str, ev: TraceEvent) -> None:
        self.record(node, ev.kind, ev.fields)
        if ev.kind == ALARM:
            # Every replica here is honest: evidence of a faulty peer is a defect somewhere.
            self.violations.append(Violation(self.now_us, node, f"alarm {dict(ev.fields)}"))

    def record(self, node: str, kind: str, fields: tuple[tuple[str, TraceValue], ...]) -> None:
        """Feed one event into the trace digest and to the listeners."""
        self.trace_count += 1
        rec = TraceRecord(self.now_us, node, kind, fields)
        self._digest.update(msgpack.packb([rec.time_us, node, kind, [list(kv) for kv in fields]]))
        for listener in list(self.listeners):  # a listener may remove itself
            listener(rec)

    def violation(self, node: NodeId, message: str) -> None:
        self.violations.append(Violation(self.now_us, node, message))
        self.record(node, "violation", (("message", message),))

    @property
    def now_us(self) -> int:
        return int(self.env.now)

    def digest(self) -> str:
        return self._digest.hexdigest()

    def run_until(self, time_us: int) -> None:
        if time_us > self.env.now:
            self.env.run(until=time_us)
