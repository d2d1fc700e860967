"""``kill -9`` of a replica of a real 3-process cluster during a workload, then its restart:
the history the real clients recorded passes the simulator's queue checkers.

Each test starts ``pxq cluster up`` (3 replicas on free loopback ports, 1 topic of 4 queues,
2 Paxos groups, 2 consumer groups) under a temporary home, runs ``net.tools.history_run.HistoryRun``
(8 producer tasks through one ``pxq.AsyncClient``, one consumer per group) and meanwhile
SIGKILLs one node, waits 1.5 s and restarts it (``pxq node run``, same data dir, log appended):
the master of Paxos group 0 in one test, a follower of group 0 in the other. Then producing
stops, the consumers drain, and ``check_total_queue`` (lost = 0, unexpected = 0; duplicates
allowed and reported) and ``check_queue_order`` must pass. The run must have acknowledged
enqueues both before the kill and after the restart (on group 0's queues too), and every node
must be up again at the end. Everything is torn down in a ``finally`` (``pxq cluster down``,
then SIGKILL of whatever is left); every wait is bounded.

The history stays in the test's ``tmp_path`` (``history.jsonl``, with ``summary.json``);
failures name it. To replay by hand: ``pxq cluster up --config <cfg> --home <dir>``, then
``python -m net.tools.history_run --config <cfg> --seconds 8`` while killing a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from net.cluster.probe import find_masters
from net.cluster.processes import ClusterHome, is_node_process, node_command, read_pid
from net.cluster.processes import status as cluster_status
from net.tools.history_run import HistoryRun, RunOptions, check_history, wall_ms
from pxq.check.history import HistoryWriter, Op
from pxq.config import ClusterConfig, load_config
from tests.test_cli_cluster import kill_all, pxq, recorded_pids
from tests.test_net_cluster import free_ports

ROOT = Path(__file__).resolve().parent.parent
STORE = "store0"
TOPIC = "t0"
QUEUES = 4
PAXOS_GROUPS = 2
CONSUMER_GROUPS = ("g0", "g1")

BEFORE_KILL_S = 2.0
"""Produce at least this long before the kill."""
ACKED_BEFORE_MIN = 100
"""... and until at least this many enqueues were acknowledged."""
DOWN_S = 1.5
"""How long the killed node stays down."""
AFTER_RESTART_S = 3.0
"""Produce this long after the restart."""
ACKED_AFTER_MIN = 50
"""Enqueues invoked after the restart that must be acknowledged (on group 0's queues too)."""
WATCH_S = 0.1
"""How often the masters are probed during the run (for the report)."""
WAIT_S = 10.0
"""Bound of every wait for a process to die, a port to open, a master to appear."""


def cluster_toml(ports: list[int]) -> str:
    replicas = "".join(
        f'\n[[stores.replicas]]\nnode = "s{i}"\nhost = "127.0.0.1"\nport = {port}\n'
        for i, port in enumerate(ports)
    )
    groups = "".join(f'\n[[topics.consumer_groups]]\nname = "{g}"\n' for g in CONSUMER_GROUPS)
    return (
        '[cluster]\nname = "kill9"\n\n'
        f'[[stores]]\nname = "{STORE}"\ngroups = {PAXOS_GROUPS}\n{replicas}\n'
        f'[[topics]]\nname = "{TOPIC}"\nqueues = {QUEUES}\n{groups}'
    )


@dataclass(slots=True)
class Nemesis:
    """What the test did to the cluster, and the processes it started itself."""

    victim: str = ""
    masters_before: dict[int, str] = field(default_factory=dict)
    restarted: list[subprocess.Popen[bytes]] = field(default_factory=list)
    died_after_s: float | None = None
    masters_seen: list[tuple[int, dict[int, str]]] = field(default_factory=list)
    """(wall ms, the master of each Paxos group that has one), at every change."""


def restart_node(home: ClusterHome, config_file: Path, node: str) -> subprocess.Popen[bytes]:
    """Start ``node`` again as ``pxq cluster up`` does: same data dir, log appended, a session
    of its own, and its pid file rewritten so that ``pxq cluster down`` stops it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    with home.log_file(node).open("ab") as log:
        log.write(f"---- {time.strftime('%H:%M:%S')} test: restarting {node} ----\n".encode())
        log.flush()
        proc = subprocess.Popen(
            node_command(config_file.resolve(), node, home.data_dir(node).resolve()),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    home.pid_file(node).write_text(f"{proc.pid}\n", encoding="ascii")
    return proc


async def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def masters_of(config: ClusterConfig, *, preferred: bool = False) -> dict[int, str]:
    """The master of each Paxos group, once each group has one (bounded). ``preferred``: once
    each group is led by its preferred replica (``g mod n``: a start-up or failover leader
    hands over to it), so that a kill does not race a handover; after ``WAIT_S`` whatever
    masters there are."""
    nodes = [r.node for r in config.store(STORE).replicas]
    wanted = {g: nodes[g % len(nodes)] for g in range(PAXOS_GROUPS)}
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await find_masters(config)
        masters = {g: node for (store, g), node in found.items() if store == STORE}
        if masters == wanted or (len(masters) == PAXOS_GROUPS and not preferred):
            return masters
        if preferred and len(masters) == PAXOS_GROUPS and time.monotonic() > deadline:
            return masters
        if time.monotonic() > deadline:
            raise AssertionError(f"no master for every group within {WAIT_S} s: {masters}")
        await asyncio.sleep(0.05)


async def kill_and_restart(
    run: HistoryRun,
    config: ClusterConfig,
    config_file: Path,
    home: ClusterHome,
    role: Literal["master", "follower"],
    nemesis: Nemesis,
) -> None:
    """Produce for a while, SIGKILL the chosen node, restart it after ``DOWN_S``, produce on."""
    started = time.monotonic()
    await wait_until(
        lambda: time.monotonic() - started >= BEFORE_KILL_S and run.counts.ok >= ACKED_BEFORE_MIN,
        f"{ACKED_BEFORE_MIN} acknowledged enqueues",
    )
    masters = await masters_of(config, preferred=True)
    nemesis.masters_before = masters
    nodes = [r.node for r in config.store(STORE).replicas]
    if role == "master":
        victim = masters[0]
    else:  # a follower of group 0, preferably one that masters no group at all
        followers = [n for n in nodes if n != masters[0]]
        idle = [n for n in followers if n not in masters.values()]
        victim = (idle or followers)[0]
    nemesis.victim = victim
    pid = read_pid(home.pid_file(victim))
    assert pid is not None and is_node_process(pid, victim), f"{victim} is not running"
    run.nemesis("kill", victim, signal="SIGKILL", pid=pid, role=role)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await wait_until(lambda: not is_node_process(pid, victim), f"{victim} to die")
    nemesis.died_after_s = round(time.monotonic() - killed, 3)
    await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed)))
    proc = restart_node(home, config_file, victim)
    nemesis.restarted.append(proc)
    run.nemesis("start", victim, pid=proc.pid)
    await wait_until(lambda: proc.poll() is None and is_node_process(proc.pid, victim), "restart")
    await asyncio.sleep(AFTER_RESTART_S)
    assert proc.poll() is None, f"the restarted {victim} exited with {proc.returncode}"


async def watch_masters(
    config: ClusterConfig, stop: asyncio.Event, seen: list[tuple[int, dict[int, str]]]
) -> None:
    """Probe the masters every ``WATCH_S`` until ``stop``; append (wall ms, masters) on change."""
    last: dict[int, str] | None = None
    while not stop.is_set():
        found = await find_masters(config)
        masters = {g: node for (store, g), node in found.items() if store == STORE}
        if masters != last:
            seen.append((wall_ms(), masters))
            last = masters
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCH_S):
                await stop.wait()


async def scenario(
    config: ClusterConfig,
    config_file: Path,
    home: ClusterHome,
    role: Literal["master", "follower"],
    out: Path,
    nemesis: Nemesis,
) -> tuple[list[Op], HistoryRun]:
    with out.open("w", encoding="utf-8", buffering=1) as stream:
        writer = HistoryWriter(stream)
        run = HistoryRun(
            config, writer, RunOptions(topic=TOPIC, groups=CONSUMER_GROUPS, producers=8)
        )
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_masters(config, stop, nemesis.masters_seen))
        try:
            await run.start()
            await kill_and_restart(run, config, config_file, home, role, nemesis)
            await run.stop_producing()
            await run.drain()
        finally:
            stop.set()
            await run.close()
            await watcher
    return writer.ops, run


def group0(queue: object) -> bool:
    return isinstance(queue, int) and queue % PAXOS_GROUPS == 0


def analyse(ops: list[Op]) -> dict[str, object]:
    """Acks around the nemesis, and how long group 0 acknowledged nothing after the kill."""
    kill = next(op.time_ms for op in ops if op.process == "nemesis" and op.f == "kill")
    start = next(op.time_ms for op in ops if op.process == "nemesis" and op.f == "start")
    invoked_at: dict[object, int] = {}
    acks: list[tuple[int, int, bool]] = []  # (invoke ms, ok ms, group 0)
    for op in ops:
        if op.f != "enqueue":
            continue
        if op.type == "invoke":
            invoked_at[op.process] = op.time_ms
        elif op.type == "ok":
            acks.append((invoked_at[op.process], op.time_ms, group0(op.get("queue"))))
    g0_times = sorted(done for _, done, g0 in acks if g0)
    first_after = next((t for t in g0_times if t >= kill), None)
    gaps = [b - a for a, b in itertools.pairwise(g0_times)]
    return {
        "acked_before_kill": sum(1 for _, done, _ in acks if done < kill),
        "acked_after_restart": sum(1 for invoked, _, _ in acks if invoked >= start),
        "acked_after_restart_group0": sum(1 for invoked, _, g0 in acks if invoked >= start and g0),
        "group0_first_ack_after_kill_ms": None if first_after is None else first_after - kill,
        "group0_longest_ack_gap_ms": max(gaps, default=None),
        "down_ms": start - kill,
    }


def masters_timeline(ops: list[Op], seen: list[tuple[int, dict[int, str]]]) -> list[str]:
    """The master changes, in ms relative to the kill."""
    kill = next(op.time_ms for op in ops if op.process == "nemesis" and op.f == "kill")
    return [f"{at - kill:+d} ms: {masters}" for at, masters in seen]


@dataclass(slots=True)
class UpCluster:
    """A 3-node cluster started by ``pxq cluster up`` in a test's ``tmp_path``."""

    config_file: Path
    config: ClusterConfig
    home: ClusterHome
    history: Path
    seen: dict[str, int]
    """Every node pid recorded so far (killed at the end, whatever happened)."""


@contextlib.contextmanager
def up_cluster(tmp_path: Path) -> Iterator[UpCluster]:
    """Start the cluster; at the end, ``pxq cluster down`` and SIGKILL of every pid seen."""
    config_file = tmp_path / "cluster.toml"
    config_file.write_text(cluster_toml(free_ports(3)), encoding="utf-8")
    home = ClusterHome(tmp_path / "home")
    up = UpCluster(
        config_file=config_file,
        config=load_config(config_file),
        home=home,
        history=tmp_path / "history.jsonl",
        seen={},
    )
    try:
        started = pxq(
            "cluster", "up", "--config", str(config_file), "--home", str(home.root), cwd=tmp_path
        )
        assert started.returncode == 0, started.stdout + started.stderr
        up.seen.update(recorded_pids(home))
        yield up
    finally:
        up.seen.update(recorded_pids(home))
        pxq("cluster", "down", "--home", str(home.root), cwd=tmp_path, timeout_s=30)
        kill_all(up.seen)


def kill9_run(tmp_path: Path, role: Literal["master", "follower"]) -> None:
    nemesis = Nemesis()
    try:
        with up_cluster(tmp_path) as up:
            _kill9_checks(tmp_path, role, up, nemesis)
    finally:
        for proc in nemesis.restarted:
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.kill()
            proc.wait(timeout=10)


def _kill9_checks(
    tmp_path: Path, role: Literal["master", "follower"], up: UpCluster, nemesis: Nemesis
) -> None:
    config_file, config, home, history, seen = (
        up.config_file,
        up.config,
        up.home,
        up.history,
        up.seen,
    )
    ops, run = asyncio.run(scenario(config, config_file, home, role, history, nemesis))
    seen.update(recorded_pids(home))
    final = asyncio.run(cluster_status(home, config_file))
    masters_after = asyncio.run(masters_of(config))  # bounded: a handover may be under way

    results = check_history(ops, config, TOPIC, CONSUMER_GROUPS)
    total, order = results
    summary = {
        "role": role,
        "victim": nemesis.victim,
        "masters_before": nemesis.masters_before,
        "died_after_s": nemesis.died_after_s,
        "counts": run.counts.to_json(),
        **analyse(ops),
        "masters_seen": masters_timeline(ops, nemesis.masters_seen),
        "duplicated": total.details.get("duplicated"),
        "stored_twice": total.details.get("stored-twice"),
        "recovered": total.details.get("recovered"),
        "redeliveries": order.details.get("redeliveries"),
        "total_queue": total.summary,
        "queue_order": order.summary,
        "history": str(history),
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary))
    where = f"(history: {history}; summary: {tmp_path / 'summary.json'})"
    assert total.details["lost"] == 0, f"{total.summary}: {total.details} {where}"
    assert total.details["unexpected"] == 0, f"{total.summary} {where}"
    assert total.ok, f"{total.summary}: {total.details} {where}"
    assert order.ok, f"{order.summary}: {order.details} {where}"
    assert run.counts.drained, f"the consumers did not drain: {run.missing()} {where}"
    assert isinstance(summary["acked_before_kill"], int)
    assert summary["acked_before_kill"] >= ACKED_BEFORE_MIN, summary
    assert isinstance(summary["acked_after_restart_group0"], int)
    assert summary["acked_after_restart_group0"] >= ACKED_AFTER_MIN, summary
    assert final.all_up, final
    assert len(masters_after) == PAXOS_GROUPS, masters_after


def test_kill9_master_of_group0_then_restart(tmp_path: Path) -> None:
    kill9_run(tmp_path, "master")


def test_kill9_follower_then_restart(tmp_path: Path) -> None:
    kill9_run(tmp_path, "follower")
