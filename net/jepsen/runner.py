"""One ``pxq test`` run, from the cluster's setup to the verdict.

``run_test(target, options)``:

1. ``target.setup()``: the cluster runs and every Paxos group has a master;
2. the workloads start, and the nemesis carries out its schedule (``net.jepsen.nemesis``, drawn
   from the seed) for ``time_limit_s``;
3. the final heal (every node running, resumed, clocks back, network healed);
4. recovery, bounded by ``recovery_timeout_s``: every group has a master again and every
   workload completed an operation ``ok`` after the heal;
5. the workloads stop invoking, then their final reads (the queue's drain and store reads,
   the lock keys read through the log);
6. the workloads disconnect and the target is torn down, whatever happened before;
7. the checkers: each workload's operations (with the nemesis's) with its ``pxq check`` model
   (``pxq.check.models``), plus ``recovery`` (step 4 in time) and ``nemesis`` (every action
   done: a node that does not start again fails the run).

Verdict: ``invalid`` if a check failed, else ``unknown`` if a linearizability search ran out
of its budget (never reported valid), else ``valid``. The run directory (``finish_run_dir``,
the one place it is completed) holds ``history.jsonl`` (written as the run goes), the
schedule, ``results.json`` (options, schedule, counts, recovery times, every check) and
``summary.txt`` (what ``pxq test`` prints); the target's cluster home (logs, TLS material) is
``cluster/`` beside them.

Recovery after each fault: for every heal (a fault's, and the final one) and every workload,
the time from the heal to the workload's first ``ok`` completion of a progress operation
(``Workload.progress_fs``) after it (the next fault may come first: the time says how long
the workload waited, whatever the cause).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from net.cluster.probe import wait_for_masters
from net.errors import NetError
from net.jepsen.nemesis import (
    FINAL,
    Fault,
    Nemesis,
    NemesisError,
    check_nemeses,
    draw_schedule,
    layout_of,
)
from net.jepsen.record import write_record
from net.jepsen.target import FaultKind, Target
from net.jepsen.workloads import WORKLOADS, Workload, WorkloadContext
from pxq.check.history import JSON, NEMESIS, HistoryError, HistoryWriter, Op
from pxq.check.models import Verdict, check_history
from pxq.check.result import CheckResult
from pxq.config import ClusterConfig, load_config

TIME_LIMIT_S_MAX: Final = 24 * 3600.0
RECOVERY_TIMEOUT_S: Final = 30.0
STEPS_DEFAULT: Final = 10_000_000
"""Model steps per key of a linearizability search (as ``pxq check``)."""
NEMESIS_GRACE_S: Final = 30.0
"""How long past the time limit the last heal of the schedule may take (restarts)."""
POLL_S: Final = 0.05
HISTORY: Final = "history.jsonl"
RESULTS: Final = "results.json"
SUMMARY: Final = "summary.txt"
CLUSTER_DIR: Final = "cluster"


class BadTestInput(ValueError):
    """Options ``pxq test`` cannot run with; the message names the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TestOptions:
    """What one run does."""

    __test__ = False  # not a pytest test class

    workloads: tuple[str, ...] = ("queue", "lock")
    nemeses: tuple[FaultKind, ...] = ("kill", "pause")
    time_limit_s: float = 30.0
    seed: int = 0
    run_dir: Path
    recovery_timeout_s: float = RECOVERY_TIMEOUT_S
    max_steps: int = STEPS_DEFAULT

    def validate(self) -> None:
        """``BadTestInput`` naming the first problem."""
        if not self.workloads:
            raise BadTestInput("no workload given")
        unknown = [w for w in self.workloads if w not in WORKLOADS]
        if unknown:
            raise BadTestInput(
                f"unknown workload {', '.join(map(repr, unknown))} "
                f"(one of {', '.join(sorted(WORKLOADS))})"
            )
        if len(set(self.workloads)) != len(self.workloads):
            raise BadTestInput("a workload is named twice")
        if not 0 < self.time_limit_s <= TIME_LIMIT_S_MAX:
            raise BadTestInput(f"the time limit must be in (0, {TIME_LIMIT_S_MAX:g}] seconds")
        if self.seed < 0:
            raise BadTestInput("the seed must be >= 0")
        if not 0 < self.recovery_timeout_s <= TIME_LIMIT_S_MAX:
            raise BadTestInput("the recovery timeout must be > 0 seconds")
        if self.max_steps < 1:
            raise BadTestInput("max steps must be >= 1")

    def to_json(self) -> dict[str, JSON]:
        return {
            "workloads": list(self.workloads),
            "nemeses": list(self.nemeses),
            "time_limit_s": self.time_limit_s,
            "seed": self.seed,
            "run_dir": str(self.run_dir),
            "recovery_timeout_s": self.recovery_timeout_s,
            "max_steps": self.max_steps,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadChecks:
    workload: str
    model: str
    verdict: Verdict
    operations: int
    checks: tuple[CheckResult, ...]
    notes: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class TestResult:
    """Everything a run found (``results.json`` is its ``to_json``)."""

    __test__ = False

    options: TestOptions
    target: str
    schedule: tuple[Fault, ...] = ()
    faults_done: int = 0
    """The schedule's faults that were injected (the first ones: a slow heal pushes the later
    ones back, past the time limit)."""
    started_ms: int = 0
    workload_started_ms: int = 0
    """When the workloads were running and the schedule's clock started: the schedule's and
    the recoveries' times count from it."""
    counts: dict[str, JSON] = field(default_factory=dict)
    recovery: dict[str, JSON] = field(default_factory=dict)
    """After the final heal: ``masters_ms``, ``workloads_ms`` (per workload), ``ok``."""
    recoveries: list[dict[str, JSON]] = field(default_factory=list)
    """One per heal: ``fault_no``, ``what``, ``healed_ms`` (from the start), ``recovery_ms``."""
    workload_checks: list[WorkloadChecks] = field(default_factory=list)
    run_checks: list[CheckResult] = field(default_factory=list)
    """``recovery`` and ``nemesis``."""
    elapsed_s: float = 0.0

    @property
    def checks(self) -> list[CheckResult]:
        return [c for w in self.workload_checks for c in w.checks] + self.run_checks

    @property
    def verdict(self) -> Verdict:
        failed = [c for c in self.checks if not c.ok]
        if not failed:
            return "valid"
        if any(c.details.get("verdict") != "unknown" for c in failed):
            return "invalid"
        return "unknown"

    def to_json(self) -> dict[str, JSON]:
        return {
            "verdict": self.verdict,
            "target": self.target,
            "options": self.options.to_json(),
            "started_ms": self.started_ms,
            "workload_started_ms": self.workload_started_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "schedule": [f.to_json() for f in self.schedule],
            "faults_done": self.faults_done,
            "counts": self.counts,
            "recovery": self.recovery,
            "recoveries": list[JSON](self.recoveries),
            "workloads": [
                {
                    "workload": w.workload,
                    "model": w.model,
                    "verdict": w.verdict,
                    "operations": w.operations,
                    "checks": [_json(c.to_json()) for c in w.checks],
                    "notes": list(w.notes),
                }
                for w in self.workload_checks
            ],
            "checks": [_json(c.to_json()) for c in self.run_checks],
            "files": {"history": HISTORY, "results": RESULTS, "summary": SUMMARY},
        }


def _json(value: object) -> JSON:
    """``value`` through a JSON round trip (check details are JSON-compatible by contract)."""
    loaded: JSON = json.loads(json.dumps(value, default=str))
    return loaded


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def workload_seed(seed: int, name: str) -> int:
    """Each workload's own seed, from the run's (stable: no ``hash()``)."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


# -- the run ------------------------------------------------------------------------------------


async def run_test(
    target: Target, options: TestOptions, *, say: Callable[[str], None] = lambda _: None
) -> TestResult:
    """One run (see the module docstring). ``BadTestInput`` before anything starts for
    options it cannot run with (a nemesis the target cannot inject among them); ``say``
    hears of each phase."""
    options.validate()
    try:
        check_nemeses(options.nemeses, target)
    except NemesisError as exc:
        raise BadTestInput(str(exc)) from exc
    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    result = TestResult(options=options, target=target.name, started_ms=wall_ms())
    started = time.monotonic()
    workloads: list[Workload] = []
    with (run_dir / HISTORY).open("w", encoding="utf-8", buffering=1) as stream:
        writer = HistoryWriter(stream)
        try:
            say(f"setting up the {target.name} cluster")
            await target.setup()
            config = load_config(target.config_path)
            time_limit_ms = round(options.time_limit_s * 1000)
            try:
                result.schedule = draw_schedule(
                    options.seed, options.nemeses, layout_of(config), time_limit_ms
                )
            except NemesisError as exc:  # a cluster too small for a nemesis
                raise BadTestInput(str(exc)) from exc
            run_id = f"t{options.seed}x{wall_ms() % 100_000_000}"
            for name in options.workloads:
                context = WorkloadContext(
                    config=config,
                    writer=writer,
                    seed=workload_seed(options.seed, name),
                    run_id=run_id,
                    time_limit_ms=time_limit_ms,
                )
                try:
                    workloads.append(WORKLOADS[name](context))
                except ValueError as exc:  # the cluster lacks what it needs ([locks]...)
                    raise BadTestInput(f"workload {name}: {exc}") from exc
            for w in workloads:
                await w.start()
            say(
                f"running {', '.join(options.workloads)} for {options.time_limit_s:g} s with "
                f"{len(result.schedule)} faults"
            )
            nemesis = Nemesis(target=target, config=config, writer=writer)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            result.workload_started_ms = wall_ms()
            faults = asyncio.create_task(
                nemesis.run(result.schedule, t0, t0 + options.time_limit_s)
            )
            await asyncio.sleep(options.time_limit_s)
            try:
                async with asyncio.timeout(NEMESIS_GRACE_S):
                    await faults
            except TimeoutError:  # a heal hangs: the final heal tries again, the run fails
                nemesis.errors.append(
                    f"the schedule did not end within {NEMESIS_GRACE_S:g} s of the time limit"
                )
            finally:
                faults.cancel()
            result.faults_done = nemesis.done
            say("healing")
            await nemesis.heal_all()
            heal_index = len(writer.ops)
            result.recovery = await _recover(config, writer, workloads, heal_index, options)
            say("final reads")
            for w in workloads:
                await w.stop()
            for w in workloads:
                await w.final_reads()
            result.run_checks.append(_recovery_check(result.recovery, options))
            result.run_checks.append(_nemesis_check(nemesis.errors))
        finally:
            for w in workloads:
                await w.close()
            say("tearing down")
            await target.teardown()
        ops = writer.ops
    result.counts = {w.name: w.counts() for w in workloads}
    result.recoveries = recoveries(ops, workloads, result.schedule, result.workload_started_ms)
    say("checking")
    result.workload_checks = [await asyncio.to_thread(_check, w, ops, options) for w in workloads]
    result.elapsed_s = time.monotonic() - started
    finish_run_dir(run_dir, result, ops)
    return result


async def _recover(
    config: ClusterConfig,
    writer: HistoryWriter,
    workloads: Sequence[Workload],
    heal_index: int,
    options: TestOptions,
) -> dict[str, JSON]:
    """Wait (bounded) for a master of every group and an ``ok`` of every workload after the
    op at ``heal_index`` (the end of the final heal); the times, in ms from the heal, each
    workload's from its op's ``time_ms``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    healed_ms = wall_ms()
    deadline = start + options.recovery_timeout_s
    masters_ms: int | None = None
    try:
        await wait_for_masters(config, timeout_s=options.recovery_timeout_s)
        masters_ms = round((loop.time() - start) * 1000)
    except NetError:
        pass
    waiting = {w.name: w for w in workloads}
    times: dict[str, JSON] = dict.fromkeys(waiting)
    seen = heal_index
    while waiting:
        ops = writer.ops
        for op in ops[seen:]:
            for name, w in list(waiting.items()):
                if op.type == "ok" and op.f in w.progress_fs and w.owns(op):
                    times[name] = max(0, op.time_ms - healed_ms)
                    del waiting[name]
        seen = len(ops)
        if not waiting or loop.time() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    return {
        "masters_ms": masters_ms,
        "workloads_ms": times,
        "ok": masters_ms is not None and not waiting,
        "timeout_s": options.recovery_timeout_s,
    }


def _recovery_check(recovery: dict[str, JSON], options: TestOptions) -> CheckResult:
    ok = recovery.get("ok") is True
    raw = recovery.get("workloads_ms")
    times = raw if isinstance(raw, dict) else {}
    late = [name for name, ms in times.items() if ms is None]
    if ok:
        summary = f"recovery: ok, masters after {recovery.get('masters_ms')} ms, " + ", ".join(
            f"{name} ok after {ms} ms" for name, ms in times.items()
        )
    else:
        what = ["no master for some group"] if recovery.get("masters_ms") is None else []
        what += [f"no {name} op ok" for name in late]
        summary = (
            f"recovery: FAILED, {' and '.join(what)} within {options.recovery_timeout_s:g} s "
            f"of the final heal"
        )
    return CheckResult(name="recovery", ok=ok, summary=summary, details=dict(recovery))


def _nemesis_check(errors: Sequence[str]) -> CheckResult:
    if not errors:
        return CheckResult(
            name="nemesis", ok=True, summary="nemesis: ok, every action done", details={}
        )
    return CheckResult(
        name="nemesis",
        ok=False,
        summary=f"nemesis: FAILED, {len(errors)} actions failed (first: {errors[0]})",
        details={"errors": list(errors)},
    )


def _check(workload: Workload, ops: Sequence[Op], options: TestOptions) -> WorkloadChecks:
    mine = [op for op in ops if op.process == NEMESIS or workload.owns(op)]
    try:
        report = check_history(
            mine, workload.model, max_steps=options.max_steps, layout=workload.layout()
        )
    except HistoryError as exc:  # the recorder broke the format: a bug of ours, loudly
        bad = CheckResult(
            name="history", ok=False, summary=f"history: FAILED, malformed: {exc}", details={}
        )
        return WorkloadChecks(
            workload=workload.name,
            model=workload.model,
            verdict="invalid",
            operations=0,
            checks=(bad,),
        )
    return WorkloadChecks(
        workload=workload.name,
        model=workload.model,
        verdict=report.verdict,
        operations=report.operations,
        checks=report.checks,
        notes=report.notes,
    )


def recoveries(
    ops: Sequence[Op], workloads: Sequence[Workload], schedule: Sequence[Fault], started_ms: int
) -> list[dict[str, JSON]]:
    """Per heal (each fault's, then the final one; its time is when the heal was done, a
    restarted node accepting connections): ms from it to each workload's first ``ok``
    progress operation after it (None: none), whatever came next; ``healed_ms`` counts from
    ``started_ms``."""
    heals: list[tuple[int, int | None]] = []  # (heal time, fault number or None: final)
    final_at: int | None = None
    for op in ops:
        if op.process != NEMESIS or op.type != "info":
            continue
        phase = op.get("phase")
        if phase == "heal":
            number = op.get("fault_no")
            heals.append((op.time_ms, number if isinstance(number, int) else None))
        elif phase == FINAL:
            final_at = op.time_ms  # the last action of the final heal
    if final_at is not None:
        heals.append((final_at, None))
    out: list[dict[str, JSON]] = []
    for healed, number in heals:
        per: dict[str, JSON] = {}
        for w in workloads:
            first = next(
                (
                    op.time_ms
                    for op in ops
                    if op.type == "ok"
                    and op.f in w.progress_fs
                    and w.owns(op)
                    and op.time_ms >= healed
                ),
                None,
            )
            per[w.name] = None if first is None else first - healed
        out.append(
            {
                "fault_no": number,
                "what": "final heal"
                if number is None
                else schedule[number].what
                if 0 <= number < len(schedule)
                else "",
                "healed_ms": healed - started_ms,
                "recovery_ms": per,
            }
        )
    return out


# -- the run directory --------------------------------------------------------------------------


def summary_text(result: TestResult) -> str:
    """The table ``pxq test`` prints."""
    o = result.options
    lines = [
        f"pxq test: seed {o.seed}, {result.target} target, workloads {','.join(o.workloads)}, "
        f"nemesis {','.join(o.nemeses) or 'none'}, {o.time_limit_s:g} s "
        f"({result.elapsed_s:.1f} s in all)",
    ]
    kinds: dict[str, int] = {}
    for f in result.schedule[: result.faults_done]:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    lines.append(
        f"faults: {result.faults_done}"
        + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})" if kinds else "")
        + (
            f" of {len(result.schedule)} drawn (slow heals pushed the rest past the limit)"
            if result.faults_done < len(result.schedule)
            else ""
        )
    )
    for w in result.workload_checks:
        worst = _recovery_times(result.recoveries, w.workload)
        counts = result.counts.get(w.workload)
        lines.append(
            f"{w.workload}: {w.operations} ops, recovery after a heal "
            + (f"max {max(worst)} ms over {len(worst)} heals" if worst else "not measured")
            + (f"; counts {json.dumps(counts)}" if counts else "")
        )
    lines.append("")
    lines.append(f"{'workload':<10} {'check':<20} {'result':<8} summary")
    rows = [(w.workload, c) for w in result.workload_checks for c in w.checks]
    rows += [("run", c) for c in result.run_checks]
    for workload, c in rows:
        state = "ok" if c.ok else ("UNKNOWN" if c.details.get("verdict") == "unknown" else "FAIL")
        lines.append(f"{workload:<10} {c.name:<20} {state:<8} {c.summary}")
    lines.append("")
    lines.append(f"verdict: {result.verdict}")
    return "\n".join(lines) + "\n"


def _recovery_times(recoveries: Sequence[dict[str, JSON]], workload: str) -> list[int]:
    times: list[int] = []
    for r in recoveries:
        per = r.get("recovery_ms")
        ms = per.get(workload) if isinstance(per, dict) else None
        if isinstance(ms, int):
            times.append(ms)
    return times


def finish_run_dir(run_dir: Path, result: TestResult, ops: Sequence[Op]) -> None:
    """Complete the run directory (the one place a run's files are finished): the record of
    ``net.jepsen.record`` (``history.jsonl``, ``timeline.json``, ``results.json`` with every
    check and, under ``run``, this result's ``to_json``, ``summary.txt``, the latency and
    rate plots, a picture per failed check and ``index.html``)."""
    checks = {f"{w.workload}/{c.name}": c for w in result.workload_checks for c in w.checks}
    checks.update({f"run/{c.name}": c for c in result.run_checks})
    options = result.options
    write_record(
        run_dir,
        ops,
        checks,
        title=f"pxq test: {result.target} target, seed {options.seed}, "
        f"{','.join(options.workloads)} under {','.join(options.nemeses) or 'no faults'}",
        summary=summary_text(result),
        start_ms=result.workload_started_ms or None,
        run_info=result.to_json(),
        verdict=result.verdict,
    )
