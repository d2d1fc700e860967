"""The production world: asyncio transport, LMDB storage, servers, client library, local cluster.

Modules (imported explicitly; this package imports nothing at load time):

* ``net.config``: ``NetConfig``, every limit of the package in one dataclass;
* ``net.errors``: the exception hierarchy (``NetError`` and below);
* ``net.storage``: ``LmdbStorage``, a node's LMDB environment, data dir marker and lock;
* ``net.framing``: length-prefixed frames and the incremental ``FrameDecoder``;
* ``net.envelope``: ``Hello``, ``Call``, ``CallReply`` (codec tags 224-226);
* ``net.transport``: inbound connections, outbound ``PeerLink``s, ``listen``;
* ``net.runner``: ``NodeRunner``, the production driver of one node;
* ``net.client``: ``NodeClient``, one pipelined connection to one node;
* ``net.bench_net``: ``python -m net.bench_net``, quick throughput and latency figures.
"""
