"""A picture of a linearizability failure: the failing window's operations per process, as
an SVG timeline (as Knossos and Porcupine draw them).

This module owns the drawing only; its input is the ``counterexample`` of a
``CheckResult`` (``pxq.check.linear.Linearization.to_check_result``): the latest operations of
the smallest failing prefix, the operation that cannot be linearized (``stuck``) and the
longest partial linearization the search reached. Time runs left to right in history
positions (the order of invokes and completions), one lane per process. An operation is a bar
from its invoke to its completion; an operation of unknown outcome (info) runs to the right
edge, hatched. The stuck operation is red; the operations of the longest linearization are
green and numbered in the order the search placed them; the others are grey.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Final

LANE_H: Final = 34
LEFT: Final = 110
WIDTH: Final = 1100
TOP: Final = 56


def _ops(cx: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    raw = cx.get(key)
    return [o for o in raw if isinstance(o, Mapping)] if isinstance(raw, list) else []


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def failure_svg(check: str, summary: str, details: Mapping[str, object]) -> str | None:
    """The SVG of the counterexample in ``details`` (None if the check has none)."""
    cx = details.get("counterexample")
    if not isinstance(cx, Mapping):
        return None
    ops = _ops(cx, "operations")
    stuck = cx.get("stuck")
    if isinstance(stuck, Mapping) and all(
        o.get("call_index") != stuck.get("call_index") for o in ops
    ):
        ops.append(stuck)
    if not ops:
        return None
    order = {
        _int(o.get("call_index")): n
        for n, o in enumerate(_ops(cx, "longest-linearization"), start=1)
    }
    stuck_call = _int(stuck.get("call_index")) if isinstance(stuck, Mapping) else None
    lo = min(_int(o.get("call_index")) or 0 for o in ops)
    ends = [_int(o.get("return_index")) for o in ops]
    hi = (
        max(
            [
                lo + 1,
                *(e for e in ends if e is not None),
                *(_int(o.get("call_index")) or 0 for o in ops),
            ]
        )
        + 1
    )
    processes = sorted({str(o.get("process")) for o in ops}, key=lambda p: (len(p), p))
    lane = {p: i for i, p in enumerate(processes)}
    height = TOP + LANE_H * len(processes) + 40

    def x(pos: int) -> float:
        return LEFT + (pos - lo) * (WIDTH - LEFT - 20) / (hi - lo)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="monospace" font-size="11">',
        '<defs><pattern id="info" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#ccc"/></pattern></defs>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(check)}</text>',
        f'<text x="8" y="36">{escape(summary[:180])}</text>',
    ]
    for p, i in lane.items():
        y = TOP + i * LANE_H
        out.append(f'<text x="8" y="{y + 20}">process {escape(p)}</text>')
        out.append(
            f'<line x1="{LEFT}" y1="{y + LANE_H}" x2="{WIDTH - 10}" y2="{y + LANE_H}" stroke="#eee"/>'
        )
    for o in sorted(ops, key=lambda o: _int(o.get("call_index")) or 0):
        call = _int(o.get("call_index")) or 0
        ret = _int(o.get("return_index"))
        y = TOP + lane[str(o.get("process"))] * LANE_H + 4
        x0, x1 = x(call), x(hi if ret is None else ret)
        if call == stuck_call:
            fill = "#e45756"
        elif call in order:
            fill = "#54a24b"
        elif ret is None:
            fill = "url(#info)"
        else:
            fill = "#bab0ac"
        label = str(o.get("op", ""))
        if call in order:
            label = f"#{order[call]} {label}"
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 3):.1f}" height="{LANE_H - 10}" '
            f'fill="{fill}" stroke="#555"><title>op {call}: {escape(label)}</title></rect>'
        )
        out.append(f'<text x="{x0 + 3:.1f}" y="{y + 16}">{escape(label[:60])}</text>')
    legend_y = height - 14
    out.append(
        f'<text x="8" y="{legend_y}">red: cannot be linearized; green #n: the longest '
        "linearization found, in order; hatched: outcome unknown (info); x: history position</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
