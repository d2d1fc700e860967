"""Every scenario file runs and meets its expectation, a swarm of seeds passes, and a run is
reproducible from its seed alone, whatever ``PYTHONHASHSEED`` says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim import runner, scenario, swarm

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
NEGATIVE = {"lying-fsync-majority", "reply-before-persist"}


def test_the_scenario_directory_holds_the_families() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "master-crash",
        "master-partition",
        "master-partition-asymmetric",
        "follower-torn-write",
        "clock-drift-master",
        "network-storm",
        "rolling-restarts",
        "long-partition-snapshot",
        "swarm-log",
        "queue-master-crash",
        "queue-master-partition",
        "queue-consumer-crash",
        "queue-producer-retry-storm",
        "queue-replay",
        "queue-slow-group-retention",
        "queue-retries",
        "queue-network-storm",
        "swarm-queue",
        "lock-master-partition",
        "lock-crash-restart",
        "swarm-lock",
        "consumer-crash-failover",
        "consumer-pause-lease",
        "consumer-lock-master-partition",
        "consumer-scheduler",
        "consumer-rolling",
        "swarm-consumers",
    } | NEGATIVE <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_meets_its_expectation(path: Path) -> None:
    scn = scenario.load(path)
    result = runner.run(scn, scn.seed)
    failing = {name: c.summary for name, c in result.checks.items() if not c.ok}
    assert result.ok, (result.repro, failing)
    if path.stem in NEGATIVE:
        assert scn.expect_safety == "fail"
        assert not result.safety_ok, "the negative control was not caught"
        assert failing, "a negative control must fail a safety check"
    else:
        assert failing == {}
        assert result.stats["clients"]["ok"] > 100, "the workload made too little progress"
        if scn.workload.kind == "queue":
            assert result.stats["clients"]["deliver"] >= result.stats["clients"]["ok"]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_at_other_seeds(path: Path) -> None:
    if path.stem.startswith("swarm-"):
        pytest.skip("covered by the swarm tests")
    outcomes = swarm.run_swarm(str(path), range(101, 103), jobs=1)
    bad = [(o.seed, o.failed_checks, o.error) for o in outcomes if not o.ok]
    assert bad == []


@pytest.mark.parametrize(
    ("name", "seeds"),
    [("swarm-log", 40), ("swarm-queue", 30), ("swarm-lock", 30), ("swarm-consumers", 25)],
)
def test_swarm_of_seeds_with_random_faults_passes(name: str, seeds: int) -> None:
    outcomes = swarm.run_swarm(
        str(ROOT / "scenarios" / f"{name}.toml"), range(1, seeds + 1), jobs=2
    )
    bad = [(o.seed, o.failed_checks, o.error, o.repro) for o in outcomes if not o.ok]
    assert len(outcomes) == seeds
    assert bad == []


def _digest_in_subprocess(path: Path, seed: int, hashseed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    out = subprocess.run(
        [sys.executable, "-m", "pxq.cli", "sim", "run", str(path), "--seed", str(seed), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode in (0, 1), out.stderr
    digest = json.loads(out.stdout)["trace_digest"]
    assert isinstance(digest, str)
    return digest


@pytest.mark.parametrize("name", ["swarm-log", "swarm-queue", "swarm-consumers"])
def test_same_seed_gives_the_same_digest_under_different_hash_seeds(name: str) -> None:
    path = ROOT / "scenarios" / f"{name}.toml"
    first = _digest_in_subprocess(path, 7, "1")
    assert _digest_in_subprocess(path, 7, "2") == first
    assert _digest_in_subprocess(path, 7, "random") == first
    assert _digest_in_subprocess(path, 8, "1") != first
