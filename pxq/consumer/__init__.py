"""The consumer machine: ownership, pull, handler outcomes, retries, rate limit."""

from pxq.consumer.machine import Consumer
from pxq.consumer.messages import (
    HANDLER,
    Deliver,
    Handled,
    OwnedQueue,
    OwnershipRejected,
    OwnershipSet,
    SetOwnership,
)
from pxq.consumer.ratelimit import TokenBucket
from pxq.consumer.settings import ConsumerSettings

__all__ = [
    "HANDLER",
    "Consumer",
    "ConsumerSettings",
    "Deliver",
    "Handled",
    "OwnedQueue",
    "OwnershipRejected",
    "OwnershipSet",
    "SetOwnership",
    "TokenBucket",
]
