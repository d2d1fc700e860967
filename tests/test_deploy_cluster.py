"""``pxq deploy`` end to end on three SSH test hosts in three zones (a store of three replicas
and a lock service of three replicas, TLS on): check, install from a wheelhouse (and again:
nothing to do), up, produce and consume through the cluster from this machine (the root
namespace, outside the hosts), status, restart of one node and its log, down (and again), and bad inventories that each fail
with a clear error while nothing starts: a host no replica may name, a host that cannot be
reached, a wrong key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pxq.cli import main
from tests.deploy_room import write_cluster_file
from tests.sshd_hosts import SshHostsMaker

pytestmark = pytest.mark.xdist_group("real-clusters")

NAMES = ["h0", "h1", "h2"]
ITEMS = 20
CLIENT_TIMEOUT_S = 60


def deploy(*args: str) -> Result:
    return CliRunner().invoke(main, ["deploy", *args])


def run_pxq(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S * 2,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def test_deploy_three_hosts_in_three_zones(
    ssh_hosts: SshHostsMaker, tmp_path: Path, wheel_cache: Path
) -> None:
    ssh = ssh_hosts(names=NAMES)
    path = write_cluster_file(tmp_path / "cluster", ssh, NAMES)
    known = tmp_path / "known_hosts"
    known.write_text("")
    ssh_args = ["--known-hosts", str(known)]

    # check, accepting the hosts' keys on first contact
    result = deploy("check", str(path), *ssh_args, "--accept-new-host-keys", "--json")
    assert result.exit_code == 0, result.output
    assert len(known.read_text().splitlines()) == 3

    # install: the wheelhouse copied, a venv per host; the second time nothing to do
    started = time.monotonic()
    result = deploy("install", str(path), *ssh_args, "--wheel-cache", str(wheel_cache), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    install_s = time.monotonic() - started
    assert [h["installed"] for h in doc["hosts"]] == [True, True, True], doc
    release = doc["release"]
    for name in NAMES:
        base = ssh.host(name).base_dir
        assert (base / "current").resolve() == base / f"venv-{release}"
    result = deploy("install", str(path), *ssh_args, "--wheel-cache", str(wheel_cache))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("already installed, nothing to do") == 3

    # up: every group gets a master
    result = deploy("up", str(path), *ssh_args, "--timeout", "60", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    doc = json.loads(result.stdout)
    assert sorted(doc["masters"]) == ["locks/0", "store0/0", "store0/1"]
    assert [(n["node"], n["host"], n["zone"]) for n in doc["nodes"]] == [
        ("s0", "h0", "z0"),
        ("l0", "h0", "z0"),
        ("s1", "h1", "z1"),
        ("l1", "h1", "z1"),
        ("s2", "h2", "z2"),
        ("l2", "h2", "z2"),
    ]
    assert {n["state"] for n in doc["nodes"]} == {"started"}
    assert {n["supervisor"] for n in doc["nodes"]} == {"watchdog"}
    for name in NAMES:
        cluster_dir = ssh.host(name).base_dir / "cluster"
        for f in [cluster_dir / "cluster.toml", *sorted((cluster_dir / "tls").iterdir())]:
            assert f.stat().st_mode & 0o777 == 0o600, f
        # The CA's key stays on the deploying machine.
        assert not (cluster_dir / "tls" / "ca.key").exists()
    # up again: everything is running already
    result = deploy("up", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    assert {n["state"] for n in json.loads(result.stdout)["nodes"]} == {"running"}

    # produce and consume from here, through the nodes on the hosts
    lines = "".join(f"item-{i}\n" for i in range(ITEMS))
    produced = run_pxq(
        "produce", "--config", str(path), "--topic", "events", "--timeout", "30", stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    consumed = run_pxq(
        "consume",
        "--config",
        str(path),
        "--group",
        "default",
        "--count",
        str(ITEMS),
        "--timeout",
        "30",
        "--json",
    )
    assert consumed.returncode == 0, consumed.stderr
    payloads = sorted(json.loads(line)["payload"] for line in consumed.stdout.splitlines())
    assert payloads == sorted(f"item-{i}" for i in range(ITEMS))

    # status: every node running, every group mastered by one of them
    result = deploy("status", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {n["state"] for n in doc["nodes"]} == {"running"}
    assert all(isinstance(n["node_pid"], int) for n in doc["nodes"])
    mastered = sorted(m for n in doc["nodes"] for m in n["masters"])
    assert mastered == ["locks/0", "store0/0", "store0/1"]
    result = deploy("status", str(path), *ssh_args)
    assert "all nodes up" in result.stdout

    # restart one node: a new process on its data; every group has a master again
    before = {n["node"]: n["node_pid"] for n in doc["nodes"]}
    result = deploy("restart", str(path), "s1", *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [(n["node"], n["state"]) for n in doc["nodes"]] == [("s1", "started")]
    assert sorted(doc["masters"]) == ["locks/0", "store0/0", "store0/1"]
    result = deploy("status", str(path), *ssh_args, "--json")
    after = {n["node"]: n["node_pid"] for n in json.loads(result.stdout)["nodes"]}
    assert after["s1"] != before["s1"]
    assert {k: v for k, v in after.items() if k != "s1"} == {
        k: v for k, v in before.items() if k != "s1"
    }
    result = deploy("logs", str(path), "s1", *ssh_args, "--lines", "200")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("watchdog[") >= 3  # started, stopping; started again
    assert "exited 0; stopping" in result.stdout
    result = deploy("restart", str(path), "x9", *ssh_args)
    assert result.exit_code == 2
    assert "no node 'x9'" in result.stderr

    # down, and again
    result = deploy("down", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    assert {n["state"] for n in json.loads(result.stdout)["nodes"]} == {"stopped"}
    result = deploy("down", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    assert {n["state"] for n in json.loads(result.stdout)["nodes"]} == {"not running"}
    result = deploy("status", str(path), *ssh_args, "--json")
    assert result.exit_code == 1
    assert {n["state"] for n in json.loads(result.stdout)["nodes"]} == {"stopped"}
    for name in NAMES:
        assert not list((ssh.host(name).base_dir / "run").glob("*.pid*"))

    # Bad inventories on the installed hosts: each refused with a clear error, nothing starts.
    text = path.read_text()
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(text.replace('on = "h2"', 'on = "h9"', 1))
    result = deploy("up", str(unknown), *ssh_args)
    assert result.exit_code == 2
    assert "h9" in result.stderr
    unreachable = write_cluster_file(
        tmp_path / "unreachable", ssh, NAMES, overrides={"h1": {"ssh_port": 2222}}
    )
    result = deploy("up", str(unreachable), *ssh_args, "--accept-new-host-keys")
    assert result.exit_code == 1
    assert "h1 (" in result.stderr and "unreachable" in result.stderr
    assert "nothing was started" in result.stderr
    wrong = tmp_path / "wrong_key"
    import asyncssh

    wrong.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    wrong.chmod(0o600)
    wrong_key = write_cluster_file(
        tmp_path / "wrongkey", ssh, NAMES, overrides={"h2": {"ssh_key": str(wrong)}}
    )
    result = deploy("up", str(wrong_key), *ssh_args)
    assert result.exit_code == 1
    assert "h2 (" in result.stderr and "authentication failed" in result.stderr
    assert "nothing was started" in result.stderr
    for name in NAMES:
        assert not list((ssh.host(name).base_dir / "run").glob("*.pid*"))
    print(f"install took {install_s:.1f} s")
