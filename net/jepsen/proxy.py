"""``DelayProxy``: a userspace TCP proxy that delays every byte by a fixed time, for slow links
(the kernel here has no netem).

It listens on one address and forwards each accepted connection to one destination. In each
direction a reader takes chunks (at most ``CHUNK_BYTES``) as they arrive and stamps each with
its due time (arrival + ``delay_ms``); a writer sends them in order once due. So every byte
arrives ``delay_ms`` later than it would have (plus scheduling), in order, and the throughput
is not capped by the delay (chunks are pipelined). An end of stream is forwarded, delayed
like the data (half-close); an error on either side closes both.

Limits: at most ``connections_max`` connections at a time (more are closed at once), and at
most ``buffer_bytes_max`` bytes held per direction of a connection (the reader stops reading
when its queue is full: TCP's flow control pushes back on the sender). Connecting to the
destination is bounded by ``CONNECT_TIMEOUT_S``. ``close`` stops listening and closes every
connection (the peers see the connection end and reconnect, to wherever the network now
sends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("pxq.net.jepsen.proxy")

CHUNK_BYTES: Final = 16 * 1024
CONNECT_TIMEOUT_S: Final = 2.0
CLOSE_TIMEOUT_S: Final = 2.0
CONNECTIONS_MAX: Final = 64
BUFFER_BYTES_MAX: Final = 1024 * 1024


@dataclass(slots=True, kw_only=True)
class ProxyStats:
    """What a proxy did (for reports and tests)."""

    accepted: int = 0
    refused: int = 0
    """Connections closed at once: over ``connections_max``, or the destination refused."""
    bytes_forwarded: int = 0


class DelayProxy:
    """A delaying proxy from ``listen_host:listen_port`` (0: any free port) to
    ``destination`` (see the module docstring)."""

    def __init__(
        self,
        *,
        listen_host: str,
        destination: tuple[str, int],
        delay_ms: int,
        listen_port: int = 0,
        connections_max: int = CONNECTIONS_MAX,
        buffer_bytes_max: int = BUFFER_BYTES_MAX,
    ) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        if connections_max < 1 or buffer_bytes_max < CHUNK_BYTES:
            raise ValueError(
                f"connections_max >= 1 and buffer_bytes_max >= {CHUNK_BYTES} needed, got "
                f"{connections_max} and {buffer_bytes_max}"
            )
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.destination = destination
        self.delay_ms = delay_ms
        self.connections_max = connections_max
        self.buffer_bytes_max = buffer_bytes_max
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self) -> tuple[str, int]:
        """Listen; the address listened on."""
        self._server = await asyncio.start_server(
            self._accepted, self.listen_host, self.listen_port, reuse_address=True
        )
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the proxy is not listening (start it first)")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop listening and close every connection (bounded). Idempotent."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT_S)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), CLOSE_TIMEOUT_S)
            self._server = None

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closing or len(self._tasks) >= self.connections_max or task is None:
            self.stats.refused += 1
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # ``close`` cancels the connections: end normally then, or asyncio's server logs
            # the cancelled callback task as an error.
            if not self._closing:
                raise
        finally:
            self._tasks.discard(task)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection(*self.destination), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            log.info("proxy to %s:%s: cannot connect: %s", *self.destination, exc)
            self.stats.refused += 1
            client_w.close()
            return
        self.stats.accepted += 1
        writers = (client_w, server_w)
        self._writers.update(writers)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w)),
            asyncio.create_task(self._pump(server_r, client_w)),
        ]
        try:
            # One direction ending cleanly leaves the other running (half-close); an error
            # in either closes both.
            await asyncio.gather(*pumps)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in writers:
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay_ms`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        delay_s = self.delay_ms / 1000
        # None: the reader failed (the error closes the connection, not a clean end).
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(
            maxsize=self.buffer_bytes_max // CHUNK_BYTES
        )

        async def read() -> None:
            while True:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except OSError:
                    await queue.put((loop.time(), None))
                    return
                await queue.put((loop.time() + delay_s, data))
                if not data:
                    return

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                if data is None:
                    raise ConnectionResetError("the other side of the proxied connection failed")
                wait_s = due - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                self.stats.bytes_forwarded += len(data)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
