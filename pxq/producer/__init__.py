"""The producer machine: routing, batching, retries with dedupe ids."""

from pxq.producer.machine import Producer
from pxq.producer.messages import Produce, Produced, ProduceFailed, ProduceUnknown
from pxq.producer.settings import ProducerSettings

__all__ = ["Produce", "ProduceFailed", "ProduceUnknown", "Produced", "Producer", "ProducerSettings"]
