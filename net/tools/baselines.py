"""``pxq bench --baselines``: the two same-moment baselines the pxq figures are divided by.

They run once per distinct *shape* of the invocation's enqueue runs, (calls in flight, payload
bytes), so a sweep over ``--inflight`` has C and R at every in-flight value, while a sweep over
``--groups`` or ``--inflight-batches`` (one shape) has one C and one R:

* **C**, the bare replication prototype of the research notes
  (``../shared/reference/limits/replica_round.py`` beside the repository; its driver
  ``replica_bench.py`` runs a fixed matrix, so this module drives the prototype the same way:
  two follower processes, then one leader for the duration). It is run, never copied: when the
  folder is absent (or its ``uvloop``/``lmdb``/``msgpack`` imports are missing) C is skipped
  with a note. Concurrency: ``inflight`` items in flight as ``batch = min(100, inflight)``
  items per batch and ``window = inflight / batch`` batches in flight; the prototype's payload
  is fixed at 100 bytes (``prototype_payload_bytes``; the line says so in ``note`` when the
  pxq runs of its shape carried another size). CPU: the three processes' rusage (``wait4``),
  minus a 0.01-s run's (their start-up and tear-down), as in ``anchors-quiet.md``.
* **R**, one Redis (Debian ``redis-server``: ``appendonly yes``, ``appendfsync always``,
  ``save ""``, automatic AOF rewrite off) loaded by ``redis-benchmark`` with ``XADD``, the same
  payload and ``clients`` = the calls in flight (``-c``, ``-P 1``: one command in flight per
  client, so Redis sees the concurrency pxq sees; capped by ``R_CLIENTS_MAX`` and the open-file
  limit, with a note). CPU: the server's ``/proc`` utime+stime plus the benchmark's rusage.
  Skipped with a note when ``redis-server``/``redis-benchmark`` are not installed
  (``apt-get install -y redis-server``).

Each baseline is one ``"type": "baseline"`` line carrying the ``inflight`` and
``payload_bytes`` of its shape; one ``"type": "ratios"`` line per pxq enqueue run then gives
pxq/C and pxq/R against the baselines of that run's own shape.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from net.tools.measure import Emit, Line, free_ports, loadavg, proc_cpu_s

C_BATCH_MAX: Final = 100
C_SECS_MAX: Final = 10.0
C_CALIBRATION_S: Final = 0.01
C_PAYLOAD_BYTES: Final = 100
R_CLIENTS_MAX: Final = 2_000
"""Most ``redis-benchmark`` clients (one connection each, in one process)."""
R_FDS_SPARE: Final = 64
"""Open files the client count leaves free below the soft ``RLIMIT_NOFILE``."""
R_SECS_MAX: Final = 10.0
R_PROBE_ITEMS: Final = 5_000
R_PROBE_ITEMS_PER_CLIENT: Final = 100
"""The probe sends this many items per client (up to ``R_PROBE_ITEMS``): 1 client at a slow
4-ms fsync would take 20 s for the full probe."""
R_ITEMS_MAX: Final = 2_000_000
R_PAYLOAD_MAX: Final = 120_000
"""redis-benchmark takes the payload as one argument (Linux: at most 128 KiB)."""
START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 10.0


def limits_dir() -> Path:
    """``../shared/reference/limits`` relative to the repository (``PXQ_LIMITS_DIR`` wins)."""
    override = os.environ.get("PXQ_LIMITS_DIR")
    if override:
        return Path(override)
    repo = Path(__file__).resolve().parents[2]  # net/tools/baselines.py -> the repository
    return repo.parent / "shared" / "reference" / "limits"


def _wait_rusage(proc: subprocess.Popen[Any], timeout_s: float) -> float | None:
    """Reap ``proc`` (waiting up to ``timeout_s``, then SIGKILL) and return its CPU seconds
    (user+system, from ``wait4``), so that no other child's rusage is mixed in."""
    deadline = time.monotonic() + timeout_s
    killed = False
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        if time.monotonic() >= deadline and not killed:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            killed = True
            deadline = time.monotonic() + STOP_TIMEOUT_S
        elif time.monotonic() >= deadline:  # pragma: no cover - SIGKILL always works
            return None
        time.sleep(0.01)


def _stop(proc: subprocess.Popen[Any]) -> float | None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    return _wait_rusage(proc, STOP_TIMEOUT_S)


def run_measured(cmd: Sequence[str], timeout_s: float) -> tuple[int, str, str, float]:
    """Run ``cmd`` to its end (SIGKILL after ``timeout_s``): (exit code, stdout, stderr, CPU
    seconds of that process alone, from ``wait4``). Output goes through temporary files."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        cpu = _wait_rusage(proc, timeout_s) or 0.0
        out.seek(0)
        err.seek(0)
        text_out = out.read().decode(errors="replace")
        text_err = err.read().decode(errors="replace")
    return proc.returncode if proc.returncode is not None else -9, text_out, text_err, cpu


# -- C ------------------------------------------------------------------------------------------


def c_shape(inflight: int) -> tuple[int, int]:
    """(items per batch, batches in flight) giving about ``inflight`` items in flight."""
    batch = min(C_BATCH_MAX, inflight)
    return batch, max(1, round(inflight / batch))


def _c_once(script: Path, work: Path, batch: int, window: int, secs: float) -> tuple[Line, float]:
    """One prototype run: its JSON result and the CPU seconds of its three processes."""
    followers: list[subprocess.Popen[str]] = []
    cpu = 0.0
    try:
        ports: list[str] = []
        for i in range(2):
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    "--role",
                    "follower",
                    "--db",
                    str(work / f"f{i}"),
                    "--sync",
                    "1",
                    "--lifetime",
                    str(secs + 30),
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            followers.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("PORT"):
                raise RuntimeError(f"C follower did not start: {line!r}")
            ports.append(line.split()[1])
        code, out, err, leader_cpu = run_measured(
            [
                sys.executable,
                str(script),
                "--role",
                "leader",
                "--db",
                str(work / "leader"),
                "--sync",
                "1",
                "--ports",
                *ports,
                "--batch",
                str(batch),
                "--window",
                str(window),
                "--secs",
                str(secs),
            ],
            secs + 60,
        )
        cpu += leader_cpu
        if code:
            raise RuntimeError(f"C leader failed: {err.strip()[-500:]}")
        result: Line = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in followers:
            cpu += _stop(proc) or 0.0
    return result, cpu


def baseline_c(inflight: int, payload_bytes: int, duration_s: float) -> Line:
    """The C baseline line for the shape (``inflight``, ``payload_bytes``) of pxq runs
    (``skipped`` says why when it could not run)."""
    line: Line = {
        "type": "baseline",
        "name": "C",
        "inflight": inflight,
        "payload_bytes": payload_bytes,
        "prototype_payload_bytes": C_PAYLOAD_BYTES,
    }
    if payload_bytes != C_PAYLOAD_BYTES:
        line["note"] = f"the prototype's payload is fixed at 100 B (pxq ran {payload_bytes} B)"
    script = limits_dir() / "replica_round.py"
    if not script.is_file():
        line["skipped"] = f"the replication prototype is absent ({script} not found)"
        return line
    missing = [m for m in ("uvloop", "lmdb", "msgpack") if importlib.util.find_spec(m) is None]
    if missing:
        line["skipped"] = (
            f"the prototype needs {', '.join(missing)} (pip install {' '.join(missing)})"
        )
        return line
    batch, window = c_shape(inflight)
    secs = min(C_SECS_MAX, duration_s)
    line.update({"script": str(script), "batch": batch, "window": window, "secs": secs})
    line["loadavg_before"] = loadavg()
    with tempfile.TemporaryDirectory(prefix="pxq-bench-c-") as tmp:
        work = Path(tmp)
        try:
            _, calib_cpu = _c_once(script, work, batch, window, C_CALIBRATION_S)
            result, cpu = _c_once(script, work, batch, window, secs)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            line["skipped"] = f"the prototype failed: {exc}"
            return line
    items = float(result["items_s"]) * secs
    line.update(
        {
            "items_s": round(float(result["items_s"]), 1),
            "batches_s": round(float(result["batches_s"]), 1),
            "p50_ms": round(float(result["p50_ms"]), 3),
            "p99_ms": round(float(result["p99_ms"]), 3),
            "latency_of": "batch",
            "cpu_s": round(cpu, 3),
            "cpu_s_startup": round(calib_cpu, 3),
            "cpu_us_per_item": round(max(0.0, cpu - calib_cpu) / items * 1e6, 2) if items else None,
            "loadavg_after": loadavg(),
        }
    )
    return line


# -- R ------------------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _parse_csv(text: str) -> Line:
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    header = next((r for r in rows if r and r[0] == "test"), None)
    data = [r for r in rows if r and r[0] != "test"]
    if header is None or not data:
        raise ValueError(f"unexpected redis-benchmark output: {text.strip()[:300]!r}")
    return dict(zip(header, data[-1], strict=False))


def r_clients(inflight: int) -> int:
    """``redis-benchmark`` clients matching ``inflight`` calls in flight, within
    ``R_CLIENTS_MAX`` and what the open-file limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = R_CLIENTS_MAX if soft == resource.RLIM_INFINITY else soft - R_FDS_SPARE
    return max(1, min(inflight, R_CLIENTS_MAX, room))


def _redis_bench(
    exe: str, port: int, *, clients: int, items: int, payload: str, timeout_s: float
) -> tuple[Line, float]:
    """One redis-benchmark run: its CSV figures and its own CPU seconds."""
    cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", "1"]
    cmd += ["-n", str(items), "--csv", "XADD", "qstream", "*", "payload", payload]
    code, out, err, cpu = run_measured(cmd, timeout_s)
    if code:
        raise RuntimeError(f"redis-benchmark failed ({code}): {err.strip()[-300:]}")
    return _parse_csv(out), cpu


def baseline_r(inflight: int, payload_bytes: int, duration_s: float) -> Line:
    """The R baseline line for the shape (``inflight``, ``payload_bytes``) of pxq runs:
    ``redis-benchmark`` with one client per call in flight (``skipped`` says why when it could
    not run)."""
    clients = r_clients(inflight)
    line: Line = {
        "type": "baseline",
        "name": "R",
        "inflight": inflight,
        "payload_bytes": payload_bytes,
        "clients": clients,
    }
    if clients != inflight:
        line["note"] = f"{clients} clients (the limit here), not {inflight}"
    server = shutil.which("redis-server")
    bench = shutil.which("redis-benchmark")
    if server is None or bench is None:
        line["skipped"] = (
            "redis-server/redis-benchmark not installed (apt-get install -y redis-server)"
        )
        return line
    if payload_bytes > R_PAYLOAD_MAX:
        line["skipped"] = f"payload over {R_PAYLOAD_MAX} B cannot be passed to redis-benchmark"
        return line
    payload = "x" * payload_bytes
    port = free_ports(1)[0]
    secs = min(R_SECS_MAX, duration_s)
    line.update({"secs_target": secs, "fsync": "always"})
    with tempfile.TemporaryDirectory(prefix="pxq-bench-redis-") as tmp:
        proc = subprocess.Popen(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                tmp,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--auto-aof-rewrite-percentage",
                "0",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
                str(Path(tmp) / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _redis_ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    line["skipped"] = "redis-server did not start"
                    return line
                time.sleep(0.05)
            # A short probe (also the warm-up) sizes the measured run to about ``secs``.
            probe_items = min(R_PROBE_ITEMS, R_PROBE_ITEMS_PER_CLIENT * clients)
            probe, _ = _redis_bench(
                bench, port, clients=clients, items=probe_items, payload=payload, timeout_s=60
            )
            rate = max(1.0, float(probe.get("rps", 0) or 0))
            items = int(min(R_ITEMS_MAX, max(probe_items, rate * secs)))
            line["loadavg_before"] = loadavg()
            server_cpu0 = proc_cpu_s(proc.pid) or 0.0
            t0 = time.perf_counter()
            result, client_cpu = _redis_bench(
                bench,
                port,
                clients=clients,
                items=items,
                payload=payload,
                timeout_s=max(60.0, secs * 20),
            )
            wall = time.perf_counter() - t0
            server_cpu = (proc_cpu_s(proc.pid) or 0.0) - server_cpu0
        except (RuntimeError, OSError, ValueError) as exc:
            line["skipped"] = f"the Redis run failed: {exc}"
            return line
        finally:
            _stop(proc)
    cpu = server_cpu + client_cpu
    line.update(
        {
            "items": items,
            "secs": round(wall, 3),
            "items_s": round(float(result["rps"]), 1),
            "p50_ms": float(result["p50_latency_ms"]),
            "p99_ms": float(result["p99_latency_ms"]),
            "max_ms": float(result["max_latency_ms"]),
            "cpu_s": {"server": round(server_cpu, 3), "client": round(client_cpu, 3)},
            "cpu_us_per_item": round(cpu / items * 1e6, 2),
            "cpu_us_per_item_server": round(server_cpu / items * 1e6, 2),
            "loadavg_after": loadavg(),
        }
    )
    return line


# -- both, and the ratios -----------------------------------------------------------------------


def shapes_of(summaries: Sequence[Line]) -> list[tuple[int, int]]:
    """The distinct (inflight, payload bytes) of the enqueue runs, in first-run order; with no
    enqueue run (drain, rss), the first run's shape, or the headline's (200, 100)."""
    runs = [s for s in summaries if s.get("mode") == "enqueue"] or list(summaries[:1])
    shapes = [(int(s["inflight"]), int(s["payload_bytes"])) for s in runs]
    return list(dict.fromkeys(shapes)) or [(200, 100)]


def ratios_line(summary: Line, c: Line, r: Line) -> Line:
    """pxq/C and pxq/R of one enqueue run against the baselines of its shape."""
    line: Line = {
        "type": "ratios",
        "run": summary["run"],
        "inflight": summary["inflight"],
        "payload_bytes": summary["payload_bytes"],
        "pxq_items_s": summary["items_s"],
    }
    for name, base in (("c", c), ("r", r)):
        value = base.get("items_s")
        line[f"{name}_items_s"] = value
        line[f"pxq_over_{name}"] = (
            round(float(summary["items_s"]) / float(value), 3) if value else None
        )
        line[f"{name}_cpu_us_per_item"] = base.get("cpu_us_per_item")
    line["r_clients"] = r.get("clients")
    return line


def run_baselines(
    summaries: Sequence[Line], duration_s: float, emit: Emit, note: Callable[[str], None]
) -> list[Line]:
    """C and R once per shape of the pxq runs (``shapes_of``), then one ratios line per enqueue
    run against the baselines of its own shape; returns every line emitted."""
    emitted: list[Line] = []
    by_shape: dict[tuple[int, int], tuple[Line, Line]] = {}
    for inflight, payload in shapes_of(summaries):
        note(f"baseline C: replication prototype, {inflight} items in flight")
        c = baseline_c(inflight, payload, duration_s)
        emit(c)
        if "skipped" in c:
            note(f"baseline C skipped: {c['skipped']}")
        clients = r_clients(inflight)
        note(f"baseline R: redis-server AOF always, XADD {payload} B, {clients} clients")
        r = baseline_r(inflight, payload, duration_s)
        emit(r)
        if "skipped" in r:
            note(f"baseline R skipped: {r['skipped']}")
        by_shape[(inflight, payload)] = (c, r)
        emitted += [c, r]
    for s in summaries:
        if s.get("mode") != "enqueue":
            continue
        c, r = by_shape[(int(s["inflight"]), int(s["payload_bytes"]))]
        line = ratios_line(s, c, r)
        emit(line)
        note(
            f"run {s['run']} ({s['inflight']} in flight, {s['payload_bytes']} B): "
            f"pxq/C {line['pxq_over_c']}, pxq/R {line['pxq_over_r']} ({line['r_clients']} clients)"
        )
        emitted.append(line)
    return emitted
