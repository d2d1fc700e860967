"""Each fault model of the simulator, measured on its own."""

from __future__ import annotations

import io
import itertools
import random
from functools import partial

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from pxq.check.history import HistoryWriter
from pxq.effects import Delete, DeleteRange, Put, Rng, StorageCorruption, StorageView
from sim.clock import NodeClock
from sim.disk import DiskFull, DiskSpec, Recovery, SimDisk
from sim.nemesis import Nemesis
from sim.network import DelaySpec, Network, NetworkSpec
from sim.scenario import FaultSpec
from sim.world import CallMsg, NodeHost, ReplyMsg, World
from tests.sim_nodes import CounterNode, Fill, Ping

N = 20_000


def _net(
    spec: NetworkSpec, seed: int = 1
) -> tuple[simpy.Environment, Network, list[tuple[str, str, object]]]:
    env = simpy.Environment()
    got: list[tuple[str, str, object]] = []
    net = Network(env, random.Random(seed), spec, lambda s, d, p: got.append((s, d, p)))
    return env, net, got


def test_configured_loss_drops_about_that_share() -> None:
    env, net, got = _net(NetworkSpec(loss=0.10))
    for i in range(N):
        net.send("a", "b", i)
    env.run()
    share = 1 - len(got) / N
    assert 0.09 < share < 0.11
    assert net.stats.lost == N - len(got)


def test_configured_duplication_duplicates_about_that_share() -> None:
    env, net, got = _net(NetworkSpec(duplicate=0.05))
    for i in range(N):
        net.send("a", "b", i)
    env.run()
    extra = len(got) - N
    assert 0.04 * N < extra < 0.06 * N
    assert sorted(set(p for _, _, p in got)) == list(range(N))  # type: ignore[type-var]


def test_paths_are_fifo_without_reordering_and_not_with_it() -> None:
    spec = NetworkSpec(delay=DelaySpec(dist="uniform", min_us=100, max_us=5000))
    env, net, got = _net(spec)
    for i in range(2000):
        net.send("a", "b", i)
    env.run()
    assert [p for _, _, p in got] == list(range(2000))

    env, net, got = _net(NetworkSpec(delay=spec.delay, reorder=0.2, reorder_us=10_000))
    for i in range(2000):
        net.send("a", "b", i)
    env.run()
    order = [p for _, _, p in got if isinstance(p, int)]
    assert sorted(order) == list(range(2000))
    inversions = sum(1 for x, y in itertools.pairwise(order) if x > y)
    assert inversions > 50
    assert 0.15 * 2000 < net.stats.reordered < 0.25 * 2000


def test_partition_blocks_exactly_the_named_paths() -> None:
    nodes = ["a", "b", "c"]
    for direction, blocked in [
        ("both", {("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")}),
        ("out", {("a", "b"), ("a", "c")}),
        ("in", {("b", "a"), ("c", "a")}),
    ]:
        env, net, got = _net(NetworkSpec())
        net.partition(["a"], ["b", "c"], direction)
        for s in nodes:
            for d in nodes:
                if s != d:
                    net.send(s, d, (s, d))
        env.run()
        delivered = {p for _, _, p in got}
        every = {(s, d) for s in nodes for d in nodes if s != d}
        assert delivered == every - blocked, direction
        net.heal()
        net.send("a", "b", "after")
        env.run()
        assert got[-1][2] == "after"


def test_partition_drops_messages_already_in_flight() -> None:
    env, net, got = _net(NetworkSpec(delay=DelaySpec(dist="constant", mean_us=1000)))
    net.send("a", "b", 1)
    env.run(until=500)
    net.partition(["a"], ["b"])
    env.run()
    assert got == []


def test_clog_holds_messages_until_unclogged() -> None:
    env, net, got = _net(NetworkSpec())
    net.clog("a", "b")
    for i in range(10):
        net.send("a", "b", i)
    net.send("b", "a", "other way")
    env.run()
    assert [p for _, _, p in got] == ["other way"]
    net.unclog("a", "b")
    env.run()
    assert [p for _, _, p in got][1:] == list(range(10))


def _disk(spec: DiskSpec | None = None) -> tuple[simpy.Environment, SimDisk, list[int]]:
    env = simpy.Environment()
    disk = SimDisk(env, random.Random(3), spec or DiskSpec())
    synced: list[int] = []
    disk.attach(synced.append, lambda e: synced.append(-1))
    return env, disk, synced


def _put(i: int) -> tuple[Put, ...]:
    return (Put(table="t", key=i.to_bytes(4, "big"), value=b"v%d" % i),)


def test_power_loss_drops_exactly_the_unsynced_writes() -> None:
    env, disk, synced = _disk()
    for i in range(5):
        disk.submit(_put(i))
    disk.request_sync()
    env.run()
    assert synced == [5]
    for i in range(5, 9):
        disk.submit(_put(i))
    assert len(list(disk.view().scan("t"))) == 9  # read-your-writes before the sync
    disk.crash(power_loss=True)
    keys = [int.from_bytes(k, "big") for k, _ in disk.view().scan("t")]
    assert keys == list(range(5))
    assert disk.stats.lost_batches == 4


def test_process_crash_without_power_loss_keeps_submitted_writes() -> None:
    _env, disk, _ = _disk()
    for i in range(3):
        disk.submit(_put(i))
    disk.crash(power_loss=False)
    assert len(list(disk.view().scan("t"))) == 3


def _torn(seed: int, *, trust: bool, records: int = 6) -> tuple[SimDisk, Recovery | None]:
    """A disk holding key 0 durably, torn by a power loss while it syncs a batch of
    ``records`` puts (keys 100..), then opened again."""
    env = simpy.Environment()
    disk = SimDisk(env, random.Random(seed), DiskSpec())
    disk.attach(lambda _upto: None, lambda _exc: None)
    disk.submit(_put(0))
    disk.request_sync()
    env.run()
    disk.torn_on_power_loss = True
    disk.trust_torn = trust
    disk.submit(tuple(_put(100 + i)[0] for i in range(records)))
    disk.request_sync()
    env.run(until=env.now + 1)  # the sync is in flight
    disk.crash(power_loss=True)
    return disk, disk.open()


def _keys(disk: SimDisk) -> list[int]:
    return [int.from_bytes(k, "big") for k, _ in disk.durable.scan("t")]


def test_torn_batch_is_discarded_whole_and_counted() -> None:
    disk, recovery = _torn(3, trust=False)
    assert recovery is not None and not recovery.trusted
    assert disk.stats.torn_batches == 1 and disk.stats.torn_batches_discarded == 1
    assert [k for k, _ in disk.view().scan("t")] == [(0).to_bytes(4, "big")]
    assert disk.open() is None  # the tail is gone once recovered


def test_a_torn_batch_is_never_applied_in_part_by_the_recovery() -> None:
    """Over many seeds the tear leaves every prefix length and every kind of damage on the
    medium, and the recovery discards each whole: the durable state is the one before it."""
    prefixes, damages = set(), set()
    for seed in range(200):
        disk, recovery = _torn(seed, trust=False)
        assert recovery is not None and not recovery.trusted
        prefixes.add(recovery.records)
        damages.add(recovery.damage)
        assert _keys(disk) == [0] and [k for k, _ in disk.view().scan("t")] == [bytes(4)]
        assert disk.unexplained_corruptions() == []
    assert prefixes == set(range(1, 7))
    assert damages == {"intact", "cut", "garbled"}


def test_a_trusting_recovery_applies_the_torn_prefix() -> None:
    """The negative control's recovery keeps what the tear left: the first records of the
    batch and no other, the last one cut or garbled (a read finds it corrupt, and no fault
    explains that) or intact."""
    damages = set()
    for seed in range(200):
        disk, recovery = _torn(seed, trust=True)
        assert recovery is not None and recovery.trusted
        assert disk.stats.torn_batches_trusted == 1
        damages.add(recovery.damage)
        assert _keys(disk) == [0] + [100 + i for i in range(recovery.records)]
        view = disk.view()
        for i in range(recovery.records - 1):
            assert view.get("t", (100 + i).to_bytes(4, "big")) == b"v%d" % (100 + i)
        last = (100 + recovery.records - 1).to_bytes(4, "big")
        if recovery.damage == "intact":
            assert view.get("t", last) == b"v%d" % (100 + recovery.records - 1)
        else:
            with pytest.raises(StorageCorruption):
                view.get("t", last)
            assert disk.unexplained_corruptions() == [("t", last)]
    assert damages == {"intact", "cut", "garbled"}


def test_bitflip_is_caught_on_read() -> None:
    env, disk, _ = _disk()
    disk.submit(_put(0))
    disk.request_sync()
    env.run()
    assert disk.bitflip() == ("t", (0).to_bytes(4, "big"))
    with pytest.raises(StorageCorruption):
        disk.view().get("t", (0).to_bytes(4, "big"))
    assert disk.stats.corrupt_reads == 1
    assert disk.corrupt == [("t", (0).to_bytes(4, "big"))]
    assert disk.unexplained_corruptions() == []  # the fault explains it


def test_full_disk_rejects_the_batch_and_keeps_the_rest() -> None:
    _env, disk, _ = _disk(DiskSpec(capacity_bytes=40))
    disk.submit(_put(0))
    with pytest.raises(DiskFull):
        disk.submit((Put(table="t", key=b"k", value=b"x" * 100),))
    assert [k for k, _ in disk.view().scan("t")] == [(0).to_bytes(4, "big")]


def test_disk_space_counts_replaced_and_deleted_values_and_a_full_disk_still_frees() -> None:
    _env, disk, _ = _disk(DiskSpec(capacity_bytes=200, reserve_bytes=50))
    assert disk.used_bytes() == 0
    disk.submit((Put(table="t", key=b"a", value=b"x" * 40), Put(table="t", key=b"b", value=b"y")))
    assert disk.used_bytes() == disk.visible.size_bytes() == (1 + 44) + (1 + 5)
    disk.submit((Put(table="t", key=b"a", value=b"z" * 10), Delete(table="t", key=b"b")))
    assert disk.used_bytes() == disk.visible.size_bytes() == 1 + 14
    # One batch that puts and removes the same keys is counted in order.
    disk.submit(
        (
            Put(table="u", key=b"k1", value=b"1" * 30),
            Put(table="u", key=b"k2", value=b"2" * 30),
            DeleteRange(table="u", start=b"k", end=b"k2"),
            Put(table="u", key=b"k1", value=b"3" * 20),
        )
    )
    assert disk.used_bytes() == disk.visible.size_bytes() == 15 + (2 + 34) + (2 + 24)
    space = disk.space()
    assert space is not None
    assert (space.used_bytes, space.available_bytes, space.short) == (77, 123, False)
    # Totally full: a growing batch is rejected whole, a batch that frees space is not.
    with pytest.raises(DiskFull):
        disk.submit((Put(table="t", key=b"c", value=b"x" * 200), Delete(table="t", key=b"a")))
    assert disk.used_bytes() == disk.visible.size_bytes() == 77
    disk.spec = DiskSpec(capacity_bytes=70, reserve_bytes=10)
    disk.submit((DeleteRange(table="u", start=b"", end=b"\xff"),))
    assert disk.used_bytes() == disk.visible.size_bytes() == 15
    disk.crash(power_loss=True)  # nothing was synced: measured again from what survived
    assert disk.used_bytes() == 0


def _fill_world(capacity: int, reserve: int) -> tuple[World, NodeHost]:
    world = World(
        seed=7,
        network=NetworkSpec(delay=DelaySpec(dist="constant", mean_us=100)),
        disk=DiskSpec(
            fsync=DelaySpec(dist="constant", mean_us=1000),
            write_us_per_kib=0,
            capacity_bytes=capacity,
            reserve_bytes=reserve,
        ),
    )
    host = world.add_node("n0", lambda nid, view, rng: CounterNode(nid, [], view, rng))
    world.start()
    world.run_until(10_000)
    return world, host


def _fill(world: World, host: NodeHost, slot: int, size: int) -> None:
    assert host.local_call(Fill(slot=slot, size_bytes=size), lambda _r: None)
    world.run_until(world.now_us + 5_000)


def _reports(host: NodeHost) -> list[tuple[bool, int]]:
    node = host.node
    assert isinstance(node, CounterNode)
    return [(r.short, r.available_bytes) for r in node.storage_reports]


def test_the_host_reports_crossings_of_the_disk_reserve_after_syncs_with_hysteresis() -> None:
    # Short below 500 bytes of room; no longer short from 550 (10 % margin).
    world, host = _fill_world(capacity=2000, reserve=500)
    counter = 1 + 8 + 4  # the counter record (key, u64, CRC)
    _fill(world, host, 1, 1400)  # 6 + 1404 bytes: 577 left
    assert host.disk.used_bytes() == counter + 1410
    assert _reports(host) == []
    assert host.local_call(Fill(slot=2, size_bytes=100), lambda _r: None)  # 110 bytes: 467 left
    assert _reports(host) == []  # measured after the sync, not at the write
    world.run_until(world.now_us + 5_000)
    assert _reports(host) == [(True, 467)]
    node = host.node
    assert isinstance(node, CounterNode)
    low = node.storage_reports[0]
    assert (low.reserve_bytes, low.used_bytes) == (500, 1533)
    assert "capacity of 2000 bytes" in low.limit
    _fill(world, host, 3, 0)  # another sync while short: nothing reported again
    _fill(world, host, 2, 50)  # 60 bytes: 517 left, in the hysteresis band
    assert _reports(host) == [(True, 467)] and host.storage_short
    _fill(world, host, 2, 0)  # 577 left
    assert _reports(host) == [(True, 467), (False, 577)] and not host.storage_short
    assert host.storage_crossings == 2

    # A new incarnation starts as not short and is told right after Boot.
    _fill(world, host, 2, 100)
    host.crash(power_loss=False)
    host.start()
    assert _reports(host) == [(True, 467)]
    # Beyond the capacity the disk is totally full: the last resort crashes the node.
    _fill(world, host, 4, 1000)
    assert host.crashed and host.disk.stats.full_rejections == 1


def test_a_full_disk_fault_with_a_reserve_makes_the_node_short_and_its_undo_resumes() -> None:
    world, host = _fill_world(capacity=100_000, reserve=500)
    nemesis = Nemesis(world, HistoryWriter(io.StringIO()), random.Random(1), ["n0"], lambda g: "n0")
    undo = nemesis.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), ["n0"])
    used = host.disk.used_bytes()
    assert host.disk.spec.capacity_bytes == used + 499
    assert _reports(host) == [(True, 499)]  # at once, not at the next sync
    _fill(world, host, 1, 200)  # the reserve takes what else the node writes
    assert not host.crashed
    assert host.disk.used_bytes() == used + 210 + 13  # the slot and the counter record
    nemesis.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), ["n0"])
    assert host.disk.spec.capacity_bytes == used + 499  # a full disk never grows
    assert undo is not None
    undo()
    assert _reports(host) == [(True, 499), (False, 100_000 - used - 223)]
    # Without a reserve, full means totally full: the next growing write crashes the node.
    world2, host2 = _fill_world(capacity=100_000, reserve=0)
    nemesis2 = Nemesis(
        world2, HistoryWriter(io.StringIO()), random.Random(1), ["n0"], lambda g: "n0"
    )
    undo2 = nemesis2.apply(FaultSpec(action="disk", at_ms=0, disk_fault="full"), ["n0"])
    assert _reports(host2) == []
    _fill(world2, host2, 1, 10)
    assert host2.crashed and host2.crash_reason == "disk full"
    assert undo2 is not None
    undo2()  # space is back: the replica starts again
    assert not host2.crashed and host2.incarnation == 2


def test_fsync_error_is_reported_and_nothing_becomes_durable() -> None:
    env, disk, synced = _disk()
    disk.submit(_put(0))
    disk.fail_next_fsync = True
    disk.request_sync()
    env.run()
    assert synced == [-1]
    assert disk.durable_upto == 0
    assert list(disk.durable.scan("t")) == []


def test_lying_fsync_acknowledges_writes_that_a_power_loss_then_drops() -> None:
    env, disk, synced = _disk()
    disk.lying = True
    disk.submit(_put(0))
    disk.request_sync()
    env.run()
    assert synced == [1]
    disk.crash(power_loss=True)
    assert list(disk.view().scan("t")) == []


def test_group_commit_covers_batches_submitted_while_a_sync_runs() -> None:
    env, disk, synced = _disk(DiskSpec(fsync=DelaySpec(dist="constant", mean_us=1000)))
    disk.submit(_put(0))
    disk.request_sync()
    for i in range(1, 10):
        disk.submit(_put(i))
        disk.request_sync()
    env.run()
    assert synced == [1, 10]
    assert disk.stats.syncs == 2


def test_clock_drift_is_measured_and_monotonic_time_never_goes_back() -> None:
    clock = NodeClock(origin_us=5_000_000, drift_ppm=1000, skew_ms=0)
    t0 = clock.now(0).mono_ms
    assert clock.now(10_000_000).mono_ms - t0 == 10_010
    clock.set_drift(10_000_000, -1000)
    before = clock.now(10_000_000)
    assert clock.now(20_000_000).mono_ms - before.mono_ms == 9_990
    assert clock.now(10_000_000).wall_ms == before.wall_ms
    clock.jump_wall(-5000)
    assert clock.now(10_000_000).wall_ms == before.wall_ms - 5000
    assert clock.now(10_000_000).mono_ms == before.mono_ms


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-5000, 5000),
    st.integers(0, 10**12),
    st.integers(0, 10**10),
    st.integers(0, 10**7),
)
def test_timer_inverse_finds_the_first_instant_the_deadline_is_reached(
    drift: int, origin: int, now_us: int, ahead_ms: int
) -> None:
    clock = NodeClock(origin_us=origin, drift_ppm=drift, skew_ms=0)
    deadline = clock.now(now_us).mono_ms + ahead_ms
    t = clock.sim_us_at(deadline, now_us)
    assert t >= now_us
    assert clock.now(t).mono_ms >= deadline
    assert t == now_us or clock.now(t - 1).mono_ms < deadline


def test_a_monotonic_stall_stands_still_then_runs_on_without_catching_up() -> None:
    clock = NodeClock(origin_us=7_000_000, drift_ppm=0, skew_ms=0)
    start = clock.now(1_000_000)
    clock.stall_mono(1_000_000, 3000)
    assert clock.now(2_500_000).mono_ms == start.mono_ms  # standing still
    assert clock.now(3_999_999).mono_ms == start.mono_ms
    assert clock.now(5_000_000).mono_ms == start.mono_ms + 1000  # 3 s behind from now on
    assert clock.now(5_000_000).wall_ms == start.wall_ms + 4000  # the wall clock ran on
    clock.set_drift(6_000_000, 1000)  # a rate change after the stall keeps both continuous
    assert clock.now(6_000_000).mono_ms == start.mono_ms + 2000
    assert clock.now(16_000_000).mono_ms == start.mono_ms + 2000 + 10_010


def test_a_monotonic_jump_steps_forward_and_leaves_the_wall_clock() -> None:
    clock = NodeClock(origin_us=7_000_000, drift_ppm=0, skew_ms=0)
    before = clock.now(1_000_000)
    clock.jump_mono(1_000_000, 2500)
    assert clock.now(1_000_000).mono_ms == before.mono_ms + 2500
    assert clock.now(2_000_000).mono_ms == before.mono_ms + 3500
    assert clock.now(1_000_000).wall_ms == before.wall_ms
    clock.stall_mono(2_000_000, 1000)
    clock.jump_mono(2_500_000, 100)  # a jump during a stall moves where it stands
    assert clock.now(2_600_000).mono_ms == before.mono_ms + 3600


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-5000, 5000),
    st.integers(0, 10**10),
    st.lists(
        st.tuples(st.sampled_from(["stall", "jump", "drift"]), st.integers(1, 5000)),
        max_size=4,
    ),
    st.integers(0, 10**7),
)
def test_timer_inverse_holds_across_stalls_jumps_and_drift_changes(
    drift: int, now_us: int, faults: list[tuple[str, int]], ahead_ms: int
) -> None:
    """Monotonic time never goes back, and the timer inverse still finds the first instant a
    deadline is reached, whatever stalls, jumps and rate changes came before (some of them
    still running)."""
    clock = NodeClock(origin_us=10**9, drift_ppm=drift, skew_ms=0)
    t = 0
    last = clock.mono_us(0)
    for kind, n in faults:
        t += n * 700
        assert clock.mono_us(t) >= last
        match kind:
            case "stall":
                clock.stall_mono(t, n)
            case "jump":
                clock.jump_mono(t, n)
            case _:
                clock.set_drift(t, n - 2500)
        assert clock.mono_us(t) >= last
        last = clock.mono_us(t)
    now = t + now_us
    assert clock.mono_us(now) >= last
    deadline = clock.now(now).mono_ms + ahead_ms
    at = clock.sim_us_at(deadline, now)
    assert at >= now
    assert clock.now(at).mono_ms >= deadline
    assert at == now or clock.now(at - 1).mono_ms < deadline


def _world(fsync_us: int = 5000, net_us: int = 100) -> World:
    return World(
        seed=7,
        network=NetworkSpec(delay=DelaySpec(dist="constant", mean_us=net_us)),
        disk=DiskSpec(fsync=DelaySpec(dist="constant", mean_us=fsync_us), write_us_per_kib=0),
    )


def test_driver_releases_replies_only_after_the_write_is_durable() -> None:
    world = _world()
    world.add_node("n0", lambda nid, view, rng: CounterNode(nid, [], view, rng))
    replies: list[tuple[int, object]] = []
    world.add_endpoint("c0", lambda src, p: replies.append((world.now_us, p)))
    world.start()
    world.run_until(10_000)
    world.network.send("c0", "n0", CallMsg(1, "bump"))
    world.run_until(100_000)
    # 100 us to the node, 5000 us fsync, 100 us back
    assert replies == [(10_000 + 100 + 5000 + 100, ReplyMsg(1, 1))]


def test_negative_control_reply_before_persist_is_observable() -> None:
    world = _world()
    host = world.add_node("n0", lambda nid, view, rng: CounterNode(nid, [], view, rng))
    host.reply_before_persist = True
    replies: list[tuple[int, object]] = []
    world.add_endpoint("c0", lambda src, p: replies.append((world.now_us, p)))
    world.start()
    world.run_until(10_000)
    world.network.send("c0", "n0", CallMsg(1, "bump"))
    world.run_until(10_150)
    host.crash(power_loss=True)
    host.start()
    world.run_until(50_000)
    assert replies == [(10_200, ReplyMsg(1, 1))]
    node = host.node
    assert isinstance(node, CounterNode)
    assert node.count == 0  # acknowledged, then lost: what the checkers must catch


def test_restart_rebuilds_from_durable_state_only() -> None:
    world = _world()
    host = world.add_node("n0", lambda nid, view, rng: CounterNode(nid, [], view, rng, tick_ms=1))
    world.start()
    world.run_until(100_000)
    node = host.node
    assert isinstance(node, CounterNode)
    count = node.count
    durable = host.disk.durable.get("counter", b"n")
    assert durable is not None and count > 10
    host.crash(power_loss=True)
    host.start()
    node = host.node
    assert isinstance(node, CounterNode)
    assert node.count == int.from_bytes(durable[:-4], "big") < count + 1


def test_paused_node_buffers_input_and_handles_it_on_resume() -> None:
    world = _world()
    host = world.add_node("n0", lambda nid, view, rng: CounterNode(nid, [], view, rng))
    world.add_node("n1", lambda nid, view, rng: CounterNode(nid, ["n0"], view, rng, tick_ms=10))
    world.start()
    host.pause()
    world.run_until(200_000)
    node = host.node
    assert isinstance(node, CounterNode)
    assert node.received == []
    host.resume()
    assert len(node.received) >= 15
    assert all(isinstance(n, int) for _, n in node.received)
    assert Ping(1) == Ping(1)


def _counter(nid: str, view: StorageView, rng: Rng, *, peers: list[str]) -> CounterNode:
    return CounterNode(nid, peers, view, rng, tick_ms=3)


def test_same_seed_same_digest_and_a_different_seed_differs() -> None:
    def run(seed: int) -> str:
        world = World(
            seed=seed,
            network=NetworkSpec(loss=0.1, reorder=0.3),
            disk=DiskSpec(),
            drift_ppm_max=200,
        )
        for i in range(3):
            peers = [f"n{j}" for j in range(3) if j != i]
            world.add_node(f"n{i}", partial(_counter, peers=peers))
        world.start()
        world.run_until(300_000)
        return world.digest()

    assert run(1) == run(1)
    assert run(1) != run(2)
