"""The retry-delay checker: a failed item reaches its group's next retry level within the
level's delay plus a small bound, and not before the delay.

It reads the queue histories of ``pxq/check/queue.py`` (``handle`` and ``deliver`` ops) and
measures, in the history's own time (the observer's, not any node's clock), how late each
move to a retry level was delivered. The bound is what ``docs/simulation.md`` states and
measures; ``check_retry_flow`` (``queue.py``) judges where failed items go, this checker only
when.

It holds in a run without faults that delay requests or move masters: a crash, a partition or
a failover legitimately holds a retry up for a timeout or an election, and a new master's
clock (stamping ``not_before_ms``) may differ from the old one's by the replicas' skew. So it
is opt-in (a scenario names it), for runs that test the delay itself, under clock skew between
consumers and stores.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from pxq.check.history import JSON, Op, pair_ops
from pxq.check.queue import topic_level
from pxq.check.result import CheckResult, Offenders, verdict

RETRY_LATE_MS_MAX: Final = 100
"""The default bound on how late an item may reach its next retry level, beyond the level's
delay (measured in the simulator: at most ~40 ms, see ``docs/simulation.md``)."""

EARLY_SLACK_MS: Final = 1
"""How early a delivery may look: history times and wall clocks are whole milliseconds."""


def check_retry_delay(
    ops: Iterable[Op],
    delays_ms: Mapping[str, Sequence[int]],
    *,
    late_ms_max: int = RETRY_LATE_MS_MAX,
) -> CheckResult:
    """Every move of an item to retry level ``n`` of its group is delivered from that level
    between ``delay(n)`` and ``delay(n) + late_ms_max`` after the handler failure that moved it.

    ``delays_ms``: consumer group -> the delays of its retry levels (level n is index n - 1).
    For each ``ok`` delivery of an item from level ``n`` of a group, the first since the
    item's last failed handling at level ``n - 1`` (the failure the consumer's Retry acts on),
    its *lateness* is the delivery time minus the failure time minus ``delay(n)``. Violations:

    - ``late``: lateness above ``late_ms_max``;
    - ``early``: lateness below ``-EARLY_SLACK_MS`` (handed out before its delay).

    Failures never followed by a delivery on the next level are left to ``check_retry_flow``.
    """
    failed_at: dict[tuple[str, str, int], int] = {}
    """(group, msg id, level) -> time of the item's latest failed handling at that level."""
    lateness: list[int] = []
    late, early = Offenders(), Offenders()
    for invoke, completion in pair_ops(ops):
        if completion is None or invoke.f not in ("handle", "deliver"):
            continue
        group, topic = invoke.get("group"), invoke.get("topic")
        if not isinstance(group, str) or not isinstance(topic, str):
            continue
        level = topic_level(topic, group)
        if level is None or level < 0:
            continue  # another group's topic, or a dead-letter topic (no delay)
        msg_id = str(invoke.value)
        if invoke.f == "handle":
            outcome = completion.get("outcome", invoke.get("outcome"))
            if completion.type != "ok" or outcome == "fail":
                failed_at[(group, msg_id, level)] = completion.time_ms
            continue
        if completion.type != "ok" or level == 0:
            continue
        failed = failed_at.pop((group, msg_id, level - 1), None)
        delays = delays_ms.get(group, ())
        if failed is None or level > len(delays):
            continue
        late_ms = completion.time_ms - failed - delays[level - 1]
        lateness.append(late_ms)
        example: dict[str, JSON] = {
            "group": group,
            "msg_id": msg_id,
            "topic": topic,
            "failed_ms": failed,
            "delivered_ms": completion.time_ms,
            "delay_ms": delays[level - 1],
            "late_ms": late_ms,
        }
        if late_ms > late_ms_max:
            late.add(example)
        elif late_ms < -EARLY_SLACK_MS:
            early.add(example)
    details: dict[str, object] = {"moves": len(lateness), "late_ms_max": late_ms_max}
    passed = f"{len(lateness)} moves to a retry level"
    if lateness:
        lateness.sort()
        figures = {
            "min": lateness[0],
            "median": statistics.median_low(lateness),
            "p99": lateness[(len(lateness) * 99) // 100],
            "max": lateness[-1],
        }
        details["lateness_ms"] = figures
        passed += (
            f", lateness min {figures['min']} / median {figures['median']} / "
            f"max {figures['max']} ms (bound {late_ms_max} ms)"
        )
    return verdict("retry-delay", {"late": late, "early": early}, passed=passed, details=details)
