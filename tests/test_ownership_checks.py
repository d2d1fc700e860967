"""The ownership checkers (pxq/check/ownership.py) on hand-made histories: each passes a
correct history and catches the violation it exists for."""

from __future__ import annotations

from pxq.check.history import HistoryWriter, Op
from pxq.check.ownership import check_failover, check_ownership, check_rate_limit

Q = {"group": "g", "topic": "t", "queue": 0}


class H:
    def __init__(self) -> None:
        self.w = HistoryWriter()

    def own(self, t: int, c: str, f: str, token: int, holder: str | None = None) -> None:
        extra = dict(Q, token=token, holder=holder or f"{c}#1")
        self.w.invoke(t, c, f, c, **extra)  # type: ignore[arg-type]
        self.w.ok(t, c, f, c, **extra)  # type: ignore[arg-type]

    def deliver(self, t: int, c: str, topic: str = "t") -> None:
        extra = dict(Q, topic=topic, offset=t, attempt=0)
        self.w.invoke(t, c, "deliver", f"m{t}", **extra)  # type: ignore[arg-type]
        self.w.ok(t, c, "deliver", f"m{t}", **extra)  # type: ignore[arg-type]

    def nemesis(self, t: int, f: str, *targets: str) -> None:
        self.w.invoke(t, "nemesis", f, list(targets))
        self.w.info(t, "nemesis", f, list(targets))

    @property
    def ops(self) -> list[Op]:
        return self.w.ops


def test_clean_handover_passes() -> None:
    h = H()
    h.own(0, "a", "own_start", 1)
    h.deliver(10, "a")
    h.deliver(11, "a", topic="t.retry.g.1")
    h.own(20, "a", "own_stop", 1)
    h.own(25, "b", "own_start", 2)
    h.deliver(30, "b")
    r = check_ownership(h.ops, ["a", "b"])
    assert r.ok, r.summary
    assert r.details["grants"] == 2 and r.details["deliveries"] == 3


def test_stale_owner_delivering_after_newer_grant_is_caught() -> None:
    h = H()
    h.own(0, "a", "own_start", 1)
    h.nemesis(5, "pause", "a")
    h.own(3000, "b", "own_start", 2)
    h.nemesis(4000, "resume", "a")
    h.deliver(4001, "a")  # a did not drop its expired queue before acting
    r = check_ownership(h.ops, ["a", "b"])
    assert not r.ok
    assert r.details["deliver_after_newer_grant"] == 1


def test_unowned_delivery_and_token_order_are_caught() -> None:
    h = H()
    h.own(0, "a", "own_start", 5)
    h.own(10, "a", "own_stop", 5)
    h.deliver(11, "a")
    h.own(20, "b", "own_start", 4)  # lower than a grant already made
    h.own(30, "c", "own_start", 5, holder="c#9")  # a token given twice
    r = check_ownership(h.ops, ["a", "b", "c"])
    assert r.details["deliver_unowned"] == 1
    assert r.details["lower_token_granted"] == 1
    assert r.details["token_granted_twice"] == 1


def test_crash_ends_ownership() -> None:
    h = H()
    h.own(0, "a", "own_start", 1)
    h.nemesis(100, "crash", "a")
    h.deliver(101, "a")
    assert check_ownership(h.ops, ["a"]).details["deliver_unowned"] == 1


def test_failover_times_and_bound() -> None:
    h = H()
    h.own(0, "a", "own_start", 1)
    h.nemesis(1000, "crash", "a")
    h.own(3500, "b", "own_start", 2)
    ok = check_failover(h.ops, ["a", "b"], bound_ms=3000)
    assert ok.ok and ok.details["max_ms"] == 2500
    slow = check_failover(h.ops, ["a", "b"], bound_ms=2000)
    assert not slow.ok and slow.details["slow_failover"] == 1


def test_failover_never_happening_is_caught_but_a_short_pause_is_not() -> None:
    h = H()
    h.own(0, "a", "own_start", 1)
    h.nemesis(1000, "crash", "a")
    h.deliver(9000, "b")  # time goes on, nobody takes the queue
    assert not check_failover(h.ops, ["a", "b"], bound_ms=3000).ok
    p = H()
    p.own(0, "a", "own_start", 1)
    p.nemesis(1000, "pause", "a")
    p.nemesis(1500, "resume", "a")
    p.deliver(9000, "a")
    assert check_failover(p.ops, ["a"], bound_ms=3000).ok


def test_rate_limit_window() -> None:
    h = H()
    for i in range(50):
        h.deliver(i * 10, "a")  # 100 items/s
    assert check_rate_limit(h.ops, ["a"], 100, 10, slack_ms=0).ok
    fast = H()
    for i in range(200):
        fast.deliver(i, "a")  # 1000 items/s for 200 ms
    r = check_rate_limit(fast.ops, ["a"], 100, 10, slack_ms=0)
    over = r.details["over_limit"]
    assert not r.ok and isinstance(over, int) and over >= 1
