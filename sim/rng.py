"""Seeded randomness for the simulator: one seed, independent named streams.

Every random choice in a run comes from ``stream(seed, name)``, a ``random.Random`` seeded
with the string ``f"{seed}/{name}"``. String seeding (version 2) hashes with SHA-512, so the
streams do not depend on ``PYTHONHASHSEED``; and since each component draws from its own
stream, adding a fault or a client does not shift the draws of the others.
"""

from __future__ import annotations

import random


def stream(seed: int, name: str) -> random.Random:
    """The random stream called ``name`` of the run with ``seed``."""
    return random.Random(f"{seed}/{name}")
