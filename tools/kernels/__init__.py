"""Tooling for the triton MaxSim kernels: compile checks, static instruction counts, launch-setting
sweeps and the GPU checks, with their measured results in ``RESULTS.md``.

Run from the repository root, with the project installed (``pip install -e .``), as
``python -m tools.kernels.<name>``; ``bash tools/kernels/gpu_check.sh`` runs the GPU steps.
"""
