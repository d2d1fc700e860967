"""``pxq bench``: closed-loop enqueue load and a dequeue drain against a multi-process cluster.

This module owns the end-to-end benchmark of the production runtime (``docs/performance.md``):

* **enqueue** (the default mode): ``inflight`` concurrent ``AsyncClient.enqueue`` calls from
  this one process, each call re-issued as soon as it is acknowledged (closed loop), for
  ``warmup_s`` (not measured) and then ``duration_s`` (measured), bounded by ``max_items``;
* **drain** (``drain > 0``): a backlog of ``drain`` items is enqueued first (closed loop with
  the same concurrency), then one consumer of one consumer group drains it (``get_items``
  items per Get); items/s of both;
* **rss** (``rss`` marks): a backlog grows through the marks (nobody consumes) and the
  RssAnon, RssFile and VmHWM of every node process (``/proc/<pid>/status``) are sampled
  before the first item and at each mark; the summary gives the RssAnon growth from the
  first mark to the last, in kB and in MB per million items.

It runs against a running cluster (``pxq cluster up``: the node pids come from the pid files of
its home) or one it starts itself in a temporary home on free loopback ports (``net.cluster.processes.up``
and ``down``, one process per replica, LMDB with fsync on every replica for every round).

Every run reads the CPU time (``/proc/<pid>/stat`` utime+stime) of every node process and of
this process before and after the measured window, and reports CPU µs per acknowledged item
summed over all of them. Output is JSON lines (see ``docs/performance.md`` for the fields):
one ``"type": "second"`` line per measured second, in enqueue mode one ``"type": "latency"``
line per run (quantiles of every ack latency of the measured window, for a CDF: ``pxq plot
--cdf``), and one ``"type": "summary"`` line per run;
``net.tools.baselines`` adds ``"type": "baseline"`` lines. A rich progress display goes to
stderr. Every load loop is bounded by a count and by time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from net.client.api import AsyncClient, PxqError
from net.cluster.processes import ClusterHome, down, live_nodes, up
from net.tools.measure import (
    CpuWatch,
    Emit,
    Line,
    free_ports,
    fsync_probe_ms,
    latency_fields,
    latency_quantiles,
    loadavg,
    machine_info,
    proc_status_kb,
)
from pxq.config import ClusterConfig, load_config

SCHEMA: Final = 1
MAX_ITEMS_DEFAULT: Final = 20_000_000
FILL_TIMEOUT_MIN_S: Final = 60.0
FILL_RATE_FLOOR: Final = 500.0
"""Items/s the backlog fill is allowed to fall to before its time bound stops it."""
DRAIN_TIMEOUT_MIN_S: Final = 60.0
SETTLE_S: Final = 15.0
"""Wait for the calls in flight at the end (the client's call timeout is 10 s)."""
ERROR_PAUSE_S: Final = 0.01
UP_TIMEOUT_S: Final = 60.0
RSS_TIME_MAX_S_DEFAULT: Final = 900.0
"""Default bound on the whole ``--rss`` fill (the marks not reached by then are skipped)."""
RSS_SETTLE_S: Final = 1.0
"""Pause after a mark is reached before sampling (writes in flight land, follower catch up)."""
RSS_MARKS_MAX: Final = 64


# -- the target cluster -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The cluster under test: its configuration and the pids of its node processes."""

    config_file: Path
    config: ClusterConfig
    node_pids: dict[str, int]
    started: bool
    masters: dict[str, str]


def bench_toml(
    groups: int, queues: int, ports: Sequence[int], linger_ms: int | None, *, tls: bool = True
) -> str:
    """The configuration ``--start-cluster`` uses: one store of three replicas on ``ports``,
    ``groups`` Paxos groups, topic "bench" with ``queues`` queues and consumer group "g";
    with ``tls`` (``pxq cluster up``'s default), ``[tls]`` on (material beside the file)."""
    lines = ["[cluster]", 'name = "bench"']
    if tls:
        lines += ["[tls]"]
    if linger_ms is not None:
        lines += ["[batching]", f"linger_ms = {linger_ms}"]
    lines += ["[[stores]]", 'name = "store0"', f"groups = {groups}"]
    for i, port in enumerate(ports):
        lines += ["[[stores.replicas]]", f'node = "s{i}"', f"port = {port}"]
    lines += ["[[topics]]", 'name = "bench"', f"queues = {queues}"]
    lines += ["[[topics.consumer_groups]]", 'name = "g"']
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def started_cluster(
    groups: int, queues: int, linger_ms: int | None = None, *, tls: bool = True
) -> AsyncIterator[Target]:
    """``pxq cluster up`` in a temporary home on free ports; ``down`` and removal on exit."""
    with tempfile.TemporaryDirectory(prefix="pxq-bench-") as tmp:
        root = Path(tmp)
        config_file = root / "cluster.toml"
        config_file.write_text(
            bench_toml(groups, queues, free_ports(3), linger_ms, tls=tls), encoding="utf-8"
        )
        home = ClusterHome(root / ".pxq")
        result = await up(home, config_file, timeout_s=UP_TIMEOUT_S)
        try:
            yield Target(
                config_file=config_file,
                config=result.config,
                node_pids={n.node: n.pid for n in result.nodes},
                started=True,
                masters={f"{s}/{g}": node for (s, g), node in sorted(result.masters.items())},
            )
        finally:
            await asyncio.to_thread(down, home)


def running_cluster(config_file: Path, home: Path | None) -> Target:
    """A cluster started elsewhere (``pxq cluster up``): its config and live node pids (from
    the pid files of ``home``, default the config file's directory). Raises ``ConfigError``."""
    config = load_config(config_file)
    root = home if home is not None else config_file.parent
    return Target(
        config_file=config_file,
        config=config,
        node_pids=live_nodes(ClusterHome(root)),
        started=False,
        masters={},
    )


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=False,
            )

    def start(self, description: str, total: float) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._progress.start()
        else:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total, status="")

    def update(self, completed: float, status: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, status=status)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# -- the enqueue load ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadParams:
    inflight: int
    payload_bytes: int
    duration_s: float
    warmup_s: float = 1.0
    max_items: int = MAX_ITEMS_DEFAULT
    topic: str | None = None


async def _sleep_until(t: float) -> None:
    """Sleep until ``time.perf_counter()`` has reached ``t``. The loop's timers may fire up to
    its clock resolution early (and use another clock): without the loop, a per-second line
    could be emitted while calls still finish inside its second."""
    while (delay := t - time.perf_counter()) > 0:
        await asyncio.sleep(delay)


def _status(items_s: float, lat: Line) -> str:
    p99 = lat.get("p99_ms")
    return f"{items_s:,.0f} items/s  p99 {p99 if p99 is not None else '-'} ms"


async def enqueue_load(
    client: AsyncClient,
    *,
    topic: str,
    params: LoadParams,
    watch: CpuWatch,
    emit: Emit,
    progress: Progress,
    tags: Line,
) -> Line:
    """The closed loop; emits one line per measured second and returns the summary fields."""
    payload = os.urandom(params.payload_bytes)
    start = time.perf_counter()
    measure_from = start + params.warmup_s
    end = measure_from + params.duration_s
    seconds = max(1, math.ceil(params.duration_s - 1e-9))
    buckets: list[list[float]] = [[] for _ in range(seconds)]
    bucket_errors = [0] * seconds
    errors: dict[str, int] = {}
    issued = 0
    warm_acked = 0

    async def worker() -> None:
        nonlocal issued, warm_acked
        while issued < params.max_items:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            issued += 1
            try:
                await client.enqueue(topic, payload)
            except PxqError as exc:
                t1 = time.perf_counter()
                if measure_from <= t1 < end:
                    kind = type(exc).__name__
                    errors[kind] = errors.get(kind, 0) + 1
                    bucket_errors[int(t1 - measure_from)] += 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            t1 = time.perf_counter()
            if measure_from <= t1 < end:
                buckets[int(t1 - measure_from)].append(t1 - t0)
            elif t1 < measure_from:
                warm_acked += 1

    workers = [asyncio.create_task(worker()) for _ in range(params.inflight)]
    progress.start(f"enqueue x{params.inflight} {params.payload_bytes} B", params.duration_s)
    try:
        await _sleep_until(measure_from)
        cpu0 = watch.snapshot()
        load0 = loadavg()
        for i in range(seconds):
            await _sleep_until(min(end, measure_from + i + 1))
            width = min(1.0, params.duration_s - i)
            lat = latency_fields(buckets[i])
            rate = len(buckets[i]) / width
            emit(
                {
                    "type": "second",
                    **tags,
                    "t_s": i + 1,
                    "items": len(buckets[i]),
                    "items_s": round(rate, 1),
                    **{k: lat[k] for k in ("p50_ms", "p99_ms", "p999_ms")},
                    "errors": bucket_errors[i],
                    "load1": loadavg()[:1][0] if loadavg() else None,
                }
            )
            progress.update(i + width, _status(rate, lat))
        cpu1 = watch.snapshot()
        load1 = loadavg()
        acked = sum(len(b) for b in buckets)
        # Calls in flight at the end finish (bounded by the client's call timeout).
        _, pending = await asyncio.wait(workers, timeout=SETTLE_S)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    every = [x for b in buckets for x in b]
    emit({"type": "latency", **tags, **latency_quantiles(every)})
    return {
        "mode": "enqueue",
        "acked": acked,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "items_s": round(acked / params.duration_s, 1),
        **latency_fields(every),
        **CpuWatch.delta(cpu0, cpu1, acked),
        "loadavg_before": load0,
        "loadavg_after": load1,
        "issued": issued,
        "warmup_acked": warm_acked,
        "unsettled_calls": len(pending),
    }


async def fill_backlog(
    client: AsyncClient,
    topic: str,
    items: int,
    inflight: int,
    payload_bytes: int,
    *,
    deadline: float | None = None,
) -> tuple[int, float]:
    """Enqueue ``items`` items with ``inflight`` calls at once, bounded in time (by
    ``deadline``, a ``time.perf_counter`` value, when given); returns (acknowledged,
    seconds)."""
    payload = os.urandom(payload_bytes)
    if deadline is None:
        deadline = time.perf_counter() + max(FILL_TIMEOUT_MIN_S, items / FILL_RATE_FLOOR)
    issued = 0
    acked = 0

    async def worker() -> None:
        nonlocal issued, acked
        while issued < items and time.perf_counter() < deadline:
            issued += 1
            try:
                await client.enqueue(topic, payload)
            except PxqError:
                issued -= 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            acked += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(inflight, items))))
    return acked, time.perf_counter() - t0


async def drain_load(
    client: AsyncClient,
    *,
    topic: str,
    group: str,
    backlog: int,
    params: LoadParams,
    watch: CpuWatch,
    emit: Emit,
    progress: Progress,
    tags: Line,
    seek_first: bool,
    get_items: int | None = None,
) -> Line:
    """Fill a backlog of ``backlog`` items, then drain it with one consumer of ``group``
    (``get_items``: its ``get_items_max``, items per Get and per batch; None: the default)."""
    if seek_first:
        # Items from before this run are not part of the backlog: move the cursor past them.
        await client.seek(topic, group, time_ms=int(time.time() * 1000))
    progress.start(f"fill backlog of {backlog:,}", backlog)
    fill_cpu0 = watch.snapshot()
    filled, fill_s = await fill_backlog(
        client, topic, backlog, params.inflight, params.payload_bytes
    )
    fill_cpu = CpuWatch.delta(fill_cpu0, watch.snapshot(), filled)
    progress.update(filled, f"{filled / max(fill_s, 1e-9):,.0f} items/s")
    progress.start(f"drain {filled:,} items (group {group})", filled)
    options = {} if get_items is None else {"get_items_max": get_items}
    consumer = client.consumer(group, topic, options=options)
    seen = 0
    per_second: list[int] = []
    timeout = max(DRAIN_TIMEOUT_MIN_S, filled / FILL_RATE_FLOOR)
    load0 = loadavg()
    cpu0 = watch.snapshot()
    t0 = time.perf_counter()
    next_tick = t0 + 1
    tick_seen = 0
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            async for batch in consumer.batches():
                seen += len(batch)
                now = time.perf_counter()
                while now >= next_tick:
                    per_second.append(seen - tick_seen)
                    emit(
                        {
                            "type": "second",
                            **tags,
                            "t_s": len(per_second),
                            "items": seen - tick_seen,
                            "items_s": float(seen - tick_seen),
                            "p50_ms": None,
                            "p99_ms": None,
                            "p999_ms": None,
                            "errors": 0,
                            "load1": loadavg()[:1][0] if loadavg() else None,
                        }
                    )
                    progress.update(seen, f"{seen - tick_seen:,} items/s")
                    tick_seen = seen
                    next_tick += 1
                if seen >= filled:
                    consumer.stop()
    except TimeoutError:
        timed_out = True
    finally:
        elapsed = time.perf_counter() - t0
        cpu1 = watch.snapshot()
        await consumer.close()
    progress.update(seen, f"{seen / max(elapsed, 1e-9):,.0f} items/s")
    return {
        "mode": "drain",
        "backlog": backlog,
        "filled": filled,
        "fill_s": round(fill_s, 3),
        "fill_items_s": round(filled / max(fill_s, 1e-9), 1),
        "fill_cpu_us_per_item": fill_cpu["cpu_us_per_item"],
        "drained": seen,
        "get_items": get_items,
        "drain_s": round(elapsed, 3),
        "items_s": round(seen / max(elapsed, 1e-9), 1),
        "timed_out": timed_out,
        **CpuWatch.delta(cpu0, cpu1, seen),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


def rss_sample(node_pids: dict[str, int]) -> dict[str, dict[str, int]]:
    """``RSS_FIELDS`` (kB) of every node process still alive."""
    out: dict[str, dict[str, int]] = {}
    for node, pid in sorted(node_pids.items()):
        values = proc_status_kb(pid)
        if values is not None:
            out[node] = values
    return out


def rss_growth(first: Line, last: Line) -> Line:
    """RssAnon growth of every node between two ``rss`` lines: kB, and MB per million items
    enqueued in between (None when no item was)."""
    items = int(last["enqueued"]) - int(first["enqueued"])
    growth: dict[str, int] = {}
    per_million: dict[str, float | None] = {}
    for node, values in last["nodes"].items():
        before = first["nodes"].get(node)
        if before is None or "RssAnon" not in before or "RssAnon" not in values:
            continue
        kb = int(values["RssAnon"]) - int(before["RssAnon"])
        growth[node] = kb
        per_million[node] = round(kb / 1024 / items * 1e6, 3) if items > 0 else None
    worst = max(growth.values(), default=None)
    return {
        "rss_anon_growth_kb": growth,
        "rss_anon_growth_mb_per_million": per_million,
        "rss_anon_growth_max_mb": None if worst is None else round(worst / 1024, 3),
        "items_between": items,
    }


async def rss_load(
    client: AsyncClient,
    *,
    topic: str,
    marks: Sequence[int],
    params: LoadParams,
    node_pids: dict[str, int],
    emit: Emit,
    progress: Progress,
    tags: Line,
    time_max_s: float,
) -> Line:
    """Grow a backlog (enqueue, nobody consumes) through ``marks`` (ascending item counts) and
    sample the RssAnon of every node process before the first item and at each mark: one
    ``"type": "rss"`` line per sample. The whole fill is bounded by ``time_max_s``; a mark not
    reached by then ends the run with a last sample at the count reached."""
    if not marks or list(marks) != sorted(set(marks)) or len(marks) > RSS_MARKS_MAX:
        raise ValueError(f"--rss: expected 1..{RSS_MARKS_MAX} ascending distinct item counts")
    t0 = time.perf_counter()
    deadline = t0 + time_max_s
    enqueued = 0
    lines: list[Line] = []

    def sample(mark: int, fill_s: float, filled: int) -> None:
        line: Line = {
            "type": "rss",
            **tags,
            "mark": mark,
            "enqueued": enqueued,
            "t_s": round(time.perf_counter() - t0, 3),
            "fill_items_s": round(filled / fill_s, 1) if fill_s > 0 else None,
            "nodes": rss_sample(node_pids),
            "load1": loadavg()[:1][0] if loadavg() else None,
        }
        emit(line)
        lines.append(line)

    sample(0, 0.0, 0)
    progress.start(f"backlog to {marks[-1]:,} items (RssAnon at each mark)", marks[-1])
    timed_out = False
    for mark in marks:
        filled, fill_s = await fill_backlog(
            client, topic, mark - enqueued, params.inflight, params.payload_bytes, deadline=deadline
        )
        enqueued += filled
        await asyncio.sleep(RSS_SETTLE_S)
        sample(mark, fill_s, filled)
        anon = {n: v.get("RssAnon") for n, v in lines[-1]["nodes"].items()}
        progress.update(enqueued, f"{enqueued:,} items, RssAnon kB {anon}")
        if enqueued < mark:
            timed_out = True
            break
    # Growth from the first mark on (the measure: from 100,000 items to the last),
    # and from the empty store.
    first = lines[1] if len(lines) > 2 else lines[0]
    return {
        "mode": "rss",
        "marks": list(marks),
        "enqueued": enqueued,
        "acked": enqueued,
        "errors": 0,
        "items_s": round(enqueued / max(time.perf_counter() - t0, 1e-9), 1),
        "timed_out": timed_out,
        "time_max_s": time_max_s,
        "from_mark": first["mark"],
        **rss_growth(first, lines[-1]),
        "from_empty": rss_growth(lines[0], lines[-1]),
        "samples": [
            {
                "enqueued": ln["enqueued"],
                "rss_anon_kb": {n: v.get("RssAnon") for n, v in ln["nodes"].items()},
            }
            for ln in lines
        ],
    }


# -- a whole bench invocation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """Everything ``pxq bench`` was asked for."""

    inflight: tuple[int, ...] = (200,)
    payload_bytes: tuple[int, ...] = (100,)
    groups: tuple[int, ...] = (1,)
    queues_per_group: int = 1
    duration_s: float = 10.0
    warmup_s: float = 1.0
    max_items: int = MAX_ITEMS_DEFAULT
    drain: int = 0
    get_items: int | None = None
    """Drain mode: the consumer's ``get_items_max`` (None: the consumer's default)."""
    rss: tuple[int, ...] = ()
    """RSS mode: backlog sizes at which to sample the nodes' RssAnon (ascending)."""
    rss_time_max_s: float = RSS_TIME_MAX_S_DEFAULT
    start_cluster: bool = False
    tls: bool = True
    """With ``start_cluster``: the started cluster runs with TLS (False: ``--no-tls``)."""
    config_file: Path = Path(".pxq") / "cluster.toml"
    home: Path | None = None
    topic: str | None = None
    group: str | None = None
    linger_ms: int | None = None
    inflight_batches: tuple[int | None, ...] = (None,)
    """The producer's batches in flight per queue, one run per value (None: the
    configuration's ``[batching] inflight_batches``)."""
    baselines: bool = False
    progress: bool = True


def _topic_and_group(
    config: ClusterConfig, topic: str | None, group: str | None
) -> tuple[str, str | None]:
    if topic is None:
        if not config.topics:
            raise ValueError("the configuration has no topic")
        topic = config.topics[0].name
    info = config.topic(topic)
    if info is None:
        raise ValueError(f"no topic {topic!r} in the configuration")
    if group is None and info.subscribers:
        group = info.subscribers[0].name
    return topic, group


async def run_cases(
    target: Target,
    spec: BenchSpec,
    cases: Sequence[tuple[int, int, int | None]],
    emit: Emit,
    first_run: int,
) -> list[Line]:
    """Every (inflight, payload, inflight batches) case against ``target``; returns the
    summary lines."""
    topic, group = _topic_and_group(target.config, spec.topic, spec.group)
    if spec.drain and group is None:
        raise ValueError(f"topic {topic!r} has no consumer group to drain with")
    watch = CpuWatch(target.node_pids)
    progress = Progress(spec.progress)
    summaries: list[Line] = []
    try:
        for n, (inflight, payload, batches) in enumerate(cases):
            producer: dict[str, int] = {}
            if spec.linger_ms is not None:
                producer["linger_ms"] = spec.linger_ms
            if batches is not None:
                producer["inflight_batches_max"] = batches
            run = first_run + n
            groups = sum(s.groups for s in target.config.stores)
            tags: Line = {
                "run": run,
                "mode": "drain" if spec.drain else "rss" if spec.rss else "enqueue",
                "inflight": inflight,
                "payload_bytes": payload,
                "groups": groups,
                "inflight_batches": batches
                if batches is not None
                else target.config.batching.inflight_batches,
            }
            params = LoadParams(
                inflight=inflight,
                payload_bytes=payload,
                duration_s=spec.duration_s,
                warmup_s=spec.warmup_s,
                max_items=spec.max_items,
            )
            async with await AsyncClient.connect(
                target.config, name="pxq-bench", producer_options=producer
            ) as client:
                if spec.rss:
                    fields = await rss_load(
                        client,
                        topic=topic,
                        marks=spec.rss,
                        params=params,
                        node_pids=target.node_pids,
                        emit=emit,
                        progress=progress,
                        tags=tags,
                        time_max_s=spec.rss_time_max_s,
                    )
                elif spec.drain:
                    assert group is not None
                    fields = await drain_load(
                        client,
                        topic=topic,
                        group=group,
                        backlog=spec.drain,
                        params=params,
                        watch=watch,
                        emit=emit,
                        progress=progress,
                        tags=tags,
                        seek_first=not target.started,
                        get_items=spec.get_items,
                    )
                else:
                    fields = await enqueue_load(
                        client,
                        topic=topic,
                        params=params,
                        watch=watch,
                        emit=emit,
                        progress=progress,
                        tags=tags,
                    )
            probe = await asyncio.to_thread(fsync_probe_ms, target.config_file.parent)
            summary: Line = {
                "type": "summary",
                **tags,
                **fields,
                "fsync_probe_p50_ms": probe,
                "duration_s": spec.duration_s,
                "warmup_s": spec.warmup_s,
                "topic": topic,
                "queues": target.config.topic(topic).queues,  # type: ignore[union-attr]
                "replicas": sum(len(s.replicas) for s in target.config.stores),
                "cluster": "started" if target.started else str(target.config_file),
                "tls": target.config.tls.enabled,
                "node_pids": target.node_pids,
                "masters": target.masters,
            }
            emit(summary)
            summaries.append(summary)
    finally:
        progress.stop()
    return summaries


async def run_bench(spec: BenchSpec, emit: Emit, note: Callable[[str], None]) -> list[Line]:
    """Run ``spec``; emits every line; returns the summary lines (the pxq runs)."""
    cases = [
        (i, p, b) for i in spec.inflight for p in spec.payload_bytes for b in spec.inflight_batches
    ]
    emit({"type": "machine", "schema": SCHEMA, **machine_info(Path(tempfile.gettempdir()))})
    summaries: list[Line] = []
    if spec.start_cluster:
        for groups in spec.groups:
            queues = groups * spec.queues_per_group
            tls = "TLS" if spec.tls else "no TLS"
            note(
                f"starting a cluster: 3 replicas, {groups} Paxos group(s), {queues} queue(s), {tls}"
            )
            async with started_cluster(groups, queues, spec.linger_ms, tls=spec.tls) as target:
                note(f"cluster up: nodes {target.node_pids}, masters {target.masters}")
                summaries += await run_cases(target, spec, cases, emit, len(summaries))
    else:
        target = running_cluster(spec.config_file, spec.home)
        if not target.node_pids:
            note(
                "no live node pid files found next to the config: the CPU figures cover "
                "this process only"
            )
        summaries += await run_cases(target, spec, cases, emit, 0)
    if spec.baselines:
        from net.tools.baselines import run_baselines

        await asyncio.to_thread(run_baselines, summaries, spec.duration_s, emit, note)
    return summaries


def open_output(path: str) -> Any:
    """stdout for "-", else the file (appended to, so sweeps can collect several runs)."""
    if path == "-":
        return contextlib.nullcontext(sys.stdout)
    return Path(path).open("a", encoding="utf-8")
