"""Side-by-side comparisons with peers (docs/benchmarks.md).

A package so that the scripts share ``benchmarks.report``: run them from the repository
root, with the project installed, as ``python -m benchmarks.<name>``.
"""
