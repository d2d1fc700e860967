"""Consumers never stall on slow output: neither a slow reader of ``pxq consume`` nor a slow
handler delays the cursor commits and lease renewals of the consumer's event loop.

Goals (issue 14, item 3):

* ``pxq consume`` piped into a slow reader (1 ms per line) and killed with SIGKILL once 2.5
  batches were read: a second consume redelivers at most the batch that was being printed
  (the consume commits each batch once it is written). Before the fix, stdout was written on the event-loop thread and nothing
  printed was committed: everything came again.
* A handler that runs longer than two leases keeps its queue: the lease is renewed meanwhile,
  so no other consumer of the group is handed the queue (which would redeliver the item being
  handled) and this one gives up nothing. Three handlers: a sync one (worker thread), an async
  one that awaits, and an async one that *blocks* (``time.sleep``), which ``pxq.Client`` runs on
  a loop of its own; before that, it blocked the client's loop past the lease.

Method: a module-scoped in-process cluster (3 store replicas, 3 lock replicas, a 1 s
ownership lease); the CLI runs as a subprocess. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pxq
from pxq.routing import queue_of
from tests.test_client_support import BackgroundCluster, free_ports
from tests.test_net_cluster import cluster_toml

ROOT = Path(__file__).resolve().parent.parent
LEASE_MS = 1000
OWNERSHIP = f"[ownership]\nlease_ms = {LEASE_MS}\nmargin_ms = 200\nrenew_ms = 300\npoll_ms = 200\n"
QUEUES = 4
BATCH_ITEMS = 1000
"""Items per delivery of ``pxq consume`` (``ConsumerSettings.get_items_max``' default)."""
SLOW_S = 2 * LEASE_MS / 1000
"""How long the slow handlers take: two leases."""
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundCluster]:
    ports = free_ports(6)
    toml = cluster_toml(ports[:3], lock_ports=ports[3:]).replace(
        "[[topics]]", OWNERSHIP + "\n[[topics]]", 1
    )
    cluster = BackgroundCluster(tmp_path_factory.mktemp("slow-output"), toml)
    try:
        yield cluster
    finally:
        cluster.stop()


def cli(*args: str) -> tuple[list[str], dict[str, str]]:
    """The command line of ``pxq ARGS`` run from this checkout, and its environment."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return [sys.executable, "-m", "pxq.cli", *args], env


def test_a_consume_killed_behind_a_slow_reader_redelivers_at_most_one_batch(
    cluster: BackgroundCluster,
) -> None:
    config = str(cluster.config_path)
    n = 8000
    with pxq.Client(config) as client:
        client.enqueue_many("events", [(None, f"item-{i}".encode()) for i in range(n)])

    args, env = cli("consume", "--group", "default", "--config", config)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first: list[bytes] = []
    try:
        deadline = time.monotonic() + WAIT_S
        # A reader of about 1 ms per line, killing the consume after a few batches.
        while len(first) < 2.5 * BATCH_ITEMS and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            first.append(line)
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
    first += proc.stdout.read().splitlines(keepends=True)  # what it wrote before the kill
    assert BATCH_ITEMS < len(first) < n, len(first)

    args, env = cli("consume", "--group", "default", "--timeout", "3", "--config", config)
    # The killed consumer's leases run out before the second consume gets its queues.
    second = subprocess.run(args, env=env, capture_output=True, timeout=WAIT_S, check=True)

    def position(line: bytes) -> tuple[bytes, bytes]:
        queue, offset, _ = line.split(b"\t", 2)
        return queue, offset

    printed = collections.Counter(map(position, first))
    again = collections.Counter(map(position, second.stdout.splitlines()))
    assert max(printed.values()) == 1 and max(again.values()) == 1
    redelivered = set(printed) & set(again)
    assert len(set(printed) | set(again)) == n  # nothing lost
    # Before the fix: every printed item (thousands) came again.
    assert len(redelivered) <= BATCH_ITEMS, (len(redelivered), len(printed))


def _key_for(queue: int, tag: str) -> bytes:
    i = 0
    while queue_of(key := f"{tag}-{i}".encode(), QUEUES) != queue:
        i += 1
    return key


def _sync_slow(item: pxq.Item) -> None:
    if item.payload == b"slow":
        time.sleep(SLOW_S)


async def _async_slow(item: pxq.Item) -> None:
    if item.payload == b"slow":
        await asyncio.sleep(SLOW_S)


async def _async_blocking(item: pxq.Item) -> None:
    if item.payload == b"slow":
        time.sleep(SLOW_S)  # blocks its event loop: the mistake this test survives


@pytest.mark.parametrize(
    "slow", [_sync_slow, _async_slow, _async_blocking], ids=["sync", "async", "async-blocking"]
)
def test_a_handler_slower_than_the_lease_keeps_its_queues(
    cluster: BackgroundCluster, slow: Callable[[pxq.Item], object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pxq.client.consumer")
    config = str(cluster.config_path)
    group = "default"
    handled: list[tuple[str, int, int, bytes]] = []
    lock = threading.Lock()

    def make_handler(name: str) -> Callable[[pxq.Item], object]:
        def record(item: pxq.Item) -> None:
            with lock:
                handled.append((name, item.queue, item.offset, item.payload))

        if slow is _sync_slow:

            def sync_handler(item: pxq.Item) -> None:
                _sync_slow(item)
                record(item)

            return sync_handler

        async def async_handler(item: pxq.Item) -> None:
            await slow(item)  # type: ignore[misc]
            record(item)

        return async_handler

    clients = [pxq.Client(config), pxq.Client(config)]
    consumers = [c.consumer(group, name=f"c{i}") for i, c in enumerate(clients)]
    workers = [
        threading.Thread(target=c.run, args=(make_handler(f"c{i}"),), daemon=True)
        for i, c in enumerate(consumers)
    ]
    try:
        for w in workers:
            w.start()
        with pxq.Client(config) as producer:
            # Both consumers joined and the queues are spread once an item of every queue was
            # handled after a settling time (one lease).
            time.sleep(LEASE_MS / 1000)
            tag = f"t{time.monotonic_ns()}"
            producer.enqueue_many("events", [(_key_for(q, tag), b"warm-up") for q in range(QUEUES)])
            deadline = time.monotonic() + WAIT_S
            while sum(1 for h in handled if h[3] == b"warm-up") < QUEUES:
                assert time.monotonic() < deadline, handled
                time.sleep(0.02)
            caplog.clear()
            slow_at = len(handled)
            producer.enqueue_many(
                "events",
                [(_key_for(q, tag), b"slow") for q in range(QUEUES)]
                + [(_key_for(q, tag), b"after") for q in range(QUEUES)],
            )
            deadline = time.monotonic() + WAIT_S
            while sum(1 for h in handled if h[3] == b"after") < QUEUES:
                assert time.monotonic() < deadline, handled
                time.sleep(0.02)
        time.sleep(0.2)  # a late duplicate would show here
        with lock:
            window = handled[slow_at:]
        # Each slow and later item handled once: no queue changed hands while its handler ran.
        positions = collections.Counter((q, o) for _, q, o, _ in window)
        assert max(positions.values()) == 1, window
        assert len(window) == 2 * QUEUES, window
        owner = {q: name for name, q, _, p in window if p == b"slow"}
        assert all(owner[q] == name for name, q, _, _ in window), window
        gave_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
        assert gave_up == []
    finally:
        for c in consumers:
            c.close()
        for w in workers:
            w.join(WAIT_S)
        for client in clients:
            client.close()
