"""Where the GPU time of one MaxSim training step goes, kernel by kernel, ours against late-interaction-kernels.

    python -m tools.kernels.gpu_profile                      # B = 512, 32 x 300 tokens, bf16, a2b/sum and both/mean

For each score and backend: ``torch.profiler``'s CUDA time per kernel over ``--steps`` steps, each
the forward pass and the backward of the scores' sum (the scores alone, no loss), after one warm-up
step that compiles; a table sorted by time, so that the next rework aims at the kernel that costs
most. A GPU only; JSON to ``--out`` (full kernel names there; the table cuts them).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.report import write_json
from lightning_modules.maxsim import maxsim_matrix

RESULTS = Path(__file__).resolve().parent / "results"  # (not committed)


def score_and_backward(q, q_mask, d, d_mask, **options) -> None:
    """One step: the ``(B, B)`` scores of ``q (B, La, D)`` against ``d (B, Lb, D)`` and the
    backward pass of their sum into fresh ``.grad``s."""
    q.grad = d.grad = None
    maxsim_matrix(q, q_mask, d, d_mask, **options).float().sum().backward()


def kernel_times(step, steps: int) -> list[dict]:
    """CUDA milliseconds and calls per kernel name, per step (calls may be fractional: a kernel
    that does not run every step), largest first."""
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = [{"kernel": e.key, "calls": e.count / steps, "ms": e.device_time_total / 1e3 / steps}
            for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r["ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "gpu_profile.json"))
    args = parser.parse_args()
    B, La, Lb = args.batch, args.query_tokens, args.document_tokens
    q = F.normalize(torch.randn(B, La, 128, device="cuda"), dim=-1).bfloat16().requires_grad_(True)
    d = F.normalize(torch.randn(B, Lb, 128, device="cuda"), dim=-1).bfloat16().requires_grad_(True)
    qm = torch.ones(B, La, dtype=torch.bool, device="cuda")
    dm = torch.ones(B, Lb, dtype=torch.bool, device="cuda")
    result = {"device": torch.cuda.get_device_name(), "B": B, "La": La, "Lb": Lb, "profiles": []}
    for direction, reduction in (("a2b", "sum"), ("both", "mean")):
        for backend in ("triton", "late-interaction-kernels"):
            step = partial(score_and_backward, q, qm, d, dm, direction=direction, reduction=reduction,
                           backend=backend)
            try:
                rows = kernel_times(step, args.steps)
            except Exception as error:  # a backend that is missing or refuses is a finding
                print(f"{backend} {direction}/{reduction}: {type(error).__name__}: {error}"[:200], flush=True)
                continue
            total = sum(r["ms"] for r in rows)
            print(f"\n{backend}, {direction}/{reduction}: {total:.2f} ms of kernels a step "
                  f"({result['device']}, B={B}, {La} x {Lb}, bf16)", flush=True)
            print(f"{'kernel':<72} {'calls':>5} {'ms':>7} {'share':>6}")
            for r in rows[:12]:
                print(f"{r['kernel'][:70]:<72} {r['calls']:>5.3g} {r['ms']:>7.3f} {r['ms'] / total:>6.1%}")
            result["profiles"].append({"backend": backend, "direction": direction, "reduction": reduction,
                                       "kernel_ms": total, "kernels": rows})
    write_json(result, args.out)


if __name__ == "__main__":
    main()
