"""``NodeRunner``: the production driver of one node, on an asyncio event loop.

It implements the driver contract of ``pxq.effects`` the way ``sim.world.NodeHost`` does:

* An incarnation starts from the durable LMDB state alone: the node is built by its factory
  ``(node_id, storage_view, rng)`` and stepped with ``Boot()`` before anything else.
* Inputs (``Received`` from peer connections, ``ClientCall`` from client connections with call
  ids unique per incarnation, ``Wake`` from the timer) are stepped as they arrive. Each step's
  writes go into the storage's open batch at once, an in-memory overlay that every later
  read sees (read-your-writes; ``net.node.storage``).
* Group commit off the loop thread: the first step of a turn that leaves something to do
  schedules one end-of-turn callback (``loop.call_soon``). It runs before the I/O callbacks of
  the next loop iteration, so it covers every input the previous poll delivered. If no commit
  is running, it seals the open batch and hands it to the node's one writer thread, which
  makes it durable (appended to the write-ahead log and synced: ``net.node.storage``) while
  the loop keeps receiving and stepping; the writes of steps taken meanwhile form the next
  batch, sealed as soon as the running commit completes. Batches commit one at a time, in
  order. A second thread, the checkpointer, moves the batches durable in the log into LMDB
  (``LmdbStorage.checkpoint_due``: every ``checkpoint_batches`` batches, or
  ``checkpoint_interval_ms`` after a batch went to the log), one checkpoint at a time,
  beside the appends; when the log must start over (``log_full``), or checkpoints lag far
  behind (``backlogged``), appends wait for it.
* Output waits for durability: each step's sends and replies are tagged with the batch that
  holds the last write applied so far (its own, or an earlier step's that it may have read),
  and are released, in step order, only once that batch is durable; each connection's frames
  of one release go out in one write. A step with nothing undurable before it, when no
  earlier output is still waiting, has its output released at once; so are sends marked
  ``early`` and the replies of a step that says ``replies_early`` (the node vouches that they
  depend on nothing undurable). A send to the node itself is stepped back into it
  (``Received`` from itself) on the next loop iteration, never through the network.
* At most one timer (``loop.call_at``) is armed, and the node gets a ``Wake`` once
  ``next_deadline()`` (re-read after every step) is reached. A deadline that moves later
  leaves the armed timer alone: when it fires before the node's current deadline, it is
  re-armed for that deadline, and no ``Wake`` is stepped (a follower's election deadline
  moves with every message from its master: this saves a cancel and a ``call_at`` per
  step). Monotonic ms come from ``net.clock.mono_ns`` (``CLOCK_BOOTTIME`` where the platform
  has it: it counts the time the host was suspended, so a lease is never believed longer than
  it ran) and wall ms from ``time.time_ns() // 1_000_000``; the timer is armed in the loop's
  own clock from the difference, so it works with any loop implementation.
* ``InvariantViolation``, ``StorageCorruption`` or a ``StorageError`` (``StorageFull``
  included: the last resort if the map or disk is full at commit time despite the reserve,
  which with a reserve sized for the non-enqueue traffic practically means a too small
  reserve, or a follower's disk) from a step or a commit, or any other exception from the node, stops the node:
  logged at error level, every write not yet durable dropped and every output still held
  dropped (nothing of it is released), listener and connections closed, the writer thread
  joined, storage closed. A commit is never retried (a full map grows and writes the same
  batch again: LMDB reports it before writing anything).
* Storage running short (``NetConfig.storage_reserve_bytes``, at least 2 MiB): the runner
  watches the space still available to the node's LMDB (``LmdbStorage.space``: the smaller
  of the map's room below ``map_size_max_bytes`` and the disk's room) and reports its
  *crossings* to the node as ``StorageLow`` (``pxq.effects``), stepped just before the client
  call that revealed it: ``short`` once the space is below the reserve, not short again once
  it is back above the reserve plus ``storage_resume_margin_percent`` (hysteresis). What to
  refuse is the node's policy (a store replica answers enqueues ``storage_full`` meanwhile,
  and lets everything else through: the reserve is for it, and consumers plus retention are what frees space;
  ``pxq.store.node``). The space is measured at a client call's arrival when the last
  measurement is older than ``storage_space_refresh_ms``; in between, every committed batch
  is charged against it (``COMMITTED_BYTES_CHARGE_FACTOR`` times its key and value bytes, a
  pessimistic page cost), so a burst cannot run past the reserve unnoticed: once that
  estimate reaches the reserve the space is measured again at once, and only a measurement
  reports a crossing (the estimate alone would flap). A refused client retrying is what
  brings the next measurement, so enqueues resume as soon as space is back. The runner logs
  each crossing once, with the figures. A new incarnation starts as not short, and is
  measured before Boot: a storage already short (over its limit) is reported right after
  ``Boot``, before any client call, and its LMDB map may grow past ``map_size_max_bytes`` by
  the reserve for this incarnation (``LmdbStorage.allow_room``, logged once): without that,
  a map full at its maximum (a follower that replicated past its reserve, a lowered
  ``map_size_max_bytes``, data from before the reserve's minimum) stopped the node at its
  first write after every restart, and with a majority of replicas in that state nothing
  could be consumed to free space (issue 13). So such a replica starts read-only: it
  serves reads, cursor commits and retention deletes, refuses enqueues, and accepts them
  again once retention has brought it back under its limit. The report is about the
  replica that receives the call: a follower's disk fills with what the master replicates,
  and one whose disk is totally full stops at its next write (last resort above) while a
  majority carries on; a full *filesystem* cannot be raised like the map.
* ``stop()`` waits for the running commit, commits what is left on the loop thread, releases
  everything, then closes.
* Authentication and authorisation (with TLS, ``NetConfig.tls``): a ``Hello(node=X)`` is
  accepted only on a connection whose certificate says ``node:X`` (``net.tls``), and every
  client call is checked against the connection's certificate identity by the
  ``AccessPolicy`` (``pxq.access``) before the node is stepped with it: a refused call is
  answered at once with a definite ``permission_denied`` error naming the missing permission
  (logged, counted in ``calls_refused``); the node never sees it. Without TLS there is no
  identity and every call is allowed; each node logs a warning at start.
* Cluster identity (``pxq.config.identity``): the runner knows its cluster's name and id and
  routing metadata. A peer's ``Hello`` and a client's ``ClientHello`` naming another cluster
  (name or id) are refused, the client's with a ``Welcome`` whose error names both; so is a
  client over its address's connection budget, before any of its calls is read (definite for
  the client). An accepted client whose routing fingerprint differs gets the node's metadata
  in its ``Welcome`` and refuses to route with its own file. The storage opener stamps the id
  into the data dir (``net.node.storage``).
* Trace events go to the ``pxq.net.trace`` logger (debug level) and to an optional callback.
  A Paxos group's mastership changes (the core's ``master`` events: lease gained, lease
  expired, mastership lost) are logged at info level on ``pxq.mastership``, once each, with
  the node, service, group, ballot and term as fields (``net.logs``); the storage's crossings
  of its reserve on ``pxq.storage``.
  Alarms (``pxq.effects.ALARM``: evidence about a peer or the group, never a crash) are
  counted in ``stats.alarms`` and logged at error level on ``pxq.net.alarm``, at most
  ``ALARM_LOG_PER_S`` lines per second (a flood is summarised, not written line by line).
* What an operator reads off the runner (``net.metrics`` serves it to Prometheus, reading it
  at scrape time on the loop): ``stats``, the client calls received per request type
  (``requests``), the writer thread's commit times (``commit_times``, a histogram it fills
  itself: one ``perf_counter`` pair per commit), the node's own state.

Peer messages to the node itself are delivered in memory on a later loop callback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from net.clock import mono_ns
from net.config import NetConfig
from net.errors import BootFailed, DataDirError, NetError, StorageError
from net.logs import MASTERSHIP_LOGGER, STORAGE_LOGGER, log_event
from net.node.storage import (
    DAMAGED_NAME,
    LmdbStorage,
    SealedBatch,
    StorageSpace,
    WriteOutcome,
    clear_damaged,
    note_damaged,
    read_damaged,
)
from net.node.transport import InboundConnection, PeerLink, listen
from net.tls import node_identity
from net.wire.envelope import CallReply, ClientHello, Hello, Login, Welcome
from net.wire.framing import encode_frame
from pxq import codec
from pxq.access import AccessPolicy, refusal_response
from pxq.config.identity import describe_cluster, fingerprint
from pxq.effects import (
    ALARM,
    BlankStorage,
    Boot,
    ClientCall,
    Input,
    InvariantViolation,
    Node,
    NodeFactory,
    NodeId,
    Now,
    Received,
    ReplacementRequired,
    Reply,
    Send,
    StorageCorruption,
    StorageLow,
    StorageView,
    TraceEvent,
    Wake,
    Write,
)
from pxq.paxos.ballot import round_of

log = logging.getLogger("pxq.net.runner")
trace_log = logging.getLogger("pxq.net.trace")
alarm_log = logging.getLogger("pxq.net.alarm")
master_log = logging.getLogger(MASTERSHIP_LOGGER)
storage_log = logging.getLogger(STORAGE_LOGGER)

MASTER_EVENT = "master"
"""The core's trace event of a mastership change (``pxq.paxos.group``): ``state`` is
``elected`` (phase 1 won), ``became`` (the lease is held: it serves), ``lapsed`` (the lease
expired; it keeps trying to renew for one more lease) or ``lost`` (stepped down, ``reason``)."""

ALARM_LOG_PER_S = 10
"""Alarm lines logged per second at most; the rest are counted and summarised."""

TraceListener = Callable[[NodeId, TraceEvent], None]

STOP_WRITE_WAITS_MAX = 64
"""Commits a graceful stop waits for (each one started while the previous ran) before it
commits the rest on the loop thread."""

COMMITTED_BYTES_CHARGE_FACTOR = 2
"""Between two measurements of the storage space, each committed batch is taken to use this
many times its key and value bytes in pages (B-tree pages are at least half full after a
split; the next measurement corrects the estimate)."""

WRITER_IDLE_CHECK_S = 1.0
"""How often an idle writer thread checks that the interpreter is not exiting (a runner that
was never stopped must not keep the process alive)."""

_MIB = 1024 * 1024

COMMIT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
"""Upper bounds of the commit time histogram (an LMDB transaction with its fsync)."""


class CommitTimes:
    """A histogram of the writer thread's commit times (seconds): filled by that thread
    alone, read by a metrics scrape (``snapshot``; copying the list is atomic under the GIL,
    and a scrape that races a commit is off by that one commit at most)."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(COMMIT_SECONDS_BUCKETS) + 1)  # the last one: +Inf
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(COMMIT_SECONDS_BUCKETS, seconds)] += 1
        self.sum_s += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """(count per bucket, not cumulative, the last one above every bound; sum)."""
        return list(self.counts), self.sum_s


class DriverStorage(StorageView, Protocol):
    """What the runner needs of its storage (``LmdbStorage``, or a test double)."""

    @property
    def pending(self) -> bool: ...

    @property
    def horizon_seq(self) -> int: ...

    @property
    def durable_seq(self) -> int: ...

    @property
    def committed_bytes(self) -> int: ...

    def space(self) -> StorageSpace: ...

    def allow_room(self, room_bytes: int) -> int: ...

    def apply(self, writes: tuple[Write, ...]) -> None: ...

    @property
    def held(self) -> int: ...

    @property
    def log_full(self) -> bool: ...

    @property
    def backlogged(self) -> bool: ...

    def seal(self, *, checkpoint: bool = False) -> SealedBatch | None: ...

    def checkpoint_due(
        self, *, force: bool = False, writer_idle: bool = False
    ) -> SealedBatch | None: ...

    def checkpoint(self, batch: SealedBatch) -> WriteOutcome: ...

    def write(self, batch: SealedBatch) -> WriteOutcome: ...

    def written(self, outcome: WriteOutcome) -> None: ...

    def commit(self) -> bool: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class StorageOpener(Protocol):
    """Opens a node's storage in ``data_dir``, stamped (or checked) with its cluster's name
    and id and the node's name."""

    def __call__(
        self, data_dir: Path, cluster: str, node: NodeId, config: NetConfig, *, cluster_id: str
    ) -> DriverStorage: ...


def open_lmdb(
    data_dir: Path, cluster: str, node: NodeId, config: NetConfig, *, cluster_id: str = ""
) -> DriverStorage:
    """The default storage: ``LmdbStorage`` in ``data_dir``."""
    return LmdbStorage.open(
        data_dir, cluster=cluster, node=node, config=config, cluster_id=cluster_id
    )


def open_lmdb_replacing(
    data_dir: Path, cluster: str, node: NodeId, config: NetConfig, *, cluster_id: str = ""
) -> DriverStorage:
    """``LmdbStorage`` in ``data_dir`` of a node started as a replacement (``--replace``): a
    marker without data is then expected."""
    return LmdbStorage.open(
        data_dir, cluster=cluster, node=node, config=config, replace=True, cluster_id=cluster_id
    )


_WriteDone = Callable[[asyncio.Future[None], WriteOutcome | None, BaseException | None], None]
"""``NodeRunner._write_done``: (the commit's future, its outcome, or what ``write`` raised)."""


class _WriterThread:
    """A thread of the runner that writes to storage: the writer (``write``: the sealed
    batches) or the checkpointer (``checkpoint``). It commits the batches it is handed, one
    at a time and in order, then calls ``done(fut, outcome, error)`` on the loop
    (``call_soon_threadsafe``) with the future the batch was submitted with. Cheaper per commit
    than ``loop.run_in_executor``: no executor future with its locks, no chained asyncio
    future. ``shutdown`` lets a running commit finish, then joins the thread; a thread whose
    runner was never stopped ends once the interpreter exits its main thread."""

    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        write: Callable[[SealedBatch], WriteOutcome],
        done: _WriteDone,
        times: CommitTimes,
    ) -> None:
        self._jobs: queue.SimpleQueue[tuple[SealedBatch, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self.times = times
        self.running: asyncio.Future[None] | None = None
        """Done once the running batch is (``submit``, ``take``)."""
        self._loop = loop
        self._write = write
        self._done = done
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def submit(self, batch: SealedBatch) -> None:
        """Hand ``batch`` over (on the loop); it is ``running`` until ``take`` of it."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self.running = fut
        self._jobs.put((batch, fut))

    def take(self, fut: asyncio.Future[None]) -> bool:
        """On the loop, in ``done``: whether ``fut`` is the running batch's (it no longer
        runs then), and not one of before a ``shutdown``."""
        if not fut.done():
            fut.set_result(None)
        if fut is not self.running:
            return False
        self.running = None
        return True

    def shutdown(self) -> None:
        """Let the running commit finish, then stop and join the thread."""
        self._jobs.put(None)
        self._thread.join()
        self.running = None

    def _run(self) -> None:
        jobs = self._jobs
        write = self._write
        observe = self.times.observe
        clock = time.perf_counter
        while True:
            try:
                job = jobs.get(timeout=WRITER_IDLE_CHECK_S)
            except queue.Empty:
                if threading.main_thread().is_alive():
                    continue
                return  # the interpreter is exiting and the runner was never stopped
            if job is None:
                return
            batch, fut = job
            outcome: WriteOutcome | None = None
            error: BaseException | None = None
            started = clock()
            try:
                outcome = write(batch)
            except BaseException as exc:
                error = exc
            observe(clock() - started)
            try:
                self._loop.call_soon_threadsafe(self._done, fut, outcome, error)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                return
            del job, batch, fut, outcome, error


class RunnerState(Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"  # by stop()
    CRASHED = "crashed"  # by a failure; see crash_reason


@dataclass(slots=True)
class RunnerStats:
    """Counters of one runner (one incarnation)."""

    steps: int = 0
    turns: int = 0
    commits: int = 0
    checkpoints: int = 0
    map_full_rewrites: int = 0
    sends: int = 0
    replies: int = 0
    calls: int = 0
    sends_unroutable: int = 0
    encode_failures: int = 0
    connections_refused: int = 0
    """Connections closed at accept or at their first frame by a budget or a limit."""
    connections_evicted: int = 0
    """Connections closed to make room for a newer one (see ``NodeRunner.connection_opened``)."""
    calls_refused: int = 0
    """Client calls refused by the access policy (``pxq.access``) before reaching the node."""
    space_measurements: int = 0
    storage_crossings: int = 0
    """``StorageLow`` reports stepped into the node (both directions)."""
    alarms: int = 0
    """Alarms the node raised (``pxq.effects.ALARM``)."""


def monotonic_ms() -> int:
    return mono_ns() // 1_000_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeRunner:
    """Hosts one node: listener, peer links, storage, timer (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: NodeId,
        cluster: str,
        data_dir: Path | str,
        factory: NodeFactory,
        peers: Mapping[NodeId, tuple[str, int]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        config: NetConfig | None = None,
        seed: int | None = None,
        storage_opener: StorageOpener = open_lmdb,
        on_trace: TraceListener | None = None,
        if_blank: BlankStorage = "new",
        access: AccessPolicy | None = None,
        service: str = "",
        cluster_id: str = "",
        metadata: str = "",
    ) -> None:
        if not node_id or not cluster:
            raise ValueError("node_id and cluster must be non-empty")
        self.node_id = node_id
        self.cluster = cluster
        self.service = service
        """The service the node is a replica of (a store's name, or the lock service), for
        logs and metrics; empty if unknown."""
        self.cluster_id = cluster_id
        """The cluster's id ("" for none), stamped into the data dir at first start and
        checked in every peer's ``Hello`` and client's ``ClientHello``
        (``pxq.config.identity``)."""
        self._metadata = metadata
        self._fingerprint = fingerprint(metadata)
        self.data_dir = Path(data_dir)
        self.config = config or NetConfig()
        self._factory = factory
        self._peers: dict[NodeId, tuple[str, int]] = dict(peers or {})
        self._host = host
        self._port = port
        # Production seeds from the OS; tests pass a seed to replay the node's choices.
        self._seed = seed if seed is not None else int.from_bytes(os.urandom(16), "big")
        self._storage_opener = storage_opener
        self._if_blank: BlankStorage = if_blank
        self._damaged_boot_seq: int | None = None
        """The batch holding the repair of the records noted damaged, once booted with them:
        the note is dropped when that batch is durable."""
        """What blank storage means at ``Boot`` (``pxq.effects.Boot.if_blank``): ``pxq node
        run`` says "probe", or "replace" with ``--replace``."""
        self._on_trace = on_trace
        self._access = access or AccessPolicy({})
        self.state = RunnerState.NEW
        self.crash_reason: str | None = None
        self.stats = RunnerStats()
        self.requests: dict[type, int] = {}
        """Client calls received, per request type (refused ones included)."""
        self.commit_times = CommitTimes()
        self.checkpoint_times = CommitTimes()
        self._alarm_second = -1
        self._alarms_logged = 0
        self._alarms_unlogged = 0
        self._node: Node | None = None
        self._storage: DriverStorage | None = None
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[NodeId, PeerLink] = {}
        self._conns: dict[InboundConnection, None] = {}  # insertion-ordered set
        # Connection budgets (NetConfig, docs/operations.md): insertion-ordered sets, oldest
        # first, and the unclassified and client connections per remote address.
        self._unclassified: dict[InboundConnection, None] = {}
        self._clients: dict[InboundConnection, None] = {}
        self._peer_conns: dict[NodeId, dict[InboundConnection, None]] = {}
        self._unclassified_by_address: dict[str, dict[InboundConnection, None]] = {}
        self._clients_by_address: dict[str, int] = {}
        self._calls: dict[int, tuple[InboundConnection, int]] = {}
        self._next_call_id = 1
        # Output held until durable: (batch it waits for, sends, replies), in step order.
        self._outbox: deque[tuple[int, tuple[Send, ...], tuple[Reply, ...]]] = deque()
        self._writer: _WriterThread | None = None
        self._checkpointer: _WriterThread | None = None
        self._rewinding = False  # the running checkpoint rewinds the log: no append meanwhile
        self._checkpoint_timer: asyncio.TimerHandle | None = None
        self._checkpoint_wanted = False  # the next checkpoint takes whatever the log holds
        self._dirty_conns: list[InboundConnection] = []
        self._dirty_links: dict[NodeId, PeerLink] = {}
        self._turn_scheduled = False
        self._timer_stale = False  # a step ran since the timer was last armed
        self._timer: asyncio.TimerHandle | None = None
        self._armed_deadline: int | None = None  # what the armed timer was set for
        self._deadline: int | None = None  # the node's next_deadline() after its last step
        self._stopped: asyncio.Future[None] | None = None
        self._link_rng = random.Random(self._seed ^ 0x5EED)
        # Storage watch: the last space measurement, when (mono ms) and at which
        # committed_bytes it was taken, and whether the node was last told it is short.
        self._space: StorageSpace | None = None
        self._space_at_ms = 0
        self._space_committed_bytes = 0
        self._storage_short = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound listen address (the real port when started with port 0); it stays
        readable after the runner stopped."""
        if self._address is None:
            raise NetError(f"node {self.node_id} was not started")
        return self._address

    @property
    def running(self) -> bool:
        return self.state is RunnerState.RUNNING

    @property
    def storage(self) -> DriverStorage | None:
        return self._storage

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the runner was started on (None before ``start``)."""
        return self._loop

    @property
    def node(self) -> Node | None:
        return self._node

    @property
    def storage_short(self) -> bool:
        """Whether the node was last told its storage is below the reserve (``StorageLow``)."""
        return self._storage_short

    def link(self, peer: NodeId) -> PeerLink | None:
        """The outbound link to ``peer``, if one was created."""
        return self._links.get(peer)

    async def start(self) -> None:
        """Open the storage, bind the listener, boot the node, then start accepting.

        Raises a ``StartupError`` naming the problem (busy port, unusable or foreign data
        dir, ``BootFailed``); nothing stays open then.
        """
        if self.state is not RunnerState.NEW:
            raise NetError(f"runner of {self.node_id} was already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        storage = self._storage_opener(
            self.data_dir, self.cluster, self.node_id, self.config, cluster_id=self.cluster_id
        )
        try:
            tls = self.config.tls
            server = await listen(
                lambda: InboundConnection(self, self.config),
                self._host,
                self._port,
                ssl=None if tls is None else tls.server,
                handshake_timeout_s=self.config.first_frame_timeout_ms / 1000,
            )
        except BaseException:
            storage.close()
            raise
        self._storage = storage
        self._server = server
        self._writer = _WriterThread(
            f"pxq-writer-{self.node_id}", loop, storage.write, self._write_done, self.commit_times
        )
        self._checkpointer = _WriterThread(
            f"pxq-checkpoint-{self.node_id}",
            loop,
            storage.checkpoint,
            self._checkpoint_done,
            self.checkpoint_times,
        )
        name = server.sockets[0].getsockname()
        self._address = (str(name[0]), int(name[1]))
        self.state = RunnerState.RUNNING
        rng = random.Random(self._seed)
        address = self.address
        self._room_at_start(storage)
        if self.state is RunnerState.RUNNING:
            self._boot(storage, rng)
        if self.state is not RunnerState.RUNNING:
            raise BootFailed(f"node {self.node_id} stopped while booting: {self.crash_reason}")
        await server.start_serving()
        # Say hello to every peer at once: a peer that was backing off from reconnecting to
        # us (we were down) retries immediately, so a restarted replica hears its group's
        # master within a heartbeat instead of campaigning and unseating it.
        for peer in sorted(self._peers):
            if peer != self.node_id:
                link = self._links.get(peer) or self._new_link(peer)
                if link is not None:
                    link.open()
        log.info("node %s of cluster %s listening on %s:%d", self.node_id, self.cluster, *address)
        if self.config.tls is None:
            log.warning(
                "node %s: TLS is off: anyone who can reach this port can act as a replica or "
                "client ([tls] in the cluster file, docs/security.md)",
                self.node_id,
            )

    def _boot(self, storage: DriverStorage, rng: random.Random) -> None:
        """Build the node and step it with ``Boot`` (then with ``StorageLow`` if short)."""
        try:
            self._node = self._factory(self.node_id, storage, rng)
        except Exception as exc:
            self._crash(f"node factory failed: {type(exc).__name__}: {exc}", exc)
            return
        damaged = read_damaged(self.data_dir) if self.data_dir.is_dir() else ()
        self._step(Boot(damaged=damaged, if_blank=self._if_blank))
        if damaged and self.state is RunnerState.RUNNING:
            self._damaged_boot_seq = storage.horizon_seq
            log.warning("node %s repairs %d damaged records", self.node_id, len(damaged))
        # A storage already short is reported right after Boot (pxq.effects.StorageLow),
        # before any client call, as the simulator's host does.
        self._watch_space()

    async def stop(self) -> None:
        """Graceful stop: finish the current turn (commit, release), close everything."""
        if self.state is RunnerState.NEW:
            self.state = RunnerState.STOPPED
            return
        if self.state is not RunnerState.RUNNING:
            return
        await self._finish_writes()
        if self.state is not RunnerState.RUNNING:
            return  # the final commit failed: _crash closed everything
        self.state = RunnerState.STOPPED
        self._shutdown()
        server = self._server
        if server is not None:
            await server.wait_closed()
        log.info("node %s stopped", self.node_id)

    async def wait_stopped(self) -> str | None:
        """Wait until the runner stops; the crash reason, or None after ``stop()``."""
        if self._stopped is None:
            raise NetError(f"runner of {self.node_id} was never started")
        await asyncio.shield(self._stopped)
        return self.crash_reason

    def update_peers(self, peers: Mapping[NodeId, tuple[str, int]]) -> None:
        """Replace the peer address book (for example once ephemeral ports are known)."""
        self._peers = dict(peers)
        for peer, link in self._links.items():
            address = self._peers.get(peer)
            if address is not None:
                link.set_address(address)

    def _crash(self, reason: str, exc: BaseException | None) -> None:
        if self.state is not RunnerState.RUNNING:
            return
        log.error("node %s stopped: %s", self.node_id, reason, exc_info=exc)
        self.state = RunnerState.CRASHED
        self.crash_reason = reason
        # Nothing held is released, and writes not yet durable never become durable (a commit
        # running on the writer thread may still complete: durable, but never announced).
        self._outbox.clear()
        self._dirty_conns.clear()
        self._dirty_links.clear()
        if self._storage is not None:
            try:
                self._storage.abort()
            except Exception:
                log.exception("node %s: abort after the failure failed too", self.node_id)
        self._shutdown()

    def _shutdown(self) -> None:
        """Close listener, connections, links, timer and storage (common to stop and crash)."""
        self._node = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()
            self._checkpoint_timer = None
        self._armed_deadline = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.close("node stopping", level=logging.DEBUG)
        self._conns.clear()
        self._unclassified.clear()
        self._clients.clear()
        self._peer_conns.clear()
        self._unclassified_by_address.clear()
        self._clients_by_address.clear()
        self._calls.clear()
        for link in self._links.values():
            link.close()
        for thread in (self._writer, self._checkpointer):
            if thread is not None:
                # A commit still running must finish before the environment closes (LMDB).
                thread.shutdown()
        self._writer = self._checkpointer = None
        self._rewinding = False
        if self._storage is not None:
            try:
                self._storage.close()
            except Exception:
                log.exception("node %s: closing the storage failed", self.node_id)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    # -- stepping -----------------------------------------------------------------------------

    def _step(self, inp: Input) -> None:
        node = self._node
        storage = self._storage
        if node is None or storage is None:
            return
        self.stats.steps += 1
        now = Now(mono_ms=mono_ns() // 1_000_000, wall_ms=time.time_ns() // 1_000_000)
        try:
            fx = node.step(now, inp)
            if fx.trace:
                self._trace(fx.trace)
            if fx.writes:
                storage.apply(fx.writes)
        except InvariantViolation as exc:
            self._crash(f"invariant violation: {exc}", exc)
            return
        except StorageCorruption as exc:
            noted = ""
            if exc.table is not None and exc.key is not None:
                # The next incarnation repairs the record instead of reading it again.
                try:
                    note_damaged(self.data_dir, (exc.table, exc.key))
                    noted = f" (noted in {DAMAGED_NAME}: a restart repairs it from the peers)"
                except DataDirError as note_exc:
                    noted = f" (could not note it: {note_exc})"
            self._crash(f"storage corruption: {exc}{noted}", exc)
            return
        except ReplacementRequired as exc:
            self._crash(
                f"refusing to run on blank storage: {exc}. If this node lost its data and "
                "the rest of the cluster is healthy, start it again with `pxq node run "
                "--replace`: it re-learns from its peers before it votes",
                None,
            )
            return
        except StorageError as exc:
            self._crash(f"storage failure: {type(exc).__name__}: {exc}", exc)
            return
        except Exception as exc:
            self._crash(f"node raised {type(exc).__name__}: {exc}", exc)
            return
        early_sends, early_replies, sends, replies = fx.split_early()
        if early_sends or early_replies:
            # The node vouches that these depend on nothing undurable: no need to wait.
            self._release(early_sends, early_replies)
        if sends or replies:
            horizon = storage.horizon_seq
            if self._outbox or horizon > storage.durable_seq:
                self._outbox.append((horizon, sends, replies))
            else:
                self._release(sends, replies)
        # The timer is re-armed once per loop turn, not per step: with many groups reading
        # the next deadline walks every group, and a turn steps many inbound frames.
        self._timer_stale = True
        self._schedule_turn_end()

    def _trace(self, events: tuple[TraceEvent, ...]) -> None:
        for ev in events:
            kind = ev.kind
            if kind == ALARM:
                self._alarm(ev)
            elif kind == MASTER_EVENT:
                self._log_master(ev)
        if trace_log.isEnabledFor(logging.DEBUG):
            for ev in events:
                trace_log.debug("%s %s %s", self.node_id, ev.kind, dict(ev.fields))
        listener = self._on_trace
        if listener is not None:
            for ev in events:
                listener(self.node_id, ev)

    def _log_master(self, ev: TraceEvent) -> None:
        """One line per mastership change of a group (``MASTER_EVENT``)."""
        fields = dict(ev.fields)
        state = fields.get("state")
        group = fields.get("group")
        ballot = fields.get("ballot")
        where = f"{self.service}/{group!s}" if self.service else f"group {group!s}"
        term = round_of(ballot) if isinstance(ballot, int) else None
        facts = {
            "node": self.node_id,
            "service": self.service,
            "group": group,
            "ballot": ballot,
            "term": term,
            "state": state,
        }
        if state == "became":
            log_event(
                master_log,
                logging.INFO,
                "node %s is master of %s (ballot %s, term %s): its lease is held, it serves",
                self.node_id, where, ballot, term, **facts,
            )  # fmt: skip
        elif state == "lapsed":
            log_event(
                master_log,
                logging.INFO,
                "node %s: its master lease of %s expired (ballot %s, term %s); it keeps "
                "trying to renew it for one more lease",
                self.node_id, where, ballot, term, **facts,
            )  # fmt: skip
        elif state == "lost":
            reason = fields.get("reason")
            log_event(
                master_log,
                logging.INFO,
                "node %s is no longer master of %s (ballot %s, term %s): %s",
                self.node_id, where, ballot, term, reason, reason=reason, **facts,
            )  # fmt: skip
        else:  # elected: phase 1 won, the lease follows ("became") or not ("lost")
            log_event(
                master_log,
                logging.DEBUG,
                "node %s won the election of %s (ballot %s, term %s)",
                self.node_id, where, ballot, term, **facts,
            )  # fmt: skip

    def _alarm(self, ev: TraceEvent) -> None:
        self.stats.alarms += 1
        second = monotonic_ms() // 1000
        if second != self._alarm_second:
            if self._alarms_unlogged:
                alarm_log.error(
                    "%s: %d more alarms not logged in the last second",
                    self.node_id,
                    self._alarms_unlogged,
                )
            self._alarm_second, self._alarms_logged, self._alarms_unlogged = second, 0, 0
        if self._alarms_logged < ALARM_LOG_PER_S:
            self._alarms_logged += 1
            alarm_log.error("%s: alarm %s", self.node_id, dict(ev.fields))
        else:
            self._alarms_unlogged += 1

    def _schedule_turn_end(self) -> None:
        if not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            self._loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._turn_scheduled = False
        storage = self._storage
        if self.state is not RunnerState.RUNNING or storage is None:
            return
        self.stats.turns += 1
        if self._timer_stale:
            self._timer_stale = False
            self._arm_timer()
        writer = self._writer
        if storage.pending and writer is not None and writer.running is None:
            self._start_writes(storage)  # a checkpoint falls due when a write or timer ends
        self._release_durable(storage)

    def _start_writes(self, storage: DriverStorage) -> None:
        """Start what may start: the next append (seal the open batch and hand it to the
        writer), and the next checkpoint (to the checkpointer)."""
        writer, checkpointer = self._writer, self._checkpointer
        if writer is None or checkpointer is None:
            return
        if (
            writer.running is None
            and not self._rewinding
            and storage.pending
            and not storage.log_full
            and not storage.backlogged
        ):
            try:
                batch = storage.seal()
            except Exception as exc:
                self._crash(f"sealing the batch failed: {type(exc).__name__}: {exc}", exc)
                return
            if batch is not None:
                writer.submit(batch)
        if checkpointer.running is None:
            try:
                due = storage.checkpoint_due(
                    force=self._checkpoint_wanted, writer_idle=writer.running is None
                )
            except Exception as exc:
                self._crash(f"sealing a checkpoint failed: {type(exc).__name__}: {exc}", exc)
                return
            if due is not None:
                self._checkpoint_wanted = False
                self._rewinding = due.rewind
                checkpointer.submit(due)

    def _checkpoint_due(self) -> None:
        """``checkpoint_interval_ms`` after a batch went to the log: the next checkpoint
        takes whatever the log holds (now, if the checkpointer is idle)."""
        self._checkpoint_timer = None
        storage = self._storage
        if self.state is not RunnerState.RUNNING or storage is None:
            return
        self._checkpoint_wanted = True
        self._start_writes(storage)

    def _write_done(
        self, fut: asyncio.Future[None], outcome: WriteOutcome | None, error: BaseException | None
    ) -> None:
        """On the loop, from the writer thread: the commit of ``fut`` finished (``outcome``),
        or ``storage.write`` raised ``error``."""
        storage = self._storage
        if not self._completed(self._writer, fut, outcome, error) or storage is None:
            return
        assert outcome is not None
        self.stats.commits += 1
        if not outcome.batch.checkpoint and self._checkpoint_timer is None:
            loop = self._loop
            if loop is not None:
                self._checkpoint_timer = loop.call_later(
                    self.config.checkpoint_interval_ms / 1000, self._checkpoint_due
                )
        self._start_writes(storage)
        self._release_durable(storage)

    def _checkpoint_done(
        self, fut: asyncio.Future[None], outcome: WriteOutcome | None, error: BaseException | None
    ) -> None:
        """On the loop, from the checkpointer: the checkpoint of ``fut`` finished
        (``outcome``), or ``storage.checkpoint`` raised ``error``."""
        storage = self._storage
        if not self._completed(self._checkpointer, fut, outcome, error) or storage is None:
            return
        self._rewinding = False
        self.stats.checkpoints += 1
        if not storage.held and self._checkpoint_timer is not None:
            self._checkpoint_timer.cancel()  # LMDB holds everything
            self._checkpoint_timer = None
        self._start_writes(storage)

    def _completed(
        self,
        thread: _WriterThread | None,
        fut: asyncio.Future[None],
        outcome: WriteOutcome | None,
        error: BaseException | None,
    ) -> bool:
        """Hand a thread's ``outcome`` to the storage (``written``); True if the batch is
        now durable. False if the runner stopped meanwhile, crashed now because the thread
        failed, or the batch went back to the thread after a full map (grown by
        ``written``: the same batch again)."""
        if thread is None or not thread.take(fut):
            return False  # the runner stopped meanwhile
        storage = self._storage
        if self.state is not RunnerState.RUNNING or storage is None:
            return False
        try:
            if error is not None:
                raise error
            assert outcome is not None
            storage.written(outcome)
        except (StorageError, StorageCorruption) as exc:
            self._crash(f"commit failed: {type(exc).__name__}: {exc}", exc)
            return False
        except Exception as exc:
            self._crash(f"commit raised {type(exc).__name__}: {exc}", exc)
            return False
        if not outcome.committed:
            self.stats.map_full_rewrites += 1
            thread.submit(outcome.batch)
            return False
        return True

    def _release_durable(self, storage: DriverStorage) -> None:
        """Release held output whose batch is durable (in step order), then write it out."""
        outbox = self._outbox
        durable = storage.durable_seq
        if self._damaged_boot_seq is not None and durable >= self._damaged_boot_seq:
            self._damaged_boot_seq = None
            clear_damaged(self.data_dir)
        while outbox and outbox[0][0] <= durable:
            _, sends, replies = outbox.popleft()
            self._release(sends, replies)
        conns, self._dirty_conns = self._dirty_conns, []
        for conn in conns:
            conn.flush()
        links, self._dirty_links = self._dirty_links, {}
        for link in links.values():
            link.flush()

    async def _finish_writes(self) -> None:
        """For a graceful stop: wait for the running commit and checkpoint, commit the rest
        on this thread, release everything."""
        for _ in range(STOP_WRITE_WAITS_MAX):
            running = self._running()
            if not running:
                break
            await asyncio.wait(running)
            await asyncio.sleep(0)  # let the done callbacks run (they may start the next)
        storage = self._storage
        if self.state is not RunnerState.RUNNING or storage is None:
            return
        if self._running():
            self._crash("the last commits did not finish while stopping", None)
            return
        try:
            if storage.commit():
                self.stats.commits += 1
        except (StorageError, StorageCorruption) as exc:
            self._crash(f"commit failed: {type(exc).__name__}: {exc}", exc)
            return
        except Exception as exc:
            self._crash(f"commit raised {type(exc).__name__}: {exc}", exc)
            return
        self._release_durable(storage)

    def _running(self) -> list[asyncio.Future[None]]:
        """The futures of the batches the writer and the checkpointer are committing."""
        threads = (self._writer, self._checkpointer)
        return [t.running for t in threads if t is not None and t.running is not None]

    def _release(self, sends: tuple[Send, ...], replies: tuple[Reply, ...]) -> None:
        """Hand durable output to the connections (written at the end of the turn)."""
        frame_bytes_max = self.config.frame_bytes_max
        last_msg: object = None
        last_frame = b""
        for send in sends:
            dst = send.dst
            if dst == self.node_id:
                self._loop_back(send.msg)
                continue
            link = self._links.get(dst) or self._new_link(dst)
            if link is None:
                self.stats.sends_unroutable += 1
                log.warning("node %s: no address for peer %r; message dropped", self.node_id, dst)
                continue
            msg = send.msg
            if msg is not last_msg:  # a broadcast encodes its message once
                try:
                    last_frame = encode_frame(msg, frame_bytes_max=frame_bytes_max)
                except codec.CodecError as exc:
                    self.stats.encode_failures += 1
                    log.error(
                        "node %s: cannot encode %s for %s: %s",
                        self.node_id,
                        type(msg).__name__,
                        dst,
                        exc,
                    )
                    continue
                last_msg = msg
            link.enqueue(last_frame)
            self.stats.sends += 1
            self._dirty_links[dst] = link
        for reply in replies:
            target = self._calls.pop(reply.call_id, None)
            if target is None:
                continue  # the client connection is gone (or the id is unknown)
            conn, req_id = target
            conn.open_calls.discard(reply.call_id)
            try:
                body = codec.encode(reply.response, frame_bytes_max=frame_bytes_max)
                data = encode_frame(
                    CallReply(req_id=req_id, response=body), frame_bytes_max=frame_bytes_max
                )
            except codec.CodecError as exc:
                self.stats.encode_failures += 1
                log.error(
                    "node %s: cannot encode the response %s: %s",
                    self.node_id,
                    type(reply.response).__name__,
                    exc,
                )
                conn.calls_changed()
                continue
            self.stats.replies += 1
            if conn.queue(data):
                self._dirty_conns.append(conn)
            conn.calls_changed()

    def _new_link(self, peer: NodeId) -> PeerLink | None:
        address = self._peers.get(peer)
        if address is None:
            return None
        link = PeerLink(
            local=self.node_id,
            cluster=self.cluster,
            cluster_id=self.cluster_id,
            peer=peer,
            address=address,
            config=self.config,
            rng=random.Random(self._link_rng.getrandbits(64)),
        )
        self._links[peer] = link
        return link

    def _loop_back(self, msg: object) -> None:
        loop = self._loop
        if loop is not None:
            self.stats.sends += 1
            loop.call_soon(self._step_if_running, Received(src=self.node_id, msg=msg))

    def _step_if_running(self, inp: Input) -> None:
        if self.state is RunnerState.RUNNING:
            self._step(inp)

    # -- the timer ----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        node = self._node
        loop = self._loop
        if node is None or loop is None:
            return
        deadline = self._deadline = node.next_deadline()
        if self._timer is not None:
            armed = self._armed_deadline
            if deadline is None or (armed is not None and armed <= deadline):
                return  # the armed timer fires first; _fire re-arms it (or not) then
            self._timer.cancel()
            self._timer = None
        self._set_timer(loop, deadline)

    def _set_timer(self, loop: asyncio.AbstractEventLoop, deadline: int | None) -> None:
        self._armed_deadline = deadline
        if deadline is None:
            return
        # Arm in the loop's clock: the deadline is reached once monotonic_ns >= deadline ms.
        delay_s = max(0, deadline * 1_000_000 - mono_ns()) / 1e9
        self._timer = loop.call_at(loop.time() + delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        armed = self._armed_deadline
        self._armed_deadline = None
        if self.state is not RunnerState.RUNNING:
            return
        node = self._node
        if self._timer_stale and node is not None:
            self._deadline = node.next_deadline()  # a step ran this turn: read it afresh
        deadline = self._deadline
        if deadline is None:
            return  # the node wants no Wake any more
        loop = self._loop
        if armed is not None and deadline > armed and loop is not None:
            self._set_timer(loop, deadline)  # the deadline moved later meanwhile
            return
        self._step(Wake())

    # -- InboundHost --------------------------------------------------------------------------

    def connection_opened(self, conn: InboundConnection) -> bool:
        """Admit a new connection to the unclassified budget. A full budget (overall, or of
        the connection's address) evicts the oldest unclassified connection (of that address)
        rather than refusing the newest: peers and clients send their first frame at once,
        so a flood of silent connections cannot keep them out; the flood only churns."""
        if self.state is not RunnerState.RUNNING:
            self.stats.connections_refused += 1
            return False
        config = self.config
        same_address = self._unclassified_by_address.get(conn.address)
        if same_address is not None and len(same_address) >= config.connections_per_address_max:
            self._evict(
                next(iter(same_address)),
                f"{len(same_address)} unclassified connections from {conn.address} "
                f"(NetConfig.connections_per_address_max={config.connections_per_address_max})",
            )
        if len(self._unclassified) >= config.unclassified_connections_max:
            self._evict(
                next(iter(self._unclassified)),
                f"{len(self._unclassified)} unclassified connections "
                f"(NetConfig.unclassified_connections_max={config.unclassified_connections_max})",
            )
        self._conns[conn] = None
        self._unclassified[conn] = None
        self._unclassified_by_address.setdefault(conn.address, {})[conn] = None
        return True

    def accept_hello(self, conn: InboundConnection, hello: Hello) -> str | None:
        if self.config.tls is not None and conn.identity != node_identity(hello.node):
            # Only the holder of a node's certificate speaks for that node.
            return (
                f"the connection's certificate says {conn.identity or 'nothing'}, "
                f"not {node_identity(hello.node)}"
            )
        if (hello.cluster, hello.cluster_id) != (self.cluster, self.cluster_id):
            return (
                f"{describe_cluster(hello.cluster, hello.cluster_id)} is not this node's "
                f"{describe_cluster(self.cluster, self.cluster_id)}"
            )
        if hello.node not in self._peers:
            return f"node {hello.node!r} is not a known peer"
        if hello.node == self.node_id:
            # Only this node speaks for itself (its own Paxos votes come back in-process).
            return f"node {hello.node!r} is this node's own name"
        # The peers' budget: per known peer, never shared with clients. The newest connection
        # of a peer is its live one; the oldest is one it gave up (its end may be long gone).
        self._forget(conn)
        same_peer = self._peer_conns.setdefault(hello.node, {})
        while len(same_peer) >= self.config.peer_connections_per_node:
            victim = next(iter(same_peer))
            self._evict(
                victim,
                f"peer {hello.node!r} connected again "
                f"(NetConfig.peer_connections_per_node={self.config.peer_connections_per_node})",
            )
        same_peer[conn] = None
        link = self._links.get(hello.node)
        if link is not None:
            link.peer_alive()
        return None

    def accept_login(self, conn: InboundConnection, login: Login) -> str | None:
        if self.config.tls is None:
            return "TLS is off: a token would travel in clear, and is not needed"
        if conn.identity is not None:
            return f"already authenticated as {conn.identity}"
        identity = self._access.principal_of_token(login.token)
        if identity is None:
            return "unknown token"
        conn.identity = identity
        return None

    def accept_client(self, conn: InboundConnection, hello: ClientHello) -> Welcome:
        refusal = self._client_refusal(conn, hello)
        if refusal is not None:
            self.stats.connections_refused += 1
            return Welcome(
                node=self.node_id, cluster=self.cluster, cluster_id=self.cluster_id, error=refusal
            )
        self._admit_client(conn)
        metadata = "" if hello.fingerprint == self._fingerprint else self._metadata
        return Welcome(
            node=self.node_id, cluster=self.cluster, cluster_id=self.cluster_id, metadata=metadata
        )

    def _client_refusal(self, conn: InboundConnection, hello: ClientHello) -> str | None:
        """Why the client of ``conn`` is refused (checked before any call of it is read)."""
        config = self.config
        if (hello.cluster, hello.cluster_id) != (self.cluster, self.cluster_id):
            return (
                f"node {self.node_id} belongs to "
                f"{describe_cluster(self.cluster, self.cluster_id)}, not to the client's "
                f"{describe_cluster(hello.cluster, hello.cluster_id)} (is the client's "
                f"cluster file the one of this cluster?)"
            )
        if hello.node and hello.node != self.node_id:
            return f"this is node {self.node_id}, not {hello.node} (check the addresses)"
        if config.tls is not None and conn.identity is None:
            return "no client certificate and no Login: not authenticated"
        address = conn.address
        if self._clients_by_address.get(address, 0) >= config.connections_per_address_max:
            return (
                f"{config.connections_per_address_max} client connections from {address} "
                f"already (NetConfig.connections_per_address_max)"
            )
        return None

    def _admit_client(self, conn: InboundConnection) -> None:
        config = self.config
        address = conn.address
        self._forget(conn)
        if len(self._clients) >= config.client_connections_max:
            # The least recently active client makes room: a flood of connections that sent
            # one call and went silent cannot keep a new client out.
            victim = min(self._clients, key=lambda c: c.activity_at)
            self._evict(
                victim,
                f"{len(self._clients)} client connections, this one the least recently active "
                f"(NetConfig.client_connections_max={config.client_connections_max})",
            )
        self._clients[conn] = None
        self._clients_by_address[address] = self._clients_by_address.get(address, 0) + 1

    def _evict(self, conn: InboundConnection, reason: str) -> None:
        self.stats.connections_evicted += 1
        self._forget(conn)
        conn.close(f"evicted: {reason}", level=logging.INFO)

    def _forget(self, conn: InboundConnection) -> None:
        """Take ``conn`` out of its budget (idempotent)."""
        address = conn.address
        if self._unclassified.pop(conn, False) is None:
            same_address = self._unclassified_by_address[address]
            del same_address[conn]
            if not same_address:
                del self._unclassified_by_address[address]
        elif self._clients.pop(conn, False) is None:
            left = self._clients_by_address[address] - 1
            if left:
                self._clients_by_address[address] = left
            else:
                del self._clients_by_address[address]
        elif conn.peer is not None:
            same_peer = self._peer_conns.get(conn.peer)
            if same_peer is not None:
                same_peer.pop(conn, None)

    def peer_message(self, src: NodeId, msg: object) -> None:
        self._step(Received(src=src, msg=msg))

    def client_call(self, conn: InboundConnection, req_id: int, request: object) -> None:
        call_id = self._next_call_id
        self._next_call_id += 1
        self._calls[call_id] = (conn, req_id)
        conn.open_calls.add(call_id)
        self.stats.calls += 1
        kind = type(request)
        self.requests[kind] = self.requests.get(kind, 0) + 1
        refusal = self._access.refusal(conn.identity, request)
        if refusal is not None:
            # Refused before the node sees it: a definite error naming the permission, which
            # depends on nothing undurable (released at once).
            self.stats.calls_refused += 1
            log.info(
                "node %s: %s from %s refused: %s",
                self.node_id,
                type(request).__name__,
                conn.label,
                refusal.message,
            )
            self._release(
                (), (Reply(call_id=call_id, response=refusal_response(request, refusal)),)
            )
            self._schedule_turn_end()
            return
        self._watch_space()
        self._step(ClientCall(call_id=call_id, request=request))
        conn.calls_changed()

    # -- storage watch ------------------------------------------------------------------------

    def _room_at_start(self, storage: DriverStorage) -> None:
        """Before Boot: if the storage is already short (over its limit: less room than the
        reserve), let its map grow by the reserve past ``map_size_max_bytes`` for this
        incarnation, so that the node starts read-only instead of stopping at its first
        write (see the module docstring)."""
        space = self._measure_space(storage, monotonic_ms())
        if space is None:
            return
        reserve = self.config.reserve_for(space.capacity_bytes)
        if space.available_bytes >= reserve:
            return
        try:
            ceiling = storage.allow_room(reserve)
        except (StorageError, StorageCorruption) as exc:
            self._crash(f"measuring the storage failed: {type(exc).__name__}: {exc}", exc)
            return
        if space.limit == "map":
            room = f"its LMDB map may grow to {ceiling / _MIB:.1f} MiB for them"
        else:
            room = "the filesystem is the limit: free disk space if its writes fail"
        log_event(
            storage_log,
            logging.WARNING,
            "node %s storage is over its limit at start: %s, below the reserve of %.1f MiB; "
            "it starts read-only (enqueues are refused storage_full; reads, cursor commits "
            "and retention go on) and %s, until retention has freed space",
            self.node_id,
            space.describe(),
            reserve / _MIB,
            room,
            node=self.node_id,
            short=True,
            available_bytes=space.available_bytes,
            reserve_bytes=reserve,
            used_bytes=space.used_bytes,
            limit=space.limit,
        )

    def _watch_space(self) -> None:
        """Measure the space if due and step the node with ``StorageLow`` on a crossing of
        the reserve (see the module docstring)."""
        storage = self._storage
        if storage is None or self.state is not RunnerState.RUNNING:
            return
        now = monotonic_ms()
        space = self._space
        if space is None or now - self._space_at_ms >= self.config.storage_space_refresh_ms:
            space = self._measure_space(storage, now)
            if space is None:
                return
        charged = (storage.committed_bytes - self._space_committed_bytes) * (
            COMMITTED_BYTES_CHARGE_FACTOR
        )
        available = max(0, space.available_bytes - charged)
        reserve = self.config.reserve_for(space.capacity_bytes)
        if not self._storage_short and available < reserve and charged > 0:
            # The estimate says the reserve is reached: only a measurement may say so (the
            # estimate is pessimistic, and reporting on it alone would flap).
            space = self._measure_space(storage, now)
            if space is None:
                return
            available = space.available_bytes
            reserve = self.config.reserve_for(space.capacity_bytes)
        if self._storage_short:
            resume = reserve + reserve * self.config.storage_resume_margin_percent // 100
            if available < resume:
                return
            self._storage_short = False
            log_event(
                storage_log,
                logging.INFO,
                "node %s storage back above its reserve: %.1f MiB available (reserve %.1f "
                "MiB; %.1f MiB in use); the node accepts enqueues again",
                self.node_id,
                available / _MIB,
                reserve / _MIB,
                space.used_bytes / _MIB,
                node=self.node_id,
                short=False,
                available_bytes=available,
                reserve_bytes=reserve,
                used_bytes=space.used_bytes,
            )
        elif available >= reserve:
            return
        else:
            self._storage_short = True
            log_event(
                storage_log,
                logging.WARNING,
                "node %s storage low: %s, below the reserve of %.1f MiB "
                "(NetConfig.storage_reserve_bytes); the node refuses enqueues (storage_full) "
                "until consumers and retention free space",
                self.node_id,
                space.describe(),
                reserve / _MIB,
                node=self.node_id,
                short=True,
                available_bytes=available,
                reserve_bytes=reserve,
                used_bytes=space.used_bytes,
                limit=space.limit,
            )
        self.stats.storage_crossings += 1
        self._step(
            StorageLow(
                short=self._storage_short,
                available_bytes=available,
                reserve_bytes=reserve,
                used_bytes=space.used_bytes,
                limit=_limit_name(space),
            )
        )

    def _measure_space(self, storage: DriverStorage, now_ms: int) -> StorageSpace | None:
        """A new measurement of the storage space (None: it failed and the node stopped)."""
        try:
            space = storage.space()
        except (StorageError, StorageCorruption) as exc:
            self._crash(f"measuring the storage failed: {type(exc).__name__}: {exc}", exc)
            return None
        self.stats.space_measurements += 1
        self._space = space
        self._space_at_ms = now_ms
        self._space_committed_bytes = storage.committed_bytes
        return space

    def connection_closed(self, conn: InboundConnection) -> None:
        self._conns.pop(conn, None)
        self._forget(conn)
        calls = self._calls
        for call_id in conn.open_calls:
            calls.pop(call_id, None)
        conn.open_calls.clear()


def _limit_name(space: StorageSpace) -> str:
    if space.limit == "map":
        return f"LMDB map limit (NetConfig.map_size_max_bytes={space.map_max_bytes})"
    return f"disk limit ({(space.fs_free_bytes or 0) / _MIB:.1f} MiB free on the filesystem)"
