"""``pxq deploy`` end to end on three SSH test hosts in three zones (a store of three replicas
and a lock service of three replicas, TLS and metrics on), one deployment for the whole story
(two would cost a second install and up): check, install from a wheelhouse (and again: nothing
to do), up (and again), produce and consume through the cluster from this machine (the root
namespace, outside the hosts), status, restart of one node and its log, down (and again), bad
inventories that each fail with a clear error while nothing starts (a host no replica may name,
a host that cannot be reached, a wrong key); then up again on the stopped nodes' data and the
"Done when" of issue 15: ``pxq cluster status`` from here with the cluster file; a rolling
``pxq deploy upgrade`` to a new release (a copy of this source tree whose version says
``.post1``: a second wheelhouse, a new release id) under a steady producer and consumer load
from here, recorded as a Jepsen history (``net.tools.history_run``: bounded by its producers'
pause and the upgrade's time, ending with the final reads) that the total-queue checker finds
without a lost item; ``pxq produce``/``pxq consume`` after it; then every process of the host of
a store group's master SIGKILLed (its nodes and their watchdogs: the host's crash) and every
group served again within the failover bound; then ``down`` and ``destroy`` (refused without
``--yes``, then done, then done again: nothing left)."""

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

import asyncssh
import pytest
from click.testing import CliRunner, Result

from net.cluster.probe import wait_for_masters
from net.config import NetConfig
from net.deploy.install import SOURCE_PARTS, build_wheelhouse, project_version
from net.tools.history_run import HistoryRun, RunOptions, check_history
from pxq.check.history import HistoryWriter, Op
from pxq.cli import main
from pxq.config import ClusterConfig
from pxq.config.parser import load_config
from tests.deploy_room import write_cluster_file
from tests.sshd_hosts import SshHostsMaker

pytestmark = pytest.mark.xdist_group("real-clusters")

NAMES = ["h0", "h1", "h2"]
ROOT = Path(__file__).resolve().parent.parent
ITEMS = 20
CLIENT_TIMEOUT_S = 120
UPGRADE_TIMEOUT_S = 900
OBSERVE_SLACK_S = 1.0
"""What the failover measurement adds to the bound: probing every 50 ms with probes of up to
0.5 s, on a machine whose two cores also run the hosts, the clients and the other tests."""


def deploy(*args: str) -> Result:
    return CliRunner().invoke(main, ["deploy", *args])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_pxq(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
        env=env(),
    )


def produce_and_consume(path: Path, prefix: str, *, consume_timeout_s: int) -> None:
    """``pxq produce`` of ITEMS lines ``<prefix>-<i>`` to topic events, then ``pxq consume``
    of as many by group default: exactly those come back."""
    lines = "".join(f"{prefix}-{i}\n" for i in range(ITEMS))
    produced = run_pxq(
        "produce", "--config", str(path), "--topic", "events", "--timeout", "30", stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    consumed = run_pxq(
        "consume", "--config", str(path), "--topic", "events", "--group", "default",
        "--count", str(ITEMS), "--timeout", str(consume_timeout_s), "--json",
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    payloads = sorted(json.loads(line)["payload"] for line in consumed.stdout.splitlines())
    assert payloads == sorted(f"{prefix}-{i}" for i in range(ITEMS))


def bumped_source(directory: Path) -> Path:
    """A copy of this source tree whose version has ``.post1`` appended: a new release."""
    directory.mkdir()
    for part in SOURCE_PARTS:
        path = ROOT / part
        if path.is_dir():
            shutil.copytree(path, directory / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, directory / part)
    pyproject = directory / "pyproject.toml"
    version = project_version(ROOT)
    text = pyproject.read_text()
    assert f'version = "{version}"' in text
    pyproject.write_text(text.replace(f'version = "{version}"', f'version = "{version}.post1"', 1))
    return directory


def failover_bound_s(config: ClusterConfig) -> float:
    """One lease plus one election, the slower of the stores' and the lock service's: the
    lease a dead master's acceptors still honour, then a campaign (its random delay) and a
    Prepare and an Accept round, each retransmitted once at worst."""
    paxos = [s.paxos for s in config.stores]
    if config.locks is not None:
        paxos.append(config.locks.paxos)
    return (
        max(p.lease_ms + p.election_jitter_ms + 2 * 2 * p.accept_timeout_ms for p in paxos) / 1000
    )


async def upgrade_under_load(
    config: ClusterConfig, upgrade_args: list[str], out: Path
) -> tuple[list[Op], HistoryRun, subprocess.CompletedProcess[str]]:
    """``pxq deploy upgrade`` (a subprocess) while producers and consumers run from here."""
    options = RunOptions(
        topic="history", producers=2, pause_ms=20, drain_timeout_s=60.0, call_timeout_ms=10_000
    )
    with out.open("w", encoding="utf-8", buffering=1) as stream:
        writer = HistoryWriter(stream)
        run = HistoryRun(config, writer, options)
        try:
            await run.start()
            await asyncio.sleep(2)
            run.nemesis("upgrade", None)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pxq.cli",
                "deploy",
                "upgrade",
                *upgrade_args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env(),
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), UPGRADE_TIMEOUT_S)
            run.nemesis("upgraded", None)
            await asyncio.sleep(2)
            await run.stop_producing()
            await run.drain()
            await run.read_store()
        finally:
            await run.close()
    done = subprocess.CompletedProcess(
        ["pxq", "deploy", "upgrade"], process.returncode or 0, stdout.decode(), stderr.decode()
    )
    return writer.ops, run, done


async def serve_again(config: ClusterConfig, timeout_s: float) -> float:
    """Seconds until every Paxos group has a master again (each answers its probe)."""
    started = time.monotonic()
    await wait_for_masters(config, NetConfig.for_cluster(config), timeout_s=timeout_s)
    return time.monotonic() - started


def test_deploy_three_hosts_in_three_zones_upgrade_crash_and_destroy(
    ssh_hosts: SshHostsMaker, tmp_path: Path, wheel_cache: Path
) -> None:
    ssh = ssh_hosts(names=NAMES)
    path = write_cluster_file(tmp_path / "cluster", ssh, NAMES, metrics=True, history_topic=True)
    config = load_config(path)
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
    first = doc["release"]
    for name in NAMES:
        base = ssh.host(name).base_dir
        assert (base / "current").resolve() == base / f"venv-{first}"
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
    produce_and_consume(path, "item", consume_timeout_s=30)

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

    # up again, on the stopped nodes' data: every group gets a master
    started = time.monotonic()
    result = deploy("up", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["masters"]) == ["locks/0", "store0/0", "store0/1"]
    up_again_s = time.monotonic() - started

    # clients from here with the cluster file: cluster status
    status = run_pxq("cluster", "status", "--config", str(path), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    doc = json.loads(status.stdout)
    assert doc["all_up"] and not doc["without_master"]
    assert {(n["node"], n["remote"], n["up"]) for n in doc["nodes"]} == {
        (f"{kind}{i}", True, True) for kind in "sl" for i in range(3)
    }

    # a rolling upgrade to a new release under load: nothing acknowledged is lost
    source = bumped_source(tmp_path / "bumped")
    second = build_wheelhouse(wheel_cache, source).release
    assert second != first and second.startswith(project_version(ROOT) + ".post1-")
    upgrade_args = [
        str(path), *ssh_args, "--wheel-cache", str(wheel_cache), "--source", str(source),
        "--json",
    ]  # fmt: skip
    ops, run, upgraded = asyncio.run(
        upgrade_under_load(config, upgrade_args, tmp_path / "history.jsonl")
    )
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    doc = json.loads(upgraded.stdout)
    assert doc["release"] == second
    assert [(n["node"], n["state"], n["release_before"]) for n in doc["nodes"]] == [
        (node, "upgraded", first) for node in ("s0", "s1", "s2", "l0", "l1", "l2")
    ]
    upgrade_s = doc["elapsed_s"]
    assert run.counts.ok > 50, run.counts  # the load ran throughout
    assert run.counts.drained, run.counts
    total, order = check_history(ops, config, run.topic, run.groups)
    assert total.ok, total.to_json()
    assert total.details["lost"] == 0
    assert order.ok, order.to_json()
    reads = [op for op in ops if op.f == "store_read" and op.type == "ok"]
    assert len(reads) == run.queues
    result = deploy("status", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    nodes = json.loads(result.stdout)["nodes"]
    assert {n["release"] for n in nodes} == {second}
    for name in NAMES:
        base = ssh.host(name).base_dir
        assert (base / "current").resolve() == base / f"venv-{second}"
    # re-run: every node is on the release already
    result = deploy("upgrade", *upgrade_args)
    assert result.exit_code == 0, result.output
    assert {n["state"] for n in json.loads(result.stdout)["nodes"]} == {"current"}

    # produce and consume through the upgraded cluster, from here
    produce_and_consume(path, "after", consume_timeout_s=60)

    # a host crashes: SIGKILL every process of the host mastering store0/0, its watchdogs
    # first (they would restart the nodes); every group is served again within the bound
    doc = json.loads(deploy("status", str(path), *ssh_args, "--json").stdout)
    victim = next(n["host"] for n in doc["nodes"] if "store0/0" in n["masters"])
    pids = [
        pid
        for n in doc["nodes"]
        if n["host"] == victim
        for pid in (n["pid"], n["node_pid"])
        if isinstance(pid, int)
    ]
    assert len(pids) == 4
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    bound_s = failover_bound_s(config)
    taken_s = asyncio.run(serve_again(config, timeout_s=30))
    assert taken_s <= bound_s + OBSERVE_SLACK_S, (taken_s, bound_s)
    produced = run_pxq("produce", "--config", str(path), "--topic", "events", stdin="late\n")
    assert produced.returncode == 0, produced.stderr
    result = deploy("status", str(path), *ssh_args, "--json")
    assert result.exit_code == 1
    down = {n["node"] for n in json.loads(result.stdout)["nodes"] if n["state"] != "running"}
    assert down == {n.node for n in config.nodes_on(victim)}

    # down, then destroy: refused without --yes, then everything goes, then nothing is left
    result = deploy("down", str(path), *ssh_args, "--json")
    assert result.exit_code == 0, result.output
    result = deploy("destroy", str(path), *ssh_args)
    assert result.exit_code == 2
    assert "--yes" in result.stderr and str(ssh.host("h1").base_dir / "data") in result.stderr
    assert (ssh.host("h1").base_dir / "data").is_dir()
    result = deploy("destroy", str(path), *ssh_args, "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for h in doc["hosts"]:
        base = ssh.host(h["host"]).base_dir
        assert {Path(p).name for p in h["removed"]} >= {
            "data", "logs", "run", "cluster", "wheelhouse", "current", f"venv-{first}",
            f"venv-{second}",
        }  # fmt: skip
        assert list(base.iterdir()) == []
    result = deploy("destroy", str(path), *ssh_args, "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("nothing left to remove") == 3
    print(
        f"install {install_s:.1f} s, up again {up_again_s:.1f} s, upgrade of 3 hosts "
        f"{upgrade_s:.1f} s, {run.counts.ok} items acknowledged under the upgrade, "
        f"served again {taken_s:.2f} s after the host crash (bound {bound_s:.2f} s)"
    )
