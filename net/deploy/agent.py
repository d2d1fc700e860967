"""What ``pxq deploy`` runs on a host, in the host's installed release: ``python -m
net.deploy.agent start|stop|status --base BASE [...] NODE...``, one JSON list on stdout (an
object per node), so that one SSH command acts on every node of the host.

The host's layout under ``BASE`` (its ``base_dir``)::

    cluster/cluster.toml     the cluster file (0600), written by ``pxq deploy up``
    cluster/tls/             the CA certificate and the host's nodes' certificates and keys
    run/NODE.pid             the node's watchdog (``NODE.pid.node``: the node process)
    logs/NODE.log            the node's stdout and stderr, and its watchdog's notes
    data/NODE/               the node's LMDB data

Supervision (``--supervisor``): ``systemd`` writes a unit per node
(``/etc/systemd/system/PREFIX-NODE.service``, ``unit_text``: ``Restart=on-failure``) and
starts it with ``systemctl enable --now``; ``watchdog`` starts ``net.deploy.watchdog``
detached with its pid file. ``auto`` (the default) takes systemd where it runs the host
(``/run/systemd/system`` exists) and the agent is root, the watchdog otherwise.

``start`` leaves a running node alone (``running``), ``stop`` a stopped one (``not
running``): both are idempotent. ``status`` also reports the release a running node runs (its
interpreter's ``venv-RELEASE``: ``pxq deploy upgrade`` skips a node already on its release).
``start --replace`` runs the nodes with ``pxq node run --replace`` (a replica that lost its
data: ``pxq deploy restart NODE --replace``; the flag is ignored once the data directory holds
data again, and the next start without it drops it). ``destroy`` stops a node as ``stop`` does, removes its systemd unit if it has one, and its
data, log and pid files (``pxq deploy destroy`` removes the rest of ``BASE``). ``stop`` sends SIGTERM (the node stops gracefully, its
watchdog with it), waits ``--timeout`` and then SIGKILLs what is left (``killed``). A pid is
signalled only after ``/proc/PID/cmdline`` shows it is still that node's watchdog or node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from net.deploy.watchdog import NODE_PID_SUFFIX

SYSTEMD_DIR: Final = Path("/etc/systemd/system")
SYSTEMD_RUNNING: Final = Path("/run/systemd/system")
STOP_TIMEOUT_S: Final = 10.0
KILL_WAIT_S: Final = 5.0
POLL_S: Final = 0.05
CLUSTER_DIR: Final = "cluster"
CONFIG_NAME: Final = "cluster.toml"


@dataclass(frozen=True, slots=True)
class Layout:
    """The paths of a host's deployment (see the module docstring)."""

    base: Path

    @property
    def config(self) -> Path:
        return self.base / CLUSTER_DIR / CONFIG_NAME

    def pidfile(self, node: str) -> Path:
        return self.base / "run" / f"{node}.pid"

    def node_pidfile(self, node: str) -> Path:
        pid = self.pidfile(node)
        return pid.with_name(pid.name + NODE_PID_SUFFIX)

    def log(self, node: str) -> Path:
        return self.base / "logs" / f"{node}.log"

    def data(self, node: str) -> Path:
        return self.base / "data" / node


def release_python() -> str:
    """This release's interpreter, its links resolved: a node keeps running the release it
    was started from when ``current`` moves on."""
    return str(Path(sys.prefix).resolve() / "bin" / "python")


def node_argv(python: str, layout: Layout, node: str, *, replace: bool = False) -> list[str]:
    """``pxq node run`` of ``node``; ``replace``: as the replacement of a replica that lost
    its data (``--replace``: it re-learns its promises from its peers before it votes)."""
    return [
        python,
        "-m",
        "pxq.cli",
        "node",
        "run",
        "--config",
        str(layout.config),
        "--node",
        node,
        "--data-dir",
        str(layout.data(node)),
        "--log-format",
        "text",
        *(["--replace"] if replace else []),
    ]


def _systemd_quote(arg: str) -> str:
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\"\\'$;"):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def unit_text(
    *, cluster: str, node: str, python: str, layout: Layout, replace: bool = False
) -> str:
    """The systemd unit of ``node``: restarted on failure (5 starts in 60 s at most, as the
    watchdog), stopped with SIGTERM (SIGKILL after 10 s), its output appended to its log."""
    argv = node_argv(python, layout, node, replace=replace)
    exec_start = " ".join(_systemd_quote(a) for a in argv)
    log = _systemd_quote(str(layout.log(node)))
    return (
        "[Unit]\n"
        f"Description=pxq node {node} of cluster {cluster}\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=60\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n"
        "RestartSec=1\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=10\n"
        "UMask=0077\n"
        f"StandardOutput=append:{log}\n"
        f"StandardError=append:{log}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def watchdog_pid(layout: Layout, node: str) -> int | None:
    """The pid of ``node``'s live watchdog; None if none runs."""
    pid = _read_pid(layout.pidfile(node))
    if pid is None:
        return None
    argv = _cmdline(pid)
    if "net.deploy.watchdog" in argv and str(layout.pidfile(node)) in argv:
        return pid
    return None


def node_pid(layout: Layout, node: str) -> int | None:
    """The pid of ``node``'s live ``pxq node run`` (as its watchdog recorded it)."""
    pid = _read_pid(layout.node_pidfile(node))
    if pid is None:
        return None
    argv = _cmdline(pid)
    if "node" in argv and "run" in argv and node in argv and str(layout.config) in argv:
        return pid
    return None


def release_of_pid(pid: int | None) -> str | None:
    """The release whose interpreter runs ``pid`` (``BASE/venv-RELEASE/bin/python``)."""
    argv = _cmdline(pid) if pid is not None else []
    if not argv:
        return None
    venv = Path(argv[0]).parent.parent.name
    return venv.removeprefix("venv-") if venv.startswith("venv-") else None


def _alive(pid: int) -> bool:
    # A zombie (exited, not reaped yet) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_S)
        left = [p for p in left if _alive(p)]
    return left


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# -- supervisors ----------------------------------------------------------------------------


def use_systemd(choice: str) -> bool:
    if choice == "auto":
        return SYSTEMD_RUNNING.is_dir() and os.geteuid() == 0
    return choice == "systemd"


def _unit(prefix: str, node: str) -> str:
    return f"{prefix}-{node}.service"


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, check=False, timeout=60
    )


def _systemd_state(prefix: str, node: str) -> tuple[bool, int | None]:
    shown = _systemctl("show", "-p", "ActiveState", "-p", "MainPID", _unit(prefix, node))
    fields = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    pid = int(fields.get("MainPID", "0") or 0)
    return fields.get("ActiveState") == "active", pid or None


def start(
    layout: Layout, node: str, *, supervisor: str, prefix: str, cluster: str, replace: bool = False
) -> dict[str, object]:
    for d in (layout.pidfile(node).parent, layout.log(node).parent, layout.data(node)):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    python = release_python()
    if use_systemd(supervisor):
        running, pid = _systemd_state(prefix, node)
        if running:
            return {"node": node, "state": "running", "pid": pid, "supervisor": "systemd"}
        unit = SYSTEMD_DIR / _unit(prefix, node)
        unit.write_text(
            unit_text(cluster=cluster, node=node, python=python, layout=layout, replace=replace)
        )
        for args in (("daemon-reload",), ("enable", "--now", _unit(prefix, node))):
            done = _systemctl(*args)
            if done.returncode != 0:
                return {"node": node, "state": "failed", "error": done.stderr.strip()[-1000:]}
        _, pid = _systemd_state(prefix, node)
        return {"node": node, "state": "started", "pid": pid, "supervisor": "systemd"}
    pid = watchdog_pid(layout, node)
    if pid is not None:
        return {
            "node": node,
            "state": "running",
            "pid": pid,
            "node_pid": node_pid(layout, node),
            "supervisor": "watchdog",
        }
    argv = [
        python,
        "-m",
        "net.deploy.watchdog",
        "--pidfile",
        str(layout.pidfile(node)),
        "--log",
        str(layout.log(node)),
        "--",
        *node_argv(python, layout, node, replace=replace),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        return {"node": node, "state": "failed", "error": done.stderr.strip()[-1000:]}
    return {
        "node": node,
        "state": "started",
        "pid": int(done.stdout.strip()),
        "supervisor": "watchdog",
    }


def stop(
    layout: Layout, node: str, *, supervisor: str, prefix: str, timeout_s: float
) -> dict[str, object]:
    if use_systemd(supervisor):
        running, pid = _systemd_state(prefix, node)
        done = _systemctl("disable", "--now", _unit(prefix, node))
        if done.returncode != 0 and running:
            return {"node": node, "outcome": "failed", "error": done.stderr.strip()[-1000:]}
        return {"node": node, "outcome": "stopped" if running else "not running", "pid": pid}
    dog, child = watchdog_pid(layout, node), node_pid(layout, node)
    pids = [p for p in (dog, child) if p is not None]
    if not pids:
        layout.pidfile(node).unlink(missing_ok=True)
        layout.node_pidfile(node).unlink(missing_ok=True)
        return {"node": node, "outcome": "not running", "pid": None}
    # The watchdog passes SIGTERM on to the node; without a watchdog, the node gets it.
    _signal(dog if dog is not None else pids[0], signal.SIGTERM)
    left = _wait_gone(pids, timeout_s)
    outcome = "stopped"
    if left:
        for p in left:
            _signal(p, signal.SIGKILL)
        outcome = "killed" if not _wait_gone(left, KILL_WAIT_S) else "survived"
    if outcome != "survived":
        layout.pidfile(node).unlink(missing_ok=True)
        layout.node_pidfile(node).unlink(missing_ok=True)
    return {"node": node, "outcome": outcome, "pid": dog if dog is not None else child}


def status(layout: Layout, node: str, *, supervisor: str, prefix: str) -> dict[str, object]:
    if use_systemd(supervisor):
        running, pid = _systemd_state(prefix, node)
        return {
            "node": node,
            "running": running,
            "pid": pid,
            "node_pid": pid,
            "supervisor": "systemd",
            "release": release_of_pid(pid) if running else None,
        }
    dog, child = watchdog_pid(layout, node), node_pid(layout, node)
    return {
        "node": node,
        "running": dog is not None and child is not None,
        "pid": dog,
        "node_pid": child,
        "supervisor": "watchdog",
        "release": release_of_pid(child),
    }


def destroy(
    layout: Layout, node: str, *, supervisor: str, prefix: str, timeout_s: float
) -> dict[str, object]:
    """Stop ``node`` (as ``stop``), then remove its unit file, data, log and pid files. A
    node that survived its SIGKILL keeps everything (``survived``)."""
    result = stop(layout, node, supervisor=supervisor, prefix=prefix, timeout_s=timeout_s)
    if result["outcome"] in ("failed", "survived"):
        return result
    unit = SYSTEMD_DIR / _unit(prefix, node)
    if unit.is_file():
        unit.unlink()
        _systemctl("daemon-reload")
    removed = [
        str(p)
        for p in (layout.data(node), layout.log(node), layout.pidfile(node))
        if p.exists() or p.is_symlink()
    ]
    shutil.rmtree(layout.data(node), ignore_errors=True)
    layout.log(node).unlink(missing_ok=True)
    layout.pidfile(node).unlink(missing_ok=True)
    layout.node_pidfile(node).unlink(missing_ok=True)
    return {**result, "removed": removed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m net.deploy.agent")
    parser.add_argument("action", choices=("start", "stop", "status", "destroy"))
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--supervisor", choices=("auto", "watchdog", "systemd"), default="auto")
    parser.add_argument("--unit-prefix", default="pxq", help="systemd units: PREFIX-NODE.service")
    parser.add_argument("--cluster", default="pxq", help="The cluster's name (unit descriptions).")
    parser.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S)
    parser.add_argument(
        "--replace", action="store_true", help="start: the nodes run with --replace"
    )
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args(argv)
    os.umask(0o077)
    layout = Layout(args.base)
    results: list[dict[str, object]] = []
    for node in args.nodes:
        if args.action == "start":
            results.append(
                start(
                    layout,
                    node,
                    supervisor=args.supervisor,
                    prefix=args.unit_prefix,
                    cluster=args.cluster,
                    replace=args.replace,
                )
            )
        elif args.action in ("stop", "destroy"):
            act = stop if args.action == "stop" else destroy
            results.append(
                act(
                    layout,
                    node,
                    supervisor=args.supervisor,
                    prefix=args.unit_prefix,
                    timeout_s=args.timeout,
                )
            )
        else:
            results.append(
                status(layout, node, supervisor=args.supervisor, prefix=args.unit_prefix)
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
