"""The bytes between pxq processes: frames, the connection envelope and the event loop.

Nothing here knows what a node or a client is: ``net.node`` and ``net.client`` build on it.
"""
