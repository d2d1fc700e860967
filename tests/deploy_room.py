"""Cluster files for the SSH test hosts (``tests/sshd_hosts.py``), shared by the
``pxq deploy`` tests: ``write_cluster_file`` places stores of three replicas each (store k on
hosts ``3k``..``3k+2``) and a lock service of three replicas (on the first three hosts) on a
room's hosts, host i in zone ``z<i mod 3>``, logging in with the room's key and running this
interpreter on the hosts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from net.jepsen.sshd import SshHosts

STORE_PORT = 7101
LOCK_PORT = 7201


def cluster_toml(
    ssh: SshHosts,
    names: list[str],
    *,
    cluster_id: str = "c-deploytest",
    python: str = sys.executable,
    tls: bool = True,
    metrics: bool = False,
    stores: int = 1,
    queues: int = 4,
    history_topic: bool = False,
    overrides: dict[str, dict[str, object]] | None = None,
) -> str:
    """Hosts ``names`` (zone ``z<i mod 3>``, base directory the room's), store replicas
        ``s<i>`` and lock replicas ``l<i>`` (i < 3) on host ``names[i]``, ``stores`` stores
        ``store<k>`` (``3 * stores`` hosts at least); ``overrides[name]`` changes fields of a
        host's entry; ``metrics`` turns the nodes' metrics endpoints on (``pxq deploy upgrade``
        reads them); ``history_topic`` adds a topic ``history`` (queues that never held anything,
    for a Jepsen history run after other traffic)."""
    lines = [
        "[cluster]",
        'name = "deploytest"',
        f'id = "{cluster_id}"',
        "",
        "[tls]" if tls else "[tls]\nenabled = false",
        "",
        *(["[metrics]", "enabled = true", ""] if metrics else []),
    ]
    for i, name in enumerate(names):
        host = ssh.host(name)
        fields: dict[str, object] = {
            "name": name,
            "address": host.address,
            "zone": f"z{i % 3}",
            "ssh_user": ssh.user,
            "ssh_port": host.port,
            "ssh_key": str(ssh.key),
            "base_dir": str(host.base_dir),
            "python": python,
        }
        fields.update((overrides or {}).get(name, {}))
        lines.append("[[hosts]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
        lines.append("")
    for k in range(stores):
        lines += ["[[stores]]", f'name = "store{k}"', "groups = 2", ""]
        for i in range(3 * k, 3 * k + 3):
            lines += ["[[stores.replicas]]", f'node = "s{i}"', f'on = "{names[i]}"']
            lines += [f"port = {STORE_PORT}", ""]
    lines += ["[locks]", "groups = 1", ""]
    for i, name in enumerate(names[:3]):
        lines += ["[[locks.replicas]]", f'node = "l{i}"', f'on = "{name}"']
        lines += [f"port = {LOCK_PORT}", ""]
    lines += [
        "[[topics]]",
        'name = "events"',
        f"queues = {queues}",
        "",
        "[[topics.consumer_groups]]",
        'name = "default"',
        "",
    ]
    if history_topic:
        lines += ["[[topics]]", 'name = "history"', f"queues = {queues}", ""]
        lines += ["[[topics.consumer_groups]]", 'name = "default"', ""]
    return "\n".join(lines)


def write_cluster_file(directory: Path, ssh: SshHosts, names: list[str], **kwargs: object) -> Path:
    """``cluster_toml`` written to ``directory/cluster.toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.toml"
    path.write_text(cluster_toml(ssh, names, **kwargs))  # type: ignore[arg-type]
    return path
