"""Topic naming: the names of derived topics (a consumer group's retry levels and dead
letters) and how to read a base topic and a retry level back from a name.

A derived topic embeds its base topic, the consumer group and the level behind a mark that a
configured name cannot contain (``pxq.config`` refuses names with ``RETRY_MARK`` or
``DLQ_MARK``), so a name says unambiguously what it is. Derived topics share the placement
of their base topic (``pxq.routing.StoreRing`` places by base topic), so moving an item to a
retry level is one command in one Paxos group.

It also names the reserved consumer group of health checks, ``HEALTH_GROUP`` (its meaning:
``pxq.config.model``).
"""

from __future__ import annotations

RETRY_MARK = ".retry."
DLQ_MARK = ".dlq."
HEALTH_GROUP = "pxq-health"
"""The consumer group every base topic has for health checks (``pxq echo``); reserved."""


def retry_topic(topic: str, group: str, level: int) -> str:
    """The topic holding ``group``'s items at retry ``level`` (1-based) of ``topic``."""
    return f"{base_topic(topic)}{RETRY_MARK}{group}.{level}"


def dead_letter_topic(topic: str, group: str) -> str:
    return f"{base_topic(topic)}{DLQ_MARK}{group}"


def base_topic(topic: str) -> str:
    """The base topic of a derived one (itself for a base topic)."""
    for mark in (RETRY_MARK, DLQ_MARK):
        i = topic.find(mark)
        if i >= 0:
            return topic[:i]
    return topic


def retry_level(topic: str) -> int:
    """0 for a base topic, n for retry level n, -1 for a dead-letter topic."""
    i = topic.find(RETRY_MARK)
    if i >= 0:
        return int(topic.rsplit(".", 1)[1])
    return -1 if DLQ_MARK in topic else 0
