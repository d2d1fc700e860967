"""Storage faults end to end: a torn write really tears and recovery discards it, a recovery
that trusts a torn batch is caught, and a detected corruption is reported by the run (never
the end of it) in every workload."""

from __future__ import annotations

from pathlib import Path

from sim import runner, scenario

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, seed: int | None = None) -> runner.RunResult:
    scn = scenario.load(ROOT / "scenarios" / f"{name}.toml")
    return runner.run(scn, scn.seed if seed is None else seed)


def test_the_torn_write_scenario_tears_a_batch_and_recovery_discards_it() -> None:
    result = _run("follower-torn-write")
    disk = result.stats["disk"]
    assert disk["torn_batches"] >= 1
    assert disk["torn_batches_discarded"] == disk["torn_batches"]
    assert disk["torn_batches_trusted"] == 0
    assert result.ok, {n: c.summary for n, c in result.checks.items() if not c.ok}
    assert result.checks["corruption"].details["detected"] == 0


def test_a_recovery_that_trusts_a_torn_batch_is_caught() -> None:
    result = _run("trusted-torn-write")
    assert result.stats["disk"]["torn_batches_trusted"] >= 1
    assert not result.safety_ok
    corruption = result.checks["corruption"]
    assert not corruption.ok
    unexplained = corruption.details["unexplained"]
    assert isinstance(unexplained, int) and unexplained >= 1


def test_a_bit_flip_in_a_live_replicas_log_is_reported_and_read_around() -> None:
    """The final check reads every live replica's log; a corrupt record there used to raise
    out of the run. Now the run reports it (flipped by the fault, so not a failure) and the
    other replicas' logs decide."""
    result = _run("log-bitflip-live-replica")
    corruption = result.checks["corruption"]
    assert corruption.ok
    assert corruption.details["detected"] == corruption.details["explained"] == 1
    assert result.ok, {n: c.summary for n, c in result.checks.items() if not c.ok}


_LATE_FLIPS = "".join(
    f'[[faults]]\nat_ms = {t}\naction = "disk"\ntarget = "n1"\nfault = "bitflip"\n\n'
    for t in range(3000, 4000, 100)
)


def test_queue_and_lock_runs_report_bit_flips_on_live_replicas() -> None:
    """The queue and lock workloads read nothing from the replicas' disks at the end (their
    checks use the history and the nodes' memory), so flips late in a run cannot stop them
    either: each run ends with a verdict, and whatever was found corrupt is explained."""
    for kind, checks in (
        ("queue", '["total_queue", "queue_order", "agreement"]'),
        ("lock", '["agreement", "linearizable", "fencing"]'),
    ):
        text = (
            f'version = 1\nname = "flips-{kind}"\nduration_ms = 4000\nchecks = {checks}\n\n'
            f'[workload]\nkind = "{kind}"\n\n{_LATE_FLIPS}'
        )
        scn = scenario.loads(text)
        result = runner.run(scn, 1)
        assert result.stats["disk"]["bitflips"] == 10
        assert result.checks["corruption"].ok
        assert result.ok, (kind, {n: c.summary for n, c in result.checks.items() if not c.ok})
