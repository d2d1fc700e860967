"""Repair instead of a crash loop (``pxq.paxos.repair``): a replica that lost records, or
its whole disk, re-learns them from its peers and votes in no quorum meanwhile; blank storage
of unknown history refuses to run when the cluster has history."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pxq.effects import Boot, ReplacementRequired
from pxq.paxos.group import Group
from pxq.paxos.logsm import TABLE as RLOG
from pxq.paxos.messages import Accepted, HeartbeatAck, Promise, RepairQuery
from pxq.paxos.records import (
    KIND_APPLIED,
    KIND_MEMBERS,
    KIND_PROMISE,
    KIND_REPAIR,
    LOG,
    META,
    log_key,
    meta_key,
)
from sim.memstore import MemoryStore
from tests.paxos_harness import Cluster


def _load(c: Cluster, master: str, count: int, tag: str = "v") -> None:
    for i in range(count):
        c.propose_until_ok(0, f"{tag}{i}".encode(), start=master)


def _follower(c: Cluster, master: str) -> str:
    return next(n for n in c.config.replicas if n != master)


def _flip(store: MemoryStore, table: str, key: bytes) -> None:
    """Flip one bit of a stored record (the harness store has no CRC of its own: the Paxos
    records' checksum catches it)."""
    t = store.tables[table]
    raw = bytearray(t.values[key])
    raw[0] ^= 1
    t.values[key] = bytes(raw)


def _refusals(c: Cluster, name: str, since: int) -> list[object]:
    """The quorum answers ``name`` sent after step ``since`` of the pool sequence."""
    assert c.sent is not None
    return [
        f.msg
        for f in c.sent
        if f.src == name and f.seq > since and isinstance(f.msg, Promise | Accepted | HeartbeatAck)
    ]


def test_a_flipped_log_record_above_the_applied_index_is_relearned_and_the_replica_serves() -> None:
    c = Cluster.make(n=3, seed=3)
    master = c.wait_master()
    _load(c, master, 5)
    victim = _follower(c, master)
    c.run(500)
    applied = c.applied_index(victim)
    # The victim accepted the next instance (not applied yet: the master's commit is lost).
    c.partition([master, victim], [n for n in c.config.replicas if n not in (master, victim)])
    c.drop_where(lambda f: f.dst == victim and not isinstance(f.msg, Accepted))
    call = c.propose(master, 0, b"pending")
    c.deliver_where(lambda f: f.dst == victim)
    key = log_key(0, applied + 1)
    assert c.stores[victim].get(LOG, key) is not None
    c.crash(victim)
    _flip(c.stores[victim], LOG, key)
    with pytest.raises(Exception, match="checksum mismatch"):
        c.restart(victim)  # the record is read at boot: StorageCorruption naming it
    c.crash(victim)
    c.restart(victim, Boot(damaged=((LOG, key),)))
    assert c.stores[victim].get(LOG, key) is None  # dropped, never guessed
    assert c.stores[victim].get(META, meta_key(0, KIND_REPAIR)) is not None
    c.heal()
    c.run_until(lambda: c.calls[call].response is not None, 5000)
    _load(c, master, 5, tag="w")
    c.run(2000)
    assert c.stores[victim].get(META, meta_key(0, KIND_REPAIR)) is None
    assert any(
        ev.kind == "repair" and dict(ev.fields)["state"] == "repaired"
        for _, n, ev in c.trace
        if n == victim
    )
    assert c.converged()
    c.check_agreement()
    c.check_acknowledged()
    # It serves again: the master can lose the other follower and still commit.
    other = next(n for n in c.config.replicas if n not in (master, victim))
    c.crash(other)
    _load(c, master, 3, tag="x")
    c.check_acknowledged()


def test_a_flipped_log_record_at_or_below_the_applied_index_truncates_the_log() -> None:
    c = Cluster.make(n=3, seed=4)
    master = c.wait_master()
    _load(c, master, 6)
    victim = _follower(c, master)
    c.run(500)
    key = log_key(0, 2)
    c.crash(victim)
    _flip(c.stores[victim], LOG, key)
    c.restart(victim, Boot(damaged=((LOG, key),)))
    # Redundant (applied): no repair needed, the log now starts above it.
    assert c.stores[victim].get(META, meta_key(0, KIND_REPAIR)) is None
    assert c.stores[victim].get(LOG, log_key(0, 1)) is None
    assert c.stores[victim].get(LOG, log_key(0, 2)) is None
    _load(c, master, 3, tag="w")
    c.run(1000)
    assert c.converged()
    c.check_agreement()


def test_a_replica_with_a_lost_promise_refuses_every_vote_until_repaired() -> None:
    c = Cluster.make(n=3, seed=5)
    master = c.wait_master()
    _load(c, master, 3)
    victim = _follower(c, master)
    other = next(n for n in c.config.replicas if n not in (master, victim))
    c.run(500)
    key = meta_key(0, KIND_PROMISE)
    c.crash(victim)
    _flip(c.stores[victim], META, key)
    c.crash(other)  # the query round needs every other replica: it cannot finish yet
    c.sent = []
    c.restart(victim, Boot(damaged=((META, key),)))
    mark = c.seq
    c.run(3000)
    answers = _refusals(c, victim, mark)
    assert answers, "the master kept talking to the victim"
    assert all(not a.ok for a in answers)  # type: ignore[attr-defined]
    # Without the victim's votes the master cannot keep its lease with one peer down.
    assert c.masters() == []
    c.restart(other)
    c.run(3000)
    master = c.wait_master()
    _load(c, master, 3, tag="w")
    c.run(1000)
    node = c.nodes[victim]
    assert node is not None and node.groups[0].repair.voting()
    assert c.converged()
    c.check_agreement()
    c.check_acknowledged()


def test_a_damaged_state_machine_is_replaced_by_a_peer_snapshot() -> None:
    c = Cluster.make(n=3, seed=6, checkpoint_every=4, log_hold=2)
    master = c.wait_master()
    _load(c, master, 12)
    victim = _follower(c, master)
    c.run(500)
    before = c.records(master)
    rlog_key = next(iter(c.stores[victim].tables[RLOG].values))
    c.crash(victim)
    c.restart(victim, Boot(damaged=((RLOG, rlog_key), (META, meta_key(0, KIND_APPLIED)))))
    c.run(3000)
    assert any(ev.kind == "snapshot_installed" for _, n, ev in c.trace if n == victim), (
        "no snapshot installed"
    )
    assert c.stores[victim].get(META, meta_key(0, KIND_REPAIR)) is None
    assert c.records(victim) == before
    _load(c, master, 2, tag="w")
    c.run(1000)
    assert c.converged()
    c.check_agreement()


def test_a_replaced_disk_votes_in_no_quorum_until_it_relearned_everything() -> None:
    c = Cluster.make(n=3, seed=7)
    master = c.wait_master()
    _load(c, master, 6)
    victim = _follower(c, master)
    c.run(500)
    c.crash(victim)
    c.stores[victim] = MemoryStore()
    c.sent = []
    c.restart(victim, Boot(if_blank="replace"))
    mark = c.seq
    c.run(50)
    assert all(not a.ok for a in _refusals(c, victim, mark))  # type: ignore[attr-defined]
    c.run(3000)
    node = c.nodes[victim]
    assert node is not None and node.groups[0].repair.voting()
    assert node.groups[0].acceptor.promised >= c.nodes[master].groups[0].acceptor.promised  # type: ignore[union-attr]
    assert c.records(victim) == c.records(master)
    _load(c, master, 2, tag="w")
    c.run(1000)
    c.check_agreement()
    c.check_acknowledged()


def test_blank_storage_of_unknown_history_refuses_to_run_in_a_cluster_with_history() -> None:
    c = Cluster.make(n=3, seed=8)
    master = c.wait_master()
    _load(c, master, 2)
    victim = _follower(c, master)
    c.crash(victim)
    c.stores[victim] = MemoryStore()
    c.restart(victim, Boot(if_blank="probe"))
    assert any(f.src == victim and isinstance(f.msg, RepairQuery) for f in c.pool)
    with pytest.raises(ReplacementRequired, match="replacement"):
        c.run(1000)
    assert c.stores[victim].tables == {} or all(
        not t.values for t in c.stores[victim].tables.values()
    )


def test_blank_storage_of_unknown_history_runs_in_a_new_cluster() -> None:
    c = Cluster.make(n=3, seed=9)
    for name in c.config.replicas:
        c.crash(name)
        c.stores[name] = MemoryStore()
    for name in c.config.replicas:
        c.restart(name, Boot(if_blank="probe"))
    master = c.wait_master()
    _load(c, master, 3)
    c.run(500)
    assert c.converged()


def _probe_cluster(seed: int, started: tuple[str, ...]) -> Cluster:
    """A cluster whose replicas all start on blank storage of unknown history (what a real
    node sees on an empty data directory); only ``started`` are up."""
    c = Cluster.make(n=3, seed=seed)
    for name in c.config.replicas:
        c.crash(name)
        c.stores[name] = MemoryStore()
    for name in started:
        c.restart(name, Boot(if_blank="probe"))
    return c


def _group(c: Cluster, name: str) -> Group:
    node = c.nodes[name]
    assert node is not None
    return node.groups[0]


def _voting(c: Cluster, name: str) -> Callable[[], bool]:
    def voting() -> bool:
        return _group(c, name).repair.voting()

    return voting


def test_a_replica_first_started_after_its_peers_formed_the_cluster_joins_it() -> None:
    c = _probe_cluster(10, ("r0", "r1"))
    master = c.wait_master()
    _load(c, master, 3)
    c.restart("r2", Boot(if_blank="probe"))
    assert not _group(c, "r2").repair.voting()
    assert c.run_until(_voting(c, "r2"), 3000)
    assert c.stores["r2"].tables[META].values[meta_key(0, KIND_MEMBERS)]
    # Its peers recorded it: it voted once one of them had.
    assert all(_group(c, p).repair.is_member("r2") for p in ("r0", "r1"))
    c.crash(master)
    other = c.wait_master()
    _load(c, other, 2, tag="w")
    c.restart(master, Boot(if_blank="probe"))
    c.run(2000)
    assert c.converged()
    c.check_agreement()
    c.check_acknowledged()


def test_a_replica_stopped_before_it_voted_restarts_as_a_member_and_a_wiped_one_is_refused() -> (
    None
):
    c = _probe_cluster(11, ("r0", "r1"))
    master = c.wait_master()
    _load(c, master, 2)
    c.restart("r2", Boot(if_blank="probe"))
    assert c.run_until(_voting(c, "r2"), 3000)
    c.crash("r2")  # it may never have promised or accepted anything: its member record stays
    c.restart("r2", Boot(if_blank="probe"))
    assert _group(c, "r2").repair.voting()
    c.crash("r2")
    c.stores["r2"] = MemoryStore()  # now it lost that record too
    c.restart("r2", Boot(if_blank="probe"))
    with pytest.raises(ReplacementRequired, match="recorded it as a member"):
        c.run(1000)


def test_a_replica_stopped_before_a_peer_recorded_it_asks_again_before_it_votes() -> None:
    c = _probe_cluster(12, ("r0", "r1"))
    master = c.wait_master()
    _load(c, master, 2)
    c.sent = []
    c.restart("r2", Boot(if_blank="probe"))
    assert c.deliver_where(lambda f: isinstance(f.msg, RepairQuery)) == 2
    assert c.deliver_where(lambda f: f.dst == "r2") == 2
    g = _group(c, "r2")
    assert not g.repair.probing and not g.repair.voting()  # it asks to be recorded
    assert c.stores["r2"].tables[META].values[meta_key(0, KIND_MEMBERS)]
    c.crash("r2")
    dropped = c.drop_where(lambda f: isinstance(f.msg, RepairQuery) and f.msg.join)
    assert dropped == 2  # no peer recorded it
    assert not any(_group(c, p).repair.is_member("r2") for p in ("r0", "r1"))
    mark = c.seq
    c.restart("r2", Boot(if_blank="probe"))
    g = _group(c, "r2")
    assert not g.repair.probing and not g.repair.voting()
    assert c.run_until(_voting(c, "r2"), 3000)
    assert any(
        f.src == "r2" and f.seq > mark and isinstance(f.msg, RepairQuery) and f.msg.join
        for f in c.sent
    )
    _load(c, c.wait_master(), 2, tag="w")
    c.run(1000)
    c.check_agreement()


def test_a_blank_replica_waits_for_every_peer_before_it_concludes_it_never_joined() -> None:
    c = _probe_cluster(13, ("r0", "r1"))
    master = c.wait_master()
    _load(c, master, 2)
    c.crash("r1")
    c.restart("r2", Boot(if_blank="probe"))
    c.run(3000)
    g = _group(c, "r2")
    assert g.repair.probing and not g.repair.voting()
    assert all(not t.values for t in c.stores["r2"].tables.values())  # it wrote nothing
    c.restart("r1", Boot(if_blank="probe"))
    assert c.run_until(_voting(c, "r2"), 5000)
    c.check_agreement()
