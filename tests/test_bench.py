"""``pxq bench`` and ``pxq plot`` end to end, on a cluster the bench starts itself.

Behaviours checked: a short closed-loop run (``--start-cluster``, 2 s, 4 in flight) writes
valid JSON lines: a machine line, one line per measured second and a summary with the
documented fields (throughput, latency percentiles, CPU seconds of every node and of the
bench, CPU µs per item); a short drain run reports the drained count and the items per Get
it was given; the RSS mode samples every node's RssAnon before the fill and at each mark and
reports the growth per million items; ``pxq plot`` writes PNG files for a timeline and for a
sweep; bad arguments exit 2; the baselines are skipped with a note when their tools are
absent. Every enqueue run writes a latency line (nearest-rank quantiles of its acks, checked
against known latencies) that ``pxq plot --cdf`` draws, and a file without one is an error
(exit 1). The baselines (their runners faked: the real ones need Redis and uvloop) run once per
(in flight, payload) shape of the runs, each line carrying its shape, R with one client per
call in flight; each ratios line divides by the baselines of its own shape; the sweep plot
picks the baselines of the runs' shapes. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from net.tools import baselines
from net.tools.bench import rss_growth
from net.tools.measure import (
    LATENCY_FRACTIONS,
    latency_fields,
    latency_quantiles,
    percentile,
    proc_cpu_s,
    proc_status_kb,
)
from net.tools.plot import PlotError, _baseline_points, cdf_plot, sweep_plot

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 90.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECOND_FIELDS = {"type", "run", "t_s", "items", "items_s", "p50_ms", "p99_ms", "p999_ms"}
SUMMARY_FIELDS = {
    "type",
    "run",
    "mode",
    "inflight",
    "payload_bytes",
    "groups",
    "acked",
    "errors",
    "items_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "cpu_s",
    "cpu_s_total",
    "cpu_us_per_item",
    "loadavg_before",
    "loadavg_after",
    "node_pids",
    "fsync_probe_p50_ms",
}


def pxq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "run.jsonl"
    r = pxq(
        "bench",
        "--start-cluster",
        "--duration-s",
        "2",
        "--warmup-s",
        "0.5",
        "--inflight",
        "4",
        "--no-progress",
        "--out",
        str(out),
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_bench_writes_second_and_summary_lines(bench_out: Path) -> None:
    lines = read_jsonl(bench_out)
    assert lines[0]["type"] == "machine"
    assert lines[0]["nproc"] >= 1 and len(lines[0]["loadavg"]) == 3
    seconds = [x for x in lines if x["type"] == "second"]
    summaries = [x for x in lines if x["type"] == "summary"]
    assert [s["t_s"] for s in seconds] == [1, 2]
    for s in seconds:
        assert s.keys() >= SECOND_FIELDS
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary.keys() >= SUMMARY_FIELDS
    assert summary["mode"] == "enqueue" and summary["inflight"] == 4
    assert summary["acked"] > 0 and summary["errors"] == 0
    assert summary["acked"] == sum(s["items"] for s in seconds)
    assert set(summary["cpu_s"]) == {*summary["node_pids"], "bench"}
    assert len(summary["node_pids"]) == 3
    assert summary["cpu_us_per_item"] > 0
    (latency,) = [x for x in lines if x["type"] == "latency"]
    assert latency["run"] == summary["run"] and latency["inflight"] == 4
    assert latency["count"] == summary["acked"]
    assert latency["fractions"] == list(LATENCY_FRACTIONS)
    quantiles = latency["quantiles_ms"]
    assert quantiles == sorted(quantiles) and len(quantiles) == len(LATENCY_FRACTIONS)
    # The same nearest-rank rule as the summary's percentiles, over the same acks.
    assert quantiles[latency["fractions"].index(0.5)] == summary["p50_ms"]
    assert quantiles[latency["fractions"].index(0.99)] == summary["p99_ms"]
    assert latency["max_ms"] == summary["max_ms"] and latency["min_ms"] <= quantiles[0]


def test_plot_cdf_writes_png(bench_out: Path, tmp_path: Path) -> None:
    r = pxq("plot", "--cdf", str(bench_out), "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "run-cdf.png")]
    assert (tmp_path / "run-cdf.png").read_bytes().startswith(PNG_MAGIC)
    no_latency = tmp_path / "old.jsonl"
    no_latency.write_text(
        "".join(
            line + "\n" for line in bench_out.read_text().splitlines() if '"latency"' not in line
        )
    )
    r = pxq("plot", "--cdf", str(no_latency), "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 1 and "no latency lines" in r.stderr


def test_plot_timeline_writes_png(bench_out: Path, tmp_path: Path) -> None:
    r = pxq("plot", str(bench_out), "--out", str(tmp_path / "plots"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = [Path(p) for p in r.stdout.split()]
    assert written and all(p.read_bytes().startswith(PNG_MAGIC) for p in written)


def test_plot_sweep_writes_png(bench_out: Path, tmp_path: Path) -> None:
    summary = next(x for x in read_jsonl(bench_out) if x["type"] == "summary")
    sweep = tmp_path / "sweep.jsonl"
    with sweep.open("w") as f:
        for n, inflight in enumerate((1, 10, 100)):
            f.write(json.dumps({**summary, "run": n, "inflight": inflight}) + "\n")
    r = pxq("plot", "--sweep", str(sweep), "--x", "inflight", "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    png = tmp_path / "sweep-sweep-inflight.png"
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_drain_reports_drained_items(tmp_path: Path) -> None:
    out = tmp_path / "drain.jsonl"
    r = pxq(
        "bench",
        "--start-cluster",
        "--drain",
        "300",
        "--get-items",
        "70",
        "--inflight",
        "50",
        "--duration-s",
        "1",
        "--no-progress",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    summary = next(x for x in read_jsonl(out) if x["type"] == "summary")
    assert summary["mode"] == "drain"
    assert summary["filled"] == 300
    assert summary["drained"] >= 300
    assert summary["get_items"] == 70
    assert not summary["timed_out"]


def test_rss_mode_samples_every_node_at_each_mark(tmp_path: Path) -> None:
    out = tmp_path / "rss.jsonl"
    r = pxq(
        "bench",
        "--start-cluster",
        "--rss",
        "200,600",
        "--inflight",
        "20",
        "--no-progress",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = read_jsonl(out)
    samples = [x for x in lines if x["type"] == "rss"]
    assert [(x["mark"], x["enqueued"]) for x in samples] == [(0, 0), (200, 200), (600, 600)]
    summary = next(x for x in lines if x["type"] == "summary")
    for x in samples:
        assert set(x["nodes"]) == set(summary["node_pids"])
        assert all(v["RssAnon"] > 0 for v in x["nodes"].values())
    assert summary["mode"] == "rss" and summary["enqueued"] == 600 and not summary["timed_out"]
    assert summary["from_mark"] == 200 and summary["items_between"] == 400
    assert set(summary["rss_anon_growth_kb"]) == set(summary["node_pids"])
    assert "RssAnon growth" in r.stderr


def test_rss_growth_per_million_items() -> None:
    first = {"enqueued": 100_000, "nodes": {"a": {"RssAnon": 1000}, "b": {"RssAnon": 500}}}
    last = {
        "enqueued": 2_100_000,
        "nodes": {"a": {"RssAnon": 1000 + 20 * 1024}, "b": {"RssAnon": 400}, "c": {"RssAnon": 1}},
    }
    g = rss_growth(first, last)
    assert g["rss_anon_growth_kb"] == {"a": 20 * 1024, "b": -100}
    assert g["rss_anon_growth_mb_per_million"]["a"] == 10.0
    assert g["rss_anon_growth_max_mb"] == 20.0 and g["items_between"] == 2_000_000
    own = proc_status_kb(os.getpid())
    assert own is not None and own["RssAnon"] > 0 and set(own) <= {"RssAnon", "RssFile", "VmHWM"}


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--start-cluster", "--inflight", "0"],
        ["bench", "--start-cluster", "--inflight", "a,b"],
        ["bench", "--start-cluster", "--payload-bytes", "0"],
        ["bench", "--start-cluster", "--duration-s", "0"],
        ["bench", "--groups", "2"],
        ["bench", "--config", "missing.toml"],
        ["bench", "--start-cluster", "--drain", "10", "--inflight", "1,2"],
        ["bench", "--start-cluster", "--get-items", "10"],
        ["bench", "--start-cluster", "--drain", "10", "--get-items", "0"],
        ["bench", "--start-cluster", "--rss", "500,100"],
        ["bench", "--start-cluster", "--rss", "100", "--drain", "10"],
        ["plot"],
        ["plot", "--sweep", "missing.jsonl"],
        ["plot", "--cdf", "missing.jsonl"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], tmp_path: Path) -> None:
    r = pxq(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)


def test_plot_of_nothing_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"type": "machine"}\n')
    assert pxq("plot", str(empty), cwd=tmp_path).returncode == 1


def test_baselines_skip_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PXQ_LIMITS_DIR", str(tmp_path / "absent"))
    c = baselines.baseline_c(200, 100, 1.0)
    assert "absent" in c["skipped"]
    monkeypatch.setattr("net.tools.baselines.shutil.which", lambda _name: None)
    r = baselines.baseline_r(200, 100, 1.0)
    assert "apt-get install -y redis-server" in r["skipped"]
    lines: list[dict[str, Any]] = []
    summary = {"mode": "enqueue", "run": 0, "inflight": 200, "payload_bytes": 100, "items_s": 1.0}
    baselines.run_baselines([summary], 1.0, lines.append, lambda _t: None)
    ratios = lines[-1]
    assert ratios["type"] == "ratios" and ratios["pxq_over_c"] is None


def test_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert latency_fields([])["p50_ms"] is None
    assert latency_fields([0.001])["p999_ms"] == 1.0
    assert baselines.c_shape(200) == (100, 2)
    assert baselines.c_shape(1) == (1, 1)
    assert proc_cpu_s(os.getpid()) is not None


def test_the_c_baseline_is_looked_for_beside_the_repository(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PXQ_LIMITS_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert baselines.limits_dir() == repo.parent / "shared" / "reference" / "limits"
    monkeypatch.setenv("PXQ_LIMITS_DIR", "/elsewhere")
    assert baselines.limits_dir() == Path("/elsewhere")


def test_latency_quantiles_of_known_latencies() -> None:
    q = latency_quantiles([ms / 1000 for ms in range(2000, 0, -1)])  # 1..2000 ms, shuffled
    at = dict(zip(q["fractions"], q["quantiles_ms"], strict=True))
    assert q["count"] == 2000 and q["min_ms"] == 1.0 and q["max_ms"] == 2000.0
    assert at[0.001] == 2.0 and at[0.5] == 1000.0 and at[0.99] == 1980.0
    assert at[0.3] == 600.0  # 0.3 * 2000 is 600.0000000000001 in binary: still rank 600
    assert at[0.9995] == 1999.0 and at[0.9999] == 2000.0
    one = latency_quantiles([0.004])
    assert set(one["quantiles_ms"]) == {4.0} and one["count"] == 1
    none = latency_quantiles([])
    assert none["count"] == 0 and set(none["quantiles_ms"]) == {None}
    with pytest.raises(PlotError, match="no latency lines"):
        cdf_plot([{"type": "latency", "run": 0, **none}], Path("unused"), "x")


def fake_baselines(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Replace the C and R runners by fakes whose items/s encode their shape; returns the
    calls made."""
    calls: list[tuple[str, int, int]] = []

    def c(inflight: int, payload: int, _duration_s: float) -> dict[str, Any]:
        calls.append(("C", inflight, payload))
        line = {"type": "baseline", "name": "C", "inflight": inflight, "payload_bytes": payload}
        return {**line, "items_s": 1000.0 * inflight, "cpu_us_per_item": 9.0}

    def r(inflight: int, payload: int, _duration_s: float) -> dict[str, Any]:
        calls.append(("R", inflight, payload))
        line = {"type": "baseline", "name": "R", "inflight": inflight, "payload_bytes": payload}
        clients = baselines.r_clients(inflight)
        return {**line, "clients": clients, "items_s": 500.0 * inflight + payload}

    monkeypatch.setattr(baselines, "baseline_c", c)
    monkeypatch.setattr(baselines, "baseline_r", r)
    return calls


def enqueue_summary(run: int, inflight: int, payload: int = 100, groups: int = 1) -> dict[str, Any]:
    return {
        "type": "summary",
        "mode": "enqueue",
        "run": run,
        "inflight": inflight,
        "payload_bytes": payload,
        "groups": groups,
        "items_s": 100.0 * inflight,
    }


def test_baselines_run_once_per_shape_and_ratios_use_their_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_baselines(monkeypatch)
    # An in-flight sweep, an inflight-batches repeat of one shape, and a second payload.
    runs = [enqueue_summary(0, 10), enqueue_summary(1, 200), enqueue_summary(2, 200)]
    runs.append(enqueue_summary(3, 10, payload=4096))
    lines: list[dict[str, Any]] = []
    baselines.run_baselines(runs, 1.0, lines.append, lambda _t: None)
    shapes = [(10, 100), (200, 100), (10, 4096)]
    assert calls == [(n, i, p) for i, p in shapes for n in ("C", "R")]
    base = [x for x in lines if x["type"] == "baseline"]
    assert [(x["name"], x["inflight"], x["payload_bytes"]) for x in base] == calls
    ratios = [x for x in lines if x["type"] == "ratios"]
    assert [x["run"] for x in ratios] == [0, 1, 2, 3]
    for x, run in zip(ratios, runs, strict=True):
        assert (x["inflight"], x["payload_bytes"]) == (run["inflight"], run["payload_bytes"])
        assert x["c_items_s"] == 1000.0 * run["inflight"] and x["pxq_over_c"] == 0.1
        assert x["r_items_s"] == 500.0 * run["inflight"] + run["payload_bytes"]
        assert x["r_clients"] == run["inflight"]
    assert ratios[3]["pxq_over_r"] == round(1000 / (5000 + 4096), 3)


def test_a_groups_sweep_has_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_baselines(monkeypatch)
    runs = [enqueue_summary(n, 200, groups=g) for n, g in enumerate((1, 4, 16))]
    lines: list[dict[str, Any]] = []
    baselines.run_baselines(runs, 1.0, lines.append, lambda _t: None)
    assert calls == [("C", 200, 100), ("R", 200, 100)]
    assert [x["pxq_over_c"] for x in lines if x["type"] == "ratios"] == [0.1, 0.1, 0.1]
    drain = {**enqueue_summary(0, 500), "mode": "drain"}
    assert baselines.shapes_of([drain]) == [(500, 100)]
    assert baselines.shapes_of([]) == [(200, 100)]


def test_baseline_lines_state_their_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PXQ_LIMITS_DIR", str(tmp_path / "absent"))
    c = baselines.baseline_c(50, 4096, 1.0)
    assert (c["inflight"], c["payload_bytes"], c["prototype_payload_bytes"]) == (50, 4096, 100)
    assert "fixed at 100 B (pxq ran 4096 B)" in c["note"]
    assert "note" not in baselines.baseline_c(50, 100, 1.0)
    monkeypatch.setattr("net.tools.baselines.shutil.which", lambda _name: None)
    r = baselines.baseline_r(10, 100, 1.0)
    assert (r["inflight"], r["payload_bytes"], r["clients"]) == (10, 100, 10)
    assert "note" not in r
    many = baselines.baseline_r(10_000, 100, 1.0)
    assert many["clients"] == baselines.R_CLIENTS_MAX and "not 10000" in many["note"]
    monkeypatch.setattr("net.tools.baselines.resource.getrlimit", lambda _what: (1024, 1024))
    assert baselines.r_clients(5000) == 1024 - baselines.R_FDS_SPARE
    assert baselines.r_clients(1) == 1


def test_sweep_plot_draws_the_baselines_of_the_runs_shapes(tmp_path: Path) -> None:
    runs = [enqueue_summary(n, i) for n, i in enumerate((1, 10, 100))]
    base: list[dict[str, Any]] = []
    for inflight, payload in ((1, 100), (10, 100), (100, 100), (100, 4096)):
        for name in ("C", "R"):
            line = {"type": "baseline", "name": name, "inflight": inflight}
            base.append({**line, "payload_bytes": payload, "items_s": float(inflight)})
    base.append({"type": "baseline", "name": "R", "inflight": 10, "skipped": "no redis"})
    points = _baseline_points([*runs, *base], "inflight", runs)
    assert {n: sorted(v) for n, v in points.items()} == {"C": [1, 10, 100], "R": [1, 10, 100]}
    assert all(len(v) == 1 for by_x in points.values() for v in by_x.values())
    by_groups = [enqueue_summary(n, 100, groups=g) for n, g in enumerate((1, 2))]
    flat = _baseline_points([*by_groups, *base], "groups", by_groups)
    assert {n: list(v) for n, v in flat.items()} == {"C": [0.0], "R": [0.0]}
    assert [b["payload_bytes"] for b in flat["C"][0.0]] == [100]
    for x, rows in (("inflight", runs), ("groups", by_groups)):
        png = sweep_plot([*rows, *base], x, tmp_path, "b")
        assert png.read_bytes().startswith(PNG_MAGIC)
