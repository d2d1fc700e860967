"""Cluster configuration: TOML -> frozen dataclasses, validated, with errors that name the file
and the key path.

This module owns the schema of a cluster file (stores and their replicas, topics with their
retention and consumer groups, the store's hard limits, the producer's batching) and the
lookups every component derives from it: a topic by name (derived retry and dead-letter topics
included), the store of a queue, the consumer groups subscribed to a queue.

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
    linger_ms = 5
    items_max = 100
    bytes_max = 1048576
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
from typing import Any, Final

from pxq.paxos.config import PaxosConfig
from pxq.store.placement import (
    DLQ_MARK,
    RETRY_MARK,
    StoreRing,
    dead_letter_topic,
    retry_topic,
)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    """Client-side batching of the producer."""

    linger_ms: int = 5
    items_max: int = 100
    bytes_max: int = 1 * MIB


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
# The embedded default: one store of three replicas on 127.0.0.1 (pxq cluster up).
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

[[topics]]
name = "events"
queues = 8

[[topics.consumer_groups]]
name = "default"
retries = [{ delay_ms = 1000 }, { delay_ms = 10000 }]
"""


def default_config() -> ClusterConfig:
    """A local 3-replica store on 127.0.0.1 (ports 7101-7103, 4 groups), topic "events" with 8
    queues and consumer group "default"."""
    return loads_config(DEFAULT_TOML, file="<default>")


_MISSING: Any = object()


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
        self.table(doc, "", ("cluster", "limits", "batching", "stores", "topics"))
        if "cluster" not in doc:
            raise self.error("cluster", "missing")
        c = self.table(doc["cluster"], "cluster", ("name",))
        name = self.name(c, "name", "cluster")
        limits = self.limits(doc.get("limits", {}))
        batching = self.batching(doc.get("batching", {}), limits)
        if "stores" not in doc:
            raise self.error("stores", "missing (at least one [[stores]])")
        stores_raw = self.array(doc["stores"], "stores")
        if not stores_raw:
            raise self.error("stores", "at least one store is needed")
        stores = tuple(self.store(s, f"stores[{i}]", limits) for i, s in enumerate(stores_raw))
        self.check_unique([s.name for s in stores], "stores", "name", "store")
        nodes = [
            (f"stores[{i}].replicas[{j}]", r)
            for i, s in enumerate(stores)
            for j, r in enumerate(s.replicas)
        ]
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
            name=name, stores=stores, topics=topics, limits=limits, batching=batching
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
        d = self.table(raw, "batching", ("linger_ms", "items_max", "bytes_max"))
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
        )

    def store(self, raw: object, path: str, limits: Limits) -> StoreConfig:
        d = self.table(raw, path, ("name", "groups", "retention_tick_ms", "replicas", "paxos"))
        name = self.name(d, "name", path)
        groups = self.integer(d, "groups", path, minimum=1)
        tick = self.integer(d, "retention_tick_ms", path, default=1000, minimum=1)
        if "replicas" not in d:
            raise self.error(_join(path, "replicas"), "missing")
        reps_raw = self.array(d["replicas"], _join(path, "replicas"))
        n = len(reps_raw)
        if n < 1 or n > REPLICAS_PER_STORE_MAX or n % 2 == 0:
            raise self.error(
                _join(path, "replicas"),
                f"need an odd count from 1 to {REPLICAS_PER_STORE_MAX}, got {n}",
            )
        replicas = tuple(self.replica(r, f"{path}.replicas[{j}]") for j, r in enumerate(reps_raw))
        fields = tuple(
            f.name for f in dataclasses.fields(PaxosConfig) if f.name not in ("replicas", "groups")
        )
        ppath = _join(path, "paxos")
        pd = self.table(d.get("paxos", {}), ppath, fields)
        overrides = {k: self.integer(pd, k, ppath) for k in sorted(pd)}
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
        try:
            paxos = PaxosConfig(replicas=tuple(r.node for r in replicas), groups=groups, **kwargs)
        except ValueError as exc:
            text = str(exc)
            key, _, reason = text.partition(": ")
            if key in fields:
                raise self.error(_join(ppath, key), reason) from exc
            raise self.error(ppath, text) from exc
        return StoreConfig(
            name=name,
            groups=groups,
            replicas=replicas,
            retention_tick_ms=tick,
            paxos_overrides=tuple(sorted(overrides.items())),
            paxos=paxos,
        )

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
