"""Shared helpers of the client tests (no tests here): a generated cluster configuration on
free loopback ports, and a ``LocalCluster`` running on an event loop in a background thread,
so a test can use the blocking client, its own event loop or a subprocess against it.

Every wait is bounded: cluster start and master election by ``START_TIMEOUT_S``, coroutines
run on the cluster's loop by ``CALL_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from net.cluster.inprocess import LocalCluster
from pxq.config import ClusterConfig, loads_config

T = TypeVar("T")

START_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
REPLICAS = 3


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_toml(ports: list[int], topics: str, *, linger_ms: int = 1) -> str:
    """A one-store cluster of ``len(ports)`` replicas (2 Paxos groups) with ``topics`` (TOML
    ``[[topics]]`` tables) appended."""
    lines = [
        "[cluster]",
        'name = "client-test"',
        "[batching]",
        f"linger_ms = {linger_ms}",
        "[[stores]]",
        'name = "s0"',
        "groups = 2",
    ]
    for i, port in enumerate(ports):
        lines += ["[[stores.replicas]]", f'node = "n{i}"', f"port = {port}"]
    return "\n".join(lines) + "\n" + topics


class BackgroundCluster:
    """A ``LocalCluster`` of ``toml`` on its own event loop in a daemon thread."""

    def __init__(self, root: Path, toml: str) -> None:
        self.root = root
        self.config: ClusterConfig = loads_config(toml, file="<client test>")
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(toml)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="test-cluster", daemon=True
        )
        self._thread.start()
        try:
            self.cluster = self.run(LocalCluster.start(self.config, root / "data"))
            self.run(self.cluster.wait_for_masters(timeout_s=START_TIMEOUT_S))
        except BaseException:
            self.stop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            self.run(cluster.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


def start_cluster(
    tmp_path_factory: pytest.TempPathFactory, name: str, topics: str
) -> Iterator[BackgroundCluster]:
    """The body of a module-scoped cluster fixture."""
    root = tmp_path_factory.mktemp(name)
    cluster = BackgroundCluster(root, cluster_toml(free_ports(REPLICAS), topics))
    try:
        yield cluster
    finally:
        cluster.stop()


def dead_config(tmp_path: Path) -> Path:
    """A cluster file whose replicas' ports have nothing listening (a cluster that is down)."""
    toml = cluster_toml(
        free_ports(REPLICAS),
        '[[topics]]\nname = "t"\nqueues = 2\n[[topics.consumer_groups]]\nname = "g"\n',
    )
    path = tmp_path / "dead.toml"
    path.write_text(toml)
    return path


def run_async(coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop, failing if it takes longer than ``timeout_s``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())
