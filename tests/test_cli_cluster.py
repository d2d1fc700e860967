"""``pxq cluster up|status|down`` and ``pxq node run`` as real processes on loopback.

Behaviours checked: ``cluster up`` with a generated config (free ports) starts one process per
replica, writes pid files and logs under ``./.pxq`` and prints the masters; with a lock
service it starts the lock replicas too (six processes), ``status`` lists the lock group's
master and ``down`` stops all six; ``status`` exits 0
and lists the masters while all nodes are up, 1 once a node is SIGKILLed; a second ``up`` and
a second opener of a data dir are refused; ``down`` stops every process, removes the pid files
and is idempotent; a node that cannot start makes ``up`` report its log tail, stop the others
and exit 1; the home's directories and files, the nodes' data included, are 0700 and 0600.
``node run`` (store and lock replicas): startup errors (unknown node, busy port, invalid
config, a data dir of another cluster) exit 2 with one line naming the problem; SIGTERM stops it gracefully (0).
``cluster stop|start|restart NODE`` stop one node (the others stay), start it again on its data,
refuse a node already running or unknown (2); ``status --json`` says which nodes are up.
Every process is torn down in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from net.cluster.processes import ClusterHome, down, is_node_process, read_pid
from tests.test_net_cluster import cluster_toml, free_ports

ROOT = Path(__file__).resolve().parent.parent
CMD_TIMEOUT_S = 45.0


def pxq(
    *args: str, cwd: Path, timeout_s: float = CMD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_private(root: Path) -> None:
    """``root`` and every directory below it 0700, every file 0600."""
    for path in (root, *root.rglob("*")):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def recorded_pids(home: ClusterHome) -> dict[str, int]:
    pids = {node: read_pid(path) for node, path in home.pid_files().items()}
    return {node: pid for node, pid in pids.items() if pid is not None}


def kill_all(pids: dict[str, int]) -> None:
    for node, pid in pids.items():
        if is_node_process(pid, node):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A working directory for ``pxq cluster``; whatever it started is stopped afterwards."""
    seen: dict[str, int] = {}
    home = ClusterHome(tmp_path / ".pxq")
    try:
        yield tmp_path
    finally:
        seen.update(recorded_pids(home))
        down(home, timeout_s=5.0)
        kill_all(seen)


def test_up_status_kill_down(workdir: Path) -> None:
    ports = free_ports(3)
    (workdir / "cluster.toml").write_text(cluster_toml(ports), encoding="utf-8")
    home = ClusterHome(workdir / ".pxq")
    pids: dict[str, int] = {}
    try:
        started = time.monotonic()
        up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "30", cwd=workdir)
        assert up.returncode == 0, up.stderr + up.stdout
        assert time.monotonic() - started < 30
        assert 'cluster "test" is up: 3 nodes' in up.stdout
        assert "pxq produce" in up.stdout and "pxq consume" in up.stdout
        assert "pxq.Client" in up.stdout
        pids = recorded_pids(home)
        assert sorted(pids) == ["s0", "s1", "s2"]
        for node, pid in pids.items():
            assert is_node_process(pid, node)
            address = rf"127\.0\.0\.1:{ports[int(node[1])]}"
            assert re.search(rf"{node} +store0 +{address} +{pid}\b", up.stdout), up.stdout
            assert home.log_file(node).exists()
            assert (home.data_dir(node) / "pxq-node.json").exists()
        assert home.recorded_config() == (workdir / "cluster.toml").resolve()
        # Everything up wrote, and the nodes' data, is private to this user (issue 13).
        for d in (home.run_dir, home.logs_dir, home.data_root):
            assert_private(d)
        assert not home.default_config.exists()  # --config given: nothing written

        status = pxq("cluster", "status", cwd=workdir)
        assert status.returncode == 0, status.stderr + status.stdout
        assert "all nodes up" in status.stdout
        for group in (0, 1):
            assert re.search(rf"accepting .*store0/{group}\b", status.stdout), status.stdout

        # up turns every node's metrics endpoint on, at its port + 1000 (docs/operations.md).
        assert f"s0 127.0.0.1:{ports[0] + 1000}" in up.stdout, up.stdout
        url = f"http://127.0.0.1:{ports[0] + 1000}/metrics"
        with urllib.request.urlopen(url, timeout=5) as scraped:
            text = scraped.read().decode()
        assert 'pxq_node_info{cluster="test",node="s0",service="store0"} 1.0' in text, text
        assert "process_cpu_seconds_total" in text, "a node process adds its process metrics"

        again = pxq("cluster", "up", "--config", "cluster.toml", cwd=workdir)
        assert again.returncode == 2
        assert "already running" in again.stderr
        data_dir = str(home.data_dir("s0"))
        args = ["node", "run", "--config", "cluster.toml", "--node", "s0", "--data-dir", data_dir]
        second = pxq(*args, cwd=workdir)
        assert second.returncode == 2
        assert "pxq: error: node s0:" in second.stderr and "in use" in second.stderr

        os.kill(pids["s1"], signal.SIGKILL)
        wait_for(lambda: not is_node_process(pids["s1"], "s1"), "s1 to die")
        status = pxq("cluster", "status", cwd=workdir)
        assert status.returncode == 1, status.stdout
        assert re.search(r"s1 .* dead +closed", status.stdout), status.stdout
        assert "not up: s1" in status.stdout

        stopped = pxq("cluster", "down", cwd=workdir)
        assert stopped.returncode == 0, stopped.stderr
        assert "s0 (pid" in stopped.stdout and "stopped" in stopped.stdout
        assert "s1" in stopped.stdout and "not running" in stopped.stdout
        assert home.pid_files() == {}
        for node, pid in pids.items():
            assert not is_node_process(pid, node)
        # The nodes stopped gracefully.
        assert "SIGTERM received" in home.log_file("s0").read_text(encoding="utf-8")

        again = pxq("cluster", "down", cwd=workdir)
        assert again.returncode == 0
        assert "no cluster running" in again.stdout
    finally:
        kill_all(pids)


def test_up_reports_a_node_that_cannot_start_and_stops_the_others(workdir: Path) -> None:
    ports = free_ports(3)
    (workdir / "cluster.toml").write_text(cluster_toml(ports), encoding="utf-8")
    home = ClusterHome(workdir / ".pxq")
    # A busy port is found before anything starts (issue 14: "up" was printed while every
    # node died on busy ports and another cluster answered the probes).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[2]))
        busy.listen()
        up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "20", cwd=workdir)
    assert up.returncode == 2, up.stdout + up.stderr
    assert f"s2 (127.0.0.1:{ports[2]}): the port is in use" in up.stderr
    assert "Nothing was started" in up.stderr
    assert home.pid_files() == {}
    # A node that exits while starting (here: its data dir is another cluster's).
    (workdir / ".pxq" / "data" / "s2").mkdir(parents=True)
    marker = '{"format": 1, "cluster": "elsewhere", "node": "s2"}\n'
    (workdir / ".pxq" / "data" / "s2" / "pxq-node.json").write_text(marker)
    up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "20", cwd=workdir)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "node s2 exited with code 2" in up.stderr
    assert "of cluster 'elsewhere' (no id)" in up.stderr  # the log tail
    assert home.pid_files() == {}
    assert home.recorded_config() is None


@pytest.mark.parametrize(
    ("problem", "node"),
    [
        ("unknown-node", "nobody"),
        ("busy-port", "s0"),
        ("busy-port", "l1"),
        ("busy-metrics-port", "s1"),
        ("bad-config", "s0"),
        ("bad-config", "l0"),
        ("foreign-data", "s0"),
        ("foreign-data", "l0"),
    ],
)
def test_node_run_startup_errors_exit_2_with_the_reason(
    tmp_path: Path, problem: str, node: str
) -> None:
    ports = free_ports(6)
    by_node = dict(zip(["s0", "s1", "s2", "l0", "l1", "l2"], ports, strict=True))
    text = cluster_toml(ports[:3], lock_ports=ports[3:])
    config = tmp_path / "cluster.toml"
    config.write_text(text, encoding="utf-8")
    args = ["node", "run", "--config", "cluster.toml", "--node", node]
    with socket.socket() as busy:
        if problem == "unknown-node":
            expected = (
                "node 'nobody' is not a replica in the configuration "
                "(known: s0, s1, s2, l0, l1, l2)"
            )
        elif problem == "busy-port":
            busy.bind(("127.0.0.1", by_node[node]))
            busy.listen()
            expected = f"cannot listen on 127.0.0.1:{by_node[node]}: the port is in use"
        elif problem == "busy-metrics-port":
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            metrics_port = busy.getsockname()[1]
            own = f"port = {by_node[node]}\nmetrics_port = {metrics_port}"
            config.write_text(text.replace(f"port = {by_node[node]}", own), "utf-8")
            args.append("--metrics")
            expected = f"cannot serve metrics on 127.0.0.1:{metrics_port}: the port is in use"
        elif problem == "bad-config":
            config.write_text(text.replace(f"port = {by_node[node]}", "port = -1"), "utf-8")
            where = "stores[0].replicas[0]" if node == "s0" else "locks.replicas[0]"
            expected = f"cluster.toml: {where}.port: must be >= 1"
        else:
            from net.config import NetConfig
            from net.node.storage import LmdbStorage

            LmdbStorage.open(
                tmp_path / ".pxq" / "data" / node, cluster="other", node=node, config=NetConfig()
            ).close()
            expected = f"belongs to node '{node}' of cluster 'other'"
        result = pxq(*args, cwd=tmp_path, timeout_s=20)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pxq: error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]


def test_node_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (tmp_path / "one.toml").write_text(cluster_toml([port]), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pxq.cli", "node", "run", "--config", "one.toml", "--node", "s0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def accepting() -> bool:
            assert proc.poll() is None, "the node exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(accepting, "the node to listen")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert "s0 INFO pxq.net.server: node s0: SIGTERM received, stopping" in stderr
        assert "node s0 stopped" in stderr
        assert (tmp_path / ".pxq" / "data" / "s0" / "pxq-node.json").exists()  # the default
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_up_starts_the_lock_service_status_lists_its_master_down_stops_all(
    workdir: Path,
) -> None:
    ports = free_ports(6)
    text = cluster_toml(ports[:3], lock_ports=ports[3:], lock_groups=2)
    (workdir / "cluster.toml").write_text(text, encoding="utf-8")
    home = ClusterHome(workdir / ".pxq")
    pids: dict[str, int] = {}
    try:
        up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "30", cwd=workdir)
        assert up.returncode == 0, up.stderr + up.stdout
        assert 'cluster "test" is up: 6 nodes' in up.stdout
        assert "4 Paxos groups (2 store, 2 lock)" in up.stdout
        pids = recorded_pids(home)
        assert sorted(pids) == ["l0", "l1", "l2", "s0", "s1", "s2"]
        for i, node in enumerate(["l0", "l1", "l2"]):
            assert is_node_process(pids[node], node)
            address = rf"127\.0\.0\.1:{ports[3 + i]}"
            assert re.search(rf"{node} +locks +{address} +{pids[node]}\b", up.stdout), up.stdout
            assert (home.data_dir(node) / "pxq-node.json").exists()
        for group in (0, 1):
            assert re.search(rf"l\d +locks .*locks/{group}\b", up.stdout), up.stdout

        status = pxq("cluster", "status", cwd=workdir)
        assert status.returncode == 0, status.stderr + status.stdout
        assert "all nodes up" in status.stdout
        for group in (0, 1):
            found = re.search(rf"(l\d) +locks .*accepting .*locks/{group}\b", status.stdout)
            assert found, status.stdout
        for group in (0, 1):
            assert re.search(rf"s\d +store0 .*accepting .*store0/{group}\b", status.stdout)

        stopped = pxq("cluster", "down", cwd=workdir)
        assert stopped.returncode == 0, stopped.stderr
        for node, pid in pids.items():
            assert f"{node} (pid {pid}): stopped" in stopped.stdout
            assert not is_node_process(pid, node)
        assert home.pid_files() == {}
        assert "SIGTERM received" in home.log_file("l0").read_text(encoding="utf-8")
    finally:
        kill_all(pids)


def test_stop_start_and_restart_one_node_and_status_json(workdir: Path) -> None:
    (workdir / "cluster.toml").write_text(cluster_toml(free_ports(3)), encoding="utf-8")
    home = ClusterHome(workdir / ".pxq")
    pids: dict[str, int] = {}
    try:
        up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "30", cwd=workdir)
        assert up.returncode == 0, up.stderr + up.stdout
        pids = recorded_pids(home)

        stopped = pxq("cluster", "stop", "s1", cwd=workdir)
        assert (stopped.returncode, stopped.stdout) == (0, f"  s1 (pid {pids['s1']}): stopped\n")
        assert not is_node_process(pids["s1"], "s1") and "s1" not in home.pid_files()
        status = pxq("cluster", "status", "--json", cwd=workdir)
        assert status.returncode == 1, status.stdout
        doc = json.loads(status.stdout)
        nodes = {n["node"]: n for n in doc["nodes"]}
        assert (doc["all_up"], nodes["s1"]["up"], nodes["s1"]["pid"]) == (False, False, None)
        assert nodes["s0"]["up"] and nodes["s0"]["port"] > 0

        started = pxq("cluster", "start", "s1", cwd=workdir)
        assert started.returncode == 0, started.stderr
        assert re.fullmatch(
            r"  s1 \(pid \d+\): started, 127\.0\.0\.1:\d+ accepting\n", started.stdout
        )
        restarted = pxq("cluster", "restart", "s2", cwd=workdir)
        assert restarted.returncode == 0, restarted.stderr
        assert "s2 (pid" in restarted.stdout and "stopped" in restarted.stdout
        assert recorded_pids(home)["s2"] != pids["s2"]
        pids.update(recorded_pids(home))

        def all_up() -> bool:
            result = pxq("cluster", "status", "--json", cwd=workdir)
            return result.returncode == 0 and json.loads(result.stdout)["all_up"] is True

        wait_for(all_up, "every node up again", timeout_s=20.0)
        running = pxq("cluster", "start", "s0", cwd=workdir)
        assert running.returncode == 2 and "already running" in running.stderr
        unknown = pxq("cluster", "stop", "s9", cwd=workdir)
        assert unknown.returncode == 2 and "no node 's9'" in unknown.stderr
    finally:
        pids.update(recorded_pids(home))
        kill_all(pids)
