"""Benchmarks behind ``aef-hpc bench``: they write CSV; their numbers go to ``docs/benchmarks.md``."""
