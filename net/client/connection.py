"""Low-level client: one TCP connection to one node, carrying pipelined request/response calls.

``NodeClient.call(request, timeout_s)`` sends ``Call(req_id, encode(request))`` and waits for
the ``CallReply`` with the same ``req_id``; any number of calls may be open at once (up to
``NetConfig.client_calls_inflight_max``), and the frames of one loop turn go out in one write.
Failures are typed by what the caller may conclude:

* ``CallTimeout`` and ``ConnectionLost`` (both ``CallOutcomeUnknown``): the request may or may
  not have been applied by the node;
* ``NotConnected``: the connection was closed before the request was sent (definitely not
  applied); ``CodecError`` from ``pxq.codec``: the request cannot be encoded (not sent).

With TLS (``NetConfig.tls``), the connection presents the client's certificate (or, for a
client with a token, sends ``Login(token)`` first and waits for its ``LoginReply``:
``LoginRefused`` on a refusal) and checks
that the node's certificate (verified against the cluster's CA) names the node it meant to
reach (``connect(node=...)``; without a name, any node of the cluster):
``PeerIdentityMismatch`` otherwise, before anything is sent.

A reply that is not a well-formed ``CallReply`` breaks the connection: it is closed and all
its open calls fail with ``ConnectionLost``. Routing, retries, redirects and the queue API
belong to the high-level client, not here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from net.config import NetConfig
from net.errors import (
    CallTimeout,
    ConnectionLost,
    FrameError,
    LoginRefused,
    NotConnected,
    PeerIdentityMismatch,
)
from net.tls import node_identity, peer_identity
from net.wire.envelope import Call, CallReply, Login, LoginReply
from net.wire.framing import FrameDecoder, decode_payload, encode_frame
from pxq import codec

log = logging.getLogger("pxq.net.client")


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, config: NetConfig) -> None:
        self._frame_bytes_max = config.frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max=config.frame_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[object]] = {}
        self.closed_reason: str | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._drained: asyncio.Future[None] | None = None  # set while writing is paused
        self.login: asyncio.Future[LoginReply] | None = None  # a Login's answer, awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closed_reason is not None:
            return
        try:
            payloads = self._decoder.feed(data)
        except FrameError as exc:
            self.fail(f"bad frame from the node: {exc}")
            return
        pending = self.pending
        for payload in payloads:
            try:
                reply = decode_payload(payload, frame_bytes_max=self._frame_bytes_max)
                login = self.login
                if type(reply) is LoginReply and login is not None and not login.done():
                    login.set_result(reply)
                    continue
                if type(reply) is not CallReply:
                    raise codec.CodecError(f"expected CallReply, got {type(reply).__name__}")
                response = decode_payload(reply.response, frame_bytes_max=self._frame_bytes_max)
            except codec.CodecError as exc:
                self.fail(f"malformed reply from the node: {exc}")
                return
            fut = pending.get(reply.req_id)
            if fut is not None and not fut.done():
                fut.set_result(response)
            # else: a late reply to a call that timed out or was cancelled

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.closed_reason or (f"connection lost: {exc}" if exc else "closed by the node")
        self.closed_reason = reason
        self._fail_all(reason)
        if self.login is not None and not self.login.done():
            self.login.set_exception(LoginRefused(f"no answer to the Login: {reason}"))
        # Waiters for the write buffer to drain wake up and find the connection closed.
        self.resume_writing()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def wait_writable(self) -> None:
        drained = self._drained
        if drained is not None:
            await asyncio.shield(drained)

    def queue(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out and self.transport is not None and self.closed_reason is None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def fail(self, reason: str) -> None:
        """Break the connection: every open call fails with ``ConnectionLost(reason)``."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        log.warning("closing the connection: %s", reason)
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()

    def _fail_all(self, reason: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))
        self.pending.clear()


async def _login(protocol: _ClientProtocol, token: str, config: NetConfig, label: str) -> None:
    """Send ``Login(token)`` first and wait for the node's answer; ``LoginRefused`` (the
    connection closed) if it refuses."""
    protocol.login = asyncio.get_running_loop().create_future()
    protocol.queue(encode_frame(Login(token=token), frame_bytes_max=config.frame_bytes_max))
    reply = await protocol.login
    protocol.login = None
    if reply.error:
        protocol.fail(f"login refused by {label}: {reply.error}")
        raise LoginRefused(f"{label} refused the login token: {reply.error}")


class NodeClient:
    """A connection to one node (see the module docstring). Use ``NodeClient.connect``."""

    def __init__(self, protocol: _ClientProtocol, config: NetConfig, label: str) -> None:
        self._protocol = protocol
        self._config = config
        self._slots = asyncio.Semaphore(config.client_calls_inflight_max)
        self._next_req_id = 1
        self.label = label

    @classmethod
    async def connect(
        cls, host: str, port: int, *, config: NetConfig | None = None, node: str | None = None
    ) -> NodeClient:
        """Connect to the node at ``host:port`` (named ``node``, if known: with TLS its
        certificate must say so); ``OSError`` (``ssl.SSLError`` included) or
        ``TimeoutError`` on failure, ``PeerIdentityMismatch`` for another identity,
        ``LoginRefused`` for a token the node does not know."""
        config = config or NetConfig()
        loop = asyncio.get_running_loop()
        tls = config.tls
        async with asyncio.timeout(config.client_connect_timeout_ms / 1000):
            transport, protocol = await loop.create_connection(
                lambda: _ClientProtocol(config),
                host,
                port,
                ssl=None if tls is None else tls.client,
            )
            if tls is not None:
                # Who the server is, before anything (a token above all) is sent to it.
                identity = peer_identity(transport)
                wanted = node_identity(node) if node is not None else None
                if identity is None or (
                    identity != wanted if wanted is not None else not identity.startswith("node:")
                ):
                    transport.abort()
                    raise PeerIdentityMismatch(
                        f"the node at {host}:{port} is {identity or 'unauthenticated'}, "
                        f"not {wanted or 'a node of the cluster'}"
                    )
                if tls.token is not None:
                    await _login(protocol, tls.token, config, f"{host}:{port}")
        return cls(protocol, config, f"{host}:{port}")

    @property
    def closed(self) -> bool:
        return self._protocol.closed_reason is not None

    @property
    def inflight(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._protocol.pending)

    async def call(self, request: object, timeout_s: float) -> object:
        """Send ``request`` (a registered message) and return the node's response.

        Raises ``CallTimeout`` or ``ConnectionLost`` (outcome unknown), ``NotConnected``
        (not sent) or ``codec.CodecError`` (not encodable, not sent). A timeout covers the
        wait for a free slot and for write backpressure too, and is then conservatively
        reported as ``CallTimeout`` as well.
        """
        protocol = self._protocol
        if protocol.closed_reason is not None:
            raise NotConnected(f"connection to {self.label} is closed: {protocol.closed_reason}")
        frame_bytes_max = self._config.frame_bytes_max
        body = codec.encode(request, frame_bytes_max=frame_bytes_max)
        req_id = self._next_req_id
        self._next_req_id += 1
        # The envelope adds a few bytes to the body: check the limit on the whole frame.
        data = encode_frame(Call(req_id=req_id, request=body), frame_bytes_max=frame_bytes_max)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._slots:
                    await protocol.wait_writable()
                    if protocol.closed_reason is not None:
                        raise NotConnected(
                            f"connection to {self.label} closed before the call was sent: "
                            f"{protocol.closed_reason}"
                        )
                    fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                    protocol.pending[req_id] = fut
                    protocol.queue(data)
                    try:
                        return await fut
                    finally:
                        protocol.pending.pop(req_id, None)
        except TimeoutError:
            raise CallTimeout(
                f"no reply from {self.label} to call {req_id} ({type(request).__name__}) "
                f"within {timeout_s} s: outcome unknown"
            ) from None

    async def close(self) -> None:
        """Close the connection; open calls fail with ``ConnectionLost``."""
        protocol = self._protocol
        if protocol.closed_reason is None:
            protocol.closed_reason = "closed by the client"
            if protocol.transport is not None:
                protocol.transport.close()
        await protocol.lost
