"""``--log-level`` and ``--log-format``: the logging options of every long-running ``pxq``
command (``node run``, ``cluster up`` for its nodes, ``scheduler run``, ``consume``), and
their one setup (``net.logs.configure_logging``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import click

# net.logs.LOG_LEVELS and LOG_FORMATS, named here so that `pxq --help` does not import net.
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")

F = TypeVar("F", bound=Callable[..., object])


def log_format_option(func: F) -> F:
    """``--log-format text|json`` (the ``log_format`` argument)."""
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines on stderr as text, or as one JSON object per line (time, level, "
        "logger, message and the event's fields).",
    )(func)


def log_options(default_level: str = "info") -> Callable[[F], F]:
    """``--log-level`` (the ``log_level`` argument) and ``--log-format``."""

    def decorate(func: F) -> F:
        func = log_format_option(func)
        return click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS),
            default=default_level,
            show_default=True,
            help="Lowest level logged to stderr.",
        )(func)

    return decorate


def setup_logging(log_level: str, log_format: str, node: str | None = None) -> None:
    """Log to stderr from ``log_level`` on, in ``log_format`` (naming ``node`` on each line)."""
    from net.logs import configure_logging

    configure_logging(level=log_level, fmt="json" if log_format == "json" else "text", node=node)
