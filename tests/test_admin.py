"""The operator's commands and item headers against a real local cluster (3 store replicas and
3 lock replicas, in process, over loopback TCP and LMDB).

Goal: headers travel end to end (client API, store, consumer delivery, retry level, dead
letters, redrive, ``pxq consume --json``, ``pxq peek --json``); ``groups`` reports each
queue's cursor, end, lag and the consumer owning it with its fencing token; a seek dry run
reports the seek and moves nothing; ``dlq list`` counts dead letters and ``dlq redrive``
re-enqueues them once, also when run again after a redrive interrupted between its enqueue
and its cursor commit; the CLI commands print what the API returns, with their exit codes;
``-h`` works on every command.

Method: one module-scoped cluster; each test uses its own topic. CLI commands run in process
through click's ``CliRunner`` (each on a fresh event loop, as the ``pxq`` process would).
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from net.client.admin import redrive_producer
from net.client.api import AsyncClient, Item
from pxq.cli import main
from pxq.store.messages import Enqueue, EnqueueOk
from pxq.store.messages import Item as StoreItem
from tests.test_client_support import (
    BackgroundCluster,
    cluster_toml,
    free_ports,
    run_async,
)

LOCKS = """
[locks]
groups = 1
[ownership]
lease_ms = 2000
margin_ms = 400
renew_ms = 500
poll_ms = 100
"""

TOPICS = """
[[topics]]
name = "hdr"
queues = 2
[[topics.consumer_groups]]
name = "g"
retries = [{ delay_ms = 20 }]
[[topics.consumer_groups]]
name = "other"

[[topics]]
name = "own"
queues = 2
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "dry"
queues = 1
[topics.retention]
hold_items = 100
[[topics.consumer_groups]]
name = "g"

[[topics]]
name = "cli"
queues = 2
[[topics.consumer_groups]]
name = "g"
"""

FAST = {"poll_empty_ms": 2, "poll_empty_max_ms": 20}
WAIT_S = 15.0
H = {"trace-id": "ab12", "source": "web"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundCluster]:
    ports = free_ports(6)
    locks = LOCKS + "".join(
        f'[[locks.replicas]]\nnode = "l{i}"\nport = {p}\n' for i, p in enumerate(ports[3:])
    )
    root = tmp_path_factory.mktemp("admin")
    cluster = BackgroundCluster(root, cluster_toml(ports[:3], locks + TOPICS))
    try:
        yield cluster
    finally:
        cluster.stop()


async def wait_for(predicate: Callable[[], object], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not await predicate() if asyncio.iscoroutinefunction(predicate) else not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def cli(cluster: BackgroundCluster, *args: str, stdin: str = "") -> Result:
    return CliRunner().invoke(
        main, [*args, "--config", str(cluster.config_path)], input=stdin, catch_exceptions=False
    )


# --------------------------------------------------------------------------------------------


def test_headers_travel_through_delivery_retry_dead_letters_and_redrive(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            poison = await client.enqueue("hdr", b"poison", key="a", headers=H)
            plain = await client.enqueue("hdr", b"plain", key="a")
            seen: list[Item] = []

            def handle(item: Item) -> None:
                seen.append(item)
                if item.payload == b"poison":
                    raise ValueError("handler failed")

            async def dead() -> bool:
                rows = await client.dead_letters("g", "hdr")
                return sum(r.lag for r in rows) == 1

            async with client.consumer("g", "hdr", options=FAST) as consumer:
                task = asyncio.create_task(consumer.run(handle))
                await wait_for(dead, "the poison item to reach the dead letters")
                consumer.stop()
                await task
            delivered = {(i.payload, i.attempt): dict(i.headers) for i in seen}
            assert delivered[(b"poison", 0)] == H and delivered[(b"poison", 1)] == H
            assert delivered[(b"plain", 0)] == {}
            (letter,) = await client.peek("hdr.dlq.g", "g", poison.queue)
            assert (letter.payload, letter.attempt, dict(letter.headers)) == (b"poison", 2, H)

            ends = {r.queue: r.end for r in await client.groups("other", "hdr")}
            done = await client.redrive("hdr", "g", poison.queue)
            assert [(r.moved, r.duplicates, r.cursor) for r in done] == [(1, 0, 1)]
            again = await client.redrive("hdr", "g")  # nothing waits any more
            assert all(r.moved == 0 for r in again)
            (back,) = await client.peek("hdr", "other", poison.queue, offset=ends[poison.queue])
            assert (back.payload, back.attempt, dict(back.headers)) == (b"poison", 0, H)
            assert back.offset == done[0].offsets[0] > plain.offset
            assert [r.lag for r in await client.dead_letters("g", "hdr")] == [0, 0]

    run_async(body())


def test_a_redrive_interrupted_before_its_commit_enqueues_nothing_twice(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            # Dead letters straight from the store's retry path: two failures each.
            receipts = [await client.enqueue("hdr", p, key="z") for p in (b"d1", b"d2")]
            queue = receipts[0].queue
            failed = {b"d1", b"d2"}

            def handle(item: Item) -> None:
                if item.payload in failed:
                    raise ValueError("fail")

            async def two_dead() -> bool:
                rows = await client.dead_letters("g", "hdr")
                return {r.queue: r.lag for r in rows}[queue] == 2

            async with client.consumer("g", "hdr", options=FAST) as consumer:
                task = asyncio.create_task(consumer.run(handle))
                await wait_for(two_dead, "two dead letters")
                consumer.stop()
                await task
            (state,) = [r for r in await client.dead_letters("g", "hdr") if r.queue == queue]
            letters = await client.peek("hdr.dlq.g", "g", queue)
            # The first redrive's enqueue landed, then it died before moving the cursor.
            first = letters[0]
            crashed = await client._admin(
                "hdr",
                queue,
                Enqueue(
                    topic="hdr",
                    queue=queue,
                    producer=redrive_producer("hdr", "g", queue),
                    seq=first.offset + 1,
                    items=(StoreItem(key=first.key, payload=first.payload),),
                ),
            )
            assert isinstance(crashed, EnqueueOk)
            end_before = {r.queue: r.end for r in await client.groups("other", "hdr")}[queue]
            (done,) = await client.redrive("hdr", "g", queue)
            assert (done.moved, done.duplicates, done.cursor) == (2, 1, state.cursor + 2)
            assert done.offsets[0] == crashed.first_offset  # the earlier receipt
            base = await client.peek("hdr", "other", queue, offset=crashed.first_offset)
            assert [i.payload for i in base] == [b"d1", b"d2"]  # each once
            assert base[1].offset == end_before

    run_async(body())


def test_groups_report_cursor_end_lag_and_the_owner_with_its_token(
    cluster: BackgroundCluster,
) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            for i in range(5):
                await client.enqueue("own", b"x", key=f"k{i}")
            before = await client.groups("g", "own")
            assert [(r.queue, r.cursor, r.owner, r.token) for r in before] == [
                (0, 0, "", 0),
                (1, 0, "", 0),
            ]
            assert sum(r.lag for r in before) == sum(r.end for r in before) == 5
            got: list[Item] = []
            consumer = client.consumer("g", "own", options=FAST, name="worker-1")
            async with consumer:
                task = asyncio.create_task(consumer.run(got.append))

                async def caught_up() -> bool:
                    rows = await client.groups("g", "own")
                    return all(r.lag == 0 and r.owner for r in rows)

                await wait_for(caught_up, "the consumer to own both queues and catch up")
                during = await client.groups("g", "own")
                consumer.stop()
                await task
            assert {r.owner for r in during} == {"worker-1"}
            assert all(r.holder.startswith("worker-1#") and r.token >= 1 for r in during)
            assert [r.cursor for r in during] == [r.end for r in during]
            with pytest.raises(pxq_request_failed(), match="unknown_group"):
                await client.groups("nope")

    run_async(body())


def pxq_request_failed() -> type[Exception]:
    from net.client.types import RequestFailed

    return RequestFailed


def test_a_seek_dry_run_reports_the_seek_and_moves_nothing(cluster: BackgroundCluster) -> None:
    async def body() -> None:
        async with await AsyncClient.connect(cluster.config_path) as client:
            for _ in range(3):
                await client.enqueue("dry", b"x")
            await client.seek("dry", "g", offset=3)
            preview = await client.seek("dry", "g", back_ms=60_000, dry_run=True)
            assert (preview.positions, preview.forward) == ({0: 0}, {})
            ahead = await client.seek("dry", "g", offset=99, dry_run=True)
            assert (ahead.positions, ahead.forward) == ({0: 3}, {})
            (row,) = await client.groups("g", "dry")
            assert (row.cursor, row.epoch) == (3, 1)  # only the real seek counted

    run_async(body())


def test_the_admin_commands_print_what_the_cluster_says(cluster: BackgroundCluster) -> None:
    lines = [
        json.dumps({"key": "k1", "payload": "one", "headers": {"trace-id": "t1"}}),
        json.dumps({"key": "k1", "payload_b64": "gAE=", "kind": "bin"}),
        "not json",
        json.dumps({"key": "k1", "payload": "x", "headers": {"": "empty name"}}),
    ]
    produced = cli(cluster, "produce", "--topic", "cli", "--format", "json", stdin="\n".join(lines))
    assert produced.exit_code == 1  # two lines refused, the others enqueued
    receipts = [line.split("\t") for line in produced.stdout.splitlines()]
    assert [r[2] for r in receipts] == ["0", "1"]
    queue = int(receipts[0][1])
    assert "line 3: not enqueued: not JSON" in produced.stderr
    assert "line 4: not enqueued: headers: header name ''" in produced.stderr
    kv = cli(
        cluster, "produce", "--topic", "cli", "--format", "kv", "--header", "a=b", stdin="k1\tthree"
    )
    assert kv.exit_code == 0 and kv.stdout.split("\t")[2] == "2\n"

    peeked = cli(cluster, "peek", "--topic", "cli", "--group", "g", "--queue", str(queue), "--json")
    assert peeked.exit_code == 0, peeked.output
    items = [json.loads(line) for line in peeked.stdout.splitlines()]
    assert [(i["offset"], i.get("payload"), i["headers"]) for i in items] == [
        (0, "one", {"trace-id": "t1"}),
        (1, None, {}),
        (2, "three", {"a": "b"}),
    ]
    assert (items[1]["payload_b64"], items[1]["kind"]) == ("gAE=", "bin")

    consumed = cli(
        cluster,
        "consume",
        "--group",
        "g",
        "--topic",
        "cli",
        "--json",
        "--count",
        "3",
        "--timeout",
        "10",
    )
    assert consumed.exit_code == 0, consumed.output
    assert [json.loads(line) for line in consumed.stdout.splitlines()] == items

    groups = cli(cluster, "groups", "--group", "g", "--topic", "cli", "--json")
    assert groups.exit_code == 0, groups.output
    rows = {r["queue"]: r for r in json.loads(groups.stdout)}
    assert (rows[queue]["cursor"], rows[queue]["end"], rows[queue]["lag"]) == (3, 3, 0)
    table = cli(cluster, "groups", "--topic", "cli")
    assert table.stdout.splitlines()[0].split() == [
        "group",
        "topic",
        "queue",
        "cursor",
        "end",
        "lag",
        "owner",
        "token",
    ]

    dry = cli(
        cluster,
        "seek",
        "--group",
        "g",
        "--topic",
        "cli",
        "--queue",
        str(queue),
        "--back",
        "1h",
        "--dry-run",
    )
    assert (dry.exit_code, dry.stdout) == (0, f"{queue}\t0\n"), dry.output
    assert "dry run: nothing moved" in dry.stderr
    after = json.loads(cli(cluster, "groups", "--topic", "cli", "--json").stdout)
    assert {r["queue"]: r["cursor"] for r in after}[queue] == 3

    listed = cli(cluster, "dlq", "list", "--topic", "cli", "--json")
    assert listed.exit_code == 0
    assert [(r["topic"], r["lag"]) for r in json.loads(listed.stdout)] == [("cli.dlq.g", 0)] * 2
    redriven = cli(cluster, "dlq", "redrive", "--topic", "cli", "--group", "g")
    assert (redriven.exit_code, redriven.stdout) == (0, "0\t0\t0\n1\t0\t0\n")


@pytest.mark.parametrize(
    "args",
    [
        ("groups", "--group", "nope"),
        ("groups", "--topic", "nope"),
        ("peek", "--topic", "cli", "--group", "nope", "--queue", "0"),
        ("peek", "--topic", "cli", "--group", "g", "--queue", "7"),
        ("dlq", "list", "--group", "nope"),
        ("dlq", "redrive", "--topic", "cli", "--group", "g", "--queue", "9"),
        ("seek", "--group", "g", "--topic", "cli", "--back", "5 minutes"),
        ("seek", "--group", "g", "--topic", "cli", "--time", "yesterday"),
        ("seek", "--group", "g", "--topic", "cli", "--back", "5m", "--back-ms", "1"),
        ("produce", "--topic", "cli", "--header", "novalue"),
    ],
)
def test_bad_input_to_the_admin_commands_exits_2(
    cluster: BackgroundCluster, args: tuple[str, ...]
) -> None:
    result = cli(cluster, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("pxq: error: ")


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_takes_dash_h() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["-h"]).exit_code == 0
    for path in _commands(main):
        result = runner.invoke(main, [*path, "-h"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output and "-h, --help" in result.output


def test_duration_and_time_forms_of_seek() -> None:
    from pxq.cli.client_commands import parse_duration_ms, parse_time_ms

    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("2d") == 172_800_000
    for bad in ("", "5", "m5", "5m x", "1.5h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration_ms(bad)
    assert parse_time_ms("1970-01-01T00:00:01Z") == 1000
    assert parse_time_ms("1970-01-01T00:00:01") == 1000  # no zone: UTC
    assert parse_time_ms("1970-01-01T01:00:01+01:00") == 1000


def test_groups_watch_samples_feed_the_dashboard_plot(
    cluster: BackgroundCluster, tmp_path: Path
) -> None:
    from net.tools.plot import groups_plot

    watched = cli(
        cluster, "groups", "--topic", "own", "--watch", "0.05", "--samples", "3", "--json"
    )
    assert watched.exit_code == 0, watched.output
    samples = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [s["type"] for s in samples] == ["groups"] * 3
    assert samples[0]["t_ms"] < samples[2]["t_ms"]
    assert {(r["group"], r["topic"], r["queue"]) for r in samples[0]["rows"]} == {
        ("g", "own", 0),
        ("g", "own", 1),
    }
    (png,) = groups_plot(samples, tmp_path, "watch")
    assert png.name == "watch-g-own.png" and png.read_bytes().startswith(b"\x89PNG")
    lone = cli(cluster, "groups", "--samples", "2")
    assert lone.exit_code == 2 and "--samples needs --watch" in lone.stderr
