"""``pxq test``: a Jepsen-style test of a real cluster (``net.jepsen.runner``).

Exit codes: 0 every checker passed, 1 a violation (or the cluster did not recover), 2 bad
input (an unknown workload or nemesis, one the target cannot inject, busy ports...), 3
unknown (a linearizability search ran out of its step budget: never reported as valid).
``docs/testing-real-clusters.md`` documents the command.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import sys
import time
from pathlib import Path
from typing import Final

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

EXIT_UNKNOWN: Final = 3
EXITS: Final = {"valid": EXIT_OK, "invalid": EXIT_FAILED, "unknown": EXIT_UNKNOWN}
TESTS_HOME: Final = Path(".pxq") / "tests"


@click.command("test")
@click.option(
    "--target",
    type=click.Choice(["local", "netns"]),
    default="local",
    show_default=True,
    help="Where the cluster runs: local = processes on 127.0.0.1; netns = each node in a "
    "network namespace of its own (root, ip and nft), which adds the partition and "
    "slow-link nemeses.",
)
@click.option(
    "--workload",
    "workloads",
    default="queue,lock",
    show_default=True,
    help="Comma-separated workloads: queue (producers, consumers of every group, a replay), "
    "lock (acquire/renew/release with fencing, reads, listings), register (read/write/cas "
    "on the lock service's registers).",
)
@click.option(
    "--nemesis",
    "nemeses",
    default="kill,pause",
    show_default=True,
    help="Comma-separated faults, mixed on one schedule: kill (kill -9 of a node, a master "
    "or a majority, then restart), pause (SIGSTOP longer than a lease), clock (wall-clock "
    "jumps and skews, libfaketime), partition (a master isolated, halves, a bridge, a "
    "one-way cut, in one service), slow-link (50-300 ms on a node's links or one link), "
    "power (power cut of a node, a majority or a whole service: unsynced writes lost; lazy "
    "disks), disk-full (ENOSPC for a while; lazy disks); none for no fault. The target must "
    "support each.",
)
@click.option(
    "--lazy-disks",
    is_flag=True,
    help="Each node's data directory on a FUSE disk that loses unsynced writes on a power "
    "cut (root, fuse3). Implied by --nemesis power or disk-full.",
)
@click.option(
    "--unsafe-no-fsync",
    is_flag=True,
    help="NEGATIVE CONTROL: run the nodes under eatmydata (every fsync a no-op), so that a "
    "power cut loses acknowledged writes and the run must fail. Never for a real test.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True, max=24 * 3600),
    default=30.0,
    show_default=True,
    help="Seconds of workload under faults (setup, recovery, final reads and checks come on top).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of the fault schedule and the workloads' choices (default: drawn; printed).",
)
@click.option(
    "--dir",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The run's directory: history, results, summary, the cluster's logs "
    "(default: ./.pxq/tests/<time>-<seed>).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The cluster file to run (default: the embedded default on --base-port, with a "
    "second consumer group).",
)
@click.option(
    "--base-port",
    type=click.IntRange(min=1024, max=65529),
    default=None,
    help="First of the six ports of the embedded default's nodes [default: 7500].",
)
@click.option(
    "--recovery-timeout",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds the cluster has after the final heal to elect masters and serve every "
    "workload again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def test(  # noqa: PLR0917 - one parameter per click option
    target: str,
    workloads: str,
    nemeses: str,
    time_limit: float,
    seed: int | None,
    run_dir: Path | None,
    config_file: Path | None,
    base_port: int | None,
    recovery_timeout: float,
    lazy_disks: bool,
    unsafe_no_fsync: bool,
    as_json: bool,
) -> None:
    """Run workloads against a real cluster while a nemesis injects faults on a schedule drawn
    from --seed, then heal, wait for recovery, run the final reads and every checker. Exit 0
    valid, 1 a violation, 2 bad input, 3 unknown (a checker ran out of budget)."""
    import random

    from net.jepsen.lazyfs import LIBEATMYDATA, LazyFsError
    from net.jepsen.nemesis import NemesisError, parse_nemeses
    from net.jepsen.runner import CLUSTER_DIR, BadTestInput, TestOptions, run_test, summary_text
    from net.jepsen.targets import BadTarget, make_target
    from pxq.config import ConfigError

    if config_file is not None and base_port is not None:
        bad_input("--base-port is for the embedded default; --config gives the ports")
    try:
        kinds = parse_nemeses(nemeses)
    except NemesisError as exc:
        bad_input(str(exc))
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    if run_dir is None:
        run_dir = TESTS_HOME / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    options = TestOptions(
        workloads=tuple(w.strip() for w in workloads.split(",") if w.strip()),
        nemeses=kinds,
        time_limit_s=time_limit,
        seed=seed,
        run_dir=run_dir,
        recovery_timeout_s=recovery_timeout,
    )
    # The disk faults need lazy disks: asking for them turns the disks on, as clock does
    # libfaketime (plain disks stay the default: a lazy disk needs root and is faster).
    lazy = lazy_disks or "power" in kinds or "disk-full" in kinds
    if unsafe_no_fsync and ctypes.util.find_library("eatmydata") is None:
        bad_input("--unsafe-no-fsync needs libeatmydata (Debian package eatmydata)")
    try:
        options.validate()
        the_target = make_target(
            target,
            run_dir / CLUSTER_DIR,
            config_file=None if config_file is None else config_file.resolve(),
            base_port=base_port,
            clock="clock" in kinds,
            lazy_disks=lazy,
            preload=(Path(LIBEATMYDATA),) if unsafe_no_fsync else (),
        )
    except (BadTestInput, BadTarget, LazyFsError) as exc:
        bad_input(str(exc))

    def say(message: str) -> None:
        if not as_json:
            click.echo(f"pxq test: {message}", err=True)

    say(f"seed {seed}, run directory {run_dir}")
    from net.cluster.processes import ClusterError
    from net.jepsen.hosts import HostsError
    from net.jepsen.netns import NetnsError

    try:
        result = asyncio.run(run_test(the_target, options, say=say))
    except BadTestInput as exc:
        bad_input(str(exc))
    except (ClusterError, ConfigError, HostsError, NetnsError, LazyFsError) as exc:
        bad_input(f"the {target} cluster did not start: {exc}")
    if as_json:
        click.echo(json.dumps({**result.to_json(), "run_dir": str(run_dir)}))
    else:
        click.echo(summary_text(result), nl=False)
        click.echo(f"run directory: {run_dir}")
        where = f" --config {config_file}" if config_file is not None else ""
        where += f" --base-port {base_port}" if base_port is not None else ""
        where += " --lazy-disks" if lazy_disks else ""
        where += " --unsafe-no-fsync" if unsafe_no_fsync else ""
        click.echo(
            f"reproduce: pxq test --target {target} --workload {','.join(options.workloads)} --nemesis "
            f"{','.join(kinds) or 'none'} --time-limit {time_limit:g} --seed {seed}{where}"
        )
    sys.exit(EXITS[result.verdict])


def register(main: click.Group) -> None:
    main.add_command(test)
