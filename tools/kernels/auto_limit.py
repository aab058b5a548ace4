"""Where ``backend="auto"`` should hand the CPU's in-batch score matrix from dense to chunked.

    python -m tools.kernels.auto_limit            # float32 on this machine's CPU
    python -m tools.kernels.auto_limit --repeats 9

``auto`` takes the dense einsum while the ``(Ba, Bb, La, Lb)`` similarity tensor is at most
``dispatch.AUTO_DENSE_LIMIT_BYTES`` and the chunked backend above it. This script times both,
forward+backward (median of ``--repeats``), at La = 32, D = 128 and growing batches and
document lengths, for the training module's default score (direction ``both``, mean) and
ColBERT's (``a2b``, sum), so the limit can sit where chunked starts to win. Each row says
which backend ``auto`` picks there. Prints a table and JSON
(``tools/kernels/results/auto_limit.json``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import write_json
from lightning_modules.maxsim import dispatch, maxsim_matrix

RESULTS = Path(__file__).resolve().parent / "results"  # (not committed)

LA, DIM = 32, 128
SHAPES = ((32, 32), (32, 64), (64, 32), (32, 96), (32, 128), (64, 64), (32, 180), (64, 96), (128, 32))  # (B, Lb)
SCORES = {"both/mean": dict(direction="both", reduction="mean"), "a2b/sum": dict(direction="a2b", reduction="sum")}


def forward_backward_s(batch: int, lb: int, backend: str, options: dict, repeats: int) -> float:
    """Median seconds of one forward+backward of ``maxsim_matrix`` on random unit vectors."""
    generator = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(batch, LA, DIM, generator=generator), dim=-1).requires_grad_(True)
    b = torch.nn.functional.normalize(torch.randn(batch, lb, DIM, generator=generator), dim=-1).requires_grad_(True)
    a_mask, b_mask = torch.ones(batch, LA, dtype=torch.bool), torch.ones(batch, lb, dtype=torch.bool)
    times = []
    for _ in range(repeats + 1):  # the first run warms up and is not counted
        a.grad = b.grad = None
        start = time.perf_counter()
        maxsim_matrix(a, a_mask, b, b_mask, backend=backend, **options).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "auto_limit.json"))
    args = parser.parse_args()
    rows = []
    header = f"{'B':>4} {'Lb':>4} {'sims MB':>8} {'auto':>8}  " + "  ".join(
        f"{name + ' dense ms':>18} {'chunked ms':>10} {'ratio':>6}" for name in SCORES)
    print(header)
    print("-" * len(header))
    for batch, lb in SHAPES:
        size = batch * batch * LA * lb * 4
        row = {"B": batch, "La": LA, "Lb": lb, "D": DIM, "similarity_mb": size / 2**20,
               "auto": "chunked" if size > dispatch.AUTO_DENSE_LIMIT_BYTES else "dense"}
        cells = []
        for name, options in SCORES.items():
            dense = forward_backward_s(batch, lb, "dense", options, args.repeats)
            chunked = forward_backward_s(batch, lb, "chunked", options, args.repeats)
            row[name] = {"dense_s": dense, "chunked_s": chunked, "chunked_vs_dense": chunked / dense}
            cells.append(f"{dense * 1e3:>18.1f} {chunked * 1e3:>10.1f} {chunked / dense:>5.2f}x")
        rows.append(row)
        print(f"{batch:>4} {lb:>4} {row['similarity_mb']:>8.1f} {row['auto']:>8}  " + "  ".join(cells), flush=True)
    result = {"device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "dtype": "float32", "limit_mb": dispatch.AUTO_DENSE_LIMIT_BYTES / 2**20,
              "rows": rows}
    write_json(result, Path(args.out))


if __name__ == "__main__":
    main()
