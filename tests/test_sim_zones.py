"""Zones in the simulator: the ``[zones]`` keys and their errors, the latency of each zone
pair applied per message, the ``zone:NAME`` selector crashing or cutting off exactly the
zone's processes, the final heal undoing it, and the ``zone_outage`` random kind."""

from __future__ import annotations

import io
import random
from dataclasses import replace

import pytest
import simpy

from pxq.check.history import HistoryWriter
from pxq.effects import Rng, StorageView
from sim import runner
from sim.disk import DiskSpec
from sim.fault_kinds import RANDOM_KINDS
from sim.nemesis import Nemesis, Unresolvable
from sim.network import DelaySpec, Network, NetworkSpec
from sim.scenario import FaultSpec, Scenario, ScenarioError, loads
from sim.world import World
from sim.zones import ZonesSpec, members
from tests.sim_nodes import CounterNode

# -- parsing ---------------------------------------------------------------------------------

LOG = """
version = 1
name = "zoned"
duration_ms = 1000
[workload]
kind = "log"
clients = 2
"""
QUEUE_LOCKS = """
version = 1
name = "zoned"
duration_ms = 1000
[workload]
kind = "queue"
producers = 2
consumer_groups = 1
consumers_per_group = 3
ownership = "locks"
"""
ZONES = """
[zones]
names = ["a", "b", "c"]
replicas = ["a", "b", "c"]
"""


def ms(value: int) -> DelaySpec:
    return DelaySpec(
        dist="constant", mean_us=value * 1000, min_us=value * 1000, max_us=value * 1000
    )


def test_no_zones_table_means_no_zones() -> None:
    assert loads(LOG).zones == ZonesSpec()


def test_zones_place_each_role_in_index_order_and_links_are_symmetric_unless_given_both_ways() -> (
    None
):
    scn = loads(
        QUEUE_LOCKS
        + ZONES
        + """
locks = ["c", "b", "a"]
producers = "b"
consumers = ["a", "a", "c"]
[zones.latency.a.b]
dist = "constant"
mean_ms = 20
[zones.latency.b.c]
dist = "constant"
mean_ms = 50
[zones.latency.c.b]
dist = "constant"
mean_ms = 70
"""
    )
    z = scn.zones
    assert z.names == ("a", "b", "c")
    assert z.zones_of("replicas") == ("a", "b", "c")
    assert z.zones_of("locks") == ("c", "b", "a")
    assert z.zones_of("producers") == ("b", "b")  # a string: every producer there
    assert z.zones_of("consumers") == ("a", "a", "c")
    assert z.zones_of("schedulers") == ()
    links = z.links()
    assert links[("a", "b")] == links[("b", "a")] == ms(20)
    assert links[("b", "c")] == ms(50)
    assert links[("c", "b")] == ms(70)
    assert ("a", "c") not in links and ("c", "a") not in links  # baseline delay


@pytest.mark.parametrize(
    ("base", "extra", "key", "reason"),
    [
        (LOG, "[zones]\nreplicas = ['a', 'a', 'a']", "zones.names", "missing"),
        (LOG, "[zones]\nnames = []\nreplicas = []", "zones.names", "at least one zone"),
        (LOG, "[zones]\nnames = ['a', 'b c']", "zones.names[1]", "expected a zone name"),
        (LOG, "[zones]\nnames = ['a', 'a']", "zones.names[1]", "named twice"),
        (LOG, "[zones]\nnames = ['a']", "zones.replicas", "every replica is placed"),
        (LOG, "[zones]\nnames = ['a']\nreplicas = ['a']", "zones.replicas", "expected 3 zones"),
        (
            LOG,
            "[zones]\nnames = ['a', 'b', 'c']\nreplicas = ['a', 'd', 'c']",
            "zones.replicas[1]",
            "'d' is not",
        ),
        (LOG, ZONES + "clients = 'd'", "zones.clients", "'d' is not one of names"),
        (LOG, ZONES + "producers = 'a'", "zones.producers", "has no producers"),
        (LOG, ZONES + "locks = 'a'", "zones.locks", "has no lock replicas"),
        (LOG, ZONES + "racks = 'a'", "zones.racks", "unknown key"),
        (QUEUE_LOCKS, ZONES, "zones.locks", "every replica is placed"),
        (QUEUE_LOCKS, ZONES + "locks = 'a'\nclients = 'a'", "zones.clients", "has no clients"),
        (
            LOG,
            ZONES + "[zones.latency.a.d]\nmean_ms = 5",
            "zones.latency.a.d",
            "'d' is not one of names",
        ),
        (LOG, ZONES + "[zones.latency.x.a]\nmean_ms = 5", "zones.latency.x", "'x' is not"),
        (LOG, ZONES + "[zones.latency.a.a]\nmean_ms = 5", "zones.latency.a.a", "within a zone"),
        (
            LOG,
            ZONES + "[zones.latency.a.b]\ndist = 'uniform'\nmin_ms = 9\nmax_ms = 2",
            "zones.latency.a.b",
            "min must not exceed max",
        ),
        (LOG, ZONES + "[zones.latency.a]\nb = 5", "zones.latency.a.b", "expected a table"),
        (
            LOG,
            ZONES + "[[faults]]\nat_ms = 1\naction = 'crash'\ntarget = 'zone:d'",
            "faults[0].target",
            "zone 'd' does not exist (the scenario's zones: a, b, c)",
        ),
        (
            LOG,
            "[[faults]]\nat_ms = 1\naction = 'partition'\ntarget = 'zone:a'",
            "faults[0].target",
            "needs [zones]",
        ),
        (
            LOG,
            ZONES + "[[faults]]\nat_ms = 1\naction = 'partition'\nsides = [['zone:a'], ['zone:q']]",
            "faults[0].sides[1][0]",
            "zone 'q' does not exist",
        ),
        (
            LOG,
            ZONES + "[[faults]]\naction = 'crash'\ntarget = 'n1'\n[faults.after]\nevent = 'x'\n"
            "node = 'zone:a'",
            "faults[0].after.node",
            "does not name one process",
        ),
        (
            LOG,
            "[random_faults]\nkinds = ['zone_outage']",
            "random_faults.kinds[0]",
            "needs [zones] with two zones or more",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith(("zones.", "faults", "random")) else "",
)
def test_zone_errors_name_the_key(base: str, extra: str, key: str, reason: str) -> None:
    with pytest.raises(ScenarioError) as info:
        loads(base + extra, file="z.toml")
    assert info.value.key_path == key
    assert reason in info.value.reason


def test_a_zone_selector_is_accepted_wherever_a_selector_is() -> None:
    scn = loads(
        LOG
        + ZONES
        + """
[[faults]]
at_ms = 1
action = "partition"
sides = [["zone:a"], ["zone:b", "n2"]]
[[faults]]
at_ms = 2
action = "delay"
target = "zone:a"
peer = "zone:c"
delay = { dist = "constant", mean_ms = 40 }
"""
    )
    assert scn.faults[0].sides == (("zone:a",), ("zone:b", "n2"))
    assert (scn.faults[1].target, scn.faults[1].peer) == ("zone:a", "zone:c")


# -- the latency of each pair ----------------------------------------------------------------


Pair = tuple[str, str]


def _measure(net: Network, env: simpy.Environment, pairs: list[Pair]) -> dict[Pair, set[int]]:
    """Send 50 messages on each path, one every 10 ms; the delays they arrived with."""
    sent_at: dict[int, int] = {}
    delays: dict[Pair, set[int]] = {p: set() for p in pairs}

    def deliver(src: str, dst: str, payload: object) -> None:
        assert isinstance(payload, int)
        delays[(src, dst)].add(int(env.now) - sent_at[payload])

    net.deliver = deliver
    seq = 0
    for i in range(50):
        if env.now < i * 10_000:
            env.run(until=i * 10_000)
        for src, dst in pairs:
            seq += 1
            sent_at[seq] = i * 10_000
            net.send(src, dst, seq)
    env.run()
    return delays


def test_each_message_takes_the_delay_of_its_zone_pair() -> None:
    env = simpy.Environment()
    net = Network(env, random.Random(1), NetworkSpec(delay=ms(1)), lambda *_: None)
    net.zone_of = {"n0": "a", "n1": "a", "n2": "b", "n3": "c"}
    net.zone_links = {
        ("a", "b"): ms(20),
        ("b", "a"): ms(20),
        ("b", "c"): ms(50),
        ("c", "b"): ms(70),
    }
    pairs = [
        ("n0", "n1"),  # within a: the baseline
        ("n0", "n2"),
        ("n2", "n0"),
        ("n2", "n3"),
        ("n3", "n2"),  # given both ways: each its own
        ("n0", "n3"),  # a pair with no link of its own: the baseline
        ("n0", "x"),  # to a process placed nowhere: the baseline
    ]
    delays = _measure(net, env, pairs)
    assert delays == {
        ("n0", "n1"): {1000},
        ("n0", "n2"): {20_000},
        ("n2", "n0"): {20_000},
        ("n2", "n3"): {50_000},
        ("n3", "n2"): {70_000},
        ("n0", "n3"): {1000},
        ("n0", "x"): {1000},
    }


def test_a_path_fault_overrides_a_zone_link_and_a_network_wide_delay_does_not() -> None:
    env = simpy.Environment()
    net = Network(env, random.Random(1), NetworkSpec(delay=ms(1)), lambda *_: None)
    net.zone_of = {"n0": "a", "n1": "a", "n2": "b"}
    net.zone_links = {("a", "b"): ms(20), ("b", "a"): ms(20)}
    net.spec = replace(net.spec, delay=ms(5))  # a network-wide delay fault
    net.set_path_fault("n2", "n0", "delay", ms(300))
    delays = _measure(net, env, [("n0", "n1"), ("n0", "n2"), ("n2", "n0")])
    assert delays == {("n0", "n1"): {5000}, ("n0", "n2"): {20_000}, ("n2", "n0"): {300_000}}
    net.heal()  # the zone links are the baseline: a heal keeps them
    assert net.zone_links == {("a", "b"): ms(20), ("b", "a"): ms(20)}


def test_uniform_zone_latency_stays_within_its_bounds_per_pair() -> None:
    env = simpy.Environment()
    net = Network(env, random.Random(7), NetworkSpec(), lambda *_: None)
    net.zone_of = {"n0": "a", "n1": "b"}
    link = DelaySpec(dist="uniform", min_us=30_000, max_us=40_000, mean_us=35_000)
    net.zone_links = {("a", "b"): link, ("b", "a"): link}
    delays = _measure(net, env, [("n0", "n1")])[("n0", "n1")]
    assert min(delays) >= 30_000 and max(delays) <= 40_000
    assert len(delays) > 10  # drawn per message, not once


LOG_RUN = """
version = 1
name = "zoned-log"
duration_ms = 3000
[cluster]
replicas = 3
[network]
delay = { dist = "constant", mean_ms = 1 }
[workload]
kind = "log"
clients = 3
rate_per_s = 100
[zones]
names = ["a", "b"]
replicas = ["a", "a", "b"]
clients = ["a", "b", "b"]
[zones.latency.a.b]
dist = "constant"
mean_ms = 30
[final]
liveness_ms = 2000
quiesce_ms = 2000
"""


def test_a_run_measures_the_latency_of_each_zone_pair_on_delivered_messages() -> None:
    """In a whole run, every message between the replicas and clients arrives after the delay
    of its zones' pair: 30 ms between a and b, the baseline 1 ms within a zone."""
    scn = loads(LOG_RUN)
    seen: dict[tuple[str, str], set[int]] = {}

    def observe(world: World) -> None:
        net = world.network
        assert net.zone_of == {"n0": "a", "n1": "a", "n2": "b", "c0": "a", "c1": "b", "c2": "b"}
        inner = net._transmit  # the arrival of each message sent

        def transmit(src: str, dst: str, payload: object) -> None:
            before = net._path_last_us.get((src, dst), -1)
            inner(src, dst, payload)
            arrive = net._path_last_us[(src, dst)]
            if arrive != before:  # not held behind an earlier message (FIFO)
                pair = (net.zone_of[src], net.zone_of[dst])
                seen.setdefault(pair, set()).add(arrive - world.now_us)

        net._transmit = transmit  # type: ignore[method-assign]

    result = runner.run(scn, 1, observe=observe)
    assert result.ok, {n: c.summary for n, c in result.checks.items() if not c.ok}
    assert seen == {
        ("a", "a"): {1000},
        ("b", "b"): {1000},
        ("a", "b"): {30_000},
        ("b", "a"): {30_000},
    }


# -- zone outages ----------------------------------------------------------------------------


def _world(n: int = 5) -> World:
    world = World(
        seed=3,
        network=NetworkSpec(delay=DelaySpec(dist="constant", mean_us=100)),
        disk=DiskSpec(fsync=DelaySpec(dist="constant", mean_us=500)),
    )
    names = [f"n{i}" for i in range(n)]

    def factory(nid: str, view: StorageView, rng: Rng) -> CounterNode:
        return CounterNode(nid, [p for p in names if p != nid], view, rng, tick_ms=5)

    for name in names:
        world.add_node(name, factory)
    world.add_endpoint("c0", lambda _src, _payload: None)
    world.start()
    return world


def _zoned_nemesis(world: World) -> Nemesis:
    nem = Nemesis(
        world,
        HistoryWriter(io.StringIO()),
        random.Random(5),
        [f"n{i}" for i in range(5)],
        {0: "n0"}.get,
    )
    nem.zones = members({"n0": "a", "n1": "a", "n2": "b", "n3": "b", "n4": "c", "c0": "b"})
    return nem


def test_a_zone_selector_names_every_process_placed_in_the_zone() -> None:
    nem = _zoned_nemesis(_world())
    assert nem.resolve("zone:a") == ["n0", "n1"]
    assert nem.resolve("zone:b") == ["c0", "n2", "n3"]
    nem.zones["d"] = []
    with pytest.raises(Unresolvable, match="nothing is placed in zone 'd'"):
        nem.resolve("zone:d")


def test_a_zone_crash_takes_down_exactly_the_zones_nodes_and_its_duration_restarts_them() -> None:
    world = _world()
    world.run_until(20_000)
    nem = _zoned_nemesis(world)
    nem.fire(FaultSpec(action="crash", at_ms=0, target="zone:b", duration_ms=50))
    assert nem.problems == []
    crashed = sorted(n for n, h in world.hosts.items() if h.crashed)
    assert crashed == ["n2", "n3"]  # the zone's nodes; its client endpoint is no node
    world.run_until(80_000)
    assert not any(h.crashed for h in world.hosts.values())


def test_a_zone_partition_cuts_exactly_the_paths_between_the_zone_and_the_rest() -> None:
    world = _world()
    world.run_until(20_000)
    nem = _zoned_nemesis(world)
    nem.fire(FaultSpec(action="partition", at_ms=0, target="zone:b", duration_ms=50))
    zone, rest = ["c0", "n2", "n3"], ["n0", "n1", "n4"]
    expected = {(a, b) for a in zone for b in rest} | {(b, a) for a in zone for b in rest}
    assert world.network.blocked == expected
    assert not any(h.crashed for h in world.hosts.values())
    world.run_until(80_000)
    assert world.network.blocked == set()


def test_the_final_heal_undoes_a_zone_outage_without_a_duration() -> None:
    world = _world()
    world.run_until(20_000)
    nem = _zoned_nemesis(world)
    nem.fire(FaultSpec(action="crash", at_ms=0, target="zone:a", power_loss=False))
    nem.fire(FaultSpec(action="partition", at_ms=0, target="zone:c"))
    assert world.hosts["n0"].crashed and world.hosts["n1"].crashed
    assert world.network.blocked
    assert nem.faults_left(restarted=True) == [
        "partitions",
        "n0: crashed",
        "n1: crashed",
    ]
    nem.heal_all(restart=True)
    assert nem.faults_left(restarted=True) == []
    assert not any(h.crashed for h in world.hosts.values())


ZONE_QUEUE = """
version = 1
name = "zone-queue"
duration_ms = 4000
checks = ["agreement", "total_queue", "queue_order", "liveness"]
[cluster]
groups = 3
[workload]
kind = "queue"
producers = 2
rate_per_s = 150
queues = 6
consumer_groups = 1
consumers_per_group = 3
[zones]
names = ["a", "b", "c"]
replicas = ["a", "b", "c"]
producers = ["a", "b"]
consumers = ["a", "b", "c"]
[zones.latency.a.c]
dist = "constant"
mean_ms = 10
[final]
liveness_ms = 3000
quiesce_ms = 1000
"""


@pytest.mark.parametrize("action", ["crash", "partition"])
def test_a_scripted_zone_outage_in_a_run_hits_the_zones_processes_and_is_healed(
    action: str,
) -> None:
    """Zone c (a store replica and a consumer) is crashed or cut off from 1.5 s until the
    final heal: while it lasts exactly its processes are down or cut off, and after the run
    nothing is."""
    scn = loads(ZONE_QUEUE + f'[[faults]]\nat_ms = 1500\naction = "{action}"\ntarget = "zone:c"\n')
    during: dict[str, object] = {}
    worlds: list[World] = []

    def observe(world: World) -> None:
        worlds.append(world)

        def look() -> None:
            during["crashed"] = sorted(n for n, h in world.hosts.items() if h.crashed)
            during["cut"] = sorted({a for a, _ in world.network.blocked})

        world.call_later(2_000_000, look)

    result = runner.run(scn, 1, observe=observe)
    assert result.ok, {n: c.summary for n, c in result.checks.items() if not c.ok}
    zone = ["g0-c2", "n2"]
    if action == "crash":
        assert during == {"crashed": zone, "cut": []}
    else:
        # Both ways: the zone's processes and everyone else (the operator too) send on cut paths.
        everyone = sorted([*worlds[0].hosts, "admin"])
        assert during == {"crashed": [], "cut": everyone}
    assert not any(h.crashed for h in worlds[0].hosts.values())
    assert worlds[0].network.blocked == set()


# -- the random kind -------------------------------------------------------------------------

SWARM = """
version = 1
name = "zone-swarm"
duration_ms = 1000
[workload]
kind = "log"
[random_faults]
enabled = true
kinds = ["zone_outage"]
max_down = "{max_down}"
[zones]
names = ["a", "b", "c"]
replicas = {replicas}
"""


def _swarm(max_down: str, replicas: str) -> Scenario:
    return loads(SWARM.replace("{max_down}", max_down).replace("{replicas}", replicas))


def _no_master(group: int) -> str | None:
    del group
    return None


def _draws(nem: Nemesis, scn: Scenario, times: int) -> set[tuple[str, ...]]:
    """What ``times`` draws took down or cut off (each outage undone at once): the targets
    the nemesis recorded, checked against what the world shows."""
    taken: set[tuple[str, ...]] = set()
    world, hosts = nem.world, nem.world.hosts
    for _ in range(times):
        ops = len(nem.history.ops)
        was_down = {n for n, h in hosts.items() if h.crashed}
        fired = RANDOM_KINDS["zone_outage"].draw(nem, scn)
        if fired is None:
            assert len(nem.history.ops) == ops  # nothing applied
            taken.add(())
            continue
        op = nem.history.ops[-1]
        assert isinstance(op.value, list)
        targets = tuple(str(v) for v in op.value)
        taken.add(targets)
        if op.f == "crash":
            assert {n for n, h in hosts.items() if h.crashed} - was_down == set(targets)
        else:
            assert op.f == "partition"
            rest = [n for n in [*hosts, *world.endpoints] if n not in targets]
            cut = {(a, b) for a in targets for b in rest} | {(b, a) for a in targets for b in rest}
            assert world.network.blocked == cut
        assert fired.undo is not None
        fired.undo()
        assert not world.network.blocked
        assert {n for n, h in hosts.items() if h.crashed} == was_down
    return taken


def test_a_random_zone_outage_takes_a_whole_zone_within_the_down_budget() -> None:
    world = _world(3)
    world.run_until(20_000)
    nem = Nemesis(
        world, HistoryWriter(io.StringIO()), random.Random(2), ["n0", "n1", "n2"], _no_master
    )
    nem.zones = members({"n0": "a", "n1": "b", "n2": "b"})
    # One replica of three may be lost: zone a's alone, never zone b's two.
    assert _draws(nem, _swarm("minority", '["a", "b", "b"]'), 40) == {(), ("n0",)}
    assert _draws(nem, _swarm("majority", '["a", "b", "b"]'), 40) == {("n0",), ("n1", "n2")}


def test_a_random_zone_outage_counts_what_is_already_down() -> None:
    world = _world(3)
    world.run_until(20_000)
    nem = Nemesis(
        world, HistoryWriter(io.StringIO()), random.Random(2), ["n0", "n1", "n2"], _no_master
    )
    nem.zones = members({"n0": "a", "n1": "b", "n2": "c"})
    world.hosts["n2"].crash(power_loss=False)
    # Zones a and b would each take a second replica of three: only zone c is drawn (cut
    # off: its node is down already, so a crash finds nobody to take).
    assert _draws(nem, _swarm("minority", '["a", "b", "c"]'), 40) == {(), ("n2",)}


def test_a_random_zone_outage_leaves_a_consumer_and_a_producer_running() -> None:
    world = _world(3)
    world.run_until(20_000)
    nem = Nemesis(
        world, HistoryWriter(io.StringIO()), random.Random(2), ["n0", "n1", "n2"], _no_master
    )
    nem.zones = members({"n0": "a", "n1": "b", "n2": "c"})
    nem.consumers = ["n0"]  # the only consumer is in zone a: a is never drawn
    assert _draws(nem, _swarm("majority", '["a", "b", "c"]'), 40) == {(), ("n1",), ("n2",)}
