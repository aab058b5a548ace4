"""Where float32 MaxSim gradients differ, is it because two cosines tie to within rounding?

    python -m tools.kernels.maxsim_ties                    # CPU: chunked float32 against exact float64
    python -m tools.kernels.maxsim_ties --device cuda      # GPU: the triton backend against exact float64

On an H100 the triton backend's gradients at B = 512, 32 x 300 tokens (bf16 inputs, a2b,
sum) differed from the chunked backend's in float32 in about 250 query-token rows
(tools/kernels/RESULTS.md). Both multiply the same bf16 values exactly and sum the products in
float32, in different orders; where a token's two best cosines lie closer together than
that rounding, each backend may pick a different token, and the whole gradient of that pick
moves. This script measures that explanation instead of assuming it: the similarities in
float64 (exact for bf16 inputs: a product of two bf16 values has 16 significant bits, and
128 of them sum well within float64's 53) give each pick's margin, the gap between its best
and second-best cosine; then the rows whose gradient differs from the exact float64 one are
compared with the rows that hold a pick whose margin is below float32 rounding.

Prints a table and JSON (``tools/kernels/results/maxsim_ties.json``). No timing: nothing here
is a speed figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import write_json
from lightning_modules.maxsim import maxsim_matrix

RESULTS = Path(__file__).resolve().parent / "results"  # (not committed)

# Margins below which float32 summation may reorder two cosines: one unit in the last place of
# float32 near 1 is 6e-8 (2^-24); a sum of 128 products of at most 1 errs by at most
# 128 * 2^-24 = 7.6e-6 (the worst case), typically by a few units.
MARGINS = (0.0, 1e-7, 1e-6, 1e-5)


def batch(size: int, query_tokens: int, document_tokens: int, dim: int, device: str, seed: int):
    """Unit vectors rounded to bf16 and ragged masks (85% of tokens kept), as gpu_large_shapes.py."""
    g = torch.Generator(device=device).manual_seed(seed)
    a = F.normalize(torch.randn(size, query_tokens, dim, device=device, generator=g), dim=-1).bfloat16()
    b = F.normalize(torch.randn(size, document_tokens, dim, device=device, generator=g), dim=-1).bfloat16()
    am = torch.rand(size, query_tokens, device=device, generator=g) < 0.85
    bm = torch.rand(size, document_tokens, device=device, generator=g) < 0.85
    am[:, 0], bm[:, 0] = True, True
    return a, am, b, bm


def margins(a, am, b, bm, block: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every a token and b text (direction a2b), in float64: the gap between the best and
    the second-best cosine, and the indices of both. Returns ``gap (Ba, Bb, La)`` and
    ``first, second (Ba, Bb, La)`` int64; masked a tokens get an infinite gap."""
    a64, b64 = a.double(), b.double()
    gaps, firsts, seconds = [], [], []
    for i0 in range(0, a.shape[0], block):
        sims = torch.einsum("ild,jmd->ijlm", a64[i0:i0 + block], b64)
        sims = sims.masked_fill(~bm[None, :, None, :], float("-inf"))
        top, at = sims.topk(2, dim=-1)
        gap = top[..., 0] - top[..., 1]
        gap = gap.nan_to_num(nan=float("inf"))  # a b text with a single real token: no second best
        gaps.append(gap.masked_fill(~am[i0:i0 + block, None, :], float("inf")))
        firsts.append(at[..., 0])
        seconds.append(at[..., 1])
    return torch.cat(gaps), torch.cat(firsts), torch.cat(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default=None, help="default: chunked on CPU, triton on CUDA")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=300)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-2, help="a gradient entry differs by more than this")
    parser.add_argument("--out", default=str(RESULTS / "maxsim_ties.json"))
    args = parser.parse_args()
    backend = args.backend or ("triton" if args.device.startswith("cuda") else "chunked")
    a, am, b, bm = batch(args.batch, args.query_tokens, args.document_tokens, args.dim, args.device, args.seed)
    weights = torch.randn(args.batch, args.batch, device=args.device,
                          generator=torch.Generator(device=args.device).manual_seed(args.seed + 1))

    def gradients(x, y, name):
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        scores = maxsim_matrix(x, am, y, bm, direction="a2b", reduction="sum", backend=name)
        return torch.autograd.grad(scores, (x, y), weights)

    def off(got, exact):
        """(B, L) rows with an entry off by more than the tolerance plus the rounding of the
        gradient to its own dtype: bf16 gradients of magnitude 10 are 0.06 apart, so a
        plain 1e-2 would count the rounding of every large entry as a difference."""
        resolution = torch.finfo(got.dtype).eps * exact.abs()
        return ((got.double() - exact).abs() > args.tolerance + resolution).any(dim=-1)

    # The backend under test on the bf16 values (chunked takes them in float32, as on the GPU);
    # the exact gradients from chunked in float64 on the same values.
    tested = (a, b) if backend == "triton" else (a.float(), b.float())
    got_a, got_b = gradients(*tested, backend)
    exact_a, exact_b = gradients(a.double(), b.double(), "chunked")
    off_a, off_b = off(got_a, exact_a), off(got_b, exact_b)  # (Ba, La), (Bb, Lb)
    grad_dtype = str(got_a.dtype).removeprefix("torch.")
    got_a, got_b = got_a.double(), got_b.double()

    gap, first, second = margins(a, am, b, bm)
    rows = []
    for margin in MARGINS:
        close = gap <= margin  # (Ba, Bb, La) picks whose two best cosines are this close
        near_a = close.any(dim=1)  # a tokens with such a pick in some b text
        near_b = torch.zeros_like(off_b)  # b tokens that are the best or second best of such a pick
        j = torch.arange(args.batch, device=args.device)[None, :, None].expand_as(first)
        near_b[j[close], first[close]] = True
        near_b[j[close], second[close]] = True
        rows.append({
            "margin": margin, "picks": int(close.sum()), "a_rows_near": int(near_a.sum()),
            "a_rows_off": int(off_a.sum()), "a_rows_off_and_near": int((off_a & near_a).sum()),
            "b_rows_near": int(near_b.sum()), "b_rows_off": int(off_b.sum()),
            "b_rows_off_and_near": int((off_b & near_b).sum()),
        })
    print(f"{backend} ({a.dtype} inputs, {args.device}) against chunked float64; B={args.batch}, "
          f"{args.query_tokens} x {args.document_tokens} tokens, D={args.dim}, a2b/sum; a row is off where an "
          f"entry differs by > {args.tolerance} + its rounding to {grad_dtype}")
    print(f"{'margin':>8} {'picks':>9} {'a near':>7} {'a off':>6} {'off&near':>8} {'b near':>7} {'b off':>6} "
          f"{'off&near':>8}")
    for r in rows:
        print(f"{r['margin']:>8.0e} {r['picks']:>9} {r['a_rows_near']:>7} {r['a_rows_off']:>6} "
              f"{r['a_rows_off_and_near']:>8} {r['b_rows_near']:>7} {r['b_rows_off']:>6} {r['b_rows_off_and_near']:>8}")
    # What the plain tolerance would count: entries that move by more than it when the exact
    # gradient is only rounded to bf16 (gpu_large_shapes.py counts "entries off by > 1e-2").
    rounding = {name: int(((g.bfloat16().double() - g).abs() > args.tolerance).sum())
                for name, g in (("grad_a", exact_a), ("grad_b", exact_b))}
    print(f"entries that rounding the exact gradients to bf16 moves by > {args.tolerance}: "
          f"{rounding['grad_a']} of grad_a's {exact_a.numel()}, {rounding['grad_b']} of grad_b's {exact_b.numel()}")
    result = {"backend": backend, "device": args.device, "gradient_dtype": grad_dtype, "bf16_rounding_entries": rounding, "B": args.batch, "La": args.query_tokens,
              "Lb": args.document_tokens, "D": args.dim, "tolerance": args.tolerance, "rows": rows,
              "max_abs_diff": {"grad_a": float((got_a - exact_a).abs().max()),
                               "grad_b": float((got_b - exact_b).abs().max())}}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
