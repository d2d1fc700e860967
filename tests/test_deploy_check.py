"""``pxq deploy check`` on three SSH test hosts: every host reports its Python, free disk, free
ports and clock offset; a busy port, a missing interpreter and an unreachable host fail the
check naming the host (exit 1); a file without hosts is bad input (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pxq.cli import main
from tests.deploy_room import LOCK_PORT, STORE_PORT, write_cluster_file
from tests.sshd_hosts import SshHostsMaker

pytestmark = pytest.mark.xdist_group("real-clusters")

NAMES = ["h0", "h1", "h2"]


def check(path: Path, known_hosts: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["deploy", "check", str(path), "--known-hosts", str(known_hosts), *args]
    )
    return result.exit_code, result.stdout


def test_check_reports_every_host(ssh_hosts: SshHostsMaker, tmp_path: Path) -> None:
    ssh = ssh_hosts(names=NAMES)
    path = write_cluster_file(tmp_path, ssh, NAMES)
    code, out = check(path, ssh.known_hosts, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] is True
    assert [h["host"] for h in doc["hosts"]] == NAMES
    for i, h in enumerate(doc["hosts"]):
        assert h["zone"] == f"z{i}"
        assert h["python"] == ".".join(map(str, sys.version_info[:3]))
        assert h["disk_free_bytes"] > 0
        assert [(p["node"], p["port"], p["free"]) for p in h["ports"]] == [
            (f"s{i}", STORE_PORT, True),
            (f"l{i}", LOCK_PORT, True),
        ]
        # The hosts share this machine's clock: the offset is within the measurement.
        assert abs(h["clock_offset_ms"]) <= h["clock_uncertainty_ms"] + 5
        assert h["problems"] == [] and h["warnings"] == []
    code, out = check(path, ssh.known_hosts)
    assert code == 0, out
    assert "all 3 hosts ready" in out


def test_check_fails_a_busy_port_a_missing_python_and_an_unreachable_host(
    ssh_hosts: SshHostsMaker, tmp_path: Path
) -> None:
    ssh = ssh_hosts(names=NAMES)
    h1 = ssh.host("h1")
    listener = ssh.net.run(
        "h1",
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            f"s = socket.create_server(('{h1.address}', {LOCK_PORT}))\n"
            "print('listening', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"listening\n"
        # h0: no such interpreter; h2: nothing listens on the SSH port given.
        overrides: dict[str, dict[str, object]] = {
            "h0": {"python": "/nonexistent/python3"},
            "h2": {"ssh_port": 2222},
        }
        path = write_cluster_file(tmp_path, ssh, NAMES, overrides=overrides)
        started = time.monotonic()
        code, out = check(path, ssh.known_hosts, "--json", "--timeout", "5")
        assert time.monotonic() - started < 20
        assert code == 1, out
        hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
        assert "cannot run /nonexistent/python3" in hosts["h0"]["error"]
        assert hosts["h1"]["error"] is None
        assert [(p["node"], p["problem"]) for p in hosts["h1"]["ports"]] == [
            ("s1", None),
            ("l1", "in use"),
        ]
        assert hosts["h1"]["problems"] == [f"h1: l1's port {h1.address}:{LOCK_PORT}: in use"]
        assert hosts["h2"]["error"].startswith(f"h2 ({ssh.host('h2').address}:2222): unreachable")
        code, out = check(path, ssh.known_hosts, "--timeout", "5")
        assert code == 1
        assert "3 of 3 hosts failed: h0, h1, h2" in out
    finally:
        listener.kill()
        listener.wait()


def test_check_refuses_a_file_without_hosts(tmp_path: Path) -> None:
    path = tmp_path / "local.toml"
    path.write_text(
        '[cluster]\nname = "x"\n[[stores]]\nname = "s"\ngroups = 1\n[[stores.replicas]]\nnode = "a"\nport = 7101\n'
    )
    result = CliRunner().invoke(main, ["deploy", "check", str(path)])
    assert result.exit_code == 2
    assert "no [[hosts]]" in result.stderr
    result = CliRunner().invoke(main, ["deploy", "check", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2


def test_the_deployment_guide_example_is_a_valid_inventory() -> None:
    import re

    from pxq.config.parser import loads_config

    guide = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    match = re.search(r"```toml\n(.*?)```", guide, re.S)
    assert match is not None
    text = "\n".join(line.removeprefix("   ") for line in match.group(1).splitlines())
    config = loads_config(text)
    assert [(h.name, h.zone) for h in config.hosts] == [("h0", "a"), ("h1", "b"), ("h2", "c")]
    assert [n.on for n in config.all_nodes()] == ["h0", "h1", "h2"] * 2
