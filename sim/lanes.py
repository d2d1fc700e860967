"""The node lanes of a simulated run (``pxq sim run --record``): each server node's state over
time, for the record's ``nodes.png`` (``net.jepsen.record``).

This module owns ``NodeLanes``, a trace listener. It reads the trace as the world records it
and the world's state right after the events that change it, and feeds nothing back: a run
with lanes has the same trace digest as one without. Server nodes are the world's hosts that
are not client machines (store, log or lock replicas; not producers, consumers, schedulers).

A span is ``(start_ms, end_ms, state)`` in simulated milliseconds. The states:

* ``up``, ``down`` (crashed), ``paused``: one at a time, covering the run from its start;
* ``cut``: the node is cut off: partitions or clogs leave it exchanging messages (both
  ways) with at most half of the server nodes, itself included;
* ``master:G``: the node holds the master lease of group ``G`` (from its ``master`` trace
  events: ``became`` until ``lapsed`` or ``lost``, or until it crashes). A paused master
  keeps the state until it steps again: it traces nothing while it is paused.

A state that lasted under 1 ms has no span. Also ``violations``: ``(time_ms, node, message)`` of each invariant a node broke.
"""

from __future__ import annotations

from typing import Final

from pxq.effects import NodeId
from sim.world import TraceRecord, World

NEMESIS_NODE: Final = "nemesis"
"""The trace's node name of the nemesis's own records (its actions)."""
CHANGES: Final = frozenset({"crash", "boot"})
"""Node events after which its state is sampled again (the nemesis's records too)."""

Span = tuple[int, int, str]


class NodeLanes:
    """Records every server node's states while attached to ``world`` (from construction,
    which must come before ``world.start()``, to ``close``)."""

    def __init__(self, world: World) -> None:
        self.world = world
        clients = world.network.stream_endpoints
        self.nodes: list[NodeId] = sorted(n for n in world.hosts if n not in clients)
        self.violations: list[tuple[int, str, str]] = []
        self._spans: dict[NodeId, list[Span]] = {n: [] for n in self.nodes}
        self._open: dict[NodeId, dict[str, int]] = {n: {} for n in self.nodes}
        self._masters: dict[NodeId, set[int]] = {n: set() for n in self.nodes}
        self._dirty_us: int | None = None
        self._closed = False
        self._sample(world.now_us)
        world.listeners.append(self._listen)

    def _listen(self, rec: TraceRecord) -> None:
        if self._dirty_us is not None and rec.time_us > self._dirty_us:
            # The actions at the dirty time are done (a nemesis records an action, then
            # applies it, in one callback): their effect counts from that time.
            self._sample(self._dirty_us)
        node = rec.node
        if node == NEMESIS_NODE:
            self._dirty_us = rec.time_us
            return
        masters = self._masters.get(node)
        if masters is None:
            return
        if rec.kind == "master":
            fields = dict(rec.fields)
            group, state = fields.get("group"), fields.get("state")
            if isinstance(group, int):
                if state == "became":
                    masters.add(group)
                elif state in ("lapsed", "lost"):
                    masters.discard(group)
                self._dirty_us = rec.time_us
        elif rec.kind in CHANGES:
            masters.clear()
            self._dirty_us = rec.time_us
        elif rec.kind == "violation":
            message = dict(rec.fields).get("message")
            self.violations.append((rec.time_us // 1000, node, str(message)))

    def _sample(self, time_us: int) -> None:
        self._dirty_us = None
        net = self.world.network
        broken = {*net.blocked, *net.clogged}
        nodes = self.nodes
        t_ms = time_us // 1000
        for node in nodes:
            host = self.world.hosts[node]
            states = {"down" if host.crashed else "paused" if host.paused else "up"}
            if broken and _cut_off(node, nodes, broken):
                states.add("cut")
            states.update(f"master:{g}" for g in self._masters[node])
            current = self._open[node]
            for state in sorted(set(current) - states):
                start = current.pop(state)
                if t_ms > start:  # a state that lasted under 1 ms is not drawn
                    self._spans[node].append((start, t_ms, state))
            for state in sorted(states - set(current)):
                current[state] = t_ms

    def close(self) -> dict[NodeId, list[Span]]:
        """Stop recording; every node's spans, in order of their start, open ones ended now."""
        if not self._closed:
            self._closed = True
            if self._listen in self.world.listeners:
                self.world.listeners.remove(self._listen)
            now_us = self.world.now_us
            self._sample(now_us if self._dirty_us is None else self._dirty_us)
            t_ms = now_us // 1000
            for node in self.nodes:
                for state, start in sorted(self._open[node].items()):
                    if t_ms > start:
                        self._spans[node].append((start, t_ms, state))
                self._open[node].clear()
        return {n: sorted(spans) for n, spans in self._spans.items()}


def _cut_off(node: NodeId, nodes: list[NodeId], broken: set[tuple[str, str]]) -> bool:
    """Whether ``node`` exchanges messages both ways with no more than half of the server
    nodes (itself included): it is on a minority side of the cuts."""
    reach = sum(1 for m in nodes if (node, m) not in broken and (m, node) not in broken)
    return 2 * reach <= len(nodes)
