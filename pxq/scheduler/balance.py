"""The scheduler's balancing of a consumer group by measured load, as pure functions.

Without a scheduler, consumers spread a group's queues by weighted rendezvous hashing
(``pxq.rendezvous.hash_assign``). The scheduler moves them by load with **``rebalance``**, one
step of balancing with hysteresis, deterministic (no ``hash()``, no global randomness, no
clock). Notation: ``L_m`` is the sum of the loads (items per minute) of the queues member ``m`` owns,
``w_m`` its weight, ``n_m = L_m / w_m`` its normalised load, ``T`` and ``W`` the total load and
weight, ``mu = T / W`` the mean, ``M`` the number of members. With ``band_pct = b``, ``m`` is
*above the band* if ``n_m > mu * (100 + b) / 100`` and *below* it if ``n_m < mu * (100 - b)
/ 100`` (compared in integers: with ``T = 0`` nobody is outside). The step:

1. *Orphans.* Queues owned by no live member (unassigned, or owned by a name absent from
   ``members``) are placed, heaviest first (then by queue id), each on the member with the
   least ``(L_m + load) / w_m``, then the least ``(count_m + 1) / w_m``; a queue of load 0 is
   placed by count first (so idle queues spread evenly instead of piling onto the least loaded
   member), then by load. Remaining ties go to the member the rendezvous hash (with ``salt``)
   prefers, then to the smallest name.
2. *Balancing.* While some member is outside the band, at most ``moves_max`` times, one queue
   moves. A move of a queue of load ``l > 0`` from donor ``d`` to receiver ``r`` is allowed
   when ``d`` is above the band or ``r`` is below it, and it strictly lowers the spread
   ``Phi = sum_m L_m**2 / w_m`` (the weighted variance of the normalised loads, plus a
   constant), and it does not raise the maximum (``(L_r + l) / w_r < n_d``). The donor is the
   most loaded member (then smallest name) that has an allowed move; its move is the allowed
   one that lowers ``Phi`` the most, then gives the lower ``max(n_d', n_r')``, then goes to
   the smallest receiver name, then moves the lighter queue (among equal loads, the smallest
   queue id). Per receiver only two queues of the donor can be
   best (the loads nearest ``l* = (L_d w_r - L_r w_d) / (w_d + w_r)``, where ``Phi`` is
   lowest), found by bisection, so a move costs ``O(M**2 log Q)`` at worst.

Guarantees of ``rebalance`` (``tests/test_scheduler_balance.py`` checks each):

* *Coverage.* Every queue of ``keys(current) | keys(loads)`` is owned by exactly one member of
  ``members`` (empty ``members``: the result is empty).
* *Hysteresis.* Only orphans move when nobody is outside the band after the orphans are
  placed; with no orphans and everybody inside the band, the result equals ``current``.
  Queues of live members never move when ``moves_max = 0``.
* *Monotone, no oscillation.* Each move lowers ``Phi`` by at least ``1 / (w_d * w_r)`` (``Phi``
  times ``w_d * w_r`` changes by the integer ``l * (l * (w_d + w_r) - 2 * (L_d w_r - L_r
  w_d))``), and never raises the largest normalised load. Under fixed loads no assignment
  recurs, and a call that makes fewer than ``moves_max`` moves returns a fixed point (the
  next call, having nothing to place, stops at the same test).
* *Convergence.* ``Phi >= T**2 / W``, so under fixed loads the moves after the orphans are
  placed number at most ``B = w_max**2 * (Phi_1 - T**2 / W)``, where ``Phi_1`` is ``Phi`` once
  the orphans are placed; iterating from any ``current`` reaches a call whose result equals
  its input within ``floor(B / moves_max) + 2`` calls (2 with ``moves_max = 0``). ``B`` is a
  worst case; in practice a few calls suffice (the tests check the bound and show typical
  counts).
* *Quality at a fixed point* (a result ``rebalance`` returns unchanged). Unless everybody is
  inside the band, no allowed move is left (a local optimum). Either nobody is above the band,
  or the most loaded member ``h`` is, and then, with ``l_h`` the least positive load among its
  queues::

      n_h <= mu + (l_h / W) * (M - 1 + 1/2 * sum over r != h of max(0, w_r / w_h - 1))

  Proof: moving ``l_h`` from ``h`` to any ``r`` is not allowed, so ``(L_r + l_h) / w_r >= n_h``
  or ``Phi`` would not drop (``n_h <= n_r + l_h / (2 w_r) + l_h / (2 w_h)``); either way
  ``w_r * n_h <= L_r + l_h + l_h / 2 * max(0, w_r / w_h - 1)``; summing over ``r != h`` and
  adding ``w_h * n_h = L_h`` gives it. Every member's ``n_m`` is at most ``n_h``, so every
  ``n_m <= max(mu * (100 + b) / 100, mu + (M - 1) * q_max / W + q_max / (2 * w_min))``, with
  ``q_max`` the largest queue load. With equal weights ``w`` the sum vanishes: ``n_m <=
  max(mu * (100 + b) / 100, mu + (M - 1) * q_max / (M * w))``, below the band's top plus one
  queue. With unequal weights "the band's top plus ``q_max / w_m``" is *not* a bound: a member
  of weight 10 owning six queues of load 50 beside ten members of weight 1 with load 10 each
  has ``n = 30 > 24 + 5``, yet every move would leave some receiver at 60 (a test keeps this
  example).

Input checks raise ``ValueError`` naming the bad member, queue or argument; the named limits
below and in ``pxq.rendezvous`` bound every input.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from fractions import Fraction
from typing import Final

from pxq.rendezvous import (
    QUEUES_MAX,
    QueueId,
    check_load,
    check_members,
    check_name,
    check_queue_id,
    hash_assign,
)

BAND_PCT_MAX: Final = 1000
"""Widest hysteresis band, in percent of the mean."""
MOVES_MAX_LIMIT: Final = QUEUES_MAX
"""Largest ``moves_max``."""


def _check_count(what: str, value: object, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ValueError(f"{what}: must be an int in 0..{high}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Load balancing


def _frac_cmp(a_num: int, a_den: int, b_num: int, b_den: int) -> int:
    """Sign of ``a_num / a_den - b_num / b_den`` (denominators > 0)."""
    d = a_num * b_den - b_num * a_den
    return (d > 0) - (d < 0)


class _Balance:
    """The assignment being built: per member its load, queue count and the positive-load
    queues it owns as ``(load, topic, queue)`` sorted, with their loads in a parallel list."""

    __slots__ = ("count", "entries", "load", "loads", "names", "owner", "salt", "weight")

    def __init__(self, ranked: list[tuple[str, int]], salt: str) -> None:
        self.names = [name for name, _ in ranked]
        self.weight = dict(ranked)
        self.load = dict.fromkeys(self.names, 0)
        self.count = dict.fromkeys(self.names, 0)
        self.entries: dict[str, list[tuple[int, str, int]]] = {n: [] for n in self.names}
        self.loads: dict[str, list[int]] = {n: [] for n in self.names}
        self.owner: dict[QueueId, str] = {}
        self.salt = salt

    def add(self, member: str, queue: QueueId, load: int) -> None:
        self.owner[queue] = member
        self.load[member] += load
        self.count[member] += 1
        if load > 0:
            entry = (load, queue[0], queue[1])
            i = bisect.bisect_left(self.entries[member], entry)
            self.entries[member].insert(i, entry)
            self.loads[member].insert(i, load)

    def remove(self, member: str, index: int) -> QueueId:
        load, topic, number = self.entries[member].pop(index)
        self.loads[member].pop(index)
        self.load[member] -= load
        self.count[member] -= 1
        queue = (topic, number)
        del self.owner[queue]
        return queue

    # -- orphans ------------------------------------------------------------------------------

    def _place_key(self, member: str, load: int) -> tuple[int, int, int, int]:
        """Numerators of the two placement fractions (both over ``weight``)."""
        w = self.weight[member]
        by_load = self.load[member] + load
        by_count = self.count[member] + 1
        if load > 0:
            return by_load, w, by_count, w
        return by_count, w, self.load[member], w

    def place(self, queue: QueueId, load: int) -> str:
        """The member an orphan goes to (see step 1 of the module docstring)."""
        tied: list[str] = []
        best: tuple[int, int, int, int] | None = None
        for name in self.names:
            key = self._place_key(name, load)
            if best is None:
                best, tied = key, [name]
                continue
            c = _frac_cmp(key[0], key[1], best[0], best[1]) or _frac_cmp(
                key[2], key[3], best[2], best[3]
            )
            if c < 0:
                best, tied = key, [name]
            elif c == 0:
                tied.append(name)
        if len(tied) == 1:
            return tied[0]
        # The rendezvous hash among the tied (the smallest name wins an exact tie).
        return hash_assign([queue], {name: self.weight[name] for name in tied}, self.salt)[queue]

    # -- balancing ----------------------------------------------------------------------------

    def _side(self, member: str, total: int, weights: int, band_pct: int) -> int:
        """+1 above the band, -1 below it, 0 inside (``total`` and ``weights``: T and W)."""
        scaled = 100 * weights * self.load[member]
        w = self.weight[member]
        if scaled > (100 + band_pct) * total * w:
            return 1
        if scaled < (100 - band_pct) * total * w:
            return -1
        return 0

    def _best_move_from(
        self, donor: str, sides: Mapping[str, int]
    ) -> tuple[tuple[Fraction, Fraction, str, int], str, int] | None:
        """The best allowed move out of ``donor``: ``(key, receiver, entry index)``."""
        loads_d = self.loads[donor]
        if not loads_d:
            return None
        big_l_d = self.load[donor]
        w_d = self.weight[donor]
        best: tuple[tuple[Fraction, Fraction, str, int], str, int] | None = None
        for receiver in self.names:
            if receiver == donor or (sides[donor] <= 0 and sides[receiver] >= 0):
                continue
            big_l_r = self.load[receiver]
            w_r = self.weight[receiver]
            num = big_l_d * w_r - big_l_r * w_d  # l* = num / den
            if num <= 0:
                continue
            den = w_d + w_r
            above = bisect.bisect_right(loads_d, num // den)
            candidates = []
            if above > 0:  # the largest load <= l*, its first (smallest) queue id
                candidates.append(bisect.bisect_left(loads_d, loads_d[above - 1]))
            if above < len(loads_d):  # the smallest load > l*
                candidates.append(above)
            for index in candidates:
                load = loads_d[index]
                if load * den >= 2 * num:  # Phi would not drop
                    continue
                if (big_l_r + load) * w_d >= big_l_d * w_r:  # would raise the maximum
                    continue
                phi_change = Fraction(load * (load * den - 2 * num), w_d * w_r)
                peak = max(Fraction(big_l_d - load, w_d), Fraction(big_l_r + load, w_r))
                key = (phi_change, peak, receiver, index)
                if best is None or key < best[0]:
                    best = (key, receiver, index)
        return best

    def balance(self, band_pct: int, moves_max: int) -> int:
        """Step 2 of the module docstring; returns the number of moves made."""
        total = sum(self.load.values())
        weights = sum(self.weight.values())
        for moves in range(moves_max):
            sides = {n: self._side(n, total, weights, band_pct) for n in self.names}
            if not any(sides.values()):
                return moves
            donors = sorted(self.names, key=lambda n: (-Fraction(self.load[n], self.weight[n]), n))
            for donor in donors:
                move = self._best_move_from(donor, sides)
                if move is not None:
                    _, receiver, index = move
                    load = self.loads[donor][index]
                    self.add(receiver, self.remove(donor, index), load)
                    break
            else:
                return moves
        return moves_max


def _universe(
    current: Mapping[QueueId, str], loads: Mapping[QueueId, int]
) -> tuple[list[QueueId], dict[QueueId, int]]:
    checked: dict[QueueId, int] = {}
    for queue, load in loads.items():
        checked[check_queue_id(queue)] = check_load(queue, load)
    for queue, owner in current.items():
        check_queue_id(queue)
        check_name(f"owner of {queue!r}", owner)
    if len(checked) > QUEUES_MAX or len(current) > QUEUES_MAX:
        raise ValueError(f"more than QUEUES_MAX = {QUEUES_MAX} queues")
    universe = sorted(checked.keys() | current.keys())
    if len(universe) > QUEUES_MAX:
        raise ValueError(f"more than QUEUES_MAX = {QUEUES_MAX} queues")
    return universe, checked


def rebalance(
    current: Mapping[QueueId, str],
    loads: Mapping[QueueId, int],
    members: Mapping[str, int],
    *,
    band_pct: int = 20,
    moves_max: int = 64,
    salt: str = "",
) -> dict[QueueId, str]:
    """The scheduler's step (see the module docstring for the algorithm and its guarantees).

    ``current`` is the assignment in force (possibly partial, possibly naming dead members),
    ``loads`` each queue's load in items per minute (missing: 0), ``members`` the live
    consumers with their weights. Returns a complete assignment of ``keys(current) |
    keys(loads)`` to members, in queue order: orphans placed, then at most ``moves_max``
    moves while some member is outside the band of ``band_pct`` percent around the mean.
    Equal to ``current`` when there is nothing to place and nobody is outside the band.
    Empty ``members`` -> ``{}``."""
    ranked = check_members(members)
    _check_count("band_pct", band_pct, BAND_PCT_MAX)
    _check_count("moves_max", moves_max, MOVES_MAX_LIMIT)
    check_name("salt", salt, empty_ok=True)
    universe, load_of = _universe(current, loads)
    if not ranked:
        return {}
    state = _Balance(ranked, salt)
    orphans: list[QueueId] = []
    for queue in universe:
        owner = current.get(queue)
        if owner is not None and owner in state.weight:
            state.add(owner, queue, load_of.get(queue, 0))
        else:
            orphans.append(queue)
    orphans.sort(key=lambda q: (-load_of.get(q, 0), q))
    for queue in orphans:
        load = load_of.get(queue, 0)
        state.add(state.place(queue, load), queue, load)
    state.balance(band_pct, moves_max)
    return {queue: state.owner[queue] for queue in universe}


def member_loads(
    assignment: Mapping[QueueId, str], loads: Mapping[QueueId, int], members: Mapping[str, int]
) -> dict[str, int]:
    """Each member's load (sum of its queues' loads) under ``assignment``, in name order;
    queues owned by non-members are not counted."""
    ranked = check_members(members)
    _, load_of = _universe(assignment, loads)
    out = dict.fromkeys((name for name, _ in ranked), 0)
    for queue, owner in assignment.items():
        if owner in out:
            out[owner] += load_of.get(queue, 0)
    return out


def spread_ok(
    assignment: Mapping[QueueId, str],
    loads: Mapping[QueueId, int],
    members: Mapping[str, int],
    band_pct: int,
) -> bool:
    """Whether ``rebalance`` would leave ``assignment`` as it is because of the hysteresis:
    every queue of ``keys(assignment) | keys(loads)`` is owned by a member, and every
    member's normalised load is inside the band of ``band_pct`` percent around the mean (with
    zero total load everybody is inside). Empty ``members``: True only without queues."""
    ranked = check_members(members)
    _check_count("band_pct", band_pct, BAND_PCT_MAX)
    universe, load_of = _universe(assignment, loads)
    weight = dict(ranked)
    if any(assignment.get(queue) not in weight for queue in universe):
        return False
    per_member = member_loads(assignment, load_of, members)
    total = sum(per_member.values())
    weights = sum(weight.values())
    for name, load in per_member.items():
        scaled = 100 * weights * load
        w = weight[name]
        if not (100 - band_pct) * total * w <= scaled <= (100 + band_pct) * total * w:
            return False
    return True
