"""The registers of the lock service from the client: ``AsyncClient.register_*``, the blocking
``Client``'s, and ``pxq register read|write|cas``.

Goal: the calls do what their docstrings say against a real cluster (an in-process
``LocalCluster``: one store replica and three lock replicas in two lock groups, on a
background loop, module-scoped): a register never written reads (None, 0); writes return
growing versions; a cas returns the new version or raises ``CasMismatch`` naming the current
value and version; a fenced write is applied while its lock is held with the fence's version
and refused ``fenced`` otherwise; arguments are checked before anything is sent. The CLI
prints what its help says with the documented exit codes (1 for a mismatch or a fenced
refusal, 2 for bad input); they run in this process (``CliRunner``), as a subprocess would
run them but without its start-up time. The outcome rules of ``net.client.registers`` (a
write is never re-sent once it may have been applied; a read is) are checked against a
scripted pool.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import pxq
from net.client.api import AsyncClient
from net.client.blocking import Client
from net.client.registers import register_call
from net.errors import CallTimeout, ConnectRefused
from pxq.cli import main
from pxq.config import ClusterConfig, loads_config
from pxq.lock.messages import (
    Acquire,
    LockError,
    LockOk,
    LockRedirect,
    ReadRegister,
    RegisterOk,
    WriteRegister,
    group_of_key,
)
from tests.test_client_support import BackgroundCluster, free_ports
from tests.test_net_cluster import cluster_toml

FENCE_LOCK = "app/lock"
"""A lock in the directory of the registers ``app/...`` (so in their lock group)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundCluster]:
    root = tmp_path_factory.mktemp("registers")
    ports = free_ports(4)
    toml = cluster_toml(ports[:1], groups=1, lock_ports=ports[1:], lock_groups=2)
    background = BackgroundCluster(root, toml)
    try:
        background.run(background.cluster.wait_for_lock_masters(timeout_s=20.0))
        yield background
    finally:
        background.stop()


def other_group_key(config: ClusterConfig, key: str) -> str:
    locks = config.locks
    assert locks is not None
    group = group_of_key(key, locks.groups)
    return next(
        k for k in (f"d{i}/lock" for i in range(100)) if group_of_key(k, locks.groups) != group
    )


def test_register_calls_of_the_async_client(cluster: BackgroundCluster) -> None:
    async def scenario() -> None:
        async with await AsyncClient.connect(cluster.config) as client:
            assert await client.register_read("app/a") == pxq.RegisterValue(value=None, version=0)
            assert await client.register_write("app/a", b"one") == 1
            assert await client.register_read("app/a") == pxq.RegisterValue(value=b"one", version=1)
            with pytest.raises(pxq.CasMismatch) as mismatch:
                await client.register_cas("app/a", b"zero", b"two")
            assert (mismatch.value.current, mismatch.value.version) == (b"one", 1)
            assert mismatch.value.code == "mismatch"
            assert isinstance(mismatch.value, pxq.RequestFailed)
            assert await client.register_cas("app/a", b"one", b"two") == 2
            got = await client.register_read("app/a", through_log=True)
            assert got == pxq.RegisterValue(value=b"two", version=2)
            assert await client.register_cas("app/new", None, b"first") == 1
            with pytest.raises(pxq.CasMismatch) as again:
                await client.register_cas("app/new", None, b"second")
            assert (again.value.current, again.value.version) == (b"first", 1)

            # Fenced by a lock of the same directory: held with version 1 by "me".
            with pytest.raises(pxq.RequestFailed) as fenced:
                await client.register_write("app/a", b"x", fence=(FENCE_LOCK, 1))
            assert fenced.value.code == "fenced"
            grant = await client._lock_call(
                FENCE_LOCK, Acquire(key=FENCE_LOCK, holder="me", lease_ms=30_000)
            )
            assert isinstance(grant, LockOk) and grant.version == 1
            assert await client.register_write("app/a", b"x", fence=(FENCE_LOCK, 1)) == 3
            assert await client.register_cas("app/a", b"x", b"y", fence=(FENCE_LOCK, 1)) == 4
            with pytest.raises(pxq.RequestFailed) as stale:
                await client.register_write("app/a", b"z", fence=(FENCE_LOCK, 2))
            assert stale.value.code == "fenced"
            assert await client.register_read("app/a") == pxq.RegisterValue(value=b"y", version=4)

            # Checked before anything is sent.
            bad: list[tuple[type[Exception], object]] = [
                (TypeError, client.register_write("app/a", "text")),  # type: ignore[arg-type]
                (TypeError, client.register_read(b"app/a")),  # type: ignore[arg-type]
                (ValueError, client.register_read("")),
                (ValueError, client.register_write("k" * 256, b"v")),
                (ValueError, client.register_write("app/a", b"v" * 65537)),
                (TypeError, client.register_cas("app/a", "old", b"v")),  # type: ignore[arg-type]
                (TypeError, client.register_write("app/a", b"v", fence=("app/lock",))),  # type: ignore[arg-type]
                (TypeError, client.register_write("app/a", b"v", fence=("app/lock", "1"))),  # type: ignore[arg-type]
                (
                    ValueError,
                    client.register_write(
                        "app/a", b"v", fence=(other_group_key(cluster.config, "app/a"), 1)
                    ),
                ),
            ]
            for error, call in bad:
                with pytest.raises(error):
                    await call  # type: ignore[misc]

    cluster.run(scenario())


def test_register_calls_of_the_blocking_client(cluster: BackgroundCluster) -> None:
    with Client(cluster.config_path) as client:
        assert client.register_read("app/blocking").version == 0
        assert client.register_write("app/blocking", b"v") == 1
        assert client.register_cas("app/blocking", b"v", b"w") == 2
        with pytest.raises(pxq.CasMismatch):
            client.register_cas("app/blocking", b"v", b"w")
        assert client.register_read("app/blocking", through_log=True).value == b"w"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def pxq_cli(*args: str) -> Ran:
    """``pxq register ARGS`` in this process (the cluster runs on another thread's loop)."""
    result = CliRunner().invoke(main, ["register", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def test_pxq_register_commands(cluster: BackgroundCluster) -> None:
    config = ("--config", str(cluster.config_path))
    unwritten = pxq_cli("read", "cli/r", *config)
    assert (unwritten.returncode, unwritten.stdout) == (0, "0\n"), unwritten.stderr
    written = pxq_cli("write", "cli/r", "hello\tworld", *config)
    assert (written.returncode, written.stdout) == (0, "1\n"), written.stderr
    read = pxq_cli("read", "cli/r", "--through-log", *config)
    assert (read.returncode, read.stdout) == (0, "1\thello\\tworld\n")
    mismatch = pxq_cli("cas", "cli/r", "next", "--expected", "other", "--json", *config)
    assert mismatch.returncode == 1
    assert json.loads(mismatch.stdout) == {
        "key": "cli/r",
        "ok": False,
        "version": 1,
        "current": "hello\tworld",
    }
    assert "cas mismatch" in mismatch.stderr and "version 1" in mismatch.stderr
    swapped = pxq_cli("cas", "cli/r", "/wA=", "--expected", "aGVsbG8Jd29ybGQ=", "--base64", *config)
    assert (swapped.returncode, swapped.stdout) == (0, "2\n"), swapped.stderr
    binary = json.loads(pxq_cli("read", "cli/r", "--json", *config).stdout)
    assert binary == {"key": "cli/r", "ok": True, "version": 2, "value_b64": "/wA="}
    first = pxq_cli("cas", "cli/new", "v", "--unwritten", "--json", *config)
    assert json.loads(first.stdout) == {"key": "cli/new", "ok": True, "version": 1}
    fenced = pxq_cli("write", "cli/r", "v", "--fence", "cli/lock", "7", *config)
    assert fenced.returncode == 1 and "fenced" in fenced.stderr
    for args in (
        ("cas", "cli/r", "v"),  # neither --expected nor --unwritten
        ("cas", "cli/r", "v", "--expected", "a", "--unwritten"),
        ("write", "cli/r", "%%%", "--base64"),
        ("write", "k" * 256, "v"),
    ):
        result = pxq_cli(*args, *config)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("pxq: error:"), result.stderr


# --------------------------------------------------------------------------------------------
# Outcome rules against a scripted pool


class ScriptedPool:
    """Answers each call with the next scripted answer (an exception is raised)."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, object]] = []

    async def call(self, node: str, request: object, timeout_s: float) -> object:
        self.calls.append((node, request))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def scripted(answers: list[object], request: object) -> tuple[object, ScriptedPool]:
    config = loads_config(
        cluster_toml(free_ports(1), groups=1, lock_ports=free_ports(3)), file="<test>"
    )
    pool = ScriptedPool(answers)

    async def go() -> object:
        try:
            return await register_call(
                pool,  # type: ignore[arg-type]
                config,
                random.Random(1),
                request,  # type: ignore[arg-type]
                request_timeout_ms=100,
                call_timeout_ms=5000,
            )
        except pxq.PxqError as exc:
            return exc

    return asyncio.run(go()), pool


OK = RegisterOk(key="k", value=b"v", version=1, at_ms=5)


def test_a_write_is_not_sent_again_once_it_may_have_been_applied() -> None:
    write = WriteRegister(key="k", value=b"v")
    for maybe in (CallTimeout("lost"), LockError(code="unknown", message="m", definite=False)):
        outcome, pool = scripted([maybe, OK], write)
        assert isinstance(outcome, pxq.OutcomeUnknown), outcome
        assert len(pool.calls) == 1


def test_a_write_follows_redirects_and_unsent_calls_until_answered() -> None:
    write = WriteRegister(key="k", value=b"v")
    outcome, pool = scripted(
        [ConnectRefused("down"), LockRedirect(master="l2"), LockRedirect(master=None), OK], write
    )
    assert outcome == OK
    assert [node for node, _ in pool.calls][2] == "l2"


def test_a_read_is_sent_again_after_a_timeout() -> None:
    outcome, pool = scripted(
        [CallTimeout("lost"), LockError(code="unknown", message="m", definite=False), OK],
        ReadRegister(key="k"),
    )
    assert outcome == OK and len(pool.calls) == 3
    assert len({node for node, _ in pool.calls[:2]}) == 2  # the next replica
