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

from collections.abc import Callable
from typing import Final

from pxq.check.history import JSON
from pxq.lock.messages import (
    CasRegister,
    ReadRegister,
    RegisterMismatch,
    RegisterOk,
    WriteRegister,
)
from sim.client import ClientSetup, KeyOp, LockServiceClient

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


class RegisterClient(LockServiceClient):
    """One client endpoint of the register workload (the plumbing: ``sim/client.py``)."""

    COUNTS = ("invoke", "ok", "mismatch", "fail", "info", "redirect")

    def __init__(self, setup: ClientSetup, *, keys: int) -> None:
        super().__init__(setup)
        self.keys = [key_name(i) for i in range(keys)]
        self.values_made = 0
        self.seen: dict[str, bytes | None] = {}
        """key -> the value this client last read or wrote there (what its cas expects)."""
        self.final_keys: list[str] = []
        self.final_done: Callable[[], None] | None = None

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
        self._invoke_key(
            "read", key, request, None, {"key": key, "through_log": True, "final": True}
        )

    # -- choosing an operation -------------------------------------------------------------

    def _new_value(self) -> bytes:
        self.values_made += 1
        return f"{self.name}.{self.values_made}".encode()

    def _invoke_next(self) -> None:
        key = self.rng.choice(self.keys)
        r = self.rng.random()
        if r < READ_SHARE:
            through_log = self.rng.random() < 0.5
            read = ReadRegister(key=key, through_log=through_log)
            self._invoke_key("read", key, read, None, {"key": key, "through_log": through_log})
            return
        value = self._new_value()
        if r < READ_SHARE + WRITE_SHARE:
            write = WriteRegister(key=key, value=value)
            self._invoke_key("write", key, write, value_text(value), {"key": key})
            return
        pick = self.rng.random()
        if pick < 0.1:
            expected: bytes | None = None  # "never written": succeeds once per key
        elif pick < 0.15:
            expected = b"never-written"  # a value nobody writes: a certain mismatch
        else:
            expected = self.seen.get(key)
        self._invoke_key(
            "cas",
            key,
            CasRegister(key=key, expected=expected, value=value),
            [value_text(expected), value_text(value)],
            {"key": key},
        )

    # -- the operation in flight -------------------------------------------------------------

    def _timed_out(self, op: KeyOp) -> None:
        self.masters.pop(op.group, None)  # ask someone else next time
        self._unknown(op, "timeout")

    def _unsure(self, op: KeyOp) -> None:
        if op.f != "read":
            self.seen.pop(op.key, None)  # the value is unknown now

    def _fail_value(self, op: KeyOp) -> JSON:
        return op.value  # as invoked

    def _done(self) -> None:
        """The operation in flight ended: go on with the final reads, if they run."""
        super()._done()
        if self.final_done is not None:
            self._next_final()

    def _complete(self, src: str, op: KeyOp, response: object) -> bool:
        match response:
            case RegisterOk(value=value, version=version, at_ms=at_ms):
                self.masters[op.group] = src
                self.counts["ok"] += 1
                self.seen[op.key] = value
                shown = value_text(value) if op.f == "read" else op.value
                self.history.ok(
                    self._now_ms(),
                    op.process,
                    op.f,
                    shown,
                    key=op.key,
                    version=version,
                    at_ms=at_ms,
                )
            case RegisterMismatch(value=value, version=version) if op.f == "cas":
                self.masters[op.group] = src
                self.counts["mismatch"] += 1
                self.seen[op.key] = value
                self.history.fail(
                    self._now_ms(),
                    op.process,
                    op.f,
                    op.value,
                    key=op.key,
                    reason="mismatch",
                    current=value_text(value),
                    current_version=version,
                )
            case _:
                return False
        self._done()
        return True
