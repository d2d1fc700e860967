"""Load balancing by measured load, and the scheduler node.

``balance``: the scheduler's rebalancing with hysteresis, pure; ``node``: the scheduler
machine. What consumers share with it lives outside this package, so neither imports the
other: rendezvous hashing in ``pxq.rendezvous``, the lock-service keys and values (assignment,
load reports, membership) in ``pxq.lockkeys``. Nothing is re-exported here.
"""
