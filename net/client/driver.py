"""The asyncio driver of pxq's *client* machines (``Producer``, ``Consumer``).

This module owns two things:

* ``NodePool``: one lazily opened, reused ``NodeClient`` connection per node, addressed by
  node name from the cluster configuration: every store replica and every lock replica
  (``node_addresses``, ``NodePool.for_config``), so a client machine sends a ``Request`` to a
  lock node exactly as the producer and consumer send to store nodes. A connection that
  failed is dropped and re-opened by the next call. Every connection presents the cluster
  file's identity (``net.client.connection.ClusterIdentity``); the pool remembers why each
  node could not be reached (``failures``, for warnings naming the addresses) and whether a
  node said the file's routing metadata differs from the cluster's (``mismatch``).
* ``MachineDriver``: runs one pure client machine on the event loop, implementing the driver
  contract of ``pxq.effects`` for client machines:

  - application calls become ``ClientCall`` inputs (``MachineDriver.call`` returns a future
    resolved by the machine's ``Reply``);
  - ``Send(dst=node, msg=Request(req_id, body))`` becomes ``NodeClient.call(body)`` on the
    pool's connection to ``node``; the answer comes back as
    ``Received(src=node, msg=Response(req_id, body))``. A timeout or a lost connection
    produces *no* ``Response``: the machine keeps its own deadlines (the call timeout is set a
    little above the machine's request timeout, so a late answer can still be used). A request
    that was never sent (no connection could be set up, or the node refused the client
    before reading a call: ``NotConnected``) is the same, except for a machine driven with
    ``report_undelivered`` (the producer), which gets ``Received(src=node,
    msg=Undelivered(req_id, reason))`` (``pxq.effects``). Nothing else is invented on the
    machine's behalf;
  - ``Send(dst=HANDLER, msg=...)`` goes to the ``on_handler`` callback (the consumer API),
    which answers later through ``MachineDriver.feed``;
  - exactly one timer (``loop.call_at``) is armed at ``next_deadline()``, re-read once the
    steps of a loop turn are done (before the loop waits again); ``now`` is monotonic ms from
    ``net.clock.mono_ns`` (counting suspended time) and wall ms from ``time.time_ns``;
  - client machines write nothing: a step that returns writes, or raises, stops the driver
    (``MachineFailed``) and fails every open call.

Inputs fed while a step is running (a callback that answers at once) are queued and stepped
right after it, so steps never nest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from net.client.connection import ClusterIdentity, NodeClient
from net.client.types import ClientClosed, MachineFailed, OutcomeUnknown
from net.clock import mono_ns
from net.config import NetConfig
from net.errors import ConnectRefused, MetadataMismatch, NetError, NotConnected
from pxq import codec
from pxq.config import ClusterConfig
from pxq.consumer.messages import HANDLER
from pxq.effects import (
    NO_EFFECTS,
    Boot,
    ClientCall,
    Effects,
    Input,
    Node,
    NodeId,
    Now,
    Received,
    Request,
    Response,
    TraceEvent,
    Undelivered,
    Wake,
)

log = logging.getLogger("pxq.client")
trace_log = logging.getLogger("pxq.client.trace")

CALL_TIMEOUT_MARGIN_S = 0.25
"""How much longer a node call may take than the machine's request timeout: an answer that
arrives a little after the machine re-sent is still useful (a producer accepts a late
``EnqueueOk`` of a superseded attempt)."""

TraceListener = Callable[[TraceEvent], None]


def node_addresses(config: ClusterConfig) -> dict[NodeId, tuple[str, int]]:
    """The address book of a client: (host, port) of every node of ``config`` by name, the
    replicas of each store and the lock replicas (``ClusterConfig.all_nodes``)."""
    return config.node_addresses()


def _retrieve(task: asyncio.Task[NodeClient]) -> None:
    if not task.cancelled():
        task.exception()


class NodePool:
    """One lazily opened, reused connection per node (see the module docstring)."""

    def __init__(
        self,
        addresses: Mapping[NodeId, tuple[str, int]],
        net_config: NetConfig | None = None,
        *,
        cluster: ClusterIdentity,
    ) -> None:
        self._addresses = dict(addresses)
        self._net_config = net_config or NetConfig()
        self.cluster = cluster
        self._clients: dict[NodeId, NodeClient] = {}
        self._connecting: dict[NodeId, asyncio.Task[NodeClient]] = {}
        self._closed = False
        self.failures: dict[NodeId, str] = {}
        """Per node, why its last connection attempt failed (a ``ConnectRefused``'s message,
        naming the address); a node leaves it when a connection to it is set up."""
        self.mismatch: MetadataMismatch | None = None
        """Set when a node of the cluster said the client's routing metadata differs: every
        later connection would say the same."""

    @classmethod
    def for_config(cls, config: ClusterConfig, net_config: NetConfig | None = None) -> NodePool:
        """A pool that reaches every node of ``config``: store replicas and lock replicas;
        without ``net_config``, the cluster file's (``NetConfig.for_cluster``: its TLS with
        the client identity of the environment or the file)."""
        return cls(
            node_addresses(config),
            net_config or NetConfig.for_cluster(config),
            cluster=ClusterIdentity.of(config),
        )

    def address_of(self, node: NodeId) -> tuple[str, int] | None:
        """Where ``node`` is reached; None if the pool has no address for it."""
        return self._addresses.get(node)

    def addresses(self) -> dict[NodeId, tuple[str, int]]:
        """Every node's address, by name."""
        return dict(self._addresses)

    async def call(self, node: NodeId, request: object, timeout_s: float) -> object:
        """Send ``request`` to ``node`` and return its answer.

        Raises ``CallTimeout`` / ``ConnectionLost`` (outcome unknown), ``NotConnected``
        (not sent: a ``ConnectRefused`` naming the address when the connection could not be
        set up within ``timeout_s``, for whatever reason, an unknown node, the pool closed) or
        ``codec.CodecError`` (not encodable, not sent)."""
        client = self._clients.get(node)
        if client is not None and not client.closed and not self._closed:
            # Connected: nothing to wait for before the call (what _client would return).
            return await client.call(request, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                client = await self._client(node)
        except TimeoutError:
            address = self._addresses.get(node)
            where = f"{address[0]}:{address[1]}" if address is not None else node
            raise ConnectRefused(f"{where}: no connection within {timeout_s:.3g} s") from None
        return await client.call(request, max(0.001, deadline - loop.time()))

    async def connect_any(self, nodes: list[NodeId], timeout_s: float) -> NodeId | None:
        """The first of ``nodes`` (in order) a connection is set up to within ``timeout_s``
        overall (an open one counts); None if none. ``MetadataMismatch`` is raised at once:
        the client's file is wrong whichever node says so."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for node in nodes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._client(node)
            except MetadataMismatch:
                raise
            except (NotConnected, TimeoutError):
                continue
            return node
        return None

    async def _client(self, node: NodeId) -> NodeClient:
        if self._closed:
            raise NotConnected("the client is closed")
        client = self._clients.get(node)
        if client is not None and not client.closed:
            return client
        task = self._connecting.get(node)
        if task is None:
            address = self._addresses.get(node)
            if address is None:
                raise NotConnected(f"no address for node {node!r} in the configuration")
            task = asyncio.get_running_loop().create_task(self._open(node, *address))
            # Its waiters may all have given up (their timeout) before it fails: the failure
            # is kept in ``failures``, so it is retrieved here, not reported as unretrieved.
            task.add_done_callback(_retrieve)
            self._connecting[node] = task
        # Shielded: one waiter giving up does not cancel the connect others wait for.
        return await asyncio.shield(task)

    async def _open(self, node: NodeId, host: str, port: int) -> NodeClient:
        try:
            client = await NodeClient.connect(
                host, port, cluster=self.cluster, config=self._net_config, node=node
            )
        except NotConnected as exc:
            self.failures[node] = str(exc)
            if isinstance(exc, MetadataMismatch):
                self.mismatch = exc
            raise
        finally:
            self._connecting.pop(node, None)
        self.failures.pop(node, None)
        if self._closed:
            await client.close()
            raise NotConnected("the client is closed")
        old = self._clients.get(node)
        self._clients[node] = client
        if old is not None:
            await old.close()
        return client

    async def close(self) -> None:
        """Close every connection; calls still open fail with ``ConnectionLost``."""
        self._closed = True
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        if connecting:
            await asyncio.gather(*connecting, return_exceptions=True)
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


class MachineDriver:
    """Runs one client machine on the running event loop (see the module docstring)."""

    def __init__(
        self,
        machine: Node,
        pool: NodePool,
        *,
        request_timeout_ms: int,
        name: str,
        on_handler: Callable[[object], None] | None = None,
        on_trace: TraceListener | None = None,
        on_failure: Callable[[MachineFailed], None] | None = None,
        report_undelivered: bool = False,
    ) -> None:
        self.machine = machine
        self._report_undelivered = report_undelivered
        self.name = name
        self._pool = pool
        self._call_timeout_s = request_timeout_ms / 1000 + CALL_TIMEOUT_MARGIN_S
        self._on_handler = on_handler
        self._on_trace = on_trace
        self._on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        self._calls: dict[int, asyncio.Future[object]] = {}
        self._next_call_id = 1
        self._inputs: deque[Input] = deque()
        self._stepping = False
        self._rpcs: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed: int | None = None
        self._now = Now(mono_ms=0, wall_ms=0)
        """The last step's time, reused while the clocks read the same milliseconds."""
        self._settling = False
        self._closed = False
        self.failure: MachineFailed | None = None
        self.progress = asyncio.Event()
        """Set after the steps of a loop turn; waiters clear it and wait again (cheap polling
        of the machine's state, for example commits catching up)."""
        self.feed(Boot())

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_calls(self) -> int:
        """Application calls not yet answered whose caller still waits (a cancelled wait does
        not count: nobody is left to tell the outcome to)."""
        return sum(1 for fut in self._calls.values() if not fut.done())

    def call(self, request: object) -> asyncio.Future[object]:
        """Hand ``request`` to the machine as a ``ClientCall``; the future gets its reply."""
        if self._closed:  # (a failure closes the driver)
            if self.failure is not None:
                raise self.failure
            raise ClientClosed(f"{self.name} is closed")
        call_id = self._next_call_id
        self._next_call_id += 1
        fut: asyncio.Future[object] = self._loop.create_future()
        self._calls[call_id] = fut
        self.feed(ClientCall(call_id=call_id, request=request))
        return fut

    def feed(self, inp: Input) -> None:
        """Step the machine with ``inp`` (queued if a step is running: steps never nest)."""
        if self._closed:
            return
        inputs = self._inputs
        if self._stepping:
            inputs.append(inp)
            return
        self._stepping = True
        try:
            self._step(inp)
            while inputs and not self._closed:
                self._step(inputs.popleft())
        finally:
            self._stepping = False
            self._inputs.clear()
        if not self._settling:
            # Once per loop turn, not per step (calls come by the hundred per turn under
            # load); still before the loop next waits for I/O or timers.
            self._settling = True
            self._loop.call_soon(self._settle)

    def _settle(self) -> None:
        """After the steps of a loop turn: arm the timer at the machine's deadline, tell the
        waiters of ``progress``."""
        self._settling = False
        if not self._closed:
            self._arm_timer()
        self.progress.set()

    def _step(self, inp: Input) -> None:
        # net.clock.now(), inlined; calls come many per millisecond under load.
        mono_ms = mono_ns() // 1_000_000
        wall_ms = time.time_ns() // 1_000_000
        now = self._now
        if now.mono_ms != mono_ms or now.wall_ms != wall_ms:
            now = self._now = Now(mono_ms=mono_ms, wall_ms=wall_ms)
        try:
            fx = self.machine.step(now, inp)
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if fx is NO_EFFECTS:
            return
        if fx.writes:
            self._fail("a client machine returned writes (it must not persist anything)")
            return
        try:
            self._release(fx)
        except Exception as exc:
            self._fail(f"releasing the output failed: {type(exc).__name__}: {exc}")

    def _release(self, fx: Effects) -> None:
        for event in fx.trace:
            trace_log.debug("%s %s %s", self.name, event.kind, dict(event.fields))
            if self._on_trace is not None:
                self._on_trace(event)
        for send in fx.sends:
            msg = send.msg
            if send.dst == HANDLER:
                if self._on_handler is not None:
                    self._on_handler(msg)
            elif isinstance(msg, Request):
                task = self._loop.create_task(self._rpc(send.dst, msg))
                self._rpcs.add(task)
                task.add_done_callback(self._rpcs.discard)
            else:
                log.warning("%s: dropping %s to %s", self.name, type(msg).__name__, send.dst)
        pop = self._calls.pop
        for reply in fx.replies:
            fut = pop(reply.call_id, None)
            if fut is not None and not fut.done():
                fut.set_result(reply.response)

    async def _rpc(self, dst: NodeId, req: Request) -> None:
        try:
            body = await self._pool.call(dst, req.body, self._call_timeout_s)
        except NotConnected as exc:
            # Never sent (no connection, or refused before any call was read): a machine that
            # asked for it learns so (pxq.effects.Undelivered); the others wait as for a loss.
            log.debug("%s: request %d to %s not sent: %s", self.name, req.req_id, dst, exc)
            if self._report_undelivered:
                self.feed(Received(src=dst, msg=Undelivered(req_id=req.req_id, reason=str(exc))))
            return
        except (NetError, OSError, TimeoutError) as exc:
            # No Response: the machine's own deadline decides what happens next.
            log.debug("%s: request %d to %s: %s", self.name, req.req_id, dst, exc)
            return
        except codec.CodecError as exc:
            log.warning("%s: cannot send request %d to %s: %s", self.name, req.req_id, dst, exc)
            return
        self.feed(Received(src=dst, msg=Response(req_id=req.req_id, body=body)))

    def _arm_timer(self) -> None:
        deadline = self.machine.next_deadline()
        if deadline == self._armed and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = deadline
        if deadline is None:
            return
        delay_s = max(0, deadline * 1_000_000 - mono_ns()) / 1e9
        self._timer = self._loop.call_at(self._loop.time() + delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = None
        self.feed(Wake())

    def _fail(self, reason: str) -> None:
        log.error("%s stopped: %s", self.name, reason)
        self.failure = MachineFailed(f"{self.name} stopped: {reason}")
        self._shutdown(self.failure)
        if self._on_failure is not None:
            self._on_failure(self.failure)

    def _shutdown(self, error: Exception) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._rpcs):
            task.cancel()
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(error)
        self.progress.set()

    async def close(self) -> None:
        """Stop the machine. Calls still open fail with ``OutcomeUnknown``: they may have been
        sent already. Connections belong to the pool and stay open."""
        if not self._closed:
            self._shutdown(OutcomeUnknown(f"{self.name} closed while the call was open"))
        rpcs = list(self._rpcs)
        if rpcs:
            await asyncio.gather(*rpcs, return_exceptions=True)
