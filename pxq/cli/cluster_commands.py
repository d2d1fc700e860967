"""``pxq cluster``: start, inspect and stop a complete local cluster, one process per replica,
or one of its nodes (``start|stop|restart NODE``).

``up`` with no arguments runs the embedded default (one store of three replicas on
127.0.0.1:7101-7103 and a lock service of three replicas on 127.0.0.1:7201-7203) from
``./.pxq``; see ``net.cluster.processes`` for the layout of that directory. Paxos groups are shown as
``service/group``: ``store0/2`` is group 2 of store ``store0``, ``locks/0`` group 0 of the lock
service.

Exit codes: ``up`` 0 once every Paxos group (store and lock groups) has a master, 1 when a
node exited while starting, a node of another cluster answered at one of its addresses, or no
master was elected in time (everything it started is stopped again), 2 for bad input (an
invalid configuration, a cluster already running, a port in use: every port, metrics ports
included, is checked before anything starts); ``status`` 0 when every node's process is alive
and its port accepts connections, 1 otherwise, 2 for an invalid configuration (with
``--json`` the same codes, the table as one JSON object); ``down`` 0, or 1 if a process
survived SIGKILL. ``start NODE`` 0 once the node's port accepts connections, 1 when it exited
while starting or did not accept in time, 2 for bad input (no cluster started from the home,
no such node, the node already running); ``stop NODE`` 0 (also when it was not running), 1 if
it survived SIGKILL, 2 for bad input; ``restart NODE`` as ``stop`` then ``start``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input
from pxq.cli.log_options import log_format_option

if TYPE_CHECKING:
    from net.cluster.processes import UpResult

HOME_HELP = "The cluster's directory: config, pid files, logs and data."
HOME_OPTION = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".pxq"),
    show_default=True,
    help=HOME_HELP,
)


def _bad_input(message: str) -> NoReturn:
    bad_input(message)
    raise SystemExit(2)  # pragma: no cover - bad_input exits


@click.group()
def cluster() -> None:
    """A complete cluster on this machine (the embedded default: a store of 3 replicas and a
    lock service of 3 replicas on 127.0.0.1)."""


@cluster.command("up")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The cluster file (default: ./.pxq/cluster.toml, written from the embedded "
    "default if absent).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for every Paxos group to have a master.",
)
@HOME_OPTION
@click.option(
    "--no-tls",
    is_flag=True,
    help="Write the default configuration with TLS off (benchmarks only: then anyone who "
    "can reach a port can act as a replica or client).",
)
@click.option(
    "--metrics/--no-metrics",
    default=True,
    show_default=True,
    help="Each node serves Prometheus metrics (plain HTTP) on its metrics port: its port "
    "plus the cluster file's [metrics] port_offset (1000), or its metrics_port.",
)
@log_format_option
def cluster_up(
    *,
    config_file: Path | None,
    timeout_s: float,
    home: Path,
    no_tls: bool,
    metrics: bool,
    log_format: str,
) -> None:
    """Start every replica (stores and lock service) as a process of its own and wait for the
    masters of every Paxos group. With TLS on (the default), the cluster's CA and
    certificates are created in the home's tls directory first if missing."""
    from net.cluster.processes import (
        ClusterError,
        ClusterHome,
        ClusterRunning,
        NodeExited,
        NoMasters,
        NotOurNode,
        PortsBusy,
        up,
    )
    from net.errors import TlsError
    from pxq.config.parser import ConfigError

    try:
        result = asyncio.run(
            up(
                ClusterHome(home),
                config_file,
                timeout_s=timeout_s,
                tls=not no_tls,
                log_format=log_format,
                metrics=metrics,
            )
        )
    except (ConfigError, ClusterRunning, PortsBusy, TlsError) as exc:
        _bad_input(str(exc))
    except NodeExited as exc:
        click.echo(f"pxq: {exc}; the other nodes were stopped", err=True)
        click.echo(f"---- last lines of {exc.log_file} ----", err=True)
        click.echo(exc.log_tail or "(empty)", err=True)
        sys.exit(EXIT_FAILED)
    except NotOurNode as exc:
        click.echo(f"pxq: {exc}; the nodes it started were stopped", err=True)
        sys.exit(EXIT_FAILED)
    except NoMasters as exc:
        click.echo(f"pxq: {exc}; the nodes were stopped", err=True)
        sys.exit(EXIT_FAILED)
    except ClusterError as exc:
        _bad_input(str(exc))
    _print_up(result, home, default_config=config_file is None)
    sys.exit(EXIT_OK)


def _print_up(result: UpResult, home: Path, *, default_config: bool) -> None:
    from pxq.config.identity import config_fingerprint
    from pxq.config.model import LOCKS_SERVICE

    config = result.config
    groups = len(result.masters)
    lock_groups = sum(1 for service, _ in result.masters if service == LOCKS_SERVICE)
    kinds = f" ({groups - lock_groups} store, {lock_groups} lock)" if lock_groups else ""
    if result.wrote_default_config:
        click.echo(f"wrote the embedded default configuration to {result.config_file}")
    if result.tls_created:
        click.echo(
            f"created the cluster's TLS material in {config.tls.dir}: "
            f"{', '.join(result.tls_created)}"
        )
    if not config.tls.enabled:
        click.echo("TLS is off: anyone who can reach the ports can act as a replica or client")
    click.echo(
        f'cluster "{config.name}" is up: {len(result.nodes)} nodes, a master for each of the '
        f"{groups} Paxos groups{kinds} after {result.elapsed_s:.1f} s"
    )
    click.echo(
        f"  cluster id {config.id or '(none)'}, routing metadata fingerprint "
        f"{config_fingerprint(config)}"
    )
    by_node: dict[str, list[str]] = {}
    for (service, number), node in sorted(result.masters.items()):
        by_node.setdefault(node, []).append(f"{service}/{number}")
    width = max(4, *(len(n.node) for n in result.nodes))
    swidth = max(7, *(len(n.service) for n in result.nodes))
    click.echo(f"  {'node':<{width}}  {'service':<{swidth}}  {'address':<21}  {'pid':>7}  masters")
    for n in result.nodes:
        address = f"{n.host}:{n.port}"
        masters = " ".join(by_node.get(n.node, [])) or "-"
        click.echo(
            f"  {n.node:<{width}}  {n.service:<{swidth}}  {address:<21}  {n.pid:>7}  {masters}"
        )
    click.echo(f"config {result.config_file}; logs {home}/logs/NODE.log; data {home}/data/NODE")
    endpoints = [f"{n.node} {n.host}:{n.metrics_port}" for n in result.nodes if n.metrics_port]
    if endpoints:
        click.echo(f"metrics (Prometheus, plain HTTP, /metrics): {', '.join(endpoints)}")
    topic = config.topics[0] if config.topics else None
    group = topic.consumer_groups[0].name if topic and topic.consumer_groups else None
    if topic is not None and group is not None:
        cfg = "" if default_config else f" --config {result.config_file}"
        click.echo("")
        click.echo("produce and consume:")
        click.echo(f"  pxq produce{cfg} --topic {topic.name}")
        click.echo(f"  pxq consume{cfg} --group {group}")
        click.echo("from Python:")
        click.echo("  import pxq")
        click.echo(f'  with pxq.Client("{result.config_file}") as client:')
        click.echo(f'      print(client.enqueue("{topic.name}", b"hello", key="user-42"))')
    click.echo("")
    click.echo("status: pxq cluster status    stop: pxq cluster down")


@cluster.command("status")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The cluster file (default: the one the cluster was started from).",
)
@HOME_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cluster_status(config_file: Path | None, home: Path, as_json: bool) -> None:
    """Per node (store and lock replicas): process alive, port accepting, groups it masters.
    With a deployed cluster's file (its [[hosts]]: pxq deploy), from any machine: its nodes
    are "remote", up when they answer (pxq deploy status shows their processes)."""
    from net.cluster.processes import ClusterHome, status
    from net.errors import TlsError
    from pxq.config.parser import ConfigError

    try:
        st = asyncio.run(status(ClusterHome(home), config_file))
    except (ConfigError, TlsError) as exc:
        _bad_input(str(exc))
    if as_json:
        doc = {
            "cluster": st.config.name,
            "config": str(st.config_file),
            "nodes": [
                {
                    "node": n.node,
                    "service": n.service,
                    "role": str(n.role),
                    "host": n.host,
                    "port": n.port,
                    "pid": n.pid,
                    "alive": n.alive,
                    "remote": n.remote,
                    "accepting": n.accepting,
                    "up": n.up,
                    "masters": [f"{n.service}/{g}" for g in n.masters],
                }
                for n in st.nodes
            ],
            "without_master": [f"{s}/{g}" for s, g in st.without_master],
            "all_up": st.all_up,
        }
        click.echo(json.dumps(doc, indent=1))
        sys.exit(EXIT_OK if st.all_up else EXIT_FAILED)
    width = max(4, *(len(n.node) for n in st.nodes))
    swidth = max(7, *(len(n.service) for n in st.nodes))
    click.echo(f'cluster "{st.config.name}" ({st.config_file})')
    click.echo(
        f"  {'node':<{width}}  {'service':<{swidth}}  {'address':<21}  {'pid':>7}  "
        "process  port       masters"
    )
    for n in st.nodes:
        address = f"{n.host}:{n.port}"
        pid = str(n.pid) if n.pid is not None else "-"
        process = "remote" if n.remote else "alive" if n.alive else "dead"
        port = "accepting" if n.accepting else "closed"
        masters = " ".join(f"{n.service}/{g}" for g in n.masters) or "-"
        click.echo(
            f"  {n.node:<{width}}  {n.service:<{swidth}}  {address:<21}  {pid:>7}  "
            f"{process:<7}  {port:<9}  {masters}"
        )
    if st.without_master:
        missing = " ".join(f"{s}/{g}" for s, g in st.without_master)
        click.echo(f"groups without a master: {missing}")
    down_nodes = [n.node for n in st.nodes if not n.up]
    if down_nodes:
        click.echo(f"not up: {', '.join(down_nodes)}")
        sys.exit(EXIT_FAILED)
    click.echo("all nodes up")
    sys.exit(EXIT_OK)


@cluster.command("down")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before sending SIGKILL.",
)
@HOME_OPTION
def cluster_down(timeout_s: float, home: Path) -> None:
    """Stop every node (SIGTERM, then SIGKILL after --timeout) and remove the pid files."""
    from net.cluster.processes import ClusterHome, down

    stops = down(ClusterHome(home), timeout_s)
    if not stops:
        click.echo(f"no cluster running from {home}")
        sys.exit(EXIT_OK)
    for s in stops:
        pid = f" (pid {s.pid})" if s.pid is not None else ""
        click.echo(f"  {s.node}{pid}: {s.outcome}")
    survived = [s.node for s in stops if s.outcome == "survived"]
    if survived:
        click.echo(f"pxq: still running after SIGKILL: {', '.join(survived)}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


NODE_TIMEOUT_HELP = "Seconds to wait for the node's port to accept connections."


@cluster.command("start")
@click.argument("node")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help=NODE_TIMEOUT_HELP,
)
@HOME_OPTION
def cluster_start(node: str, timeout_s: float, home: Path) -> None:
    """Start NODE of the cluster running from --home (stopped with pxq cluster stop, or
    dead) on its data, and wait until its port accepts connections; it catches up and
    rejoins its Paxos groups by itself."""
    _start(node, timeout_s, home)
    sys.exit(EXIT_OK)


def _start(node: str, timeout_s: float, home: Path) -> None:
    from net.cluster.processes import ClusterError, ClusterHome, NodeExited, NoMasters, start_node
    from net.errors import TlsError
    from pxq.config.parser import ConfigError

    try:
        proc = asyncio.run(start_node(ClusterHome(home), node, timeout_s=timeout_s))
    except NodeExited as exc:
        click.echo(f"pxq: {exc}", err=True)
        click.echo(f"---- last lines of {exc.log_file} ----", err=True)
        click.echo(exc.log_tail or "(empty)", err=True)
        sys.exit(EXIT_FAILED)
    except NoMasters as exc:
        click.echo(f"pxq: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except (ClusterError, ConfigError, TlsError) as exc:
        _bad_input(str(exc))
    click.echo(f"  {proc.node} (pid {proc.pid}): started, {proc.host}:{proc.port} accepting")


@cluster.command("stop")
@click.argument("node")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, max=3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before sending SIGKILL.",
)
@HOME_OPTION
def cluster_stop(node: str, timeout_s: float, home: Path) -> None:
    """Stop NODE of the cluster running from --home (SIGTERM, then SIGKILL after
    --timeout); the others go on (a majority of each group keeps serving)."""
    _stop(node, timeout_s, home)
    sys.exit(EXIT_OK)


def _stop(node: str, timeout_s: float, home: Path) -> None:
    from net.cluster.processes import ClusterError, ClusterHome, stop_node
    from pxq.config.parser import ConfigError

    try:
        s = stop_node(ClusterHome(home), node, timeout_s)
    except (ClusterError, ConfigError) as exc:
        _bad_input(str(exc))
    pid = f" (pid {s.pid})" if s.pid is not None else ""
    click.echo(f"  {s.node}{pid}: {s.outcome}")
    if s.outcome == "survived":
        click.echo(f"pxq: still running after SIGKILL: {s.node}", err=True)
        sys.exit(EXIT_FAILED)


@cluster.command("restart")
@click.argument("node")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the stop (then SIGKILL), and again for the start.",
)
@HOME_OPTION
def cluster_restart(node: str, timeout_s: float, home: Path) -> None:
    """Stop NODE (as pxq cluster stop) and start it again (as pxq cluster start)."""
    _stop(node, timeout_s, home)
    _start(node, timeout_s, home)
    sys.exit(EXIT_OK)
