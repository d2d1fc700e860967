"""The workloads of ``pxq test``: clients of a real cluster that record a Jepsen-style history,
and what each is checked with.

A workload (``Workload``) starts its clients, stops invoking when told, runs its final reads
once the cluster has recovered, and names the history operations that are its own (``fs``:
the runner checks each workload on its own operations and the nemesis's, with the
``pxq check`` model it names) and the ones that show progress (``progress_fs``: the recovery
time after a heal is the time to the first ``ok`` completion of one of them). ``WORKLOADS``
is the registry (name -> factory) that ``pxq test --workload`` chooses from.

- ``queue``: ``net.tools.history_run.HistoryRun``: producers with pipelining and retries (one
  client, ``producers`` tasks), one consumer per consumer group of the topic (the local
  target's cluster has two: ``default`` and ``audit``), and a replay: one group rewound by 1-3
  s at a time drawn from the seed in the middle of the run. Final reads: the drain (every
  acknowledged item must reach every group) and a read of every queue from its master.
  Checked with the ``queue`` model, the cluster's subscriptions and retry levels.
- ``lock``: ``clients`` lock clients over keys of their own (``jepsen/<run>/d0/k0``, ...), as
  ``sim/lock_workload.py`` records them (its docstring has the format): acquire for a lease
  (most with a value), renew at half lease, release after a while, reads (local and through
  the log) and directory listings between; each client a Jepsen process at a time, an
  operation of unknown outcome retiring it. Final reads: every key read through the log.
  Checked with the ``lock`` model (linearizability under leases, fencing tokens).
- ``register``: ``clients`` clients of the lock service's compare-and-set registers (the
  classic Jepsen register test) over keys of their own (``jepsen/<run>/d0/r0``, ...) through
  ``AsyncClient.register_read`` / ``register_write`` / ``register_cas``, recorded as
  ``sim/register_workload.py`` records them (its docstring has the format): reads (local and
  through the log), writes of values unique in the run, compare-and-sets expecting the value
  the client last saw (now and then "never written", or a value nobody wrote). A
  ``CasMismatch`` or any other definite refusal is a ``fail``; ``OutcomeUnknown`` (or any
  other error of a write or cas) an ``info`` that retires the process. Final reads: every
  key through the log. Checked with the ``kv`` model (each key a register, initially null).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from net.client.api import AsyncClient
from net.client.driver import NodePool
from net.client.types import CasMismatch, PxqError, RequestFailed
from net.errors import CallOutcomeUnknown, NetError, NotConnected
from net.tools.history_run import HistoryRun, RunOptions
from pxq.check.history import JSON, NEMESIS, HistoryWriter, Op, Process
from pxq.check.lock import LIST_F, LOCK_FS, value_text
from pxq.check.models import QUEUE_FS, ModelName, QueueLayout, layout_from_config
from pxq.check.queue import ENQUEUE
from pxq.config import ClusterConfig
from pxq.lock.messages import (
    Acquire,
    ListLocks,
    LockDenied,
    LockError,
    LockList,
    LockOk,
    LockRedirect,
    ReadLock,
    Release,
    Renew,
    directory_of,
    group_of_key,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadContext:
    """What every workload is made from."""

    config: ClusterConfig
    writer: HistoryWriter
    seed: int
    """The workload's own seed (the runner derives one per workload from the run's)."""
    run_id: str
    """Unique to the run: prefixes msg ids and lock keys, so runs never collide."""
    time_limit_ms: int


class Workload(Protocol):
    """One workload of a run (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> ModelName:
        """The ``pxq check`` model its operations are checked with."""

    @property
    def fs(self) -> frozenset[str]:
        """The ``f`` of its operations in the history."""

    @property
    def progress_fs(self) -> frozenset[str]:
        """The ``f`` whose ``ok`` completions show the cluster serves it."""

    def owns(self, op: Op) -> bool:
        """Whether ``op`` is one of this workload's operations (workloads may share an ``f``:
        the lock and register workloads both ``read``; their processes tell them apart)."""

    def layout(self) -> QueueLayout | None:
        """What the ``queue`` model needs beyond the history (None for other models)."""

    async def start(self) -> None:
        """Connect and start the clients."""

    async def stop(self) -> None:
        """Invoke nothing new; wait (bounded) for the operations in flight."""

    async def final_reads(self) -> None:
        """After the cluster recovered: the reads that end the history."""

    async def close(self) -> None:
        """Release every connection. Idempotent; safe after a failed ``start``."""

    def counts(self) -> dict[str, JSON]:
        """What it did, for the results."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _owned(op: Op, fs: frozenset[str], prefix: str, final: str) -> bool:
    """An operation of ``fs`` by a client process named ``<prefix><i>.<n>`` or ``final``."""
    process = op.process
    return (
        op.f in fs and isinstance(process, str) and (process == final or process.startswith(prefix))
    )


@dataclass(slots=True)
class _ClientProcess:
    """One client of the lock or register workload: a Jepsen process at a time, named
    ``<name>.<n>`` (an operation of unknown outcome retires it: ``process += 1``)."""

    name: str
    process: int = 0
    values_made: int = 0

    @property
    def process_id(self) -> Process:
        return f"{self.name}.{self.process}"

    def new_value(self) -> str:
        """A value unique in the run (the client's name is)."""
        self.values_made += 1
        return f"{self.name}.{self.values_made}"


class _ClientTasks:
    """The client tasks of the lock or register workload: started together, paced by
    exponential pauses, stopped with a bound (a client that failed is raised), cancelled at
    close."""

    def __init__(self, workload: str) -> None:
        self._workload = workload
        self.running = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, clients: Iterable[Coroutine[Any, Any, None]]) -> None:
        self.running = True
        self._tasks.extend(asyncio.create_task(client) for client in clients)

    async def paced(self, rng: random.Random, gap_ms_mean: float) -> AsyncIterator[None]:
        """Until the workload stops: a turn after each pause (exponential, ``gap_ms_mean``)."""
        while self.running:
            await asyncio.sleep(rng.expovariate(1.0) * gap_ms_mean / 1000)
            if not self.running:
                return
            yield

    async def stop(self, wait_s: float) -> None:
        """Start no new turn; wait up to ``wait_s`` for the operations in flight, then cancel
        the tasks. ``RuntimeError`` from the failure of a client."""
        self.running = False
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=wait_s)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
            for result in results:
                if isinstance(result, Exception):
                    raise RuntimeError(f"a {self._workload} client failed") from result

    async def cancel(self) -> None:
        """Cancel every task and wait until they ended."""
        self.running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


# -- queue --------------------------------------------------------------------------------------

REPLAY_BACK_MS: Final = (1000, 3000)
REPLAY_AT: Final = (0.3, 0.6)
"""The replay happens at this fraction of the time limit (drawn in the range)."""


class QueueWorkload:
    """Producers, a consumer per group and a replay (see the module docstring)."""

    name: Final = "queue"
    model: Final[ModelName] = "queue"
    fs: Final = QUEUE_FS
    progress_fs: Final = frozenset({ENQUEUE})

    def __init__(self, context: WorkloadContext) -> None:
        self._context = context
        self._rng = random.Random(context.seed)
        self.run = HistoryRun(
            context.config,
            context.writer,
            RunOptions(seed=self._rng.getrandbits(64), run_id=context.run_id),
        )
        self._replay: asyncio.Task[None] | None = None

    def owns(self, op: Op) -> bool:
        return op.process != NEMESIS and op.f in self.fs

    def layout(self) -> QueueLayout:
        return layout_from_config(self._context.config)

    async def start(self) -> None:
        await self.run.start()
        group = self._rng.choice(self.run.groups)
        back_ms = self._rng.randint(*REPLAY_BACK_MS)
        at_s = self._context.time_limit_ms * self._rng.uniform(*REPLAY_AT) / 1000
        self._replay = asyncio.create_task(self._replay_at(at_s, group, back_ms))

    async def _replay_at(self, at_s: float, group: str, back_ms: int) -> None:
        await asyncio.sleep(at_s)
        await self.run.replay(group, back_ms)

    async def stop(self) -> None:
        if self._replay is not None and not self._replay.done():
            self._replay.cancel()  # a run cut short before its replay: no seek invoked
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay
        await self.run.stop_producing()

    async def final_reads(self) -> None:
        await self.run.drain()
        await self.run.read_store()

    async def close(self) -> None:
        if self._replay is not None:
            self._replay.cancel()
        await self.run.close()

    def counts(self) -> dict[str, JSON]:
        return self.run.counts.to_json()


# -- lock ---------------------------------------------------------------------------------------

LOCK_CLIENTS: Final = 3
LOCK_KEYS: Final = 6
LOCK_DIRS: Final = 2
LOCK_LEASE_MS: Final = 2000
LOCK_OP_TIMEOUT_MS: Final = 1500
"""An operation without a definite answer by then is recorded ``info``."""
LOCK_CALL_TIMEOUT_MS: Final = 500
"""One attempt at one replica."""
LOCK_GAP_MS_MEAN: Final = 100
"""Mean pause of a client between two operations (exponential)."""
LOCK_MARGIN_MS: Final = 100
"""A holder considers its lease lost this long before ``lease_ms`` after sending."""
LOCK_BACKOFF_S: Final = 0.02
LOCK_ATTEMPTS_MAX: Final = 50
FINAL_PROCESS: Final = "lock-final"


@dataclass(slots=True)
class _Held:
    version: int
    valid_until: float
    renew_at: float
    release_at: float


@dataclass(slots=True)
class _LockClient(_ClientProcess):
    held: dict[str, _Held] = field(default_factory=dict)


class LockWorkload:
    """Lock clients with leases and fencing (see the module docstring)."""

    name: Final = "lock"
    model: Final[ModelName] = "lock"
    fs: Final = frozenset({*LOCK_FS, LIST_F})
    progress_fs: Final = frozenset({*LOCK_FS, LIST_F})

    def __init__(self, context: WorkloadContext) -> None:
        if context.config.locks is None:
            raise ValueError("the lock workload needs a cluster with a lock service ([locks])")
        self._context = context
        self._writer = context.writer
        self._rng = random.Random(context.seed)
        locks = context.config.locks
        self._replicas = [r.node for r in locks.replicas]
        self._groups = locks.groups
        self.keys = [f"jepsen/{context.run_id}/d{i % LOCK_DIRS}/k{i}" for i in range(LOCK_KEYS)]
        self._dirs = sorted({directory_of(k) for k in self.keys})
        self._masters: dict[int, str] = {}
        self._pool: NodePool | None = None
        self._tasks = _ClientTasks(self.name)
        self._counts: dict[str, int] = dict.fromkeys(
            ("invoke", "ok", "granted", "denied", "fail", "info"), 0
        )

    def layout(self) -> None:
        return None

    def owns(self, op: Op) -> bool:
        return _owned(op, self.fs, f"{self._context.run_id}-c", FINAL_PROCESS)

    @property
    def pool(self) -> NodePool:
        if self._pool is None:
            raise RuntimeError("the lock workload is not started")
        return self._pool

    async def start(self) -> None:
        self._pool = NodePool.for_config(self._context.config)
        run_id = self._context.run_id
        self._tasks.start(
            self._client(_LockClient(name=f"{run_id}-c{i}")) for i in range(LOCK_CLIENTS)
        )

    async def stop(self) -> None:
        await self._tasks.stop(LOCK_OP_TIMEOUT_MS / 1000 + 1)

    async def final_reads(self) -> None:
        """Every key read through the log, one after the other (Jepsen's final read)."""
        for key in self.keys:
            extra: dict[str, JSON] = {
                "key": key,
                "holder": "",
                "version": None,
                "lease_ms": 0,
                "through_log": True,
            }
            request = ReadLock(key=key, through_log=True)
            answer = await self._call(FINAL_PROCESS, "read", key, request, value=None, extra=extra)
            if answer is None:
                return  # an unknown outcome retires the process: no further final read

    async def close(self) -> None:
        await self._tasks.cancel()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def counts(self) -> dict[str, JSON]:
        return dict(self._counts)

    # -- one client ---------------------------------------------------------------------------

    async def _client(self, client: _LockClient) -> None:
        loop = asyncio.get_running_loop()
        async for _ in self._tasks.paced(self._rng, LOCK_GAP_MS_MEAN):
            f, key, request, value, extra = self._choose(client, loop.time())
            sent = loop.time()
            answer = await self._call(client.process_id, f, key, request, value=value, extra=extra)
            if answer is None:
                client.process += 1  # retired (Jepsen): the next operation is a new process
                if f == "release":
                    client.held.pop(key, None)  # stop using it whatever happened
            elif isinstance(answer, LockOk | LockDenied):
                self._note(client, f, key, answer, sent)

    def _note(
        self, client: _LockClient, f: str, key: str, answer: LockOk | LockDenied, sent: float
    ) -> None:
        """What the client holds after ``answer``."""
        granted = isinstance(answer, LockOk)
        if f in ("acquire", "renew"):
            if granted and answer.holder == client.name:
                lease_s = LOCK_LEASE_MS / 1000
                previous = client.held.get(key)
                release_at = (
                    previous.release_at
                    if previous is not None and previous.version == answer.version
                    else sent + self._rng.uniform(lease_s / 2, 3 * lease_s)
                )
                client.held[key] = _Held(
                    version=answer.version,
                    valid_until=sent + lease_s - LOCK_MARGIN_MS / 1000,
                    renew_at=sent + lease_s / 2,
                    release_at=release_at,
                )
            elif f == "renew":
                client.held.pop(key, None)  # denied: the lock was lost
        elif f == "release":
            client.held.pop(key, None)

    def _choose(
        self, client: _LockClient, now: float
    ) -> tuple[str, str, object, JSON, dict[str, JSON]]:
        """The next operation: ``(f, key, request, value, extra)``."""
        for key in sorted(client.held):
            if client.held[key].valid_until <= now:
                del client.held[key]  # lost: the client stops using the token
        held = sorted(client.held)
        for key in held:
            if client.held[key].release_at <= now:
                return self._release(client, key)
        for key in held:
            if client.held[key].renew_at <= now:
                return self._renew(client, key)
        r = self._rng.random()
        key = self._rng.choice(self.keys)
        if r < 0.6:
            value = client.new_value().encode() if self._rng.random() < 0.7 else b""
            request = Acquire(key=key, holder=client.name, lease_ms=LOCK_LEASE_MS, value=value)
            extra: dict[str, JSON] = {
                "key": key,
                "holder": client.name,
                "version": None,
                "lease_ms": LOCK_LEASE_MS,
            }
            return "acquire", key, request, value_text(value), extra
        if r < 0.7:
            return self._list()
        if r < 0.9 or not held:
            through_log = self._rng.random() < 0.5
            extra = {
                "key": key,
                "holder": "",
                "version": None,
                "lease_ms": 0,
                "through_log": through_log,
            }
            return "read", key, ReadLock(key=key, through_log=through_log), None, extra
        return self._renew(client, self._rng.choice(held))  # an early renewal

    def _list(self) -> tuple[str, str, object, JSON, dict[str, JSON]]:
        prefix = self._rng.choice(self._dirs)
        mine = [k for k in self.keys if directory_of(k) == prefix]
        start_after = self._rng.choice(mine) if self._rng.random() < 0.2 else ""
        entries_max = self._rng.randint(1, len(mine))
        through_log = self._rng.random() < 0.5
        request = ListLocks(
            prefix=prefix, entries_max=entries_max, through_log=through_log, start_after=start_after
        )
        extra: dict[str, JSON] = {
            "prefix": prefix,
            "start_after": start_after,
            "entries_max": entries_max,
            "through_log": through_log,
        }
        return LIST_F, prefix, request, None, extra

    def _renew(
        self, client: _LockClient, key: str
    ) -> tuple[str, str, object, JSON, dict[str, JSON]]:
        version = client.held[key].version
        value = client.new_value().encode() if self._rng.random() < 0.3 else None
        request = Renew(
            key=key, holder=client.name, version=version, lease_ms=LOCK_LEASE_MS, value=value
        )
        extra: dict[str, JSON] = {
            "key": key,
            "holder": client.name,
            "version": version,
            "lease_ms": LOCK_LEASE_MS,
        }
        return "renew", key, request, None if value is None else value_text(value), extra

    def _release(
        self, client: _LockClient, key: str
    ) -> tuple[str, str, object, JSON, dict[str, JSON]]:
        version = client.held[key].version
        extra: dict[str, JSON] = {
            "key": key,
            "holder": client.name,
            "version": version,
            "lease_ms": 0,
        }
        return "release", key, Release(key=key, holder=client.name, version=version), None, extra

    # -- one operation ------------------------------------------------------------------------

    async def _call(
        self,
        process: Process,
        f: str,
        key: str,
        request: object,
        *,
        value: JSON,
        extra: dict[str, JSON],
    ) -> object | None:
        """Invoke ``request`` and record its completion. Returns the answer: ``LockOk``,
        ``LockDenied`` or ``LockList`` (recorded ``ok``), a ``LockError`` (a definite failure,
        recorded ``fail``), or None when the outcome is unknown (recorded ``info``: the
        process is retired). Only a request that surely reached no node is retried, on the
        next replica; a redirect is followed."""
        w = self._writer
        w.invoke(wall_ms(), process, f, value, **extra)
        self._counts["invoke"] += 1
        group = group_of_key(key, self._groups)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_OP_TIMEOUT_MS / 1000
        target = self._masters.get(group, self._replicas[group % len(self._replicas)])
        maybe_sent = False
        last = "no attempt"
        for _ in range(LOCK_ATTEMPTS_MAX):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                answer = await self.pool.call(
                    target, request, min(LOCK_CALL_TIMEOUT_MS / 1000, remaining)
                )
            except NotConnected as exc:  # not sent: another replica may answer
                last = f"{target}: {exc}"
                target = self._next(target)
                await asyncio.sleep(LOCK_BACKOFF_S)
                continue
            except (CallOutcomeUnknown, NetError, OSError) as exc:
                # It may have been applied: one attempt of unknown outcome is all we may make
                # (a retry could apply it a second time, later than its completion says).
                maybe_sent = True
                last = f"{target}: {exc}"
                self._masters.pop(group, None)
                break
            match answer:
                case LockOk() | LockDenied() if f != LIST_F:
                    self._masters[group] = target
                    self._answered(process, f, key, answer)
                    return answer
                case LockList() if f == LIST_F:
                    self._masters[group] = target
                    self._listed(process, answer)
                    return answer
                case LockRedirect(master=master) if master is not None and master != target:
                    self._masters[group] = master
                    target = master
                    continue
                case LockRedirect():
                    self._masters.pop(group, None)
                    target = self._next(target)
                    await asyncio.sleep(LOCK_BACKOFF_S)
                    continue
                case LockError(code=code, definite=True):
                    self._counts["fail"] += 1
                    w.fail(wall_ms(), process, f, None, key=key, reason=code)
                    return answer
                case LockError(code=code):
                    maybe_sent = True
                    last = code
                    break
                case other:
                    maybe_sent = True
                    last = f"unexpected reply {type(other).__name__}"
                    break
        if not maybe_sent:
            # Nothing reached a node that could apply it: definitely not applied.
            self._counts["fail"] += 1
            w.fail(wall_ms(), process, f, None, key=key, reason=f"unavailable: {last}")
            return LockError(code="unavailable", message=last)
        self._counts["info"] += 1
        w.info(wall_ms(), process, f, None, key=key, reason=last)
        return None

    def _next(self, node: str) -> str:
        return self._replicas[(self._replicas.index(node) + 1) % len(self._replicas)]

    def _answered(self, process: Process, f: str, key: str, answer: LockOk | LockDenied) -> None:
        granted = isinstance(answer, LockOk)
        self._counts["ok"] += 1
        self._counts["granted" if granted else "denied"] += 1
        self._writer.ok(
            wall_ms(),
            process,
            f,
            value_text(answer.value),
            key=key,
            outcome="ok" if granted else "denied",
            holder=answer.holder,
            version=answer.version,
            expiry_ms=answer.expiry_ms,
            at_ms=answer.at_ms,
        )

    def _listed(self, process: Process, listing: LockList) -> None:
        self._counts["ok"] += 1
        self._writer.ok(
            wall_ms(),
            process,
            LIST_F,
            None,
            prefix=listing.prefix,
            entries=[
                [e.key, e.holder, e.version, e.expiry_ms, value_text(e.value)]
                for e in listing.entries
            ],
            more=listing.more,
            at_ms=listing.at_ms,
        )


# -- register -----------------------------------------------------------------------------------

REGISTER_CLIENTS: Final = 3
REGISTER_KEYS: Final = 4
REGISTER_DIRS: Final = 2
REGISTER_CALL_TIMEOUT_MS: Final = 1500
"""A call without a definite answer by then: a read is ``fail``-free ``info``, a write or cas
``info`` (it may still take effect)."""
REGISTER_GAP_MS_MEAN: Final = 50
"""Mean pause of a client between two operations (exponential)."""
REGISTER_FINAL_PROCESS: Final = "register-final"


@dataclass(slots=True)
class _RegisterClient(_ClientProcess):
    seen: dict[str, str | None] = field(default_factory=dict)
    """The value this client last saw of each key (None: never written)."""


class RegisterWorkload:
    """Clients of the compare-and-set registers (see the module docstring)."""

    name: Final = "register"
    model: Final[ModelName] = "kv"
    fs: Final = frozenset({"read", "write", "cas"})
    progress_fs: Final = frozenset({"read", "write", "cas"})

    def __init__(self, context: WorkloadContext) -> None:
        if context.config.locks is None:
            raise ValueError("the register workload needs a cluster with a lock service ([locks])")
        self._context = context
        self._writer = context.writer
        self._rng = random.Random(context.seed)
        self.keys = [
            f"jepsen/{context.run_id}/d{i % REGISTER_DIRS}/r{i}" for i in range(REGISTER_KEYS)
        ]
        self._client: AsyncClient | None = None
        self._tasks = _ClientTasks(self.name)
        self._counts: dict[str, int] = dict.fromkeys(
            ("invoke", "ok", "fail", "info", "mismatch"), 0
        )

    def layout(self) -> None:
        return None

    def owns(self, op: Op) -> bool:
        return _owned(op, self.fs, f"{self._context.run_id}-r", REGISTER_FINAL_PROCESS)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the register workload is not started")
        return self._client

    async def start(self) -> None:
        self._client = AsyncClient(
            self._context.config,
            name=f"{self._context.run_id}-registers",
            call_timeout_ms=REGISTER_CALL_TIMEOUT_MS,
        )
        run_id = self._context.run_id
        self._tasks.start(
            self._run_client(_RegisterClient(name=f"{run_id}-r{i}"))
            for i in range(REGISTER_CLIENTS)
        )

    async def stop(self) -> None:
        await self._tasks.stop(REGISTER_CALL_TIMEOUT_MS / 1000 + 1)

    async def final_reads(self) -> None:
        """Every key read through the log, one after the other (Jepsen's final read)."""
        final = _RegisterClient(name=REGISTER_FINAL_PROCESS)
        for key in self.keys:
            if not await self._read(final, key, through_log=True, final=True):
                return  # an unknown outcome retires the process: no further final read

    async def close(self) -> None:
        await self._tasks.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def counts(self) -> dict[str, JSON]:
        return dict(self._counts)

    # -- one client ---------------------------------------------------------------------------

    async def _run_client(self, client: _RegisterClient) -> None:
        async for _ in self._tasks.paced(self._rng, REGISTER_GAP_MS_MEAN):
            key = self._rng.choice(self.keys)
            r = self._rng.random()
            if r < 0.4:
                await self._read(client, key, through_log=self._rng.random() < 0.5)
            elif r < 0.7:
                await self._write(client, key, client.new_value())
            else:
                value = client.new_value()
                roll = self._rng.random()
                expected = (
                    None
                    if roll < 0.1
                    else f"{client.name}.never"
                    if roll < 0.15
                    else client.seen.get(key)
                )
                await self._cas(client, key, expected, value)

    def _retire(self, client: _RegisterClient, f: str, key: str, reason: str) -> None:
        self._counts["info"] += 1
        self._writer.info(wall_ms(), client.process_id, f, None, key=key, reason=reason)
        client.process += 1  # Jepsen: the next operation is a new process

    def _failed(self, client: _RegisterClient, f: str, key: str, exc: RequestFailed) -> None:
        self._counts["fail"] += 1
        extra: dict[str, JSON] = {"key": key, "reason": exc.code}
        if isinstance(exc, CasMismatch):
            self._counts["mismatch"] += 1
            current = None if exc.current is None else value_text(exc.current)
            client.seen[key] = current
            extra.update(current=current, current_version=exc.version)
        self._writer.fail(wall_ms(), client.process_id, f, None, **extra)

    async def _read(
        self, client: _RegisterClient, key: str, *, through_log: bool, final: bool = False
    ) -> bool:
        """One read; False when its outcome is unknown (the process is retired)."""
        extra: dict[str, JSON] = {"key": key, "through_log": through_log}
        if final:
            extra["final"] = True
        self._writer.invoke(wall_ms(), client.process_id, "read", None, **extra)
        self._counts["invoke"] += 1
        try:
            got = await self.client.register_read(key, through_log=through_log)
        except RequestFailed as exc:  # a read takes no effect: failing is definite
            self._failed(client, "read", key, exc)
            return True
        except PxqError as exc:
            self._retire(client, "read", key, f"{type(exc).__name__}: {exc}")
            return False
        text = None if got.value is None else value_text(got.value)
        client.seen[key] = text
        self._counts["ok"] += 1
        self._writer.ok(wall_ms(), client.process_id, "read", text, key=key, version=got.version)
        return True

    async def _write(self, client: _RegisterClient, key: str, value: str) -> None:
        self._writer.invoke(wall_ms(), client.process_id, "write", value, key=key)
        self._counts["invoke"] += 1
        try:
            version = await self.client.register_write(key, value.encode("latin-1"))
        except RequestFailed as exc:
            self._failed(client, "write", key, exc)
            return
        except PxqError as exc:
            self._retire(client, "write", key, f"{type(exc).__name__}: {exc}")
            return
        client.seen[key] = value
        self._counts["ok"] += 1
        self._writer.ok(wall_ms(), client.process_id, "write", value, key=key, version=version)

    async def _cas(
        self, client: _RegisterClient, key: str, expected: str | None, value: str
    ) -> None:
        pair: JSON = [expected, value]
        self._writer.invoke(wall_ms(), client.process_id, "cas", pair, key=key)
        self._counts["invoke"] += 1
        try:
            version = await self.client.register_cas(
                key,
                None if expected is None else expected.encode("latin-1"),
                value.encode("latin-1"),
            )
        except RequestFailed as exc:
            self._failed(client, "cas", key, exc)
            return
        except PxqError as exc:
            self._retire(client, "cas", key, f"{type(exc).__name__}: {exc}")
            return
        client.seen[key] = value
        self._counts["ok"] += 1
        self._writer.ok(wall_ms(), client.process_id, "cas", pair, key=key, version=version)


WorkloadFactory = Callable[[WorkloadContext], Workload]

WORKLOADS: Final[Mapping[str, WorkloadFactory]] = {
    "queue": QueueWorkload,
    "lock": LockWorkload,
    "register": RegisterWorkload,
}
"""Every workload ``pxq test`` can run, by name."""
