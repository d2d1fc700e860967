"""The nemesis: selectors that wait or fail, triggers on event fields, partition shapes,
per-path network faults, the final heal undoing every fault, and every random fault kind
drawn and counted."""

from __future__ import annotations

import io
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from pxq.check.history import HistoryWriter
from pxq.effects import Rng, StorageView
from sim import runner, swarm
from sim.disk import DiskSpec
from sim.fault_kinds import RANDOM_DEFAULT, RANDOM_KINDS
from sim.nemesis import Nemesis
from sim.network import DelaySpec, NetworkSpec
from sim.scenario import AfterSpec, FaultSpec, ScenarioError, load, loads
from sim.world import World
from tests.sim_nodes import CounterNode, Fill

ROOT = Path(__file__).resolve().parent.parent

NODES = ["n0", "n1", "n2", "n3", "n4"]


def _world(
    n: int = 3, *, tick_ms: int | None = 5, capacity: int | None = None, reserve: int = 0
) -> World:
    world = World(
        seed=3,
        network=NetworkSpec(delay=DelaySpec(dist="constant", mean_us=100)),
        disk=DiskSpec(
            fsync=DelaySpec(dist="constant", mean_us=500),
            capacity_bytes=capacity,
            reserve_bytes=reserve,
        ),
        drift_ppm_max=100,
        skew_ms_max=50,
    )
    names = NODES[:n]

    def factory(nid: str, view: StorageView, rng: Rng) -> CounterNode:
        return CounterNode(nid, [p for p in names if p != nid], view, rng, tick_ms=tick_ms)

    for name in names:
        world.add_node(name, factory)
    world.start()
    return world


def _nemesis(world: World, master: dict[int, str | None] | None = None) -> Nemesis:
    masters = master if master is not None else {0: "n0"}
    replicas = sorted(world.hosts)
    return Nemesis(world, HistoryWriter(io.StringIO()), random.Random(5), replicas, masters.get)


# -- scenario errors -------------------------------------------------------------------------

LOG = """
version = 1
name = "x"
duration_ms = 1000
[workload]
kind = "log"
"""
QUEUE_LOCKS = """
version = 1
name = "x"
duration_ms = 1000
[workload]
kind = "queue"
ownership = "locks"
"""
LOCK = """
version = 1
name = "x"
duration_ms = 1000
[workload]
kind = "lock"
clients = 4
"""


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            LOG + '[random_faults]\nkinds = ["lock_crash"]\n',
            "random_faults.kinds[0]",
            "lock service",
        ),
        (LOG + '[random_faults]\nkinds = ["loss", "consumer_pause"]\n', "kinds[1]", "queue"),
        (LOG + '[random_faults]\nkinds = ["seek"]\n', "kinds[0]", "consumer_groups"),
        (LOG + '[random_faults]\nkinds = ["producer_crash"]\n', "kinds[0]", "queue"),
        (QUEUE_LOCKS + '[random_faults]\nkinds = ["scheduler_crash"]\n', "kinds[0]", "schedulers"),
        (
            LOG + '[clock]\nskew_ms_max = 0\n[random_faults]\nkinds = ["wall_step"]\n',
            "kinds[0]",
            "skew",
        ),
        (LOG + '[random_faults]\nkinds = ["disk_full"]\n', "kinds[0]", "reserve_bytes"),
        (LOG + '[random_faults]\nkinds = ["meteor"]\n', "kinds[0]", "must be one of"),
        (LOG + '[random_faults]\nkinds = ["ring"]\n', "kinds[0]", "replicas >= 5"),
        (LOG + "[random_faults]\nenabled = true\nkinds = []\n", "random_faults.kinds", "at least"),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "crash"\ntarget = "follower[2]"\n',
            "faults[0].target",
            "follower[2] does not exist (the scenario has 2 non-master replicas)",
        ),
        (
            QUEUE_LOCKS + '[[faults]]\nat_ms = 1\naction = "crash"\ntarget = "consumer[4]"\n',
            "faults[0].target",
            "consumer[4] does not exist (the scenario has 4 consumers)",
        ),
        (
            LOCK + '[[faults]]\nat_ms = 1\naction = "partition"\ntarget = "client[4]"\n',
            "faults[0].target",
            "client[4] does not exist (the scenario has 4 lock clients)",
        ),
        (
            LOCK + '[[faults]]\nat_ms = 1\naction = "crash"\ntarget = "client[0]"\n',
            "faults[0].target",
            "client[0] is a lock client endpoint: only network faults",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nsides = [["n0"], ["client[0]"]]\n',
            "faults[0].sides[1][0]",
            "client[0] does not exist (the scenario has 0 lock clients)",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "crash"\ntarget = "lock[0]"\n',
            "faults[0].target",
            "lock[0] does not exist",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "crash"\ntarget = "lock_master"\n',
            "faults[0].target",
            "ownership",
        ),
        (
            LOG + '[[faults]]\nafter = { event = "boot", node = "any" }\naction = "heal"\n',
            "faults[0].after.node",
            "does not name one process",
        ),
        (
            LOG + '[[faults]]\nafter = { event = "x", where = { group = [1] } }\naction = "heal"\n',
            "faults[0].after.where.group",
            "expected an integer, a string or a boolean",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nshape = "ring"\n',
            "faults[0].shape",
            "5 replicas",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nshape = "star"\n',
            "faults[0].shape",
            "must be one of bridge, ring",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nshape = "bridge"\ntarget = "n0"\n',
            "faults[0].target",
            "takes no target",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nsides = [["n0"]]\n',
            "faults[0].sides",
            "two non-empty lists",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\nsides = [["n0"], ["n9"]]\n',
            "faults[0].sides[1][0]",
            "n9 does not exist",
        ),
        (
            LOG + '[[faults]]\nat_ms = 1\naction = "partition"\n',
            "faults[0].target",
            "missing",
        ),
    ],
)
def test_bad_fault_input_names_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        loads(text, file="bad.toml")
    assert f"{key}: " in str(exc.value) or f"{key}:" in str(exc.value), str(exc.value)
    assert reason in str(exc.value)


def test_new_fault_keys_load() -> None:
    scn = loads(
        LOG.replace("[workload]", "[cluster]\nreplicas = 5\n[workload]")
        + """
[[faults]]
at_ms = 1
action = "partition"
shape = "ring"
[[faults]]
at_ms = 1
action = "partition"
sides = [["n0", "n1"], ["follower[0]"]]
[[faults]]
after = { event = "handoff", node = "master", where = { group = 1, state = "done" } }
action = "loss"
target = "n0"
peer = "n1"
direction = "out"
rate = 0.5
[random_faults]
enabled = true
"""
    )
    ring, sides, loss = scn.faults
    assert ring.shape == "ring" and ring.target is None
    assert sides.sides == (("n0", "n1"), ("follower[0]",))
    assert loss.after == AfterSpec(
        event="handoff", node="master", where=(("group", 1), ("state", "done"))
    )
    assert (loss.target, loss.peer, loss.direction, loss.rate) == ("n0", "n1", "out", 0.5)
    # Kinds not listed: the default ones.
    assert scn.random_faults.kinds == RANDOM_DEFAULT


# -- selectors -------------------------------------------------------------------------------


def test_master_waits_for_the_first_master_then_fires() -> None:
    world = _world()
    masters: dict[int, str | None] = {}
    nemesis = _nemesis(world, masters)
    nemesis.fire(FaultSpec(action="crash", at_ms=0, target="master", power_loss=False), "f0")
    nemesis.fire(FaultSpec(action="pause", at_ms=0, target="follower[1]"), "f1")
    world.run_until(50_000)
    assert not any(h.crashed or h.paused for h in world.hosts.values())
    assert sorted(nemesis.waiting) == ["f0", "f1"]
    masters[0] = "n1"
    world.record("n1", "master", (("group", 0), ("state", "elected")))
    world.run_until(60_000)
    assert world.hosts["n1"].crashed
    assert world.hosts["n2"].paused  # followers of n1: n0, n2
    assert nemesis.waiting == {} and nemesis.problems == []


def test_a_fault_still_waiting_at_the_end_of_the_faults_fails_the_run() -> None:
    world = _world()
    nemesis = _nemesis(world, {})
    nemesis.fire(FaultSpec(action="crash", at_ms=0, target="master", group=1), "faults[3]")
    nemesis.close()
    assert nemesis.problems == ["faults[3]: waited for a master until the end of the faults"]
    assert world.listeners == []


def test_crashed_with_nobody_down_is_a_problem_not_a_guess() -> None:
    world = _world()
    nemesis = _nemesis(world)
    nemesis.fire(FaultSpec(action="restart", at_ms=0, target="crashed"), "faults[0]")
    assert nemesis.problems == [
        "faults[0] (restart): selector 'crashed': no node the nemesis crashed is down"
    ]
    nemesis.fire(FaultSpec(action="crash", at_ms=0, target="n2"), "faults[1]")
    nemesis.fire(FaultSpec(action="restart", at_ms=0, target="crashed"), "faults[2]")
    assert not world.hosts["n2"].crashed and len(nemesis.problems) == 1


def test_a_run_whose_fault_cannot_resolve_fails_even_as_a_negative_control() -> None:
    scn = load(ROOT / "scenarios" / "master-crash.toml")
    bad = replace(
        scn,
        duration_ms=3000,
        final=replace(scn.final, liveness_ms=1000, quiesce_ms=500),
        faults=(FaultSpec(action="restart", at_ms=1500, target="crashed"),),
    )
    result = runner.run(bad, 1)
    assert not result.ok and not result.checks["faults"].ok
    assert "faults[0] (restart): selector 'crashed'" in result.checks["faults"].summary
    control = runner.run(replace(bad, expect_safety="fail"), 1)
    assert not control.ok  # the other checks pass, and a broken scenario never "fails as designed"


# -- triggers --------------------------------------------------------------------------------


def test_after_filters_on_event_fields_with_their_types() -> None:
    world = _world()
    nemesis = _nemesis(world)
    after = AfterSpec(event="handoff", count=2, where=(("group", 1), ("done", True)))
    nemesis.schedule(FaultSpec(action="crash", after=after, target="n2"))
    for fields in (
        (("group", 0), ("done", True)),
        (("group", 1), ("done", 1)),  # 1 is not True
        (("group", 1),),
        (("group", 1), ("done", True)),
        (("group", True), ("done", True)),  # True is not 1
    ):
        world.record("n0", "handoff", fields)
    world.run_until(1000)
    assert not world.hosts["n2"].crashed
    world.record("n1", "handoff", (("group", 1), ("done", True), ("extra", "x")))
    world.run_until(2000)
    assert world.hosts["n2"].crashed


def test_after_node_is_resolved_at_each_event() -> None:
    world = _world()
    masters: dict[int, str | None] = {0: "n0"}
    nemesis = _nemesis(world, masters)
    nemesis.schedule(
        FaultSpec(action="crash", after=AfterSpec(event="tick", node="master"), target="n2")
    )
    world.record("n1", "tick", ())
    world.run_until(1000)
    assert not world.hosts["n2"].crashed
    masters[0] = "n1"
    world.record("n1", "tick", ())
    world.run_until(2000)
    assert world.hosts["n2"].crashed


# -- partitions and paths --------------------------------------------------------------------


def _reach(world: World, nodes: list[str]) -> dict[str, set[str]]:
    blocked = world.network.blocked
    return {a: {b for b in nodes if a == b or (a, b) not in blocked} for a in nodes}


def test_a_bridge_cuts_two_halves_and_keeps_the_bridge_talking_to_both() -> None:
    world = _world(5)
    nemesis = _nemesis(world)
    undo = nemesis.apply(FaultSpec(action="partition", at_ms=0, shape="bridge"), [])
    reach = _reach(world, NODES)
    bridges = [n for n in NODES if reach[n] == set(NODES)]
    assert len(bridges) == 1
    halves = {frozenset(reach[n]) - set(bridges) for n in NODES if n not in bridges}
    assert sorted(len(h) for h in halves) == [2, 2]
    assert all((a, b) in world.network.blocked for a, b in _cross(halves))
    assert undo is not None
    undo()
    assert world.network.blocked == set()


def _cross(halves: set[frozenset[str]]) -> list[tuple[str, str]]:
    a, b = (sorted(h) for h in halves)
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]


def test_a_ring_gives_each_replica_a_majority_and_no_two_the_same() -> None:
    world = _world(5)
    nemesis = _nemesis(world)
    undo = nemesis.apply(FaultSpec(action="partition", at_ms=0, shape="ring"), [])
    reach = _reach(world, NODES)
    assert all(len(r) == 3 for r in reach.values())
    assert len({frozenset(r) for r in reach.values()}) == 5
    assert all((a in reach[b]) == (b in reach[a]) for a in NODES for b in NODES)
    assert undo is not None
    undo()
    assert world.network.blocked == set()


def test_a_two_sided_partition_cuts_only_between_its_sides() -> None:
    world = _world(5)
    world.add_endpoint("client", lambda src, msg: None)
    nemesis = _nemesis(world)
    nemesis.fire(FaultSpec(action="partition", at_ms=0, sides=(("n0", "n1"), ("n3",))))
    assert world.network.blocked == {("n0", "n3"), ("n1", "n3"), ("n3", "n0"), ("n3", "n1")}


def test_per_path_loss_duplication_and_delay_touch_only_their_paths() -> None:
    world = _world(3, tick_ms=1)
    nemesis = _nemesis(world)
    loss = nemesis.apply(
        FaultSpec(action="loss", at_ms=0, rate=1.0, target="n0", peer="n1", direction="out"),
        ["n0"],
    )
    dup = nemesis.apply(FaultSpec(action="duplicate", at_ms=0, rate=1.0), ["n2"], ["n0"])
    slow = DelaySpec(dist="constant", mean_us=50_000)
    delay = nemesis.apply(FaultSpec(action="delay", at_ms=0, delay=slow, direction="in"), ["n1"])
    stats = world.network.stats
    by_path = dict(stats.by_path)
    world.run_until(world.now_us + 200_000)
    sent = {p: stats.by_path[p] - by_path.get(p, 0) for p in stats.by_path}
    got: dict[tuple[str, str], int] = {}
    for host in world.hosts.values():
        node = host.node
        assert isinstance(node, CounterNode)
        for src, _n in node.received:
            got[(src, host.node_id)] = got.get((src, host.node_id), 0) + 1
    assert world.network.spec == world.network.baseline
    assert set(world.network.path_faults) == {
        ("n0", "n1"),
        ("n2", "n0"),
        ("n0", "n2"),
        ("n2", "n1"),
    }
    assert world.network.path_faults[("n0", "n1")].loss == 1.0
    assert world.network.path_faults[("n0", "n1")].delay == slow
    assert world.network.path_faults[("n2", "n0")].duplicate == 1.0
    assert stats.lost == sent[("n0", "n1")] > 100  # every n0 -> n1 message, and only those
    assert stats.duplicated > 100
    # Duplicated: each n2 <-> n0 message arrives twice (less what is still in flight).
    assert got[("n2", "n0")] > 1.9 * sent[("n2", "n0")] - 10
    assert got[("n1", "n0")] <= sent[("n1", "n0")]
    # Delayed: n2 -> n1 messages are 50 ms late, n1 -> n2 ones are not.
    assert sent[("n2", "n1")] - got.get(("n2", "n1"), 0) >= 45
    assert sent[("n1", "n2")] - got[("n1", "n2")] <= 2
    for undo in (loss, dup, delay):
        assert undo is not None
        undo()
    assert world.network.path_faults == {}


# -- the final heal --------------------------------------------------------------------------


def _every_fault(nemesis: Nemesis) -> None:
    """Apply every scripted fault the format has, none undone."""
    slow = DelaySpec(dist="constant", mean_us=9_000)
    faults = [
        (FaultSpec(action="partition", at_ms=0, direction="in"), ["n0"]),
        (FaultSpec(action="partition", at_ms=0, shape="bridge"), []),
        (FaultSpec(action="clog", at_ms=0, peer="n2", direction="both"), ["n1"]),
        (FaultSpec(action="loss", at_ms=0, rate=0.3), []),
        (FaultSpec(action="duplicate", at_ms=0, rate=0.3), []),
        (FaultSpec(action="reorder", at_ms=0, rate=0.3), []),
        (FaultSpec(action="delay", at_ms=0, delay=slow), []),
        (FaultSpec(action="loss", at_ms=0, rate=0.5), ["n2"]),
        (FaultSpec(action="delay", at_ms=0, delay=slow), ["n3"]),
        (FaultSpec(action="crash", at_ms=0), ["n3"]),
        (FaultSpec(action="pause", at_ms=0), ["n4"]),
        (FaultSpec(action="clock", at_ms=0, drift_ppm=900, skew_ms=-400), ["n0"]),
        (FaultSpec(action="clock", at_ms=0, skew_ms=250), ["n1"]),
        (FaultSpec(action="disk", at_ms=0, disk_fault="slow", fsync=slow), ["n0"]),
        (FaultSpec(action="disk", at_ms=0, disk_fault="lying_fsync"), ["n1"]),
        (FaultSpec(action="disk", at_ms=0, disk_fault="torn"), ["n2"]),
        (FaultSpec(action="disk", at_ms=0, disk_fault="fsync_error"), ["n0"]),
        (FaultSpec(action="disk", at_ms=0, disk_fault="full"), ["n2"]),
        (FaultSpec(action="reply_before_persist", at_ms=0), ["n1"]),
    ]
    for fault, targets in faults:
        nemesis.apply(fault, targets)


def test_the_final_heal_undoes_every_fault() -> None:
    world = _world(5, capacity=1_000_000, reserve=1000)
    world.run_until(20_000)
    nemesis = _nemesis(world)
    _every_fault(nemesis)
    world.run_until(100_000)
    left = nemesis.faults_left(restarted=True)
    for expected in (
        "network spec", "partitions", "clogs", "path faults", "n0: disk spec", "n0: clock",
        "n1: clock", "n1: lying fsync", "n1: reply before persist", "n2: torn writes",
        "n2: disk spec", "n3: crashed", "n4: paused",
    ):  # fmt: skip
        assert expected in left
    assert world.hosts["n0"].crashed  # its fsync error
    nemesis.heal_all(restart=True)
    assert nemesis.faults_left(restarted=True) == []
    world.run_until(120_000)
    assert all(not h.crashed and not h.paused for h in world.hosts.values())
    # The clocks run at their own drift again and read the wall time they would have read
    # without the faults (to the millisecond a rebased clock rounds differently; monotonic
    # time is never stepped back).
    now = world.now_us
    for n, h in world.hosts.items():
        base = nemesis.clock_baseline[n]
        assert h.clock.drift_ppm == base.drift_ppm
        assert abs(h.clock.now(now).wall_ms - base.now(now).wall_ms) <= 1


def test_the_final_heal_without_restarts_still_restarts_what_a_full_disk_stopped() -> None:
    world = _world(3, capacity=1_000_000, reserve=0)
    world.run_until(20_000)
    nemesis = _nemesis(world)
    nemesis.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), ["n1"])
    nemesis.apply(FaultSpec(action="crash", at_ms=0), ["n2"])
    assert world.hosts["n1"].local_call(Fill(slot=1, size_bytes=100), lambda _r: None)
    world.run_until(40_000)
    assert world.hosts["n1"].crash_reason == "disk full"
    nemesis.heal_all(restart=False)
    assert not world.hosts["n1"].crashed  # its space is back
    assert world.hosts["n2"].crashed  # restart_all = false: left down, as asked
    assert nemesis.faults_left(restarted=False) == []
    assert nemesis.faults_left(restarted=True) == ["n2: crashed"]


# -- random kinds ----------------------------------------------------------------------------

KIND_SCENARIO = """
version = 1
name = "one-kind"
duration_ms = 2500
checks = ["agreement", "total_queue", "liveness"]
[cluster]
groups = 2
[disk]
capacity_bytes = 50000000
reserve_bytes = 1000000
[clock]
drift_ppm_max = 200
skew_ms_max = 300
[workload]
kind = "queue"
rate_per_s = 100
queues = 4
consumer_groups = 2
ownership = "locks"
schedulers = 1
lease_ms = 1000
margin_ms = 200
renew_ms = 300
poll_ms = 200
[random_faults]
enabled = true
kinds = ["{kind}"]
interval_ms_min = 150
interval_ms_max = 300
duration_ms_max = 400
[final]
liveness_ms = 3000
quiesce_ms = 1000
"""


ZONES_OF_KIND_SCENARIO = """
[zones]
names = ["a", "b", "c"]
replicas = ["a", "b", "c"]
locks = ["a", "b", "c"]
producers = ["a", "b"]
consumers = ["a", "b", "c", "a"]
schedulers = "c"
"""


@pytest.mark.parametrize("kind", sorted(RANDOM_KINDS))
def test_every_random_kind_can_be_drawn_and_fires(kind: str) -> None:
    text = KIND_SCENARIO.replace("{kind}", kind)
    if kind == "ring":
        text = text.replace("[cluster]", "[cluster]\nreplicas = 5")
    if kind == "zone_outage":
        text += ZONES_OF_KIND_SCENARIO
    scn = loads(text, file=f"{kind}.toml")
    result = runner.run(scn, 2)
    assert result.stats["random_faults"]["on"] == [kind]
    assert result.stats["random_faults"]["fired"].get(kind, 0) >= 3
    assert result.ok, {n: c.summary for n, c in result.checks.items() if not c.ok}


def test_lock_replica_kinds_in_the_lock_workload_take_the_lock_replicas() -> None:
    scn = load(ROOT / "scenarios" / "swarm-lock.toml")
    scn = replace(
        scn,
        duration_ms=3000,
        random_faults=replace(
            scn.random_faults, kinds=("lock_crash",), interval_ms_min=200, interval_ms_max=300
        ),
    )
    result = runner.run(scn, 1)
    assert result.stats["random_faults"]["fired"]["lock_crash"] >= 3
    assert result.stats["crashes"] >= 3
    assert result.ok


def test_a_kind_that_finds_no_target_is_not_counted() -> None:
    world = _world(3)
    nemesis = _nemesis(world)
    scn = load(ROOT / "scenarios" / "swarm-log.toml")
    # Nothing durable on any disk yet: a bit flip has nothing to flip.
    nemesis._random_fault("bitflip", 100, scn)
    assert nemesis.fired == {}
    world.run_until(50_000)
    nemesis._random_fault("bitflip", 100, scn)
    assert nemesis.fired == {"bitflip": 1}
    # Consumers are kept to at least one running: with none, a consumer crash never fires.
    nemesis._random_fault("consumer_crash", 100, scn)
    assert nemesis.fired == {"bitflip": 1}


def test_fire_counts_add_up_over_seeds() -> None:
    outs = [
        swarm.SeedOutcome(1, True, "d", 0.0, 0, (), "r", fired=(("crash", 2), ("loss", 1))),
        swarm.SeedOutcome(2, True, "d", 0.0, 0, (), "r", fired=(("crash", 3),)),
    ]
    counts = swarm.fire_counts(("loss", "crash", "pause"), outs)
    assert list(counts) == ["loss", "crash", "pause"]
    assert (counts["crash"].faults, counts["crash"].seeds) == (5, 2)
    assert (counts["loss"].faults, counts["loss"].seeds) == (1, 1)
    assert (counts["pause"].faults, counts["pause"].seeds) == (0, 0)


def _swarm_files() -> list[Path]:
    return sorted(p for p in (ROOT / "scenarios").glob("*.toml") if load(p).random_faults.enabled)


@pytest.mark.parametrize("path", _swarm_files(), ids=lambda p: p.stem)
def test_a_swarm_description_names_exactly_the_kinds_it_enables(path: Path) -> None:
    """Each kind's phrase (``sim.fault_kinds``) is in the description if and only if the file
    enables the kind (longer phrases are matched first: "lock replica crashes" is not also
    "replica crashes")."""
    scn = load(path)
    text = re.sub(r"\s+", " ", scn.description)
    named = set()
    for kind, spec in sorted(RANDOM_KINDS.items(), key=lambda kv: -len(kv[1].phrase)):
        if spec.phrase in text:
            named.add(kind)
            text = text.replace(spec.phrase, "")
    assert sorted(named) == sorted(scn.random_faults.kinds)
