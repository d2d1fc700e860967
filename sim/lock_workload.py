"""The lock workload: simulated clients of the lock service, their history, and its checks.

Built from a scenario with ``[workload] kind = "lock"``: ``[cluster] replicas`` lock nodes
(``LockNode``, ``groups`` Paxos groups each), lock keys ``d0/k0``, ``d1/k1``, ``d0/k2`` …
(``keys`` of them over ``DIRS`` directories, whose hashes spread them over the groups), and
``clients`` client endpoints ``c0``, ``c1``, … Each client runs one logical process at a time
(Jepsen semantics) with Poisson arrivals at ``rate_per_s / clients``. It acquires random keys
for ``lease_ms`` (most acquires carrying a value), holds what it gets for a random time
(renewing it every half lease, some renewals replacing the value), then releases it; between
those it reads random keys and lists random directories (locally at the master or through the
log; listings of a random size, some starting after a key, so that ``more`` shows). The
holder name is the client's name, so a later process of the same client is the same holder.
Requests go to the master of the key's group as far as the client knows, following
``LockRedirect``; a timeout (``timeout_ms``) is recorded ``info`` and retires the process, and
the client's next request for that group goes to the next replica after the silent one.

History (``f`` = ``acquire`` / ``renew`` / ``release`` / ``read`` / ``list``; ``value`` is the
lock value as text, ``pxq.check.lock.value_text``)::

    invoke  key, holder (the client; "" for a read), version (renew/release: the token held;
            acquire: the expected version, always None here), lease_ms (0 for release/read),
            through_log (reads); value: the value an acquire or renew sets (None: a renew
            keeping the value; None for release/read)
    ok      key, outcome ("ok": LockOk, "denied": LockDenied), holder, version, expiry_ms
            (the entry the answer carries), at_ms (the apply time the answer carries); value:
            the entry's value in the answer
    fail    reason (a definite LockError: the command took no effect)
    info    reason (a timeout or an indefinite LockError: it may take effect, once)

    list invoke  prefix, start_after, entries_max, through_log
    list ok      prefix, entries ([key, holder, version, expiry_ms, value] each), more, at_ms

A denial is an ``ok`` completion: the command was applied, and refused. The checker reads a
listing as a read of every key of the directory it covers (``pxq.check.lock``), so values and
listings are checked by the same linearizability search as everything else.

The checks (``check_lock_linearizable``, ``check_fencing``, ``check_lock_liveness``) live in
``pxq/check/lock.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pxq.check.history import JSON
from pxq.check.lock import value_text
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockList,
    LockOk,
    ReadLock,
    Release,
    Renew,
    directory_of,
)
from sim.client import ClientSetup, KeyOp, LockServiceClient

LIST_F: Final = "list"
LEASE_MARGIN_MS: Final = 50
"""A client considers its lease lost this long before ``lease_ms`` after sending the request
(its own drift allowance, as ``pxq.lock.messages`` advises)."""
DIRS: Final = 2
"""Directories the keys are spread over (``d0/`` and ``d1/`` fall in different groups of two)."""

_Choice = tuple[str, str, object, JSON, dict[str, JSON]]
"""An operation chosen: ``(f, key, request, value, extra)`` as ``_invoke_key`` takes them."""


def key_name(i: int) -> str:
    return f"d{i % DIRS}/k{i}"


@dataclass(slots=True)
class _Held:
    version: int
    valid_until_us: int
    """The client's own idea of its lease: sent time + lease - margin."""
    renew_at_us: int
    release_at_us: int


class LockClient(LockServiceClient):
    """One client endpoint of the lock workload (the plumbing: ``sim/client.py``)."""

    COUNTS = ("invoke", "ok", "granted", "denied", "fail", "info", "redirect")

    def __init__(self, setup: ClientSetup, *, keys: int, lease_ms: int) -> None:
        super().__init__(setup)
        self.keys = [key_name(i) for i in range(keys)]
        self.dirs = sorted({directory_of(k) for k in self.keys})
        self.lease_ms = lease_ms
        self.values_made = 0
        self.held: dict[str, _Held] = {}

    # -- choosing an operation -------------------------------------------------------------

    def _invoke_next(self) -> None:
        self._invoke_key(*self._choose())

    def _choose(self) -> _Choice:
        now = self.world.now_us
        for key in sorted(self.held):
            if self.held[key].valid_until_us <= now:
                del self.held[key]  # lost: the client stops using the token
        held = sorted(self.held)
        for key in held:
            h = self.held[key]
            if h.release_at_us <= now:
                return self._release(key, h.version)
        for key in held:
            h = self.held[key]
            if h.renew_at_us <= now:
                return self._renew(key, h.version)
        r = self.rng.random()
        key = self.rng.choice(self.keys)
        if r < 0.6:
            value = self._new_value() if self.rng.random() < 0.7 else b""
            return (
                "acquire",
                key,
                Acquire(key=key, holder=self.name, lease_ms=self.lease_ms, value=value),
                value_text(value),
                {"key": key, "holder": self.name, "version": None, "lease_ms": self.lease_ms},
            )
        if r < 0.7:
            return self._list()
        if r < 0.9 or not held:
            through_log = self.rng.random() < 0.5
            return (
                "read",
                key,
                ReadLock(key=key, through_log=through_log),
                None,
                {
                    "key": key,
                    "holder": "",
                    "version": None,
                    "lease_ms": 0,
                    "through_log": through_log,
                },
            )
        key = self.rng.choice(held)  # an early renewal
        return self._renew(key, self.held[key].version)

    def _new_value(self) -> bytes:
        self.values_made += 1
        return f"{self.name}.{self.values_made}".encode()

    def _list(self) -> _Choice:
        prefix = self.rng.choice(self.dirs)
        mine = [k for k in self.keys if directory_of(k) == prefix]
        start_after = self.rng.choice(mine) if self.rng.random() < 0.2 else ""
        entries_max = self.rng.randint(1, len(mine))
        through_log = self.rng.random() < 0.5
        return (
            LIST_F,
            prefix,
            ListLocks(
                prefix=prefix,
                entries_max=entries_max,
                through_log=through_log,
                start_after=start_after,
            ),
            None,
            {
                "prefix": prefix,
                "start_after": start_after,
                "entries_max": entries_max,
                "through_log": through_log,
            },
        )

    def _renew(self, key: str, version: int) -> _Choice:
        value = self._new_value() if self.rng.random() < 0.3 else None
        return (
            "renew",
            key,
            Renew(key=key, holder=self.name, version=version, lease_ms=self.lease_ms, value=value),
            None if value is None else value_text(value),
            {"key": key, "holder": self.name, "version": version, "lease_ms": self.lease_ms},
        )

    def _release(self, key: str, version: int) -> _Choice:
        return (
            "release",
            key,
            Release(key=key, holder=self.name, version=version),
            None,
            {"key": key, "holder": self.name, "version": version, "lease_ms": 0},
        )

    # -- the operation in flight -------------------------------------------------------------

    def _timed_out(self, op: KeyOp) -> None:
        # Ask someone else next time: the next replica after the one that did not answer
        # (the group's default replica may be the one that is stuck).
        after = self.replicas[(self.replicas.index(op.target) + 1) % len(self.replicas)]
        self.masters[op.group] = after
        self._unknown(op, "timeout")

    def _unsure(self, op: KeyOp) -> None:
        if op.f == "release":
            self.held.pop(op.key, None)  # stop using it whatever happened

    def _complete(self, src: str, op: KeyOp, response: object) -> bool:
        match response:
            case LockOk() | LockDenied() as answer if op.f != LIST_F:
                self.masters[op.group] = src
                self._answered(op, answer)
            case LockList() as listing if op.f == LIST_F:
                self.masters[op.group] = src
                self._listed(op, listing)
            case _:
                return False
        self._done()
        return True

    def _listed(self, op: KeyOp, listing: LockList) -> None:
        self.counts["ok"] += 1
        self.history.ok(
            self._now_ms(),
            op.process,
            op.f,
            None,
            prefix=listing.prefix,
            entries=[
                [e.key, e.holder, e.version, e.expiry_ms, value_text(e.value)]
                for e in listing.entries
            ],
            more=listing.more,
            at_ms=listing.at_ms,
        )

    def _answered(self, op: KeyOp, answer: LockOk | LockDenied) -> None:
        granted = isinstance(answer, LockOk)
        self.counts["ok"] += 1
        self.counts["granted" if granted else "denied"] += 1
        self.history.ok(
            self._now_ms(),
            op.process,
            op.f,
            value_text(answer.value),
            key=op.key,
            outcome="ok" if granted else "denied",
            holder=answer.holder,
            version=answer.version,
            expiry_ms=answer.expiry_ms,
            at_ms=answer.at_ms,
        )
        now = self.world.now_us
        if op.f in ("acquire", "renew"):
            if granted and answer.holder == self.name:
                lease_us = self.lease_ms * 1000
                previous = self.held.get(op.key)
                release_at = (
                    previous.release_at_us
                    if previous is not None and previous.version == answer.version
                    else now + self.rng.randint(lease_us // 2, 3 * lease_us)
                )
                self.held[op.key] = _Held(
                    version=answer.version,
                    valid_until_us=op.sent_us + lease_us - LEASE_MARGIN_MS * 1000,
                    renew_at_us=op.sent_us + lease_us // 2,
                    release_at_us=release_at,
                )
            elif op.f == "renew":
                self.held.pop(op.key, None)  # denied: the lock was lost
        elif op.f == "release":
            self.held.pop(op.key, None)
