"""The run record (``net.jepsen.record``): the nemesis timeline's pairing of actions into fault
windows, the files of a record (a synthetic history with every outcome, an empty one), where a
failed check is marked, and ``pxq sim run --record`` (every file, the node lanes, the
violation mark of a negative control, the trace digest unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from net.jepsen.record import RECORD_FILES, timeline, violation_marks, write_record
from pxq.check.history import JSON, NEMESIS, HistoryWriter, Op
from pxq.check.models import check_history
from pxq.check.result import CheckResult
from pxq.cli import main
from sim import runner, scenario
from sim.lanes import NodeLanes
from sim.world import World

PNG = b"\x89PNG\r\n\x1a\n"


def nemesis_history(actions: list[tuple[int, str, JSON]]) -> list[Op]:
    """Nemesis ops (invoke, then info 5 ms later) for ``(time_ms, f, value)`` actions."""
    h = HistoryWriter()
    for t, f, value in actions:
        h.invoke(t, NEMESIS, f, value)
        h.info(t + 5, NEMESIS, f, value)
    return h.ops


def spans(
    ops: list[Op], end_ms: int = 10_000
) -> list[tuple[str, tuple[str, ...], int, int, str | None]]:
    tl = timeline(ops, start_ms=0, end_ms=end_ms)
    return [(w.f, w.nodes, w.start_ms, w.end_ms, w.ended_by) for w in tl.windows]


# -- the timeline -------------------------------------------------------------------------------


def test_kill_pause_partition_and_clock_windows_end_at_their_undoing() -> None:
    ops = nemesis_history(
        [
            (100, "kill", "n1"),
            (200, "pause", ["n2"]),
            (300, "partition", [["n0", "n1"], ["n1", "n0"]]),
            (400, "clock", {"node": "n0", "offset_ms": 5000}),
            (1000, "start", "n1"),
            (1100, "resume", "n2"),
            (1200, "heal", None),
            (1300, "clock", {"node": "n0", "offset_ms": 0}),
        ]
    )
    assert spans(ops) == [
        ("kill", ("n1",), 100, 1005, "start"),
        ("pause", ("n2",), 200, 1105, "resume"),
        ("partition", ("n0", "n1"), 300, 1205, "heal"),
        ("clock", ("n0",), 400, 1305, "clock"),
    ]
    assert timeline(ops).events == ()


def test_a_start_ends_only_the_kill_of_the_node_it_names() -> None:
    ops = nemesis_history([(100, "kill", ["n0", "n1"]), (500, "start", ["n0"])])
    assert spans(ops, end_ms=9000) == [
        ("kill", ("n0",), 100, 505, "start"),
        ("kill", ("n1",), 100, 9000, None),
    ]


def test_unfinished_windows_end_at_the_end_of_the_run_and_a_new_clock_offset_ends_the_last() -> (
    None
):
    ops = nemesis_history(
        [
            (100, "partition", ["n2"]),
            (200, "clock", {"node": "n1", "offset_ms": -300}),
            (700, "clock", {"node": "n1", "offset_ms": 800}),
            (800, "disk-full", "n0"),
        ]
    )
    assert spans(ops, end_ms=5000) == [
        ("partition", ("n2",), 100, 5000, None),
        ("clock", ("n1",), 200, 705, "clock"),
        ("clock", ("n1",), 700, 5000, None),
        ("disk-full", ("n0",), 800, 5000, None),
    ]
    # Without an end given, the run ends with the last nemesis action.
    assert timeline(ops).end_ms == 805


def test_overlapping_nemesis_actions_pair_by_f_and_value() -> None:
    h = HistoryWriter()
    h.invoke(100, NEMESIS, "kill", ["n0"])
    h.invoke(110, NEMESIS, "pause", ["n1"])
    h.info(150, NEMESIS, "pause", ["n1"])
    h.invoke(160, NEMESIS, "kill", ["n2"])
    h.info(170, NEMESIS, "kill", ["n2"])
    h.info(400, NEMESIS, "kill", ["n0"])
    h.invoke(500, NEMESIS, "start", ["n0", "n2"])  # never completed: done as it started
    assert spans(h.ops, end_ms=900) == [
        ("kill", ("n0",), 100, 500, "start"),
        ("pause", ("n1",), 110, 900, None),
        ("kill", ("n2",), 160, 500, "start"),
    ]


def test_a_clock_offset_may_be_a_field_of_the_op() -> None:
    h = HistoryWriter()
    for t, offset in ((100, 2500), (900, 0)):
        h.invoke(t, NEMESIS, "clock", "n2", offset_ms=offset)
        h.info(t + 1, NEMESIS, "clock", "n2", offset_ms=offset)
    assert spans(h.ops) == [("clock", ("n2",), 100, 901, "clock")]


def test_clock_actions_of_node_offset_pairs_set_each_node_apart() -> None:
    ops = nemesis_history(
        [
            (100, "clock", [["n0", 4000], ["n1", -2500]]),
            (600, "clock", [["n1", 0]]),
            (900, "clock", [["n0", 0]]),
        ]
    )
    assert spans(ops) == [
        ("clock", ("n1",), 100, 605, "clock"),
        ("clock", ("n0",), 100, 905, "clock"),
    ]


def test_the_simulators_vocabulary_pairs_too_and_heal_all_ends_everything() -> None:
    h = HistoryWriter()
    actions: list[tuple[int, str, JSON, dict[str, JSON]]] = [
        (100, "crash", ["n0"], {}),
        (150, "disk", ["n1"], {"disk_fault": "bitflip"}),
        (160, "disk", ["n2"], {"disk_fault": "lying_fsync"}),
        (200, "restart", ["n0"], {}),
        (300, "clog", ["n1"], {"peers": "n2"}),
        (400, "wait", [], {"fault": "faults[3]"}),
        (500, "heal_all", [], {}),
    ]
    for t, f, value, extra in actions:
        h.invoke(t, NEMESIS, f, value, **extra)
        h.info(t, NEMESIS, f, value, **extra)
    tl = timeline(h.ops, start_ms=0, end_ms=900)
    assert [(w.f, w.nodes, w.start_ms, w.end_ms, w.ended_by) for w in tl.windows] == [
        ("crash", ("n0",), 100, 200, "restart"),
        ("disk", ("n2",), 160, 500, "heal_all"),
        ("clog", ("n1",), 300, 500, "heal_all"),
    ]
    assert [(e.f, e.time_ms) for e in tl.events] == [("disk", 150), ("wait", 400)]


# -- marks ------------------------------------------------------------------------------------


def test_a_failed_check_is_marked_at_the_first_op_it_names_and_a_passed_one_not() -> None:
    h = HistoryWriter()
    for t in range(5):
        h.invoke(100 * t, t, "enqueue", f"m{t}")
        h.ok(100 * t + 7, t, "enqueue", f"m{t}")
    lost = CheckResult(
        name="total-queue",
        ok=False,
        summary="total-queue: FAILED, 2 lost",
        details={"lost": 2, "lost-examples": [{"enqueue_index": 6}, {"enqueue_index": 4}]},
    )
    fine = CheckResult(name="order", ok=True, summary="ok", details={"examples": [{"index": 0}]})
    timed = CheckResult(
        name="availability",
        ok=False,
        summary="gap",
        details={"gaps": 1, "gaps-examples": [{"from_ms": 250}]},
    )
    assert violation_marks(h.ops, [("total_queue", lost), ("order", fine), ("avail", timed)]) == [
        (200, "total_queue"),
        (250, "avail"),
    ]


# -- the files --------------------------------------------------------------------------------


def synthetic_history() -> list[Op]:
    """Every outcome (ok, fail, info, an invoke never completed) of two ``f``s, and a node
    killed and started again while they run."""
    h = HistoryWriter()
    h.invoke(1_000, 0, "enqueue", "a")
    h.ok(1_012, 0, "enqueue", "a")
    h.invoke(1_020, 1, "read", None)
    h.fail(1_500, 1, "read", None)
    h.invoke(1_600, NEMESIS, "kill", "n0")
    h.info(1_605, NEMESIS, "kill", "n0")
    h.invoke(2_000, 0, "enqueue", "b")
    h.info(4_000, 0, "enqueue", "b")
    h.invoke(2_500, NEMESIS, "start", "n0")
    h.info(2_700, NEMESIS, "start", "n0")
    h.invoke(3_000, 2, "enqueue", "c")
    h.ok(3_000, 2, "enqueue", "c")
    h.invoke(4_100, 3, "read", None)  # never completed
    return h.ops


def register_failure() -> CheckResult:
    """A real linearizability failure with its counterexample (a read of a value never
    written)."""
    h = HistoryWriter()
    h.invoke(0, 0, "write", 1)
    h.ok(1, 0, "write", 1)
    h.invoke(2, 1, "read", None)
    h.ok(3, 1, "read", 2)
    report = check_history(h.ops, "register", max_steps=10_000)
    (result,) = [c for c in report.checks if not c.ok]
    return result


def test_a_record_of_every_outcome_and_a_fault_window_writes_every_file(tmp_path: Path) -> None:
    ops = synthetic_history()
    failure = register_failure()
    passed = CheckResult(name="total-queue", ok=True, summary="total-queue: ok", details={})
    run_dir = tmp_path / "run"
    written = write_record(
        run_dir, ops, [passed, failure.to_json()], title="synthetic", summary="the table\n"
    )
    for name in RECORD_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / "nodes.png").exists()  # no lanes given
    for name in ("latency.png", "rate.png"):
        assert (run_dir / name).read_bytes().startswith(PNG)
    assert (run_dir / "summary.txt").read_text() == "the table\n"
    svg = run_dir / f"failure-{failure.name}.svg"
    assert svg in written and svg.read_text().startswith("<svg")
    html = (run_dir / "index.html").read_text()
    for ref in ("latency.png", "rate.png", svg.name, "the table", "FAILED"):
        assert ref in html
    results = json.loads((run_dir / "results.json").read_text())
    assert [c["name"] for c in results["checks"]] == ["total-queue", failure.name]
    assert results["ok"] is False
    assert results["failure_pictures"] == [svg.name]
    tl = json.loads((run_dir / "timeline.json").read_text())
    assert [(w["f"], w["start_ms"], w["end_ms"], w["ended_by"]) for w in tl["windows"]] == [
        ("kill", 1600, 2700, "start")
    ]
    assert (tl["start_ms"], tl["end_ms"]) == (1000, 4100)
    assert (run_dir / "history.jsonl").read_text().count("\n") == len(ops)


def test_an_empty_history_without_nemesis_still_makes_a_record(tmp_path: Path) -> None:
    lanes = {"n0": [(0, 500, "up")], "n1": []}
    write_record(tmp_path, [], [], title="nothing", node_lanes=lanes)
    assert (tmp_path / "history.jsonl").read_text() == ""
    for name in (*RECORD_FILES, "nodes.png"):
        if name != "history.jsonl":
            assert (tmp_path / name).stat().st_size > 0, name
    summary = (tmp_path / "summary.txt").read_text()
    assert "operations: 0" in summary and "fault windows: 0 (none)" in summary
    assert json.loads((tmp_path / "timeline.json").read_text())["windows"] == []


def test_nemesis_ops_given_apart_are_written_and_drawn(tmp_path: Path) -> None:
    nemesis = nemesis_history([(1_100, "pause", "n1"), (1_900, "resume", "n1")])
    write_record(tmp_path, synthetic_history()[:4], [], title="t", nemesis_ops=nemesis)
    assert (tmp_path / "nemesis.jsonl").read_text().count("\n") == 4
    tl = json.loads((tmp_path / "timeline.json").read_text())
    assert [w["f"] for w in tl["windows"]] == ["pause"]


# -- simulated runs -----------------------------------------------------------------------------


def test_node_lanes_follow_partitions_and_masters_without_moving_the_digest() -> None:
    scn = scenario.load(Path("scenarios/lock-master-partition.toml"))
    plain = runner.run(scn, 1)
    seen: list[NodeLanes] = []

    def observe(world: World) -> None:
        seen.append(NodeLanes(world))

    observed = runner.run(scn, 1, observe=observe)
    assert observed.trace_digest == plain.trace_digest
    lanes = seen[0].close()
    assert sorted(lanes) == ["n0", "n1", "n2"]
    states = {s for node in lanes.values() for _, _, s in node}
    assert {"up", "cut", "master:0"} <= states
    # The first partition (2.0 s to 5.0 s) cuts off the master of the time.
    cut_at_2s = [n for n, node in lanes.items() if (2000, 5000, "cut") in node]
    assert len(cut_at_2s) == 1
    (master,) = cut_at_2s
    assert any(s == "master:0" and a < 2000 <= b for a, b, s in lanes[master])
    for node in lanes.values():  # up covers the run, nobody crashed
        ups = [(a, b) for a, b, s in node if s == "up"]
        assert ups == [(0, observed.sim_time_ms)]


def test_sim_run_record_of_a_negative_control_marks_the_violation(tmp_path: Path) -> None:
    path = "scenarios/reply-before-persist.toml"
    plain = runner.run(scenario.load(Path(path)), 1)
    out = tmp_path / "rec"
    history = tmp_path / "h.jsonl"
    result = CliRunner().invoke(
        main,
        [
            "sim",
            "run",
            path,
            "--seed",
            "1",
            "--json",
            "--record",
            str(out),
            "--history",
            str(history),
        ],
    )
    assert result.exit_code == 0, result.output  # the negative control fails as designed
    got = json.loads(result.output)
    assert got["trace_digest"] == plain.trace_digest
    for name in (*RECORD_FILES, "nodes.png"):
        assert (out / name).stat().st_size > 0, name
    assert history.read_text() == (out / "history.jsonl").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["trace_digest"] == plain.trace_digest
    assert results["run"]["ok"] is True and results["ok"] is False
    ((mark),) = [m for m in results["marks"] if m["check"] == "no_loss"]
    assert 1000 < mark["time_ms"] <= 5000  # an append acknowledged before the power cut
    tl = json.loads((out / "timeline.json").read_text())
    assert ("crash", ["n0"], 5000) in [(w["f"], w["nodes"], w["start_ms"]) for w in tl["windows"]]
    assert "FAIL no_loss" in (out / "summary.txt").read_text()


def test_sim_run_record_into_a_file_is_bad_input(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(
        main, ["sim", "run", "scenarios/lock-master-partition.toml", "--record", str(target)]
    )
    assert result.exit_code == 2
