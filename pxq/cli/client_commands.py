"""``pxq produce``, ``pxq consume``, ``pxq echo`` and ``pxq seek``: the client library on the
command line. ``produce --format`` reads keys, kinds and headers per line (``parse_line``);
``consume --json`` and ``pxq peek --json`` print items as JSON (``item_json``); ``seek
--dry-run`` previews a seek (``SeekPreview``).

Each command reads the cluster configuration from ``--config`` (default: ``./.pxq/cluster.toml``
if it exists, else the embedded default that ``pxq cluster up`` starts) and runs one
``pxq.AsyncClient`` on a fresh event loop. The client library (``net.client.api``) is imported
only when a command runs, so ``pxq --help`` stays fast.

Exit codes: 0 on success; 1 when an item failed or its outcome is unknown or a line could not
be read with ``--format`` (``produce``), when fewer than ``--count`` items arrived in time or no
node of the cluster could be reached before ``--timeout`` (``consume``), or when the echo item
was not seen in time (``echo``), or when a seek was refused or its outcome is unknown
(``seek``), or when the cluster file does not match the cluster (any command); 2 for bad input
(an invalid configuration, an unknown topic or group).

No command waits silently on a cluster it cannot reach: each warns on stderr, naming every
address it could not connect to and why, and gives up after its ``--timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input
from pxq.cli.log_options import log_options, setup_logging
from pxq.cli.output import LinePrinter
from pxq.topics import HEALTH_GROUP

if TYPE_CHECKING:
    from net.client.api import AsyncClient, AsyncConsumer, Item, Receipt
    from pxq.config.model import ClusterConfig

PRODUCE_WINDOW = 1000
"""Enqueues ``pxq produce`` keeps open at once (input lines read ahead of their receipts)."""
ECHO_KEY_TRIES_MAX = 10_000
"""Keys tried to find one that lands on a queue the echo group is subscribed to."""
ECHO_POLL_MS = 5
"""The echo consumer's longest wait between polls of an empty queue (keeps latency honest)."""
READY_POLL_S = 0.005
DENIED_POLL_S = 0.1
"""How often ``pxq consume`` looks for streams the store refused (``permission_denied``)."""
REACH_POLL_S = 1.0
"""How often ``pxq consume`` and ``pxq echo`` look again for a node they can reach."""

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cluster file (default: ./.pxq/cluster.toml if present, else the embedded default).",
)


def _load(config_path: Path | None) -> ClusterConfig:
    from net.client.api import resolve_config
    from net.errors import TlsError
    from net.tls import client_contexts
    from pxq.config.parser import ConfigError

    try:
        config = resolve_config(config_path)
        client_contexts(config)  # the client's TLS material is there and usable
    except (ConfigError, TlsError) as exc:
        bad_input(str(exc))
        raise  # unreachable: bad_input exits
    return config


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _text(data: bytes) -> str:
    """Bytes as one printable field: UTF-8, with backslash, tab, newline and CR escaped, and
    bytes that are not UTF-8 as ``\\xNN``."""
    text = data.decode("utf-8", "surrogateescape").translate(_ESCAPES)
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def _unreachable(client: AsyncClient) -> str:
    """Every node the client could not connect to, with why (each names its address)."""
    failures = client.unreachable()
    return "; ".join(f"{node}: {why}" for node, why in sorted(failures.items())) or "no answer"


async def _reach(client: AsyncClient, deadline: float) -> bool:
    """Wait (until ``deadline``, loop time) for a node of the cluster to accept the client,
    warning once naming every address that refuses; False if none did. A cluster file that
    does not match the cluster is an error (exit 1)."""
    from net.client.api import ClusterMismatch

    loop = asyncio.get_running_loop()
    warned = False
    while True:
        try:
            if await client.verify() is not None:
                return True
        except ClusterMismatch as exc:
            click.echo(f"pxq: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        if not warned:
            click.echo(f"pxq: warning: cannot reach the cluster: {_unreachable(client)}", err=True)
            warned = True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(REACH_POLL_S, remaining))


def _item_line(item: Item) -> str:
    return f"{item.queue}\t{item.offset}\t{_text(item.key)}\t{_text(item.payload)}"


def bytes_json(data: bytes, name: str) -> dict[str, str]:
    """``{name: text}`` for UTF-8 ``data``, else ``{name_b64: base64}`` (JSON holds no
    bytes; ``pxq produce --format json`` reads both forms)."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode("ascii")}


def item_json(item: Item) -> dict[str, object]:
    """An item as one JSON object (``pxq consume --json`` and ``pxq peek --json``)."""
    out: dict[str, object] = {"topic": item.topic, "queue": item.queue, "offset": item.offset}
    out.update(bytes_json(item.key, "key"))
    out.update(bytes_json(item.payload, "payload"))
    out.update(
        kind=item.kind,
        attempt=item.attempt,
        enqueued_ms=item.enqueued_ms,
        headers=dict(item.headers),
    )
    return out


# --------------------------------------------------------------------------------------------
# produce

LINE_FORMATS = ("text", "kv", "json")
"""``pxq produce --format``: what one input line is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LineItem:
    """One input line of ``pxq produce`` as the item to enqueue."""

    payload: bytes
    key: bytes | str | None
    kind: str
    headers: dict[str, str]


def _json_bytes(obj: dict[str, object], name: str) -> bytes | str | None:
    """Field ``name`` (a str) or ``name_b64`` (base64) of a json line; None if neither."""
    text, b64 = obj.get(name), obj.get(f"{name}_b64")
    if text is not None and b64 is not None:
        raise ValueError(f"give {name} or {name}_b64, not both")
    if b64 is not None:
        if not isinstance(b64, str):
            raise ValueError(f"{name}_b64 must be a base64 string")
        try:
            return base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"{name}_b64: {exc}") from None
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{name} must be a string (or {name}_b64 for bytes)")
    return text


def parse_line(
    line: bytes, line_format: str, *, key: str | None, kind: str, headers: dict[str, str]
) -> LineItem:
    """The item of one input line (without its newline); ``key``, ``kind`` and ``headers``
    are the options' values, which a line's own fields override. Raises ``ValueError``
    saying what is wrong with the line (headers checked against ``pxq.headers``)."""
    from pxq.headers import normal_headers

    if line_format == "text":
        return LineItem(payload=line, key=key, kind=kind, headers=headers)
    if line_format == "kv":
        kv_key, sep, kv_payload = line.partition(b"\t")
        if not sep:
            raise ValueError("no tab between KEY and PAYLOAD")
        return LineItem(payload=kv_payload, key=kv_key, kind=kind, headers=headers)
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(obj) - {"payload", "payload_b64", "key", "key_b64", "kind", "headers"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    payload = _json_bytes(obj, "payload")
    if payload is None:
        raise ValueError("no payload (or payload_b64)")
    line_key = _json_bytes(obj, "key")
    line_kind = obj.get("kind", kind)
    if not isinstance(line_kind, str):
        raise ValueError("kind must be a string")
    line_headers = obj.get("headers", {})
    if not isinstance(line_headers, dict):
        raise ValueError("headers must be an object of strings")
    merged = {**headers, **line_headers}
    try:
        normal_headers(merged)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return LineItem(
        payload=payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload,
        key=key if line_key is None else line_key,
        kind=line_kind,
        headers=merged,
    )


@click.command("produce")
@click.option("--topic", required=True, help="Topic to enqueue on.")
@click.option(
    "--key", default=None, help="Key of every item (default: none; keyless items are spread)."
)
@click.option("--kind", default="", help="Kind of every item (default: the default kind).")
@click.option(
    "--format",
    "line_format",
    type=click.Choice(LINE_FORMATS),
    default="text",
    show_default=True,
    help="text: each line is a payload; kv: KEY<TAB>PAYLOAD; json: an object "
    '{"payload": ..., "key": ..., "kind": ..., "headers": {...}} (payload_b64 and key_b64 '
    "for bytes; each field but the payload optional).",
)
@click.option(
    "--header",
    "header_args",
    multiple=True,
    metavar="NAME=VALUE",
    help="A header of every item (repeatable); a json line's own headers win.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Give up on an item after this many seconds (default 10): not enqueued if no node "
    "could be reached (the addresses are named), else its outcome is unknown.",
)
@click.option(
    "--call-timeout-ms",
    type=click.IntRange(min=1),
    default=None,
    help="The same as --timeout, in ms.",
)
@CONFIG_OPTION
def produce(
    *,
    topic: str,
    key: str | None,
    kind: str,
    line_format: str,
    header_args: tuple[str, ...],
    timeout_s: float | None,
    call_timeout_ms: int | None,
    config_path: Path | None,
) -> None:
    """Enqueue one item per line of stdin; print each receipt (TOPIC QUEUE OFFSET, tab
    separated) in input order. Items with the same key keep their order.

    A line that --format cannot read is reported on stderr with its number and not
    enqueued (exit 1 at the end); the other lines go on."""
    if timeout_s is not None:
        call_timeout_ms = max(1, round(timeout_s * 1000))
    config = _load(config_path)
    if config.base_topic(topic) is None:
        bad_input(f"no topic {topic!r} in the configuration")
    headers: dict[str, str] = {}
    for arg in header_args:
        name, sep, value = arg.partition("=")
        if not sep:
            bad_input(f"--header {arg!r}: expected NAME=VALUE")
        headers[name] = value
    from pxq.headers import normal_headers

    try:
        normal_headers(headers)
    except ValueError as exc:
        bad_input(f"--header: {exc}")
    failed = asyncio.run(
        _produce(
            config,
            topic=topic,
            key=key,
            kind=kind,
            call_timeout_ms=call_timeout_ms,
            stdin=sys.stdin.buffer,
            line_format=line_format,
            headers=headers,
        )
    )
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


async def _produce(
    config: ClusterConfig,
    *,
    topic: str,
    key: str | None,
    kind: str,
    call_timeout_ms: int | None,
    stdin: BinaryIO,
    line_format: str = "text",
    headers: dict[str, str] | None = None,
) -> int:
    from net.client.api import AsyncClient, EnqueueFailed, OutcomeUnknown

    loop = asyncio.get_running_loop()
    window: asyncio.Queue[tuple[int, asyncio.Task[Receipt]] | None] = asyncio.Queue(
        maxsize=PRODUCE_WINDOW
    )
    failed = 0

    async def report() -> None:
        nonlocal failed
        while (entry := await window.get()) is not None:
            line_no, task = entry
            try:
                r = await task
            except EnqueueFailed as exc:
                failed += 1
                click.echo(f"pxq: line {line_no}: not enqueued: {exc}", err=True)
            except OutcomeUnknown as exc:
                failed += 1
                click.echo(f"pxq: line {line_no}: {exc}", err=True)
            else:
                click.echo(f"{r.topic}\t{r.queue}\t{r.offset}")

    async with await AsyncClient.connect(config, call_timeout_ms=call_timeout_ms) as client:
        # Say at once when nothing answers (each failed line names the addresses too).
        await _reach(client, loop.time())
        reporter = loop.create_task(report())
        line_no = 0
        while True:
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            line_no += 1
            try:
                item = parse_line(
                    line.removesuffix(b"\n").removesuffix(b"\r"),
                    line_format,
                    key=key,
                    kind=kind,
                    headers=headers or {},
                )
            except ValueError as exc:
                failed += 1
                click.echo(f"pxq: line {line_no}: not enqueued: {exc}", err=True)
                continue
            # Tasks start in creation order, so the producer sees the lines in input order.
            task = loop.create_task(
                client.enqueue(
                    topic, item.payload, key=item.key, kind=item.kind, headers=item.headers
                )
            )
            await window.put((line_no, task))
        await window.put(None)
        await reporter
    sys.stdout.flush()
    return failed


# --------------------------------------------------------------------------------------------
# consume


@click.command("consume")
@click.option("--group", required=True, help="Consumer group to consume for.")
@click.option("--topic", default=None, help="Topic (default: every topic the group consumes).")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many items (then exactly these are committed).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds without a new item (default: never).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per item (topic, queue, offset, key, payload, kind, attempt, "
    "enqueued_ms, headers) instead of the tab-separated line.",
)
@CONFIG_OPTION
@log_options("warning")
def consume(
    *,
    group: str,
    topic: str | None,
    count: int | None,
    timeout_s: float | None,
    as_json: bool,
    config_path: Path | None,
    log_level: str,
    log_format: str,
) -> None:
    """Print items of GROUP, one per line (QUEUE OFFSET KEY PAYLOAD, tab separated; tab,
    newline and backslash escaped), committing each batch once it is printed.

    Items arrive in offset order per queue, at least once: an item printed by a consume that
    was killed before its commit is printed again by the next one. Items of the group's
    retry levels show the retry level's queue and offset. Logs go to stderr (--log-level info
    shows which queues this consumer takes and gives up)."""
    setup_logging(log_level, log_format)
    config = _load(config_path)
    consumed = [t.name for t in config.topics if t.group(group) is not None]
    if not consumed:
        bad_input(f"no topic has a consumer group named {group!r}")
    if topic is not None and topic not in consumed:
        bad_input(f"consumer group {group!r} does not consume topic {topic!r}")
    try:
        printed = asyncio.run(
            _consume(config, group, topic, count, timeout_s, item_json_lines=as_json)
        )
    except ValueError as exc:  # the group's topics need one consumer each (see --topic)
        bad_input(str(exc))
        return
    sys.exit(EXIT_FAILED if count is not None and printed < count else EXIT_OK)


async def _consume(
    config: ClusterConfig,
    group: str,
    topic: str | None,
    count: int | None,
    timeout_s: float | None,
    *,
    item_json_lines: bool = False,
) -> int:
    from net.client.api import AsyncClient

    loop = asyncio.get_running_loop()
    # With --count, one item per delivery: a delivery is committed as a whole, so this is
    # what makes "exactly the printed items are committed" hold.
    options = {"get_items_max": 1} if count is not None else {}
    printed = 0
    last = loop.time()
    async with await AsyncClient.connect(config) as client:
        # Warn (naming the addresses) when no node answers; keep trying until --timeout.
        reached = await _reach(client, loop.time())
        consumer = client.consumer(group, topic, options=options)

        async def reach_watch() -> None:
            nonlocal reached
            while not reached:
                await asyncio.sleep(REACH_POLL_S)
                reached = await client.verify() is not None

        async def watchdog() -> None:
            if timeout_s is None:
                return
            while True:
                idle = loop.time() - last
                if idle >= timeout_s:
                    consumer.stop()
                    return
                await asyncio.sleep(timeout_s - idle)

        async def denied_watch() -> None:
            # A refusal for lack of permission does not go away by waiting: say so, stop.
            while not consumer.denied:
                await asyncio.sleep(DENIED_POLL_S)
            consumer.stop()

        dog = loop.create_task(watchdog())
        denied_dog = loop.create_task(denied_watch())
        # Printed by a thread of its own: a slow reader must not stall the loop that commits
        # and renews this consumer's leases (pxq.cli.output). A batch is committed once its
        # lines were written; a failed write leaves the loop, uncommitted.
        sys.stdout.flush()
        printer = LinePrinter.stdout()
        reach_dog = loop.create_task(reach_watch())
        try:
            async with consumer:
                async for batch in consumer.batches():
                    await printer.write(
                        "".join(
                            (json.dumps(item_json(item)) if item_json_lines else _item_line(item))
                            + "\n"
                            for item in batch
                        )
                    )
                    printed += len(batch)
                    last = loop.time()
                    if count is not None and printed >= count:
                        consumer.stop()  # this batch is still committed
        except BrokenPipeError:
            click.echo("pxq: consume: stdout closed; the batch not printed comes again", err=True)
            sys.exit(EXIT_FAILED)
        finally:
            dog.cancel()
            denied_dog.cancel()
            printer.close()
            reach_dog.cancel()
        if not reached:
            click.echo(
                f"pxq: consume: no node of the cluster could be reached"
                f"{f' within {timeout_s:g} s' if timeout_s else ''}: {_unreachable(client)}",
                err=True,
            )
            sys.exit(EXIT_FAILED)
    if consumer.denied:
        lacks = ", ".join(consumer.denied)
        click.echo(f"pxq: permission denied: the principal lacks {lacks}", err=True)
        sys.exit(EXIT_FAILED)
    return printed


# --------------------------------------------------------------------------------------------
# seek


@click.command("seek")
@click.option("--group", required=True, help="Consumer group to move.")
@click.option("--topic", required=True, help="Topic.")
@click.option(
    "--queue",
    type=click.IntRange(min=0),
    default=None,
    help="Queue (default: every queue the group consumes).",
)
@click.option(
    "--back-ms",
    type=click.IntRange(min=0),
    default=None,
    help="Rewind by this many ms on the store's time (replay the last N ms); never forward.",
)
@click.option("--offset", type=click.IntRange(min=0), default=None, help="To this offset.")
@click.option(
    "--time-ms",
    type=int,
    default=None,
    help="To the first item stamped at or after this wall time (Unix ms; masters' clocks).",
)
@click.option(
    "--back",
    "back_text",
    default=None,
    metavar="DURATION",
    help="Like --back-ms, as a duration: 90s, 5m, 1h30m, 2d, 250ms.",
)
@click.option(
    "--time",
    "time_text",
    default=None,
    metavar="TIME",
    help="Like --time-ms, as an ISO 8601 time (2026-12-07T06:40:00Z; no zone: UTC).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Move nothing: print where each queue would move if the seek were applied now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.001),
    default=10.0,
    show_default=True,
    help="Give up after this many seconds (the addresses that could not be reached are named).",
)
@CONFIG_OPTION
def seek(
    *,
    group: str,
    topic: str,
    queue: int | None,
    back_ms: int | None,
    offset: int | None,
    time_ms: int | None,
    back_text: str | None,
    time_text: str | None,
    dry_run: bool,
    as_json: bool,
    timeout_s: float,
    config_path: Path | None,
) -> None:
    """Move GROUP's cursor on TOPIC: print each queue it set (QUEUE CURSOR, tab separated).

    Exactly one of --back-ms/--back (a rewind measured on the store's clock, which stamped
    the items: it never moves a cursor forward, whatever this machine's clock says),
    --offset or --time-ms/--time (absolute, either way). An absolute seek that moves a
    cursor forward skips the items the group had not consumed: a warning on stderr names
    them. --dry-run asks each queue's master where the seek would move it now."""
    if back_text is not None:
        try:
            back_ms = _both(back_ms, parse_duration_ms(back_text), "--back-ms", "--back")
        except ValueError as exc:
            bad_input(f"--back {back_text!r}: {exc}")
    if time_text is not None:
        try:
            time_ms = _both(time_ms, parse_time_ms(time_text), "--time-ms", "--time")
        except ValueError as exc:
            bad_input(f"--time {time_text!r}: {exc}")
    config = _load(config_path)
    info = config.topic(topic)
    if info is None or info.level != 0:
        bad_input(f"no topic {topic!r} in the configuration")
    elif info.group(group) is None:
        bad_input(f"consumer group {group!r} does not consume topic {topic!r}")
    elif queue is not None and not queue < info.queues:
        bad_input(f"topic {topic!r} has queues 0..{info.queues - 1}")
    if sum(t is not None for t in (back_ms, offset, time_ms)) != 1:
        bad_input("give exactly one of --back-ms (--back), --offset and --time-ms (--time)")
    ok = asyncio.run(
        _seek(
            config,
            group=group,
            topic=topic,
            queue=queue,
            back_ms=back_ms,
            offset=offset,
            time_ms=time_ms,
            dry_run=dry_run,
            as_json=as_json,
            timeout_s=timeout_s,
        )
    )
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


async def _seek(
    config: ClusterConfig,
    *,
    group: str,
    topic: str,
    queue: int | None,
    back_ms: int | None,
    offset: int | None,
    time_ms: int | None,
    dry_run: bool = False,
    as_json: bool = False,
    timeout_s: float = 10.0,
) -> bool:
    from net.client.api import AsyncClient, OutcomeUnknown, RequestFailed

    call_timeout_ms = max(1, round(timeout_s * 1000))
    async with await AsyncClient.connect(config, call_timeout_ms=call_timeout_ms) as client:
        await _reach(client, asyncio.get_running_loop().time())
        try:
            result = await client.seek(
                topic,
                group,
                queue,
                offset=offset,
                time_ms=time_ms,
                back_ms=back_ms,
                dry_run=dry_run,
            )
        except (RequestFailed, OutcomeUnknown) as exc:
            click.echo(f"pxq: seek failed: {exc}", err=True)
            return False
    if as_json:
        doc = {
            "dry_run": dry_run,
            "positions": {str(q): c for q, c in sorted(result.positions.items())},
            "forward": {str(q): c for q, c in sorted(result.forward.items())},
        }
        click.echo(json.dumps(doc))
    else:
        for q, cursor in sorted(result.positions.items()):
            click.echo(f"{q}\t{cursor}")
    if dry_run:
        click.echo("pxq: dry run: nothing moved", err=True)
    verb = "would move" if dry_run else "moved"
    for q, before in sorted(result.forward.items()):
        after = result.positions[q]
        click.echo(
            f"pxq: warning: queue {q} {verb} forward from {before} to {after}: "
            f"{after - before} items {group!r} had not consumed will not be delivered to it",
            err=True,
        )
    return True


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """Milliseconds of a duration such as ``90s``, ``5m``, ``1h30m``, ``250ms`` (units ms, s,
    m, h, d; at least one part); raises ``ValueError``."""
    pos, total = 0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError("expected a duration such as 90s, 5m, 1h30m, 2d or 250ms")
    return total


def parse_time_ms(text: str) -> int:
    """Unix ms of an ISO 8601 time (no zone: UTC); raises ``ValueError``."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an ISO 8601 time such as 2026-12-07T06:40:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _both(given: int | None, parsed: int, name: str, other: str) -> int:
    if given is not None:
        raise ValueError(f"give {name} or {other}, not both")
    return parsed


# --------------------------------------------------------------------------------------------
# echo


@click.command("echo")
@click.option("--topic", default=None, help="Topic (default: the first one).")
@click.option(
    "--group",
    default=None,
    help=f"Consumer group (default: {HEALTH_GROUP}, reserved for health checks on every topic).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Give up (exit 1) if the item is not seen within this many seconds.",
)
@CONFIG_OPTION
def echo(topic: str | None, group: str | None, timeout_s: float, config_path: Path | None) -> None:
    """Enqueue one item with a unique payload, consume until it is seen, and print the
    enqueue and round-trip latencies (PhxQueue's echo test).

    The echo consumes for the reserved group pxq-health (every topic has it; it holds back no
    retention), so it moves no user group's cursor. The item itself stays on the topic: user
    groups consume it like any other (its payload starts with "pxq-echo ")."""
    config = _load(config_path)
    chosen = [t for t in config.topics if topic in (None, t.name)]
    if not chosen:
        bad_input(f"no topic {topic!r} in the configuration" if topic else "no topic configured")
        return
    t = chosen[0]
    cg = t.group(HEALTH_GROUP if group is None else group)
    if cg is None:
        bad_input(f"topic {t.name!r} has no consumer group {group!r}")
        return
    from pxq.routing import queue_of

    nonce = os.urandom(8).hex()
    for i in range(ECHO_KEY_TRIES_MAX):
        key = f"pxq-echo-{nonce}-{i}"
        queue = queue_of(key.encode(), t.queues)
        if cg.subscribes_queue(queue):
            break
    else:
        bad_input(f"group {cg.name!r} is subscribed to no queue of {t.name!r}")
        return
    payload = f"pxq-echo {nonce} {time.time_ns()}".encode()
    ok = asyncio.run(
        _echo(
            config,
            topic=t.name,
            group=cg.name,
            key=key,
            queue=queue,
            payload=payload,
            timeout_s=timeout_s,
        )
    )
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


async def _echo(
    config: ClusterConfig,
    *,
    topic: str,
    group: str,
    key: str,
    queue: int,
    payload: bytes,
    timeout_s: float,
) -> bool:
    from net.client.api import AsyncClient, PxqError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen = asyncio.Event()
    seen_at = 0.0
    call_timeout_ms = max(1, int(timeout_s * 1000))
    async with await AsyncClient.connect(config, call_timeout_ms=call_timeout_ms) as client:
        if not await _reach(client, deadline):
            click.echo(
                f"pxq: echo: no node of the cluster could be reached within {timeout_s:g} s: "
                f"{_unreachable(client)}",
                err=True,
            )
            return False
        consumer = client.consumer(
            group,
            topic,
            [queue],
            options={"poll_empty_ms": 1, "poll_empty_max_ms": ECHO_POLL_MS},
        )

        async def watch() -> None:
            nonlocal seen_at
            async for batch in consumer.batches():
                if any(item.payload == payload for item in batch):
                    seen_at = time.perf_counter()
                    seen.set()
                    consumer.stop()

        async with consumer:
            watcher = loop.create_task(watch())
            # Start the clock once the consumer is polling, so the figure is the queue's.
            await _until_polling(consumer, deadline)
            start = time.perf_counter()
            try:
                receipt = await asyncio.wait_for(
                    client.enqueue(topic, payload, key=key), max(0.001, deadline - loop.time())
                )
            except (PxqError, TimeoutError) as exc:
                # str() of a TimeoutError is empty: the reason must never be.
                reason = str(exc) or f"no answer within {timeout_s:g} s ({_unreachable(client)})"
                click.echo(f"pxq: echo: enqueue failed: {reason}", err=True)
                consumer.stop()
                await watcher
                return False
            acked = time.perf_counter()
            try:
                async with asyncio.timeout(max(0.001, deadline - loop.time())):
                    await seen.wait()
            except TimeoutError:
                click.echo(
                    f"pxq: echo: item {topic}/{receipt.queue}@{receipt.offset} not seen "
                    f"within {timeout_s:g} s",
                    err=True,
                )
                consumer.stop()
                await watcher
                return False
            await watcher
    click.echo(
        f"echo {topic}/{receipt.queue}@{receipt.offset} group {group}: "
        f"enqueue {(acked - start) * 1000:.1f} ms, round trip {(seen_at - start) * 1000:.1f} ms"
    )
    return True


async def _until_polling(consumer: AsyncConsumer, deadline: float) -> None:
    """Wait (bounded) until the echo consumer's streams have read their cursors."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        views = consumer.machine.streams().values()
        if views and all(v.phase != "cursor" for v in views):
            return
        await asyncio.sleep(READY_POLL_S)


def register(group: click.Group) -> None:
    """Add ``produce``, ``consume``, ``echo`` and ``seek`` to the ``pxq`` command group."""
    for command in (produce, consume, echo, seek):
        group.add_command(command)
