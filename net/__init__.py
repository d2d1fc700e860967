"""The production world: asyncio transport, LMDB storage, servers, client library, local cluster."""
