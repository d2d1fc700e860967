"""``pxq cluster up|status|down``: a complete cluster on this machine, one OS process per
replica (store replicas and lock replicas alike).

This module owns the cluster home (``./.pxq`` by default) and the lifecycle of the node
processes in it::

    .pxq/cluster.toml        the embedded default configuration, written by ``up`` if absent
    .pxq/run/<node>.pid      the pid of each running node process
    .pxq/run/cluster.json    which configuration file the running cluster was started from
    .pxq/logs/<node>.log     each node's stdout and stderr (appended; one header per start)
    .pxq/data/<node>/        each node's LMDB data dir
    .pxq/tls/                the cluster's CA and certificates ([tls] dir of the default file)

The home (when ``up`` creates it) and its directories are 0700 and every file written in them
0600 (``net.files``); wider modes found in ``run``, ``logs`` and ``data`` are tightened and
logged.

With ``[tls]`` on (the embedded default), ``up`` first creates what is missing of the
cluster's TLS material (``net.tls.ensure_cluster_material``: the CA, a certificate per node,
one for the ``admin`` client), so the default cluster is authenticated and encrypted with no
extra step; ``up(tls=False)`` (``pxq cluster up --no-tls``) writes the default file with TLS
off instead.

``up`` first checks that every node's port can be listened on (a busy one fails the start,
naming each, with nothing started); it writes the default file with a fresh random
``[cluster] id`` (``pxq.config.identity``). It starts every replica of every store, then every
replica of the lock service (if the configuration has ``[locks]``), each as ``python -m pxq.cli node run`` (``net.node.server``) in a
session of its own, so that the nodes outlive the command, then waits (bounded) until every
Paxos group has a master, store groups and lock groups alike, probed as ``net.cluster.inprocess`` does
(as a client of this cluster: a node of another cluster answering at a replica's address
fails the start, ``NotOurNode``). A node that exits meanwhile fails the start: the others are stopped and its log tail is
reported. ``status`` reports per node its role, whether its process is alive, its port accepts
connections and which groups it masters (``store0/1``, ``locks/0``).
``down`` sends SIGTERM, waits (bounded), SIGKILLs stragglers and removes the pid files.
``start_node`` and ``stop_node`` (``pxq cluster start|stop|restart NODE``) do the same for one
node of the running cluster (the configuration recorded by ``up``), to take a replica down for
maintenance or a failure drill and bring it back on its data.

A pid is only ever signalled after checking (``/proc/<pid>/cmdline``) that it still is the
``pxq node run`` of that node, so a stale pid file never leads to signalling a stranger.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from net.client.connection import ClusterIdentity
from net.cluster.probe import (
    GroupKey,
    node_masters,
    probed_groups,
    service_probes,
    wait_for_masters,
)
from net.config import NetConfig
from net.errors import ForeignCluster, MetadataMismatch, NetError
from net.files import DIR_MODE, open_private_append, private_dir, write_private
from net.tls import ensure_cluster_material
from pxq.config import ClusterConfig, NodeInfo, Role, default_toml, load_config

log = logging.getLogger("pxq.net.cluster")

HOME_DEFAULT: Final = Path(".pxq")
CONFIG_NAME: Final = "cluster.toml"
STATE_NAME: Final = "cluster.json"
LOG_TAIL_LINES: Final = 20
LOG_TAIL_BYTES: Final = 64 * 1024
UP_TIMEOUT_S: Final = 30.0
DOWN_TIMEOUT_S: Final = 10.0
KILL_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.05


# -- errors -------------------------------------------------------------------------------------


class ClusterError(NetError):
    """``up``, ``status`` or ``down`` cannot do what was asked; the message says why."""


class ClusterRunning(ClusterError):
    """``up`` was asked to start over a cluster whose node processes are alive."""


class NodeExited(ClusterError):
    """A node process exited while the cluster was starting."""

    def __init__(self, node: str, returncode: int, log_file: Path, log_tail: str) -> None:
        super().__init__(f"node {node} exited with code {returncode} while starting")
        self.node = node
        self.returncode = returncode
        self.log_file = log_file
        self.log_tail = log_tail


class NoMasters(ClusterError):
    """Some Paxos group had no master when the start timeout ran out."""


class PortsBusy(ClusterError):
    """Some node's address cannot be listened on (another process holds the port): ``up``
    started nothing."""


class NotOurNode(ClusterError):
    """While ``up`` waited for its nodes, a replica's address was answered by a node of
    another cluster (or with other routing metadata): ``up`` stopped what it started."""


# -- the cluster home ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterHome:
    """The directory holding a local cluster's config, pid files, logs and data."""

    root: Path = HOME_DEFAULT

    @property
    def default_config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_NAME

    def pid_file(self, node: str) -> Path:
        return self.run_dir / f"{node}.pid"

    def log_file(self, node: str) -> Path:
        return self.logs_dir / f"{node}.log"

    def data_dir(self, node: str) -> Path:
        return self.data_root / node

    def pid_files(self) -> dict[str, Path]:
        """Every pid file present, by node name."""
        if not self.run_dir.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.run_dir.glob("*.pid"))}

    def _state(self) -> dict[str, object]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def recorded_config(self) -> Path | None:
        """The configuration file the cluster was last started from, if recorded."""
        path = self._state().get("config")
        return Path(path) if isinstance(path, str) else None

    def recorded_options(self) -> tuple[str, bool | None]:
        """The log format and metrics switch ``up`` gave its nodes (``start_node`` gives a
        restarted node the same)."""
        state = self._state()
        log_format, metrics = state.get("log_format"), state.get("metrics")
        return (
            log_format if isinstance(log_format, str) else "text",
            metrics if isinstance(metrics, bool) else None,
        )

    def config_for_status(self, explicit: Path | None) -> Path:
        """``explicit``, else the file the running cluster was started from, else the default."""
        if explicit is not None:
            return explicit
        recorded = self.recorded_config()
        if recorded is not None and recorded.exists():
            return recorded
        return self.default_config


# -- processes ----------------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    """The pid in ``path``; None if it is missing or malformed."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _write_atomic(path: Path, text: str) -> None:
    write_private(path, text.encode())


def _make_home(root: Path) -> None:
    """Create the home as 0700 if it is missing. An existing one keeps its mode (it may be a
    directory of the user's, ``--home .``): what pxq writes in it is private either way."""
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def _private_dir(path: Path) -> None:
    """``net.files.private_dir``, logging what it had to tighten."""
    tightened = private_dir(path)
    if tightened:
        log.warning(
            "%s: tightened the modes of %s (they were open to group or others; the cluster "
            "home is private: directories 0700, files 0600)",
            path,
            ", ".join(tightened),
        )


def is_node_process(pid: int, node: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and is the ``pxq node run`` of ``node``.

    Where ``/proc`` is not available only liveness is checked."""
    proc = Path("/proc")
    if not (proc / "self").exists():  # pragma: no cover - Linux has /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself hold parentheses.
    state = stat.rsplit(")", 1)[-1].split()[:1]
    if state in (["Z"], ["X"]):
        return False
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
    return "node" in args and "run" in args and _option(args, "--node") == node


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            return args[i + 1]
    return None


def live_nodes(home: ClusterHome) -> dict[str, int]:
    """The node processes of ``home`` that are running, by node name."""
    live: dict[str, int] = {}
    for node, path in home.pid_files().items():
        pid = read_pid(path)
        if pid is not None and is_node_process(pid, node):
            live[node] = pid
    return live


def node_command(
    config_file: Path,
    node: str,
    data_dir: Path,
    *,
    log_format: str = "text",
    metrics: bool | None = None,
) -> list[str]:
    """The command line of one node process (the same interpreter as this one); ``metrics``
    None leaves metrics to the cluster file's ``[metrics]``."""
    command = [
        sys.executable,
        "-m",
        "pxq.cli",
        "node",
        "run",
        "--config",
        str(config_file),
        "--node",
        node,
        "--data-dir",
        str(data_dir),
        "--log-format",
        log_format,
    ]
    if metrics is not None:
        command.append("--metrics" if metrics else "--no-metrics")
    return command


def child_env() -> dict[str, str]:
    """This environment, with the directory this ``pxq`` was imported from first on the path,
    so that the nodes run the same code as the command that starts them."""
    import pxq

    env = dict(os.environ)
    source_root = str(Path(pxq.__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = source_root if not path else f"{source_root}{os.pathsep}{path}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class NodeLaunch(Protocol):
    """How a node process is launched beyond the cluster file: extra environment and its data
    directory (``net.jepsen.local.LocalTarget``). Without one, a node gets this process's
    environment (``child_env``) and the home's data directory."""

    def env(self, node: str) -> Mapping[str, str]:
        """Variables added to ``node``'s environment (they replace those of the same name)."""

    def data_dir(self, node: str) -> Path:
        """``node``'s data directory."""


# -- up -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeProcess:
    node: str
    role: Role
    service: str
    """The node's store, or ``LOCKS_SERVICE`` for a lock replica."""
    host: str
    port: int
    pid: int
    metrics_port: int | None = None
    """Where it serves its Prometheus metrics (None: it does not)."""


@dataclass(frozen=True, slots=True)
class UpResult:
    config_file: Path
    config: ClusterConfig
    nodes: tuple[NodeProcess, ...]
    masters: dict[GroupKey, str]
    elapsed_s: float
    wrote_default_config: bool
    tls_created: tuple[str, ...] = ()
    """The TLS files ``up`` created (in ``config.tls.dir``)."""


def new_cluster_id() -> str:
    """A fresh random cluster id (``[cluster] id`` of the file ``up`` writes)."""
    return f"c-{os.urandom(8).hex()}"


def busy_addresses(config: ClusterConfig, *, metrics: bool = False) -> list[str]:
    """The nodes of ``config`` whose address (and metrics address, with ``metrics``) cannot
    be listened on now, each as "node (host:port): why"; empty when every port is free. Bound
    with ``SO_REUSEADDR`` as the node will bind it, so a port in TIME_WAIT is free."""
    busy: list[str] = []
    for info in config.all_nodes():
        ports = [info.port] + ([info.metrics_port] if metrics else [])
        for port in ports:
            problem = _bind_problem(info.host, port)
            if problem is not None:
                what = "" if port == info.port else "metrics "
                busy.append(f"{info.node} ({what}{info.host}:{port}): {problem}")
    return busy


def _bind_problem(host: str, port: int) -> str | None:
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is in use (another cluster, or another program?)"
            return f"cannot listen there: {exc.strerror or exc}"
    return None


def prepare_config(
    home: ClusterHome, config_file: Path | None, *, tls: bool = True
) -> tuple[Path, bool]:
    """The configuration file ``up`` uses: ``config_file``, or the home's default, which is
    written from the embedded default (TLS on, or off without ``tls``) if absent. Returns
    (path, whether it was written)."""
    if config_file is not None:
        return config_file, False
    path = home.default_config
    if path.exists():
        return path, False
    _make_home(path.parent)
    _write_atomic(path, default_toml(tls=tls, cluster_id=new_cluster_id()))
    return path, True


async def up(
    home: ClusterHome,
    config_file: Path | None = None,
    *,
    timeout_s: float = UP_TIMEOUT_S,
    net_config: NetConfig | None = None,
    tls: bool = True,
    log_format: str = "text",
    metrics: bool | None = None,
    launch: NodeLaunch | None = None,
) -> UpResult:
    """Start every replica (stores', then the lock service's) as a node process and wait
    until every group, store or lock, has a master.

    ``tls`` False (``--no-tls``): the default file is written with TLS off; a file that has
    TLS on is refused (``ClusterError``: edit its ``[tls]``). Raises ``ConfigError`` (invalid
    configuration), ``TlsError`` (unusable TLS material), ``ClusterRunning`` (node processes of
    ``home`` are alive), ``PortsBusy`` (some node's port is taken: every port is checked
    before anything starts), ``NodeExited``, ``NotOurNode`` (a node of another cluster
    answered at a replica's address) or ``NoMasters``; on the last three (and on any other
    failure) every node process it started is stopped again and its pid file removed.
    The nodes log in ``log_format`` (``net.logs``) and serve their metrics if ``metrics``
    (None: as the cluster file's ``[metrics]`` says). ``launch`` gives each node extra
    environment and its own data directory (``pxq test``'s targets: libfaketime, a file
    system that loses unsynced writes).
    """
    started_at = time.monotonic()
    path, wrote = prepare_config(home, config_file, tls=tls)
    config = load_config(path)
    if not tls and config.tls.enabled:
        raise ClusterError(
            f"--no-tls: {path} has TLS on; set enabled = false in its [tls] table (or start "
            f"a new home, where up writes the default with TLS off)"
        )
    config_abs = path.resolve()
    live = live_nodes(home)
    if live:
        running = ", ".join(f"{n} (pid {p})" for n, p in sorted(live.items()))
        raise ClusterRunning(
            f"a cluster is already running from {home.root}: {running}; "
            f"stop it first with `pxq cluster down`"
        )
    busy = busy_addresses(config, metrics=config.metrics.enabled if metrics is None else metrics)
    if busy:
        raise PortsBusy(
            f"cannot start cluster {config.name!r}: {'; '.join(busy)}. Nothing was started "
            f"(`pxq cluster status` shows what answers there; stop it, or give this cluster "
            f"other ports in {path})"
        )
    for stale in home.pid_files().values():
        stale.unlink(missing_ok=True)
    _make_home(home.root)
    tls_created = tuple(ensure_cluster_material(config))
    net_config = net_config or NetConfig.for_cluster(config)
    for d in (home.run_dir, home.logs_dir, home.data_root):
        _private_dir(d)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    nodes: list[NodeProcess] = []
    try:
        env = child_env()
        for info in config.all_nodes():
            node = info.node
            proc = spawn_node(
                home,
                config_abs,
                node,
                env,
                "pxq cluster up",
                log_format=log_format,
                metrics=metrics,
                launch=launch,
            )
            procs[node] = proc
            nodes.append(_node_process(config, info, proc.pid, metrics))
        _write_atomic(
            home.state_file,
            json.dumps(
                {
                    "config": str(config_abs),
                    "nodes": sorted(procs),
                    "log_format": log_format,
                    "metrics": metrics,
                },
                indent=2,
            )
            + "\n",
        )

        def check() -> None:
            for node, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    log_path = home.log_file(node)
                    raise NodeExited(node, code, log_path, log_tail(log_path))

        try:
            masters = await wait_for_masters(
                config,
                net_config,
                timeout_s=timeout_s,
                nodes=lambda: [n for n, p in procs.items() if p.returncode is None],
                check=check,
            )
        except ClusterError:
            raise
        except (ForeignCluster, MetadataMismatch) as exc:
            raise NotOurNode(
                f"{exc}; that is not a node this command started, so cluster {config.name!r} "
                f"is not up"
            ) from exc
        except NetError as exc:
            raise NoMasters(f"{exc}; see the logs in {home.logs_dir}") from exc
    except BaseException:
        terminate(procs.values())
        for node in procs:
            home.pid_file(node).unlink(missing_ok=True)
        home.state_file.unlink(missing_ok=True)
        raise
    return UpResult(
        config_file=path,
        config=config,
        nodes=tuple(nodes),
        masters=masters,
        elapsed_s=time.monotonic() - started_at,
        wrote_default_config=wrote,
        tls_created=tls_created,
    )


def _node_process(
    config: ClusterConfig, info: NodeInfo, pid: int, metrics: bool | None
) -> NodeProcess:
    """The running ``info`` as ``up`` and ``start_node`` report it (``metrics`` None: as the
    cluster file's ``[metrics]`` says)."""
    serving = config.metrics.enabled if metrics is None else metrics
    return NodeProcess(
        info.node,
        info.role,
        info.service,
        info.host,
        info.port,
        pid,
        info.metrics_port if serving else None,
    )


def spawn_node(
    home: ClusterHome,
    config_abs: Path,
    node: str,
    env: dict[str, str],
    why: str,
    *,
    log_format: str,
    metrics: bool | None,
    launch: NodeLaunch | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``node``'s process in a session of its own, logging to its log file (after a
    header naming ``why``), and write its pid file. ``launch`` adds to ``env`` and chooses
    the data directory (default: the home's)."""
    data_dir = home.data_dir(node) if launch is None else launch.data_dir(node)
    if launch is not None:
        env = {**env, **launch.env(node)}
    with open_private_append(home.log_file(node)) as node_log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        node_log.write(f"---- {stamp} {why}: starting {node} ----\n".encode())
        node_log.flush()
        proc = subprocess.Popen(
            node_command(
                config_abs,
                node,
                data_dir.resolve(),
                log_format=log_format,
                metrics=metrics,
            ),
            stdin=subprocess.DEVNULL,
            stdout=node_log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    _write_atomic(home.pid_file(node), f"{proc.pid}\n")
    return proc


# -- one node -------------------------------------------------------------------------------------


def _cluster_node(home: ClusterHome, node: str) -> tuple[Path, ClusterConfig, NodeInfo]:
    """The running cluster's configuration file, configuration and ``node``'s entry in it;
    ``ClusterError`` when no cluster was started from ``home`` or it has no such node."""
    path = home.recorded_config()
    if path is None or not path.exists():
        raise ClusterError(f"no cluster was started from {home.root} (pxq cluster up first)")
    config = load_config(path)
    for info in config.all_nodes():
        if info.node == node:
            return path, config, info
    names = ", ".join(i.node for i in config.all_nodes())
    raise ClusterError(f"no node {node!r} in {path} (nodes: {names})")


async def start_node(
    home: ClusterHome,
    node: str,
    *,
    timeout_s: float = UP_TIMEOUT_S,
    net_config: NetConfig | None = None,
) -> NodeProcess:
    """Start one node of the cluster running from ``home`` (after ``stop_node``, or after it
    died) and wait, bounded, until its port accepts connections. It rejoins its groups by
    itself (catch-up, elections); this does not wait for that. Raises ``ClusterError`` (no
    such node, no cluster started from ``home``, the node already running), ``NodeExited``
    (it exited while starting) or ``NoMasters`` (alive but not accepting within
    ``timeout_s``; it is left running)."""
    path, config, info = _cluster_node(home, node)
    pid = live_nodes(home).get(node)
    if pid is not None:
        raise ClusterError(f"node {node} is already running (pid {pid})")
    home.pid_file(node).unlink(missing_ok=True)
    log_format, metrics = home.recorded_options()
    proc = spawn_node(
        home,
        path.resolve(),
        node,
        child_env(),
        "pxq cluster start",
        log_format=log_format,
        metrics=metrics,
    )
    net_config = net_config or NetConfig.for_cluster(config)
    probes = {sp.service: sp.probes for sp in service_probes(config)}[info.service]
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            home.pid_file(node).unlink(missing_ok=True)
            log_path = home.log_file(node)
            raise NodeExited(node, code, log_path, log_tail(log_path))
        try:
            answered = await node_masters(
                info, probes, net_config, cluster=ClusterIdentity.of(config)
            )
        except (ForeignCluster, MetadataMismatch) as exc:
            terminate([proc])
            home.pid_file(node).unlink(missing_ok=True)
            raise ClusterError(f"{node}: {exc}; the node was stopped again") from exc
        if answered is not None:
            return _node_process(config, info, proc.pid, metrics)
        if time.monotonic() >= deadline:
            raise NoMasters(
                f"node {node} (pid {proc.pid}) accepts no connection after {timeout_s:g} s"
            )
        await asyncio.sleep(POLL_S)


def stop_node(home: ClusterHome, node: str, timeout_s: float = DOWN_TIMEOUT_S) -> NodeStop:
    """Stop one node of the cluster running from ``home`` as ``down`` stops them all (SIGTERM,
    SIGKILL after ``timeout_s``), removing its pid file. Raises ``ClusterError`` for a node
    the cluster does not have."""
    _cluster_node(home, node)
    path = home.pid_file(node)
    stops = _stop(home, {node: path}, timeout_s) if path.exists() else []
    return stops[0] if stops else NodeStop(node, None, "not running")


def terminate(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM our own children, wait (bounded), SIGKILL the rest, reap them all."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


# -- status -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    role: Role
    service: str
    """The node's store, or ``LOCKS_SERVICE`` for a lock replica."""
    host: str
    port: int
    pid: int | None
    """The pid from the pid file (None: no pid file)."""
    alive: bool
    """The pid is a running ``pxq node run`` of this node."""
    accepting: bool
    """A TCP connection to the node's address succeeded."""
    masters: tuple[int, ...] = ()
    """Groups of its service (its store, or the lock service) this node masters now."""
    remote: bool = False
    """The node runs on a host of the file's ``[[hosts]]`` (``pxq deploy``), not from the
    home: no pid here, its process is not looked at, and it is up when it answers."""

    @property
    def up(self) -> bool:
        return self.accepting if self.remote else self.alive and self.accepting


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    config_file: Path
    config: ClusterConfig
    nodes: tuple[NodeStatus, ...]
    """Store replicas first, then lock replicas, in configuration order."""
    without_master: tuple[GroupKey, ...] = field(default=())

    @property
    def all_up(self) -> bool:
        return all(n.up for n in self.nodes)

    @property
    def masters(self) -> dict[GroupKey, str]:
        """The master of each group that has one, ``(service, group) -> node``."""
        found: dict[GroupKey, str] = {}
        for n in self.nodes:
            for g in n.masters:
                found.setdefault((n.service, g), n.node)
        return found


async def status(
    home: ClusterHome, config_file: Path | None = None, net_config: NetConfig | None = None
) -> ClusterStatus:
    """Probe every replica of the configuration, store and lock replicas (concurrently); the
    nodes of a file with ``[[hosts]]`` run on those hosts (``NodeStatus.remote``). Raises
    ``ConfigError``."""
    path = home.config_for_status(config_file)
    config = load_config(path)
    pid_files = home.pid_files()
    probes = {sp.service: sp.probes for sp in service_probes(config)}
    infos = config.all_nodes()
    net_config = net_config or NetConfig.for_cluster(config)
    cluster = ClusterIdentity.of(config)

    async def masters_of(info: NodeInfo) -> list[int] | None:
        try:
            return await node_masters(info, probes[info.service], net_config, cluster=cluster)
        except (ForeignCluster, MetadataMismatch) as exc:
            log.warning("%s: %s", info.node, exc)
            return None  # not ours: as good as not accepting

    answers = await asyncio.gather(*(masters_of(info) for info in infos))
    nodes: list[NodeStatus] = []
    mastered: set[GroupKey] = set()
    for info, groups in zip(infos, answers, strict=True):
        pid_file = pid_files.get(info.node) if info.on is None else None
        pid = read_pid(pid_file) if pid_file is not None else None
        nodes.append(
            NodeStatus(
                node=info.node,
                role=info.role,
                service=info.service,
                host=info.host,
                port=info.port,
                pid=pid,
                alive=pid is not None and is_node_process(pid, info.node),
                accepting=groups is not None,
                masters=tuple(groups or ()),
                remote=info.on is not None,
            )
        )
        mastered.update((info.service, g) for g in groups or ())
    without = tuple(k for k in probed_groups(config) if k not in mastered)
    return ClusterStatus(path, config, tuple(nodes), without)


# -- down ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStop:
    node: str
    pid: int | None
    outcome: str
    """"stopped" (exited after SIGTERM), "killed" (needed SIGKILL), "not running" (stale or
    missing pid, nothing signalled) or "survived" (still alive after SIGKILL)."""


def down(home: ClusterHome, timeout_s: float = DOWN_TIMEOUT_S) -> list[NodeStop]:
    """Stop every node process of ``home``: SIGTERM, wait up to ``timeout_s``, SIGKILL the
    stragglers, remove the pid files. Idempotent: with nothing running it only tidies up."""
    stops = _stop(home, home.pid_files(), timeout_s)
    if not any(o.outcome == "survived" for o in stops):
        home.state_file.unlink(missing_ok=True)
    return stops


def _stop(home: ClusterHome, pid_files: dict[str, Path], timeout_s: float) -> list[NodeStop]:
    """Stop the node processes of ``pid_files`` (see ``down``), by node name."""
    outcomes: dict[str, NodeStop] = {}
    signalled: dict[str, int] = {}
    for node, path in pid_files.items():
        pid = read_pid(path)
        if pid is None or not is_node_process(pid, node):
            outcomes[node] = NodeStop(node, pid, "not running")
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            outcomes[node] = NodeStop(node, pid, "not running")
            continue
        signalled[node] = pid
    remaining = _wait_gone(signalled, timeout_s)
    for node, pid in signalled.items():
        if node not in remaining:
            outcomes[node] = NodeStop(node, pid, "stopped")
    if remaining:
        for pid in remaining.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        survivors = _wait_gone(remaining, KILL_TIMEOUT_S)
        for node, pid in remaining.items():
            outcomes[node] = NodeStop(node, pid, "survived" if node in survivors else "killed")
    for node, path in pid_files.items():
        if node in outcomes and outcomes[node].outcome != "survived":
            path.unlink(missing_ok=True)
    return [outcomes[n] for n in sorted(outcomes)]


def _wait_gone(pids: dict[str, int], timeout_s: float) -> dict[str, int]:
    """Wait until the processes are gone; those still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    remaining = dict(pids)
    while remaining:
        remaining = {n: p for n, p in remaining.items() if is_node_process(p, n)}
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return remaining
