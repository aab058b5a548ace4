"""Search the STS recipe: train several configurations one after another and report
validation Spearman after every epoch and test Spearman at the end.

Used to choose ``conf/experiment/sts.yaml`` (see README, "How the recipe was
chosen"). It calls the library directly, without Hydra, so that it runs wherever
torch, transformers and pytorch-lightning are installed (a GPU machine included).

    python benchmarks/sts_recipe_sweep.py --model DIR --data DIR --grid grid.json --out sweep.json

``grid.json`` is a list of objects: ``name``, ``epochs``, ``batch_size``,
``precision`` and any ``MaxSimModule`` argument. The two grids in this folder ran
before training switched dropout on, so they now say ``config_overrides`` with
both dropout probabilities at 0 to reproduce those runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without pip install -e .

from lightning_modules.data import STSBDataModule
from lightning_modules.module import MaxSimModule


class _EpochRecorder(pl.Callback):
    def __init__(self) -> None:
        self.val_spearman: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Runs after the epoch's validation, whose metrics are then in callback_metrics.
        if "val/spearman" in trainer.callback_metrics:
            self.val_spearman.append(round(float(trainer.callback_metrics["val/spearman"]), 2))


def run_one(spec: dict, model: str, data: str, accelerator: str, seed: int) -> dict:
    spec = dict(spec)
    name = spec.pop("name")
    epochs = spec.pop("epochs", 4)
    batch_size = spec.pop("batch_size", 16)
    precision = spec.pop("precision", "32-true")
    limit_train_pairs = spec.pop("limit_train_pairs", None)
    limit_eval_pairs = spec.pop("limit_eval_pairs", None)
    pl.seed_everything(seed, workers=True)
    module = MaxSimModule(model, **spec).float()
    datamodule = STSBDataModule(
        data, model, hub_id=None, batch_size=batch_size, limit_train_pairs=limit_train_pairs, limit_eval_pairs=limit_eval_pairs
    )
    recorder = _EpochRecorder()
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_epochs=epochs, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[recorder],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - start
    test = trainer.test(module, datamodule, verbose=False)[0]
    return {"name": name, "epochs": epochs, "batch_size": batch_size, "precision": precision, **spec,
            "val_spearman_per_epoch": recorder.val_spearman, "test/spearman": round(test["test/spearman"], 2),
            "test/pearson": round(test["test/pearson"], 2), "fit_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="encoder folder or hub id")
    parser.add_argument("--data", required=True, help="STS-B folder with train/validation/test.csv")
    parser.add_argument("--grid", required=True, help="JSON file: list of configurations")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each configuration runs once per seed")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("highest")
    results = []
    for spec in json.load(open(args.grid)):
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run_one(spec, args.model, args.data, args.accelerator, seed)
            result["seed"] = seed
            results.append(result)
            print(json.dumps(result), flush=True)
            json.dump(results, open(args.out, "w"), indent=1)
    print(f"{'name':32} {'seed':>4} {'val/epoch':32} {'test':>6} {'s':>6}")
    for r in results:
        print(f"{r['name']:32} {r['seed']:>4} {str(r['val_spearman_per_epoch']):32} {r['test/spearman']:>6} {r['fit_seconds']:>6}")


if __name__ == "__main__":
    main()
