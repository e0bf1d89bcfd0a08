"""Benchmarks of ops-pipeline: `python -m bench` runs them all (see bench/run.py)."""
