"""``pxq cluster up`` with TLS, ``pxq tls issue`` and ``--identity``, as real processes.

Behaviours checked: ``up`` of a cluster file with ``[tls]`` creates the CA and the
certificates (directory 0700, files 0600) and the admin identity produces, consumes and sees
``status`` through the CLI with no extra step; ``pxq tls issue`` adds a client certificate;
that principal, without permissions, is refused by ``produce`` and ``consume`` with the
missing permission named (exit 1); ``--no-tls`` writes the default file with TLS off and
refuses a file that has TLS on; a file with TLS off says so at ``up``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from net.cluster.processes import ClusterHome, prepare_config
from pxq.config import load_config
from tests.test_cli_cluster import CMD_TIMEOUT_S, ROOT, assert_private, pxq, workdir
from tests.test_net_cluster import cluster_toml, free_ports

__all__ = ["workdir"]  # the fixture, shared with test_cli_cluster


def test_up_creates_the_tls_material_and_the_cli_works_with_no_extra_step(workdir: Path) -> None:
    text = cluster_toml(free_ports(3)) + '\n[tls]\n\n[[principals]]\nname = "reader"\n'
    (workdir / "cluster.toml").write_text(text, encoding="utf-8")
    cfg = ("--config", "cluster.toml")
    up = pxq("cluster", "up", *cfg, "--timeout", "30", cwd=workdir)
    assert up.returncode == 0, up.stderr + up.stdout
    assert "created the cluster's TLS material" in up.stdout
    tls_dir = workdir / "tls"
    assert_private(tls_dir)
    for name in ("ca.pem", "ca.key", "node-s0.pem", "node-s2.key", "client-admin.pem"):
        assert (tls_dir / name).is_file(), name
    status = pxq("cluster", "status", *cfg, cwd=workdir)
    assert status.returncode == 0, status.stderr + status.stdout

    produced = subprocess_input(workdir, "a\nb\n", "produce", *cfg, "--topic", "events")
    assert produced.returncode == 0, produced.stderr
    assert len(produced.stdout.splitlines()) == 2
    consumed = pxq("consume", *cfg, "--group", "default", "--count", "2", cwd=workdir)
    assert consumed.returncode == 0, consumed.stderr
    # Split on "\n" only: the line separator consume writes.
    lines = consumed.stdout.removesuffix("\n").split("\n")
    payloads = sorted(line.rsplit("\t", 1)[-1] for line in lines)
    assert payloads == ["a", "b"], consumed.stdout + consumed.stderr

    issued = pxq("tls", "issue", "reader", *cfg, cwd=workdir)
    assert issued.returncode == 0, issued.stderr
    assert_private(tls_dir)
    denied = subprocess_input(
        workdir, "c\n", "--identity", "reader", "produce", *cfg, "--topic", "events"
    )
    assert denied.returncode == 1
    assert "permission denied: client:reader lacks produce:events" in denied.stderr
    denied = pxq(
        "--identity", "reader", "consume", *cfg, "--group", "default", "--timeout", "10",
        cwd=workdir,
    )  # fmt: skip
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert "permission denied" in denied.stderr and "consume:events/default" in denied.stderr
    unknown = pxq("--identity", "nobody", "produce", *cfg, "--topic", "events", cwd=workdir)
    assert unknown.returncode == 2 and "client-nobody.pem" in unknown.stderr
    pxq("cluster", "down", cwd=workdir)


def test_no_tls_writes_the_default_file_with_tls_off_and_refuses_a_tls_file(
    workdir: Path,
) -> None:
    home = ClusterHome(workdir / "home")
    path, wrote = prepare_config(home, None, tls=False)
    assert wrote and not load_config(path).tls.enabled
    home2 = ClusterHome(workdir / "home2")
    path, _ = prepare_config(home2, None)
    assert load_config(path).tls.enabled  # the embedded default has TLS on
    assert load_config(path).tls.dir == str(home2.root.absolute() / "tls")
    (workdir / "tls.toml").write_text(cluster_toml(free_ports(3)) + "\n[tls]\n", encoding="utf-8")
    refused = pxq("cluster", "up", "--config", "tls.toml", "--no-tls", cwd=workdir)
    assert refused.returncode == 2
    assert "has TLS on" in refused.stderr
    (workdir / "plain.toml").write_text(
        cluster_toml(free_ports(3)) + "\n[tls]\nenabled = false\n", encoding="utf-8"
    )
    up = pxq("cluster", "up", "--config", "plain.toml", "--no-tls", cwd=workdir)
    assert up.returncode == 0, up.stderr
    assert "TLS is off" in up.stdout
    assert not (workdir / "tls").exists()
    pxq("cluster", "down", cwd=workdir)


def subprocess_input(cwd: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``pxq ARGS`` with ``stdin`` as its input."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )
