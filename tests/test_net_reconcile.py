"""``pxq reconcile`` against an in-process three-replica store (``LocalCluster``): replicas that
applied the same log report no difference (exit 0); a replica whose state machine diverged (a
cursor changed in its memory only) raises the ``reconcile_mismatch`` alarm through its runner
(``RunnerStats.alarms``) and ``pxq reconcile`` names the queue and bucket (exit 1). Also the
report comparison itself on hand-made reports (log checksums, halted groups)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from net.cluster.inprocess import LocalCluster
from pxq.cli.reconcile_commands import _collect, differences, reconcile
from pxq.config import loads_config
from pxq.store.reconcile import GroupReconcile, Reconciler, ReconcileReport
from tests.test_net_cluster import STORE, cluster_toml, enqueue, free_ports, store_node
from tests.test_net_support import FAST, run_async, wait_until


def test_reconcile_reports_agreement_then_a_diverged_replica(tmp_path: Path) -> None:
    text = cluster_toml(free_ports(3), groups=1).replace(
        "groups = 1\n", "groups = 1\nretention_tick_ms = 50\n", 1
    )
    config_file = tmp_path / "cluster.toml"
    config_file.write_text(text)
    config = loads_config(text, file=str(config_file))

    def cli() -> tuple[int, dict[str, object]]:
        result = CliRunner().invoke(reconcile, ["--config", str(config_file), "--json"])
        return result.exit_code, json.loads(result.output)

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path / "data", FAST)
        try:
            masters = await cluster.wait_for_masters(timeout_s=10.0)
            master = masters[(STORE, 0)]
            await enqueue(cluster, master, queue=0, seq=1, n=5)
            nodes = [r.node for r in config.store(STORE).replicas]

            def passes_done(n: int) -> bool:
                return all(store_node(cluster, x).state_machine(0).recon.passes >= n for x in nodes)

            await wait_until(lambda: passes_done(1), timeout_s=10.0, what="a reconcile pass")
            reports, missing = await _collect(config)
            assert missing == [] and len(reports) == 3
            assert differences(reports) == []
            code, doc = await asyncio.to_thread(cli)
            assert code == 0 and doc["ok"] is True and doc["differences"] == []

            follower = next(x for x in nodes if x != master)
            sm = store_node(cluster, follower).state_machine(0)
            sm.queues[("events", 0)].cursors["default"] = [3, 0, 0]  # diverged in RAM only
            await enqueue(cluster, master, queue=0, seq=2, n=1)  # a change: a new pass is due
            await wait_until(
                lambda: sm.recon.mismatches_total >= 2, timeout_s=10.0, what="a mismatch"
            )
            assert cluster.runners[follower].stats.alarms >= 1
            code, doc = await asyncio.to_thread(cli)
            assert code == 1 and doc["ok"] is False
            found = doc["differences"]
            assert isinstance(found, list)
            alarms = [d for d in found if d["source"] == "alarm"]
            assert alarms and all(d["node"] == follower for d in alarms)
            assert {d["what"] for d in alarms} == {"cursors", "consumed"}
            consumed = next(d for d in alarms if d["what"] == "consumed")
            assert (consumed["topic"], consumed["queue"]) == ("events", 0)
            assert consumed["bucket"] >= 0 and "default:3" in consumed["mine"]
        finally:
            await cluster.stop()

    run_async(scenario(), timeout_s=60.0)


def _group(
    applied: int, checksums: tuple[tuple[int, int], ...], halted: str = ""
) -> GroupReconcile:
    r = Reconciler()
    return GroupReconcile(
        group=0,
        applied=applied,
        checksums=checksums,
        halted=halted,
        passes=r.passes,
        slices_checked=0,
        skipped=0,
        buckets_compared=0,
        mismatches_total=0,
        mismatches=(),
        figures=(),
    )


def test_log_checksums_are_compared_at_the_highest_common_instance() -> None:
    def report(node: str, g: GroupReconcile) -> ReconcileReport:
        return ReconcileReport(node=node, store="s", groups=(g,))

    same = [
        report("a", _group(12, ((10, 1), (11, 2), (12, 3)))),
        report("b", _group(11, ((9, 0), (10, 1), (11, 2)))),
    ]
    assert differences(same) == []
    diverged = [*same, report("c", _group(11, ((10, 1), (11, 9))))]
    (d,) = differences(diverged)
    assert (d.source, d.what, d.node, d.instance, d.mine, d.theirs) == (
        "log",
        "log_checksum",
        "c",
        11,
        "0x9",
        "0x2",
    )
    halted = [report("a", _group(5, ((5, 1),), halted="instance 6: two chosen values"))]
    (h,) = differences(halted)
    assert (h.what, h.mine) == ("halted", "instance 6: two chosen values")
