"""The supervisor of one node on a host without systemd: ``python -m net.deploy.watchdog
--pidfile P --log L -- COMMAND...`` (what ``pxq deploy up`` starts there, through
``net.deploy.agent``).

It detaches itself (a double fork and ``setsid``: it outlives the SSH session that started
it), writes its pid to ``P`` (and the running command's to ``P.node``), appends the command's
stdout and stderr and its own notes to ``L``, and then:

* runs COMMAND; when it exits 0 (a graceful stop), the watchdog exits too;
* when it exits non-zero (or is killed by a signal), starts it again after a backoff
  (``--backoff-first-s``, 1 s, doubling up to ``--backoff-max-s``, 30 s; back to the first after a run of
  ``STABLE_RUN_S``), and gives up after ``START_LIMIT`` runs in a row that each ended within
  ``STABLE_RUN_S`` (a node that cannot start: a bad file, a busy port), as systemd's
  ``StartLimitBurst`` does;
* on SIGTERM (or SIGINT) sends SIGTERM to the command, waits for it and exits 0.

It removes its pid files on the way out. The parent (the command line that started it)
returns once the pid file is written, printing the pid; exit 1 if the daemon did not come up
within ``READY_TIMEOUT_S``. The standard library only: it runs before and beside pxq.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

BACKOFF_FIRST_S: Final = 1.0
BACKOFF_MAX_S: Final = 30.0
STABLE_RUN_S: Final = 10.0
START_LIMIT: Final = 5
READY_TIMEOUT_S: Final = 10.0
TICK_S: Final = 0.1
NODE_PID_SUFFIX: Final = ".node"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


class Watchdog:
    """The supervising loop (in the detached process)."""

    def __init__(
        self,
        argv: Sequence[str],
        pidfile: Path,
        log: TextIO,
        *,
        backoff_first_s: float = BACKOFF_FIRST_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.argv = list(argv)
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.pidfile = pidfile
        self.node_pidfile = pidfile.with_name(pidfile.name + NODE_PID_SUFFIX)
        self.log = log
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.log.write(f"{stamp} watchdog[{os.getpid()}]: {text}\n")
        self.log.flush()

    def on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(TICK_S)

    def run(self) -> int:
        backoff = self.backoff_first_s
        quick_failures = 0
        try:
            while not self.stopping:
                started = time.monotonic()
                self.child = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
                )
                if self.stopping:  # SIGTERM came while it was being started
                    self.child.send_signal(signal.SIGTERM)
                _write_atomic(self.node_pidfile, f"{self.child.pid}\n")
                self.note(f"started pid {self.child.pid}: {' '.join(self.argv)}")
                code = self.child.wait()
                ran = time.monotonic() - started
                self.node_pidfile.unlink(missing_ok=True)
                if code == 0 or self.stopping:
                    self.note(f"pid {self.child.pid} exited {code}; stopping")
                    return 0
                if ran >= STABLE_RUN_S:
                    backoff, quick_failures = self.backoff_first_s, 0
                quick_failures += ran < STABLE_RUN_S
                if quick_failures >= START_LIMIT:
                    self.note(
                        f"pid {self.child.pid} exited {code}; {START_LIMIT} runs in a row ended "
                        f"within {STABLE_RUN_S:g} s: giving up (see above)"
                    )
                    return 1
                self.note(f"pid {self.child.pid} exited {code}; restarting in {backoff:g} s")
                self.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
            return 0
        finally:
            self.node_pidfile.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                if self.pidfile.read_text().strip() == str(os.getpid()):
                    self.pidfile.unlink()


def _daemonize(pidfile: Path, log_path: Path) -> TextIO:
    """Detach; in the daemon, return the log (stdout and stderr go there too); in the
    original process, wait for the pid file and exit."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            # The daemon writes its pid once its pid file is in place; EOF: it died first.
            deadline = time.monotonic() + READY_TIMEOUT_S
            line = b""
            while time.monotonic() < deadline and not line.endswith(b"\n"):
                chunk = ready.read(64)
                if not chunk:
                    break
                line += chunk
        if not line.endswith(b"\n"):
            print(f"watchdog: did not start (see {log_path})", file=sys.stderr)
            os._exit(1)
        print(line.decode().strip(), flush=True)
        os._exit(0)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(null)
    os.close(fd)
    log = os.fdopen(1, "w", buffering=1, closefd=False)
    _write_atomic(pidfile, f"{os.getpid()}\n")
    os.write(write_end, f"{os.getpid()}\n".encode())
    os.close(write_end)
    return log


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m net.deploy.watchdog")
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument(
        "--foreground", action="store_true", help="Do not detach (for a supervisor above)."
    )
    parser.add_argument("--backoff-first-s", type=float, default=BACKOFF_FIRST_S)
    parser.add_argument("--backoff-max-s", type=float, default=BACKOFF_MAX_S)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise (after --)")
    os.umask(0o077)
    if args.foreground:
        log: TextIO = args.log.open("a", buffering=1)
        _write_atomic(args.pidfile, f"{os.getpid()}\n")
    else:
        log = _daemonize(args.pidfile, args.log)
    dog = Watchdog(
        command,
        args.pidfile,
        log,
        backoff_first_s=args.backoff_first_s,
        backoff_max_s=args.backoff_max_s,
    )
    signal.signal(signal.SIGTERM, dog.on_signal)
    signal.signal(signal.SIGINT, dog.on_signal)
    return dog.run()


if __name__ == "__main__":
    sys.exit(main())
