"""What every ``pxq`` subcommand shares: exit codes and the bad-input exit."""

from __future__ import annotations

import sys

import click

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def bad_input(message: str) -> None:
    """Print ``message`` on stderr and exit 2 (bad input)."""
    click.echo(f"pxq: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)
