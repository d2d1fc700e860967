"""What an application asks of a producer machine and what it answers (codec tags 227-230,
in the "client" range).

One ``Produce`` call is answered by exactly one of three replies, and the difference between
the last two is the point of this API:

* ``Produced``: the item is durable on a majority, at ``offset`` of ``queue``.
* ``ProduceFailed``: definitely not enqueued (never sent, or every attempt was refused in a
  way that guarantees it took no effect). Safe to retry as a new item.
* ``ProduceUnknown``: at least one attempt may have been applied and the producer gave up
  before learning which. The item may or may not be in the queue; retrying it as a new item
  may create a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.codec import message
from pxq.effects import fast_init


@message(227)
@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Produce:
    """Enqueue one item on ``topic``; ``key`` decides the queue (same key, same queue); an
    empty key is no key: the producer picks the queue (spread)."""

    topic: str
    key: bytes
    payload: bytes
    kind: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    """``pxq.headers`` normal form (the client library normalises an application's map)."""


@message(228)
@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Produced:
    """The item is durable at ``offset`` of ``queue`` of ``topic``."""

    topic: str
    queue: int
    offset: int


@message(229)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProduceFailed:
    """Definitely not enqueued. Codes: ``unknown_topic``, ``too_large``, ``overloaded`` (the
    producer's own bound), ``bad_request``, ``timeout`` (the call's deadline passed before any
    attempt could have been applied), ``unavailable`` (every attempt was redirected or
    refused), or a definite store error code (``StoreError.code``)."""

    code: str
    message: str


@message(230)
@dataclass(frozen=True, slots=True, kw_only=True)
class ProduceUnknown:
    """The outcome is unknown: the item may or may not have been enqueued."""

    reason: str


ProducerRequest = Produce
ProducerReply = Produced | ProduceFailed | ProduceUnknown
