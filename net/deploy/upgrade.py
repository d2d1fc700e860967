"""``pxq deploy upgrade``: a rolling upgrade of a deployed cluster to the release of a wheelhouse,
one replica at a time, never with two replicas of a Paxos group behind at once.

1. Every host that runs a node is logged into; the cluster must be healthy to begin with
   (every group has a master within the timeout), else nothing is touched.
2. The release is installed on every host (``install_host``: a new ``venv-RELEASE`` beside the
   running one, ``current`` moved to it; running nodes keep their interpreter), the TLS material
   and the cluster file are copied again (so ``upgrade`` also rotates them: new certificates
   made here reach every node as it restarts). A failure here stops before any node is touched.
3. Then, node by node in the file's order (``all_nodes``: each store's replicas, then the
   lock replicas), unless the node
   runs the release already (``current``: a re-run after a failure resumes where it stopped):

   a. *before* it is stopped, every other replica of its service must have caught up (below):
      a group never loses a second replica while one is behind;
   b. stopped (``agent stop``: SIGTERM, SIGKILL after the stop timeout) and started again on
      its data with the new release (``agent start``: ``current``'s interpreter);
   c. waited for: every Paxos group has a master, and the node has caught up.

   The first failure stops the upgrade and is reported with the nodes done so far; nothing
   further is touched. A re-run resumes.

*Caught up*: for every group of the node's service, its applied log instance reaches the one
the group's master had applied when the wait began (so a steady load cannot keep it from
converging). Both come from the nodes' metrics endpoints (``pxq_paxos_applied_instance``,
``net.metrics``), which is why ``upgrade`` needs ``[metrics] enabled = true``; the masters
come from ``net.cluster.probe``.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from net.cluster.probe import GroupKey, find_masters, probed_groups, wait_for_masters
from net.config import NetConfig
from net.deploy.install import HostInstall, Wheelhouse, install_host
from net.deploy.remote import (
    HostFailure,
    agent_run,
    close_sessions,
    host_names,
    on_each,
    open_sessions,
    push_config,
)
from net.deploy.ssh import DeployError, HostKeys, Session
from net.errors import NetError
from net.tls import ensure_cluster_material
from pxq.config import ClusterConfig, NodeInfo

CATCH_UP_TIMEOUT_S: Final = 60.0
SCRAPE_TIMEOUT_S: Final = 2.0
POLL_S: Final = 0.2
APPLIED: Final = "pxq_paxos_applied_instance"


class NotCaughtUp(DeployError):
    """A replica did not reach its group's master's applied instance in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUpgrade:
    """What the upgrade did to one node."""

    node: str
    host: str
    state: str
    """``upgraded``; ``current`` (it ran the release already); ``failed``."""
    release_before: str | None = None
    elapsed_s: float = 0.0
    """From its stop to caught up."""
    down_s: float = 0.0
    """From its stop until it was started again."""
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "host": self.host,
            "state": self.state,
            "release_before": self.release_before,
            "elapsed_s": round(self.elapsed_s, 3),
            "down_s": round(self.down_s, 3),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeResult:
    release: str
    installs: tuple[HostInstall, ...] = ()
    nodes: tuple[NodeUpgrade, ...] = ()
    failures: tuple[HostFailure, ...] = ()
    masters: dict[GroupKey, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    error: str | None = None
    """The step that stopped the upgrade (None: it completed)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures


def _metrics_url(info: NodeInfo) -> str:
    return f"http://{info.host}:{info.metrics_port}/metrics"


def _scrape(url: str) -> str:
    # The node's own endpoint on an address of the cluster file, never user input.
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
        text: str = answer.read().decode()
    return text


async def applied_instances(info: NodeInfo) -> dict[int, int] | None:
    """``group -> applied instance`` of ``info``'s service on that node; None if its metrics
    endpoint does not answer."""
    try:
        text = await asyncio.to_thread(_scrape, _metrics_url(info))
    except OSError:
        return None
    found: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == APPLIED and sample.labels.get("service") == info.service:
                found[int(sample.labels["paxos_group"])] = int(sample.value)
    return found


async def wait_caught_up(
    config: ClusterConfig,
    nodes: Sequence[str],
    *,
    timeout_s: float = CATCH_UP_TIMEOUT_S,
    net_config: NetConfig | None = None,
) -> None:
    """Wait until each of ``nodes`` has applied, in every group of its service, what the
    group's master had applied when the wait began (see the module docstring). Raises
    ``NotCaughtUp`` naming the nodes and groups behind (and by how much)."""
    net_config = net_config or NetConfig.for_cluster(config)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    infos = [i for i in (config.node_info(n) for n in nodes) if i is not None]
    services = {i.service for i in infos}
    masters = await wait_for_masters(
        config,
        net_config,
        timeout_s=timeout_s,
        groups=[(s, g) for s, g in probed_groups(config) if s in services],
    )
    targets: dict[GroupKey, int] = {}
    for (service, group), master in masters.items():
        info = config.node_info(master)
        applied = await applied_instances(info) if info is not None else None
        if applied is None or group not in applied:
            raise NotCaughtUp(
                f"the metrics of {master} (master of {service}/{group}) do not answer"
            )
        targets[(service, group)] = applied[group]
    while True:
        behind: list[str] = []
        for info in infos:
            applied = await applied_instances(info)
            for (service, group), target in sorted(targets.items()):
                if service != info.service:
                    continue
                have = None if applied is None else applied.get(group)
                if have is None or have < target:
                    shown = "no answer" if have is None else f"{have}"
                    behind.append(f"{info.node} {service}/{group} at {shown} of {target}")
        if not behind:
            return
        if loop.time() > deadline:
            raise NotCaughtUp(f"not caught up within {timeout_s} s: {'; '.join(behind)}")
        await asyncio.sleep(POLL_S)


async def _release_of(s: Session, config: ClusterConfig, node: str) -> str | None:
    reports = await agent_run(s, config, "status", [node])
    release = reports[0].get("release") if reports else None
    return str(release) if release else None


async def upgrade(
    config: ClusterConfig,
    cluster_file: Path,
    keys: HostKeys,
    house: Wheelhouse,
    *,
    supervisor: str = "auto",
    stop_timeout_s: float = 10.0,
    timeout_s: float = CATCH_UP_TIMEOUT_S,
    progress: Callable[[NodeUpgrade], None] | None = None,
) -> UpgradeResult:
    """See the module docstring; ``progress`` hears of each node as it is done."""
    started = time.monotonic()
    net_config = NetConfig.for_cluster(config)
    names = host_names(config)

    installs: tuple[HostInstall, ...] = ()
    done: list[NodeUpgrade] = []

    def stopped(error: str | None, failures: Sequence[HostFailure] = ()) -> UpgradeResult:
        return UpgradeResult(
            release=house.release,
            installs=installs,
            nodes=tuple(done),
            failures=tuple(failures),
            elapsed_s=time.monotonic() - started,
            error=error,
        )

    sessions, failures = await open_sessions(config, keys, names)
    try:
        if failures:
            return stopped("not every host could be reached, nothing was touched", failures)
        try:
            await wait_for_masters(config, net_config, timeout_s=timeout_s)
        except NetError as exc:
            return stopped(f"the cluster is not healthy, nothing was touched: {exc}")
        installs = tuple(
            await asyncio.gather(*(install_host(config.host(n), keys, house) for n in names))
        )
        bad = [HostFailure(host=i.host.name, error=i.error) for i in installs if i.error]
        if bad:
            return stopped("the install failed, no node was touched", bad)
        ensure_cluster_material(config)
        _, bad = await on_each(sessions, lambda s: push_config(s, config, cluster_file))
        if bad:
            return stopped("copying the cluster file failed, no node was touched", bad)
        for info in config.all_nodes():
            step = await _upgrade_node(
                sessions[str(info.on)],
                config,
                info=info,
                release=house.release,
                supervisor=supervisor,
                stop_timeout_s=stop_timeout_s,
                timeout_s=timeout_s,
            )
            done.append(step)
            if progress is not None:
                progress(step)
            if step.state == "failed":
                return stopped(step.error)
        masters = await find_masters(config, net_config)
        return UpgradeResult(
            release=house.release,
            installs=installs,
            nodes=tuple(done),
            masters=masters,
            elapsed_s=time.monotonic() - started,
        )
    finally:
        await close_sessions(sessions)


async def _upgrade_node(
    s: Session,
    config: ClusterConfig,
    *,
    info: NodeInfo,
    release: str,
    supervisor: str,
    stop_timeout_s: float,
    timeout_s: float,
) -> NodeUpgrade:
    node, host = info.node, s.host.name
    before: str | None = None
    began = time.monotonic()
    down_s = 0.0
    try:
        before = await _release_of(s, config, node)
        if before == release:
            return NodeUpgrade(node=node, host=host, state="current", release_before=before)
        others = [
            r.node for r in config.all_nodes() if r.service == info.service and r.node != node
        ]
        try:
            await wait_caught_up(config, others, timeout_s=timeout_s)
        except NotCaughtUp as exc:
            raise NotCaughtUp(f"{node} not taken down: another replica is behind: {exc}") from exc
        began = time.monotonic()
        stop = ("--timeout", str(stop_timeout_s), "--supervisor", supervisor)
        await agent_run(s, config, "stop", [node], *stop)
        reports = await agent_run(s, config, "start", [node], "--supervisor", supervisor)
        down_s = time.monotonic() - began
        if not reports or reports[0].get("state") == "failed":
            error = reports[0].get("error") if reports else "no report"
            raise DeployError(f"{host}: {node} did not start on {release}: {error}")
        await wait_for_masters(config, NetConfig.for_cluster(config), timeout_s=timeout_s)
        await wait_caught_up(config, [node], timeout_s=timeout_s)
    except (DeployError, NetError) as exc:
        return NodeUpgrade(
            node=node,
            host=host,
            state="failed",
            release_before=before,
            elapsed_s=time.monotonic() - began,
            down_s=down_s,
            error=str(exc),
        )
    return NodeUpgrade(
        node=node,
        host=host,
        state="upgraded",
        release_before=before,
        elapsed_s=time.monotonic() - began,
        down_s=down_s,
    )
