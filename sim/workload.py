"""Workloads: simulated clients that drive the cluster and record a Jepsen-style history.

The replicated-log workload: each client is a network endpoint running one logical process
at a time (Jepsen semantics). It appends values with unique ids to a Paxos group through the
master, following redirects, and records ``invoke`` then ``ok`` (with the instance and slot
the value was chosen at), ``fail`` (definitely not appended: rejected) or ``info`` (outcome
unknown: a timeout or an unknown answer). After an ``info`` the process retires and the
client continues under a new process id. Arrivals are Poisson at the configured rate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pxq.check.history import HistoryWriter
from pxq.effects import NodeId
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from sim.world import CallMsg, ReplyMsg, World

VALUE_SEPARATOR = b"|"
REDIRECT_BACKOFF_US = 20_000


def value_id(value: bytes) -> str:
    """The unique id a log workload value starts with."""
    return value.split(VALUE_SEPARATOR, 1)[0].decode("ascii", "replace")


@dataclass(slots=True)
class _Op:
    process: int
    value: bytes
    vid: str
    group: int
    req_id: int
    target: NodeId
    deadline_token: int


class LogClient:
    """One client endpoint of the replicated-log workload."""

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
        rate_per_s: float,
        value_bytes: int,
        timeout_ms: int,
    ) -> None:
        self.name = name
        self.world = world
        self.history = history
        self.rng = rng
        self.replicas = replicas
        self.groups = groups
        self.mean_gap_us = 1_000_000 / rate_per_s
        self.value_bytes = value_bytes
        self.timeout_us = timeout_ms * 1000
        self.process = index
        self.process_stride = clients
        self.seq = 0
        self.req_seq = 0
        self.op: _Op | None = None
        self.masters: dict[int, NodeId] = {}
        self.running = False
        self.counts = {"invoke": 0, "ok": 0, "fail": 0, "info": 0, "redirect": 0}
        world.add_endpoint(name, self.receive)

    def start(self) -> None:
        self.running = True
        self._schedule_next()

    def stop(self) -> None:
        """Invoke nothing new; an operation in flight still completes or times out."""
        self.running = False

    def _schedule_next(self) -> None:
        gap = int(self.rng.expovariate(1.0) * self.mean_gap_us) + 1
        self.world.call_later(gap, self._arrival)

    def _arrival(self) -> None:
        if not self.running:
            return
        if self.op is None:
            self._invoke()
        self._schedule_next()

    def _now_ms(self) -> int:
        return self.world.now_us // 1000

    def _invoke(self) -> None:
        self.seq += 1
        vid = f"p{self.process}-{self.seq}"
        pad = max(0, self.value_bytes - len(vid) - 1)
        value = vid.encode() + VALUE_SEPARATOR + b"." * pad
        group = self.rng.randrange(self.groups)
        target = self.masters.get(group) or self.replicas[group % len(self.replicas)]
        self.req_seq += 1
        op = _Op(self.process, value, vid, group, self.req_seq, target, self.req_seq)
        self.op = op
        self.counts["invoke"] += 1
        self.history.invoke(self._now_ms(), op.process, "append", vid, group=group)
        self._send(op)
        token = op.deadline_token
        self.world.call_later(self.timeout_us, lambda: self._timeout(token))

    def _send(self, op: _Op) -> None:
        self.req_seq += 1
        op.req_id = self.req_seq
        self.world.network.send(
            self.name, op.target, CallMsg(op.req_id, Propose(group=op.group, value=op.value))
        )

    def _timeout(self, token: int) -> None:
        op = self.op
        if op is None or op.deadline_token != token:
            return
        self._complete("info", reason="timeout")

    def _complete(self, kind: str, **extra: int | str) -> None:
        op = self.op
        assert op is not None
        self.op = None
        self.counts[kind] += 1
        now = self._now_ms()
        match kind:
            case "ok":
                self.history.ok(now, op.process, "append", op.vid, group=op.group, **extra)
            case "fail":
                self.history.fail(now, op.process, "append", op.vid, group=op.group, **extra)
            case _:
                self.history.info(now, op.process, "append", op.vid, group=op.group, **extra)
                self.process += self.process_stride  # retire the process (Jepsen semantics)

    def receive(self, src: str, payload: object) -> None:
        op = self.op
        if not isinstance(payload, ReplyMsg) or op is None or payload.req_id != op.req_id:
            return  # a late reply to an operation already completed
        match payload.response:
            case ProposeOk(instance=instance, slot=slot):
                self.masters[op.group] = src
                self._complete("ok", instance=instance, slot=slot)
            case Redirect(master=master):
                self.counts["redirect"] += 1
                if master is not None and master != op.target:
                    self.masters[op.group] = master
                    op.target = master
                    self._send(op)
                else:
                    op.target = self.rng.choice(self.replicas)
                    self.world.call_later(REDIRECT_BACKOFF_US, lambda: self._resend(op))
            case ProposeRejected(reason=reason):
                self._complete("fail", reason=reason)
            case ProposeUnknown(reason=reason):
                self._complete("info", reason=reason)
            case other:
                self._complete("info", reason=f"unexpected reply {type(other).__name__}")

    def _resend(self, op: _Op) -> None:
        if self.op is op:
            self._send(op)
