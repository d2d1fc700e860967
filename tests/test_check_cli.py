"""``pxq check``: verdicts and exit codes on hand-made histories of every model, in pxq's JSONL
and Jepsen's EDN (``pxq.check.edn``), bad input named by line, the unknown verdict, and the
picture of a failing window."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pxq.check.edn import Keyword, Symbol, independent_keys, ops_from_edn, read_edn
from pxq.check.history import HistoryError, HistoryWriter, write_history
from pxq.cli import main

# A Knossos-style cas-register history (the format of knossos/data/cas-register).
EDN_VALID = """\
{:process 0, :type :invoke, :f :write, :value 1, :time 1000000}
{:process 1, :type :invoke, :f :read, :value nil, :time 2000000}
{:process 0, :type :ok, :f :write, :value 1, :time 3000000}
{:process 1, :type :ok, :f :read, :value 1, :time 4000000}
{:process :nemesis, :type :info, :f :start, :value nil}
{:process :nemesis, :type :info, :f :start, :value [:n1 :n2]}
{:process 2, :type :invoke, :f :cas, :value [1 4], :time 5000000}
{:process 2, :type :ok, :f :cas, :value [1 4], :time 6000000}
{:process 1, :type :invoke, :f :read, :value nil}
{:process 1, :type :ok, :f :read, :value nil}
"""
# The read of 1 after the cas to 4 completed cannot be linearized.
EDN_INVALID = (
    EDN_VALID
    + """\
{:process 3, :type :invoke, :f :read, :value nil}
{:process 3, :type :ok, :f :read, :value 1}
"""
)


def run(tmp_path: Path, name: str, text: str, *args: str) -> tuple[int, str, dict[str, Any]]:
    path = tmp_path / name
    path.write_text(text)
    result = CliRunner().invoke(main, ["check", str(path), *args, "--json"])
    lines = result.output.strip().splitlines()
    return result.exit_code, result.output, json.loads(lines[0]) if lines else {}


def jsonl(h: HistoryWriter) -> str:
    import io

    out = io.StringIO()
    write_history(h.ops, out)
    return out.getvalue()


def register_history(bad: bool) -> HistoryWriter:
    h = HistoryWriter()
    h.invoke(0, 1, "write", 3)
    h.ok(1, 1, "write", 3)
    h.invoke(2, 2, "cas", [3, 4])
    h.ok(3, 2, "cas", [3, 4])
    h.invoke(4, 1, "read", None)
    h.ok(5, 1, "read", 3 if bad else 4)
    return h


# --------------------------------------------------------------------------------------------
# EDN


def test_edn_reader_covers_the_forms_histories_use() -> None:
    forms = read_edn(
        '; comment\n[1 -2 3N 1.5 2.5M "a\\"b\\n" \\x \\newline nil true false :k/v sym '
        '#{1} (1 2) {:a 1, "b" [2]} #inst "2020-01-01" #_ :dropped]'
    )
    assert len(forms) == 1
    assert forms[0].value == [
        1, -2, 3, 1.5, 2.5, 'a"b\n', "x", "\n", None, True, False, Keyword("k/v"),
        Symbol("sym"), [1], [1, 2], {Keyword("a"): 1, "b": [2]}, "2020-01-01",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{:a 1\n:b", "line 1, column 1: '}' expected before the end of input"),
        ("{:a 1 :b}", "odd number"),
        ('"abc', "unterminated string"),
        ("[1 2)", "unexpected ')'"),
        ("{:a 1 :a 2}", "duplicate map key :a"),
        ("1x", "bad number"),
        ("[" * 100 + "]" * 100, "nested deeper"),
        ('"\\q"', "bad escape"),
    ],
)
def test_edn_reader_names_the_place_of_malformed_input(text: str, problem: str) -> None:
    with pytest.raises(HistoryError, match=re.escape(problem)):
        read_edn(text)


def test_edn_ops_are_converted_faithfully() -> None:
    ops = ops_from_edn(EDN_VALID)
    assert [(o.index, o.process, o.type, o.f) for o in ops[:2]] == [
        (0, 0, "invoke", "write"),
        (1, 1, "invoke", "read"),
    ]
    assert ops[0].time_ms == 1
    # A nemesis action's two info ops become an invoke and its completion.
    assert [(o.process, o.type) for o in ops[4:6]] == [("nemesis", "invoke"), ("nemesis", "info")]
    assert ops[5].value == ["n1", "n2"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{:type :invoke, :f :read}", "line 1: op without :process"),
        ("{:type :begin, :f :read, :process 0}", ":type :begin is not one of"),
        ("{:type :invoke, :f :read, :process 1.5}", ":process 1.5 is not an int"),
        ("{:type :invoke, :f :read, :process 0}\n[1]", "line 2: an op must be a map"),
        ('{:type :invoke, :f :read, :process 0, "x" 1}', "key 'x' is not a keyword"),
    ],
)
def test_edn_ops_that_are_not_ops_are_errors(text: str, problem: str) -> None:
    with pytest.raises(HistoryError, match=problem):
        ops_from_edn(text)


def test_independent_tuples_become_keys_and_anything_else_is_an_error() -> None:
    ops = independent_keys(ops_from_edn("{:type :invoke, :f :write, :value [:x 3], :process 0}"))
    assert ops[0].value == 3 and ops[0].get("key") == "x"
    with pytest.raises(HistoryError, match="not a \\[key value\\] tuple"):
        independent_keys(ops_from_edn("{:type :invoke, :f :write, :value 3, :process 0}"))


# --------------------------------------------------------------------------------------------
# The command


def test_register_histories_valid_and_invalid_with_a_picture(tmp_path: Path) -> None:
    code, _, out = run(
        tmp_path, "ok.jsonl", jsonl(register_history(bad=False)), "--model", "register"
    )
    assert (code, out["verdict"]) == (0, "valid")
    code, _, out = run(
        tmp_path, "bad.jsonl", jsonl(register_history(bad=True)), "--model", "register"
    )
    assert (code, out["verdict"]) == (1, "invalid")
    [picture] = out["pictures"]
    svg = Path(picture).read_text()
    assert svg.startswith("<svg") and "cannot be linearized" in svg and "read() -&gt; 3" in svg


def test_knossos_edn_histories_valid_and_invalid(tmp_path: Path) -> None:
    code, _, out = run(tmp_path, "ok.edn", EDN_VALID, "--model", "register")
    assert (code, out["verdict"], out["format"]) == (0, "valid", "edn")
    code, _, out = run(tmp_path, "bad.edn", EDN_INVALID, "--model", "register")
    assert (code, out["verdict"]) == (1, "invalid")
    # A nil read is read as Knossos reads it (unknown) unless told otherwise: the last read of
    # nil after the cas to 4 is then a violation too, but the first failure is the same op.
    code, _, out = run(tmp_path, "ok2.edn", EDN_VALID, "--model", "register", "--nil-read", "value")
    assert (code, out["verdict"]) == (1, "invalid")


def test_an_independent_kv_edn_history_is_checked_per_key(tmp_path: Path) -> None:
    text = """\
{:process 0, :type :invoke, :f :write, :value [:a 1]}
{:process 0, :type :ok, :f :write, :value [:a 1]}
{:process 1, :type :invoke, :f :read, :value [:b nil]}
{:process 1, :type :ok, :f :read, :value [:b 1]}
"""
    code, _, out = run(tmp_path, "kv.edn", text, "--model", "kv")
    assert (code, out["verdict"]) == (1, "invalid")  # b was never written


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"index":0}\n', "line 1: missing key 'time_ms'"),
        (
            '{"index":0,"time_ms":0,"process":1,"type":"invoke","f":"get","value":null,"key":"k"}\n',
            "op 0: f='get' is not an operation of the kv model",
        ),
        (
            '{"index":0,"time_ms":0,"process":1,"type":"invoke","f":"read","value":null}\n',
            "op 0: read without a key field",
        ),
        (
            '{"index":0,"time_ms":0,"process":1,"type":"ok","f":"read","value":null,"key":"k"}\n',
            "without an invoke",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    code, output, out = run(tmp_path, "h.jsonl", text, "--model", "kv")
    assert code == 2 and out["verdict"] == "bad-input"
    assert problem in str(out["error"]), output


def test_a_history_too_large_for_the_budget_is_unknown_never_valid(tmp_path: Path) -> None:
    h = HistoryWriter()
    t = 0
    for i in range(12):  # 12 concurrent writes, then reads: a wide search
        h.invoke(t, i, "write", i)
        t += 1
    for i in range(12):
        h.ok(t, i, "write", i)
        t += 1
    h.invoke(t, 99, "read", None)
    h.ok(t + 1, 99, "read", 5)
    code, _, out = run(tmp_path, "wide.jsonl", jsonl(h), "--model", "register", "--max-steps", "5")
    assert (code, out["verdict"]) == (3, "unknown")
    code, _, out = run(tmp_path, "wide.jsonl", jsonl(h), "--model", "register")
    assert (code, out["verdict"]) == (0, "valid")


def test_a_simulated_queue_and_lock_history_check_and_a_lost_item_is_caught(
    tmp_path: Path,
) -> None:
    history = tmp_path / "queue.jsonl"
    result = CliRunner().invoke(
        main,
        ["sim", "run", "scenarios/consumer-crash-failover.toml", "--history", str(history)],
    )
    assert result.exit_code == 0, result.output
    text = history.read_text()
    code, output, out = run(tmp_path, "q.jsonl", text, "--model", "queue")
    assert (code, out["verdict"]) == (0, "valid"), output
    names = {c["name"] for c in out["checks"]}
    assert {"total-queue", "queue-order", "ownership", "linearizable", "fencing"} <= names
    # Drop every delivery and final read of one acknowledged item: it is lost.
    lines = [json.loads(line) for line in text.splitlines()]
    victim = next(o["value"] for o in lines if o["f"] == "enqueue" and o["type"] == "ok")
    kept, dropped = [], set()
    for o in lines:
        if o["f"] == "deliver" and o["value"] == victim:
            dropped.add((o["process"], o["f"]))
            continue
        if o["f"] == "handle" and o["value"] == victim:
            continue
        if o["f"] == "store_read" and o["type"] == "ok":
            o["items"] = [i for i in o.get("items", []) if i[1] != victim]
        kept.append(o)
    for i, o in enumerate(kept):
        o["index"] = i
    mutated = "".join(json.dumps(o) + "\n" for o in kept)
    code, output, out = run(tmp_path, "lost.jsonl", mutated, "--model", "queue")
    assert (code, out["verdict"]) == (1, "invalid"), output
    total = next(c for c in out["checks"] if c["name"] == "total-queue")
    assert total["details"]["lost"] >= 1
