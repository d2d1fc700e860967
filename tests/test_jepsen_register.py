"""``pxq test --workload register`` against a local cluster, and ``pxq check`` on its history:
the classic Jepsen register test end to end. The run under kill and pause faults is
linearizable; the same history with one read changed to a value nobody wrote is caught by
``pxq check --model kv``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from net.jepsen.workloads import RegisterWorkload, WorkloadContext
from pxq.check.history import HistoryWriter, Op
from pxq.cli import main
from pxq.config import loads_config
from pxq.config.default import default_toml

# Fixed ports (75xx-76xx) and, for some, network namespaces: the files that use them run
# one after another on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("real-clusters")

BASE_PORT = 7560
"""This module's local cluster uses 7560-7565."""


def _op(process: object, f: str) -> Op:
    return Op(index=0, time_ms=0, process=process, type="invoke", f=f)  # type: ignore[arg-type]


def test_the_register_workload_owns_only_its_own_clients_reads() -> None:
    # The lock and register workloads both read: their processes tell them apart.
    context = WorkloadContext(
        config=loads_config(default_toml()),
        writer=HistoryWriter(),
        seed=1,
        run_id="t1",
        time_limit_ms=1000,
    )
    registers = RegisterWorkload(context)
    assert registers.owns(_op("t1-r0.3", "read"))
    assert registers.owns(_op("register-final", "read"))
    assert not registers.owns(_op("t1-c0.3", "read"))  # a lock client's
    assert not registers.owns(_op("t1-r0.3", "acquire"))
    assert not registers.owns(_op(7, "read"))


def test_pxq_test_register_history_is_linearizable_and_a_doctored_one_is_caught(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "test",
            "--workload",
            "register",
            "--nemesis",
            "kill,pause",
            "--time-limit",
            "8",
            "--seed",
            "5",
            "--base-port",
            str(BASE_PORT),
            "--dir",
            str(run_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    assert report["verdict"] == "valid"
    assert report["counts"]["register"]["ok"] > 20
    history = run_dir / "history.jsonl"
    ok = CliRunner().invoke(main, ["check", str(history), "--model", "kv", "--json"])
    assert ok.exit_code == 0, ok.output
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    written = [o for o in lines if o["f"] == "write" and o["type"] == "ok"]
    reads = [
        i
        for i, o in enumerate(lines)
        if o["f"] == "read" and o["type"] == "ok" and o["value"] is not None
    ]
    assert written and reads
    # A read of a value nobody ever wrote.
    doctored = [dict(o) for o in lines]
    doctored[reads[-1]]["value"] = "nobody-wrote-this"
    bad = tmp_path / "doctored.jsonl"
    bad.write_text("".join(json.dumps(o) + "\n" for o in doctored))
    caught = CliRunner().invoke(main, ["check", str(bad), "--model", "kv", "--json"])
    assert caught.exit_code == 1, caught.output
    verdict = json.loads(caught.output)
    assert verdict["verdict"] == "invalid"
    assert any(c["name"] == "linearizable" and not c["ok"] for c in verdict["checks"]), (
        caught.output
    )
