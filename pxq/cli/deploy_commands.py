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
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

if TYPE_CHECKING:
    from net.deploy.ssh import HostKeys
    from pxq.config import ClusterConfig

F = TypeVar("F", bound=Callable[..., Any])
_T = TypeVar("_T")


def _timeout_option(
    default: float, help: str, *, minimum: float = 0.1, maximum: float = 3600
) -> Callable[[F], F]:
    """The ``--timeout`` (seconds, as ``timeout_s``) of a command."""
    return click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=minimum, max=maximum),
        default=default,
        show_default=True,
        help=help,
    )


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


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


def _remote(keys: HostKeys, work: Coroutine[Any, Any, _T], *, message: str, as_json: bool) -> _T:
    """Run ``work`` (SSH sessions verified with ``keys``) under ``message``'s spinner, then say
    which host keys it added."""
    with _progress(message, quiet=as_json):
        result = asyncio.run(work)
    _echo_added(keys, as_json=as_json)
    return result


def _check_node(config: ClusterConfig, cluster_file: Path, node: str) -> None:
    """Exit 2 unless ``node`` is a node of the file, placed on one of its hosts."""
    from net.deploy.remote import node_host

    try:
        node_host(config, node)
    except KeyError as exc:
        _bad_input(f"{cluster_file}: {exc.args[0]}")


@click.group()
def deploy() -> None:
    """A cluster on many hosts over SSH: the hosts and placement come from the cluster
    file's [[hosts]] and each replica's `on` (docs/deployment.md)."""


@deploy.command("check")
@ssh_options
@JSON_OPTION
@_timeout_option(30.0, "Seconds each host's check may take (login included).", maximum=600)
def deploy_check(
    *,
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
    checks = _remote(
        keys,
        check_all(config, keys, timeout_s=timeout_s),
        message=f"checking {len(config.hosts)} hosts",
        as_json=as_json,
    )
    ok = all(c.ok for c in checks)
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


@deploy.command("install")
@ssh_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.option(
    "--wheel-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("~/.cache/pxq/wheelhouse"),
    show_default=True,
    help="Where wheelhouses are built and kept, one per release.",
)
def deploy_install(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    as_json: bool,
    wheel_cache: Path,
) -> None:
    """Build the wheelhouse of this pxq here (pxq and every dependency; once per release),
    copy it to every host and install it there into BASE/venv-RELEASE from the wheels alone
    (no package index); BASE/current points at it. A host that has the release is left
    alone. Exit 1 if a host fails."""
    from net.deploy.install import build_wheelhouse, install_all
    from net.deploy.ssh import DeployError

    config = _load(cluster_file)
    keys = _keys(known_hosts, accept_new_host_keys)
    try:
        with _progress("building the wheelhouse", quiet=as_json):
            house = build_wheelhouse(wheel_cache)
    except DeployError as exc:
        click.echo(f"pxq: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    results = _remote(
        keys,
        install_all(config, keys, house),
        message=f"installing {house.release} on {len(config.hosts)} hosts",
        as_json=as_json,
    )
    ok = all(r.error is None for r in results)
    if as_json:
        doc = {
            "release": house.release,
            "wheelhouse": str(house.path),
            "wheelhouse_built": house.built,
            "ok": ok,
            "hosts": [
                {
                    "host": r.host.name,
                    "installed": r.installed,
                    "elapsed_s": round(r.elapsed_s, 3),
                    "error": r.error,
                }
                for r in results
            ],
        }
        click.echo(json.dumps(doc, indent=1))
        sys.exit(EXIT_OK if ok else EXIT_FAILED)
    built = "built" if house.built else "cached"
    click.echo(f"release {house.release}: wheelhouse {house.path} ({built})")
    for r in results:
        if r.error is not None:
            click.echo(f"  {r.host.name}: FAILED: {r.error}")
        elif r.installed:
            click.echo(f"  {r.host.name}: installed in {r.elapsed_s:.1f} s")
        else:
            click.echo(f"  {r.host.name}: already installed, nothing to do")
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


SUPERVISOR_OPTION = click.option(
    "--supervisor",
    type=click.Choice(["auto", "watchdog", "systemd"]),
    default="auto",
    show_default=True,
    help="How nodes are supervised on their hosts: a systemd unit each, or a watchdog "
    "process each; auto: systemd where it runs the host and the login is root.",
)


def _print_nodes(result: Any, *, title: str) -> None:
    nodes = result.nodes
    if nodes:
        width = max(4, *(len(n.node) for n in nodes))
        hwidth = max(4, *(len(n.host) for n in nodes))
        zwidth = max(4, *(len(n.zone) for n in nodes))
        click.echo(
            f"  {'node':<{width}}  {'host':<{hwidth}}  {'zone':<{zwidth}}  {'address':<21}  "
            f"{title:<11}  {'pid':>7}  masters"
        )
        for n in nodes:
            pid = str(n.node_pid or n.pid or "-")
            masters = " ".join(n.masters) or "-"
            click.echo(
                f"  {n.node:<{width}}  {n.host:<{hwidth}}  {n.zone:<{zwidth}}  "
                f"{n.address + ':' + str(n.port):<21}  {n.state:<11}  {pid:>7}  {masters}"
            )
            if n.error:
                click.echo(f"    {n.node}: {n.error}")
    for f in result.failures:
        click.echo(f"pxq: {f.error}", err=True)


def _json_result(result: Any, ok: bool) -> None:
    doc = {
        "ok": ok,
        "elapsed_s": round(result.elapsed_s, 3),
        "nodes": [n.to_json() for n in result.nodes],
        "failures": [{"host": f.host, "error": f.error} for f in result.failures],
        "masters": {f"{s}/{g}": node for (s, g), node in sorted(result.masters.items())},
        "without_master": [f"{s}/{g}" for s, g in result.without_master],
        "error": result.error,
    }
    click.echo(json.dumps(doc, indent=1))


@deploy.command("up")
@ssh_options
@SUPERVISOR_OPTION
@JSON_OPTION
@_timeout_option(60.0, "Seconds to wait for every Paxos group to have a master.")
def deploy_up(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    supervisor: str,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Write each host's cluster file (and its nodes' TLS material), start every node under
    supervision, and wait until every Paxos group has a master. If a host cannot be reached
    or has no release installed, nothing starts anywhere. Nodes already running are left
    alone. Exit 1 on any failure (the nodes that started stay up: pxq deploy down)."""
    from net.deploy.remote import up
    from net.errors import TlsError

    config = _load(cluster_file)
    keys = _keys(known_hosts, accept_new_host_keys)
    try:
        result = _remote(
            keys,
            up(config, cluster_file, keys, supervisor=supervisor, timeout_s=timeout_s),
            message=f"starting {len(config.all_nodes())} nodes",
            as_json=as_json,
        )
    except TlsError as exc:
        _bad_input(str(exc))
    if as_json:
        _json_result(result, result.ok)
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    if result.failures and not result.nodes:
        for f in result.failures:
            click.echo(f"pxq: {f.error}", err=True)
        click.echo("pxq: nothing was started", err=True)
        sys.exit(EXIT_FAILED)
    _print_nodes(result, title="state")
    if result.error is not None:
        click.echo(f"pxq: {result.error}", err=True)
        for node, tail in sorted(result.logs.items()):
            click.echo(f"---- last lines of {node}'s log ----", err=True)
            click.echo(tail.rstrip() or "(empty)", err=True)
    if not result.ok:
        sys.exit(EXIT_FAILED)
    click.echo(
        f'cluster "{config.name}" is up on {len({n.host for n in result.nodes})} hosts: '
        f"a master for each of the {len(result.masters)} Paxos groups after "
        f"{result.elapsed_s:.1f} s"
    )
    click.echo(f"clients: pxq produce --config {cluster_file} ...; status: pxq deploy status")
    sys.exit(EXIT_OK)


@deploy.command("down")
@ssh_options
@SUPERVISOR_OPTION
@JSON_OPTION
@_timeout_option(10.0, "Seconds to wait after SIGTERM before sending SIGKILL.", minimum=0)
def deploy_down(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    supervisor: str,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Stop every node on its host (SIGTERM: a graceful stop; SIGKILL after --timeout).
    Data and installs stay. Exit 1 if a host failed or a node survived."""
    from net.deploy.remote import down

    config = _load(cluster_file)
    keys = _keys(known_hosts, accept_new_host_keys)
    result = _remote(
        keys,
        down(config, keys, timeout_s=timeout_s, supervisor=supervisor),
        message="stopping the nodes",
        as_json=as_json,
    )
    if as_json:
        _json_result(result, result.ok)
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    _print_nodes(result, title="outcome")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


@deploy.command("status")
@ssh_options
@SUPERVISOR_OPTION
@JSON_OPTION
def deploy_status(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    supervisor: str,
    as_json: bool,
) -> None:
    """Per node: host, zone, running or not, pid, the Paxos groups it masters now. Exit 0
    when every node runs and every group has a master, 1 otherwise."""
    from net.deploy.remote import status

    config = _load(cluster_file)
    keys = _keys(known_hosts, accept_new_host_keys)
    result = _remote(
        keys,
        status(config, keys, supervisor=supervisor),
        message="asking every host",
        as_json=as_json,
    )
    all_up = result.ok and all(n.state == "running" for n in result.nodes)
    if as_json:
        _json_result(result, all_up)
        sys.exit(EXIT_OK if all_up else EXIT_FAILED)
    click.echo(f'cluster "{config.name}" ({cluster_file})')
    _print_nodes(result, title="process")
    if result.without_master:
        click.echo(
            "groups without a master: " + " ".join(f"{s}/{g}" for s, g in result.without_master)
        )
    click.echo("all nodes up" if all_up else "not all up")
    sys.exit(EXIT_OK if all_up else EXIT_FAILED)


@deploy.command("restart")
@ssh_options
@click.argument("node")
@SUPERVISOR_OPTION
@JSON_OPTION
@_timeout_option(
    60.0, "Seconds to wait for the stop (then SIGKILL), and for every group's master after."
)
@click.option(
    "--replace",
    is_flag=True,
    help="NODE lost its data (an emptied data directory, a new disk): start it as its own "
    "replacement (pxq node run --replace: it re-learns its promises from its peers before it "
    "votes; docs/operations.md, 'Recovering a replica').",
)
def deploy_restart(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    node: str,
    supervisor: str,
    as_json: bool,
    timeout_s: float,
    replace: bool,
) -> None:
    """Stop NODE on its host and start it again on its data (it catches up from its peers),
    then wait until every Paxos group has a master. Exit 2 for an unknown node."""
    from net.deploy.remote import restart

    config = _load(cluster_file)
    _check_node(config, cluster_file, node)
    keys = _keys(known_hosts, accept_new_host_keys)
    result = _remote(
        keys,
        restart(
            config,
            keys,
            node,
            supervisor=supervisor,
            stop_timeout_s=min(timeout_s, 10.0),
            timeout_s=timeout_s,
            replace=replace,
        ),
        message=f"restarting {node}",
        as_json=as_json,
    )
    if as_json:
        _json_result(result, result.ok)
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    _print_nodes(result, title="state")
    if result.error is not None:
        click.echo(f"pxq: {result.error}", err=True)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


@deploy.command("logs")
@ssh_options
@click.argument("node")
@click.option(
    "--lines",
    "-n",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="How many of the last lines to show.",
)
@click.option("--follow", "-f", is_flag=True, help="Then print lines as they are appended.")
def deploy_logs(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    node: str,
    lines: int,
    follow: bool,
) -> None:
    """Print the end of NODE's log on its host (BASE/logs/NODE.log: the node's output and
    its watchdog's notes); with --follow, until interrupted. Exit 2 for an unknown node."""
    from net.deploy.remote import logs
    from net.deploy.ssh import DeployError

    config = _load(cluster_file)
    _check_node(config, cluster_file, node)
    keys = _keys(known_hosts, accept_new_host_keys)

    def write(text: str) -> None:
        click.echo(text, nl=False)

    try:
        asyncio.run(logs(config, keys, node, write, lines=lines, follow=follow))
    except DeployError as exc:
        click.echo(f"pxq: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        pass
    sys.exit(EXIT_OK)


@deploy.command("destroy")
@ssh_options
@SUPERVISOR_OPTION
@click.option("--yes", is_flag=True, help="Really remove everything (without it: only say what).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@_timeout_option(10.0, "Seconds to wait after SIGTERM before sending SIGKILL.", minimum=0)
def deploy_destroy(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    supervisor: str,
    yes: bool,
    as_json: bool,
    timeout_s: float,
) -> None:
    """Stop every node, then remove from every host what pxq put under its base_dir: the
    nodes' data (the queues' items: gone for good), logs, pid files, the cluster file and
    TLS material, wheelhouses and every release's environment, and systemd units. Only with
    --yes; without it, print what would be removed and exit 2. Safe to re-run."""
    from net.deploy.remote import destroy, destroy_targets

    config = _load(cluster_file)
    if not yes:
        lines = [f"pxq deploy destroy removes, from the hosts of {cluster_file}:"]
        for host in config.hosts:
            nodes = ", ".join(n.node for n in config.nodes_on(host.name)) or "no nodes"
            lines.append(f"  {host.name} ({host.address}; stops {nodes}):")
            lines += [f"    {path}" for path in destroy_targets(host)]
        lines.append("the data of every node is lost; run again with --yes to do it")
        _bad_input("\n".join(lines))
    keys = _keys(known_hosts, accept_new_host_keys)
    result = _remote(
        keys,
        destroy(config, keys, supervisor=supervisor, timeout_s=timeout_s),
        message=f"destroying on {len(config.hosts)} hosts",
        as_json=as_json,
    )
    if as_json:
        doc = {
            "ok": result.ok,
            "elapsed_s": round(result.elapsed_s, 3),
            "hosts": [
                {
                    "host": h.host,
                    "nodes": [n.to_json() for n in h.nodes],
                    "removed": list(h.removed),
                }
                for h in result.hosts
            ],
            "failures": [{"host": f.host, "error": f.error} for f in result.failures],
        }
        click.echo(json.dumps(doc, indent=1))
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    for h in result.hosts:
        stopped = ", ".join(f"{n.node} {n.state}" for n in h.nodes) or "no nodes"
        what = f"removed {len(h.removed)} paths" if h.removed else "nothing left to remove"
        click.echo(f"  {h.host}: {stopped}; {what}")
    for f in result.failures:
        click.echo(f"pxq: {f.error}", err=True)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


@deploy.command("upgrade")
@ssh_options
@SUPERVISOR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.option(
    "--wheel-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("~/.cache/pxq/wheelhouse"),
    show_default=True,
    help="Where wheelhouses are built and kept, one per release.",
)
@click.option(
    "--source",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="The source tree (a pxq checkout) whose release to deploy; default: the one this "
    "pxq runs from.",
)
@_timeout_option(60.0, "Seconds each wait may take: a group's master, a replica catching up.")
def deploy_upgrade(
    *,
    cluster_file: Path,
    known_hosts: Path,
    accept_new_host_keys: bool,
    supervisor: str,
    as_json: bool,
    wheel_cache: Path,
    source: Path | None,
    timeout_s: float,
) -> None:
    """A rolling upgrade to the release of this pxq (or of --source): installed on every
    host, the cluster file and TLS material copied again, then one replica at a time
    stopped, started on the new release and waited for until it has caught up with its
    group's master and every group has a master. No replica is taken down while another of
    its service is behind. Stops at the first failure (exit 1); a re-run resumes (nodes on the
    release already are skipped). Needs [metrics] enabled = true: catching up is read from
    the nodes' metrics."""
    from net.deploy.install import build_wheelhouse
    from net.deploy.ssh import DeployError
    from net.deploy.upgrade import NodeUpgrade, upgrade
    from net.errors import TlsError

    config = _load(cluster_file)
    if not config.metrics.enabled:
        _bad_input(
            f"{cluster_file}: pxq deploy upgrade reads how far each replica has applied its "
            "log from the nodes' metrics: set [metrics] enabled = true (and pxq deploy up "
            "the nodes with it) first"
        )
    keys = _keys(known_hosts, accept_new_host_keys)
    try:
        with _progress("building the wheelhouse", quiet=as_json):
            house = build_wheelhouse(wheel_cache, source.resolve() if source else None)
    except DeployError as exc:
        click.echo(f"pxq: {exc}", err=True)
        sys.exit(EXIT_FAILED)

    def progress(step: NodeUpgrade) -> None:
        if as_json:
            return
        if step.state == "current":
            click.echo(f"  {step.node} ({step.host}): on {house.release} already")
        elif step.state == "upgraded":
            click.echo(
                f"  {step.node} ({step.host}): {step.release_before} -> {house.release}, "
                f"down {step.down_s:.1f} s, caught up after {step.elapsed_s:.1f} s"
            )
        else:
            click.echo(f"  {step.node} ({step.host}): FAILED: {step.error}")

    if not as_json:
        click.echo(f"upgrading to {house.release} (wheelhouse {house.path})")
    try:
        result = asyncio.run(
            upgrade(
                config,
                cluster_file,
                keys,
                house,
                supervisor=supervisor,
                stop_timeout_s=min(timeout_s, 10.0),
                timeout_s=timeout_s,
                progress=progress,
            )
        )
    except TlsError as exc:
        _bad_input(str(exc))
    _echo_added(keys, as_json=as_json)
    if as_json:
        doc = {
            "ok": result.ok,
            "release": result.release,
            "elapsed_s": round(result.elapsed_s, 3),
            "installs": [
                {
                    "host": i.host.name,
                    "installed": i.installed,
                    "elapsed_s": round(i.elapsed_s, 3),
                    "error": i.error,
                }
                for i in result.installs
            ],
            "nodes": [n.to_json() for n in result.nodes],
            "failures": [{"host": f.host, "error": f.error} for f in result.failures],
            "masters": {f"{s}/{g}": node for (s, g), node in sorted(result.masters.items())},
            "error": result.error,
        }
        click.echo(json.dumps(doc, indent=1))
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    for f in result.failures:
        click.echo(f"pxq: {f.error}", err=True)
    if result.error is not None:
        click.echo(f"pxq: upgrade stopped: {result.error}", err=True)
        sys.exit(EXIT_FAILED)
    upgraded = sum(1 for n in result.nodes if n.state == "upgraded")
    click.echo(
        f"{upgraded} of {len(result.nodes)} nodes upgraded to {result.release} in "
        f"{result.elapsed_s:.1f} s; every group has a master"
    )
    sys.exit(EXIT_OK)
