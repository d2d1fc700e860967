"""Queue ids, the limits on the names, weights and loads of consumer balancing, and weighted
rendezvous hashing: the part of balancing that consumers and the scheduler share.

A consumer group's queues are spread over its live members without a scheduler by
``hash_assign``; the scheduler (``pxq.scheduler.balance.rebalance``) starts from the same
answer and breaks its ties the same way, and the lock-service values both sides exchange
(``pxq.lockkeys``) are checked against the same limits. Deterministic: no ``hash()``, no
global randomness, no clock.

**``hash_assign``** is weighted rendezvous (highest-random-weight) hashing.
For queue ``q`` and member ``m`` of weight ``w``, ``u = (2k + 1) / 2**53`` where ``k`` is the
top 52 bits of ``blake2b(person="pxq.hrw.v1", digest 8 bytes)`` over the length-prefixed
UTF-8 of the salt, the member, the topic and the 8-byte big-endian queue number, so
``0 < u < 1`` exactly; the score is ``-w / ln(u)`` and ``q`` goes to the highest score (the
smallest name on an exact tie). ``-ln(u) / w`` is exponential with rate ``w``, so ``m`` wins
with probability ``w / sum(weights)``; adding or removing a member moves exactly the queues
it gains or loses, nothing else. Every process computes the same answer: blake2b and IEEE
doubles are the same everywhere; ``math.log`` comes from the platform's libm, whose results
may differ in the last bit between libm implementations, which can only swap two members
whose scores are within an ulp (about 2**-50 per comparison).

Input checks raise ``ValueError`` naming the bad member, queue or argument; the named limits
below bound every input.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

QueueId: TypeAlias = tuple[str, int]
"""(topic, queue number)."""

WEIGHT_MAX: Final = 1_000_000
"""Largest member weight (the configuration allows less: ``OWNERSHIP_WEIGHT_MAX``)."""
MEMBERS_MAX: Final = 1024
"""Most members one call accepts."""
QUEUES_MAX: Final = 1 << 20
"""Most queues one call accepts (the work is O(queues x members))."""
QUEUE_NUMBER_MAX: Final = (1 << 32) - 1
"""Largest queue number."""
NAME_CHARS_MAX: Final = 256
"""Longest topic, member name or salt, in characters."""
LOAD_MAX: Final = (1 << 48) - 1
"""Largest load of one queue, in items per minute."""
_PERSON: Final = b"pxq.hrw.v1"


# --------------------------------------------------------------------------------------------
# Input checks


def check_name(what: str, name: object, *, empty_ok: bool = False) -> str:
    """``name`` if it is a str of 1..``NAME_CHARS_MAX`` characters (0 allowed with ``empty_ok``)
    encodable as UTF-8; else ``ValueError`` starting with ``what``."""
    if not isinstance(name, str):
        raise ValueError(f"{what} {name!r}: expected a str")
    if (not name and not empty_ok) or len(name) > NAME_CHARS_MAX:
        raise ValueError(f"{what} {name!r}: length must be 1..{NAME_CHARS_MAX}")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} {name!r}: not encodable as UTF-8") from None
    return name


def check_queue_id(queue: object) -> QueueId:
    """``queue`` itself if it is a valid ``(topic, queue number)``; else ``ValueError``."""
    if (
        not isinstance(queue, tuple)
        or len(queue) != 2
        or not isinstance(queue[1], int)
        or isinstance(queue[1], bool)
    ):
        raise ValueError(f"queue id {queue!r}: expected a tuple (topic: str, queue: int)")
    topic, number = queue
    check_name("queue id topic", topic)
    if not 0 <= number <= QUEUE_NUMBER_MAX:
        raise ValueError(f"queue id {queue!r}: queue number must be 0..{QUEUE_NUMBER_MAX}")
    return (topic, number)


def check_members(members: Mapping[str, int]) -> list[tuple[str, int]]:
    """``members`` as ``(name, weight)`` sorted by name; ``ValueError`` naming a bad member."""
    if len(members) > MEMBERS_MAX:
        raise ValueError(f"{len(members)} members: at most MEMBERS_MAX = {MEMBERS_MAX}")
    out: list[tuple[str, int]] = []
    for name, weight in members.items():
        check_name("member", name)
        if not isinstance(weight, int) or isinstance(weight, bool):
            raise ValueError(f"member {name!r}: weight must be an int, got {weight!r}")
        if not 1 <= weight <= WEIGHT_MAX:
            raise ValueError(f"member {name!r}: weight must be 1..{WEIGHT_MAX}, got {weight}")
        out.append((name, weight))
    out.sort()
    return out


def check_load(queue: QueueId, load: object) -> int:
    """``load`` if it is an int in 0..``LOAD_MAX``; else ``ValueError`` naming ``queue``."""
    if not isinstance(load, int) or isinstance(load, bool):
        raise ValueError(f"load of {queue!r}: expected an int, got {load!r}")
    if not 0 <= load <= LOAD_MAX:
        raise ValueError(f"load of {queue!r}: must be 0..{LOAD_MAX}, got {load}")
    return load


# --------------------------------------------------------------------------------------------
# Rendezvous hashing


def _field(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _member_hasher(salt: str, member: str) -> hashlib.blake2b:
    h = hashlib.blake2b(digest_size=8, person=_PERSON)
    h.update(_field(salt) + _field(member))
    return h


def _queue_suffix(queue: QueueId) -> bytes:
    return _field(queue[0]) + queue[1].to_bytes(8, "big")


def _score(member_hasher: hashlib.blake2b, queue_suffix: bytes, weight: int) -> float:
    h = member_hasher.copy()
    h.update(queue_suffix)
    k = int.from_bytes(h.digest(), "big") >> 12  # 52 bits: 2k + 1 < 2**53 is exact
    u = math.ldexp(float(2 * k + 1), -53)  # in (0, 1)
    return -weight / math.log(u)


def hrw_score(queue: QueueId, member: str, weight: int, salt: str = "") -> float:
    """The rendezvous score of ``member`` (of ``weight``) for ``queue``: ``hash_assign`` gives
    each queue to the member with the highest score."""
    check_queue_id(queue)
    check_members({member: weight})
    check_name("salt", salt, empty_ok=True)
    return _score(_member_hasher(salt, member), _queue_suffix(queue), weight)


def hash_assign(
    queues: Iterable[QueueId], members: Mapping[str, int], salt: str = ""
) -> dict[QueueId, str]:
    """Weighted rendezvous hashing: each queue to the member with the highest score
    ``-weight / ln(u)`` (see the module docstring). ``members`` maps consumer name -> weight
    (int in 1..``WEIGHT_MAX``); empty ``members`` -> ``{}``. Duplicate queues are assigned
    once. Adding or removing one member moves only the queues that member gains or loses."""
    ranked = check_members(members)
    check_name("salt", salt, empty_ok=True)
    hashers = [(name, weight, _member_hasher(salt, name)) for name, weight in ranked]
    out: dict[QueueId, str] = {}
    for queue in queues:
        check_queue_id(queue)
        if queue in out:
            continue
        if len(out) >= QUEUES_MAX:
            raise ValueError(f"more than QUEUES_MAX = {QUEUES_MAX} queues")
        if not hashers:
            continue
        suffix = _queue_suffix(queue)
        best_name = hashers[0][0]
        best_score = -1.0
        for name, weight, hasher in hashers:
            score = _score(hasher, suffix, weight)
            if score > best_score:  # strictly: the smallest name wins an exact tie
                best_name, best_score = name, score
        out[queue] = best_name
    return out
