"""The client library (``pxq.AsyncClient``, ``pxq.Client``) against a real local cluster.

Goal: the application-facing semantics hold end to end over loopback TCP and LMDB: receipts
match what consumers read; commits happen after success only (a restarted consumer does not
see committed items; a batch whose loop body raised is delivered again); failing items move
through the retry level to the dead-letter topic; per-key order survives concurrent
enqueues and concurrent handlers; ``OutcomeUnknown`` and ``EnqueueFailed`` are told apart;
``seek`` replays; the blocking client does the same from plain threads.

Method: one ``LocalCluster`` (3 replicas, 2 Paxos groups) per module, running on an event loop
in a background thread; each test uses its own topic, so tests do not see each other's
items, and runs its client on its own loop (``run_async``, bounded in time). Every wait for a
condition is bounded.
"""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pxq
from net.client.api import AsyncClient, Item
from net.client.consumer import AsyncConsumer
from tests.test_client_support import BackgroundCluster, dead_config, run_async, start_cluster

TOPICS = """
[[topics]]
name = "basic"
queues = 4
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "restart"
queues = 2
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "fails"
queues = 2
[[topics.consumer_groups]]
name = "g"
retries = [{ delay_ms = 50 }]

[[topics]]
name = "delays"
queues = 2
[[topics.consumer_groups]]
name = "g"
retries = [{ delay_ms = 50 }, { delay_ms = 100 }]

[[topics]]
name = "order"
queues = 4
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "many"
queues = 4
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "batches"
queues = 1
[[topics.consumer_groups]]
name = "g"
retries = [{ delay_ms = 60000 }]

[[topics]]
name = "seek"
queues = 1
[topics.retention]
hold_items = 100  # the rewinds below reach back past the cursor: keep what it passed
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "sync"
queues = 2
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "held"
queues = 2
[[topics.consumer_groups]]
name = "g"
"""

FAST = {"poll_empty_ms": 2, "poll_empty_max_ms": 20}
"""Consumer options for tests: poll idle queues often, so waits stay short."""
WAIT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundCluster]:
    yield from start_cluster(tmp_path_factory, "client", TOPICS)


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def consume_until(
    consumer: AsyncConsumer,
    handler: Callable[[Item], object],
    done: Callable[[], bool],
    what: str,
) -> None:
    """Run ``consumer`` with ``handler`` until ``done()``, then stop it (commits settle)."""
    task = asyncio.create_task(consumer.run(handler))
    try:
        await wait_for(done, what)
    finally:
        consumer.stop()
        await task


async def quiet_for(consumer: AsyncConsumer, seconds: float) -> list[Item]:
    """Everything ``consumer`` delivers within ``seconds``."""
    got: list[Item] = []
    task = asyncio.create_task(consumer.run(got.append))
    await asyncio.sleep(seconds)
    consumer.stop()
    await task
    return got


# --------------------------------------------------------------------------------------------


def test_enqueue_returns_a_receipt_and_the_consumer_reads_the_item_back(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await pxq.AsyncClient.connect(cluster.config_path) as client:
            before_ms = time.time_ns() // 1_000_000
            receipts = {}
            for i in range(4):
                payload = f"hello {i}".encode()
                receipts[payload] = await client.enqueue("basic", payload, key=f"user-{i}")
            more = await asyncio.gather(
                *(client.enqueue("basic", f"more {i}".encode()) for i in range(4))
            )
            receipts.update({f"more {i}".encode(): r for i, r in enumerate(more)})
            for r in receipts.values():
                assert isinstance(r, pxq.Receipt)
                assert r.topic == "basic"
                assert 0 <= r.queue < 4

            got: dict[bytes, Item] = {}

            async def handle(item: Item) -> None:
                got[item.payload] = item

            async with client.consumer("g", "basic", options=FAST) as consumer:
                await consume_until(
                    consumer, handle, lambda: len(got) >= len(receipts), "all items"
                )
            assert set(got) == set(receipts)
            for payload, item in got.items():
                r = receipts[payload]
                assert (item.topic, item.queue, item.offset) == (r.topic, r.queue, r.offset)
                assert item.attempt == 0
                assert item.kind == ""
                assert before_ms - 5000 <= item.enqueued_ms <= time.time_ns() // 1_000_000 + 5000
            assert got[b"hello 2"].key == b"user-2"
            assert got[b"more 0"].key == b""  # no key when none is given

    run_async(body())


def test_a_restarted_consumer_does_not_see_committed_items_again(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            await client.enqueue_many(
                "restart", [(f"k{i}", f"first {i}".encode()) for i in range(6)]
            )
            seen: list[bytes] = []
            async with client.consumer("g", "restart", options=FAST) as first:
                await consume_until(
                    first, lambda item: seen.append(item.payload), lambda: len(seen) >= 6, "6"
                )
            assert sorted(seen) == sorted(f"first {i}".encode() for i in range(6))

            async with client.consumer("g", "restart", options=FAST) as second:
                await client.enqueue("restart", b"marker", key="k0")
                again: list[bytes] = []
                await consume_until(
                    second,
                    lambda item: again.append(item.payload),
                    lambda: b"marker" in again,
                    "the marker",
                )
            assert again == [b"marker"]

    run_async(body())


def test_a_failing_item_moves_through_the_retry_level_to_the_dead_letter_topic(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            poison = await client.enqueue("fails", b"poison", key="a")
            flaky = await client.enqueue("fails", b"flaky", key="b")
            good = await client.enqueue("fails", b"good", key="c")
            calls: list[tuple[bytes, int, str]] = []

            def handle(item: Item) -> None:  # a plain function: runs in a worker thread
                calls.append((item.payload, item.attempt, item.topic))
                if item.payload == b"poison" or (item.payload == b"flaky" and item.attempt == 0):
                    raise ValueError("handler failed")

            async with client.consumer("g", "fails", options=FAST) as consumer:
                await consume_until(
                    consumer,
                    handle,
                    lambda: {(b"poison", 1), (b"flaky", 1)} <= {(p, a) for p, a, _ in calls},
                    "the retries",
                )
            attempts = {p: sorted(a for q, a, _ in calls if q == p) for p, _, _ in calls}
            assert attempts == {b"good": [0], b"flaky": [0, 1], b"poison": [0, 1]}
            assert (b"poison", 1, "fails.retry.g.1") in calls

            dead = await client.peek("fails.dlq.g", "g", poison.queue, offset=0)
            assert [(i.payload, i.attempt) for i in dead] == [(b"poison", 2)]
            for r in (flaky, good):
                if r.queue != poison.queue:
                    assert await client.peek("fails.dlq.g", "g", r.queue, offset=0) == []

    run_async(body())


RETRY_LATE_MS_MAX = 250
"""How late a moved item may reach its next retry level on the real runtime, beyond the level's
delay: measured at most ~100 ms on a busy 2-core box (docs/simulation.md states the figures),
before the fix up to ~500 ms (the idle level's poll backoff)."""


def test_retry_levels_are_honoured_within_their_delay_plus_the_bound(
    cluster: BackgroundCluster,
) -> None:
    # Default consumer options on purpose: an idle level's stream polls at most every 500 ms,
    # which used to come on top of the delay; the Retry now polls the next level at once.
    # Items fail one at a time (enqueued 150 ms apart): the bound is per move. Items failing
    # together queue behind each other on a level (its Retries are serial replicated writes):
    # docs/simulation.md gives those figures too.
    delays_s = (0.050, 0.100)
    count = 12

    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            seen: dict[tuple[bytes, int], float] = {}

            def handle(item: Item) -> None:
                seen[(item.payload, item.attempt)] = time.monotonic()
                if item.attempt < len(delays_s):
                    raise ValueError("fail, to the next level")

            async with client.consumer("g", "delays") as consumer:
                task = asyncio.create_task(consumer.run(handle))
                for i in range(count):
                    await client.enqueue("delays", f"d{i}".encode(), key=f"k{i}")
                    await asyncio.sleep(0.150)
                await wait_for(
                    lambda: sum(1 for _, a in seen if a == len(delays_s)) == count,
                    "every item through both levels",
                )
                consumer.stop()
                await task
            late_ms = sorted(
                (seen[(p, a + 1)] - seen[(p, a)] - delays_s[a]) * 1000
                for p, a in seen
                if a < len(delays_s)
            )
            print(
                f"retry lateness over {len(late_ms)} moves: min {late_ms[0]:.1f} / median "
                f"{statistics.median(late_ms):.1f} / max {late_ms[-1]:.1f} ms"
            )
            assert len(late_ms) == 2 * count
            # Never before the delay (the store's clock is this machine's; 2 ms of rounding),
            # and within the bound after it.
            assert late_ms[0] >= -2 and late_ms[-1] <= RETRY_LATE_MS_MAX, late_ms

    run_async(body())


def test_per_key_order_holds_for_concurrent_enqueues_and_concurrent_handlers(
    cluster: BackgroundCluster,
) -> None:
    keys = [f"key-{k}" for k in range(5)]
    per_key = 30

    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            calls = [(key, f"{key}/{i}".encode()) for i in range(per_key) for key in keys]
            receipts = await asyncio.gather(
                *(client.enqueue("order", payload, key=key) for key, payload in calls)
            )
            for key in keys:
                mine = [r for (k, _), r in zip(calls, receipts, strict=True) if k == key]
                assert len({r.queue for r in mine}) == 1  # one key, one queue
                offsets = [r.offset for r in mine]
                assert offsets == sorted(offsets)  # call order is offset order
                assert len(set(offsets)) == per_key

            rng = random.Random(7)
            handled: dict[str, list[int]] = {key: [] for key in keys}
            running: set[str] = set()
            overlaps: list[str] = []
            peak = 0

            async def handle(item: Item) -> None:
                nonlocal peak
                key = item.key.decode()
                if key in running:
                    overlaps.append(key)
                running.add(key)
                peak = max(peak, len(running))
                await asyncio.sleep(rng.random() * 0.002)
                handled[key].append(int(item.payload.split(b"/")[1]))
                running.discard(key)

            async with client.consumer("g", "order", options=FAST, concurrency=8) as consumer:
                await consume_until(
                    consumer,
                    handle,
                    lambda: sum(map(len, handled.values())) >= len(calls),
                    "every item",
                )
            assert overlaps == []  # one key at a time
            assert peak > 1  # but different keys concurrently
            for key in keys:
                assert handled[key] == list(range(per_key))

    run_async(body())


def test_enqueue_many_returns_receipts_in_input_order_and_failures_per_item(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            items = [(f"k{i % 3}", f"m{i}".encode()) for i in range(300)]
            receipts = await client.enqueue_many("many", items)
            assert len(receipts) == 300
            by_queue: dict[int, list[int]] = {}
            for (key, _), r in zip(items, receipts, strict=True):
                by_queue.setdefault(r.queue, []).append(r.offset)
                assert r.queue == receipts[int(key[1:])].queue
            for offsets in by_queue.values():
                assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)

            too_big = bytes(2 * 1024 * 1024)  # above batch_bytes_max (1 MiB)
            mixed = await client.enqueue_many(
                "many",
                [("a", b"fine"), ("b", too_big), (None, b"fine too")],
                return_exceptions=True,
            )
            assert isinstance(mixed[0], pxq.Receipt) and isinstance(mixed[2], pxq.Receipt)
            assert isinstance(mixed[1], pxq.EnqueueFailed) and mixed[1].code == "too_large"
            with pytest.raises(pxq.EnqueueFailed):
                await client.enqueue_many("many", [("a", b"x"), ("b", too_big)])

    run_async(body())


def test_unknown_topic_is_a_definite_failure(cluster: BackgroundCluster) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            with pytest.raises(pxq.EnqueueFailed) as failed:
                await client.enqueue("no-such-topic", b"x")
            assert failed.value.code == "unknown_topic"
            assert isinstance(failed.value, pxq.PxqError)
            assert not isinstance(failed.value, pxq.OutcomeUnknown)
            with pytest.raises(TypeError):
                await client.enqueue("basic", "text is not bytes")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                client.consumer("no-such-group")
            with pytest.raises(pxq.RequestFailed):
                await client.seek("basic", "no-such-group", 0, offset=0)

    run_async(body())


def test_enqueue_with_the_cluster_down_is_a_definite_failure_naming_the_addresses(
    tmp_path: Path,
) -> None:
    # Issue 14: every connection refused used to be "outcome unknown" after the whole call
    # timeout; nothing was sent, so it is definitely not enqueued.
    async def body() -> None:
        client = await AsyncClient.connect(
            dead_config(tmp_path), request_timeout_ms=100, call_timeout_ms=600
        )
        async with client:
            started = time.monotonic()
            with pytest.raises(pxq.EnqueueFailed) as failed:
                await client.enqueue("t", b"x", key="k")
            assert not isinstance(failed.value, pxq.OutcomeUnknown)
            assert failed.value.code == "unavailable"
            for host, port in client.config.node_addresses().values():
                assert f"{host}:{port}: connection refused" in str(failed.value)
            assert time.monotonic() - started < 3.0
        with pytest.raises(pxq.ClientClosed):
            await client.enqueue("t", b"x")

    run_async(body())


def test_batches_are_committed_only_when_the_loop_body_finishes(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            await client.enqueue_many("batches", [("k", f"b{i}".encode()) for i in range(5)])
            async with client.consumer("g", "batches", options=FAST) as consumer:
                first: list[int] = []
                with pytest.raises(RuntimeError, match="body crashed"):
                    async for batch in consumer.batches():
                        first = [item.offset for item in batch]
                        raise RuntimeError("body crashed")
                assert first and first[0] == 0

                # Iterating again starts over from the committed cursor: the batch comes back.
                seen: list[int] = []
                async for batch in consumer.batches():
                    seen += [item.offset for item in batch]
                    if len(seen) >= 5:
                        consumer.stop()  # this batch is still committed
                assert seen == [0, 1, 2, 3, 4]
            assert await client.peek("batches", "g", 0) == []  # cursor past offset 4

            # batch.fail(item): committed past it, and the item moves to the retry level.
            await client.enqueue_many("batches", [("k", b"ok"), ("k", b"bad")])
            async with client.consumer("g", "batches", options=FAST) as consumer:
                async for batch in consumer.batches():
                    for item in batch:
                        if item.payload == b"bad":
                            batch.fail(item)
                            consumer.stop()
            assert await client.peek("batches", "g", 0) == []
            retried = await client.peek("batches.retry.g.1", "g", 0, offset=0)
            assert [(i.payload, i.attempt) for i in retried] == [(b"bad", 1)]

    run_async(body())


def test_seek_replays_items_to_a_running_consumer(cluster: BackgroundCluster) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            await client.enqueue_many("seek", [("k", f"s{i}".encode()) for i in range(5)])
            offsets: list[int] = []
            async with client.consumer("g", "seek", options=FAST) as consumer:
                task = asyncio.create_task(consumer.run(lambda item: offsets.append(item.offset)))
                await wait_for(lambda: len(offsets) >= 5, "the first pass")
                await wait_for(
                    lambda: all(v.committed == 5 for v in consumer.machine.streams().values()),
                    "the commit",
                )
                result = await client.seek("seek", "g", 0, offset=2)
                assert result == pxq.SeekResult(positions={0: 2}, forward={})
                await wait_for(lambda: len(offsets) >= 8, "the replay")
                consumer.stop()
                await task
            assert offsets == [0, 1, 2, 3, 4, 2, 3, 4]

            # By time: everything enqueued from now on; before: the whole queue.
            assert await client.seek("seek", "g", offset=0) == pxq.SeekResult(
                positions={0: 0}, forward={}
            )
            assert [i.offset for i in await client.peek("seek", "g", 0)] == [0, 1, 2, 3, 4]
            later = await client.seek("seek", "g", 0, time_ms=time.time_ns() // 1_000_000 + 60_000)
            # Forward past five items the group had not consumed: the result says so.
            assert later == pxq.SeekResult(positions={0: 5}, forward={0: 0})
            # A rewind on the store's time: the last minute holds all five items; "back 0"
            # is past them all and moves nothing (a rewind never goes forward): the cursor
            # is set where it was, and listed.
            assert await client.seek("seek", "g", 0, back_ms=60_000) == pxq.SeekResult(
                positions={0: 0}, forward={}
            )
            assert await client.seek("seek", "g", back_ms=0) == pxq.SeekResult(
                positions={0: 0}, forward={}
            )
            with pytest.raises(ValueError, match="exactly one"):
                await client.seek("seek", "g", 0, offset=1, back_ms=1)

    run_async(body())


def test_blocking_client_enqueues_and_consumes_from_plain_threads(
    cluster: BackgroundCluster,
) -> None:
    with pxq.Client(cluster.config_path) as client:
        receipts = [client.enqueue("sync", f"p{i}".encode(), key="k") for i in range(3)]
        assert [r.offset for r in receipts] == [0, 1, 2]
        more = client.enqueue_many("sync", [("k", b"p3"), ("k", b"p4")])
        assert [r.offset for r in more] == [3, 4]

        got: list[bytes] = []
        with client.consumer("g", "sync", options=FAST) as consumer:
            safety = threading.Timer(WAIT_S, consumer.stop)
            safety.start()
            try:
                for batch in consumer.batches():
                    got += [item.payload for item in batch]
                    if len(got) >= 5:
                        consumer.stop()
            finally:
                safety.cancel()
        assert got == [b"p0", b"p1", b"p2", b"p3", b"p4"]

        client.enqueue("sync", b"last", key="k")
        handled: list[tuple[bytes, str]] = []
        with client.consumer("g", "sync", options=FAST) as consumer:

            def handle(item: Item) -> None:
                handled.append((item.payload, threading.current_thread().name))
                consumer.stop()  # safe from the handler's thread

            safety = threading.Timer(WAIT_S, consumer.stop)
            safety.start()
            try:
                consumer.run(handle)
            finally:
                safety.cancel()
        assert [p for p, _ in handled] == [b"last"]
        assert handled[0][1] != threading.current_thread().name
    with pytest.raises(pxq.ClientClosed):
        client.enqueue("sync", b"after close")


def test_import_pxq_stays_light_and_reexports_the_client_lazily() -> None:
    code = (
        "import sys, pxq\n"
        "heavy = [m for m in ('asyncio', 'net', 'net.client.api', 'lmdb') if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
        "import net.client.api as c, net.client.blocking as b\n"
        "names = ['AsyncClient', 'Receipt', 'OutcomeUnknown', 'EnqueueFailed',\n"
        "         'PxqError', 'Item', 'Batch', 'RequestFailed', 'ClientClosed']\n"
        "assert all(getattr(pxq, n) is getattr(c, n) for n in names)\n"
        "assert pxq.Client is b.Client and pxq.BlockingConsumer is b.BlockingConsumer\n"
        "assert issubclass(pxq.OutcomeUnknown, pxq.PxqError)\n"
        "assert issubclass(pxq.EnqueueFailed, pxq.PxqError)\n"
        "try:\n    pxq.NoSuchName\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_history_run_refuses_a_topic_whose_queues_held_items(cluster: BackgroundCluster) -> None:
    """The history checkers need every queue to start at offset 0: ``HistoryRun.start`` looks
    at the queues' end offsets, so items consumed (or removed by retention) count too."""
    from net.tools.history_run import HistoryRun, RunOptions
    from pxq.check.history import HistoryWriter

    async def body() -> None:
        async with await pxq.AsyncClient.connect(cluster.config_path) as client:
            receipt = await client.enqueue("held", b"before the run", key="k")
        run = HistoryRun(
            cluster.config, HistoryWriter(io.StringIO()), RunOptions(topic="held", producers=1)
        )
        try:
            with pytest.raises(RuntimeError, match=r"held items already \(end offset") as info:
                await run.start()
            assert f"queue {receipt.queue} of 'held'" in str(info.value)
        finally:
            await run.close()

    run_async(body())
