"""Measurement helpers shared by the benchmarks of ``net.tools``: free loopback ports,
percentiles, latency fields and quantiles, CPU and memory of processes from ``/proc``, the load average,
an fsync probe of the disk and the machine description every bench output starts with.

``net.tools.bench`` (``pxq bench``), ``net.tools.baselines`` (its C and R baselines) and
``net.tools.client_bench`` all measure with these, so their figures are comparable.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

Line = dict[str, Any]
"""One JSON line of bench output."""
Emit = Callable[[Line], None]

FSYNC_PROBE_WRITES: Final = 20
RSS_FIELDS: Final = ("RssAnon", "RssFile", "VmHWM")
"""What ``--rss`` samples of each node process (``/proc/<pid>/status``, kB)."""
LATENCY_FRACTIONS: Final = (
    *(0.001, 0.002, 0.005, 0.01, 0.02),
    *(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    *(0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
    *(0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999),
)
"""The fractions (ascending) a ``"type": "latency"`` line gives quantiles at: dense in
both tails, so a CDF drawn through them (plus the min at 0 and the max at 1) is smooth."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0-100) of ascending values; NaN if empty."""
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_fields(latencies_s: list[float]) -> Line:
    """p50/p99/p999/max/mean in milliseconds (None for no samples: JSON has no NaN)."""
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(latencies_s)
    return {
        "p50_ms": round(percentile(ordered, 50) * 1e3, 3),
        "p99_ms": round(percentile(ordered, 99) * 1e3, 3),
        "p999_ms": round(percentile(ordered, 99.9) * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1e3, 3),
    }


def latency_quantiles(latencies_s: Sequence[float]) -> Line:
    """The latency distribution of a run, compactly: ``count``, ``min_ms``, ``max_ms`` and the
    nearest-rank quantiles (ms) at ``fractions`` (``LATENCY_FRACTIONS``): the value of rank
    ceil(f * count). With no samples the quantiles are None."""
    fractions = list(LATENCY_FRACTIONS)
    if not latencies_s:
        return {
            "count": 0,
            "min_ms": None,
            "max_ms": None,
            "fractions": fractions,
            "quantiles_ms": [None] * len(fractions),
        }
    ordered = sorted(latencies_s)
    n = len(ordered)
    # round() first: 0.29 * 100 is 28.999999999999996 in binary floating point.
    ranks = [min(n, max(1, math.ceil(round(f * n, 9)))) for f in fractions]
    return {
        "count": n,
        "min_ms": round(ordered[0] * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
        "fractions": fractions,
        "quantiles_ms": [round(ordered[k - 1] * 1e3, 3) for k in ranks],
    }


_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
    """utime+stime of process ``pid`` in seconds, from ``/proc/<pid>/stat``; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (IndexError, ValueError):
        return None


def proc_status_kb(pid: int, fields: Sequence[str] = RSS_FIELDS) -> dict[str, int] | None:
    """The ``kB`` values of ``fields`` in ``/proc/<pid>/status`` (missing fields are left
    out); None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                out[name] = int(parts[0])
    return out


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - Linux has it
        return []


def fsync_probe_ms(directory: Path, writes: int = FSYNC_PROBE_WRITES) -> float | None:
    """p50 of ``writes`` 4 KiB appends + fdatasync in ``directory`` (ms): shows which mode the
    disk is in right now (limits.md: fast ~0.1 ms, slow 1.5-4 ms)."""
    times: list[float] = []
    try:
        fd, name = tempfile.mkstemp(prefix=".pxq-fsync-probe-", dir=directory)
    except OSError:
        return None
    try:
        block = os.urandom(4096)
        for _ in range(writes):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    times.sort()
    return round(percentile(times, 50) * 1e3, 3)


def machine_info(directory: Path) -> Line:
    """What the figures depend on: cores, load average, the disk's fsync mode, versions."""
    probe = fsync_probe_ms(directory)
    mode = None if probe is None else ("fast" if probe < 0.8 else "slow")
    return {
        "nproc": os.cpu_count(),
        "loadavg": loadavg(),
        "fsync_probe_p50_ms": probe,
        "disk_mode": mode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- CPU accounting -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds of every watched process at one moment (name -> seconds)."""

    at: float
    cpu_s: dict[str, float]


class CpuWatch:
    """The cluster's node processes (by name) and this process."""

    def __init__(self, node_pids: dict[str, int]) -> None:
        self.node_pids = dict(node_pids)

    def snapshot(self) -> CpuSnapshot:
        cpu: dict[str, float] = {}
        for node, pid in self.node_pids.items():
            value = proc_cpu_s(pid)
            if value is not None:
                cpu[node] = value
        own = proc_cpu_s(os.getpid())
        if own is None:  # pragma: no cover - no /proc
            t = os.times()
            own = t.user + t.system
        cpu["bench"] = own
        return CpuSnapshot(time.perf_counter(), cpu)

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot, items: int) -> Line:
        per = {
            name: round(after.cpu_s[name] - before.cpu_s[name], 3)
            for name in after.cpu_s
            if name in before.cpu_s
        }
        total = sum(per.values())
        nodes = sum(v for k, v in per.items() if k != "bench")
        return {
            "cpu_s": per,
            "cpu_s_total": round(total, 3),
            "cpu_us_per_item": round(total / items * 1e6, 2) if items else None,
            "cpu_us_per_item_nodes": round(nodes / items * 1e6, 2) if items else None,
            "cores_used": round(total / max(1e-9, after.at - before.at), 3),
        }
