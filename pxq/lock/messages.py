"""The lock service's client API: what consumers, the scheduler and operators send to a lock
node, and what it answers (codec tags 128-191).

A lock is a key (a name of at most ``KEY_BYTES_MAX`` UTF-8 bytes) mapped to ``(holder,
version, expiry_ms)``. The version is the **fencing token**: per key it starts at 1 and grows
by one at every grant to a new owner, and is never reused, also after the lease expired, the
lock was released or the entry was cleaned up. A holder passes it to the store with every
cursor commit; the store refuses a token below the highest it has seen.

Time: every command is stamped by the proposing master's wall clock and applied at
``at_ms`` = that stamp raised to the latest time the key's Paxos group has applied (time never
goes back in the log). A lease granted at ``at_ms`` is valid while the log's time is below
``expiry_ms = at_ms + lease_ms``. Clients do not compare clocks with the service: a holder
should consider its lease lost ``lease_ms`` minus a drift margin after it *sent* the request,
measured on its own monotonic clock.

Answers are precise about outcomes: ``LockRedirect`` and ``LockError(definite=True)`` mean the
request did not take effect; ``LockError(definite=False)`` means it may have (treat it like a
timeout). ``LockOk`` and ``LockDenied`` carry the key's entry as the command left it (for a
denial: the entry that caused it). A free or expired entry reads as ``holder=""``,
``expiry_ms=0`` with the key's last version (0 for a key never granted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pxq.codec import message

KEY_BYTES_MAX: Final = 255
"""Longest lock key, in UTF-8 bytes."""
HOLDER_BYTES_MAX: Final = 255
"""Longest holder name, in UTF-8 bytes (a holder is never the empty string)."""
LEASE_MS_MAX: Final = 24 * 60 * 60 * 1000
"""Longest lease one grant or renewal may ask for (one day)."""


@message(128)
@dataclass(frozen=True, slots=True, kw_only=True)
class Acquire:
    """Take ``key`` for ``holder`` for ``lease_ms``.

    Granted (``LockOk``) if the key is free or its lease expired (a new version), if ``holder``
    already holds it (a renewal: same version, new expiry), or if ``expected_version`` equals
    the key's current version (a deliberate takeover from a holder known to be gone: a new
    version). Otherwise ``LockDenied`` with the current entry.
    """

    key: str
    holder: str
    lease_ms: int
    expected_version: int | None = None


@message(129)
@dataclass(frozen=True, slots=True, kw_only=True)
class Renew:
    """Extend the lease of ``holder`` on ``key`` to ``lease_ms`` from now. ``LockOk`` only if
    ``holder`` holds the key with ``version`` and the lease has not expired; else
    ``LockDenied`` (the lock was lost: stop using the token)."""

    key: str
    holder: str
    version: int
    lease_ms: int


@message(130)
@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Free ``key`` at once (the next owner need not wait for the lease). ``LockOk`` if the key
    has ``version`` and is held by ``holder`` or already free (a retried release is answered
    ``LockOk`` again); ``LockDenied`` if another grant happened since."""

    key: str
    holder: str
    version: int


@message(131)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLock:
    """Read ``key``'s entry (``LockOk``). ``through_log=True`` orders the read through the Paxos
    log (linearizable, one round trip to a majority); otherwise the master answers from its
    applied state under its lease."""

    key: str
    through_log: bool = False


@message(132)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockOk:
    """The command took effect (or the read saw this): the key's entry and the apply time."""

    key: str
    holder: str
    version: int
    expiry_ms: int
    at_ms: int


@message(133)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockDenied:
    """The command was applied and refused: nothing changed. The entry that caused it."""

    key: str
    holder: str
    version: int
    expiry_ms: int
    at_ms: int


@message(134)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockError:
    """A request failed. ``definite``: it certainly took no effect. Definite codes:
    ``bad_request`` (malformed: empty or too long key or holder, a lease outside
    1..``LEASE_MS_MAX``), ``too_many_keys`` (the group holds ``keys_max`` keys and this one is
    new), ``too_large``, ``overloaded``. Indefinite: ``unknown`` (mastership lost while the
    request was in flight: it may still be applied)."""

    code: str
    message: str
    definite: bool = True


@message(135)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockRedirect:
    """This node is not the master of the key's Paxos group: nothing happened. ``master`` is
    the node believed to be master, if any."""

    master: str | None


LockRequest = Acquire | Renew | Release | ReadLock
LockResponse = LockOk | LockDenied | LockError | LockRedirect
