"""Pre-vote: a replica that heard no master for a while never disturbs a master that a majority
still follows, and a master that is really gone is still replaced within its lease plus an
election.

Before pre-vote, a follower cut off (or paused) for longer than a lease campaigned at once:
its own acceptor promised the new ballot, so on the heal it refused the master's next
heartbeat and the refusal's ``promised`` deposed the master (issue 12).
"""

from __future__ import annotations

from pxq.paxos.messages import PreVote, PreVoteReply
from tests.paxos_harness import Cluster, Flight


def _lost_events(c: Cluster, since: int) -> list[tuple[int, str]]:
    return [
        (t, name)
        for t, name, ev in c.trace
        if t >= since and ev.kind == "master" and dict(ev.fields).get("state") == "lost"
    ]


def _load(c: Cluster, master: str, ms: int, every_ms: int = 50) -> int:
    """Propose through ``master`` every ``every_ms`` for ``ms``; how many were acknowledged."""
    calls = []
    end = c.time + ms
    while c.time < end:
        calls.append(c.propose(master, 0, f"v{c.next_call}".encode()))
        c.run(every_ms)
    c.run(100)
    return sum(1 for call in calls if type(c.calls[call].response).__name__ == "ProposeOk")


def test_a_follower_cut_off_for_seconds_rejoins_without_deposing_the_master() -> None:
    c = Cluster.make(n=3, seed=2)
    master = c.wait_master()
    c.propose_until_ok(0, b"warm", start=master)
    follower = next(n for n in c.config.replicas if n != master)
    node = c.nodes[follower]
    assert node is not None
    start = c.time
    ballot = node.groups[0].acceptor.promised
    c.partition([follower], [n for n in c.config.replicas if n != follower])
    acked = _load(c, master, 3000)
    assert acked >= 50, "the master must keep serving with the other follower"
    pre_votes = [ev for _t, n, ev in c.trace if n == follower and ev.kind == "pre_vote"]
    assert pre_votes, "the cut-off follower should have asked to campaign"
    assert node.groups[0].acceptor.promised == ballot, "a refused pre-vote raises no ballot"
    c.heal()
    acked = _load(c, master, 2000)
    assert acked >= 35
    assert _lost_events(c, start) == [], "the rejoining follower deposed the master"
    assert c.masters() == [master]
    assert c.run_until(c.converged, 2000)
    c.check_agreement()
    c.check_acknowledged()


def test_a_follower_holding_the_master_s_lease_refuses_a_pre_vote() -> None:
    c = Cluster.make(n=3, seed=4)
    master = c.wait_master()
    a, b = [n for n in c.config.replicas if n != master]
    c.run(300)  # heartbeats acked: b honours the master's lease
    c.seq += 1
    c.pool.append(Flight(c.seq, c.time, a, b, PreVote(group=0, seq=7)))
    c.deliver_where(lambda f: f.dst == b and isinstance(f.msg, PreVote))
    replies = [f.msg for f in c.pool if f.src == b and isinstance(f.msg, PreVoteReply)]
    assert len(replies) == 1
    r = replies[0]
    assert not r.granted and r.seq == 7 and r.master == master and r.lease_left_ms > 0


def test_a_crashed_master_is_still_replaced_within_its_lease_plus_an_election() -> None:
    c = Cluster.make(n=3, seed=5)
    master = c.wait_master()
    c.propose_until_ok(0, b"warm", start=master)
    c.run(100)
    c.crash(master)
    crashed_at = c.time
    new = c.wait_master(within_ms=3000)
    assert new != master
    assert c.time - crashed_at <= c.config.lease_ms + 500
    c.propose_until_ok(0, b"after", start=new)
