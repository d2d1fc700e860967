"""``pxq plot``: PNG charts of ``pxq bench`` output (matplotlib, Agg backend).

* ``timeline_plots(lines, out_dir, stem)``: for every run in a bench output file, throughput
  (items/s) and latency (p50/p99/p999) per second over time, one PNG per run
  (``<stem>-run<N>.png``).
* ``sweep_plot(lines, x, out_dir, stem)``: several runs' summary lines against one parameter
  (``inflight``, ``payload_bytes`` or ``groups``): throughput, latency p50/p99 and CPU µs per
  item against ``x`` (log scale), one PNG (``<stem>-sweep-<x>.png``). The file's baselines
  (``"type": "baseline"``, C and R) are drawn on the same axes: against ``inflight`` or
  ``payload_bytes`` as their own lines through the x of their shape (the median where a file
  holds several of one name and x), against ``groups`` (one shape for every point) as
  horizontal lines.
* ``cdf_plot(lines, out_dir, stem)``: the latency distribution of every enqueue run
  (``"type": "latency"`` lines), one curve per run (through its quantiles) labelled by the
  run's tags, on a log latency axis, with the tail (1 - F, log scale) below; one PNG (``<stem>-cdf.png``).
* ``groups_plot(lines, out_dir, stem)``: ``pxq groups --watch --json`` samples (``"type":
  "groups"``) as a dashboard, one PNG per consumer group and topic
  (``<stem>-<group>-<topic>.png``): the lag of each queue over time, and which consumer owned
  each queue when (a lane per queue, a colour per owner, blank while nobody held it).

Input lines are JSON objects with a ``"type"`` (``"second"``, ``"summary"``, ...; see
``net.tools.bench``); lines of other types and blank lines are ignored. Raises ``PlotError`` for
input without anything to plot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

SWEEP_X: Final = ("inflight", "payload_bytes", "groups")
X_LABELS: Final = {
    "inflight": "enqueue calls in flight",
    "payload_bytes": "payload (bytes)",
    "groups": "Paxos groups",
}


class PlotError(Exception):
    """The input holds nothing to plot (or cannot be read)."""


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; ``PlotError`` for unreadable or invalid input."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc}") from exc
    lines: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise PlotError(f"{path}:{n}: not JSON: {exc}") from exc
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_y(ax: Any) -> None:
    """A log y axis with plain numbers (30, 60) when the data span 10x or more; else linear
    from 0 (a log axis over a narrow range shows almost no tick labels)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    if not ys or max(ys) / min(ys) < 10:
        ax.set_ylim(bottom=0)
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _label(summary: dict[str, Any] | None, run: int) -> str:
    if summary is None:
        return f"run {run}"
    return (
        f"run {run}: {summary.get('mode', '?')}, {summary.get('inflight')} in flight, "
        f"{summary.get('payload_bytes')} B, {summary.get('groups')} group(s)"
    )


def _baseline_points(
    lines: Sequence[dict[str, Any]], x: str, rows: Sequence[dict[str, Any]]
) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """The baselines that ran (no ``skipped``) by name and x, among those of the runs' shapes
    (an inflight sweep at 100 B ignores baselines of 4 KiB; a shape field a baseline line lacks,
    as R's ``inflight`` before issue 17, does not exclude it). Against ``groups`` (baselines
    have none) all sit at x 0, to be drawn as horizontal lines."""
    shape = ("inflight", "payload_bytes")
    wanted = {k: {r.get(k) for r in rows} for k in shape if k != x}
    out: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for line in lines:
        if line.get("type") != "baseline" or "skipped" in line or not line.get("items_s"):
            continue
        if any(k in line and line[k] not in values for k, values in wanted.items()):
            continue
        if x in shape and line.get(x) is None:
            continue
        at = float(line[x]) if x in shape else 0.0
        out.setdefault(str(line.get("name", "?")), {}).setdefault(at, []).append(line)
    return out


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


BASELINE_STYLE: Final = {"C": ("tab:green", "s"), "R": ("tab:red", "^")}


def _draw_baselines(
    axes: Sequence[Any], points: dict[str, dict[float, list[dict[str, Any]]]], horizontal: bool
) -> None:
    """C and R on the throughput, latency and CPU axes (``axes``): a line through their
    per-x medians, or a horizontal line each when ``horizontal``."""
    keys = ("items_s", "p99_ms", "cpu_us_per_item")
    for name, by_x in sorted(points.items()):
        color, marker = BASELINE_STYLE.get(name, ("tab:gray", "d"))
        fixed = any(b.get("note") for bs in by_x.values() for b in bs)
        per_batch = any(b.get("latency_of") == "batch" for bs in by_x.values() for b in bs)
        for ax, key in zip(axes, keys, strict=True):
            pts = [
                (at, _median([float(b[key]) for b in bs if b.get(key)]))
                for at, bs in sorted(by_x.items())
                if any(b.get(key) for b in bs)
            ]
            if not pts:
                continue
            label = f"{name}{' (100 B payload)' if fixed and name == 'C' else ''}"
            if key == "p99_ms":
                label = f"{name} p99{' (per batch)' if per_batch else ''}"
            if horizontal:
                ax.axhline(pts[0][1], color=color, linestyle=":", label=label)
            else:
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, color=color, marker=marker, linestyle=":", label=label)


def timeline_plots(lines: Iterable[dict[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    """One throughput + latency over time PNG per run; returns the files written."""
    seconds: dict[int, list[dict[str, Any]]] = {}
    summaries: dict[int, dict[str, Any]] = {}
    for line in lines:
        run = int(line.get("run", 0))
        if line.get("type") == "second":
            seconds.setdefault(run, []).append(line)
        elif line.get("type") == "summary":
            summaries[run] = line
    if not seconds:
        raise PlotError('no per-second lines ("type": "second") to plot')
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for run, rows in sorted(seconds.items()):
        rows.sort(key=lambda r: float(r.get("t_s", 0)))
        t = [float(r.get("t_s", 0)) for r in rows]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        ax1.plot(t, [float(r.get("items_s") or 0) for r in rows], marker="o", ms=3)
        ax1.set_ylabel("acked items/s")
        ax1.set_ylim(bottom=0)
        ax1.grid(True, alpha=0.3)
        summary = summaries.get(run)
        ax1.set_title(_label(summary, run), fontsize=9)
        has_latency = False
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            pts = [(x, float(r[key])) for x, r in zip(t, rows, strict=True) if r.get(key)]
            if pts:
                has_latency = True
                ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=key[:-3])
        if has_latency:
            _plain_log_y(ax2)
            ax2.legend(fontsize=8)
        ax2.set_ylabel("latency (ms)")
        ax2.set_xlabel("second of the measured window")
        ax2.grid(True, alpha=0.3, which="both")
        fig.tight_layout()
        path = out_dir / f"{stem}-run{run}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def sweep_plot(lines: Sequence[dict[str, Any]], x: str, out_dir: Path, stem: str) -> Path:
    """Throughput, latency and CPU per item of the summary lines against ``x``."""
    if x not in SWEEP_X:
        raise PlotError(f"--x must be one of {', '.join(SWEEP_X)}")
    rows = [
        r
        for r in lines
        if r.get("type") == "summary" and r.get("mode") == "enqueue" and r.get(x) is not None
    ]
    if not rows:
        raise PlotError('no enqueue summary lines ("type": "summary") to plot')
    rows.sort(key=lambda r: float(r[x]))
    xs = [float(r[x]) for r in rows]
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax1.plot(xs, [float(r.get("items_s") or 0) for r in rows], marker="o", label="pxq")
    ax1.set_ylabel("acked items/s")
    if x == "payload_bytes":
        ax1b = ax1.twinx()
        mbs = [float(r.get("items_s") or 0) * float(r[x]) / 1e6 for r in rows]
        ax1b.plot(xs, mbs, marker="x", color="tab:gray", linestyle="--")
        ax1b.set_ylabel("payload MB/s", color="tab:gray")
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        pts = [(a, float(r[key])) for a, r in zip(xs, rows, strict=True) if r.get(key)]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key[:-3])
    ax2.set_ylabel("latency (ms)")
    cpu = [
        (a, float(r["cpu_us_per_item"]))
        for a, r in zip(xs, rows, strict=True)
        if r.get("cpu_us_per_item")
    ]
    if cpu:
        ax3.plot([p[0] for p in cpu], [p[1] for p in cpu], marker="o", label="pxq")
    baselines = _baseline_points(lines, x, rows)
    _draw_baselines((ax1, ax2, ax3), baselines, horizontal=x == "groups")
    ax1.set_ylim(bottom=0)  # after every line: a set limit stops autoscaling to later ones
    if cpu or baselines:
        _plain_log_y(ax3)
    _plain_log_y(ax2)
    # A legend where it tells lines apart: latency always has several; the others with C/R.
    for ax in (ax2, ax1, ax3) if baselines else (ax2,):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax3.set_ylabel("CPU µs per item (all processes)")
    ax3.set_xlabel(X_LABELS[x])
    for ax in (ax1, ax2, ax3):
        ax.grid(True, alpha=0.3, which="both")
        if len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 10:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sorted(set(xs)))  # the swept values, not 1.2, 1.4 between 1 and 2 groups
    load = [r.get("loadavg_before", [None])[0] for r in rows if r.get("loadavg_before")]
    note = f"1-min load {min(load)}-{max(load)}" if load else ""
    ax1.set_title(f"pxq bench sweep over {X_LABELS[x]} ({len(rows)} runs) {note}", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"{stem}-sweep-{x}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def groups_plot(lines: Iterable[dict[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    """Lag and owners per queue over time from ``pxq groups --watch --json`` samples, one PNG
    per (consumer group, topic); returns the files written."""
    samples = sorted(
        (line for line in lines if line.get("type") == "groups"),
        key=lambda line: int(line.get("t_ms", 0)),
    )
    if not samples:
        raise PlotError('no pxq groups samples ("type": "groups") to plot')
    t0 = int(samples[0]["t_ms"])
    series: dict[tuple[str, str], dict[int, list[tuple[float, int, str]]]] = {}
    for sample in samples:
        t = (int(sample["t_ms"]) - t0) / 1000
        for row in sample.get("rows", []):
            lanes = series.setdefault((str(row["group"]), str(row["topic"])), {})
            lanes.setdefault(int(row["queue"]), []).append(
                (t, int(row["lag"]), str(row.get("owner") or ""))
            )
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (group, topic), lanes in sorted(series.items()):
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
        for queue, pts in sorted(lanes.items()):
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], label=f"queue {queue}", lw=1.2)
        ax1.set_ylabel("lag (items)")
        ax1.set_ylim(bottom=0)
        ax1.grid(True, alpha=0.3)
        ax1.legend(fontsize=7, ncol=4)
        ax1.set_title(f"pxq groups: {group} on {topic} ({len(samples)} samples)", fontsize=9)
        owners = sorted({p[2] for pts in lanes.values() for p in pts if p[2]})
        colors = {o: plt.get_cmap("tab10")(i % 10) for i, o in enumerate(owners)}
        for queue, pts in sorted(lanes.items()):
            for (t, _, owner), nxt in zip(pts, [*pts[1:], None], strict=True):
                if owner and nxt is not None:
                    ax2.broken_barh([(t, nxt[0] - t)], (queue - 0.4, 0.8), color=colors[owner])
        for owner in owners:
            ax2.plot([], [], color=colors[owner], lw=6, label=owner)
        if owners:
            ax2.legend(fontsize=7, loc="upper right")
        ax2.set_yticks(sorted(lanes))
        ax2.set_ylabel("queue: owner (blank: none)")
        ax2.set_xlabel("seconds since the first sample")
        ax2.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{stem}-{group}-{topic}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


CDF_TAGS: Final = {
    "inflight": "in flight",
    "payload_bytes": "bytes",
    "groups": "groups",
    "inflight_batches": "batches",
}
"""The run tags a CDF curve is labelled with (those that differ between the file's runs; all
of them when they do not)."""


def _tags_label(line: dict[str, Any], varying: Sequence[str]) -> str:
    shown = [k for k in CDF_TAGS if k in varying] or list(CDF_TAGS)
    parts = [f"{CDF_TAGS[k]}={line.get(k)}" for k in shown if line.get(k) is not None]
    return f"run {line.get('run', '?')}: {', '.join(parts)}"


def cdf_plot(lines: Sequence[dict[str, Any]], out_dir: Path, stem: str) -> Path:
    """One latency CDF per ``"type": "latency"`` line (x: latency ms, log scale), and the
    tail 1 - F (log) of the same runs below; returns the file written."""
    runs = [
        line
        for line in lines
        if line.get("type") == "latency" and line.get("count") and line.get("quantiles_ms")
    ]
    if not runs:
        raise PlotError('no latency lines ("type": "latency", from pxq bench) to plot')
    varying = [k for k in CDF_TAGS if len({repr(r.get(k)) for r in runs}) > 1]
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for run in runs:
        fractions = [0.0, *(float(f) for f in run["fractions"]), 1.0]
        ms = [float(run["min_ms"]), *(float(q) for q in run["quantiles_ms"]), float(run["max_ms"])]
        label = f"{_tags_label(run, varying)} ({int(run['count']):,} acks)"
        (curve,) = ax1.plot(ms, fractions, label=label)
        # The tail: the share of acks slower than x, as far as the run's count resolves it
        # (of 900 acks, the 0.9995 quantile is the max: no ack is known to be slower).
        count = int(run["count"])
        tail = [(m, 1 - f) for m, f in zip(ms, fractions, strict=True) if (1 - f) * count >= 1]
        ax2.plot([t[0] for t in tail], [t[1] for t in tail], color=curve.get_color())
    ax1.set_ylabel("fraction of acks ≤ x")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7)
    ax1.set_title(f"pxq bench: enqueue ack latency, {len(runs)} run(s)", fontsize=9)
    ax2.set_yscale("log")
    ax2.set_ylabel("fraction of acks > x")
    ax2.set_xlabel("ack latency (ms)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        # 1, 2, 5 per decade: a run's latencies often span less than one decade.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    path = out_dir / f"{stem}-cdf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
