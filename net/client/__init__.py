"""The client library applications use (``pxq.AsyncClient``, ``pxq.Client``): connections to
nodes, the driver of the pure producer and consumer machines, and the public API on top.
"""
