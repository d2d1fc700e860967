"""``pxq reconcile``: ask every store replica for its live-reconciliation report and print
what differs (``pxq.store.reconcile`` says what is compared and how).

Three sources of differences, all named by store, Paxos group, topic, queue and time bucket:

* ``alarm``: mismatches a replica found itself when it applied a reconcile command (its own
  figures against the proposer's, at the same log position), the latest ones it keeps;
* ``report``: the latest figures of each queue as every replica computed them, compared
  here between replicas that computed them at the same instance;
* ``log``: the log checksums of each group at the highest instance every answering replica
  still knows (a different checksum at one instance: the logs diverged); a halted group.

Exit codes: 0 nothing differs (every reachable replica agrees), 1 a difference was found or
no replica of some store answered, 2 bad input (an invalid cluster file).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pxq.cli.common import EXIT_FAILED, EXIT_OK, bad_input
from pxq.store.reconcile import (
    GroupReconcile,
    QueueFigures,
    ReconcileReport,
    ReconcileStatus,
    SliceFigures,
    compare,
)

if TYPE_CHECKING:
    from pxq.config.model import ClusterConfig

CALL_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    source: str
    """``alarm``, ``report`` or ``log``."""
    store: str
    group: int
    node: str
    """The replica whose figure is ``mine``."""
    instance: int
    topic: str
    queue: int
    bucket: int
    """Time bucket (enqueue stamp // ``pxq.store.reconcile.BUCKET_MS``), -1 queue-wide."""
    what: str
    mine: str
    theirs: str
    other: str
    """The replica whose figure is ``theirs`` (the proposer, for an alarm)."""


def differences(reports: list[ReconcileReport]) -> list[Difference]:
    """Everything that differs among the reports of one cluster's store replicas."""
    out: list[Difference] = []
    by_group: dict[tuple[str, int], list[tuple[str, GroupReconcile]]] = {}
    for r in reports:
        for g in r.groups:
            by_group.setdefault((r.store, g.group), []).append((r.node, g))
            for m in g.mismatches:
                out.append(
                    Difference(
                        source="alarm",
                        store=r.store,
                        group=g.group,
                        node=r.node,
                        instance=m.instance,
                        topic=m.topic,
                        queue=m.queue,
                        bucket=m.bucket,
                        what=m.what,
                        mine=m.mine,
                        theirs=m.theirs,
                        other=m.proposer,
                    )
                )
    for (store, group), members in sorted(by_group.items()):
        out += _log_differences(store, group, members)
        out += _figure_differences(store, group, members)
    return out


def _log_differences(
    store: str, group: int, members: list[tuple[str, GroupReconcile]]
) -> list[Difference]:
    out: list[Difference] = []

    def diff(node: str, instance: int, what: str, *figures: str) -> None:
        mine, theirs, other = figures
        out.append(
            Difference(
                source="log",
                store=store,
                group=group,
                node=node,
                instance=instance,
                topic="",
                queue=-1,
                bucket=-1,
                what=what,
                mine=mine,
                theirs=theirs,
                other=other,
            )
        )

    for node, g in members:
        if g.halted:
            diff(node, g.applied, "halted", g.halted, "", "")
    known = [(node, dict(g.checksums)) for node, g in members]
    common = set.intersection(*(set(c) for _, c in known)) if known else set()
    if not common:
        return out
    at = max(common)
    first_node, first = known[0]
    for node, sums in known[1:]:
        if sums[at] != first[at]:
            diff(node, at, "log_checksum", f"{sums[at]:#x}", f"{first[at]:#x}", first_node)
    return out


def _figure_differences(
    store: str, group: int, members: list[tuple[str, GroupReconcile]]
) -> list[Difference]:
    out: list[Difference] = []
    figures: dict[tuple[str, int, int], list[tuple[str, QueueFigures]]] = {}
    for node, g in members:
        for instance, f in g.figures:
            figures.setdefault((f.topic, f.queue, instance), []).append((node, f))
    for (_, _, instance), same in sorted(figures.items()):
        first_node, first = same[0]
        theirs = SliceFigures(instance=instance, slot=0, queues=(first,))
        for node, f in same[1:]:
            mine = SliceFigures(instance=instance, slot=0, queues=(f,))
            for m in compare(mine, theirs, first_node):
                out.append(
                    Difference(
                        source="report",
                        store=store,
                        group=group,
                        node=node,
                        instance=instance,
                        topic=m.topic,
                        queue=m.queue,
                        bucket=m.bucket,
                        what=m.what,
                        mine=m.mine,
                        theirs=m.theirs,
                        other=first_node,
                    )
                )
    return out


async def _collect(
    config: ClusterConfig,
) -> tuple[list[ReconcileReport], list[tuple[str, str, str]]]:
    """Every store replica's report; and (store, node, why) of those that did not answer."""
    from net.client.connection import ClusterIdentity, NodeClient
    from net.config import NetConfig
    from net.errors import NetError

    net_config = NetConfig.for_cluster(config)
    cluster = ClusterIdentity.of(config)

    async def ask(store: str, node: str, host: str, port: int) -> ReconcileReport | str:
        try:
            client = await NodeClient.connect(
                host, port, cluster=cluster, config=net_config, node=node
            )
        except (NetError, OSError) as exc:
            return f"cannot connect to {host}:{port}: {exc or type(exc).__name__}"
        try:
            answer = await client.call(ReconcileStatus(), timeout_s=CALL_TIMEOUT_S)
        except NetError as exc:
            return str(exc) or type(exc).__name__
        finally:
            await client.close()
        if not isinstance(answer, ReconcileReport):
            return f"answered {answer!r}"
        return answer

    targets = [(s.name, r.node, r.host, r.port) for s in config.stores for r in s.replicas]
    answers = await asyncio.gather(*(ask(*t) for t in targets))
    reports = [a for a in answers if isinstance(a, ReconcileReport)]
    missing = [(t[0], t[1], a) for t, a in zip(targets, answers, strict=True) if isinstance(a, str)]
    return reports, missing


@click.command("reconcile")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cluster file (default: ./.pxq/cluster.toml if present, else the embedded default).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def reconcile(config_path: Path | None, as_json: bool) -> None:
    """Compare the store replicas' live-reconciliation figures; print what differs.

    Per Paxos group: each replica's applied instance and reconciliation counts, then every
    bucket (topic, queue, time bucket) whose counts, content digest or consumed figures
    differ between replicas, every log checksum that differs at a common instance. Exit 0
    when nothing differs, 1 on a difference or a store no replica of which answered.
    """
    from net.client.api import resolve_config
    from net.errors import TlsError
    from pxq.config.parser import ConfigError

    try:
        config = resolve_config(config_path)
        reports, missing = asyncio.run(_collect(config))
    except (ConfigError, TlsError) as exc:
        bad_input(str(exc))
        return
    diffs = differences(reports)
    answered = {r.store for r in reports}
    silent = sorted({s.name for s in config.stores} - answered)
    failed = bool(diffs or silent)
    if as_json:
        click.echo(json.dumps(_as_json(reports, missing, diffs, silent), indent=2, sort_keys=True))
    else:
        _print(reports, missing, diffs, silent)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _as_json(
    reports: list[ReconcileReport],
    missing: list[tuple[str, str, str]],
    diffs: list[Difference],
    silent: list[str],
) -> dict[str, object]:
    return {
        "ok": not diffs and not silent,
        "replicas": [
            {
                "store": r.store,
                "node": r.node,
                "groups": [
                    {
                        "group": g.group,
                        "applied": g.applied,
                        "halted": g.halted,
                        "passes": g.passes,
                        "slices_checked": g.slices_checked,
                        "skipped": g.skipped,
                        "buckets_compared": g.buckets_compared,
                        "mismatches_total": g.mismatches_total,
                        "queues": len(g.figures),
                    }
                    for g in r.groups
                ],
            }
            for r in sorted(reports, key=lambda r: (r.store, r.node))
        ],
        "unreachable": [{"store": s, "node": n, "reason": why} for s, n, why in missing],
        "stores_without_answer": silent,
        "differences": [dataclasses.asdict(d) for d in diffs],
    }


def _print(
    reports: list[ReconcileReport],
    missing: list[tuple[str, str, str]],
    diffs: list[Difference],
    silent: list[str],
) -> None:
    click.echo("STORE\tNODE\tGROUP\tAPPLIED\tPASSES\tCHECKED\tSKIPPED\tBUCKETS\tMISMATCHES")
    for r in sorted(reports, key=lambda r: (r.store, r.node)):
        for g in r.groups:
            click.echo(
                f"{r.store}\t{r.node}\t{g.group}\t{g.applied}\t{g.passes}\t{g.slices_checked}"
                f"\t{g.skipped}\t{g.buckets_compared}\t{g.mismatches_total}"
                + (f"\tHALTED: {g.halted}" if g.halted else "")
            )
    for store, node, why in missing:
        click.echo(f"pxq: warning: {store}/{node} did not answer: {why}", err=True)
    for store in silent:
        click.echo(f"pxq: no replica of store {store!r} answered", err=True)
    if not diffs:
        if not silent:
            click.echo("reconcile: ok, no bucket or log checksum differs between replicas")
        return
    click.echo(f"reconcile: {len(diffs)} differences")
    click.echo("SOURCE\tSTORE/GROUP\tAT\tTOPIC/QUEUE\tBUCKET\tDIFFERS\tNODE: FIGURE\tOTHER: FIGURE")
    for d in diffs:
        where = f"{d.topic}/{d.queue}" if d.topic else "-"
        bucket = str(d.bucket) if d.bucket >= 0 else "-"
        click.echo(
            f"{d.source}\t{d.store}/{d.group}\t{d.instance}\t{where}\t{bucket}\t{d.what}"
            f"\t{d.node}: {d.mine}\t{d.other or '-'}: {d.theirs or '-'}"
        )
