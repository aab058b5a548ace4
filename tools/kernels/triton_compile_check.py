"""Compile the triton MaxSim kernels for a GPU without one: shared memory, registers, spills.

    python -m tools.kernels.triton_compile_check              # sm_90 (H100), the configurations below
    python -m tools.kernels.triton_compile_check --arch 80    # sm_80 (A100)

Triton's interpreter (the tests without a GPU) checks what the kernels compute, not
whether the compiler takes them or whether a program fits the chip. This script compiles
each kernel ahead of time, with Triton's own ptxas, for the configurations that
``lightning_modules.maxsim.triton`` would launch (``forward_config``/``backward_config``),
and reads the resources off the binary: a program that needs more shared memory than a
block may have (227 KB on sm_90, 163 KB on sm_80) would fail at its first launch, and
spilled registers cost speed, most where the hot loop (the largest innermost loop of the
SASS) reads and writes them: "LDL/STL hot" counts its local loads and stores, and any is a
failure; "outer" those in the loops around it (run once per trip of theirs), reported only.
Nothing runs; no GPU is needed. Prints a table and JSON
(``tools/kernels/results/triton_compile.json``); exits 1 when a program fails either check.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, whatever the caller's environment

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.report import write_json  # noqa: E402
from lightning_modules.maxsim.triton import kernels, settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"  # (not committed)

SHARED_LIMIT = {90: 232448, 80: 166912, 89: 101376, 86: 101376}  # bytes of shared memory per block
TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
LAUNCH = ("num_warps", "num_stages")


def pointers(dtype: str) -> dict:
    """Element types of the kernel's pointer arguments; every other argument is an int32."""
    floats = {name: "*fp32" for name in ("a_weight_ptr", "b_weight_ptr", "weight_ptr", "source_weight_ptr", "grad_ptr",
                                         "out_ptr", "scores_ptr", "grad_a_ptr", "grad_b_ptr")}
    vectors = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "sources_ptr": f"*{dtype}"}
    indices = {"a_best_ptr": "*i16", "b_best_ptr": "*i16", "best_ptr": "*i16", "order_ptr": "*i32",
               "offsets_ptr": "*i32", "a_mask_ptr": "*i8", "b_mask_ptr": "*i8"}
    return {**floats, **vectors, **indices}


KERNELS = {"forward": "forward_kernel", "gather_a": "gather_a_kernel", "gather_b": "gather_b_kernel",
           "collect": "collect_kernel", "atomic_a2b": "atomic_a2b_kernel", "atomic_b2a": "atomic_b2a_kernel",
           "onehot_b": "onehot_kernel", "onehot_a": "onehot_kernel"}


def launch_config(kind: str, dtype: torch.dtype, la: int, lb: int, dim: int, direction: str, arch: int = 90) -> dict:
    """The constants and launch options the backend gives kernel ``kind`` for these shapes on sm_``arch``."""
    if kind == "forward":
        return settings.forward_config(la, lb, dim, dtype, direction, store=True, arch=arch)
    blocks = settings.backward_config(lb, dim, dtype, direction)
    if kind == "collect":  # as _collect launches it
        return {"CHUNK": blocks["COLLECT_CHUNK"], "BLOCK_D": blocks["BLOCK_D"],
                "num_warps": blocks["collect_warps"], "num_stages": blocks["collect_stages"]}
    # The one-hot sums as _onehot_grad launches them, with the grad stride that is 1 (Triton
    # specialises on it): a2b's b side (sources a, targets b), b2a's a side (sources b, targets a).
    if kind == "onehot_b":
        return {**settings.onehot_launch(la, lb, blocks), "UPCAST": False, "grad_target_stride": 1}
    if kind == "onehot_a":
        return {**settings.onehot_launch(lb, la, blocks), "UPCAST": False, "grad_source_stride": 1}
    if kind.startswith("atomic"):  # as _atomic_backward launches them, both gradients wanted
        return {"GRAD_A": True, "GRAD_B": True, "ROWS": blocks["ATOMIC_ROWS"], "BLOCK_D": blocks["BLOCK_D"],
                "num_warps": blocks["atomic_warps"], "num_stages": blocks["num_stages"]}
    return {k: blocks[k] for k in ("ROWS", "BLOCK_M", "BLOCK_D", "num_warps", "num_stages")}


def build(kernel, config: dict, types: dict, arch: int, aligned=("D",), ones=()):
    """Compile a ``@triton.jit`` kernel ahead of time: ``config`` holds its constants and launch
    options, ``types`` the element types of its pointer arguments (any other argument is an
    int32). As Triton specialises at run time: pointers are 16-byte aligned, so are the integer
    arguments named in ``aligned`` (D = 128 divides by 16; our kernels do not specialise on
    sizes), and those named in ``ones`` are the constant 1 (a contiguous tensor's last stride)."""
    constants = {**{k: v for k, v in config.items() if k not in LAUNCH}, **{name: 1 for name in ones}}
    signature = {name: "constexpr" if name in constants else types.get(name, "i32") for name in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if name.endswith("_ptr") or name in aligned}
    source = ASTSource(fn=kernel, signature=signature, attrs=attrs,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 128 if arch >= 90 else 32),
                          options={k: config[k] for k in LAUNCH})


def compile_one(kind: str, dtype: torch.dtype, la: int, lb: int, dim: int, direction: str, arch: int) -> dict:
    config = launch_config(kind, dtype, la, lb, dim, direction, arch)
    row = {"kernel": kind, "dtype": TYPES[dtype], "La": la, "Lb": lb, "D": dim, "direction": direction,
           **{k: config[k] for k in LAUNCH}}
    start = time.perf_counter()
    try:
        compiled = build(getattr(kernels, KERNELS[kind]), config, pointers(TYPES[dtype]), arch,
                         aligned=("D",) if dim % 16 == 0 else ())
    except Exception as error:  # the compiler's refusal is the finding
        return {**row, "status": f"compile error: {type(error).__name__}: {str(error)[:300]}"}
    shared = compiled.metadata.shared
    registers, spill = _resources(compiled.asm["cubin"])
    # Spilled registers cost most where they are read and written on every trip of the hot loop.
    loop_local, around_local = local_ops_in_loops(compiled.asm["cubin"])
    fits = shared <= SHARED_LIMIT.get(arch, 101376)
    status = "too much shared memory" if not fits else "spills in the hot loop" if loop_local else "ok"
    return {**row, "status": status, "shared_bytes": shared, "registers": registers, "spill_bytes": spill,
            "loop_local_ops": loop_local, "outer_loop_local_ops": around_local,
            "compile_s": round(time.perf_counter() - start, 1)}


def cuobjdump(cubin: bytes, option: str) -> str:
    """What Triton's own cuobjdump prints for a compiled kernel (``--dump-resource-usage``, ``-sass``)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), option, f.name], capture_output=True, text=True).stdout


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """Registers per thread and spilled bytes, from cuobjdump's resource usage."""
    text = cuobjdump(cubin, "--dump-resource-usage")
    fields = dict(part.split(":") for part in text.replace(",", " ").split() if part.count(":") == 1)
    number = lambda key: int(fields[key]) if fields.get(key, "").isdigit() else None  # noqa: E731
    return number("REG"), number("STACK")


MEMORY_OPS = ("LDG", "STG", "ATOMG", "REDG", "LDGSTS")  # global loads, stores and atomics


def sass_loops(cubin: bytes) -> tuple[list, list, list, tuple | None]:
    """A kernel's SASS as ``(address, instruction without its predicate)``, its loops as
    ``(first, last)`` address ranges (a backward branch and its target), the innermost of them
    (holding no other), and its hot loop: the largest innermost loop, or None without loops."""
    code = []
    for line in cuobjdump(cubin, "-sass").splitlines():
        found = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if found:
            code.append((int(found.group(1), 16), re.sub(r"^@!?U?P[T0-9]+\s+", "", found.group(2).strip())))
    loops = []
    for address, text in code:
        target = re.match(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    innermost = [(lo, hi) for lo, hi in loops if not any(lo <= a < b <= hi and (a, b) != (lo, hi) for a, b in loops)]
    return code, loops, innermost, max(innermost, key=lambda loop: loop[1] - loop[0]) if innermost else None


def _opcodes(code: list, first: int, last: int) -> list[str]:
    return [text.split()[0] for address, text in code if first <= address <= last]


def hot_loop(cubin: bytes) -> tuple[int, dict, int]:
    """The hot loop (``sass_loops``): its instruction count, the count of each opcode in it (most
    frequent first), and how many trips of the source loop one of its trips makes. The compiler
    may unroll a loop with a run-time bound k times: it then also emits the body once more, for
    the remaining trips. An innermost loop whose global loads, stores and atomics times k are
    the hot loop's is taken to be that remainder, and k the unrolling."""
    code, _, innermost, hot = sass_loops(cubin)
    if hot is None:
        return 0, {}, 1

    def memory(ops):
        return collections.Counter(op for op in ops if op.split(".")[0] in MEMORY_OPS)

    ops, unroll = _opcodes(code, *hot), 1
    for other in innermost:
        rest = memory(_opcodes(code, *other))
        for k in range(2, 17):
            if other != hot and rest and all(memory(ops)[op] == k * rest[op] for op in memory(ops) | rest):
                unroll = max(unroll, k)
    return len(ops), dict(collections.Counter(op.split(".")[0] for op in ops).most_common()), unroll


def local_ops_in_loops(cubin: bytes) -> tuple[int, int]:
    """Local loads and stores (spilled registers) in the hot loop, run every trip, and in the loops
    around it but outside it (the forward's loop over b tiles around its loop over D), run once
    per trip of theirs."""
    code, loops, _, hot = sass_loops(cubin)
    if hot is None:
        return 0, 0
    local = {"LDL", "STL"}
    inside = {address for address, _ in code if hot[0] <= address <= hot[1]}
    around = {address for lo, hi in loops if lo <= hot[0] and hot[1] <= hi and (lo, hi) != hot
              for address, _ in code if lo <= address <= hi} - inside

    def count(addresses):
        return sum(text.split()[0].split(".")[0] in local for address, text in code if address in addresses)

    return count(inside), count(around)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10: 90 (H100), 80 (A100)")
    parser.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=list(KERNELS),
                        help="only these kernels (default: all)")
    parser.add_argument("--out", default=str(RESULTS / "triton_compile.json"))
    args = parser.parse_args()
    cases = [(kind, dtype, la, 300, 128, "both")
             for dtype in (torch.bfloat16, torch.float32)
             for la in (32, 128, 256)
             for kind in args.kernels
             if not kind.startswith("onehot") or dtype != torch.float32]  # the one-hot sums: 16-bit inputs only
    if "forward" in args.kernels:
        cases.append(("forward", torch.bfloat16, 32, 300, 128, "a2b"))  # the ColBERT setting of the GPU benchmark
    rows = []
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(f"{'kernel':<8} {'dtype':<5} {'La':>4} {'dir':<5} {'warps':>5} {'stages':>6} {'shared B':>9} {'regs':>5} "
          f"{'spill B':>8} {'LDL/STL hot':>11} {'outer':>5}  status")
    for case in cases:
        row = compile_one(*case, arch=args.arch)
        rows.append(row)
        print(f"{row['kernel']:<8} {row['dtype']:<5} {row['La']:>4} {row['direction']:<5} {row['num_warps']:>5} "
              f"{row['num_stages']:>6} {row.get('shared_bytes', '-'):>9} {row.get('registers') or '-':>5} "
              f"{row.get('spill_bytes', '-') if row.get('spill_bytes') is not None else '-':>8} "
              f"{row.get('loop_local_ops', '-'):>11} {row.get('outer_loop_local_ops', '-'):>5}  {row['status']}",
              flush=True)
    result = {"triton": triton.__version__, "arch": f"sm_{args.arch}", "rows": rows}
    write_json(result, args.out)
    if any(row["status"] != "ok" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
