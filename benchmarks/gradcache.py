"""GradCache against the plain contrastive step: peak memory and time per example on a CPU.

    python -m benchmarks.gradcache                       # the rows below, 16 GB budget
    python -m benchmarks.gradcache --rows plain:128 gradcache:1024:64

Run from the repository root with the project installed (``pip install -e .``).

One real training step of ``MaxSimModule`` (all-MiniLM-L6-v2 with its 128-d projection, InfoNCE
over the batch's score matrix through the chunked MaxSim backend, backward, AdamW) on the batches
of ``benchmarks.contrastive_batch`` (STS-B sentences as 32-token queries, passages of STS-B
sentences cut to 180 tokens). Each row runs in a fresh process under an address-space limit of
``--budget-gb`` (``RLIMIT_AS``: going over it is an allocation error, not the kernel's OOM killer).

Rows (``--rows``): ``plain:B`` (the whole batch through the encoder with its activations kept),
``checkpointing:B`` (the same with gradient checkpointing, the other way to fit a large batch),
``gradcache:B:M`` (``model.gradcache.mini_batch_size=M``). Prints a table, each row's time per
example as a multiple of the plain step's at the largest batch where the plain step fits, and
JSON (``benchmarks/results/gradcache.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

from benchmarks.contrastive_batch import ROOT, STSB_TRAIN
from benchmarks.report import write_json

DEFAULT_ROWS = ["plain:128", "gradcache:128:32", "plain:256", "plain:1024", "gradcache:512:64", "gradcache:1024:64"]


def run_in_child(spec: str, args) -> dict:
    kind, batch, *rest = spec.split(":")
    mini_batch = int(rest[0]) if rest else None
    budget = int(args.budget_gb * 2**30)
    code = (
        "import json, resource\nfrom benchmarks import contrastive_batch as c\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({budget}, {budget}))\n"
        f"try:\n    print(json.dumps(c.run_step('chunked', {int(batch)}, {args.query_tokens}, {args.document_tokens}, "
        f"{kind == 'checkpointing'!r}, {mini_batch!r})))\n"
        "except (RuntimeError, MemoryError) as e:\n"
        "    out = isinstance(e, MemoryError) or 'memory' in str(e).lower()\n"
        "    print(json.dumps({'status': 'out of memory' if out else 'error', 'detail': str(e)[:300]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"status": f"crashed ({done.returncode}): {done.stderr[-300:]}"}
    row = {"kind": kind, "B": int(batch), "mini_batch": mini_batch, "La": args.query_tokens,
           "Lb": args.document_tokens, "budget_gb": args.budget_gb, **result}
    if row["status"] == "ok":
        row["s_per_example"] = round(row["step_s"] / row["B"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="plain:B, checkpointing:B or gradcache:B:M")
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=180)
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gradcache.json"))
    args = parser.parse_args()
    if not STSB_TRAIN.is_file():
        sys.exit(f"STS-B not found at {STSB_TRAIN.resolve()}: the benchmark reads ../shared/data/stsb/train.csv")
    print(f"{'row':<18} {'B':>5} {'budget':>7}  result", flush=True)
    print("-" * 72, flush=True)
    rows = []
    for spec in args.rows:
        row = run_in_child(spec, args)
        rows.append(row)
        detail = (f"fits: step {row['step_s']} s ({row['s_per_example']} s/example), peak RSS {row['peak_rss_gb']} GB"
                  if row["status"] == "ok" else row["status"])
        print(f"{spec:<18} {row['B']:>5} {row['budget_gb']:>5.0f}GB  {detail}", flush=True)
    plain = [row for row in rows if row["kind"] == "plain" and row["status"] == "ok"]
    if plain:
        unit = max(plain, key=lambda row: row["B"])
        print(f"\ntime per example / plain step's at B={unit['B']} (the largest plain batch that fits):")
        for row in rows:
            if row["status"] == "ok":
                row["time_ratio_to_plain"] = round(row["s_per_example"] / unit["s_per_example"], 2)
                print(f"  {row['kind']:<14} B={row['B']:<5} {row['time_ratio_to_plain']:.2f}x")
    result = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
