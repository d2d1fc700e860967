"""The production world: the same state machines as the simulator, on asyncio TCP and LMDB.

Wings (each a subpackage; this package imports nothing at load time):

* ``net.wire``: the bytes between processes: ``framing`` (length-prefixed frames,
  ``FrameDecoder``), ``envelope`` (``Hello``, ``Call``, ``CallReply``) and ``loop`` (the
  event loop every process runs on);
* ``net.node``: one replica as a server: ``runner`` (``NodeRunner``, the production driver of
  the contract in ``pxq.effects``), ``storage`` (LMDB), ``transport`` (inbound connections and
  outbound peer links), ``server`` (``pxq node run``);
* ``net.client``: the client library: ``connection`` (``NodeClient``, one pipelined
  connection to one node), ``driver`` (runs the pure producer and consumer machines),
  ``api`` (``AsyncClient``), ``consumer`` (``AsyncConsumer``), ``blocking`` (``Client``),
  ``types`` (receipts, items and the exceptions applications see);
* ``net.cluster``: clusters on this machine: ``probe`` (which replica is master of what),
  ``inprocess`` (``LocalCluster``: every node in one process), ``processes``
  (``pxq cluster up|status|down``: one process per node), ``scheduler``
  (``pxq scheduler run``);
* ``net.tools``: measurement and testing tools: ``bench`` (``pxq bench``), ``baselines`` (its
  C and R baselines), ``measure`` (the helpers they share), ``node_bench``, ``client_bench``,
  ``plot`` (``pxq plot``), ``history_run`` (a recorded real-runtime queue workload).

``net.config`` (every limit of the package, ``NetConfig``) and ``net.errors`` (the exception
hierarchy) are the floor every wing stands on. Dependencies point down: tools -> cluster ->
client and node -> wire -> config and errors; ``docs/architecture.md`` has the picture.
"""
