"""The network room of ``pxq test``: partition shapes, the delaying proxy, hosts in network
namespaces with nftables cuts and redirects, and ``NetnsTarget``.

The shapes, the proxy (on 127.0.0.1) and the cluster-file rewriting run anywhere. The tests
that make hosts need root, ``ip`` and ``nft`` (CI runs as root and installs ``nftables``);
without them they skip, naming what is missing. Those are three: one room of three hosts
(reachability, a two-way cut, both kinds of one-way cut, a redirect through the proxy,
teardown), and one 3-node ``NetnsTarget`` (isolated master, heal, slow links, kill/start,
teardown). Every wait is bounded; rooms are torn down in ``finally``/``with``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from net.client.connection import ClusterIdentity
from net.cluster.probe import find_masters, node_masters, service_probes
from net.config import NetConfig
from net.jepsen import hosts as hosts_module
from net.jepsen.hosts import Hosts, HostsError, missing_tools, room_names
from net.jepsen.netns import NetnsTarget, with_hosts
from net.jepsen.proxy import DelayProxy
from net.jepsen.shapes import ShapeError, bridge, halves, isolate, one_way
from net.jepsen.target import Link, Target, UnsupportedFault
from pxq.config import ConfigError, loads_config

MISSING = missing_tools()
needs_hosts = pytest.mark.skipif(
    bool(MISSING), reason=f"network namespaces need: {', '.join(MISSING)}"
)
WAIT_S = 15.0
# Fixed ports (75xx-76xx) and, for some, network namespaces: the files that use them run
# one after another on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("real-clusters")

PORT = 7611


def target_conformance(target: NetnsTarget) -> Target:
    """mypy checks here that ``NetnsTarget`` implements the ``Target`` protocol."""
    return target


# -- shapes -------------------------------------------------------------------------------------

NODES = ["s0", "s1", "s2", "s3", "s4"]


def sides(links: list[Link]) -> set[str]:
    return {n for link in links for n in link}


def test_halves_cut_every_link_between_two_halves_both_ways() -> None:
    links = halves(NODES, random.Random(3))
    assert links == sorted(set(links))
    assert all((b, a) in links for a, b in links)
    # Each node is cut from exactly the nodes of the other half: 2 or 3 of them.
    counts = sorted(sum(1 for a, _ in links if a == n) for n in NODES)
    assert counts == [2, 2, 2, 3, 3]


def test_shapes_depend_on_the_seed_not_on_the_order_of_the_nodes() -> None:
    for shape in (halves, bridge, one_way):
        assert shape(NODES, random.Random(7)) == shape(NODES[::-1], random.Random(7))
    drawn = {tuple(halves(NODES, random.Random(seed))) for seed in range(20)}
    assert len(drawn) > 1


def test_isolate_cuts_one_node_from_all_others_both_ways() -> None:
    links = isolate("s2", NODES)
    assert len(links) == 2 * (len(NODES) - 1)
    assert all("s2" in link for link in links)
    with pytest.raises(ShapeError):
        isolate("x9", NODES)


def test_bridge_leaves_one_node_talking_to_both_halves() -> None:
    for seed in range(10):
        links = bridge(NODES, random.Random(seed))
        bridges = [n for n in NODES if n not in sides(links)]
        assert len(bridges) == 1
        assert all((b, a) in links for a, b in links)
        assert len(links) == 2 * 2 * 2  # halves of 2 and 2, both ways
    with pytest.raises(ShapeError):
        bridge(["a", "b"], random.Random(1))


def test_one_way_cuts_only_one_direction() -> None:
    for seed in range(10):
        links = one_way(NODES, random.Random(seed))
        assert links
        assert not any((b, a) in links for a, b in links)
        senders = {a for a, _ in links}
        receivers = {b for _, b in links}
        assert senders.isdisjoint(receivers)
        assert senders | receivers == set(NODES)
        assert len(links) == len(senders) * len(receivers)


# -- the cluster file ---------------------------------------------------------------------------


def three_node_toml(port: int = PORT) -> str:
    replicas = "".join(f'\n[[stores.replicas]]\nnode = "s{i}"\nport = {port}\n' for i in range(3))
    return (
        '[cluster]\nname = "netns"\nid = "c-netns-test"\n\n[tls]\n\n'
        f'[[stores]]\nname = "store0"\ngroups = 2\n{replicas}\n'
        '[[topics]]\nname = "t0"\nqueues = 2\n\n[[topics.consumer_groups]]\nname = "g0"\n'
    )


def test_with_hosts_sets_each_replicas_host() -> None:
    addresses = {"s0": "10.231.9.2", "s1": "10.231.9.3", "s2": "10.231.9.4"}
    config = loads_config(with_hosts(three_node_toml(), addresses))
    assert {i.node: i.host for i in config.all_nodes()} == addresses
    # Every node keeps the base file's port: the addresses differ, so they may share it.
    assert {i.port for i in config.all_nodes()} == {PORT}


def test_with_hosts_on_a_file_that_sets_hosts_fails_to_load() -> None:
    base = three_node_toml().replace('node = "s1"\n', 'node = "s1"\nhost = "127.0.0.1"\n')
    with pytest.raises(ConfigError):
        loads_config(with_hosts(base, {"s1": "10.231.9.3"}))


def test_netns_target_refuses_the_faults_it_was_not_made_for() -> None:
    target = NetnsTarget(Path("/nonexistent-netns-root"))
    assert target.faults == frozenset({"kill", "pause", "partition", "slow-link"})

    async def refused() -> list[str]:
        faults: list[str] = []
        for call in (
            target.set_clock_offset("s0", 1000),
            target.power_cut("s0"),
            target.fill_disk("s0"),
            target.free_disk("s0"),
        ):
            with pytest.raises(UnsupportedFault) as caught:
                await call
            faults.append(caught.value.fault)
        return faults

    assert asyncio.run(refused()) == ["clock", "power", "disk-full", "disk-full"]


def test_bad_host_names_fail_before_anything_is_made(tmp_path: Path) -> None:
    for names in (["a", "a"], ["Upper"], ["a b"], []):
        with pytest.raises(HostsError):
            Hosts.up(names, tmp_path / "room")
    base = three_node_toml().replace('"s1"', '"S1"')
    target = NetnsTarget(tmp_path / "netns", base_toml=base)
    with pytest.raises(HostsError, match="S1"):
        asyncio.run(target.setup())
    assert not (tmp_path / "room").exists()


# -- the proxy ----------------------------------------------------------------------------------


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_proxy_delays_each_direction_by_delay_ms_and_keeps_every_byte() -> None:
    delay_ms = 120

    async def main() -> tuple[float, float, bytes, bytes, bytes]:
        server = await echo_server()
        port = server.sockets[0].getsockname()[1]
        proxy = DelayProxy(listen_host="127.0.0.1", destination=("127.0.0.1", port), delay_ms=0)
        slow = DelayProxy(
            listen_host="127.0.0.1", destination=("127.0.0.1", port), delay_ms=delay_ms
        )
        try:
            await proxy.start()
            await slow.start()

            async def round_trip(address: tuple[str, int], payload: bytes) -> tuple[float, bytes]:
                reader, writer = await asyncio.open_connection(*address)
                started = time.monotonic()
                writer.write(payload)
                await writer.drain()
                writer.write_eof()
                echoed = await asyncio.wait_for(reader.read(-1), WAIT_S)
                elapsed = time.monotonic() - started
                writer.close()
                return elapsed, echoed

            payload = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
            fast_s, fast_bytes = await round_trip(proxy.address, b"x" * 100)
            slow_s, slow_bytes = await round_trip(slow.address, payload)
        finally:
            await proxy.close()
            await slow.close()
            server.close()
        return fast_s, slow_s, fast_bytes, slow_bytes, payload

    fast_s, slow_s, fast_echoed, echoed, payload = asyncio.run(main())
    assert fast_echoed == b"x" * 100
    assert echoed == payload  # every byte, in order, through 1 MiB buffers
    # The request's bytes wait delay_ms on the way in, the echo's delay_ms on the way out.
    assert 2 * delay_ms / 1000 <= slow_s < 2 * delay_ms / 1000 + 2.0
    assert fast_s < 2 * delay_ms / 1000  # without a delay: well under the delayed trip


def test_proxy_refuses_connections_beyond_its_limit() -> None:
    async def main() -> tuple[bytes, bytes, int]:
        server = await echo_server()
        port = server.sockets[0].getsockname()[1]
        proxy = DelayProxy(
            listen_host="127.0.0.1",
            destination=("127.0.0.1", port),
            delay_ms=0,
            connections_max=1,
        )
        try:
            await proxy.start()
            r1, w1 = await asyncio.open_connection(*proxy.address)
            w1.write(b"one")
            first = await asyncio.wait_for(r1.read(3), WAIT_S)
            r2, w2 = await asyncio.open_connection(*proxy.address)
            second = await asyncio.wait_for(r2.read(3), WAIT_S)  # closed at once: EOF
            w1.close()
            w2.close()
            return first, second, proxy.stats.refused
        finally:
            await proxy.close()
            server.close()

    assert asyncio.run(main()) == (b"one", b"", 1)


# -- hosts --------------------------------------------------------------------------------------

SERVER = r"""
import selectors, socket, sys, time
addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((addr, port))
tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((addr, port))
sel = selectors.DefaultSelector()
sel.register(tcp, selectors.EVENT_READ)
sel.register(udp, selectors.EVENT_READ)
print("ready", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.1):
        if key.fileobj is tcp:
            conn, _ = tcp.accept()
            conn.settimeout(1.0)
            try:
                if conn.recv(4) == b"ping":
                    conn.sendall(b"pong")
            except OSError:
                pass
            conn.close()
        else:
            data, source = udp.recvfrom(64)
            print("udp", data.decode(), source[0], flush=True)
"""

CLIENT = r"""
import socket, sys, time
kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "udp":
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            try:
                s.sendto(sys.argv[4].encode(), (addr, port))
            except PermissionError:  # dropped in this host's output: the kernel says so
                pass
    sys.exit(0)
started = time.monotonic()
try:
    with socket.create_connection((addr, port), timeout=0.5) as s:
        s.settimeout(2.0)
        s.sendall(b"ping")
        ok = s.recv(4) == b"pong"
except OSError:
    ok = False
print("ok" if ok else "fail", round(time.monotonic() - started, 3))
"""


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Hosts]:
    hosts = Hosts.up(["a", "b", "c"], tmp_path / "room")
    try:
        yield hosts
    finally:
        hosts.teardown()


def tcp(hosts: Hosts, src: str, dst: str) -> tuple[bool, float]:
    """A ping/pong over a new TCP connection from host ``src`` to ``dst``'s server."""
    out = hosts.exec(src, [sys.executable, "-c", CLIENT, "tcp", hosts.host(dst).address, "7"])
    verdict, elapsed = out.split()
    return verdict == "ok", float(elapsed)


def udp(hosts: Hosts, src: str, dst: str, tag: str) -> None:
    hosts.exec(src, [sys.executable, "-c", CLIENT, "udp", hosts.host(dst).address, "7", tag])


def received(out: Path, tag: str, wait_s: float) -> bool:
    """Whether the server whose output is ``out`` got datagram ``tag`` (waits up to
    ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if f"udp {tag} " in out.read_text(encoding="utf-8"):
            return True
        time.sleep(0.05)
    return False


def start_servers(hosts: Hosts) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    servers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, host in hosts.hosts.items():
        out = host.dir / "server.out"
        with out.open("wb") as f:
            proc = hosts.run(
                name, [sys.executable, "-c", SERVER, host.address, "7", "60"], stdout=f
            )
        servers[name] = (proc, out)
    deadline = time.monotonic() + WAIT_S
    while not all("ready" in out.read_text(encoding="utf-8") for _, out in servers.values()):
        assert time.monotonic() < deadline, "the probe servers did not start"
        time.sleep(0.05)
    return servers


@needs_hosts
def test_hosts_reach_each_other_and_cuts_drop_what_they_say(room: Hosts) -> None:
    hosts = room
    servers = start_servers(hosts)
    names = list(hosts.hosts)
    assert [hosts.host(n).address for n in names] == [f"10.231.{hosts.room}.{i}" for i in (2, 3, 4)]
    assert all(tcp(hosts, a, b)[0] for a in names for b in names if a != b)

    # Two-way cut between a and b: neither reaches the other; c still reaches both.
    hosts.cut("a", "b")
    hosts.cut("b", "a")
    assert not tcp(hosts, "a", "b")[0]
    assert not tcp(hosts, "b", "a")[0]
    assert tcp(hosts, "c", "a")[0] and tcp(hosts, "c", "b")[0]
    hosts.heal()
    assert tcp(hosts, "a", "b")[0] and tcp(hosts, "b", "a")[0]

    # A packet-level one-way cut a -> b: a's datagrams are lost, b's arrive; TCP needs both
    # directions, so no connection is made either way.
    hosts.cut("a", "b")
    udp(hosts, "a", "b", "a-to-b")
    udp(hosts, "b", "a", "b-to-a")
    assert received(servers["a"][1], "b-to-a", WAIT_S)
    assert not received(servers["b"][1], "a-to-b", 0.3)  # sent first, so it had its time
    assert not tcp(hosts, "a", "b")[0] and not tcp(hosts, "b", "a")[0]
    hosts.heal()

    # A one-way cut of a's connections to b's port: a cannot reach b, b's connection to a
    # works in both directions (its ping arrives, a's pong comes back from a's server port).
    hosts.cut("a", "b", ports=(7,))
    assert not tcp(hosts, "a", "b")[0]
    assert tcp(hosts, "b", "a")[0]
    assert "tcp dport 7 drop" in hosts.rules("a")
    hosts.heal()
    assert "pxq_net" not in hosts.rules("a")

    # The test client in the root namespace reaches every host, cut or not.
    hosts.cut("a", "c")
    for name in names:
        with socket_to(hosts.host(name).address) as conn:
            conn.sendall(b"ping")
            assert conn.recv(4) == b"pong"

    pids = [proc.pid for proc, _ in servers.values()]
    hosts.teardown()
    assert hosts.leftovers() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    bridge_name, prefix, _ = room_names(hosts.room)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {bridge_name}:" not in links and f"pxq{hosts.room}h" not in links
    spaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert prefix not in spaces
    hosts.teardown()  # idempotent


def sleepers(tag: str) -> list[int]:
    """The live processes running ``sleep <tag>``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text(encoding="utf-8").rsplit(")", 1)[-1]
        except OSError:
            continue
        if argv[:2] == [b"sleep", tag.encode()] and state.split()[0] not in ("Z", "X"):
            found.append(int(cmdline.parent.name))
    return found


@needs_hosts
def test_teardown_kills_what_is_forked_while_it_kills(tmp_path: Path) -> None:
    # Shells that fork a short-lived child every few ms, started by the process ``run``
    # started (as a session's shell is by sshd): a single pass of kills misses a child forked
    # between the pass listing the namespace's processes and killing its shell (about half
    # the time per shell, so nearly always one of eight); teardown goes on until none is left.
    tag = f"61.{tmp_path.stat().st_ino % 1000:03d}"  # this test's own sleeps
    shells = 8
    hosts = Hosts.up(["a"], tmp_path / "room")
    try:
        loop = f"while :; do sleep {tag} & sleep 0.002; kill $!; done"
        script = f"for i in $(seq {shells}); do sh -c '{loop}' & done; sleep 300"
        hosts.run("a", ["sh", "-c", script])
        deadline = time.monotonic() + WAIT_S
        while len(sleepers(tag)) < shells // 2:
            assert time.monotonic() < deadline, "the forking shells did not start"
            time.sleep(0.05)
    finally:
        hosts.teardown()
    assert sleepers(tag) == []


def test_a_kill_pass_that_finds_new_processes_is_followed_by_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The namespace listing is faked: it shows one process, then (forked meanwhile) another,
    # then none. Both are killed; a listing that never empties is reported.
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    listings = [[procs[0].pid], [procs[1].pid], []]
    monkeypatch.setattr(hosts_module, "_namespace_pids", lambda _ns: listings.pop(0))
    try:
        assert hosts_module._kill_namespaces(["pxq-fake"]) == []
        assert not any(hosts_module._zombie_or_alive(p.pid) for p in procs)
        assert listings == []
        never = 2**22 + 1  # above Linux's PID_MAX_LIMIT: no process has it
        monkeypatch.setattr(hosts_module, "_namespace_pids", lambda _ns: [never])
        assert hosts_module._kill_namespaces(["pxq-fake"]) == [never]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def socket_to(address: str) -> socket.socket:
    return socket.create_connection((address, 7), timeout=2.0)


@needs_hosts
def test_a_redirect_sends_new_connections_through_the_delaying_proxy(room: Hosts) -> None:
    hosts = room
    start_servers(hosts)
    delay_ms = 150

    async def main() -> tuple[float, float, float, int]:
        b = hosts.host("b")
        proxy = DelayProxy(
            listen_host=hosts.bridge_address, destination=(b.address, 7), delay_ms=delay_ms
        )
        await proxy.start()
        try:
            direct_ok, direct_s = await asyncio.to_thread(tcp, hosts, "a", "b")
            await asyncio.to_thread(hosts.redirect, "a", "b", 7, proxy.address)
            slow_ok, slow_s = await asyncio.to_thread(tcp, hosts, "a", "b")
            other_ok, other_s = await asyncio.to_thread(tcp, hosts, "c", "b")  # not redirected
            await asyncio.to_thread(hosts.heal)
            assert direct_ok and slow_ok and other_ok
            return direct_s, slow_s, other_s, proxy.stats.accepted
        finally:
            await proxy.close()

    direct_s, slow_s, other_s, accepted = asyncio.run(main())
    assert accepted == 1
    assert slow_s >= 2 * delay_ms / 1000  # ping and pong each waited delay_ms
    assert direct_s < 2 * delay_ms / 1000 and other_s < 2 * delay_ms / 1000


# -- NetnsTarget --------------------------------------------------------------------------------


@needs_hosts
def test_netns_target_isolated_master_loses_its_groups_and_heal_restores(
    tmp_path: Path,
) -> None:
    target = NetnsTarget(tmp_path / "netns", base_toml=three_node_toml())
    timeline: list[str] = []

    async def wait_until(what: str, condition: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            if await condition():
                timeline.append(what)
                return
            assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what} ({timeline})"
            await asyncio.sleep(0.1)

    async def main() -> tuple[int, list[int]]:
        pids: list[int] = []
        room = -1
        try:
            await target.setup()
            room = target.hosts.room
            config = target.config
            assert target.nodes == ("s0", "s1", "s2")
            assert {i.host for i in config.all_nodes()} == {
                h.address for h in target.hosts.hosts.values()
            }
            net_config = NetConfig.for_cluster(config)
            masters = await target.masters()
            old = masters[("store0", 0)]
            info = next(i for i in config.all_nodes() if i.node == old)
            probes = service_probes(config)[0].probes

            async def old_masters() -> list[int] | None:
                return await node_masters(
                    info, probes, net_config, cluster=ClusterIdentity.of(config)
                )

            await target.partition(isolate(old, target.nodes))

            async def moved() -> bool:
                now = await find_masters(config, net_config)
                # The old master stays reachable from the root namespace: it answers, but
                # masters nothing once its lease ran out; a majority-side node masters group 0.
                return now.get(("store0", 0)) not in (None, old) and await old_masters() == []

            await wait_until("a new master on the majority side", moved)
            await target.heal_network()
            await target.masters()

            async def rejoined() -> bool:
                return (await old_masters()) is not None

            await wait_until("healed: the old master answers", rejoined)

            # Slow links both ways between two nodes: the cluster keeps its masters, and the
            # nodes' connections went through the proxies. The nodes were connected already:
            # only the reset of their old connections makes them reconnect, through the proxy.
            a, b = "s0", "s1"
            await target.slow_links([(a, b), (b, a)], 50)

            async def proxied() -> bool:
                stats = target.slow_link_stats
                assert set(stats) == {(a, b), (b, a)}
                return all(s.accepted >= 1 and s.bytes_forwarded > 0 for s in stats.values())

            await wait_until("peer links through the proxies", proxied)
            assert len(await target.masters()) == 2
            await target.heal_network()
            assert target.slow_link_stats == {}

            killed = target.pid("s2")
            await target.kill("s2")
            assert not target.is_running("s2") and target.pid("s2") is None
            await target.start("s2")
            assert target.is_running("s2") and target.pid("s2") not in (None, killed)
            await target.pause("s2")
            assert target.is_running("s2")  # paused counts as alive
            await target.resume("s2")
            pids = [pid for n in target.nodes if (pid := target.pid(n)) is not None]
            assert len(pids) == 3
        finally:
            await target.teardown()
        return room, pids

    room, pids = asyncio.run(main())
    assert pids and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    bridge_name, prefix, _ = room_names(room)
    spaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert prefix not in spaces and f" {bridge_name}:" not in links
    asyncio.run(target.teardown())  # idempotent
