"""Authorisation: which permission a client request needs, and whether a principal has it.

Pure (no I/O). The production driver (``net.node.runner``) asks ``AccessPolicy.refusal`` about
every client call before stepping the node, with the identity the connection's certificate
proved (``net.tls``): ``node:<name>`` for the cluster's own nodes, ``client:<name>`` for a
client principal. Without TLS there is no identity and everything is allowed.

Permissions (``required_permission``), named as the refusal names them:

* ``produce:TOPIC``: ``Enqueue`` to a base topic. An enqueue straight into a derived topic
  (a retry level or dead letters; consumers move items there with ``Retry``) needs ``admin``.
* ``consume:TOPIC/GROUP``: ``Get``, ``CommitCursor`` and ``Retry`` of the group on the topic or
  on one of the group's retry levels (named by the base topic).
* ``redrive:TOPIC/GROUP``: the same on the group's dead-letter topic (reading dead letters
  and moving past them is what a redrive does).
* ``seek:TOPIC/GROUP``: ``Seek`` (replay, skip) and ``SeekPreview`` (its dry run).
* ``locks``: the lock service (``Acquire``, ``Renew``, ``Release``, ``ReadLock``,
  ``ListLocks``, and its registers: ``ReadRegister``, ``WriteRegister``, ``CasRegister``);
  consumers take their queues through it.
* ``admin``: anything else (requests no node serves, for a start).

Open to every authenticated principal (no permission): the master probes of ``pxq cluster
status`` and ``wait_for_masters`` (``net.cluster.probe``): a zero-item ``Get`` (it reveals
cursors and offsets, not items) and a ``ReadLock`` of a key under ``LOCK_PROBE_PREFIX``.

A client authenticates with its certificate (``client:NAME``) or, when the cluster file gives
its principal ``token_sha256`` digests, with a token sent in a ``Login`` frame over TLS
(``principal_of_token``); the file holds only the tokens' SHA-256.

Principals (``[[principals]]``, ``pxq.config.PrincipalConfig``) grant patterns: ``topic`` for
``produce``, ``topic/group`` for the others, each segment a name or ``*`` (any). ``admin``
(the cluster administrator's client identity) and every node identity may do everything; a
principal that is not listed may only probe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pxq.config import ClusterConfig, PrincipalConfig
from pxq.config.model import TLS_IDENTITY_DEFAULT
from pxq.lock.messages import LockError, LockRequest, ReadLock
from pxq.store.messages import (
    CommitCursor,
    Enqueue,
    Get,
    Retry,
    Seek,
    SeekPreview,
    StoreError,
)
from pxq.topics import DLQ_MARK, base_topic, retry_level

NODE_PREFIX: Final = "node:"
CLIENT_PREFIX: Final = "client:"
LOCK_PROBE_PREFIX: Final = "pxq-probe-"
"""Lock probe keys start with this (``net.cluster.probe`` reads them, never acquires them)."""
PERMISSION_DENIED: Final = "permission_denied"
"""The definite error code of a refusal (``StoreError`` or ``LockError``)."""

ADMIN: Final = "admin"
LOCKS: Final = "locks"


def token_digest(token: str) -> str:
    """What the cluster file holds of a login token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def required_permission(request: object) -> str | None:
    """The permission ``request`` needs (see the module docstring); None for a probe."""
    match request:
        case Enqueue(topic=topic):
            return f"produce:{topic}" if base_topic(topic) == topic else ADMIN
        case Get(items_max=0):
            return None
        case Get(topic=topic, group=group) | CommitCursor(topic=topic, group=group):
            return read_permission(topic, group)
        case Retry(topic=topic, group=group):
            return read_permission(topic, group)
        case Seek(topic=topic, group=group) | SeekPreview(topic=topic, group=group):
            return f"seek:{base_topic(topic)}/{group}"
        case ReadLock(key=key) if key.startswith(LOCK_PROBE_PREFIX) and not request.through_log:
            return None
        case _ if isinstance(request, LockRequest):
            return LOCKS
        case _:
            return ADMIN


def read_permission(topic: str, group: str) -> str:
    """What reading and committing ``topic`` (base, retry level or dead letters) as ``group``
    needs: ``consume:BASE/GROUP``, or ``redrive:BASE/GROUP`` for its dead letters."""
    kind = "redrive" if DLQ_MARK in topic and retry_level(topic) < 0 else "consume"
    return f"{kind}:{base_topic(topic)}/{group}"


def _matches(pattern: str, name: str) -> bool:
    parts = pattern.split("/")
    names = name.split("/")
    return len(parts) == len(names) and all(
        p in ("*", n) for p, n in zip(parts, names, strict=True)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a request is refused: ``principal`` lacks ``permission``."""

    principal: str
    permission: str

    @property
    def message(self) -> str:
        return f"permission denied: {self.principal} lacks {self.permission}"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The permissions of the client principals of one cluster (see the module docstring),
    and the digests of their login tokens (``tokens``: SHA-256 hex -> principal name)."""

    principals: Mapping[str, PrincipalConfig]
    tokens: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_cluster(cls, config: ClusterConfig) -> AccessPolicy:
        return cls(
            {p.name: p for p in config.principals},
            {d: p.name for p in config.principals for d in p.token_sha256},
        )

    def principal_of_token(self, token: str) -> str | None:
        """The identity (``client:NAME``) a login token authenticates; None if unknown."""
        name = self.tokens.get(token_digest(token))
        return None if name is None else CLIENT_PREFIX + name

    def allows(self, identity: str, permission: str) -> bool:
        """Whether the certificate identity ``identity`` has ``permission``."""
        if identity.startswith(NODE_PREFIX) or identity == CLIENT_PREFIX + TLS_IDENTITY_DEFAULT:
            return True
        if not identity.startswith(CLIENT_PREFIX):
            return False
        principal = self.principals.get(identity[len(CLIENT_PREFIX) :])
        if principal is None:
            return False
        if principal.admin:
            return True
        if permission == LOCKS:
            return principal.locks
        kind, _, target = permission.partition(":")
        patterns: tuple[str, ...]
        match kind:
            case "produce":
                patterns = principal.produce
            case "consume":
                patterns = principal.consume
            case "seek":
                patterns = principal.seek
            case "redrive":
                patterns = principal.redrive
            case _:
                return False
        return any(_matches(p, target) for p in patterns)

    def refusal(self, identity: str | None, request: object) -> Refusal | None:
        """None if the connection authenticated as ``identity`` may send ``request``
        (``identity`` None: TLS is off, everything is allowed), else why not."""
        if identity is None:
            return None
        permission = required_permission(request)
        if permission is None or self.allows(identity, permission):
            return None
        return Refusal(principal=identity, permission=permission)


def refusal_response(request: object, refusal: Refusal) -> StoreError | LockError:
    """The answer to a refused ``request``: the definite error of its service (a lock
    request's ``LockError``, any other a ``StoreError``) with code ``permission_denied`` and a
    message naming the principal and the missing permission. The client machines treat it
    as any definite error; the client library raises ``PermissionDenied``."""
    if isinstance(request, LockRequest):
        return LockError(code=PERMISSION_DENIED, message=refusal.message, definite=True)
    return StoreError(code=PERMISSION_DENIED, message=refusal.message, definite=True)
