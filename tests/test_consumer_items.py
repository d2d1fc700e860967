"""The consumer's delivery path in ``net.client.consumer``: the handler's ``Item`` values.

Behaviour checked: ``_items`` (which builds each ``Item`` by setting its slots, bypassing the
frozen dataclass's ``__init__`` for speed) gives values equal to, hashing like and reading like
``Item(...)`` built the ordinary way, for base-topic and retry-level deliveries, and the
items stay immutable.
"""

from __future__ import annotations

import dataclasses

import pytest

from net.client.consumer import Batch, _item, _items
from net.client.types import Item
from pxq.consumer.messages import Deliver
from pxq.store.messages import StoredItem


def test_items_equal_ordinarily_built_items() -> None:
    stored = (
        StoredItem(offset=7, enqueued_ms=1234, key=b"k1", payload=b"p1", kind="x"),
        StoredItem(offset=9, enqueued_ms=1240, key=b"k2", payload=b"", attempt=2, not_before_ms=99),
    )
    d = Deliver(delivery_id=1, group="g", topic="t.retry.g.2", queue=3, items=stored)
    got = _items(d, d.items)
    expected = tuple(
        Item(
            topic="t.retry.g.2",
            queue=3,
            offset=s.offset,
            key=s.key,
            payload=s.payload,
            kind=s.kind,
            attempt=s.attempt,
            enqueued_ms=s.enqueued_ms,
        )
        for s in stored
    )
    assert got == expected
    assert [hash(i) for i in got] == [hash(i) for i in expected]
    assert repr(got[1]) == repr(expected[1])
    assert _item(d, stored[0]) == expected[0]
    assert _items(d, ()) == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[0].offset = 8  # type: ignore[misc]
    batch = Batch(group="g", topic=d.topic, queue=3, items=got)
    batch.fail(got[1])
    assert batch.failed == (9,)
