"""When each Paxos group of a run had a healthy master: the windows the availability check
(``pxq/check/availability.py``) measures acknowledgement gaps in.

``HealthMonitor`` follows the trace: the group's master is the replica that last reported
``master became`` for it (it stays "the master" after stepping down, until another replica
becomes master, so a master deposed by a rejoining replica is still the healthy master whose
group stalls). The master is *healthy* while its host is up and not paused and it reaches a
majority of the replicas (itself included) both ways: each such peer up, not paused, and
neither direction between them partitioned or clogged. A window opens ``SETTLE_MS`` after the
master became healthy (the first master of a run, or a master after one that was down or cut
off): clients learn the new master and leave their backoffs then, which the failover and
liveness checks bound; a window stays open across a change of master among healthy replicas
(a handover, or a master deposed by a rejoining replica). Health is re-evaluated after every
fault the nemesis applies or undoes, every crash and boot, and every change of master; the
evaluation runs in a zero-delay event after the record (the nemesis records a fault before
applying it) and only reads state, so the run's trace is the same with or without it.

It also keeps, per group, the *leaderless* windows the election check
(``pxq.check.availability.check_election``) bounds: no healthy master (none yet, or its host
down or cut off from a majority), while a majority of the replicas is up, not paused and
connected both ways pair by pair, so that it could elect one.
"""

from __future__ import annotations

from itertools import combinations

from pxq.effects import NodeId
from sim.world import TraceRecord, World

_RECHECK_KINDS = frozenset({"master", "crash", "boot"})
SETTLE_MS = 1000
"""How long after its master became healthy a group's window opens."""


class HealthMonitor:
    """Per group, the closed windows of simulated ms during which its master was healthy."""

    def __init__(self, world: World, replicas: list[NodeId], groups: int) -> None:
        self.world = world
        self.replicas = replicas
        self.master: dict[int, NodeId] = {}
        self.since: dict[int, int | None] = dict.fromkeys(range(groups))
        """Per group: when the current healthy window started (None: not healthy now)."""
        self.windows: dict[int, list[tuple[int, int]]] = {g: [] for g in range(groups)}
        self.leaderless_since: dict[int, int | None] = dict.fromkeys(range(groups))
        """Per group: when the current leaderless window started (None: not leaderless)."""
        self.leaderless: dict[int, list[tuple[int, int]]] = {g: [] for g in range(groups)}
        self._pending = False
        world.listeners.append(self._listen)

    def _listen(self, rec: TraceRecord) -> None:
        if rec.node == "nemesis" or rec.kind in _RECHECK_KINDS:
            if rec.kind == "master" and rec.node in self.replicas:
                f = dict(rec.fields)
                group = f.get("group")
                if f.get("state") == "became" and isinstance(group, int) and group in self.since:
                    self.master[group] = rec.node
            if not self._pending:
                self._pending = True
                self.world.call_later(0, self._evaluate)

    def _up(self, n: NodeId) -> bool:
        host = self.world.hosts[n]
        return not host.crashed and not host.paused

    def _linked(self, a: NodeId, b: NodeId) -> bool:
        """Both directions between ``a`` and ``b`` open (neither partitioned nor clogged)."""
        net = self.world.network
        return all(
            (x, y) not in net.blocked and (x, y) not in net.clogged for x, y in ((a, b), (b, a))
        )

    def _healthy(self, node: NodeId) -> bool:
        if not self._up(node):
            return False
        reach = sum(
            1 for n in self.replicas if n == node or (self._up(n) and self._linked(node, n))
        )
        return 2 * reach > len(self.replicas)

    def _electable(self) -> bool:
        """A majority of the replicas is up and connected pair by pair."""
        up = [n for n in self.replicas if self._up(n)]
        size = len(self.replicas) // 2 + 1
        return any(
            all(self._linked(a, b) for a, b in combinations(members, 2))
            for members in combinations(up, size)
        )

    def _evaluate(self) -> None:
        self._pending = False
        now = self.world.now_us // 1000
        electable: bool | None = None
        for group, since in self.since.items():
            master = self.master.get(group)
            healthy = master is not None and self._healthy(master)
            if healthy and since is None:
                self.since[group] = now + SETTLE_MS
            elif not healthy and since is not None:
                self._end(group, since, now)
            if not healthy and electable is None:
                electable = self._electable()
            leaderless = not healthy and bool(electable)
            started = self.leaderless_since[group]
            if leaderless and started is None:
                self.leaderless_since[group] = now
            elif not leaderless and started is not None:
                self._end_leaderless(group, started, now)

    def close(self) -> dict[int, list[tuple[int, int]]]:
        """End the open windows now; the healthy windows per group (the leaderless ones are
        in ``leaderless``)."""
        self._evaluate()
        now = self.world.now_us // 1000
        for group, since in self.since.items():
            if since is not None:
                self._end(group, since, now)
        for group, started in self.leaderless_since.items():
            if started is not None:
                self._end_leaderless(group, started, now)
        return self.windows

    def _end_leaderless(self, group: int, started: int, now: int) -> None:
        self.leaderless[group].append((started, now))
        self.leaderless_since[group] = None

    def _end(self, group: int, since: int, now: int) -> None:
        if since < now:
            self.windows[group].append((since, now))
        self.since[group] = None
