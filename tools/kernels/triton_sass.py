"""Instructions per unit of work in the hot loops of our MaxSim kernels and late-interaction-kernels'.

    python -m tools.kernels.triton_sass                 # ours only, sm_90
    PYTHONPATH=DIR python -m tools.kernels.triton_sass  # and theirs: pip install --no-deps --target DIR
                                                     #   late-interaction-kernels==0.4.5 (triton==3.6.0)

No GPU is needed, and nothing runs: each kernel is compiled ahead of time (as
``triton_compile_check.py`` does) at ColBERT's shape of the issue's GPU target (bf16, 32 x 300
tokens, D = 128, direction a2b), and its SASS is read. The innermost loop with the most
instructions is the kernel's hot loop; one trip of it costs each warp its instruction count
and does a known amount of work: similarities for the forward kernels (one query token
against one document token), (document token, query token) pairs for the one-hot backward
products, picks (one query token's best match in one document) for the gathers and atomic
adds. The table gives warp-instructions per unit of work and, for B = 512, the total: an
H100 multiprocessor issues 4 warp-instructions a cycle, so a loop that only issues (no wait
on memory) needs at least total / (4 x 132) cycles. A count, not a timing: where a loop
waits on memory or the tensor cores, it runs slower than its count says. Prints a table and
JSON (``tools/kernels/results/triton_sass.json``). late-interaction-kernels autotunes its
launch settings at run time; each of the settings it may pick at this shape is a row.
"LDL/STL" counts the local loads and stores (spilled registers) in the hot loop. Two more
rows give our forward on float32 vectors (CUDA cores, the loop over D), with its setting
and with v6's (``--arch 80`` with triton 3.9 shows why it changed).
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from benchmarks.report import write_json
from lightning_modules.maxsim.triton import kernels
from tools.kernels.triton_compile_check import RESULTS, build, hot_loop, launch_config, pointers

B, LA, LB, DIM = 512, 32, 300, 128
SIMILARITIES = B * B * LA * LB  # also the (document token, query token) pairs of a one-hot backward
PICKS = B * B * LA
ISSUE_PER_CYCLE, H100_SMS = 4, 132


def ours(arch: int) -> list[dict]:
    """Our kernels as the backend launches them at this shape, with the trips their hot loops make in all."""
    forward = launch_config("forward", torch.bfloat16, LA, LB, DIM, "a2b")
    onehot = launch_config("onehot_b", torch.bfloat16, LA, LB, DIM, "a2b")
    onehot_a = launch_config("onehot_a", torch.bfloat16, LA, LB, DIM, "both")
    atomic = launch_config("atomic_a2b", torch.bfloat16, LA, LB, DIM, "a2b")
    cdiv = triton.cdiv
    d_tiles = cdiv(DIM, atomic["BLOCK_D"])
    cases = [  # (name, kernel, config, trips: programs x trips each, units of work)
        ("ours forward (a2b)", kernels.forward_kernel, forward,
         cdiv(B, forward["TEXTS"]) * B * cdiv(LB, forward["BLOCK_M"]), SIMILARITIES),
        ("ours one-hot b side", kernels.onehot_kernel, onehot,
         cdiv(B, onehot["TEXTS"]) * cdiv(LB, onehot["TOKENS"]) * cdiv(DIM, onehot["BLOCK_D"]) * B
         * cdiv(LA, onehot["CHUNK"]), SIMILARITIES),
        ("ours atomic a2b, a side only (with one-hot)", kernels.atomic_a2b_kernel, {**atomic, "GRAD_B": False},
         cdiv(B * LA, atomic["ROWS"]) * d_tiles * B, PICKS),
        ("ours atomic a2b, both sides", kernels.atomic_a2b_kernel, atomic,
         cdiv(B * LA, atomic["ROWS"]) * d_tiles * B, PICKS),
        # Direction b2a (half of the module's default score "both"): b tokens pick a tokens.
        ("ours one-hot a side (b2a)", kernels.onehot_kernel, onehot_a,
         cdiv(B, onehot_a["TEXTS"]) * cdiv(LA, onehot_a["TOKENS"]) * cdiv(DIM, onehot_a["BLOCK_D"]) * B
         * cdiv(LB, onehot_a["CHUNK"]), SIMILARITIES),
        ("ours atomic b2a, b side only (with one-hot)", kernels.atomic_b2a_kernel, {**atomic, "GRAD_A": False},
         B * cdiv(LB, atomic["ROWS"]) * d_tiles * B, B * B * LB),
        ("ours atomic b2a, both sides", kernels.atomic_b2a_kernel, atomic,
         B * cdiv(LB, atomic["ROWS"]) * d_tiles * B, B * B * LB),
    ]
    rows = [measure(name, kernel, config, pointers("bf16"), trips, units, arch)
            for name, kernel, config, trips, units in cases]
    # float32 (CUDA cores): the hot loop is the one over D, a trip per BLOCK_D dims of a b tile.
    # The two settings forward_config picks by chip: the wide one from sm_90 (v6's everywhere),
    # the narrow one before (v7's everywhere).
    wide = launch_config("forward", torch.float32, LA, LB, DIM, "a2b", arch=90)
    narrow = launch_config("forward", torch.float32, LA, LB, DIM, "a2b", arch=80)
    for name, config in (("ours forward fp32, wide (sm_90 on)", wide),
                         ("ours forward fp32, narrow (before sm_90)", narrow)):
        trips = cdiv(B, config["TEXTS"]) * B * cdiv(LB, config["BLOCK_M"]) * cdiv(DIM, config["BLOCK_D"])
        rows.append(measure(name, kernels.forward_kernel, config, pointers("fp32"), trips, SIMILARITIES, arch))
    return rows


def theirs(arch: int) -> list[dict]:
    """late-interaction-kernels 0.4.5's kernels, with each launch setting its autotuner may pick here."""
    try:
        from late_interaction_kernels import _autotune as tune
        from late_interaction_kernels import forward
        from late_interaction_kernels.backward import _autotune as backward_tune
        from late_interaction_kernels.backward import lowmem, unified
    except ImportError:
        print("late-interaction-kernels is not importable: ours only", flush=True)
        return []
    shape = dict(Lq=LA, d=DIM, d_pad=DIM, has_q_mask=True)
    types = {"Q_ptr": "*bf16", "D_ptr": "*bf16", "q_mask_ptr": "*i8", "d_mask_ptr": "*i8", "scores_ptr": "*fp32",
             "argmax_ptr": "*i32", "grad_s_ptr": "*fp32", "grad_Q_ptr": "*fp32", "grad_D_ptr": "*fp32"}
    # Their integer arguments at this shape, as Triton specialises them when it launches: the
    # last strides of contiguous tensors are 1; the batch sizes (512) and the other strides,
    # but for those over 300-token rows (d_mask's), divide by 16.
    ones = ["stride_q_d", "stride_d_d", "stride_s_d", "stride_qm_l", "stride_dm_l", "stride_a_lq", "stride_gs_d",
            "stride_gq_k", "stride_gd_k", "stride_q_k", "stride_d_k"]
    aligned = ["Nq", "Nd", "stride_q_n", "stride_q_l", "stride_d_n", "stride_d_l", "stride_s_n", "stride_qm_n",
               "stride_a_pair", "stride_gs_n", "stride_gq_n", "stride_gq_l", "stride_gd_n", "stride_gd_l"]
    # Their launch settings for a Hopper GPU, pruned as their autotuner prunes them at Lq = 32.
    tiles = [c for c in tune._large_d_configs() + tune._small_d_hopper() if c.kwargs["BLOCK_Q"] <= 2 * LA]
    cdiv = triton.cdiv
    rows = []
    for c in tiles:
        setting = f"{c.kwargs['BLOCK_Q']}x{c.kwargs['BLOCK_D']}, {c.num_warps} warps, {c.num_stages} stages"
        launch = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, COMPUTE_DTYPE=tl.bfloat16)
        # Forward: a program per (query, document); the loop over document tiles runs once per query tile.
        trips = B * B * cdiv(LA, c.kwargs["BLOCK_Q"]) * cdiv(LB, c.kwargs["BLOCK_D"])
        rows.append(measure(f"lik forward {setting}", forward._maxsim_fwd_kernel.fn,
                            {**shape, **launch, "has_d_mask": True, "save_argmax": True, "normalize": False,
                             "kd_layout": False}, types, trips, SIMILARITIES, arch, aligned, ones))
        # grad_D: a program per (document, tile of its tokens), a trip per query (its query tiles unrolled).
        rows.append(measure(f"lik lowmem grad_D {setting}", lowmem._bwd_dD_owned_kernel.fn,
                            {**shape, **launch, "cross": True}, {**types, "grad_D_ptr": "*bf16"},
                            B * cdiv(LB, c.kwargs["BLOCK_D"]) * B, SIMILARITIES, arch, aligned, ones))
    for c in backward_tune.BWD_CONFIGS:  # a program per query token, a trip per document
        setting = f"{c.num_warps} warps, {c.num_stages} stages"
        layout = {**shape, "num_warps": c.num_warps, "num_stages": c.num_stages, "kd_layout": False}
        rows.append(measure(f"lik lowmem grad_Q {setting}", lowmem._bwd_dQ_kernel.fn, layout,
                            {**types, "grad_Q_ptr": "*bf16"}, B * LA * B, PICKS, arch, aligned, ones))
        rows.append(measure(f"lik unified (atomic) {setting}", unified._bwd_unified_kernel.fn, layout,
                            types, B * LA * B, PICKS, arch, aligned, ones))
    return rows


def measure(name, kernel, config, types, trips, units, arch, aligned=("D",), ones=()) -> dict:
    """Compile one kernel and read its hot loop: warp-instructions in all (the loop's count, times
    its warps, times the trips of the source loop at this shape, over the trips one compiled trip
    makes) and per unit of work."""
    row = {"kernel": name, "num_warps": config["num_warps"], "trips": trips}
    try:
        compiled = build(kernel, config, types, arch, aligned=[n for n in aligned if n in kernel.arg_names],
                         ones=[n for n in ones if n in kernel.arg_names])
    except Exception as error:  # the compiler's refusal is the finding
        return {**row, "error": f"{type(error).__name__}: {str(error)[:200]}"}
    count, opcodes, unroll = hot_loop(compiled.asm["cubin"])
    total = count * config["num_warps"] * trips / unroll
    # Tensor-core instructions: Hopper's warpgroup products (HGMMA, 64 rows and up) or the older per-warp HMMA.
    tensor = "HGMMA" if "HGMMA" in opcodes else "HMMA" if "HMMA" in opcodes else "-"
    return {**row, "loop_instructions": count, "unrolled": unroll, "tensor_cores": tensor,
            "warp_instructions_per_unit": total / units, "total_g_warp_instructions": total / 1e9,
            "issue_floor_mcycles_h100": total / (ISSUE_PER_CYCLE * H100_SMS) / 1e6,
            "loop_local_ops": opcodes.get("LDL", 0) + opcodes.get("STL", 0),  # spilled registers, every trip
            "top_opcodes": dict(list(opcodes.items())[:8])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10")
    parser.add_argument("--out", default=str(RESULTS / "triton_sass.json"))
    args = parser.parse_args()
    rows = ours(args.arch) + theirs(args.arch)
    print(f"\ntriton {triton.__version__}, sm_{args.arch}; B = {B}, {LA} x {LB} tokens, D = {DIM}, "
          f"bf16 (the fp32 rows: float32), direction a2b (the b2a rows: b2a)")
    print(f"{'kernel':<52} {'warps':>5} {'mma':>5} {'loop':>5} {'LDL/STL':>7} {'unroll':>6} {'trips M':>8} "
          f"{'per unit':>9} {'total G':>8} {'floor Mcyc':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:<52} {r['error']}")
            continue
        print(f"{r['kernel']:<52} {r['num_warps']:>5} {r['tensor_cores']:>5} {r['loop_instructions']:>5} "
              f"{r['loop_local_ops']:>7} {r['unrolled']:>6} {r['trips'] / 1e6:>8.3f} "
              f"{r['warp_instructions_per_unit']:>9.3f} {r['total_g_warp_instructions']:>8.2f} "
              f"{r['issue_floor_mcycles_h100']:>10.2f}")
    result = {"triton": triton.__version__, "arch": f"sm_{args.arch}", "B": B, "La": LA, "Lb": LB, "D": DIM,
              "rows": rows}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
