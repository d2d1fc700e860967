"""The queue state machine on the replicated log, and the store node."""
