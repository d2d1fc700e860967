"""The exceptions of the production driver, in one hierarchy rooted at ``NetError``.

Startup problems (busy port, unusable or foreign data dir) are ``StartupError``s with a
message naming the problem; storage failures that must stop a node are ``StorageError``s;
client-side call failures whose outcome is unknown are ``CallOutcomeUnknown``s.
"""

from __future__ import annotations


class NetError(Exception):
    """Base of every error raised by the ``net`` package."""


# -- startup ------------------------------------------------------------------------------


class StartupError(NetError):
    """A node cannot start; the message names the problem."""


class AddressInUse(StartupError):
    """The listen address is taken by another socket."""


class DataDirError(StartupError):
    """The data dir is missing, unreadable, locked by another process or malformed."""


class DataDirMismatch(DataDirError):
    """The data dir belongs to another cluster or another node."""


class BootFailed(StartupError):
    """The node could not be built or failed while handling ``Boot`` (for example a checksum
    failure while reading its state)."""


# -- storage ------------------------------------------------------------------------------


class StorageError(NetError):
    """LMDB failed (I/O error, bad key size, ...). The node stops; nothing is retried."""


class StorageFull(StorageError):
    """The map cannot grow any further (or the disk is full); the failed batch was aborted
    as a whole, so nothing of it stays. The last resort: the runner refuses enqueues with
    ``StoreError(code="storage_full")`` while the space left is below
    ``NetConfig.storage_reserve_bytes``, so this stops a node only if the reserve was too
    small for the other writes (or a follower's disk filled before its master's)."""


# -- framing ------------------------------------------------------------------------------


class FrameError(NetError):
    """A byte stream is not a sequence of well-formed frames (bad or oversized length)."""


# -- client -------------------------------------------------------------------------------


class CallError(NetError):
    """A call failed."""


class CallOutcomeUnknown(CallError):
    """The request may or may not have been applied by the node."""


class CallTimeout(CallOutcomeUnknown):
    """No reply within the timeout. The outcome is unknown."""


class ConnectionLost(CallOutcomeUnknown):
    """The connection closed (or the node broke the protocol) while the call was open. The
    outcome is unknown."""


class NotConnected(CallError):
    """The connection was already closed when the call was made: the request was not sent,
    so this failure is definite."""


class TlsError(StartupError):
    """TLS material (the cluster's CA, a node's or a client's certificate and key) is missing
    or unusable; the message names the file and how to create it."""


class PeerIdentityMismatch(NotConnected):
    """The node reached presented a certificate of the cluster's CA naming another identity
    than the one the caller meant to reach; the connection was closed before any call was
    sent (definite)."""


class LoginRefused(NotConnected):
    """The node refused the client's login token (unknown, or TLS off); the connection was
    closed before any call was sent (definite)."""


class ConnectRefused(NotConnected):
    """The connection could not be set up, and no call was sent on it (definite): the connect
    was refused or timed out, or the node refused the client in its ``Welcome`` (a budget),
    or closed the connection before answering the ``ClientHello``. The message names the
    address and the reason."""


class ForeignCluster(ConnectRefused):
    """The node reached belongs to another cluster (another name or id) and refused the
    client, or is another node than the one meant; nothing was sent (definite). The message
    names both clusters."""


class MetadataMismatch(ConnectRefused):
    """The node belongs to the client's cluster, but the routing metadata of the client's
    cluster file differs from the node's (``pxq.config.identity``): the client must not route
    with it. ``differences`` names what differs; nothing was sent (definite)."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences
