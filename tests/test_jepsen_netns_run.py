"""``pxq test --target netns``: the partition and slow-link nemeses (drawn from a seed, carried
out and recorded on a fake target), the target factory and its refusals, libfaketime's and the
preloaded libraries' environment on the netns target, one end-to-end run of queue and lock
under partitions, slow links and kills, and the netns target on lazy disks (a power cut of a
node and its restart on what its disk kept, a full disk and its freeing).

The fast tests need nothing; the end-to-end run (about 30 s) needs root, ``ip`` and ``nft``,
the lazy disks (about 10 s) FUSE too; each skips naming what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from net.client.connection import ClusterIdentity
from net.cluster.probe import node_masters, service_probes
from net.config import NetConfig
from net.errors import NetError
from net.jepsen.hosts import STATE_NAME, missing_tools
from net.jepsen.launch import faketime_library
from net.jepsen.lazyfs import LIBEATMYDATA, unavailable_reason
from net.jepsen.local import LocalTarget, local_cluster_toml
from net.jepsen.nemesis import (
    PARTITION_MS,
    SLOW_DELAY_MS,
    Fault,
    Layout,
    Nemesis,
    NemesisError,
    draw_schedule,
    layout_of,
)
from net.jepsen.netns import NetnsTarget
from net.jepsen.record import timeline
from net.jepsen.target import Link
from net.jepsen.targets import BadTarget, make_target
from pxq.check.history import NEMESIS, HistoryWriter
from pxq.cli import main
from pxq.config import loads_config

MISSING = missing_tools()
needs_hosts = pytest.mark.skipif(
    bool(MISSING), reason=f"network namespaces need: {', '.join(MISSING)}"
)
needs_fuse = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"lazy disks cannot mount here: {unavailable_reason()}"
)

# Fixed ports (75xx-76xx) and, for some, network namespaces: the files that use them run
# one after another on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("real-clusters")
PORT = 7600
E2E_SEED = 181
"""With kill,partition,slow-link and 18 s: slow s0->s1, a one-way cut of s1 from the other
store replicas, kill the master of a store group; all three in the first 13 s. The faults
spare the lock service (see docs/testing-real-clusters.md: a consumer out of touch with it
longer than its lease)."""


@pytest.fixture(scope="module")
def layout() -> Layout:
    return layout_of(loads_config(local_cluster_toml(PORT, cluster_id="c-test"), file="x"))


def _within_one_service(layout: Layout, links: Sequence[Link]) -> bool:
    nodes = {n for link in links for n in link}
    return any(nodes <= set(replicas) for replicas in layout.replicas.values())


# -- the schedule -------------------------------------------------------------------------------


def test_partitions_take_every_shape_within_one_service(layout: Layout) -> None:
    faults = [f for s in range(40) for f in draw_schedule(s, ("partition",), layout, 30_000)]
    shapes = {f.what.split("(")[1].split(")")[0] for f in faults if f.master_of is None}
    assert shapes == {"halves", "bridge", "one-way"}
    masters = [f for f in faults if f.master_of is not None]
    assert masters, "no master isolated in 40 seeds"
    for f in faults:
        assert f.kind == "partition" and f.links
        assert _within_one_service(layout, f.links), f.what
        assert all(a != b for a, b in f.links)
        if f.heal_ms < 30_000:  # not cut by the time limit
            assert PARTITION_MS[0] <= f.duration_ms <= PARTITION_MS[1]
    for f in masters:  # the fallback's links, both ways, until the master is found
        service, _ = f.master_of or ("", 0)
        others = set(layout.replicas[service]) - {f.nodes[0]}
        assert set(f.links) == {(f.nodes[0], o) for o in others} | {(o, f.nodes[0]) for o in others}
    one_way = [f for f in faults if "one-way" in f.what]
    assert all(not {(b, a) for a, b in f.links} & set(f.links) for f in one_way)


def test_slow_links_are_a_nodes_links_or_one_link_within_bounds(layout: Layout) -> None:
    faults = [f for s in range(20) for f in draw_schedule(s, ("slow-link",), layout, 30_000)]
    assert {len(f.links) for f in faults} == {1, 4}  # one link; a node's links both ways
    for f in faults:
        assert SLOW_DELAY_MS[0] <= f.delay_ms <= SLOW_DELAY_MS[1]
        assert _within_one_service(layout, f.links), f.what
        assert f.to_json()["delay_ms"] == f.delay_ms
        assert f.to_json()["links"] == [list(link) for link in f.links]


def test_a_service_of_one_replica_cannot_be_partitioned() -> None:
    lonely = Layout(replicas={"store0": ("s0",)}, groups={"store0": 1})
    with pytest.raises(NemesisError, match="at least 2 replicas"):
        draw_schedule(1, ("partition",), lonely, 10_000)


# -- carrying it out ----------------------------------------------------------------------------


class NetworkFake:
    """Records the network calls the nemesis makes."""

    name = "fake"
    faults = frozenset({"partition", "slow-link"})
    nodes = ("s0", "s1", "s2", "l0", "l1", "l2")
    config_path = Path("unused")

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Link, ...], int]] = []

    def is_running(self, node: str) -> bool:
        return True

    async def partition(self, cuts: Sequence[Link]) -> None:
        self.calls.append(("partition", tuple(cuts), 0))

    async def slow_links(self, links: Sequence[Link], delay_ms: int) -> None:
        self.calls.append(("slow", tuple(links), delay_ms))

    async def heal_network(self) -> None:
        self.calls.append(("heal", (), 0))


def test_the_nemesis_cuts_slows_heals_and_records_the_links() -> None:
    target = NetworkFake()
    config = loads_config(local_cluster_toml(PORT, cluster_id="c"), file="x")
    writer = HistoryWriter()
    cut = (("s1", "s0"), ("s1", "s2"))
    slow = (("l0", "l1"),)
    schedule = (
        Fault(kind="partition", start_ms=0, duration_ms=10, nodes=("s0", "s1", "s2"), links=cut),
        Fault(kind="slow-link", start_ms=20, duration_ms=10, nodes=("l0", "l1"), links=slow,
              delay_ms=120),
    )  # fmt: skip
    nemesis = Nemesis(target=target, config=config, writer=writer)  # type: ignore[arg-type]

    async def run() -> None:
        now = asyncio.get_running_loop().time()
        await nemesis.run(schedule, now, now + 60)
        await nemesis.heal_all()

    asyncio.run(run())
    assert target.calls == [
        ("partition", cut, 0),
        ("heal", (), 0),
        ("slow", slow, 120),
        ("heal", (), 0),
        ("heal", (), 0),  # the final heal
    ]
    infos = [op for op in writer.ops if op.process == NEMESIS and op.type == "info"]
    assert [(op.f, op.value, op.get("phase")) for op in infos] == [
        ("partition", [["s1", "s0"], ["s1", "s2"]], "fault"),
        ("heal", [["s1", "s0"], ["s1", "s2"]], "heal"),
        ("slow-link", [["l0", "l1"]], "fault"),
        ("heal", [["l0", "l1"]], "heal"),
        ("heal", None, "final-heal"),
    ]
    assert infos[2].get("delay_ms") == 120
    assert nemesis.errors == []
    windows = timeline(writer.ops).windows  # the run record pairs each with its heal
    assert [(w.f, w.ended_by) for w in windows] == [("partition", "heal"), ("slow-link", "heal")]


# -- the target factory -------------------------------------------------------------------------


def test_the_factory_builds_each_target_or_says_why_not(tmp_path: Path) -> None:
    assert isinstance(make_target("local", tmp_path / "l", base_port=PORT), LocalTarget)
    with pytest.raises(BadTarget, match="unknown target 'ssh'"):
        make_target("ssh", tmp_path / "x")
    with pytest.raises(BadTarget, match="base port"):
        make_target("local", tmp_path / "l", base_port=65535)
    if MISSING:
        with pytest.raises(BadTarget, match="the netns target needs"):
            make_target("netns", tmp_path / "n")
        return
    netns = make_target("netns", tmp_path / "n", base_port=PORT)
    assert isinstance(netns, NetnsTarget)
    assert {"partition", "slow-link"} <= netns.faults and "clock" not in netns.faults
    assert not {"power", "disk-full"} & netns.faults
    if unavailable_reason() is None:
        lazy = make_target("netns", tmp_path / "d", base_port=PORT, lazy_disks=True)
        assert {"partition", "power", "disk-full"} <= lazy.faults


def test_the_netns_target_runs_its_nodes_under_libfaketime_for_clock_faults(
    tmp_path: Path,
) -> None:
    if faketime_library() is None:
        with pytest.raises(FileNotFoundError, match="faketime"):
            NetnsTarget(tmp_path, clock=True)
        return
    target = NetnsTarget(tmp_path, clock=True)
    assert "clock" in target.faults
    env = target.env("s1")
    assert env["LD_PRELOAD"] == str(faketime_library())
    assert env["FAKETIME_TIMESTAMP_FILE"] == str(tmp_path.resolve() / "clock" / "s1")
    assert env["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    assert NetnsTarget(tmp_path).env("s1") == {}
    eatmydata = Path(LIBEATMYDATA)
    both = NetnsTarget(tmp_path, clock=True, preload=(eatmydata,)).env("s1")
    assert both["LD_PRELOAD"] == f"{faketime_library()}:{eatmydata}"  # libfaketime first
    assert NetnsTarget(tmp_path, preload=(eatmydata,)).env("s1") == {"LD_PRELOAD": str(eatmydata)}


def test_the_cli_refuses_network_faults_on_the_local_target(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["test", "--dir", str(tmp_path / "run"), "--nemesis", "slow-link"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot inject 'slow-link'" in result.output
    assert not (tmp_path / "run" / "history.jsonl").exists(), "nothing may start"


# -- end to end ---------------------------------------------------------------------------------


@needs_hosts
def test_pxq_test_on_netns_passes_under_partitions_slow_links_and_kills(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["test", "--target", "netns", "--nemesis", "partition,slow-link,kill"]
    argv += ["--time-limit", "18", "--seed", str(E2E_SEED), "--dir", str(run_dir), "--json"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    assert report["target"] == "netns" and report["verdict"] == "valid"
    kinds = {f["kind"] for f in report["schedule"][: report["faults_done"]]}
    assert kinds == {"kill", "partition", "slow-link"}
    names = {c["name"] for w in report["workloads"] for c in w["checks"]}
    assert {"total-queue", "queue-order", "linearizable", "fencing"} <= names
    assert report["recovery"]["ok"] is True
    assert report["counts"]["queue"]["deliveries"].keys() == {"default", "audit"}
    history = (run_dir / "history.jsonl").read_text().splitlines()
    actions = [json.loads(line) for line in history if '"process":"nemesis"' in line]
    done = [(a["f"], a["value"]) for a in actions if a["type"] == "info" and "error" not in a]
    assert {f for f, _ in done} >= {"partition", "slow-link", "heal", "kill", "start"}
    cuts = [v for f, v in done if f == "partition"]
    assert all(isinstance(link, list) and len(link) == 2 for v in cuts for link in v)
    state = run_dir / "cluster" / "hosts" / STATE_NAME
    assert not state.exists(), "the room's record goes only once nothing of it is left"


# -- lazy disks -----------------------------------------------------------------------------------

ANSWER_TIMEOUT_S = 15.0


def _mounts_under(path: Path) -> list[str]:
    root = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        return [f[4] for line in mounts if (f := line.split(" "))[4].startswith(root)]


async def _answers(target: NetnsTarget, node: str) -> bool:
    """Whether ``node`` answers its service's probe within ``ANSWER_TIMEOUT_S``."""
    config = target.config
    info = next(i for i in config.all_nodes() if i.node == node)
    probes = {sp.service: sp.probes for sp in service_probes(config)}[info.service]
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(NetError):
            answered = await node_masters(
                info, probes, NetConfig.for_cluster(config), cluster=ClusterIdentity.of(config)
            )
            if answered is not None:
                return True
        await asyncio.sleep(0.1)
    return False


@needs_hosts
@needs_fuse
def test_the_netns_target_cuts_a_nodes_power_and_restarts_it_on_what_its_disk_kept(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cluster"
    target = NetnsTarget(root, lazy_disks=True)
    assert {"power", "disk-full"} <= target.faults

    async def body() -> None:
        await target.setup()
        try:
            data = target.hosts.host("s0").dir / "data"
            backing = root / "disks" / "s0"
            assert str(data.resolve()) in _mounts_under(root), "s0's data dir is no lazy disk"
            (data / "unsynced").write_bytes(b"never fsynced")
            await target.power_cut("s0")
            assert not target.is_running("s0")
            assert not (data / "unsynced").exists(), "the power cut kept an unsynced file"
            kept = {p.relative_to(backing) for p in backing.rglob("*") if p.is_file()}
            assert kept, "s0 made nothing durable on its disk before the cut"
            assert {p.relative_to(data) for p in data.rglob("*") if p.is_file()} == kept
            await target.start("s0")
            assert await _answers(target, "s0"), "s0 does not serve after the power cut"
            assert target.is_running("s0")

            full = target.hosts.host("s1").dir / "data"
            await target.fill_disk("s1")
            assert os.statvfs(full).f_bavail == 0
            with pytest.raises(OSError) as caught:
                (full / "new").write_bytes(b"x")
            assert caught.value.errno == errno.ENOSPC
            await target.free_disk("s1")
            assert os.statvfs(full).f_bavail > 0
            await target.masters()  # every group still has a master
        finally:
            await target.teardown()

    asyncio.run(body())
    assert _mounts_under(root) == [], "a lazy disk outlived the teardown"
