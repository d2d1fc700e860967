"""Registers at the lock node (``pxq.lock.node.LockNode``), in the deterministic in-process
cluster of ``tests/test_lock_node.py``.

Behaviours checked: writes, cas and reads through the log are proposed to the key's group and
answered by its master; a local read is answered by the master in the same step from its
applied state (and agrees with one through the log); followers redirect every register
request; invalid requests (bad key, value, expected value or fence, a fence lock of another
group) are refused at once without a proposal; they need the ``locks`` permission (a refusal
is a definite ``LockError``); a fence is judged at the command's time on
the replicated lock table; the register survives a failover of its group's master.
"""

from __future__ import annotations

import pytest

from pxq.access import LOCKS, Refusal, refusal_response, required_permission
from pxq.lock.messages import (
    VALUE_BYTES_MAX,
    CasRegister,
    LockError,
    LockOk,
    LockRedirect,
    ReadRegister,
    RegisterMismatch,
    RegisterOk,
    WriteRegister,
    group_of_key,
)
from tests.test_lock_node import NAMES, LockCluster, acquire


def test_register_requests_through_the_master() -> None:
    c = LockCluster.make()
    m = c.master_of_key("app/r")
    node = c.node(m)
    group = node.group_of("app/r")
    applied = node.applied(group)
    first = c.request(m, WriteRegister(key="app/r", value=b"one"))
    assert isinstance(first, RegisterOk) and (first.value, first.version) == (b"one", 1)
    assert node.applied(group) == applied + 1  # it went through the log
    swapped = c.request(m, CasRegister(key="app/r", expected=b"one", value=b"two"))
    assert isinstance(swapped, RegisterOk) and swapped.version == 2
    refused = c.request(m, CasRegister(key="app/r", expected=None, value=b"x"))
    assert isinstance(refused, RegisterMismatch) and (refused.value, refused.version) == (
        b"two",
        2,
    )
    logged = c.request(m, ReadRegister(key="app/r", through_log=True))
    local = c.responses[c.call(m, ReadRegister(key="app/r"))]  # answered in the same step
    assert isinstance(logged, RegisterOk) and isinstance(local, RegisterOk)
    assert (logged.value, logged.version) == (local.value, local.version) == (b"two", 2)
    never = c.responses[c.call(m, ReadRegister(key="app/none"))]
    assert isinstance(never, RegisterOk) and (never.value, never.version) == (None, 0)


def test_followers_redirect_register_requests() -> None:
    c = LockCluster.make()
    m = c.master_of_key("app/r")
    c.run(300)  # heartbeats tell the followers who the master is
    for name in NAMES:
        if name == m:
            continue
        assert c.request(name, WriteRegister(key="app/r", value=b"v")) == LockRedirect(master=m)
        assert c.responses[c.call(name, ReadRegister(key="app/r"))] == LockRedirect(master=m)


def other_group_lock(groups: int) -> str:
    home = group_of_key("app/r", groups)
    return next(f"d{i}/lock" for i in range(100) if group_of_key(f"d{i}/lock", groups) != home)


@pytest.mark.parametrize(
    "request_",
    [
        WriteRegister(key="", value=b"v"),
        WriteRegister(key="k" * 256, value=b"v"),
        WriteRegister(key="app/r", value=b"v" * (VALUE_BYTES_MAX + 1)),
        WriteRegister(key="app/r", value="text"),  # type: ignore[arg-type]
        CasRegister(key="app/r", expected="old", value=b"v"),  # type: ignore[arg-type]
        CasRegister(key="app/r", expected=b"v" * (VALUE_BYTES_MAX + 1), value=b"v"),
        WriteRegister(key="app/r", value=b"v", fence=("", 1)),
        WriteRegister(key="app/r", value=b"v", fence=("app/lock", -1)),
        WriteRegister(key="app/r", value=b"v", fence=("app/lock",)),  # type: ignore[arg-type]
        WriteRegister(key="app/r", value=b"v", fence=(other_group_lock(2), 1)),
        ReadRegister(key=""),
        ReadRegister(key="app/r", through_log=1),  # type: ignore[arg-type]
    ],
)
def test_invalid_register_requests_fail_at_once_without_a_proposal(request_: object) -> None:
    c = LockCluster.make(groups=2)
    m = c.master_of_key("app/r")
    group = c.node(m).group_of("app/r")
    applied = c.node(m).applied(group)
    r = c.responses[c.call(m, request_)]  # answered in the same step
    assert isinstance(r, LockError) and r.definite and r.code == "bad_request", r
    c.run(50)
    assert c.node(m).applied(group) == applied


def test_a_fence_is_judged_on_the_replicated_lock_table_across_a_failover() -> None:
    c = LockCluster.make(groups=1)
    m = c.wait_master(0)
    fenced = c.request(m, WriteRegister(key="app/r", value=b"v", fence=("app/lock", 1)))
    assert isinstance(fenced, LockError) and fenced.code == "fenced" and fenced.definite
    grant = c.request(m, acquire("app/lock", "me", 5000))
    assert isinstance(grant, LockOk) and grant.version == 1
    ok = c.request(m, WriteRegister(key="app/r", value=b"v", fence=("app/lock", 1)))
    assert isinstance(ok, RegisterOk) and ok.version == 1
    c.crash(m)
    m2 = c.wait_master(0)
    assert m2 != m
    read = c.request(m2, ReadRegister(key="app/r", through_log=True))
    assert isinstance(read, RegisterOk) and (read.value, read.version) == (b"v", 1)
    again = c.request(
        m2, CasRegister(key="app/r", expected=b"v", value=b"w", fence=("app/lock", 1))
    )
    assert isinstance(again, RegisterOk) and again.version == 2


@pytest.mark.parametrize(
    "request_",
    [
        ReadRegister(key="app/r"),
        WriteRegister(key="app/r", value=b"v"),
        CasRegister(key="app/r", expected=None, value=b"v"),
    ],
)
def test_register_requests_need_the_locks_permission(request_: object) -> None:
    assert required_permission(request_) == LOCKS
    refusal = Refusal(principal="client:app", permission=LOCKS)
    answer = refusal_response(request_, refusal)
    assert isinstance(answer, LockError) and answer.code == "permission_denied" and answer.definite
