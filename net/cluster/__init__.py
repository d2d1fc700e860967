"""Clusters on this machine: finding masters by probing, every node in one process
(``LocalCluster``), one process per node (``pxq cluster up``) and the scheduler process.
"""
