"""The deterministic simulated world: SimPy event heap, network, disk, clocks, nemesis, scenarios, workloads, swarm."""
