"""Connections of a node: inbound (peers and clients) and outbound peer links, over asyncio TCP.

This module owns the connection-level behaviour of the production wire, on top of
``net.wire.framing`` and ``net.wire.envelope``:

* ``InboundConnection``: an accepted connection. Its first frame decides its kind (``Hello``:
  a peer's one-way message stream; ``ClientHello``: a client, possibly after a ``Login``
  with a token that the host checks and answers); the host admits it to that kind's
  connection budget or refuses it (a client's refusal is its ``Welcome``'s error, written
  before the close: the client knows no call of it was read). Any malformed, oversized or
  unknown frame, a first frame that is none of these (a ``Call`` included), a ``Hello`` or
  ``ClientHello`` the host refuses, or no first frame within
  ``first_frame_timeout_ms`` closes *that connection* with a logged reason; nothing of such a
  frame reaches the node. A client connection is also closed (logged) when it stays idle
  (no open call, no complete frame in and no reply out) for ``client_idle_timeout_ms``, or
  leaves a frame incomplete for ``partial_frame_timeout_ms``: one timer per connection,
  re-armed when it fires, so the hot path only notes the loop time. Peers have neither
  timeout (they heartbeat). Replies are queued and written once per loop turn (``flush``);
  reading pauses while the transport's write buffer is over its high mark or too many calls
  are open, so a client that does not read its replies cannot grow the node's memory.
* ``PeerLink``: the outbound side towards one peer. It connects lazily on the first frame,
  sends ``Hello`` first, coalesces the frames of one loop turn into one write, keeps a bounded
  queue (dropping the oldest frame beyond ``peer_queue_max``/``peer_queue_bytes_max``, counted
  in ``dropped``) while disconnected or while the transport asks to pause, and reconnects
  with jittered exponential backoff while it has something to send.
* ``listen``: binds a server socket, with a clear ``StartupError`` for a busy port.

With TLS (``NetConfig.tls``, ``net.tls``) the listener requires a certificate of the cluster's
CA (a connection without one fails its handshake, bounded by ``first_frame_timeout_ms``, and
never becomes an ``InboundConnection``; where login tokens are configured the certificate is
optional, and a connection without one must ``Login`` first), and
``InboundConnection.identity`` is what that certificate (or the accepted token) says
(``node:s1``, ``client:admin``): the host decides with it whom to believe.
A ``PeerLink`` presents the node's own certificate and closes a connection whose server
certificate does not name the peer it meant to reach (counted in ``connect_failures``, then
the usual backoff).

The node-facing decisions (is this Hello acceptable, what to do with a message or a call)
belong to the ``InboundHost``, which the runner implements.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
from collections import deque
from collections.abc import Callable
from enum import Enum
from ssl import SSLContext
from typing import Protocol, cast

from net.config import NetConfig
from net.errors import AddressInUse, FrameError, StartupError
from net.tls import node_identity, peer_identity
from net.wire.envelope import ENVELOPES, Call, ClientHello, Hello, Login, LoginReply, Welcome
from net.wire.framing import FrameDecoder, decode_payload, encode_frame
from pxq.codec import CodecError
from pxq.effects import NodeId

log = logging.getLogger("pxq.net.transport")


class InboundHost(Protocol):
    """What an inbound connection needs from the node runner."""

    def connection_opened(self, conn: InboundConnection) -> bool:
        """Register a new connection; False refuses it (too many connections, stopping)."""
        ...

    def accept_hello(self, conn: InboundConnection, hello: Hello) -> str | None:
        """None to accept the peer, or the reason to refuse it."""
        ...

    def accept_login(self, conn: InboundConnection, login: Login) -> str | None:
        """None to accept the token (the host sets ``conn.identity``), or why not."""
        ...

    def accept_client(self, conn: InboundConnection, hello: ClientHello) -> Welcome:
        """The answer to a client's ``ClientHello``: with an ``error`` to refuse it (another
        cluster, a budget), else ``conn`` is admitted as a client."""
        ...

    def peer_message(self, src: NodeId, msg: object) -> None:
        """A protocol message from peer ``src``."""
        ...

    def client_call(self, conn: InboundConnection, req_id: int, request: object) -> None:
        """A client request on ``conn``."""
        ...

    def connection_closed(self, conn: InboundConnection) -> None:
        """``conn`` is gone: forget it and its open calls."""
        ...


class ConnKind(Enum):
    NEW = "new"
    PEER = "peer"
    CLIENT = "client"
    CLOSED = "closed"


class InboundConnection(asyncio.Protocol):
    """One accepted connection (see the module docstring)."""

    def __init__(self, host: InboundHost, config: NetConfig) -> None:
        self._host = host
        self._config = config
        self._frame_bytes_max = config.frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max=config.frame_bytes_max)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._write_paused = False
        self._read_paused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # first frame, then client timeouts
        self._partial_since: float | None = None  # loop time a client's incomplete frame began
        self.activity_at = 0.0
        """Loop time of the last complete frame received or reply queued (or of the accept)."""
        self.kind = ConnKind.NEW
        self.peer: NodeId | None = None
        self.label = "?"
        self.address = "?"
        """The remote IP address (per-address limits)."""
        self.identity: str | None = None
        """What the peer's verified TLS certificate says (``node:s1``, ``client:admin``);
        None without TLS."""
        self.open_calls: set[int] = set()  # call ids of the runner, maintained by it
        self.close_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.kind is ConnKind.CLOSED

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        tcp = self._transport = cast(asyncio.Transport, transport)
        peername = tcp.get_extra_info("peername")
        if isinstance(peername, tuple):
            self.address = str(peername[0])
            self.label = f"{peername[0]}:{peername[1]}"
        self.identity = peer_identity(tcp)
        if self.identity is not None:
            self.label = f"{self.label} ({self.identity})"
        tcp.set_write_buffer_limits(
            high=self._config.write_buffer_high_bytes, low=self._config.write_buffer_low_bytes
        )
        loop = self._loop = asyncio.get_running_loop()
        self.activity_at = loop.time()
        if not self._host.connection_opened(self):
            self.close("refused: the node is not running", level=logging.INFO)
            return
        if self.kind is ConnKind.NEW:
            self._timer = loop.call_later(
                self._config.first_frame_timeout_ms / 1000, self._first_frame_timeout
            )

    def data_received(self, data: bytes) -> None:
        if self.kind is ConnKind.CLOSED:
            return
        try:
            payloads = self._decoder.feed(data)
        except FrameError as exc:
            self.close(f"bad frame: {exc}")
            return
        if self.kind is ConnKind.CLIENT:
            self._note_client_bytes(bool(payloads))
        for payload in payloads:
            try:
                msg = decode_payload(payload, frame_bytes_max=self._frame_bytes_max)
            except CodecError as exc:
                self.close(f"undecodable frame: {exc}")
                return
            self._dispatch(msg)
            if self.closed:  # by the dispatch, or by the node stopping
                return

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        was_open = self.kind is not ConnKind.CLOSED
        self.kind = ConnKind.CLOSED
        self._out.clear()
        if was_open and exc is not None:
            log.debug("connection %s lost: %s", self.label, exc)
        self._host.connection_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- frames -------------------------------------------------------------------------------

    def _dispatch(self, msg: object) -> None:
        kind = self.kind
        if kind is ConnKind.PEER:
            if type(msg) in ENVELOPES:
                self.close(f"{type(msg).__name__} on the peer connection of {self.peer!r}")
                return
            assert self.peer is not None
            self._host.peer_message(self.peer, msg)
        elif kind is ConnKind.CLIENT:
            if type(msg) is not Call:
                self.close(f"{type(msg).__name__} on a client connection (only Call is allowed)")
                return
            self._call(msg)
        elif type(msg) is Hello:
            reason = self._host.accept_hello(self, msg)
            if reason is not None:
                self.close(f"Hello refused: {reason}", level=logging.WARNING)
                return
            self._cancel_timer()  # peers heartbeat: no idle or partial-frame timeout
            self.kind = ConnKind.PEER
            self.peer = msg.node
            log.debug("peer connection from %s (%s)", msg.node, self.label)
        elif type(msg) is ClientHello:
            welcome = self._host.accept_client(self, msg)
            self.queue(encode_frame(welcome, frame_bytes_max=self._frame_bytes_max))
            if welcome.error:
                # The Welcome goes out before the close: the client learns that nothing it
                # sent was read (it sends no call before the Welcome).
                self.close(f"client refused: {welcome.error}", level=logging.WARNING)
                return
            self.flush()
            self._cancel_timer()
            self.kind = ConnKind.CLIENT
            # The rest of this read may hold the start of the next frame.
            self._note_client_bytes(True)
            self._arm_client_timer()
        elif type(msg) is Login:
            reason = self._host.accept_login(self, msg)
            reply = LoginReply(principal=self.identity or "", error=reason or "")
            self.queue(encode_frame(reply, frame_bytes_max=self._frame_bytes_max))
            if reason is not None:
                self.close(f"Login refused: {reason}", level=logging.WARNING)
                return
            self.flush()
            self.label = f"{self.label} ({self.identity})"
        else:
            self.close(f"first frame is {type(msg).__name__}, not Hello, Login or ClientHello")

    def _call(self, call: Call) -> None:
        try:
            request = decode_payload(call.request, frame_bytes_max=self._frame_bytes_max)
        except CodecError as exc:
            self.close(f"undecodable request in Call {call.req_id}: {exc}")
            return
        if type(request) in ENVELOPES:
            self.close(f"Call {call.req_id} nests an envelope {type(request).__name__}")
            return
        self._host.client_call(self, call.req_id, request)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _first_frame_timeout(self) -> None:
        self._timer = None
        if self.kind is ConnKind.NEW:
            timeout_ms = self._config.first_frame_timeout_ms
            self.close(f"no Hello or ClientHello within {timeout_ms} ms", level=logging.INFO)

    # -- client timeouts ----------------------------------------------------------------------

    def _note_client_bytes(self, completed: bool) -> None:
        """Bytes arrived on a client connection: ``completed`` if they ended some frame."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        if completed:
            self.activity_at = now
        if self._decoder.buffered == 0:
            self._partial_since = None
        elif completed or self._partial_since is None:
            self._partial_since = now  # a new frame began

    def _arm_client_timer(self) -> None:
        """Arm the timer at the earliest moment a client timeout can be due. A frame that
        begins later is due no sooner than ``partial_frame_timeout_ms`` from now, so the
        timer never waits longer than that (one wake-up per client and that period)."""
        loop = self._loop
        if loop is None or self.kind is not ConnKind.CLIENT:
            return
        config = self._config
        now = loop.time()
        partial_since = self._partial_since
        # Only a connection that could be closed as idle counts from its last activity; the
        # others (an open call, a frame under way, reading paused) are idle from now at best.
        busy = self.open_calls or partial_since is not None or self._read_paused
        idle_from = now if busy else self.activity_at
        partial_from = now if partial_since is None or self._read_paused else partial_since
        due = min(
            idle_from + config.client_idle_timeout_ms / 1000,
            partial_from + config.partial_frame_timeout_ms / 1000,
        )
        self._timer = loop.call_at(max(due, now), self._client_timeout)

    def _client_timeout(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None or self.kind is not ConnKind.CLIENT:
            return
        config = self._config
        now = loop.time()
        if self._read_paused:
            # Not reading is the node's choice (backpressure): nothing here is the client's
            # delay; a frame under way restarts its clock when reading resumes.
            self._arm_client_timer()
            return
        partial_since = self._partial_since
        if (
            partial_since is not None
            and now - partial_since >= config.partial_frame_timeout_ms / 1000
        ):
            self.close(
                f"a frame left incomplete for {config.partial_frame_timeout_ms} ms "
                f"({self._decoder.buffered} bytes buffered)",
                level=logging.INFO,
            )
            return
        if (
            not self.open_calls
            and partial_since is None
            and now - self.activity_at >= config.client_idle_timeout_ms / 1000
        ):
            self.close(
                f"client idle for {config.client_idle_timeout_ms} ms (no open call)",
                level=logging.INFO,
            )
            return
        self._arm_client_timer()

    # -- output -------------------------------------------------------------------------------

    def queue(self, data: bytes) -> bool:
        """Queue an encoded frame for the next ``flush``; True if the queue was empty."""
        if self.kind is ConnKind.CLOSED:
            return False
        out = self._out
        out.append(data)
        return len(out) == 1

    def flush(self) -> None:
        """Write the queued frames in one write."""
        out = self._out
        transport = self._transport
        if not out or transport is None or self.kind is ConnKind.CLOSED:
            out.clear()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def calls_changed(self) -> None:
        """The number of open calls changed (a call arrived or was answered): the connection
        is active; pause or resume reading accordingly."""
        loop = self._loop
        if loop is not None:
            self.activity_at = loop.time()
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self.kind is ConnKind.CLOSED:
            return
        pause = self._write_paused or len(self.open_calls) >= self._config.conn_calls_open_max
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            if self._partial_since is not None and self._loop is not None:
                self._partial_since = self._loop.time()
            transport.resume_reading()

    def close(self, reason: str, *, level: int = logging.WARNING) -> None:
        """Close this connection (flushing what was already queued) and log why; protocol
        violations log at warning level (the default), benign closes pass a lower one."""
        if self.kind is ConnKind.CLOSED:
            return
        self.flush()
        self.kind = ConnKind.CLOSED
        self.close_reason = reason
        log.log(level, "closing connection %s: %s", self.label, reason)
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()


# --------------------------------------------------------------------------------------------
# Outbound peer links


class _LinkState(Enum):
    IDLE = "idle"  # not connected, nothing to send
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting before the next attempt
    CLOSED = "closed"


class PeerLink:
    """The outbound connection to one peer (see the module docstring)."""

    def __init__(
        self,
        *,
        local: NodeId,
        cluster: str,
        peer: NodeId,
        address: tuple[str, int],
        config: NetConfig,
        rng: random.Random,
        cluster_id: str = "",
    ) -> None:
        self.local = local
        self.cluster = cluster
        self.cluster_id = cluster_id
        self.peer = peer
        self.address = address
        self._config = config
        self._rng = rng
        self._state = _LinkState.IDLE
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._attempts = 0
        self._connected_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.connects = 0
        self.connect_failures = 0
        self.frames_written = 0

    @property
    def connected(self) -> bool:
        return self._state is _LinkState.CONNECTED

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, data: bytes) -> None:
        """Queue an encoded frame; it is written at the next ``flush`` once connected."""
        if self._state is _LinkState.CLOSED:
            return
        queue = self._queue
        queue.append(data)
        self._queued_bytes += len(data)
        config = self._config
        while len(queue) > config.peer_queue_max or (
            self._queued_bytes > config.peer_queue_bytes_max and len(queue) > 1
        ):
            self._queued_bytes -= len(queue.popleft())
            self.dropped += 1
        if self._state is _LinkState.IDLE:
            self._connect()

    def flush(self) -> None:
        """Write everything queued in one write, unless disconnected or paused."""
        transport = self._transport
        queue = self._queue
        if (
            not queue
            or self._paused
            or transport is None
            or self._state is not _LinkState.CONNECTED
        ):
            return
        self.frames_written += len(queue)
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self._queued_bytes = 0
        transport.write(data)

    def set_address(self, address: tuple[str, int]) -> None:
        """Use a new address; an open connection to the old one is dropped."""
        if address == self.address:
            return
        self.address = address
        if self._transport is not None:
            self._transport.abort()  # connection_lost schedules the reconnect

    def close(self) -> None:
        """Stop for good: cancel attempts, write what is queued if connected, and close."""
        if self._state is _LinkState.CLOSED:
            return
        self.flush()
        self._state = _LinkState.CLOSED
        self._queue.clear()
        self._queued_bytes = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- connection management ----------------------------------------------------------------

    def _connect(self) -> None:
        self._state = _LinkState.CONNECTING
        self._retry = None
        self._task = asyncio.get_running_loop().create_task(
            self._connect_once(), name=f"pxq-link-{self.local}-{self.peer}"
        )

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.address
        tls = self._config.tls
        try:
            async with asyncio.timeout(self._config.peer_connect_timeout_ms / 1000):
                await loop.create_connection(
                    lambda: _PeerProtocol(self),
                    host,
                    port,
                    ssl=None if tls is None else tls.client,
                )
        except (OSError, TimeoutError) as exc:
            self._task = None
            if self._state is _LinkState.CONNECTING:
                self.connect_failures += 1
                level = logging.INFO if self._attempts == 0 else logging.DEBUG
                log.log(
                    level,
                    "%s: cannot connect to peer %s at %s:%d: %s",
                    self.local,
                    self.peer,
                    host,
                    port,
                    exc or type(exc).__name__,
                )
                self._backoff()
            return
        self._task = None

    def _connected(self, transport: asyncio.Transport) -> None:
        if self._state is not _LinkState.CONNECTING:
            transport.abort()  # closed (or readdressed) while connecting
            return
        loop = asyncio.get_running_loop()
        self._state = _LinkState.CONNECTED
        self._transport = transport
        self._paused = False
        self._connected_at = loop.time()
        self.connects += 1
        transport.set_write_buffer_limits(
            high=self._config.write_buffer_high_bytes, low=self._config.write_buffer_low_bytes
        )
        hello = Hello(node=self.local, cluster=self.cluster, cluster_id=self.cluster_id)
        transport.write(encode_frame(hello, frame_bytes_max=self._config.frame_bytes_max))
        log.debug("%s: connected to peer %s", self.local, self.peer)
        self.flush()

    def _wrong_identity(self, transport: asyncio.Transport, identity: str | None) -> None:
        """The server's certificate does not name the peer: close, count, back off."""
        transport.abort()
        if self._state is not _LinkState.CONNECTING:
            return
        self.connect_failures += 1
        log.warning(
            "%s: the node at %s:%d is %s, not %s; closing the link",
            self.local,
            *self.address,
            identity or "unauthenticated",
            node_identity(self.peer),
        )
        self._backoff()

    def _lost(self, transport: asyncio.Transport, exc: Exception | None) -> None:
        if transport is not self._transport:
            return
        self._transport = None
        self._paused = False
        if self._state is not _LinkState.CONNECTED:
            return
        lived = asyncio.get_running_loop().time() - self._connected_at
        if lived * 1000 >= self._config.peer_backoff_max_ms:
            self._attempts = 0  # a connection that lived long enough was a success
        log.info("%s: connection to peer %s lost: %s", self.local, self.peer, exc or "closed")
        self._backoff()

    def _backoff(self) -> None:
        config = self._config
        delay_ms = min(
            config.peer_backoff_max_ms, config.peer_backoff_initial_ms << min(self._attempts, 30)
        )
        self._attempts += 1
        # Full jitter over the upper half: peers that lost each other at once spread out.
        delay_s = self._rng.uniform(delay_ms / 2, delay_ms) / 1000
        self._state = _LinkState.BACKOFF
        self._retry = asyncio.get_running_loop().call_later(delay_s, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        if self._state is not _LinkState.BACKOFF:
            return
        if self._queue:
            self._connect()
        else:
            self._state = _LinkState.IDLE  # connect again on the next frame

    def open(self) -> None:
        """Connect now, even with nothing to send (the Hello tells the peer we are up)."""
        if self._state is _LinkState.IDLE:
            self._connect()

    def peer_alive(self) -> None:
        """The peer just connected to us, so it is back: if we are waiting out a backoff,
        reconnect now. Without this, a restarted replica hears nothing from the master for up
        to ``peer_backoff_max_ms``, campaigns after a lease, and disturbs a healthy master."""
        if self._state is not _LinkState.BACKOFF:
            return
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._attempts = 0
        if self._queue:
            self._connect()
        else:
            self._state = _LinkState.IDLE

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        if not paused:
            self.flush()


class _PeerProtocol(asyncio.Protocol):
    """The asyncio side of a ``PeerLink`` connection. The remote never writes on it."""

    def __init__(self, link: PeerLink) -> None:
        self._link = link
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        tcp = cast(asyncio.Transport, transport)
        link = self._link
        if link._config.tls is not None:
            identity = peer_identity(tcp)
            if identity != node_identity(link.peer):
                link._wrong_identity(tcp, identity)
                return
        self._transport = tcp
        link._connected(tcp)

    def data_received(self, data: bytes) -> None:
        log.info("peer %s wrote on a one-way link; closing it", self._link.peer)
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._link._lost(self._transport, exc)

    def pause_writing(self) -> None:
        self._link._set_paused(True)

    def resume_writing(self) -> None:
        self._link._set_paused(False)


# --------------------------------------------------------------------------------------------
# Listening


async def listen(
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    ssl: SSLContext | None = None,
    handshake_timeout_s: float | None = None,
) -> asyncio.Server:
    """A server bound to ``host:port`` (not yet serving), TLS with ``ssl``; ``AddressInUse``
    if the port is taken, ``StartupError`` for any other bind failure."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            factory,
            host,
            port,
            start_serving=False,
            backlog=512,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout_s if ssl is not None else None,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"cannot listen on {host}:{port}: the port is in use") from exc
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
