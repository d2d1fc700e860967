"""A leader learning, from a late catch-up reply, a value other than the one it proposed.

The suspicion (issue 12): a follower treats an instance as chosen when its record carries the
master's ballot and the master's commit index covers it. That holds only if the master
applied, at that instance, the value it proposed there. A leader that still leads (its lease
lapsed, it has not stepped down yet) could apply another value learned from a late
``LearnReply``; its commit index then covers an instance where its followers hold its own,
never chosen, proposal.

The interleaving, with five replicas and group 1 (which prefers ``r1``):

1. ``r1`` is cut off while another replica M masters the group; on the heal ``r1`` lags and
   sends M a ``LearnRequest``, which the network holds back (``r1`` catches up by a retry).
2. M proposes U1 at instance i and U2 at i+1 (pipelined). Only ``r1`` receives U2; nobody
   receives U1. M crashes and restarts cut off.
3. ``r1`` is elected: its promise quorum reports U2 at i+1 and nothing at i, so it re-proposes
   U2 and fills i with a no-op N, both under its ballot b. Right then the network splits
   {r1, F} | {M, A, B}: only F accepts N and U2 under b.
4. M, A and B elect a master with a higher ballot, which finds U1 and U2 on M and chooses
   them. ``r1`` still leads (no lease, but not yet given up).
5. The held ``LearnRequest`` reaches M; M's reply carries U1 at i and U2 at i+1 to ``r1``.
6. ``r1``'s next heartbeat reaches F with its commit index.

Without a role check in ``CatchUp.on_learn_reply`` the interleaving is reachable: step 5
makes ``r1`` apply U1 and U2 while leading, its commit index covers i and i+1, and in step 6
F marks N and U2 chosen and applies N at i, a value never chosen; here the heartbeat's
checksum comparison then stops F in that same step (``InvariantViolation``), but nothing
guarantees the comparison comes before the divergent apply is written. A leader must not apply
values learned by catch-up: its own quorums and its phase 1 tell it what is chosen. (The
seed matters only in that the preferred replica must win the election of step 3.)
"""

from __future__ import annotations

from pxq.paxos.messages import Accept, Heartbeat, LearnReply, LearnRequest
from pxq.paxos.roles import Role
from tests.paxos_harness import Cluster, Flight

G = 1
L = "r1"


def _leads(c: Cluster, name: str) -> bool:
    node = c.nodes[name]
    return node is not None and node.groups[G].role is Role.LEADER


def _step_until(c: Cluster, pred: object, within_ms: int) -> None:
    """Step one event at a time until ``pred()`` holds (so a test can act right after)."""
    assert callable(pred)
    end = c.time + within_ms
    while not pred():
        assert c.step_next(end), f"condition not reached within {within_ms} ms"


def test_a_leader_never_applies_a_late_learn_reply_so_followers_apply_only_chosen_values() -> None:
    c = Cluster.make(n=5, groups=2, seed=3, batch_delay_ms=0, handover_after_ms=600_000)
    others = [n for n in c.config.replicas if n != L]
    # 1. r1 cut off; another replica masters group 1.
    c.partition([L], others)
    m = c.wait_master(G, within_ms=10_000)
    assert m != L
    c.propose_until_ok(G, b"warm", start=m)
    c.heal()
    _step_until(
        c,
        lambda: any(
            f.src == L and f.dst == m and isinstance(f.msg, LearnRequest) and f.msg.group == G
            for f in c.pool
        ),
        5000,
    )
    held = next(
        f
        for f in c.pool
        if f.src == L and f.dst == m and isinstance(f.msg, LearnRequest) and f.msg.group == G
    )
    c.pool.remove(held)
    assert c.run_until(lambda: c.applied_index(L, G) == c.applied_index(m, G), 3000)
    i = c.applied_index(m, G) + 1
    assert isinstance(held.msg, LearnRequest) and held.msg.from_instance < i

    # 2. U1 at i reaches nobody, U2 at i+1 only r1; then M crashes and restarts cut off.
    # Right after a heartbeat round, so that every replica heard M last at the same time and
    # the preferred replica r1 is the first to campaign.
    def heartbeat_out() -> bool:
        return any(f.src == m and isinstance(f.msg, Heartbeat) for f in c.pool)

    _step_until(c, heartbeat_out, 1000)
    c.deliver_where(lambda f: f.src == m and isinstance(f.msg, Heartbeat))
    c.propose(m, G, b"U1")
    c.propose(m, G, b"U2")
    accepts = [f for f in c.pool if f.src == m and isinstance(f.msg, Accept) and f.msg.group == G]
    assert sorted({f.msg.instance for f in accepts if isinstance(f.msg, Accept)}) == [i, i + 1]
    c.drop_where(
        lambda f: f in accepts and not (isinstance(f.msg, Accept) and f.msg.instance == i + 1)
    )
    c.deliver_where(lambda f: f in accepts and f.dst == L)
    c.drop_where(lambda f: f in accepts)
    c.crash(m)
    c.partition([m], [n for n in c.config.replicas if n != m])
    c.restart(m)

    # 3. r1 is elected; at once {r1, F} | {M, A, B}.
    _step_until(c, lambda: _leads(c, L), 5000)  # (with this seed r1 wins; see above)
    rest = [n for n in others if n != m]
    f_name, a, b = rest
    c.partition([L, f_name], [m, a, b])
    noop = [
        f.msg
        for f in c.pool
        if f.src == L and isinstance(f.msg, Accept) and f.msg.group == G and f.msg.instance == i
    ]
    assert noop, "r1 must fill instance i (a gap in its promise quorum) with a no-op"
    ballot_b = noop[0].ballot

    # 4. M, A, B elect a higher ballot and choose U1, U2; r1 still leads.
    def chosen_on_majority_side() -> bool:
        return c.applied_index(m, G) >= i + 1

    assert c.run_until(chosen_on_majority_side, 3000), "the majority side chose nothing"
    assert _leads(c, L), "r1 gave up before the late reply could arrive: no interleaving"
    recs = {(inst, s): v for inst, s, v in c.records(m, G) if inst in (i, i + 1)}
    assert recs == {(i, 0): b"U1", (i + 1, 0): b"U2"}
    leader_applied = c.applied_index(L, G)
    assert leader_applied < i

    # 5. The held LearnRequest reaches M, M's reply reaches r1.
    c.heal()
    c.seq += 1
    c.pool.append(Flight(seq=c.seq, deliver_at=c.time, src=L, dst=m, msg=held.msg))
    assert c.deliver_where(lambda f: f.src == L and f.dst == m and f.msg is held.msg) == 1
    replies = c.deliver_where(
        lambda f: f.src == m and f.dst == L and isinstance(f.msg, LearnReply) and f.msg.group == G
    )
    assert replies >= 1
    assert _leads(c, L)
    assert c.applied_index(L, G) == leader_applied, "a leader applied a late catch-up value"

    # 6. r1's next heartbeat reaches F (only F: the split is back).
    c.partition([L, f_name], [m, a, b])
    _step_until(
        c,
        lambda: any(
            f.src == L and f.dst == f_name and isinstance(f.msg, Heartbeat) and f.msg.group == G
            for f in c.pool
        ),
        1000,
    )
    c.deliver_where(lambda f: f.src == L and f.dst == f_name and isinstance(f.msg, Heartbeat))
    assert c.applied_index(f_name, G) < i, f"F applied instance {i} of ballot {ballot_b}"

    # Healed, everyone converges on U1, U2.
    c.heal()
    assert c.run_until(c.converged, 10_000)
    c.check_agreement()
    for name in c.config.replicas:
        got = {(inst, s): v for inst, s, v in c.records(name, G) if inst in (i, i + 1)}
        assert got == {(i, 0): b"U1", (i + 1, 0): b"U2"}, name
