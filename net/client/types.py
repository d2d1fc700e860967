"""The value types and exceptions of the public client API (``pxq.AsyncClient``, ``pxq.Client``).

This module owns what an application sees of a call's outcome: the ``Receipt`` of an enqueue,
the ``Item`` a consumer handler gets, and the ``PxqError`` hierarchy that tells a definite
failure (``EnqueueFailed``: certainly not enqueued, safe to retry as a new item) from an
unknown outcome (``OutcomeUnknown``: it may or may not have taken effect). It has no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from pxq.access import PERMISSION_DENIED
from pxq.effects import fast_init

if TYPE_CHECKING:
    from pathlib import Path

    from pxq.config import ClusterConfig


class HeaderMap(Mapping[str, str]):
    """An item's headers: a read-only, hashable map of str to str (so an ``Item`` stays
    hashable), equal to any mapping with the same pairs. Iterates in name order."""

    __slots__ = ("_map", "_pairs")

    def __init__(self, pairs: tuple[tuple[str, str], ...] = ()) -> None:
        self._pairs = pairs
        self._map = dict(pairs)

    def __getitem__(self, name: str) -> str:
        return self._map[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._pairs)

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderMap):
            return self._pairs == other._pairs
        return super().__eq__(other)

    def __repr__(self) -> str:
        return f"HeaderMap({self._map!r})"


NO_HEADERS: Final = HeaderMap()
"""The headers of an item without any (one shared empty map)."""


def headers_view(pairs: tuple[tuple[str, str], ...]) -> HeaderMap:
    """The map an ``Item`` carries for stored header pairs (normal form: sorted by name)."""
    return HeaderMap(pairs) if pairs else NO_HEADERS


class PxqError(Exception):
    """Base of every error the pxq client API raises."""


class OutcomeUnknown(PxqError):
    """The request may or may not have taken effect (timeouts, lost connections, a master
    that lost its lease while the request was in flight, a client closed with calls open).

    For an enqueue: the item may be in the queue or not. Retrying it as a new item may create
    a duplicate; not retrying it may lose it. Consumers must be idempotent either way."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"outcome unknown: {reason}")
        self.reason = reason


class EnqueueFailed(PxqError):
    """The item was definitely not enqueued; retrying it as a new item is safe.

    ``code`` is one of the producer's definite codes (``pxq.producer.messages.ProduceFailed``):
    ``unknown_topic``, ``too_large``, ``overloaded`` (the client's own bound on held calls),
    ``bad_request``, ``timeout`` (its deadline passed before it was sent), ``unavailable``
    (every attempt was redirected or refused), or a definite store error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RequestFailed(PxqError):
    """An admin request (``seek``) was definitely refused by the store (``code`` is the
    store's ``StoreError.code``, for example ``unknown_group`` or ``bad_queue``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class PermissionDenied(EnqueueFailed, RequestFailed):
    """The cluster refused the request because the client's principal (its TLS certificate's
    identity) lacks ``permission`` (``produce:TOPIC``, ``consume:TOPIC/GROUP``,
    ``seek:TOPIC/GROUP``, ``redrive:TOPIC/GROUP``, ``locks`` or ``admin``; ``pxq.access``).
    Definite: nothing happened. Code ``permission_denied``; an ``EnqueueFailed`` for an
    enqueue and a ``RequestFailed`` for an admin call alike."""

    def __init__(self, message: str) -> None:
        PxqError.__init__(self, message)
        self.code = PERMISSION_DENIED
        self.message = message
        self.permission = message.rpartition(" lacks ")[2]


class CasMismatch(RequestFailed):
    """A register compare-and-set found another value than it expected: definite, nothing
    changed. ``current`` is the register's value when the cas was applied (None: never
    written) and ``version`` its version (0: never written). Code ``mismatch``."""

    def __init__(self, key: str, current: bytes | None, version: int) -> None:
        RequestFailed.__init__(
            self, "mismatch", f"register {key!r} holds another value (version {version})"
        )
        self.key = key
        self.current = current
        self.version = version


class ClusterMismatch(EnqueueFailed, RequestFailed):
    """The client's cluster file does not describe the cluster it reached: its routing
    metadata (topics and their queues, stores and their groups, consumer groups, the lock
    service: ``pxq.config.identity``) differs from the cluster's, so keys would be routed to
    other queues than other clients route them to. Definite: nothing was sent. Code
    ``cluster_mismatch``; ``differences`` lists what differs. Use the cluster's own file."""

    def __init__(self, message: str, differences: list[str]) -> None:
        PxqError.__init__(self, f"cluster_mismatch: {message}")
        self.code = "cluster_mismatch"
        self.message = message
        self.differences = differences


class ClientClosed(PxqError):
    """The client (or consumer) was closed; no new calls are accepted."""


class MachineFailed(PxqError):
    """The client's protocol machine detected a broken invariant (for example a store answer
    that contradicts the request) and stopped; the client must be closed and re-created."""


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Where an enqueued item is: durable on a majority of the store's replicas at ``offset``
    of ``queue`` of ``topic``. Items with the same key go to the same queue, and acknowledged
    items of one queue have increasing offsets in the order they were enqueued."""

    topic: str
    queue: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One item as a consumer handler receives it.

    ``topic`` is the topic it was read from: the base topic, or a retry level of the group
    (``"{topic}.retry.{group}.{n}"``) when ``attempt`` is ``n`` > 0. ``offset`` is its offset
    in that topic's queue; ``enqueued_ms`` the wall time (Unix ms) its store stamped;
    ``headers`` the producer's headers (read-only; empty if it gave none), kept through retry
    levels and dead letters."""

    topic: str
    queue: int
    offset: int
    key: bytes
    payload: bytes
    kind: str
    attempt: int
    enqueued_ms: int
    headers: Mapping[str, str] = NO_HEADERS


@dataclass(frozen=True, slots=True, kw_only=True)
class SeekResult:
    """What a ``seek`` did. ``positions``: queue -> the cursor it set, for every queue it set,
    moved or not (the group's consumer goes back to it either way; a queue that never held
    anything is not listed). ``forward``: queue -> the cursor before the seek, for every queue it moved
    *forward*: the group skips the items from there up to the new cursor (they will not be
    delivered to it). Only an absolute seek (``offset`` or ``time_ms``) moves a cursor forward;
    a ``back_ms`` rewind never does."""

    positions: dict[int, int]
    forward: dict[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterValue:
    """A register of the lock service as read: its ``value`` (None if never written) and
    ``version`` (how many writes it took: 0 if never written)."""

    value: bytes | None
    version: int


ConfigSource: TypeAlias = "ClusterConfig | str | Path | None"
"""A cluster configuration, a path to its TOML file, or None (see
``net.client.api.resolve_config``)."""
Key: TypeAlias = bytes | str | None
"""An item key: bytes, a str (UTF-8 encoded), or None for no key (stored empty; keyless items
are spread over the queues)."""
