"""pxq: a Paxos-replicated distributed queue, simulation-first.

The pure protocol core lives in this package; ``sim`` drives it in a deterministic simulated
world and ``net`` on real sockets with LMDB. Public names that live in the drivers are
re-exported lazily (``__getattr__``) so that importing ``pxq`` never imports a runtime: the
client API (``pxq.AsyncClient``, ``pxq.Client``, ``pxq.Receipt``, ``pxq.Item``,
``pxq.Batch``, and the errors ``pxq.PxqError``, ``pxq.OutcomeUnknown``,
``pxq.EnqueueFailed``, ``pxq.RequestFailed``, ``pxq.PermissionDenied``, ``pxq.SeekResult``,
``pxq.RegisterValue``, ``pxq.CasMismatch``...) is loaded from ``net.client.api`` (the
blocking ``pxq.Client`` from ``net.client.blocking``) on first access. The module is named as a string on purpose: the pure core has no import of ``net``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    **{
        name: "net.client.api"
        for name in (
            "AsyncClient",
            "AsyncConsumer",
            "Batch",
            "CasMismatch",
            "ClientClosed",
            "ClusterMismatch",
            "EnqueueFailed",
            "Item",
            "MachineFailed",
            "OutcomeUnknown",
            "PermissionDenied",
            "PxqError",
            "Receipt",
            "RegisterValue",
            "RequestFailed",
            "SeekResult",
        )
    },
    "BlockingConsumer": "net.client.blocking",
    "Client": "net.client.blocking",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pxq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
