"""Training throughput of two DDP processes (``trainer=ddp_sim``) against one process, on a CPU.

    python -m benchmarks.ddp_throughput                 # 2,048 STS-B pairs, MiniLM, batch 32 a process
    python -m benchmarks.ddp_throughput --pairs 256 --override model=tiny    # a quick check

Run from the repository root with the project installed (``pip install -e .``).

Runs, one after the other, ``python -m train +experiment=pairs`` on the same contrastive pairs
(STS-B's first ``--pairs`` training rows as anchor/positive, 100 more for validation), one epoch,
seed 42:

1. **one process**, ``data.batch_size`` = the global batch;
2. **two processes** (``trainer=ddp_sim``: gloo, the CPU's cores shared), half the batch each,
   each process's in-batch negatives its own;
3. **two processes, gathered**: the same with ``model.gather_across_devices=true`` (each query
   against the documents of both processes, the one-process batch's loss).

It reports each run's training pairs per second (``train_pairs_per_second`` of ``results.json``:
all processes, validation excluded), as a ratio to the one-process run, and the validation
MRR@10. On a 2-core CPU two processes split the same cores, so the ratio measures the overhead
of DDP's collectives and of the gather, not a speed-up. Printed as a table and JSON
(``benchmarks/results/ddp_throughput.json``). Timings are reported, never judged by a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
STSB_TRAIN = ROOT / ".." / "shared" / "data" / "stsb" / "train.csv"
RUNS = {
    "one process": ["trainer=default"],
    "two processes": ["trainer=ddp_sim"],
    "two processes, gathered": ["trainer=ddp_sim", "model.gather_across_devices=true"],
}


def write_pairs(work: Path, pairs: int) -> tuple[Path, Path]:
    with STSB_TRAIN.open(encoding="utf-8", newline="") as f:
        rows = [{"anchor": r["sentence1"], "positive": r["sentence2"]} for r in csv.DictReader(f)][: pairs + 100]
    paths = []
    for name, part in (("train", rows[:pairs]), ("validation", rows[pairs:])):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def run(name: str, extra: list[str], args, train: Path, validation: Path, work: Path) -> dict:
    run_dir = work / name.replace(" ", "_").replace(",", "")
    processes = 2 if "trainer=ddp_sim" in extra else 1
    command = [sys.executable, "-m", "train", "+experiment=pairs", f"data.train={train}",
               f"data.validation={validation}", "trainer.max_epochs=1", "seed=42", "~logger",
               f"data.batch_size={args.batch // processes}", "++trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}", *extra, *args.override]
    started = time.perf_counter()
    log = work / f"{run_dir.name}.log"
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed with status {done.returncode}; see {log}")
    results = json.loads((run_dir / "results.json").read_text())
    return {"run": name, "processes": processes, "global_batch": args.batch,
            "train_pairs_per_second": results["train_pairs_per_second"], "train_time_s": results["train_time_s"],
            "wall_s": round(time.perf_counter() - started, 1), "val_mrr@10": results.get("val/mrr@10")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64, help="the global batch (each of two processes: half)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for every run")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ddp_throughput.json"))
    args = parser.parse_args()
    if not STSB_TRAIN.is_file():
        sys.exit(f"STS-B not found at {STSB_TRAIN.resolve()}: the benchmark reads ../shared/data/stsb/train.csv")
    work = Path(args.work or tempfile.mkdtemp(prefix="ddp_throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    train, validation = write_pairs(work, args.pairs)
    rows = [run(name, extra, args, train, validation, work) for name, extra in RUNS.items()]
    unit = rows[0]["train_pairs_per_second"]
    print(f"\n{'run':<26} {'pairs/s':>8} {'ratio':>6} {'val MRR@10':>11}")
    for row in rows:
        row["ratio_to_one_process"] = round(row["train_pairs_per_second"] / unit, 2)
        print(f"{row['run']:<26} {row['train_pairs_per_second']:>8.1f} {row['ratio_to_one_process']:>5.2f}x "
              f"{row['val_mrr@10'] if row['val_mrr@10'] is not None else '-':>11}")
    write_json({"pairs": args.pairs, "overrides": args.override, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
