"""Benchmarks of generation, snapshots, point-in-time retrieval and online lookups (``bench.run``)."""
