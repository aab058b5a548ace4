"""MaxSim engines side by side: time and peak extra memory of all-pairs scoring, forward and forward+backward.

    python -m benchmarks.maxsim            # the grid below: float32 on CPU, bf16 on a GPU
    python -m benchmarks.maxsim --quick    # B in {32, 128}, Lb in {32, 180}
    python -m benchmarks.maxsim --device cpu

Run from the repository root with the project installed (``pip install -e .``).

Implementations, each scoring every query against every document of the batch
(ColBERT's score: direction a2b, reduction sum, so all compute the same number):

* ``ours-triton`` (GPU only), ``ours-chunked``, ``ours-dense``: the
  ``lightning_modules.maxsim.maxsim_matrix`` backends; ``ours-triton-deterministic``: the
  triton backend under ``torch.use_deterministic_algorithms(True)`` (its sorted backward;
  that mode also fills uninitialised memory, as deterministic training would);
* ``naive-einsum``: one einsum, max, sum (what Stanford ColBERT and PyLate's torch path do);
* ``pylate``: ``pylate.scores.colbert_scores`` (PyLate 1.6, installed with ``--no-deps``);
* ``sentence-transformers``: ``multi_vector_encoder.scoring.colbert.maxsim`` (v6);
* GPU only, when installed: ``late-interaction-kernels`` (``maxsim``, fused Triton
  kernels) and ``flash-maxsim`` (``flash_maxsim_batched_train``; given no masks, since
  every token of this benchmark is real, which can only favour it).

On CPU each case runs in a fresh process, so that its peak resident memory minus the
resident memory after building the inputs is its own "peak extra memory"; a case
whose dense similarity tensor alone would pass ``--budget-gb`` runs under that address
space limit and reports what happened (out of memory, or not). On a GPU the cases share
one process (a CUDA start per case would cost more than the cases) and peak extra
memory is ``torch.cuda.max_memory_allocated`` above the inputs; an out-of-memory error
is reported as such. Ratios compare with PyLate on CPU, and on a GPU the time with
late-interaction-kernels and the memory with the naive einsum. Figures print as a
table and go to ``benchmarks/results/maxsim[-cuda].json``. Timings are the median of ``--repeats``
(on CPU, a single run at B = 512 unless ``--repeats`` is given).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
CPU_IMPLEMENTATIONS = ("ours-chunked", "ours-dense", "naive-einsum", "pylate", "sentence-transformers")
GPU_IMPLEMENTATIONS = ("ours-triton", "ours-triton-deterministic", *CPU_IMPLEMENTATIONS, "late-interaction-kernels",
                       "flash-maxsim")
# (time, memory) ratios against these.
REFERENCES = {"cpu": ("pylate", "pylate"), "cuda": ("late-interaction-kernels", "naive-einsum")}
LA, DIM = 32, 128


def scorer(name: str):
    """A function ``(q (B, La, D), q_mask, d (B, Lb, D), d_mask) -> (B, B)`` for ``name``, or None if unavailable."""
    if name.startswith("ours"):
        from lightning_modules.maxsim import maxsim_matrix

        backend = name.split("-")[1]
        return lambda q, qm, d, dm: maxsim_matrix(q, qm, d, dm, direction="a2b", reduction="sum", backend=backend)
    if name == "naive-einsum":
        return lambda q, qm, d, dm: torch.einsum("ild,jmd->ijlm", q, d).amax(dim=-1).sum(dim=-1)
    if name == "pylate":
        try:
            from pylate.scores import colbert_scores
        except ImportError:
            return None
        # backend="torch": PyLate's own code (its "auto" hands CUDA inputs to flash-maxsim or
        # late-interaction-kernels, which have rows of their own).
        return lambda q, qm, d, dm: colbert_scores(q, d, queries_mask=qm, documents_mask=dm, backend="torch")
    if name == "sentence-transformers":
        try:
            from sentence_transformers.multi_vector_encoder.scoring.colbert import maxsim
        except ImportError:
            return None
        return lambda q, qm, d, dm: maxsim(q, d, a_mask=qm, b_mask=dm)
    if name == "late-interaction-kernels":
        try:
            from late_interaction_kernels import maxsim as lik_maxsim
        except ImportError:
            return None
        return lambda q, qm, d, dm: lik_maxsim(q, d, qm, dm)
    if name == "flash-maxsim":
        try:
            from flash_maxsim import flash_maxsim_batched_train
        except ImportError:
            return None
        return lambda q, qm, d, dm: flash_maxsim_batched_train(q, d)
    raise ValueError(name)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, batch: int, lb: int, repeats: int, device: str = "cpu", dtype=torch.float32) -> dict:
    """Time and memory of one case: in a child process on CPU, in the main one on a GPU."""
    torch.manual_seed(0)
    score = scorer(name)
    if score is None:
        return {"status": "not installed"}
    cuda = device == "cuda"
    q = torch.nn.functional.normalize(torch.randn(batch, LA, DIM, device=device), dim=-1).to(dtype)
    d = torch.nn.functional.normalize(torch.randn(batch, lb, DIM, device=device), dim=-1).to(dtype)
    qm = torch.ones(batch, LA, dtype=torch.bool, device=device)
    dm = torch.ones(batch, lb, dtype=torch.bool, device=device)

    def forward():
        with torch.no_grad():
            score(q, qm, d, dm)

    # Leaves that take gradients, made before the memory baseline: the inputs and their
    # gradients are the same for every implementation and are not "extra" memory.
    qg, dg = q.clone().requires_grad_(True), d.clone().requires_grad_(True)

    def forward_backward():
        qg.grad = dg.grad = None
        score(qg, qm, dg, dm).float().sum().backward()

    if cuda:  # warm-up at the real shape: compilation and autotuning are not timed
        forward()
        forward_backward()
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        peak = lambda: (torch.cuda.max_memory_allocated() - base) / 2**20  # noqa: E731
    else:
        score(q[:2], qm[:2], d[:2], dm[:2])  # warm-up: imports, kernels
        base = rss_mb()
        peak = lambda: peak_mb() - base  # noqa: E731
    forward_times = _timed(forward, repeats, cuda)
    forward_peak = peak()
    backward_times = _timed(forward_backward, repeats, cuda)
    return {
        "status": "ok",
        "forward_s": statistics.median(forward_times),
        "forward_backward_s": statistics.median(backward_times),
        "forward_peak_extra_mb": round(forward_peak, 1),
        "forward_backward_peak_extra_mb": round(peak(), 1),
    }


def _timed(fn, repeats: int, cuda: bool) -> list[float]:
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def run_on_gpu(name: str, batch: int, lb: int, repeats: int, dtype) -> dict:
    """One case in this process on the GPU; an out-of-memory error is a result, not a crash."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(name.endswith("-deterministic"))  # for the backward pass too
    try:
        result = run_case(name, batch, lb, repeats, "cuda", dtype)
    except torch.cuda.OutOfMemoryError:
        result = {"status": "out of memory"}
    except Exception as error:  # a peer's kernel failing must not hide the other figures
        result = {"status": f"error: {type(error).__name__}: {str(error)[:200]}"}
    finally:
        torch.use_deterministic_algorithms(before)
    gc.collect()
    torch.cuda.empty_cache()
    return {"implementation": name, "B": batch, "La": LA, "Lb": lb, "D": DIM,
            "dense_similarity_gb": round(batch * batch * LA * lb * torch.finfo(dtype).bits / 8 / 2**30, 2),
            "address_space_limit_gb": None, **result}


def run_in_child(name: str, batch: int, lb: int, repeats: int, budget_gb: float) -> dict:
    """A fresh process per case; under an address-space limit when the dense tensor would not fit the budget."""
    dense_gb = batch * batch * LA * lb * 4 / 2**30
    limited = dense_gb > budget_gb
    code = (
        "import json, resource\nfrom benchmarks import maxsim as m\n"
        "limit = %r\n"
        "if limit: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "try:\n    print(json.dumps(m.run_case(%r, %d, %d, %d)))\n"
        "except (RuntimeError, MemoryError) as e:\n"
        "    print(json.dumps({'status': 'out of memory' if 'memory' in str(e).lower() or isinstance(e, MemoryError) "
        "else 'error: ' + str(e)[:200]}))\n"
    ) % (int(budget_gb * 2**30) if limited else 0, name, batch, lb, repeats)
    # From the repository root, where ``benchmarks`` is importable as a package.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    elif done.returncode == -9:  # the kernel's out-of-memory killer: the machine ran out before any limit
        result = {"status": "killed: out of memory"}
    else:
        result = {"status": f"crashed ({done.returncode}): {done.stderr[-200:]}"}
    return {"implementation": name, "B": batch, "La": LA, "Lb": lb, "D": DIM, "dense_similarity_gb": round(dense_gb, 2),
            "address_space_limit_gb": budget_gb if limited else None, **result}


def format_table(rows: list[dict], references: tuple[str, str]) -> str:
    time_ref, memory_ref = references
    header = (f"{'B':>4} {'Lb':>4} {'implementation':<25} {'fwd s':>8} {'fwd+bwd s':>10} {'fwd MB':>9} "
              f"{'fwd+bwd MB':>11}  time vs {time_ref}, memory vs {memory_ref} (fwd+bwd)")
    lines = [header, "-" * len(header)]
    for row in rows:
        if row.get("status") != "ok":
            lines.append(f"{row['B']:>4} {row['Lb']:>4} {row['implementation']:<25} {row['status']}")
            continue

        def reference(name):
            return next((r for r in rows if r["implementation"] == name and r["B"] == row["B"]
                         and r["Lb"] == row["Lb"] and r.get("status") == "ok"), None)

        ratios = []
        if ref := reference(time_ref):
            ratios.append(f"{row['forward_backward_s'] / ref['forward_backward_s']:.2f}x")
        if ref := reference(memory_ref):
            ratios.append(f"{row['forward_backward_peak_extra_mb'] / max(ref['forward_backward_peak_extra_mb'], 1):.3f}x")
        lines.append(f"{row['B']:>4} {row['Lb']:>4} {row['implementation']:<25} {row['forward_s']:>8.4f} "
                     f"{row['forward_backward_s']:>10.4f} {row['forward_peak_extra_mb']:>9.0f} "
                     f"{row['forward_backward_peak_extra_mb']:>11.0f}  {', '.join(ratios)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {32, 128}, Lb in {32, 180}")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case (default 3 on CPU, 10 on a GPU); on CPU the B = 512 cases "
                             "run once unless this is given (each takes seconds to minutes)")
    parser.add_argument("--budget-gb", type=float, default=16.0, help="CPU: the memory budget of the large cases")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/maxsim[-cuda].json)")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    repeats = args.repeats or (10 if device == "cuda" else 3)
    implementations = GPU_IMPLEMENTATIONS if device == "cuda" else CPU_IMPLEMENTATIONS
    batches, lengths = ((32, 128), (32, 180)) if args.quick else ((32, 128, 512), (32, 180, 300))
    rows = []
    for batch in batches:
        for lb in lengths:
            for name in implementations:
                if device == "cuda":
                    rows.append(run_on_gpu(name, batch, lb, repeats, dtype))
                else:
                    once = batch >= 512 and args.repeats is None
                    rows.append(run_in_child(name, batch, lb, 1 if once else repeats, args.budget_gb))
                print(format_table(rows[-1:], REFERENCES[device]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows, REFERENCES[device]))
    if device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    result = {"device": where, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "rows": rows}
    write_json(result, Path(args.out or ROOT / "benchmarks" / "results" / f"maxsim{'-cuda' if device == 'cuda' else ''}.json"))


if __name__ == "__main__":
    main()
