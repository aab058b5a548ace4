"""MaxSim engines side by side: time and peak extra memory of all-pairs scoring, forward and forward+backward.

    python benchmarks/maxsim.py            # the grid below, float32 on CPU
    python benchmarks/maxsim.py --quick    # B in {32, 128}, Lb in {32, 180}

Implementations, each scoring every query against every document of the batch
(ColBERT's score: direction a2b, reduction sum, so all compute the same number):

* ``ours-dense``, ``ours-chunked``: ``lightning_modules.maxsim.maxsim_matrix`` backends;
* ``naive-einsum``: one einsum, max, sum (what Stanford ColBERT and PyLate's torch path do);
* ``pylate``: ``pylate.scores.colbert_scores`` (PyLate 1.6, installed with ``--no-deps``);
* ``sentence-transformers``: ``multi_vector_encoder.scoring.colbert.maxsim`` (v6).

Each case runs in a fresh process, so that its peak resident memory minus the
resident memory after building the inputs is its own "peak extra memory". A case
whose dense similarity tensor alone would pass ``--budget-gb`` runs under that address
space limit and reports what happened (out of memory, or not). Figures print as a table
and go to ``benchmarks/results/maxsim.json``. Timings are the median of ``--repeats``.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("ours-chunked", "ours-dense", "naive-einsum", "pylate", "sentence-transformers")
LA, DIM = 32, 128


def scorer(name: str):
    """A function ``(q (B, La, D), q_mask, d (B, Lb, D), d_mask) -> (B, B)`` for ``name``, or None if unavailable."""
    if name.startswith("ours"):
        sys.path.insert(0, str(ROOT))
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
        return lambda q, qm, d, dm: colbert_scores(q, d, queries_mask=qm, documents_mask=dm)
    if name == "sentence-transformers":
        try:
            from sentence_transformers.multi_vector_encoder.scoring.colbert import maxsim
        except ImportError:
            return None
        return lambda q, qm, d, dm: maxsim(q, d, a_mask=qm, b_mask=dm)
    raise ValueError(name)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, batch: int, lb: int, repeats: int) -> dict:
    """Time and memory of one case, in this process (called in a child process)."""
    torch.manual_seed(0)
    score = scorer(name)
    if score is None:
        return {"status": "not installed"}
    q = torch.nn.functional.normalize(torch.randn(batch, LA, DIM), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(batch, lb, DIM), dim=-1)
    qm, dm = torch.ones(batch, LA, dtype=torch.bool), torch.ones(batch, lb, dtype=torch.bool)
    score(q[:2], qm[:2], d[:2], dm[:2])  # warm-up: imports, kernels
    base = rss_mb()
    forward = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            score(q, qm, d, dm)
        forward.append(time.perf_counter() - start)
    forward_peak = peak_mb() - base
    backward = []
    for _ in range(repeats):
        qg, dg = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
        start = time.perf_counter()
        score(qg, qm, dg, dm).sum().backward()
        backward.append(time.perf_counter() - start)
        del qg, dg
    return {
        "status": "ok",
        "forward_s": statistics.median(forward),
        "forward_backward_s": statistics.median(backward),
        "forward_peak_extra_mb": round(forward_peak, 1),
        "forward_backward_peak_extra_mb": round(peak_mb() - base, 1),
    }


def run_in_child(name: str, batch: int, lb: int, repeats: int, budget_gb: float) -> dict:
    """A fresh process per case; under an address-space limit when the dense tensor would not fit the budget."""
    dense_gb = batch * batch * LA * lb * 4 / 2**30
    limited = dense_gb > budget_gb
    code = (
        "import json, resource, sys; sys.path.insert(0, %r); import maxsim as m\n"
        "limit = %r\n"
        "if limit: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "try:\n    print(json.dumps(m.run_case(%r, %d, %d, %d)))\n"
        "except (RuntimeError, MemoryError) as e:\n"
        "    print(json.dumps({'status': 'out of memory' if 'memory' in str(e).lower() or isinstance(e, MemoryError) "
        "else 'error: ' + str(e)[:200]}))\n"
    ) % (str(Path(__file__).parent), int(budget_gb * 2**30) if limited else 0, name, batch, lb, repeats)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
    elif done.returncode == -9:  # the kernel's out-of-memory killer: the machine ran out before any limit
        result = {"status": "killed: out of memory"}
    else:
        result = {"status": f"crashed ({done.returncode}): {done.stderr[-200:]}"}
    return {"implementation": name, "B": batch, "La": LA, "Lb": lb, "D": DIM, "dense_similarity_gb": round(dense_gb, 2),
            "address_space_limit_gb": budget_gb if limited else None, **result}


def format_table(rows: list[dict]) -> str:
    header = f"{'B':>4} {'Lb':>4} {'implementation':<22} {'fwd s':>8} {'fwd+bwd s':>10} {'fwd MB':>9} {'fwd+bwd MB':>11}  vs pylate (time, memory)"
    lines = [header, "-" * len(header)]
    for row in rows:
        ref = next((r for r in rows if r["implementation"] == "pylate" and r["B"] == row["B"] and r["Lb"] == row["Lb"]
                    and r.get("status") == "ok"), None)
        if row.get("status") != "ok":
            lines.append(f"{row['B']:>4} {row['Lb']:>4} {row['implementation']:<22} {row['status']}")
            continue
        ratio = ""
        if ref:
            ratio = (f"{row['forward_backward_s'] / ref['forward_backward_s']:.2f}x, "
                     f"{row['forward_backward_peak_extra_mb'] / max(ref['forward_backward_peak_extra_mb'], 1):.3f}x")
        lines.append(f"{row['B']:>4} {row['Lb']:>4} {row['implementation']:<22} {row['forward_s']:>8.3f} "
                     f"{row['forward_backward_s']:>10.3f} {row['forward_peak_extra_mb']:>9.0f} "
                     f"{row['forward_backward_peak_extra_mb']:>11.0f}  {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {32, 128}, Lb in {32, 180}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-gb", type=float, default=16.0, help="the memory budget of the large cases")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "maxsim.json"))
    args = parser.parse_args()
    batches, lengths = ((32, 128), (32, 180)) if args.quick else ((32, 128, 512), (32, 180, 300))
    rows = []
    for batch in batches:
        for lb in lengths:
            for name in IMPLEMENTATIONS:
                rows.append(run_in_child(name, batch, lb, 1 if batch >= 512 else args.repeats, args.budget_gb))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(format_table(rows))
    result = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "dtype": "float32", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
