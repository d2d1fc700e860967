"""The producer machine: routing, batching, retries with dedupe ids."""
