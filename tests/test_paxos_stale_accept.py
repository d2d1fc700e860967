"""A deposed master's delayed Accept reaching a replica that learned another chosen value.

Five replicas; the master A and replica E are cut off from B, C, D. A proposes X: its Accept
to E is held back in the network. B, C, D elect a master and choose Y at the same instance.
After the heal E learns Y by catch-up (which raises no promise), and only then A's delayed
Accept of X arrives, under a ballot E has not promised against. Before the fix E raised
``InvariantViolation`` and stopped; a correct replica must refuse the Accept and keep Y.
"""

from __future__ import annotations

from pxq.paxos.messages import Accept, Accepted
from tests.paxos_harness import Cluster, Flight


def _master_among(c: Cluster, names: list[str], within_ms: int) -> str:
    end = c.time + within_ms
    while c.time < end:
        found = [m for m in c.masters() if m in names]
        if found:
            return found[0]
        c.run(10)
    raise AssertionError(f"no master among {names} within {within_ms} ms")


def test_a_stale_accept_for_an_instance_chosen_otherwise_is_refused_not_a_crash() -> None:
    c = Cluster.make(n=5, seed=1)
    old = c.wait_master()
    c.propose_until_ok(0, b"warm", start=old)
    c.run(50)
    others = [n for n in c.config.replicas if n != old]
    lagger, majority = others[-1], others[:3]
    c.partition([old, lagger], majority)
    c.propose(old, 0, b"X")
    held = [f for f in c.pool if f.src == old and f.dst == lagger and isinstance(f.msg, Accept)]
    assert held, "the old master sent no Accept to the lagger"
    c.pool = [f for f in c.pool if f not in held]
    stale = held[0].msg
    assert isinstance(stale, Accept)

    new = _master_among(c, majority, 10_000)
    ok = c.propose_until_ok(0, b"Y", start=new)
    assert ok.instance == stale.instance, "Y must be chosen at the instance X was proposed at"

    c.heal()
    c.crash(old)
    assert c.run_until(lambda: c.applied_index(lagger) >= ok.instance, 5000)
    node = c.nodes[lagger]
    assert node is not None
    promised_before = node.groups[0].acceptor.promised
    assert promised_before <= stale.ballot, (
        "the lagger must not have promised above the stale Accept"
    )

    for f in held:  # the delayed Accepts finally arrive
        c.seq += 1
        c.pool.append(Flight(seq=c.seq, deliver_at=c.time, src=f.src, dst=f.dst, msg=f.msg))
    c.deliver_where(lambda f: f.dst == lagger and f.src == old and isinstance(f.msg, Accept))

    assert c.nodes[lagger] is node, "the lagger must keep running"
    answers = [f.msg for f in c.pool if f.src == lagger and isinstance(f.msg, Accepted)]
    refusal = [a for a in answers if a.instance == stale.instance and a.ballot == stale.ballot]
    assert refusal and not refusal[0].ok
    assert node.groups[0].acceptor.promised == promised_before, "no promise for a stale ballot"
    values = {v for i, _s, v in c.records(lagger) if i == stale.instance}
    assert b"Y" in values and b"X" not in values
    c.run(500)
    c.check_agreement()
    c.check_acknowledged()
