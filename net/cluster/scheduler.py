"""``pxq scheduler run``: the scheduler (``pxq.scheduler.node.Scheduler``) as a process.

It runs the pure scheduler machine with the client driver (``net.client.driver``) against the
cluster's lock service, logs when it becomes the active scheduler and every assignment it
publishes (INFO), and stops on SIGTERM or SIGINT. Any number may run: the lock service elects
one; the others stand by and take over within one ownership lease of its death. Consumers
follow the published assignment when the cluster file says ``[ownership] scheduler = true``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from net.client.driver import MachineDriver, NodePool
from net.config import NetConfig
from pxq.config import ClusterConfig
from pxq.effects import TraceEvent
from pxq.scheduler.node import Scheduler, scheduler_settings

log = logging.getLogger("pxq.scheduler")

REQUEST_TIMEOUT_MS = 300


def _on_trace(event: TraceEvent) -> None:
    fields = dict(event.fields)
    if event.kind == "sched.leader":
        log.info("now the active scheduler (%s)", fields.get("holder"))
    elif event.kind == "sched.follower":
        log.info("no longer the active scheduler")
    elif event.kind == "sched.publish":
        log.info(
            "group %s: published an assignment over %s consumers, %s queues moved",
            fields.get("group"),
            fields.get("members"),
            fields.get("moved"),
        )
    elif event.kind.startswith("sched."):
        log.warning("%s %s", event.kind, fields)


async def run_scheduler(
    config: ClusterConfig,
    name: str,
    *,
    stop: asyncio.Event | None = None,
    net_config: NetConfig | None = None,
) -> Scheduler:
    """Run a scheduler named ``name`` until ``stop`` is set (or SIGTERM / SIGINT when
    ``stop`` is None); returns the machine (for tests: ``published``, ``is_leader``)."""
    import random

    settings = scheduler_settings(config, name)
    machine = Scheduler(settings, random.Random())
    pool = NodePool.for_config(config, net_config)
    driver = MachineDriver(
        machine, pool, request_timeout_ms=REQUEST_TIMEOUT_MS, name=name, on_trace=_on_trace
    )
    done = stop if stop is not None else asyncio.Event()
    if stop is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await driver.close()
        await pool.close()
    return machine
