"""Framing and connection-level parsing: round trips at any read boundary, and hostile input.

Behaviours checked: frames survive being split at arbitrary points and merged many per read;
oversized and empty lengths are refused before buffering; random and mutated byte streams
fed to an inbound connection (and to the client's protocol) never raise, only close the
connection, and deliver nothing to the node but well-typed messages of the right kind.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from net.client.connection import _ClientProtocol
from net.config import NetConfig
from net.errors import ConnectionLost, FrameError
from net.node.transport import ConnKind, InboundConnection
from net.wire.envelope import ENVELOPES, Call, CallReply, ClientHello, Hello, Login, Welcome
from net.wire.framing import HEADER, FrameDecoder, encode_frame, frame
from pxq import codec
from tests.test_net_support import Blob, Count, Incr, Ping

LIMIT = 4096
CONFIG = NetConfig(frame_bytes_max=LIMIT, first_frame_timeout_ms=60_000)

_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_messages = st.one_of(
    st.builds(Hello, node=st.text(max_size=8), cluster=st.text(max_size=8)),
    st.builds(Call, req_id=_ints, request=st.binary(max_size=64)),
    st.builds(CallReply, req_id=_ints, response=st.binary(max_size=64)),
    st.builds(Ping, n=_ints),
    st.builds(Blob, data=st.binary(max_size=300)),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(_messages, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_frames_round_trip_whatever_the_read_boundaries(
    msgs: list[object], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(m, frame_bytes_max=LIMIT) for m in msgs)
    decoder = FrameDecoder(frame_bytes_max=LIMIT)
    payloads: list[bytes] = []
    for chunk in _split(stream, cuts):
        payloads.extend(decoder.feed(chunk))
    assert [codec.decode(p) for p in payloads] == msgs
    assert decoder.buffered == 0


def test_partial_header_and_payload_wait_for_more_bytes() -> None:
    data = encode_frame(Ping(n=5), frame_bytes_max=LIMIT)
    decoder = FrameDecoder(frame_bytes_max=LIMIT)
    assert decoder.feed(data[:2]) == []
    assert decoder.feed(data[2:5]) == []
    assert decoder.buffered == 5
    assert decoder.feed(data[5:] + data) == [data[4:], data[4:]]
    assert decoder.buffered == 0


@pytest.mark.parametrize("size", [0, LIMIT + 1, 2**32 - 1])
def test_empty_and_oversized_lengths_are_refused_before_buffering(size: int) -> None:
    decoder = FrameDecoder(frame_bytes_max=LIMIT)
    ok = frame(b"\x01")
    with pytest.raises(FrameError):
        decoder.feed(ok + HEADER.pack(size) + b"abc")
    assert decoder.buffered == 0


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(frame_bytes_max=LIMIT)
    assert decoder.feed(frame(b"a" * LIMIT)) == [b"a" * LIMIT]


# -- an inbound connection under hostile input --------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


@dataclass
class FakeHost:
    """Records what a connection hands to the node; accepts peer "p1" of cluster "c"."""

    messages: list[tuple[str, object]] = field(default_factory=list)
    calls: list[tuple[int, object]] = field(default_factory=list)
    closed: int = 0

    def connection_opened(self, conn: InboundConnection) -> bool:
        return True

    def accept_hello(self, conn: InboundConnection, hello: Hello) -> str | None:
        return None if (hello.cluster, hello.node) == ("c", "p1") else "unknown"

    def accept_login(self, conn: InboundConnection, login: Login) -> str | None:
        return "no logins"

    def accept_client(self, conn: InboundConnection, hello: ClientHello) -> Welcome:
        error = "" if hello.cluster == "c" else "another cluster"
        return Welcome(node="p0", cluster="c", cluster_id="", error=error)

    def peer_message(self, src: str, msg: object) -> None:
        self.messages.append((src, msg))

    def client_call(self, conn: InboundConnection, req_id: int, request: object) -> None:
        self.calls.append((req_id, request))

    def connection_closed(self, conn: InboundConnection) -> None:
        self.closed += 1


def _well_typed(msg: object) -> bool:
    """Re-encoding checks every field against its declared type."""
    try:
        return codec.decode(codec.encode(msg)) == msg
    except codec.CodecError:
        return False


def feed(chunks: list[bytes]) -> tuple[FakeHost, InboundConnection, FakeTransport]:
    async def run() -> tuple[FakeHost, InboundConnection, FakeTransport]:
        host = FakeHost()
        conn = InboundConnection(host, CONFIG)
        transport = FakeTransport()
        conn.connection_made(transport)
        for chunk in chunks:
            conn.data_received(chunk)  # must never raise
        if not conn.closed:
            conn.close("test over", level=logging.DEBUG)
        conn.connection_lost(None)  # what asyncio does after close()
        return host, conn, transport

    return asyncio.run(run())


def _check_delivered(host: FakeHost) -> None:
    for src, msg in host.messages:
        assert src == "p1"
        assert type(msg) not in ENVELOPES
        assert _well_typed(msg)
    for _, request in host.calls:
        assert type(request) not in ENVELOPES
        assert _well_typed(request)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_random_bytes_close_the_connection_and_deliver_nothing(
    data: bytes, cuts: list[int]
) -> None:
    host, _, transport = feed(_split(data, cuts))
    assert host.messages == [] and host.calls == []
    assert transport.written == []
    assert host.closed == 1


def _valid_peer_stream() -> bytes:
    msgs: list[object] = [Hello(node="p1", cluster="c"), Ping(n=1), Blob(data=b"abc"), Ping(n=2)]
    return b"".join(encode_frame(m, frame_bytes_max=LIMIT) for m in msgs)


CLIENT_HELLO = ClientHello(cluster="c", cluster_id="", fingerprint="")


def _valid_client_stream() -> bytes:
    calls = [Call(req_id=i, request=codec.encode(Incr(by=i))) for i in range(3)]
    return b"".join(encode_frame(c, frame_bytes_max=LIMIT) for c in [CLIENT_HELLO, *calls])


_mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(0, 10_000),
    st.integers(1, 255),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for kind, pos, value in mutations:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= value
        elif kind == "insert":
            b.insert(i, value)
        elif kind == "delete":
            del b[i]
        else:
            del b[i:]
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(["peer", "client"]),
    mutations=st.lists(_mutation, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_mutated_streams_deliver_only_well_typed_messages(
    which: str, mutations: list[tuple[str, int, int]], cuts: list[int]
) -> None:
    original = _valid_peer_stream() if which == "peer" else _valid_client_stream()
    host, _, _ = feed(_split(_mutate(original, mutations), cuts))
    _check_delivered(host)
    if which == "peer":
        assert host.calls == []
    else:
        assert host.messages == []


def test_valid_streams_are_delivered_in_order() -> None:
    host, _, _ = feed([_valid_peer_stream()])
    assert host.messages == [("p1", Ping(n=1)), ("p1", Blob(data=b"abc")), ("p1", Ping(n=2))]
    host, _, _ = feed([_valid_client_stream()])
    assert host.calls == [(0, Incr(by=0)), (1, Incr(by=1)), (2, Incr(by=2))]


def _frames(*msgs: object) -> bytes:
    return b"".join(encode_frame(m, frame_bytes_max=LIMIT) for m in msgs)


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (_frames(Ping(n=1)), "first frame is Ping"),
        (_frames(CallReply(req_id=1, response=b"")), "first frame is CallReply"),
        (_frames(Hello(node="p2", cluster="c")), "Hello refused"),
        (_frames(Hello(node="p1", cluster="other")), "Hello refused"),
        (_frames(Hello(node="p1", cluster="c"), Call(req_id=1, request=b"")), "Call on the peer"),
        (_frames(Hello(node="p1", cluster="c"), Hello(node="p1", cluster="c")), "Hello on the"),
        (_frames(Call(req_id=1, request=codec.encode(Ping(n=1)))), "first frame is Call"),
        (
            _frames(ClientHello(cluster="x", cluster_id="", fingerprint="")),
            "client refused: another cluster",
        ),
        (
            _frames(CLIENT_HELLO, Call(req_id=1, request=codec.encode(Ping(n=1))), Ping(n=2)),
            "only Call",
        ),
        (_frames(CLIENT_HELLO, Call(req_id=1, request=b"\x93\x01")), "undecodable request"),
        (
            _frames(
                CLIENT_HELLO, Call(req_id=1, request=codec.encode(Hello(node="p1", cluster="c")))
            ),
            "nests an envelope",
        ),
        (frame(b"\x93\x01\x18\x2a"), "undecodable frame"),  # [1, 24, 42]: unknown tag 24
        (frame(b"\xc1"), "undecodable frame"),
        (HEADER.pack(LIMIT + 1), "bad frame"),
    ],
)
def test_protocol_violations_close_with_a_reason(stream: bytes, reason: str) -> None:
    host, conn, _ = feed([stream])
    assert conn.close_reason is not None and reason in conn.close_reason
    _check_delivered(host)


def test_first_frame_timeout_closes_a_silent_connection() -> None:
    async def run() -> InboundConnection:
        conn = InboundConnection(FakeHost(), NetConfig(first_frame_timeout_ms=10))
        conn.connection_made(FakeTransport())
        conn.data_received(b"\x00\x00")  # a trickle that never completes a frame
        await asyncio.sleep(0.05)
        return conn

    conn = asyncio.run(run())
    assert conn.kind is ConnKind.CLOSED
    assert conn.close_reason is not None and "no Hello or ClientHello" in conn.close_reason


# -- the client's side ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 1000), max_size=4))
def test_client_protocol_fails_cleanly_on_garbage(data: bytes, cuts: list[int]) -> None:
    async def run() -> None:
        protocol = _ClientProtocol(CONFIG)
        transport = FakeTransport()
        protocol.connection_made(transport)
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        protocol.pending[1] = fut
        for chunk in _split(data, cuts):
            protocol.data_received(chunk)
        if protocol.closed_reason is not None:
            assert transport.closed
            assert isinstance(fut.exception(), ConnectionLost)
        elif fut.done():  # garbage that happens to be a valid reply to call 1
            assert _well_typed(fut.result())
        else:
            assert not transport.closed

    asyncio.run(run())


def test_client_protocol_matches_replies_by_req_id() -> None:
    async def run() -> tuple[object, object]:
        protocol = _ClientProtocol(CONFIG)
        protocol.connection_made(FakeTransport())
        loop = asyncio.get_running_loop()
        a: asyncio.Future[object] = loop.create_future()
        b: asyncio.Future[object] = loop.create_future()
        protocol.pending.update({1: a, 2: b})
        protocol.data_received(
            _frames(
                CallReply(req_id=2, response=codec.encode(Count(n=20))),
                CallReply(req_id=9, response=codec.encode(Count(n=90))),  # late: ignored
                CallReply(req_id=1, response=codec.encode(Count(n=10))),
            )
        )
        return a.result(), b.result()

    assert asyncio.run(run()) == (Count(n=10), Count(n=20))
