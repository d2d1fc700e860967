"""The cluster configuration's model: frozen dataclasses, their limits and defaults, and the
lookups every component derives from them (a topic by name, derived retry and dead-letter
topics included; the store of a queue; the consumer groups subscribed to a queue; every node
with its role and address; the deployment inventory: the hosts, the host of a node and the
nodes of a host).

The file format, its defaults and rules are described in ``pxq.config``; the parser
(``pxq.config.parser``) builds these objects from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Final, Literal

from pxq.lock.messages import LEASE_MS_MAX
from pxq.lock.node import CLEANUP_TICK_MS_DEFAULT
from pxq.lock.sm import KEYS_MAX_DEFAULT, VALUES_BYTES_MAX_DEFAULT
from pxq.lock.timing import (
    LEASE_MS_DEFAULT,
    MARGIN_MS_DEFAULT,
    POLL_MS_DEFAULT,
    RENEW_MS_DEFAULT,
    lease_timing_problem,
)
from pxq.paxos.config import PaxosConfig
from pxq.routing import StoreRing
from pxq.toml_reader import kind_of
from pxq.topics import HEALTH_GROUP as _HEALTH_GROUP
from pxq.topics import dead_letter_topic, retry_topic

KIB: Final = 1024
MIB: Final = 1024 * KIB

GIB: Final = 1024 * MIB

NAME_CHARS_MAX: Final = 64
"""Longest cluster, store, node, topic or consumer group name. Derived topic names embed a
topic and a group name and must fit the store's one-byte length prefix in keys."""

CLUSTER_ID_CHARS_MAX: Final = 64
"""Longest cluster id (``[cluster] id``; ``pxq.config.identity``)."""

ENQUEUE_HEADROOM_BYTES: Final = 64 * KIB
"""Room for the command framing around the items of one enqueue (producer id, topic, item
framing), added to ``item_bytes_max`` to size a store's largest Paxos value."""

PORT_MAX: Final = 65535
REPLICAS_PER_STORE_MAX: Final = 9
"""Replicas of one store, and of the lock service (an odd count from 1)."""
LOCK_GROUPS_MAX: Final = 1024
"""Paxos groups of the lock service."""
OWNERSHIP_WEIGHT_MAX: Final = 1000
"""Largest consumer weight (a consumer takes a share of queues proportional to it)."""
LOCKS_SERVICE: Final = "locks"
"""The service name of the lock service where Paxos groups are named ``service/group``; no
store may have it."""

HEALTH_GROUP: Final = _HEALTH_GROUP
"""The reserved consumer group of health checks (``pxq echo``): every base topic accepts it
(``TopicConfig.group``, ``TopicInfo.group``: the store serves its reads, commits and seeks) but
it is no user group: it is not in ``consumer_groups`` or ``subscribers``, so it never holds
back retention, has no retry levels or dead letters, and a cluster file may not declare it."""

Role = Literal["store", "lock"]


# --------------------------------------------------------------------------------------------
# The dataclasses


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Hard limits of the store (DESIGN: limits are configuration, not constants)."""

    consumer_groups_max: int = 1024
    """Consumer groups per topic (PhxQueue: 64)."""
    queues_max: int = 65536
    """Queues per topic (PhxQueue: 2000 per store)."""
    item_bytes_max: int = 1 * MIB
    """Key + payload + kind bytes of one item."""
    enqueue_items_max: int = 1000
    """Items per Enqueue call."""
    get_items_max: int = 10_000
    """Items per Get; a request asking for more is clamped."""
    get_bytes_max: int = 16 * MIB
    """Key + payload bytes per Get (the first item is always returned); requests are clamped."""
    get_scan_items_max: int = 100_000
    """Items one Get may examine, including those skipped by the group's kind filter."""
    dedupe_window: int = 1024
    """Sequence numbers remembered per producer: a seq this far below the highest seen is
    answered ``stale_sequence``."""
    producers_max: int = 10_000
    """Producers remembered per Paxos group; the least recently used is forgotten beyond it."""
    retry_levels_max: int = 16
    """Retry levels per consumer group."""


STORAGE_MAP_BYTES_DEFAULT: Final = 1 * GIB
"""Initial LMDB map size of every node (``[storage] map_size_bytes``)."""
STORAGE_MAP_BYTES_MAX_DEFAULT: Final = 256 * GIB
"""The map doubles when full, up to this (``[storage] map_size_max_bytes``)."""
STORAGE_CHECKPOINT_BATCHES_DEFAULT: Final = 16
"""Batches a node's write-ahead log holds before a checkpoint moves them into LMDB
(``[storage] checkpoint_batches``; 1: no log)."""
STORAGE_CHECKPOINT_BATCHES_MAX: Final = 1024
STORAGE_CHECKPOINT_BYTES_DEFAULT: Final = 8 * MIB
"""Or once they hold this many bytes (``[storage] checkpoint_bytes``)."""
STORAGE_MAP_BYTES_MIN: Final = 1 * MIB
"""Smallest map ``[storage]`` accepts (LMDB needs a few pages per table)."""
STORAGE_RESERVE_MIN_BYTES: Final = 2 * MIB
"""The smallest storage reserve (``[storage] reserve_bytes``, ``NetConfig.storage_reserve_bytes``,
and the floor of the automatic one); 0, which used to turn the watch off, is refused.

Why 2 MiB: once a replica's room is below its reserve it refuses enqueues and writes only what
frees space or keeps the store alive, and all of it must fit in the reserve. That is the
enqueue batch already accepted when the crossing is seen (one Paxos value, about 1 MiB with
the default limits), then cursor commits, retention ticks and Paxos bookkeeping: records of
a few hundred bytes, which still cost LMDB pages (copy-on-write of each B-tree path they
touch; a retention tick also records the numbers of the pages it frees, 8 bytes per 4 KiB
page, before they can be reused): a few KiB per commit, far less than what retention frees.
A larger enqueue pipeline (many values accepted at once) needs more: the automatic reserve,
at least 64 MiB, covers the default ``pending_bytes_max``. A reserve of 0 had none of this:
the map filled up to its maximum and every replica stopped at its next write, again after
each restart, so nothing could be consumed to free space (issue 13)."""
STORAGE_RESERVE_AUTO_MIN_BYTES: Final = 64 * MIB
"""The automatic storage reserve (``[storage] reserve_bytes`` absent) is at least this..."""
STORAGE_RESERVE_AUTO_PERCENT: Final = 5
"""... and at least this share of the node's storage capacity
(``net.config.NetConfig.reserve_for``)..."""
STORAGE_RESERVE_AUTO_CAP_PERCENT: Final = 50
"""... but never more than this share of the capacity (so that a tiny map stays usable), nor
less than ``STORAGE_RESERVE_MIN_BYTES``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """Every node's LMDB sizing and the headroom kept for everything but enqueues (the
    ``[storage]`` table; the production driver's ``NetConfig`` takes it over)."""

    map_size_bytes: int = STORAGE_MAP_BYTES_DEFAULT
    map_size_max_bytes: int = STORAGE_MAP_BYTES_MAX_DEFAULT
    reserve_bytes: int | None = None
    """None: automatic (``net.config.NetConfig.reserve_for``); else at least
    ``STORAGE_RESERVE_MIN_BYTES`` and below ``map_size_max_bytes``."""
    checkpoint_batches: int = STORAGE_CHECKPOINT_BATCHES_DEFAULT
    checkpoint_bytes: int = STORAGE_CHECKPOINT_BYTES_DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionsConfig:
    """Every node's inbound connection budgets and client timeouts (the ``[connections]``
    table; the production driver's ``NetConfig`` takes it over, where each field is
    documented: ``unclassified_max`` is ``NetConfig.unclassified_connections_max``,
    ``clients_max`` ``client_connections_max``, ``per_peer_max``
    ``peer_connections_per_node``, ``per_address_max`` ``connections_per_address_max``)."""

    unclassified_max: int = 1024
    clients_max: int = 1024
    per_peer_max: int = 2
    per_address_max: int = 128
    first_frame_timeout_ms: int = 5_000
    client_idle_timeout_ms: int = 300_000
    partial_frame_timeout_ms: int = 30_000


TLS_DIR_DEFAULT: Final = "tls"
"""Where a ``[tls]`` table without ``dir`` keeps the cluster's CA and certificates (relative
to the cluster file's directory)."""
TLS_IDENTITY_DEFAULT: Final = "admin"
"""The client principal a client command uses unless told otherwise: the cluster's own
administrator, who may do everything."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """The ``[tls]`` table: whether every connection (replica links and clients) is TLS with
    certificates of the cluster's CA, where the CA and the certificates are, and which client
    identity client commands use by default (``net.tls``, docs/security.md). A cluster
    file without ``[tls]`` has TLS off (``enabled`` False): then nothing is authenticated and
    every request is allowed."""

    enabled: bool = False
    dir: str = TLS_DIR_DEFAULT
    """The directory of ``ca.pem``, ``node-<name>.pem``/``.key`` and
    ``client-<name>.pem``/``.key``; a relative path is relative to the cluster file's
    directory (``load_config`` resolves it)."""
    identity: str = TLS_IDENTITY_DEFAULT
    """The client principal of client commands without ``--identity`` (or ``PXQ_IDENTITY``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalConfig:
    """One ``[[principals]]`` entry: what a client principal (its certificate says
    ``client:<name>``) may do (``pxq.access``). Patterns are ``topic`` for ``produce`` and
    ``topic/group`` for the others, where ``*`` as a whole segment matches any name. The
    principal ``admin`` and the cluster's nodes may always do everything and are not listed."""

    name: str
    produce: tuple[str, ...] = ()
    consume: tuple[str, ...] = ()
    """Get, commit and retry (a failed item to its retry level) for these groups."""
    seek: tuple[str, ...] = ()
    redrive: tuple[str, ...] = ()
    """Read and commit the dead-letter topic of these groups."""
    locks: bool = False
    """Use the lock service (consumers take their queues through it)."""
    admin: bool = False
    """Everything."""
    token_sha256: tuple[str, ...] = ()
    """SHA-256 digests (64 lowercase hex digits) of the tokens that authenticate a client as
    this principal instead of a certificate (``pxq tls token NAME`` makes one); the tokens
    themselves are never in the file."""


INFLIGHT_BATCHES_MAX = 64
"""Largest ``[batching] inflight_batches`` accepted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    """Client-side batching of the producer: a queue's items go as one batch as soon as that
    queue has no batch in flight (what arrives meanwhile waits for the answer and goes next,
    or goes at once when it fills a batch, up to ``inflight_batches`` batches of the queue in
    flight); ``linger_ms`` > 0 makes every batch wait at least that long (bigger batches, more
    latency)."""

    linger_ms: int = 0
    items_max: int = 100
    bytes_max: int = 1 * MIB
    inflight_batches: int = 4


SSH_PORT_DEFAULT: Final = 22
HOST_BASE_DIR_DEFAULT: Final = "/opt/pxq"
HOST_PYTHON_DEFAULT: Final = "python3"
HOST_SSH_USER_DEFAULT: Final = "root"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """One ``[[hosts]]`` entry: a machine of a deployment, how to reach it over SSH and where
    pxq goes on it (``pxq deploy``). Replicas name the host that runs them (``ReplicaConfig
    .on``) and listen on its ``address``; ``zone`` is the failure domain the placement rule
    counts (docs/configuration.md, "Hosts and zones")."""

    name: str
    address: str
    """An IPv4 or IPv6 address or a DNS name: where SSH goes and where the host's replicas
    listen (and are reached by peers and clients)."""
    zone: str
    ssh_user: str = HOST_SSH_USER_DEFAULT
    ssh_port: int = SSH_PORT_DEFAULT
    ssh_key: str | None = None
    """The private key the deploying machine logs in with; None: asyncssh's defaults (the
    agent, ``~/.ssh/id_*``). ``load_config`` makes a relative path relative to the cluster
    file's directory and expands ``~``."""
    base_dir: str = HOST_BASE_DIR_DEFAULT
    """Absolute path on the host under which installs and data go."""
    python: str = HOST_PYTHON_DEFAULT
    """The Python interpreter on the host (a command name or an absolute path)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaConfig:
    node: str
    host: str = "127.0.0.1"
    """The address the node listens on and is reached at; with ``on``, its host's address."""
    port: int
    zone: str = "z0"
    """With ``on``, its host's zone."""
    metrics_port: int | None = None
    """Where the node serves its Prometheus metrics (on ``host``); None: ``port`` plus the
    ``[metrics]`` table's ``port_offset``."""
    on: str | None = None
    """The ``[[hosts]]`` entry that runs the node (the key ``on``); None in a file without
    hosts, and only there."""


METRICS_PORT_OFFSET_DEFAULT: Final = 1000
"""A node's metrics port is its port plus this, unless its replica entry says otherwise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """The ``[metrics]`` table: whether every node serves Prometheus metrics over plain HTTP
    (``net.metrics``; ``pxq node run --metrics`` turns it on for one node, and ``pxq cluster
    up`` for its nodes) and where: each replica's ``metrics_port``, else its port plus
    ``port_offset``, on the replica's host."""

    enabled: bool = False
    port_offset: int = METRICS_PORT_OFFSET_DEFAULT

    def port_of(self, replica: ReplicaConfig) -> int:
        """The metrics port of ``replica``."""
        if replica.metrics_port is not None:
            return replica.metrics_port
        return replica.port + self.port_offset


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    name: str
    groups: int
    replicas: tuple[ReplicaConfig, ...]
    retention_tick_ms: int = 1000
    """Interval between retention ticks proposed by the master of each group."""
    paxos_overrides: tuple[tuple[str, int], ...] = ()
    """The ``[stores.paxos]`` table as given (sorted by key)."""
    paxos: PaxosConfig
    """The replica set's Paxos configuration: replicas, groups, defaults and overrides."""
    allow_zone_majority: bool = False
    """Accept replicas that put a majority in one zone (``zone_majority``): losing that zone
    then loses the store. Only checked in a file with ``[[hosts]]``."""

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(r.node for r in self.replicas)


@dataclass(frozen=True, slots=True, kw_only=True)
class LockServiceConfig:
    """The ``[locks]`` table: the lock service's replica set and the ``LockNode`` settings.

    Every replica hosts every group (``groups`` Paxos groups; a key lives in group
    ``pxq.lock.node.group_of_key(key, groups)``)."""

    groups: int = 1
    """Paxos groups of the service."""
    replicas: tuple[ReplicaConfig, ...]
    """The lock nodes, in the order every replica agrees on (Paxos ballot tiebreak)."""
    keys_max: int = KEYS_MAX_DEFAULT
    """Keys one group holds; acquiring a new key beyond it is refused (``too_many_keys``)."""
    values_bytes_max: int = VALUES_BYTES_MAX_DEFAULT
    """Bytes of values (data attached to lock entries) one group holds in all; a grant or
    renewal beyond it is refused. At least ``pxq.lock.messages.VALUE_BYTES_MAX``."""
    cleanup_tick_ms: int = CLEANUP_TICK_MS_DEFAULT
    """How often each group's master checks whether a cleanup would free an expired lease."""
    paxos_overrides: tuple[tuple[str, int], ...] = ()
    """The ``[locks.paxos]`` table as given (sorted by key)."""
    paxos: PaxosConfig
    """The replica set's Paxos configuration: replicas, groups, defaults and overrides."""
    allow_zone_majority: bool = False
    """As ``StoreConfig.allow_zone_majority``, for the lock service."""

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(r.node for r in self.replicas)


def zone_majority(replicas: tuple[ReplicaConfig, ...]) -> tuple[str, tuple[str, ...]] | None:
    """The zone holding a majority of ``replicas`` and its replicas' names, or None. A replica
    set is safe from a zone loss exactly when no zone holds a majority (with an odd count, at
    most one zone can)."""
    by_zone: dict[str, list[str]] = {}
    for r in replicas:
        by_zone.setdefault(r.zone, []).append(r.node)
    for zone, nodes in by_zone.items():
        if len(nodes) > len(replicas) // 2:
            return zone, tuple(nodes)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipConfig:
    """The ``[ownership]`` table: how consumers hold (group, queue) pairs through the lock
    service. Invalid combinations raise ``ValueError`` naming the field (see the module
    docstring's ownership rule)."""

    lease_ms: int = LEASE_MS_DEFAULT
    """A consumer's lease on each queue it owns and on its membership key."""
    margin_ms: int = MARGIN_MS_DEFAULT
    """A holder considers its lease lost this long before it would expire: covers the clock
    skew between lock replicas and the drift between holder and service."""
    poll_ms: int = POLL_MS_DEFAULT
    """How often a consumer re-reads the membership and the assignment."""
    renew_ms: int = RENEW_MS_DEFAULT
    """How often a consumer renews its leases."""
    weight: int = 1
    """This consumer's default weight for consistent hashing (its share of the queues)."""
    scheduler: bool = False
    """Whether consumers follow a scheduler's published assignment instead of hashing."""

    def __post_init__(self) -> None:
        problem = ownership_problem(self)
        if problem is not None:
            key, reason = problem
            raise ValueError(f"{key}: {reason}")

    @property
    def trusted_ms(self) -> int:
        """How long after sending a grant or renewal a holder may still rely on it."""
        return self.lease_ms - self.margin_ms


def ownership_problem(o: OwnershipConfig) -> tuple[str, str] | None:
    """The first rule ``o`` breaks, as (field, reason); None if it is valid."""
    ints = ("lease_ms", "margin_ms", "poll_ms", "renew_ms", "weight")
    for name in ints:
        if type(getattr(o, name)) is not int:
            return name, f"expected an integer, got {kind_of(getattr(o, name))}"
    if type(o.scheduler) is not bool:
        return "scheduler", f"expected a boolean, got {kind_of(o.scheduler)}"
    if not 1 <= o.lease_ms <= LEASE_MS_MAX:
        return "lease_ms", f"must be 1..{LEASE_MS_MAX}, got {o.lease_ms}"
    timing = lease_timing_problem(o.lease_ms, o.margin_ms, o.renew_ms, o.poll_ms)
    if timing is not None:
        return timing
    if not 1 <= o.weight <= OWNERSHIP_WEIGHT_MAX:
        return "weight", f"must be 1..{OWNERSHIP_WEIGHT_MAX}, got {o.weight}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """One node of the cluster (a store replica or a lock replica) and where it listens."""

    node: str
    role: Role
    """``"store"``: a replica of a store (``StoreNode``); ``"lock"``: of the lock service."""
    service: str
    """The store's name, or ``LOCKS_SERVICE`` for a lock replica."""
    host: str
    port: int
    zone: str
    metrics_port: int = 0
    """Where the node serves its metrics when they are on (``MetricsConfig.port_of``)."""
    on: str | None = None
    """The name of the ``[[hosts]]`` entry that runs the node; None in a file without hosts."""

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    items_per_s: int
    burst: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryLevel:
    delay_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerGroupConfig:
    name: str
    queues: tuple[int, ...] | None = None
    """Subscribed queue numbers, sorted; None: all queues of the topic."""
    kinds: tuple[str, ...] | None = None
    """Subscribed item kinds, sorted; None: every kind."""
    rate: RateLimit | None = None
    retries: tuple[RetryLevel, ...] = ()
    dead_letter: bool = True
    _queue_set: frozenset[int] | None = field(default=None, repr=False, compare=False)
    _kind_set: frozenset[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Membership sets for the hot paths (only ever tested, never iterated for output).
        object.__setattr__(
            self, "_queue_set", None if self.queues is None else frozenset(self.queues)
        )
        object.__setattr__(self, "_kind_set", None if self.kinds is None else frozenset(self.kinds))

    def subscribes_queue(self, queue: int) -> bool:
        return self._queue_set is None or queue in self._queue_set

    def subscribes_kind(self, kind: str) -> bool:
        return self._kind_set is None or kind in self._kind_set

    @property
    def kind_set(self) -> frozenset[str] | None:
        return self._kind_set


HEALTH: Final = ConsumerGroupConfig(name=HEALTH_GROUP, dead_letter=False)
"""The reserved health group of every base topic: all queues and kinds, no retries, no dead
letters (an echo handler never fails)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    hold_items: int | None = None
    """Keep at least the newest ``hold_items`` items of each queue; None: no such hold."""
    hold_ms: int | None = None
    """Keep items younger than ``hold_ms`` (wall ms); None: no such hold."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicConfig:
    name: str
    queues: int
    retention: Retention = Retention()
    consumer_groups: tuple[ConsumerGroupConfig, ...] = ()

    def group(self, name: str) -> ConsumerGroupConfig | None:
        """The consumer group ``name`` of this topic (``HEALTH_GROUP`` included), or None."""
        for g in self.consumer_groups:
            if g.name == name:
                return g
        return HEALTH if name == HEALTH_GROUP else None


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicInfo:
    """A topic as the store sees it: a base topic, a retry level or a dead-letter topic.

    Derived topics have the queue count and retention of their base topic and exactly one
    subscriber, the owning consumer group (with every kind: its items were already filtered).
    """

    name: str
    base: TopicConfig
    level: int
    """0: the base topic; n >= 1: retry level n of ``owner``; -1: ``owner``'s dead letters."""
    owner: str | None
    """The consumer group a derived topic belongs to; None for a base topic."""
    subscribers: tuple[ConsumerGroupConfig, ...]

    @property
    def queues(self) -> int:
        return self.base.queues

    @property
    def retention(self) -> Retention:
        return self.base.retention

    def group(self, name: str) -> ConsumerGroupConfig | None:
        """The subscriber ``name``; on a base topic also ``HEALTH_GROUP``."""
        for g in self.subscribers:
            if g.name == name:
                return g
        return HEALTH if name == HEALTH_GROUP and self.level == 0 else None

    def subscribers_of(self, queue: int) -> tuple[ConsumerGroupConfig, ...]:
        """The groups subscribed to ``queue`` of this topic, in configuration order."""
        return tuple(g for g in self.subscribers if g.subscribes_queue(queue))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str
    stores: tuple[StoreConfig, ...]
    id: str = ""
    """The cluster's id (``[cluster] id``, written by ``pxq cluster up``); "" when the file
    gives none. Nodes stamp it into their data dirs, clients present it on every connection
    (``pxq.config.identity``)."""
    topics: tuple[TopicConfig, ...] = ()
    limits: Limits = Limits()
    batching: Batching = Batching()
    locks: LockServiceConfig | None = None
    """The lock service; None when the file has no ``[locks]`` table."""
    ownership: OwnershipConfig = OwnershipConfig()
    """The consumers' ownership timing (the ``[ownership]`` table, defaults if absent)."""
    storage: StorageConfig = StorageConfig()
    """Every node's LMDB sizing and storage reserve (``[storage]``, defaults if absent)."""
    connections: ConnectionsConfig = ConnectionsConfig()
    """Every node's connection budgets and client timeouts (``[connections]``)."""
    tls: TlsConfig = TlsConfig()
    """TLS and authentication (``[tls]``; absent: off)."""
    principals: tuple[PrincipalConfig, ...] = ()
    """The client principals' permissions (``[[principals]]``)."""
    metrics: MetricsConfig = MetricsConfig()
    """The nodes' Prometheus endpoints (``[metrics]``; absent: off)."""
    hosts: tuple[HostConfig, ...] = ()
    """The deployment inventory (``[[hosts]]``, in file order); empty: the file places no node
    on a host (a local cluster, or a deployment done by other means)."""
    _ring: StoreRing | None = field(default=None, repr=False, compare=False)
    _topics: dict[str, TopicInfo] = field(default_factory=dict, repr=False, compare=False)
    _queues_cache: dict[tuple[str, str, int], tuple[int, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ring", StoreRing([s.name for s in self.stores]))
        infos: dict[str, TopicInfo] = {}
        for t in self.topics:
            infos[t.name] = TopicInfo(
                name=t.name, base=t, level=0, owner=None, subscribers=t.consumer_groups
            )
            for g in t.consumer_groups:
                # The owner reads its derived topics on every queue and every kind.
                sub = dataclasses.replace(g, queues=None, kinds=None)
                for level in range(1, len(g.retries) + 1):
                    name = retry_topic(t.name, g.name, level)
                    infos[name] = TopicInfo(
                        name=name, base=t, level=level, owner=g.name, subscribers=(sub,)
                    )
                name = dead_letter_topic(t.name, g.name)
                infos[name] = TopicInfo(
                    name=name, base=t, level=-1, owner=g.name, subscribers=(sub,)
                )
        self._topics.update(infos)

    # -- lookups --------------------------------------------------------------------------------

    def topic(self, name: str) -> TopicInfo | None:
        """A base topic, or a retry-level or dead-letter topic derived from one; None if unknown."""
        return self._topics.get(name)

    def base_topic(self, name: str) -> TopicConfig | None:
        info = self._topics.get(name)
        return None if info is None or info.level != 0 else info.base

    def store(self, name: str) -> StoreConfig:
        for s in self.stores:
            if s.name == name:
                return s
        raise KeyError(f"no store named {name!r}")

    def store_of_node(self, node: str) -> StoreConfig | None:
        for s in self.stores:
            if node in s.nodes:
                return s
        return None

    def all_nodes(self) -> tuple[NodeInfo, ...]:
        """Every node of the cluster: the replicas of each store in configuration order, then
        the lock replicas."""
        found = [
            NodeInfo(
                node=r.node,
                role="store",
                service=s.name,
                host=r.host,
                port=r.port,
                zone=r.zone,
                metrics_port=self.metrics.port_of(r),
                on=r.on,
            )
            for s in self.stores
            for r in s.replicas
        ]
        if self.locks is not None:
            found += [
                NodeInfo(
                    node=r.node,
                    role="lock",
                    service=LOCKS_SERVICE,
                    host=r.host,
                    port=r.port,
                    zone=r.zone,
                    metrics_port=self.metrics.port_of(r),
                    on=r.on,
                )
                for r in self.locks.replicas
            ]
        return tuple(found)

    def node_info(self, node: str) -> NodeInfo | None:
        """The store or lock replica named ``node``; None if there is none."""
        for info in self.all_nodes():
            if info.node == node:
                return info
        return None

    def host(self, name: str) -> HostConfig:
        """The ``[[hosts]]`` entry ``name``; KeyError if there is none."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host named {name!r}")

    def host_of(self, node: str) -> HostConfig | None:
        """The host that runs ``node``; None in a file without hosts. KeyError for a node that
        is neither a store nor a lock replica."""
        info = self.node_info(node)
        if info is None:
            raise KeyError(f"no node named {node!r}")
        return None if info.on is None else self.host(info.on)

    def nodes_on(self, host: str) -> tuple[NodeInfo, ...]:
        """The nodes the host ``host`` runs, in ``all_nodes`` order (store replicas, then lock
        replicas); empty for a spare host. KeyError for a host the file does not list."""
        self.host(host)
        return tuple(info for info in self.all_nodes() if info.on == host)

    def zones(self) -> tuple[str, ...]:
        """The zones of the hosts, in the order they first appear; empty without hosts."""
        return tuple(dict.fromkeys(h.zone for h in self.hosts))

    def node_addresses(self) -> dict[str, tuple[str, int]]:
        """(host, port) of every node (stores and locks), by node name."""
        return {info.node: info.address for info in self.all_nodes()}

    def store_for(self, topic: str, queue: int) -> str:
        """The store holding ``queue`` of ``topic`` (derived topics follow their base)."""
        ring = self._ring
        if ring is None:  # pragma: no cover - set in __post_init__
            raise RuntimeError("ClusterConfig was built without its ring")
        return ring.store_of(topic, queue)

    def subscribed_groups(self, topic: str, queue: int | None = None) -> tuple[str, ...]:
        """Names of the consumer groups subscribed to ``topic`` (to ``queue`` of it if given)."""
        info = self._topics.get(topic)
        if info is None:
            return ()
        groups = info.subscribers if queue is None else info.subscribers_of(queue)
        return tuple(g.name for g in groups)

    def queues_of(self, topic: str, store: str, group: int) -> tuple[int, ...]:
        """The queues of ``topic`` that ``store`` holds in its Paxos ``group``, ascending."""
        key = (topic, store, group)
        cached = self._queues_cache.get(key)
        if cached is None:
            info = self._topics.get(topic)
            groups = self.store(store).groups
            cached = (
                ()
                if info is None
                else tuple(
                    q
                    for q in range(group, info.queues, groups)  # q mod groups == group
                    if self.store_for(topic, q) == store
                )
            )
            self._queues_cache[key] = cached
        return cached
