"""The consumer machine: ownership, pull, handler outcomes, retries, rate limit."""
