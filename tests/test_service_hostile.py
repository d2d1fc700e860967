"""Hostile clients: no well-formed request crashes a store or lock replica or poisons its disk.

A client can send any registered request with any field values the codec allows: unknown
topics, queues, groups and keys, counters at the edges of every integer format (a cursor of
2**64 - 1, a negative queue, ``items_max`` of 2**63), empty and odd strings, item headers
out of normal form (unsorted, duplicate, empty or oversized names, lone surrogates). Sent to masters
and followers alike, interleaved with elections, crashes and restarts, each request gets an
answer or a redirect, no replica raises, and every replica restarts from its disk. What a
request may do (its permissions) is another matter: ``docs/security.md``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxq.lock.messages import Acquire, ListLocks, ReadLock, Release, Renew
from pxq.store.messages import CommitCursor, Enqueue, Get, Retry, Seek, SeekPreview
from tests.hostile import ints, messages_of, small
from tests.test_lock_node import NAMES, LockCluster
from tests.test_store_node import StoreCluster

topics = st.sampled_from(("events", "events", "", "nope", "events.retry.1", "events.dead"))
groups = st.sampled_from(("default", "default", "", "nope"))
queues = st.one_of(small, ints)
keys = st.sampled_from(("a", "q/g0/t0/1", "", "/", "a" * 300))
holders = st.sampled_from(("c1", "c2", ""))
header_texts = st.sampled_from(("a", "b", "trace-id", "", "\udc80", "h" * 70))

store_requests = st.one_of(
    *(
        messages_of(
            cls,
            ints_by_name={"queue": queues},
            strs_by_name={
                "topic": topics,
                "group": groups,
                "producer": holders,
                "headers": header_texts,
            },
        )
        for cls in (Enqueue, Get, CommitCursor, Seek, Retry, SeekPreview)
    )
)
lock_requests = st.one_of(
    *(
        messages_of(cls, strs_by_name={"key": keys, "holder": holders, "prefix": keys})
        for cls in (Acquire, Renew, Release, ReadLock, ListLocks)
    )
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _drive(c: Any, names: tuple[str, ...], script: list[tuple[Any, ...]]) -> None:
    calls: list[int] = []
    for action in script:
        match action:
            case ("call", i, request):
                calls.append(c.call(names[i % len(names)], request))
            case ("run", ms):
                c.run(ms)
            case ("restart", i):
                c.crash(names[i % len(names)])
                c.restart(names[i % len(names)])
    c.run(3000)
    for name in names:
        c.crash(name)
        c.restart(name)  # every record a request made a replica write can be read back
    c.run(3000)


def _script(requests: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("call"), st.integers(0, 2), requests),
            st.tuples(st.just("call"), st.integers(0, 2), requests),
            st.tuples(st.just("run"), st.integers(1, 300)),
            st.tuples(st.just("restart"), st.integers(0, 2)),
        ),
        min_size=3,
        max_size=25,
    )


@SETTINGS
@given(script=_script(store_requests))
def test_no_request_crashes_a_store_replica(script: list[tuple[Any, ...]]) -> None:
    c = StoreCluster.make()
    c.run(3000)
    _drive(c, c.names, script)


@SETTINGS
@given(script=_script(lock_requests))
def test_no_request_crashes_a_lock_replica(script: list[tuple[Any, ...]]) -> None:
    c = LockCluster.make()
    c.run(3000)
    _drive(c, NAMES, script)
