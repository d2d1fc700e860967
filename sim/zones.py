"""Zones of a simulated run: which zone each process is placed in, and the latency matrix
between zones.

A scenario's ``[zones]`` table (read by ``sim.scenario``) names the zones and places the
processes of each role in them, one zone per process in index order; ``ZonesSpec.placement``
turns that into a map from endpoint name to zone once the run has built its processes. The
network (``sim.network.Network.zone_links``) gives a message between two zones the delay of
their link and, within a zone or to a process placed nowhere, the baseline ``[network]``
delay; the nemesis resolves ``zone:NAME`` to the processes placed in the zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sim.network import DelaySpec

ZONE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
"""A zone name: what a ``zone:NAME`` selector can spell."""

ROLES = ("replicas", "locks", "producers", "consumers", "schedulers", "clients")
"""The keys of ``[zones]`` that place processes, each an array with one zone per process of
the role in index order (or a string: every process of the role in that zone): ``replicas``
``n0``.. (the store's, or the log's and lock service's with those workloads), ``locks`` the
lock replicas ``l0``.., ``producers`` ``p0``.., ``consumers`` in ``consumer[i]`` order,
``schedulers`` ``sched0``.., ``clients`` the log, lock or register workload's clients
``c0``... A process of a role left out is placed nowhere."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ZonesSpec:
    """``[zones]``: no ``names``, no zones (the default: every path has the baseline delay)."""

    names: tuple[str, ...] = ()
    placed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per role of ``ROLES`` that the file places: the zone of each process, in index order."""
    latency: tuple[tuple[tuple[str, str], DelaySpec], ...] = ()
    """The delay of each directed link between two zones (both directions of every pair the
    file names; a pair it does not name keeps the baseline delay)."""

    def zones_of(self, role: str) -> tuple[str, ...]:
        return dict(self.placed).get(role, ())

    def placement(self, processes: dict[str, list[str]]) -> dict[str, str]:
        """The zone of each placed process, from the processes of each role in index order
        (the run's own lists, so that ``consumer[i]`` and its zone agree)."""
        out: dict[str, str] = {}
        for role, zones in self.placed:
            names = processes.get(role, [])
            if len(names) != len(zones):
                # The loader checked the counts against the workload; a mismatch is a defect.
                raise ValueError(f"[zones] {role}: {len(zones)} zones for {len(names)} processes")
            out.update(zip(names, zones, strict=True))
        return out

    def links(self) -> dict[tuple[str, str], DelaySpec]:
        return dict(self.latency)


def members(placement: dict[str, str]) -> dict[str, list[str]]:
    """The processes placed in each zone, sorted by name."""
    out: dict[str, list[str]] = {}
    for name in sorted(placement):
        out.setdefault(placement[name], []).append(name)
    return out
