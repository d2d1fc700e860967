"""Quorum, ballot and lease arithmetic, differential-tested against naive models."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from pxq.paxos.ballot import make_ballot, next_ballot, owner_index, round_of
from pxq.paxos.config import PaxosConfig
from pxq.paxos.lease import acceptor_lease_until, master_lease_until
from pxq.paxos.quorum import is_quorum, majority, quorum_impossible

sizes = st.sampled_from([1, 3, 5, 7, 9])


def naive_is_quorum(members: set[int], n: int) -> bool:
    """A set is a quorum iff it intersects every set of the same size or larger: the
    definition that matters for Paxos, checked by brute force over all subsets."""
    members = {m for m in members if m < n}
    all_sets = [set(c) for k in range(n + 1) for c in combinations(range(n), k)]
    # Smallest k such that every two k-subsets intersect.
    k = next(
        k
        for k in range(n + 1)
        if all(
            set(a) & set(b) for a in combinations(range(n), k) for b in combinations(range(n), k)
        )
    )
    assert all_sets  # keep the enumeration honest
    return len(members) >= k


@given(sizes, st.sets(st.integers(min_value=0, max_value=9)))
def test_is_quorum_matches_brute_force(n: int, members: set[int]) -> None:
    mask = sum(1 << m for m in members)
    assert is_quorum(mask, n) == naive_is_quorum(members, n)


@given(sizes, st.sets(st.integers(min_value=0, max_value=8)))
def test_quorum_impossible_iff_the_rest_is_no_quorum(n: int, rejected: set[int]) -> None:
    rejected = {r for r in rejected if r < n}
    rest = set(range(n)) - rejected
    mask = sum(1 << r for r in rejected)
    assert quorum_impossible(mask, n) == (not naive_is_quorum(rest, n))


@given(sizes)
def test_any_two_quorums_intersect(n: int) -> None:
    q = majority(n)
    for a in combinations(range(n), q):
        for b in combinations(range(n), q):
            assert set(a) & set(b)


@given(
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=0, max_value=8),
)
def test_ballots_order_by_round_then_index_and_are_unique(
    r1: int, i1: int, r2: int, i2: int
) -> None:
    b1, b2 = make_ballot(r1, i1), make_ballot(r2, i2)
    assert (b1 < b2) == ((r1, i1) < (r2, i2))
    assert (b1 == b2) == ((r1, i1) == (r2, i2))
    assert round_of(b1) == r1 and owner_index(b1) == i1


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=8))
def test_next_ballot_exceeds_everything_seen(seen: int, index: int) -> None:
    b = next_ballot(seen, index)
    assert b > seen and owner_index(b) == index


@given(
    lease_ms=st.integers(min_value=100, max_value=10_000),
    drift=st.integers(min_value=0, max_value=50_000),
    t0=st.integers(min_value=0, max_value=10**9),
    ack_delay=st.integers(min_value=0, max_value=10_000),
    rate_master=st.floats(min_value=-1.0, max_value=1.0),
    rate_acceptor=st.floats(min_value=-1.0, max_value=1.0),
)
def test_master_lease_ends_before_any_acceptor_promise_in_real_time(
    lease_ms: int,
    drift: int,
    t0: int,
    ack_delay: int,
    rate_master: float,
    rate_acceptor: float,
) -> None:
    hb = max(1, lease_ms // 5)
    try:
        cfg = PaxosConfig(replicas=("a",), lease_ms=lease_ms, heartbeat_ms=hb, drift_ppm_max=drift)
    except ValueError:
        return
    rho = drift / 1e6
    rm, ra = 1 + rate_master * rho, 1 + rate_acceptor * rho
    # Real time 0: master reads t0 (its clock) and sends; the acceptor acks ack_delay later
    # in real time, at its (integer, truncated) clock reading ta.
    ta = 12345 + int(ack_delay * ra)
    master_end_real = (master_lease_until(t0, cfg) - t0) / rm
    acceptor_free_real = ack_delay + (acceptor_lease_until(ta, cfg) - ta - 1) / ra
    assert master_end_real <= acceptor_free_real
