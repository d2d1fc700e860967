"""msgspec A/B against the wire codec (issue 17): ``python -m sim.bench.codec``.

Measures, in one process and alternating between the contenders round after round, the CPU
time (``time.process_time``) per encode and per decode of the hot wire messages of the
enqueue path and of the read path:

* ``enqueue100``: a producer's ``Enqueue`` batch of 100 ``Item`` (8-byte key, 100-byte
  payload), what the client library sends per call batch;
* ``accept``: a Paxos ``Accept`` whose value is the instance value (an encoded ``Entry``) of
  the store command made of that batch;
* ``accepted``, ``heartbeat``: small flat messages (an acceptor's reply; the lease renewal);
* ``getok100``: a ``GetOk`` reply carrying 100 ``StoredItem``.

The contenders:

* ``A``: ``pxq.codec`` as shipped (generated per-class converters, msgpack's C packer and
  unpacker with per-object limits);
* ``B1``: the same converters with ``msgspec.msgpack`` (an ``Encoder`` and an untyped
  ``Decoder``) in place of ``msgpack.packb``/``unpackb`` (a drop-in: same wire bytes, checked);
* ``B2``: msgspec ``Struct`` classes mirroring those messages (``array_like=True``, the codec
  tag as the struct tag, ``frozen``), encoded and decoded typed, with msgspec's own strict
  type checks in C. This is the ceiling of a rewrite of the message classes, not a drop-in:
  its frame lacks the leading ``FORMAT_VERSION`` (``[tag, field1, ...]``, the codec's nested
  form; the bench checks it equals A's frame without that element), and its decode checks
  no depth limit and no frame size (none of these messages has a ``__post_init__`` rule;
  see ``docs/performance.md`` for what adopting it would take);
* ``msgpack_only``/``msgspec_only``: the packer or unpacker alone on the same frame (A's
  and B1's share of the work: the rest is the converters); ``msgpack_packer_only``: a reused
  ``msgpack.Packer`` (``packb`` builds one per call);
* ``A_no_headers`` (``enqueue100`` only): A on the same batch of an ``Item`` without its
  ``headers`` field: what the tuple field itself costs (both go through generated functions).

Prints one JSON object: per message and operation, the min and median µs per operation of
each contender over the rounds, and B's saving against A. The CPU count includes the
Python-level work around the codec call (the same for every contender) and nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgpack
import msgspec

from pxq import codec
from pxq.paxos.messages import Accept, Accepted, Heartbeat
from pxq.paxos.records import encode_entry
from pxq.store.commands import EnqueueCmd, encode_command
from pxq.store.messages import Enqueue, GetOk, Item, StoredItem
from pxq.store.records import pack_items

ITEMS = 100
PAYLOAD_BYTES = 100

# --------------------------------------------------------------------------------------------
# The messages


def _enqueue() -> Enqueue:
    return Enqueue(
        topic="bench",
        queue=3,
        producer="bench-client-1234",
        seq=1_000_017,
        items=tuple(
            Item(key=i.to_bytes(8, "big"), payload=bytes([i % 251]) * PAYLOAD_BYTES)
            for i in range(ITEMS)
        ),
    )


def _accept(batch: Enqueue) -> Accept:
    command = EnqueueCmd(
        producer=batch.producer,
        seq=batch.seq,
        topic=batch.topic,
        queue=batch.queue,
        wall_ms=1_781_000_000_000,
        items=pack_items([[it.key, it.payload, it.kind] for it in batch.items]),
    )
    value = encode_entry([encode_command(command)], 41_000, 2**63 + 12345)
    return Accept(group=0, ballot=(7 << 16) | 2, instance=41_003, value=value, commit=41_002)


def _get_ok() -> GetOk:
    return GetOk(
        topic="bench",
        group="readers",
        queue=3,
        items=tuple(
            StoredItem(
                offset=5_000_000 + i,
                enqueued_ms=1_781_000_000_000 + i,
                key=i.to_bytes(8, "big"),
                payload=bytes([i % 251]) * PAYLOAD_BYTES,
            )
            for i in range(ITEMS)
        ),
        next_cursor=5_000_100,
        committed=5_000_000,
        first_offset=4_000_000,
        end_offset=5_001_000,
        now_ms=1_781_000_000_500,
    )


def _messages() -> dict[str, object]:
    batch = _enqueue()
    return {
        "enqueue100": batch,
        "accept": _accept(batch),
        "accepted": Accepted(
            group=0, ballot=(7 << 16) | 2, instance=41_003, ok=True, promised=0, applied=41_001
        ),
        "heartbeat": Heartbeat(
            group=0, ballot=(7 << 16) | 2, seq=812, commit=41_002, applied=41_001, checksum=2**63
        ),
        "getok100": _get_ok(),
    }


# --------------------------------------------------------------------------------------------
# B1: the codec's converters over msgspec.msgpack


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


def b1_encode(msg: object) -> bytes:
    """``codec.encode`` (default limits) with msgspec's packer."""
    frame_bytes_max, depth_max = codec.FRAME_BYTES_MAX, codec.DEPTH_MAX
    # The same compiled-codec lookups as A's (a dict hit once compiled).
    converters = codec._CODECS.get(type(msg)) or codec._codec_for_class(type(msg))
    data = _ENCODER.encode(converters.encode_frame(msg, depth_max))
    if len(data) > frame_bytes_max:
        raise codec.CodecError("frame too large")
    return data


def b1_decode(data: bytes) -> object:
    """``codec.decode`` (default limits) with msgspec's unpacker; the checks the msgpack
    limits made are left to the converters (which refuse a map, an extension, a float)."""
    if len(data) > codec.FRAME_BYTES_MAX:
        raise codec.CodecError("frame too large")
    frame = _DECODER.decode(data)
    if type(frame) is not list or len(frame) < 2 or frame[0] != codec.FORMAT_VERSION:
        raise codec.CodecError("not a message frame")
    converters = codec._CODECS_BY_TAG.get(frame[1]) or codec._codec_for_class(
        codec.class_of(frame[1])
    )
    del frame[0]
    return converters.decode_message(frame, codec.DEPTH_MAX)


# --------------------------------------------------------------------------------------------
# B2: msgspec Structs, typed (the ceiling of a rewrite)


class SItem(msgspec.Struct, array_like=True, frozen=True, tag=64):
    key: bytes
    payload: bytes
    kind: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class SEnqueue(msgspec.Struct, array_like=True, frozen=True, tag=65):
    topic: str
    queue: int
    producer: str
    seq: int
    items: tuple[SItem, ...]
    after: int = 0


class SStoredItem(msgspec.Struct, array_like=True, frozen=True, tag=68):
    offset: int
    enqueued_ms: int
    key: bytes
    payload: bytes
    kind: str = ""
    attempt: int = 0
    not_before_ms: int = 0
    headers: tuple[tuple[str, str], ...] = ()


class SGetOk(msgspec.Struct, array_like=True, frozen=True, tag=69, kw_only=True):
    topic: str
    group: str
    queue: int
    items: tuple[SStoredItem, ...]
    next_cursor: int
    committed: int
    first_offset: int
    end_offset: int
    epoch: int = 0
    now_ms: int


class SAccept(msgspec.Struct, array_like=True, frozen=True, tag=4):
    group: int
    ballot: int
    instance: int
    value: bytes
    commit: int


class SAccepted(msgspec.Struct, array_like=True, frozen=True, tag=5):
    group: int
    ballot: int
    instance: int
    ok: bool
    promised: int
    applied: int


class SHeartbeat(msgspec.Struct, array_like=True, frozen=True, tag=6):
    group: int
    ballot: int
    seq: int
    commit: int
    applied: int
    checksum: int


_STRUCTS: dict[type, type[msgspec.Struct]] = {
    Item: SItem,
    Enqueue: SEnqueue,
    StoredItem: SStoredItem,
    GetOk: SGetOk,
    Accept: SAccept,
    Accepted: SAccepted,
    Heartbeat: SHeartbeat,
}
_B2_DECODER = msgspec.msgpack.Decoder(
    SItem | SEnqueue | SStoredItem | SGetOk | SAccept | SAccepted | SHeartbeat
)


def _to_struct(value: Any) -> Any:
    """The B2 struct mirroring a message (recursively), for the bench's inputs only."""
    if type(value) is tuple:
        return tuple(_to_struct(v) for v in value)
    struct = _STRUCTS.get(type(value))
    if struct is None:
        return value
    return struct(**{f: _to_struct(getattr(value, f)) for f in struct.__struct_fields__})


def _without_version(frame: bytes) -> bytes:
    """A's frame ``[FORMAT_VERSION, tag, ...]`` as the nested form ``[tag, ...]``."""
    values = msgpack.unpackb(frame, raw=False)
    data: bytes = msgpack.packb(values[1:], use_bin_type=True)
    return data


# --------------------------------------------------------------------------------------------
# A on an Item without its headers field: what the converters cost once a class is flat


@codec.message(1095)
@dataclass(frozen=True, slots=True, kw_only=True)
class FlatItem:
    """``Item`` without ``headers``: every field plain, so the codec's generated flat
    encoder and decoder apply to it (``Item`` takes the generic path for its tuple field)."""

    key: bytes
    payload: bytes
    kind: str = ""


@codec.message(1096)
@dataclass(frozen=True, slots=True, kw_only=True)
class FlatEnqueue:
    """``Enqueue`` of ``FlatItem``."""

    topic: str
    queue: int
    producer: str
    seq: int
    items: tuple[FlatItem, ...]
    after: int = 0


def _flat_enqueue(batch: Enqueue) -> FlatEnqueue:
    return FlatEnqueue(
        topic=batch.topic,
        queue=batch.queue,
        producer=batch.producer,
        seq=batch.seq,
        items=tuple(FlatItem(key=i.key, payload=i.payload, kind=i.kind) for i in batch.items),
    )


# --------------------------------------------------------------------------------------------
# Measurement


def _cpu_us_per_op(run: Callable[[], object], ops: int) -> float:
    start = time.process_time()
    for _ in range(ops):
        run()
    return (time.process_time() - start) / ops * 1e6


def measure(rounds: int = 11, budget_s: float = 0.05) -> dict[str, Any]:
    """Every case's CPU µs per operation, the contenders alternating within each round."""
    results: dict[str, Any] = {}
    identical: dict[str, bool] = {}
    for name, msg in _messages().items():
        frame_a = codec.encode(msg)
        frame_b1 = b1_encode(msg)
        struct = _to_struct(msg)
        frame_b2 = _ENCODER.encode(struct)
        identical[name] = frame_b1 == frame_a
        if frame_b2 != _without_version(frame_a):
            raise RuntimeError(f"{name}: the B2 struct does not mirror the message")
        if not (codec.decode(frame_a) == b1_decode(frame_a) == msg):
            raise RuntimeError(f"{name}: B1 does not decode what A encodes")
        if _B2_DECODER.decode(frame_b2) != struct:
            raise RuntimeError(f"{name}: B2 does not round-trip")
        converted = codec._codec_for_class(type(msg)).encode_frame(msg, codec.DEPTH_MAX)
        size = len(frame_a)
        cases: dict[str, dict[str, Callable[[], object]]] = {
            "encode": {
                "A": partial(codec.encode, msg),
                "B1": partial(b1_encode, msg),
                "B2": partial(_ENCODER.encode, struct),
                "msgpack_only": partial(msgpack.packb, converted, use_bin_type=True),
                "msgspec_only": partial(_ENCODER.encode, converted),
                # A Packer per case: with one Packer for the whole run, the 11 KB encodes of
                # the other contenders that follow took 3.4 µs instead of 0.3 (its kept buffer
                # changes the heap they allocate from).
                "msgpack_packer_only": partial(msgpack.Packer(use_bin_type=True).pack, converted),
            },
            "decode": {
                "A": partial(codec.decode, frame_a),
                "B1": partial(b1_decode, frame_a),
                "B2": partial(_B2_DECODER.decode, frame_b2),
                "msgpack_only": partial(
                    msgpack.unpackb,
                    frame_a,
                    raw=False,
                    max_str_len=size,
                    max_bin_len=size,
                    max_array_len=size,
                    max_map_len=0,
                    max_ext_len=0,
                ),
                "msgspec_only": partial(_DECODER.decode, frame_a),
            },
        }
        if type(msg) is Enqueue:
            flat = _flat_enqueue(msg)
            cases["encode"]["A_no_headers"] = partial(codec.encode, flat)
            cases["decode"]["A_no_headers"] = partial(codec.decode, codec.encode(flat))
        for op, contenders in cases.items():
            # Size a round so that A's share of it takes about budget_s of CPU.
            probe = _cpu_us_per_op(contenders["A"], 50)
            ops = max(50, int(budget_s * 1e6 / max(probe, 0.05)))
            samples: dict[str, list[float]] = {k: [] for k in contenders}
            for r in range(rounds):
                order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
                for key in order:
                    samples[key].append(_cpu_us_per_op(contenders[key], ops))
            row: dict[str, Any] = {"bytes": len(frame_a), "ops_per_round": ops}
            for key, values in samples.items():
                row[key] = {
                    "min_us": round(min(values), 3),
                    "median_us": round(statistics.median(values), 3),
                }
            for key in ("B1", "B2"):
                row[f"{key}_saving_pct"] = {
                    stat: round(100 * (1 - row[key][f"{stat}_us"] / row["A"][f"{stat}_us"]), 1)
                    for stat in ("min", "median")
                }
            results[f"{name}.{op}"] = row
    return {
        "type": "codec_ab",
        "python": platform.python_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "msgspec": msgspec.__version__,
        "rounds": rounds,
        "b1_bytes_identical": identical,
        "cases": results,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.bench.codec", description=__doc__)
    parser.add_argument("--rounds", type=int, default=11, help="rounds per case (default 11)")
    parser.add_argument(
        "--budget-s", type=float, default=0.05, help="CPU seconds of A per round (default 0.05)"
    )
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.budget_s)
    cases = result.pop("cases")
    # One line per case: the object stays JSON, and readable in a terminal.
    lines = [f'"{name}": {json.dumps(row)}' for name, row in cases.items()]
    print(json.dumps(result)[:-1] + ', "cases": {\n' + ",\n".join(lines) + "\n}}")


if __name__ == "__main__":
    main()
