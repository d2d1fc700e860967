"""``pxq sim``: run scenarios and seed swarms in the deterministic simulator.

Exit codes: 0 when every expectation is met, 1 when a check or expectation fails, 2 for bad
input (an unreadable or invalid scenario, bad arguments), with the reason on stderr.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK
from pxq.cli.common import bad_input as _bad_input

if TYPE_CHECKING:
    from pxq.check.history import Op
    from sim.lanes import NodeLanes
    from sim.runner import RunResult
    from sim.scenario import Scenario


@click.group()
def sim() -> None:
    """Deterministic simulation: run scenarios and seed swarms."""


@sim.command("run")
@click.argument("scenario_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Seed (default: the file's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--history", type=click.Path(dir_okay=False, path_type=Path), help="Write the history (JSONL)."
)
@click.option(
    "--trace", type=click.Path(dir_okay=False, path_type=Path), help="Write the trace (JSONL)."
)
@click.option(
    "--record",
    "record_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the run's record into DIR: history, fault timeline, checks, summary, plots "
    "(latency, rate, a lane per node) and index.html.",
)
def sim_run(  # noqa: PLR0917 - one parameter per click option
    scenario_file: Path,
    seed: int | None,
    as_json: bool,
    history: Path | None,
    trace: Path | None,
    record_dir: Path | None,
) -> None:
    """Run SCENARIO_FILE once and check the outcome."""
    from pxq.check.history import read_history
    from sim import runner, scenario
    from sim.lanes import NodeLanes

    try:
        scn = scenario.load(scenario_file)
        runner.validate(scn)
    except (scenario.ScenarioError, ValueError) as exc:
        _bad_input(str(exc))
        return
    run_seed = scn.seed if seed is None else seed
    # A record needs the history's ops: keep it in memory, written to --history at the end.
    recorded = io.StringIO() if record_dir is not None else None
    history_out = (
        recorded if recorded is not None else runner.write_jsonl(history) if history else None
    )
    trace_out = runner.write_jsonl(trace) if trace else None
    lanes: list[NodeLanes] = []
    try:
        result = runner.run(
            scn,
            run_seed,
            history_out=history_out,
            trace_out=trace_out,
            observe=(lambda world: lanes.append(NodeLanes(world))) if record_dir else None,
        )
    finally:
        for f in (history_out, trace_out):
            if f is not None and f is not recorded:
                f.close()
    text = _run_text(scn, run_seed, result)
    if recorded is not None and record_dir is not None:
        if history is not None:
            with runner.write_jsonl(history) as out:
                out.write(recorded.getvalue())
        ops = read_history(recorded.getvalue().splitlines())
        _record(record_dir, scn, result=result, text=text, ops=ops, lanes=lanes[0])
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        click.echo(text, nl=False)
        if record_dir is not None:
            click.echo(f"  record: {record_dir / 'index.html'}")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


def _run_text(scn: Scenario, run_seed: int, result: RunResult) -> str:
    """What ``sim run`` prints about a run (and the record keeps as its summary)."""
    verdict = "OK" if result.ok else "FAILED"
    lines = [f"{verdict}: {scn.name} seed {run_seed} (expect safety {scn.expect_safety})"]
    for name, check in result.checks.items():
        lines.append(f"  {'pass' if check.ok else 'FAIL'} {name}: {check.summary}")
    lines.append(f"  trace digest {result.trace_digest}")
    lines.append(f"  simulated {result.sim_time_ms} ms in {result.wall_s:.2f} s wall")
    if not result.ok:
        lines.append(f"  reproduce: {result.repro}")
    return "\n".join(lines) + "\n"


def _record(
    record_dir: Path,
    scn: Scenario,
    *,
    result: RunResult,
    text: str,
    ops: list[Op],
    lanes: NodeLanes,
) -> None:
    """Write the record of a simulated run (``net.jepsen.record``): its history, the checks,
    the node lanes, the first broken invariant as a violation mark."""
    from net.jepsen.record import write_record

    node_lanes = lanes.close()
    marks = [(t, f"invariants ({node})") for t, node, _ in lanes.violations[:1]]
    failed = [name for name, c in result.checks.items() if not c.ok]
    verdict = f"{'OK' if result.ok else 'FAILED'} (expect safety {scn.expect_safety})" + (
        f"; failed checks: {', '.join(failed)}" if failed else "; every check passed"
    )
    try:
        write_record(
            record_dir,
            ops,
            result.checks,
            title=f"{scn.name} seed {result.seed}",
            node_lanes=node_lanes,
            marks=marks,
            summary=text,
            start_ms=0,
            end_ms=result.sim_time_ms,
            verdict=verdict,
            run_info={
                "scenario": scn.name,
                "file": result.file,
                "seed": result.seed,
                "ok": result.ok,
                "expect_safety": scn.expect_safety,
                "trace_digest": result.trace_digest,
                "sim_time_ms": result.sim_time_ms,
                "repro": result.repro,
            },
        )
    except OSError as exc:
        _bad_input(f"cannot write the record into {record_dir}: {exc}")


@sim.command("swarm")
@click.argument("scenario_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seeds", "seeds_text", required=True, help="Seed range A-B (inclusive).")
@click.option("--jobs", type=click.IntRange(min=1, max=64), default=2, help="Worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim_swarm(scenario_file: Path, seeds_text: str, jobs: int, as_json: bool) -> None:
    """Run SCENARIO_FILE over many seeds in parallel."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from sim import runner, scenario, swarm

    try:
        seeds = swarm.parse_seeds(seeds_text)
        scn = scenario.load(scenario_file)
        runner.validate(scn)
    except (scenario.ScenarioError, ValueError) as exc:
        _bad_input(str(exc))
        return
    started = time.perf_counter()
    failures: list[Any] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=None if not as_json else _stderr_console(),
        transient=as_json,
    ) as progress:
        task = progress.add_task(scn.name, total=len(seeds))

        def done(out: swarm.SeedOutcome) -> None:
            progress.advance(task)
            if not out.ok:
                failures.append(out)
                progress.console.print(
                    f"[red]seed {out.seed} failed[/red] ({', '.join(out.failed_checks)}"
                    f"{': ' + out.error if out.error else ''}); reproduce: {out.repro}"
                )

        outcomes = swarm.run_swarm(str(scenario_file), seeds, jobs, done)
    wall = time.perf_counter() - started
    failed = [o.seed for o in outcomes if not o.ok]
    kinds = scn.random_faults.kinds if scn.random_faults.enabled else ()
    counts = swarm.fire_counts(kinds, outcomes)
    never = [k for k in kinds if counts[k].faults == 0]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "scenario": scn.name,
                    "seeds": [seeds[0], seeds[-1]],
                    "runs": len(outcomes),
                    "ok": not failed,
                    "failed": failed,
                    "failures": [o.to_json() for o in outcomes if not o.ok],
                    "wall_s": round(wall, 2),
                    "sim_time_ms": sum(o.sim_time_ms for o in outcomes),
                    "fired": {k: c.faults for k, c in counts.items()},
                    "fired_seeds": {k: c.seeds for k, c in counts.items()},
                    "never_fired": never,
                },
                sort_keys=True,
            )
        )
    else:
        click.echo(f"{len(outcomes)} runs, {len(failed)} failed, {wall:.1f} s wall")
        if counts:
            click.echo("random faults fired (faults / seeds):")
            for k, c in counts.items():
                click.echo(f"  {k:<16} {c.faults:>7} / {c.seeds}")
            if never:
                click.echo(f"  never fired: {', '.join(never)}")
        for o in outcomes:
            if not o.ok:
                click.echo(f"  seed {o.seed}: {', '.join(o.failed_checks)}; reproduce: {o.repro}")
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


@sim.command("swarm-sum")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per scenario.")
def sim_swarm_sum(reports: tuple[Path, ...], as_json: bool) -> None:
    """Sum the JSON reports of several `pxq sim swarm --json` runs (chunks of one long
    swarm): per scenario the seeds covered, the failed seeds, and per random fault kind the
    faults fired and in how many seeds, as a Markdown table (or JSON). Overlapping chunks are
    refused; a report without a `seeds` field takes its range from a name ending in
    `-A-B.json`. Exits 1 if any seed failed or an enabled kind never fired."""
    from sim import swarm

    loaded: list[tuple[str, dict[str, Any]]] = []
    for path in reports:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _bad_input(f"cannot read the swarm report {path}: {exc}")
            return
        if not isinstance(report, dict):
            _bad_input(f"{path}: not a swarm report (a JSON object)")
            return
        loaded.append((str(path), report))
    try:
        totals = swarm.sum_reports(loaded)
    except ValueError as exc:
        _bad_input(str(exc))
        return
    if as_json:
        for t in totals:
            click.echo(
                json.dumps(
                    {
                        "scenario": t.scenario,
                        "seeds": [list(r) for r in t.seeds],
                        "runs": t.runs,
                        "ok": not t.failed,
                        "failed": list(t.failed),
                        "wall_s": t.wall_s,
                        "sim_time_ms": t.sim_time_ms,
                        "fired": {k: c.faults for k, c in t.fired.items()},
                        "fired_seeds": {k: c.seeds for k, c in t.fired.items()},
                        "never_fired": list(t.never_fired),
                    },
                    sort_keys=True,
                )
            )
    else:
        click.echo(swarm.totals_table(totals), nl=False)
        for t in totals:
            covered = ", ".join(f"{a}-{b}" for a, b in t.seeds)
            line = f"{t.scenario}: seeds {covered}; {t.runs} runs, {len(t.failed)} failed"
            if t.never_fired:
                line += f"; never fired: {', '.join(t.never_fired)}"
            click.echo(line)
    bad = any(t.failed or t.never_fired for t in totals)
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
