"""Tools that measure and exercise a running cluster: ``pxq bench`` with its baselines and
plots, the node and client micro-benchmarks, and the recorded real-runtime queue workload.
"""
