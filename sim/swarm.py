"""Swarms: one scenario over a range of seeds, in parallel worker processes.

Each seed is an independent run; with ``[random_faults] enabled = true`` the seed also picks
which fault kinds are on and how often they fire (swarm testing, after TigerBeetle's VOPR).
A failing seed is reported with the exact command that reproduces it. A swarm also counts,
per random fault kind, how many faults fired and in how many seeds (``fire_counts``): a kind
the file enables that never fired was not tested.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from sim import runner, scenario


@dataclass(frozen=True, slots=True)
class SeedOutcome:
    seed: int
    ok: bool
    trace_digest: str
    wall_s: float
    sim_time_ms: int
    failed_checks: tuple[str, ...]
    repro: str
    error: str | None = None
    fired: tuple[tuple[str, int], ...] = ()
    """Random faults that applied in this seed, by kind."""

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "trace_digest": self.trace_digest,
            "wall_s": round(self.wall_s, 3),
            "sim_time_ms": self.sim_time_ms,
            "failed_checks": list(self.failed_checks),
            "repro": self.repro,
            "error": self.error,
            "fired": dict(self.fired),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FireCount:
    """One random fault kind over a swarm: faults fired, and seeds in which any fired."""

    faults: int
    seeds: int


def fire_counts(kinds: tuple[str, ...], outcomes: list[SeedOutcome]) -> dict[str, FireCount]:
    """Per kind of ``kinds`` (the file's enabled kinds, in its order), the faults fired over
    ``outcomes`` and the seeds that fired any."""
    faults = dict.fromkeys(kinds, 0)
    seeds = dict.fromkeys(kinds, 0)
    for out in outcomes:
        for kind, n in out.fired:
            faults[kind] = faults.get(kind, 0) + n
            seeds[kind] = seeds.get(kind, 0) + (n > 0)
    return {k: FireCount(faults=faults[k], seeds=seeds[k]) for k in faults}


def run_seed(path: str, seed: int) -> SeedOutcome:
    """Run one seed of the scenario at ``path`` (in a worker process)."""
    scn = scenario.load(path)
    repro = f"pxq sim run {path} --seed {seed}"
    try:
        result = runner.run(scn, seed)
    except Exception as exc:  # a crash of the simulator itself is a failure of that seed
        return SeedOutcome(
            seed, False, "", 0.0, 0, ("exception",), repro, f"{type(exc).__name__}: {exc}"
        )
    failed = tuple(sorted(name for name, c in result.checks.items() if not c.ok))
    fired = result.stats["random_faults"]["fired"]
    return SeedOutcome(
        seed,
        result.ok,
        result.trace_digest,
        result.wall_s,
        result.sim_time_ms,
        failed,
        repro,
        fired=tuple(sorted(fired.items())),
    )


def run_swarm(
    path: str, seeds: Sequence[int], jobs: int, on_done: Callable[[SeedOutcome], None] | None = None
) -> list[SeedOutcome]:
    """Run every seed; return the outcomes in seed order."""
    outcomes: list[SeedOutcome] = []
    if jobs <= 1:
        for seed in seeds:
            out = run_seed(path, seed)
            outcomes.append(out)
            if on_done is not None:
                on_done(out)
    else:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            pending: set[Future[SeedOutcome]] = set()
            todo: Iterator[int] = iter(seeds)
            for seed in todo:
                pending.add(pool.submit(run_seed, path, seed))
                if len(pending) >= jobs * 2:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    out = fut.result()
                    outcomes.append(out)
                    if on_done is not None:
                        on_done(out)
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.add(pool.submit(run_seed, path, nxt))
    outcomes.sort(key=lambda o: o.seed)
    return outcomes


def parse_seeds(text: str) -> range:
    """``"A-B"`` (inclusive) or a single seed ``"N"``."""
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(text)
    except ValueError:
        raise ValueError(f"seeds must be A-B or N with integers, got {text!r}") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"seeds range {text!r} is empty or negative")
    return range(lo, hi + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmTotal:
    """Several swarm reports of one scenario (``pxq sim swarm --json``) summed."""

    scenario: str
    seeds: tuple[tuple[int, int], ...]
    """The seed ranges covered, merged where adjacent, ascending."""
    runs: int
    failed: tuple[int, ...]
    wall_s: float
    sim_time_ms: int
    fired: dict[str, FireCount]
    """Per random fault kind: faults fired, and seeds in which any fired."""

    @property
    def never_fired(self) -> tuple[str, ...]:
        return tuple(k for k, c in self.fired.items() if c.faults == 0)


def sum_reports(reports: Sequence[tuple[str, dict[str, Any]]]) -> list[SwarmTotal]:
    """Sum swarm reports (each ``(name, the JSON object)``; ``name`` says where it came from
    in errors), per scenario in first-seen order.

    A report's seed range is its ``seeds`` field ``[first, last]``, else the ``-A-B`` that
    ends its name (before ``.json``), as chunked runs name their files. Raises ``ValueError``
    naming the report for a missing or malformed field, a range that does not match the
    report's run count, or two reports of one scenario whose ranges overlap (a chunk counted
    twice).
    """
    totals: dict[str, list[tuple[str, tuple[int, int], dict[str, Any]]]] = {}
    for name, report in reports:
        try:
            scn = report["scenario"]
            runs = report["runs"]
            if not isinstance(scn, str) or not isinstance(runs, int):
                raise TypeError("scenario or runs has the wrong type")
            first, last = _report_seeds(name, report)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{name}: not a swarm report: {exc}") from None
        if last - first + 1 != runs:
            raise ValueError(f"{name}: seeds {first}-{last} but {runs} runs")
        totals.setdefault(scn, []).append((name, (first, last), report))
    out: list[SwarmTotal] = []
    for scn, parts in totals.items():
        parts.sort(key=lambda p: p[1])
        ranges: list[tuple[int, int]] = []
        for (name, (lo, hi), _), prev in zip(parts, [None, *parts[:-1]], strict=True):
            if prev is not None and lo <= prev[1][1]:
                raise ValueError(
                    f"{name}: seeds {lo}-{hi} overlap {prev[0]} ({prev[1][0]}-{prev[1][1]})"
                )
            if ranges and lo == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
        faults: dict[str, int] = {}
        seeds: dict[str, int] = {}
        failed: list[int] = []
        for name, _, report in parts:
            try:
                for kind, n in report["fired"].items():
                    faults[kind] = faults.get(kind, 0) + int(n)
                    seeds[kind] = seeds.get(kind, 0) + int(report["fired_seeds"][kind])
                failed += [int(s) for s in report["failed"]]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{name}: not a swarm report: {exc!r}") from None
        out.append(
            SwarmTotal(
                scenario=scn,
                seeds=tuple(ranges),
                runs=sum(p[2]["runs"] for p in parts),
                failed=tuple(sorted(failed)),
                wall_s=round(sum(float(p[2].get("wall_s", 0.0)) for p in parts), 2),
                sim_time_ms=sum(int(p[2].get("sim_time_ms", 0)) for p in parts),
                fired={k: FireCount(faults=faults[k], seeds=seeds[k]) for k in faults},
            )
        )
    return out


def _report_seeds(name: str, report: dict[str, Any]) -> tuple[int, int]:
    seeds = report.get("seeds")
    if seeds is not None:
        first, last = seeds
        if not isinstance(first, int) or not isinstance(last, int):
            raise TypeError("seeds must be two integers")
        return first, last
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    parts = stem.rsplit("-", 2)
    if len(parts) != 3:
        raise ValueError("no seeds field, and the name does not end with -A-B")
    return int(parts[1]), int(parts[2])


def totals_table(totals: Sequence[SwarmTotal]) -> str:
    """A Markdown table: a column per scenario; rows for the seeds run, the failed seeds and
    each fault kind as ``faults (seeds)`` (blank where the scenario does not enable it)."""
    kinds = sorted({k for t in totals for k in t.fired})
    head = "| | " + " | ".join(f"`{t.scenario}`" for t in totals) + " |"
    rows = [head, "|---" * (len(totals) + 1) + "|"]
    rows.append("| seeds run | " + " | ".join(f"{t.runs:,}" for t in totals) + " |")
    rows.append(
        "| failed | "
        + " | ".join(", ".join(map(str, t.failed)) if t.failed else "0" for t in totals)
        + " |"
    )
    for kind in kinds:
        cells = []
        for t in totals:
            c = t.fired.get(kind)
            cells.append("" if c is None else f"{c.faults:,} ({c.seeds:,})")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
