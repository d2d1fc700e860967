"""``Client``: the blocking pxq client (``pxq.Client``), for code that is not asyncio.

It owns a background thread running a private event loop, with one ``AsyncClient`` on it;
every method submits a coroutine to that loop and waits for its result, so a ``Client`` may
be used from any number of threads at once (concurrent ``enqueue`` calls from several
threads are batched together like concurrent tasks). ``BlockingConsumer`` wraps an
``AsyncConsumer`` the same way: ``run(handler)`` blocks (plain handlers run in worker
threads), ``batches()`` is an ordinary iterator with the same commit-after-success rule.

No application code runs on the client's loop, which sends the cursor commits and renews the
consumers' leases: a plain handler runs in a worker thread, the body of a ``batches`` loop in
the caller's thread, and an ``async`` handler on a second loop of its own (one per ``run``),
so a handler that blocks, however long, never delays a commit or a renewal.

Example::

    import pxq

    with pxq.Client("cluster.toml") as client:
        receipt = client.enqueue("events", b"hello", key="user-42")
        with client.consumer("default") as consumer:
            for batch in consumer.batches():
                for item in batch:
                    print(item.payload)
                consumer.stop()          # committed when this body ends
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from net.client.consumer import AsyncConsumer, Batch, Handler, is_async_handler
from net.client.types import ClientClosed, Item, PxqError, Receipt, RegisterValue, SeekResult
from net.wire.loop import new_event_loop

if TYPE_CHECKING:
    from net.client.registers import Fence
    from net.client.types import ConfigSource, Key
    from net.config import NetConfig

T = TypeVar("T")

LOOP_STOP_TIMEOUT_S = 10.0


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = new_event_loop()  # uvloop's when installed
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise PxqError("a blocking pxq call was made from the client's own event loop")
        if self.loop.is_closed():
            coro.close()
            raise ClientClosed("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def call_soon(self, fn: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(LOOP_STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


async def _await(aw: Awaitable[T]) -> T:
    return await aw


class Client:
    """The blocking counterpart of ``AsyncClient`` (same arguments, same semantics).

    ``close()`` it, or use it as a context manager."""

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        name: str = "pxq-client",
        request_timeout_ms: int | None = None,
        call_timeout_ms: int | None = None,
        producer_options: Mapping[str, int] | None = None,
        net_config: NetConfig | None = None,
    ) -> None:
        from net.client.api import AsyncClient

        self._thread = _LoopThread("pxq-client-loop")
        try:
            self._client = self._thread.run(
                AsyncClient.connect(
                    config,
                    name=name,
                    request_timeout_ms=request_timeout_ms,
                    call_timeout_ms=call_timeout_ms,
                    producer_options=producer_options,
                    net_config=net_config,
                )
            )
        except BaseException:
            self._thread.stop()
            raise

    @property
    def config(self) -> Any:
        """The cluster configuration (a ``pxq.config.ClusterConfig``)."""
        return self._client.config

    def enqueue(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        key: Key = None,
        kind: str = "",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Receipt:
        """Enqueue one item and wait until it is durable (see ``AsyncClient.enqueue``)."""
        return self._thread.run(self._client.enqueue(topic, payload, key, kind, headers=headers))

    @overload
    def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: Literal[False] = False,
    ) -> list[Receipt]: ...

    @overload
    def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: Literal[True],
    ) -> list[Receipt | PxqError]: ...

    def enqueue_many(
        self,
        topic: str,
        items: Iterable[tuple[Key, bytes | bytearray | memoryview]],
        *,
        kind: str = "",
        headers: Mapping[str, str] | None = None,
        return_exceptions: bool = False,
    ) -> list[Receipt] | list[Receipt | PxqError]:
        """Enqueue many items at once (see ``AsyncClient.enqueue_many``)."""
        pairs = list(items)
        if return_exceptions:
            return self._thread.run(
                self._client.enqueue_many(
                    topic, pairs, kind=kind, headers=headers, return_exceptions=True
                )
            )
        return self._thread.run(self._client.enqueue_many(topic, pairs, kind=kind, headers=headers))

    def consumer(
        self,
        group: str,
        topic: str | None = None,
        queues: Sequence[int] | None = None,
        *,
        concurrency: int = 16,
        close_timeout_s: float = 5.0,
        options: Mapping[str, int] | None = None,
        name: str | None = None,
        weight: int | None = None,
    ) -> BlockingConsumer:
        """A consumer of ``group`` (see ``AsyncClient.consumer``)."""

        async def make() -> AsyncConsumer:
            return self._client.consumer(
                group,
                topic,
                queues,
                concurrency=concurrency,
                close_timeout_s=close_timeout_s,
                options=options,
                name=name,
                weight=weight,
            )

        return BlockingConsumer(self._thread.run(make()), self._thread)

    def seek(
        self,
        topic: str,
        group: str,
        queue: int | None = None,
        *,
        offset: int | None = None,
        time_ms: int | None = None,
        back_ms: int | None = None,
    ) -> SeekResult:
        """Move a group's cursor (see ``AsyncClient.seek``)."""
        return self._thread.run(
            self._client.seek(topic, group, queue, offset=offset, time_ms=time_ms, back_ms=back_ms)
        )

    def peek(
        self,
        topic: str,
        group: str,
        queue: int,
        *,
        offset: int | None = None,
        count: int = 100,
    ) -> list[Item]:
        """Read items without committing (see ``AsyncClient.peek``)."""
        return self._thread.run(self._client.peek(topic, group, queue, offset=offset, count=count))

    def register_read(self, key: str, *, through_log: bool = False) -> RegisterValue:
        """Read a register (see ``AsyncClient.register_read``)."""
        return self._thread.run(self._client.register_read(key, through_log=through_log))

    def register_write(self, key: str, value: bytes, *, fence: Fence | None = None) -> int:
        """Write a register; its new version (see ``AsyncClient.register_write``)."""
        return self._thread.run(self._client.register_write(key, value, fence=fence))

    def register_cas(
        self, key: str, expected: bytes | None, value: bytes, *, fence: Fence | None = None
    ) -> int:
        """Compare-and-set a register; its new version (see ``AsyncClient.register_cas``)."""
        return self._thread.run(self._client.register_cas(key, expected, value, fence=fence))

    def close(self) -> None:
        """Close the client (see ``AsyncClient.close``) and stop its loop thread."""
        try:
            if not self._thread.loop.is_closed():
                self._thread.run(self._client.close())
        finally:
            self._thread.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingConsumer:
    """The blocking counterpart of ``AsyncConsumer``. ``stop()`` is safe from any thread,
    including a handler's."""

    def __init__(self, consumer: AsyncConsumer, thread: _LoopThread) -> None:
        self._consumer = consumer
        self._thread = thread
        self.group = consumer.group
        self.owned = consumer.owned

    @property
    def asynchronous(self) -> AsyncConsumer:
        """The ``AsyncConsumer`` this wraps (use it only on the client's loop)."""
        return self._consumer

    def run(self, handler: Handler) -> None:
        """Consume with ``handler`` until ``stop()`` or ``close()`` is called (from another
        thread or from the handler). See ``AsyncConsumer.run``; an ``async`` handler runs on
        an event loop of its own (see the module docstring)."""
        if not is_async_handler(handler):
            self._thread.run(self._consumer.run(handler))
            return
        handler_loop = _LoopThread("pxq-handler-loop")

        def on_handler_loop(item: Item) -> object:
            # In a worker thread of the consumer: wait for the coroutine on the handler loop.
            coro = handler(item)
            if not inspect.iscoroutine(coro):
                return coro
            return asyncio.run_coroutine_threadsafe(coro, handler_loop.loop).result()

        try:
            self._thread.run(self._consumer.run(on_handler_loop))
        finally:
            handler_loop.stop()

    def batches(self) -> Iterator[Batch]:
        """Yield batches; each is committed when the loop body that received it finishes
        without raising. See ``AsyncConsumer.batches``."""
        agen = self._consumer.batches()
        try:
            while True:
                try:
                    batch = self._thread.run(_await(agen.__anext__()))
                except StopAsyncIteration:
                    return
                yield batch
        finally:
            if not self._thread.loop.is_closed():
                self._thread.run(_await(agen.aclose()))

    def stop(self) -> None:
        """Ask ``run`` / ``batches`` to end (non-blocking)."""
        self._thread.call_soon(self._consumer.stop)

    def close(self) -> None:
        """Stop and release the queues (see ``AsyncConsumer.close``)."""
        if not self._thread.loop.is_closed():
            self._thread.run(self._consumer.close())

    def __enter__(self) -> BlockingConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
