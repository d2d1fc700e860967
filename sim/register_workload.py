"""The register workload: simulated clients of the lock service's compare-and-set registers.

Built from a scenario with ``[workload] kind = "register"``: ``[cluster] replicas`` lock nodes
(``LockNode``, ``groups`` Paxos groups each), register keys ``d0/r0``, ``d1/r1``, ``d0/r2`` …
(``keys`` of them over ``DIRS`` directories, whose hashes spread them over the groups), and
``clients`` client endpoints ``c0``, ``c1``, … Each client runs one logical process at a time
(Jepsen semantics) with Poisson arrivals at ``rate_per_s / clients``: it reads a random key
(locally at the master or through the log), writes a fresh value (unique in the run, so the
checker can tell every write apart), or compare-and-sets one, expecting the value it last saw
of that key (or, now and then, None: "never written", or a value it never saw). Requests go to
the master of the key's group as far as the client knows, following ``LockRedirect``; a
timeout (``timeout_ms``) is recorded ``info`` and retires the process. After the run the
first client reads every key through the log (the final reads, into the history).

History (the ``kv`` model of ``pxq.check.models``: ``f`` = ``read`` / ``write`` / ``cas``;
values are the register values as text, None for a register never written)::

    invoke  key; value: None (read), the value (write), [expected, new] (cas);
            through_log (reads); final (the final reads)
    ok      key, version, at_ms; value: what was read (None: never written), or as invoked
    fail    reason: "mismatch" (a cas that found another value, whose value and version
            the completion carries as current, current_version) or a definite LockError's code
    info    reason (a timeout or an indefinite LockError: it may take effect, once)

The run checks it as ``pxq check HISTORY --model kv`` does (``pxq.check.models.check_history``:
the ``kv`` model, each key a register initially null; a ``fail`` took no effect).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pxq.check.history import JSON, HistoryWriter
from pxq.effects import NodeId
from pxq.lock.messages import (
    CasRegister,
    LockError,
    LockRedirect,
    ReadRegister,
    RegisterMismatch,
    RegisterOk,
    WriteRegister,
    group_of_key,
)
from sim.world import CallMsg, ReplyMsg, World

REDIRECT_BACKOFF_US: Final = 20_000
DIRS: Final = 2
"""Directories the keys are spread over (``d0/`` and ``d1/`` fall in different groups of two)."""
READ_SHARE: Final = 0.4
WRITE_SHARE: Final = 0.3
"""Of the operations: reads, writes, and the rest compare-and-sets."""


def key_name(i: int) -> str:
    return f"d{i % DIRS}/r{i}"


def value_text(value: bytes | None) -> str | None:
    """A register value as the history records it (the workload writes ASCII only)."""
    return None if value is None else value.decode("utf-8", "backslashreplace")


@dataclass(slots=True)
class _Op:
    process: int
    f: str
    key: str
    request: object
    group: int
    req_id: int
    target: NodeId
    token: int


class RegisterClient:
    """One client endpoint of the register workload."""

    def __init__(
        self,
        *,
        name: str,
        index: int,
        clients: int,
        world: World,
        history: HistoryWriter,
        rng: random.Random,
        replicas: list[NodeId],
        groups: int,
        keys: int,
        rate_per_s: float,
        timeout_ms: int,
    ) -> None:
        self.name = name
        self.world = world
        self.history = history
        self.rng = rng
        self.replicas = replicas
        self.groups = groups
        self.keys = [key_name(i) for i in range(keys)]
        self.mean_gap_us = 1_000_000 / rate_per_s
        self.timeout_us = timeout_ms * 1000
        self.process = index
        self.process_stride = clients
        self.req_seq = 0
        self.values_made = 0
        self.seen: dict[str, bytes | None] = {}
        """key -> the value this client last read or wrote there (what its cas expects)."""
        self.op: _Op | None = None
        self.masters: dict[int, NodeId] = {}
        self.running = False
        self.final_keys: list[str] = []
        self.final_done: Callable[[], None] | None = None
        self.counts = {
            "invoke": 0,
            "ok": 0,
            "mismatch": 0,
            "fail": 0,
            "info": 0,
            "redirect": 0,
        }
        world.add_endpoint(name, self.receive)

    def start(self) -> None:
        self.running = True
        self._schedule_next()

    def stop(self) -> None:
        """Invoke nothing new; an operation in flight still completes or times out."""
        self.running = False

    def final_reads(self, done: Callable[[], None]) -> None:
        """Read every key through the log, one after the other, then call ``done`` (a read
        that times out is recorded ``info`` and the next one goes on)."""
        self.final_keys = list(self.keys)
        self.final_done = done
        self._next_final()

    def _next_final(self) -> None:
        if self.op is not None:
            return
        if not self.final_keys:
            done, self.final_done = self.final_done, None
            if done is not None:
                done()
            return
        key = self.final_keys.pop(0)
        request = ReadRegister(key=key, through_log=True)
        self._invoke("read", key, request, None, {"through_log": True, "final": True})

    def _schedule_next(self) -> None:
        gap = int(self.rng.expovariate(1.0) * self.mean_gap_us) + 1
        self.world.call_later(gap, self._arrival)

    def _arrival(self) -> None:
        if not self.running:
            return
        if self.op is None:
            self._invoke(*self._choose())
        self._schedule_next()

    def _now_ms(self) -> int:
        return self.world.now_us // 1000

    # -- choosing an operation -------------------------------------------------------------

    def _new_value(self) -> bytes:
        self.values_made += 1
        return f"{self.name}.{self.values_made}".encode()

    def _choose(self) -> tuple[str, str, object, JSON, dict[str, JSON]]:
        key = self.rng.choice(self.keys)
        r = self.rng.random()
        if r < READ_SHARE:
            through_log = self.rng.random() < 0.5
            return (
                "read",
                key,
                ReadRegister(key=key, through_log=through_log),
                None,
                {"through_log": through_log},
            )
        value = self._new_value()
        if r < READ_SHARE + WRITE_SHARE:
            return "write", key, WriteRegister(key=key, value=value), value_text(value), {}
        pick = self.rng.random()
        if pick < 0.1:
            expected: bytes | None = None  # "never written": succeeds once per key
        elif pick < 0.15:
            expected = b"never-written"  # a value nobody writes: a certain mismatch
        else:
            expected = self.seen.get(key)
        return (
            "cas",
            key,
            CasRegister(key=key, expected=expected, value=value),
            [value_text(expected), value_text(value)],
            {},
        )

    # -- the operation in flight -------------------------------------------------------------

    def _invoke(
        self, f: str, key: str, request: object, value: JSON, extra: dict[str, JSON]
    ) -> None:
        group = group_of_key(key, self.groups)
        target = self.masters.get(group) or self.replicas[group % len(self.replicas)]
        self.req_seq += 1
        op = _Op(
            process=self.process,
            f=f,
            key=key,
            request=request,
            group=group,
            req_id=self.req_seq,
            target=target,
            token=self.req_seq,
        )
        self.op = op
        self.counts["invoke"] += 1
        self.history.invoke(self._now_ms(), op.process, f, value, key=key, **extra)
        self._send(op)
        token = op.token
        self.world.call_later(self.timeout_us, lambda: self._timeout(token))

    def _send(self, op: _Op) -> None:
        self.req_seq += 1
        op.req_id = self.req_seq
        self.world.network.send(self.name, op.target, CallMsg(op.req_id, op.request))

    def _resend(self, op: _Op) -> None:
        if self.op is op:
            self._send(op)

    def _timeout(self, token: int) -> None:
        op = self.op
        if op is None or op.token != token:
            return
        self.masters.pop(op.group, None)  # ask someone else next time
        self._unknown(op, "timeout")

    def _done(self) -> None:
        """The operation in flight ended: go on with the final reads, if they run."""
        self.op = None
        if self.final_done is not None:
            self._next_final()

    def _unknown(self, op: _Op, reason: str) -> None:
        self.counts["info"] += 1
        self.history.info(self._now_ms(), op.process, op.f, None, key=op.key, reason=reason)
        self.process += self.process_stride  # retire the process (Jepsen semantics)
        if op.f != "read":
            self.seen.pop(op.key, None)  # the value is unknown now
        self._done()

    def _invoked_value(self, op: _Op) -> JSON:
        match op.request:
            case WriteRegister(value=value):
                return value_text(value)
            case CasRegister(expected=expected, value=value):
                return [value_text(expected), value_text(value)]
            case _:
                return None

    def receive(self, src: str, payload: object) -> None:
        op = self.op
        if not isinstance(payload, ReplyMsg) or op is None or payload.req_id != op.req_id:
            return  # a late reply to an operation already completed
        match payload.response:
            case RegisterOk(value=value, version=version, at_ms=at_ms):
                self.masters[op.group] = src
                self.counts["ok"] += 1
                self.seen[op.key] = value
                shown = value_text(value) if op.f == "read" else self._invoked_value(op)
                self.history.ok(
                    self._now_ms(),
                    op.process,
                    op.f,
                    shown,
                    key=op.key,
                    version=version,
                    at_ms=at_ms,
                )
                self._done()
            case RegisterMismatch(value=value, version=version) if op.f == "cas":
                self.masters[op.group] = src
                self.counts["mismatch"] += 1
                self.seen[op.key] = value
                self.history.fail(
                    self._now_ms(),
                    op.process,
                    op.f,
                    self._invoked_value(op),
                    key=op.key,
                    reason="mismatch",
                    current=value_text(value),
                    current_version=version,
                )
                self._done()
            case LockRedirect(master=master):
                self.counts["redirect"] += 1
                if master is not None and master != op.target:
                    self.masters[op.group] = master
                    op.target = master
                    self._send(op)
                else:
                    self.masters.pop(op.group, None)
                    op.target = self.rng.choice(self.replicas)
                    self.world.call_later(REDIRECT_BACKOFF_US, lambda: self._resend(op))
            case LockError(code=code, definite=True):
                self.counts["fail"] += 1
                self.history.fail(
                    self._now_ms(),
                    op.process,
                    op.f,
                    self._invoked_value(op),
                    key=op.key,
                    reason=code,
                )
                self._done()
            case LockError(code=code):
                self._unknown(op, code)
            case other:
                self._unknown(op, f"unexpected reply {type(other).__name__}")
