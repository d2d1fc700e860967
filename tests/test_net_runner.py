"""NodeRunner over loopback TCP and LMDB: the driver contract in production.

Behaviours checked: a reply leaves only after its write is committed (checked at the socket,
with a negative control that releases first); a failed commit releases nothing and stops the
node; group commit (many calls, fewer commits); restart recovers from LMDB alone; three nodes
exchange messages over TCP, also after a peer restarts; the timer wakes the node at its
deadline; malformed input closes only its own connection and steps nothing; an
InvariantViolation stops the node; startup errors are named; peer queues are bounded;
below the storage reserve enqueues are answered ``storage_full`` by the runner without
reaching the node while everything else goes on, and accepted again above the reserve plus
its margin (one log line each way); commits between measurements make the runner measure
again before it refuses, and an estimate alone never refuses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from net.client.connection import ClusterIdentity, NodeClient
from net.config import MIB, NetConfig
from net.errors import (
    AddressInUse,
    BootFailed,
    CallTimeout,
    ConnectionLost,
    ConnectRefused,
    DataDirError,
    DataDirMismatch,
    NotConnected,
    StorageError,
    StorageFull,
)
from net.node.runner import DriverStorage, NodeRunner, RunnerState, StorageOpener
from net.node.storage import LmdbStorage, SealedBatch, StorageSpace, WriteOutcome
from net.wire.envelope import Call, CallReply, ClientHello, Hello, Welcome
from net.wire.framing import HEADER, FrameDecoder, encode_frame, frame
from pxq import codec
from pxq.config import STORAGE_RESERVE_MIN_BYTES
from pxq.config.identity import fingerprint
from pxq.effects import Write
from tests.test_net_storage import _flip, _tamper
from tests.test_net_support import (
    CLUSTER,
    FAST,
    Blob,
    Broadcast,
    Count,
    Explode,
    GetBlob,
    GetCount,
    Hold,
    Incr,
    Ping,
    Recorder,
    counter_of,
    make_runner,
    run_async,
    wait_until,
)

T = 5.0  # call timeout in seconds; every wait below is bounded


async def connect(runner: NodeRunner) -> NodeClient:
    host, port = runner.address
    return await NodeClient.connect(host, port, cluster=ClusterIdentity(name=CLUSTER), config=FAST)


CLIENT_HELLO = encode_frame(
    ClientHello(cluster=CLUSTER, cluster_id="", fingerprint=fingerprint("")), frame_bytes_max=1024
)
"""What a client of the test runners (no id, no metadata) sends first."""


async def raw_socket(runner: NodeRunner, *, hello: bool = True) -> socket.socket:
    """A non-blocking socket to ``runner``; with ``hello``, its ClientHello was sent and the
    node's Welcome read (a client connection ready for calls)."""
    sock = socket.create_connection(runner.address, timeout=T)
    sock.setblocking(False)
    if hello:
        sock.send(CLIENT_HELLO)
        data = await recv_all(sock, until_closed=False)
        payloads = FrameDecoder(frame_bytes_max=2**20).feed(data)
        welcome = codec.decode(payloads[0]) if payloads else None
        assert isinstance(welcome, Welcome) and not welcome.error, welcome
        assert data == encode_frame(welcome, frame_bytes_max=2**20)  # nothing else came
    return sock


def without_welcome(data: bytes) -> bytes:
    """``data`` read from a raw client socket, without a leading Welcome frame."""
    payloads = FrameDecoder(frame_bytes_max=2**20).feed(data) if data else []
    if payloads and isinstance(codec.decode(payloads[0]), Welcome):
        return data[HEADER.size + len(payloads[0]) :]
    return data


async def recv_all(sock: socket.socket, *, until_closed: bool, timeout_s: float = T) -> bytes:
    """Read from a non-blocking socket until it closes (or until some bytes arrived)."""
    loop = asyncio.get_running_loop()
    data = b""
    end = loop.time() + timeout_s
    while loop.time() < end:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            if data and not until_closed:
                return data
            await asyncio.sleep(0.001)
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("socket did not close" if until_closed else "no data arrived")


def call_frame(req_id: int, request: object) -> bytes:
    return encode_frame(Call(req_id=req_id, request=codec.encode(request)), frame_bytes_max=2**20)


def decode_replies(data: bytes) -> list[tuple[int, object]]:
    out = []
    for payload in FrameDecoder(frame_bytes_max=2**20).feed(data):
        reply = codec.decode(payload)
        if isinstance(reply, Welcome):
            continue  # the answer to a raw socket's ClientHello
        assert isinstance(reply, CallReply)
        out.append((reply.req_id, codec.decode(reply.response)))
    return out


# -- persist before reply -------------------------------------------------------------------


class PeekingStorage(LmdbStorage):
    """Records, at each commit, whether reply bytes already reached the client's socket."""

    sock: socket.socket | None = None
    seen_at_commit: list[bool] = []

    def write(self, batch: SealedBatch) -> WriteOutcome:
        # Runs on the writer thread, before the batch's transaction commits.
        if self.sock is not None:
            try:
                self.sock.recv(1, socket.MSG_PEEK)
                self.seen_at_commit.append(True)
            except BlockingIOError:
                self.seen_at_commit.append(False)
        return super().write(batch)


def peeking_opener(
    data_dir: Path, cluster: str, node: str, config: NetConfig, *, cluster_id: str = ""
) -> DriverStorage:
    return PeekingStorage.open(
        data_dir, cluster=cluster, node=node, config=config, cluster_id=cluster_id
    )


class ReleasesBeforeCommit(NodeRunner):
    """A broken driver (negative control): releases the turn's output, then commits (on the
    loop thread, so that each turn's write is its own commit)."""

    def _end_turn(self) -> None:
        self._turn_scheduled = False
        outbox, self._outbox = self._outbox, deque()
        for _, sends, replies in outbox:
            self._release(sends, replies)
        for conn in self._dirty_conns:
            conn.flush()
        self._dirty_conns = []
        storage = self.storage
        if storage is not None and storage.pending:
            storage.commit()


@pytest.mark.parametrize("broken", [False, True], ids=["runner", "negative-control"])
def test_reply_reaches_the_socket_only_after_the_commit(tmp_path: Path, broken: bool) -> None:
    async def main() -> list[bool]:
        cls = ReleasesBeforeCommit if broken else NodeRunner
        runner = cls(
            node_id="n0",
            cluster=CLUSTER,
            data_dir=tmp_path / "n0",
            factory=make_runner(tmp_path)._factory,
            config=FAST,
            storage_opener=peeking_opener,
        )
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, PeekingStorage)
        storage.seen_at_commit = []
        sock = await raw_socket(runner)
        storage.sock = sock
        try:
            for i in range(1, 4):
                sock.send(call_frame(i, Incr()))
                replies = decode_replies(await recv_all(sock, until_closed=False))
                assert replies == [(i, Count(n=i))]
        finally:
            storage.sock = None
            sock.close()
            await runner.stop()
        return storage.seen_at_commit

    seen = run_async(main())
    assert len(seen) == 3
    if broken:
        # The instrument sees a reply released before its commit (loopback delivers within
        # the sending syscall, so this holds unless softirqs were deferred every time).
        assert any(seen)
    else:
        assert not any(seen)  # no reply byte reached the client before any commit


class FailingStorage(LmdbStorage):
    fail_commit = False

    def write(self, batch: SealedBatch) -> WriteOutcome:
        if self.fail_commit:
            raise StorageFull("disk full (test)")
        return super().write(batch)


def test_failed_commit_releases_nothing_and_stops_the_node(tmp_path: Path) -> None:
    def opener(
        data_dir: Path, cluster: str, node: str, config: NetConfig, *, cluster_id: str = ""
    ) -> DriverStorage:
        return FailingStorage.open(data_dir, cluster=cluster, node=node, config=config)

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=opener)
        await runner.start()
        client = await connect(runner)
        assert await client.call(Incr(), T) == Count(n=1)
        storage = runner.storage
        assert isinstance(storage, FailingStorage)
        storage.fail_commit = True
        with pytest.raises(ConnectionLost):
            await client.call(Incr(), T)
        assert await runner.wait_stopped() is not None
        assert runner.state is RunnerState.CRASHED
        assert runner.crash_reason is not None and "disk full" in runner.crash_reason
        with pytest.raises(ConnectRefused):  # the listener is closed
            await connect(runner)
        await client.close()
        # The failed turn's write never became durable.
        again = make_runner(tmp_path)
        await again.start()
        client = await connect(again)
        assert await client.call(GetCount(), T) == Count(n=1)
        await client.close()
        await again.stop()

    run_async(main())


class GatedStorage(LmdbStorage):
    """Each write waits on the writer thread until the test opens the gate (bounded); the
    first write can be made to fail after the gate."""

    gate: threading.Event
    started: threading.Event
    fail_first = False
    written_batches: list[int]

    def write(self, batch: SealedBatch) -> WriteOutcome:
        self.started.set()
        if not self.gate.wait(T):
            raise AssertionError("the test never opened the gate")
        self.written_batches.append(batch.seq)
        if self.fail_first:
            raise StorageError("fsync failed (test)")
        return super().write(batch)


def gated_opener(
    data_dir: Path, cluster: str, node: str, config: NetConfig, *, cluster_id: str = ""
) -> DriverStorage:
    storage = GatedStorage.open(data_dir, cluster=cluster, node=node, config=config)
    if not isinstance(storage, GatedStorage):
        raise TypeError("GatedStorage.open returned another class")
    storage.gate = threading.Event()
    storage.gate.set()  # boot commits freely
    storage.started = threading.Event()
    storage.written_batches = []
    return storage


@pytest.mark.parametrize("fails", [False, True], ids=["commit-ok", "commit-fails"])
def test_steps_continue_during_a_commit_and_their_output_waits_for_it(
    tmp_path: Path, fails: bool
) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=gated_opener)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, GatedStorage)
        await wait_until(lambda: storage.unwritten == 0 and not storage.pending, what="boot")
        storage.gate.clear()
        storage.started.clear()
        storage.fail_first = fails
        client = await connect(runner)
        first = asyncio.ensure_future(client.call(Incr(), T))
        await wait_until(storage.started.is_set, what="the first commit to start")
        steps = runner.stats.steps
        # While that commit runs: a read of its write, and another write, are stepped...
        read = asyncio.ensure_future(client.call(GetCount(), T))
        second = asyncio.ensure_future(client.call(Incr(), T))
        await wait_until(lambda: runner.stats.steps >= steps + 2, what="steps during a commit")
        assert counter_of(runner).count == 2
        raw = storage.get("counter", b"n")  # the storage reads its writes, none durable yet
        assert raw is not None and int.from_bytes(raw, "big") == 2
        assert storage.pending  # the second write waits for the next batch
        await asyncio.sleep(0.05)
        # ...but nothing of them, nor of the first call, was released.
        assert not (first.done() or read.done() or second.done())
        storage.gate.set()
        if fails:
            for fut in (first, read, second):
                with pytest.raises(ConnectionLost):
                    await fut
            assert await runner.wait_stopped() is not None
            assert runner.crash_reason is not None and "fsync failed" in runner.crash_reason
            assert storage.written_batches == [storage.written_batches[0]]  # no later batch
            await client.close()
            again = make_runner(tmp_path)
            await again.start()
            check = await connect(again)
            assert await check.call(GetCount(), T) == Count(n=0)
            await check.close()
            await again.stop()
            return
        assert await first == Count(n=1)
        assert await read == Count(n=1)
        assert await second == Count(n=2)
        # Two batches, in order: the second holds the write stepped during the first.
        assert len(storage.written_batches) == 2
        assert storage.written_batches[1] == storage.written_batches[0] + 1
        await client.close()
        await runner.stop()

    run_async(main())


def test_pipelined_calls_are_group_committed_and_all_answered(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        await runner.start()
        client = await connect(runner)
        commits_before = runner.stats.commits
        results = await asyncio.gather(*(client.call(Incr(), T) for _ in range(500)))
        assert sorted(r.n for r in results if isinstance(r, Count)) == list(range(1, 501))
        commits = runner.stats.commits - commits_before
        assert 1 <= commits < 500  # several calls per fsync
        assert client.inflight == 0
        await client.close()
        await runner.stop()

    run_async(main())


def test_restart_recovers_from_lmdb_alone(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        await runner.start()
        client = await connect(runner)
        for i in range(1, 6):
            assert await client.call(Incr(by=2), T) == Count(n=2 * i)
        await client.close()
        await runner.stop()
        assert runner.state is RunnerState.STOPPED
        # A new incarnation: a new runner and node, the same data dir.
        runner = make_runner(tmp_path)
        await runner.start()
        client = await connect(runner)
        assert await client.call(GetCount(), T) == Count(n=10)
        assert await client.call(Incr(), T) == Count(n=11)
        await client.close()
        await runner.stop()

    run_async(main())


def test_a_crash_keeps_every_acknowledged_write_the_log_made_durable(tmp_path: Path) -> None:
    """Acknowledged increments live only in the write-ahead log (no checkpoint yet) when the
    node crashes (its writes not yet durable dropped, its storage closed without a commit);
    the next incarnation replays them."""
    config = replace(FAST, checkpoint_batches=1000, checkpoint_interval_ms=60_000)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        client = await connect(runner)
        for i in range(1, 6):
            assert await client.call(Incr(by=2), T) == Count(n=2 * i)
        storage = runner.storage
        assert isinstance(storage, LmdbStorage)
        assert storage.held >= 5 and storage.checkpoints == 1  # the open's only
        await client.close()
        runner._crash("a test's crash", None)
        assert runner.state is RunnerState.CRASHED
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        client = await connect(runner)
        assert await client.call(GetCount(), T) == Count(n=10)
        await client.close()
        await runner.stop()

    run_async(main())


class OverlapStorage(LmdbStorage):
    """Notes whether an append ever ran while a rewinding checkpoint did (the runner must
    never let them: the rewind moves the log's write position under the append)."""

    overlaps = 0
    lock: threading.Lock
    appending = False
    rewinding = False

    def write(self, batch: SealedBatch) -> WriteOutcome:
        with self.lock:
            self.appending = True
            self.overlaps += self.rewinding
        try:
            return super().write(batch)
        finally:
            self.appending = False

    def checkpoint(self, batch: SealedBatch) -> WriteOutcome:
        if not batch.rewind:
            return super().checkpoint(batch)
        with self.lock:
            self.rewinding = True
            self.overlaps += self.appending
        try:
            time.sleep(0.002)  # a slow rewind: an append started beside it would show
            return super().checkpoint(batch)
        finally:
            self.rewinding = False


def overlap_opener(
    data_dir: Path, cluster: str, node: str, config: NetConfig, *, cluster_id: str = ""
) -> DriverStorage:
    storage = OverlapStorage.open(data_dir, cluster=cluster, node=node, config=config)
    assert isinstance(storage, OverlapStorage)
    storage.lock = threading.Lock()
    return storage


def test_checkpoints_and_rewinds_under_load_keep_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    """Many calls in flight, a checkpoint every 2 batches and a log rewound every few
    hundred bytes (appends waiting for each rewind, which is slowed down): no append runs
    beside a rewind, every reply is right, and after a crash the next incarnation has every
    acknowledged increment."""
    config = replace(FAST, checkpoint_batches=2, checkpoint_bytes=200)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config, storage_opener=overlap_opener)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, OverlapStorage)
        rewinds = storage.rewinds
        client = await connect(runner)
        acked = 0
        for _ in range(40):
            replies = await asyncio.gather(*(client.call(Incr(), T) for _ in range(10)))
            acked += len(replies)
            assert sorted(r.n for r in replies if isinstance(r, Count))[-1] == acked
        assert storage.rewinds > rewinds + 2 and storage.checkpoints > storage.rewinds
        assert storage.overlaps == 0
        await client.close()
        runner._crash("a test's crash", None)
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        client = await connect(runner)
        assert await client.call(GetCount(), T) == Count(n=acked)
        await client.close()
        await runner.stop()

    run_async(main())


def test_a_quiet_node_checkpoints_its_log_within_the_interval(tmp_path: Path) -> None:
    config = replace(FAST, checkpoint_batches=1000, checkpoint_interval_ms=50)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        client = await connect(runner)
        assert await client.call(Incr(), T) == Count(n=1)
        storage = runner.storage
        assert isinstance(storage, LmdbStorage)
        await wait_until(lambda: storage.held == 0, what="a checkpoint of the log")
        assert storage.checkpoints >= 2 and storage.overlay_bytes == 0
        await client.close()
        await runner.stop()

    run_async(main())


def test_a_checkpoint_runs_beside_a_write_and_each_batch_reaches_lmdb_within_the_interval(
    tmp_path: Path,
) -> None:
    """The interval after the first batch ends while the second is being written to the
    log (the write held on the writer thread): the checkpoint of the first runs on the
    checkpointer meanwhile, and the second, once written, is checkpointed within its own
    interval on a node that writes nothing more."""
    config = replace(FAST, checkpoint_batches=1000, checkpoint_interval_ms=50)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config, storage_opener=gated_opener)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, GatedStorage)
        client = await connect(runner)
        await wait_until(lambda: storage.held == 0, what="the boot's checkpoint")
        assert await client.call(Incr(), T) == Count(n=1)  # arms the interval (50 ms)
        checkpoints = storage.checkpoints
        storage.gate.clear()
        storage.started.clear()
        second = asyncio.ensure_future(client.call(Incr(), T))
        await wait_until(storage.started.is_set, what="the second write to start")
        await wait_until(lambda: storage.checkpoints > checkpoints, what="the first checkpoint")
        assert storage.held == 1 and not second.done()  # batch 1 in LMDB; 2 being written
        storage.gate.set()
        assert await second == Count(n=2)
        await wait_until(lambda: storage.held == 0, what="the second batch's checkpoint")
        assert storage.checkpoints == checkpoints + 2
        assert runner.stats.checkpoints >= 2
        await client.close()
        await runner.stop()

    run_async(main())


def test_timer_wakes_the_node_at_its_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, tick_ms=20)
        await runner.start()
        node = counter_of(runner)
        await wait_until(lambda: len(node.wakeups) >= 5, what="5 timer wakeups")
        await runner.stop()
        for w in node.wakeups:
            assert w.mono_ms >= w.deadline  # never early (the node would ignore it)
        late = sorted(w.mono_ms - w.deadline for w in node.wakeups)
        assert late[len(late) // 2] <= 50  # and, on a loaded VM, not wildly late

    run_async(main())


# -- three nodes ----------------------------------------------------------------------------


async def start_cluster(tmp_path: Path, n: int = 3, **kwargs: Any) -> list[NodeRunner]:
    names = [f"n{i}" for i in range(n)]
    runners = [make_runner(tmp_path, name, peers=names, **kwargs) for name in names]
    for r in runners:
        await r.start()
    book = {r.node_id: r.address for r in runners}
    for r in runners:
        r.update_peers(book)
    return runners


def pings_from(runner: NodeRunner) -> dict[str, int]:
    counts: dict[str, int] = {}
    for src, msg in counter_of(runner).received:
        if isinstance(msg, Ping):
            counts[src] = counts.get(src, 0) + 1
    return counts


def test_three_nodes_exchange_messages_over_tcp(tmp_path: Path) -> None:
    async def main() -> None:
        runners = await start_cluster(tmp_path, tick_ms=10)
        try:

            def everyone_heard_everyone() -> bool:
                for r in runners:
                    heard = pings_from(r)
                    others = [o.node_id for o in runners if o is not r]
                    if any(heard.get(o, 0) < 3 for o in others):
                        return False
                return True

            await wait_until(everyone_heard_everyone, what="pings between all pairs")
            # A client-triggered broadcast carries the node's current counter.
            client = await connect(runners[0])
            assert await client.call(Incr(by=41), T) == Count(n=41)
            assert await client.call(Broadcast(), T) == Count(n=41)
            for r in runners[1:]:
                await wait_until(
                    lambda r=r: ("n0", Ping(n=41)) in counter_of(r).received,
                    what="the broadcast ping",
                )
            await client.close()
            for r in runners:
                link = r.link("n1" if r.node_id != "n1" else "n0")
                assert link is not None and link.dropped == 0
        finally:
            for r in runners:
                await r.stop()

    run_async(main())


def test_peer_link_reconnects_after_the_peer_restarts(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await start_cluster(tmp_path, 2)
        try:
            client = await connect(a)
            await client.call(Broadcast(), T)
            await wait_until(lambda: len(pings_from(b)) == 1, what="first ping")
            port = b.address[1]
            await b.stop()
            # Sends while b is down are queued or lost, never an error for a.
            await client.call(Broadcast(), T)
            b = make_runner(tmp_path, "n1", peers=["n0", "n1"], port=port)
            await b.start()
            b.update_peers({"n0": a.address, "n1": b.address})
            node_b = counter_of(b)

            async def pinged() -> None:
                while not any(src == "n0" for src, _ in node_b.received):
                    await client.call(Broadcast(), T)
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(pinged(), T)
            link = a.link("n1")
            assert link is not None and link.connects >= 2
            await client.close()
        finally:
            await a.stop()
            await b.stop()

    run_async(main())


def test_peer_queue_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as unused:  # a port nobody listens on
            unused.bind(("127.0.0.1", 0))
            dead = unused.getsockname()
        config = NetConfig(
            peer_queue_max=10, peer_backoff_initial_ms=1000, peer_backoff_max_ms=1000
        )
        runner = make_runner(tmp_path, "n0", peers=["n0", "n1"], config=config)
        await runner.start()
        runner.update_peers({"n1": dead})
        client = await connect(runner)
        for _ in range(25):
            await client.call(Broadcast(), T)
        link = runner.link("n1")
        assert link is not None
        assert link.queued == 10
        assert link.dropped == 15
        assert runner.running
        await client.close()
        await runner.stop()

    run_async(main())


# -- hostile or broken input ----------------------------------------------------------------

BAD_STREAMS = {
    "garbage": b"\xde\xad\xbe\xef" * 8,
    "oversized-length": HEADER.pack(FAST.frame_bytes_max + 1) + b"x",
    "empty-frame": HEADER.pack(0),
    "not-msgpack": frame(b"\xc1\xc1"),
    "unknown-tag": frame(b"\x93\x01\xcd\x03\xe7\x01"),  # [1, 999, 1]
    "first-frame-not-hello-or-call": encode_frame(Ping(n=1), frame_bytes_max=1024),
    "hello-of-another-cluster": encode_frame(Hello(node="n1", cluster="x"), frame_bytes_max=1024),
    "hello-of-an-unknown-node": encode_frame(
        Hello(node="zz", cluster=CLUSTER), frame_bytes_max=1024
    ),
    "hello-claiming-the-node-itself": encode_frame(
        Hello(node="n0", cluster=CLUSTER), frame_bytes_max=1024
    ),
    "call-without-client-hello": call_frame(1, GetCount()),
    "client-hello-of-another-cluster": encode_frame(
        ClientHello(cluster="x", cluster_id="", fingerprint=""), frame_bytes_max=1024
    ),
    "client-hello-of-another-cluster-id": encode_frame(
        ClientHello(cluster=CLUSTER, cluster_id="c-other", fingerprint=""), frame_bytes_max=1024
    ),
    "call-with-garbage-request": CLIENT_HELLO
    + encode_frame(Call(req_id=1, request=b"\x01"), frame_bytes_max=1024),
    "call-then-ping": CLIENT_HELLO
    + call_frame(1, GetCount())
    + encode_frame(Ping(n=1), frame_bytes_max=1024),
}


def test_malformed_input_closes_only_its_connection_and_steps_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        runners = await start_cluster(tmp_path, 2)
        a = runners[0]
        try:
            client = await connect(a)
            assert await client.call(Incr(), T) == Count(n=1)
            for name, stream in BAD_STREAMS.items():
                steps = a.stats.steps
                inputs = counter_of(a).inputs
                sock = await raw_socket(a, hello=False)
                sock.send(stream)
                rest = without_welcome(await recv_all(sock, until_closed=True))
                sock.close()
                if name == "call-then-ping":  # the valid call before the violation is answered
                    assert decode_replies(rest) == [(1, Count(n=1))]
                    steps += 1
                    inputs += 1
                else:
                    assert rest == b"", name
                assert a.stats.steps == steps, name
                assert counter_of(a).inputs == inputs, name
                # The node, its other clients and its peers carry on.
                assert a.running
                assert await client.call(GetCount(), T) == Count(n=1)
            await client.call(Broadcast(), T)
            await wait_until(lambda: pings_from(runners[1]).get("n0") == 1, what="a ping")
            await client.close()
        finally:
            for r in runners:
                await r.stop()

    run_async(main())


def test_silent_connection_is_closed_after_the_first_frame_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, config=NetConfig(first_frame_timeout_ms=30))
        await runner.start()
        sock = await raw_socket(runner, hello=False)
        sock.send(b"\x00\x00\x00")  # never completes a frame
        assert await recv_all(sock, until_closed=True) == b""
        sock.close()
        await runner.stop()

    run_async(main())


def test_invariant_violation_stops_the_node(tmp_path: Path) -> None:
    recorder = Recorder()

    async def main() -> None:
        runner = make_runner(tmp_path, on_trace=recorder)
        await runner.start()
        client = await connect(runner)
        other = await connect(runner)
        held = asyncio.ensure_future(other.call(Hold(), T))
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionLost):
            await client.call(Explode(), T)
        with pytest.raises(ConnectionLost):
            await held
        reason = await runner.wait_stopped()
        assert reason is not None and "invariant violation: asked to explode" in reason
        with pytest.raises(NotConnected):
            await client.call(GetCount(), T)
        await client.close()
        await other.close()

    run_async(main())
    assert recorder.events == [("n0", "booted")]


# -- storage running short: crossings of the reserve reported to the node --------------------


class SpaceStorage(LmdbStorage):
    """Reports the space the test sets (``room``) instead of measuring it."""

    room = 0

    def space(self) -> StorageSpace:
        return StorageSpace(
            used_bytes=MIB, map_max_bytes=MIB + self.room, file_bytes=MIB, fs_free_bytes=None
        )


def space_opener(room: int) -> StorageOpener:
    """Opens a ``SpaceStorage`` that reports ``room`` from the start (the runner measures it
    before Boot)."""

    def opener(
        data_dir: Path, cluster: str, node: str, config: NetConfig, *, cluster_id: str = ""
    ) -> DriverStorage:
        storage = SpaceStorage.open(data_dir, cluster=cluster, node=node, config=config)
        assert isinstance(storage, SpaceStorage)
        storage.room = room
        return storage

    return opener


RESERVE = STORAGE_RESERVE_MIN_BYTES
"""The reserve of the storage tests, in bytes (the smallest allowed; a 10 % resume margin)."""
MARGIN = RESERVE // 10


def test_crossings_of_the_reserve_are_stepped_into_the_node_before_the_call_with_hysteresis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(FAST, storage_reserve_bytes=RESERVE, storage_space_refresh_ms=1)

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=space_opener(RESERVE), config=config)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, SpaceStorage)
        node = counter_of(runner)
        client = await connect(runner)
        try:
            storage.room = RESERVE
            assert await client.call(GetCount(), T) == Count(n=0)
            assert node.storage_reports == [] and not runner.storage_short
            await asyncio.sleep(0.002)
            storage.room = RESERVE - 1
            assert await client.call(GetCount(), T) == Count(n=0)
            # Reported once, just before the call that revealed it.
            assert node.kinds[-2:] == ["StorageLow", "ClientCall"]
            [low] = node.storage_reports
            assert (low.short, low.available_bytes, low.reserve_bytes) == (
                True,
                RESERVE - 1,
                RESERVE,
            )
            assert low.used_bytes == MIB and "map_size_max_bytes" in low.limit
            assert runner.storage_short
            # The runner refuses nothing itself: writes and reads go on, and a crossing is
            # reported once, not at every measurement.
            await asyncio.sleep(0.002)
            assert await client.call(Incr(), T) == Count(n=1)
            await asyncio.sleep(0.002)
            assert await client.call(GetCount(), T) == Count(n=1)
            await asyncio.sleep(0.002)
            storage.room = RESERVE + MARGIN - 1  # above the reserve, below the resume margin
            assert await client.call(GetCount(), T) == Count(n=1)
            assert len(node.storage_reports) == 1 and runner.storage_short
            await asyncio.sleep(0.002)
            storage.room = RESERVE + MARGIN
            assert await client.call(GetCount(), T) == Count(n=1)
            assert node.kinds[-2:] == ["StorageLow", "ClientCall"]
            back = node.storage_reports[-1]
            assert (back.short, back.available_bytes) == (False, RESERVE + MARGIN)
            assert len(node.storage_reports) == 2 and not runner.storage_short
            assert runner.stats.storage_crossings == 2
            assert runner.stats.space_measurements >= 6
            assert runner.running
        finally:
            await client.close()
            await runner.stop()

    with caplog.at_level(logging.INFO, logger="pxq.storage"):
        run_async(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "pxq.storage"]
    starts = [m for m in messages if "storage low" in m]
    ends = [m for m in messages if "storage back above its reserve" in m]
    assert len(starts) == 1 and "below the reserve of" in starts[0], messages
    assert len(ends) == 1 and "MiB available" in ends[0], messages


def test_a_storage_short_at_start_is_reported_right_after_boot_and_may_grow_past_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13: a node over its limit at start is told so right after Boot, before any
    client call, and its map may grow by the reserve past ``map_size_max_bytes`` for this
    incarnation (a map full at its maximum used to stop it at its first write)."""
    config = replace(
        FAST,
        map_size_bytes=MIB,
        map_size_max_bytes=RESERVE + 64 * 1024,
        storage_reserve_bytes=RESERVE,
        storage_space_refresh_ms=60_000,
    )

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=space_opener(RESERVE - 1), config=config)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, SpaceStorage)
        node = counter_of(runner)
        try:
            assert node.kinds == ["Boot", "StorageLow"]
            [low] = node.storage_reports
            assert (low.short, low.available_bytes, low.reserve_bytes) == (
                True,
                RESERVE - 1,
                RESERVE,
            )
            assert runner.storage_short and runner.stats.storage_crossings == 1
            # Room for the reserve beyond what the tables use (MIB in SpaceStorage), past
            # the configured maximum.
            assert storage.map_ceiling == MIB + RESERVE > config.map_size_max_bytes
            assert runner.stats.space_measurements == 1
            # Writes go on (the node's policy decides what to refuse; this one refuses
            # nothing).
            client = await connect(runner)
            try:
                assert await client.call(Incr(), T) == Count(n=1)
            finally:
                await client.close()
            assert len(node.storage_reports) == 1 and runner.running
        finally:
            await runner.stop()

    with caplog.at_level(logging.WARNING, logger="pxq.storage"):
        run_async(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "pxq.storage"]
    over = [m for m in messages if "over its limit at start" in m]
    assert len(over) == 1 and "starts read-only" in over[0], messages


def test_a_storage_with_room_at_start_is_not_reported_and_keeps_its_ceiling(
    tmp_path: Path,
) -> None:
    config = replace(FAST, storage_reserve_bytes=RESERVE, storage_space_refresh_ms=60_000)

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=space_opener(RESERVE), config=config)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, SpaceStorage)
        try:
            assert counter_of(runner).kinds == ["Boot"]
            assert not runner.storage_short
            assert storage.map_ceiling == config.map_size_max_bytes
        finally:
            await runner.stop()

    run_async(main())


def test_commits_between_measurements_are_charged_and_measured_before_reporting(
    tmp_path: Path,
) -> None:
    # Measurements at most every 60 s: only the charged commits can make the runner look.
    config = replace(FAST, storage_reserve_bytes=RESERVE, storage_space_refresh_ms=60_000)

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=space_opener(RESERVE + 30), config=config)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, SpaceStorage)
        node = counter_of(runner)
        client = await connect(runner)
        try:
            storage.room = RESERVE + 30
            assert await client.call(GetCount(), T) == Count(n=0)
            assert runner.stats.space_measurements == 1
            # Each Incr commits a 9-byte record (charged twice): 36 bytes > the 30 to spare.
            for n in (1, 2):
                assert await client.call(Incr(), T) == Count(n=n)
            assert runner.stats.space_measurements == 1
            storage.room = RESERVE - 1  # what a measurement would now find
            assert await client.call(GetCount(), T) == Count(n=2)
            assert runner.stats.space_measurements == 2  # measured, not guessed
            assert [r.short for r in node.storage_reports] == [True]
            assert node.storage_reports[0].available_bytes == RESERVE - 1
            assert runner.storage_short
        finally:
            await client.close()
            await runner.stop()

    run_async(main())


def test_an_estimate_alone_never_reports_a_crossing(tmp_path: Path) -> None:
    config = replace(FAST, storage_reserve_bytes=RESERVE, storage_space_refresh_ms=60_000)

    async def main() -> None:
        runner = make_runner(tmp_path, storage_opener=space_opener(RESERVE + 30), config=config)
        await runner.start()
        storage = runner.storage
        assert isinstance(storage, SpaceStorage)
        node = counter_of(runner)
        client = await connect(runner)
        try:
            storage.room = RESERVE + 30
            assert await client.call(GetCount(), T) == Count(n=0)
            for n in (1, 2):
                assert await client.call(Incr(), T) == Count(n=n)
            # The estimate is below the reserve, the measurement is not: nothing reported.
            assert await client.call(GetCount(), T) == Count(n=2)
            assert runner.stats.space_measurements == 2
            assert not runner.storage_short
            assert node.storage_reports == [] and "StorageLow" not in node.kinds
            assert runner.stats.storage_crossings == 0
        finally:
            await client.close()
            await runner.stop()

    run_async(main())


# -- client behaviour -----------------------------------------------------------------------


def test_client_timeout_and_connection_loss_are_outcome_unknown(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        await runner.start()
        client = await connect(runner)
        with pytest.raises(CallTimeout, match="outcome unknown"):
            await client.call(Hold(), 0.05)
        # The connection still works after a timeout; open calls fail when the node stops.
        assert await client.call(Incr(), T) == Count(n=1)
        held = [asyncio.ensure_future(client.call(Hold(), T)) for _ in range(3)]
        await asyncio.sleep(0.01)
        await runner.stop()
        for h in held:
            with pytest.raises(ConnectionLost):
                await h
        assert client.closed
        with pytest.raises(NotConnected):
            await client.call(GetCount(), T)
        await client.close()

    run_async(main())


def test_large_responses_flow_under_write_backpressure(tmp_path: Path) -> None:
    config = NetConfig(write_buffer_high_bytes=64 * 1024, write_buffer_low_bytes=16 * 1024)

    async def main() -> None:
        runner = make_runner(tmp_path, config=config)
        await runner.start()
        client = await connect(runner)
        size = 512 * 1024
        replies = await asyncio.gather(*(client.call(GetBlob(size=size), T) for _ in range(16)))
        assert all(r == Blob(data=b"x" * size) for r in replies)
        await client.close()
        await runner.stop()

    run_async(main())


# -- startup errors -------------------------------------------------------------------------


def test_busy_port_is_a_named_startup_error_and_leaves_the_data_dir_free(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            runner = make_runner(tmp_path, port=port)
            with pytest.raises(AddressInUse, match=f"127.0.0.1:{port}.*in use"):
                await runner.start()
        runner = make_runner(tmp_path)  # the data dir was released
        await runner.start()
        await runner.stop()

    run_async(main())


def test_data_dir_errors_are_named_at_startup(tmp_path: Path) -> None:
    async def main() -> None:
        (tmp_path / "file").write_text("x")
        runner = NodeRunner(
            node_id="n0",
            cluster=CLUSTER,
            data_dir=tmp_path / "file",
            factory=make_runner(tmp_path)._factory,
        )
        with pytest.raises(DataDirError, match="not a directory"):
            await runner.start()
        first = make_runner(tmp_path, "n0")
        await first.start()
        await first.stop()
        other = NodeRunner(
            node_id="n1",
            cluster=CLUSTER,
            data_dir=tmp_path / "n0",
            factory=make_runner(tmp_path)._factory,
        )
        with pytest.raises(DataDirMismatch, match="belongs to node 'n0'"):
            await other.start()
        running = make_runner(tmp_path, "n0")
        await running.start()
        with pytest.raises(DataDirError, match="in use"):
            await make_runner(tmp_path, "n0").start()
        await running.stop()

    run_async(main())


def test_a_node_that_fails_at_boot_is_a_startup_error(tmp_path: Path) -> None:
    def broken(node_id: str, storage: Any, rng: Any) -> Any:
        raise RuntimeError("cannot build")

    async def main() -> None:
        runner = NodeRunner(node_id="n0", cluster=CLUSTER, data_dir=tmp_path, factory=broken)
        with pytest.raises(BootFailed, match="cannot build"):
            await runner.start()
        assert runner.state is RunnerState.CRASHED

    run_async(main())


def test_driver_storage_protocol_matches_lmdb_storage(tmp_path: Path) -> None:
    storage: DriverStorage = LmdbStorage.open(tmp_path, cluster="c", node="n", config=FAST)
    writes: tuple[Write, ...] = ()
    storage.apply(writes)
    assert storage.commit() is False
    storage.close()


# -- limits ---------------------------------------------------------------------------------


def test_a_client_with_too_many_open_calls_is_not_read_from(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, config=NetConfig(conn_calls_open_max=2))
        await runner.start()
        node = counter_of(runner)
        sock = await raw_socket(runner)
        sock.send(call_frame(1, Hold()) + call_frame(2, Hold()))
        await wait_until(lambda: node.inputs == 3, what="Boot and two calls")
        sock.send(call_frame(3, Incr()))
        await asyncio.sleep(0.05)
        assert node.inputs == 3  # the third call waits in the socket, unread
        other = await connect(runner)  # other connections are unaffected
        assert await other.call(Incr(), T) == Count(n=1)
        await other.close()
        sock.close()
        await runner.stop()

    run_async(main())


def test_a_corrupt_record_read_at_boot_stops_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        await runner.start()
        client = await connect(runner)
        assert await client.call(Incr(), T) == Count(n=1)
        await client.close()
        await runner.stop()
        _tamper(tmp_path / "n0", "counter", b"n", _flip(0))
        with pytest.raises(BootFailed, match="storage corruption: CRC mismatch"):
            await make_runner(tmp_path).start()

    run_async(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_every_socket_has_tcp_nodelay(tmp_path: Path, loop_kind: str) -> None:
    """Small frames must leave at once (no Nagle delay waiting for a delayed ACK), on the
    client's connection, the node's accepted one and a peer link, on either loop."""
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop")

    async def main() -> list[int]:
        a = make_runner(tmp_path / "a", "n0", peers=["n0", "n1"])
        b = make_runner(tmp_path / "b", "n1", peers=["n0", "n1"])
        await a.start()
        await b.start()
        a.update_peers({"n0": a.address, "n1": b.address})
        b.update_peers({"n0": a.address, "n1": b.address})
        client = await connect(a)
        await client.call(Broadcast(), T)
        await wait_until(lambda: bool(counter_of(b).received), what="the peer message")
        link = a.link("n1")
        assert link is not None and link._transport is not None
        socks = [
            client._protocol.transport.get_extra_info("socket"),  # type: ignore[union-attr]
            next(iter(a._conns))._transport.get_extra_info("socket"),  # type: ignore[union-attr]
            link._transport.get_extra_info("socket"),
        ]
        flags = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in socks]
        await client.close()
        await a.stop()
        await b.stop()
        return flags

    if loop_kind == "uvloop":
        from net.wire.loop import run

        flags = run(asyncio.wait_for(main(), 20))
    else:
        flags = run_async(main())
    assert all(flags) and len(flags) == 3
