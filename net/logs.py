"""Logging of every ``pxq`` process, set up in one place: ``configure_logging``.

``pxq node run``, ``pxq cluster up`` (for its nodes), ``pxq scheduler run`` and ``pxq consume``
log to stderr in one of two formats (``--log-format``):

* ``text``: ``TIME [NODE] LEVEL LOGGER: MESSAGE``, one line per record;
* ``json``: one JSON object per line, with ``time`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger``, ``message``, ``node`` (a node process's name) and the *fields* of the record:
  the facts a record carries besides its message (``log_event``'s keyword arguments, passed to
  ``logging`` as ``extra={"fields": ...}``), so that a log pipeline can filter on ``group``,
  ``ballot`` or ``holder`` without parsing the message. An exception's traceback is ``exc``.

The named loggers of the events an operator watches (docs/operations.md, "Logs and metrics"):
``MASTERSHIP_LOGGER`` (a Paxos group's master gained, its lease expired, mastership lost),
``STORAGE_LOGGER`` (a node's storage below its reserve: enqueues refused, and back) and
``OWNERSHIP_LOGGER`` (a consumer took or gave up a queue, its lock's lease expired).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

MASTERSHIP_LOGGER: Final = "pxq.mastership"
STORAGE_LOGGER: Final = "pxq.storage"
OWNERSHIP_LOGGER: Final = "pxq.ownership"

FIELDS_ATTR: Final = "fields"
"""The attribute of a ``LogRecord`` that holds its fields (``extra={"fields": {...}}``)."""

TEXT_FORMAT: Final = "%(asctime)s {node}%(levelname)s %(name)s: %(message)s"


def log_event(
    logger: logging.Logger, level: int, message: str, /, *args: object, **fields: object
) -> None:
    """Log ``message % args`` with ``fields`` (in the JSON format, keys of the line)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, *args, extra={FIELDS_ATTR: fields}, stacklevel=2)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._node is not None:
            line["node"] = self._node
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                # The four keys above are the line's own; a field never overwrites them.
                line.setdefault(str(key), value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


def formatter(fmt: LogFormat, node: str | None = None) -> logging.Formatter:
    """The formatter of ``fmt`` (for a node process, naming ``node`` on every line)."""
    if fmt == "json":
        return JsonFormatter(node)
    return logging.Formatter(TEXT_FORMAT.replace("{node}", f"{node} " if node else ""))


def configure_logging(
    *, level: int | str = logging.INFO, fmt: LogFormat = "text", node: str | None = None
) -> None:
    """Log every logger's records from ``level`` on to stderr, in ``fmt``; replaces the root
    logger's handlers (a process sets its logging up once, at start)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
