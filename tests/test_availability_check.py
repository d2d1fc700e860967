"""The availability checker (``pxq/check/availability.py``) on constructed histories: it
fails on a stall under a healthy master, and ignores what it must ignore (a stall outside a
healthy window, a lull without demand, calls invoked before the window opened). The election
checker on constructed leaderless windows, and the simulator's windows in a real run."""

from __future__ import annotations

from pathlib import Path

from pxq.check.availability import (
    check_availability,
    check_election,
    election_bound_ms,
    group_load,
)
from pxq.check.history import HistoryWriter, Op


def _history(calls: list[tuple[int, int, int, str]]) -> list[Op]:
    """``(process, invoke_ms, end_ms, outcome)`` appends to group 0, in time order."""
    events: list[tuple[int, int, str, int]] = []
    for process, invoke, end, outcome in calls:
        events.append((invoke, 0, "invoke", process))
        events.append((end, 1, outcome, process))
    w = HistoryWriter()
    for t, _order, kind, process in sorted(events):
        value = f"p{process}-{t}"
        match kind:
            case "invoke":
                w.invoke(t, process, "append", value, group=0)
            case "ok":
                w.ok(t, process, "append", value, group=0)
            case _:
                w.info(t, process, "append", value, group=0)
    return w.ops


def _steady(start: int, end: int, every: int, process: int) -> list[tuple[int, int, int, str]]:
    return [(process, t, t + 5, "ok") for t in range(start, end, every)]


def test_a_stall_under_a_healthy_master_fails_the_check() -> None:
    calls = _steady(0, 1000, 20, 1)
    # Deposed at 1000: calls wait (or time out) until a new master serves at 2100.
    calls += [(1, 1000, 1300, "info"), (2, 1010, 2105, "ok"), (3, 1400, 2110, "ok")]
    calls += _steady(2200, 3000, 20, 4)
    result = check_availability(group_load(_history(calls), "append", 1), {0: [(0, 3000)]})
    assert not result.ok
    # From the first call waiting after the last acknowledgement (985): the one at 1000.
    assert result.details["longest_gap_ms"] == 2105 - 1000
    examples = result.details["gaps-over-bound-examples"]
    assert isinstance(examples, list)
    assert examples == [{"group": 0, "from_ms": 985, "to_ms": 2105, "gap_ms": 1105}]


def test_steady_acknowledgements_pass() -> None:
    calls = _steady(0, 3000, 20, 1)
    result = check_availability(group_load(_history(calls), "append", 1), {0: [(0, 3000)]})
    # Each call waits 5 ms; between calls nobody waits.
    assert result.ok and result.details["longest_gap_ms"] == 5


def test_a_stall_while_the_master_is_unhealthy_does_not_count() -> None:
    calls = [*_steady(0, 1000, 20, 1), (2, 1010, 2105, "ok"), *_steady(2200, 3000, 20, 3)]
    healthy = {0: [(0, 1000), (2150, 3000)]}
    result = check_availability(group_load(_history(calls), "append", 1), healthy)
    assert result.ok, result.summary


def test_a_lull_without_demand_and_calls_from_before_the_window_do_not_count() -> None:
    # Nobody asks between 1000 and 2000: no demand, no unavailability.
    lull = _steady(0, 1000, 20, 1) + _steady(2000, 3000, 20, 2)
    result = check_availability(group_load(_history(lull), "append", 1), {0: [(0, 3000)]})
    assert result.ok, result.summary
    # A call invoked at 500, before the window opened at 900, answered at 1500 after a
    # client backoff: not counted (nobody else waited meanwhile).
    late = [(5, 500, 1500, "ok"), *_steady(900, 1000, 20, 1), *_steady(1500, 2500, 20, 2)]
    result = check_availability(group_load(_history(late), "append", 1), {0: [(900, 2500)]})
    assert result.ok, result.summary


def test_nothing_measured_fails() -> None:
    result = check_availability(group_load([], "append", 1), {0: [(0, 3000)]})
    assert not result.ok and result.details["nothing-measured"] == 1


def test_election_bound_is_two_leases_and_a_second() -> None:
    assert election_bound_ms(1000) == 3000


def test_a_long_stretch_without_a_master_fails_the_election_check() -> None:
    ok = check_election({0: [(0, 1100), (3000, 4400)], 1: [(0, 1050)]}, bound_ms=3000)
    assert ok.ok and ok.details["longest_ms"] == 1400 and ok.details["stretches"] == 3
    bad = check_election({0: [(0, 1100)], 1: [(0, 1050), (3300, 7000)]}, bound_ms=3000)
    assert not bad.ok and bad.details["leaderless-over-bound"] == 1
    none = check_election({0: [], 1: []}, bound_ms=3000)
    assert not none.ok and none.details["nothing-measured"] == 1


def test_the_simulator_measures_the_failover_of_a_crashed_master() -> None:
    """master-crash.toml (which names the election check): the leaderless windows are each
    group's first election and group 0's failover after its master crashed, each a little
    over a lease (the master's return, a handover, opens none)."""
    from sim import runner, scenario

    root = Path(__file__).resolve().parent.parent
    scn = scenario.load(root / "scenarios" / "master-crash.toml")
    assert "election" in scn.checks
    result = runner.run(scn, scn.seed)
    election = result.checks["election"]
    assert result.ok and election.ok, election.summary
    assert election.details["stretches"] == 3, election.details
    longest = election.details["longest_ms"]
    assert isinstance(longest, int) and 1000 <= longest <= 2000, election.details
