"""Run an entry point as ``python -m <module> ARGS`` would, but inside the test process.

A fresh interpreter pays for importing torch, transformers and Lightning again (about ten
seconds on a 2-core machine), so tests of what a command prints and returns run it here:
the same ``sys.argv``, working directory, exit status, stdout and stderr. Tests that need a
process of their own (two DDP processes, the PyLate environment, the ``python -m`` wiring
itself) keep ``subprocess``.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path


def run_module(module: str, *args: str, cwd: str | Path) -> subprocess.CompletedProcess:
    """Run ``module`` as ``__main__`` (``runpy``, as ``python -m`` does: Hydra then finds
    ``conf/`` from the file, not from a package name) with ``sys.argv`` set to
    ``[module, *args]``, from ``cwd``; return what ``subprocess.run(..., capture_output=True,
    text=True)`` would: ``returncode`` (a ``SystemExit``'s code, else 0), ``stdout``, ``stderr``.
    Any other exception propagates with its traceback, as a bug should."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, where = sys.argv, os.getcwd()
    returncode = 0
    try:
        sys.argv = [module, *args]
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                with warnings.catch_warnings():
                    # runpy warns when the module was imported before (by another test): harmless here.
                    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as done:
                returncode = _exit_status(done.code)
    finally:
        sys.argv = argv
        os.chdir(where)
    return subprocess.CompletedProcess([module, *args], returncode, stdout.getvalue(), stderr.getvalue())


def _exit_status(code: object) -> int:
    """The status a process would end with after ``sys.exit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
