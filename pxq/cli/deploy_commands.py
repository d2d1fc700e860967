"""``pxq deploy``: a cluster on the hosts of its cluster file (``[[hosts]]``), over SSH
(``net.deploy``; docs/deployment.md).

Every command takes the cluster file, logs into every host it concerns in parallel (host keys
verified against ``--known-hosts``; ``--accept-new-host-keys`` appends the key of a host that
has no entry, as OpenSSH's ``accept-new``), and is safe to re-run. Exit codes: 0 ok, 1 a host
failed (a check, a login, a step), 2 bad input (an unreadable or invalid cluster file, one
without ``[[hosts]]``, an unknown node). ``--json`` prints one JSON object instead of tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

if TYPE_CHECKING:
    from net.deploy.ssh import HostKeys
    from pxq.config import ClusterConfig

F = TypeVar("F", bound=Callable[..., Any])


def _bad_input(message: str) -> NoReturn:
    bad_input(message)
    raise SystemExit(2)  # pragma: no cover - bad_input exits


def ssh_options(f: F) -> F:
    """The cluster file argument and the SSH options every deploy command takes."""
    f = click.option(
        "--accept-new-host-keys",
        is_flag=True,
        help="A host with no entry in the known_hosts file has the key it presents appended "
        "(OpenSSH's accept-new); a host whose entry differs is still refused.",
    )(f)
    f = click.option(
        "--known-hosts",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("~/.ssh/known_hosts"),
        show_default=True,
        help="The known_hosts file host keys are verified against.",
    )(f)
    return click.argument(
        "cluster_file", metavar="CLUSTER.toml", type=click.Path(dir_okay=False, path_type=Path)
    )(f)


def _load(cluster_file: Path) -> ClusterConfig:
    from pxq.config.parser import ConfigError, load_config

    try:
        config = load_config(cluster_file)
    except ConfigError as exc:
        _bad_input(str(exc))
    if not config.hosts:
        _bad_input(
            f"{cluster_file}: no [[hosts]]: pxq deploy needs the hosts of the deployment "
            "(docs/configuration.md, 'Hosts and zones'); pxq cluster up runs a file without "
            "hosts on this machine"
        )
    return config


def _keys(known_hosts: Path, accept_new: bool) -> HostKeys:
    from net.deploy.ssh import HostKeys

    return HostKeys(known_hosts, accept_new=accept_new)


@contextlib.contextmanager
def _progress(message: str, *, quiet: bool) -> Iterator[None]:
    """A spinner on a terminal's stderr while ``message``'s work runs."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def _echo_added(keys: HostKeys, *, as_json: bool) -> None:
    if keys.added and not as_json:
        click.echo(f"added the host keys of {', '.join(keys.added)} to {keys.path}", err=True)


@click.group()
def deploy() -> None:
    """A cluster on many hosts over SSH: the hosts and placement come from the cluster
    file's [[hosts]] and each replica's `on` (docs/deployment.md)."""


@deploy.command("check")
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1, max=600),
    default=30.0,
    show_default=True,
    help="Seconds each host's check may take (login included).",
)
def deploy_check(
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Log into every host and check it: Python 3.11 or later, free disk under its
    base_dir, every port its nodes will listen on free, its clock's offset from this
    machine (a warning past half of [ownership] margin_ms). Exit 1 if a host fails."""
    from net.deploy.check import check_all

    config = _load(cluster_file)
    keys = _keys(known_hosts, accept_new_host_keys)
    with _progress(f"checking {len(config.hosts)} hosts", quiet=as_json):
        checks = asyncio.run(check_all(config, keys, timeout_s=timeout_s))
    ok = all(c.ok for c in checks)
    _echo_added(keys, as_json=as_json)
    if as_json:
        doc = {"cluster": config.name, "ok": ok, "hosts": [c.to_json() for c in checks]}
        click.echo(json.dumps(doc, indent=1))
        sys.exit(EXIT_OK if ok else EXIT_FAILED)
    width = max(4, *(len(c.host.name) for c in checks))
    zwidth = max(4, *(len(c.host.zone) for c in checks))
    click.echo(
        f"{'host':<{width}}  {'zone':<{zwidth}}  {'address':<15}  {'python':<7}  "
        f"{'disk free':>9}  {'ports':<9}  {'clock offset':>16}  result"
    )
    for c in checks:
        if c.error is not None:
            python = disk = ports = clock = "-"
        else:
            python = ".".join(map(str, c.python))
            disk = f"{c.disk_free_bytes / (1 << 30):.1f} GiB"
            free = sum(1 for p in c.ports if p.problem is None)
            ports = f"{free}/{len(c.ports)} free"
            clock = f"{c.clock_offset_ms:+.1f}±{c.clock_uncertainty_ms:.1f} ms"
        result = "ok" if c.ok else "FAILED"
        if c.ok and c.warnings:
            result = "ok (warning)"
        click.echo(
            f"{c.host.name:<{width}}  {c.host.zone:<{zwidth}}  {c.host.address:<15}  "
            f"{python:<7}  {disk:>9}  {ports:<9}  {clock:>16}  {result}"
        )
    for c in checks:
        for problem in c.problems:
            click.echo(f"problem: {problem}")
        for warning in c.warnings:
            click.echo(f"warning: {warning}")
    failed = [c.host.name for c in checks if not c.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(checks)} hosts failed: {', '.join(failed)}")
        sys.exit(EXIT_FAILED)
    click.echo(f"all {len(checks)} hosts ready")
    sys.exit(EXIT_OK)
