"""Low-level client: one TCP connection to one node, carrying pipelined request/response calls.

``NodeClient.connect`` opens the connection and says first which cluster it means: a
``ClientHello`` with the cluster's name and id and its routing metadata's fingerprint
(``ClusterIdentity``, from the client's cluster file), and the node it meant to reach. It sends
nothing else until the node's ``Welcome``: a node of another cluster refuses it
(``ForeignCluster``, naming both), so does a node over its connection budget
(``ConnectRefused``), and a node whose routing metadata differs answers with its own, which
the client refuses to use (``MetadataMismatch``, naming what differs). Every failure to set
a connection up (refused, timed out, TLS handshake, refusals) is a ``ConnectRefused`` (a
``NotConnected``) naming the address: no call was sent, so it is definite.

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
from dataclasses import dataclass, field
from typing import cast

from net.config import NetConfig
from net.errors import (
    CallTimeout,
    ConnectionLost,
    ConnectRefused,
    ForeignCluster,
    FrameError,
    LoginRefused,
    MetadataMismatch,
    NotConnected,
    PeerIdentityMismatch,
)
from net.tls import node_identity, peer_identity
from net.wire.envelope import Call, CallReply, ClientHello, Login, LoginReply, Welcome
from net.wire.framing import FrameDecoder, decode_payload, encode_frame
from pxq import codec
from pxq.config import ClusterConfig
from pxq.config.identity import describe_cluster, fingerprint, metadata_differences, metadata_text

log = logging.getLogger("pxq.net.client")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterIdentity:
    """The cluster a client means: name and id of its cluster file and the routing metadata
    it routes with (``pxq.config.identity.metadata_text``; "" in tests of bare runners)."""

    name: str
    id: str = ""
    metadata: str = ""
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint(self.metadata))

    @classmethod
    def of(cls, config: ClusterConfig) -> ClusterIdentity:
        return cls(name=config.name, id=config.id, metadata=metadata_text(config))

    def describe(self) -> str:
        return describe_cluster(self.name, self.id)


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
        self.welcome: asyncio.Future[Welcome] | None = None  # a ClientHello's answer, awaited

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
                welcome = self.welcome
                if type(reply) is Welcome and welcome is not None and not welcome.done():
                    welcome.set_result(reply)
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
        if self.welcome is not None and not self.welcome.done():
            self.welcome.set_exception(
                ConnectRefused(f"no answer to the ClientHello (no call was sent): {reason}")
            )
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


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the node running?)"
    text = exc.strerror or str(exc) or type(exc).__name__
    if type(exc).__module__ == "ssl" or "SSL" in type(exc).__name__:
        return f"TLS handshake failed: {text} (a node of another cluster, or another CA?)"
    return text


async def _handshake(
    transport: asyncio.Transport,
    protocol: _ClientProtocol,
    *,
    config: NetConfig,
    label: str,
    cluster: ClusterIdentity,
    node: str | None,
) -> None:
    """Everything between the TCP connect and the first call (see the module docstring)."""
    tls = config.tls
    if tls is not None:
        # Who the server is, before anything (a token above all) is sent to it.
        identity = peer_identity(transport)
        wanted = node_identity(node) if node is not None else None
        if identity is None or (
            identity != wanted if wanted is not None else not identity.startswith("node:")
        ):
            raise PeerIdentityMismatch(
                f"the node at {label} is {identity or 'unauthenticated'}, "
                f"not {wanted or 'a node of the cluster'}"
            )
        if tls.token is not None:
            await _login(protocol, tls.token, config, label)
    protocol.welcome = asyncio.get_running_loop().create_future()
    hello = ClientHello(
        cluster=cluster.name,
        cluster_id=cluster.id,
        fingerprint=cluster.fingerprint,
        node=node or "",
    )
    protocol.queue(encode_frame(hello, frame_bytes_max=config.frame_bytes_max))
    welcome = await protocol.welcome
    protocol.welcome = None
    theirs = describe_cluster(welcome.cluster, welcome.cluster_id)
    if (welcome.cluster, welcome.cluster_id) != (cluster.name, cluster.id):
        # (The node's own refusal says the same.)
        raise ForeignCluster(
            f"{label} is node {welcome.node} of {theirs}, not of {cluster.describe()} of the "
            f"client's cluster file"
        )
    if welcome.error:
        refused = ForeignCluster if node and welcome.node != node else ConnectRefused
        raise refused(f"{label} (node {welcome.node}) refused the client: {welcome.error}")
    if node is not None and welcome.node != node:
        raise ForeignCluster(f"{label} is node {welcome.node} of {theirs}, not {node}")
    if welcome.metadata:
        differences = metadata_differences(cluster.metadata, welcome.metadata)
        raise MetadataMismatch(
            f"the cluster file's routing metadata differs from {theirs}'s (node "
            f"{welcome.node} at {label}): {'; '.join(differences)}; refusing to route with "
            f"it (use the cluster's own file)",
            differences,
        )


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
        cls,
        host: str,
        port: int,
        *,
        cluster: ClusterIdentity,
        config: NetConfig | None = None,
        node: str | None = None,
    ) -> NodeClient:
        """Connect to the node at ``host:port`` (named ``node``, if known: with TLS its
        certificate must say so, and the node's ``Welcome`` too) as a client of ``cluster``.

        Raises a ``ConnectRefused`` naming the address for every failure to set the
        connection up, nothing having been sent: ``ForeignCluster`` (another cluster, or
        another node than ``node``), ``MetadataMismatch`` (the routing metadata differs),
        ``PeerIdentityMismatch`` (a certificate of another identity), ``LoginRefused`` (a
        token the node does not know), or a plain ``ConnectRefused`` (refused, timed out, a
        TLS handshake failure, a node refusing clients)."""
        config = config or NetConfig()
        label = f"{host}:{port}"
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(config.client_connect_timeout_ms / 1000):
                transport, protocol = await asyncio.get_running_loop().create_connection(
                    lambda: _ClientProtocol(config),
                    host,
                    port,
                    ssl=None if config.tls is None else config.tls.client,
                )
                await _handshake(
                    transport, protocol, config=config, label=label, cluster=cluster, node=node
                )
        except NotConnected:  # ConnectRefused, PeerIdentityMismatch, LoginRefused
            if transport is not None:
                transport.abort()
            raise
        except TimeoutError:
            if transport is not None:
                transport.abort()
            raise ConnectRefused(
                f"{label}: no connection within {config.client_connect_timeout_ms} ms"
            ) from None
        except OSError as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            if transport is not None:
                transport.abort()
            raise ConnectRefused(f"{label}: {_os_reason(exc)}") from exc
        return cls(protocol, config, label)

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
