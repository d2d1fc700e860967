"""``LinePrinter``: standard output written by a thread of its own, for commands that run an
event loop which must never wait on it (``pxq consume``).

Why: a write to a pipe blocks while the pipe is full, that is for as long as the reader is
slow. Done on the event-loop thread, it also stops everything else that loop does: the
consumer's cursor commits and its lease renewals (a queue is handed to another consumer while
this one still prints it). Here the loop hands a block of text to the writer thread and awaits
its write as a future: the loop keeps running while the reader is slow, and the caller learns
when its lines have left the process (written to the file descriptor, unbuffered) (a consumer commits a batch only then, so
after a kill at most the batch being printed comes again).

One block is written at a time (``write`` refuses a second while one is pending): the queue
between the loop and the thread is bounded by construction. A failed write (the reader closed
the pipe) fails the future and every later ``write``. The thread writes with ``os.write`` to the
descriptor, not through ``sys.stdout``: a write blocked at exit then holds no lock that the
interpreter's own flush of ``sys.stdout`` would wait for. A standard output without a
descriptor (a test harness capturing it) is written through its ``buffer`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import sys
import threading
from collections.abc import Callable

STOP_JOIN_TIMEOUT_S = 5.0
"""How long ``close`` waits for the writer thread to finish a write in progress."""


class LinePrinter:
    """Writes blocks of text with ``write_some`` (``os.write`` to a descriptor: it writes a
    prefix of the bytes and returns its length) from a daemon thread, in order."""

    def __init__(self, write_some: Callable[[memoryview], int]) -> None:
        self._write_some = write_some
        self._blocks: queue.Queue[tuple[bytes, asyncio.Future[None]] | None] = queue.Queue(
            maxsize=1
        )
        self._pending: asyncio.Future[None] | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._main, name="pxq-stdout", daemon=True)
        self._thread.start()

    @classmethod
    def stdout(cls) -> LinePrinter:
        """A printer of this process's standard output."""
        try:
            fd = sys.stdout.fileno()
        except (io.UnsupportedOperation, AttributeError, ValueError):
            stream = sys.stdout.buffer

            def write_all(view: memoryview) -> int:
                stream.write(view)
                stream.flush()
                return len(view)

            return cls(write_all)
        return cls(lambda view: os.write(fd, view))

    async def write(self, text: str) -> None:
        """Write ``text`` (UTF-8); returns once all of it was written. Raises the
        ``OSError`` of a failed write (for example ``BrokenPipeError``)."""
        if self._error is not None:
            raise self._error
        if self._pending is not None and not self._pending.done():
            raise RuntimeError("LinePrinter.write: the previous write is still pending")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending = fut
        self._blocks.put_nowait((text.encode("utf-8"), fut))
        await fut

    def close(self) -> None:
        """Stop the writer thread once the block in progress (if any) is written (bounded)."""
        try:
            self._blocks.put_nowait(None)
        except queue.Full:  # a write in progress that nobody awaits any more: abandon it
            return
        self._thread.join(STOP_JOIN_TIMEOUT_S)

    def _main(self) -> None:
        while (entry := self._blocks.get()) is not None:
            data, fut = entry
            try:
                view = memoryview(data)
                while view:
                    view = view[self._write_some(view) :]
            except OSError as exc:
                self._error = exc
                _resolve(fut, exc)
                return
            _resolve(fut, None)


def _resolve(fut: asyncio.Future[None], error: OSError | None) -> None:
    def settle() -> None:
        if fut.done():
            return  # the awaiting task was cancelled
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    # A closed loop (RuntimeError): nobody waits for this write any more.
    with contextlib.suppress(RuntimeError):
        fut.get_loop().call_soon_threadsafe(settle)
