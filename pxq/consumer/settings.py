"""``ConsumerSettings``: what one consumer machine of one consumer group needs to know about the
cluster and the group, and every limit it keeps.

Independent of ``pxq.config`` (an adapter builds it from a ``ClusterConfig``). ``__post_init__``
rejects inconsistent values with a ``ValueError`` naming the field, and freezes the mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pxq.effects import NodeId
from pxq.producer.settings import check_layout, frozen_mapping
from pxq.topics import DLQ_MARK, RETRY_MARK

if TYPE_CHECKING:
    from pxq.config.model import ClusterConfig, ConsumerGroupConfig

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSettings:
    """Layout, group behaviour and limits of one consumer machine."""

    group: str
    """The consumer group this machine consumes for."""
    stores: Mapping[str, tuple[NodeId, ...]]
    """Store name -> its replica nodes, in configuration order."""
    groups_per_store: Mapping[str, int]
    """Store name -> Paxos groups it runs."""
    topics: Mapping[str, int]
    """Base topic -> number of queues, for the topics this group subscribes to. The group's
    retry-level topics of a queue are consumed with it (same queue number); the dead-letter
    topic is not consumed automatically."""

    # -- the group's failure handling ----------------------------------------------------------
    retry_delays_ms: tuple[int, ...] = ()
    """The group's retry levels: level n (1-based) holds items whose handler failed n times,
    not handed out before ``delay`` ms after the failure (the store stamps ``not_before_ms``)."""
    dead_letter: bool = True
    """Whether the group has a dead-letter topic. Without one, an item that fails on the last
    level (or on the base topic when there are no levels) is not moved anywhere: it is
    redelivered in place after ``redeliver_backoff_ms``, blocking its queue, and never dropped."""

    # -- pulling -------------------------------------------------------------------------------
    get_items_max: int = 1000
    """Items per Get (and so per delivery; the store clamps it to its ``limits.get_items_max``
    and ``get_bytes_max`` bounds it too). 1000 drains a backlog ~3x faster than 100 (126k vs
    40k items/s measured, docs/performance.md); an application that wants smaller deliveries
    (less to redeliver after a crash) passes ``options={"get_items_max": ...}``."""
    get_bytes_max: int = 4 * MiB
    """Payload bytes per Get."""
    poll_empty_ms: int = 10
    """Wait before polling a queue again after an empty Get; doubles per empty Get..."""
    poll_empty_max_ms: int = 500
    """...up to this."""

    # -- rate limit ----------------------------------------------------------------------------
    rate_items_per_s: int | None = None
    """The group's dequeue rate limit (items/s across all its consumers); None: unlimited."""
    rate_burst: int | None = None
    """Tokens the bucket holds at most; None: one second's worth of ``rate_items_per_s``."""

    # -- timeouts and retries ------------------------------------------------------------------
    request_timeout_ms: int = 1000
    """A store request without an answer after this long is re-sent (to the next replica)."""
    handle_timeout_ms: int = 30_000
    """A delivery without ``Handled`` after this long counts as failed for all its items."""
    backoff_ms: int = 20
    """First delay before re-sending after a store error or a redirect without a master."""
    backoff_max_ms: int = 2000
    """Largest such delay. Store requests are retried without a count limit: giving up would
    mean stopping the queue; the backoff bounds their rate instead."""
    redeliver_backoff_ms: int = 1000
    """Delay before redelivering items that failed with nowhere to move to."""

    # -- bounds --------------------------------------------------------------------------------
    owned_queues_max: int = 4096
    """Base queues one machine may own; each also brings one stream per retry level."""

    def __post_init__(self) -> None:
        for name in ("stores", "groups_per_store", "topics"):
            object.__setattr__(self, name, frozen_mapping(getattr(self, name), name))
        check_layout(self.stores, self.groups_per_store, self.topics)
        if not self.group:
            raise ValueError("group: must not be empty")
        for topic in self.topics:
            if RETRY_MARK in topic or DLQ_MARK in topic:
                raise ValueError(f"topics: {topic!r} is a derived topic, list its base topic")
        if not isinstance(self.retry_delays_ms, tuple) or any(d < 0 for d in self.retry_delays_ms):
            raise ValueError("retry_delays_ms: expected a tuple of delays >= 0")
        for name in (
            "get_items_max",
            "get_bytes_max",
            "poll_empty_ms",
            "poll_empty_max_ms",
            "request_timeout_ms",
            "handle_timeout_ms",
            "backoff_ms",
            "backoff_max_ms",
            "redeliver_backoff_ms",
            "owned_queues_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.poll_empty_max_ms < self.poll_empty_ms:
            raise ValueError("poll_empty_max_ms: must be >= poll_empty_ms")
        if self.backoff_max_ms < self.backoff_ms:
            raise ValueError("backoff_max_ms: must be >= backoff_ms")
        if self.rate_items_per_s is not None and self.rate_items_per_s < 0:
            raise ValueError("rate_items_per_s: must be >= 0")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst: must be >= 1")

    @property
    def retry_levels(self) -> int:
        return len(self.retry_delays_ms)

    @property
    def burst(self) -> int:
        """The bucket size actually used."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, self.rate_items_per_s or 0)


def consumer_settings(
    config: ClusterConfig, group: str, topic: str | None = None, **overrides: int
) -> ConsumerSettings:
    """The settings of a consumer of ``group`` (on ``topic`` only, if given): the cluster's
    stores, the base topics the group subscribes to, its retry levels, dead-letter choice and
    rate limit from the configuration; ``overrides`` replace any other field by name.

    One consumer machine applies one retry/dead-letter/rate policy, so a group whose
    subscriptions on several topics differ in those needs one consumer per topic: a
    ``ValueError`` says so rather than silently using one topic's policy for all.
    """
    topics: dict[str, int] = {}
    policies: dict[str, ConsumerGroupConfig] = {}
    for t in config.topics:
        found = t.group(group)
        if found is not None and (topic is None or t.name == topic):
            topics[t.name] = t.queues
            policies[t.name] = found
    if not policies:
        where = "no topic" if topic is None else f"topic {topic!r}"
        raise ValueError(f"{where} has a consumer group named {group!r}")
    names = sorted(policies)
    cg = policies[names[0]]
    for name in names[1:]:
        other = policies[name]
        if (other.retries, other.dead_letter, other.rate) != (cg.retries, cg.dead_letter, cg.rate):
            raise ValueError(
                f"consumer group {group!r} has different retries, dead-letter or rate settings "
                f"on topics {names[0]!r} and {name!r}: run one consumer per topic"
            )
    return ConsumerSettings(
        group=group,
        stores={s.name: s.nodes for s in config.stores},
        groups_per_store={s.name: s.groups for s in config.stores},
        topics=topics,
        retry_delays_ms=tuple(r.delay_ms for r in cg.retries),
        dead_letter=cg.dead_letter,
        rate_items_per_s=None if cg.rate is None else cg.rate.items_per_s,
        rate_burst=None if cg.rate is None else cg.rate.burst,
        **overrides,
    )
