"""``pxq cluster up|status|down`` and ``pxq node run`` as real processes on loopback.

Behaviours checked: ``cluster up`` with a generated config (free ports) starts one process per
replica, writes pid files and logs under ``./.pxq`` and prints the masters; ``status`` exits 0
and lists the masters while all nodes are up, 1 once a node is SIGKILLed; a second ``up`` and
a second opener of a data dir are refused; ``down`` stops every process, removes the pid files
and is idempotent; a node that cannot start makes ``up`` report its log tail, stop the others
and exit 1. ``node run``: startup errors (unknown node, busy port, invalid config, a data dir
of another node) exit 2 with one line naming the problem; SIGTERM stops it gracefully (0).
Every process is torn down in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from net.cluster import ClusterHome, down, is_node_process, read_pid
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
            assert re.search(rf"{node} +127\.0\.0\.1:{ports[int(node[1])]} +{pid}\b", up.stdout)
            assert home.log_file(node).exists()
            assert (home.data_dir(node) / "pxq-node.json").exists()
        assert home.recorded_config() == (workdir / "cluster.toml").resolve()
        assert not home.default_config.exists()  # --config given: nothing written

        status = pxq("cluster", "status", cwd=workdir)
        assert status.returncode == 0, status.stderr + status.stdout
        assert "all nodes up" in status.stdout
        for group in (0, 1):
            assert re.search(rf"accepting .*store0/{group}\b", status.stdout), status.stdout

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
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[2]))
        busy.listen()
        up = pxq("cluster", "up", "--config", "cluster.toml", "--timeout", "20", cwd=workdir)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "node s2 exited with code 2" in up.stderr
    assert f"127.0.0.1:{ports[2]}" in up.stderr and "in use" in up.stderr  # the log tail
    assert home.pid_files() == {}
    assert home.recorded_config() is None


@pytest.mark.parametrize("problem", ["unknown-node", "busy-port", "bad-config", "foreign-data"])
def test_node_run_startup_errors_exit_2_with_the_reason(tmp_path: Path, problem: str) -> None:
    ports = free_ports(3)
    config = tmp_path / "cluster.toml"
    config.write_text(cluster_toml(ports), encoding="utf-8")
    args = ["node", "run", "--config", "cluster.toml", "--node", "s0"]
    with socket.socket() as busy:
        if problem == "unknown-node":
            args[-1] = "nobody"
            expected = "node 'nobody' is not a replica in the configuration (known: s0, s1, s2)"
        elif problem == "busy-port":
            busy.bind(("127.0.0.1", ports[0]))
            busy.listen()
            expected = f"cannot listen on 127.0.0.1:{ports[0]}: the port is in use"
        elif problem == "bad-config":
            config.write_text(cluster_toml(ports).replace("port = ", "port = -"), "utf-8")
            expected = "cluster.toml: stores[0].replicas[0].port: must be >= 1"
        else:
            other = tmp_path / "other.toml"
            other.write_text(cluster_toml(free_ports(3), name="other"), encoding="utf-8")
            from net.config import NetConfig
            from net.storage import LmdbStorage

            LmdbStorage.open(
                tmp_path / ".pxq" / "data" / "s0", cluster="other", node="s0", config=NetConfig()
            ).close()
            expected = "belongs to node 's0' of cluster 'other'"
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
