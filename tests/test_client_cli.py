"""``pxq produce``, ``pxq consume``, ``pxq echo`` and ``pxq seek`` against a running local
cluster.

Goal: the commands do what their help says, with the documented exit codes: produce prints
one receipt per input line in order (exit 1 when an item failed or its outcome is unknown);
consume prints QUEUE OFFSET KEY PAYLOAD lines and commits what it printed, so a second
consume does not print them again (exit 1 when fewer than ``--count`` items came in time);
echo prints its latencies; seek prints the queues it moved and warns on stderr when an absolute
seek moves a cursor forward past unconsumed items; bad input exits 2.

Method: the cluster runs in this process (a ``LocalCluster`` on a background thread's loop,
module-scoped); each command runs as a subprocess (``python -m pxq.cli``) with ``--config``
pointing at the generated cluster file, bounded by ``COMMAND_TIMEOUT_S``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_client_support import BackgroundCluster, dead_config, start_cluster

TOPICS = """
[[topics]]
name = "cli"
queues = 2
[[topics.consumer_groups]]
name = "readers"

[[topics]]
name = "rewind"
queues = 1
[topics.retention]
hold_items = 100  # kept after the forward seek passes them, for the rewind
[[topics.consumer_groups]]
name = "readers"

[[topics]]
name = "health"
queues = 2
[[topics.consumer_groups]]
name = "echo"

[[topics]]
name = "keyless"
queues = 4
[[topics.consumer_groups]]
name = "readers"
"""

COMMAND_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundCluster]:
    yield from start_cluster(tmp_path_factory, "client-cli", TOPICS)


def pxq_cli(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        cwd=cwd,
    )


def test_produce_prints_receipts_and_consume_prints_and_commits_them(
    cluster: BackgroundCluster,
) -> None:
    config = str(cluster.config_path)
    lines = ["first line", "second\tline", "third \\ line"]
    produced = pxq_cli(
        "produce", "--topic", "cli", "--key", "k1", "--config", config, stdin="\n".join(lines)
    )
    assert produced.returncode == 0, produced.stderr
    receipts = [line.split("\t") for line in produced.stdout.splitlines()]
    assert len(receipts) == 3
    assert {r[0] for r in receipts} == {"cli"}
    assert len({r[1] for r in receipts}) == 1  # one key, one queue
    queue = receipts[0][1]
    assert [int(r[2]) for r in receipts] == [0, 1, 2]  # input order is offset order

    consumed = pxq_cli(
        "consume", "--group", "readers", "--count", "2", "--timeout", "10", "--config", config
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == [
        f"{queue}\t0\tk1\tfirst line",
        f"{queue}\t1\tk1\tsecond\\tline",
    ]

    # Exactly the printed items were committed: the next consume starts at the third.
    rest = pxq_cli(
        "consume", "--group", "readers", "--topic", "cli", "--timeout", "1", "--config", config
    )
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.splitlines() == [f"{queue}\t2\tk1\tthird \\\\ line"]

    # Nothing left: --count not reached within --timeout is exit 1.
    empty = pxq_cli(
        "consume", "--group", "readers", "--count", "1", "--timeout", "0.5", "--config", config
    )
    assert empty.returncode == 1
    assert empty.stdout == ""


def test_seek_rewinds_on_the_store_time_and_warns_when_it_skips(
    cluster: BackgroundCluster,
) -> None:
    config = str(cluster.config_path)
    produced = pxq_cli("produce", "--topic", "rewind", "--config", config, stdin="a\nb\nc")
    assert produced.returncode == 0, produced.stderr

    def seek(*target: str) -> subprocess.CompletedProcess[str]:
        return pxq_cli(
            "seek", "--group", "readers", "--topic", "rewind", *target, "--config", config
        )

    forward = seek("--offset", "2")
    assert forward.returncode == 0, forward.stderr
    assert forward.stdout.splitlines() == ["0\t2"]
    assert "queue 0 moved forward from 0 to 2: 2 items" in forward.stderr
    back = seek("--back-ms", "60000")  # the last minute: every item
    assert (back.returncode, back.stdout.splitlines(), back.stderr) == (0, ["0\t0"], "")
    stay = seek("--back-ms", "0", "--queue", "0")  # nothing newer than now: stays, no skip
    assert (stay.returncode, stay.stdout, stay.stderr) == (0, "0\t0\n", "")
    both = seek("--back-ms", "1", "--offset", "1")
    assert both.returncode == 2 and "exactly one" in both.stderr


def test_echo_sees_its_item_and_prints_the_latency(cluster: BackgroundCluster) -> None:
    done = pxq_cli(
        "echo", "--topic", "health", "--timeout", "10", "--config", str(cluster.config_path)
    )
    assert done.returncode == 0, done.stderr
    assert "round trip" in done.stdout and "group pxq-health" in done.stdout
    # The echo consumed for the reserved health group: the topic's own group "echo" did not
    # move and still gets the echo item.
    seen = pxq_cli(
        "consume",
        "--group",
        "echo",
        "--count",
        "1",
        "--timeout",
        "10",
        "--config",
        str(cluster.config_path),
    )
    assert seen.returncode == 0, seen.stderr
    assert "\tpxq-echo " in seen.stdout


def test_produce_without_a_key_sends_none_and_spreads_the_items(cluster: BackgroundCluster) -> None:
    config = str(cluster.config_path)
    produced = pxq_cli("produce", "--topic", "keyless", "--config", config, stdin="a\nb\nc\nd")
    assert produced.returncode == 0, produced.stderr
    queues = {line.split("\t")[1] for line in produced.stdout.splitlines()}
    assert queues == {"0", "1", "2", "3"}  # round robin over the topic's queues
    consumed = pxq_cli(
        "consume",
        "--group",
        "readers",
        "--topic",
        "keyless",
        "--count",
        "4",
        "--timeout",
        "10",
        "--config",
        config,
    )
    assert consumed.returncode == 0, consumed.stderr
    lines = [line.split("\t") for line in consumed.stdout.splitlines()]
    assert sorted(payload for *_, payload in lines) == ["a", "b", "c", "d"]
    assert {key for _, _, key, _ in lines} == {""}  # stored without a key


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "--topic", "t", "--timeout", "0.5"),
        ("consume", "--group", "g", "--timeout", "0.5"),
        ("echo", "--timeout", "0.5"),
        ("seek", "--group", "g", "--topic", "t", "--offset", "0", "--timeout", "0.5"),
    ],
    ids=lambda args: args[0],
)
def test_a_cluster_that_refuses_every_connection_is_named_and_exits_1(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # Issue 14: produce said "outcome unknown" (definitely not enqueued), consume hung
    # silently, echo printed an empty reason. Now each names every address and why, and
    # gives up after its --timeout.
    config = dead_config(tmp_path)
    done = pxq_cli(*args, "--config", str(config), stdin="x\n")
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    text = config.read_text()
    for port in [line.split("= ")[1] for line in text.splitlines() if line.startswith("port")]:
        assert f"127.0.0.1:{port}: connection refused" in done.stderr, done.stderr
    if args[0] == "produce":
        assert "line 1: not enqueued: unavailable" in done.stderr
        assert "outcome unknown" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "--topic", "no-such-topic"),
        ("consume", "--group", "no-such-group"),
        ("consume", "--group", "readers", "--topic", "health"),
        ("echo", "--group", "no-such-group"),
        ("consume", "--group", "readers", "--count", "0"),
        ("seek", "--group", "readers", "--topic", "health", "--back-ms", "1"),
        ("seek", "--group", "readers", "--topic", "rewind", "--queue", "1", "--offset", "0"),
    ],
)
def test_bad_input_exits_2(cluster: BackgroundCluster, args: tuple[str, ...]) -> None:
    done = pxq_cli(*args, "--config", str(cluster.config_path))
    assert done.returncode == 2, (done.stdout, done.stderr)


def test_an_invalid_config_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[cluster]\nname = 'x'\n[[stores]]\n")
    done = pxq_cli("produce", "--topic", "t", "--config", str(bad))
    assert done.returncode == 2
    assert "bad.toml" in done.stderr
