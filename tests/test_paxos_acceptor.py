"""Acceptor rules: promises and accepts only for ballots >= the promise, persisted in the
step that replies, lease promises, bounded promises, and the truncated-log refusal."""

from __future__ import annotations

from pxq.effects import EffectsBuilder, Put
from pxq.paxos.acceptor import Acceptor
from pxq.paxos.config import PaxosConfig
from pxq.paxos.records import LOG, META, decode_log, decode_u64, log_key
from sim.memstore import MemoryStore

CFG = PaxosConfig(replicas=("a", "b", "c"), learn_chunk_max=4)


def fresh(now: int = 0) -> tuple[Acceptor, MemoryStore]:
    store = MemoryStore()
    acc = Acceptor(0, CFG, store)
    acc.load(now)
    return acc, store


def prepare(acc: Acceptor, store: MemoryStore, ballot: int, now: int, start: int = 1) -> object:
    fx = EffectsBuilder()
    p = acc.on_prepare(
        ballot=ballot, from_instance=start, now_ms=now, applied=0, master_name=None, fx=fx
    )
    store.apply(fx.writes)
    return p


def accept(acc: Acceptor, store: MemoryStore, ballot: int, instance: int, value: bytes) -> bool:
    fx = EffectsBuilder()
    ok = acc.on_accept(ballot=ballot, instance=instance, value=value, now_ms=0, applied=0, fx=fx)
    store.apply(fx.writes)
    return ok


def test_booted_acceptor_refuses_every_promise_for_one_lease() -> None:
    acc, store = fresh(now=100)
    p = prepare(acc, store, 17, now=100 + CFG.lease_ms - 1)
    assert not p.ok and p.lease_left_ms == 1  # type: ignore[attr-defined]
    assert prepare(acc, store, 17, now=100 + CFG.lease_ms).ok  # type: ignore[attr-defined]


def test_promise_is_persisted_and_lower_ballots_are_refused() -> None:
    acc, store = fresh()
    assert prepare(acc, store, 33, now=2000).ok  # type: ignore[attr-defined]
    assert decode_u64(store.get(META, b"\0\0\0\0P") or b"", "p") == 33
    low = prepare(acc, store, 17, now=2000)
    assert not low.ok and low.promised == 33  # type: ignore[attr-defined]
    # the same ballot again is fine (a retransmission or the next recovery window)
    assert prepare(acc, store, 33, now=2000).ok  # type: ignore[attr-defined]
    # a restarted acceptor remembers the promise
    again = Acceptor(0, CFG, store)
    again.load(0)
    assert again.promised == 33


def test_accept_only_at_or_above_the_promise_and_raises_it() -> None:
    acc, store = fresh()
    prepare(acc, store, 33, now=2000)
    assert not accept(acc, store, 17, 1, b"x")
    assert store.get(LOG, log_key(0, 1)) is None
    assert accept(acc, store, 49, 1, b"y")
    assert acc.promised == 49
    rec = decode_log(store.get(LOG, log_key(0, 1)) or b"")
    assert (rec.ballot, rec.value, rec.chosen) == (49, b"y", False)


def test_accept_writes_are_emitted_in_the_replying_step() -> None:
    acc, _ = fresh()
    fx = EffectsBuilder()
    assert acc.on_accept(ballot=49, instance=3, value=b"v", now_ms=0, applied=0, fx=fx)
    tables = [w.table for w in fx.writes if isinstance(w, Put)]
    assert tables == [META, LOG]  # the raised promise and the accepted value


def test_lease_promise_blocks_other_ballots_until_it_expires() -> None:
    acc, store = fresh()
    acc.grant_lease(33, now_ms=5000)
    assert not prepare(acc, store, 65, now=5000 + CFG.lease_ms - 1).ok  # type: ignore[attr-defined]
    assert prepare(acc, store, 33, now=5001).ok  # type: ignore[attr-defined]
    assert prepare(acc, store, 65, now=5000 + CFG.lease_ms).ok  # type: ignore[attr-defined]


def test_promise_reports_at_most_learn_chunk_max_entries() -> None:
    acc, store = fresh()
    for i in range(1, 11):
        assert accept(acc, store, 17, i, b"v%d" % i)
    p = prepare(acc, store, 33, now=5000)
    assert p.ok  # type: ignore[attr-defined]
    assert [e.instance for e in p.entries] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert p.covered_to == 5  # type: ignore[attr-defined]
    p2 = prepare(acc, store, 33, now=5000, start=9)
    assert [e.instance for e in p2.entries] == [9, 10]  # type: ignore[attr-defined]
    assert p2.covered_to is None  # type: ignore[attr-defined]


def test_prepare_below_the_truncated_log_is_refused_as_behind() -> None:
    acc, store = fresh()
    for i in range(1, 6):
        accept(acc, store, 17, i, b"v")
    fx = EffectsBuilder()
    acc.truncate_below(4, fx)
    store.apply(fx.writes)
    p = prepare(acc, store, 33, now=5000, start=2)
    assert not p.ok and p.behind and p.log_start == 4  # type: ignore[attr-defined]
    assert acc.promised == 17  # nothing promised to a candidate that cannot use it


def test_accept_of_a_different_value_for_a_chosen_instance_is_refused_without_a_promise() -> None:
    # Such an Accept can only come from below the ballot that chose the value (a deposed
    # master's delayed Accept): refused, nothing written, no promise or lease for its ballot.
    acc, store = fresh()
    fx = EffectsBuilder()
    acc.write_chosen(1, b"chosen", fx)
    store.apply(fx.writes)
    assert accept(acc, store, 33, 1, b"chosen")
    fx = EffectsBuilder()
    ok = acc.on_accept(ballot=49, instance=1, value=b"other", now_ms=0, applied=0, fx=fx)
    assert not ok
    assert fx.writes == []
    assert [e.kind for e in fx.trace] == ["accept_refused"]
    assert acc.promised == 33 and acc.lease_ballot == 33
    rec = acc.read(1)
    assert rec is not None and rec.value == b"chosen" and rec.chosen
