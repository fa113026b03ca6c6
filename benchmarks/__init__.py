"""Benchmarks: scripts that measure kashforce against the sandbox, beside a naive baseline.

`python -m benchmarks.run --help`; `make bench` / `make bench-small`. Not tests.
"""
