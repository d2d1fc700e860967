"""Workloads: simulated clients that drive the cluster and record a Jepsen-style history.

The replicated-log workload: each client is a network endpoint running one logical process
at a time (Jepsen semantics). It appends values with unique ids to a Paxos group through the
master, following redirects, and records ``invoke`` then ``ok`` (with the instance and slot
the value was chosen at), ``fail`` (definitely not appended: rejected) or ``info`` (outcome
unknown: a timeout or an unknown answer). After an ``info`` the process retires and the
client continues under a new process id. Arrivals are Poisson at the configured rate. A
timeout, or a redirect that names no master, leaves the master the client knows for the group
as it is (the next append to the group goes there again). The plumbing it shares with the lock
service's clients is ``sim/client.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.check.log import APPEND
from pxq.paxos.messages import Propose, ProposeOk, ProposeRejected, ProposeUnknown, Redirect
from sim.client import ClientOp, ClientSetup, OneOpClient

VALUE_SEPARATOR = b"|"


def value_id(value: bytes) -> str:
    """The unique id a log workload value starts with."""
    return value.split(VALUE_SEPARATOR, 1)[0].decode("ascii", "replace")


@dataclass(slots=True, kw_only=True)
class _Op(ClientOp):
    vid: str


class LogClient(OneOpClient[_Op]):
    """One client endpoint of the replicated-log workload (the plumbing: ``sim/client.py``)."""

    COUNTS = ("invoke", "ok", "fail", "info", "redirect")

    def __init__(self, setup: ClientSetup, *, value_bytes: int) -> None:
        super().__init__(setup)
        self.value_bytes = value_bytes
        self.seq = 0

    def _invoke_next(self) -> None:
        self.seq += 1
        vid = f"p{self.process}-{self.seq}"
        pad = max(0, self.value_bytes - len(vid) - 1)
        value = vid.encode() + VALUE_SEPARATOR + b"." * pad
        group = self.rng.randrange(self.groups)
        target, req_id = self._fresh(group)
        op = _Op(
            process=self.process,
            f=APPEND,
            group=group,
            request=Propose(group=group, value=value),
            target=target,
            req_id=req_id,
            token=req_id,
            vid=vid,
        )
        self._invoke(op, vid, {"group": group})

    def _timed_out(self, op: _Op) -> None:
        # The master it knows stays: the next operation on the group goes there again.
        self._complete(op, "info", reason="timeout")

    def _complete(self, op: _Op, kind: str, **extra: int | str) -> None:
        self.op = None
        self.counts[kind] += 1
        now = self._now_ms()
        match kind:
            case "ok":
                self.history.ok(now, op.process, op.f, op.vid, group=op.group, **extra)
            case "fail":
                self.history.fail(now, op.process, op.f, op.vid, group=op.group, **extra)
            case _:
                self.history.info(now, op.process, op.f, op.vid, group=op.group, **extra)
                self._retire()

    def _reply(self, src: str, op: _Op, response: object) -> None:
        match response:
            case ProposeOk(instance=instance, slot=slot):
                self.masters[op.group] = src
                self._complete(op, "ok", instance=instance, slot=slot)
            case Redirect(master=master):
                self._redirected(op, master)
            case ProposeRejected(reason=reason):
                self._complete(op, "fail", reason=reason)
            case ProposeUnknown(reason=reason):
                self._complete(op, "info", reason=reason)
            case other:
                self._complete(op, "info", reason=f"unexpected reply {type(other).__name__}")
