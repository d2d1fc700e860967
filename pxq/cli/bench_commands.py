"""``pxq bench`` and ``pxq plot``: the end-to-end benchmark of the production runtime and its
charts (``net.tools.bench``, ``net.tools.baselines``, ``net.tools.plot``; see ``docs/performance.md``).

Exit codes: 0 done; 1 the run failed (the cluster did not start, the load could not run, no
file to plot); 2 bad input (an invalid option or list, a missing or invalid configuration).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input

INFLIGHT_MAX = 10_000
PAYLOAD_MAX = 1_000_000
GROUPS_MAX = 64
GET_ITEMS_MAX = 100_000
RSS_ITEMS_MAX = 1_000_000_000
"""Largest --get-items (the store clamps a Get to its own ``limits.get_items_max`` anyway)."""


def _bad_input(message: str) -> NoReturn:
    bad_input(message)
    raise SystemExit(2)  # pragma: no cover - bad_input exits


class IntList(click.ParamType[tuple[int, ...]]):
    """A comma-separated list of integers in [lo, hi] (``1,10,100``); a tuple of ints."""

    name = "int-list"

    def __init__(self, lo: int, hi: int) -> None:
        self.lo = lo
        self.hi = hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: expected integers separated by commas", param, ctx)
        if not items:
            self.fail("expected at least one integer", param, ctx)
        for v in items:
            if not self.lo <= v <= self.hi:
                self.fail(f"{v} is not in {self.lo}..{self.hi}", param, ctx)
        return items


@click.command("bench")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".pxq") / "cluster.toml",
    show_default=True,
    help="The running cluster's file (ignored with --start-cluster).",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The running cluster's home, for the node pid files (default: the config's folder).",
)
@click.option(
    "--start-cluster",
    is_flag=True,
    help="Start `pxq cluster up` (3 replicas, free ports) in a temporary home, tear it down after.",
)
@click.option(
    "--no-tls",
    is_flag=True,
    help="With --start-cluster: the cluster runs without TLS (the default is TLS, as `pxq "
    "cluster up`), to measure what TLS costs.",
)
@click.option(
    "--inflight",
    type=IntList(1, INFLIGHT_MAX),
    default="200",
    show_default=True,
    help="Concurrent enqueue calls; a comma-separated list runs a sweep.",
)
@click.option(
    "--payload-bytes",
    type=IntList(1, PAYLOAD_MAX),
    default="100",
    show_default=True,
    help="Payload size; a comma-separated list runs a sweep.",
)
@click.option(
    "--groups",
    type=IntList(1, GROUPS_MAX),
    default="1",
    show_default=True,
    help="Paxos groups of the started cluster (--start-cluster only); a list runs a sweep.",
)
@click.option(
    "--queues-per-group",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Queues of the topic per Paxos group (--start-cluster only).",
)
@click.option(
    "--duration-s",
    type=click.FloatRange(0.5, 3600),
    default=10.0,
    show_default=True,
    help="Measured seconds per run.",
)
@click.option(
    "--warmup-s",
    type=click.FloatRange(0, 600),
    default=1.0,
    show_default=True,
    help="Seconds of load before the measured window.",
)
@click.option(
    "--max-items",
    type=click.IntRange(1, 1_000_000_000),
    default=20_000_000,
    show_default=True,
    help="Bound on enqueue calls issued per run.",
)
@click.option(
    "--drain",
    type=click.IntRange(0, 100_000_000),
    default=0,
    show_default=True,
    help="Drain mode: enqueue a backlog of N items, then one consumer group drains it.",
)
@click.option(
    "--get-items",
    type=click.IntRange(1, GET_ITEMS_MAX),
    default=None,
    help="Drain mode: items per Get (the consumer's get_items_max; default: its default, 100).",
)
@click.option(
    "--rss",
    type=IntList(1, RSS_ITEMS_MAX),
    default=None,
    help="RSS mode: grow a backlog (nobody consumes) through these ascending item counts and "
    "sample every node's RssAnon at each (e.g. 100000,1000000,5000000).",
)
@click.option(
    "--rss-time-max-s",
    type=click.FloatRange(10, 24 * 3600),
    default=900.0,
    show_default=True,
    help="RSS mode: bound on the whole fill; marks not reached by then are skipped.",
)
@click.option("--topic", default=None, help="Topic to load (default: the config's first).")
@click.option("--group", default=None, help="Consumer group of --drain (default: the first).")
@click.option(
    "--linger-ms",
    type=click.IntRange(0, 10_000),
    default=None,
    help="Producer linger (default: the configuration's [batching]).",
)
@click.option(
    "--inflight-batches",
    type=IntList(1, 64),
    default=None,
    help="The producer's batches in flight per queue (default: the configuration's "
    "[batching] inflight_batches); a comma-separated list runs a sweep (1 = no pipelining).",
)
@click.option(
    "--baselines",
    is_flag=True,
    help="Also run C (the replication prototype) and R (Redis AOF always) now, once per "
    "(in flight, payload) shape of the runs; report each run's ratios to its shape's.",
)
@click.option(
    "--out",
    default="-",
    show_default=True,
    help="JSON-lines output file (appended to), or - for stdout.",
)
@click.option("--no-progress", is_flag=True, help="No progress display on stderr.")
def bench(
    *,
    config_file: Path,
    home: Path | None,
    start_cluster: bool,
    no_tls: bool,
    inflight: tuple[int, ...],
    payload_bytes: tuple[int, ...],
    groups: tuple[int, ...],
    queues_per_group: int,
    duration_s: float,
    warmup_s: float,
    max_items: int,
    drain: int,
    get_items: int | None,
    rss: tuple[int, ...] | None,
    rss_time_max_s: float,
    topic: str | None,
    group: str | None,
    linger_ms: int | None,
    inflight_batches: tuple[int, ...] | None,
    baselines: bool,
    out: str,
    no_progress: bool,
) -> None:
    """Closed-loop enqueue load (or a drain) against a cluster; JSON lines out.

    One line per measured second (throughput, latency p50/p99/p999), the latency quantiles of
    each enqueue run (for `pxq plot --cdf`), then a summary per run (throughput, latency, CPU
    seconds of every node process and of the bench, CPU µs per acknowledged item); with
    --baselines, C and R lines per shape and the pxq/C, pxq/R ratios."""
    from net.cluster.processes import ClusterError
    from net.errors import NetError
    from net.tools.bench import BenchSpec, open_output, run_bench
    from net.wire.loop import run
    from pxq.config.parser import ConfigError

    if not start_cluster:
        if groups != (1,) or queues_per_group != 1:
            _bad_input("--groups and --queues-per-group need --start-cluster")
        if no_tls:
            _bad_input("--no-tls needs --start-cluster (a running cluster has its own [tls])")
        if not config_file.is_file():
            _bad_input(
                f"no cluster file at {config_file}: start one with `pxq cluster up` "
                "or pass --start-cluster"
            )
    sweeps = len(inflight) > 1 or len(payload_bytes) > 1 or len(inflight_batches or ()) > 1
    if drain and sweeps:
        _bad_input(
            "--drain runs one shape: give one --inflight, --payload-bytes and --inflight-batches"
        )
    if get_items is not None and not drain:
        _bad_input("--get-items applies to --drain only")
    if rss is not None:
        if drain:
            _bad_input("--rss and --drain are different modes: give one")
        if list(rss) != sorted(set(rss)):
            _bad_input("--rss: the item counts must be ascending and distinct")
        if sweeps:
            _bad_input(
                "--rss runs one shape: give one --inflight, --payload-bytes and --inflight-batches"
            )
    spec = BenchSpec(
        inflight=inflight,
        payload_bytes=payload_bytes,
        groups=groups,
        queues_per_group=queues_per_group,
        duration_s=duration_s,
        warmup_s=warmup_s,
        max_items=max_items,
        drain=drain,
        get_items=get_items,
        rss=rss or (),
        rss_time_max_s=rss_time_max_s,
        start_cluster=start_cluster,
        tls=not no_tls,
        config_file=config_file,
        home=home,
        topic=topic,
        group=group,
        linger_ms=linger_ms,
        inflight_batches=inflight_batches or (None,),
        baselines=baselines,
        progress=not no_progress,
    )
    try:
        sink = open_output(out)
    except OSError as exc:
        _bad_input(f"cannot write {out}: {exc}")

    def note(text: str) -> None:
        click.echo(f"pxq bench: {text}", err=True)

    with sink as f:

        def emit(line: dict[str, Any]) -> None:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
            f.flush()

        try:
            summaries = run(run_bench(spec, emit, note))
        except ConfigError as exc:
            _bad_input(str(exc))
        except ValueError as exc:
            _bad_input(str(exc))
        except (ClusterError, NetError, OSError) as exc:
            click.echo(f"pxq bench: failed: {exc}", err=True)
            sys.exit(EXIT_FAILED)
    for s in summaries:
        if s["mode"] == "rss":
            note(
                f"run {s['run']}: backlog {s['enqueued']:,} items"
                f"{' (time bound reached)' if s['timed_out'] else ''}; RssAnon growth from "
                f"{s['from_mark']:,} items: {s['rss_anon_growth_kb']} kB "
                f"({s['rss_anon_growth_mb_per_million']} MB per million items)"
            )
        elif s["mode"] == "drain":
            note(
                f"run {s['run']}: drained {s['drained']:,} items at {s['items_s']:,.0f} items/s "
                f"(filled at {s['fill_items_s']:,.0f}/s); CPU {s['cpu_us_per_item']} µs/item"
            )
        else:
            note(
                f"run {s['run']}: {s['inflight']} in flight, {s['payload_bytes']} B: "
                f"{s['items_s']:,.0f} items/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                f"p999 {s['p999_ms']} ms; CPU {s['cpu_us_per_item']} µs/item "
                f"({s['errors']} errors; load {s['loadavg_before']} -> {s['loadavg_after']})"
            )
    sys.exit(EXIT_OK)


@click.command("plot")
@click.argument(
    "bench_file",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--sweep",
    "sweep_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Plot the summary lines of FILE against --x instead of a timeline.",
)
@click.option(
    "--groups",
    "groups_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Plot `pxq groups --watch --json` samples of FILE: lag and owners per queue over time.",
)
@click.option(
    "--cdf",
    "cdf_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Plot the ack latency CDF of every enqueue run of FILE (its latency lines).",
)
@click.option(
    "--x",
    "x",
    type=click.Choice(["inflight", "payload", "payload_bytes", "groups"]),
    default="inflight",
    show_default=True,
    help="The swept parameter (with --sweep).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Folder for the PNG files.",
)
def plot(
    bench_file: Path | None,
    *,
    sweep_file: Path | None,
    groups_file: Path | None,
    cdf_file: Path | None,
    x: str,
    out_dir: Path,
) -> None:
    """PNG charts of `pxq bench` output: throughput and latency over time per run, or with
    --sweep FILE the runs' summaries against --x (inflight, payload, groups) with the file's
    C and R baselines, or with --cdf FILE the ack latency CDF of every run, or with --groups
    FILE a dashboard of `pxq groups --watch --json` samples."""
    from net.tools.plot import (
        PlotError,
        cdf_plot,
        groups_plot,
        read_lines,
        sweep_plot,
        timeline_plots,
    )

    if sum(f is not None for f in (bench_file, sweep_file, groups_file, cdf_file)) != 1:
        _bad_input("give exactly one of BENCH_FILE, --sweep FILE, --cdf FILE and --groups FILE")
    try:
        if cdf_file is not None:
            written = [cdf_plot(read_lines(cdf_file), out_dir, cdf_file.stem)]
        elif groups_file is not None:
            written = groups_plot(read_lines(groups_file), out_dir, groups_file.stem)
        elif sweep_file is not None:
            key = "payload_bytes" if x == "payload" else x
            written = [sweep_plot(read_lines(sweep_file), key, out_dir, sweep_file.stem)]
        else:
            assert bench_file is not None
            written = timeline_plots(read_lines(bench_file), out_dir, bench_file.stem)
    except PlotError as exc:
        click.echo(f"pxq plot: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    for path in written:
        click.echo(str(path))
    sys.exit(EXIT_OK)


def register(main: click.Group) -> None:
    """Add ``bench`` and ``plot`` to the ``pxq`` command group."""
    main.add_command(bench)
    main.add_command(plot)
