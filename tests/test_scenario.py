"""Scenario files: valid ones load into the schema; invalid ones are rejected with the file,
the key path and the reason, and the CLI exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pxq.cli import main
from sim.scenario import ScenarioError, loads

GOOD = """
version = 1
name = "example"
description = "a master partition"
seed = 5
duration_ms = 10000
checks = ["agreement", "no_loss", "liveness"]

[cluster]
replicas = 3
groups = 2
paxos = { lease_ms = 900 }

[network]
delay = { dist = "exponential", mean_ms = 2, min_ms = 1, max_ms = 50 }
loss = 0.01
reorder = 0.1

[disk]
fsync = { dist = "uniform", min_us = 300, max_us = 3000 }

[workload]
clients = 4
rate_per_s = 300

[[faults]]
at_ms = 3000
action = "partition"
target = "master"
direction = "in"
duration_ms = 2000

[[faults]]
after = { event = "master", count = 2, delay_ms = 10 }
action = "crash"
target = "follower[1]"
power_loss = false

[[faults]]
at_ms = 8000
action = "disk"
target = "n2"
fault = "slow"
fsync = { dist = "constant", mean_ms = 20 }

[final]
liveness_ms = 4000

[expect]
safety = "pass"
"""


def test_a_valid_scenario_loads_into_the_schema() -> None:
    scn = loads(GOOD, file="good.toml")
    assert scn.name == "example" and scn.seed == 5 and scn.cluster.groups == 2
    assert scn.cluster.paxos == (("lease_ms", 900),)
    assert scn.network.delay.dist == "exponential" and scn.network.delay.mean_us == 2000
    assert scn.disk.fsync.min_us == 300
    first, second, third = scn.faults
    assert first.target == "master" and first.direction == "in" and first.duration_ms == 2000
    assert second.after is not None and second.after.count == 2 and not second.power_loss
    assert third.disk_fault == "slow" and third.fsync is not None
    assert scn.checks == ("agreement", "no_loss", "liveness")


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (("[workload]", "[workload]\nspeed = 3"), "workload.speed", "unknown key"),
        (("rate_per_s = 300", 'rate_per_s = "fast"'), "workload.rate_per_s", "expected an integer"),
        (('target = "follower[1]"', 'target = "leader"'), "faults[1].target", "unknown selector"),
        (("at_ms = 3000", "at_ms = -5"), "faults[0].at_ms", "must be >= 0"),
        (("loss = 0.01", "loss = 1.5"), "network.loss", "probability"),
        (("replicas = 3", "replicas = 4"), "cluster.replicas", "must be odd"),
        (('action = "crash"', 'action = "explode"'), "faults[1].action", "must be one of"),
        (("power_loss = false", "power_loss = false\nrate = 0.5"), "faults[1].rate", "unknown key"),
        (("version = 1", "version = 9"), "version", "unsupported version"),
        (('target = "n2"', 'target = "n7"'), "faults[2].target", "does not exist"),
        (('safety = "pass"', 'safety = "maybe"'), "expect.safety", "must be one of"),
        (("duration_ms = 10000", "duration_ms = 0"), "duration_ms", "must be >= 1"),
        (('checks = ["agreement"', 'checks = ["agreemnt"'), "checks[0]", "must be one of"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(
    edit: tuple[str, str], key: str, reason: str
) -> None:
    text = GOOD.replace(edit[0], edit[1], 1)
    assert text != GOOD
    with pytest.raises(ScenarioError) as err:
        loads(text, file="bad.toml")
    assert err.value.key_path == key
    assert reason in err.value.reason
    assert str(err.value).startswith(f"bad.toml: {key}: ")


def test_a_fault_needs_exactly_one_trigger() -> None:
    text = GOOD.replace("at_ms = 3000\n", "", 1)
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.at_ms: give exactly one"):
        loads(text)


def test_invalid_toml_is_rejected() -> None:
    with pytest.raises(ScenarioError, match="invalid TOML"):
        loads("version = = 1", file="x.toml")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (GOOD.replace("[workload]", "[workload]\nspeed = 3"), "workload.speed: unknown key"),
        (GOOD.replace('target = "follower[1]"', 'target = "leader"'), "unknown selector"),
        (GOOD.replace("at_ms = 3000", "at_ms = -1"), "faults[0].at_ms: must be >= 0"),
        (
            GOOD.replace("rate_per_s = 300", "rate_per_s = true"),
            "workload.rate_per_s: expected an integer",
        ),
        (GOOD.replace("lease_ms = 900", "lease_msx = 900"), "cluster.paxos.lease_msx: unknown key"),
    ],
)
def test_cli_exits_2_with_a_message_naming_the_key(
    tmp_path: Path, content: str, needle: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = CliRunner().invoke(main, ["sim", "run", str(path), "--seed", "1"])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert str(path) in result.output


def test_cli_exits_2_for_a_missing_file_and_bad_seeds(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sim", "run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "cannot read" in result.output
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = CliRunner().invoke(main, ["sim", "swarm", str(path), "--seeds", "9-3"])
    assert result.exit_code == 2 and "empty" in result.output
    result = CliRunner().invoke(main, ["sim", "run", str(path), "--seed", "-4"])
    assert result.exit_code == 2


QUEUE = 'version = 1\nname = "q"\nduration_ms = 1000\n[workload]\nkind = "queue"\n'


def test_queue_default_checks_follow_the_ownership_mode() -> None:
    static = loads(QUEUE)
    assert "ownership" not in static.checks and "total_queue" in static.checks
    locks = loads(QUEUE + 'ownership = "locks"\nrate_items_per_s = 100\n')
    assert {"ownership", "rate_limit"} <= set(locks.checks)
    assert "failover" not in locks.checks and "balance" not in locks.checks


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('checks = ["ownership"]\n', "needs \\[workload\\] ownership"),
        ('checks = ["balance"]\n', "needs \\[workload\\] ownership"),
        ('checks = ["rate_limit"]\n', "needs \\[workload\\] rate_items_per_s"),
        ("schedulers = 1\n", "schedulers: needs ownership"),
        ('ownership = "locks"\nmargin_ms = 3000\n', "margin_ms: must be > 0 and < lease_ms"),
        ('ownership = "locks"\nrenew_ms = 2000\n', "renew_ms: must be > 0 and <="),
        ("hot_queues = 99\n", "hot_queues: must be <= queues"),
    ],
)
def test_queue_ownership_options_are_validated(extra: str, message: str) -> None:
    head, _, rest = QUEUE.partition("[workload]")
    text = (head + extra + "[workload]" + rest) if extra.startswith("checks") else QUEUE + extra
    with pytest.raises(ScenarioError, match=message):
        loads(text)


def test_a_disk_reserve_is_read_and_validated_and_storage_full_is_opt_in() -> None:
    scn = loads(QUEUE + "[disk]\ncapacity_bytes = 1000\nreserve_bytes = 200\n")
    assert (scn.disk.capacity_bytes, scn.disk.reserve_bytes) == (1000, 200)
    assert scn.disk.resume_margin_percent == 10
    assert "storage_full" not in scn.checks
    assert "disk_full" not in scn.random_faults.kinds
    chosen = loads('checks = ["storage_full"]\n' + QUEUE)
    assert chosen.checks == ("storage_full",)
    with pytest.raises(ScenarioError, match=r"disk\.reserve_bytes: must be below capacity_bytes"):
        loads(QUEUE + "[disk]\ncapacity_bytes = 1000\nreserve_bytes = 1000\n")
    # A capacity without a reserve is refused, as [storage] reserve_bytes = 0 in a cluster
    # file (issue 13).
    for no_reserve in ("", "reserve_bytes = 0\n"):
        with pytest.raises(ScenarioError, match=r"disk\.reserve_bytes: must be > 0 with capacity"):
            loads(QUEUE + "[disk]\ncapacity_bytes = 1000\n" + no_reserve)
    with pytest.raises(ScenarioError, match=r"'disk_full' needs \[disk\] reserve_bytes > 0"):
        loads(QUEUE + '[random_faults]\nenabled = true\nkinds = ["disk_full"]\n')
    drawn = loads(
        QUEUE
        + '[disk]\nreserve_bytes = 10\n[random_faults]\nenabled = true\nkinds = ["disk_full"]\n'
    )
    assert drawn.random_faults.kinds == ("disk_full",)


def test_check_tables_scope_a_check_to_a_window_and_expect_it_to_fail() -> None:
    text = (
        'checks = ["total_queue", "delivery", "queue_order"]\n'
        + QUEUE
        + "[check.total_queue]\nwindow_ms = [1000, 5000]\n"
        + '[check.delivery]\nexpect = "fail"\n'
    )
    scn = loads(text)
    assert scn.check_spec("total_queue").window_ms == (1000, 5000)
    assert scn.check_spec("delivery").expect == "fail"
    assert scn.check_spec("queue_order").window_ms is None
    assert {"delivery", "read_after_ack", "cursor_monotonic"} <= set(loads(QUEUE).checks)
    assert loads(QUEUE).workload.timeout_ms == 5000  # the producers' call timeout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[check.replay]\nexpect = 'fail'\n", r"check\.replay: is not one of checks"),
        ("[check.total_queue]\nwindow_ms = [5, 1]\n", r"check\.total_queue\.window_ms: must be"),
        ("[check.total_queue]\nwindow_ms = [5]\n", r"window_ms: must be \[from_ms, to_ms\]"),
        ("[check.queue_order]\nwindow_ms = [0, 1]\n", r"'queue_order' cannot be scoped"),
        ("[check.total_queue]\nexpect = 'fail'\n", r"needs \[expect\] safety = \"fail\""),
        ("[check.total_queue]\nwndow_ms = [0, 1]\n", r"check\.total_queue\.wndow_ms: unknown"),
        ("[check]\ntotal_queue = 3\n", r"check\.total_queue: expected a table"),
        ("[final]\nsettle_ms = 5000\n", r"final\.settle_ms: must exceed \[workload\] timeout_ms"),
    ],
)
def test_check_tables_and_the_settle_bound_are_validated(extra: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        loads('checks = ["total_queue", "queue_order"]\n' + QUEUE + extra)


def test_only_the_queue_workload_settles() -> None:
    log = 'version = 1\nname = "l"\nduration_ms = 1000\n[final]\nsettle_ms = 9000\n'
    with pytest.raises(ScenarioError, match=r"final\.settle_ms: only the queue workload"):
        loads(log)


def _report(scenario: str, runs: int, fired: dict[str, tuple[int, int]], **extra: object) -> str:
    body: dict[str, object] = {
        "scenario": scenario,
        "runs": runs,
        "ok": not extra.get("failed"),
        "failed": [],
        "failures": [],
        "wall_s": 1.5,
        "sim_time_ms": 100 * runs,
        "fired": {k: f for k, (f, _) in fired.items()},
        "fired_seeds": {k: s for k, (_, s) in fired.items()},
        "never_fired": [k for k, (f, _) in fired.items() if f == 0],
    }
    body.update(extra)
    return json.dumps(body)


def test_swarm_sum_adds_chunks_per_scenario_and_refuses_overlaps(tmp_path: Path) -> None:
    a = tmp_path / "queue-1-3.json"  # the range from the name
    a.write_text(_report("queue", 3, {"crash": (4, 2), "loss": (1, 1)}), encoding="utf-8")
    b = tmp_path / "anything.json"  # the range from its seeds field
    b.write_text(
        _report("queue", 2, {"crash": (1, 1), "loss": (0, 0)}, seeds=[4, 5]), encoding="utf-8"
    )
    c = tmp_path / "lock-10-10.json"
    c.write_text(_report("lock", 1, {"clock": (2, 1)}), encoding="utf-8")
    result = CliRunner().invoke(main, ["sim", "swarm-sum", str(a), str(b), str(c)])
    assert result.exit_code == 0, result.output
    assert "| seeds run | 5 | 1 |" in result.output
    assert "| crash | 5 (3) |  |" in result.output
    assert "| clock |  | 2 (1) |" in result.output
    assert "queue: seeds 1-5; 5 runs, 0 failed" in result.output
    result = CliRunner().invoke(main, ["sim", "swarm-sum", "--json", str(a), str(b)])
    total = json.loads(result.output)
    assert total["seeds"] == [[1, 5]] and total["fired"] == {"crash": 5, "loss": 1}
    assert total["fired_seeds"] == {"crash": 3, "loss": 1} and total["never_fired"] == []
    # The same chunk twice, a range that is not the run count, a kind that never fired, a
    # failed seed, and a file that is no report: each named.
    for args, message in (
        ([a, a], "overlap"),
        ([tmp_path / "bad-1-9.json"], "seeds 1-9 but 3 runs"),
    ):
        if not args[0].exists():
            args[0].write_text(_report("queue", 3, {}), encoding="utf-8")
        result = CliRunner().invoke(main, ["sim", "swarm-sum", *map(str, args)])
        assert result.exit_code == 2 and message in result.output, result.output
    never = tmp_path / "never-1-1.json"
    never.write_text(_report("x", 1, {"crash": (0, 0)}), encoding="utf-8")
    result = CliRunner().invoke(main, ["sim", "swarm-sum", str(never)])
    assert result.exit_code == 1 and "never fired: crash" in result.output
    failed = tmp_path / "failed-7-8.json"
    failed.write_text(_report("x", 2, {"crash": (1, 1)}, failed=[8]), encoding="utf-8")
    result = CliRunner().invoke(main, ["sim", "swarm-sum", str(failed)])
    assert result.exit_code == 1 and "| failed | 8 |" in result.output
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]", encoding="utf-8")
    result = CliRunner().invoke(main, ["sim", "swarm-sum", str(junk)])
    assert result.exit_code == 2 and "not a swarm report" in result.output


def test_a_swarm_report_names_its_seeds_and_sums_with_another(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    for seeds in ("1-2", "3-3"):
        result = CliRunner().invoke(
            main, ["sim", "swarm", str(path), "--seeds", seeds, "--jobs", "1", "--json"]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output.strip().splitlines()[-1])
        assert report["seeds"] == [int(seeds[0]), int(seeds[-1])]
        (tmp_path / f"r{seeds}.json").write_text(json.dumps(report), encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["sim", "swarm-sum", "--json", str(tmp_path / "r1-2.json"), str(tmp_path / "r3-3.json")],
    )
    assert json.loads(result.output)["seeds"] == [[1, 3]], result.output
