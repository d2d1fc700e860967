"""``pxq groups``, ``pxq peek`` and ``pxq dlq list|redrive``: an operator's view of consumer
groups and dead letters on a running cluster (``net.client.admin`` says how each is read).

Every command takes ``--json`` (one JSON document on stdout instead of the table) and the
cluster file from ``--config`` as the client commands do.

Exit codes: 0 on success; 1 when the cluster refused the request or did not answer in time
(the message on stderr says which); 2 for bad
input (an invalid configuration, an unknown topic, group or queue, a bad option).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pxq.cli.client_commands import CONFIG_OPTION, _item_line, _load, item_json
from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

if TYPE_CHECKING:
    from net.client.admin import QueueState, Redriven
    from net.client.api import Item
    from pxq.config.model import ClusterConfig

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _fail(message: str) -> None:
    click.echo(f"pxq: {message}", err=True)
    sys.exit(EXIT_FAILED)


def _check_selection(config: ClusterConfig, group: str | None, topic: str | None) -> None:
    from net.client.admin import group_targets
    from net.client.types import RequestFailed

    try:
        group_targets(config, group, topic)
    except RequestFailed as exc:
        bad_input(exc.message)


def _table(rows: list[QueueState], *, owners: bool) -> None:
    head = ["group", "topic", "queue", "cursor", "end", "lag"]
    if owners:
        head += ["owner", "token"]
    lines = [head]
    for r in rows:
        line = [r.group, r.topic, str(r.queue), str(r.cursor), str(r.end), str(r.lag)]
        if owners:
            line += [r.owner or "-", str(r.token) if r.owner else "-"]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    numeric = {2, 3, 4, 5, 7}
    for line in lines:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


# --------------------------------------------------------------------------------------------
# groups


@click.command("groups")
@click.option("--group", default=None, help="Only this consumer group (default: all).")
@click.option("--topic", default=None, help="Only this topic (default: all).")
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(min=0.05),
    default=None,
    metavar="SECONDS",
    help="Sample every SECONDS until --samples or Ctrl-C; with --json one line per sample "
    '({"type": "groups", "t_ms": ..., "rows": [...]}), what pxq plot --groups draws.',
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="With --watch: stop after this many samples (default: never).",
)
@JSON_OPTION
@CONFIG_OPTION
def groups(
    *,
    group: str | None,
    topic: str | None,
    watch_s: float | None,
    samples: int | None,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Per consumer group, topic and queue: the committed cursor, the end offset, the lag
    (end - cursor: items the group has not passed yet), and the consumer owning the queue
    with its fencing token (from the lock service; "-" when no consumer holds it).

    With --watch a sample that fails is reported on stderr and the watch goes on (exit 1 at
    the end)."""
    config = _load(config_path)
    _check_selection(config, group, topic)
    if samples is not None and watch_s is None:
        bad_input("--samples needs --watch")
    if watch_s is not None:
        try:
            failed = asyncio.run(_watch(config, group, topic, watch_s, samples, as_json=as_json))
        except KeyboardInterrupt:
            failed = 0
        sys.exit(EXIT_FAILED if failed else EXIT_OK)
    rows = asyncio.run(_groups(config, group, topic, dead_letters=False))
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
    else:
        _table(rows, owners=True)
    sys.exit(EXIT_OK)


async def _watch(
    config: ClusterConfig,
    group: str | None,
    topic: str | None,
    every_s: float,
    samples: int | None,
    *,
    as_json: bool,
) -> int:
    """Sample ``groups`` every ``every_s`` (on the loop's clock, without drift); the number
    of samples that failed."""
    import time

    from net.client.api import AsyncClient, OutcomeUnknown, RequestFailed

    loop = asyncio.get_running_loop()
    failed = taken = 0
    start = loop.time()
    async with await AsyncClient.connect(config) as client:
        while samples is None or taken < samples:
            at_ms = int(time.time() * 1000)
            try:
                rows = await client.groups(group, topic)
            except (RequestFailed, OutcomeUnknown) as exc:
                failed += 1
                click.echo(f"pxq: sample at {at_ms}: {exc}", err=True)
            else:
                if as_json:
                    doc = {"type": "groups", "t_ms": at_ms, "rows": [r.as_json() for r in rows]}
                    click.echo(json.dumps(doc))
                else:
                    click.echo(f"-- {time.strftime('%H:%M:%S', time.localtime(at_ms / 1000))}")
                    _table(rows, owners=True)
                sys.stdout.flush()
            taken += 1
            if samples is None or taken < samples:
                await asyncio.sleep(max(0.0, start + taken * every_s - loop.time()))
    return failed


async def _groups(
    config: ClusterConfig, group: str | None, topic: str | None, *, dead_letters: bool
) -> list[QueueState]:
    from net.client.api import AsyncClient, OutcomeUnknown, RequestFailed

    async with await AsyncClient.connect(config) as client:
        try:
            if dead_letters:
                return await client.dead_letters(group, topic)
            return await client.groups(group, topic)
        except (RequestFailed, OutcomeUnknown) as exc:
            _fail(str(exc))
            raise  # unreachable: _fail exits


# --------------------------------------------------------------------------------------------
# peek


@click.command("peek")
@click.option("--topic", required=True, help="Topic (or a derived one: TOPIC.dlq.GROUP).")
@click.option("--group", required=True, help="Consumer group whose view (kinds) to read.")
@click.option("--queue", type=click.IntRange(min=0), required=True, help="Queue.")
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=None,
    help="First offset (default: the group's committed cursor).",
)
@click.option("--count", type=click.IntRange(min=0, max=10_000), default=10, show_default=True)
@JSON_OPTION
@CONFIG_OPTION
def peek(
    *,
    topic: str,
    group: str,
    queue: int,
    offset: int | None,
    count: int,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Print up to COUNT items of a queue as GROUP would get them, committing nothing: one
    per line (QUEUE OFFSET KEY PAYLOAD, tab separated, as pxq consume prints them), or with
    --json one object per line with kind, attempt, stamp and headers too."""
    config = _load(config_path)
    info = config.topic(topic)
    if info is None:
        bad_input(f"no topic {topic!r} in the configuration")
    elif info.group(group) is None:
        bad_input(f"consumer group {group!r} does not read topic {topic!r}")
    elif queue >= info.queues:
        bad_input(f"topic {topic!r} has queues 0..{info.queues - 1}")
    items = asyncio.run(_peek(config, topic, group, queue, offset=offset, count=count))
    for item in items:
        click.echo(json.dumps(item_json(item)) if as_json else _item_line(item))
    sys.exit(EXIT_OK)


async def _peek(
    config: ClusterConfig, topic: str, group: str, queue: int, *, offset: int | None, count: int
) -> list[Item]:
    from net.client.api import AsyncClient, OutcomeUnknown, RequestFailed

    async with await AsyncClient.connect(config) as client:
        try:
            return await client.peek(topic, group, queue, offset=offset, count=count)
        except (RequestFailed, OutcomeUnknown) as exc:
            _fail(f"peek failed: {exc}")
            raise  # unreachable


# --------------------------------------------------------------------------------------------
# dlq


@click.group("dlq")
def dlq() -> None:
    """Dead letters: items that failed every retry level of a consumer group."""


@dlq.command("list")
@click.option("--group", default=None, help="Only this consumer group (default: all).")
@click.option("--topic", default=None, help="Only this topic (default: all).")
@JSON_OPTION
@CONFIG_OPTION
def dlq_list(group: str | None, topic: str | None, as_json: bool, config_path: Path | None) -> None:
    """Per consumer group, topic and queue: the dead-letter cursor (where the last redrive
    stopped), the dead-letter end offset and the dead letters waiting (lag). Read them with
    pxq peek --topic TOPIC.dlq.GROUP."""
    config = _load(config_path)
    _check_selection(config, group, topic)
    rows = asyncio.run(_groups(config, group, topic, dead_letters=True))
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
    else:
        _table(rows, owners=False)
    sys.exit(EXIT_OK)


@dlq.command("redrive")
@click.option("--topic", required=True, help="Base topic whose dead letters to redrive.")
@click.option("--group", required=True, help="Consumer group whose dead letters.")
@click.option(
    "--queue", type=click.IntRange(min=0), default=None, help="Queue (default: every one)."
)
@click.option(
    "--count",
    "count_max",
    type=click.IntRange(min=0),
    default=None,
    help="At most this many per queue (default: all there are at the start).",
)
@JSON_OPTION
@CONFIG_OPTION
def dlq_redrive(
    *,
    topic: str,
    group: str,
    queue: int | None,
    count_max: int | None,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Enqueue GROUP's dead letters again on TOPIC (same queue, key, payload, kind and
    headers; new offsets), then move the dead-letter cursor past them. Idempotent: run it
    again after a failure, nothing is enqueued twice (the store's dedupe). Every group
    subscribed to the queue gets the items again, not only GROUP: a warning names the others.
    Prints per queue: QUEUE MOVED CURSOR (tab separated)."""
    config = _load(config_path)
    info = config.topic(topic)
    if info is None or info.level != 0:
        bad_input(f"no topic {topic!r} in the configuration")
        return
    cg = info.group(group)
    if cg is None:
        bad_input(f"consumer group {group!r} does not consume topic {topic!r}")
        return
    if queue is not None and (queue >= info.queues or not cg.subscribes_queue(queue)):
        bad_input(f"group {group!r} is not subscribed to queue {queue} of {topic!r}")
    queues = range(info.queues) if queue is None else (queue,)
    others = sorted(
        {g.name for q in queues if cg.subscribes_queue(q) for g in info.subscribers_of(q)} - {group}
    )
    if others:
        click.echo(
            f"pxq: warning: the redriven items go to every group of {topic!r} on their "
            f"queue: {', '.join(others)} get(s) them again too",
            err=True,
        )
    done = asyncio.run(_redrive(config, topic, group, queue, count_max))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "queue": r.queue,
                        "moved": r.moved,
                        "duplicates": r.duplicates,
                        "cursor": r.cursor,
                        "offsets": list(r.offsets),
                    }
                    for r in done
                ],
                indent=1,
            )
        )
    else:
        for r in done:
            click.echo(f"{r.queue}\t{r.moved}\t{r.cursor}")
    sys.exit(EXIT_OK)


async def _redrive(
    config: ClusterConfig, topic: str, group: str, queue: int | None, count_max: int | None
) -> list[Redriven]:
    from net.client.api import AsyncClient, OutcomeUnknown, RequestFailed

    async with await AsyncClient.connect(config) as client:
        try:
            return await client.redrive(topic, group, queue, count_max=count_max)
        except (RequestFailed, OutcomeUnknown) as exc:
            _fail(f"redrive failed (run it again: it is idempotent): {exc}")
            raise  # unreachable


def register(group: click.Group) -> None:
    """Add ``groups``, ``peek`` and ``dlq`` to the ``pxq`` command group."""
    for command in (groups, peek, dlq):
        group.add_command(command)
