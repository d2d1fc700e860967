"""Scenario files: the TOML schema, its loader and validation.

A scenario scripts one simulated run: the cluster, the baseline network, disk and clocks,
the workload, a timed list of faults (each at a time or after a traced event, with an
optional duration that schedules the inverse), background random faults for swarms, the
final phase (heal, restart, liveness bound, settling and final reads), the checks (each
optionally scoped to a time window and expected to fail: ``[check.NAME]``), and the
expectation (``pass``, or ``fail`` for a negative control). Unknown keys and bad values are rejected with the file,
the key path and the reason. The format is documented in ``docs/simulation.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pxq.config.model import REPLICAS_PER_STORE_MAX
from pxq.lock.messages import LEASE_MS_MAX
from pxq.lock.timing import (
    LEASE_MS_DEFAULT,
    MARGIN_MS_DEFAULT,
    POLL_MS_DEFAULT,
    RENEW_MS_DEFAULT,
    lease_timing_problem,
)
from pxq.toml_reader import MISSING, TomlError, TomlTable, parse, read_text
from sim.disk import DiskSpec
from sim.network import DelayDist, DelaySpec, NetworkSpec

SCHEMA_VERSION = 1
QUEUE_TIMEOUT_MS_DEFAULT = 5000
"""The queue producers' call timeout unless ``[workload] timeout_ms`` says otherwise."""

ACTIONS = (
    "partition",
    "heal",
    "clog",
    "unclog",
    "loss",
    "duplicate",
    "reorder",
    "delay",
    "crash",
    "restart",
    "pause",
    "resume",
    "clock",
    "disk",
    "reply_before_persist",
    "seek",
)
"""Fault actions a scenario may use (``seek`` is an operator's replay, not a fault)."""

TARGETED = {
    "partition",
    "clog",
    "unclog",
    "crash",
    "restart",
    "pause",
    "resume",
    "clock",
    "disk",
    "reply_before_persist",
}
DISK_FAULTS = (
    "bitflip",
    "fsync_error",
    "full",
    "slow",
    "lying_fsync",
    "torn",
    "trust_torn",
    "replaced",
    "wiped",
)
CHECKS = (
    "agreement",
    "no_loss",
    "realtime_order",
    "liveness",
    "total_queue",
    "queue_order",
    "replay",
    "retry_flow",
    "retention",
    "linearizable",
    "fencing",
    "ownership",
    "failover",
    "rate_limit",
    "balance",
    "storage_full",
    "retry_delay",
    "availability",
    "delivery",
    "read_after_ack",
    "cursor_monotonic",
)
LIVENESS_CHECKS = ("liveness", "delivery", "availability")
"""Checks of progress, not of safety: a negative control's ``safety = "fail"`` needs another
check to fail (``delivery``: every stored item reached every group by the end;
``availability``: a group under a healthy master kept acknowledging)."""
WINDOWED_CHECKS = ("total_queue", "delivery", "read_after_ack", "cursor_monotonic", "failover")
"""Checks that ``[check.NAME] window_ms`` can scope to a span of the run."""
LOG_CHECKS = ("agreement", "no_loss", "realtime_order", "liveness", "availability")
QUEUE_CHECKS = (
    "agreement",
    "total_queue",
    "queue_order",
    "replay",
    "retry_flow",
    "retention",
    "liveness",
    "ownership",
    "failover",
    "rate_limit",
    "balance",
    "linearizable",
    "fencing",
    "storage_full",
    "retry_delay",
    "availability",
    "delivery",
    "read_after_ack",
    "cursor_monotonic",
)
OPT_IN_CHECKS = ("storage_full", "retry_delay", "availability")
"""Checks a scenario must name: ``storage_full`` (enqueues were refused for a short storage,
then acknowledged again) holds only where a disk is made to fill; ``retry_delay`` (a failed
item reaches the next retry level within its delay plus a small bound) only where no fault
holds requests up or moves masters; ``availability`` (a group whose master stays healthy
never stops acknowledging for over 200 ms) only where the faults spare the master and the
network (no loss, no storms)."""
OWNERSHIP_CHECKS = ("ownership", "failover", "rate_limit", "balance", "linearizable", "fencing")
"""Queue checks that need consumers owning queues through the lock service (``linearizable``
and ``fencing`` check the consumers' and schedulers' own lock calls)."""
RANDOM_FAULT_KINDS = (
    "partition",
    "crash",
    "pause",
    "clog",
    "loss",
    "duplicate",
    "reorder",
    "clock",
    "torn",
    "consumer_crash",
    "consumer_pause",
    "disk_full",
)
RANDOM_FAULT_OPT_IN = ("consumer_crash", "consumer_pause", "disk_full")
RANDOM_FAULT_DEFAULT = tuple(k for k in RANDOM_FAULT_KINDS if k not in RANDOM_FAULT_OPT_IN)
"""The kinds a swarm draws from unless it lists its own (consumer faults and ``disk_full``,
which needs a disk reserve, are opt-in)."""
LOCK_CHECKS = ("agreement", "linearizable", "fencing", "liveness")
CHECKS_OF_KIND = {"log": LOG_CHECKS, "queue": QUEUE_CHECKS, "lock": LOCK_CHECKS}
WORKLOADS = ("log", "queue", "lock")

SELECTOR_RE = re.compile(
    r"^(master|any|minority|majority|all|crashed|paused|follower\[(\d+)\]|n(\d+)"
    r"|consumer\[(\d+)\]|producer\[(\d+)\]|lock\[(\d+)\]|scheduler\[(\d+)\]|lock_master)$"
)
"""Node selectors, resolved when the fault fires: ``master`` (of ``group``), ``follower[i]``
(the i-th replica that is not the master, in name order), ``any`` (one at random),
``minority`` / ``majority`` (a random minority or majority set), ``all``, ``crashed`` (the
most recently crashed node that is still down), ``paused`` (likewise), a node name ``nK``,
or, with the queue workload, ``consumer[i]`` / ``producer[i]`` (client processes), and with
consumers owning queues through locks, ``lock[i]`` (a lock replica), ``lock_master`` (the
master of lock group ``group``) and ``scheduler[i]``."""


class ScenarioError(TomlError):
    """A scenario file is unreadable or invalid. ``str()`` names the file, key and reason."""


# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    replicas: int = 3
    groups: int = 1
    paxos: tuple[tuple[str, int], ...] = ()
    """Overrides of ``PaxosConfig`` fields (validated against it when the run starts)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSpec:
    drift_ppm_max: int = 100
    skew_ms_max: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """The workload. ``log``: clients append unique values to the replicated log. ``queue``:
    producers enqueue unique items to one topic, consumer groups consume them. ``lock``:
    clients acquire, renew, release and read locks of the lock service."""

    kind: Literal["log", "queue", "lock"] = "log"
    clients: int = 3
    rate_per_s: int = 200
    value_bytes: int = 100
    timeout_ms: int = 2000
    # -- queue workload --------------------------------------------------------------------
    producers: int = 2
    concurrency: int = 4
    """Application processes per producer, each with one call in flight."""
    batch_items: int | None = None
    """The producers' ``batch_items_max`` (None: the configuration's). Small batches fill
    up, so several batches of one queue are in flight at once (pipelined)."""
    queues: int = 8
    consumer_groups: int = 2
    consumers_per_group: int = 2
    fail_rate: float = 0.0
    """Probability that a handler fails an item (it then goes through the retry levels)."""
    handle_ms: int = 1
    slow_handle_ms: int | None = None
    """If set, the last consumer group's handler takes this long per batch (a slow group)."""
    retry_delays_ms: tuple[int, ...] = ()
    dead_letter: bool = True
    hold_items: int | None = None
    """Retention hold (items kept behind the slowest group); None: no count hold."""
    duplicates_allowed: bool = True
    """False: any duplicate delivery to a group is a violation (idempotent producer, no
    consumer crash)."""
    # -- lock workload ---------------------------------------------------------------------
    keys: int = 4
    """Lock keys the clients contend for."""
    lease_ms: int = 1000
    """The lease every acquire and renew asks for (the lock workload), or the consumers'
    ownership lease (the queue workload with ``ownership = "locks"``)."""
    # -- queue workload: ownership through the lock service -------------------------------
    ownership: Literal["static", "locks"] = "static"
    """``static``: each consumer owns a fixed split of the queues. ``locks``: consumers take
    queues through the lock service (``lock_replicas`` replicas), spread by consistent
    hashing or, with ``schedulers``, by the active scheduler."""
    lock_replicas: int = 3
    schedulers: int = 0
    margin_ms: int = MARGIN_MS_DEFAULT
    renew_ms: int = RENEW_MS_DEFAULT
    poll_ms: int = POLL_MS_DEFAULT
    rate_items_per_s: int | None = None
    """Each consumer group's dequeue rate limit (items/s), None: unlimited."""
    rate_burst: int | None = None
    hot_queues: int = 0
    """With ``hot_share``: a load skew, this share of the items goes to the first
    ``hot_queues`` queues."""
    hot_share: float = 0.0
    band_pct: int = 20
    """The scheduler's hysteresis band (percent around the mean load)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AfterSpec:
    event: str
    count: int = 1
    node: str | None = None
    delay_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One scripted fault. ``params`` holds the action's own keys, already validated."""

    action: str
    at_ms: int | None = None
    after: AfterSpec | None = None
    target: str | None = None
    group: int = 0
    duration_ms: int | None = None
    direction: Literal["both", "in", "out"] = "both"
    power_loss: bool = True
    rate: float = 0.0
    delay: DelaySpec | None = None
    drift_ppm: int | None = None
    skew_ms: int = 0
    mono_stall_ms: int | None = None
    """clock: the monotonic clock stands still this long, then runs on without catching up."""
    mono_jump_ms: int | None = None
    """clock: the monotonic clock steps this far forward."""
    disk_fault: str | None = None
    fsync: DelaySpec | None = None
    peer: str | None = None
    consumer_group: str | None = None
    """seek: the consumer group to move."""
    queue: int | None = None
    """seek: the queue (None: every queue of the topic)."""
    offset: int | None = None
    """seek: the target offset."""
    back_ms: int | None = None
    """seek: a rewind by this many ms on the store's time (``Seek.back_ms``: never forward)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomFaultSpec:
    """Background faults: when ``enabled``, the seed picks which of ``kinds`` are on and how
    often each fires (mean interval between ``interval_ms_min`` and ``interval_ms_max``); at
    most ``max_down`` replicas are crashed or paused at once."""

    enabled: bool = False
    kinds: tuple[str, ...] = RANDOM_FAULT_DEFAULT
    interval_ms_min: int = 200
    interval_ms_max: int = 3000
    duration_ms_max: int = 3000
    max_down: Literal["minority", "majority", "all"] = "majority"
    """How many replicas random faults may crash or pause at once. A majority down stalls
    the cluster (no quorum) but must never cost an acknowledged value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalSpec:
    heal_all: bool = True
    restart_all: bool = True
    liveness_ms: int = 5000
    quiesce_ms: int = 3000
    settle_ms: int = 30_000
    """The queue workload: after the clients stop, the longest the run waits for every call
    to resolve, every acknowledged item to reach every group and every failed item its next
    retry level, before the final reads of the store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSpec:
    """``[check.NAME]``: how one check of ``checks`` is judged."""

    window_ms: tuple[int, int] | None = None
    """Judge only what starts in ``[from_ms, to_ms]`` of the run (``WINDOWED_CHECKS``)."""
    expect: Literal["pass", "fail"] = "pass"
    """``fail``: the check must fail (a negative control naming what it catches)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    version: int
    name: str
    description: str
    seed: int
    duration_ms: int
    cluster: ClusterSpec
    network: NetworkSpec
    disk: DiskSpec
    clock: ClockSpec
    workload: WorkloadSpec
    faults: tuple[FaultSpec, ...]
    random_faults: RandomFaultSpec
    final: FinalSpec
    checks: tuple[str, ...]
    expect_safety: Literal["pass", "fail"]
    file: str = "<scenario>"
    check_specs: tuple[tuple[str, CheckSpec], ...] = ()
    """``[check.NAME]`` tables, by check name (sorted)."""

    def check_spec(self, name: str) -> CheckSpec:
        return dict(self.check_specs).get(name, CheckSpec())


# --------------------------------------------------------------------------------------------
# Reading


def _delay(t: TomlTable, name: str, default: DelaySpec | None) -> DelaySpec | None:
    if not t.has(name):
        return default
    d = t.table(name)
    dist: DelayDist = d.choice("dist", ("constant", "uniform", "exponential"), "uniform")
    ms = {k: d.integer(k, None, lo=0) for k in ("mean_ms", "min_ms", "max_ms")}
    us = {k: d.integer(k, None, lo=0) for k in ("mean_us", "min_us", "max_us")}
    d.done()
    values: dict[str, int] = {}
    for base in ("mean", "min", "max"):
        in_ms, in_us = ms[f"{base}_ms"], us[f"{base}_us"]
        if in_ms is not None and in_us is not None:
            raise d.error(f"{base}_us", f"give {base}_ms or {base}_us, not both")
        if in_ms is not None:
            values[f"{base}_us"] = in_ms * 1000
        elif in_us is not None:
            values[f"{base}_us"] = in_us
    if dist == "constant":
        values.setdefault("mean_us", values.get("min_us", 1000))
        values.setdefault("min_us", values["mean_us"])
        values.setdefault("max_us", values["mean_us"])
    elif dist == "uniform":
        values.setdefault("min_us", 0)
        values.setdefault("max_us", max(values["min_us"], values.get("mean_us", 0) * 2))
        values.setdefault("mean_us", (values["min_us"] + values["max_us"]) // 2)
    else:
        if "mean_us" not in values:
            raise d.error("mean_ms", "is required for an exponential delay")
        values.setdefault("min_us", 0)
        values.setdefault("max_us", values["mean_us"] * 20)
    try:
        return DelaySpec(dist=dist, **values)
    except ValueError as exc:
        raise t.error(name, str(exc)) from None


def _selector(t: TomlTable, name: str, required: bool) -> str | None:
    v = t.string(name, MISSING if required else None)
    if v is None:
        return None
    if not SELECTOR_RE.match(v):
        raise t.error(
            name,
            f"unknown selector {v!r} (expected master, follower[i], any, minority, "
            "majority, all, crashed, paused, a node name nK, consumer[i], producer[i], "
            "lock[i], lock_master or scheduler[i])",
        )
    return str(v)


# --------------------------------------------------------------------------------------------
# Loading


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    return loads(read_text(path, error=ScenarioError), file=str(path))


def loads(text: str, *, file: str = "<scenario>") -> Scenario:
    """Parse and validate scenario text."""
    return _scenario(parse(text, file=file, error=ScenarioError))


def _scenario(t: TomlTable) -> Scenario:
    version = t.integer("version")
    if version != SCHEMA_VERSION:
        raise t.error("version", f"unsupported version {version} (this pxq reads {SCHEMA_VERSION})")
    name = t.string("name")
    description = t.string("description", "")
    seed = t.integer("seed", 0, lo=0)
    duration_ms = t.integer("duration_ms", lo=1)

    c = t.table("cluster")
    replicas = c.integer("replicas", 3, lo=1, hi=REPLICAS_PER_STORE_MAX)
    if replicas % 2 == 0:
        raise c.error("replicas", f"must be odd, got {replicas}")
    groups = c.integer("groups", 1, lo=1, hi=1024)
    p = c.table("paxos")
    paxos = tuple(sorted((k, p.integer(k, lo=0)) for k in list(p.data)))
    p.done()
    c.done()
    cluster = ClusterSpec(replicas=replicas, groups=groups, paxos=paxos)

    n = t.table("network")
    try:
        network = NetworkSpec(
            delay=_delay(n, "delay", NetworkSpec().delay) or NetworkSpec().delay,
            loss=n.probability("loss", 0.0),
            duplicate=n.probability("duplicate", 0.0),
            reorder=n.probability("reorder", 0.0),
            reorder_us=n.integer("reorder_ms", 20, lo=0) * 1000,
        )
    except ValueError as exc:
        raise t.error("network", str(exc)) from None
    n.done()

    d = t.table("disk")
    capacity = d.integer("capacity_bytes", None, lo=1)
    reserve = d.integer("reserve_bytes", 0, lo=0)
    if capacity is not None and reserve >= capacity:
        raise d.error("reserve_bytes", f"must be below capacity_bytes ({capacity})")
    disk = DiskSpec(
        fsync=_delay(d, "fsync", DiskSpec().fsync) or DiskSpec().fsync,
        write_us_per_kib=d.integer("write_us_per_kib", 2, lo=0),
        capacity_bytes=capacity,
        reserve_bytes=reserve,
        resume_margin_percent=d.integer("resume_margin_percent", 10, lo=0, hi=100),
    )
    d.done()

    k = t.table("clock")
    clock = ClockSpec(
        drift_ppm_max=k.integer("drift_ppm_max", 100, lo=0, hi=100_000),
        skew_ms_max=k.integer("skew_ms_max", 1000, lo=0),
    )
    k.done()

    w = t.table("workload")
    kind = w.choice("kind", WORKLOADS, "log")
    common: dict[str, Any] = {
        "clients": w.integer("clients", 3, lo=0, hi=1000),
        "rate_per_s": w.integer("rate_per_s", 200, lo=1),
        "value_bytes": w.integer("value_bytes", 100, lo=16, hi=1 << 20),
        # A client call's deadline: the log and lock clients' timeout, the queue producers'
        # call timeout (whose own default is the producer's usual 5 s).
        "timeout_ms": w.integer(
            "timeout_ms", QUEUE_TIMEOUT_MS_DEFAULT if kind == "queue" else 2000, lo=1
        ),
    }
    if kind == "queue":
        workload = WorkloadSpec(
            kind="queue",
            producers=w.integer("producers", 2, lo=1, hi=100),
            concurrency=w.integer("concurrency", 4, lo=1, hi=100),
            batch_items=w.integer("batch_items", None, lo=1, hi=1000),
            queues=w.integer("queues", 8, lo=1, hi=4096),
            consumer_groups=w.integer("consumer_groups", 2, lo=0, hi=16),
            consumers_per_group=w.integer("consumers_per_group", 2, lo=1, hi=64),
            fail_rate=w.probability("fail_rate", 0.0),
            handle_ms=w.integer("handle_ms", 1, lo=0),
            slow_handle_ms=w.integer("slow_handle_ms", None, lo=0),
            retry_delays_ms=w.integers("retry_delays_ms", lo=0),
            dead_letter=w.boolean("dead_letter", True),
            hold_items=w.integer("hold_items", None, lo=0),
            duplicates_allowed=w.boolean("duplicates_allowed", True),
            ownership=w.choice("ownership", ("static", "locks"), "static"),
            lease_ms=w.integer("lease_ms", LEASE_MS_DEFAULT, lo=100, hi=600_000),
            lock_replicas=w.integer("lock_replicas", 3, lo=1, hi=REPLICAS_PER_STORE_MAX),
            schedulers=w.integer("schedulers", 0, lo=0, hi=4),
            margin_ms=w.integer("margin_ms", MARGIN_MS_DEFAULT, lo=1),
            renew_ms=w.integer("renew_ms", RENEW_MS_DEFAULT, lo=1),
            poll_ms=w.integer("poll_ms", POLL_MS_DEFAULT, lo=1),
            rate_items_per_s=w.integer("rate_items_per_s", None, lo=0),
            rate_burst=w.integer("rate_burst", None, lo=1),
            hot_queues=w.integer("hot_queues", 0, lo=0),
            hot_share=w.probability("hot_share", 0.0),
            band_pct=w.integer("band_pct", 20, lo=0, hi=100),
            **common,
        )
        if workload.ownership == "static":
            for key in ("schedulers",):
                if getattr(workload, key):
                    raise w.error(key, 'needs ownership = "locks"')
        else:
            timing = lease_timing_problem(
                workload.lease_ms, workload.margin_ms, workload.renew_ms, workload.poll_ms
            )
            if timing is not None:
                raise w.error(*timing)
        if workload.hot_queues > workload.queues:
            raise w.error("hot_queues", f"must be <= queues ({workload.queues})")
    elif kind == "lock":
        workload = WorkloadSpec(
            kind="lock",
            keys=w.integer("keys", 4, lo=1, hi=10_000),
            lease_ms=w.integer("lease_ms", 1000, lo=1, hi=LEASE_MS_MAX),
            **common,
        )
    else:
        workload = WorkloadSpec(kind="log", **common)
    w.done()

    faults = tuple(_fault(f, replicas) for f in t.tables("faults"))

    r = t.table("random_faults")
    random_faults = RandomFaultSpec(
        enabled=r.boolean("enabled", False),
        kinds=r.strings("kinds", RANDOM_FAULT_DEFAULT, RANDOM_FAULT_KINDS),
        interval_ms_min=r.integer("interval_ms_min", 200, lo=1),
        interval_ms_max=r.integer("interval_ms_max", 3000, lo=1),
        duration_ms_max=r.integer("duration_ms_max", 3000, lo=1),
        max_down=r.choice("max_down", ("minority", "majority", "all"), "majority"),
    )
    if random_faults.interval_ms_min > random_faults.interval_ms_max:
        raise r.error("interval_ms_min", "must not exceed interval_ms_max")
    if "disk_full" in random_faults.kinds and disk.reserve_bytes == 0:
        # Without a reserve a full disk crashes its node at its next write: that is what
        # the crash faults are for (and they respect max_down).
        raise r.error("kinds", "'disk_full' needs [disk] reserve_bytes > 0")
    r.done()

    f = t.table("final")
    final = FinalSpec(
        heal_all=f.boolean("heal_all", True),
        restart_all=f.boolean("restart_all", True),
        liveness_ms=f.integer("liveness_ms", 5000, lo=1),
        quiesce_ms=f.integer("quiesce_ms", 3000, lo=0),
        settle_ms=f.integer("settle_ms", 30_000, lo=0),
    )
    if workload.kind != "queue" and "settle_ms" in f.data:
        raise f.error("settle_ms", 'only the queue workload settles (kind = "queue")')
    if workload.kind == "queue" and final.settle_ms <= workload.timeout_ms:
        raise f.error(
            "settle_ms",
            f"must exceed [workload] timeout_ms ({workload.timeout_ms}): every call in flight "
            "when the clients stop must be able to resolve",
        )
    f.done()

    allowed = CHECKS_OF_KIND[workload.kind]
    default = tuple(c for c in allowed if c not in OPT_IN_CHECKS)
    if workload.kind == "queue":
        # The ownership checks apply when consumers own queues through locks; by default only
        # ``ownership`` (and ``rate_limit`` with a rate): ``failover`` and ``balance`` have
        # bounds that only hold in the scenarios written for them.
        extra: tuple[str, ...] = ()
        if workload.ownership == "locks":
            extra = ("ownership", "linearizable", "fencing")
        if workload.rate_items_per_s is not None:
            extra += ("rate_limit",)
        default = (
            tuple(c for c in allowed if c not in OWNERSHIP_CHECKS and c not in OPT_IN_CHECKS)
            + extra
        )
    checks = t.strings("checks", default, CHECKS)
    if not set(checks) <= set(allowed):
        bad = sorted(set(checks) - set(allowed))[0]
        needs = " or ".join(k for k, v in CHECKS_OF_KIND.items() if bad in v)
        raise t.error("checks", f"{bad!r} needs the {needs} workload")
    if workload.kind == "queue":
        for name_ in ("ownership", "failover", "balance", "linearizable", "fencing"):
            if name_ in checks and workload.ownership != "locks":
                raise t.error("checks", f'{name_!r} needs [workload] ownership = "locks"')
        if "balance" in checks and not workload.schedulers:
            raise t.error("checks", "'balance' needs [workload] schedulers >= 1")
        if "retry_delay" in checks and not workload.retry_delays_ms:
            raise t.error("checks", "'retry_delay' needs [workload] retry_delays_ms")
        if "rate_limit" in checks and workload.rate_items_per_s is None:
            raise t.error("checks", "'rate_limit' needs [workload] rate_items_per_s")
    e = t.table("expect")
    safety: Literal["pass", "fail"] = e.choice("safety", ("pass", "fail"), "pass")
    e.done()
    check_specs = _check_specs(t.table("check"), checks, safety)
    t.done()
    return Scenario(
        version=version,
        name=name,
        description=description,
        seed=seed,
        duration_ms=duration_ms,
        cluster=cluster,
        network=network,
        disk=disk,
        clock=clock,
        workload=workload,
        faults=faults,
        random_faults=random_faults,
        final=final,
        checks=checks,
        expect_safety=safety,
        file=t.file,
        check_specs=check_specs,
    )


def _check_specs(
    t: TomlTable, checks: tuple[str, ...], safety: Literal["pass", "fail"]
) -> tuple[tuple[str, CheckSpec], ...]:
    """The ``[check.NAME]`` tables: each names a check of ``checks``; ``window_ms`` only for
    ``WINDOWED_CHECKS``; a safety check expected to fail only in a negative control."""
    out: list[tuple[str, CheckSpec]] = []
    for name in sorted(t.data):
        c = t.table(name)
        if name not in checks:
            raise t.error(name, f"is not one of checks ({', '.join(checks)})")
        window: tuple[int, int] | None = None
        if c.has("window_ms"):
            bounds = c.integers("window_ms", lo=0)
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise c.error("window_ms", "must be [from_ms, to_ms] with from_ms <= to_ms")
            if name not in WINDOWED_CHECKS:
                raise c.error(
                    "window_ms", f"{name!r} cannot be scoped (only {', '.join(WINDOWED_CHECKS)})"
                )
            window = (bounds[0], bounds[1])
        expect: Literal["pass", "fail"] = c.choice("expect", ("pass", "fail"), "pass")
        if expect == "fail" and safety == "pass" and name not in LIVENESS_CHECKS:
            raise c.error(
                "expect", 'a safety check expected to fail needs [expect] safety = "fail"'
            )
        c.done()
        out.append((name, CheckSpec(window_ms=window, expect=expect)))
    t.done()
    return tuple(out)


def _fault(t: TomlTable, replicas: int) -> FaultSpec:
    action = t.choice("action", ACTIONS)
    at_ms = t.integer("at_ms", None, lo=0)
    after: AfterSpec | None = None
    if t.has("after"):
        a = t.table("after")
        after = AfterSpec(
            event=a.string("event"),
            count=a.integer("count", 1, lo=1),
            node=_selector(a, "node", False),
            delay_ms=a.integer("delay_ms", 0, lo=0),
        )
        a.done()
    if (at_ms is None) == (after is None):
        raise t.error("at_ms", "give exactly one of at_ms or after")
    target = _selector(t, "target", action in TARGETED and action != "unclog")
    if target is not None and target.startswith("n") and int(target[1:]) >= replicas:
        raise t.error(
            "target", f"node {target} does not exist (the cluster has {replicas} replicas)"
        )
    fault = FaultSpec(
        action=action,
        at_ms=at_ms,
        after=after,
        target=target,
        group=t.integer("group", 0, lo=0),
        duration_ms=t.integer("duration_ms", None, lo=1),
        direction=t.choice("direction", ("both", "in", "out"), "both"),
        power_loss=t.boolean("power_loss", True) if action == "crash" else True,
        rate=t.probability("rate", 0.0) if action in ("loss", "duplicate", "reorder") else 0.0,
        delay=_delay(t, "delay", None) if action == "delay" else None,
        drift_ppm=t.integer("drift_ppm", None, lo=-100_000, hi=100_000)
        if action == "clock"
        else None,
        skew_ms=t.integer("skew_ms", 0) if action == "clock" else 0,
        mono_stall_ms=t.integer("mono_stall_ms", None, lo=1) if action == "clock" else None,
        mono_jump_ms=t.integer("mono_jump_ms", None, lo=1) if action == "clock" else None,
        disk_fault=t.choice("fault", DISK_FAULTS) if action == "disk" else None,
        fsync=_delay(t, "fsync", None) if action == "disk" else None,
        peer=_selector(t, "peer", False) if action in ("clog", "unclog") else None,
        consumer_group=t.string("consumer_group") if action == "seek" else None,
        queue=t.integer("queue", None, lo=0) if action == "seek" else None,
        offset=t.integer("offset", None, lo=0) if action == "seek" else None,
        back_ms=t.integer("back_ms", None, lo=0) if action == "seek" else None,
    )
    if action == "seek" and (fault.offset is None) == (fault.back_ms is None):
        raise t.error("offset", "a seek needs exactly one of offset or back_ms")
    if action == "delay" and fault.delay is None:
        raise t.error("delay", "is required for a delay fault")
    if action == "disk" and fault.disk_fault == "slow" and fault.fsync is None:
        raise t.error("fsync", "is required for a slow disk")
    if action in ("heal", "restart", "resume", "unclog") and fault.duration_ms is not None:
        raise t.error("duration_ms", f"{action} has no inverse to schedule")
    t.done()
    return fault
