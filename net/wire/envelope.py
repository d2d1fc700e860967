"""Envelope messages of the production wire, in the codec's "client" tag range (224-255).

A connection to a node starts with one of two frames, which decide what the connection is:

* ``Hello(node, cluster, cluster_id)``: the connection carries peer traffic from ``node``;
  every later frame is a protocol message of the sender's node (any registered message other
  than these envelopes) delivered as ``Received(src=node, msg)``. Peer connections are
  one-way: each node sends on the connections it opened and receives on those it accepted.
* ``ClientHello(cluster, cluster_id, fingerprint, node)``: the connection is a client's. The
  node answers one ``Welcome``: an ``error`` (another cluster, or a connection budget: the
  node then closes the connection, having read no call) or its acceptance, with its
  routing metadata when the client's ``fingerprint`` differs from its own
  (``pxq.config.identity``). The client sends nothing more before the ``Welcome``; then every
  frame it sends is a ``Call``, and the node answers each with one ``CallReply`` carrying the
  same ``req_id``. A first frame ``Call`` is refused: a client always says first which
  cluster it means.

With TLS, a client without a certificate may first send ``Login(token)``; the node answers
``LoginReply`` (the principal, or why not) and closes the connection on a refusal. Its
``ClientHello`` follows the reply.

The codec has no field type for "any registered message", so requests and responses travel
nested as the bytes ``codec.encode`` made of them, decoded (with the same limits) on receipt.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxq.codec import message


@message(224)
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First frame of a peer connection: who is sending, and in which cluster."""

    node: str
    cluster: str
    cluster_id: str = ""


@message(225)
@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """A client request; ``request`` is the encoded request message."""

    req_id: int
    request: bytes


@message(226)
@dataclass(frozen=True, slots=True, kw_only=True)
class CallReply:
    """The node's answer to ``Call(req_id)``; ``response`` is the encoded response message."""

    req_id: int
    response: bytes


@message(241)
@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """A client's token (over TLS, instead of a client certificate): the first frame."""

    token: str


@message(242)
@dataclass(frozen=True, slots=True, kw_only=True)
class LoginReply:
    """The node's answer to ``Login``: ``principal`` (``client:NAME``) on success, else
    ``error`` says why (and the node closes the connection)."""

    principal: str = ""
    error: str = ""


# Tags from the top of the client range: the other envelopes took its bottom.
@message(254)
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHello:
    """First frame of a client connection (after a ``Login``, if any): the cluster the client
    means (name and id of its cluster file), its routing metadata's fingerprint, and the node
    it meant to reach ("" for any)."""

    cluster: str
    cluster_id: str
    fingerprint: str
    node: str = ""


@message(255)
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """The node's answer to ``ClientHello``: who it is (``node``, ``cluster``,
    ``cluster_id``); ``error`` says why it refuses the client (it closes the connection, having
    read no call), else ``metadata`` is its routing metadata when the client's fingerprint
    differs from its own ("" when they are equal)."""

    node: str
    cluster: str
    cluster_id: str
    metadata: str = ""
    error: str = ""


ENVELOPES: tuple[type, ...] = (Hello, Call, CallReply, Login, LoginReply, ClientHello, Welcome)
"""Messages that are never payloads: a nested or peer message of one of these types is a
protocol error."""
