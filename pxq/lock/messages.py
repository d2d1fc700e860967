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
``expiry_ms=0``, ``value=b""`` with the key's last version (0 for a key never granted).

Values: every entry carries a ``value`` of at most ``VALUE_BYTES_MAX`` bytes (a lock/KV
service: a holder publishes what it owns, an elected scheduler its assignment). A grant sets
it, a renewal may replace it, a release or an expiry clears it.

Registers: beside the locks, every group holds compare-and-set registers (``ReadRegister``,
``WriteRegister``, ``CasRegister``): a key maps to a value (at most ``VALUE_BYTES_MAX`` bytes)
and a version that grows by one at every write (1 at the first; a register never written
reads as value None, version 0). Registers are not leased: a value stays until overwritten.
They live apart from the lock entries (a key may name a lock and a register at once, and
neither touches the other), in the same groups under the same routing (``group_of_key``),
and count against the same ``keys_max`` and ``values_bytes_max``. A write or cas may carry a
``fence`` ``(lock key, version)``: it is applied only if that lock is held with that version
at the command's time (the lock must live in the register's group: the same directory is
the way to be sure), else refused ``LockError("fenced")``: a lock holder guards its writes
with its token.

Directories: a key's *directory* is everything up to and including its last ``"/"``
(``directory_of``); a key without ``"/"`` is its own directory. A key's Paxos group is a
stable hash of its directory (``group_of_key``), so all keys of one directory live in one
group and ``ListLocks`` of a directory is answered by that group's master alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from pxq.codec import message

KEY_BYTES_MAX: Final = 255
"""Longest lock key, in UTF-8 bytes."""
HOLDER_BYTES_MAX: Final = 255
"""Longest holder name, in UTF-8 bytes (a holder is never the empty string)."""
LEASE_MS_MAX: Final = 24 * 60 * 60 * 1000
"""Longest lease one grant or renewal may ask for (one day)."""
VALUE_BYTES_MAX: Final = 65536
"""Largest value of one entry, in bytes."""
LIST_ENTRIES_MAX: Final = 4096
"""Most entries one ``ListLocks`` may ask for (``entries_max``)."""
LIST_BYTES_MAX: Final = 4 * 1024 * 1024
"""Most bytes of keys, holders and values one ``LockList`` carries; a listing that would
exceed it stops early with ``more=True`` (it always carries at least one entry)."""


def directory_of(key: str) -> str:
    """``key``'s directory: everything up to and including its last ``"/"``, or the key itself
    if it has none (``"a/b/c"`` -> ``"a/b/"``, ``"a/"`` -> ``"a/"``, ``"abc"`` -> ``"abc"``)."""
    cut = key.rfind("/")
    return key if cut < 0 else key[: cut + 1]


def group_of_key(key: str, groups: int) -> int:
    """The Paxos group that holds lock ``key``: a stable hash (CRC-32 of the UTF-8 bytes) of
    its directory (``directory_of``), the same in every process and release (never
    ``hash()``). For a ``ListLocks`` prefix (which ends with ``"/"``) it is the group of the
    directory's keys. Clients route with it too."""
    if groups < 1:
        raise ValueError("groups must be >= 1")
    return zlib.crc32(directory_of(key).encode("utf-8", "surrogatepass")) % groups


@message(128)
@dataclass(frozen=True, slots=True, kw_only=True)
class Acquire:
    """Take ``key`` for ``holder`` for ``lease_ms``.

    Granted (``LockOk``) if the key is free or its lease expired (a new version), if ``holder``
    already holds it (a renewal: same version, new expiry), or if ``expected_version`` equals
    the key's current version (a deliberate takeover from a holder known to be gone: a new
    version). Otherwise ``LockDenied`` with the current entry. On a grant (a new version or
    a renewal) the entry's value becomes ``value``.

    Safe to re-send (a client retries after a timeout): a re-acquire by the holder is a
    renewal, so a duplicate keeps the token it was granted.
    """

    key: str
    holder: str
    lease_ms: int
    expected_version: int | None = None
    value: bytes = b""


@message(129)
@dataclass(frozen=True, slots=True, kw_only=True)
class Renew:
    """Extend the lease of ``holder`` on ``key`` to ``lease_ms`` from now. ``LockOk`` only if
    ``holder`` holds the key with ``version`` and the lease has not expired; else
    ``LockDenied`` (the lock was lost: stop using the token). ``value`` None keeps the entry's
    value, bytes replace it. Safe to re-send."""

    key: str
    holder: str
    version: int
    lease_ms: int
    value: bytes | None = None


@message(130)
@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """Free ``key`` at once (the next owner need not wait for the lease). ``LockOk`` if the key
    has ``version`` and is held by ``holder`` or already free (a retried release is answered
    ``LockOk`` again); ``LockDenied`` if another grant happened since. Clears the value.
    Idempotent, so safe to re-send."""

    key: str
    holder: str
    version: int


@message(131)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLock:
    """Read ``key``'s entry (``LockOk``). ``through_log=True`` orders the read through the Paxos
    log (linearizable, one round trip to a majority); otherwise the master answers from its
    applied state under its lease (as of the group's time: the time of the last command it
    applied). Safe to re-send."""

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
    value: bytes = b""


@message(133)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockDenied:
    """The command was applied and refused: nothing changed. The entry that caused it."""

    key: str
    holder: str
    version: int
    expiry_ms: int
    at_ms: int
    value: bytes = b""


@message(134)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockError:
    """A request failed. ``definite``: it certainly took no effect. Definite codes:
        ``bad_request`` (malformed: empty or too long key or holder, a register fence whose lock
    lives in another group, a lease outside
        1..``LEASE_MS_MAX``, a value over ``VALUE_BYTES_MAX``, a bad ``ListLocks`` prefix or
        ``entries_max``), ``too_many_keys`` (the group holds ``keys_max`` keys and this one is
        new), ``too_many_bytes`` (the group's values would exceed its ``values_bytes_max``),
        ``too_large``, ``overloaded``, ``fenced`` (a register write's fence lock is not held with
    its version). Indefinite: ``unknown`` (mastership lost while the request
        was in flight: it may still be applied). ``pxq.lock.client`` adds the indefinite
        ``timeout`` (no final answer within the call's deadline)."""

    code: str
    message: str
    definite: bool = True


@message(135)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockRedirect:
    """This node is not the master of the key's Paxos group: nothing happened. ``master`` is
    the node believed to be master, if any."""

    master: str | None


@message(136)
@dataclass(frozen=True, slots=True, kw_only=True)
class ListLocks:
    """List the live entries of a directory: keys ``prefix + name`` where ``name`` holds no
    ``"/"`` (it may be empty: the key ``prefix`` itself), held and unexpired as of the group's
    time, in key order, at most ``entries_max`` (1..``LIST_ENTRIES_MAX``) of them and only keys
    after ``start_after`` (a key of the previous page; ``""``: from the start). ``prefix`` must
    be non-empty and end with ``"/"``. Answered ``LockList`` by the master of the directory's
    group; ``through_log`` as for ``ReadLock``. Safe to re-send."""

    prefix: str
    entries_max: int = 1024
    through_log: bool = False
    start_after: str = ""


@message(137)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockEntry:
    """One live entry of a ``LockList``."""

    key: str
    holder: str
    version: int
    expiry_ms: int
    value: bytes


@message(138)
@dataclass(frozen=True, slots=True, kw_only=True)
class LockList:
    """The answer to ``ListLocks``: the live entries in key order, the time they were read at
    (the group's time, or the apply time of a listing through the log), and ``more=True`` if
    live entries were left out (over ``entries_max`` or ``LIST_BYTES_MAX``): list again with
    ``start_after`` set to the last key."""

    prefix: str
    entries: tuple[LockEntry, ...]
    at_ms: int
    more: bool


@message(139)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRegister:
    """Read register ``key``: ``RegisterOk`` with its value (None if never written) and
    version (0 then). ``through_log`` as for ``ReadLock`` (both are linearizable: a local read
    is served by the group's lease holder from its applied state). Safe to re-send."""

    key: str
    through_log: bool = False


@message(140)
@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRegister:
    """Set register ``key`` to ``value``: ``RegisterOk`` with the new version. With ``fence``
    ``(lock key, version)``: only while that lock is held with that version, else the
    definite ``LockError("fenced")``. Not idempotent: a re-send after an unknown outcome may
    write twice (a second version)."""

    key: str
    value: bytes
    fence: tuple[str, int] | None = None


@message(141)
@dataclass(frozen=True, slots=True, kw_only=True)
class CasRegister:
    """Set register ``key`` to ``value`` if its value is ``expected`` (None: never written):
    ``RegisterOk`` with the new version, else ``RegisterMismatch`` with the current value and
    version (applied and refused: nothing changed). ``fence`` as for ``WriteRegister``."""

    key: str
    expected: bytes | None
    value: bytes
    fence: tuple[str, int] | None = None


@message(142)
@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterOk:
    """The register's value and version as the read saw them, or as the write or cas left
    them; ``at_ms`` the group's time it was read or applied at."""

    key: str
    value: bytes | None
    version: int
    at_ms: int


@message(143)
@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterMismatch:
    """A cas found another value: nothing changed. The register's current value (None:
    never written) and version."""

    key: str
    value: bytes | None
    version: int
    at_ms: int


FENCED: Final = "fenced"
"""The ``LockError`` code of a register write or cas whose fence lock is not held with the
fence's version at the command's time (definite: nothing changed)."""

LockRequest = (
    Acquire | Renew | Release | ReadLock | ListLocks | ReadRegister | WriteRegister | CasRegister
)
LockResponse = (
    LockOk | LockDenied | LockList | LockError | LockRedirect | RegisterOk | RegisterMismatch
)
