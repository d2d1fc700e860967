"""The ``pxq`` command line. ``pxq/cli/`` is the one part of ``pxq/`` that may import ``sim``,
``net`` and I/O libraries; commands import them lazily, so ``pxq --help`` stays fast.

Each command group lives in a module of its own (``sim_commands`` for ``pxq sim``); this
module assembles them.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from pxq.cli.admin_commands import register as register_admin_commands
from pxq.cli.bench_commands import register as register_bench_commands
from pxq.cli.check_commands import register as register_check_commands
from pxq.cli.client_commands import register as register_client_commands
from pxq.cli.cluster_commands import cluster
from pxq.cli.deploy_commands import deploy
from pxq.cli.node_commands import node, scheduler
from pxq.cli.reconcile_commands import reconcile
from pxq.cli.register_commands import register
from pxq.cli.sim_commands import sim
from pxq.cli.test_commands import register as register_test_commands
from pxq.cli.tls_commands import tls

# The environment variables of net.tls (IDENTITY_ENV, CERT_ENV, KEY_ENV), named here so that
# `pxq --help` does not import net.
_IDENTITY_ENV = "PXQ_IDENTITY"
_CERT_ENV = "PXQ_TLS_CERT"
_KEY_ENV = "PXQ_TLS_KEY"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pxq")
@click.option(
    "--identity",
    default=None,
    help=f"Client principal of client commands with TLS on (default: ${_IDENTITY_ENV}, else "
    "the cluster file's [tls] identity, admin): its certificate is client-NAME.pem in the "
    "TLS directory.",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Client certificate to present instead (default: ${_CERT_ENV}).",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Its private key (default: ${_KEY_ENV}).",
)
def main(identity: str | None, cert: Path | None, key: Path | None) -> None:
    """pxq: a Paxos-replicated distributed queue, simulation-first."""
    # Through the environment, every client this process opens (and its children) uses them.
    for name, value in ((_IDENTITY_ENV, identity), (_CERT_ENV, cert), (_KEY_ENV, key)):
        if value is not None:
            os.environ[name] = str(value)


main.add_command(sim)
main.add_command(node)
main.add_command(cluster)
main.add_command(deploy)
main.add_command(scheduler)
main.add_command(tls)
main.add_command(reconcile)
main.add_command(register)
register_client_commands(main)
register_bench_commands(main)
register_check_commands(main)
register_admin_commands(main)
register_test_commands(main)
