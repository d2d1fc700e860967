"""The event loop every pxq process runs on: ``new_event_loop`` and ``run``.

uvloop's loop when it is installed (faster sockets and callbacks, see ``docs/performance.md``),
else asyncio's default. Both set ``TCP_NODELAY`` on every TCP socket they create or accept.
Nodes (``net.node``), clients (``net.client``) and tools (``net.tools``) all start their loop
here, so the choice is made in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's if importable, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on ``new_event_loop()``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
