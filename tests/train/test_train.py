"""End to end with the tiny random model: ``train.pipeline.run`` and the ``python -m train`` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from scipy.stats import spearmanr

from lightning_modules.datamodules import STSBDataModule
from lightning_modules.module import MaxSimModule
from tests.helpers.cli import run_module
from tests.helpers.precision import FP32_TRAINING
from train.pipeline import run

# Each test trains a model or runs a whole training command.
pytestmark = pytest.mark.training

RESULT_KEYS = ("zero_shot", "test/spearman", "test/pearson", "train_pairs_per_second", "versions")


def _overrides(stsb_dir, *extra):
    return [
        "+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra,
    ]


def _check_common_results(results: dict, output_dir: Path) -> dict:
    path = output_dir / "results.json"
    assert path.is_file()
    written = json.loads(path.read_text())
    for key in RESULT_KEYS:
        assert key in written, f"results.json lacks {key!r}: {sorted(written)}"
    for key in ("val/spearman", "val/pearson", "test/spearman", "test/pearson"):
        assert key in written["zero_shot"]
    assert written["train_pairs_per_second"] > 0
    assert written["versions"]["torch"] == torch.__version__
    assert (output_dir / "config_resolved.yaml").is_file()
    return written


def test_fast_dev_run_without_logger_writes_results(compose_cfg, tmp_path, stsb_dir):
    # "~logger" removes the logger group ("logger=null" is refused by Hydra 1.3 for a config group).
    cfg = compose_cfg(
        _overrides(
            stsb_dir, "++trainer.fast_dev_run=true", "~logger", "data.limit_train_pairs=32", "data.limit_eval_pairs=32"
        ),
        tmp_path,
    )
    assert "logger" not in cfg
    results = run(cfg)
    written = _check_common_results(results, tmp_path)
    assert written["steps"] == 1
    assert not (tmp_path / "checkpoints").exists()  # fast_dev_run saves no checkpoint
    assert not (tmp_path / "csv").exists()


def test_two_epochs_test_the_best_checkpoint_and_log_csv_metrics(compose_cfg, tmp_path, stsb_dir):
    cfg = compose_cfg(
        _overrides(
            stsb_dir, "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
            "data.limit_train_pairs=64", "data.limit_eval_pairs=64",
            FP32_TRAINING,  # as the recomputation below
        ),
        tmp_path,
    )
    results = run(cfg)
    written = _check_common_results(results, tmp_path)

    history = written["validation_history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert [h["step"] for h in history] == [4, 8]  # 64 pairs / batch 16, per epoch
    best_entry = max(history, key=lambda h: h["val/spearman"])
    assert written["best_epoch"] == best_entry["epoch"]
    assert written["val/spearman"] == round(best_entry["val/spearman"], 2)

    best = tmp_path / "checkpoints" / "best.ckpt"
    assert Path(written["best_checkpoint"]) == best
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["epoch"] == best_entry["epoch"]

    # The reported test figure is the best checkpoint's: recompute it outside Lightning and torchmetrics.
    module = MaxSimModule.load_from_checkpoint(best, weights_only=True).eval()
    datamodule = STSBDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    datamodule.setup("test")
    predicted, gold = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            predicted.append(module(batch.input_ids, batch.attention_mask))
            gold.append(batch.scores)
    expected = 100 * spearmanr(torch.cat(predicted).numpy(), torch.cat(gold).numpy()).statistic
    assert abs(written["test/spearman"] - expected) < 0.01

    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert {"train/loss", "train/lr", "val/spearman"} <= set(metrics[0])
    losses = [float(row["train/loss"]) for row in metrics if row["train/loss"]]
    assert len(losses) == 8 and all(loss >= 0 for loss in losses)


def test_cli_fast_dev_run(tmp_path, stsb_dir):
    # In-process (the two-process tests below start real ones); from an unrelated directory:
    # paths must not depend on the working directory.
    run_dir = tmp_path / "run"
    done = run_module(
        "train", "+experiment=sts", "model=tiny", "++trainer.fast_dev_run=true", "~logger",
        "data.limit_train_pairs=32", "data.limit_eval_pairs=32", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
        "++trainer.enable_progress_bar=false", f"hydra.run.dir='{run_dir}'", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    for key in RESULT_KEYS:
        assert key in results
    assert results["steps"] == 1
    assert "test/spearman" in done.stdout  # the summary table
    # ... and in the run's log file, which must tell the whole story without the terminal.
    log = (run_dir / "__main__.log").read_text()
    assert "test/spearman" in log and f"epochs {results['epochs']}, wall time" in log
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert Path(resolved["paths"]["output_dir"]) == run_dir  # ${hydra:runtime.output_dir} is hydra.run.dir


def test_an_epoch_shorter_than_the_logging_interval_still_logs_its_training_curve(compose_cfg, tmp_path, stsb_dir):
    # 48 pairs at batch 16: 3 steps an epoch, 6 in all, below the default log_every_n_steps (10).
    cfg = compose_cfg(_overrides(stsb_dir, "trainer.max_epochs=2", "data.limit_train_pairs=48",
                                 "data.limit_eval_pairs=32"), tmp_path)
    assert cfg.trainer.log_every_n_steps > 6
    run(cfg)
    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    losses = [row for row in metrics if row.get("train/loss")]
    assert {"train/loss", "train/lr"} <= set(metrics[0]) and len(losses) == 2  # one a 3-step epoch
    assert all(row["train/lr"] for row in losses)


def test_cli_bad_data_folder_ends_in_one_clear_line(tmp_path, stsb_dir):
    """A missing data folder ends in one clear line. (A two-process run is trained, reported and
    resumed in tests/train/test_resume.py.)"""
    base = ["+experiment=sts", "model=tiny", "~logger", "data.hub_id=null", "++trainer.enable_progress_bar=false"]
    missing = tmp_path / "no_such_folder"
    done = run_module("train", *base, "++trainer.fast_dev_run=true", f"data.data_dir='{missing}'",
                      f"hydra.run.dir='{tmp_path / 'bad'}'", cwd=tmp_path)
    # The run folder's log holds the error too, not only the terminal.
    assert f"error: No STS-B data folder at {missing}" in (tmp_path / "bad" / "__main__.log").read_text()
    assert done.returncode == 2
    assert f"error: No STS-B data folder at {missing}" in done.stderr
    assert "Traceback" not in done.stderr


def test_ema_weights_stay_in_place_until_the_validation_metrics_are_computed(compose_cfg, tmp_path, stsb_dir,
                                                                           monkeypatch):
    """A retrieval evaluator encodes its corpus in the module's on_validation_epoch_end: the weights
    there must be the averaged ones that the validation steps used, not the training ones."""
    from lightning_modules.module import MaxSimModule

    def fingerprint(module):
        return sum(float(p.detach().double().sum()) for p in module.parameters())

    seen = {"steps": [], "metrics": []}
    step, log_evaluation = MaxSimModule.validation_step, MaxSimModule._log_evaluation
    monkeypatch.setattr(MaxSimModule, "validation_step",
                        lambda self, *a: seen["steps"].append(fingerprint(self)) or step(self, *a))
    monkeypatch.setattr(MaxSimModule, "_log_evaluation",
                        lambda self, split: seen["metrics"].append(fingerprint(self)) or log_evaluation(self, split))
    cfg = compose_cfg(_overrides(stsb_dir, "callbacks=ema", "~logger", "trainer.max_epochs=1", "zero_shot=false",
                                 "test=false", "export=false", "data.limit_train_pairs=64",
                                 "data.limit_eval_pairs=32", "model.lr=1e-2", "++trainer.num_sanity_val_steps=0"),
                      tmp_path)
    run(cfg)
    assert len(seen["metrics"]) == 1 and seen["steps"]
    assert seen["metrics"][0] == seen["steps"][-1]  # the averaged weights, still in place


def test_ema_callback_checkpoints_averaged_weights(compose_cfg, tmp_path, stsb_dir):
    """callbacks=ema: the saved best weights are the moving average, not the last trained weights."""
    states = {}
    for callbacks in ("default", "ema"):
        out = tmp_path / callbacks
        cfg = compose_cfg(
            _overrides(stsb_dir, f"callbacks={callbacks}", "~logger", "trainer.max_epochs=1",
                       "data.limit_train_pairs=64", "data.limit_eval_pairs=32", "model.lr=1e-2"),
            out,
        )
        results = run(cfg)
        assert results["test/spearman"] is not None
        states[callbacks] = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    name = "model.encoder.backbone.encoder.layer.0.attention.self.query.weight"
    trained, averaged = states["default"][name], states["ema"][name]
    # Same seed and data: the EMA run trained the same weights, but saved their average,
    # which after 4 steps at decay 0.999 is still close to the initial weights.
    assert not torch.allclose(trained, averaged)
