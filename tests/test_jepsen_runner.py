"""``pxq test`` (``net.jepsen``): the fault schedule drawn from a seed and its validation, the
local target's processes and clocks, recovery times, and one short end-to-end run.

The fast tests need nothing; ``test_local_target_*`` start one real cluster on 127.0.0.1 (a
few seconds) and the end-to-end test runs ``pxq test`` with every local nemesis for 24 s of
faults (about 40-60 s in all). The libfaketime tests skip, naming the Debian package, where
it is not installed; the end-to-end test also needs lazy disks (root, FUSE).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from net.cluster.probe import find_masters
from net.jepsen.launch import faketime_library, faketime_offset
from net.jepsen.lazyfs import unavailable_reason
from net.jepsen.local import AUDIT_GROUP, LocalTarget, local_cluster_toml
from net.jepsen.nemesis import (
    CLOCK_JUMP_MS_MAX,
    CLOCK_SKEW_MS_MAX,
    PAUSE_MS,
    Fault,
    Layout,
    Nemesis,
    NemesisError,
    check_nemeses,
    draw_schedule,
    layout_of,
    parse_nemeses,
)
from net.jepsen.runner import BadTestInput, TestOptions, recoveries
from net.jepsen.target import UnsupportedFault
from net.jepsen.workloads import WORKLOADS, LockWorkload, QueueWorkload, Workload
from pxq.check.history import NEMESIS, HistoryWriter
from pxq.cli import main
from pxq.config import loads_config

# Fixed ports (75xx-76xx) and, for some, network namespaces: the files that use them run
# one after another on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("real-clusters")

BASE_PORT = 7580
"""The runner's tests use 7580-7585 (the local target) and 7590-7595 (the end-to-end run)."""
E2E_BASE_PORT = 7590
E2E_NEMESES = "kill,pause,clock,power,disk-full"
E2E_SEED = 19722
E2E_TIME_S = 24
"""With every local nemesis and 24 s, five faults: a power cut of every store replica, a
pause of a store master, s2's disk full, a skew of the store replicas' clocks, a kill of a
store master (at 17.4 s planned: 6 s to spare for the restarts that push it back). The
faults spare the lock service for the sake of time (a lock outage costs the consumers a
lease)."""
PAXOS_LEASE_MS = 1000

needs_faketime = pytest.mark.skipif(
    faketime_library() is None,
    reason="libfaketime is not installed (Debian package faketime: apt-get install faketime)",
)


@pytest.fixture(scope="module")
def layout() -> Layout:
    return layout_of(loads_config(local_cluster_toml(BASE_PORT, cluster_id="c-test"), file="x"))


# -- the schedule -------------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_schedule_and_another_seed_another(layout: Layout) -> None:
    kinds = parse_nemeses("kill,pause,clock")
    first = draw_schedule(7, kinds, layout, 60_000)
    assert first == draw_schedule(7, parse_nemeses("clock,kill,pause"), layout, 60_000)
    assert first != draw_schedule(8, kinds, layout, 60_000)
    assert {f.kind for f in first} == {"kill", "pause", "clock"}


def test_a_schedule_holds_only_the_nemeses_asked_for_one_at_a_time_within_the_limit(
    layout: Layout,
) -> None:
    for seed in range(30):
        schedule = draw_schedule(seed, ("pause",), layout, 20_000)
        assert schedule, f"seed {seed}: no fault in 20 s"
        previous_heal = 0
        for fault in schedule:
            assert fault.kind == "pause"
            assert fault.start_ms > previous_heal, "faults overlap or have no quiet gap"
            assert fault.heal_ms <= 20_000
            if fault.heal_ms < 20_000:  # not cut by the time limit
                assert PAUSE_MS[0] <= fault.duration_ms <= PAUSE_MS[1]
                assert fault.duration_ms > PAXOS_LEASE_MS, "a pause must outlast a lease"
            assert set(fault.nodes) <= set(layout.nodes)
            previous_heal = fault.heal_ms


def test_kill_faults_hit_nodes_masters_and_majorities(layout: Layout) -> None:
    faults = [f for seed in range(20) for f in draw_schedule(seed, ("kill",), layout, 30_000)]
    masters = [f for f in faults if f.master_of is not None]
    majorities = [f for f in faults if len(f.nodes) == 2]
    assert masters and majorities and any(len(f.nodes) == 1 and not f.master_of for f in faults)
    for f in masters:
        service, group = f.master_of or ("", -1)
        assert 0 <= group < layout.groups[service]
        assert f.nodes[0] in layout.replicas[service]  # the fallback when no master answers
    for f in majorities:
        assert any(set(f.nodes) <= set(r) for r in layout.replicas.values())


def test_clock_faults_stay_within_their_bounds(layout: Layout) -> None:
    faults = [f for seed in range(20) for f in draw_schedule(seed, ("clock",), layout, 30_000)]
    assert any(len(f.nodes) == 1 for f in faults) and any(len(f.nodes) == 3 for f in faults)
    for f in faults:
        assert len(f.offsets_ms) == len(f.nodes)
        bound = CLOCK_JUMP_MS_MAX if len(f.nodes) == 1 else CLOCK_SKEW_MS_MAX
        assert all(abs(o) <= bound for o in f.offsets_ms)


def test_no_nemesis_draws_no_fault(layout: Layout) -> None:
    assert parse_nemeses("none") == ()
    assert draw_schedule(1, (), layout, 60_000) == ()


def test_an_unknown_or_unsupported_nemesis_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(NemesisError, match="'flood'"):
        parse_nemeses("kill,flood")
    target = LocalTarget(tmp_path, base_port=BASE_PORT)  # no clock: kill and pause only
    check_nemeses(("kill", "pause"), target)
    with pytest.raises(NemesisError, match="'partition'"):
        check_nemeses(("kill", "partition"), target)
    with pytest.raises(NemesisError, match="'clock'"):
        check_nemeses(("clock",), target)


def test_the_options_are_validated_before_anything_starts(tmp_path: Path) -> None:
    for bad, message in (
        ({"workloads": ("queue", "register-ish")}, "unknown workload"),
        ({"workloads": ()}, "no workload"),
        ({"time_limit_s": 0.0}, "time limit"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(BadTestInput, match=message):
            TestOptions(run_dir=tmp_path, **bad).validate()
    TestOptions(run_dir=tmp_path).validate()
    assert set(WORKLOADS) == {"queue", "lock", "register"}


def test_the_cli_exits_2_naming_a_bad_nemesis_or_workload(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in (
        (["--nemesis", "kill,flood"], "'flood'"),
        (["--nemesis", "partition"], "cannot inject 'partition'"),
        (["--workload", "queue,nope"], "unknown workload 'nope'"),
        (["--config", __file__, "--base-port", "7000"], "--base-port"),
    ):
        result = CliRunner().invoke(main, ["test", "--dir", str(tmp_path / "run"), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "run" / "history.jsonl").exists(), "nothing may start"
    assert runner.invoke(main, ["test", "-h"]).exit_code == 0


class FakeTarget:
    """Records what the nemesis asks; ``crashed`` nodes are down without being killed."""

    name = "fake"
    faults = frozenset({"kill", "pause", "clock"})
    nodes = ("s0", "s1", "s2")
    config_path = Path("unused")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.down: set[str] = set()

    def is_running(self, node: str) -> bool:
        return node not in self.down

    async def kill(self, node: str) -> None:
        self.calls.append(("kill", node, 0))
        self.down.add(node)

    async def start(self, node: str) -> None:
        self.calls.append(("start", node, 0))
        self.down.discard(node)

    async def pause(self, node: str) -> None:
        self.calls.append(("pause", node, 0))

    async def resume(self, node: str) -> None:
        self.calls.append(("resume", node, 0))

    async def set_clock_offset(self, node: str, offset_ms: int) -> None:
        self.calls.append(("clock", node, offset_ms))


def test_the_nemesis_injects_heals_and_records_each_action() -> None:
    target = FakeTarget()
    config = loads_config(local_cluster_toml(BASE_PORT, cluster_id="c"), file="x")
    writer = HistoryWriter()
    schedule = (
        Fault(kind="kill", start_ms=0, duration_ms=10, nodes=("s0", "s1")),
        Fault(kind="clock", start_ms=20, duration_ms=10, nodes=("s2",), offsets_ms=(-300,)),
        Fault(kind="pause", start_ms=40, duration_ms=10_000, nodes=("s1",)),
    )
    nemesis = Nemesis(target=target, config=config, writer=writer)  # type: ignore[arg-type]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        with pytest.raises(TimeoutError):  # the pause outlasts the run: the final heal ends it
            async with asyncio.timeout(0.2):
                await nemesis.run(schedule, now, now + 60)
        target.down.add("s2")  # died by itself
        await nemesis.heal_all()

    asyncio.run(run())
    assert target.calls == [
        ("kill", "s0", 0),
        ("kill", "s1", 0),
        ("start", "s0", 0),
        ("start", "s1", 0),
        ("clock", "s2", -300),
        ("clock", "s2", 0),
        ("pause", "s1", 0),
        ("resume", "s1", 0),  # the final heal
        ("start", "s2", 0),
        ("clock", "s2", 0),
    ]
    actions = [op for op in writer.ops if op.process == NEMESIS]
    assert [op.type for op in actions] == ["invoke", "info"] * 8
    infos = [(op.f, op.value, op.get("phase"), op.get("fault_no")) for op in actions[1::2]]
    assert infos[:5] == [
        ("kill", ["s0", "s1"], "fault", 0),
        ("start", ["s0", "s1"], "heal", 0),
        ("clock", [["s2", -300]], "fault", 1),
        ("clock", [["s2", 0]], "heal", 1),
        ("pause", ["s1"], "fault", 2),
    ]
    assert {phase for _, _, phase, _ in infos[5:]} == {"final-heal"}
    assert nemesis.done == 3
    assert nemesis.errors == ["s2 was not running at the final heal, not killed by us"]


# -- the local target's pieces ------------------------------------------------------------------


def test_the_local_cluster_file_moves_the_ports_and_adds_a_consumer_group() -> None:
    config = loads_config(local_cluster_toml(BASE_PORT, cluster_id="c-test"), file="x")
    ports = sorted(info.port for info in config.all_nodes())
    assert ports == list(range(BASE_PORT, BASE_PORT + 6))
    assert [g.name for g in config.topics[0].consumer_groups] == ["default", AUDIT_GROUP]
    with pytest.raises(ValueError, match="base port"):
        local_cluster_toml(65535, cluster_id="c-test")


def test_a_node_gets_libfaketime_and_the_preloads_in_its_environment(tmp_path: Path) -> None:
    lib = tmp_path / "libeatmydata.so"
    plain = LocalTarget(tmp_path, base_port=BASE_PORT, preload=[lib])
    assert plain.env("s0") == {"LD_PRELOAD": str(lib)}
    assert faketime_offset(1500) == "+1.500\n" and faketime_offset(-250) == "-0.250\n"
    if faketime_library() is None:
        with pytest.raises(FileNotFoundError, match="faketime"):
            LocalTarget(tmp_path, base_port=BASE_PORT, clock=True)
        return
    timed = LocalTarget(tmp_path, base_port=BASE_PORT, clock=True, preload=[lib])
    env = timed.env("s1")
    assert env["LD_PRELOAD"] == f"{faketime_library()}:{lib}"
    assert env["FAKETIME_TIMESTAMP_FILE"].endswith("clock/s1")
    assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert "clock" in timed.faults and "clock" not in plain.faults


HAND_OFF = """
import queue, sys, threading, time
jobs, done = queue.SimpleQueue(), queue.SimpleQueue()
def worker():  # as the node's writer thread waits for its commits
    while True:
        try:
            job = jobs.get(timeout=0.5)
        except queue.Empty:
            continue
        if job is None:
            return
        done.put(time.monotonic())
thread = threading.Thread(target=worker)
thread.start()
worst = 0.0
for _ in range(20):
    sent = time.monotonic()
    jobs.put(1)
    worst = max(worst, done.get() - sent)
jobs.put(None)
thread.join()
print(worst, time.time())
"""


@needs_faketime
def test_under_libfaketime_a_thread_hand_off_is_prompt_and_the_wall_clock_moves(
    tmp_path: Path,
) -> None:
    """The node's environment keeps a timed queue wait waking when an item arrives (with
    libfaketime's default monotonic fix it sleeps its whole timeout: leases are lost), and
    the offset file moves the wall clock alone."""
    target = LocalTarget(tmp_path, base_port=BASE_PORT, clock=True)
    clock_file = tmp_path / "clock" / "s0"
    clock_file.parent.mkdir()
    clock_file.write_text(faketime_offset(-3_600_000))
    env = {**os.environ, **target.env("s0")}
    out = subprocess.run(
        [sys.executable, "-c", HAND_OFF],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    worst_s, wall_s = map(float, out.stdout.split())
    assert worst_s < 0.25, f"a hand-off took {worst_s:.3f} s"
    assert 3500 < time.time() - wall_s < 3700, "the wall clock is not an hour behind"


# -- recovery times -----------------------------------------------------------------------------


def test_the_recovery_time_is_measured_from_each_heal_to_the_next_ok(tmp_path: Path) -> None:
    w = HistoryWriter()
    w.invoke(1000, 0, "enqueue", "a", topic="t", queue=0, key="k")
    w.invoke(1000, NEMESIS, "kill", ["s0"], phase="fault", fault_no=0)
    w.info(1010, NEMESIS, "kill", ["s0"], phase="fault", fault_no=0)
    w.info(1500, 0, "enqueue", "a", topic="t", queue=0, key="k", reason="timeout")
    w.invoke(2000, NEMESIS, "start", ["s0"], phase="heal", fault_no=0)
    w.info(2100, NEMESIS, "start", ["s0"], phase="heal", fault_no=0)
    w.invoke(2200, 1, "enqueue", "b", topic="t", queue=0, key="k")
    w.ok(2350, 1, "enqueue", "b", topic="t", queue=0, key="k", offset=0)
    w.invoke(3000, NEMESIS, "resume", [], phase="final-heal")
    w.info(3000, NEMESIS, "resume", [], phase="final-heal")
    context_config = loads_config(local_cluster_toml(BASE_PORT, cluster_id="c"), file="x")
    from net.jepsen.workloads import WorkloadContext

    context = WorkloadContext(
        config=context_config, writer=w, seed=1, run_id="r", time_limit_ms=1000
    )
    workloads: list[Workload] = [QueueWorkload(context), LockWorkload(context)]
    out = recoveries(w.ops, workloads, (), 500)
    assert out[0]["fault_no"] == 0 and out[0]["healed_ms"] == 1600
    assert out[0]["recovery_ms"] == {"queue": 250, "lock": None}
    assert out[1]["fault_no"] is None and out[1]["recovery_ms"] == {"queue": None, "lock": None}


# -- a real cluster -----------------------------------------------------------------------------


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="module")
def local_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTarget]:
    clock = faketime_library() is not None
    target = LocalTarget(tmp_path_factory.mktemp("local"), base_port=BASE_PORT, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(target.setup())
        yield target
    finally:
        loop.run_until_complete(target.teardown())
        loop.close()


def test_local_target_kills_restarts_pauses_and_resumes_nodes(local_target: LocalTarget) -> None:
    t = local_target
    assert t.nodes == ("s0", "s1", "s2", "l0", "l1", "l2")

    async def drill() -> None:
        await t.kill("s0")
        assert not t.is_running("s0")
        await t.kill("s0")  # idempotent
        await t.start("s0")  # returns once it accepts connections
        assert t.is_running("s0")
        pid = t._pids["s1"]
        await t.pause("s1")
        assert _state(pid) == "T" and t.is_running("s1"), "paused counts as running"
        await t.resume("s1")
        assert _state(pid) != "T"
        with pytest.raises(UnsupportedFault, match="partition"):
            await t.partition([("s0", "s1")])
        with pytest.raises(ValueError, match="no node"):
            await t.kill("s9")
        masters = await find_masters(t.config)
        assert ("store0", 0) in masters or len(masters) >= 1

    asyncio.run(drill())


@needs_faketime
def test_local_target_moves_a_nodes_wall_clock(local_target: LocalTarget) -> None:
    """The lock service stamps commands with its master's wall clock (``at_ms``): an hour
    ahead after the offset is set on every lock replica."""
    from net.client.driver import NodePool
    from pxq.lock.messages import LockOk, LockRedirect, ReadLock

    t = local_target
    locks = [n for n in t.nodes if n.startswith("l")]

    async def read_at_ms(pool: NodePool) -> int:
        for _ in range(100):
            for node in locks:
                request = ReadLock(key="clock-probe", through_log=True)  # stamped by the master
                answer = await pool.call(node, request, 2.0)
                if isinstance(answer, LockOk):
                    return answer.at_ms
                assert isinstance(answer, LockRedirect)
            await asyncio.sleep(0.05)
        raise AssertionError("no lock master answered")

    async def drill() -> None:
        pool = NodePool.for_config(t.config)
        try:
            before = await read_at_ms(pool)
            assert abs(before - time.time() * 1000) < 5000
            for node in locks:
                await t.set_clock_offset(node, 3_600_000)
            ahead = await read_at_ms(pool)
            assert 3_500_000 < ahead - time.time() * 1000 < 3_700_000
        finally:
            for node in locks:
                await t.set_clock_offset(node, 0)
            await pool.close()

    asyncio.run(drill())


# -- one run, end to end ------------------------------------------------------------------------


@needs_faketime
@pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"lazy disks cannot mount here: {unavailable_reason()}"
)
def test_pxq_test_runs_queue_and_lock_under_every_local_nemesis_and_passes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "test",
            "--workload",
            "queue,lock",
            "--nemesis",
            E2E_NEMESES,
            "--time-limit",
            str(E2E_TIME_S),
            "--seed",
            str(E2E_SEED),
            "--base-port",
            str(E2E_BASE_PORT),
            "--dir",
            str(run_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    assert report["verdict"] == "valid"
    kinds = {f["kind"] for f in report["schedule"][: report["faults_done"]]}
    assert kinds == set(E2E_NEMESES.split(",")), "the seed was chosen for one fault of each"
    names = {c["name"] for w in report["workloads"] for c in w["checks"]}
    assert {"total-queue", "queue-order", "replay", "linearizable", "fencing"} <= names
    assert report["recovery"]["ok"] is True
    assert report["recoveries"][-1]["fault_no"] is None  # the final heal, measured too
    counts = report["counts"]
    assert counts["queue"]["ok"] > 0 and counts["queue"]["drained"] is True
    assert counts["lock"]["granted"] > 0
    for name in ("history.jsonl", "results.json", "summary.txt"):
        assert (run_dir / name).is_file()
    assert "verdict: valid" in (run_dir / "summary.txt").read_text()
    history = (run_dir / "history.jsonl").read_text().splitlines()
    actions = [json.loads(line) for line in history if '"process":"nemesis"' in line]
    assert {a["f"] for a in actions} >= {"kill", "start", "power-cut", "disk-full", "disk-free"}
    assert not any("error" in a for a in actions), "every nemesis action done"
    for gone in ("data", "disks"):
        assert not (run_dir / "cluster" / gone).exists(), "the nodes' data is removed"
