"""Item headers: a small map of string names to string values that travels with an item from
the producer through the store (its row, retry levels and dead letters) to every consumer.

This module owns the limits and the one normal form. On the wire and in the store, headers
are ``Headers``: ``(name, value)`` pairs sorted by name, names unique, so equal maps have
equal encodings (the codec writes no maps). In a stored row they are a flat array
``[name1, value1, name2, value2, ...]`` (``pxq.store.records``). An item without headers is
stored exactly as before headers existed.

Limits (``headers_problem`` states each one it finds broken): at most ``HEADERS_MAX`` pairs,
a name of 1..``HEADER_NAME_BYTES_MAX`` UTF-8 bytes, a value of at most
``HEADER_VALUE_BYTES_MAX`` bytes, all names and values together at most
``HEADERS_BYTES_MAX``. Header bytes also count toward the store's ``item_bytes_max``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

HEADERS_MAX: Final = 16
"""Most header pairs on one item."""
HEADER_NAME_BYTES_MAX: Final = 64
HEADER_VALUE_BYTES_MAX: Final = 1024
HEADERS_BYTES_MAX: Final = 4096
"""All names and values of one item's headers together, in UTF-8 bytes."""

Headers: TypeAlias = tuple[tuple[str, str], ...]


def headers_size(headers: Headers) -> int:
    """UTF-8 bytes of every name and value (``headers`` in normal form, so encodable)."""
    return sum(len(n.encode("utf-8")) + len(v.encode("utf-8")) for n, v in headers)


def headers_problem(headers: Headers) -> str | None:
    """Why ``headers`` (pairs of str) is not a valid normal form, or None if it is."""
    if len(headers) > HEADERS_MAX:
        return f"{len(headers)} headers exceed the limit of {HEADERS_MAX}"
    total = 0
    previous: str | None = None
    for name, value in headers:
        try:
            n = len(name.encode("utf-8"))
            v = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"header {name!r}: names and values must be valid Unicode text"
        if not 1 <= n <= HEADER_NAME_BYTES_MAX:
            return f"header name {name!r}: must be 1..{HEADER_NAME_BYTES_MAX} bytes"
        if v > HEADER_VALUE_BYTES_MAX:
            return f"header {name!r}: value of {v} bytes exceeds {HEADER_VALUE_BYTES_MAX}"
        if previous is not None and name <= previous:
            return f"header names must be unique and sorted ({previous!r}, then {name!r})"
        previous = name
        total += n + v
    if total > HEADERS_BYTES_MAX:
        return f"headers of {total} bytes exceed {HEADERS_BYTES_MAX}"
    return None


def normal_headers(headers: Mapping[str, str] | None) -> Headers:
    """``headers`` in normal form; raises ``TypeError`` for a name or value that is not a str
    and ``ValueError`` (saying which limit) for one that breaks a limit."""
    if not headers:
        return ()
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers: expected a mapping of str to str, got {type(headers).__name__}")
    pairs = []
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str:
            raise TypeError(
                f"headers: names and values must be str, got {type(name).__name__} -> "
                f"{type(value).__name__}"
            )
        pairs.append((name, value))
    pairs.sort()
    normal = tuple(pairs)
    problem = headers_problem(normal)
    if problem is not None:
        raise ValueError(f"headers: {problem}")
    return normal


def flat_headers(headers: Headers) -> list[str]:
    """The flat ``[name1, value1, ...]`` array a stored row holds."""
    return [s for pair in headers for s in pair]


def pairs_of_flat(flat: list[str]) -> Headers:
    """The pairs of a flat array (of even length, checked by the caller)."""
    return tuple(zip(flat[0::2], flat[1::2], strict=True))
