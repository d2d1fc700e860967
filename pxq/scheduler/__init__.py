"""Load balancing as pure functions, and the scheduler node."""
