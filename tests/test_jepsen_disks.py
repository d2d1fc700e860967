"""``pxq test``'s disk nemeses (``power``, ``disk-full``) and its negative control.

Fast: the drawers' faults, the nemesis's actions and records on a fake target, the local
target's faults with and without lazy disks. Slow (FUSE and root; the control also needs
libeatmydata): two short ``pxq test`` runs of the queue workload whose only fault is a power
cut of every store replica, one with the nodes under eatmydata (``--unsafe-no-fsync``), which
must lose acknowledged items (exit 1), one without, which must lose nothing (exit 0).
"""

from __future__ import annotations

import asyncio
import ctypes.util
import json
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner

from net.jepsen.lazyfs import unavailable_reason
from net.jepsen.local import LocalTarget, local_cluster_toml
from net.jepsen.nemesis import (
    DISK_FULL_MS,
    POWER_MS,
    Fault,
    Layout,
    Nemesis,
    draw_schedule,
    layout_of,
)
from net.jepsen.target import UnsupportedFault
from pxq.check.history import NEMESIS, HistoryWriter
from pxq.cli import main
from pxq.config import loads_config

BASE_PORT = 7570
"""The end-to-end runs of ``pxq test`` use 7590-7595 (``tests/test_jepsen_runner.py`` too,
one run at a time)."""
CONTROL_SEED = 113
"""With ``--nemesis power`` and 4 s: one fault, a power cut of every store replica at 1.0 s
for 1.1 s (the next fault would start after the time limit)."""
CONTROL_TIME_S = 4

needs_fuse = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"lazy disks cannot mount here: {unavailable_reason()}"
)
needs_eatmydata = pytest.mark.skipif(
    ctypes.util.find_library("eatmydata") is None,
    reason="libeatmydata is not installed (Debian package eatmydata)",
)

# Fixed ports (75xx-76xx) and, for some, network namespaces: the files that use them run
# one after another on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("real-clusters")


@pytest.fixture(scope="module")
def layout() -> Layout:
    return layout_of(loads_config(local_cluster_toml(BASE_PORT, cluster_id="c-test"), file="x"))


def test_power_cuts_hit_a_node_a_majority_or_a_whole_service(layout: Layout) -> None:
    faults = [f for seed in range(30) for f in draw_schedule(seed, ("power",), layout, 30_000)]
    sizes = {len(f.nodes) for f in faults}
    assert sizes == {1, 2, 3}
    for f in faults:
        assert f.kind == "power" and f.master_of is None
        assert any(set(f.nodes) <= set(r) for r in layout.replicas.values())
        if f.heal_ms < 30_000:
            assert POWER_MS[0] <= f.duration_ms <= POWER_MS[1]
    whole = {f.nodes for f in faults if len(f.nodes) == 3}
    assert whole == set(layout.replicas.values()), "each service loses power as a whole"


def test_disk_full_faults_fill_one_nodes_disk(layout: Layout) -> None:
    faults = [f for seed in range(20) for f in draw_schedule(seed, ("disk-full",), layout, 30_000)]
    assert {f.nodes[0] for f in faults} == set(layout.nodes)
    for f in faults:
        assert f.kind == "disk-full" and len(f.nodes) == 1
        if f.heal_ms < 30_000:
            assert DISK_FULL_MS[0] <= f.duration_ms <= DISK_FULL_MS[1]


class DiskTarget:
    """Records what the nemesis asks; a node whose disk is filled stops (as a pxq node does
    at its first commit needing the data file to grow)."""

    name = "fake"
    faults = frozenset({"power", "disk-full"})
    nodes = ("s0", "s1", "s2")
    config_path = Path("unused")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.down: set[str] = set()

    def is_running(self, node: str) -> bool:
        return node not in self.down

    async def start(self, node: str) -> None:
        self.calls.append(("start", node))
        self.down.discard(node)

    async def power_cut(self, node: str) -> None:
        self.calls.append(("power-cut", node))
        self.down.add(node)

    async def fill_disk(self, node: str) -> None:
        self.calls.append(("fill", node))
        self.down.add(node)

    async def free_disk(self, node: str) -> None:
        self.calls.append(("free", node))


def test_the_nemesis_cuts_power_fills_disks_and_restarts_what_stopped() -> None:
    target = DiskTarget()
    config = loads_config(local_cluster_toml(BASE_PORT, cluster_id="c"), file="x")
    writer = HistoryWriter()
    schedule = (
        Fault(kind="power", start_ms=0, duration_ms=10, nodes=("s0", "s1", "s2")),
        Fault(kind="disk-full", start_ms=20, duration_ms=10, nodes=("s1",)),
        Fault(kind="disk-full", start_ms=40, duration_ms=10_000, nodes=("s2",)),
    )
    nemesis = Nemesis(target=target, config=config, writer=writer)  # type: ignore[arg-type]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        with pytest.raises(TimeoutError):  # the last fault outlasts the run
            async with asyncio.timeout(0.2):
                await nemesis.run(schedule, now, now + 60)
        await nemesis.heal_all()

    asyncio.run(run())
    assert target.calls == [
        *(("power-cut", n) for n in ("s0", "s1", "s2")),
        *(("start", n) for n in ("s0", "s1", "s2")),
        ("fill", "s1"),
        ("free", "s1"),
        ("start", "s1"),  # it stopped on its full disk
        ("fill", "s2"),
        ("free", "s2"),  # the final heal frees it first, then starts it
        ("start", "s2"),
    ]
    infos = [
        (op.f, op.value, op.get("phase"))
        for op in writer.ops
        if op.process == NEMESIS and op.type == "info"
    ]
    assert infos == [
        ("power-cut", ["s0", "s1", "s2"], "fault"),
        ("start", ["s0", "s1", "s2"], "heal"),
        ("disk-full", ["s1"], "fault"),
        ("disk-free", ["s1"], "heal"),
        ("start", ["s1"], "heal"),
        ("disk-full", ["s2"], "fault"),
        ("disk-free", ["s2"], "final-heal"),
        ("start", ["s2"], "final-heal"),
    ]
    assert nemesis.errors == [], "a node stopped by its full disk did not die by itself"


def test_the_disk_faults_need_lazy_disks(tmp_path: Path) -> None:
    plain = LocalTarget(tmp_path, base_port=BASE_PORT)
    assert not {"power", "disk-full"} & plain.faults
    for fault in (plain.power_cut("s0"), plain.fill_disk("s0"), plain.free_disk("s0")):
        with pytest.raises(UnsupportedFault):
            asyncio.run(fault)
    if unavailable_reason() is None:
        lazy = LocalTarget(tmp_path, base_port=BASE_PORT, lazy_disks=True)
        assert {"power", "disk-full"} <= lazy.faults


def test_the_cli_refuses_the_disk_faults_where_lazy_disks_cannot_mount(tmp_path: Path) -> None:
    if unavailable_reason() is None:
        pytest.skip("lazy disks can mount here: nothing to refuse")
    result = CliRunner().invoke(main, ["test", "--dir", str(tmp_path), "--nemesis", "power"])
    assert result.exit_code == 2, result.output
    assert "lazy disks" in result.output


def run_control(run_dir: Path, *unsafe: str) -> tuple[int, dict[str, object]]:
    """One short ``pxq test`` of the queue workload under a power cut of every store
    replica; its exit code and report, after checking the cut happened."""
    result = CliRunner().invoke(
        main,
        [
            "test",
            "--workload",
            "queue",
            "--nemesis",
            "power",
            "--time-limit",
            str(CONTROL_TIME_S),
            "--seed",
            str(CONTROL_SEED),
            "--base-port",
            str(BASE_PORT),
            "--dir",
            str(run_dir),
            "--json",
            *unsafe,
        ],
    )
    report = json.loads(result.output.splitlines()[-1])
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    cuts = [
        op
        for op in history
        if op["process"] == NEMESIS and op["f"] == "power-cut" and op["type"] == "info"
    ]
    assert [op["value"] for op in cuts] == [["s0", "s1", "s2"]], "the seed's cut must happen"
    assert "error" not in cuts[0], cuts[0]
    acked_before = [
        op for op in history[: cuts[0]["index"]] if op["f"] == "enqueue" and op["type"] == "ok"
    ]
    assert acked_before, "something acknowledged before the cut, to lose"
    return result.exit_code, report


def queue_checks(report: dict[str, object]) -> dict[str, dict[str, object]]:
    workloads = report["workloads"]
    assert isinstance(workloads, list)
    return {c["name"]: c for w in workloads for c in w["checks"]}


LOSS_CHECKS: Final = ("total-queue", "read-after-ack", "cursor-monotonic")
"""The checks that see acknowledged writes gone: an item never delivered and not in the store
(``lost``), an acknowledged offset the final read finds empty or holding another item, a
committed cursor that went back. Which of them sees it depends on how far the consumers got
before the cut (an item delivered before it is not ``lost`` to ``total-queue``, Jepsen's
definition, although the store no longer holds it)."""


@needs_fuse
@needs_eatmydata
def test_the_negative_control_without_fsync_loses_acknowledged_items(tmp_path: Path) -> None:
    code, report = run_control(tmp_path / "unsafe", "--unsafe-no-fsync")
    assert code == 1, report
    checks = queue_checks(report)
    failed = {name: checks[name]["summary"] for name in LOSS_CHECKS if not checks[name]["ok"]}
    assert failed, {name: checks[name]["summary"] for name in LOSS_CHECKS}


@needs_fuse
def test_a_power_cut_of_every_store_replica_loses_nothing_acknowledged(tmp_path: Path) -> None:
    code, report = run_control(tmp_path / "safe")
    assert code == 0, report
    assert report["verdict"] == "valid"
    assert queue_checks(report)["total-queue"]["ok"] is True
    assert not (tmp_path / "safe" / "cluster" / "disks").exists(), "the disks are removed"
