"""The lock service state machine and node."""
