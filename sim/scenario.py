"""Scenario files: the TOML schema, its loader and validation.

A scenario scripts one simulated run: the cluster, the baseline network, disk and clocks,
the workload, a timed list of faults (each at a time or after a traced event, with an
optional duration that schedules the inverse), background random faults for swarms, the
final phase (heal, restart, liveness bound, settling and final reads), the zones the
processes are placed in and the latency between them (``[zones]``), the checks (each
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
from pxq.toml_reader import MISSING, TomlError, TomlTable, kind_of, parse, read_text
from sim.disk import DiskSpec
from sim.network import DelayDist, DelaySpec, NetworkSpec
from sim.zones import ROLES, ZONE_NAME_RE, ZonesSpec

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
    "alter_item",
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
    "election",
    "delivery",
    "read_after_ack",
    "cursor_monotonic",
)
LIVENESS_CHECKS = ("liveness", "delivery", "availability", "election")
"""Checks of progress, not of safety: a negative control's ``safety = "fail"`` needs another
check to fail (``delivery``: every stored item reached every group by the end;
``availability``: a group under a healthy master kept acknowledging; ``election``: a group
that could elect a master did so in time)."""
WINDOWED_CHECKS = ("total_queue", "delivery", "read_after_ack", "cursor_monotonic", "failover")
"""Checks that ``[check.NAME] window_ms`` can scope to a span of the run."""
LOG_CHECKS = ("agreement", "no_loss", "realtime_order", "liveness", "availability", "election")
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
    "election",
    "delivery",
    "read_after_ack",
    "cursor_monotonic",
)
OPT_IN_CHECKS = ("storage_full", "retry_delay", "availability", "election")
"""Checks a scenario must name: ``storage_full`` (enqueues were refused for a short storage,
then acknowledged again) holds only where a disk is made to fill; ``retry_delay`` (a failed
item reaches the next retry level within its delay plus a small bound) only where no fault
holds requests up or moves masters; ``availability`` (a group whose master stays healthy
never stops acknowledging for over 200 ms) only where the faults spare the master and the
network (no loss, no storms); ``election`` (a group without a healthy master gets one within
two leases and a second while a majority of its replicas is up and connected) only where no
fault keeps a majority from voting (blank or repairing replicas, slowed disks)."""
OWNERSHIP_CHECKS = ("ownership", "failover", "rate_limit", "balance", "linearizable", "fencing")
"""Queue checks that need consumers owning queues through the lock service (``linearizable``
and ``fencing`` check the consumers' and schedulers' own lock calls)."""
LOCK_CHECKS = ("agreement", "linearizable", "fencing", "liveness")
REGISTER_CHECKS = ("agreement", "linearizable", "liveness")
CHECKS_OF_KIND = {
    "log": LOG_CHECKS,
    "queue": QUEUE_CHECKS,
    "lock": LOCK_CHECKS,
    "register": REGISTER_CHECKS,
}
WORKLOADS = ("log", "queue", "lock", "register")

SELECTOR_RE = re.compile(
    r"^(master|any|minority|majority|all|crashed|paused|follower\[(\d+)\]|n(\d+)"
    r"|consumer\[(\d+)\]|producer\[(\d+)\]|lock\[(\d+)\]|scheduler\[(\d+)\]|lock_master"
    r"|client\[(\d+)\]|zone:([A-Za-z0-9_-]{1,32}))$"
)
"""Node selectors, resolved when the fault fires: ``master`` (of ``group``), ``follower[i]``
(the i-th replica that is not the master, in name order), ``any`` (one at random),
``minority`` / ``majority`` (a random minority or majority set), ``all``, ``crashed`` (the
most recently crashed node that is still down), ``paused`` (likewise), a node name ``nK``,
or, with the queue workload, ``consumer[i]`` / ``producer[i]`` (client processes), and with
consumers owning queues through locks, ``lock[i]`` (a lock replica), ``lock_master`` (the
master of lock group ``group``) and ``scheduler[i]``; with the lock workload, ``client[i]``
(a lock client endpoint: network faults only); with ``[zones]``, ``zone:NAME`` (every
process placed in the zone: a process fault takes its nodes, a network fault its endpoints
too). ``master``, ``follower[i]`` and
``lock_master`` wait for their group's first master; ``crashed`` and ``paused`` with nobody
down fail the run (``Nemesis.resolve``)."""
AFTER_NODE_SELECTORS = re.compile(
    r"^(master|follower\[\d+\]|n\d+|consumer\[\d+\]|producer\[\d+\]|lock\[\d+\]"
    r"|scheduler\[\d+\]|lock_master|client\[\d+\])$"
)
"""Selectors an ``after`` trigger may filter on: each names one process, resolved again at
each event (a random selector would draw at every event)."""
PARTITION_SHAPES: tuple[Literal["bridge", "ring"], ...] = ("bridge", "ring")
"""Partitions the nemesis lays out among the store's replicas itself: ``bridge`` (two halves
cut from each other, one replica in the middle talking to both) and ``ring`` (each replica
talks to its neighbours in a random ring, so each sees a majority but no two the same one;
5 replicas or more)."""


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
    blank: Literal["new", "probe"] = "new"
    """What a replica's blank storage means at boot (``pxq.effects.Boot.if_blank``): ``new``,
    a new member; ``probe``, unknown, as ``pxq node run`` sees an empty data directory (the
    replica asks its peers and refuses to run if one recorded it as a member)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSpec:
    drift_ppm_max: int = 100
    skew_ms_max: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """The workload. ``log``: clients append unique values to the replicated log. ``queue``:
    producers enqueue unique items to one topic, consumer groups consume them. ``lock``:
    clients acquire, renew, release and read locks of the lock service. ``register``:
    clients read, write and compare-and-set the lock service's registers."""

    kind: Literal["log", "queue", "lock", "register"] = "log"
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
    """Lock keys (or register keys) the clients contend for."""
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
    where: tuple[tuple[str, int | str | bool], ...] = ()
    """Trace fields the event must carry, with these values (e.g. ``group = 1``)."""


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
    shape: Literal["bridge", "ring"] | None = None
    """partition: laid out among the store's replicas by the nemesis (no target)."""
    sides: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    """partition: two sides, each a list of selectors; only paths between them are cut."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RandomFaultSpec:
    """Background faults: when ``enabled``, the seed picks which of ``kinds`` are on and how
    often each fires (mean interval between ``interval_ms_min`` and ``interval_ms_max``); at
    most ``max_down`` replicas are crashed or paused at once."""

    enabled: bool = False
    kinds: tuple[str, ...] = ()
    """The kinds the seed draws from (the loader fills in ``sim.fault_kinds.RANDOM_DEFAULT``
    when a file lists none)."""
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
    zones: ZonesSpec = ZonesSpec()
    """``[zones]``: where each process is placed and the latency between zones (default:
    none, every path has the ``[network]`` delay)."""

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
            "lock[i], lock_master, scheduler[i] or zone:NAME)",
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
    blank: Literal["new", "probe"] = c.choice("blank", ("new", "probe"), "new")
    c.done()
    cluster = ClusterSpec(replicas=replicas, groups=groups, paxos=paxos, blank=blank)

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
    if capacity is not None and reserve == 0:
        # As a cluster file's [storage] reserve_bytes (pxq.config): no reserve, and a disk
        # that fills up stops its node at every write, with no way to free space.
        raise d.error("reserve_bytes", "must be > 0 with capacity_bytes (a disk needs a reserve)")
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
    elif kind == "register":
        workload = WorkloadSpec(
            kind="register", keys=w.integer("keys", 4, lo=1, hi=10_000), **common
        )
    else:
        workload = WorkloadSpec(kind="log", **common)
    w.done()

    zones = _zones(t.table("zones"), cluster, workload)
    faults = tuple(_fault(f, replicas, workload, zones.names) for f in t.tables("faults"))

    random_faults = _random_faults(
        t.table("random_faults"), cluster, workload, disk, clock, zones=zones
    )

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
        zones=zones,
    )


def _zones(z: TomlTable, cluster: ClusterSpec, w: WorkloadSpec) -> ZonesSpec:
    """``[zones]``: the zone names, the zone of each process of a role (``sim.zones.ROLES``;
    the replicas of every Paxos service must be placed), and ``[zones.latency.A.B]``, the
    delay of the link from A to B (and from B to A, unless ``[zones.latency.B.A]`` is given)."""
    if not z.data:
        return ZonesSpec()
    names: list[str] = []
    for i, v in enumerate(z.array("names")):
        if not isinstance(v, str) or not ZONE_NAME_RE.match(v):
            raise z.error(
                f"names[{i}]", f"expected a zone name (up to 32 of A-Z a-z 0-9 _ -), got {v!r}"
            )
        if v in names:
            raise z.error(f"names[{i}]", f"zone {v!r} is named twice")
        names.append(v)
    if not names:
        raise z.error("names", "must name at least one zone")
    queue, locks = w.kind == "queue", w.kind == "queue" and w.ownership == "locks"
    counts = {
        "replicas": (cluster.replicas, "[cluster] replicas"),
        "locks": (w.lock_replicas if locks else 0, 'lock replicas (ownership = "locks")'),
        "producers": (w.producers if queue else 0, "producers (the queue workload)"),
        "consumers": (
            w.consumer_groups * w.consumers_per_group if queue else 0,
            "consumers (the queue workload)",
        ),
        "schedulers": (w.schedulers if locks else 0, "schedulers"),
        "clients": (0 if queue else w.clients, "clients (the log, lock or register workload)"),
    }
    placed: list[tuple[str, tuple[str, ...]]] = []
    for role in ROLES:
        count, what = counts[role]
        if not z.has(role):
            if role in ("replicas", "locks") and count:
                raise z.error(role, f"missing: every replica is placed in a zone ({what})")
            continue
        if not count:
            raise z.error(role, f"the scenario has no {what}")
        v = z.raw(role)
        zones = [v] * count if isinstance(v, str) else z.array(role)
        if not isinstance(v, str) and len(zones) != count:
            raise z.error(role, f"expected {count} zones, one per {what}, got {len(zones)}")
        for i, zone in enumerate(zones):
            if zone not in names:
                key = role if isinstance(v, str) else f"{role}[{i}]"
                raise z.error(key, f"{zone!r} is not one of names ({', '.join(names)})")
        placed.append((role, tuple(str(zone) for zone in zones)))
    given: dict[tuple[str, str], DelaySpec] = {}
    lt = z.table("latency")
    for a in sorted(lt.data):
        if a not in names:
            raise lt.error(a, f"{a!r} is not one of names ({', '.join(names)})")
        row = lt.table(a)
        for b in sorted(row.data):
            if b not in names:
                raise row.error(b, f"{b!r} is not one of names ({', '.join(names)})")
            if b == a:
                raise row.error(b, "within a zone the [network] delay applies")
            delay = _delay(row, b, None)
            if delay is not None:
                given[(a, b)] = delay
        row.done()
    lt.done()
    z.done()
    latency = dict(given)
    for (a, b), delay in given.items():
        latency.setdefault((b, a), delay)  # symmetric unless both ways are given
    return ZonesSpec(
        names=tuple(names), placed=tuple(placed), latency=tuple(sorted(latency.items()))
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


def _random_faults(
    r: TomlTable,
    cluster: ClusterSpec,
    workload: WorkloadSpec,
    disk: DiskSpec,
    clock: ClockSpec,
    *,
    zones: ZonesSpec,
) -> RandomFaultSpec:
    from sim.fault_kinds import RANDOM_DEFAULT, RANDOM_KINDS, Parts  # it builds on this module

    parts = Parts(cluster=cluster, workload=workload, disk=disk, clock=clock, zones=zones)

    def problem(kind: str) -> str | None:
        needs = RANDOM_KINDS[kind].needs
        return needs(parts) if needs is not None else None

    # Listed kinds must apply; the default ones are those of them that do.
    default = tuple(k for k in RANDOM_DEFAULT if problem(k) is None)
    kinds = r.strings("kinds", default, tuple(RANDOM_KINDS))
    for i, kind in enumerate(kinds):
        why = problem(kind)
        if why is not None:
            raise r.error(f"kinds[{i}]", f"{kind!r} {why}")
    spec = RandomFaultSpec(
        enabled=r.boolean("enabled", False),
        kinds=kinds,
        interval_ms_min=r.integer("interval_ms_min", 200, lo=1),
        interval_ms_max=r.integer("interval_ms_max", 3000, lo=1),
        duration_ms_max=r.integer("duration_ms_max", 3000, lo=1),
        max_down=r.choice("max_down", ("minority", "majority", "all"), "majority"),
    )
    if spec.interval_ms_min > spec.interval_ms_max:
        raise r.error("interval_ms_min", "must not exceed interval_ms_max")
    if spec.enabled and not spec.kinds:
        raise r.error("kinds", "must list at least one kind")
    r.done()
    return spec


def _check_selector(
    t: TomlTable,
    name: str,
    selector: str,
    replicas: int,
    w: WorkloadSpec,
    *,
    zones: tuple[str, ...],
) -> None:
    """Refuse a selector naming a process (or a zone) the scenario does not have (an index
    never wraps around to someone else)."""
    m = SELECTOR_RE.match(selector)
    if m is None:
        return
    zone = m.group(9)
    if zone is not None and zone not in zones:
        have = f"the scenario's zones: {', '.join(zones)}" if zones else "needs [zones]"
        raise t.error(name, f"zone {zone!r} does not exist ({have})")
    locks = w.kind == "queue" and w.ownership == "locks"
    queue = w.kind == "queue"
    counts = {
        2: (replicas - 1, "follower", "non-master replicas"),
        3: (replicas, "node", "replicas"),
        4: (w.consumer_groups * w.consumers_per_group if queue else 0, "consumer", "consumers"),
        5: (w.producers if queue else 0, "producer", "producers"),
        6: (w.lock_replicas if locks else 0, "lock", "lock replicas"),
        7: (w.schedulers if locks else 0, "scheduler", "schedulers"),
        8: (w.clients if w.kind == "lock" else 0, "client", "lock clients"),
    }
    for index, (count, what, plural) in counts.items():
        if m.group(index) is None:
            continue
        i = int(m.group(index))
        if i >= count:
            label = f"n{i}" if what == "node" else f"{what}[{i}]"
            raise t.error(name, f"{label} does not exist (the scenario has {count} {plural})")
    if selector == "lock_master" and not locks:
        raise t.error(name, 'lock_master needs [workload] ownership = "locks"')


def _selectors(
    t: TomlTable, name: str, replicas: int, w: WorkloadSpec, zones: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``sides = [[selector, ...], [selector, ...]]``: a two-sided partition."""
    raw = t.array(name)
    if len(raw) != 2:
        raise t.error(name, "expected two non-empty lists of selectors")
    sides: list[tuple[str, ...]] = []
    for i, side in enumerate(raw):
        if not isinstance(side, list) or not side:
            raise t.error(name, "expected two non-empty lists of selectors")
        picked = []
        for j, v in enumerate(side):
            key = f"{name}[{i}][{j}]"
            if not isinstance(v, str) or not SELECTOR_RE.match(v):
                raise t.error(key, f"unknown selector {v!r}")
            _check_selector(t, key, v, replicas, w, zones=zones)
            picked.append(v)
        sides.append(tuple(picked))
    return sides[0], sides[1]


def _after(t: TomlTable, replicas: int, w: WorkloadSpec, zones: tuple[str, ...]) -> AfterSpec:
    a = t.table("after")
    node = _selector(a, "node", False)
    if node is not None:
        if not AFTER_NODE_SELECTORS.match(node):
            raise a.error(
                "node",
                f"{node!r} does not name one process (an after trigger takes master, "
                "follower[i], nK, consumer[i], producer[i], lock[i], scheduler[i] or "
                "lock_master)",
            )
        _check_selector(a, "node", node, replicas, w, zones=zones)
    where: list[tuple[str, int | str | bool]] = []
    wt = a.table("where")
    for key in sorted(wt.data):
        v = wt.raw(key)
        if not isinstance(v, int | str | bool):
            raise wt.error(key, f"expected an integer, a string or a boolean, got {kind_of(v)}")
        where.append((key, v))
    wt.done()
    after = AfterSpec(
        event=a.string("event", nonempty=True),
        count=a.integer("count", 1, lo=1),
        node=node,
        delay_ms=a.integer("delay_ms", 0, lo=0),
        where=tuple(where),
    )
    a.done()
    return after


PATH_ACTIONS = ("loss", "duplicate", "delay")
NETWORK_ACTIONS = ("partition", "clog", "unclog", *PATH_ACTIONS)
"""Actions on network paths: the only ones a lock client endpoint (``client[i]``) can take."""
"""Network actions that apply to the paths of a ``target`` (and ``peer``) when given one, and
to every path otherwise."""


def _fault(t: TomlTable, replicas: int, w: WorkloadSpec, zones: tuple[str, ...]) -> FaultSpec:
    action = t.choice("action", ACTIONS)
    at_ms = t.integer("at_ms", None, lo=0)
    after = _after(t, replicas, w, zones=zones) if t.has("after") else None
    if (at_ms is None) == (after is None):
        raise t.error("at_ms", "give exactly one of at_ms or after")
    shape: Literal["bridge", "ring"] | None = None
    sides = None
    if action == "partition":
        shape = t.choice("shape", PARTITION_SHAPES, "bridge") if t.has("shape") else None
        if shape == "ring" and replicas < 5:
            raise t.error("shape", f"a ring needs 5 replicas or more (the cluster has {replicas})")
        if shape == "bridge" and replicas < 3:
            raise t.error(
                "shape", f"a bridge needs 3 replicas or more (the cluster has {replicas})"
            )
        sides = _selectors(t, "sides", replicas, w, zones=zones) if t.has("sides") else None
        if shape is not None and sides is not None:
            raise t.error("sides", "give at most one of shape or sides")
    required = action in TARGETED and action != "unclog" and shape is None and sides is None
    target = _selector(t, "target", required)
    if target is not None:
        if shape is not None or sides is not None:
            raise t.error("target", "a partition with shape or sides takes no target")
        _check_selector(t, "target", target, replicas, w, zones=zones)
        if target.startswith("client[") and action not in NETWORK_ACTIONS:
            raise t.error(
                "target",
                f"{target} is a lock client endpoint: only network faults "
                f"({', '.join(NETWORK_ACTIONS)}) can target it, not {action!r}",
            )
    per_path = action in ("clog", "unclog") or (action in PATH_ACTIONS and target is not None)
    peer = _selector(t, "peer", False) if per_path else None
    if peer is not None:
        _check_selector(t, "peer", peer, replicas, w, zones=zones)
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
        peer=peer,
        consumer_group=t.string("consumer_group") if action == "seek" else None,
        queue=t.integer("queue", None, lo=0) if action == "seek" else None,
        offset=t.integer("offset", None, lo=0) if action == "seek" else None,
        back_ms=t.integer("back_ms", None, lo=0) if action == "seek" else None,
        shape=shape,
        sides=sides,
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
