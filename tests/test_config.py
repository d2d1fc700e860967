"""Cluster configuration: TOML loading, validation errors that name file and key path, the
embedded default, the lookups derived from it, the ``[locks]`` and ``[ownership]`` tables, and
the list of every node with its role and address."""

from __future__ import annotations

from pathlib import Path

import pytest

from pxq.config import (
    DEFAULT_TOML,
    HEALTH_GROUP,
    LOCK_GROUPS_MAX,
    OWNERSHIP_WEIGHT_MAX,
    STORAGE_RESERVE_MIN_BYTES,
    ConfigError,
    Limits,
    NodeInfo,
    OwnershipConfig,
    Retention,
    StorageConfig,
    default_config,
    load_config,
    loads_config,
)
from pxq.lock.messages import LEASE_MS_MAX, VALUE_BYTES_MAX
from pxq.lock.node import CLEANUP_TICK_MS_DEFAULT
from pxq.lock.sm import KEYS_MAX_DEFAULT, VALUES_BYTES_MAX_DEFAULT
from pxq.paxos.config import PaxosConfig
from pxq.producer.settings import producer_settings
from pxq.routing import StoreRing

BASE = """
[cluster]
name = "c"
[[stores]]
name = "a"
groups = 2
[[stores.replicas]]
node = "a0"
port = 7000
"""


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, file="x.toml")
    return info.value


def test_default_config_is_a_local_three_replica_store() -> None:
    c = default_config()
    assert c.name == "local"
    (store,) = c.stores
    assert store.groups == 4 and store.nodes == ("s0", "s1", "s2")
    assert [(r.host, r.port, r.zone) for r in store.replicas] == [
        ("127.0.0.1", 7101, "z0"),
        ("127.0.0.1", 7102, "z0"),
        ("127.0.0.1", 7103, "z0"),
    ]
    assert store.paxos.replicas == ("s0", "s1", "s2") and store.paxos.groups == 4
    (topic,) = c.topics
    assert (topic.name, topic.queues) == ("events", 8)
    assert [g.name for g in topic.consumer_groups] == ["default"]
    # Consumed items are held an hour, so the README's replay (the last minute) works.
    assert topic.retention == Retention(hold_ms=3_600_000)
    assert c.limits == Limits()
    assert loads_config(DEFAULT_TOML) == c


def test_every_base_topic_has_the_reserved_health_group_but_not_as_a_subscriber() -> None:
    c = default_config()
    (topic,) = c.topics
    health = topic.group(HEALTH_GROUP)
    assert health is not None and health.name == "pxq-health"
    assert (health.retries, health.dead_letter, health.queues, health.kinds) == (
        (),
        False,
        None,
        None,
    )
    info = c.topic("events")
    assert info is not None and info.group(HEALTH_GROUP) == health
    # Not a subscriber: it holds back no retention and is no user group.
    assert HEALTH_GROUP not in [g.name for g in info.subscribers]
    assert HEALTH_GROUP not in [g.name for g in topic.consumer_groups]
    # Derived topics belong to their group alone.
    retry = c.topic("events.retry.default.1")
    assert retry is not None and retry.group(HEALTH_GROUP) is None
    assert c.topic("events.retry.pxq-health.1") is None


def test_a_group_may_not_take_the_health_groups_name() -> None:
    e = error(
        BASE
        + '[[topics]]\nname = "t"\nqueues = 1\n[[topics.consumer_groups]]\nname = "pxq-health"\n'
    )
    assert e.key_path == "topics[0].consumer_groups[0].name" and "reserved" in e.reason


def test_default_config_has_a_three_replica_lock_service_and_default_ownership() -> None:
    c = default_config()
    locks = c.locks
    assert locks is not None
    assert locks.groups == 1 and locks.nodes == ("l0", "l1", "l2")
    assert [(r.host, r.port, r.zone) for r in locks.replicas] == [
        ("127.0.0.1", 7201, "z0"),
        ("127.0.0.1", 7202, "z0"),
        ("127.0.0.1", 7203, "z0"),
    ]
    assert locks.paxos.replicas == ("l0", "l1", "l2") and locks.paxos.groups == 1
    assert (locks.keys_max, locks.cleanup_tick_ms) == (KEYS_MAX_DEFAULT, CLEANUP_TICK_MS_DEFAULT)
    assert locks.values_bytes_max == VALUES_BYTES_MAX_DEFAULT
    assert c.ownership == OwnershipConfig()
    o = c.ownership
    assert (o.lease_ms, o.margin_ms, o.poll_ms, o.renew_ms, o.weight, o.scheduler) == (
        3000,
        600,
        500,
        1000,
        1,
        False,
    )
    assert o.trusted_ms == 2400


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    p = tmp_path / "cluster.toml"
    p.write_text(BASE)
    assert load_config(p).stores[0].name == "a"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert str(info.value).startswith(str(tmp_path / "missing.toml"))


def test_errors_name_the_file_and_the_key_path() -> None:
    e = error(BASE + "[[topics]]\nname = 'events'\nqueues = 'eight'\n")
    assert (e.file, e.key_path) == ("x.toml", "topics[0].queues")
    assert str(e) == "x.toml: topics[0].queues: expected an integer, got a string"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("[limits]\nfoo = 1\n", "limits.foo"),
        ("[[topics]]\nname = 't'\nqueues = 1\ncolour = 'red'\n", "topics[0].colour"),
        (
            "[[topics]]\nname = 't'\nqueues = 1\n[topics.retention]\nhold = 1\n",
            "topics[0].retention.hold",
        ),
        ("[extra]\n", "extra"),
    ],
)
def test_unknown_keys_are_rejected(extra: str, path: str) -> None:
    e = error(BASE + extra)
    assert e.key_path == path and "unknown key" in e.reason


def test_unknown_key_in_a_replica_and_in_paxos_overrides() -> None:
    e = error(BASE.replace("port = 7000", "port = 7000\nweight = 2"))
    assert e.key_path == "stores[0].replicas[0].weight"
    e = error(BASE + "[stores.paxos]\nleese_ms = 5\n")
    assert e.key_path == "stores[0].paxos.leese_ms"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (BASE.replace("groups = 2", "groups = true"), "stores[0].groups"),
        (BASE.replace("groups = 2", "groups = 2.0"), "stores[0].groups"),
        (BASE.replace('name = "c"', "name = 3"), "cluster.name"),
        (BASE + "[limits]\nget_items_max = 0\n", "limits.get_items_max"),
        (
            BASE + "[[topics]]\nname='t'\nqueues=2\n[[topics.consumer_groups]]\nname='g'\n"
            "dead_letter = 'yes'\n",
            "topics[0].consumer_groups[0].dead_letter",
        ),
        (
            BASE + "[[topics]]\nname='t'\nqueues=2\n[[topics.consumer_groups]]\nname='g'\n"
            "retries = [{ delay_ms = -1 }]\n",
            "topics[0].consumer_groups[0].retries[0].delay_ms",
        ),
        (
            BASE + "[[topics]]\nname='t'\nqueues=2\n[[topics.consumer_groups]]\nname='g'\n"
            "rate = { items_per_s = 0, burst = 1 }\n",
            "topics[0].consumer_groups[0].rate.items_per_s",
        ),
        (BASE + "[stores.paxos]\nlease_ms = 'long'\n", "stores[0].paxos.lease_ms"),
        (BASE + "[stores.paxos]\nheartbeat_ms = 900\n", "stores[0].paxos.heartbeat_ms"),
        (BASE + "[stores.paxos]\nvalue_bytes_max = 1024\n", "stores[0].paxos.value_bytes_max"),
    ],
)
def test_wrong_types_and_values_are_rejected(text: str, path: str) -> None:
    assert error(text).key_path == path


@pytest.mark.parametrize("name", ["a.b", "with space", "", "é", "x" * 65])
def test_topic_names_allow_letters_digits_underscore_and_dash_only(name: str) -> None:
    e = error(BASE + f"[[topics]]\nname = '{name}'\nqueues = 1\n")
    assert e.key_path == "topics[0].name"
    assert loads_config(BASE + "[[topics]]\nname = 'Ab_9-x'\nqueues = 1\n").topics[0].name


def test_duplicate_names_are_rejected() -> None:
    topic = "[[topics]]\nname = 't'\nqueues = 1\n"
    assert error(BASE + topic + topic).key_path == "topics[1].name"
    group = "[[topics.consumer_groups]]\nname = 'g'\n"
    assert error(BASE + topic + group + group).key_path == "topics[0].consumer_groups[1].name"
    store = BASE.split("[[stores]]")[1]
    e = error(BASE + "[[stores]]" + store.replace("a0", "b0").replace("7000", "7001"))
    assert e.key_path == "stores[1].name"
    e = error(BASE + "[[stores]]" + store.replace('"a"', '"b"').replace("7000", "7001"))
    assert e.key_path == "stores[1].replicas[0].node" and "a0" in e.reason


def test_ports_must_be_valid_and_distinct_per_host() -> None:
    assert error(BASE.replace("7000", "0")).key_path == "stores[0].replicas[0].port"
    assert error(BASE.replace("7000", "65536")).key_path == "stores[0].replicas[0].port"
    two = (
        BASE
        + "[[stores.replicas]]\nnode = 'a1'\nport = 7000\n[[stores.replicas]]\nnode = 'a2'\nport = 7002\n"
    )
    assert error(two).key_path == "stores[0].replicas[1].port"
    other_host = two.replace(
        "node = 'a1'\nport = 7000", "node = 'a1'\nport = 7000\nhost = '10.0.0.2'"
    )
    assert loads_config(other_host).stores[0].replicas[1].host == "10.0.0.2"


def test_replica_count_must_be_odd() -> None:
    two = BASE + "[[stores.replicas]]\nnode = 'a1'\nport = 7001\n"
    assert error(two).key_path == "stores[0].replicas"


def test_consumer_group_queues_all_or_a_list() -> None:
    text = BASE + "[[topics]]\nname = 't'\nqueues = 4\n[[topics.consumer_groups]]\nname = 'g'\n"
    c = loads_config(text + "queues = 'all'\n")
    g = c.topics[0].consumer_groups[0]
    assert g.queues is None and all(g.subscribes_queue(q) for q in range(4))
    g = loads_config(text + "queues = [3, 1]\n").topics[0].consumer_groups[0]
    assert g.queues == (1, 3) and g.subscribes_queue(3) and not g.subscribes_queue(0)
    assert error(text + "queues = 'some'\n").key_path == "topics[0].consumer_groups[0].queues"
    assert error(text + "queues = [4]\n").key_path == "topics[0].consumer_groups[0].queues[0]"
    assert error(text + "queues = [1, 1]\n").key_path == "topics[0].consumer_groups[0].queues[1]"
    assert error(text + "queues = []\n").key_path == "topics[0].consumer_groups[0].queues"
    assert error(text + "queues = ['1']\n").key_path == "topics[0].consumer_groups[0].queues[0]"


def test_consumer_group_defaults_and_options() -> None:
    text = BASE + (
        "[[topics]]\nname = 't'\nqueues = 4\n[topics.retention]\nhold_items = 10\n"
        "[[topics.consumer_groups]]\nname = 'plain'\n"
        "[[topics.consumer_groups]]\nname = 'picky'\nkinds = ['b', 'a']\n"
        "rate = { items_per_s = 100, burst = 10 }\n"
        "retries = [{ delay_ms = 5 }, { delay_ms = 50 }]\ndead_letter = false\n"
    )
    t = loads_config(text).topics[0]
    plain, picky = t.consumer_groups
    assert t.retention == Retention(hold_items=10, hold_ms=None)
    assert (plain.kinds, plain.rate, plain.retries, plain.dead_letter) == (None, None, (), True)
    assert plain.subscribes_kind("anything")
    assert (
        picky.kinds == ("a", "b") and picky.subscribes_kind("a") and not picky.subscribes_kind("")
    )
    assert picky.rate is not None and (picky.rate.items_per_s, picky.rate.burst) == (100, 10)
    assert [r.delay_ms for r in picky.retries] == [5, 50] and not picky.dead_letter


def test_limits_bound_queues_groups_and_retry_levels() -> None:
    lim = "[limits]\nqueues_max = 4\nconsumer_groups_max = 1\nretry_levels_max = 1\n"
    assert error(BASE + lim + "[[topics]]\nname='t'\nqueues=5\n").key_path == "topics[0].queues"
    groups = "[[topics]]\nname='t'\nqueues=1\n[[topics.consumer_groups]]\nname='a'\n"
    assert error(BASE + lim + groups + "[[topics.consumer_groups]]\nname='b'\n").key_path == (
        "topics[0].consumer_groups"
    )
    retries = groups + "retries = [{ delay_ms = 1 }, { delay_ms = 2 }]\n"
    assert error(BASE + lim + retries).key_path == "topics[0].consumer_groups[0].retries"


def test_batching_is_bounded_by_the_enqueue_limit() -> None:
    c = loads_config(BASE + "[batching]\nlinger_ms = 0\n")
    assert (c.batching.linger_ms, c.batching.items_max) == (0, 100)
    e = error(BASE + "[limits]\nenqueue_items_max = 10\n[batching]\nitems_max = 11\n")
    assert e.key_path == "batching.items_max"


def test_inflight_batches_defaults_to_4_and_reaches_the_producer() -> None:
    assert loads_config(BASE).batching.inflight_batches == 4
    c = loads_config(DEFAULT_TOML + "[batching]\ninflight_batches = 1\n")
    assert producer_settings(c).inflight_batches_max == 1
    for bad in ("0", "65", '"4"'):
        e = error(BASE + f"[batching]\ninflight_batches = {bad}\n")
        assert e.key_path == "batching.inflight_batches"


def test_paxos_overrides_reach_the_replica_set_configuration() -> None:
    c = loads_config(BASE + "[stores.paxos]\nlease_ms = 2000\nheartbeat_ms = 300\n")
    s = c.stores[0]
    assert s.paxos_overrides == (("heartbeat_ms", 300), ("lease_ms", 2000))
    assert (s.paxos.lease_ms, s.paxos.heartbeat_ms, s.paxos.groups) == (2000, 300, 2)
    assert s.paxos.replicas == ("a0",)
    # One item of the largest size fits a proposal.
    assert s.paxos.value_bytes_max >= c.limits.item_bytes_max
    assert PaxosConfig(replicas=("x",)).lease_ms == 1000


def test_topic_lookup_includes_derived_retry_and_dead_letter_topics() -> None:
    c = default_config()
    base = c.topic("events")
    assert base is not None and base.level == 0 and base.owner is None
    r2 = c.topic("events.retry.default.2")
    assert r2 is not None and (r2.level, r2.owner, r2.queues) == (2, "default", 8)
    dlq = c.topic("events.dlq.default")
    assert dlq is not None and (dlq.level, dlq.owner) == (-1, "default")
    assert c.topic("events.retry.default.3") is None  # only two levels configured
    assert c.topic("events.retry.other.1") is None
    assert c.topic("nope") is None
    assert c.base_topic("events") is base.base and c.base_topic("events.dlq.default") is None


def test_subscribed_groups_of_a_topic_and_queue() -> None:
    text = BASE + (
        "[[topics]]\nname = 't'\nqueues = 4\n"
        "[[topics.consumer_groups]]\nname = 'all'\n"
        "[[topics.consumer_groups]]\nname = 'some'\nqueues = [2]\nkinds = ['x']\n"
    )
    c = loads_config(text)
    assert c.subscribed_groups("t") == ("all", "some")
    assert c.subscribed_groups("t", 0) == ("all",)
    assert c.subscribed_groups("t", 2) == ("all", "some")
    # A derived topic is read by its owner only, on every queue and every kind.
    assert c.subscribed_groups("t.dlq.some", 0) == ("some",)
    info = c.topic("t.dlq.some")
    assert info is not None and info.subscribers[0].kinds is None
    assert c.subscribed_groups("unknown") == ()


def test_store_for_follows_the_ring_and_derived_topics_follow_their_base() -> None:
    stores = "".join(
        f"[[stores]]\nname = 's{i}'\ngroups = 2\n[[stores.replicas]]\nnode = 'n{i}'\nport = {7000 + i}\n"
        for i in range(3)
    )
    c = loads_config(
        "[cluster]\nname='c'\n" + stores + "[[topics]]\nname='t'\nqueues=32\n"
        "[[topics.consumer_groups]]\nname='g'\nretries=[{delay_ms=1}]\n"
    )
    ring = StoreRing(["s0", "s1", "s2"])
    owners = [c.store_for("t", q) for q in range(32)]
    assert owners == [ring.store_of("t", q) for q in range(32)]
    assert len(set(owners)) == 3
    assert [c.store_for("t.retry.g.1", q) for q in range(32)] == owners
    held = [q for s in ("s0", "s1", "s2") for g in range(2) for q in c.queues_of("t", s, g)]
    assert sorted(held) == list(range(32))
    for q in c.queues_of("t", "s1", 1):
        assert q % 2 == 1 and owners[q] == "s1"


def test_invalid_toml_is_a_config_error() -> None:
    e = error("[cluster\nname=")
    assert e.key_path == "-" and "invalid TOML" in e.reason


def test_missing_sections_are_reported() -> None:
    assert error("").key_path == "cluster"
    assert error("[cluster]\nname='c'\n").key_path == "stores"
    assert error("stores = []\n[cluster]\nname='c'\n").key_path == "stores"
    assert error(BASE.replace('node = "a0"\n', "")).key_path == "stores[0].replicas[0].node"


# -- the lock service and ownership -------------------------------------------------------------

LOCKS = """
[locks]
groups = 3
keys_max = 50
values_bytes_max = 100000
cleanup_tick_ms = 250
[[locks.replicas]]
node = "l0"
port = 7100
zone = "z1"
[[locks.replicas]]
node = "l1"
host = "10.0.0.2"
port = 7000
[[locks.replicas]]
node = "l2"
port = 7102
[locks.paxos]
lease_ms = 2000
"""


def test_without_a_locks_table_there_is_no_lock_service_and_ownership_defaults_apply() -> None:
    c = loads_config(BASE)
    assert c.locks is None and c.ownership == OwnershipConfig()
    assert c.all_nodes() == (
        NodeInfo(
            node="a0",
            role="store",
            service="a",
            host="127.0.0.1",
            port=7000,
            zone="z0",
            metrics_port=8000,
        ),
    )


def test_a_locks_table_describes_the_lock_replica_set() -> None:
    c = loads_config(BASE + LOCKS)
    locks = c.locks
    assert locks is not None
    assert (locks.groups, locks.keys_max, locks.cleanup_tick_ms) == (3, 50, 250)
    assert locks.values_bytes_max == 100000
    assert locks.nodes == ("l0", "l1", "l2")
    assert [(r.host, r.port, r.zone) for r in locks.replicas] == [
        ("127.0.0.1", 7100, "z1"),
        ("10.0.0.2", 7000, "z0"),
        ("127.0.0.1", 7102, "z0"),
    ]
    assert locks.paxos_overrides == (("lease_ms", 2000),)
    assert (locks.paxos.replicas, locks.paxos.groups, locks.paxos.lease_ms) == (
        ("l0", "l1", "l2"),
        3,
        2000,
    )
    # The store's Paxos configuration is not affected by the lock service's overrides.
    assert c.stores[0].paxos.lease_ms == 1000
    minimal = loads_config(BASE + "[locks]\n[[locks.replicas]]\nnode = 'l0'\nport = 7001\n")
    assert minimal.locks is not None and minimal.locks.groups == 1
    assert minimal.locks.keys_max == KEYS_MAX_DEFAULT


def test_every_node_is_listed_with_its_role_service_and_address() -> None:
    c = loads_config(BASE + LOCKS)
    assert [(n.node, n.role, n.service, n.address) for n in c.all_nodes()] == [
        ("a0", "store", "a", ("127.0.0.1", 7000)),
        ("l0", "lock", "locks", ("127.0.0.1", 7100)),
        ("l1", "lock", "locks", ("10.0.0.2", 7000)),
        ("l2", "lock", "locks", ("127.0.0.1", 7102)),
    ]
    assert c.node_addresses() == {
        "a0": ("127.0.0.1", 7000),
        "l0": ("127.0.0.1", 7100),
        "l1": ("10.0.0.2", 7000),
        "l2": ("127.0.0.1", 7102),
    }
    info = c.node_info("l1")
    assert info is not None and (info.role, info.zone) == ("lock", "z0")
    assert c.node_info("nobody") is None
    d = default_config()
    assert [n.node for n in d.all_nodes()] == ["s0", "s1", "s2", "l0", "l1", "l2"]


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (("groups = 3", "groups = 0"), "locks.groups", "must be >= 1"),
        (("groups = 3", f"groups = {LOCK_GROUPS_MAX + 1}"), "locks.groups", "must be <="),
        (("groups = 3", "groups = 'x'"), "locks.groups", "expected an integer"),
        (("keys_max = 50", "keys_max = 0"), "locks.keys_max", "must be >= 1"),
        (
            ("values_bytes_max = 100000", f"values_bytes_max = {VALUE_BYTES_MAX - 1}"),
            "locks.values_bytes_max",
            f"must be >= {VALUE_BYTES_MAX}",
        ),
        (("cleanup_tick_ms = 250", "cleanup_tick_ms = 0"), "locks.cleanup_tick_ms", ">= 1"),
        (("keys_max = 50", "keys = 50"), "locks.keys", "unknown key"),
        (('zone = "z1"', 'zone = "z 1"'), "locks.replicas[0].zone", "only letters"),
        (('node = "l1"', 'node = "l1"\nweight = 2'), "locks.replicas[1].weight", "unknown key"),
        (("port = 7102", "port = 0"), "locks.replicas[2].port", "must be >= 1"),
        (('node = "l2"\n', ""), "locks.replicas[2].node", "missing"),
        (("lease_ms = 2000", "lease_ms = 'long'"), "locks.paxos.lease_ms", "expected an integer"),
        (("lease_ms = 2000", "leese_ms = 5"), "locks.paxos.leese_ms", "unknown key"),
        (("lease_ms = 2000", "heartbeat_ms = 5000"), "locks.paxos.heartbeat_ms", "lease"),
    ],
)
def test_bad_locks_tables_are_rejected_naming_the_key(
    change: tuple[str, str], path: str, reason: str
) -> None:
    old, new = change
    assert old in LOCKS
    e = error(BASE + LOCKS.replace(old, new, 1))
    assert e.key_path == path, e
    assert reason in e.reason, e


def test_lock_replica_counts_must_be_odd_and_present() -> None:
    assert error(BASE + "[locks]\ngroups = 1\n").key_path == "locks.replicas"
    assert error(BASE + "[locks]\nreplicas = []\n").key_path == "locks.replicas"
    two = "[locks]\n[[locks.replicas]]\nnode='l0'\nport=1\n[[locks.replicas]]\nnode='l1'\nport=2\n"
    e = error(BASE + two)
    assert e.key_path == "locks.replicas" and "odd count" in e.reason
    assert error("locks = 3\n" + BASE).key_path == "locks"


def test_node_names_are_unique_across_stores_and_locks_and_ports_per_host() -> None:
    e = error(BASE + LOCKS.replace('node = "l2"', 'node = "a0"'))
    assert e.key_path == "locks.replicas[2].node" and "stores[0].replicas[0]" in e.reason
    e = error(BASE + LOCKS.replace("port = 7100", "port = 7000"))
    assert e.key_path == "locks.replicas[0].port"
    assert "127.0.0.1:7000 is already used by stores[0].replicas[0]" in e.reason
    e = error(BASE + LOCKS.replace("port = 7102", "port = 7100"))
    assert e.key_path == "locks.replicas[2].port"
    # l1 shares port 7000 with a0, on another host: allowed.
    assert loads_config(BASE + LOCKS).node_addresses()["l1"] == ("10.0.0.2", 7000)


def test_a_store_may_not_take_the_lock_services_name() -> None:
    e = error(BASE.replace('name = "a"', 'name = "locks"'))
    assert e.key_path == "stores[0].name" and "reserved for the lock service" in e.reason


def test_an_ownership_table_overrides_the_defaults() -> None:
    text = (
        BASE + "[ownership]\nlease_ms = 10000\nmargin_ms = 1000\npoll_ms = 200\n"
        "renew_ms = 4500\nweight = 3\nscheduler = true\n"
    )
    o = loads_config(text).ownership
    assert o == OwnershipConfig(
        lease_ms=10000, margin_ms=1000, poll_ms=200, renew_ms=4500, weight=3, scheduler=True
    )
    # Partial tables keep the other defaults; the renewal bound is inclusive.
    o = loads_config(BASE + "[ownership]\nrenew_ms = 1200\n").ownership
    assert (o.lease_ms, o.margin_ms, o.renew_ms) == (3000, 600, 1200)


@pytest.mark.parametrize(
    ("table", "path", "reason"),
    [
        ("lease_ms = 0", "ownership.lease_ms", "must be 1.."),
        (f"lease_ms = {LEASE_MS_MAX + 1}", "ownership.lease_ms", f"1..{LEASE_MS_MAX}"),
        ("lease_ms = 'long'", "ownership.lease_ms", "expected an integer"),
        ("margin_ms = 0", "ownership.margin_ms", "must be > 0 and < lease_ms = 3000"),
        ("margin_ms = 3000", "ownership.margin_ms", "must be > 0 and < lease_ms = 3000"),
        ("lease_ms = 500", "ownership.margin_ms", "< lease_ms = 500, got 600"),
        ("renew_ms = 0", "ownership.renew_ms", "must be > 0"),
        ("renew_ms = 1201", "ownership.renew_ms", "(lease_ms - margin_ms) / 2 = 1200, got 1201"),
        ("lease_ms = 2000", "ownership.renew_ms", "(lease_ms - margin_ms) / 2 = 700, got 1000"),
        ("poll_ms = 0", "ownership.poll_ms", "must be > 0 and < lease_ms = 3000"),
        ("poll_ms = 3000", "ownership.poll_ms", "must be > 0 and < lease_ms = 3000"),
        ("weight = 0", "ownership.weight", f"must be 1..{OWNERSHIP_WEIGHT_MAX}"),
        (f"weight = {OWNERSHIP_WEIGHT_MAX + 1}", "ownership.weight", "must be 1.."),
        ("weight = 1.5", "ownership.weight", "expected an integer"),
        ("scheduler = 1", "ownership.scheduler", "expected a boolean"),
        ("leese_ms = 1", "ownership.leese_ms", "unknown key"),
    ],
)
def test_bad_ownership_values_are_rejected_naming_the_key(
    table: str, path: str, reason: str
) -> None:
    e = error(BASE + f"[ownership]\n{table}\n")
    assert e.key_path == path, e
    assert reason in e.reason, e


def test_ownership_config_checks_its_rules_when_built_directly() -> None:
    with pytest.raises(ValueError, match="renew_ms: must be > 0 and <= "):
        OwnershipConfig(renew_ms=2000)
    with pytest.raises(ValueError, match="weight: expected an integer"):
        OwnershipConfig(weight=True)
    assert OwnershipConfig(lease_ms=4, margin_ms=1, renew_ms=1, poll_ms=3).trusted_ms == 3


def test_a_storage_reserve_below_the_minimum_is_refused() -> None:
    """Issue 13: ``reserve_bytes = 0`` turned the storage watch off, so a full map stopped
    every replica at each restart; it is refused now, like anything below 2 MiB."""
    for bad in (0, 1, STORAGE_RESERVE_MIN_BYTES - 1):
        e = error(BASE + f"[storage]\nreserve_bytes = {bad}\n")
        assert e.key_path == "storage.reserve_bytes", e
        assert f"must be at least {STORAGE_RESERVE_MIN_BYTES} (2 MiB" in str(e), e
        assert f"got {bad}" in str(e), e
    ok = loads_config(BASE + f"[storage]\nreserve_bytes = {STORAGE_RESERVE_MIN_BYTES}\n")
    assert ok.storage.reserve_bytes == STORAGE_RESERVE_MIN_BYTES == 2 * 1024 * 1024


def test_storage_table_sets_the_write_ahead_log_checkpoints() -> None:
    c = loads_config(BASE + "[storage]\ncheckpoint_batches = 1\ncheckpoint_bytes = 65536\n")
    assert (c.storage.checkpoint_batches, c.storage.checkpoint_bytes) == (1, 65536)
    for bad in ("checkpoint_batches = 0", "checkpoint_batches = 1025", "checkpoint_bytes = 0"):
        e = error(BASE + "[storage]\n" + bad + "\n")
        assert e.key_path == "storage." + bad.split()[0], (bad, e.key_path)


def test_storage_table_sizes_the_map_and_the_reserve() -> None:
    assert loads_config(BASE).storage == StorageConfig()
    c = loads_config(
        BASE + "[storage]\nmap_size_bytes = 2097152\nmap_size_max_bytes = 8388608\n"
        "reserve_bytes = 2097152\n"
    )
    assert c.storage == StorageConfig(
        map_size_bytes=2097152, map_size_max_bytes=8388608, reserve_bytes=2097152
    )
    # A big initial map raises the default maximum with it.
    big = loads_config(BASE + f"[storage]\nmap_size_bytes = {1 << 40}\n").storage
    assert big.map_size_max_bytes == 1 << 40 and big.reserve_bytes is None
    for bad, key in (
        ("map_size_bytes = 1000", "map_size_bytes"),
        ("map_size_bytes = 4194304\nmap_size_max_bytes = 2097152", "map_size_max_bytes"),
        (
            "map_size_bytes = 2097152\nmap_size_max_bytes = 4194304\nreserve_bytes = 4194304",
            "reserve_bytes",
        ),
        ("reserve_bytes = -1", "reserve_bytes"),
        # Room for the smallest reserve and as much data: 4 MiB at least.
        ("map_size_bytes = 1048576\nmap_size_max_bytes = 4194303", "map_size_max_bytes"),
        ("reserve = 5", ""),
    ):
        e = error(BASE + "[storage]\n" + bad + "\n")
        assert e.key_path.startswith("storage"), (bad, e.key_path)
        assert key in e.key_path, (bad, e.key_path)
