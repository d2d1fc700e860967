"""Which cluster a node or a client belongs to, and what its routing depends on.

A cluster is identified by its name and its id (``[cluster] name`` and ``[cluster] id``). The
design, stated once here (docs/operations.md, "Cluster identity"):

* **Where the id comes from.** The id is part of the cluster file: ``pxq cluster up`` draws a
  random one (``c-`` and 16 hex digits) when it writes the default file, and an operator
  writing a file by hand sets one (any id unique to that cluster). Every node of a cluster
  is started from the same file, so a brand-new cluster's nodes agree on the id without
  talking to each other, and a replacement node (``pxq node run --replace``) learns it from
  its file as well. A file without an id gives the id "" (the name alone then identifies
  the cluster: clusters built from such files with the same name cannot be told apart).
* **Stored with the data.** A node stamps the id into its data dir's marker at first start
  (``net.node.storage``); a later start with a file giving another id is refused
  (``DataDirMismatch``), so a node never serves another cluster's data.
* **Carried by every client connection.** A client's first frame (``ClientHello``,
  ``net.wire.envelope``) names the cluster and id of its file; a node of another cluster (or
  the same name with another id) refuses it naming both. Peers' ``Hello`` carries both too.
* **Routing metadata.** Where a key goes depends on the stores (names, Paxos groups, replica
  order), the topics (queue counts) and their consumer groups (subscribed queues and kinds,
  retry levels, dead letters) and the lock service (groups, replicas): ``routing_metadata``.
  Its ``fingerprint`` travels in the ``ClientHello``; a node whose own differs answers with its
  metadata, and the client refuses to route, naming what differs
  (``metadata_differences``). Everything else in the file (timeouts, limits, addresses,
  the ``[[hosts]]`` inventory with its zones and SSH details, which only the deploying
  machine uses) may differ between a client's copy and the nodes'.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from pxq.config.model import ClusterConfig

FINGERPRINT_BYTES: Final = 8
DIFFERENCES_SHOWN_MAX: Final = 8
"""Differences named in a mismatch error; the rest are counted."""

JsonValue = None | bool | int | str | list["JsonValue"] | dict[str, "JsonValue"]


def describe_cluster(name: str, cluster_id: str) -> str:
    """``cluster 'local' (id c-0123...)``, or ``(no id)``: how errors name a cluster."""
    return f"cluster {name!r} ({f'id {cluster_id}' if cluster_id else 'no id'})"


def routing_metadata(config: ClusterConfig) -> dict[str, JsonValue]:
    """What routing depends on (see the module docstring), as plain JSON-able values."""
    stores: dict[str, JsonValue] = {
        s.name: {"groups": s.groups, "replicas": list(s.nodes)} for s in config.stores
    }
    topics: dict[str, JsonValue] = {}
    for t in config.topics:
        groups: dict[str, JsonValue] = {
            g.name: {
                "queues": None if g.queues is None else list(g.queues),
                "kinds": None if g.kinds is None else list(g.kinds),
                "retry_levels": len(g.retries),
                "dead_letter": g.dead_letter,
            }
            for g in t.consumer_groups
        }
        topics[t.name] = {"queues": t.queues, "consumer_groups": groups}
    locks = config.locks
    lock_meta: JsonValue = (
        None if locks is None else {"groups": locks.groups, "replicas": list(locks.nodes)}
    )
    return {"stores": stores, "topics": topics, "locks": lock_meta}


def metadata_text(config: ClusterConfig) -> str:
    """``routing_metadata`` as canonical JSON (sorted keys, no spaces): equal metadata, equal
    text."""
    return json.dumps(routing_metadata(config), sort_keys=True, separators=(",", ":"))


def fingerprint(text: str) -> str:
    """A short digest of ``metadata_text`` (16 hex digits)."""
    return hashlib.blake2b(text.encode(), digest_size=FINGERPRINT_BYTES).hexdigest()


def config_fingerprint(config: ClusterConfig) -> str:
    return fingerprint(metadata_text(config))


def metadata_differences(ours: str, theirs: str) -> list[str]:
    """What differs between two ``metadata_text``s, one line per difference ("topics.events
    .queues: 16 in this file, 8 in the cluster"), at most ``DIFFERENCES_SHOWN_MAX`` lines and
    a count of the rest. Text that is not valid metadata JSON is one difference."""
    try:
        mine, other = json.loads(ours), json.loads(theirs)
    except ValueError:
        return ["the cluster's metadata is unreadable"]
    found: list[str] = []
    _diff("", mine, other, found)
    if len(found) > DIFFERENCES_SHOWN_MAX:
        extra = len(found) - DIFFERENCES_SHOWN_MAX
        found = [*found[:DIFFERENCES_SHOWN_MAX], f"and {extra} more"]
    return found


def _diff(path: str, mine: object, other: object, found: list[str]) -> None:
    if isinstance(mine, dict) and isinstance(other, dict):
        for key in sorted(set(mine) | set(other)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in other:
                found.append(f"{sub}: only in this file")
            elif key not in mine:
                found.append(f"{sub}: only in the cluster")
            else:
                _diff(sub, mine[key], other[key], found)
    elif mine != other:
        found.append(f"{path}: {_show(mine)} in this file, {_show(other)} in the cluster")


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return "a table"
    return json.dumps(value)
