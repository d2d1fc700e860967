"""The embedded default cluster file (``pxq cluster up`` without ``--config`` writes it, and
``default_config()`` is its configuration): one store of three replicas and a lock service of
three replicas on 127.0.0.1."""

from __future__ import annotations

from typing import Final

from pxq.config.model import ClusterConfig
from pxq.config.parser import loads_config

DEFAULT_TOML: Final = """\
# The embedded default: one store of three replicas and a lock service of three replicas
# on 127.0.0.1 (pxq cluster up).
[cluster]
name = "local"

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

[[topics.consumer_groups]]
name = "default"
retries = [{ delay_ms = 1000 }, { delay_ms = 10000 }]
"""


def default_config() -> ClusterConfig:
    """A local 3-replica store on 127.0.0.1 (ports 7101-7103, 4 groups), a 3-replica lock
    service (nodes l0-l2, ports 7201-7203, 1 group), topic "events" with 8 queues and consumer
    group "default"; ownership defaults."""
    return loads_config(DEFAULT_TOML, file="<default>")
