"""The embedded default cluster file (``pxq cluster up`` without ``--config`` writes it, and
``default_config()`` is its configuration): one store of three replicas and a lock service of
three replicas on 127.0.0.1, with TLS on (``up`` creates the CA and the certificates in the
home's ``tls`` directory; ``default_toml(tls=False)`` is the file ``up --no-tls`` writes)."""

from __future__ import annotations

from typing import Final

from pxq.config.model import ClusterConfig
from pxq.config.parser import loads_config

DEFAULT_TOML: Final = """\
# The embedded default: one store of three replicas and a lock service of three replicas
# on 127.0.0.1 (pxq cluster up).
[cluster]
name = "local"

# Mutual TLS with the cluster's own CA on every connection: pxq cluster up creates the CA and
# the certificates in tls/ beside this file (docs/security.md). enabled = false turns TLS
# off (benchmarks): then anyone who can reach a port can act as a replica or client.
[tls]

[[stores]]
name = "store0"
groups = 4

[[stores.replicas]]
node = "s0"
port = 7101

[[stores.replicas]]
node = "s1"
port = 7102

[[stores.replicas]]
node = "s2"
port = 7103

# The lock service: three replicas, one Paxos group (consumers take queues through it).
[locks]
groups = 1

[[locks.replicas]]
node = "l0"
port = 7201

[[locks.replicas]]
node = "l1"
port = 7202

[[locks.replicas]]
node = "l2"
port = 7203

[[topics]]
name = "events"
queues = 8

# Items are kept an hour after they were enqueued, consumed or not, so a group can replay
# them (pxq seek --back-ms); without a hold, an item is removed once every group passed it.
[topics.retention]
hold_ms = 3600000

# Every topic also has the reserved consumer group "pxq-health" (not declared: it may not be),
# which pxq echo consumes, so an echo never moves a user group's cursor; it holds back nothing.
[[topics.consumer_groups]]
name = "default"
retries = [{ delay_ms = 1000 }, { delay_ms = 10000 }]
"""


def default_toml(*, tls: bool = True, cluster_id: str = "") -> str:
    """The embedded default file, with TLS on, or off (``enabled = false``), and with
    ``cluster_id`` as its ``[cluster] id`` (none if empty; ``pxq cluster up`` draws one)."""
    text = DEFAULT_TOML if tls else DEFAULT_TOML.replace("[tls]\n", "[tls]\nenabled = false\n", 1)
    if cluster_id:
        text = text.replace('name = "local"\n', f'name = "local"\nid = "{cluster_id}"\n', 1)
    return text


def default_config() -> ClusterConfig:
    """A local 3-replica store on 127.0.0.1 (ports 7101-7103, 4 groups), a 3-replica lock
    service (nodes l0-l2, ports 7201-7203, 1 group), topic "events" with 8 queues, items held
    an hour (``hold_ms``) and consumer group "default"; ownership defaults; TLS on with the ``tls`` directory (relative: beside the
    file ``pxq cluster up`` writes)."""
    return loads_config(DEFAULT_TOML, file="<default>")
