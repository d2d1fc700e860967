"""Quick figures for the production driver: frames/s on one connection, LMDB commit latency.

Run ``python -m net.tools.node_bench`` (add ``--quick`` for a shorter run). Everything runs in one
process on one event loop (sender and receiver share a core), on 127.0.0.1, with data in a
temporary directory. It measures:

* ``stream``: one-way frames/s over one TCP connection into an ``InboundConnection`` peer
  stream (4-byte length, codec decode, delivery to a counting host), for small messages;
* ``calls``: pipelined ``NodeClient.call`` round trips/s to a ``NodeRunner``, for a request
  that writes nothing (``noop``) and for one that writes and is group-committed (``write``);
* ``commit``: latency and CPU (user + system, this thread) of one LMDB transaction holding one
  100-byte put (``sync=True``: the data pages and the meta page each synced), beside the floor
  of a log file: one 128-byte append plus ``fdatasync`` in the same directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from net.client.connection import ClusterIdentity, NodeClient
from net.config import MIB, NetConfig
from net.node.runner import NodeRunner
from net.node.storage import LmdbStorage
from net.node.transport import InboundConnection
from net.wire.envelope import ClientHello, Hello, Login, Welcome
from net.wire.framing import encode_frame
from pxq.codec import message
from pxq.effects import (
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    Now,
    Put,
    u64,
)


@message(1089)
@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOp:
    """A benchmark request (a "tests" range tag: it is never part of the product wire)."""

    write: bool
    n: int


class _BenchNode:
    """Replies to every ``BenchOp`` with itself, writing a key first if asked."""

    def __init__(self) -> None:
        self.count = 0

    def step(self, now: Now, inp: Input) -> Effects:
        if not isinstance(inp, ClientCall) or not isinstance(inp.request, BenchOp):
            return Effects()
        fx = EffectsBuilder()
        if inp.request.write:
            self.count += 1
            fx.put("bench", b"n", u64(self.count))
        fx.reply(inp.call_id, inp.request)
        return fx.build()

    def next_deadline(self) -> int | None:
        return None


class _CountingHost:
    def __init__(self) -> None:
        self.messages = 0

    def connection_opened(self, conn: InboundConnection) -> bool:
        return True

    def accept_hello(self, conn: InboundConnection, hello: Hello) -> str | None:
        return None

    def accept_login(self, conn: InboundConnection, login: Login) -> str | None:
        return "no logins here"

    def accept_client(self, conn: InboundConnection, hello: ClientHello) -> Welcome:
        return Welcome(node="b", cluster=hello.cluster, cluster_id=hello.cluster_id)

    def peer_message(self, src: str, msg: object) -> None:
        self.messages += 1

    def client_call(self, conn: InboundConnection, req_id: int, request: object) -> None:
        pass

    def connection_closed(self, conn: InboundConnection) -> None:
        pass


async def bench_stream(frames: int, batch: int) -> float:
    """Frames/s of one one-way peer stream (sender writes ``batch`` frames per write)."""
    config = NetConfig()
    host = _CountingHost()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: InboundConnection(host, config), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    transport.write(encode_frame(Hello(node="b", cluster="c"), frame_bytes_max=MIB))
    one = encode_frame(BenchOp(write=False, n=123456), frame_bytes_max=MIB)
    chunk = one * batch
    start = time.perf_counter()
    sent = 0
    while sent < frames:
        transport.write(chunk)
        sent += batch
        # Let the receiver run; without backpressure the sender would only fill buffers.
        while transport.get_write_buffer_size() > 1 * MIB:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    while host.messages < sent:
        await asyncio.sleep(0.0005)
    elapsed = time.perf_counter() - start
    transport.close()
    server.close()
    await server.wait_closed()
    return sent / elapsed


async def bench_calls(data_dir: Path, calls: int, window: int, write: bool) -> tuple[float, int]:
    """Round trips/s of pipelined calls (``window`` in flight) and the commits they took."""
    runner = NodeRunner(
        node_id="b0",
        cluster="bench",
        data_dir=data_dir,
        factory=lambda node_id, storage, rng: _BenchNode(),
    )
    await runner.start()
    host, port = runner.address
    client = await NodeClient.connect(host, port, cluster=ClusterIdentity(name="bench"))
    commits_before = runner.stats.commits
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < calls:
            done += 1
            await client.call(BenchOp(write=write, n=done), 10.0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    elapsed = time.perf_counter() - start
    commits = runner.stats.commits - commits_before
    await client.close()
    await runner.stop()
    return calls / elapsed, commits


def _thread_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def bench_commit(data_dir: Path, commits: int) -> tuple[list[float], float]:
    """Latencies in ms of ``commits`` transactions of one 100-byte put each, and the CPU
    seconds per commit."""
    storage = LmdbStorage.open(data_dir, cluster="bench", node="c0", config=NetConfig())
    rng = random.Random(1)
    latencies = []
    try:
        cpu = _thread_cpu_s()
        for i in range(commits):
            storage.apply([Put(table="t", key=u64(i), value=rng.randbytes(100))])
            start = time.perf_counter_ns()
            storage.commit()
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        cpu = _thread_cpu_s() - cpu
    finally:
        storage.close()
    return latencies, cpu / commits


def bench_append(data_dir: Path, appends: int) -> tuple[list[float], float]:
    """The same for a 128-byte append plus ``fdatasync`` to one file (a log's floor)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    record = random.Random(2).randbytes(128)
    latencies = []
    try:
        cpu = _thread_cpu_s()
        for _ in range(appends):
            start = time.perf_counter_ns()
            os.write(fd, record)
            os.fdatasync(fd)
            latencies.append((time.perf_counter_ns() - start) / 1e6)
        cpu = _thread_cpu_s() - cpu
    finally:
        os.close(fd)
    return latencies, cpu / appends


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def main(quick: bool) -> None:
    scale = 1 if quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 64):
            rate = await bench_stream(50_000 * scale, batch)
            print(f"stream: {rate:,.0f} frames/s (small frames, {batch} per sender write)")
        for write in (False, True):
            for window in (1, 64):
                rate, commits = await bench_calls(
                    Path(tmp) / f"calls-{write}-{window}", 2_000 * scale, window, write
                )
                kind = "write" if write else "noop"
                print(f"calls ({kind}, {window} in flight): {rate:,.0f} calls/s, {commits} commits")
        lat, cpu = bench_commit(Path(tmp) / "commit", 500 * scale)
        print(
            f"commit (1 put of 100 B, sync=True): p50 {statistics.median(lat):.3f} ms, "
            f"p90 {_pct(lat, 0.9):.3f} ms, p99 {_pct(lat, 0.99):.3f} ms, "
            f"{len(lat) / (sum(lat) / 1000):,.0f} commits/s, {cpu * 1e6:.0f} CPU µs per commit"
        )
        lat, cpu = bench_append(Path(tmp) / "append", 500 * scale)
        print(
            f"append (128 B + fdatasync): p50 {statistics.median(lat):.3f} ms, "
            f"p90 {_pct(lat, 0.9):.3f} ms, p99 {_pct(lat, 0.99):.3f} ms, "
            f"{cpu * 1e6:.0f} CPU µs per append"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    asyncio.run(main(parser.parse_args().quick))
