"""Envelope messages of the production wire, in the codec's "client" tag range (224-255).

A connection to a node starts with one of two frames, which decide what the connection is:

* ``Hello(node, cluster)``: the connection carries peer traffic from ``node``; every later
  frame is a protocol message of the sender's node (any registered message other than these
  envelopes) delivered as ``Received(src=node, msg)``. Peer connections are one-way: each
  node sends on the connections it opened and receives on those it accepted.
* ``Call(req_id, request)``: the connection is a client's; every frame on it is a ``Call``
  and the node answers each with one ``CallReply`` carrying the same ``req_id``.

With TLS, a client without a certificate may first send ``Login(token)``; the node answers
``LoginReply`` (the principal, or why not) and closes the connection on a refusal. Its first
``Call`` follows the reply.

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


ENVELOPES: tuple[type, ...] = (Hello, Call, CallReply, Login, LoginReply)
"""Messages that are never payloads: a nested or peer message of one of these types is a
protocol error."""
