"""``pxq tls issue NAME``: a client certificate for another principal, from the cluster's CA;
``pxq tls token NAME``: a login token for a principal instead of a certificate.

The cluster's CA and the certificates of its nodes and of ``admin`` are made by ``pxq cluster
up`` (``net.tls.ensure_cluster_material``); this command adds (or replaces) the certificate
of one client principal, ``client-NAME.pem`` and ``client-NAME.key`` (0600) in the TLS
directory of the cluster file. What the principal may do is the file's ``[[principals]]``
entry of that name (docs/security.md). ``token`` prints a new random token once and the
line that gives its SHA-256 to the principal in the cluster file (the file never holds the
token; a client uses it as ``$PXQ_TOKEN``). Exit codes: 0 issued; 2 bad input (no ``[tls]``,
no CA, an invalid name or configuration).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from pxq.cli.common import EXIT_OK, bad_input

_NAME = re.compile(r"[A-Za-z0-9_-]+")


@click.group()
def tls() -> None:
    """The cluster's TLS certificates."""


@tls.command("issue")
@click.argument("name")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cluster file (default: ./.pxq/cluster.toml).",
)
@click.option(
    "--node",
    is_flag=True,
    help="A node's certificate (node:NAME) instead of a client's, for a replica added later.",
)
def issue_command(name: str, config_path: Path | None, node: bool) -> None:
    """Create (or replace) the certificate and key of client principal NAME (its
    certificate says client:NAME), signed by the cluster's CA."""
    from net.client.api import resolve_config
    from net.errors import TlsError
    from net.tls import client_identity, issue, node_identity
    from pxq.config.parser import ConfigError

    if not _NAME.fullmatch(name):
        bad_input(f"{name!r}: only letters, digits, '_' and '-' are allowed")
    try:
        config = resolve_config(config_path)
    except ConfigError as exc:
        bad_input(str(exc))
        raise  # unreachable: bad_input exits
    if not config.tls.enabled:
        bad_input("the cluster file has TLS off (no [tls], or enabled = false)")
    identity = node_identity(name) if node else client_identity(name)
    try:
        cert, key = issue(Path(config.tls.dir), identity)
    except TlsError as exc:
        bad_input(f"{exc} (pxq cluster up creates the CA)")
        raise  # unreachable
    click.echo(f"issued {identity}: {cert} and {key}")
    if not node and all(p.name != name for p in config.principals):
        click.echo(
            f"note: no [[principals]] entry named {name!r}: it may only probe until one grants "
            "it permissions"
        )
    sys.exit(EXIT_OK)


@tls.command("token")
@click.argument("name")
def token_command(name: str) -> None:
    """Print a new random login token for principal NAME and the cluster-file line that
    accepts it (add the digest to NAME's [[principals]] entry, restart the nodes; the client
    sets PXQ_TOKEN)."""
    import secrets

    from pxq.access import token_digest

    if not _NAME.fullmatch(name):
        bad_input(f"{name!r}: only letters, digits, '_' and '-' are allowed")
    token = secrets.token_urlsafe(32)
    click.echo(f"token for {name} (shown once; clients set PXQ_TOKEN to it):")
    click.echo(token)
    click.echo(f"in the cluster file, the [[principals]] entry with name = {name!r}:")
    click.echo(f'token_sha256 = ["{token_digest(token)}"]')
    sys.exit(EXIT_OK)
