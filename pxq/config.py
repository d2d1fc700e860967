"""Cluster configuration: TOML -> frozen dataclasses, validated, with errors that name the file
and the key path.

This module owns the schema of a cluster file (stores and their replicas, topics with their
retention and consumer groups, the store's hard limits, the producer's batching, the lock
service and its replicas, the consumers' ownership timing) and the lookups every component
derives from it: a topic by name (derived retry and dead-letter topics included), the store of
a queue, the consumer groups subscribed to a queue, every node with its role and address.

Every replica of a store must run with the same configuration: the queue state machine reads
retention, retry levels and subscriptions from it while applying commands, so two replicas
with different files could diverge.

Schema (defaults in parentheses)::

    [cluster]
    name = "local"                       # cluster id
    [limits]                             # every bound of the store, in one place
    consumer_groups_max = 1024           # per topic
    queues_max = 65536                   # per topic
    item_bytes_max = 1048576             # key + payload + kind of one item
    enqueue_items_max = 1000             # items per Enqueue
    get_items_max = 10000                # items per Get (requests are clamped to it)
    get_bytes_max = 16777216             # key + payload bytes per Get (clamped)
    get_scan_items_max = 100000          # items a Get may look at, skipped kinds included
    dedupe_window = 1024                 # sequence numbers remembered per producer
    producers_max = 10000                # producers remembered per Paxos group (LRU)
    retry_levels_max = 16                # retry levels per consumer group
    [batching]                           # the producer's client-side batching
    linger_ms = 0                        # opt-in wait; 0: a queue's batch goes when none is in flight
    items_max = 100
    bytes_max = 1048576
    inflight_batches = 4                 # batches of one queue in flight at once (full ones pipeline)
    [storage]                            # every node's LMDB (defaults if absent)
    map_size_bytes = 1073741824          # (1 GiB) initial map; it doubles when full...
    map_size_max_bytes = 274877906944    # (256 GiB) ...up to this
    reserve_bytes = 67108864             # (automatic: 5 % of the capacity, >= 64 MiB) below
                                         # this much room, enqueues are refused storage_full
    [[stores]]
    name = "store0"
    groups = 4                           # Paxos groups; queue q lives in group q mod groups
    retention_tick_ms = 1000             # how often each group's master proposes a retention tick
    [[stores.replicas]]
    node = "s0"
    host = "127.0.0.1"                   # ("127.0.0.1")
    port = 7101
    zone = "z0"                          # ("z0")
    [stores.paxos]                       # optional overrides of pxq.paxos.config.PaxosConfig
    lease_ms = 1000
    [locks]                              # optional: the lock service (absent: none)
    groups = 1                           # (1) Paxos groups; key k lives in crc32(k) mod groups
    keys_max = 100000                    # (100000) keys one group holds
    values_bytes_max = 67108864          # (64 MiB) value bytes one group holds, >= 65536
    cleanup_tick_ms = 500                # (500) how often a master looks for expired leases
    [[locks.replicas]]                   # an odd count from 1 to 9, like a store's
    node = "l0"                          # unique across stores and locks
    host = "127.0.0.1"                   # ("127.0.0.1")
    port = 7201                          # (host, port) unique across all nodes
    zone = "z0"                          # ("z0")
    [locks.paxos]                        # optional overrides of PaxosConfig, as [stores.paxos]
    lease_ms = 1000
    [ownership]                          # consumers' ownership of queues (defaults if absent)
    lease_ms = 3000                      # a consumer's lease on a queue and its membership key
    margin_ms = 600                      # lease considered lost this long before it expires
    poll_ms = 500                        # membership and assignment re-read period
    renew_ms = 1000                      # lease renewal period
    weight = 1                           # the consumer's default weight (consistent hashing)
    scheduler = false                    # follow a scheduler's published assignment
    [[topics]]
    name = "events"                      # letters, digits, "_" and "-" only
    queues = 8
    [topics.retention]                   # optional; an absent hold is no constraint
    hold_items = 1000
    hold_ms = 3600000
    [[topics.consumer_groups]]
    name = "default"
    queues = "all"                       # ("all") or a list of queue numbers
    kinds = ["a", "b"]                   # (all kinds)
    rate = { items_per_s = 1000, burst = 100 }   # (no limit)
    retries = [{ delay_ms = 1000 }]      # ([]): retry levels; empty: straight to dead letters
    dead_letter = true                   # (true); false: an item failing its last level stays
                                         # in place and is redelivered (never dropped)

Retention rule: an item at offset o of a queue, enqueued at wall time t, is removable when every
consumer group subscribed to that queue has its cursor > o, and o < end_offset - hold_items,
and t < now - hold_ms (now: the wall time of the master proposing the retention tick); an
absent hold is no constraint. The store may keep removable items longer (it removes whole
enqueue batches), never shorter.

Ownership rule: 0 < margin_ms < lease_ms <= LEASE_MS_MAX, 0 < renew_ms <= (lease_ms -
margin_ms) / 2 (two renewals fit in the time a holder trusts its lease), 0 < poll_ms < lease_ms,
1 <= weight <= OWNERSHIP_WEIGHT_MAX. ``margin_ms`` must cover the clock skew between lock
replicas (the service stamps leases with its master's wall clock) and the holder's drift.

Node names are unique across stores and the lock service, and (host, port) across all nodes.
A store may not be named ``"locks"``: that name stands for the lock service wherever Paxos
groups are named as ``service/group`` (``locks/0``).

Store Paxos defaults: a store's ``value_bytes_max`` and ``batch_bytes_max`` default to
``item_bytes_max`` plus ``ENQUEUE_HEADROOM_BYTES`` (at least the PaxosConfig defaults), so that
one item of the largest allowed size fits one proposal; an explicit override below that is an
error.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pxq.lock.messages import LEASE_MS_MAX, VALUE_BYTES_MAX
from pxq.lock.node import CLEANUP_TICK_MS_DEFAULT
from pxq.lock.sm import KEYS_MAX_DEFAULT, VALUES_BYTES_MAX_DEFAULT
from pxq.lock.timing import lease_timing_problem
from pxq.paxos.config import PaxosConfig
from pxq.routing import StoreRing
from pxq.topics import DLQ_MARK, RETRY_MARK, dead_letter_topic, retry_topic

KIB: Final = 1024
MIB: Final = 1024 * KIB

NAME_CHARS_MAX: Final = 64
"""Longest cluster, store, node, topic or consumer group name. Derived topic names embed a
topic and a group name and must fit the store's one-byte length prefix in keys."""
_NAME = re.compile(r"[A-Za-z0-9_-]+")

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

Role = Literal["store", "lock"]


class ConfigError(Exception):
    """A configuration file is invalid: ``file``, the dotted ``key_path`` and the ``reason``."""

    def __init__(self, file: str, key_path: str, reason: str) -> None:
        super().__init__(f"{file}: {key_path}: {reason}")
        self.file = file
        self.key_path = key_path
        self.reason = reason


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


STORAGE_MAP_BYTES_DEFAULT: Final = 1 << 30
STORAGE_MAP_BYTES_MAX_DEFAULT: Final = 256 << 30
STORAGE_MAP_BYTES_MIN: Final = 1 << 20
"""Smallest map ``[storage]`` accepts (LMDB needs a few pages per table)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """Every node's LMDB sizing and the headroom kept for everything but enqueues (the
    ``[storage]`` table; the production driver's ``NetConfig`` takes it over)."""

    map_size_bytes: int = STORAGE_MAP_BYTES_DEFAULT
    map_size_max_bytes: int = STORAGE_MAP_BYTES_MAX_DEFAULT
    reserve_bytes: int | None = None
    """None: automatic (``net.config.NetConfig.reserve_for``); 0: no admission control."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaConfig:
    node: str
    host: str = "127.0.0.1"
    port: int
    zone: str = "z0"


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

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(r.node for r in self.replicas)


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipConfig:
    """The ``[ownership]`` table: how consumers hold (group, queue) pairs through the lock
    service. Invalid combinations raise ``ValueError`` naming the field (see the module
    docstring's ownership rule)."""

    lease_ms: int = 3000
    """A consumer's lease on each queue it owns and on its membership key."""
    margin_ms: int = 600
    """A holder considers its lease lost this long before it would expire: covers the clock
    skew between lock replicas and the drift between holder and service."""
    poll_ms: int = 500
    """How often a consumer re-reads the membership and the assignment."""
    renew_ms: int = 1000
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
            return name, f"expected an integer, got {_kind(getattr(o, name))}"
    if type(o.scheduler) is not bool:
        return "scheduler", f"expected a boolean, got {_kind(o.scheduler)}"
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
        for g in self.consumer_groups:
            if g.name == name:
                return g
        return None


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
        for g in self.subscribers:
            if g.name == name:
                return g
        return None

    def subscribers_of(self, queue: int) -> tuple[ConsumerGroupConfig, ...]:
        """The groups subscribed to ``queue`` of this topic, in configuration order."""
        return tuple(g for g in self.subscribers if g.subscribes_queue(queue))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str
    stores: tuple[StoreConfig, ...]
    topics: tuple[TopicConfig, ...] = ()
    limits: Limits = Limits()
    batching: Batching = Batching()
    locks: LockServiceConfig | None = None
    """The lock service; None when the file has no ``[locks]`` table."""
    ownership: OwnershipConfig = OwnershipConfig()
    """The consumers' ownership timing (the ``[ownership]`` table, defaults if absent)."""
    storage: StorageConfig = StorageConfig()
    """Every node's LMDB sizing and storage reserve (``[storage]``, defaults if absent)."""
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
                node=r.node, role="store", service=s.name, host=r.host, port=r.port, zone=r.zone
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


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "-", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), "-", f"not UTF-8: {exc}") from exc
    return loads_config(text, file=str(p))


def loads_config(text: str, *, file: str = "<string>") -> ClusterConfig:
    """Parse and validate a cluster configuration given as TOML text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "-", f"invalid TOML: {exc}") from exc
    return _Parser(file).cluster(doc)


DEFAULT_TOML: Final = """\
# The embedded default: one store of three replicas and a lock service of three replicas
# on 127.0.0.1 (pxq cluster up).
[cluster]
name = "local"

[[stores]]
name = "store0"
groups = 4

[[stores.replicas]]
node = "s0"
port = 7101

[[stores.replicas]]
node = "s1"
port = 7102

[[stores.replicas]]
node = "s2"
port = 7103

# The lock service: three replicas, one Paxos group (consumers take queues through it).
[locks]
groups = 1

[[locks.replicas]]
node = "l0"
port = 7201

[[locks.replicas]]
node = "l1"
port = 7202

[[locks.replicas]]
node = "l2"
port = 7203

[[topics]]
name = "events"
queues = 8

[[topics.consumer_groups]]
name = "default"
retries = [{ delay_ms = 1000 }, { delay_ms = 10000 }]
"""


def default_config() -> ClusterConfig:
    """A local 3-replica store on 127.0.0.1 (ports 7101-7103, 4 groups), a 3-replica lock
    service (nodes l0-l2, ports 7201-7203, 1 group), topic "events" with 8 queues and consumer
    group "default"; ownership defaults."""
    return loads_config(DEFAULT_TOML, file="<default>")


_MISSING: Any = object()
_PAXOS_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(PaxosConfig) if f.name not in ("replicas", "groups")
)
"""The ``PaxosConfig`` fields a ``paxos`` table may override (membership comes from the
replicas and the group count)."""


class _Parser:
    """Validation with errors naming the file and the key path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, path: str, reason: str) -> ConfigError:
        return ConfigError(self.file, path, reason)

    # -- typed accessors --------------------------------------------------------------------------

    def table(self, value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, got {_kind(value)}")
        for key in sorted(value):
            if key not in allowed:
                raise self.error(_join(path, key), f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(path, f"expected an array, got {_kind(value)}")
        return value

    def integer(
        self,
        d: Mapping[str, Any],
        key: str,
        path: str,
        *,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        p = _join(path, key)
        if key not in d:
            if default is _MISSING:
                raise self.error(p, "missing")
            return default
        v = d[key]
        if type(v) is not int:
            raise self.error(p, f"expected an integer, got {_kind(v)}")
        if minimum is not None and v < minimum:
            raise self.error(p, f"must be >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(p, f"must be <= {maximum}, got {v}")
        return v

    def string(self, d: Mapping[str, Any], key: str, path: str, *, default: Any = _MISSING) -> Any:
        p = _join(path, key)
        if key not in d:
            if default is _MISSING:
                raise self.error(p, "missing")
            return default
        v = d[key]
        if not isinstance(v, str):
            raise self.error(p, f"expected a string, got {_kind(v)}")
        if not v:
            raise self.error(p, "must not be empty")
        return v

    def name(self, d: Mapping[str, Any], key: str, path: str, *, default: Any = _MISSING) -> Any:
        v = self.string(d, key, path, default=default)
        if len(v) > NAME_CHARS_MAX:
            raise self.error(_join(path, key), f"longer than {NAME_CHARS_MAX} characters")
        if not _NAME.fullmatch(v):
            raise self.error(
                _join(path, key), f"{v!r}: only letters, digits, '_' and '-' are allowed"
            )
        return v

    def boolean(self, d: Mapping[str, Any], key: str, path: str, *, default: bool) -> bool:
        if key not in d:
            return default
        v = d[key]
        if type(v) is not bool:
            raise self.error(_join(path, key), f"expected a boolean, got {_kind(v)}")
        return v

    # -- sections ---------------------------------------------------------------------------------

    def cluster(self, doc: Mapping[str, Any]) -> ClusterConfig:
        self.table(
            doc,
            "",
            ("cluster", "limits", "batching", "storage", "stores", "locks", "ownership", "topics"),
        )
        if "cluster" not in doc:
            raise self.error("cluster", "missing")
        c = self.table(doc["cluster"], "cluster", ("name",))
        name = self.name(c, "name", "cluster")
        limits = self.limits(doc.get("limits", {}))
        batching = self.batching(doc.get("batching", {}), limits)
        storage = self.storage(doc.get("storage", {}))
        if "stores" not in doc:
            raise self.error("stores", "missing (at least one [[stores]])")
        stores_raw = self.array(doc["stores"], "stores")
        if not stores_raw:
            raise self.error("stores", "at least one store is needed")
        stores = tuple(self.store(s, f"stores[{i}]", limits) for i, s in enumerate(stores_raw))
        self.check_unique([s.name for s in stores], "stores", "name", "store")
        for i, s in enumerate(stores):
            if s.name == LOCKS_SERVICE:
                raise self.error(
                    f"stores[{i}].name", f"{LOCKS_SERVICE!r} is reserved for the lock service"
                )
        locks = self.locks(doc["locks"]) if "locks" in doc else None
        ownership = self.ownership(doc.get("ownership", {}))
        nodes = [
            (f"stores[{i}].replicas[{j}]", r)
            for i, s in enumerate(stores)
            for j, r in enumerate(s.replicas)
        ]
        if locks is not None:
            nodes += [(f"locks.replicas[{j}]", r) for j, r in enumerate(locks.replicas)]
        seen_nodes: dict[str, str] = {}
        seen_addrs: dict[tuple[str, int], str] = {}
        for path, r in nodes:
            if r.node in seen_nodes:
                raise self.error(
                    f"{path}.node", f"{r.node!r} is already a replica at {seen_nodes[r.node]}"
                )
            seen_nodes[r.node] = path
            addr = (r.host, r.port)
            if addr in seen_addrs:
                raise self.error(
                    f"{path}.port", f"{r.host}:{r.port} is already used by {seen_addrs[addr]}"
                )
            seen_addrs[addr] = path
        topics_raw = self.array(doc.get("topics", []), "topics")
        topics = tuple(self.topic(t, f"topics[{i}]", limits) for i, t in enumerate(topics_raw))
        self.check_unique([t.name for t in topics], "topics", "name", "topic")
        return ClusterConfig(
            name=name,
            stores=stores,
            topics=topics,
            limits=limits,
            batching=batching,
            locks=locks,
            ownership=ownership,
            storage=storage,
        )

    def storage(self, raw: object) -> StorageConfig:
        d = self.table(raw, "storage", ("map_size_bytes", "map_size_max_bytes", "reserve_bytes"))
        size = self.integer(
            d,
            "map_size_bytes",
            "storage",
            default=STORAGE_MAP_BYTES_DEFAULT,
            minimum=STORAGE_MAP_BYTES_MIN,
        )
        size_max = self.integer(
            d,
            "map_size_max_bytes",
            "storage",
            default=max(size, STORAGE_MAP_BYTES_MAX_DEFAULT),
            minimum=size,
        )
        reserve = self.integer(
            d, "reserve_bytes", "storage", default=None, minimum=0, maximum=size_max - 1
        )
        return StorageConfig(
            map_size_bytes=size, map_size_max_bytes=size_max, reserve_bytes=reserve
        )

    def check_unique(self, names: list[str], path: str, key: str, what: str) -> None:
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                raise self.error(
                    f"{path}[{i}].{key}", f"duplicate {what} name {n!r} (also {path}[{seen[n]}])"
                )
            seen[n] = i

    def limits(self, raw: object) -> Limits:
        names = tuple(f.name for f in dataclasses.fields(Limits))
        d = self.table(raw, "limits", names)
        defaults = Limits()
        values = {
            n: self.integer(d, n, "limits", default=getattr(defaults, n), minimum=1) for n in names
        }
        return Limits(**values)

    def batching(self, raw: object, limits: Limits) -> Batching:
        d = self.table(raw, "batching", ("linger_ms", "items_max", "bytes_max", "inflight_batches"))
        b = Batching()
        items_max = self.integer(
            d,
            "items_max",
            "batching",
            default=min(b.items_max, limits.enqueue_items_max),
            minimum=1,
            maximum=limits.enqueue_items_max,
        )
        return Batching(
            linger_ms=self.integer(d, "linger_ms", "batching", default=b.linger_ms, minimum=0),
            items_max=items_max,
            bytes_max=self.integer(d, "bytes_max", "batching", default=b.bytes_max, minimum=1),
            inflight_batches=self.integer(
                d,
                "inflight_batches",
                "batching",
                default=b.inflight_batches,
                minimum=1,
                maximum=INFLIGHT_BATCHES_MAX,
            ),
        )

    def store(self, raw: object, path: str, limits: Limits) -> StoreConfig:
        d = self.table(raw, path, ("name", "groups", "retention_tick_ms", "replicas", "paxos"))
        name = self.name(d, "name", path)
        groups = self.integer(d, "groups", path, minimum=1)
        tick = self.integer(d, "retention_tick_ms", path, default=1000, minimum=1)
        replicas = self.replicas(d, path)
        ppath = _join(path, "paxos")
        overrides = self.paxos_overrides(d.get("paxos", {}), ppath)
        # One item of the largest allowed size must fit one proposal.
        needed = limits.item_bytes_max + ENQUEUE_HEADROOM_BYTES
        kwargs = dict(overrides)
        base = PaxosConfig(replicas=("x",))
        kwargs.setdefault("value_bytes_max", max(base.value_bytes_max, needed))
        kwargs.setdefault("batch_bytes_max", max(base.batch_bytes_max, kwargs["value_bytes_max"]))
        kwargs.setdefault(
            "pending_bytes_max", max(base.pending_bytes_max, kwargs["value_bytes_max"])
        )
        if kwargs["value_bytes_max"] < needed:
            raise self.error(
                _join(ppath, "value_bytes_max"),
                f"must be >= limits.item_bytes_max + {ENQUEUE_HEADROOM_BYTES} = {needed}",
            )
        paxos = self.paxos(replicas, groups, kwargs, ppath)
        return StoreConfig(
            name=name,
            groups=groups,
            replicas=replicas,
            retention_tick_ms=tick,
            paxos_overrides=tuple(sorted(overrides.items())),
            paxos=paxos,
        )

    def replicas(self, d: Mapping[str, Any], path: str) -> tuple[ReplicaConfig, ...]:
        """The ``replicas`` array of the table ``d`` at ``path``: an odd count from 1."""
        if "replicas" not in d:
            raise self.error(_join(path, "replicas"), "missing")
        reps_raw = self.array(d["replicas"], _join(path, "replicas"))
        n = len(reps_raw)
        if n < 1 or n > REPLICAS_PER_STORE_MAX or n % 2 == 0:
            raise self.error(
                _join(path, "replicas"),
                f"need an odd count from 1 to {REPLICAS_PER_STORE_MAX}, got {n}",
            )
        return tuple(self.replica(r, f"{path}.replicas[{j}]") for j, r in enumerate(reps_raw))

    def paxos_overrides(self, raw: object, path: str) -> dict[str, int]:
        """A ``paxos`` table: integer overrides of ``PaxosConfig`` fields (not the membership)."""
        pd = self.table(raw, path, _PAXOS_FIELDS)
        return {k: self.integer(pd, k, path) for k in sorted(pd)}

    def paxos(
        self,
        replicas: tuple[ReplicaConfig, ...],
        groups: int,
        overrides: Mapping[str, int],
        path: str,
    ) -> PaxosConfig:
        """The ``PaxosConfig`` of a replica set; its complaints name a key under ``path``."""
        try:
            return PaxosConfig(
                replicas=tuple(r.node for r in replicas), groups=groups, **dict(overrides)
            )
        except ValueError as exc:
            text = str(exc)
            key, _, reason = text.partition(": ")
            if key in _PAXOS_FIELDS:
                raise self.error(_join(path, key), reason) from exc
            raise self.error(path, text) from exc

    def locks(self, raw: object) -> LockServiceConfig:
        path = "locks"
        d = self.table(
            raw,
            path,
            ("groups", "keys_max", "values_bytes_max", "cleanup_tick_ms", "replicas", "paxos"),
        )
        groups = self.integer(d, "groups", path, default=1, minimum=1, maximum=LOCK_GROUPS_MAX)
        keys_max = self.integer(d, "keys_max", path, default=KEYS_MAX_DEFAULT, minimum=1)
        values_bytes_max = self.integer(
            d,
            "values_bytes_max",
            path,
            default=VALUES_BYTES_MAX_DEFAULT,
            minimum=VALUE_BYTES_MAX,
        )
        tick = self.integer(d, "cleanup_tick_ms", path, default=CLEANUP_TICK_MS_DEFAULT, minimum=1)
        replicas = self.replicas(d, path)
        ppath = _join(path, "paxos")
        overrides = self.paxos_overrides(d.get("paxos", {}), ppath)
        return LockServiceConfig(
            groups=groups,
            replicas=replicas,
            keys_max=keys_max,
            values_bytes_max=values_bytes_max,
            cleanup_tick_ms=tick,
            paxos_overrides=tuple(sorted(overrides.items())),
            paxos=self.paxos(replicas, groups, overrides, ppath),
        )

    def ownership(self, raw: object) -> OwnershipConfig:
        path = "ownership"
        names = tuple(f.name for f in dataclasses.fields(OwnershipConfig))
        d = self.table(raw, path, names)
        defaults = OwnershipConfig()
        values: dict[str, Any] = {
            n: self.integer(d, n, path, default=getattr(defaults, n))
            for n in names
            if n != "scheduler"
        }
        values["scheduler"] = self.boolean(d, "scheduler", path, default=defaults.scheduler)
        try:
            return OwnershipConfig(**values)
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            raise self.error(_join(path, key), reason) from exc

    def replica(self, raw: object, path: str) -> ReplicaConfig:
        d = self.table(raw, path, ("node", "host", "port", "zone"))
        return ReplicaConfig(
            node=self.name(d, "node", path),
            host=self.string(d, "host", path, default="127.0.0.1"),
            port=self.integer(d, "port", path, minimum=1, maximum=PORT_MAX),
            zone=self.name(d, "zone", path, default="z0"),
        )

    def topic(self, raw: object, path: str, limits: Limits) -> TopicConfig:
        d = self.table(raw, path, ("name", "queues", "retention", "consumer_groups"))
        name = self.name(d, "name", path)
        queues = self.integer(d, "queues", path, minimum=1, maximum=limits.queues_max)
        rpath = _join(path, "retention")
        rd = self.table(d.get("retention", {}), rpath, ("hold_items", "hold_ms"))
        retention = Retention(
            hold_items=self.integer(rd, "hold_items", rpath, default=None, minimum=0),
            hold_ms=self.integer(rd, "hold_ms", rpath, default=None, minimum=0),
        )
        gpath = _join(path, "consumer_groups")
        groups_raw = self.array(d.get("consumer_groups", []), gpath)
        if len(groups_raw) > limits.consumer_groups_max:
            raise self.error(
                gpath,
                f"{len(groups_raw)} groups exceed limits.consumer_groups_max = "
                f"{limits.consumer_groups_max}",
            )
        groups = tuple(
            self.consumer_group(g, f"{gpath}[{i}]", queues, limits)
            for i, g in enumerate(groups_raw)
        )
        self.check_unique([g.name for g in groups], gpath, "name", "consumer group")
        for mark in (RETRY_MARK, DLQ_MARK):
            if mark in name:  # pragma: no cover - dots are refused by the name pattern
                raise self.error(_join(path, "name"), "must not contain a derived-topic mark")
        return TopicConfig(name=name, queues=queues, retention=retention, consumer_groups=groups)

    def consumer_group(
        self, raw: object, path: str, queue_count: int, limits: Limits
    ) -> ConsumerGroupConfig:
        d = self.table(raw, path, ("name", "queues", "kinds", "rate", "retries", "dead_letter"))
        name = self.name(d, "name", path)
        queues: tuple[int, ...] | None = None
        qv = d.get("queues", "all")
        qpath = _join(path, "queues")
        if isinstance(qv, str):
            if qv != "all":
                raise self.error(qpath, f'expected "all" or a list of queue numbers, got {qv!r}')
        else:
            arr = self.array(qv, qpath)
            if not arr:
                raise self.error(qpath, 'must not be empty (omit it, or say "all")')
            seen: set[int] = set()
            for i, q in enumerate(arr):
                if type(q) is not int:
                    raise self.error(f"{qpath}[{i}]", f"expected an integer, got {_kind(q)}")
                if not 0 <= q < queue_count:
                    raise self.error(f"{qpath}[{i}]", f"queue {q} outside 0..{queue_count - 1}")
                if q in seen:
                    raise self.error(f"{qpath}[{i}]", f"duplicate queue {q}")
                seen.add(q)
            queues = tuple(sorted(seen))
        kinds: tuple[str, ...] | None = None
        if "kinds" in d:
            kpath = _join(path, "kinds")
            arr = self.array(d["kinds"], kpath)
            found: list[str] = []
            for i, k in enumerate(arr):
                if not isinstance(k, str):
                    raise self.error(f"{kpath}[{i}]", f"expected a string, got {_kind(k)}")
                if k in found:
                    raise self.error(f"{kpath}[{i}]", f"duplicate kind {k!r}")
                found.append(k)
            kinds = tuple(sorted(found))
        rate: RateLimit | None = None
        if "rate" in d:
            rpath = _join(path, "rate")
            rd = self.table(d["rate"], rpath, ("items_per_s", "burst"))
            rate = RateLimit(
                items_per_s=self.integer(rd, "items_per_s", rpath, minimum=1),
                burst=self.integer(rd, "burst", rpath, minimum=1),
            )
        tpath = _join(path, "retries")
        retries_raw = self.array(d.get("retries", []), tpath)
        if len(retries_raw) > limits.retry_levels_max:
            raise self.error(
                tpath,
                f"{len(retries_raw)} levels exceed limits.retry_levels_max = "
                f"{limits.retry_levels_max}",
            )
        retries = []
        for i, r in enumerate(retries_raw):
            lp = f"{tpath}[{i}]"
            rd = self.table(r, lp, ("delay_ms",))
            retries.append(RetryLevel(delay_ms=self.integer(rd, "delay_ms", lp, minimum=0)))
        return ConsumerGroupConfig(
            name=name,
            queues=queues,
            kinds=kinds,
            rate=rate,
            retries=tuple(retries),
            dead_letter=self.boolean(d, "dead_letter", path, default=True),
        )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
