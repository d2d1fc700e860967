"""Load balancing as pure functions, and the scheduler node.

``balance``: which consumer should own which (topic, queue) (rendezvous hashing, and the
scheduler's load rebalancing with hysteresis); ``values``: the encodings of the assignment and
of load reports stored in the lock service; ``node``: the scheduler machine. Nothing is
re-exported here, so importing ``pxq.scheduler.balance`` (as consumers do) does not import the
node.
"""
