"""``pxq deploy check``: what every host of a deployment must offer before pxq goes there.

Per host, over one SSH login: its Python (``python`` of its ``[[hosts]]`` entry; 3.11 or
later), the free disk under its ``base_dir`` (at least ``DISK_FREE_MIN_BYTES``; measured on
the nearest existing directory), whether each port its nodes will listen on (and their
metrics ports, when the cluster file turns metrics on) can be listened on now at its address,
and its wall clock's offset from this machine's.

The probe is a small script of the standard library alone run by the host's interpreter
(``HOST_SCRIPT``: nothing is installed yet). It prints one JSON line of facts, then answers
each line it reads with its wall clock in nanoseconds: the offset is measured as NTP does,
``remote - (sent + received) / 2`` over ``CLOCK_SAMPLES`` exchanges, keeping the one of the
shortest round trip (its half is the uncertainty).

Clock offsets: Paxos leases are measured on each node's monotonic clock (their drift
allowance is ``drift_ppm_max``), but the lock service stamps its leases with the master's
wall clock, and a consumer gives up its lease ``[ownership] margin_ms`` early to cover the
skew between lock replicas. So a host whose offset from this machine exceeds half that
margin gets a warning: two such hosts may be a whole margin apart. A warning does not fail
the check; a failed login, an old Python, too little disk or a busy port does.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from net.deploy.ssh import CONNECT_TIMEOUT_S, DeployError, HostKeys, describe, session
from pxq.config import ClusterConfig, HostConfig

PYTHON_MIN: Final = (3, 11)
DISK_FREE_MIN_BYTES: Final = 1 << 30
"""A venv with pxq's dependencies, its wheelhouse and room for data to start with."""
CLOCK_SAMPLES: Final = 5
CHECK_TIMEOUT_S: Final = 30.0

HOST_SCRIPT: Final = r"""
import errno, json, os, shutil, socket, sys, time
args = json.loads(sys.argv[1])
path = args["base_dir"]
while not os.path.isdir(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
ports = []
for address, port in args["ports"]:
    problem = None
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        infos, problem = [], "cannot resolve %s: %s" % (address, exc)
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(sockaddr)
                s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                problem = "in use"
            else:
                problem = "cannot listen there: %s" % (exc.strerror or exc)
    ports.append(problem)
facts = {
    "python": list(sys.version_info[:3]),
    "disk_path": path,
    "disk_free": shutil.disk_usage(path).free,
    "ports": ports,
}
print(json.dumps(facts), flush=True)
for _ in sys.stdin:
    print(time.time_ns(), flush=True)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortCheck:
    node: str
    address: str
    port: int
    what: str
    """``port`` or ``metrics port``."""
    problem: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCheck:
    """What ``check_host`` found on one host; ``error`` set when it could not look."""

    host: HostConfig
    error: str | None = None
    python: tuple[int, ...] = ()
    disk_path: str = ""
    disk_free_bytes: int = 0
    ports: tuple[PortCheck, ...] = ()
    clock_offset_ms: float = 0.0
    clock_uncertainty_ms: float = 0.0
    clock_margin_ms: float = 0.0
    elapsed_s: float = 0.0
    problems: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host.name,
            "address": self.host.address,
            "zone": self.host.zone,
            "ok": self.ok,
            "error": self.error,
            "python": ".".join(map(str, self.python)) or None,
            "disk_path": self.disk_path or None,
            "disk_free_bytes": self.disk_free_bytes if not self.error else None,
            "ports": [
                {
                    "node": p.node,
                    "address": p.address,
                    "port": p.port,
                    "what": p.what,
                    "free": p.problem is None,
                    "problem": p.problem,
                }
                for p in self.ports
            ],
            "clock_offset_ms": None if self.error else round(self.clock_offset_ms, 3),
            "clock_uncertainty_ms": None if self.error else round(self.clock_uncertainty_ms, 3),
            "clock_margin_ms": self.clock_margin_ms,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def clock_margin_ms(config: ClusterConfig) -> float:
    """The largest offset from this machine a host may have without a warning (see the
    module docstring)."""
    return config.ownership.margin_ms / 2


def host_ports(config: ClusterConfig, host: str) -> list[tuple[str, str, int, str]]:
    """(node, address, port, what) of every port the nodes on ``host`` will listen on."""
    found: list[tuple[str, str, int, str]] = []
    for info in config.nodes_on(host):
        found.append((info.node, info.host, info.port, "port"))
        if config.metrics.enabled:
            found.append((info.node, info.host, info.metrics_port, "metrics port"))
    return found


async def check_host(
    config: ClusterConfig,
    host: HostConfig,
    keys: HostKeys,
    *,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> HostCheck:
    """Log into ``host`` and look (see the module docstring); never raises for what the
    host lacks: the problems are in the result."""
    started = time.monotonic()
    wanted = host_ports(config, host.name)
    margin = clock_margin_ms(config)
    try:
        facts, offset_ns, rtt_ns = await asyncio.wait_for(
            _probe(host, keys, wanted, timeout_s=timeout_s), timeout_s
        )
    except TimeoutError:
        error = f"{describe(host)}: the check did not finish within {timeout_s} s"
        return HostCheck(host=host, error=error, problems=(error,), clock_margin_ms=margin)
    except DeployError as exc:
        return HostCheck(host=host, error=str(exc), problems=(str(exc),), clock_margin_ms=margin)
    python = facts.python
    ports = tuple(
        PortCheck(node=n, address=a, port=p, what=w, problem=problem)
        for (n, a, p, w), problem in zip(wanted, facts.ports, strict=True)
    )
    disk_free = facts.disk_free
    offset_ms, uncertainty_ms = offset_ns / 1e6, rtt_ns / 2e6
    problems: list[str] = []
    warnings: list[str] = []
    if python < PYTHON_MIN:
        problems.append(
            f"{host.name}: {host.python} is Python {'.'.join(map(str, python))}; pxq needs "
            f"{'.'.join(map(str, PYTHON_MIN))} or later (set python in its [[hosts]] entry)"
        )
    if disk_free < DISK_FREE_MIN_BYTES:
        problems.append(
            f"{host.name}: {disk_free >> 20} MiB free under {facts.disk_path}; pxq needs "
            f"{DISK_FREE_MIN_BYTES >> 20} MiB"
        )
    for p in ports:
        if p.problem is not None:
            problems.append(f"{host.name}: {p.node}'s {p.what} {p.address}:{p.port}: {p.problem}")
    if abs(offset_ms) > margin:
        warnings.append(
            f"{host.name}: its clock is {offset_ms:+.1f} ms (+/- {uncertainty_ms:.1f}) off "
            f"this machine's, more than {margin:g} ms (half of [ownership] margin_ms): "
            f"lock leases may be trusted too long; synchronise its clock (NTP)"
        )
    return HostCheck(
        host=host,
        python=python,
        disk_path=facts.disk_path,
        disk_free_bytes=disk_free,
        ports=ports,
        clock_offset_ms=offset_ms,
        clock_uncertainty_ms=uncertainty_ms,
        clock_margin_ms=margin,
        elapsed_s=time.monotonic() - started,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True, slots=True)
class _Facts:
    python: tuple[int, ...]
    disk_path: str
    disk_free: int
    ports: tuple[str | None, ...]


def _facts(doc: dict[str, object], ports: int) -> _Facts:
    """The host script's first line, checked (``ValueError``, ``TypeError``, ``KeyError``)."""
    python, path, free, problems = doc["python"], doc["disk_path"], doc["disk_free"], doc["ports"]
    if not isinstance(python, list) or not isinstance(problems, list) or len(problems) != ports:
        raise ValueError("unexpected facts")
    if not isinstance(path, str) or not isinstance(free, int):
        raise ValueError("unexpected facts")
    return _Facts(
        python=tuple(int(v) for v in python),
        disk_path=path,
        disk_free=free,
        ports=tuple(None if p is None else str(p) for p in problems),
    )


async def _probe(
    host: HostConfig,
    keys: HostKeys,
    wanted: Sequence[tuple[str, str, int, str]],
    *,
    timeout_s: float,
) -> tuple[_Facts, int, int]:
    """The host script's facts, and the clock offset and round trip (ns) of the best sample."""
    args = json.dumps(
        {"base_dir": host.base_dir, "ports": [[address, port] for _, address, port, _ in wanted]}
    )
    command = shlex.join([host.python, "-c", HOST_SCRIPT, args])
    async with session(host, keys, timeout_s=min(timeout_s, CONNECT_TIMEOUT_S)) as s:
        process = await s.conn.create_process(command)
        try:
            first = await process.stdout.readline()
            if not first:
                await process.wait_closed()
                stderr = (await process.stderr.read()).strip()
                raise DeployError(
                    f"{describe(host)}: cannot run {host.python}: "
                    f"{stderr[-500:] or f'exit status {process.exit_status}'}"
                )
            try:
                facts = _facts(json.loads(first), len(wanted))
            except (ValueError, TypeError, KeyError) as exc:
                raise DeployError(
                    f"{describe(host)}: {host.python} printed {first[:200]!r}"
                ) from exc
            best: tuple[int, int] | None = None
            for _ in range(CLOCK_SAMPLES):
                sent = time.time_ns()
                process.stdin.write("\n")
                line = await process.stdout.readline()
                received = time.time_ns()
                rtt = received - sent
                offset = int(line) - (sent + received) // 2
                if best is None or rtt < best[1]:
                    best = (offset, rtt)
            process.stdin.write_eof()
        finally:
            process.close()
    if best is None:  # CLOCK_SAMPLES > 0
        raise DeployError(f"{describe(host)}: no clock sample")
    return facts, best[0], best[1]


async def check_all(
    config: ClusterConfig, keys: HostKeys, *, timeout_s: float = CHECK_TIMEOUT_S
) -> list[HostCheck]:
    """``check_host`` on every host of ``config``, in parallel; in the file's order."""
    return list(
        await asyncio.gather(
            *(check_host(config, h, keys, timeout_s=timeout_s) for h in config.hosts)
        )
    )
