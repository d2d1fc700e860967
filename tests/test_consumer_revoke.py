"""A queue given up while its deliveries wait (``own.stop``: the lease lost while the lock
service was out) revokes them: ``batches()`` never yields them and a ``run`` handler gets none
of their items it has not started (found by ``pxq test``: the ownership check's
``deliver_unowned``). The deliveries of other queues go on."""

from __future__ import annotations

import asyncio

from net.client.api import AsyncClient
from net.client.consumer import AsyncConsumer
from pxq.config import loads_config
from pxq.config.default import default_toml
from pxq.consumer.messages import Deliver
from pxq.effects import TraceEvent
from pxq.store.messages import StoredItem


def _deliver(delivery_id: int, queue: int) -> Deliver:
    item = StoredItem(offset=0, key=b"", payload=b"x", enqueued_ms=0)
    return Deliver(delivery_id=delivery_id, group="default", topic="t", queue=queue, items=(item,))


def _gave_up(queue: int) -> TraceEvent:
    fields = (("topic", "t"), ("queue", queue), ("holder", "c"), ("token", 1), ("why", "expired"))
    return TraceEvent(kind="own.stop", fields=fields)


def test_deliveries_of_a_queue_given_up_are_revoked_and_the_others_kept() -> None:
    async def scenario() -> None:
        client = AsyncClient(loads_config(default_toml(tls=False)))
        try:
            consumer: AsyncConsumer = client.consumer("default")
            consumer._session = consumer._begin("batches")
            consumer._accepting = True
            for delivery_id, queue in ((1, 0), (2, 1), (3, 0)):
                consumer._on_handler(_deliver(delivery_id, queue))
            consumer._on_trace(_gave_up(0))
            assert consumer._revoked == {1, 3}
            consumer._answer(2, ())  # queue 1's delivery handled: forgotten, nothing revoked
            assert set(consumer._handling) == {1, 3}
            consumer._on_handler(_deliver(4, 0))  # queue 0 taken again: a new delivery
            assert 4 not in consumer._revoked
        finally:
            await client.close()

    asyncio.run(scenario())
