"""Jepsen-style tests of real clusters (``pxq test``): a target cluster of real processes, a
workload recording a history, a nemesis injecting faults on a schedule drawn from a seed, then
heal, recovery, final reads and every checker over the history.

Rooms: ``target`` (the interface every cluster under test implements), ``local`` (nodes on
127.0.0.1), ``hosts`` (nodes in network namespaces, partitions with nftables), ``lazyfs``
(a FUSE layer that loses unsynced writes), ``proxy`` (a delaying TCP proxy: the kernel here
has no netem), ``nemesis`` (the fault schedule), ``workloads``, ``record`` (the run's
directory and plots) and ``runner`` (one run from start to verdict).
"""
