"""End to end with the tiny random model: ``train.pipeline.run`` and the ``python -m train`` CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from train.pipeline import run

RESULT_KEYS = ("zero_shot", "test/spearman", "test/pearson", "train_pairs_per_second", "versions")


def _overrides(stsb_dir, *extra):
    # `++trainer.fast_dev_run` (not `trainer.fast_dev_run`): conf/trainer has no fast_dev_run key to override.
    return [
        "+experiment=sts", "model=tiny", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra,
    ]


def _check_common_results(results: dict, output_dir: Path) -> dict:
    path = output_dir / "results.json"
    assert path.is_file()
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(results))  # what run() returned is what it wrote
    for key in RESULT_KEYS:
        assert key in written, f"results.json lacks {key!r}: {sorted(written)}"
    for key in ("val/spearman", "val/pearson", "test/spearman", "test/pearson"):
        assert key in written["zero_shot"]
    for key in ("test/spearman", "test/pearson"):
        assert -100.0 <= written[key] <= 100.0
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


def test_one_epoch_saves_checkpoint_history_and_csv_metrics(compose_cfg, tmp_path, stsb_dir):
    cfg = compose_cfg(
        _overrides(
            stsb_dir, "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
            "data.limit_train_pairs=64", "data.limit_eval_pairs=64",
        ),
        tmp_path,
    )
    results = run(cfg)
    written = _check_common_results(results, tmp_path)

    best = tmp_path / "checkpoints" / "best.ckpt"
    assert best.is_file()
    assert Path(written["best_checkpoint"]) == best
    assert torch.load(best, weights_only=True)["epoch"] == 0

    assert "val/spearman" in written and -100.0 <= written["val/spearman"] <= 100.0
    history = written["validation_history"]
    assert len(history) == 1
    assert history[0]["epoch"] == 0
    assert history[0]["step"] == written["steps"] == 4  # 64 pairs / batch 16
    assert round(history[0]["val/spearman"], 2) == written["val/spearman"]

    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert metrics
    columns = set(metrics[0])
    assert {"train/loss", "val/spearman"} <= columns, columns
    losses = [float(row["train/loss"]) for row in metrics if row["train/loss"]]
    assert len(losses) == 4 and all(loss >= 0 for loss in losses)


def test_cli_fast_dev_run(tmp_path, stsb_dir):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "train", "+experiment=sts", "model=tiny", "++trainer.fast_dev_run=true", "~logger",
        "data.limit_train_pairs=32", "data.limit_eval_pairs=32", f"data.data_dir='{stsb_dir}'", "data.hub_id=null",
        "++trainer.enable_progress_bar=false", f"hydra.run.dir='{run_dir}'",
    ]
    # Run from an unrelated directory: paths must not depend on the working directory.
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    for key in RESULT_KEYS:
        assert key in results
    assert results["steps"] == 1
    assert "test/spearman" in done.stdout  # the summary table
    resolved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert Path(resolved["paths"]["output_dir"]) == run_dir  # ${hydra:runtime.output_dir} is hydra.run.dir


def test_cli_two_process_ddp_and_bad_data_folder(tmp_path, stsb_dir):
    """trainer=ddp_sim (2 CPU processes) trains and reports; a missing data folder ends in one clear line."""
    run_dir = tmp_path / "ddp"
    base = [sys.executable, "-m", "train", "+experiment=sts", "model=tiny", "~logger", "data.hub_id=null",
            "++trainer.enable_progress_bar=false"]
    command = base + ["trainer=ddp_sim", "trainer.max_epochs=1", "data.limit_train_pairs=64", "data.limit_eval_pairs=64",
                      f"data.data_dir='{stsb_dir}'", f"hydra.run.dir='{run_dir}'"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 1 and len(results["validation_history"]) == 1
    # 64 pairs split over 2 processes, 2 steps of 16 each: every process saw 32 pairs.
    assert results["steps"] == 2

    missing = tmp_path / "no_such_folder"
    command = base + ["++trainer.fast_dev_run=true", f"data.data_dir='{missing}'", f"hydra.run.dir='{tmp_path / 'bad'}'"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2
    assert f"error: No STS-B data folder at {missing}" in done.stderr
    assert "Traceback" not in done.stderr
