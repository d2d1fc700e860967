"""``pxq deploy up|down|status``: the nodes of a cluster file on their hosts, driven from here.

``up``:

1. logs into every host that runs a node, in parallel, and checks that a release is
   installed there (``pxq deploy install``); if any host fails (unreachable, refused, host
   key, nothing installed), nothing is started anywhere and every failure is reported;
2. with ``[tls]`` on, makes what is missing of the cluster's TLS material here (as ``pxq
   cluster up`` does) and copies to each host the CA certificate and the certificate and key
   of each of its nodes (0600; the CA's key stays here);
3. writes the cluster file to each host (``BASE/cluster/cluster.toml``, 0600) and starts the
   host's nodes under supervision (``net.deploy.agent start``; a running node is left alone);
4. waits (bounded) until every Paxos group has a master, probing the nodes from here as a
   client of the cluster (``net.cluster.probe``), exactly as ``pxq cluster up`` does. If that
   fails, the nodes stay up (their watchdogs keep restarting what fails) and the last lines of
   the logs of the nodes that are not running are reported.

``down`` stops every node (``agent stop``: SIGTERM, then SIGKILL after the timeout); ``status``
reports each node's host, zone, supervisor, pid and the groups it masters now; ``restart``
stops and starts one node and waits for every group's master; ``logs`` shows (or follows) one
node's log. All are safe to re-run.

``destroy`` (only ever called after the user confirmed: ``pxq deploy destroy --yes``) logs into
every host of the file, stops its nodes (``agent destroy``: as ``stop``, then each node's
systemd unit, data, log and pid files go), then removes what pxq put under ``base_dir``
(``DESTROYED``: data, logs, pid files, the cluster file and TLS material, wheelhouses, every
release's virtual environment, ``current``). ``base_dir`` itself stays, empty. A host where a
node survived its stop keeps its files. Re-run, it finds nothing and says so.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import shlex
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from net.cluster.probe import GroupKey, find_masters, probed_groups, wait_for_masters
from net.config import NetConfig
from net.deploy.agent import CLUSTER_DIR, CONFIG_NAME
from net.deploy.install import CURRENT, current_python, installed_release
from net.deploy.ssh import DeployError, HostKeys, Session, connect, session
from net.errors import NetError
from net.tls import CA_CERT, cert_path, ensure_cluster_material, key_path, node_identity
from pxq.config import ClusterConfig, HostConfig
from pxq.config.model import TLS_DIR_DEFAULT

DESTROYED: Final = ("data", "logs", "run", CLUSTER_DIR, "wheelhouse", "venv-*", CURRENT)
"""What ``destroy`` removes under a host's ``base_dir`` (``venv-*``: every release)."""
UP_TIMEOUT_S: Final = 60.0
AGENT_TIMEOUT_S: Final = 120.0
LOG_TAIL_LINES: Final = 20
T = TypeVar("T")


class NotInstalled(DeployError):
    """A host has no complete release (``pxq deploy install`` first)."""


class NoMasters(DeployError):
    """Some Paxos group had no master in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFailure:
    host: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeState:
    """One node as the agent on its host reported it."""

    node: str
    host: str
    zone: str
    address: str
    port: int
    state: str
    """``up``: started, running, failed; ``down``: stopped, not running, killed, survived,
    failed; ``status``: running, stopped."""
    supervisor: str = ""
    pid: int | None = None
    node_pid: int | None = None
    masters: tuple[str, ...] = ()
    release: str | None = None
    """``status``: the release the node process runs (its ``venv-RELEASE``)."""
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "host": self.host,
            "zone": self.zone,
            "address": f"{self.address}:{self.port}",
            "state": self.state,
            "supervisor": self.supervisor or None,
            "pid": self.pid,
            "node_pid": self.node_pid,
            "masters": list(self.masters),
            "release": self.release,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployResult:
    nodes: tuple[NodeState, ...] = ()
    failures: tuple[HostFailure, ...] = ()
    masters: dict[GroupKey, str] = field(default_factory=dict)
    without_master: tuple[GroupKey, ...] = ()
    elapsed_s: float = 0.0
    error: str | None = None
    """A failure of the whole step (no master in time), with ``failures`` per host."""
    logs: dict[str, str] = field(default_factory=dict)
    """Last lines of the logs of the nodes that are not running (``up`` failed)."""

    @property
    def ok(self) -> bool:
        """No host failed, no node failed (or survived a stop), every group has a master."""
        return (
            not self.failures
            and self.error is None
            and not self.without_master
            and not any(n.state in ("failed", "survived", "unknown") for n in self.nodes)
        )


def host_names(config: ClusterConfig) -> list[str]:
    """The hosts that run a node, in the file's order."""
    used = {n.on for n in config.all_nodes()}
    return [h.name for h in config.hosts if h.name in used]


def _agent(
    host: HostConfig, action: str, config: ClusterConfig, nodes: Sequence[str], *args: str
) -> list[str]:
    return [
        current_python(host),
        "-m",
        "net.deploy.agent",
        action,
        "--base",
        host.base_dir,
        "--unit-prefix",
        f"pxq-{config.name}",
        "--cluster",
        config.name,
        *args,
        *nodes,
    ]


async def agent_run(
    s: Session, config: ClusterConfig, action: str, nodes: Sequence[str], *args: str
) -> list[dict[str, object]]:
    done = await s.run(_agent(s.host, action, config, nodes, *args), timeout_s=AGENT_TIMEOUT_S)
    try:
        results = json.loads(done.stdout)
    except ValueError as exc:
        raise DeployError(
            f"{s.host.name}: the agent printed {done.stdout[:300]!r} ({done.stderr[-300:]})"
        ) from exc
    if not isinstance(results, list):
        raise DeployError(f"{s.host.name}: the agent printed {done.stdout[:300]!r}")
    return [r for r in results if isinstance(r, dict)]


async def open_sessions(
    config: ClusterConfig, keys: HostKeys, names: Sequence[str]
) -> tuple[dict[str, Session], list[HostFailure]]:
    """A login to each host of ``names`` in parallel; the failures instead of the sessions
    that could not be made."""
    hosts = [config.host(n) for n in names]
    results = await asyncio.gather(*(connect(h, keys) for h in hosts), return_exceptions=True)
    sessions: dict[str, Session] = {}
    failures: list[HostFailure] = []
    for h, r in zip(hosts, results, strict=True):
        if isinstance(r, Session):
            sessions[h.name] = r
        elif isinstance(r, DeployError):
            failures.append(HostFailure(host=h.name, error=str(r)))
        elif isinstance(r, BaseException):
            raise r
    return sessions, failures


async def on_each(
    sessions: dict[str, Session], job: Callable[[Session], Awaitable[T]]
) -> tuple[dict[str, T], list[HostFailure]]:
    names = list(sessions)
    results = await asyncio.gather(*(job(sessions[n]) for n in names), return_exceptions=True)
    done: dict[str, T] = {}
    failures: list[HostFailure] = []
    for name, r in zip(names, results, strict=True):
        if isinstance(r, DeployError):
            failures.append(HostFailure(host=name, error=str(r)))
        elif isinstance(r, BaseException):
            raise r
        else:
            done[name] = r
    return done, failures


async def close_sessions(sessions: dict[str, Session]) -> None:
    await asyncio.gather(*(s.close() for s in sessions.values()))


def remote_tls_dir(cluster_file: Path, host: HostConfig) -> str:
    """Where the host's copy of the cluster file finds its TLS directory: a relative ``[tls]
    dir`` is relative to ``BASE/cluster``, as load_config reads it there."""
    with cluster_file.open("rb") as f:
        raw = tomllib.load(f).get("tls", {}).get("dir", TLS_DIR_DEFAULT)
    if posixpath.isabs(raw):
        return str(raw)
    return posixpath.normpath(posixpath.join(host.base_dir, CLUSTER_DIR, str(raw)))


async def push_config(s: Session, config: ClusterConfig, cluster_file: Path) -> None:
    host = s.host
    cluster_dir = f"{host.base_dir}/{CLUSTER_DIR}"
    await s.make_dirs(cluster_dir)
    if config.tls.enabled:
        tls_dir, local = remote_tls_dir(cluster_file, host), Path(config.tls.dir)
        await s.make_dirs(tls_dir)
        files = [local / CA_CERT]
        for info in config.nodes_on(host.name):
            identity = node_identity(info.node)
            files += [cert_path(local, identity), key_path(local, identity)]
        for f in files:
            await s.write_file(f"{tls_dir}/{f.name}", f.read_bytes())
    await s.write_file(f"{cluster_dir}/{CONFIG_NAME}", cluster_file.read_bytes())


def _states(
    config: ClusterConfig, host: str, reports: Sequence[dict[str, object]], key: str
) -> list[NodeState]:
    found: list[NodeState] = []
    by_node = {str(r.get("node")): r for r in reports}
    for info in config.nodes_on(host):
        r = by_node.get(info.node, {})
        h = config.host(host)
        state = r.get(key)
        if key == "running":
            state = "running" if state else "stopped"
        pid, node_pid, release = r.get("pid"), r.get("node_pid"), r.get("release")
        found.append(
            NodeState(
                node=info.node,
                host=host,
                zone=h.zone,
                address=info.host,
                port=info.port,
                state=str(state) if state is not None else "unknown",
                supervisor=str(r.get("supervisor") or ""),
                pid=pid if isinstance(pid, int) else None,
                node_pid=node_pid if isinstance(node_pid, int) else None,
                release=str(release) if release else None,
                error=str(r["error"]) if r.get("error") else None,
            )
        )
    return found


async def up(
    config: ClusterConfig,
    cluster_file: Path,
    keys: HostKeys,
    *,
    supervisor: str = "auto",
    timeout_s: float = UP_TIMEOUT_S,
) -> DeployResult:
    """See the module docstring."""
    started = time.monotonic()
    names = host_names(config)
    sessions, failures = await open_sessions(config, keys, names)
    try:
        if not failures:
            releases, failures = await on_each(sessions, installed_release)
            failures += [
                HostFailure(
                    host=n,
                    error=f"{n}: pxq is not installed in {config.host(n).base_dir} "
                    "(pxq deploy install CLUSTER.toml first)",
                )
                for n, release in releases.items()
                if release is None
            ]
        if failures:
            return DeployResult(failures=tuple(failures), elapsed_s=time.monotonic() - started)
        ensure_cluster_material(config)

        async def start_host(s: Session) -> list[NodeState]:
            await push_config(s, config, cluster_file)
            nodes = [n.node for n in config.nodes_on(s.host.name)]
            reports = await agent_run(s, config, "start", nodes, "--supervisor", supervisor)
            return _states(config, s.host.name, reports, "state")

        per_host, failures = await on_each(sessions, start_host)
        nodes = [n for name in names for n in per_host.get(name, [])]
        error: str | None = None
        masters: dict[GroupKey, str] = {}
        logs: dict[str, str] = {}
        if not failures and not any(n.state == "failed" for n in nodes):
            try:
                masters = await wait_for_masters(
                    config, NetConfig.for_cluster(config), timeout_s=timeout_s
                )
            except NetError as exc:
                error = str(exc)
                logs = await _tails_of_stopped(config, sessions)
        return DeployResult(
            nodes=tuple(_with_masters(nodes, masters)),
            failures=tuple(failures),
            masters=masters,
            elapsed_s=time.monotonic() - started,
            error=error,
            logs=logs,
        )
    finally:
        await close_sessions(sessions)


async def _tails_of_stopped(config: ClusterConfig, sessions: dict[str, Session]) -> dict[str, str]:
    async def tails(s: Session) -> dict[str, str]:
        nodes = [n.node for n in config.nodes_on(s.host.name)]
        reports = await agent_run(s, config, "status", nodes)
        found: dict[str, str] = {}
        for r in reports:
            if not r.get("running"):
                node = str(r.get("node"))
                log = f"{s.host.base_dir}/logs/{node}.log"
                done = await s.run(
                    f"tail -n {LOG_TAIL_LINES} {shlex.quote(log)} 2>/dev/null", check=False
                )
                found[node] = done.stdout
        return found

    per_host, _ = await on_each(sessions, tails)
    return {node: text for found in per_host.values() for node, text in found.items()}


def _with_masters(nodes: Sequence[NodeState], masters: dict[GroupKey, str]) -> list[NodeState]:
    by_node: dict[str, list[str]] = {}
    for (service, group), node in sorted(masters.items()):
        by_node.setdefault(node, []).append(f"{service}/{group}")
    out: list[NodeState] = []
    for n in nodes:
        out.append(
            NodeState(
                node=n.node,
                host=n.host,
                zone=n.zone,
                address=n.address,
                port=n.port,
                state=n.state,
                supervisor=n.supervisor,
                pid=n.pid,
                node_pid=n.node_pid,
                masters=tuple(by_node.get(n.node, ())),
                release=n.release,
                error=n.error,
            )
        )
    return out


async def _on_hosts(
    config: ClusterConfig,
    keys: HostKeys,
    action: str,
    key: str,
    *args: str,
) -> tuple[list[NodeState], list[HostFailure]]:
    names = host_names(config)
    sessions, failures = await open_sessions(config, keys, names)
    try:

        async def job(s: Session) -> list[NodeState]:
            nodes = [n.node for n in config.nodes_on(s.host.name)]
            release = await installed_release(s)
            if release is None:
                raise NotInstalled(
                    f"{s.host.name}: pxq is not installed in {s.host.base_dir}: nothing runs there"
                )
            return _states(
                config, s.host.name, await agent_run(s, config, action, nodes, *args), key
            )

        per_host, more = await on_each(sessions, job)
    finally:
        await close_sessions(sessions)
    nodes = [n for name in names for n in per_host.get(name, [])]
    return nodes, failures + more


async def down(
    config: ClusterConfig, keys: HostKeys, *, timeout_s: float = 10.0, supervisor: str = "auto"
) -> DeployResult:
    """Stop every node of ``config`` on its host (see the module docstring)."""
    started = time.monotonic()
    nodes, failures = await _on_hosts(
        config, keys, "stop", "outcome", "--timeout", str(timeout_s), "--supervisor", supervisor
    )
    return DeployResult(
        nodes=tuple(nodes), failures=tuple(failures), elapsed_s=time.monotonic() - started
    )


async def status(
    config: ClusterConfig, keys: HostKeys, *, supervisor: str = "auto"
) -> DeployResult:
    """Every node's supervisor and pids on its host, and the groups it masters now."""
    started = time.monotonic()
    nodes, failures = await _on_hosts(config, keys, "status", "running", "--supervisor", supervisor)
    masters: dict[GroupKey, str] = {}
    try:
        masters = await find_masters(config, NetConfig.for_cluster(config))
    except NetError as exc:
        failures.append(HostFailure(host="-", error=f"probing the masters: {exc}"))
    without = tuple(g for g in probed_groups(config) if g not in masters)
    return DeployResult(
        nodes=tuple(_with_masters(nodes, masters)),
        failures=tuple(failures),
        masters=masters,
        without_master=without,
        elapsed_s=time.monotonic() - started,
    )


def node_host(config: ClusterConfig, node: str) -> HostConfig:
    """The host that runs ``node``; ``KeyError`` naming the nodes for an unknown one."""
    host = config.host_of(node) if config.node_info(node) is not None else None
    if host is None:
        known = ", ".join(n.node for n in config.all_nodes())
        raise KeyError(f"no node {node!r} in the cluster file (its nodes: {known})")
    return host


async def restart(
    config: ClusterConfig,
    keys: HostKeys,
    node: str,
    *,
    supervisor: str = "auto",
    stop_timeout_s: float = 10.0,
    timeout_s: float = UP_TIMEOUT_S,
    replace: bool = False,
) -> DeployResult:
    """Stop ``node`` on its host (as ``down``), start it again (as ``up``) on its data, and
    wait until every group has a master again. ``replace``: the node lost its data and starts
    as its own replacement (``pxq node run --replace``, docs/operations.md)."""
    started = time.monotonic()
    host = node_host(config, node)
    try:
        async with session(host, keys) as s:
            if await installed_release(s) is None:
                raise NotInstalled(f"{host.name}: pxq is not installed in {host.base_dir}")
            await agent_run(
                s,
                config,
                "stop",
                [node],
                "--timeout",
                str(stop_timeout_s),
                "--supervisor",
                supervisor,
            )
            start = ["--supervisor", supervisor, *(["--replace"] if replace else [])]
            reports = await agent_run(s, config, "start", [node], *start)
    except DeployError as exc:
        failure = HostFailure(host=host.name, error=str(exc))
        return DeployResult(failures=(failure,), elapsed_s=time.monotonic() - started)
    nodes = [n for n in _states(config, host.name, reports, "state") if n.node == node]
    error: str | None = None
    masters: dict[GroupKey, str] = {}
    if not any(n.state == "failed" for n in nodes):
        try:
            masters = await wait_for_masters(
                config, NetConfig.for_cluster(config), timeout_s=timeout_s
            )
        except NetError as exc:
            error = str(exc)
    return DeployResult(
        nodes=tuple(_with_masters(nodes, masters)),
        masters=masters,
        elapsed_s=time.monotonic() - started,
        error=error,
    )


async def logs(
    config: ClusterConfig,
    keys: HostKeys,
    node: str,
    write: Callable[[str], None],
    *,
    lines: int = 50,
    follow: bool = False,
) -> None:
    """Hand the last ``lines`` lines of ``node``'s log on its host to ``write``; with
    ``follow``, then every line appended, until the caller cancels (or the login ends)."""
    host = node_host(config, node)
    log = f"{host.base_dir}/logs/{node}.log"
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), log]
    async with session(host, keys) as s:
        if not follow:
            write((await s.run(argv)).stdout)
            return
        process = await s.conn.create_process(shlex.join(argv))
        try:
            async for line in process.stdout:
                write(line)
        finally:
            process.close()


def destroy_targets(host: HostConfig) -> list[str]:
    """What ``destroy`` removes on ``host`` (``DESTROYED`` under its base_dir)."""
    return [f"{host.base_dir}/{name}" for name in DESTROYED]


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDestroy:
    host: str
    nodes: tuple[NodeState, ...]
    """The host's nodes as ``agent destroy`` left them (state: stopped, not running...)."""
    removed: tuple[str, ...]
    """What was there and is gone (empty: nothing was left)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DestroyResult:
    hosts: tuple[HostDestroy, ...] = ()
    failures: tuple[HostFailure, ...] = ()
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def _destroy_script(host: HostConfig) -> str:
    """Remove ``DESTROYED`` under the host's base_dir, printing each path that was there."""
    names = " ".join(DESTROYED[:-1]) + f" {CURRENT} {CURRENT}.new"
    return (
        f"cd {shlex.quote(host.base_dir)} 2>/dev/null || exit 0\n"
        f"for p in {names}; do\n"
        '  if [ -e "$p" ] || [ -L "$p" ]; then echo "$PWD/$p"; rm -rf -- "$p"; fi\n'
        "done\n"
    )


async def _any_python(s: Session) -> str | None:
    """An installed interpreter to run the agent with: ``current``'s, else any release's."""
    if await installed_release(s) is not None:
        return current_python(s.host)
    done = await s.run(
        f"ls -d {shlex.quote(s.host.base_dir)}/venv-*/bin/python 2>/dev/null | head -n 1",
        check=False,
    )
    return done.stdout.strip() or None


async def destroy(
    config: ClusterConfig, keys: HostKeys, *, supervisor: str = "auto", timeout_s: float = 10.0
) -> DestroyResult:
    """See the module docstring: every host of ``config``, in parallel."""
    started = time.monotonic()
    names = [h.name for h in config.hosts]
    sessions, failures = await open_sessions(config, keys, names)
    try:

        async def job(s: Session) -> HostDestroy:
            nodes = [n.node for n in config.nodes_on(s.host.name)]
            states: list[NodeState] = []
            python = await _any_python(s) if nodes else None
            if python is not None:
                args = ("--timeout", str(timeout_s), "--supervisor", supervisor)
                argv = [python, *_agent(s.host, "destroy", config, nodes, *args)[1:]]
                done = await s.run(argv, timeout_s=AGENT_TIMEOUT_S)
                try:
                    reports = json.loads(done.stdout)
                except ValueError as exc:
                    raise DeployError(
                        f"{s.host.name}: the agent printed {done.stdout[:300]!r}"
                    ) from exc
                states = _states(config, s.host.name, reports, "outcome")
                kept = [n.node for n in states if n.state in ("failed", "survived")]
                if kept:
                    raise DeployError(
                        f"{s.host.name}: could not stop {', '.join(kept)}: its files are kept"
                    )
            else:
                states = [
                    NodeState(
                        node=n.node,
                        host=s.host.name,
                        zone=s.host.zone,
                        address=n.host,
                        port=n.port,
                        state="not installed",
                    )
                    for n in config.nodes_on(s.host.name)
                ]
            done = await s.run(_destroy_script(s.host), timeout_s=AGENT_TIMEOUT_S)
            removed = tuple(line for line in done.stdout.splitlines() if line)
            return HostDestroy(host=s.host.name, nodes=tuple(states), removed=removed)

        per_host, more = await on_each(sessions, job)
    finally:
        await close_sessions(sessions)
    return DestroyResult(
        hosts=tuple(per_host[n] for n in names if n in per_host),
        failures=tuple(failures + more),
        elapsed_s=time.monotonic() - started,
    )
