"""Cluster identity and failing fast (issue 14, items 1 and 2), on real sockets on 127.0.0.1.

Behaviours checked: the failure of issue 14 reproduced (a second cluster on the ports of a
running one: ``up`` used to print "up", its probe answered by the other cluster) and fixed
(every port is checked before anything starts; a probe answered by a node of another cluster
fails the start naming both); a client of another cluster (another name, or the same name and
another id) is refused by every node with an error naming both, definitely (nothing sent);
a client whose cluster file routes differently (another queue count) refuses to route,
naming what differs; a node stamps its cluster's id into its data dir and refuses to start
on another cluster's; a node that accepts connections but never answers leaves an enqueue's
outcome unknown (only refusals at connect are definite); arguments of the wrong type raise
``TypeError`` at once with nothing sent; the routing fingerprint and its differences; the
``[cluster] id`` key.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import pxq
from net.client.api import AsyncClient
from net.client.connection import ClusterIdentity, NodeClient
from net.cluster import processes
from net.cluster.inprocess import LocalCluster
from net.cluster.probe import find_masters
from net.errors import DataDirMismatch, ForeignCluster
from net.node.storage import LmdbStorage
from net.wire.envelope import ClientHello, Welcome
from net.wire.framing import FrameDecoder, encode_frame
from pxq import codec
from pxq.config import ClusterConfig, ConfigError, loads_config
from pxq.config.identity import config_fingerprint, metadata_differences, metadata_text
from tests.test_client_support import cluster_toml, free_ports, run_async
from tests.test_net_support import FAST

TOPICS = '[[topics]]\nname = "t"\nqueues = 2\n[[topics.consumer_groups]]\nname = "g"\n'


def config_of(ports: list[int], *, cluster_id: str = "", queues: int = 2) -> ClusterConfig:
    text = cluster_toml(ports, TOPICS.replace("queues = 2", f"queues = {queues}"))
    if cluster_id:
        text = text.replace('name = "client-test"', f'name = "client-test"\nid = "{cluster_id}"')
    return loads_config(text, file="<test>")


async def started(config: ClusterConfig, data: Path) -> LocalCluster:
    cluster = await LocalCluster.start(config, data, FAST)
    await cluster.wait_for_masters(timeout_s=10.0)
    return cluster


# -- the [cluster] id and the routing fingerprint ------------------------------------------------


def test_the_cluster_id_is_optional_and_checked() -> None:
    ports = [7001]
    assert config_of(ports).id == ""
    assert config_of(ports, cluster_id="c-0123abcd").id == "c-0123abcd"
    text = cluster_toml(ports, TOPICS).replace('name = "client-test"', 'name = "x"\nid = "a b"')
    with pytest.raises(ConfigError, match=r"cluster\.id.*only letters"):
        loads_config(text, file="<test>")


def test_the_fingerprint_covers_routing_and_differences_are_named() -> None:
    a, b = config_of([7001, 7002, 7003]), config_of([7011, 7012, 7013], queues=4)
    assert config_fingerprint(a) == config_fingerprint(config_of([7011, 7012, 7013]))  # ports
    assert config_fingerprint(a) != config_fingerprint(b)
    assert metadata_differences(metadata_text(b), metadata_text(a)) == [
        "topics.t.queues: 4 in this file, 2 in the cluster"
    ]


# -- issue 14: a second cluster on the ports of a running one ----------------------------------


def test_cluster_up_on_the_ports_of_a_running_cluster_fails_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = free_ports(3)
    ours = config_of(ports, cluster_id="c-ours")
    home = processes.ClusterHome(tmp_path / "home")
    (tmp_path / "home").mkdir()
    theirs_file = tmp_path / "home" / "cluster.toml"
    theirs_file.write_text(
        cluster_toml(ports, TOPICS).replace(
            'name = "client-test"', 'name = "client-test"\nid = "c-theirs"'
        )
    )

    async def body() -> None:
        cluster = await started(ours, tmp_path / "ours")
        try:
            # Every port is checked first: a busy one names the node, nothing starts.
            with pytest.raises(processes.PortsBusy, match=rf"n0 \(127.0.0.1:{ports[0]}\)"):
                await processes.up(home, theirs_file, timeout_s=10.0, tls=False)
            assert home.pid_files() == {}
            # Were a port taken after the check (a race), the probe would be answered by the
            # other cluster: that fails the start, naming both clusters, instead of "up".
            monkeypatch.setattr(processes, "busy_addresses", lambda config, **_: [])
            with pytest.raises(processes.NotOurNode) as not_ours:
                await processes.up(home, theirs_file, timeout_s=10.0, tls=False)
            message = str(not_ours.value)
            assert "'client-test' (id c-ours)" in message
            assert "'client-test' (id c-theirs)" in message
            assert home.pid_files() == {}  # what it started was stopped
            # The running cluster did not notice.
            assert await find_masters(ours, FAST)
        finally:
            await cluster.stop()

    run_async(body(), timeout_s=60.0)


def test_a_client_of_another_cluster_is_refused_naming_both(tmp_path: Path) -> None:
    ports = free_ports(3)
    ours = config_of(ports, cluster_id="c-ours")

    async def body() -> None:
        cluster = await started(ours, tmp_path / "data")
        try:
            for other in (config_of(ports, cluster_id="c-theirs"), config_of(ports)):
                host, port = ours.node_addresses()["n0"]
                with pytest.raises(ForeignCluster) as refused:
                    await NodeClient.connect(
                        host, port, cluster=ClusterIdentity.of(other), config=FAST, node="n0"
                    )
                assert "(id c-ours)" in str(refused.value)
                assert other.id in str(refused.value)  # "no id" for the second
                # An enqueue with that file: definitely not enqueued, nothing sent.
                async with await AsyncClient.connect(
                    other, request_timeout_ms=200, call_timeout_ms=3000, net_config=FAST
                ) as client:
                    with pytest.raises(pxq.EnqueueFailed, match=r"\(id c-ours\)"):
                        await client.enqueue("t", b"x", key="k")
                # The probe of that file does not take our masters for its own.
                with pytest.raises(ForeignCluster):
                    await find_masters(other, FAST)
            async with await AsyncClient.connect(ours, net_config=FAST) as client:
                # Calls made while the first one verifies the cluster keep their order.
                tasks = [
                    asyncio.create_task(client.enqueue("t", str(i).encode(), key="k"))
                    for i in range(20)
                ]
                receipts = await asyncio.gather(*tasks)
                assert [r.offset for r in receipts] == list(range(20))
        finally:
            await cluster.stop()

    run_async(body(), timeout_s=60.0)


def test_a_client_whose_file_routes_differently_refuses_to_route(tmp_path: Path) -> None:
    ports = free_ports(3)
    ours = config_of(ports, cluster_id="c-ours")
    stale = config_of(ports, cluster_id="c-ours", queues=4)  # same cluster, other queue count

    async def body() -> None:
        cluster = await started(ours, tmp_path / "data")
        try:
            async with await AsyncClient.connect(stale, net_config=FAST) as client:
                # A consumer made before any call learns the mismatch when it starts.
                consumer = client.consumer("g")
                with pytest.raises(pxq.ClusterMismatch):
                    async for _ in consumer.batches():
                        pass
                await consumer.close()
            async with await AsyncClient.connect(stale, net_config=FAST) as client:
                started_at = time.monotonic()
                with pytest.raises(pxq.ClusterMismatch) as mismatch:
                    await client.enqueue("t", b"x", key="k")
                assert time.monotonic() - started_at < 2.0
                assert mismatch.value.code == "cluster_mismatch"
                assert isinstance(mismatch.value, pxq.EnqueueFailed)
                assert mismatch.value.differences == [
                    "topics.t.queues: 4 in this file, 2 in the cluster"
                ]
                # Every later call says the same at once; consumers are refused too.
                with pytest.raises(pxq.ClusterMismatch):
                    await client.enqueue("t", b"y", key="k")
                with pytest.raises(pxq.ClusterMismatch):
                    client.consumer("g")
                with pytest.raises(pxq.ClusterMismatch):
                    await client.seek("t", "g", 0, offset=0)
            async with await AsyncClient.connect(ours, net_config=FAST) as client:
                assert await client.peek("t", "g", 0, offset=0) == []  # nothing got in
                assert await client.peek("t", "g", 1, offset=0) == []
        finally:
            await cluster.stop()

    run_async(body(), timeout_s=60.0)


# -- the id stored with the data ----------------------------------------------------------------


def test_a_data_dir_keeps_its_cluster_id(tmp_path: Path) -> None:
    def open_as(cluster_id: str) -> None:
        LmdbStorage.open(
            tmp_path, cluster="local", node="s0", config=FAST, cluster_id=cluster_id
        ).close()

    open_as("")  # written before clusters had ids
    open_as("c-first")  # takes the first id it is given
    assert '"cluster_id": "c-first"' in (tmp_path / "pxq-node.json").read_text()
    open_as("c-first")
    for other in ("c-second", ""):
        with pytest.raises(DataDirMismatch, match=r"cluster 'local' \(id c-first\)"):
            open_as(other)


# -- what is definite and what is not ---------------------------------------------------------


def test_a_node_that_accepts_and_never_answers_leaves_the_outcome_unknown(tmp_path: Path) -> None:
    # Only a refusal before anything was sent is definite: a call that reached a node which
    # then went silent may have been applied.
    config = config_of(free_ports(3))
    welcome = encode_frame(
        Welcome(node="n0", cluster=config.name, cluster_id=""), frame_bytes_max=1024
    )
    calls = 0

    async def silent_node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        decoder = FrameDecoder(frame_bytes_max=1 << 20)
        while data := await reader.read(65536):
            for payload in decoder.feed(data):
                if isinstance(codec.decode(payload), ClientHello):
                    writer.write(welcome)
                else:
                    calls += 1  # a Call: swallowed

    async def body() -> None:
        servers = [
            await asyncio.start_server(silent_node, host, port)
            for host, port in config.node_addresses().values()
        ]
        try:
            async with await AsyncClient.connect(
                config, request_timeout_ms=100, call_timeout_ms=600, net_config=FAST
            ) as client:
                with pytest.raises(pxq.OutcomeUnknown):
                    await client.enqueue("t", b"x", key="k")
            assert calls > 0
        finally:
            for server in servers:
                server.close()

    run_async(body())


def test_wrong_argument_types_raise_at_once_and_send_nothing(tmp_path: Path) -> None:
    config = config_of(free_ports(3))  # nothing listens: a call that went out would fail

    async def body() -> None:
        async with await AsyncClient.connect(config, net_config=FAST) as client:
            started_at = time.monotonic()
            with pytest.raises(TypeError, match="kind: expected str, got int"):
                await client.enqueue("t", b"x", kind=5)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="topic: expected str"):
                await client.enqueue(b"t", b"x")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="payload: expected bytes"):
                await client.enqueue("t", "text")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="key: expected bytes, str or None"):
                await client.enqueue("t", b"x", key=5)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="key"):  # the third item: nothing sent
                await client.enqueue_many("t", [("a", b"1"), ("b", b"2"), (3, b"3")])  # type: ignore[list-item]
            with pytest.raises(TypeError, match="offset: expected int or None"):
                await client.seek("t", "g", 0, offset="0")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match=r"queue: 't' has queues 0\.\.1"):
                await client.seek("t", "g", 7, offset=0)
            with pytest.raises(TypeError, match="queue: expected int"):
                await client.peek("t", "g", True)
            with pytest.raises(TypeError, match="concurrency: expected int"):
                client.consumer("g", concurrency=1.5)  # type: ignore[arg-type]
            assert time.monotonic() - started_at < 0.5
            assert client.unreachable() == {}  # no connection was even tried
        with pytest.raises(TypeError, match="call_timeout_ms"):
            AsyncClient(config, call_timeout_ms="10")  # type: ignore[arg-type]

    run_async(body())
