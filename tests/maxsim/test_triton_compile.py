"""The triton forward kernel, compiled for real GPUs on a machine without one.

Triton's interpreter (``test_triton.py``) checks what the kernels compute; this checks what
the compiler makes of them for an H100 (sm_90) and an A100 (sm_80): that every forward
program fits the chip's shared memory and that no spilled register is read or written in its
hot loop. Such a spill does not change a number, so no other test sees it, yet it can cost a
multiple of the time: with bf16's layout at half the dims, triton 3.9 built an sm_80 float32
forward whose loop made thousands of local loads and stores a trip (``tools/kernels/RESULTS.md``,
"Compiled for sm_90 and sm_80"). Runs ``python -m tools.kernels.triton_compile_check`` from the
repository root, in a process of its own, since this session's kernels were built for the interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository root
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
def test_forward_programs_fit_and_keep_spills_out_of_their_hot_loops(arch, tmp_path):
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "tools.kernels.triton_compile_check", "--arch", str(arch),
         "--kernels", "forward", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    if not out.exists():  # nothing compiled at all: the script's own failure, shown in full
        pytest.fail(f"tools.kernels.triton_compile_check wrote nothing:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rows = json.loads(out.read_text())["rows"]
    # Both input types, every program size (128 rows of short texts, one 256-token text).
    assert {(r["dtype"], r["La"]) for r in rows} == {(t, la) for t in ("bf16", "fp32") for la in (32, 128, 256)}
    failing = [r for r in rows if r["status"] != "ok" or r["loop_local_ops"] != 0]
    assert not failing, failing
    assert done.returncode == 0, done.stdout[-3000:]
