"""Cluster files for the SSH test hosts (``tests/sshd_hosts.py``), shared by the
``pxq deploy`` tests: ``write_cluster_file`` places a store of three replicas and a lock
service of three replicas on a room's hosts, one host per zone, logging in with the room's
key and running this interpreter on the hosts."""

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
    overrides: dict[str, dict[str, object]] | None = None,
) -> str:
    """Hosts ``names`` (zone ``z<i>``, base directory the room's), replicas ``s<i>`` and
    ``l<i>`` on host ``names[i]``; ``overrides[name]`` changes fields of a host's entry."""
    lines = [
        "[cluster]",
        'name = "deploytest"',
        f'id = "{cluster_id}"',
        "",
        "[tls]" if tls else "[tls]\nenabled = false",
        "",
    ]
    for i, name in enumerate(names):
        host = ssh.host(name)
        fields: dict[str, object] = {
            "name": name,
            "address": host.address,
            "zone": f"z{i}",
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
    lines += ["[[stores]]", 'name = "store0"', "groups = 2", ""]
    for i, name in enumerate(names):
        lines += ["[[stores.replicas]]", f'node = "s{i}"', f'on = "{name}"']
        lines += [f"port = {STORE_PORT}", ""]
    lines += ["[locks]", "groups = 1", ""]
    for i, name in enumerate(names):
        lines += ["[[locks.replicas]]", f'node = "l{i}"', f'on = "{name}"']
        lines += [f"port = {LOCK_PORT}", ""]
    lines += [
        "[[topics]]",
        'name = "events"',
        "queues = 4",
        "",
        "[[topics.consumer_groups]]",
        'name = "default"',
        "",
    ]
    return "\n".join(lines)


def write_cluster_file(directory: Path, ssh: SshHosts, names: list[str], **kwargs: object) -> Path:
    """``cluster_toml`` written to ``directory/cluster.toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.toml"
    path.write_text(cluster_toml(ssh, names, **kwargs))  # type: ignore[arg-type]
    return path
