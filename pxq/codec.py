"""Wire codec: msgpack encoding of the message unions, with a tag per class and size limits.

Every message that crosses a process boundary is a frozen, slotted, keyword-only dataclass
registered here with ``@message(tag)``. Tags are small integers, unique across pxq; ranges
are reserved per package (see ``TAG_RANGES``). Field types are limited to ``int``, ``bool``,
``str``, ``bytes``, ``None``, ``tuple[T, ...]``, unions of those (``X | None``), and other
registered message classes.

(The encoder and decoder are completed by the codec work item; the registry below is the
interface other packages rely on.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TAG_RANGES: dict[str, range] = {
    "paxos": range(1, 64),
    "store": range(64, 128),
    "lock": range(128, 192),
    "scheduler": range(192, 224),
    "client": range(224, 256),
    "tests": range(1000, 1100),
}
"""Which tags each package may use; a registration outside every range is rejected."""

_BY_TAG: dict[int, type] = {}
_BY_CLASS: dict[type, int] = {}


class CodecError(Exception):
    """A byte string is not a valid encoded message (or a message cannot be encoded)."""


def message(tag: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a message dataclass under ``tag``."""

    def register(cls: type[T]) -> type[T]:
        if not any(tag in r for r in TAG_RANGES.values()):
            raise ValueError(f"tag {tag} of {cls.__qualname__} is outside every reserved range")
        other = _BY_TAG.get(tag)
        if other is not None and other is not cls:
            raise ValueError(
                f"tag {tag} of {cls.__qualname__} is already used by {other.__qualname__}"
            )
        _BY_TAG[tag] = cls
        _BY_CLASS[cls] = tag
        return cls

    return register


def tag_of(cls: type) -> int:
    """The tag a message class was registered under."""
    try:
        return _BY_CLASS[cls]
    except KeyError:
        raise CodecError(f"{cls.__qualname__} is not a registered message") from None


def class_of(tag: int) -> type:
    """The message class registered under ``tag``."""
    try:
        return _BY_TAG[tag]
    except KeyError:
        raise CodecError(f"unknown message tag {tag}") from None
