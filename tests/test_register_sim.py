"""The register workload of the simulator (``sim/register_workload.py``) and ``pxq check`` on
the histories it records.

Behaviours checked: the scenario loader takes ``[workload] kind = "register"`` with its checks
(and refuses ``fencing``, a check of lock histories); a recorded register history is valid for
``pxq check --model kv`` (exit 0) and holds reads, writes, cas of both outcomes and the final
reads; the same history with one read made to see a value that was overwritten before it
began, or a cas reported as swapped that found another value, is invalid (exit 1). The
scenarios themselves (and the negative control) run in ``tests/test_scenarios_run.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pxq.cli import main
from sim import scenario

ROOT = Path(__file__).resolve().parent.parent
CRASH = ROOT / "scenarios" / "register-lock-master-crash.toml"


def test_the_loader_takes_the_register_workload_and_its_checks(tmp_path: Path) -> None:
    scn = scenario.load(CRASH)
    assert (scn.workload.kind, scn.workload.keys) == ("register", 4)
    assert scn.checks == ("agreement", "linearizable", "liveness")
    text = CRASH.read_text().replace(
        'checks = ["agreement", "linearizable", "liveness"]', 'checks = ["fencing"]'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(scenario.ScenarioError, match="'fencing' needs the queue or lock workload"):
        scenario.load(bad)


def check(tmp_path: Path, ops: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(op) + "\n" for op in ops))
    result = CliRunner().invoke(main, ["check", str(path), "--model", "kv", "--json"])
    return result.exit_code, json.loads(result.output.splitlines()[0])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    history = tmp_path_factory.mktemp("register-sim") / "history.jsonl"
    result = CliRunner().invoke(
        main, ["sim", "run", str(CRASH), "--seed", "3", "--history", str(history)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in history.read_text().splitlines()]


def test_a_recorded_register_history_is_valid_for_pxq_check(
    tmp_path: Path, recorded: list[dict[str, Any]]
) -> None:
    code, out = check(tmp_path, recorded)
    assert (code, out["verdict"]) == (0, "valid"), out
    kinds = {(op["f"], op["type"]) for op in recorded if op["process"] != "nemesis"}
    assert {("read", "ok"), ("write", "ok"), ("cas", "ok"), ("cas", "fail")} <= kinds
    assert any(op.get("final") for op in recorded)
    assert any(op["process"] == "nemesis" for op in recorded)


def _completion(ops: list[dict[str, Any]], invoke: dict[str, Any]) -> dict[str, Any]:
    return next(
        op
        for op in ops[invoke["index"] + 1 :]
        if op["process"] == invoke["process"] and op["type"] != "invoke"
    )


def test_a_stale_read_in_a_recorded_history_is_caught(
    tmp_path: Path, recorded: list[dict[str, Any]]
) -> None:
    ops = [dict(op) for op in recorded]
    # A read that began after a second write of its key completed reports the first value.
    writes: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        if op["f"] == "write" and op["type"] == "ok":
            writes.setdefault(op["key"], []).append(op)
        if op["f"] == "read" and op["type"] == "invoke" and len(writes.get(op["key"], [])) >= 2:
            old, newer = writes[op["key"]][-2:]
            if op["time_ms"] > newer["time_ms"] and op["index"] > newer["index"]:
                done = _completion(ops, op)
                if done["type"] == "ok":
                    done["value"] = old["value"]
                    break
    else:
        pytest.fail("no read after two writes of its key")
    code, out = check(tmp_path, ops)
    assert (code, out["verdict"]) == (1, "invalid"), out


def test_a_cas_reported_swapped_that_found_another_value_is_caught(
    tmp_path: Path, recorded: list[dict[str, Any]]
) -> None:
    ops = [dict(op) for op in recorded]
    # The cas that expects a value nobody writes can never swap.
    victim = next(
        op
        for op in ops
        if op["f"] == "cas" and op["type"] == "fail" and op.get("reason") == "mismatch"
        if op["value"][0] == "never-written"
    )
    victim["type"] = "ok"
    code, out = check(tmp_path, ops)
    assert (code, out["verdict"]) == (1, "invalid"), out
