"""Benchmarks for SPEC §8. Not tests: run them by hand (see bench/README.md)."""
