"""net.deploy.watchdog (detached, restarts a failing command with a backoff, gives up on one
that cannot start, stops it on SIGTERM, exits with a command that exits 0, pid files kept
and removed) and net.deploy.agent's systemd unit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from net.deploy.agent import Layout, unit_text
from net.deploy.watchdog import START_LIMIT

WAIT_S = 20.0


def start_watchdog(tmp_path: Path, script: str) -> tuple[int, Path, Path]:
    pidfile, log = tmp_path / "n.pid", tmp_path / "n.log"
    argv = [sys.executable, "-m", "net.deploy.watchdog", "--pidfile", str(pidfile)]
    argv += ["--log", str(log), "--backoff-first-s", "0.1", "--backoff-max-s", "0.2"]
    argv += ["--", sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S, check=True)
    pid = int(done.stdout.strip())
    assert pidfile.read_text() == f"{pid}\n"
    return pid, pidfile, log


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def test_restarts_a_failing_command_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print('run', n, flush=True)\n"
        "sys.exit(3) if n < 3 else time.sleep(60)\n"
    )
    pid, pidfile, log = start_watchdog(tmp_path, script)
    node_pidfile = tmp_path / "n.pid.node"
    wait_for(lambda: counter.exists() and counter.read_text() == "3", "the third run")
    wait_for(node_pidfile.exists, "the node pid file")
    child = int(node_pidfile.read_text())
    # Detached: a session of its own, not this test's.
    assert os.getsid(pid) != os.getsid(0)
    assert oct(pidfile.stat().st_mode & 0o777) == "0o600"
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: gone(pid) and gone(child), "the watchdog and its command to exit")
    assert not pidfile.exists() and not node_pidfile.exists()
    text = log.read_text()
    assert "run 1\n" in text and "run 3\n" in text
    assert text.count("exited 3; restarting in") == 2
    assert "exited -15; stopping" in text


def test_gives_up_on_a_command_that_cannot_start(tmp_path: Path) -> None:
    pid, pidfile, log = start_watchdog(tmp_path, "import sys; sys.exit(2)")
    wait_for(lambda: gone(pid), "the watchdog to give up")
    assert not pidfile.exists()
    text = log.read_text()
    assert text.count("started pid") == START_LIMIT
    assert "giving up" in text


def test_exits_with_a_command_that_exits_0(tmp_path: Path) -> None:
    pid, pidfile, log = start_watchdog(tmp_path, "print('done')")
    wait_for(lambda: gone(pid), "the watchdog to exit")
    assert not pidfile.exists()
    assert log.read_text().count("started pid") == 1


def test_systemd_unit_restarts_on_failure_and_logs_to_the_node_log() -> None:
    layout = Layout(Path("/opt/pxq base"))
    text = unit_text(cluster="prod", node="s0", python="/opt/pxq/venv-1/bin/python", layout=layout)
    lines = text.splitlines()
    assert "Description=pxq node s0 of cluster prod" in lines
    assert "Restart=on-failure" in lines
    assert "KillSignal=SIGTERM" in lines
    assert (
        "ExecStart=/opt/pxq/venv-1/bin/python -m pxq.cli node run --config "
        '"/opt/pxq base/cluster/cluster.toml" --node s0 --data-dir "/opt/pxq base/data/s0" '
        "--log-format text"
    ) in lines
    assert 'StandardOutput=append:"/opt/pxq base/logs/s0.log"' in lines
    assert "WantedBy=multi-user.target" in lines
