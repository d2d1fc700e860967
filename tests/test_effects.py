"""The driver contract's helpers behave as documented."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pxq.effects import NO_EFFECTS, EffectsBuilder, Put, Send, from_u64, u64


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_u64_keys_sort_bytewise_in_numeric_order(a: int, b: int) -> None:
    assert from_u64(u64(a)) == a
    assert (u64(a) < u64(b)) == (a < b)


def test_builder_keeps_order_and_freezes() -> None:
    fx = EffectsBuilder()
    assert fx.build() is NO_EFFECTS
    fx.put("t", b"k", b"v")
    fx.send("n1", "hello")
    fx.event("chosen", instance=3, group=0)
    built = fx.build()
    assert built.writes == (Put(table="t", key=b"k", value=b"v"),)
    assert built.sends == (Send(dst="n1", msg="hello"),)
    assert built.trace[0].fields == (("group", 0), ("instance", 3))


def test_split_early_separates_what_may_leave_at_once() -> None:
    from pxq.effects import Effects, Reply, Send

    a, b = Send(dst="n1", msg=1, early=True), Send(dst="n2", msg=2)
    r = Reply(call_id=1, response=3)
    assert Effects(sends=(a, b), replies=(r,)).split_early() == ((a,), (), (b,), (r,))
    assert Effects(sends=(b,), replies=(r,), replies_early=True).split_early() == (
        (),
        (r,),
        (b,),
        (),
    )
