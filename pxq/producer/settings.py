"""``ProducerSettings``: the cluster layout a producer needs and every limit it keeps.

Deliberately independent of ``pxq.config`` (the cluster's TOML configuration): an adapter
builds these settings from a ``ClusterConfig``. ``__post_init__`` rejects inconsistent values
with a ``ValueError`` naming the field, and freezes the mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from pxq.effects import NodeId

if TYPE_CHECKING:
    from pxq.config.model import ClusterConfig

MiB = 1024 * 1024


def frozen_mapping(value: Mapping[str, object], name: str) -> MappingProxyType[str, object]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
    return MappingProxyType(dict(value))


def check_layout(
    stores: Mapping[str, tuple[NodeId, ...]],
    groups_per_store: Mapping[str, int],
    topics: Mapping[str, int],
) -> None:
    """The checks shared by producer and consumer settings."""
    if not stores:
        raise ValueError("stores: at least one store is needed")
    for name, replicas in stores.items():
        if not isinstance(replicas, tuple) or not replicas:
            raise ValueError(f"stores[{name!r}]: expected a non-empty tuple of node names")
        if len(set(replicas)) != len(replicas):
            raise ValueError(f"stores[{name!r}]: replica names must be distinct")
    if set(groups_per_store) != set(stores):
        raise ValueError("groups_per_store: needs exactly one entry per store")
    for name, groups in groups_per_store.items():
        if groups < 1:
            raise ValueError(f"groups_per_store[{name!r}]: must be >= 1")
    if not topics:
        raise ValueError("topics: at least one topic is needed")
    for topic, queues in topics.items():
        if queues < 1:
            raise ValueError(f"topics[{topic!r}]: queue count must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProducerSettings:
    """Layout and limits of one producer machine."""

    stores: Mapping[str, tuple[NodeId, ...]]
    """Store name -> its replica nodes, in configuration order (the order Paxos uses)."""
    groups_per_store: Mapping[str, int]
    """Store name -> Paxos groups it runs (queue q lives in group q mod G)."""
    topics: Mapping[str, int]
    """Topic -> number of queues. Only these topics can be produced to."""

    # -- batching ------------------------------------------------------------------------------
    linger_ms: int = 0
    """Opt-in minimum wait. 0 (the default): a queue's batch leaves as soon as the queue has no
    batch in flight (calls arriving meanwhile form the next batch). > 0: it also waits until
    it is full or its oldest call has waited this long. See ``machine.py``, "Batching"."""
    batch_items_max: int = 100
    """Items per Enqueue."""
    batch_bytes_max: int = 1 * MiB
    """Key + payload bytes per Enqueue; also the largest single item accepted."""
    inflight_batches_max: int = 4
    """Batches of one queue in flight at once: beyond the first, only full batches leave
    early (pipelining under load; order is kept by ``Enqueue.after``). 1: one at a time."""

    # -- retries and deadlines -----------------------------------------------------------------
    request_timeout_ms: int = 1000
    """One attempt without an answer after this long is retried (its outcome is unknown)."""
    call_timeout_ms: int = 10_000
    """Overall deadline of one Produce call, from its arrival to its reply."""
    retries_max: int = 8
    """Re-sends of one batch after its first attempt (redirects and timeouts included)."""
    backoff_ms: int = 20
    """First delay before re-sending after an error or a redirect without a known master."""
    backoff_max_ms: int = 1000
    """Largest such delay (the delay doubles per consecutive failure up to this)."""

    # -- bounds --------------------------------------------------------------------------------
    pending_max: int = 10_000
    """Produce calls held at once (waiting for a batch or in flight); beyond: ``overloaded``."""
    pending_bytes_max: int = 64 * MiB
    """Key + payload bytes held at once; beyond: ``overloaded``."""

    def __post_init__(self) -> None:
        for name in ("stores", "groups_per_store", "topics"):
            object.__setattr__(self, name, frozen_mapping(getattr(self, name), name))
        check_layout(self.stores, self.groups_per_store, self.topics)
        for name in ("linger_ms", "retries_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0")
        for name in (
            "batch_items_max",
            "batch_bytes_max",
            "inflight_batches_max",
            "request_timeout_ms",
            "call_timeout_ms",
            "backoff_ms",
            "backoff_max_ms",
            "pending_max",
            "pending_bytes_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.backoff_max_ms < self.backoff_ms:
            raise ValueError("backoff_max_ms: must be >= backoff_ms")
        if self.pending_bytes_max < self.batch_bytes_max:
            raise ValueError("pending_bytes_max: must be >= batch_bytes_max")


def producer_settings(config: ClusterConfig, **overrides: int) -> ProducerSettings:
    """The producer settings of a cluster: its stores, their groups, its base topics, and the
    ``[batching]`` table; ``overrides`` replace any other field by name."""
    return ProducerSettings(
        stores={s.name: s.nodes for s in config.stores},
        groups_per_store={s.name: s.groups for s in config.stores},
        topics={t.name: t.queues for t in config.topics},
        linger_ms=overrides.pop("linger_ms", config.batching.linger_ms),
        batch_items_max=overrides.pop("batch_items_max", config.batching.items_max),
        batch_bytes_max=overrides.pop("batch_bytes_max", config.batching.bytes_max),
        inflight_batches_max=overrides.pop(
            "inflight_batches_max", config.batching.inflight_batches
        ),
        **overrides,
    )
