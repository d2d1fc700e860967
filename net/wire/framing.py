"""Length-prefixed frames: a 4-byte big-endian payload length, then ``codec.encode`` bytes.

This module owns the byte-level wire format and nothing else: ``frame``/``encode_frame``
build frames, ``FrameDecoder`` cuts a byte stream into frame payloads whatever the read
boundaries are (partial headers, partial payloads, many frames per read), and refuses a
length of zero or above the configured maximum before buffering anything for it.
``decode_payload`` turns a payload back into a message (``CodecError`` for anything else).
"""

from __future__ import annotations

import struct
from typing import Final

from net.errors import FrameError
from pxq import codec

HEADER: Final = struct.Struct(">I")
HEADER_BYTES: Final = HEADER.size


def frame(payload: bytes) -> bytes:
    """The frame carrying ``payload``."""
    return HEADER.pack(len(payload)) + payload


def encode_frame(msg: object, *, frame_bytes_max: int) -> bytes:
    """The frame of a registered message; ``CodecError`` if it cannot be encoded within
    ``frame_bytes_max`` payload bytes."""
    payload = codec.encode(msg, frame_bytes_max=frame_bytes_max)
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes, *, frame_bytes_max: int) -> object:
    """The message in a frame payload; ``CodecError`` (only) if there is none."""
    return codec.decode(payload, frame_bytes_max=frame_bytes_max)


class FrameDecoder:
    """Incremental frame splitter for one connection.

    ``feed`` returns the payloads completed by the new bytes, in order. After it raised
    ``FrameError`` the stream is out of sync for good and the connection must be closed.
    Memory held is at most one incomplete frame (``frame_bytes_max`` plus the header).
    """

    __slots__ = ("_buffer", "_frame_bytes_max")

    def __init__(self, *, frame_bytes_max: int) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            source = data  # the common case: whole frames, parsed without copying the read
        frames: list[bytes] = []
        limit = self._frame_bytes_max
        size_total = len(source)
        pos = 0
        unpack_from = HEADER.unpack_from
        bad_size: int | None = None
        with memoryview(source) as view:
            while size_total - pos >= HEADER_BYTES:
                (size,) = unpack_from(source, pos)
                if size > limit or size == 0:
                    bad_size = size
                    break
                end = pos + HEADER_BYTES + size
                if end > size_total:
                    break
                frames.append(bytes(view[pos + HEADER_BYTES : end]))
                pos = end
            # Keep the tail of an incomplete frame (copied, as ``data`` is not ours).
            rest = bytes(view[pos:]) if source is not buffer and pos < size_total else None
        if bad_size is not None:  # raised outside the view: a viewed bytearray cannot shrink
            buffer.clear()
            what = "an empty frame" if bad_size == 0 else f"a frame of {bad_size} bytes"
            raise FrameError(f"{what} (the limit is {limit} bytes)")
        if source is buffer:
            del buffer[:pos]
        elif rest is not None:
            buffer += rest
        return frames
