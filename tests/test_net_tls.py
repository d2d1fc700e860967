"""TLS and authorisation on real sockets (``net.tls``, ``pxq.access`` in ``NodeRunner``).

Behaviours checked, on a three-replica ``LocalCluster`` with ``[tls]`` on: the material is
private (directory 0700, files 0600); the replicas elect over mutual TLS (their links carry the
nodes' certificate identities), on asyncio's loop and on uvloop, and the admin client
produces and consumes; a connection without a certificate, or with one of another CA, gets no
answer; a ``Hello(node="s1")`` is refused (with a logged reason) on a connection whose
certificate says ``client:mallory`` or ``node:s2``, while a node's own certificate is accepted;
a client that expects node s0 refuses a server whose certificate names s1; a login token
authenticates as its principal (the file holds only its digest), an unknown token is refused
(``LoginRefused``, logged), a connection with neither certificate nor token gets no answer,
and a token never makes a replica; a principal
without consume permission gets a definite ``permission_denied`` naming
``consume:events/default`` for a forged ``CommitCursor`` (the group's cursor does not move)
and for a ``Get``, and ``PermissionDenied`` from the client library; one without produce
permission for a topic is refused; one with the permissions (wildcards) is served; a
consumer whose principal lacks ``locks`` or ``consume`` says which (``AsyncConsumer.denied``).
Issue 13: "a connection that sends Hello(node="s1", cluster="local") is accepted as replica
s1" and "one forged commit made a group skip 20 items".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from net.client.api import AsyncClient, PermissionDenied
from net.client.connection import ClusterIdentity, NodeClient
from net.cluster.inprocess import LocalCluster
from net.config import NetConfig
from net.errors import LoginRefused, NetError, PeerIdentityMismatch
from net.node.transport import ConnKind
from net.tls import (
    client_contexts,
    client_identity,
    create_ca,
    ensure_cluster_material,
    issue,
    node_contexts,
    node_identity,
)
from net.wire.envelope import Call, Hello, Login, LoginReply
from net.wire.framing import decode_payload, encode_frame
from net.wire.loop import run as run_on_uvloop
from pxq import codec
from pxq.access import token_digest
from pxq.config import ClusterConfig, load_config
from pxq.store.messages import CommitCursor, Enqueue, Get, GetOk, Item, StoreError
from tests.test_net_cluster import STORE, TOPIC, cluster_toml, free_ports
from tests.test_net_support import FAST, run_async, wait_until

T = 5.0
PRINCIPALS = """
[tls]

[[principals]]
name = "producer"
produce = ["events"]

[[principals]]
name = "worker"
consume = ["events/*"]
produce = ["*"]
"""


def tls_cluster(tmp_path: Path) -> ClusterConfig:
    """A three-replica store with ``[tls]`` on (material created) and two principals."""
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(free_ports(3)) + PRINCIPALS, encoding="utf-8")
    config = load_config(path)
    ensure_cluster_material(config)
    for name in ("producer", "worker", "mallory"):
        issue(Path(config.tls.dir), client_identity(name))
    return config


def client_config(config: ClusterConfig, identity: str = "admin") -> NetConfig:
    return dataclasses.replace(FAST, tls=client_contexts(config, identity=identity))


async def with_cluster(
    config: ClusterConfig, data: Path, body: Callable[[LocalCluster], Awaitable[None]]
) -> None:
    cluster = await LocalCluster.start(config, data, client_config(config))
    try:
        await cluster.wait_for_masters(timeout_s=10.0)
        await body(cluster)
    finally:
        await cluster.stop()


async def call_as(
    cluster: LocalCluster, node: str, request: object, identity: str = "admin"
) -> object:
    host, port = cluster.address_of(node)
    client = await NodeClient.connect(
        host,
        port,
        cluster=ClusterIdentity.of(cluster.config),
        config=client_config(cluster.config, identity),
        node=node,
    )
    try:
        return await client.call(request, timeout_s=T)
    finally:
        await client.close()


async def master(cluster: LocalCluster, queue: int) -> str:
    group = queue % cluster.config.store(STORE).groups
    node = await cluster.master_of(STORE, group)
    assert node is not None
    return node


def test_the_material_is_private_and_every_node_has_its_certificate(tmp_path: Path) -> None:
    config = tls_cluster(tmp_path)
    tls_dir = Path(config.tls.dir)
    assert tls_dir == tmp_path / "tls"  # relative to the cluster file
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    names = sorted(p.name for p in tls_dir.iterdir())
    for node in ("s0", "s1", "s2"):
        assert f"node-{node}.pem" in names and f"node-{node}.key" in names
    assert {"ca.pem", "ca.key", "client-admin.pem", "client-admin.key"} <= set(names)
    for p in tls_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert ensure_cluster_material(config) == []  # nothing missing: nothing re-created


def test_replicas_elect_over_mutual_tls_and_admin_produces_and_consumes(tmp_path: Path) -> None:
    config = tls_cluster(tmp_path)

    async def body(cluster: LocalCluster) -> None:
        # Every inbound peer connection carries the certificate identity of its node.
        for name, runner in cluster.runners.items():
            peers = [c for c in runner._conns if c.kind is ConnKind.PEER]
            assert peers, name
            assert all(c.identity == node_identity(str(c.peer)) for c in peers)
        async with await AsyncClient.connect(config, net_config=client_config(config)) as c:
            receipt = await c.enqueue(TOPIC, b"over tls", key="k")
            items = await c.peek(TOPIC, "default", receipt.queue, offset=receipt.offset)
            assert [i.payload for i in items] == [b"over tls"]

    run_async(with_cluster(config, tmp_path / "data", body))


def test_uvloop_serves_tls_the_same_way(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    config = tls_cluster(tmp_path)

    async def body(cluster: LocalCluster) -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with await AsyncClient.connect(config, net_config=client_config(config)) as c:
            await c.enqueue(TOPIC, b"x", key="k")
            with pytest.raises(PermissionDenied):
                async with await AsyncClient.connect(
                    config, net_config=client_config(config, "mallory")
                ) as m:
                    await m.enqueue(TOPIC, b"x", key="k")

    async def bounded() -> None:
        async with asyncio.timeout(20):
            await with_cluster(config, tmp_path / "data", body)

    run_on_uvloop(bounded())


def test_a_connection_without_a_valid_certificate_gets_no_answer(tmp_path: Path) -> None:
    config = tls_cluster(tmp_path)
    # A certificate that says node:s1, but from another CA.
    other = tmp_path / "other"
    create_ca(other, "test")
    issue(other, node_identity("s1"))
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE
    stranger.load_cert_chain(other / "node-s1.pem", other / "node-s1.key")

    async def body(cluster: LocalCluster) -> None:
        host, port = cluster.address_of("s0")
        with pytest.raises(NetError):  # no TLS at all: no Welcome, nothing sent
            await NodeClient.connect(
                host, port, cluster=ClusterIdentity.of(cluster.config), config=FAST
            )
        data: bytes | None
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=stranger)
            writer.write(encode_frame(Hello(node="s1", cluster="test"), frame_bytes_max=1024))
            await writer.drain()
            # TLS 1.3: the node's refusal of the certificate arrives as an alert.
            data = await asyncio.wait_for(reader.read(1), T)
            writer.close()
        except OSError:  # ssl.SSLError included
            data = None
        assert not data
        runner = cluster.runners["s0"]
        assert not [c for c in runner._conns if c.identity is None]

    run_async(with_cluster(config, tmp_path / "data", body))


@pytest.mark.parametrize("cert", ["client:mallory", "node:s2"])
def test_a_hello_is_believed_only_when_the_certificate_names_that_node(
    tmp_path: Path, cert: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = tls_cluster(tmp_path)
    if cert.startswith("client:"):
        contexts = client_contexts(config, identity=cert.removeprefix("client:"))
    else:
        contexts = node_contexts(config, cert.removeprefix("node:"))
    assert contexts is not None

    async def forged_hello(cluster: LocalCluster, claimed: str) -> bytes:
        host, port = cluster.address_of("s0")
        reader, writer = await asyncio.open_connection(host, port, ssl=contexts.client)
        try:
            writer.write(encode_frame(Hello(node=claimed, cluster="test"), frame_bytes_max=1024))
            await writer.drain()
            return await asyncio.wait_for(reader.read(100), T)  # b"": closed by the node
        finally:
            writer.close()

    async def body(cluster: LocalCluster) -> None:
        with caplog.at_level(logging.WARNING, logger="pxq.net.transport"):
            assert await forged_hello(cluster, "s1") == b""
        assert f"Hello refused: the connection's certificate says {cert}, not node:s1" in (
            caplog.text
        )
        if cert == "node:s2":
            # The same certificate speaking for its own node is a replica.
            host, port = cluster.address_of("s0")
            runner = cluster.runners["s0"]
            before = set(runner._peer_conns.get("s2", {}))
            _, writer = await asyncio.open_connection(host, port, ssl=contexts.client)
            writer.write(encode_frame(Hello(node="s2", cluster="test"), frame_bytes_max=1024))
            await writer.drain()
            await wait_until(
                lambda: set(runner._peer_conns.get("s2", {})) - before, what="the Hello of s2"
            )
            writer.close()

    run_async(with_cluster(config, tmp_path / "data", body))


def test_a_client_refuses_a_node_whose_certificate_names_another(tmp_path: Path) -> None:
    config = tls_cluster(tmp_path)

    async def body(cluster: LocalCluster) -> None:
        host, port = cluster.address_of("s1")
        with pytest.raises(PeerIdentityMismatch, match="is node:s1, not node:s0"):
            await NodeClient.connect(
                host,
                port,
                cluster=ClusterIdentity.of(cluster.config),
                config=client_config(config),
                node="s0",
            )

    run_async(with_cluster(config, tmp_path / "data", body))


def test_a_forged_commit_and_a_get_without_consume_permission_are_refused(
    tmp_path: Path,
) -> None:
    config = tls_cluster(tmp_path)
    queue = 0
    items = tuple(Item(key=b"k%d" % i, payload=b"v") for i in range(20))

    async def body(cluster: LocalCluster) -> None:
        node = await master(cluster, queue)
        ok = await call_as(
            cluster,
            node,
            Enqueue(topic=TOPIC, queue=queue, producer="p", seq=1, items=items),
            "producer",
        )
        assert type(ok).__name__ == "EnqueueOk", ok
        forged = CommitCursor(topic=TOPIC, group="default", queue=queue, cursor=20)
        for request in (
            forged,
            Get(
                topic=TOPIC, group="default", queue=queue, cursor=0, items_max=20, bytes_max=1 << 20
            ),
        ):
            answer = await call_as(cluster, node, request, "producer")
            assert isinstance(answer, StoreError), answer
            assert (answer.code, answer.definite) == ("permission_denied", True)
            assert answer.message == (
                "permission denied: client:producer lacks consume:events/default"
            )
        # The group did not skip anything.
        probe = Get(topic=TOPIC, group="default", queue=queue, cursor=0, items_max=0, bytes_max=0)
        state = await call_as(cluster, node, probe, "producer")  # probes are open
        assert isinstance(state, GetOk) and state.committed == 0
        async with await AsyncClient.connect(
            config, net_config=client_config(config, "producer")
        ) as c:
            with pytest.raises(PermissionDenied) as denied:
                await c.peek(TOPIC, "default", queue, offset=0)
            assert denied.value.permission == "consume:events/default"
            assert denied.value.code == "permission_denied"
        # A principal with consume permission (a wildcard) reads all 20.
        got = await call_as(
            cluster,
            node,
            Get(
                topic=TOPIC, group="default", queue=queue, cursor=0, items_max=20, bytes_max=1 << 20
            ),
            "worker",
        )
        assert isinstance(got, GetOk) and len(got.items) == 20
        assert cluster.runners[node].stats.calls_refused >= 2

    run_async(with_cluster(config, tmp_path / "data", body))


def test_a_principal_without_produce_permission_for_the_topic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    text = cluster_toml(free_ports(3))
    text += '\n[[topics]]\nname = "audit"\nqueues = 2\n' + PRINCIPALS
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    ensure_cluster_material(config)
    issue(Path(config.tls.dir), client_identity("producer"))

    async def body(cluster: LocalCluster) -> None:
        async with await AsyncClient.connect(
            config, net_config=client_config(config, "producer")
        ) as c:
            await c.enqueue(TOPIC, b"allowed", key="k")
            with pytest.raises(PermissionDenied, match="client:producer lacks produce:audit"):
                await c.enqueue("audit", b"refused", key="k")

    run_async(with_cluster(config, tmp_path / "data", body))


def test_a_token_logs_in_as_its_principal_and_a_wrong_or_missing_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "s3cret-token-of-the-shop"
    path = tmp_path / "cluster.toml"
    text = cluster_toml(free_ports(3)) + PRINCIPALS
    text += '\n[[principals]]\nname = "shop"\nproduce = ["events"]\n'
    text += f'token_sha256 = ["{token_digest(token)}"]\n'
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    assert token not in path.read_text(encoding="utf-8")
    ensure_cluster_material(config)
    get = Get(topic=TOPIC, group="default", queue=0, cursor=0, items_max=5, bytes_max=1 << 20)

    def with_token(value: str) -> NetConfig:
        return dataclasses.replace(FAST, tls=client_contexts(config, token=value))

    async def body(cluster: LocalCluster) -> None:
        async with await AsyncClient.connect(config, net_config=with_token(token)) as c:
            await c.enqueue(TOPIC, b"with a token", key="k")
            with pytest.raises(PermissionDenied, match="client:shop lacks consume:events/default"):
                await c.peek(TOPIC, "default", 0, offset=0)
        host, port = cluster.address_of("s0")
        with (
            caplog.at_level(logging.WARNING, logger="pxq.net.transport"),
            pytest.raises(LoginRefused, match="unknown token"),
        ):
            await NodeClient.connect(
                host,
                port,
                cluster=ClusterIdentity.of(cluster.config),
                config=with_token("guess"),
                node="s0",
            )
        assert "Login refused: unknown token" in caplog.text
        # No certificate and no Login: the first Call closes the connection, unanswered.
        bare = dataclasses.replace(FAST, tls=client_contexts(config, token=token))
        assert bare.tls is not None
        reader, writer = await asyncio.open_connection(host, port, ssl=bare.tls.client)
        call = Call(req_id=1, request=codec.encode(get))
        writer.write(encode_frame(call, frame_bytes_max=1 << 20))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), T) == b""
        writer.close()
        # A token never makes a replica: a Hello after the Login is refused.
        reader, writer = await asyncio.open_connection(host, port, ssl=bare.tls.client)
        writer.write(encode_frame(Login(token=token), frame_bytes_max=1 << 20))
        writer.write(encode_frame(Hello(node="s1", cluster="test"), frame_bytes_max=1 << 20))
        await writer.drain()
        with caplog.at_level(logging.WARNING, logger="pxq.net.transport"):
            data = await asyncio.wait_for(reader.read(1000), T)
            assert await asyncio.wait_for(reader.read(100), T) == b""
        writer.close()
        assert decode_payload(data[4:], frame_bytes_max=1 << 20) == LoginReply(
            principal="client:shop"
        )
        assert "certificate says client:shop, not node:s1" in caplog.text

    run_async(with_cluster(config, tmp_path / "data", body))


def test_a_consumer_refused_the_lock_service_or_its_group_says_which_permission(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.toml"
    ports = free_ports(6)
    text = cluster_toml(ports[:3], lock_ports=ports[3:]) + PRINCIPALS
    text += '\n[[principals]]\nname = "locker"\nlocks = true\n'
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    ensure_cluster_material(config)
    for name in ("worker", "locker"):
        issue(Path(config.tls.dir), client_identity(name))

    async def handler(item: object) -> None:
        raise AssertionError(f"nothing may be delivered: {item}")

    async def denied_to(identity: str) -> list[str]:
        net_config = client_config(config, identity)
        async with await AsyncClient.connect(config, net_config=net_config) as c:
            consumer = c.consumer("default")
            task = asyncio.get_running_loop().create_task(consumer.run(handler))
            await wait_until(lambda: consumer.denied, timeout_s=10.0, what="a refusal")
            consumer.stop()
            await task
            return consumer.denied

    async def body(cluster: LocalCluster) -> None:
        async with await AsyncClient.connect(config, net_config=client_config(config)) as c:
            await c.enqueue(TOPIC, b"x", key="k")
        assert await denied_to("worker") == ["locks"]  # consume, but no lock service
        assert (await denied_to("locker"))[0] == "consume:events/default"

    run_async(with_cluster(config, tmp_path / "data", body), timeout_s=40.0)
