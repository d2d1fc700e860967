"""Durable record formats: round trips, and corruption is detected, never acted on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxq.effects import InvariantViolation, StorageCorruption
from pxq.paxos.ballot import BALLOT_MAX
from pxq.paxos.config import PaxosConfig
from pxq.paxos.records import (
    chain,
    decode_applied,
    decode_entry,
    decode_log,
    decode_u64,
    encode_applied,
    encode_entry,
    encode_log,
    encode_u64,
)


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(0, 2**63), st.integers(0, 2**63))
def test_entry_round_trip(values: list[bytes], ci: int, cc: int) -> None:
    e = decode_entry(encode_entry(values, ci, cc))
    assert list(e.values) == values and e.noop == (not values)
    assert (e.check_instance, e.check_checksum) == (ci, cc)


def test_malformed_entry_is_an_invariant_violation() -> None:
    raw = encode_entry([b"abc"], 1, 2)
    with pytest.raises(InvariantViolation):
        decode_entry(raw[:-1])
    with pytest.raises(InvariantViolation):
        decode_entry(raw + b"x")


@given(st.integers(0, 2**64 - 1), st.binary(max_size=100), st.booleans())
def test_log_record_round_trip(ballot: int, value: bytes, chosen: bool) -> None:
    raw = encode_log(ballot, value, chosen)
    if ballot > BALLOT_MAX:
        # Only a forged Accept could have written it: unusable, repaired like a corrupt record.
        with pytest.raises(StorageCorruption, match="above the largest"):
            decode_log(raw, b"key")
        return
    r = decode_log(raw)
    assert (r.ballot, r.value, r.chosen) == (ballot, value, chosen)


@given(st.binary(min_size=1, max_size=40), st.data())
def test_flipped_bit_in_a_record_raises_storage_corruption(
    value: bytes, data: st.DataObject
) -> None:
    cases: list[tuple[bytes, Callable[[bytes], object]]] = [
        (encode_log(7, value, False), decode_log),
        (encode_u64(99), lambda raw: decode_u64(raw, "promise")),
        (encode_applied(5, 6), decode_applied),
    ]
    for raw, decode in cases:
        i = data.draw(st.integers(0, len(raw) - 1))
        b = data.draw(st.integers(0, 7))
        bad = bytearray(raw)
        bad[i] ^= 1 << b
        with pytest.raises(StorageCorruption):
            decode(bytes(bad))


def test_chain_depends_on_history_and_value() -> None:
    assert chain(0, b"a") != chain(0, b"b")
    assert chain(chain(0, b"a"), b"b") != chain(chain(0, b"b"), b"a")


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("replicas", {"replicas": ("a", "b")}),
        ("replicas", {"replicas": ("a", "a", "b")}),
        ("replicas", {"replicas": ()}),
        ("heartbeat_ms", {"replicas": ("a",), "heartbeat_ms": 600}),
        ("pipeline_max", {"replicas": ("a",), "pipeline_max": 0}),
        ("value_bytes_max", {"replicas": ("a",), "value_bytes_max": 10, "batch_bytes_max": 5}),
        ("drift_ppm_max", {"replicas": ("a",), "drift_ppm_max": -1}),
    ],
)
def test_config_validation_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=field):
        PaxosConfig(**kwargs)  # type: ignore[arg-type]


def test_default_config_is_valid_and_lease_has_drift_margin() -> None:
    cfg = PaxosConfig(replicas=("a", "b", "c"))
    assert cfg.lease_effective_ms() == 1000 * 998 // 1000 - cfg.lease_margin_ms
    assert cfg.preferred(4) == "b"
