"""The msgspec A/B benchmark (``sim.bench.codec``) measures what it claims to.

Its drop-in contender (B1) is msgspec's packer and unpacker under the codec's converters;
the claim that this changes no wire byte is checked here over every value shape the
converters hand to the packer (64-bit ints at their bounds, bools, None, any text, bytes,
nested arrays), and on the benchmark's own messages, as is its typed ceiling (B2) mirroring
them.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.bench import codec as bench

_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 127, 128, -32, -33, 255, 256, 2**16, 2**32, 2**63 - 1, -(2**31)]),
    st.booleans(),
    st.none(),
    st.text(),
    st.text(min_size=31, max_size=300),  # across the fixstr / str8 / str16 boundaries
    st.binary(),
    st.binary(min_size=250, max_size=20_000),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=20) | st.lists(inner, max_size=5).map(tuple),
    max_leaves=60,
)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_msgspec_packs_and_unpacks_the_bytes_msgpack_does(value: Any) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    assert msgspec.msgpack.encode(value) == packed
    assert msgspec.msgpack.decode(packed) == msgpack.unpackb(packed, raw=False)


def test_the_benchmark_runs_and_its_drop_in_keeps_the_wire_bytes() -> None:
    result = bench.measure(rounds=1, budget_s=0.0001)
    assert result["b1_bytes_identical"] == {
        "enqueue100": True,
        "accept": True,
        "accepted": True,
        "heartbeat": True,
        "getok100": True,
    }
    for name, row in result["cases"].items():
        assert set(row) >= {"A", "B1", "B2", "msgpack_only", "msgspec_only"}, name
        assert ("A_no_headers" in row) == name.startswith("enqueue100."), name
        assert row["A"]["min_us"] > 0, name
