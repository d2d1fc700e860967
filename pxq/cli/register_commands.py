"""``pxq register read|write|cas``: the lock service's compare-and-set registers on the command
line (``AsyncClient.register_read``, ``register_write``, ``register_cas``).

Values are given as text (UTF-8), or as base64 with ``--base64``. Output: ``read`` prints
``VERSION<TAB>VALUE`` (the value escaped as ``pxq consume`` escapes payloads), or ``0`` alone
for a register never written; ``write`` and ``cas`` print the new version. ``--json`` prints
one object instead: ``key``, ``version``, and ``value`` (``value_b64`` when it is not UTF-8;
null when never written); a cas mismatch prints ``ok: false`` with the ``current`` value and
its ``version``.

Exit codes, as for the other client commands: 0 on success; 1 when the operation was refused
(a cas mismatch, a fence lock not held with its version: ``fenced``, a full group) or its
outcome is unknown, or no node answered before ``--timeout``, or the cluster file does not
match the cluster; 2 for bad input (an invalid configuration, a key or value over its limit,
bad base64).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pxq.cli.client_commands import CONFIG_OPTION, _load, _reach, _text, bytes_json
from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

if TYPE_CHECKING:
    from net.client.api import AsyncClient
    from pxq.config.model import ClusterConfig

Call = Callable[["AsyncClient"], Awaitable[dict[str, object]]]
"""One register call on a connected client: its result (``version``, and ``value`` of a read)."""

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
TIMEOUT_OPTION = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.001),
    default=10.0,
    show_default=True,
    help="Give up after this many seconds (a write or cas then has an unknown outcome).",
)
BASE64_OPTION = click.option(
    "--base64", "is_base64", is_flag=True, help="VALUE (and --expected) are base64."
)
FENCE_OPTION = click.option(
    "--fence",
    type=(str, int),
    default=None,
    metavar="LOCK_KEY VERSION",
    help="Apply only while lock LOCK_KEY (of the register's lock group: the same directory) "
    "is held with VERSION (its fencing token); else refused 'fenced'.",
)


@click.group()
def register() -> None:
    """Linearizable compare-and-set registers of the lock service ([locks])."""


@register.command()
@click.argument("key")
@click.option(
    "--through-log", is_flag=True, help="Order the read through the Paxos log (a round trip more)."
)
@JSON_OPTION
@TIMEOUT_OPTION
@CONFIG_OPTION
def read(
    *, key: str, through_log: bool, as_json: bool, timeout_s: float, config_path: Path | None
) -> None:
    """Print register KEY: VERSION<TAB>VALUE, or 0 if it was never written."""

    async def call(client: AsyncClient) -> dict[str, object]:
        got = await client.register_read(key, through_log=through_log)
        return {"version": got.version, "value": got.value}

    _run(config_path, timeout_s, as_json, key, call)


@register.command()
@click.argument("key")
@click.argument("value")
@BASE64_OPTION
@FENCE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
@CONFIG_OPTION
def write(
    *,
    key: str,
    value: str,
    is_base64: bool,
    fence: tuple[str, int] | None,
    as_json: bool,
    timeout_s: float,
    config_path: Path | None,
) -> None:
    """Set register KEY to VALUE; print its new version."""
    data = _value(value, is_base64, "VALUE")

    async def call(client: AsyncClient) -> dict[str, object]:
        return {"version": await client.register_write(key, data, fence=fence)}

    _run(config_path, timeout_s, as_json, key, call)


@register.command()
@click.argument("key")
@click.argument("value")
@click.option("--expected", default=None, help="The value KEY must hold for the swap.")
@click.option("--unwritten", is_flag=True, help="Swap only if KEY was never written.")
@BASE64_OPTION
@FENCE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
@CONFIG_OPTION
def cas(
    *,
    key: str,
    value: str,
    expected: str | None,
    unwritten: bool,
    is_base64: bool,
    fence: tuple[str, int] | None,
    as_json: bool,
    timeout_s: float,
    config_path: Path | None,
) -> None:
    """Set register KEY to VALUE if it holds --expected (or, with --unwritten, was never
    written); print its new version. A mismatch exits 1 naming the current value."""
    if (expected is None) == (not unwritten):
        bad_input("give exactly one of --expected and --unwritten")
    old = None if expected is None else _value(expected, is_base64, "--expected")
    data = _value(value, is_base64, "VALUE")

    async def call(client: AsyncClient) -> dict[str, object]:
        return {"version": await client.register_cas(key, old, data, fence=fence)}

    _run(config_path, timeout_s, as_json, key, call)


def _value(text: str, is_base64: bool, name: str) -> bytes:
    if not is_base64:
        return text.encode("utf-8", "surrogateescape")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad_input(f"{name}: not base64: {exc}")
        raise  # unreachable: bad_input exits


def _run(config_path: Path | None, timeout_s: float, as_json: bool, key: str, call: Call) -> None:
    config = _load(config_path)
    if config.locks is None:
        bad_input("the cluster has no lock service ([locks]): registers live there")
    sys.exit(asyncio.run(_call(config, timeout_s, as_json, key, call)))


async def _call(
    config: ClusterConfig, timeout_s: float, as_json: bool, key: str, call: Call
) -> int:
    from net.client.api import AsyncClient, CasMismatch, OutcomeUnknown, RequestFailed

    call_timeout_ms = max(1, round(timeout_s * 1000))
    async with await AsyncClient.connect(config, call_timeout_ms=call_timeout_ms) as client:
        loop = asyncio.get_running_loop()
        if not await _reach(client, loop.time() + timeout_s):
            click.echo("pxq: register: no node of the cluster could be reached", err=True)
            return EXIT_FAILED
        try:
            result = await call(client)
        except (TypeError, ValueError) as exc:
            bad_input(str(exc))
            return EXIT_FAILED  # unreachable: bad_input exits
        except CasMismatch as exc:
            current = exc.current
            shown = "never written" if current is None else repr(_text(current))
            if as_json:
                doc = {"key": key, "ok": False, "version": exc.version}
                doc |= _value_json(current, "current")
                click.echo(json.dumps(doc))
            click.echo(
                f"pxq: cas mismatch: register {key!r} holds {shown} (version {exc.version})",
                err=True,
            )
            return EXIT_FAILED
        except (RequestFailed, OutcomeUnknown) as exc:
            click.echo(f"pxq: register: {exc}", err=True)
            return EXIT_FAILED
    version = result["version"]
    if as_json:
        doc = {"key": key, "ok": True, "version": version}
        if "value" in result:
            value = result["value"]
            doc |= _value_json(value if isinstance(value, bytes) else None, "value")
        click.echo(json.dumps(doc))
    elif "value" in result and isinstance(result["value"], bytes):
        click.echo(f"{version}\t{_text(result['value'])}")
    else:
        click.echo(str(version))
    return EXIT_OK


def _value_json(value: bytes | None, name: str) -> dict[str, object]:
    if value is None:
        return {name: None}
    return dict(bytes_json(value, name))
