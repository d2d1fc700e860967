"""Positional msgpack arrays: the encoding of the store's and the lock service's commands.

A command is one msgpack array ``[op, field1, ...]`` (not a registered ``pxq.codec`` message:
smaller and faster to check). This module owns what both command modules share: packing the
array, unpacking a value into its fields with msgpack's own limits set tight (nothing but an
array of at most ``fields_max`` elements, no maps, no extension types), and the per-field
checks that give each decoded field exactly its declared type. Every failure is a
``CommandError``: a chosen value is applied on every replica, so a malformed one must become
an error result, never a crash.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

I64_MIN: Final = -(2**63)
U64_MAX: Final = 2**64 - 1


class CommandError(Exception):
    """A value is not a valid command."""


def pack(fields: list[Any]) -> bytes:
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


def unpack(value: bytes, fields_max: int) -> list[Any]:
    """The fields of a command array (at least the op), or ``CommandError``."""
    try:
        fields = msgpack.unpackb(
            value, raw=False, max_array_len=fields_max, max_map_len=0, max_ext_len=0
        )
    except Exception as exc:  # malformed input of any sort is a bad command
        raise CommandError(f"not a msgpack array: {type(exc).__name__}") from None
    if type(fields) is not list or not fields:
        raise CommandError("not a command array")
    return fields


def u64(v: object) -> int:
    if type(v) is not int or not 0 <= v <= U64_MAX:
        raise CommandError("expected an unsigned 64-bit integer")
    return v


def i64(v: object) -> int:
    if type(v) is not int or not I64_MIN <= v <= U64_MAX:
        raise CommandError("expected a 64-bit integer")
    return v


def opt_u64(v: object) -> int | None:
    return None if v is None else u64(v)


def text(v: object) -> str:
    if type(v) is not str:
        raise CommandError("expected a string")
    return v


def blob(v: object) -> bytes:
    if type(v) is not bytes:
        raise CommandError("expected a byte string")
    return v
