"""What pxq writes on disk is private, and its logs hold no payloads (issue 13, item 6).

Behaviours checked: a new data dir is 0700 and every file in it (LMDB's, the marker, the lock
file, the damaged-records note) 0600, under a permissive umask too; an existing data dir and
files open to group or others are tightened, with a log line naming them; the cluster home's
generated files (the default ``cluster.toml``, pid files, node logs) are 0600 in 0700
directories, leftovers tightened; a running cluster, at debug level, driven with enqueues,
consumption and hostile frames carrying a marker, never logs the marker.
(``tests/test_cli_cluster.py`` checks the modes of a home written by a real ``pxq cluster up``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import pxq
from net.cluster.processes import ClusterHome, prepare_config
from net.config import NetConfig
from net.files import open_private_append, write_private
from net.node.storage import LmdbStorage, note_damaged
from net.wire.envelope import Call
from net.wire.framing import encode_frame
from pxq.effects import Put
from tests.test_client_support import BackgroundCluster, cluster_toml, free_ports


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that narrows nothing: the modes below come from pxq, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def assert_private_dir(path: Path) -> None:
    assert mode(path) == 0o700, path
    for entry in path.iterdir():
        assert mode(entry) == (0o700 if entry.is_dir() else 0o600), entry


def test_a_new_data_dir_is_0700_and_its_files_0600(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "data" / "s0"
    storage = LmdbStorage.open(data_dir, cluster="c", node="s0", config=NetConfig())
    storage.apply((Put(table="t", key=b"k", value=b"v"),))
    storage.commit()
    note_damaged(data_dir, ("t", b"k"))
    names = {p.name for p in data_dir.iterdir()}
    assert {"data.mdb", "lock.mdb", "pxq-node.json", "pxq-node.lock", "pxq-damaged.json"} <= names
    assert_private_dir(data_dir)
    storage.close()


def test_wider_modes_of_an_existing_data_dir_are_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "s0"
    LmdbStorage.open(data_dir, cluster="c", node="s0", config=NetConfig()).close()
    # As an older version, or an operator's copy, left it.
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "data.mdb", 0o644)
    os.chmod(data_dir / "pxq-node.json", 0o664)
    with caplog.at_level(logging.WARNING, logger="pxq.net.storage"):
        storage = LmdbStorage.open(data_dir, cluster="c", node="s0", config=NetConfig())
    storage.close()
    assert_private_dir(data_dir)
    messages = [r.getMessage() for r in caplog.records if r.name == "pxq.net.storage"]
    assert len(messages) == 1
    assert "tightened the modes of ., data.mdb, pxq-node.json" in messages[0]


def test_the_cluster_home_and_its_generated_files_are_private(
    tmp_path: Path, open_umask: None
) -> None:
    home = ClusterHome(tmp_path / ".pxq")
    path, wrote = prepare_config(home, None)
    assert wrote and path == home.default_config
    assert mode(home.root) == 0o700
    assert mode(path) == 0o600
    # Files written again, or appended to, end up 0600 whatever mode they had.
    home.logs_dir.mkdir(mode=0o700)
    log_file = home.log_file("s0")
    log_file.write_bytes(b"old\n")
    os.chmod(log_file, 0o644)
    with open_private_append(log_file) as f:
        f.write(b"new\n")
    assert mode(log_file) == 0o600
    assert log_file.read_bytes() == b"old\nnew\n"
    leftover = home.root / ".cluster.json.tmp"  # of an interrupted write
    leftover.write_bytes(b"{")
    os.chmod(leftover, 0o644)
    write_private(home.root / "cluster.json", b"{}")
    assert mode(home.root / "cluster.json") == 0o600


TOPICS = """
[[topics]]
name = "t"
queues = 2
[[topics.consumer_groups]]
name = "g"
"""
MARKER = b"SECRET-PAYLOAD-7f3a9c"


def test_node_logs_hold_no_payloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the trace events included
    cluster = BackgroundCluster(tmp_path, cluster_toml(free_ports(3), TOPICS))
    try:
        host, port = cluster.config.node_addresses()["n0"]

        async def body() -> None:
            async with await pxq.AsyncClient.connect(cluster.config_path) as client:
                for i in range(4):
                    await client.enqueue("t", MARKER + bytes([i]), key=MARKER.decode())
                got: list[bytes] = []
                async with client.consumer("g", "t") as consumer:
                    task = asyncio.create_task(consumer.run(lambda item: got.append(item.payload)))
                    async with asyncio.timeout(20):
                        while len(got) < 4:
                            await asyncio.sleep(0.01)
                    consumer.stop()
                    await task
            # Hostile frames carrying the marker: closed with a logged reason.
            for frame in (
                encode_frame(Call(req_id=1, request=MARKER), frame_bytes_max=1024),
                MARKER,
            ):
                # (asynchronously: the nodes run on this same event loop)
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(frame)
                async with asyncio.timeout(5):
                    assert await reader.read() == b""
                writer.close()

        cluster.run(body())
    finally:
        cluster.stop()
    assert caplog.records
    closes = [r for r in caplog.records if "closing connection" in r.getMessage()]
    assert len(closes) >= 2
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for needle in (MARKER, MARKER.hex().encode(), repr(MARKER).encode()):
        assert needle.decode() not in text
