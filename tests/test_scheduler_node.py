"""The scheduler machine (pxq/scheduler/node.py) without a lock service: it never asks to be
woken at a time that has passed while its calls are in flight (a busy loop found by profiling
swarm-consumers: 540,000 wake-ups in one run), and its settings are validated."""

from __future__ import annotations

import random

import pytest

from pxq.effects import Boot, Now, Received, Request, Response, Wake
from pxq.lock.messages import LockOk, ReadLock
from pxq.lockkeys import LEADER_KEY, LOCK_REQ_ID_BASE, REQ_ID_BASE_MAX
from pxq.scheduler.node import Scheduler, SchedulerSettings


def make() -> Scheduler:
    return Scheduler(
        SchedulerSettings(
            name="s", groups={"g": (("t", 0), ("t", 1))}, lock_nodes=("l0",), lock_groups=1
        ),
        random.Random(1),
    )


def test_no_wake_up_in_the_past_while_calls_are_in_flight() -> None:
    s = make()
    fx = s.step(Now(mono_ms=0, wall_ms=0), Boot())
    (leader,) = [x for x in fx.sends if isinstance(x.msg, Request)]
    assert isinstance(leader.msg, Request)
    deadline = s.next_deadline()
    assert deadline is not None and deadline > 0
    # Granted: it becomes the leader and reads the assignment in force (a call in flight).
    ok = LockOk(key=LEADER_KEY, holder=s.holder, version=1, expiry_ms=3000, at_ms=0)
    t = Now(mono_ms=5, wall_ms=5)
    fx = s.step(t, Received(src="l0", msg=Response(req_id=leader.msg.req_id, body=ok)))
    assert s.is_leader(5)
    reads = [x for x in fx.sends if isinstance(x.msg, Request) and isinstance(x.msg.body, ReadLock)]
    assert reads
    deadline = s.next_deadline()
    assert deadline is not None and deadline > 5
    # Waking at that deadline does something (re-sends or times out), never nothing forever.
    s.step(Now(mono_ms=deadline, wall_ms=deadline), Wake())
    later = s.next_deadline()
    assert later is not None and later > deadline


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "a/b"), ("margin_ms", 0), ("renew_ms", 5000), ("assignment_lease_ms", 10)],
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    kw: dict[str, object] = {
        "name": "s",
        "groups": {"g": (("t", 0),)},
        "lock_nodes": ("l0",),
        "lock_groups": 1,
        field: value,
    }
    with pytest.raises(ValueError, match=field.split("_", maxsplit=1)[0]):
        SchedulerSettings(**kw)  # type: ignore[arg-type]


def test_each_incarnation_numbers_its_lock_calls_from_its_own_base() -> None:
    # A late reply to a previous incarnation's call can never match this one's: the
    # simulator's network delivers replies by name, across incarnations.
    settings = SchedulerSettings(
        name="s", groups={"g": (("t", 0),)}, lock_nodes=("l0",), lock_groups=1
    )
    s = Scheduler(settings, random.Random(1), req_id_base=3 << 32)
    fx = s.step(Now(mono_ms=0, wall_ms=0), Boot())
    ids = [x.msg.req_id for x in fx.sends if isinstance(x.msg, Request)]
    assert ids == [LOCK_REQ_ID_BASE + (3 << 32) + 1]
    for bad in (-1, REQ_ID_BASE_MAX):
        with pytest.raises(ValueError, match="req_id_base"):
            Scheduler(settings, random.Random(1), req_id_base=bad)
