"""Scaling out with ``pxq deploy``: six SSH test hosts in three zones carry two stores of three
replicas each (``store0`` on h0-h2, ``store1`` on h3-h5, each store in all three zones) and the
lock service (on h0-h2). A topic's queues are spread over both stores by the routing of the
cluster file; items produced from this machine land in queues of both, and ``pxq cluster
status`` (from here, with the cluster file) shows each store's groups mastered by its own
replicas. Then a replica's disk is lost (its processes SIGKILLed, its data directory
removed): restarted as it was, it refuses to run (its log says to use ``--replace``);
``pxq deploy restart NODE --replace`` brings it back, and it catches up with its group's
master. Then ``destroy --yes``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from net.deploy.upgrade import wait_caught_up
from pxq.cli import main
from pxq.config.parser import load_config
from tests.deploy_room import write_cluster_file
from tests.sshd_hosts import SshHostsMaker

pytestmark = pytest.mark.xdist_group("real-clusters")

NAMES = [f"h{i}" for i in range(6)]
QUEUES = 8
KEYS = 32
ROOT = Path(__file__).resolve().parent.parent


def deploy(*args: str) -> Result:
    return CliRunner().invoke(main, ["deploy", *args])


def run_pxq(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_six_hosts_two_stores(ssh_hosts: SshHostsMaker, tmp_path: Path, wheel_cache: Path) -> None:
    ssh = ssh_hosts(names=NAMES)
    path = write_cluster_file(
        tmp_path / "cluster", ssh, NAMES, stores=2, queues=QUEUES, metrics=True
    )
    config = load_config(path)
    assert [s.name for s in config.stores] == ["store0", "store1"]
    assert [h.zone for h in config.hosts] == ["z0", "z1", "z2", "z0", "z1", "z2"]
    store_of_queue = {
        q: store.name
        for store in config.stores
        for g in range(store.groups)
        for q in config.queues_of("events", store.name, g)
    }
    assert sorted(store_of_queue) == list(range(QUEUES))
    assert set(store_of_queue.values()) == {"store0", "store1"}

    known = tmp_path / "known_hosts"
    ssh_args = ["--known-hosts", str(known)]
    result = deploy(
        "install", str(path), *ssh_args, "--accept-new-host-keys", "--wheel-cache",
        str(wheel_cache),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = deploy("up", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sorted(doc["masters"]) == [
        "locks/0", "store0/0", "store0/1", "store1/0", "store1/1",
    ]  # fmt: skip
    on = {n["node"]: n["host"] for n in doc["nodes"]}
    assert on == {
        **{f"s{i}": f"h{i}" for i in range(6)},
        **{f"l{i}": f"h{i}" for i in range(3)},
    }

    # keyed items from here: the receipts name queues of both stores
    lines = "".join(f"k{i}\titem-{i}\n" for i in range(KEYS))
    produced = run_pxq(
        "produce", "--config", str(path), "--topic", "events", "--format", "kv", stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    receipts = [line.split("\t") for line in produced.stdout.splitlines()]
    assert len(receipts) == KEYS
    per_store: dict[str, int] = {}
    for _, queue, _ in receipts:
        store = store_of_queue[int(queue)]
        per_store[store] = per_store.get(store, 0) + 1
    assert set(per_store) == {"store0", "store1"}, per_store

    # cluster status from here: each store's groups mastered by its own replicas
    status = run_pxq("cluster", "status", "--config", str(path), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    for n in nodes:
        assert n["remote"] and n["up"], n
        for master in n["masters"]:
            assert master.split("/")[0] == n["service"], n
    mastered = sorted(m for n in nodes for m in n["masters"])
    assert mastered == ["locks/0", "store0/0", "store0/1", "store1/0", "store1/1"]

    consumed = run_pxq(
        "consume", "--config", str(path), "--group", "default", "--count", str(KEYS),
        "--timeout", "60", "--json",
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    items = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert sorted(i["payload"] for i in items) == sorted(f"item-{i}" for i in range(KEYS))
    print(f"items per store: {per_store}")

    # s4's disk is lost: its watchdog and node SIGKILLed, its data directory removed
    nodes = json.loads(deploy("status", str(path), *ssh_args, "--json").stdout)["nodes"]
    s4 = next(n for n in nodes if n["node"] == "s4")
    for pid in (s4["pid"], s4["node_pid"]):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(ssh.host("h4").base_dir / "data" / "s4")
    produced = run_pxq(
        "produce", "--config", str(path), "--topic", "events", "--format", "kv", stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    # started as it was, it refuses to run on blank storage and says what to do
    result = deploy("restart", str(path), "s4", *ssh_args)
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 30
    log = ""
    while "--replace" not in log and time.monotonic() < deadline:
        time.sleep(0.5)
        log = deploy("logs", str(path), "s4", *ssh_args, "--lines", "100").stdout
    assert "--replace" in log, log
    # as its own replacement it re-learns what its peers hold and catches up
    result = deploy("restart", str(path), "s4", *ssh_args, "--replace", "--json")
    assert result.exit_code == 0, result.output
    asyncio.run(wait_caught_up(config, ["s4"], timeout_s=60))
    result = deploy("status", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output

    result = deploy("destroy", str(path), *ssh_args, "--yes")
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert list(ssh.host(name).base_dir.iterdir()) == []
