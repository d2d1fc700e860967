"""The ``pxq`` command line. ``pxq/cli/`` is the one part of ``pxq/`` that may import ``sim``,
``net`` and I/O libraries; commands import them lazily, so ``pxq --help`` stays fast.

Each command group lives in a module of its own (``sim_commands`` for ``pxq sim``); this
module assembles them.
"""

from __future__ import annotations

import click

from pxq.cli.bench_commands import register as register_bench_commands
from pxq.cli.client_commands import register as register_client_commands
from pxq.cli.cluster_commands import cluster
from pxq.cli.node_commands import node, scheduler
from pxq.cli.sim_commands import sim


@click.group()
@click.version_option(package_name="pxq")
def main() -> None:
    """pxq: a Paxos-replicated distributed queue, simulation-first."""


main.add_command(sim)
main.add_command(node)
main.add_command(cluster)
main.add_command(scheduler)
register_client_commands(main)
register_bench_commands(main)
