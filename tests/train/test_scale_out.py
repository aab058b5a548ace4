"""``model.gather_across_devices`` and ``model.gradcache`` through the real command line: two DDP
processes with half the batch each, gathering and caching, train the same weights as one process
with the whole batch (docs/scale.md)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tables import write_rows


def _run(tmp_path, name: str, *extra: str) -> dict:
    run_dir = tmp_path / name
    overrides = ["+experiment=pairs", "model=tiny", f"data.train='{tmp_path / 'train.jsonl'}'",
                 f"data.validation='{tmp_path / 'validation.jsonl'}'",
                 "~logger", "trainer.max_epochs=1", "++trainer.enable_progress_bar=false",
                 "++trainer.enable_model_summary=false", "data.group_by_length=false", "seed=42",
                 f"hydra.run.dir='{run_dir}'", *extra]
    # DDP starts its second process from the command line: a real one.
    done = subprocess.run([sys.executable, "-m", "train", *overrides], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_two_gathering_processes_train_the_weights_of_one_process_on_the_global_batch(tmp_path, stsb_dir):
    with (stsb_dir / "train.csv").open(encoding="utf-8") as f:
        rows = [{"anchor": r["sentence1"], "positive": r["sentence2"]} for r in list(csv.DictReader(f))[:96]]
    write_rows(tmp_path / "train.jsonl", rows[:64])
    write_rows(tmp_path / "validation.jsonl", rows[64:])
    one = _run(tmp_path, "one", "trainer=default", "data.batch_size=16")
    two = _run(tmp_path, "two", "trainer=ddp_sim", "data.batch_size=8", "model.gather_across_devices=true",
               "model.gradcache.mini_batch_size=3")
    assert one["data"]["train"] == two["data"]["train"]
    # Without gathering, each process sees half the negatives: other weights, so the equality is no accident.
    alone = _run(tmp_path, "alone", "trainer=ddp_sim", "data.batch_size=8")
    assert alone["data"]["train"] == one["data"]["train"]
    one, two, alone = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("one", "two", "alone"))
    assert one.keys() == two.keys() and one
    # Float sums in another order differ by rounding; AdamW divides each update by the gradient's own
    # scale, which makes rounding visible where a gradient is near 0 (rarely used position embeddings):
    # hence the absolute tolerance, far below what half the negatives change.
    for key, want in one.items():
        torch.testing.assert_close(two[key], want, rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")

    def mean_difference(weights: dict) -> float:
        return torch.cat([(weights[key] - want).abs().flatten() for key, want in one.items()]).mean().item()

    assert mean_difference(two) < 0.1 * mean_difference(alone)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradcache_through_lightning_accumulation_and_precision_trains_the_plain_weights(tmp_path, stsb_dir, precision):
    """GradCache's gradients ride on the loss that Lightning scales for gradient accumulation and runs
    under its precision plugin's autocast: the same weights as the plain step (no dropout in the pairs
    recipe), to float32 rounding, or to bf16's where the encoder computes in bf16."""
    with (stsb_dir / "train.csv").open(encoding="utf-8") as f:
        rows = [{"anchor": r["sentence1"], "positive": r["sentence2"]} for r in list(csv.DictReader(f))[:96]]
    write_rows(tmp_path / "train.jsonl", rows[:64])
    write_rows(tmp_path / "validation.jsonl", rows[64:])
    common = ("trainer=default", "data.batch_size=8", "++trainer.accumulate_grad_batches=2",
              f"trainer.precision={precision}")
    _run(tmp_path, "plain", *common)
    _run(tmp_path, "cached", *common, "model.gradcache.mini_batch_size=3")
    plain, cached = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("plain", "cached"))
    tolerance = 1e-4 if precision == "32-true" else 2e-3
    for key, want in plain.items():
        torch.testing.assert_close(cached[key], want, rtol=tolerance, atol=tolerance,
                                   msg=lambda m, key=key: f"{key}: {m}")
