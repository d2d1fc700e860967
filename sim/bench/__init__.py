"""Benchmarks of the pure core and of the simulator, run in-process (``python -m
sim.bench.<name>``): Paxos alone, the queue store, failovers, the simulator's own speed,
the wire codec against msgspec.
"""
