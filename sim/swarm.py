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
