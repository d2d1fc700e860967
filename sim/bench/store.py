"""CPU cost of the queue state machine, per item: ``python -m sim.bench.store``.

Measures ``time.process_time`` (CPU of this process) for

* ``enqueue``: applying enqueue commands of 100 items of 100 bytes to a ``QueueStore`` whose
  storage view is a ``MemoryStore`` (10 commands per Paxos instance, one instance per step,
  the step's writes applied to the store afterwards as a driver would). ``apply`` counts the
  state machine alone, ``with_writes`` adds applying its writes to the ``MemoryStore``;
  ``encode`` is the node's cost of building the command from an ``Enqueue`` request;
* ``get``: ``QueueStore.get`` of 100 items per call, walking the queue from its start;
* ``commit``: applying one ``CommitCursor`` command (one per value, 10 per instance).

and prints one JSON object. Best of ``--repeat`` runs. Not a test: figures depend on the
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

from pxq.config.default import default_config
from pxq.effects import EffectsBuilder
from pxq.store.commands import CommitCmd, EnqueueCmd, encode_command
from pxq.store.messages import Enqueue, Get, GetOk, Item
from pxq.store.records import pack_items
from pxq.store.sm import QueueStore
from sim.memstore import MemoryStore

ITEMS_PER_ENQUEUE = 100
PAYLOAD_BYTES = 100
VALUES_PER_INSTANCE = 10


def _best(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def bench(enqueues: int, repeat: int) -> dict[str, object]:
    config = default_config()
    topic, queue, group = "events", 1, 1  # queue 1 lives in group 1 of the default store
    payload = b"p" * PAYLOAD_BYTES
    request = Enqueue(
        topic=topic,
        queue=queue,
        producer="bench",
        seq=0,
        items=tuple(
            Item(key=f"key-{i:04d}".encode(), payload=payload) for i in range(ITEMS_PER_ENQUEUE)
        ),
    )

    def make_values(start_seq: int) -> list[bytes]:
        return [
            encode_command(
                EnqueueCmd(
                    producer="bench",
                    seq=start_seq + n,
                    topic=topic,
                    queue=queue,
                    wall_ms=1_700_000_000_000 + n,
                    items=pack_items([(it.key, it.payload, it.kind) for it in request.items]),
                )
            )
            for n in range(enqueues)
        ]

    values = make_values(1)
    state: dict[str, object] = {}

    def run_enqueue(with_writes: bool) -> float:
        mem = MemoryStore()
        qs = QueueStore(mem, group, config, "store0")
        qs.load()
        cpu = 0.0
        for instance, i in enumerate(range(0, len(values), VALUES_PER_INSTANCE), start=1):
            fx = EffectsBuilder()
            t0 = time.process_time()
            for slot, v in enumerate(values[i : i + VALUES_PER_INSTANCE]):
                qs.apply(instance, slot, v, fx)
            qs.end_step()
            if with_writes:
                mem.apply(fx.writes)
                cpu += time.process_time() - t0
            else:
                cpu += time.process_time() - t0
                mem.apply(fx.writes)
        state["mem"], state["qs"] = mem, qs
        return cpu / (len(values) * ITEMS_PER_ENQUEUE) * 1e6

    def run_encode() -> float:
        t0 = time.process_time()
        for n in range(enqueues):
            encode_command(
                EnqueueCmd(
                    producer="bench",
                    seq=n,
                    topic=topic,
                    queue=queue,
                    wall_ms=n,
                    items=pack_items([(it.key, it.payload, it.kind) for it in request.items]),
                )
            )
        return (time.process_time() - t0) / (enqueues * ITEMS_PER_ENQUEUE) * 1e6

    apply_us = _best(repeat, lambda: run_enqueue(False))
    with_writes_us = _best(repeat, lambda: run_enqueue(True))
    encode_us = _best(repeat, run_encode)
    mem = state["mem"]
    qs = state["qs"]
    assert isinstance(mem, MemoryStore) and isinstance(qs, QueueStore)
    total_items = enqueues * ITEMS_PER_ENQUEUE
    stored_bytes = mem.size_bytes()

    def run_get() -> float:
        cursor, calls, got = 0, 0, 0
        t0 = time.process_time()
        while True:
            r = qs.get(
                Get(
                    topic=topic,
                    group="default",
                    queue=queue,
                    cursor=cursor,
                    items_max=100,
                    bytes_max=1 << 30,
                ),
                now_ms=0,
            )
            if not isinstance(r, GetOk) or not r.items:
                break
            calls += 1
            got += len(r.items)
            cursor = r.next_cursor
        cpu = time.process_time() - t0
        if got != total_items:
            raise RuntimeError(f"get returned {got} items, expected {total_items}")
        return cpu / got * 1e6

    get_us = _best(repeat, run_get)

    commits = enqueues * 10

    def run_commit() -> float:
        fresh_mem = mem.copy()
        q2 = QueueStore(fresh_mem, group, config, "store0")
        q2.load()
        vals = [
            encode_command(
                CommitCmd(topic=topic, group="default", queue=queue, cursor=c + 1, token=0)
            )
            for c in range(commits)
        ]
        cpu = 0.0
        for i in range(0, len(vals), VALUES_PER_INSTANCE):
            fx = EffectsBuilder()
            t0 = time.process_time()
            for slot, v in enumerate(vals[i : i + VALUES_PER_INSTANCE]):
                q2.apply(10_000 + i, slot, v, fx)
            q2.end_step()
            cpu += time.process_time() - t0
            fresh_mem.apply(fx.writes)
        return cpu / commits * 1e6

    commit_us = _best(repeat, run_commit)
    return {
        "items_per_enqueue": ITEMS_PER_ENQUEUE,
        "payload_bytes": PAYLOAD_BYTES,
        "values_per_instance": VALUES_PER_INSTANCE,
        "enqueues": enqueues,
        "enqueue_apply_us_per_item": round(apply_us, 3),
        "enqueue_apply_with_writes_us_per_item": round(with_writes_us, 3),
        "enqueue_encode_us_per_item": round(encode_us, 3),
        "get_us_per_item": round(get_us, 3),
        "get_items_per_call": 100,
        "commit_us_per_commit": round(commit_us, 3),
        "stored_bytes_per_item": round(stored_bytes / total_items, 1),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "repeat": repeat,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--enqueues", type=int, default=2000, help="enqueue commands to apply")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is kept)")
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.enqueues, args.repeat), indent=2))


if __name__ == "__main__":
    main()
