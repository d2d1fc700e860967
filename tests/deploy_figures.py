"""The figures of docs/deployment.md, measured: ``python -m tests.deploy_figures --runs 3``
(as root, with the SSH test hosts' tools; several minutes).

Each run makes a fresh room of three SSH test hosts in three zones (``net.jepsen.sshd``), and
times ``pxq deploy install`` (the wheelhouse from the cache, built before the first run) plus
``up``, then ``pxq deploy upgrade`` to a second release (a copy of this tree with ``.post1``
in its version, built before the first run too), then ``destroy --yes``. Then, in the same
session, ``pxq bench`` (enqueue, 200 in flight, 100-byte items) against the 3-host cluster
and against a local one (``pxq bench --start-cluster``, TLS on as both are, the same 2 Paxos
groups and 4 queues), alternating, ``--runs`` times each. Prints one JSON object: every
measurement and, per figure, the min and the median. Everything runs on this machine's cores:
the hosts are network namespaces, not other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from net.deploy.install import build_wheelhouse
from net.jepsen.sshd import SshHosts
from tests.deploy_room import write_cluster_file
from tests.test_deploy_cluster import bumped_source

NAMES = ["h0", "h1", "h2"]
ROOT = Path(__file__).resolve().parent.parent


def pxq(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pxq.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise SystemExit(f"pxq {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
    return done


def timed(*args: str) -> float:
    started = time.monotonic()
    pxq(*args)
    return time.monotonic() - started


def bench(*args: str, duration_s: float) -> float:
    """Items per second acknowledged in the measured window (the run's summary line)."""
    done = pxq(
        "bench", *args, "--inflight", "200", "--payload-bytes", "100",
        "--duration-s", str(duration_s), "--no-progress",
    )  # fmt: skip
    summaries = [json.loads(x) for x in done.stdout.splitlines() if '"summary"' in x]
    return float(summaries[-1]["items_s"])


def stats(values: list[float]) -> dict[str, object]:
    return {
        "runs": [round(v, 1) for v in values],
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy_figures")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    found: dict[str, list[float]] = {"deploy_s": [], "upgrade_s": [], "bench_3_hosts": []}
    found["bench_local"] = []
    with tempfile.TemporaryDirectory(prefix="pxq-figures-") as tmp:
        work = Path(tmp)
        cache = work / "wheels"
        build_wheelhouse(cache)
        source = bumped_source(work / "bumped")
        build_wheelhouse(cache, source)
        for run in range(args.runs):
            ssh = SshHosts.up(NAMES, work / f"room{run}")
            try:
                path = write_cluster_file(work / f"c{run}", ssh, NAMES, metrics=True)
                common = [str(path), "--known-hosts", str(ssh.known_hosts)]
                found["deploy_s"].append(
                    timed("deploy", "install", *common, "--wheel-cache", str(cache))
                    + timed("deploy", "up", *common)
                )
                found["bench_3_hosts"].append(
                    bench("--config", str(path), duration_s=args.duration_s)
                )
                local = ["--start-cluster", "--groups", "2", "--queues-per-group", "2"]
                found["bench_local"].append(bench(*local, duration_s=args.duration_s))
                upgrade = ["--wheel-cache", str(cache), "--source", str(source)]
                found["upgrade_s"].append(timed("deploy", "upgrade", *common, *upgrade))
                pxq("deploy", "destroy", *common, "--yes")
            finally:
                ssh.teardown()
    doc = {
        "cpus": os.cpu_count(),
        "load1_at_end": os.getloadavg()[0],
        **{k: stats(v) for k, v in found.items()},
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
