"""The cluster file's parser: TOML -> ``pxq.config.model``, validated, with errors that name
the file and the key path (``ConfigError``). The strict reading itself (types, bounds, unknown
keys) is ``pxq.toml_reader``'s; this module owns the rules of the cluster file's schema.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any, ClassVar, Final

from pxq.config.model import (
    CLUSTER_ID_CHARS_MAX,
    ENQUEUE_HEADROOM_BYTES,
    HEALTH_GROUP,
    INFLIGHT_BATCHES_MAX,
    LOCK_GROUPS_MAX,
    LOCKS_SERVICE,
    NAME_CHARS_MAX,
    PORT_MAX,
    REPLICAS_PER_STORE_MAX,
    STORAGE_CHECKPOINT_BATCHES_DEFAULT,
    STORAGE_CHECKPOINT_BATCHES_MAX,
    STORAGE_CHECKPOINT_BYTES_DEFAULT,
    STORAGE_MAP_BYTES_DEFAULT,
    STORAGE_MAP_BYTES_MAX_DEFAULT,
    STORAGE_MAP_BYTES_MIN,
    STORAGE_RESERVE_MIN_BYTES,
    Batching,
    ClusterConfig,
    ConnectionsConfig,
    ConsumerGroupConfig,
    HostConfig,
    Limits,
    LockServiceConfig,
    MetricsConfig,
    OwnershipConfig,
    PrincipalConfig,
    RateLimit,
    ReplicaConfig,
    Retention,
    RetryLevel,
    StorageConfig,
    StoreConfig,
    TlsConfig,
    TopicConfig,
    zone_majority,
)
from pxq.lock.messages import VALUE_BYTES_MAX
from pxq.paxos.config import PaxosConfig
from pxq.toml_reader import MISSING, TomlError, TomlTable, kind_of, parse, read_text
from pxq.topics import DLQ_MARK, RETRY_MARK


class ConfigError(TomlError):
    """A configuration file is invalid: ``file``, the dotted ``key_path`` and the ``reason``."""

    FILE_KEY: ClassVar[str] = "-"


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate the cluster file at ``path``; a relative ``[tls] dir`` is made
    relative to the file's directory, and so is a host's ``ssh_key`` (after expanding ``~``):
    paths on the machine that reads the file."""
    config = loads_config(read_text(path, error=ConfigError), file=str(path))
    here = Path(path).absolute().parent
    tls_dir = Path(config.tls.dir)
    if config.tls.enabled and not tls_dir.is_absolute():
        config = dataclasses.replace(
            config, tls=dataclasses.replace(config.tls, dir=str(here / tls_dir))
        )
    if any(h.ssh_key is not None for h in config.hosts):
        hosts = tuple(
            h
            if h.ssh_key is None
            else dataclasses.replace(h, ssh_key=str(here / Path(h.ssh_key).expanduser()))
            for h in config.hosts
        )
        config = dataclasses.replace(config, hosts=hosts)
    return config


def loads_config(text: str, *, file: str = "<string>") -> ClusterConfig:
    """Parse and validate a cluster configuration given as TOML text."""
    return _cluster(parse(text, file=file, error=ConfigError, allowed=_SECTIONS))


_SECTIONS: Final = (
    "cluster",
    "limits",
    "batching",
    "storage",
    "connections",
    "stores",
    "locks",
    "ownership",
    "topics",
    "tls",
    "principals",
    "metrics",
    "hosts",
)
_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_PAXOS_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(PaxosConfig) if f.name not in ("replicas", "groups")
)
"""The ``PaxosConfig`` fields a ``paxos`` table may override (membership comes from the
replicas and the group count)."""


def _default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (the model owns every default)."""
    for f in dataclasses.fields(cls):
        if f.name == name and f.default is not dataclasses.MISSING:
            return f.default
    raise LookupError(f"{cls.__name__}.{name} has no default")


def _name(t: TomlTable, key: str, default: Any = MISSING) -> Any:
    """A cluster, store, node, zone, topic or group name."""
    v = t.string(key, default, nonempty=True)
    if len(v) > NAME_CHARS_MAX:
        raise t.error(key, f"longer than {NAME_CHARS_MAX} characters")
    if not _NAME.fullmatch(v):
        raise t.error(key, f"{v!r}: only letters, digits, '_' and '-' are allowed")
    return v


def _cluster_id(t: TomlTable) -> str:
    """The cluster's id (``[cluster] id``): absent is "" (the name alone identifies it)."""
    v = t.string("id", "")
    if not v:
        if t.has("id"):
            raise t.error("id", "must not be empty (leave it out for no id)")
        return ""
    if len(v) > CLUSTER_ID_CHARS_MAX:
        raise t.error("id", f"longer than {CLUSTER_ID_CHARS_MAX} characters")
    if not _NAME.fullmatch(v):
        raise t.error("id", f"{v!r}: only letters, digits, '_' and '-' are allowed")
    return v


def _check_unique(t: TomlTable, array: str, names: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise t.error(
                f"{array}[{i}].name",
                f"duplicate {what} name {n!r} (also {t.key(array)}[{seen[n]}])",
            )
        seen[n] = i


def _cluster(doc: TomlTable) -> ClusterConfig:
    c = doc.table("cluster", allowed=("name", "id"), required=True)
    name = _name(c, "name")
    cluster_id = _cluster_id(c)
    limits = _limits(doc.table("limits", allowed=_LIMITS))
    batching = _batching(
        doc.table("batching", allowed=("linger_ms", "items_max", "bytes_max", "inflight_batches")),
        limits,
    )
    storage = _storage(
        doc.table(
            "storage",
            allowed=(
                "map_size_bytes",
                "map_size_max_bytes",
                "reserve_bytes",
                "checkpoint_batches",
                "checkpoint_bytes",
            ),
        )
    )
    connections = _connections(doc.table("connections", allowed=_CONNECTIONS))
    hosts = _hosts(doc)
    by_host = {h.name: h for h in hosts} if hosts else None
    if not doc.has("stores"):
        raise doc.error("stores", "missing (at least one [[stores]])")
    stores_raw = doc.tables("stores", allowed=_STORE)
    if not stores_raw:
        raise doc.error("stores", "at least one store is needed")
    stores = tuple(_store(s, limits, by_host) for s in stores_raw)
    _check_unique(doc, "stores", [s.name for s in stores], "store")
    for i, s in enumerate(stores):
        if s.name == LOCKS_SERVICE:
            raise doc.error(
                f"stores[{i}].name", f"{LOCKS_SERVICE!r} is reserved for the lock service"
            )
    locks = _locks(doc.table("locks", allowed=_LOCKS), by_host) if doc.has("locks") else None
    ownership = _ownership(doc.table("ownership", allowed=_OWNERSHIP))
    nodes = [
        (f"stores[{i}].replicas[{j}]", r)
        for i, s in enumerate(stores)
        for j, r in enumerate(s.replicas)
    ]
    if locks is not None:
        nodes += [(f"locks.replicas[{j}]", r) for j, r in enumerate(locks.replicas)]
    metrics = _metrics(doc.table("metrics", allowed=_METRICS))
    seen_nodes: dict[str, str] = {}
    # Addresses in use, by their canonical form (``_address_key``): every node, every metrics
    # endpoint and every host's SSH server.
    seen_addrs: dict[tuple[str, int], str] = {
        (_address_key(h.address), h.ssh_port): f"the SSH server of hosts[{i}] ({h.name!r})"
        for i, h in enumerate(hosts)
    }
    for path, r in nodes:
        if r.node in seen_nodes:
            raise doc.error(
                f"{path}.node", f"{r.node!r} is already a replica at {seen_nodes[r.node]}"
            )
        seen_nodes[r.node] = path
        addr = (_address_key(r.host), r.port)
        if addr in seen_addrs:
            raise doc.error(
                f"{path}.port",
                f"{_show_address(r.host, r.port)} is already used by {seen_addrs[addr]}",
            )
        seen_addrs[addr] = path
    for path, r in nodes:
        # A metrics port given, or derived while metrics are on, must be free and in range.
        if r.metrics_port is None and not metrics.enabled:
            continue
        port = metrics.port_of(r)
        key = f"{path}.metrics_port" if r.metrics_port is not None else "metrics.port_offset"
        if port > PORT_MAX:
            raise doc.error(key, f"the metrics port of {r.node!r} would be {port} > {PORT_MAX}")
        addr = (_address_key(r.host), port)
        if addr in seen_addrs:
            raise doc.error(
                key,
                f"the metrics port of {r.node!r}, {_show_address(r.host, port)}, is already "
                f"used by {seen_addrs[addr]}",
            )
        seen_addrs[addr] = f"{path} (metrics)"
    topics_raw = doc.tables("topics", allowed=("name", "queues", "retention", "consumer_groups"))
    topics = tuple(_topic(t, limits) for t in topics_raw)
    _check_unique(doc, "topics", [t.name for t in topics], "topic")
    tls = _tls(doc.table("tls", allowed=_TLS)) if doc.has("tls") else TlsConfig()
    principals = tuple(_principal(p) for p in doc.tables("principals", allowed=_PRINCIPAL))
    _check_unique(doc, "principals", [p.name for p in principals], "principal")
    seen_tokens: dict[str, int] = {}
    for i, p in enumerate(principals):
        for j, digest in enumerate(p.token_sha256):
            if digest in seen_tokens:
                raise doc.error(
                    f"principals[{i}].token_sha256[{j}]",
                    f"the same token digest is given to principals[{seen_tokens[digest]}]",
                )
            seen_tokens[digest] = i
    return ClusterConfig(
        name=name,
        id=cluster_id,
        stores=stores,
        topics=topics,
        limits=limits,
        batching=batching,
        locks=locks,
        ownership=ownership,
        storage=storage,
        connections=connections,
        tls=tls,
        principals=principals,
        metrics=metrics,
        hosts=hosts,
    )


# --------------------------------------------------------------------------------------------
# Hosts: the deployment inventory

_HOST: Final = tuple(f.name for f in dataclasses.fields(HostConfig))
DNS_NAME_CHARS_MAX: Final = 253
_DNS_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
SSH_USER_CHARS_MAX: Final = 32
_SSH_USER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PATH_SEGMENT: Final = re.compile(r"[A-Za-z0-9_.+@-]+")
"""What a segment of a host's ``base_dir`` or ``python`` path may contain: deploy puts these
paths in shell commands and unit files, so nothing needs quoting."""
HOSTS_NAMED_MAX: Final = 8
"""Host names an "unknown host" error lists."""


def _hosts(doc: TomlTable) -> tuple[HostConfig, ...]:
    """The ``[[hosts]]`` array: names and addresses unique."""
    raw = doc.tables("hosts", allowed=_HOST)
    if doc.has("hosts") and not raw:
        raise doc.error("hosts", "empty (leave it out for a file without hosts)")
    hosts = tuple(_host(t) for t in raw)
    _check_unique(doc, "hosts", [h.name for h in hosts], "host")
    seen: dict[str, int] = {}
    for i, h in enumerate(hosts):
        key = _address_key(h.address)
        if key in seen:
            j = seen[key]
            raise doc.error(
                f"hosts[{i}].address",
                f"{h.address!r} is already the address of hosts[{j}] ({hosts[j].name!r})",
            )
        seen[key] = i
    return hosts


def _host(t: TomlTable) -> HostConfig:
    name = _name(t, "name")
    address = _address(t, "address")
    zone = _name(t, "zone")
    user = t.string("ssh_user", _default(HostConfig, "ssh_user"), nonempty=True)
    if len(user) > SSH_USER_CHARS_MAX or not _SSH_USER.fullmatch(user):
        raise t.error(
            "ssh_user",
            f"{user!r}: expected a user name (a letter or '_', then letters, digits, '_', '.', "
            f"'-'; at most {SSH_USER_CHARS_MAX} characters)",
        )
    base_dir = t.string("base_dir", _default(HostConfig, "base_dir"), nonempty=True)
    if not _remote_path(base_dir):
        raise t.error(
            "base_dir", f"{base_dir!r}: expected an absolute path such as /opt/pxq{_PATH_RULE}"
        )
    python = t.string("python", _default(HostConfig, "python"), nonempty=True)
    if not (_PATH_SEGMENT.fullmatch(python) or _remote_path(python)):
        raise t.error(
            "python",
            f"{python!r}: expected a command name (python3.11) or an absolute path{_PATH_RULE}",
        )
    return HostConfig(
        name=name,
        address=address,
        zone=zone,
        ssh_user=user,
        ssh_port=t.integer("ssh_port", _default(HostConfig, "ssh_port"), lo=1, hi=PORT_MAX),
        ssh_key=t.string("ssh_key", None, nonempty=True),
        base_dir=base_dir,
        python=python,
    )


_PATH_RULE: Final = (
    " (segments of letters, digits, '_', '.', '+', '@' and '-'; no '.' or '..' segment, "
    "no trailing '/')"
)


def _remote_path(v: str) -> bool:
    """Whether ``v`` is an absolute POSIX path in the normal form ``_PATH_RULE`` describes."""
    if not v.startswith("/"):
        return False
    segments = v[1:].split("/")
    return all(_PATH_SEGMENT.fullmatch(p) and p not in (".", "..") for p in segments)


def _address(t: TomlTable, key: str) -> str:
    """An IPv4 or IPv6 address or a DNS name, which peers and clients can connect to."""
    v = t.string(key, nonempty=True)
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            raise t.error(key, f"{v!r} is no address to connect to: give the host's own")
        return v
    labels = v.split(".")
    if (
        len(v) > DNS_NAME_CHARS_MAX
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise t.error(
            key, f"{v!r}: expected an IPv4 or IPv6 address or a DNS name (no port, no brackets)"
        )
    return v


def _address_key(address: str) -> str:
    """The form two spellings of one address share: an IP address's canonical text, a DNS
    name in lowercase."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower()


def _show_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LIMITS: Final = tuple(f.name for f in dataclasses.fields(Limits))


def _limits(t: TomlTable) -> Limits:
    defaults = Limits()
    return Limits(**{n: t.integer(n, getattr(defaults, n), lo=1) for n in _LIMITS})


_CONNECTIONS: Final = tuple(f.name for f in dataclasses.fields(ConnectionsConfig))


def _connections(t: TomlTable) -> ConnectionsConfig:
    defaults = ConnectionsConfig()
    return ConnectionsConfig(**{n: t.integer(n, getattr(defaults, n), lo=1) for n in _CONNECTIONS})


_TLS: Final = tuple(f.name for f in dataclasses.fields(TlsConfig))
_METRICS: Final = tuple(f.name for f in dataclasses.fields(MetricsConfig))


def _metrics(t: TomlTable) -> MetricsConfig:
    """The ``[metrics]`` table (absent: metrics off, the default port offset)."""
    return MetricsConfig(
        enabled=t.boolean("enabled", _default(MetricsConfig, "enabled")),
        port_offset=t.integer(
            "port_offset", _default(MetricsConfig, "port_offset"), lo=1, hi=PORT_MAX - 1
        ),
    )


def _tls(t: TomlTable) -> TlsConfig:
    """A ``[tls]`` table: present means on unless ``enabled = false``."""
    return TlsConfig(
        enabled=t.boolean("enabled", True),
        dir=t.string("dir", _default(TlsConfig, "dir"), nonempty=True),
        identity=_name(t, "identity", _default(TlsConfig, "identity")),
    )


_PRINCIPAL: Final = tuple(f.name for f in dataclasses.fields(PrincipalConfig))
_PATTERN_SEGMENT: Final = re.compile(r"\*|[A-Za-z0-9_-]+")


def _principal(t: TomlTable) -> PrincipalConfig:
    name = _name(t, "name")
    if name == _default(TlsConfig, "identity"):
        raise t.error("name", f"{name!r} may always do everything; it is not listed")

    def patterns(key: str, segments: int) -> tuple[str, ...]:
        out: list[str] = []
        for i, v in enumerate(t.array(key, [])):
            shape = "a topic" if segments == 1 else "topic/group"
            if not isinstance(v, str):
                raise t.error(f"{key}[{i}]", f"expected a string ({shape}), got {kind_of(v)}")
            parts = v.split("/")
            if len(parts) != segments or not all(_PATTERN_SEGMENT.fullmatch(p) for p in parts):
                raise t.error(
                    f"{key}[{i}]",
                    f"{v!r}: expected {shape}, each a name or *",
                )
            out.append(v)
        return tuple(out)

    return PrincipalConfig(
        name=name,
        produce=patterns("produce", 1),
        consume=patterns("consume", 2),
        seek=patterns("seek", 2),
        redrive=patterns("redrive", 2),
        locks=t.boolean("locks", False),
        admin=t.boolean("admin", False),
        token_sha256=_digests(t, "token_sha256"),
    )


_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _digests(t: TomlTable, key: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(t.array(key, [])):
        if not isinstance(v, str) or not _SHA256_HEX.fullmatch(v):
            raise t.error(f"{key}[{i}]", "expected a SHA-256 digest: 64 lowercase hex digits")
        out.append(v)
    return tuple(out)


def _storage(t: TomlTable) -> StorageConfig:
    size = t.integer("map_size_bytes", STORAGE_MAP_BYTES_DEFAULT, lo=STORAGE_MAP_BYTES_MIN)
    # Room for at least the smallest reserve and as much again for data.
    size_max = t.integer(
        "map_size_max_bytes",
        max(size, STORAGE_MAP_BYTES_MAX_DEFAULT),
        lo=max(size, 2 * STORAGE_RESERVE_MIN_BYTES),
    )
    reserve = t.integer("reserve_bytes", None, hi=size_max - 1)
    if reserve is not None and reserve < STORAGE_RESERVE_MIN_BYTES:
        # 0 used to turn the watch off: a full map then stopped every replica for good.
        raise t.error(
            "reserve_bytes",
            f"must be at least {STORAGE_RESERVE_MIN_BYTES} (2 MiB, the room a replica needs "
            f"for cursor commits and retention once its storage is full; see "
            f"docs/configuration.md), got {reserve}",
        )
    checkpoint_batches = t.integer(
        "checkpoint_batches",
        STORAGE_CHECKPOINT_BATCHES_DEFAULT,
        lo=1,
        hi=STORAGE_CHECKPOINT_BATCHES_MAX,
    )
    checkpoint_bytes = t.integer(
        "checkpoint_bytes", STORAGE_CHECKPOINT_BYTES_DEFAULT, lo=1, hi=size_max - 1
    )
    return StorageConfig(
        map_size_bytes=size,
        map_size_max_bytes=size_max,
        reserve_bytes=reserve,
        checkpoint_batches=checkpoint_batches,
        checkpoint_bytes=checkpoint_bytes,
    )


def _batching(t: TomlTable, limits: Limits) -> Batching:
    b = Batching()
    items_max = t.integer(
        "items_max",
        min(b.items_max, limits.enqueue_items_max),
        lo=1,
        hi=limits.enqueue_items_max,
    )
    return Batching(
        linger_ms=t.integer("linger_ms", b.linger_ms, lo=0),
        items_max=items_max,
        bytes_max=t.integer("bytes_max", b.bytes_max, lo=1),
        inflight_batches=t.integer(
            "inflight_batches", b.inflight_batches, lo=1, hi=INFLIGHT_BATCHES_MAX
        ),
    )


_STORE: Final = (
    "name",
    "groups",
    "retention_tick_ms",
    "replicas",
    "paxos",
    "allow_zone_majority",
)


def _store(t: TomlTable, limits: Limits, hosts: dict[str, HostConfig] | None) -> StoreConfig:
    name = _name(t, "name")
    groups = t.integer("groups", lo=1)
    tick = t.integer("retention_tick_ms", _default(StoreConfig, "retention_tick_ms"), lo=1)
    replicas = _replicas(t, hosts)
    allow = _zone_rule(t, replicas, hosts, f"store {name!r}")
    p = t.table("paxos", allowed=_PAXOS_FIELDS)
    overrides = _paxos_overrides(p)
    # One item of the largest allowed size must fit one proposal.
    needed = limits.item_bytes_max + ENQUEUE_HEADROOM_BYTES
    kwargs = dict(overrides)
    base = PaxosConfig(replicas=("x",))
    kwargs.setdefault("value_bytes_max", max(base.value_bytes_max, needed))
    kwargs.setdefault("batch_bytes_max", max(base.batch_bytes_max, kwargs["value_bytes_max"]))
    kwargs.setdefault("pending_bytes_max", max(base.pending_bytes_max, kwargs["value_bytes_max"]))
    if kwargs["value_bytes_max"] < needed:
        raise p.error(
            "value_bytes_max",
            f"must be >= limits.item_bytes_max + {ENQUEUE_HEADROOM_BYTES} = {needed}",
        )
    return StoreConfig(
        name=name,
        groups=groups,
        replicas=replicas,
        retention_tick_ms=tick,
        paxos_overrides=tuple(sorted(overrides.items())),
        paxos=_paxos(p, replicas, groups, kwargs),
        allow_zone_majority=allow,
    )


def _replicas(t: TomlTable, hosts: dict[str, HostConfig] | None) -> tuple[ReplicaConfig, ...]:
    """The ``replicas`` array of the table ``t``: an odd count from 1."""
    reps = t.tables(
        "replicas", allowed=("node", "on", "host", "port", "zone", "metrics_port"), required=True
    )
    n = len(reps)
    if n < 1 or n > REPLICAS_PER_STORE_MAX or n % 2 == 0:
        raise t.error("replicas", f"need an odd count from 1 to {REPLICAS_PER_STORE_MAX}, got {n}")
    return tuple(_replica(r, hosts) for r in reps)


def _replica(t: TomlTable, hosts: dict[str, HostConfig] | None) -> ReplicaConfig:
    """A replica; in a file with ``hosts``, placed with ``on`` on one of them, whose address
    and zone it takes (repeating them is allowed, contradicting them is not)."""
    node = _name(t, "node")
    port = t.integer("port", lo=1, hi=PORT_MAX)
    metrics_port = t.integer("metrics_port", None, lo=1, hi=PORT_MAX)
    if hosts is None:
        if t.has("on"):
            raise t.error("on", "names a host, but the file has no [[hosts]]")
        return ReplicaConfig(
            node=node,
            host=t.string("host", _default(ReplicaConfig, "host"), nonempty=True),
            port=port,
            zone=_name(t, "zone", _default(ReplicaConfig, "zone")),
            metrics_port=metrics_port,
        )
    if not t.has("on"):
        raise t.error("on", "missing: in a file with [[hosts]], every replica names its host")
    on = _name(t, "on")
    host = hosts.get(on)
    if host is None:
        names = list(hosts)
        shown = ", ".join(names[:HOSTS_NAMED_MAX]) + (
            f" and {len(names) - HOSTS_NAMED_MAX} more" if len(names) > HOSTS_NAMED_MAX else ""
        )
        raise t.error("on", f"unknown host {on!r} (hosts: {shown})")
    address = t.string("host", host.address, nonempty=True)
    if _address_key(address) != _address_key(host.address):
        raise t.error(
            "host",
            f"{address!r} contradicts the address of host {on!r}, {host.address!r} (a replica "
            f"listens on its host's address: leave host out)",
        )
    zone = _name(t, "zone", host.zone)
    if zone != host.zone:
        raise t.error(
            "zone",
            f"{zone!r} contradicts the zone of host {on!r}, {host.zone!r} (leave zone out)",
        )
    return ReplicaConfig(
        node=node, host=host.address, port=port, zone=zone, metrics_port=metrics_port, on=on
    )


def _zone_rule(
    t: TomlTable,
    replicas: tuple[ReplicaConfig, ...],
    hosts: dict[str, HostConfig] | None,
    what: str,
) -> bool:
    """The table's ``allow_zone_majority``; without it, in a file with hosts, refuse replicas
    that put a majority in one zone (one zone lost would lose ``what``'s majority)."""
    allow = t.boolean("allow_zone_majority", _default(StoreConfig, "allow_zone_majority"))
    found = zone_majority(replicas) if hosts is not None and not allow else None
    if found is not None:
        zone, nodes = found
        placed = ", ".join(f"{r.node} on {r.on}" for r in replicas if r.node in nodes)
        raise t.error(
            "replicas",
            f"{what} puts {len(nodes)} of its {len(replicas)} replicas in zone {zone!r} "
            f"({placed}): losing that zone would lose its majority; spread them over more "
            f"zones, or accept it with allow_zone_majority = true",
        )
    return allow


def _paxos_overrides(t: TomlTable) -> dict[str, int]:
    """A ``paxos`` table: integer overrides of ``PaxosConfig`` fields (not the membership)."""
    return {k: t.integer(k) for k in sorted(t.data)}


def _paxos(
    t: TomlTable, replicas: tuple[ReplicaConfig, ...], groups: int, overrides: dict[str, int]
) -> PaxosConfig:
    """The ``PaxosConfig`` of a replica set; its complaints name a key of the table ``t``."""
    try:
        return PaxosConfig(replicas=tuple(r.node for r in replicas), groups=groups, **overrides)
    except ValueError as exc:
        text = str(exc)
        key, _, reason = text.partition(": ")
        if key in _PAXOS_FIELDS:
            raise t.error(key, reason) from exc
        raise t.error("", text) from exc


_LOCKS: Final = (
    "groups",
    "keys_max",
    "values_bytes_max",
    "cleanup_tick_ms",
    "replicas",
    "paxos",
    "allow_zone_majority",
)


def _locks(t: TomlTable, hosts: dict[str, HostConfig] | None) -> LockServiceConfig:
    groups = t.integer("groups", _default(LockServiceConfig, "groups"), lo=1, hi=LOCK_GROUPS_MAX)
    keys_max = t.integer("keys_max", _default(LockServiceConfig, "keys_max"), lo=1)
    values_bytes_max = t.integer(
        "values_bytes_max", _default(LockServiceConfig, "values_bytes_max"), lo=VALUE_BYTES_MAX
    )
    tick = t.integer("cleanup_tick_ms", _default(LockServiceConfig, "cleanup_tick_ms"), lo=1)
    replicas = _replicas(t, hosts)
    allow = _zone_rule(t, replicas, hosts, "the lock service")
    p = t.table("paxos", allowed=_PAXOS_FIELDS)
    overrides = _paxos_overrides(p)
    return LockServiceConfig(
        groups=groups,
        replicas=replicas,
        keys_max=keys_max,
        values_bytes_max=values_bytes_max,
        cleanup_tick_ms=tick,
        paxos_overrides=tuple(sorted(overrides.items())),
        paxos=_paxos(p, replicas, groups, overrides),
        allow_zone_majority=allow,
    )


_OWNERSHIP: Final = tuple(f.name for f in dataclasses.fields(OwnershipConfig))


def _ownership(t: TomlTable) -> OwnershipConfig:
    defaults = OwnershipConfig()
    values: dict[str, Any] = {
        n: t.integer(n, getattr(defaults, n)) for n in _OWNERSHIP if n != "scheduler"
    }
    values["scheduler"] = t.boolean("scheduler", defaults.scheduler)
    try:
        return OwnershipConfig(**values)
    except ValueError as exc:
        key, _, reason = str(exc).partition(": ")
        raise t.error(key, reason) from exc


def _topic(t: TomlTable, limits: Limits) -> TopicConfig:
    name = _name(t, "name")
    queues = t.integer("queues", lo=1, hi=limits.queues_max)
    r = t.table("retention", allowed=("hold_items", "hold_ms"))
    retention = Retention(
        hold_items=r.integer("hold_items", None, lo=0),
        hold_ms=r.integer("hold_ms", None, lo=0),
    )
    groups_raw = t.tables(
        "consumer_groups", allowed=("name", "queues", "kinds", "rate", "retries", "dead_letter")
    )
    if len(groups_raw) > limits.consumer_groups_max:
        raise t.error(
            "consumer_groups",
            f"{len(groups_raw)} groups exceed limits.consumer_groups_max = "
            f"{limits.consumer_groups_max}",
        )
    groups = tuple(_consumer_group(g, queues, limits) for g in groups_raw)
    _check_unique(t, "consumer_groups", [g.name for g in groups], "consumer group")
    for mark in (RETRY_MARK, DLQ_MARK):
        if mark in name:  # pragma: no cover - dots are refused by the name pattern
            raise t.error("name", "must not contain a derived-topic mark")
    return TopicConfig(name=name, queues=queues, retention=retention, consumer_groups=groups)


def _consumer_group(t: TomlTable, queue_count: int, limits: Limits) -> ConsumerGroupConfig:
    name = _name(t, "name")
    if name == HEALTH_GROUP:
        raise t.error("name", f"{name!r} is reserved: every topic has it, for pxq echo")
    queues: tuple[int, ...] | None = None
    qv = t.raw("queues", "all")
    if isinstance(qv, str):
        if qv != "all":
            raise t.error("queues", f'expected "all" or a list of queue numbers, got {qv!r}')
    else:
        arr = t.array("queues")
        if not arr:
            raise t.error("queues", 'must not be empty (omit it, or say "all")')
        seen: set[int] = set()
        for i, q in enumerate(arr):
            if type(q) is not int:
                raise t.error(f"queues[{i}]", f"expected an integer, got {kind_of(q)}")
            if not 0 <= q < queue_count:
                raise t.error(f"queues[{i}]", f"queue {q} outside 0..{queue_count - 1}")
            if q in seen:
                raise t.error(f"queues[{i}]", f"duplicate queue {q}")
            seen.add(q)
        queues = tuple(sorted(seen))
    kinds: tuple[str, ...] | None = None
    if t.has("kinds"):
        found: list[str] = []
        for i, k in enumerate(t.array("kinds")):
            if not isinstance(k, str):
                raise t.error(f"kinds[{i}]", f"expected a string, got {kind_of(k)}")
            if k in found:
                raise t.error(f"kinds[{i}]", f"duplicate kind {k!r}")
            found.append(k)
        kinds = tuple(sorted(found))
    rate: RateLimit | None = None
    if t.has("rate"):
        r = t.table("rate", allowed=("items_per_s", "burst"))
        rate = RateLimit(items_per_s=r.integer("items_per_s", lo=1), burst=r.integer("burst", lo=1))
    levels = t.tables("retries", allowed=("delay_ms",))
    if len(levels) > limits.retry_levels_max:
        raise t.error(
            "retries",
            f"{len(levels)} levels exceed limits.retry_levels_max = {limits.retry_levels_max}",
        )
    return ConsumerGroupConfig(
        name=name,
        queues=queues,
        kinds=kinds,
        rate=rate,
        retries=tuple(RetryLevel(delay_ms=r.integer("delay_ms", lo=0)) for r in levels),
        dead_letter=t.boolean("dead_letter", _default(ConsumerGroupConfig, "dead_letter")),
    )
