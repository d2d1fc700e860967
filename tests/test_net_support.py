"""Shared helpers of the ``net`` tests: a small test node with wire messages, and a bounded
way to run a coroutine.

Nothing here is product code. The messages use codec tags 1080-1089 (the "tests" range).
``NetCounterNode`` persists a counter and answers calls over the real wire; it can broadcast
pings to its peers on a timer and records what it received and when it woke up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, assert_never

from net.config import NetConfig
from net.node.runner import NodeRunner
from pxq.codec import message
from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    InvariantViolation,
    NodeFactory,
    Now,
    Received,
    Rng,
    StorageLow,
    StorageView,
    Wake,
    from_u64,
    u64,
)

T = TypeVar("T")

CLUSTER = "test-cluster"
FAST = NetConfig(
    first_frame_timeout_ms=500,
    peer_backoff_initial_ms=5,
    peer_backoff_max_ms=50,
    peer_connect_timeout_ms=500,
)
"""Limits with short timeouts, so that failure paths resolve quickly in tests."""


@message(1080)
@dataclass(frozen=True, slots=True, kw_only=True)
class Incr:
    """Add ``by`` to the persisted counter; answered with ``Count``."""

    by: int = 1


@message(1081)
@dataclass(frozen=True, slots=True, kw_only=True)
class GetCount:
    """Read the counter without writing; answered with ``Count``."""


@message(1082)
@dataclass(frozen=True, slots=True, kw_only=True)
class Count:
    n: int


@message(1083)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Peer message: the sender's counter when it sent this."""

    n: int


@message(1084)
@dataclass(frozen=True, slots=True, kw_only=True)
class Broadcast:
    """Send ``Ping`` to every peer (no write); answered with ``Count``."""


@message(1085)
@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """Never answered (for client timeouts)."""


@message(1086)
@dataclass(frozen=True, slots=True, kw_only=True)
class Explode:
    """Makes the node raise ``InvariantViolation``."""


@message(1087)
@dataclass(frozen=True, slots=True, kw_only=True)
class Blob:
    """Arbitrary bytes (used as a peer payload and as a large response)."""

    data: bytes


@message(1088)
@dataclass(frozen=True, slots=True, kw_only=True)
class GetBlob:
    """Answered with a ``Blob`` of ``size`` bytes."""

    size: int


@dataclass(slots=True)
class Wakeup:
    deadline: int
    mono_ms: int


class NetCounterNode:
    """A counter persisted in table ``counter`` (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        storage: StorageView,
        rng: Rng,
        *,
        tick_ms: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.storage = storage
        self.rng = rng
        self.tick_ms = tick_ms
        self.count = 0
        self.deadline: int | None = None
        self.received: list[tuple[str, object]] = []
        self.wakeups: list[Wakeup] = []
        self.inputs = 0
        self.kinds: list[str] = []
        """The type of every input, in order."""
        self.storage_reports: list[StorageLow] = []

    def step(self, now: Now, inp: Input) -> Effects:
        self.inputs += 1
        self.kinds.append(type(inp).__name__)
        fx = EffectsBuilder()
        match inp:
            case Boot():
                raw = self.storage.get("counter", b"n")
                self.count = 0 if raw is None else from_u64(raw)
                fx.event("booted", count=self.count)
                if self.tick_ms is not None:
                    self.deadline = now.mono_ms + self.tick_ms
            case Wake():
                if self.deadline is not None and now.mono_ms >= self.deadline:
                    self.wakeups.append(Wakeup(deadline=self.deadline, mono_ms=now.mono_ms))
                    self.deadline = now.mono_ms + (self.tick_ms or 0)
                    for p in self.peers:
                        fx.send(p, Ping(n=self.count))
            case Received(src=src, msg=msg):
                self.received.append((src, msg))
            case ClientCall(call_id=call_id, request=request):
                match request:
                    case Incr(by=by):
                        self.count += by
                        fx.put("counter", b"n", u64(self.count))
                        fx.reply(call_id, Count(n=self.count))
                    case GetCount():
                        fx.reply(call_id, Count(n=self.count))
                    case Broadcast():
                        for p in self.peers:
                            fx.send(p, Ping(n=self.count))
                        fx.reply(call_id, Count(n=self.count))
                    case GetBlob(size=size):
                        fx.reply(call_id, Blob(data=b"x" * size))
                    case Explode():
                        raise InvariantViolation("asked to explode")
                    case _:
                        pass  # Hold and anything else: never answered
            case StorageLow():
                self.storage_reports.append(inp)
            case _:
                assert_never(inp)
        return fx.build()

    def next_deadline(self) -> int | None:
        return self.deadline


def counter_factory(peers: list[str], *, tick_ms: int | None = None) -> NodeFactory:
    def build(node_id: str, storage: StorageView, rng: Rng) -> NetCounterNode:
        return NetCounterNode(
            node_id, [p for p in peers if p != node_id], storage, rng, tick_ms=tick_ms
        )

    return build


def counter_of(runner: NodeRunner) -> NetCounterNode:
    node = runner.node
    assert isinstance(node, NetCounterNode)
    return node


def make_runner(
    data_dir: Path,
    node_id: str = "n0",
    *,
    peers: list[str] | None = None,
    tick_ms: int | None = None,
    config: NetConfig = FAST,
    **kwargs: Any,
) -> NodeRunner:
    return NodeRunner(
        node_id=node_id,
        cluster=CLUSTER,
        data_dir=data_dir / node_id,
        factory=counter_factory(peers or [], tick_ms=tick_ms),
        config=config,
        seed=7,
        **kwargs,
    )


def run_async(coro: Coroutine[Any, Any, T], timeout_s: float = 20.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test if it takes longer than
    ``timeout_s`` (every net test is bounded in time)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


async def wait_until(predicate: Any, *, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate()`` every millisecond until true; AssertionError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@dataclass(slots=True)
class Recorder:
    """Collects (node, kind) of trace events."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, node: str, ev: Any) -> None:
        self.events.append((node, ev.kind))
