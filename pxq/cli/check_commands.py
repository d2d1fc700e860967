"""``pxq check``: check a recorded history (pxq's JSONL, or Jepsen's EDN) against a model.

Exit codes: 0 valid, 1 invalid (a violation: the report names the smallest failing window),
2 bad input (the message names the line or op and the problem), 3 unknown (a search ran out
of its step budget: never reported as valid). ``docs/checking.md`` documents the formats and
the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

import click

from pxq.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

EXIT_UNKNOWN: Final = 3
STEPS_DEFAULT: Final = 10_000_000
EXITS: Final = {"valid": EXIT_OK, "invalid": EXIT_FAILED, "unknown": EXIT_UNKNOWN}


def _is_edn(path: Path | None, text: str) -> bool:
    if path is not None and path.suffix == ".edn":
        return True
    if path is not None and path.suffix in (".jsonl", ".json"):
        return False
    head = text.lstrip()[:2]
    return head[:1] in ("[", "(") or head == "{:"


def _fail(message: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"verdict": "bad-input", "error": message}))
    click.echo(f"pxq: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.command("check")
@click.argument("history", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--model",
    type=click.Choice(["register", "kv", "lock", "queue"]),
    required=True,
    help="What the history is of: one register, a key-value map of registers (per key), "
    "the lock service, or queues.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "edn"]),
    default="auto",
    show_default=True,
    help="History format: pxq's JSONL or Jepsen's EDN (auto: by the .edn/.jsonl suffix, "
    "else by the first characters).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Cluster file of a queue history: its groups' subscriptions, kinds and retry levels "
    "(default: subscriptions inferred from the history, retry flow not checked).",
)
@click.option(
    "--nil-read",
    type=click.Choice(["value", "unknown"]),
    default=None,
    help="What a null read means (register, kv): the register's null value, or, as Knossos "
    "reads it, a read of an unknown value (default: value for JSONL, unknown for EDN).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=STEPS_DEFAULT,
    show_default=True,
    help="Model steps the linearizability search may take per key (partition) before that "
    "key is unknown.",
)
@click.option(
    "--picture",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the SVG timeline of a linearizability failure goes "
    "(default: HISTORY.failure.svg; for stdin, history.failure.svg).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(  # noqa: PLR0917 - one parameter per click option
    history: Path,
    model: str,
    fmt: str,
    config_file: Path | None,
    nil_read: str | None,
    max_steps: int,
    picture: Path | None,
    as_json: bool,
) -> None:
    """Check the recorded HISTORY ("-" for stdin) against --model: exit 0 valid, 1 invalid,
    2 bad input, 3 unknown (a search ran out of budget)."""
    from pxq.check.edn import independent_keys, ops_from_edn
    from pxq.check.history import HistoryError, read_history
    from pxq.check.models import QueueLayout, check_history, layout_from_config
    from pxq.check.picture import failure_svg

    path = None if str(history) == "-" else history
    try:
        text = sys.stdin.read() if path is None else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {history}: {exc}", as_json)
    edn = fmt == "edn" or (fmt == "auto" and _is_edn(path, text))
    layout: QueueLayout | None = None
    if config_file is not None:
        if model != "queue":
            _fail("--config is for --model queue only", as_json)
        from pxq.config import ConfigError, load_config

        try:
            layout = layout_from_config(load_config(config_file))
        except ConfigError as exc:
            _fail(f"{config_file}: {exc}", as_json)
    try:
        ops = ops_from_edn(text) if edn else read_history(text.splitlines())
        if edn and model == "kv":
            ops = independent_keys(ops)
        report = check_history(
            ops,
            model,  # type: ignore[arg-type]  # a click.Choice of the models
            max_steps=max_steps,
            nil_read_unknown=(nil_read or ("unknown" if edn else "value")) == "unknown",
            layout=layout,
        )
    except HistoryError as exc:
        _fail(f"{history}: {exc}", as_json)
    pictures: list[str] = []
    for result in report.checks:
        svg = None if result.ok else failure_svg(result.name, result.summary, result.details)
        if svg is None:
            continue
        target = picture or Path(f"{'history' if path is None else path}.failure.svg")
        if pictures:
            target = target.with_name(f"{target.stem}-{result.name}{target.suffix}")
        try:
            target.write_text(svg, encoding="utf-8")
            pictures.append(str(target))
        except OSError as exc:
            click.echo(f"pxq: warning: cannot write the picture {target}: {exc}", err=True)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "verdict": report.verdict,
                    "model": report.model,
                    "format": "edn" if edn else "jsonl",
                    "operations": report.operations,
                    "checks": [c.to_json() for c in report.checks],
                    "notes": list(report.notes),
                    "pictures": pictures,
                }
            )
        )
    else:
        click.echo(f"{report.verdict.upper()}: {report.model} history, {report.operations} ops")
        for result in report.checks:
            click.echo(f"  {'ok  ' if result.ok else 'FAIL'} {result.summary}")
            if not result.ok:
                _print_window(result.details)
        for note in report.notes:
            click.echo(f"  note: {note}")
        for p in pictures:
            click.echo(f"  picture of the failing window: {p}")
    sys.exit(EXITS[report.verdict])


def _print_window(details: dict[str, object]) -> None:
    cx = details.get("counterexample")
    if not isinstance(cx, dict):
        return
    ops = cx.get("operations")
    if not isinstance(ops, list):
        return
    click.echo(
        f"       smallest failing window: {cx.get('prefix-operations')} ops"
        f"{'' if cx.get('minimal', True) else ' (not minimal: the budget ran out)'}"
        f"; the last {len(ops)}:"
    )
    for op in ops:
        if isinstance(op, dict):
            ret = op.get("return_index")
            click.echo(
                f"         op {op.get('call_index')}..{'info' if ret is None else ret} "
                f"process {op.get('process')}: {op.get('op')}"
            )


def register(main: click.Group) -> None:
    main.add_command(check)
