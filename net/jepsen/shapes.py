"""The partition shapes a network nemesis draws: pure functions from nodes (and a
``random.Random``) to the one-way links to cut.

Every shape returns ``Link``s ``(source, destination)``, sorted, without duplicates, and cuts
nothing between a node and itself. Nodes are taken in sorted order before any draw, so the
same nodes and the same seed give the same cut whatever order the caller lists them in.

* ``isolate(node, nodes)``: ``node`` cut off from every other node, both ways (the master
  isolated, when ``node`` is a master);
* ``halves(nodes, rng)``: a random split into two halves (sizes n//2 and n - n//2), every link
  between them cut both ways;
* ``bridge(nodes, rng)``: two halves that both keep talking to one random "bridge" node, every
  link between the halves cut both ways (Jepsen's bridge: two majorities that overlap in one
  node);
* ``one_way(nodes, rng)``: a random split into two non-empty sides; every link from the first
  side to the second is cut, the other direction keeps working.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable

from net.errors import NetError
from net.jepsen.target import Link


class ShapeError(NetError):
    """A shape was asked of too few nodes (or of a node that is not among them)."""


def _sorted_nodes(nodes: Collection[str], at_least: int, shape: str) -> list[str]:
    ordered = sorted(set(nodes))
    if len(ordered) < at_least:
        raise ShapeError(f"a {shape} partition needs at least {at_least} nodes, got {ordered}")
    return ordered


def cut_between(side_a: Iterable[str], side_b: Iterable[str]) -> list[Link]:
    """Every link between the two sides, both ways, sorted."""
    a, b = sorted(set(side_a)), sorted(set(side_b))
    links = {(x, y) for x in a for y in b if x != y} | {(y, x) for x in a for y in b if x != y}
    return sorted(links)


def isolate(node: str, nodes: Collection[str]) -> list[Link]:
    """``node`` cut off from every other of ``nodes``, both ways."""
    ordered = _sorted_nodes(nodes, 2, "isolating")
    if node not in ordered:
        raise ShapeError(f"cannot isolate {node!r}: it is not one of {ordered}")
    return cut_between([node], [n for n in ordered if n != node])


def halves(nodes: Collection[str], rng: random.Random) -> list[Link]:
    """A random split into halves of n//2 and n - n//2 nodes, cut both ways."""
    ordered = _sorted_nodes(nodes, 2, "halves")
    rng.shuffle(ordered)
    half = len(ordered) // 2
    return cut_between(ordered[:half], ordered[half:])


def bridge(nodes: Collection[str], rng: random.Random) -> list[Link]:
    """Two halves cut from each other both ways; one node (the bridge) reaches both."""
    ordered = _sorted_nodes(nodes, 3, "bridge")
    rng.shuffle(ordered)
    rest = ordered[1:]  # ordered[0] is the bridge: no link of it is cut
    half = len(rest) // 2
    return cut_between(rest[:half], rest[half:])


def one_way(nodes: Collection[str], rng: random.Random) -> list[Link]:
    """A random split into two non-empty sides; only the links from the first side to the
    second are cut (the first side's messages are lost, the second side's arrive)."""
    ordered = _sorted_nodes(nodes, 2, "one-way")
    rng.shuffle(ordered)
    size = rng.randint(1, len(ordered) - 1)
    senders, receivers = ordered[:size], ordered[size:]
    return sorted((s, r) for s in senders for r in receivers)
