"""Cluster configuration: TOML -> frozen dataclasses, validated, with errors that name the file
and the key path.

This package owns the schema of a cluster file (stores and their replicas, topics with their
retention and consumer groups, the store's hard limits, the producer's batching, the lock
service and its replicas, the consumers' ownership timing, the deployment inventory of hosts)
and the lookups every component derives from it: a topic by name (derived retry and
dead-letter topics included), the store of a queue, the consumer groups subscribed to a queue,
every node with its role and address, the host of a node and the nodes of a host.
``model`` holds the dataclasses, their defaults and the lookups; ``parser`` reads a file into
them (``load_config``, ``loads_config``, ``ConfigError``); ``default`` is the embedded default
file (``DEFAULT_TOML``, ``default_config``). Every public name is re-exported here.

Every replica of a store must run with the same configuration: the queue state machine reads
retention, retry levels and subscriptions from it while applying commands, so two replicas
with different files could diverge.

Schema (defaults in parentheses)::

    [cluster]
    name = "local"                       # the cluster's name
    id = "c-0123456789abcdef"            # ("") the cluster's id: pxq cluster up writes a
                                         # random one; nodes stamp it into their data dirs,
                                         # clients present it (pxq.config.identity)
    [limits]                             # every bound of the store, in one place
    consumer_groups_max = 1024           # per topic
    queues_max = 65536                   # per topic
    item_bytes_max = 1048576             # key + payload + kind of one item
    enqueue_items_max = 1000             # items per Enqueue
    get_items_max = 10000                # items per Get (requests are clamped to it)
    get_bytes_max = 16777216             # key + payload bytes per Get (clamped)
    get_scan_items_max = 100000          # items a Get may look at, skipped kinds included
    dedupe_window = 1024                 # sequence numbers remembered per producer
    producers_max = 10000                # producers remembered per Paxos group (LRU)
    retry_levels_max = 16                # retry levels per consumer group
    [batching]                           # the producer's client-side batching
    linger_ms = 0                        # opt-in wait; 0: a queue's batch goes when none is in flight
    items_max = 100
    bytes_max = 1048576
    inflight_batches = 4                 # batches of one queue in flight at once (full ones pipeline)
    [storage]                            # every node's LMDB (defaults if absent)
    map_size_bytes = 1073741824          # (1 GiB) initial map; it doubles when full...
    map_size_max_bytes = 274877906944    # (256 GiB) ...up to this (>= 4 MiB)
    reserve_bytes = 67108864             # (automatic: 5 % of the capacity, >= 64 MiB) below
                                         # this much room, enqueues are refused storage_full;
                                         # at least 2097152 (2 MiB; 0 is refused)
    [[hosts]]                            # optional: the deployment inventory (pxq deploy)
    name = "h0"
    address = "10.0.1.10"                # IPv4, IPv6 or DNS name: SSH and the replicas' address
    zone = "a"                           # its failure domain (required)
    ssh_user = "root"                    # ("root")
    ssh_port = 22                        # (22)
    ssh_key = "keys/deploy"              # (asyncssh's defaults) relative to this file; ~ expands
    base_dir = "/opt/pxq"                # ("/opt/pxq") where installs and data go on the host
    python = "python3"                   # ("python3") command name or absolute path
    [[stores]]
    name = "store0"
    groups = 4                           # Paxos groups; queue q lives in group q mod groups
    retention_tick_ms = 1000             # how often each group's master proposes a retention tick
    allow_zone_majority = false          # (false) with [[hosts]]: accept a zone holding a
                                         # majority of the replicas (losing it loses the store)
    [[stores.replicas]]
    node = "s0"
    on = "h0"                            # with [[hosts]] (required there, refused elsewhere):
                                         # the host running it; host and zone then follow it
    host = "127.0.0.1"                   # ("127.0.0.1"; with on: the host's address)
    port = 7101
    zone = "z0"                          # ("z0"; with on: the host's zone)
    metrics_port = 8101                  # (port + [metrics] port_offset) Prometheus endpoint
    [stores.paxos]                       # optional overrides of pxq.paxos.config.PaxosConfig
    lease_ms = 1000
    [locks]                              # optional: the lock service (absent: none)
    groups = 1                           # (1) Paxos groups; key k lives in crc32(k) mod groups
    keys_max = 100000                    # (100000) keys one group holds
    values_bytes_max = 67108864          # (64 MiB) value bytes one group holds, >= 65536
    cleanup_tick_ms = 500                # (500) how often a master looks for expired leases
    allow_zone_majority = false          # (false) as a store's
    [[locks.replicas]]                   # an odd count from 1 to 9, like a store's
    node = "l0"                          # unique across stores and locks
    host = "127.0.0.1"                   # ("127.0.0.1")
    port = 7201                          # (host, port) unique across all nodes
    zone = "z0"                          # ("z0")
    [locks.paxos]                        # optional overrides of PaxosConfig, as [stores.paxos]
    lease_ms = 1000
    [ownership]                          # consumers' ownership of queues (defaults if absent)
    lease_ms = 3000                      # a consumer's lease on a queue and its membership key
    margin_ms = 600                      # lease considered lost this long before it expires
    poll_ms = 500                        # membership and assignment re-read period
    renew_ms = 1000                      # lease renewal period
    weight = 1                           # the consumer's default weight (consistent hashing)
    scheduler = false                    # follow a scheduler's published assignment
    [tls]                                # optional: absent, TLS is off (anyone may connect)
    enabled = true                       # (true) mutual TLS on every connection
    dir = "tls"                          # ("tls") CA and certificates, relative to this file
    identity = "admin"                   # ("admin") client commands' default principal
    [metrics]                            # optional: each node's Prometheus endpoint (plain HTTP)
    enabled = false                      # (false) on for every node (pxq node run --metrics)
    port_offset = 1000                   # (1000) a replica's metrics port: port + this
    [[principals]]                       # optional: a client principal's permissions
    name = "billing"                     # its certificate says client:billing
    produce = ["orders"]                 # topics ("*": any)
    consume = ["orders/billing"]         # topic/group: get, commit, retry ("*" per segment)
    seek = ["orders/billing"]            # topic/group
    redrive = ["orders/billing"]         # topic/group: read and commit its dead letters
    locks = true                         # (false) use the lock service (consumers need it)
    admin = false                        # (false) everything
    token_sha256 = ["<64 hex digits>"]   # ([]) digests of tokens that log in as it (TLS, no
                                         # client certificate; pxq tls token NAME)
    [[topics]]
    name = "events"                      # letters, digits, "_" and "-" only
    queues = 8
    [topics.retention]                   # optional; an absent hold is no constraint
    hold_items = 1000
    hold_ms = 3600000
    [[topics.consumer_groups]]
    name = "default"
    queues = "all"                       # ("all") or a list of queue numbers
    kinds = ["a", "b"]                   # (all kinds)
    rate = { items_per_s = 1000, burst = 100 }   # (no limit)
    retries = [{ delay_ms = 1000 }]      # ([]): retry levels; empty: straight to dead letters
    dead_letter = true                   # (true); false: an item failing its last level stays
                                         # in place and is redelivered (never dropped)

Retention rule: an item at offset o of a queue, enqueued at wall time t, is removable when every
consumer group subscribed to that queue has its cursor > o, and o < end_offset - hold_items,
and t < now - hold_ms (now: the wall time of the master proposing the retention tick); an
absent hold is no constraint. The store may keep removable items longer (it removes whole
enqueue batches), never shorter.

The health group: every base topic also has the consumer group ``HEALTH_GROUP``
(``"pxq-health"``, reserved: a file may not declare it), which ``pxq echo`` consumes. It is found
by name (``TopicConfig.group``, ``TopicInfo.group``) but is no subscriber: it does not hold back
retention, has no retry levels or dead letters, and is not listed among a topic's groups.

Ownership rule: 0 < margin_ms < lease_ms <= LEASE_MS_MAX, 0 < renew_ms <= (lease_ms -
margin_ms) / 2 (two renewals fit in the time a holder trusts its lease), 0 < poll_ms < lease_ms,
1 <= weight <= OWNERSHIP_WEIGHT_MAX. ``margin_ms`` must cover the clock skew between lock
replicas (the service stamps leases with its master's wall clock) and the holder's drift.

Node names are unique across stores and the lock service, and (host, port) across all nodes
(and the hosts' SSH servers).

Hosts rule (a file with ``[[hosts]]``): host names and addresses are unique; every replica names
its host with ``on`` and listens on that host's address (a ``host`` or ``zone`` it repeats must
be the host's); no zone holds a majority of a store's or of the lock service's replicas, so one
zone lost never loses a majority, unless that store (or ``[locks]``) says
``allow_zone_majority = true``. A host no replica names is allowed (a spare). A file without
``[[hosts]]`` is read as before: replicas' zones are labels and are not checked.
A store may not be named ``"locks"``: that name stands for the lock service wherever Paxos
groups are named as ``service/group`` (``locks/0``).

Store Paxos defaults: a store's ``value_bytes_max`` and ``batch_bytes_max`` default to
``item_bytes_max`` plus ``ENQUEUE_HEADROOM_BYTES`` (at least the PaxosConfig defaults), so that
one item of the largest allowed size fits one proposal; an explicit override below that is an
error.
"""

from pxq.config.default import DEFAULT_TOML, default_config, default_toml
from pxq.config.model import (
    CLUSTER_ID_CHARS_MAX,
    ENQUEUE_HEADROOM_BYTES,
    GIB,
    HEALTH_GROUP,
    INFLIGHT_BATCHES_MAX,
    KIB,
    LOCK_GROUPS_MAX,
    LOCKS_SERVICE,
    MIB,
    NAME_CHARS_MAX,
    OWNERSHIP_WEIGHT_MAX,
    PORT_MAX,
    REPLICAS_PER_STORE_MAX,
    STORAGE_MAP_BYTES_DEFAULT,
    STORAGE_MAP_BYTES_MAX_DEFAULT,
    STORAGE_MAP_BYTES_MIN,
    STORAGE_RESERVE_AUTO_CAP_PERCENT,
    STORAGE_RESERVE_AUTO_MIN_BYTES,
    STORAGE_RESERVE_AUTO_PERCENT,
    STORAGE_RESERVE_MIN_BYTES,
    Batching,
    ClusterConfig,
    ConnectionsConfig,
    ConsumerGroupConfig,
    HostConfig,
    Limits,
    LockServiceConfig,
    MetricsConfig,
    NodeInfo,
    OwnershipConfig,
    PrincipalConfig,
    RateLimit,
    ReplicaConfig,
    Retention,
    RetryLevel,
    Role,
    StorageConfig,
    StoreConfig,
    TlsConfig,
    TopicConfig,
    TopicInfo,
    ownership_problem,
    zone_majority,
)
from pxq.config.parser import ConfigError, load_config, loads_config

__all__ = [
    "CLUSTER_ID_CHARS_MAX",
    "DEFAULT_TOML",
    "ENQUEUE_HEADROOM_BYTES",
    "GIB",
    "HEALTH_GROUP",
    "INFLIGHT_BATCHES_MAX",
    "KIB",
    "LOCKS_SERVICE",
    "LOCK_GROUPS_MAX",
    "MIB",
    "NAME_CHARS_MAX",
    "OWNERSHIP_WEIGHT_MAX",
    "PORT_MAX",
    "REPLICAS_PER_STORE_MAX",
    "STORAGE_MAP_BYTES_DEFAULT",
    "STORAGE_MAP_BYTES_MAX_DEFAULT",
    "STORAGE_MAP_BYTES_MIN",
    "STORAGE_RESERVE_AUTO_CAP_PERCENT",
    "STORAGE_RESERVE_AUTO_MIN_BYTES",
    "STORAGE_RESERVE_AUTO_PERCENT",
    "STORAGE_RESERVE_MIN_BYTES",
    "Batching",
    "ClusterConfig",
    "ConfigError",
    "ConnectionsConfig",
    "ConsumerGroupConfig",
    "HostConfig",
    "Limits",
    "LockServiceConfig",
    "MetricsConfig",
    "NodeInfo",
    "OwnershipConfig",
    "PrincipalConfig",
    "RateLimit",
    "ReplicaConfig",
    "Retention",
    "RetryLevel",
    "Role",
    "StorageConfig",
    "StoreConfig",
    "TlsConfig",
    "TopicConfig",
    "TopicInfo",
    "default_config",
    "default_toml",
    "load_config",
    "loads_config",
    "ownership_problem",
    "zone_majority",
]
