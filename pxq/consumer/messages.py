"""What a consumer machine exchanges with its application (codec tags 231-236, in the
"client" range).

Two channels:

* The **handler** is a pseudo-node named ``HANDLER``: the machine emits
  ``Send(dst=HANDLER, msg=Deliver(...))`` and the driver answers with
  ``Received(src=HANDLER, msg=Handled(...))``. Drivers recognise the name and route the batch to
  the application's handler instead of the network.
* **Ownership** is set by ``ClientCall(call_id, SetOwnership(...))`` (the lock client and the
  scheduler will drive it later), answered by ``OwnershipSet`` or ``OwnershipRejected``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.codec import message
from pxq.store.messages import StoredItem

HANDLER = "handler"
"""The node name of the application handler, as seen by the consumer machine."""


@message(231)
@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Handle ``items`` (in offset order) of ``queue`` of ``topic`` for consumer ``group``.

    ``topic`` may be a retry-level topic (``pxq.topics.retry_level(topic) > 0``; each item's
    ``attempt`` says the same). The handler should process items with the same key serially
    and in order, and may process different keys concurrently; it answers once with
    ``Handled(delivery_id)``.
    """

    delivery_id: int
    group: str
    topic: str
    queue: int
    items: tuple[StoredItem, ...]


@message(232)
@dataclass(frozen=True, slots=True, kw_only=True)
class Handled:
    """The outcome of ``Deliver(delivery_id)``: ``failed`` lists the offsets whose handling
    failed (they go to the next retry level); every other delivered item succeeded."""

    delivery_id: int
    failed: tuple[int, ...] = ()


@message(233)
@dataclass(frozen=True, slots=True, kw_only=True)
class OwnedQueue:
    """One queue of a base topic that this consumer owns for its group. ``token`` is the
    fencing token of the lock that grants it (0 while locks are off); the store rejects a
    commit or retry whose token is stale."""

    topic: str
    queue: int
    token: int = 0


@message(234)
@dataclass(frozen=True, slots=True, kw_only=True)
class SetOwnership:
    """Replace the set of owned queues. Queues left out stop at once; new ones start from the
    group's committed cursor. ``share`` is the fraction ``(num, den)`` of the group's rate
    limit this consumer may use (for example ``(1, owners)``)."""

    queues: tuple[OwnedQueue, ...]
    share: tuple[int, int] = (1, 1)


@message(235)
@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipSet:
    """Ownership replaced: ``started`` queues are new, ``stopped`` ones were dropped."""

    started: int
    stopped: int


@message(236)
@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipRejected:
    """Ownership unchanged. Codes: ``unknown_topic``, ``bad_queue``, ``too_many``,
    ``bad_share``, ``bad_request``."""

    code: str
    message: str


ConsumerRequest = SetOwnership
ConsumerReply = OwnershipSet | OwnershipRejected
