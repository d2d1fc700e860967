"""``pxq node``: run one replica in the foreground (what a systemd unit executes): a store
replica or a lock replica, whichever the node name is in the cluster file.

Exit codes: 0 after a graceful stop (SIGTERM or SIGINT), 1 when the node stopped by itself
(a storage failure, an invariant violation) or failed while booting from its data, 2 for bad
input: an unreadable or invalid configuration, an unknown node name, a busy port (the node's,
or its metrics port with --metrics), a data dir
that belongs to another cluster or node or is in use by another process. The reason is one
line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input
from pxq.cli.log_options import log_options, setup_logging


def _bad_input(message: str) -> NoReturn:
    bad_input(message)
    raise SystemExit(2)  # pragma: no cover - bad_input exits


@click.group()
def node() -> None:
    """Run one replica of a cluster (a store replica or a lock replica)."""


@node.command("run")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cluster file (TOML).",
)
@click.option("--node", "node_name", required=True, help="The replica to run (a node name).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's data directory (default: ./.pxq/data/NODE).",
)
@log_options()
@click.option(
    "--metrics/--no-metrics",
    default=None,
    help="Serve the node's Prometheus metrics on its metrics port (plain HTTP; default: the "
    "cluster file's [metrics] enabled).",
)
@click.option(
    "--replace",
    is_flag=True,
    default=False,
    help="This node lost its data (a new disk, an emptied or partial data directory): run "
    "it as its own replacement, which re-learns from its peers before it votes.",
)
def node_run(
    *,
    config_file: Path,
    node_name: str,
    data_dir: Path | None,
    log_level: str,
    log_format: str,
    metrics: bool | None,
    replace: bool,
) -> None:
    """Run NODE's replica until SIGTERM or SIGINT.

    NODE is a store replica (it serves its store's Paxos groups) or a lock replica (it serves
    every group of the lock service). It binds exactly the host and port the cluster file
    gives the node, keeps its state in LMDB under the data directory, and logs to stderr.
    On an empty data directory it asks its peers first and refuses to run if the cluster
    has history (it would vote with amnesia); so does a data directory whose LMDB file is
    missing. Start such a node with --replace (see docs/operations.md). With metrics on, it
    serves Prometheus metrics on its metrics port (docs/operations.md, "Logs and metrics").
    """
    from net.errors import BootFailed, StartupError
    from net.node.server import default_data_dir, node_of, run_node
    from pxq.config import PORT_MAX
    from pxq.config.parser import ConfigError, load_config

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        _bad_input(str(exc))
    try:
        info = node_of(config, node_name)
    except StartupError as exc:
        _bad_input(f"{config_file}: {exc}")
    serve_metrics = config.metrics.enabled if metrics is None else metrics
    if serve_metrics and not 0 < info.metrics_port <= PORT_MAX:
        _bad_input(
            f"{config_file}: the metrics port of {node_name} would be {info.metrics_port}: "
            "set its metrics_port or the [metrics] port_offset"
        )
    setup_logging(log_level, log_format, node_name)
    directory = data_dir if data_dir is not None else default_data_dir(node_name)
    try:
        crash = run_node(config, node_name, directory, replace=replace, metrics=serve_metrics)
    except BootFailed as exc:
        click.echo(f"pxq: node {node_name} failed to boot: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except StartupError as exc:
        _bad_input(f"node {node_name}: {exc}")
    if crash is not None:
        click.echo(f"pxq: node {node_name} stopped: {crash}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


@click.group()
def scheduler() -> None:
    """Run the consumers' load-balancing scheduler."""


@scheduler.command("run")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cluster file (TOML); it must have a lock service ([locks]).",
)
@click.option("--name", default="scheduler", show_default=True, help="This scheduler's name.")
@log_options()
def scheduler_run(config_file: Path, name: str, log_level: str, log_format: str) -> None:
    """Run a scheduler until SIGTERM or SIGINT.

    The lock service elects one active scheduler among those running; it reads the consumers'
    load reports and publishes each group's assignment, which consumers follow when the
    cluster file sets [ownership] scheduler = true. Exit 0 after a stop, 2 for a bad
    configuration."""
    from net.cluster.scheduler import run_scheduler
    from net.errors import TlsError
    from net.tls import client_contexts
    from net.wire.loop import run as run_loop
    from pxq.config.parser import ConfigError, load_config

    setup_logging(log_level, log_format)
    try:
        config = load_config(config_file)
        client_contexts(config)  # its TLS identity (admin, or $PXQ_IDENTITY) is usable
    except (ConfigError, OSError, TlsError) as exc:
        _bad_input(str(exc))
    if config.locks is None:
        _bad_input(f"{config_file}: the cluster has no lock service ([locks]) to elect through")
    if not name or any(c in name for c in "/#"):
        _bad_input(f"--name: {name!r} must be non-empty, without '/' or '#'")
    run_loop(run_scheduler(config, name))
    sys.exit(EXIT_OK)
