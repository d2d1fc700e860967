"""Observability (issue 14, item 5): the INFO lines of mastership changes, master lease expiry,
storage refusals and consumer ownership changes, the JSON log format, and each node's
Prometheus endpoint (``net.logs``, ``net.metrics``).

Method: in-process clusters (``LocalCluster``) on loopback. The failover test kills both
followers of a 3-replica store, so the master's lease lapses and it steps down for real, then
restarts them, so that a master is elected again; the metrics test enqueues N items, consumes
K of them, and scrapes the master's endpoint over HTTP.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from net.client.api import AsyncClient
from net.cluster.inprocess import LocalCluster
from net.config import MIB, NetConfig
from net.logs import (
    MASTERSHIP_LOGGER,
    OWNERSHIP_LOGGER,
    STORAGE_LOGGER,
    JsonFormatter,
    configure_logging,
    log_event,
)
from net.metrics import REFUSAL_REASONS, MetricsServer
from net.node.storage import BACKLOG_CHECKPOINTS
from pxq.config import ClusterConfig, loads_config
from pxq.config.parser import ConfigError
from tests.test_net_cluster import cluster_toml, free_ports
from tests.test_net_support import FAST, run_async, wait_until

TOPIC = "events"
GROUP = "default"
STORE = "store0"


def one_queue_toml(ports: list[int], lock_ports: list[int] | None = None) -> str:
    text = cluster_toml(ports, groups=1, lock_ports=lock_ports)
    return text.replace("queues = 4", "queues = 1").replace("[cluster]\n", "[cluster]\n", 1)


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fields", None)
    assert isinstance(fields, dict), record
    return fields


# -- logs ---------------------------------------------------------------------------------------


def test_a_failover_logs_lease_expiry_loss_and_gain_of_mastership_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = loads_config(cluster_toml(free_ports(3), groups=1), file="<test>")
    preferred = "s0"  # group 0's preferred replica: masters are handed over to it

    def lines() -> list[tuple[object, object, object, str]]:
        return [
            (fields_of(r)["node"], fields_of(r)["state"], fields_of(r)["term"], r.getMessage())
            for r in records(caplog, MASTERSHIP_LOGGER)
            if r.levelno == logging.INFO
        ]

    async def scenario() -> int:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)

            async def settled() -> bool:
                own = [line for line in lines() if line[0] == preferred]
                master = await cluster.master_of(STORE, 0)
                return master == preferred and bool(own) and own[-1][1] == "became"

            async with asyncio.timeout(15.0):
                while not await settled():
                    await asyncio.sleep(0.05)
            killed_at = len(lines())
            followers = sorted(n for n in cluster.runners if n != preferred)
            for node in followers:
                cluster.kill_node(node)

            def lost() -> bool:
                return any(state == "lost" for _, state, _, _ in lines()[killed_at:])

            try:
                await wait_until(lost, timeout_s=20.0, what="the lone master steps down")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; logged since the kill: {lines()[killed_at:]}"
                ) from exc
            for node in followers:
                await cluster.start_node(node)
            await cluster.wait_for_masters(timeout_s=10.0)
            return killed_at
        finally:
            await cluster.stop()

    with caplog.at_level(logging.INFO, logger=MASTERSHIP_LOGGER):
        killed_at = run_async(scenario(), timeout_s=90.0)
    before, after = lines()[:killed_at], lines()[killed_at:]
    term = before[-1][2]
    # Alone, the master's lease expires (once), then it steps down (once); then a master is
    # elected again, with a higher term.
    assert [line[:2] for line in after[:2]] == [(preferred, "lapsed"), (preferred, "lost")]
    assert f"node {preferred} is master of {STORE}/0" in before[-1][3]
    assert "master lease of store0/0 expired" in after[0][3]
    assert "is no longer master of store0/0" in after[1][3]
    became = [line for line in after if line[1] == "became"]
    assert len(became) == 1, after
    assert isinstance(became[0][2], int) and isinstance(term, int) and became[0][2] > term
    for record in records(caplog, MASTERSHIP_LOGGER):
        facts = fields_of(record)
        assert facts["service"] == STORE and facts["group"] == 0, facts
        assert isinstance(facts["ballot"], int) and facts["ballot"] > 0, facts


def test_consumer_ownership_changes_are_logged_with_the_holder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = loads_config(
        cluster_toml(free_ports(1), groups=1, lock_ports=free_ports(1)), file="<test>"
    )

    async def scenario() -> None:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                consumer = client.consumer(GROUP, TOPIC, name="c1")

                async def handle(item: object) -> None:
                    return None

                task = asyncio.create_task(consumer.run(handle))
                await wait_until(
                    lambda: len(records(caplog, OWNERSHIP_LOGGER)) >= 4,
                    timeout_s=15.0,
                    what="c1 takes the 4 queues",
                )
                consumer.stop()
                await task
        finally:
            await cluster.stop()

    with caplog.at_level(logging.INFO, logger=OWNERSHIP_LOGGER):
        run_async(scenario(), timeout_s=40.0)
    took = [r for r in records(caplog, OWNERSHIP_LOGGER) if fields_of(r)["event"] == "own.start"]
    gave = [r for r in records(caplog, OWNERSHIP_LOGGER) if fields_of(r)["event"] == "own.stop"]
    assert sorted(int(str(fields_of(r)["queue"])) for r in took) == [0, 1, 2, 3]
    assert sorted(int(str(fields_of(r)["queue"])) for r in gave) == [0, 1, 2, 3]
    for r in took + gave:
        facts = fields_of(r)
        assert str(facts["holder"]).startswith("c1"), facts
        assert facts["group"] == GROUP and isinstance(facts["token"], int), facts
        assert r.levelno == logging.INFO
    assert all(fields_of(r)["why"] == "leave" for r in gave)
    assert "the consumer is leaving" in gave[0].getMessage()
    assert f"of {GROUP} took {TOPIC}/" in took[0].getMessage()


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level after a test that configures logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def test_the_json_format_is_one_object_per_line_with_the_event_fields(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="info", fmt="json", node="s0")
    logger = logging.getLogger(MASTERSHIP_LOGGER)
    log_event(logger, logging.INFO, "node %s is master", "s0", group=2, ballot=17, message="x")
    logging.getLogger("pxq.other").debug("below the level: not written")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("pxq.other").exception("with a traceback")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == MASTERSHIP_LOGGER
    assert first["message"] == "node s0 is master", "a field never overwrites the message"
    assert (first["node"], first["group"], first["ballot"]) == ("s0", 2, 17)
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_the_text_format_names_the_node_and_a_bad_format_is_refused(root_logging: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    record = logging.LogRecord("pxq.x", logging.INFO, __file__, 1, "plain %s", ("line",), None)
    assert json.loads(handler.format(record))["message"] == "plain line"
    with pytest.raises(ValueError, match="log format"):
        configure_logging(fmt="xml")  # type: ignore[arg-type]


# -- metrics ------------------------------------------------------------------------------------


def scrape(address: tuple[str, int]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the endpoint: {sample name: {sorted labels: value}}."""
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def one(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    series = samples[name]
    return series[tuple(sorted(labels.items()))]


def test_the_metrics_endpoint_counts_enqueues_and_shows_lag_paxos_and_storage(
    tmp_path: Path,
) -> None:
    config = loads_config(one_queue_toml(free_ports(1)), file="<test>")
    enqueued, consumed = 7, 3

    async def scenario() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        server = MetricsServer.start(cluster.runners["s0"], "127.0.0.1", 0)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                for i in range(enqueued):
                    await client.enqueue(TOPIC, b"item %d" % i, key=f"k{i}")
                consumer = client.consumer(GROUP, TOPIC, options={"get_items_max": 1})
                seen = 0
                async with consumer:
                    async for batch in consumer.batches():
                        seen += len(batch.items)
                        if seen >= consumed:
                            consumer.stop()  # this batch is still committed
            return await asyncio.to_thread(scrape, server.address)
        finally:
            server.close()
            await cluster.stop()

    samples = run_async(scenario(), timeout_s=40.0)
    assert one(samples, "pxq_requests_total", request="Enqueue") == enqueued
    assert one(samples, "pxq_requests_total", request="Get") >= consumed
    assert one(samples, "pxq_requests_total", request="CommitCursor") >= 1
    assert one(samples, "pxq_queue_end_offset", topic=TOPIC, queue="0") == enqueued
    assert one(samples, "pxq_queue_stored_items", topic=TOPIC, queue="0") == enqueued
    q = {"topic": TOPIC, "consumer_group": GROUP, "queue": "0"}
    assert one(samples, "pxq_consumer_cursor", **q) == consumed
    assert one(samples, "pxq_consumer_lag", **q) == enqueued - consumed
    g = {"service": STORE, "paxos_group": "0"}
    assert one(samples, "pxq_paxos_master", **g) == 1
    assert one(samples, "pxq_paxos_role", role="leader", **g) == 1
    assert one(samples, "pxq_paxos_role", role="follower", **g) == 0
    applied = one(samples, "pxq_paxos_applied_instance", **g)
    assert applied >= enqueued  # one instance per enqueue at least (they were sequential)
    assert one(samples, "pxq_paxos_chosen_instance", **g) >= applied
    assert one(samples, "pxq_paxos_ballot", **g) > 0
    commits = one(samples, "pxq_commits_total")
    assert commits >= enqueued
    histogram = samples["pxq_commit_seconds_bucket"]
    # Every commit is timed (the count may include the one of a commit running at the scrape).
    assert one(samples, "pxq_commit_seconds_count") >= commits
    assert histogram[(("le", "+Inf"),)] == one(samples, "pxq_commit_seconds_count")
    assert 0 < one(samples, "pxq_commit_seconds_sum") < one(samples, "pxq_commit_seconds_count")
    for reason in REFUSAL_REASONS:
        assert one(samples, "pxq_refusals_total", reason=reason) == 0
    used = one(samples, "pxq_storage_used_bytes")
    assert 0 < used <= one(samples, "pxq_storage_file_bytes")
    assert one(samples, "pxq_storage_map_size_bytes") >= used
    assert one(samples, "pxq_storage_checkpoints_total") >= 1  # at least the open's
    assert one(samples, "pxq_storage_log_rewinds_total") >= 1  # the open's
    # The checkpointer times every checkpoint but the open's (and may be done with one
    # that the storage has not taken yet).
    checkpoints = one(samples, "pxq_storage_checkpoints_total")
    assert checkpoints - 1 <= one(samples, "pxq_checkpoint_seconds_count") <= checkpoints
    held_max = BACKLOG_CHECKPOINTS * NetConfig().checkpoint_batches
    assert 0 <= one(samples, "pxq_storage_log_batches") <= held_max
    assert one(samples, "pxq_storage_available_bytes") > one(samples, "pxq_storage_reserve_bytes")
    assert one(samples, "pxq_storage_short") == 0
    info = one(samples, "pxq_node_info", cluster="test", node="s0", service=STORE)
    assert info == 1 and one(samples, "pxq_node_running") == 1


def test_a_storage_refusal_is_counted_in_metrics_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reserve larger than the map: every enqueue is refused storage_full."""
    from net.client.types import EnqueueFailed

    net = NetConfig(
        first_frame_timeout_ms=FAST.first_frame_timeout_ms,
        map_size_bytes=1 * MIB,
        map_size_max_bytes=4 * MIB,
        storage_reserve_bytes=4 * MIB - 1,
    )
    config = loads_config(one_queue_toml(free_ports(1)), file="<test>")

    async def scenario() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        cluster = await LocalCluster.start(config, tmp_path, net)
        server = MetricsServer.start(cluster.runners["s0"], "127.0.0.1", 0)
        try:
            await cluster.wait_for_masters(timeout_s=10.0)
            async with await AsyncClient.connect(config, net_config=FAST) as client:
                for _ in range(2):
                    with pytest.raises(EnqueueFailed, match="storage"):
                        await client.enqueue(TOPIC, b"refused")
            return await asyncio.to_thread(scrape, server.address)
        finally:
            server.close()
            await cluster.stop()

    with caplog.at_level(logging.INFO, logger=STORAGE_LOGGER):
        samples = run_async(scenario(), timeout_s=40.0)
    assert one(samples, "pxq_refusals_total", reason="storage_full") == 2
    assert one(samples, "pxq_storage_short") == 1
    lines = records(caplog, STORAGE_LOGGER)
    # Over its limit at start (it starts read-only), then the crossing stepped into the node:
    # one line each, however many enqueues are refused.
    low = [r for r in lines if "storage low" in r.getMessage()]
    assert len(low) == 1, [r.getMessage() for r in lines]
    assert "refuses enqueues (storage_full)" in low[0].getMessage()
    for r in lines:
        assert fields_of(r)["node"] == "s0" and fields_of(r)["short"] is True, r


def test_a_stopped_node_scrapes_as_not_running(tmp_path: Path) -> None:
    config = loads_config(one_queue_toml(free_ports(1)), file="<test>")

    async def scenario() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        cluster = await LocalCluster.start(config, tmp_path, FAST)
        server = MetricsServer.start(cluster.runners["s0"], "127.0.0.1", 0)
        try:
            await cluster.stop()
            return await asyncio.to_thread(scrape, server.address)
        finally:
            server.close()

    samples = run_async(scenario(), timeout_s=20.0)
    assert one(samples, "pxq_node_running") == 0


# -- configuration ------------------------------------------------------------------------------


def test_metrics_ports_come_from_the_offset_or_the_replica_and_must_not_collide() -> None:
    base = cluster_toml([7101, 7102, 7103])
    config: ClusterConfig = loads_config(base + "\n[metrics]\nenabled = true\n", file="<t>")
    assert config.metrics.enabled
    assert [n.metrics_port for n in config.all_nodes()] == [8101, 8102, 8103]
    own = base.replace("port = 7102\n", "port = 7102\nmetrics_port = 9000\n")
    assert [n.metrics_port for n in loads_config(own, file="<t>").all_nodes()][1] == 9000
    assert not loads_config(base, file="<t>").metrics.enabled, "off by default"
    with pytest.raises(ConfigError, match="already used by stores"):
        loads_config(base + "\n[metrics]\nenabled = true\nport_offset = 1\n", file="<t>")
    clash = base.replace("port = 7102\n", "port = 7102\nmetrics_port = 7101\n")
    with pytest.raises(ConfigError, match="metrics_port"):
        loads_config(clash, file="<t>")
