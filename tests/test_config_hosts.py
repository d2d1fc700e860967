"""The deployment inventory of the cluster file: ``[[hosts]]`` and their validation, replicas
placed on hosts with ``on`` (address and zone taken from the host), the zone rule (no zone holds
a majority of a replica set unless ``allow_zone_majority``), the lookups deploy uses
(``hosts``, ``host``, ``host_of``, ``nodes_on``, ``zones``), files without hosts unchanged, and
a routing fingerprint that hosts do not touch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pxq.config import (
    ConfigError,
    HostConfig,
    ReplicaConfig,
    default_config,
    load_config,
    loads_config,
    zone_majority,
)
from pxq.config.identity import config_fingerprint

Hosts = list[tuple[str, str, str]]
"""(name, address, zone) of each host."""
Replicas = list[tuple[str, str, int]]
"""(node, host name, port) of each replica."""

THREE_HOSTS: Hosts = [
    ("h0", "10.231.0.10", "a"),
    ("h1", "10.231.0.11", "b"),
    ("h2", "10.231.0.12", "c"),
]
THREE_STORE: Replicas = [("s0", "h0", 7101), ("s1", "h1", 7101), ("s2", "h2", 7101)]
THREE_LOCKS: Replicas = [("l0", "h0", 7201), ("l1", "h1", 7201), ("l2", "h2", 7201)]


def cluster_file(
    hosts: Hosts,
    stores: list[Replicas],
    locks: Replicas | None = None,
    *,
    host_extra: str = "",
    replica_extra: str = "",
    store_extra: str = "",
    locks_extra: str = "",
) -> str:
    """A cluster file with these hosts, stores (named store0, store1, ...) and lock replicas;
    ``*_extra`` lines go into the first host, the first replica, every store, the locks."""
    lines = ['[cluster]\nname = "prod"\n']
    for i, (name, address, zone) in enumerate(hosts):
        lines.append(f'[[hosts]]\nname = "{name}"\naddress = "{address}"\nzone = "{zone}"\n')
        if i == 0:
            lines.append(host_extra)
    first = True
    for i, replicas in enumerate(stores):
        lines.append(f'[[stores]]\nname = "store{i}"\ngroups = 2\n{store_extra}')
        for node, on, port in replicas:
            lines.append(f'[[stores.replicas]]\nnode = "{node}"\non = "{on}"\nport = {port}\n')
            if first:
                lines.append(replica_extra)
                first = False
    if locks is not None:
        lines.append(f"[locks]\n{locks_extra}")
        for node, on, port in locks:
            lines.append(f'[[locks.replicas]]\nnode = "{node}"\non = "{on}"\nport = {port}\n')
    lines.append('[[topics]]\nname = "events"\nqueues = 8\n')
    return "\n".join(lines)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_config(text, file="c.toml")
    return info.value


# -- good inventories ---------------------------------------------------------------------------


def test_three_hosts_in_three_zones_run_a_store_and_the_lock_service() -> None:
    c = loads_config(cluster_file(THREE_HOSTS, [THREE_STORE], THREE_LOCKS))
    assert c.hosts == (
        HostConfig(name="h0", address="10.231.0.10", zone="a"),
        HostConfig(name="h1", address="10.231.0.11", zone="b"),
        HostConfig(name="h2", address="10.231.0.12", zone="c"),
    )
    h0 = c.hosts[0]
    assert (h0.ssh_user, h0.ssh_port, h0.ssh_key, h0.base_dir, h0.python) == (
        "root",
        22,
        None,
        "/opt/pxq",
        "python3",
    )
    assert [(n.node, n.role, n.host, n.port, n.zone, n.on) for n in c.all_nodes()] == [
        ("s0", "store", "10.231.0.10", 7101, "a", "h0"),
        ("s1", "store", "10.231.0.11", 7101, "b", "h1"),
        ("s2", "store", "10.231.0.12", 7101, "c", "h2"),
        ("l0", "lock", "10.231.0.10", 7201, "a", "h0"),
        ("l1", "lock", "10.231.0.11", 7201, "b", "h1"),
        ("l2", "lock", "10.231.0.12", 7201, "c", "h2"),
    ]
    assert c.node_addresses()["s1"] == ("10.231.0.11", 7101)
    assert c.host_of("l2") == c.hosts[2] and c.host("h1") == c.hosts[1]
    assert [n.node for n in c.nodes_on("h1")] == ["s1", "l1"]
    assert c.zones() == ("a", "b", "c")
    assert not c.stores[0].allow_zone_majority
    assert c.locks is not None and not c.locks.allow_zone_majority


def test_six_hosts_run_two_stores_and_a_spare_host_runs_nothing() -> None:
    hosts = [(f"h{i}", f"10.231.0.{10 + i}", "abc"[i % 3]) for i in range(6)]
    hosts.append(("spare", "spare.example.com", "a"))
    store0 = [("s0", "h0", 7101), ("s1", "h1", 7101), ("s2", "h2", 7101)]
    store1 = [("s3", "h3", 7101), ("s4", "h4", 7101), ("s5", "h5", 7101)]
    locks = [("l0", "h0", 7201), ("l1", "h4", 7201), ("l2", "h5", 7201)]
    c = loads_config(cluster_file(hosts, [store0, store1], locks))
    assert [s.nodes for s in c.stores] == [("s0", "s1", "s2"), ("s3", "s4", "s5")]
    assert [[n.node for n in c.nodes_on(h.name)] for h in c.hosts] == [
        ["s0", "l0"],
        ["s1"],
        ["s2"],
        ["s3"],
        ["s4", "l1"],
        ["s5", "l2"],
        [],
    ]
    assert c.host_of("s4") == c.host("h4") and c.host("spare").address == "spare.example.com"
    # Every node's host lists it: the placement is one mapping seen from both sides.
    assert all(info in c.nodes_on(info.on or "") for info in c.all_nodes())


def test_every_host_field_is_read() -> None:
    extra = (
        'ssh_user = "deploy"\nssh_port = 2222\nssh_key = "/keys/id_ed25519"\n'
        'base_dir = "/srv/pxq-1.0"\npython = "/usr/bin/python3.11"\n'
    )
    c = loads_config(cluster_file(THREE_HOSTS, [THREE_STORE], host_extra=extra))
    assert c.hosts[0] == HostConfig(
        name="h0",
        address="10.231.0.10",
        zone="a",
        ssh_user="deploy",
        ssh_port=2222,
        ssh_key="/keys/id_ed25519",
        base_dir="/srv/pxq-1.0",
        python="/usr/bin/python3.11",
    )
    named = cluster_file(THREE_HOSTS, [THREE_STORE], host_extra='python = "python3.12"\n')
    assert loads_config(named).hosts[0].python == "python3.12"


def test_addresses_may_be_ipv6_or_dns_names_and_a_replica_may_repeat_its_hosts() -> None:
    hosts = [("h0", "2001:db8::10", "a"), ("h1", "node1.example.com", "b"), ("h2", "h2", "c")]
    # The same address and zone as the host, spelt out (IPv6 in another spelling): allowed.
    repeat = 'host = "2001:DB8:0::10"\nzone = "a"\n'
    c = loads_config(cluster_file(hosts, [THREE_STORE], replica_extra=repeat))
    assert [r.host for r in c.stores[0].replicas] == ["2001:db8::10", "node1.example.com", "h2"]
    assert c.stores[0].replicas[0].zone == "a"


def test_allow_zone_majority_accepts_a_single_zone_deployment() -> None:
    one_zone = [(name, address, "a") for name, address, _ in THREE_HOSTS]
    allow = "allow_zone_majority = true\n"
    c = loads_config(
        cluster_file(one_zone, [THREE_STORE], THREE_LOCKS, store_extra=allow, locks_extra=allow)
    )
    assert c.stores[0].allow_zone_majority
    assert c.locks is not None and c.locks.allow_zone_majority
    assert c.zones() == ("a",)
    # Three replicas on one host: a test deployment, accepted only with the key.
    on_h0 = [("s0", "h0", 7101), ("s1", "h0", 7102), ("s2", "h0", 7103)]
    assert loads_config(cluster_file(THREE_HOSTS, [on_h0], store_extra=allow)).nodes_on("h0")


def test_five_replicas_over_three_zones_pass_and_a_lone_replica_needs_the_key() -> None:
    hosts = [(f"h{i}", f"10.231.0.{10 + i}", "aabbc"[i]) for i in range(5)]
    five = [(f"s{i}", f"h{i}", 7101) for i in range(5)]
    assert len(loads_config(cluster_file(hosts, [five])).stores[0].replicas) == 5
    lone = [("s0", "h0", 7101)]
    e = error(cluster_file(hosts, [lone]))
    assert e.key_path == "stores[0].replicas" and "1 of its 1 replicas in zone 'a'" in e.reason
    allow = "allow_zone_majority = true\n"
    assert loads_config(cluster_file(hosts, [lone], store_extra=allow)).stores[0].nodes == ("s0",)


def test_zone_majority_finds_the_zone_holding_a_majority() -> None:
    def replicas(zones: str) -> tuple[ReplicaConfig, ...]:
        return tuple(ReplicaConfig(node=f"n{i}", port=1, zone=z) for i, z in enumerate(zones))

    assert zone_majority(replicas("abc")) is None
    assert zone_majority(replicas("aabbc")) is None
    assert zone_majority(replicas("aba")) == ("a", ("n0", "n2"))
    assert zone_majority(replicas("cabcc")) == ("c", ("n0", "n3", "n4"))
    assert zone_majority(replicas("a")) == ("a", ("n0",))


# -- files without hosts --------------------------------------------------------------------------


def test_a_file_without_hosts_places_nothing() -> None:
    c = default_config()
    assert c.hosts == () and c.zones() == ()
    assert all(info.on is None for info in c.all_nodes())
    assert all(r.on is None for s in c.stores for r in s.replicas)
    assert c.host_of("s0") is None
    with pytest.raises(KeyError, match="no host named 'h0'"):
        c.nodes_on("h0")
    with pytest.raises(KeyError, match="no node named 'x9'"):
        c.host_of("x9")


def test_a_file_without_hosts_keeps_its_zones_unchecked() -> None:
    """Without hosts a zone is a label (the default puts every replica in z0): no zone rule."""
    text = '[cluster]\nname = "c"\n[[stores]]\nname = "a"\ngroups = 1\n'
    for i, zone in enumerate("aab"):
        text += f'[[stores.replicas]]\nnode = "a{i}"\nport = {7000 + i}\nzone = "{zone}"\n'
    assert [r.zone for r in loads_config(text).stores[0].replicas] == ["a", "a", "b"]
    assert loads_config(text).zones() == ()


def test_on_needs_hosts() -> None:
    text = '[cluster]\nname = "c"\n[[stores]]\nname = "a"\ngroups = 1\n'
    text += '[[stores.replicas]]\nnode = "a0"\non = "h0"\nport = 7000\n'
    e = error(text)
    assert (e.key_path, e.reason) == (
        "stores[0].replicas[0].on",
        "names a host, but the file has no [[hosts]]",
    )


# -- errors ---------------------------------------------------------------------------------------


def good(**extra: str) -> str:
    return cluster_file(THREE_HOSTS, [THREE_STORE], THREE_LOCKS, **extra)


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("ssh_port = 0\n", "hosts[0].ssh_port", "must be >= 1, got 0"),
        ("ssh_port = 65536\n", "hosts[0].ssh_port", "must be <= 65535, got 65536"),
        ('ssh_port = "22"\n', "hosts[0].ssh_port", "expected an integer, got a string"),
        ('ssh_user = "1root"\n', "hosts[0].ssh_user", "expected a user name"),
        ('ssh_user = "a b"\n', "hosts[0].ssh_user", "expected a user name"),
        ('ssh_key = ""\n', "hosts[0].ssh_key", "must not be empty"),
        ('base_dir = "opt/pxq"\n', "hosts[0].base_dir", "expected an absolute path"),
        ('base_dir = "/"\n', "hosts[0].base_dir", "expected an absolute path"),
        ('base_dir = "/opt/../etc"\n', "hosts[0].base_dir", "no '.' or '..' segment"),
        ('base_dir = "/opt/pxq/"\n', "hosts[0].base_dir", "no trailing '/'"),
        ('base_dir = "/opt//pxq"\n', "hosts[0].base_dir", "expected an absolute path"),
        ('base_dir = "/opt/p q"\n', "hosts[0].base_dir", "expected an absolute path"),
        ('python = "python3 -I"\n', "hosts[0].python", "expected a command name"),
        ('python = "bin/python3"\n', "hosts[0].python", "or an absolute path"),
        ('python = "/"\n', "hosts[0].python", "or an absolute path"),
        ('user = "root"\n', "hosts[0].user", "unknown key (allowed: name, address, zone,"),
    ],
)
def test_bad_host_fields_are_named(extra: str, key: str, reason: str) -> None:
    e = error(good(host_extra=extra))
    assert e.key_path == key and reason in e.reason, e


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.231.0.10:22", "expected an IPv4 or IPv6 address or a DNS name (no port"),
        ("[2001:db8::1]", "expected an IPv4 or IPv6 address or a DNS name"),
        ("10.231.0.300", "expected an IPv4 or IPv6 address or a DNS name"),
        ("under_score.example.com", "expected an IPv4 or IPv6 address or a DNS name"),
        ("-bad.example.com", "expected an IPv4 or IPv6 address or a DNS name"),
        ("a..b", "expected an IPv4 or IPv6 address or a DNS name"),
        ("x" * 64 + ".com", "expected an IPv4 or IPv6 address or a DNS name"),
        ("0.0.0.0", "'0.0.0.0' is no address to connect to: give the host's own"),
        ("::", "'::' is no address to connect to"),
        ("", "must not be empty"),
    ],
)
def test_bad_host_addresses_are_refused(address: str, reason: str) -> None:
    hosts = [("h0", address, "a"), *THREE_HOSTS[1:]]
    e = error(cluster_file(hosts, [THREE_STORE]))
    assert e.key_path == "hosts[0].address" and reason in e.reason, e


def test_a_host_needs_a_name_an_address_and_a_zone() -> None:
    text = good()
    for key in ("name", "address", "zone"):
        line = {"name": 'name = "h1"\n', "address": 'address = "10.231.0.11"\n'}.get(
            key, 'zone = "b"\n'
        )
        e = error(text.replace(line, "", 1))
        assert (e.key_path, e.reason) == (f"hosts[1].{key}", "missing")


def test_host_names_and_addresses_are_unique() -> None:
    e = error(good().replace('name = "h2"', 'name = "h0"', 1))
    assert (e.key_path, e.reason) == (
        "hosts[2].name",
        "duplicate host name 'h0' (also hosts[0])",
    )
    hosts = [("h0", "2001:db8::10", "a"), ("h1", "2001:DB8::0:10", "b"), THREE_HOSTS[2]]
    e = error(cluster_file(hosts, [THREE_STORE]))
    assert (e.key_path, e.reason) == (
        "hosts[1].address",
        "'2001:DB8::0:10' is already the address of hosts[0] ('h0')",
    )
    e = error(cluster_file([("h0", "n.example.com", "a"), ("h1", "N.Example.com", "b")], []))
    assert e.key_path == "hosts[1].address"


def test_an_empty_hosts_array_is_refused() -> None:
    text = 'hosts = []\n[cluster]\nname = "c"\n[[stores]]\nname = "a"\ngroups = 1\n'
    e = error(text + '[[stores.replicas]]\nnode = "a0"\nport = 7000\n')
    assert (e.key_path, e.reason) == (
        "hosts",
        "empty (leave it out for a file without hosts)",
    )


def test_a_replica_names_a_known_host() -> None:
    e = error(good().replace('on = "h1"', 'on = "h9"', 1))
    assert (e.key_path, e.reason) == (
        "stores[0].replicas[1].on",
        "unknown host 'h9' (hosts: h0, h1, h2)",
    )
    many = [(f"h{i}", f"10.231.0.{10 + i}", "abc"[i % 3]) for i in range(10)]
    e = error(cluster_file(many, [[("s0", "h0", 1), ("s1", "h1", 1), ("s2", "x", 1)]]))
    assert e.reason == "unknown host 'x' (hosts: h0, h1, h2, h3, h4, h5, h6, h7 and 2 more)"


def test_with_hosts_every_replica_names_its_host() -> None:
    e = error(good().replace('on = "h1"\nport = 7201', "port = 7201"))
    assert (e.key_path, e.reason) == (
        "locks.replicas[1].on",
        "missing: in a file with [[hosts]], every replica names its host",
    )


def test_a_replica_may_not_contradict_its_hosts_address_or_zone() -> None:
    e = error(good(replica_extra='host = "10.231.0.99"\n'))
    assert (e.key_path, e.reason) == (
        "stores[0].replicas[0].host",
        "'10.231.0.99' contradicts the address of host 'h0', '10.231.0.10' (a replica listens "
        "on its host's address: leave host out)",
    )
    e = error(good(replica_extra='zone = "b"\n'))
    assert (e.key_path, e.reason) == (
        "stores[0].replicas[0].zone",
        "'b' contradicts the zone of host 'h0', 'a' (leave zone out)",
    )


def test_two_replicas_on_one_host_need_two_ports() -> None:
    locks = [("l0", "h0", 7101), ("l1", "h1", 7201), ("l2", "h2", 7201)]
    e = error(cluster_file(THREE_HOSTS, [THREE_STORE], locks))
    assert (e.key_path, e.reason) == (
        "locks.replicas[0].port",
        "10.231.0.10:7101 is already used by stores[0].replicas[0]",
    )
    hosts = [("h0", "2001:db8::10", "a"), *THREE_HOSTS[1:]]
    e = error(cluster_file(hosts, [THREE_STORE], locks))
    assert e.reason == "[2001:db8::10]:7101 is already used by stores[0].replicas[0]"


def test_a_replica_port_may_not_be_its_hosts_ssh_port() -> None:
    e = error(good(host_extra="ssh_port = 7101\n"))
    assert (e.key_path, e.reason) == (
        "stores[0].replicas[0].port",
        "10.231.0.10:7101 is already used by the SSH server of hosts[0] ('h0')",
    )
    # Metrics endpoints too, where metrics are on.
    text = good() + "\n[metrics]\nenabled = true\n"
    e = error(text.replace('zone = "a"\n', 'zone = "a"\nssh_port = 8101\n', 1))
    assert (e.key_path, e.reason) == (
        "metrics.port_offset",
        "the metrics port of 's0', 10.231.0.10:8101, is already used by the SSH server of "
        "hosts[0] ('h0')",
    )


def test_a_store_with_a_majority_in_one_zone_is_refused() -> None:
    hosts = [*THREE_HOSTS, ("h3", "10.231.0.13", "a")]
    store = [("s0", "h0", 7101), ("s1", "h1", 7101), ("s2", "h3", 7101)]
    e = error(cluster_file(hosts, [THREE_STORE, store]))
    assert (e.key_path, e.reason) == (
        "stores[1].replicas",
        "store 'store1' puts 2 of its 3 replicas in zone 'a' (s0 on h0, s2 on h3): losing that "
        "zone would lose its majority; spread them over more zones, or accept it with "
        "allow_zone_majority = true",
    )


def test_a_lock_service_with_a_majority_in_one_zone_is_refused() -> None:
    locks = [("l0", "h0", 7201), ("l1", "h1", 7201), ("l2", "h1", 7202)]
    e = error(cluster_file(THREE_HOSTS, [THREE_STORE], locks))
    assert (e.key_path, e.reason) == (
        "locks.replicas",
        "the lock service puts 2 of its 3 replicas in zone 'b' (l1 on h1, l2 on h1): losing "
        "that zone would lose its majority; spread them over more zones, or accept it with "
        "allow_zone_majority = true",
    )
    e = error(good(locks_extra='allow_zone_majority = "yes"\n'))
    assert (e.key_path, e.reason) == (
        "locks.allow_zone_majority",
        "expected a boolean, got a string",
    )


# -- paths and identity ---------------------------------------------------------------------------


def test_load_config_makes_ssh_keys_paths_of_the_reading_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    hosts = [*THREE_HOSTS, ("h3", "10.231.0.13", "a"), ("h4", "10.231.0.14", "b")]
    text = cluster_file(hosts, [THREE_STORE], host_extra='ssh_key = "keys/deploy"\n')
    text = text.replace('zone = "b"\n', 'zone = "b"\nssh_key = "~/.ssh/id_ed25519"\n', 1)
    text = text.replace('zone = "c"\n', 'zone = "c"\nssh_key = "/etc/pxq/key"\n', 1)
    path = tmp_path / "conf" / "cluster.toml"
    path.parent.mkdir()
    path.write_text(text)
    keys = [h.ssh_key for h in load_config(path).hosts]
    assert keys == [
        str(tmp_path / "conf" / "keys" / "deploy"),
        str(tmp_path / "home" / ".ssh" / "id_ed25519"),
        "/etc/pxq/key",
        None,
        None,
    ]
    # loads_config has no file to be relative to: the text as written.
    assert loads_config(text).hosts[0].ssh_key == "keys/deploy"


DEFAULT_FINGERPRINT = "72f6a3a34ce1da4d"
"""The routing fingerprint of the embedded default before hosts existed: files without hosts
keep theirs, so clients and nodes of different versions still agree."""


def test_hosts_do_not_change_the_routing_fingerprint() -> None:
    assert config_fingerprint(default_config()) == DEFAULT_FINGERPRINT
    placed = loads_config(good())
    # The same cluster written without hosts: replicas at the hosts' addresses.
    addresses = {name: address for name, address, _ in THREE_HOSTS}
    unplaced_text = re.sub(
        r'on = "(h\d)"', lambda m: f'host = "{addresses[m[1]]}"', good().split("[[stores]]", 1)[1]
    )
    unplaced = loads_config('[cluster]\nname = "prod"\n[[stores]]' + unplaced_text)
    assert unplaced.hosts == () and unplaced.node_addresses() == placed.node_addresses()
    assert config_fingerprint(placed) == config_fingerprint(unplaced)


def test_the_examples_of_the_configuration_doc_load() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    section = doc.split("## Hosts and zones", 1)[1].split("\n## ", 1)[0]
    three, six = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    c = loads_config(three, file="three.toml")
    assert c.zones() == ("a", "b", "c") and [len(c.nodes_on(h.name)) for h in c.hosts] == [2, 2, 2]
    header, topics = three.split("[[hosts]]", 1)[0], three[three.index("[[topics]]") :]
    c = loads_config(header + six + topics, file="six.toml")
    assert [s.nodes for s in c.stores] == [("s0", "s1", "s2"), ("s3", "s4", "s5")]
    assert [len(c.nodes_on(h.name)) for h in c.hosts] == [2, 1, 1, 2, 2, 1]
