"""``pxq node run``: one replica (of a store, or of the lock service) as a long-running server
process.

This module owns what turns a cluster file and a node name into a running replica: finding the
node's role and address in the configuration, building its ``NodeRunner`` (a ``StoreNode`` for
a store replica, a ``LockNode`` hosting every lock group for a lock replica, both via
``pxq.nodes.node_spec``; LMDB in the data dir, the listener bound to exactly the configured
host and port), its metrics endpoint when on (``net.metrics``), and the signal handling of a
service: SIGTERM or SIGINT stops the node gracefully (no new connections, the current turn committed and released, LMDB
closed). It is what a systemd unit executes; ``net.cluster.processes`` starts one such process per
replica for ``pxq cluster up``.

Startup problems are raised as ``StartupError``s naming the problem (``UnknownNode`` here,
``AddressInUse``, ``DataDirError``/``DataDirMismatch`` and ``BootFailed`` from the runner);
nothing stays open then.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Final

from net.config import NetConfig
from net.errors import StartupError
from net.node.runner import NodeRunner, open_lmdb, open_lmdb_replacing
from net.wire.loop import run as run_loop
from pxq.access import AccessPolicy
from pxq.config import ClusterConfig, NodeInfo
from pxq.config.identity import metadata_text
from pxq.nodes import NodeSpec, node_spec

log = logging.getLogger("pxq.net.server")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class UnknownNode(StartupError):
    """The node name is not a replica of any store nor of the lock service."""


def default_data_dir(node: str) -> Path:
    """Where ``pxq node run`` keeps a node's data when no ``--data-dir`` is given."""
    return Path(".pxq") / "data" / node


def _spec_of(config: ClusterConfig, node: str) -> NodeSpec:
    spec = node_spec(config, node)
    if spec is None:
        known = ", ".join(info.node for info in config.all_nodes())
        raise UnknownNode(f"node {node!r} is not a replica in the configuration (known: {known})")
    return spec


def node_of(config: ClusterConfig, node: str) -> NodeInfo:
    """The configuration entry of ``node`` (its role, service and address); ``UnknownNode`` if
    it is neither a store replica nor a lock replica."""
    return _spec_of(config, node).info


def build_runner(
    config: ClusterConfig,
    node: str,
    data_dir: Path,
    net_config: NetConfig | None = None,
    *,
    replace: bool = False,
) -> NodeRunner:
    """The runner of ``node``'s replica at its configured address: its store's ``StoreNode``,
    or a ``LockNode`` for a lock replica. Blank storage is probed (a node whose data dir was
    emptied refuses to run where the cluster has history), unless ``replace`` (``pxq node
    run --replace``): then the node is its own replacement (``pxq.paxos.repair``)."""
    spec = _spec_of(config, node)
    return NodeRunner(
        node_id=node,
        cluster=config.name,
        data_dir=data_dir,
        factory=spec.factory,
        peers=spec.peers,
        host=spec.info.host,
        port=spec.info.port,
        config=net_config if net_config is not None else NetConfig.for_cluster(config, node=node),
        storage_opener=open_lmdb_replacing if replace else open_lmdb,
        if_blank="replace" if replace else "probe",
        access=AccessPolicy.for_cluster(config),
        service=spec.info.service,
        cluster_id=config.id,
        metadata=metadata_text(config),
    )


async def serve(runner: NodeRunner, metrics: tuple[str, int] | None = None) -> str | None:
    """Start ``runner`` and run it until SIGTERM/SIGINT (then stop it gracefully) or until it
    stops by itself. Returns the crash reason, or None after a requested stop. With
    ``metrics`` (host, port), its Prometheus metrics are served there meanwhile
    (``net.metrics``).

    Raises the runner's ``StartupError`` if it cannot start (``AddressInUse`` for a busy
    metrics port too). Must run in the main thread (it installs the signal handlers, and
    removes them before returning).
    """
    endpoint = None
    if metrics is not None:
        from net.metrics import MetricsServer  # prometheus-client only where metrics are on

        endpoint = MetricsServer.start(runner, *metrics, process=True)
        log.info("node %s serves its metrics on http://%s:%d/metrics", runner.node_id, *metrics)
    try:
        return await _serve(runner)
    finally:
        if endpoint is not None:
            endpoint.close()


async def _serve(runner: NodeRunner) -> str | None:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop_requested.is_set():
            log.info("node %s: %s received, stopping", runner.node_id, sig.name)
            stop_requested.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # A signal during startup takes effect as soon as the runner is up.
        await runner.start()
        stopped = asyncio.ensure_future(runner.wait_stopped())
        requested = asyncio.ensure_future(stop_requested.wait())
        try:
            await asyncio.wait((stopped, requested), return_when=asyncio.FIRST_COMPLETED)
        finally:
            requested.cancel()
        if not stopped.done():
            await runner.stop()
        return await stopped
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def run_node(
    config: ClusterConfig,
    node: str,
    data_dir: Path,
    net_config: NetConfig | None = None,
    *,
    replace: bool = False,
    metrics: bool = False,
) -> str | None:
    """Run ``node`` until it is told to stop (see ``serve``); blocks. Returns the crash reason,
    or None after a graceful stop. Raises ``StartupError`` if it cannot start. ``metrics``:
    serve its Prometheus metrics on its host and metrics port (``NodeInfo.metrics_port``)."""
    runner = build_runner(config, node, data_dir, net_config, replace=replace)
    info = node_of(config, node)
    log.info(
        "starting %s node %s (%s) of cluster %s (data dir %s)",
        info.role,
        node,
        info.service,
        config.name,
        data_dir.resolve(),
    )
    # uvloop when installed (net.wire.loop.new_event_loop), asyncio's own loop otherwise.
    return run_loop(serve(runner, (info.host, info.metrics_port) if metrics else None))
