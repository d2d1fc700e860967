"""pxq: a Paxos-replicated distributed queue, simulation-first.

The pure protocol core lives in this package; ``sim`` drives it in a deterministic simulated
world and ``net`` on real sockets with LMDB. Public names that live in the drivers are
re-exported lazily (``__getattr__``) so that importing ``pxq`` never imports a runtime.
"""

from __future__ import annotations

__version__ = "0.1.0"
