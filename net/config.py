"""The limits of the production driver, named in one place (DESIGN section 7).

``NetConfig`` holds every bound the ``net`` package enforces: frame sizes, queue lengths,
connection budgets, timeouts, backoff, LMDB map sizes and the storage headroom below which a
node refuses enqueues (``storage_reserve_bytes``; see ``net.node.runner``). The storage fields
and the connection budgets and timeouts can be set from the cluster file's ``[storage]`` and
``[connections]`` tables (``NetConfig.for_cluster``), which also loads the process's TLS
contexts (``net.tls``) when the cluster file has ``[tls]`` on. Identity (cluster id, node
name, addresses, data dir) is not a limit and is passed to the runner separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from net.tls import TlsContexts, client_contexts, node_contexts
from pxq import codec
from pxq.config.model import (
    KIB,
    MIB,
    STORAGE_CHECKPOINT_BATCHES_DEFAULT,
    STORAGE_CHECKPOINT_BYTES_DEFAULT,
    STORAGE_MAP_BYTES_DEFAULT,
    STORAGE_MAP_BYTES_MAX_DEFAULT,
    STORAGE_RESERVE_AUTO_CAP_PERCENT,
    STORAGE_RESERVE_AUTO_MIN_BYTES,
    STORAGE_RESERVE_AUTO_PERCENT,
    STORAGE_RESERVE_MIN_BYTES,
    ClusterConfig,
    ConnectionsConfig,
)

# The units stay importable from here (the storage defaults above are the core's, by name).
__all__ = ["KIB", "MIB", "NetConfig"]

_CONNECTIONS = ConnectionsConfig()  # the defaults of the cluster file's [connections]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    """Bounds of the transport, the storage and the client of one process."""

    # -- framing ----------------------------------------------------------------------------
    frame_bytes_max: int = 16 * MIB
    """Largest frame payload (after the 4-byte length) sent or accepted; a peer announcing a
    longer frame is disconnected before anything is buffered for it."""

    # -- inbound connections ----------------------------------------------------------------
    # Every inbound connection is unclassified until its first frame, then a peer (an
    # accepted Hello) or a client (a Call), and each kind has its own budget, so that no
    # flood of one kind can lock the other out (``net.node.runner``, docs/operations.md).
    unclassified_connections_max: int = _CONNECTIONS.unclassified_max
    """Connections open at once that have not sent their first frame yet. When the budget is
    full, a new connection evicts the oldest unclassified one (closed with a logged reason):
    a flood of silent connections cannot hold the door against a peer or a client, which
    send their first frame at once."""
    client_connections_max: int = _CONNECTIONS.clients_max
    """Client connections (first frame a Call) open at once. When the budget is full, a new
    client evicts the least recently active client connection (its last complete frame in
    or reply out is the oldest)."""
    peer_connections_per_node: int = _CONNECTIONS.per_peer_max
    """Inbound connections of one known peer (its Hello accepted) open at once; a further
    Hello from that peer evicts its oldest connection (a stale one the peer gave up). The
    peers' budget is separate from the clients': clients never use a peer's slot."""
    connections_per_address_max: int = _CONNECTIONS.per_address_max
    """Client connections, and separately unclassified connections, from one IP address.
    A Call from an address at the limit closes its connection (logged, nothing stepped); a
    new connection from an address with as many unclassified ones evicts its oldest one.
    Peers are exempt once their Hello is accepted."""
    first_frame_timeout_ms: int = _CONNECTIONS.first_frame_timeout_ms
    """An inbound connection that has not sent a complete Hello or Call by then is closed
    (bounds the cost of idle or trickling connections)."""
    client_idle_timeout_ms: int = _CONNECTIONS.client_idle_timeout_ms
    """A client connection with no open call that has sent no complete frame and received no
    reply for this long is closed (logged). Peers are exempt: they heartbeat."""
    partial_frame_timeout_ms: int = _CONNECTIONS.partial_frame_timeout_ms
    """A client connection that started a frame and has not completed it within this long is
    closed (logged): a slow trickle cannot hold a connection and its buffer forever."""
    conn_calls_open_max: int = 4096
    """Unanswered calls per client connection before the node stops reading from it (the
    frames already read are still handled, so this is a soft bound by one read's worth)."""
    write_buffer_high_bytes: int = 4 * MIB
    """Transport write buffer above which writing pauses (asyncio backpressure)."""
    write_buffer_low_bytes: int = 1 * MIB
    """Transport write buffer below which writing resumes."""

    # -- outbound peer links ----------------------------------------------------------------
    peer_queue_max: int = 8192
    """Frames queued for one peer while it is unreachable or slow; the oldest is dropped
    beyond this (Paxos tolerates loss) and counted."""
    peer_queue_bytes_max: int = 64 * MIB
    """The same bound in bytes."""
    peer_connect_timeout_ms: int = 2_000
    """One TCP connect attempt to a peer."""
    peer_backoff_initial_ms: int = 20
    """First reconnect delay after a failed or lost peer connection (before jitter)."""
    peer_backoff_max_ms: int = 2_000
    """Cap of the doubling reconnect delay; a connection that lived this long resets it."""

    # -- storage ----------------------------------------------------------------------------
    map_size_bytes: int = STORAGE_MAP_BYTES_DEFAULT
    """Initial LMDB map size (virtual address space; the file grows as data is written)."""
    map_size_max_bytes: int = STORAGE_MAP_BYTES_MAX_DEFAULT
    """The map doubles when full, up to this. Enqueues are refused (``storage_full``) before
    the map gets there (``storage_reserve_bytes``); a commit that still finds the map full at
    this size stops the node with StorageFull, nothing partial written (last resort)."""
    storage_reserve_bytes: int | None = None
    """Headroom kept for everything but enqueues: once the space still available to the
    node's LMDB (the smaller of the map's room below ``map_size_max_bytes`` and the disk's
    room: free filesystem space plus free pages inside the data file) falls below this, the
    runner tells the node (``pxq.effects.StorageLow``) and a store replica answers enqueues
    with ``StoreError(code="storage_full")``, letting everything else (Paxos traffic, gets,
    cursor commits, retention) through. None: automatic, see ``reserve_for``. Else at least
    ``STORAGE_RESERVE_MIN_BYTES`` (2 MiB; 0, no reserve, is refused: a full map then stopped
    every replica at each restart) and below ``map_size_max_bytes``. A replica that starts
    with less room than this is read-only from its boot, and its map may grow past
    ``map_size_max_bytes`` by the reserve for that (``net.node.runner``)."""
    storage_space_refresh_ms: int = 100
    """The runner measures the space in use at most this often (at a client call's arrival);
    in between it charges every committed batch against the last measurement."""
    storage_resume_margin_percent: int = 10
    """The node is told its storage is no longer short (enqueues accepted again) once the
    space available is the reserve plus this share of it (hysteresis: no flapping at the
    boundary)."""
    checkpoint_batches: int = STORAGE_CHECKPOINT_BATCHES_DEFAULT
    """Batches made durable by the write-ahead log (one append and one fdatasync each) before
    a checkpoint commits them to LMDB in one transaction (``net.node.wal``); until then they
    are read from memory. 1: no log, every batch is an LMDB commit of its own (slower)."""
    checkpoint_bytes: int = STORAGE_CHECKPOINT_BYTES_DEFAULT
    """A checkpoint is also due once the batches not yet in LMDB hold this many key and value
    bytes (what they hold in memory, and what a restart replays, is bounded by it)."""
    checkpoint_interval_ms: int = 200
    """A checkpoint is also due this long after a batch became durable in the log, so that
    LMDB (and what ``space()`` measures in it: the space retention freed) lags the log by
    no more than that on a quiet node."""
    tables_max: int = 128
    """LMDB named databases (one per table name) per node."""
    scan_chunk_items: int = 256
    """Items a scan reads per cursor positioning; later chunks see writes applied since."""

    # -- client -----------------------------------------------------------------------------
    client_calls_inflight_max: int = 4096
    """Calls one client connection may have outstanding; more wait for a slot."""
    client_connect_timeout_ms: int = 5_000
    """One client TCP connect attempt (the TLS handshake included)."""

    # -- TLS --------------------------------------------------------------------------------
    tls: TlsContexts | None = None
    """The process's TLS contexts (``net.tls``); None: plain TCP, nothing authenticated. A
    node's TLS handshake must finish within ``first_frame_timeout_ms``."""

    def __post_init__(self) -> None:
        # Invariants are checked always, never with assert (DESIGN section 7).
        positive = {
            "frame_bytes_max": self.frame_bytes_max,
            "unclassified_connections_max": self.unclassified_connections_max,
            "client_connections_max": self.client_connections_max,
            "peer_connections_per_node": self.peer_connections_per_node,
            "connections_per_address_max": self.connections_per_address_max,
            "first_frame_timeout_ms": self.first_frame_timeout_ms,
            "client_idle_timeout_ms": self.client_idle_timeout_ms,
            "partial_frame_timeout_ms": self.partial_frame_timeout_ms,
            "conn_calls_open_max": self.conn_calls_open_max,
            "write_buffer_high_bytes": self.write_buffer_high_bytes,
            "peer_queue_max": self.peer_queue_max,
            "peer_queue_bytes_max": self.peer_queue_bytes_max,
            "peer_connect_timeout_ms": self.peer_connect_timeout_ms,
            "peer_backoff_initial_ms": self.peer_backoff_initial_ms,
            "peer_backoff_max_ms": self.peer_backoff_max_ms,
            "map_size_bytes": self.map_size_bytes,
            "map_size_max_bytes": self.map_size_max_bytes,
            "storage_space_refresh_ms": self.storage_space_refresh_ms,
            "tables_max": self.tables_max,
            "checkpoint_batches": self.checkpoint_batches,
            "checkpoint_bytes": self.checkpoint_bytes,
            "checkpoint_interval_ms": self.checkpoint_interval_ms,
            "scan_chunk_items": self.scan_chunk_items,
            "client_calls_inflight_max": self.client_calls_inflight_max,
            "client_connect_timeout_ms": self.client_connect_timeout_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"NetConfig.{name} must be positive, got {value}")
        if self.frame_bytes_max > codec.FRAME_BYTES_MAX:
            raise ValueError(
                f"NetConfig.frame_bytes_max {self.frame_bytes_max} exceeds the codec's "
                f"limit {codec.FRAME_BYTES_MAX}"
            )
        if self.frame_bytes_max >= 2**32:
            raise ValueError("NetConfig.frame_bytes_max must fit the 4-byte length prefix")
        if not 0 <= self.write_buffer_low_bytes <= self.write_buffer_high_bytes:
            raise ValueError("NetConfig needs 0 <= write_buffer_low_bytes <= high")
        if self.peer_backoff_initial_ms > self.peer_backoff_max_ms:
            raise ValueError("NetConfig needs peer_backoff_initial_ms <= peer_backoff_max_ms")
        if self.map_size_bytes > self.map_size_max_bytes:
            raise ValueError("NetConfig needs map_size_bytes <= map_size_max_bytes")
        reserve = self.storage_reserve_bytes
        if (
            reserve is not None
            and not STORAGE_RESERVE_MIN_BYTES <= reserve < self.map_size_max_bytes
        ):
            raise ValueError(
                f"NetConfig.storage_reserve_bytes must be in {STORAGE_RESERVE_MIN_BYTES} "
                f"(STORAGE_RESERVE_MIN_BYTES)..map_size_max_bytes-1 "
                f"({self.map_size_max_bytes - 1}), got {reserve}"
            )
        if not 0 <= self.storage_resume_margin_percent <= 100:
            raise ValueError(
                f"NetConfig.storage_resume_margin_percent must be in 0..100, "
                f"got {self.storage_resume_margin_percent}"
            )

    @classmethod
    def for_cluster(cls, config: ClusterConfig, *, node: str | None = None) -> NetConfig:
        """The defaults, with the cluster file's ``[storage]`` and ``[connections]`` tables
        applied, and with ``[tls]`` on the TLS contexts of ``node`` (its certificate), or of
        a client (``net.tls.client_contexts``: the identity of ``$PXQ_IDENTITY``, else the
        file's) when ``node`` is None. Raises ``TlsError`` for missing TLS material."""
        storage = config.storage
        conns = config.connections
        return cls(
            map_size_bytes=storage.map_size_bytes,
            map_size_max_bytes=storage.map_size_max_bytes,
            storage_reserve_bytes=storage.reserve_bytes,
            checkpoint_batches=storage.checkpoint_batches,
            checkpoint_bytes=storage.checkpoint_bytes,
            unclassified_connections_max=conns.unclassified_max,
            client_connections_max=conns.clients_max,
            peer_connections_per_node=conns.per_peer_max,
            connections_per_address_max=conns.per_address_max,
            first_frame_timeout_ms=conns.first_frame_timeout_ms,
            client_idle_timeout_ms=conns.client_idle_timeout_ms,
            partial_frame_timeout_ms=conns.partial_frame_timeout_ms,
            tls=client_contexts(config) if node is None else node_contexts(config, node),
        )

    def reserve_for(self, capacity_bytes: int) -> int:
        """The storage reserve of a node whose LMDB can hold ``capacity_bytes`` at most (pages
        in use plus the space still available to it): ``storage_reserve_bytes`` if set, else
        ``STORAGE_RESERVE_AUTO_PERCENT`` of the capacity, at least
        ``STORAGE_RESERVE_AUTO_MIN_BYTES``, at most ``STORAGE_RESERVE_AUTO_CAP_PERCENT`` of
        it, and never below ``STORAGE_RESERVE_MIN_BYTES`` (on a tiny capacity the node is then
        always short: it still serves everything but enqueues). The automatic reserve follows
        the capacity rather than ``map_size_max_bytes``: on a disk smaller than the map
        maximum, 5 % of the maximum could exceed the disk."""
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if self.storage_reserve_bytes is not None:
            return self.storage_reserve_bytes
        auto = max(
            STORAGE_RESERVE_AUTO_MIN_BYTES, capacity_bytes * STORAGE_RESERVE_AUTO_PERCENT // 100
        )
        capped = min(auto, capacity_bytes * STORAGE_RESERVE_AUTO_CAP_PERCENT // 100)
        return max(STORAGE_RESERVE_MIN_BYTES, capped)
