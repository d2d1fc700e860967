"""No lock-out: the connection budgets and timeouts of a node, on real sockets on 127.0.0.1.

Behaviours checked (issue 13: "1,024 silent connections lock a node out"): a flood of silent
connections and of connections that sent one call and went silent, beyond every budget
(overall, or of one address), never keeps a restarted peer from reconnecting nor a new client
from being served; an idle client connection is closed after ``client_idle_timeout_ms``
(while a client with an open call and a silent peer link stay open); a frame left incomplete
is closed after ``partial_frame_timeout_ms``; a client beyond ``connections_per_address_max``
is refused with a logged reason while other addresses are served; a full client budget
evicts the least recently active client; a peer connecting again evicts its oldest
connection beyond ``peer_connections_per_node``; the cluster file's ``[connections]`` table
sets the budgets and timeouts (key-path errors).

Every loopback address is local on Linux, so a socket bound to 127.0.0.2 is "another host"
for the per-address limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from net.config import NetConfig
from net.errors import ConnectRefused
from net.node.runner import NodeRunner
from net.wire.envelope import Hello, Welcome
from net.wire.framing import FrameDecoder, encode_frame
from pxq import codec
from pxq.config import ConnectionsConfig, loads_config
from tests.test_config import BASE, error
from tests.test_net_runner import (
    CLIENT_HELLO,
    call_frame,
    connect,
    decode_replies,
    pings_from,
    recv_all,
)
from tests.test_net_support import (
    CLUSTER,
    Broadcast,
    Count,
    GetCount,
    Hold,
    Incr,
    counter_of,
    make_runner,
    run_async,
    wait_until,
)

T = 5.0  # seconds; every wait below is bounded
SLOW = 60_000  # ms: a timeout that never fires during a test

# Budgets small enough to flood, and timeouts that never fire: what lets the peer and the new
# client in below is the budgets' eviction, not a timeout.
GLOBAL_BUDGETS = NetConfig(
    unclassified_connections_max=6,
    client_connections_max=6,
    connections_per_address_max=1000,
    first_frame_timeout_ms=SLOW,
    client_idle_timeout_ms=SLOW,
    peer_backoff_initial_ms=5,
    peer_backoff_max_ms=50,
    peer_connect_timeout_ms=500,
)
ADDRESS_BUDGETS = NetConfig(
    unclassified_connections_max=1000,
    client_connections_max=1000,
    connections_per_address_max=4,
    first_frame_timeout_ms=SLOW,
    client_idle_timeout_ms=SLOW,
    peer_backoff_initial_ms=5,
    peer_backoff_max_ms=50,
    peer_connect_timeout_ms=500,
)


def socket_from(runner: NodeRunner, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(runner.address, timeout=T, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def is_open(sock: socket.socket) -> bool:
    """True while the node has not closed ``sock`` (nothing is expected to arrive on it)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


_greeted: set[socket.socket] = set()


async def call_once(sock: socket.socket, req_id: int, request: object) -> object:
    """Send one call on a raw client socket (its ClientHello first, the first time) and read
    its reply."""
    hello = b"" if sock in _greeted else CLIENT_HELLO
    _greeted.add(sock)
    sock.send(hello + call_frame(req_id, request))
    data = b""
    while True:
        chunk = await recv_all(sock, until_closed=False)
        data += chunk
        replies = decode_replies(data)
        if replies or not hello or not chunk:  # answered, or closed
            break
    assert [rid for rid, _ in replies] == [req_id]
    return replies[0][1]


def closes_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pxq.net.transport"]


@pytest.mark.parametrize("config", [GLOBAL_BUDGETS, ADDRESS_BUDGETS], ids=["global", "address"])
def test_a_flood_of_silent_connections_never_locks_out_a_peer_or_a_new_client(
    tmp_path: Path, config: NetConfig
) -> None:
    async def main() -> None:
        names = ["n0", "n1"]
        a = make_runner(tmp_path, "n0", peers=names, tick_ms=10, config=config)
        b = make_runner(tmp_path, "n1", peers=names, tick_ms=10, config=config)
        for r in (a, b):
            await r.start()
        book = {"n0": a.address, "n1": b.address}
        for r in (a, b):
            r.update_peers(book)
        await wait_until(lambda: pings_from(a).get("n1", 0) > 0, what="n1's first pings")
        flood: list[socket.socket] = []
        try:
            # The peer goes down, and while it is down (its slot free) a flood comes: three
            # times each budget of connections that never send a byte, then of connections
            # that send one call, read its reply and go silent.
            port = b.address[1]
            await b.stop()
            for _ in range(18):
                flood.append(socket_from(a))
            for i in range(18):
                sock = socket_from(a)
                flood.append(sock)
                # A call refused by the per-address limit leaves a closed socket.
                with contextlib.suppress(AssertionError, ConnectionError):
                    await call_once(sock, i, GetCount())
            await asyncio.sleep(0.05)
            assert a.stats.connections_evicted + a.stats.connections_refused > 0
            # The restarted peer reconnects through the flood...
            b = make_runner(tmp_path, "n1", peers=names, tick_ms=10, config=config, port=port)
            await b.start()
            b.update_peers(book)
            heard = len(counter_of(a).received)
            await wait_until(
                lambda: any(src == "n1" for src, _ in counter_of(a).received[heard:]),
                timeout_s=T,
                what="pings of the restarted n1 at n0",
            )
            await wait_until(lambda: pings_from(b).get("n0", 0) > 0, what="n0's pings at n1")
            # ...and a new client, from an address that did not flood, is served.
            sock = socket_from(a, "127.0.0.2")
            assert await call_once(sock, 1, Incr()) == Count(n=1)
            sock.close()
        finally:
            for sock in flood:
                sock.close()
            await a.stop()
            await b.stop()

    run_async(main())


def test_an_idle_client_connection_is_closed_after_the_idle_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(
        client_idle_timeout_ms=100,
        first_frame_timeout_ms=SLOW,
        peer_backoff_initial_ms=5,
        peer_backoff_max_ms=50,
    )

    async def main() -> None:
        names = ["n0", "n1"]
        a = make_runner(tmp_path, "n0", peers=names, config=config)
        b = make_runner(tmp_path, "n1", peers=names, config=config)
        for r in (a, b):
            await r.start()
        book = {"n0": a.address, "n1": b.address}
        for r in (a, b):
            r.update_peers(book)
        client_b = await connect(b)
        await client_b.call(Broadcast(), T)  # one Ping to n0, then the peer link is silent
        await client_b.close()
        await wait_until(lambda: pings_from(a).get("n1") == 1, what="n1's ping")
        link = b.link("n0")
        assert link is not None and link.connected
        idle = socket_from(a)
        busy = socket_from(a)
        try:
            assert await call_once(idle, 1, GetCount()) == Count(n=0)
            busy.send(CLIENT_HELLO + call_frame(1, Hold()))  # never answered: an open call
            closed = await recv_all(idle, until_closed=True, timeout_s=2.0)
            assert closed == b""
            await asyncio.sleep(0.3)  # three idle timeouts more
            assert is_open(busy)  # a client waiting for a reply is not idle
            assert link.connected and link.connects == 1  # a silent peer is not closed
        finally:
            idle.close()
            busy.close()
            await a.stop()
            await b.stop()

    with caplog.at_level(logging.INFO, logger="pxq.net.transport"):
        run_async(main())
    assert any("client idle for 100 ms" in m for m in closes_logged(caplog))


def test_a_frame_left_incomplete_is_closed_after_the_partial_frame_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(
        partial_frame_timeout_ms=100, client_idle_timeout_ms=SLOW, first_frame_timeout_ms=SLOW
    )

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        sock = socket_from(runner)
        try:
            assert await call_once(sock, 1, GetCount()) == Count(n=0)
            sock.send(call_frame(2, Incr())[:5])  # a slowloris: the frame never completes
            assert await recv_all(sock, until_closed=True, timeout_s=2.0) == b""
            assert counter_of(runner).count == 0  # nothing of the partial frame was stepped
            other = await connect(runner)
            assert await other.call(Incr(), T) == Count(n=1)
            await other.close()
        finally:
            sock.close()
            await runner.stop()

    with caplog.at_level(logging.INFO, logger="pxq.net.transport"):
        run_async(main())
    assert any("frame left incomplete for 100 ms" in m for m in closes_logged(caplog))


def test_clients_beyond_the_per_address_limit_are_refused_with_a_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(connections_per_address_max=2, first_frame_timeout_ms=SLOW)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        node = counter_of(runner)
        first, second = await connect(runner), await connect(runner)
        assert await first.call(Incr(), T) == Count(n=1)
        assert await second.call(Incr(), T) == Count(n=2)
        third = socket_from(runner)
        inputs = node.inputs
        third.send(CLIENT_HELLO + call_frame(1, Incr()))
        # The refusal is the Welcome's error, then the close: no reply, nothing read.
        answer = FrameDecoder(frame_bytes_max=1024).feed(await recv_all(third, until_closed=True))
        welcome = codec.decode(answer[0]) if len(answer) == 1 else answer
        assert isinstance(welcome, Welcome) and "2 client connections from" in welcome.error
        third.close()
        assert node.inputs == inputs  # the refused call never reached the node
        assert runner.stats.connections_refused == 1
        # A client refused so knows that nothing was sent: a definite ConnectRefused, not a
        # lost connection (outcome unknown).
        with pytest.raises(ConnectRefused, match="2 client connections from 127"):
            await connect(runner)
        assert node.inputs == inputs
        assert runner.stats.connections_refused == 2
        # Another address has its own allowance; the admitted clients carry on.
        elsewhere = socket_from(runner, "127.0.0.2")
        assert await call_once(elsewhere, 1, Incr()) == Count(n=3)
        elsewhere.close()
        assert await first.call(GetCount(), T) == Count(n=3)
        # Silent connections of one address beyond the limit evict that address's oldest.
        silent = [socket_from(runner) for _ in range(3)]
        assert await recv_all(silent[0], until_closed=True) == b""
        assert all(is_open(sock) for sock in silent[1:])
        assert runner.stats.connections_evicted == 1
        for sock in silent:
            sock.close()
        await first.close()
        await second.close()
        await runner.stop()

    with caplog.at_level(logging.INFO, logger="pxq.net.transport"):
        run_async(main())
    logged = closes_logged(caplog)
    assert any(
        "client refused: 2 client connections from 127.0.0.1" in m
        and "connections_per_address_max" in m
        for m in logged
    )
    assert any("evicted: 2 unclassified connections from 127.0.0.1" in m for m in logged)


def test_a_full_client_budget_evicts_the_least_recently_active_client(tmp_path: Path) -> None:
    config = NetConfig(client_connections_max=2, first_frame_timeout_ms=SLOW)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        c1, c2 = socket_from(runner), socket_from(runner)
        assert await call_once(c1, 1, Incr()) == Count(n=1)
        assert await call_once(c2, 1, Incr()) == Count(n=2)
        assert await call_once(c1, 2, GetCount()) == Count(n=2)  # c2 is now the least recent
        c3 = socket_from(runner)
        assert await call_once(c3, 1, Incr()) == Count(n=3)
        assert await recv_all(c2, until_closed=True) == b""
        assert await call_once(c1, 3, GetCount()) == Count(n=3)
        assert runner.stats.connections_evicted == 1
        for sock in (c1, c2, c3):
            sock.close()
        await runner.stop()

    run_async(main())


def test_a_peer_connecting_again_evicts_its_oldest_connection(tmp_path: Path) -> None:
    config = NetConfig(peer_connections_per_node=2, first_frame_timeout_ms=SLOW)
    hello = encode_frame(Hello(node="n1", cluster=CLUSTER), frame_bytes_max=1024)

    async def main() -> None:
        runner = make_runner(tmp_path, "n0", peers=["n0", "n1"], config=config)
        await runner.start()
        runner.update_peers({"n0": runner.address, "n1": ("127.0.0.1", 1)})
        conns = []
        for _ in range(3):
            sock = socket_from(runner)
            sock.send(hello)
            conns.append(sock)
            await asyncio.sleep(0.02)  # accepted in this order
        assert await recv_all(conns[0], until_closed=True) == b""
        assert is_open(conns[1]) and is_open(conns[2])
        assert runner.stats.connections_evicted == 1
        for sock in conns:
            sock.close()
        await runner.stop()

    run_async(main())


def test_budgets_are_checked_at_construction() -> None:
    for field in (
        "unclassified_connections_max",
        "client_connections_max",
        "peer_connections_per_node",
        "connections_per_address_max",
        "client_idle_timeout_ms",
        "partial_frame_timeout_ms",
    ):
        with pytest.raises(ValueError, match=field):
            kwargs: dict[str, Any] = {field: 0}
            NetConfig(**kwargs)


def test_the_connections_table_of_the_cluster_file_sets_the_budgets_and_timeouts() -> None:
    assert NetConfig.for_cluster(loads_config(BASE)) == NetConfig()
    c = loads_config(
        BASE + "[connections]\nunclassified_max = 10\nclients_max = 20\nper_peer_max = 3\n"
        "per_address_max = 4\nfirst_frame_timeout_ms = 50\nclient_idle_timeout_ms = 60\n"
        "partial_frame_timeout_ms = 70\n"
    )
    assert c.connections == ConnectionsConfig(
        unclassified_max=10,
        clients_max=20,
        per_peer_max=3,
        per_address_max=4,
        first_frame_timeout_ms=50,
        client_idle_timeout_ms=60,
        partial_frame_timeout_ms=70,
    )
    net = NetConfig.for_cluster(c)
    assert (
        net.unclassified_connections_max,
        net.client_connections_max,
        net.peer_connections_per_node,
        net.connections_per_address_max,
        net.first_frame_timeout_ms,
        net.client_idle_timeout_ms,
        net.partial_frame_timeout_ms,
    ) == (10, 20, 3, 4, 50, 60, 70)
    for bad, key in (("per_address_max = 0", "per_address_max"), ("clients = 5", "clients")):
        e = error(BASE + "[connections]\n" + bad + "\n")
        assert e.key_path == f"connections.{key}", (bad, e.key_path)
