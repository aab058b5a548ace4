"""Launch settings of the triton MaxSim kernels, timed on a GPU against late-interaction-kernels.

    python -m tools.kernels.triton_tune                  # B = 512, 32 x 300 tokens, bf16, ColBERT's a2b/sum
    python -m tools.kernels.triton_tune --quick          # the defaults, both backward paths, other picked-side sums
    python -m tools.kernels.triton_tune --quick --direction both --reduction mean   # the training default's score
    python -m tools.kernels.triton_tune --dtype float32  # float32 vectors: the forward's CUDA-core settings

For each variant of ``forward_config``/``backward_config`` (rows and warps of a forward
program, b texts a forward program scores, pipeline stages, tokens and warps of an atomic
backward program, each direction's picked side by one-hot products or by atomic adds, the
one-hot programs' settings, the deterministic path's gather and collect programs): the
median time of the forward pass and of forward+backward, and the largest difference of its
gradients from the chunked backend in float32 on a smaller ragged batch (direction "both",
mean), so that a fast but wrong variant shows. late-interaction-kernels and the naive
einsum (for another score than ColBERT's: our composition of late-interaction-kernels'
calls and our dense einsum) are timed in the same run; the table gives each time as a
ratio to late-interaction-kernels'. JSON to ``--out``. Deterministic rows run under
``torch.use_deterministic_algorithms(True)``, which also fills uninitialised memory
(``torch.empty``) as training under ``Trainer(deterministic=True)`` would.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import write_json
from lightning_modules.maxsim.triton import settings as launch_settings
from lightning_modules.maxsim import maxsim_matrix

RESULTS = Path(__file__).resolve().parent / "results"  # (not committed)

# (name, forward settings, backward settings, deterministic backward)
VARIANTS = [
    ("default", {}, {}, False),
    ("deterministic", {}, {}, True),
    # a2b's picked b side by one-hot products (off by default since v8: slower on an H200)
    ("one-hot b side", {}, {"ONEHOT_A2B": True}, False),
    ("deterministic, one-hot b side", {}, {"ONEHOT_A2B": True}, True),
    ("atomic a side of b2a (no one-hot)", {}, {"ONEHOT_B2A": False}, False),  # b2a's picked side
    ("deterministic, sorted a side of b2a (no one-hot)", {}, {"ONEHOT_B2A": False}, True),
    ("fwd 256 rows (8 warps)", {"FORWARD_ROWS": 256}, {}, False),  # FORWARD_*: module constants
    ("fwd 1 b text a program", {"FORWARD_B_TEXTS": 1}, {}, False),
    ("fwd 4 b texts a program", {"FORWARD_B_TEXTS": 4}, {}, False),
    ("fwd 16 b texts a program", {"FORWARD_B_TEXTS": 16}, {}, False),
    ("fwd 2 stages", {"num_stages": 2}, {}, False),
    ("fwd 4 stages", {"num_stages": 4}, {}, False),
    ("fwd 128-token b tiles, 8 warps", {"BLOCK_M": 128, "num_warps": 8}, {}, False),
    # the one-hot programs' settings, for b2a's a side (the only one-hot sums v8 runs by
    # default): ONEHOT_B2A named, so that a2b's runs, which would not use them, skip these rows
    ("one-hot 64 rows a program, 4 warps", {}, {"ONEHOT_B2A": True, "ONEHOT_ROWS": 64, "onehot_warps": 4}, False),
    ("one-hot 256 rows a program, 64 dims a tile", {}, {"ONEHOT_B2A": True, "ONEHOT_ROWS": 256, "BLOCK_D": 64}, False),
    ("one-hot 2 stages", {}, {"ONEHOT_B2A": True, "onehot_stages": 2}, False),
    ("atomic 1 row, 1 warp", {}, {"ATOMIC_ROWS": 1, "atomic_warps": 1}, False),
    ("atomic 2 rows, 1 warp", {}, {"ATOMIC_ROWS": 2, "atomic_warps": 1}, False),
    ("atomic 8 rows, 4 warps", {}, {"ATOMIC_ROWS": 8, "atomic_warps": 4}, False),
    ("atomic 16 rows, 2 warps", {}, {"ATOMIC_ROWS": 16, "atomic_warps": 2}, False),
    ("atomic 1 stage", {}, {"num_stages": 1}, False),
    ("deterministic, 16-row gathers on 2 warps", {}, {"ROWS": 16, "num_warps": 2}, True),
    ("deterministic, collect on 1 warp", {}, {"collect_warps": 1}, True),
    ("deterministic, collect on 2 warps, 8 a step", {}, {"collect_warps": 2, "COLLECT_CHUNK": 8}, True),
]
QUICK = ("default", "deterministic", "one-hot b side", "atomic a side of b2a (no one-hot)")
# float32 vectors multiply on the CUDA cores, in programs of their own settings (forward_config).
FP32_VARIANTS = [
    ("default", {}, {}, False),
    # forward_config's two settings for 32-token texts: from sm_90 (v6's) and before (v7's)
    ("fwd wide: 4 warps, 64 dims, 64-token tiles", {"num_warps": 4, "BLOCK_D": 64, "BLOCK_M": 64}, {}, False),
    ("fwd narrow: 8 warps, 32 dims, 64-token tiles", {"num_warps": 8, "BLOCK_D": 32, "BLOCK_M": 64}, {}, False),
    ("fwd 8 warps, 64 dims", {"num_warps": 8, "BLOCK_D": 64}, {}, False),
    ("fwd 16 dims a step", {"BLOCK_D": 16}, {}, False),
    ("fwd 32-token b tiles", {"BLOCK_M": 32}, {}, False),
    ("fwd 3 stages", {"num_stages": 3}, {}, False),
]
# A GPU; or, for a smoke run of this script, the CPU under TRITON_INTERPRET=1 with tiny shapes.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def patched(forward: dict, backward: dict):
    """Replace the launch settings (and the ``FORWARD_*`` module constants that the launch
    reads, such as ``FORWARD_ROWS``), returning a function that restores the originals."""
    forward = dict(forward)
    constants = {key: forward.pop(key) for key in list(forward) if key.startswith("FORWARD_")}
    originals = launch_settings.forward_config, launch_settings.backward_config, {key: getattr(launch_settings, key) for key in constants}
    for key, value in constants.items():
        setattr(launch_settings, key, value)
    launch_settings.forward_config = lambda *args, **kwargs: {**originals[0](*args, **kwargs), **forward}
    launch_settings.backward_config = lambda *args, **kwargs: {**originals[1](*args, **kwargs), **backward}

    def restore():
        launch_settings.forward_config, launch_settings.backward_config = originals[:2]
        for key, value in originals[2].items():
            setattr(launch_settings, key, value)

    return restore


def gradient_error(size: int, exact_order: bool, dtype: torch.dtype) -> float:
    """Largest gradient difference from chunked float32, ragged both/mean batch of ``size`` texts,
    inputs of ``dtype``; the triton backward on its deterministic path when ``exact_order``."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    a = F.normalize(torch.randn(size, 40, 128, device=DEVICE, generator=g), dim=-1).to(dtype)
    b = F.normalize(torch.randn(size, 150, 128, device=DEVICE, generator=g), dim=-1).to(dtype)
    am, bm = torch.rand(size, 40, device=DEVICE, generator=g) < 0.8, torch.rand(size, 150, device=DEVICE, generator=g) < 0.8
    am[:, 0], bm[:, 0] = True, True
    weights = torch.randn(size, size, device=DEVICE, generator=g)
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    torch.use_deterministic_algorithms(exact_order)
    try:
        got = torch.autograd.grad(maxsim_matrix(x, am, y, bm, backend="triton"), (x, y), weights)
    finally:
        torch.use_deterministic_algorithms(False)
    x32, y32 = a.float().requires_grad_(True), b.float().requires_grad_(True)
    want = torch.autograd.grad(maxsim_matrix(x32, am, y32, bm, backend="chunked"), (x32, y32), weights)
    return max(float((m.float() - t).abs().max()) for m, t in zip(got, want))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help="only the defaults (both backward paths) and each picked side's other sums")
    parser.add_argument("--direction", choices=("a2b", "b2a", "both"), default="a2b",
                        help="the score: a2b/sum is ColBERT's and the issue's; both/mean the training module's default")
    parser.add_argument("--reduction", choices=("sum", "mean"), default="sum")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the vectors' type; float32 times the float32 forward settings instead")
    parser.add_argument("--out", default=str(RESULTS / "triton_tune.json"))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float32:
        variants = FP32_VARIANTS[:1] if args.quick else FP32_VARIANTS
    else:
        variants = [v for v in VARIANTS if v[0] in QUICK] if args.quick else VARIANTS
    # A setting of a direction the score does not have changes nothing: not timed.
    absent = {"a2b": "ONEHOT_B2A", "b2a": "ONEHOT_A2B"}.get(args.direction)
    variants = [v for v in variants if absent not in v[2]]
    B, La, Lb = args.batch, args.query_tokens, args.document_tokens
    q = F.normalize(torch.randn(B, La, 128, device=DEVICE), dim=-1).to(dtype)
    d = F.normalize(torch.randn(B, Lb, 128, device=DEVICE), dim=-1).to(dtype)
    qm = torch.ones(B, La, dtype=torch.bool, device=DEVICE)
    dm = torch.ones(B, Lb, dtype=torch.bool, device=DEVICE)
    qg, dg = q.clone().requires_grad_(True), d.clone().requires_grad_(True)

    def measure(score):
        def step():
            qg.grad = dg.grad = None
            score(qg, dg).float().sum().backward()

        with torch.no_grad():
            forward = timed(lambda: score(q, d), args.repeats)
        if DEVICE != "cuda":
            return forward, timed(step, args.repeats), float("nan")
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        total = timed(step, args.repeats)
        return forward, total, (torch.cuda.max_memory_allocated() - base) / 2**20

    rows = []
    # Peers first: a variant's ratio is printed as soon as it is measured.
    colbert = (args.direction, args.reduction) == ("a2b", "sum")

    def score_with(backend):
        return lambda x, y: maxsim_matrix(x, qm, y, dm, direction=args.direction, reduction=args.reduction,
                                          backend=backend)

    # ColBERT's score: the naive einsum and late-interaction-kernels' own call; other scores:
    # our dense einsum and our composition of their calls (the late-interaction-kernels backend).
    naive = lambda x, y: torch.einsum("ild,jmd->ijlm", x, y).amax(-1).sum(-1)  # noqa: E731
    peers = {"naive-einsum": naive} if colbert else {"dense (einsum)": score_with("dense")}
    try:
        from late_interaction_kernels import maxsim as lik_maxsim

        peers["late-interaction-kernels"] = (lambda x, y: lik_maxsim(x, y, qm, dm)) if colbert else \
            score_with("late-interaction-kernels")
    except ImportError:
        print("late-interaction-kernels is not installed: no ratios", flush=True)
    for name, score in peers.items():
        try:
            fwd, total, peak = measure(score)
            rows.append({"name": name, "forward_ms": fwd * 1e3, "forward_backward_ms": total * 1e3, "peak_mb": peak})
        except Exception as error:  # a peer that refuses these inputs (memory, dtype) is a finding, not the end
            rows.append({"name": name, "error": f"{type(error).__name__}: {error}"[:200]})
        print(rows[-1], flush=True)
    lik = next((r for r in rows if r["name"] == "late-interaction-kernels" and "error" not in r), None)
    ours = score_with("triton")
    for name, forward, backward, exact_order in variants:
        restore = patched(forward, backward)
        before = torch.are_deterministic_algorithms_enabled()
        row = {"name": f"ours: {name}", "forward": forward, "backward": backward, "deterministic": exact_order}
        try:
            torch.use_deterministic_algorithms(exact_order)
            fwd, total, peak = measure(ours)
            row.update(forward_ms=fwd * 1e3, forward_backward_ms=total * 1e3, peak_mb=peak)
            # Outside deterministic mode: the chunked reference multiplies with cuBLAS, which that
            # mode may refuse; the variant's own backward path is chosen inside it.
            torch.use_deterministic_algorithms(False)
            row["gradient_error"] = gradient_error(min(B, 96), exact_order, dtype)
        except Exception as error:  # a variant the compiler or the chip refuses is a finding
            row["error"] = f"{type(error).__name__}: {error}"[:200]
        finally:
            torch.use_deterministic_algorithms(before)
            restore()
        rows.append(row)
        print(row, flush=True)
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (Triton's interpreter: not a timing)"
    print(f"\n{device}, B={B}, {La} x {Lb} tokens, D=128, {args.dtype}, {args.direction}/{args.reduction}; "
          f"ratios to late-interaction-kernels' time")
    print(f"{'':<50} {'fwd ms':>8} {'fwd+bwd ms':>10} {'fwd x':>6} {'fwd+bwd x':>9} {'peak MB':>8} {'grad err':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<50} {r['error']}")
            continue
        ratio = (lambda key: f"{r[key] / lik[key]:.2f}") if lik else (lambda key: "-")
        print(f"{r['name']:<50} {r['forward_ms']:>8.2f} {r['forward_backward_ms']:>10.2f} {ratio('forward_ms'):>6} "
              f"{ratio('forward_backward_ms'):>9} {r['peak_mb']:>8.0f} {r.get('gradient_error', float('nan')):>9.1e}")
    result = {"device": device, "torch": torch.__version__, "dtype": args.dtype, "direction": args.direction,
              "reduction": args.reduction, "B": B, "La": La, "Lb": Lb,
              "rows": rows}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
