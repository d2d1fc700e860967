"""Test-only nodes for exercising the simulator's driver and fault models.

Nothing here is product code: these nodes exist so that the simulator can be tested on its
own, independent of the Paxos replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from pxq.effects import (
    Boot,
    ClientCall,
    Effects,
    EffectsBuilder,
    Input,
    Now,
    Received,
    Rng,
    StorageLow,
    StorageView,
    Wake,
    from_u64,
    u64,
)


@dataclass(frozen=True, slots=True)
class Ping:
    n: int


@dataclass(frozen=True, slots=True)
class Fill:
    """A client call that also stores ``size_bytes`` under slot ``slot`` (0: deletes it)."""

    slot: int
    size_bytes: int


class CounterNode:
    """Persists a counter on every input, then tells its peers (and answers client calls)
    with the value it just wrote. A timer ticks every ``tick_ms``."""

    def __init__(
        self,
        node_id: str,
        peers: list[str],
        storage: StorageView,
        rng: Rng,
        *,
        tick_ms: int | None = None,
        send_on_tick: bool = True,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.storage = storage
        self.rng = rng
        self.tick_ms = tick_ms
        self.send_on_tick = send_on_tick
        self.count = 0
        self.deadline: int | None = None
        self.received: list[tuple[str, int]] = []
        self.storage_reports: list[StorageLow] = []

    def step(self, now: Now, inp: Input) -> Effects:
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
                    self.deadline = now.mono_ms + (self.tick_ms or 0)
                    self._bump(fx)
                    if self.send_on_tick:
                        for p in self.peers:
                            fx.send(p, Ping(self.count))
            case Received(src=src, msg=msg):
                if isinstance(msg, Ping):
                    self.received.append((src, msg.n))
                    fx.event("ping", src=src, n=msg.n)
            case ClientCall(call_id=call_id, request=request):
                if isinstance(request, Fill):
                    # Grows (or, with 0, removes) this call's own record of the disk.
                    key = b"fill/%d" % request.slot
                    if request.size_bytes:
                        fx.put("fill", key, b"x" * request.size_bytes)
                    else:
                        fx.delete("fill", key)
                self._bump(fx)
                fx.reply(call_id, self.count)
            case StorageLow():
                self.storage_reports.append(inp)
            case _:
                assert_never(inp)
        return fx.build()

    def _bump(self, fx: EffectsBuilder) -> None:
        self.count += 1
        fx.put("counter", b"n", u64(self.count))

    def next_deadline(self) -> int | None:
        return self.deadline
