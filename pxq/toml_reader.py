"""Strict reading of TOML files: typed getters whose errors name the file and the key path,
and the refusal of unknown keys.

Both file formats of pxq read through this module: the cluster file (``pxq.config.parser``)
and scenario files (``sim.scenario``). Each format has its own exception, a subclass of
``TomlError`` passed in as ``error``, so that callers catch what they load, while the wording a
user sees is the same in both: ``file: key.path[2].name: reason``.

A ``TomlTable`` refuses keys it was not asked for, in one of two ways:

* ``allowed`` given: at once, before any value is read, so that a misspelt key is reported as
  unknown rather than the spelling it stands for as missing;
* ``allowed`` omitted: at ``done()``, against the keys read (or asked about with ``has``) so
  far. For tables whose keys depend on other values (a fault's keys on its action).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar, overload

T = TypeVar("T")
S = TypeVar("S", bound=str)

MISSING: Final[Any] = object()
"""The default of a getter whose key is required."""


class TomlError(Exception):
    """A file is unreadable or invalid: ``file``, the dotted ``key_path`` and the ``reason``."""

    FILE_KEY: ClassVar[str] = ""
    """The key path of errors about the whole file (unreadable, not TOML)."""

    def __init__(self, file: str, key_path: str, reason: str) -> None:
        super().__init__(f"{file}: {key_path}: {reason}" if key_path else f"{file}: {reason}")
        self.file = file
        self.key_path = key_path
        self.reason = reason


def read_text(path: str | Path, *, error: type[TomlError]) -> str:
    """The text of the file at ``path``; unreadable or non-UTF-8 files raise ``error``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), error.FILE_KEY, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(str(path), error.FILE_KEY, f"not UTF-8: {exc}") from None


def parse(
    text: str, *, file: str, error: type[TomlError], allowed: Sequence[str] | None = None
) -> TomlTable:
    """The document ``text`` as its root table; invalid TOML raises ``error``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(file, error.FILE_KEY, f"invalid TOML: {exc}") from None
    return TomlTable(data, "", file=file, error=error, allowed=allowed)


def join(path: str, key: str) -> str:
    """The key path of ``key`` inside the table at ``path`` (``""``: the table itself)."""
    return f"{path}.{key}" if path and key else path or key


def kind_of(value: object) -> str:
    """What a TOML value is, in TOML's words (``"a string"``, ``"a table"``)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


_INDEX = re.compile(r"\[\d+\]")


class TomlTable:
    """A TOML table being read. Getters take the key, a default (``MISSING``: required) and
    bounds; every error names ``file`` and the key path."""

    def __init__(
        self,
        data: object,
        path: str,
        *,
        file: str,
        error: type[TomlError],
        allowed: Sequence[str] | None = None,
    ) -> None:
        self.path = path
        self.file = file
        self.error_type = error
        if not isinstance(data, dict):
            raise error(file, path, f"expected a table, got {kind_of(data)}")
        self.data: dict[str, object] = data
        self.seen: set[str] = set()
        if allowed is not None:
            for key in sorted(data):
                if key not in allowed:
                    raise self.error(key, f"unknown key (allowed: {', '.join(allowed)})")

    # -- errors ---------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The key path of ``name`` in this table (``name`` may carry an index: ``queues[2]``)."""
        return join(self.path, name)

    def error(self, name: str, reason: str) -> TomlError:
        """The error about key ``name`` of this table (``""``: the table itself)."""
        return self.error_type(self.file, self.key(name), reason)

    # -- keys -----------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        """Whether the table has ``name``; asking makes it a known key."""
        self.seen.add(name)
        return name in self.data

    def raw(self, name: str, default: Any = MISSING) -> Any:
        """The value of ``name`` as TOML gave it, unchecked."""
        self.seen.add(name)
        if name not in self.data:
            if default is MISSING:
                raise self.error(name, "missing")
            return default
        return self.data[name]

    def done(self) -> None:
        """Refuse the keys nothing asked for (for a table read without ``allowed``)."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown key (allowed: {known})")

    # -- scalars --------------------------------------------------------------------------------

    @overload
    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int: ...

    @overload
    def integer(
        self, name: str, default: T, *, lo: int | None = None, hi: int | None = None
    ) -> int | T: ...

    def integer(
        self, name: str, default: object = MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> object:
        """An integer within ``lo``..``hi``; an absent key gives ``default`` (unchecked)."""
        if name not in self.data and default is not MISSING:
            self.seen.add(name)
            return default
        v = self.raw(name)
        if type(v) is not int:
            raise self.error(name, f"expected an integer, got {kind_of(v)}")
        if lo is not None and v < lo:
            raise self.error(name, f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.error(name, f"must be <= {hi}, got {v}")
        return v

    def probability(self, name: str, default: float) -> float:
        """A number from 0 to 1 (an integer is taken as a float)."""
        v = self.raw(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(name, f"expected a number, got {kind_of(v)}")
        if not 0.0 <= float(v) <= 1.0:
            raise self.error(name, f"must be a probability between 0 and 1, got {v}")
        return float(v)

    @overload
    def string(self, name: str, *, nonempty: bool = False) -> str: ...

    @overload
    def string(self, name: str, default: T, *, nonempty: bool = False) -> str | T: ...

    def string(self, name: str, default: object = MISSING, *, nonempty: bool = False) -> object:
        """A string; an absent key gives ``default`` (unchecked)."""
        if name not in self.data and default is not MISSING:
            self.seen.add(name)
            return default
        v = self.raw(name)
        if not isinstance(v, str):
            raise self.error(name, f"expected a string, got {kind_of(v)}")
        if nonempty and not v:
            raise self.error(name, "must not be empty")
        return v

    def choice(self, name: str, choices: Sequence[S], default: S | None = None) -> S:
        """One of the strings ``choices`` (``default`` None: required)."""
        v = self.string(name) if default is None else self.string(name, default)
        for c in choices:
            if v == c:
                return c
        raise self.error(name, f"must be one of {', '.join(choices)}; got {v!r}")

    def boolean(self, name: str, default: bool) -> bool:
        v = self.raw(name, default)
        if type(v) is not bool:
            raise self.error(name, f"expected a boolean, got {kind_of(v)}")
        return v

    # -- arrays and tables ----------------------------------------------------------------------

    def array(self, name: str, default: list[object] | None = None) -> list[object]:
        """An array of any values (``default`` None: required)."""
        v = self.raw(name, MISSING if default is None else default)
        if not isinstance(v, list):
            raise self.error(name, f"expected an array, got {kind_of(v)}")
        return v

    def integers(self, name: str, *, lo: int | None = None) -> tuple[int, ...]:
        """An array of integers, each at least ``lo`` (absent: empty)."""
        out = []
        for i, v in enumerate(self.array(name, [])):
            if type(v) is not int:
                raise self.error(f"{name}[{i}]", f"expected an integer, got {kind_of(v)}")
            if lo is not None and v < lo:
                raise self.error(f"{name}[{i}]", f"must be >= {lo}, got {v}")
            out.append(v)
        return tuple(out)

    def strings(
        self, name: str, default: tuple[str, ...], choices: Sequence[str]
    ) -> tuple[str, ...]:
        """An array of strings, each one of ``choices``; absent: ``default``."""
        if name not in self.data:
            self.seen.add(name)
            return default
        out = []
        for i, item in enumerate(self.array(name)):
            if not isinstance(item, str) or item not in choices:
                raise self.error(
                    f"{name}[{i}]", f"must be one of {', '.join(choices)}; got {item!r}"
                )
            out.append(item)
        return tuple(out)

    def table(
        self, name: str, *, allowed: Sequence[str] | None = None, required: bool = False
    ) -> TomlTable:
        """The sub-table ``name`` (absent and not ``required``: an empty one)."""
        v = self.raw(name, MISSING if required else {})
        return TomlTable(v, self.key(name), file=self.file, error=self.error_type, allowed=allowed)

    def tables(
        self, name: str, *, allowed: Sequence[str] | None = None, required: bool = False
    ) -> list[TomlTable]:
        """The array of tables ``name`` (``[[name]]``; absent and not ``required``: none)."""
        v = self.raw(name, MISSING if required else [])
        if not isinstance(v, list):
            header = _INDEX.sub("", self.key(name))
            raise self.error(name, f"expected an array of tables ([[{header}]]), got {kind_of(v)}")
        return [
            TomlTable(
                t, self.key(f"{name}[{i}]"), file=self.file, error=self.error_type, allowed=allowed
            )
            for i, t in enumerate(v)
        ]
