"""Launch settings of the triton MaxSim kernels, timed on a GPU against late-interaction-kernels.

    python benchmarks/triton_tune.py                  # B = 512, 32 x 300 tokens, bf16, ColBERT's a2b/sum

For each variant of ``forward_config``/``backward_config`` (tile of b tokens, rows per
backward program, warps, pipeline stages): the median time of the forward pass and of
forward+backward, and the largest difference of its gradients from the chunked backend
in float32 on a smaller ragged batch (direction "both", mean), so that a fast but wrong
variant shows. late-interaction-kernels and the naive einsum are timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lightning_modules import maxsim_triton as mt  # noqa: E402
from lightning_modules.maxsim import maxsim_matrix  # noqa: E402

FORWARD_VARIANTS = [{}, {"num_warps": 8}, {"BLOCK_M": 128, "num_warps": 8}]
BACKWARD_VARIANTS = [{}, {"num_warps": 4}, {"BLOCK_M": 128}, {"ROWS": 128}, {"num_stages": 3},
                     {"BLOCK_M": 128, "ROWS": 128}]


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def patched(forward: dict, backward: dict):
    """Replace the launch settings, returning the originals to restore."""
    originals = mt.forward_config, mt.backward_config
    mt.forward_config = lambda *args: {**originals[0](*args), **forward}
    mt.backward_config = lambda *args: {**originals[1](*args), **backward}
    return originals


def gradient_error() -> float:
    """Largest gradient difference from chunked float32, ragged both/mean batch, bf16 inputs."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = F.normalize(torch.randn(96, 40, 128, device="cuda", generator=g), dim=-1).bfloat16()
    b = F.normalize(torch.randn(80, 150, 128, device="cuda", generator=g), dim=-1).bfloat16()
    am, bm = torch.rand(96, 40, device="cuda", generator=g) < 0.8, torch.rand(80, 150, device="cuda", generator=g) < 0.8
    am[:, 0], bm[:, 0] = True, True
    weights = torch.randn(96, 80, device="cuda", generator=g)
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    got = torch.autograd.grad(maxsim_matrix(x, am, y, bm, backend="triton"), (x, y), weights)
    x32, y32 = a.float().requires_grad_(True), b.float().requires_grad_(True)
    want = torch.autograd.grad(maxsim_matrix(x32, am, y32, bm, backend="chunked"), (x32, y32), weights)
    return max(float((m.float() - t).abs().max()) for m, t in zip(got, want))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warps-only", action="store_true", help="only the backward's 8 warps (default) against 4")
    args = parser.parse_args()
    forward_variants = [{}] if args.warps_only else FORWARD_VARIANTS
    backward_variants = [{}, {"num_warps": 4}] if args.warps_only else BACKWARD_VARIANTS
    B, La, Lb = args.batch, args.query_tokens, args.document_tokens
    q = F.normalize(torch.randn(B, La, 128, device="cuda"), dim=-1).bfloat16()
    d = F.normalize(torch.randn(B, Lb, 128, device="cuda"), dim=-1).bfloat16()
    qm = torch.ones(B, La, dtype=torch.bool, device="cuda")
    dm = torch.ones(B, Lb, dtype=torch.bool, device="cuda")
    qg, dg = q.clone().requires_grad_(True), d.clone().requires_grad_(True)

    def measure(score):
        def step():
            qg.grad = dg.grad = None
            score(qg, dg).float().sum().backward()

        with torch.no_grad():
            forward = timed(lambda: score(q, d), args.repeats)
        return forward, timed(step, args.repeats)

    rows = []
    ours = lambda x, y: maxsim_matrix(x, qm, y, dm, direction="a2b", reduction="sum", backend="triton")  # noqa: E731
    for forward in forward_variants:
        for backward in backward_variants if not forward else [{}]:
            originals = patched(forward, backward)
            try:
                fwd, total = measure(ours)
                rows.append({"forward": forward, "backward": backward, "forward_ms": fwd * 1e3,
                             "forward_backward_ms": total * 1e3, "gradient_error": gradient_error()})
            except Exception as error:  # a variant the compiler or the chip refuses is a finding
                rows.append({"forward": forward, "backward": backward, "error": f"{type(error).__name__}: {error}"[:200]})
            finally:
                mt.forward_config, mt.backward_config = originals
            print(rows[-1], flush=True)
    peers = {"naive-einsum": lambda x, y: torch.einsum("ild,jmd->ijlm", x, y).amax(-1).sum(-1)}
    try:
        from late_interaction_kernels import maxsim as lik_maxsim

        peers["late-interaction-kernels"] = lambda x, y: lik_maxsim(x, y, qm, dm)
    except ImportError:
        pass
    for name, score in peers.items():
        fwd, total = measure(score)
        rows.append({"peer": name, "forward_ms": fwd * 1e3, "forward_backward_ms": total * 1e3})
        print(rows[-1], flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "B": B, "La": La, "Lb": Lb, "rows": rows}))


if __name__ == "__main__":
    main()
