"""What every checker returns (``CheckResult``) and how it collects offenders (``Offenders``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

EXAMPLES_MAX: Final = 10
"""How many example offenders a result lists per kind; counts always cover all of them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The verdict of one checker.

    ``details`` is JSON-compatible (str keys; ints, strs, bools, None, lists and dicts): the
    counts the checker measured, and up to ``EXAMPLES_MAX`` example offenders per kind.
    """

    name: str
    ok: bool
    summary: str
    details: dict[str, object]

    def to_json(self) -> dict[str, object]:
        """A JSON-compatible dict: ``name``, ``ok``, ``summary`` and ``details``."""
        return {
            "name": self.name,
            "ok": self.ok,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass(slots=True)
class Offenders:
    """A count of offenders of one kind, with the first ``EXAMPLES_MAX`` kept as examples."""

    count: int = 0
    examples: list[object] = field(default_factory=list)

    def add(self, example: object) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(example)


def verdict(
    name: str,
    violations: Mapping[str, Offenders],
    *,
    passed: str,
    details: Mapping[str, object] | None = None,
) -> CheckResult:
    """Build a result that is ok iff every kind in ``violations`` is empty.

    ``details`` (counts and facts that are not violations) come first, then for every kind of
    violation its count under ``kind`` and its examples under ``kind + "-examples"``. The
    summary lists the non-empty kinds in the order given, or says ``passed``.
    """
    bad = [f"{offenders.count} {kind}" for kind, offenders in violations.items() if offenders.count]
    summary = f"{name}: FAILED, {', '.join(bad)}" if bad else f"{name}: ok, {passed}"
    out: dict[str, object] = dict(details or {})
    for kind, offenders in violations.items():
        out[kind] = offenders.count
        out[f"{kind}-examples"] = list(offenders.examples)
    return CheckResult(name=name, ok=not bad, summary=summary, details=out)
